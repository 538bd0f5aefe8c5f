//! Agent commands: `agents`, `scope`, `teardown`, `link`.

use agentkeys_core::Backend as _;
use agentkeys_types::api::LinkIdentityRequest;
use agentkeys_types::{Scope, Wallet};
use serde_json::json;

use crate::context::Context;
use crate::error::{CliError, CliResult, exit};
use crate::output::{self, timestamp};
use crate::secret_io;

// The flags of `agentkeys scope` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ScopeArgs {
    /// The agent (wallet, alias or e-mail).
    agent: String,
    /// What to change.
    #[command(flatten)]
    change: ScopeChange,
}

// The change flags of `agentkeys scope` (none: just show the scope).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ScopeChange {
    /// Allow this service too (repeatable, or comma-separated).
    #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
    add: Vec<String>,
    /// Stop allowing this service (repeatable, or comma-separated).
    #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
    remove: Vec<String>,
    /// Replace the list ('*' = every service, '' = none).
    #[arg(long, value_name = "A,B", conflicts_with_all = ["add", "remove"])]
    set: Option<String>,
    /// The agent may read but not store.
    #[arg(long, conflicts_with = "read_write")]
    read_only: bool,
    /// The agent may store within its scope.
    #[arg(long)]
    read_write: bool,
}

// The flags of `agentkeys teardown` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct TeardownArgs {
    /// The agent (wallet, alias or e-mail).
    wallet: String,
    /// Do not ask for confirmation (required when there is no terminal).
    #[arg(short, long)]
    yes: bool,
}

// The flags of `agentkeys link`: an alias or an e-mail address, at least one.
#[allow(missing_docs)]
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("name").required(true).args(["alias", "email"])))]
pub struct LinkArgs {
    /// The wallet.
    wallet: String,
    /// An alias: lower-case letters, digits, ".", "_" and "-", at most 64.
    #[arg(long)]
    alias: Option<String>,
    /// An e-mail address.
    #[arg(long)]
    email: Option<String>,
}

/// `agentkeys agents`.
pub async fn agents(ctx: &Context) -> CliResult {
    let session = ctx.session()?;
    let list = session.backend.agents().await?;
    if ctx.json {
        return output::json(&json!({ "agents": list.agents }));
    }
    if list.agents.is_empty() {
        output::note(
            "No agents yet. Start agentkeys-daemon in a sandbox and approve its pair code.",
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            vec![
                a.wallet.to_string(),
                if a.identities.is_empty() {
                    "-".into()
                } else {
                    a.identities.join(", ")
                },
                output::scope(&a.scope),
                a.active_sessions.to_string(),
                a.last_used_at.map_or_else(|| "never".into(), timestamp),
            ]
        })
        .collect();
    output::table(
        &["WALLET", "NAMES", "SCOPE", "SESSIONS", "LAST USED"],
        &rows,
    )
}

impl ScopeChange {
    fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.set.is_none()
            && !self.read_only
            && !self.read_write
    }

    /// The scope after applying the change to `current`.
    pub fn apply(&self, current: &Scope) -> CliResult<Scope> {
        let mut services = match &self.set {
            Some(list) => split_list(list),
            None => current.services.clone(),
        };
        if !self.remove.is_empty() && services.iter().any(|s| s == "*") {
            return Err(CliError::usage(
                "the scope is '*' (every service), so nothing can be removed from it",
            )
            .hint("list the services to keep with --set a,b"));
        }
        services.retain(|s| !self.remove.contains(s));
        services.extend(
            self.add
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        );
        let read_only = if self.read_only {
            true
        } else if self.read_write {
            false
        } else {
            current.read_only
        };
        Scope {
            services,
            read_only,
        }
        .validated()
        .map_err(|e| {
            CliError::usage(format!("invalid scope: {e}"))
                .hint("services are names like openai or github; '*' means every service")
        })
    }
}

