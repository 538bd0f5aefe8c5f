//! What both engines share: decoding rows into the store's types (one body, written out
//! for each engine's row type by [`row_decoders!`]), the small conversions, the session
//! query and the decision write.

use agentkeys_types::api::AuthStatus;
use agentkeys_types::{Scope, ServiceName, UnixSeconds, Wallet};

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

pub(super) const SESSION_SELECT: &str = "SELECT s.id, s.created_at AS s_created_at, s.expires_at, s.revoked_at, \
     s.last_used_at, a.wallet AS a_wallet, a.kind AS a_kind, a.parent AS a_parent, \
     a.scope_json AS a_scope_json, a.created_at AS a_created_at \
     FROM sessions s JOIN accounts a ON a.wallet = s.wallet";

/// The live session with a token hash, joined with its account: the lookup every request
/// makes, so its text is built once.
pub(super) static SESSION_BY_TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{SESSION_SELECT} WHERE s.token_hash = $1 AND a.deleted_at IS NULL")
});

/// What a decision writes onto its request row.
pub(super) struct DecisionWrite<'a> {
    pub(super) status: AuthStatus,
    pub(super) by: &'a Wallet,
    pub(super) now: UnixSeconds,
    pub(super) grant_expires_at: Option<UnixSeconds>,
    pub(super) sealed_session: Option<&'a [u8]>,
    pub(super) signature: &'a [u8],
    /// How an approval was made (`session`, `passkey`); None for other decisions.
    pub(super) via: Option<&'a str>,
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

/// The approval tables' store methods (standing approvals, passkeys, registration links),
/// the same statements and bindings on both sqlx engines: `$read` and `$write` name the
/// pools to read and write through; the engine provides `write_tx`.
macro_rules! approval_store_methods {
    ($read:ident, $write:ident) => {
        async fn standing_approval(
            &self,
            agent: &Wallet,
            owner: &Wallet,
            svc: &ServiceName,
            now: UnixSeconds,
        ) -> StoreResult<Option<String>> {
            let row = sqlx::query(approval_sql::STANDING_LIVE)
                .bind(agent.as_str())
                .bind(owner.as_str())
                .bind(svc.as_str())
                .bind(now)
                .fetch_optional(&self.$read)
                .await?;
            Ok(row.map(|r| r.try_get("id")).transpose()?)
        }

        async fn standing_approvals(
            &self,
            master: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<Vec<StandingApproval>> {
            let rows = sqlx::query(approval_sql::STANDING_OF_MASTER)
                .bind(master.as_str())
                .bind(now)
                .fetch_all(&self.$read)
                .await?;
            rows.iter().map(standing_from).collect()
        }

        async fn revoke_standing_approval(
            &self,
            master: &Wallet,
            id: &str,
            now: UnixSeconds,
        ) -> StoreResult<bool> {
            let n = sqlx::query(approval_sql::STANDING_REVOKE)
                .bind(master.as_str())
                .bind(id)
                .bind(now)
                .execute(&self.$write)
                .await?
                .rows_affected();
            Ok(n == 1)
        }

        async fn insert_passkey_registration(&self, r: &PasskeyRegistration) -> StoreResult<()> {
            sqlx::query(approval_sql::REGISTRATION_INSERT)
                .bind(&r.token_hash)
                .bind(r.master.as_str())
                .bind(&r.name)
                .bind(r.created_at)
                .bind(r.expires_at)
                .execute(&self.$write)
                .await?;
            Ok(())
        }

        async fn passkey_registration(
            &self,
            token_hash: &[u8],
        ) -> StoreResult<Option<PasskeyRegistration>> {
            let row = sqlx::query(approval_sql::REGISTRATION_BY_HASH)
                .bind(token_hash)
                .fetch_optional(&self.$read)
                .await?;
            row.map(|r| registration_from(&r)).transpose()
        }

        async fn set_passkey_registration_state(
            &self,
            token_hash: &[u8],
            state_json: &str,
            now: UnixSeconds,
        ) -> StoreResult<bool> {
            let n = sqlx::query(approval_sql::REGISTRATION_STATE)
                .bind(token_hash)
                .bind(state_json)
                .bind(now)
                .execute(&self.$write)
                .await?
                .rows_affected();
            Ok(n == 1)
        }

        async fn finish_passkey_registration(
            &self,
            token_hash: &[u8],
            now: UnixSeconds,
            p: &PasskeyRecord,
        ) -> StoreResult<bool> {
            let mut tx = self.write_tx().await?;
            let spent = sqlx::query(approval_sql::REGISTRATION_SPEND)
                .bind(token_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if spent != 1 {
                return Ok(false);
            }
            sqlx::query(approval_sql::PASSKEY_INSERT)
                .bind(&p.id)
                .bind(p.master.as_str())
                .bind(&p.name)
                .bind(&p.credential_id)
                .bind(&p.passkey_json)
                .bind(p.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict("passkey")
                    } else {
                        e.into()
                    }
                })?;
            tx.commit().await?;
            Ok(true)
        }

        async fn passkeys(&self, master: &Wallet) -> StoreResult<Vec<PasskeyRecord>> {
            let rows = sqlx::query(approval_sql::PASSKEYS_OF)
                .bind(master.as_str())
                .fetch_all(&self.$read)
                .await?;
            rows.iter().map(passkey_from).collect()
        }

        async fn touch_passkey(
            &self,
            id: &str,
            passkey_json: &str,
            now: UnixSeconds,
        ) -> StoreResult<()> {
            sqlx::query(approval_sql::PASSKEY_TOUCH)
                .bind(id)
                .bind(passkey_json)
                .bind(now)
                .execute(&self.$write)
                .await?;
            Ok(())
        }

        async fn delete_passkey(&self, master: &Wallet, id: &str) -> StoreResult<bool> {
            let n = sqlx::query(approval_sql::PASSKEY_DELETE)
                .bind(master.as_str())
                .bind(id)
                .execute(&self.$write)
                .await?
                .rows_affected();
            Ok(n == 1)
        }
    };
}
pub(super) use approval_store_methods;

/// Inserts a standing approval inside an approval's transaction `$tx` (either engine).
macro_rules! insert_standing {
    ($tx:ident, $st:ident) => {
        sqlx::query(super::approval_sql::STANDING_INSERT)
            .bind(&$st.id)
            .bind($st.master.as_str())
            .bind($st.agent.as_str())
            .bind($st.owner.as_str())
            .bind($st.service.as_str())
            .bind(&$st.request_id)
            .bind(&$st.via)
            .bind($st.created_at)
            .bind($st.expires_at)
            .execute(&mut *$tx)
            .await?
    };
}
pub(super) use insert_standing;

/// Inside a policy change's transaction `$tx` (either engine) that raised a passkey guard:
/// ends the credential's live standing approvals and unspent grants a session made, and
/// evaluates to the [`PolicyChange`](super::PolicyChange) counting them.
macro_rules! end_session_made {
    ($tx:ident, $owner:ident, $svc:ident, $now:ident) => {{
        let mut change = super::PolicyChange::default();
        for (sql, ended) in [
            (
                super::approval_sql::STANDING_END_SESSION_MADE,
                &mut change.ended_standing,
            ),
            (
                super::approval_sql::GRANTS_END_SESSION_MADE,
                &mut change.ended_grants,
            ),
        ] {
            *ended = sqlx::query(sql)
                .bind($owner.as_str())
                .bind($svc.as_str())
                .bind($now)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
        }
        change
    }};
}
pub(super) use end_session_made;
