//! `GET /v1/applications/{id}/events` and `…/metrics`: what the reconciler recorded and
//! what the engine reports, relayed by the control plane (tenants never reach the engine).

use chrono::Utc;
use sluice_api_types::{AppId, ApplicationEventList, ApplicationMetrics, PageParams};
use sluice_provisioner::{ClusterId, ClusterPhase};

use super::{Ctx, Service, ServiceError, next_token, page, policy};
use crate::reconcile::jobmanager::JobManager;
use crate::store;

pub async fn list(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
    p: &PageParams,
) -> Result<ApplicationEventList, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let page = page(p.page_size, p.page_token.as_deref())?;
    let mut conn = ctx.read(svc).await?;
    store::application::get(&mut conn, &ctx.org_id, id, false)
        .await?
        .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
        .ok_or_else(|| ServiceError::not_found("application", id))?;
    let (items, more) = store::event::list(&mut conn, &ctx.org_id, id, &page).await?;
    let next_page_token = next_token(more, items.last().map(|e| e.id.as_str()));
    Ok(ApplicationEventList {
        items,
        next_page_token,
    })
}

fn not_running(id: &AppId) -> ServiceError {
    ServiceError::Conflict {
        code: "not_running",
        detail: format!("application {id} has no running cluster to report metrics"),
    }
}

pub async fn metrics(
    svc: &Service,
    ctx: &Ctx,
    id: &AppId,
) -> Result<ApplicationMetrics, ServiceError> {
    ctx.require(policy::READ_APPS, "read applications")?;
    let mut conn = ctx.read(svc).await?;
    store::application::get(&mut conn, &ctx.org_id, id, false)
        .await?
        .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
        .ok_or_else(|| ServiceError::not_found("application", id))?;
    let rt = store::runtime::get(&mut conn, id)
        .await?
        .ok_or_else(|| not_running(id))?;
    drop(conn);
    let prov = svc
        .engine
        .provisioner
        .as_ref()
        .ok_or_else(|| not_running(id))?;
    let obs = prov
        .observe(&ClusterId {
            org_id: ctx.org_id.to_string(),
            application_id: id.to_string(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("observe the cluster of {id}: {e}"))?;
    let (Some(base), Some(run_id), ClusterPhase::Running) =
        (obs.rest_url.clone(), obs.run_id.clone(), obs.phase)
    else {
        return Err(not_running(id));
    };
    let jm = JobManager {
        http: &svc.engine.http,
        base,
        token: obs.auth_token.clone().unwrap_or_default(),
        job_id: rt.job_id.clone(),
    };
    let job_state = jm.job_state().await.map_err(|e| {
        tracing::warn!(application = %id, error = %format!("{e:#}"), "the JobManager did not answer");
        not_running(id)
    })?;
    let m = jm
        .metrics(&[
            "numRestarts",
            "numRecordsIn",
            "numRecordsOut",
            "lastCheckpointDuration",
            "lastCheckpointSize",
        ])
        .await
        .map_err(|e| anyhow::anyhow!("metrics of {id}: {e:#}"))?;
    let num = |k: &str| {
        m.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let last_checkpoint = jm
        .latest_checkpoint()
        .await
        .map_err(|e| anyhow::anyhow!("checkpoints of {id}: {e:#}"))?;
    Ok(ApplicationMetrics {
        application_id: id.clone(),
        run_id,
        job_state,
        records_in: num("numRecordsIn"),
        records_out: num("numRecordsOut"),
        restarts: num("numRestarts"),
        last_checkpoint,
        last_checkpoint_duration_ms: num("lastCheckpointDuration"),
        fetched_at: Utc::now(),
    })
}
