//! Reconciliation of the ledger against provisioner evidence (`sluice billing reconcile`).
//!
//! The provisioner reports, per run it knows, whether the cluster is running (and at what size)
//! or has exited (and when). Comparing that with the ledger yields findings. Only one kind is
//! safe to apply automatically — an open span whose cluster has a recorded exit time is closed at
//! that time, which is exactly what a control plane does after an outage. Everything else would
//! need a guess (a cluster gone with no exit time, a size nobody recorded a resize for, a cluster
//! nobody metered), so it is reported for an operator and never "fixed" by inventing times.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ledger::Ledger;

/// What the provisioner observed about one run's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Observed {
    Running { kpu_milli: i64 },
    Exited { exit_at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub run_id: String,
    pub observed: Observed,
}

/// One disagreement between the ledger and the evidence, ordered by run id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// The span is open but the cluster exited: close it at the recorded exit time.
    CloseAtExit {
        run_id: String,
        exit_at: DateTime<Utc>,
    },
    /// The ledger closed the run at a different time than the evidence says.
    ExitMismatch {
        run_id: String,
        ledger_ended_at: DateTime<Utc>,
        observed_exit_at: DateTime<Utc>,
    },
    /// The ledger holds the run closed but the cluster is still running: unmetered time.
    RunningButClosed {
        run_id: String,
        ledger_ended_at: DateTime<Utc>,
    },
    /// The running cluster's size differs from the open span's.
    SizeMismatch {
        run_id: String,
        ledger_kpu_milli: i64,
        observed_kpu_milli: i64,
    },
    /// The span is open but the provisioner knows no such cluster and recorded no exit time.
    MissingEvidence { run_id: String },
    /// The provisioner runs a cluster the ledger never metered.
    Unmetered { run_id: String, observed: Observed },
}

impl Finding {
    pub fn run_id(&self) -> &str {
        match self {
            Finding::CloseAtExit { run_id, .. }
            | Finding::ExitMismatch { run_id, .. }
            | Finding::RunningButClosed { run_id, .. }
            | Finding::SizeMismatch { run_id, .. }
            | Finding::MissingEvidence { run_id }
            | Finding::Unmetered { run_id, .. } => run_id,
        }
    }

    /// Whether applying this finding needs no judgement (see the module documentation).
    pub fn is_automatic(&self) -> bool {
        matches!(self, Finding::CloseAtExit { .. })
    }
}

/// Compares `ledger` with `observations`. Runs closed in the ledger that the provisioner no
/// longer reports are fine (evidence of old clusters expires); an exit reported for a closed run
/// must match the ledger.
pub fn reconcile(ledger: &Ledger, observations: &[Observation]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut observed_runs = std::collections::BTreeSet::new();
    for observation in observations {
        let run_id = observation.run_id.clone();
        observed_runs.insert(observation.run_id.as_str());
        let open = ledger.open_span(&observation.run_id);
        let closed_at = ledger.closed_at(&observation.run_id);
        match (&observation.observed, open, closed_at) {
            (Observed::Running { kpu_milli }, Some(span), _) if span.kpu_milli != *kpu_milli => {
                findings.push(Finding::SizeMismatch {
                    run_id,
                    ledger_kpu_milli: span.kpu_milli,
                    observed_kpu_milli: *kpu_milli,
                });
            }
            (Observed::Running { .. }, Some(_), _) => {}
            (Observed::Running { .. }, None, Some(ledger_ended_at)) => {
                findings.push(Finding::RunningButClosed {
                    run_id,
                    ledger_ended_at,
                });
            }
            (Observed::Exited { exit_at }, Some(_), _) => {
                findings.push(Finding::CloseAtExit {
                    run_id,
                    exit_at: *exit_at,
                });
            }
            (Observed::Exited { exit_at }, None, Some(ledger_ended_at)) => {
                if ledger_ended_at != *exit_at {
                    findings.push(Finding::ExitMismatch {
                        run_id,
                        ledger_ended_at,
                        observed_exit_at: *exit_at,
                    });
                }
            }
            (observed, None, None) => findings.push(Finding::Unmetered {
                run_id,
                observed: observed.clone(),
            }),
        }
    }
    for run_id in ledger.open_runs() {
        if !observed_runs.contains(run_id) {
            findings.push(Finding::MissingEvidence {
                run_id: run_id.to_owned(),
            });
        }
    }
    findings.sort_by(|a, b| a.run_id().cmp(b.run_id()));
    findings
}

