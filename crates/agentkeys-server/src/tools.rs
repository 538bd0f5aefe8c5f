//! The maintenance commands (`migrate`, `backup`, `verify`): each opens what it needs,
//! reports progress on stderr and its result on stdout, and exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentkeys_server::store::AnyStore;
use agentkeys_server::store::copy;
use agentkeys_server::store::postgres::PgStore;
use agentkeys_server::store::sqlite::SqliteStore;
use anyhow::{Context as _, bail};

use crate::cli::Tool;

/// Runs one command on a runtime of its own.
pub(crate) fn run(tool: Tool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: INTERNAL: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(tool)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(tool: Tool) -> anyhow::Result<ExitCode> {
    match tool {
        Tool::Migrate { from, to } => migrate(&from, &to).await,
        Tool::Backup {
            database,
            data_dir,
            to,
        } => backup(&database_url(database, data_dir), &to).await,
        Tool::Verify {
            database,
            data_dir,
            json,
        } => verify(&database_url(database, data_dir), json).await,
    }
}

/// `--database`, else the SQLite file in the data dir.
fn database_url(database: Option<String>, data_dir: Option<PathBuf>) -> String {
    database.unwrap_or_else(|| {
        let dir = data_dir.unwrap_or_else(crate::default_data_dir);
        format!("sqlite:{}", dir.join("agentkeys.db").display())
    })
}

fn sqlite_path(url: &str) -> Option<&Path> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(Path::new)
}

/// Opens an existing SQLite database (never creates one: a typo must not look like an
/// empty deployment).
async fn existing_sqlite(url: &str, flag: &str) -> anyhow::Result<SqliteStore> {
    let Some(path) = sqlite_path(url) else {
        bail!("BAD_REQUEST: {flag} must be sqlite:PATH");
    };
    if !path.is_file() {
        bail!(
            "NOT_FOUND: no SQLite database at {}\nhint: give the agentkeys.db of the data dir, e.g. sqlite:/var/lib/agentkeys/agentkeys.db",
            path.display()
        );
    }
    SqliteStore::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

async fn migrate(from: &str, to: &str) -> anyhow::Result<ExitCode> {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        bail!("BAD_REQUEST: --to must be postgres://USER@HOST/DB");
    }
    let source = existing_sqlite(from, "--from").await?;
    let before = agentkeys_server::audit::verify(&source, |_| true).await?;
    if !before.ok {
        bail!(
            "CONFLICT: the source's audit chain is broken at {:?} ({}); not copying a chain that does not verify\nhint: agentkeys-server verify --database {from}",
            before.first_broken_seq,
            before.reason.unwrap_or_default()
        );
    }
    let target = PgStore::connect(to)
        .await
        .context("connecting to the target PostgreSQL")?;
    let report = copy::sqlite_to_postgres(&source, &target, |table, rows| {
        eprint!("\rcopying {table}: {rows} rows   ");
    })
    .await
    .map_err(|e| match e {
        agentkeys_server::store::StoreError::Conflict(_) => anyhow::anyhow!(
            "CONFLICT: the target database already holds accounts or audit rows\nhint: migrate into a new, empty database (createdb -O agentkeys agentkeys)"
        ),
        other => anyhow::Error::new(other).context("copying"),
    })?;
    eprintln!();
    let after = agentkeys_server::audit::verify(&target, |_| true).await?;
    for (table, rows) in &report.tables {
        println!("{table:>14}: {rows} rows");
    }
    if !after.ok || after.checked != before.checked || after.head_hash != before.head_hash {
        bail!(
            "INTERNAL: the copy's audit chain does not match the source's ({} rows, head {:?} vs {} rows, head {:?})",
            after.checked,
            after.head_hash,
            before.checked,
            before.head_hash
        );
    }
    println!(
        "audit chain verified on the copy: {} rows, head {}",
        after.checked,
        after.head_hash.as_deref().unwrap_or("(empty)")
    );
    println!(
        "next: start the replicas with --database (the URL) and the same keys as the single node"
    );
    Ok(ExitCode::SUCCESS)
}

async fn backup(database: &str, to: &Path) -> anyhow::Result<ExitCode> {
    if database.starts_with("postgres") {
        bail!(
            "BAD_REQUEST: backup copies SQLite databases\nhint: on PostgreSQL use pg_dump -Fc (logical) or pg_basebackup with WAL archiving (docs/operations.md)"
        );
    }
    let source = existing_sqlite(database, "--database").await?;
    let bytes = copy::sqlite_backup(&source, to).await.map_err(|e| {
        anyhow::anyhow!("{e}\nhint: --to must name a new file in a writable directory")
    })?;
    let copy = SqliteStore::open(to).await.context("opening the backup")?;
    let v = agentkeys_server::audit::verify(&copy, |_| true).await?;
    if !v.ok {
        bail!("INTERNAL: the backup's audit chain does not verify: {v:?}");
    }
    println!(
        "backup written to {} ({bytes} bytes, 0600); audit chain verified: {} rows, head {}",
        to.display(),
        v.checked,
        v.head_hash.as_deref().unwrap_or("(empty)")
    );
    println!("the keys are not in it: back up server.key separately");
    Ok(ExitCode::SUCCESS)
}

async fn verify(database: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = if sqlite_path(database).is_some() {
        AnyStore::Sqlite(existing_sqlite(database, "--database").await?)
    } else {
        AnyStore::open(database)
            .await
            .context("opening the database")?
    };
    let v = agentkeys_server::audit::verify(&store, |_| true).await?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else if v.ok {
        println!(
            "ok: {} audit rows chain, head {}",
            v.checked,
            v.head_hash.as_deref().unwrap_or("(empty)")
        );
    } else {
        println!(
            "broken at seq {}: {} ({} rows before it held)",
            v.first_broken_seq.map_or("?".to_owned(), |s| s.to_string()),
            v.reason.as_deref().unwrap_or("unknown"),
            v.checked
        );
    }
    Ok(if v.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
