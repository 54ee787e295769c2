-- Every definition a tool has had, by hash, so a tool page can show the history of its
-- definition hashes and the diff between the approved definition and the current one (a
-- "rug pull"). Written by each discovery; rows go with their server.
CREATE TABLE tool_definitions (
    tenant_id       uuid NOT NULL,
    server_id       uuid NOT NULL,
    name            text NOT NULL,
    definition_hash text NOT NULL,
    definition      jsonb NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, server_id, name, definition_hash),
    FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE
);

-- The definitions known before this table existed (an approved definition that was replaced
-- before then is not known).
INSERT INTO tool_definitions (tenant_id, server_id, name, definition_hash, definition, first_seen_at, last_seen_at)
SELECT tenant_id, server_id, name, definition_hash, definition, first_seen_at, last_seen_at FROM tools
ON CONFLICT DO NOTHING;
