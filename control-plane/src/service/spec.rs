//! The application spec: validation (including the SQL), the diff between two
//! versions, and the KPUs a spec holds.

use std::collections::BTreeMap;

use sluice_api_types::{ApplicationSpec, FieldError, RestoreMode, SpecChange};

/// The JobManager's orchestration share (DESIGN §3 default), in milli-KPU.
pub const ORCHESTRATION_KPU_MILLI: u64 = 250;

/// KPUs the spec holds when running: `ceil(P / K)` task KPUs plus the orchestration share.
pub fn kpu_milli(spec: &ApplicationSpec) -> u64 {
    let p = u64::from(spec.parallelism);
    let k = u64::from(spec.parallelism_per_kpu.max(1));
    p.div_ceil(k) * 1000 + ORCHESTRATION_KPU_MILLI
}

/// Engine options an application may set, and the kind of value each takes.
const CONFIG_KEYS: &[(&str, ValueKind)] = &[
    ("pipeline.max-parallelism", ValueKind::Int(1, 32_768)),
    ("table.exec.state.ttl", ValueKind::Duration),
    ("table.exec.source.idle-timeout", ValueKind::Duration),
    ("table.exec.mini-batch.enabled", ValueKind::Bool),
    ("table.exec.mini-batch.allow-latency", ValueKind::Duration),
    ("table.exec.mini-batch.size", ValueKind::Int(1, 1_000_000)),
    ("execution.checkpointing.timeout", ValueKind::Duration),
    (
        "execution.checkpointing.tolerable-failed-checkpoints",
        ValueKind::Int(0, 1000),
    ),
    (
        "restart-strategy.fixed-delay.attempts",
        ValueKind::Int(0, 1_000_000),
    ),
    ("restart-strategy.fixed-delay.delay", ValueKind::Duration),
    ("state.checkpoints.num-retained", ValueKind::Int(1, 100)),
];

#[derive(Clone, Copy)]
enum ValueKind {
    Int(i64, i64),
    Bool,
    /// `<n>` (milliseconds) or `<n> <unit>` with unit ms, s, min, h, d.
    Duration,
}

fn check_config(config: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for (k, v) in config {
        let field = format!("config.{k}");
        let Some((_, kind)) = CONFIG_KEYS.iter().find(|(name, _)| name == k) else {
            let known: Vec<&str> = CONFIG_KEYS.iter().map(|(n, _)| *n).collect();
            errors.push(FieldError::new(
                field,
                "unknown_option",
                format!("unknown engine option; accepted: {}", known.join(", ")),
            ));
            continue;
        };
        let ok = match kind {
            ValueKind::Int(lo, hi) => v
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| (*lo..=*hi).contains(&n)),
            ValueKind::Bool => matches!(v.trim(), "true" | "false"),
            ValueKind::Duration => duration_ms(v).is_some(),
        };
        if !ok {
            let expected = match kind {
                ValueKind::Int(lo, hi) => format!("an integer in {lo}..={hi}"),
                ValueKind::Bool => "true or false".into(),
                ValueKind::Duration => "a duration such as '500 ms', '30 s', '5 min', '1 h'".into(),
            };
            errors.push(FieldError::new(
                field,
                "invalid_value",
                format!("'{v}' is not {expected}"),
            ));
        }
    }
}

fn duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn range(field: &str, v: u64, lo: u64, hi: u64, errors: &mut Vec<FieldError>) {
    if !(lo..=hi).contains(&v) {
        errors.push(FieldError::new(
            field,
            "out_of_range",
            format!("{field} must be between {lo} and {hi}, got {v}"),
        ));
    }
}

/// Every rule of a spec except those that need the database (the pool exists).
pub fn validate(spec: &ApplicationSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name_ok = (1..=100).contains(&spec.name.len())
        && spec.name.starts_with(|c: char| c.is_ascii_lowercase())
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            "name must be 1..=100 characters of a-z, 0-9 and '-', starting with a letter",
        ));
    }
    range("parallelism", spec.parallelism.into(), 1, 1024, &mut errors);
    range(
        "parallelism_per_kpu",
        spec.parallelism_per_kpu.into(),
        1,
        8,
        &mut errors,
    );
    range(
        "checkpoint.interval_ms",
        spec.checkpoint.interval_ms,
        1000,
        86_400_000,
        &mut errors,
    );
    range(
        "checkpoint.min_pause_ms",
        spec.checkpoint.min_pause_ms,
        0,
        spec.checkpoint.interval_ms,
        &mut errors,
    );
    match (spec.restore.mode, &spec.restore.savepoint_id) {
        (RestoreMode::Savepoint, None) => errors.push(FieldError::new(
            "restore.savepoint_id",
            "required",
            "restore.savepoint_id is required when restore.mode is savepoint",
        )),
        (RestoreMode::Latest | RestoreMode::None, Some(_)) => errors.push(FieldError::new(
            "restore.savepoint_id",
            "not_allowed",
            "restore.savepoint_id is only allowed when restore.mode is savepoint",
        )),
        _ => {}
    }
    check_config(&spec.config, &mut errors);
    if spec.sql.len() > 256 * 1024 {
        errors.push(FieldError::new(
            "sql",
            "too_long",
            "sql must be at most 256 KiB",
        ));
    } else if let Err(sql_errors) = check_sql(&spec.sql) {
        errors.extend(sql_errors);
    }
    errors
}

