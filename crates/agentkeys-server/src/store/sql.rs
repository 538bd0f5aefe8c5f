//! The statements both engines run with the same text, numbered `$1`, `$2`, … (SQLite
//! reads the same placeholders): those that more than one body uses, or that the SQLite
//! engine's own connections prepare too. A statement used by one shared body alone is
//! written in that body (`methods.rs`); one whose text differs is in its engine's
//! `dialect` module.

/// The columns an auth request row is read with.
macro_rules! auth_request_columns {
    () => {
        "id, kind, pair_code, nonce, otp, requester_key, agent, service, requested_by, \
         requested_session, description, status, created_at, expires_at, decided_by, \
         grant_expires_at, sealed_session, signature"
    };
}
pub(super) use auth_request_columns;

/// The columns an audit row is read with.
macro_rules! audit_columns {
    () => {
        "seq, ts, actor, agent, service, action, outcome, detail, prev_hash, hash"
    };
}
pub(super) use audit_columns;

/// The two counts `gauges` reads, in one statement for either engine.
pub(super) const GAUGES: &str = "SELECT \
     (SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1) AS sessions, \
     (SELECT COUNT(*) FROM auth_requests WHERE status = 'pending' AND expires_at > $1) AS pending";

/// The inbox's filter and order after `FROM auth_requests WHERE` ($1 the master, $2 now),
/// the same for either engine.
pub(super) const INBOX_FILTER: &str = "status = 'pending' AND expires_at > $2 AND \
     ((kind = 'pair' AND requested_by = $1) OR (kind <> 'pair' AND (agent = $1 OR agent IN \
     (SELECT wallet FROM accounts WHERE parent = $1 AND deleted_at IS NULL)))) \
     ORDER BY created_at, id LIMIT 100";

/// A session joined with its account, as the session decoder reads it.
pub(super) const SESSION_SELECT: &str = "SELECT s.id, s.created_at AS s_created_at, s.expires_at, s.revoked_at, \
     s.last_used_at, a.wallet AS a_wallet, a.kind AS a_kind, a.parent AS a_parent, \
     a.scope_json AS a_scope_json, a.created_at AS a_created_at \
     FROM sessions s JOIN accounts a ON a.wallet = s.wallet";

/// The live session with a token hash, joined with its account: the lookup every request
/// makes, so its text is built once.
pub(super) static SESSION_BY_TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{SESSION_SELECT} WHERE s.token_hash = $1 AND a.deleted_at IS NULL")
});

/// A session by id, whatever its state.
pub(super) static SESSION_BY_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SESSION_SELECT} WHERE s.id = $1"));

/// A master's inbox: what waits for its decision.
pub(super) static INBOX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM auth_requests WHERE {INBOX_FILTER}",
        auth_request_columns!()
    )
});

/// Ending a wallet's live sessions ($1 now, $2 the wallet).
pub(super) const REVOKE_WALLET: &str =
    "UPDATE sessions SET revoked_at = $1 WHERE wallet = $2 AND revoked_at IS NULL";

/// Auth requests whose deadline and grant both ended before $1.
pub(super) const PURGE_AUTH_REQUESTS: &str = "DELETE FROM auth_requests WHERE expires_at < $1 \
     AND (grant_expires_at IS NULL OR grant_expires_at < $1)";

pub(super) const STANDING_LIVE: &str = "SELECT id FROM standing_approvals \
     WHERE agent = $1 AND owner = $2 AND service = $3 AND revoked_at IS NULL \
     AND expires_at > $4 ORDER BY expires_at DESC LIMIT 1";
pub(super) const STANDING_OF_MASTER: &str = "SELECT * FROM standing_approvals \
     WHERE master = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY expires_at, id";
pub(super) const STANDING_REVOKE: &str = "UPDATE standing_approvals SET revoked_at = $3 \
     WHERE master = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > $3";
/// The live grant of a session for a credential, oldest decision first ($1 the
/// session, $2 the owner, $3 the service, $4 now).
pub(super) const GRANT_LIVE: &str = "SELECT id FROM auth_requests \
     WHERE requested_session = $1 AND agent = $2 AND service = $3 AND kind = 'high_value' \
     AND status = 'approved' AND grant_expires_at > $4 ORDER BY decided_at LIMIT 1";
/// Raising `require_passkey` ends the credential's live standing approvals that a
/// session granted ($1 the owner, $2 the service, $3 now).
pub(super) const STANDING_END_SESSION_MADE: &str = "UPDATE standing_approvals \
     SET revoked_at = $3 WHERE owner = $1 AND service = $2 AND via <> 'passkey' \
     AND revoked_at IS NULL AND expires_at > $3";
/// ... and its unspent one-time grants that a session approved (a row from before
/// `decided_via` existed counts as a session's).
pub(super) const GRANTS_END_SESSION_MADE: &str = "UPDATE auth_requests \
     SET grant_expires_at = $3 WHERE agent = $1 AND service = $2 AND kind = 'high_value' \
     AND status = 'approved' AND grant_expires_at > $3 \
     AND (decided_via IS NULL OR decided_via <> 'passkey')";
pub(super) const STANDING_INSERT: &str = "INSERT INTO standing_approvals \
     (id, master, agent, owner, service, request_id, via, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(super) const REGISTRATION_INSERT: &str = "INSERT INTO passkey_registrations \
     (token_hash, master, name, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
pub(super) const REGISTRATION_BY_HASH: &str =
    "SELECT * FROM passkey_registrations WHERE token_hash = $1";
pub(super) const REGISTRATION_STATE: &str = "UPDATE passkey_registrations \
     SET state_json = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $3";
pub(super) const REGISTRATION_SPEND: &str = "UPDATE passkey_registrations \
     SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2";
pub(super) const PASSKEY_INSERT: &str = "INSERT INTO passkeys \
     (id, master, name, credential_id, passkey_json, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const PASSKEYS_OF: &str =
    "SELECT * FROM passkeys WHERE master = $1 ORDER BY created_at, id";
pub(super) const PASSKEY_TOUCH: &str =
    "UPDATE passkeys SET passkey_json = $2, last_used_at = $3 WHERE id = $1";
/// The check is in the delete's own statement: the last passkey goes only while no
/// credential `$1` decides (its own or its agents') requires one.
pub(super) const PASSKEY_DELETE: &str = "DELETE FROM passkeys \
     WHERE master = $1 AND id = $2 AND (\
     EXISTS (SELECT 1 FROM passkeys o WHERE o.master = $1 AND o.id <> $2) OR NOT EXISTS \
     (SELECT 1 FROM credentials c JOIN accounts a ON a.wallet = c.owner \
      WHERE c.require_passkey AND (c.owner = $1 OR a.parent = $1)))";
