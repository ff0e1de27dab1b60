//! `/v1/invoices` and `/v1/invoices/{month}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use sluice_api_types::{Invoice, InvoiceList, InvoiceParams, PageParams, Problem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiQuery};
use super::usage::with_type;
use crate::service::Ctx;
use crate::service::invoice::{self, Format};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
}

/// The organization's monthly invoices, newest first, from the current month (a draft) back
/// to its first usage (org_admin, billing_admin, viewer).
#[utoipa::path(get, path = "/v1/invoices", operation_id = "list_invoices", tag = "billing", params(PageParams),
    responses((status = 200, body = InvoiceList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<InvoiceList>, ApiError> {
    Ok(Json(invoice::list(&s.svc, &ctx, &p).await?))
}

/// One month's invoice as JSON, CSV or printable HTML (`format=` or `Accept`). Draft during
/// the month, final after; regenerating it gives the same bytes. A month not begun yet is 404.
#[utoipa::path(get, path = "/v1/invoices/{month}", operation_id = "get_invoice", tag = "billing",
    params(("month" = String, Path, description = "YYYY-MM (UTC)"), InvoiceParams),
    responses((status = 200, description = "The invoice; as CSV one row per line then a total row; as HTML a self-contained printable page",
            content((Invoice = "application/json"), (String = "text/csv"), (String = "text/html"))),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(month): Path<String>,
    ApiQuery(p): ApiQuery<InvoiceParams>,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(p.format.as_deref(), accept)?;
    let doc = invoice::get(&s.svc, &ctx, &month, format).await?;
    let mut r = with_type(doc.content_type, doc.body);
    if let Some(name) = doc.filename
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
