//! Random histories of start, stop, resize, failure and control-plane crash, driven through the
//! [`Ledger`] the way the control plane would, checked against an independent model.
//!
//! The model keeps, per run, the true size over time in milliseconds (what the provisioner really
//! held), and bills second `s` at the size held in its last millisecond `s.999`: an independent
//! statement of the ledger's whole-second rule (DESIGN.md §7, `sluice_billing::time`). While the
//! control plane is down nobody starts, stops or resizes anything, clusters may still die, and their
//! exit times reach the ledger only when it comes back (recorded evidence); clusters that kept
//! running stay open and are billed through the outage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use sluice_billing::rollup::rollup_with_cost;
use sluice_billing::{
    Granularity, GroupBy, Ledger, PriceBook, PriceCatalog, PriceVersion, RunRef, Span, kpu_milli,
    rollup, usage_between, validate_spans,
};

use crate::t;

const APPS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Advance { ms: i64 },
    Start { app: usize, kpu_milli: i64 },
    Stop { app: usize },
    Resize { app: usize, kpu_milli: i64 },
    Fail { app: usize },
    Crash,
    Recover,
}

fn size() -> impl Strategy<Value = i64> {
    (
        1u32..=16,
        1u32..=8,
        prop::sample::select(vec![0i64, 250, 500]),
    )
        .prop_map(|(p, k, share)| kpu_milli(p, k, share).expect("generated sizes are valid"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..90_000).prop_map(|ms| Op::Advance { ms }),
        2 => (0i64..2_500).prop_map(|ms| Op::Advance { ms }),
        3 => (0..APPS, size()).prop_map(|(app, kpu_milli)| Op::Start { app, kpu_milli }),
        1 => (0..APPS).prop_map(|app| Op::Stop { app }),
        2 => (0..APPS, size()).prop_map(|(app, kpu_milli)| Op::Resize { app, kpu_milli }),
        1 => (0..APPS).prop_map(|app| Op::Fail { app }),
        1 => Just(Op::Crash),
        1 => Just(Op::Recover),
    ]
}

fn app_ref(app: usize, run_id: &str) -> RunRef {
    RunRef {
        run_id: run_id.to_owned(),
        org: "org_a".into(),
        pool: ["pool_a", "pool_b"][app % 2].into(),
        application: format!("app_{app}"),
        region: "eu-1".into(),
    }
}

fn instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("test instants are in range")
}

/// What the provisioner really held: size changes of one run, `0` once it is gone.
struct TrueRun {
    run_id: String,
    app: usize,
    changes: Vec<(i64, i64)>,
}

impl TrueRun {
    fn size_at(&self, ms: i64) -> i64 {
        self.changes
            .iter()
            .take_while(|(at, _)| *at <= ms)
            .last()
            .map_or(0, |(_, size)| *size)
    }
}

struct Sim {
    now_ms: i64,
    control_plane_up: bool,
    live: [Option<usize>; APPS],
    truth: Vec<TrueRun>,
    ledger: Ledger,
    /// Exit times recorded by the provisioner while the control plane was down.
    pending_evidence: Vec<(String, i64)>,
    /// Evidence already applied, replayed after every restart to prove it is idempotent.
    applied_evidence: Vec<(String, i64)>,
}

