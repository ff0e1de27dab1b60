//! Checkpoint storage on both backends: generation fencing with two writers, retention, torn
//! file detection, savepoints and disposal.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_blob::checkpoint::{
    CheckpointError, CheckpointStore, CompletedCheckpoint, FileRef, SnapshotKind, SnapshotMetadata,
};
use sluice_blob::{BlobLocation, BlobPath, BlobStore, ByteChunks, ListPage, ObjectMeta};

use crate::{both_backends, key, pattern};

both_backends!(stale_generation_never_overwrites_or_shadows_newer, 120);
both_backends!(commit_fenced_between_write_and_success, 60);
both_backends!(takeover_while_the_old_writer_keeps_committing, 120);
both_backends!(retention_keeps_last_n_and_removes_abandoned, 120);
both_backends!(shared_files_live_while_a_kept_checkpoint_lists_them, 120);
both_backends!(torn_files_and_metadata_are_detected, 60);
both_backends!(savepoint_commit_load_and_dispose, 60);

fn metadata(generation: u64, id: u64, files: Vec<FileRef>) -> SnapshotMetadata {
    SnapshotMetadata {
        job_id: "job-1".into(),
        generation,
        checkpoint_id: id,
        kind: SnapshotKind::Checkpoint,
        created_at_ms: 1_700_000_000_000 + id,
        files,
        shared_files: Vec::new(),
        engine_state: serde_json::json!({ "source_offsets": { "p0": id * 10 } }),
    }
}

/// Uploads two data files and commits checkpoint `id` at `w`'s generation.
async fn checkpoint(w: &CheckpointStore, id: u64) -> Result<CompletedCheckpoint, CheckpointError> {
    let dir = w.checkpoint_dir(id)?;
    let a = w
        .write_file(&dir, "op-1/kg-0.state", pattern(1000 + id as usize, id))
        .await?;
    let b = w
        .write_file(&dir, "op-2/kg-0.state", pattern(10, id + 100))
        .await?;
    w.commit(&metadata(w.generation(), id, vec![a, b])).await
}

fn job_root() -> BlobPath {
    key("org_1/app_1")
}

async fn stale_generation_never_overwrites_or_shadows_newer(
    store: Arc<dyn BlobStore>,
) -> Result<()> {
    let g1 = CheckpointStore::new(store.clone(), job_root(), 1)?;
    let g2 = CheckpointStore::new(store.clone(), job_root(), 2)?;
    g1.claim().await?;
    for id in 1..=3 {
        checkpoint(&g1, id).await?;
    }
    ensure!(g1.latest_completed().await?.map(|c| c.handle.checkpoint_id) == Some(3));

    // The new cluster claims generation 2 and restores from g1's latest.
    g2.claim().await?;
    let restored = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing to restore"))?;
    ensure!((restored.handle.generation, restored.handle.checkpoint_id) == (1, 3));
    ensure!(restored.metadata.engine_state["source_offsets"]["p0"] == 30);

    // The stale cluster can neither commit (not even a higher id) nor run retention.
    for id in [4, 1_000] {
        match checkpoint(&g1, id).await {
            Err(CheckpointError::Fenced {
                generation: 1,
                newer: 2,
                ..
            }) => {}
            other => bail!("stale commit {id}: {other:?}"),
        }
    }
    ensure!(matches!(
        g1.retain_last(1).await,
        Err(CheckpointError::Fenced { .. })
    ));
    ensure!(matches!(
        g1.claim().await,
        Err(CheckpointError::Fenced { .. })
    ));

    // The new generation commits; ids may repeat across generations.
    checkpoint(&g2, 3).await?;
    let latest = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no latest"))?;
    ensure!((latest.handle.generation, latest.handle.checkpoint_id) == (2, 3));

    // Even a stale commit point that got written (a writer that skipped the checks) cannot
    // shadow the newer generation: the highest generation comes first.
    let rogue = g1.checkpoint_dir(9_999)?.join("_metadata")?;
    let body = sluice_blob::checkpoint::metadata::encode(&metadata(1, 9_999, vec![]))?;
    store.put_if_absent(&rogue, Bytes::from(body)).await?;
    let latest = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no latest"))?;
    ensure!((latest.handle.generation, latest.handle.checkpoint_id) == (2, 3));
    // And the newer commit point itself cannot be overwritten.
    match checkpoint(&g2, 3).await {
        Err(CheckpointError::AlreadyCommitted { .. }) => {}
        other => bail!("second commit of the same checkpoint: {other:?}"),
    }
    let listed: Vec<(u64, u64)> = g2
        .list_completed()
        .await?
        .iter()
        .map(|h| (h.generation, h.checkpoint_id))
        .collect();
    ensure!(
        listed == [(1, 1), (1, 2), (1, 3), (1, 9_999), (2, 3)],
        "{listed:?}"
    );
    Ok(())
}

