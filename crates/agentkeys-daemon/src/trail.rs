//! The daemon's own audit trail (decision 77): JSONL, one event per line, each line
//! carrying the SHA-256 of the previous line's hash and its own fields, so an edited,
//! inserted or removed line breaks the chain from there on. Never secret bytes.
//!
//! Each event has a wall-clock time (Unix ms) and a monotonic time (ns since boot), so the
//! plaintext window (fetch → drop) can be measured from the trail alone.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The peer of a socket connection, from `SO_PEERCRED` and `/proc/<pid>/exe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Executable, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// What happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `connect`, `deny`, `fetch`, `deliver`, `drop`, `start`, `stop`, `pair` …
    pub event: String,
    /// The agent wallet (the daemon's session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The credential concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `inline` (and, later, `fd`, `run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The connection's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// The JSON-RPC request id, tying a fetch to its deliver and drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Free text, never secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One line as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Position, from 1.
    pub seq: u64,
    /// Wall clock, Unix milliseconds.
    pub ts_ms: u64,
    /// Monotonic clock, nanoseconds.
    pub mono_ns: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// The previous line's hash (hex; 64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this line's fields (hex).
    pub hash: String,
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The hash of a line: SHA-256 over `prev` ‖ the line's JSON without `hash`.
fn line_hash(seq: u64, ts_ms: u64, mono_ns: u64, event: &Event, prev: &str) -> String {
    hash_of(prev, &[&hashed_body(seq, ts_ms, mono_ns, event, prev)])
}

/// SHA-256 over `prev` ‖ the body (given in pieces), as hex.
fn hash_of(prev: &str, body: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for piece in body {
        h.update(piece);
    }
    agentkeys_core::hex(&h.finalize())
}

/// The line's JSON without `hash`: the same fields, in the same order, as [`Line`].
fn hashed_body(seq: u64, ts_ms: u64, mono_ns: u64, event: &Event, prev: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Hashed<'a> {
        seq: u64,
        ts_ms: u64,
        mono_ns: u64,
        #[serde(flatten)]
        event: &'a Event,
        prev: &'a str,
    }
    serde_json::to_vec(&Hashed {
        seq,
        ts_ms,
        mono_ns,
        event,
        prev,
    })
    .unwrap_or_default()
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An open trail, appended to under a lock.
pub struct Trail {
    path: PathBuf,
    inner: Mutex<Tail>,
}

struct Tail {
    file: File,
    seq: u64,
    head: String,
    /// The monotonic time of the last line written by this process (lines never go back).
    mono: u64,
}

impl Trail {
    /// Opens (or creates, 0600) the trail at `path` and finds its head.
    pub fn open(path: &Path) -> io::Result<Trail> {
        let (seq, head) = match File::open(path) {
            Ok(f) => {
                let mut last = None;
                for line in lines_of(f) {
                    last = Some(line?);
                }
                match last {
                    Some(l) => {
                        let parsed: Line = serde_json::from_str(&l).map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("{}: last line does not parse: {e}", path.display()),
                            )
                        })?;
                        (parsed.seq, parsed.hash)
                    }
                    None => (0, GENESIS.to_owned()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, GENESIS.to_owned()),
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Trail {
            path: path.to_owned(),
            inner: Mutex::new(Tail {
                file,
                seq,
                head,
                mono: 0,
            }),
        })
    }

    /// Where the trail lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last line's number and hash (0 and the genesis hash for an empty trail): what an
    /// anchor records.
    pub fn head(&self) -> (u64, String) {
        self.inner
            .lock()
            .map(|t| (t.seq, t.head.clone()))
            .unwrap_or((0, GENESIS.to_owned()))
    }

    /// Appends `event` with the current times; returns its monotonic time. One `write(2)`
    /// per event (no fsync: the trail is flushed to the kernel at once and synced at
    /// shutdown, keeping appends off the credential's critical path).
    pub fn append(&self, event: Event) -> io::Result<u64> {
        self.append_at(event, mono_ns())
    }

    /// [`append`](Self::append) with the monotonic time the event happened at, taken before
    /// (the page dropped before its `deliver` and `drop` lines are written, so writing them is
    /// not part of the plaintext window). Never earlier than the line before it.
    pub fn append_at(&self, event: Event, at: u64) -> io::Result<u64> {
        let mut tail = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("audit trail lock poisoned"))?;
        let seq = tail.seq + 1;
        let (ts_ms, mono) = (wall_ms(), at.max(tail.mono));
        // The stored line is the hashed body with `hash` added as its last field: what
        // serializing a `Line` gives, without serializing the event twice.
        let mut bytes = hashed_body(seq, ts_ms, mono, &event, &tail.head);
        if bytes.pop() != Some(b'}') {
            return Err(io::Error::other("the audit line did not serialize"));
        }
        let hash = hash_of(&tail.head, &[&bytes, b"}"]);
        bytes.extend_from_slice(b",\"hash\":\"");
        bytes.extend_from_slice(hash.as_bytes());
        bytes.extend_from_slice(b"\"}\n");
        tail.file.write_all(&bytes)?;
        tail.seq = seq;
        tail.head = hash;
        tail.mono = mono;
        Ok(mono)
    }

    /// fsyncs the file.
    pub fn sync(&self) -> io::Result<()> {
        let tail = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("audit trail lock poisoned"))?;
        tail.file.sync_all()
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verify {
    /// Every link holds.
    pub ok: bool,
    /// Lines checked.
    pub checked: u64,
    /// The first line (1-based line number) that does not hold.
    pub first_broken_line: Option<u64>,
    /// Why.
    pub reason: Option<String>,
    /// The last good hash.
    pub head: String,
}

