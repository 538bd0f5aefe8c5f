//! The MCP surface (decision 74): server `agentkeys`, tools `get_credential`,
//! `list_credentials`, `run` and `whoami`. `get_credential` answers a client that advertised
//! `agentkeys/fd-delivery` with the page's fd instead of the text (decision 75). Failures
//! are tool results with `isError: true` whose text a model can relay to its human (the
//! exact `agentkeys approve` command, "revoked", "not in scope").

use std::sync::Arc;

use agentkeys_core::Backend as _;
use agentkeys_types::ServiceName;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, CustomNotification, ElicitRequestParams, ElicitationAction,
    Implementation, ServerCapabilities, ServerConfig, ServerNotification,
};
use rmcp::service::ElicitationMode;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;

use crate::daemon::{Awaited, Conn, Daemon, Delivery, FD_CAPABILITY, InFlight, Refusal};
use crate::proxy::persistent::Persistent;
use crate::runner;

const INSTRUCTIONS: &str = "\
agentkeys gives you the API credentials your operator approved for you, one at a time, \
when you need them. Call list_credentials to see which exist and which need a human \
approval (high_value), get_credential with a service name to receive one, and whoami to \
see your identity and scope. Use a credential for the call at hand and do not store, \
print or repeat it. If a tool result is an error, relay its message to your human: it \
says exactly what they must run (for example 'agentkeys approve ABCD-EFGH').";

/// `get_credential` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct GetCredential {
    /// The credential's service name, e.g. "openai" or "github" (see list_credentials).
    pub service: String,
    /// Proxy mode: get a placeholder and an HTTPS proxy setting instead of the value; the
    /// proxy puts the value into requests to the credential's bound hosts only.
    #[serde(default)]
    pub proxy: bool,
}

/// `run` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct Run {
    /// The command and its arguments, e.g. ["python3", "agent.py", "--dry-run"].
    pub argv: Vec<String>,
    /// Credentials to put in the command's environment, as SERVICE_API_KEY
    /// (upper case, '-' and '.' become '_'), e.g. ["openai"] gives OPENAI_API_KEY.
    #[serde(default)]
    pub services: Vec<String>,
    /// Stop the command after this many seconds (default from the daemon's config).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Give the command a placeholder instead of each value, and an HTTPS proxy that puts
    /// the value only into requests to the hosts the credential is bound to: the command
    /// never holds the key.
    #[serde(default)]
    pub proxy: bool,
}

/// `list_credentials` and `whoami` take no arguments.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct NoArguments {}

/// One connection's MCP handler.
#[derive(Clone)]
pub struct Mcp {
    daemon: Arc<Daemon>,
    conn: Arc<Conn>,
    proxies: Arc<Persistent>,
    tool_router: ToolRouter<Self>,
}

