-- Sign-up answers the same whether or not the email has an account, and the difference goes
-- by mail to the address's owner: a confirmation link for a new organisation, or a notice
-- that the address already has an account.

-- A sign-up waiting for its emailed confirmation. Only the SHA-256 of the link's token is kept,
-- and never a password: a new account's argon2 hash, or the existing account it adds an
-- organisation to. Installation-wide, like users: no tenant exists before the confirmation.
-- A confirmation deletes its row (a link works once); expired rows are deleted too.
CREATE TABLE signup_requests (
    id            uuid PRIMARY KEY,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    organization  text NOT NULL,
    password_hash text,
    user_id       uuid REFERENCES users (id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- A new account (its hash) or an existing one (its id), never both.
    CHECK ((password_hash IS NULL) <> (user_id IS NULL))
);
CREATE INDEX signup_requests_expires_idx ON signup_requests (expires_at);

-- Outgoing mail, written in the transaction of what it tells, and sent by the control plane's
-- background task, with retries. The body can hold a one-time link: it is cleared once the
-- message is sent or given up.
CREATE TABLE mail_outbox (
    id              uuid PRIMARY KEY,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
