//! The PostgreSQL engine, for N stateless replicas on one database (docs/operations.md).
//!
//! What one process kept in memory with SQLite lives in the database here, so every
//! replica sees the same thing:
//! - the read and enrolment budgets: a token bucket per key, taken by one `UPDATE` in an
//!   unlogged table (a crash refills the buckets; nothing else is lost);
//! - the audit chain head: each batch takes a transaction-scoped advisory lock before it
//!   reads the head, so the replicas' writers append to one chain, one batch at a time;
//! - decision wake-ups: an approval or denial sends `NOTIFY` in its own transaction, and
//!   every replica's listener wakes its long-polls (which also re-read every second, since
//!   a notification missed while a listener reconnects is not replayed);
//! - the purge of ended auth requests: one replica at a time, under an advisory lock.
//!
//! Single-use rows stay race-free across replicas as across connections: a decision is a
//! conditional `UPDATE` re-checked under the row lock, and a grant is spent with
//! `FOR UPDATE SKIP LOCKED`.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_types::api::{AuthKind, AuthStatus, Policy};
use agentkeys_types::{Scope, ServiceName, UnixSeconds, Wallet};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row as _};

use super::chain::chain_hash;
use super::{
    Account, AgentSummary, Approval, AuditFilter, AuditRow, AuthRequestRecord, DecideOutcome,
    NewAuditEvent, NewSession, PasskeyRecord, PasskeyRegistration, PolicyChange, Release,
    SessionRecord, StandingApproval, Store, StoreError, StoreResult, StoredCredential, Wakeups,
    sql,
};

/// The advisory lock that serializes audit appends across replicas.
const AUDIT_LOCK: i64 = 0x6167_6b79_0001;
/// A live standing approval, share-locked: a revocation (or a raised guard ending it)
/// waits for the release that uses it, or the release waits and finds it ended.
static STANDING_LIVE_LOCKED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} FOR SHARE", sql::STANDING_LIVE));
/// The advisory lock that lets one replica at a time run the purge.
const PURGE_LOCK: i64 = 0x6167_6b79_0002;
/// The channel decisions are announced on.
const DECISIONS: &str = "agentkeys_decisions";
/// How an opened request's announcement starts (a decision's is the bare id).
const OPENED: &str = "open ";
/// How the announcement of a change to what a master's sessions may hold starts (then the
/// master's wallet).
const STATE: &str = "state ";