/// `a, b,,c` → `[a, b, c]`.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `agentkeys scope`.
pub async fn scope(ctx: &Context, args: ScopeArgs) -> CliResult {
    let ScopeArgs { agent, change } = args;
    let session = ctx.session()?;
    let wallet = session.resolve_agent(&agent).await?;
    let current = session.backend.agent_scope(&wallet).await?;
    let scope = if change.is_empty() {
        current
    } else {
        let next = change.apply(&current)?;
        session.backend.set_agent_scope(&wallet, &next).await?
    };
    if ctx.json {
        return output::json(&json!({ "agent": wallet, "scope": scope }));
    }
    output::line(&format!("Scope of {wallet}: {}", output::scope(&scope)))
}

/// `agentkeys teardown`.
pub async fn teardown(ctx: &Context, args: TeardownArgs) -> CliResult {
    let session = ctx.session()?;
    let wallet = session.resolve_agent(&args.wallet).await?;
    if !args.yes {
        let question = format!(
            "Tear down agent {wallet}: revoke all its sessions and delete all its credentials?"
        );
        if !secret_io::confirm(&question)? {
            return Err(CliError::new(
                "CANCELLED",
                exit::INTERNAL,
                "nothing was changed",
            ));
        }
    }
    let r = session.backend.teardown(&wallet).await?;
    if ctx.json {
        return output::json(&json!({
            "agent": wallet, "revoked_sessions": r.revoked_sessions,
            "deleted_credentials": r.deleted_credentials,
        }));
    }
    output::line(&format!(
        "Tore down {wallet}: {} session(s) revoked, {} credential(s) deleted",
        r.revoked_sessions, r.deleted_credentials
    ))
}

/// `agentkeys link`.
pub async fn link(ctx: &Context, args: LinkArgs) -> CliResult {
    let LinkArgs {
        wallet,
        alias,
        email,
    } = args;
    let wallet = Wallet::parse(&wallet).map_err(|_| {
        CliError::usage(format!("'{wallet}' is not a wallet"))
            .hint("a wallet is 0x followed by 40 lower-case hex digits; see 'agentkeys agents'")
    })?;
    let session = ctx.session()?;
    let identity = session
        .backend
        .link_identity(&LinkIdentityRequest {
            wallet,
            alias,
            email,
        })
        .await?;
    if ctx.json {
        return output::json(&json!({
            "kind": identity.kind, "value": identity.value, "wallet": identity.wallet,
        }));
    }
    output::line(&format!(
        "Linked {} '{}' to {}",
        identity.kind, identity.value, identity.wallet
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(add: &[&str], remove: &[&str], set: Option<&str>) -> ScopeChange {
        ScopeChange {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            set: set.map(str::to_owned),
            read_only: false,
            read_write: false,
        }
    }

    #[test]
    fn adding_and_removing_edit_the_current_list() {
        let current = Scope {
            services: vec!["openai".into(), "stripe".into()],
            read_only: true,
        };
        let next = change(&["github"], &["stripe"], None)
            .apply(&current)
            .unwrap();
        assert_eq!(next.services, vec!["github", "openai"]);
        assert!(next.read_only);
    }

    #[test]
    fn set_replaces_and_an_empty_set_means_none() {
        let next = change(&[], &[], Some("")).apply(&Scope::all()).unwrap();
        assert!(next.services.is_empty());
        let next = change(&[], &[], Some("a, b"))
            .apply(&Scope::none())
            .unwrap();
        assert_eq!(next.services, vec!["a", "b"]);
    }

    #[test]
    fn removing_from_star_is_refused_and_bad_names_are_usage_errors() {
        assert!(change(&[], &["x"], None).apply(&Scope::all()).is_err());
        let err = change(&["Bad Name"], &[], None)
            .apply(&Scope::none())
            .unwrap_err();
        assert_eq!(err.exit, exit::USAGE);
    }
}
