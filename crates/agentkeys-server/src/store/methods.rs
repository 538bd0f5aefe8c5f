//! The store's operations whose SQL is the same on both sqlx engines, each body written
//! once: [`store_methods!`] writes them into each engine's `impl Store`, and
//! [`connection_helpers!`] writes the steps that run inside a caller's transaction for
//! each engine's connection type (the vaultwarden `db_run!` idea: one body, and an arm per
//! engine only where the SQL differs).
//!
//! What an engine brings to the expansion: the pools named `$read` and `$write`;
//! `write_tx()`; `pool_counts()`; `announce_opened()` and, beside its impl,
//! `announce_decision()`; and a `dialect` module with the statements whose text differs
//! between SQLite and PostgreSQL, `kek_id()` (the column's integer width) and
//! `known_migrations()`. What really differs stays in the engine's own file: the hot
//! lookups, audit appends and high-value releases, the rate buckets, credential upserts,
//! the filtered audit list and the purge.

use agentkeys_types::api::AuthStatus;
use agentkeys_types::{UnixSeconds, Wallet};

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

/// The steps that run on a connection or inside a caller's transaction, for one engine's
/// connection type (`sqlx::SqliteConnection`, `sqlx::PgConnection`).
macro_rules! connection_helpers {
    ($conn:ty) => {
        async fn insert_session_in(conn: &mut $conn, s: &NewSession) -> Result<(), sqlx::Error> {
            sqlx::query(
                "INSERT INTO sessions (id, token_hash, wallet, kind, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&s.id)
            .bind(&s.token_hash[..])
            .bind(s.wallet.as_str())
            .bind(if s.is_master { "master" } else { "agent" })
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(conn)
            .await?;
            Ok(())
        }

        /// Marks a pending, unexpired request decided and announces it to the other
        /// servers sharing the store (on PostgreSQL the notification leaves at commit);
        /// tells apart why it could not be.
        async fn decide_in(
            conn: &mut $conn,
            id: &str,
            d: super::methods::DecisionWrite<'_>,
        ) -> Result<DecideOutcome, sqlx::Error> {
            let super::methods::DecisionWrite {
                status,
                by,
                now,
                grant_expires_at,
                sealed_session,
                signature,
                via,
            } = d;
            let done = sqlx::query(
                "UPDATE auth_requests SET status = $1, decided_by = $2, decided_at = $3, \
                 grant_expires_at = $4, sealed_session = $5, signature = $6, decided_via = $8 \
                 WHERE id = $7 AND status = 'pending' AND expires_at > $3",
            )
            .bind(status.as_str())
            .bind(by.as_str())
            .bind(now)
            .bind(grant_expires_at)
            .bind(sealed_session)
            .bind(signature)
            .bind(id)
            .bind(via)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if done == 1 {
                announce_decision(&mut *conn, id).await?;
                return Ok(DecideOutcome::Decided);
            }
            let row = sqlx::query("SELECT status FROM auth_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(match row {
                None => DecideOutcome::NotFound,
                Some(r) => {
                    let st: String = r.try_get("status")?;
                    if st == "pending" {
                        DecideOutcome::Expired
                    } else {
                        DecideOutcome::AlreadyDecided
                    }
                }
            })
        }
    };
}
pub(super) use connection_helpers;

