//! Blob store URIs: `file:///abs/path/root` and `s3://bucket/prefix`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{BlobError, BlobPath};

/// Where a blob store keeps its objects, parsed from a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A directory on a local (or mounted) filesystem.
    File { root: PathBuf },
    /// An S3 bucket, optionally narrowed to a key prefix.
    S3 {
        bucket: String,
        prefix: Option<BlobPath>,
    },
}

impl BlobLocation {
    /// Parses a `file://` or `s3://` URI. A trailing `/` is ignored.
    pub fn parse(uri: &str) -> Result<Self, BlobError> {
        let bad = |reason: &str| BlobError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file URI needs an absolute path and no host (file:///abs/path)",
                ));
            }
            let root = Path::new(rest.trim_end_matches('/'));
            let root = if root.as_os_str().is_empty() {
                Path::new("/")
            } else {
                root
            };
            // Checked on the text: `Path::components` silently drops inner `.` segments.
            if rest.split('/').any(|s| s == "." || s == "..") {
                return Err(bad("the path has a '.' or '..' component"));
            }
            if rest.contains("//") {
                return Err(bad("the path has an empty component ('//')"));
            }
            return Ok(Self::File {
                root: root.to_path_buf(),
            });
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p.trim_end_matches('/')),
                None => (rest, ""),
            };
            validate_bucket(bucket).map_err(|r| bad(&r))?;
            let prefix = if prefix.is_empty() {
                None
            } else {
                Some(BlobPath::new(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?)
            };
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        Err(bad("unsupported scheme: expected file:// or s3://"))
    }

    /// The location of `sub` below this one: how a tenant's or a job's prefix is derived from
    /// the platform root. `sub` is a validated key, so the result stays under `self`.
    pub fn join(&self, sub: &BlobPath) -> BlobLocation {
        match self {
            Self::File { root } => Self::File {
                root: sub.segments().fold(root.clone(), |p, s| p.join(s)),
            },
            Self::S3 { bucket, prefix } => Self::S3 {
                bucket: bucket.clone(),
                prefix: Some(match prefix {
                    Some(p) => p.join_path(sub),
                    None => sub.clone(),
                }),
            },
        }
    }
}

impl fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { root } => write!(f, "file://{}", root.display()),
            Self::S3 {
                bucket,
                prefix: Some(p),
            } => write!(f, "s3://{bucket}/{p}"),
            Self::S3 {
                bucket,
                prefix: None,
            } => write!(f, "s3://{bucket}"),
        }
    }
}

/// S3's bucket naming rules (the subset that matters for path-style addressing and for not
/// being confused with a path).
fn validate_bucket(bucket: &str) -> Result<(), String> {
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "bucket name {bucket:?} may only contain a-z, 0-9, '-' and '.'"
        ));
    }
    let first = bucket.as_bytes()[0];
    let last = bucket.as_bytes()[bucket.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() || bucket.contains("..") {
        return Err(format!(
            "bucket name {bucket:?} must start and end with a letter or digit and have no '..'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BlobPath {
        BlobPath::new(s).expect("valid key")
    }

    #[test]
    fn parses_file_and_s3_uris() {
        assert_eq!(
            BlobLocation::parse("file:///var/lib/sluice/").ok(),
            Some(BlobLocation::File {
                root: PathBuf::from("/var/lib/sluice")
            })
        );
        assert_eq!(
            BlobLocation::parse("s3://my-bucket").ok(),
            Some(BlobLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: None
            })
        );
        assert_eq!(
            BlobLocation::parse("s3://my-bucket/tenants/org_1/").ok(),
            Some(BlobLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: Some(p("tenants/org_1"))
            })
        );
    }

    #[test]
    fn rejects_bad_uris() {
        for uri in [
            "file://relative/path",
            "file://host/abs",
            "file:///a/../b",
            "file:///a/./b",
            "file:///a//b",
            "s3://",
            "s3://B",
            "s3://Upper-Case",
            "s3://-bucket",
            "s3://bucket/a/../b",
            "s3://bucket//a",
            "s3://bucket/a//b",
            "gs://bucket",
            "/abs/path",
        ] {
            assert!(
                matches!(BlobLocation::parse(uri), Err(BlobError::InvalidUri { .. })),
                "{uri} was accepted"
            );
        }
    }

    #[test]
    fn join_stays_under_the_root_and_round_trips() {
        let root = BlobLocation::parse("s3://b-1/platform").expect("valid");
        let tenant = root.join(&p("org_1/app_2"));
        assert_eq!(tenant.to_string(), "s3://b-1/platform/org_1/app_2");
        assert_eq!(BlobLocation::parse(&tenant.to_string()).ok(), Some(tenant));

        let fs = BlobLocation::parse("file:///srv/blobs").expect("valid");
        assert_eq!(
            fs.join(&p("org_1/app_2")).to_string(),
            "file:///srv/blobs/org_1/app_2"
        );
        // Escaping needs a key with '..', which cannot be made.
        assert!(BlobPath::new("../org_2").is_err());
    }
}
