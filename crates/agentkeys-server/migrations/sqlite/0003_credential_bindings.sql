-- Where the egress proxy may send a credential and how it injects it: the canonical JSON
-- text of an agentkeys_types::binding::Binding, signed as stored. NULL: not bound.
-- Keep in step with ../postgres/0003_credential_bindings.sql.
ALTER TABLE credentials ADD COLUMN binding TEXT;
