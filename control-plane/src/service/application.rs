//! Applications: spec CRUD with immutable versions, and the intents (start,
//! stop, rollback, update, delete) that return Operations. Status is never
//! written here: the reconciler owns it.

use sluice_api_types::{
    AppId, Application, ApplicationList, ApplicationSpec, ApplicationVersion,
    ApplicationVersionList, CreateApplication, DesiredState, FieldError, Operation, OperationKind,
    OperationState, PageParams, PoolId, Problem, RollbackRequest, StopRequest, UpdateApplication,
};

use super::admission::{self, Decision};
use super::spec::{diff, kpu_milli, validate};
use super::{Ctx, Service, ServiceError, check_version, page_size, policy};
use crate::store::{self, Tx};

/// 422 when the spec can never fit its pool, whatever else runs there (DESIGN §6).
async fn check_fits_pool(
    tx: &mut Tx,
    ctx: &Ctx,
    spec: &ApplicationSpec,
) -> Result<(), ServiceError> {
    let pool = store::compute_pool::get(tx, &ctx.org_id, &spec.compute_pool_id, false)
        .await?
        .filter(|_| ctx.sees_pool(spec.compute_pool_id.as_str()))
        .ok_or_else(|| {
            ServiceError::invalid(
                "compute_pool_id",
                "not_found",
                format!("compute pool {} not found", spec.compute_pool_id),
            )
        })?;
    let need = kpu_milli(spec);
    let max = u64::try_from(pool.max_kpu).unwrap_or(0) * 1000;
    if need > max {
        return Err(ServiceError::Unprocessable {
            code: "exceeds_pool_capacity",
            detail: format!(
                "the application needs {}.{:03} KPU (parallelism {} at {} per KPU plus the orchestration share) but pool {} has max_kpu {}",
                need / 1000,
                need % 1000,
                spec.parallelism,
                spec.parallelism_per_kpu,
                pool.id,
                pool.max_kpu
            ),
        });
    }
    Ok(())
}

/// Reserves what a running `spec` holds in its pool, in the transaction that locks the
/// pool row: admitted, queued (PENDING) or 409 `compute_pool_exhausted`.
async fn admit(
    tx: &mut Tx,
    ctx: &Ctx,
    app: &AppId,
    spec: &ApplicationSpec,
) -> Result<Decision, ServiceError> {
    let need = kpu_milli(spec);
    let d = admission::admit(tx, &ctx.org_id, &spec.compute_pool_id, app, need).await?;
    if let Decision::Exhausted { free, requested } = d {
        return Err(ServiceError::PoolExhausted {
            free_kpu_milli: free,
            requested_kpu_milli: requested,
            detail: format!(
                "compute pool {} has {}.{:03} KPU free but the application needs {}.{:03} KPU",
                spec.compute_pool_id,
                free / 1000,
                free % 1000,
                requested / 1000,
                requested % 1000
            ),
        });
    }
    Ok(d)
}

/// 409 while the application is being deleted.
async fn not_deleting(tx: &mut Tx, id: &AppId) -> Result<(), ServiceError> {
    if store::application::delete_requested(tx, id).await? {
        return Err(ServiceError::Conflict {
            code: "invalid_state",
            detail: format!("application {id} is being deleted"),
        });
    }
    Ok(())
}

fn invalid_if_any(errors: Vec<FieldError>) -> Result<(), ServiceError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(errors))
    }
}

