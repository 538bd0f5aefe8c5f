//! The maintenance commands (`migrate`, `backup`, `verify`, `rotate-kek`): each opens
//! what it needs, reports progress on stderr and its result on stdout, and exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentkeys_server::store::AnyStore;
use agentkeys_server::store::copy;
use agentkeys_server::store::postgres::PgStore;
use agentkeys_server::store::sqlite::SqliteStore;
use anyhow::{Context as _, bail};

use agentkeys_secmem::SecretBytes;
use agentkeys_server::keys::ServerKeys;
use agentkeys_server::store::Store as _;

use crate::cli::{RotateStep, Tool};

/// Runs one command. `env_keys`: `AGENTKEYS_SERVER_KEYS`, already taken out of the
/// environment.
pub(crate) async fn run(tool: Tool, env_keys: Option<SecretBytes>) -> ExitCode {
    match dispatch(tool, env_keys).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::print_hint(&e);
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(tool: Tool, env_keys: Option<SecretBytes>) -> anyhow::Result<ExitCode> {
    match tool {
        Tool::RotateKek(step) => rotate(step, env_keys).await,
        Tool::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&agentkeys_server::http::openapi::document())?
            );
            Ok(ExitCode::SUCCESS)
        }
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

/// The key set to work with: `--keys FILE`, else `AGENTKEYS_SERVER_KEYS`, else the data
/// dir's `server.key` (never created here).
fn key_set(
    keys: Option<&Path>,
    env_keys: Option<&SecretBytes>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<ServerKeys> {
    if let Some(file) = keys {
        return read_key_file(file);
    }
    if let Some(raw) = env_keys {
        return Ok(ServerKeys::from_env_value(raw.expose_secret())?);
    }
    let dir = data_dir.unwrap_or_else(crate::default_data_dir);
    read_key_file(&dir.join("server.key"))
}

fn read_key_file(file: &Path) -> anyhow::Result<ServerKeys> {
    if !file.is_file() {
        bail!(
            "NOT_FOUND: no key file at {}\nhint: give --keys FILE, or set AGENTKEYS_SERVER_KEYS",
            file.display()
        );
    }
    Ok(ServerKeys::load_file(file)?)
}

async fn rotate(step: RotateStep, env_keys: Option<SecretBytes>) -> anyhow::Result<ExitCode> {
    match step {
        RotateStep::NewKey {
            keys,
            data_dir,
            out,
        } => {
            let current = key_set(keys.as_deref(), env_keys.as_ref(), data_dir)?;
            let next = current.with_new_kek()?;
            next.write_new_file(&out)?;
            println!(
                "wrote {} (0600): KEKs {:?}, the first one current; the shielding and signing keys are unchanged",
                out.display(),
                next.kek_ids()
            );
            println!(
                "next: give every server this key set (as server.key, or AGENTKEYS_SERVER_KEYS=\"$(base64 -w0 FILE)\"), restart them one by one, then run 'agentkeys-server rotate-kek rewrap'"
            );
            Ok(ExitCode::SUCCESS)
        }
        RotateStep::Rewrap {
            database,
            keys,
            data_dir,
        } => {
            let keys = key_set(keys.as_deref(), env_keys.as_ref(), data_dir.clone())?;
            let store = open_any(&database_url(database, data_dir)).await?;
            rewrap(&store, &keys).await
        }
        RotateStep::Retire {
            database,
            keys,
            data_dir,
            out,
        } => {
            let keys = key_set(keys.as_deref(), env_keys.as_ref(), data_dir.clone())?;
            let store = open_any(&database_url(database, data_dir)).await?;
            let usage = store.kek_usage().await?;
            let current = keys.kek().0;
            if let Some((id, n)) = usage.iter().find(|(id, _)| keys.kek_by_id(*id).is_none()) {
                bail!(
                    "CONFLICT: {n} records are wrapped under KEK {id}, which this key set does not hold\nhint: use the key set that has it"
                );
            }
            let in_use: Vec<u32> = usage.iter().map(|(id, _)| *id).collect();
            let still = in_use.iter().filter(|id| **id != current).count();
            if still > 0 {
                bail!(
                    "CONFLICT: records still use KEKs other than the current one ({usage:?})\nhint: run 'agentkeys-server rotate-kek rewrap' first"
                );
            }
            let retired = keys.retiring(|id| in_use.contains(&id))?;
            retired.write_new_file(&out)?;
            println!(
                "wrote {} (0600): KEKs {:?} (retired {:?}); give it to every server",
                out.display(),
                retired.kek_ids(),
                keys.kek_ids()
                    .into_iter()
                    .filter(|id| !retired.kek_ids().contains(id))
                    .collect::<Vec<_>>()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open_any(database: &str) -> anyhow::Result<AnyStore> {
    if sqlite_path(database).is_some() {
        Ok(AnyStore::Sqlite(
            existing_sqlite(database, "--database").await?,
        ))
    } else {
        Ok(AnyStore::open(database)
            .await
            .context("opening the database")?)
    }
}

/// Re-wraps every record not under the current KEK, page by page, each row with a
/// compare-and-set so a store meanwhile (already under the current KEK) wins.
async fn rewrap(store: &AnyStore, keys: &ServerKeys) -> anyhow::Result<ExitCode> {
    use agentkeys_core::crypto::envelope;
    const PAGE: u32 = 500;
    let (current, new) = keys.kek();
    let mut after = None;
    let (mut moved, mut raced) = (0u64, 0u64);
    loop {
        let page = store
            .credentials_to_rewrap(current, after.clone(), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.owner.clone(), last.service.clone()));
        for c in &page {
            let Some(old) = keys.kek_by_id(c.kek_id) else {
                bail!(
                    "CONFLICT: {}/{} is wrapped under KEK {}, which this key set does not hold\nhint: use the key set from 'rotate-kek new-key', which keeps the old KEKs",
                    c.owner,
                    c.service,
                    c.kek_id
                );
            };
            let aad = agentkeys_types::api::credential_aad(&c.owner, &c.service);
            let wrapped = envelope::rewrap(old, new, &aad, &c.wrapped_dek).map_err(|e| {
                anyhow::anyhow!(
                    "INTERNAL: {}/{} does not open under KEK {}: {e}",
                    c.owner,
                    c.service,
                    c.kek_id
                )
            })?;
            if store
                .rewrap(&c.owner, &c.service, &c.wrapped_dek, &wrapped, current)
                .await?
            {
                moved += 1;
            } else {
                raced += 1;
            }
        }
        eprint!("\rre-wrapped {moved} records   ");
    }
    eprintln!();
    let usage = store.kek_usage().await?;
    println!(
        "re-wrapped {moved} records under KEK {current} ({raced} stored meanwhile were already); records per KEK now: {usage:?}"
    );
    if usage.iter().all(|(id, _)| *id == current) {
        println!(
            "next: 'agentkeys-server rotate-kek retire' writes the key set without the old KEKs"
        );
    }
    Ok(ExitCode::SUCCESS)
}
