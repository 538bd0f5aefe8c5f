//! Passkey approvals (WebAuthn, verified with webauthn-rs): a master registers passkeys
//! through a one-time link its session asks for, and approves a request on the approval
//! page with an assertion whose challenge is the SHA-256 of the request's canonical text.
//! The assertion goes into the audit chain, so anyone can later check which authenticator
//! approved exactly what.
//!
//! The page's API is reached with the request's code, not a session: the code shows the
//! request (the OTP and what is asked, as a notification does), and only an assertion by
//! a passkey of the master who may decide it approves it. The challenge is not stored: it
//! is recomputed from the request, so an assertion binds one decision of one request, and
//! the request being single-use makes a replay worthless.

use std::sync::Arc;

use agentkeys_core::crypto::{pairing, random_array, sha256};
use agentkeys_types::api::{
    AuditAction, AuthKind, AuthRequestView, DecideResponse, MAX_STANDING_MINUTES, PasskeyInfo,
    PasskeyList, PasskeyRegistrationTicket, RemovedPasskey, StartPasskeyRegistration,
};
use agentkeys_types::{Scope, Wallet};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid, Webauthn,
};

use super::auth_requests::{Via, approve_request, check_pending, view_for_page};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, Caller, ClientAddr};
use super::limits::{self, Door};
use super::{EventExt as _, event, new_id, record};
use crate::state::AppState;
use crate::store::{self, AuthRequestRecord, Store, StoreError};

/// How long a registration link works.
const REGISTRATION_TTL: i64 = 600;

/// A master keeps at most this many passkeys.
const MAX_PASSKEYS: usize = 16;

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The relying party, or why the server has none.
fn rp<S: Store>(state: &AppState<S>) -> ApiResult<&Webauthn> {
    state.passkeys.as_ref().ok_or_else(|| {
        ApiError::not_found("this server has no passkey pages")
            .hint("start agentkeys-server with --public-url https://HOST (the origin browsers use)")
    })
}

fn bad_webauthn(what: &str, e: &impl std::fmt::Display) -> ApiError {
    tracing::info!(error = %e, "{what} refused");
    ApiError::bad_request(format!("the {what} does not verify"))
        .hint("reload the page and try again with a passkey registered for this master")
}

fn info(p: &store::PasskeyRecord) -> PasskeyInfo {
    PasskeyInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        credential_id: b64url(&p.credential_id),
        created_at: p.created_at,
        last_used_at: p.last_used_at,
    }
}

/// `POST /v1/passkeys/registrations` (master): a one-time link, bound to this master,
/// that registers a passkey in the browser it is opened in.
pub(super) async fn start_registration<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<StartPasskeyRegistration>,
) -> ApiResult<(StatusCode, Json<PasskeyRegistrationTicket>)> {
    caller.require_master()?;
    rp(&state)?;
    let name = req.name.as_deref().unwrap_or("passkey").trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(
            ApiError::bad_request("a passkey name is 1 to 64 printable characters")
                .hint("name it after the device: phone, laptop, yubikey"),
        );
    }
    if state.store.passkeys(caller.wallet()).await?.len() >= MAX_PASSKEYS {
        return Err(ApiError::bad_request(format!(
            "a master keeps at most {MAX_PASSKEYS} passkeys"
        ))
        .hint("remove one with 'agentkeys passkey remove ID'"));
    }
    let mut raw = random_array::<32>();
    let token = b64url(&raw);
    zeroize::Zeroize::zeroize(&mut raw);
    let now = state.clock.now();
    state
        .store
        .insert_passkey_registration(&store::PasskeyRegistration {
            token_hash: sha256(token.as_bytes()).to_vec(),
            master: caller.wallet().clone(),
            name,
            state_json: None,
            created_at: now,
            expires_at: now + REGISTRATION_TTL,
            used_at: None,
        })
        .await?;
    let base = state.config.public_url.as_deref().unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(PasskeyRegistrationTicket {
            // In the fragment: browsers never send it, so it stays out of request lines,
            // access logs and Referer headers; the page posts it in a body.
            url: format!("{base}/passkey/add#{token}"),
            expires_at: now + REGISTRATION_TTL,
        }),
    ))
}

