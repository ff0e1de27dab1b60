//! `sluice billing …`: the platform operator's billing commands, run against the database
//! directly (as its owner, like `sluice admin bootstrap`), so they work while the API is down.
//!
//! - `rate --org --month [--format json|csv|html] [--as-of]`: an organization's invoice.
//! - `reconcile [--since] [--apply]`: the ledger against provisioner evidence (the `runs`
//!   table the reconciler fills from what the provisioner observed). With `--apply` the only
//!   safe fix is made: an open span whose run has a recorded exit is closed at that exit.
//!   Everything else is printed for a person; nothing is closed at a guessed time.
//! - `export --org --from --to [--format cloudevents|csv]`: usage events (CloudEvents, one JSON
//!   object per line, ids `org/app/run/minute`) or an hourly per-application CSV.
//! - `price-book list` / `price-book add …`: the price books.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use clap::{Subcommand, ValueEnum};
use sluice_api_types::CreatePriceVersion;
use sluice_billing::reconcile::{Finding, apply_automatic, reconcile};
use sluice_billing::{Granularity, GroupBy, Ledger, Month, build_invoice, rollup_with_cost};
use sqlx::PgPool;

use super::invoice::{Format, render};
use super::price_book;

#[derive(Debug, Subcommand)]
pub enum BillingCmd {
    /// Rate an organization's month: its invoice (draft during the month, final after).
    Rate {
        #[arg(long)]
        org: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
        #[arg(long, value_enum, default_value = "json")]
        format: DocFormat,
        /// Rate as of this instant (RFC 3339; default now).
        #[arg(long)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Compare the ledger with the provisioner's evidence; `--apply` closes open spans of runs
    /// that have a recorded exit, at that exit time.
    Reconcile {
        /// Also re-check runs that ended since this instant (default: 7 days ago).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Close the spans (without it: a dry run that only reports).
        #[arg(long)]
        apply: bool,
    },
    /// Export an organization's usage over [from, to).
    Export {
        #[arg(long)]
        org: String,
        /// A whole UTC minute (RFC 3339).
        #[arg(long)]
        from: DateTime<Utc>,
        /// A whole UTC minute, not in the future.
        #[arg(long)]
        to: DateTime<Utc>,
        #[arg(long, value_enum, default_value = "cloudevents")]
        format: ExportFormat,
    },
    /// Price books per region.
    #[command(subcommand, name = "price-book")]
    PriceBook(PriceBookCmd),
}

#[derive(Debug, Subcommand)]
pub enum PriceBookCmd {
    List,
    /// Add a version to a region's book; it may not take effect before the current month.
    Add {
        #[arg(long)]
        region: String,
        #[arg(long)]
        effective_from: DateTime<Utc>,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        kpu_hour_micros: i64,
        #[arg(long, default_value_t = 250)]
        orchestration_share_milli: i64,
        #[arg(long)]
        savepoint_gib_month_micros: i64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DocFormat {
    Json,
    Csv,
    Html,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One CloudEvents JSON object per line.
    Cloudevents,
    /// `bucket_start,group,milli_kpu_seconds,cost` per hour and application.
    Csv,
}

/// Runs one command against the database as its owner; `regions` are the server's
/// configured regions (a price book is only accepted for one of them).
pub async fn run(
    db: &PgPool,
    regions: &[String],
    cmd: BillingCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        BillingCmd::Rate {
            org,
            month,
            format,
            as_of,
        } => {
            let month = Month::parse(&month)?;
            let as_of = as_of.unwrap_or_else(Utc::now);
            let mut conn = db.acquire().await?;
            let catalog = sluice_billing::store::catalog(&mut conn).await?;
            let spans =
                sluice_billing::store::spans(&mut conn, &org, month.start(), month.end(), None)
                    .await?;
            let storage = sluice_billing::store::savepoint_storage(
                &mut conn,
                &org,
                month.start(),
                month.end(),
                None,
            )
            .await?;
            let invoice = build_invoice(&org, month, &spans, &storage, &catalog, as_of)?;
            let format = match format {
                DocFormat::Json => Format::Json,
                DocFormat::Csv => Format::Csv,
                DocFormat::Html => Format::Html,
            };
            let doc = render(&invoice, format).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.write_all(doc.body.as_bytes())?;
            Ok(())
        }
        BillingCmd::Reconcile { since, apply } => {
            let since = since.unwrap_or_else(|| Utc::now() - Duration::days(7));
            let report = reconcile_ledger(db, since, apply).await?;
            for f in &report.left {
                writeln!(out, "{}", serde_json::to_string(f)?)?;
            }
            writeln!(
                out,
                "runs checked: {}; spans closed at recorded exits: {}{}; findings left for an operator: {}",
                report.runs,
                report.closed,
                if apply {
                    ""
                } else {
                    " (dry run: pass --apply)"
                },
                report.left.len()
            )?;
            Ok(())
        }
        BillingCmd::Export {
            org,
            from,
            to,
            format,
        } => export(db, &org, from, to, format, out).await,
        BillingCmd::PriceBook(PriceBookCmd::List) => {
            let books = price_book::list(db)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&books)?)?;
            Ok(())
        }
        BillingCmd::PriceBook(PriceBookCmd::Add {
            region,
            effective_from,
            currency,
            kpu_hour_micros,
            orchestration_share_milli,
            savepoint_gib_month_micros,
        }) => {
            let req = CreatePriceVersion {
                effective_from,
                currency,
                kpu_hour_micros,
                orchestration_share_milli,
                savepoint_gib_month_micros,
            };
            let book = price_book::add_version(db, regions, &region, &req, "cli:sluice-billing")
                .await
                .map_err(|e| match e {
                    super::ServiceError::Invalid(errors) => anyhow::anyhow!(
                        "{}",
                        errors
                            .iter()
                            .map(|f| format!("{}: {}", f.field, f.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    e => anyhow::anyhow!("{e}"),
                })?;
            writeln!(out, "{}", serde_json::to_string_pretty(&book)?)?;
            Ok(())
        }
    }
}

/// What a reconciliation found and did.
#[derive(Debug)]
pub struct ReconcileReport {
    pub runs: usize,
    pub closed: usize,
    pub left: Vec<Finding>,
}

/// Compares the ledger of every run that is open (in the runs table or the ledger) or ended
/// since `since` with the runs' recorded evidence; with `apply`, closes open spans of runs
/// with a recorded exit at that exit, each in its own statement (idempotent: a span closed
/// meanwhile is simply not closed twice).
pub async fn reconcile_ledger(
    db: &PgPool,
    since: DateTime<Utc>,
    apply: bool,
) -> anyhow::Result<ReconcileReport> {
    let mut conn = db.acquire().await?;
    let runs = sluice_billing::store::runs_to_reconcile(&mut conn, since).await?;
    let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let spans = sluice_billing::store::spans_of_runs(&mut conn, &ids).await?;
    let ledger = Ledger::from_spans(spans).context("the stored ledger breaks an invariant")?;
    let findings = reconcile(&ledger, &sluice_billing::store::observations(&runs));
    let mut closed = 0;
    let left = if apply {
        let mut scratch = ledger.clone();
        let left = apply_automatic(&mut scratch, findings.clone())?;
        for f in &findings {
            if let Finding::CloseAtExit { run_id, exit_at } = f
                && sluice_billing::store::close_open_span(&mut conn, run_id, *exit_at, "reconcile")
                    .await?
            {
                closed += 1;
            }
        }
        left
    } else {
        findings
    };
    Ok(ReconcileReport {
        runs: runs.len(),
        closed,
        left,
    })
}

async fn export(
    db: &PgPool,
    org: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: ExportFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut conn = db.acquire().await?;
    match format {
        ExportFormat::Csv => {
            let catalog = sluice_billing::store::catalog(&mut conn).await?;
            let spans = sluice_billing::store::spans(&mut conn, org, from, to, None).await?;
            let series = rollup_with_cost(
                &spans,
                from,
                to,
                Granularity::Hour,
                Some(GroupBy::Application),
                now,
                &catalog,
            )?;
            out.write_all(series.to_csv().as_bytes())?;
        }
        ExportFormat::Cloudevents => {
            // Day by day, so memory stays bounded whatever the range.
            let mut start = from;
            while start < to {
                let end = (start + Duration::days(1)).min(to);
                let spans = sluice_billing::store::spans(&mut conn, org, start, end, None).await?;
                let events = sluice_billing::usage_events(&spans, start, end, now)?;
                out.write_all(sluice_billing::events::to_json_lines(&events)?.as_bytes())?;
                start = end;
            }
        }
    }
    Ok(())
}
