//! The checkpoint coordinator (DESIGN.md §5 "Checkpoints", "Savepoints"): one
//! per job, in the one-process executor and in the cluster's JobManager.
//!
//! It triggers a checkpoint every `interval_ms` (never sooner than
//! `min_pause_ms` after the previous one ended, one at a time), collects an
//! acknowledgement with a [`SubtaskState`] from every subtask, writes the
//! `_metadata` last through [`CheckpointStore::commit`] (create-if-absent,
//! generation-fenced), then tells every subtask that the checkpoint is
//! complete (sinks commit) and applies retention. A checkpoint that is
//! declined, times out (`timeout_ms`), or loses a subtask is aborted.
//! Savepoints go the same way into `savepoints/{id}/` (self-contained, via
//! [`CheckpointStore::commit_savepoint`]); stop-with-savepoint ends the job
//! after the savepoint (see [`SubtaskCommand::Stop`]).
//!
//! Transport-independent: commands leave through a [`CommandSink`], events come
//! in through [`CheckpointCoordinator::handle_event`]; the owner calls
//! [`CheckpointCoordinator::tick`] every few tens of milliseconds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluice_blob::checkpoint::{
    CheckpointError, CheckpointStore, FileRef, SnapshotKind, SnapshotMetadata,
};

use crate::error::{Result, RuntimeError};
use crate::failpoint;
use crate::message::Barrier;
use crate::task::{
    CheckpointingMode, ENGINE_STATE_FORMAT, EngineState, JobGraph, RestoreSnapshot, SubtaskCommand,
    SubtaskEvent, SubtaskId, SubtaskState,
};

/// Where the coordinator's commands go (in-memory channels, or TaskManagers).
pub trait CommandSink: Send + Sync {
    fn send(&self, to: SubtaskId, command: SubtaskCommand) -> Result<()>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// 0: no periodic checkpoints (savepoints still work).
    pub interval_ms: u64,
    pub min_pause_ms: u64,
    pub timeout_ms: u64,
    /// Completed checkpoints kept (older ones are deleted after each completion).
    pub retain_last: usize,
    pub mode: CheckpointingMode,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 0,
            min_pause_ms: 0,
            timeout_ms: 600_000,
            retain_last: 3,
            mode: CheckpointingMode::ExactlyOnce,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    InProgress,
    Completed,
    Failed,
}

/// One checkpoint or savepoint, for REST (`/jobs/{id}/checkpoints`, savepoint status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub id: u64,
    /// The savepoint id, for a savepoint.
    pub savepoint: Option<String>,
    pub stop: bool,
    pub status: CheckpointStatus,
    pub trigger_timestamp_ms: u64,
    pub latest_ack_timestamp_ms: Option<u64>,
    pub end_timestamp_ms: Option<u64>,
    pub end_to_end_duration_ms: Option<u64>,
    /// Bytes of every file the snapshot lists (shared ones included).
    pub state_size_bytes: u64,
    /// Bytes uploaded for this snapshot (Flink's `checkpointed_size`): less than
    /// `state_size_bytes` for an incremental checkpoint.
    #[serde(default)]
    pub checkpointed_size_bytes: u64,
    pub num_acknowledged_subtasks: usize,
    pub num_subtasks: usize,
    /// The snapshot's directory (relative to the blob store's root), once completed.
    pub external_path: Option<String>,
    pub failure_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredInfo {
    pub id: u64,
    pub external_path: String,
    pub is_savepoint: bool,
    pub restore_timestamp_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    pub triggered: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
    pub restored: u64,
}

/// What `GET /jobs/{id}/checkpoints` shows (Flink's shape, in our names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub counts: CheckpointCounts,
    pub latest_completed: Option<CheckpointRecord>,
    pub latest_savepoint: Option<CheckpointRecord>,
    pub latest_failed: Option<CheckpointRecord>,
    pub restored: Option<RestoredInfo>,
    /// Newest first, at most [`HISTORY`] entries.
    pub history: Vec<CheckpointRecord>,
    /// Why the last retention pass failed, until one succeeds.
    pub retention_error: Option<String>,
}

/// Records kept in [`CheckpointStats::history`].
pub const HISTORY: usize = 20;

struct Pending {
    record: CheckpointRecord,
    started: Instant,
    drain: bool,
    acks: BTreeMap<SubtaskId, SubtaskState>,
}

struct Request {
    id: u64,
    savepoint: String,
    stop: Option<bool>,
}

