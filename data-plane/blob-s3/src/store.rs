//! [`S3Store`]: the blob store trait over aws-sdk-s3.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Once};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::StreamExt;
use sluice_blob::{
    BlobError, BlobLocation, BlobPath, BlobStore, ByteChunks, DeleteReport, ListPage, ObjectMeta,
    Result,
};

use crate::S3Options;
use crate::retry::{Attempt, Failure, Target, classify, with_retries};

/// Objects in an S3 bucket, under an optional key prefix.
#[derive(Clone)]
pub struct S3Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub client: Client,
    pub bucket: String,
    prefix: Option<BlobPath>,
    location: BlobLocation,
    /// `s3://bucket/prefix (endpoint …)`: how errors name the store.
    pub store_label: String,
    pub endpoint: String,
    pub opts: S3Options,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.inner.location.to_string())
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

/// rustls panics when two crypto providers are linked (aws-lc-rs here, ring through sqlx and
/// kube) and none is chosen; the AWS client is built on aws-lc-rs.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed a provider first: that one is used.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

impl S3Store {
    /// Builds a client for an `s3://` location. Makes no request: a wrong endpoint or
    /// credentials show up on the first operation.
    pub async fn connect(location: &BlobLocation, opts: &S3Options) -> Result<Self> {
        opts.validate()?;
        let BlobLocation::S3 { bucket, prefix } = location else {
            return Err(BlobError::InvalidUri {
                uri: location.to_string(),
                reason: "the S3 backend needs an s3:// URI".into(),
            });
        };
        install_crypto_provider();
        let mut builder = match &opts.credentials {
            Some(c) => aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(
                    opts.region.clone().unwrap_or_else(|| "us-east-1".into()),
                ))
                .credentials_provider(Credentials::new(
                    &c.access_key_id,
                    &c.secret_access_key,
                    c.session_token.clone(),
                    None,
                    "sluice-static",
                )),
            None => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(r) = &opts.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                aws_sdk_s3::config::Builder::from(&loader.load().await)
            }
        };
        builder = builder
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout)
                    .operation_attempt_timeout(opts.attempt_timeout)
                    .build(),
            )
            .force_path_style(opts.force_path_style);
        if let Some(e) = &opts.endpoint {
            builder = builder.endpoint_url(e);
        }
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(|| "(AWS default endpoint)".into());
        Ok(Self {
            inner: Arc::new(Inner {
                client: Client::from_conf(builder.build()),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                store_label: format!("{location} (endpoint {endpoint})"),
                location: location.clone(),
                endpoint,
                opts: opts.clone(),
            }),
        })
    }

    /// Creates the bucket when it does not exist (for embedded and test setups; production
    /// buckets are provisioned outside).
    pub async fn ensure_bucket(&self) -> Result<()> {
        let i = &self.inner;
        let r = with_retries(&i.opts.retry, &i.target("create_bucket", ""), || async {
            match i.client.create_bucket().bucket(&i.bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e);
                    if matches!(
                        code,
                        Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                    ) {
                        Ok(())
                    } else {
                        Err(classify(&e, &[]))
                    }
                }
            }
        })
        .await;
        r.map_err(|f| i.error("create_bucket", "", f))
    }

    /// The client, for operations the trait does not cover.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

