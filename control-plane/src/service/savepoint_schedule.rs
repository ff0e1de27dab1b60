//! `/v1/applications/{id}/savepoint-schedule`: when savepoints are taken (a cron
//! expression in an IANA time zone, or a fixed interval) and what retention keeps;
//! and the due-time arithmetic the scheduler shares with the API.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sluice_api_types::{AppId, FieldError, PutSavepointSchedule, SavepointSchedule};

use super::{Ctx, Service, ServiceError, check_version, policy};
use crate::store;

/// A validated schedule.
#[derive(Debug, Clone)]
pub enum When {
    Cron { cron: Box<croner::Cron>, tz: Tz },
    Interval { seconds: u64 },
}

impl When {
    /// Parses what the store holds (validated when it was written).
    pub fn from_stored(
        cron: Option<&str>,
        timezone: Option<&str>,
        interval_s: Option<i64>,
    ) -> Result<When, String> {
        match (cron, interval_s) {
            (Some(c), None) => {
                let cron: croner::Cron = c.parse().map_err(|e| format!("cron {c:?}: {e}"))?;
                let tz: Tz = timezone
                    .unwrap_or("UTC")
                    .parse()
                    .map_err(|e| format!("timezone: {e}"))?;
                Ok(When::Cron {
                    cron: Box::new(cron),
                    tz,
                })
            }
            (None, Some(s)) if s >= 1 => Ok(When::Interval { seconds: s as u64 }),
            _ => Err("a schedule needs exactly one of cron and interval_s".into()),
        }
    }

    /// The first due time strictly after `now`, for a schedule whose last due time was
    /// `prev` (None for a new schedule). Missed due times between `prev` and `now` are
    /// skipped: after downtime the scheduler takes one savepoint, not one per missed tick.
    pub fn next_after(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            When::Interval { seconds } => {
                let step = chrono::Duration::seconds(i64::try_from(*seconds).ok()?);
                match prev {
                    // Stays on the schedule's grid: prev + k·step, the first one after now.
                    Some(p) if p <= now => {
                        let behind = (now - p).num_milliseconds();
                        let k = behind / step.num_milliseconds() + 1;
                        Some(p + step * i32::try_from(k).ok()?)
                    }
                    Some(p) => Some(p),
                    None => Some(now + step),
                }
            }
            When::Cron { cron, tz } => cron
                .find_next_occurrence(&now.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// Validates a PUT body; every bad field is named.
pub fn validate(req: &PutSavepointSchedule, min_interval_s: u64) -> Result<When, ServiceError> {
    let mut errors = Vec::new();
    let tz: Option<Tz> = match &req.timezone {
        None => Some(Tz::UTC),
        Some(name) => match name.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                errors.push(FieldError::new(
                    "timezone",
                    "unknown_timezone",
                    format!("{name:?} is not an IANA time zone (like Europe/Paris or UTC)"),
                ));
                None
            }
        },
    };
    let when = match (&req.cron, req.interval_s) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(FieldError::new(
                if req.cron.is_some() {
                    "interval_s"
                } else {
                    "cron"
                },
                "one_of",
                "give exactly one of cron and interval_s",
            ));
            None
        }
        (None, Some(s)) => {
            if req.timezone.is_some() {
                errors.push(FieldError::new(
                    "timezone",
                    "not_allowed",
                    "timezone applies to cron schedules only",
                ));
            }
            if s < min_interval_s {
                errors.push(FieldError::new(
                    "interval_s",
                    "below_minimum",
                    format!("interval_s must be at least {min_interval_s} seconds, got {s}"),
                ));
                None
            } else if s > 366 * 24 * 3600 {
                errors.push(FieldError::new(
                    "interval_s",
                    "out_of_range",
                    "interval_s must be at most one year",
                ));
                None
            } else {
                Some(When::Interval { seconds: s })
            }
        }
        (Some(c), None) => match c.parse::<croner::Cron>() {
            Err(e) => {
                errors.push(FieldError::new(
                    "cron",
                    "invalid_cron",
                    format!("{c:?} is not a cron expression: {e}"),
                ));
                None
            }
            Ok(cron) => tz.and_then(|tz| {
                let when = When::Cron {
                    cron: Box::new(cron),
                    tz,
                };
                match too_frequent(&when, min_interval_s) {
                    Some(msg) => {
                        errors.push(FieldError::new("cron", "below_minimum", msg));
                        None
                    }
                    None => Some(when),
                }
            }),
        },
    };
    if let Some(n) = req.retention.max_count
        && !(1..=1000).contains(&n)
    {
        errors.push(FieldError::new(
            "retention.max_count",
            "out_of_range",
            format!("max_count must be between 1 and 1000, got {n}"),
        ));
    }
    if let Some(a) = req.retention.max_age_s
        && (a < 60 || a > i64::MAX as u64 / 1000)
    {
        errors.push(FieldError::new(
            "retention.max_age_s",
            "out_of_range",
            format!("max_age_s must be at least 60 seconds, got {a}"),
        ));
    }
    match when {
        Some(w) if errors.is_empty() => Ok(w),
        _ => Err(ServiceError::Invalid(errors)),
    }
}

