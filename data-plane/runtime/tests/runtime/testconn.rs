//! Connectors for checkpoint tests, registered under the planner's names
//! `datagen` (source) and `print` (sink):
//!
//! * a bounded, deterministic source of `(user_id, v, ts_ms)` rows over
//!   `SPLITS` splits (split `s` belongs to subtask `s % parallelism`), with
//!   timestamps increasing per split, a position per split, and a pause per
//!   poll so that checkpoints happen mid-way;
//! * a two-phase sink: rows are staged, sealed into the committable at the
//!   barrier and visible in [`Committed`] only once committed, keyed by
//!   (sink, writing subtask, checkpoint) so a re-commit after a restore is a
//!   no-op.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use sluice_runtime::connector::{
    ConnectorFactory, Connectors, PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput,
    SourceReader,
};
use sluice_runtime::{Result, RowKind};

pub const SPLITS: usize = 4;

pub const SRC: &str = "CREATE TABLE src (
  user_id STRING,
  v BIGINT,
  ts_ms BIGINT,
  ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH ('connector' = 'datagen');
";

/// Row `j` of split `s`.
pub fn row(s: usize, j: usize) -> (String, i64, i64) {
    (
        format!("k{}", (j * 7 + s * 3) % 11),
        (j + s * 1000) as i64,
        ((j * SPLITS + s) * 10) as i64,
    )
}

#[derive(Clone)]
pub struct SourceOptions {
    pub rows_per_split: usize,
    pub batch: usize,
    pub pause: Duration,
}

struct Source {
    opts: SourceOptions,
    /// Global split ids this reader owns, and the next row of each.
    splits: Vec<(usize, usize)>,
    next: usize,
    schema: arrow_schema::SchemaRef,
}

fn parse_position(p: &[u8]) -> Vec<(usize, usize)> {
    String::from_utf8_lossy(p)
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.parse().ok()?, v.parse().ok()?))
        })
        .collect()
}