/// A live registration link by its token; every other case reads as absent.
async fn live_registration<S: Store>(
    state: &AppState<S>,
    token: &str,
) -> ApiResult<store::PasskeyRegistration> {
    let r = state
        .store
        .passkey_registration(&sha256(token.as_bytes()))
        .await?;
    match r {
        Some(r) if r.used_at.is_none() && r.expires_at > state.clock.now() => Ok(r),
        _ => Err(
            ApiError::not_found("this registration link is used or expired").hint(
                "ask for a new one with 'agentkeys passkey add' (links work once, 10 minutes)",
            ),
        ),
    }
}

/// The WebAuthn user handle of a master: derived from its wallet, the same every time.
fn user_id(master: &Wallet) -> Uuid {
    let h = sha256(master.as_str().as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    Uuid::from_bytes(b)
}

/// `POST /v1/passkeys/registrations/options`.
// No `Debug`: the token is a live registration credential (STYLE habit 3).
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationOptionsRequest {
    /// The registration link's token (the link's fragment).
    pub token: String,
}

/// `POST /v1/passkeys/registrations/finish`.
// No `Debug`: the token is a live registration credential (STYLE habit 3).
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRegistrationRequest {
    /// The registration link's token.
    pub token: String,
    /// The `navigator.credentials.create` result (WebAuthn JSON, base64url fields).
    #[schemars(with = "serde_json::Value")]
    pub credential: serde_json::Value,
    /// When the master has passkeys already: the `navigator.credentials.get` result for
    /// the options' `vouch` (an assertion by one of them over this link).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub vouch: Option<serde_json::Value>,
}

/// `POST /v1/passkeys/registrations/options`: the creation options for the page.
pub(super) async fn registration_options<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    address: ClientAddr,
    ApiJson(RegistrationOptionsRequest { token }): ApiJson<RegistrationOptionsRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    limits::take_all(&state, Door::Page, &address).await?;
    let webauthn = rp(&state)?;
    let reg = live_registration(&state, &token).await?;
    let existing = state.store.passkeys(&reg.master).await?;
    let exclude = existing
        .iter()
        .map(|p| p.credential_id.clone())
        .collect::<Vec<_>>();
    let (options, ceremony) = webauthn
        .start_passkey_registration(
            user_id(&reg.master),
            reg.master.as_str(),
            &format!("agentkeys master {}", reg.master.as_str()),
            Some(exclude),
        )
        .map_err(|e| ApiError::internal(&e))?;
    let mut options = serde_json::to_value(options).map_err(|e| ApiError::internal(&e))?;
    if !existing.is_empty() {
        let keys = parsed(&existing)?;
        let canonical = canonical_vouch(&reg);
        let (public_key, _) =
            ceremony_with_challenge(webauthn, &keys, &sha256(canonical.as_bytes()))?;
        options["vouch"] = serde_json::json!({ "canonical": canonical, "publicKey": public_key });
    }
    let ceremony = serde_json::to_string(&ceremony).map_err(|e| ApiError::internal(&e))?;
    if !state
        .store
        .set_passkey_registration_state(&reg.token_hash, &ceremony, state.clock.now())
        .await?
    {
        return Err(live_registration(&state, &token)
            .await
            .err()
            .unwrap_or_else(|| ApiError::not_found("this registration link is used or expired")));
    }
    Ok(Json(options))
}

