//! Session commands: `init`, `whoami`, `revoke`, `recover`.

use agentkeys_core::client::open_decision;
use agentkeys_core::crypto::HpkeKeyPair;
use agentkeys_core::session_store::{Protection, SessionStoreError, StoredSession};
use agentkeys_core::{Backend as _, ClientError, HttpBackend};
use agentkeys_secmem::SecretString;
use agentkeys_types::ErrorCode;
use agentkeys_types::api::{AuthKind, AuthStatus, OpenAuthRequest, RevokeRequest, SessionInfo};
use serde_json::json;

use crate::context::{Context, normalize_server};
use crate::error::{CliError, CliResult, exit};
use crate::output::{self, duration, note, timestamp};
use crate::secret_io::{self, Source};

// The flags of `agentkeys init` (no doc comment: see `crate::cli::Command`). No `Debug`:
// the enrolment token would print through it.
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct InitArgs {
    /// Enrolment token ('-' reads it from stdin). Prefer the environment variable or a
    /// pipe: command-line arguments are visible to every local user.
    #[arg(
        long,
        env = "AGENTKEYS_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    auth_token: Option<String>,
    /// Mint a new session even if the stored one is valid (and revoke the old one).
    #[arg(long)]
    force: bool,
}

// The flags of `agentkeys revoke` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The agent whose sessions to revoke (wallet, alias or e-mail).
    wallet: Option<String>,
}

// The flags of `agentkeys recover` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct RecoverArgs {
    /// The agent: its wallet, or an alias or e-mail its master linked (with --parent).
    identity: String,
    /// The master's wallet: whose aliases and e-mails IDENTITY is looked up among.
    #[arg(long, value_name = "MASTER_WALLET")]
    parent: Option<String>,
    /// Give up after this many seconds (codes expire after 60 s and are renewed).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    wait: u64,
    /// Replace a valid stored session.
    #[arg(long)]
    force: bool,
}

/// Whether a server error means "this session is over" (and a new one may be minted).
fn session_is_over(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            code: ErrorCode::Unauthorized | ErrorCode::Expired,
            ..
        }
    )
}

fn protection_json(p: &Protection) -> serde_json::Value {
    match p {
        Protection::Keyring { account } => json!({
            "kind": "keyring", "service": agentkeys_core::session_store::KEYRING_SERVICE,
            "account": account, "description": p.describe(),
        }),
        Protection::File { path } => json!({
            "kind": "file", "path": path, "description": p.describe(),
        }),
    }
}

fn session_json(info: &SessionInfo, server: &str, p: &Protection) -> serde_json::Value {
    json!({
        "wallet": info.wallet,
        "kind": info.kind,
        "session_id": info.session_id,
        "scope": info.scope,
        "parent": info.parent,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "expires_in_secs": (info.expires_at - output::now()).max(0),
        "server": server,
        "protection": protection_json(p),
    })
}

fn kind_name(info: &SessionInfo) -> &'static str {
    match info.kind {
        agentkeys_types::api::SessionKind::Master => "master",
        agentkeys_types::api::SessionKind::Agent => "agent",
    }
}

fn decode_key(b64_key: &str, what: &str) -> CliResult<[u8; 32]> {
    agentkeys_core::crypto::key_from_base64(b64_key).ok_or_else(|| {
        CliError::new(
            "INTERNAL",
            exit::INTERNAL,
            format!("the server's {what} is not a 32-byte key"),
        )
    })
}

