//! `GET /v1/openapi.json`: an OpenAPI 3.1 document of the API, its schemas generated from
//! the wire types (`agentkeys-types`, `JsonSchema` derived under the `schema` feature, so
//! the document follows the serde attributes the server itself uses), its paths from
//! [`ROUTES`]. `tests/server/api.rs` checks that every route the router serves is in it
//! and that docs/api.md names the same endpoints; CI validates it with
//! openapi-spec-validator.

use agentkeys_types::ErrorBody;
use agentkeys_types::api::{
    AgentList, AnchorRequest, AnchorResponse, ApproveRequest, AuditList, AuditVerify,
    AuthRequestList, AuthRequestTicket, AuthRequestView, CreateSessionRequest, CredentialInfo,
    CredentialList, DecideResponse, Decision, Health, Identity, LinkIdentityRequest,
    OpenAuthRequest, PasskeyInfo, PasskeyList, PasskeyRegistrationTicket, Policy,
    ReadCredentialRequest, ReadCredentialResponse, Readiness, RemovedPasskey, RevokeRequest,
    RevokeResponse, RevokeStandingResponse, ServerInfo, SessionGrant, SessionInfo, SessionState,
    SetBindingRequest, StandingApprovalInfo, StandingApprovalList, StartPasskeyRegistration,
    StoreCredentialRequest, TeardownResponse,
};
use agentkeys_types::scope::Scope;
use axum::Json;
use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No token.
    Anyone,
    /// Any session's bearer token.
    Bearer,
    /// A master session's bearer token.
    Master,
}

/// One operation of the API.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// `get`, `post`, `put` or `delete`.
    pub method: &'static str,
    /// The path template, as the router has it.
    pub path: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// The request body's schema name, if any.
    pub request: Option<&'static str>,
    /// The success status and its body's schema name.
    pub response: (u16, &'static str),
    /// Query parameters: name, JSON type, description.
    pub query: &'static [(&'static str, &'static str, &'static str)],
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    response: (u16, &'static str),
) -> Route {
    Route {
        method,
        path,
        summary,
        auth,
        request,
        response,
        query: &[],
    }
}