/// Wraps a store and runs a hook just before the first `_metadata` create-if-absent: the
/// newer generation claims between the stale writer's first check and its write.
struct ClaimBeforeCommit {
    inner: Arc<dyn BlobStore>,
    hook: tokio::sync::Mutex<Option<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for ClaimBeforeCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimBeforeCommit")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl BlobStore for ClaimBeforeCommit {
    fn location(&self) -> &BlobLocation {
        self.inner.location()
    }
    async fn put(&self, k: &BlobPath, data: Bytes) -> sluice_blob::Result<()> {
        self.inner.put(k, data).await
    }
    async fn put_stream(&self, k: &BlobPath, body: ByteChunks) -> sluice_blob::Result<u64> {
        self.inner.put_stream(k, body).await
    }
    async fn put_file(&self, k: &BlobPath, path: &Path) -> sluice_blob::Result<u64> {
        self.inner.put_file(k, path).await
    }
    async fn put_if_absent(&self, k: &BlobPath, data: Bytes) -> sluice_blob::Result<()> {
        let hook = if k.file_name() == "_metadata" {
            self.hook.lock().await.take()
        } else {
            None
        };
        if let Some(hook) = hook {
            hook.await;
        }
        self.inner.put_if_absent(k, data).await
    }
    async fn get(&self, k: &BlobPath) -> sluice_blob::Result<Bytes> {
        self.inner.get(k).await
    }
    async fn get_range(&self, k: &BlobPath, r: Range<u64>) -> sluice_blob::Result<Bytes> {
        self.inner.get_range(k, r).await
    }
    async fn get_stream(&self, k: &BlobPath) -> sluice_blob::Result<ByteChunks> {
        self.inner.get_stream(k).await
    }
    async fn head(&self, k: &BlobPath) -> sluice_blob::Result<ObjectMeta> {
        self.inner.head(k).await
    }
    async fn list_page(
        &self,
        prefix: Option<&BlobPath>,
        page_token: Option<&str>,
        max_keys: usize,
    ) -> sluice_blob::Result<ListPage> {
        self.inner.list_page(prefix, page_token, max_keys).await
    }
    async fn list_dirs(&self, prefix: Option<&BlobPath>) -> sluice_blob::Result<Vec<String>> {
        self.inner.list_dirs(prefix).await
    }
    async fn delete(&self, k: &BlobPath) -> sluice_blob::Result<()> {
        self.inner.delete(k).await
    }
    async fn copy(&self, from: &BlobPath, to: &BlobPath) -> sluice_blob::Result<()> {
        self.inner.copy(from, to).await
    }
}

async fn commit_fenced_between_write_and_success(store: Arc<dyn BlobStore>) -> Result<()> {
    let g2 = CheckpointStore::new(store.clone(), job_root(), 2)?;
    let claim = g2.clone();
    let hooked: Arc<dyn BlobStore> = Arc::new(ClaimBeforeCommit {
        inner: store.clone(),
        hook: tokio::sync::Mutex::new(Some(Box::pin(async move {
            claim
                .claim()
                .await
                .unwrap_or_else(|e| panic!("claim of generation 2: {e}"));
        }))),
    });
    let g1 = CheckpointStore::new(hooked, job_root(), 1)?;
    g1.claim().await?;
    match checkpoint(&g1, 5).await {
        Err(CheckpointError::Fenced {
            generation: 1,
            newer: 2,
            action,
            ..
        }) => {
            ensure!(
                action.contains("successful"),
                "fenced at the wrong check: {action}"
            );
        }
        other => bail!("commit raced by a newer claim: {other:?}"),
    }
    // The commit point stays: generation 2 may already have restored from it.
    let seen = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no checkpoint"))?;
    ensure!((seen.handle.generation, seen.handle.checkpoint_id) == (1, 5));
    checkpoint(&g2, 6).await?;
    let latest = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no latest"))?;
    ensure!((latest.handle.generation, latest.handle.checkpoint_id) == (2, 6));
    Ok(())
}

