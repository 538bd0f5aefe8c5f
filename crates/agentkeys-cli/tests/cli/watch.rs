//! `agentkeys watch`: a new request reaches --exec and the webhooks at once, and no notice
//! carries a way to approve or anything secret.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::*;

/// One HTTP request a webhook receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// A local webhook receiver: answers 200 to every request and keeps them.
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            keep.lock().unwrap().push(Received {
                path,
                headers,
                body: String::from_utf8(body).unwrap(),
            });
        }
    });
    (url, got)
}

#[test]
fn a_new_request_reaches_exec_and_the_webhooks_with_a_link_and_no_approve_action() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = canary("watch");
    home.store_value("stripe", &value, &["--high-value"]);
    let (hooks, got) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("request.json");
    let exec = format!("cat > {0}.tmp && mv {0}.tmp {0}", out_file.display());
    let mut watch = home
        .std_cmd()
        .args(["watch", "--once", "--exec", &exec])
        .args(["--ntfy", &format!("{hooks}/agentkeys-topic")])
        .args(["--slack", &format!("{hooks}/slack")])
        .args(["--discord", &format!("{hooks}/discord")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(watch.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains("Watching for requests"), "{first}");
    std::thread::sleep(Duration::from_millis(300));

    // A high-value read opens a request; the watch notices it through its long-poll.
    let opened = Instant::now();
    let out = home.cmd().args(["read", "stripe"]).assert().code(5);
    let (code, otp) = approval_from_stderr(&String::from_utf8_lossy(&out.get_output().stderr));
    while !out_file.exists() {
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "no --exec after 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = opened.elapsed();
    eprintln!("from opening the request to --exec's output: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    let status = watch.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{rest}");
    let mut stdout = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.contains(&code) && stdout.contains(&otp), "{stdout}");

    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(request["pair_code"], code.as_str());
    assert_eq!(request["otp"], otp.as_str());
    assert_eq!(request["kind"], "high_value");
    assert_eq!(request["service"], "stripe");
    // The server on loopback serves its pages at http://localhost:PORT.
    let port = server.url.rsplit(':').next().unwrap();
    let link = format!("http://localhost:{port}/approve/{code}");
    assert_eq!(request["approve_url"], link.as_str());

    let got = got.lock().unwrap().clone();
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/agentkeys-topic", "/discord", "/slack"], "{got:?}");
    let token = token_of(&home);
    for r in &got {
        let all = format!("{:?} {}", r.headers, r.body);
        for want in [code.as_str(), otp.as_str(), link.as_str()] {
            assert!(all.contains(want), "{} lacks {want}: {all}", r.path);
        }
        for secret in [value.as_str(), token.expose_secret()] {
            assert!(!all.contains(secret), "{} carries a secret: {all}", r.path);
        }
        // No approve action: no ntfy action buttons, no Slack blocks or Discord
        // components, and no link to an approve endpoint of the API.
        assert!(!all.contains("/v1/auth-requests"), "{all}");
        assert!(
            r.headers
                .iter()
                .all(|(k, _)| k != "actions" && k != "x-actions")
        );
        if r.path != "/agentkeys-topic" {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            for field in ["blocks", "attachments", "components"] {
                assert!(v.get(field).is_none(), "{field} in {v}");
            }
        }
    }
    let ntfy = got.iter().find(|r| r.path == "/agentkeys-topic").unwrap();
    assert!(
        ntfy.headers.contains(&("click".into(), link.clone())),
        "{ntfy:?}"
    );
}

/// A Python with the test venv's packages (`dbus-next` here): `$AGENTKEYS_TEST_PYTHON`,
/// else the venv `scripts/test.sh` creates in `target/pyenv`.
fn test_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("AGENTKEYS_TEST_PYTHON") {
        return p.into();
    }
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "no test Python: run 'bash scripts/test.sh' (it creates target/pyenv), or set \
         AGENTKEYS_TEST_PYTHON"
    );
    venv
}

/// Kills a child when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_request_shows_as_a_desktop_notification_without_actions() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    home.store_value("stripe", &canary("desktop"), &["--high-value"]);
    let dir = tempfile::tempdir().unwrap();
    // A private session bus, and a notification server on it.
    let mut bus = std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:path={}/bus", dir.path().display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (Debian: dbus-daemon) for the desktop notification test");
    let mut address = String::new();
    std::io::BufReader::new(bus.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    let _bus = Killed(bus);
    let address = address.trim().to_owned();
    let shown = dir.path().join("shown.jsonl");
    let mut notifier = std::process::Command::new(test_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cli/notifications.py"
        ))
        .arg(&shown)
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(notifier.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _notifier = Killed(notifier);
    assert_eq!(ready.trim(), "ready");

    let watch = home
        .std_cmd()
        .args(["watch", "--once"])
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = home.cmd().args(["read", "stripe"]).assert().code(5);
    let (code, otp) = approval_from_stderr(&String::from_utf8_lossy(&out.get_output().stderr));
    let done = watch.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", outputs(&done));
    let lines = std::fs::read_to_string(&shown).unwrap();
    let shown: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), 1, "{lines}");
    let n = &shown[0];
    assert_eq!(n["app_name"], "agentkeys");
    assert_eq!(n["summary"], "agentkeys: high-value release waiting");
    let body = n["body"].as_str().unwrap();
    let port = server.url.rsplit(':').next().unwrap();
    for want in [
        code.as_str(),
        otp.as_str(),
        &format!("http://localhost:{port}/approve/{code}"),
    ] {
        assert!(body.contains(want), "missing {want} in {body}");
    }
    assert_eq!(
        n["actions"],
        serde_json::json!([]),
        "no action buttons: {n}"
    );
}
