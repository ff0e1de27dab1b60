//! Checkpoint and savepoint storage for the JobManager.
//!
//! A snapshot is committed by writing its metadata file last, create-if-absent. The path
//! carries the run generation, and the **fencing rule** is:
//!
//! 1. A cluster of generation `g` first [`claim`](CheckpointStore::claim)s it (writes
//!    `gen-g/_generation`) before it reads the latest checkpoint to restore from.
//! 2. A writer at `g` refuses to write a commit point, or to delete anything for retention,
//!    when any object exists under a newer generation (`gen-h`, `h > g`); it checks before
//!    writing and again after writing, before it reports success. A commit that the second
//!    check finds superseded is reported as [`CheckpointError::Fenced`] and left in place: the
//!    newer cluster may already have restored from it, so the stale writer must stop, not
//!    clean up.
//! 3. [`latest_completed`](CheckpointStore::latest_completed) orders completed checkpoints by
//!    `(generation, checkpoint_id)`: the highest generation first, so an older cluster can
//!    never shadow a newer one's checkpoint, whatever ids it uses.
//!
//! Why this is enough: the object stores here are strongly consistent (list after write). If a
//! stale writer's post-commit check does not see the newer claim, the claim was written after
//! the commit, so the newer cluster's read of the latest checkpoint sees that commit.

mod layout;
pub mod metadata;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;

pub use layout::{
    GENERATION_MARKER, MAX_CHECKPOINT_ID, MAX_GENERATION, METADATA_FILE, SAVEPOINTS_DIR,
    SHARED_DIR, checkpoint_dir, generation_dir, parse_checkpoint, parse_generation,
};
pub use metadata::{FORMAT_VERSION, FileRef, SnapshotKind, SnapshotMetadata};

use crate::{BlobError, BlobPath, BlobStore, DeleteReport, ObjectMeta};

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Blob(#[from] BlobError),

    /// A newer run generation exists: this writer is stale and must stop.
    #[error(
        "generation {generation} is fenced: generation {newer} exists under {root} ({action} refused)"
    )]
    Fenced {
        root: String,
        generation: u64,
        newer: u64,
        action: &'static str,
    },

    /// The commit point already exists (a retried or duplicate commit).
    #[error("{key} is already committed")]
    AlreadyCommitted { key: String },

    #[error("corrupt snapshot metadata {key}: {reason}")]
    CorruptMetadata { key: String, reason: String },

    /// A data file does not match its reference in the metadata (torn or partial upload,
    /// or later damage).
    #[error("torn data file {key}: {reason}")]
    TornFile { key: String, reason: String },

    #[error("invalid checkpoint request: {0}")]
    Invalid(String),
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Where a committed snapshot's metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHandle {
    pub generation: u64,
    pub checkpoint_id: u64,
    /// The snapshot's directory (its data files and `_metadata`).
    pub dir: BlobPath,
}

impl CheckpointHandle {
    pub fn metadata_key(&self) -> BlobPath {
        self.dir.join_path(&metadata_segment())
    }
}

/// A committed checkpoint with its decoded, checksum-verified metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedCheckpoint {
    pub handle: CheckpointHandle,
    pub metadata: SnapshotMetadata,
}

/// What retention removed and kept.
#[derive(Debug, Default)]
pub struct RetentionReport {
    pub kept: Vec<CheckpointHandle>,
    /// Completed checkpoints removed, with the objects deleted for each.
    pub removed: Vec<(CheckpointHandle, DeleteReport)>,
    /// Directories of checkpoints that never committed (older than every kept one), removed.
    pub abandoned: Vec<(BlobPath, DeleteReport)>,
    /// Shared files that only removed checkpoints referenced, deleted.
    pub shared_deleted: Vec<BlobPath>,
}

/// Checkpoints and savepoints of one job, as written by the cluster of one run generation.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn BlobStore>,
    root: BlobPath,
    generation: u64,
}

