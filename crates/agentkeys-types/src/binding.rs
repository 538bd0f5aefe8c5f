//! Credential bindings: where a credential may be sent and how the daemon's egress proxy
//! puts it into a request (decision 82). A binding is set by a master, stored with
//! the credential on the server, and reaches the daemon signed with the value, so an agent
//! can neither set nor widen it.
//!
//! The agent never sees the value: it gets a placeholder, and the proxy replaces the
//! placeholder with the value only in a request to a bound host, method and path, and only
//! where [`Inject`] says: named headers, the query string, named body fields. A placeholder
//! anywhere else is refused.
//!
//! Two forms stored before issue 23 are *retired* (see [`Binding::in_force`]): `substitute`
//! without header names (any header) and `"body": true` (anywhere in the body). They still
//! parse, so stored credentials stay readable, but the server stores no new one and the proxy
//! injects through none, except the old built-in defaults, which become today's.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Most hosts one binding may name.
pub const MAX_HOSTS: usize = 32;

/// Where a credential may be sent, and how it is injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Host names it may be sent to: exact (`api.openai.com`) or one leading wildcard label
    /// (`*.example.com`: any name under example.com, not example.com itself). Lowercase.
    pub hosts: Vec<String>,
    /// HTTP methods it may be sent with (uppercase); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes it may be sent to (each starts with `/`); empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Where the value goes.
    pub inject: Inject,
    /// Injected over plain `http://` too (default: only over TLS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_http: bool,
    /// The bound hosts may resolve to loopback, private, link-local or metadata addresses
    /// (default: refused).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_private: bool,
    /// With body fields: during a run that uses this credential, hosts no credential of the
    /// run is bound to are still tunnelled. Default: refused, so a value sent into a body
    /// field cannot be read back through another name of the same server, unscrubbed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tunnel_unbound: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How the proxy puts the value into a request that carries the credential's placeholder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Inject {
    /// `Authorization: Bearer <value>`; the placeholder is accepted only there.
    Bearer,
    /// A named header, `<prefix><value>`; the placeholder is accepted only in that header.
    Header {
        /// The header name (lowercase).
        name: String,
        /// Text before the value (`token `, …); may be empty.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
    /// HTTP basic auth: the placeholder in the user or password part of
    /// `Authorization: Basic …` is replaced.
    Basic {
        /// Which part holds the credential.
        part: BasicPart,
    },
    /// The placeholder is replaced where it appears in the named headers (in `authorization`
    /// also inside `Authorization: Basic`), in the query string when opted in, and as the
    /// whole value of the named body fields.
    Substitute {
        /// The headers it may be in (lowercase names). `None` only in bindings stored before
        /// names were required, which meant any header: retired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<Vec<String>>,
        /// Also in the query string.
        #[serde(default, skip_serializing_if = "is_false")]
        query: bool,
        /// Body fields whose whole value may be the placeholder (never free text).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        body_fields: Vec<BodyField>,
        /// Retired: the placeholder replaced anywhere in the body, which an agent could turn
        /// into a read of the value. Parsed so a stored binding is recognised and refused.
        #[serde(default, skip_serializing_if = "is_false")]
        body: bool,
    },
}

/// A request body field the placeholder may be the whole value of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BodyField {
    /// An RFC 6901 JSON pointer (`/auth/api_key`, `/items/0/key`) into a body of type
    /// `application/json` or `application/*+json`.
    Json(String),
    /// A field name of an `application/x-www-form-urlencoded` body.
    Form(String),
}

impl BodyField {
    /// `/json/pointer` or `form:NAME`, as the CLI writes them.
    pub fn parse(text: &str) -> Result<BodyField, BindingError> {
        let field = match text.strip_prefix("form:") {
            Some(name) => BodyField::Form(name.to_owned()),
            None if text.starts_with('/') => BodyField::Json(text.to_owned()),
            None => {
                return Err(bad(format!(
                    "'{text}' is not a body field: a JSON pointer ('/auth/api_key') or 'form:NAME'"
                )));
            }
        };
        field.validate()?;
        Ok(field)
    }

