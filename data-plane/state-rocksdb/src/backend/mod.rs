//! [`RocksDbBackend`]: one column family per state, keys prefixed with their key group.
//!
//! One column family per state (as Flink does) rather than a state-id prefix in one family: each state
//! gets its own options (the list merge operator only where lists live), its own memtable and SST files,
//! and a state can later be dropped or given a TTL compaction filter without touching the others.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Cache, ColumnFamily, DB, ReadOptions, WriteBatch, WriteOptions};
use sluice_state::encoding::{ListItems, push_list_item};
use sluice_state::snapshot::{self, PendingSnapshot, ReadSeek, RestoreSummary, SnapshotRecord};
use sluice_state::timers::TimerQueue;
use sluice_state::{
    KeyGroupRange, KeyedStateBackend, PairVisitor, Result, StateError, StateId, StateKind,
    TimeDomain, Timer, key_group_of,
};

use crate::keys::{self, prefix_successor, slot_prefix};
use crate::options::{self, RocksDbConfig};
use crate::snapshot::{CheckpointDir, PendingRocksSnapshot, read_native_meta};
use sluice_state::snapshot::{NATIVE_META_FILE, RawRecord, decode_section};

mod cache;

use cache::ValueCache;

/// A restore writes in batches of about this many bytes.
const RESTORE_BATCH_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub(crate) struct StateMeta {
    pub name: String,
    pub kind: StateKind,
    pub column_family: String,
}

pub struct RocksDbBackend {
    // Field order is drop order: the database closes before its temporary directory goes.
    db: DB,
    block_cache: Cache,
    config: RocksDbConfig,
    dir: PathBuf,
    max_parallelism: u16,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    timers: TimerQueue,
    write: WriteOptions,
    read: ReadOptions,
    /// The stored key of the current call.
    key: Vec<u8>,
    /// Values are copied here so reads can return `&[u8]` borrowed from the backend.
    buf: Vec<u8>,
    next_checkpoint: u64,
    restore_batch: Option<WriteBatch>,
    cache: ValueCache,
    _temp: Option<tempfile::TempDir>,
}

pub(crate) fn rocks_err(
    state: &str,
    operation: &'static str,
) -> impl FnOnce(rocksdb::Error) -> StateError {
    let state = state.to_owned();
    move |e| StateError::Backend {
        backend: "rocksdb",
        state,
        operation,
        source: Box::new(e),
    }
}

fn corrupt_native(detail: String) -> StateError {
    StateError::CorruptSnapshot {
        context: "native rocksdb snapshot",
        detail,
    }
}

impl RocksDbBackend {
    /// Opens a new, empty backend with its files under `dir` (created if missing; it must be empty:
    /// the working state of a subtask is rebuilt from snapshots, never reopened).
    pub fn open(
        dir: impl AsRef<Path>,
        max_parallelism: u16,
        range: KeyGroupRange,
        config: RocksDbConfig,
    ) -> Result<Self> {
        Self::open_in(
            dir.as_ref().to_path_buf(),
            max_parallelism,
            range,
            config,
            None,
        )
    }

