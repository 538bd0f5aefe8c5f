-- Identities (aliases, e-mails) belong to the master that linked them: one master's names
-- can neither squat nor reveal another's. Keep in step with ../postgres/0002_identities_per_master.sql.
CREATE TABLE identities_v2 (
    master     TEXT NOT NULL REFERENCES accounts (wallet),
    kind       TEXT NOT NULL CHECK (kind IN ('alias', 'email')),
    value      TEXT NOT NULL,
    wallet     TEXT NOT NULL REFERENCES accounts (wallet),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (master, kind, value)
);
INSERT INTO identities_v2 (master, kind, value, wallet, created_at)
    SELECT COALESCE(a.parent, a.wallet), i.kind, i.value, i.wallet, i.created_at
    FROM identities i JOIN accounts a ON a.wallet = i.wallet;
DROP TABLE identities;
ALTER TABLE identities_v2 RENAME TO identities;
CREATE INDEX identities_wallet ON identities (wallet);
