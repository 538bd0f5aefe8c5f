//! Validated names: wallets, services and token prefixes (docs/cli.md, "Environment",
//! names the variables and paths built from them).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of a master session token, so leak scanners can find it (decision 69).
pub const MASTER_TOKEN_PREFIX: &str = "akm_";
/// Prefix of an agent (child) session token.
pub const AGENT_TOKEN_PREFIX: &str = "aka_";

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not `0x` followed by 40 lower-case hex digits.
    #[error("a wallet is 0x followed by 40 lower-case hex digits")]
    Wallet,
    /// Not `[a-z0-9][a-z0-9._-]{0,63}`.
    #[error(
        "a service name is 1 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
    )]
    Service,
}

/// An account name: `0x` + 40 lower-case hex digits (20 random bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Wallet(String);

impl Wallet {
    /// Parses and validates a wallet.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let hex = s.strip_prefix("0x").ok_or(NameError::Wallet)?;
        if hex.len() == 40
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Wallet(s.to_owned()))
        } else {
            Err(NameError::Wallet)
        }
    }

    /// The wallet for 20 bytes.
    pub fn from_bytes(bytes: &[u8; 20]) -> Self {
        let mut s = String::with_capacity(42);
        s.push_str("0x");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Wallet(s)
    }

    /// The wallet as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Wallet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Wallet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A credential's name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    /// Parses and validates a service name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
        if first_ok && rest_ok && b.len() <= 64 {
            Ok(ServiceName(s.to_owned()))
        } else {
            Err(NameError::Service)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServiceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Wallet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Wallet".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An account's wallet address: 0x and 40 lower-case hex digits",
            "pattern": "^0x[0-9a-f]{40}$"
        })
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for ServiceName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ServiceName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A credential's name: lower-case letters, digits, '-', '_' and '.'",
            "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallets_must_be_lower_case_hex_of_the_right_length() {
        let ok = "0x00112233445566778899aabbccddeeff00112233";
        assert_eq!(Wallet::parse(ok).unwrap().as_str(), ok);
        for bad in [
            "",
            "0x",
            "00112233445566778899aabbccddeeff0011223344",
            "0x00112233445566778899AABBCCDDEEFF00112233",
            "0x00112233445566778899aabbccddeeff0011223",
            "0x00112233445566778899aabbccddeeff001122334",
            "0xg0112233445566778899aabbccddeeff00112233",
        ] {
            assert_eq!(Wallet::parse(bad), Err(NameError::Wallet), "{bad}");
        }
        assert_eq!(
            Wallet::from_bytes(&[0xab; 20]).as_str(),
            format!("0x{}", "ab".repeat(20))
        );
    }

    #[test]
    fn service_names_follow_the_documented_pattern() {
        for ok in [
            "openai",
            "github",
            "a",
            "9",
            "aws.prod_eu-1",
            &"a".repeat(64),
        ] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "_x",
            "OpenAI",
            "a b",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(ServiceName::parse(bad), Err(NameError::Service), "{bad}");
        }
    }

    #[test]
    fn names_are_validated_when_deserialized() {
        assert!(serde_json::from_str::<ServiceName>("\"Bad Name\"").is_err());
        assert!(serde_json::from_str::<Wallet>("\"0x12\"").is_err());
        let s: ServiceName = serde_json::from_str("\"openai\"").unwrap();
        assert_eq!(s.as_str(), "openai");
    }
}
