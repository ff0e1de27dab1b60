//! Streaming upload: one PutObject for bodies up to the part size, otherwise a multipart
//! upload with up to `max_parallel_parts` parts in flight, aborted when anything fails.

use std::io;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sluice_blob::{BlobError, ByteChunks, Result};
use tokio::task::JoinSet;

use crate::retry::{classify, with_retries};
use crate::store::Inner;

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: i32 = 10_000;

pub(crate) async fn upload(inner: Arc<Inner>, full: String, mut body: ByteChunks) -> Result<u64> {
    let part_size = inner.opts.part_size_bytes;
    let mut buf = BytesMut::new();
    // Read one byte past a part before deciding: a body of exactly one part is one PutObject.
    while buf.len() <= part_size {
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(body_error(&inner, &full, e)),
            None => {
                let n = buf.len() as u64;
                inner.put_object(&full, buf.freeze()).await?;
                return Ok(n);
            }
        }
    }

    let created = with_retries(
        &inner.opts.retry,
        &inner.target("create_multipart_upload", &full),
        || async {
            inner
                .client
                .create_multipart_upload()
                .bucket(&inner.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify(&e, &[]))
        },
    )
    .await
    .map_err(|f| inner.error("create_multipart_upload", &full, f))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| BlobError::Backend {
            store: inner.store_label.clone(),
            op: "create_multipart_upload",
            key: full.clone(),
            attempts: 1,
            elapsed_ms: 0,
            retryable: false,
            detail: "the response has no upload id".into(),
        })?
        .to_string();

    let result = match upload_parts(&inner, &full, &upload_id, buf, body).await {
        Ok((parts, total)) => complete(&inner, &full, &upload_id, parts, total).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        abort(&inner, &full, &upload_id).await;
    }
    result
}

async fn upload_parts(
    inner: &Arc<Inner>,
    full: &str,
    upload_id: &str,
    mut buf: BytesMut,
    mut body: ByteChunks,
) -> Result<(Vec<CompletedPart>, u64)> {
    let part_size = inner.opts.part_size_bytes;
    let mut in_flight: JoinSet<Result<CompletedPart>> = JoinSet::new();
    let mut done = Vec::new();
    let mut next_part: i32 = 1;
    let mut total = 0u64;
    let mut ended = false;
    loop {
        while buf.len() >= part_size || (ended && !buf.is_empty()) {
            let data = if buf.len() >= part_size {
                buf.split_to(part_size).freeze()
            } else {
                buf.split().freeze()
            };
            if next_part > MAX_PARTS {
                in_flight.abort_all();
                return Err(BlobError::InvalidOptions(format!(
                    "{full}: more than {MAX_PARTS} parts of {part_size} bytes; raise part_size_bytes"
                )));
            }
            total += data.len() as u64;
            while in_flight.len() >= inner.opts.max_parallel_parts {
                if let Some(r) = in_flight.join_next().await {
                    done.push(joined(inner, full, r)?);
                }
            }
            in_flight.spawn(upload_part(
                inner.clone(),
                full.to_string(),
                upload_id.to_string(),
                next_part,
                data,
            ));
            next_part += 1;
        }
        if ended {
            break;
        }
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => {
                in_flight.abort_all();
                return Err(body_error(inner, full, e));
            }
            None => ended = true,
        }
    }
    while let Some(r) = in_flight.join_next().await {
        done.push(joined(inner, full, r)?);
    }
    done.sort_by_key(|p| p.part_number());
    Ok((done, total))
}

fn joined(
    inner: &Inner,
    full: &str,
    r: Result<Result<CompletedPart>, tokio::task::JoinError>,
) -> Result<CompletedPart> {
    r.map_err(|e| BlobError::Backend {
        store: inner.store_label.clone(),
        op: "upload_part",
        key: full.to_string(),
        attempts: 1,
        elapsed_ms: 0,
        retryable: false,
        detail: format!("the part upload task failed: {e}"),
    })?
}

async fn upload_part(
    inner: Arc<Inner>,
    full: String,
    upload_id: String,
    number: i32,
    data: Bytes,
) -> Result<CompletedPart> {
    let label = format!("{full} part {number}");
    let out = with_retries(
        &inner.opts.retry,
        &inner.target("upload_part", &label),
        || async {
            let op = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(data.clone()))
                .customize();
            let op = if inner.opts.sign_payload {
                op
            } else {
                op.disable_payload_signing()
            };
            op.send().await.map_err(|e| classify(&e, &[]))
        },
    )
    .await
    .map_err(|f| inner.error("upload_part", &label, f))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .build())
}

async fn complete(
    inner: &Inner,
    full: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
    total: u64,
) -> Result<u64> {
    let upload = CompletedMultipartUpload::builder()
        .set_parts(Some(parts))
        .build();
    let r = with_retries(
        &inner.opts.retry,
        &inner.target("complete_multipart_upload", full),
        || async {
            inner
                .client
                .complete_multipart_upload()
                .bucket(&inner.bucket)
                .key(full)
                .upload_id(upload_id)
                .multipart_upload(upload.clone())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e, &[]))
        },
    )
    .await;
    match r {
        Ok(()) => Ok(total),
        // A completion whose response was lost looks like NoSuchUpload on the retry: check
        // the object instead of guessing.
        Err(f) if f.maybe_executed_before && f.last.status == Some(404) => {
            match inner
                .client
                .head_object()
                .bucket(&inner.bucket)
                .key(full)
                .send()
                .await
            {
                Ok(h) if h.content_length() == i64::try_from(total).ok() => Ok(total),
                _ => Err(inner.error("complete_multipart_upload", full, f)),
            }
        }
        Err(f) => Err(inner.error("complete_multipart_upload", full, f)),
    }
}

/// Aborts an upload so its parts stop costing storage. A failure here is logged: the caller
/// already has the error that matters, and a lifecycle rule removes abandoned uploads.
async fn abort(inner: &Inner, full: &str, upload_id: &str) {
    let r = with_retries(
        &inner.opts.retry,
        &inner.target("abort_multipart_upload", full),
        || async {
            inner
                .client
                .abort_multipart_upload()
                .bucket(&inner.bucket)
                .key(full)
                .upload_id(upload_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e, &[]))
        },
    )
    .await;
    if let Err(f) = r {
        tracing::warn!(
            bucket = inner.bucket,
            key = full,
            upload_id,
            "abandoned multipart upload could not be aborted: {}",
            f.last.detail
        );
    }
}

fn body_error(inner: &Inner, full: &str, source: io::Error) -> BlobError {
    BlobError::Io {
        store: inner.store_label.clone(),
        op: "read upload body",
        key: full.to_string(),
        source,
    }
}