/// Real concurrency: the old cluster commits as fast as it can while the new one takes over.
/// Every commit the old writer was told succeeded must be visible to the new cluster's restore.
async fn takeover_while_the_old_writer_keeps_committing(store: Arc<dyn BlobStore>) -> Result<()> {
    let g1 = CheckpointStore::new(store.clone(), job_root(), 1)?;
    g1.claim().await?;
    let writer = tokio::spawn(async move {
        let mut succeeded = Vec::new();
        for id in 1..=500 {
            match checkpoint(&g1, id).await {
                Ok(_) => succeeded.push(id),
                Err(CheckpointError::Fenced { .. }) => return Ok((succeeded, Some(id))),
                Err(e) => return Err(e),
            }
        }
        Ok((succeeded, None))
    });
    let g2 = CheckpointStore::new(store.clone(), job_root(), 2)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while g2.list_completed().await?.len() < 3 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the old writer committed nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    g2.claim().await?;
    let restored = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing to restore"))?;
    let (succeeded, fenced_at) = writer.await??;
    let Some(fenced_at) = fenced_at else {
        bail!(
            "the old writer was never fenced ({} commits)",
            succeeded.len()
        );
    };
    let last_ok = succeeded.last().copied().unwrap_or(0);
    ensure!(
        last_ok <= restored.handle.checkpoint_id,
        "commit {last_ok} was reported successful but the restore saw only {}",
        restored.handle.checkpoint_id
    );
    ensure!(fenced_at > last_ok && restored.handle.generation == 1);
    checkpoint(&g2, fenced_at + 1).await?;
    let latest = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no latest"))?;
    ensure!(latest.handle.generation == 2);
    Ok(())
}

async fn retention_keeps_last_n_and_removes_abandoned(store: Arc<dyn BlobStore>) -> Result<()> {
    let g1 = CheckpointStore::new(store.clone(), job_root(), 1)?;
    g1.claim().await?;
    // Checkpoint 1 never committed (its data files are abandoned).
    let abandoned = g1.checkpoint_dir(1)?;
    g1.write_file(&abandoned, "op-1/kg-0.state", pattern(50, 1))
        .await?;
    for id in 2..=4 {
        checkpoint(&g1, id).await?;
    }
    let g2 = CheckpointStore::new(store.clone(), job_root(), 2)?;
    g2.claim().await?;
    for id in 5..=6 {
        checkpoint(&g2, id).await?;
    }
    // Checkpoint 7 is in progress: newer than everything kept, so it stays.
    let in_progress = g2.checkpoint_dir(7)?;
    g2.write_file(&in_progress, "op-1/kg-0.state", pattern(70, 7))
        .await?;

    let report = g2.retain_last(2).await?;
    let kept: Vec<(u64, u64)> = report
        .kept
        .iter()
        .map(|h| (h.generation, h.checkpoint_id))
        .collect();
    ensure!(kept == [(2, 5), (2, 6)], "kept {kept:?}");
    let removed: Vec<(u64, u64)> = report
        .removed
        .iter()
        .map(|(h, _)| (h.generation, h.checkpoint_id))
        .collect();
    ensure!(removed == [(1, 2), (1, 3), (1, 4)], "removed {removed:?}");
    for (h, deleted) in &report.removed {
        ensure!(
            deleted.objects() == 3,
            "{:?} deleted {:?}",
            h,
            deleted.deleted
        );
        ensure!(
            deleted.deleted[0].key.file_name() == "_metadata",
            "metadata not first"
        );
        ensure!(
            store.list_all(Some(&h.dir)).await?.is_empty(),
            "{:?} left files",
            h.dir
        );
    }
    ensure!(report.abandoned.len() == 1 && report.abandoned[0].0 == abandoned);
    ensure!(store.list_all(Some(&abandoned)).await?.is_empty());
    ensure!(
        store.list_all(Some(&in_progress)).await?.len() == 1,
        "in-progress files deleted"
    );

    // Retained checkpoints are whole: every file reads back with its checksum.
    for h in &report.kept {
        let meta = g2.load(&h.metadata_key()).await?;
        g2.verify(&h.dir, &meta).await?;
        for f in &meta.files {
            g2.read_file(&h.dir, f).await?;
        }
    }
    ensure!(
        g2.retain_last(2).await?.removed.is_empty(),
        "second pass removed more"
    );
    ensure!(matches!(
        g2.retain_last(0).await,
        Err(CheckpointError::Invalid(_))
    ));
    Ok(())
}

