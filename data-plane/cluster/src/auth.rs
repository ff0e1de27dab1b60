//! The shared secret of one cluster: REST callers send it as a bearer token and TaskManagers
//! present it in their RPC handshake.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads a token file (surrounding whitespace ignored; an empty file is refused, since it
/// would make every caller authorized).
pub fn read_token(path: &Path) -> Result<String> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading the auth token file {}", path.display()))?;
    let token = raw.trim().to_string();
    if token.is_empty() {
        bail!("the auth token file {} is empty", path.display());
    }
    Ok(token)
}

/// Compares in time independent of where the first difference is.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Whether an `Authorization` header value carries the token.
pub fn bearer_matches(expected: &str, header: Option<&str>) -> bool {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| token_matches(expected, t.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert!(bearer_matches("s3cr3t", Some("Bearer s3cr3t")));
        assert!(!bearer_matches("s3cr3t", Some("Bearer s3cr3")));
        assert!(!bearer_matches("s3cr3t", Some("Bearer s3cr3tt")));
        assert!(!bearer_matches("s3cr3t", Some("Basic s3cr3t")));
        assert!(!bearer_matches("s3cr3t", None));
        assert!(!bearer_matches("s3cr3t", Some("Bearer ")));
    }

    #[test]
    fn empty_token_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        std::fs::write(&p, " \n").expect("write");
        assert!(read_token(&p).is_err());
        std::fs::write(&p, "abc\n").expect("write");
        assert_eq!(read_token(&p).expect("read"), "abc");
    }
}
