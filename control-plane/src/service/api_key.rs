//! API keys: secret shown once, stored as a hash; expiry, revocation, optional pool scope.

use sluice_api_types::{
    ApiKey, ApiKeyCreated, ApiKeyId, ApiKeyList, CreateApiKey, PageParams, PrincipalRef, Role,
};

use super::auth::{may_grant, new_secret, sha256};
use super::{Ctx, Service, ServiceError, check_name, next_token, page, policy};
use crate::store;

pub async fn create(
    svc: &Service,
    ctx: &Ctx,
    req: &CreateApiKey,
) -> Result<ApiKeyCreated, ServiceError> {
    let mut errors = Vec::new();
    check_name("name", &req.name, 100, &mut errors);
    if let Some(at) = req.expires_at
        && at <= chrono::Utc::now()
    {
        errors.push(sluice_api_types::FieldError::new(
            "expires_at",
            "out_of_range",
            "expires_at must be in the future",
        ));
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    // A pool-scoped key cannot mint keys: it would escape its scope.
    if ctx.pool_scope.is_some() {
        return Err(ServiceError::Forbidden(
            "a pool-scoped API key cannot create API keys".into(),
        ));
    }
    let mut tx = ctx.begin(svc).await?;
    // A key cannot outlive the key that made it: otherwise an expiring key
    // could mint itself a permanent successor.
    if let Some(creator) = &ctx.api_key_id
        && let Some(limit) = store::api_key::get(&mut tx, &ctx.org_id, creator)
            .await?
            .and_then(|k| k.expires_at)
        && req.expires_at.is_none_or(|at| at > limit)
    {
        return Err(ServiceError::invalid(
            "expires_at",
            "out_of_range",
            format!(
                "expires_at must be set and not later than {} (the expiry of the API key making this request)",
                limit.to_rfc3339()
            ),
        ));
    }
    let (owner, owner_role) = match &req.service_account_id {
        Some(sa) => {
            ctx.require(policy::MANAGE_IDENTITY, "create keys for service accounts")?;
            let sa_row = store::service_account::get(&mut tx, &ctx.org_id, sa)
                .await?
                .ok_or_else(|| {
                    ServiceError::invalid(
                        "service_account_id",
                        "not_found",
                        format!("service account {sa} not found"),
                    )
                })?;
            (PrincipalRef::ServiceAccount(sa.clone()), sa_row.role)
        }
        None => (ctx.principal.clone(), ctx.role),
    };
    let role = req.role.unwrap_or(owner_role);
    if !may_grant(ctx.role, owner_role, role) {
        return Err(ServiceError::Forbidden(format!(
            "role {} may only create keys with the owner's role or viewer",
            ctx.role.as_str()
        )));
    }
    if let Some(pool) = &req.compute_pool_id
        && store::compute_pool::get(&mut tx, &ctx.org_id, pool, false)
            .await?
            .is_none()
    {
        return Err(ServiceError::invalid(
            "compute_pool_id",
            "not_found",
            format!("compute pool {pool} not found"),
        ));
    }
    let secret = new_secret()?;
    let id = ApiKeyId::new();
    let api_key = store::api_key::insert(
        &mut tx,
        &store::api_key::NewKey {
            id: &id,
            org_id: &ctx.org_id,
            name: &req.name,
            owner: &owner,
            role,
            compute_pool_id: req.compute_pool_id.as_ref(),
            secret_sha256: &sha256(secret.as_bytes()),
            expires_at: req.expires_at,
        },
    )
    .await?;
    ctx.audit(
        &mut tx,
        "api_key.create",
        "api_key",
        id.as_str(),
        serde_json::json!({ "owner": owner, "role": role, "compute_pool_id": req.compute_pool_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(ApiKeyCreated { api_key, secret })
}

/// org_admin sees every key of the organization; others their own.
pub async fn list(svc: &Service, ctx: &Ctx, p: &PageParams) -> Result<ApiKeyList, ServiceError> {
    let page = page(p.page_size, p.page_token.as_deref())?;
    let owner = (ctx.role != Role::OrgAdmin).then(|| ctx.actor());
    let mut conn = ctx.read(svc).await?;
    let (items, more) = store::api_key::list(&mut conn, &ctx.org_id, owner, &page).await?;
    let next_page_token = next_token(more, items.last().map(|k| k.id.as_str()));
    Ok(ApiKeyList {
        items,
        next_page_token,
    })
}

async fn visible(ctx: &Ctx, id: &ApiKeyId, conn: &mut store::Conn) -> Result<ApiKey, ServiceError> {
    let row = store::api_key::get(conn, &ctx.org_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("api key", id))?;
    let key = row.to_api()?;
    let own = match &key.owner {
        PrincipalRef::User(u) => u.as_str() == ctx.actor(),
        PrincipalRef::ServiceAccount(s) => s.as_str() == ctx.actor(),
    };
    if !own && ctx.role != Role::OrgAdmin {
        // Another principal's key is invisible, like another tenant's resource.
        return Err(ServiceError::not_found("api key", id));
    }
    Ok(key)
}

pub async fn get(svc: &Service, ctx: &Ctx, id: &ApiKeyId) -> Result<ApiKey, ServiceError> {
    let mut conn = ctx.read(svc).await?;
    let key = visible(ctx, id, &mut conn).await?;
    Ok(key)
}

/// Revokes the key; tokens exchanged for it stop working at once.
pub async fn revoke(svc: &Service, ctx: &Ctx, id: &ApiKeyId) -> Result<(), ServiceError> {
    let mut tx = ctx.begin(svc).await?;
    let key = visible(ctx, id, &mut tx).await?;
    if key.revoked_at.is_none() {
        store::api_key::revoke(&mut tx, &ctx.org_id, id).await?;
        ctx.audit(
            &mut tx,
            "api_key.revoke",
            "api_key",
            id.as_str(),
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
