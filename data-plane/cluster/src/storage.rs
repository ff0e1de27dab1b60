//! Opening the job root and snapshot directories named by URIs.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sluice_blob::{BlobPath, BlobStore};
use sluice_blob_s3::{OpenOptions, S3Options};

/// Splits `file:///a/b/job` into the store `file:///a/b` and the key `job`: checkpoint
/// keys live under a non-empty root inside a store.
pub fn split_uri(uri: &str) -> Result<(String, BlobPath)> {
    let trimmed = uri.trim_end_matches('/');
    let Some((base, last)) = trimmed.rsplit_once('/') else {
        bail!("{uri} is not a file:// or s3:// URI");
    };
    if last.is_empty() || base.ends_with(':') || base.ends_with(":/") {
        bail!("{uri} needs a directory below the bucket or filesystem root");
    }
    let base = if base == "file://" {
        "file:///".to_string()
    } else {
        base.to_string()
    };
    let key = BlobPath::new(last).with_context(|| format!("the last segment of {uri}"))?;
    Ok((base, key))
}

/// S3 settings from the environment (`S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), path-style.
pub fn open_options() -> OpenOptions {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let s3 = match env("S3_ENDPOINT") {
        Some(endpoint) => S3Options::compatible(
            &endpoint,
            &env("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            &env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            &env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        ),
        None => S3Options {
            region: env("AWS_REGION"),
            force_path_style: true,
            ..S3Options::default()
        },
    };
    OpenOptions { s3 }
}

pub async fn open_store(base: &str) -> Result<Arc<dyn BlobStore>> {
    sluice_blob_s3::open(base, &open_options())
        .await
        .with_context(|| format!("opening the blob store {base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_store_and_root() {
        let (b, k) = split_uri("file:///tmp/x/job/").expect("split");
        assert_eq!((b.as_str(), k.as_str()), ("file:///tmp/x", "job"));
        let (b, k) = split_uri("file:///job").expect("split");
        assert_eq!((b.as_str(), k.as_str()), ("file:///", "job"));
        let (b, k) = split_uri("s3://bucket/a/b").expect("split");
        assert_eq!((b.as_str(), k.as_str()), ("s3://bucket/a", "b"));
        assert!(split_uri("s3://bucket").is_err());
        assert!(split_uri("nope").is_err());
    }
}
