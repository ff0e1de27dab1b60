//! Benchmark: rate and roll up one month of per-second usage for 1,000 applications, then time
//! the 30-day hourly usage query over the same ledger.
//!
//! Run: `dev/cargo run --release -p sluice-billing --example bench` (optionally `-- APPS`).
//!
//! The ledger: every application runs all of October 2026 (31 days, 2,678,400 billed seconds
//! each) and is resized every hour, so each has 744 spans (744,000 in all); a price change on
//! 2026-10-16 splits every line, and every application keeps savepoints. Goals (issue 7): rating
//! and roll-ups < 2 s; the query is the work behind `GET /v1/usage` (< 100 ms p99 with the API).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sluice_billing::{
    Granularity, GroupBy, Ledger, Month, PriceBook, PriceCatalog, PriceVersion, Result, RunRef,
    SavepointStorage, UsageQuery, build_invoice, rollup, usage_between, usage_events,
    validate_spans,
};

fn instant(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| sluice_billing::BillingError::InvalidParameter {
            parameter: "instant",
            reason: format!("{text:?}: {e}"),
        })
}

fn ms(d: Duration) -> String {
    let micros = d.as_micros();
    format!("{}.{:03} ms", micros / 1000, micros % 1000)
}

fn timed<T>(label: &str, f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    let elapsed = started.elapsed();
    println!("{label:<48} {:>14}", ms(elapsed));
    Ok((value, elapsed))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("goal NOT met");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let apps: usize = match std::env::args().nth(1) {
        None => 1000,
        Some(text) => text
            .parse()
            .map_err(|_| sluice_billing::BillingError::InvalidParameter {
                parameter: "APPS",
                reason: format!("expected a count of applications, got {text:?}"),
            })?,
    };
    let month = Month::parse("2026-10")?;
    let (start, end) = (month.start(), month.end());
    let hours = month.seconds() / 3600;

    let version = |from: &str, kpu_hour_micros| -> Result<PriceVersion> {
        Ok(PriceVersion {
            effective_from: instant(from)?,
            kpu_hour_micros,
            orchestration_share_milli: 250,
            savepoint_gib_month_micros: 23_000,
        })
    };
    let catalog = PriceCatalog::new(vec![
        PriceBook::new(
            "eu-west-1",
            "EUR",
            vec![
                version("2026-01-01T00:00:00Z", 110_000)?,
                version("2026-10-16T00:00:00Z", 100_000)?,
            ],
        )?,
        PriceBook::new(
            "us-east-1",
            "EUR",
            vec![version("2026-01-01T00:00:00Z", 130_000)?],
        )?,
    ])?;

    let (spans, storage) = {
        let mut ledger = Ledger::new();
        let mut storage = Vec::with_capacity(apps);
        for app in 0..apps {
            let run = RunRef {
                run_id: format!("run_{app:05}"),
                org: "org_bench".into(),
                pool: format!("pool_{:02}", app % 20),
                application: format!("app_{app:05}"),
                region: ["eu-west-1", "us-east-1"][app % 2].into(),
            };
            // Sizes cycle through 1.25 .. 8.25 KPU, so every hourly resize changes the size.
            let size = |hour: i64| (1 + (hour + app as i64) % 8) * 1000 + 250;
            ledger.open_run(&run, size(0), start)?;
            for hour in 1..hours {
                let at = start + chrono::Duration::hours(hour);
                ledger.resize(&run.run_id, size(hour), at)?;
            }
            ledger.close(&run.run_id, end)?;
            storage.push(SavepointStorage {
                org: run.org.clone(),
                pool: run.pool.clone(),
                application: run.application.clone(),
                region: run.region.clone(),
                bytes: (app as i64 + 1) << 28,
                from: start,
                to: end,
            });
        }
        (ledger.into_spans(), storage)
    };
    println!(
        "{apps} applications, {} spans, {} billed seconds each\n",
        spans.len(),
        month.seconds()
    );

    let as_of = end + chrono::Duration::days(1);
    let started = Instant::now();
    timed("validate ledger", || validate_spans(&spans))?;
    let (total, _) = timed("total usage (milli-KPU-s)", || {
        usage_between(&spans, start, end, as_of)
    })?;
    let (invoice, _) = timed("rate: final invoice", || {
        build_invoice("org_bench", month, &spans, &storage, &catalog, as_of)
    })?;
    let (by_minute, _) = timed("roll up: minute series, whole month, total", || {
        rollup(&spans, start, end, Granularity::Minute, None, as_of)
    })?;
    let (by_hour, _) = timed("roll up: hourly series by application", || {
        rollup(
            &spans,
            start,
            end,
            Granularity::Hour,
            Some(GroupBy::Application),
            as_of,
        )
    })?;
    let (by_day, _) = timed("roll up: daily series by pool", || {
        rollup(
            &spans,
            start,
            end,
            Granularity::Day,
            Some(GroupBy::Pool),
            as_of,
        )
    })?;
    let rate_and_rollup = started.elapsed();
    println!(
        "{:<48} {:>14}\n",
        "rate + roll up (all of the above)",
        ms(rate_and_rollup)
    );

    timed("render invoice JSON + CSV + HTML", || {
        Ok(invoice.to_json()?.len() + invoice.to_csv().len() + invoice.to_html().len())
    })?;
    let hour_start = start + chrono::Duration::days(10);
    let (events, _) = timed("usage events: one hour, all runs", || {
        usage_events(
            &spans,
            hour_start,
            hour_start + chrono::Duration::hours(1),
            as_of,
        )
    })?;

    let consistent = [
        by_minute.total_milli_kpu_seconds,
        by_hour.total_milli_kpu_seconds,
        by_day.total_milli_kpu_seconds,
    ]
    .iter()
    .all(|&t| t == total);
    println!(
        "\ntotal {total} milli-KPU-s; roll-ups agree: {consistent}; invoice {} lines, total {} {}; {} events",
        invoice.lines.len(),
        invoice.total,
        invoice.currency,
        events.len()
    );

    // The usage API: 30-day hourly series of usage and cost for the whole organisation,
    // alternately ungrouped and per pool.
    let query_from = start;
    let query_to = start + chrono::Duration::days(30);
    let mut samples = Vec::new();
    for round in 0..60 {
        let group_by = if round % 2 == 0 { None } else { Some("pool") };
        let query = UsageQuery::parse(query_from, query_to, "hour", group_by)?;
        let started = Instant::now();
        let series = query.run_with_cost(&spans, as_of, &catalog)?;
        samples.push(started.elapsed());
        if series.groups.first().map(|g| g.points.len()) != Some(720) {
            println!("30-day hourly series does not have 720 points");
            return Ok(false);
        }
    }
    samples.sort_unstable();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99).div_ceil(100) - 1];
    println!(
        "30-day hourly usage+cost query over {} spans: p50 {}, p99 {}, max {}",
        spans.len(),
        ms(p50),
        ms(p99),
        ms(samples[samples.len() - 1])
    );

    let met =
        consistent && rate_and_rollup < Duration::from_secs(2) && p99 < Duration::from_millis(100);
    println!(
        "goals: rate + roll up < 2 s, query p99 < 100 ms: {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(met)
}
