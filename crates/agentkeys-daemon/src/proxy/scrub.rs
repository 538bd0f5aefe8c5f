//! Streaming replacement of byte strings across chunk boundaries: the real key by its
//! placeholder in answers, in every form an upstream may echo it in, and the placeholder by
//! the key in an opted-in request body.
//!
//! The forms of a key that are searched (an echo table): the key itself; any of its
//! characters JSON-escaped (`\u00XX`, `\/`) or percent-encoded (`%XX`, either case), mixed
//! as an encoder mixes them; standard and URL-safe base64 of it at each of the three
//! alignments inside a longer encoded text (the part of the encoding that depends on the
//! key alone, and the key's bits in the characters either side of it); lower- and
//! upper-case hex. Each form becomes the placeholder in the same form, character by
//! character in the same escapes, so what the agent decodes is the placeholder. Where the
//! placeholder cannot stand in at the same length in base64 (a different length would shift
//! every later character of the encoded text), a stand-in of the key's length, made of a
//! byte the key does not contain, does: it decodes to no part of the key.
//!
//! The pairs live in a secret page and are compared there. What a stream holds back for the
//! next chunk does not depend on the key (decision 58 in
//! docs/architecture.md): the trailing run of bytes of one public class that every
//! form above is written in ([`in_class`]), at most the longest span an occurrence can take;
//! any byte outside the class releases everything before it. A key with a byte outside the
//! class makes every chunk hold that longest span back instead.

use std::sync::Arc;

use agentkeys_secmem::SecretPage;
use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use zeroize::Zeroizing;

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

/// Fewest base64 characters that depend on a key alone for that encoding to be searched (a
/// shorter run would match unrelated text).
const MIN_CORE: usize = 8;

/// The longest an escape of one character can be (`\u00XX`).
const MAX_UNIT: usize = 6;

/// Which base64 alphabet a pattern was made with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Alphabet {
    Standard,
    UrlSafe,
    /// Both give the same characters for this pattern.
    Either,
}

/// How a pattern's occurrence is replaced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// By the replacement, character for character in the occurrence's escapes where the
    /// lengths agree, else as it is.
    Plain,
    /// The part of a base64 encoding that depends on the key alone. `lead` of the key's bits
    /// sit in the character before it and `trail` in the one after (0, 2 or 4 each); the
    /// replacement holds those two characters too (where they are not 0), computed with
    /// zero bits for the neighbours, whose bits the occurrence keeps.
    Base64 {
        lead: u8,
        trail: u8,
        alphabet: Alphabet,
    },
}

/// A pattern and its replacement, as offsets into the table's page.
#[derive(Clone, Copy)]
struct Pair {
    ps: usize,
    pl: usize,
    rs: usize,
    rl: usize,
    kind: Kind,
}

/// Pattern → replacement pairs, kept in one secret page; shared by every stream that uses
/// them (made once per held value, not per request).
pub struct Table {
    page: SecretPage,
    /// Longest pattern first.
    pairs: Vec<Pair>,
    /// The most a stream holds back: one less than the longest span an occurrence can take
    /// (escapes and base64's boundary characters included), from the key's length rounded
    /// up to a power of two, so holding back says no more of the length than that.
    hold_limit: usize,
    /// Whether every pattern byte is in [`in_class`] (else every chunk holds `hold_limit`).
    class_only: bool,
    /// Whether escaped forms are searched (echo tables); exact tables match as they are.
    escapes: bool,
    /// The distinct first bytes of the patterns (a key's first byte says nothing of it).
    firsts: Vec<u8>,
}

/// One stream's replacement state over a [`Table`].
pub struct Replacer {
    table: Arc<Table>,
    /// The held-back tail of the stream (may end inside an occurrence).
    carry: BytesMut,
    /// How many replacements were made.
    pub replaced: usize,
}

/// A pattern and its replacement while a table is built, wiped when dropped.
struct Owned {
    pat: Zeroizing<Vec<u8>>,
    rep: Zeroizing<Vec<u8>>,
    kind: Kind,
}

fn hex_digit(v: u8, upper: bool) -> u8 {
    let digits = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    digits[usize::from(v & 15)]
}

