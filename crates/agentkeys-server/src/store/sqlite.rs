//! The SQLite engine: one file in WAL mode with `synchronous=FULL`, so every acknowledged
//! write survives a crash or power loss (the kill -9 test checks the first).
//!
//! Two pools: a single-connection writer, so write transactions queue in-process instead
//! of failing with `SQLITE_BUSY` on lock upgrades, and a reader pool sized for the machine
//! (WAL lets readers run beside the writer). The two lookups every request makes (its
//! session, and for a read the credential) go through a few read-only connections of their
//! own (`HotReaders`, rusqlite on the calling thread), without sqlx's worker threads, and
//! audit batches are appended by a thread of their own (`AuditAppender`), one hand-off per
//! batch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_types::api::{AuthKind, AuthStatus, Policy};
use agentkeys_types::{Scope, ServiceName, UnixSeconds, Wallet};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _};

use super::chain::chain_hash;
use super::{
    Account, AgentSummary, Approval, AuditFilter, AuditRow, AuthRequestRecord, DecideOutcome,
    NewAuditEvent, NewSession, PasskeyRecord, PasskeyRegistration, PolicyChange, Release,
    SessionRecord, StandingApproval, Store, StoreError, StoreResult, StoredCredential, sql,
};
use crate::buckets::RateLimiter;

/// SQLite storage.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The token buckets: one process serves this file, so they live in its memory.
    buckets: Arc<RateLimiter>,
    /// Connections for the per-request lookups.
    hot: Arc<HotReaders>,
    /// The thread that appends audit batches.
    audit: Arc<AuditAppender>,
}

/// Appends audit batches, and releases high-value reads with their audit row, on a thread
/// of its own, with a rusqlite connection of its own.
///
/// Measured, an append through the sqlx writer cost about 650 µs against a 110–150 µs
/// `fdatasync`: `BEGIN`, the head lookup, the insert and `COMMIT` were each a round trip to
/// the connection's worker thread, each two thread wake-ups. Here a batch is one hand-off
/// to this thread and one back. The transaction is the same (`BEGIN IMMEDIATE`, read the
/// head, insert, commit with `synchronous=FULL`), so the chain stays one chain however many
/// connections write the file; a writer holding the lock makes this one wait in short
/// sleeps (`busy_wait`), up to ten seconds as for the sqlx pool.
///
/// A release (the standing approval looked up, or the grant spent) and its audit row are
/// one transaction here, so a crash or a failed append never leaves a spent grant without
/// its row. Jobs waiting together share one transaction and one sync (group commit); a
/// failure fails them all, and none of them is spent or written.
struct AuditAppender {
    jobs: std::sync::mpsc::Sender<AppendJob>,
}

/// A high-value release to make, with its audit event (the detail is set to what released it).
struct ReleaseJob {
    session: String,
    agent: String,
    owner: String,
    service: String,
    now: UnixSeconds,
    event: NewAuditEvent,
}

type Reply<T> = tokio::sync::oneshot::Sender<StoreResult<T>>;

/// What the appender thread is asked to do.
enum AppendJob {
    /// Append these events.
    Events(Vec<NewAuditEvent>, Reply<Vec<i64>>),
    /// Release a high-value read and append its event.
    Release(Box<ReleaseJob>, Reply<Option<(Release, i64)>>),
}

/// How many jobs one transaction takes at most.
const MAX_JOBS: usize = 64;

impl std::fmt::Debug for AuditAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditAppender").finish_non_exhaustive()
    }
}

impl AuditAppender {
    /// Opens the connection and starts the thread; the thread ends with the last sender.
    fn start(path: &Path) -> StoreResult<Self> {
        use rusqlite::OpenFlags;
        let mut conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_handler(Some(busy_wait))?;
        let (tx, rx) = std::sync::mpsc::channel::<AppendJob>();
        std::thread::Builder::new()
            .name("audit-append".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_JOBS {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    run_jobs(&mut conn, jobs);
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the audit thread: {e}")))?;
        Ok(AuditAppender { jobs: tx })
    }

    fn gone() -> StoreError {
        StoreError::Io("the audit append thread has stopped".into())
    }

    async fn append(&self, events: &[NewAuditEvent]) -> StoreResult<Vec<i64>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(AppendJob::Events(events.to_vec(), done))
            .map_err(|_| Self::gone())?;
        wait.await.map_err(|_| Self::gone())?
    }

    async fn release(&self, job: ReleaseJob) -> StoreResult<Option<(Release, i64)>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(AppendJob::Release(Box::new(job), done))
            .map_err(|_| Self::gone())?;
        wait.await.map_err(|_| Self::gone())?
    }
}

