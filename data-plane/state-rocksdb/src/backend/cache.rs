//! A write-back cache of value state in front of RocksDB.
//!
//! Stream operators read and rewrite the same hot keys over and over (a rolling count per user touches
//! its counter on every record). Without a cache each of those is a RocksDB get plus a put into the
//! memtable; with it, a hot value is read once, updated in memory, and written back in one `WriteBatch`
//! when the cache fills, before a snapshot, and before a scan. Absent values are cached too, so a new
//! key's first lookup is not repeated. Map and list state go straight to RocksDB.

use std::collections::HashMap;

use rocksdb::WriteBatch;
use sluice_state::{Result, StateError};

use super::{RocksDbBackend, rocks_err};

pub(super) struct Cached {
    /// `None`: the key has no value (cached absence, or a pending delete when dirty).
    pub value: Option<Vec<u8>>,
    pub dirty: bool,
}

pub(super) struct ValueCache {
    /// Keyed by `state index (u32, big-endian) ‖ stored key`.
    pub map: HashMap<Box<[u8]>, Cached, foldhash::fast::RandomState>,
    pub capacity: usize,
    pub key: Vec<u8>,
}

impl ValueCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::default(),
            capacity,
            key: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }
}

impl RocksDbBackend {
    /// Builds the cache key of state `i` and the stored key in `self.key`.
    #[inline]
    fn cache_key(&mut self, i: usize) {
        let key = &mut self.cache.key;
        key.clear();
        key.extend_from_slice(&(i as u32).to_be_bytes());
        key.extend_from_slice(&self.key);
    }

    /// Makes sure the cache holds the entry of state `i` / `self.key`, loading it from RocksDB (and
    /// writing back and halving a full cache first).
    fn cache_ensure(&mut self, i: usize, operation: &'static str) -> Result<()> {
        self.cache_key(i);
        if self.cache.map.contains_key(self.cache.key.as_slice()) {
            return Ok(());
        }
        if self.cache.map.len() >= self.cache.capacity {
            self.cache_flush(true)?;
        }
        let value = self.get_into_buf(i, operation)?.then(|| self.buf.clone());
        self.cache.map.insert(
            self.cache.key.as_slice().into(),
            Cached {
                value,
                dirty: false,
            },
        );
        Ok(())
    }

    /// Writes every dirty entry back in one batch; `evict` then drops half of the entries.
    pub(super) fn cache_flush(&mut self, evict: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, entry) in self.cache.map.iter().filter(|(_, e)| e.dirty) {
            let (index, stored) = key.split_at(4);
            let index = u32::from_be_bytes([index[0], index[1], index[2], index[3]]) as usize;
            let meta = &self.states[index];
            let cf = Self::handle(&self.db, meta)?;
            match &entry.value {
                Some(value) => batch.put_cf(cf, stored, value),
                None => batch.delete_cf(cf, stored),
            }
        }
        if !batch.is_empty() {
            self.db
                .write_opt(batch, &self.write)
                .map_err(rocks_err("all states", "write back the value cache"))?;
        }
        if evict {
            // Drop every other entry (hash order, so an arbitrary half) rather than all: a working set
            // a little larger than the cache keeps half its hits instead of starting cold.
            let mut keep = false;
            self.cache.map.retain(|_, entry| {
                entry.dirty = false;
                keep = !keep;
                keep
            });
        } else {
            for entry in self.cache.map.values_mut() {
                entry.dirty = false;
            }
        }
        Ok(())
    }

    pub(super) fn cached_get(&mut self, i: usize) -> Result<Option<&[u8]>> {
        self.cache_ensure(i, "value_get")?;
        Ok(self
            .cache
            .map
            .get(self.cache.key.as_slice())
            .and_then(|e| e.value.as_deref()))
    }

    pub(super) fn cached_put(&mut self, i: usize, value: &[u8]) -> Result<()> {
        self.cache_key(i);
        if let Some(entry) = self.cache.map.get_mut(self.cache.key.as_slice()) {
            match &mut entry.value {
                Some(stored) => {
                    stored.clear();
                    stored.extend_from_slice(value);
                }
                None => entry.value = Some(value.to_vec()),
            }
            entry.dirty = true;
            return Ok(());
        }
        if self.cache.map.len() >= self.cache.capacity {
            self.cache_flush(true)?;
        }
        self.cache.map.insert(
            self.cache.key.as_slice().into(),
            Cached {
                value: Some(value.to_vec()),
                dirty: true,
            },
        );
        Ok(())
    }

    pub(super) fn cached_update(
        &mut self,
        i: usize,
        update: &mut dyn FnMut(&mut Vec<u8>, bool) -> bool,
    ) -> Result<()> {
        self.cache_ensure(i, "value_update")?;
        let mut fresh = std::mem::take(&mut self.buf);
        let Some(entry) = self.cache.map.get_mut(self.cache.key.as_slice()) else {
            self.buf = fresh;
            return Err(StateError::Backend {
                backend: "rocksdb",
                state: self.states[i].name.clone(),
                operation: "value_update",
                source: "value cache lost the entry it just loaded".into(),
            });
        };
        match &mut entry.value {
            Some(stored) => {
                if !update(stored, true) {
                    entry.value = None;
                }
                entry.dirty = true;
            }
            None => {
                fresh.clear();
                if update(&mut fresh, false) {
                    entry.value = Some(std::mem::take(&mut fresh));
                    entry.dirty = true;
                }
            }
        }
        self.buf = fresh;
        Ok(())
    }

    /// Forgets the cached value of state `i` / `self.key` (the caller deletes it from RocksDB).
    pub(super) fn cache_forget(&mut self, i: usize) {
        self.cache_key(i);
        self.cache.map.remove(self.cache.key.as_slice());
    }
}
