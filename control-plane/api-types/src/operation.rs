//! Operations: the log of asynchronous actions on applications.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Problem;
use crate::id::{AppId, OperationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Start,
    Stop,
    Rollback,
    Update,
    Delete,
    /// A savepoint copied to a tenant-given URI (`POST /v1/savepoints/{id}:export`).
    ExportSavepoint,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Start => "start",
            OperationKind::Stop => "stop",
            OperationKind::Rollback => "rollback",
            OperationKind::Update => "update",
            OperationKind::Delete => "delete",
            OperationKind::ExportSavepoint => "export_savepoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Start,
            Self::Stop,
            Self::Rollback,
            Self::Update,
            Self::Delete,
            Self::ExportSavepoint,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    InProgress,
    Succeeded,
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::InProgress => "IN_PROGRESS",
            OperationState::Succeeded => "SUCCEEDED",
            OperationState::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::InProgress, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    pub application_id: AppId,
    /// The application version this operation drives the cluster to.
    pub target_version: i64,
    pub state: OperationState,
    /// Why it failed (state FAILED only).
    pub error: Option<Problem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
