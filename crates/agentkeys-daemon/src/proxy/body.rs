//! What a request body may carry: a credential's placeholder only as the whole value of a
//! field its binding names (a JSON pointer into a JSON body, a field of a form body), found
//! by parsing the body as the upstream will, never by a text search that a reversing or
//! storing endpoint could turn into a read of the value; and the body rewritten with the
//! value in exactly those fields.

use std::borrow::Cow;
use std::ops::Range;

use agentkeys_types::binding::BodyField;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use zeroize::Zeroizing;

/// Largest body the proxy reads to look for placeholders (it is read whole before anything
/// is fetched, so the value never goes out with a body the proxy has not seen end to end).
pub const MAX_BODY: usize = 1 << 20;

/// Deepest JSON nesting the proxy parses (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// How a body is encoded, from its `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `application/json` or `application/*+json`, UTF-8.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Anything else, by its media type (empty: none given).
    Other(String),
}

impl Kind {
    /// The kind of the body under `headers`. Several `Content-Type` headers, or a JSON body
    /// in another charset than UTF-8, are `Other`: no field of theirs is trusted.
    pub fn of(headers: &HeaderMap) -> Kind {
        let mut values = headers.get_all(CONTENT_TYPE).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Kind::Other(String::new());
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let mut parts = text.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let utf8 = parts.all(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        });
        let json = media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"));
        if json && utf8 {
            Kind::Json
        } else if media == "application/x-www-form-urlencoded" {
            Kind::Form
        } else {
            Kind::Other(media.chars().take(64).collect())
        }
    }

    fn describe(&self) -> String {
        match self {
            Kind::Json => "the JSON body".into(),
            Kind::Form => "the form body".into(),
            Kind::Other(m) if m.is_empty() => "a body without a Content-Type".into(),
            Kind::Other(m) => format!("a body of type {m}"),
        }
    }
}

/// The request's `Content-Encoding`, unless none or `identity`: such a body cannot be looked
/// into, so the proxy does not substitute into it.
pub fn encoding(headers: &HeaderMap) -> Option<String> {
    let all: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty() && v != "identity")
        .collect();
    (!all.is_empty()).then(|| all.join(", ").chars().take(64).collect())
}

/// The places in `body` (of `kind`) where `placeholder` may be replaced under `fields`: the
/// byte range of each JSON string literal (quotes included) or form value that is exactly the
/// placeholder, at a named field. `Err` describes where else the placeholder was found (in
/// another field, inside a longer string, in a key or name, in a body of another kind): the
/// request is then refused whole.
pub fn sites(
    body: &[u8],
    kind: &Kind,
    fields: &[BodyField],
    placeholder: &[u8],
) -> Result<Vec<Range<usize>>, String> {
    match kind {
        Kind::Json => {
            let pointers: Vec<Vec<String>> =
                fields.iter().filter_map(BodyField::json_segments).collect();
            match json_strings(body, placeholder) {
                Some(found) => {
                    let mut sites = Vec::new();
                    for s in found {
                        let named = !s.key && pointers.iter().any(|p| s.path.matches(p));
                        if !(named && s.whole) {
                            return Err(format!(
                                "{} at {}{}",
                                kind.describe(),
                                s.path.render(),
                                if s.key {
                                    " (in a key)"
                                } else if named {
                                    " (inside a longer string)"
                                } else {
                                    ""
                                }
                            ));
                        }
                        sites.push(s.span);
                    }
                    Ok(sites)
                }
                // Not JSON: nothing in it is a field, so the placeholder may be nowhere.
                None => raw_only(body, "a body that is not valid JSON", placeholder),
            }
        }
        Kind::Form => {
            let names: Vec<&str> = fields
                .iter()
                .filter_map(|f| match f {
                    BodyField::Form(n) => Some(n.as_str()),
                    BodyField::Json(_) => None,
                })
                .collect();
            let mut sites = Vec::new();
            for pair in form_pairs(body) {
                let name = form_decode(&body[pair.name.clone()]);
                let value = form_decode(&body[pair.value.clone()]);
                let shown = String::from_utf8_lossy(&name)
                    .chars()
                    .take(64)
                    .collect::<String>();
                if contains(&name, placeholder) {
                    return Err("the form body, in a field name".to_owned());
                }
                if !contains(&value, placeholder) {
                    continue;
                }
                let named = names.iter().any(|n| n.as_bytes() == &name[..]);
                if !named || &value[..] != placeholder {
                    return Err(format!(
                        "the form body, field '{shown}'{}",
                        if named {
                            " (inside a longer value)"
                        } else {
                            ""
                        }
                    ));
                }
                sites.push(pair.value);
            }
            Ok(sites)
        }
        Kind::Other(_) => raw_only(body, &kind.describe(), placeholder),
    }
}

