//! Monitoring metrics: what a metric data source declares, and the time arithmetic the store
//! and the API share.
//!
//! A sample is `(resource, metric, time, value)`. Times are kept to the millisecond in both
//! stores, so a watermark read back compares equal to the sample it came from. Besides the
//! samples, every write adds to two rollups, of 5 minutes and of an hour (min, max, sum,
//! count per bucket). Rollup rows are partial sums: a bucket may have several rows (one per
//! write that touched it), and every reader groups them, since min, max, sum and count merge
//! by taking the min, max and sums again. That keeps ingest append-only: no row is ever read
//! back to be updated.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Invalid;

/// A metric a data source collects, for one resource type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricInfo {
    /// The metric's name, unique per resource type: `cpu.utilization`, `CPUUtilization`.
    pub name: String,
    /// The resource type it is collected for; [`ANY_TYPE`] for a source that collects it for
    /// whatever resources its collector maps series to.
    pub resource_type: String,
    /// `Percent`, `Bytes`, `Count`, `Bytes/Second`, ...
    pub unit: String,
    #[serde(default)]
    pub description: String,
}

/// The `resource_type` of a metric declared for every type.
pub const ANY_TYPE: &str = "*";

impl MetricInfo {
    /// Whether the metric is collected for resources of `resource_type`.
    #[must_use]
    pub fn applies_to(&self, resource_type: &str) -> bool {
        self.resource_type == ANY_TYPE || self.resource_type == resource_type
    }
}

/// The longest metric name: names are keys of every sample row.
pub const MAX_NAME: usize = 128;

/// Checks a metric name: 1–128 characters of letters, digits and `._:-`.
///
/// # Errors
/// The name is empty, too long, or has another character.
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Invalid::new(
            field,
            format!("a metric name has 1 to {MAX_NAME} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(Invalid::new(
            field,
            "a metric name has letters, digits and `._:-` only",
        ));
    }
    Ok(())
}

/// How a series' values in one period are summarised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    #[default]
    Avg,
    Max,
    Min,
    Sum,
}

impl Stat {
    /// The value of `agg`, or `None` for an empty one.
    #[must_use]
    pub fn of(self, agg: &Agg) -> Option<f64> {
        if agg.count == 0 {
            return None;
        }
        Some(match self {
            #[allow(clippy::cast_precision_loss)]
            Stat::Avg => agg.sum / agg.count as f64,
            Stat::Max => agg.max,
            Stat::Min => agg.min,
            Stat::Sum => agg.sum,
        })
    }
}

/// Min, max, sum and count of some samples: what a rollup row holds, and what any number of
/// them merge into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agg {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: i64,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            count: 0,
        }
    }
}

impl Agg {
    pub fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Agg) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// Where a range of samples is read from: the raw samples or one of the rollups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Raw,
    FiveMinutes,
    Hour,
}

impl Tier {
    /// The rollups, coarsest first.
    pub const ROLLUPS: [Tier; 2] = [Tier::Hour, Tier::FiveMinutes];

    /// Milliseconds per bucket (1 for raw samples).
    #[must_use]
    pub const fn width_ms(self) -> i64 {
        match self {
            Tier::Raw => 1,
            Tier::FiveMinutes => 300_000,
            Tier::Hour => 3_600_000,
        }
    }

    /// The table it lives in.
    #[must_use]
    pub const fn table(self) -> &'static str {
        match self {
            Tier::Raw => "metric_samples",
            Tier::FiveMinutes => "metric_rollups_5m",
            Tier::Hour => "metric_rollups_1h",
        }
    }

    /// The finest tier whose buckets tile a period of `period_ms`: the coarsest rollup that
    /// divides it, else the raw samples.
    #[must_use]
    pub fn serving(period_ms: i64) -> Tier {
        Tier::ROLLUPS
            .into_iter()
            .find(|t| period_ms % t.width_ms() == 0)
            .unwrap_or(Tier::Raw)
    }

    /// The start of the bucket holding `t` (milliseconds since the epoch).
    #[must_use]
    pub const fn bucket(self, t: i64) -> i64 {
        t.div_euclid(self.width_ms()) * self.width_ms()
    }
}

/// A range of milliseconds `[start, end)` read from one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub tier: Tier,
    pub start: i64,
    pub end: i64,
}

