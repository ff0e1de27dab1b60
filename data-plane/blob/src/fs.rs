//! The filesystem backend: one file per object under a root directory.
//!
//! Every write goes to a temporary file in `{root}/.sluice-tmp/` (same filesystem as the
//! objects), is fsynced, and is then renamed into place (replace) or hard-linked into place
//! (create-if-absent: `link(2)` fails with `EEXIST` when the name exists, atomically, so of
//! concurrent writers exactly one wins). The parent directory is fsynced after the rename so
//! that the new name survives a crash. Empty directories left by deletes are removed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::path::RESERVED_TMP_SEGMENT;
use crate::{
    BlobError, BlobLocation, BlobPath, BlobStore, ByteChunks, ListPage, ObjectMeta, Result,
};

/// How often a write retries when a concurrent delete removed the (empty) parent directory
/// between its `create_dir_all` and its rename.
const PARENT_RACE_RETRIES: usize = 8;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    location: BlobLocation,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replace,
    CreateNew,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at the absolute directory `root`.
    pub async fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let location = BlobLocation::parse(&format!("file://{}", root.display()))?;
        Self::open_location(&location).await
    }

    /// Opens (creating if needed) the store of a `file://` location.
    pub async fn open_location(location: &BlobLocation) -> Result<Self> {
        let BlobLocation::File { root } = location else {
            return Err(BlobError::InvalidUri {
                uri: location.to_string(),
                reason: "the filesystem backend needs a file:// URI".into(),
            });
        };
        let tmp = root.join(RESERVED_TMP_SEGMENT);
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|source| BlobError::Io {
                store: location.to_string(),
                op: "create store directory",
                key: tmp.display().to_string(),
                source,
            })?;
        Ok(Self {
            root: root.clone(),
            tmp,
            location: location.clone(),
        })
    }

    /// The local path of an object.
    pub fn path_of(&self, key: &BlobPath) -> PathBuf {
        key.segments().fold(self.root.clone(), |p, s| p.join(s))
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    fn io_err(
        &self,
        op: &'static str,
        key: &(dyn std::fmt::Display + Sync),
        source: io::Error,
    ) -> BlobError {
        match source.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::NotADirectory
                if op_reads(op) =>
            {
                BlobError::NotFound {
                    store: self.location.to_string(),
                    key: key.to_string(),
                }
            }
            _ => BlobError::Io {
                store: self.location.to_string(),
                op,
                key: key.to_string(),
                source,
            },
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &(dyn std::fmt::Display + Sync),
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r.map_err(|e| self.io_err(op, key, e)),
            Err(join) => Err(self.io_err(op, key, io::Error::other(join.to_string()))),
        }
    }

    async fn write_bytes(&self, key: &BlobPath, data: Bytes, mode: Mode) -> Result<()> {
        let (tmp, dest) = (self.tmp_path(), self.path_of(key));
        let r = self
            .blocking("write", key, move || {
                let result = (|| {
                    let mut f = File::create_new(&tmp)?;
                    f.write_all(&data)?;
                    f.sync_all()?;
                    install(&tmp, &dest, mode)
                })();
                // After a rename the temp name is gone (NotFound is expected); after a hard link
                // or a failure it is removed here. A leftover is harmless: never listed.
                let _ = fs::remove_file(&tmp);
                result
            })
            .await?;
        self.finish_install(key, r)
    }

    fn finish_install(&self, key: &BlobPath, installed: bool) -> Result<()> {
        if installed {
            Ok(())
        } else {
            Err(BlobError::AlreadyExists {
                store: self.location.to_string(),
                key: key.to_string(),
            })
        }
    }
}

/// Whether an operation reads an existing object (so that a missing file means "no object").
fn op_reads(op: &str) -> bool {
    matches!(
        op,
        "read" | "read range" | "stat" | "open for reading" | "copy"
    )
}