/// No site in a body the proxy does not parse: the placeholder may not be in it at all.
fn raw_only(body: &[u8], what: &str, placeholder: &[u8]) -> Result<Vec<Range<usize>>, String> {
    if contains(body, placeholder) {
        Err(what.to_owned())
    } else {
        Ok(Vec::new())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `body` with each `(site, value)` replaced by the value, encoded for `kind` (a JSON string
/// literal, or a form-encoded value). The result holds the values: it is wiped when dropped,
/// and sized once so no growing copy is left behind.
pub fn rewrite(
    body: &[u8],
    kind: &Kind,
    sites: &mut [(Range<usize>, &[u8])],
) -> Result<Zeroizing<Vec<u8>>, String> {
    sites.sort_by_key(|(r, _)| r.start);
    let room: usize = sites.iter().map(|(_, v)| v.len() * 6 + 2).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + room));
    let mut at = 0;
    for (range, value) in sites.iter() {
        if range.start < at || range.end > body.len() {
            return Err("overlapping body fields".into());
        }
        out.extend_from_slice(&body[at..range.start]);
        match kind {
            Kind::Json => json_string(value, &mut out)?,
            Kind::Form => form_encode(value, &mut out),
            Kind::Other(_) => return Err("no field to substitute into".into()),
        }
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Ok(out)
}

/// `value` as a JSON string literal.
fn json_string(value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if std::str::from_utf8(value).is_err() {
        return Err(
            "the credential is not UTF-8 text, so it cannot travel in a JSON string".into(),
        );
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
    Ok(())
}

/// `value` form-encoded (WHATWG `application/x-www-form-urlencoded`).
fn form_encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => {
                out.push(b'%');
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
}

/// One `name=value` of a form body, as byte ranges of the raw body.
struct Pair {
    name: Range<usize>,
    value: Range<usize>,
}

fn form_pairs(body: &[u8]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for piece in body.split(|&b| b == b'&') {
        let end = start + piece.len();
        let (name, value) = match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (start..start + eq, start + eq + 1..end),
            None => (start..end, end..end),
        };
        pairs.push(Pair { name, value });
        start = end + 1;
    }
    pairs
}

/// A form name or value decoded as servers do: `+` is a space, `%XX` a byte, and a `%` not
/// followed by two hex digits stays as it is.
fn form_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// One step of a JSON path.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where in a JSON document a string is.
#[derive(Clone, Debug, Default)]
struct Path(Vec<Step>);

impl Path {
    /// Whether this path is the one a pointer's tokens name (a token names an array index
    /// only in its canonical decimal form, as RFC 6901 says).
    fn matches(&self, pointer: &[String]) -> bool {
        self.0.len() == pointer.len()
            && self.0.iter().zip(pointer).all(|(step, token)| match step {
                Step::Key(k) => k == token,
                Step::Index(i) => i.to_string() == *token,
            })
    }

    /// The path as a JSON pointer, for messages (cut at 128 characters).
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "the top level".into();
        }
        let mut out = String::new();
        for step in &self.0 {
            out.push('/');
            match step {
                Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Step::Index(i) => out.push_str(&i.to_string()),
            }
        }
        if out.chars().count() > 128 {
            out = out.chars().take(128).collect::<String>() + "…";
        }
        out
    }
}

