//! Bad inputs are rejected with an error naming the parameter, which the API turns into a 4xx
//! with a per-field error.

use sluice_billing::{
    BillingError, Granularity, Month, PriceCatalog, UsageQuery, build_invoice, kpu_milli, rollup,
    usage_between, usage_events,
};

use crate::t;

fn param(result: Result<impl std::fmt::Debug, BillingError>) -> &'static str {
    let err = result.expect_err("input must be rejected");
    let name = err
        .parameter()
        .unwrap_or_else(|| panic!("error names no parameter: {err}"));
    assert!(
        err.to_string().contains(&format!("`{name}`")),
        "message must name the parameter: {err}"
    );
    name
}

#[test]
fn from_after_to_names_from_everywhere() {
    let (early, late) = (t("2026-10-01T00:00:00Z"), t("2026-10-02T00:00:00Z"));
    assert_eq!(param(UsageQuery::parse(late, early, "hour", None)), "from");
    assert_eq!(param(UsageQuery::parse(early, early, "hour", None)), "from");
    assert_eq!(
        param(rollup(&[], late, early, Granularity::Day, None, late)),
        "from"
    );
    assert_eq!(param(usage_between(&[], late, early, late)), "from");
    assert_eq!(param(usage_events(&[], late, early, late)), "from");
}

#[test]
fn unknown_group_by_and_granularity_are_named() {
    let (from, to) = (t("2026-10-01T00:00:00Z"), t("2026-10-02T00:00:00Z"));
    assert_eq!(
        param(UsageQuery::parse(from, to, "hour", Some("org"))),
        "group_by"
    );
    assert_eq!(
        param(UsageQuery::parse(from, to, "hour", Some(""))),
        "group_by"
    );
    assert_eq!(
        param(UsageQuery::parse(from, to, "week", None)),
        "granularity"
    );
    assert_eq!(
        param(UsageQuery::parse(from, to, "Hour", None)),
        "granularity"
    );
}

#[test]
fn ranges_over_the_limit_name_to() {
    let from = t("2026-01-01T00:00:00Z");
    let cases = [
        ("minute", "2026-01-03T00:00:00Z", "2026-01-03T00:00:01Z"),
        ("hour", "2026-04-04T00:00:00Z", "2026-04-04T00:00:01Z"),
        ("day", "2029-01-05T00:00:00Z", "2029-01-06T00:00:00Z"),
    ];
    for (granularity, at_limit, over) in cases {
        let limit = Granularity::parse(granularity)
            .expect("granularity")
            .max_range_seconds();
        assert_eq!(
            t(at_limit).timestamp() - from.timestamp(),
            limit,
            "{granularity} fixture"
        );
        UsageQuery::parse(from, t(at_limit), granularity, None)
            .expect("the limit itself is allowed");
        assert_eq!(
            param(UsageQuery::parse(from, t(over), granularity, None)),
            "to"
        );
    }
    let as_of = t("2026-03-01T00:00:00Z");
    assert_eq!(
        param(usage_events(&[], from, t("2026-02-01T00:01:00Z"), as_of)),
        "to"
    );
    // The unlimited internal roll-up still refuses to allocate without bound.
    let (epoch, far) = (t("1970-01-01T00:00:00Z"), t("2100-01-01T00:00:00Z"));
    assert_eq!(
        param(rollup(&[], epoch, far, Granularity::Minute, None, far)),
        "to"
    );
    rollup(&[], epoch, far, Granularity::Day, None, far).expect("47,482 day buckets are fine");
}

#[test]
fn malformed_month_sizing_and_as_of_are_named() {
    assert_eq!(param(Month::parse("2026-2")), "month");
    assert_eq!(param(kpu_milli(0, 1, 250)), "parallelism");
    assert_eq!(param(kpu_milli(4, 9, 250)), "parallelism_per_kpu");
    let catalog: PriceCatalog = serde_json::from_str(
        r#"[{"region":"eu-1","currency":"EUR","versions":[{"effective_from":"2026-01-01T00:00:00Z",
            "kpu_hour_micros":100000,"savepoint_gib_month_micros":20000}]}]"#,
    )
    .expect("catalog JSON");
    let month = Month::parse("2026-10").expect("month");
    assert_eq!(
        param(build_invoice(
            "org_a",
            month,
            &[],
            &[],
            &catalog,
            t("2026-09-30T23:59:59Z")
        )),
        "as_of"
    );
}

#[test]
fn malformed_catalog_json_is_rejected_with_the_region() {
    let err = serde_json::from_str::<PriceCatalog>(
        r#"[{"region":"eu-1","currency":"EUR","versions":[{"effective_from":"2026-01-01T00:00:00Z",
            "kpu_hour_micros":-1,"savepoint_gib_month_micros":20000}]}]"#,
    )
    .expect_err("negative price");
    assert!(
        err.to_string().contains("eu-1") && err.to_string().contains("kpu_hour_micros"),
        "{err}"
    );
}
