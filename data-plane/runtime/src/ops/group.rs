//! Unbounded `GROUP BY` with an updating result: for every input row the
//! key's previous result is retracted (`-U`) and the new one emitted (`+U`),
//! or inserted (`+I`) for a new key, as Flink's non-mini-batch GroupAggregate.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int8Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::take::take;
use sluice_sql::AggCall;
use sluice_state::{KeyedStateBackend, PendingSnapshot, ReadSeek, StateId, StateKind};

use crate::accum::AggLayout;
use crate::error::{Context, Result};
use crate::keys::KeyEncoder;
use crate::message::{ROW_KIND_COLUMN, RowKind};
use crate::operator::{Collector, Operator};

pub struct GroupOp {
    key_cols: Vec<usize>,
    keys: KeyEncoder,
    layout: AggLayout,
    backend: Box<dyn KeyedStateBackend>,
    acc: StateId,
    seen: StateId,
    arg_cols: Vec<Option<usize>>,
    schema: SchemaRef,
}

impl GroupOp {
    pub fn new(
        input: SchemaRef,
        keys: Vec<usize>,
        aggs: &[AggCall],
        mut backend: Box<dyn KeyedStateBackend>,
    ) -> Result<Self> {
        let types: Vec<DataType> = input
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let acc = backend
            .register("group-acc", StateKind::Value)
            .ctx(|| "GroupAggregate state".into())?;
        let seen = backend
            .register("group-distinct", StateKind::Map)
            .ctx(|| "GroupAggregate state".into())?;
        let mut fields: Vec<Field> = keys.iter().map(|&k| input.field(k).clone()).collect();
        for (i, a) in aggs.iter().enumerate() {
            fields.push(Field::new(format!("$agg{i}"), a.ty.clone(), true));
        }
        fields.push(Field::new(ROW_KIND_COLUMN, DataType::Int8, false));
        Ok(GroupOp {
            keys: KeyEncoder::new(keys.clone(), &types)?,
            key_cols: keys,
            layout: AggLayout::new(aggs, &types)?,
            backend,
            acc,
            seen,
            arg_cols: aggs.iter().map(|a| a.arg).collect(),
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

impl Operator for GroupOp {
    fn name(&self) -> String {
        "GroupAggregate".into()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let args = self.layout.args(&batch)?;
        let mut res = self.layout.output();
        let mut take_idx: Vec<u32> = Vec::with_capacity(batch.num_rows() * 2);
        let mut kinds: Vec<i8> = Vec::with_capacity(batch.num_rows() * 2);
        let any_distinct = self.layout.distinct.iter().any(|d| *d);
        for r in 0..batch.num_rows() {
            let key = keys.key(r);
            let skip = if any_distinct {
                let mut skip = vec![false; self.layout.len()];
                for (i, d) in self.layout.distinct.iter().enumerate() {
                    let Some(col) = self.arg_cols[i] else {
                        continue;
                    };
                    if !*d || batch.column(col).is_null(r) {
                        continue;
                    }
                    let v = arrow_cast::display::array_value_to_string(batch.column(col), r)
                        .ctx(|| "COUNT DISTINCT value".into())?;
                    let ns = [i as u8];
                    if self
                        .backend
                        .map_get(self.seen, key, &ns, v.as_bytes())
                        .ctx(|| "GroupAggregate state".into())?
                        .is_some()
                    {
                        skip[i] = true;
                    } else {
                        self.backend
                            .map_put(self.seen, key, &ns, v.as_bytes(), &[])
                            .ctx(|| "GroupAggregate state".into())?;
                    }
                }
                Some(skip)
            } else {
                None
            };
            let layout = &self.layout;
            let res_ref = &mut res;
            let take_ref = &mut take_idx;
            let kinds_ref = &mut kinds;
            self.backend
                .value_update(
                    self.acc,
                    key,
                    sluice_state::NO_NAMESPACE,
                    &mut |buf, present| {
                        if present {
                            layout.emit(buf, res_ref);
                            take_ref.push(r as u32);
                            kinds_ref.push(RowKind::UpdateBefore as i8);
                        }
                        layout.update(buf, present, &args, r, skip.as_deref());
                        layout.emit(buf, res_ref);
                        take_ref.push(r as u32);
                        kinds_ref.push(if present {
                            RowKind::UpdateAfter as i8
                        } else {
                            RowKind::Insert as i8
                        });
                        true
                    },
                )
                .ctx(|| "GroupAggregate state".into())?;
        }
        let idx = UInt32Array::from(take_idx);
        let mut cols: Vec<ArrayRef> = Vec::new();
        for &k in &self.key_cols {
            cols.push(
                take(batch.column(k).as_ref(), &idx, None)
                    .ctx(|| "GroupAggregate output".into())?,
            );
        }
        cols.extend(self.layout.finish(res)?);
        cols.push(Arc::new(Int8Array::from(kinds)));
        let b = RecordBatch::try_new(self.schema.clone(), cols)
            .ctx(|| "GroupAggregate output".into())?;
        out.collect(b)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        Ok(Some(
            self.backend
                .snapshot()
                .ctx(|| "GroupAggregate snapshot".into())?,
        ))
    }

    fn restore(&mut self, files: &mut [&mut dyn ReadSeek], _watermark: i64) -> Result<()> {
        self.backend
            .restore(files)
            .ctx(|| "GroupAggregate restore".into())?;
        Ok(())
    }
}

use arrow_array::Array;