pub async fn create(
    svc: &Service,
    ctx: &Ctx,
    req: CreateApplication,
) -> Result<Application, ServiceError> {
    ctx.require(policy::WRITE_APPS, "create applications")?;
    if !ctx.sees_pool(req.compute_pool_id.as_str()) {
        return Err(ServiceError::Forbidden(
            "this API key is limited to another compute pool".into(),
        ));
    }
    let spec = ApplicationSpec {
        name: req.name,
        compute_pool_id: req.compute_pool_id,
        sql: req.sql,
        parallelism: req.parallelism,
        parallelism_per_kpu: req.parallelism_per_kpu,
        checkpoint: req.checkpoint,
        state_backend: req.state_backend,
        desired_state: req.desired_state,
        restore: req.restore,
        upgrade_mode: req.upgrade_mode,
        config: req.config,
        restart_nonce: req.restart_nonce,
    };
    invalid_if_any(validate(&spec))?;
    let id = AppId::new();
    let mut tx = ctx.begin(svc).await?;
    check_fits_pool(&mut tx, ctx, &spec).await?;
    let app = store::application::insert(&mut tx, &ctx.org_id, &id, &spec, ctx.actor())
        .await
        .map_err(|e| match e {
            store::StoreError::Unique { constraint } if constraint == "applications_name_key" => {
                ServiceError::invalid(
                    "name",
                    "already_exists",
                    "an application with this name already exists",
                )
            }
            e => e.into(),
        })?;
    store::runtime::ensure(&mut tx, &ctx.org_id, &id, &spec.compute_pool_id).await?;
    if spec.desired_state == DesiredState::Running {
        admit(&mut tx, ctx, &id, &spec).await?;
        store::operation::insert(
            &mut tx,
            &ctx.org_id,
            &id,
            OperationKind::Start,
            1,
            OperationState::InProgress,
        )
        .await?;
    }
    ctx.audit(
        &mut tx,
        "application.create",
        "application",
        id.as_str(),
        serde_json::json!({ "name": spec.name, "compute_pool_id": spec.compute_pool_id, "version": 1 }),
    )
    .await?;
    tx.commit().await?;
    svc.engine.wake();
    Ok(app)
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListApplications {
    /// Only applications of this compute pool.
    pub compute_pool_id: Option<PoolId>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    q: &ListApplications,
) -> Result<ApplicationList, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let page = super::page(q.page_size, q.page_token.as_deref())?;
    let pool = match (&ctx.pool_scope, &q.compute_pool_id) {
        (Some(scope), Some(asked)) if scope != asked => {
            return Ok(ApplicationList {
                items: Vec::new(),
                next_page_token: None,
            });
        }
        (Some(scope), _) => Some(scope),
        (None, asked) => asked.as_ref(),
    };
    let mut conn = ctx.read(svc).await?;
    let (items, more) = store::application::list(&mut conn, &ctx.org_id, pool, &page).await?;
    let next_page_token = super::next_token(more, items.last().map(|a| a.id.as_str()));
    Ok(ApplicationList {
        items,
        next_page_token,
    })
}

async fn load(
    conn: &mut store::Conn,
    ctx: &Ctx,
    id: &AppId,
    for_update: bool,
) -> Result<Application, ServiceError> {
    store::application::get(conn, &ctx.org_id, id, for_update)
        .await?
        .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
        .ok_or_else(|| ServiceError::not_found("application", id))
}

pub async fn get(svc: &Service, ctx: &Ctx, id: &AppId) -> Result<Application, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let mut conn = ctx.read(svc).await?;
    let app = load(&mut conn, ctx, id, false).await?;
    Ok(app)
}

/// Records `spec` as the next version, supersedes older in-progress operations
/// and returns the operation that drives the cluster to it (None when nothing
/// has to happen to a cluster).
async fn new_version(
    tx: &mut Tx,
    ctx: &Ctx,
    current: &Application,
    spec: &ApplicationSpec,
    kind: OperationKind,
) -> Result<(Application, Operation), ServiceError> {
    let version = current.version + 1;
    let app =
        store::application::save_version(tx, &ctx.org_id, &current.id, version, spec, ctx.actor())
            .await?;
    let superseded = Problem {
        type_uri: "urn:sluice:problem:superseded".into(),
        title: "Superseded".into(),
        status: 409,
        code: "superseded".into(),
        detail: format!(
            "version {version} replaced the target of this operation before it finished"
        ),
        request_id: ctx.request_id.clone(),
        errors: Vec::new(),
        free_kpu_milli: None,
        requested_kpu_milli: None,
    };
    store::operation::supersede(tx, &ctx.org_id, &current.id, &superseded).await?;
    // Start and stop always wait for the reconciler; other changes only when a cluster should run.
    let state = match kind {
        OperationKind::Start | OperationKind::Stop => OperationState::InProgress,
        _ if spec.desired_state == DesiredState::Running => OperationState::InProgress,
        _ => OperationState::Succeeded,
    };
    let op = store::operation::insert(tx, &ctx.org_id, &current.id, kind, version, state).await?;
    ctx.audit(
        tx,
        &format!("application.{}", kind.as_str()),
        "application",
        current.id.as_str(),
        serde_json::json!({ "version": version, "operation_id": op.id, "changes": diff(&current.spec, spec) }),
    )
    .await?;
    Ok((app, op))
}

