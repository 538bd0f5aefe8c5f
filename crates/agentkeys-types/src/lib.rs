//! Domain and wire types shared by every agentkeys component, and the error contract.
//!
//! A tour:
//! - [`error`]: the stable error codes (`BAD_REQUEST` … `INTERNAL`) and the JSON error body.
//! - [`names`]: validated names: [`Wallet`], [`ServiceName`], and the session token prefixes.
//! - [`scope`]: what a session may touch ([`Scope`]).
//! - [`binding`]: where a credential may be sent and how the egress proxy injects it.
//! - [`api`]: the HTTP API v1 request and response bodies (docs/api.md).
//!
//! This crate does no I/O. Types that carry a secret (a session token) do not derive
//! `Debug` or `Serialize`; see [`api::SessionGrant`].

#![forbid(unsafe_code)]

pub mod api;
pub mod binding;
pub mod error;
pub mod names;
pub mod scope;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use names::{NameError, ServiceName, Wallet};
pub use scope::Scope;

/// The HTTP API version prefix every route lives under.
pub const API_PREFIX: &str = "/v1";

/// Seconds since the Unix epoch, the one timestamp format on the wire.
pub type UnixSeconds = i64;
