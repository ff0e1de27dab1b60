//! Native snapshots (incremental checkpoints): the files a snapshot hands over, sharing between
//! consecutive snapshots, opening them again as the database, and converting them to the canonical
//! format for a rescale or another backend.

use std::path::Path;

use sluice_state::contract::{Dump, dump, populate};
use sluice_state::snapshot::{NATIVE_META_FILE, NativeFiles, native_restore_source};
use sluice_state::{
    KeyGroupRange, KeyedStateBackend, MemoryBackend, ReadSeek, StateKind, key_group_range,
};
use sluice_state_rocksdb::{RocksDbBackend, RocksDbConfig, native_to_canonical};

const MAX_P: u16 = 128;

fn small() -> RocksDbConfig {
    RocksDbConfig {
        write_buffer_bytes: 4 << 20,
        block_cache_bytes: 8 << 20,
        background_jobs: 1,
        ..RocksDbConfig::default()
    }
}

fn rocks(range: KeyGroupRange) -> RocksDbBackend {
    RocksDbBackend::open_temp(None, MAX_P, range, small()).expect("rocksdb backend")
}

/// What a restoring subtask has after downloading a native snapshot: its files and the meta file.
fn download(files: &NativeFiles, to: &Path) {
    std::fs::create_dir_all(to).expect("download dir");
    for name in files.immutable.iter().chain(&files.mutable) {
        std::fs::copy(files.dir.join(name), to.join(name)).expect("copy a native file");
    }
    std::fs::write(to.join(NATIVE_META_FILE), &files.meta).expect("meta file");
}

fn size_of(files: &NativeFiles, names: &[&String]) -> u64 {
    names
        .iter()
        .map(|n| {
            std::fs::metadata(files.dir.join(n))
                .expect("file size")
                .len()
        })
        .sum()
}

fn restore(backend: &mut dyn KeyedStateBackend, sources: Vec<Vec<u8>>) {
    let mut cursors: Vec<std::io::Cursor<Vec<u8>>> =
        sources.into_iter().map(std::io::Cursor::new).collect();
    let mut refs: Vec<&mut dyn ReadSeek> =
        cursors.iter_mut().map(|c| c as &mut dyn ReadSeek).collect();
    backend.restore(&mut refs).expect("restore");
}

#[test]
fn a_second_snapshot_after_a_small_change_shares_every_sst_but_the_new_one() {
    let mut b = rocks(KeyGroupRange::all(MAX_P));
    populate(&mut b, 20_000).expect("populate");
    let mut first = b.snapshot().expect("snapshot 1");
    let n1 = first
        .native_files()
        .expect("native files")
        .expect("rocksdb has native files");
    assert_eq!(n1.backend, "rocksdb");
    assert!(!n1.immutable.is_empty(), "{n1:?}");
    assert!(n1.immutable.iter().all(|n| n.ends_with(".sst")), "{n1:?}");
    assert!(n1.mutable.iter().any(|n| n == "CURRENT"), "{n1:?}");
    assert!(
        n1.mutable.iter().any(|n| n.starts_with("MANIFEST-")),
        "{n1:?}"
    );

    let count = b.register("count", StateKind::Value).expect("count");
    b.value_put(count, b"one more key", b"", &7u64.to_le_bytes())
        .expect("put");
    let mut second = b.snapshot().expect("snapshot 2");
    let n2 = second
        .native_files()
        .expect("native files")
        .expect("rocksdb has native files");
    let new: Vec<&String> = n2
        .immutable
        .iter()
        .filter(|n| !n1.immutable.contains(n))
        .collect();
    let all: Vec<&String> = n2.immutable.iter().collect();
    // The one changed state flushed one memtable; every other SST is the first snapshot's.
    assert_eq!(new.len(), 1, "new SSTs {new:?} of {:?}", n2.immutable);
    assert!(
        n1.immutable.iter().all(|n| n2.immutable.contains(n)),
        "no compaction at this size: {n1:?} vs {n2:?}"
    );
    let (new_bytes, all_bytes) = (size_of(&n2, &new), size_of(&n2, &all));
    assert!(
        new_bytes * 20 < all_bytes,
        "the new SST is {new_bytes} of {all_bytes} bytes"
    );
    drop(first);
    drop(second);
}

