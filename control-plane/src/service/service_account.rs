//! Service accounts: non-human principals that authenticate with API keys.

use sluice_api_types::{
    CreateServiceAccount, PageParams, ServiceAccount, ServiceAccountId, ServiceAccountList,
};

use super::{Ctx, Service, ServiceError, check_name, next_token, page, policy};
use crate::store;

pub async fn create(
    svc: &Service,
    ctx: &Ctx,
    req: &CreateServiceAccount,
) -> Result<ServiceAccount, ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "create service accounts")?;
    let mut errors = Vec::new();
    check_name("name", &req.name, 100, &mut errors);
    if req.description.chars().count() > 1000 {
        errors.push(sluice_api_types::FieldError::new(
            "description",
            "too_long",
            "at most 1000 characters",
        ));
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let id = ServiceAccountId::new();
    let mut tx = ctx.begin(svc).await?;
    let sa = store::service_account::insert(
        &mut tx,
        &ctx.org_id,
        &id,
        &req.name,
        &req.description,
        req.role,
    )
    .await
    .map_err(|e| match e {
        store::StoreError::Unique { .. } => ServiceError::invalid(
            "name",
            "already_exists",
            "a service account with this name already exists",
        ),
        e => e.into(),
    })?;
    ctx.audit(
        &mut tx,
        "service_account.create",
        "service_account",
        id.as_str(),
        serde_json::json!({ "role": req.role }),
    )
    .await?;
    tx.commit().await?;
    Ok(sa)
}

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    p: &PageParams,
) -> Result<ServiceAccountList, ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "list service accounts")?;
    let page = page(p.page_size, p.page_token.as_deref())?;
    let mut conn = ctx.read(svc).await?;
    let (items, more) = store::service_account::list(&mut conn, &ctx.org_id, &page).await?;
    let next_page_token = next_token(more, items.last().map(|s| s.id.as_str()));
    Ok(ServiceAccountList {
        items,
        next_page_token,
    })
}

pub async fn get(
    svc: &Service,
    ctx: &Ctx,
    id: &ServiceAccountId,
) -> Result<ServiceAccount, ServiceError> {
    if ctx.actor() != id.as_str() {
        ctx.require(policy::MANAGE_IDENTITY, "read service accounts")?;
    }
    let mut conn = ctx.read(svc).await?;
    let sa = store::service_account::get(&mut conn, &ctx.org_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("service account", id))?;
    Ok(sa)
}

/// Deletes the service account and revokes its keys.
pub async fn delete(svc: &Service, ctx: &Ctx, id: &ServiceAccountId) -> Result<(), ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "delete service accounts")?;
    let mut tx = ctx.begin(svc).await?;
    if !store::service_account::soft_delete(&mut tx, &ctx.org_id, id).await? {
        return Err(ServiceError::not_found("service account", id));
    }
    let revoked = store::api_key::revoke_owned(&mut tx, &ctx.org_id, id.as_str(), None).await?;
    ctx.audit(
        &mut tx,
        "service_account.delete",
        "service_account",
        id.as_str(),
        serde_json::json!({ "revoked_api_keys": revoked }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