/// Commits checkpoint `id` listing the shared files `shared` (names under `shared/`), uploading
/// those in `upload` first, as an incremental checkpoint does.
async fn incremental(
    w: &CheckpointStore,
    id: u64,
    shared: &[&str],
    upload: &[&str],
) -> Result<CompletedCheckpoint> {
    let dir = w.checkpoint_dir(id)?;
    let own = w
        .write_file(&dir, "op-1-0-of-1.native/MANIFEST", pattern(30, id))
        .await?;
    let mut refs = Vec::new();
    for name in shared {
        let path = format!("shared/op-1/0-of-1/{name}");
        let data = pattern(100 + name.len(), u64::from(name.as_bytes()[0]));
        if upload.contains(name) {
            w.write_file(w.root(), &path, data.clone()).await?;
        }
        refs.push(FileRef {
            path,
            size_bytes: data.len() as u64,
            crc32: crc32fast::hash(&data),
        });
    }
    let mut m = metadata(w.generation(), id, vec![own]);
    m.shared_files = refs;
    Ok(w.commit(&m).await?)
}

async fn shared_names(store: &Arc<dyn BlobStore>) -> Result<Vec<String>> {
    let root = job_root().join("shared")?;
    let mut names: Vec<String> = store
        .list_all(Some(&root))
        .await?
        .into_iter()
        .map(|o| o.key.file_name().to_string())
        .collect();
    names.sort();
    Ok(names)
}

