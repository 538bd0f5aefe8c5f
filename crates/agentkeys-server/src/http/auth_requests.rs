//! Auth requests (decisions 71 and 72): pair and recover (a daemon asks for a
//! session, sealed to its key) and high-value releases (a session asks for one read).
//! Single-use; pair/recover live 60 s, high-value 300 s; decisions are signed.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::crypto::{hpke, pairing, random_array, sha256};
use agentkeys_types::api::{
    ApproveRequest, AuthKind, AuthRequestList, AuthRequestTicket, AuthRequestView, AuthStatus,
    DecideResponse, Decision, HPKE_INFO_SESSION, MAX_STANDING_MINUTES, OpenAuthRequest,
    SessionGrant, SessionInfo, SessionKind, auth_request_canonical_bytes, decision_signing_bytes,
};
use agentkeys_types::names::AGENT_TOKEN_PREFIX;
use agentkeys_types::{ErrorCode, Scope, ServiceName, UnixSeconds, Wallet};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller, ClientAddr, authenticate};
use super::{EventExt as _, b64e, event, new_id, new_token, new_wallet, owns, record, x25519_key};
use crate::state::AppState;
use crate::store::{
    Account, Approval, AuthRequestRecord, DecideOutcome, NewSession, StandingApproval, Store,
    StoreError,
};
use agentkeys_types::api::AuditAction;

/// The ticket a requester gets for a stored request. A high-value ticket names the
/// approval page, for the requester to pass on to its human; pair and recover requesters
/// are anonymous daemons, whose master finds the request in the inbox.
pub(super) fn ticket<S: Store>(state: &AppState<S>, r: &AuthRequestRecord) -> AuthRequestTicket {
    AuthRequestTicket {
        approve_url: if r.kind == AuthKind::HighValue {
            approve_url(state, r)
        } else {
            None
        },
        id: r.id.clone(),
        pair_code: r.pair_code.clone(),
        otp: r.otp.clone(),
        nonce: b64e(&r.nonce),
        expires_at: r.expires_at,
    }
}

/// Who opens an auth request.
pub(super) enum Requester<'a> {
    /// A session (high-value releases).
    Session(&'a Caller),
    /// Nobody yet (pair, recover), optionally naming the master that is to approve.
    Anonymous {
        /// The master a pair request is addressed to (`agentkeys-daemon serve --parent`).
        addressed_to: Option<&'a Wallet>,
    },
}

/// What a request is about: the agent and service it names (recover: the agent the
/// identity resolved to, if any; high-value: the owner and service) and the OTP subject
/// the requester computes too (`auth_request_canonical_bytes`).
pub(super) struct Subject<'a> {
    pub(super) agent: Option<&'a Wallet>,
    pub(super) service: Option<&'a ServiceName>,
    pub(super) otp: String,
}

/// Creates and stores a request; retries on the (rare) pair-code collision.
/// The pending high-value request of `caller`'s session for `owner`'s `service`, or a new
/// one: a session asking again gets the same code, not a second request.
pub(super) async fn high_value_ticket<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    owner: &Wallet,
    service: &ServiceName,
    description: Option<String>,
) -> ApiResult<AuthRequestTicket> {
    let now = state.clock.now();
    match state
        .store
        .pending_high_value(&caller.session.id, owner, service, now)
        .await?
    {
        Some(r) => Ok(ticket(state, &r)),
        None => {
            open_request(
                state,
                AuthKind::HighValue,
                None,
                Subject {
                    agent: Some(owner),
                    service: Some(service),
                    otp: agentkeys_types::api::high_value_subject(owner, service),
                },
                Requester::Session(caller),
                description,
            )
            .await
        }
    }
}