pub async fn update(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    if_match: Option<i64>,
    req: UpdateApplication,
) -> Result<Application, ServiceError> {
    ctx.require(policy::WRITE_APPS, "change applications")?;
    let mut tx = ctx.begin(svc).await?;
    let current = load(&mut tx, ctx, id, true).await?;
    check_version(if_match, current.version)?;
    not_deleting(&mut tx, id).await?;
    let mut spec = current.spec.clone();
    if let Some(v) = req.sql {
        spec.sql = v;
    }
    if let Some(v) = req.parallelism {
        spec.parallelism = v;
    }
    if let Some(v) = req.parallelism_per_kpu {
        spec.parallelism_per_kpu = v;
    }
    if let Some(v) = req.checkpoint {
        spec.checkpoint = v;
    }
    if let Some(v) = req.state_backend {
        spec.state_backend = v;
    }
    if let Some(v) = req.desired_state {
        spec.desired_state = v;
    }
    if let Some(v) = req.restore {
        spec.restore = v;
    }
    if let Some(v) = req.upgrade_mode {
        spec.upgrade_mode = v;
    }
    if let Some(v) = req.config {
        spec.config = v;
    }
    if let Some(v) = req.restart_nonce {
        spec.restart_nonce = v;
    }
    if spec == current.spec {
        tx.commit().await?;
        return Ok(current);
    }
    invalid_if_any(validate(&spec))?;
    check_fits_pool(&mut tx, ctx, &spec).await?;
    if spec.desired_state == DesiredState::Running {
        store::runtime::ensure(&mut tx, &ctx.org_id, id, &spec.compute_pool_id).await?;
        admit(&mut tx, ctx, id, &spec).await?;
    }
    let kind = match (current.spec.desired_state, spec.desired_state) {
        (DesiredState::Stopped, DesiredState::Running) => OperationKind::Start,
        (DesiredState::Running, DesiredState::Stopped) => OperationKind::Stop,
        _ => OperationKind::Update,
    };
    let (app, _) = new_version(&mut tx, ctx, &current, &spec, kind).await?;
    tx.commit().await?;
    svc.engine.wake();
    Ok(app)
}

/// `:start` and `:stop`: set `desired_state` and return the operation.
pub async fn set_desired_state(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    if_match: Option<i64>,
    want: DesiredState,
    stop: &StopRequest,
) -> Result<Operation, ServiceError> {
    ctx.require(policy::WRITE_APPS, "start or stop applications")?;
    let mut tx = ctx.begin(svc).await?;
    let op = set_desired_state_in(&mut tx, ctx, id, if_match, want).await?;
    if want == DesiredState::Stopped && stop.force {
        store::runtime::set_stop_force(&mut tx, id, true).await?;
    }
    tx.commit().await?;
    svc.engine.wake();
    Ok(op)
}

