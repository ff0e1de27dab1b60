//! `sluice-blob`: the engine's object storage and the checkpoint storage layout on top of it.
//!
//! - [`BlobStore`]: one async trait for object storage (put, create-if-absent, get, range get,
//!   head, paginated listing, delete, prefix delete, copy), used as `Arc<dyn BlobStore>`.
//! - [`FsStore`]: the filesystem backend (`file://`, the embedded default) with atomic writes.
//!   The S3 backend lives in the leaf crate `sluice-blob-s3`, which also has `open(uri, options)`
//!   for both backends, so that only binaries link aws-sdk-s3.
//! - [`BlobPath`] and [`BlobLocation`]: validated keys and URIs; a key can never leave its root.
//! - [`checkpoint`]: the layout `{root}/gen-{generation}/chk-{id}/…` with the metadata file
//!   written last, create-if-absent, as the commit point; generation fencing, retention,
//!   savepoints and disposal.
//!
//! Tests: `dev/cargo test -p sluice-blob` (unit tests and the filesystem backend);
//! the contract suite that runs against both backends is in `sluice-blob-s3`'s tests.
//! See README.md for the layout and the fencing rule.

pub mod checkpoint;
mod error;
mod fs;
mod location;
mod path;
pub mod savepoints;

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

pub use error::BlobError;
pub use fs::FsStore;
pub use location::BlobLocation;
pub use path::BlobPath;

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// A body as a stream of chunks: uploads from sources that do not fit in memory, downloads
/// that should not be held whole.
pub type ByteChunks = BoxStream<'static, io::Result<Bytes>>;

/// Page size of [`BlobStore::list`] (S3's maximum per request).
pub const LIST_PAGE_SIZE: usize = 1000;

/// Chunk size used when reading local files into a [`ByteChunks`] stream.
pub const FILE_CHUNK_BYTES: usize = 1 << 20;

/// An object's key (relative to the store's root) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: BlobPath,
    pub size_bytes: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Opaque; pass to [`BlobStore::list_page`] for the next page. `None` on the last page.
    pub next_page_token: Option<String>,
}

/// What a prefix delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    pub deleted: Vec<ObjectMeta>,
}

impl DeleteReport {
    pub fn objects(&self) -> usize {
        self.deleted.len()
    }

    pub fn bytes(&self) -> u64 {
        self.deleted.iter().map(|o| o.size_bytes).sum()
    }
}