pub(super) async fn open_request<S: Store>(
    state: &AppState<S>,
    kind: AuthKind,
    requester_key: Option<[u8; 32]>,
    subject: Subject<'_>,
    requester: Requester<'_>,
    description: Option<String>,
) -> ApiResult<AuthRequestTicket> {
    let Subject {
        agent,
        service,
        otp: otp_subject,
    } = subject;
    let (caller, addressed_to) = match requester {
        Requester::Session(c) => (Some(c), None),
        Requester::Anonymous { addressed_to } => (None, addressed_to),
    };
    let now = state.clock.now();
    let ttl = if kind == AuthKind::HighValue {
        state.config.high_value_ttl
    } else {
        state.config.pair_ttl
    };
    let nonce = random_array::<16>().to_vec();
    let canonical = auth_request_canonical_bytes(
        kind,
        requester_key.as_ref().map_or(&[][..], |k| &k[..]),
        &otp_subject,
    );
    let otp = pairing::otp(&nonce, &canonical);
    for _ in 0..5 {
        let rec = AuthRequestRecord {
            id: new_id("req_"),
            kind,
            pair_code: pairing::new_pair_code(),
            nonce: nonce.clone(),
            otp: otp.clone(),
            requester_key: requester_key.map(|k| k.to_vec()),
            agent: agent.cloned(),
            service: service.cloned(),
            // For a pair request, `requested_by` is the master it is addressed to.
            requested_by: caller.map(|c| c.wallet().clone()).or(addressed_to.cloned()),
            requested_session: caller.map(|c| c.session.id.clone()),
            description: description.clone(),
            status: AuthStatus::Pending,
            created_at: now,
            expires_at: now + ttl,
            decided_by: None,
            grant_expires_at: None,
            sealed_session: None,
            signature: None,
        };
        match state.store.insert_auth_request(&rec).await {
            Ok(()) => {
                // Inbox long-polls re-read.
                state.wake.opened();
                let actor = caller.map_or("-", |c| c.wallet().as_str());
                let mut e = event(actor, AuditAction::AuthOpen, "ok").detail(format!(
                    "{} {}",
                    kind.as_str(),
                    rec.id
                ));
                if let Some(a) = agent {
                    e = e.agent(a);
                }
                if let Some(s) = service {
                    e = e.service(s);
                }
                record(state, e).await?;
                return Ok(ticket(state, &rec));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal(&"could not allocate a free pair code"))
}

/// The live agent a recover request names: a wallet (of an agent of `parent`, when given),
/// or an alias or e-mail in `parent`'s namespace. `None` when nothing matches: the request
/// is then opened all the same and simply never shows to any master, so an anonymous
/// caller cannot tell names that exist from names that do not.
async fn recover_target<S: Store>(
    state: &AppState<S>,
    identity: &str,
    parent: Option<&Wallet>,
) -> ApiResult<Option<Wallet>> {
    let identity = agentkeys_types::api::normalize_identity(identity);
    let wallet = if identity.starts_with("0x") {
        Some(Wallet::parse(&identity).map_err(|_| {
            ApiError::bad_request("identity is not a wallet (0x and 40 lower-case hex digits)")
                .hint("name the agent by its wallet, or by an alias or e-mail with parent")
        })?)
    } else {
        let Some(parent) = parent else {
            return Err(ApiError::bad_request(
                "recovering by alias or e-mail needs parent, the master's wallet",
            )
            .hint("aliases and e-mails belong to one master: pass its wallet as parent"));
        };
        let kind = if identity.contains('@') {
            "email"
        } else {
            "alias"
        };
        state
            .store
            .resolve_identity(parent, kind, &identity)
            .await?
    };
    let Some(wallet) = wallet else {
        return Ok(None);
    };
    Ok(state
        .store
        .account(&wallet)
        .await?
        .filter(|a| {
            !a.is_master && a.parent.is_some() && (parent.is_none() || a.parent.as_ref() == parent)
        })
        .map(|a| a.wallet))
}

/// `POST /v1/auth-requests`: pair and recover are open to anyone (rate-limited);
/// high-value needs the session that will read.
pub(super) async fn open<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    address: ClientAddr,
    ApiJson(req): ApiJson<OpenAuthRequest>,
) -> ApiResult<(StatusCode, Json<AuthRequestTicket>)> {
    let description = req.description.map(|d| {
        d.chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect::<String>()
    });
    let ticket = match req.kind {
        AuthKind::Pair | AuthKind::Recover => {
            // Per client address and network, so one flooding client cannot lock every
            // daemon out, and server-wide, to bound the table and the audit log.
            super::limits::take_all(&state, super::limits::Door::Open, &address).await?;
            let key = req.requester_public_key.as_deref().ok_or_else(|| {
                ApiError::bad_request("requester_public_key is required for pair and recover")
                    .hint("send the X25519 public key (32 bytes, base64) the session is sealed to")
            })?;
            let key = x25519_key("requester_public_key", key)?;
            let parent = req.parent.as_ref();
            let (agent, otp) = match req.kind {
                AuthKind::Pair => {
                    if req.identity.is_some() {
                        return Err(ApiError::bad_request(
                            "a pair request names no identity; address it with parent",
                        )
                        .hint(
                            "parent is the master's wallet (0x…), as 'agentkeys whoami' shows it",
                        ));
                    }
                    // Addressed to whatever wallet is named, master or not, so the answer
                    // says nothing about which wallets exist.
                    (None, agentkeys_types::api::pair_subject(parent))
                }
                _ => {
                    let identity = req.identity.as_deref().ok_or_else(|| {
                        ApiError::bad_request("identity is required for recover").hint(
                            "name the agent by its wallet, or by an alias or e-mail with parent",
                        )
                    })?;
                    let agent = recover_target(&state, identity, parent).await?;
                    (
                        agent,
                        agentkeys_types::api::recover_subject(identity, parent),
                    )
                }
            };
            open_request(
                &state,
                req.kind,
                Some(key),
                Subject {
                    agent: agent.as_ref(),
                    service: None,
                    otp,
                },
                Requester::Anonymous {
                    // Only a pair request is addressed; a recover one shows to the master
                    // owning the agent it names.
                    addressed_to: parent.filter(|_| req.kind == AuthKind::Pair),
                },
                description,
            )
            .await?
        }
        AuthKind::HighValue => {
            let caller = authenticate(&state, &headers).await?;
            let service = req.service.as_ref().ok_or_else(|| {
                ApiError::bad_request("service is required for high_value")
                    .hint("name the high-value credential to be released")
            })?;
            let owner = super::credential_owner(&state, &caller, req.agent.as_ref()).await?;
            caller.require_in_scope(service)?;
            // The grant must name the owner the read will find, or it would never match.
            let cred =
                super::find_credential(&state, &caller, &owner, req.agent.is_some(), service)
                    .await?
                    .ok_or_else(|| {
                        ApiError::not_found(format!("no credential named {service}"))
                            .hint("list the credentials with 'agentkeys list'")
                    })?;
            if !cred.policy.high_value {
                return Err(ApiError::bad_request(format!(
                    "{service} is not high-value: read it without an approval"
                ))
                .hint("POST /v1/credentials/read releases it directly"));
            }
            high_value_ticket(&state, &caller, &cred.owner, service, description).await?
        }
    };
    Ok((StatusCode::CREATED, Json(ticket)))
}

/// Loads a request the master may see: pair requests are any master's to take; recover
/// and high-value ones only the owning master's. Others read as absent.
async fn visible<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    r: Option<AuthRequestRecord>,
) -> ApiResult<AuthRequestRecord> {
    caller.require_master()?;
    let not_found = || {
        ApiError::not_found("no such auth request")
            .hint("requests live 60 s (high-value: 300 s); ask the requester for a fresh one")
            .hint("check the code; codes expire after 60 s (high-value: 300 s)")
    };
    let r = r.ok_or_else(not_found)?;
    match (&r.kind, &r.agent) {
        // Addressed to one master: only that master sees it.
        (AuthKind::Pair, _)
            if r.requested_by
                .as_ref()
                .is_some_and(|p| p != caller.wallet()) =>
        {
            Err(not_found())
        }
        (AuthKind::Pair, _) => Ok(r),
        (_, Some(agent)) if owns(state, caller, agent).await? => Ok(r),
        _ => Err(not_found()),
    }
}

