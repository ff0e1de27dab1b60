//! `signing_keys`: the Ed25519 keys of the control plane's JWTs.

use chrono::{DateTime, Utc};

use super::{Conn, StoreError};

#[derive(sqlx::FromRow, Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_der: Vec<u8>,
    pub public_raw: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// Keys that still verify: active, or retired less than `verify_for_s` ago.
pub async fn live(conn: &mut Conn, verify_for_s: i64) -> Result<Vec<SigningKeyRow>, StoreError> {
    Ok(sqlx::query_as::<_, SigningKeyRow>(
        "SELECT kid, private_der, public_raw, created_at, retired_at FROM signing_keys
         WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
         ORDER BY created_at",
    )
    .bind(verify_for_s as f64)
    .fetch_all(conn)
    .await?)
}

/// Retires the active keys and inserts a new one, under a lock so that two
/// replicas rotating at once leave exactly one active key.
pub async fn rotate(
    conn: &mut Conn,
    kid: &str,
    private_der: &[u8],
    public_raw: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO signing_keys (kid, private_der, public_raw) VALUES ($1, $2, $3)")
        .bind(kid)
        .bind(private_der)
        .bind(public_raw)
        .execute(conn)
        .await?;
    Ok(())
}

/// The age in seconds of the active key, if there is one (taken under the rotation lock).
pub async fn active_age_s(conn: &mut Conn) -> Result<Option<i64>, StoreError> {
    sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - created_at)::bigint FROM signing_keys
         WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?)
}
