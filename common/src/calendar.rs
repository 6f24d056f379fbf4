//! When a schedule fires: at given hours of the day (0–23) in an IANA timezone.
//!
//! Daylight saving time:
//! - an hour that does not exist (clocks jump forward over it) fires at the first instant after
//!   the jump (02:00 in New York on a spring-forward day fires at 03:00 EDT);
//! - an hour that occurs twice (clocks fall back) fires once, at its first occurrence.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::model::Invalid;

/// A schedule's timezone and hours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
    hours: BTreeSet<u8>,
}

impl Calendar {
    /// Checks a timezone name and hours; errors name the fields `timezone` and `hours`.
    ///
    /// # Errors
    /// An unknown timezone, no hours, or an hour outside 0–23.
    pub fn new(timezone: &str, hours: &[i64]) -> Result<Self, Vec<Invalid>> {
        let mut errors = Vec::new();
        let tz = timezone
            .parse::<Tz>()
            .map_err(|_| {
                errors.push(Invalid::new(
                    "timezone",
                    format!("`{timezone}` is not an IANA timezone such as Asia/Seoul or UTC"),
                ));
            })
            .ok();
        if hours.is_empty() {
            errors.push(Invalid::new("hours", "at least one hour (0–23) is needed"));
        }
        let mut set = BTreeSet::new();
        for h in hours {
            match u8::try_from(*h) {
                Ok(h) if h < 24 => {
                    set.insert(h);
                }
                _ => errors.push(Invalid::new(
                    "hours",
                    format!("{h} is not an hour of the day (0–23)"),
                )),
            }
        }
        match tz {
            Some(tz) if errors.is_empty() => Ok(Self { tz, hours: set }),
            _ => Err(errors),
        }
    }

    /// The timezone's IANA name.
    #[must_use]
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The hours, ascending.
    #[must_use]
    pub fn hours(&self) -> Vec<u8> {
        self.hours.iter().copied().collect()
    }

    /// The instant `hour:00` of local day `date` fires at, following the DST rules above.
    fn instant(&self, date: NaiveDate, hour: u8) -> Option<DateTime<Utc>> {
        let local: NaiveDateTime = date.and_hms_opt(u32::from(hour), 0, 0)?;
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // In the gap: read the local time with the offset in force before the jump,
                // which lands on the first instant after it.
                let before = self
                    .tz
                    .offset_from_local_datetime(&(local - Duration::hours(3)))
                    .earliest()?;
                let utc = local - chrono::Offset::fix(&before).local_minus_utc_duration();
                Some(Utc.from_utc_datetime(&utc))
            }
        }
    }

    /// The first fire strictly after `t`.
    #[must_use]
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_timezone(&self.tz).date_naive() - Duration::days(1);
        // Two days cover any hour set; a few more cover timezones whose rules skip a day.
        for day in 0..5 {
            let date = start + Duration::days(day);
            let mut best: Option<DateTime<Utc>> = None;
            for &h in &self.hours {
                if let Some(i) = self.instant(date, h)
                    && i > t
                {
                    best = Some(best.map_or(i, |b| b.min(i)));
                }
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// The next `n` fires after `t`.
    #[must_use]
    pub fn upcoming(&self, mut t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(next) = self.next_after(t) else {
                break;
            };
            out.push(next);
            t = next;
        }
        out
    }
}

/// `local_minus_utc` as a duration.
trait OffsetDuration {
    fn local_minus_utc_duration(&self) -> Duration;
}

impl OffsetDuration for chrono::FixedOffset {
    fn local_minus_utc_duration(&self) -> Duration {
        Duration::seconds(i64::from(self.local_minus_utc()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn seoul_fires_at_the_right_utc_instants() {
        let c = Calendar::new("Asia/Seoul", &[0, 6, 12, 18]).expect("calendar");
        let got = c.upcoming(utc("2026-11-23T00:00:00Z"), 6);
        let want: Vec<_> = [
            "2026-11-23T03:00:00Z",
            "2026-11-23T09:00:00Z",
            "2026-11-23T15:00:00Z",
            "2026-11-23T21:00:00Z",
            "2026-11-24T03:00:00Z",
            "2026-11-24T09:00:00Z",
        ]
        .iter()
        .map(|s| utc(s))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn new_york_across_both_dst_changes() {
        let c = Calendar::new("America/New_York", &[1, 2, 3]).expect("calendar");
        // 2026-03-08: 02:00 does not exist (EST → EDT): it fires at 03:00 EDT, with 03:00,
        // so that instant fires once.
        let spring = c.upcoming(utc("2026-03-08T00:00:00Z"), 3);
        assert_eq!(
            spring,
            [
                utc("2026-03-08T06:00:00Z"), // 01:00 EST
                utc("2026-03-08T07:00:00Z"), // 02:00 → 03:00 EDT
                utc("2026-03-09T05:00:00Z"), // next day 01:00 EDT
            ]
        );
        // 2026-11-01: 01:00 occurs twice (EDT, then EST): it fires once, at the first.
        let fall = c.upcoming(utc("2026-11-01T00:00:00Z"), 3);
        assert_eq!(
            fall,
            [
                utc("2026-11-01T05:00:00Z"), // 01:00 EDT
                utc("2026-11-01T07:00:00Z"), // 02:00 EST
                utc("2026-11-01T08:00:00Z"), // 03:00 EST
            ]
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = Calendar::new("Mars/Olympus", &[]).expect_err("bad");
        let fields: Vec<_> = e.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["timezone", "hours"]);
        let e = Calendar::new("UTC", &[3, 24, -1]).expect_err("bad");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].field, "hours");
        let c = Calendar::new("UTC", &[5, 5, 1]).expect("dupes merge");
        assert_eq!(c.hours(), [1, 5]);
    }
}
