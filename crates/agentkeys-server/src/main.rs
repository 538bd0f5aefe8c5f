//! `agentkeys-server`: parse flags, load keys and storage, bind, serve. Logic lives in the
//! library; this file wires it.

#![forbid(unsafe_code)]

mod cli;
mod tools;

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentkeys_server::store::{AnyStore, Store as _};
use agentkeys_server::{AppState, AuthMode, keys, keys::ServerKeys};
use anyhow::Context as _;
use clap::Parser as _;

/// Freed blocks are zeroized before reuse (platform-scouting 2(d)): the server opens every
/// credential it stores or re-seals, and the buffers around them are scrubbed when freed.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc> =
    zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
    let mut args = cli::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if args.log_format == cli::LogFormat::Json {
        // One JSON object per line, for log shippers; the fields are the text format's.
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    agentkeys_secmem::process::quiet_panics("agentkeys-server");
    let tool = args.command.take();
    let plan = match tool {
        Some(_) => None,
        None => match args.plan() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: BAD_REQUEST: {e}\nhint: see agentkeys-server --help");
                return ExitCode::from(2);
            }
        },
    };
    // The server, and the tools that handle its keys, open credentials and hold the
    // key-encryption key: no core dumps, not dumpable (same-uid processes cannot ptrace
    // them or read their /proc/<pid>/mem), as the daemon and the CLI.
    if let Err(e) = agentkeys_secmem::process::disable_core_dumps() {
        eprintln!("error: HARDENING: cannot make this process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    // Before any thread exists: the keys leave the environment (wiped where they were, so
    // /proc/<pid>/environ and child processes never see them) for secret pages.
    // An empty variable counts as unset, as every other variable does: the keys then come
    // from the data directory's key file.
    let env_keys = match agentkeys_secmem::process::take_secret_env(keys::KEYS_ENV) {
        Ok(v) => v.filter(|raw| !raw.expose_secret().trim_ascii().is_empty()),
        Err(e) => {
            eprintln!("error: INTERNAL: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    match (tool, plan) {
        (Some(tool), _) => runtime.block_on(tools::run(tool, env_keys)),
        (None, Some(plan)) => match runtime.block_on(run(plan, env_keys)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: INTERNAL: {e:#}");
                print_hint(&e);
                ExitCode::FAILURE
            }
        },
        (None, None) => ExitCode::FAILURE, // no tool always comes with a plan
    }
}

/// Prints the fix a store error suggests (an unreachable database says what to check).
pub(crate) fn print_hint(e: &anyhow::Error) {
    let hint = e
        .chain()
        .find_map(|c| c.downcast_ref::<agentkeys_server::store::StoreError>())
        .and_then(agentkeys_server::store::StoreError::hint);
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

pub(crate) fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("agentkeys-server")
}

fn private_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", p.display()))
}

async fn run(
    plan: cli::Plan,
    env_keys: Option<agentkeys_secmem::SecretBytes>,
) -> anyhow::Result<()> {
    let _dev_dir;
    let data_dir = if plan.dev {
        let d = tempfile::Builder::new()
            .prefix("agentkeys-dev-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let path = d.path().to_owned();
        _dev_dir = d;
        path
    } else {
        plan.data_dir.clone().unwrap_or_else(default_data_dir)
    };
    private_dir(&data_dir)?;
    let mut config = plan.config;
    config.auth = match &plan.auth {
        cli::AuthPlan::Dev => AuthMode::Dev,
        cli::AuthPlan::Tokens(f) => AuthMode::from_tokens_file(f)?,
    };
    let keys = match env_keys {
        Some(raw) => ServerKeys::from_env_value(raw.expose_secret())?,
        None => ServerKeys::load_or_create(&data_dir)?,
    };
    // A bad certificate or key fails the start, before anything else is opened.
    if let Some(files) = &plan.tls {
        agentkeys_server::tls::load(files).context("--tls-cert / --tls-key")?;
    }
    let database = plan
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("agentkeys.db").display()));
    let store = AnyStore::open(&database)
        .await
        .context("opening the database")?;
    let listener = tokio::net::TcpListener::bind(plan.listen)
        .await
        .with_context(|| format!("binding {}", plan.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && plan.tls.is_none() {
        tracing::warn!(listen = %addr, "serving plain HTTP beyond loopback: bearer tokens would cross the network in clear; give --tls-cert and --tls-key, or put a TLS terminator in front (docs/operations.md)");
    }
    if matches!(config.auth, AuthMode::Dev) && !plan.dev {
        tracing::warn!(
            "--auth dev: any non-empty enrolment token creates a master session, and the token \
             is that master's only secret; use --auth tokens FILE outside development"
        );
    }
    let scheme = if plan.tls.is_some() { "https" } else { "http" };
    if config.public_url.is_none() && addr.ip().is_loopback() {
        // Browsers treat localhost as secure and accept it as a passkey domain; an IP
        // address is never one.
        config.public_url = Some(format!("{scheme}://localhost:{}", addr.port()));
    }
    tracing::info!(listen = %addr, scheme, public_url = config.public_url.as_deref().unwrap_or("-"), data_dir = %data_dir.display(), database = store.engine(), keys = %keys.source, "agentkeys-server ready");
    if plan.dev {
        println!("export AGENTKEYS_SERVER={scheme}://{addr}");
        println!(
            "# development server; data in {} is deleted on exit",
            data_dir.display()
        );
    }
    let state = AppState::new(store, keys, config);
    if let Some(at) = plan.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding --metrics-listen {at}"))?;
        tracing::info!(metrics = %metrics.local_addr()?, "serving GET /metrics");
        let app = agentkeys_server::http::metrics_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, app).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    match plan.tls {
        Some(files) => {
            agentkeys_server::tls::serve_tls(listener, state, files, shutdown_signal()).await?;
        }
        None => agentkeys_server::serve(listener, state, shutdown_signal()).await?,
    }
    tracing::info!("agentkeys-server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    /// This binary's global allocator (above) scrubs what it frees.
    #[test]
    fn freed_heap_memory_is_zeroized() {
        agentkeys_testkit::assert_freed_heap_is_scrubbed();
    }
}
