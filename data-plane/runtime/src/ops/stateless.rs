//! Projection and filter: one kernel pass per batch, no state.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use arrow_select::filter::{filter_record_batch, prep_null_mask_filter};
use sluice_sql::Expr;

use crate::error::{Context, Result, RuntimeError};
use crate::eval::{EvalContext, evaluate_to_array};
use crate::message::ROW_KIND_COLUMN;
use crate::operator::{Collector, Operator};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct ProjectOp {
    exprs: Vec<Expr>,
    schema: SchemaRef,
    /// Schema with the changelog's row-kind column kept at the end.
    schema_with_kind: SchemaRef,
    watermark: Option<i64>,
}

impl ProjectOp {
    pub fn new(exprs: Vec<Expr>, names: Vec<String>) -> Self {
        let fields: Vec<Field> = exprs
            .iter()
            .zip(&names)
            .map(|(e, n)| Field::new(n, e.data_type(), true))
            .collect();
        let mut with_kind = fields.clone();
        with_kind.push(Field::new(
            ROW_KIND_COLUMN,
            arrow_schema::DataType::Int8,
            false,
        ));
        ProjectOp {
            exprs,
            schema: Arc::new(Schema::new(fields)),
            schema_with_kind: Arc::new(Schema::new(with_kind)),
            watermark: None,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ctx = EvalContext {
            watermark: self.watermark,
            now_ms: now_ms(),
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.exprs.len() + 1);
        for e in &self.exprs {
            cols.push(evaluate_to_array(e, batch, &ctx)?);
        }
        let kind = batch
            .schema()
            .fields()
            .last()
            .map(|f| f.name() == ROW_KIND_COLUMN)
            .unwrap_or(false);
        let schema = if kind {
            cols.push(batch.column(batch.num_columns() - 1).clone());
            self.schema_with_kind.clone()
        } else {
            self.schema.clone()
        };
        RecordBatch::try_new(schema, cols).ctx(|| "projection".into())
    }
}

impl Operator for ProjectOp {
    fn name(&self) -> String {
        "Project".into()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let b = self.apply(&batch)?;
        out.collect(b)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        self.watermark = Some(watermark);
        out.watermark(watermark)
    }
}

pub struct FilterOp {
    predicate: Expr,
    watermark: Option<i64>,
}

impl FilterOp {
    pub fn new(predicate: Expr) -> Self {
        FilterOp {
            predicate,
            watermark: None,
        }
    }
}

impl Operator for FilterOp {
    fn name(&self) -> String {
        "Filter".into()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let ctx = EvalContext {
            watermark: self.watermark,
            now_ms: now_ms(),
        };
        let mask = evaluate_to_array(&self.predicate, &batch, &ctx)?;
        let mask = mask
            .as_any()
            .downcast_ref::<arrow_array::BooleanArray>()
            .ok_or_else(|| {
                RuntimeError::Plan(format!("filter {} is not BOOLEAN", self.predicate))
            })?;
        let mask = if mask.null_count() > 0 {
            prep_null_mask_filter(mask)
        } else {
            mask.clone()
        };
        if mask.true_count() == batch.num_rows() {
            return out.collect(batch);
        }
        let b = filter_record_batch(&batch, &mask).ctx(|| format!("filter {}", self.predicate))?;
        out.collect(b)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        self.watermark = Some(watermark);
        out.watermark(watermark)
    }
}

use arrow_array::Array;
