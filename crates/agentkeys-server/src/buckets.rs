//! Token buckets kept in one process's memory: the per-session read limiter, the refusal
//! tally, and the SQLite engine's shared budgets (one process serves that file).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per session id.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token for `key`; false when the bucket is empty.
    pub(crate) fn allow(&self, key: &str, rate: f64, burst: f64) -> bool {
        self.take(key, rate, burst).is_ok()
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub(crate) fn take(&self, key: &str, rate: f64, burst: f64) -> Result<(), std::time::Duration> {
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 100_000 {
            // Bound memory: forget full buckets.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(key.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let l = RateLimiter::default();
        assert!((0..5).all(|_| l.allow("s", 1.0, 5.0)));
        assert!(!l.allow("s", 1.0, 5.0));
        assert!(l.allow("other", 1.0, 5.0));
        assert!(l.allow("s", 0.0, 0.0), "rate 0 means unlimited");
        let wait = l.take("s", 1.0, 5.0).expect_err("still empty");
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1));
    }
}
