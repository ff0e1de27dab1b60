//! Watermark alignment of source subtasks: at parallelism 2, a subtask whose input lies far ahead in
//! event time (the second of two files, each a range of time) must wait for the other instead of
//! filling the window operator with windows that cannot fire yet, and the windows stay the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sluice_runtime::connector::{
    ConnectorFactory, Connectors, PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput,
    SourceReader,
};
use sluice_runtime::{JobConfig, MetricsRegistry, Result, run_job};

use super::testconn::SRC;

const ROWS: i64 = 3_000;
const BATCH: i64 = 10;
const STEP_MS: i64 = 100;
/// Where subtask 1's rows start: far beyond the maximum drift after subtask 0's last row.
const AHEAD_MS: i64 = 10_000_000;

const SQL: &str = "
CREATE TABLE win (user_id STRING, ws TIMESTAMP(3), n BIGINT) WITH ('connector' = 'print');
INSERT INTO win SELECT user_id, window_start, COUNT(*)
  FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY user_id, window_start, window_end;
";

/// `(user, ts_ms)` of row `j` of subtask `s`.
fn row(s: usize, j: i64) -> (String, i64) {
    (format!("u{}", j % 7), s as i64 * AHEAD_MS + j * STEP_MS)
}

#[derive(Default)]
struct Progress {
    slow_done: bool,
    /// Rows subtask 1 emitted while subtask 0 was still reading.
    fast_rows_early: i64,
    out: Vec<String>,
}

struct Source {
    subtask: usize,
    next: i64,
    schema: arrow_schema::SchemaRef,
    progress: Arc<Mutex<Progress>>,
}

impl SourceReader for Source {
    fn splits(&self) -> usize {
        1
    }

    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus> {
        if self.next >= ROWS {
            out.finished_splits.push(0);
            if self.subtask == 0 {
                self.progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .slow_done = true;
            }
            return Ok(PollStatus::Finished);
        }
        let rows: Vec<_> = (self.next..self.next + BATCH)
            .map(|j| row(self.subtask, j))
            .collect();
        self.next += BATCH;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(vec![1; rows.len()])),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ];
        let b = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| sluice_runtime::RuntimeError::Task(e.to_string()))?;
        out.batches.push((0, b));
        {
            let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            if self.subtask == 1 && !p.slow_done {
                p.fast_rows_early += BATCH;
            }
        }
        // Subtask 0 reads three times slower: unaligned, subtask 1 would be done long before it.
        std::thread::sleep(Duration::from_millis(if self.subtask == 0 { 3 } else { 1 }));
        Ok(PollStatus::Active)
    }

    fn position(&self) -> Vec<u8> {
        self.next.to_string().into_bytes()
    }
}

struct Sink {
    progress: Arc<Mutex<Progress>>,
}

impl SinkWriter for Sink {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        let users = b.column(0).as_string::<i32>();
        let starts = b.column(1).as_primitive::<TimestampMillisecondType>();
        let counts = b.column(2).as_primitive::<Int64Type>();
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        for r in 0..b.num_rows() {
            p.out.push(format!(
                "{} {} {}",
                users.value(r),
                starts.value(r),
                counts.value(r)
            ));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

struct Factory {
    progress: Arc<Mutex<Progress>>,
}

impl ConnectorFactory for Factory {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(Source {
            subtask: ctx.subtask,
            next: 0,
            schema: ctx.schema.clone(),
            progress: self.progress.clone(),
        }))
    }

    fn create_sink(&self, _ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(Sink {
            progress: self.progress.clone(),
        }))
    }
}

fn oracle() -> Vec<String> {
    let mut counts: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for s in 0..2 {
        for j in 0..ROWS {
            let (user, ts) = row(s, j);
            *counts
                .entry((user, ts - ts.rem_euclid(60_000)))
                .or_default() += 1;
        }
    }
    let mut out: Vec<String> = counts
        .into_iter()
        .map(|((user, start), n)| format!("{user} {start} {n}"))
        .collect();
    out.sort();
    out
}

/// `(rows subtask 1 read before subtask 0 was done, the windows)`.
fn run(max_drift: Option<Duration>) -> (i64, Vec<String>) {
    let progress = Arc::new(Mutex::new(Progress::default()));
    let f = Arc::new(Factory {
        progress: progress.clone(),
    });
    let mut connectors = Connectors::default();
    connectors.register("datagen", f.clone());
    connectors.register("print", f);
    let mut cfg = JobConfig::new(2);
    cfg.watermark_max_drift = max_drift;
    let plan = sluice_sql::plan(&format!("{SRC}{SQL}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
    let report = run_job(&plan, &connectors, &cfg, &MetricsRegistry::new())
        .unwrap_or_else(|e| panic!("run: {e}"));
    assert_eq!(report.pipelines[0].late_dropped, 0);
    let mut p = std::mem::take(&mut *progress.lock().unwrap_or_else(|p| p.into_inner()));
    p.out.sort();
    (p.fast_rows_early, p.out)
}

#[test]
fn a_source_subtask_far_ahead_in_event_time_waits_for_the_slowest() {
    let want = oracle();
    // The default drift (a minute) is far below the 10,000 s between the two subtasks' rows: past
    // its first batches (read before subtask 0 had a watermark), subtask 1 waits.
    let (early, got) = run(JobConfig::new(2).watermark_max_drift);
    assert_eq!(got, want);
    assert!(
        early < ROWS / 2,
        "aligned: subtask 1 read {early} of {ROWS} rows while subtask 0 was reading"
    );
    let (early, got) = run(None);
    assert_eq!(got, want);
    assert!(
        early > ROWS / 2,
        "unaligned: subtask 1 read only {early} of {ROWS} rows while subtask 0 was reading"
    );
}
