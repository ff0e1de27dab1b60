//! Incremental RocksDB checkpoints of whole jobs: each checkpoint uploads only the SST files the
//! previous one did not have, shared files live exactly as long as a kept checkpoint lists them,
//! and restores open the files natively (same key groups, rocksdb) or convert them (rescale, memory
//! backend) with the output of an uninterrupted run.

use std::collections::BTreeSet;

use sluice_blob::checkpoint::{CheckpointStore, SnapshotMetadata};
use sluice_runtime::task::{EngineState, RestoreSnapshot};

use super::checkpoints::{
    Ran, assert_same, checkpoint_cfg, golden, job, native, rocksdb_state, rt, run, s3_store, slow,
    store,
};
use super::testconn::SourceOptions;

/// Stateful operators of the test job (window, over, group) at parallelism `p`.
fn operator_subtasks(p: u64) -> u64 {
    3 * p
}

fn completed(rt: &tokio::runtime::Runtime, s: &CheckpointStore) -> Vec<SnapshotMetadata> {
    rt.block_on(async {
        let mut out = Vec::new();
        for h in s.list_completed().await.expect("list") {
            let m = s.load(&h.metadata_key()).await.expect("metadata");
            s.verify(&h.dir, &m)
                .await
                .expect("a completed checkpoint is whole");
            out.push(m);
        }
        out
    })
}

fn shared_paths(m: &SnapshotMetadata) -> BTreeSet<String> {
    m.shared_files.iter().map(|f| f.path.clone()).collect()
}

fn uploaded(m: &SnapshotMetadata) -> u64 {
    EngineState::from_json(&m.engine_state)
        .expect("engine state")
        .subtasks
        .iter()
        .map(|s| s.uploaded_bytes)
        .sum()
}

/// Every shared object under the job root.
fn shared_objects(rt: &tokio::runtime::Runtime, s: &CheckpointStore) -> BTreeSet<String> {
    let root = s.root().clone();
    rt.block_on(
        s.blob_store()
            .list_all(Some(&root.join("shared").expect("key"))),
    )
    .expect("list shared")
    .into_iter()
    .filter_map(|o| o.key.relative_to(&root).map(str::to_string))
    .collect()
}

/// A checkpointed run of the test job on RocksDB at parallelism 2 with incremental checkpoints;
/// checks what each checkpoint uploaded and returns the run and its completed checkpoints.
fn incremental_run(
    rt: &tokio::runtime::Runtime,
    gen1: &CheckpointStore,
    rocks: &std::path::Path,
    retain: usize,
    source: SourceOptions,
    expected: &[Vec<String>],
) -> (Ran, Vec<SnapshotMetadata>) {
    let mut j = job(2, source);
    j.state = rocksdb_state(rocks.to_path_buf());
    j.native = native(true);
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(40, retain)));
    let b = run(j).expect("checkpointed run");
    assert_same(expected, &b.committed, "incremental checkpoints");
    let metas = completed(rt, gen1);
    assert!(metas.len() >= 3, "{} checkpoints", metas.len());
    let mut reused_bytes = 0u64;
    for pair in metas.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let state = EngineState::from_json(&next.engine_state).expect("engine state");
        let native_ops = state
            .subtasks
            .iter()
            .flat_map(|s| &s.operators)
            .filter(|o| o.native.is_some())
            .count() as u64;
        assert_eq!(native_ops, operator_subtasks(2), "every operator is native");
        // The metadata lists every shared file an operator refers to.
        let listed: BTreeSet<String> = state
            .subtasks
            .iter()
            .flat_map(|s| &s.operators)
            .flat_map(|o| o.native.iter().flat_map(|n| &n.files))
            .filter(|f| f.shared)
            .map(|f| f.file.path.clone())
            .collect();
        assert_eq!(listed, shared_paths(next));
        if next.checkpoint_id != prev.checkpoint_id + 1 {
            continue;
        }
        // What the previous checkpoint had is not uploaded again: at most the own files and the
        // shared files that are new.
        let before = shared_paths(prev);
        let own: u64 = next.files.iter().map(|f| f.size_bytes).sum();
        let new: u64 = next
            .shared_files
            .iter()
            .filter(|f| !before.contains(&f.path))
            .map(|f| f.size_bytes)
            .sum();
        let up = uploaded(next);
        assert!(
            up <= own + new,
            "checkpoint {} uploaded {up} bytes; own files {own}, new shared files {new}",
            next.checkpoint_id
        );
        reused_bytes += next
            .shared_files
            .iter()
            .filter(|f| before.contains(&f.path))
            .map(|f| f.size_bytes)
            .sum::<u64>();
    }
    assert!(reused_bytes > 0, "no checkpoint reused a shared file");
    let records = &b.report.checkpoints.history;
    assert!(
        records.iter().any(
            |r| r.checkpointed_size_bytes > 0 && r.checkpointed_size_bytes < r.state_size_bytes
        ),
        "no checkpoint was smaller than its state: {records:?}"
    );
    (b, metas)
}