    /// Opens a new backend in a fresh temporary directory under `parent` (the system's temporary
    /// directory when `None`) that is deleted when the backend is dropped.
    pub fn open_temp(
        parent: Option<&Path>,
        max_parallelism: u16,
        range: KeyGroupRange,
        config: RocksDbConfig,
    ) -> Result<Self> {
        let temp = match parent {
            Some(parent) => tempfile::Builder::new()
                .prefix("sluice-state-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("sluice-state-").tempdir(),
        }
        .map_err(|source| StateError::Io {
            context: "creating the rocksdb state directory",
            source,
        })?;
        let dir = temp.path().to_path_buf();
        Self::open_in(dir, max_parallelism, range, config, Some(temp))
    }

    fn open_in(
        dir: PathBuf,
        max_parallelism: u16,
        range: KeyGroupRange,
        config: RocksDbConfig,
        temp: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        if max_parallelism == 0 || range.end > max_parallelism {
            return Err(StateError::InvalidArgument(format!(
                "key group range {range} does not fit max_parallelism {max_parallelism}"
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            context: "creating the rocksdb state directory",
            source,
        })?;
        let not_empty = std::fs::read_dir(&dir)
            .map_err(|source| StateError::Io {
                context: "listing the rocksdb state directory",
                source,
            })?
            .next()
            .is_some();
        if not_empty {
            return Err(StateError::InvalidArgument(format!(
                "rocksdb state directory {} is not empty: a backend starts empty and is filled by restore",
                dir.display()
            )));
        }
        let cache = Cache::new_lru_cache(config.block_cache_bytes)
            .map_err(rocks_err("all states", "create block cache"))?;
        let db = DB::open(&options::base(&config, &cache), dir.join("db")).map_err(rocks_err(
            &format!("all states, in {}", dir.display()),
            "open database",
        ))?;
        let mut write = WriteOptions::default();
        // Durability comes from checkpoints; after a crash the subtask restores from the last one.
        write.disable_wal(true);
        Ok(Self {
            db,
            block_cache: cache,
            cache: ValueCache::new(config.value_cache_entries),
            config,
            dir,
            max_parallelism,
            range,
            states: Vec::new(),
            timers: TimerQueue::new(),
            write,
            read: ReadOptions::default(),
            key: Vec::new(),
            buf: Vec::new(),
            next_checkpoint: 0,
            restore_batch: None,
            _temp: temp,
        })
    }

    /// The directory holding the database and pending checkpoints.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the key's group and the state's kind and leaves the stored key of `(key, namespace)` in
    /// `self.key`; returns the state's index.
    #[inline]
    fn prepare(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        operation: &'static str,
        expected: StateKind,
    ) -> Result<usize> {
        let key_group = self.check_key(key)?;
        let meta = self
            .states
            .get(state.index())
            .ok_or(StateError::UnknownState(state.index() as u32))?;
        if meta.kind != expected {
            return Err(StateError::WrongKind {
                state: meta.name.clone(),
                operation,
                expected,
                actual: meta.kind,
            });
        }
        slot_prefix(&mut self.key, key_group, key, namespace);
        Ok(state.index())
    }

    #[inline]
    fn check_key(&self, key: &[u8]) -> Result<u16> {
        let key_group = key_group_of(key, self.max_parallelism);
        if self.range.contains(key_group) {
            Ok(key_group)
        } else {
            Err(StateError::KeyGroupOutOfRange {
                key_group,
                range: self.range,
            })
        }
    }

    fn handle<'a>(db: &'a DB, meta: &StateMeta) -> Result<&'a ColumnFamily> {
        db.cf_handle(&meta.column_family)
            .ok_or_else(|| StateError::Backend {
                backend: "rocksdb",
                state: meta.name.clone(),
                operation: "find column family",
                source: format!("column family {} is missing", meta.column_family).into(),
            })
    }

    fn get_into_buf(&mut self, i: usize, operation: &'static str) -> Result<bool> {
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        match self
            .db
            .get_pinned_cf_opt(cf, &self.key, &self.read)
            .map_err(rocks_err(&meta.name, operation))?
        {
            Some(value) => {
                self.buf.clear();
                self.buf.extend_from_slice(&value);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn put(&self, i: usize, key: &[u8], value: &[u8], operation: &'static str) -> Result<()> {
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        self.db
            .put_cf_opt(cf, key, value, &self.write)
            .map_err(rocks_err(&meta.name, operation))
    }

    fn delete(&self, i: usize, key: &[u8], operation: &'static str) -> Result<()> {
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        self.db
            .delete_cf_opt(cf, key, &self.write)
            .map_err(rocks_err(&meta.name, operation))
    }

    /// Calls `visit(stored_key, value)` for every entry whose stored key starts with `prefix`.
    fn scan(
        &self,
        i: usize,
        prefix: &[u8],
        operation: &'static str,
        visit: &mut PairVisitor<'_>,
    ) -> Result<()> {
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_successor(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek(prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            visit(k, v)?;
            it.next();
        }
        it.status().map_err(rocks_err(&meta.name, operation))
    }

    /// Opens the native snapshot downloaded to `dir` as this backend's database: its files move
    /// into this backend's directory (a copy when they are on another filesystem). States registered
    /// before keep their ids; the snapshot's other states are registered after them.
    fn restore_native(&mut self, dir: &Path) -> Result<RestoreSummary> {
        let meta = read_native_meta(dir)?;
        if meta.max_parallelism != self.max_parallelism || meta.range != self.range {
            return Err(StateError::InvalidArgument(format!(
                "the native snapshot in {} covers key groups {} of max parallelism {}; this backend owns {} of {}: rescaling goes through the canonical format",
                dir.display(),
                meta.range,
                meta.max_parallelism,
                self.range,
                self.max_parallelism
            )));
        }
        let mut states = self.states.clone();
        for s in &meta.states {
            match states.iter().find(|x| x.name == s.name) {
                Some(x) if x.kind != s.kind => {
                    return Err(StateError::KindMismatch {
                        name: s.name.clone(),
                        existing: x.kind,
                        requested: s.kind,
                    });
                }
                Some(_) => {}
                None => states.push(s.clone()),
            }
        }
        let target = self.dir.join(format!("restored-{}", self.next_checkpoint));
        self.next_checkpoint += 1;
        let io = |context: &'static str| {
            move |source: std::io::Error| StateError::Io { context, source }
        };
        std::fs::create_dir_all(&target).map_err(io("creating the restored rocksdb directory"))?;
        for entry in std::fs::read_dir(dir).map_err(io("listing a native rocksdb snapshot"))? {
            let entry = entry.map_err(io("listing a native rocksdb snapshot"))?;
            if entry.file_name() == NATIVE_META_FILE {
                continue;
            }
            let to = target.join(entry.file_name());
            if std::fs::rename(entry.path(), &to).is_err() {
                std::fs::copy(entry.path(), &to)
                    .map_err(io("copying a native rocksdb snapshot file"))?;
            }
        }
        let opts = options::base(&self.config, &self.block_cache);
        let families = DB::list_cf(&opts, &target).map_err(rocks_err(
            &format!("all states, in {}", target.display()),
            "list column families of the native snapshot",
        ))?;
        let mut descriptors = Vec::new();
        for cf in families
            .iter()
            .filter(|cf| *cf != rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
        {
            let state = states
                .iter()
                .find(|s| &s.column_family == cf)
                .ok_or_else(|| {
                    corrupt_native(format!(
                        "column family {cf} of {} is not in its state table",
                        dir.display()
                    ))
                })?;
            descriptors.push(rocksdb::ColumnFamilyDescriptor::new(
                cf,
                options::for_state(&self.config, &self.block_cache, state.kind),
            ));
        }
        let mut db = DB::open_cf_descriptors(&opts, &target, descriptors).map_err(rocks_err(
            &format!("all states, in {}", target.display()),
            "open the native snapshot",
        ))?;
        for s in &states {
            if !families.contains(&s.column_family) {
                db.create_cf(
                    &s.column_family,
                    &options::for_state(&self.config, &self.block_cache, s.kind),
                )
                .map_err(rocks_err(&s.name, "create column family"))?;
            }
        }
        // Nothing is cached yet (a backend restores before its first record), but a cached
        // absence would hide restored values.
        self.cache.map.clear();
        let old = std::mem::replace(&mut self.db, db);
        drop(old);
        let old_dir = self.dir.join("db");
        if old_dir.exists() {
            std::fs::remove_dir_all(&old_dir).map_err(io("removing the empty rocksdb database"))?;
        }
        self.states = states;
        let mut summary = RestoreSummary {
            key_groups: meta.range.len() as u32,
            records: 0,
        };
        for (key_group, section) in &meta.timer_sections {
            decode_section(section.bytes(), &mut |raw| {
                if let RawRecord::Timer {
                    domain,
                    time,
                    key,
                    namespace,
                } = raw
                {
                    if key_group_of(key, self.max_parallelism) != *key_group {
                        return Err(corrupt_native(format!(
                            "a timer of another key group in the section of {key_group} in {}",
                            dir.display()
                        )));
                    }
                    summary.records += 1;
                    self.timers.register(domain, time, key, namespace);
                }
                Ok(())
            })?;
        }
        Ok(summary)
    }

    fn flush_restore_batch(&mut self) -> Result<()> {
        if let Some(batch) = self.restore_batch.as_mut()
            && !batch.is_empty()
        {
            let full = std::mem::take(batch);
            self.db
                .write_opt(full, &self.write)
                .map_err(rocks_err("all states", "write restored batch"))?;
        }
        Ok(())
    }
}

impl KeyedStateBackend for RocksDbBackend {
    fn backend_name(&self) -> &'static str {
        "rocksdb"
    }

    fn max_parallelism(&self) -> u16 {
        self.max_parallelism
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let existing = self.states[i].kind;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(StateId::from_index(i));
        }
        let column_family = options::column_family(name);
        self.db
            .create_cf(
                &column_family,
                &options::for_state(&self.config, &self.block_cache, kind),
            )
            .map_err(rocks_err(name, "create column family"))?;
        self.states.push(StateMeta {
            name: name.to_owned(),
            kind,
            column_family,
        });
        Ok(StateId::from_index(self.states.len() - 1))
    }

    fn states(&self) -> Vec<(String, StateKind)> {
        self.states
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect()
    }

    fn value_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<Option<&[u8]>> {
        let i = self.prepare(state, key, namespace, "value_get", StateKind::Value)?;
        if self.cache.enabled() {
            return self.cached_get(i);
        }
        Ok(if self.get_into_buf(i, "value_get")? {
            Some(&self.buf)
        } else {
            None
        })
    }

    fn value_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "value_put", StateKind::Value)?;
        if self.cache.enabled() {
            return self.cached_put(i, value);
        }
        self.put(i, &self.key, value, "value_put")
    }

    fn value_update(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        update: &mut dyn FnMut(&mut Vec<u8>, bool) -> bool,
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "value_update", StateKind::Value)?;
        if self.cache.enabled() {
            return self.cached_update(i, update);
        }
        let present = self.get_into_buf(i, "value_update")?;
        if !present {
            self.buf.clear();
        }
        if update(&mut self.buf, present) {
            self.put(i, &self.key, &self.buf, "value_update")
        } else if present {
            self.delete(i, &self.key, "value_update")
        } else {
            Ok(())
        }
    }

