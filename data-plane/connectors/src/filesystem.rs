//! `'connector' = 'filesystem'`, `'format' = 'json'`: JSON lines.
//!
//! Source: `path` is a file or a directory (files starting with `.` or `_`
//! are skipped); files are spread over subtasks round-robin in name order and
//! read one after another, each file a split for watermarks, by a reader
//! thread that runs ahead of the operator chain and shares the JSON decoding
//! with it (see `Reader`); a bad line fails the job naming its file and line
//! number, unless `json.ignore-parse-errors` skips it. The position
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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_array::RecordBatch;
use sluice_runtime::connector::{
    PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput, SourceReader,
};
use sluice_runtime::{Result, RuntimeError};

use crate::json::{JsonDecoder, encode_rows};

const CHUNK: usize = 1 << 20;
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
    /// Offset in the current file after the last line emitted, once one was.
    emitted: Option<u64>,
    /// Chunks from the reader thread, in file order.
    chunks: Option<Receiver<Result<Chunk>>>,
    /// Raw chunks' buffers, back to the reader for its next reads.
    recycle: Sender<Vec<u8>>,
    /// Chunks sent and not yet taken (see [`Reader::body`]).
    queued: Arc<AtomicUsize>,
    /// Decodes the chunks the reader ships raw.
    decoder: JsonDecoder,
    decoded: Vec<RecordBatch>,
    reader: Option<JoinHandle<()>>,
}

/// Whole lines of one file, up to byte `end`; `last` ends the file.
struct Chunk {
    file: usize,
    end: u64,
    last: bool,
    body: Body,
}

enum Body {
    Decoded(Vec<RecordBatch>),
    /// `buf[..len]`, at byte `start` of the file, for the source's thread to decode.
    Raw {
        buf: Vec<u8>,
        len: usize,
        start: u64,
    },
}

