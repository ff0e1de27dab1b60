//! `Idempotency-Key` on POST: the first request with a key runs and its
//! response is stored; a retry with the same key and body gets that response
//! back; the same key with a different body is refused.

pub use crate::store::idempotency::StoredResponse;

use super::{Credential, Ctx, Service, ServiceError};
use crate::store::{self, idempotency::Claim};

/// Whose key space an `Idempotency-Key` lives in: the credential, not the
/// principal. One user may hold an org_admin key and a viewer or pool-scoped key;
/// keyed by the user, the narrower key could replay (and read) a response that
/// only the wider key was allowed to produce. Stored in `principal_id`.
fn scope(ctx: &Ctx) -> &str {
    match &ctx.credential {
        Credential::ApiKey(k) => k.as_str(),
        Credential::Login(u) => u.as_str(),
    }
}

pub enum Begin {
    /// Run the request, then call [`finish`] or [`abandon`].
    Proceed,
    Replay(StoredResponse),
}

pub async fn begin(
    svc: &Service,
    ctx: &Ctx,
    key: &str,
    fingerprint: &[u8],
) -> Result<Begin, ServiceError> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ServiceError::invalid(
            "header.idempotency-key",
            "invalid_value",
            "Idempotency-Key must be 1..=255 visible ASCII characters",
        ));
    }
    let mut tx = ctx.begin(svc).await?;
    let claim =
        store::idempotency::claim(&mut tx, &ctx.org_id, scope(ctx), key, fingerprint).await?;
    tx.commit().await?;
    match claim {
        Claim::Claimed => Ok(Begin::Proceed),
        Claim::Existing { request_sha256, .. } if request_sha256 != fingerprint => {
            Err(ServiceError::Unprocessable {
                code: "idempotency_key_reused",
                detail: "this Idempotency-Key was used for a different request; use a new key"
                    .into(),
            })
        }
        Claim::Existing {
            response: Some(r), ..
        } => Ok(Begin::Replay(r)),
        Claim::Existing { response: None, .. } => Err(ServiceError::Conflict {
            code: "idempotency_in_progress",
            detail: "a request with this Idempotency-Key is still running; retry later".into(),
        }),
    }
}

pub async fn finish(
    svc: &Service,
    ctx: &Ctx,
    key: &str,
    response: &StoredResponse,
) -> Result<(), ServiceError> {
    let mut tx = ctx.begin(svc).await?;
    store::idempotency::complete(&mut tx, &ctx.org_id, scope(ctx), key, response).await?;
    tx.commit().await?;
    Ok(())
}

/// The request failed on our side: forget the key so a retry runs again.
pub async fn abandon(svc: &Service, ctx: &Ctx, key: &str) -> Result<(), ServiceError> {
    let mut tx = ctx.begin(svc).await?;
    store::idempotency::release(&mut tx, &ctx.org_id, scope(ctx), key).await?;
    tx.commit().await?;
    Ok(())
}
