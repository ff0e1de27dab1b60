//! What travels on a channel between subtasks.

use arrow_array::RecordBatch;

/// The watermark that ends event time: sent when an input is exhausted, so every timer fires.
pub const MAX_WATERMARK: i64 = i64::MAX;

/// Elements of a stream between two subtasks, in order. Records travel in
/// batches; a `Barrier` marks the cut of checkpoint `checkpoint_id`: a subtask
/// with several inputs aligns them on it before it snapshots (see `task`).
#[derive(Debug, Clone)]
pub enum Message {
    Data(RecordBatch),
    Watermark(i64),
    Barrier(Barrier),
    End,
}

/// A checkpoint barrier. Savepoints travel as barriers too: their files go to
/// the savepoint's own directory, so every subtask must know where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    pub checkpoint_id: u64,
    /// `Some(savepoint id)` for a savepoint (files under `savepoints/{id}/`).
    pub savepoint: Option<String>,
}

/// A message and the index of the upstream subtask that sent it, so the
/// receiver can keep per-input watermarks and end-of-input.
#[derive(Debug)]
pub struct Envelope {
    pub channel: usize,
    pub message: Message,
}

/// Name of the trailing column that carries the row kind of a changelog stream.
pub const ROW_KIND_COLUMN: &str = "$op";

/// Row kinds of a changelog, as stored in the `$op` column (Int8), with Flink's short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum RowKind {
    Insert = 0,
    UpdateBefore = 1,
    UpdateAfter = 2,
    Delete = 3,
}

impl RowKind {
    pub fn from_i8(v: i8) -> RowKind {
        match v {
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            _ => RowKind::Insert,
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }
}
