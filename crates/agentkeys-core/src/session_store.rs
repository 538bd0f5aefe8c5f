//! A session at rest (decision 79): the session JSON sealed with XChaCha20-Poly1305
//! in `<dir>/<name>.enc`, its 32-byte data key in the kernel keyring (keyutils, through
//! keyring-core) or, where no keyring works, in a 0600 `<name>.key` file beside it.
//!
//! File layout (`<name>.enc`, written atomically: temp file, fsync, rename, fsync dir):
//!
//! ```text
//! "AKSESS01" (8) | protection (1: 1 keyring, 2 file) | key id (16) | nonce (24) | ciphertext | tag (16)
//! ```
//!
//! The 25-byte header is the AEAD's associated data, so neither the protection nor the key
//! id can be swapped. The keyring entry is service `agentkeys`, account `<account>.<key id>`:
//! the key id keeps several homes of one user (profiles, parallel tests) from sharing or
//! overwriting each other's data key, which is written once and never updated in place;
//! a new key id (and entry) is minted only by [`SessionStore::save`] with `rotate_key`.
//!
//! The plaintext exists only in `SecretPage`s: serialized straight into one, sealed from it,
//! opened into one, parsed from it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use agentkeys_secmem::{SecretBytes, SecretPage, SecretString};
use agentkeys_types::api::{SessionInfo, secret_serde};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::envelope::{xchacha_open_into_page, xchacha_seal};
use crate::crypto::random_array;

const MAGIC: &[u8; 8] = b"AKSESS01";
const KEY_MAGIC: &[u8; 8] = b"AKSKEY01";
const HEADER_LEN: usize = 8 + 1 + 16;
const KEY_FILE_LEN: usize = 8 + 16 + 32;
/// The keyring service name every entry uses.
pub const KEYRING_SERVICE: &str = "agentkeys";

/// Where the data key may live, from `AGENTKEYS_SESSION_STORE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// The keyring if it works, else the key file.
    Auto,
    /// The keyring or nothing.
    Keyring,
    /// The key file, even where a keyring works.
    File,
}

impl StoreChoice {
    /// Parses `auto`, `keyring` or `file`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" | "" => Some(StoreChoice::Auto),
            "keyring" => Some(StoreChoice::Keyring),
            "file" => Some(StoreChoice::File),
            _ => None,
        }
    }
}

/// How a stored session's data key is protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protection {
    /// In the kernel keyring (keyutils, linked into the per-user persistent keyring).
    Keyring {
        /// The entry's account (its service is [`KEYRING_SERVICE`]).
        account: String,
    },
    /// In a 0600 file.
    File {
        /// The key file.
        path: PathBuf,
    },
}

impl Protection {
    /// `keyring` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            Protection::Keyring { .. } => "keyring",
            Protection::File { .. } => "file",
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Protection::Keyring { account } => format!(
                "data key in the kernel keyring (keyutils, persistent keyring; \
                 service {KEYRING_SERVICE}, account {account})"
            ),
            Protection::File { path } => {
                format!("data key in a 0600 file ({}; no keyring)", path.display())
            }
        }
    }
}

