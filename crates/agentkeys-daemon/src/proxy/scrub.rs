//! Streaming replacement of byte strings across chunk boundaries: the real key by its
//! placeholder in responses (raw, base64 and hex, so an upstream echoing the key gives the
//! agent only the placeholder), and the placeholder by the key in an opted-in request body.
//!
//! The pairs live in a secret page and are compared there. What a stream holds back for the
//! next chunk does not depend on the key (DESIGN decision in docs/architecture.md, "The
//! scrubber holds back by class"): the trailing run of bytes of one public class that every
//! searched form is written in ([`in_class`]), at most the longest span an occurrence can
//! take; any byte outside the class releases everything before it. A key with a byte outside
//! the class makes every chunk hold that longest span back instead.

use std::sync::Arc;

use agentkeys_secmem::SecretPage;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

/// The bytes every searched form of a key is written in, when the key's own bytes are:
/// letters and digits (hex, base64), base64's `+ / = - _`, the escapes' `% \` (and `/`),
/// and `.` and `~`. Public and fixed: a stream holds back only a trailing run of these.
pub fn in_class(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'+' | b'/' | b'=' | b'-' | b'_' | b'%' | b'\\' | b'.' | b'~'
        )
}

/// The longest span an occurrence of a form of an `n`-byte key can take in a stream: its
/// longest form (hex, `2n` characters), `n` rounded up to a power of two (at least 64).
fn longest_span(n: usize) -> usize {
    2 * n.next_power_of_two().max(64)
}

/// Pattern → replacement pairs, kept in one secret page; shared by every stream that uses
/// them (made once per held value, not per request).
pub struct Table {
    page: SecretPage,
    /// (pattern start, pattern len, replacement start, replacement len) in `page`, longest
    /// pattern first.
    pairs: Vec<(usize, usize, usize, usize)>,
    /// The most a stream holds back: one less than the longest span an occurrence can take,
    /// from the key's length rounded up to a power of two, so holding back says no more of
    /// the length than that.
    hold_limit: usize,
    /// Whether every pattern byte is in [`in_class`] (else every chunk holds `hold_limit`).
    class_only: bool,
    /// The distinct first bytes of the patterns (a key's first byte says nothing of it).
    firsts: Vec<u8>,
}

/// One stream's replacement state over a [`Table`].
pub struct Replacer {
    table: Arc<Table>,
    /// The held-back tail of the stream (may end inside a pattern).
    carry: BytesMut,
    /// How many replacements were made.
    pub replaced: usize,
}

/// The encodings an echoed key is recognised in: raw, standard and URL-safe base64 (with
/// and without padding), lower- and upper-case hex.
fn encodings(bytes: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex_lower: Vec<u8> = bytes
        .iter()
        .flat_map(|b| {
            let h = format!("{b:02x}");
            h.into_bytes()
        })
        .collect();
    let hex_upper = hex_lower.to_ascii_uppercase();
    vec![
        bytes.to_vec(),
        STANDARD.encode(bytes).into_bytes(),
        STANDARD_NO_PAD.encode(bytes).into_bytes(),
        URL_SAFE.encode(bytes).into_bytes(),
        URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
        hex_lower,
        hex_upper,
    ]
}

impl Replacer {
    /// A fresh stream over `table`.
    pub fn new(table: Arc<Table>) -> Replacer {
        Replacer {
            table,
            carry: BytesMut::new(),
            replaced: 0,
        }
    }

    /// A stream replacing each `from` by its `to` exactly.
    pub fn exact(pairs: &[(&[u8], &[u8])]) -> std::io::Result<Replacer> {
        Ok(Replacer::new(Table::exact(pairs)?))
    }

    /// A stream replacing each secret by its placeholder, in every encoding.
    pub fn echoes(secrets: &[(&[u8], &[u8])]) -> std::io::Result<Replacer> {
        Ok(Replacer::new(Table::echoes(secrets)?))
    }

    /// How many bytes the stream holds back now.
    pub fn held(&self) -> usize {
        self.carry.len()
    }
}

impl Drop for Replacer {
    fn drop(&mut self) {
        // The held tail may be the start of an echoed key.
        zeroize::Zeroize::zeroize(&mut self.carry[..]);
    }
}

