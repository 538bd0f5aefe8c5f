-- How a request was approved: 'session' (a master's bearer session) or 'passkey' (an
-- assertion on the approval page). Raising require_passkey on a credential ends the
-- unspent grants a session approved, and keeps those a passkey approved. Requests
-- approved before this column existed read as NULL and are treated as session-made.
-- Keep in step with ../sqlite/0005_decided_via.sql.
ALTER TABLE auth_requests ADD COLUMN decided_via TEXT;
