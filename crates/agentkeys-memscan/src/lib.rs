//! Scans every readable mapping of a process through `/proc/<pid>/mem` for byte patterns
//! and reports the hits by mapping. The tests of every agentkeys binary use it as the judge
//! of "no plaintext left in memory"; `agentkeys-memscan PID PATTERN` is the same scan by hand.
//!
//! Reading another process's memory needs ptrace rights over it (root, or the same uid when
//! the target is dumpable). Mappings the kernel refuses to read are listed, not fatal:
//! `memfd_secret` pages answer `EIO` even to root, which is the point of them.
//!
//! Anonymous mappings with nothing resident and nothing swapped (`Rss` and `Swap` 0 in
//! `/proc/<pid>/smaps`: an allocator's reserved arena, untouched stacks) hold only zeros
//! and are skipped; everything else is read in chunks and searched with `memchr::memmem`.

#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::FileExt as _;

use memchr::memmem::Finder;

/// One mapping from `/proc/<pid>/smaps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `r-xp`, `rw-s` …
    pub perms: String,
    /// The path or pseudo-name (`[heap]`, `/secretmem (deleted)` …), or empty.
    pub name: String,
    /// Resident plus swapped kilobytes (`Rss` + `Swap`); `None` if not reported.
    pub touched_kb: Option<u64>,
}

impl Mapping {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    fn is_anonymous(&self) -> bool {
        self.name.is_empty()
            || self.name.starts_with("[anon")
            || self.name == "[heap]"
            || self.name == "[stack]"
    }
}

/// A hit: where a pattern was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Which pattern (index into the slice given to [`scan_all`]).
    pub pattern: usize,
    /// The mapping it was found in.
    pub mapping: Mapping,
    /// Its address.
    pub addr: u64,
}

/// What a scan saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every occurrence of a pattern in readable memory.
    pub hits: Vec<Hit>,
    /// Bytes read and searched.
    pub scanned_bytes: u64,
    /// Mappings the kernel refused to read, with the error.
    pub refused: Vec<(Mapping, String)>,
}

/// Parses `/proc/<pid>/smaps` (falling back to `maps`, without residency, where smaps is
/// unavailable).
pub fn mappings(pid: u32) -> io::Result<Vec<Mapping>> {
    let (text, with_sizes) = match std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
        Ok(t) => (t, true),
        Err(_) => (std::fs::read_to_string(format!("/proc/{pid}/maps"))?, false),
    };
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            out.push(m);
        } else if with_sizes
            && let Some(last) = out.last_mut()
            && let Some(kb) = size_field(line, "Rss:").or_else(|| size_field(line, "Swap:"))
        {
            *last.touched_kb.get_or_insert(0) += kb;
        }
    }
    Ok(out)
}

fn size_field(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn parse_header(line: &str) -> Option<Mapping> {
    let mut parts = line.splitn(6, ' ');
    let (start, end) = parts.next()?.split_once('-')?;
    let perms = parts.next()?.to_owned();
    if perms.len() != 4 {
        return None;
    }
    let name = parts.nth(3).unwrap_or("").trim().to_owned();
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        name,
        touched_kb: None,
    })
}

/// Scans every readable mapping of `pid` for `pattern` (non-empty).
pub fn scan(pid: u32, pattern: &[u8]) -> io::Result<Report> {
    scan_all(pid, &[pattern])
}

/// Scans every readable mapping of `pid` once for each of `patterns` (all non-empty).
pub fn scan_all(pid: u32, patterns: &[&[u8]]) -> io::Result<Report> {
    const CHUNK: usize = 4 << 20;
    if patterns.is_empty() || patterns.iter().any(|p| p.is_empty()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a pattern is empty",
        ));
    }
    let finders: Vec<Finder<'_>> = patterns.iter().map(Finder::new).collect();
    let overlap = patterns.iter().map(|p| p.len()).max().unwrap_or(1) - 1;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut report = Report::default();
    let mut buf = vec![0u8; CHUNK + overlap];
    for m in mappings(pid)? {
        if !m.perms.starts_with('r') || m.name.starts_with("[vvar") || m.name == "[vsyscall]" {
            continue;
        }
        if m.is_anonymous() && m.touched_kb == Some(0) {
            continue;
        }
        let mut at = m.start;
        while at < m.end {
            let want = usize::try_from((m.end - at).min((CHUNK + overlap) as u64)).unwrap_or(0);
            let chunk = &mut buf[..want];
            if let Err(e) = mem.read_exact_at(chunk, at) {
                report.refused.push((m.clone(), e.to_string()));
                break;
            }
            for (i, f) in finders.iter().enumerate() {
                for pos in f.find_iter(chunk) {
                    // A match starting in the overlap is found again by the next chunk.
                    if pos < CHUNK || at + CHUNK as u64 >= m.end {
                        report.hits.push(Hit {
                            pattern: i,
                            mapping: m.clone(),
                            addr: at + pos as u64,
                        });
                    }
                }
            }
            report.scanned_bytes += want.min(CHUNK) as u64;
            at += CHUNK as u64;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_headers_parse_with_and_without_names() {
        let m = parse_header("7f00-7f10 rw-s 00000000 00:01 42    /secretmem (deleted)").unwrap();
        assert_eq!((m.start, m.end, m.perms.as_str()), (0x7f00, 0x7f10, "rw-s"));
        assert_eq!(m.name, "/secretmem (deleted)");
        let anon = parse_header("1000-2000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.name, "");
        assert!(parse_header("Rss:                  12 kB").is_none());
        assert_eq!(size_field("Rss:                  12 kB", "Rss:"), Some(12));
    }

    #[test]
    fn patterns_in_this_process_are_found_once_each() {
        // Built at run time, so the only copies are on the heap.
        let a: Vec<u8> = b"memscan-self-test-a-"
            .iter()
            .chain(b"7f3a9c")
            .copied()
            .collect();
        let b: Vec<u8> = b"memscan-self-test-b-"
            .iter()
            .chain(b"1d2e3f")
            .copied()
            .collect();
        let report = scan_all(std::process::id(), &[&a, &b]).unwrap();
        assert!(report.scanned_bytes > 0);
        for i in 0..2 {
            assert!(
                report
                    .hits
                    .iter()
                    .any(|h| h.pattern == i && h.mapping.perms.starts_with("rw")),
                "pattern {i} must be found"
            );
        }
        let mut addrs: Vec<u64> = report.hits.iter().map(|h| h.addr).collect();
        let n = addrs.len();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), n, "no hit is reported twice");
    }

    #[test]
    fn an_empty_pattern_is_refused() {
        assert!(scan(std::process::id(), b"").is_err());
    }
}
