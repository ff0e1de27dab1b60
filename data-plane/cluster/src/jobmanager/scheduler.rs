//! The JobManager's control loop: one task owns the checkpoint coordinator and makes every
//! decision — deploy when enough slots are offered, fail over when a TaskManager or a
//! subtask is lost (cancel, back off, redeploy from the latest completed checkpoint), drive
//! checkpoints and savepoints, and finish, cancel or stop the job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_blob::BlobPath;
use sluice_blob::checkpoint::{CheckpointStore, METADATA_FILE};
use sluice_runtime::coordinator::{
    CheckpointConfig, CheckpointCoordinator, CheckpointStats, CheckpointStatus, CommandSink,
};
use sluice_runtime::task::{
    CheckpointingMode, RestoreSnapshot, SubtaskCommand, SubtaskEvent, SubtaskId,
};
use sluice_runtime::{Result as RtResult, RuntimeError};

use super::Input;
use super::state::{
    Deployment, ExceptionEntry, Jm, JobStatus, SubtaskStatus, TriggerStatus, now_ms,
};
use crate::rpc::{self, RestoreRef, SubtaskRef, ToTm};

/// Sends the coordinator's commands to the TaskManagers running the subtasks.
struct TmCommands {
    jm: Arc<Jm>,
    attempt: u64,
}

impl CommandSink for TmCommands {
    fn send(&self, to: SubtaskId, command: SubtaskCommand) -> RtResult<()> {
        let st = self.jm.lock();
        let d = st
            .deployment
            .as_ref()
            .filter(|d| d.attempt == self.attempt)
            .ok_or_else(|| RuntimeError::Task(format!("attempt {} is over", self.attempt)))?;
        let tm = d
            .slots
            .get(to.subtask)
            .ok_or_else(|| RuntimeError::Task(format!("no slot for {to}")))?;
        let t = st
            .tms
            .get(tm)
            .ok_or_else(|| RuntimeError::Task(format!("taskmanager {tm} of {to} is gone")))?;
        let command = serde_json::to_value(&command)
            .map_err(|e| RuntimeError::Task(format!("encoding a command: {e}")))?;
        t.tx.send(ToTm::Command {
            subtask: SubtaskRef {
                attempt: self.attempt,
                vertex: to.vertex,
                subtask: to.subtask,
            },
            command,
        })
        .map_err(|_| RuntimeError::Task(format!("taskmanager {tm} of {to} is gone")))
    }
}

/// A savepoint requested through REST, until it completes or fails.
struct PendingTrigger {
    trigger: String,
    checkpoint_id: u64,
    savepoint_id: String,
    target: Option<String>,
}

struct Control {
    coord: Option<CheckpointCoordinator>,
    /// Statistics of the coordinators of earlier attempts.
    prior: CheckpointStats,
    triggers: Vec<PendingTrigger>,
}

pub async fn control_loop(jm: Arc<Jm>) {
    let Some(mut rx) = jm
        .inbox_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        tracing::error!("the control loop started twice");
        return;
    };
    let mut ctl = Control {
        coord: None,
        prior: CheckpointStats::default(),
        triggers: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = jm.shutdown.cancelled() => return,
            _ = jm.fenced.cancelled() => return,
            input = rx.recv() => match input {
                Some(i) => handle_input(&jm, &mut ctl, i).await,
                None => return,
            },
            _ = tick.tick() => {}
            _ = jm.wake.notified() => {}
        }
        if let Err(e) = step(&jm, &mut ctl).await {
            tracing::error!("control loop: {e:#}");
        }
    }
}