async fn shared_files_live_while_a_kept_checkpoint_lists_them(
    store: Arc<dyn BlobStore>,
) -> Result<()> {
    let g1 = CheckpointStore::new(store.clone(), job_root(), 1)?;
    g1.claim().await?;
    // Each checkpoint uploads only what the previous one did not have.
    incremental(&g1, 1, &["a.sst", "b.sst"], &["a.sst", "b.sst"]).await?;
    incremental(&g1, 2, &["a.sst", "c.sst"], &["c.sst"]).await?;
    // An aborted checkpoint's upload: no completed checkpoint lists it.
    g1.write_file(g1.root(), "shared/op-1/0-of-1/x.sst", pattern(10, 9))
        .await?;
    let report = g1.retain_last(2).await?;
    ensure!(report.shared_deleted.is_empty(), "{report:?}");

    // The oldest checkpoint goes, and with it b, which no kept checkpoint lists; a stays.
    incremental(&g1, 3, &["a.sst", "c.sst", "d.sst"], &["d.sst"]).await?;
    let report = g1.retain_last(2).await?;
    let deleted: Vec<&str> = report
        .shared_deleted
        .iter()
        .map(|k| k.file_name())
        .collect();
    ensure!(deleted == ["b.sst"], "deleted {deleted:?}");
    ensure!(
        shared_names(&store).await? == ["a.sst", "c.sst", "d.sst", "x.sst"],
        "{:?}",
        shared_names(&store).await?
    );

    // A new generation resumes from checkpoint 3 and lists its files again: g1's files that g2's
    // checkpoints need survive g2's retention, across the JobManager restart.
    let g2 = CheckpointStore::new(store.clone(), job_root(), 2)?;
    g2.claim().await?;
    let latest = g2
        .latest_completed()
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing to resume from"))?;
    ensure!(latest.metadata.shared_files.len() == 3);
    incremental(&g2, 4, &["c.sst", "d.sst", "e.sst"], &["e.sst"]).await?;
    let report = g2.retain_last(2).await?;
    let deleted: Vec<&str> = report
        .shared_deleted
        .iter()
        .map(|k| k.file_name())
        .collect();
    // Checkpoint 2 went; a is still listed by checkpoint 3 (kept).
    ensure!(deleted.is_empty(), "deleted {deleted:?}");
    incremental(&g2, 5, &["d.sst", "e.sst"], &[]).await?;
    let report = g2.retain_last(2).await?;
    let deleted: Vec<&str> = report
        .shared_deleted
        .iter()
        .map(|k| k.file_name())
        .collect();
    ensure!(deleted == ["a.sst"], "deleted {deleted:?}");
    incremental(&g2, 6, &["e.sst"], &[]).await?;
    let report = g2.retain_last(2).await?;
    let deleted: Vec<&str> = report
        .shared_deleted
        .iter()
        .map(|k| k.file_name())
        .collect();
    ensure!(deleted == ["c.sst"], "deleted {deleted:?}");
    ensure!(
        shared_names(&store).await? == ["d.sst", "e.sst", "x.sst"],
        "{:?}",
        shared_names(&store).await?
    );
    // Every kept checkpoint is whole, shared files included.
    for h in &report.kept {
        let meta = g2.load(&h.metadata_key()).await?;
        g2.verify(&h.dir, &meta).await?;
        for f in &meta.shared_files {
            g2.read_file(g2.root(), f).await?;
        }
    }
    // The stale generation can delete nothing, shared files included.
    ensure!(matches!(
        g1.retain_last(1).await,
        Err(CheckpointError::Fenced { .. })
    ));
    ensure!(shared_names(&store).await?.len() == 3);
    // The aborted checkpoint's upload is the only orphan; deleting it twice is fine.
    let orphans = g2.orphaned_shared_files().await?;
    let names: Vec<&str> = orphans.iter().map(|k| k.file_name()).collect();
    ensure!(names == ["x.sst"], "orphans {names:?}");
    g2.delete_all(&orphans).await?;
    g2.delete_all(&orphans).await?;
    ensure!(
        shared_names(&store).await? == ["d.sst", "e.sst"],
        "{:?}",
        shared_names(&store).await?
    );
    ensure!(g2.orphaned_shared_files().await?.is_empty());
    // A shared file outside shared/ is refused at commit (retention deletes by these paths).
    let mut bad = metadata(2, 7, Vec::new());
    bad.shared_files = vec![FileRef {
        path: "gen-0000000002/chk-000000000006/_metadata".into(),
        size_bytes: 1,
        crc32: 0,
    }];
    ensure!(matches!(
        g2.commit(&bad).await,
        Err(CheckpointError::Invalid(_))
    ));
    Ok(())
}

