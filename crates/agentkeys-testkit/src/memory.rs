//! The memory assertions of the "no copy left" tests: a scan of another process that must
//! find nothing, checked against the same scan of this one, and the freed-heap probe.

/// Asserts that no readable mapping of `pid` holds any of `needles` (after a scan of more
/// than 1 MiB), and that the same scan of this test process, which holds them, finds each:
/// a scan that cannot find what is there proves nothing. Returns the target's report.
pub fn assert_no_readable_copy(pid: u32, needles: &[&[u8]]) -> agentkeys_memscan::Report {
    assert_no_readable_copy_but(pid, needles, |_| false)
}

/// [`assert_no_readable_copy`], letting through the hits `allowed` accepts (a fallback
/// secret page where the machine has no `memfd_secret`, say).
pub fn assert_no_readable_copy_but(
    pid: u32,
    needles: &[&[u8]],
    allowed: impl Fn(&agentkeys_memscan::Hit) -> bool,
) -> agentkeys_memscan::Report {
    let report = agentkeys_memscan::scan_all(pid, needles).expect("scan the target");
    assert!(
        report.scanned_bytes > 1 << 20,
        "scanned only {} bytes",
        report.scanned_bytes
    );
    let hits: Vec<String> = report
        .hits
        .iter()
        .filter(|h| !allowed(h))
        .map(|h| {
            format!(
                "needle {} at {:#x} {} {}",
                h.pattern, h.addr, h.mapping.perms, h.mapping.name
            )
        })
        .collect();
    assert!(hits.is_empty(), "readable copies of the secret: {hits:?}");
    let control = agentkeys_memscan::scan_all(std::process::id(), needles).expect("scan self");
    for i in 0..needles.len() {
        assert!(
            control.hits.iter().any(|h| h.pattern == i),
            "the scanner must find the test's own copy of needle {i}"
        );
    }
    report
}

/// Proves the calling binary's global allocator scrubs freed memory: a 256-byte block holding
/// a canary reads back as zeros through `/proc/self/mem` after it is freed, except its first
/// 8 bytes, where mimalloc writes its (encoded) free-list link after the wipe. Call it from a
/// unit test inside the binary crate (`src/main.rs`), where the binary's allocator is active.
pub fn assert_freed_heap_is_scrubbed() {
    use std::os::unix::fs::FileExt as _;
    // The probe buffer is allocated before the free, so it cannot be the freed block
    // (platform-scouting 2(d): a later allocation would get the same block back).
    let mut probe = vec![0u8; 256];
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let canary: Vec<u8> = (0..=255u8).map(|i| b'A' + i % 26).collect();
    let addr = canary.as_ptr() as u64;
    mem.read_exact_at(&mut probe, addr)
        .expect("read the live block");
    assert_eq!(probe, canary, "the probe reads the live block");
    drop(canary);
    mem.read_exact_at(&mut probe, addr)
        .expect("read the freed block");
    let left = probe[8..].iter().filter(|&&b| b != 0).count();
    assert_eq!(
        left, 0,
        "{left} of the 248 freed bytes after the link still hold data"
    );
    let expected: Vec<u8> = (0..8u8).map(|i| b'A' + i % 26).collect();
    assert_ne!(
        &probe[..8],
        &expected[..],
        "the first 8 bytes were not overwritten"
    );
}