/// Moves the fsynced temporary file into place. Returns false when `mode` is `CreateNew` and
/// the destination exists.
fn install(tmp: &Path, dest: &Path, mode: Mode) -> io::Result<bool> {
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::other("object path has no parent directory"))?;
    let mut attempt = 0;
    loop {
        fs::create_dir_all(parent)?;
        let r = match mode {
            Mode::Replace => fs::rename(tmp, dest),
            Mode::CreateNew => fs::hard_link(tmp, dest),
        };
        match r {
            Ok(()) => break,
            Err(e) if mode == Mode::CreateNew && e.kind() == io::ErrorKind::AlreadyExists => {
                return Ok(false);
            }
            // A concurrent delete pruned the empty parent between create_dir_all and here.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PARENT_RACE_RETRIES => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    File::open(parent)?.sync_all()?;
    Ok(true)
}

#[async_trait]
impl BlobStore for FsStore {
    fn location(&self) -> &BlobLocation {
        &self.location
    }

    async fn put(&self, key: &BlobPath, data: Bytes) -> Result<()> {
        self.write_bytes(key, data, Mode::Replace).await
    }

    async fn put_if_absent(&self, key: &BlobPath, data: Bytes) -> Result<()> {
        self.write_bytes(key, data, Mode::CreateNew).await
    }

    async fn put_stream(&self, key: &BlobPath, mut body: ByteChunks) -> Result<u64> {
        let (tmp, dest) = (self.tmp_path(), self.path_of(key));
        let written: io::Result<u64> = async {
            let mut f = tokio::fs::File::create_new(&tmp).await?;
            let mut n = 0u64;
            while let Some(chunk) = body.try_next().await? {
                f.write_all(&chunk).await?;
                n += chunk.len() as u64;
            }
            f.flush().await?;
            f.sync_all().await?;
            Ok(n)
        }
        .await;
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(self.io_err("write", key, e));
            }
        };
        let installed = self
            .blocking("write", key, move || {
                let r = install(&tmp, &dest, Mode::Replace);
                let _ = fs::remove_file(&tmp);
                r
            })
            .await?;
        self.finish_install(key, installed)?;
        Ok(n)
    }

    async fn get(&self, key: &BlobPath) -> Result<Bytes> {
        let path = self.path_of(key);
        self.blocking("read", key, move || fs::read(path).map(Bytes::from))
            .await
    }

    async fn get_range(&self, key: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        if range.start > range.end {
            return Err(BlobError::InvalidRange {
                store: self.location.to_string(),
                key: key.to_string(),
                start: range.start,
                end: range.end,
                detail: "start is after end".into(),
            });
        }
        let path = self.path_of(key);
        let r = range.clone();
        let (size, data) = self
            .blocking("read range", key, move || {
                let mut f = File::open(path)?;
                let size = f.metadata()?.len();
                if r.start >= size && r.start != r.end {
                    return Ok((size, None));
                }
                let end = r.end.min(size);
                let len = usize::try_from(end.saturating_sub(r.start)).map_err(io::Error::other)?;
                let mut buf = vec![0u8; len];
                f.seek(SeekFrom::Start(r.start))?;
                f.read_exact(&mut buf)?;
                Ok((size, Some(Bytes::from(buf))))
            })
            .await?;
        data.ok_or_else(|| BlobError::InvalidRange {
            store: self.location.to_string(),
            key: key.to_string(),
            start: range.start,
            end: range.end,
            detail: format!("the object has {size} bytes"),
        })
    }

    async fn get_stream(&self, key: &BlobPath) -> Result<ByteChunks> {
        let file = tokio::fs::File::open(self.path_of(key))
            .await
            .map_err(|e| self.io_err("open for reading", key, e))?;
        // Opening a directory succeeds on Linux; only a regular file is an object.
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.io_err("stat", key, e))?;
        if !meta.is_file() {
            return Err(self.io_err("stat", key, io::ErrorKind::IsADirectory.into()));
        }
        Ok(crate::file_chunks(file))
    }

    async fn head(&self, key: &BlobPath) -> Result<ObjectMeta> {
        let path = self.path_of(key);
        let meta = self
            .blocking("stat", key, move || fs::metadata(path))
            .await?;
        if !meta.is_file() {
            return Err(self.io_err("stat", key, io::ErrorKind::IsADirectory.into()));
        }
        Ok(ObjectMeta {
            key: key.clone(),
            size_bytes: meta.len(),
        })
    }

    async fn list_page(
        &self,
        prefix: Option<&BlobPath>,
        page_token: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        let dir = prefix.map_or_else(|| self.root.clone(), |p| self.path_of(p));
        let key_prefix = prefix.map(|p| format!("{p}/")).unwrap_or_default();
        // The token is the last key of the previous page: keys are listed in byte order.
        let start_after = page_token.map(str::to_string);
        let label = prefix.map_or_else(|| "(root)".to_string(), |p| format!("{p}/"));
        let mut found = self
            .blocking("list", &label, move || {
                let mut out = Vec::new();
                walk(&dir, &key_prefix, key_prefix.is_empty(), &mut out)?;
                Ok(out)
            })
            .await?;
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut objects = Vec::new();
        let mut more = false;
        for (key, size_bytes) in found {
            if start_after.as_deref().is_some_and(|s| key.as_str() <= s) {
                continue;
            }
            if objects.len() == max_keys {
                more = true;
                break;
            }
            objects.push(ObjectMeta {
                key: BlobPath::new(key)?,
                size_bytes,
            });
        }
        let next_page_token = if more {
            objects.last().map(|o| o.key.to_string())
        } else {
            None
        };
        Ok(ListPage {
            objects,
            next_page_token,
        })
    }

    async fn list_dirs(&self, prefix: Option<&BlobPath>) -> Result<Vec<String>> {
        let dir = prefix.map_or_else(|| self.root.clone(), |p| self.path_of(p));
        let at_root = prefix.is_none();
        let label = prefix.map_or_else(|| "(root)".to_string(), |p| format!("{p}/"));
        self.blocking("list directories", &label, move || {
            let mut names = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(names);
                }
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type()?.is_dir() && !(at_root && name == RESERVED_TMP_SEGMENT) {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn delete(&self, key: &BlobPath) -> Result<()> {
        let path = self.path_of(key);
        let root = self.root.clone();
        self.blocking("delete", key, move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            prune_empty_parents(&path, &root);
            Ok(())
        })
        .await
    }

    async fn copy(&self, from: &BlobPath, to: &BlobPath) -> Result<()> {
        let (src, tmp, dest) = (self.path_of(from), self.tmp_path(), self.path_of(to));
        let installed = self
            .blocking("copy", from, move || {
                let r = (|| {
                    fs::copy(&src, &tmp)?;
                    File::open(&tmp)?.sync_all()?;
                    install(&tmp, &dest, Mode::Replace)
                })();
                let _ = fs::remove_file(&tmp);
                r
            })
            .await?;
        self.finish_install(to, installed)
    }
}

/// Collects `(key, size)` of every regular file under `dir`. A directory that disappears
/// while it is walked (a concurrent delete) counts as empty.
fn walk(
    dir: &Path,
    key_prefix: &str,
    at_root: bool,
    out: &mut Vec<(String, u64)>,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(io::Error::other(format!(
                "file name {:?} in {} is not UTF-8, so it is not a blob key",
                entry.file_name(),
                dir.display()
            )));
        };
        if at_root && name == RESERVED_TMP_SEGMENT {
            continue;
        }
        let key = format!("{key_prefix}{name}");
        let ty = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if ty.is_dir() {
            walk(&entry.path(), &format!("{key}/"), false, out)?;
        } else if ty.is_file() {
            match entry.metadata() {
                Ok(m) => out.push((key, m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes now-empty directories from `path`'s parent up to (excluding) `root`. Stops at the
/// first directory that is not empty or is already gone: either way there is nothing to prune.
fn prune_empty_parents(path: &Path, root: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(s: &str) -> BlobPath {
        BlobPath::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn writes_leave_no_temporary_files_and_deletes_prune_directories() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = FsStore::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let k = key("a/b/c/obj");
        store
            .put(&k, Bytes::from_static(b"x"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = store.put_if_absent(&k, Bytes::from_static(b"y")).await;
        store
            .copy(&k, &key("a/copy"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let tmp_left = fs::read_dir(dir.path().join(RESERVED_TMP_SEGMENT))
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tmp_left, 0, "temporary files left behind");
        let listed = store.list_all(None).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 2, "{listed:?}");

        store.delete(&k).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!dir.path().join("a/b").exists(), "empty directories left");
        assert!(dir.path().join("a/copy").exists());
        assert!(
            dir.path().join(RESERVED_TMP_SEGMENT).exists(),
            "pruned the temp dir"
        );
    }

    #[tokio::test]
    async fn create_if_absent_has_one_winner_under_threads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(
            FsStore::open(dir.path())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let k = key("gen-0000000001/chk-000000000001/_metadata");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(
                    async move { store.put_if_absent(&k, Bytes::from(format!("{i}"))).await },
                )
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap_or_else(|e| panic!("{e}")) {
                Ok(()) => winners += 1,
                Err(e) => assert!(e.is_already_exists(), "{e}"),
            }
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn rejects_relative_roots_and_s3_locations() {
        assert!(FsStore::open("relative/dir").await.is_err());
        let s3 = BlobLocation::parse("s3://bucket").unwrap_or_else(|e| panic!("{e}"));
        assert!(FsStore::open_location(&s3).await.is_err());
    }
}
