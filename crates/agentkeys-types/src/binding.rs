//! Credential bindings: where a credential may be sent and how the daemon's egress proxy
//! puts it into a request (DESIGN decision 35). A binding is set by a master, stored with
//! the credential on the server, and reaches the daemon signed with the value, so an agent
//! can neither set nor widen it.
//!
//! The agent never sees the value: it gets a placeholder, and the proxy replaces the
//! placeholder with the value only in a request to a bound host, method and path, and only
//! where [`Inject`] says. A placeholder anywhere else is refused.

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
    /// The placeholder is replaced wherever it appears in a header value (also inside
    /// `Authorization: Basic`), and in the query string or the body only when opted in.
    Substitute {
        /// Also in the query string.
        #[serde(default, skip_serializing_if = "is_false")]
        query: bool,
        /// Also in the request body (streamed).
        #[serde(default, skip_serializing_if = "is_false")]
        body: bool,
    },
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
        }
    }

    /// Checks every field; the server stores nothing that fails, and the daemon uses
    /// nothing that fails.
    pub fn validate(&self) -> Result<(), BindingError> {
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
        if let Inject::Header { name, prefix } = &self.inject {
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
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(bad(format!("the proxy cannot inject into '{name}'")));
            }
            if prefix.len() > 64 || !prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(bad(
                    "a header prefix is at most 64 printable ASCII characters",
                ));
            }
        }
        Ok(())
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
    let headers_only = Inject::Substitute {
        query: false,
        body: false,
    };
    let b = match service {
        "openai" => Binding::new(hosts(&["api.openai.com"]), Inject::Bearer),
        // The SDK sends the key as `x-api-key` and, depending on its version and settings,
        // as `Authorization: Bearer` too: both are headers.
        "anthropic" => Binding::new(hosts(&["api.anthropic.com"]), headers_only.clone()),
        // The REST API takes `Bearer`/`token`, git over HTTPS basic auth: both are headers.
        "github" => Binding::new(
            hosts(&["api.github.com", "github.com", "uploads.github.com"]),
            headers_only.clone(),
        ),
        // SDKs send `Bearer`, curl examples basic auth with the key as the user.
        "stripe" => Binding::new(hosts(&["api.stripe.com", "files.stripe.com"]), headers_only),
        "slack" => Binding::new(hosts(&["slack.com"]), Inject::Bearer),
        "huggingface" | "hf" => Binding::new(
            hosts(&["huggingface.co", "*.huggingface.co"]),
            Inject::Bearer,
        ),
        // `x-goog-api-key` from the SDKs, `?key=` from REST examples.
        "google-ai" | "gemini" => Binding::new(
            hosts(&["generativelanguage.googleapis.com"]),
            Inject::Substitute {
                query: true,
                body: false,
            },
        ),
        _ => return None,
    };
    Some(b)
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
            r#"{"hosts":["a.example.com"],"inject":{"kind":"substitute","query":true}}"#,
        )
        .expect("substitute");
        assert_eq!(
            sub.inject,
            Inject::Substitute {
                query: true,
                body: false
            }
        );
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
