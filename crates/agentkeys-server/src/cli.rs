//! Command-line flags of `agentkeys-server`, and their validation into a [`Plan`] before
//! any I/O (two-stage parsing: raw flags → validated plan).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The agentkeys backend: accounts, sessions, encrypted credentials, approvals, audit.
#[derive(Parser)]
#[command(
    name = "agentkeys-server",
    version,
    after_help = "Examples:\n  agentkeys-server --dev\n  agentkeys-server --data-dir /var/lib/agentkeys --listen 0.0.0.0:8090 --auth tokens /etc/agentkeys/enrol.txt\n  agentkeys-server --listen 0.0.0.0:8443 --tls-cert /etc/agentkeys/tls.crt --tls-key /etc/agentkeys/tls.key --auth tokens /etc/agentkeys/enrol.txt\n  AGENTKEYS_DATABASE_URL=postgres://agentkeys@db.internal/agentkeys agentkeys-server --auth tokens /etc/agentkeys/enrol.txt\n\nLogs go to stderr; set RUST_LOG=debug for more."
)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    /// A maintenance command instead of serving
    #[command(subcommand)]
    pub(crate) command: Option<Tool>,
    /// Where the SQLite file and the 0600 key file live [default: $XDG_DATA_HOME/agentkeys-server]
    #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The database: `sqlite:PATH`, or `postgres://USER@HOST/DB` for N replicas sharing one
    /// PostgreSQL (each also needs the same keys: AGENTKEYS_SERVER_KEYS, docs/operations.md)
    /// [default: sqlite:DATA_DIR/agentkeys.db]
    #[arg(
        long,
        env = "AGENTKEYS_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) database: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); SIGHUP reloads both
    #[arg(
        long,
        env = "AGENTKEYS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (keep it 0600)
    #[arg(
        long,
        env = "AGENTKEYS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve GET /metrics on this address only (e.g. 127.0.0.1:9090), not on the API
    /// listener
    #[arg(long, env = "AGENTKEYS_METRICS_LISTEN", value_name = "ADDR")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8090", env = "AGENTKEYS_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Enrolment check for new master sessions, required outside --dev: `tokens FILE` (one
    /// token, or `sha256:HEX`, per line), or `dev` (any non-empty token enrols: an enrolment
    /// token is then a master's only secret)
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"])]
    pub(crate) auth: Vec<String>,
    /// Development mode: a throwaway data dir, `--auth dev`, loopback only, and an `export`
    /// line to paste
    #[arg(long)]
    pub(crate) dev: bool,
    /// Enrolments (POST /v1/sessions) allowed per second per client address; the whole
    /// server allows ten times as many
    #[arg(long, default_value_t = 1.0, value_name = "PER_SEC")]
    pub(crate) enrol_rate: f64,
    /// Master session lifetime (e.g. 30d, 12h, 3600s)
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub(crate) master_ttl: i64,
    /// Agent session lifetime
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub(crate) agent_ttl: i64,
    /// Credential reads per second allowed per session (0 = unlimited)
    #[arg(long, default_value_t = 50.0)]
    pub(crate) read_rate: f64,
    /// Burst of reads allowed per session before the rate applies
    #[arg(long, default_value_t = 100.0)]
    pub(crate) read_burst: f64,
    /// Log lines as text, or as one JSON object per line (for log shippers)
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "AGENTKEYS_LOG_FORMAT",
        global = true
    )]
    pub(crate) log_format: LogFormat,
    /// How long a pair or recover code stays valid (decision 71: 60 s)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) pair_ttl: i64,
    /// The origin browsers reach this server at (https://keys.example.com): the approval
    /// and passkey pages are served, and passkeys bound, for its host [default on loopback:
    /// http://localhost:PORT; elsewhere: no pages, no passkeys]
    #[arg(long, env = "AGENTKEYS_PUBLIC_URL", value_name = "URL", value_parser = parse_public_url)]
    pub(crate) public_url: Option<String>,
}

