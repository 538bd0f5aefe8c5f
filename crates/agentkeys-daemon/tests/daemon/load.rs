//! Load and faults: many agents at once, the server dying under load, the daemon killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentkeys_testkit::{TempDir, assert_no_readable_copy, canary};
use serde_json::{Value, json};

use super::common::*;

#[test]
fn sixty_four_agents_times_two_hundred_mixed_requests_have_no_error_and_leave_no_copy() {
    const AGENTS: usize = 64;
    const REQUESTS: usize = 200;
    let server = start_server(&["--read-rate", "0"]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("load");
    master.store("openai", &value, &["--agent", &wallet]);
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..AGENTS)
        .map(|agent| {
            let socket = d.socket().to_owned();
            let (errors, done, value) = (errors.clone(), done.clone(), value.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                c.initialize();
                for i in 0..REQUESTS {
                    let ok = match (agent + i) % 50 {
                        0 => {
                            let (is_error, text) = c.tool(
                                "run",
                                json!({"argv": ["/bin/true"], "services": ["openai"]}),
                            );
                            !is_error
                                && serde_json::from_str::<Value>(&text)
                                    .is_ok_and(|v| v["code"] == 0)
                        }
                        n if n % 5 == 0 => !c.tool("list_credentials", json!({})).0,
                        _ => {
                            let (is_error, text) =
                                c.tool("get_credential", json!({"service": "openai"}));
                            !is_error && text == value
                        }
                    };
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = started.elapsed();
    eprintln!(
        "load: {} requests from {AGENTS} connections in {took:?}",
        done.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(done.load(Ordering::Relaxed), AGENTS * REQUESTS);
    wait_for_events(&d.trail(), "drop", AGENTS * REQUESTS * 3 / 4);
    assert_no_readable_copy(d.pid(), &[value.as_bytes()]);
}

#[test]
fn thirty_two_agents_times_fifty_concurrent_gets_under_the_default_read_rate_all_succeed() {
    const AGENTS: usize = 32;
    const GETS: usize = 50;
    // The server's default limit: 50 reads a second, burst 100, for the daemon's session.
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("ratelimit");
    master.store("openai", &value, &["--agent", &wallet]);
    let started = Instant::now();
    let threads: Vec<_> = (0..AGENTS)
        .map(|_| {
            let socket = d.socket().to_owned();
            let value = value.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                c.initialize();
                // All fifty at once, before reading any answer.
                for id in 0..GETS {
                    let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                        "params": {"name": "get_credential", "arguments": {"service": "openai"}}});
                    c.send_raw(call.to_string().as_bytes());
                }
                let mut failures = Vec::new();
                let mut answered = 0;
                while answered < GETS {
                    let v = c.recv().expect("an answer for every call");
                    if v.get("id").is_none() {
                        continue;
                    }
                    answered += 1;
                    let result = &v["result"];
                    if result["isError"] == json!(true) || result["content"][0]["text"] != value {
                        failures.push(result["content"][0]["text"].to_string());
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let reads = server_reads(&master, &wallet);
    eprintln!(
        "rate limit: {} gets answered in {:?} with {reads} server reads",
        AGENTS * GETS,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(reads >= 1);
}

#[test]
fn a_rate_limited_read_waits_for_the_servers_hint_instead_of_failing() {
    let server = start_server(&["--read-rate", "2", "--read-burst", "1"]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("retry");
    master.store("openai", &value, &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    for _ in 0..3 {
        // One after the other: each its own server read, the 2nd and 3rd over the limit.
        assert_eq!(
            c.tool("get_credential", json!({"service": "openai"})),
            (false, value.clone())
        );
    }
    assert_eq!(server_reads(&master, &wallet), 3);
}

#[test]
fn the_server_dying_under_load_gives_clear_errors_and_the_daemon_recovers_by_itself() {
    let mut server = start_server(&["--read-rate", "0"]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("restart");
    master.store("openai", &value, &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    assert_eq!(
        c.tool("get_credential", json!({"service": "openai"})).1,
        value
    );

    server.stop();
    let (is_error, text) = c.tool("get_credential", json!({"service": "openai"}));
    assert!(is_error, "{text}");
    assert!(text.contains("unreachable"), "{text}");
    let status = c.request("agentkeys/status", json!({}));
    assert_eq!(status["result"]["server_reachable"], false, "{status}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (is_error, text) = c.tool("get_credential", json!({"service": "openai"}));
        if !is_error {
            assert_eq!(text, value);
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_no_credential_in_any_file() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (mut d, wallet) = paired_configured(
        &master,
        home.path(),
        &["--scope", "openai"],
        "[cache]\nopenai = \"600s\"\n",
        &[],
    );
    let value = canary("sigkill");
    master.store("openai", &value, &["--agent", &wallet]);
    let mut c = d.client();
    c.initialize();
    for _ in 0..3 {
        assert_eq!(
            c.tool("get_credential", json!({"service": "openai"})).1,
            value
        );
    }
    d.child().kill().unwrap(); // SIGKILL: no destructor runs, the cache is not wiped
    d.child().wait().unwrap();
    let mut files = Vec::new();
    let mut stack = vec![home.path().to_owned(), server.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
                assert!(!found, "the credential is on disk in {}", path.display());
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 4, "scanned {files:?}");
}

#[test]
fn a_flood_of_half_open_connections_from_one_process_locks_no_agent_out() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    let value = canary("flood");
    master.store("openai", &value, &["--agent", &wallet]);
    // This process opens 1,500 connections that never send a line.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let mut flood = Vec::new();
    for _ in 0..1500 {
        match std::os::unix::net::UnixStream::connect(d.socket()) {
            Ok(s) => flood.push(s),
            Err(e) => {
                assert!(flood.len() >= 1000, "only {} connections: {e}", flood.len());
                break;
            }
        }
    }
    // Another process (the Rust runtime's check program) asks for its credential meanwhile.
    let started = Instant::now();
    let out = std::process::Command::new(rust_runtime_check())
        .arg("openai")
        .env("AGENTKEYS_SOCKET", d.socket())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["sha256"], sha256_hex(&value));
    eprintln!(
        "flood: {} half-open connections open; another process got its credential in {took:?}",
        flood.len()
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} under the flood"
    );
    drop(flood);
}

#[test]
fn a_connection_gets_a_few_of_the_daemons_own_methods_at_once_not_a_queue() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, _) = paired(&master, home.path(), &["--scope", "openai"]);
    let mut c = d.client();
    // Eight audit pages, each asking the server for the trail's anchor, sent at once.
    for id in 0..8 {
        let ask = json!({"jsonrpc": "2.0", "id": id, "method": "agentkeys/audit",
                         "params": {"anchor": true, "limit": 1}});
        c.send_raw(ask.to_string().as_bytes());
    }
    let mut busy = 0;
    for _ in 0..8 {
        let v = c.recv().expect("every request is answered");
        if v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("busy"))
        {
            busy += 1;
        } else {
            assert!(v["result"]["events"].is_array(), "{v}");
        }
    }
    assert!(busy >= 1, "eight slow requests at once were all queued");
}
