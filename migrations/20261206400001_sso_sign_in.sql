-- Dashboard sign-in through the organisation's identity provider (docs/control-plane.md): a
-- person whose first sign-in comes through the provider has no password. Password sign-in,
-- sign-up and invitations treat a missing hash like a wrong password.
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
