//! `agentkeys passkey add|list|remove`: the passkeys that approve on the approval page.

use agentkeys_core::Backend as _;
use agentkeys_types::api::StartPasskeyRegistration;
use serde_json::json;

use crate::context::Context;
use crate::error::CliResult;
use crate::output::{self, duration, note};

// The flags of `agentkeys passkey` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct PasskeyArgs {
    /// What to do.
    #[command(subcommand)]
    action: PasskeyAction,
}

/// What `agentkeys passkey` does.
#[derive(clap::Subcommand)]
pub enum PasskeyAction {
    /// Print a one-time link that registers a passkey for you where it is opened.
    Add {
        /// A name to tell it apart (phone, laptop, yubikey).
        #[arg(long, default_value = "passkey")]
        name: String,
    },
    /// List your passkeys.
    List,
    /// Remove a passkey: it approves nothing any more. The last one stays while a
    /// credential requires a passkey.
    Remove {
        /// Its id (pk_…), as 'agentkeys passkey list' shows it.
        id: String,
    },
}

/// `agentkeys passkey …`.
pub async fn passkey(ctx: &Context, args: PasskeyArgs) -> CliResult {
    let session = ctx.session()?;
    match args.action {
        PasskeyAction::Add { name } => {
            let ticket = session
                .backend
                .start_passkey_registration(&StartPasskeyRegistration { name: Some(name) })
                .await?;
            if ctx.json {
                return output::json(&json!({
                    "url": ticket.url, "expires_at": ticket.expires_at,
                }));
            }
            note(&format!(
                "Open this link in the browser that holds (or will make) the passkey; it works \
                 once, for {}:",
                duration(ticket.expires_at - output::now())
            ));
            output::line(&ticket.url)
        }
        PasskeyAction::List => {
            let list = session.backend.passkeys().await?;
            if ctx.json {
                return output::json(&json!({ "passkeys": list.passkeys }));
            }
            if list.passkeys.is_empty() {
                return output::line("No passkeys. Register one with 'agentkeys passkey add'.");
            }
            let rows: Vec<Vec<String>> = list
                .passkeys
                .iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        p.name.clone(),
                        output::timestamp(p.created_at),
                        p.last_used_at
                            .map_or_else(|| "never".to_owned(), output::timestamp),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "ADDED", "LAST USED"], &rows)
        }
        PasskeyAction::Remove { id } => {
            let removed = session.backend.remove_passkey(&id).await?;
            if ctx.json {
                return output::json(&json!({ "removed": removed.id }));
            }
            output::line(&format!("Removed passkey {}.", removed.id))
        }
    }
}
