//! HTTP API v1 bodies (docs/api.md). Field names are snake_case; every request
//! body rejects unknown fields. Binary values (keys, sealed values, signatures) are
//! standard base64 with padding.
//!
//! Types that carry a session token ([`SessionGrant`], [`CreateSessionRequest`]) do not
//! derive `Debug`; their secret fields serialize only through [`secret_serde`], which is the
//! explicit opt-in STYLE.md habit 3 asks for.

use agentkeys_secmem::SecretString;
use serde::{Deserialize, Serialize};

use crate::UnixSeconds;
use crate::binding::Binding;
use crate::names::{ServiceName, Wallet};
use crate::scope::Scope;

/// HPKE `info` for a credential sealed by a client to the server's shielding key.
pub const HPKE_INFO_STORE: &[u8] = b"agentkeys store v1";
/// HPKE `info` for a credential the server seals to a reader's ephemeral key.
pub const HPKE_INFO_READ: &[u8] = b"agentkeys read v1";
/// HPKE `info` for a child session sealed to a daemon's pairing key.
pub const HPKE_INFO_SESSION: &[u8] = b"agentkeys session v1";
/// Domain separation prefix of the bytes the server signs for an auth-request decision.
pub const DECISION_SIGNING_CONTEXT: &[u8] = b"agentkeys-decision-v1\0";
/// Domain separation prefix of the bytes the server signs to vouch for its shielding key.
pub const SHIELDING_KEY_SIGNING_CONTEXT: &[u8] = b"agentkeys-shielding-key-v1\0";
/// Domain separation prefix of the bytes the server signs for a credential read answer.
pub const READ_SIGNING_CONTEXT: &[u8] = b"agentkeys-read-v1\0";

/// The signing context of a read answer that carries a binding ([`read_signing_bytes`]).
pub const BOUND_READ_SIGNING_CONTEXT: &[u8] = b"agentkeys-read-v2\0";

/// `context ‖ (u64 big-endian length ‖ part)…`: every signed message of the API, so no
/// two messages (of one kind or of different kinds) share an encoding.
fn signing_bytes(context: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| p.len() + 8).sum();
    let mut out = Vec::with_capacity(context.len() + body);
    out.extend_from_slice(context);
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The bytes the server signs (with its pinned Ed25519 key) to bind its X25519 shielding
/// key to itself: `"agentkeys-shielding-key-v1\0" ‖ len ‖ shielding public key (32 raw
/// bytes)`. A client seals nothing to a shielding key whose signature does not verify.
pub fn shielding_key_signing_bytes(shielding_public_key: &[u8]) -> Vec<u8> {
    signing_bytes(SHIELDING_KEY_SIGNING_CONTEXT, &[shielding_public_key])
}

/// The bytes the server signs for a read answer: `"agentkeys-read-v1\0"`, then
/// length-prefixed the request's recipient public key (32 raw bytes), the aad
/// ([`credential_aad`] of the owner answered for), the sealed value (raw bytes) and the
/// policy (one byte: 1 high-value, 0 not). An answer that carries a binding is signed
/// under `"agentkeys-read-v2\0"` with the binding's JSON text (the exact bytes of the
/// answer's `binding` string) as a fifth part, so a binding can be neither added, changed
/// nor stripped. The recipient key is fresh per read, so an answer cannot be replayed into
/// another read; the reader opens nothing that does not verify.
pub fn read_signing_bytes(
    recipient_public_key: &[u8],
    aad: &[u8],
    sealed_value: &[u8],
    policy: Policy,
    binding: Option<&str>,
) -> Vec<u8> {
    let policy_byte = [u8::from(policy.high_value) | (u8::from(policy.require_passkey) << 1)];
    match binding {
        None => signing_bytes(
            READ_SIGNING_CONTEXT,
            &[recipient_public_key, aad, sealed_value, &policy_byte],
        ),
        Some(text) => signing_bytes(
            BOUND_READ_SIGNING_CONTEXT,
            &[
                recipient_public_key,
                aad,
                sealed_value,
                &policy_byte,
                text.as_bytes(),
            ],
        ),
    }
}

