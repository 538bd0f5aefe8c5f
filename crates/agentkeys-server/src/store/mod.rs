//! Storage behind one trait (decision 78): every SQL statement of the server lives
//! under this module. [`sqlite::SqliteStore`] is the embedded engine (one node);
//! [`postgres::PgStore`] serves N replicas on one database; [`AnyStore`] is whichever
//! `--database` names.
//!
//! Methods are domain operations, each one transaction, so handlers never compose
//! partial writes. Conditional updates (`WHERE status = 'pending'`) make single-use
//! requests and grants race-free across connections.
//!
//! Each operation's body is written once: `methods.rs` holds the bodies both engines run
//! (expanded into each engine's `impl Store`), `sql.rs` the statements more than one
//! body shares, `rows.rs` the row decoders, and `chain.rs` the audit chain's hash. An
//! engine's file keeps only what differs: its pools, its `dialect` statements, and, for
//! SQLite, the hot readers and the audit appender thread, for PostgreSQL the advisory
//! locks, `NOTIFY` and the shared rate buckets.

pub(crate) mod chain;
pub mod copy;
mod methods;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use agentkeys_types::api::{AuthKind, AuthStatus, Policy};
use agentkeys_types::{Scope, ServiceName, UnixSeconds, Wallet};

/// Checks that `applied` migrations cover the `known` ones of this build.
fn migrations_cover(applied: i64, known: usize) -> StoreResult<u32> {
    let applied = u32::try_from(applied).unwrap_or(0);
    if (applied as usize) < known {
        return Err(StoreError::Corrupt("migrations not applied"));
    }
    Ok(applied)
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database failed; logged, never sent to clients.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite failed on a connection of the server's own (the hot lookups); logged, never
    /// sent to clients.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded (corruption or a newer schema).
    #[error("corrupt row: {0}")]
    Corrupt(&'static str),
    /// A file beside the database (a backup) could not be written.
    #[error("{0}")]
    Io(String),
    /// The database could not be reached at start: where, why, and what to check.
    #[error("cannot connect to {target}: {cause}")]
    Unreachable {
        /// The engine, host, port, user and database (never a password).
        target: String,
        /// What failed: refused, no such host, TLS, authentication, no answer.
        cause: String,
        /// What to check.
        hint: &'static str,
    },
}

impl StoreError {
    /// The fix to suggest, where the error has one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StoreError::Unreachable { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// An account: a master or an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Its wallet.
    pub wallet: Wallet,
    /// `true` for a master, `false` for an agent.
    pub is_master: bool,
    /// The owning master, for agents.
    pub parent: Option<Wallet>,
    /// The scope (masters: all).
    pub scope: Scope,
    /// Creation time.
    pub created_at: UnixSeconds,
}

/// A child agent with its usage, for `GET /v1/agents`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSummary {
    /// The account.
    pub account: Account,
    /// Latest use of any of its sessions.
    pub last_used_at: Option<UnixSeconds>,
    /// Live sessions.
    pub active_sessions: u64,
    /// Linked aliases and e-mails.
    pub identities: Vec<String>,
}

/// A session row joined with its account. The token itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// The account it acts as.
    pub account: Account,
    /// Creation time.
    pub created_at: UnixSeconds,
    /// Expiry.
    pub expires_at: UnixSeconds,
    /// Revocation time, if revoked.
    pub revoked_at: Option<UnixSeconds>,
    /// Last use (updated at most once a minute).
    pub last_used_at: Option<UnixSeconds>,
}

/// A new session to insert.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Session id.
    pub id: String,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The account.
    pub wallet: Wallet,
    /// Master or agent.
    pub is_master: bool,
    /// Creation time.
    pub created_at: UnixSeconds,
    /// Expiry.
    pub expires_at: UnixSeconds,
}

