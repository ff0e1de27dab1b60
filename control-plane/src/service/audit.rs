//! The audit log, read side (events are written by each mutation, in its transaction).

use sluice_api_types::{AuditEventFilter, AuditEventList};

use super::{Ctx, Service, ServiceError, next_token, page, policy};
use crate::store;

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    f: &AuditEventFilter,
) -> Result<AuditEventList, ServiceError> {
    ctx.require(policy::READ_AUDIT, "read audit events")?;
    let page = page(f.page_size, f.page_token.as_deref())?;
    if let (Some(s), Some(u)) = (f.since, f.until)
        && s > u
    {
        return Err(ServiceError::invalid(
            "query.until",
            "out_of_range",
            "until must not be before since",
        ));
    }
    let mut conn = ctx.read(svc).await?;
    let (items, more) =
        store::audit::list(&mut conn, &ctx.org_id, f, page.after.as_deref(), page.limit).await?;
    let next_page_token = next_token(more, items.last().map(|e| e.id.as_str()));
    Ok(AuditEventList {
        items,
        next_page_token,
    })
}
