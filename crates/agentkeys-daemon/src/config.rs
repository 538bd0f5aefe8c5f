//! The daemon's configuration file (TOML, `--config`), merged with the command line.
//!
//! ```toml
//! socket = "/run/agentkeys/daemon.sock"
//! allow_uids = [1001]
//! socket_group = "agentkeys-agents"   # only this group's members reach the socket
//! idle_ttl = "60s"            # default idle TTL of a cached credential
//! cache_max_age = "5m"        # a cached credential is refetched this long after its fetch
//! revocation_check = "30s"    # how often the daemon re-checks its session, scope and policies
//! rate_limit_wait = "30s"     # how long a read may wait out the server's rate limit
//! anchor_every = "60s"        # how often the trail's head is anchored in the server's log
//! kill_grace = "5s"           # SIGTERM → SIGKILL delay for run children after a revocation
//! approval_wait = "120s"      # how long the proxy or an MCP elicitation waits for a high-value approval
//! proxy_hold = "60s"          # how long a run's proxy reuses a fetched value ("0s": fetch per request)
//! approval_hold = "15m"       # how long a run's proxy reuses a high-value value one approval released
//!
//! [cache]                     # per-service opt-in; no entry = never cached (the default)
//! openai = "60s"              # idle TTL for this service
//! github = true               # cached with idle_ttl
//!
//! [run]
//! timeout = "60s"             # default timeout of the MCP run tool
//! max_output = 65536          # bytes of stdout and of stderr the MCP run tool keeps
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentkeys_types::ServiceName;

use crate::error::DaemonError;

/// The effective policy, after the file and the flags are merged.
#[derive(Clone, Debug)]
pub struct Config {
    /// Socket path, if configured.
    pub socket: Option<PathBuf>,
    /// Extra uids allowed to connect.
    pub allow_uids: Vec<u32>,
    /// The group the socket belongs to (name or gid): then only its members reach it.
    pub socket_group: Option<String>,
    /// Services that may be cached, with their idle TTL.
    pub cache: BTreeMap<ServiceName, Duration>,
    /// Longest a cached credential is served after its fetch, however often it is used.
    pub cache_max_age: Duration,
    /// Longest a read waits (and retries) while the server answers `RATE_LIMITED`.
    pub rate_limit_wait: Duration,
    /// How often the trail's head is anchored in the server's audit log (and at stop).
    pub anchor_every: Duration,
    /// Period of the revocation check.
    pub revocation_check: Duration,
    /// SIGTERM → SIGKILL delay for `run` children after a revocation.
    pub kill_grace: Duration,
    /// How long the egress proxy holds a request, or `get_credential` waits after a URL
    /// elicitation, for a high-value approval.
    pub approval_wait: Duration,
    /// How long a run's egress proxy reuses a value it fetched (zero: fetch per request).
    pub proxy_hold: Duration,
    /// How long a run's egress proxy reuses a high-value value one approval released (the
    /// rest of the run at most; every change the master makes ends it sooner).
    pub approval_hold: Duration,
    /// Default timeout of the MCP `run` tool.
    pub run_timeout: Duration,
    /// Bytes of stdout (and of stderr) the MCP `run` tool keeps.
    pub run_max_output: usize,
    /// Force the cached pages' kind (measurements only: `--cache-page`); `None` = the best.
    pub cache_page: Option<agentkeys_secmem::SecretPageKind>,
    /// Keep the agent session in memory only (`--ephemeral`, or the default when agents
    /// share the daemon's uid): no file, no keyring entry; a restart needs a new approval.
    pub ephemeral: bool,
    /// `ephemeral` because agents share the daemon's uid (no `--allow-uid`) and
    /// `--store-session` was not given, rather than because `--ephemeral` asked for it.
    pub ephemeral_by_default: bool,
    /// The egress proxy's upstream settings.
    pub proxy: ProxyConfig,
}

/// The egress proxy's upstream settings (`--proxy-resolve`, `--proxy-upstream-ca`,
/// `--egress`).
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    /// `HOST=ADDR:PORT`: connections to HOST (any port) go to ADDR:PORT, whatever DNS says
    /// and whatever the address (the operator chose it).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Extra roots the upstream's TLS certificate may chain to.
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `--egress strict`: hosts no credential is bound to are refused, not tunnelled.
    pub strict: bool,
}

