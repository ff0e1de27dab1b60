//! `'connector' = 'filesystem'`, `'format' = 'json'`: JSON lines.
//!
//! Source: `path` is a file or a directory (files starting with `.` or `_`
//! are skipped); files are spread over subtasks round-robin in name order and
//! read one after another, each file a split for watermarks. Sink: each
//! subtask writes `.part-<job>-<subtask>-<n>.json.inprogress` in `path` and
//! renames it to `part-<job>-<subtask>-<n>.json` on flush or at the end, so a
//! reader never sees a half-written file (rename is atomic within a directory).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
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
    files: Vec<PathBuf>,
    current: usize,
    file: Option<File>,
    carry: Vec<u8>,
    buf: Vec<u8>,
    decoder: JsonDecoder,
    decoded: Vec<RecordBatch>,
    bytes_read: u64,
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
    let files = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % ctx.parallelism == ctx.subtask)
        .map(|(_, p)| p)
        .collect();
    let ignore = t
        .option("json.ignore-parse-errors")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    Ok(Box::new(FileSource {
        table: t.name.clone(),
        files,
        current: 0,
        file: None,
        carry: Vec::new(),
        buf: vec![0; CHUNK],
        decoder: JsonDecoder::new(
            ctx.schema.clone(),
            BATCH_ROWS,
            ignore,
            &format!("table '{}'", t.name),
        )?,
        decoded: Vec::new(),
        bytes_read: 0,
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
        let path = self.files[self.current].clone();
        if self.file.is_none() {
            self.file = Some(
                File::open(&path)
                    .map_err(|e| err(&self.table, format!("opening {}: {e}", path.display())))?,
            );
        }
        let n = match self.file.as_mut() {
            Some(f) => f
                .read(&mut self.buf)
                .map_err(|e| err(&self.table, format!("reading {}: {e}", path.display())))?,
            None => 0,
        };
        self.bytes_read += n as u64;
        let split = self.current;
        if n == 0 {
            // End of file: decode what is left (a last line without newline), move on.
            let rest = std::mem::take(&mut self.carry);
            if !rest.iter().all(|b| b.is_ascii_whitespace()) {
                self.decoder.decode_lines(&rest, &mut self.decoded)?;
            }
            out.batches
                .extend(self.decoded.drain(..).map(|b| (split, b)));
            out.finished_splits.push(split);
            self.file = None;
            self.current += 1;
            return Ok(if self.current >= self.files.len() {
                PollStatus::Finished
            } else {
                PollStatus::Active
            });
        }
        let chunk = &self.buf[..n];
        let cut = match chunk.iter().rposition(|b| *b == b'\n') {
            Some(p) => p + 1,
            None => {
                self.carry.extend_from_slice(chunk);
                return Ok(PollStatus::Active);
            }
        };
        if self.carry.is_empty() {
            self.decoder
                .decode_lines(&chunk[..cut], &mut self.decoded)?;
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&chunk[..cut]);
            self.decoder.decode_lines(&joined, &mut self.decoded)?;
        }
        self.carry.extend_from_slice(&chunk[cut..]);
        out.batches
            .extend(self.decoded.drain(..).map(|b| (split, b)));
        Ok(PollStatus::Active)
    }

    fn position(&self) -> Vec<u8> {
        let mut v = (self.current as u64).to_le_bytes().to_vec();
        v.extend_from_slice(&self.bytes_read.to_le_bytes());
        v
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
}

pub fn create_sink(ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
    let t = &ctx.table;
    let dir = local_path(t.option("path").unwrap_or_default());
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(&t.name, format!("creating {}: {e}", dir.display())))?;
    let job = format!(
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
        prefix: format!("part-{job}-{}", ctx.subtask),
        counter: 0,
        current: None,
        columns: t.physical.len(),
        buf: Vec::new(),
        ends: Vec::new(),
    }))
}

impl FileSink {
    fn in_progress(&self) -> PathBuf {
        self.dir
            .join(format!(".{}-{}.json.inprogress", self.prefix, self.counter))
    }

    fn commit(&mut self) -> Result<()> {
        if let Some((path, mut w)) = self.current.take() {
            w.flush()
                .map_err(|e| err(&self.table, format!("writing {}: {e}", path.display())))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| err(&self.table, format!("syncing {}: {e}", path.display())))?;
            let fin = self
                .dir
                .join(format!("{}-{}.json", self.prefix, self.counter));
            std::fs::rename(&path, &fin).map_err(|e| {
                err(
                    &self.table,
                    format!("committing {} as {}: {e}", path.display(), fin.display()),
                )
            })?;
            self.counter += 1;
        }
        Ok(())
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
        self.commit()
    }

    fn finish(&mut self) -> Result<()> {
        self.commit()
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