impl Table {
    /// Replaces each `from` by its `to` exactly (no encodings).
    pub fn exact(pairs: &[(&[u8], &[u8])]) -> std::io::Result<Arc<Table>> {
        let owned: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(f, t)| (f.to_vec(), t.to_vec()))
            .collect();
        let longest = pairs.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        Table::from_pairs(owned, longest.saturating_sub(1))
    }

    /// Replaces each secret by its placeholder, in every encoding (raw, base64, hex; the
    /// placeholder in the same encoding).
    pub fn echoes(secrets: &[(&[u8], &[u8])]) -> std::io::Result<Arc<Table>> {
        let mut owned = Vec::new();
        let mut span = 0;
        for (secret, placeholder) in secrets {
            span = span.max(longest_span(secret.len()));
            for (f, t) in encodings(secret).into_iter().zip(encodings(placeholder)) {
                if !owned.iter().any(|(o, _): &(Vec<u8>, Vec<u8>)| o == &f) {
                    owned.push((f, t));
                }
            }
        }
        Table::from_pairs(owned, span.saturating_sub(1))
    }

    /// How many bytes at the end of `data` wait for the next chunk: the trailing run of
    /// class bytes, at most `hold_limit` (or `hold_limit` whatever they are, for a key with
    /// bytes outside the class). The key decides none of it.
    fn hold(&self, data: &[u8]) -> usize {
        let limit = self.hold_limit.min(data.len());
        if !self.class_only {
            return limit;
        }
        data.iter()
            .rev()
            .take(limit)
            .take_while(|&&b| in_class(b))
            .count()
    }

    /// Replaces every occurrence in a whole value (a header, a trailer, a control frame's
    /// payload); `None` when there was none.
    pub fn scrub_whole(self: &Arc<Self>, data: &[u8]) -> Option<Vec<u8>> {
        let mut r = Replacer::new(self.clone());
        let mut out = r.push_slice(data).to_vec();
        out.extend_from_slice(&r.finish());
        (r.replaced > 0).then_some(out)
    }

    /// Whether every replacement has its pattern's length (a stream keeps its framing).
    pub fn same_length(&self) -> bool {
        self.pairs.iter().all(|p| p.1 == p.3)
    }

    fn from_pairs(
        mut owned: Vec<(Vec<u8>, Vec<u8>)>,
        hold_limit: usize,
    ) -> std::io::Result<Arc<Table>> {
        owned.retain(|(f, _)| !f.is_empty());
        // Longest first, so a pattern that contains another wins.
        owned.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        let total: usize = owned.iter().map(|(f, t)| f.len() + t.len()).sum();
        let mut page = SecretPage::new(total.max(1))?;
        let mut pairs = Vec::with_capacity(owned.len());
        let mut at = 0;
        {
            let out = page.expose_secret_mut();
            for (f, t) in &owned {
                out[at..at + f.len()].copy_from_slice(f);
                out[at + f.len()..at + f.len() + t.len()].copy_from_slice(t);
                pairs.push((at, f.len(), at + f.len(), t.len()));
                at += f.len() + t.len();
            }
        }
        let class_only = owned.iter().all(|(f, _)| f.iter().all(|&b| in_class(b)));
        for (f, t) in &mut owned {
            zeroize::Zeroize::zeroize(f);
            zeroize::Zeroize::zeroize(t);
        }
        let mut firsts: Vec<u8> = pairs
            .iter()
            .map(|&(ps, _, _, _)| page.expose_secret()[ps])
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        Ok(Arc::new(Table {
            page,
            pairs,
            hold_limit,
            class_only,
            firsts,
        }))
    }
}

impl Table {
    /// Occurrences found from their first bytes (at most three distinct ones: one SIMD
    /// pass), each candidate compared against the patterns that start with its byte.
    fn hits_by_first_byte(&self, data: &[u8], safe_end: usize) -> Vec<(usize, usize)> {
        let secret = self.page.expose_secret();
        let head = &data[..safe_end];
        let candidates: Box<dyn Iterator<Item = usize>> = match self.firsts[..] {
            [] => return Vec::new(),
            [a] => Box::new(memchr::memchr_iter(a, head)),
            [a, b] => Box::new(memchr::memchr2_iter(a, b, head)),
            [a, b, c, ..] => Box::new(memchr::memchr3_iter(a, b, c, head)),
        };
        let mut hits = Vec::new();
        let mut next_free = 0;
        for at in candidates {
            if at < next_free {
                continue;
            }
            // Pairs are sorted longest first: the first that matches is the longest.
            let found = self.pairs.iter().enumerate().find(|(_, (ps, pl, _, _))| {
                data.len() - at >= *pl && data[at..at + pl] == secret[*ps..ps + pl]
            });
            if let Some((k, (_, pl, _, _))) = found {
                hits.push((at, k));
                next_free = at + pl;
            }
        }
        hits
    }

    /// Occurrences found with one SIMD substring search per pattern.
    fn hits_by_substring(&self, data: &[u8], safe_end: usize) -> Vec<(usize, usize)> {
        let secret = self.page.expose_secret();
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for (k, (ps, pl, _, _)) in self.pairs.iter().enumerate() {
            let finder = memchr::memmem::Finder::new(&secret[*ps..ps + pl]);
            hits.extend(
                finder
                    .find_iter(data)
                    .take_while(|&at| at < safe_end)
                    .map(|at| (at, k)),
            );
        }
        hits.sort_unstable_by_key(|&(at, k)| (at, std::cmp::Reverse(self.pairs[k].1)));
        hits
    }
}