/// An encrypted credential as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredential {
    /// The owner.
    pub owner: Wallet,
    /// The name.
    pub service: ServiceName,
    /// The per-record key, wrapped by the KEK.
    pub wrapped_dek: Vec<u8>,
    /// The value under the per-record key.
    pub ciphertext: Vec<u8>,
    /// The id of the KEK `wrapped_dek` is wrapped under.
    pub kek_id: u32,
    /// Its policy.
    pub policy: Policy,
    /// Its binding: the canonical JSON text of a validated
    /// [`Binding`](agentkeys_types::binding::Binding), stored and signed as these bytes.
    pub binding: Option<String>,
    /// First stored.
    pub created_at: UnixSeconds,
    /// Last changed.
    pub updated_at: UnixSeconds,
}

/// An auth request row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequestRecord {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: AuthKind,
    /// Pair code `ABCD-EFGH`.
    pub pair_code: String,
    /// OTP nonce.
    pub nonce: Vec<u8>,
    /// The OTP.
    pub otp: String,
    /// Pair/recover: the requester's X25519 key.
    pub requester_key: Option<Vec<u8>>,
    /// Recover/high-value: the agent concerned.
    pub agent: Option<Wallet>,
    /// High-value: the service.
    pub service: Option<ServiceName>,
    /// High-value: the wallet that asked.
    pub requested_by: Option<Wallet>,
    /// High-value: the session that asked (the grant is bound to it).
    pub requested_session: Option<String>,
    /// Requester's free text.
    pub description: Option<String>,
    /// Stored status (a pending row past `expires_at` reads as expired).
    pub status: AuthStatus,
    /// Created.
    pub created_at: UnixSeconds,
    /// Expires.
    pub expires_at: UnixSeconds,
    /// The master that decided.
    pub decided_by: Option<Wallet>,
    /// High-value: the grant's deadline.
    pub grant_expires_at: Option<UnixSeconds>,
    /// Pair/recover: the sealed session.
    pub sealed_session: Option<Vec<u8>>,
    /// Signature over the decision.
    pub signature: Option<Vec<u8>>,
}

impl AuthRequestRecord {
    /// The status as of `now`: a pending request past its deadline is expired.
    pub fn status_at(&self, now: UnixSeconds) -> AuthStatus {
        if self.status == AuthStatus::Pending && now >= self.expires_at {
            AuthStatus::Expired
        } else {
            self.status
        }
    }
}

/// The outcome of a conditional decision on an auth request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecideOutcome {
    /// The request was pending and is now decided.
    Decided,
    /// Someone decided it first.
    AlreadyDecided,
    /// It expired before the decision.
    Expired,
    /// No such request.
    NotFound,
    /// The credential requires a passkey, and this approval was not made with one (checked
    /// in the approving transaction, so a guard raised meanwhile is seen).
    PasskeyRequired,
}

/// What raising a passkey guard ended, in the policy change's transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// Live standing approvals a session had granted.
    pub ended_standing: u64,
    /// Unspent one-time grants a session had approved.
    pub ended_grants: u64,
}

/// What released a high-value read: written into its audit row, in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// A live standing approval (`sta_…`) of the reading agent.
    Standing(String),
    /// A one-time grant of the reading session, now spent (its request id).
    Grant(String),
}

impl Release {
    /// The read's audit detail.
    pub fn detail(&self) -> String {
        match self {
            Release::Standing(id) => format!("high-value, standing approval {id}"),
            Release::Grant(id) => format!("high-value grant spent ({id})"),
        }
    }
}

/// What an approval writes besides the status.
#[derive(Clone, Debug)]
pub enum Approval {
    /// Pair: create the agent account and its first session.
    Pair {
        /// The new agent account (parent = the approving master).
        agent: Account,
        /// Its session.
        session: NewSession,
        /// The session grant sealed to the requester.
        sealed_session: Vec<u8>,
        /// The server's signature over the decision.
        signature: Vec<u8>,
    },
    /// Recover: a new session for an existing agent.
    Recover {
        /// The new session.
        session: NewSession,
        /// Sealed grant.
        sealed_session: Vec<u8>,
        /// Signature.
        signature: Vec<u8>,
    },
    /// High-value: one release to the asking session until `grant_expires_at`.
    HighValue {
        /// How it was approved: `session` or `passkey` (kept on the request: raising a
        /// passkey guard ends a session's grants only).
        via: String,
        /// Deadline of the grant.
        grant_expires_at: UnixSeconds,
        /// Signature over the decision.
        signature: Vec<u8>,
        /// A standing approval granted with it, inserted in the same transaction.
        standing: Option<StandingApproval>,
    },
}