/// Reads the subtask's files on its own thread, a pipeline stage ahead of the operator chain.
/// Decoding is most of the work of a filter/project job over JSON, so the reader ships a
/// chunk undecoded whenever the source's thread has nothing queued (it would otherwise wait),
/// and decodes it itself while the source's thread is busy. A slow chain thus gets decoded
/// batches, a fast one shares the decoding, and either way two cores work for one subtask.
struct Reader {
    table: String,
    files: Vec<(PathBuf, u64)>,
    decoder: JsonDecoder,
    chunks: SyncSender<Result<Chunk>>,
    recycle: Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// Chunks in flight between the reader and the source: enough to keep both busy, few enough
/// that memory stays at a few chunks.
const QUEUE: usize = 2;

/// How long a poll waits for the reader before reporting `Idle`.
const POLL_WAIT: Duration = Duration::from_millis(200);

impl Reader {
    fn run(mut self) {
        for (idx, (path, start)) in std::mem::take(&mut self.files).into_iter().enumerate() {
            match self.read_file(idx, &path, start) {
                Ok(true) => {}
                // The source is gone (cancelled or dropped): nobody to read for.
                Ok(false) => return,
                Err(e) => {
                    // If the source is gone too, nobody is left to tell.
                    let _ = self.chunks.send(Err(e));
                    return;
                }
            }
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .or_else(|| self.recycle.try_recv().ok())
            .unwrap_or_default()
    }

    /// Sends whole lines; `Ok(false)` once the source is gone.
    fn read_file(&mut self, idx: usize, path: &Path, start: u64) -> Result<bool> {
        let mut f = File::open(path)
            .map_err(|e| err(&self.table, format!("opening {}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| {
            err(
                &self.table,
                format!("seeking {} to {start}: {e}", path.display()),
            )
        })?;
        let mut buf = self.buffer();
        // `buf[..tail]` is a line cut by the last read, at file offset `read_to - tail`;
        // the next read lands right after it, so lines are never copied but that one.
        let mut tail = 0;
        let mut read_to = start;
        loop {
            // A line longer than CHUNK grows the buffer; it never shrinks back.
            if buf.len() < tail + CHUNK {
                buf.resize(tail + CHUNK, 0);
            }
            let n = f
                .read(&mut buf[tail..tail + CHUNK])
                .map_err(|e| err(&self.table, format!("reading {}: {e}", path.display())))?;
            read_to += n as u64;
            if n == 0 {
                // End of file: what is left is a last line without newline (or blanks).
                let body = if buf[..tail].iter().all(|b| b.is_ascii_whitespace()) {
                    Body::Decoded(Vec::new())
                } else {
                    self.body(buf, tail, read_to - tail as u64, path)?
                };
                return Ok(self.send(idx, read_to, true, body));
            }
            let end = tail + n;
            // The tail has no newline: only the new bytes can hold the last one.
            let Some(p) = buf[tail..end].iter().rposition(|b| *b == b'\n') else {
                tail = end;
                continue;
            };
            let cut = tail + p + 1;
            let mut next = self.buffer();
            if next.len() < end - cut + CHUNK {
                next.resize(end - cut + CHUNK, 0);
            }
            next[..end - cut].copy_from_slice(&buf[cut..end]);
            let body = self.body(buf, cut, read_to - end as u64, path)?;
            if !self.send(idx, read_to - (end - cut) as u64, false, body) {
                return Ok(false);
            }
            buf = next;
            tail = end - cut;
        }
    }

    /// `buf[..len]` (file offset `start`), decoded here if the source's thread has chunks
    /// queued, else raw.
    fn body(&mut self, buf: Vec<u8>, len: usize, start: u64, path: &Path) -> Result<Body> {
        if self.queued.load(Ordering::Relaxed) == 0 {
            return Ok(Body::Raw { buf, len, start });
        }
        let mut batches = Vec::new();
        decode_chunk(
            &mut self.decoder,
            &buf[..len],
            path,
            start,
            &self.table,
            &mut batches,
        )?;
        self.spare.push(buf);
        Ok(Body::Decoded(batches))
    }

    fn send(&mut self, file: usize, end: u64, last: bool, body: Body) -> bool {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.chunks
            .send(Ok(Chunk {
                file,
                end,
                last,
                body,
            }))
            .is_ok()
    }
}

/// Decodes whole lines at byte `start` of `path`; a decoding error names the file and line.
fn decode_chunk(
    decoder: &mut JsonDecoder,
    buf: &[u8],
    path: &Path,
    start: u64,
    table: &str,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    decoder.decode_lines(buf, out).map_err(|e| {
        let Some((line, at, message)) = decoder.first_bad_line(buf) else {
            return e;
        };
        let line = lines_before(path, start + at as u64)
            .map(|before| format!("line {}", before + 1))
            .unwrap_or_else(|io| format!("line {} after byte {start} ({io})", line + 1));
        err(
            table,
            format!("bad JSON in {} at {line}: {message}", path.display()),
        )
    })
}

/// Newlines in the first `upto` bytes of `path` (only read to report an error).
fn lines_before(path: &Path, upto: u64) -> std::io::Result<u64> {
    let mut f = File::open(path)?.take(upto);
    let mut buf = vec![0; 1 << 16];
    let mut lines = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
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
    let what = format!("table '{}'", t.name);
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let reader = Reader {
        table: t.name.clone(),
        files: files.clone(),
        decoder: JsonDecoder::new(ctx.schema.clone(), BATCH_ROWS, ignore, &what)?,
        chunks: tx,
        recycle: recycle_rx,
        spare: Vec::new(),
        queued: queued.clone(),
    };
    let handle = std::thread::Builder::new()
        .name(format!("sluice-fs-{}", ctx.subtask))
        .spawn(move || reader.run())
        .map_err(|e| err(&t.name, format!("starting the reader thread: {e}")))?;
    Ok(Box::new(FileSource {
        table: t.name.clone(),
        files,
        done,
        current: 0,
        emitted: None,
        chunks: Some(rx),
        recycle: recycle_tx,
        queued,
        decoder: JsonDecoder::new(ctx.schema.clone(), BATCH_ROWS, ignore, &what)?,
        decoded: Vec::new(),
        reader: Some(handle),
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
        let Some(chunks) = self.chunks.as_ref() else {
            return Ok(PollStatus::Finished);
        };
        let chunk = match chunks.recv_timeout(POLL_WAIT) {
            Ok(chunk) => chunk?,
            Err(RecvTimeoutError::Timeout) => return Ok(PollStatus::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                // The reader sends every file's last chunk or an error before it ends: this
                // is a panic, reported by the join.
                let panic = self
                    .reader
                    .take()
                    .map(|h| h.join().is_err())
                    .unwrap_or(false);
                return Err(err(
                    &self.table,
                    format!(
                        "the reader thread ended before the end of {} (panicked: {panic})",
                        self.files[self.current].0.display()
                    ),
                ));
            }
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        match chunk.body {
            Body::Decoded(batches) => out
                .batches
                .extend(batches.into_iter().map(|b| (chunk.file, b))),
            Body::Raw { buf, len, start } => {
                decode_chunk(
                    &mut self.decoder,
                    &buf[..len],
                    &self.files[chunk.file].0,
                    start,
                    &self.table,
                    &mut self.decoded,
                )?;
                // The reader may have finished: then the buffer is simply freed.
                let _ = self.recycle.send(buf);
                out.batches
                    .extend(self.decoded.drain(..).map(|b| (chunk.file, b)));
            }
        }
        self.emitted = Some(chunk.end);
        if chunk.last {
            out.finished_splits.push(chunk.file);
            self.done.push(position_key(&self.files[chunk.file].0));
            self.emitted = None;
            self.current += 1;
        }
        Ok(if self.current >= self.files.len() {
            PollStatus::Finished
        } else {
            PollStatus::Active
        })
    }

    fn position(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        for d in &self.done {
            m.insert(d.clone(), "done".into());
        }
        for (i, (p, start)) in self.files.iter().enumerate().skip(self.current) {
            let off = match self.emitted {
                Some(off) if i == self.current => off,
                _ => *start,
            };
            m.insert(position_key(p), off.into());
        }
        serde_json::json!({ "filesystem": m })
            .to_string()
            .into_bytes()
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        // Closing the queue stops the reader at its next send; wait for it so that no
        // thread outlives the source.
        self.chunks = None;
        if let Some(h) = self.reader.take() {
            // A panic there was already reported by the panic hook; nothing is left to do.
            let _ = h.join();
        }
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
        source_with(dir, "", restore)
    }

    fn source_with(dir: &Path, options: &str, restore: Vec<Vec<u8>>) -> Box<dyn SourceReader> {
        let sql = format!(
            "CREATE TABLE src (id BIGINT, s STRING) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json'{options});\n\
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

    /// Lines of `{"id":n,"s":"…"}` over several reads; `bad` lines (1-based) are replaced.
    fn write_lines(path: &Path, lines: usize, bad: &[(usize, &str)]) -> Vec<(i64, usize)> {
        let mut text = String::new();
        let mut good = Vec::new();
        for n in 1..=lines {
            match bad.iter().find(|(at, _)| *at == n) {
                Some((_, line)) => text.push_str(line),
                None => {
                    text.push_str(&format!("{{\"id\":{n},\"s\":\"{}\"}}", "x".repeat(n % 50)));
                    good.push((n as i64, n % 50));
                }
            }
            text.push('\n');
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        good
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Lines of ~35 bytes: line 150000 is past the first few reads, whichever thread decodes.
        for bad_at in [1, 150_000] {
            write_lines(&dir.path().join("a.json"), 200_000, &[(bad_at, "{\"id\":")]);
            let mut r = source(dir.path(), Vec::new());
            let e = loop {
                let mut o = SourceOutput::default();
                match r.poll(&mut o) {
                    Ok(PollStatus::Finished) => panic!("no error for line {bad_at}"),
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            assert!(
                e.contains("a.json") && e.contains(&format!("at line {bad_at}:")),
                "{e}"
            );
        }
    }

    #[test]
    fn ignored_parse_errors_skip_only_the_bad_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let expected = write_lines(
            &dir.path().join("a.json"),
            200_000,
            &[
                (2, "not json"),
                (70_000, "{\"id\":"),
                (70_001, "{\"id\":\"x\"}"),
                (199_999, "]"),
            ],
        );
        let mut r = source_with(
            dir.path(),
            ", 'json.ignore-parse-errors' = 'true'",
            Vec::new(),
        );
        let (rows, _) = read(r.as_mut(), usize::MAX);
        let first_difference = rows.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            (rows.len(), first_difference),
            (expected.len(), None),
            "rows {:?}, expected {:?}",
            first_difference.map(|i| &rows[i..rows.len().min(i + 3)]),
            first_difference.map(|i| &expected[i..expected.len().min(i + 3)]),
        );
    }

    #[test]
    fn dropping_a_source_mid_file_stops_its_reader() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_lines(&dir.path().join("a.json"), 400_000, &[]);
        let mut r = source(dir.path(), Vec::new());
        let (rows, _) = read(r.as_mut(), 1);
        assert!(!rows.is_empty() && rows.len() < 400_000);
        // Joins the reader, which is blocked on a full queue: this returns, it does not hang.
        drop(r);
    }
}