/// Validates the job's SQL with the engine's planner (`sluice_sql::check`), so
/// what the API accepts is what the engine can run; errors carry the line and
/// column inside `sql` and the planner's stable code (`sql_syntax_error`,
/// `sql_unknown_table`, `sql_bad_option`, …).
pub fn check_sql(sql: &str) -> Result<(), Vec<FieldError>> {
    sluice_sql::check(sql).map(|_| ()).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| FieldError {
                field: "sql".into(),
                code: format!("sql_{}", e.code.as_str()),
                message: e.message,
                line: u32::try_from(e.line).ok().filter(|l| *l > 0),
                column: u32::try_from(e.column).ok().filter(|c| *c > 0),
            })
            .collect()
    })
}

/// Changed leaves between two specs, as dotted paths in a stable order.
pub fn diff(old: &ApplicationSpec, new: &ApplicationSpec) -> Vec<SpecChange> {
    let mut out = Vec::new();
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    diff_values("", Some(&a), Some(&b), &mut out);
    out
}

fn diff_values(
    path: &str,
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    out: &mut Vec<SpecChange>,
) {
    use serde_json::Value::Object;
    match (a, b) {
        (Some(Object(x)), Some(Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(&p, x.get(k), y.get(k), out);
            }
        }
        (x, y) if x != y => out.push(SpecChange {
            field: path.to_owned(),
            from: x.cloned(),
            to: y.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "CREATE TABLE clicks (\n  user_id BIGINT,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'kafka', 'topic' = 'clicks', 'properties.bootstrap.servers' = 'k:9092', 'format' = 'json');\n";

    #[test]
    fn a_flink_job_passes_and_errors_carry_line_column_and_the_planners_code() {
        let ok = format!(
            "{SRC}CREATE TABLE out (user_id BIGINT, n BIGINT) WITH ('connector' = 'print');\nINSERT INTO out SELECT user_id, COUNT(*) FROM clicks GROUP BY user_id;"
        );
        check_sql(&ok).unwrap();
        let bad = format!(
            "{SRC}CREATE TABLE out (user_id BIGINT) WITH ('connector' = 'print');\nINSERT INTO out SELECT user_id FROM nowhere;"
        );
        let e = check_sql(&bad).unwrap_err();
        assert_eq!(e[0].field, "sql");
        assert_eq!(e[0].code, "sql_unknown_table", "{e:?}");
        assert_eq!(e[0].line, Some(7), "{e:?}");
        assert!(e[0].column.is_some(), "{e:?}");
        assert!(check_sql("   ").is_err());
    }

    #[test]
    fn kpus_round_up_per_task_manager_and_add_the_orchestration_share() {
        let spec: ApplicationSpec = serde_json::from_value(serde_json::json!({
            "name": "a", "compute_pool_id": "pool_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b",
            "sql": "CREATE TABLE s (a INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO t SELECT a FROM s;",
            "parallelism": 5, "parallelism_per_kpu": 2,
            "checkpoint": {"interval_ms": 1000, "min_pause_ms": 0, "mode": "exactly_once"},
            "state_backend": "memory", "desired_state": "stopped",
            "restore": {"mode": "latest", "savepoint_id": null, "allow_non_restored_state": false},
            "upgrade_mode": "savepoint", "config": {}, "restart_nonce": 0
        }))
        .unwrap();
        assert_eq!(kpu_milli(&spec), 3250);
        let mut other = spec.clone();
        other.parallelism = 6;
        other
            .config
            .insert("pipeline.max-parallelism".into(), "256".into());
        let d = diff(&spec, &other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].field, "config.pipeline.max-parallelism");
        assert_eq!(d[0].from, None);
        assert_eq!(d[1].field, "parallelism");
        assert!(validate(&other).is_empty(), "{:?}", validate(&other));
        other
            .config
            .insert("table.exec.state.ttl".into(), "forever".into());
        other.parallelism_per_kpu = 9;
        let errs = validate(&other);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["parallelism_per_kpu", "config.table.exec.state.ttl"]
        );
    }
}
