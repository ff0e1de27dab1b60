//! `'connector' = 'filesystem'`, `'format' = 'json'`: JSON lines.
//!
//! Source: `path` is a file or a directory (files starting with `.` or `_`
//! are skipped); files are spread over subtasks round-robin in name order and
//! read one after another, each file a split for watermarks. The position
//! maps each file of the subtask to the byte offset after the last line
//! emitted, or `"done"`: `{"filesystem":{"/dir/a.json":1234,"/dir/b.json":"done"}}`.
//! A restore takes the union of all old positions, so files may move between
//! subtasks when the parallelism changes; files not named there start at 0.
//!
//! Sink: each subtask writes `.part-<attempt>-<subtask>-<n>.json.inprogress`
//! in `path`. At-least-once (no exactly-once checkpointing): renamed to
//! `part-<attempt>-<subtask>-<n>.json` on flush or at the end, so a reader
//! never sees a half-written file (rename is atomic within a directory).
//! Exactly-once: `prepare_commit(cp)` closes the file and renames it to the
//! hidden pending name `.part-<attempt>-<subtask>-cp<cp>-<n>.json.pending`;
//! the committable is `{"filesystem":{"files":[[pending, final],…]}}` (names
//! in `path`); `commit` renames each pending file to its final name
//! `part-<attempt>-<subtask>-cp<cp>-<n>.json` and counts a final file already
//! there with the pending one gone as done, so a repeated commit is harmless.
//! Files in progress or pending when a job dies stay hidden; their rows are
//! replayed from the checkpoint.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use sluice_runtime::connector::{
    PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput, SourceReader,
};
use sluice_runtime::{Result, RuntimeError};

use crate::json::{JsonDecoder, encode_rows};

const CHUNK: usize = 4 << 20;
const BATCH_ROWS: usize = 8192;

fn local_path(p: &str) -> PathBuf {
    PathBuf::from(p.strip_prefix("file://").unwrap_or(p))
}

fn err(table: &str, message: String) -> RuntimeError {
    RuntimeError::Connector {
        connector: "filesystem".into(),
        table: table.into(),
        message,
    }
}

pub struct FileSource {
    table: String,
    /// Files this subtask reads, in order, each with the byte offset to start at.
    files: Vec<(PathBuf, u64)>,
    /// Files of this subtask read to the end (kept in every position so that a
    /// restore skips them).
    done: Vec<String>,
    current: usize,
    file: Option<File>,
    /// Offset in the current file of the end of what was read; `buf[..tail]`
    /// is the unemitted tail of it (a line cut by the last read).
    read_to: u64,
    /// The tail stays at the front of `buf` and the next read lands right
    /// after it, so whole lines are decoded in place, never copied.
    tail: usize,
    buf: Vec<u8>,
    decoder: JsonDecoder,
    decoded: Vec<RecordBatch>,
}

fn position_key(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Union of the restored positions: file → offset, `None` = read to the end.
fn restored_offsets(ctx: &SourceContext) -> Result<std::collections::HashMap<String, Option<u64>>> {
    let mut m = std::collections::HashMap::new();
    for pos in &ctx.restore {
        let v: serde_json::Value = serde_json::from_slice(pos).map_err(|e| {
            err(
                &ctx.table.name,
                format!("restored position is not JSON: {e}"),
            )
        })?;
        let Some(files) = v.get("filesystem").and_then(|f| f.as_object()) else {
            return Err(err(
                &ctx.table.name,
                format!("restored position {v} is not a filesystem position"),
            ));
        };
        for (k, o) in files {
            let off = match o {
                serde_json::Value::String(s) if s == "done" => None,
                other => Some(other.as_u64().ok_or_else(|| {
                    err(
                        &ctx.table.name,
                        format!("bad offset {other} for {k} in restored position"),
                    )
                })?),
            };
            m.insert(k.clone(), off);
        }
    }
    Ok(m)
}

pub fn create_source(ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
    let t = &ctx.table;
    let path = local_path(t.option("path").unwrap_or_default());
    let mut all: Vec<PathBuf> = if path.is_dir() {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&path)
            .map_err(|e| err(&t.name, format!("listing {}: {e}", path.display())))?
        {
            let e = e.map_err(|e| err(&t.name, format!("listing {}: {e}", path.display())))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.starts_with('_') || !e.path().is_file() {
                continue;
            }
            v.push(e.path());
        }
        v
    } else if path.is_file() {
        vec![path.clone()]
    } else {
        return Err(err(
            &t.name,
            format!("path {} does not exist", path.display()),
        ));
    };
    all.sort();
    let restored = restored_offsets(ctx)?;
    let mut files = Vec::new();
    let mut done = Vec::new();
    for (_, p) in all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % ctx.parallelism == ctx.subtask)
    {
        match restored.get(&position_key(&p)) {
            Some(None) => done.push(position_key(&p)),
            Some(Some(off)) => files.push((p, *off)),
            None => files.push((p, 0)),
        }
    }
    let ignore = t
        .option("json.ignore-parse-errors")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    Ok(Box::new(FileSource {
        table: t.name.clone(),
        files,
        done,
        current: 0,
        file: None,
        read_to: 0,
        tail: 0,
        buf: vec![0; CHUNK],
        decoder: JsonDecoder::new(
            ctx.schema.clone(),
            BATCH_ROWS,
            ignore,
            &format!("table '{}'", t.name),
        )?,
        decoded: Vec::new(),
    }))
}

