//! The daemon's error type: a stable code, a message, a recommended fix, an exit status.

use agentkeys_core::ClientError;
use agentkeys_core::session_store::SessionStoreError;

/// A failure the daemon reports and exits with.
#[derive(Debug)]
pub struct DaemonError {
    /// Stable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Exit status: 2 usage, 3 denied, 6 unreachable, 1 otherwise.
    pub exit: u8,
}

impl DaemonError {
    /// An error with a code and exit status.
    pub fn new(code: &'static str, exit: u8, message: impl Into<String>) -> Self {
        DaemonError {
            code,
            message: message.into(),
            hint: None,
            exit,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new("USAGE", 2, message)
    }

    /// A denial.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new("DENIED", 3, message)
    }

    /// Adds the fix.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `error: CODE: message` and `hint: …`.
    pub fn to_text(&self) -> String {
        let mut s = format!("error: {}: {}\n", self.code, self.message);
        if let Some(h) = &self.hint {
            s.push_str(&format!("hint: {h}\n"));
        }
        s
    }
}

impl From<ClientError> for DaemonError {
    fn from(e: ClientError) -> Self {
        let hint = e.hint();
        let (code, exit) = match &e {
            ClientError::Transport { .. } => ("UNREACHABLE", 6),
            ClientError::BadSignature => ("DENIED", 3),
            ClientError::Api { code, .. } => (code.as_str(), 1),
            _ => ("INTERNAL", 1),
        };
        let mut err = DaemonError::new(code, exit, e.to_string());
        err.hint = hint;
        err
    }
}

impl From<SessionStoreError> for DaemonError {
    fn from(e: SessionStoreError) -> Self {
        let hint = e.hint();
        let mut err = DaemonError::new("SESSION_STORE", 1, e.to_string());
        err.hint = hint;
        err
    }
}

impl From<std::io::Error> for DaemonError {
    fn from(e: std::io::Error) -> Self {
        DaemonError::new("IO", 1, e.to_string())
    }
}
