//! Keys of keyed operators and hash exchanges: the key columns of each row in
//! arrow-row's canonical byte form, which is both what the state backend
//! stores and what `sluice_state::key_group_of` hashes, so a row and its state
//! always land on the same subtask.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::DataType;

use crate::error::{Context, Result};

pub struct KeyEncoder {
    cols: Vec<usize>,
    converter: Option<RowConverter>,
}

/// Keys of one batch.
pub enum BatchKeys {
    Rows(Rows),
    /// No key columns: every row has the empty key.
    Empty,
}

impl BatchKeys {
    pub fn key(&self, row: usize) -> &[u8] {
        match self {
            BatchKeys::Rows(r) => r.row(row).data(),
            BatchKeys::Empty => &[],
        }
    }
}

impl KeyEncoder {
    pub fn new(cols: Vec<usize>, types: &[DataType]) -> Result<Self> {
        let converter = if cols.is_empty() {
            None
        } else {
            let fields = cols
                .iter()
                .map(|&c| SortField::new(types[c].clone()))
                .collect();
            Some(RowConverter::new(fields).ctx(|| "building the key encoder".into())?)
        };
        Ok(KeyEncoder { cols, converter })
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<BatchKeys> {
        match &self.converter {
            None => Ok(BatchKeys::Empty),
            Some(c) => {
                let cols: Vec<ArrayRef> =
                    self.cols.iter().map(|&i| batch.column(i).clone()).collect();
                Ok(BatchKeys::Rows(
                    c.convert_columns(&cols).ctx(|| "encoding keys".into())?,
                ))
            }
        }
    }

    /// Key bytes back to key columns.
    pub fn decode(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        match &self.converter {
            None => Ok(Vec::new()),
            Some(c) => {
                let parser = c.parser();
                let rows: Vec<_> = keys.iter().map(|k| parser.parse(k)).collect();
                c.convert_rows(rows).ctx(|| "decoding keys".into())
            }
        }
    }
}