#[test]
fn native_files_open_as_the_database_or_convert_for_another_range_or_backend() {
    let mut b = rocks(KeyGroupRange::all(MAX_P));
    populate(&mut b, 1500).expect("populate");
    let before = dump(&mut b).expect("dump");
    assert!(!before.timers.is_empty() && !before.lists.is_empty());
    let mut snap = b.snapshot().expect("snapshot");
    let files = snap.native_files().expect("native").expect("native files");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("download");
    download(&files, &dir);
    drop(snap);
    assert!(!files.dir.exists(), "the snapshot's directory goes with it");

    // Canonical: into the memory backend, and into rocksdb at parallelism 3.
    let mut canonical = Vec::new();
    native_to_canonical(&dir, &mut canonical).expect("convert");
    let mut mem = MemoryBackend::new(MAX_P, KeyGroupRange::all(MAX_P)).expect("memory");
    restore(&mut mem, vec![canonical.clone()]);
    assert_eq!(
        dump(&mut mem).expect("dump"),
        before,
        "converted into memory"
    );
    let mut merged = Dump::default();
    for i in 0..3 {
        let range = key_group_range(MAX_P, 3, i).expect("range");
        let mut part = rocks(range);
        restore(&mut part, vec![canonical.clone()]);
        merged.merge_disjoint(dump(&mut part).expect("dump"));
    }
    assert_eq!(merged, before, "converted and rescaled to 3");

    // Native: a backend of the same range opens the files; states registered before keep their ids.
    let mut native = rocks(KeyGroupRange::all(MAX_P));
    let rows = native.register("rows", StateKind::List).expect("rows");
    let source = native_restore_source("rocksdb", &dir).expect("source");
    restore(&mut native, vec![source]);
    assert_eq!(dump(&mut native).expect("dump"), before, "opened natively");
    assert_eq!(
        native.register("rows", StateKind::List).expect("rows"),
        rows
    );
    // It is live: written, and snapshotted natively again.
    let count = native.register("count", StateKind::Value).expect("count");
    native
        .value_put(count, b"after restore", b"", &1u64.to_le_bytes())
        .expect("put");
    let mut again = native.snapshot().expect("snapshot after a native restore");
    let again_files = again.native_files().expect("native").expect("files");
    let dir2 = tmp.path().join("download-2");
    download(&again_files, &dir2);
    drop(again);
    let mut third = rocks(KeyGroupRange::all(MAX_P));
    restore(
        &mut third,
        vec![native_restore_source("rocksdb", &dir2).expect("source")],
    );
    let mut expected = before.clone();
    expected.values.insert(
        ("count".into(), b"after restore".to_vec(), Vec::new()),
        1u64.to_le_bytes().to_vec(),
    );
    assert_eq!(
        dump(&mut third).expect("dump"),
        expected,
        "second generation"
    );

    // Opening natively needs the same key groups; the memory backend needs the canonical form.
    let half = key_group_range(MAX_P, 2, 0).expect("range");
    let err = rocks(half)
        .restore(&mut [&mut std::io::Cursor::new(
            native_restore_source("rocksdb", &dir2).expect("source"),
        )])
        .expect_err("another range opened natively");
    assert!(err.to_string().contains("canonical format"), "{err}");
    let err = MemoryBackend::new(MAX_P, KeyGroupRange::all(MAX_P))
        .expect("memory")
        .restore(&mut [&mut std::io::Cursor::new(
            native_restore_source("rocksdb", &dir2).expect("source"),
        )])
        .expect_err("native files restored into memory");
    assert!(
        err.to_string().contains("memory backend") && err.to_string().contains("convert"),
        "{err}"
    );
}
