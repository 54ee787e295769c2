-- Audit filters paired with a decision ("denials of this tool", "what did this agent get
-- refused"). Decisions correlate strongly with tools, identities, grants and servers (a denied
-- tool is always denied), so with single-filter indexes alone a pair that matches nothing walks
-- every row of its first filter before the page comes back empty. With these, each pair is one
-- ordered index range (docs/performance.md, "Control plane").
CREATE INDEX audit_events_server_decision_idx   ON audit_events (tenant_id, server_id, decision, ts DESC, id DESC);
CREATE INDEX audit_events_grant_decision_idx    ON audit_events (tenant_id, grant_id, decision, ts DESC, id DESC);
CREATE INDEX audit_events_identity_decision_idx ON audit_events (tenant_id, identity, decision, ts DESC, id DESC);
CREATE INDEX audit_events_tool_decision_idx     ON audit_events (tenant_id, tool, decision, ts DESC, id DESC);
