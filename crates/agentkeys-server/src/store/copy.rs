//! Moving a deployment: `agentkeys-server migrate` (a SQLite database copied row for row
//! into an empty PostgreSQL one, the audit chain with its hashes as they are) and
//! `agentkeys-server backup` (an online, consistent copy of a SQLite database).
//!
//! Rows are copied in pages by `rowid` (constant memory, whatever the audit's length) and
//! written with one `UNNEST` insert per page, all in one PostgreSQL transaction: a copy
//! that fails half-way leaves the target empty.

use std::path::Path;

use sqlx::{AssertSqlSafe, Row as _};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{StoreError, StoreResult};

/// How a column is read from SQLite and cast in PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int8,
    Int4,
    Bytes,
    /// SQLite `INTEGER` 0/1 → PostgreSQL `BOOLEAN`.
    Bool,
}

/// The tables, parents before children, with every column the migrations create.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "accounts",
        &[
            ("wallet", Kind::Text),
            ("kind", Kind::Text),
            ("parent", Kind::Text),
            ("enrol_hash", Kind::Bytes),
            ("scope_json", Kind::Text),
            ("created_at", Kind::Int8),
            ("deleted_at", Kind::Int8),
        ],
    ),
    (
        "sessions",
        &[
            ("id", Kind::Text),
            ("token_hash", Kind::Bytes),
            ("wallet", Kind::Text),
            ("kind", Kind::Text),
            ("created_at", Kind::Int8),
            ("expires_at", Kind::Int8),
            ("revoked_at", Kind::Int8),
            ("last_used_at", Kind::Int8),
        ],
    ),
    (
        "credentials",
        &[
            ("owner", Kind::Text),
            ("service", Kind::Text),
            ("wrapped_dek", Kind::Bytes),
            ("ciphertext", Kind::Bytes),
            ("kek_id", Kind::Int4),
            ("high_value", Kind::Bool),
            ("require_passkey", Kind::Bool),
            ("binding", Kind::Text),
            ("created_at", Kind::Int8),
            ("updated_at", Kind::Int8),
        ],
    ),
    (
        "auth_requests",
        &[
            ("id", Kind::Text),
            ("kind", Kind::Text),
            ("pair_code", Kind::Text),
            ("nonce", Kind::Bytes),
            ("otp", Kind::Text),
            ("requester_key", Kind::Bytes),
            ("agent", Kind::Text),
            ("service", Kind::Text),
            ("requested_by", Kind::Text),
            ("requested_session", Kind::Text),
            ("description", Kind::Text),
            ("status", Kind::Text),
            ("created_at", Kind::Int8),
            ("expires_at", Kind::Int8),
            ("decided_by", Kind::Text),
            ("decided_at", Kind::Int8),
            ("grant_expires_at", Kind::Int8),
            ("sealed_session", Kind::Bytes),
            ("signature", Kind::Bytes),
        ],
    ),
    (
        "identities",
        &[
            ("master", Kind::Text),
            ("kind", Kind::Text),
            ("value", Kind::Text),
            ("wallet", Kind::Text),
            ("created_at", Kind::Int8),
        ],
    ),
    (
        "passkeys",
        &[
            ("id", Kind::Text),
            ("master", Kind::Text),
            ("name", Kind::Text),
            ("credential_id", Kind::Bytes),
            ("passkey_json", Kind::Text),
            ("created_at", Kind::Int8),
            ("last_used_at", Kind::Int8),
        ],
    ),
    (
        "passkey_registrations",
        &[
            ("token_hash", Kind::Bytes),
            ("master", Kind::Text),
            ("name", Kind::Text),
            ("state_json", Kind::Text),
            ("created_at", Kind::Int8),
            ("expires_at", Kind::Int8),
            ("used_at", Kind::Int8),
        ],
    ),
    (
        "standing_approvals",
        &[
            ("id", Kind::Text),
            ("master", Kind::Text),
            ("agent", Kind::Text),
            ("owner", Kind::Text),
            ("service", Kind::Text),
            ("request_id", Kind::Text),
            ("via", Kind::Text),
            ("created_at", Kind::Int8),
            ("expires_at", Kind::Int8),
            ("revoked_at", Kind::Int8),
        ],
    ),
    (
        "audit",
        &[
            ("seq", Kind::Int8),
            ("ts", Kind::Int8),
            ("actor", Kind::Text),
            ("agent", Kind::Text),
            ("service", Kind::Text),
            ("action", Kind::Text),
            ("outcome", Kind::Text),
            ("detail", Kind::Text),
            ("prev_hash", Kind::Bytes),
            ("hash", Kind::Bytes),
        ],
    ),
];

