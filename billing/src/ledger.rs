//! The metering ledger (DESIGN.md §7): one span per contiguous stretch of a Run at a fixed size.
//!
//! A span is billed for the whole seconds `[floor(started_at), floor(ended_at))` (see
//! [`crate::time`]); an open span is billed up to the caller's "as of" instant. Spans are only
//! closed from provisioner evidence (process exit, pod termination), so a control-plane outage
//! neither loses time (a cluster that kept running keeps its span open and is billed through the
//! outage) nor double-counts it (a cluster that died during the outage is closed at its recorded
//! exit time, and replaying the same evidence is a no-op).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};
use crate::time::{rfc3339, secs};

/// Largest size a single run may hold, in milli-KPU (one million KPU). The bound keeps
/// `kpu_milli × seconds` of any span inside `i64` for spans up to ~290 years.
pub const MAX_KPU_MILLI: i64 = 1_000_000_000;

/// Who a run belongs to: the identity every span of the run carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    pub run_id: String,
    pub org: String,
    pub pool: String,
    pub application: String,
    pub region: String,
}

/// One contiguous stretch of a run at a fixed size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub run_id: String,
    pub org: String,
    pub pool: String,
    pub application: String,
    pub region: String,
    pub kpu_milli: i64,
    pub started_at: DateTime<Utc>,
    /// `None` while the provisioner has not reported the end of this stretch.
    pub ended_at: Option<DateTime<Utc>>,
}

impl Span {
    pub fn new(run: &RunRef, kpu_milli: i64, started_at: DateTime<Utc>) -> Self {
        Span {
            run_id: run.run_id.clone(),
            org: run.org.clone(),
            pool: run.pool.clone(),
            application: run.application.clone(),
            region: run.region.clone(),
            kpu_milli,
            started_at,
            ended_at: None,
        }
    }

    /// The billed seconds `[start, end)` of this span, an open span ending at `as_of_s`.
    /// An open span that started after `as_of_s` has billed nothing yet (`start == end`).
    pub fn billed_secs(&self, as_of_s: i64) -> (i64, i64) {
        let start = secs(self.started_at);
        let end = match self.ended_at {
            Some(ended_at) => secs(ended_at),
            None => as_of_s,
        };
        (start, end.max(start))
    }

    /// Milli-KPU-seconds of this span inside `[from_s, to_s)` (`i128`: a span may be open for
    /// longer than `i64` milli-KPU-seconds can hold at the largest size).
    pub fn usage_within(&self, from_s: i64, to_s: i64, as_of_s: i64) -> i128 {
        let (start, end) = self.billed_secs(as_of_s);
        let overlap = end.min(to_s) - start.max(from_s);
        if overlap <= 0 {
            0
        } else {
            i128::from(self.kpu_milli) * i128::from(overlap)
        }
    }

    fn same_run_identity(&self, other: &Span) -> bool {
        self.org == other.org
            && self.pool == other.pool
            && self.application == other.application
            && self.region == other.region
    }
}

/// Checks the ledger invariants: positive bounded sizes, no negative durations, one identity per
/// run, no overlap between the spans of a run, and at most one open span per run, its last.
pub fn validate_spans(spans: &[Span]) -> Result<()> {
    validate_span_refs(spans)
}

