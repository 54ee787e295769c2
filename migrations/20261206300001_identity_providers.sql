-- Identity providers and policy bindings: agents and people present a JWT from their team's
-- OpenID provider on /mcp/{server_id}, and the binding that matches the verified identity (or
-- one of its groups) chooses the policy. See docs/identity.md.

-- A tenant's trusted OpenID providers. The gateway verifies tokens against the provider whose
-- issuer the token names, with keys from the issuer's discovery document.
CREATE TABLE identity_providers (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    issuer                text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 2000),
    audience              text NOT NULL CHECK (length(audience) BETWEEN 1 AND 2000),
    identity_claim        text NOT NULL DEFAULT 'sub' CHECK (identity_claim IN ('sub', 'email')),
    groups_claim          text CHECK (length(groups_claim) BETWEEN 1 AND 200),
    -- Dashboard sign-in through the provider (authorization code + PKCE): the client the
    -- dashboard uses, its secret sealed like upstream credentials, and the email domains whose
    -- people may sign in.
    client_id             text CHECK (length(client_id) BETWEEN 1 AND 500),
    client_secret_enc     bytea,
    allowed_email_domains text[],
    created_by            uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    -- The gateway finds a token's provider by its issuer: one provider per issuer.
    UNIQUE (tenant_id, issuer)
);

-- Whether the tenant's members must sign in through its provider.
ALTER TABLE tenants ADD COLUMN password_sign_in_disabled boolean NOT NULL DEFAULT false;

-- Which policy applies to a verified identity on a server: a binding names an identity, a
-- group, or neither (every verified identity of the tenant). The most specific one wins.
CREATE TABLE policy_bindings (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    server_id   uuid NOT NULL,
    policy_id   uuid NOT NULL,
    identity    text CHECK (length(identity) BETWEEN 1 AND 200),
    group_name  text CHECK (length(group_name) BETWEEN 1 AND 200),
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (identity IS NULL OR group_name IS NULL),
    UNIQUE (tenant_id, id),
    -- One binding per server and subject: two would leave the choice of policy to chance.
    UNIQUE NULLS NOT DISTINCT (tenant_id, server_id, identity, group_name),
    FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE,
    -- Checked at the end of the statement, so a server's deletion takes its bindings and
    -- policies together; deleting a policy that a binding still names is refused.
    FOREIGN KEY (tenant_id, policy_id) REFERENCES policies (tenant_id, id)
);

-- An identity-bound caller has no grant row: its approvals name the principal the gateway
-- derives from the identity (docs/identity.md), so they belong to the server instead.
ALTER TABLE approvals DROP CONSTRAINT approvals_tenant_id_grant_id_fkey;
ALTER TABLE approvals ADD FOREIGN KEY (tenant_id, server_id) REFERENCES servers (tenant_id, id) ON DELETE CASCADE;

-- Who vouched for an identity-bound call: the token's issuer and its jti (never the token).
ALTER TABLE audit_events ADD COLUMN issuer text;
ALTER TABLE audit_events ADD COLUMN jti text;
