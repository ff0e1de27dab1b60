//! Compute pools: CRUD with compare-and-swap versions; capacity changes and
//! deletion are decided under the pool's row lock.

use sluice_api_types::{
    ComputePool, ComputePoolList, CreateComputePool, FieldError, PageParams, PoolId,
    UpdateComputePool,
};

use super::{Ctx, Service, ServiceError, check_name, check_version, next_token, page, policy};
use crate::store;

pub const MAX_KPU_LIMIT: u32 = 10_000;

fn check_max_kpu(v: u32, errors: &mut Vec<FieldError>) {
    if !(1..=MAX_KPU_LIMIT).contains(&v) {
        errors.push(FieldError::new(
            "max_kpu",
            "out_of_range",
            format!("max_kpu must be between 1 and {MAX_KPU_LIMIT}, got {v}"),
        ));
    }
}

pub async fn create(
    svc: &Service,
    ctx: &Ctx,
    req: &CreateComputePool,
) -> Result<ComputePool, ServiceError> {
    ctx.require(policy::WRITE_POOLS, "create compute pools")?;
    let mut errors = Vec::new();
    check_name("name", &req.name, 100, &mut errors);
    check_max_kpu(req.max_kpu, &mut errors);
    if !svc.cfg.regions.iter().any(|r| r == &req.region) {
        errors.push(FieldError::new(
            "region",
            "unknown_region",
            format!("region must be one of: {}", svc.cfg.regions.join(", ")),
        ));
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let id = PoolId::new();
    let mut tx = ctx.begin(svc).await?;
    let pool = store::compute_pool::insert(
        &mut tx,
        &ctx.org_id,
        &id,
        &req.name,
        &req.region,
        req.max_kpu,
        req.admission,
    )
    .await
    .map_err(name_taken)?;
    ctx.audit(
        &mut tx,
        "compute_pool.create",
        "compute_pool",
        id.as_str(),
        serde_json::json!({ "name": req.name, "region": req.region, "max_kpu": req.max_kpu, "admission": req.admission }),
    )
    .await?;
    tx.commit().await?;
    Ok(pool)
}

fn name_taken(e: store::StoreError) -> ServiceError {
    match e {
        store::StoreError::Unique { constraint } if constraint == "compute_pools_name_key" => {
            ServiceError::invalid(
                "name",
                "already_exists",
                "a compute pool with this name already exists",
            )
        }
        e => e.into(),
    }
}

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    p: &PageParams,
) -> Result<ComputePoolList, ServiceError> {
    ctx.require(policy::READ_POOLS, "read compute pools")?;
    let page = page(p.page_size, p.page_token.as_deref())?;
    let mut conn = ctx.read(svc).await?;
    let (items, more) =
        store::compute_pool::list(&mut conn, &ctx.org_id, ctx.pool_scope.as_ref(), &page).await?;
    let next_page_token = next_token(more, items.last().map(|p| p.id.as_str()));
    Ok(ComputePoolList {
        items,
        next_page_token,
    })
}

pub async fn get(svc: &Service, ctx: &Ctx, id: &PoolId) -> Result<ComputePool, ServiceError> {
    ctx.require(policy::READ_POOLS, "read compute pools")?;
    let mut conn = ctx.read(svc).await?;
    let row = store::compute_pool::get(&mut conn, &ctx.org_id, id, false)
        .await?
        .filter(|_| ctx.sees_pool(id.as_str()))
        .ok_or_else(|| ServiceError::not_found("compute pool", id))?;
    Ok(row.to_api()?)
}

pub async fn update(
    svc: &Service,
    ctx: &Ctx,
    id: &PoolId,
    if_match: Option<i64>,
    req: &UpdateComputePool,
) -> Result<ComputePool, ServiceError> {
    ctx.require(policy::WRITE_POOLS, "change compute pools")?;
    let mut errors = Vec::new();
    if let Some(n) = &req.name {
        check_name("name", n, 100, &mut errors);
    }
    if let Some(k) = req.max_kpu {
        check_max_kpu(k, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let mut tx = ctx.begin(svc).await?;
    let mut row = store::compute_pool::get(&mut tx, &ctx.org_id, id, true)
        .await?
        .filter(|_| ctx.sees_pool(id.as_str()))
        .ok_or_else(|| ServiceError::not_found("compute pool", id))?;
    check_version(if_match, row.version)?;
    if let Some(k) = req.max_kpu {
        let in_use = row.current_kpu_milli.max(0) as u64;
        if u64::from(k) * 1000 < in_use {
            return Err(ServiceError::Conflict {
                code: "capacity_in_use",
                detail: format!(
                    "max_kpu {k} is below the {}.{:03} KPU the pool's applications hold now",
                    in_use / 1000,
                    in_use % 1000
                ),
            });
        }
        row.max_kpu = k as i32;
    }
    if let Some(n) = &req.name {
        row.name = n.clone();
    }
    if let Some(a) = req.admission {
        row.admission = store::compute_pool::admission_str(a).into();
    }
    let pool = store::compute_pool::save(&mut tx, &ctx.org_id, &row)
        .await
        .map_err(name_taken)?;
    ctx.audit(
        &mut tx,
        "compute_pool.update",
        "compute_pool",
        id.as_str(),
        serde_json::json!({ "name": req.name, "max_kpu": req.max_kpu, "admission": req.admission, "version": pool.version }),
    )
    .await?;
    tx.commit().await?;
    Ok(pool)
}

/// 409 while the pool has applications (decided under the pool's row lock; the
/// foreign key is the backstop against a concurrent create).
pub async fn delete(
    svc: &Service,
    ctx: &Ctx,
    id: &PoolId,
    if_match: Option<i64>,
) -> Result<(), ServiceError> {
    ctx.require(policy::WRITE_POOLS, "delete compute pools")?;
    let mut tx = ctx.begin(svc).await?;
    let row = store::compute_pool::get(&mut tx, &ctx.org_id, id, true)
        .await?
        .filter(|_| ctx.sees_pool(id.as_str()))
        .ok_or_else(|| ServiceError::not_found("compute pool", id))?;
    check_version(if_match, row.version)?;
    let apps = store::compute_pool::count_applications(&mut tx, &ctx.org_id, id).await?;
    if apps > 0 {
        return Err(ServiceError::Conflict {
            code: "pool_in_use",
            detail: format!("compute pool {id} still has {apps} application(s); delete them first"),
        });
    }
    store::compute_pool::delete(&mut tx, &ctx.org_id, id)
        .await
        .map_err(|e| match e {
            store::StoreError::ForeignKey { .. } => ServiceError::Conflict {
                code: "pool_in_use",
                detail: format!("compute pool {id} still has applications; delete them first"),
            },
            e => e.into(),
        })?;
    ctx.audit(
        &mut tx,
        "compute_pool.delete",
        "compute_pool",
        id.as_str(),
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
