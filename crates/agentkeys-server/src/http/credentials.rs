//! Credentials: store (sealed to the shielding key), list (names only), read (sealed to
//! the reader's ephemeral key), policy. Plaintext exists on the server only inside a
//! `SecretPage`, between opening one seal and closing the next (decision 68).

use std::sync::Arc;

use agentkeys_core::crypto::envelope::{self, Envelope};
use agentkeys_core::crypto::hpke;
use agentkeys_types::api::{
    CredentialInfo, CredentialList, HPKE_INFO_READ, HPKE_INFO_STORE, Policy, ReadCredentialRequest,
    ReadCredentialResponse, SetBindingRequest, StoreCredentialRequest, credential_aad,
    read_signing_bytes,
};
use agentkeys_types::binding::Binding;
use agentkeys_types::{ServiceName, Wallet};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth_requests::high_value_ticket;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{
    EventExt as _, b64, b64e, credential_owner, event, find_credential, record, x25519_key,
};
use crate::state::AppState;
use crate::store::{Store, StoredCredential};
use agentkeys_types::api::AuditAction;

/// Largest sealed value accepted: 32 KiB of credential plus HPKE overhead.
const MAX_SEALED: usize = 32 * 1024 + 48;

fn info(c: StoredCredential) -> CredentialInfo {
    CredentialInfo {
        binding: c
            .binding
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
        agent: c.owner,
        service: c.service,
        policy: c.policy,
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

/// Records a refused credential call and returns the error. The wallet the call named
/// goes into the event's `agent` only when it is the caller's own, one of its agents, or
/// its master (so it shows in the view of the master concerned); a wallet that is not the caller's goes into `detail`, where it shows
/// only to the caller: nobody can plant rows in another wallet's view by naming it.
async fn refuse<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    action: AuditAction,
    named: Option<&Wallet>,
    service: &ServiceName,
    err: ApiError,
) -> ApiError {
    let mut e = event(caller.wallet().as_str(), action, err.code().as_str()).service(service);
    if let Some(w) = named {
        let parent = caller.session.account.parent.as_ref() == Some(w);
        match super::owns(state, caller, w).await.map(|own| own || parent) {
            Ok(true) => e = e.agent(w),
            Ok(false) => e = e.detail(format!("named {w}, which is not the caller's")),
            Err(failed) => return failed,
        }
    }
    match record(state, e).await {
        Ok(()) => err,
        Err(audit_failed) => audit_failed,
    }
}

/// Who may store what: the owner must be the caller or one of its agents, the session
/// writable, the service in an agent's scope, and only masters set policies.
async fn authorize_store<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    req: &StoreCredentialRequest,
) -> ApiResult<Wallet> {
    let owner = credential_owner(state, caller, req.agent.as_ref()).await?;
    let service = &req.service;
    if caller.scope().read_only {
        return Err(ApiError::denied("this session is read-only")
            .hint("ask your operator to store the credential"));
    }
    caller.require_in_scope(service)?;
    if let Some(p) = req.policy {
        check_policy(p)?;
    }
    if !caller.is_master() && req.policy.is_some() {
        return Err(
            ApiError::denied("only a master may set a credential's policy")
                .hint("store without policy; the master sets it with 'agentkeys policy'"),
        );
    }
    if let Some(p) = req.policy {
        check_passkey_exists(state, caller, p).await?;
    }
    if !caller.is_master() && req.binding.is_some() {
        return Err(
            ApiError::denied("only a master may bind a credential to hosts")
                .hint("store without binding; the master sets it with 'agentkeys bind'"),
        );
    }
    Ok(owner)
}

