//! `idempotency_keys`: the fingerprint of a POST and, once done, its response.

use sluice_api_types::OrgId;

use super::{Conn, StoreError};

/// What a retry finds.
pub enum Claim {
    /// The key is new and now reserved for this request.
    Claimed,
    /// The key was used before: its fingerprint and, when finished, the response.
    Existing {
        request_sha256: Vec<u8>,
        response: Option<StoredResponse>,
    },
}

pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub async fn claim(
    conn: &mut Conn,
    org: &OrgId,
    principal: &str,
    key: &str,
    request_sha256: &[u8],
) -> Result<Claim, StoreError> {
    // A key lives 24 hours (as with Stripe's API): after that it names a new request.
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE org_id = $1 AND principal_id = $2 AND key = $3 AND created_at < now() - interval '24 hours'",
    )
    .bind(org.as_str())
    .bind(principal)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (org_id, principal_id, key, request_sha256)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(org.as_str())
    .bind(principal)
    .bind(key)
    .bind(request_sha256)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Claimed);
    }
    let row: (
        Vec<u8>,
        Option<i16>,
        Option<serde_json::Value>,
        Option<Vec<u8>>,
    ) = sqlx::query_as(
        "SELECT request_sha256, response_status, response_headers, response_body
         FROM idempotency_keys WHERE org_id = $1 AND principal_id = $2 AND key = $3",
    )
    .bind(org.as_str())
    .bind(principal)
    .bind(key)
    .fetch_one(conn)
    .await?;
    let response = match row {
        (_, Some(status), headers, body) => Some(StoredResponse {
            status: status as u16,
            headers: headers
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("idempotency headers: {e}")))?
                .unwrap_or_default(),
            body: body.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Claim::Existing {
        request_sha256: row.0,
        response,
    })
}

pub async fn complete(
    conn: &mut Conn,
    org: &OrgId,
    principal: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    let headers =
        serde_json::to_value(&response.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $4, response_headers = $5, response_body = $6
         WHERE org_id = $1 AND principal_id = $2 AND key = $3",
    )
    .bind(org.as_str())
    .bind(principal)
    .bind(key)
    .bind(response.status as i16)
    .bind(headers)
    .bind(&response.body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a claim whose request failed with a server error, so a retry runs again.
pub async fn release(
    conn: &mut Conn,
    org: &OrgId,
    principal: &str,
    key: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE org_id = $1 AND principal_id = $2 AND key = $3 AND response_status IS NULL",
    )
    .bind(org.as_str())
    .bind(principal)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes keys past their 24 hours (they can no longer be replayed), in batches so that a
/// large backlog never holds one long transaction. Returns how many were deleted.
pub async fn purge(db: &sqlx::PgPool) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN (
                 SELECT ctid FROM idempotency_keys
                 WHERE created_at < now() - interval '24 hours' LIMIT 10000)",
        )
        .execute(db)
        .await?
        .rows_affected();
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}
