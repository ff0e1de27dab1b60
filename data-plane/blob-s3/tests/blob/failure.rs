//! S3 unreachable: bounded retries, then an error naming operation, bucket, key and endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_blob::{BlobError, BlobLocation, BlobStore};
use sluice_blob_s3::{RetryPolicy, S3Store};
use sluice_test_support::{free_port, process, start_s3, unique_name};

use crate::key;

fn short_retries(mut o: sluice_blob_s3::S3Options) -> sluice_blob_s3::S3Options {
    o.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        deadline: Duration::from_secs(2),
        max_attempts: 50,
    };
    o.connect_timeout = Duration::from_millis(500);
    o.attempt_timeout = Duration::from_secs(2);
    o
}

fn assert_named_failure(e: &BlobError, op: &str, bucket: &str, k: &str, endpoint: &str) {
    let BlobError::Backend {
        attempts,
        elapsed_ms,
        retryable,
        ..
    } = e
    else {
        panic!("expected a backend error, got {e:?}");
    };
    let msg = e.to_string();
    assert!(*attempts > 1, "no retry happened: {msg}");
    assert!(
        *retryable,
        "a connection failure must count as retryable: {msg}"
    );
    assert!(*elapsed_ms <= 2500, "retries ran past the deadline: {msg}");
    for part in [op, bucket, k, endpoint] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[tokio::test]
async fn endpoint_with_nothing_listening_fails_after_bounded_retries() {
    let port = free_port().unwrap_or_else(|e| panic!("free port: {e}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut opts = crate::s3_options(sluice_test_support::s3());
    opts.endpoint = Some(endpoint.clone());
    let bucket = unique_name("down-");
    let loc = BlobLocation::parse(&format!("s3://{bucket}/p")).unwrap_or_else(|e| panic!("{e}"));
    let store = S3Store::connect(&loc, &short_retries(opts))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let started = Instant::now();
    let e = store
        .get(&key("chk/_metadata"))
        .await
        .expect_err("get from a dead endpoint succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_named_failure(&e, "get_object", &bucket, "p/chk/_metadata", &endpoint);
    assert!(
        e.to_string().contains("onnect"),
        "no connection detail: {e}"
    );

    let e = store
        .put_if_absent(&key("chk/_metadata"), Bytes::from_static(b"x"))
        .await
        .expect_err("put to a dead endpoint succeeded");
    assert_named_failure(
        &e,
        "put_object if-none-match",
        &bucket,
        "p/chk/_metadata",
        &endpoint,
    );
    let e = store
        .list_page(None, None, 10)
        .await
        .expect_err("list on a dead endpoint succeeded");
    assert_named_failure(&e, "list_objects_v2", &bucket, "p/", &endpoint);
}

/// A private SeaweedFS that this test starts and then stops (never the shared one).
#[tokio::test]
async fn store_that_goes_away_mid_run_fails_with_context() {
    let own = tokio::task::spawn_blocking(start_s3)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("private SeaweedFS: {e:#}"));
    let pid = own.pid.unwrap_or_else(|| panic!("start_s3 gave no pid"));
    let bucket = unique_name("gone-");
    let loc = BlobLocation::parse(&format!("s3://{bucket}")).unwrap_or_else(|e| panic!("{e}"));
    let store = S3Store::connect(&loc, &short_retries(crate::s3_options(&own)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .ensure_bucket()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store: Arc<dyn BlobStore> = Arc::new(store);
    let k = key("sp/_metadata");
    store
        .put(&k, Bytes::from_static(b"before"))
        .await
        .unwrap_or_else(|e| panic!("put before stop: {e}"));
    assert_eq!(store.get(&k).await.ok().as_deref(), Some(&b"before"[..]));

    tokio::task::spawn_blocking(move || process::stop_owned(pid))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = store
        .get(&k)
        .await
        .expect_err("get after the store stopped");
    assert_named_failure(&e, "get_object", &bucket, "sp/_metadata", &own.endpoint);
    let e = store
        .delete_prefix(&key("sp"))
        .await
        .expect_err("delete_prefix after the store stopped");
    assert!(e.to_string().contains(&own.endpoint), "{e}");
}
