-- agentkeys schema v1 (SQLite). Keep in step with ../postgres/0001_init.sql.
CREATE TABLE accounts (
    wallet       TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    parent       TEXT REFERENCES accounts (wallet),
    enrol_hash   BLOB UNIQUE,
    scope_json   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
CREATE INDEX accounts_parent ON accounts (parent);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    wallet       TEXT NOT NULL REFERENCES accounts (wallet),
    kind         TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX sessions_wallet ON sessions (wallet);

CREATE TABLE credentials (
    owner        TEXT NOT NULL REFERENCES accounts (wallet),
    service      TEXT NOT NULL,
    wrapped_dek  BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    kek_id       INTEGER NOT NULL DEFAULT 1,
    high_value   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (owner, service)
);

CREATE TABLE auth_requests (
    id                 TEXT PRIMARY KEY NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('pair', 'recover', 'high_value')),
    pair_code          TEXT NOT NULL UNIQUE,
    nonce              BLOB NOT NULL,
    otp                TEXT NOT NULL,
    requester_key      BLOB,
    agent              TEXT,
    service            TEXT,
    requested_by       TEXT,
    requested_session  TEXT,
    description        TEXT,
    status             TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    decided_by         TEXT,
    decided_at         INTEGER,
    grant_expires_at   INTEGER,
    sealed_session     BLOB,
    signature          BLOB
);
CREATE INDEX auth_requests_grant ON auth_requests (requested_session, agent, service, status);

CREATE TABLE identities (
    kind    TEXT NOT NULL CHECK (kind IN ('alias', 'email')),
    value   TEXT NOT NULL,
    wallet  TEXT NOT NULL REFERENCES accounts (wallet),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_wallet ON identities (wallet);

CREATE TABLE audit (
    seq      INTEGER PRIMARY KEY NOT NULL,
    ts       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    agent    TEXT,
    service  TEXT,
    action   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT,
    prev_hash BLOB NOT NULL,
    hash     BLOB NOT NULL
);
CREATE INDEX audit_actor ON audit (actor);
CREATE INDEX audit_agent ON audit (agent);
