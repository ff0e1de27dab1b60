//! Connector and format options, validated at plan time with Flink's names so
//! a typo is reported where it was written instead of failing at run time.

use std::collections::BTreeMap;

use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::parse::OptionEntry;

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Enum(&'static [&'static str]),
    Duration,
}

struct Spec {
    key: &'static str,
    kind: Kind,
    required: bool,
}

const fn opt(key: &'static str, kind: Kind) -> Spec {
    Spec {
        key,
        kind,
        required: false,
    }
}

const fn req(key: &'static str, kind: Kind) -> Spec {
    Spec {
        key,
        kind,
        required: true,
    }
}

const FORMATS: &[&str] = &["json"];

fn connector_specs(connector: &str) -> Option<Vec<Spec>> {
    Some(match connector {
        "datagen" => vec![
            opt("rows-per-second", Kind::Int),
            opt("number-of-rows", Kind::Int),
        ],
        "filesystem" => vec![
            req("path", Kind::Str),
            req("format", Kind::Enum(FORMATS)),
            opt("source.monitor-interval", Kind::Duration),
            opt("sink.rolling-policy.file-size", Kind::Str),
        ],
        "print" => vec![
            opt("print-identifier", Kind::Str),
            opt("standard-error", Kind::Bool),
        ],
        "blackhole" => vec![],
        "jdbc" => vec![
            req("url", Kind::Str),
            req("table-name", Kind::Str),
            opt("username", Kind::Str),
            opt("password", Kind::Str),
            opt("sink.buffer-flush.max-rows", Kind::Int),
        ],
        "kafka" | "upsert-kafka" => vec![
            req("topic", Kind::Str),
            req("properties.bootstrap.servers", Kind::Str),
            opt("properties.group.id", Kind::Str),
            opt(
                "scan.startup.mode",
                Kind::Enum(&[
                    "earliest-offset",
                    "latest-offset",
                    "group-offsets",
                    "timestamp",
                ]),
            ),
            opt("scan.startup.timestamp-millis", Kind::Int),
            opt(
                "scan.bounded.mode",
                Kind::Enum(&["unbounded", "latest-offset"]),
            ),
            opt("format", Kind::Enum(FORMATS)),
            opt("value.format", Kind::Enum(FORMATS)),
            opt("key.format", Kind::Enum(&["json", "raw"])),
            opt("key.fields", Kind::Str),
            opt("value.fields-include", Kind::Enum(&["ALL", "EXCEPT_KEY"])),
            opt(
                "sink.delivery-guarantee",
                Kind::Enum(&["exactly-once", "at-least-once", "none"]),
            ),
            opt("sink.transactional-id-prefix", Kind::Str),
            opt("sink.commit-marker-topic", Kind::Str),
            opt("scan.watermark.idle-timeout", Kind::Duration),
        ],
        _ => return None,
    })
}

fn format_specs() -> Vec<Spec> {
    vec![
        opt("json.fail-on-missing-field", Kind::Bool),
        opt("json.ignore-parse-errors", Kind::Bool),
        opt(
            "json.timestamp-format.standard",
            Kind::Enum(&["SQL", "ISO-8601"]),
        ),
        opt("value.json.fail-on-missing-field", Kind::Bool),
        opt("value.json.ignore-parse-errors", Kind::Bool),
        opt("key.json.ignore-parse-errors", Kind::Bool),
    ]
}

pub const CONNECTORS: &[&str] = &[
    "datagen",
    "filesystem",
    "print",
    "blackhole",
    "jdbc",
    "kafka",
    "upsert-kafka",
];

/// Parses `10s`, `500 ms`, `1 min`, `2h` into milliseconds.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "ms" | "milli" | "millis" => 1,
        "s" | "sec" | "second" | "seconds" => 1000,
        "min" | "minute" | "minutes" | "m" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        _ => return None,
    };
    Some(n * mult)
}

