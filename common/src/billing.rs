//! Billing vocabulary: calendar months and the month windows billing jobs cover.
//!
//! Cost rows are kept per (service account, charge month): a billing task replaces one month of
//! one account, so months are the unit of a window and of a re-run.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The most months one billing job may cover (ten years): each month is a task per account.
pub const MAX_WINDOW_MONTHS: u32 = 120;

/// A calendar month, written `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, example = "2024-09")]
pub struct Month(NaiveDate);

impl Month {
    /// The month of a date.
    #[must_use]
    pub fn of(date: NaiveDate) -> Self {
        Self(date.with_day(1).unwrap_or(date))
    }

    /// This month, in UTC.
    #[must_use]
    pub fn current() -> Self {
        Self::of(Utc::now().date_naive())
    }

    /// Its first day.
    #[must_use]
    pub const fn first_day(self) -> NaiveDate {
        self.0
    }

    /// The month after.
    #[must_use]
    pub fn next(self) -> Self {
        Self(
            self.0
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(self.0),
        )
    }

    /// The month before.
    #[must_use]
    pub fn previous(self) -> Self {
        Self(
            self.0
                .checked_sub_months(chrono::Months::new(1))
                .unwrap_or(self.0),
        )
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.0.year(), self.0.month())
    }
}

/// Why a month could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a month: write it YYYY-MM, e.g. 2024-09")]
pub struct BadMonth(pub String);

impl FromStr for Month {
    type Err = BadMonth;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMonth(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let (y, m) = (
            y.parse::<i32>().map_err(|_| bad())?,
            m.parse::<u32>().map_err(|_| bad())?,
        );
        NaiveDate::from_ymd_opt(y, m, 1).map(Self).ok_or_else(bad)
    }
}

impl Serialize for Month {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Month {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The months a billing job covers, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Window {
    pub start: Month,
    pub end: Month,
}

/// Why a window was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadWindow {
    #[error("end_month {end} is before start_month {start}")]
    Reversed { start: Month, end: Month },
    #[error("the window covers {0} months; at most {MAX_WINDOW_MONTHS} per job")]
    TooLong(u32),
}

impl Window {
    /// The default window: the previous month and the current one, whose costs may still
    /// change (late charges, credits, the invoice closing).
    #[must_use]
    pub fn recent() -> Self {
        let end = Month::current();
        Self {
            start: end.previous(),
            end,
        }
    }

    /// A window from `start` to `end`.
    ///
    /// # Errors
    /// `end` before `start`, or more than [`MAX_WINDOW_MONTHS`] months.
    pub fn new(start: Month, end: Month) -> Result<Self, BadWindow> {
        if end < start {
            return Err(BadWindow::Reversed { start, end });
        }
        let w = Self { start, end };
        let n = w.months().count();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n > MAX_WINDOW_MONTHS {
            return Err(BadWindow::TooLong(n));
        }
        Ok(w)
    }

    /// Every month of the window, oldest first.
    pub fn months(self) -> impl Iterator<Item = Month> {
        let end = self.end;
        std::iter::successors(Some(self.start), move |m| {
            let n = m.next();
            (n <= end && n != *m).then_some(n)
        })
    }
}

/// One cost record, in FOCUS's terms: what a cost data source reports (built-in plugins build
/// it, an external one writes it as a `cost` line of the plugin protocol). Amounts are exact
/// decimals in `currency`, written as strings in JSON (`"0.00000080000"`): a JSON number would
/// go through a float and lose digits, so one is refused.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostItem {
    /// When the cost was incurred (inclusive, RFC 3339 in JSON); its month must be the task's.
    pub charge_period_start: DateTime<Utc>,
    /// Exclusive.
    #[serde(default)]
    pub charge_period_end: Option<DateTime<Utc>>,
    /// The invoice month, which can differ from the charge month.
    #[serde(default)]
    pub billing_period_start: Option<DateTime<Utc>>,
    /// The cloud that charged it (FOCUS `ProviderName`: AWS, Microsoft, ...).
    pub provider: String,
    pub billing_account_id: String,
    #[serde(default)]
    pub billing_account_name: Option<String>,
    #[serde(default)]
    pub sub_account_id: Option<String>,
    #[serde(default)]
    pub sub_account_name: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub service_category: Option<String>,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
    #[serde(default)]
    pub charge_category: Option<String>,
    /// What the charge was for, finer than the service (`USE1-BoxUsage:t3.micro`): AWS's
    /// usage type, FOCUS's `x_UsageType`.
    #[serde(default)]
    pub usage_type: Option<String>,
    /// ISO 4217.
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub billed_cost: Decimal,
    /// Zero when absent.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub effective_cost: Decimal,
    /// Zero when absent.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub list_cost: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub consumed_quantity: Option<Decimal>,
    #[serde(default)]
    pub consumed_unit: Option<String>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub pricing_quantity: Option<Decimal>,
    #[serde(default)]
    pub pricing_unit: Option<String>,
    #[serde(default)]
    pub tags: Option<Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Month {
        s.parse().expect("month")
    }

    #[test]
    fn months_parse_and_print_as_year_and_month() {
        assert_eq!(m("2024-09").to_string(), "2024-09");
        assert_eq!(
            m("2024-09").first_day(),
            NaiveDate::from_ymd_opt(2024, 9, 1).expect("date")
        );
        for bad in ["2024-9", "2024-13", "24-09", "2024/09", "", "2024-09-01"] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_lists_its_months_across_a_year_end() {
        let w = Window::new(m("2024-11"), m("2025-02")).expect("window");
        let months: Vec<String> = w.months().map(|m| m.to_string()).collect();
        assert_eq!(months, ["2024-11", "2024-12", "2025-01", "2025-02"]);
        assert_eq!(
            Window::new(m("2024-09"), m("2024-09"))
                .expect("one month")
                .months()
                .count(),
            1
        );
    }

    #[test]
    fn reversed_and_overlong_windows_are_refused() {
        assert!(matches!(
            Window::new(m("2024-09"), m("2024-08")),
            Err(BadWindow::Reversed { .. })
        ));
        assert!(matches!(
            Window::new(m("2000-01"), m("2024-01")),
            Err(BadWindow::TooLong(289))
        ));
    }

    #[test]
    fn the_recent_window_is_last_month_and_this_one() {
        let w = Window::recent();
        assert_eq!(w.start.next(), w.end);
        assert_eq!(w.end, Month::current());
    }
}
