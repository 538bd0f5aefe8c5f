-- agentkeys schema v1 (PostgreSQL). Keep in step with ../sqlite/0001_init.sql.
-- Written now so both engines share one schema history; wired in by a later issue.
CREATE TABLE accounts (
    wallet       TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    parent       TEXT REFERENCES accounts (wallet),
    enrol_hash   BYTEA UNIQUE,
    scope_json   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
CREATE INDEX accounts_parent ON accounts (parent);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    wallet       TEXT NOT NULL REFERENCES accounts (wallet),
    kind         TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX sessions_wallet ON sessions (wallet);

CREATE TABLE credentials (
    owner        TEXT NOT NULL REFERENCES accounts (wallet),
    service      TEXT NOT NULL,
    wrapped_dek  BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    kek_id       INTEGER NOT NULL DEFAULT 1,
    high_value   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (owner, service)
);

CREATE TABLE auth_requests (
    id                 TEXT PRIMARY KEY NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('pair', 'recover', 'high_value')),
    pair_code          TEXT NOT NULL UNIQUE,
    nonce              BYTEA NOT NULL,
    otp                TEXT NOT NULL,
    requester_key      BYTEA,
    agent              TEXT,
    service            TEXT,
    requested_by       TEXT,
    requested_session  TEXT,
    description        TEXT,
    status             TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    decided_by         TEXT,
    decided_at         BIGINT,
    grant_expires_at   BIGINT,
    sealed_session     BYTEA,
    signature          BYTEA
);
CREATE INDEX auth_requests_grant ON auth_requests (requested_session, agent, service, status);

CREATE TABLE identities (
    kind    TEXT NOT NULL CHECK (kind IN ('alias', 'email')),
    value   TEXT NOT NULL,
    wallet  TEXT NOT NULL REFERENCES accounts (wallet),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_wallet ON identities (wallet);

-- seq is assigned by the server (the chain needs a gap-free order), not by IDENTITY.
CREATE TABLE audit (
    seq      BIGINT PRIMARY KEY NOT NULL,
    ts       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    agent    TEXT,
    service  TEXT,
    action   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT,
    prev_hash BYTEA NOT NULL,
    hash     BYTEA NOT NULL
);
CREATE INDEX audit_actor ON audit (actor);
CREATE INDEX audit_agent ON audit (agent);
