//! Throughput of the blob store on this machine, next to what the machine itself allows.
//!
//! For each object size (default 256 MiB and 1 GiB) it measures, in one run:
//! - raw disk write (8 MiB writes + fsync) and loopback TCP (1 MiB writes, a reader that
//!   discards): the ceilings;
//! - the filesystem backend: upload from a local file (`put_file`) and download into a local
//!   file (`get_to_file`);
//! - the S3 backend against SeaweedFS on loopback: the same, multipart with parallel parts.
//!
//! ```sh
//! dev/cargo run --release -p sluice-blob-s3 --example blob_bench            # 256 MiB and 1 GiB
//! dev/cargo run --release -p sluice-blob-s3 --example blob_bench -- 64 256  # sizes in MiB
//! ```
//! `S3_ENDPOINT` (and `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`) selects a running store;
//! otherwise a private SeaweedFS is started. `BENCH_DIR` sets the scratch directory
//! (default: the system temp dir). `BENCH_PART_MIB` and `BENCH_PARALLEL_PARTS` tune multipart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_blob::{BlobPath, BlobStore};
use sluice_blob_s3::{S3Options, S3Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() -> Result<()> {
    let sizes_mib: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().with_context(|| format!("size in MiB: {a:?}")))
            .collect::<Result<_>>()?;
        if args.is_empty() {
            vec![256, 1024]
        } else {
            args
        }
    };
    let part_mib: usize = env_num("BENCH_PART_MIB", 16)?;
    let parallel: usize = env_num("BENCH_PARALLEL_PARTS", 4)?;
    let scratch = tempfile::Builder::new()
        .prefix("sluice-blob-bench-")
        .tempdir_in(
            std::env::var("BENCH_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .context("scratch directory")?;

    let service = tokio::task::spawn_blocking(sluice_test_support::s3).await?;
    let mut opts = S3Options::compatible(
        &service.endpoint,
        &service.region,
        &service.access_key_id,
        &service.secret_access_key,
    );
    opts.part_size_bytes = part_mib * MIB;
    opts.max_parallel_parts = parallel;
    opts.sign_payload = env_num("BENCH_SIGN_PAYLOAD", 1)? != 0;
    let bucket = sluice_test_support::unique_name("bench-");
    let s3 = S3Store::connect(
        &sluice_blob::BlobLocation::parse(&format!("s3://{bucket}"))?,
        &opts,
    )
    .await?;
    s3.ensure_bucket().await?;
    let s3: Arc<dyn BlobStore> = Arc::new(s3);
    let fs: Arc<dyn BlobStore> = sluice_blob_s3::open(
        &format!("file://{}/store", scratch.path().display()),
        &Default::default(),
    )
    .await?;

    println!(
        "profile: {}; scratch: {}; S3: SeaweedFS at {} (part {part_mib} MiB, {parallel} parallel, payload signing {})",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        scratch.path().display(),
        service.endpoint,
        if opts.sign_payload { "on" } else { "off" },
    );
    println!(
        "{:>8}  {:<34} {:>10} {:>9}",
        "size", "what", "MiB/s", "seconds"
    );
    for mib in sizes_mib {
        let bytes = mib * MIB;
        let src = scratch.path().join("source.bin");
        write_source(&src, bytes).await?;
        let raw = raw_disk_write(&scratch.path().join("raw.bin"), bytes).await?;
        row(mib, "raw disk write (8 MiB + fsync)", bytes, raw);
        row(
            mib,
            "loopback TCP (1 MiB writes)",
            bytes,
            loopback_tcp(bytes).await?,
        );

        let key = BlobPath::new(format!("bench/{mib}.bin"))?;
        for (name, store) in [("filesystem", &fs), ("S3 (SeaweedFS)", &s3)] {
            let start = Instant::now();
            let n = store.put_file(&key, &src).await?;
            anyhow::ensure!(n == bytes as u64, "{name}: uploaded {n} of {bytes} bytes");
            row(
                mib,
                &format!("{name} upload (put_file)"),
                bytes,
                start.elapsed(),
            );

            let dst = scratch.path().join("download.bin");
            let start = Instant::now();
            let n = store.get_to_file(&key, &dst).await?;
            anyhow::ensure!(n == bytes as u64, "{name}: downloaded {n} of {bytes} bytes");
            row(
                mib,
                &format!("{name} download (get_to_file)"),
                bytes,
                start.elapsed(),
            );
            tokio::fs::remove_file(&dst).await?;
            store.delete(&key).await?;
        }
        tokio::fs::remove_file(&src).await?;
    }
    Ok(())
}

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn row(mib: usize, what: &str, bytes: usize, t: Duration) {
    let rate = bytes as f64 / MIB as f64 / t.as_secs_f64();
    println!(
        "{:>5} MiB  {what:<34} {rate:>10.0} {:>9.2}",
        mib,
        t.as_secs_f64()
    );
}

/// Writes `bytes` of non-repeating data (the upload source) and syncs it; not timed.
async fn write_source(path: &Path, bytes: usize) -> Result<()> {
    let mut block = vec![0u8; 8 * MIB];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut f = tokio::fs::File::create(path).await?;
    let mut left = bytes;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).await?;
        left -= n;
    }
    f.sync_all().await?;
    Ok(())
}

/// The disk's sequential write speed: `bytes` in 8 MiB writes of a prepared block, then fsync.
async fn raw_disk_write(path: &Path, bytes: usize) -> Result<Duration> {
    let block: Vec<u8> = (0..8 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let mut f = tokio::fs::File::create(path).await?;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n]).await?;
        left -= n;
    }
    f.sync_all().await?;
    let t = start.elapsed();
    drop(f);
    tokio::fs::remove_file(path).await?;
    Ok(t)
}

/// Pushes `bytes` through a loopback TCP connection to a reader that discards them.
async fn loopback_tcp(bytes: usize) -> Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; MIB];
        let mut got = 0usize;
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<usize, std::io::Error>(got);
            }
            got += n;
        }
    });
    let buf = vec![7u8; MIB];
    let start = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        sock.write_all(&buf[..n]).await?;
        left -= n;
    }
    sock.shutdown().await?;
    let got = reader.await??;
    anyhow::ensure!(got == bytes, "loopback reader got {got} of {bytes} bytes");
    Ok(start.elapsed())
}