/// The associated data binding a sealed credential to its owner and name, so a sealed
/// value cannot be replayed under another agent or service.
pub fn credential_aad(agent: &Wallet, service: &ServiceName) -> Vec<u8> {
    let mut aad = Vec::with_capacity(agent.as_str().len() + service.as_str().len() + 1);
    aad.extend_from_slice(agent.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(service.as_str().as_bytes());
    aad
}

/// The bytes the server signs for a decision: context, request id, status and the sealed
/// session (empty when none), each length-prefixed so no two decisions share an encoding.
pub fn decision_signing_bytes(id: &str, status: AuthStatus, sealed_session: &[u8]) -> Vec<u8> {
    signing_bytes(
        DECISION_SIGNING_CONTEXT,
        &[id.as_bytes(), status.as_str().as_bytes(), sealed_session],
    )
}

/// The canonical bytes of an auth request that its OTP is derived from
/// (decision 71): kind, requester key and the subject, length-prefixed.
pub fn auth_request_canonical_bytes(
    kind: AuthKind,
    requester_public_key: &[u8],
    subject: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [
        kind.as_str().as_bytes(),
        requester_public_key,
        subject.as_bytes(),
    ] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// An identity as the server compares it: surrounding whitespace removed, lower case.
pub fn normalize_identity(identity: &str) -> String {
    identity.trim().to_lowercase()
}

/// The OTP subject of a pair request: the wallet of the master it is addressed to, or
/// empty.
pub fn pair_subject(parent: Option<&Wallet>) -> String {
    parent.map(ToString::to_string).unwrap_or_default()
}

/// The OTP subject of a recover request: the identity as the requester named it
/// ([`normalize_identity`]), prefixed with `<parent>/` when a master's namespace was named.
pub fn recover_subject(identity: &str, parent: Option<&Wallet>) -> String {
    match parent {
        Some(p) => format!("{p}/{}", normalize_identity(identity)),
        None => normalize_identity(identity),
    }
}

/// The OTP subject of a high-value request: `<owner wallet>/<service>`.
pub fn high_value_subject(owner: &Wallet, service: &ServiceName) -> String {
    format!("{owner}/{service}")
}

/// The subject a requester binds into the OTP of the pair or recover request `req`, so it
/// can recompute the OTP from its own key (decision 71); `None` for high-value.
pub fn requester_subject(req: &OpenAuthRequest) -> Option<String> {
    match req.kind {
        AuthKind::Pair => Some(pair_subject(req.parent.as_ref())),
        AuthKind::Recover => Some(recover_subject(
            req.identity.as_deref().unwrap_or_default(),
            req.parent.as_ref(),
        )),
        AuthKind::HighValue => None,
    }
}

/// Serde helpers for secret strings: the explicit opt-in to put a secret on the wire.
pub mod secret_serde {
    use agentkeys_secmem::SecretString;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes the secret as a JSON string.
    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        // Exposed only to build the wire body of a session grant (decision 69).
        s.serialize_str(v.expose_secret())
    }

    /// Deserializes a JSON string straight into a secret, without an extra copy.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::from)
    }
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Health {
    /// Always `"ok"` when the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// `GET /v1/ready`: the server can serve (its database answers, with every migration of
/// this version applied). A server that is not ready answers 503 with the error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Readiness {
    /// Always `"ready"` in a 200 answer.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Migrations applied.
    pub migrations: u32,
}

/// `GET /v1/server-info`: what a client needs to seal to the server and verify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// The X25519 shielding public key credentials are sealed to (base64, 32 bytes).
    pub shielding_public_key: String,
    /// The Ed25519 key decisions are signed with (base64, 32 bytes); daemons pin it.
    pub signing_public_key: String,
    /// Ed25519 signature (base64) by `signing_public_key` over
    /// [`shielding_key_signing_bytes`]: clients verify it against their pinned key before
    /// sealing anything to `shielding_public_key`.
    pub shielding_key_signature: String,
    /// The HPKE suite, for humans and future negotiation.
    pub hpke_suite: String,
}

/// The kind of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A human master's session (`akm_` token).
    Master,
    /// An agent's child session (`aka_` token).
    Agent,
}

/// `POST /v1/sessions`: the enrolment credential. No `Debug`: it is a secret.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// The enrolment credential the server's `--auth` mode checks.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    #[serde(with = "secret_serde")]
    pub auth_token: SecretString,
}

/// A session's metadata: never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionInfo {
    /// The session's id (not a secret; used to revoke it).
    pub session_id: String,
    /// The account the session acts as.
    pub wallet: Wallet,
    /// Master or agent.
    pub kind: SessionKind,
    /// What the session may touch.
    pub scope: Scope,
    /// The master that owns this agent, for agent sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Wallet>,
    /// When it was created.
    pub created_at: UnixSeconds,
    /// When it stops working.
    pub expires_at: UnixSeconds,
}

/// `GET /v1/session/state`: everything about the caller's session that decides what a
/// daemon may hold (decision 86): its scope and expiry, each credential it may use
/// with its policy, binding and value version, and its live standing approvals. The
/// `cursor` names this state; long-polled with it, the answer comes when any of it changes
/// (or the session is revoked: then 401). Ciphertext digests only, never a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionState {
    /// An opaque name of this state: ask again with it to wait for a change.
    pub cursor: String,
    /// What the session may touch now.
    pub scope: Scope,
    /// When the session stops working.
    pub expires_at: UnixSeconds,
    /// The credentials the session may use (as `GET /v1/credentials` lists them), with
    /// what identifies each one's current value.
    pub credentials: Vec<CredentialState>,
    /// The standing approvals live for this agent (an agent session; empty for a master).
    pub standing_approvals: Vec<StandingState>,
}

/// One credential in a [`SessionState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CredentialState {
    /// The owner.
    pub agent: Wallet,
    /// The name.
    pub service: ServiceName,
    /// Its policy.
    pub policy: Policy,
    /// Where the egress proxy may send it, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// Changes whenever a value is stored again (16 bytes of SHA-256 of the stored
    /// ciphertext, hex): a value held from before no longer holds.
    pub version: String,
}