/// Applies the automatic findings (closing spans at recorded exit times) and returns the ones
/// left for an operator.
pub fn apply_automatic(ledger: &mut Ledger, findings: Vec<Finding>) -> Result<Vec<Finding>> {
    let mut left = Vec::new();
    for finding in findings {
        match finding {
            Finding::CloseAtExit { run_id, exit_at } => ledger.close(&run_id, exit_at)?,
            other => left.push(other),
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::RunRef;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn open(ledger: &mut Ledger, run_id: &str, kpu_milli: i64) {
        let run = RunRef {
            run_id: run_id.into(),
            org: "org_a".into(),
            pool: "pool_a".into(),
            application: format!("app_{run_id}"),
            region: "eu-1".into(),
        };
        ledger
            .open_run(&run, kpu_milli, t("2026-10-01T00:00:00Z"))
            .unwrap();
    }

    fn obs(run_id: &str, observed: Observed) -> Observation {
        Observation {
            run_id: run_id.into(),
            observed,
        }
    }

    #[test]
    fn findings_cover_every_disagreement_and_only_exits_are_applied() {
        let mut ledger = Ledger::new();
        for (run, size) in [
            ("r1", 1250),
            ("r2", 1250),
            ("r3", 2250),
            ("r4", 1250),
            ("r5", 1250),
        ] {
            open(&mut ledger, run, size);
        }
        ledger.close("r4", t("2026-10-01T01:00:00Z")).unwrap();
        ledger.close("r5", t("2026-10-01T01:00:00Z")).unwrap();
        let exit = t("2026-10-01T00:30:00.250Z");
        let observations = vec![
            obs("r9", Observed::Running { kpu_milli: 1000 }),
            obs("r1", Observed::Running { kpu_milli: 1250 }),
            obs("r2", Observed::Exited { exit_at: exit }),
            obs("r3", Observed::Running { kpu_milli: 3250 }),
            obs(
                "r4",
                Observed::Exited {
                    exit_at: t("2026-10-01T01:00:01Z"),
                },
            ),
            obs("r5", Observed::Running { kpu_milli: 1250 }),
        ];
        let findings = reconcile(&ledger, &observations);
        let ids: Vec<&str> = findings.iter().map(Finding::run_id).collect();
        assert_eq!(ids, vec!["r2", "r3", "r4", "r5", "r9"]);
        assert_eq!(
            findings[0],
            Finding::CloseAtExit {
                run_id: "r2".into(),
                exit_at: exit
            }
        );
        assert!(matches!(
            findings[1],
            Finding::SizeMismatch {
                observed_kpu_milli: 3250,
                ..
            }
        ));
        assert!(matches!(findings[2], Finding::ExitMismatch { .. }));
        assert!(matches!(findings[3], Finding::RunningButClosed { .. }));
        assert!(matches!(findings[4], Finding::Unmetered { .. }));

        let left = apply_automatic(&mut ledger, findings).unwrap();
        assert_eq!(left.len(), 4);
        assert!(left.iter().all(|f| !f.is_automatic()));
        assert_eq!(ledger.closed_at("r2"), Some(exit));
        // The applied exit now agrees with the evidence; r3, no longer reported, is flagged.
        let again = reconcile(&ledger, &observations[1..3]);
        assert_eq!(
            again,
            vec![Finding::MissingEvidence {
                run_id: "r3".into()
            }]
        );
    }

    #[test]
    fn an_open_run_without_evidence_is_reported_not_closed() {
        let mut ledger = Ledger::new();
        open(&mut ledger, "r1", 1250);
        let findings = reconcile(&ledger, &[]);
        assert_eq!(
            findings,
            vec![Finding::MissingEvidence {
                run_id: "r1".into()
            }]
        );
        let left = apply_automatic(&mut ledger, findings).unwrap();
        assert_eq!(left.len(), 1);
        assert!(ledger.open_span("r1").is_some());
    }
}