/// A standing approval: `agent`'s sessions may read `owner`'s `service` without asking,
/// until `expires_at` (or until revoked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandingApproval {
    /// `sta_…`.
    pub id: String,
    /// The master who granted it.
    pub master: Wallet,
    /// The agent whose sessions may read.
    pub agent: Wallet,
    /// The credential's owner.
    pub owner: Wallet,
    /// The credential.
    pub service: ServiceName,
    /// The request whose approval granted it.
    pub request_id: String,
    /// `session` or `passkey`.
    pub via: String,
    /// When granted.
    pub created_at: UnixSeconds,
    /// When it ends.
    pub expires_at: UnixSeconds,
}

/// A master's registered passkey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyRecord {
    /// `pk_…`.
    pub id: String,
    /// Its master.
    pub master: Wallet,
    /// Its name.
    pub name: String,
    /// The WebAuthn credential id.
    pub credential_id: Vec<u8>,
    /// The webauthn-rs `Passkey` as JSON (public key, counter).
    pub passkey_json: String,
    /// When registered.
    pub created_at: UnixSeconds,
    /// When it last approved something.
    pub last_used_at: Option<UnixSeconds>,
}

/// A one-time passkey registration link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyRegistration {
    /// SHA-256 of the link's token (the token itself is never stored).
    pub token_hash: Vec<u8>,
    /// The master the passkey will belong to.
    pub master: Wallet,
    /// The passkey's name.
    pub name: String,
    /// The ceremony's state (webauthn-rs JSON), once the page asked for options.
    pub state_json: Option<String>,
    /// When the link was made.
    pub created_at: UnixSeconds,
    /// When it stops working.
    pub expires_at: UnixSeconds,
    /// When it was used.
    pub used_at: Option<UnixSeconds>,
}

/// An audit event before it is chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// When.
    pub ts: UnixSeconds,
    /// Who (`-` when anonymous).
    pub actor: String,
    /// Agent concerned.
    pub agent: Option<String>,
    /// Service concerned.
    pub service: Option<String>,
    /// What.
    pub action: String,
    /// `ok` or an error code.
    pub outcome: String,
    /// Free text, never secret.
    pub detail: Option<String>,
}

/// A chained audit row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Position.
    pub seq: i64,
    /// The event.
    pub event: NewAuditEvent,
    /// Hash of the previous row (zeros for the first).
    pub prev_hash: Vec<u8>,
    /// This row's hash.
    pub hash: Vec<u8>,
}

/// Which audit rows a caller may see and wants.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Rows whose actor or agent is one of these.
    pub visible_to: Vec<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this service.
    pub service: Option<String>,
    /// Only this action (`trail.anchor`, …).
    pub action: Option<String>,
    /// Only rows at or after this time.
    pub since: Option<UnixSeconds>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// What `GET /metrics` reads from the store at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions neither revoked nor expired.
    pub active_sessions: i64,
    /// Auth requests pending and unexpired.
    pub pending_auth_requests: i64,
    /// Connections open in this process's pools.
    pub pool_size: i64,
    /// Of those, idle.
    pub pool_idle: i64,
}

