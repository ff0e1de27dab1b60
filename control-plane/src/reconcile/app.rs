//! One application's reconciliation: read spec, status, run and the provisioner's
//! observation; take idempotent steps toward the spec; write status (only on change),
//! events, operations, runs and usage spans.
//!
//! Ordering rules that make crashes harmless:
//! - a run row is written *before* its cluster is applied (intent first); a leader that
//!   finds an open run without a cluster applies it (the same run, the same generation);
//! - a usage span is opened from the cluster's observed start and closed from its observed
//!   exit, after the provisioner's delete returned them; a leader that finds a terminated
//!   cluster of an open run closes the span from that evidence;
//! - a stop-with-savepoint trigger is recorded in `application_runtime.stage` before it is
//!   polled, and the savepoint is recognised by its committed `_metadata` even when the
//!   JobManager is gone.

use anyhow::Context as _;
use chrono::Utc;
use sluice_api_types::savepoint::{SavepointOrigin, SavepointStatus};
use sluice_api_types::{
    AppId, Application, ApplicationSpec, ApplicationStatus, DesiredState, OrgId, Phase, PoolId,
    Problem, RestoreMode, RunId, SavepointId, UpgradeMode,
};
use sluice_provisioner::{
    CheckpointMode, CheckpointSpec, ClusterId, ClusterObservation, ClusterPhase, ClusterSpec,
    RestoreFrom, RestoreSpec, StateBackend, taskmanagers_for,
};

use super::jobmanager::{JobManager, Trigger};
use super::{Reconciler, failpoint, storage};
use crate::service::admission::{self, Decision};
use crate::service::spec::kpu_milli;
use crate::store::{self, run::Run, runtime::Runtime};

/// Consecutive failed starts before an application is FAILED.
const MAX_START_FAILURES: i32 = 5;

/// At most this many steps per application per pass (each step is one side effect).
const MAX_STEPS: usize = 8;

#[derive(PartialEq, Eq)]
enum Step {
    /// Something changed: look again at once.
    Again,
    /// Waiting for the outside world (or done).
    Idle,
}

pub(super) async fn reconcile(r: &Reconciler, org: &str, app: &str) -> anyhow::Result<()> {
    for _ in 0..MAX_STEPS {
        if step(r, org, app).await? == Step::Idle {
            break;
        }
    }
    Ok(())
}

struct Ctx<'a> {
    r: &'a Reconciler,
    org: OrgId,
    app_id: AppId,
}

