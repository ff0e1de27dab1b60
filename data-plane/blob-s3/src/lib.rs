//! `sluice-blob-s3`: the S3 backend of the Sluice blob store, and [`open`], the one entry point
//! binaries use to open either backend from a URI (`file:///abs/root` or `s3://bucket/prefix`).
//!
//! A leaf crate: only binaries depend on it, so that the engine's libraries build without
//! aws-sdk-s3. What it does on top of the SDK:
//! - custom endpoint, path-style addressing, static credentials or the default chain, region;
//! - multipart upload for objects above the part size (≥ 5 MiB), parts uploaded in parallel up
//!   to a bound, the upload aborted on failure;
//! - create-if-absent with `If-None-Match: *`;
//! - its own retries (exponential backoff, full jitter, bounded by attempts and a deadline) for
//!   throttling, 5xx, timeouts and connection failures; every failure is logged and returned
//!   with the SDK's whole error context, the operation, bucket, key and endpoint.
//!
//! Tests: `dev/cargo test -p sluice-blob-s3` runs one contract suite against both backends
//! (SeaweedFS from `sluice-test-support` and a temp directory), the endpoint-down behaviour and
//! the generation fencing of checkpoints. Benchmark:
//! `dev/cargo run --release -p sluice-blob-s3 --example blob_bench` (see README.md).

mod multipart;
mod retry;
mod store;

use std::sync::Arc;
use std::time::Duration;

use sluice_blob::{BlobError, BlobLocation, BlobStore, FsStore};

pub use retry::RetryPolicy;
pub use store::S3Store;

/// S3's smallest part size for all parts but the last.
pub const MIN_PART_SIZE_BYTES: usize = 5 << 20;

/// Access key pair given in configuration instead of the default credential chain.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// How to reach an S3-compatible store.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Custom endpoint (`http://127.0.0.1:8333`); `None` uses AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the default chain (or `us-east-1` with static credentials).
    pub region: Option<String>,
    /// `None`: the default credential chain (environment, profile, web identity, IMDS).
    pub credentials: Option<StaticCredentials>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub force_path_style: bool,
    /// Objects larger than this are uploaded in parts of this size (≥ 5 MiB).
    pub part_size_bytes: usize,
    /// Parts of one upload in flight at once.
    pub max_parallel_parts: usize,
    pub retry: RetryPolicy,
    /// Sign request bodies (SigV4 SHA-256 of the payload). `false` sends `UNSIGNED-PAYLOAD`
    /// for object and part uploads, leaving integrity to the CRC32 checksum the SDK still
    /// adds: less CPU per byte, for TLS endpoints or trusted networks.
    pub sign_payload: bool,
    pub connect_timeout: Duration,
    /// Limit of one attempt of one request (a part upload included).
    pub attempt_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            credentials: None,
            force_path_style: false,
            part_size_bytes: 8 << 20,
            max_parallel_parts: 4,
            retry: RetryPolicy::default(),
            sign_payload: true,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

impl S3Options {
    /// Options for an S3-compatible server on `endpoint` with a static key pair and
    /// path-style addressing.
    pub fn compatible(endpoint: &str, region: &str, access_key_id: &str, secret: &str) -> Self {
        Self {
            endpoint: Some(endpoint.to_string()),
            region: Some(region.to_string()),
            credentials: Some(StaticCredentials {
                access_key_id: access_key_id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: None,
            }),
            force_path_style: true,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BlobError> {
        if self.part_size_bytes < MIN_PART_SIZE_BYTES {
            return Err(BlobError::InvalidOptions(format!(
                "part_size_bytes {} is below S3's minimum of {MIN_PART_SIZE_BYTES}",
                self.part_size_bytes
            )));
        }
        if self.max_parallel_parts == 0 {
            return Err(BlobError::InvalidOptions(
                "max_parallel_parts must be at least 1".into(),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(BlobError::InvalidOptions(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Options of [`open`] (the filesystem backend has none).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub s3: S3Options,
}

/// Opens the blob store a URI names: `file:///abs/path` (created if missing) or
/// `s3://bucket/prefix` (the bucket must exist; see [`S3Store::ensure_bucket`]).
pub async fn open(uri: &str, options: &OpenOptions) -> Result<Arc<dyn BlobStore>, BlobError> {
    match BlobLocation::parse(uri)? {
        loc @ BlobLocation::File { .. } => Ok(Arc::new(FsStore::open_location(&loc).await?)),
        loc @ BlobLocation::S3 { .. } => Ok(Arc::new(S3Store::connect(&loc, &options.s3).await?)),
    }
}
