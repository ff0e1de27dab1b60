//! Snapshots by key group, in one canonical format for every backend ([`format`]).
//!
//! Taking one has two halves: [`KeyedStateBackend::snapshot`] runs between records and captures a
//! consistent view (the memory backend clones its tables; the RocksDB backend hard-links a native
//! checkpoint); the returned [`PendingSnapshot`] then writes the file from that view on any thread, so
//! the upload never blocks processing. Restoring reads only the sections of the restoring backend's key
//! groups, from any number of files, so parallelism and backend can both change across a restore.

pub mod format;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

    /// The backend's own files of this snapshot, when it has them (RocksDB's native checkpoint), for
    /// incremental checkpoints. The files stay on disk as long as this snapshot lives. Savepoints
    /// never use them: they always call [`write_to`](Self::write_to).
    fn native_files(&mut self) -> Result<Option<NativeFiles>> {
        Ok(None)
    }
}

/// A backend's native snapshot: a local directory the backend can open again as its database.
#[derive(Debug, Clone)]
pub struct NativeFiles {
    /// The backend that opens these files (`"rocksdb"`).
    pub backend: &'static str,
    pub dir: PathBuf,
    /// Names of files in `dir` that never change under their name for the life of the database
    /// (RocksDB's SST files), so one upload can serve many checkpoints.
    pub immutable: Vec<String>,
    /// Names of the other files in `dir` (small, rewritten for every snapshot).
    pub mutable: Vec<String>,
    /// A canonical snapshot file without keyed records: the state table, the key-group range and
    /// the timers (which live on the heap, outside the native files).
    pub meta: Vec<u8>,
}

/// Name of the [`NativeFiles::meta`] file inside a downloaded native snapshot directory.
pub const NATIVE_META_FILE: &str = "SLUICE-META.state";

const NATIVE_RESTORE_MAGIC: &[u8] = b"sluice-native-restore\n";

/// A restore source asking a backend of kind `backend` to open the native snapshot downloaded to
/// `dir` (its files and [`NATIVE_META_FILE`]) as its database, instead of reading records. Only a
/// backend of that kind with the snapshot's exact key-group range accepts it; it may move the files.
pub fn native_restore_source(backend: &str, dir: &Path) -> Result<Vec<u8>> {
    let dir = dir.to_str().ok_or_else(|| {
        StateError::InvalidArgument(format!(
            "native snapshot directory {} is not UTF-8",
            dir.display()
        ))
    })?;
    let mut out = NATIVE_RESTORE_MAGIC.to_vec();
    out.extend_from_slice(format!("{backend}\n{dir}").as_bytes());
    Ok(out)
}

/// `(backend, directory)` when `source` is a [`native_restore_source`]; the source is rewound either way.
pub fn parse_native_restore(source: &mut dyn ReadSeek) -> Result<Option<(String, PathBuf)>> {
    let io = StateError::io("reading a restore source");
    let start = source.stream_position().map_err(io)?;
    let mut head = vec![0u8; NATIVE_RESTORE_MAGIC.len()];
    let mut got = 0;
    while got < head.len() {
        match source
            .read(&mut head[got..])
            .map_err(StateError::io("reading a restore source"))?
        {
            0 => break,
            n => got += n,
        }
    }
    let found = if got == head.len() && head == NATIVE_RESTORE_MAGIC {
        let mut rest = String::new();
        source
            .read_to_string(&mut rest)
            .map_err(StateError::io("reading a native restore source"))?;
        let (backend, dir) = rest
            .split_once('\n')
            .ok_or_else(|| StateError::corrupt("native restore source", "no backend line"))?;
        Some((backend.to_string(), PathBuf::from(dir)))
    } else {
        None
    };
    source
        .seek(SeekFrom::Start(start))
        .map_err(StateError::io("rewinding a restore source"))?;
    Ok(found)
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
        if let Some((kind, dir)) = parse_native_restore(&mut **source)? {
            return Err(StateError::InvalidArgument(format!(
                "the native {kind} snapshot in {} cannot be restored record by record into the {} backend: convert it to the canonical format first",
                dir.display(),
                backend.backend_name()
            )));
        }
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