/// One standing approval in a [`SessionState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StandingState {
    /// Its id (`sta_…`).
    pub id: String,
    /// The credential's owner.
    pub owner: Wallet,
    /// The credential.
    pub service: ServiceName,
    /// When it ends.
    pub expires_at: UnixSeconds,
}

/// A freshly minted session: the token and its metadata. No `Debug`: it holds the token.
/// A response (and the sealed pairing payload), so it tolerates fields added later.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionGrant {
    /// The bearer token (`akm_…` or `aka_…`).
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    #[serde(with = "secret_serde")]
    pub token: SecretString,
    /// Its metadata.
    pub session: SessionInfo,
}

/// `POST /v1/sessions/revoke`. With neither field, the caller's own session is revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Revoke this one session (the caller's own, or one of a wallet it owns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Revoke every session of this wallet (the caller's own, or a child agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet: Option<Wallet>,
}

/// The answer to a revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevokeResponse {
    /// How many live sessions were revoked.
    pub revoked: u64,
}

/// One child agent, as `GET /v1/agents` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentInfo {
    /// The agent's wallet.
    pub wallet: Wallet,
    /// Its scope.
    pub scope: Scope,
    /// When it was paired.
    pub created_at: UnixSeconds,
    /// When one of its sessions was last used.
    #[serde(default)]
    pub last_used_at: Option<UnixSeconds>,
    /// How many of its sessions are live.
    pub active_sessions: u64,
    /// Aliases and e-mails linked to it.
    #[serde(default)]
    pub identities: Vec<String>,
}

/// `GET /v1/agents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentList {
    /// The caller's child agents.
    pub agents: Vec<AgentInfo>,
}

/// `DELETE /v1/agents/{wallet}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TeardownResponse {
    /// Sessions revoked.
    pub revoked_sessions: u64,
    /// Credentials deleted.
    pub deleted_credentials: u64,
}

/// A credential's policy: `{"high_value": bool}` (absent or `null`: false).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Reading it needs a human approval each time (decision 72).
    #[serde(default, deserialize_with = "null_as_false")]
    pub high_value: bool,
    /// With `high_value`: the approval must be a passkey assertion on the approval page;
    /// a bearer-session approval (`agentkeys approve`) is refused. Written only when set,
    /// so a policy without it reads as it always did.
    #[serde(
        default,
        deserialize_with = "null_as_false",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub require_passkey: bool,
}

/// An optional flag: `null` reads like an absent field (false).
fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `POST /v1/credentials`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StoreCredentialRequest {
    /// Whose credential (default: the caller's own wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Wallet>,
    /// Its name.
    pub service: ServiceName,
    /// The value sealed to the shielding key (HPKE, info [`HPKE_INFO_STORE`], aad
    /// [`credential_aad`]), base64. Ciphertext only, so `Debug` is harmless.
    pub sealed_value: String,
    /// Policy to set; when absent an existing policy is kept (new credentials: normal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Binding to set (masters only); when absent an existing binding is kept (new
    /// credentials: none). Remove one with `PUT …/binding` and `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

/// `PUT /v1/credentials/{agent}/{service}/binding` (masters): `{"binding": {…}}` sets,
/// `{"binding": null}` removes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SetBindingRequest {
    /// The new binding, or `null`.
    pub binding: Option<Binding>,
}

/// One credential's metadata, never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CredentialInfo {
    /// The owner.
    pub agent: Wallet,
    /// The name.
    pub service: ServiceName,
    /// Its policy.
    pub policy: Policy,
    /// Where the egress proxy may send it, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// When it was first stored.
    pub created_at: UnixSeconds,
    /// When its value last changed.
    pub updated_at: UnixSeconds,
}

/// `GET /v1/credentials`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CredentialList {
    /// The credentials the caller may see, scope-filtered.
    pub credentials: Vec<CredentialInfo>,
}

/// `POST /v1/credentials/read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReadCredentialRequest {
    /// Whose credential (default: the caller's own wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Wallet>,
    /// Its name.
    pub service: ServiceName,
    /// A fresh X25519 public key (base64) the value is sealed to.
    pub recipient_public_key: String,
}

/// The answer to a read: ciphertext only, signed by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReadCredentialResponse {
    /// The owner the value was found under (the caller's wallet, or its master's).
    pub agent: Wallet,
    /// The name.
    pub service: ServiceName,
    /// HPKE-sealed to the request's key (info [`HPKE_INFO_READ`], aad [`credential_aad`]).
    pub sealed_value: String,
    /// The credential's policy at the time of this read (a daemon never caches a
    /// high-value credential).
    pub policy: Policy,
    /// The credential's binding as JSON text (a [`Binding`]), when it has one: signed as
    /// these exact bytes, then parsed by the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// Ed25519 signature (base64) by the server's signing key over [`read_signing_bytes`].
    pub signature: String,
}

/// The kind of an auth request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// A new daemon asks to become a child agent.
    Pair,
    /// A daemon asks for a new session for an existing agent identity.
    Recover,
    /// A session asks for one release of a high-value credential.
    HighValue,
}