#[test]
fn incremental_checkpoints_share_files_and_restore_natively_rescaled_and_into_memory() {
    let expected = golden();
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = tempfile::tempdir().expect("rocksdb dir");
    let gen1 = store(&rt, dir.path(), 1);
    // Slow enough for several checkpoints even on a loaded machine (a 40 ms interval).
    let source = SourceOptions { batch: 5, ..slow() };
    let (b, metas) = incremental_run(&rt, &gen1, rocks.path(), 1000, source, &expected);
    let mid = &metas[metas.len() / 2];
    let first = &metas[0];
    let restore_from = |s: &CheckpointStore, m: &SnapshotMetadata| {
        let dir = gen1.checkpoint_dir(m.checkpoint_id).expect("dir");
        rt.block_on(RestoreSnapshot::load(s, &dir)).expect("load")
    };

    // Rescaled to 3: each new subtask converts the native files of the old ones it overlaps.
    let gen2 = store(&rt, dir.path(), 2);
    let mut j = job(3, slow());
    j.state = rocksdb_state(rocks.path().to_path_buf());
    j.native = native(true);
    j.checkpointing = Some((gen2.clone(), checkpoint_cfg(40, 1000)));
    j.restore = Some(restore_from(&gen2, mid));
    j.seed = b.committed.before(mid.checkpoint_id);
    let c = run(j).expect("restored at parallelism 3");
    assert_same(&expected, &c.committed, "rocksdb, parallelism 2 -> 3");
    assert_eq!(
        (c.restored_native, c.restored_converted),
        (0, operator_subtasks(4)),
        "new subtasks 0, 1, 2 read 1, 2 and 1 old subtasks of each operator"
    );

    // Into the memory backend at the same parallelism: converted.
    let gen3 = store(&rt, dir.path(), 3);
    let mut j = job(2, slow());
    j.native = native(false);
    j.checkpointing = Some((gen3.clone(), checkpoint_cfg(40, 1000)));
    j.restore = Some(restore_from(&gen3, mid));
    j.seed = b.committed.before(mid.checkpoint_id);
    let c = run(j).expect("restored into memory");
    assert_same(&expected, &c.committed, "rocksdb -> memory");
    assert_eq!(
        (c.restored_native, c.restored_converted),
        (0, operator_subtasks(2))
    );

    // Same parallelism on rocksdb: the files are opened as the database; retention keeps 2.
    let listed_before: BTreeSet<String> = completed(&rt, &gen3)
        .iter()
        .flat_map(shared_paths)
        .collect();
    let gen4 = store(&rt, dir.path(), 4);
    let mut j = job(2, slow());
    j.state = rocksdb_state(rocks.path().to_path_buf());
    j.native = native(true);
    j.checkpointing = Some((gen4.clone(), checkpoint_cfg(40, 2)));
    // From the first checkpoint: most of the input is left, for checkpoints and retention.
    j.restore = Some(restore_from(&gen4, first));
    j.seed = b.committed.before(first.checkpoint_id);
    let c = run(j).expect("restored natively");
    assert_same(&expected, &c.committed, "rocksdb natively");
    assert_eq!(
        (c.restored_native, c.restored_converted),
        (operator_subtasks(2), 0)
    );
    // The newest two checkpoints are kept; a shared file of the older generations is still
    // there only when a kept checkpoint lists it.
    let kept = completed(&rt, &gen4);
    assert_eq!(kept.len(), 2, "retention kept the newest two");
    assert_eq!(kept.last().map(|m| m.generation), Some(4));
    let kept_shared: BTreeSet<String> = kept.iter().flat_map(shared_paths).collect();
    let present = shared_objects(&rt, &gen4);
    assert!(kept_shared.is_subset(&present));
    let stale: Vec<&String> = present
        .intersection(&listed_before)
        .filter(|p| !kept_shared.contains(*p))
        .collect();
    assert!(
        stale.is_empty(),
        "shared files no kept checkpoint lists: {stale:?}"
    );
    assert!(
        listed_before.iter().any(|p| !present.contains(p)),
        "retention deleted no shared file"
    );
}

#[test]
fn incremental_checkpoints_on_s3_restore_natively_and_into_memory() {
    let expected = golden();
    let rt = rt();
    let bucket = format!(
        "incr-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let rocks = tempfile::tempdir().expect("rocksdb dir");
    let gen1 = s3_store(&rt, &bucket, 1);
    // Slower than on files: uploads to S3 take longer, and the run needs several checkpoints.
    let source = SourceOptions { batch: 5, ..slow() };
    let (b, metas) = incremental_run(&rt, &gen1, rocks.path(), 3, source, &expected);
    assert!(metas.len() <= 3, "retention kept {}", metas.len());
    let kept_shared: BTreeSet<String> = metas.iter().flat_map(shared_paths).collect();
    let present = shared_objects(&rt, &gen1);
    assert!(kept_shared.is_subset(&present));
    let latest = metas.last().expect("a checkpoint").clone();
    let latest_dir = gen1.checkpoint_dir(latest.checkpoint_id).expect("dir");

    let gen2 = s3_store(&rt, &bucket, 2);
    let mut j = job(2, slow());
    j.state = rocksdb_state(rocks.path().to_path_buf());
    j.native = native(true);
    j.checkpointing = Some((gen2.clone(), checkpoint_cfg(40, 1000)));
    j.restore = Some(
        rt.block_on(RestoreSnapshot::load(&gen2, &latest_dir))
            .expect("load"),
    );
    j.seed = b.committed.before(latest.checkpoint_id);
    let c = run(j).expect("restored natively from S3");
    assert_same(&expected, &c.committed, "S3, rocksdb natively");
    assert_eq!(
        (c.restored_native, c.restored_converted),
        (operator_subtasks(2), 0)
    );

    let gen3 = s3_store(&rt, &bucket, 3);
    let mut j = job(1, slow());
    j.native = native(false);
    j.checkpointing = Some((gen3.clone(), checkpoint_cfg(40, 1000)));
    j.restore = Some(
        rt.block_on(RestoreSnapshot::load(&gen3, &latest_dir))
            .expect("load"),
    );
    j.seed = b.committed.before(latest.checkpoint_id);
    let c = run(j).expect("restored into memory from S3");
    assert_same(
        &expected,
        &c.committed,
        "S3, rocksdb -> memory at parallelism 1",
    );
    assert_eq!(
        (c.restored_native, c.restored_converted),
        (0, operator_subtasks(2))
    );
}