/// Rows per page.
const PAGE: i64 = 2000;

/// One page of one column.
enum Column {
    Text(Vec<Option<String>>),
    Int8(Vec<Option<i64>>),
    Int4(Vec<Option<i32>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Bool(Vec<Option<bool>>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Column::Text(Vec::new()),
            Kind::Int8 => Column::Int8(Vec::new()),
            Kind::Int4 => Column::Int4(Vec::new()),
            Kind::Bytes => Column::Bytes(Vec::new()),
            Kind::Bool => Column::Bool(Vec::new()),
        }
    }

    fn push(&mut self, row: &sqlx::sqlite::SqliteRow, name: &str) -> StoreResult<()> {
        match self {
            Column::Text(v) => v.push(row.try_get(name)?),
            Column::Int8(v) => v.push(row.try_get(name)?),
            Column::Int4(v) => v.push(row.try_get(name)?),
            Column::Bytes(v) => v.push(row.try_get(name)?),
            Column::Bool(v) => v.push(row.try_get::<Option<i64>, _>(name)?.map(|b| b != 0)),
        }
        Ok(())
    }

    fn cast(&self) -> &'static str {
        match self {
            Column::Text(_) => "text[]",
            Column::Int8(_) => "bigint[]",
            Column::Int4(_) => "integer[]",
            Column::Bytes(_) => "bytea[]",
            Column::Bool(_) => "boolean[]",
        }
    }
}

/// What a migration copied, table by table.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

/// Copies every row of `from` into `to`, which must hold no account and no audit row.
/// `progress` hears `(table, rows copied so far)` after each page.
pub async fn sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
    mut progress: impl FnMut(&str, u64),
) -> StoreResult<CopyReport> {
    let mut tx = to.pool().begin().await?;
    let used: i64 =
        sqlx::query_scalar("SELECT (SELECT COUNT(*) FROM accounts) + (SELECT COUNT(*) FROM audit)")
            .fetch_one(&mut *tx)
            .await?;
    if used > 0 {
        return Err(StoreError::Conflict("data in the target database"));
    }
    let mut report = CopyReport::default();
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let select = format!(
            "SELECT rowid AS copy_rowid, {} FROM {table} WHERE rowid > $1 ORDER BY rowid LIMIT $2",
            names.join(", ")
        );
        let mut after = 0i64;
        let mut copied = 0u64;
        loop {
            let rows = sqlx::query(AssertSqlSafe(select.clone()))
                .bind(after)
                .bind(PAGE)
                .fetch_all(from.reader())
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("copy_rowid")?;
            let mut cols: Vec<Column> = columns.iter().map(|(_, k)| Column::new(*k)).collect();
            for row in &rows {
                for (col, (name, _)) in cols.iter_mut().zip(columns.iter()) {
                    col.push(row, name)?;
                }
            }
            let params: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("${}::{}", i + 1, c.cast()))
                .collect();
            let insert = format!(
                "INSERT INTO {table} ({}) SELECT * FROM UNNEST({})",
                names.join(", "),
                params.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(insert));
            for col in &cols {
                q = match col {
                    Column::Text(v) => q.bind(v),
                    Column::Int8(v) => q.bind(v),
                    Column::Int4(v) => q.bind(v),
                    Column::Bytes(v) => q.bind(v),
                    Column::Bool(v) => q.bind(v),
                };
            }
            q.execute(&mut *tx).await?;
            copied += rows.len() as u64;
            progress(table, copied);
        }
        report.tables.push((table, copied));
    }
    tx.commit().await?;
    Ok(report)
}

/// An online, consistent copy of `from` at `to` (SQLite's `VACUUM INTO`: one read
/// transaction, so writers go on meanwhile), made 0600. `to` must not exist.
pub async fn sqlite_backup(from: &SqliteStore, to: &Path) -> StoreResult<u64> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Create it 0600 first (VACUUM INTO refuses an existing non-empty file, and takes an
    // empty one), so the copy is never readable by others, even for a moment.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| StoreError::Io(format!("{}: {e}", to.display())))?;
    let path = to.to_str().ok_or(StoreError::Corrupt("backup path"))?;
    if let Err(e) = sqlx::query("VACUUM INTO $1")
        .bind(path)
        .execute(from.reader())
        .await
    {
        let _ = std::fs::remove_file(to);
        return Err(e.into());
    }
    std::fs::metadata(to)
        .map(|m| m.len())
        .map_err(|e| StoreError::Io(format!("{}: {e}", to.display())))
}