impl SourceReader for Source {
    fn splits(&self) -> usize {
        self.splits.len()
    }

    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus> {
        std::thread::sleep(self.opts.pause);
        let n = self.splits.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let (s, j) = self.splits[i];
            if j >= self.opts.rows_per_split {
                continue;
            }
            let end = (j + self.opts.batch).min(self.opts.rows_per_split);
            let rows: Vec<_> = (j..end).map(|j| row(s, j)).collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ];
            let b = RecordBatch::try_new(self.schema.clone(), cols)
                .map_err(|e| sluice_runtime::RuntimeError::Task(e.to_string()))?;
            out.batches.push((i, b));
            self.splits[i].1 = end;
            if end >= self.opts.rows_per_split {
                out.finished_splits.push(i);
            }
            self.next = i + 1;
            return Ok(PollStatus::Active);
        }
        for (i, (_, j)) in self.splits.iter().enumerate() {
            if *j >= self.opts.rows_per_split {
                out.finished_splits.push(i);
            }
        }
        Ok(PollStatus::Finished)
    }

    fn position(&self) -> Vec<u8> {
        self.splits
            .iter()
            .map(|(s, j)| format!("{s}:{j}"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()
    }
}

/// Committed output: `(sink uid, writer, checkpoint or "final-…")` → rows.
#[derive(Default)]
pub struct Committed {
    pub entries: BTreeMap<(String, String, String), Vec<String>>,
}

impl Committed {
    /// Rows of `sink`, with what each checkpoint id of the entry was (None = end of input).
    pub fn rows(&self, sink_prefix: &str, up_to: Option<u64>) -> Vec<String> {
        let mut out = Vec::new();
        for ((sink, _, ck), rows) in &self.entries {
            if !sink.ends_with(sink_prefix) {
                continue;
            }
            let id = ck.parse::<u64>().ok();
            match (up_to, id) {
                (Some(max), Some(id)) if id > max => continue,
                (Some(_), None) => continue,
                _ => {}
            }
            out.extend(rows.iter().cloned());
        }
        out
    }

    /// What a persisting sink committed into `dir`.
    pub fn load(dir: &Path) -> Committed {
        let mut entries = BTreeMap::new();
        for e in std::fs::read_dir(dir).expect("committed dir") {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let parts: Vec<&str> = name.split("__").collect();
            assert_eq!(parts.len(), 3, "entry file {name}");
            let text = std::fs::read_to_string(e.path()).expect("entry");
            let rows = text
                .split('\n')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            entries.insert(
                (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts[2].to_string(),
                ),
                rows,
            );
        }
        Committed { entries }
    }

    /// Entries of checkpoints `< below` (the state of the sink's target if the
    /// job had crashed after checkpoint `below`'s metadata, before its commit).
    pub fn before(&self, below: u64) -> Committed {
        Committed {
            entries: self
                .entries
                .iter()
                .filter(|((_, _, ck), _)| ck.parse::<u64>().map(|id| id < below).unwrap_or(false))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

struct Sink {
    uid: String,
    subtask: usize,
    staged: Vec<String>,
    committed: Arc<Mutex<Committed>>,
    persist: Option<PathBuf>,
    nonce: u64,
}

impl Sink {
    /// Makes an entry visible; an existing entry stays as it is (idempotent commit).
    fn publish(&self, writer: String, checkpoint: String, rows: Vec<String>) {
        if let Some(dir) = &self.persist {
            // One file per entry, created atomically, so a crash never leaves half an entry.
            let name = format!("{}__{writer}__{checkpoint}", self.uid);
            let path = dir.join(&name);
            if !path.exists() {
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, rows.join("\n")).expect("writing a committed entry");
                std::fs::rename(&tmp, &path).expect("publishing a committed entry");
            }
        }
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .entry((self.uid.clone(), writer, checkpoint))
            .or_insert(rows);
    }
}

fn cell(a: &ArrayRef, r: usize) -> String {
    if a.is_null(r) {
        return "NULL".into();
    }
    if let arrow_schema::DataType::Timestamp(_, _) = a.data_type() {
        let ms = a
            .as_primitive::<arrow_array::types::TimestampMillisecondType>()
            .value(r);
        return ms.to_string();
    }
    arrow_cast::display::array_value_to_string(a, r).unwrap_or_else(|e| panic!("display: {e}"))
}

impl SinkWriter for Sink {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        let s = b.schema();
        let kind = s
            .fields()
            .last()
            .map(|f| f.name() == sluice_runtime::ROW_KIND_COLUMN)
            .unwrap_or(false);
        let n = if kind {
            b.num_columns() - 1
        } else {
            b.num_columns()
        };
        for r in 0..b.num_rows() {
            let vals: Vec<String> = (0..n).map(|c| cell(b.column(c), r)).collect();
            let prefix = if kind {
                RowKind::from_i8(
                    b.column(n)
                        .as_primitive::<arrow_array::types::Int8Type>()
                        .value(r),
                )
                .short()
            } else {
                "+I"
            };
            self.staged.push(format!("{prefix}[{}]", vals.join(", ")));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.staged);
        self.publish(
            format!("{}-{}", self.nonce, self.subtask),
            "final".into(),
            rows,
        );
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>> {
        let mut c = format!("{}\n{checkpoint_id}", self.subtask);
        for r in self.staged.drain(..) {
            c.push('\n');
            c.push_str(&r);
        }
        Ok(c.into_bytes())
    }

    fn commit(&mut self, sequence: u64, committable: &[u8]) -> Result<()> {
        let text = String::from_utf8_lossy(committable).to_string();
        let mut lines = text.split('\n');
        let writer = lines.next().unwrap_or("").to_string();
        let id = lines.next().unwrap_or("").to_string();
        // The sequence carries the generation above the checkpoint id.
        assert_eq!(
            id,
            (sequence & 0xffff_ffff).to_string(),
            "committable of another checkpoint"
        );
        let rows: Vec<String> = lines.map(str::to_string).collect();
        self.publish(writer, id, rows);
        Ok(())
    }
}

pub struct Factory {
    pub source: SourceOptions,
    pub committed: Arc<Mutex<Committed>>,
    /// Also commit into files here (survives a crash of the process).
    pub persist: Option<PathBuf>,
    nonce: AtomicU64,
}

impl ConnectorFactory for Factory {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
        let restored: BTreeMap<usize, usize> =
            ctx.restore.iter().flat_map(|p| parse_position(p)).collect();
        let splits = (0..SPLITS)
            .filter(|s| s % ctx.parallelism == ctx.subtask)
            .map(|s| (s, restored.get(&s).copied().unwrap_or(0)))
            .collect();
        Ok(Box::new(Source {
            opts: self.source.clone(),
            splits,
            next: 0,
            schema: ctx.schema.clone(),
        }))
    }

    fn create_sink(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(Sink {
            uid: ctx.sink_uid.clone(),
            subtask: ctx.subtask,
            staged: Vec::new(),
            committed: self.committed.clone(),
            persist: self.persist.clone(),
            nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
        }))
    }
}

/// Connectors writing into `committed` (and into files in `persist`).
pub fn connectors(
    source: SourceOptions,
    committed: Arc<Mutex<Committed>>,
    persist: Option<PathBuf>,
) -> Connectors {
    let f = Arc::new(Factory {
        source,
        committed,
        persist,
        nonce: AtomicU64::new(rand_nonce()),
    });
    let mut c = Connectors::default();
    c.register("datagen", f.clone());
    c.register("print", f);
    c
}

fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        << 8
}

/// The table a changelog ends in (rows added by +I/+U, removed by -U/-D),
/// sorted; for append-only output, the sorted rows.
pub fn materialize(rows: &[String]) -> Vec<String> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows {
        let (kind, body) = r.split_at(2);
        let d = match kind {
            "+I" | "+U" => 1,
            _ => -1,
        };
        *m.entry(body.to_string()).or_default() += d;
    }
    let mut out = Vec::new();
    for (k, n) in m {
        assert!(n >= 0, "row {k} retracted more often than added");
        for _ in 0..n {
            out.push(k.clone());
        }
    }
    out
}
