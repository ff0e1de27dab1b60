use std::error::Error as StdError;

use crate::backend::StateKind;
use crate::keygroup::KeyGroupRange;

/// Everything that can go wrong in a state backend or with a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(
        "state `{name}` is registered as {existing} state, cannot register it as {requested} state"
    )]
    KindMismatch {
        name: String,
        existing: StateKind,
        requested: StateKind,
    },

    #[error("unknown state id {0}: it was not returned by `register` on this backend")]
    UnknownState(u32),

    #[error("{operation} needs {expected} state, but state `{state}` is {actual} state")]
    WrongKind {
        state: String,
        operation: &'static str,
        expected: StateKind,
        actual: StateKind,
    },

    #[error("key group {key_group} of the key is outside this backend's key groups {range}")]
    KeyGroupOutOfRange {
        key_group: u16,
        range: KeyGroupRange,
    },

    #[error(
        "snapshot has max_parallelism {snapshot}, the backend {backend}: key groups would not line up"
    )]
    MaxParallelismMismatch { snapshot: u16, backend: u16 },

    #[error("corrupt snapshot ({context}): {detail}")]
    CorruptSnapshot {
        context: &'static str,
        detail: String,
    },

    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    UnsupportedSnapshotVersion { found: u32, supported: u32 },

    #[error("I/O error while {context}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// An error of the storage engine under a backend, with the state and operation it happened in.
    #[error("{backend} {operation} on state `{state}` failed")]
    Backend {
        backend: &'static str,
        state: String,
        operation: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl StateError {
    pub(crate) fn corrupt(context: &'static str, detail: impl Into<String>) -> Self {
        StateError::CorruptSnapshot {
            context,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| StateError::Io { context, source }
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;
