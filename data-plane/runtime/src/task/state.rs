//! What a subtask contributes to a checkpoint ([`SubtaskState`], stored in the
//! `_metadata`'s `engine_state`), and restoring from a completed checkpoint or
//! savepoint ([`RestoreSnapshot`]).
//!
//! Keyed state files are the canonical snapshot format of `sluice-state`, one
//! per stateful operator and subtask, named `{operator uid}-{subtask}-of-{p}.state`
//! in the snapshot's directory. A restoring subtask reads the files of *all*
//! old subtasks of each of its operators and keeps its key groups, so the
//! parallelism and the backend may change across a restore.
//!
//! Incremental checkpoints (a job whose backend takes native snapshots, see
//! [`NativeSnapshots`]): an operator's state is then the backend's own files
//! ([`NativeStateRef`]): immutable ones (RocksDB SSTs) under the job root's
//! `shared/`, uploaded once and listed by every checkpoint that needs them, the
//! others under `{uid}-{subtask}-of-{p}.native/` in the checkpoint's directory,
//! and `file` holds the state table and the timers. A subtask whose key groups
//! are exactly those of one old subtask, on the same backend, opens the files
//! as its database; any other restore converts them to the canonical format
//! first (the binary provides the converter: the runtime does not link RocksDB).

use std::collections::BTreeSet;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sluice_blob::BlobPath;
use sluice_blob::checkpoint::{
    CheckpointStore, FileRef, METADATA_FILE, SnapshotMetadata, checkpoint_job_root,
};
use sluice_state::snapshot::{NATIVE_META_FILE, native_restore_source};
use sluice_state::{KeyGroupRange, ReadSeek, SnapshotSummary, key_group_range};

use super::JobGraph;
use super::upload::SharedUploads;
use crate::error::{Context, Result, RuntimeError};
use crate::metrics::MetricsRegistry;
use crate::operator::Operator;

/// Version of [`EngineState`]'s JSON shape (2 added native operator state;
/// this build reads 1 and 2).
pub const ENGINE_STATE_FORMAT: u32 = 2;

/// Concurrent downloads of one operator's native snapshot files at restore.
const NATIVE_DOWNLOADS: usize = 4;

/// Converts a native snapshot downloaded to a directory into the canonical
/// format (`sluice_state_rocksdb::native_to_canonical`).
pub type NativeConverter =
    Arc<dyn Fn(&Path, &mut dyn Write) -> sluice_state::Result<SnapshotSummary> + Send + Sync>;

/// What a job knows about native (incremental) snapshots; the binary that
/// chooses the state backend fills it in. The default (nothing) keeps every
/// checkpoint canonical and refuses to restore native state.
#[derive(Clone, Default)]
pub struct NativeSnapshots {
    /// The backend of this job's state when it takes native snapshots and opens
    /// them (`"rocksdb"`): checkpoints are then incremental.
    pub backend: Option<String>,
    /// Converts native snapshots (of any job) for restores that cannot open them:
    /// another key-group range, or another backend.
    pub converter: Option<NativeConverter>,
}

impl std::fmt::Debug for NativeSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeSnapshots")
            .field("backend", &self.backend)
            .field("converter", &self.converter.is_some())
            .finish()
    }
}

/// One subtask's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// [`super::VertexSpec::uid`] of the vertex at snapshot time.
    pub vertex: String,
    pub subtask: usize,
    pub parallelism: usize,
    pub operators: Vec<OperatorState>,
    pub source: Option<SourceState>,
    pub sink: Option<SinkState>,
    /// The subtask's input watermark at the barrier.
    pub watermark: i64,
    /// Bytes this subtask uploaded for this snapshot (less than its state's size
    /// when shared files of earlier checkpoints are reused).
    #[serde(default)]
    pub uploaded_bytes: u64,
}

/// The keyed state of one operator of one subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorState {
    pub uid: String,
    /// Relative to the snapshot's directory; canonical format, whatever the
    /// backend. With `native`: no keyed records, only the state table and timers.
    pub file: FileRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeStateRef>,
}

