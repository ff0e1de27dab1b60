//! The one mapping from errors to HTTP: every error response is
//! `application/problem+json` (RFC 9457) with a stable `code`, a `detail`, the
//! `request_id` and, for validation, per-field `errors[]`. 5xx bodies say
//! nothing about internals; the error is logged once, here, with its chain,
//! inside the request's span. Also the extractors whose rejections must use
//! this shape (JSON bodies, query strings, path identifiers, `If-Match`).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sluice_api_types::{FieldError, Problem};

use crate::service::ServiceError;

tokio::task_local! {
    /// The request id of the request being handled (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Every error a handler can return.
#[derive(Debug)]
pub enum ApiError {
    Service(ServiceError),
    /// A request that is wrong at the HTTP level (status, code, detail, fields).
    Http {
        status: StatusCode,
        code: &'static str,
        detail: String,
        errors: Vec<FieldError>,
    },
    RateLimited {
        retry_after_s: u64,
    },
}

impl ApiError {
    pub fn http(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Http {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

fn title(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_owned()
}

pub fn problem(status: StatusCode, code: &str, detail: String, errors: Vec<FieldError>) -> Problem {
    Problem {
        type_uri: format!("urn:sluice:problem:{code}"),
        title: title(status),
        status: status.as_u16(),
        code: code.to_owned(),
        detail,
        request_id: current_request_id(),
        errors,
        free_kpu_milli: None,
        requested_kpu_milli: None,
    }
}

pub fn problem_response(p: Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&p).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use ServiceError as S;
        let (status, code, detail, errors): (StatusCode, &str, String, Vec<FieldError>) = match self
        {
            ApiError::Http {
                status,
                code,
                detail,
                errors,
            } => (status, code, detail, errors),
            ApiError::RateLimited { retry_after_s } => {
                let mut r = problem_response(problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests for this credential; retry after {retry_after_s} s"),
                    Vec::new(),
                ));
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                return r;
            }
            ApiError::Service(e) => match e {
                S::NotFound { .. } => (
                    StatusCode::NOT_FOUND,
                    "not_found",
                    e.to_string(),
                    Vec::new(),
                ),
                S::Invalid(errors) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!("{} field(s) are invalid; see errors", errors.len()),
                    errors,
                ),
                S::Conflict { code, detail } => (StatusCode::CONFLICT, code, detail, Vec::new()),
                S::Unprocessable { code, detail } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, code, detail, Vec::new())
                }
                S::PoolExhausted {
                    free_kpu_milli,
                    requested_kpu_milli,
                    detail,
                } => {
                    let mut p = problem(
                        StatusCode::CONFLICT,
                        "compute_pool_exhausted",
                        detail,
                        Vec::new(),
                    );
                    p.free_kpu_milli = Some(free_kpu_milli);
                    p.requested_kpu_milli = Some(requested_kpu_milli);
                    return problem_response(p);
                }
                S::PreconditionFailed { .. } => (
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    e.to_string(),
                    Vec::new(),
                ),
                S::Unauthenticated(detail) => {
                    let mut r = problem_response(problem(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        detail,
                        Vec::new(),
                    ));
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
                S::Forbidden(detail) => (StatusCode::FORBIDDEN, "forbidden", detail, Vec::new()),
                S::Internal(e) => {
                    tracing::error!(error = %format!("{e:#}"), "request failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the server failed to handle the request; quote the request_id when reporting it".into(),
                        Vec::new(),
                    )
                }
            },
        };
        problem_response(problem(status, code, detail, errors))
    }
}

/// A JSON body, decoded with the field path of any error. Requires
/// `Content-Type: application/json`; the body limit answers 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::http(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request body is larger than this server accepts",
                    )
                } else {
                    ApiError::http(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot read the request body: {}", r.body_text()),
                    )
                }
            })?;
        decode_json(&bytes).map(ApiJson)
    }
}

/// Decodes JSON, reporting syntax errors (including invalid UTF-8) as 400 with
/// line and column, and type / unknown-field / range errors as 422 with the field path.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = serde_path_to_error::deserialize::<_, T>(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        .and_then(|v| de.end().map(|()| v).map_err(|e| (".".to_owned(), e)));
    result.map_err(|(path, inner)| {
        let (line, column) = (
            u32::try_from(inner.line()).ok(),
            u32::try_from(inner.column()).ok(),
        );
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                let code = if msg.starts_with("unknown field") {
                    "unknown_field"
                } else if msg.starts_with("missing field") {
                    "required"
                } else if msg.starts_with("invalid value") {
                    "out_of_range"
                } else if msg.starts_with("invalid type") {
                    "invalid_type"
                } else {
                    "invalid_value"
                };
                let field = if path == "." { String::new() } else { path };
                // A missing field is reported at its parent: name the field itself.
                let field = match (code, msg.split('`').nth(1)) {
                    ("required", Some(name)) if field.is_empty() => name.to_owned(),
                    ("required", Some(name)) => format!("{field}.{name}"),
                    _ => field,
                };
                ApiError::Http {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "validation_failed",
                    detail: "the request body does not match the expected shape; see errors".into(),
                    errors: vec![FieldError::new(field, code, msg)],
                }
            }
            _ => {
                let mut fe = FieldError::new("", "malformed_json", inner.to_string());
                fe.line = line;
                fe.column = column;
                ApiError::Http {
                    status: StatusCode::BAD_REQUEST,
                    code: "malformed_json",
                    detail: format!("the request body is not valid JSON (UTF-8): {inner}"),
                    errors: vec![fe],
                }
            }
        }
    })
}

/// Query parameters, with errors naming `query.<param>`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let field = msg
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_owned)
                    .unwrap_or(path);
                ApiError::Http {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "validation_failed",
                    detail: "a query parameter is invalid; see errors".into(),
                    errors: vec![FieldError::new(
                        format!("query.{field}"),
                        "invalid_value",
                        msg,
                    )],
                }
            })
    }
}

/// The single `{id}` path segment, parsed as an identifier; a malformed id is
/// simply not found (it names nothing).
pub struct PathId<T>(pub T);

impl<T, S> FromRequestParts<S> for PathId<T>
where
    T: std::str::FromStr + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiError::http(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no such resource: {e}"),
                    )
                })?;
        raw.parse().map(PathId).map_err(|_| {
            ApiError::Service(ServiceError::not_found(
                "resource",
                raw.chars().take(80).collect::<String>(),
            ))
        })
    }
}

/// The version of `If-Match: "<version>"` (absent: no precondition). `*` matches any version.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let s = v.to_str().unwrap_or("").trim();
        if s == "*" {
            return Ok(IfMatch(None));
        }
        s.strip_prefix("W/")
            .unwrap_or(s)
            .trim_matches('"')
            .parse::<i64>()
            .map(|n| IfMatch(Some(n)))
            .map_err(|_| ApiError::Http {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_if_match",
                detail: "If-Match must be an ETag this API returned, like \"3\"".into(),
                errors: vec![FieldError::new(
                    "header.if-match",
                    "invalid_value",
                    format!("'{s}' is not an ETag of this API"),
                )],
            })
    }
}

/// Adds `ETag: "<version>"` to a JSON response.
pub fn with_etag<T: serde::Serialize>(status: StatusCode, version: i64, body: T) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

pub async fn not_found_fallback() -> ApiError {
    ApiError::http(
        StatusCode::NOT_FOUND,
        "not_found",
        "no route matches this path",
    )
}

pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept this method",
    )
}