/// `GET /v1/auth-requests/by-code/{code}`.
pub(super) async fn by_code<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(code): Path<String>,
) -> ApiResult<Json<AuthRequestView>> {
    let code = pairing::normalize_pair_code(&code).ok_or_else(|| {
        ApiError::bad_request("a pair code is 8 characters like ABCD-EFGH")
            .hint("copy the code the requester shows; the dash is optional")
    })?;
    let r = visible(
        &state,
        &caller,
        state.store.auth_request_by_code(&code).await?,
    )
    .await?;
    Ok(Json(view(&state, r, state.clock.now(), Vec::new())))
}

/// What a master is shown of a request.
fn view<S: Store>(
    state: &AppState<S>,
    r: AuthRequestRecord,
    now: i64,
    agent_names: Vec<String>,
) -> AuthRequestView {
    // The page decides requests with a known master: not pairings addressed to nobody.
    let approve_url = match (r.kind, &r.requested_by) {
        (AuthKind::Pair, None) => None,
        _ => approve_url(state, &r),
    };
    AuthRequestView {
        approve_url,
        status: r.status_at(now),
        id: r.id,
        kind: r.kind,
        pair_code: r.pair_code,
        otp: r.otp,
        created_at: r.created_at,
        expires_at: r.expires_at,
        agent: r.agent,
        service: r.service,
        requested_by: r.requested_by,
        description: r.description,
        agent_names,
    }
}