impl Ctx<'_> {
    fn cluster_id(&self) -> ClusterId {
        ClusterId {
            org_id: self.org.to_string(),
            application_id: self.app_id.to_string(),
        }
    }

    fn prov(&self) -> anyhow::Result<&dyn sluice_provisioner::Provisioner> {
        self.r
            .engine
            .provisioner
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no provisioner configured"))
    }

    fn job_root(&self) -> String {
        storage::job_root(
            &self.r.engine.storage_root,
            self.org.as_str(),
            self.app_id.as_str(),
        )
    }

    async fn conn(&self) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        Ok(self.r.db.acquire().await?)
    }

    async fn event(
        &self,
        event_type: &str,
        phase: Option<Phase>,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut tx = self.r.fenced().await?;
        store::event::insert(
            &mut tx,
            &store::event::NewEvent {
                org_id: self.org.as_str(),
                application_id: self.app_id.as_str(),
                event_type,
                phase,
                reason,
                message,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the status when it changed, with a `phase_changed` event when the phase or
    /// the reason did, in one transaction.
    async fn set_status(
        &self,
        old: &ApplicationStatus,
        new: ApplicationStatus,
    ) -> anyhow::Result<()> {
        if *old == new {
            return Ok(());
        }
        let mut tx = self.r.fenced().await?;
        let changed =
            store::status::write(&mut tx, self.org.as_str(), self.app_id.as_str(), &new).await?;
        if changed && (old.phase != new.phase || old.reason != new.reason) {
            store::event::insert(
                &mut tx,
                &store::event::NewEvent {
                    org_id: self.org.as_str(),
                    application_id: self.app_id.as_str(),
                    event_type: "phase_changed",
                    phase: Some(new.phase),
                    reason: new.reason.as_deref(),
                    message: new.message.as_deref(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn jm<'a>(&'a self, obs: &ClusterObservation, job_id: &str) -> Option<JobManager<'a>> {
        Some(JobManager {
            http: &self.r.engine.http,
            base: obs.rest_url.clone()?,
            token: obs.auth_token.clone().unwrap_or_default(),
            job_id: job_id.to_owned(),
        })
    }
}

async fn step(r: &Reconciler, org: &str, app: &str) -> anyhow::Result<Step> {
    let cx = Ctx {
        r,
        org: org.parse()?,
        app_id: app.parse()?,
    };
    // Fenced although it mostly reads: a deposed leader learns it at its first step, and
    // the runtime row may be created here.
    let mut conn = cx.r.fenced().await?;
    let application = store::application::get(&mut conn, &cx.org, &cx.app_id, false).await?;
    let run = store::run::open_run(&mut conn, app).await?;
    let Some(application) = application else {
        // The application is gone but a run is open (a crash during its deletion).
        conn.commit().await?;
        if let Some(run) = run {
            teardown(&cx, &run, "deleted").await?;
            return Ok(Step::Again);
        }
        return Ok(Step::Idle);
    };
    let deleting = store::application::delete_requested(&mut conn, &cx.app_id).await?;
    let pool = application.spec.compute_pool_id.clone();
    let rt = store::runtime::ensure(&mut conn, &cx.org, &cx.app_id, &pool).await?;
    conn.commit().await?;
    if deleting {
        return delete_step(&cx, &application, run, &pool).await;
    }
    let status = application.status.clone();
    match run {
        Some(run) => with_run(&cx, &application, &rt, run).await,
        None => without_run(&cx, &application, &rt, &pool, &status).await,
    }
}

async fn delete_step(
    cx: &Ctx<'_>,
    a: &Application,
    run: Option<Run>,
    pool: &PoolId,
) -> anyhow::Result<Step> {
    let mut deleting = a.status.clone();
    deleting.phase = Phase::Deleting;
    deleting.reason = None;
    deleting.queue_position = None;
    cx.set_status(&a.status, deleting).await?;
    if let Some(run) = run {
        teardown(cx, &run, "deleted").await?;
        return Ok(Step::Again);
    }
    failpoint("delete.before_storage");
    let store_ = storage::open_root(&cx.r.engine.blobs, &cx.r.engine.storage_root).await?;
    let prefix = storage::app_prefix(cx.org.as_str(), cx.app_id.as_str())?;
    // Savepoints outlive their application when pinned or when the schedule's
    // `dispose_on_delete` is off (DESIGN §8); everything else under the prefix goes.
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT sp.id FROM savepoints sp
         WHERE sp.application_id = $1 AND sp.status <> 'DELETED'
           AND (sp.pinned OR EXISTS (SELECT 1 FROM savepoint_schedules s
                                     WHERE s.application_id = sp.application_id
                                       AND NOT s.dispose_on_delete))",
    )
    .bind(cx.app_id.as_str())
    .fetch_all(&cx.r.db)
    .await?;
    let objects = storage::delete_app_storage(store_.as_ref(), &prefix, &kept).await?;
    tracing::info!(application = %cx.app_id, objects, kept = kept.len(), "application storage removed");
    let mut tx = cx.r.fenced().await?;
    admission::set_held(&mut tx, &cx.org, pool, &cx.app_id, 0).await?;
    store::reconcile::delete_application(&mut tx, cx.app_id.as_str()).await?;
    store::reconcile::settle_operations(
        &mut tx,
        cx.app_id.as_str(),
        &["delete"],
        i64::MAX,
        "SUCCEEDED",
        None,
    )
    .await?;
    store::event::insert(
        &mut tx,
        &store::event::NewEvent {
            org_id: cx.org.as_str(),
            application_id: cx.app_id.as_str(),
            event_type: "deleted",
            phase: None,
            reason: None,
            message: Some(&format!(
                "cluster and {objects} stored object(s) removed; {} savepoint(s) kept",
                kept.len()
            )),
        },
    )
    .await?;
    tx.commit().await?;
    cx.r.engine.wake();
    Ok(Step::Idle)
}

/// Whether two specs need different clusters (desired state, restore and upgrade mode
/// do not change a running cluster).
fn cluster_changed(a: &ApplicationSpec, b: &ApplicationSpec) -> bool {
    a.sql != b.sql
        || a.parallelism != b.parallelism
        || a.parallelism_per_kpu != b.parallelism_per_kpu
        || a.checkpoint != b.checkpoint
        || a.state_backend != b.state_backend
        || a.config != b.config
        || a.restart_nonce != b.restart_nonce
}

async fn run_spec(cx: &Ctx<'_>, run: &Run) -> anyhow::Result<ApplicationSpec> {
    let mut c = cx.conn().await?;
    Ok(
        store::application::version(&mut c, &cx.org, &cx.app_id, run.application_version)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "version {} of {} is missing",
                    run.application_version,
                    cx.app_id
                )
            })?
            .spec,
    )
}

async fn with_run(cx: &Ctx<'_>, a: &Application, rt: &Runtime, run: Run) -> anyhow::Result<Step> {
    let prov = cx.prov()?;
    let obs = prov.observe(&cx.cluster_id()).await?;
    let ours = obs.run_id.as_deref() == Some(run.id.as_str());
    if !ours || obs.phase == ClusterPhase::Absent {
        // Recorded but never provisioned (or provisioned for an older run): make it exist.
        let spec = cluster_spec(cx, a, rt, &run).await?;
        let obs = prov.apply(&spec).await?;
        failpoint("start.after_apply");
        open_span(cx, &run, &obs).await?;
        return Ok(Step::Again);
    }
    if obs.phase == ClusterPhase::Terminated {
        // Deleted by a leader that died before recording it: close from the evidence.
        let reason = stage_purpose(rt).unwrap_or("lost");
        close_run(cx, &run, &obs, reason).await?;
        return Ok(Step::Again);
    }
    open_span(cx, &run, &obs).await?;
    let stopping = a.spec.desired_state == DesiredState::Stopped;
    let target = if stopping {
        None
    } else {
        let spec_of_run = run_spec(cx, &run).await?;
        Some(cluster_changed(&spec_of_run, &a.spec))
    };
    let in_stage = rt
        .stage
        .as_ref()
        .is_some_and(|s| s["run_id"].as_str() == Some(run.id.as_str()));
    if stopping || target == Some(true) || in_stage {
        // Waiting for capacity: a queued scale-up keeps the old cluster until admitted.
        if !stopping && !in_stage && rt.queued_seq.is_some() {
            return observe_job(cx, a, rt, &run, &obs).await;
        }
        let purpose = if stopping { "stopped" } else { "updated" };
        return stop_flow(cx, a, rt, &run, &obs, purpose).await;
    }
    if obs.phase == ClusterPhase::Failed {
        let failures = rt.failures + 1;
        let mut tx = cx.r.fenced().await?;
        store::runtime::set_failures(&mut tx, &cx.app_id, failures).await?;
        tx.commit().await?;
        let msg = obs
            .message
            .clone()
            .unwrap_or_else(|| "the cluster failed".into());
        cx.event("cluster_failed", None, Some("cluster_failed"), Some(&msg))
            .await?;
        teardown(cx, &run, "failed").await?;
        let mut st = a.status.clone();
        st.phase = Phase::Degraded;
        st.reason = Some("cluster_failed".into());
        st.message = Some(msg);
        st.current_kpu_milli = 0;
        cx.set_status(&a.status, st).await?;
        return Ok(Step::Again);
    }
    observe_job(cx, a, rt, &run, &obs).await
}

/// Reads the job's state from the JobManager and maps it to a phase.
async fn observe_job(
    cx: &Ctx<'_>,
    a: &Application,
    rt: &Runtime,
    run: &Run,
    obs: &ClusterObservation,
) -> anyhow::Result<Step> {
    let mut st = a.status.clone();
    st.run_id = Some(run.id.clone());
    st.generation = run.generation;
    st.observed_version = Some(run.application_version);
    st.current_kpu_milli = run.kpu_milli.max(0) as u64;
    st.started_at = obs.started_at;
    st.queue_position = None;
    let state = match cx.jm(obs, &rt.job_id) {
        Some(jm) => match jm.job_state().await {
            Ok(s) => {
                if let Ok(Some(c)) = jm.latest_checkpoint().await {
                    st.last_checkpoint = Some(c);
                }
                Some(s)
            }
            Err(e) => {
                tracing::debug!(application = %cx.app_id, error = %format!("{e:#}"), "job state not readable yet");
                None
            }
        },
        None => None,
    };
    let starting_phase = match a.status.phase {
        Phase::Updating | Phase::Scaling | Phase::RollingBack => a.status.phase,
        _ => Phase::Starting,
    };
    match state.as_deref() {
        Some("RUNNING") => {
            st.phase = Phase::Running;
            st.reason = None;
            st.message = None;
        }
        Some("RESTARTING" | "FAILING") => {
            st.phase = Phase::Degraded;
            st.reason = Some("engine_restarting".into());
            st.message = Some(format!(
                "the engine reports the job {}",
                state.as_deref().unwrap_or("")
            ));
        }
        Some(s @ ("FAILED" | "FINISHED" | "CANCELED" | "SUSPENDED")) => {
            let reason = if s == "FAILED" {
                "job_failed"
            } else {
                "job_ended"
            };
            let msg = format!("the engine reports the job {s}");
            teardown(cx, run, "failed").await?;
            return fail(cx, a, reason, &msg).await;
        }
        _ => {
            st.phase = starting_phase;
        }
    }
    if st.phase == Phase::Running {
        let mut c = cx.r.fenced().await?;
        if rt.failures != 0 {
            store::runtime::set_failures(&mut c, &cx.app_id, 0).await?;
        }
        if run.application_version == a.version {
            let n = store::reconcile::settle_operations(
                &mut c,
                cx.app_id.as_str(),
                &["start", "update", "rollback"],
                a.version,
                "SUCCEEDED",
                None,
            )
            .await?;
            if n > 0 {
                tracing::info!(application = %cx.app_id, operations = n, "operations succeeded");
            }
        }
        c.commit().await?;
        // A scale-down gives back what the new cluster no longer holds.
        if rt.reserved_kpu_milli > run.kpu_milli && rt.queued_seq.is_none() {
            let mut tx = cx.r.fenced().await?;
            let pool: PoolId = run.pool_id.parse()?;
            admission::set_held(&mut tx, &cx.org, &pool, &cx.app_id, run.kpu_milli as u64).await?;
            tx.commit().await?;
        }
    }
    if let Some(seq) = rt.queued_seq {
        // A queued scale-up (DESIGN §6): PENDING in the pool's FIFO queue while the cluster
        // keeps running at the size it holds; admitted, it is replaced (SCALING).
        let mut c = cx.conn().await?;
        let pool: PoolId = run.pool_id.parse()?;
        st.queue_position = Some(store::runtime::queue_position(&mut c, &pool, seq).await? as u32);
        st.reason = Some("compute_pool_exhausted".into());
        if st.phase == Phase::Running {
            st.phase = Phase::Pending;
            st.message = Some(format!(
                "waiting for {} milli-KPU in compute pool {pool}; the cluster keeps running at {} milli-KPU",
                rt.queued_kpu_milli.unwrap_or_default(),
                run.kpu_milli
            ));
        }
    }
    cx.set_status(&a.status, st).await?;
    Ok(Step::Idle)
}

/// FAILED with a reason: in-progress operations fail, the reservation is released.
async fn fail(cx: &Ctx<'_>, a: &Application, reason: &str, message: &str) -> anyhow::Result<Step> {
    let mut st = a.status.clone();
    st.phase = Phase::Failed;
    st.reason = Some(reason.into());
    st.message = Some(message.into());
    st.current_kpu_milli = 0;
    st.observed_version = Some(a.version);
    st.queue_position = None;
    let problem = Problem {
        type_uri: format!("urn:sluice:problem:{reason}"),
        title: "Failed".into(),
        status: 409,
        code: reason.into(),
        detail: message.into(),
        request_id: None,
        errors: Vec::new(),
        free_kpu_milli: None,
        requested_kpu_milli: None,
    };
    let mut tx = cx.r.fenced().await?;
    store::reconcile::settle_operations(
        &mut tx,
        cx.app_id.as_str(),
        &["start", "update", "rollback", "stop"],
        i64::MAX,
        "FAILED",
        Some(&problem),
    )
    .await?;
    admission::set_held(&mut tx, &cx.org, &a.spec.compute_pool_id, &cx.app_id, 0).await?;
    tx.commit().await?;
    cx.set_status(&a.status, st).await?;
    cx.r.engine.wake();
    Ok(Step::Idle)
}

fn stage_purpose(rt: &Runtime) -> Option<&str> {
    rt.stage.as_ref().and_then(|s| s["purpose"].as_str())
}

/// Stop (or replace) the running cluster: with a savepoint unless forced or the upgrade
/// mode says otherwise, then delete it and end the run.
async fn stop_flow(
    cx: &Ctx<'_>,
    a: &Application,
    rt: &Runtime,
    run: &Run,
    obs: &ClusterObservation,
    purpose: &str,
) -> anyhow::Result<Step> {
    let transition = if purpose == "stopped" {
        Phase::Stopping
    } else {
        let mut c = cx.conn().await?;
        let kind = store::reconcile::current_operation_kind(&mut c, cx.app_id.as_str()).await?;
        let old = run_spec(cx, run).await?;
        if kind.as_deref() == Some("rollback") {
            Phase::RollingBack
        } else if old.sql == a.spec.sql
            && old.checkpoint == a.spec.checkpoint
            && old.state_backend == a.spec.state_backend
            && old.config == a.spec.config
            && old.restart_nonce == a.spec.restart_nonce
        {
            Phase::Scaling
        } else {
            Phase::Updating
        }
    };
    let mut st = a.status.clone();
    st.phase = transition;
    st.reason = None;
    st.message = None;
    cx.set_status(&a.status, st.clone()).await?;
    let stage = rt
        .stage
        .clone()
        .filter(|s| s["run_id"].as_str() == Some(run.id.as_str()));
    let Some(stage) = stage else {
        let savepoint = match purpose {
            "stopped" => !rt.stop_force,
            _ => a.spec.upgrade_mode == UpgradeMode::Savepoint,
        };
        let next_restore = match (purpose, a.spec.upgrade_mode) {
            ("updated", UpgradeMode::Stateless) => Some("none"),
            _ => None,
        };
        {
            let mut tx = cx.r.fenced().await?;
            store::runtime::set_next_restore(&mut tx, &cx.app_id, next_restore).await?;
            tx.commit().await?;
        }
        let jm = cx.jm(obs, &rt.job_id);
        let running = match &jm {
            Some(jm) if savepoint => jm.job_state().await.ok().as_deref() == Some("RUNNING"),
            _ => false,
        };
        if let (true, Some(jm)) = (running, jm) {
            let sp = SavepointId::new();
            let target = format!("{}/savepoints/{sp}", cx.job_root());
            let trigger = match jm.stop_with_savepoint(&target).await {
                Ok(t) => t,
                Err(e) if e.downcast_ref::<super::jobmanager::Refused>().is_some() => {
                    // The engine cannot take one now (e.g. finished subtasks): stop without,
                    // the next start restores the latest checkpoint.
                    cx.event(
                        "savepoint_failed",
                        Some(transition),
                        Some("savepoint_refused"),
                        Some(&format!("{e:#}")),
                    )
                    .await?;
                    teardown(cx, run, purpose).await?;
                    return Ok(Step::Again);
                }
                Err(e) => return Err(e),
            };
            let stage = serde_json::json!({
                "kind": "stop_savepoint", "run_id": run.id, "trigger": trigger,
                "savepoint_id": sp, "target": target, "purpose": purpose,
                "at": Utc::now(),
            });
            let mut tx = cx.r.fenced().await?;
            store::runtime::set_stage(&mut tx, &cx.app_id, Some(&stage)).await?;
            tx.commit().await?;
            failpoint("stop.after_trigger");
            return Ok(Step::Again);
        }
        if savepoint {
            cx.event(
                "savepoint_skipped",
                Some(transition),
                None,
                Some("the job is not running; the next start restores the latest checkpoint"),
            )
            .await?;
        }
        teardown(cx, run, purpose).await?;
        return Ok(Step::Again);
    };
    // A stop-with-savepoint is in flight.
    let target = stage["target"].as_str().unwrap_or_default().to_owned();
    let trigger = stage["trigger"].as_str().unwrap_or_default().to_owned();
    let outcome = match cx.jm(obs, &rt.job_id) {
        Some(jm) if obs.phase == ClusterPhase::Running => jm.trigger(&trigger).await.ok(),
        _ => None,
    };
    let outcome = match outcome {
        Some(t) => t,
        // The JobManager is gone or does not answer: the commit point decides.
        None => {
            let store_ = storage::open_root(&cx.r.engine.blobs, &cx.r.engine.storage_root).await?;
            let dir = sluice_blob::BlobPath::new(format!(
                "{}/{}/savepoints/{}",
                cx.org,
                cx.app_id,
                stage["savepoint_id"].as_str().unwrap_or_default()
            ))?;
            if storage::snapshot_committed(store_.as_ref(), &dir).await? {
                Trigger::Completed {
                    location: target.clone(),
                }
            } else if obs.phase == ClusterPhase::Running {
                Trigger::InProgress
            } else {
                Trigger::Failed {
                    cause: "the JobManager exited before the savepoint completed".into(),
                }
            }
        }
    };
    let started = stage["at"]
        .as_str()
        .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
        .unwrap_or_else(Utc::now);
    let timed_out = Utc::now().signed_duration_since(started)
        > chrono::Duration::milliseconds(cx.r.cfg.savepoint_timeout_ms as i64);
    match outcome {
        Trigger::InProgress if !timed_out => return Ok(Step::Idle),
        Trigger::InProgress => {
            cx.event(
                "savepoint_failed",
                Some(transition),
                Some("savepoint_timeout"),
                Some("the stop-with-savepoint did not complete in time"),
            )
            .await?;
        }
        Trigger::Completed { location } => {
            let mut tx = cx.r.fenced().await?;
            store::runtime::set_last_savepoint(&mut tx, &cx.app_id, &location, run.generation)
                .await?;
            tx.commit().await?;
            record_stop_savepoint(cx, run, &stage, &location).await?;
            cx.event(
                "savepoint_completed",
                Some(transition),
                None,
                Some(&location),
            )
            .await?;
        }
        Trigger::Failed { cause } => {
            cx.event(
                "savepoint_failed",
                Some(transition),
                Some("savepoint_failed"),
                Some(&cause),
            )
            .await?;
        }
    }
    teardown(cx, run, purpose).await?;
    Ok(Step::Again)
}

/// A stop or upgrade savepoint becomes a savepoint record like any other, so it is listed,
/// billed, and kept or disposed of by retention (recording twice is harmless: a retried
/// step finds the record already there).
async fn record_stop_savepoint(
    cx: &Ctx<'_>,
    run: &Run,
    stage: &serde_json::Value,
    location: &str,
) -> anyhow::Result<()> {
    let id: SavepointId = stage["savepoint_id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow::anyhow!("savepoint id of the stop stage: {e}"))?;
    let origin = match stage["purpose"].as_str() {
        Some("stopped") => SavepointOrigin::OnStop,
        _ => SavepointOrigin::PreUpgrade,
    };
    let store_ = storage::open_root(&cx.r.engine.blobs, &cx.r.engine.storage_root).await?;
    let dir = sluice_blob::BlobPath::new(format!("{}/{}/savepoints/{id}", cx.org, cx.app_id))?;
    let size = sluice_blob::savepoints::prefix_size(store_.as_ref(), &dir)
        .await
        .with_context(|| format!("size of savepoint {id}"))?;
    let mut tx = cx.r.fenced().await?;
    store::savepoint::insert_completed(
        &mut tx,
        &cx.org,
        &cx.app_id,
        &id,
        origin,
        run.application_version,
        location,
        size.bytes,
    )
    .await
    .with_context(|| format!("record savepoint {id}"))?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the run's cluster and closes its span and the run from the provisioner's
/// evidence; clears the stage.
async fn teardown(cx: &Ctx<'_>, run: &Run, reason: &str) -> anyhow::Result<()> {
    let prov = cx.prov()?;
    let id = ClusterId {
        org_id: run.org_id.clone(),
        application_id: run.application_id.clone(),
    };
    let obs = prov.delete(&id).await?;
    failpoint("teardown.after_delete");
    close_run(cx, run, &obs, reason).await
}

async fn close_run(
    cx: &Ctx<'_>,
    run: &Run,
    obs: &ClusterObservation,
    reason: &str,
) -> anyhow::Result<()> {
    let ours = obs.run_id.as_deref() == Some(run.id.as_str());
    let ended_at = match (ours, obs.ended_at) {
        (true, Some(t)) => t,
        // Never provisioned (no process ever ran): nothing was held after the run's creation.
        _ => run.created_at,
    };
    let mut tx = cx.r.fenced().await?;
    if ours && let Some(started) = obs.started_at {
        store::run::open_span(&mut tx, run, started).await?;
    }
    store::run::close_span(&mut tx, &run.id, ended_at, reason).await?;
    store::run::end(&mut tx, &run.id, ended_at, reason).await?;
    store::runtime::set_stage(&mut tx, &cx.app_id, None).await?;
    store::event::insert(
        &mut tx,
        &store::event::NewEvent {
            org_id: &run.org_id,
            application_id: &run.application_id,
            event_type: "cluster_stopped",
            phase: None,
            reason: Some(reason),
            message: Some(&format!(
                "run {} (generation {}) ended",
                run.id, run.generation
            )),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn open_span(cx: &Ctx<'_>, run: &Run, obs: &ClusterObservation) -> anyhow::Result<()> {
    if obs.run_id.as_deref() != Some(run.id.as_str()) {
        return Ok(());
    }
    if let Some(started) = obs.started_at {
        let mut tx = cx.r.fenced().await?;
        store::run::open_span(&mut tx, run, started).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn without_run(
    cx: &Ctx<'_>,
    a: &Application,
    rt: &Runtime,
    pool: &PoolId,
    status: &ApplicationStatus,
) -> anyhow::Result<Step> {
    if a.spec.desired_state == DesiredState::Stopped {
        let mut tx = cx.r.fenced().await?;
        if rt.reserved_kpu_milli > 0 || rt.queued_seq.is_some() {
            store::runtime::dequeue(&mut tx, &cx.app_id).await?;
            admission::set_held(&mut tx, &cx.org, pool, &cx.app_id, 0).await?;
        }
        store::reconcile::settle_operations(
            &mut tx,
            cx.app_id.as_str(),
            &["stop", "start", "update", "rollback"],
            a.version,
            "SUCCEEDED",
            None,
        )
        .await?;
        tx.commit().await?;
        let mut st = status.clone();
        if st.phase != Phase::Failed || status.observed_version != Some(a.version) {
            st.phase = Phase::Stopped;
            st.reason = None;
            st.message = None;
        }
        st.current_kpu_milli = 0;
        st.queue_position = None;
        cx.set_status(status, st).await?;
        cx.r.engine.wake();
        return Ok(Step::Idle);
    }
    // Desired running.
    if status.phase == Phase::Failed && status.observed_version == Some(a.version) {
        // Failed at this version: tried again after a new version (any change, e.g.
        // `restart_nonce`) or a `:start`, whose operation is in progress (every operation in
        // progress at the failure was settled FAILED with it).
        let mut c = cx.conn().await?;
        let kind = store::reconcile::current_operation_kind(&mut c, cx.app_id.as_str()).await?;
        if kind.as_deref() != Some("start") {
            return Ok(Step::Idle);
        }
    }
    if rt.failures >= MAX_START_FAILURES {
        let msg = format!("the cluster failed {} times in a row", rt.failures);
        let mut tx = cx.r.fenced().await?;
        store::runtime::set_failures(&mut tx, &cx.app_id, 0).await?;
        tx.commit().await?;
        return fail(cx, a, "cluster_failed", &msg).await;
    }
    if rt.failures > 0 {
        // Restarts after a failed cluster back off: 1 s, 2 s, 4 s, … up to 30 s.
        let mut c = cx.conn().await?;
        if let Some(ended) = store::run::last_ended_at(&mut c, cx.app_id.as_str()).await? {
            let wait_ms = (1000i64 << (rt.failures - 1).clamp(0, 5)).min(30_000);
            if Utc::now().signed_duration_since(ended) < chrono::Duration::milliseconds(wait_ms) {
                return Ok(Step::Idle);
            }
        }
    }
    let need = kpu_milli(&a.spec);
    if (rt.reserved_kpu_milli as u64) < need || rt.queued_seq.is_some() {
        let mut tx = cx.r.fenced().await?;
        let d = admission::admit(&mut tx, &cx.org, pool, &cx.app_id, need).await?;
        tx.commit().await?;
        match d {
            Decision::Admitted => {
                cx.event(
                    "admitted",
                    None,
                    None,
                    Some(&format!("{need} milli-KPU reserved")),
                )
                .await?;
            }
            Decision::Queued { position } => {
                let mut st = status.clone();
                st.phase = Phase::Pending;
                st.reason = Some("compute_pool_exhausted".into());
                st.message = Some(format!(
                    "waiting for {need} milli-KPU in compute pool {pool}"
                ));
                st.queue_position = Some(position as u32);
                st.current_kpu_milli = 0;
                cx.set_status(status, st).await?;
                return Ok(Step::Idle);
            }
            Decision::Exhausted { free, requested } => {
                return fail(
                    cx,
                    a,
                    "compute_pool_exhausted",
                    &format!("compute pool {pool} has {free} milli-KPU free, {requested} needed"),
                )
                .await;
            }
        }
    }
    start_run(cx, a, rt, status).await
}

async fn start_run(
    cx: &Ctx<'_>,
    a: &Application,
    rt: &Runtime,
    status: &ApplicationStatus,
) -> anyhow::Result<Step> {
    let restore = match &rt.next_restore {
        Some(r) => r.clone(),
        None => match decide_restore(cx, a, rt).await? {
            Ok(r) => r,
            Err(why) => return fail(cx, a, "savepoint_unavailable", &why).await,
        },
    };
    let mut tx = cx.r.fenced().await?;
    let generation = store::run::max_generation(&mut tx, cx.app_id.as_str())
        .await?
        .max(status.generation)
        + 1;
    let pool_row = store::compute_pool::get(&mut tx, &cx.org, &a.spec.compute_pool_id, false)
        .await?
        .ok_or_else(|| anyhow::anyhow!("pool of {} is missing", cx.app_id))?;
    let run_id = RunId::new();
    let run = store::run::insert(
        &mut tx,
        &store::run::NewRun {
            id: run_id.as_str(),
            org_id: cx.org.as_str(),
            application_id: cx.app_id.as_str(),
            pool_id: a.spec.compute_pool_id.as_str(),
            region: &pool_row.region,
            generation,
            application_version: a.version,
            kpu_milli: kpu_milli(&a.spec) as i64,
            restore: &restore,
        },
    )
    .await?;
    store::runtime::set_next_restore(&mut tx, &cx.app_id, None).await?;
    store::event::insert(
        &mut tx,
        &store::event::NewEvent {
            org_id: cx.org.as_str(),
            application_id: cx.app_id.as_str(),
            event_type: "cluster_starting",
            phase: None,
            reason: None,
            message: Some(&format!(
                "run {} generation {generation}, version {}, restore {restore}",
                run.id, a.version
            )),
        },
    )
    .await?;
    tx.commit().await?;
    failpoint("start.after_run_recorded");
    let mut st = status.clone();
    st.phase = match status.phase {
        Phase::Updating | Phase::Scaling | Phase::RollingBack | Phase::Degraded => status.phase,
        _ => Phase::Starting,
    };
    if st.phase != Phase::Degraded {
        st.reason = None;
        st.message = None;
    }
    st.run_id = Some(run.id.clone());
    st.generation = generation;
    st.observed_version = Some(a.version);
    st.current_kpu_milli = run.kpu_milli as u64;
    st.queue_position = None;
    cx.set_status(status, st).await?;
    let spec = cluster_spec(cx, a, rt, &run).await?;
    let obs = cx.prov()?.apply(&spec).await?;
    failpoint("start.after_apply");
    open_span(cx, &run, &obs).await?;
    Ok(Step::Again)
}

/// `latest`: the newest of the last savepoint (taken at a stop or an upgrade) and the
/// checkpoints completed since by a newer generation. `Ok(Err(why))`: the spec names a
/// savepoint this application cannot restore from.
async fn decide_restore(
    cx: &Ctx<'_>,
    a: &Application,
    rt: &Runtime,
) -> anyhow::Result<Result<String, String>> {
    Ok(Ok(match a.spec.restore.mode {
        RestoreMode::None => "none".into(),
        RestoreMode::Savepoint => match &a.spec.restore.savepoint_id {
            // The record knows where the engine put `_metadata` (the engine writes one level
            // below the directory it was given, like Flink) and whether it is complete.
            Some(sp) => match crate::service::savepoint::observe(&cx.r.db, sp).await? {
                Some(s) if s.application_id != cx.app_id => {
                    return Ok(Err(format!(
                        "savepoint {sp} belongs to another application; import it first"
                    )));
                }
                Some(s) if s.status != SavepointStatus::Completed => {
                    return Ok(Err(format!(
                        "savepoint {sp} is {}, not COMPLETED",
                        s.status.as_str()
                    )));
                }
                Some(s) => match s.location {
                    Some(l) => l,
                    None => return Ok(Err(format!("savepoint {sp} has no location"))),
                },
                None => return Ok(Err(format!("savepoint {sp} does not exist"))),
            },
            None => "latest".into(),
        },
        RestoreMode::Latest => match (&rt.last_savepoint_uri, rt.last_savepoint_generation) {
            (Some(uri), Some(generation)) => {
                let store_ =
                    storage::open_root(&cx.r.engine.blobs, &cx.r.engine.storage_root).await?;
                let prefix = storage::app_prefix(cx.org.as_str(), cx.app_id.as_str())?;
                if storage::checkpoint_after(store_.as_ref(), &prefix, generation).await? {
                    "latest".into()
                } else {
                    uri.clone()
                }
            }
            _ => "latest".into(),
        },
    }))
}

async fn cluster_spec(
    cx: &Ctx<'_>,
    _a: &Application,
    rt: &Runtime,
    run: &Run,
) -> anyhow::Result<ClusterSpec> {
    let spec = run_spec(cx, run).await?;
    let from = match run.restore.as_str() {
        "none" => RestoreFrom::None,
        "latest" => RestoreFrom::Latest,
        uri => RestoreFrom::Uri {
            uri: uri.to_owned(),
        },
    };
    let slots = spec.parallelism_per_kpu.max(1);
    Ok(ClusterSpec {
        id: cx.cluster_id(),
        run_id: run.id.clone(),
        generation: run.generation as u64,
        job_id: rt.job_id.clone(),
        sql: spec.sql.clone(),
        parallelism: spec.parallelism,
        slots_per_taskmanager: slots,
        taskmanagers: taskmanagers_for(spec.parallelism, slots),
        state_backend: match spec.state_backend {
            sluice_api_types::StateBackend::Memory => StateBackend::Memory,
            sluice_api_types::StateBackend::Rocksdb => StateBackend::Rocksdb,
        },
        checkpoint: CheckpointSpec {
            interval_ms: spec.checkpoint.interval_ms,
            min_pause_ms: spec.checkpoint.min_pause_ms,
            mode: match spec.checkpoint.mode {
                sluice_api_types::CheckpointMode::ExactlyOnce => CheckpointMode::ExactlyOnce,
                sluice_api_types::CheckpointMode::AtLeastOnce => CheckpointMode::AtLeastOnce,
            },
        },
        restore: RestoreSpec {
            from,
            allow_non_restored_state: spec.restore.allow_non_restored_state,
        },
        checkpoint_dir: cx.job_root(),
        engine_env: cx.r.engine.engine_env.clone(),
        kpu_milli: run.kpu_milli as u64,
        max_kpu_milli: None,
    })
}