async fn handle_input(jm: &Arc<Jm>, ctl: &mut Control, input: Input) {
    match input {
        Input::Event { tm, subtask, event } => {
            let ev: SubtaskEvent = match serde_json::from_value(event) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("undecodable event from {subtask:?}: {e}");
                    return;
                }
            };
            {
                let mut st = jm.lock();
                if let Some(d) = st.draining.as_mut()
                    && d.attempt == subtask.attempt
                    && matches!(ev, SubtaskEvent::Finished | SubtaskEvent::Failed { .. })
                {
                    d.subtasks.remove(&(subtask.vertex, subtask.subtask));
                }
                if st.deployment.as_ref().map(|d| d.attempt) != Some(subtask.attempt) {
                    return;
                }
            }
            let id = SubtaskId {
                vertex: subtask.vertex,
                subtask: subtask.subtask,
            };
            if let Some(c) = ctl.coord.as_mut()
                && let Err(e) = c.handle_event(id, &ev).await
            {
                jm.fence(format!("{e}"));
                return;
            }
            match ev {
                SubtaskEvent::Finished => {
                    let mut st = jm.lock();
                    let all_done = match st.deployment.as_mut() {
                        Some(d) => {
                            d.subtasks
                                .insert((id.vertex, id.subtask), SubtaskStatus::Finished);
                            d.subtasks.values().all(|s| *s == SubtaskStatus::Finished)
                        }
                        None => false,
                    };
                    if all_done {
                        st.deployment = None;
                        if st.status == JobStatus::Cancelling {
                            st.set_status(JobStatus::Canceled);
                        } else {
                            st.set_status(JobStatus::Finished);
                        }
                    }
                }
                SubtaskEvent::Failed { error } => {
                    let (task, location) = {
                        let st = jm.lock();
                        let task =
                            st.graph.vertices.get(id.vertex).map(|v| {
                                format!("{} ({}/{})", v.name, id.subtask + 1, v.parallelism)
                            });
                        let location = st.tms.get(&tm).map(|t| format!("{tm} ({})", t.data_addr));
                        (task, location.or(Some(tm)))
                    };
                    failover(
                        jm,
                        ctl,
                        format!("subtask {id} failed: {error}"),
                        task,
                        location,
                    );
                }
                SubtaskEvent::Acknowledge { .. } | SubtaskEvent::Decline { .. } => {}
            }
        }
        Input::Savepoint {
            target,
            stop,
            reply,
        } => {
            let r = trigger_savepoint(jm, ctl, target, stop);
            let _ = reply.send(r);
        }
        Input::Rescale(p) => {
            let mut st = jm.lock();
            if st.parallelism == p || st.status.is_terminal() {
                st.parallelism = p;
                return;
            }
            tracing::info!("rescaling from {} to {p}", st.parallelism);
            st.parallelism = p;
            let running = st.deployment.is_some();
            drop(st);
            if running {
                absorb(ctl);
                jm.cancel_deployment("rescaling");
                let mut st = jm.lock();
                st.samples.clear();
                st.restart_at = None;
                st.set_status(JobStatus::Restarting);
            }
        }
        Input::Cancel => {
            let mut st = jm.lock();
            if st.status.is_terminal() {
                return;
            }
            st.set_status(JobStatus::Cancelling);
            drop(st);
            absorb(ctl);
            jm.cancel_deployment("cancelled through REST");
            jm.lock().set_status(JobStatus::Canceled);
        }
    }
}