/// A request as the approval page shows it: the inbox view, with the names `master`
/// gave the agent.
pub(super) async fn view_for_page<S: Store>(
    state: &AppState<S>,
    master: &Wallet,
    r: AuthRequestRecord,
) -> ApiResult<AuthRequestView> {
    let now = state.clock.now();
    let names = match &r.agent {
        Some(agent) if agent != master => state
            .store
            .list_agents(master, now)
            .await?
            .into_iter()
            .find(|a| &a.account.wallet == agent)
            .map(|a| a.identities)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(view(state, r, now, names))
}

/// Query of the inbox.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InboxQuery {
    /// Seconds to wait for the list to differ from `cursor` (0–60).
    #[serde(default)]
    wait: u64,
    /// The cursor of the list the caller last saw.
    #[serde(default)]
    cursor: Option<String>,
}

/// Names a list by the ids in it: a pending request does not change until it leaves it.
fn inbox_cursor(rows: &[AuthRequestRecord]) -> String {
    let mut ids = String::with_capacity(rows.len() * 40);
    for r in rows {
        ids.push_str(&r.id);
        ids.push('\n');
    }
    agentkeys_core::hex(&sha256(ids.as_bytes())[..16])
}

/// `GET /v1/auth-requests?cursor=&wait=`: the caller's inbox. With a cursor, it answers
/// once the list differs from the one the cursor names (a request opened, decided or
/// expired), or when `wait` seconds have passed: a watcher holds one request, not a
/// polling loop.
pub(super) async fn inbox<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<InboxQuery>,
) -> ApiResult<Json<AuthRequestList>> {
    caller.require_master()?;
    if q.wait > 60 {
        return Err(ApiError::bad_request("wait is 0 to 60 seconds")
            .hint("ask again with the cursor of the answer when it comes back unchanged"));
    }
    let permit = state.long_polls.try_acquire().ok();
    let wait = match (&permit, &q.cursor) {
        (Some(_), Some(_)) => q.wait,
        _ => 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        // Registered before the read, so a change in between is not missed.
        let notified = state.wake.inbox.notified();
        let now = state.clock.now();
        let rows = state.store.inbox(caller.wallet(), now).await?;
        let cursor = inbox_cursor(&rows);
        if q.cursor.as_deref() != Some(cursor.as_str())
            || tokio::time::Instant::now() >= deadline
            || state.stopping()
        {
            return Ok(Json(inbox_list(&state, &caller, rows, cursor, now).await?));
        }
        // Wake when the first of them expires, and, where other servers share the store,
        // every `decision_poll`.
        let first_expiry = rows.iter().map(|r| r.expires_at).min();
        let until = first_expiry.map_or(u64::MAX, |e| u64::try_from(e - now).unwrap_or(0) + 1);
        let at = tokio::time::Instant::now();
        let mut wake = deadline.min(at + Duration::from_secs(until.min(60)));
        if let Some(poll) = state.decision_poll {
            wake = wake.min(at + poll);
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The inbox's rows as views, with the names the master gave its agents.
async fn inbox_list<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rows: Vec<AuthRequestRecord>,
    cursor: String,
    now: i64,
) -> ApiResult<AuthRequestList> {
    let agents = if rows
        .iter()
        .any(|r| r.agent.as_ref().is_some_and(|a| a != caller.wallet()))
    {
        state.store.list_agents(caller.wallet(), now).await?
    } else {
        Vec::new()
    };
    let requests = rows
        .into_iter()
        .map(|r| {
            let names = r
                .agent
                .as_ref()
                .and_then(|w| agents.iter().find(|a| &a.account.wallet == w))
                .map(|a| a.identities.clone())
                .unwrap_or_default();
            view(state, r, now, names)
        })
        .collect();
    Ok(AuthRequestList { requests, cursor })
}

fn decided_error(outcome: DecideOutcome) -> ApiError {
    match outcome {
        DecideOutcome::AlreadyDecided => ApiError::new(
            ErrorCode::AlreadyConsumed,
            "this request was already decided",
        )
        .hint("each request is single-use; ask the requester to open a new one"),
        DecideOutcome::Expired => ApiError::new(
            ErrorCode::Expired,
            "this request expired before it was decided",
        )
        .hint("ask the requester for a fresh code"),
        DecideOutcome::NotFound | DecideOutcome::Decided | DecideOutcome::PasskeyRequired => {
            ApiError::not_found("no such auth request")
                .hint("requests live 60 s (high-value: 300 s); ask the requester for a fresh one")
        }
    }
}

/// Fails early when a request can no longer be decided (the store re-checks atomically).
pub(super) fn check_pending(r: &AuthRequestRecord, now: i64) -> ApiResult<()> {
    match r.status_at(now) {
        AuthStatus::Pending => Ok(()),
        AuthStatus::Expired => Err(decided_error(DecideOutcome::Expired)),
        _ => Err(decided_error(DecideOutcome::AlreadyDecided)),
    }
}

/// Mints an agent session and seals its grant to the requester.
fn mint_sealed<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
    account: &Account,
    now: i64,
) -> ApiResult<(NewSession, Vec<u8>, Vec<u8>)> {
    let key: [u8; 32] = r
        .requester_key
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| ApiError::internal(&"pair request without a requester key"))?;
    let token = new_token(AGENT_TOKEN_PREFIX);
    let session = NewSession {
        id: new_id("ses_"),
        token_hash: sha256(token.expose_secret().as_bytes()),
        wallet: account.wallet.clone(),
        is_master: false,
        created_at: now,
        expires_at: now + state.config.agent_ttl,
    };
    let grant = SessionGrant {
        token,
        session: SessionInfo {
            session_id: session.id.clone(),
            wallet: account.wallet.clone(),
            kind: SessionKind::Agent,
            scope: account.scope.clone(),
            parent: account.parent.clone(),
            created_at: now,
            expires_at: session.expires_at,
        },
    };
    // Sized up front so serde never reallocates and strands a copy of the token.
    let mut json = zeroize::Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *json, &grant).map_err(|e| ApiError::internal(&e))?;
    let sealed = hpke::seal(&key, HPKE_INFO_SESSION, r.id.as_bytes(), &json)
        .map_err(|e| ApiError::internal(&e))?;
    let sig = state
        .keys
        .signing
        .sign(&decision_signing_bytes(
            &r.id,
            AuthStatus::Approved,
            &sealed,
        ))
        .to_vec();
    Ok((session, sealed, sig))
}

