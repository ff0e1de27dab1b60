//! State backend benchmark: a program that prints figures, not a timed test.
//!
//! ```text
//! dev/cargo run --release -p sluice-state-rocksdb --example state_bench            # full run
//! dev/cargo run --release -p sluice-state-rocksdb --example state_bench -- --quick # smaller
//! ... --example state_bench -- --only rocks-nc                                   # one backend
//! ```
//!
//! Backends: `memory`, `rocksdb` (default config: a 250k-entry value cache in front of RocksDB) and
//! `rocks-nc` (RocksDB without the value cache). For each: value get+update (read-modify-write of a u64 counter, as W1's rolling count does)
//! at uniformly random keys over 100k and 1M keys, and separately value_get + value_put; then the
//! snapshot of about 100 MB of state: synchronous part, asynchronous write to a file, size, restore.

use std::io::{BufReader, BufWriter};
use std::time::{Duration, Instant};

use sluice_state::{KeyGroupRange, KeyedStateBackend, MemoryBackend, NO_NAMESPACE, StateKind};
use sluice_state_rocksdb::{RocksDbBackend, RocksDbConfig};

const MAX_P: u16 = 128;

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn new_backend(kind: &str, dir: &std::path::Path) -> Fallible<Box<dyn KeyedStateBackend>> {
    let all = KeyGroupRange::all(MAX_P);
    Ok(match kind {
        "memory" => Box::new(MemoryBackend::new(MAX_P, all)?),
        "rocksdb" => Box::new(RocksDbBackend::open_temp(
            Some(dir),
            MAX_P,
            all,
            RocksDbConfig::default(),
        )?),
        // Every access goes to RocksDB: what the cache hides when the working set outgrows it.
        "rocks-nc" => Box::new(RocksDbBackend::open_temp(
            Some(dir),
            MAX_P,
            all,
            RocksDbConfig {
                value_cache_entries: 0,
                ..RocksDbConfig::default()
            },
        )?),
        other => return Err(format!("unknown backend {other}").into()),
    })
}

/// xorshift64*: a cheap, deterministic key sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `n` keys `user-00000000`…, back to back in one buffer (as a batch's key column would be), so the
/// benchmark measures the backend rather than chasing one allocation per key.
struct Keys {
    flat: Vec<u8>,
}

const KEY_LEN: usize = 13;

impl Keys {
    fn get(&self, i: usize) -> &[u8] {
        &self.flat[i * KEY_LEN..(i + 1) * KEY_LEN]
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.flat.chunks_exact(KEY_LEN)
    }
}

fn keys(n: usize) -> Keys {
    let mut flat = Vec::with_capacity(n * KEY_LEN);
    for i in 0..n {
        flat.extend_from_slice(format!("user-{i:08}").as_bytes());
    }
    Keys { flat }
}

/// CPU seconds (user + system) used so far by the whole process, background RocksDB threads included:
/// on a shared machine wall-clock rates move with other people's load, CPU-time rates much less.
fn cpu_seconds() -> Fallible<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc/self/stat")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || -> Fallible<f64> {
        Ok(fields
            .next()
            .ok_or("short /proc/self/stat")?
            .parse::<f64>()?)
    };
    // USER_HZ is 100 on Linux for every architecture we run on.
    Ok((next()? + next()?) / 100.0)
}

/// Wall time and CPU time of `f`.
fn timed(f: impl FnOnce() -> Fallible<()>) -> Fallible<(Duration, f64)> {
    let cpu = cpu_seconds()?;
    let start = Instant::now();
    f()?;
    Ok((start.elapsed(), cpu_seconds()? - cpu))
}

fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else {
        format!("{:.0} k", per_s / 1e3)
    }
}

/// `ops/s (ops per CPU-second)`.
fn rate(ops: u64, (wall, cpu): (Duration, f64)) -> String {
    let per_cpu = if cpu > 0.0 {
        fmt_rate(ops as f64 / cpu)
    } else {
        "-".into()
    };
    format!(
        "{}/s ({per_cpu}/cpu-s)",
        fmt_rate(ops as f64 / wall.as_secs_f64())
    )
}

fn bump(bytes: &mut Vec<u8>, present: bool) -> bool {
    let n = if present && bytes.len() == 8 {
        u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]))
    } else {
        0
    };
    bytes.clear();
    bytes.extend_from_slice(&(n + 1).to_le_bytes());
    true
}