fn trigger_savepoint(
    jm: &Arc<Jm>,
    ctl: &mut Control,
    target: Option<String>,
    stop: Option<bool>,
) -> Result<String, String> {
    if jm.lock().status != JobStatus::Running {
        return Err(format!("the job is {}", jm.lock().status.as_str()));
    }
    let Some(c) = ctl.coord.as_mut() else {
        return Err("the job is not deployed".into());
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let savepoint_id = format!("savepoint-{}-{}", &jm.job_id[..6], &suffix[..12]);
    let id = match stop {
        Some(drain) => c.stop_with_savepoint(savepoint_id.clone(), drain),
        None => c.trigger_savepoint(savepoint_id.clone()),
    }
    .map_err(|e| e.to_string())?;
    let trigger = uuid::Uuid::new_v4().simple().to_string();
    jm.lock()
        .triggers
        .insert(trigger.clone(), TriggerStatus::InProgress);
    ctl.triggers.push(PendingTrigger {
        trigger: trigger.clone(),
        checkpoint_id: id,
        savepoint_id,
        target,
    });
    Ok(trigger)
}

/// Moves the statistics of the current coordinator into `prior` and drops it.
fn absorb(ctl: &mut Control) {
    if let Some(c) = ctl.coord.take() {
        let s = c.stats();
        let p = &mut ctl.prior;
        p.counts.triggered += s.counts.triggered;
        p.counts.completed += s.counts.completed;
        p.counts.failed += s.counts.failed + s.counts.in_progress;
        p.counts.restored += s.counts.restored;
        for (mine, theirs) in [
            (&mut p.latest_completed, &s.latest_completed),
            (&mut p.latest_savepoint, &s.latest_savepoint),
            (&mut p.latest_failed, &s.latest_failed),
        ] {
            if theirs.is_some() {
                *mine = theirs.clone();
            }
        }
        if s.restored.is_some() {
            p.restored = s.restored.clone();
        }
        let mut h = s.history.clone();
        h.append(&mut p.history);
        h.truncate(sluice_runtime::coordinator::HISTORY);
        p.history = h;
    }
}

/// The statistics REST shows: earlier attempts' plus the current coordinator's.
fn merged_stats(ctl: &Control) -> CheckpointStats {
    let mut out = ctl.prior.clone();
    if let Some(c) = &ctl.coord {
        let s = c.stats();
        out.counts.triggered += s.counts.triggered;
        out.counts.completed += s.counts.completed;
        out.counts.failed += s.counts.failed;
        out.counts.in_progress = s.counts.in_progress;
        out.counts.restored += s.counts.restored;
        for (mine, theirs) in [
            (&mut out.latest_completed, &s.latest_completed),
            (&mut out.latest_savepoint, &s.latest_savepoint),
            (&mut out.latest_failed, &s.latest_failed),
        ] {
            if theirs.is_some() {
                *mine = theirs.clone();
            }
        }
        if s.restored.is_some() {
            out.restored = s.restored.clone();
        }
        let mut h = s.history.clone();
        h.append(&mut out.history);
        h.truncate(sluice_runtime::coordinator::HISTORY);
        out.history = h;
    }
    out
}

/// Cancels the deployment and schedules a restart with backoff.
fn failover(
    jm: &Arc<Jm>,
    ctl: &mut Control,
    reason: String,
    task: Option<String>,
    location: Option<String>,
) {
    let mut st = jm.lock();
    if st.status.is_terminal() || st.status == JobStatus::Cancelling {
        return;
    }
    let Some(d) = st.take_deployment() else {
        return;
    };
    tracing::warn!("attempt {} failed: {reason}; restarting", d.attempt);
    st.exceptions.push(ExceptionEntry {
        at_ms: now_ms(),
        message: reason,
        task,
        location,
    });
    st.restarts += 1;
    let backoff = st.backoff_ms;
    st.restart_at = Some(Instant::now() + Duration::from_millis(backoff));
    st.backoff_ms = (backoff.saturating_mul(2)).min(jm.args.restart_backoff_max_ms);
    st.set_status(JobStatus::Restarting);
    st.samples.clear();
    st.metrics_attempt = None;
    drop(st);
    absorb(ctl);
    for t in ctl.triggers.drain(..) {
        jm.lock().triggers.insert(
            t.trigger,
            TriggerStatus::Failed {
                error: "the job failed over before the savepoint completed".into(),
            },
        );
    }
}

async fn step(jm: &Arc<Jm>, ctl: &mut Control) -> Result<()> {
    // TaskManagers that stopped heartbeating.
    let timeout = Duration::from_millis(jm.args.heartbeat_timeout_ms);
    let lost_tm = {
        let mut st = jm.lock();
        let silent: Vec<String> = st
            .tms
            .iter()
            .filter(|(_, t)| t.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            tracing::warn!("taskmanager {id} lost: no heartbeat for {timeout:?}");
            st.tms.remove(id);
            st.samples.remove(id);
            st.note_lost(id, "missed heartbeats");
        }
        st.deployment
            .as_ref()
            .and_then(|d| d.slots.iter().find(|s| !st.tms.contains_key(*s)).cloned())
    };
    if let Some(tm) = lost_tm {
        let why = jm
            .lock()
            .lost
            .iter()
            .rev()
            .find(|(id, _)| *id == tm)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| "lost".into());
        failover(
            jm,
            ctl,
            format!("taskmanager {tm} was lost ({why})"),
            None,
            Some(tm),
        );
    }

    let due = {
        let mut st = jm.lock();
        matches!(st.status, JobStatus::Created | JobStatus::Restarting)
            && st.deployment.is_none()
            && !st.still_draining()
            && st.restart_at.is_none_or(|t| Instant::now() >= t)
            && st.slots_available() >= st.parallelism
    };
    if due {
        deploy(jm, ctl).await?;
    }

    if let Some(c) = ctl.coord.as_mut()
        && let Err(e) = c.tick().await
    {
        jm.fence(e.to_string());
        return Ok(());
    }

    // A deployment that has run for a while resets the backoff.
    {
        let mut st = jm.lock();
        let long_enough = Duration::from_millis(jm.args.restart_backoff_max_ms.max(1000));
        if st
            .deployment
            .as_ref()
            .is_some_and(|d| d.deployed_at.elapsed() > long_enough)
        {
            st.backoff_ms = jm.args.restart_backoff_initial_ms;
        }
    }

    // The newest completed checkpoint is where the next restart starts.
    let stats = merged_stats(ctl);
    {
        let mut st = jm.lock();
        // Every checkpoint this JobManager completed is newer than what it started from.
        if let Some(path) = stats
            .latest_completed
            .as_ref()
            .and_then(|r| r.external_path.clone())
        {
            st.restore = Some(RestoreRef {
                store: jm.store_base.clone(),
                dir: path,
            });
        }
        st.checkpoints = stats;
    }
    progress_triggers(jm, ctl).await;
    Ok(())
}