/// Everything the server persists. One implementation per engine; one test suite for all.
pub trait Store: Send + Sync + 'static {
    /// Finds or creates the master account enrolled with this credential hash.
    fn ensure_master(
        &self,
        enrol_hash: &[u8; 32],
        new_wallet: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Account>> + Send;
    /// An account by wallet (deleted accounts are absent).
    fn account(&self, wallet: &Wallet)
    -> impl Future<Output = StoreResult<Option<Account>>> + Send;
    /// Every agent a master ever had, torn-down ones included (their audit rows stay the
    /// master's to see).
    fn agent_wallets_ever(
        &self,
        parent: &Wallet,
    ) -> impl Future<Output = StoreResult<Vec<Wallet>>> + Send;
    /// A master's child agents with usage.
    fn list_agents(
        &self,
        parent: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Vec<AgentSummary>>> + Send;
    /// Replaces an agent's scope; false when the agent is not the parent's.
    fn set_agent_scope(
        &self,
        parent: &Wallet,
        agent: &Wallet,
        scope: &Scope,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Revokes every session of the agent, deletes its credentials and identities, and
    /// marks it deleted. Returns (sessions revoked, credentials deleted), or None when the
    /// agent is not the parent's.
    fn teardown_agent(
        &self,
        parent: &Wallet,
        agent: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Option<(u64, u64)>>> + Send;

    /// Inserts a session.
    fn insert_session(&self, s: &NewSession) -> impl Future<Output = StoreResult<()>> + Send;
    /// Looks a session up by token hash (tokens are never stored).
    fn session_by_token_hash(
        &self,
        hash: &[u8; 32],
    ) -> impl Future<Output = StoreResult<Option<SessionRecord>>> + Send;
    /// Records a use of a session.
    fn touch_session(
        &self,
        id: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A session by id.
    fn session_by_id(
        &self,
        id: &str,
    ) -> impl Future<Output = StoreResult<Option<SessionRecord>>> + Send;
    /// Revokes one live session; returns how many rows changed (0 or 1).
    fn revoke_session(
        &self,
        id: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Revokes every live session of a wallet.
    fn revoke_wallet(
        &self,
        wallet: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Inserts or replaces a credential's value; `keep_policy` / `keep_binding` keep an
    /// existing credential's policy / binding instead of `c`'s. Returns true when it was new.
    fn put_credential(
        &self,
        c: &StoredCredential,
        keep_policy: bool,
        keep_binding: bool,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// One credential.
    fn credential(
        &self,
        owner: &Wallet,
        service: &ServiceName,
    ) -> impl Future<Output = StoreResult<Option<StoredCredential>>> + Send;
    /// Every credential of an owner, values omitted: `wrapped_dek` empty, `ciphertext` only
    /// the record's 24-byte nonce, random per store, which tells one stored value from the
    /// next (the session state's `version`) and nothing of it.
    fn list_credentials(
        &self,
        owner: &Wallet,
    ) -> impl Future<Output = StoreResult<Vec<StoredCredential>>> + Send;
    /// Sets a policy; None when there is no such credential, or when it requires a
    /// passkey and `policy` does not (checked in the update itself: a session never
    /// lowers that guard). A policy requiring a passkey also ends, in the same
    /// transaction, the credential's live standing approvals and unspent grants that a
    /// session made (those a passkey made stay), and says how many.
    fn set_policy(
        &self,
        owner: &Wallet,
        service: &ServiceName,
        policy: Policy,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Option<PolicyChange>>> + Send;
    /// Sets or removes a binding (canonical JSON text); false when there is no such
    /// credential.
    fn set_binding(
        &self,
        owner: &Wallet,
        service: &ServiceName,
        binding: Option<&str>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Inserts an auth request; `Conflict` if the pair code is taken.
    fn insert_auth_request(
        &self,
        r: &AuthRequestRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// By id.
    fn auth_request(
        &self,
        id: &str,
    ) -> impl Future<Output = StoreResult<Option<AuthRequestRecord>>> + Send;
    /// By pair code.
    fn auth_request_by_code(
        &self,
        code: &str,
    ) -> impl Future<Output = StoreResult<Option<AuthRequestRecord>>> + Send;
    /// The pending, unexpired requests `master` may decide, oldest first, at most 100:
    /// pair requests addressed to it, and recover and high-value requests
    /// whose agent is `master` or one of its live agents. The same visibility as
    /// `by-code`, less the unaddressed pair requests (knowing their code is the capability).
    fn inbox(
        &self,
        master: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Vec<AuthRequestRecord>>> + Send;
    /// A pending, unexpired high-value request of this session for this credential.
    fn pending_high_value(
        &self,
        session: &str,
        agent: &Wallet,
        service: &ServiceName,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Option<AuthRequestRecord>>> + Send;
    /// Approves a pending request with its side effects, in one transaction; a high-value
    /// approval not made with a passkey is refused (`PasskeyRequired`) when the credential
    /// requires one by then.
    fn approve(
        &self,
        id: &str,
        by: &Wallet,
        now: UnixSeconds,
        approval: &Approval,
    ) -> impl Future<Output = StoreResult<DecideOutcome>> + Send;
    /// Denies a pending request.
    fn deny(
        &self,
        id: &str,
        by: &Wallet,
        now: UnixSeconds,
        signature: &[u8],
    ) -> impl Future<Output = StoreResult<DecideOutcome>> + Send;
    /// Releases one high-value read of `owner`'s `service` to `agent` reading through
    /// `session`: under a live standing approval of `agent`, else by spending one live
    /// grant of `session`; and appends `event`, its detail set to what released it, to the
    /// audit chain in the same transaction (so a spent grant always has its row, and a
    /// failed append spends nothing). None: nothing releases it, and nothing is written.
    /// Serialized with every other append, so the chain stays one.
    fn release_high_value(
        &self,
        session: &str,
        agent: &Wallet,
        owner: &Wallet,
        service: &ServiceName,
        now: UnixSeconds,
        event: &NewAuditEvent,
    ) -> impl Future<Output = StoreResult<Option<(Release, i64)>>> + Send;

    /// The id of a live standing approval letting `agent` read `owner`'s `service` (the
    /// one ending last).
    fn standing_approval(
        &self,
        agent: &Wallet,
        owner: &Wallet,
        service: &ServiceName,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// The live standing approvals `master` granted, soonest to end first.
    fn standing_approvals(
        &self,
        master: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<Vec<StandingApproval>>> + Send;
    /// Ends one of `master`'s live standing approvals; false when there is none by that id.
    fn revoke_standing_approval(
        &self,
        master: &Wallet,
        id: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Stores a new registration link.
    fn insert_passkey_registration(
        &self,
        r: &PasskeyRegistration,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A registration link by its token's hash.
    fn passkey_registration(
        &self,
        token_hash: &[u8],
    ) -> impl Future<Output = StoreResult<Option<PasskeyRegistration>>> + Send;
    /// Keeps the ceremony's state on an unused, unexpired link; false otherwise.
    fn set_passkey_registration_state(
        &self,
        token_hash: &[u8],
        state_json: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Spends an unused, unexpired link and stores its passkey, in one transaction; false
    /// when the link was used or expired meanwhile. `Conflict` if the credential id is
    /// registered already.
    fn finish_passkey_registration(
        &self,
        token_hash: &[u8],
        now: UnixSeconds,
        passkey: &PasskeyRecord,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// `master`'s passkeys, oldest first.
    fn passkeys(
        &self,
        master: &Wallet,
    ) -> impl Future<Output = StoreResult<Vec<PasskeyRecord>>> + Send;
    /// Records a passkey's use: its updated state (the signature counter) and the time.
    fn touch_passkey(
        &self,
        id: &str,
        passkey_json: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes one of `master`'s passkeys; false when it has none by that id, or when it
    /// is the last one and a credential `master` decides (its own or its agents')
    /// requires a passkey.
    fn delete_passkey(
        &self,
        master: &Wallet,
        id: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Deletes auth requests whose deadline and grant both ended before `before`; returns
    /// how many. Keeps the table bounded against anonymous pair-request floods.
    fn purge_auth_requests(
        &self,
        before: UnixSeconds,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Links an alias or e-mail, in `master`'s own namespace, to a wallet; `Conflict` if
    /// that name already names another of `master`'s wallets. Other masters' names are
    /// another namespace: they neither conflict nor show.
    fn link_identity(
        &self,
        master: &Wallet,
        kind: &str,
        value: &str,
        wallet: &Wallet,
        now: UnixSeconds,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Resolves an alias or e-mail in `master`'s namespace to a live wallet.
    fn resolve_identity(
        &self,
        master: &Wallet,
        kind: &str,
        value: &str,
    ) -> impl Future<Output = StoreResult<Option<Wallet>>> + Send;

    /// Appends events to the hash chain in one transaction; returns their seqs.
    /// Callers serialize appends (the server has one audit writer task).
    fn append_audit(
        &self,
        events: &[NewAuditEvent],
    ) -> impl Future<Output = StoreResult<Vec<i64>>> + Send;
    /// Filtered events, newest first.
    fn list_audit(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = StoreResult<Vec<AuditRow>>> + Send;
    /// Chained rows in order, starting after `after_seq`, at most `limit`.
    fn audit_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<AuditRow>>> + Send;

    /// Takes one token from `key`'s bucket (`rate` per second, at most `burst`), or says
    /// how long until one is there. Every server sharing the store shares the bucket.
    fn take_token(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
    ) -> impl Future<Output = StoreResult<Result<(), Duration>>> + Send;

    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;

    /// Up to `limit` credentials whose data key is wrapped under a KEK other than
    /// `current`, after `after` (owner, service) in that order: what a KEK rotation
    /// re-wraps, page by page.
    fn credentials_to_rewrap(
        &self,
        current: u32,
        after: Option<(Wallet, ServiceName)>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<StoredCredential>>> + Send;

    /// Replaces a credential's wrapped data key if it is still `from` (a store meanwhile
    /// wins: its key is already under the current KEK); whether it was replaced.
    fn rewrap(
        &self,
        owner: &Wallet,
        service: &ServiceName,
        from: &[u8],
        to: &[u8],
        kek_id: u32,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// How many credentials each KEK id wraps.
    fn kek_usage(&self) -> impl Future<Output = StoreResult<Vec<(u32, i64)>>> + Send;

    /// Counts for `GET /metrics`, as of `now`.
    fn gauges(&self, now: UnixSeconds) -> impl Future<Output = StoreResult<Gauges>> + Send;

    /// Whether the database answers with every migration this build knows applied;
    /// returns how many are.
    fn ready(&self) -> impl Future<Output = StoreResult<u32>> + Send;

    /// Arranges for `wake` to hear when another server sharing this store opens or decides
    /// an auth request, and returns how often long-polls must re-read anyway (a wake-up
    /// can be lost); `None` when no other server shares it.
    fn watch_decisions(&self, wake: &Arc<Wakeups>) -> Option<Duration> {
        let _ = wake;
        None
    }

    /// Tells the other servers sharing this store that what `master`'s sessions may hold
    /// changed, so their session-state watches re-read (PostgreSQL: `NOTIFY`, sent after
    /// the change committed). The own process's watches are woken by the caller. Nothing
    /// to do where no other server shares the store.
    fn announce_state(&self, master: &Wallet) -> impl Future<Output = StoreResult<()>> + Send;
}

/// How many wake-ups the session-state long-polls are spread over: a change under one
/// master wakes the watches of the masters that share its shard, not every daemon.
const STATE_SHARDS: usize = 64;

/// Who waits on what: an opened request changes inboxes only, so it wakes the inbox
/// long-polls and leaves the (many more) decision long-polls asleep; a change of what a
/// master's sessions may hold (a revocation, a scope, a policy, a binding, a value, a
/// standing approval) wakes the session-state watches of that master's tree.
#[derive(Debug)]
pub struct Wakeups {
    /// Long-polls of one request's decision.
    pub decisions: Notify,
    /// Long-polls of a master's inbox.
    pub inbox: Notify,
    /// Session-state long-polls, by a hash of the master wallet of the session's tree.
    state: [Notify; STATE_SHARDS],
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            decisions: Notify::new(),
            inbox: Notify::new(),
            state: std::array::from_fn(|_| Notify::new()),
        }
    }
}

impl Wakeups {
    /// The wake-up of the session-state watches in `master`'s tree.
    pub fn state_of(&self, master: &Wallet) -> &Notify {
        let digest = agentkeys_core::crypto::sha256(master.as_str().as_bytes());
        &self.state[usize::from(digest[0]) % STATE_SHARDS]
    }

    /// Something `master`'s sessions may hold changed: their state watches re-read.
    pub fn state_changed(&self, master: &Wallet) {
        self.state_of(master).notify_waiters();
    }

    /// Every state watch re-reads (a lost notification channel, shutdown).
    pub fn all_state_changed(&self) {
        for n in &self.state {
            n.notify_waiters();
        }
    }

    /// A request was opened.
    pub fn opened(&self) {
        self.inbox.notify_waiters();
    }

    /// A request was decided (or anything may have changed): everyone re-reads.
    pub fn decided(&self) {
        self.decisions.notify_waiters();
        self.inbox.notify_waiters();
    }
}

/// The engine `--database` names: SQLite (`sqlite:PATH`, the default) or PostgreSQL
/// (`postgres://…`).
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// The embedded engine.
    Sqlite(sqlite::SqliteStore),
    /// The shared engine.
    Postgres(postgres::PgStore),
}

impl AnyStore {
    /// Opens `url`: `postgres://` or `postgresql://` for PostgreSQL, `sqlite:PATH` or a
    /// plain path for SQLite.
    pub async fn open(url: &str) -> StoreResult<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(postgres::PgStore::connect(url).await?))
        } else {
            Ok(AnyStore::Sqlite(sqlite::SqliteStore::open_url(url).await?))
        }
    }
}

/// Forwards each [`Store`] method to the engine inside.
macro_rules! forward {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty;)*) => {
        impl Store for AnyStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $out {
                    match self {
                        AnyStore::Sqlite(s) => s.$name($($arg),*).await,
                        AnyStore::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*

            fn engine(&self) -> &'static str {
                match self {
                    AnyStore::Sqlite(s) => s.engine(),
                    AnyStore::Postgres(s) => s.engine(),
                }
            }

            fn watch_decisions(&self, wake: &Arc<Wakeups>) -> Option<Duration> {
                match self {
                    AnyStore::Sqlite(s) => s.watch_decisions(wake),
                    AnyStore::Postgres(s) => s.watch_decisions(wake),
                }
            }
        }
    };
}

forward! {
    fn announce_state(&self, master: &Wallet) -> StoreResult<()>;
    fn ensure_master(&self, enrol_hash: &[u8; 32], new_wallet: &Wallet, now: UnixSeconds) -> StoreResult<Account>;
    fn account(&self, wallet: &Wallet) -> StoreResult<Option<Account>>;
    fn agent_wallets_ever(&self, parent: &Wallet) -> StoreResult<Vec<Wallet>>;
    fn list_agents(&self, parent: &Wallet, now: UnixSeconds) -> StoreResult<Vec<AgentSummary>>;
    fn set_agent_scope(&self, parent: &Wallet, agent: &Wallet, scope: &Scope) -> StoreResult<bool>;
    fn teardown_agent(&self, parent: &Wallet, agent: &Wallet, now: UnixSeconds) -> StoreResult<Option<(u64, u64)>>;
    fn insert_session(&self, s: &NewSession) -> StoreResult<()>;
    fn session_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>>;
    fn touch_session(&self, id: &str, now: UnixSeconds) -> StoreResult<()>;
    fn session_by_id(&self, id: &str) -> StoreResult<Option<SessionRecord>>;
    fn revoke_session(&self, id: &str, now: UnixSeconds) -> StoreResult<u64>;
    fn revoke_wallet(&self, wallet: &Wallet, now: UnixSeconds) -> StoreResult<u64>;
    fn put_credential(&self, c: &StoredCredential, keep_policy: bool, keep_binding: bool) -> StoreResult<bool>;
    fn credential(&self, owner: &Wallet, service: &ServiceName) -> StoreResult<Option<StoredCredential>>;
    fn list_credentials(&self, owner: &Wallet) -> StoreResult<Vec<StoredCredential>>;
    fn set_policy(&self, owner: &Wallet, service: &ServiceName, policy: Policy, now: UnixSeconds) -> StoreResult<Option<PolicyChange>>;
    fn set_binding(&self, owner: &Wallet, service: &ServiceName, binding: Option<&str>) -> StoreResult<bool>;
    fn insert_auth_request(&self, r: &AuthRequestRecord) -> StoreResult<()>;
    fn auth_request(&self, id: &str) -> StoreResult<Option<AuthRequestRecord>>;
    fn auth_request_by_code(&self, code: &str) -> StoreResult<Option<AuthRequestRecord>>;
    fn inbox(&self, master: &Wallet, now: UnixSeconds) -> StoreResult<Vec<AuthRequestRecord>>;
    fn pending_high_value(&self, session: &str, agent: &Wallet, service: &ServiceName, now: UnixSeconds) -> StoreResult<Option<AuthRequestRecord>>;
    fn approve(&self, id: &str, by: &Wallet, now: UnixSeconds, approval: &Approval) -> StoreResult<DecideOutcome>;
    fn deny(&self, id: &str, by: &Wallet, now: UnixSeconds, signature: &[u8]) -> StoreResult<DecideOutcome>;
    fn release_high_value(&self, session: &str, agent: &Wallet, owner: &Wallet, service: &ServiceName, now: UnixSeconds, event: &NewAuditEvent) -> StoreResult<Option<(Release, i64)>>;
    fn purge_auth_requests(&self, before: UnixSeconds) -> StoreResult<u64>;
    fn standing_approval(&self, agent: &Wallet, owner: &Wallet, service: &ServiceName, now: UnixSeconds) -> StoreResult<Option<String>>;
    fn standing_approvals(&self, master: &Wallet, now: UnixSeconds) -> StoreResult<Vec<StandingApproval>>;
    fn revoke_standing_approval(&self, master: &Wallet, id: &str, now: UnixSeconds) -> StoreResult<bool>;
    fn insert_passkey_registration(&self, r: &PasskeyRegistration) -> StoreResult<()>;
    fn passkey_registration(&self, token_hash: &[u8]) -> StoreResult<Option<PasskeyRegistration>>;
    fn set_passkey_registration_state(&self, token_hash: &[u8], state_json: &str, now: UnixSeconds) -> StoreResult<bool>;
    fn finish_passkey_registration(&self, token_hash: &[u8], now: UnixSeconds, passkey: &PasskeyRecord) -> StoreResult<bool>;
    fn passkeys(&self, master: &Wallet) -> StoreResult<Vec<PasskeyRecord>>;
    fn touch_passkey(&self, id: &str, passkey_json: &str, now: UnixSeconds) -> StoreResult<()>;
    fn delete_passkey(&self, master: &Wallet, id: &str) -> StoreResult<bool>;
    fn link_identity(&self, master: &Wallet, kind: &str, value: &str, wallet: &Wallet, now: UnixSeconds) -> StoreResult<()>;
    fn resolve_identity(&self, master: &Wallet, kind: &str, value: &str) -> StoreResult<Option<Wallet>>;
    fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<Vec<i64>>;
    fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRow>>;
    fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditRow>>;
    fn take_token(&self, key: &str, rate: f64, burst: f64) -> StoreResult<Result<(), Duration>>;
    fn ready(&self) -> StoreResult<u32>;
    fn gauges(&self, now: UnixSeconds) -> StoreResult<Gauges>;
    fn credentials_to_rewrap(&self, current: u32, after: Option<(Wallet, ServiceName)>, limit: u32) -> StoreResult<Vec<StoredCredential>>;
    fn rewrap(&self, owner: &Wallet, service: &ServiceName, from: &[u8], to: &[u8], kek_id: u32) -> StoreResult<bool>;
    fn kek_usage(&self) -> StoreResult<Vec<(u32, i64)>>;
}