/// Every operation the router serves under `/v1` (`/metrics` is Prometheus text, not JSON,
/// and documented in docs/operations.md).
pub const ROUTES: &[Route] = &[
    route(
        "get",
        "/v1/health",
        "Liveness",
        Auth::Anyone,
        None,
        (200, "Health"),
    ),
    route(
        "get",
        "/v1/ready",
        "Readiness: the database answers, migrated; 503 otherwise",
        Auth::Anyone,
        None,
        (200, "Readiness"),
    ),
    route(
        "get",
        "/v1/server-info",
        "The keys clients seal to and verify with",
        Auth::Anyone,
        None,
        (200, "ServerInfo"),
    ),
    route(
        "get",
        "/v1/openapi.json",
        "This document",
        Auth::Anyone,
        None,
        (200, "OpenApiDocument"),
    ),
    route(
        "post",
        "/v1/sessions",
        "Enrol: a master session for an enrolment token",
        Auth::Anyone,
        Some("CreateSessionRequest"),
        (201, "SessionGrant"),
    ),
    route(
        "get",
        "/v1/session",
        "The caller's session (never its token)",
        Auth::Bearer,
        None,
        (200, "SessionInfo"),
    ),
    Route {
        query: &[
            (
                "cursor",
                "string",
                "the cursor of the state last seen: answer once the state differs",
            ),
            (
                "wait",
                "integer",
                "with cursor, seconds to wait for a change, 0 to 60 (default 0)",
            ),
        ],
        ..route(
            "get",
            "/v1/session/state",
            "What the caller's session may hold (scope, credentials' policies, bindings and \
             value versions, standing approvals), long-polled with a cursor; 401 once revoked",
            Auth::Bearer,
            None,
            (200, "SessionState"),
        )
    },
    route(
        "post",
        "/v1/sessions/revoke",
        "Revoke the caller's session, one of its sessions, or an agent's",
        Auth::Bearer,
        Some("RevokeRequest"),
        (200, "RevokeResponse"),
    ),
    route(
        "get",
        "/v1/agents",
        "The master's agents",
        Auth::Master,
        None,
        (200, "AgentList"),
    ),
    route(
        "delete",
        "/v1/agents/{wallet}",
        "Tear an agent down: sessions revoked, credentials deleted",
        Auth::Master,
        None,
        (200, "TeardownResponse"),
    ),
    route(
        "get",
        "/v1/agents/{wallet}/scope",
        "An agent's scope",
        Auth::Master,
        None,
        (200, "Scope"),
    ),
    route(
        "put",
        "/v1/agents/{wallet}/scope",
        "Replace an agent's scope (applies to live sessions at once)",
        Auth::Master,
        Some("Scope"),
        (200, "Scope"),
    ),
    route(
        "post",
        "/v1/credentials",
        "Store a sealed credential (201 new, 200 replaced)",
        Auth::Bearer,
        Some("StoreCredentialRequest"),
        (201, "CredentialInfo"),
    ),
    Route {
        query: &[(
            "agent",
            "string",
            "whose credentials (a master's agent); default the caller",
        )],
        ..route(
            "get",
            "/v1/credentials",
            "Credential names, policies and bindings (no values)",
            Auth::Bearer,
            None,
            (200, "CredentialList"),
        )
    },
    route(
        "post",
        "/v1/credentials/read",
        "Read a credential, sealed to a key of the caller's and signed",
        Auth::Bearer,
        Some("ReadCredentialRequest"),
        (200, "ReadCredentialResponse"),
    ),
    route(
        "put",
        "/v1/credentials/{agent}/{service}/policy",
        "Set a credential's policy",
        Auth::Master,
        Some("Policy"),
        (200, "CredentialInfo"),
    ),
    route(
        "put",
        "/v1/credentials/{agent}/{service}/binding",
        "Set or remove a credential's binding",
        Auth::Master,
        Some("SetBindingRequest"),
        (200, "CredentialInfo"),
    ),
    route(
        "post",
        "/v1/auth-requests",
        "Open a pair, recover or high-value request",
        Auth::Anyone,
        Some("OpenAuthRequest"),
        (201, "AuthRequestTicket"),
    ),
    Route {
        query: &[
            (
                "cursor",
                "string",
                "the cursor of the list last seen: answer once the list differs",
            ),
            (
                "wait",
                "integer",
                "with cursor, seconds to wait for a change, 0 to 60 (default 0)",
            ),
        ],
        ..route(
            "get",
            "/v1/auth-requests",
            "The master's inbox of pending requests, long-polled with a cursor",
            Auth::Master,
            None,
            (200, "AuthRequestList"),
        )
    },
    route(
        "get",
        "/v1/auth-requests/by-code/{code}",
        "A request by its pair code",
        Auth::Master,
        None,
        (200, "AuthRequestView"),
    ),
    route(
        "post",
        "/v1/auth-requests/{id}/approve",
        "Approve a request (single use)",
        Auth::Master,
        Some("ApproveRequest"),
        (200, "DecideResponse"),
    ),
    route(
        "post",
        "/v1/auth-requests/{id}/deny",
        "Deny a request (single use)",
        Auth::Master,
        None,
        (200, "DecideResponse"),
    ),
    Route {
        query: &[(
            "wait",
            "integer",
            "seconds to wait for a decision, 0 to 60 (default 0)",
        )],
        ..route(
            "get",
            "/v1/auth-requests/{id}/decision",
            "A request's decision, long-polled",
            Auth::Anyone,
            None,
            (200, "Decision"),
        )
    },
    route(
        "get",
        "/v1/passkeys",
        "The caller's passkeys",
        Auth::Master,
        None,
        (200, "PasskeyList"),
    ),
    route(
        "delete",
        "/v1/passkeys/{id}",
        "Remove a passkey",
        Auth::Master,
        None,
        (200, "RemovedPasskey"),
    ),
    route(
        "post",
        "/v1/passkeys/registrations",
        "A one-time link that registers a passkey for the caller",
        Auth::Master,
        Some("StartPasskeyRegistration"),
        (201, "PasskeyRegistrationTicket"),
    ),
    route(
        "post",
        "/v1/passkeys/registrations/options",
        "WebAuthn creation options for a registration link (its token is the credential)",
        Auth::Anyone,
        Some("RegistrationOptionsRequest"),
        (200, "WebAuthnOptions"),
    ),
    route(
        "post",
        "/v1/passkeys/registrations/finish",
        "Verify and store the new passkey; the link is spent",
        Auth::Anyone,
        Some("FinishRegistrationRequest"),
        (201, "PasskeyInfo"),
    ),
    route(
        "post",
        "/v1/approvals/{code}/options",
        "The request a code names, and assertion options bound to it",
        Auth::Anyone,
        Some("PageChoice"),
        (200, "PageOptions"),
    ),
    route(
        "post",
        "/v1/approvals/{code}/approve",
        "Approve a request with a passkey assertion",
        Auth::Anyone,
        Some("PageApproveRequest"),
        (200, "DecideResponse"),
    ),
    route(
        "get",
        "/v1/standing-approvals",
        "The caller's live standing approvals",
        Auth::Master,
        None,
        (200, "StandingApprovalList"),
    ),
    route(
        "post",
        "/v1/standing-approvals/{id}/revoke",
        "End a standing approval now",
        Auth::Master,
        None,
        (200, "RevokeStandingResponse"),
    ),
    Route {
        query: &[
            ("agent", "string", "only this agent's rows"),
            ("service", "string", "only this service's rows"),
            (
                "action",
                "string",
                "only this action (credential.read, ...)",
            ),
            ("since", "integer", "only rows at or after this Unix time"),
            (
                "limit",
                "integer",
                "at most this many, 1 to 1000 (default 100)",
            ),
        ],
        ..route(
            "get",
            "/v1/audit",
            "Audit rows the caller may see, newest first",
            Auth::Bearer,
            None,
            (200, "AuditList"),
        )
    },
    route(
        "get",
        "/v1/audit/verify",
        "Recompute the audit chain",
        Auth::Master,
        None,
        (200, "AuditVerify"),
    ),
    route(
        "post",
        "/v1/audit/anchor",
        "Record the head of a daemon's trail",
        Auth::Bearer,
        Some("AnchorRequest"),
        (201, "AnchorResponse"),
    ),
    route(
        "post",
        "/v1/identities",
        "Link an alias or e-mail to a wallet",
        Auth::Master,
        Some("LinkIdentityRequest"),
        (201, "Identity"),
    ),
    Route {
        query: &[
            ("alias", "string", "the alias to resolve (or email)"),
            ("email", "string", "the e-mail to resolve (or alias)"),
        ],
        ..route(
            "get",
            "/v1/identities/resolve",
            "Resolve an alias or e-mail in the caller's namespace",
            Auth::Master,
            None,
            (200, "Identity"),
        )
    },
];

