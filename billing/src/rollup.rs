//! Usage roll-ups: per-minute, per-hour or per-day series over `[from, to)` in UTC buckets,
//! optionally grouped by pool, application or region.
//!
//! Buckets are aligned to UTC boundaries (minute, hour, midnight); when `from` or `to` falls inside
//! a bucket, that bucket holds only the usage inside `[from, to)`, so the points of a series always
//! add up to its total. A span is distributed in O(1) plus O(buckets) per group: partial buckets
//! at its ends are added directly, and the whole buckets between them go through a difference
//! array of rates that one prefix sum turns into usage.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};
use crate::ledger::Span;
use crate::price::{
    MILLI_KPU_SECONDS_PER_KPU_HOUR, PriceBook, PriceCatalog, format_micros, round_half_up_div,
};
use crate::time::{at_secs, rfc3339, secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "minute" => Ok(Granularity::Minute),
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            other => Err(BillingError::param(
                "granularity",
                format!("expected one of minute, hour, day; got {other:?}"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Bucket length. UTC has no leap seconds in chrono's timestamps, so every day is 86,400 s.
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// Longest `[from, to)` a usage query may ask for at this granularity: it bounds the size of
    /// a response (at most a few thousand points per group) and the work one request can cause.
    pub fn max_range_seconds(self) -> i64 {
        match self {
            Granularity::Minute => 2 * 86_400,
            Granularity::Hour => 93 * 86_400,
            Granularity::Day => 1_100 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Pool,
    Application,
    Region,
}

impl GroupBy {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "pool" => Ok(GroupBy::Pool),
            "application" => Ok(GroupBy::Application),
            "region" => Ok(GroupBy::Region),
            other => Err(BillingError::param(
                "group_by",
                format!("expected one of pool, application, region; got {other:?}"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Pool => "pool",
            GroupBy::Application => "application",
            GroupBy::Region => "region",
        }
    }

    fn key(self, span: &Span) -> &str {
        match self {
            GroupBy::Pool => &span.pool,
            GroupBy::Application => &span.application,
            GroupBy::Region => &span.region,
        }
    }
}

/// Group key of the single series of an ungrouped query.
pub const TOTAL_KEY: &str = "total";

/// A validated usage query as the API receives it (`from`, `to`, `granularity`, `group_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    pub group_by: Option<GroupBy>,
}

impl UsageQuery {
    /// Validates the raw parameters; every error names the parameter at fault.
    pub fn parse(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: &str,
        group_by: Option<&str>,
    ) -> Result<Self> {
        let granularity = Granularity::parse(granularity)?;
        let group_by = group_by.map(GroupBy::parse).transpose()?;
        check_range(from, to)?;
        let range = secs(to) - secs(from);
        if range > granularity.max_range_seconds() {
            return Err(BillingError::param(
                "to",
                format!(
                    "range of {range} s exceeds the limit of {} s for granularity={}",
                    granularity.max_range_seconds(),
                    granularity.as_str()
                ),
            ));
        }
        Ok(UsageQuery {
            from,
            to,
            granularity,
            group_by,
        })
    }

    /// Runs the query over `spans` (already scoped to one organisation by the caller).
    pub fn run(&self, spans: &[Span], as_of: DateTime<Utc>) -> Result<UsageSeries> {
        rollup(
            spans,
            self.from,
            self.to,
            self.granularity,
            self.group_by,
            as_of,
        )
    }

    /// Runs the query and prices every point with `catalog`.
    pub fn run_with_cost(
        &self,
        spans: &[Span],
        as_of: DateTime<Utc>,
        catalog: &PriceCatalog,
    ) -> Result<UsageSeries> {
        rollup_with_cost(
            spans,
            self.from,
            self.to,
            self.granularity,
            self.group_by,
            as_of,
            catalog,
        )
    }
}

fn check_range(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<()> {
    if secs(from) >= secs(to) {
        return Err(BillingError::param(
            "from",
            format!(
                "must be before `to` ({} is not before {})",
                rfc3339(from),
                rfc3339(to)
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSeries {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    pub group_by: Option<GroupBy>,
    pub total_milli_kpu_seconds: i64,
    /// Present when the series was priced ([`rollup_with_cost`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_micros: Option<i64>,
    /// Sorted by key; an ungrouped query has one group keyed [`TOTAL_KEY`].
    pub groups: Vec<GroupSeries>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSeries {
    pub key: String,
    pub total_milli_kpu_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_micros: Option<i64>,
    pub points: Vec<UsagePoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// Start of the UTC bucket (may precede `from` for the first, partial bucket).
    pub bucket_start: DateTime<Utc>,
    pub milli_kpu_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<i64>,
}

impl UsageSeries {
    /// `bucket_start,group,milli_kpu_seconds[,cost]` rows, groups in key order, buckets in time
    /// order; the cost column (decimal currency units) only when the series was priced.
    pub fn to_csv(&self) -> String {
        let priced = self.total_cost_micros.is_some();
        let mut out = String::from("bucket_start,group,milli_kpu_seconds");
        out.push_str(if priced { ",cost\n" } else { "\n" });
        for group in &self.groups {
            for point in &group.points {
                // Writing to a String cannot fail.
                let _ = write!(
                    out,
                    "{},{},{}",
                    rfc3339(point.bucket_start),
                    crate::render::csv_field(&group.key),
                    point.milli_kpu_seconds
                );
                if let Some(cost) = point.cost_micros {
                    let _ = write!(out, ",{}", format_micros(cost));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// Most cells (groups × buckets) one roll-up may hold. Each cell costs 32 bytes while it is
/// built, so this bounds a roll-up at 1 GiB whatever range and grouping a caller asks for; the
/// API's own limits ([`Granularity::max_range_seconds`]) stay far below it for real tenants.
pub const MAX_ROLLUP_CELLS: usize = 32 * 1024 * 1024;

/// The UTC buckets of one roll-up: `count` buckets of `len` seconds from `base`.
#[derive(Clone, Copy)]
struct Buckets {
    base: i64,
    len: i64,
    count: usize,
}

impl Buckets {
    fn new(from_s: i64, to_s: i64, granularity: Granularity) -> Result<Self> {
        let len = granularity.seconds();
        let base = from_s.div_euclid(len) * len;
        let count =
            usize::try_from((to_s - base + len - 1) / len).map_err(|_| BillingError::Overflow {
                what: "bucket count",
            })?;
        if count > MAX_ROLLUP_CELLS {
            return Err(too_many_cells(count));
        }
        Ok(Buckets { base, len, count })
    }

    // Indices stay below `count + 1` because every `t` passed is inside `[base, to_s]`.
    fn index(&self, t: i64) -> usize {
        ((t - self.base) / self.len) as usize
    }

    fn start(&self, index: usize) -> Result<DateTime<Utc>> {
        at_secs(self.base + index as i64 * self.len)
    }
}

fn too_many_cells(cells: usize) -> BillingError {
    BillingError::param(
        "to",
        format!(
            "the roll-up would hold {cells} group-buckets, more than {MAX_ROLLUP_CELLS}; narrow the range or use a coarser granularity"
        ),
    )
}

/// Checks, before a new group is added, that the roll-up stays within [`MAX_ROLLUP_CELLS`].
fn check_cells(groups: usize, buckets: &Buckets) -> Result<()> {
    let cells = (groups + 1).saturating_mul(buckets.count);
    if cells > MAX_ROLLUP_CELLS {
        Err(too_many_cells(cells))
    } else {
        Ok(())
    }
}

/// Accumulates one group's buckets: `partial[i]` is usage added directly, `rate_delta` is the
/// difference array of milli-KPU rates held through whole buckets.
struct Accumulator {
    partial: Vec<i128>,
    rate_delta: Vec<i128>,
}

impl Accumulator {
    fn new(buckets: &Buckets) -> Self {
        Accumulator {
            partial: vec![0; buckets.count],
            rate_delta: vec![0; buckets.count + 1],
        }
    }

    /// Adds `kpu_milli` held over `[s, e)`, a non-empty stretch inside the roll-up's range.
    fn add(&mut self, buckets: &Buckets, s: i64, e: i64, kpu_milli: i64) {
        let kpu = i128::from(kpu_milli);
        let (first, last) = (buckets.index(s), buckets.index(e));
        if first == last {
            self.partial[first] += kpu * i128::from(e - s);
            return;
        }
        let first_end = buckets.base + (first as i64 + 1) * buckets.len;
        self.partial[first] += kpu * i128::from(first_end - s);
        self.rate_delta[first + 1] += kpu;
        self.rate_delta[last] -= kpu;
        let last_start = buckets.base + last as i64 * buckets.len;
        if e > last_start {
            self.partial[last] += kpu * i128::from(e - last_start);
        }
    }

    /// Usage per bucket.
    fn finish(self, buckets: &Buckets) -> Vec<i128> {
        let mut rate = 0i128;
        self.partial
            .iter()
            .zip(&self.rate_delta)
            .map(|(partial, delta)| {
                rate += delta;
                partial + rate * i128::from(buckets.len)
            })
            .collect()
    }
}

/// Rolls `spans` up into `granularity` buckets over `[from, to)`, open spans counted to `as_of`.
/// Unlike [`UsageQuery::parse`] this applies no range limit: it serves invoices and exports too.
pub fn rollup(
    spans: &[Span],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    group_by: Option<GroupBy>,
    as_of: DateTime<Utc>,
) -> Result<UsageSeries> {
    check_range(from, to)?;
    let (from_s, to_s, as_of_s) = (secs(from), secs(to), secs(as_of));
    let buckets = Buckets::new(from_s, to_s, granularity)?;
    let mut groups: BTreeMap<&str, Accumulator> = BTreeMap::new();
    for span in spans {
        let (start, end) = span.billed_secs(as_of_s);
        let (s, e) = (start.max(from_s), end.min(to_s));
        if s < e {
            let key = group_by.map_or(TOTAL_KEY, |g| g.key(span));
            if !groups.contains_key(key) {
                check_cells(groups.len(), &buckets)?;
            }
            groups
                .entry(key)
                .or_insert_with(|| Accumulator::new(&buckets))
                .add(&buckets, s, e, span.kpu_milli);
        }
    }
    let groups = groups
        .into_iter()
        .map(|(key, acc)| (key, acc.finish(&buckets), None));
    assemble(from, to, granularity, group_by, &buckets, false, groups)
}

/// [`rollup`] with the cost of every point, group and series, priced by `catalog` (a stretch
/// crossing a price change is split at it). Costs here are report figures, each rounded half
/// up once from its exact value, so points need not add up to a group's cost to the micro-unit;
/// the invoice, rounded per line, is what is billed.
pub fn rollup_with_cost(
    spans: &[Span],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    group_by: Option<GroupBy>,
    as_of: DateTime<Utc>,
    catalog: &PriceCatalog,
) -> Result<UsageSeries> {
    check_range(from, to)?;
    let (from_s, to_s, as_of_s) = (secs(from), secs(to), secs(as_of));
    let buckets = Buckets::new(from_s, to_s, granularity)?;
    // (group, region, price version) → usage, so each stretch is priced by its own version.
    // Consecutive spans usually share their region and key (a ledger lists a run's spans
    // together), so the last book and accumulator are remembered to skip the map lookups.
    let mut index: BTreeMap<(&str, &str, usize), usize> = BTreeMap::new();
    let mut accumulators: Vec<((&str, &str, usize), Accumulator)> = Vec::new();
    let mut last_book: Option<(&str, &PriceBook)> = None;
    let mut last_slot: Option<((&str, &str, usize), usize)> = None;
    for span in spans {
        let (start, end) = span.billed_secs(as_of_s);
        let (s, e) = (start.max(from_s), end.min(to_s));
        if s >= e {
            continue;
        }
        let key = group_by.map_or(TOTAL_KEY, |g| g.key(span));
        let region = span.region.as_str();
        let book = match last_book {
            Some((r, book)) if r == region => book,
            _ => {
                let book = catalog.book(region)?;
                last_book = Some((region, book));
                book
            }
        };
        book.for_each_stretch(s, e, |stretch| {
            let priced_key = (key, region, stretch.version_index);
            let slot = match last_slot {
                Some((k, slot)) if k == priced_key => slot,
                _ => {
                    let slot = match index.get(&priced_key) {
                        Some(&slot) => slot,
                        None => {
                            check_cells(accumulators.len(), &buckets)?;
                            accumulators.push((priced_key, Accumulator::new(&buckets)));
                            index.insert(priced_key, accumulators.len() - 1);
                            accumulators.len() - 1
                        }
                    };
                    last_slot = Some((priced_key, slot));
                    slot
                }
            };
            accumulators[slot]
                .1
                .add(&buckets, stretch.from_s, stretch.to_s, span.kpu_milli);
            Ok(())
        })?;
    }
    // Keys are unique, so this order is total and the output deterministic.
    accumulators.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut groups: BTreeMap<&str, (Vec<i128>, Vec<i128>)> = BTreeMap::new();
    for ((key, region, version_index), acc) in accumulators {
        let price = i128::from(catalog.book(region)?.versions[version_index].kpu_hour_micros);
        let (usage, cost) = groups
            .entry(key)
            .or_insert_with(|| (vec![0; buckets.count], vec![0; buckets.count]));
        for (index, part) in acc.finish(&buckets).into_iter().enumerate() {
            usage[index] += part;
            cost[index] += part * price;
        }
    }
    let groups = groups
        .into_iter()
        .map(|(key, (usage, cost))| (key, usage, Some(cost)));
    assemble(from, to, granularity, group_by, &buckets, true, groups)
}

/// Builds the series from per-group usage and, when `priced`, cost numerators (usage × price).
fn assemble<'a>(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    group_by: Option<GroupBy>,
    buckets: &Buckets,
    priced: bool,
    groups: impl Iterator<Item = (&'a str, Vec<i128>, Option<Vec<i128>>)>,
) -> Result<UsageSeries> {
    let mut series = Vec::new();
    // A priced series without usage still has a cost: zero.
    let (mut grand_usage, mut grand_cost) = (0i128, priced.then_some(0i128));
    for (key, usage, cost) in groups {
        let mut points = Vec::with_capacity(buckets.count);
        for (index, value) in usage.iter().enumerate() {
            points.push(UsagePoint {
                bucket_start: buckets.start(index)?,
                milli_kpu_seconds: to_i64(*value)?,
                cost_micros: cost.as_ref().map(|c| cost_micros(c[index])).transpose()?,
            });
        }
        let total: i128 = usage.iter().sum();
        let cost_total: Option<i128> = cost.as_ref().map(|c| c.iter().sum());
        grand_usage += total;
        if let (Some(sum), Some(c)) = (grand_cost.as_mut(), cost_total) {
            *sum += c;
        }
        series.push(GroupSeries {
            key: key.to_owned(),
            total_milli_kpu_seconds: to_i64(total)?,
            total_cost_micros: cost_total.map(cost_micros).transpose()?,
            points,
        });
    }
    Ok(UsageSeries {
        from,
        to,
        granularity,
        group_by,
        total_milli_kpu_seconds: to_i64(grand_usage)?,
        total_cost_micros: grand_cost.map(cost_micros).transpose()?,
        groups: series,
    })
}

fn cost_micros(numerator: i128) -> Result<i64> {
    i64::try_from(round_half_up_div(numerator, MILLI_KPU_SECONDS_PER_KPU_HOUR)).map_err(|_| {
        BillingError::Overflow {
            what: "cost of a usage series",
        }
    })
}

fn to_i64(value: i128) -> Result<i64> {
    i64::try_from(value).map_err(|_| BillingError::Overflow {
        what: "milli-KPU-seconds of a series",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, RunRef, usage_between};

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn run(id: &str, app: &str, pool: &str) -> RunRef {
        RunRef {
            run_id: id.into(),
            org: "org_a".into(),
            pool: pool.into(),
            application: app.into(),
            region: "eu-1".into(),
        }
    }

    #[test]
    fn hourly_points_split_spans_at_bucket_edges() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(
                &run("run_1", "app_a", "pool_a"),
                1000,
                t("2026-10-01T00:30:00Z"),
            )
            .unwrap();
        ledger.close("run_1", t("2026-10-01T02:15:00Z")).unwrap();
        let series = rollup(
            ledger.spans(),
            t("2026-10-01T00:00:00Z"),
            t("2026-10-01T04:00:00Z"),
            Granularity::Hour,
            None,
            t("2026-10-02T00:00:00Z"),
        )
        .unwrap();
        let points: Vec<i64> = series.groups[0]
            .points
            .iter()
            .map(|p| p.milli_kpu_seconds)
            .collect();
        assert_eq!(points, vec![1_800_000, 3_600_000, 900_000, 0]);
        assert_eq!(series.total_milli_kpu_seconds, 6_300_000);
        assert_eq!(series.groups[0].key, TOTAL_KEY);
    }

    #[test]
    fn unaligned_range_keeps_only_usage_inside_it_and_groups_sort_by_key() {
        let mut ledger = Ledger::new();
        ledger
            .open_run(
                &run("run_2", "app_b", "pool_b"),
                2000,
                t("2026-10-01T00:00:00Z"),
            )
            .unwrap();
        ledger
            .open_run(
                &run("run_1", "app_a", "pool_a"),
                1000,
                t("2026-10-01T00:00:00Z"),
            )
            .unwrap();
        let from = t("2026-10-01T00:00:30Z");
        let to = t("2026-10-01T00:02:10Z");
        let as_of = t("2026-10-01T01:00:00Z");
        let series = rollup(
            ledger.spans(),
            from,
            to,
            Granularity::Minute,
            Some(GroupBy::Pool),
            as_of,
        )
        .unwrap();
        let keys: Vec<&str> = series.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, vec!["pool_a", "pool_b"]);
        let a: Vec<i64> = series.groups[0]
            .points
            .iter()
            .map(|p| p.milli_kpu_seconds)
            .collect();
        assert_eq!(a, vec![30_000, 60_000, 10_000]);
        assert_eq!(
            rfc3339(series.groups[0].points[0].bucket_start),
            "2026-10-01T00:00:00Z"
        );
        assert_eq!(
            series.total_milli_kpu_seconds,
            usage_between(ledger.spans(), from, to, as_of).unwrap()
        );
        assert_eq!(
            series.to_csv().lines().nth(4),
            Some("2026-10-01T00:00:00Z,pool_b,60000")
        );
    }

    #[test]
    fn priced_series_split_a_bucket_at_a_price_change() {
        use crate::price::{PriceBook, PriceVersion};
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
                version("2026-10-16T00:20:00Z", 100_000),
            ],
        )
        .unwrap();
        let catalog = PriceCatalog::new(vec![book]).unwrap();
        let mut ledger = Ledger::new();
        ledger
            .open_run(
                &run("run_1", "app_a", "pool_a"),
                1250,
                t("2026-10-16T00:00:00Z"),
            )
            .unwrap();
        ledger.close("run_1", t("2026-10-16T01:30:00Z")).unwrap();
        let query = UsageQuery::parse(
            t("2026-10-16T00:00:00Z"),
            t("2026-10-16T02:00:00Z"),
            "hour",
            Some("application"),
        )
        .unwrap();
        let series = query
            .run_with_cost(ledger.spans(), t("2026-10-17T00:00:00Z"), &catalog)
            .unwrap();
        let costs: Vec<Option<i64>> = series.groups[0]
            .points
            .iter()
            .map(|p| p.cost_micros)
            .collect();
        // 1.25 KPU × (20 min at 0.11 + 40 min at 0.10) = 0.1291666… → 0.129167; then 30 min at
        // 0.10 = 0.062500. The series total is rounded once from the exact sum: 0.1916666… .
        assert_eq!(costs, vec![Some(129_167), Some(62_500)]);
        assert_eq!(series.groups[0].total_cost_micros, Some(191_667));
        assert_eq!(series.total_cost_micros, Some(191_667));
        assert_eq!(series.total_milli_kpu_seconds, 1250 * 5400);
        assert_eq!(
            series.to_csv().lines().nth(1),
            Some("2026-10-16T00:00:00Z,app_a,4500000,0.129167")
        );
        let unpriced = query
            .run(ledger.spans(), t("2026-10-17T00:00:00Z"))
            .unwrap();
        assert_eq!(unpriced.total_cost_micros, None);
        assert_eq!(
            unpriced.total_milli_kpu_seconds,
            series.total_milli_kpu_seconds
        );
    }

    #[test]
    fn query_parameters_are_validated_and_named() {
        let from = t("2026-10-01T00:00:00Z");
        let to = t("2026-10-02T00:00:00Z");
        let err = UsageQuery::parse(to, from, "hour", None).unwrap_err();
        assert_eq!(err.parameter(), Some("from"));
        let err = UsageQuery::parse(from, to, "hour", Some("tenant")).unwrap_err();
        assert_eq!(err.parameter(), Some("group_by"));
        let err = UsageQuery::parse(from, to, "second", None).unwrap_err();
        assert_eq!(err.parameter(), Some("granularity"));
        let err = UsageQuery::parse(from, t("2026-10-03T00:00:01Z"), "minute", None).unwrap_err();
        assert_eq!(err.parameter(), Some("to"));
        let ok = UsageQuery::parse(from, t("2026-10-31T00:00:00Z"), "hour", Some("application"))
            .unwrap();
        assert_eq!(ok.group_by, Some(GroupBy::Application));
    }
}
