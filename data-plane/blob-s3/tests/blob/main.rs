//! One test binary for the blob store: the contract suite against both backends, the S3
//! failure behaviour, and checkpoint storage (fencing, retention, torn files, disposal).
//! Real services only: SeaweedFS from `sluice-test-support` and temp directories.

mod checkpoint;
mod contract;
mod failure;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_blob::{BlobPath, BlobStore};
use sluice_blob_s3::{S3Options, S3Store};
use sluice_test_support::{s3, unique_name};

/// Part size used by the tests: S3's minimum, so 30 MiB makes a 7-part upload.
pub const TEST_PART_SIZE: usize = 5 << 20;

pub fn key(s: &str) -> BlobPath {
    BlobPath::new(s).unwrap_or_else(|e| panic!("test key {s:?}: {e}"))
}

pub fn s3_options(service: &sluice_test_support::S3) -> S3Options {
    let mut o = S3Options::compatible(
        &service.endpoint,
        &service.region,
        &service.access_key_id,
        &service.secret_access_key,
    );
    o.part_size_bytes = TEST_PART_SIZE;
    o.max_parallel_parts = 3;
    o
}

/// A store on the shared SeaweedFS, in a bucket of its own, under a prefix (so that the
/// prefix handling is exercised too).
pub async fn s3_store() -> Arc<dyn BlobStore> {
    let bucket = unique_name("blob-");
    let uri = format!("s3://{bucket}/root/of-store");
    let store = S3Store::connect(
        &sluice_blob::BlobLocation::parse(&uri).unwrap_or_else(|e| panic!("{e}")),
        &s3_options(s3()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
    store
        .ensure_bucket()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    Arc::new(store)
}

/// A store in a fresh temp directory, opened through the same `open(uri)` binaries use.
pub async fn fs_store() -> (tempfile::TempDir, Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let uri = format!("file://{}/store", dir.path().display());
    let store = sluice_blob_s3::open(&uri, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("open {uri}: {e}"));
    assert!(format!("{store:?}").contains("FsStore"));
    (dir, store)
}

/// Runs `f` with a deadline and turns its error into a panic naming the store.
pub async fn run<F, Fut>(store: Arc<dyn BlobStore>, secs: u64, f: F)
where
    F: FnOnce(Arc<dyn BlobStore>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let label = store.location().to_string();
    match tokio::time::timeout(Duration::from_secs(secs), f(store)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{label}: {e:#}"),
        Err(_) => panic!("{label}: did not finish within {secs} s"),
    }
}

/// Declares `fs` and `s3` tests running the same async check against each backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $secs:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn fs() {
                let (_dir, store) = $crate::fs_store().await;
                $crate::run(store, $secs, super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn s3() {
                let store = $crate::s3_store().await;
                $crate::run(store, $secs, super::$name).await;
            }
        }
    };
}

/// Deterministic, non-repeating test data (so a misplaced part or range shows up).
pub fn pattern(len: usize, seed: u64) -> bytes::Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    bytes::Bytes::from(out)
}