impl CheckpointStore {
    /// The job's storage under `root` as seen by the cluster of run `generation`.
    pub fn new(store: Arc<dyn BlobStore>, root: BlobPath, generation: u64) -> Result<Self> {
        if generation > MAX_GENERATION {
            return Err(CheckpointError::Invalid(format!(
                "generation {generation} exceeds {MAX_GENERATION}"
            )));
        }
        Ok(Self {
            store,
            root,
            generation,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn root(&self) -> &BlobPath {
        &self.root
    }

    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// The directory of checkpoint `checkpoint_id` of this generation.
    pub fn checkpoint_dir(&self, checkpoint_id: u64) -> Result<BlobPath> {
        if checkpoint_id > MAX_CHECKPOINT_ID {
            return Err(CheckpointError::Invalid(format!(
                "checkpoint id {checkpoint_id} exceeds {MAX_CHECKPOINT_ID}"
            )));
        }
        Ok(self.root.join(&format!(
            "{}/{}",
            generation_dir(self.generation),
            layout::checkpoint_dir(checkpoint_id)
        ))?)
    }

    /// The directory of a savepoint; `savepoint_id` must be a single key segment.
    pub fn savepoint_dir(&self, savepoint_id: &str) -> Result<BlobPath> {
        if savepoint_id.contains('/') || savepoint_id == METADATA_FILE {
            return Err(CheckpointError::Invalid(format!(
                "savepoint id {savepoint_id:?} must be one path segment"
            )));
        }
        Ok(self.root.join(SAVEPOINTS_DIR)?.join(savepoint_id)?)
    }

    /// Takes over this generation: writes its marker (idempotent for the same generation),
    /// then fails with [`CheckpointError::Fenced`] when a newer generation already exists.
    /// Call it before reading the checkpoint to restore from.
    pub async fn claim(&self) -> Result<()> {
        let key = self.root.join(&format!(
            "{}/{GENERATION_MARKER}",
            generation_dir(self.generation)
        ))?;
        let body = serde_json::json!({
            "generation": self.generation,
            "claimed_at_ms": now_ms(),
        });
        match self
            .store
            .put_if_absent(&key, Bytes::from(body.to_string()))
            .await
        {
            Ok(()) | Err(BlobError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.ensure_not_fenced("claim").await
    }

    /// The newest generation above this one that has any object, if any. Lists only the
    /// job root's directories (one request for up to 1000 generations); it does not rely on
    /// the store's key order, which differs between S3 implementations.
    pub async fn newer_generation(&self) -> Result<Option<u64>> {
        let dirs = self.store.list_dirs(Some(&self.root)).await?;
        Ok(dirs
            .iter()
            .filter_map(|d| parse_generation(d))
            .filter(|g| *g > self.generation)
            .max())
    }

    async fn ensure_not_fenced(&self, action: &'static str) -> Result<()> {
        match self.newer_generation().await? {
            Some(newer) => Err(CheckpointError::Fenced {
                root: format!("{}/{}", self.store.location(), self.root),
                generation: self.generation,
                newer,
                action,
            }),
            None => Ok(()),
        }
    }

    /// Uploads a data file of a checkpoint or savepoint `dir` and returns its reference.
    pub async fn write_file(&self, dir: &BlobPath, name: &str, data: Bytes) -> Result<FileRef> {
        let key = dir.join(name)?;
        let size_bytes = data.len() as u64;
        let crc32 = crc32fast::hash(&data);
        self.store.put(&key, data).await?;
        Ok(FileRef {
            path: name.to_string(),
            size_bytes,
            crc32,
        })
    }

    /// Uploads a local file (streamed, multipart on S3) as a data file of `dir`.
    pub async fn write_local_file(
        &self,
        dir: &BlobPath,
        name: &str,
        path: &std::path::Path,
    ) -> Result<FileRef> {
        let key = dir.join(name)?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| BlobError::Io {
                store: self.store.location().to_string(),
                op: "open local file for upload",
                key: format!("{key} (from {})", path.display()),
                source,
            })?;
        let hasher = Arc::new(Mutex::new(crc32fast::Hasher::new()));
        let h = hasher.clone();
        let body = crate::file_chunks(file)
            .map(move |chunk| {
                if let Ok(b) = &chunk {
                    h.lock().unwrap_or_else(PoisonError::into_inner).update(b);
                }
                chunk
            })
            .boxed();
        let size_bytes = self.store.put_stream(&key, body).await?;
        let crc32 = hasher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .finalize();
        Ok(FileRef {
            path: name.to_string(),
            size_bytes,
            crc32,
        })
    }

    /// Commits a checkpoint of this generation: fencing check, metadata create-if-absent,
    /// fencing check again. Success means the checkpoint is durable and no newer generation
    /// had started when it became visible.
    pub async fn commit(&self, metadata: &SnapshotMetadata) -> Result<CompletedCheckpoint> {
        if metadata.generation != self.generation || metadata.kind != SnapshotKind::Checkpoint {
            return Err(CheckpointError::Invalid(format!(
                "a writer at generation {} cannot commit a {:?} of generation {}",
                self.generation, metadata.kind, metadata.generation
            )));
        }
        // Retention deletes shared files by these paths: anything outside `shared/` is refused
        // here rather than deleted there.
        if let Some(f) = metadata
            .shared_files
            .iter()
            .find(|f| !is_shared_path(&f.path))
        {
            return Err(CheckpointError::Invalid(format!(
                "checkpoint {} lists shared file {:?}, which is not under {SHARED_DIR}/",
                metadata.checkpoint_id, f.path
            )));
        }
        let handle = CheckpointHandle {
            generation: self.generation,
            checkpoint_id: metadata.checkpoint_id,
            dir: self.checkpoint_dir(metadata.checkpoint_id)?,
        };
        self.commit_at(&handle.metadata_key(), metadata).await?;
        Ok(CompletedCheckpoint {
            handle,
            metadata: metadata.clone(),
        })
    }

    /// Commits a savepoint under `savepoints/{savepoint_id}/`, with the same fencing.
    pub async fn commit_savepoint(
        &self,
        savepoint_id: &str,
        metadata: &SnapshotMetadata,
    ) -> Result<BlobPath> {
        if metadata.kind != SnapshotKind::Savepoint || !metadata.shared_files.is_empty() {
            return Err(CheckpointError::Invalid(format!(
                "savepoint {savepoint_id} must be of kind savepoint and self-contained (no shared files)"
            )));
        }
        let key = self.savepoint_dir(savepoint_id)?.join(METADATA_FILE)?;
        self.commit_at(&key, metadata).await?;
        Ok(key)
    }

    async fn commit_at(&self, key: &BlobPath, metadata: &SnapshotMetadata) -> Result<()> {
        let body = metadata::encode(metadata)?;
        self.ensure_not_fenced("commit").await?;
        match self.store.put_if_absent(key, Bytes::from(body)).await {
            Ok(()) => {}
            Err(BlobError::AlreadyExists { .. }) => {
                return Err(CheckpointError::AlreadyCommitted {
                    key: format!("{}/{key}", self.store.location()),
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.ensure_not_fenced("declaring the commit successful")
            .await
    }

    /// Every committed checkpoint of every generation, ascending by `(generation, id)`.
    pub async fn list_completed(&self) -> Result<Vec<CheckpointHandle>> {
        let mut out: Vec<CheckpointHandle> = self
            .checkpoint_objects()
            .await?
            .into_iter()
            .filter(|(_, _, rest, _)| rest == METADATA_FILE)
            .map(|(generation, checkpoint_id, _, dir)| CheckpointHandle {
                generation,
                checkpoint_id,
                dir,
            })
            .collect();
        out.sort_by_key(|h| (h.generation, h.checkpoint_id));
        Ok(out)
    }

    /// `(generation, checkpoint id, path below the checkpoint dir, checkpoint dir)` of every
    /// object in a checkpoint directory.
    async fn checkpoint_objects(&self) -> Result<Vec<(u64, u64, String, BlobPath)>> {
        let mut out = Vec::new();
        for o in self.store.list_all(Some(&self.root)).await? {
            let Some(rel) = o.key.relative_to(&self.root) else {
                continue;
            };
            let mut parts = rel.splitn(3, '/');
            let (Some(g), Some(c), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if let (Some(g), Some(id)) = (parse_generation(g), parse_checkpoint(c)) {
                let dir =
                    self.root
                        .join(&format!("{}/{}", generation_dir(g), checkpoint_dir(id)))?;
                out.push((g, id, rest.to_string(), dir));
            }
        }
        Ok(out)
    }

    /// The newest committed checkpoint (highest generation, then highest id), with its
    /// metadata read and verified. A corrupt newest metadata file is an error, not a silent
    /// fall-back to an older checkpoint.
    pub async fn latest_completed(&self) -> Result<Option<CompletedCheckpoint>> {
        let Some(handle) = self.list_completed().await?.pop() else {
            return Ok(None);
        };
        let metadata = self.load(&handle.metadata_key()).await?;
        Ok(Some(CompletedCheckpoint { handle, metadata }))
    }

    /// Reads and verifies a metadata file.
    pub async fn load(&self, metadata_key: &BlobPath) -> Result<SnapshotMetadata> {
        let data = self.store.get(metadata_key).await?;
        metadata::decode(&format!("{}/{metadata_key}", self.store.location()), &data)
    }

    /// Reads a savepoint's metadata.
    pub async fn load_savepoint(&self, savepoint_id: &str) -> Result<SnapshotMetadata> {
        self.load(&self.savepoint_dir(savepoint_id)?.join(METADATA_FILE)?)
            .await
    }

    /// Reads a data file and checks its size and CRC. `dir` is the snapshot's directory for
    /// its own files, and [`root`](Self::root) for shared files.
    pub async fn read_file(&self, dir: &BlobPath, file: &FileRef) -> Result<Bytes> {
        let key = dir.join(&file.path)?;
        let data = self.store.get(&key).await?;
        let torn = |reason: String| CheckpointError::TornFile {
            key: format!("{}/{key}", self.store.location()),
            reason,
        };
        if data.len() as u64 != file.size_bytes {
            return Err(torn(format!(
                "{} bytes, the metadata records {}",
                data.len(),
                file.size_bytes
            )));
        }
        let crc = crc32fast::hash(&data);
        if crc != file.crc32 {
            return Err(torn(format!(
                "CRC-32 {crc:08x}, the metadata records {:08x}",
                file.crc32
            )));
        }
        Ok(data)
    }

    /// Downloads snapshot files into local paths, `concurrency` at a time, each streamed to
    /// its file with its size and CRC checked on the way (nothing is held in memory, and
    /// nothing is fsynced: the files are a restore's scratch copy). Returns the bytes written.
    pub async fn download_files(
        &self,
        files: &[(BlobPath, FileRef, std::path::PathBuf)],
        concurrency: usize,
    ) -> Result<u64> {
        let mut total = 0;
        let mut each = futures::stream::iter(
            files
                .iter()
                .map(|(dir, f, to)| self.download_file(dir, f, to)),
        )
        .buffer_unordered(concurrency.max(1));
        while let Some(n) = each.next().await {
            total += n?;
        }
        Ok(total)
    }

    async fn download_file(
        &self,
        dir: &BlobPath,
        file: &FileRef,
        to: &std::path::Path,
    ) -> Result<u64> {
        use futures::TryStreamExt;
        use tokio::io::AsyncWriteExt;
        let key = dir.join(&file.path)?;
        let io_err = |op: &'static str, source: std::io::Error| BlobError::Io {
            store: self.store.location().to_string(),
            op,
            key: format!("{key} (to {})", to.display()),
            source,
        };
        let mut body = self.store.get_stream(&key).await?;
        let mut out = tokio::fs::File::create(to)
            .await
            .map_err(|e| io_err("create local file", e))?;
        let mut crc = crc32fast::Hasher::new();
        let mut n = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| io_err("download", e))? {
            crc.update(&chunk);
            n += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| io_err("write local file", e))?;
        }
        out.flush()
            .await
            .map_err(|e| io_err("write local file", e))?;
        let torn = |reason: String| CheckpointError::TornFile {
            key: format!("{}/{key}", self.store.location()),
            reason,
        };
        if n != file.size_bytes {
            return Err(torn(format!(
                "{n} bytes, the metadata records {}",
                file.size_bytes
            )));
        }
        let crc = crc.finalize();
        if crc != file.crc32 {
            return Err(torn(format!(
                "CRC-32 {crc:08x}, the metadata records {:08x}",
                file.crc32
            )));
        }
        Ok(n)
    }

    /// Checks that every file of a snapshot exists with the recorded size (one HEAD each;
    /// [`read_file`](Self::read_file) also checks the CRC when the file is read).
    pub async fn verify(&self, dir: &BlobPath, metadata: &SnapshotMetadata) -> Result<()> {
        let own = metadata.files.iter().map(|f| (dir, f));
        let shared = metadata.shared_files.iter().map(|f| (&self.root, f));
        verify_files(self.store.as_ref(), own.chain(shared)).await
    }

    /// Keeps the newest `keep` completed checkpoints (across generations) and deletes the
    /// others, metadata first so that a half-deleted checkpoint is never seen as complete;
    /// also deletes directories of never-committed checkpoints older than every kept one.
    /// Refused when a newer generation exists.
    ///
    /// Shared files (under `shared/`) are reference-counted over the metadata of the
    /// checkpoints themselves, not over memory, so the count survives a JobManager restart: a
    /// shared file that a removed checkpoint lists and no kept checkpoint (of any generation)
    /// lists is deleted, before the removed checkpoint's metadata, so that a crash in between
    /// leaves the metadata for the next pass to find them again. The removed checkpoints are
    /// the oldest, so restores (from the newest) never see one in that state. Shared files
    /// that no completed checkpoint lists (uploaded for a checkpoint that was then aborted)
    /// are left alone: a checkpoint in flight may be about to list them.
    pub async fn retain_last(&self, keep: usize) -> Result<RetentionReport> {
        if keep == 0 {
            return Err(CheckpointError::Invalid(
                "retention must keep at least one completed checkpoint".into(),
            ));
        }
        self.ensure_not_fenced("retention").await?;
        let objects = self.checkpoint_objects().await?;
        let mut completed: Vec<CheckpointHandle> = objects
            .iter()
            .filter(|(_, _, rest, _)| rest == METADATA_FILE)
            .map(|(g, id, _, dir)| CheckpointHandle {
                generation: *g,
                checkpoint_id: *id,
                dir: dir.clone(),
            })
            .collect();
        completed.sort_by_key(|h| (h.generation, h.checkpoint_id));
        let split = completed.len().saturating_sub(keep);
        let kept = completed.split_off(split);
        let mut report = RetentionReport {
            kept,
            ..Default::default()
        };
        let Some(oldest_kept) = report.kept.first().map(|h| (h.generation, h.checkpoint_id)) else {
            return Ok(report);
        };
        let mut kept_shared = std::collections::HashSet::new();
        for h in &report.kept {
            let m = self.load(&h.metadata_key()).await?;
            kept_shared.extend(m.shared_files.into_iter().map(|f| f.path));
        }
        for h in completed {
            let meta_key = h.metadata_key();
            let shared = match self.load(&meta_key).await {
                Ok(m) => m.shared_files,
                // Deleted concurrently (another retention pass).
                Err(CheckpointError::Blob(e)) if e.is_not_found() => Vec::new(),
                Err(e) => return Err(e),
            };
            for f in shared {
                if kept_shared.contains(&f.path) || !is_shared_path(&f.path) {
                    continue;
                }
                let key = self.root.join(&f.path)?;
                if report.shared_deleted.contains(&key) {
                    continue;
                }
                self.store.delete(&key).await?;
                report.shared_deleted.push(key);
            }
            let meta_size = match self.store.head(&meta_key).await {
                Ok(m) => Some(m.size_bytes),
                // Deleted concurrently (another retention pass): nothing to report for it.
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            self.store.delete(&meta_key).await?;
            let mut deleted = self.store.delete_prefix(&h.dir).await?;
            if let Some(size_bytes) = meta_size {
                deleted.deleted.insert(
                    0,
                    ObjectMeta {
                        key: meta_key,
                        size_bytes,
                    },
                );
            }
            report.removed.push((h, deleted));
        }
        let mut abandoned: Vec<(u64, u64, BlobPath)> = objects
            .into_iter()
            .filter(|(g, id, _, _)| (*g, *id) < oldest_kept)
            .map(|(g, id, _, dir)| (g, id, dir))
            .collect();
        abandoned.sort_by_key(|(g, id, _)| (*g, *id));
        abandoned.dedup_by_key(|(g, id, _)| (*g, *id));
        for (_, _, dir) in abandoned {
            if report.removed.iter().any(|(h, _)| h.dir == dir) {
                continue;
            }
            let deleted = self.store.delete_prefix(&dir).await?;
            report.abandoned.push((dir, deleted));
        }
        Ok(report)
    }

    /// Shared files that no completed checkpoint (of any generation) lists: uploaded for a
    /// checkpoint that was then aborted, or by an attempt that died before the checkpoint
    /// that would have listed them completed. Retention never deletes them, since a running
    /// attempt may list such a file in its next checkpoint; so this is only asked while no
    /// attempt runs (the JobManager does, before it deploys one). Once orphaned, a file
    /// stays so: a new attempt only reuses files of the checkpoint it restores, so the
    /// answer may be deleted later, concurrently with the new attempt.
    pub async fn orphaned_shared_files(&self) -> Result<Vec<BlobPath>> {
        let objects = self.store.list_all(Some(&self.root)).await?;
        let mut listed = std::collections::HashSet::new();
        for o in &objects {
            let Some(rel) = o.key.relative_to(&self.root) else {
                continue;
            };
            let mut parts = rel.splitn(3, '/');
            let (Some(g), Some(c), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if rest != METADATA_FILE
                || parse_generation(g).is_none()
                || parse_checkpoint(c).is_none()
            {
                continue;
            }
            match self.load(&o.key).await {
                Ok(m) => listed.extend(m.shared_files.into_iter().map(|f| f.path)),
                // Deleted concurrently by retention: a newer checkpoint lists what it kept.
                Err(CheckpointError::Blob(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(objects
            .into_iter()
            .filter(|o| {
                o.key
                    .relative_to(&self.root)
                    .is_some_and(|rel| is_shared_path(rel) && !listed.contains(rel))
            })
            .map(|o| o.key)
            .collect())
    }

    /// Deletes objects (orphaned shared files); one already gone is not an error.
    pub async fn delete_all(&self, keys: &[BlobPath]) -> Result<()> {
        for k in keys {
            match self.store.delete(k).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes a savepoint's files (see [`dispose`]).
    pub async fn dispose_savepoint(&self, savepoint_id: &str) -> Result<DeleteReport> {
        Ok(dispose(self.store.as_ref(), &self.savepoint_dir(savepoint_id)?).await?)
    }
}

/// Reads and checks a self-contained snapshot (a savepoint) in any store, for example one a
/// tenant asks to import by URI: the metadata decodes and verifies, and every file exists with
/// its recorded size. A snapshot that references shared files is refused: it cannot be used
/// outside the job it belongs to.
pub async fn inspect_snapshot(store: &dyn BlobStore, dir: &BlobPath) -> Result<SnapshotMetadata> {
    let meta_key = dir.join(METADATA_FILE)?;
    let data = store.get(&meta_key).await?;
    let metadata = metadata::decode(&format!("{}/{meta_key}", store.location()), &data)?;
    if !metadata.shared_files.is_empty() {
        return Err(CheckpointError::Invalid(format!(
            "{}/{dir} references {} shared file(s), so it is not self-contained",
            store.location(),
            metadata.shared_files.len()
        )));
    }
    verify_files(store, metadata.files.iter().map(|f| (dir, f))).await?;
    Ok(metadata)
}

async fn verify_files<'a>(
    store: &dyn BlobStore,
    files: impl Iterator<Item = (&'a BlobPath, &'a FileRef)>,
) -> Result<()> {
    for (base, f) in files {
        let key = base.join(&f.path)?;
        let meta = store.head(&key).await.map_err(|e| match e {
            BlobError::NotFound { store, key } => CheckpointError::TornFile {
                key: format!("{store}/{key}"),
                reason: "missing".into(),
            },
            e => e.into(),
        })?;
        if meta.size_bytes != f.size_bytes {
            return Err(CheckpointError::TornFile {
                key: format!("{}/{key}", store.location()),
                reason: format!(
                    "{} bytes, the metadata records {}",
                    meta.size_bytes, f.size_bytes
                ),
            });
        }
    }
    Ok(())
}

/// Deletes everything under `prefix`: every `_metadata` first (so a half-disposed snapshot is
/// never taken for a complete one), then the data files; reports what was deleted. Missing
/// objects are not errors, so a failed disposal can simply be run again. Needs no running
/// job: the control plane calls it with the savepoint's prefix.
pub async fn dispose(store: &dyn BlobStore, prefix: &BlobPath) -> Result<DeleteReport, BlobError> {
    let objects = store.list_all(Some(prefix)).await?;
    let (metadata, data): (Vec<ObjectMeta>, Vec<ObjectMeta>) = objects
        .into_iter()
        .partition(|o| o.key.file_name() == METADATA_FILE);
    for o in metadata.iter().chain(&data) {
        store.delete(&o.key).await?;
    }
    // Objects written concurrently under the prefix during disposal are deleted too.
    let mut rest = store.delete_prefix(prefix).await?;
    let mut deleted = metadata;
    deleted.extend(data);
    deleted.append(&mut rest.deleted);
    Ok(DeleteReport { deleted })
}

/// The job root of a checkpoint directory (`{root}/gen-…/chk-…`): where its shared files'
/// paths start. `None` for any other directory (a savepoint's has no shared files).
pub fn checkpoint_job_root(dir: &BlobPath) -> Option<BlobPath> {
    let (rest, chk) = dir.as_str().rsplit_once('/')?;
    let (root, generation) = rest.rsplit_once('/')?;
    parse_checkpoint(chk)?;
    parse_generation(generation)?;
    BlobPath::new(root).ok()
}

/// Whether a [`SnapshotMetadata::shared_files`] path lies under `shared/` (and nowhere else).
fn is_shared_path(path: &str) -> bool {
    path.strip_prefix(SHARED_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != "..")
        })
}

fn metadata_segment() -> BlobPath {
    BlobPath::new(METADATA_FILE).unwrap_or_else(|e| panic!("{METADATA_FILE} is a valid key: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn downloads_stream_to_files_and_refuse_a_torn_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::fs::FsStore::open(tmp.path().join("store"))
            .await
            .expect("store");
        let root = BlobPath::new("org/app").expect("path");
        let st = CheckpointStore::new(Arc::new(store), root.clone(), 1).expect("storage");
        let dir = root.join("gen-0000000001/chk-000000000001").expect("path");
        let mut files = Vec::new();
        for i in 0..6u8 {
            let data = Bytes::from(vec![i; 100_000 + usize::from(i)]);
            let f = st
                .write_file(&dir, &format!("f{i}"), data)
                .await
                .expect("write");
            files.push((dir.clone(), f, tmp.path().join(format!("local-{i}"))));
        }
        let n = st.download_files(&files, 4).await.expect("download");
        assert_eq!(n, (0..6).map(|i| 100_000 + i).sum::<u64>());
        for (i, (_, _, to)) in files.iter().enumerate() {
            assert_eq!(std::fs::read(to).expect("read"), vec![i as u8; 100_000 + i]);
        }
        // A file whose content no longer matches its reference (same size, other bytes).
        st.write_file(&dir, "f3", Bytes::from(vec![9u8; 100_003]))
            .await
            .expect("overwrite");
        match st.download_files(&files, 4).await {
            Err(CheckpointError::TornFile { key, reason }) => {
                assert!(key.ends_with("chk-000000000001/f3"), "{key}");
                assert!(reason.contains("CRC-32"), "{reason}");
            }
            other => panic!("a torn file was accepted: {other:?}"),
        }
    }

    #[test]
    fn the_job_root_of_a_checkpoint_directory() {
        let p = |s: &str| BlobPath::new(s).expect("path");
        assert_eq!(
            checkpoint_job_root(&p("org/app/gen-0000000002/chk-000000000017")),
            Some(p("org/app"))
        );
        for not in [
            "org/app/savepoints/sp-1",
            "gen-0000000002/chk-000000000017",
            "org/app/gen-2/chk-000000000017",
        ] {
            assert_eq!(checkpoint_job_root(&p(not)), None, "{not}");
        }
        assert!(is_shared_path("shared/op/0-of-1/g1-ab-000012.sst"));
        for not in [
            "shared/",
            "shared",
            "gen-1/x",
            "shared/../gen-1/x",
            "shared//x",
        ] {
            assert!(!is_shared_path(not), "{not}");
        }
    }
}