/// How an approval was made: by a master's bearer session (`agentkeys approve`), or by a
/// passkey assertion on the approval page (its audit text: which passkey signed what).
pub(super) enum Via {
    /// A bearer session.
    Session,
    /// A verified passkey assertion.
    Passkey {
        /// The audit detail: the passkey, the canonical request and the assertion.
        evidence: String,
    },
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::Passkey { .. } => "passkey",
        }
    }
}

/// `POST /v1/auth-requests/{id}/approve`.
pub(super) async fn approve<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApproveRequest>,
) -> ApiResult<Json<DecideResponse>> {
    let r = visible(&state, &caller, state.store.auth_request(&id).await?).await?;
    if r.kind == AuthKind::HighValue && needs_passkey(&state, &r).await? {
        return Err(passkey_required(&state, &r));
    }
    Ok(Json(
        approve_request(&state, &r, caller.wallet(), body, Via::Session).await?,
    ))
}

/// A session's approval of a release that needs a passkey: refused, naming the page.
fn passkey_required<S: Store>(state: &AppState<S>, r: &AuthRequestRecord) -> ApiError {
    let e = ApiError::denied(format!(
        "{} needs a passkey approval: a session cannot approve its release",
        r.service.as_ref().map_or("this credential", |s| s.as_str())
    ));
    match approve_url(state, r) {
        Some(url) => e.hint(format!("approve it with your passkey at {url}")),
        None => e.hint(
            "approve it with your passkey on the server's approval page \
             (the server needs --public-url to serve it)",
        ),
    }
}