/// Reads the whole trail.
pub fn read(path: &Path) -> io::Result<Vec<Line>> {
    read_page(path, 0, usize::MAX)
}

/// Reads at most `limit` lines after line `after` (streamed: the file is never loaded
/// whole), for `agentkeys/audit`'s pages.
pub fn read_page(path: &Path, after: u64, limit: usize) -> io::Result<Vec<Line>> {
    let mut out = Vec::new();
    for (n, raw) in (1u64..).zip(lines_of(File::open(path)?)) {
        let raw = raw?;
        if n <= after {
            continue;
        }
        if out.len() >= limit {
            break;
        }
        out.push(parse_line(&raw)?);
    }
    Ok(out)
}

/// A trail file's lines, blank ones left out, streamed.
fn lines_of(file: File) -> impl Iterator<Item = io::Result<String>> {
    BufReader::new(file)
        .lines()
        .filter(|l| !matches!(l, Ok(l) if l.trim().is_empty()))
}

fn parse_line(raw: &str) -> io::Result<Line> {
    serde_json::from_str(raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Checks the trail against an anchor the server holds (line `seq` had hash `hash` when
/// the daemon anchored it): `Err` says how the trail differs (truncated, or rewritten, even
/// with recomputed hashes).
pub fn check_anchor(path: &Path, seq: u64, hash: &str) -> io::Result<Result<(), String>> {
    let mut n = 0u64;
    for raw in lines_of(File::open(path)?) {
        let raw = raw?;
        n += 1;
        if n == seq {
            let line = parse_line(&raw)?;
            return Ok(if line.seq == seq && line.hash == hash {
                Ok(())
            } else {
                Err(format!(
                    "line {seq} does not match the anchor the server holds: the trail was \
                     rewritten"
                ))
            });
        }
    }
    Ok(Err(format!(
        "the trail has {n} lines but the server holds an anchor at line {seq}: it was truncated"
    )))
}

/// Recomputes the chain and reports the first line that does not hold.
pub fn verify(path: &Path) -> io::Result<Verify> {
    let f = File::open(path)?;
    let mut prev = GENESIS.to_owned();
    let mut checked = 0;
    for (i, raw) in BufReader::new(f).lines().enumerate() {
        let raw = raw?;
        if raw.trim().is_empty() {
            continue;
        }
        let n = i as u64 + 1;
        let broken = |reason: String, head: &str| Verify {
            ok: false,
            checked,
            first_broken_line: Some(n),
            reason: Some(reason),
            head: head.to_owned(),
        };
        let line: Line = match serde_json::from_str(&raw) {
            Ok(l) => l,
            Err(e) => return Ok(broken(format!("does not parse: {e}"), &prev)),
        };
        if line.prev != prev {
            return Ok(broken("prev does not match the line before".into(), &prev));
        }
        if line.seq != checked + 1 {
            return Ok(broken(
                format!("seq {} where {} was due", line.seq, checked + 1),
                &prev,
            ));
        }
        let want = line_hash(line.seq, line.ts_ms, line.mono_ns, &line.event, &line.prev);
        if want != line.hash {
            return Ok(broken("hash mismatch: the line was altered".into(), &prev));
        }
        prev = line.hash;
        checked += 1;
    }
    Ok(Verify {
        ok: true,
        checked,
        first_broken_line: None,
        reason: None,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> Event {
        Event {
            event: name.into(),
            service: Some("openai".into()),
            ..Default::default()
        }
    }

    #[test]
    fn appended_lines_chain_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let t = Trail::open(&path).unwrap();
        let m1 = t.append(ev("fetch")).unwrap();
        let m2 = t.append(ev("deliver")).unwrap();
        assert!(m2 >= m1);
        drop(t);
        let t = Trail::open(&path).unwrap();
        t.append(ev("drop")).unwrap();
        let v = verify(&path).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.checked, 3);
        let lines = read(&path).unwrap();
        let names: Vec<&str> = lines.iter().map(|l| l.event.event.as_str()).collect();
        assert_eq!(names, ["fetch", "deliver", "drop"]);
        assert_eq!(lines[2].seq, 3);
    }

    #[test]
    fn a_stored_line_is_exactly_the_serialized_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let t = Trail::open(&path).unwrap();
        let mut e = ev("deliver");
        e.detail = Some("quote \" and \\ and \u{1}".into());
        t.append(e).unwrap();
        t.append(ev("drop")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (stored, parsed) in text.lines().zip(read(&path).unwrap()) {
            assert_eq!(stored.as_bytes(), serde_json::to_vec(&parsed).unwrap());
            assert_eq!(
                parsed.hash,
                line_hash(
                    parsed.seq,
                    parsed.ts_ms,
                    parsed.mono_ns,
                    &parsed.event,
                    &parsed.prev
                )
            );
        }
    }

    #[test]
    fn an_edited_or_removed_line_is_caught_where_it_happened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let t = Trail::open(&path).unwrap();
        for name in ["a", "b", "c", "d"] {
            t.append(ev(name)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"service\":\"openai\"", "\"service\":\"github\"", 2);
        let edited = edited.replacen("\"service\":\"github\"", "\"service\":\"openai\"", 1);
        std::fs::write(&path, &edited).unwrap();
        let v = verify(&path).unwrap();
        assert_eq!((v.ok, v.first_broken_line), (false, Some(2)), "{v:?}");

        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let v = verify(&path).unwrap();
        assert_eq!((v.ok, v.first_broken_line), (false, Some(3)), "{v:?}");
    }

    #[test]
    fn an_anchor_catches_a_truncated_or_rechained_trail_that_verifies_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let t = Trail::open(&path).unwrap();
        for name in ["a", "b", "c"] {
            t.append(ev(name)).unwrap();
        }
        let (seq, hash) = t.head();
        assert_eq!(seq, 3);
        assert_eq!(check_anchor(&path, seq, &hash).unwrap(), Ok(()));
        drop(t);
        // Truncated: the two first lines still verify.
        let text = std::fs::read_to_string(&path).unwrap();
        let two: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(&path, two.join("\n") + "\n").unwrap();
        assert!(verify(&path).unwrap().ok);
        assert!(check_anchor(&path, seq, &hash).unwrap().is_err());
        // Rewritten with recomputed hashes: a fresh chain of the same length verifies.
        std::fs::remove_file(&path).unwrap();
        let forged = Trail::open(&path).unwrap();
        for name in ["a", "x", "c"] {
            forged.append(ev(name)).unwrap();
        }
        assert!(verify(&path).unwrap().ok);
        let verdict = check_anchor(&path, seq, &hash).unwrap();
        assert!(verdict.unwrap_err().contains("rewritten"));
        let page = read_page(&path, 1, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].event.event, "x");
    }
}
