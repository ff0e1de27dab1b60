//! Compute pools: the KPU budget applications are admitted against.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::PoolId;

/// What happens to a start that does not fit in the pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// `409 compute_pool_exhausted` with the free and requested KPUs.
    #[default]
    Reject,
    /// The application waits in PENDING, first in first out.
    Queue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComputePool {
    pub id: PoolId,
    pub name: String,
    pub region: String,
    /// Upper bound of the KPUs the pool's applications hold together.
    pub max_kpu: u32,
    pub admission: Admission,
    pub status: ComputePoolStatus,
    /// Compare-and-swap version; sent back as `ETag` and expected in `If-Match`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Observed usage (written by the reconciler, never by the API).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ComputePoolStatus {
    /// KPUs held now, in milli-KPU (1000 = one KPU).
    pub current_kpu_milli: u64,
    pub pending_applications: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateComputePool {
    /// 1..=100 characters, unique in the organization.
    pub name: String,
    /// One of the server's configured regions.
    pub region: String,
    /// 1..=10000.
    pub max_kpu: u32,
    #[serde(default)]
    pub admission: Admission,
}

/// PATCH body: absent fields keep their value. The region cannot change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateComputePool {
    pub name: Option<String>,
    pub max_kpu: Option<u32>,
    pub admission: Option<Admission>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComputePoolList {
    pub items: Vec<ComputePool>,
    pub next_page_token: Option<String>,
}
