//! The only module that talks to PostgreSQL.
//!
//! One module per aggregate; functions take a connection (usually the
//! transaction the service opened) so the service decides what is atomic.
//! Queries are runtime-checked (`query_as` + `FromRow`): sqlx 0.9's offline
//! macro data could not be generated and checked on this machine in time, and a
//! half-adopted `.sqlx/` would break builds without a database.
//! Constraint violations come back as [`StoreError::Unique`] /
//! [`StoreError::ForeignKey`] named by constraint, never as raw sqlx errors.

pub mod api_key;
pub mod application;
pub mod audit;
pub mod billing;
pub mod compute_pool;
pub mod event;
pub mod idempotency;
pub mod operation;
pub mod organization;
pub mod rate_limit;
pub mod reconcile;
pub mod run;
pub mod runtime;
pub mod savepoint;
pub mod savepoint_schedule;
pub mod service_account;
pub mod signing_key;
pub mod status;
pub mod user;

use std::str::FromStr;
use std::time::Duration;

use sluice_api_types::{IdError, OrgId};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::config::DatabaseConfig;

pub type Tx = Transaction<'static, Postgres>;

/// A tenant connection outside a transaction (see [`tenant_conn_checked`]).
pub type TenantConn = PoolConnection<Postgres>;

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("applying migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("unique constraint {constraint} violated")]
    Unique { constraint: String },
    #[error("foreign key constraint {constraint} violated")]
    ForeignKey { constraint: String },
    #[error("a stored row is not valid: {0}")]
    Corrupt(String),
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            let constraint = db.constraint().unwrap_or("?").to_owned();
            match db.code().as_deref() {
                Some("23505") => return StoreError::Unique { constraint },
                Some("23503") => return StoreError::ForeignKey { constraint },
                _ => {}
            }
        }
        StoreError::Query(e)
    }
}

impl From<IdError> for StoreError {
    fn from(e: IdError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Parses an identifier read back from the database.
pub(crate) fn id<T: FromStr<Err = IdError>>(s: &str) -> Result<T, StoreError> {
    Ok(s.parse()?)
}

/// Opens a transaction that sees one organization only: it switches to the
/// role `sluice_tenant`, on which row-level security applies, and sets
/// `sluice.org_id`, which the policies compare `org_id` with. Both settings end
/// with the transaction, so a pooled connection never carries them over.
pub async fn tenant_tx(pool: &PgPool, org: &OrgId) -> Result<Tx, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('role', 'sluice_tenant', true), set_config('sluice.org_id', $1, true)",
    )
    .bind(org.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// SQL condition over an API key `k` and its owning user `u`: the key's role is
/// one its owner could still grant it (`service::auth::may_grant` with the
/// owner's current role). A user demoted after minting a key would otherwise
/// keep the old role through it; checked on every request and on exchange.
macro_rules! key_within_owner_role {
    () => {
        "(u.role = 'org_admin' OR k.role = u.role OR k.role = 'viewer')"
    };
}
pub(crate) use key_within_owner_role;

/// What a tenant transaction verifies in its first statement.
pub struct CredentialCheck<'a> {
    pub api_key: Option<&'a sluice_api_types::ApiKeyId>,
    pub user: Option<&'a sluice_api_types::UserId>,
    pub role: sluice_api_types::Role,
    pub pool: Option<&'a sluice_api_types::PoolId>,
}

/// Opens the pool of tenant connections: every connection runs as the role
/// `sluice_tenant` for its whole life (set once, when it connects), so
/// row-level security applies to every statement it ever sends, and each use
/// starts with [`enter_tenant`], which sets the organization. Lazy: the role
/// exists only once migrations ran, which happens after the pools are made.
///
/// Idle connections are not pinged before use (sqlx's default costs a round
/// trip per request): a connection the server dropped fails its request with a
/// 5xx once and is then discarded by sqlx.
pub fn connect_tenant(cfg: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = cfg.url.parse().map_err(StoreError::Connect)?;
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET ROLE sluice_tenant").execute(conn).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options))
}

/// The first statement of every use of a tenant connection (one round trip):
/// checks that the credential is live — the API key not revoked or expired,
/// its owner not deleted and still allowed to hold the key's role, or the
/// logged-in user not deleted — with the role and pool scope of the token, and
/// sets `sluice.org_id` to the organization (to '' when not live, which no row
/// matches). The check runs in the SQL function `sluice_enter_tenant`, as the
/// tables' owner, because the connection's own role sees no row before the
/// organization is set.
async fn enter_tenant(
    conn: &mut PgConnection,
    org: &OrgId,
    c: &CredentialCheck<'_>,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT sluice_enter_tenant($1, $2, $3, $4, $5)")
            .bind(org.as_str())
            .bind(c.api_key.map(|k| k.as_str()))
            .bind(c.user.map(|u| u.as_str()))
            .bind(c.role.as_str())
            .bind(c.pool.map(|p| p.as_str()))
            .fetch_one(conn)
            .await?,
    )
}

/// A transaction on a tenant connection (see [`connect_tenant`]) that entered
/// the organization after checking the credential. None (and no transaction)
/// when the credential is not live.
pub async fn tenant_tx_checked(
    tenant_pool: &PgPool,
    org: &OrgId,
    c: &CredentialCheck<'_>,
) -> Result<Option<Tx>, StoreError> {
    let mut tx = tenant_pool.begin().await?;
    if enter_tenant(&mut tx, org, c).await? {
        Ok(Some(tx))
    } else {
        tx.rollback().await?;
        Ok(None)
    }
}

/// A tenant connection outside a transaction, for reads: each statement is its
/// own snapshot, as it would be in a READ COMMITTED transaction, and no BEGIN or
/// COMMIT round trip is paid. Row-level security applies as in
/// [`tenant_tx_checked`]. None when the credential is not live.
pub async fn tenant_conn_checked(
    tenant_pool: &PgPool,
    org: &OrgId,
    c: &CredentialCheck<'_>,
) -> Result<Option<TenantConn>, StoreError> {
    let mut conn = tenant_pool.acquire().await?;
    Ok(enter_tenant(&mut conn, org, c).await?.then_some(conn))
}

/// A transaction outside any tenant: the platform operator's API, token
/// issuance (the credential names its organization only once it is found) and
/// the bootstrap command.
pub async fn system_tx(pool: &PgPool) -> Result<Tx, StoreError> {
    Ok(pool.begin().await?)
}

/// Keyset pagination: rows after `after` in the list's stable order, at most `limit`.
#[derive(Debug, Clone)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: i64,
}

/// Splits `limit + 1` fetched rows into a page and whether more follow.
pub(crate) fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, more)
}

pub(crate) type Conn = PgConnection;

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
