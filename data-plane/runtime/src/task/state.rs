//! What a subtask contributes to a checkpoint ([`SubtaskState`], stored in the
//! `_metadata`'s `engine_state`), and restoring from a completed checkpoint or
//! savepoint ([`RestoreSnapshot`]).
//!
//! Keyed state files are the canonical snapshot format of `sluice-state`, one
//! per stateful operator and subtask, named `{operator uid}-{subtask}-of-{p}.state`
//! in the snapshot's directory. A restoring subtask reads the files of *all*
//! old subtasks of each of its operators and keeps its key groups, so the
//! parallelism and the backend may change across a restore.

use std::collections::BTreeSet;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sluice_blob::BlobPath;
use sluice_blob::checkpoint::{CheckpointStore, FileRef, METADATA_FILE, SnapshotMetadata};
use sluice_state::{KeyGroupRange, key_group_range};

use super::JobGraph;
use crate::error::{Result, RuntimeError};

/// Version of [`EngineState`]'s JSON shape.
pub const ENGINE_STATE_FORMAT: u32 = 1;

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
}

/// The keyed state file of one operator of one subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorState {
    pub uid: String,
    /// Relative to the snapshot's directory; canonical format, whatever the backend.
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
    #[serde(with = "b64")]
    pub committable: Vec<u8>,
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
        if s.format != ENGINE_STATE_FORMAT {
            return Err(RuntimeError::Task(format!(
                "engine state format {} is not supported (this build reads {ENGINE_STATE_FORMAT})",
                s.format
            )));
        }
        Ok(s)
    }
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
                    files.push(op.file.clone());
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
