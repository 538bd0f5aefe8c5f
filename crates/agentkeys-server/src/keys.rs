//! The server's key material: the key-encryption key (KEK), the X25519 shielding key and
//! the Ed25519 signing key. Generated on first start into a 0600 key file under the data
//! directory, or taken from `AGENTKEYS_SERVER_KEYS` (base64 of the same 100 bytes).
//!
//! File format: `AKK1` magic, then KEK (32) ‖ shielding private key (32) ‖ signing seed
//! (32). Binary rather than JSON so the keys are read straight into secret buffers.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use agentkeys_core::crypto::envelope::Kek;
use agentkeys_core::crypto::hpke::HpkeKeyPair;
use agentkeys_core::crypto::sign::SigningKeyPair;
use agentkeys_secmem::SecretBytes;
use base64::Engine as _;

const MAGIC: &[u8; 4] = b"AKK1";
const FILE_LEN: usize = 4 + 96;
/// The environment variable that can carry the keys instead of the file.
pub const KEYS_ENV: &str = "AGENTKEYS_SERVER_KEYS";

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file or variable is not in the expected format.
    #[error("{0} is not an agentkeys key set (expected {FILE_LEN} bytes starting with AKK1)")]
    Format(String),
    /// The key file is readable by others.
    #[error("key file {0} is readable by group or others; run: chmod 600 {0}")]
    Permissions(String),
    /// No secret page could hold the keys (`RLIMIT_MEMLOCK`).
    #[error("cannot hold the keys in secret memory: {0}")]
    Memory(String),
}

/// The server's keys, held in secret memory.
pub struct ServerKeys {
    /// Wraps per-record data keys.
    pub kek: Kek,
    /// Opens values clients sealed to the server.
    pub shielding: HpkeKeyPair,
    /// Signs auth-request decisions.
    pub signing: SigningKeyPair,
    /// Where the keys came from, for the start-up log.
    pub source: String,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// Fresh random keys, each in a secret page.
    pub fn generate() -> Result<Self, KeyError> {
        let memory = |e| KeyError::Memory(format!("{e}"));
        Ok(ServerKeys {
            kek: Kek::generate().map_err(memory)?,
            shielding: HpkeKeyPair::generate().map_err(memory)?,
            signing: SigningKeyPair::generate().map_err(memory)?,
            source: "generated".to_owned(),
        })
    }

    fn from_bytes(b: &[u8], source: String) -> Result<Self, KeyError> {
        if b.len() != FILE_LEN || &b[..4] != MAGIC {
            return Err(KeyError::Format(source));
        }
        let bad = |_| KeyError::Format(source.clone());
        Ok(ServerKeys {
            kek: Kek::from_bytes(&b[4..36]).map_err(bad)?,
            shielding: HpkeKeyPair::from_private_bytes(&b[36..68]).map_err(bad)?,
            signing: SigningKeyPair::from_seed(&b[68..100]).map_err(bad)?,
            source,
        })
    }

    fn to_bytes(&self) -> SecretBytes {
        let mut out = SecretBytes::new(FILE_LEN);
        let buf = out.expose_secret_mut();
        buf[..4].copy_from_slice(MAGIC);
        buf[4..36].copy_from_slice(self.kek.expose_secret());
        buf[36..68].copy_from_slice(self.shielding.private_bytes().expose_secret());
        buf[68..100].copy_from_slice(self.signing.seed().expose_secret());
        out
    }

    /// The keys from the value of `AGENTKEYS_SERVER_KEYS` (base64 of the key file), which
    /// `main` takes out of the environment (and wipes there) before any thread starts.
    pub fn from_env_value(raw: &[u8]) -> Result<Self, KeyError> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw.trim_ascii())
            .map_err(|_| KeyError::Format(KEYS_ENV.to_owned()))?;
        let decoded = zeroize::Zeroizing::new(decoded);
        Self::from_bytes(&decoded, KEYS_ENV.to_owned())
    }

    /// The keys from `<data_dir>/server.key`, generating that file (0600) on first start.
    /// Every key is held in a secret page (`memfd_secret` where the kernel has it).
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join("server.key");
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match fs::File::open(&path) {
            Ok(mut f) => {
                let mode = f.metadata().map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions(path.display().to_string()));
                }
                let mut buf = SecretBytes::new(FILE_LEN);
                f.read_exact(buf.expose_secret_mut())
                    .map_err(|_| KeyError::Format(path.display().to_string()))?;
                let mut extra = [0u8; 1];
                if f.read(&mut extra).map_err(io)? != 0 {
                    return Err(KeyError::Format(path.display().to_string()));
                }
                Self::from_bytes(buf.expose_secret(), path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut keys = Self::generate()?;
                keys.source = format!("{} (created)", path.display());
                let tmp = data_dir.join("server.key.tmp");
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(keys.to_bytes().expose_secret()).map_err(io)?;
                f.sync_all().map_err(io)?;
                fs::rename(&tmp, &path).map_err(io)?;
                fs::File::open(data_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
                Ok(keys)
            }
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_with_mode_0600_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerKeys::load_or_create(dir.path()).unwrap();
        let meta = fs::metadata(dir.path().join("server.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = ServerKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(a.shielding.public_key(), b.shielding.public_key());
        assert_eq!(a.signing.public_key(), b.signing.public_key());
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.kek.expose_secret())));
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ServerKeys::load_or_create(dir.path()).unwrap();
        let p = dir.path().join("server.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ServerKeys::load_or_create(dir.path()),
            Err(KeyError::Permissions(_))
        ));
    }

    #[test]
    fn a_truncated_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .unwrap()
            .write_all(b"AKK1abc")
            .unwrap();
        assert!(matches!(
            ServerKeys::load_or_create(dir.path()),
            Err(KeyError::Format(_))
        ));
    }
}