fn ops_bench(kind: &str, n_keys: usize, ops: u64, dir: &std::path::Path) -> Fallible<()> {
    let mut b = new_backend(kind, dir)?;
    let id = b.register("count", StateKind::Value)?;
    let keys = keys(n_keys);
    let load = timed(|| {
        for k in keys.iter() {
            b.value_put(id, k, NO_NAMESPACE, &0u64.to_le_bytes())?;
        }
        Ok(())
    })?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let update = timed(|| {
        for _ in 0..ops {
            let k = keys.get((rng.next() % n_keys as u64) as usize);
            b.value_update(id, k, NO_NAMESPACE, &mut bump)?;
        }
        Ok(())
    })?;
    let mut sum = 0u64;
    let get_put = timed(|| {
        for _ in 0..ops {
            let k = keys.get((rng.next() % n_keys as u64) as usize);
            let n = match b.value_get(id, k, NO_NAMESPACE)? {
                Some(v) => u64::from_le_bytes(v.try_into()?),
                None => return Err(format!("key {k:?} lost").into()),
            };
            sum += n;
            b.value_put(id, k, NO_NAMESPACE, &(n + 1).to_le_bytes())?;
        }
        Ok(())
    })?;
    // Every op added one: the sum of all counters proves the work was done.
    let mut total = 0u64;
    for k in keys.iter() {
        if let Some(v) = b.value_get(id, k, NO_NAMESPACE)? {
            total += u64::from_le_bytes(v.try_into()?);
        }
    }
    if total != 2 * ops {
        return Err(format!("counters add up to {total}, expected {}", 2 * ops).into());
    }
    println!(
        "{kind:8} {n_keys:>8} keys | load {:>26} | value_update {:>26} | value_get+value_put {:>26} | {ops} ops, sum {sum}",
        rate(n_keys as u64, load),
        rate(ops, update),
        rate(ops, get_put),
    );
    Ok(())
}

/// `Some(mb)`: ~100-byte values plus some list state, about `mb` MB of keys and values.
/// `None`: one 8-byte counter for each of 1M keys (W1 at 1M keys).
fn snapshot_bench(kind: &str, target_mb: Option<usize>, dir: &std::path::Path) -> Fallible<()> {
    let mut b = new_backend(kind, dir)?;
    let values = b.register("values", StateKind::Value)?;
    let lists = b.register("windows", StateKind::List)?;
    let value = [7u8; 100];
    let (n, value) = match target_mb {
        Some(mb) => (mb * (1 << 20) / 130, &value[..]),
        None => (1_000_000, &value[..8]),
    };
    let keys = keys(n);
    for (i, k) in keys.iter().enumerate() {
        b.value_put(values, k, NO_NAMESPACE, value)?;
        if target_mb.is_some() && i % 10 == 0 {
            b.list_append(lists, k, &(i as u64 % 7).to_be_bytes(), &value[..40])?;
        }
    }
    let start = Instant::now();
    let pending = b.snapshot()?;
    let sync = start.elapsed();
    let path = dir.join(format!("{kind}.snapshot"));
    let start = Instant::now();
    let mut file = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let summary = std::thread::spawn(move || pending.write_to(&mut file))
        .join()
        .map_err(|_| "snapshot writer panicked")??;
    let write = start.elapsed();
    let start = Instant::now();
    let mut restored = new_backend(kind, dir)?;
    let mut reader = BufReader::new(std::fs::File::open(&path)?);
    let restored_summary = restored.restore(&mut [&mut reader])?;
    let restore = start.elapsed();
    if restored_summary.records != summary.records {
        return Err("restore read a different number of records".into());
    }
    let k = keys.get(n / 2);
    if restored.value_get(values, k, NO_NAMESPACE)? != Some(value) {
        return Err("restored state differs".into());
    }
    println!(
        "{kind:8} snapshot of {n} keys: {:.1} MB, {} records; sync part {:.0} ms, async write {:.0} ms, restore {:.0} ms",
        summary.bytes as f64 / 1e6,
        summary.records,
        sync.as_secs_f64() * 1e3,
        write.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3,
    );
    std::fs::remove_file(&path)?;
    Ok(())
}

fn main() -> Fallible<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::Builder::new()
        .prefix("sluice-state-bench-")
        .tempdir()?;
    let (mem_ops, rocks_ops, snapshot_mb) = if quick {
        (1_000_000, 200_000, 20)
    } else {
        (10_000_000, 2_000_000, 100)
    };
    // `--only NAME` runs one backend (for profiling).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    for n_keys in [100_000, 1_000_000] {
        for (name, ops) in [
            ("memory", mem_ops),
            ("rocksdb", rocks_ops),
            ("rocks-nc", rocks_ops),
        ] {
            if wanted(name) {
                ops_bench(name, n_keys, ops, dir.path())?;
            }
        }
    }
    for name in ["memory", "rocksdb"] {
        if wanted(name) {
            snapshot_bench(name, Some(snapshot_mb), dir.path())?;
            snapshot_bench(name, None, dir.path())?;
        }
    }
    Ok(())
}