impl AuthKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Pair => "pair",
            AuthKind::Recover => "recover",
            AuthKind::HighValue => "high_value",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pair" => Some(AuthKind::Pair),
            "recover" => Some(AuthKind::Recover),
            "high_value" => Some(AuthKind::HighValue),
            _ => None,
        }
    }
}

/// Where an auth request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthStatus {
    /// Waiting for a master.
    Pending,
    /// Approved; for pair/recover the decision carries the sealed session.
    Approved,
    /// Denied.
    Denied,
    /// Not decided in time.
    Expired,
    /// Approved and already used (the session was delivered, or the grant spent).
    Consumed,
}

impl AuthStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Pending => "pending",
            AuthStatus::Approved => "approved",
            AuthStatus::Denied => "denied",
            AuthStatus::Expired => "expired",
            AuthStatus::Consumed => "consumed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(AuthStatus::Pending),
            "approved" => Some(AuthStatus::Approved),
            "denied" => Some(AuthStatus::Denied),
            "expired" => Some(AuthStatus::Expired),
            "consumed" => Some(AuthStatus::Consumed),
            _ => None,
        }
    }
}

/// `POST /v1/auth-requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OpenAuthRequest {
    /// What is asked.
    pub kind: AuthKind,
    /// Pair/recover: the daemon's X25519 public key (base64) the session is sealed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_public_key: Option<String>,
    /// Recover: the agent's wallet, or an alias or e-mail its master linked (then `parent`
    /// names that master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Pair: the master (wallet) the request is addressed to; no other master sees it.
    /// Recover: the master whose aliases and e-mails `identity` is looked up among.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Wallet>,
    /// High-value: whose credential (default: the caller's wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Wallet>,
    /// High-value: which credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    /// Free text shown to the approving master (e.g. the daemon's host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What opening an auth request returns (also inside `APPROVAL_REQUIRED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthRequestTicket {
    /// The request id (polled for the decision).
    pub id: String,
    /// The code the master types: `ABCD-EFGH`.
    pub pair_code: String,
    /// The 6-digit OTP both sides show, to compare.
    pub otp: String,
    /// The nonce the OTP is derived from (base64), so the requester can recompute it.
    pub nonce: String,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// The approval page for it, where the server serves one (high-value requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_url: Option<String>,
}

/// `GET /v1/auth-requests/by-code/{code}`: what a master is asked to approve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthRequestView {
    /// The request id.
    pub id: String,
    /// What is asked.
    pub kind: AuthKind,
    /// The pair code.
    pub pair_code: String,
    /// The OTP to compare with the one the requester shows.
    pub otp: String,
    /// Where it stands.
    pub status: AuthStatus,
    /// When it was opened.
    pub created_at: UnixSeconds,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// Recover/high-value: the agent concerned.
    #[serde(default)]
    pub agent: Option<Wallet>,
    /// High-value: the credential concerned.
    #[serde(default)]
    pub service: Option<ServiceName>,
    /// High-value: the session that asked.
    #[serde(default)]
    pub requested_by: Option<Wallet>,
    /// The requester's free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Recover/high-value: the aliases and e-mails the master linked to `agent` (the
    /// inbox fills it; `by-code` leaves it empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_names: Vec<String>,
    /// The approval page for this request, where the server serves one (it knows its
    /// public URL) and the request can be decided there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_url: Option<String>,
}

/// `GET /v1/auth-requests`: the master's inbox of pending requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthRequestList {
    /// Pending, unexpired requests this master may decide, oldest first: pair requests
    /// addressed to it, recover and high-value requests about it or its agents.
    pub requests: Vec<AuthRequestView>,
    /// Opaque; pass it back as `cursor` to wait until the list changes.
    pub cursor: String,
}

/// `POST /v1/auth-requests/{id}/approve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Pair: the scope the new agent gets (default: no services, read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// High-value: also let the asking agent read this credential without asking again
    /// for this many minutes (1 to 480): a standing approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u32>,
}

/// The longest standing approval, in minutes (8 h).
pub const MAX_STANDING_MINUTES: u32 = 480;

/// A standing approval: one agent may read one credential without asking, until
/// `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StandingApprovalInfo {
    /// Its id (`sta_…`), named in the audit of every release under it.
    pub id: String,
    /// The agent whose sessions may read.
    pub agent: Wallet,
    /// The credential's owner.
    pub owner: Wallet,
    /// The credential.
    pub service: ServiceName,
    /// The request whose approval made it.
    pub request_id: String,
    /// `session` (a master's bearer session) or `passkey` (the approval page).
    pub via: String,
    /// When it was granted.
    pub created_at: UnixSeconds,
    /// When it ends.
    pub expires_at: UnixSeconds,
}

/// `GET /v1/standing-approvals`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StandingApprovalList {
    /// The caller's live standing approvals, soonest to end first.
    pub approvals: Vec<StandingApprovalInfo>,
}

/// `POST /v1/standing-approvals/{id}/revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevokeStandingResponse {
    /// The approval ended.
    pub id: String,
}

