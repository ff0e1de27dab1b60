//! `sluice-engine`: runs a Flink SQL job in this process (subtasks as threads).
//!
//! ```text
//! sluice-engine run JOB.sql [--parallelism N] [--state-backend memory] [--progress-ms 1000] [--json]
//!     [--checkpoint-dir URI --checkpoint-interval-ms N] [--restore latest|URI]   (see `checkpointing`)
//! sluice-engine explain JOB.sql [--parallelism N]
//! sluice-engine check JOB.sql        # validation only, errors as line:column
//! sluice-engine jobmanager JOB.sql --job-id HEX32 --generation N --checkpoint-dir URI …
//! sluice-engine taskmanager --jobmanager HOST:PORT --slots K --id NAME --work-dir DIR …
//! ```
//! While running, a progress line goes to stderr every `--progress-ms`
//! (records in/out, rates, watermark, late records); a summary follows at the
//! end (`--json`: one JSON object on stdout, used by `bench/compare.py`).

mod checkpointing;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sluice_runtime::connector::Connectors;
use sluice_runtime::{JobConfig, MetricsRegistry};

#[derive(Parser)]
#[command(name = "sluice-engine", about = "Sluice stream-processing engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a job until its sources end (or forever for unbounded sources).
    Run(RunArgs),
    /// Prints the physical plan.
    Explain(RunArgs),
    /// Validates the job and prints its errors with line and column.
    Check { job: PathBuf },
    /// Runs the JobManager of a cluster (see `sluice_cluster`).
    Jobmanager(sluice_cluster::JobManagerArgs),
    /// Runs a TaskManager of a cluster (see `sluice_cluster`).
    Taskmanager(sluice_cluster::TaskManagerArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    job: PathBuf,
    /// Subtasks per vertex (threads); default: `SET 'parallelism.default'` or 1.
    #[arg(long, short)]
    parallelism: Option<usize>,
    /// Keyed state backend: memory (Flink's hashmap) or rocksdb.
    #[arg(long, default_value = "memory")]
    state_backend: String,
    /// Parent directory of the rocksdb backends' working files (default: the system temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Key groups (Flink's max parallelism).
    #[arg(long, default_value_t = 128)]
    max_parallelism: u16,
    /// Progress line interval; 0 disables it.
    #[arg(long, default_value_t = 1000)]
    progress_ms: u64,
    /// Print the end summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    checkpoint: checkpointing::CheckpointArgs,
}

fn read_job(path: &PathBuf) -> Result<(String, sluice_sql::JobPlan)> {
    let sql =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match sluice_sql::plan(&sql) {
        Ok(p) => Ok((sql, p)),
        Err(errs) => {
            for e in &errs {
                eprintln!(
                    "{}:{}:{}: {} [{}]",
                    path.display(),
                    e.line,
                    e.column,
                    e.message,
                    e.code.as_str()
                );
            }
            bail!("{} has {} error(s)", path.display(), errs.len())
        }
    }
}

fn connectors() -> Connectors {
    let mut c = Connectors::default();
    sluice_connectors::register(&mut c);
    sluice_connector_kafka::register(&mut c);
    sluice_connector_postgres::register(&mut c);
    c
}

fn config(args: &RunArgs, plan: &sluice_sql::JobPlan) -> Result<JobConfig> {
    let from_set = plan
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == "parallelism.default")
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .context("SET 'parallelism.default' is not a number")?;
    let mut cfg = JobConfig::new(args.parallelism.or(from_set).unwrap_or(1));
    cfg.max_parallelism = args.max_parallelism;
    if let Some((_, v)) = plan
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == "table.exec.source.idle-timeout")
    {
        let ms = sluice_sql::parse_duration_ms(v).with_context(|| {
            format!("SET 'table.exec.source.idle-timeout' = '{v}' is not a duration")
        })?;
        if ms > 0 {
            cfg.idle_timeout = Some(Duration::from_millis(ms));
        }
    }
    match args.state_backend.as_str() {
        "memory" | "hashmap" => cfg.state = sluice_runtime::memory_state(),
        "rocksdb" => {
            let dir = args.state_dir.clone();
            cfg.state = Arc::new(move |max_parallelism, range| {
                let b = sluice_state_rocksdb::RocksDbBackend::open_temp(
                    dir.as_deref(),
                    max_parallelism,
                    range,
                    sluice_state_rocksdb::RocksDbConfig::default(),
                )
                .map_err(|e| sluice_runtime::RuntimeError::State {
                    context: "opening the rocksdb state backend".into(),
                    source: e,
                })?;
                Ok(Box::new(b) as Box<dyn sluice_state::KeyedStateBackend>)
            });
        }
        other => bail!("unknown --state-backend '{other}' (memory, rocksdb)"),
    }
    cfg.native = native_snapshots(&args.state_backend);
    Ok(cfg)
}

/// RocksDB checkpoints are incremental (native files); any job can restore them,
/// converted to the canonical format when it cannot open them as they are.
fn native_snapshots(backend: &str) -> sluice_runtime::task::NativeSnapshots {
    sluice_runtime::task::NativeSnapshots {
        backend: (backend == "rocksdb").then(|| "rocksdb".to_string()),
        converter: Some(Arc::new(
            |dir: &std::path::Path, out: &mut dyn std::io::Write| {
                sluice_state_rocksdb::native_to_canonical(dir, out)
            },
        )),
    }
}

fn fmt_wm(w: Option<i64>) -> String {
    match w {
        None | Some(i64::MIN) => "-".into(),
        Some(i64::MAX) => "end".into(),
        Some(ms) => sluice_runtime::eval::format_timestamp(ms, "yyyy-MM-dd HH:mm:ss.SSS"),
    }
}

