//! The shared token buckets of the per-credential rate limit (`rate_limit_buckets`).

use sqlx::PgPool;

use super::StoreError;

/// What one lease took from a credential's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// Whole tokens taken (0 when the bucket holds less than one).
    pub granted: u32,
    /// What is left in the bucket after the lease.
    pub tokens_left: f64,
}

/// Refills the bucket of `credential` for the time since its last lease (a missing bucket is
/// full), takes up to `want` whole tokens, and says how many it took: one statement, so
/// leases of several processes serialise on the row.
pub async fn lease(
    pool: &PgPool,
    credential: &str,
    per_second: f64,
    burst: f64,
    want: u32,
) -> Result<Lease, StoreError> {
    // Every SET expression sees the row as it was; `clock_timestamp()` is read after the row
    // lock, so a lease that waited refills for its wait too. GREATEST guards a clock step back.
    let (granted, tokens_left): (i32, f64) = sqlx::query_as(
        "INSERT INTO rate_limit_buckets AS b (credential, tokens, refilled_at, last_grant)
         VALUES ($1, $3 - LEAST($4, FLOOR($3)), clock_timestamp(), LEAST($4, FLOOR($3))::int)
         ON CONFLICT (credential) DO UPDATE SET
             tokens = LEAST($3, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::float8) * $2)
                 - LEAST($4, FLOOR(LEAST($3, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::float8) * $2))),
             last_grant = LEAST($4, FLOOR(LEAST($3, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::float8) * $2)))::int,
             refilled_at = GREATEST(b.refilled_at, clock_timestamp())
         RETURNING last_grant, tokens",
    )
    .bind(credential)
    .bind(per_second)
    .bind(burst)
    .bind(f64::from(want))
    .fetch_one(pool)
    .await?;
    Ok(Lease {
        granted: u32::try_from(granted)
            .map_err(|_| StoreError::Corrupt(format!("rate limit lease of {granted} tokens")))?,
        tokens_left,
    })
}

/// Deletes the buckets that have refilled completely (a missing bucket is a full one).
pub async fn forget_full(pool: &PgPool, per_second: f64, burst: f64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM rate_limit_buckets
         WHERE tokens + EXTRACT(EPOCH FROM clock_timestamp() - refilled_at)::float8 * $1 >= $2",
    )
    .bind(per_second)
    .bind(burst)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