/// `POST /v1/passkeys/registrations`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StartPasskeyRegistration {
    /// A name to tell the passkey apart (`phone`, `yubikey`); default `passkey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The one-time link that registers a passkey for the master whose session asked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PasskeyRegistrationTicket {
    /// Open it in the browser that holds (or makes) the passkey. Single use.
    pub url: String,
    /// When the link stops working.
    pub expires_at: UnixSeconds,
}

// The link's fragment is a live registration token: `Debug` leaves it out.
impl std::fmt::Debug for PasskeyRegistrationTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let page = self.url.split('#').next().unwrap_or_default();
        f.debug_struct("PasskeyRegistrationTicket")
            .field("url", &format_args!("{page}#[REDACTED]"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A registered passkey (never its key material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PasskeyInfo {
    /// Its id (`pk_…`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The WebAuthn credential id, base64url.
    pub credential_id: String,
    /// When it was registered.
    pub created_at: UnixSeconds,
    /// When it last approved something.
    #[serde(default)]
    pub last_used_at: Option<UnixSeconds>,
}

/// `DELETE /v1/passkeys/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemovedPasskey {
    /// The passkey removed.
    pub id: String,
}

/// `GET /v1/passkeys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PasskeyList {
    /// The caller's passkeys, oldest first.
    pub passkeys: Vec<PasskeyInfo>,
}

/// The answer to approve/deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DecideResponse {
    /// The request id.
    pub id: String,
    /// The new status.
    pub status: AuthStatus,
    /// Pair/recover: the agent wallet the session was minted for.
    #[serde(default)]
    pub agent: Option<Wallet>,
}

/// `GET /v1/auth-requests/{id}/decision`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Decision {
    /// The request id.
    pub id: String,
    /// Where it stands.
    pub status: AuthStatus,
    /// Pair/recover, approved: a [`SessionGrant`] as JSON, HPKE-sealed to the requester's
    /// key (info [`HPKE_INFO_SESSION`], aad = the request id), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_session: Option<String>,
    /// Ed25519 signature (base64) over [`decision_signing_bytes`], for final decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What an audit event records: the server writes exactly these `action` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// `session.create`: an enrolment (outcome `ok`, or `UNAUTHORIZED` for a refused token).
    SessionCreate,
    /// `session.revoke`: one session or every session of a wallet revoked.
    SessionRevoke,
    /// `credential.store`: a value stored or replaced (or refused: the outcome says why).
    CredentialStore,
    /// `credential.read`: a value released (or refused: the outcome says why).
    CredentialRead,
    /// `policy.set`: a credential made high-value or normal.
    PolicySet,
    /// `scope.set`: an agent's scope replaced.
    ScopeSet,
    /// `agent.teardown`: an agent's sessions revoked and credentials deleted.
    AgentTeardown,
    /// `auth.open`: a pair, recover or high-value request opened.
    AuthOpen,
    /// `auth.approve`: a request approved.
    AuthApprove,
    /// `auth.deny`: a request denied.
    AuthDeny,
    /// `identity.link`: an alias or e-mail linked to a wallet.
    IdentityLink,
    /// `trail.anchor`: a daemon anchored the head of its own audit trail.
    TrailAnchor,
    /// `binding.set`: a credential bound to hosts for the egress proxy, or unbound.
    BindingSet,
    /// `passkey.add`: a master registered a passkey (detail: its id, name, credential id
    /// and public key).
    PasskeyAdd,
    /// `passkey.remove`: a master removed a passkey.
    PasskeyRemove,
    /// `approval.revoke`: a standing approval ended before its time.
    ApprovalRevoke,
}

impl AuditAction {
    /// Every action, in the order the docs list them.
    pub const ALL: [AuditAction; 16] = [
        AuditAction::SessionCreate,
        AuditAction::SessionRevoke,
        AuditAction::CredentialStore,
        AuditAction::CredentialRead,
        AuditAction::PolicySet,
        AuditAction::ScopeSet,
        AuditAction::AgentTeardown,
        AuditAction::AuthOpen,
        AuditAction::AuthApprove,
        AuditAction::AuthDeny,
        AuditAction::IdentityLink,
        AuditAction::TrailAnchor,
        AuditAction::BindingSet,
        AuditAction::PasskeyAdd,
        AuditAction::PasskeyRemove,
        AuditAction::ApprovalRevoke,
    ];

