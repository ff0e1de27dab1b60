//! `/v1/usage`, `/v1/usage.csv` and `/v1/usage/events`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sluice_api_types::{Problem, UsageEvent, UsageEventParams, UsageParams, UsageReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiQuery};
use crate::service::usage::{self, UsageBody, wants_csv};
use crate::service::{Ctx, ServiceError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_usage))
        .routes(routes!(get_usage_csv))
        .routes(routes!(usage_events))
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

pub(super) fn with_type(content_type: &'static str, body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn respond(body: UsageBody) -> Response {
    match body {
        UsageBody::Json(report) => Json(*report).into_response(),
        UsageBody::Csv(csv) => with_type("text/csv; charset=utf-8", csv),
    }
}

/// Usage of the organization over `[from, to)` as a time series of milli-KPU-seconds and cost
/// (org_admin, billing_admin, viewer), with per-pool and per-application totals. Clusters still
/// running are counted up to now. CSV with `format=csv` or `Accept: text/csv`.
#[utoipa::path(get, path = "/v1/usage", tag = "billing", params(UsageParams),
    responses((status = 200, description = "The report; as CSV, `bucket_start,group,milli_kpu_seconds,cost` rows",
            content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn get_usage(
    State(s): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(p.format.as_deref(), accept(&headers))?;
    Ok(respond(usage::usage(&s.svc, &ctx, &p, csv).await?))
}

/// `GET /v1/usage` as CSV: `bucket_start,group,milli_kpu_seconds,cost`, groups in key order,
/// buckets in time order, cost in decimal currency units.
#[utoipa::path(get, path = "/v1/usage.csv", tag = "billing", params(UsageParams),
    responses((status = 200, body = String, content_type = "text/csv"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn get_usage_csv(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    if p.format.as_deref().is_some_and(|f| f != "csv") {
        return Err(ServiceError::invalid(
            "query.format",
            "invalid_value",
            "/v1/usage.csv is always CSV; use /v1/usage for JSON",
        )
        .into());
    }
    Ok(respond(usage::usage(&s.svc, &ctx, &p, true).await?))
}

/// Usage events for an external billing system: one CloudEvents 1.0 event per run and whole
/// UTC minute of `[from, to)` (at most a day, not in the future), id `org/app/run/minute`, so
/// re-exports deduplicate. A JSON array (`application/cloudevents-batch+json`).
#[utoipa::path(get, path = "/v1/usage/events", tag = "billing", params(UsageEventParams),
    responses((status = 200, body = Vec<UsageEvent>, content_type = "application/cloudevents-batch+json"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn usage_events(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<UsageEventParams>,
) -> Result<Response, ApiError> {
    let events = usage::events(&s.svc, &ctx, &p).await?;
    let body = serde_json::to_string(&events)
        .map_err(|e| ServiceError::Internal(anyhow::Error::new(e)))?;
    Ok(with_type("application/cloudevents-batch+json", body))
}