pub struct CheckpointCoordinator {
    cfg: CheckpointConfig,
    store: CheckpointStore,
    job_id: String,
    max_parallelism: u16,
    subtasks: Vec<SubtaskId>,
    sources: Vec<SubtaskId>,
    commands: Arc<dyn CommandSink>,
    next_id: u64,
    pending: Option<Pending>,
    requests: VecDeque<Request>,
    finished: BTreeSet<SubtaskId>,
    last_end: Option<Instant>,
    started: Instant,
    stopping: bool,
    stats: CheckpointStats,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CheckpointCoordinator {
    /// `store` must be claimed (`CheckpointStore::claim`) by the caller before
    /// it chose the snapshot to restore from.
    pub fn new(
        cfg: CheckpointConfig,
        store: CheckpointStore,
        job_id: String,
        graph: &JobGraph,
        commands: Arc<dyn CommandSink>,
    ) -> Self {
        CheckpointCoordinator {
            cfg,
            store,
            job_id,
            max_parallelism: graph.max_parallelism,
            subtasks: graph.subtasks(),
            sources: graph.source_subtasks(),
            commands,
            next_id: 1,
            pending: None,
            requests: VecDeque::new(),
            finished: BTreeSet::new(),
            last_end: None,
            started: Instant::now(),
            stopping: false,
            stats: CheckpointStats::default(),
        }
    }

    /// The job starts from `snapshot`: ids continue after it, stats show it.
    pub fn restored_from(&mut self, snapshot: &RestoreSnapshot) {
        self.next_id = self.next_id.max(snapshot.checkpoint_id() + 1);
        self.stats.counts.restored += 1;
        self.stats.restored = Some(RestoredInfo {
            id: snapshot.checkpoint_id(),
            external_path: snapshot.dir.to_string(),
            is_savepoint: snapshot.metadata.kind == SnapshotKind::Savepoint,
            restore_timestamp_ms: now_ms(),
        });
    }

    pub fn config(&self) -> &CheckpointConfig {
        &self.cfg
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// The record of checkpoint or savepoint `id` (in progress or in the history).
    pub fn record(&self, id: u64) -> Option<CheckpointRecord> {
        if let Some(p) = &self.pending
            && p.record.id == id
        {
            return Some(p.record.clone());
        }
        if self.requests.iter().any(|r| r.id == id) {
            return self
                .requests
                .iter()
                .find(|r| r.id == id)
                .map(|r| CheckpointRecord {
                    id,
                    savepoint: Some(r.savepoint.clone()),
                    stop: r.stop.is_some(),
                    status: CheckpointStatus::InProgress,
                    trigger_timestamp_ms: 0,
                    latest_ack_timestamp_ms: None,
                    end_timestamp_ms: None,
                    end_to_end_duration_ms: None,
                    state_size_bytes: 0,
                    checkpointed_size_bytes: 0,
                    num_acknowledged_subtasks: 0,
                    num_subtasks: self.subtasks.len(),
                    external_path: None,
                    failure_message: None,
                });
        }
        self.stats.history.iter().find(|r| r.id == id).cloned()
    }

    /// The checkpoint in progress, if any.
    pub fn in_progress(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.record.id)
    }

    /// Queues a savepoint into `savepoints/{savepoint_id}/`; returns its checkpoint id
    /// (poll [`record`](Self::record) for the outcome).
    pub fn trigger_savepoint(&mut self, savepoint_id: String) -> Result<u64> {
        self.request(savepoint_id, None)
    }

    /// Queues a stop-with-savepoint: after the savepoint completes the job ends
    /// (`drain`: with the max watermark first, so every timer fires).
    pub fn stop_with_savepoint(&mut self, savepoint_id: String, drain: bool) -> Result<u64> {
        self.request(savepoint_id, Some(drain))
    }

    fn request(&mut self, savepoint_id: String, stop: Option<bool>) -> Result<u64> {
        if self.stopping {
            return Err(RuntimeError::Task("the job is stopping".into()));
        }
        if !self.finished.is_empty() {
            return Err(RuntimeError::Task(
                "some subtasks have finished: no savepoint can be taken".into(),
            ));
        }
        // Refuse an id that is not one path segment now, not when the files are uploaded.
        self.store
            .savepoint_dir(&savepoint_id)
            .map_err(|e| RuntimeError::Task(format!("savepoint {savepoint_id}: {e}")))?;
        let id = self.next_id;
        self.next_id += 1;
        if stop.is_some() {
            self.stopping = true;
        }
        self.requests.push_back(Request {
            id,
            savepoint: savepoint_id,
            stop,
        });
        Ok(id)
    }

    /// Times out the checkpoint in progress and starts the next one when due.
    /// Errors only when this coordinator is fenced (a newer generation exists).
    pub async fn tick(&mut self) -> Result<()> {
        if let Some(p) = &self.pending
            && p.started.elapsed() >= Duration::from_millis(self.cfg.timeout_ms)
        {
            let id = p.record.id;
            self.abort(id, format!("timed out after {} ms", self.cfg.timeout_ms));
        }
        if self.pending.is_some() || !self.finished.is_empty() {
            return Ok(());
        }
        if let Some(r) = self.requests.pop_front() {
            self.start(r.id, Some(r.savepoint), r.stop);
            return Ok(());
        }
        if self.cfg.interval_ms == 0 || self.stopping {
            return Ok(());
        }
        let since = self.last_end.unwrap_or(self.started);
        let wait = Duration::from_millis(self.cfg.interval_ms.max(self.cfg.min_pause_ms));
        if since.elapsed() >= wait {
            let id = self.next_id;
            self.next_id += 1;
            self.start(id, None, None);
        }
        Ok(())
    }

    fn start(&mut self, id: u64, savepoint: Option<String>, stop: Option<bool>) {
        let record = CheckpointRecord {
            id,
            savepoint: savepoint.clone(),
            stop: stop.is_some(),
            status: CheckpointStatus::InProgress,
            trigger_timestamp_ms: now_ms(),
            latest_ack_timestamp_ms: None,
            end_timestamp_ms: None,
            end_to_end_duration_ms: None,
            state_size_bytes: 0,
            checkpointed_size_bytes: 0,
            num_acknowledged_subtasks: 0,
            num_subtasks: self.subtasks.len(),
            external_path: None,
            failure_message: None,
        };
        self.stats.counts.triggered += 1;
        self.stats.counts.in_progress += 1;
        self.pending = Some(Pending {
            record,
            started: Instant::now(),
            drain: stop.unwrap_or(false),
            acks: BTreeMap::new(),
        });
        let barrier = Barrier {
            checkpoint_id: id,
            savepoint,
        };
        let mut failed = None;
        for s in &self.sources {
            let cmd = match stop {
                Some(drain) => SubtaskCommand::Stop {
                    drain,
                    barrier: barrier.clone(),
                },
                None => SubtaskCommand::TriggerCheckpoint(barrier.clone()),
            };
            if let Err(e) = self.commands.send(*s, cmd) {
                failed = Some(format!("triggering at {s}: {e}"));
                break;
            }
        }
        if let Some(reason) = failed {
            self.abort(id, reason);
        }
    }

    /// Feeds an event of a subtask. Errors only when this coordinator is
    /// fenced or the metadata cannot be encoded: the job must then stop.
    pub async fn handle_event(&mut self, from: SubtaskId, event: &SubtaskEvent) -> Result<()> {
        match event {
            SubtaskEvent::Acknowledge {
                checkpoint_id,
                state,
            } => {
                let Some(p) = self.pending.as_mut() else {
                    return Ok(());
                };
                if p.record.id != *checkpoint_id {
                    return Ok(());
                }
                p.acks.insert(from, state.clone());
                p.record.num_acknowledged_subtasks = p.acks.len();
                p.record.latest_ack_timestamp_ms = Some(now_ms());
                if p.acks.len() == self.subtasks.len() {
                    self.complete().await?;
                }
            }
            SubtaskEvent::Decline {
                checkpoint_id,
                reason,
            } => {
                if self.in_progress() == Some(*checkpoint_id) {
                    self.abort(*checkpoint_id, format!("declined by {from}: {reason}"));
                }
            }
            SubtaskEvent::Finished => {
                self.finished.insert(from);
                if let Some(p) = &self.pending
                    && !p.acks.contains_key(&from)
                {
                    let id = p.record.id;
                    self.abort(id, format!("subtask {from} finished before its snapshot"));
                }
            }
            SubtaskEvent::Failed { error } => {
                self.finished.insert(from);
                if let Some(id) = self.in_progress() {
                    self.abort(id, format!("subtask {from} failed: {error}"));
                }
            }
        }
        Ok(())
    }

    fn abort(&mut self, id: u64, reason: String) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        if p.record.id != id {
            self.pending = Some(p);
            return;
        }
        for s in &self.subtasks {
            if !self.finished.contains(s) {
                // A subtask that cannot be told anymore is gone: nothing to release there.
                let _ = self
                    .commands
                    .send(*s, SubtaskCommand::AbortCheckpoint { checkpoint_id: id });
            }
        }
        if p.record.stop {
            // The job keeps running: sources resume (or, drained, end on their own).
            self.stopping = false;
        }
        p.record.status = CheckpointStatus::Failed;
        p.record.failure_message = Some(reason);
        p.record.end_timestamp_ms = Some(now_ms());
        p.record.end_to_end_duration_ms = Some(p.started.elapsed().as_millis() as u64);
        self.stats.counts.in_progress = self.stats.counts.in_progress.saturating_sub(1);
        self.stats.counts.failed += 1;
        self.stats.latest_failed = Some(p.record.clone());
        self.push_history(p.record);
        self.last_end = Some(Instant::now());
    }

