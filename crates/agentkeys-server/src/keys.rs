//! The server's key material: the key-encryption key (KEK), the X25519 shielding key and
//! the Ed25519 signing key. Generated on first start into a 0600 key file under the data
//! directory, or taken from `AGENTKEYS_SERVER_KEYS` (base64 of the same 100 bytes).
//!
//! File formats, binary rather than JSON so the keys are read straight into secret buffers:
//! - `AKK1` ‖ KEK (32) ‖ shielding private key (32) ‖ signing seed (32): one KEK, id 1;
//! - `AKK2` ‖ shielding (32) ‖ signing (32) ‖ n (1 byte) ‖ n × (KEK id, u32 big-endian ‖
//!   KEK (32)): several KEKs during a rotation, the first the current one
//!   (`agentkeys-server rotate-kek`, docs/operations.md).

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
const MAGIC_V2: &[u8; 4] = b"AKK2";
const FILE_LEN: usize = 4 + 96;
/// KEKs one key set may hold (a rotation in progress holds two).
const MAX_KEKS: usize = 8;
const V2_HEAD: usize = 4 + 64 + 1;
const V2_ENTRY: usize = 4 + 32;
const MAX_FILE_LEN: usize = V2_HEAD + MAX_KEKS * V2_ENTRY;
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
    #[error("{0} is not an agentkeys key set (AKK1 or AKK2)")]
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
    /// The key-encryption keys that wrap per-record data keys, by id; the first is the
    /// current one (new records are wrapped under it), the others still open older ones.
    keks: Vec<(u32, Kek)>,
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
            keks: vec![(1, Kek::generate().map_err(memory)?)],
            shielding: HpkeKeyPair::generate().map_err(memory)?,
            signing: SigningKeyPair::generate().map_err(memory)?,
            source: "generated".to_owned(),
        })
    }

    /// The current KEK and its id: new records are wrapped under it.
    pub fn kek(&self) -> (u32, &Kek) {
        let (id, kek) = &self.keks[0];
        (*id, kek)
    }

    /// The KEK with this id, if this key set holds it.
    pub fn kek_by_id(&self, id: u32) -> Option<&Kek> {
        self.keks.iter().find(|(i, _)| *i == id).map(|(_, k)| k)
    }

    /// The ids of the KEKs held, the current one first.
    pub fn kek_ids(&self) -> Vec<u32> {
        self.keks.iter().map(|(i, _)| *i).collect()
    }

    /// The same keys with a new random KEK made current (the old ones kept to open
    /// records not re-wrapped yet): the first step of a rotation.
    pub fn with_new_kek(&self) -> Result<Self, KeyError> {
        if self.keks.len() >= MAX_KEKS {
            return Err(KeyError::Format(format!(
                "{}: already {MAX_KEKS} KEKs; retire unused ones first",
                self.source
            )));
        }
        let next = self.keks.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
        let memory = |e| KeyError::Memory(format!("{e}"));
        let mut keks = vec![(next, Kek::generate().map_err(memory)?)];
        keks.extend(self.copy_keks(|_| true)?);
        self.with_keks(keks)
    }

    /// The same keys without the KEKs `keep` refuses (never the current one): the last
    /// step of a rotation, once no record is wrapped under them.
    pub fn retiring(&self, keep: impl Fn(u32) -> bool) -> Result<Self, KeyError> {
        let current = self.keks[0].0;
        let keks = self.copy_keks(|id| id == current || keep(id))?;
        self.with_keks(keks)
    }

    fn copy_keks(&self, keep: impl Fn(u32) -> bool) -> Result<Vec<(u32, Kek)>, KeyError> {
        let memory = |e| KeyError::Memory(format!("{e}"));
        self.keks
            .iter()
            .filter(|(id, _)| keep(*id))
            .map(|(id, k)| Ok((*id, Kek::from_bytes(k.expose_secret()).map_err(memory)?)))
            .collect()
    }

    fn with_keks(&self, keks: Vec<(u32, Kek)>) -> Result<Self, KeyError> {
        let memory = |e| KeyError::Memory(format!("{e}"));
        Ok(ServerKeys {
            keks,
            shielding: HpkeKeyPair::from_private_bytes(
                self.shielding.private_bytes().expose_secret(),
            )
            .map_err(memory)?,
            signing: SigningKeyPair::from_seed(self.signing.seed().expose_secret())
                .map_err(memory)?,
            source: "rotated".to_owned(),
        })
    }

    fn from_bytes(b: &[u8], source: String) -> Result<Self, KeyError> {
        let bad = |_| KeyError::Format(source.clone());
        if b.len() == FILE_LEN && &b[..4] == MAGIC {
            return Ok(ServerKeys {
                keks: vec![(1, Kek::from_bytes(&b[4..36]).map_err(bad)?)],
                shielding: HpkeKeyPair::from_private_bytes(&b[36..68]).map_err(bad)?,
                signing: SigningKeyPair::from_seed(&b[68..100]).map_err(bad)?,
                source,
            });
        }
        if b.len() < V2_HEAD || &b[..4] != MAGIC_V2 {
            return Err(KeyError::Format(source));
        }
        let n = usize::from(b[68]);
        if n == 0 || n > MAX_KEKS || b.len() != V2_HEAD + n * V2_ENTRY {
            return Err(KeyError::Format(source));
        }
        let mut keks = Vec::with_capacity(n);
        for entry in b[V2_HEAD..].chunks_exact(V2_ENTRY) {
            let id = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            if id == 0 || keks.iter().any(|(i, _)| *i == id) {
                return Err(KeyError::Format(source));
            }
            keks.push((id, Kek::from_bytes(&entry[4..]).map_err(bad)?));
        }
        Ok(ServerKeys {
            keks,
            shielding: HpkeKeyPair::from_private_bytes(&b[4..36]).map_err(bad)?,
            signing: SigningKeyPair::from_seed(&b[36..68]).map_err(bad)?,
            source,
        })
    }

    /// The key set as its file holds it: `AKK1` for the single KEK 1, `AKK2` otherwise.
    pub fn to_bytes(&self) -> SecretBytes {
        if let [(1, kek)] = self.keks.as_slice() {
            let mut out = SecretBytes::new(FILE_LEN);
            let buf = out.expose_secret_mut();
            buf[..4].copy_from_slice(MAGIC);
            buf[4..36].copy_from_slice(kek.expose_secret());
            buf[36..68].copy_from_slice(self.shielding.private_bytes().expose_secret());
            buf[68..100].copy_from_slice(self.signing.seed().expose_secret());
            return out;
        }
        let mut out = SecretBytes::new(V2_HEAD + self.keks.len() * V2_ENTRY);
        let buf = out.expose_secret_mut();
        buf[..4].copy_from_slice(MAGIC_V2);
        buf[4..36].copy_from_slice(self.shielding.private_bytes().expose_secret());
        buf[36..68].copy_from_slice(self.signing.seed().expose_secret());
        buf[68] = u8::try_from(self.keks.len()).unwrap_or(u8::MAX);
        for (slot, (id, kek)) in buf[V2_HEAD..].chunks_exact_mut(V2_ENTRY).zip(&self.keks) {
            slot[..4].copy_from_slice(&id.to_be_bytes());
            slot[4..].copy_from_slice(kek.expose_secret());
        }
        out
    }

    /// Writes the key set to a new 0600 file (never over an existing one), synced.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(self.to_bytes().expose_secret()).map_err(io)?;
        f.sync_all().map_err(io)
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

    /// The keys from a key file (0600, AKK1 or AKK2), which must exist.
    pub fn load_file(path: &Path) -> Result<Self, KeyError> {
        let f = fs::File::open(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::read_file(f, path)
    }

    fn read_file(mut f: fs::File, path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = f.metadata().map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyError::Permissions(path.display().to_string()));
        }
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if len > MAX_FILE_LEN {
            return Err(KeyError::Format(path.display().to_string()));
        }
        let mut buf = SecretBytes::new(len);
        f.read_exact(buf.expose_secret_mut())
            .map_err(|_| KeyError::Format(path.display().to_string()))?;
        let mut extra = [0u8; 1];
        if f.read(&mut extra).map_err(io)? != 0 {
            return Err(KeyError::Format(path.display().to_string()));
        }
        Self::from_bytes(buf.expose_secret(), path.display().to_string())
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
            Ok(f) => Self::read_file(f, &path),
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
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.kek().1.expose_secret())));
    }

    #[test]
    fn a_rotated_key_set_round_trips_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerKeys::load_or_create(dir.path()).unwrap();
        let b = a.with_new_kek().unwrap();
        assert_eq!(b.kek_ids(), vec![2, 1]);
        assert_eq!(b.kek().0, 2);
        assert_eq!(
            b.kek_by_id(1).unwrap().expose_secret(),
            a.kek().1.expose_secret()
        );
        let file = dir.path().join("next.key");
        b.write_new_file(&file).unwrap();
        assert!(
            b.write_new_file(&file).is_err(),
            "never over an existing file"
        );
        let again = ServerKeys::from_bytes(b.to_bytes().expose_secret(), "t".into()).unwrap();
        assert_eq!(again.kek_ids(), vec![2, 1]);
        assert_eq!(again.signing.public_key(), a.signing.public_key());
        assert_eq!(again.shielding.public_key(), a.shielding.public_key());
        let retired = again.retiring(|_| false).unwrap();
        assert_eq!(retired.kek_ids(), vec![2], "the current KEK always stays");
        assert!(
            ServerKeys::from_bytes(&retired.to_bytes().expose_secret()[..70], "t".into()).is_err()
        );
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
