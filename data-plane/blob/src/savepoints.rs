//! Savepoints as the control plane handles them: a directory named by URI, sized for
//! billing, copied in (import) and out (export) with its `_metadata` written last.
//!
//! The engine writes savepoints through [`crate::checkpoint::CheckpointStore`]; these
//! helpers need no running job.

use crate::checkpoint::METADATA_FILE;
use crate::{BlobError, BlobLocation, BlobPath, BlobStore, ObjectMeta, copy_between};

/// A directory URI split into the store to open (its parent) and the directory's key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirUri {
    /// URI of the parent (`s3://bucket/a` for `s3://bucket/a/sp`).
    pub parent: String,
    /// The directory's key below the parent (one segment).
    pub dir: BlobPath,
}

/// Splits `s3://bucket/a/b` into `s3://bucket/a` and `b` (and `file:///x/y` into
/// `file:///x` and `y`). A bucket or filesystem root alone is refused: a savepoint
/// needs a directory of its own.
pub fn split_dir_uri(uri: &str) -> Result<DirUri, BlobError> {
    let bad = |reason: &str| BlobError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    match BlobLocation::parse(uri)? {
        BlobLocation::S3 {
            bucket,
            prefix: Some(prefix),
        } => {
            let key = prefix.as_str();
            let (parent, leaf) = match key.rsplit_once('/') {
                Some((p, l)) => (format!("s3://{bucket}/{p}"), l),
                None => (format!("s3://{bucket}"), key),
            };
            Ok(DirUri {
                parent,
                dir: BlobPath::new(leaf)?,
            })
        }
        BlobLocation::S3 { prefix: None, .. } => {
            Err(bad("name a directory inside the bucket, not the bucket"))
        }
        BlobLocation::File { root } => {
            let leaf = root
                .file_name()
                .and_then(|l| l.to_str())
                .ok_or_else(|| bad("name a directory, not the filesystem root"))?;
            let parent = root
                .parent()
                .ok_or_else(|| bad("name a directory, not the filesystem root"))?;
            Ok(DirUri {
                parent: format!("file://{}", parent.display()),
                dir: BlobPath::new(leaf)?,
            })
        }
    }
}

/// What a prefix holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSize {
    pub objects: u64,
    pub bytes: u64,
    /// Whether a `_metadata` file sits directly in the prefix (a committed snapshot).
    pub committed: bool,
}

/// Counts the objects and bytes under `prefix` (the size of a savepoint, for billing).
pub async fn prefix_size(
    store: &dyn BlobStore,
    prefix: &BlobPath,
) -> Result<PrefixSize, BlobError> {
    let mut out = PrefixSize::default();
    for o in store.list_all(Some(prefix)).await? {
        out.objects += 1;
        out.bytes += o.size_bytes;
        if o.key.relative_to(prefix) == Some(METADATA_FILE) {
            out.committed = true;
        }
    }
    Ok(out)
}

/// Copies the snapshot under `from_dir` to `to_dir` of another (or the same) store: data
/// files first, every `_metadata` last, so that a copy interrupted half-way is never taken
/// for a complete snapshot. Returns the objects copied (source keys and sizes).
pub async fn copy_snapshot(
    from: &dyn BlobStore,
    from_dir: &BlobPath,
    to: &dyn BlobStore,
    to_dir: &BlobPath,
) -> Result<Vec<ObjectMeta>, BlobError> {
    let objects = from.list_all(Some(from_dir)).await?;
    let (metadata, data): (Vec<&ObjectMeta>, Vec<&ObjectMeta>) = objects
        .iter()
        .partition(|o| o.key.file_name() == METADATA_FILE);
    for o in data.into_iter().chain(metadata) {
        let rel = o
            .key
            .relative_to(from_dir)
            .ok_or_else(|| BlobError::InvalidKey {
                key: o.key.to_string(),
                reason: format!("listed under {from_dir} but not below it"),
            })?;
        copy_between(from, &o.key, to, &to_dir.join(rel)?).await?;
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStore;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_snapshot_copies_with_its_metadata_and_is_sized() {
        let dir = tempfile::tempdir().unwrap();
        let from = FsStore::open(dir.path().join("a")).await.unwrap();
        let to = FsStore::open(dir.path().join("b")).await.unwrap();
        let sp = BlobPath::new("org/app/savepoints/sp1").unwrap();
        from.put(&sp.join("data/0").unwrap(), Bytes::from_static(b"12345"))
            .await
            .unwrap();
        let empty = prefix_size(&from, &sp).await.unwrap();
        assert_eq!((empty.objects, empty.bytes, empty.committed), (1, 5, false));
        from.put(
            &sp.join(METADATA_FILE).unwrap(),
            Bytes::from_static(b"meta"),
        )
        .await
        .unwrap();
        // A sibling whose name extends the prefix is not part of it.
        from.put(
            &BlobPath::new("org/app/savepoints/sp10/x").unwrap(),
            Bytes::from_static(b"zz"),
        )
        .await
        .unwrap();
        let size = prefix_size(&from, &sp).await.unwrap();
        assert_eq!((size.objects, size.bytes, size.committed), (2, 9, true));
        let target = BlobPath::new("export").unwrap();
        let copied = copy_snapshot(&from, &sp, &to, &target).await.unwrap();
        assert_eq!(copied.len(), 2);
        let out = prefix_size(&to, &target).await.unwrap();
        assert_eq!((out.objects, out.bytes, out.committed), (2, 9, true));
        assert_eq!(
            to.get(&target.join("data/0").unwrap()).await.unwrap(),
            Bytes::from_static(b"12345")
        );
    }

    #[test]
    fn directory_uris_split_into_parent_and_leaf() {
        let d = split_dir_uri("s3://bucket/a/b/sp-1/").unwrap();
        assert_eq!(d.parent, "s3://bucket/a/b");
        assert_eq!(d.dir.as_str(), "sp-1");
        let d = split_dir_uri("s3://bucket/sp").unwrap();
        assert_eq!(d.parent, "s3://bucket");
        assert_eq!(d.dir.as_str(), "sp");
        let d = split_dir_uri("file:///tmp/x/sp").unwrap();
        assert_eq!(d.parent, "file:///tmp/x");
        assert_eq!(d.dir.as_str(), "sp");
        assert!(split_dir_uri("s3://bucket").is_err());
        assert!(split_dir_uri("file:///").is_err());
        assert!(split_dir_uri("http://x/y").is_err());
    }
}