/// The files of an operator subtask's native snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeStateRef {
    /// The backend that wrote them (`"rocksdb"`).
    pub backend: String,
    pub files: Vec<NativeFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeFile {
    /// The file's name in the backend's snapshot directory.
    pub name: String,
    /// `file.path` is relative to the job root (under `shared/`) when shared,
    /// to the snapshot's directory otherwise.
    pub shared: bool,
    pub file: FileRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    pub uid: String,
    /// `SourceReader::position()` at the barrier.
    #[serde(with = "b64")]
    pub position: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkState {
    pub uid: String,
    /// Committables not known to be committed at the barrier, oldest first
    /// (this checkpoint's, and those of earlier checkpoints that did not complete).
    pub pending: Vec<PendingCommit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommit {
    pub checkpoint_id: u64,
    /// The generation of the cluster that took the checkpoint.
    #[serde(default)]
    pub generation: u64,
    #[serde(with = "b64")]
    pub committable: Vec<u8>,
}

impl PendingCommit {
    /// What sinks commit under: `generation << 32 | checkpoint_id`. Checkpoint ids
    /// start again above the restored checkpoint, which may be older than what was
    /// committed last (a rollback to a savepoint); every restore runs in a cluster of a
    /// higher generation, so this number only grows, and a sink's "already committed?"
    /// check compares like with like.
    pub fn sequence(&self) -> u64 {
        (self.generation << 32) | (self.checkpoint_id & 0xffff_ffff)
    }
}

/// The `engine_state` of a checkpoint's or savepoint's `_metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub format: u32,
    pub max_parallelism: u16,
    pub subtasks: Vec<SubtaskState>,
}

impl EngineState {
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self)
            .map_err(|e| RuntimeError::Task(format!("encoding the engine state: {e}")))
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let s: EngineState = serde_json::from_value(v.clone())
            .map_err(|e| RuntimeError::Task(format!("the snapshot's engine_state: {e}")))?;
        if !(1..=ENGINE_STATE_FORMAT).contains(&s.format) {
            return Err(RuntimeError::Task(format!(
                "engine state format {} is not supported (this build reads {ENGINE_STATE_FORMAT})",
                s.format
            )));
        }
        Ok(s)
    }
}

/// What [`RestoreSnapshot::restore_operator`] needs of the restoring subtask.
#[derive(Clone, Copy)]
pub(super) struct RestoreEnv<'a> {
    pub(super) native: &'a NativeSnapshots,
    pub(super) rt: &'a tokio::runtime::Handle,
    /// Learns the shared files of natively opened state.
    pub(super) uploads: &'a SharedUploads,
    pub(super) metrics: &'a MetricsRegistry,
}

/// A completed checkpoint or savepoint to start a job from.
#[derive(Debug, Clone)]
pub struct RestoreSnapshot {
    /// Reads the data files (any generation: only `read_file` is used).
    pub store: CheckpointStore,
    /// The snapshot's directory (holds `_metadata` and the files).
    pub dir: BlobPath,
    pub metadata: SnapshotMetadata,
    pub state: EngineState,
}

impl RestoreSnapshot {
    pub fn new(store: CheckpointStore, dir: BlobPath, metadata: SnapshotMetadata) -> Result<Self> {
        let state = EngineState::from_json(&metadata.engine_state)?;
        Ok(RestoreSnapshot {
            store,
            dir,
            metadata,
            state,
        })
    }

    /// The snapshot whose `_metadata` is in `dir` (a checkpoint or savepoint directory of `store`'s blob store).
    pub async fn load(store: &CheckpointStore, dir: &BlobPath) -> Result<Self> {
        let key = dir
            .join(METADATA_FILE)
            .map_err(|e| RuntimeError::Task(format!("snapshot directory {dir}: {e}")))?;
        let metadata = store
            .load(&key)
            .await
            .map_err(|e| RuntimeError::Task(format!("reading {key}: {e}")))?;
        Self::new(store.clone(), dir.clone(), metadata)
    }