/// PostgreSQL storage.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// A transaction on the pool.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Connects to `url` (`postgres://user@host/db`, libpq parameters and `PG*` variables
    /// apply) and runs the migrations. Replicas starting together serialize on the
    /// migrator's own lock.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts: PgConnectOptions = url.parse().map_err(|_| StoreError::Unreachable {
            target: "PostgreSQL".into(),
            cause: "the --database URL does not parse".into(),
            hint: "write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        })?;
        first_contact(&opts).await?;
        let size = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16);
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(size * 4).unwrap_or(16))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))?;
        Ok(PgStore { pool })
    }

    /// Connections open in the pool, and of those idle (for the gauges).
    fn pool_counts(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// Wakes the inbox long-polls of every replica (not their decision long-polls).
    async fn announce_opened(&self, id: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(DECISIONS)
            .bind(format!("{OPENED}{id}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The connection pool (metrics, health checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// How long the first connection may take before the start gives up on the database.
const FIRST_CONTACT: Duration = Duration::from_secs(5);

/// One connection made before the pool, so a database that cannot be reached fails the
/// start within seconds with its cause (a pool only says it timed out, after retrying for
/// its whole acquire timeout). Names the host, port, user and database, never the URL (its
/// password).
async fn first_contact(opts: &PgConnectOptions) -> StoreResult<()> {
    use sqlx::Connection as _;
    let target = format!(
        "{}:{} as {} (database {})",
        opts.get_host(),
        opts.get_port(),
        opts.get_username(),
        opts.get_database().unwrap_or(opts.get_username()),
    );
    let unreachable = |cause: String, hint: &'static str| StoreError::Unreachable {
        target: format!("PostgreSQL at {target}"),
        cause,
        hint,
    };
    match tokio::time::timeout(FIRST_CONTACT, sqlx::PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => {
            // Closing politely is a courtesy; the pool opens its own connections.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(classify(&e, opts.get_host(), unreachable)),
        Err(_) => Err(unreachable(
            format!("no answer within {} s", FIRST_CONTACT.as_secs()),
            "a firewall may be dropping the packets; check the host, the port and the route to it",
        )),
    }
}

/// Why a first connection failed, in words an operator can act on.
fn classify(
    e: &sqlx::Error,
    host: &str,
    unreachable: impl Fn(String, &'static str) -> StoreError,
) -> StoreError {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => unreachable(
            "connection refused".into(),
            "nothing listens there: start PostgreSQL, or fix the host and port in --database              (listen_addresses and port in postgresql.conf)",
        ),
        sqlx::Error::Io(io) if io.to_string().contains("lookup address") => unreachable(
            format!("no such host: {host} does not resolve"),
            "check the host name in --database (or use an IP address)",
        ),
        sqlx::Error::Io(io) => unreachable(
            io.to_string(),
            "check the host and port in --database and the network between",
        ),
        sqlx::Error::Tls(tls) => unreachable(
            format!("TLS failed: {tls}"),
            "check sslmode and sslrootcert: the CA must have signed the server's certificate,              issued for the host name used",
        ),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match code.as_ref() {
                "28P01" | "28000" => {
                    "check the user and password in --database (or PGPASSWORD), and pg_hba.conf                      for this user from this address"
                }
                "3D000" => "create the database first (createdb), or name an existing one",
                _ => "see PostgreSQL's server log for this connection",
            };
            let what = match code.as_ref() {
                "28P01" | "28000" => "authentication failed",
                "3D000" => "no such database",
                _ => "the server refused the connection",
            };
            unreachable(format!("{what}: {}", db.message()), hint)
        }
        other => unreachable(
            other.to_string(),
            "check --database and that PostgreSQL accepts connections",
        ),
    }
}

use super::rows::{is_unique_violation, opt_wallet, scope, scope_json, service, wallet};
use super::sql::SESSION_BY_TOKEN;

super::rows::row_decoders!(PgRow);
super::rows::approval_decoders!(PgRow);
super::methods::connection_helpers!(sqlx::PgConnection);

/// Tells every replica's decision long-polls; the notification leaves at commit.
async fn announce_decision(conn: &mut sqlx::PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(DECISIONS)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The statements whose PostgreSQL text differs from SQLite's, and the column widths.
mod dialect {
    /// A master's agents with their usage and names, one name a line.
    pub(super) const LIST_AGENTS: &str = "SELECT a.wallet, a.kind, a.parent, a.scope_json, a.created_at, \
           (SELECT MAX(last_used_at) FROM sessions s WHERE s.wallet = a.wallet) AS last_used, \
           (SELECT COUNT(*) FROM sessions s WHERE s.wallet = a.wallet \
              AND s.revoked_at IS NULL AND s.expires_at > $2) AS active, \
           (SELECT string_agg(value, E'\\n') FROM identities i \
              WHERE i.wallet = a.wallet AND i.master = $1) AS idents \
         FROM accounts a WHERE a.parent = $1 AND a.deleted_at IS NULL ORDER BY a.created_at, a.wallet";

    /// An owner's credentials without their keys, and only a prefix of each value.
    pub(super) const LIST_CREDENTIALS: &str = "SELECT owner, service, ''::bytea AS wrapped_dek, \
           substring(ciphertext from 1 for 24) AS ciphertext, \
           kek_id::bigint AS kek_id, high_value, require_passkey, binding, created_at, updated_at \
         FROM credentials WHERE owner = $1 ORDER BY service";

    /// A page of credentials wrapped under an old KEK, without their values.
    pub(super) const CREDENTIALS_TO_REWRAP: &str = "SELECT owner, service, wrapped_dek, \
           ''::bytea AS ciphertext, kek_id::bigint AS kek_id, high_value, require_passkey, \
           binding, created_at, updated_at FROM credentials \
         WHERE kek_id <> $1 AND (owner > $2 OR (owner = $2 AND service > $3)) \
         ORDER BY owner, service LIMIT $4";

    /// How many credentials each KEK id wraps.
    pub(super) const KEK_USAGE: &str = "SELECT kek_id::bigint AS kek_id, COUNT(*) AS n \
         FROM credentials GROUP BY kek_id ORDER BY kek_id";

    /// Whether a request's credential requires a passkey, the credential's row
    /// share-locked: a policy change raising the guard waits for this approval's commit
    /// (and then ends what it granted), or this approval waits for the policy change and
    /// sees the guard.
    pub(super) const NEEDS_PASSKEY: &str = "SELECT c.require_passkey FROM auth_requests r \
         JOIN credentials c ON c.owner = r.agent AND c.service = r.service WHERE r.id = $1 \
         FOR SHARE OF c";

    /// A KEK id as the column (`INTEGER`) stores it.
    pub(super) fn kek_id(id: u32) -> i32 {
        i32::try_from(id).unwrap_or(i32::MAX)
    }

    /// How many migrations this build knows.
    pub(super) fn known_migrations() -> usize {
        sqlx::migrate!("./migrations/postgres").migrations.len()
    }
}

/// Listens for decisions announced by any replica and wakes this one's long-polls; on a
/// lost connection it wakes them too (they re-read), then listens again. Stops when the
/// last holder of `wake` is gone.
async fn listen_for_decisions(pool: PgPool, wake: std::sync::Weak<Wakeups>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for decisions; long-polls poll meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if wake.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(DECISIONS).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Listening again: whatever was announced while no one listened is lost, so every
        // session-state watch re-reads (decision long-polls re-read every second anyway).
        if let Some(notify) = wake.upgrade() {
            notify.all_state_changed();
        }
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
            let Some(notify) = wake.upgrade() else { return };
            match got {
                // Quiet: check that someone still listens, then go on.
                Err(_) => continue,
                Ok(Ok(Some(n))) if n.payload().starts_with(OPENED) => notify.opened(),
                Ok(Ok(Some(n))) if n.payload().starts_with(STATE) => {
                    match Wallet::parse(&n.payload()[STATE.len()..]) {
                        Ok(master) => notify.state_changed(&master),
                        Err(_) => notify.all_state_changed(),
                    }
                }
                Ok(Ok(Some(_))) => notify.decided(),
                // The connection was lost: what was announced meanwhile is gone.
                Ok(Ok(None)) => {
                    notify.decided();
                    notify.all_state_changed();
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the decision listener failed; reconnecting");
                    notify.decided();
                    notify.all_state_changed();
                    break;
                }
            }
        }
    }
}

impl Store for PgStore {
    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(AssertSqlSafe(SESSION_BY_TOKEN.as_str()))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| session_from(&r)).transpose()
    }

    async fn put_credential(
        &self,
        c: &StoredCredential,
        keep_policy: bool,
        keep_binding: bool,
    ) -> StoreResult<bool> {
        // `xmax = 0` on the returned row: it was inserted, not updated (one statement, so
        // two replicas storing the same name at once agree on which one created it).
        let row = sqlx::query(
            "INSERT INTO credentials AS c (owner, service, wrapped_dek, ciphertext, high_value, require_passkey, binding, created_at, updated_at, kek_id) \
             VALUES ($1, $2, $3, $4, $5, $11, $8, $6, $6, $10) \
             ON CONFLICT (owner, service) DO UPDATE SET wrapped_dek = excluded.wrapped_dek, \
               kek_id = excluded.kek_id, \
               ciphertext = excluded.ciphertext, updated_at = excluded.updated_at, \
               high_value = CASE WHEN $7 THEN c.high_value ELSE excluded.high_value END, \
               require_passkey = CASE WHEN $7 THEN c.require_passkey ELSE excluded.require_passkey END, \
               binding = CASE WHEN $9 THEN c.binding ELSE excluded.binding END \
             RETURNING (xmax = 0) AS inserted",
        )
        .bind(c.owner.as_str())
        .bind(c.service.as_str())
        .bind(&c.wrapped_dek)
        .bind(&c.ciphertext)
        .bind(c.policy.high_value)
        .bind(c.updated_at)
        .bind(keep_policy)
        .bind(c.binding.as_deref())
        .bind(keep_binding)
        .bind(i32::try_from(c.kek_id).unwrap_or(i32::MAX))
        .bind(c.policy.require_passkey)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("inserted")?)
    }

    async fn credential(
        &self,
        owner: &Wallet,
        svc: &ServiceName,
    ) -> StoreResult<Option<StoredCredential>> {
        let row = sqlx::query(
            "SELECT owner, service, wrapped_dek, ciphertext, kek_id::bigint AS kek_id, high_value, require_passkey, binding, created_at, updated_at \
             FROM credentials WHERE owner = $1 AND service = $2",
        )
        .bind(owner.as_str())
        .bind(svc.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| credential_from(&r)).transpose()
    }

    async fn release_high_value(
        &self,
        session: &str,
        agent: &Wallet,
        owner: &Wallet,
        svc: &ServiceName,
        now: UnixSeconds,
        event: &NewAuditEvent,
    ) -> StoreResult<Option<(Release, i64)>> {
        let mut tx = self.pool.begin().await?;
        let standing: Option<String> = sqlx::query_scalar(STANDING_LIVE_LOCKED.as_str())
            .bind(agent.as_str())
            .bind(owner.as_str())
            .bind(svc.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let release = match standing {
            Some(id) => Release::Standing(id),
            None => {
                // SKIP LOCKED: a grant another replica is spending right now is not this
                // one's to take; the outer status check holds under the row lock.
                let spent: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "UPDATE auth_requests SET status = 'consumed' WHERE status = 'approved' \
                     AND id = ({} FOR UPDATE SKIP LOCKED) RETURNING id",
                    sql::GRANT_LIVE
                )))
                .bind(session)
                .bind(owner.as_str())
                .bind(svc.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                match spent {
                    Some(id) => Release::Grant(id),
                    None => return Ok(None),
                }
            }
        };
        let mut event = event.clone();
        event.detail = Some(release.detail());
        // The spend and its row commit together, or neither does.
        let seqs = append_in(&mut tx, std::slice::from_ref(&event)).await?;
        let seq = seqs
            .first()
            .copied()
            .ok_or(StoreError::Corrupt("audit append"))?;
        tx.commit().await?;
        Ok(Some((release, seq)))
    }

    super::methods::store_methods!(pool, pool);

    async fn purge_auth_requests(&self, before: UnixSeconds) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PURGE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            return Ok(0); // another replica is purging
        }
        let n = sqlx::query(sql::PURGE_AUTH_REQUESTS)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Buckets untouched for an hour are full again: forgetting them changes nothing.
        sqlx::query("DELETE FROM rate_buckets WHERE at < now() - interval '1 hour'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let seqs = append_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRow>> {
        if f.visible_to.is_empty() {
            return Ok(Vec::new());
        }
        let visible: Vec<&str> = f.visible_to.iter().map(String::as_str).collect();
        // Absent filters are NULL and match everything: one fixed statement.
        let rows = sqlx::query(concat!(
            "SELECT ",
            sql::audit_columns!(),
            " FROM audit WHERE (actor = ANY($1) OR agent = ANY($1)) \
             AND ($2::text IS NULL OR agent = $2) AND ($3::text IS NULL OR service = $3) \
             AND ($4::text IS NULL OR action = $4) AND ($5::bigint IS NULL OR ts >= $5) \
             ORDER BY seq DESC LIMIT $6"
        ))
        .bind(&visible)
        .bind(f.agent.as_deref())
        .bind(f.service.as_deref())
        .bind(f.action.as_deref())
        .bind(f.since)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from).collect()
    }

    async fn take_token(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
    ) -> StoreResult<Result<(), Duration>> {
        if rate <= 0.0 {
            return Ok(Ok(()));
        }
        // One statement, the database's clock: every replica takes from the same bucket,
        // refilled by the time since its last take. A full bucket has no row yet.
        let left: Option<f64> = sqlx::query_scalar(
            "INSERT INTO rate_buckets AS b (key, tokens, at) VALUES ($1, $3 - 1, statement_timestamp()) \
             ON CONFLICT (key) DO UPDATE SET \
               tokens = LEAST($3, b.tokens + EXTRACT(EPOCH FROM statement_timestamp() - b.at)::float8 * $2) - 1, \
               at = statement_timestamp() \
             WHERE LEAST($3, b.tokens + EXTRACT(EPOCH FROM statement_timestamp() - b.at)::float8 * $2) >= 1 \
             RETURNING tokens",
        )
        .bind(key)
        .bind(rate)
        .bind(burst)
        .fetch_optional(&self.pool)
        .await?;
        if left.is_some() {
            return Ok(Ok(()));
        }
        let have: Option<f64> = sqlx::query_scalar(
            "SELECT LEAST($3, tokens + EXTRACT(EPOCH FROM statement_timestamp() - at)::float8 * $2) \
             FROM rate_buckets WHERE key = $1",
        )
        .bind(key)
        .bind(rate)
        .bind(burst)
        .fetch_optional(&self.pool)
        .await?;
        let missing = (1.0 - have.unwrap_or(0.0)).max(0.0);
        Ok(Err(Duration::from_secs_f64(missing / rate)))
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn announce_state(&self, master: &Wallet) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(DECISIONS)
            .bind(format!("{STATE}{master}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn watch_decisions(&self, wake: &Arc<Wakeups>) -> Option<Duration> {
        tokio::spawn(listen_for_decisions(
            self.pool.clone(),
            Arc::downgrade(wake),
        ));
        Some(Duration::from_secs(1))
    }
}

/// Appends `events` to the chain inside `tx`. One chain for every replica: the head is
/// read and extended under the advisory lock, which the commit releases.
async fn append_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    events: &[NewAuditEvent],
) -> StoreResult<Vec<i64>> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK)
        .execute(&mut **tx)
        .await?;
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (mut seq, mut prev): (i64, Vec<u8>) = match head {
        Some(r) => (r.try_get("seq")?, r.try_get("hash")?),
        None => (0, vec![0; 32]),
    };
    let mut cols = AuditColumns::with_capacity(events.len());
    for e in events {
        seq += 1;
        let hash = chain_hash(&prev, seq, e).to_vec();
        cols.push(seq, e, std::mem::replace(&mut prev, hash.clone()), hash);
    }
    // The whole batch in one statement: one round trip, however many events.
    sqlx::query(
        "INSERT INTO audit (seq, ts, actor, agent, service, action, outcome, detail, prev_hash, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::bytea[], $10::bytea[])",
    )
    .bind(&cols.seq)
    .bind(&cols.ts)
    .bind(&cols.actor)
    .bind(&cols.agent)
    .bind(&cols.service)
    .bind(&cols.action)
    .bind(&cols.outcome)
    .bind(&cols.detail)
    .bind(&cols.prev_hash)
    .bind(&cols.hash)
    .execute(&mut **tx)
    .await?;
    Ok(cols.seq)
}

/// An audit batch as columns, for one `UNNEST` insert.
struct AuditColumns {
    seq: Vec<i64>,
    ts: Vec<i64>,
    actor: Vec<String>,
    agent: Vec<Option<String>>,
    service: Vec<Option<String>>,
    action: Vec<String>,
    outcome: Vec<String>,
    detail: Vec<Option<String>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl AuditColumns {
    fn with_capacity(n: usize) -> Self {
        AuditColumns {
            seq: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            agent: Vec::with_capacity(n),
            service: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            detail: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, seq: i64, e: &NewAuditEvent, prev_hash: Vec<u8>, hash: Vec<u8>) {
        self.seq.push(seq);
        self.ts.push(e.ts);
        self.actor.push(e.actor.clone());
        self.agent.push(e.agent.clone());
        self.service.push(e.service.clone());
        self.action.push(e.action.clone());
        self.outcome.push(e.outcome.clone());
        self.detail.push(e.detail.clone());
        self.prev_hash.push(prev_hash);
        self.hash.push(hash);
    }
}
