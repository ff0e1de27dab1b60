//! The blob store contract: every trait operation, checked the same way on both backends.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sluice_blob::{BlobError, BlobStore, copy_between, copy_prefix_between};

use crate::{both_backends, key, pattern};

both_backends!(objects_round_trip, 60);
both_backends!(multipart_30_mib, 120);
both_backends!(listing_over_1000_keys_pages_and_prefix_delete, 180);
both_backends!(put_if_absent_race_has_one_winner, 60);

async fn objects_round_trip(store: Arc<dyn BlobStore>) -> Result<()> {
    let a = key("dir/a.bin");
    store.put(&a, Bytes::from_static(b"first")).await?;
    store.put(&a, Bytes::from_static(b"0123456789")).await?;
    ensure!(store.get(&a).await? == "0123456789", "put does not replace");
    ensure!(store.head(&a).await?.size_bytes == 10);

    // Ranges: inside, cut at the end, past the end, empty.
    ensure!(store.get_range(&a, 2..5).await? == "234");
    ensure!(store.get_range(&a, 8..100).await? == "89");
    ensure!(store.get_range(&a, 4..4).await?.is_empty());
    let past = store.get_range(&a, 10..12).await;
    ensure!(
        matches!(past, Err(BlobError::InvalidRange { .. })),
        "range past the end: {past:?}"
    );
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = store.get_range(&a, 5..2).await;
    ensure!(matches!(backwards, Err(BlobError::InvalidRange { .. })));

    // Missing objects.
    let missing = key("dir/missing");
    for r in [
        store.get(&missing).await.map(|_| ()),
        store.head(&missing).await.map(|_| ()),
        store.get_range(&missing, 0..1).await.map(|_| ()),
        store.get_range(&missing, 0..0).await.map(|_| ()),
        store.get_stream(&missing).await.map(|_| ()),
        store.copy(&missing, &key("dir/copy")).await,
    ] {
        match r {
            Err(e) if e.is_not_found() => {
                ensure!(
                    e.to_string().contains("missing"),
                    "error does not name the key: {e}"
                );
            }
            other => bail!("missing object: expected NotFound, got {other:?}"),
        }
    }
    // A "directory" is not an object on either backend.
    ensure!(
        store
            .head(&key("dir"))
            .await
            .is_err_and(|e| e.is_not_found())
    );

    // Empty objects exist and have size 0.
    let empty = key("dir/empty");
    store.put(&empty, Bytes::new()).await?;
    ensure!(store.get(&empty).await?.is_empty());
    ensure!(store.head(&empty).await?.size_bytes == 0);

    // Create-if-absent.
    let c = key("commit/_metadata");
    store
        .put_if_absent(&c, Bytes::from_static(b"winner"))
        .await?;
    let again = store.put_if_absent(&c, Bytes::from_static(b"loser")).await;
    ensure!(
        matches!(again, Err(BlobError::AlreadyExists { .. })),
        "second create: {again:?}"
    );
    ensure!(
        store.get(&c).await? == "winner",
        "create-if-absent overwrote"
    );

    // Streams and local files.
    let data = pattern(3 << 20, 1);
    let tmp = tempfile::tempdir()?;
    let local = tmp.path().join("up.bin");
    tokio::fs::write(&local, &data).await?;
    let f = key("files/up.bin");
    ensure!(store.put_file(&f, &local).await? == data.len() as u64);
    let chunks: Vec<Bytes> = store.get_stream(&f).await?.try_collect().await?;
    ensure!(chunks.concat() == data, "streamed download differs");
    let down = tmp.path().join("down.bin");
    ensure!(store.get_to_file(&f, &down).await? == data.len() as u64);
    ensure!(
        tokio::fs::read(&down).await? == data,
        "downloaded file differs"
    );
    let chunked = futures::stream::iter(
        data.chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
    .boxed();
    let s = key("files/stream.bin");
    ensure!(store.put_stream(&s, chunked).await? == data.len() as u64);
    ensure!(store.get(&s).await? == data);

    // Copy within the store and between stores.
    let copied = key("export/up.bin");
    store.copy(&f, &copied).await?;
    ensure!(store.get(&copied).await? == data);
    ensure!(store.get(&f).await? == data, "copy removed the source");
    let (_other_dir, other) = crate::fs_store().await;
    ensure!(
        copy_between(store.as_ref(), &f, other.as_ref(), &key("x/y")).await? == data.len() as u64
    );
    ensure!(other.get(&key("x/y")).await? == data);
    let listed =
        copy_prefix_between(store.as_ref(), &key("files"), other.as_ref(), &key("exp")).await?;
    ensure!(listed.len() == 2);
    ensure!(other.get(&key("exp/stream.bin")).await? == data);

    // Listing order and directory-style prefixes ('-' < '/' < '0' in byte order).
    for k in ["p/a-1", "p/a/x", "p/a0", "pq/x"] {
        store.put(&key(k), Bytes::from_static(b"1")).await?;
    }
    let mut keys: Vec<String> = store
        .list_all(Some(&key("p")))
        .await?
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    // The order differs between backends ('-' < '/' < '0' in bytes; SeaweedFS lists directory
    // by directory) but is stable; the filesystem backend uses byte order.
    let again: Vec<String> = store
        .list_all(Some(&key("p")))
        .await?
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    ensure!(
        keys == again,
        "listing order changed: {keys:?} then {again:?}"
    );
    if matches!(store.location(), sluice_blob::BlobLocation::File { .. }) {
        ensure!(keys == ["p/a-1", "p/a/x", "p/a0"], "byte order: {keys:?}");
    }
    keys.sort();
    ensure!(keys == ["p/a-1", "p/a/x", "p/a0"], "listing of p: {keys:?}");
    ensure!(store.list_dirs(Some(&key("p"))).await? == ["a"]);

    // Delete: gone afterwards; deleting again or a missing key succeeds.
    store.delete(&a).await?;
    ensure!(store.get(&a).await.is_err_and(|e| e.is_not_found()));
    store.delete(&a).await?;
    store.delete(&key("never/was")).await?;
    // A new object under a directory emptied by a delete.
    store.put(&a, Bytes::from_static(b"back")).await?;
    ensure!(store.get(&a).await? == "back");
    Ok(())
}

async fn multipart_30_mib(store: Arc<dyn BlobStore>) -> Result<()> {
    let data = pattern((30 << 20) + 123, 7);
    let k = key("big/object.bin");
    store.put(&k, data.clone()).await?;
    ensure!(store.head(&k).await?.size_bytes == data.len() as u64);
    let got = store.get(&k).await?;
    ensure!(
        got.len() == data.len() && got == data,
        "30 MiB object differs after upload"
    );
    // A range across the first part boundary (5 MiB).
    let boundary = (crate::TEST_PART_SIZE - 10) as u64;
    ensure!(store.get_range(&k, boundary..boundary + 20).await? == data.slice(5242870..5242890));

    // From a local file (streamed into parts), replacing the object.
    let tmp = tempfile::tempdir()?;
    let local = tmp.path().join("big.bin");
    let data2 = pattern((31 << 20) + 1, 8);
    tokio::fs::write(&local, &data2).await?;
    ensure!(store.put_file(&k, &local).await? == data2.len() as u64);
    ensure!(store.get(&k).await? == data2, "multipart from file differs");

    // A body that fails mid-way leaves no object (the upload is aborted).
    let failing = key("big/failing.bin");
    let parts: Vec<std::io::Result<Bytes>> = vec![
        Ok(pattern(12 << 20, 9)),
        Err(std::io::Error::other("disk read failed")),
    ];
    let r = store
        .put_stream(&failing, futures::stream::iter(parts).boxed())
        .await;
    match r {
        Err(e) => ensure!(e.to_string().contains("disk read failed"), "{e}"),
        Ok(n) => bail!("a failing body uploaded {n} bytes"),
    }
    ensure!(store.head(&failing).await.is_err_and(|e| e.is_not_found()));
    Ok(())
}

async fn listing_over_1000_keys_pages_and_prefix_delete(store: Arc<dyn BlobStore>) -> Result<()> {
    const N: usize = 1100;
    let names: Vec<String> = (0..N).map(|i| format!("many/{i:05}")).collect();
    futures::stream::iter(names.iter())
        .map(|n| {
            let store = store.clone();
            async move { store.put(&key(n), Bytes::from(n.clone())).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .context("writing 1100 objects")?;
    store
        .put(&key("manyx/keep"), Bytes::from_static(b"k"))
        .await?;
    store
        .put(&key("other/keep"), Bytes::from_static(b"k"))
        .await?;

    let prefix = key("many");
    let first = store.list_page(Some(&prefix), None, 1000).await?;
    ensure!(
        first.objects.len() == 1000,
        "first page has {}",
        first.objects.len()
    );
    let token = first
        .next_page_token
        .clone()
        .context("first page says no more")?;
    ensure!(first.objects[999].key.as_str() == "many/00999");
    let second = store.list_page(Some(&prefix), Some(&token), 1000).await?;
    ensure!(second.objects.len() == 100 && second.next_page_token.is_none());
    ensure!(second.objects[0].key.as_str() == "many/01000");

    let all: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|o| o.key.to_string())
        .try_collect()
        .await?;
    ensure!(all == names, "listing is not the 1100 keys in order");
    let small = store.list_page(Some(&prefix), None, 7).await?;
    ensure!(small.objects.len() == 7 && small.next_page_token.is_some());
    ensure!(store.list_dirs(None).await? == ["many", "manyx", "other"]);
    ensure!(store.list_dirs(Some(&prefix)).await?.is_empty());

    let report = store.delete_prefix(&prefix).await?;
    ensure!(report.objects() == N, "deleted {}", report.objects());
    ensure!(report.bytes() == names.iter().map(|n| n.len() as u64).sum::<u64>());
    ensure!(
        store.list_all(Some(&prefix)).await?.is_empty(),
        "objects left"
    );
    let rest: Vec<String> = store
        .list_all(None)
        .await?
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    ensure!(
        rest == ["manyx/keep", "other/keep"],
        "prefix delete touched {rest:?}"
    );
    ensure!(store.delete_prefix(&prefix).await?.objects() == 0);
    Ok(())
}

async fn put_if_absent_race_has_one_winner(store: Arc<dyn BlobStore>) -> Result<()> {
    const WRITERS: usize = 16;
    for round in 0..3 {
        let k = key(&format!("race/{round}/_metadata"));
        let results = futures::future::join_all((0..WRITERS).map(|w| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent(&k, Bytes::from(format!("writer {w}")))
                    .await
            })
        }))
        .await;
        let mut winners = Vec::new();
        for (w, r) in results.into_iter().enumerate() {
            match r? {
                Ok(()) => winners.push(w),
                Err(BlobError::AlreadyExists { .. }) => {}
                Err(e) => bail!("writer {w}: {e}"),
            }
        }
        ensure!(winners.len() == 1, "round {round}: winners {winners:?}");
        let body = store.get(&k).await?;
        ensure!(
            body == format!("writer {}", winners[0]),
            "round {round}: the object is not the winner's"
        );
    }
    Ok(())
}

