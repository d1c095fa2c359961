//! Rate limits per caller and method, in fixed one-minute windows (the contract's numbers:
//! start 10, get_status 100, cancel 20, evaluate 5, export 10 per minute). Written by hand:
//! the contract wants `X-RateLimit-Limit/Remaining/Reset` per window, which a fixed window gives
//! directly; the map is pruned of past windows so it cannot grow without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use agentcore_api::methods;

/// Calls per minute of a method, `None` for unlimited.
#[must_use]
pub fn limit_of(method: &str) -> Option<u32> {
    match method {
        methods::START => Some(10),
        methods::STATUS => Some(100),
        methods::CANCEL => Some(20),
        methods::EVALUATE => Some(5),
        methods::EXPORT => Some(10),
        _ => None,
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The call may go ahead.
    pub allowed: bool,
    /// Calls per window.
    pub limit: u32,
    /// Calls left in this window.
    pub remaining: u32,
    /// Unix time (seconds) when the window resets.
    pub reset: u64,
}

impl Decision {
    /// Seconds until the window resets (at least 1).
    #[must_use]
    pub fn retry_after(&self, now: u64) -> u64 {
        self.reset.saturating_sub(now).max(1)
    }
}

/// A rate-limit bucket: (organisation, subject, method).
type Bucket = (String, String, String);

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    window_s: u64,
    scale: u32,
    counts: Mutex<HashMap<Bucket, (u64, u32)>>,
}

/// Seconds since the epoch.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RateLimiter {
    /// The contract's limits times `scale` (1 in production; a load benchmark may raise them).
    #[must_use]
    pub fn new(scale: u32) -> Self {
        Self { window_s: 60, scale: scale.max(1), counts: Mutex::new(HashMap::new()) }
    }

    /// Counts a call of `method` by `subject` of `org` at `now`; `None` when the method is
    /// unlimited. Buckets are per (organisation, subject): a subject named like one of another
    /// organisation does not share its bucket.
    pub fn check(&self, org: &str, subject: &str, method: &str, now: u64) -> Option<Decision> {
        let limit = limit_of(method)?.saturating_mul(self.scale);
        let window = now / self.window_s;
        let reset = (window + 1) * self.window_s;
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() > 100_000 {
            counts.retain(|_, (w, _)| *w == window);
        }
        let key = (org.to_owned(), subject.to_owned(), method.to_owned());
        let entry = counts.entry(key).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        let allowed = entry.1 < limit;
        if allowed {
            entry.1 += 1;
        }
        Some(Decision { allowed, limit, remaining: limit - entry.1, reset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_caller_and_method_and_resets_each_window() {
        let r = RateLimiter::new(1);
        let t = 1_000_020; // 20 s into a window that ends at 1_000_080
        for k in 0..5 {
            let d = r.check("acme", "alice", methods::EVALUATE, t).unwrap();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining, d.reset), (5, 4 - k, 1_000_080));
        }
        let d = r.check("acme", "alice", methods::EVALUATE, t + 1).unwrap();
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after(t + 1)), (0, 59));
        assert!(r.check("acme", "bob", methods::EVALUATE, t).unwrap().allowed, "per caller");
        // Issue 14, finding 8: the same subject in another organisation has its own bucket.
        assert!(r.check("globex", "alice", methods::EVALUATE, t).unwrap().allowed, "per org");
        assert!(r.check("acme", "alice", methods::STATUS, t).unwrap().allowed, "per method");
        assert!(
            r.check("acme", "alice", methods::EVALUATE, 1_000_080).unwrap().allowed,
            "next window"
        );
        assert_eq!(r.check("acme", "alice", methods::LIST, t), None);
    }
}