    fn validate(&self) -> Result<(), BindingError> {
        match self {
            BodyField::Json(p) => {
                if self.json_segments().is_none() {
                    return Err(bad(format!(
                        "'{p}' is not a JSON pointer (starts with '/', at most 256 characters, \
                         no control character, '~' only as '~0' or '~1')"
                    )));
                }
            }
            BodyField::Form(name) => {
                if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "'{name}' is not a form field name (1 to 128 characters, no control character)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The reference tokens of a JSON pointer, unescaped (`~1` → `/`, `~0` → `~`); `None`
    /// for a form field or a malformed pointer.
    pub fn json_segments(&self) -> Option<Vec<String>> {
        let BodyField::Json(p) = self else {
            return None;
        };
        let rest = p.strip_prefix('/')?;
        if p.len() > 256 || p.chars().any(char::is_control) {
            return None;
        }
        rest.split('/')
            .map(|token| {
                let mut out = String::with_capacity(token.len());
                let mut chars = token.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '~' => match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => return None,
                        },
                        c => out.push(c),
                    }
                }
                Some(out)
            })
            .collect()
    }
}

impl std::fmt::Display for BodyField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyField::Json(p) => f.write_str(p),
            BodyField::Form(name) => write!(f, "form:{name}"),
        }
    }
}

/// The part of a basic-auth pair that holds the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BasicPart {
    /// `value:…`
    User,
    /// `…:value`
    Password,
}

/// Why a binding is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BindingError(pub String);

fn bad(msg: impl Into<String>) -> BindingError {
    BindingError(msg.into())
}

/// Methods a binding may name.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// Headers the proxy owns or that frame the message: never an injection target.
const RESERVED_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
];

/// Most header names and body fields one `substitute` binding may name.
pub const MAX_PLACES: usize = 16;

/// Headers that turn one method or path into another on upstreams that honour them
/// (frameworks behind IIS, Symfony, Express's method-override, Google's APIs …). A request
/// carrying one gets around a binding's method and path limits, so on such a binding it is
/// refused (see the proxy's `inspect::check`).
pub const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// `name` is a lowercase header token the proxy may inject into.
fn validate_header_name(name: &str) -> Result<(), BindingError> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token {
        return Err(bad(format!(
            "'{name}' is not a header name (lowercase letters, digits and '-')"
        )));
    }
    if RESERVED_HEADERS.contains(&name) {
        return Err(bad(format!("the proxy cannot inject into '{name}'")));
    }
    Ok(())
}

impl Binding {
    /// A binding to `hosts` with `inject`, any method and path, TLS only, public addresses.
    pub fn new(hosts: Vec<String>, inject: Inject) -> Self {
        Binding {
            hosts,
            methods: Vec::new(),
            paths: Vec::new(),
            inject,
            allow_http: false,
            allow_private: false,
            tunnel_unbound: false,
        }
    }

    /// Checks every field of a binding to be stored: the server stores nothing that fails.
    /// A retired form fails here (the message says what replaces it).
    pub fn validate(&self) -> Result<(), BindingError> {
        self.validate_stored()?;
        match self.retired() {
            Some(why) => Err(bad(format!(
                "{why}; {}",
                match self.inject {
                    Inject::Substitute { body: true, .. } =>
                        "name the fields instead (\"body_fields\": [{\"json\": \"/pointer\"} or {\"form\": \"name\"}])",
                    _ => "name the headers instead (\"headers\": [\"authorization\", …])",
                }
            ))),
            None => Ok(()),
        }
    }