/// Whether the credential a high-value request is about must be approved with a passkey.
pub(super) async fn needs_passkey<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
) -> ApiResult<bool> {
    let (Some(owner), Some(service)) = (&r.agent, &r.service) else {
        return Ok(false);
    };
    Ok(state
        .store
        .credential(owner, service)
        .await?
        .is_some_and(|c| c.policy.require_passkey))
}

/// The approval page of a request, where the server knows its public URL.
pub(super) fn approve_url<S: Store>(state: &AppState<S>, r: &AuthRequestRecord) -> Option<String> {
    state.passkeys.as_ref()?;
    let base = state.config.public_url.as_deref()?;
    Some(format!("{base}/approve/{}", r.pair_code))
}

/// Approves `r` as `approver` (who may decide it: the caller checked), with its side
/// effects, in one store transaction, then wakes the waiters and writes the audit row.
pub(super) async fn approve_request<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
    approver: &Wallet,
    body: ApproveRequest,
    via: Via,
) -> ApiResult<DecideResponse> {
    let now = state.clock.now();
    check_pending(r, now)?;
    if body.minutes.is_some() && r.kind != AuthKind::HighValue {
        return Err(ApiError::bad_request(
            "minutes (a standing approval) applies to high-value releases only",
        )
        .hint("approve a pairing or recovery without minutes"));
    }
    let (approval, agent) = match r.kind {
        AuthKind::Pair => pair_approval(state, r, approver, body, now)?,
        AuthKind::Recover => recover_approval(state, r, body, now).await?,
        AuthKind::HighValue => high_value_approval(state, r, approver, body, &via, now)?,
    };
    let outcome = state.store.approve(&r.id, approver, now, &approval).await?;
    match outcome {
        DecideOutcome::Decided => {}
        // The guard went up after the check above: the store saw it in its transaction.
        DecideOutcome::PasskeyRequired => return Err(passkey_required(state, r)),
        other => return Err(decided_error(other)),
    }
    state.wake.decided();
    // A recovery ends the agent's other sessions; a standing approval lets it hold more.
    if r.kind == AuthKind::Recover
        || matches!(
            &approval,
            Approval::HighValue {
                standing: Some(_),
                ..
            }
        )
    {
        state.state_changed(approver).await;
    }
    let mut e = event(approver.as_str(), AuditAction::AuthApprove, "ok")
        .detail(approval_detail(r, &approval, &via));
    if let Some(a) = &agent {
        e = e.agent(a);
    }
    if let Some(s) = &r.service {
        e = e.service(s);
    }
    record(state, e).await?;
    Ok(DecideResponse {
        id: r.id.clone(),
        status: AuthStatus::Approved,
        agent,
    })
}

