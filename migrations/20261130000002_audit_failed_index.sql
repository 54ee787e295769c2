-- The audit filter `outcome=failed` (forwarded calls that did not succeed upstream). Failures
-- are few, so a partial index holds only them and the filter reads one short ordered range
-- instead of every event of the tenant. The predicate is the filter's, word for word
-- (`FAILED` in crates/control-plane/src/audit/query.rs), so the planner can prove it applies.
CREATE INDEX audit_events_failed_idx ON audit_events (tenant_id, ts DESC, id DESC)
    WHERE (upstream_error IS NOT NULL OR upstream_status >= 400 OR is_error);