/// SQLite's busy handler for the appender: sleeps 100 µs at a time for the first 10 ms (a
/// write transaction here lasts about a millisecond; SQLite's own handler sleeps at least
/// one), then 2 ms at a time; gives up after about ten seconds.
fn busy_wait(attempt: i32) -> bool {
    let step = if attempt < 100 {
        Duration::from_micros(100)
    } else {
        Duration::from_millis(2)
    };
    std::thread::sleep(step);
    attempt < 100 + 5_000
}

/// What one job produced, before the commit makes it true.
enum Done {
    Events(Vec<i64>),
    Release(Option<(Release, i64)>),
}

/// Runs `jobs` in one `BEGIN IMMEDIATE` transaction and answers each: all of them committed,
/// or all of them failed with nothing written.
fn run_jobs(conn: &mut rusqlite::Connection, jobs: Vec<AppendJob>) {
    let result = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut head = chain_head(&tx)?;
        let mut done = Vec::with_capacity(jobs.len());
        for job in &jobs {
            done.push(match job {
                AppendJob::Events(events, _) => {
                    Done::Events(insert_chained(&tx, &mut head, events)?)
                }
                AppendJob::Release(r, _) => Done::Release(release_in(&tx, &mut head, r)?),
            });
        }
        tx.commit()?;
        Ok::<_, StoreError>(done)
    })();
    match result {
        Ok(done) => {
            for (job, done) in jobs.into_iter().zip(done) {
                match (job, done) {
                    (AppendJob::Events(_, reply), Done::Events(seqs)) => {
                        let _ = reply.send(Ok(seqs));
                    }
                    (AppendJob::Release(_, reply), Done::Release(r)) => {
                        let _ = reply.send(Ok(r));
                    }
                    // Each job's result was pushed in its own order and kind.
                    _ => {}
                }
            }
        }
        Err(e) => {
            let failed = || StoreError::Io(format!("the audit transaction failed: {e}"));
            for job in jobs {
                match job {
                    AppendJob::Events(_, reply) => {
                        let _ = reply.send(Err(failed()));
                    }
                    AppendJob::Release(_, reply) => {
                        let _ = reply.send(Err(failed()));
                    }
                }
            }
        }
    }
}

/// The chain's last position and hash (0 and zeros when empty).
fn chain_head(tx: &rusqlite::Transaction<'_>) -> StoreResult<(i64, Vec<u8>)> {
    use rusqlite::OptionalExtension as _;
    let head: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(head.unwrap_or((0, vec![0; 32])))
}