/// A JSON string (key or value) whose decoded text holds the placeholder.
struct Found {
    path: Path,
    /// The literal's bytes, quotes included.
    span: Range<usize>,
    /// An object key (never a site).
    key: bool,
    /// The decoded text is exactly the placeholder.
    whole: bool,
}

/// Every string of the JSON document `body` whose decoded text holds `placeholder` (escaped
/// forms such as `\u0073k-…` included); `None` when `body` is not one valid JSON document.
fn json_strings(body: &[u8], placeholder: &[u8]) -> Option<Vec<Found>> {
    std::str::from_utf8(body).ok()?;
    let mut p = Parser {
        b: body,
        i: 0,
        placeholder,
        path: Path::default(),
        found: Vec::new(),
    };
    p.ws();
    p.value(0)?;
    p.ws();
    (p.i == body.len()).then_some(p.found)
}

/// A strict RFC 8259 parser that keeps only what the proxy needs: the path, span and decoded
/// text of each string.
struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    placeholder: &'a [u8],
    path: Path,
    found: Vec<Found>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                let (span, text) = self.string()?;
                self.note(span, &text, false);
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn note(&mut self, span: Range<usize>, text: &str, key: bool) {
        if contains(text.as_bytes(), self.placeholder) {
            self.found.push(Found {
                path: self.path.clone(),
                span,
                key,
                whole: text.as_bytes() == self.placeholder,
            });
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let (span, key) = self.string()?;
            self.note(span, &key, true);
            self.path.0.push(Step::Key(key.into_owned()));
            self.ws();
            self.eat(b':')?;
            self.ws();
            self.value(depth + 1)?;
            self.path.0.pop();
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        let mut index = 0;
        loop {
            self.ws();
            self.path.0.push(Step::Index(index));
            self.value(depth + 1)?;
            self.path.0.pop();
            index += 1;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let end = self.i.checked_add(4)?;
        let digits = std::str::from_utf8(self.b.get(self.i..end)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i = end;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A string literal: its span (quotes included) and its decoded text. Raw control
    /// characters, unknown escapes and lone surrogates make the document invalid.
    fn string(&mut self) -> Option<(Range<usize>, Cow<'a, str>)> {
        let b: &'a [u8] = self.b;
        let start = self.i;
        self.eat(b'"')?;
        let body_start = self.i;
        // Fast path: no escape.
        loop {
            match self.peek()? {
                b'"' => {
                    let text = std::str::from_utf8(&b[body_start..self.i]).ok()?;
                    self.i += 1;
                    return Some((start..self.i, Cow::Borrowed(text)));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let mut text = String::from(std::str::from_utf8(&b[body_start..self.i]).ok()?);
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some((start..self.i, Cow::Owned(text)));
                }
                b'\\' => {
                    self.i += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                self.eat(b'\\')?;
                                self.eat(b'u')?;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            text.push(char::from_u32(code)?);
                            continue;
                        }
                        _ => return None,
                    };
                    self.i += 1;
                    text.push(c);
                }
                0..=0x1f => return None,
                lead => {
                    // One UTF-8 character (the body was checked to be UTF-8).
                    let width = match lead {
                        0..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    let end = self.i.checked_add(width)?;
                    text.push_str(std::str::from_utf8(b.get(self.i..end)?).ok()?);
                    self.i = end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PH: &[u8] = b"sk-proj-PLACEHOLDER0123456789abcdef";

    fn fields(list: &[&str]) -> Vec<BodyField> {
        list.iter().map(|f| BodyField::parse(f).unwrap()).collect()
    }

    fn json(body: &str, named: &[&str]) -> Result<Vec<Range<usize>>, String> {
        let body = body.replace("PH", std::str::from_utf8(PH).unwrap());
        sites(body.as_bytes(), &Kind::Json, &fields(named), PH)
    }

    fn substituted(body: &str, kind: Kind, named: &[&str], real: &[u8]) -> String {
        let body = body.replace("PH", std::str::from_utf8(PH).unwrap());
        let found = sites(body.as_bytes(), &kind, &fields(named), PH).unwrap();
        let mut with: Vec<(Range<usize>, &[u8])> = found.into_iter().map(|r| (r, real)).collect();
        String::from_utf8(rewrite(body.as_bytes(), &kind, &mut with).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn a_placeholder_as_a_named_json_field_is_replaced_in_place() {
        let out = substituted(
            r#"{"model": 1.5e3, "auth": {"api_key": "PH"}, "items": [{"key": "PH"}], "n": null}"#,
            Kind::Json,
            &["/auth/api_key", "/items/0/key"],
            b"sk-real\"\\\n",
        );
        // Everything else byte for byte; the value JSON-escaped.
        assert_eq!(
            out,
            r#"{"model": 1.5e3, "auth": {"api_key": "sk-real\"\\\u000a"}, "items": [{"key": "sk-real\"\\\u000a"}], "n": null}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["auth"]["api_key"], "sk-real\"\\\n");
        // A pointer with escaped tokens, and a key written with escapes.
        let out = substituted(
            r#"{"a/b": {"c~d": "PH"}}"#,
            Kind::Json,
            &["/a~1b/c~0d"],
            b"v",
        );
        assert_eq!(out, r#"{"a/b": {"c~d": "v"}}"#);
        let out = substituted(r#"{"ap\u0069_key": "PH"}"#, Kind::Json, &["/api_key"], b"v");
        assert_eq!(out, r#"{"ap\u0069_key": "v"}"#);
        // No placeholder: no site, nothing to do.
        assert_eq!(json(r#"{"api_key": "other"}"#, &["/api_key"]), Ok(vec![]));
    }

    #[test]
    fn a_placeholder_anywhere_else_in_a_json_body_is_refused() {
        for (body, says) in [
            (r#"{"api_key": "PH", "text": "PH"}"#, "at /text"),
            (r#"{"text": "reverse PH please"}"#, "at /text"),
            (r#"{"api_key": "PH!"}"#, "inside a longer string"),
            (r#"{"api_key": "x", "PH": 1}"#, "in a key"),
            (r#"{"api_key": ["PH"]}"#, "at /api_key/0"),
            (
                r#"{"items": [{"key": "x"}, {"key": "PH"}]}"#,
                "at /items/1/key",
            ),
            (r#""PH""#, "at the top level"),
            // Escaped: the upstream decodes it to the placeholder, so the proxy does too.
            (
                r#"{"text": "\u0073k-proj-PLACEHOLDER0123456789abcdef"}"#,
                "at /text",
            ),
        ] {
            let e = json(body, &["/api_key", "/items/0/key"]).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
        // An array index only in canonical form.
        assert!(json(r#"{"items": [{"key": "PH"}]}"#, &["/items/00/key"]).is_err());
        // Not valid JSON: the placeholder may not be in it at all.
        for body in [
            r#"{"api_key": "PH",}"#,
            r#"{"api_key": "PH"} {"x": 1}"#,
            "{\"api_key\": \"PH\u{1}\"}",
            r#"{"api_key": "PH", "x": "\ud800"}"#,
        ] {
            let e = json(body, &["/api_key"]).unwrap_err();
            assert!(e.contains("not valid JSON"), "{body}: {e}");
        }
        assert_eq!(json(r#"{"x": 1,}"#, &["/api_key"]), Ok(vec![]));
        let deep = "[".repeat(200) + "\"PH\"" + &"]".repeat(200);
        assert!(json(&deep, &["/0"]).is_err());
    }

    #[test]
    fn a_placeholder_as_a_named_form_field_is_replaced_in_place() {
        let out = substituted(
            "a=1&api_key=PH&b=x%20y+z",
            Kind::Form,
            &["form:api_key"],
            b"sk real&=+/",
        );
        assert_eq!(out, "a=1&api_key=sk+real%26%3D%2B%2F&b=x%20y+z");
        // The name and value as servers decode them.
        let out = substituted("api%5Fkey=PH", Kind::Form, &["form:api_key"], b"v");
        assert_eq!(out, "api%5Fkey=v");
        let form = |body: &str| {
            let body = body.replace("PH", std::str::from_utf8(PH).unwrap());
            sites(body.as_bytes(), &Kind::Form, &fields(&["form:api_key"]), PH)
        };
        for (body, says) in [
            ("api_key=PH&note=PH", "field 'note'"),
            ("api_key=PH+x", "inside a longer value"),
            ("api_key=x&PH=1", "field name"),
            (
                "note=sk%2Dproj%2DPLACEHOLDER0123456789abcdef",
                "field 'note'",
            ),
            ("api_key=PH;note=x", "inside a longer value"),
        ] {
            let e = form(body).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
        assert_eq!(form("a=%zz&b"), Ok(vec![]));
        // JSON pointers say nothing about a form body, and the reverse.
        let e = sites(
            &[b"api_key=".as_slice(), PH].concat(),
            &Kind::Form,
            &fields(&["/api_key"]),
            PH,
        )
        .unwrap_err();
        assert!(e.contains("field 'api_key'"), "{e}");
    }

    #[test]
    fn a_body_of_another_kind_may_not_hold_the_placeholder() {
        let mut headers = HeaderMap::new();
        for (ct, kind) in [
            ("application/json", Kind::Json),
            ("Application/JSON; charset=UTF-8", Kind::Json),
            ("application/vnd.api+json", Kind::Json),
            (
                "application/json; charset=utf-16",
                Kind::Other("application/json".into()),
            ),
            ("application/x-www-form-urlencoded", Kind::Form),
            ("text/plain", Kind::Other("text/plain".into())),
            (
                "multipart/form-data; boundary=x",
                Kind::Other("multipart/form-data".into()),
            ),
        ] {
            headers.insert(CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(Kind::of(&headers), kind, "{ct}");
        }
        headers.append(CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(Kind::of(&headers), Kind::Other(String::new()), "two types");
        let body = [b"{\"api_key\": \"".as_slice(), PH, b"\"}"].concat();
        let e = sites(
            &body,
            &Kind::Other("text/plain".into()),
            &fields(&["/api_key"]),
            PH,
        )
        .unwrap_err();
        assert_eq!(e, "a body of type text/plain");
        let e = sites(&body, &Kind::Other(String::new()), &[], PH).unwrap_err();
        assert_eq!(e, "a body without a Content-Type");
        assert_eq!(
            sites(b"hello", &Kind::Other(String::new()), &[], PH),
            Ok(vec![])
        );

        let mut headers = HeaderMap::new();
        assert_eq!(encoding(&headers), None);
        headers.insert(CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(encoding(&headers), None);
        headers.insert(CONTENT_ENCODING, "GZIP".parse().unwrap());
        assert_eq!(encoding(&headers).as_deref(), Some("gzip"));
    }

    /// A small deterministic generator (xorshift64), so the property runs are repeatable.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).unwrap()
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// A random JSON document as serde_json writes it, with the placeholder here and there.
    fn document(rng: &mut Rng, depth: usize) -> serde_json::Value {
        use serde_json::Value;
        let ph = std::str::from_utf8(PH).unwrap();
        let strings = [ph, "x", "say PH", "api_key", "é\"\\"];
        let shape = match depth {
            0 => 4, // an object at the top, as APIs take
            1..=3 => rng.below(5),
            _ => rng.below(3),
        };
        match shape {
            0 => Value::String(rng.pick(&strings).replace("PH", ph)),
            1 => Value::from(rng.below(100)),
            2 => Value::Null,
            3 => Value::Array(
                (0..rng.below(4))
                    .map(|_| document(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.below(4))
                    .map(|_| {
                        let key = rng.pick(&["api_key", "a", "b", ph, "0"]).to_owned();
                        (key, document(rng, depth + 1))
                    })
                    .collect(),
            ),
        }
    }

    /// Whether every string of `v` (keys included) that holds the placeholder is exactly it,
    /// at one of `pointers`.
    fn only_at(v: &serde_json::Value, at: &str, pointers: &[&str]) -> bool {
        use serde_json::Value;
        let holds = |s: &str| contains(s.as_bytes(), PH);
        match v {
            Value::String(s) => !holds(s) || (s.as_bytes() == PH && pointers.contains(&at)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .all(|(i, x)| only_at(x, &format!("{at}/{i}"), pointers)),
            Value::Object(m) => m.iter().all(|(k, x)| {
                !holds(k)
                    && only_at(
                        x,
                        &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        pointers,
                    )
            }),
            _ => true,
        }
    }

    #[test]
    fn what_the_parser_lets_through_holds_the_placeholder_only_in_named_fields() {
        let pointers = ["/api_key", "/a/0", "/0/api_key"];
        let named = fields(&["/api_key", "/a/0", "/0/api_key", "form:api_key"]);
        let value = b"V\"\\\n";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut allowed = 0;
        // Valid documents: an accepted one has the placeholder only where named (as
        // serde_json, standing for the upstream, reads it), and its rewrite holds the value
        // there and parses again.
        for _ in 0..20000 {
            let doc = document(&mut rng, 0);
            let text = serde_json::to_vec(&doc).unwrap();
            let Ok(found) = sites(&text, &Kind::Json, &named, PH) else {
                continue;
            };
            assert!(only_at(&doc, "", &pointers), "{doc}");
            allowed += usize::from(!found.is_empty());
            let mut with: Vec<(Range<usize>, &[u8])> =
                found.into_iter().map(|r| (r, &value[..])).collect();
            let out = rewrite(&text, &Kind::Json, &mut with).unwrap();
            let again: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(!contains(&out, PH), "{again}");
        }
        assert!(
            allowed > 50,
            "the generator reaches the allowed case: {allowed}"
        );
        // Arbitrary bytes, JSON and form: never a panic, and an accepted body holds the
        // placeholder (raw) only inside the sites, which do not overlap.
        let ph = std::str::from_utf8(PH).unwrap();
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "PH",
            "\"PH\"",
            "\"api_key\"",
            "\"a\"",
            "1",
            "-0.5e3",
            "true",
            "null",
            " ",
            "\\u0073",
            "\\",
            "é",
            "&",
            "=",
            "api_key=",
            "+",
            "%73",
            "%",
            "\\ud800",
        ];
        for _ in 0..20000 {
            let body: String = (0..rng.below(24))
                .map(|_| rng.pick(&pieces).replace("PH", ph))
                .collect();
            for kind in [Kind::Json, Kind::Form] {
                let Ok(found) = sites(body.as_bytes(), &kind, &named, PH) else {
                    continue;
                };
                let mut at = 0;
                while let Some(i) = memchr::memmem::find(&body.as_bytes()[at..], PH) {
                    let hit = at + i..at + i + PH.len();
                    assert!(
                        found
                            .iter()
                            .any(|s| s.start <= hit.start && hit.end <= s.end),
                        "{kind:?} {body}"
                    );
                    at = hit.end;
                }
                assert!(found.windows(2).all(|w| w[0].end <= w[1].start), "{body}");
            }
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_cannot_go_into_json() {
        let body = [b"{\"k\": \"".as_slice(), PH, b"\"}"].concat();
        let found = sites(&body, &Kind::Json, &fields(&["/k"]), PH).unwrap();
        let mut with: Vec<(Range<usize>, &[u8])> =
            found.into_iter().map(|r| (r, &b"\xff\xfe"[..])).collect();
        let e = rewrite(&body, &Kind::Json, &mut with).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
