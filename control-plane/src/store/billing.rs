//! What billing needs from the control plane's own tables: the applications a budget's hard
//! stop acts on, and the system service account it acts as. The billing tables themselves are
//! `sluice_billing::store`'s.

use sluice_api_types::{AppId, OrgId, Role, ServiceAccountId};

use super::{Conn, StoreError, id};

/// Applications of `org` whose spec says `desired_state: running`, by id.
pub async fn running_applications(conn: &mut Conn, org: &OrgId) -> Result<Vec<AppId>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM applications WHERE org_id = $1 AND spec->>'desired_state' = 'running'
         ORDER BY id",
    )
    .bind(org.as_str())
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| id(r)).collect()
}

/// Name of the service account a budget's hard stop acts as: visible in the organization's
/// service accounts and audit log, so tenants can see who stopped their applications.
pub const HARD_STOP_ACCOUNT: &str = "billing-budget-hard-stop";

/// The organization's hard-stop service account, created on first use.
pub async fn hard_stop_account(
    conn: &mut Conn,
    org: &OrgId,
) -> Result<ServiceAccountId, StoreError> {
    let new = ServiceAccountId::new();
    sqlx::query(
        "INSERT INTO service_accounts (id, org_id, name, description, role)
         VALUES ($1, $2, $3, 'Stops the organization''s applications when its monthly budget is spent (hard stop). Managed by Sluice.', $4)
         ON CONFLICT (org_id, name) WHERE deleted_at IS NULL DO NOTHING",
    )
    .bind(new.as_str())
    .bind(org.as_str())
    .bind(HARD_STOP_ACCOUNT)
    .bind(Role::OrgAdmin.as_str())
    .execute(&mut *conn)
    .await?;
    let existing: String = sqlx::query_scalar(
        "SELECT id FROM service_accounts WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL",
    )
    .bind(org.as_str())
    .bind(HARD_STOP_ACCOUNT)
    .fetch_one(conn)
    .await?;
    id(&existing)
}
