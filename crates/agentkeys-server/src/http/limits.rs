//! The budgets of anonymous callers: enrolment, pair and recover opens, and the approval
//! and passkey pages (docs/operations.md; decision 56 in
//! docs/architecture.md).
//!
//! Each call is taken, in this order, from the bucket of its address group (an IPv4
//! address, an IPv6 /64), then of its network (IPv4 /24, IPv6 /48), then of the server as
//! a whole. A refusal stops at the first empty bucket, so a flood refused at its own
//! address or network never drains the server-wide one: to exhaust that, a flood needs
//! more networks than `GLOBAL / NETWORK`, not more addresses. The approval page charges a
//! request's deciding master its own budget instead of the server's: an anonymous flood
//! of codes cannot lock a master out of opening and deciding its requests.

use agentkeys_types::Wallet;

use super::error::{ApiError, ApiResult};
use super::extract::ClientAddr;
use crate::state::AppState;
use crate::store::Store;

/// A network's budget, in multiples of one address group's: several /64s of one /48 (or
/// addresses of one /24) together get this much.
const NETWORK: f64 = 8.0;
/// The server's budget, in multiples of one address group's: a flood needs more than
/// `GLOBAL / NETWORK` (12) networks to drain it, where ten addresses drained the old one.
const GLOBAL: f64 = 100.0;
/// A master's own budget on the approval page, in multiples of one address group's.
const MASTER: f64 = 10.0;

/// An anonymous door with budgets of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Door {
    /// `POST /v1/sessions`.
    Enrol,
    /// Anonymous `POST /v1/auth-requests` (pair, recover).
    Open,
    /// The approval and passkey-registration pages' API.
    Page,
}

impl Door {
    /// The bucket keys' prefix and the metrics label.
    fn name(self) -> &'static str {
        match self {
            Door::Enrol => "enrol",
            Door::Open => "pair",
            Door::Page => "page",
        }
    }

    /// One address group's rate per second and burst.
    fn budget<S: Store>(self, state: &AppState<S>) -> (f64, f64) {
        match self {
            Door::Enrol => {
                let r = state.config.enrol_rate;
                (r, (r * 10.0).max(1.0))
            }
            Door::Open | Door::Page => {
                let r = state.config.anon_open_rate;
                (r, (r * 2.0).max(1.0))
            }
        }
    }

    fn refusal(self, wait: std::time::Duration) -> ApiError {
        let message = match self {
            Door::Enrol => "too many enrolment attempts",
            Door::Open => "too many pairing requests; retry shortly",
            Door::Page => "too many requests; retry shortly",
        };
        ApiError::rate_limited(message, wait)
    }
}

/// Takes one call from `key`'s bucket at `factor` times the door's address budget.
async fn take<S: Store>(state: &AppState<S>, door: Door, key: &str, factor: f64) -> ApiResult<()> {
    let (rate, burst) = door.budget(state);
    if let Err(wait) = state
        .store
        .take_token(key, rate * factor, burst * factor)
        .await?
    {
        state.metrics.rate_limited(door.name());
        return Err(door.refusal(wait));
    }
    Ok(())
}

/// The caller's own budgets: its address group's, then its network's.
pub(super) async fn take_local<S: Store>(
    state: &AppState<S>,
    door: Door,
    addr: &ClientAddr,
) -> ApiResult<()> {
    let name = door.name();
    take(state, door, &format!("{name}:{}", addr.group()), 1.0).await?;
    take(state, door, &format!("{name}@{}", addr.network()), NETWORK).await
}

/// The server-wide budget, taken after [`take_local`].
pub(super) async fn take_global<S: Store>(state: &AppState<S>, door: Door) -> ApiResult<()> {
    take(state, door, &format!("{}:*", door.name()), GLOBAL).await
}

/// [`take_local`] then [`take_global`]: a door whose callers name no one.
pub(super) async fn take_all<S: Store>(
    state: &AppState<S>,
    door: Door,
    addr: &ClientAddr,
) -> ApiResult<()> {
    take_local(state, door, addr).await?;
    take_global(state, door).await
}

/// After the approval page looked its code up: a live request's deciding master pays from
/// a budget of its own (a flood that does not know its codes never reaches it); a code
/// that names nothing pays from the server's.
pub(super) async fn take_for_page<S: Store>(
    state: &AppState<S>,
    master: Option<&Wallet>,
) -> ApiResult<()> {
    match master {
        Some(m) => take(state, Door::Page, &format!("page:master:{m}"), MASTER).await,
        None => take_global(state, Door::Page).await,
    }
}