/// A session as kept at rest. No `Debug`: it holds the token.
pub struct StoredSession {
    /// The server URL the session belongs to; the token is never sent anywhere else.
    pub server: String,
    /// The bearer token.
    pub token: SecretString,
    /// The session's metadata as the server described it.
    pub session: SessionInfo,
    /// The server's Ed25519 key, pinned at first contact.
    pub server_signing_key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFileV1 {
    v: u32,
    server: String,
    #[serde(with = "secret_serde")]
    token: SecretString,
    session: SessionInfo,
    server_signing_key: String,
}

/// Errors of the session store. None carries key or session bytes.
#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    /// No session file.
    #[error("no session is stored in {0}")]
    NotFound(PathBuf),
    /// The file is there but its data key is not (keyring keys do not survive a reboot).
    #[error("the session's data key is gone ({0})")]
    KeyLost(String),
    /// The file or key file does not parse or does not open with its key.
    #[error("the stored session is unreadable: {0}")]
    Corrupt(String),
    /// The keyring was required and does not work here.
    #[error("the kernel keyring is not usable here: {0}")]
    KeyringUnavailable(String),
    /// A key file readable by group or others.
    #[error("{0} is readable by other users (mode {1:o})")]
    LoosePermissions(PathBuf, u32),
    /// A file system error.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

impl SessionStoreError {
    /// A recommended fix.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SessionStoreError::NotFound(_) => "run 'agentkeys init' to create a session".into(),
            SessionStoreError::KeyLost(_) => {
                "kernel keyring keys are lost on reboot; run 'agentkeys init' to mint a new session"
                    .into()
            }
            SessionStoreError::Corrupt(_) => {
                "run 'agentkeys init --force' to replace the stored session".into()
            }
            SessionStoreError::KeyringUnavailable(_) => {
                "set AGENTKEYS_SESSION_STORE=file (or auto) to keep the data key in a 0600 file"
                    .into()
            }
            SessionStoreError::LoosePermissions(p, _) => format!("chmod 600 {}", p.display()),
            SessionStoreError::Io { .. } => return None,
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SessionStoreError + '_ {
    move |source| SessionStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One session slot: `<dir>/<name>.enc`, `<dir>/<name>.key`, keyring account
/// `<account>.<key id>`.
#[derive(Clone, Debug)]
pub struct SessionStore {
    dir: PathBuf,
    name: String,
    account: String,
}

/// The parsed header of a session file.
#[derive(Clone, Copy)]
struct Header {
    file_protection: bool,
    key_id: [u8; 16],
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = if self.file_protection { 2 } else { 1 };
        out[9..].copy_from_slice(&self.key_id);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Self, SessionStoreError> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(SessionStoreError::Corrupt(
                "not an agentkeys session file".into(),
            ));
        }
        let file_protection = match bytes[8] {
            1 => false,
            2 => true,
            _ => return Err(SessionStoreError::Corrupt("unknown protection".into())),
        };
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&bytes[9..HEADER_LEN]);
        Ok(Header {
            file_protection,
            key_id,
        })
    }

    fn key_id_hex(&self) -> String {
        self.key_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl SessionStore {
    /// The slot `name` in `dir` (e.g. `~/.agentkeys`, `session`, `master-key`).
    pub fn new(dir: impl Into<PathBuf>, name: &str, account: &str) -> Self {
        SessionStore {
            dir: dir.into(),
            name: name.to_owned(),
            account: account.to_owned(),
        }
    }

    /// `<dir>/<name>.enc`.
    pub fn session_path(&self) -> PathBuf {
        self.dir.join(format!("{}.enc", self.name))
    }

    /// `<dir>/<name>.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.name))
    }

    /// Whether a session file exists.
    pub fn exists(&self) -> bool {
        self.session_path().exists()
    }

    fn protection_for(&self, header: &Header) -> Protection {
        if header.file_protection {
            Protection::File {
                path: self.key_path(),
            }
        } else {
            Protection::Keyring {
                account: format!("{}.{}", self.account, header.key_id_hex()),
            }
        }
    }

    fn read_file(&self) -> Result<(Header, Vec<u8>), SessionStoreError> {
        let path = self.session_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SessionStoreError::NotFound(path));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok((Header::parse(&bytes)?, bytes))
    }

    /// How the stored session is protected, without opening it.
    pub fn protection(&self) -> Result<Protection, SessionStoreError> {
        let (header, _) = self.read_file()?;
        Ok(self.protection_for(&header))
    }

    /// Opens the stored session.
    pub fn load(&self) -> Result<(StoredSession, Protection), SessionStoreError> {
        let (header, bytes) = self.read_file()?;
        let protection = self.protection_for(&header);
        let key = self.load_key(&header, &protection)?;
        let key: &[u8; 32] = key
            .expose_secret()
            .try_into()
            .map_err(|_| SessionStoreError::Corrupt("the data key is not 32 bytes".into()))?;
        let page = xchacha_open_into_page(key, &bytes[..HEADER_LEN], &bytes[HEADER_LEN..])
            .map_err(|_| SessionStoreError::Corrupt("it does not open with its data key".into()))?;
        let file: SessionFileV1 = serde_json::from_slice(page.expose_secret())
            .map_err(|_| SessionStoreError::Corrupt("the session JSON does not parse".into()))?;
        if file.v != 1 {
            return Err(SessionStoreError::Corrupt(format!(
                "unsupported version {}",
                file.v
            )));
        }
        let server_signing_key = crate::crypto::key_from_base64(&file.server_signing_key)
            .ok_or_else(|| SessionStoreError::Corrupt("bad pinned server key".into()))?;
        Ok((
            StoredSession {
                server: file.server,
                token: file.token,
                session: file.session,
                server_signing_key,
            },
            protection,
        ))
    }

    fn load_key(
        &self,
        header: &Header,
        protection: &Protection,
    ) -> Result<SecretBytes, SessionStoreError> {
        match protection {
            Protection::Keyring { account } => match keyring::get(account)? {
                Some(key) => Ok(key),
                None => Err(SessionStoreError::KeyLost(format!(
                    "no keyring entry {KEYRING_SERVICE}/{account}"
                ))),
            },
            Protection::File { path } => {
                let mut file = match File::open(path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(SessionStoreError::KeyLost(format!(
                            "{} is missing",
                            path.display()
                        )));
                    }
                    Err(e) => return Err(io_err(path)(e)),
                };
                let mode = file.metadata().map_err(io_err(path))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(SessionStoreError::LoosePermissions(
                        path.clone(),
                        mode & 0o777,
                    ));
                }
                let mut buf = Zeroizing::new([0u8; KEY_FILE_LEN + 1]);
                let n = read_up_to(&mut file, &mut buf[..]).map_err(io_err(path))?;
                if n != KEY_FILE_LEN || &buf[..8] != KEY_MAGIC {
                    return Err(SessionStoreError::Corrupt(format!(
                        "{} is not an agentkeys key file",
                        path.display()
                    )));
                }
                if buf[8..24] != header.key_id {
                    return Err(SessionStoreError::KeyLost(format!(
                        "{} holds another session's key",
                        path.display()
                    )));
                }
                Ok(SecretBytes::from_slice(&buf[24..KEY_FILE_LEN]))
            }
        }
    }

    /// Stores `session`. With `rotate_key` false, an existing, loadable data key is reused
    /// (it is never rewritten); otherwise, or when there is none, a new key id and data key
    /// are minted, stored per `choice`, and the old key is deleted once the new file is in
    /// place. Returns how the session is now protected.
    pub fn save(
        &self,
        session: &StoredSession,
        choice: StoreChoice,
        rotate_key: bool,
    ) -> Result<Protection, SessionStoreError> {
        create_private_dir(&self.dir)?;
        let existing = self.read_file().ok().map(|(h, _)| h);
        let reusable = match existing {
            Some(h) if !rotate_key && choice_accepts(choice, h.file_protection) => self
                .load_key(&h, &self.protection_for(&h))
                .ok()
                .map(|k| (h, k)),
            _ => None,
        };
        let (header, key, fresh) = match reusable {
            Some((h, k)) => (h, k, false),
            None => {
                let (h, k) = self.mint_key(choice)?;
                (h, k, true)
            }
        };
        let key_arr: &[u8; 32] = key
            .expose_secret()
            .try_into()
            .map_err(|_| SessionStoreError::Corrupt("the data key is not 32 bytes".into()))?;
        let page = serialize_into_page(session)?;
        let header_bytes = header.to_bytes();
        let sealed = xchacha_seal(key_arr, &header_bytes, page.expose_secret())
            .map_err(|e| SessionStoreError::Corrupt(e.to_string()))?;
        let mut contents = Vec::with_capacity(HEADER_LEN + sealed.len());
        contents.extend_from_slice(&header_bytes);
        contents.extend_from_slice(&sealed);
        write_atomically(&self.session_path(), &contents)?;
        if fresh && let Some(old) = existing {
            // The new file is in place; the old key can go (best effort: a keyring key left
            // behind expires with the persistent keyring, and holds nothing openable).
            if !old.file_protection && old.key_id != header.key_id {
                let _ = keyring::delete(&format!("{}.{}", self.account, old.key_id_hex()));
            }
        }
        Ok(self.protection_for(&header))
    }

    fn mint_key(&self, choice: StoreChoice) -> Result<(Header, SecretBytes), SessionStoreError> {
        let key_id: [u8; 16] = random_array();
        let key = SecretBytes::random(32);
        let header = Header {
            file_protection: false,
            key_id,
        };
        let keyring_error = match choice {
            StoreChoice::File => None,
            StoreChoice::Auto | StoreChoice::Keyring => {
                let account = format!("{}.{}", self.account, header.key_id_hex());
                match keyring::set(&account, key.expose_secret()) {
                    Ok(()) => return Ok((header, key)),
                    Err(e) => Some(e),
                }
            }
        };
        if let (StoreChoice::Keyring, Some(e)) = (choice, keyring_error) {
            return Err(e);
        }
        let mut contents = Zeroizing::new([0u8; KEY_FILE_LEN]);
        contents[..8].copy_from_slice(KEY_MAGIC);
        contents[8..24].copy_from_slice(&key_id);
        contents[24..].copy_from_slice(key.expose_secret());
        write_atomically(&self.key_path(), &contents[..])?;
        Ok((
            Header {
                file_protection: true,
                key_id,
            },
            key,
        ))
    }

    /// Deletes the session file, its keyring entry and its key file. Idempotent.
    pub fn wipe(&self) -> Result<(), SessionStoreError> {
        if let Ok((header, _)) = self.read_file()
            && !header.file_protection
        {
            keyring::delete(&format!("{}.{}", self.account, header.key_id_hex()))?;
        }
        for path in [self.session_path(), self.key_path()] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }
}