/// `POST /v1/passkeys/registrations/finish`: verifies the new credential and stores it;
/// the link is spent.
pub(super) async fn finish_registration<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    address: ClientAddr,
    ApiJson(FinishRegistrationRequest {
        token,
        credential,
        vouch,
    }): ApiJson<FinishRegistrationRequest>,
) -> ApiResult<(StatusCode, Json<PasskeyInfo>)> {
    limits::take_all(&state, Door::Page, &address).await?;
    let webauthn = rp(&state)?;
    let reg = live_registration(&state, &token).await?;
    // A master with passkeys adds one only with an assertion by one of them, over this
    // link: a stolen session alone cannot register a passkey of its own.
    let existing = state.store.passkeys(&reg.master).await?;
    let vouched = match (existing.is_empty(), vouch) {
        (true, _) => None,
        (false, None) => {
            return Err(ApiError::denied(
                "adding a passkey needs an assertion by one you already have",
            )
            .hint("open the link in a browser that can use one of your passkeys"));
        }
        (false, Some(assertion)) => {
            let canonical = canonical_vouch(&reg);
            let challenge = sha256(canonical.as_bytes());
            let by = verify_assertion(webauthn, &state, existing, &assertion, &challenge).await?;
            Some(evidence(&by, canonical, assertion))
        }
    };
    let ceremony: PasskeyRegistration = reg
        .state_json
        .as_deref()
        .ok_or_else(|| {
            ApiError::bad_request("ask for the options first")
                .hint("POST .../options, then create the credential with them")
        })
        .and_then(|s| serde_json::from_str(s).map_err(|e| ApiError::internal(&e)))?;
    let credential: RegisterPublicKeyCredential =
        serde_json::from_value(credential).map_err(|e| bad_webauthn("new credential", &e))?;
    let passkey = webauthn
        .finish_passkey_registration(&credential, &ceremony)
        .map_err(|e| bad_webauthn("new credential", &e))?;
    let now = state.clock.now();
    let record_row = store::PasskeyRecord {
        id: new_id("pk_"),
        master: reg.master.clone(),
        name: reg.name.clone(),
        credential_id: passkey.cred_id().to_vec(),
        passkey_json: serde_json::to_string(&passkey).map_err(|e| ApiError::internal(&e))?,
        created_at: now,
        last_used_at: None,
    };
    match state
        .store
        .finish_passkey_registration(&reg.token_hash, now, &record_row)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(live_registration(&state, &token)
                .await
                .err()
                .unwrap_or_else(|| {
                    ApiError::not_found("this registration link is used or expired")
                }));
        }
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                agentkeys_types::ErrorCode::Conflict,
                "this passkey is registered already",
            )
            .hint("list your passkeys with 'agentkeys passkey list'"));
        }
        Err(e) => return Err(e.into()),
    }
    let public_key =
        serde_json::to_value(passkey.get_public_key()).map_err(|e| ApiError::internal(&e))?;
    let mut detail = serde_json::json!({
        "id": record_row.id,
        "name": record_row.name,
        "credential_id": b64url(&record_row.credential_id),
        "public_key": public_key,
    });
    if let Some(v) = vouched {
        detail["vouched_by"] = v;
    }
    record(
        &state,
        event(reg.master.as_str(), AuditAction::PasskeyAdd, "ok").detail(detail.to_string()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(info(&record_row))))
}

/// `GET /v1/passkeys` (master).
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
) -> ApiResult<Json<PasskeyList>> {
    caller.require_master()?;
    let passkeys = state.store.passkeys(caller.wallet()).await?;
    Ok(Json(PasskeyList {
        passkeys: passkeys.iter().map(info).collect(),
    }))
}

/// `DELETE /v1/passkeys/{id}` (master).
pub(super) async fn remove<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RemovedPasskey>> {
    caller.require_master()?;
    if !state.store.delete_passkey(caller.wallet(), &id).await? {
        let mine = state.store.passkeys(caller.wallet()).await?;
        if mine.iter().any(|p| p.id == id) {
            // The last one, while a credential requires a passkey: without it nobody could
            // approve those releases, and the next passkey would need no assertion, so a
            // stolen session could remove it and register its own.
            return Err(ApiError::denied(
                "this is your last passkey, and a credential requires one",
            )
            .hint("add another passkey first ('agentkeys passkey add'), then remove this one"));
        }
        return Err(ApiError::not_found("you have no passkey by that id")
            .hint("list them with 'agentkeys passkey list'"));
    }
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::PasskeyRemove, "ok").detail(id.clone()),
    )
    .await?;
    Ok(Json(RemovedPasskey { id }))
}

/// The master who decides a request on the page: the one a pairing is addressed to, or
/// the owner of the agent a recovery or release is about. None: not decidable there.
async fn deciding_master<S: Store>(
    state: &AppState<S>,
    r: &AuthRequestRecord,
) -> ApiResult<Option<Wallet>> {
    match r.kind {
        AuthKind::Pair => Ok(r.requested_by.clone()),
        AuthKind::Recover | AuthKind::HighValue => {
            let Some(agent) = &r.agent else {
                return Ok(None);
            };
            Ok(state.store.account(agent).await?.map(|a| {
                if a.is_master {
                    a.wallet
                } else {
                    a.parent.unwrap_or(a.wallet)
                }
            }))
        }
    }
}