impl ProxyConfig {
    /// Parses the flags.
    pub fn from_flags(
        resolve: &[String],
        upstream_ca: Option<&Path>,
        egress: Option<&str>,
    ) -> Result<ProxyConfig, DaemonError> {
        let mut config = ProxyConfig::default();
        for entry in resolve {
            let parsed = entry.split_once('=').and_then(|(host, addr)| {
                Some((
                    host.trim_end_matches('.').to_ascii_lowercase(),
                    addr.parse().ok()?,
                ))
            });
            let Some((host, addr)) = parsed.filter(|(h, _)| !h.is_empty()) else {
                return Err(DaemonError::usage(format!(
                    "--proxy-resolve {entry}: expected HOST=ADDR:PORT, e.g. api.openai.com=127.0.0.1:8443"
                )));
            };
            config.resolve.push((host, addr));
        }
        if let Some(path) = upstream_ca {
            use rustls::pki_types::pem::PemObject as _;
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    DaemonError::usage(format!("--proxy-upstream-ca {}: {e}", path.display()))
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    DaemonError::usage(format!("--proxy-upstream-ca {}: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(DaemonError::usage(format!(
                    "--proxy-upstream-ca {}: no PEM certificate in it",
                    path.display()
                )));
            }
            config.upstream_ca = certs;
        }
        config.strict = match egress {
            None | Some("open") => false,
            Some("strict") => true,
            Some(other) => {
                return Err(DaemonError::usage(format!(
                    "--egress {other}: expected open (tunnel unbound hosts untouched) or strict (refuse them)"
                )));
            }
        };
        Ok(config)
    }

    /// The `--proxy-resolve` address for `host`, if any.
    pub fn resolve_override(&self, host: &str, _port: u16) -> Option<std::net::SocketAddr> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.resolve
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, a)| *a)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            allow_uids: Vec::new(),
            socket_group: None,
            cache: BTreeMap::new(),
            cache_max_age: DEFAULT_CACHE_MAX_AGE,
            rate_limit_wait: Duration::from_secs(30),
            anchor_every: Duration::from_secs(60),
            revocation_check: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            approval_wait: Duration::from_secs(120),
            proxy_hold: Duration::from_secs(60),
            approval_hold: Duration::from_secs(15 * 60),
            run_timeout: Duration::from_secs(60),
            run_max_output: 64 * 1024,
            cache_page: None,
            ephemeral: false,
            ephemeral_by_default: false,
            proxy: ProxyConfig::default(),
        }
    }
}

/// The file's shape.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    socket_group: Option<String>,
    idle_ttl: Option<String>,
    cache_max_age: Option<String>,
    revocation_check: Option<String>,
    rate_limit_wait: Option<String>,
    anchor_every: Option<String>,
    kill_grace: Option<String>,
    approval_wait: Option<String>,
    proxy_hold: Option<String>,
    approval_hold: Option<String>,
    #[serde(default)]
    cache: BTreeMap<String, CacheEntry>,
    #[serde(default)]
    run: RunSection,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum CacheEntry {
    On(bool),
    Ttl(String),
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunSection {
    timeout: Option<String>,
    max_output: Option<usize>,
}

/// The default idle TTL of a cached credential (decision 73).
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(60);
/// The default longest life of a cached credential, counted from its fetch.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// The cache flags of `serve` (`--cache`, `--idle-ttl`, `--cache-max-age`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheFlags<'a> {
    /// `--cache SERVICE[=TTL]`, repeatable.
    pub cache: &'a [String],
    /// `--idle-ttl`.
    pub idle_ttl: Option<&'a str>,
    /// `--cache-max-age`.
    pub max_age: Option<&'a str>,
}

impl Config {
    /// Reads `path` (if given) and applies the command-line cache flags on top.
    pub fn load(path: Option<&Path>, flags: CacheFlags<'_>) -> Result<Config, DaemonError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    DaemonError::usage(format!("cannot read the config file {}: {e}", p.display()))
                })?;
                toml::from_str::<File>(&text).map_err(|e| {
                    DaemonError::usage(format!("{}: {}", p.display(), e.message().trim()))
                })?
            }
            None => File::default(),
        };
        let mut config = Config {
            socket: file.socket,
            allow_uids: file.allow_uids,
            socket_group: file.socket_group,
            ..Config::default()
        };
        let idle_ttl = match flags.idle_ttl.or(file.idle_ttl.as_deref()) {
            Some(t) => duration("idle_ttl", t)?,
            None => DEFAULT_IDLE_TTL,
        };
        let max_age = flags.max_age.map(str::to_owned).or(file.cache_max_age);
        for (key, value) in [
            ("cache_max_age", &max_age),
            ("revocation_check", &file.revocation_check),
            ("rate_limit_wait", &file.rate_limit_wait),
            ("anchor_every", &file.anchor_every),
            ("kill_grace", &file.kill_grace),
            ("approval_wait", &file.approval_wait),
            ("proxy_hold", &file.proxy_hold),
            ("approval_hold", &file.approval_hold),
            ("run.timeout", &file.run.timeout),
        ] {
            if let Some(v) = value {
                let d = duration(key, v)?;
                match key {
                    "cache_max_age" => config.cache_max_age = d,
                    "revocation_check" => config.revocation_check = d,
                    "rate_limit_wait" => config.rate_limit_wait = d,
                    "anchor_every" => config.anchor_every = d,
                    "kill_grace" => config.kill_grace = d,
                    "approval_wait" => config.approval_wait = d,
                    "proxy_hold" => config.proxy_hold = d,
                    "approval_hold" => config.approval_hold = d,
                    _ => config.run_timeout = d,
                }
            }
        }
        if let Some(max) = file.run.max_output {
            config.run_max_output = max;
        }
        for (service, entry) in file.cache {
            let service = service_name(&service)?;
            match entry {
                CacheEntry::On(false) => {}
                CacheEntry::On(true) => {
                    config.cache.insert(service, idle_ttl);
                }
                CacheEntry::Ttl(t) => {
                    config.cache.insert(service, duration("cache", &t)?);
                }
            }
        }
        for flag in flags.cache {
            let (service, ttl) = match flag.split_once('=') {
                Some((s, t)) => (s, duration("--cache", t)?),
                None => (flag.as_str(), idle_ttl),
            };
            config.cache.insert(service_name(service)?, ttl);
        }
        Ok(config)
    }
}