/// Splits `[start, end)` into pieces each read from the coarsest tier that covers it exactly:
/// whole hours from the hourly rollup, the 5-minute buckets at their edges from the 5-minute
/// one, and the rest from the raw samples. A long range reads hardly any raw sample.
#[must_use]
pub fn cover(start: i64, end: i64) -> Vec<Piece> {
    fn split(start: i64, end: i64, tiers: &[Tier], out: &mut Vec<Piece>) {
        if start >= end {
            return;
        }
        let Some((&tier, finer)) = tiers.split_first() else {
            out.push(Piece {
                tier: Tier::Raw,
                start,
                end,
            });
            return;
        };
        let w = tier.width_ms();
        let (a, b) = (
            start.div_euclid(w) * w + if start % w == 0 { 0 } else { w },
            end.div_euclid(w) * w,
        );
        if a >= b {
            split(start, end, finer, out);
            return;
        }
        split(start, a, finer, out);
        out.push(Piece {
            tier,
            start: a,
            end: b,
        });
        split(b, end, finer, out);
    }
    let mut out = Vec::new();
    split(start, end, &Tier::ROLLUPS, &mut out);
    out
}

/// Milliseconds since the epoch of an instant (truncated).
#[must_use]
pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of `ms` milliseconds since the epoch.
#[must_use]
pub fn instant(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A day before `t`, or the earliest instant there is (an `end` given as the year −262143).
fn day_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_sub_signed(chrono::Duration::days(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The periods a default picks from, finest first.
const DEFAULT_PERIODS: [i64; 4] = [60, 300, 3600, 86_400];

/// The most points one series of an answer has.
pub const MAX_POINTS: i64 = 10_080;

/// A checked time window of a series query: whole periods from `start` (rounded down to a
/// period) to `end` (rounded up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Milliseconds since the epoch, a multiple of the period.
    pub start: i64,
    pub end: i64,
    pub period_ms: i64,
}

impl Window {
    /// Checks a query's `start`, `end` and `period` (seconds). `end` defaults to now, `start`
    /// to a day before `end`, `period` to the finest of a minute, 5 minutes, an hour and a day
    /// whose periods fit 1,440 times in the range (one more once rounded out to whole periods).
    ///
    /// # Errors
    /// `end` not after `start`, a period below 1 s or over 31 days, or more than
    /// [`MAX_POINTS`] points; each error names its field.
    pub fn new(
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        period: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Self, Invalid> {
        let end = end.unwrap_or(now);
        let start = start.unwrap_or_else(|| day_before(end));
        if end <= start {
            return Err(Invalid::new("end", "must be after start"));
        }
        let span = millis(end) - millis(start);
        let period = match period {
            Some(p) if !(1..=31 * 86_400).contains(&p) => {
                return Err(Invalid::new(
                    "period",
                    "must be a whole number of seconds from 1 to 2678400 (31 days)",
                ));
            }
            Some(p) => p,
            None => DEFAULT_PERIODS
                .into_iter()
                .find(|p| span / (p * 1000) <= 1440)
                .unwrap_or(86_400),
        };
        let period_ms = period * 1000;
        let start = start.timestamp_millis().div_euclid(period_ms) * period_ms;
        let end_ms = millis(end);
        let end = (end_ms + period_ms - 1).div_euclid(period_ms) * period_ms;
        if (end - start) / period_ms > MAX_POINTS {
            return Err(Invalid::new(
                "period",
                format!(
                    "the range holds more than {MAX_POINTS} periods of {period} s: ask for a longer period or a shorter range"
                ),
            ));
        }
        Ok(Self {
            start,
            end,
            period_ms,
        })
    }

    /// The start of each period, oldest first.
    #[must_use]
    pub fn labels(&self) -> Vec<DateTime<Utc>> {
        (self.start..self.end)
            .step_by(usize::try_from(self.period_ms).unwrap_or(usize::MAX))
            .map(instant)
            .collect()
    }

    /// Periods in the window.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::try_from((self.end - self.start) / self.period_ms).unwrap_or(0)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A range for top-N: `[start, end)`, `end` after `start`, at most a year.
///
/// # Errors
/// `end` not after `start` (naming `end`), or a range over 366 days.
pub fn range(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(i64, i64), Invalid> {
    let end = end.unwrap_or(now);
    let start = start.unwrap_or_else(|| day_before(end));
    if end <= start {
        return Err(Invalid::new("end", "must be after start"));
    }
    if end - start > chrono::Duration::days(366) {
        return Err(Invalid::new("end", "a range spans at most 366 days"));
    }
    Ok((millis(start), millis(end)))
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stat::Avg => "avg",
            Stat::Max => "max",
            Stat::Min => "min",
            Stat::Sum => "sum",
        })
    }
}

impl FromStr for Stat {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avg" => Ok(Stat::Avg),
            "max" => Ok(Stat::Max),
            "min" => Ok(Stat::Min),
            "sum" => Ok(Stat::Sum),
            _ => Err(Invalid::new("stat", "must be avg, max, min or sum")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M5: i64 = 300_000;

    #[test]
    fn a_range_is_read_from_the_coarsest_tier_that_covers_each_part() {
        // 00:02:30 to 03:07:00: raw, 5-minute buckets to 01:00, hours, 5-minute to 03:05, raw.
        let start = 150_000;
        let end = 3 * H + 7 * 60_000;
        let pieces = cover(start, end);
        let tiers: Vec<Tier> = pieces.iter().map(|p| p.tier).collect();
        assert_eq!(
            tiers,
            [
                Tier::Raw,
                Tier::FiveMinutes,
                Tier::Hour,
                Tier::FiveMinutes,
                Tier::Raw
            ]
        );
        assert_eq!(
            pieces[0],
            Piece {
                tier: Tier::Raw,
                start,
                end: M5
            }
        );
        assert_eq!(
            pieces[2],
            Piece {
                tier: Tier::Hour,
                start: H,
                end: 3 * H
            }
        );
        // The pieces tile the range.
        for w in pieces.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(pieces.last().map(|p| p.end), Some(end));
        // Aligned ranges are one piece; a short one is raw only.
        assert_eq!(
            cover(0, 24 * H),
            [Piece {
                tier: Tier::Hour,
                start: 0,
                end: 24 * H
            }]
        );
        assert_eq!(
            cover(1, 1000),
            [Piece {
                tier: Tier::Raw,
                start: 1,
                end: 1000
            }]
        );
    }

    #[test]
    fn a_period_is_served_by_the_coarsest_rollup_dividing_it() {
        assert_eq!(Tier::serving(7200 * 1000), Tier::Hour);
        assert_eq!(Tier::serving(900 * 1000), Tier::FiveMinutes);
        assert_eq!(Tier::serving(60 * 1000), Tier::Raw);
        assert_eq!(Tier::serving(90 * 1000), Tier::Raw);
    }

    #[test]
    fn windows_are_whole_periods_and_bad_input_names_the_field() {
        let now = instant(10 * H + 1234);
        let w = Window::new(
            Some(instant(H + 5)),
            Some(instant(3 * H + 1)),
            Some(3600),
            now,
        )
        .expect("valid");
        assert_eq!((w.start, w.end), (H, 4 * H));
        assert_eq!(w.labels(), [instant(H), instant(2 * H), instant(3 * H)]);
        let d = Window::new(None, None, None, now).expect("defaults");
        assert_eq!(d.period_ms, 60_000, "a day in minutes is 1,440 points");
        assert_eq!(d.len(), 1441, "rounded out to whole minutes");
        let bad = [
            (Window::new(Some(now), Some(now), None, now), "end"),
            // The earliest `end` there is leaves no room for the default start: refused, not a
            // panic.
            (
                Window::new(None, Some(DateTime::<Utc>::MIN_UTC), None, now),
                "end",
            ),
            (Window::new(None, None, Some(0), now), "period"),
            (
                Window::new(Some(instant(0)), Some(now), Some(1), now),
                "period",
            ),
        ];
        for (result, field) in bad {
            assert_eq!(result.expect_err(field).field, field);
        }
    }

    #[test]
    fn aggregates_merge_and_summarise() {
        let mut a = Agg::default();
        assert_eq!(Stat::Avg.of(&a), None);
        for v in [1.0, 5.0] {
            a.add(v);
        }
        let mut b = Agg::default();
        b.add(3.0);
        b.merge(&a);
        assert_eq!(Stat::Avg.of(&b), Some(3.0));
        assert_eq!(Stat::Max.of(&b), Some(5.0));
        assert_eq!(Stat::Min.of(&b), Some(1.0));
        assert_eq!(Stat::Sum.of(&b), Some(9.0));
        assert_eq!("p99".parse::<Stat>().expect_err("unknown").field, "stat");
    }

    #[test]
    fn metric_names_are_checked() {
        assert!(check_name("metric", "AWS.EC2:CPUUtilization").is_ok());
        assert!(check_name("metric", "cpu.utilization").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert_eq!(check_name("metric", bad).expect_err(bad).field, "metric");
        }
    }
}
