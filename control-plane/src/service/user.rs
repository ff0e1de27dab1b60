//! Users of an organization (org_admin manages them).

use sluice_api_types::{CreateUser, PageParams, Role, UpdateUser, User, UserId, UserList};

use super::auth::{check_password, hash_password_blocking};
use super::organization::check_email;
use super::{Ctx, Service, ServiceError, check_name, check_version, next_token, page, policy};
use crate::store;

pub async fn create(svc: &Service, ctx: &Ctx, req: &CreateUser) -> Result<User, ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "create users")?;
    let mut errors = Vec::new();
    check_email("email", &req.email, &mut errors);
    check_name("name", &req.name, 200, &mut errors);
    check_password("password", &req.password, &mut errors);
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let hash = hash_password_blocking(req.password.clone()).await?;
    let id = UserId::new();
    let mut tx = ctx.begin(svc).await?;
    let user = store::user::insert(
        &mut tx,
        &store::user::NewUser {
            id: &id,
            org_id: &ctx.org_id,
            email: &req.email.to_ascii_lowercase(),
            name: &req.name,
            role: req.role,
            password_hash: &hash,
        },
    )
    .await
    .map_err(|e| match e {
        store::StoreError::Unique { .. } => ServiceError::invalid(
            "email",
            "already_exists",
            "a user with this email already exists",
        ),
        e => e.into(),
    })?;
    ctx.audit(
        &mut tx,
        "user.create",
        "user",
        id.as_str(),
        serde_json::json!({ "role": req.role }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

pub async fn list(svc: &Service, ctx: &Ctx, p: &PageParams) -> Result<UserList, ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "list users")?;
    let page = page(p.page_size, p.page_token.as_deref())?;
    let mut conn = ctx.read(svc).await?;
    let (items, more) = store::user::list(&mut conn, &ctx.org_id, &page).await?;
    let next_page_token = next_token(more, items.last().map(|u| u.id.as_str()));
    Ok(UserList {
        items,
        next_page_token,
    })
}

pub async fn get(svc: &Service, ctx: &Ctx, id: &UserId) -> Result<User, ServiceError> {
    // Everyone may read their own user; others need org_admin.
    if ctx.actor() != id.as_str() {
        ctx.require(policy::MANAGE_IDENTITY, "read other users")?;
    }
    let mut conn = ctx.read(svc).await?;
    let user = store::user::get(&mut conn, &ctx.org_id, id, false)
        .await?
        .ok_or_else(|| ServiceError::not_found("user", id))?;
    Ok(user.to_api()?)
}

pub async fn update(
    svc: &Service,
    ctx: &Ctx,
    id: &UserId,
    if_match: Option<i64>,
    req: &UpdateUser,
) -> Result<User, ServiceError> {
    let own = ctx.actor() == id.as_str();
    if !own || req.role.is_some() {
        ctx.require(policy::MANAGE_IDENTITY, "change other users or roles")?;
    }
    let mut errors = Vec::new();
    if let Some(n) = &req.name {
        check_name("name", n, 200, &mut errors);
    }
    if let Some(p) = &req.password {
        check_password("password", p, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let hash = match &req.password {
        Some(p) => Some(hash_password_blocking(p.clone()).await?),
        None => None,
    };
    let mut tx = ctx.begin(svc).await?;
    let mut row = store::user::get(&mut tx, &ctx.org_id, id, true)
        .await?
        .ok_or_else(|| ServiceError::not_found("user", id))?;
    check_version(if_match, row.version)?;
    if let Some(n) = &req.name {
        row.name = n.clone();
    }
    if let Some(r) = req.role {
        if row.role()? == Role::OrgAdmin && r != Role::OrgAdmin && own {
            return Err(ServiceError::Conflict {
                code: "invalid_state",
                detail: "an org_admin cannot demote themselves; another org_admin must".into(),
            });
        }
        row.role = r.as_str().into();
    }
    if let Some(h) = hash {
        row.password_hash = h;
    }
    let user = store::user::save(&mut tx, &row).await?;
    ctx.audit(
        &mut tx,
        "user.update",
        "user",
        id.as_str(),
        serde_json::json!({ "name": req.name, "role": req.role, "password_changed": req.password.is_some() }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// Deletes the user and revokes its API keys; its live tokens stop working at once.
pub async fn delete(svc: &Service, ctx: &Ctx, id: &UserId) -> Result<(), ServiceError> {
    ctx.require(policy::MANAGE_IDENTITY, "delete users")?;
    if ctx.actor() == id.as_str() {
        return Err(ServiceError::Conflict {
            code: "invalid_state",
            detail: "a user cannot delete themselves".into(),
        });
    }
    let mut tx = ctx.begin(svc).await?;
    if !store::user::soft_delete(&mut tx, &ctx.org_id, id).await? {
        return Err(ServiceError::not_found("user", id));
    }
    let revoked = store::api_key::revoke_owned(&mut tx, &ctx.org_id, id.as_str(), None).await?;
    ctx.audit(
        &mut tx,
        "user.delete",
        "user",
        id.as_str(),
        serde_json::json!({ "revoked_api_keys": revoked }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
