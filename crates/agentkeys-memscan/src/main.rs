//! `agentkeys-memscan PID PATTERN [--json]`: lists where PATTERN occurs in PID's readable
//! memory, by mapping. Exit 0 when nothing is found, 1 when something is, 2 on error.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--json").collect();
    let (Some(pid), Some(pattern), None) = (rest.first(), rest.get(1), rest.get(2)) else {
        eprintln!("usage: agentkeys-memscan PID PATTERN [--json]");
        eprintln!("example: agentkeys-memscan $(pgrep agentkeys-daemon) sk-canary-1234");
        return ExitCode::from(2);
    };
    let Ok(pid) = pid.parse::<u32>() else {
        eprintln!("error: '{pid}' is not a process id");
        return ExitCode::from(2);
    };
    let report = match agentkeys_memscan::scan(pid, pattern.as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot scan process {pid}: {e}");
            eprintln!(
                "hint: reading another process's memory needs root or the same uid and a dumpable target"
            );
            return ExitCode::from(2);
        }
    };
    if json {
        let hits: Vec<_> = report
            .hits
            .iter()
            .map(|h| {
                serde_json::json!({
                    "addr": format!("{:#x}", h.addr), "mapping": h.mapping.name,
                    "perms": h.mapping.perms,
                })
            })
            .collect();
        let refused: Vec<_> = report
            .refused
            .iter()
            .map(|(m, e)| serde_json::json!({"mapping": m.name, "perms": m.perms, "error": e}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "pid": pid, "hits": hits, "scanned_bytes": report.scanned_bytes, "refused": refused,
            })
        );
    } else {
        for h in &report.hits {
            println!("hit {:#x} {} {}", h.addr, h.mapping.perms, h.mapping.name);
        }
        for (m, e) in &report.refused {
            println!(
                "refused {:#x}-{:#x} {} {} ({e})",
                m.start, m.end, m.perms, m.name
            );
        }
        println!(
            "{} hit(s) in {} bytes scanned; {} mapping(s) refused",
            report.hits.len(),
            report.scanned_bytes,
            report.refused.len()
        );
    }
    if report.hits.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
