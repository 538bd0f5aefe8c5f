-- Identities (aliases, e-mails) belong to the master that linked them: one master's names
-- can neither squat nor reveal another's. Keep in step with ../sqlite/0002_identities_per_master.sql.
ALTER TABLE identities ADD COLUMN master TEXT REFERENCES accounts (wallet);
UPDATE identities i SET master = COALESCE(a.parent, a.wallet) FROM accounts a WHERE a.wallet = i.wallet;
ALTER TABLE identities ALTER COLUMN master SET NOT NULL;
ALTER TABLE identities DROP CONSTRAINT identities_pkey;
ALTER TABLE identities ADD PRIMARY KEY (master, kind, value);
