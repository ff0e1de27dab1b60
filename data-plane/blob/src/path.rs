//! Object keys that cannot leave the root of their store.
//!
//! Tenants' storage prefixes are built from these keys, so a key is validated once, when it is
//! made, and every backend can then join it to its root without re-checking.

use std::fmt;

use crate::BlobError;

/// Longest key S3 accepts (in bytes); the filesystem backend uses the same limit.
const MAX_KEY_BYTES: usize = 1024;

/// First segment reserved for the filesystem backend's temporary files.
pub(crate) const RESERVED_TMP_SEGMENT: &str = ".sluice-tmp";

/// A validated, relative, `/`-separated object key (for example `gen-0000000001/chk-000000000007/_metadata`).
///
/// Rejected: the empty key, a leading `/` (absolute), empty segments (`a//b`, trailing `/`), the
/// segments `.` and `..`, backslashes, control characters, keys over 1024 bytes and the reserved
/// first segment `.sluice-tmp`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobPath(String);

impl BlobPath {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, BlobError> {
        let key = key.into();
        validate(&key)?;
        Ok(Self(key))
    }

    /// Appends a relative path (one segment or several separated by `/`), validating it.
    pub fn join(&self, rest: &str) -> Result<Self, BlobError> {
        // Validating the joined key catches an empty, absolute or escaping `rest` as an empty
        // or `..` segment.
        Self::new(format!("{}/{rest}", self.0))
    }

    /// Appends another validated key.
    pub fn join_path(&self, rest: &BlobPath) -> BlobPath {
        BlobPath(format!("{}/{}", self.0, rest.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments of the key, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when this key lies strictly under `prefix` (directory semantics: `a/bc` is not
    /// under `a/b`).
    pub fn is_under(&self, prefix: &BlobPath) -> bool {
        self.0.len() > prefix.0.len()
            && self.0.starts_with(&prefix.0)
            && self.0.as_bytes()[prefix.0.len()] == b'/'
    }

    /// The part of this key below `prefix`, when it lies under it.
    pub fn relative_to(&self, prefix: &BlobPath) -> Option<&str> {
        self.is_under(prefix).then(|| &self.0[prefix.0.len() + 1..])
    }
}

impl fmt::Display for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl TryFrom<&str> for BlobPath {
    type Error = BlobError;
    fn try_from(s: &str) -> Result<Self, BlobError> {
        Self::new(s)
    }
}

fn validate(key: &str) -> Result<(), BlobError> {
    let bad = |reason: &str| {
        Err(BlobError::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return bad("the key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("the key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("the key is absolute (starts with '/')");
    }
    if key.contains('\\') {
        return bad("the key contains a backslash");
    }
    if key.chars().any(char::is_control) {
        return bad("the key contains a control character");
    }
    for (i, segment) in key.split('/').enumerate() {
        match segment {
            "" => return bad("the key has an empty segment ('//' or a trailing '/')"),
            "." | ".." => return bad("the key has a '.' or '..' segment"),
            RESERVED_TMP_SEGMENT if i == 0 => {
                return bad("the first segment '.sluice-tmp' is reserved for temporary files");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for k in [
            "a",
            "a/b/c",
            "org_1/app_2/savepoints/sp_3/_metadata",
            "x.y/.hidden",
            "a..b",
        ] {
            assert_eq!(
                BlobPath::new(k).map(|p| p.to_string()).ok(),
                Some(k.to_string())
            );
        }
    }

    #[test]
    fn rejects_keys_that_could_escape_or_alias() {
        let long = "a".repeat(1025);
        for k in [
            "",
            "/abs",
            "a//b",
            "a/",
            "..",
            "a/../b",
            "./a",
            "a/.",
            "a\\b",
            "a\nb",
            "\u{0}",
            ".sluice-tmp/x",
            &long,
        ] {
            assert!(
                matches!(BlobPath::new(k), Err(BlobError::InvalidKey { .. })),
                "{k:?} was accepted"
            );
        }
    }

    #[test]
    fn join_validates_the_appended_part() {
        let base = BlobPath::new("tenant/org_1").expect("valid");
        assert_eq!(
            base.join("app/x").map(|p| p.to_string()).ok().as_deref(),
            Some("tenant/org_1/app/x")
        );
        for bad in ["../org_2", "/etc", "", "a//b", "x/.."] {
            assert!(base.join(bad).is_err(), "{bad:?} joined");
        }
        // A reserved segment is only reserved at the root.
        assert!(base.join(".sluice-tmp").is_ok());
    }

    #[test]
    fn under_is_directory_prefix_not_string_prefix() {
        let p = BlobPath::new("a/b").expect("valid");
        assert!(BlobPath::new("a/b/c").expect("valid").is_under(&p));
        assert!(!BlobPath::new("a/bc").expect("valid").is_under(&p));
        assert!(!p.is_under(&p));
        assert_eq!(
            BlobPath::new("a/b/c/d").expect("valid").relative_to(&p),
            Some("c/d")
        );
    }
}
