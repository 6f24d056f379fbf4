//! When a schedule fires, in an IANA timezone: at given hours of the day (0–23), or every N
//! minutes (1–1440) from local midnight.
//!
//! Both kinds name local wall times of each day:
//! - hours: `h:00` for each of the hours;
//! - every N minutes: 00:00, then every N minutes up to, not including, the next midnight, like
//!   cron's `*/N` spread over the whole day (N = 90: 00:00, 01:30, 03:00, ...). Each day starts
//!   again at midnight, so when N does not divide 1440 the day's last gap is shorter (N = 7:
//!   ..., 23:48, 23:55, then 00:00).
//!
//! A wall time fires at the first instant the local clock reads it or later. Across daylight
//! saving time that means:
//! - a time that does not exist (clocks jump forward over it) fires at the first instant after
//!   the jump: in New York on a spring-forward day 02:00, 02:05, ... 02:55 all come to 03:00 EDT;
//! - a time that occurs twice (clocks fall back) fires once, at its first occurrence: the
//!   repeated hour fires nothing of its own.
//!
//! Wall times that come to the same instant fire once, so a schedule's fires are strictly
//! increasing and never repeat, whichever kind it is.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Duration, FixedOffset, LocalResult, NaiveDateTime, NaiveTime, Offset, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

use crate::model::Invalid;

/// Minutes in a day: the longest interval, which fires once a day at midnight.
const MINUTES_PER_DAY: u16 = 1440;

/// A schedule's timezone and the wall times it fires at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
    when: When,
}

/// The wall times of a day; private so that only the checking constructors make one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum When {
    /// `h:00` for each hour, 0–23; never empty.
    Hours(BTreeSet<u8>),
    /// Local midnight, then every this many minutes, 1–1440, until the next midnight.
    EveryMinutes(u16),
}

impl Calendar {
    /// An hours calendar; errors name the fields `timezone` and `hours`.
    ///
    /// # Errors
    /// An unknown timezone, no hours, or an hour outside 0–23.
    pub fn new(timezone: &str, hours: &[i64]) -> Result<Self, Vec<Invalid>> {
        Self::parse(timezone, Some(hours), None)
    }

    /// An interval calendar; errors name the fields `timezone` and `every_minutes`.
    ///
    /// # Errors
    /// An unknown timezone, or minutes outside 1–1440.
    pub fn every(timezone: &str, minutes: i64) -> Result<Self, Vec<Invalid>> {
        Self::parse(timezone, None, Some(minutes))
    }

    /// A calendar from a request's or a row's fields: exactly one of `hours` and
    /// `every_minutes`. Errors name the fields `timezone`, `hours` and `every_minutes`.
    ///
    /// # Errors
    /// An unknown timezone; both kinds or neither; a bad hour or interval.
    pub fn parse(
        timezone: &str,
        hours: Option<&[i64]>,
        every_minutes: Option<i64>,
    ) -> Result<Self, Vec<Invalid>> {
        let mut errors = Vec::new();
        let tz = parse_timezone(timezone).map_err(|e| errors.push(e)).ok();
        let when = match (hours, every_minutes) {
            (Some(hours), None) => When::hours(hours),
            (None, Some(minutes)) => When::every_minutes(minutes).map_err(|e| vec![e]),
            (Some(_), Some(_)) => Err(vec![Invalid::new(
                "every_minutes",
                "cannot be given with `hours`: a schedule fires at hours of the day or every \
                 N minutes, not both",
            )]),
            // Named `hours`, as when it was the only kind and required.
            (None, None) => Err(vec![Invalid::new(
                "hours",
                "is required unless `every_minutes` is given",
            )]),
        }
        .map_err(|e| errors.extend(e))
        .ok();
        match (tz, when) {
            (Some(tz), Some(when)) if errors.is_empty() => Ok(Self { tz, when }),
            _ => Err(errors),
        }
    }

