//! The run's certificate authority: generated per run, its private key only ever in a
//! secret page (and, while it signs, in this process's heap, which the allocator wipes on
//! free), never written anywhere. Its certificate carries X.509 name constraints permitting
//! only the run's bound hosts and no IP address, so even a stolen CA key cannot make a
//! certificate the child accepts for any other site.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentkeys_secmem::SecretPage;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long the run's certificates are valid (a run outliving this needs a new run).
const VALIDITY_DAYS: i64 = 7;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("proxy certificate: {0}")]
pub struct CaError(String);

fn err(e: impl std::fmt::Display) -> CaError {
    CaError(e.to_string())
}

/// The run's CA and the leaf certificates minted from it, one per host.
pub struct RunCa {
    /// The CA certificate (PEM), for the child's CA bundle.
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
    params: CertificateParams,
    /// PKCS#8 of the CA key; `None` once nothing more can be minted (no wildcard host).
    key: Mutex<Option<SecretPage>>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

/// The permitted subtree for a host pattern: the name itself (and, per RFC 5280, names
/// under it), or for `*.domain` only names under `domain` (a leading dot).
fn subtree(pattern: &str) -> GeneralSubtree {
    match pattern.strip_prefix("*.") {
        Some(domain) => GeneralSubtree::DnsName(format!(".{domain}")),
        None => GeneralSubtree::DnsName(pattern.to_owned()),
    }
}

/// The run CA's certificate parameters: a CA that may sign leaves only (path length 0),
/// for names under `hosts` only and for no IP address.
pub fn constrained_ca_params(hosts: &[String]) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "agentkeys run proxy CA (this run only)");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts.iter().map(|h| subtree(h)).collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    validity(&mut params);
    Ok(params)
}

impl RunCa {
    /// A new CA constrained to `hosts` (binding host patterns). Leaves for the exact hosts
    /// are minted now; the key is kept (in a secret page) only if a wildcard needs leaves
    /// minted later, per name.
    pub fn new(hosts: &[String]) -> Result<RunCa, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let params = constrained_ca_params(hosts)?;
        let cert = params.self_signed(&key).map_err(err)?;
        let pkcs8 = SecretPage::from_slice(&key.serialize_der()).map_err(err)?;
        drop(key);
        let ca = RunCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key: Mutex::new(Some(pkcs8)),
            leaves: Mutex::new(HashMap::new()),
        };
        for host in hosts.iter().filter(|h| !h.starts_with("*.")) {
            ca.server_config(host)?;
        }
        if !hosts.iter().any(|h| h.starts_with("*.")) {
            // Nothing more to mint: the key goes now, long before the run ends.
            ca.key.lock().map_err(err)?.take();
        }
        Ok(ca)
    }

    /// Whether the CA key is still held (only for wildcard bindings).
    pub fn holds_key(&self) -> bool {
        self.key.lock().map(|k| k.is_some()).unwrap_or(false)
    }

    /// The TLS server configuration presenting a leaf for `host` (minted on first use).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(c) = self.leaves.lock().map_err(err)?.get(host) {
            return Ok(c.clone());
        }
        let key_guard = self.key.lock().map_err(err)?;
        let Some(ca_key) = key_guard.as_ref() else {
            return Err(CaError(format!("no certificate for {host} in this run")));
        };
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(ca_key.expose_secret()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(err)?;
        let issuer = Issuer::from_params(&self.params, &ca_key);
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        leaf.subject_alt_names = vec![SanType::DnsName(host.try_into().map_err(err)?)];
        leaf.distinguished_name.push(DnType::CommonName, host);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        validity(&mut leaf);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
        drop(issuer);
        drop(ca_key);
        drop(key_guard);
        let chain = vec![leaf_cert.der().clone(), self.cert_der.clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(super::tls::tls_provider())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(err)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        let config = Arc::new(config);
        self.leaves
            .lock()
            .map_err(err)?
            .insert(host.to_owned(), config.clone());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_hosts_are_minted_at_once_and_the_key_dropped() {
        let ca = RunCa::new(&["api.example.com".into()]).unwrap();
        assert!(!ca.holds_key());
        assert!(ca.server_config("api.example.com").is_ok());
        assert!(ca.server_config("other.example.com").is_err());
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn a_wildcard_keeps_the_key_and_mints_per_name() {
        let ca = RunCa::new(&["*.example.com".into()]).unwrap();
        assert!(ca.holds_key());
        let a = ca.server_config("a.example.com").unwrap();
        let again = ca.server_config("a.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &again), "leaves are cached");
    }
}