fn error(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

#[tool_router]
impl Mcp {
    /// A handler for one connection.
    pub fn new(daemon: Arc<Daemon>, conn: Arc<Conn>, proxies: Arc<Persistent>) -> Self {
        Mcp {
            daemon,
            conn,
            proxies,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Get one API credential (for example an OpenAI or GitHub key) by its \
        service name. Returns the secret value as text: use it for the request you are \
        making and do not store or echo it. Errors explain what your human must do \
        (approve a high-value release, widen your scope, re-pair). With proxy=true you get \
        a placeholder instead, and the HTTPS_PROXY and SSL_CERT_FILE settings to make your \
        requests through: the value is put in only on the way to the service's own hosts."
    )]
    async fn get_credential(
        &self,
        Parameters(GetCredential { service, proxy }): Parameters<GetCredential>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Ok(service) = ServiceName::parse(&service) else {
            return error(format!(
                "'{}' is not a service name: use lower-case letters, digits, '.', '_' or '-' \
                 (see list_credentials)",
                service.chars().take(64).collect::<String>()
            ));
        };
        if proxy {
            let request = context.id.to_string();
            return match self
                .proxies
                .env(&self.daemon, &self.conn, &request, vec![service.clone()])
                .await
            {
                Ok(described) => {
                    let mut answer = described;
                    answer["service"] = json!(service.as_str());
                    answer["placeholder"] = answer["placeholders"][service.as_str()].clone();
                    answer["how"] = json!(
                        "use placeholder where the API key goes, and make the request through \
                         proxy (HTTPS_PROXY), trusting ca_bundle (SSL_CERT_FILE); env has every \
                         variable to set"
                    );
                    CallToolResult::success(vec![ContentBlock::text(answer.to_string())])
                }
                Err(r) => error(r.message),
            };
        }
        let page = match self
            .daemon
            .fetch(&service, &self.conn.peer, &context.id.to_string())
            .await
        {
            Ok(page) => page,
            Err(refusal) => match self
                .approve_by_elicitation(&service, refusal, &context)
                .await
            {
                Ok(page) => page,
                Err(refusal) => return error(refusal.message),
            },
        };
        if self.conn.wants_fd(&context.id) && page.fd().is_some() {
            return self.fd_result(context.id, page, service);
        }
        let Ok(text) = std::str::from_utf8(page.expose_secret()) else {
            return error(format!(
                "'{service}' holds binary data, which this tool returns as text only"
            ));
        };
        // The one copy that travels: rmcp needs the text as a String. It is freed (and
        // zeroized by the global allocator) once serialized; the page itself stays until
        // the transport has written the line, then it is dropped (decision 73).
        let result = CallToolResult::success(vec![ContentBlock::text(text.to_owned())]);
        self.hold(context.id, page, service, Delivery::Inline);
        result
    }

    /// A release that needs approval, for a client that can show a link (URL-mode
    /// elicitation, MCP 2025-11-25): asks it to open the approval page, waits for the
    /// decision (all within `approval_wait`), and reads again once approved. Other
    /// refusals, and other clients, get the refusal back: its text names the command and
    /// the page.
    async fn approve_by_elicitation(
        &self,
        service: &ServiceName,
        refusal: Refusal,
        context: &RequestContext<RoleServer>,
    ) -> Result<agentkeys_secmem::SecretPage, Refusal> {
        let (Some(id), Some(url)) = (refusal.pending.clone(), refusal.approve_url.clone()) else {
            return Err(refusal);
        };
        if refusal.code != "APPROVAL_REQUIRED"
            || !context
                .peer
                .supported_elicitation_modes()
                .contains(&ElicitationMode::Url)
        {
            return Err(refusal);
        }
        let wait = self.daemon.config.approval_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let message = format!(
            "agentkeys: '{service}' is a high-value credential. Open the approval page to \
             approve this one release with your passkey (compare the OTP it shows); the \
             request waits up to {} s.",
            wait.as_secs()
        );
        self.daemon.note(
            "approval-elicit",
            Some(service),
            format!("asked the client to open {url}"),
        );
        let answer = context
            .peer
            .create_elicitation_with_timeout(
                ElicitRequestParams::UrlElicitationParams {
                    meta: None,
                    message,
                    url,
                    elicitation_id: id.clone(),
                },
                Some(wait),
            )
            .await;
        match answer {
            Ok(r) if r.action == ElicitationAction::Accept => {}
            Ok(r) => {
                return Err(Refusal {
                    message: format!(
                        "{} (the approval page was not opened: {:?})",
                        refusal.message, r.action
                    ),
                    ..refusal
                });
            }
            Err(_) => return Err(refusal),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let awaited = self.daemon.await_approval(&id, left).await;
        if matches!(awaited, Awaited::Approved | Awaited::Ended(_)) {
            // The page was used and the request decided: the client may close its prompt.
            let done = CustomNotification::new(
                "notifications/elicitation/complete",
                Some(json!({ "elicitationId": id })),
            );
            if let Err(e) = context
                .peer
                .send_notification(ServerNotification::CustomNotification(done))
                .await
            {
                tracing::debug!(error = %e, "elicitation/complete not sent");
            }
        }
        match awaited {
            Awaited::Approved => {
                self.daemon
                    .fetch(service, &self.conn.peer, &context.id.to_string())
                    .await
            }
            Awaited::TimedOut => Err(Refusal {
                message: format!(
                    "{} (no decision within {} s)",
                    refusal.message,
                    wait.as_secs()
                ),
                ..refusal
            }),
            Awaited::Ended(status) => Err(Refusal {
                code: "DENIED",
                message: format!(
                    "the release of '{service}' was {}: do not retry unless your human asks",
                    status.as_str()
                ),
                pending: None,
                approve_url: None,
            }),
            Awaited::Failed(e) => Err(self.daemon.refusal(Some(service), &e)),
        }
    }

    /// The fd-delivery answer: no bytes in the JSON, the page's fd travels with the line.
    fn fd_result(
        &self,
        id: rmcp::model::RequestId,
        page: agentkeys_secmem::SecretPage,
        service: ServiceName,
    ) -> CallToolResult {
        let kind = page.kind();
        let length = page.len();
        let mut result = CallToolResult::success(vec![ContentBlock::text(format!(
            "The credential '{service}' was delivered as a file descriptor ({kind}, {length} \
             bytes) attached to this message; your agentkeys runtime maps it."
        ))]);
        let mut meta = rmcp::model::MetaObject::default();
        meta.0.insert(
            "agentkeys/fd".into(),
            json!({"service": service, "length": length, "kind": kind.as_str()}),
        );
        result.meta = Some(meta);
        self.hold(id, page, service, Delivery::Fd);
        result
    }

    fn hold(
        &self,
        id: rmcp::model::RequestId,
        page: agentkeys_secmem::SecretPage,
        service: ServiceName,
        delivery: Delivery,
    ) {
        if let Ok(mut held) = self.conn.in_flight.lock() {
            held.insert(
                id,
                InFlight {
                    page,
                    service,
                    delivery,
                },
            );
        }
    }

    #[tool(
        description = "Run a command with credentials in its environment, without ever \
        seeing them: each service becomes <SERVICE>_API_KEY (e.g. OPENAI_API_KEY). Returns \
        the exit code and the captured stdout/stderr (size-capped), with every credential \
        value (also in base64, wrapped or embedded, or hex; best effort) replaced by \
        [REDACTED:<service>]. With proxy=true the command gets a placeholder instead of \
        each value and an HTTPS proxy (HTTPS_PROXY, SSL_CERT_FILE set) that puts the value \
        only into requests to the credential's bound hosts: use this for HTTP API calls."
    )]
    async fn run(
        &self,
        Parameters(Run {
            argv,
            services,
            timeout_s,
            proxy,
        }): Parameters<Run>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let environ: Vec<String> = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .collect();
        let spec = match runner::parse_spec(&json!({
            "argv": argv, "services": services, "environ": environ, "proxy": proxy,
        })) {
            Ok(spec) => spec,
            Err(r) => return error(r.message),
        };
        let timeout = timeout_s
            .map(|s| std::time::Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or(self.daemon.config.run_timeout);
        let request = context.id.to_string();
        match runner::run_captured(&self.daemon, &self.conn, &request, spec, timeout).await {
            Ok(result) => CallToolResult::success(vec![ContentBlock::text(result.to_string())]),
            Err(r) => error(r.message),
        }
    }

    #[tool(
        description = "List the credentials this agent may ask for: service names and \
        whether each needs a human approval per use (high_value). Never returns values."
    )]
    async fn list_credentials(&self, _: Parameters<NoArguments>) -> CallToolResult {
        match self.daemon.backend.list_credentials(None).await {
            Ok(list) => {
                let items: Vec<_> = list
                    .credentials
                    .iter()
                    .map(|c| json!({"service": c.service, "high_value": c.policy.high_value}))
                    .collect();
                CallToolResult::success(vec![ContentBlock::text(
                    json!({ "credentials": items }).to_string(),
                )])
            }
            Err(e) => error(self.daemon.refusal(None, &e).message),
        }
    }

    #[tool(
        description = "Who this agent is: its wallet, its parent (the human operator's \
        wallet), the services in its scope, whether it is read-only, and when its session \
        expires."
    )]
    async fn whoami(&self, _: Parameters<NoArguments>) -> CallToolResult {
        let s = self.daemon.session();
        CallToolResult::success(vec![ContentBlock::text(
            json!({
                "wallet": s.wallet, "parent": s.parent, "scope": self.daemon.scope(),
                "expires_at": s.expires_at, "server": self.daemon.stored.server,
            })
            .to_string(),
        )])
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        let mut experimental = rmcp::model::ExperimentalCapabilities::new();
        experimental.insert(
            FD_CAPABILITY.into(),
            json!({"version": 1})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_experimental_with(experimental)
                .build(),
        )
        .with_instructions(INSTRUCTIONS)
        .with_server_info(Implementation::new("agentkeys", env!("CARGO_PKG_VERSION")))
    }
}