    /// The wire name (`credential.read`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::SessionCreate => "session.create",
            AuditAction::SessionRevoke => "session.revoke",
            AuditAction::CredentialStore => "credential.store",
            AuditAction::CredentialRead => "credential.read",
            AuditAction::PolicySet => "policy.set",
            AuditAction::ScopeSet => "scope.set",
            AuditAction::AgentTeardown => "agent.teardown",
            AuditAction::AuthOpen => "auth.open",
            AuditAction::AuthApprove => "auth.approve",
            AuditAction::AuthDeny => "auth.deny",
            AuditAction::IdentityLink => "identity.link",
            AuditAction::TrailAnchor => "trail.anchor",
            AuditAction::BindingSet => "binding.set",
            AuditAction::PasskeyAdd => "passkey.add",
            AuditAction::PasskeyRemove => "passkey.remove",
            AuditAction::ApprovalRevoke => "approval.revoke",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One audit event, as the server's hash chain stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When it happened.
    pub ts: UnixSeconds,
    /// Who acted (a wallet, or `-` for anonymous requests).
    pub actor: String,
    /// The agent concerned, if any.
    #[serde(default)]
    pub agent: Option<String>,
    /// The service concerned, if any.
    #[serde(default)]
    pub service: Option<String>,
    /// What was done: one of [`AuditAction`]'s names (`credential.read`, `auth.approve` …).
    pub action: String,
    /// `ok`, or the error code.
    pub outcome: String,
    /// Free text, never secret.
    #[serde(default)]
    pub detail: Option<String>,
    /// The previous event's chain hash (hex; 64 zeros for the first event), so a client
    /// can recompute this event's `hash` (docs/api.md gives the formula).
    pub prev_hash: String,
    /// This event's chain hash (hex).
    pub hash: String,
}

/// `GET /v1/audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditList {
    /// Newest first.
    pub events: Vec<AuditEvent>,
}

/// `GET /v1/audit/verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditVerify {
    /// True when every link holds.
    pub ok: bool,
    /// How many events were checked.
    pub checked: u64,
    /// The first event whose hash does not match, if any.
    #[serde(default)]
    pub first_broken_seq: Option<i64>,
    /// Why it is broken.
    #[serde(default)]
    pub reason: Option<String>,
    /// The hash of the last event (hex), to pin externally.
    #[serde(default)]
    pub head_hash: Option<String>,
}

/// `POST /v1/audit/anchor`: a daemon records the head of its own trail in the server's
/// audit log, so a trail truncated or rewritten later no longer matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AnchorRequest {
    /// The trail's last line number.
    pub seq: u64,
    /// That line's hash (64 lower-case hex digits).
    pub hash: String,
}

impl AnchorRequest {
    /// The `detail` of the `trail.anchor` audit event an anchor becomes: `seq=<n> hash=<hex>`.
    pub fn detail(&self) -> String {
        format!("seq={} hash={}", self.seq, self.hash)
    }

    /// The anchor a `trail.anchor` event's `detail` records.
    pub fn from_detail(detail: &str) -> Option<AnchorRequest> {
        let (seq, hash) = detail.strip_prefix("seq=")?.split_once(" hash=")?;
        Some(AnchorRequest {
            seq: seq.parse().ok()?,
            hash: hash.to_owned(),
        })
    }
}

/// The answer to an anchor: the audit event it became.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AnchorResponse {
    /// The event's position in the server's chain.
    pub audit_seq: i64,
}

