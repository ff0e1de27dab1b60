//! The applications' storage in the blob store: `{storage.root}/{org}/{app}/` is an
//! application's job root (checkpoints under `gen-*/chk-*/`, savepoints under
//! `savepoints/{id}/`). The control plane reads it to choose a restore point and removes
//! it when the application is deleted. It opens stores through an injected opener, so this
//! library links no S3 client: the `sluice` binary passes one that knows `s3://`.

use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_blob::{BlobPath, BlobStore};

/// Opens stores by URI (`file://`, and `s3://` when the binary injects an opener that
/// can); shared with the savepoint workers.
pub type BlobOpener = Arc<dyn crate::service::savepoint_runtime::BlobOpener>;

/// The opener of the library alone: the filesystem backend.
pub fn fs_opener() -> BlobOpener {
    Arc::new(crate::service::savepoint_runtime::FsOpener)
}

/// Opens the storage root.
pub async fn open_root(opener: &BlobOpener, root: &str) -> Result<Arc<dyn BlobStore>> {
    opener
        .open(root)
        .await
        .with_context(|| format!("open the storage root {root}"))
}

/// `{org}/{app}` under the storage root.
pub fn app_prefix(org: &str, app: &str) -> Result<BlobPath> {
    Ok(BlobPath::new(format!("{org}/{app}"))?)
}

pub fn job_root(root: &str, org: &str, app: &str) -> String {
    format!("{}/{org}/{app}", root.trim_end_matches('/'))
}

/// Whether a generation newer than `after` completed a checkpoint (its `_metadata`
/// exists): then `latest` is newer than a savepoint written at generation `after`.
pub async fn checkpoint_after(
    store: &dyn BlobStore,
    prefix: &BlobPath,
    after: i64,
) -> Result<bool> {
    for gen_dir in store.list_dirs(Some(prefix)).await? {
        let Some(n) = gen_dir
            .strip_prefix("gen-")
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        if n <= after {
            continue;
        }
        let gen_path = prefix.join(&gen_dir)?;
        for chk in store.list_dirs(Some(&gen_path)).await? {
            if !chk.starts_with("chk-") {
                continue;
            }
            let meta = gen_path.join(&format!("{chk}/_metadata"))?;
            match store.head(&meta).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(false)
}

/// Whether a snapshot directory (a savepoint target) holds its commit point.
pub async fn snapshot_committed(store: &dyn BlobStore, dir: &BlobPath) -> Result<bool> {
    match store.head(&dir.join("_metadata")?).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes everything under an application's prefix except the directories of the savepoints
/// in `kept` (under `savepoints/`). Returns the number of objects deleted.
pub async fn delete_app_storage(
    store: &dyn BlobStore,
    prefix: &BlobPath,
    kept: &[String],
) -> Result<usize> {
    if kept.is_empty() {
        return Ok(store.delete_prefix(prefix).await?.objects());
    }
    let mut deleted = 0;
    for o in store.list_all(Some(prefix)).await? {
        let rel = o.key.relative_to(prefix).unwrap_or_default();
        let keep = rel
            .strip_prefix("savepoints/")
            .and_then(|r| r.split('/').next())
            .is_some_and(|sp| kept.iter().any(|k| k == sp));
        if !keep {
            store.delete(&o.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn deleting_an_application_keeps_only_the_kept_savepoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = sluice_blob::FsStore::open(dir.path()).await.unwrap();
        let prefix = BlobPath::new("org_a/app_b").unwrap();
        for key in [
            "org_a/app_b/gen-0000000001/chk-000000000001/_metadata",
            "org_a/app_b/savepoints/sp_keep/savepoint-1/_metadata",
            "org_a/app_b/savepoints/sp_keep/savepoint-1/state",
            "org_a/app_b/savepoints/sp_gone/savepoint-2/_metadata",
            "org_a/app_b/savepoints/sp_keep_not/x",
            "org_a/app_c/savepoints/sp_keep/other-app",
        ] {
            store
                .put(&BlobPath::new(key).unwrap(), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let deleted = delete_app_storage(&store, &prefix, &["sp_keep".into()])
            .await
            .unwrap();
        assert_eq!(deleted, 3);
        let left: Vec<String> = store
            .list_all(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect();
        assert_eq!(
            left,
            [
                "org_a/app_b/savepoints/sp_keep/savepoint-1/_metadata",
                "org_a/app_b/savepoints/sp_keep/savepoint-1/state",
                "org_a/app_c/savepoints/sp_keep/other-app",
            ]
        );
        assert_eq!(delete_app_storage(&store, &prefix, &[]).await.unwrap(), 2);
        assert_eq!(store.list_all(Some(&prefix)).await.unwrap().len(), 0);
    }
}
