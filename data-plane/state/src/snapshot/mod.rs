//! Snapshots by key group, in one canonical format for every backend ([`format`]).
//!
//! Taking one has two halves: [`KeyedStateBackend::snapshot`] runs between records and captures a
//! consistent view (the memory backend clones its tables; the RocksDB backend hard-links a native
//! checkpoint); the returned [`PendingSnapshot`] then writes the file from that view on any thread, so
//! the upload never blocks processing. Restoring reads only the sections of the restoring backend's key
//! groups, from any number of files, so parallelism and backend can both change across a restore.

pub mod format;

use std::io::{Read, Seek, Write};

pub use format::{
    FORMAT_VERSION, RawRecord, SectionWriter, SnapshotFileWriter, SnapshotReader, SnapshotSummary,
    decode_section,
};

use crate::backend::{KeyedStateBackend, StateId, StateKind, TimeDomain};
use crate::encoding::ListItems;
use crate::error::{Result, StateError};
use crate::keygroup::{KeyGroupRange, key_group_of};

/// The asynchronous half of a snapshot: owns (or pins) everything it needs, so it can be moved to an
/// upload task.
pub trait PendingSnapshot: Send {
    /// Writes the snapshot file to `out`. Wrap slow sinks in a `BufWriter`: sections are written whole.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<SnapshotSummary>;
}

/// Anything a snapshot can be restored from (a file, a `Cursor` over downloaded bytes).
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A record handed to [`KeyedStateBackend::restore_record`], with the state already mapped to the
/// restoring backend's id.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotRecord<'a> {
    Value {
        state: StateId,
        key: &'a [u8],
        namespace: &'a [u8],
        value: &'a [u8],
    },
    MapEntry {
        state: StateId,
        key: &'a [u8],
        namespace: &'a [u8],
        user_key: &'a [u8],
        value: &'a [u8],
    },
    List {
        state: StateId,
        key: &'a [u8],
        namespace: &'a [u8],
        items: ListItems<'a>,
    },
    Timer {
        domain: TimeDomain,
        time: i64,
        key: &'a [u8],
        namespace: &'a [u8],
    },
}

impl<'a> SnapshotRecord<'a> {
    pub fn key(&self) -> &'a [u8] {
        match self {
            SnapshotRecord::Value { key, .. }
            | SnapshotRecord::MapEntry { key, .. }
            | SnapshotRecord::List { key, .. }
            | SnapshotRecord::Timer { key, .. } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Key groups of this backend found in the files.
    pub key_groups: u32,
    pub records: u64,
}

/// A snapshot whose sections are already encoded in memory (what the memory backend produces); writing
/// it is a copy into `out`.
pub struct EncodedSnapshot {
    pub max_parallelism: u16,
    pub range: KeyGroupRange,
    pub states: Vec<(String, StateKind)>,
    /// Non-empty sections, ascending by key group.
    pub sections: Vec<(u16, SectionWriter)>,
}

impl PendingSnapshot for EncodedSnapshot {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let mut writer =
            SnapshotFileWriter::new(out, self.max_parallelism, self.range, &self.states)?;
        for (key_group, section) in &self.sections {
            writer.write_section(*key_group, section)?;
        }
        writer.finish()
    }
}

/// The body of [`KeyedStateBackend::restore`].
pub fn restore_into<B: KeyedStateBackend + ?Sized>(
    backend: &mut B,
    sources: &mut [&mut dyn ReadSeek],
) -> Result<RestoreSummary> {
    let range = backend.key_group_range();
    let max_parallelism = backend.max_parallelism();
    let mut seen = vec![false; range.len()];
    let mut summary = RestoreSummary::default();
    let mut buf = Vec::new();
    for source in sources.iter_mut() {
        let mut reader = SnapshotReader::open(&mut **source)?;
        if reader.max_parallelism() != max_parallelism {
            return Err(StateError::MaxParallelismMismatch {
                snapshot: reader.max_parallelism(),
                backend: max_parallelism,
            });
        }
        let wanted: Vec<u16> = reader
            .key_groups()
            .filter(|&kg| range.contains(kg))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut ids = Vec::with_capacity(reader.states().len());
        for (name, kind) in reader.states() {
            ids.push((backend.register(name, *kind)?, *kind));
        }
        for key_group in wanted {
            let slot = &mut seen[usize::from(key_group - range.start)];
            if *slot {
                return Err(StateError::corrupt(
                    "snapshot set",
                    format!("key group {key_group} appears in more than one snapshot file"),
                ));
            }
            *slot = true;
            reader.read_section(key_group, &mut buf)?;
            summary.key_groups += 1;
            decode_section(&buf, &mut |raw| {
                summary.records += 1;
                let record = map_record(raw, &ids)?;
                let in_group = key_group_of(record.key(), max_parallelism);
                if in_group != key_group {
                    return Err(StateError::corrupt(
                        "snapshot section",
                        format!("a key of key group {in_group} in the section of {key_group}"),
                    ));
                }
                backend.restore_record(key_group, record)
            })?;
        }
    }
    Ok(summary)
}

fn map_record<'a>(raw: RawRecord<'a>, ids: &[(StateId, StateKind)]) -> Result<SnapshotRecord<'a>> {
    let id = |state: u32, kind: StateKind| -> Result<StateId> {
        match ids.get(state as usize) {
            Some(&(id, k)) if k == kind => Ok(id),
            Some(&(_, k)) => Err(StateError::corrupt(
                "snapshot section",
                format!("{kind} record for state #{state}, which is {k} state"),
            )),
            None => Err(StateError::corrupt(
                "snapshot section",
                format!("record for state #{state}, not in the state table"),
            )),
        }
    };
    Ok(match raw {
        RawRecord::Value {
            state,
            key,
            namespace,
            value,
        } => SnapshotRecord::Value {
            state: id(state, StateKind::Value)?,
            key,
            namespace,
            value,
        },
        RawRecord::MapEntry {
            state,
            key,
            namespace,
            user_key,
            value,
        } => SnapshotRecord::MapEntry {
            state: id(state, StateKind::Map)?,
            key,
            namespace,
            user_key,
            value,
        },
        RawRecord::List {
            state,
            key,
            namespace,
            framed_items,
        } => SnapshotRecord::List {
            state: id(state, StateKind::List)?,
            key,
            namespace,
            items: ListItems::parse(framed_items)?,
        },
        RawRecord::Timer {
            domain,
            time,
            key,
            namespace,
        } => SnapshotRecord::Timer {
            domain,
            time,
            key,
            namespace,
        },
    })
}
