//! Monthly budgets (`PUT/GET/DELETE /v1/budget`) and the budget pass the server runs
//! periodically ([`spawn`], [`run_pass`]).
//!
//! Spend is the current month's invoice total so far (its draft, every pool and region), so a
//! budget is compared with exactly what the organization will be billed. Each pass, for every
//! organization with a budget:
//! - every threshold the spend has reached is recorded in `budget_alerts` once per month and,
//!   the first time only, in the audit log (`budget.threshold_reached`), whatever the number
//!   of passes or replicas;
//! - with `hard_stop`, once the spend reaches 100 %, every application whose spec says
//!   `running` gets `desired_state: stopped` through the application service (new version,
//!   stop operation, audit event, all as the organization's `billing-budget-hard-stop` service
//!   account); the reconciler then stops it with a savepoint. This repeats on every pass of
//!   the month, so an application started again is stopped again until the budget is raised
//!   or removed; `budget.hard_stop` is audited once per month.
//!
//! An organization's pass runs in one tenant transaction holding an advisory lock on the
//! organization, so two replicas never interleave their passes of one organization.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_api_types::{
    AppId, BudgetMonth, DesiredState, OrgId, PrincipalRef, PutBudget, Role, UserId,
};
use sluice_billing::store::{AlertKind, StoredBudget};
use sluice_billing::{Budget, Month, PriceCatalog, build_invoice};
use tokio_util::sync::CancellationToken;

use super::usage::billing_error;
use super::{Credential, Ctx, Service, ServiceError, application, policy};
use crate::store;

/// Actor of the audit events the pass itself writes (threshold alerts, the hard stop).
pub const SYSTEM_ACTOR: &str = "system:billing";

/// The organization's spend in `month` as of `as_of`: its invoice total so far.
async fn spend(
    conn: &mut store::Conn,
    org: &str,
    month: Month,
    as_of: DateTime<Utc>,
    catalog: &PriceCatalog,
) -> Result<i64, ServiceError> {
    let spans = sluice_billing::store::spans(conn, org, month.start(), month.end(), None).await?;
    let storage =
        sluice_billing::store::savepoint_storage(conn, org, month.start(), month.end(), None)
            .await?;
    let invoice = build_invoice(org, month, &spans, &storage, catalog, as_of)
        .map_err(|e| billing_error(e, ""))?;
    Ok(invoice.total_micros)
}