/// utime + stime of this process, in seconds (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (1-based) are at 11 and 12 after the command name; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn run(args: RunArgs) -> Result<()> {
    let (_, plan) = read_job(&args.job)?;
    let cfg = config(&args, &plan)?;
    let metrics = MetricsRegistry::new();
    let done = Arc::new(AtomicBool::new(false));
    let progress = if args.progress_ms > 0 {
        let (m, d, every) = (
            metrics.clone(),
            done.clone(),
            Duration::from_millis(args.progress_ms),
        );
        Some(std::thread::spawn(move || {
            let start = Instant::now();
            let (mut last_in, mut last_t) = (0u64, Instant::now());
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(every.min(Duration::from_millis(100)));
                if last_t.elapsed() < every {
                    continue;
                }
                let rin = m.counter_sum("sluice_source_records_total");
                let rout = m.counter_sum("sluice_sink_records_total");
                let rate = (rin - last_in) as f64 / last_t.elapsed().as_secs_f64();
                (last_in, last_t) = (rin, Instant::now());
                eprintln!(
                    "[{:>6.1}s] in {rin} ({:.0}/s)  out {rout}  watermark {}  late {}",
                    start.elapsed().as_secs_f64(),
                    rate,
                    fmt_wm(m.gauge_min("sluice_sink_watermark_ms")),
                    m.counter_sum("sluice_late_records_dropped_total")
                );
            }
        }))
    } else {
        None
    };
    let cpu0 = cpu_seconds();
    let job_name = args
        .job
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "job".into());
    let res = checkpointing::run(
        &args.checkpoint,
        &job_name,
        &plan,
        &connectors(),
        &cfg,
        &metrics,
    );
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let report = res?;
    let cpu = cpu_seconds() - cpu0;
    let secs = report.elapsed.as_secs_f64();
    let records_in: u64 = report.pipelines.iter().map(|p| p.records_in).sum();
    if args.json {
        let pipes: Vec<String> = report
            .pipelines
            .iter()
            .map(|p| format!("{{\"source\":\"{}\",\"sink\":\"{}\",\"records_in\":{},\"records_out\":{},\"late_dropped\":{}}}", p.source, p.sink, p.records_in, p.records_out, p.late_dropped))
            .collect();
        println!(
            "{{\"elapsed_s\":{secs:.3},\"cpu_s\":{cpu:.2},\"records_in\":{records_in},\"events_per_s\":{:.0},\"events_per_cpu_s\":{:.0},\"peak_rss_mb\":{:.1},\"parallelism\":{},\"pipelines\":[{}]}}",
            records_in as f64 / secs.max(1e-9),
            records_in as f64 / cpu.max(1e-9),
            peak_rss_mb(),
            cfg.parallelism,
            pipes.join(",")
        );
    } else {
        for p in &report.pipelines {
            eprintln!(
                "{} -> {}: {} records in, {} out, {} late dropped",
                p.source, p.sink, p.records_in, p.records_out, p.late_dropped
            );
        }
        eprintln!(
            "finished in {secs:.2} s: {:.0} records/s, {cpu:.2} CPU-s ({:.0} records per CPU-s), peak RSS {:.0} MB",
            records_in as f64 / secs.max(1e-9),
            records_in as f64 / cpu.max(1e-9),
            peak_rss_mb()
        );
    }
    Ok(())
}

/// What a TaskManager gets from this binary: the connectors and the state backends.
fn cluster_services() -> sluice_cluster::Services {
    sluice_cluster::Services {
        connectors: connectors(),
        state: Arc::new(|backend: &str, dir: &std::path::Path| {
            Ok(match backend {
                "memory" | "hashmap" => sluice_runtime::memory_state(),
                "rocksdb" => {
                    let dir = dir.to_path_buf();
                    Arc::new(move |max_parallelism, range| {
                        let b = sluice_state_rocksdb::RocksDbBackend::open_temp(
                            Some(&dir),
                            max_parallelism,
                            range,
                            sluice_state_rocksdb::RocksDbConfig::default(),
                        )
                        .map_err(|e| {
                            sluice_runtime::RuntimeError::State {
                                context: "opening the rocksdb state backend".into(),
                                source: e,
                            }
                        })?;
                        Ok(Box::new(b) as Box<dyn sluice_state::KeyedStateBackend>)
                    }) as sluice_runtime::StateFactory
                }
                other => bail!("unknown state backend '{other}' (memory, rocksdb)"),
            })
        }),
        native: Arc::new(native_snapshots),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Jobmanager(a) => sluice_cluster::jobmanager::run(a),
        Cmd::Taskmanager(a) => sluice_cluster::taskmanager::run(a, cluster_services()),
        Cmd::Run(a) => run(a),
        Cmd::Explain(a) => {
            let (_, plan) = read_job(&a.job)?;
            let cfg = config(&a, &plan)?;
            println!(
                "parallelism {} (max parallelism {}), state backend {}",
                cfg.parallelism, cfg.max_parallelism, a.state_backend
            );
            print!("{plan}");
            if cfg.parallelism == 1 {
                println!(
                    "(parallelism 1: exchanges are chained into one task per pipeline{})",
                    if plan.pipelines.iter().any(|p| p.right.is_some()) {
                        ", except at a join, whose two inputs are tasks of their own"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Cmd::Check { job } => {
            read_job(&job)?;
            println!("{}: ok", job.display());
            Ok(())
        }
    }
}