/// `POST /v1/credentials`.
pub(super) async fn store<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<StoreCredentialRequest>,
) -> ApiResult<(StatusCode, Json<CredentialInfo>)> {
    let service = &req.service;
    let owner = match authorize_store(&state, &caller, &req).await {
        Ok(o) => o,
        Err(e) => {
            let named = req.agent.as_ref().unwrap_or(caller.wallet());
            return Err(refuse(
                &state,
                &caller,
                AuditAction::CredentialStore,
                Some(named),
                service,
                e,
            )
            .await);
        }
    };
    if req.sealed_value.len() > MAX_SEALED * 4 / 3 + 4 {
        return Err(ApiError::bad_request(
            "sealed_value is too large (limit 32 KiB of credential)",
        )
        .hint("credentials are limited to 32 KiB"));
    }
    let binding = req.binding.as_ref().map(checked_binding).transpose()?;
    let sealed = b64("sealed_value", &req.sealed_value)?;
    let aad = credential_aad(&owner, service);
    let page = hpke::open_into_page(&state.keys.shielding, HPKE_INFO_STORE, &aad, &sealed).map_err(|_| {
        ApiError::bad_request("sealed_value could not be opened: tampered, or sealed for another agent, service or server")
            .hint("seal the value to this server's shielding key from GET /v1/server-info")
    })?;
    let (kek_id, kek) = state.keys.kek();
    let env =
        envelope::encrypt(kek, &aad, page.expose_secret()).map_err(|e| ApiError::internal(&e))?;
    drop(page);
    let now = state.clock.now();
    let record_row = StoredCredential {
        owner: owner.clone(),
        service: service.clone(),
        wrapped_dek: env.wrapped_dek,
        ciphertext: env.ciphertext,
        kek_id,
        policy: req.policy.unwrap_or_default(),
        binding: binding.clone(),
        created_at: now,
        updated_at: now,
    };
    let created = state
        .store
        .put_credential(&record_row, req.policy.is_none(), binding.is_none())
        .await?;
    // A new value: whatever a daemon holds of the old one no longer holds.
    state.state_changed(&super::tree_master(&caller)).await;
    let stored = state
        .store
        .credential(&owner, service)
        .await?
        .ok_or_else(|| ApiError::internal(&"credential vanished after store"))?;
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::CredentialStore, "ok")
            .agent(&owner)
            .service(service),
    )
    .await?;
    if let Some(text) = &binding {
        record(
            &state,
            event(caller.wallet().as_str(), AuditAction::BindingSet, "ok")
                .agent(&owner)
                .service(service)
                .detail(text.clone()),
        )
        .await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(stored))))
}

/// Query of `GET /v1/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    agent: Option<Wallet>,
}

/// `GET /v1/credentials?agent=`: names and policies the caller may read.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<CredentialList>> {
    let owner = credential_owner(&state, &caller, q.agent.as_ref()).await?;
    let creds = listed(&state, &caller.session.account, &owner, q.agent.is_none()).await?;
    Ok(Json(CredentialList {
        credentials: creds.into_iter().map(info).collect(),
    }))
}

/// The credentials of `owner` that `account` may see, values omitted: a master sees them
/// all; an agent those its scope allows, and with `fallback` (no owner named) also its
/// master's under names it has none of. One answer for `GET /v1/credentials` and the
/// session-state watch.
pub(super) async fn listed<S: Store>(
    state: &AppState<S>,
    account: &crate::store::Account,
    owner: &Wallet,
    fallback: bool,
) -> ApiResult<Vec<StoredCredential>> {
    let mut creds = state.store.list_credentials(owner).await?;
    if !account.is_master {
        // An agent also sees its master's credentials, under its own entries of the same name.
        if let (true, Some(parent)) = (fallback, &account.parent) {
            for c in state.store.list_credentials(parent).await? {
                if !creds.iter().any(|own| own.service == c.service) {
                    creds.push(c);
                }
            }
        }
        creds.retain(|c| account.scope.allows(&c.service));
        creds.sort_by(|a, b| a.service.cmp(&b.service));
    }
    Ok(creds)
}

/// Who may read what: within the session's rate, the owner the caller or one of its
/// agents, the service in an agent's scope.
async fn authorize_read<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    req: &ReadCredentialRequest,
) -> ApiResult<Wallet> {
    let cfg = &state.config;
    if let Err(wait) = state
        .store
        .take_token(&caller.session.id, cfg.read_rate, cfg.read_burst)
        .await?
    {
        state.metrics.rate_limited("read");
        return Err(ApiError::rate_limited(
            format!(
                "too many credential reads for this session (limit {} per second)",
                cfg.read_rate
            ),
            wait,
        ));
    }
    let owner = credential_owner(state, caller, req.agent.as_ref()).await?;
    let service = &req.service;
    caller.require_in_scope(service)?;
    Ok(owner)
}