    /// Checks every field of a binding that was stored (and signed) by the server, retired
    /// forms included: they stay readable, and the proxy refuses them ([`Binding::in_force`]).
    pub fn validate_stored(&self) -> Result<(), BindingError> {
        if self.hosts.is_empty() {
            return Err(bad("a binding names at least one host"));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(bad(format!("a binding names at most {MAX_HOSTS} hosts")));
        }
        for h in &self.hosts {
            validate_host_pattern(h)?;
        }
        for m in &self.methods {
            if !METHODS.contains(&m.as_str()) {
                return Err(bad(format!(
                    "'{m}' is not an HTTP method (one of {})",
                    METHODS.join(", ")
                )));
            }
        }
        for p in &self.paths {
            let ok = p.starts_with('/')
                && p.len() <= 256
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
                && !p.split('/').any(|seg| seg == "." || seg == "..");
            if !ok {
                return Err(bad(format!(
                    "'{p}' is not a path prefix (starts with '/', no query, no '.' or '..' segment)"
                )));
            }
        }
        match &self.inject {
            Inject::Header { name, prefix } => {
                validate_header_name(name)?;
                if prefix.len() > 64 || !prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return Err(bad(
                        "a header prefix is at most 64 printable ASCII characters",
                    ));
                }
            }
            Inject::Substitute {
                headers,
                query,
                body_fields,
                body,
            } => {
                let names = headers.as_deref().unwrap_or_default();
                if names.len() > MAX_PLACES || body_fields.len() > MAX_PLACES {
                    return Err(bad(format!(
                        "a binding names at most {MAX_PLACES} headers and {MAX_PLACES} body fields"
                    )));
                }
                for name in names {
                    validate_header_name(name)?;
                }
                for field in body_fields {
                    field.validate()?;
                }
                if headers.as_ref().is_some_and(Vec::is_empty)
                    && !query
                    && body_fields.is_empty()
                    && !body
                {
                    return Err(bad(
                        "a substitute binding names where the placeholder may be: headers, the \
                         query string or body fields",
                    ));
                }
            }
            Inject::Bearer | Inject::Basic { .. } => {}
        }
        if self.tunnel_unbound && self.body_fields().is_empty() {
            return Err(bad(
                "tunnel_unbound goes with body fields (it relaxes the strict egress they bring)",
            ));
        }
        Ok(())
    }

    /// The body fields the placeholder may be the whole value of (none but for `substitute`).
    pub fn body_fields(&self) -> &[BodyField] {
        match &self.inject {
            Inject::Substitute { body_fields, .. } => body_fields,
            _ => &[],
        }
    }

    /// Whether a run using this binding refuses hosts no credential of the run is bound to:
    /// body fields make it so, unless the binding says `tunnel_unbound`.
    pub fn makes_egress_strict(&self) -> bool {
        !self.body_fields().is_empty() && !self.tunnel_unbound
    }

    /// Why this binding is a retired form, if it is one.
    pub fn retired(&self) -> Option<&'static str> {
        match &self.inject {
            Inject::Substitute { body: true, .. } => Some(
                "the placeholder replaced anywhere in the request body (\"body\": true) is \
                 retired: an agent could turn it into a read of the value",
            ),
            Inject::Substitute { headers: None, .. } => Some(
                "the placeholder replaced in any header (a substitute binding without \
                 \"headers\") is retired: it could carry the value in a header the upstream \
                 reflects",
            ),
            _ => None,
        }
    }

    /// The binding the proxy applies for the credential `service` stored with this one:
    /// itself, unless it is retired. A retired binding that is exactly an old built-in
    /// default becomes today's built-in for that service (the same hosts and flags, the
    /// placeholder allowed in fewer places: only ever narrower); any other is refused, with
    /// the command that rebinds it.
    pub fn in_force(&self, service: &str) -> Result<Cow<'_, Binding>, BindingError> {
        let Some(why) = self.retired() else {
            return Ok(Cow::Borrowed(self));
        };
        if legacy_well_known(service).as_ref() == Some(self)
            && let Some(today) = well_known(service)
        {
            return Ok(Cow::Owned(today));
        }
        Err(bad(format!(
            "the binding of {service} cannot be used: {why}. Its master rebinds it naming the \
             places, e.g. '{}'",
            self.rebind_command(service)
        )))
    }

    /// `agentkeys bind …` rebinding `service` to these hosts, limits and flags with the
    /// places named: a starting point for a master replacing a retired binding.
    fn rebind_command(&self, service: &str) -> String {
        let mut cmd = format!("agentkeys bind {service}");
        for h in &self.hosts {
            cmd.push_str(&format!(" --host '{h}'"));
        }
        for m in &self.methods {
            cmd.push_str(&format!(" --method {m}"));
        }
        for p in &self.paths {
            cmd.push_str(&format!(" --path '{p}'"));
        }
        let (query, body) = match &self.inject {
            Inject::Substitute { query, body, .. } => (*query, *body),
            _ => (false, false),
        };
        cmd.push_str(" --inject substitute:HEADER[,HEADER…]");
        if query {
            cmd.push_str(" --substitute-query");
        }
        if body {
            cmd.push_str(" --body-field /json/pointer|form:NAME");
        }
        if self.allow_http {
            cmd.push_str(" --allow-http");
        }
        if self.allow_private {
            cmd.push_str(" --allow-private");
        }
        cmd
    }

    /// Whether `host` (any case, trailing dot allowed) is one of the bound hosts.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|p| host_matches(p, &host))
    }

    /// Whether `method` and `path` (without the query) are allowed. A path with a `.` or
    /// `..` segment, or a percent-encoded dot or slash, never matches a path prefix: it could
    /// step out of the prefix once the upstream decodes it.
    pub fn allows_request(&self, method: &str, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        if !method_ok {
            return false;
        }
        if self.paths.is_empty() {
            return true;
        }
        let lower = path.to_ascii_lowercase();
        let tricky = path.split('/').any(|seg| seg == "." || seg == "..")
            || lower.contains("%2e")
            || lower.contains("%2f")
            || lower.contains("%5c")
            || path.contains('\\');
        !tricky && self.paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// Whether the binding limits methods or paths (so method and path overrides matter).
    pub fn limits_requests(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty()
    }

    /// The canonical JSON text of this binding, the form the server stores and signs.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `api.openai.com` or `*.example.com`: lowercase DNS labels, a wildcard only as the whole
/// leftmost label and followed by at least two labels.
fn validate_host_pattern(pattern: &str) -> Result<(), BindingError> {
    let (wild, name) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let labels: Vec<&str> = name.split('.').collect();
    let labels_ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    let numeric = labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok || name.len() > 253 || numeric {
        return Err(bad(format!(
            "'{pattern}' is not a host name (lowercase DNS name, optionally '*.' then the domain)"
        )));
    }
    if wild && labels.len() < 2 {
        return Err(bad(format!(
            "'{pattern}' is too wide: a wildcard needs a domain of at least two labels"
        )));
    }
    Ok(())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => pattern == host,
    }
}