impl SourceReader for FileSource {
    fn splits(&self) -> usize {
        1
    }

    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus> {
        if self.current >= self.files.len() {
            return Ok(PollStatus::Finished);
        }
        let (path, start) = self.files[self.current].clone();
        if self.file.is_none() {
            let mut f = File::open(&path)
                .map_err(|e| err(&self.table, format!("opening {}: {e}", path.display())))?;
            f.seek(SeekFrom::Start(start)).map_err(|e| {
                err(
                    &self.table,
                    format!("seeking {} to {start}: {e}", path.display()),
                )
            })?;
            self.file = Some(f);
            self.read_to = start;
        }
        // A line longer than CHUNK grows the buffer; it never shrinks back.
        if self.buf.len() < self.tail + CHUNK {
            self.buf.resize(self.tail + CHUNK, 0);
        }
        let n = match self.file.as_mut() {
            Some(f) => f
                .read(&mut self.buf[self.tail..self.tail + CHUNK])
                .map_err(|e| err(&self.table, format!("reading {}: {e}", path.display())))?,
            None => 0,
        };
        self.read_to += n as u64;
        let split = self.current;
        if n == 0 {
            // End of file: decode what is left (a last line without newline), move on.
            let rest = &self.buf[..self.tail];
            if !rest.iter().all(|b| b.is_ascii_whitespace()) {
                self.decoder.decode_lines(rest, &mut self.decoded)?;
            }
            self.tail = 0;
            out.batches
                .extend(self.decoded.drain(..).map(|b| (split, b)));
            out.finished_splits.push(split);
            self.done.push(position_key(&path));
            self.file = None;
            self.current += 1;
            return Ok(if self.current >= self.files.len() {
                PollStatus::Finished
            } else {
                PollStatus::Active
            });
        }
        let end = self.tail + n;
        // The tail has no newline: only the new bytes can hold the last one.
        let cut = match self.buf[self.tail..end].iter().rposition(|b| *b == b'\n') {
            Some(p) => self.tail + p + 1,
            None => {
                self.tail = end;
                return Ok(PollStatus::Active);
            }
        };
        self.decoder
            .decode_lines(&self.buf[..cut], &mut self.decoded)?;
        self.buf.copy_within(cut..end, 0);
        self.tail = end - cut;
        out.batches
            .extend(self.decoded.drain(..).map(|b| (split, b)));
        Ok(PollStatus::Active)
    }

    fn position(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        for d in &self.done {
            m.insert(d.clone(), "done".into());
        }
        for (i, (p, start)) in self.files.iter().enumerate().skip(self.current) {
            let off = if i == self.current && self.file.is_some() {
                self.read_to - self.tail as u64
            } else {
                *start
            };
            m.insert(position_key(p), off.into());
        }
        serde_json::json!({ "filesystem": m })
            .to_string()
            .into_bytes()
    }
}