/// The text a passkey approval signs: its SHA-256 is the WebAuthn challenge. One field a
/// line, in this order; `docs/api.md` gives the format, so anyone can recompute it from
/// the audit row.
pub fn canonical_approval(r: &AuthRequestRecord, choice: &PageChoice) -> String {
    let none = "-".to_owned();
    let subject = match r.kind {
        AuthKind::Pair => format!(
            "scope {}",
            serde_json::to_string(&choice.granted_scope()).unwrap_or_default()
        ),
        AuthKind::Recover => "session".to_owned(),
        AuthKind::HighValue => {
            format!("service {}", r.service.as_ref().map_or("-", |s| s.as_str()))
        }
    };
    format!(
        "agentkeys approval v1\nid {}\nkind {}\nagent {}\nrequested_by {}\n{subject}\n\
         nonce {}\nexpires_at {}\nstanding_minutes {}\ndecision approve\n",
        r.id,
        r.kind.as_str(),
        r.agent
            .as_ref()
            .map_or(none.clone(), |w| w.as_str().to_owned()),
        r.requested_by
            .as_ref()
            .map_or(none, |w| w.as_str().to_owned()),
        b64url(&r.nonce),
        r.expires_at,
        choice.minutes.unwrap_or(0),
    )
}

/// The request a page code names, and the master who decides it; the call is paid from
/// the caller's address and network budgets, then from that master's (a code that names
/// nothing pays from the server's).
async fn page_request<S: Store>(
    state: &AppState<S>,
    code: &str,
    address: &ClientAddr,
) -> ApiResult<(AuthRequestRecord, Wallet)> {
    limits::take_local(state, Door::Page, address).await?;
    let found = find_page_request(state, code).await;
    limits::take_for_page(state, found.as_ref().ok().map(|(_, m)| m)).await?;
    found
}

async fn find_page_request<S: Store>(
    state: &AppState<S>,
    code: &str,
) -> ApiResult<(AuthRequestRecord, Wallet)> {
    let not_found = || {
        ApiError::not_found("no request to decide here by that code")
            .hint("requests live 60 s (high-value: 300 s); check the code in the notification")
    };
    let code = pairing::normalize_pair_code(code).ok_or_else(not_found)?;
    let r = state
        .store
        .auth_request_by_code(&code)
        .await?
        .ok_or_else(not_found)?;
    let master = deciding_master(state, &r).await?.ok_or_else(|| {
        ApiError::not_found("this request is decided at a terminal")
            .hint("a pairing addressed to no master: run 'agentkeys approve CODE'")
    })?;
    Ok((r, master))
}

/// The passkeys of the master who decides a request on the page; refused when it has none.
async fn deciding_passkeys<S: Store>(
    state: &AppState<S>,
    master: &Wallet,
) -> ApiResult<Vec<store::PasskeyRecord>> {
    let rows = state.store.passkeys(master).await?;
    if rows.is_empty() {
        return Err(ApiError::bad_request(
            "the master who decides this request has no passkey",
        )
        .hint("register one with 'agentkeys passkey add', or decide with 'agentkeys approve CODE'"));
    }
    Ok(rows)
}

/// Stored passkeys, as webauthn-rs takes them.
fn parsed(rows: &[store::PasskeyRecord]) -> ApiResult<Vec<Passkey>> {
    rows.iter()
        .map(|row| serde_json::from_str(&row.passkey_json).map_err(|e| ApiError::internal(&e)))
        .collect()
}

