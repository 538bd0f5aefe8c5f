//! fd delivery (decision 75) through the Rust and Python managed runtimes, the inline
//! fallback, and where the credential is left afterwards, by scans of `/proc/<pid>/mem`.
//! Each test prints its scan results (`scan: …`); docs/daemon.md's table quotes them.

use std::io::{IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

use agentkeys_secmem::SecretPage;
use agentkeys_testkit::{TempDir, assert_no_readable_copy, canary, machine};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::{Value, json};

use super::common::*;

fn agent_with(value: &str) -> (agentkeys_testkit::Server, Master, TempDir, Daemon) {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let home = TempDir::new("agentkeys-test-daemon");
    let (d, wallet) = paired(&master, home.path(), &["--scope", "openai"]);
    master.store("openai", value, &["--agent", &wallet]);
    (server, master, home, d)
}

fn deliveries(d: &Daemon) -> Vec<String> {
    trail_lines(&d.trail())
        .iter()
        .filter(|l| l["event"] == "deliver")
        .map(|l| l["mode"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_rust_runtime_gets_a_memfd_secret_fd_and_leaves_no_copy() {
    let kind =
        machine::best_page_kind("the_rust_runtime_gets_a_memfd_secret_fd_and_leaves_no_copy");
    let value = canary("rustrt");
    let (_server, _master, _home, d) = agent_with(&value);
    let mut cmd = Command::new(rust_runtime_check());
    cmd.args(["openai", "--hold"])
        .env("AGENTKEYS_SOCKET", d.socket());
    let mut holder = Holder::spawn(cmd);
    let line = holder.line();
    assert_eq!(line["sha256"], sha256_hex(&value), "{line}");
    assert_eq!(line["length"], value.len());
    assert_eq!(line["kind"], kind);
    assert_eq!(
        line["dumpable_while_held"], false,
        "non-dumpable while held"
    );
    wait_for_events(&d.trail(), "drop", 1);
    assert_eq!(deliveries(&d), [format!("fd:{kind}")]);
    let runtime = assert_no_readable_copy(holder.pid(), &[value.as_bytes()]);
    let daemon = assert_no_readable_copy(d.pid(), &[value.as_bytes()]);
    eprintln!(
        "scan: rust runtime after drop: 0 copies in {} bytes; daemon after fd delivery: 0 copies in {} bytes",
        runtime.scanned_bytes, daemon.scanned_bytes
    );
    assert!(holder.release().success());
}

#[test]
fn the_python_runtime_gets_an_fd_and_leaves_no_copy_while_inline_python_keeps_copies() {
    let kind = machine::best_page_kind(
        "the_python_runtime_gets_an_fd_and_leaves_no_copy_while_inline_python_keeps_copies",
    );
    let value = canary("pyrt");
    let (_server, _master, _home, d) = agent_with(&value);
    let python = |extra: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "agentkeys_runtime", "check", "openai", "--hold"])
            .args(extra)
            .env("PYTHONPATH", python_runtime_dir())
            .env("AGENTKEYS_SOCKET", d.socket());
        Holder::spawn(cmd)
    };
    let mut fd = python(&[]);
    let line = fd.line();
    assert_eq!(line["sha256"], sha256_hex(&value), "{line}");
    assert_eq!(line["mode"], "fd");
    assert_eq!(line["kind"], kind);
    let scanned = assert_no_readable_copy(fd.pid(), &[value.as_bytes()]).scanned_bytes;
    eprintln!("scan: python runtime (fd) after the with block: 0 copies in {scanned} bytes");
    assert!(fd.release().success());

    let mut inline = python(&["--inline"]);
    let line = inline.line();
    assert_eq!(line["mode"], "inline");
    assert_eq!(line["sha256"], sha256_hex(&value));
    let copies = copies_in(inline.pid(), &value);
    eprintln!("scan: python stdlib client (inline) after reading: {copies} copies");
    assert!(
        copies > 0,
        "the inline contrast must find the copies it leaves"
    );
    assert!(inline.release().success());
    wait_for_events(&d.trail(), "drop", 2);
    assert_eq!(deliveries(&d), [format!("fd:{kind}"), "inline".into()]);
}

#[test]
fn the_official_mcp_sdk_client_reads_inline_and_keeps_the_value_in_memory() {
    let value = canary("sdk");
    let (_server, _master, _home, d) = agent_with(&value);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("daemon")
        .join("mcp_sdk_client.py");
    let mut cmd = Command::new(sdk_python());
    cmd.arg(script)
        .args([DAEMON, "openai"])
        .env("AGENTKEYS_SOCKET", d.socket());
    let mut client = Holder::spawn(cmd);
    let line = client.line();
    assert_eq!(line["sha256"], sha256_hex(&value), "{line}");
    let copies = copies_in(client.pid(), &value);
    eprintln!("scan: python mcp SDK client (inline) after reading: {copies} copies");
    assert!(
        copies > 0,
        "a plain MCP client keeps the credential it read"
    );
    let daemon = assert_no_readable_copy(d.pid(), &[value.as_bytes()]);
    eprintln!(
        "scan: daemon after inline delivery: 0 copies in {} bytes",
        daemon.scanned_bytes
    );
    assert!(client.release().success());
    wait_for_events(&d.trail(), "drop", 1);
    assert_eq!(deliveries(&d), ["inline"]);
}

/// One response line read with `recvmsg`, and the descriptors that came with it.
fn recv_line_with_fds(s: &UnixStream) -> (Value, Vec<OwnedFd>) {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            s,
            &mut [IoSliceMut::new(&mut byte)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(got.bytes, 1, "the daemon closed the connection");
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        line.push(byte[0]);
    }
    (serde_json::from_slice(&line).unwrap(), fds)
}

fn send(s: &mut UnixStream, v: &Value) {
    s.write_all(format!("{v}\n").as_bytes()).unwrap();
}

#[test]
fn the_fd_is_mmap_only_and_the_capability_works_at_initialize_and_per_request() {
    let memfd_secret = machine::memfd_secret(
        "the_fd_is_mmap_only_and_the_capability_works_at_initialize_and_per_request",
    );
    let kind = if memfd_secret {
        "memfd_secret"
    } else {
        "sealed_memfd"
    };
    let value = canary("raw");
    let (_server, _master, _home, d) = agent_with(&value);
    let call = |id: u64, meta: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "get_credential", "arguments": {"service": "openai"}, "_meta": meta}})
    };

    // 2025-11-25: advertised at initialize; the server advertises it back.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    send(
        &mut s,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "raw", "version": "0"},
        "capabilities": {"experimental": {"agentkeys/fd-delivery": {"version": 1}}}}}),
    );
    let (init, _) = recv_line_with_fds(&s);
    assert!(
        init["result"]["capabilities"]["experimental"]["agentkeys/fd-delivery"].is_object(),
        "{init}"
    );
    send(
        &mut s,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    send(&mut s, &call(2, json!({})));
    let (answer, mut fds) = recv_line_with_fds(&s);
    assert_eq!(answer["fds"], 1, "{answer}");
    assert_eq!(fds.len(), 1);
    let meta = &answer["result"]["_meta"]["agentkeys/fd"];
    assert_eq!(meta["kind"], kind);
    assert_eq!(meta["service"], "openai");
    assert!(!answer.to_string().contains(&value), "no bytes in the JSON");
    let fd = fds.pop().unwrap();
    let mut buf = [0u8; 64];
    if memfd_secret {
        assert_eq!(
            rustix::io::read(&fd, &mut buf).err(),
            Some(rustix::io::Errno::INVAL),
            "a memfd_secret fd cannot be read(2), only mapped"
        );
    }
    let length = usize::try_from(meta["length"].as_u64().unwrap()).unwrap();
    let page = SecretPage::adopt(fd, length).unwrap();
    assert_eq!(page.expose_secret(), value.as_bytes());
    drop(page);

    // 2026-07-28 style: no capability at initialize, the request's _meta carries it.
    let mut c = UnixStream::connect(d.socket()).unwrap();
    send(
        &mut c,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "raw", "version": "0"},
        "capabilities": {}}}),
    );
    recv_line_with_fds(&c);
    send(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    send(&mut c, &call(2, json!({})));
    let (plain, fds) = recv_line_with_fds(&c);
    assert!(fds.is_empty(), "no capability, no fd");
    assert_eq!(plain["result"]["content"][0]["text"], value.as_str());
    let meta = json!({"io.modelcontextprotocol/clientCapabilities":
        {"experimental": {"agentkeys/fd-delivery": {"version": 1}}}});
    send(&mut c, &call(3, meta));
    let (answer, fds) = recv_line_with_fds(&c);
    assert_eq!(fds.len(), 1, "{answer}");
    assert_eq!(
        answer["result"]["_meta"]["agentkeys/fd"]["length"],
        value.len()
    );

    wait_for_events(&d.trail(), "drop", 3);
    assert_eq!(
        deliveries(&d),
        [format!("fd:{kind}"), "inline".into(), format!("fd:{kind}")]
    );
}