    /// This calendar with some of its fields changed, as a `PATCH` asks: `hours` or
    /// `every_minutes` replaces the kind and its times (so it switches kinds), the timezone
    /// stays unless given.
    ///
    /// # Errors
    /// As [`Calendar::parse`]: an unknown timezone, both kinds, a bad hour or interval.
    pub fn changed(
        &self,
        timezone: Option<&str>,
        hours: Option<&[i64]>,
        every_minutes: Option<i64>,
    ) -> Result<Self, Vec<Invalid>> {
        let timezone = timezone.unwrap_or_else(|| self.timezone());
        if hours.is_none() && every_minutes.is_none() {
            let tz = parse_timezone(timezone).map_err(|e| vec![e])?;
            return Ok(Self {
                tz,
                when: self.when.clone(),
            });
        }
        Self::parse(timezone, hours, every_minutes)
    }

    /// The timezone's IANA name.
    #[must_use]
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The hours, ascending; empty for an interval calendar.
    #[must_use]
    pub fn hours(&self) -> Vec<u8> {
        match &self.when {
            When::Hours(hours) => hours.iter().copied().collect(),
            When::EveryMinutes(_) => Vec::new(),
        }
    }

    /// The interval in minutes; `None` for an hours calendar.
    #[must_use]
    pub fn every_minutes(&self) -> Option<u16> {
        match self.when {
            When::Hours(_) => None,
            When::EveryMinutes(n) => Some(n),
        }
    }

