//! An https:// server with a private CA: `--ca` / `AGENTKEYS_CA` make the CLI trust it;
//! without them the CLI refuses the certificate.

use std::process::Command as StdCommand;

use super::common::*;

/// A CA and a leaf for 127.0.0.1 it signed, made with openssl in `dir`.
fn pki(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = StdCommand::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
          -subj '/CN=agentkeys test CA' -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
          -subj '/CN=127.0.0.1' -keyout tls.key -out tls.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext
        openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
          -extfile san.ext -out tls.crt 2>/dev/null
        chmod 600 tls.key",
    );
}

#[test]
fn the_cli_trusts_a_private_ca_given_by_flag_or_environment_and_nothing_else() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let file = |f: &str| certs.path().join(f).display().to_string();
    let server = bins().server(&[
        "--tls-cert",
        &file("tls.crt"),
        "--tls-key",
        &file("tls.key"),
    ]);
    let home = Home::at(&server, &server.url.replace("http://", "https://"));

    // Without the CA: the certificate is refused, and nothing is enrolled.
    home.cmd()
        .args(["init"])
        .env("AGENTKEYS_AUTH_TOKEN", "tls-master")
        .assert()
        .failure()
        .stderr(predicates::str::contains("--ca FILE"));

    // --ca: enrolled over TLS.
    home.cmd()
        .args(["--ca", &file("ca.crt"), "init"])
        .env("AGENTKEYS_AUTH_TOKEN", "tls-master")
        .assert()
        .success();
    // AGENTKEYS_CA: the next command, a store and a listing.
    home.cmd()
        .args(["store", "openai", "--no-bind"])
        .env("AGENTKEYS_CA", file("ca.crt"))
        .write_stdin("sk-over-tls")
        .assert()
        .success();
    home.cmd()
        .args(["list", "--json"])
        .env("AGENTKEYS_CA", file("ca.crt"))
        .assert()
        .success()
        .stdout(predicates::str::contains("openai"));
    // A CA file that is not one: named, with the flag.
    home.cmd()
        .args(["--ca", &file("tls.key"), "list"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("tls.key"));
}
