//! Savepoints (DESIGN §8): user-owned, self-contained snapshots of an application's
//! state, taken by hand, on a schedule, on stop or before an upgrade, or imported; kept
//! under the tenant's prefix until retention or a delete disposes of them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{AppId, SavepointId};

/// Why a savepoint exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SavepointOrigin {
    Manual,
    Scheduled,
    OnStop,
    PreUpgrade,
    Imported,
}

impl SavepointOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::OnStop => "on_stop",
            Self::PreUpgrade => "pre_upgrade",
            Self::Imported => "imported",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Manual,
            Self::Scheduled,
            Self::OnStop,
            Self::PreUpgrade,
            Self::Imported,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// `PENDING → IN_PROGRESS → COMPLETED | FAILED`, then `DELETING → DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SavepointStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Deleting,
    Deleted,
}

impl SavepointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Deleting => "DELETING",
            Self::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::InProgress,
            Self::Completed,
            Self::Failed,
            Self::Deleting,
            Self::Deleted,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// Why a savepoint failed, or the last error of a disposal being retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavepointError {
    /// Stable machine code (`application_not_running`, `application_deleted`,
    /// `savepoint_failed`, `timeout`, `storage_error`, …).
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Savepoint {
    pub id: SavepointId,
    pub application_id: AppId,
    pub origin: SavepointOrigin,
    pub status: SavepointStatus,
    pub label: Option<String>,
    /// Pinned savepoints never expire through retention.
    pub pinned: bool,
    /// URI of the savepoint's directory (`…/{org}/{app}/savepoints/{id}`), once known.
    pub location: Option<String>,
    /// Bytes of every object under `location` (COMPLETED and later).
    pub size_bytes: Option<u64>,
    /// The application version that was running when it was requested.
    pub application_version: Option<i64>,
    /// Where an imported savepoint was copied from.
    pub source_uri: Option<String>,
    /// The schedule's due time this savepoint was taken for (origin `scheduled`).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Why it failed (FAILED), or the last error of a disposal still being retried (DELETING).
    pub error: Option<SavepointError>,
    /// Compare-and-swap version; sent back as `ETag` and expected in `If-Match`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/applications/{id}/savepoints`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSavepoint {
    /// 1..=200 characters.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    /// Import instead of take: the URI (`s3://bucket/dir` or `file:///dir`) of an existing
    /// savepoint directory with its `_metadata`. It is checked before the request is accepted
    /// and then copied under the application's prefix.
    #[serde(default)]
    pub source_uri: Option<String>,
}

/// PATCH body: absent fields keep their value; `label: ""` removes the label.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSavepoint {
    pub label: Option<String>,
    pub pinned: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SavepointList {
    pub items: Vec<Savepoint>,
    pub next_page_token: Option<String>,
}

/// Body of `POST /v1/savepoints/{id}:export`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportSavepoint {
    /// Directory URI to copy the savepoint to (`s3://bucket/dir` or `file:///dir`); must be empty.
    pub target_uri: String,
}

/// What retention keeps. Pinned savepoints, the newest completed one and the one the
/// running version was restored from are always kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SavepointRetention {
    /// Keep at most this many completed, unpinned savepoints (1..=1000).
    #[serde(default)]
    pub max_count: Option<u32>,
    /// Dispose of completed, unpinned savepoints older than this (seconds, at least 60).
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// When the application is deleted, dispose of its unpinned savepoints (default true).
    #[serde(default = "yes")]
    pub dispose_on_delete: bool,
}

impl Default for SavepointRetention {
    fn default() -> Self {
        SavepointRetention {
            max_count: None,
            max_age_s: None,
            dispose_on_delete: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// Body of `PUT /v1/applications/{id}/savepoint-schedule`: exactly one of `cron` and `interval_s`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSavepointSchedule {
    /// Five-field cron expression (`0 */6 * * *`), or six with seconds first; evaluated in `timezone`.
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone of `cron` (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Seconds between savepoints (at least the server's minimum, 60 by default).
    #[serde(default)]
    pub interval_s: Option<u64>,
    #[serde(default)]
    pub retention: SavepointRetention,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SavepointSchedule {
    pub application_id: AppId,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_s: Option<u64>,
    pub retention: SavepointRetention,
    pub enabled: bool,
    /// When the next savepoint is due (absent while disabled).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The last due time the scheduler handled.
    pub last_run_at: Option<DateTime<Utc>>,
    /// What happened then (the savepoint requested, or why the run was skipped).
    pub last_outcome: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Savepoint storage of one application, for billing (GiB-month) and for the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavepointUsage {
    pub application_id: AppId,
    /// COMPLETED savepoints and their bytes.
    pub completed_count: u64,
    pub completed_bytes: u64,
    /// Savepoints being disposed of, and the bytes they still hold.
    pub deleting_count: u64,
    pub deleting_bytes: u64,
    /// Savepoint storage held in the current calendar month (UTC) so far, in byte-seconds.
    pub month_to_date_byte_seconds: u64,
}
