//! The flags of the credential commands (`store`, `bind`, `read`, `list`, `policy`); their
//! help text and examples are on their `crate::cli::Command` variants.
//!
//! No struct here has a doc comment: clap would take it for the subcommand's about (see
//! `crate::cli::Command`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::ArgGroup;

// The flags of `agentkeys store`. No `Debug`: a value typed on the command line by mistake
// (`stray`) would print through it.
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store it for this agent (wallet, alias or e-mail) instead of yourself.
    #[arg(long, value_name = "AGENT")]
    pub(super) agent: Option<String>,
    /// The credential's name, e.g. openai.
    pub(super) service: String,
    /// Every read needs your approval ('agentkeys approve').
    #[arg(long)]
    pub(super) high_value: bool,
    /// Read the value from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "from_file")]
    pub(super) from_env: Option<String>,
    /// Read the value from this file ('-' for stdin), byte for byte.
    #[arg(long, value_name = "PATH")]
    pub(super) from_file: Option<PathBuf>,
    /// Do not bind a well-known service to its hosts.
    #[arg(long, conflicts_with = "host")]
    pub(super) no_bind: bool,
    /// Where the egress proxy may send it (see 'agentkeys bind --help').
    #[command(flatten)]
    pub(super) binding: BindingFlags,
    /// Catches a value typed on the command line, so it can be refused without echoing it.
    #[arg(hide = true, num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub(super) stray: Vec<OsString>,
}

// Where a credential may be sent and how it is injected (`store` and `bind`).
#[allow(missing_docs)]
#[derive(clap::Args, Default)]
pub struct BindingFlags {
    /// A host it may be sent to: a name, or '*.domain' for any name under domain.
    /// Repeat for more.
    #[arg(long, value_name = "HOST")]
    pub(super) host: Vec<String>,
    /// How it is injected: bearer, header:NAME (or header:NAME:PREFIX), basic-user,
    /// basic-password, substitute:HEADER[,HEADER…] (default: substitute, naming no header).
    #[arg(long, value_name = "HOW", requires = "host")]
    pub(super) inject: Option<String>,
    /// Only with this HTTP method. Repeat for more; default: any.
    #[arg(long, value_name = "METHOD", requires = "host")]
    pub(super) method: Vec<String>,
    /// Only under this path prefix. Repeat for more; default: any path.
    #[arg(long, value_name = "PREFIX", requires = "host")]
    pub(super) path: Vec<String>,
    /// With --inject substitute: also replace the placeholder in the query string.
    #[arg(long, requires = "host")]
    pub(super) substitute_query: bool,
    /// With --inject substitute: the placeholder may be the whole value of this request body
    /// field: a JSON pointer (/auth/api_key) or form:NAME. Repeat for more.
    #[arg(long, value_name = "FIELD", requires = "host")]
    pub(super) body_field: Vec<String>,
    /// With --body-field: runs using the credential still tunnel hosts none of their
    /// credentials is bound to (default: refused).
    #[arg(long, requires = "body_field")]
    pub(super) tunnel_unbound: bool,
    /// Retired (the placeholder anywhere in the body); refused with what replaces it.
    #[arg(long, hide = true)]
    pub(super) substitute_body: bool,
    /// Also inject over plain http:// (default: TLS only).
    #[arg(long, requires = "host")]
    pub(super) allow_http: bool,
    /// The hosts may resolve to loopback or private addresses (default: refused).
    #[arg(long, requires = "host")]
    pub(super) allow_private: bool,
}

// The flags of `agentkeys bind`.
#[allow(missing_docs)]
#[derive(clap::Args)]
#[command(group(ArgGroup::new("change").args(["host", "remove", "well_known"])))]
pub struct BindArgs {
    /// The credential's owner (wallet, alias or e-mail); default: yourself.
    #[arg(long, value_name = "AGENT")]
    pub(super) agent: Option<String>,
    /// The credential's name.
    pub(super) service: String,
    /// Remove the binding: the proxy will not inject it anywhere.
    #[arg(long)]
    pub(super) remove: bool,
    /// Bind it to the built-in hosts of a well-known service of the same name.
    #[arg(long)]
    pub(super) well_known: bool,
    /// The binding to set.
    #[command(flatten)]
    pub(super) binding: BindingFlags,
}

// The flags of `agentkeys read`.
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ReadArgs {
    /// Read this agent's credential (wallet, alias or e-mail).
    #[arg(long, value_name = "AGENT")]
    pub(super) agent: Option<String>,
    /// The credential's name.
    pub(super) service: String,
    /// Wait for a pending approval, up to SECS seconds (default 300).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
    pub(super) wait: Option<u64>,
}

// The flags of `agentkeys list`.
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct ListArgs {
    /// This agent's credentials (wallet, alias or e-mail).
    #[arg(long, value_name = "AGENT")]
    pub(super) agent: Option<String>,
}

// The flags of `agentkeys policy`: exactly one of --high-value and --normal.
#[allow(missing_docs)]
#[derive(clap::Args)]
#[command(group(ArgGroup::new("level").required(true).args(["high_value", "normal"])))]
pub struct PolicyArgs {
    /// The credential's owner (wallet, alias or e-mail); default: yourself.
    #[arg(long, value_name = "AGENT")]
    pub(super) agent: Option<String>,
    /// The credential's name.
    pub(super) service: String,
    /// Every release needs 'agentkeys approve'.
    #[arg(long)]
    pub(super) high_value: bool,
    /// With --high-value: releases are approved only with a passkey, on the page.
    #[arg(long, requires = "high_value")]
    pub(super) require_passkey: bool,
    /// Releases need no approval.
    #[arg(long)]
    pub(super) normal: bool,
}
