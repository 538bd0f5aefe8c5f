//! What a run's child (or an agent of `agentkeys proxy-env`) gets to use the proxy: the
//! proxy and CA variables, and the CA bundle file (the system roots and the run's CA).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The variables that send a child's HTTP(S) through the proxy at `proxy_url` and make it
/// trust the CA bundle at `bundle`, as `NAME=value`; the proxy URL comes first.
pub(super) fn vars(proxy_url: &str, bundle: &Path) -> Vec<String> {
    let ca_path = bundle.display().to_string();
    let mut env = Vec::new();
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        env.push(format!("{name}={proxy_url}"));
    }
    // Node ≥ 22.21 and 24 honour HTTPS_PROXY in their global fetch only when told to (Node
    // 20 ignores both).
    env.push("NODE_USE_ENV_PROXY=1".to_owned());
    for name in ["NO_PROXY", "no_proxy"] {
        env.push(format!("{name}=localhost,127.0.0.1,::1"));
    }
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
    ] {
        env.push(format!("{name}={ca_path}"));
    }
    env
}

/// The system's CA bundle, for the child's bundle next to the run's CA.
fn system_roots_pem() -> String {
    let candidates = [
        std::env::var("SSL_CERT_FILE").ok(),
        Some("/etc/ssl/certs/ca-certificates.crt".into()),
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),
        Some("/etc/ssl/cert.pem".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// The child's CA bundle: the system roots and the run's CA, in a new file readable by
/// the child whatever its uid (the certificates are public; the file is removed when the
/// run ends).
pub(super) fn write_bundle(run: &str, ca_pem: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("agentkeys-proxy-{run}.pem"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)?;
    // The mode given at creation passes through the umask (the shipped unit's 0077 made it
    // 0600, unreadable by an agent of another uid); set it on the open file.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let mut text = system_roots_pem();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ca_pem);
    f.write_all(text.as_bytes())?;
    Ok(path)
}
