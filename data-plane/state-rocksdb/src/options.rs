//! RocksDB options of the backend: one place, so the live database and the read-only view a snapshot
//! writer opens are configured alike (list state needs its merge operator in both).

use rocksdb::{BlockBasedOptions, Cache, DataBlockIndexType, MergeOperands, Options};
use sluice_state::StateKind;

/// Tuning of a [`RocksDbBackend`](crate::RocksDbBackend).
#[derive(Clone, Debug)]
pub struct RocksDbConfig {
    /// Memtable size per column family (state) before it is flushed to an SST file.
    pub write_buffer_bytes: usize,
    /// Block cache shared by every state of the backend.
    pub block_cache_bytes: usize,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// Value-state entries kept in the write-back cache in front of RocksDB (0 turns it off). About
    /// 100 bytes of memory each plus the value.
    pub value_cache_entries: usize,
}

impl Default for RocksDbConfig {
    fn default() -> Self {
        Self {
            write_buffer_bytes: 64 << 20,
            block_cache_bytes: 256 << 20,
            background_jobs: 2,
            value_cache_entries: 250_000,
        }
    }
}

/// Options of the database and of every column family that is not list state.
pub fn base(config: &RocksDbConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point lookups dominate (get + update per record): a bloom filter skips SST files without the key.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    // A hash index inside data blocks turns the in-block binary search of a point lookup into a probe.
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(config.write_buffer_bytes);
    opts.set_max_background_jobs(config.background_jobs);
    // A bloom filter over whole keys in the memtable: a miss (a new key, or a key flushed to SST files
    // long ago) skips the skip-list search.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts
}

pub fn for_state(config: &RocksDbConfig, cache: &Cache, kind: StateKind) -> Options {
    let mut opts = base(config, cache);
    if kind == StateKind::List {
        // Appending is a merge of one framed item: no read of the existing list on the write path.
        opts.set_merge_operator_associative("sluice-list-concat", concat_framed);
    }
    opts
}

/// List items are framed (`varint(len) ‖ item`), so a list is the concatenation of its appends.
fn concat_framed(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(existing.unwrap_or_default());
    for operand in operands {
        out.extend_from_slice(operand);
    }
    Some(out)
}

/// The column family of a state: the name is prefixed so that no state can be called `default`.
pub fn column_family(name: &str) -> String {
    format!("state:{name}")
}