    /// The instant wall time `wall` fires at: the first the local clock reads it or later.
    fn instant(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => self.end_of_gap(wall),
        }
    }

    /// The instant the clocks jumped forward over `wall`, a wall time that does not exist.
    fn end_of_gap(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        // The offset before the jump is that of the nearest valid wall time before `wall`; gaps
        // are an hour or less but for a few historic whole days.
        let before: FixedOffset = (1..=48)
            .find_map(|h| {
                self.tz
                    .offset_from_local_datetime(&(wall - Duration::hours(h)))
                    .latest()
            })?
            .fix();
        // Read with the offset before the jump, `wall` is an instant after it by as long as
        // `wall` is after the gap's start, which is less than the gap: the jump lies in
        // (hi - gap, hi], and is where the offset changes, at a whole second.
        let mut hi = Utc.from_utc_datetime(&(wall - offset_duration(before)));
        let gap = offset_duration(self.offset_at(hi)) - offset_duration(before);
        let mut lo = hi - gap;
        if gap <= Duration::zero() || self.offset_at(lo) != before {
            return None;
        }
        while hi - lo > Duration::seconds(1) {
            let mid = lo + Duration::seconds((hi - lo).num_seconds() / 2);
            if self.offset_at(mid) == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }

    fn offset_at(&self, t: DateTime<Utc>) -> FixedOffset {
        self.tz.offset_from_utc_datetime(&t.naive_utc()).fix()
    }

    /// The first fire strictly after `t`.
    #[must_use]
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Every wall time up to the local clock's reading at `t` has come by `t`. The next one
        // may have too, when the clocks fell back and `t` is in the repeated hour: its first
        // occurrence is over. Instants grow with wall times, so the first wall time whose
        // instant is after `t` gives the first fire after it.
        let now = t.with_timezone(&self.tz).naive_local();
        // Far beyond any setback of the clocks, so a broken rule cannot loop for ever.
        let limit = now + Duration::days(3);
        let mut wall = now;
        while wall < limit {
            wall = self.when.next_wall(wall);
            let i = self.instant(wall)?;
            if i > t {
                return Some(i);
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

impl When {
    fn hours(hours: &[i64]) -> Result<Self, Vec<Invalid>> {
        let mut errors = Vec::new();
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
        if errors.is_empty() {
            Ok(Self::Hours(set))
        } else {
            Err(errors)
        }
    }

    fn every_minutes(minutes: i64) -> Result<Self, Invalid> {
        match u16::try_from(minutes) {
            Ok(n) if (1..=MINUTES_PER_DAY).contains(&n) => Ok(Self::EveryMinutes(n)),
            _ => Err(Invalid::new(
                "every_minutes",
                format!("{minutes} is not a number of minutes from 1 to {MINUTES_PER_DAY}"),
            )),
        }
    }

    /// The first of the wall times strictly after `wall`.
    fn next_wall(&self, wall: NaiveDateTime) -> NaiveDateTime {
        let date = wall.date();
        let next_day = date + Duration::days(1);
        match self {
            Self::Hours(hours) => hours
                .iter()
                .map(|&h| date.and_time(hour(h)))
                .find(|w| *w > wall)
                .unwrap_or_else(|| next_day.and_time(hour(*hours.first().unwrap_or(&0)))),
            Self::EveryMinutes(n) => {
                let step = u32::from(*n) * 60;
                // The seconds of `wall` rounded down to a step, plus one step: the first step
                // after it, whatever its fraction of a second.
                let secs = (wall.num_seconds_from_midnight() / step + 1) * step;
                match NaiveTime::from_num_seconds_from_midnight_opt(secs, 0) {
                    Some(time) if secs < 86_400 => date.and_time(time),
                    _ => next_day.and_time(NaiveTime::MIN),
                }
            }
        }
    }
}

fn hour(h: u8) -> NaiveTime {
    NaiveTime::from_hms_opt(u32::from(h), 0, 0).unwrap_or(NaiveTime::MIN)
}

fn parse_timezone(timezone: &str) -> Result<Tz, Invalid> {
    timezone.parse::<Tz>().map_err(|_| {
        Invalid::new(
            "timezone",
            format!("`{timezone}` is not an IANA timezone such as Asia/Seoul or UTC"),
        )
    })
}

fn offset_duration(offset: FixedOffset) -> Duration {
    Duration::seconds(i64::from(offset.local_minus_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn utcs(all: &[&str]) -> Vec<DateTime<Utc>> {
        all.iter().map(|s| utc(s)).collect()
    }

    /// Every fire of `c` from `from` (exclusive) up to `to` (inclusive).
    fn fires_between(c: &Calendar, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (mut t, to) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(next) = c.next_after(t)
            && next <= to
        {
            out.push(next);
            t = next;
        }
        out
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

    #[test]
    fn intervals_take_exactly_one_kind_and_minutes_of_a_day() {
        // (timezone, hours, every_minutes, the fields named, why)
        type Case = (
            &'static str,
            Option<&'static [i64]>,
            Option<i64>,
            &'static [&'static str],
            &'static str,
        );
        let cases: &[Case] = &[
            ("UTC", None, Some(0), &["every_minutes"], "zero minutes"),
            ("UTC", None, Some(-5), &["every_minutes"], "negative"),
            (
                "UTC",
                None,
                Some(1441),
                &["every_minutes"],
                "more than a day",
            ),
            ("UTC", None, Some(70_000), &["every_minutes"], "beyond u16"),
            ("UTC", Some(&[3]), Some(5), &["every_minutes"], "both kinds"),
            (
                "UTC",
                Some(&[]),
                Some(5),
                &["every_minutes"],
                "both, hours empty",
            ),
            ("UTC", None, None, &["hours"], "neither kind"),
            (
                "Mars/Olympus",
                None,
                Some(0),
                &["timezone", "every_minutes"],
                "both bad",
            ),
        ];
        for (tz, hours, every, fields, why) in cases {
            let e = Calendar::parse(tz, *hours, *every).expect_err(why);
            let got: Vec<_> = e.iter().map(|i| i.field.as_str()).collect();
            assert_eq!(got, *fields, "{why}: {e:?}");
        }
        for n in [1, 7, 1440] {
            let c = Calendar::every("UTC", n).expect("in range");
            assert_eq!(c.every_minutes(), u16::try_from(n).ok());
            assert!(c.hours().is_empty());
        }
        let c = Calendar::new("UTC", &[3]).expect("hours");
        assert_eq!(c.every_minutes(), None);
    }

    #[test]
    fn a_change_switches_kinds_and_keeps_what_it_does_not_name() {
        let hours = Calendar::new("Asia/Seoul", &[6]).expect("hours");
        let every = hours.changed(None, None, Some(15)).expect("to an interval");
        assert_eq!(
            (every.timezone(), every.every_minutes(), every.hours()),
            ("Asia/Seoul", Some(15), vec![])
        );
        let back = every
            .changed(Some("UTC"), Some(&[1, 2]), None)
            .expect("back");
        assert_eq!(
            (back.timezone(), back.every_minutes(), back.hours()),
            ("UTC", None, vec![1, 2])
        );
        let moved = every
            .changed(Some("UTC"), None, None)
            .expect("timezone only");
        assert_eq!((moved.timezone(), moved.every_minutes()), ("UTC", Some(15)));
        let e = every
            .changed(None, Some(&[1]), Some(5))
            .expect_err("both kinds");
        assert_eq!(e[0].field, "every_minutes");
        let e = every.changed(Some("Nowhere"), None, None).expect_err("tz");
        assert_eq!(e[0].field, "timezone");
    }

    #[test]
    fn every_n_minutes_fires_from_local_midnight_like_cron() {
        // Seoul is UTC+9: local midnight is 15:00 UTC.
        let c = Calendar::every("Asia/Seoul", 5).expect("calendar");
        let hour = fires_between(&c, "2026-11-23T14:59:59Z", "2026-11-23T15:59:59Z");
        assert_eq!(hour.len(), 12);
        assert_eq!(hour[0], utc("2026-11-23T15:00:00Z"));
        assert!(hour.windows(2).all(|w| w[1] - w[0] == Duration::minutes(5)));
        // From a time between fires, and from a fire itself (strictly after).
        assert_eq!(
            c.upcoming(utc("2026-11-23T15:07:30Z"), 2),
            utcs(&["2026-11-23T15:10:00Z", "2026-11-23T15:15:00Z"])
        );
        assert_eq!(
            c.next_after(utc("2026-11-23T15:10:00Z")),
            Some(utc("2026-11-23T15:15:00Z"))
        );
        // A whole day: 288 fires, from midnight to 23:55.
        let day = fires_between(&c, "2026-11-23T14:59:59Z", "2026-11-24T14:59:59Z");
        assert_eq!(day.len(), 288);
        assert_eq!(day.last(), Some(&utc("2026-11-24T14:55:00Z")));
        let daily = Calendar::every("Asia/Seoul", 1440).expect("calendar");
        assert_eq!(
            daily.upcoming(utc("2026-11-23T15:00:00Z"), 2),
            utcs(&["2026-11-24T15:00:00Z", "2026-11-25T15:00:00Z"])
        );
        let minutely = Calendar::every("UTC", 1).expect("calendar");
        assert_eq!(
            minutely.next_after(utc("2026-11-23T23:59:00.5Z")),
            Some(utc("2026-11-24T00:00:00Z"))
        );
    }

    #[test]
    fn an_interval_not_dividing_the_day_restarts_at_midnight() {
        // 1440 = 205 × 7 + 5: the last gap of a day is 5 minutes, 23:55 to midnight.
        let c = Calendar::every("UTC", 7).expect("calendar");
        let day = fires_between(&c, "2026-11-22T23:59:59Z", "2026-11-23T23:59:59Z");
        assert_eq!(day.len(), 206);
        assert_eq!(day[1], utc("2026-11-23T00:07:00Z"));
        assert_eq!(day.last(), Some(&utc("2026-11-23T23:55:00Z")));
        assert_eq!(
            c.upcoming(utc("2026-11-23T23:50:00Z"), 3),
            utcs(&[
                "2026-11-23T23:55:00Z",
                "2026-11-24T00:00:00Z",
                "2026-11-24T00:07:00Z"
            ])
        );
        let c = Calendar::every("UTC", 90).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2026-11-23T21:00:00Z"), 3),
            utcs(&[
                "2026-11-23T22:30:00Z",
                "2026-11-24T00:00:00Z",
                "2026-11-24T01:30:00Z"
            ])
        );
    }

    #[test]
    fn intervals_across_new_york_dst_changes_are_strictly_increasing() {
        for n in [1, 5, 7, 45] {
            let c = Calendar::every("America/New_York", n).expect("calendar");
            for (from, to) in [
                ("2027-03-14T04:00:00Z", "2027-03-15T04:00:00Z"),
                ("2027-11-07T03:00:00Z", "2027-11-08T06:00:00Z"),
            ] {
                let fires = fires_between(&c, from, to);
                assert!(
                    fires.windows(2).all(|w| w[0] < w[1]),
                    "every {n} from {from}"
                );
                // No wall time fires in the repeated hour's second pass, and none is lost but
                // those the jump forward skipped: each instant is a wall time of the grid read
                // in the zone, or the jump itself.
                for f in &fires {
                    let local = f.with_timezone(&c.tz).naive_local();
                    let minute = local.hour() * 60 + local.minute();
                    let jump = *f == utc("2027-03-14T07:00:00Z");
                    assert!(jump || minute % u32::from(c.every_minutes().unwrap_or(1)) == 0);
                    assert_eq!(local.second(), 0);
                }
            }
        }
        // Spring forward, 14 March 2027: 02:00–02:59 does not exist. Every 5 minutes the fires
        // go 01:55 EST, then 03:00 EDT (the jump, for 02:00 and the skipped times, and 03:00
        // itself), 03:05 EDT: one hour of the day has no fires, 23 hours × 12 = 276.
        let c = Calendar::every("America/New_York", 5).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2027-03-14T06:50:00Z"), 3),
            utcs(&[
                "2027-03-14T06:55:00Z",
                "2027-03-14T07:00:00Z",
                "2027-03-14T07:05:00Z"
            ])
        );
        let spring = fires_between(&c, "2027-03-14T04:59:59Z", "2027-03-15T03:59:59Z");
        assert_eq!(spring.len(), 276);
        // Every 7 minutes, 01:59 EST is followed by the jump at 03:00 EDT (for 02:06 … 02:55,
        // which do not exist), then 03:02 EDT: shorter gaps, never an instant twice.
        let c = Calendar::every("America/New_York", 7).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2027-03-14T06:55:00Z"), 3),
            utcs(&[
                "2027-03-14T06:59:00Z",
                "2027-03-14T07:00:00Z",
                "2027-03-14T07:02:00Z"
            ])
        );
        // Fall back, 7 November 2027: 01:00–01:59 occurs twice. The fires go 01:55 EDT, then
        // 02:00 EST, an hour later: the second 01:00–01:55 fire nothing. 25 hours, 24 × 12.
        let c = Calendar::every("America/New_York", 5).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2027-11-07T05:50:00Z"), 3),
            utcs(&[
                "2027-11-07T05:55:00Z",
                "2027-11-07T07:00:00Z",
                "2027-11-07T07:05:00Z"
            ])
        );
        // From inside the repeated hour (01:30 EST), the next fire is 02:00 EST.
        assert_eq!(
            c.next_after(utc("2027-11-07T06:30:00Z")),
            Some(utc("2027-11-07T07:00:00Z"))
        );
        let fall = fires_between(&c, "2027-11-07T03:59:59Z", "2027-11-08T04:59:59Z");
        assert_eq!(fall.len(), 288);
    }

    #[test]
    fn a_gap_that_is_not_a_whole_hour_fires_at_its_end() {
        // Lord Howe Island moves its clocks forward half an hour, 02:00 +10:30 → 02:30 +11, at
        // 15:30 UTC on 2 October 2027. Every 45 minutes, 02:15 falls in the gap: it fires at
        // the jump (02:30), not at 02:45 as reading it with the old offset would.
        let c = Calendar::every("Australia/Lord_Howe", 45).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2027-10-02T14:30:00Z"), 3),
            utcs(&[
                "2027-10-02T15:00:00Z", // 01:30 +10:30
                "2027-10-02T15:30:00Z", // 02:15, absent: the jump
                "2027-10-02T16:00:00Z", // 03:00 +11
            ])
        );
        // An hour in the gap of a zone that skipped a whole day: Samoa went from 29 to 31
        // December 2011 (UTC-10 → UTC+14 at 10:00 UTC on the 30th).
        let c = Calendar::new("Pacific/Apia", &[12]).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2011-12-29T12:00:00Z"), 2),
            utcs(&["2011-12-29T22:00:00Z", "2011-12-30T10:00:00Z"])
        );
    }

    /// The rule simulated: the clock is read each minute, and a fire is due at the first
    /// reading that reaches a wall time no earlier reading had reached.
    fn simulated(c: &Calendar, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let local = |t: DateTime<Utc>| t.with_timezone(&c.tz).naive_local();
        let (mut t, mut reached) = (from, local(from));
        let mut out = Vec::new();
        while t < to {
            t += Duration::minutes(1);
            let now = local(t);
            if c.when.next_wall(reached) <= now {
                out.push(t);
            }
            reached = reached.max(now);
        }
        out
    }

    #[test]
    fn fires_are_the_first_readings_of_each_wall_time_around_every_kind_of_change() {
        // (zone, a UTC instant its clocks change at): forward and back, by an hour, by half an
        // hour, at midnight (Santiago skips 00:00 in September), and a whole day (Samoa).
        let changes = [
            ("America/New_York", "2027-03-14T07:00:00Z"),
            ("America/New_York", "2027-11-07T06:00:00Z"),
            ("Australia/Lord_Howe", "2027-04-03T15:00:00Z"),
            ("Australia/Lord_Howe", "2027-10-02T15:30:00Z"),
            ("America/Santiago", "2027-04-04T03:00:00Z"),
            ("America/Santiago", "2027-09-05T04:00:00Z"),
            ("Europe/London", "2027-03-28T01:00:00Z"),
            ("Pacific/Apia", "2011-12-30T10:00:00Z"),
        ];
        let calendars = |tz: &str| {
            let mut all: Vec<Calendar> = [1, 5, 7, 45, 90, 1440]
                .iter()
                .map(|&n| Calendar::every(tz, n).expect("interval"))
                .collect();
            for hours in [&[0, 1, 2, 3, 23][..], &[2], &[0]] {
                all.push(Calendar::new(tz, hours).expect("hours"));
            }
            all
        };
        for (tz, change) in changes {
            let (from, to) = (
                utc(change) - Duration::days(1),
                utc(change) + Duration::days(1),
            );
            for c in calendars(tz) {
                let mut got = Vec::new();
                let mut t = from;
                while let Some(next) = c.next_after(t)
                    && next <= to
                {
                    got.push(next);
                    t = next;
                }
                assert_eq!(got, simulated(&c, from, to), "{c:?} around {change}");
                assert!(got.windows(2).all(|w| w[0] < w[1]), "{c:?}");
            }
        }
        // Santiago's 5 September starts at 01:00: that day's midnight fires then.
        let c = Calendar::every("America/Santiago", 30).expect("calendar");
        assert_eq!(
            c.upcoming(utc("2027-09-05T03:00:00Z"), 3),
            utcs(&[
                "2027-09-05T03:30:00Z", // 23:30 -04
                "2027-09-05T04:00:00Z", // 00:00, absent: 01:00 -03
                "2027-09-05T04:30:00Z", // 01:30 -03
            ])
        );
    }
}
