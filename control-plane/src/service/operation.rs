//! Operations: read-only for tenants; written with the intent they record.

use sluice_api_types::{Operation, OperationId};

use super::{Ctx, Service, ServiceError, policy};
use crate::store;

pub async fn get(svc: &Service, ctx: &Ctx, id: &OperationId) -> Result<Operation, ServiceError> {
    ctx.require(policy::READ_APPS, "read operations")?;
    let mut conn = ctx.read(svc).await?;
    let op = store::operation::get(&mut conn, &ctx.org_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("operation", id))?;
    if ctx.pool_scope.is_some() {
        let pool = store::operation::pool_of(&mut conn, &ctx.org_id, id).await?;
        if !pool.is_some_and(|p| ctx.sees_pool(&p)) {
            return Err(ServiceError::not_found("operation", id));
        }
    }
    Ok(op)
}
