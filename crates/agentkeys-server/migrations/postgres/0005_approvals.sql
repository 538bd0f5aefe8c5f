-- Approvals a human sees: passkeys (WebAuthn credentials of masters), their one-time
-- registration links, standing approvals ("approve for N minutes"), and the credential
-- policy that makes a release need a passkey approval.
-- Keep in step with ../sqlite/0004_approvals.sql.
ALTER TABLE credentials ADD COLUMN require_passkey BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE passkeys (
    id            TEXT PRIMARY KEY NOT NULL,
    master        TEXT NOT NULL REFERENCES accounts (wallet),
    name          TEXT NOT NULL,
    credential_id BYTEA NOT NULL UNIQUE,
    -- The webauthn-rs Passkey (public key, counter), as its own JSON.
    passkey_json  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX passkeys_master ON passkeys (master);

CREATE TABLE passkey_registrations (
    token_hash  BYTEA PRIMARY KEY NOT NULL,
    master      TEXT NOT NULL REFERENCES accounts (wallet),
    name        TEXT NOT NULL,
    -- The ceremony's state once the page asked for options (webauthn-rs JSON).
    state_json  TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE standing_approvals (
    id          TEXT PRIMARY KEY NOT NULL,
    master      TEXT NOT NULL REFERENCES accounts (wallet),
    agent       TEXT NOT NULL,
    owner       TEXT NOT NULL,
    service     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    via         TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX standing_approvals_live ON standing_approvals (agent, owner, service);
CREATE INDEX standing_approvals_master ON standing_approvals (master);
