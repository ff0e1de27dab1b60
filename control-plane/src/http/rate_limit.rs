//! Per-credential token buckets, shared by every control-plane process through PostgreSQL.
//!
//! The bucket of a credential lives in `rate_limit_buckets` (`store::rate_limit`). A process
//! leases a slice of it — 50 ms worth of the rate, at least one token — with one upsert and
//! spends the slice in memory, so a request touches the database only when its process's
//! slice is spent (at the benchmark's rate, once per 50,000 requests), and N processes
//! together admit a credential's rate once, not N times. Admission can run ahead of the
//! bucket by at most one slice per process; a slice left in a process that stops is lost
//! (a few requests refused that could have passed). An empty bucket is remembered until it
//! holds a token again, so a caller hammering past its limit gets 429s without a query each.
//!
//! When PostgreSQL does not answer, the limiter says so in the log and falls back to a bucket
//! of this process alone: a database blip must not become 429s (the request meets the same
//! database next anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::store;

/// The share of a second's rate one lease takes.
const SLICE_S: f64 = 0.05;
/// How often a process deletes the buckets that have refilled.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Slices idle this long are forgotten (their few tokens go back to nobody).
const FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    slice: u32,
    db: Option<PgPool>,
    slices: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slice>>>>,
    local: LocalBuckets,
    swept_at: Mutex<Instant>,
}

/// What this process holds of one credential's shared bucket.
struct Slice {
    tokens: u32,
    /// The shared bucket was empty; it holds a token again at this instant.
    empty_until: Option<Instant>,
    used_at: Instant,
}

impl RateLimiter {
    /// Buckets shared through `db` by every process on that database.
    pub fn shared(db: PgPool, per_second: u32, burst: u32) -> Self {
        Self::with_db(Some(db), per_second, burst)
    }

    /// Buckets of this process alone.
    pub fn in_process(per_second: u32, burst: u32) -> Self {
        Self::with_db(None, per_second, burst)
    }

    fn with_db(db: Option<PgPool>, per_second: u32, burst: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_second,
            burst,
            slice: (per_second * SLICE_S).ceil().clamp(1.0, burst) as u32,
            db,
            slices: Mutex::new(HashMap::new()),
            local: LocalBuckets::new(per_second, burst),
            swept_at: Mutex::new(Instant::now()),
        }
    }

    /// Takes one token for `credential`, or says after how many seconds one will be there.
    pub async fn check(&self, credential: &str) -> Result<(), u64> {
        let Some(db) = &self.db else {
            return self.local.check(credential);
        };
        let now = Instant::now();
        let slice = {
            // A poisoned lock only means another request panicked mid-update; the map is usable.
            let mut slices = self.slices.lock().unwrap_or_else(|p| p.into_inner());
            match slices.get(credential) {
                Some(s) => s.clone(),
                None => {
                    if slices.len() > 100_000 {
                        // A slice in use (locked) stays.
                        slices.retain(|_, s| match s.try_lock() {
                            Ok(s) => now.duration_since(s.used_at) < FORGET_AFTER,
                            Err(_) => true,
                        });
                    }
                    let s = Arc::new(tokio::sync::Mutex::new(Slice {
                        tokens: 0,
                        empty_until: None,
                        used_at: now,
                    }));
                    slices.insert(credential.to_owned(), s.clone());
                    s
                }
            }
        };
        // Requests of one credential queue here while one of them leases: one query, not many.
        let mut s = slice.lock().await;
        s.used_at = now;
        if s.tokens > 0 {
            s.tokens -= 1;
            return Ok(());
        }
        if let Some(until) = s.empty_until {
            let now = Instant::now();
            if now < until {
                return Err(retry_after_s((until - now).as_secs_f64()));
            }
        }
        self.sweep(db).await;
        match store::rate_limit::lease(db, credential, self.per_second, self.burst, self.slice)
            .await
        {
            Ok(lease) if lease.granted > 0 => {
                s.tokens = lease.granted - 1;
                s.empty_until = None;
                Ok(())
            }
            Ok(lease) => {
                let wait_s = (1.0 - lease.tokens_left).max(0.0) / self.per_second;
                s.empty_until = Some(Instant::now() + Duration::from_secs_f64(wait_s));
                Err(retry_after_s(wait_s))
            }
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "rate limit: the shared bucket cannot be leased; limiting in this process alone"
                );
                self.local.check(credential)
            }
        }
    }

    /// Deletes the refilled buckets, at most once per [`SWEEP_EVERY`] in this process.
    async fn sweep(&self, db: &PgPool) {
        {
            let mut at = self.swept_at.lock().unwrap_or_else(|p| p.into_inner());
            if at.elapsed() < SWEEP_EVERY {
                return;
            }
            *at = Instant::now();
        }
        if let Err(e) = store::rate_limit::forget_full(db, self.per_second, self.burst).await {
            tracing::warn!(error = %format!("{e:#}"), "rate limit: deleting refilled buckets failed");
        }
    }
}

fn retry_after_s(wait_s: f64) -> u64 {
    wait_s.ceil().max(1.0) as u64
}

/// Token buckets in this process's memory.
struct LocalBuckets {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl LocalBuckets {
    fn new(per_second: f64, burst: f64) -> Self {
        LocalBuckets {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, credential: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Idle this long, a bucket is full again and can be forgotten.
            buckets.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
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
            Err(retry_after_s((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_refusal_with_retry_after_per_credential() {
        let l = RateLimiter::in_process(1, 3);
        for _ in 0..3 {
            l.check("a").await.unwrap();
        }
        assert_eq!(l.check("a").await, Err(1));
        l.check("b").await.unwrap();
    }

    #[test]
    fn a_slice_is_50_ms_of_the_rate_within_one_token_and_the_burst() {
        assert_eq!(RateLimiter::in_process(100, 200).slice, 5);
        assert_eq!(RateLimiter::in_process(1, 3).slice, 1);
        assert_eq!(RateLimiter::in_process(1_000_000, 1_000).slice, 1_000);
    }
}
