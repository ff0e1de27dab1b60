//! The audit log: one event per accepted mutation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::id::AuditEventId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: AuditEventId,
    /// `usr_…`, `sa_…` or `platform_operator`.
    pub actor: String,
    /// The API key the actor authenticated with, if any.
    pub api_key_id: Option<String>,
    /// `<resource_type>.<verb>`, e.g. `compute_pool.update`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub request_id: Option<String>,
    /// Action-specific facts (changed fields, new version); never secrets.
    pub details: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventList {
    pub items: Vec<AuditEvent>,
    pub next_page_token: Option<String>,
}

/// Filters of `GET /v1/audit-events` (all optional, combined with AND).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditEventFilter {
    pub actor: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Events at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Events before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}