/// [`set_desired_state`] in the caller's transaction and without the role check: for the
/// system acting on an organization (a budget's hard stop, `service::budget`), whose `ctx`
/// names the service account it acts as, so the version, operation and audit event are
/// recorded exactly as for a tenant's request.
pub async fn set_desired_state_in(
    tx: &mut Tx,
    ctx: &Ctx,
    id: &AppId,
    if_match: Option<i64>,
    want: DesiredState,
) -> Result<Operation, ServiceError> {
    let current = load(tx, ctx, id, true).await?;
    check_version(if_match, current.version)?;
    not_deleting(tx, id).await?;
    if want == DesiredState::Running
        && current.spec.desired_state == want
        && current.status.phase == sluice_api_types::Phase::Failed
    {
        return restart_failed(tx, ctx, &current).await;
    }
    if current.spec.desired_state == want {
        return Err(ServiceError::Conflict {
            code: "invalid_state",
            detail: format!(
                "application {id} is already {}",
                if want == DesiredState::Running {
                    "set to run"
                } else {
                    "set to stop"
                }
            ),
        });
    }
    let mut spec = current.spec.clone();
    spec.desired_state = want;
    let pool = &spec.compute_pool_id;
    store::runtime::ensure(tx, &ctx.org_id, id, pool).await?;
    store::runtime::set_stop_force(tx, id, false).await?;
    if want == DesiredState::Running {
        check_fits_pool(tx, ctx, &spec).await?;
        admit(tx, ctx, id, &spec).await?;
    } else {
        // A start still waiting in the queue holds nothing: it just leaves the queue.
        store::compute_pool::get(tx, &ctx.org_id, pool, true).await?;
        store::runtime::dequeue(tx, id).await?;
        store::runtime::sync_pool_status(tx, pool).await?;
    }
    let kind = if want == DesiredState::Running {
        OperationKind::Start
    } else {
        OperationKind::Stop
    };
    let (_, op) = new_version(tx, ctx, &current, &spec, kind).await?;
    Ok(op)
}

/// `:start` of a FAILED application: tries its current version again, without a new
/// version (DESIGN §3 `FAILED ──start──▶ PENDING`; AWS MSF's StartApplication likewise
/// restarts the same application version). Admitted like any start; the reconciler takes
/// the in-progress `start` operation as the signal to try again.
async fn restart_failed(
    tx: &mut Tx,
    ctx: &Ctx,
    current: &Application,
) -> Result<Operation, ServiceError> {
    let id = &current.id;
    store::runtime::ensure(tx, &ctx.org_id, id, &current.spec.compute_pool_id).await?;
    store::runtime::set_stop_force(tx, id, false).await?;
    check_fits_pool(tx, ctx, &current.spec).await?;
    admit(tx, ctx, id, &current.spec).await?;
    let op = store::operation::insert(
        tx,
        &ctx.org_id,
        id,
        OperationKind::Start,
        current.version,
        OperationState::InProgress,
    )
    .await?;
    ctx.audit(
        tx,
        "application.start",
        "application",
        id.as_str(),
        serde_json::json!({ "version": current.version, "operation_id": op.id, "restart_of": "FAILED" }),
    )
    .await?;
    Ok(op)
}

/// `:rollback`: the spec of an earlier version becomes the next version
/// (`desired_state` stays what it is now).
pub async fn rollback(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    if_match: Option<i64>,
    req: &RollbackRequest,
) -> Result<Operation, ServiceError> {
    ctx.require(policy::WRITE_APPS, "roll back applications")?;
    let mut tx = ctx.begin(svc).await?;
    let current = load(&mut tx, ctx, id, true).await?;
    check_version(if_match, current.version)?;
    let to = req.to_version.unwrap_or(current.version - 1);
    if to < 1 || to >= current.version {
        return Err(ServiceError::invalid(
            "to_version",
            "out_of_range",
            format!(
                "to_version must be between 1 and {} (an earlier version)",
                current.version - 1
            ),
        ));
    }
    let old = store::application::version(&mut tx, &ctx.org_id, id, to)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "version {to} of {id} is missing below current {}",
                current.version
            )
        })?;
    let mut spec = old.spec;
    spec.desired_state = current.spec.desired_state;
    check_fits_pool(&mut tx, ctx, &spec).await?;
    not_deleting(&mut tx, id).await?;
    if spec.desired_state == DesiredState::Running {
        store::runtime::ensure(&mut tx, &ctx.org_id, id, &spec.compute_pool_id).await?;
        admit(&mut tx, ctx, id, &spec).await?;
    }
    let (_, op) = new_version(&mut tx, ctx, &current, &spec, OperationKind::Rollback).await?;
    tx.commit().await?;
    svc.engine.wake();
    Ok(op)
}