/// The store methods with the same statements and bindings on both sqlx engines: `$read`
/// and `$write` name the pools to read and write through (SQLite: a reader pool and its
/// one writer; PostgreSQL: one pool for both).
macro_rules! store_methods {
    ($read:ident, $write:ident) => {
        async fn ensure_master(
            &self,
            enrol_hash: &[u8; 32],
            new_wallet: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<Account> {
            // Two servers enrolling the same token at once: one insert wins, both read it.
            sqlx::query(
                "INSERT INTO accounts (wallet, kind, enrol_hash, scope_json, created_at) \
                 VALUES ($1, 'master', $2, $3, $4) ON CONFLICT (enrol_hash) DO NOTHING",
            )
            .bind(new_wallet.as_str())
            .bind(&enrol_hash[..])
            .bind(scope_json(&Scope::all()))
            .bind(now)
            .execute(&self.$write)
            .await?;
            let row = sqlx::query(
                "SELECT wallet, kind, parent, scope_json, created_at FROM accounts \
                 WHERE enrol_hash = $1 AND deleted_at IS NULL",
            )
            .bind(&enrol_hash[..])
            .fetch_optional(&self.$write)
            .await?
            .ok_or(StoreError::Corrupt("master account"))?;
            account_from(&row, "")
        }

        async fn account(&self, w: &Wallet) -> StoreResult<Option<Account>> {
            let row = sqlx::query(
                "SELECT wallet, kind, parent, scope_json, created_at FROM accounts \
                 WHERE wallet = $1 AND deleted_at IS NULL",
            )
            .bind(w.as_str())
            .fetch_optional(&self.$read)
            .await?;
            row.map(|r| account_from(&r, "")).transpose()
        }

        async fn agent_wallets_ever(&self, parent: &Wallet) -> StoreResult<Vec<Wallet>> {
            let rows =
                sqlx::query("SELECT wallet FROM accounts WHERE parent = $1 ORDER BY wallet")
                    .bind(parent.as_str())
                    .fetch_all(&self.$read)
                    .await?;
            rows.iter().map(|r| wallet(r.try_get("wallet")?)).collect()
        }

        async fn list_agents(
            &self,
            parent: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<Vec<AgentSummary>> {
            let rows = sqlx::query(dialect::LIST_AGENTS)
                .bind(parent.as_str())
                .bind(now)
                .fetch_all(&self.$read)
                .await?;
            rows.iter()
                .map(|r| {
                    let idents: Option<String> = r.try_get("idents")?;
                    let mut identities: Vec<String> = idents
                        .map(|s| s.split('\n').map(str::to_owned).collect())
                        .unwrap_or_default();
                    identities.sort();
                    Ok(AgentSummary {
                        account: account_from(r, "")?,
                        last_used_at: r.try_get("last_used")?,
                        active_sessions: u64::try_from(r.try_get::<i64, _>("active")?)
                            .unwrap_or(0),
                        identities,
                    })
                })
                .collect()
        }

        async fn set_agent_scope(
            &self,
            parent: &Wallet,
            agent: &Wallet,
            s: &Scope,
        ) -> StoreResult<bool> {
            let n = sqlx::query(
                "UPDATE accounts SET scope_json = $1 \
                 WHERE wallet = $2 AND parent = $3 AND deleted_at IS NULL",
            )
            .bind(scope_json(s))
            .bind(agent.as_str())
            .bind(parent.as_str())
            .execute(&self.$write)
            .await?
            .rows_affected();
            Ok(n == 1)
        }

        async fn teardown_agent(
            &self,
            parent: &Wallet,
            agent: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<Option<(u64, u64)>> {
            let mut tx = self.write_tx().await?;
            let owned = sqlx::query(
                "UPDATE accounts SET deleted_at = $1 \
                 WHERE wallet = $2 AND parent = $3 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(agent.as_str())
            .bind(parent.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if owned != 1 {
                return Ok(None);
            }
            let revoked = sqlx::query(super::sql::REVOKE_WALLET)
                .bind(now)
                .bind(agent.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let deleted = sqlx::query("DELETE FROM credentials WHERE owner = $1")
                .bind(agent.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM identities WHERE wallet = $1")
                .bind(agent.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((revoked, deleted)))
        }

        async fn insert_session(&self, s: &NewSession) -> StoreResult<()> {
            let mut conn = self.$write.acquire().await?;
            insert_session_in(&mut conn, s).await?;
            Ok(())
        }

        async fn touch_session(&self, id: &str, now: UnixSeconds) -> StoreResult<()> {
            sqlx::query("UPDATE sessions SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.$write)
                .await?;
            Ok(())
        }

        async fn session_by_id(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
            let row = sqlx::query(super::sql::SESSION_BY_ID.as_str())
                .bind(id)
                .fetch_optional(&self.$read)
                .await?;
            row.map(|r| session_from(&r)).transpose()
        }

        async fn revoke_session(&self, id: &str, now: UnixSeconds) -> StoreResult<u64> {
            Ok(sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&self.$write)
            .await?
            .rows_affected())
        }

        async fn revoke_wallet(&self, w: &Wallet, now: UnixSeconds) -> StoreResult<u64> {
            Ok(sqlx::query(super::sql::REVOKE_WALLET)
                .bind(now)
                .bind(w.as_str())
                .execute(&self.$write)
                .await?
                .rows_affected())
        }

        async fn list_credentials(&self, owner: &Wallet) -> StoreResult<Vec<StoredCredential>> {
            let rows = sqlx::query(dialect::LIST_CREDENTIALS)
                .bind(owner.as_str())
                .fetch_all(&self.$read)
                .await?;
            rows.iter().map(credential_from).collect()
        }

        async fn set_policy(
            &self,
            owner: &Wallet,
            svc: &ServiceName,
            policy: Policy,
            now: UnixSeconds,
        ) -> StoreResult<Option<PolicyChange>> {
            let mut tx = self.write_tx().await?;
            // On PostgreSQL the credential's row stays locked to the commit: an approval
            // checking the guard (`dialect::NEEDS_PASSKEY`) waits, and then sees it.
            let n = sqlx::query(
                "UPDATE credentials SET high_value = $1, require_passkey = $4 \
                 WHERE owner = $2 AND service = $3 AND (NOT require_passkey OR $4)",
            )
            .bind(policy.high_value)
            .bind(owner.as_str())
            .bind(svc.as_str())
            .bind(policy.require_passkey)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(None);
            }
            // Raising the guard ends the credential's live standing approvals and unspent
            // grants a session made, in the same transaction.
            let mut change = PolicyChange::default();
            if policy.require_passkey {
                for (sql, ended) in [
                    (
                        super::sql::STANDING_END_SESSION_MADE,
                        &mut change.ended_standing,
                    ),
                    (
                        super::sql::GRANTS_END_SESSION_MADE,
                        &mut change.ended_grants,
                    ),
                ] {
                    *ended = sqlx::query(sql)
                        .bind(owner.as_str())
                        .bind(svc.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
            }
            tx.commit().await?;
            Ok(Some(change))
        }

        async fn set_binding(
            &self,
            owner: &Wallet,
            svc: &ServiceName,
            binding: Option<&str>,
        ) -> StoreResult<bool> {
            let n = sqlx::query(
                "UPDATE credentials SET binding = $1 WHERE owner = $2 AND service = $3",
            )
            .bind(binding)
            .bind(owner.as_str())
            .bind(svc.as_str())
            .execute(&self.$write)
            .await?
            .rows_affected();
            Ok(n == 1)
        }

        async fn insert_auth_request(&self, r: &AuthRequestRecord) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO auth_requests (id, kind, pair_code, nonce, otp, requester_key, \
                   agent, service, requested_by, requested_session, description, status, \
                   created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&r.id)
            .bind(r.kind.as_str())
            .bind(&r.pair_code)
            .bind(&r.nonce)
            .bind(&r.otp)
            .bind(r.requester_key.as_deref())
            .bind(r.agent.as_ref().map(Wallet::as_str))
            .bind(r.service.as_ref().map(ServiceName::as_str))
            .bind(r.requested_by.as_ref().map(Wallet::as_str))
            .bind(r.requested_session.as_deref())
            .bind(r.description.as_deref())
            .bind(r.status.as_str())
            .bind(r.created_at)
            .bind(r.expires_at)
            .execute(&self.$write)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("pair code")
                } else {
                    e.into()
                }
            })?;
            self.announce_opened(&r.id).await
        }

        async fn auth_request(&self, id: &str) -> StoreResult<Option<AuthRequestRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                super::sql::auth_request_columns!(),
                " FROM auth_requests WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.$read)
            .await?;
            row.map(|r| auth_request_from(&r)).transpose()
        }

        async fn auth_request_by_code(
            &self,
            code: &str,
        ) -> StoreResult<Option<AuthRequestRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                super::sql::auth_request_columns!(),
                " FROM auth_requests WHERE pair_code = $1"
            ))
            .bind(code)
            .fetch_optional(&self.$read)
            .await?;
            row.map(|r| auth_request_from(&r)).transpose()
        }

        async fn inbox(
            &self,
            master: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<Vec<AuthRequestRecord>> {
            let rows = sqlx::query(super::sql::INBOX.as_str())
                .bind(master.as_str())
                .bind(now)
                .fetch_all(&self.$read)
                .await?;
            rows.iter().map(auth_request_from).collect()
        }

        async fn pending_high_value(
            &self,
            session: &str,
            agent: &Wallet,
            svc: &ServiceName,
            now: UnixSeconds,
        ) -> StoreResult<Option<AuthRequestRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                super::sql::auth_request_columns!(),
                " FROM auth_requests WHERE requested_session = $1 AND agent = $2 \
                 AND service = $3 AND kind = 'high_value' AND status = 'pending' \
                 AND expires_at > $4 ORDER BY created_at DESC LIMIT 1"
            ))
            .bind(session)
            .bind(agent.as_str())
            .bind(svc.as_str())
            .bind(now)
            .fetch_optional(&self.$read)
            .await?;
            row.map(|r| auth_request_from(&r)).transpose()
        }

        async fn approve(
            &self,
            id: &str,
            by: &Wallet,
            now: UnixSeconds,
            approval: &Approval,
        ) -> StoreResult<DecideOutcome> {
            let mut tx = self.write_tx().await?;
            let (grant, sealed, signature) = match approval {
                Approval::Pair {
                    sealed_session,
                    signature,
                    ..
                }
                | Approval::Recover {
                    sealed_session,
                    signature,
                    ..
                } => (None, Some(sealed_session.as_slice()), signature.as_slice()),
                Approval::HighValue {
                    grant_expires_at,
                    signature,
                    ..
                } => (Some(*grant_expires_at), None, signature.as_slice()),
            };
            let via = match approval {
                Approval::HighValue { via, .. } => Some(via.as_str()),
                _ => None,
            };
            // A guard raised since the approver looked: a session's approval no longer counts.
            if via.is_some_and(|v| v != "passkey") {
                let guarded: Option<bool> = sqlx::query_scalar(dialect::NEEDS_PASSKEY)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if guarded == Some(true) {
                    return Ok(DecideOutcome::PasskeyRequired);
                }
            }
            let outcome = decide_in(
                &mut tx,
                id,
                super::methods::DecisionWrite {
                    status: AuthStatus::Approved,
                    by,
                    now,
                    grant_expires_at: grant,
                    sealed_session: sealed,
                    signature,
                    via,
                },
            )
            .await?;
            if outcome != DecideOutcome::Decided {
                return Ok(outcome);
            }
            match approval {
                Approval::Pair { agent, session, .. } => {
                    sqlx::query(
                        "INSERT INTO accounts (wallet, kind, parent, scope_json, created_at) \
                         VALUES ($1, 'agent', $2, $3, $4)",
                    )
                    .bind(agent.wallet.as_str())
                    .bind(agent.parent.as_ref().map(Wallet::as_str))
                    .bind(scope_json(&agent.scope))
                    .bind(agent.created_at)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE auth_requests SET agent = $1 WHERE id = $2")
                        .bind(agent.wallet.as_str())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    insert_session_in(&mut tx, session).await?;
                }
                Approval::Recover { session, .. } => {
                    // Recovery replaces a lost or compromised daemon: its sessions end now,
                    // in the same transaction that mints the new one.
                    sqlx::query(super::sql::REVOKE_WALLET)
                        .bind(now)
                        .bind(session.wallet.as_str())
                        .execute(&mut *tx)
                        .await?;
                    insert_session_in(&mut tx, session).await?;
                }
                Approval::HighValue {
                    standing: Some(st), ..
                } => {
                    sqlx::query(super::sql::STANDING_INSERT)
                        .bind(&st.id)
                        .bind(st.master.as_str())
                        .bind(st.agent.as_str())
                        .bind(st.owner.as_str())
                        .bind(st.service.as_str())
                        .bind(&st.request_id)
                        .bind(&st.via)
                        .bind(st.created_at)
                        .bind(st.expires_at)
                        .execute(&mut *tx)
                        .await?;
                }
                Approval::HighValue { .. } => {}
            }
            tx.commit().await?;
            Ok(DecideOutcome::Decided)
        }

        async fn deny(
            &self,
            id: &str,
            by: &Wallet,
            now: UnixSeconds,
            signature: &[u8],
        ) -> StoreResult<DecideOutcome> {
            let mut tx = self.write_tx().await?;
            let outcome = decide_in(
                &mut tx,
                id,
                super::methods::DecisionWrite {
                    status: AuthStatus::Denied,
                    by,
                    now,
                    grant_expires_at: None,
                    sealed_session: None,
                    signature,
                    via: None,
                },
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        }

        async fn link_identity(
            &self,
            master: &Wallet,
            kind: &str,
            value: &str,
            w: &Wallet,
            now: UnixSeconds,
        ) -> StoreResult<()> {
            // Two servers linking the same name at once: one insert wins, both read it.
            sqlx::query(
                "INSERT INTO identities (master, kind, value, wallet, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (master, kind, value) DO NOTHING",
            )
            .bind(master.as_str())
            .bind(kind)
            .bind(value)
            .bind(w.as_str())
            .bind(now)
            .execute(&self.$write)
            .await?;
            let owner: String = sqlx::query_scalar(
                "SELECT wallet FROM identities WHERE master = $1 AND kind = $2 AND value = $3",
            )
            .bind(master.as_str())
            .bind(kind)
            .bind(value)
            .fetch_one(&self.$write)
            .await?;
            if owner != w.as_str() {
                return Err(StoreError::Conflict("identity"));
            }
            Ok(())
        }

        async fn resolve_identity(
            &self,
            master: &Wallet,
            kind: &str,
            value: &str,
        ) -> StoreResult<Option<Wallet>> {
            let row = sqlx::query(
                "SELECT i.wallet FROM identities i JOIN accounts a ON a.wallet = i.wallet \
                 WHERE i.master = $1 AND i.kind = $2 AND i.value = $3 AND a.deleted_at IS NULL",
            )
            .bind(master.as_str())
            .bind(kind)
            .bind(value)
            .fetch_optional(&self.$read)
            .await?;
            row.map(|r| wallet(r.try_get("wallet")?)).transpose()
        }

        async fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditRow>> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                super::sql::audit_columns!(),
                " FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.$read)
            .await?;
            rows.iter().map(audit_from).collect()
        }

        async fn gauges(&self, now: UnixSeconds) -> StoreResult<super::Gauges> {
            let row = sqlx::query(super::sql::GAUGES)
                .bind(now)
                .fetch_one(&self.$read)
                .await?;
            let (size, idle) = self.pool_counts();
            Ok(super::Gauges {
                active_sessions: row.try_get("sessions")?,
                pending_auth_requests: row.try_get("pending")?,
                pool_size: i64::from(size),
                pool_idle: i64::try_from(idle).unwrap_or(i64::MAX),
            })
        }

        async fn credentials_to_rewrap(
            &self,
            current: u32,
            after: Option<(Wallet, ServiceName)>,
            limit: u32,
        ) -> StoreResult<Vec<StoredCredential>> {
            let (owner, svc) = after
                .map(|(o, s)| (o.as_str().to_owned(), s.as_str().to_owned()))
                .unwrap_or_default();
            let rows = sqlx::query(dialect::CREDENTIALS_TO_REWRAP)
                .bind(dialect::kek_id(current))
                .bind(owner)
                .bind(svc)
                .bind(i64::from(limit))
                .fetch_all(&self.$read)
                .await?;
            rows.iter().map(credential_from).collect()
        }

        async fn rewrap(
            &self,
            owner: &Wallet,
            svc: &ServiceName,
            from: &[u8],
            to: &[u8],
            kek_id: u32,
        ) -> StoreResult<bool> {
            let n = sqlx::query(
                "UPDATE credentials SET wrapped_dek = $1, kek_id = $2 \
                 WHERE owner = $3 AND service = $4 AND wrapped_dek = $5",
            )
            .bind(to)
            .bind(dialect::kek_id(kek_id))
            .bind(owner.as_str())
            .bind(svc.as_str())
            .bind(from)
            .execute(&self.$write)
            .await?
            .rows_affected();
            Ok(n == 1)
        }

        async fn kek_usage(&self) -> StoreResult<Vec<(u32, i64)>> {
            let rows = sqlx::query(dialect::KEK_USAGE)
                .fetch_all(&self.$read)
                .await?;
            rows.iter()
                .map(|r| {
                    let id: i64 = r.try_get("kek_id")?;
                    Ok((
                        u32::try_from(id).map_err(|_| StoreError::Corrupt("kek_id"))?,
                        r.try_get("n")?,
                    ))
                })
                .collect()
        }

        async fn ready(&self) -> StoreResult<u32> {
            let applied: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&self.$read)
                    .await?;
            super::migrations_cover(applied, dialect::known_migrations())
        }

        async fn standing_approval(
            &self,
            agent: &Wallet,
            owner: &Wallet,
            svc: &ServiceName,
            now: UnixSeconds,
        ) -> StoreResult<Option<String>> {
            let row = sqlx::query(super::sql::STANDING_LIVE)
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
            let rows = sqlx::query(super::sql::STANDING_OF_MASTER)
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
            let n = sqlx::query(super::sql::STANDING_REVOKE)
                .bind(master.as_str())
                .bind(id)
                .bind(now)
                .execute(&self.$write)
                .await?
                .rows_affected();
            Ok(n == 1)
        }

        async fn insert_passkey_registration(&self, r: &PasskeyRegistration) -> StoreResult<()> {
            sqlx::query(super::sql::REGISTRATION_INSERT)
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
            let row = sqlx::query(super::sql::REGISTRATION_BY_HASH)
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
            let n = sqlx::query(super::sql::REGISTRATION_STATE)
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
            let spent = sqlx::query(super::sql::REGISTRATION_SPEND)
                .bind(token_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if spent != 1 {
                return Ok(false);
            }
            sqlx::query(super::sql::PASSKEY_INSERT)
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
            let rows = sqlx::query(super::sql::PASSKEYS_OF)
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
            sqlx::query(super::sql::PASSKEY_TOUCH)
                .bind(id)
                .bind(passkey_json)
                .bind(now)
                .execute(&self.$write)
                .await?;
            Ok(())
        }

        async fn delete_passkey(&self, master: &Wallet, id: &str) -> StoreResult<bool> {
            let n = sqlx::query(super::sql::PASSKEY_DELETE)
                .bind(master.as_str())
                .bind(id)
                .execute(&self.$write)
                .await?
                .rows_affected();
            Ok(n == 1)
        }
    };
}
pub(super) use store_methods;