impl Replacer {
    /// Feeds a chunk; returns what can be passed on now (possibly empty). A chunk with no
    /// pattern in it and no held tail before it passes without a copy.
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        if self.carry.is_empty() {
            let (out, keep_from) = self.scan(chunk, false);
            self.carry.extend_from_slice(&chunk[keep_from..]);
            return out.unwrap_or_else(|| chunk.slice(..keep_from));
        }
        self.carry.extend_from_slice(chunk);
        let data = std::mem::take(&mut self.carry);
        let (out, keep_from) = self.scan(&data, false);
        let out = out.unwrap_or_else(|| Bytes::copy_from_slice(&data[..keep_from]));
        self.carry.extend_from_slice(&data[keep_from..]);
        let mut data = data;
        zeroize::Zeroize::zeroize(&mut data[..]);
        out
    }

    /// [`Replacer::push`] for a borrowed slice.
    pub fn push_slice(&mut self, chunk: &[u8]) -> Bytes {
        self.push(&Bytes::copy_from_slice(chunk))
    }

    /// The end of the stream: everything still held back.
    pub fn finish(&mut self) -> Bytes {
        let mut data = std::mem::take(&mut self.carry);
        let (out, _) = self.scan(&data, true);
        let out = out.unwrap_or_else(|| Bytes::copy_from_slice(&data));
        zeroize::Zeroize::zeroize(&mut data[..]);
        out
    }

    /// Replaces in `data`: the output (`None`: nothing replaced, pass `data[..end]` as is)
    /// and where the unprocessed tail starts.
    fn scan(&mut self, data: &[u8], last: bool) -> (Option<Bytes>, usize) {
        let table = &*self.table;
        let secret = table.page.expose_secret();
        // What waits for the next chunk is decided without the key (see `Table::hold`): an
        // occurrence that starts before `safe_end` is whole in `data`.
        let hold = if last { 0 } else { table.hold(data) };
        let safe_end = data.len() - hold;
        // Every whole occurrence starting before `safe_end`, leftmost first, the longest
        // pattern first at one position, compared against the patterns in the secret page
        // (no copy of them anywhere else).
        let hits = if table.firsts.len() <= 3 {
            table.hits_by_first_byte(data, safe_end)
        } else {
            table.hits_by_substring(data, safe_end)
        };
        if hits.is_empty() {
            return (None, safe_end);
        }
        let mut out = BytesMut::with_capacity(data.len());
        let mut i = 0;
        let mut replaced = 0;
        for (at, k) in hits {
            if at < i {
                continue; // inside a replaced occurrence
            }
            let (_, pl, rs, rl) = table.pairs[k];
            out.extend_from_slice(&data[i..at]);
            out.extend_from_slice(&secret[rs..rs + rl]);
            i = at + pl;
            replaced += 1;
        }
        self.replaced += replaced;
        let end = safe_end.max(i);
        out.extend_from_slice(&data[i..end]);
        (Some(out.freeze()), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"sk-proj-Q2x/9+Zk7Lm0Pq4Rs8Tu1Vw5Xy3Ab6Cd";
    const SHORT: &[u8] = b"agentkeys-placeholder-AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    fn run(r: &mut Replacer, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push_slice(c));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    #[test]
    fn a_key_split_across_every_boundary_is_replaced() {
        let key = b"sk-real-key-0123456789";
        let ph = b"sk-fake-xyz-ABCDEFGHIJ";
        let text = [b"{\"echo\": \"".as_slice(), key, b"\"}"].concat();
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut r = Replacer::echoes(&[(key, ph)]).unwrap();
                let out = run(&mut r, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(out, [b"{\"echo\": \"".as_slice(), ph, b"\"}"].concat());
                assert_eq!(r.replaced, 1);
            }
        }
    }

    #[test]
    fn both_search_strategies_find_the_same_occurrences() {
        let many: Vec<(Vec<u8>, Vec<u8>)> = (b'a'..=b'e')
            .map(|c| (vec![c, b'1', b'2'], vec![b'X'; 3]))
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = many.iter().map(|(f, t)| (&f[..], &t[..])).collect();
        let wide = Table::exact(&pairs).unwrap();
        let narrow = Table::exact(&pairs[..3]).unwrap();
        assert!(wide.firsts.len() > 3 && narrow.firsts.len() <= 3);
        let data = b"a12 b12 zz c12 d12 e1 e12 a1";
        let at: Vec<usize> = wide
            .hits_by_substring(data, data.len())
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(at, [0, 4, 11, 15, 22]);
        let by_first: Vec<usize> = narrow
            .hits_by_first_byte(data, data.len())
            .iter()
            .map(|h| h.0)
            .collect();
        let by_sub: Vec<usize> = narrow
            .hits_by_substring(data, data.len())
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(by_first, by_sub);
        assert_eq!(by_first, [0, 4, 11]);
    }

    #[test]
    fn encoded_echoes_become_the_placeholder_in_the_same_encoding() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let key = b"sk-real-key-0123456789?>";
        let ph = b"sk-fake-xyz-ABCDEFGHIJ~~";
        let mut r = Replacer::echoes(&[(key, ph)]).unwrap();
        let input = format!(
            "b64={} url={} hex={} HEX={}",
            STANDARD.encode(key),
            URL_SAFE_NO_PAD.encode(key),
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            key.iter().map(|b| format!("{b:02X}")).collect::<String>(),
        );
        let out = run(&mut r, &[input.as_bytes()]);
        let expect = format!(
            "b64={} url={} hex={} HEX={}",
            STANDARD.encode(ph),
            URL_SAFE_NO_PAD.encode(ph),
            ph.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            ph.iter().map(|b| format!("{b:02X}")).collect::<String>(),
        );
        assert_eq!(String::from_utf8(out).unwrap(), expect);
    }

    #[test]
    fn a_right_and_a_wrong_guess_are_held_back_alike() {
        // An agent streams back bytes of its choice: a prefix of the key, or another string
        // of the same length and class. What the proxy passes on at once must not differ.
        let wrong = b"sk-proj-ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
        for k in 1..KEY.len() {
            let mut right = Replacer::echoes(&[(KEY, SHORT)]).unwrap();
            let mut other = Replacer::echoes(&[(KEY, SHORT)]).unwrap();
            let r = right.push_slice(&[b"data: ".as_slice(), &KEY[..k]].concat());
            let w = other.push_slice(&[b"data: ".as_slice(), &wrong[..k]].concat());
            assert_eq!(
                (r.len(), right.held()),
                (w.len(), other.held()),
                "prefix of {k}"
            );
            assert_eq!(&r[..], b"data: ", "the class run is held, whatever it is");
            // Any byte outside the class releases it.
            assert_eq!(right.push_slice(b"\n").len(), k + 1);
            assert_eq!(other.push_slice(b"\n").len(), k + 1);
        }
        // A key with a byte outside the class: every chunk holds the same fixed length.
        let odd = b"pass:word!with*odd$bytes^0123456789";
        let table = Table::echoes(&[(odd, SHORT)]).unwrap();
        assert!(!table.class_only);
        for k in 1..odd.len() {
            let mut right = Replacer::new(table.clone());
            let mut other = Replacer::new(table.clone());
            let r = right.push_slice(&[b"x".repeat(2000).as_slice(), &odd[..k]].concat());
            let w = other.push_slice(&[b"x".repeat(2000).as_slice(), &wrong[..k]].concat());
            assert_eq!(r.len(), w.len());
            assert_eq!(right.held(), table.hold_limit);
        }
    }

    #[test]
    fn the_hold_says_no_more_of_the_key_length_than_its_power_of_two() {
        let long_run = b"a".repeat(10_000);
        let held = |key: &[u8]| {
            let mut r = Replacer::echoes(&[(key, SHORT)]).unwrap();
            r.push_slice(&long_run);
            r.held()
        };
        assert_eq!(held(&KEY[..33]), held(&KEY[..40]));
        assert_eq!(held(&b"k".repeat(65)), held(&b"k".repeat(128)));
        assert!(held(&b"k".repeat(129)) > held(&b"k".repeat(128)));
    }

    #[test]
    fn a_stream_without_the_key_passes_at_once() {
        let mut r = Replacer::exact(&[(b"PLACEHOLDER", b"value")]).unwrap();
        // A chunk passes whole when it ends outside the class (a line, an SSE event).
        assert_eq!(
            &r.push_slice(b"data: hello world\n\n")[..],
            b"data: hello world\n\n"
        );
        // Its trailing run of class bytes waits for the next chunk, whatever it spells.
        assert_eq!(&r.push_slice(b"data: hello")[..], b"data: ");
        assert_eq!(&r.push_slice(b"\n")[..], b"hello\n");
        assert_eq!(&r.push_slice(b"data: PLACE")[..], b"data: ");
        assert_eq!(&r.push_slice(b"MAT\n")[..], b"PLACEMAT\n");
        assert_eq!(&r.finish()[..], b"");
        let mut r = Replacer::exact(&[(b"PLACEHOLDER", b"value")]).unwrap();
        assert_eq!(run(&mut r, &[b"a PLACEHOLD", b"ER b"]), b"a value b");
        let mut r = Replacer::exact(&[(b"PLACEHOLDER", b"value")]).unwrap();
        assert_eq!(run(&mut r, &[b"a PLACEHOLDE"]), b"a PLACEHOLDE");
    }
}
