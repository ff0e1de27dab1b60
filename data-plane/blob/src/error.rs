use std::io;

/// What went wrong in a blob store operation. Every variant names the store and the key, so a
/// message read in a log without its span still says where it happened.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    #[error("invalid blob store URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },

    #[error("invalid blob store options: {0}")]
    InvalidOptions(String),

    #[error("{store}: object {key:?} not found")]
    NotFound { store: String, key: String },

    /// A create-if-absent write found the object already there: another writer won.
    #[error("{store}: object {key:?} already exists")]
    AlreadyExists { store: String, key: String },

    #[error("{store}: range {start}..{end} of {key:?} is not satisfiable: {detail}")]
    InvalidRange {
        store: String,
        key: String,
        start: u64,
        end: u64,
        detail: String,
    },

    #[error("{store}: {op} {key:?}: {source}")]
    Io {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },

    /// A remote backend failed; `detail` carries the SDK's full error context.
    #[error(
        "{store}: {op} {key:?} failed after {attempts} attempt(s) in {elapsed_ms} ms: {detail}"
    )]
    Backend {
        store: String,
        op: &'static str,
        key: String,
        attempts: u32,
        elapsed_ms: u64,
        retryable: bool,
        detail: String,
    },
}

impl BlobError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }
}
