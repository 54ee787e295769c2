-- The first schema of Portcullis (docs/architecture.md, "Data").
--
-- Every tenant-owned table carries tenant_id. Child tables reference their parent through
-- (tenant_id, id) composite keys, so a row can never point at another tenant's object even if
-- application code had a bug.

CREATE TABLE tenants (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    audit_retention_days integer NOT NULL DEFAULT 30 CHECK (audit_retention_days BETWEEN 1 AND 3650),
    webhook_url          text,
    webhook_secret_enc   bytea,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- Users are global: one person may belong to several tenants through memberships.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('admin', 'policy_manager', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE invitations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email       text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'policy_manager', 'viewer')),
    token_hash  bytea NOT NULL UNIQUE,
    invited_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz
);
CREATE INDEX invitations_tenant_idx ON invitations (tenant_id, created_at DESC);

-- Dashboard sessions. The cookie holds a random secret; only its SHA-256 is stored, and a
-- session is dead once revoked_at is set (logout is real, not just a cleared cookie).
CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    user_id      uuid NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    ip           text,
    user_agent   text,
    FOREIGN KEY (tenant_id, user_id) REFERENCES memberships (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'policy_manager', 'viewer')),
    token_hash   bytea NOT NULL UNIQUE,
    token_hint   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_tenant_idx ON api_tokens (tenant_id);

-- Upstream MCP servers. Static headers (credentials) are sealed with AES-256-GCM under a
-- versioned key; header_names is kept in the clear so the dashboard can say what is set.
CREATE TABLE servers (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    url                text NOT NULL,
    transport          text NOT NULL DEFAULT 'streamable_http'
                            CHECK (transport IN ('streamable_http', 'sse')),
    headers_enc        bytea,
    headers_key_id     integer,
    header_names       text[] NOT NULL DEFAULT '{}',
    block_changed_tools boolean NOT NULL DEFAULT true,
    last_discovered_at timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, name)
);

-- Discovered tools. definition_hash is the SHA-256 of the canonical definition;
-- approved_hash is the hash a human last accepted, so a changed definition (a "rug pull")
-- shows as definition_hash <> approved_hash.
CREATE TABLE tools (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    server_id       uuid NOT NULL,
    name            text NOT NULL,
    definition      jsonb NOT NULL,
    definition_hash text NOT NULL,
    approved_hash   text,
    risk_category   text NOT NULL,
    risk_level      text NOT NULL,
    risk_signals    jsonb NOT NULL DEFAULT '[]',
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'changed', 'removed')),
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (server_id, name),
    FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX tools_tenant_server_idx ON tools (tenant_id, server_id);

CREATE TABLE policies (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    server_id       uuid NOT NULL,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (server_id, name),
    FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE
);

-- Versions are immutable: a change to a policy inserts a row and moves current_version.
CREATE TABLE policy_versions (
    tenant_id  uuid NOT NULL,
    policy_id  uuid NOT NULL,
    version    integer NOT NULL CHECK (version >= 1),
    document   jsonb NOT NULL,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, version),
    FOREIGN KEY (tenant_id, policy_id) REFERENCES policies (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE grants (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    server_id    uuid NOT NULL,
    policy_id    uuid NOT NULL,
    identity     text NOT NULL CHECK (length(identity) BETWEEN 1 AND 200),
    label        text NOT NULL DEFAULT '',
    token_hash   bytea NOT NULL UNIQUE,
    token_hint   text NOT NULL,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, policy_id) REFERENCES policies (tenant_id, id) ON DELETE RESTRICT
);
CREATE INDEX grants_tenant_server_idx ON grants (tenant_id, server_id);

-- Human approvals. fingerprint is the SHA-256 of the tool name and canonical arguments; an
-- approved row is consumed by exactly one identical call.
CREATE TABLE approvals (
    id           text PRIMARY KEY CHECK (id ~ '^apr_[a-z2-7]{26}$'),
    tenant_id    uuid NOT NULL,
    grant_id     uuid NOT NULL,
    server_id    uuid NOT NULL,
    identity     text NOT NULL,
    tool         text NOT NULL,
    fingerprint  text NOT NULL,
    arguments    jsonb,
    status       text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    decided_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    decided_at   timestamptz,
    note         text,
    consumed_at  timestamptz,
    FOREIGN KEY (tenant_id, grant_id) REFERENCES grants (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX approvals_queue_idx ON approvals (tenant_id, status, created_at DESC);
-- At most one open approval per grant and call: a retried call finds the existing one.
CREATE UNIQUE INDEX approvals_open_key ON approvals (grant_id, fingerprint)
    WHERE status IN ('pending', 'approved');

-- Who changed what, with before and after.
CREATE TABLE admin_audit (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    actor_id    uuid,
    actor_label text NOT NULL,
    action      text NOT NULL,
    object_kind text NOT NULL,
    object_id   text NOT NULL,
    before      jsonb,
    after       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_tenant_idx ON admin_audit (tenant_id, created_at DESC, id DESC);

-- The proxy audit log: one row per JSON-RPC request through the gateway, partitioned by day.
-- The primary key includes ts (a partitioned table's keys must include the partition key); the
-- gateway fixes both id and ts, so redelivery of an event hits the same key and is ignored.
-- No foreign keys: the log outlives the grants and servers it mentions.
CREATE TABLE audit_events (
    id              uuid NOT NULL,
    ts              timestamptz NOT NULL,
    tenant_id       uuid NOT NULL,
    grant_id        uuid NOT NULL,
    identity        text NOT NULL,
    server_id       uuid NOT NULL,
    method          text NOT NULL,
    tool            text,
    decision        text NOT NULL
                         CHECK (decision IN ('allow', 'deny', 'hidden', 'rate_limited', 'approval_required', 'error')),
    rule            text,
    message         text,
    policy_id       uuid,
    policy_version  integer,
    protocol        text,
    session         text,
    request_id      text,
    arg_keys        text[] NOT NULL DEFAULT '{}',
    arg_digest      text,
    arguments       jsonb,
    upstream_status integer,
    is_error        boolean,
    latency_ms      double precision,
    PRIMARY KEY (ts, id)
) PARTITION BY RANGE (ts);

-- Keyset pagination walks (ts, id) downwards within a tenant; each filter has its own index.
CREATE INDEX audit_events_tenant_ts_idx   ON audit_events (tenant_id, ts DESC, id DESC);
CREATE INDEX audit_events_server_idx      ON audit_events (tenant_id, server_id, ts DESC, id DESC);
CREATE INDEX audit_events_grant_idx       ON audit_events (tenant_id, grant_id, ts DESC, id DESC);
CREATE INDEX audit_events_identity_idx    ON audit_events (tenant_id, identity, ts DESC, id DESC);
CREATE INDEX audit_events_tool_idx        ON audit_events (tenant_id, tool, ts DESC, id DESC);
CREATE INDEX audit_events_decision_idx    ON audit_events (tenant_id, decision, ts DESC, id DESC);

-- Rows whose day has no partition yet land here instead of failing; the maintenance task
-- creates daily partitions ahead of time so this stays empty.
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

-- Creates the daily partitions covering [from_day, from_day + days). Idempotent.
CREATE FUNCTION portcullis_ensure_audit_partitions(from_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
            'audit_events_' || to_char(d, 'YYYYMMDD'), d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END;
$$;

SELECT portcullis_ensure_audit_partitions((now() AT TIME ZONE 'UTC')::date - 1, 9);