/// [`validate_spans`] over borrowed spans, so callers that filter a ledger need not clone it.
pub fn validate_span_refs<'a>(spans: impl IntoIterator<Item = &'a Span>) -> Result<()> {
    let mut by_run: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for span in spans {
        if !(1..=MAX_KPU_MILLI).contains(&span.kpu_milli) {
            return Err(BillingError::ledger(
                &span.run_id,
                format!(
                    "kpu_milli must be in 1..={MAX_KPU_MILLI}, got {} (span starting {})",
                    span.kpu_milli,
                    rfc3339(span.started_at)
                ),
            ));
        }
        if let Some(ended_at) = span.ended_at
            && ended_at < span.started_at
        {
            return Err(BillingError::ledger(
                &span.run_id,
                format!(
                    "negative duration: span ends {} before it starts {}",
                    rfc3339(ended_at),
                    rfc3339(span.started_at)
                ),
            ));
        }
        by_run.entry(&span.run_id).or_default().push(span);
    }
    for (run_id, mut run_spans) in by_run {
        // An open span sorts after a closed one with the same start, where it has to be.
        run_spans.sort_by_key(|s| (s.started_at, s.ended_at.is_none(), s.ended_at));
        for pair in run_spans.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            if !prev.same_run_identity(next) {
                return Err(BillingError::ledger(
                    run_id,
                    "spans of one run name different org, pool, application or region",
                ));
            }
            match prev.ended_at {
                None => {
                    return Err(BillingError::ledger(
                        run_id,
                        format!(
                            "span opened {} is still open but a later span opens {}",
                            rfc3339(prev.started_at),
                            rfc3339(next.started_at)
                        ),
                    ));
                }
                Some(ended_at) if ended_at > next.started_at => {
                    return Err(BillingError::ledger(
                        run_id,
                        format!(
                            "overlap: span ending {} overlaps the span starting {}",
                            rfc3339(ended_at),
                            rfc3339(next.started_at)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Milli-KPU-seconds billed over `[from, to)`, open spans counted up to `as_of`.
pub fn usage_between(
    spans: &[Span],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    as_of: DateTime<Utc>,
) -> Result<i64> {
    let (from_s, to_s) = (secs(from), secs(to));
    if from_s >= to_s {
        return Err(BillingError::param(
            "from",
            format!(
                "must be before `to` ({} is not before {})",
                rfc3339(from),
                rfc3339(to)
            ),
        ));
    }
    let as_of_s = secs(as_of);
    let total: i128 = spans
        .iter()
        .map(|span| span.usage_within(from_s, to_s, as_of_s))
        .sum();
    i64::try_from(total).map_err(|_| BillingError::Overflow {
        what: "total milli-KPU-seconds",
    })
}

/// The ledger as the control plane drives it: open a run, resize it, close it from evidence.
/// Every operation checks the invariants of [`validate_spans`] before changing anything.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    spans: Vec<Span>,
    /// Run id → index of its open span.
    open: BTreeMap<String, usize>,
    /// Run id → the exit time it was closed at, so replayed evidence is recognised.
    closed: BTreeMap<String, DateTime<Utc>>,
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Rebuilds a ledger from stored spans (for example after a control-plane restart).
    pub fn from_spans(spans: Vec<Span>) -> Result<Self> {
        validate_spans(&spans)?;
        let mut ledger = Ledger {
            spans,
            ..Ledger::default()
        };
        let mut open = BTreeMap::new();
        let mut last_exit: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (index, span) in ledger.spans.iter().enumerate() {
            match span.ended_at {
                // validate_spans admits at most one open span per run, and only as its last.
                None => {
                    open.insert(span.run_id.clone(), index);
                }
                Some(ended_at) => {
                    let latest = last_exit.entry(span.run_id.clone()).or_insert(ended_at);
                    *latest = (*latest).max(ended_at);
                }
            }
        }
        let closed = last_exit
            .into_iter()
            .filter(|(run_id, _)| !open.contains_key(run_id))
            .collect();
        ledger.open = open;
        ledger.closed = closed;
        Ok(ledger)
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn into_spans(self) -> Vec<Span> {
        self.spans
    }

    /// Runs whose current span is open: after a control-plane restart the reconciler observes
    /// each of them and either leaves it open (still running) or closes it at the exit time.
    pub fn open_runs(&self) -> impl Iterator<Item = &str> {
        self.open.keys().map(String::as_str)
    }

    /// The open span of `run_id`, if the run is still metered.
    pub fn open_span(&self, run_id: &str) -> Option<&Span> {
        self.open.get(run_id).map(|&index| &self.spans[index])
    }

    /// The exit time `run_id` was closed at, if it is closed.
    pub fn closed_at(&self, run_id: &str) -> Option<DateTime<Utc>> {
        self.closed.get(run_id).copied()
    }

    /// The provisioner brought up `run` at `kpu_milli` at `at`.
    pub fn open_run(&mut self, run: &RunRef, kpu_milli: i64, at: DateTime<Utc>) -> Result<()> {
        check_size(&run.run_id, kpu_milli)?;
        if self.open.contains_key(&run.run_id) || self.closed.contains_key(&run.run_id) {
            return Err(BillingError::ledger(
                &run.run_id,
                "run already has spans; a restarted cluster is a new run",
            ));
        }
        self.open.insert(run.run_id.clone(), self.spans.len());
        self.spans.push(Span::new(run, kpu_milli, at));
        Ok(())
    }

    /// The run was resized at `at`: close the current span and open the next at the same instant.
    /// Resizing to the current size changes nothing.
    pub fn resize(&mut self, run_id: &str, kpu_milli: i64, at: DateTime<Utc>) -> Result<()> {
        check_size(run_id, kpu_milli)?;
        let index = self.open_index(run_id)?;
        let current = &self.spans[index];
        if at < current.started_at {
            return Err(BillingError::ledger(
                run_id,
                format!(
                    "resize at {} precedes the current span's start {}",
                    rfc3339(at),
                    rfc3339(current.started_at)
                ),
            ));
        }
        if current.kpu_milli == kpu_milli {
            return Ok(());
        }
        let mut next = current.clone();
        next.kpu_milli = kpu_milli;
        next.started_at = at;
        self.spans[index].ended_at = Some(at);
        self.open.insert(run_id.to_owned(), self.spans.len());
        self.spans.push(next);
        Ok(())
    }

    /// The provisioner reports the run's cluster gone at `exit_at` (process exit, pod
    /// termination). Replaying the same evidence is accepted; contradicting evidence is not.
    pub fn close(&mut self, run_id: &str, exit_at: DateTime<Utc>) -> Result<()> {
        if let Some(&closed_at) = self.closed.get(run_id) {
            if closed_at == exit_at {
                return Ok(());
            }
            return Err(BillingError::ledger(
                run_id,
                format!(
                    "already closed at {}, evidence now says {}",
                    rfc3339(closed_at),
                    rfc3339(exit_at)
                ),
            ));
        }
        let index = self.open_index(run_id)?;
        let span = &mut self.spans[index];
        if exit_at < span.started_at {
            return Err(BillingError::ledger(
                run_id,
                format!(
                    "exit at {} precedes the current span's start {}",
                    rfc3339(exit_at),
                    rfc3339(span.started_at)
                ),
            ));
        }
        span.ended_at = Some(exit_at);
        self.open.remove(run_id);
        self.closed.insert(run_id.to_owned(), exit_at);
        Ok(())
    }

    fn open_index(&self, run_id: &str) -> Result<usize> {
        self.open.get(run_id).copied().ok_or_else(|| {
            if self.closed.contains_key(run_id) {
                BillingError::ledger(run_id, "run is already closed")
            } else {
                BillingError::ledger(run_id, "unknown run")
            }
        })
    }
}

fn check_size(run_id: &str, kpu_milli: i64) -> Result<()> {
    if (1..=MAX_KPU_MILLI).contains(&kpu_milli) {
        Ok(())
    } else {
        Err(BillingError::ledger(
            run_id,
            format!("kpu_milli must be in 1..={MAX_KPU_MILLI}, got {kpu_milli}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn run(id: &str) -> RunRef {
        RunRef {
            run_id: id.into(),
            org: "org_a".into(),
            pool: "pool_a".into(),
            application: "app_a".into(),
            region: "eu-1".into(),
        }
    }

    #[test]
    fn resize_at_a_sub_second_instant_neither_loses_nor_doubles_a_second() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run("run_1"), 1250, t("2026-10-01T00:00:00.700Z"))
            .unwrap();
        ledger
            .resize("run_1", 2250, t("2026-10-01T00:00:10.300Z"))
            .unwrap();
        ledger
            .close("run_1", t("2026-10-01T00:00:20.900Z"))
            .unwrap();
        let spans = ledger.spans();
        assert_eq!(spans.len(), 2);
        let from = t("2026-10-01T00:00:00Z");
        let to = t("2026-10-02T00:00:00Z");
        // [0, 10) at 1.25 KPU and [10, 20) at 2.25 KPU.
        assert_eq!(
            usage_between(spans, from, to, to).unwrap(),
            10 * 1250 + 10 * 2250
        );
    }

    #[test]
    fn open_spans_are_billed_up_to_as_of_and_never_before_their_start() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run("run_1"), 1000, t("2026-10-01T01:00:00Z"))
            .unwrap();
        let from = t("2026-10-01T00:00:00Z");
        let to = t("2026-10-02T00:00:00Z");
        assert_eq!(
            usage_between(ledger.spans(), from, to, t("2026-10-01T01:01:00Z")).unwrap(),
            60_000
        );
        assert_eq!(usage_between(ledger.spans(), from, to, from).unwrap(), 0);
    }

    #[test]
    fn replayed_evidence_is_idempotent_and_contradicting_evidence_is_rejected() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run("run_1"), 1000, t("2026-10-01T00:00:00Z"))
            .unwrap();
        ledger.close("run_1", t("2026-10-01T00:10:00Z")).unwrap();
        ledger.close("run_1", t("2026-10-01T00:10:00Z")).unwrap();
        let err = ledger
            .close("run_1", t("2026-10-01T00:11:00Z"))
            .unwrap_err();
        assert!(err.to_string().contains("already closed"), "{err}");
        assert!(
            ledger
                .resize("run_1", 2000, t("2026-10-01T00:12:00Z"))
                .is_err()
        );
        assert!(
            ledger
                .open_run(&run("run_1"), 1000, t("2026-10-01T00:12:00Z"))
                .is_err()
        );
        assert_eq!(ledger.spans().len(), 1);
    }

    #[test]
    fn operations_that_would_break_invariants_are_refused() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run("run_1"), 1000, t("2026-10-01T00:10:00Z"))
            .unwrap();
        assert!(
            ledger
                .resize("run_1", 2000, t("2026-10-01T00:09:59Z"))
                .is_err()
        );
        assert!(ledger.close("run_1", t("2026-10-01T00:09:59Z")).is_err());
        assert!(
            ledger
                .resize("run_1", 0, t("2026-10-01T00:11:00Z"))
                .is_err()
        );
        assert!(ledger.close("run_2", t("2026-10-01T00:11:00Z")).is_err());
        assert!(
            ledger
                .open_run(&run("run_2"), MAX_KPU_MILLI + 1, t("2026-10-01T00:11:00Z"))
                .is_err()
        );
        ledger
            .resize("run_1", 1000, t("2026-10-01T00:11:00Z"))
            .unwrap();
        assert_eq!(
            ledger.spans().len(),
            1,
            "a resize to the same size opens no span"
        );
    }

    #[test]
    fn validation_catches_overlap_negative_durations_and_early_open_spans() {
        let mut a = Span::new(&run("run_1"), 1000, t("2026-10-01T00:00:00Z"));
        a.ended_at = Some(t("2026-10-01T00:10:00Z"));
        let mut b = Span::new(&run("run_1"), 2000, t("2026-10-01T00:09:00Z"));
        b.ended_at = Some(t("2026-10-01T00:20:00Z"));
        let err = validate_spans(&[a.clone(), b.clone()]).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");

        b.started_at = t("2026-10-01T00:10:00Z");
        validate_spans(&[b.clone(), a.clone()]).unwrap();

        let mut negative = a.clone();
        negative.ended_at = Some(t("2026-09-30T00:00:00Z"));
        let err = validate_spans(&[negative]).unwrap_err();
        assert!(err.to_string().contains("negative duration"), "{err}");

        let mut open_first = a.clone();
        open_first.ended_at = None;
        let err = validate_spans(&[open_first, b.clone()]).unwrap_err();
        assert!(err.to_string().contains("still open"), "{err}");

        let mut other_app = b;
        other_app.application = "app_b".into();
        assert!(validate_spans(&[a, other_app]).is_err());
    }

    #[test]
    fn from_spans_restores_open_and_closed_runs() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run("run_1"), 1000, t("2026-10-01T00:00:00Z"))
            .unwrap();
        ledger
            .resize("run_1", 2000, t("2026-10-01T00:05:00Z"))
            .unwrap();
        ledger
            .open_run(&run("run_2"), 1000, t("2026-10-01T00:00:00Z"))
            .unwrap();
        ledger.close("run_2", t("2026-10-01T00:03:00Z")).unwrap();
        let mut restored = Ledger::from_spans(ledger.spans().to_vec()).unwrap();
        assert_eq!(restored.open_runs().collect::<Vec<_>>(), vec!["run_1"]);
        restored.close("run_2", t("2026-10-01T00:03:00Z")).unwrap();
        restored.close("run_1", t("2026-10-01T00:06:00Z")).unwrap();
        assert_eq!(
            restored.spans()[1].ended_at,
            Some(t("2026-10-01T00:06:00Z"))
        );
    }

    #[test]
    fn from_before_to_is_required_and_named() {
        let at = t("2026-10-01T00:00:00Z");
        assert_eq!(
            usage_between(&[], at, at, at).unwrap_err().parameter(),
            Some("from")
        );
    }
}
