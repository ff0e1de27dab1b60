//! The asynchronous half of a subtask's checkpoint: write each operator's
//! snapshot file (in memory, or spilled to a temporary file when large), upload
//! it into the checkpoint's or savepoint's directory, then acknowledge with the
//! subtask's state — or decline with the error.
//!
//! Incremental checkpoints: when the job's backend takes native snapshots, a
//! checkpoint (never a savepoint) uploads the backend's files instead; the
//! immutable ones go to the job root's `shared/` once per subtask attempt
//! ([`SharedUploads`]) and later checkpoints list them again without uploading.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sluice_blob::BlobPath;
use sluice_blob::checkpoint::{FileRef, SHARED_DIR};
use sluice_state::PendingSnapshot;
use sluice_state::snapshot::NativeFiles;

use super::state::{NativeFile, NativeStateRef, OperatorState, SubtaskState};
use super::{EventSink, SnapshotStorage, SubtaskEvent, SubtaskId};
use crate::error::{Context, Result, RuntimeError};
use crate::failpoint;
use crate::message::Barrier;

/// The asynchronous half of a subtask's checkpoint.
pub(super) struct Upload {
    pub(super) storage: SnapshotStorage,
    pub(super) events: Arc<dyn EventSink>,
    pub(super) id: SubtaskId,
    pub(super) barrier: Barrier,
    pub(super) state: SubtaskState,
    pub(super) snaps: Vec<(String, Box<dyn PendingSnapshot>)>,
    /// The job's backend when checkpoints are incremental (see `NativeSnapshots`).
    pub(super) native_backend: Option<String>,
    pub(super) shared: SharedUploads,
}

/// The shared files one subtask attempt has uploaded (or restored from), by
/// operator uid and file name in the backend's snapshot directory. A name is
/// reused only while the same database lives, and its content never changes
/// under it (RocksDB SST numbers), so one upload serves every later checkpoint
/// of this attempt. The attempt's random `nonce` in every key keeps attempts
/// (restarts, restores, zombies of an earlier attempt) from colliding on the
/// numbers a fresh database starts again from.
#[derive(Clone, Default)]
pub(crate) struct SharedUploads {
    inner: Arc<Mutex<SharedInner>>,
}

#[derive(Default)]
struct SharedInner {
    nonce: Option<String>,
    files: HashMap<(String, String), FileRef>,
}

impl SharedUploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nonce(&self) -> String {
        self.lock().nonce.get_or_insert_with(new_nonce).clone()
    }

    fn get(&self, uid: &str, name: &str) -> Option<FileRef> {
        self.lock()
            .files
            .get(&(uid.to_string(), name.to_string()))
            .cloned()
    }

    fn insert(&self, uid: &str, name: &str, file: FileRef) {
        self.lock()
            .files
            .insert((uid.to_string(), name.to_string()), file);
    }

    /// After opening a native snapshot as the database: its shared files are uploaded already.
    pub(crate) fn seed(&self, uid: &str, files: impl Iterator<Item = (String, FileRef)>) {
        let mut inner = self.lock();
        for (name, file) in files {
            inner.files.insert((uid.to_string(), name), file);
        }
    }
}

/// 64 random-enough bits in hex: the clock, the process and a per-process counter, hashed.
fn new_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

impl Upload {
    pub(super) fn run(mut self) {
        let checkpoint_id = self.barrier.checkpoint_id;
        let snaps = std::mem::take(&mut self.snaps);
        let event = match self.upload(snaps) {
            Ok(()) => {
                failpoint::hit("after_upload");
                SubtaskEvent::Acknowledge {
                    checkpoint_id,
                    state: self.state,
                }
            }
            Err(e) => SubtaskEvent::Decline {
                checkpoint_id,
                reason: format!("subtask {}: {e}", self.id),
            },
        };
        self.events.send(self.id, event);
    }

    fn upload(&mut self, snaps: Vec<(String, Box<dyn PendingSnapshot>)>) -> Result<()> {
        let dir = match &self.barrier.savepoint {
            Some(name) => self.storage.store.savepoint_dir(name),
            None => self
                .storage
                .store
                .checkpoint_dir(self.barrier.checkpoint_id),
        }
        .map_err(|e| RuntimeError::Task(format!("snapshot directory: {e}")))?;
        let store = self.storage.store.clone();
        let incremental = self.barrier.savepoint.is_none() && self.native_backend.is_some();
        for (uid, mut snap) in snaps {
            if incremental
                && let Some(files) = snap
                    .native_files()
                    .ctx(|| format!("the native snapshot of operator {uid}"))?
                && self.native_backend.as_deref() == Some(files.backend)
            {
                let op = self.upload_native(&dir, &uid, files)?;
                self.state.operators.push(op);
                // Dropping the snapshot removes its native checkpoint directory.
                drop(snap);
                continue;
            }
            let mut buf = Spill::new(SPILL_BYTES);
            snap.write_to(&mut buf)
                .ctx(|| format!("writing the state of operator {uid}"))?;
            let name = format!(
                "{uid}-{}-of-{}.state",
                self.state.subtask, self.state.parallelism
            );
            let rt = &self.storage.runtime;
            let uploaded = match buf
                .finish()
                .ctx(|| format!("spilling the state of {uid}"))?
            {
                Spilled::Memory(bytes) => rt.block_on(store.write_file(&dir, &name, bytes)),
                Spilled::File(tmp) => rt.block_on(store.write_local_file(&dir, &name, tmp.path())),
            };
            let file =
                uploaded.map_err(|e| RuntimeError::Task(format!("uploading {name}: {e}")))?;
            self.state.uploaded_bytes += file.size_bytes;
            self.state.operators.push(OperatorState {
                uid,
                file,
                native: None,
            });
        }
        Ok(())
    }