/// `POST /v1/credentials/read`: one indexed lookup, one key unwrap, one HPKE seal, one
/// audit append.
pub(super) async fn read<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    ApiJson(req): ApiJson<ReadCredentialRequest>,
) -> ApiResult<Json<ReadCredentialResponse>> {
    let service = &req.service;
    let owner = match authorize_read(&state, &caller, &req).await {
        Ok(o) => o,
        Err(e) => {
            let named = req.agent.as_ref().unwrap_or(caller.wallet());
            return Err(refuse(
                &state,
                &caller,
                AuditAction::CredentialRead,
                Some(named),
                service,
                e,
            )
            .await);
        }
    };
    let recipient = x25519_key("recipient_public_key", &req.recipient_public_key)?;
    let found = find_credential(&state, &caller, &owner, req.agent.is_some(), service).await?;
    let Some(cred) = found else {
        let e = ApiError::not_found(format!("no credential named {service}")).hint(
            "store it with 'agentkeys store' (for an agent: 'agentkeys store --agent WALLET')",
        );
        return Err(refuse(
            &state,
            &caller,
            AuditAction::CredentialRead,
            Some(&owner),
            service,
            e,
        )
        .await);
    };
    let now = state.clock.now();
    // Sealed before any high-value grant is spent: a recipient key the seal refuses costs the
    // reader nothing, and a grant is only spent on a value that can leave.
    let aad = credential_aad(&cred.owner, service);
    let env = Envelope {
        wrapped_dek: cred.wrapped_dek,
        ciphertext: cred.ciphertext,
    };
    let kek = state.keys.kek_by_id(cred.kek_id).ok_or_else(|| {
        ApiError::internal(&format!(
            "the credential is wrapped under KEK {}, which this server's keys lack",
            cred.kek_id
        ))
    })?;
    let page = envelope::decrypt_into_page(kek, &aad, &env).map_err(|e| ApiError::internal(&e))?;
    let sealed =
        hpke::seal(&recipient, HPKE_INFO_READ, &aad, page.expose_secret()).map_err(|_| {
            ApiError::bad_request("recipient_public_key is not a usable X25519 key")
                .hint("send a fresh X25519 public key per read (32 bytes, base64)")
        })?;
    drop(page);
    let mut row = event(caller.wallet().as_str(), AuditAction::CredentialRead, "ok")
        .agent(&cred.owner)
        .service(service);
    if cred.policy.high_value {
        // A standing approval lets this agent read without asking, else a grant of this
        // session is spent; either way the release and its audit row are one transaction,
        // which names what released it.
        row.ts = now;
        let started = std::time::Instant::now();
        let released = state
            .store
            .release_high_value(
                &caller.session.id,
                caller.wallet(),
                &cred.owner,
                service,
                now,
                &row,
            )
            .await?;
        if released.is_none() {
            let ticket = high_value_ticket(&state, &caller, &cred.owner, service, None).await?;
            let e = ApiError::approval_required(ticket, service.as_str());
            return Err(refuse(
                &state,
                &caller,
                AuditAction::CredentialRead,
                Some(&cred.owner),
                service,
                e,
            )
            .await);
        }
        state.metrics.audit_committed(1, started.elapsed());
    } else {
        record(&state, row.detail("sealed")).await?;
    }
    let signature = state.keys.signing.sign(&read_signing_bytes(
        &recipient,
        &aad,
        &sealed,
        cred.policy,
        cred.binding.as_deref(),
    ));
    Ok(Json(ReadCredentialResponse {
        agent: cred.owner,
        service: cred.service,
        sealed_value: b64e(&sealed),
        policy: cred.policy,
        binding: cred.binding,
        signature: b64e(&signature),
    }))
}

/// A policy is consistent: a passkey is only ever required to approve a release, so
/// `require_passkey` needs `high_value`.
fn check_policy(p: Policy) -> ApiResult<()> {
    if p.require_passkey && !p.high_value {
        return Err(ApiError::bad_request(
            "require_passkey needs high_value: only releases are approved",
        )
        .hint("send {\"high_value\": true, \"require_passkey\": true}"));
    }
    Ok(())
}

/// A credential may require a passkey only once its master has one: otherwise nobody
/// could approve its releases, and the first passkey (which needs no other passkey's
/// assertion) could be registered by whoever holds a session.
async fn check_passkey_exists<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    p: Policy,
) -> ApiResult<()> {
    if p.require_passkey && state.store.passkeys(caller.wallet()).await?.is_empty() {
        return Err(ApiError::bad_request(
            "require_passkey needs a passkey to approve with: you have none",
        )
        .hint("register one first with 'agentkeys passkey add'"));
    }
    Ok(())
}

