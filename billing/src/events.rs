//! Usage events for external billing systems: one CloudEvents 1.0 JSON event per run and UTC
//! minute, with the deterministic id `org/app/run/minute`, so a consumer that receives an event
//! twice (a re-export, a retried delivery) can deduplicate it by id.
//!
//! Only whole minutes that end at or before `as_of` are exported: a later export of a minute
//! still in progress would carry a different figure under the same id.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};
use crate::ledger::Span;
use crate::time::{at_secs, rfc3339, secs};

/// CloudEvents `type` of a usage event.
pub const USAGE_EVENT_TYPE: &str = "io.sluice.billing.usage.v1";

/// Longest `[from, to)` one export may cover (31 days of minutes per run).
pub const MAX_EXPORT_SECONDS: i64 = 31 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: UsageEventData,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEventData {
    pub org: String,
    pub pool: String,
    pub application: String,
    pub run_id: String,
    pub region: String,
    pub minute_start: String,
    pub milli_kpu_seconds: i64,
}

/// The events of every run with usage in the whole minutes of `[from, to)`, ordered by minute,
/// org, application, run. `from` and `to` must be whole UTC minutes and `to` must not be after
/// `as_of`.
pub fn usage_events(
    spans: &[Span],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    as_of: DateTime<Utc>,
) -> Result<Vec<UsageEvent>> {
    let (from_s, to_s) = (secs(from), secs(to));
    for (name, at) in [("from", from), ("to", to)] {
        if at.timestamp() % 60 != 0 || at.timestamp_subsec_nanos() != 0 {
            return Err(BillingError::param(
                name,
                format!("must be a whole UTC minute, got {}", at.to_rfc3339()),
            ));
        }
    }
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
    if to_s - from_s > MAX_EXPORT_SECONDS {
        return Err(BillingError::param(
            "to",
            format!(
                "range of {} s exceeds the export limit of {MAX_EXPORT_SECONDS} s",
                to_s - from_s
            ),
        ));
    }
    if to > as_of {
        return Err(BillingError::param(
            "to",
            format!(
                "{} is after as_of {}: minutes not yet over cannot be exported",
                rfc3339(to),
                rfc3339(as_of)
            ),
        ));
    }
    let as_of_s = secs(as_of);

    // (minute, org, application, run) → (span carrying pool and region, usage)
    let mut minutes: BTreeMap<(i64, &str, &str, &str), (&Span, i64)> = BTreeMap::new();
    for span in spans {
        let (start, end) = span.billed_secs(as_of_s);
        let (s, e) = (start.max(from_s), end.min(to_s));
        let mut minute = s.div_euclid(60) * 60;
        while minute < e {
            let overlap = e.min(minute + 60) - s.max(minute);
            let key = (
                minute,
                span.org.as_str(),
                span.application.as_str(),
                span.run_id.as_str(),
            );
            let slot = minutes.entry(key).or_insert((span, 0));
            slot.1 += span.kpu_milli * overlap;
            minute += 60;
        }
    }

    minutes
        .into_iter()
        .map(|((minute, org, application, run_id), (span, usage))| {
            let minute_at = at_secs(minute)?;
            let minute_start = rfc3339(minute_at);
            let minute_id = minute_at.format("%Y-%m-%dT%H:%MZ");
            Ok(UsageEvent {
                specversion: "1.0".into(),
                id: format!("{org}/{application}/{run_id}/{minute_id}"),
                source: format!("/sluice/orgs/{org}"),
                event_type: USAGE_EVENT_TYPE.into(),
                subject: format!("applications/{application}/runs/{run_id}"),
                time: rfc3339(at_secs(minute + 60)?),
                datacontenttype: "application/json".into(),
                data: UsageEventData {
                    org: org.to_owned(),
                    pool: span.pool.clone(),
                    application: application.to_owned(),
                    run_id: run_id.to_owned(),
                    region: span.region.clone(),
                    minute_start,
                    milli_kpu_seconds: usage,
                },
            })
        })
        .collect()
}

/// Newline-delimited JSON, one event per line: the batch format most ingesters accept.
pub fn to_json_lines(events: &[UsageEvent]) -> Result<String> {
    let mut out = String::new();
    for event in events {
        let line = serde_json::to_string(event).map_err(|e| BillingError::Encode {
            what: "usage event",
            reason: e.to_string(),
        })?;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, RunRef};

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn ledger() -> Ledger {
        let run = RunRef {
            run_id: "run_1".into(),
            org: "org_a".into(),
            pool: "pool_a".into(),
            application: "app_a".into(),
            region: "eu-1".into(),
        };
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run, 1000, t("2026-10-01T00:00:30Z"))
            .unwrap();
        ledger
            .resize("run_1", 2000, t("2026-10-01T00:01:15Z"))
            .unwrap();
        ledger
    }

    #[test]
    fn one_event_per_run_minute_with_deterministic_ids() {
        let as_of = t("2026-10-01T00:05:00Z");
        let from = t("2026-10-01T00:00:00Z");
        let to = t("2026-10-01T00:03:00Z");
        let events = usage_events(ledger().spans(), from, to, as_of).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "org_a/app_a/run_1/2026-10-01T00:00Z",
                "org_a/app_a/run_1/2026-10-01T00:01Z",
                "org_a/app_a/run_1/2026-10-01T00:02Z",
            ]
        );
        let usage: Vec<i64> = events.iter().map(|e| e.data.milli_kpu_seconds).collect();
        // 30 s at 1 KPU; 15 s at 1 KPU + 45 s at 2 KPU (one event across the resize); 60 s at 2.
        assert_eq!(usage, vec![30_000, 105_000, 120_000]);
        let again = usage_events(ledger().spans(), from, to, t("2026-10-01T00:09:00Z")).unwrap();
        assert_eq!(
            to_json_lines(&events).unwrap(),
            to_json_lines(&again).unwrap()
        );
        let first: serde_json::Value =
            serde_json::from_str(to_json_lines(&events).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["specversion"], "1.0");
        assert_eq!(first["type"], USAGE_EVENT_TYPE);
        assert_eq!(first["time"], "2026-10-01T00:01:00Z");
    }

    #[test]
    fn bad_ranges_are_named() {
        let spans = ledger().into_spans();
        let at = t;
        let as_of = at("2026-10-01T01:00:00Z");
        let err = usage_events(
            &spans,
            at("2026-10-01T00:00:10Z"),
            at("2026-10-01T00:01:00Z"),
            as_of,
        );
        assert_eq!(err.unwrap_err().parameter(), Some("from"));
        let err = usage_events(
            &spans,
            at("2026-10-01T00:02:00Z"),
            at("2026-10-01T00:01:00Z"),
            as_of,
        );
        assert_eq!(err.unwrap_err().parameter(), Some("from"));
        let err = usage_events(
            &spans,
            at("2026-10-01T00:00:00Z"),
            at("2026-10-01T02:00:00Z"),
            as_of,
        );
        assert_eq!(err.unwrap_err().parameter(), Some("to"));
        let err = usage_events(
            &spans,
            at("2026-08-01T00:00:00Z"),
            at("2026-10-01T00:01:00Z"),
            as_of,
        );
        assert_eq!(err.unwrap_err().parameter(), Some("to"));
    }
}