    fn map_get(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<Option<&[u8]>> {
        let i = self.prepare(state, key, namespace, "map_get", StateKind::Map)?;
        self.key.extend_from_slice(user_key);
        Ok(if self.get_into_buf(i, "map_get")? {
            Some(&self.buf)
        } else {
            None
        })
    }

    fn map_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "map_put", StateKind::Map)?;
        self.key.extend_from_slice(user_key);
        self.put(i, &self.key, value, "map_put")
    }

    fn map_remove(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "map_remove", StateKind::Map)?;
        self.key.extend_from_slice(user_key);
        self.delete(i, &self.key, "map_remove")
    }

    fn map_for_each(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        visit: &mut PairVisitor<'_>,
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "map_for_each", StateKind::Map)?;
        let prefix_len = self.key.len();
        self.scan(i, &self.key, "map_for_each", &mut |stored, value| {
            visit(&stored[prefix_len..], value)
        })
    }

    fn list_append(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        item: &[u8],
    ) -> Result<()> {
        let i = self.prepare(state, key, namespace, "list_append", StateKind::List)?;
        self.buf.clear();
        push_list_item(&mut self.buf, item);
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        self.db
            .merge_cf_opt(cf, &self.key, &self.buf, &self.write)
            .map_err(rocks_err(&meta.name, "list_append"))
    }

    fn list_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<ListItems<'_>> {
        let i = self.prepare(state, key, namespace, "list_get", StateKind::List)?;
        if self.get_into_buf(i, "list_get")? {
            ListItems::parse(&self.buf)
        } else {
            Ok(ListItems::default())
        }
    }

    fn clear(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<()> {
        let kind = self
            .states
            .get(state.index())
            .ok_or(StateError::UnknownState(state.index() as u32))?
            .kind;
        let i = self.prepare(state, key, namespace, "clear", kind)?;
        if kind == StateKind::Value && self.cache.enabled() {
            self.cache_forget(i);
        }
        if kind != StateKind::Map {
            return self.delete(i, &self.key, "clear");
        }
        // Point deletes of the map's entries rather than a range tombstone per clear: window operators
        // clear per (key, window), and piles of range tombstones slow every later read.
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        let mut batch = WriteBatch::default();
        self.scan(i, &self.key, "clear", &mut |stored, _| {
            batch.delete_cf(cf, stored);
            Ok(())
        })?;
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(rocks_err(&meta.name, "clear"))
    }

    fn for_each_key(&mut self, state: StateId, visit: &mut PairVisitor<'_>) -> Result<()> {
        let meta = self
            .states
            .get(state.index())
            .ok_or(StateError::UnknownState(state.index() as u32))?;
        let (name, is_map) = (meta.name.clone(), meta.kind == StateKind::Map);
        if meta.kind == StateKind::Value {
            self.cache_flush(false)?;
        }
        // A map's entries of one (key, namespace) are adjacent: report the slot once.
        let mut last: Vec<u8> = Vec::new();
        let mut first = true;
        self.scan(state.index(), &[], "for_each_key", &mut |stored, _| {
            let parts = keys::split(stored, &name)?;
            if is_map {
                let slot = &stored[..stored.len() - parts.rest.len()];
                if !first && slot == last.as_slice() {
                    return Ok(());
                }
                first = false;
                last.clear();
                last.extend_from_slice(slot);
            }
            visit(parts.key, parts.namespace)
        })
    }

    fn register_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.check_key(key)?;
        self.timers.register(domain, time, key, namespace);
        Ok(())
    }

    fn delete_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.check_key(key)?;
        self.timers.delete(domain, time, key, namespace);
        Ok(())
    }

    fn next_timer_time(&self, domain: TimeDomain) -> Option<i64> {
        self.timers.next_time(domain)
    }

    fn drain_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut Vec<Timer>,
    ) -> Result<usize> {
        self.timers.drain(domain, up_to, out)
    }

    fn snapshot(&mut self) -> Result<Box<dyn PendingSnapshot>> {
        let path = self
            .dir
            .join("checkpoints")
            .join(self.next_checkpoint.to_string());
        self.next_checkpoint += 1;
        self.cache_flush(false)?;
        std::fs::create_dir_all(self.dir.join("checkpoints")).map_err(|source| StateError::Io {
            context: "creating the rocksdb checkpoint directory",
            source,
        })?;
        // Flushes the memtables and hard-links the SST files: the consistent view costs a flush, not a
        // copy of the data, and the writer reads it without touching the live database.
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&path))
            .map_err(rocks_err("all states", "create checkpoint"))?;
        let checkpoint = CheckpointDir::new(path);
        Ok(Box::new(PendingRocksSnapshot::new(
            checkpoint,
            self.config.clone(),
            self.max_parallelism,
            self.range,
            self.states.clone(),
            &self.timers,
        )?))
    }

    fn restore_record(&mut self, _key_group: u16, record: SnapshotRecord<'_>) -> Result<()> {
        if self.restore_batch.is_none() {
            return match record {
                SnapshotRecord::Value {
                    state,
                    key,
                    namespace,
                    value,
                } => self.value_put(state, key, namespace, value),
                SnapshotRecord::MapEntry {
                    state,
                    key,
                    namespace,
                    user_key,
                    value,
                } => self.map_put(state, key, namespace, user_key, value),
                SnapshotRecord::List {
                    state,
                    key,
                    namespace,
                    items,
                } => {
                    for item in items {
                        self.list_append(state, key, namespace, item)?;
                    }
                    Ok(())
                }
                SnapshotRecord::Timer {
                    domain,
                    time,
                    key,
                    namespace,
                } => self.register_timer(domain, time, key, namespace),
            };
        }
        let (i, bytes, merge) = match record {
            SnapshotRecord::Value {
                state,
                key,
                namespace,
                value,
            } => (
                self.prepare(state, key, namespace, "restore", StateKind::Value)?,
                value,
                false,
            ),
            SnapshotRecord::MapEntry {
                state,
                key,
                namespace,
                user_key,
                value,
            } => {
                let i = self.prepare(state, key, namespace, "restore", StateKind::Map)?;
                self.key.extend_from_slice(user_key);
                (i, value, false)
            }
            SnapshotRecord::List {
                state,
                key,
                namespace,
                items,
            } => (
                self.prepare(state, key, namespace, "restore", StateKind::List)?,
                items.framed(),
                true,
            ),
            SnapshotRecord::Timer {
                domain,
                time,
                key,
                namespace,
            } => return self.register_timer(domain, time, key, namespace),
        };
        let meta = &self.states[i];
        let cf = Self::handle(&self.db, meta)?;
        if let Some(batch) = self.restore_batch.as_mut() {
            if merge {
                batch.merge_cf(cf, &self.key, bytes);
            } else {
                batch.put_cf(cf, &self.key, bytes);
            }
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                self.flush_restore_batch()?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, sources: &mut [&mut dyn ReadSeek]) -> Result<RestoreSummary> {
        let mut native = None;
        for source in sources.iter_mut() {
            if let Some(found) = snapshot::parse_native_restore(&mut **source)? {
                native = Some(found);
            }
        }
        if let Some((kind, dir)) = native {
            if sources.len() != 1 || kind != "rocksdb" {
                return Err(StateError::InvalidArgument(format!(
                    "a native {kind} snapshot ({}) restores alone into a rocksdb backend of its key groups, not with {} other source(s)",
                    dir.display(),
                    sources.len() - 1
                )));
            }
            return self.restore_native(&dir);
        }
        // Restored values are written under the cache; a cached absence would hide them.
        self.cache_flush(false)?;
        self.cache.map.clear();
        self.restore_batch = Some(WriteBatch::default());
        let restored = snapshot::restore_into(self, sources);
        let flushed = self.flush_restore_batch();
        self.restore_batch = None;
        let summary = restored?;
        flushed?;
        Ok(summary)
    }
}