/// Why a cron expression fires more often than the minimum interval allows (or never).
fn too_frequent(when: &When, min_interval_s: u64) -> Option<String> {
    let mut t = Utc::now();
    let mut prev: Option<DateTime<Utc>> = None;
    for _ in 0..6 {
        let Some(next) = when.next_after(None, t) else {
            return prev
                .is_none()
                .then(|| "the expression never fires again".to_owned());
        };
        if let Some(p) = prev
            && (next - p).num_seconds() < i64::try_from(min_interval_s).unwrap_or(i64::MAX)
        {
            return Some(format!(
                "the expression fires every {} s; the minimum interval is {min_interval_s} s",
                (next - p).num_seconds()
            ));
        }
        prev = Some(next);
        t = next;
    }
    None
}

async fn load_app(
    conn: &mut store::Conn,
    ctx: &Ctx,
    id: &AppId,
) -> Result<sluice_api_types::Application, ServiceError> {
    store::application::get(conn, &ctx.org_id, id, false)
        .await?
        .filter(|a| ctx.sees_pool(a.spec.compute_pool_id.as_str()))
        .ok_or_else(|| ServiceError::not_found("application", id))
}

pub async fn put(
    svc: &Service,
    ctx: &Ctx,
    app: &AppId,
    if_match: Option<i64>,
    req: PutSavepointSchedule,
) -> Result<SavepointSchedule, ServiceError> {
    ctx.require(policy::WRITE_APPS, "change savepoint schedules")?;
    let mut tx = ctx.begin(svc).await?;
    // Another tenant's application is 404 whatever the body says: looking it up first
    // keeps validation errors from confirming that the id exists.
    load_app(&mut tx, ctx, app).await?;
    let when = validate(&req, svc.cfg.savepoints.min_interval_s)?;
    let current = store::savepoint_schedule::get(&mut tx, &ctx.org_id, app, true).await?;
    if let Some(c) = &current {
        check_version(if_match, c.version)?;
    } else if if_match.is_some() {
        return Err(ServiceError::PreconditionFailed {
            expected: if_match.unwrap_or_default(),
            current: 0,
        });
    }
    let next_run_at = if req.enabled {
        when.next_after(None, Utc::now())
    } else {
        None
    };
    let saved = store::savepoint_schedule::upsert(
        &mut tx,
        &ctx.org_id,
        app,
        &store::savepoint_schedule::Put {
            cron: req.cron.as_deref(),
            timezone: match &when {
                When::Cron { tz, .. } => Some(tz.name()),
                When::Interval { .. } => None,
            },
            interval_s: req.interval_s,
            retention: &req.retention,
            enabled: req.enabled,
            next_run_at,
        },
    )
    .await?;
    ctx.audit(
        &mut tx,
        "savepoint_schedule.put",
        "application",
        app.as_str(),
        serde_json::json!({
            "cron": saved.cron, "timezone": saved.timezone, "interval_s": saved.interval_s,
            "retention": saved.retention, "enabled": saved.enabled, "version": saved.version,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(saved)
}

pub async fn get(svc: &Service, ctx: &Ctx, app: &AppId) -> Result<SavepointSchedule, ServiceError> {
    ctx.require(policy::READ_APPS, "read savepoint schedules")?;
    let mut conn = ctx.read(svc).await?;
    load_app(&mut conn, ctx, app).await?;
    store::savepoint_schedule::get(&mut conn, &ctx.org_id, app, false)
        .await?
        .ok_or_else(|| ServiceError::not_found("savepoint schedule of application", app))
}

/// Removes the schedule and its retention: existing savepoints stay until deleted.
pub async fn delete(
    svc: &Service,
    ctx: &Ctx,
    app: &AppId,
    if_match: Option<i64>,
) -> Result<(), ServiceError> {
    ctx.require(policy::WRITE_APPS, "change savepoint schedules")?;
    let mut tx = ctx.begin(svc).await?;
    load_app(&mut tx, ctx, app).await?;
    let current = store::savepoint_schedule::get(&mut tx, &ctx.org_id, app, true)
        .await?
        .ok_or_else(|| ServiceError::not_found("savepoint schedule of application", app))?;
    check_version(if_match, current.version)?;
    store::savepoint_schedule::delete(&mut tx, &ctx.org_id, app).await?;
    ctx.audit(
        &mut tx,
        "savepoint_schedule.delete",
        "application",
        app.as_str(),
        serde_json::json!({ "version": current.version }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cron: Option<&str>, tz: Option<&str>, interval: Option<u64>) -> PutSavepointSchedule {
        PutSavepointSchedule {
            cron: cron.map(str::to_owned),
            timezone: tz.map(str::to_owned),
            interval_s: interval,
            ..Default::default()
        }
    }

    fn fields(e: ServiceError) -> Vec<(String, String)> {
        match e {
            ServiceError::Invalid(v) => v.into_iter().map(|f| (f.field, f.code)).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = validate(&put(Some("not a cron"), None, None), 60).unwrap_err();
        assert_eq!(fields(e), [("cron".into(), "invalid_cron".into())]);
        let e = validate(&put(Some("0 * * * *"), Some("Mars/Olympus"), None), 60).unwrap_err();
        assert_eq!(fields(e), [("timezone".into(), "unknown_timezone".into())]);
        let e = validate(&put(None, None, Some(59)), 60).unwrap_err();
        assert_eq!(fields(e), [("interval_s".into(), "below_minimum".into())]);
        let e = validate(&put(Some("* * * * * *"), None, None), 60).unwrap_err();
        assert_eq!(fields(e), [("cron".into(), "below_minimum".into())]);
        let e = validate(&put(None, None, None), 60).unwrap_err();
        assert_eq!(fields(e), [("cron".into(), "one_of".into())]);
        assert!(validate(&put(Some("0 3 * * *"), Some("Europe/Paris"), None), 60).is_ok());
        assert!(validate(&put(None, None, Some(60)), 60).is_ok());
    }

    #[test]
    fn missed_interval_runs_collapse_into_one() {
        let w = When::Interval { seconds: 10 };
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // An hour of downtime: the next due time is the first grid point after now, once.
        let now = t0 + chrono::Duration::seconds(3605);
        assert_eq!(
            w.next_after(Some(t0), now),
            Some(t0 + chrono::Duration::seconds(3610))
        );
        assert_eq!(
            w.next_after(Some(t0), t0),
            Some(t0 + chrono::Duration::seconds(10))
        );
    }

    #[test]
    fn cron_is_evaluated_in_its_time_zone() {
        let w = When::from_stored(Some("0 3 * * *"), Some("Europe/Paris"), None).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // 03:00 in Paris in summer (UTC+2) is 01:00 UTC.
        assert_eq!(
            w.next_after(None, now).unwrap().to_rfc3339(),
            "2026-07-02T01:00:00+00:00"
        );
    }
}
