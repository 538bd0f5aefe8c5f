//! `check SERVICE [--hold]`: fetches a credential through the managed runtime, prints one
//! JSON line (service, length, kind, SHA-256 of the bytes), and with `--hold` waits for a
//! line on stdin before exiting, so a test can scan this process after the credential was
//! dropped.

use std::io::BufRead as _;

use sha2::{Digest as _, Sha256};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(service) = args.first() else {
        eprintln!("usage: check SERVICE [--hold]");
        return std::process::ExitCode::from(2);
    };
    let line = match agentkeys_runtime::credential(service) {
        Ok(credential) => {
            let digest = credential.with_bytes(|b| Sha256::digest(b));
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let dumpable = agentkeys_secmem::process::is_dumpable().unwrap_or(true);
            format!(
                "{{\"service\":\"{}\",\"length\":{},\"kind\":\"{}\",\"sha256\":\"{hex}\",\"dumpable_while_held\":{dumpable}}}",
                credential.service(),
                credential.len(),
                credential.kind()
            )
        }
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("{line}");
    if args.iter().any(|a| a == "--hold") {
        let mut buf = String::new();
        let _ = std::io::stdin().lock().read_line(&mut buf);
    }
    std::process::ExitCode::SUCCESS
}
