//! The environment variable a credential takes in a child: the name it gets by default
//! and which names a caller may choose.

use agentkeys_types::ServiceName;

/// One credential bound into the child: the variable name and the service.
#[derive(Clone, Debug)]
pub struct CredentialVar {
    /// `OPENAI_API_KEY`, or `AGENTKEYS_FD_OPENAI` in fd mode.
    pub name: String,
    /// The credential.
    pub service: ServiceName,
}

/// `OPENAI_API_KEY` for `openai`; `AGENTKEYS_FD_OPENAI` in fd mode.
pub fn default_name(service: &ServiceName, fd_mode: bool) -> String {
    let upper: String = service
        .as_str()
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    if fd_mode {
        format!("AGENTKEYS_FD_{upper}")
    } else {
        format!("{upper}_API_KEY")
    }
}

pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_the_service() {
        let s = ServiceName::parse("open-ai.v2").unwrap();
        assert_eq!(default_name(&s, false), "OPEN_AI_V2_API_KEY");
        assert_eq!(default_name(&s, true), "AGENTKEYS_FD_OPEN_AI_V2");
    }
}