async fn view(
    conn: &mut store::Conn,
    stored: StoredBudget,
    now: DateTime<Utc>,
) -> Result<sluice_api_types::Budget, ServiceError> {
    let catalog = sluice_billing::store::catalog(conn).await?;
    let month = Month::containing(now).map_err(|e| billing_error(e, ""))?;
    let org = stored.budget.org.clone();
    let spend_micros = spend(conn, &org, month, now, &catalog).await?;
    let alerts_raised =
        sluice_billing::store::alerted_thresholds(conn, &org, &month.to_string()).await?;
    Ok(sluice_api_types::Budget {
        monthly_limit_micros: stored.budget.monthly_limit_micros,
        thresholds_percent: stored.budget.thresholds_percent.clone(),
        hard_stop: stored.budget.hard_stop,
        currency: catalog.currency().to_owned(),
        current_month: BudgetMonth {
            month: month.to_string(),
            spend_micros,
            thresholds_reached: stored.budget.reached(spend_micros),
            alerts_raised,
        },
        version: stored.version,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

pub async fn get(svc: &Service, ctx: &Ctx) -> Result<sluice_api_types::Budget, ServiceError> {
    ctx.require(policy::READ_BILLING, "read the budget")?;
    let mut conn = ctx.read(svc).await?;
    let stored = sluice_billing::store::budget(&mut conn, ctx.org_id.as_str(), false)
        .await?
        .ok_or_else(|| ServiceError::not_found("budget", &ctx.org_id))?;
    view(&mut conn, stored, Utc::now()).await
}

pub async fn put(
    svc: &Service,
    ctx: &Ctx,
    if_match: Option<i64>,
    req: &PutBudget,
) -> Result<sluice_api_types::Budget, ServiceError> {
    ctx.require(policy::WRITE_BUDGET, "change the budget")?;
    if req.monthly_limit_micros <= 0 {
        return Err(ServiceError::invalid(
            "monthly_limit_micros",
            "out_of_range",
            format!(
                "must be a positive amount in micro-units, got {}",
                req.monthly_limit_micros
            ),
        ));
    }
    let budget = Budget::new(
        ctx.org_id.as_str(),
        req.monthly_limit_micros,
        req.thresholds_percent.clone(),
        req.hard_stop,
    )
    .map_err(|e| billing_error(e, ""))?;
    let mut tx = ctx.begin(svc).await?;
    let stored = sluice_billing::store::put_budget(&mut tx, &budget, if_match).await?;
    ctx.audit(
        &mut tx,
        "budget.update",
        "budget",
        ctx.org_id.as_str(),
        serde_json::json!({
            "monthly_limit_micros": budget.monthly_limit_micros,
            "thresholds_percent": budget.thresholds_percent,
            "hard_stop": budget.hard_stop,
            "version": stored.version,
        }),
    )
    .await?;
    let view = view(&mut tx, stored, Utc::now()).await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn delete(svc: &Service, ctx: &Ctx, if_match: Option<i64>) -> Result<(), ServiceError> {
    ctx.require(policy::WRITE_BUDGET, "delete the budget")?;
    let mut tx = ctx.begin(svc).await?;
    if !sluice_billing::store::delete_budget(&mut tx, ctx.org_id.as_str(), if_match).await? {
        return Err(ServiceError::not_found("budget", &ctx.org_id));
    }
    ctx.audit(
        &mut tx,
        "budget.delete",
        "budget",
        ctx.org_id.as_str(),
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// (organization, threshold) alerts raised for the first time this month.
    pub alerts: Vec<(String, u32)>,
    /// Applications the hard stop set to stopped.
    pub stopped: Vec<(String, AppId)>,
    /// Organizations whose pass failed (logged; the others still ran).
    pub failed: Vec<String>,
}

/// One budget pass over every organization with a budget, as of `now`.
pub async fn run_pass(svc: &Service, now: DateTime<Utc>) -> Result<PassReport, ServiceError> {
    let mut conn = svc.db.acquire().await?;
    let budgets = sluice_billing::store::all_budgets(&mut conn).await?;
    if budgets.is_empty() {
        return Ok(PassReport::default());
    }
    let catalog = sluice_billing::store::catalog(&mut conn).await?;
    drop(conn);
    let month = Month::containing(now).map_err(|e| billing_error(e, ""))?;
    let mut report = PassReport::default();
    for stored in budgets {
        let org = stored.budget.org.clone();
        if let Err(e) = pass_org(svc, &stored.budget, month, now, &catalog, &mut report).await {
            tracing::warn!(org = %org, error = %format!("{e:#}"), "budget pass of an organization failed");
            report.failed.push(org);
        }
    }
    Ok(report)
}

async fn pass_org(
    svc: &Service,
    budget: &Budget,
    month: Month,
    now: DateTime<Utc>,
    catalog: &PriceCatalog,
    report: &mut PassReport,
) -> Result<(), ServiceError> {
    let org: OrgId = budget
        .org
        .parse()
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("budget of {}: {e}", budget.org)))?;
    let mut tx = store::tenant_tx(&svc.tenant_db, &org).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sluice.budget.' || $1))")
        .bind(org.as_str())
        .execute(&mut *tx)
        .await?;
    let spend_micros = spend(&mut tx, org.as_str(), month, now, catalog).await?;
    let month_name = month.to_string();
    for pct in budget.reached(spend_micros) {
        let first = sluice_billing::store::record_alert(
            &mut tx,
            org.as_str(),
            &month_name,
            AlertKind::Threshold(pct),
            spend_micros,
            budget.monthly_limit_micros,
        )
        .await?;
        if first {
            system_audit(
                &mut tx,
                &org,
                "budget.threshold_reached",
                serde_json::json!({
                    "month": month_name,
                    "threshold_percent": pct,
                    "spend_micros": spend_micros,
                    "monthly_limit_micros": budget.monthly_limit_micros,
                }),
            )
            .await?;
            report.alerts.push((org.to_string(), pct));
        }
    }
    if budget.hard_stop_due(spend_micros) {
        let running = store::billing::running_applications(&mut tx, &org).await?;
        let first = sluice_billing::store::record_alert(
            &mut tx,
            org.as_str(),
            &month_name,
            AlertKind::HardStop,
            spend_micros,
            budget.monthly_limit_micros,
        )
        .await?;
        if first {
            system_audit(
                &mut tx,
                &org,
                "budget.hard_stop",
                serde_json::json!({
                    "month": month_name,
                    "spend_micros": spend_micros,
                    "monthly_limit_micros": budget.monthly_limit_micros,
                    "applications": running,
                }),
            )
            .await?;
        }
        if !running.is_empty() {
            let account = store::billing::hard_stop_account(&mut tx, &org).await?;
            let ctx = system_ctx(&org, account);
            for app in running {
                match application::set_desired_state_in(
                    &mut tx,
                    &ctx,
                    &app,
                    None,
                    DesiredState::Stopped,
                )
                .await
                {
                    Ok(_) => report.stopped.push((org.to_string(), app)),
                    // Deleted or stopped since the list was read (the row lock came later).
                    Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The context the hard stop acts in: the organization's hard-stop service account, as
/// org_admin. It is only ever used inside the pass's own transaction; `Ctx::begin` and
/// `Ctx::read` are never called on it (its credential names no user, so they would refuse).
fn system_ctx(org: &OrgId, account: sluice_api_types::ServiceAccountId) -> Ctx {
    Ctx {
        org_id: org.clone(),
        principal: PrincipalRef::ServiceAccount(account),
        role: Role::OrgAdmin,
        api_key_id: None,
        pool_scope: None,
        request_id: None,
        credential: Credential::Login(UserId::new()),
    }
}

async fn system_audit(
    tx: &mut store::Tx,
    org: &OrgId,
    action: &str,
    details: serde_json::Value,
) -> Result<(), ServiceError> {
    store::audit::insert(
        tx,
        &store::audit::NewEvent {
            org_id: org,
            actor: SYSTEM_ACTOR,
            api_key_id: None,
            action,
            resource_type: "budget",
            resource_id: org.as_str(),
            request_id: None,
            details,
        },
    )
    .await?;
    Ok(())
}

/// Runs [`run_pass`] every `every` until `shutdown` is cancelled (the first pass at once).
/// Failures are logged and retried at the next tick.
pub fn spawn(
    svc: Service,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match run_pass(&svc, Utc::now()).await {
                Ok(r) if r.alerts.is_empty() && r.stopped.is_empty() => {}
                Ok(r) => tracing::info!(
                    alerts = r.alerts.len(),
                    stopped = r.stopped.len(),
                    "budget pass raised alerts or stopped applications"
                ),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "budget pass failed"),
            }
        }
    })
}
