//! agentkeys core: the crypto every component shares and the backend client.
//!
//! A tour:
//! - [`crypto`]: HPKE seal/open straight into a `SecretPage`, envelope encryption at rest,
//!   pair codes and OTPs, Ed25519 signatures. No home-made primitives.
//! - [`client`]: the [`client::Backend`] trait covering the HTTP API v1, and
//!   [`client::HttpBackend`], its reqwest implementation. Reads return a `SecretPage`.
//! - [`session_store`]: a session at rest (decision 79): sealed file, data key in
//!   the kernel keyring or a 0600 key file. Shared by the CLI and the daemon.
//! - [`hex`]: lower-case hex, the one helper every crate uses.
//! - [`json`]: sizing JSON before writing it into a buffer that will hold a secret.
//! - [`error`]: [`ClientError`], mapped onto the error contract's codes.
//! - [`paths`]: where local state lives (the home, the socket), the same for the CLI and
//!   the daemon.

#![forbid(unsafe_code)]

pub mod client;
pub mod crypto;
pub mod error;
pub mod json;
pub mod paths;
pub mod session_store;

pub use client::{Backend, HttpBackend, ReadCredential};
pub use crypto::hex;
pub use error::ClientError;