/// The schemas of every wire type the routes name, and the error body.
fn schemas() -> Map<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let mut out = Map::new();
    macro_rules! add {
        ($($t:ty),* $(,)?) => {$(
            let schema = generator.subschema_for::<$t>();
            let name = <$t as schemars::JsonSchema>::schema_name().into_owned();
            if !out.contains_key(&name) && schema.as_object().is_some_and(|o| !o.contains_key("$ref")) {
                out.insert(name, schema.to_value());
            }
        )*};
    }
    add!(
        Health,
        Readiness,
        ServerInfo,
        CreateSessionRequest,
        SessionGrant,
        SessionInfo,
        SessionState,
        RevokeRequest,
        RevokeResponse,
        AgentList,
        TeardownResponse,
        Scope,
        StoreCredentialRequest,
        CredentialInfo,
        CredentialList,
        ReadCredentialRequest,
        ReadCredentialResponse,
        Policy,
        SetBindingRequest,
        OpenAuthRequest,
        AuthRequestTicket,
        AuthRequestView,
        AuthRequestList,
        StandingApprovalList,
        StandingApprovalInfo,
        RevokeStandingResponse,
        PasskeyList,
        PasskeyInfo,
        PasskeyRegistrationTicket,
        StartPasskeyRegistration,
        RemovedPasskey,
        super::passkeys::PageChoice,
        super::passkeys::RegistrationOptionsRequest,
        super::passkeys::FinishRegistrationRequest,
        super::passkeys::PageOptions,
        super::passkeys::PageApproveRequest,
        ApproveRequest,
        DecideResponse,
        Decision,
        AuditList,
        AuditVerify,
        AnchorRequest,
        AnchorResponse,
        LinkIdentityRequest,
        Identity,
        ErrorBody,
    );
    for (name, schema) in generator.take_definitions(true) {
        out.entry(name).or_insert(schema);
    }
    out.insert(
        "WebAuthnOptions".into(),
        json!({
            "type": "object",
            "description": "WebAuthn options as JSON: {\"publicKey\": …}, binary fields base64url",
        }),
    );
    out.insert(
        "OpenApiDocument".into(),
        json!({"type": "object", "description": "An OpenAPI 3.1 document"}),
    );
    out
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(r: &Route) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(r.query.iter().map(|(name, ty, description)| {
        json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": ty}})
    }));
    let error = json!({
        "description": "The error contract (docs/api.md): {error: {code, message, hint}}",
        "content": {"application/json": {"schema": reference("ErrorBody")}}
    });
    let mut responses = Map::new();
    responses.insert(
        r.response.0.to_string(),
        json!({
            "description": "Success",
            "content": {"application/json": {"schema": reference(r.response.1)}}
        }),
    );
    responses.insert("default".into(), error);
    let operation_id = format!(
        "{}{}",
        r.method,
        r.path
            .split(['/', '-', '{', '}', '.'])
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut c = s.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect::<String>()
    );
    let mut op = json!({
        "operationId": operation_id,
        "summary": r.summary,
        "parameters": params,
        "responses": responses,
    });
    if r.auth != Auth::Anyone {
        op["security"] = json!([{"bearer": []}]);
        if r.auth == Auth::Master {
            op["description"] = json!("Needs a master session.");
        }
    }
    if let Some(body) = r.request {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": reference(body)}}
        });
    }
    op
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let item = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        item[r.method] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentkeys server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Scoped, audited credentials for AI agents. docs/api.md is the prose reference; values travel sealed (HPKE) and read answers are signed.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// `GET /v1/openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    Json(document())
}