async fn progress_triggers(jm: &Arc<Jm>, ctl: &mut Control) {
    let mut i = 0;
    while i < ctl.triggers.len() {
        let t = &ctl.triggers[i];
        let rec = ctl.coord.as_ref().and_then(|c| c.record(t.checkpoint_id));
        let outcome = match rec.as_ref().map(|r| r.status) {
            Some(CheckpointStatus::Completed) => {
                let path = rec.and_then(|r| r.external_path).unwrap_or_default();
                Some(match export_savepoint(jm, &path, t).await {
                    Ok(location) => TriggerStatus::Completed { location },
                    Err(e) => TriggerStatus::Failed {
                        error: format!("{e:#}"),
                    },
                })
            }
            Some(CheckpointStatus::Failed) => Some(TriggerStatus::Failed {
                error: rec
                    .and_then(|r| r.failure_message)
                    .unwrap_or_else(|| "the savepoint failed".into()),
            }),
            Some(CheckpointStatus::InProgress) => None,
            None => Some(TriggerStatus::Failed {
                error: "the savepoint was lost".into(),
            }),
        };
        match outcome {
            Some(o) => {
                let t = ctl.triggers.remove(i);
                tracing::info!("savepoint {}: {o:?}", t.savepoint_id);
                jm.lock().triggers.insert(t.trigger, o);
            }
            None => i += 1,
        }
    }
}

/// The savepoint's final location: where the coordinator wrote it, or a copy under the
/// requested target directory (`_metadata` copied last, so a partial copy is never a
/// savepoint).
async fn export_savepoint(jm: &Arc<Jm>, path: &str, t: &PendingTrigger) -> Result<String> {
    let own = format!("{}/{}", jm.store_base.trim_end_matches('/'), path);
    let Some(target) = &t.target else {
        return Ok(own);
    };
    let target = target.trim_end_matches('/');
    let dest_uri = format!("{target}/{}", t.savepoint_id);
    if dest_uri == own {
        return Ok(own);
    }
    let (dest_base, dest_dir) = crate::storage::split_uri(&dest_uri)?;
    let dest = crate::storage::open_store(&dest_base).await?;
    let src = jm.checkpoints.blob_store();
    let from = BlobPath::new(path)?;
    let objects = src.list_all(Some(&from)).await?;
    let (meta, data): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| o.key.file_name() == METADATA_FILE);
    for o in data.iter().chain(meta.iter()) {
        let rel = o
            .key
            .relative_to(&from)
            .with_context(|| format!("{} is not under {from}", o.key))?;
        sluice_blob::copy_between(src.as_ref(), &o.key, dest.as_ref(), &dest_dir.join(rel)?)
            .await
            .with_context(|| format!("copying {} to {dest_uri}", o.key))?;
    }
    // The copy under the target is the savepoint now; a second copy under the job root
    // would be owned by no record and never disposed of.
    sluice_blob::checkpoint::dispose(src.as_ref(), &from)
        .await
        .with_context(|| format!("removing the staging copy {from} of savepoint {dest_uri}"))?;
    Ok(dest_uri)
}

/// Finds the shared checkpoint files no completed checkpoint lists (left by aborted
/// checkpoints and dead attempts) while no attempt runs, and deletes them in the
/// background. Failing to is logged, never fatal: they only cost storage.
async fn collect_orphans(jm: &Arc<Jm>) {
    let store = jm.checkpoints.clone();
    match store.orphaned_shared_files().await {
        Ok(orphans) if orphans.is_empty() => {}
        Ok(orphans) => {
            tokio::spawn(async move {
                match store.delete_all(&orphans).await {
                    Ok(()) => tracing::info!(
                        "deleted {} shared checkpoint file(s) no completed checkpoint lists",
                        orphans.len()
                    ),
                    Err(e) => tracing::warn!("deleting orphaned shared checkpoint files: {e}"),
                }
            });
        }
        Err(e) => tracing::warn!("looking for orphaned shared checkpoint files: {e}"),
    }
}