impl Inner {
    pub fn full_key(&self, key: &BlobPath) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_string(),
        }
    }

    fn prefix_of(&self, prefix: Option<&BlobPath>) -> Option<String> {
        match (prefix, &self.prefix) {
            (Some(p), _) => Some(format!("{}/", self.full_key(p))),
            (None, Some(root)) => Some(format!("{root}/")),
            (None, None) => None,
        }
    }

    /// The store-relative key of a listed bucket key.
    fn relative(&self, full: &str) -> Result<BlobPath> {
        let rel = match &self.prefix {
            Some(p) => full
                .strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| BlobError::InvalidKey {
                    key: full.to_string(),
                    reason: format!("listed by {} but not under its prefix", self.store_label),
                })?,
            None => full,
        };
        BlobPath::new(rel)
    }

    pub fn target<'a>(&'a self, op: &'static str, key: &'a str) -> Target<'a> {
        Target {
            op,
            bucket: &self.bucket,
            key,
            endpoint: &self.endpoint,
        }
    }

    pub fn error(&self, op: &'static str, key: &str, f: Failure) -> BlobError {
        if f.last.status == Some(404) {
            return BlobError::NotFound {
                store: self.store_label.clone(),
                key: key.to_string(),
            };
        }
        BlobError::Backend {
            store: self.store_label.clone(),
            op,
            key: key.to_string(),
            attempts: f.attempts,
            elapsed_ms: f.elapsed.as_millis() as u64,
            retryable: f.last.retryable,
            detail: f.last.detail,
        }
    }

    /// One PutObject of a whole body (bodies up to the part size).
    pub async fn put_object(&self, full: &str, data: Bytes) -> Result<()> {
        let r = with_retries(
            &self.opts.retry,
            &self.target("put_object", full),
            || async {
                let op = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .body(ByteStream::from(data.clone()))
                    .customize();
                let op = if self.opts.sign_payload {
                    op
                } else {
                    op.disable_payload_signing()
                };
                op.send().await.map(|_| ()).map_err(|e| classify(&e, &[]))
            },
        )
        .await;
        r.map_err(|f| self.error("put_object", full, f))
    }

    async fn get_whole(
        &self,
        op: &'static str,
        full: &str,
        range: Option<String>,
    ) -> Result<Bytes, Failure> {
        with_retries(&self.opts.retry, &self.target(op, full), || async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(full)
                .set_range(range.clone())
                .send()
                .await
                .map_err(|e| classify(&e, &[]))?;
            // A body cut off mid-way is retried with the whole request.
            out.body
                .collect()
                .await
                .map(|b| b.into_bytes())
                .map_err(|e| Attempt {
                    retryable: true,
                    status: None,
                    maybe_executed: false,
                    detail: format!("reading the response body: {e}"),
                })
        })
        .await
    }

    async fn delete_batch(&self, label: &str, keys: &[ObjectMeta]) -> Result<()> {
        let ids = keys
            .iter()
            .map(|o| {
                ObjectIdentifier::builder()
                    .key(self.full_key(&o.key))
                    .build()
                    .map_err(|e| BlobError::InvalidKey {
                        key: o.key.to_string(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| BlobError::InvalidOptions(format!("DeleteObjects request: {e}")))?;
        let out = with_retries(
            &self.opts.retry,
            &self.target("delete_objects", label),
            || async {
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&e, &[]))
            },
        )
        .await
        .map_err(|f| self.error("delete_objects", label, f))?;
        // A failed key is reported in the body of a 200 response, not as an error status.
        let failed: Vec<String> = out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .map(|e| {
                format!(
                    "{}: {} {}",
                    e.key().unwrap_or("?"),
                    e.code().unwrap_or("?"),
                    e.message().unwrap_or("")
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BlobError::Backend {
                store: self.store_label.clone(),
                op: "delete_objects",
                key: label.to_string(),
                attempts: 1,
                elapsed_ms: 0,
                retryable: false,
                detail: format!("{} key(s) not deleted: {}", failed.len(), failed.join("; ")),
            })
        }
    }
}

/// Percent-encodes a key for the `x-amz-copy-source` header, keeping `/` as separator.
fn encode_copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait]
impl BlobStore for S3Store {
    fn location(&self) -> &BlobLocation {
        &self.inner.location
    }

    async fn put(&self, key: &BlobPath, data: Bytes) -> Result<()> {
        let i = &self.inner;
        if data.len() <= i.opts.part_size_bytes {
            return i.put_object(&i.full_key(key), data).await;
        }
        let part = i.opts.part_size_bytes;
        let chunks: Vec<io::Result<Bytes>> = (0..data.len())
            .step_by(part)
            .map(|start| Ok(data.slice(start..(start + part).min(data.len()))))
            .collect();
        self.put_stream(key, futures::stream::iter(chunks).boxed())
            .await
            .map(|_| ())
    }

    async fn put_stream(&self, key: &BlobPath, body: ByteChunks) -> Result<u64> {
        crate::multipart::upload(self.inner.clone(), self.inner.full_key(key), body).await
    }

    async fn put_if_absent(&self, key: &BlobPath, data: Bytes) -> Result<()> {
        let i = &self.inner;
        let full = i.full_key(key);
        let r = with_retries(
            &i.opts.retry,
            &i.target("put_object if-none-match", &full),
            || async {
                i.client
                    .put_object()
                    .bucket(&i.bucket)
                    .key(&full)
                    .if_none_match("*")
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .map(|_| ())
                    // 409: a concurrent conditional write to the same key is in progress; S3 asks
                    // for a retry, which then sees the winner's object (412).
                    .map_err(|e| classify(&e, &[409]))
            },
        )
        .await;
        let f = match r {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        if f.last.status != Some(412) {
            return Err(i.error("put_object if-none-match", &full, f));
        }
        // An earlier attempt that timed out may have been ours: re-read instead of guessing.
        if f.maybe_executed_before {
            let existing = i
                .get_whole("get_object", &full, None)
                .await
                .map_err(|f| i.error("get_object (re-read after an ambiguous create)", &full, f))?;
            if existing == data {
                return Ok(());
            }
        }
        Err(BlobError::AlreadyExists {
            store: i.store_label.clone(),
            key: full,
        })
    }

    async fn get(&self, key: &BlobPath) -> Result<Bytes> {
        let i = &self.inner;
        let full = i.full_key(key);
        i.get_whole("get_object", &full, None)
            .await
            .map_err(|f| i.error("get_object", &full, f))
    }

    async fn get_range(&self, key: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let i = &self.inner;
        let full = i.full_key(key);
        let invalid = |detail: String| BlobError::InvalidRange {
            store: i.store_label.clone(),
            key: full.clone(),
            start: range.start,
            end: range.end,
            detail,
        };
        if range.start > range.end {
            return Err(invalid("start is after end".into()));
        }
        if range.start == range.end {
            // HTTP cannot express an empty range; the object must still exist.
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        match i.get_whole("get_object range", &full, Some(header)).await {
            Ok(b) => Ok(b),
            Err(f) if f.last.status == Some(416) => Err(invalid(f.last.detail)),
            Err(f) => Err(i.error("get_object range", &full, f)),
        }
    }

    async fn get_stream(&self, key: &BlobPath) -> Result<ByteChunks> {
        let i = &self.inner;
        let full = i.full_key(key);
        let out = with_retries(&i.opts.retry, &i.target("get_object", &full), || async {
            i.client
                .get_object()
                .bucket(&i.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify(&e, &[]))
        })
        .await
        .map_err(|f| i.error("get_object", &full, f))?;
        let label = format!("{}: get_object {full:?} body", i.store_label);
        Ok(
            futures::stream::unfold((out.body, label), |(mut body, label)| async move {
                let next = body.next().await?;
                Some((
                    next.map_err(|e| io::Error::other(format!("{label}: {e}"))),
                    (body, label),
                ))
            })
            .boxed(),
        )
    }

    async fn head(&self, key: &BlobPath) -> Result<ObjectMeta> {
        let i = &self.inner;
        let full = i.full_key(key);
        let out = with_retries(&i.opts.retry, &i.target("head_object", &full), || async {
            i.client
                .head_object()
                .bucket(&i.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify(&e, &[]))
        })
        .await
        .map_err(|f| i.error("head_object", &full, f))?;
        let size_bytes = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| BlobError::Backend {
                store: i.store_label.clone(),
                op: "head_object",
                key: full.clone(),
                attempts: 1,
                elapsed_ms: 0,
                retryable: false,
                detail: format!("no valid Content-Length: {:?}", out.content_length()),
            })?;
        Ok(ObjectMeta {
            key: key.clone(),
            size_bytes,
        })
    }

    async fn list_page(
        &self,
        prefix: Option<&BlobPath>,
        page_token: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        let i = &self.inner;
        let full_prefix = i.prefix_of(prefix);
        let token = page_token.map(str::to_string);
        let label = full_prefix.clone().unwrap_or_default();
        let max = i32::try_from(max_keys.clamp(1, 1000)).unwrap_or(1000);
        let out = with_retries(
            &i.opts.retry,
            &i.target("list_objects_v2", &label),
            || async {
                i.client
                    .list_objects_v2()
                    .bucket(&i.bucket)
                    .set_prefix(full_prefix.clone())
                    .set_continuation_token(token.clone())
                    .max_keys(max)
                    .send()
                    .await
                    .map_err(|e| classify(&e, &[]))
            },
        )
        .await
        .map_err(|f| i.error("list_objects_v2", &label, f))?;
        let mut objects = Vec::with_capacity(out.contents().len());
        for o in out.contents() {
            let Some(k) = o.key() else { continue };
            objects.push(ObjectMeta {
                key: i.relative(k)?,
                size_bytes: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
            });
        }
        let next_page_token = match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => Some(t.to_string()),
            _ => None,
        };
        Ok(ListPage {
            objects,
            next_page_token,
        })
    }

    async fn list_dirs(&self, prefix: Option<&BlobPath>) -> Result<Vec<String>> {
        let i = &self.inner;
        let full_prefix = i.prefix_of(prefix);
        let label = full_prefix.clone().unwrap_or_default();
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = with_retries(
                &i.opts.retry,
                &i.target("list_objects_v2 delimiter", &label),
                || async {
                    i.client
                        .list_objects_v2()
                        .bucket(&i.bucket)
                        .set_prefix(full_prefix.clone())
                        .delimiter("/")
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| classify(&e, &[]))
                },
            )
            .await
            .map_err(|f| i.error("list_objects_v2 delimiter", &label, f))?;
            for p in out.common_prefixes() {
                let Some(full) = p.prefix() else { continue };
                let name = full
                    .strip_prefix(full_prefix.as_deref().unwrap_or(""))
                    .and_then(|r| r.strip_suffix('/'))
                    .filter(|n| !n.is_empty() && !n.contains('/'));
                match name {
                    Some(n) => names.push(n.to_string()),
                    None => {
                        return Err(BlobError::InvalidKey {
                            key: full.to_string(),
                            reason: format!("common prefix not directly under {label:?}"),
                        });
                    }
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &BlobPath) -> Result<()> {
        let i = &self.inner;
        let full = i.full_key(key);
        let r = with_retries(&i.opts.retry, &i.target("delete_object", &full), || async {
            i.client
                .delete_object()
                .bucket(&i.bucket)
                .key(&full)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e, &[]))
        })
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(f) if f.last.status == Some(404) => Ok(()),
            Err(f) => Err(i.error("delete_object", &full, f)),
        }
    }

    async fn delete_prefix(&self, prefix: &BlobPath) -> Result<DeleteReport> {
        let i = &self.inner;
        let label = format!("{}/", i.full_key(prefix));
        let mut report = DeleteReport::default();
        // Always the first page: deleting invalidates positions in the listing.
        let mut previous_first: Option<BlobPath> = None;
        loop {
            let page = self.list_page(Some(prefix), None, 1000).await?;
            let Some(first) = page.objects.first().map(|o| o.key.clone()) else {
                return Ok(report);
            };
            if previous_first.as_ref() == Some(&first) {
                return Err(BlobError::Backend {
                    store: i.store_label.clone(),
                    op: "delete_objects",
                    key: label,
                    attempts: 1,
                    elapsed_ms: 0,
                    retryable: true,
                    detail: format!("{first} is still listed after it was deleted"),
                });
            }
            i.delete_batch(&label, &page.objects).await?;
            report.deleted.extend(page.objects);
            previous_first = Some(first);
        }
    }

    async fn copy(&self, from: &BlobPath, to: &BlobPath) -> Result<()> {
        let i = &self.inner;
        let (src, dst) = (i.full_key(from), i.full_key(to));
        let source = encode_copy_source(&i.bucket, &src);
        let r = with_retries(&i.opts.retry, &i.target("copy_object", &src), || async {
            i.client
                .copy_object()
                .bucket(&i.bucket)
                .key(&dst)
                .copy_source(&source)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e, &[]))
        })
        .await;
        r.map_err(|f| i.error("copy_object", &format!("{src} -> {dst}"), f))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_source_is_percent_encoded_per_byte() {
        assert_eq!(
            super::encode_copy_source("b", "a/b c/ü+x.bin"),
            "b/a/b%20c/%C3%BC%2Bx.bin"
        );
    }
}