/// A pairing's approval: a new agent account under `approver`, with the requested scope
/// (read-only and no services when none was given), and its first session sealed to the
/// requester.
fn pair_approval<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
    approver: &Wallet,
    body: ApproveRequest,
    now: UnixSeconds,
) -> ApiResult<(Approval, Option<Wallet>)> {
    let scope = body
        .scope
        .unwrap_or(Scope {
            services: Vec::new(),
            read_only: true,
        })
        .validated()
        .map_err(|e| {
            ApiError::bad_request(e.to_string())
                .hint("scope is {\"services\": [names or \"*\"], \"read_only\": bool}")
        })?;
    let account = Account {
        wallet: new_wallet(),
        is_master: false,
        parent: Some(approver.clone()),
        scope,
        created_at: now,
    };
    let (session, sealed_session, signature) = mint_sealed(state, r, &account, now)?;
    let wallet = account.wallet.clone();
    Ok((
        Approval::Pair {
            agent: account,
            session,
            sealed_session,
            signature,
        },
        Some(wallet),
    ))
}

/// A recovery's approval: a new session for the existing agent, sealed to the requester.
async fn recover_approval<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
    body: ApproveRequest,
    now: UnixSeconds,
) -> ApiResult<(Approval, Option<Wallet>)> {
    if body.scope.is_some() {
        return Err(ApiError::bad_request(
            "scope is set with 'agentkeys scope', not when recovering",
        )
        .hint("approve with an empty body, then change the scope if needed"));
    }
    let agent = r
        .agent
        .clone()
        .ok_or_else(|| ApiError::internal(&"recover request without agent"))?;
    let account = state.store.account(&agent).await?.ok_or_else(|| {
        ApiError::not_found("the agent no longer exists")
            .hint("it was torn down; pair a new daemon instead")
    })?;
    let (session, sealed_session, signature) = mint_sealed(state, r, &account, now)?;
    Ok((
        Approval::Recover {
            session,
            sealed_session,
            signature,
        },
        Some(agent),
    ))
}

/// A high-value release's approval: a one-time grant to the asking session, or, with
/// `minutes`, a standing approval instead.
fn high_value_approval<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
    approver: &Wallet,
    body: ApproveRequest,
    via: &Via,
    now: UnixSeconds,
) -> ApiResult<(Approval, Option<Wallet>)> {
    if body.scope.is_some() {
        return Err(
            ApiError::bad_request("a high-value approval takes no scope")
                .hint("approve with an empty body: it releases the credential once"),
        );
    }
    let standing = match body.minutes {
        None => None,
        Some(m) => Some(standing_approval(r, approver, m, via, now)?),
    };
    let signature = state
        .keys
        .signing
        .sign(&decision_signing_bytes(&r.id, AuthStatus::Approved, &[]))
        .to_vec();
    // A standing approval replaces the one-time grant: revoking it leaves no
    // release behind.
    let grant_expires_at = if standing.is_some() {
        now
    } else {
        now + state.config.high_value_ttl
    };
    Ok((
        Approval::HighValue {
            via: via.name().to_owned(),
            grant_expires_at,
            signature,
            standing,
        },
        r.agent.clone(),
    ))
}

/// The standing approval `minutes` long that approving `r` grants.
fn standing_approval(
    r: &AuthRequestRecord,
    approver: &Wallet,
    minutes: u32,
    via: &Via,
    now: UnixSeconds,
) -> ApiResult<StandingApproval> {
    if !(1..=MAX_STANDING_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "minutes is 1 to {MAX_STANDING_MINUTES} (8 hours)"
        ))
        .hint("a standing approval lasts at most 8 hours; approve again after"));
    }
    Ok(StandingApproval {
        id: new_id("sta_"),
        master: approver.clone(),
        agent: r
            .requested_by
            .clone()
            .ok_or_else(|| ApiError::internal(&"high-value request without requester"))?,
        owner: r
            .agent
            .clone()
            .ok_or_else(|| ApiError::internal(&"high-value request without owner"))?,
        service: r
            .service
            .clone()
            .ok_or_else(|| ApiError::internal(&"high-value request without service"))?,
        request_id: r.id.clone(),
        via: via.name().to_owned(),
        created_at: now,
        expires_at: now + i64::from(minutes) * 60,
    })
}