pub struct FileSink {
    table: String,
    dir: PathBuf,
    prefix: String,
    counter: u32,
    current: Option<(PathBuf, BufWriter<File>)>,
    columns: usize,
    buf: Vec<u8>,
    ends: Vec<usize>,
    exactly_once: bool,
}

pub fn create_sink(ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
    let t = &ctx.table;
    let dir = local_path(t.option("path").unwrap_or_default());
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(&t.name, format!("creating {}: {e}", dir.display())))?;
    // Unique per writer instance: a restored writer never reuses a name that
    // an earlier attempt may have left pending or committed.
    let attempt = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id())
    );
    Ok(Box::new(FileSink {
        table: t.name.clone(),
        dir,
        prefix: format!("part-{attempt}-{}", ctx.subtask),
        counter: 0,
        current: None,
        columns: t.physical.len(),
        buf: Vec::new(),
        ends: Vec::new(),
        exactly_once: ctx.exactly_once,
    }))
}

impl FileSink {
    fn in_progress(&self) -> PathBuf {
        self.dir
            .join(format!(".{}-{}.json.inprogress", self.prefix, self.counter))
    }

    /// Closes the file in progress (flushed and synced) and renames it to
    /// `name`; returns false when nothing was in progress.
    fn seal_as(&mut self, name: &str) -> Result<bool> {
        let Some((path, mut w)) = self.current.take() else {
            return Ok(false);
        };
        w.flush()
            .map_err(|e| err(&self.table, format!("writing {}: {e}", path.display())))?;
        w.get_ref()
            .sync_all()
            .map_err(|e| err(&self.table, format!("syncing {}: {e}", path.display())))?;
        let to = self.dir.join(name);
        std::fs::rename(&path, &to).map_err(|e| {
            err(
                &self.table,
                format!("renaming {} to {}: {e}", path.display(), to.display()),
            )
        })?;
        self.counter += 1;
        Ok(true)
    }

    /// Publishes the file in progress under its final name.
    fn publish(&mut self) -> Result<()> {
        let fin = format!("{}-{}.json", self.prefix, self.counter);
        self.seal_as(&fin)?;
        Ok(())
    }

    /// Makes renames in the directory durable.
    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.table, format!("syncing {}: {e}", self.dir.display())))
    }
}

impl SinkWriter for FileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.current.is_none() {
            let p = self.in_progress();
            let f = File::create(&p)
                .map_err(|e| err(&self.table, format!("creating {}: {e}", p.display())))?;
            self.current = Some((p, BufWriter::with_capacity(1 << 20, f)));
        }
        self.buf.clear();
        self.ends.clear();
        encode_rows(batch, self.columns, &mut self.buf, &mut self.ends, true)?;
        if let Some((p, w)) = self.current.as_mut() {
            w.write_all(&self.buf)
                .map_err(|e| err(&self.table, format!("writing {}: {e}", p.display())))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.exactly_once {
            // Visibility waits for commit; only push the bytes to the file.
            if let Some((p, w)) = self.current.as_mut() {
                w.flush()
                    .map_err(|e| err(&self.table, format!("writing {}: {e}", p.display())))?;
            }
            return Ok(());
        }
        self.publish()
    }

    /// End of input publishes what is left directly. For exactly-once the
    /// task layer takes a final checkpoint (prepare_commit + commit) first,
    /// which leaves nothing here.
    fn finish(&mut self) -> Result<()> {
        self.publish()?;
        self.sync_dir()
    }

    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>> {
        if !self.exactly_once {
            self.flush()?;
            return Ok(Vec::new());
        }
        let fin = format!("{}-cp{checkpoint_id}-{}.json", self.prefix, self.counter);
        let pending = format!(".{fin}.pending");
        if !self.seal_as(&pending)? {
            return Ok(Vec::new());
        }
        self.sync_dir()?;
        Ok(
            serde_json::json!({"filesystem": {"files": [[pending, fin]]}})
                .to_string()
                .into_bytes(),
        )
    }

    fn commit(&mut self, sequence: u64, committable: &[u8]) -> Result<()> {
        if committable.is_empty() {
            return Ok(());
        }
        let bad = |m: String| err(&self.table, format!("commit {sequence:#x}: {m}"));
        let v: serde_json::Value = serde_json::from_slice(committable)
            .map_err(|e| bad(format!("committable is not JSON: {e}")))?;
        let files = v
            .pointer("/filesystem/files")
            .and_then(|f| f.as_array())
            .ok_or_else(|| bad(format!("committable {v} is not a filesystem committable")))?;
        for f in files {
            let (Some(pending), Some(fin)) = (
                f.get(0).and_then(|x| x.as_str()),
                f.get(1).and_then(|x| x.as_str()),
            ) else {
                return Err(bad(format!("bad file entry {f} in committable")));
            };
            // Names come from the checkpoint: never let one point outside `path`.
            if [pending, fin]
                .iter()
                .any(|n| n.contains('/') || n.contains(".."))
            {
                return Err(bad(format!("file entry {f} leaves the sink directory")));
            }
            let (p, q) = (self.dir.join(pending), self.dir.join(fin));
            match std::fs::rename(&p, &q) {
                Ok(()) => {}
                // Committed before (the crash came after the first commit).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && q.is_file() => {}
                Err(e) => {
                    return Err(bad(format!(
                        "committing {} as {}: {e} (and the final file is not there)",
                        p.display(),
                        q.display()
                    )));
                }
            }
        }
        self.sync_dir()
    }
}

