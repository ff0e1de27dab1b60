//! `application/problem+json` bodies (RFC 9457) of every error response.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:sluice:problem:<code>`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// The stable machine code; clients branch on this, never on `detail`.
    pub code: String,
    /// What was wrong, for a human.
    pub detail: String,
    /// The `x-request-id` of the request, to quote in support requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// One entry per invalid field (validation errors only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Free KPUs of the pool (`compute_pool_exhausted` only), in milli-KPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_kpu_milli: Option<u64>,
    /// Requested KPUs (`compute_pool_exhausted`, `exceeds_pool_capacity`), in milli-KPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_kpu_milli: Option<u64>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Where the value is, as a dotted path from the body root (`checkpoint.interval_ms`),
    /// or `query.<name>` / `header.<name>` for parameters.
    pub field: String,
    /// Stable machine code (`invalid_type`, `unknown_field`, `out_of_range`, `sql_syntax`, …).
    pub code: String,
    pub message: String,
    /// 1-based line inside the field's text (SQL errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column inside the field's text (SQL errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            code: code.to_owned(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}