/// An approval's audit detail: what was approved, any standing approval it granted, and
/// how it was made (a passkey's evidence included).
fn approval_detail(r: &AuthRequestRecord, approval: &Approval, via: &Via) -> String {
    let mut detail = format!("{} {}", r.kind.as_str(), r.id);
    if let Approval::HighValue {
        standing: Some(st), ..
    } = approval
    {
        detail.push_str(&format!(" standing {} until {}", st.id, st.expires_at));
    }
    detail.push_str(" via ");
    detail.push_str(via.name());
    if let Via::Passkey { evidence } = via {
        detail.push(' ');
        detail.push_str(evidence);
    }
    detail
}

/// `POST /v1/auth-requests/{id}/deny`.
pub(super) async fn deny<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DecideResponse>> {
    let r = visible(&state, &caller, state.store.auth_request(&id).await?).await?;
    let now = state.clock.now();
    check_pending(&r, now)?;
    let sig = state
        .keys
        .signing
        .sign(&decision_signing_bytes(&id, AuthStatus::Denied, &[]));
    let outcome = state.store.deny(&id, caller.wallet(), now, &sig).await?;
    if outcome != DecideOutcome::Decided {
        return Err(decided_error(outcome));
    }
    state.wake.decided();
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::AuthDeny, "ok")
            .detail(format!("{} {id}", r.kind.as_str())),
    )
    .await?;
    Ok(Json(DecideResponse {
        id,
        status: AuthStatus::Denied,
        agent: None,
    }))
}

/// Query of the decision long-poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    /// Seconds to wait for a decision (0–60).
    #[serde(default)]
    wait: u64,
}

/// `GET /v1/auth-requests/{id}/decision?wait=30`: anyone may poll; only the requester can
/// open the sealed session, and the signature lets it check the server.
pub(super) async fn decision<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Json<Decision>> {
    if q.wait > 60 {
        return Err(ApiError::bad_request("wait is 0 to 60 seconds")
            .hint("poll again when it answers pending"));
    }
    // Only so many polls wait at once; beyond that a poll answers at once with the status
    // it finds, so a flood of long-polls costs the server nothing it must hold.
    let permit = state.long_polls.try_acquire().ok();
    let wait = if permit.is_some() { q.wait } else { 0 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        // Register for the wake-up before reading, so a decision in between is not missed.
        let notified = state.wake.decisions.notified();
        let r = state.store.auth_request(&id).await?.ok_or_else(|| {
            ApiError::not_found("no such auth request")
                .hint("requests live 60 s (high-value: 300 s); ask the requester for a fresh one")
        })?;
        let status = r.status_at(state.clock.now());
        let pending_until = r.expires_at;
        if status != AuthStatus::Pending
            || tokio::time::Instant::now() >= deadline
            || state.stopping()
        {
            let sealed = match (status, r.kind) {
                (AuthStatus::Approved, AuthKind::Pair | AuthKind::Recover) => {
                    r.sealed_session.as_deref().map(b64e)
                }
                _ => None,
            };
            let signature = match status {
                AuthStatus::Approved | AuthStatus::Denied => r.signature.as_deref().map(b64e),
                _ => None,
            };
            return Ok(Json(Decision {
                id,
                status,
                sealed_session: sealed,
                signature,
            }));
        }
        // Wake at the request's own expiry too, to report it as expired; and, where other
        // servers share the store, every `decision_poll` (their wake-up can be lost).
        let until_expiry = u64::try_from(pending_until - state.clock.now()).unwrap_or(0);
        let now = tokio::time::Instant::now();
        let mut wake = deadline.min(now + Duration::from_secs(until_expiry + 1));
        if let Some(poll) = state.decision_poll {
            wake = wake.min(now + poll);
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}