async fn deploy(jm: &Arc<Jm>, ctl: &mut Control) -> Result<()> {
    let (restore_ref, parallelism) = {
        let st = jm.lock();
        (st.restore.clone(), st.parallelism)
    };
    let graph = {
        let st = jm.lock();
        if st.graph.vertices.first().map(|v| v.parallelism) == Some(parallelism) {
            st.graph.clone()
        } else {
            Arc::new(sluice_runtime::task::JobGraph::new(
                &jm.plan,
                parallelism,
                jm.args.max_parallelism,
            )?)
        }
    };
    let snapshot = match &restore_ref {
        None => None,
        Some(r) => {
            let store = if r.store == jm.store_base {
                jm.checkpoints.blob_store().clone()
            } else {
                crate::storage::open_store(&r.store).await?
            };
            let dir = BlobPath::new(r.dir.clone())?;
            let cs = CheckpointStore::new(store, dir.clone(), jm.args.generation)?;
            let snap = RestoreSnapshot::load(&cs, &dir).await?;
            snap.check_against(&graph, jm.args.allow_non_restored_state)?;
            Some(snap)
        }
    };
    collect_orphans(jm).await;
    let mut st = jm.lock();
    // Spread subtasks over TaskManagers: one free slot of each in turn.
    let mut free: Vec<(String, usize)> = st
        .tms
        .iter()
        .map(|(id, t)| (id.clone(), t.slots.saturating_sub(st.slots_used(id))))
        .collect();
    let mut slots = Vec::with_capacity(parallelism);
    while slots.len() < parallelism {
        let mut took = false;
        for (id, n) in free.iter_mut() {
            if *n > 0 && slots.len() < parallelism {
                *n -= 1;
                slots.push(id.clone());
                took = true;
            }
        }
        if !took {
            return Ok(());
        }
    }
    slots.sort();
    let attempt = st.next_attempt;
    st.next_attempt += 1;
    let mut locations = Vec::new();
    let mut subtasks = HashMap::new();
    for v in &graph.vertices {
        let mut l = Vec::new();
        for s in 0..v.parallelism {
            l.push(st.tms[&slots[s % slots.len()]].data_addr);
            subtasks.insert((v.id, s), SubtaskStatus::Deploying);
        }
        locations.push(l);
    }
    let mut per_tm: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for v in &graph.vertices {
        for s in 0..v.parallelism {
            per_tm
                .entry(slots[s % slots.len()].clone())
                .or_default()
                .push((v.id, s));
        }
    }
    for (tm, subs) in per_tm {
        let d = rpc::Deployment {
            job_id: jm.job_id.clone(),
            attempt,
            generation: jm.args.generation,
            sql: jm.sql.clone(),
            parallelism,
            max_parallelism: jm.args.max_parallelism,
            state_backend: jm.args.state_backend.clone(),
            checkpoint_dir: jm.args.checkpoint_dir.clone(),
            exactly_once: jm.exactly_once,
            subtasks: subs,
            locations: locations.clone(),
            restore: restore_ref.clone(),
        };
        let _ = st.tms[&tm].tx.send(ToTm::Deploy(Box::new(d)));
    }
    tracing::info!(
        "deployed attempt {attempt} at parallelism {parallelism} on {:?}{}",
        slots,
        match &restore_ref {
            Some(r) => format!(" from {}/{}", r.store, r.dir),
            None => String::new(),
        }
    );
    st.deployment = Some(Deployment {
        attempt,
        slots,
        subtasks: subtasks
            .into_keys()
            .map(|k| (k, SubtaskStatus::Running))
            .collect(),
        deployed_at: Instant::now(),
        parallelism,
    });
    st.graph = graph.clone();
    st.restart_at = None;
    if let Some(r) = &restore_ref {
        st.restored_from = Some(format!("{}/{}", r.store.trim_end_matches('/'), r.dir));
    }
    st.samples.clear();
    st.metrics_attempt = Some(attempt);
    st.set_status(JobStatus::Running);
    drop(st);
    let cfg = CheckpointConfig {
        interval_ms: jm.args.checkpoint_interval_ms,
        min_pause_ms: jm.args.checkpoint_min_pause_ms,
        timeout_ms: jm.args.checkpoint_timeout_ms,
        retain_last: jm.args.checkpoints_retained,
        mode: if jm.exactly_once {
            CheckpointingMode::ExactlyOnce
        } else {
            CheckpointingMode::AtLeastOnce
        },
    };
    let mut coord = CheckpointCoordinator::new(
        cfg,
        jm.checkpoints.clone(),
        jm.job_id.clone(),
        &graph,
        Arc::new(TmCommands {
            jm: jm.clone(),
            attempt,
        }),
    );
    if let Some(s) = &snapshot {
        coord.restored_from(s);
    }
    ctl.coord = Some(coord);
    Ok(())
}