/// The enrolment token: the flag or `AGENTKEYS_AUTH_TOKEN` (`-` = stdin), else a hidden prompt.
fn enrolment_token(flag: Option<String>, server: &str) -> CliResult<SecretString> {
    let token = match flag {
        Some(t) if t == "-" => {
            let page = secret_io::read_value(Source::File(std::path::Path::new("-")))?;
            secret_from_page(page.expose_secret())?
        }
        Some(t) => SecretString::from(t),
        None if secret_io::stdin_is_tty() => {
            let page = secret_io::prompt_hidden(&format!("Enrolment token for {server}: "))?;
            secret_from_page(page.expose_secret())?
        }
        None => {
            return Err(CliError::usage("no enrolment token").hint(
                "set AGENTKEYS_AUTH_TOKEN, pipe it with --auth-token -, or run in a terminal \
                 to be prompted",
            ));
        }
    };
    if token.expose_secret().trim().is_empty() {
        return Err(CliError::usage("the enrolment token is empty"));
    }
    Ok(token)
}

fn secret_from_page(bytes: &[u8]) -> CliResult<SecretString> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| CliError::usage("the enrolment token is not UTF-8"))?;
    Ok(SecretString::from_str_copy(text.trim()))
}

/// `agentkeys init`.
pub async fn init(ctx: &Context, args: InitArgs) -> CliResult {
    let InitArgs { auth_token, force } = args;
    let had_file = ctx.store.exists();
    let existing = match ctx.store.load() {
        Ok(s) => Some(s),
        Err(SessionStoreError::NotFound(_)) => None,
        Err(e) => {
            note(&format!(
                "The stored session cannot be used ({e}); minting a new one."
            ));
            None
        }
    };
    if let Some((stored, protection)) = &existing
        && !force
    {
        ctx.check_server(stored).map_err(|e| {
            e.hint("'agentkeys init --force --server URL' replaces it with a session on URL")
        })?;
        let backend = HttpBackend::for_session(stored)?;
        match backend.session().await {
            Ok(info) => {
                if ctx.json {
                    let mut v = session_json(&info, &stored.server, protection);
                    v["status"] = json!("already_initialized");
                    return output::json(&v);
                }
                return output::line(&format!("Already initialized as {}", info.wallet));
            }
            Err(e) if session_is_over(&e) => {
                note("The stored session is expired or revoked; minting a new one.");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let server = ctx.server_or_error(existing.as_ref().map(|(s, _)| s))?;
    let backend = HttpBackend::new(&server)?;
    let info = backend.server_info().await?;
    let signing_key = decode_key(&info.signing_public_key, "signing key")?;
    if let Some((old, _)) = &existing
        && !force
        && normalize_server(&old.server) == server
        && old.server_signing_key != signing_key
    {
        return Err(CliError::new(
            "DENIED",
            exit::AUTH,
            format!("the server at {server} presents a different signing key than the one pinned"),
        )
        .hint("if the server's keys were rotated on purpose, run 'agentkeys init --force'"));
    }
    let token = enrolment_token(auth_token, &server)?;
    let grant = backend.create_session(token).await?;
    let stored = StoredSession {
        server: server.clone(),
        token: grant.token,
        session: grant.session,
        server_signing_key: signing_key,
    };
    // A new data key only with --force, or when the old one is lost; otherwise the key
    // written at first init stays (decision 79 in docs/architecture.md: written once, never
    // updated).
    let rotate = force || (had_file && existing.is_none());
    let protection = ctx.store.save(&stored, ctx.choice, rotate)?;
    let mut old_revoked = None;
    if force && let Some((old, _)) = existing {
        let old_backend = HttpBackend::for_session(&old)?;
        old_revoked = Some(match old_backend.revoke(&RevokeRequest::default()).await {
            Ok(_) => true,
            Err(e) if session_is_over(&e) => true,
            Err(e) => {
                note(&format!(
                    "warning: the old session could not be revoked ({e}); it stays valid until it expires"
                ));
                false
            }
        });
    }
    let s = &stored.session;
    if ctx.json {
        let mut v = session_json(s, &server, &protection);
        v["status"] = json!("initialized");
        v["old_session_revoked"] = json!(old_revoked);
        return output::json(&v);
    }
    output::line(&format!(
        "Initialized as {} ({} session on {server}, expires {})",
        s.wallet,
        kind_name(s),
        timestamp(s.expires_at)
    ))?;
    output::line(&format!("Session protected by: {}", protection.describe()))?;
    if old_revoked == Some(true) {
        output::line("The previous session was revoked.")?;
    }
    Ok(())
}

/// `agentkeys whoami`.
pub async fn whoami(ctx: &Context) -> CliResult {
    let session = ctx.session()?;
    let info = session.backend.session().await.map_err(|e| {
        let over = session_is_over(&e);
        let err = CliError::from(e);
        if over {
            err.hint("the session was revoked or expired; run 'agentkeys init' for a new one")
        } else {
            err
        }
    })?;
    let server = &session.stored.server;
    if ctx.json {
        return output::json(&session_json(&info, server, &session.protection));
    }
    let left = info.expires_at - output::now();
    let mut rows = vec![
        ("wallet", info.wallet.to_string()),
        ("kind", kind_name(&info).to_owned()),
        ("scope", output::scope(&info.scope)),
    ];
    if let Some(p) = &info.parent {
        rows.push(("parent", p.to_string()));
    }
    rows.extend([
        ("created", timestamp(info.created_at)),
        (
            "expires",
            format!("{} ({} left)", timestamp(info.expires_at), duration(left)),
        ),
        ("server", server.clone()),
        ("protection", session.protection.describe()),
    ]);
    for (k, v) in rows {
        output::line(&format!("{:<11} {v}", format!("{k}:")))?;
    }
    Ok(())
}

/// `agentkeys revoke [WALLET]`.
pub async fn revoke(ctx: &Context, args: RevokeArgs) -> CliResult {
    let Some(name) = args.wallet else {
        return revoke_own(ctx).await;
    };
    let session = ctx.session()?;
    let wallet = session.resolve_agent(&name).await?;
    let r = session
        .backend
        .revoke(&RevokeRequest {
            session_id: None,
            wallet: Some(wallet.clone()),
        })
        .await?;
    if ctx.json {
        return output::json(&json!({"wallet": wallet, "revoked": r.revoked}));
    }
    output::line(&format!(
        "Revoked {} session(s) of {wallet}. Its daemon must be re-paired to work again.",
        r.revoked
    ))
}

async fn revoke_own(ctx: &Context) -> CliResult {
    let session = match ctx.session() {
        Ok(s) => s,
        Err(e) if e.code == "NO_SESSION" && !ctx.store.exists() => return Err(e),
        Err(e) if e.code == "CONFLICT" => return Err(e),
        Err(e) => {
            // The local copy cannot be opened (key lost, corrupt): it cannot be revoked on
            // the server from here, but it can still be wiped.
            ctx.store.wipe()?;
            note(&format!(
                "The stored session could not be opened ({}); the local copy was wiped but the \
                 session was not revoked on the server (it expires on its own).",
                e.message
            ));
            return if ctx.json {
                output::json(&json!({"revoked": 0, "local_copy_wiped": true}))
            } else {
                Ok(())
            };
        }
    };
    let revoked = match session.backend.revoke(&RevokeRequest::default()).await {
        Ok(r) => r.revoked,
        Err(e) if session_is_over(&e) => 0,
        Err(e) => {
            return Err(CliError::from(e).hint(
                "nothing was wiped; retry when the server is reachable so the token dies too",
            ));
        }
    };
    ctx.store.wipe()?;
    let wallet = session.wallet().clone();
    if ctx.json {
        return output::json(
            &json!({"wallet": wallet, "revoked": revoked, "local_copy_wiped": true}),
        );
    }
    output::line(&format!(
        "Revoked this machine's session ({wallet}) and wiped the local copy."
    ))
}

/// `agentkeys recover IDENTITY [--parent MASTER]`.
pub async fn recover(ctx: &Context, args: RecoverArgs) -> CliResult {
    let RecoverArgs {
        identity,
        parent,
        wait,
        force,
    } = args;
    let parent = parent
        .as_deref()
        .map(|p| {
            agentkeys_types::Wallet::parse(p.trim()).map_err(|_| {
                CliError::usage(format!("--parent '{p}' is not a wallet"))
                    .hint("--parent is the master's wallet (0x and 40 hex digits), as its 'agentkeys whoami' shows")
            })
        })
        .transpose()?;
    let existing = ctx.store.load().ok().map(|(s, _)| s);
    if let Some(stored) = &existing
        && !force
    {
        let backend = HttpBackend::for_session(stored)?;
        if backend.session().await.is_ok() {
            return Err(CliError::new(
                "CONFLICT",
                exit::REJECTED,
                format!(
                    "a valid session ({}) is stored in {}",
                    stored.session.wallet,
                    ctx.home.display()
                ),
            )
            .hint("use another AGENTKEYS_HOME for the agent, or --force to replace it"));
        }
    }
    let server = ctx.server_or_error(existing.as_ref())?;
    let backend = HttpBackend::new(&server)?;
    let pinned = match &existing {
        Some(s) if normalize_server(&s.server) == server => s.server_signing_key,
        // First contact with this server from this home: pin what it presents now.
        _ => decode_key(
            &backend.server_info().await?.signing_public_key,
            "signing key",
        )?,
    };
    let deadline = output::now() + i64::try_from(wait).unwrap_or(i64::MAX / 2);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    loop {
        let requester = HpkeKeyPair::generate().map_err(agentkeys_core::ClientError::from)?;
        // The OTP shown is the one computed here from our own key; the server's must match.
        let ticket = backend
            .open_requester_request(
                OpenAuthRequest {
                    kind: AuthKind::Recover,
                    requester_public_key: None,
                    identity: Some(identity.to_owned()),
                    parent: parent.clone(),
                    agent: None,
                    service: None,
                    description: Some(format!("agentkeys recover on {}", host.trim())),
                },
                &requester,
            )
            .await?;
        note(&format!(
            "Recover code {}, OTP {} — approve with: agentkeys approve {}",
            ticket.pair_code, ticket.otp, ticket.pair_code
        ));
        loop {
            let Some(poll) = output::poll_window(deadline) else {
                return Err(CliError::new(
                    "EXPIRED",
                    exit::AUTH,
                    format!("gave up after {wait} s without a decision"),
                )
                .hint("run 'agentkeys recover' again and approve the code it shows"));
            };
            let decision = backend.decision(&ticket.id, poll).await?;
            match decision.status {
                AuthStatus::Pending => continue,
                AuthStatus::Approved => {
                    let grant = open_decision(&decision, &requester, &pinned)?;
                    let stored = StoredSession {
                        server: server.clone(),
                        token: grant.token,
                        session: grant.session,
                        server_signing_key: pinned,
                    };
                    let protection = ctx.store.save(&stored, ctx.choice, existing.is_some())?;
                    let s = &stored.session;
                    if ctx.json {
                        let mut v = session_json(s, &server, &protection);
                        v["status"] = json!("recovered");
                        return output::json(&v);
                    }
                    output::line(&format!(
                        "Recovered a session for agent {} (scope {}, expires {})",
                        s.wallet,
                        output::scope(&s.scope),
                        timestamp(s.expires_at)
                    ))?;
                    return output::line(&format!(
                        "Session protected by: {}",
                        protection.describe()
                    ));
                }
                AuthStatus::Denied => {
                    return Err(CliError::new(
                        "DENIED",
                        exit::AUTH,
                        "the recovery was denied",
                    ));
                }
                AuthStatus::Expired => {
                    note("The code expired without a decision; opening a new one.");
                    break;
                }
                AuthStatus::Consumed => {
                    // Only high-value grants are consumed; an approved recovery is served
                    // (sealed to our key) for as long as the server keeps the request.
                    return Err(CliError::new(
                        "PROTOCOL",
                        exit::INTERNAL,
                        "the server answered a recovery with the status 'consumed'",
                    )
                    .hint("is the server an agentkeys server of the same version?"));
                }
            }
        }
    }
}
