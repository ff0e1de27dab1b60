//! Crash points for fault tests: with the cargo feature `failpoints`, the
//! process aborts (`std::process::abort`, like `kill -9`: no destructors, no
//! flush) when it reaches a point named in `SLUICE_FAILPOINTS`. Without the
//! feature every [`hit`] compiles to nothing.
//!
//! `SLUICE_FAILPOINTS=name[:n][,name[:n]…]` aborts at the `n`-th hit of `name`
//! in this process (default 1). Points:
//!
//! | name | where |
//! |---|---|
//! | `before_snapshot` | a subtask got (or aligned) a barrier, before its synchronous snapshot |
//! | `after_upload` | a subtask uploaded its state files, before it acknowledges |
//! | `after_checkpoint_complete` | the coordinator wrote `_metadata`, before it tells sinks to commit |
//! | `before_sink_commit` | a sink is about to commit a committable |
//! | `after_sink_commit` | a sink committed a committable |
//!
//! Example: `SLUICE_FAILPOINTS=after_checkpoint_complete:2 sluice-engine run …`
//! (engine built with `--features failpoints`) dies right after the second
//! checkpoint is durable and before its output is committed; a restart with
//! `--restore latest` must re-commit that output exactly once.

/// Aborts the process if `name` is armed and this is its armed hit.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn points() -> &'static HashMap<String, (u64, AtomicU64)> {
        static POINTS: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("SLUICE_FAILPOINTS").unwrap_or_default();
            spec.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (name, n) = match s.split_once(':') {
                        Some((name, n)) => (name, n.trim().parse::<u64>().unwrap_or(1)),
                        None => (s, 1),
                    };
                    (name.to_string(), (n.max(1), AtomicU64::new(0)))
                })
                .collect()
        })
    }

    pub fn hit(name: &str) {
        if let Some((at, count)) = points().get(name) {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            if n == *at {
                eprintln!("failpoint {name} (hit {n}): aborting");
                std::process::abort();
            }
        }
    }
}