fn hex(bytes: &[u8], upper: bool) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() * 2));
    for b in bytes {
        out.push(hex_digit(b >> 4, upper));
        out.push(hex_digit(*b, upper));
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex2(two: &[u8]) -> Option<u8> {
    Some(hex_value(two[0])? << 4 | hex_value(two[1])?)
}

/// A base64 character's value, in either alphabet.
fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

fn b64_char(v: u8, alphabet: Alphabet) -> u8 {
    match v {
        0..=25 => b'A' + v,
        26..=51 => b'a' + v - 26,
        52..=61 => b'0' + v - 52,
        62 if alphabet == Alphabet::UrlSafe => b'-',
        62 => b'+',
        _ if alphabet == Alphabet::UrlSafe => b'_',
        _ => b'/',
    }
}

/// What stands in for `secret` in base64: the placeholder where it has the key's length,
/// else the key's length of one byte the key does not contain (so it decodes to no part of
/// the key).
fn stand_in(secret: &[u8], placeholder: &[u8]) -> Zeroizing<Vec<u8>> {
    if placeholder.len() == secret.len() {
        return Zeroizing::new(placeholder.to_vec());
    }
    let filler = (0..=255u8).find(|b| !secret.contains(b)).unwrap_or(0);
    Zeroizing::new(vec![filler; secret.len()])
}

/// The part of the base64 of `secret` placed `offset` bytes into a 3-byte group that
/// depends on it alone, and the same part of `stand_in`'s encoding with the characters
/// either side that hold some of its bits; `None` where that part is too short to search.
fn base64_piece(
    secret: &[u8],
    stand_in: &[u8],
    offset: usize,
    alphabet: Alphabet,
) -> Option<Owned> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let engine = if alphabet == Alphabet::UrlSafe {
        &URL_SAFE_NO_PAD
    } else {
        &STANDARD_NO_PAD
    };
    let encode = |bytes: &[u8]| -> Option<Zeroizing<Vec<u8>>> {
        let mut input = Zeroizing::new(Vec::with_capacity(offset + bytes.len()));
        input.resize(offset, 0);
        input.extend_from_slice(bytes);
        let mut out = Zeroizing::new(vec![0u8; (input.len() * 8).div_ceil(6)]);
        let n = engine.encode_slice(&input[..], &mut out[..]).ok()?;
        out.truncate(n);
        Some(out)
    };
    let (bits_start, bits_end) = (8 * offset, 8 * (offset + secret.len()));
    let (j0, j1) = (bits_start.div_ceil(6), bits_end / 6);
    if j1 < j0 + MIN_CORE {
        return None;
    }
    let lead = 6 * j0 - bits_start;
    let trail = bits_end - 6 * j1;
    let key = encode(secret)?;
    let rep = encode(stand_in)?;
    let from = j0 - usize::from(lead > 0);
    let to = j1 + usize::from(trail > 0);
    Some(Owned {
        pat: Zeroizing::new(key[j0..j1].to_vec()),
        rep: Zeroizing::new(rep.get(from..to)?.to_vec()),
        kind: Kind::Base64 {
            lead: u8::try_from(lead).ok()?,
            trail: u8::try_from(trail).ok()?,
            alphabet,
        },
    })
}