/// `PUT /v1/credentials/{agent}/{service}/policy` (masters). A session may raise a
/// passkey guard, never lower it: lowering would let a stolen session release the value
/// the guard protects. Storing the credential again, which replaces its value, needs the
/// value.
pub(super) async fn set_policy<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path((agent, service)): Path<(String, String)>,
    ApiJson(policy): ApiJson<Policy>,
) -> ApiResult<Json<CredentialInfo>> {
    caller.require_master()?;
    check_policy(policy)?;
    let (agent, service) = credential_path(&agent, &service, "policy")?;
    let owner = credential_owner(&state, &caller, Some(&agent)).await?;
    check_passkey_exists(&state, &caller, policy).await?;
    let now = state.clock.now();
    let Some(change) = state
        .store
        .set_policy(&owner, &service, policy, now)
        .await?
    else {
        // Refused by the update itself, or absent: the credential tells which.
        return Err(match state.store.credential(&owner, &service).await? {
            Some(c) if c.policy.require_passkey && !policy.require_passkey => ApiError::denied(
                format!("{service} requires a passkey, and a session cannot lift that"),
            )
            .hint(format!(
                "store its value again ('agentkeys store {service} --high-value'): a new \
                     value replaces the guarded one, policy and all"
            )),
            _ => no_such_credential(&service, &owner),
        });
    };
    state.state_changed(caller.wallet()).await;
    let cred = stored_again(&state, &owner, &service).await?;
    let mut detail = format!(
        "high_value={} require_passkey={}",
        policy.high_value, policy.require_passkey
    );
    if policy.require_passkey {
        // What came before the guard falls with it: releases a session approved.
        detail.push_str(&format!(
            "; ended {} standing approval(s) and {} unspent grant(s) a session made",
            change.ended_standing, change.ended_grants
        ));
    }
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::PolicySet, "ok")
            .agent(&owner)
            .service(&service)
            .detail(detail),
    )
    .await?;
    Ok(Json(info(cred)))
}

/// The wallet and service of `/v1/credentials/WALLET/SERVICE/<what>`.
fn credential_path(agent: &str, service: &str, what: &str) -> ApiResult<(Wallet, ServiceName)> {
    let hint = || format!("the path is /v1/credentials/WALLET/SERVICE/{what}");
    let agent =
        Wallet::parse(agent).map_err(|e| ApiError::bad_request(e.to_string()).hint(hint()))?;
    let service = ServiceName::parse(service)
        .map_err(|e| ApiError::bad_request(e.to_string()).hint(hint()))?;
    Ok((agent, service))
}

fn no_such_credential(service: &ServiceName, owner: &Wallet) -> ApiError {
    ApiError::not_found(format!("no credential named {service} for {owner}"))
        .hint("list that owner's credentials with 'agentkeys list --agent WALLET'")
}

/// The credential just changed, read back for the answer.
async fn stored_again<S: Store>(
    state: &AppState<S>,
    owner: &Wallet,
    service: &ServiceName,
) -> ApiResult<StoredCredential> {
    state
        .store
        .credential(owner, service)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no credential named {service}"))
                .hint("it was deleted meanwhile; store it again")
        })
}

/// A binding's canonical text, or why it is refused.
fn checked_binding(binding: &Binding) -> ApiResult<String> {
    binding.validate().map_err(|e| {
        ApiError::bad_request(format!("binding: {e}"))
            .hint("see 'agentkeys bind --help' for the binding format")
    })?;
    Ok(binding.to_json())
}

/// `PUT /v1/credentials/{agent}/{service}/binding` (masters): sets or (with `null`)
/// removes where the egress proxy may send the credential.
pub(super) async fn set_binding<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    caller: Caller,
    Path((agent, service)): Path<(String, String)>,
    ApiJson(req): ApiJson<SetBindingRequest>,
) -> ApiResult<Json<CredentialInfo>> {
    caller.require_master()?;
    let (agent, service) = credential_path(&agent, &service, "binding")?;
    let owner = credential_owner(&state, &caller, Some(&agent)).await?;
    let text = req.binding.as_ref().map(checked_binding).transpose()?;
    if !state
        .store
        .set_binding(&owner, &service, text.as_deref())
        .await?
    {
        return Err(no_such_credential(&service, &owner));
    }
    state.state_changed(caller.wallet()).await;
    let cred = stored_again(&state, &owner, &service).await?;
    record(
        &state,
        event(caller.wallet().as_str(), AuditAction::BindingSet, "ok")
            .agent(&owner)
            .service(&service)
            .detail(text.unwrap_or_else(|| "unbound".into())),
    )
    .await?;
    Ok(Json(info(cred)))
}