fn service_name(s: &str) -> Result<ServiceName, DaemonError> {
    ServiceName::parse(s).map_err(|_| {
        DaemonError::usage(format!(
            "'{s}' is not a service name (lower-case letters, digits, '.', '_', '-')"
        ))
    })
}

/// `90s`, `15m`, `2h`, `500ms`, or a bare number of seconds.
pub fn duration(key: &str, s: &str) -> Result<Duration, DaemonError> {
    let s = s.trim();
    let bad = || {
        DaemonError::usage(format!(
            "{key}: '{s}' is not a duration; write e.g. 500ms, 30s, 5m or 2h"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(DaemonError::usage(format!(
            "{key}: the duration must not be zero"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_full_file_is_read_and_flags_override_it() {
        let f = write(
            "socket = \"/tmp/x.sock\"\nallow_uids = [1001]\nidle_ttl = \"10s\"\n\
             revocation_check = \"2s\"\nkill_grace = \"1s\"\ncache_max_age = \"3m\"\n\
             rate_limit_wait = \"7s\"\n\
             [cache]\nopenai = \"90s\"\ngithub = true\nslack = false\n\
             [run]\ntimeout = \"5m\"\nmax_output = 100\n",
        );
        let cache = ["anthropic=2s".to_owned()];
        let flags = CacheFlags {
            cache: &cache,
            ..Default::default()
        };
        let c = Config::load(Some(f.path()), flags).unwrap();
        assert_eq!(c.cache_max_age, Duration::from_secs(180));
        assert_eq!(c.rate_limit_wait, Duration::from_secs(7));
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(c.allow_uids, vec![1001]);
        assert_eq!(c.revocation_check, Duration::from_secs(2));
        assert_eq!(c.kill_grace, Duration::from_secs(1));
        assert_eq!(c.run_timeout, Duration::from_secs(300));
        assert_eq!(c.run_max_output, 100);
        let ttl = |s: &str| c.cache.get(&ServiceName::parse(s).unwrap()).copied();
        assert_eq!(ttl("openai"), Some(Duration::from_secs(90)));
        assert_eq!(ttl("github"), Some(Duration::from_secs(10)));
        assert_eq!(ttl("slack"), None);
        assert_eq!(ttl("anthropic"), Some(Duration::from_secs(2)));
    }

    #[test]
    fn nothing_is_cached_by_default() {
        let c = Config::load(None, CacheFlags::default()).unwrap();
        assert!(c.cache.is_empty());
        assert_eq!(c.cache_max_age, DEFAULT_CACHE_MAX_AGE);
        let cache = ["openai".to_owned()];
        let c = Config::load(
            None,
            CacheFlags {
                cache: &cache,
                idle_ttl: Some("2s"),
                max_age: Some("1m"),
            },
        )
        .unwrap();
        assert_eq!(c.cache_max_age, Duration::from_secs(60));
        assert_eq!(
            c.cache.get(&ServiceName::parse("openai").unwrap()),
            Some(&Duration::from_secs(2))
        );
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let f = write("idle_tll = \"10s\"\n");
        let e = Config::load(Some(f.path()), CacheFlags::default())
            .err()
            .unwrap();
        assert!(e.message.contains("idle_tll"), "{}", e.message);
        let flags = |c: &'static str| CacheFlags {
            cache: Box::leak(Box::new([c.to_owned()])),
            ..Default::default()
        };
        let e = Config::load(None, flags("openai=soon")).err().unwrap();
        assert!(e.message.contains("--cache"), "{}", e.message);
        let e = Config::load(None, flags("Open AI")).err().unwrap();
        assert!(e.message.contains("service name"), "{}", e.message);
        assert!(duration("x", "0s").is_err());
        assert_eq!(duration("x", "500ms").unwrap(), Duration::from_millis(500));
    }
}