/// The longest span an occurrence of a form of an `n`-byte key can take in a stream: its
/// longest form (hex, `2n` characters) with base64's two boundary characters, each
/// character escaped as `\u00XX`; `n` rounded up to a power of two (at least 64).
fn longest_span(n: usize) -> usize {
    let n = n.next_power_of_two().max(64);
    MAX_UNIT * (2 * n + 2)
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

    /// A stream replacing each secret by its placeholder, in every form.
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
    /// Replaces each `from` by its `to` exactly (no other forms).
    pub fn exact(pairs: &[(&[u8], &[u8])]) -> std::io::Result<Arc<Table>> {
        let owned: Vec<Owned> = pairs
            .iter()
            .map(|(f, t)| Owned {
                pat: Zeroizing::new(f.to_vec()),
                rep: Zeroizing::new(t.to_vec()),
                kind: Kind::Plain,
            })
            .collect();
        let longest = pairs.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        Table::build(owned, longest.saturating_sub(1), false)
    }

    /// Replaces each secret by its placeholder in every form (see the module's docs).
    pub fn echoes(secrets: &[(&[u8], &[u8])]) -> std::io::Result<Arc<Table>> {
        let mut owned = Vec::new();
        let mut span = 0;
        for (secret, placeholder) in secrets {
            if secret.is_empty() {
                continue;
            }
            let plain = |pat: Zeroizing<Vec<u8>>, rep: Zeroizing<Vec<u8>>| Owned {
                pat,
                rep,
                kind: Kind::Plain,
            };
            owned.push(plain(
                Zeroizing::new(secret.to_vec()),
                Zeroizing::new(placeholder.to_vec()),
            ));
            owned.push(plain(hex(secret, false), hex(placeholder, false)));
            owned.push(plain(hex(secret, true), hex(placeholder, true)));
            let stand_in = stand_in(secret, placeholder);
            for alphabet in [Alphabet::Standard, Alphabet::UrlSafe] {
                for offset in 0..3 {
                    owned.extend(base64_piece(secret, &stand_in, offset, alphabet));
                }
            }
            span = span.max(longest_span(secret.len()));
        }
        Table::build(owned, span.saturating_sub(1), true)
    }

    fn build(
        mut owned: Vec<Owned>,
        hold_limit: usize,
        escapes: bool,
    ) -> std::io::Result<Arc<Table>> {
        owned.retain(|o| !o.pat.is_empty());
        // One pattern once: base64 in both alphabets is often the same characters.
        let mut unique: Vec<Owned> = Vec::with_capacity(owned.len());
        for o in owned {
            match unique.iter_mut().find(|u| u.pat == o.pat) {
                Some(u) => {
                    if let (
                        Kind::Base64 {
                            lead,
                            trail,
                            alphabet,
                            ..
                        },
                        Kind::Base64 {
                            lead: l2,
                            trail: t2,
                            ..
                        },
                    ) = (&mut u.kind, o.kind)
                        && (*lead, *trail) == (l2, t2)
                    {
                        *alphabet = Alphabet::Either;
                    }
                }
                None => unique.push(o),
            }
        }
        // Longest first, so a pattern that contains another wins.
        unique.sort_by_key(|o| std::cmp::Reverse(o.pat.len()));
        let total: usize = unique.iter().map(|o| o.pat.len() + o.rep.len()).sum();
        let mut page = SecretPage::new(total.max(1))?;
        let mut pairs = Vec::with_capacity(unique.len());
        let mut at = 0;
        {
            let out = page.expose_secret_mut();
            for o in &unique {
                let (pl, rl) = (o.pat.len(), o.rep.len());
                out[at..at + pl].copy_from_slice(&o.pat);
                out[at + pl..at + pl + rl].copy_from_slice(&o.rep);
                pairs.push(Pair {
                    ps: at,
                    pl,
                    rs: at + pl,
                    rl,
                    kind: o.kind,
                });
                at += pl + rl;
            }
        }
        let class_only = unique.iter().all(|o| o.pat.iter().all(|&b| in_class(b)));
        drop(unique);
        let mut firsts: Vec<u8> = pairs.iter().map(|p| page.expose_secret()[p.ps]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        Ok(Arc::new(Table {
            page,
            pairs,
            hold_limit,
            class_only,
            escapes,
            firsts,
        }))
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

    /// The length of the unit (a character as it is, or escaped) at `at` that stands for
    /// `want`, if there is one.
    fn unit(&self, data: &[u8], at: usize, want: u8) -> Option<usize> {
        let b = *data.get(at)?;
        if b == want {
            return Some(1);
        }
        if !self.escapes {
            return None;
        }
        match b {
            b'%' => (hex2(data.get(at + 1..at + 3)?)? == want).then_some(3),
            b'\\' => match *data.get(at + 1)? {
                b'/' | b'\\' if data[at + 1] == want => Some(2),
                b'u' => {
                    let d = data.get(at + 2..at + 6)?;
                    (want < 0x80 && d[..2] == *b"00" && hex2(&d[2..])? == want).then_some(6)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The unit at `at`, whatever it stands for: its length and the byte.
    fn unit_any(&self, data: &[u8], at: usize) -> Option<(usize, u8)> {
        let b = *data.get(at)?;
        if self.escapes {
            if b == b'%'
                && let Some(v) = data.get(at + 1..at + 3).and_then(hex2)
            {
                return Some((3, v));
            }
            if b == b'\\' {
                match data.get(at + 1) {
                    Some(&c @ (b'/' | b'\\')) => return Some((2, c)),
                    Some(b'u') => {
                        if let Some(d) = data.get(at + 2..at + 6)
                            && d[..2] == *b"00"
                            && let Some(v) = hex2(&d[2..]).filter(|v| *v < 0x80)
                        {
                            return Some((6, v));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some((1, b))
    }

    /// The unit that ends at `end`, escapes first (`%2B` before a match is `+`, not `B`).
    fn unit_before(&self, data: &[u8], end: usize) -> Option<(usize, u8)> {
        if self.escapes {
            for len in [6, 3, 2] {
                if let Some(start) = end.checked_sub(len)
                    && let Some((l, v)) = self.unit_any(data, start)
                    && l == len
                {
                    return Some((start, v));
                }
            }
        }
        let start = end.checked_sub(1)?;
        Some((start, data[start]))
    }

    /// Where the occurrence of pair `k` starting at `at` ends, if it is whole in `data`.
    fn verify(&self, data: &[u8], at: usize, k: usize) -> Option<usize> {
        let p = self.pairs[k];
        let pattern = &self.page.expose_secret()[p.ps..p.ps + p.pl];
        let mut i = at;
        for &c in pattern {
            i += self.unit(data, i, c)?;
        }
        Some(i)
    }

    /// The whole occurrence of pair `k` whose pattern is at `at..end`: base64's boundary
    /// characters included where the encoding has them.
    fn hit(&self, data: &[u8], at: usize, end: usize, k: usize) -> Hit {
        let mut hit = Hit {
            start: at,
            core: at,
            core_end: end,
            end,
            pair: k,
            lead: None,
            trail: None,
        };
        if let Kind::Base64 { lead, trail, .. } = self.pairs[k].kind {
            if lead > 0
                && let Some((start, v)) = self.unit_before(data, at)
                && b64_value(v).is_some()
            {
                hit.start = start;
                hit.lead = Some(v);
            }
            if trail > 0
                && let Some((len, v)) = self.unit_any(data, end)
                && b64_value(v).is_some()
            {
                hit.end = end + len;
                hit.trail = Some(v);
            }
        }
        hit
    }

    /// Occurrences found from their first bytes (at most three distinct ones: one SIMD
    /// pass), each candidate compared against the patterns that start with its byte. Only
    /// as they are (no escapes).
    fn hits_by_first_byte(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let secret = self.page.expose_secret();
        let candidates: Box<dyn Iterator<Item = usize>> = match self.firsts[..] {
            [] => return Vec::new(),
            [a] => Box::new(memchr::memchr_iter(a, data)),
            [a, b] => Box::new(memchr::memchr2_iter(a, b, data)),
            [a, b, c, ..] => Box::new(memchr::memchr3_iter(a, b, c, data)),
        };
        let mut hits = Vec::new();
        for at in candidates {
            // Pairs are sorted longest first: the first that matches is the longest.
            let found = self.pairs.iter().position(|p| {
                data.len() - at >= p.pl && data[at..at + p.pl] == secret[p.ps..p.ps + p.pl]
            });
            if let Some(k) = found {
                hits.push((at, k));
            }
        }
        hits
    }

    /// Occurrences found with one SIMD substring search per pattern, as they are.
    fn hits_by_substring(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let secret = self.page.expose_secret();
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for (k, p) in self.pairs.iter().enumerate() {
            let finder = memchr::memmem::Finder::new(&secret[p.ps..p.ps + p.pl]);
            hits.extend(finder.find_iter(data).map(|at| (at, k)));
        }
        hits
    }

    /// Occurrences with escaped characters among them: every place a pattern's first
    /// character is, as it is or escaped, checked unit by unit.
    fn hits_escaped(&self, data: &[u8]) -> Vec<(usize, usize, usize)> {
        let secret = self.page.expose_secret();
        let mut hits = Vec::new();
        for (k, p) in self.pairs.iter().enumerate() {
            let first = secret[p.ps];
            for at in memchr::memchr3_iter(first, b'%', b'\\', data) {
                if let Some(end) = self.verify(data, at, k) {
                    hits.push((at, end, k));
                }
            }
        }
        hits
    }

    /// Every whole occurrence in `data`, leftmost first, the longest first at one place,
    /// none overlapping another.
    fn occurrences(&self, data: &[u8]) -> Vec<Hit> {
        let found: Vec<(usize, usize, usize)> =
            if self.escapes && memchr::memchr2(b'%', b'\\', data).is_some() {
                self.hits_escaped(data)
            } else {
                let raw = if self.firsts.len() <= 3 {
                    self.hits_by_first_byte(data)
                } else {
                    self.hits_by_substring(data)
                };
                raw.into_iter()
                    .map(|(at, k)| (at, at + self.pairs[k].pl, k))
                    .collect()
            };
        let mut hits: Vec<Hit> = found
            .into_iter()
            .map(|(at, end, k)| self.hit(data, at, end, k))
            .collect();
        hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end - h.start)));
        let mut kept: Vec<Hit> = Vec::with_capacity(hits.len());
        for h in hits {
            if kept.last().is_none_or(|last| h.start >= last.end) {
                kept.push(h);
            }
        }
        kept
    }

    /// Writes the replacement of `hit` (found in `data`) to `out`.
    fn replace(&self, data: &[u8], hit: &Hit, out: &mut BytesMut) {
        let secret = self.page.expose_secret();
        let p = self.pairs[hit.pair];
        let pattern = &secret[p.ps..p.ps + p.pl];
        let rep = &secret[p.rs..p.rs + p.rl];
        match p.kind {
            Kind::Plain if p.rl != p.pl => out.extend_from_slice(rep),
            Kind::Plain => self.replace_units(data, hit.core, pattern, rep, out),
            Kind::Base64 {
                lead,
                trail,
                alphabet,
            } => {
                let core_rep = &rep[usize::from(lead > 0)..rep.len() - usize::from(trail > 0)];
                if let Some(v) = hit.lead {
                    let mask = (1u8 << lead) - 1;
                    let new = (b64_value(v).unwrap_or(0) & !mask)
                        | (b64_value(rep[0]).unwrap_or(0) & mask);
                    emit(
                        out,
                        &data[hit.start..hit.core],
                        b64_char(new, pick(v, alphabet)),
                    );
                }
                self.replace_units(data, hit.core, pattern, core_rep, out);
                if let Some(v) = hit.trail {
                    let mask = ((1u8 << trail) - 1) << (6 - trail);
                    let new = (b64_value(rep[rep.len() - 1]).unwrap_or(0) & mask)
                        | (b64_value(v).unwrap_or(0) & !mask);
                    emit(
                        out,
                        &data[hit.core_end..hit.end],
                        b64_char(new, pick(v, alphabet)),
                    );
                }
            }
        }
    }

    /// Writes `rep` character by character in the units `pattern` was found in at `at`.
    fn replace_units(
        &self,
        data: &[u8],
        at: usize,
        pattern: &[u8],
        rep: &[u8],
        out: &mut BytesMut,
    ) {
        let mut i = at;
        for (&want, &c) in pattern.iter().zip(rep) {
            let len = self.unit(data, i, want).unwrap_or(1);
            emit(out, &data[i..(i + len).min(data.len())], c);
            i += len;
        }
    }
}

/// The alphabet a boundary character is written back in: the one its original shows, else
/// the pattern's.
fn pick(original: u8, alphabet: Alphabet) -> Alphabet {
    match original {
        b'-' | b'_' => Alphabet::UrlSafe,
        b'+' | b'/' => Alphabet::Standard,
        _ => alphabet,
    }
}

/// Writes `c` in the escape `unit` used (as it is, `%XX`, `\u00XX` or `\/`), keeping the
/// case of its hex digits.
fn emit(out: &mut BytesMut, unit: &[u8], c: u8) {
    let upper = |digits: &[u8]| {
        digits.iter().any(u8::is_ascii_uppercase) || !digits.iter().any(u8::is_ascii_lowercase)
    };
    match unit {
        [b'%', d @ ..] if d.len() == 2 => {
            let up = upper(d);
            out.extend_from_slice(&[b'%', hex_digit(c >> 4, up), hex_digit(c, up)]);
        }
        [b'\\', b'u', _, _, d @ ..] if d.len() == 2 => {
            let up = d.iter().any(u8::is_ascii_uppercase);
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&[hex_digit(c >> 4, up), hex_digit(c, up)]);
        }
        [b'\\', e] if *e == c => out.extend_from_slice(unit),
        [b'\\', _] if c.is_ascii_alphanumeric() || b"+=-_.~".contains(&c) => out.put_u8(c),
        [b'\\', _] => {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&[hex_digit(c >> 4, false), hex_digit(c, false)]);
        }
        _ => out.put_u8(c),
    }
}

/// One occurrence in a chunk: the bytes it spans, where its pattern is, and base64's
/// boundary characters (as found) where it has them. No `Debug`: those carry key bits.
struct Hit {
    start: usize,
    core: usize,
    core_end: usize,
    end: usize,
    pair: usize,
    lead: Option<u8>,
    trail: Option<u8>,
}

impl Replacer {
    /// Feeds a chunk; returns what can be passed on now (possibly empty). A chunk with no
    /// occurrence in it and no held tail before it passes without a copy.
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
        let hold = if last { 0 } else { table.hold(data) };
        let safe_end = data.len() - hold;
        // An occurrence that starts before `safe_end` is whole in `data`: it spans at most
        // `hold_limit + 1` class bytes, and anything it spans is of the class.
        let hits: Vec<Hit> = table
            .occurrences(data)
            .into_iter()
            .filter(|h| h.start < safe_end)
            .collect();
        if hits.is_empty() {
            return (None, safe_end);
        }
        let mut out = BytesMut::with_capacity(data.len());
        let mut i = 0;
        for hit in &hits {
            out.extend_from_slice(&data[i..hit.start]);
            table.replace(data, hit, &mut out);
            i = hit.end;
        }
        self.replaced += hits.len();
        let end = safe_end.max(i);
        out.extend_from_slice(&data[i..end]);
        (Some(out.freeze()), end)
    }
}

impl Table {
    /// Replaces every echo of a value in each header value (an answer's headers, a `101`'s,
    /// trailers).
    pub(super) fn scrub_headers(self: &Arc<Self>, headers: &mut http::HeaderMap) {
        let names: Vec<http::header::HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<http::HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            let scrubbed: Vec<Option<Vec<u8>>> = values
                .iter()
                .map(|v| self.scrub_whole(v.as_bytes()))
                .collect();
            if scrubbed.iter().all(Option::is_none) {
                continue;
            }
            headers.remove(&name);
            for (v, new) in values.into_iter().zip(scrubbed) {
                let v = match new {
                    // A replacement is made of the value's own bytes and a placeholder's
                    // (letters, digits, `-`, `_`), so it is a valid value; if not, nothing.
                    Some(new) => http::HeaderValue::from_bytes(&new)
                        .unwrap_or(http::HeaderValue::from_static("")),
                    None => v,
                };
                headers.append(name.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    fn run(r: &mut Replacer, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push_slice(c));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    fn scrub(key: &[u8], ph: &[u8], text: &[u8]) -> Vec<u8> {
        let mut r = Replacer::echoes(&[(key, ph)]).unwrap();
        run(&mut r, &[text])
    }

    /// Whether `out` holds any 6 consecutive bytes of `key` past its first 3 (a kind
    /// prefix is public).
    fn holds_part_of(out: &[u8], key: &[u8]) -> bool {
        key[3..].windows(6).any(|w| out.windows(6).any(|o| o == w))
    }

    const KEY: &[u8] = b"sk-proj-Q2x/9+Zk7Lm0Pq4Rs8Tu1Vw5Xy3Ab6Cd";
    const SAME: &[u8] = b"sk-proj-Hh8Jj2Kk4Mm6Nn1Pp3Qq5Rr7Ss9Tt0Uu";
    const SHORT: &[u8] = b"agentkeys-placeholder-AbCdEfGhIjKlMnOpQrStUvWxYz012345";

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
        let starts =
            |t: &Table| -> Vec<usize> { t.occurrences(data).iter().map(|h| h.start).collect() };
        assert_eq!(starts(&wide), [0, 4, 11, 15, 22]);
        let mut by_first: Vec<usize> = narrow
            .hits_by_first_byte(data)
            .iter()
            .map(|h| h.0)
            .collect();
        let mut by_sub: Vec<usize> = narrow.hits_by_substring(data).iter().map(|h| h.0).collect();
        by_first.sort_unstable();
        by_sub.sort_unstable();
        assert_eq!(by_first, by_sub);
        assert_eq!(by_first, [0, 4, 11]);
    }

    #[test]
    fn encoded_echoes_become_the_placeholder_in_the_same_encoding() {
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
    fn base64_of_a_longer_text_is_caught_at_every_alignment_in_both_alphabets() {
        // "user:KEY" (basic auth), "Bearer KEY", the key at each offset mod 3, with text
        // after it or not, padded or not: decoded, the answer holds the placeholder where
        // the key was and every neighbouring byte as it was.
        for before in ["", "u", "us", "x-access-token:", "Bearer ", "{\"k\":\""] {
            for after in ["", "\"", "\"}", ":tail-text"] {
                let plain = [before.as_bytes(), KEY, after.as_bytes()].concat();
                let want = [before.as_bytes(), SAME, after.as_bytes()].concat();
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&plain);
                    let text = format!("Authorization: Basic {encoded}\r\n");
                    let out = scrub(KEY, SAME, text.as_bytes());
                    let out = String::from_utf8(out).unwrap();
                    let got = out
                        .strip_prefix("Authorization: Basic ")
                        .and_then(|s| s.strip_suffix("\r\n"))
                        .unwrap();
                    assert_eq!(
                        engine.decode(got).unwrap(),
                        want,
                        "{before:?} KEY {after:?} in {encoded}"
                    );
                }
            }
        }
    }

    #[test]
    fn base64_with_a_placeholder_of_another_length_decodes_to_no_part_of_the_key() {
        for before in ["", "u", "us", "Bearer "] {
            let plain = [before.as_bytes(), KEY, b" and more"].concat();
            for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                let text = format!("{{\"b64\": \"{}\"}}", engine.encode(&plain));
                let out = String::from_utf8(scrub(KEY, SHORT, text.as_bytes())).unwrap();
                let got = out
                    .strip_prefix("{\"b64\": \"")
                    .and_then(|s| s.strip_suffix("\"}"))
                    .unwrap();
                let decoded = engine.decode(got).unwrap();
                // Same length, the neighbours intact, and nothing of the key in between.
                assert_eq!(decoded.len(), plain.len());
                assert!(decoded.starts_with(before.as_bytes()));
                assert!(decoded.ends_with(b" and more"));
                assert!(!holds_part_of(&decoded, KEY), "{decoded:?}");
                assert!(!holds_part_of(
                    out.as_bytes(),
                    &engine.encode(KEY).into_bytes()
                ));
            }
        }
    }

    /// `KEY` JSON-escaped the ways encoders do: `\/` (PHP), `\u002b`/`\u002B` (.NET), every
    /// character `\u00XX`.
    fn json_forms(key: &[u8]) -> Vec<String> {
        let each = |f: &dyn Fn(u8) -> String| key.iter().map(|&b| f(b)).collect::<String>();
        vec![
            each(&|b| match b {
                b'/' => "\\/".into(),
                _ => char::from(b).to_string(),
            }),
            each(&|b| match b {
                b'+' => "\\u002b".into(),
                b'/' => "\\/".into(),
                _ => char::from(b).to_string(),
            }),
            each(&|b| match b {
                b'+' | b'/' => format!("\\u{:04X}", b),
                _ => char::from(b).to_string(),
            }),
            each(&|b| format!("\\u{:04x}", b)),
        ]
    }

    /// `KEY` percent-encoded: its reserved characters, or every character, either case.
    fn percent_forms(key: &[u8]) -> Vec<String> {
        let each = |f: &dyn Fn(u8) -> String| key.iter().map(|&b| f(b)).collect::<String>();
        vec![
            each(&|b| match b {
                b'+' | b'/' => format!("%{b:02X}"),
                _ => char::from(b).to_string(),
            }),
            each(&|b| match b {
                b'+' | b'/' => format!("%{b:02x}"),
                _ => char::from(b).to_string(),
            }),
            each(&|b| format!("%{b:02X}")),
            each(&|b| format!("%{b:02x}")),
        ]
    }

    fn json_decode(s: &str) -> String {
        serde_json::from_str::<String>(&format!("\"{s}\"")).unwrap()
    }

    fn percent_decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(hex2(&b[i + 1..i + 3]).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn json_escapes_and_percent_encoding_of_any_character_are_caught() {
        for form in json_forms(KEY) {
            let text = format!("{{\"echo\":\"Bearer {form}\"}}");
            let out = String::from_utf8(scrub(KEY, SAME, text.as_bytes())).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                v["echo"].as_str().unwrap().as_bytes(),
                [b"Bearer ".as_slice(), SAME].concat(),
                "{form} → {out}"
            );
            // A placeholder of another length: the placeholder itself.
            let out = String::from_utf8(scrub(KEY, SHORT, text.as_bytes())).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let echo = v["echo"].as_str().unwrap().as_bytes();
            assert_eq!(echo, [b"Bearer ".as_slice(), SHORT].concat());
            assert!(!holds_part_of(echo, KEY));
        }
        for form in percent_forms(KEY) {
            let text = format!("https://example.com/cb?token={form}&x=1");
            let out = String::from_utf8(scrub(KEY, SAME, text.as_bytes())).unwrap();
            let want = [b"https://example.com/cb?token=".as_slice(), SAME, b"&x=1"].concat();
            assert_eq!(percent_decode(&out), want, "{form} → {out}");
        }
        // Base64 of the key with its '+' and '/' escaped, in JSON and in a query.
        let b64 = STANDARD.encode(KEY);
        for (escaped, decode) in [
            (
                b64.replace('/', "\\/").replace('+', "\\u002B"),
                &(|s: &str| json_decode(s).into_bytes()) as &dyn Fn(&str) -> Vec<u8>,
            ),
            (b64.replace('/', "%2F").replace('+', "%2b"), &percent_decode),
        ] {
            let out = String::from_utf8(scrub(KEY, SAME, escaped.as_bytes())).unwrap();
            let decoded = STANDARD.decode(decode(&out)).unwrap();
            assert_eq!(decoded, SAME, "{escaped} → {out}");
        }
    }

    #[test]
    fn an_escape_split_across_chunks_is_caught() {
        let form = &percent_forms(KEY)[2];
        let text = format!("t={form};");
        for cut in 0..text.len() {
            let mut r = Replacer::echoes(&[(KEY, SAME)]).unwrap();
            let out = run(&mut r, &[&text.as_bytes()[..cut], &text.as_bytes()[cut..]]);
            let out = String::from_utf8(out).unwrap();
            assert!(
                !holds_part_of(&percent_decode(&out), KEY),
                "cut {cut}: {out}"
            );
            assert_eq!(r.replaced, 1);
        }
    }

    #[test]
    fn a_right_and_a_wrong_guess_are_held_back_alike() {
        // An agent streams back bytes of its choice: a prefix of the key, or another string
        // of the same length and class. What the proxy passes on at once must not differ.
        let wrong = b"sk-proj-ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
        for k in 1..KEY.len() {
            let mut right = Replacer::echoes(&[(KEY, SAME)]).unwrap();
            let mut other = Replacer::echoes(&[(KEY, SAME)]).unwrap();
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

    #[test]
    fn random_texts_with_the_key_in_every_form_come_out_without_it() {
        // Random keys and random cuts: whatever the alignment and the chunking, no window of
        // the key survives in any form the table searches.
        for round in 0..200u32 {
            let r: [u8; 64] = agentkeys_core::crypto::random_array();
            const B64URL: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let len = 20 + usize::from(r[0]) % 40;
            let key: Vec<u8> = r[1..=len]
                .iter()
                .map(|b| B64URL[usize::from(*b) % 64])
                .collect();
            let ph: Vec<u8> = if round % 2 == 0 {
                SHORT.to_vec()
            } else {
                vec![b'P'; len]
            };
            let lead = "x".repeat(usize::from(r[61]) % 3);
            let text = format!(
                "{{\"raw\":\"{k}\",\"b64\":\"{b}\",\"pct\":\"{p}\",\"hex\":\"{h}\"}}",
                k = String::from_utf8_lossy(&key),
                b = STANDARD.encode([lead.as_bytes(), &key, b"!"].concat()),
                p = percent_forms(&key)[2],
                h = hex(&key, false)
                    .iter()
                    .map(|&b| char::from(b))
                    .collect::<String>(),
            );
            let cut = usize::from(r[62]) * text.len() / 256;
            let mut rep = Replacer::echoes(&[(&key, &ph)]).unwrap();
            let out = run(
                &mut rep,
                &[&text.as_bytes()[..cut], &text.as_bytes()[cut..]],
            );
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let b64 = STANDARD.decode(v["b64"].as_str().unwrap()).unwrap();
            let pct = percent_decode(v["pct"].as_str().unwrap());
            for got in [v["raw"].as_str().unwrap().as_bytes(), &b64, &pct] {
                assert!(
                    !key.windows(8).any(|w| got.windows(8).any(|o| o == w)),
                    "{} in {}",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(&out)
                );
            }
            assert!(
                !out.windows(16)
                    .any(|o| hex(&key, false).windows(16).any(|w| w == o))
            );
            assert_eq!(rep.replaced, 4);
        }
    }
}
