//! Token buckets per caller: per source address for the unauthenticated endpoints
//! (registration and its check), so one misbehaving site cannot flood the hub's CA and
//! store; per appliance for certificate renewal, so a leaked certificate cannot make the CA
//! sign in a loop.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Callers tracked before idle ones are forgotten.
const MAX_SOURCES: usize = 10_000;

/// A token bucket per caller (`K`: a source address by default).
pub struct RateLimiter<K = IpAddr> {
    per_minute: u32,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_minute` requests per caller, in bursts of up to `per_minute`.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `source`; `false` when it has none left.
    pub fn allow(&self, source: K) -> bool {
        self.allow_at(source, Instant::now())
    }

    fn allow_at(&self, source: K, now: Instant) -> bool {
        let capacity = f64::from(self.per_minute);
        let refill = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * refill < capacity
            });
        }
        let (tokens, at) = buckets.entry(source).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * refill).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_cut_then_refills_per_source() {
        let limiter = RateLimiter::<IpAddr>::new(3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow_at(a, t0)));
        assert!(!limiter.allow_at(a, t0));
        assert!(limiter.allow_at(b, t0), "another source has its own bucket");
        assert!(
            limiter.allow_at(a, t0 + Duration::from_secs(20)),
            "one token per 20 s at 3/min"
        );
        assert!(!limiter.allow_at(a, t0 + Duration::from_secs(21)));
    }
}
