//! The only module that talks to PostgreSQL.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("applying migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect(&cfg.url)
        .await
        .map_err(StoreError::Connect)
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// runs, so two servers starting together apply each migration once.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}

/// How the database's schema relates to the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SchemaState {
    /// Every embedded migration is applied with a matching checksum.
    Current {
        version: i64,
    },
    Pending {
        missing: Vec<i64>,
    },
    /// A migration was applied but failed, or its file changed after it was applied.
    Broken {
        version: i64,
        reason: String,
    },
}

pub async fn schema_state(pool: &PgPool) -> Result<SchemaState, StoreError> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
            .fetch_one(pool)
            .await?;
    let applied: Vec<(i64, bool, Vec<u8>)> = if table.is_some() {
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let mut missing = Vec::new();
    let mut latest = 0;
    for m in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            None => missing.push(m.version),
            Some((v, false, _)) => {
                return Ok(SchemaState::Broken {
                    version: *v,
                    reason: "migration failed part-way".into(),
                });
            }
            Some((v, true, sum)) if sum.as_slice() != &*m.checksum => {
                return Ok(SchemaState::Broken {
                    version: *v,
                    reason: "migration file changed after it was applied".into(),
                });
            }
            Some(_) => latest = latest.max(m.version),
        }
    }
    if missing.is_empty() {
        Ok(SchemaState::Current { version: latest })
    } else {
        Ok(SchemaState::Pending { missing })
    }
}
