//! Request and response shapes of the Sluice public API (`/v1`, `/admin/v1`).
//!
//! This crate is shared by the server (`sluice-control-plane`), the typed client,
//! the CLI and the tests, so it depends on serde and utoipa only: no axum, no
//! sqlx. Field names are the wire names (snake_case); units are in the names
//! (`interval_ms`, `kpu_milli`) and timestamps end in `_at`.
//!
//! Tests: `dev/cargo test -p sluice-api-types`.

pub mod application;
pub mod audit;
pub mod billing;
pub mod engine;
pub mod error;
pub mod id;
pub mod identity;
pub mod operation;
pub mod pool;
pub mod savepoint;

pub use application::*;
pub use audit::*;
pub use billing::*;
pub use engine::*;
pub use error::*;
pub use id::*;
pub use identity::*;
pub use operation::*;
pub use pool::*;
pub use savepoint::*;

/// Bounds of `?page_size=`; the default is used when it is absent.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
pub const PAGE_SIZE_MAX: u32 = 200;

/// `?page_size=&page_token=` of every list endpoint.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1..=200 (default 50).
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}
