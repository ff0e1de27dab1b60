//! The asynchronous half of a RocksDB snapshot: read a native checkpoint and write the canonical file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use rocksdb::{Cache, ColumnFamilyDescriptor, DB};
use sluice_state::snapshot::{PendingSnapshot, SectionWriter, SnapshotFileWriter, SnapshotSummary};
use sluice_state::timers::TimerQueue;
use sluice_state::{KeyGroupRange, Result, StateError, StateKind, key_group_of};

use crate::backend::{StateMeta, rocks_err};
use crate::keys;
use crate::options::{self, RocksDbConfig};

/// A native checkpoint directory that is removed once the snapshot is written, or when it is dropped.
pub(crate) struct CheckpointDir {
    path: Option<PathBuf>,
}

impl CheckpointDir {
    pub fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    fn remove(&mut self) -> Result<()> {
        if let Some(path) = self.path.take() {
            std::fs::remove_dir_all(&path).map_err(|source| StateError::Io {
                context: "removing a written rocksdb checkpoint",
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for CheckpointDir {
    fn drop(&mut self) {
        // Only reached for a snapshot abandoned before `write_to` finished (a cancelled checkpoint);
        // there is no caller to report to, and the directory lives inside the backend's own directory,
        // which goes away with the subtask anyway.
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

pub(crate) struct PendingRocksSnapshot {
    checkpoint: CheckpointDir,
    config: RocksDbConfig,
    max_parallelism: u16,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    /// Timers live on the heap: they are encoded at snapshot time, by key group.
    timer_sections: BTreeMap<u16, SectionWriter>,
}

impl PendingRocksSnapshot {
    pub fn new(
        checkpoint: CheckpointDir,
        config: RocksDbConfig,
        max_parallelism: u16,
        range: KeyGroupRange,
        states: Vec<StateMeta>,
        timers: &TimerQueue,
    ) -> Result<Self> {
        let mut timer_sections: BTreeMap<u16, SectionWriter> = BTreeMap::new();
        timers.for_each(&mut |domain, time, key, namespace| {
            timer_sections
                .entry(key_group_of(key, max_parallelism))
                .or_default()
                .timer(domain, time, key, namespace);
            Ok(())
        })?;
        Ok(Self {
            checkpoint,
            config,
            max_parallelism,
            range,
            states,
            timer_sections,
        })
    }
}

impl PendingSnapshot for PendingRocksSnapshot {
    fn write_to(mut self: Box<Self>, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let path = self
            .checkpoint
            .path
            .clone()
            .ok_or_else(|| StateError::InvalidArgument("snapshot already written".into()))?;
        let summary = {
            // A small cache of its own: the view is read once, sequentially.
            let cache = Cache::new_lru_cache(8 << 20)
                .map_err(rocks_err("all states", "create snapshot block cache"))?;
            let descriptors = self.states.iter().map(|s| {
                ColumnFamilyDescriptor::new(
                    &s.column_family,
                    options::for_state(&self.config, &cache, s.kind),
                )
            });
            let db = DB::open_cf_descriptors_read_only(
                &options::base(&self.config, &cache),
                &path,
                descriptors,
                false,
            )
            .map_err(rocks_err(
                "all states",
                "open checkpoint for the snapshot writer",
            ))?;
            let names: Vec<(String, StateKind)> = self
                .states
                .iter()
                .map(|s| (s.name.clone(), s.kind))
                .collect();
            let mut writer =
                SnapshotFileWriter::new(out, self.max_parallelism, self.range, &names)?;
            let mut iterators = Vec::with_capacity(self.states.len());
            for meta in &self.states {
                let cf = db
                    .cf_handle(&meta.column_family)
                    .ok_or_else(|| StateError::Backend {
                        backend: "rocksdb",
                        state: meta.name.clone(),
                        operation: "open checkpoint column family",
                        source: format!("column family {} missing", meta.column_family).into(),
                    })?;
                iterators.push(db.raw_iterator_cf(cf));
            }
            for key_group in self.range.iter() {
                let mut section = self.timer_sections.remove(&key_group).unwrap_or_default();
                let prefix = key_group.to_be_bytes();
                for (index, (meta, it)) in self.states.iter().zip(iterators.iter_mut()).enumerate()
                {
                    let index = index as u32;
                    it.seek(prefix);
                    while let (Some(stored), Some(value)) = (it.key(), it.value()) {
                        if !stored.starts_with(&prefix) {
                            break;
                        }
                        let parts = keys::split(stored, &meta.name)?;
                        match meta.kind {
                            StateKind::Value => {
                                section.value(index, parts.key, parts.namespace, value)
                            }
                            StateKind::Map => section.map_entry(
                                index,
                                parts.key,
                                parts.namespace,
                                parts.rest,
                                value,
                            ),
                            StateKind::List => {
                                section.list(index, parts.key, parts.namespace, value)
                            }
                        }
                        it.next();
                    }
                    it.status()
                        .map_err(rocks_err(&meta.name, "read checkpoint for the snapshot"))?;
                }
                writer.write_section(key_group, &section)?;
            }
            drop(iterators);
            drop(db);
            writer.finish()?
        };
        self.checkpoint.remove()?;
        Ok(summary)
    }
}