    /// The newest completed checkpoint of `store`'s job (any generation).
    pub async fn latest(store: &CheckpointStore) -> Result<Option<Self>> {
        let latest = store
            .latest_completed()
            .await
            .map_err(|e| RuntimeError::Task(format!("finding the latest checkpoint: {e}")))?;
        latest
            .map(|c| Self::new(store.clone(), c.handle.dir, c.metadata))
            .transpose()
    }

    pub fn checkpoint_id(&self) -> u64 {
        self.metadata.checkpoint_id
    }

    /// Errors when `graph` cannot take this state: another max parallelism, or
    /// state of operators, sources or sinks the graph does not have (unless
    /// `allow_non_restored_state`).
    pub fn check_against(&self, graph: &JobGraph, allow_non_restored_state: bool) -> Result<()> {
        if self.state.max_parallelism != graph.max_parallelism {
            return Err(RuntimeError::Task(format!(
                "the snapshot was taken with max parallelism {}, the job has {}: key groups cannot be remapped",
                self.state.max_parallelism, graph.max_parallelism
            )));
        }
        let mut known = BTreeSet::new();
        for v in &graph.vertices {
            known.extend(v.stateful_operator_uids());
            if let Some(s) = &v.source {
                known.insert(s.uid.clone());
            }
            if let Some(s) = &v.sink {
                known.insert(s.uid.clone());
            }
        }
        let mut missing = BTreeSet::new();
        for st in &self.state.subtasks {
            for op in &st.operators {
                if !known.contains(&op.uid) {
                    missing.insert(op.uid.clone());
                }
            }
            if let Some(s) = &st.source
                && !known.contains(&s.uid)
            {
                missing.insert(s.uid.clone());
            }
            if let Some(s) = &st.sink
                && !s.pending.is_empty()
                && !known.contains(&s.uid)
            {
                missing.insert(s.uid.clone());
            }
        }
        if !missing.is_empty() && !allow_non_restored_state {
            return Err(RuntimeError::Task(format!(
                "the snapshot has state for {} that the job does not have (allow non-restored state to drop it)",
                missing.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// Files of operator `uid` from the old subtasks whose key groups overlap
    /// `range` (the restoring subtask's), and the lowest watermark of all old
    /// subtasks of the operator.
    pub fn operator_files(&self, uid: &str, range: KeyGroupRange) -> (Vec<FileRef>, i64) {
        let (states, wm) = self.operator_states(uid, range);
        (
            states.into_iter().map(|(_, op)| op.file.clone()).collect(),
            wm,
        )
    }

    /// [`operator_files`](Self::operator_files) with the old subtasks' states.
    fn operator_states(
        &self,
        uid: &str,
        range: KeyGroupRange,
    ) -> (Vec<(&SubtaskState, &OperatorState)>, i64) {
        let mut files = Vec::new();
        let mut wm: Option<i64> = None;
        let max_p = self.state.max_parallelism;
        for st in &self.state.subtasks {
            for op in &st.operators {
                if op.uid != uid {
                    continue;
                }
                wm = Some(wm.map_or(st.watermark, |w| w.min(st.watermark)));
                // An unknown layout (bad numbers) keeps the file: restoring filters by key group anyway.
                let overlaps = match u16::try_from(st.parallelism)
                    .ok()
                    .zip(u16::try_from(st.subtask).ok())
                {
                    Some((p, i)) => key_group_range(max_p, p, i)
                        .map(|old| !old.intersect(&range).is_empty())
                        .unwrap_or(true),
                    None => true,
                };
                if overlaps {
                    files.push((st, op));
                }
            }
        }
        (files, wm.unwrap_or(i64::MIN))
    }

    /// Downloads (and checks) files of this snapshot.
    pub fn read_files(
        &self,
        files: &[FileRef],
        rt: &tokio::runtime::Handle,
    ) -> Result<Vec<Cursor<bytes::Bytes>>> {
        files
            .iter()
            .map(|f| {
                rt.block_on(self.store.read_file(&self.dir, f))
                    .map(Cursor::new)
                    .map_err(|e| RuntimeError::Task(format!("reading state file {}: {e}", f.path)))
            })
            .collect()
    }

    /// Restores operator `uid` of the subtask that owns `range` from every old
    /// subtask whose key groups overlap it, and returns the lowest watermark of
    /// the operator's old subtasks. Native state is opened as it is when the
    /// key groups are exactly one old subtask's and the job's backend is the one
    /// that wrote it (its shared files are then known to `uploads`, so the next
    /// checkpoint does not upload them again); otherwise it is converted.
    pub(super) fn restore_operator(
        &self,
        uid: &str,
        range: KeyGroupRange,
        op: &mut dyn Operator,
        env: &RestoreEnv<'_>,
    ) -> Result<i64> {
        let RestoreEnv {
            native,
            rt,
            uploads,
            metrics,
        } = *env;
        let (states, wm) = self.operator_states(uid, range);
        let max_p = self.state.max_parallelism;
        let whole = |st: &SubtaskState| {
            u16::try_from(st.parallelism)
                .ok()
                .zip(u16::try_from(st.subtask).ok())
                .and_then(|(p, i)| key_group_range(max_p, p, i).ok())
                == Some(range)
        };
        // Native directories to open stay until the operator has restored.
        let mut keep = Vec::new();
        let mut sources: Vec<Box<dyn ReadSeek>> = Vec::new();
        let mut opened = None;
        for (st, state) in &states {
            let Some(n) = &state.native else {
                sources.push(Box::new(self.read_file(&self.dir, &state.file, rt)?));
                continue;
            };
            let dir = self.download_native(state, n, rt)?;
            if states.len() == 1 && whole(st) && native.backend.as_deref() == Some(&n.backend) {
                let source = native_restore_source(&n.backend, dir.path()).map_err(|e| {
                    RuntimeError::State {
                        context: format!("native state of operator {uid}"),
                        source: e,
                    }
                })?;
                sources.push(Box::new(Cursor::new(source)));
                keep.push(dir);
                opened = Some(n);
                metrics
                    .counter("sluice_state_restored_native_total", &[("operator", uid)])
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                let convert = native.converter.as_ref().ok_or_else(|| {
                    RuntimeError::Task(format!(
                        "operator {uid} has native {} state in the snapshot ({} of {} subtasks), and this job cannot convert it for key groups {range}",
                        n.backend, st.subtask, st.parallelism
                    ))
                })?;
                let mut tmp = tempfile::Builder::new()
                    .prefix("sluice-converted-")
                    .tempfile()
                    .ctx(|| format!("a file for the converted state of {uid}"))?;
                {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
                    convert(dir.path(), &mut w).map_err(|e| RuntimeError::State {
                        context: format!(
                            "converting the native {} state of operator {uid} (subtask {} of {})",
                            n.backend, st.subtask, st.parallelism
                        ),
                        source: e,
                    })?;
                    w.flush()
                        .ctx(|| format!("writing the converted state of {uid}"))?;
                }
                // The open handle keeps the (then unlinked) file readable.
                let file = tmp
                    .reopen()
                    .ctx(|| format!("reading the converted state of {uid}"))?;
                sources.push(Box::new(std::io::BufReader::new(file)));
                metrics
                    .counter(
                        "sluice_state_restored_converted_total",
                        &[("operator", uid)],
                    )
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut refs: Vec<&mut dyn ReadSeek> = sources
            .iter_mut()
            .map(|s| s.as_mut() as &mut dyn ReadSeek)
            .collect();
        op.restore(&mut refs, wm)?;
        drop(keep);
        if let Some(n) = opened {
            uploads.seed(
                uid,
                n.files
                    .iter()
                    .filter(|f| f.shared)
                    .map(|f| (f.name.clone(), f.file.clone())),
            );
        }
        Ok(wm)
    }

    fn read_file(
        &self,
        dir: &BlobPath,
        f: &FileRef,
        rt: &tokio::runtime::Handle,
    ) -> Result<Cursor<bytes::Bytes>> {
        rt.block_on(self.store.read_file(dir, f))
            .map(Cursor::new)
            .map_err(|e| RuntimeError::Task(format!("reading state file {}: {e}", f.path)))
    }

    /// Downloads an operator subtask's native snapshot (and its meta file) into
    /// a new temporary directory.
    fn download_native(
        &self,
        state: &OperatorState,
        n: &NativeStateRef,
        rt: &tokio::runtime::Handle,
    ) -> Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-native-")
            .tempdir()
            .ctx(|| format!("a directory for the native state of {}", state.uid))?;
        let root = checkpoint_job_root(&self.dir).ok_or_else(|| {
            RuntimeError::Task(format!(
                "{} lists shared files of operator {} but is not a checkpoint directory (gen-…/chk-…)",
                self.dir, state.uid
            ))
        })?;
        let meta = self.read_file(&self.dir, &state.file, rt)?.into_inner();
        std::fs::write(dir.path().join(NATIVE_META_FILE), &meta)
            .ctx(|| format!("writing the native state of {}", state.uid))?;
        let mut files = Vec::with_capacity(n.files.len());
        for f in &n.files {
            if f.name.contains('/') || f.name == NATIVE_META_FILE || f.name.starts_with('.') {
                return Err(RuntimeError::Task(format!(
                    "native state of {} lists a file named {:?}",
                    state.uid, f.name
                )));
            }
            let base = if f.shared { &root } else { &self.dir };
            files.push((base.clone(), f.file.clone(), dir.path().join(&f.name)));
        }
        // Several at once: recovery time is mostly this download when the state is large,
        // and one object store request at a time leaves the network (or disk) idle.
        rt.block_on(self.store.download_files(&files, NATIVE_DOWNLOADS))
            .map_err(|e| {
                RuntimeError::Task(format!(
                    "downloading the native state of {}: {e}",
                    state.uid
                ))
            })?;
        Ok(dir)
    }

    /// Positions of every old subtask of source `uid`, and their lowest watermark.
    pub fn source_positions(&self, uid: &str) -> (Vec<Vec<u8>>, i64) {
        let mut out = Vec::new();
        let mut wm: Option<i64> = None;
        for st in &self.state.subtasks {
            if let Some(s) = &st.source
                && s.uid == uid
            {
                out.push(s.position.clone());
                wm = Some(wm.map_or(st.watermark, |w| w.min(st.watermark)));
            }
        }
        (out, wm.unwrap_or(i64::MIN))
    }

    /// The old subtasks of sink `uid` whose committables subtask `subtask` of
    /// `parallelism` takes over (see [`Self::sink_commits`]).
    pub fn sink_origins(&self, uid: &str, subtask: usize, parallelism: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .state
            .subtasks
            .iter()
            .filter(|st| {
                st.sink.as_ref().is_some_and(|s| s.uid == uid)
                    && st.subtask % parallelism.max(1) == subtask
            })
            .map(|st| st.subtask)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Committables of sink `uid` that subtask `subtask` of `parallelism`
    /// re-commits: those of old subtasks `i` with `i % parallelism == subtask`.
    pub fn sink_commits(
        &self,
        uid: &str,
        subtask: usize,
        parallelism: usize,
    ) -> Vec<PendingCommit> {
        let mut out = Vec::new();
        for st in &self.state.subtasks {
            if let Some(s) = &st.sink
                && s.uid == uid
                && st.subtask % parallelism.max(1) == subtask
            {
                out.extend(s.pending.iter().cloned());
            }
        }
        out.sort_by_key(|c| c.checkpoint_id);
        out
    }
}

/// Bytes as base64 strings in JSON (positions and committables are binary).
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