/// Verifies `assertion` (a `navigator.credentials.get` result) as made by one of `rows`,
/// with user verification, over `challenge`; records the passkey's use and answers it.
async fn verify_assertion<S: Store>(
    webauthn: &Webauthn,
    state: &AppState<S>,
    rows: Vec<store::PasskeyRecord>,
    assertion: &serde_json::Value,
    challenge: &[u8; 32],
) -> ApiResult<store::PasskeyRecord> {
    let parsed_assertion: PublicKeyCredential = serde_json::from_value(assertion.clone())
        .map_err(|e| bad_webauthn("passkey assertion", &e))?;
    let keys = parsed(&rows)?;
    let (_, ceremony) = ceremony_with_challenge(webauthn, &keys, challenge)?;
    let result = webauthn
        .finish_passkey_authentication(&parsed_assertion, &ceremony)
        .map_err(|e| bad_webauthn("passkey assertion", &e))?;
    if !result.user_verified() {
        return Err(ApiError::bad_request("the passkey did not verify the user")
            .hint("use a passkey that asks for your PIN, fingerprint or face"));
    }
    let (row, mut passkey) = rows
        .into_iter()
        .zip(keys)
        .find(|(_, p)| p.cred_id() == result.cred_id())
        .ok_or_else(|| ApiError::internal(&"verified passkey not among the master's"))?;
    passkey.update_credential(&result);
    let updated = serde_json::to_string(&passkey).map_err(|e| ApiError::internal(&e))?;
    state
        .store
        .touch_passkey(&row.id, &updated, state.clock.now())
        .await?;
    Ok(row)
}

/// What the audit keeps of a verified assertion: enough to verify it again offline.
fn evidence(
    by: &store::PasskeyRecord,
    canonical: String,
    assertion: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "passkey": by.id,
        "credential_id": b64url(&by.credential_id),
        "canonical": canonical,
        "assertion": assertion,
    })
}

/// The text an existing passkey signs to vouch for a new one: its SHA-256 is the
/// challenge. The link is single-use, so the assertion adds one passkey, once.
pub fn canonical_vouch(reg: &store::PasskeyRegistration) -> String {
    format!(
        "agentkeys passkey add v1\nmaster {}\nname {}\nlink {}\nexpires_at {}\n",
        reg.master.as_str(),
        reg.name,
        b64url(&reg.token_hash),
        reg.expires_at,
    )
}

/// An authentication ceremony whose challenge is `challenge` rather than a random one.
fn ceremony_with_challenge(
    webauthn: &Webauthn,
    keys: &[Passkey],
    challenge: &[u8; 32],
) -> ApiResult<(serde_json::Value, PasskeyAuthentication)> {
    let (options, state) = webauthn
        .start_passkey_authentication(keys)
        .map_err(|e| ApiError::internal(&e))?;
    let encoded = b64url(challenge);
    let mut options = serde_json::to_value(options).map_err(|e| ApiError::internal(&e))?;
    let mut state = serde_json::to_value(state).map_err(|e| ApiError::internal(&e))?;
    match (
        options.pointer_mut("/publicKey/challenge"),
        state.pointer_mut("/ast/challenge"),
    ) {
        (Some(o), Some(s)) => {
            *o = encoded.clone().into();
            *s = encoded.into();
        }
        _ => return Err(ApiError::internal(&"unexpected webauthn-rs ceremony shape")),
    }
    let state = serde_json::from_value(state).map_err(|e| ApiError::internal(&e))?;
    Ok((options["publicKey"].take(), state))
}

/// What the approver chose on the page, which the passkey signs with the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageChoice {
    /// High-value: a standing approval of this many minutes (1 to 480).
    #[serde(default)]
    pub minutes: Option<u32>,
    /// Pair: the scope the new agent gets (default: no services, read-only).
    #[serde(default)]
    pub scope: Option<Scope>,
}

impl PageChoice {
    /// The scope a pairing approved with this choice grants.
    fn granted_scope(&self) -> Scope {
        self.scope.clone().unwrap_or(Scope {
            services: Vec::new(),
            read_only: true,
        })
    }

