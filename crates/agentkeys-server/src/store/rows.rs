//! Decoding rows into the store's types, one body for every row type (sqlx's `SqliteRow`
//! and `PgRow`, and the SQLite engine's own connections' rows) written out by
//! [`row_decoders!`] and [`approval_decoders!`], and the small conversions they use.

use agentkeys_types::{Scope, ServiceName, Wallet};

use super::{StoreError, StoreResult};

pub(super) fn wallet(s: String) -> StoreResult<Wallet> {
    Wallet::parse(&s).map_err(|_| StoreError::Corrupt("wallet"))
}

pub(super) fn opt_wallet(s: Option<String>) -> StoreResult<Option<Wallet>> {
    s.map(wallet).transpose()
}

pub(super) fn service(s: String) -> StoreResult<ServiceName> {
    ServiceName::parse(&s).map_err(|_| StoreError::Corrupt("service"))
}

pub(super) fn scope(json: &str) -> StoreResult<Scope> {
    serde_json::from_str(json).map_err(|_| StoreError::Corrupt("scope"))
}

pub(super) fn scope_json(s: &Scope) -> String {
    // Serializing a struct of strings and a bool cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "{\"services\":[]}".to_owned())
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The row decoders for one engine's row type (`SqliteRow`, `PgRow`): the same column
/// names and conversions on both, so one body serves both.
macro_rules! row_decoders {
    ($row:ty) => {
        fn account_from(row: &$row, prefix: &str) -> StoreResult<Account> {
            let col = |c: &str| format!("{prefix}{c}");
            let kind: String = row.try_get(col("kind").as_str())?;
            Ok(Account {
                wallet: wallet(row.try_get(col("wallet").as_str())?)?,
                is_master: kind == "master",
                parent: opt_wallet(row.try_get(col("parent").as_str())?)?,
                scope: scope(&row.try_get::<String, _>(col("scope_json").as_str())?)?,
                created_at: row.try_get(col("created_at").as_str())?,
            })
        }

        fn credential_from(row: &$row) -> StoreResult<StoredCredential> {
            Ok(StoredCredential {
                owner: wallet(row.try_get("owner")?)?,
                service: service(row.try_get("service")?)?,
                wrapped_dek: row.try_get("wrapped_dek")?,
                ciphertext: row.try_get("ciphertext")?,
                kek_id: u32::try_from(row.try_get::<i64, _>("kek_id")?)
                    .map_err(|_| StoreError::Corrupt("kek_id"))?,
                policy: Policy {
                    high_value: row.try_get("high_value")?,
                    require_passkey: row.try_get("require_passkey")?,
                },
                binding: row.try_get("binding")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn auth_request_from(row: &$row) -> StoreResult<AuthRequestRecord> {
            let kind: String = row.try_get("kind")?;
            let status: String = row.try_get("status")?;
            Ok(AuthRequestRecord {
                id: row.try_get("id")?,
                kind: AuthKind::parse(&kind).ok_or(StoreError::Corrupt("auth kind"))?,
                pair_code: row.try_get("pair_code")?,
                nonce: row.try_get("nonce")?,
                otp: row.try_get("otp")?,
                requester_key: row.try_get("requester_key")?,
                agent: opt_wallet(row.try_get("agent")?)?,
                service: row
                    .try_get::<Option<String>, _>("service")?
                    .map(service)
                    .transpose()?,
                requested_by: opt_wallet(row.try_get("requested_by")?)?,
                requested_session: row.try_get("requested_session")?,
                description: row.try_get("description")?,
                status: AuthStatus::parse(&status).ok_or(StoreError::Corrupt("auth status"))?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                decided_by: opt_wallet(row.try_get("decided_by")?)?,
                grant_expires_at: row.try_get("grant_expires_at")?,
                sealed_session: row.try_get("sealed_session")?,
                signature: row.try_get("signature")?,
            })
        }

        fn audit_from(row: &$row) -> StoreResult<AuditRow> {
            Ok(AuditRow {
                seq: row.try_get("seq")?,
                event: NewAuditEvent {
                    ts: row.try_get("ts")?,
                    actor: row.try_get("actor")?,
                    agent: row.try_get("agent")?,
                    service: row.try_get("service")?,
                    action: row.try_get("action")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                },
                prev_hash: row.try_get("prev_hash")?,
                hash: row.try_get("hash")?,
            })
        }

        fn session_from(row: &$row) -> StoreResult<SessionRecord> {
            Ok(SessionRecord {
                id: row.try_get("id")?,
                account: account_from(row, "a_")?,
                created_at: row.try_get("s_created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                last_used_at: row.try_get("last_used_at")?,
            })
        }
    };
}
pub(super) use row_decoders;

/// The decoders of the approval tables (standing approvals, passkeys, registration
/// links), for the two sqlx engines.
macro_rules! approval_decoders {
    ($row:ty) => {
        fn standing_from(row: &$row) -> StoreResult<super::StandingApproval> {
            Ok(super::StandingApproval {
                id: row.try_get("id")?,
                master: wallet(row.try_get("master")?)?,
                agent: wallet(row.try_get("agent")?)?,
                owner: wallet(row.try_get("owner")?)?,
                service: service(row.try_get("service")?)?,
                request_id: row.try_get("request_id")?,
                via: row.try_get("via")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        }

        fn passkey_from(row: &$row) -> StoreResult<super::PasskeyRecord> {
            Ok(super::PasskeyRecord {
                id: row.try_get("id")?,
                master: wallet(row.try_get("master")?)?,
                name: row.try_get("name")?,
                credential_id: row.try_get("credential_id")?,
                passkey_json: row.try_get("passkey_json")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
            })
        }

        fn registration_from(row: &$row) -> StoreResult<super::PasskeyRegistration> {
            Ok(super::PasskeyRegistration {
                token_hash: row.try_get("token_hash")?,
                master: wallet(row.try_get("master")?)?,
                name: row.try_get("name")?,
                state_json: row.try_get("state_json")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
            })
        }
    };
}
pub(super) use approval_decoders;
