-- Confirmation by the user (a policy rule's `confirm`): a call the agent's user is asked to
-- confirm in their MCP client is audited `confirmation_required`, and their answer is part of
-- its outcome. Existing decisions keep their meaning.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_decision_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_decision_check
    CHECK (decision IN ('allow', 'deny', 'hidden', 'rate_limited', 'approval_required',
                        'confirmation_required', 'error'));

-- The user's answer: null for calls nobody was asked about, and while the user has not answered.
ALTER TABLE audit_events ADD COLUMN confirmation text
    CHECK (confirmation IN ('confirmed', 'declined', 'cancelled', 'timed_out'));

-- The audit filter `confirmation=` (calls whose user gave this answer). Few calls ask the
-- user, so a partial index holds only them.
CREATE INDEX audit_events_confirmation_idx ON audit_events (tenant_id, confirmation, ts DESC, id DESC)
    WHERE confirmation IS NOT NULL;
