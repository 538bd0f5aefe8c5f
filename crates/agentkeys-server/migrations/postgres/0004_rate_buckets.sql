-- The read and enrolment budgets, shared by every replica: one token bucket per key
-- (a session id, `enrol:ADDRESS`, ...), taken by one UPDATE on the database's clock.
-- UNLOGGED: no WAL per read; a crash empties the table, which refills every bucket, and
-- nothing else depends on it. PostgreSQL only: SQLite serves one process, which keeps its
-- buckets in memory.
CREATE UNLOGGED TABLE rate_buckets (
    key     TEXT PRIMARY KEY NOT NULL,
    tokens  DOUBLE PRECISION NOT NULL,
    at      TIMESTAMPTZ NOT NULL
);
