//! Per-credential token buckets (in memory, per replica).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets idle this long are full again and can be forgotten.
const FORGET_AFTER_S: f64 = 600.0;

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `credential`, or says after how many seconds one will be there.
    pub fn check(&self, credential: &str) -> Result<(), u64> {
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update; the map is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < FORGET_AFTER_S);
        }
        let (tokens, at) = buckets
            .entry(credential.to_owned())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after_per_credential() {
        let l = RateLimiter::new(1, 3);
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        assert_eq!(l.check("a"), Err(1));
        l.check("b").unwrap();
    }
}