impl Sim {
    fn new(start_ms: i64) -> Self {
        Sim {
            now_ms: start_ms,
            control_plane_up: true,
            live: [None; APPS],
            truth: Vec::new(),
            ledger: Ledger::new(),
            pending_evidence: Vec::new(),
            applied_evidence: Vec::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now_ms;
        match *op {
            Op::Advance { ms } => self.now_ms += ms,
            Op::Start { app, kpu_milli } if self.control_plane_up && self.live[app].is_none() => {
                let run_id = format!("run_{}", self.truth.len());
                self.ledger
                    .open_run(&app_ref(app, &run_id), kpu_milli, instant(now))
                    .expect("open a new run");
                self.live[app] = Some(self.truth.len());
                self.truth.push(TrueRun {
                    run_id,
                    app,
                    changes: vec![(now, kpu_milli)],
                });
            }
            Op::Resize { app, kpu_milli } if self.control_plane_up => {
                if let Some(index) = self.live[app] {
                    let run = &mut self.truth[index];
                    run.changes.push((now, kpu_milli));
                    self.ledger
                        .resize(&run.run_id, kpu_milli, instant(now))
                        .expect("resize a live run");
                }
            }
            Op::Stop { app } if self.control_plane_up => self.cluster_exits(app),
            Op::Fail { app } => self.cluster_exits(app),
            Op::Crash => self.control_plane_up = false,
            Op::Recover => self.recover(),
            // Start, stop and resize need a control plane; while it is down they do not happen.
            Op::Start { .. } | Op::Resize { .. } | Op::Stop { .. } => {}
        }
    }

    fn cluster_exits(&mut self, app: usize) {
        let Some(index) = self.live[app].take() else {
            return;
        };
        let run = &mut self.truth[index];
        run.changes.push((self.now_ms, 0));
        let evidence = (run.run_id.clone(), self.now_ms);
        if self.control_plane_up {
            self.ledger
                .close(&evidence.0, instant(evidence.1))
                .expect("close from live evidence");
            self.applied_evidence.push(evidence);
        } else {
            self.pending_evidence.push(evidence);
        }
    }

    /// A restarted control plane reloads the ledger from its store, then applies the exit times
    /// the provisioner recorded while it was down, and re-observes everything else.
    fn recover(&mut self) {
        if self.control_plane_up {
            return;
        }
        self.control_plane_up = true;
        self.ledger =
            Ledger::from_spans(self.ledger.spans().to_vec()).expect("stored ledger is valid");
        for (run_id, exit_ms) in self.pending_evidence.drain(..) {
            self.ledger
                .close(&run_id, instant(exit_ms))
                .expect("close from recorded evidence");
            self.applied_evidence.push((run_id, exit_ms));
        }
        for (run_id, exit_ms) in &self.applied_evidence {
            self.ledger
                .close(run_id, instant(*exit_ms))
                .expect("replayed evidence is accepted");
        }
        let open: Vec<&str> = self.ledger.open_runs().collect();
        let mut live: Vec<&str> = self
            .live
            .iter()
            .flatten()
            .map(|&i| self.truth[i].run_id.as_str())
            .collect();
        live.sort_unstable();
        assert_eq!(
            open, live,
            "after recovery exactly the live clusters are open"
        );
    }
}

/// Inside the generated histories, which start 2026-10-31T23:50:00.250Z.
const PRICE_CHANGE: &str = "2026-10-31T23:52:30Z";

fn catalog() -> PriceCatalog {
    let version = |from: &str, kpu_hour_micros| PriceVersion {
        effective_from: t(from),
        kpu_hour_micros,
        orchestration_share_milli: 250,
        savepoint_gib_month_micros: 0,
    };
    let book = PriceBook::new(
        "eu-1",
        "EUR",
        vec![
            version("2026-01-01T00:00:00Z", 110_000),
            version(PRICE_CHANGE, 100_000),
        ],
    )
    .expect("price book");
    PriceCatalog::new(vec![book]).expect("catalog")
}

fn check_history(ops: &[Op]) -> Result<(), TestCaseError> {
    // Just before a month, day and hour boundary, so roll-ups cross all three.
    let start_ms = t("2026-10-31T23:50:00.250Z").timestamp_millis();
    let mut sim = Sim::new(start_ms);
    for op in ops {
        sim.apply(op);
    }
    // Billing runs on a control plane that has observed the clusters.
    sim.recover();
    let spans = sim.ledger.spans();
    validate_spans(spans).map_err(|e| TestCaseError::fail(format!("invalid ledger: {e}")))?;

    let as_of = instant(sim.now_ms);
    let first_s = start_ms.div_euclid(1000);
    let as_of_s = sim.now_ms.div_euclid(1000);

    // Every second of every run, against the model: none twice, none missing.
    let mut by_run: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for span in spans {
        by_run.entry(&span.run_id).or_default().push(span.clone());
    }
    let mut expected_total = 0i64;
    let mut expected_by_app = [0i64; APPS];
    // Σ usage × price per second, priced independently of the price book code.
    let price_change_s = t(PRICE_CHANGE).timestamp();
    let mut expected_cost_numerator = 0i128;
    for run in &sim.truth {
        let run_spans = by_run
            .get(run.run_id.as_str())
            .map_or(&[][..], Vec::as_slice);
        for s in first_s..as_of_s {
            let expected = run.size_at(s * 1000 + 999);
            let billed = usage_between(
                run_spans,
                instant(s * 1000),
                instant(s * 1000 + 1000),
                as_of,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(billed, expected, "run {} second {}", run.run_id, s);
            expected_total += expected;
            expected_by_app[run.app] += expected;
            let price = if s < price_change_s { 110_000 } else { 100_000 };
            expected_cost_numerator += i128::from(expected) * price;
        }
    }

    let from = t("2026-10-31T00:00:00Z");
    let to = instant((as_of_s + 86_400) * 1000);
    let billed_total =
        usage_between(spans, from, to, as_of).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(billed_total, expected_total);

    for granularity in Granularity::ALL {
        let series = rollup(spans, from, to, granularity, None, as_of)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let points: i64 = series
            .groups
            .iter()
            .flat_map(|g| &g.points)
            .map(|p| p.milli_kpu_seconds)
            .sum();
        prop_assert_eq!(points, expected_total, "{:?} points", granularity);
        prop_assert_eq!(series.total_milli_kpu_seconds, expected_total);

        let by_app = rollup(
            spans,
            from,
            to,
            granularity,
            Some(GroupBy::Application),
            as_of,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for group in &by_app.groups {
            let app: usize = group.key["app_".len()..].parse().expect("app key");
            let points: i64 = group.points.iter().map(|p| p.milli_kpu_seconds).sum();
            prop_assert_eq!(
                points,
                expected_by_app[app],
                "{:?} app {}",
                granularity,
                app
            );
            prop_assert_eq!(group.total_milli_kpu_seconds, expected_by_app[app]);
        }
        let by_pool = rollup(spans, from, to, granularity, Some(GroupBy::Pool), as_of)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let pool_sum: i64 = by_pool
            .groups
            .iter()
            .map(|g| g.total_milli_kpu_seconds)
            .sum();
        prop_assert_eq!(pool_sum, expected_total);

        let priced = rollup_with_cost(spans, from, to, granularity, None, as_of, &catalog())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(priced.total_milli_kpu_seconds, expected_total);
        // Half up: floor((2n + d) / 2d).
        let den = 3_600_000i128;
        let expected_cost = (2 * expected_cost_numerator + den) / (2 * den);
        prop_assert_eq!(
            priced.total_cost_micros.map(i128::from),
            Some(expected_cost)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn billed_usage_equals_the_model_for_any_history(ops in prop::collection::vec(op(), 1..60)) {
        check_history(&ops)?;
    }
}

#[test]
fn crash_bills_survivors_through_the_outage_and_the_dead_to_their_exit() {
    let ops = [
        Op::Start {
            app: 0,
            kpu_milli: 1250,
        },
        Op::Start {
            app: 1,
            kpu_milli: 2250,
        },
        Op::Advance { ms: 10_000 },
        Op::Crash,
        Op::Advance { ms: 5_500 },
        Op::Fail { app: 1 },
        Op::Start {
            app: 2,
            kpu_milli: 1000,
        },
        Op::Advance { ms: 60_000 },
        Op::Recover,
        Op::Advance { ms: 4_500 },
    ];
    check_history(&ops).expect("model and ledger agree");
    let mut sim = Sim::new(t("2026-10-01T00:00:00Z").timestamp_millis());
    for op in &ops {
        sim.apply(op);
    }
    let as_of = instant(sim.now_ms);
    let spans = sim.ledger.spans();
    // app_0 ran 80 s through the outage; app_1 died 15.5 s in (billed 15 s); app_2 never started.
    let total = usage_between(spans, t("2026-10-01T00:00:00Z"), as_of, as_of).expect("usage");
    assert_eq!(total, 80 * 1250 + 15 * 2250);
    assert_eq!(spans.len(), 2);
}