/// Deletes the application. One that never ran goes at once (the operation is
/// SUCCEEDED); otherwise it turns DELETING and the reconciler removes its cluster and its
/// storage prefix first (the operation completes then).
pub async fn delete(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    if_match: Option<i64>,
) -> Result<Operation, ServiceError> {
    ctx.require(policy::WRITE_APPS, "delete applications")?;
    let mut tx = ctx.begin(svc).await?;
    let current = load(&mut tx, ctx, id, true).await?;
    check_version(if_match, current.version)?;
    not_deleting(&mut tx, id).await?;
    let never_ran = store::run::max_generation(&mut tx, id.as_str()).await? == 0;
    let state = if never_ran {
        // No cluster and no stored state: gone at once, with what it reserved or queued for.
        let pool = &current.spec.compute_pool_id;
        admission::set_held(&mut tx, &ctx.org_id, pool, id, 0).await?;
        store::application::delete(&mut tx, &ctx.org_id, id).await?;
        store::runtime::sync_pool_status(&mut tx, pool).await?;
        OperationState::Succeeded
    } else {
        let superseded = Problem {
            type_uri: "urn:sluice:problem:superseded".into(),
            title: "Superseded".into(),
            status: 409,
            code: "superseded".into(),
            detail: "the application was deleted before this operation finished".into(),
            request_id: ctx.request_id.clone(),
            errors: Vec::new(),
            free_kpu_milli: None,
            requested_kpu_milli: None,
        };
        store::operation::supersede(&mut tx, &ctx.org_id, id, &superseded).await?;
        store::application::request_delete(&mut tx, &ctx.org_id, id).await?;
        OperationState::InProgress
    };
    let op = store::operation::insert(
        &mut tx,
        &ctx.org_id,
        id,
        OperationKind::Delete,
        current.version,
        state,
    )
    .await?;
    ctx.audit(
        &mut tx,
        "application.delete",
        "application",
        id.as_str(),
        serde_json::json!({ "version": current.version, "operation_id": op.id }),
    )
    .await?;
    tx.commit().await?;
    svc.engine.wake();
    Ok(op)
}

pub async fn versions(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    p: &PageParams,
) -> Result<ApplicationVersionList, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let limit = page_size(p.page_size)?;
    let after = match &p.page_token {
        None => 0,
        Some(t) => t.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ServiceError::invalid(
                "query.page_token",
                "invalid_page_token",
                "page_token is not a token this API returned",
            )
        })?,
    };
    let mut conn = ctx.read(svc).await?;
    load(&mut conn, ctx, id, false).await?;
    let (prev, mut items, more) =
        store::application::versions(&mut conn, &ctx.org_id, id, after, limit).await?;
    let mut before = prev;
    for v in &mut items {
        if let Some(b) = &before {
            v.diff = diff(&b.spec, &v.spec);
        }
        before = Some(v.clone());
    }
    let next_page_token = if more {
        items.last().map(|v| v.version.to_string())
    } else {
        None
    };
    Ok(ApplicationVersionList {
        items,
        next_page_token,
    })
}

pub async fn version(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    n: i64,
) -> Result<ApplicationVersion, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let mut conn = ctx.read(svc).await?;
    load(&mut conn, ctx, id, false).await?;
    let mut v = store::application::version(&mut conn, &ctx.org_id, id, n)
        .await?
        .ok_or_else(|| {
            ServiceError::not_found("application version", format!("{id}/versions/{n}"))
        })?;
    if n > 1
        && let Some(prev) = store::application::version(&mut conn, &ctx.org_id, id, n - 1).await?
    {
        v.diff = diff(&prev.spec, &v.spec);
    }
    Ok(v)
}