/// Appends `events` after `head` (moved along) inside `tx`.
fn insert_chained(
    tx: &rusqlite::Transaction<'_>,
    head: &mut (i64, Vec<u8>),
    events: &[NewAuditEvent],
) -> StoreResult<Vec<i64>> {
    let (seq, prev) = head;
    let mut seqs = Vec::with_capacity(events.len());
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (seq, ts, actor, agent, service, action, outcome, detail, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for e in events {
        *seq += 1;
        let hash = chain_hash(prev, *seq, e);
        insert.execute(rusqlite::params![
            *seq,
            e.ts,
            e.actor,
            e.agent,
            e.service,
            e.action,
            e.outcome,
            e.detail,
            &prev[..],
            &hash[..],
        ])?;
        *prev = hash.to_vec();
        seqs.push(*seq);
    }
    Ok(seqs)
}

/// A release inside `tx`: the agent's live standing approval, else the session's live grant
/// (spent here), then its audit row. None when neither exists (nothing written).
fn release_in(
    tx: &rusqlite::Transaction<'_>,
    head: &mut (i64, Vec<u8>),
    job: &ReleaseJob,
) -> StoreResult<Option<(Release, i64)>> {
    use rusqlite::OptionalExtension as _;
    let standing: Option<String> = tx
        .prepare_cached(sql::STANDING_LIVE)?
        .query_row(
            rusqlite::params![job.agent, job.owner, job.service, job.now],
            |r| r.get(0),
        )
        .optional()?;
    let release = match standing {
        Some(id) => Release::Standing(id),
        None => {
            let grant: Option<String> = tx
                .prepare_cached(sql::GRANT_LIVE)?
                .query_row(
                    rusqlite::params![job.session, job.owner, job.service, job.now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = grant else { return Ok(None) };
            tx.prepare_cached(
                "UPDATE auth_requests SET status = 'consumed' WHERE id = ?1 AND status = 'approved'",
            )?
            .execute([&id])?;
            Release::Grant(id)
        }
    };
    let mut event = job.event.clone();
    event.detail = Some(release.detail());
    let seqs = insert_chained(tx, head, std::slice::from_ref(&event))?;
    let seq = seqs
        .first()
        .copied()
        .ok_or(StoreError::Corrupt("audit append"))?;
    Ok(Some((release, seq)))
}

/// Read-only connections of their own (rusqlite, on the calling thread) for the lookups
/// every request makes.
///
/// Measured, a point lookup through sqlx cost three round trips to the connection's worker
/// thread (a ping on acquire, the statement, a ping on release), each two thread wake-ups,
/// for a statement that runs in microseconds; on these connections it costs none. A
/// statement never waits long on a lock here (a 5 ms busy timeout): when SQLite is busy,
/// the lookup is made again through the sqlx pool.
struct HotReaders {
    conns: Vec<std::sync::Mutex<rusqlite::Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for HotReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotReaders")
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl HotReaders {
    fn open(path: &Path, n: usize) -> Result<Self, rusqlite::Error> {
        use rusqlite::OpenFlags;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_millis(5))?;
            conns.push(std::sync::Mutex::new(conn));
        }
        Ok(HotReaders {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Runs `f` on the first row of `sql` on a free connection (else the next in turn once
    /// it is free). `None` when SQLite was busy or locked: the caller asks the pool then.
    fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        f: impl FnOnce(&HotRow<'_>) -> StoreResult<T>,
    ) -> Option<StoreResult<Option<T>>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.conns.len();
        let conn = (0..n)
            .find_map(|i| self.conns[(start + i) % n].try_lock().ok())
            .or_else(|| self.conns.get(start % n)?.lock().ok())?;
        let first = conn.prepare_cached(sql).and_then(|mut stmt| {
            let mut rows = stmt.query(params)?;
            rows.next()?.map(|row| Ok(f(&HotRow(row)))).transpose()
        });
        match first {
            Ok(found) => Some(found.transpose()),
            Err(e) if is_busy(&e) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// One credential by owner and service: the lookup every read makes.
const CREDENTIAL_BY_KEY: &str = "SELECT owner, service, wrapped_dek, ciphertext, kek_id, high_value, \
     require_passkey, binding, created_at, updated_at FROM credentials WHERE owner = $1 AND service = $2";

/// A rusqlite row with the `try_get` the shared decoders call.
struct HotRow<'a>(&'a rusqlite::Row<'a>);

impl HotRow<'_> {
    fn try_get<T: rusqlite::types::FromSql, I: AsRef<str>>(&self, column: I) -> StoreResult<T> {
        self.0.get(column.as_ref()).map_err(StoreError::from)
    }
}

/// The decoders for [`HotRow`]s.
#[allow(
    dead_code,
    reason = "the shared decoders; the hot path reads sessions and credentials only"
)]
mod hot {
    use agentkeys_types::api::{AuthKind, AuthStatus, Policy};

    use super::super::rows::{opt_wallet, row_decoders, scope, service, wallet};
    use super::super::{
        Account, AuditRow, AuthRequestRecord, NewAuditEvent, SessionRecord, StoreError,
        StoreResult, StoredCredential,
    };
    use super::HotRow;

    row_decoders!(HotRow<'_>);

    pub(super) fn session(row: &HotRow<'_>) -> StoreResult<SessionRecord> {
        session_from(row)
    }

    pub(super) fn credential(row: &HotRow<'_>) -> StoreResult<StoredCredential> {
        credential_from(row)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each acquire (sqlx's default): a SQLite connection is a file handle
        // in this process that cannot drop, and the ping was a round trip to the
        // connection's worker thread before every statement (sqlx still pings on release).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))?;
        let readers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        let read_only = opts.read_only(true);
        let reader = SqlitePoolOptions::new()
            .max_connections(u32::try_from(readers * 2).unwrap_or(4))
            .test_before_acquire(false)
            .connect_with(read_only.clone())
            .await?;
        let hot = HotReaders::open(path, readers)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let audit = AuditAppender::start(path)?;
        Ok(SqliteStore {
            writer,
            reader,
            buckets: Arc::default(),
            hot: Arc::new(hot),
            audit: Arc::new(audit),
        })
    }

    /// A write transaction that takes the write lock at once (`BEGIN IMMEDIATE`): another
    /// process writing the same file (`rotate-kek rewrap`, say) then makes it wait out the
    /// busy timeout, where a deferred transaction upgrading to a write would fail.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Connections open in the pools, and of those idle (for the gauges).
    fn pool_counts(&self) -> (u32, usize) {
        (
            self.writer.size() + self.reader.size(),
            self.writer.num_idle() + self.reader.num_idle(),
        )
    }

    /// One process serves this file: its own inbox long-polls are woken by the caller.
    async fn announce_opened(&self, _id: &str) -> StoreResult<()> {
        Ok(())
    }

    /// The read-only pool (copies and backups read through it).
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Opens a database given as a `sqlite:` URL or a plain path.
    pub async fn open_url(url: &str) -> StoreResult<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Self::open(Path::new(path)).await
    }
}

use super::rows::{is_unique_violation, opt_wallet, scope, scope_json, service, wallet};
use super::sql::SESSION_BY_TOKEN;

super::rows::row_decoders!(SqliteRow);
super::rows::approval_decoders!(SqliteRow);
super::methods::connection_helpers!(sqlx::SqliteConnection);

/// One process serves this file: the long-polls a decision wakes are its own, woken by
/// the caller.
async fn announce_decision(
    _conn: &mut sqlx::SqliteConnection,
    _id: &str,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// The statements whose SQLite text differs from PostgreSQL's, and the column widths.
mod dialect {
    /// A master's agents with their usage and names, one name a line.
    pub(super) const LIST_AGENTS: &str = "SELECT a.wallet, a.kind, a.parent, a.scope_json, a.created_at, \
           (SELECT MAX(last_used_at) FROM sessions s WHERE s.wallet = a.wallet) AS last_used, \
           (SELECT COUNT(*) FROM sessions s WHERE s.wallet = a.wallet \
              AND s.revoked_at IS NULL AND s.expires_at > $2) AS active, \
           (SELECT GROUP_CONCAT(value, char(10)) FROM identities i \
              WHERE i.wallet = a.wallet AND i.master = $1) AS idents \
         FROM accounts a WHERE a.parent = $1 AND a.deleted_at IS NULL ORDER BY a.created_at, a.wallet";

    /// An owner's credentials without their keys, and only a prefix of each value.
    pub(super) const LIST_CREDENTIALS: &str = "SELECT owner, service, X'' AS wrapped_dek, \
           substr(ciphertext, 1, 24) AS ciphertext, kek_id, high_value, require_passkey, \
           binding, created_at, updated_at \
         FROM credentials WHERE owner = $1 ORDER BY service";

    /// A page of credentials wrapped under an old KEK, without their values.
    pub(super) const CREDENTIALS_TO_REWRAP: &str = "SELECT owner, service, wrapped_dek, \
           X'' AS ciphertext, kek_id, high_value, require_passkey, binding, \
           created_at, updated_at FROM credentials \
         WHERE kek_id <> $1 AND (owner > $2 OR (owner = $2 AND service > $3)) \
         ORDER BY owner, service LIMIT $4";

    /// How many credentials each KEK id wraps.
    pub(super) const KEK_USAGE: &str =
        "SELECT kek_id, COUNT(*) AS n FROM credentials GROUP BY kek_id ORDER BY kek_id";

    /// Whether the credential a request is about requires a passkey ($1 the request). The
    /// one writer connection serializes it with any policy change.
    pub(super) const NEEDS_PASSKEY: &str = "SELECT c.require_passkey FROM auth_requests r \
         JOIN credentials c ON c.owner = r.agent AND c.service = r.service WHERE r.id = $1";

    /// A KEK id as the column stores it.
    pub(super) fn kek_id(id: u32) -> i64 {
        i64::from(id)
    }

    /// How many migrations this build knows.
    pub(super) fn known_migrations() -> usize {
        sqlx::migrate!("./migrations/sqlite").migrations.len()
    }
}

impl Store for SqliteStore {
    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        let sql = SESSION_BY_TOKEN.as_str();
        if let Some(found) = self.hot.query(sql, &[&&hash[..]], hot::session) {
            return found;
        }
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| session_from(&r)).transpose()
    }

    async fn put_credential(
        &self,
        c: &StoredCredential,
        keep_policy: bool,
        keep_binding: bool,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let existed = sqlx::query("SELECT 1 FROM credentials WHERE owner = $1 AND service = $2")
            .bind(c.owner.as_str())
            .bind(c.service.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO credentials (owner, service, wrapped_dek, ciphertext, high_value, require_passkey, binding, created_at, updated_at, kek_id) \
             VALUES ($1, $2, $3, $4, $5, $11, $8, $6, $6, $10) \
             ON CONFLICT (owner, service) DO UPDATE SET wrapped_dek = excluded.wrapped_dek, \
               kek_id = excluded.kek_id, \
               ciphertext = excluded.ciphertext, updated_at = excluded.updated_at, \
               high_value = CASE WHEN $7 THEN credentials.high_value ELSE excluded.high_value END, \
               require_passkey = CASE WHEN $7 THEN credentials.require_passkey ELSE excluded.require_passkey END, \
               binding = CASE WHEN $9 THEN credentials.binding ELSE excluded.binding END",
        )
        .bind(c.owner.as_str())
        .bind(c.service.as_str())
        .bind(&c.wrapped_dek)
        .bind(&c.ciphertext)
        .bind(i64::from(c.policy.high_value))
        .bind(c.updated_at)
        .bind(keep_policy)
        .bind(c.binding.as_deref())
        .bind(keep_binding)
        .bind(i64::from(c.kek_id))
        .bind(i64::from(c.policy.require_passkey))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    async fn credential(
        &self,
        owner: &Wallet,
        svc: &ServiceName,
    ) -> StoreResult<Option<StoredCredential>> {
        if let Some(found) = self.hot.query(
            CREDENTIAL_BY_KEY,
            &[&owner.as_str(), &svc.as_str()],
            hot::credential,
        ) {
            return found;
        }
        let row = sqlx::query(CREDENTIAL_BY_KEY)
            .bind(owner.as_str())
            .bind(svc.as_str())
            .fetch_optional(&self.reader)
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
        self.audit
            .release(ReleaseJob {
                session: session.to_owned(),
                agent: agent.as_str().to_owned(),
                owner: owner.as_str().to_owned(),
                service: svc.as_str().to_owned(),
                now,
                event: event.clone(),
            })
            .await
    }

    super::methods::store_methods!(reader, writer);

    async fn purge_auth_requests(&self, before: UnixSeconds) -> StoreResult<u64> {
        Ok(sqlx::query(sql::PURGE_AUTH_REQUESTS)
            .bind(before)
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<Vec<i64>> {
        self.audit.append(events).await
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRow>> {
        if f.visible_to.is_empty() {
            return Ok(Vec::new());
        }
        // Placeholders are numbered; the visible set is a short list of wallets.
        let mut sql = String::from("SELECT * FROM audit WHERE (");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let list: Vec<String> = f.visible_to.iter().map(|_| next()).collect();
        let list = list.join(", ");
        let list2: Vec<String> = f.visible_to.iter().map(|_| next()).collect();
        sql.push_str(&format!(
            "actor IN ({list}) OR agent IN ({}))",
            list2.join(", ")
        ));
        if f.agent.is_some() {
            sql.push_str(&format!(" AND agent = {}", next()));
        }
        if f.service.is_some() {
            sql.push_str(&format!(" AND service = {}", next()));
        }
        if f.action.is_some() {
            sql.push_str(&format!(" AND action = {}", next()));
        }
        if f.since.is_some() {
            sql.push_str(&format!(" AND ts >= {}", next()));
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", next()));
        // Only numbered placeholders were spliced in; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for w in f.visible_to.iter().chain(f.visible_to.iter()) {
            q = q.bind(w.as_str());
        }
        if let Some(a) = &f.agent {
            q = q.bind(a.as_str());
        }
        if let Some(s) = &f.service {
            q = q.bind(s.as_str());
        }
        if let Some(a) = &f.action {
            q = q.bind(a.as_str());
        }
        if let Some(t) = f.since {
            q = q.bind(t);
        }
        q = q.bind(i64::from(f.limit));
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter().map(audit_from).collect()
    }

    async fn take_token(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
    ) -> StoreResult<Result<(), Duration>> {
        Ok(self.buckets.take(key, rate, burst))
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn announce_state(&self, _master: &Wallet) -> StoreResult<()> {
        Ok(()) // one process: its own watches are woken by the caller
    }
}

#[cfg(test)]
mod hot_tests {
    use super::*;

    /// The hot connections answer the two lookups themselves (not by falling back to the
    /// pool) and decode what the pool decodes.
    #[tokio::test]
    async fn the_hot_connections_read_sessions_and_credentials_as_the_pool_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("hot.sqlite"))
            .await
            .expect("open");
        let wallet = Wallet::parse("0x00000000000000000000000000000000000000aa").expect("wallet");
        store
            .ensure_master(&[7; 32], &wallet, 100)
            .await
            .expect("master");
        let session = NewSession {
            id: "s-hot".into(),
            token_hash: [9; 32],
            wallet: wallet.clone(),
            is_master: true,
            created_at: 100,
            expires_at: 1_000,
        };
        store.insert_session(&session).await.expect("session");
        let service = ServiceName::parse("openai").expect("service");
        let cred = StoredCredential {
            owner: wallet.clone(),
            service: service.clone(),
            wrapped_dek: vec![1; 72],
            ciphertext: vec![2; 40],
            kek_id: 3,
            policy: Policy {
                high_value: true,
                ..Policy::default()
            },
            binding: Some("{\"hosts\":[\"api.openai.com\"]}".into()),
            created_at: 100,
            updated_at: 101,
        };
        store
            .put_credential(&cred, false, false)
            .await
            .expect("put");

        let sql = SESSION_BY_TOKEN.as_str();
        let hot_session = store
            .hot
            .query(sql, &[&&[9u8; 32][..]], hot::session)
            .expect("answered without the pool")
            .expect("no error")
            .expect("found");
        assert_eq!(hot_session.id, "s-hot");
        assert_eq!(hot_session.account.wallet, wallet);
        assert!(hot_session.account.is_master);
        assert_eq!(hot_session.expires_at, 1_000);
        let via_trait = store.session_by_token_hash(&[9; 32]).await.expect("lookup");
        assert_eq!(via_trait.as_ref().map(|s| &s.id), Some(&hot_session.id));
        assert!(
            store
                .hot
                .query(sql, &[&&[8u8; 32][..]], hot::session)
                .expect("answered")
                .expect("no error")
                .is_none(),
            "an unknown token finds nothing"
        );

        let sql = CREDENTIAL_BY_KEY;
        let hot = store
            .hot
            .query(sql, &[&wallet.as_str(), &service.as_str()], hot::credential)
            .expect("answered without the pool")
            .expect("no error")
            .expect("found");
        let row = sqlx::query(sql)
            .bind(wallet.as_str())
            .bind(service.as_str())
            .fetch_one(&store.reader)
            .await
            .expect("pool");
        assert_eq!(hot, credential_from(&row).expect("decode"));
        assert_eq!(
            (hot.kek_id, hot.policy, &hot.binding),
            (3, cred.policy, &cred.binding)
        );
        assert_eq!(
            store.credential(&wallet, &service).await.expect("lookup"),
            Some(hot)
        );
    }
}
