//! A small metrics registry: named counters and gauges with labels, shared by
//! tasks through atomics, rendered in Prometheus' text format (the cluster's
//! `/metrics` exports this registry).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Labels = Vec<(String, String)>;

#[derive(Default)]
pub struct MetricsRegistry {
    counters: Mutex<Vec<(String, Labels, Arc<AtomicU64>)>>,
    gauges: Mutex<Vec<(String, Labels, Arc<AtomicI64>)>>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl MetricsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counter `name{labels}`, created at 0 on first use.
    pub fn counter(&self, name: &str, l: &[(&str, &str)]) -> Arc<AtomicU64> {
        let l = labels(l);
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, v)) = c.iter().find(|(n, ls, _)| n == name && *ls == l) {
            return v.clone();
        }
        let v = Arc::new(AtomicU64::new(0));
        c.push((name.to_string(), l, v.clone()));
        v
    }

    pub fn gauge(&self, name: &str, l: &[(&str, &str)], initial: i64) -> Arc<AtomicI64> {
        let l = labels(l);
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, v)) = g.iter().find(|(n, ls, _)| n == name && *ls == l) {
            return v.clone();
        }
        let v = Arc::new(AtomicI64::new(initial));
        g.push((name.to_string(), l, v.clone()));
        v
    }

    /// Sum of every counter called `name`.
    pub fn counter_sum(&self, name: &str) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.load(Ordering::Relaxed))
            .sum()
    }

    /// Minimum of every gauge called `name` (None when there is none).
    pub fn gauge_min(&self, name: &str) -> Option<i64> {
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.load(Ordering::Relaxed))
            .min()
    }

    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let fmt_labels = |l: &Labels| {
            if l.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = l
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        };
        for (n, l, v) in self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "{n}{} {}\n",
                fmt_labels(l),
                v.load(Ordering::Relaxed)
            ));
        }
        for (n, l, v) in self.gauges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push_str(&format!(
                "{n}{} {}\n",
                fmt_labels(l),
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}