#[test]
fn a_warm_cache_is_unreadable_in_memfd_secret_readable_in_the_fallback_and_gone_after_eviction() {
    let server = start_server(&[]);
    let master = Master::new(&server);
    let test = "a_warm_cache_is_unreadable_in_memfd_secret_readable_in_the_fallback_and_gone_after_eviction";
    let kinds: &[&str] = if machine::memfd_secret(test) {
        &["memfd_secret", "locked_anon"]
    } else {
        &["locked_anon"]
    };
    for &kind in kinds {
        let home = TempDir::new("agentkeys-test-daemon");
        let (d, wallet) = paired_with(
            &master,
            home.path(),
            &["--scope", "openai"],
            &["--cache", "openai=2s", "--cache-page", kind],
        );
        let value = canary("cachepage");
        master.store("openai", &value, &["--agent", &wallet]);
        // Cached only once the daemon has heard of the new value (else evicted when it does).
        wait_for_events(&d.trail(), "state", 1);
        let mut c = d.client();
        c.initialize();
        assert_eq!(
            c.tool("get_credential", json!({"service": "openai"})).1,
            value
        );
        let status = c.request("agentkeys/status", json!({}));
        assert_eq!(status["result"]["cache"][0]["page"], kind, "{status}");
        let warm = copies_in(d.pid(), &value);
        wait_for_events(&d.trail(), "evict", 1);
        let evicted = assert_no_readable_copy(d.pid(), &[value.as_bytes()])
            .hits
            .len();
        let lines = trail_lines(&d.trail());
        let at = |event: &str| {
            lines
                .iter()
                .find(|l| l["event"] == event)
                .and_then(|l| l["mono_ns"].as_u64())
                .unwrap()
        };
        let lived_ms = (at("evict") - at("cache")) / 1_000_000;
        eprintln!(
            "scan: daemon with a warm cache in a {kind} page: {warm} copies, after eviction: \
             {evicted} (the cached copy lived {lived_ms} ms)"
        );
        if kind == "memfd_secret" {
            assert_eq!(warm, 0, "memfd_secret cache pages are unreadable");
        } else {
            assert!(
                warm > 0,
                "the fallback kind is readable by root: the contrast must show"
            );
        }
    }
}
