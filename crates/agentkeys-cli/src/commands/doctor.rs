//! `agentkeys doctor`: this process's hardening report, where the session is kept, whether
//! the server answers, and whether a daemon answers on the socket.

use std::io::{BufRead as _, BufReader, Write as _};
use std::time::Duration;

use agentkeys_core::Backend as _;
use agentkeys_core::HttpBackend;
use agentkeys_secmem::harden::{self, Status};
use serde_json::{Value, json};

use crate::context::Context;
use crate::error::{CliError, CliResult, exit};
use crate::output;

/// Prints the checks; exits 1 when a hardening item failed.
pub async fn doctor(ctx: &Context) -> CliResult {
    // Idempotent: main applied the same protections before parsing the command line.
    let report = harden::harden_cli();
    let (session, server) = match ctx.store.load() {
        Ok((stored, protection)) => (
            json!({"stored": true, "protection": protection.describe()}),
            Some(stored.server.clone()),
        ),
        Err(e) => (
            json!({"stored": false, "problem": e.to_string()}),
            ctx.server.clone(),
        ),
    };
    let server = match server {
        Some(url) => {
            let reachable = match HttpBackend::new(&url) {
                Ok(b) => b.health().await.is_ok(),
                Err(_) => false,
            };
            json!({"url": url, "reachable": reachable})
        }
        None => json!({"url": null, "reachable": false}),
    };
    let socket = super::run::socket_path(None).ok();
    let status = socket.as_ref().and_then(|p| daemon_status(p));
    let daemon = socket.as_ref().map_or(json!({"socket": null}), |p| {
        json!({
            "socket": p.display().to_string(),
            "answers": status.as_ref().and_then(|s| s["wallet"].as_str()),
            "same_uid": status.as_ref().map(|s| s["same_uid"].clone()),
        })
    });
    let hardening: Vec<Value> = report
        .checks
        .iter()
        .map(|c| {
            json!({"name": c.name, "status": c.status.name(),
                   "reason": c.status.reason(), "detail": c.detail})
        })
        .collect();
    if ctx.json {
        output::json(&json!({
            "hardening": hardening, "session": session, "server": server, "daemon": daemon,
        }))?;
    } else {
        output::line("hardening of this process:")?;
        for line in report.to_string().lines() {
            output::line(&format!("  {line}"))?;
        }
        output::line(&format!(
            "session:  {}",
            session["protection"].as_str().map_or_else(
                || "none stored (run 'agentkeys init')".to_owned(),
                str::to_owned
            )
        ))?;
        output::line(&format!(
            "server:   {}",
            match server["url"].as_str() {
                Some(u) if server["reachable"] == json!(true) => format!("{u} (reachable)"),
                Some(u) => format!("{u} (UNREACHABLE)"),
                None => "not configured (--server or AGENTKEYS_SERVER)".to_owned(),
            }
        ))?;
        output::line(&format!(
            "daemon:   {}",
            match (daemon["socket"].as_str(), daemon["answers"].as_str()) {
                (Some(s), Some(w)) => format!("{s} (serving agent {w})"),
                (Some(s), None) => format!("{s} (no daemon answers)"),
                _ => "no socket path (set AGENTKEYS_SOCKET)".to_owned(),
            }
        ))?;
        if let Some(same) = daemon.get("same_uid").filter(|v| v.is_object()) {
            output::line(&format!(
                "same_uid: {}",
                match same["status"].as_str() {
                    Some("degraded") => format!(
                        "DEGRADED: agents run as the daemon's uid ({} connection(s)): {}",
                        same["connections"],
                        same["detail"].as_str().unwrap_or("")
                    ),
                    _ => "ok (no agent runs as the daemon's uid)".to_owned(),
                }
            ))?;
        }
    }
    if let Some(c) = report
        .checks
        .iter()
        .find(|c| matches!(c.status, Status::Failed(_)))
    {
        return Err(CliError::new(
            "HARDENING",
            exit::INTERNAL,
            format!("{}: {}", c.name, c.status.reason().unwrap_or_default()),
        ));
    }
    Ok(())
}

/// The `agentkeys/status` answer of a daemon on `path`, if one answers within 2 s.
fn daemon_status(path: &std::path::Path) -> Option<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"agentkeys/status\"}\n")
        .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    v.get("result").cloned()
}
