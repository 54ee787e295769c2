-- Control plane: approval webhooks (docs/control-plane.md, "Approvals").
--
-- Webhook deliveries are an outbox: the change that causes an event inserts its delivery in the
-- same transaction, and a background task sends it (signed with HMAC-SHA256) with retries, so
-- an event is neither lost when the receiver is down nor sent for a change that rolled back.

-- When the control plane queued the `approval.requested` event of a pending approval. The
-- gateway creates approvals; the control plane notices the new ones by this column.
ALTER TABLE approvals ADD COLUMN notified_at timestamptz;
CREATE INDEX approvals_unnotified_idx ON approvals (created_at) WHERE notified_at IS NULL;

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_deliveries_tenant_idx ON webhook_deliveries (tenant_id, created_at DESC);