/// Validates a table's options; `columns` are the physical column names
/// (datagen's `fields.<col>.*` must name one).
pub fn validate(
    table: &str,
    table_span: sqlparser::tokenizer::Span,
    options: &[OptionEntry],
    columns: &[String],
) -> SqlResult<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for o in options {
        if map.insert(o.key.clone(), o.value.clone()).is_some() {
            return Err(SqlError::span(
                o.key_span,
                ErrorCode::Duplicate,
                format!("option '{}' is given twice", o.key),
            ));
        }
    }
    let connector_entry = options
        .iter()
        .find(|o| o.key == "connector")
        .ok_or_else(|| {
            SqlError::span(
                table_span,
                ErrorCode::BadOption,
                format!(
                    "table '{table}' has no 'connector' option; supported: {}",
                    CONNECTORS.join(", ")
                ),
            )
        })?;
    let connector = connector_entry.value.as_str();
    let specs = connector_specs(connector).ok_or_else(|| {
        SqlError::span(
            connector_entry.value_span,
            ErrorCode::BadOption,
            format!(
                "unknown connector '{connector}'; supported: {}",
                CONNECTORS.join(", ")
            ),
        )
    })?;
    let fmt_specs = format_specs();
    for o in options {
        if o.key == "connector" {
            continue;
        }
        if o.key.starts_with("properties.") && connector.contains("kafka") {
            continue;
        }
        if let Some(rest) = o
            .key
            .strip_prefix("fields.")
            .filter(|_| connector == "datagen")
        {
            let (col, prop) = rest.rsplit_once('.').unwrap_or((rest, ""));
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(col)) {
                return Err(SqlError::span(
                    o.key_span,
                    ErrorCode::BadOption,
                    format!("option '{}' names unknown column '{col}'", o.key),
                ));
            }
            let kind = match prop {
                "kind" => Kind::Enum(&["random", "sequence"]),
                "min" | "max" | "start" | "end" => Kind::Str,
                "length" => Kind::Int,
                "max-past" => Kind::Duration,
                _ => {
                    return Err(SqlError::span(
                        o.key_span,
                        ErrorCode::BadOption,
                        format!(
                            "unsupported datagen option '{}': fields.<column>.kind|min|max|start|end|length|max-past",
                            o.key
                        ),
                    ));
                }
            };
            check_value(o, kind)?;
            continue;
        }
        let spec = specs
            .iter()
            .chain(fmt_specs.iter())
            .find(|s| s.key == o.key)
            .ok_or_else(|| {
                let mut names: Vec<&str> = specs.iter().map(|s| s.key).collect();
                if connector == "datagen" {
                    names.push("fields.<column>.*");
                }
                SqlError::span(
                    o.key_span,
                    ErrorCode::BadOption,
                    format!(
                        "unsupported option '{}' for connector '{connector}'; supported: {}",
                        o.key,
                        names.join(", ")
                    ),
                )
            })?;
        check_value(o, spec.kind)?;
    }
    for s in specs.iter().filter(|s| s.required) {
        if !map.contains_key(s.key) {
            return Err(SqlError::span(
                table_span,
                ErrorCode::BadOption,
                format!(
                    "connector '{connector}' of table '{table}' needs option '{}'",
                    s.key
                ),
            ));
        }
    }
    Ok(map)
}

fn check_value(o: &OptionEntry, kind: Kind) -> SqlResult<()> {
    let bad = |what: String| {
        SqlError::span(
            o.value_span,
            ErrorCode::BadOption,
            format!("option '{}': {what}", o.key),
        )
    };
    match kind {
        Kind::Str => Ok(()),
        Kind::Int => o
            .value
            .trim()
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| bad(format!("'{}' is not an integer", o.value))),
        Kind::Bool => match o.value.to_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(bad(format!("'{}' is not true or false", o.value))),
        },
        Kind::Enum(values) => {
            if values.contains(&o.value.as_str()) {
                Ok(())
            } else {
                Err(bad(format!(
                    "'{}' is not one of {}",
                    o.value,
                    values.join(", ")
                )))
            }
        }
        Kind::Duration => parse_duration_ms(&o.value)
            .map(|_| ())
            .ok_or_else(|| bad(format!("'{}' is not a duration like 10s or 500ms", o.value))),
    }
}