async fn torn_files_and_metadata_are_detected(store: Arc<dyn BlobStore>) -> Result<()> {
    let w = CheckpointStore::new(store.clone(), job_root(), 3)?;
    w.claim().await?;
    let c = checkpoint(&w, 1).await?;
    let f = &c.metadata.files[0];
    let data_key = c.handle.dir.join(&f.path)?;
    let original = store.get(&data_key).await?;

    // A partial upload (truncated) and a damaged one (same size, one bit flipped).
    store
        .put(&data_key, original.slice(..original.len() / 2))
        .await?;
    ensure!(matches!(
        w.verify(&c.handle.dir, &c.metadata).await,
        Err(CheckpointError::TornFile { .. })
    ));
    ensure!(matches!(
        w.read_file(&c.handle.dir, f).await,
        Err(CheckpointError::TornFile { .. })
    ));
    let mut flipped = original.to_vec();
    flipped[7] ^= 0x10;
    store.put(&data_key, Bytes::from(flipped)).await?;
    w.verify(&c.handle.dir, &c.metadata).await?;
    match w.read_file(&c.handle.dir, f).await {
        Err(e @ CheckpointError::TornFile { .. }) => {
            ensure!(e.to_string().contains("CRC-32"), "{e}");
            ensure!(e.to_string().contains(data_key.as_str()), "{e}");
        }
        other => bail!("bit flip not detected: {other:?}"),
    }
    store.delete(&data_key).await?;
    ensure!(matches!(
        w.verify(&c.handle.dir, &c.metadata).await,
        Err(CheckpointError::TornFile { .. })
    ));

    // Local files stream up with their checksum.
    let tmp = tempfile::tempdir()?;
    let local = tmp.path().join("sst");
    let body = pattern((6 << 20) + 5, 11);
    tokio::fs::write(&local, &body).await?;
    let r = w
        .write_local_file(&c.handle.dir, "op-3/000001.sst", &local)
        .await?;
    ensure!(r.size_bytes == body.len() as u64 && r.crc32 == crc32fast::hash(&body));
    ensure!(w.read_file(&c.handle.dir, &r).await? == body);

    // A torn commit point is an error, never silently skipped.
    let meta_key = c.handle.metadata_key();
    let m = store.get(&meta_key).await?;
    store.put(&meta_key, m.slice(..m.len() - 3)).await?;
    match w.latest_completed().await {
        Err(CheckpointError::CorruptMetadata { key, reason }) => {
            ensure!(
                key.contains(meta_key.as_str()) && reason.contains("torn"),
                "{key}: {reason}"
            );
        }
        other => bail!("torn metadata not detected: {other:?}"),
    }
    Ok(())
}

async fn savepoint_commit_load_and_dispose(store: Arc<dyn BlobStore>) -> Result<()> {
    let w = CheckpointStore::new(store.clone(), job_root(), 1)?;
    w.claim().await?;
    let dir = w.savepoint_dir("sp_0001")?;
    ensure!(dir.as_str() == "org_1/app_1/savepoints/sp_0001");
    let f = w.write_file(&dir, "op-1/state", pattern(4000, 3)).await?;
    let mut m = metadata(1, 12, vec![f]);
    m.kind = SnapshotKind::Savepoint;
    let meta_key = w.commit_savepoint("sp_0001", &m).await?;
    ensure!(w.load_savepoint("sp_0001").await? == m);
    ensure!(matches!(
        w.commit_savepoint("sp_0001", &m).await,
        Err(CheckpointError::AlreadyCommitted { .. })
    ));
    ensure!(w.savepoint_dir("a/b").is_err() && w.savepoint_dir("..").is_err());
    // Savepoints are not checkpoints: latest_completed ignores them.
    ensure!(w.latest_completed().await?.is_none());

    // Export: copy the whole savepoint into another store (a tenant's bucket).
    let (_d, other) = crate::fs_store().await;
    let copied =
        sluice_blob::copy_prefix_between(store.as_ref(), &dir, other.as_ref(), &key("export/sp"))
            .await?;
    ensure!(copied.len() == 2);
    // The exported copy is a valid, self-contained snapshot; a damaged one is refused.
    let exported = key("export/sp");
    ensure!(sluice_blob::checkpoint::inspect_snapshot(other.as_ref(), &exported).await? == m);
    other.delete(&exported.join("op-1/state")?).await?;
    ensure!(matches!(
        sluice_blob::checkpoint::inspect_snapshot(other.as_ref(), &exported).await,
        Err(CheckpointError::TornFile { .. })
    ));
    ensure!(
        sluice_blob::checkpoint::inspect_snapshot(other.as_ref(), &key("nothing/here"))
            .await
            .is_err_and(|e| matches!(e, CheckpointError::Blob(ref b) if b.is_not_found()))
    );

    let report = w.dispose_savepoint("sp_0001").await?;
    ensure!(
        report.objects() == 2 && report.deleted[0].key == meta_key,
        "{report:?}"
    );
    ensure!(report.bytes() == store_size(&m) + report.deleted[0].size_bytes);
    ensure!(store.list_all(Some(&dir)).await?.is_empty());
    ensure!(w.load_savepoint("sp_0001").await.is_err());
    // Disposal is idempotent: running it again after success (or a partial failure) is fine.
    ensure!(w.dispose_savepoint("sp_0001").await?.objects() == 0);
    Ok(())
}

fn store_size(m: &SnapshotMetadata) -> u64 {
    m.size_bytes()
}
