//! What a session may touch: a services list (`*` = all, empty = none) and `read_only`
//! (decision 70). Enforced by the server on every call.

use serde::{Deserialize, Serialize};

use crate::names::ServiceName;

/// A session's or agent's scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Service names the holder may read (and, unless read-only, store); `"*"` means all.
    pub services: Vec<String>,
    /// When true, the holder may not store or change anything (absent or `null`: false).
    #[serde(default, deserialize_with = "null_as_false")]
    pub read_only: bool,
}

/// An optional flag: `null` reads like an absent field (false).
fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

impl Scope {
    /// Every service, read and write: a master's scope.
    pub fn all() -> Self {
        Scope {
            services: vec!["*".to_owned()],
            read_only: false,
        }
    }

    /// No service at all.
    pub fn none() -> Self {
        Scope {
            services: Vec::new(),
            read_only: false,
        }
    }

    /// Whether `service` is inside the scope.
    pub fn allows(&self, service: &ServiceName) -> bool {
        self.services
            .iter()
            .any(|s| s == "*" || s == service.as_str())
    }

    /// For people: `github, openai`, `* (every service)` or `none`, then `, read-only`
    /// when it is.
    pub fn describe(&self) -> String {
        let list = if self.services.is_empty() {
            "none".to_owned()
        } else if self.services.iter().any(|x| x == "*") {
            "* (every service)".to_owned()
        } else {
            self.services.join(", ")
        };
        if self.read_only {
            format!("{list}, read-only")
        } else {
            list
        }
    }

    /// Checks every entry is `*` or a valid service name, and removes duplicates.
    pub fn validated(mut self) -> Result<Self, crate::names::NameError> {
        for s in &self.services {
            if s != "*" {
                ServiceName::parse(s)?;
            }
        }
        self.services.sort();
        self.services.dedup();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    #[test]
    fn star_allows_every_service_and_empty_allows_none() {
        assert!(Scope::all().allows(&svc("anything")));
        assert!(!Scope::none().allows(&svc("openai")));
    }

    #[test]
    fn a_list_allows_only_its_members() {
        let s = Scope {
            services: vec!["openai".into(), "github".into()],
            read_only: true,
        };
        assert!(s.allows(&svc("github")));
        assert!(!s.allows(&svc("stripe")));
    }

    #[test]
    fn validation_rejects_bad_names_and_dedups() {
        let bad = Scope {
            services: vec!["Open AI".into()],
            read_only: false,
        };
        assert!(bad.validated().is_err());
        let dup = Scope {
            services: vec!["b".into(), "a".into(), "b".into()],
            read_only: false,
        };
        assert_eq!(dup.validated().unwrap().services, vec!["a", "b"]);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Scope>(r#"{"services":[],"admin":true}"#).is_err());
    }
}