fn choice_accepts(choice: StoreChoice, file_protection: bool) -> bool {
    match choice {
        StoreChoice::Auto => true,
        StoreChoice::Keyring => !file_protection,
        StoreChoice::File => file_protection,
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Serializes the session straight into a `SecretPage` of exactly the right length (a
/// counting pass first), so the JSON holding the token never sits in a growable buffer.
fn serialize_into_page(session: &StoredSession) -> Result<SecretPage, SessionStoreError> {
    let file = SessionFileRef {
        v: 1,
        server: &session.server,
        token: &session.token,
        session: &session.session,
        server_signing_key: base64::engine::general_purpose::STANDARD
            .encode(session.server_signing_key),
    };
    let len =
        crate::json::json_len(&file).map_err(|e| SessionStoreError::Corrupt(e.to_string()))?;
    let mut page = SecretPage::new(len).map_err(|e| SessionStoreError::Io {
        path: PathBuf::from("<secret page>"),
        source: e,
    })?;
    let mut writer = SliceWriter {
        buf: page.expose_secret_mut(),
        pos: 0,
    };
    serde_json::to_writer(&mut writer, &file)
        .map_err(|e| SessionStoreError::Corrupt(e.to_string()))?;
    Ok(page)
}

#[derive(Serialize)]
struct SessionFileRef<'a> {
    v: u32,
    server: &'a str,
    #[serde(serialize_with = "serialize_token")]
    token: &'a SecretString,
    session: &'a SessionInfo,
    server_signing_key: String,
}

fn serialize_token<S: serde::Serializer>(t: &&SecretString, s: S) -> Result<S::Ok, S::Error> {
    secret_serde::serialize(t, s)
}

/// An `io::Write` into a fixed slice that never grows.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl io::Write for SliceWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let end = self.pos + data.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or_else(|| io::Error::new(io::ErrorKind::WriteZero, "secret page is full"))?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing, and takes group and other
/// access away from an existing one we own: it is agentkeys' private state directory.
pub fn create_private_dir(dir: &Path) -> Result<(), SessionStoreError> {
    use std::os::unix::fs::MetadataExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o077 != 0 && meta.uid() == rustix::process::geteuid().as_raw() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600 through a temp file in the same directory,
/// fsynced and renamed over `path`, then fsyncs the directory: a crash leaves the old file
/// or the new one, never a torn one.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SessionStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let suffix: [u8; 6] = random_array();
    let tmp_name = format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("session"),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// The kernel keyring (keyutils) through keyring-core.
pub mod keyring {
    use super::*;

    type Store = Arc<keyring_core::CredentialStore>;

    /// The store, created once per process.
    fn store() -> Result<&'static Store, SessionStoreError> {
        static STORE: OnceLock<Result<Store, String>> = OnceLock::new();
        STORE
            .get_or_init(|| {
                let store: Store =
                    linux_keyutils_keyring_store::Store::new().map_err(|e| describe(&e))?;
                Ok(store)
            })
            .as_ref()
            .map_err(|e| SessionStoreError::KeyringUnavailable(e.clone()))
    }

    thread_local! {
        static POSSESSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Joins an anonymous session keyring when the calling thread's session keyring is the
    /// user-session fallback (`_uid_ses.<uid>`), whose keys are not possessed and cannot be
    /// linked (platform-scouting note 2(f)). Credentials, and so session keyrings, belong to
    /// a thread: threads started before the join keep the old one, hence the per-thread
    /// check before every keyring call.
    fn possess_session_keyring() -> Result<(), SessionStoreError> {
        use linux_keyutils::{KeyRing, KeyRingIdentifier};
        if POSSESSED.get() {
            return Ok(());
        }
        let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false).map_err(|e| {
            SessionStoreError::KeyringUnavailable(format!("no session keyring ({e})"))
        })?;
        let is_fallback = session
            .metadata()
            .map(|m| m.get_description().starts_with("_uid_ses."))
            .unwrap_or(true);
        if is_fallback {
            agentkeys_secmem::process::join_anonymous_session_keyring().map_err(|e| {
                SessionStoreError::KeyringUnavailable(format!(
                    "cannot join a session keyring ({e})"
                ))
            })?;
        }
        POSSESSED.set(true);
        Ok(())
    }

    /// keyring-core errors, described without their attached data (some variants carry the
    /// raw secret bytes).
    fn describe(e: &keyring_core::Error) -> String {
        use keyring_core::Error as E;
        match e {
            E::PlatformFailure(p) | E::NoStorageAccess(p) => p.to_string(),
            E::NoEntry => "no entry".into(),
            E::BadEncoding(_) | E::BadDataFormat(..) => "unexpected data in the entry".into(),
            E::BadStoreFormat(s) => s.clone(),
            E::TooLong(what, max) => format!("{what} longer than {max}"),
            E::Invalid(what, why) => format!("invalid {what}: {why}"),
            E::Ambiguous(_) => "several entries match".into(),
            _ => "keyring error".into(),
        }
    }

    fn entry(account: &str) -> Result<keyring_core::Entry, SessionStoreError> {
        possess_session_keyring()?;
        keyring_core::Entry::new_in_store(store()?, KEYRING_SERVICE, account)
            .map_err(|e| SessionStoreError::KeyringUnavailable(describe(&e)))
    }

    /// Reads the entry; `None` when it does not exist.
    pub fn get(account: &str) -> Result<Option<SecretBytes>, SessionStoreError> {
        match entry(account)?.get_secret() {
            Ok(v) => {
                let v = Zeroizing::new(v);
                Ok(Some(SecretBytes::from_slice(&v)))
            }
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(SessionStoreError::KeyringUnavailable(describe(&e))),
        }
    }

    /// Creates the entry. On failure, removes whatever half-made key the attempt left (a
    /// stale, unpossessed key would make every later access fail with `EACCES`).
    pub fn set(account: &str, secret: &[u8]) -> Result<(), SessionStoreError> {
        let entry = entry(account)?;
        match entry.set_secret(secret) {
            Ok(()) => match entry.get_secret().map(Zeroizing::new) {
                Ok(back) if back.as_slice() == secret => Ok(()),
                _ => {
                    let _ = entry.delete_credential();
                    Err(SessionStoreError::KeyringUnavailable(
                        "the key did not read back".into(),
                    ))
                }
            },
            Err(e) => {
                let _ = entry.delete_credential();
                Err(SessionStoreError::KeyringUnavailable(describe(&e)))
            }
        }
    }

    /// Deletes the entry if it exists.
    pub fn delete(account: &str) -> Result<(), SessionStoreError> {
        match entry(account)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(SessionStoreError::KeyringUnavailable(describe(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::api::SessionKind;
    use agentkeys_types::{Scope, Wallet};

    fn sample(token: &str) -> StoredSession {
        StoredSession {
            server: "http://127.0.0.1:1".into(),
            token: SecretString::from_str_copy(token),
            session: SessionInfo {
                session_id: "s1".into(),
                wallet: Wallet::from_bytes(&[1; 20]),
                kind: SessionKind::Master,
                scope: Scope::all(),
                parent: None,
                created_at: 1,
                expires_at: 2,
            },
            server_signing_key: [9; 32],
        }
    }

    #[test]
    fn a_file_protected_session_round_trips_and_the_file_holds_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "test-key");
        let protection = store
            .save(&sample("akm_canary_token_1"), StoreChoice::File, false)
            .unwrap();
        assert_eq!(protection.kind(), "file");
        let raw = fs::read(store.session_path()).unwrap();
        assert!(!raw.windows(10).any(|w| w == b"akm_canary"));
        let mode = fs::metadata(store.key_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (back, p2) = store.load().unwrap();
        assert_eq!(back.token.expose_secret(), "akm_canary_token_1");
        assert_eq!(back.session.session_id, "s1");
        assert_eq!(back.server_signing_key, [9; 32]);
        assert_eq!(p2, protection);
    }

    #[test]
    fn saving_again_reuses_the_data_key_and_rotation_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "test-key");
        store
            .save(&sample("akm_a"), StoreChoice::File, false)
            .unwrap();
        let key1 = fs::read(store.key_path()).unwrap();
        store
            .save(&sample("akm_b"), StoreChoice::File, false)
            .unwrap();
        assert_eq!(fs::read(store.key_path()).unwrap(), key1);
        store
            .save(&sample("akm_c"), StoreChoice::File, true)
            .unwrap();
        assert_ne!(fs::read(store.key_path()).unwrap(), key1);
        assert_eq!(store.load().unwrap().0.token.expose_secret(), "akm_c");
    }

    #[test]
    fn a_modified_header_or_body_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "test-key");
        store
            .save(&sample("akm_x"), StoreChoice::File, false)
            .unwrap();
        let good = fs::read(store.session_path()).unwrap();
        for i in [9, HEADER_LEN + 30, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            fs::write(store.session_path(), &bad).unwrap();
            assert!(store.load().is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_with_a_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "test-key");
        store
            .save(&sample("akm_x"), StoreChoice::File, false)
            .unwrap();
        fs::set_permissions(store.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load().err().unwrap();
        assert!(matches!(err, SessionStoreError::LoosePermissions(..)));
        assert!(err.hint().unwrap().starts_with("chmod 600"));
    }

    #[test]
    fn wipe_removes_everything_and_load_then_reports_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "test-key");
        store
            .save(&sample("akm_x"), StoreChoice::File, false)
            .unwrap();
        store.wipe().unwrap();
        assert!(!store.session_path().exists() && !store.key_path().exists());
        assert!(matches!(
            store.load().err().unwrap(),
            SessionStoreError::NotFound(_)
        ));
        store.wipe().unwrap();
    }

    #[test]
    fn the_kernel_keyring_holds_the_key_when_it_works_here() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path(), "session", "unit-test-key");
        let protection = match store.save(&sample("akm_k"), StoreChoice::Keyring, false) {
            Ok(p) => p,
            // A host without keyutils: the auto choice must then fall back to the file.
            Err(SessionStoreError::KeyringUnavailable(_)) => {
                let p = store
                    .save(&sample("akm_k"), StoreChoice::Auto, false)
                    .unwrap();
                assert_eq!(p.kind(), "file");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let Protection::Keyring { account } = &protection else {
            panic!("expected keyring protection")
        };
        assert!(!store.key_path().exists());
        assert!(keyring::get(account).unwrap().is_some());
        assert_eq!(store.load().unwrap().0.token.expose_secret(), "akm_k");
        store.wipe().unwrap();
        assert!(keyring::get(account).unwrap().is_none());
    }
}
