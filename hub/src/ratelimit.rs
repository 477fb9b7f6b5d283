//! Token buckets per caller: per source address for the unauthenticated endpoints
//! (registration and its check), so one misbehaving site cannot flood the hub's CA and
//! store; per appliance for certificate renewal, so a leaked certificate cannot make the CA
//! sign in a loop.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How often one source's unauthenticated refusals reach the audit log.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// Unauthenticated refusals per source, so that at most one audit entry per source and
/// minute records them (with how many it stands for): a flood of bad tokens or
/// certificates cannot grow the store faster than that.
#[derive(Default)]
pub struct RefusalLog {
    /// Per source: when its current window began, and the refusals in it not yet recorded.
    windows: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl RefusalLog {
    /// Counts a refusal from `source`. `Some(n)` when it is to be recorded: the first of a
    /// window, standing also for the `n` refusals of the previous window that were not.
    pub fn refused(&self, source: IpAddr) -> Option<u64> {
        self.refused_at(source, Instant::now())
    }

    fn refused_at(&self, source: IpAddr, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_SOURCES {
            // A source whose window closed with nothing unrecorded has nothing to keep.
            windows.retain(|_, (at, n)| now.duration_since(*at) < REFUSAL_WINDOW || *n > 0);
        }
        match windows.get_mut(&source) {
            Some((at, n)) if now.duration_since(*at) < REFUSAL_WINDOW => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let earlier = std::mem::take(n);
                *at = now;
                Some(earlier)
            }
            None => {
                windows.insert(source, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn one_refusal_per_source_and_minute_is_recorded_with_the_rest_counted() {
        let log = RefusalLog::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(log.refused_at(a, t0), Some(0));
        assert!((1..=500).all(|i| log.refused_at(a, t0 + Duration::from_millis(i)).is_none()));
        assert_eq!(log.refused_at(b, t0), Some(0), "another source");
        assert_eq!(log.refused_at(a, t0 + Duration::from_secs(61)), Some(500));
        assert_eq!(log.refused_at(a, t0 + Duration::from_secs(62)), None);
    }
}
