//! The asynchronous half of a RocksDB snapshot: read a native checkpoint and write the canonical file,
//! or hand the checkpoint's own files to an incremental checkpoint; and the conversion of such native
//! files back to the canonical format.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rocksdb::{Cache, ColumnFamilyDescriptor, DB};
use sluice_state::snapshot::{
    NATIVE_META_FILE, NativeFiles, PendingSnapshot, RawRecord, SectionWriter, SnapshotFileWriter,
    SnapshotReader, SnapshotSummary, decode_section,
};
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
        let timers = std::mem::take(&mut self.timer_sections);
        let summary = write_canonical(
            &path,
            &self.config,
            self.max_parallelism,
            self.range,
            &self.states,
            timers,
            out,
        )?;
        self.checkpoint.remove()?;
        Ok(summary)
    }

    fn native_files(&mut self) -> Result<Option<NativeFiles>> {
        let dir = self
            .checkpoint
            .path
            .clone()
            .ok_or_else(|| StateError::InvalidArgument("snapshot already written".into()))?;
        let (mut immutable, mut mutable) = (Vec::new(), Vec::new());
        let entries = std::fs::read_dir(&dir).map_err(|source| StateError::Io {
            context: "listing a rocksdb checkpoint",
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| StateError::Io {
                context: "listing a rocksdb checkpoint",
                source,
            })?;
            let name = entry.file_name().into_string().map_err(|n| {
                StateError::InvalidArgument(format!(
                    "rocksdb checkpoint file {n:?} in {} is not UTF-8",
                    dir.display()
                ))
            })?;
            // SST files are never rewritten under their number within one database; MANIFEST,
            // CURRENT, OPTIONS and the (empty, WAL-less) logs describe this checkpoint only.
            if name.ends_with(".sst") {
                immutable.push(name);
            } else {
                mutable.push(name);
            }
        }
        immutable.sort();
        mutable.sort();
        let mut meta = Vec::new();
        let names: Vec<(String, StateKind)> = self
            .states
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect();
        let mut writer =
            SnapshotFileWriter::new(&mut meta, self.max_parallelism, self.range, &names)?;
        for (key_group, section) in &self.timer_sections {
            writer.write_section(*key_group, section)?;
        }
        writer.finish()?;
        Ok(Some(NativeFiles {
            backend: "rocksdb",
            dir,
            immutable,
            mutable,
            meta,
        }))
    }
}

/// Writes the canonical snapshot file of the RocksDB database (a native checkpoint) at `path`, with
/// the timers already encoded by key group.
fn write_canonical(
    path: &Path,
    config: &RocksDbConfig,
    max_parallelism: u16,
    range: KeyGroupRange,
    states: &[StateMeta],
    mut timer_sections: BTreeMap<u16, SectionWriter>,
    out: &mut dyn Write,
) -> Result<SnapshotSummary> {
    // A small cache of its own: the view is read once, sequentially.
    let cache = Cache::new_lru_cache(8 << 20)
        .map_err(rocks_err("all states", "create snapshot block cache"))?;
    let descriptors = states.iter().map(|s| {
        ColumnFamilyDescriptor::new(&s.column_family, options::for_state(config, &cache, s.kind))
    });
    let db =
        DB::open_cf_descriptors_read_only(&options::base(config, &cache), path, descriptors, false)
            .map_err(rocks_err(
                "all states",
                "open checkpoint for the snapshot writer",
            ))?;
    let names: Vec<(String, StateKind)> = states.iter().map(|s| (s.name.clone(), s.kind)).collect();
    let mut writer = SnapshotFileWriter::new(out, max_parallelism, range, &names)?;
    let mut iterators = Vec::with_capacity(states.len());
    for meta in states {
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
    for key_group in range.iter() {
        let mut section = timer_sections.remove(&key_group).unwrap_or_default();
        let prefix = key_group.to_be_bytes();
        for (index, (meta, it)) in states.iter().zip(iterators.iter_mut()).enumerate() {
            let index = index as u32;
            it.seek(prefix);
            while let (Some(stored), Some(value)) = (it.key(), it.value()) {
                if !stored.starts_with(&prefix) {
                    break;
                }
                let parts = keys::split(stored, &meta.name)?;
                match meta.kind {
                    StateKind::Value => section.value(index, parts.key, parts.namespace, value),
                    StateKind::Map => {
                        section.map_entry(index, parts.key, parts.namespace, parts.rest, value)
                    }
                    StateKind::List => section.list(index, parts.key, parts.namespace, value),
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
    writer.finish()
}

/// The state table, key-group range and timers of a native snapshot's [`NATIVE_META_FILE`].
pub(crate) struct NativeMeta {
    pub max_parallelism: u16,
    pub range: KeyGroupRange,
    pub states: Vec<StateMeta>,
    pub timer_sections: BTreeMap<u16, SectionWriter>,
}

pub(crate) fn read_native_meta(dir: &Path) -> Result<NativeMeta> {
    let path = dir.join(NATIVE_META_FILE);
    let file = std::fs::File::open(&path).map_err(|source| StateError::Io {
        context: "opening the meta file of a native rocksdb snapshot",
        source,
    })?;
    let mut reader = SnapshotReader::open(std::io::BufReader::new(file))?;
    let states = reader
        .states()
        .iter()
        .map(|(name, kind)| StateMeta {
            name: name.clone(),
            kind: *kind,
            column_family: options::column_family(name),
        })
        .collect();
    let key_groups: Vec<u16> = reader.key_groups().collect();
    let mut timer_sections: BTreeMap<u16, SectionWriter> = BTreeMap::new();
    let mut buf = Vec::new();
    for key_group in key_groups {
        reader.read_section(key_group, &mut buf)?;
        let section = timer_sections.entry(key_group).or_default();
        decode_section(&buf, &mut |raw| match raw {
            RawRecord::Timer {
                domain,
                time,
                key,
                namespace,
            } => {
                section.timer(domain, time, key, namespace);
                Ok(())
            }
            _ => Err(StateError::CorruptSnapshot {
                context: "native rocksdb snapshot meta file",
                detail: format!(
                    "{} holds a keyed record in key group {key_group}: only timers belong there",
                    path.display()
                ),
            }),
        })?;
    }
    Ok(NativeMeta {
        max_parallelism: reader.max_parallelism(),
        range: reader.key_group_range(),
        states,
        timer_sections,
    })
}

/// Converts a native RocksDB snapshot downloaded to `dir` (the checkpoint's files and its
/// [`NATIVE_META_FILE`]) into the canonical format, for a restore at another parallelism or into
/// another backend. The runtime cannot link RocksDB: the binaries hand it this function.
pub fn native_to_canonical(dir: &Path, out: &mut dyn Write) -> Result<SnapshotSummary> {
    let meta = read_native_meta(dir)?;
    write_canonical(
        dir,
        &RocksDbConfig::default(),
        meta.max_parallelism,
        meta.range,
        &meta.states,
        meta.timer_sections,
        out,
    )
}