    /// Uploads an operator's native snapshot: shared files this attempt has not
    /// uploaded yet, every other file, and the meta file (state table, timers).
    fn upload_native(
        &mut self,
        dir: &BlobPath,
        uid: &str,
        native: NativeFiles,
    ) -> Result<OperatorState> {
        let store = &self.storage.store;
        let rt = &self.storage.runtime;
        let (subtask, p) = (self.state.subtask, self.state.parallelism);
        let stem = format!("{uid}-{subtask}-of-{p}");
        let prefix = format!(
            "{SHARED_DIR}/{uid}/{subtask}-of-{p}/g{}-{}",
            store.generation(),
            self.shared.nonce()
        );
        let mut files = Vec::with_capacity(native.immutable.len() + native.mutable.len());
        for name in native.immutable {
            let file = match self.shared.get(uid, &name) {
                Some(f) => f,
                None => {
                    let key = format!("{prefix}-{name}");
                    let f = rt
                        .block_on(store.write_local_file(
                            store.root(),
                            &key,
                            &native.dir.join(&name),
                        ))
                        .map_err(|e| RuntimeError::Task(format!("uploading {key}: {e}")))?;
                    self.state.uploaded_bytes += f.size_bytes;
                    self.shared.insert(uid, &name, f.clone());
                    f
                }
            };
            files.push(NativeFile {
                name,
                shared: true,
                file,
            });
        }
        for name in native.mutable {
            let key = format!("{stem}.native/{name}");
            let file = rt
                .block_on(store.write_local_file(dir, &key, &native.dir.join(&name)))
                .map_err(|e| RuntimeError::Task(format!("uploading {key}: {e}")))?;
            self.state.uploaded_bytes += file.size_bytes;
            files.push(NativeFile {
                name,
                shared: false,
                file,
            });
        }
        let name = format!("{stem}.state");
        let file = rt
            .block_on(store.write_file(dir, &name, Bytes::from(native.meta)))
            .map_err(|e| RuntimeError::Task(format!("uploading {name}: {e}")))?;
        self.state.uploaded_bytes += file.size_bytes;
        Ok(OperatorState {
            uid: uid.to_string(),
            file,
            native: Some(NativeStateRef {
                backend: native.backend.to_string(),
                files,
            }),
        })
    }
}

/// Snapshot files up to this size are uploaded from memory; larger ones
/// (RocksDB state) go through a temporary file and a streamed upload.
const SPILL_BYTES: usize = 64 << 20;

/// A snapshot file being written: in memory up to a limit, then on disk.
struct Spill {
    limit: usize,
    mem: Vec<u8>,
    file: Option<(tempfile::NamedTempFile, std::io::BufWriter<std::fs::File>)>,
}

enum Spilled {
    Memory(Bytes),
    File(tempfile::NamedTempFile),
}

impl Spill {
    fn new(limit: usize) -> Self {
        Spill {
            limit,
            mem: Vec::new(),
            file: None,
        }
    }

    fn finish(self) -> std::io::Result<Spilled> {
        match self.file {
            None => Ok(Spilled::Memory(Bytes::from(self.mem))),
            Some((tmp, mut w)) => {
                w.flush()?;
                w.get_ref().sync_data()?;
                Ok(Spilled::File(tmp))
            }
        }
    }
}

impl Write for Spill {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some((_, w)) = &mut self.file {
            return w.write(b);
        }
        if self.mem.len() + b.len() > self.limit {
            let tmp = tempfile::Builder::new()
                .prefix("sluice-snapshot-")
                .tempfile()?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.reopen()?);
            w.write_all(&self.mem)?;
            self.mem = Vec::new();
            w.write_all(b)?;
            self.file = Some((tmp, w));
            return Ok(b.len());
        }
        self.mem.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some((_, w)) => w.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_snapshots_spill_to_a_file_with_the_same_bytes() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for limit in [1 << 20, 1000] {
            let mut s = Spill::new(limit);
            for chunk in data.chunks(777) {
                s.write_all(chunk).expect("write");
            }
            let got = match s.finish().expect("finish") {
                Spilled::Memory(b) => {
                    assert!(limit > data.len(), "kept in memory under the limit only");
                    b.to_vec()
                }
                Spilled::File(f) => {
                    assert!(limit < data.len(), "spilled above the limit only");
                    std::fs::read(f.path()).expect("read spill file")
                }
            };
            assert_eq!(got, data);
        }
    }
}