/// Committed part files of a sink directory, for tests and tools.
pub fn committed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| !n.to_string_lossy().starts_with('.'))
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use sluice_runtime::connector::physical_schema;

    fn source(dir: &Path, restore: Vec<Vec<u8>>) -> Box<dyn SourceReader> {
        let sql = format!(
            "CREATE TABLE src (id BIGINT, s STRING) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE snk (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO snk SELECT id FROM src;",
            dir.display()
        );
        let plan = sluice_sql::plan(&sql).unwrap_or_else(|e| panic!("{e:?}"));
        let table = plan.tables["src"].clone();
        let ctx = SourceContext {
            schema: physical_schema(&table),
            table,
            subtask: 0,
            parallelism: 1,
            restore,
            pending_records: Default::default(),
        };
        create_source(&ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads until `stop` rows or the end; returns (id, length of s) per row and the position.
    fn read(r: &mut dyn SourceReader, stop: usize) -> (Vec<(i64, usize)>, Vec<u8>) {
        let mut rows = Vec::new();
        loop {
            let mut o = SourceOutput::default();
            let s = r.poll(&mut o).unwrap_or_else(|e| panic!("{e}"));
            for (_, b) in o.batches {
                let ids = b.column(0).as_primitive::<Int64Type>();
                let ss = b.column(1).as_string::<i32>();
                rows.extend((0..b.num_rows()).map(|i| (ids.value(i), ss.value(i).len())));
            }
            if s == PollStatus::Finished || rows.len() >= stop {
                return (rows, r.position());
            }
        }
    }

    #[test]
    fn lines_across_reads_and_longer_than_a_read_are_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Short lines straddle every CHUNK boundary; one line is longer than CHUNK; the last has
        // no newline.
        let mut text = String::new();
        let mut expected = Vec::new();
        for id in 0..200_000i64 {
            let len = if id == 150_000 {
                CHUNK + 12_345
            } else {
                (id % 37) as usize
            };
            text.push_str(&format!("{{\"id\":{id},\"s\":\"{}\"}}", "x".repeat(len)));
            if id != 199_999 {
                text.push('\n');
            }
            expected.push((id, len));
        }
        std::fs::write(dir.path().join("a.json"), &text).unwrap_or_else(|e| panic!("{e}"));
        let mut r = source(dir.path(), Vec::new());
        let (rows, _) = read(r.as_mut(), usize::MAX);
        assert_eq!(rows, expected);

        // A position taken mid-file points just after the last emitted line: resuming there
        // yields exactly the rest.
        let mut r = source(dir.path(), Vec::new());
        let (first, pos) = read(r.as_mut(), 1);
        assert!(first.len() < expected.len());
        let mut r = source(dir.path(), vec![pos]);
        let (rest, _) = read(r.as_mut(), usize::MAX);
        assert_eq!([first, rest].concat(), expected);
    }
}
