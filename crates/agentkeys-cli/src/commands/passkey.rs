//! `agentkeys passkey add|list|remove`: the passkeys that approve on the approval page.

use agentkeys_core::Backend as _;
use agentkeys_types::api::StartPasskeyRegistration;
use serde_json::json;

use crate::cli::PasskeyAction;
use crate::context::Context;
use crate::error::CliResult;
use crate::output::{self, duration, note};

/// `agentkeys passkey …`.
pub async fn passkey(ctx: &Context, action: PasskeyAction) -> CliResult {
    let session = ctx.session()?;
    match action {
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