/// `--public-url`: an http(s) origin without path, query or trailing slash; plain http
/// only for localhost (browsers refuse passkeys elsewhere without TLS).
pub(crate) fn parse_public_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or("the public URL starts with https:// (or http:// for localhost)")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("the public URL is an origin: scheme, host and port only".into());
    }
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    if s.starts_with("http://") && host != "localhost" {
        return Err(
            "plain http:// is for localhost only: browsers allow passkeys on https origins".into(),
        );
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Err(
            "passkeys need a host name, not an IP address (use localhost on loopback)".into(),
        );
    }
    Ok(s.to_owned())
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Maintenance commands: each runs, prints what it did, and exits. No `Debug`: a database
/// URL can carry a password (STYLE habit 3).
#[derive(clap::Subcommand)]
pub(crate) enum Tool {
    /// Copy a single-node SQLite deployment into an empty PostgreSQL database, the audit
    /// chain with it, and verify the copy's chain
    #[command(
        after_help = "Example:\n  agentkeys-server migrate --from sqlite:/var/lib/agentkeys/agentkeys.db --to postgres://agentkeys@db.internal/agentkeys\n\nStop the SQLite server first (rows written meanwhile would not be copied). The replicas\nthen need the same keys as the single node: AGENTKEYS_SERVER_KEYS=\"$(base64 -w0 server.key)\"."
    )]
    Migrate {
        /// The SQLite database: sqlite:PATH
        #[arg(long, value_name = "URL")]
        from: String,
        /// The PostgreSQL database, empty (its schema is created): postgres://USER@HOST/DB
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// An online, consistent copy of the SQLite database (the server may keep serving);
    /// the copy is written 0600 and its audit chain verified
    #[command(
        after_help = "Example:\n  agentkeys-server backup --database sqlite:/var/lib/agentkeys/agentkeys.db --to /backups/agentkeys-$(date +%F).db\n\nThe keys are not in the database: back up server.key (or AGENTKEYS_SERVER_KEYS) separately.\nOn PostgreSQL use pg_dump -Fc or pg_basebackup (docs/operations.md)."
    )]
    Backup {
        /// The database to copy [default: sqlite:DATA_DIR/agentkeys.db]
        #[arg(
            long,
            env = "AGENTKEYS_DATABASE_URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        database: Option<String>,
        /// Where the SQLite data dir is, when --database is not given
        #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The file to write (must not exist)
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Rotate the key-encryption key online: make a key set with a new KEK, re-wrap every
    /// record's data key under it while the servers serve, then retire the old KEK
    #[command(
        subcommand,
        after_help = "Steps (docs/operations.md, \"Rotating the KEK\"):\n  agentkeys-server rotate-kek new-key --keys /var/lib/agentkeys/server.key --out /secure/server.key.next\n  # give every replica the new key set (server.key or AGENTKEYS_SERVER_KEYS), restart them one by one\n  agentkeys-server rotate-kek rewrap --database URL --keys /secure/server.key.next\n  agentkeys-server rotate-kek retire --database URL --keys /secure/server.key.next --out /secure/server.key.final"
    )]
    RotateKek(RotateStep),
    /// Print the OpenAPI 3.1 document the server serves at /v1/openapi.json
    Openapi,
    /// Recompute a database's whole audit chain and report the first broken link
    #[command(
        after_help = "Example:\n  agentkeys-server verify --database postgres://agentkeys@db.internal/agentkeys --json"
    )]
    Verify {
        /// The database [default: sqlite:DATA_DIR/agentkeys.db]
        #[arg(
            long,
            env = "AGENTKEYS_DATABASE_URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        database: Option<String>,
        /// Where the SQLite data dir is, when --database is not given
        #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

/// The steps of a KEK rotation (no `Debug`, as [`Tool`]).
#[derive(clap::Subcommand)]
pub(crate) enum RotateStep {
    /// Write a key set holding a new, current KEK and the old ones (the other keys kept)
    NewKey {
        /// The key set in use [default: AGENTKEYS_SERVER_KEYS, else DATA_DIR/server.key]
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Where the data dir is, when neither --keys nor AGENTKEYS_SERVER_KEYS is given
        #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The new key file to write (0600; must not exist)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Re-wrap every record's data key under the current KEK, while the servers serve
    /// (they must all hold the new key set first)
    Rewrap {
        /// The database [default: sqlite:DATA_DIR/agentkeys.db]
        #[arg(
            long,
            env = "AGENTKEYS_DATABASE_URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        database: Option<String>,
        /// The new key set [default: AGENTKEYS_SERVER_KEYS, else DATA_DIR/server.key]
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Where the data dir is, for the defaults above
        #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Write the key set without the KEKs no record uses any more
    Retire {
        /// The database whose records are checked [default: sqlite:DATA_DIR/agentkeys.db]
        #[arg(
            long,
            env = "AGENTKEYS_DATABASE_URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        database: Option<String>,
        /// The key set [default: AGENTKEYS_SERVER_KEYS, else DATA_DIR/server.key]
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Where the data dir is, for the defaults above
        #[arg(long, env = "AGENTKEYS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The new key file to write (0600; must not exist)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Parses `90`, `90s`, `15m`, `12h`, `30d` into seconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30d, 12h, 15m or 90s"))?;
    if n <= 0 {
        return Err("a duration must be positive".to_owned());
    }
    n.checked_mul(mult)
        .ok_or_else(|| "duration too large".to_owned())
}

/// How the enrolment credential is checked.
#[derive(Debug)]
pub(crate) enum AuthPlan {
    Dev,
    Tokens(PathBuf),
}

/// The validated plan. Its `Debug` leaves the database URL out: it can carry a password.
pub(crate) struct Plan {
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) tls: Option<agentkeys_server::tls::TlsFiles>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) database: Option<String>,
    pub(crate) listen: SocketAddr,
    pub(crate) auth: AuthPlan,
    pub(crate) dev: bool,
    pub(crate) config: agentkeys_server::Config,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_ref().map(|_| "[REDACTED]"))
            .field("tls", &self.tls)
            .field("metrics_listen", &self.metrics_listen)
            .field("auth", &self.auth)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl Args {
    pub(crate) fn plan(self) -> Result<Plan, String> {
        let auth = match self.auth.as_slice() {
            [] if self.dev => AuthPlan::Dev,
            [] => {
                return Err(
                    "--auth is required: '--auth tokens FILE' (enrolment tokens you \
                            hand out), or --dev for a throwaway loopback server"
                        .into(),
                );
            }
            [m] if m == "dev" => AuthPlan::Dev,
            [m, f] if m == "tokens" => AuthPlan::Tokens(PathBuf::from(f)),
            [m] if m == "tokens" => {
                return Err("--auth tokens needs a FILE: --auth tokens /path/to/tokens.txt".into());
            }
            _ => return Err("--auth is 'dev' or 'tokens FILE'".into()),
        };
        if self.dev && matches!(auth, AuthPlan::Tokens(_)) {
            return Err("--dev always uses --auth dev; drop one of them".into());
        }
        if self.dev && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--dev serves loopback only (any token enrols); {} is not a loopback address",
                self.listen.ip()
            ));
        }
        if self.enrol_rate.is_nan() || self.enrol_rate <= 0.0 {
            return Err("--enrol-rate must be above 0".into());
        }
        if self.dev && self.data_dir.is_some() {
            return Err(
                "--dev uses a throwaway data dir; drop --data-dir, or drop --dev to keep data"
                    .into(),
            );
        }
        if let Some(url) = &self.database {
            let known = ["postgres://", "postgresql://", "sqlite:"];
            if !known.iter().any(|k| url.starts_with(k)) {
                return Err(
                    "--database is sqlite:PATH or postgres://USER@HOST/DB (a URL, not a path)"
                        .into(),
                );
            }
            if self.dev {
                return Err(
                    "--dev uses a throwaway SQLite file; drop --database, or drop --dev".into(),
                );
            }
        }
        if !(self.read_rate >= 0.0 && self.read_burst >= 1.0) {
            return Err("--read-rate must be >= 0 and --read-burst >= 1".into());
        }
        let config = agentkeys_server::Config {
            master_ttl: self.master_ttl,
            agent_ttl: self.agent_ttl,
            read_rate: self.read_rate,
            read_burst: self.read_burst,
            pair_ttl: self.pair_ttl,
            enrol_rate: self.enrol_rate,
            metrics_on_api: self.metrics_listen.is_none(),
            public_url: self.public_url,
            ..Default::default()
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(agentkeys_server::tls::TlsFiles { cert, key }),
            _ => None,
        };
        Ok(Plan {
            metrics_listen: self.metrics_listen,
            tls,
            data_dir: self.data_dir,
            database: self.database,
            listen: self.listen,
            auth,
            dev: self.dev,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn auth_is_required_outside_dev_and_dev_is_loopback_only() {
        let missing = Args::parse_from(["s"]).plan().unwrap_err();
        assert!(missing.contains("--auth is required"), "{missing}");
        let p = Args::parse_from(["s", "--dev"]).plan().unwrap();
        assert!(matches!(p.auth, AuthPlan::Dev));
        let p = Args::parse_from(["s", "--auth", "dev"]).plan().unwrap();
        assert!(
            matches!(p.auth, AuthPlan::Dev),
            "dev auth, asked for by name"
        );
        let wide = Args::parse_from(["s", "--dev", "--listen", "0.0.0.0:8090"])
            .plan()
            .unwrap_err();
        assert!(wide.contains("loopback only"), "{wide}");
        assert!(
            Args::parse_from(["s", "--dev", "--listen", "[::1]:0"])
                .plan()
                .is_ok()
        );
    }

    #[test]
    fn auth_flags_are_validated_before_any_io() {
        let p = Args::parse_from(["s", "--auth", "tokens", "/x"])
            .plan()
            .unwrap();
        assert!(matches!(p.auth, AuthPlan::Tokens(_)));
        assert!(Args::parse_from(["s", "--auth", "tokens"]).plan().is_err());
        assert!(Args::parse_from(["s", "--auth", "open"]).plan().is_err());
        assert!(
            Args::parse_from(["s", "--dev", "--data-dir", "/x"])
                .plan()
                .is_err()
        );
    }
}
