//! The `Idempotency-Key` middleware of authenticated POSTs.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::service::Ctx;
use crate::service::auth::sha256;
use crate::service::idempotency::{self, Begin, StoredResponse};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response headers a replay carries over.
const KEPT_HEADERS: &[&str] = &["content-type", "etag", "location"];

/// Put into the extensions of a response whose body must never be stored: it
/// carries a secret that is shown once and kept only hashed (a new API key).
/// The idempotency record then holds a 409 problem naming what was created,
/// and a retry gets that instead of the secret.
#[derive(Clone)]
pub struct SecretResponse {
    /// What the retry is told, e.g. which key was created.
    pub detail: String,
}

/// Runs after authentication. A POST without the header runs as usual.
pub async fn idempotent_post(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
    else {
        return next.run(req).await;
    };
    let Some(ctx) = req.extensions().get::<Ctx>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.svc.cfg.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this server accepts",
            )
            .into_response();
        }
    };
    // The fingerprint covers what the request asks for: method, path, query and body.
    let mut fp = Vec::with_capacity(bytes.len() + 64);
    fp.extend_from_slice(parts.method.as_str().as_bytes());
    fp.push(0);
    fp.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    fp.push(0);
    fp.extend_from_slice(&bytes);
    let fingerprint = sha256(&fp);
    match idempotency::begin(&state.svc, &ctx, &key, &fingerprint).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Begin::Replay(stored)) => return replay(stored),
        Ok(Begin::Proceed) => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    if status.is_server_error() {
        if let Err(e) = idempotency::abandon(&state.svc, &ctx, &key).await {
            tracing::error!(error = %format!("{e:#}"), "release the idempotency key of a failed request");
        }
        return response;
    }
    let secret = response.extensions().get::<SecretResponse>().cloned();
    let (parts, body) = match buffer(response).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let stored = match secret {
        None => stored_of(status, &parts.headers, &body),
        Some(s) => {
            let stand_in = ApiError::http(
                StatusCode::CONFLICT,
                "idempotency_secret_not_replayed",
                s.detail,
            )
            .into_response();
            let stand_in_status = stand_in.status();
            match buffer(stand_in).await {
                Ok((p, b)) => stored_of(stand_in_status, &p.headers, &b),
                Err(e) => return e.into_response(),
            }
        }
    };
    if let Err(e) = idempotency::finish(&state.svc, &ctx, &key, &stored).await {
        // The request itself succeeded; a retry will see "in progress" rather than run twice.
        tracing::error!(error = %format!("{e:#}"), "store the response of an idempotent request");
    }
    Response::from_parts(parts, Body::from(body))
}

async fn buffer(
    response: Response,
) -> Result<(axum::http::response::Parts, axum::body::Bytes), ApiError> {
    let (parts, body) = response.into_parts();
    match to_bytes(body, usize::MAX).await {
        Ok(b) => Ok((parts, b)),
        Err(e) => Err(ApiError::from(crate::service::ServiceError::Internal(
            anyhow::anyhow!("buffer a response for its idempotency record: {e}"),
        ))),
    }
}

fn stored_of(status: StatusCode, headers: &axum::http::HeaderMap, body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|h| {
                headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (h.to_string(), v.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut r = (status, stored.body).into_response();
    for (k, v) in stored.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}
