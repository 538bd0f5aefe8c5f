//! Where the credential lives inside the CLI: the memory of a running `agentkeys` is read
//! through `/proc/<pid>/mem` while the value is in flight, and must hold no readable copy
//! (the value sits only in a `memfd_secret` page, which the kernel refuses to read).

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::common::*;

/// A credential larger than the 4 KiB pipe the test gives the CLI, so the CLI blocks in
/// `write(2)`/`read(2)` with the value in memory. Every 32-byte segment is unique, so a copy
/// of any part of it (a reused I/O buffer holds only the latest chunk) is findable.
fn big_value(tag: &str) -> String {
    let head = canary(tag);
    let mut v = String::new();
    let mut i = 0;
    while v.len() < 30 * 1024 {
        v.push_str(&format!("[{}-{i:06}]", &head[head.len() - 16..]));
        i += 1;
    }
    v
}

/// Pieces of `value` to look for: its start, its middle, and just before its last 10 bytes.
fn needles(value: &str) -> [&str; 3] {
    let n = value.len();
    [
        &value[..40],
        &value[n / 2..n / 2 + 40],
        &value[n - 60..n - 20],
    ]
}

/// A pipe with the smallest capacity the kernel allows (one page), close-on-exec so no
/// other child inherits an end of it.
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    rustix::pipe::fcntl_setpipe_size(&w, 4096).unwrap();
    (r, w)
}

/// Waits until `pid` is blocked in syscall `nr` on `fd` (from `/proc/<pid>/syscall`).
fn wait_blocked_in(child: &mut Child, nr: u32, fd: u32) {
    let pid = child.id();
    let want = format!("{nr} {fd:#x} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if now.starts_with(&want) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the CLI exited early");
        assert!(
            Instant::now() < deadline,
            "the CLI never blocked in {want}: {now}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// No readable copy of any needle in `pid`; the value sits in a `memfd_secret` page, which
/// the kernel refuses to read. Without `memfd_secret` (a visible skip line), the fallback is
/// asserted: every copy found sits in the sealed memfd secret page, none in the heap.
fn assert_no_readable_copy(pid: u32, needles: [&str; 3]) {
    let needles = needles.map(str::as_bytes);
    if !agentkeys_testkit::machine::memfd_secret("cli::memory (no readable copy while in flight)") {
        let report = agentkeys_memscan::scan_all(pid, &needles).expect("scan the CLI");
        let outside: Vec<String> = report
            .hits
            .iter()
            .filter(|h| !h.mapping.name.contains("memfd:agentkeys-secret"))
            .map(|h| format!("{:#x} {}", h.addr, h.mapping.name))
            .collect();
        assert!(
            outside.is_empty(),
            "copies outside the secret page: {outside:?}"
        );
        return;
    }
    let report = agentkeys_testkit::assert_no_readable_copy(pid, &needles);
    assert!(
        report
            .refused
            .iter()
            .any(|(m, _)| m.name.contains("secretmem")),
        "the value should sit in a memfd_secret page, refused to readers: {:?}",
        report.refused
    );
}

#[test]
fn read_holds_the_credential_only_in_secret_memory_while_writing_it() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = big_value("read-mem");
    let file = home.path().join("big.txt");
    std::fs::write(&file, &value).unwrap();
    home.cmd()
        .args(["store", "big", "--from-file"])
        .arg(&file)
        .assert()
        .success();
    std::fs::remove_file(&file).unwrap();

    for extra in [&[][..], &["--json"][..]] {
        let (r, w) = small_pipe();
        let mut child = home
            .std_cmd()
            .args(["read", "big"])
            .args(extra)
            .stdout(Stdio::from(w))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_blocked_in(&mut child, 1, 1);
        assert_no_readable_copy(child.id(), needles(&value));
        let mut out = Vec::new();
        std::fs::File::from(r).read_to_end(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(&value), "{extra:?} printed something else");
    }
}

#[test]
fn store_reads_stdin_straight_into_secret_memory() {
    let server = start_server();
    let home = Home::new(&server);
    home.init();
    let value = big_value("store-mem");
    let (r, w) = small_pipe();
    let mut child = home
        .std_cmd()
        .args(["store", "big"])
        .stdin(Stdio::from(r))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::File::from(w);
    // Everything but the end goes in; the CLI then waits in read(2) for more.
    let (most, last) = value.split_at(value.len() - 10);
    let feeder = {
        let most = most.to_owned();
        let mut writer = writer.try_clone().unwrap();
        std::thread::spawn(move || writer.write_all(most.as_bytes()).unwrap())
    };
    feeder.join().unwrap();
    wait_blocked_in(&mut child, 0, 0);
    assert_no_readable_copy(child.id(), needles(&value));
    writer.write_all(last.as_bytes()).unwrap();
    drop(writer);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", outputs(&out));
    assert_eq!(home.read("big", &[]), value);
}