/// `POST /v1/identities`: link an alias or e-mail to a wallet the caller owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkIdentityRequest {
    /// The wallet (the caller's own, or one of its agents).
    pub wallet: Wallet,
    /// An alias (`[a-z0-9][a-z0-9._-]{0,63}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// An e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// An identity link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Identity {
    /// `alias` or `email`.
    pub kind: String,
    /// The alias or address.
    pub value: String,
    /// The wallet it names.
    pub wallet: Wallet,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(v: &T) {
        let json = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, v, "{json}");
    }

    fn wallet() -> Wallet {
        Wallet::from_bytes(&[7; 20])
    }

    fn service() -> ServiceName {
        ServiceName::parse("openai").unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&Health {
            status: "ok".into(),
            version: "1".into(),
        });
        round_trip(&ServerInfo {
            version: "1".into(),
            shielding_public_key: "a".into(),
            signing_public_key: "b".into(),
            shielding_key_signature: "g".into(),
            hpke_suite: "s".into(),
        });
        let info = SessionInfo {
            session_id: "s1".into(),
            wallet: wallet(),
            kind: SessionKind::Agent,
            scope: Scope::all(),
            parent: Some(wallet()),
            created_at: 1,
            expires_at: 2,
        };
        round_trip(&info);
        round_trip(&SessionState {
            cursor: "c".into(),
            scope: Scope::all(),
            expires_at: 2,
            credentials: vec![CredentialState {
                agent: wallet(),
                service: ServiceName::parse("openai").unwrap(),
                policy: Policy::default(),
                binding: crate::binding::well_known("openai"),
                version: "ab".into(),
            }],
            standing_approvals: vec![StandingState {
                id: "sta_1".into(),
                owner: wallet(),
                service: ServiceName::parse("openai").unwrap(),
                expires_at: 3,
            }],
        });
        round_trip(&RevokeRequest {
            session_id: None,
            wallet: Some(wallet()),
        });
        round_trip(&RevokeResponse { revoked: 3 });
        round_trip(&AgentList {
            agents: vec![AgentInfo {
                wallet: wallet(),
                scope: Scope::none(),
                created_at: 1,
                last_used_at: None,
                active_sessions: 0,
                identities: vec!["bot".into()],
            }],
        });
        round_trip(&TeardownResponse {
            revoked_sessions: 1,
            deleted_credentials: 2,
        });
        round_trip(&StoreCredentialRequest {
            agent: None,
            service: service(),
            sealed_value: "x".into(),
            policy: Some(Policy {
                high_value: true,
                ..Policy::default()
            }),
            binding: crate::binding::well_known("openai"),
        });
        round_trip(&SetBindingRequest { binding: None });
        round_trip(&CredentialList {
            credentials: vec![CredentialInfo {
                agent: wallet(),
                service: service(),
                policy: Policy::default(),
                binding: crate::binding::well_known("github"),
                created_at: 1,
                updated_at: 2,
            }],
        });
        round_trip(&ReadCredentialRequest {
            agent: Some(wallet()),
            service: service(),
            recipient_public_key: "k".into(),
        });
        round_trip(&ReadCredentialResponse {
            agent: wallet(),
            service: service(),
            sealed_value: "c".into(),
            policy: Policy {
                high_value: true,
                ..Policy::default()
            },
            binding: Some("{}".into()),
            signature: "s".into(),
        });
        round_trip(&OpenAuthRequest {
            kind: AuthKind::Recover,
            requester_public_key: Some("k".into()),
            identity: Some("bot".into()),
            parent: Some(wallet()),
            agent: None,
            service: None,
            description: Some("host".into()),
        });
        let ticket = AuthRequestTicket {
            id: "r".into(),
            pair_code: "ABCD-EFGH".into(),
            otp: "123456".into(),
            nonce: "n".into(),
            expires_at: 9,
            approve_url: Some("https://keys.example/approve/ABCD-EFGH".into()),
        };
        round_trip(&ticket);
        round_trip(&AuthRequestView {
            id: "r".into(),
            kind: AuthKind::HighValue,
            pair_code: "ABCD-EFGH".into(),
            otp: "1".into(),
            status: AuthStatus::Pending,
            created_at: 1,
            expires_at: 2,
            agent: Some(wallet()),
            service: Some(service()),
            requested_by: Some(wallet()),
            description: None,
            agent_names: vec!["bot".into()],
            approve_url: None,
        });
        round_trip(&ApproveRequest {
            scope: Some(Scope::all()),
            minutes: Some(30),
        });
        round_trip(&DecideResponse {
            id: "r".into(),
            status: AuthStatus::Denied,
            agent: None,
        });
        round_trip(&Decision {
            id: "r".into(),
            status: AuthStatus::Approved,
            sealed_session: Some("s".into()),
            signature: Some("g".into()),
        });
        round_trip(&AuditList {
            events: vec![AuditEvent {
                seq: 1,
                ts: 2,
                actor: "-".into(),
                agent: None,
                service: Some("openai".into()),
                action: "read".into(),
                outcome: "ok".into(),
                detail: None,
                prev_hash: "00".into(),
                hash: "00".into(),
            }],
        });
        round_trip(&AuditVerify {
            ok: false,
            checked: 3,
            first_broken_seq: Some(2),
            reason: Some("hash mismatch".into()),
            head_hash: None,
        });
        round_trip(&AnchorRequest {
            seq: 3,
            hash: "ab".into(),
        });
        round_trip(&AnchorResponse { audit_seq: 9 });
        round_trip(&LinkIdentityRequest {
            wallet: wallet(),
            alias: Some("bot".into()),
            email: None,
        });
        round_trip(&Identity {
            kind: "alias".into(),
            value: "bot".into(),
            wallet: wallet(),
        });
        for k in [AuthKind::Pair, AuthKind::Recover, AuthKind::HighValue] {
            assert_eq!(AuthKind::parse(k.as_str()), Some(k));
        }
        for s in [
            AuthStatus::Pending,
            AuthStatus::Approved,
            AuthStatus::Denied,
            AuthStatus::Expired,
            AuthStatus::Consumed,
        ] {
            assert_eq!(AuthStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn a_session_grant_carries_the_token_only_on_the_wire() {
        let grant = SessionGrant {
            token: SecretString::from_str_copy("akm_canary-token"),
            session: SessionInfo {
                session_id: "s".into(),
                wallet: wallet(),
                kind: SessionKind::Master,
                scope: Scope::all(),
                parent: None,
                created_at: 1,
                expires_at: 2,
            },
        };
        let json = serde_json::to_string(&grant).unwrap();
        let back: SessionGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.token.expose_secret(), "akm_canary-token");
        assert!(!format!("{:?}", back.token).contains("canary"));
    }

    #[test]
    fn responses_tolerate_fields_a_newer_server_adds() {
        let body = r#"{"error":{"code":"DENIED","message":"m","trace_id":"x"},"extra":1}"#;
        assert!(serde_json::from_str::<crate::ErrorBody>(body).is_ok());
    }

    #[test]
    fn a_null_flag_reads_like_an_absent_one() {
        let p: Policy = serde_json::from_str(r#"{"high_value": null}"#).unwrap();
        assert!(!p.high_value);
        let p: Policy = serde_json::from_str("{}").unwrap();
        assert!(!p.high_value);
        assert!(serde_json::from_str::<Policy>(r#"{"high_value": "yes"}"#).is_err());
    }

    #[test]
    fn request_bodies_reject_unknown_fields() {
        let body = r#"{"service":"openai","sealed_value":"x","extra":1}"#;
        assert!(serde_json::from_str::<StoreCredentialRequest>(body).is_err());
        let body = r#"{"service":"openai","recipient_public_key":"k","agent":"0x1"}"#;
        assert!(serde_json::from_str::<ReadCredentialRequest>(body).is_err());
        assert!(
            serde_json::from_str::<CreateSessionRequest>(r#"{"auth_token":"t","x":1}"#).is_err()
        );
    }

    #[test]
    fn signing_bytes_separate_their_fields() {
        let a = decision_signing_bytes("ab", AuthStatus::Approved, b"c");
        let b = decision_signing_bytes("a", AuthStatus::Approved, b"bc");
        assert_ne!(a, b);
        assert!(a.starts_with(DECISION_SIGNING_CONTEXT));
        let x = auth_request_canonical_bytes(AuthKind::Pair, b"k1", "");
        let y = auth_request_canonical_bytes(AuthKind::Recover, b"k1", "");
        assert_ne!(x, y);
    }

    #[test]
    fn a_registration_ticket_never_debug_prints_its_token() {
        let t = PasskeyRegistrationTicket {
            url: "https://keys.example/passkey/add#s3cr3t-token".into(),
            expires_at: 1,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cr3t-token"), "{shown}");
        assert!(
            shown.contains("https://keys.example/passkey/add#[REDACTED]"),
            "{shown}"
        );
    }

    #[test]
    fn a_policy_without_require_passkey_reads_and_writes_as_before() {
        let high = Policy {
            high_value: true,
            ..Policy::default()
        };
        assert_eq!(
            serde_json::to_value(high).unwrap(),
            serde_json::json!({"high_value": true})
        );
        let strict = Policy {
            high_value: true,
            require_passkey: true,
        };
        assert_eq!(
            serde_json::to_value(strict).unwrap(),
            serde_json::json!({"high_value": true, "require_passkey": true})
        );
        round_trip(&strict);
        let parsed: Policy =
            serde_json::from_str(r#"{"high_value": true, "require_passkey": null}"#).unwrap();
        assert_eq!(parsed, high);
        // The passkey bit is signed: a read answer cannot drop it.
        assert_ne!(
            read_signing_bytes(b"k", b"a", b"v", high, None),
            read_signing_bytes(b"k", b"a", b"v", strict, None)
        );
    }

    #[test]
    fn read_signing_bytes_bind_key_aad_value_and_policy() {
        let normal = Policy {
            high_value: false,
            ..Policy::default()
        };
        let high = Policy {
            high_value: true,
            ..Policy::default()
        };
        let base = read_signing_bytes(b"k", b"a", b"v", normal, None);
        assert!(base.starts_with(READ_SIGNING_CONTEXT));
        assert_ne!(base, read_signing_bytes(b"k", b"a", b"v", high, None));
        assert_ne!(base, read_signing_bytes(b"k2", b"a", b"v", normal, None));
        assert_ne!(base, read_signing_bytes(b"k", b"av", b"", normal, None));
        // A binding changes the context and is a part of its own: it cannot be stripped,
        // added or moved into another field.
        let bound = read_signing_bytes(b"k", b"a", b"v", normal, Some("{}"));
        assert!(bound.starts_with(BOUND_READ_SIGNING_CONTEXT));
        assert_ne!(base, bound);
        assert_ne!(
            bound,
            read_signing_bytes(b"k", b"a", b"v", normal, Some("{ }"))
        );
        assert_ne!(
            bound,
            read_signing_bytes(b"k", b"a", b"v{}", normal, Some(""))
        );
        assert_ne!(
            shielding_key_signing_bytes(b"x"),
            decision_signing_bytes("", AuthStatus::Approved, b"x")
        );
    }

    #[test]
    fn an_anchor_reads_back_from_the_detail_it_writes() {
        let anchor = AnchorRequest {
            seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(anchor.detail(), format!("seq=42 hash={}", "ab".repeat(32)));
        assert_eq!(AnchorRequest::from_detail(&anchor.detail()), Some(anchor));
        assert_eq!(AnchorRequest::from_detail("seq=x hash=ab"), None);
        assert_eq!(AnchorRequest::from_detail("hash=ab seq=1"), None);
    }

    #[test]
    fn audit_action_names_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("read"), None);
    }

    #[test]
    fn otp_subjects_name_what_each_request_is_about() {
        let w = wallet();
        assert_eq!(pair_subject(None), "");
        assert_eq!(pair_subject(Some(&w)), w.to_string());
        assert_eq!(recover_subject(" Bot ", None), "bot");
        assert_eq!(
            recover_subject("Bot@X.org", Some(&w)),
            format!("{w}/bot@x.org")
        );
        assert_eq!(high_value_subject(&w, &service()), format!("{w}/openai"));
    }

    #[test]
    fn credential_aad_binds_owner_and_service() {
        let a = credential_aad(&wallet(), &service());
        assert!(a.ends_with(b"\0openai"));
    }
}