/// Above the part size the S3 backend really uploads parts (the ETag of a multipart object is
/// `"<md5 of part md5s>-<part count>"`), and below it one PutObject.
#[tokio::test]
async fn s3_uses_multipart_above_the_part_size() {
    use sluice_blob_s3::S3Store;
    let service = sluice_test_support::s3();
    let bucket = sluice_test_support::unique_name("mp-");
    let loc = sluice_blob::BlobLocation::parse(&format!("s3://{bucket}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let store = S3Store::connect(&loc, &crate::s3_options(service))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .ensure_bucket()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let etag = |k: &'static str| {
        let client = store.client().clone();
        let bucket = bucket.clone();
        async move {
            client
                .head_object()
                .bucket(bucket)
                .key(k)
                .send()
                .await
                .unwrap_or_else(|e| panic!("head {k}: {e}"))
                .e_tag()
                .unwrap_or_default()
                .to_string()
        }
    };
    let big = pattern(3 * crate::TEST_PART_SIZE + 1, 5);
    store
        .put(&key("big"), big)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let small = pattern(crate::TEST_PART_SIZE, 6);
    store
        .put(&key("small"), small)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (big_tag, small_tag) = (etag("big").await, etag("small").await);
    assert!(
        big_tag.trim_matches('"').ends_with("-4"),
        "big object ETag {big_tag}"
    );
    assert!(!small_tag.contains('-'), "small object ETag {small_tag}");
}

/// With payload signing off, uploads (single and multipart) still arrive intact.
#[tokio::test]
async fn s3_unsigned_payload_uploads_round_trip() {
    let mut opts = crate::s3_options(sluice_test_support::s3());
    opts.sign_payload = false;
    let bucket = sluice_test_support::unique_name("unsigned-");
    let loc = sluice_blob::BlobLocation::parse(&format!("s3://{bucket}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let store = sluice_blob_s3::S3Store::connect(&loc, &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .ensure_bucket()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, len) in [("small", 1000), ("big", 2 * crate::TEST_PART_SIZE + 7)] {
        let data = pattern(len, len as u64);
        store
            .put(&key(name), data.clone())
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        let got = store
            .get(&key(name))
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        assert!(got == data, "{name} differs after an unsigned upload");
    }
}