    async fn complete(&mut self) -> Result<()> {
        let Some(mut p) = self.pending.take() else {
            return Ok(());
        };
        let id = p.record.id;
        let subtasks: Vec<SubtaskState> = p.acks.values().cloned().collect();
        // Every file the snapshot needs is listed, so the metadata alone says what
        // retention may delete and what a restore reads.
        let mut files: Vec<FileRef> = Vec::new();
        let mut shared: BTreeMap<String, FileRef> = BTreeMap::new();
        for o in subtasks.iter().flat_map(|s| &s.operators) {
            files.push(o.file.clone());
            for f in o.native.iter().flat_map(|n| &n.files) {
                if f.shared {
                    shared.insert(f.file.path.clone(), f.file.clone());
                } else {
                    files.push(f.file.clone());
                }
            }
        }
        let uploaded: u64 = subtasks.iter().map(|s| s.uploaded_bytes).sum();
        let engine_state = EngineState {
            format: ENGINE_STATE_FORMAT,
            max_parallelism: self.max_parallelism,
            subtasks,
        }
        .to_json()?;
        let metadata = SnapshotMetadata {
            job_id: self.job_id.clone(),
            generation: self.store.generation(),
            checkpoint_id: id,
            kind: if p.record.savepoint.is_some() {
                SnapshotKind::Savepoint
            } else {
                SnapshotKind::Checkpoint
            },
            created_at_ms: now_ms(),
            files,
            shared_files: shared.into_values().collect(),
            engine_state,
        };
        let committed = match &p.record.savepoint {
            Some(name) => self
                .store
                .commit_savepoint(name, &metadata)
                .await
                .map(|key| key.as_str().trim_end_matches("/_metadata").to_string()),
            None => self
                .store
                .commit(&metadata)
                .await
                .map(|c| c.handle.dir.to_string()),
        };
        let path = match committed {
            Ok(path) => path,
            Err(e @ CheckpointError::Fenced { .. }) => {
                self.pending = Some(p);
                self.abort(id, e.to_string());
                return Err(RuntimeError::Task(format!(
                    "checkpoint {id} cannot be committed: {e}"
                )));
            }
            Err(e) => {
                self.pending = Some(p);
                self.abort(id, format!("writing the metadata: {e}"));
                return Ok(());
            }
        };
        failpoint::hit("after_checkpoint_complete");
        for s in &self.subtasks {
            if !self.finished.contains(s) {
                let _ = self
                    .commands
                    .send(*s, SubtaskCommand::CheckpointComplete { checkpoint_id: id });
            }
        }
        p.record.status = CheckpointStatus::Completed;
        p.record.state_size_bytes = metadata.size_bytes();
        p.record.checkpointed_size_bytes = uploaded;
        p.record.external_path = Some(path);
        p.record.end_timestamp_ms = Some(now_ms());
        p.record.end_to_end_duration_ms = Some(p.started.elapsed().as_millis() as u64);
        self.stats.counts.in_progress = self.stats.counts.in_progress.saturating_sub(1);
        self.stats.counts.completed += 1;
        if p.record.savepoint.is_some() {
            self.stats.latest_savepoint = Some(p.record.clone());
        } else {
            self.stats.latest_completed = Some(p.record.clone());
        }
        if p.record.stop && !p.drain {
            // Downstream first: a subtask that sees its input close has its Cancel already.
            for s in self.subtasks.iter().rev() {
                if !self.finished.contains(s) {
                    let _ = self.commands.send(*s, SubtaskCommand::Cancel);
                }
            }
        }
        let is_checkpoint = p.record.savepoint.is_none();
        self.push_history(p.record);
        self.last_end = Some(Instant::now());
        if is_checkpoint && self.cfg.retain_last > 0 {
            match self.store.retain_last(self.cfg.retain_last).await {
                Ok(_) => self.stats.retention_error = None,
                Err(e @ CheckpointError::Fenced { .. }) => {
                    return Err(RuntimeError::Task(format!("retention: {e}")));
                }
                // Retention runs again after the next checkpoint (leftovers cost only
                // storage): report it, do not fail the job.
                Err(e) => self.stats.retention_error = Some(e.to_string()),
            }
        }
        Ok(())
    }

    fn push_history(&mut self, r: CheckpointRecord) {
        self.stats.history.insert(0, r);
        self.stats.history.truncate(HISTORY);
    }
}