/// The built-in bindings of well-known services, applied when a master stores one of these
/// names without saying otherwise. Each entry: service names, hosts, injection.
pub fn well_known(service: &str) -> Option<Binding> {
    let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let in_headers = |names: &[&str], query: bool| Inject::Substitute {
        headers: Some(names.iter().map(|s| (*s).to_owned()).collect()),
        query,
        body_fields: Vec::new(),
        body: false,
    };
    let b = match service {
        "openai" => Binding::new(hosts(&["api.openai.com"]), Inject::Bearer),
        // The SDK sends the key as `x-api-key` and, depending on its version and settings,
        // as `Authorization: Bearer` too.
        "anthropic" => Binding::new(
            hosts(&["api.anthropic.com"]),
            in_headers(&["x-api-key", "authorization"], false),
        ),
        // The REST API takes `Bearer`/`token`, git over HTTPS basic auth: all `Authorization`.
        "github" => Binding::new(
            hosts(&["api.github.com", "github.com", "uploads.github.com"]),
            in_headers(&["authorization"], false),
        ),
        // SDKs send `Bearer`, curl examples basic auth with the key as the user.
        "stripe" => Binding::new(
            hosts(&["api.stripe.com", "files.stripe.com"]),
            in_headers(&["authorization"], false),
        ),
        "slack" => Binding::new(hosts(&["slack.com"]), Inject::Bearer),
        "huggingface" | "hf" => Binding::new(
            hosts(&["huggingface.co", "*.huggingface.co"]),
            Inject::Bearer,
        ),
        // `x-goog-api-key` from the SDKs, `?key=` from REST examples.
        "google-ai" | "gemini" => Binding::new(
            hosts(&["generativelanguage.googleapis.com"]),
            in_headers(&["x-goog-api-key"], true),
        ),
        _ => return None,
    };
    Some(b)
}

/// The built-in bindings as shipped before `substitute` named its headers, for the services
/// whose built-in was `substitute`: a stored copy of one of these is upgraded to today's
/// built-in by [`Binding::in_force`].
fn legacy_well_known(service: &str) -> Option<Binding> {
    let today = well_known(service)?;
    let Inject::Substitute { query, .. } = today.inject else {
        return None;
    };
    Some(Binding {
        inject: Inject::Substitute {
            headers: None,
            query,
            body_fields: Vec::new(),
            body: false,
        },
        ..today
    })
}

