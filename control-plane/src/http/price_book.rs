//! `/admin/v1/price-books`: the platform operator's price books.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sluice_api_types::{CreatePriceVersion, PriceBook, PriceBookList, Problem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::service::price_book;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(add_version))
}

/// Every region's price book with its versions.
#[utoipa::path(get, path = "/admin/v1/price-books", operation_id = "list_price_books", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = PriceBookList), (status = 401, body = Problem)))]
async fn list(State(s): State<AppState>) -> Result<Json<PriceBookList>, ApiError> {
    Ok(Json(price_book::list(&s.svc.db).await?))
}

/// One region's price book.
#[utoipa::path(get, path = "/admin/v1/price-books/{region}", operation_id = "get_price_book", tag = "admin", security(("admin_token" = [])),
    params(("region" = String, Path)),
    responses((status = 200, body = PriceBook), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<PriceBook>, ApiError> {
    Ok(Json(price_book::get(&s.svc.db, &region).await?))
}

/// Add a version to a region's price book (creating the book). It takes effect at
/// `effective_from`, which may not precede the current month: final invoices never change.
#[utoipa::path(post, path = "/admin/v1/price-books/{region}/versions", operation_id = "add_price_book_version", tag = "admin", security(("admin_token" = [])),
    params(("region" = String, Path)), request_body = CreatePriceVersion,
    responses((status = 201, body = PriceBook), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn add_version(
    State(s): State<AppState>,
    Path(region): Path<String>,
    ApiJson(req): ApiJson<CreatePriceVersion>,
) -> Result<(StatusCode, Json<PriceBook>), ApiError> {
    let book = price_book::add_version(
        &s.svc.db,
        &s.svc.cfg.regions,
        &region,
        &req,
        "platform_operator",
    )
    .await?;
    Ok((StatusCode::CREATED, Json(book)))
}