    /// Checks the choice against the request's kind; the scope comes back validated
    /// (sorted, without repeats), as it is signed and granted.
    fn checked(self, r: &AuthRequestRecord) -> ApiResult<Self> {
        match self.minutes {
            None => {}
            Some(_) if r.kind != AuthKind::HighValue => {
                return Err(ApiError::bad_request(
                    "minutes (a standing approval) applies to high-value releases only",
                )
                .hint("approve a pairing or recovery without minutes"));
            }
            Some(m) if (1..=MAX_STANDING_MINUTES).contains(&m) => {}
            Some(_) => {
                return Err(ApiError::bad_request("minutes is 1 to 480 (8 hours)")
                    .hint("a standing approval lasts at most 8 hours"));
            }
        }
        let scope = match self.scope {
            None => None,
            Some(_) if r.kind != AuthKind::Pair => {
                return Err(ApiError::bad_request("scope applies to pairings only")
                    .hint("a release or a recovery keeps the agent's scope"));
            }
            Some(s) => Some(s.validated().map_err(|e| {
                ApiError::bad_request(format!("scope: {e}"))
                    .hint("services are names such as openai, or * for all")
            })?),
        };
        Ok(PageChoice {
            minutes: self.minutes,
            scope,
        })
    }
}

/// What the approval page shows and signs.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PageOptions {
    /// The request, as the inbox shows it.
    pub request: AuthRequestView,
    /// The canonical text the passkey signs (its SHA-256 is the challenge).
    pub canonical: String,
    /// `navigator.credentials.get` options (WebAuthn JSON, base64url fields); null when
    /// the deciding master has no passkey (the request is then decided at a terminal).
    #[serde(rename = "publicKey")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub public_key: Option<serde_json::Value>,
    /// The command that decides the request at the master's terminal
    /// (`agentkeys approve CODE`).
    pub command: String,
}

/// `POST /v1/approvals/{code}/options`: the request and the assertion options whose
/// challenge binds this decision. A master without a passkey still sees what is asked,
/// and the command that decides it at a terminal.
pub(super) async fn page_options<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    address: ClientAddr,
    Path(code): Path<String>,
    ApiJson(choice): ApiJson<PageChoice>,
) -> ApiResult<Json<PageOptions>> {
    let webauthn = rp(&state)?;
    let (r, master) = page_request(&state, &code, &address).await?;
    let choice = choice.checked(&r)?;
    let keys = parsed(&state.store.passkeys(&master).await?)?;
    let canonical = canonical_approval(&r, &choice);
    let public_key = if keys.is_empty() {
        None
    } else {
        let challenge = sha256(canonical.as_bytes());
        Some(ceremony_with_challenge(webauthn, &keys, &challenge)?.0)
    };
    let command = format!("agentkeys approve {}", r.pair_code);
    let request = view_for_page(&state, &master, r).await?;
    Ok(Json(PageOptions {
        request,
        canonical,
        public_key,
        command,
    }))
}

/// `POST /v1/approvals/{code}/approve`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageApproveRequest {
    /// The same `minutes` the options were asked with.
    #[serde(default)]
    pub minutes: Option<u32>,
    /// The same `scope` the options were asked with.
    #[serde(default)]
    pub scope: Option<Scope>,
    /// The `navigator.credentials.get` result (WebAuthn JSON, base64url fields).
    #[schemars(with = "serde_json::Value")]
    pub credential: serde_json::Value,
}

/// `POST /v1/approvals/{code}/approve`: verifies the assertion against the challenge
/// recomputed from the request, then approves it as the passkey's master.
pub(super) async fn page_approve<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    address: ClientAddr,
    Path(code): Path<String>,
    ApiJson(req): ApiJson<PageApproveRequest>,
) -> ApiResult<Json<DecideResponse>> {
    let webauthn = rp(&state)?;
    let (r, master) = page_request(&state, &code, &address).await?;
    // Decided or expired requests are refused before any assertion is looked at.
    check_pending(&r, state.clock.now())?;
    let choice = PageChoice {
        minutes: req.minutes,
        scope: req.scope,
    }
    .checked(&r)?;
    let keys = deciding_passkeys(&state, &master).await?;
    let canonical = canonical_approval(&r, &choice);
    let challenge = sha256(canonical.as_bytes());
    let row = verify_assertion(webauthn, &state, keys, &req.credential, &challenge).await?;
    let evidence = evidence(&row, canonical, req.credential);
    let decided = approve_request(
        &state,
        &r,
        &master,
        agentkeys_types::api::ApproveRequest {
            scope: choice.scope,
            minutes: choice.minutes,
        },
        Via::Passkey {
            evidence: evidence.to_string(),
        },
    )
    .await?;
    Ok(Json(decided))
}
