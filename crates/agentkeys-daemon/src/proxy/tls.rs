//! The TLS provider of both of the proxy's hops.

use std::sync::Arc;

/// The TLS provider of both of the proxy's hops: ring, with AES-128-GCM preferred (a TLS 1.3
/// mandatory suite, and the fastest with AES instructions: the proxy encrypts every byte
/// twice).
pub(super) fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}
