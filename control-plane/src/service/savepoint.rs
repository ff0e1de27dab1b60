//! Savepoints through the API (take, import, list, pin, relabel, delete, export, usage)
//! and for the reconciler (on-stop and pre-upgrade savepoints). Taking, copying and
//! disposing happen in the background: see [`super::savepoint_runtime`].

use chrono::{Datelike, TimeZone, Utc};
use sluice_api_types::{
    AppId, Application, CreateSavepoint, ExportSavepoint, Operation, OperationKind, OperationState,
    OrgId, Savepoint, SavepointId, SavepointList, SavepointOrigin, SavepointStatus, SavepointUsage,
    UpdateSavepoint,
};
use sluice_blob::checkpoint::{self, CheckpointError};
use sluice_blob::savepoints::split_dir_uri;
use sqlx::PgPool;

use super::{Ctx, Service, ServiceError, check_name, check_version, policy};
use crate::store;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSavepoints {
    /// Only savepoints in this status.
    pub status: Option<SavepointStatus>,
    /// Only savepoints of this origin.
    pub origin: Option<SavepointOrigin>,
    /// Include DELETED savepoints (default false).
    pub include_deleted: Option<bool>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

async fn load_app(
    conn: &mut store::Conn,
    ctx: &Ctx,
    id: &AppId,
) -> Result<Application, ServiceError> {
    store::application::get(conn, &ctx.org_id, id, false)
        .await?
        .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
        .ok_or_else(|| ServiceError::not_found("application", id))
}

/// The savepoint's row when the caller may see it: a pool-scoped key sees the
/// savepoints of its pool's applications only (not those of deleted applications).
async fn load(
    conn: &mut store::Conn,
    ctx: &Ctx,
    id: &SavepointId,
    for_update: bool,
) -> Result<store::savepoint::Row, ServiceError> {
    let nf = || ServiceError::not_found("savepoint", id);
    let row = store::savepoint::get_row(conn, &ctx.org_id, id, for_update)
        .await?
        .ok_or_else(nf)?;
    if ctx.pool_scope.is_some() {
        let app: AppId = store::id(&row.application_id)?;
        store::application::get(conn, &ctx.org_id, &app, false)
            .await?
            .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
            .ok_or_else(nf)?;
    }
    Ok(row)
}

fn backend<'s>(
    svc: &'s Service,
    field: &str,
) -> Result<&'s super::savepoint_runtime::SavepointBackend, ServiceError> {
    svc.savepoints.as_deref().ok_or_else(|| {
        ServiceError::invalid(
            field,
            "storage_not_configured",
            "this server has no savepoint storage configured",
        )
    })
}

/// Where a tenant may point an import or an export. Copies run with the platform's
/// credentials, so a tenant-given URI must not reach into the platform's savepoint storage
/// (another tenant's savepoints), except an import from the caller's own organization; and
/// `file://` is only accepted on a server whose own storage is on the filesystem (a single
/// host in development), never to reach the control plane's disk otherwise.
fn check_tenant_uri(
    b: &super::savepoint_runtime::SavepointBackend,
    ctx: &Ctx,
    field: &str,
    uri: &str,
    import: bool,
) -> Result<sluice_blob::savepoints::DirUri, ServiceError> {
    let bad = |code: &str, msg: String| ServiceError::invalid(field, code, msg);
    let dir = split_dir_uri(uri).map_err(|e| bad("invalid_uri", e.to_string()))?;
    let norm = uri.trim_end_matches('/');
    let root = b.root_uri.trim_end_matches('/');
    if norm == root || norm.starts_with(&format!("{root}/")) {
        let own = format!("{root}/{}/", ctx.org_id);
        if !(import && norm.starts_with(&own)) {
            return Err(bad(
                "forbidden_location",
                format!("{field} must not point into the platform's savepoint storage"),
            ));
        }
    }
    if norm.starts_with("file://") && !root.starts_with("file://") {
        return Err(bad(
            "unsupported_scheme",
            format!("{field} must be an s3:// URI"),
        ));
    }
    Ok(dir)
}