/// The services [`well_known`] knows, for help texts.
pub const WELL_KNOWN: [&str; 9] = [
    "openai",
    "anthropic",
    "github",
    "stripe",
    "slack",
    "huggingface",
    "hf",
    "google-ai",
    "gemini",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(hosts: &[&str]) -> Binding {
        Binding::new(
            hosts.iter().map(|s| (*s).to_owned()).collect(),
            Inject::Bearer,
        )
    }

    #[test]
    fn host_patterns_are_validated() {
        for ok in ["api.openai.com", "*.example.com", "localhost", "a-b.c1.io"] {
            assert_eq!(binding(&[ok]).validate(), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.com",
            "API.openai.com",
            "a..b",
            "-a.com",
            "a.com.",
            "1.2.3.4",
            "a*.b.com",
            "*.*.b.com",
            "a.com:443",
            "a b.com",
        ] {
            assert!(binding(&[bad]).validate().is_err(), "{bad}");
        }
        assert!(binding(&[]).validate().is_err());
        let many: Vec<String> = (0..=MAX_HOSTS)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        assert!(Binding::new(many, Inject::Bearer).validate().is_err());
    }

    #[test]
    fn a_wildcard_matches_names_under_its_domain_only() {
        let b = binding(&["*.example.com", "api.openai.com"]);
        assert!(b.allows_host("a.example.com"));
        assert!(b.allows_host("a.b.example.com"));
        assert!(b.allows_host("A.Example.COM."));
        assert!(!b.allows_host("example.com"));
        assert!(!b.allows_host("badexample.com"));
        assert!(!b.allows_host("example.com.evil.io"));
        assert!(b.allows_host("api.openai.com"));
        assert!(!b.allows_host("openai.com"));
        assert!(!b.allows_host("xapi.openai.com"));
    }

    #[test]
    fn methods_and_path_prefixes_restrict_requests() {
        let mut b = binding(&["api.example.com"]);
        assert!(b.allows_request("DELETE", "/anything"));
        b.methods = vec!["POST".into()];
        b.paths = vec!["/v1/".into()];
        assert_eq!(b.validate(), Ok(()));
        assert!(b.allows_request("POST", "/v1/chat"));
        assert!(!b.allows_request("GET", "/v1/chat"));
        assert!(!b.allows_request("POST", "/v2/chat"));
        for sneaky in [
            "/v1/../admin",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/admin",
            "/v1/a%2Fb",
            "/v1/..\\x",
        ] {
            assert!(!b.allows_request("POST", sneaky), "{sneaky}");
        }
        b.paths = vec!["/v1/../".into()];
        assert!(b.validate().is_err());
        b.paths = vec!["v1".into()];
        assert!(b.validate().is_err());
        b.methods = vec!["post".into()];
        assert!(b.validate().is_err());
    }

    #[test]
    fn injection_targets_are_validated() {
        let header = |name: &str, prefix: &str| {
            Binding::new(
                vec!["a.example.com".into()],
                Inject::Header {
                    name: name.into(),
                    prefix: prefix.into(),
                },
            )
            .validate()
        };
        assert_eq!(header("x-api-key", ""), Ok(()));
        assert_eq!(header("authorization", "token "), Ok(()));
        for reserved in ["host", "content-length", "cookie", "proxy-authorization"] {
            assert!(header(reserved, "").is_err(), "{reserved}");
        }
        assert!(header("X-Api-Key", "").is_err());
        assert!(header("x-api-key", "a\nb").is_err());
    }

    #[test]
    fn the_json_form_round_trips_and_rejects_unknown_fields() {
        let b = Binding {
            methods: vec!["POST".into()],
            allow_http: true,
            ..binding(&["api.example.com"])
        };
        let text = b.to_json();
        assert_eq!(
            text,
            r#"{"hosts":["api.example.com"],"methods":["POST"],"inject":{"kind":"bearer"},"allow_http":true}"#
        );
        assert_eq!(serde_json::from_str::<Binding>(&text).ok(), Some(b));
        let wider = r#"{"hosts":["a.example.com"],"inject":{"kind":"bearer"},"any_host":true}"#;
        assert!(serde_json::from_str::<Binding>(wider).is_err());
        let sub: Binding = serde_json::from_str(
            r#"{"hosts":["a.example.com"],"inject":{"kind":"substitute","headers":["x-goog-api-key"],"query":true}}"#,
        )
        .expect("substitute");
        assert_eq!(
            sub.inject,
            Inject::Substitute {
                headers: Some(vec!["x-goog-api-key".into()]),
                query: true,
                body_fields: vec![],
                body: false,
            }
        );
        assert_eq!(sub.validate(), Ok(()));
    }

    fn substitute(headers: &[&str], fields: &[&str]) -> Binding {
        Binding::new(
            vec!["api.example.com".into()],
            Inject::Substitute {
                headers: Some(headers.iter().map(|h| (*h).to_owned()).collect()),
                query: false,
                body_fields: fields
                    .iter()
                    .map(|f| BodyField::parse(f).expect(f))
                    .collect(),
                body: false,
            },
        )
    }

    #[test]
    fn a_substitute_binding_names_its_headers_and_body_fields() {
        let b = substitute(&["x-api-key"], &["/auth/api_key", "form:key"]);
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(
            b.to_json(),
            r#"{"hosts":["api.example.com"],"inject":{"kind":"substitute","headers":["x-api-key"],"body_fields":[{"json":"/auth/api_key"},{"form":"key"}]}}"#
        );
        assert_eq!(serde_json::from_str::<Binding>(&b.to_json()).ok(), Some(b));
        // Body fields alone (no header) are a binding; naming no place at all is not.
        assert_eq!(substitute(&[], &["/key"]).validate(), Ok(()));
        let nowhere = substitute(&[], &[]).validate().unwrap_err();
        assert!(nowhere.0.contains("names where"), "{nowhere}");
        for bad in ["X-Api-Key", "cookie", "host", "a b", ""] {
            assert!(substitute(&[bad], &[]).validate().is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_PLACES).map(|i| format!("x-h{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(substitute(&many, &[]).validate().is_err());
    }

    #[test]
    fn body_fields_are_json_pointers_or_form_names() {
        let segments = |p: &str| BodyField::parse(p).ok().and_then(|f| f.json_segments());
        assert_eq!(
            segments("/a~1b/0/c~0d"),
            Some(vec!["a/b".into(), "0".into(), "c~d".into()])
        );
        assert_eq!(segments("/"), Some(vec![String::new()]));
        assert_eq!(
            BodyField::parse("form:api_key"),
            Ok(BodyField::Form("api_key".into()))
        );
        assert_eq!(BodyField::Form("k".into()).to_string(), "form:k");
        assert_eq!(BodyField::Json("/k".into()).to_string(), "/k");
        for bad in [
            "",
            "key",
            "a/b",
            "/a~2",
            "/a~",
            "form:",
            "/a\nb",
            "form:a\u{7f}",
        ] {
            assert!(BodyField::parse(bad).is_err(), "{bad:?}");
        }
        assert!(BodyField::parse(&format!("/{}", "a".repeat(256))).is_err());
        let e = BodyField::parse("key").unwrap_err();
        assert!(e.0.contains("form:NAME"), "{e}");
    }

    #[test]
    fn tunnel_unbound_goes_with_body_fields_and_body_fields_make_egress_strict() {
        let mut b = substitute(&[], &["/key"]);
        assert!(b.makes_egress_strict());
        b.tunnel_unbound = true;
        assert_eq!(b.validate(), Ok(()));
        assert!(!b.makes_egress_strict());
        assert!(
            b.to_json().ends_with(r#","tunnel_unbound":true}"#),
            "{}",
            b.to_json()
        );
        let headers_only = Binding {
            tunnel_unbound: true,
            ..substitute(&["x-api-key"], &[])
        };
        assert!(!substitute(&["x-api-key"], &[]).makes_egress_strict());
        let e = headers_only.validate().unwrap_err();
        assert!(e.0.contains("goes with body fields"), "{e}");
    }

    /// The exact texts the server stored for the built-in `substitute` bindings before they
    /// named their headers.
    const LEGACY_BUILT_INS: [(&str, &str); 5] = [
        (
            "anthropic",
            r#"{"hosts":["api.anthropic.com"],"inject":{"kind":"substitute"}}"#,
        ),
        (
            "github",
            r#"{"hosts":["api.github.com","github.com","uploads.github.com"],"inject":{"kind":"substitute"}}"#,
        ),
        (
            "stripe",
            r#"{"hosts":["api.stripe.com","files.stripe.com"],"inject":{"kind":"substitute"}}"#,
        ),
        (
            "google-ai",
            r#"{"hosts":["generativelanguage.googleapis.com"],"inject":{"kind":"substitute","query":true}}"#,
        ),
        (
            "gemini",
            r#"{"hosts":["generativelanguage.googleapis.com"],"inject":{"kind":"substitute","query":true}}"#,
        ),
    ];

    #[test]
    fn retired_forms_stay_readable_but_are_never_stored() {
        for text in [
            r#"{"hosts":["api.example.com"],"inject":{"kind":"substitute"}}"#,
            r#"{"hosts":["api.example.com"],"inject":{"kind":"substitute","query":true,"body":true}}"#,
        ] {
            let b: Binding = serde_json::from_str(text).expect(text);
            assert_eq!(b.validate_stored(), Ok(()), "{text}");
            assert!(b.retired().is_some(), "{text}");
            let e = b.validate().unwrap_err();
            assert!(e.0.contains("retired"), "{e}");
            // Re-serialized byte for byte: the signed text and the parsed one agree.
            assert_eq!(b.to_json(), text);
        }
        let body: Binding = serde_json::from_str(
            r#"{"hosts":["a.example.com"],"inject":{"kind":"substitute","headers":["x-api-key"],"body":true}}"#,
        )
        .unwrap();
        assert!(body.validate().unwrap_err().0.contains("body_fields"));
    }

    #[test]
    fn an_old_built_in_default_becomes_todays_and_other_retired_bindings_are_refused() {
        for (service, text) in LEGACY_BUILT_INS {
            let stored: Binding = serde_json::from_str(text).expect(text);
            let applied = stored.in_force(service).expect(service).into_owned();
            assert_eq!(Some(&applied), well_known(service).as_ref(), "{service}");
            // Only ever narrower: the same hosts, limits and flags; named headers in place
            // of any header; the query as before; never the body.
            let Inject::Substitute {
                headers,
                query,
                body_fields,
                body,
            } = &applied.inject
            else {
                panic!("{service}: {applied:?}");
            };
            assert!(headers.as_ref().is_some_and(|h| !h.is_empty()), "{service}");
            assert_eq!(
                (*query, body_fields.is_empty(), *body),
                (text.contains("query"), true, false)
            );
            assert_eq!(
                Binding {
                    inject: stored.inject.clone(),
                    ..applied.clone()
                },
                stored
            );
        }
        // Today's bindings are in force as they are.
        let today = well_known("anthropic").unwrap();
        assert!(matches!(today.in_force("anthropic"), Ok(Cow::Borrowed(_))));
        // The same retired text under another name, with other hosts, or with the body: no.
        let (_, anthropic) = LEGACY_BUILT_INS[0];
        let stored: Binding = serde_json::from_str(anthropic).unwrap();
        let e = stored.in_force("my-anthropic").unwrap_err();
        assert!(
            e.0.contains(
                "agentkeys bind my-anthropic --host 'api.anthropic.com' --inject substitute:HEADER"
            ),
            "{e}"
        );
        let other: Binding = serde_json::from_str(
            r#"{"hosts":["api.anthropic.com","evil.example.com"],"inject":{"kind":"substitute"}}"#,
        )
        .unwrap();
        assert!(other.in_force("anthropic").is_err());
        let body: Binding = serde_json::from_str(
            r#"{"hosts":["api.anthropic.com"],"methods":["POST"],"inject":{"kind":"substitute","body":true}}"#,
        )
        .unwrap();
        let e = body.in_force("anthropic").unwrap_err();
        assert!(e.0.contains("anywhere in the request body"), "{e}");
        assert!(e.0.contains("--method POST"), "{e}");
        assert!(e.0.contains("--body-field"), "{e}");
    }

    #[test]
    fn every_well_known_binding_is_valid() {
        for name in WELL_KNOWN {
            let b = well_known(name).expect(name);
            assert_eq!(b.validate(), Ok(()), "{name}");
        }
        assert!(well_known("my-internal-api").is_none());
        assert!(
            well_known("github")
                .expect("github")
                .allows_host("github.com")
        );
    }
}
