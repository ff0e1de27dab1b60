//! The asynchronous half of a subtask's checkpoint: write each operator's
//! snapshot file (in memory, or spilled to a temporary file when large), upload
//! it into the checkpoint's or savepoint's directory, then acknowledge with the
//! subtask's state — or decline with the error.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use sluice_state::PendingSnapshot;

use super::state::{OperatorState, SubtaskState};
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
        let store = &self.storage.store;
        let dir = match &self.barrier.savepoint {
            Some(name) => store.savepoint_dir(name),
            None => store.checkpoint_dir(self.barrier.checkpoint_id),
        }
        .map_err(|e| RuntimeError::Task(format!("snapshot directory: {e}")))?;
        for (uid, snap) in snaps {
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
            self.state.operators.push(OperatorState { uid, file });
        }
        Ok(())
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