/// Checks that `uri` names a readable, self-contained savepoint (`_metadata` present,
/// decodes, every file it lists is there with its size).
async fn check_source(svc: &Service, ctx: &Ctx, uri: &str) -> Result<(), ServiceError> {
    let b = backend(svc, "source_uri")?;
    let bad = |code: &str, msg: String| ServiceError::invalid("source_uri", code, msg);
    let src = check_tenant_uri(b, ctx, "source_uri", uri, true)?;
    let store = b
        .open(&src.parent)
        .await
        .map_err(|e| bad("unreachable", format!("{e:#}")))?;
    match checkpoint::inspect_snapshot(store.as_ref(), &src.dir).await {
        Ok(_) => Ok(()),
        Err(CheckpointError::Blob(e)) if e.is_not_found() => Err(bad(
            "not_a_savepoint",
            format!("{uri} has no _metadata: {e}"),
        )),
        Err(e) => Err(bad("invalid_savepoint", format!("{uri}: {e}"))),
    }
}

/// Take (or, with `source_uri`, import) a savepoint: recorded PENDING and taken in the background.
pub async fn create(
    svc: &Service,
    ctx: &Ctx,
    app: &AppId,
    req: CreateSavepoint,
) -> Result<Savepoint, ServiceError> {
    ctx.require(policy::WRITE_APPS, "take savepoints")?;
    let mut errors = Vec::new();
    if let Some(l) = &req.label {
        check_name("label", l, 200, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    if let Some(uri) = &req.source_uri {
        // Before the transaction: this reads the source, which may be slow.
        check_source(svc, ctx, uri).await?;
    }
    let mut tx = ctx.begin(svc).await?;
    let a = load_app(&mut tx, ctx, app).await?;
    let origin = if req.source_uri.is_some() {
        SavepointOrigin::Imported
    } else {
        SavepointOrigin::Manual
    };
    let id = SavepointId::new();
    let sp = store::savepoint::insert(
        &mut tx,
        &store::savepoint::NewSavepoint {
            id: &id,
            org: &ctx.org_id,
            app,
            origin,
            label: req.label.as_deref(),
            pinned: req.pinned,
            source_uri: req.source_uri.as_deref(),
            application_version: Some(a.version),
        },
    )
    .await?;
    ctx.audit(
        &mut tx,
        "savepoint.create",
        "savepoint",
        id.as_str(),
        serde_json::json!({ "application_id": app, "origin": origin, "pinned": req.pinned,
                            "label": req.label, "source_uri": req.source_uri }),
    )
    .await?;
    tx.commit().await?;
    Ok(sp)
}

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    app: &AppId,
    q: &ListSavepoints,
) -> Result<SavepointList, ServiceError> {
    ctx.require(policy::READ_APPS, "read savepoints")?;
    let page = super::page(q.page_size, q.page_token.as_deref())?;
    let mut conn = ctx.read(svc).await?;
    load_app(&mut conn, ctx, app).await?;
    let f = store::savepoint::Filter {
        status: q.status,
        origin: q.origin,
        include_deleted: q.include_deleted.unwrap_or(false),
    };
    let (items, more) = store::savepoint::list(&mut conn, &ctx.org_id, app, &f, &page).await?;
    let next_page_token = super::next_token(more, items.last().map(|s| s.id.as_str()));
    Ok(SavepointList {
        items,
        next_page_token,
    })
}

pub async fn get(svc: &Service, ctx: &Ctx, id: &SavepointId) -> Result<Savepoint, ServiceError> {
    ctx.require(policy::READ_APPS, "read savepoints")?;
    let mut conn = ctx.read(svc).await?;
    Ok(load(&mut conn, ctx, id, false).await?.into_api()?)
}

/// Pin, unpin, relabel (`label: ""` removes it).
pub async fn update(
    svc: &Service,
    ctx: &Ctx,
    id: &SavepointId,
    if_match: Option<i64>,
    req: UpdateSavepoint,
) -> Result<Savepoint, ServiceError> {
    ctx.require(policy::WRITE_APPS, "change savepoints")?;
    let mut errors = Vec::new();
    if let Some(l) = req.label.as_deref().filter(|l| !l.is_empty()) {
        check_name("label", l, 200, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let mut tx = ctx.begin(svc).await?;
    let row = load(&mut tx, ctx, id, true).await?;
    check_version(if_match, row.version)?;
    if matches!(
        row.status()?,
        SavepointStatus::Deleting | SavepointStatus::Deleted
    ) {
        return Err(ServiceError::Conflict {
            code: "savepoint_deleted",
            detail: format!("savepoint {id} is {} and cannot change", row.status),
        });
    }
    let label = match req.label {
        Some(l) if l.is_empty() => None,
        Some(l) => Some(l),
        None => row.label.clone(),
    };
    let pinned = req.pinned.unwrap_or(row.pinned);
    if label == row.label && pinned == row.pinned {
        tx.commit().await?;
        return Ok(row.into_api()?);
    }
    let sp =
        store::savepoint::update_meta(&mut tx, &ctx.org_id, id, label.as_deref(), pinned).await?;
    ctx.audit(
        &mut tx,
        "savepoint.update",
        "savepoint",
        id.as_str(),
        serde_json::json!({ "label": label, "pinned": pinned, "version": sp.version }),
    )
    .await?;
    tx.commit().await?;
    Ok(sp)
}

/// Dispose of a savepoint: DELETING now, its files deleted in the background, then DELETED.
pub async fn delete(
    svc: &Service,
    ctx: &Ctx,
    id: &SavepointId,
    if_match: Option<i64>,
) -> Result<Savepoint, ServiceError> {
    ctx.require(policy::WRITE_APPS, "delete savepoints")?;
    let mut tx = ctx.begin(svc).await?;
    let row = load(&mut tx, ctx, id, true).await?;
    check_version(if_match, row.version)?;
    match row.status()? {
        SavepointStatus::Deleting | SavepointStatus::Deleted => {
            tx.commit().await?;
            return Ok(row.into_api()?);
        }
        SavepointStatus::InProgress => {
            return Err(ServiceError::Conflict {
                code: "savepoint_in_progress",
                detail: format!("savepoint {id} is being taken; delete it once it finished"),
            });
        }
        SavepointStatus::Pending | SavepointStatus::Completed | SavepointStatus::Failed => {}
    }
    // A PENDING savepoint a worker already picked up may have been asked of the
    // JobManager: its files are disposed of once that request has surely ended.
    let dispose_after_s = if row.status()? == SavepointStatus::Pending && row.attempts > 0 {
        (svc.cfg.savepoints.take_timeout_s + 60) as f64
    } else {
        0.0
    };
    if row.pinned {
        return Err(ServiceError::Conflict {
            code: "savepoint_pinned",
            detail: format!("savepoint {id} is pinned; unpin it first"),
        });
    }
    let app: AppId = store::id(&row.application_id)?;
    if store::savepoint::restore_references(&mut tx, &app)
        .await?
        .iter()
        .any(|r| r == id.as_str())
    {
        return Err(ServiceError::Conflict {
            code: "savepoint_in_use",
            detail: format!(
                "application {app} restores from savepoint {id}; change its restore settings first"
            ),
        });
    }
    let sp = store::savepoint::mark_deleting(&mut tx, &ctx.org_id, id, dispose_after_s).await?;
    ctx.audit(
        &mut tx,
        "savepoint.delete",
        "savepoint",
        id.as_str(),
        serde_json::json!({ "application_id": app, "location": row.location }),
    )
    .await?;
    tx.commit().await?;
    Ok(sp)
}

/// Copy a completed savepoint to a tenant-given, empty directory URI; returns the operation.
pub async fn export(
    svc: &Service,
    ctx: &Ctx,
    id: &SavepointId,
    req: &ExportSavepoint,
) -> Result<Operation, ServiceError> {
    ctx.require(policy::WRITE_APPS, "export savepoints")?;
    // The savepoint first: another tenant's id is 404 before any check of the target, which
    // would otherwise let a caller probe storage with the platform's credentials.
    let mut tx = ctx.begin(svc).await?;
    let row = load(&mut tx, ctx, id, false).await?;
    let b = backend(svc, "target_uri")?;
    let bad = |code: &str, msg: String| ServiceError::invalid("target_uri", code, msg);
    let target = check_tenant_uri(b, ctx, "target_uri", &req.target_uri, false)?;
    let store = b
        .open(&target.parent)
        .await
        .map_err(|e| bad("unreachable", format!("{e:#}")))?;
    let existing = store
        .list_page(Some(&target.dir), None, 1)
        .await
        .map_err(|e| bad("unreachable", e.to_string()))?;
    if !existing.objects.is_empty() {
        return Err(bad(
            "not_empty",
            format!(
                "{} already holds objects; export into an empty directory",
                req.target_uri
            ),
        ));
    }
    if row.status()? != SavepointStatus::Completed {
        return Err(ServiceError::Conflict {
            code: "savepoint_not_completed",
            detail: format!(
                "savepoint {id} is {}; only COMPLETED savepoints can be exported",
                row.status
            ),
        });
    }
    let app: AppId = store::id(&row.application_id)?;
    let op = store::operation::insert(
        &mut tx,
        &ctx.org_id,
        &app,
        OperationKind::ExportSavepoint,
        row.application_version.unwrap_or(0),
        OperationState::InProgress,
    )
    .await?;
    store::savepoint::insert_export(&mut tx, &ctx.org_id, &op.id, id, &req.target_uri).await?;
    ctx.audit(
        &mut tx,
        "savepoint.export",
        "savepoint",
        id.as_str(),
        serde_json::json!({ "operation_id": op.id, "target_uri": req.target_uri }),
    )
    .await?;
    tx.commit().await?;
    Ok(op)
}

/// Savepoint storage of an application: bytes now and byte-seconds this month.
pub async fn usage(svc: &Service, ctx: &Ctx, app: &AppId) -> Result<SavepointUsage, ServiceError> {
    ctx.require(policy::READ_APPS, "read savepoints")?;
    let mut conn = ctx.read(svc).await?;
    load_app(&mut conn, ctx, app).await?;
    let now = Utc::now();
    let month_start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    Ok(store::savepoint::usage(&mut conn, &ctx.org_id, app, month_start).await?)
}

/// For the reconciler: records a savepoint to take now (`on_stop`, `pre_upgrade`), which
/// the savepoint workers take; follow it with [`observe`]. An `on_stop` savepoint stops
/// the job with it (stop-with-savepoint).
pub async fn request(
    db: &PgPool,
    org: &OrgId,
    app: &AppId,
    origin: SavepointOrigin,
    application_version: i64,
) -> Result<Savepoint, ServiceError> {
    let mut conn = db.acquire().await?;
    Ok(store::savepoint::insert_system(&mut conn, org, app, origin, application_version).await?)
}

/// For the reconciler, after its own stop-with-savepoint (on stop, before an upgrade) into
/// `{root}/{org}/{app}/savepoints/{id}` completed: records it COMPLETED with its size, so
/// that it is listed, billed and kept or disposed of by retention like every other one.
#[allow(clippy::too_many_arguments)]
pub async fn record_completed(
    db: &PgPool,
    org: &OrgId,
    app: &AppId,
    id: &SavepointId,
    origin: SavepointOrigin,
    application_version: i64,
    location: &str,
    size_bytes: u64,
) -> Result<Savepoint, ServiceError> {
    let mut conn = db.acquire().await?;
    Ok(store::savepoint::insert_completed(
        &mut conn,
        org,
        app,
        id,
        origin,
        application_version,
        location,
        size_bytes,
    )
    .await?)
}

/// For the reconciler: the savepoint as it is now.
pub async fn observe(db: &PgPool, id: &SavepointId) -> Result<Option<Savepoint>, ServiceError> {
    let mut conn = db.acquire().await?;
    Ok(store::savepoint::get_any(&mut conn, id).await?)
}

/// For billing: savepoint storage of an organization (or one application) in
/// `[from, to)`, in byte-seconds.
pub async fn storage_byte_seconds(
    db: &PgPool,
    org: &OrgId,
    app: Option<&AppId>,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
) -> Result<i64, ServiceError> {
    let mut conn = db.acquire().await?;
    Ok(store::savepoint::storage_byte_seconds(&mut conn, org, app, from, to).await?)
}
