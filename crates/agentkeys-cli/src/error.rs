//! The CLI's one error type: a stable code, a message, a recommended fix, and the exit
//! status it maps to (the table in `agentkeys --help`). Rendered once, by `main`.

use agentkeys_core::ClientError;
use agentkeys_core::session_store::SessionStoreError;
use agentkeys_types::ErrorCode;
use agentkeys_types::api::AuthRequestTicket;

/// Exit statuses, documented in `agentkeys --help`.
pub mod exit {
    /// Internal error or unexpected server answer.
    pub const INTERNAL: u8 = 1;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// Not authorized.
    pub const AUTH: u8 = 3;
    /// Not found.
    pub const NOT_FOUND: u8 = 4;
    /// Approval required.
    pub const APPROVAL_REQUIRED: u8 = 5;
    /// Server unreachable.
    pub const UNREACHABLE: u8 = 6;
    /// Rejected for now.
    pub const REJECTED: u8 = 7;
    /// Audit chain broken.
    pub const AUDIT_BROKEN: u8 = 8;
}

/// A failed command. Messages never hold a secret: values are never formatted into them.
#[derive(Debug)]
pub struct CliError {
    /// Stable code: the server's codes plus `USAGE`, `NO_SESSION`, `UNREACHABLE`,
    /// `AUDIT_BROKEN`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The process exit status.
    pub exit: u8,
    /// For `APPROVAL_REQUIRED`: what to approve.
    pub auth_request: Option<Box<AuthRequestTicket>>,
}

impl CliError {
    /// An error with a code and exit status.
    pub fn new(code: &'static str, exit: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            hint: None,
            exit,
            auth_request: None,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new("USAGE", exit::USAGE, message)
    }

    /// Adds the recommended fix.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The exit status for one of the server's codes.
    pub fn exit_for(code: ErrorCode) -> u8 {
        match code {
            ErrorCode::BadRequest => exit::USAGE,
            ErrorCode::Unauthorized | ErrorCode::Denied | ErrorCode::Expired => exit::AUTH,
            ErrorCode::NotFound => exit::NOT_FOUND,
            ErrorCode::ApprovalRequired => exit::APPROVAL_REQUIRED,
            ErrorCode::AlreadyConsumed | ErrorCode::RateLimited | ErrorCode::Conflict => {
                exit::REJECTED
            }
            _ => exit::INTERNAL,
        }
    }

    /// The JSON form: `{"error": {"code", "message", "hint", "auth_request"?}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut detail = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit,
        });
        if let Some(t) = &self.auth_request {
            detail["auth_request"] = serde_json::json!({
                "id": t.id, "pair_code": t.pair_code, "otp": t.otp, "expires_at": t.expires_at,
            });
        }
        serde_json::json!({ "error": detail })
    }

    /// The text form: `error: CODE: message` and `hint: …` lines; an approval prints the
    /// command to run instead.
    pub fn to_text(&self) -> String {
        let mut out = match &self.auth_request {
            Some(t) if self.code == "APPROVAL_REQUIRED" => {
                let mut text = format!(
                    "approval required: run 'agentkeys approve {}' (OTP {})\n",
                    t.pair_code, t.otp
                );
                if let Some(url) = &t.approve_url {
                    text.push_str(&format!("or approve it with your passkey at {url}\n"));
                }
                text
            }
            _ => format!("error: {}: {}\n", self.code, self.message),
        };
        if let Some(h) = &self.hint {
            out.push_str(&format!("hint: {h}\n"));
        }
        out
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                code,
                message,
                hint,
                auth_request,
                ..
            } => CliError {
                code: code.as_str(),
                message,
                hint,
                exit: CliError::exit_for(code),
                auth_request,
            },
            ClientError::Transport {
                ref url,
                ref reason,
            } => {
                let hint = if agentkeys_core::client::is_certificate_error(reason) {
                    format!(
                        "{url} presents a certificate this machine does not trust: if its CA \
                         is private, pass --ca FILE (or set AGENTKEYS_CA) with that CA's PEM"
                    )
                } else {
                    format!(
                        "check that agentkeys-server runs at {url} (or fix --server / AGENTKEYS_SERVER)"
                    )
                };
                CliError::new("UNREACHABLE", exit::UNREACHABLE, e.to_string()).hint(hint)
            }
            ClientError::NoSession => CliError::new("NO_SESSION", exit::AUTH, e.to_string())
                .hint("run 'agentkeys init' first"),
            ClientError::BadSignature => {
                let hint = e.hint();
                let mut err = CliError::new("DENIED", exit::AUTH, e.to_string());
                err.hint = hint;
                err
            }
            other => {
                let hint = other.hint();
                let mut err = CliError::new("INTERNAL", exit::INTERNAL, other.to_string());
                err.hint = hint;
                err
            }
        }
    }
}

impl From<SessionStoreError> for CliError {
    fn from(e: SessionStoreError) -> Self {
        let (code, exit) = match &e {
            SessionStoreError::NotFound(_) | SessionStoreError::KeyLost(_) => {
                ("NO_SESSION", exit::AUTH)
            }
            SessionStoreError::KeyringUnavailable(_) => ("KEYRING_UNAVAILABLE", exit::INTERNAL),
            SessionStoreError::LoosePermissions(..) => ("DENIED", exit::AUTH),
            _ => ("INTERNAL", exit::INTERNAL),
        };
        let hint = e.hint();
        let mut err = CliError::new(code, exit, e.to_string());
        err.hint = hint;
        err
    }
}

/// The result type of every command.
pub type CliResult<T = ()> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_errors_print_code_message_and_hint() {
        let e =
            CliError::new("NOT_FOUND", exit::NOT_FOUND, "no credential openai").hint("store it");
        assert_eq!(
            e.to_text(),
            "error: NOT_FOUND: no credential openai\nhint: store it\n"
        );
    }

    #[test]
    fn approval_required_prints_the_command_to_run() {
        let mut e = CliError::new("APPROVAL_REQUIRED", exit::APPROVAL_REQUIRED, "x");
        e.auth_request = Some(Box::new(AuthRequestTicket {
            id: "r1".into(),
            pair_code: "ABCD-EFGH".into(),
            otp: "123456".into(),
            nonce: "n".into(),
            expires_at: 9,
            approve_url: None,
        }));
        assert!(
            e.to_text()
                .starts_with("approval required: run 'agentkeys approve ABCD-EFGH' (OTP 123456)\n")
        );
        assert_eq!(
            e.to_json()["error"]["auth_request"]["pair_code"],
            "ABCD-EFGH"
        );
    }

    #[test]
    fn server_codes_map_to_the_documented_exit_statuses() {
        assert_eq!(CliError::exit_for(ErrorCode::Unauthorized), 3);
        assert_eq!(CliError::exit_for(ErrorCode::Denied), 3);
        assert_eq!(CliError::exit_for(ErrorCode::NotFound), 4);
        assert_eq!(CliError::exit_for(ErrorCode::ApprovalRequired), 5);
        assert_eq!(CliError::exit_for(ErrorCode::RateLimited), 7);
        assert_eq!(CliError::exit_for(ErrorCode::Internal), 1);
        let unreachable = CliError::from(ClientError::Transport {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!((unreachable.code, unreachable.exit), ("UNREACHABLE", 6));
    }
}