/// Object storage. Keys are [`BlobPath`]s relative to the store's root; prefixes have
/// directory semantics (`a/b` lists `a/b/…`, never `a/bc`). Writes of a whole object are
/// atomic: a reader sees the old object, the new one or none, never a part.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// The store's root, for messages and for deriving URIs of objects.
    fn location(&self) -> &BlobLocation;

    /// Writes (or replaces) an object.
    async fn put(&self, key: &BlobPath, data: Bytes) -> Result<()>;

    /// Writes (or replaces) an object from a stream of chunks; returns the bytes written.
    async fn put_stream(&self, key: &BlobPath, body: ByteChunks) -> Result<u64>;

    /// Writes (or replaces) an object from a local file; returns the bytes written.
    async fn put_file(&self, key: &BlobPath, path: &Path) -> Result<u64> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| BlobError::Io {
                store: self.location().to_string(),
                op: "open local file for upload",
                key: format!("{key} (from {})", path.display()),
                source,
            })?;
        self.put_stream(key, file_chunks(file)).await
    }

    /// Creates an object only when no object exists under `key`: the commit point of
    /// checkpoints. An existing object gives [`BlobError::AlreadyExists`]; of concurrent
    /// callers exactly one succeeds.
    async fn put_if_absent(&self, key: &BlobPath, data: Bytes) -> Result<()>;

    /// Reads a whole object.
    async fn get(&self, key: &BlobPath) -> Result<Bytes>;

    /// Reads `range` of an object. A range reaching past the end is cut at the end; a range
    /// starting past the end is [`BlobError::InvalidRange`].
    async fn get_range(&self, key: &BlobPath, range: Range<u64>) -> Result<Bytes>;

    /// Reads an object as a stream of chunks.
    async fn get_stream(&self, key: &BlobPath) -> Result<ByteChunks>;

    /// Downloads an object into a local file (written to a temporary name, then renamed);
    /// returns the bytes written.
    async fn get_to_file(&self, key: &BlobPath, path: &Path) -> Result<u64> {
        let io_err = |op: &'static str, source: io::Error| BlobError::Io {
            store: self.location().to_string(),
            op,
            key: format!("{key} (to {})", path.display()),
            source,
        };
        let mut body = self.get_stream(key).await?;
        let tmp = path.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err("create local file", e))?;
        let mut written = 0u64;
        let copied: io::Result<()> = async {
            while let Some(chunk) = body.try_next().await? {
                file.write_all(&chunk).await?;
                written += chunk.len() as u64;
            }
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err("download into local file", e));
        }
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| io_err("rename downloaded file", e))?;
        Ok(written)
    }

    /// An object's size; [`BlobError::NotFound`] when it does not exist.
    async fn head(&self, key: &BlobPath) -> Result<ObjectMeta>;

    /// Up to `max_keys` objects under `prefix` (`None`: the whole store), continuing after the
    /// page that returned `page_token`. The order is stable: the filesystem backend lists in
    /// byte order of keys; S3 lists in the server's order (byte order on AWS; SeaweedFS lists
    /// directory by directory, each in name order). Code that needs an order sorts itself.
    async fn list_page(
        &self,
        prefix: Option<&BlobPath>,
        page_token: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage>;

    /// Names of the immediate "directories" under `prefix` (the distinct next segments of the
    /// keys below it that have further segments), sorted. For a few hundred entries, such as
    /// the generations of a job, without listing every object.
    async fn list_dirs(&self, prefix: Option<&BlobPath>) -> Result<Vec<String>>;

    /// Deletes an object. Deleting a missing object succeeds (as in S3), so that disposal can
    /// be retried after a partial failure.
    async fn delete(&self, key: &BlobPath) -> Result<()>;

    /// Deletes every object under `prefix` and reports what was deleted.
    async fn delete_prefix(&self, prefix: &BlobPath) -> Result<DeleteReport> {
        let objects = self.list_all(Some(prefix)).await?;
        for o in &objects {
            self.delete(&o.key).await?;
        }
        Ok(DeleteReport { deleted: objects })
    }

    /// Copies an object within this store (replacing `to`).
    async fn copy(&self, from: &BlobPath, to: &BlobPath) -> Result<()>;

    /// Every object under `prefix`, page by page, in ascending key order.
    fn list<'a>(&'a self, prefix: Option<&'a BlobPath>) -> BoxStream<'a, Result<ObjectMeta>> {
        let pages = stream::try_unfold(Some(None::<String>), move |state| async move {
            let Some(token) = state else {
                return Ok(None);
            };
            let page = self
                .list_page(prefix, token.as_deref(), LIST_PAGE_SIZE)
                .await?;
            let next = page.next_page_token.map(Some);
            Ok(Some((stream::iter(page.objects.into_iter().map(Ok)), next)))
        });
        pages.try_flatten().boxed()
    }

    /// Every object under `prefix`, collected.
    async fn list_all(&self, prefix: Option<&BlobPath>) -> Result<Vec<ObjectMeta>> {
        self.list(prefix).try_collect().await
    }
}

/// Copies an object between two stores (for example a savepoint export to a tenant's bucket),
/// streaming; returns the bytes copied.
pub async fn copy_between(
    from: &dyn BlobStore,
    from_key: &BlobPath,
    to: &dyn BlobStore,
    to_key: &BlobPath,
) -> Result<u64> {
    let body = from.get_stream(from_key).await?;
    to.put_stream(to_key, body).await
}

/// Copies every object under `from_prefix` to the same relative keys under `to_prefix`;
/// returns what was copied (source keys and sizes).
pub async fn copy_prefix_between(
    from: &dyn BlobStore,
    from_prefix: &BlobPath,
    to: &dyn BlobStore,
    to_prefix: &BlobPath,
) -> Result<Vec<ObjectMeta>> {
    let objects = from.list_all(Some(from_prefix)).await?;
    for o in &objects {
        let rel = o
            .key
            .relative_to(from_prefix)
            .ok_or_else(|| BlobError::InvalidKey {
                key: o.key.to_string(),
                reason: format!("listed under {from_prefix} but not below it"),
            })?;
        copy_between(from, &o.key, to, &to_prefix.join(rel)?).await?;
    }
    Ok(objects)
}

/// Reads a local file as a stream of [`FILE_CHUNK_BYTES`] chunks.
pub fn file_chunks(file: tokio::fs::File) -> ByteChunks {
    use tokio::io::AsyncReadExt;
    stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; FILE_CHUNK_BYTES];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some((Bytes::from(buf), file)))
    })
    .boxed()
}
