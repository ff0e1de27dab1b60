//! Retries with exponential backoff and full jitter, bounded by attempts and a deadline.
//!
//! The SDK's own retries are switched off (see `connect`) so that one place decides what is
//! retried, for how long, and logs every failure with the SDK's whole error context.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use rand::Rng;

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Backoff before the second attempt; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No attempt starts after this much time since the first one.
    pub deadline: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            max_attempts: 10,
        }
    }
}

/// One failed attempt, classified.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub retryable: bool,
    /// HTTP status when the server answered.
    pub status: Option<u16>,
    /// True when the request may have reached the server and taken effect.
    pub maybe_executed: bool,
    pub detail: String,
}

/// The last failure of an operation after its retries.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub last: Attempt,
    pub attempts: u32,
    pub elapsed: Duration,
    /// True when an earlier attempt may have taken effect (relevant to conditional writes).
    pub maybe_executed_before: bool,
}

/// S3 error codes worth another attempt even when their status is not 5xx or 429.
const RETRYABLE_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "InternalError",
    "ServiceUnavailable",
];

/// Classifies an SDK error. `extra_status` lists statuses that are retryable for this
/// particular operation (409 for conditional writes racing each other).
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>, extra_status: &[u16]) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ConstructionFailure(_) => Attempt {
            retryable: false,
            status: None,
            maybe_executed: false,
            detail,
        },
        SdkError::TimeoutError(_) => Attempt {
            retryable: true,
            status: None,
            maybe_executed: true,
            detail,
        },
        SdkError::DispatchFailure(d) => Attempt {
            retryable: !d.is_user(),
            status: None,
            // A refused connection never reached the server; other I/O errors might have.
            maybe_executed: !detail.contains("Connection refused"),
            detail,
        },
        SdkError::ResponseError(_) => Attempt {
            retryable: true,
            status: None,
            maybe_executed: true,
            detail,
        },
        SdkError::ServiceError(s) => {
            let status = raw_status(err);
            let code = s.err().code().unwrap_or_default();
            let retryable = status.is_some_and(|st| {
                (500..=599).contains(&st) || st == 429 || extra_status.contains(&st)
            }) || RETRYABLE_CODES.contains(&code);
            Attempt {
                retryable,
                status,
                maybe_executed: status.is_some_and(|st| st >= 500),
                detail,
            }
        }
        _ => Attempt {
            retryable: false,
            status: raw_status(err),
            maybe_executed: true,
            detail,
        },
    }
}

fn raw_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Runs `attempt` until it succeeds, fails with a non-retryable error, or the policy's
/// attempts or deadline run out. Every failure is logged with the operation, bucket, key and
/// endpoint; the last one is returned.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    what: &Target<'_>,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let start = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0u32;
    let mut maybe_executed_before = false;
    loop {
        attempts += 1;
        let err = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let elapsed = start.elapsed();
        // Full jitter: concurrent writers that failed together do not retry together.
        let sleep = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
        let give_up =
            !err.retryable || attempts >= policy.max_attempts || elapsed + sleep > policy.deadline;
        tracing::warn!(
            op = what.op,
            bucket = what.bucket,
            key = what.key,
            endpoint = what.endpoint,
            attempt = attempts,
            status = err.status,
            retryable = err.retryable,
            giving_up = give_up,
            "S3 request failed: {}",
            err.detail
        );
        if give_up {
            return Err(Failure {
                last: err,
                attempts,
                elapsed,
                maybe_executed_before,
            });
        }
        maybe_executed_before |= err.maybe_executed;
        tokio::time::sleep(sleep).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// What a request is about, for logs and errors.
pub(crate) struct Target<'a> {
    pub op: &'static str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub endpoint: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_at_the_deadline_and_counts_attempts() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            deadline: Duration::from_millis(300),
            max_attempts: 1000,
        };
        let target = Target {
            op: "put_object",
            bucket: "b",
            key: "k",
            endpoint: "http://127.0.0.1:1",
        };
        let started = Instant::now();
        let mut calls = 0;
        let r: Result<(), Failure> = with_retries(&policy, &target, || {
            calls += 1;
            async {
                Err(Attempt {
                    retryable: true,
                    status: Some(503),
                    maybe_executed: true,
                    detail: "SlowDown".into(),
                })
            }
        })
        .await;
        let f = r.expect_err("never succeeds");
        assert_eq!(f.attempts, calls);
        assert!(f.attempts >= 5, "only {} attempts in 300 ms", f.attempts);
        assert!(f.maybe_executed_before);
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn does_not_retry_a_permanent_error() {
        let policy = RetryPolicy::default();
        let target = Target {
            op: "get_object",
            bucket: "b",
            key: "k",
            endpoint: "e",
        };
        let mut calls = 0;
        let r: Result<(), Failure> = with_retries(&policy, &target, || {
            calls += 1;
            async {
                Err(Attempt {
                    retryable: false,
                    status: Some(403),
                    maybe_executed: false,
                    detail: "AccessDenied".into(),
                })
            }
        })
        .await;
        assert_eq!(r.expect_err("fails").attempts, 1);
        assert_eq!(calls, 1);
    }
}
