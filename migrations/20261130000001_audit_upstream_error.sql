-- Why a forwarded call ended without a whole answer: the upstream could not be reached, did
-- not answer in time or broke off its answer, or the client went away. Null when the answer
-- came whole (its status and `is_error` say how it went).
ALTER TABLE audit_events ADD COLUMN upstream_error text;
