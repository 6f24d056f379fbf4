//! A cost data source's records (`CostInfo`), decoded by hand, and their amounts as exact
//! decimals.
//!
//! Until `spaceone-api` 1.12 (2024-04) `cost` and `usage_quantity` were `float` (wire type 5,
//! four bytes); since then `double` (wire type 1, eight bytes). Plugins pinned to the old
//! package still send floats: a generated decoder for the current proto fails the whole batch
//! on them (`UnexpectedWireType`). This one takes either, and keeps which it was, because an
//! amount is read from the shortest text that gives back the number sent, in its own width:
//! `0.1f32` is "0.1", not the 0.100000001490116… its binary value widens to.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use gleaner_common::billing::{CostItem, Month};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use prost_types::Struct;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::value::to_json_or_empty;

/// An amount as the plugin sent it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Double(f64),
    /// An older plugin's `float`.
    Float(f32),
}

impl Default for Amount {
    fn default() -> Self {
        Amount::Double(0.0)
    }
}

impl Amount {
    /// The exact decimal the plugin meant: the shortest text that reads back as the number
    /// sent, never its binary expansion.
    ///
    /// # Errors
    /// NaN, an infinity, or a magnitude no decimal holds (over about 7.9 × 10²⁸).
    pub fn to_decimal(self) -> Result<Decimal, String> {
        let text = match self {
            Amount::Double(v) if v.is_finite() => v.to_string(),
            Amount::Float(v) if v.is_finite() => v.to_string(),
            other => return Err(format!("{other:?} is not an amount")),
        };
        text.parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text))
            .map(|d| d.normalize())
            .map_err(|e| format!("{text} is not an amount Gleaner can hold: {e}"))
    }

    fn as_f64(self) -> f64 {
        match self {
            Amount::Double(v) => v,
            Amount::Float(v) => f64::from(v),
        }
    }
}

/// `spaceone.api.cost_analysis.plugin.CostInfo`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostInfo {
    pub cost: Amount,
    pub usage_quantity: Amount,
    pub usage_unit: String,
    pub provider: String,
    pub region_code: String,
    pub product: String,
    pub usage_type: String,
    pub resource: String,
    pub tags: Option<Struct>,
    pub additional_info: Option<Struct>,
    pub data: Option<Struct>,
    pub billed_date: String,
}

fn merge_amount(
    amount: &mut Amount,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    *amount = match wire_type {
        WireType::ThirtyTwoBit => {
            let mut v = 0f32;
            encoding::float::merge(wire_type, &mut v, buf, ctx)?;
            Amount::Float(v)
        }
        _ => {
            let mut v = 0f64;
            encoding::double::merge(wire_type, &mut v, buf, ctx)?;
            Amount::Double(v)
        }
    };
    Ok(())
}

const STRINGS: [u32; 7] = [3, 4, 5, 6, 7, 8, 21];

impl CostInfo {
    fn string(&self, tag: u32) -> &String {
        match tag {
            3 => &self.usage_unit,
            4 => &self.provider,
            5 => &self.region_code,
            6 => &self.product,
            7 => &self.usage_type,
            8 => &self.resource,
            _ => &self.billed_date,
        }
    }

    fn string_mut(&mut self, tag: u32) -> &mut String {
        match tag {
            3 => &mut self.usage_unit,
            4 => &mut self.provider,
            5 => &mut self.region_code,
            6 => &mut self.product,
            7 => &mut self.usage_type,
            8 => &mut self.resource,
            _ => &mut self.billed_date,
        }
    }

    fn structs(&self) -> [(u32, &Option<Struct>); 3] {
        [
            (12, &self.tags),
            (13, &self.additional_info),
            (14, &self.data),
        ]
    }
}

impl Message for CostInfo {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // Encoded as the current proto has it (doubles): only tests encode.
        for (tag, amount) in [(1, self.cost), (2, self.usage_quantity)] {
            if amount.as_f64() != 0.0 {
                encoding::double::encode(tag, &amount.as_f64(), buf);
            }
        }
        for tag in STRINGS {
            let s = self.string(tag);
            if !s.is_empty() {
                encoding::string::encode(tag, s, buf);
            }
        }
        for (tag, s) in self.structs() {
            if let Some(s) = s {
                encoding::message::encode(tag, s, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => merge_amount(&mut self.cost, wire_type, buf, ctx),
            2 => merge_amount(&mut self.usage_quantity, wire_type, buf, ctx),
            t if STRINGS.contains(&t) => {
                encoding::string::merge(wire_type, self.string_mut(t), buf, ctx)
            }
            12 => encoding::message::merge(
                wire_type,
                self.tags.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            13 => encoding::message::merge(
                wire_type,
                self.additional_info.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            14 => encoding::message::merge(
                wire_type,
                self.data.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let amounts: usize = [(1, self.cost), (2, self.usage_quantity)]
            .into_iter()
            .filter(|(_, a)| a.as_f64() != 0.0)
            .map(|(tag, a)| encoding::double::encoded_len(tag, &a.as_f64()))
            .sum();
        let strings: usize = STRINGS
            .iter()
            .map(|&tag| (tag, self.string(tag)))
            .filter(|(_, s)| !s.is_empty())
            .map(|(tag, s)| encoding::string::encoded_len(tag, s))
            .sum();
        let structs: usize = self
            .structs()
            .into_iter()
            .filter_map(|(tag, s)| s.as_ref().map(|s| encoding::message::encoded_len(tag, s)))
            .sum();
        amounts + strings + structs
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// What records are mapped with besides themselves: from the plugin's `init` metadata and the
/// task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Costing {
    /// The provider (Cloudforet's id, e.g. `aws`) of records that name none.
    pub provider: String,
    /// The plugin's `currency`: Cloudforet records carry none, the data source has one.
    pub currency: String,
    /// Where a record's account is, tried in order: the sources of the plugin's
    /// `match_service_account` rules (the record's field matched to a service account), then
    /// where the known plugins put it.
    pub account_paths: Vec<String>,
    /// The account of records without one: the service account's.
    pub default_account: String,
}

/// Where the known plugins put a record's account: cost-explorer `additional_info.account_id`,
/// hyperbilling `additional_info."Account ID"`.
const ACCOUNT_PATHS: [&str; 3] = [
    "additional_info.account_id",
    "additional_info.Account ID",
    "data.account_id",
];

impl Costing {
    /// From a plugin's `init` metadata: its `currency` (`USD` when it names none) and its
    /// `data_source_rules`' `match_service_account` sources.
    #[must_use]
    pub fn new(metadata: &Map<String, Value>, provider: &str, default_account: String) -> Self {
        let currency = metadata
            .get("currency")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .unwrap_or("USD")
            .to_ascii_uppercase();
        let mut account_paths: Vec<String> = metadata
            .get("data_source_rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|rule| {
                rule.pointer("/actions/match_service_account/source")
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect();
        for path in ACCOUNT_PATHS {
            if !account_paths.iter().any(|p| p == path) {
                account_paths.push(path.to_owned());
            }
        }
        Self {
            provider: provider.to_owned(),
            currency,
            account_paths,
            default_account,
        }
    }

    /// A record as Gleaner's FOCUS-shaped cost record.
    ///
    /// # Errors
    /// Why the record cannot be kept: no or a bad `billed_date`, an amount that is not one.
    pub fn record(&self, info: CostInfo) -> Result<CostItem, String> {
        let (start, end) = billed_period(&info.billed_date)?;
        let cost = info.cost.to_decimal().map_err(|e| format!("cost: {e}"))?;
        let quantity = match info.usage_quantity {
            // Absent on the wire: proto3 does not send a zero.
            q if q.as_f64() == 0.0 => None,
            q => Some(q.to_decimal().map_err(|e| format!("usage_quantity: {e}"))?),
        };
        let record = CostRecord {
            additional_info: to_json_or_empty(info.additional_info),
            data: to_json_or_empty(info.data),
        };
        let account = self
            .account_paths
            .iter()
            .find_map(|path| record.at(path))
            .unwrap_or_else(|| self.default_account.clone());
        let provider = if info.provider.is_empty() {
            &self.provider
        } else {
            &info.provider
        };
        let tags = to_json_or_empty(info.tags);
        let text = |s: String| (!s.is_empty()).then_some(s);
        Ok(CostItem {
            charge_period_start: start,
            charge_period_end: Some(end),
            billing_period_start: Some(
                Month::of(start.date_naive())
                    .first_day()
                    .and_time(NaiveTime::MIN)
                    .and_utc(),
            ),
            provider: focus_provider(provider),
            billing_account_id: account.clone(),
            billing_account_name: None,
            sub_account_id: Some(account),
            sub_account_name: None,
            service_name: text(info.product),
            service_category: None,
            region_id: text(info.region_code),
            resource_id: text(info.resource),
            charge_category: Some("Usage".into()),
            usage_type: text(info.usage_type),
            currency: self.currency.clone(),
            billed_cost: cost,
            // Cloudforet has one amount, what was billed; it has no list prices.
            effective_cost: cost,
            list_cost: Decimal::ZERO,
            consumed_quantity: quantity,
            consumed_unit: text(info.usage_unit),
            pricing_quantity: None,
            pricing_unit: None,
            tags: (!tags.is_empty()).then_some(tags),
        })
    }
}

/// A record's Structs, where its account may be.
struct CostRecord {
    additional_info: Map<String, Value>,
    data: Map<String, Value>,
}

impl CostRecord {
    fn at(&self, path: &str) -> Option<String> {
        let (head, rest) = path.split_once('.')?;
        let within = match head {
            "additional_info" => &self.additional_info,
            "data" => &self.data,
            _ => return None,
        };
        crate::inventory::scalar_at(within, rest)
    }
}

/// FOCUS's `ProviderName` for Cloudforet's provider ids, as Gleaner's own sources write it.
fn focus_provider(id: &str) -> String {
    match id {
        "aws" => "AWS",
        "google_cloud" => "Google Cloud",
        "azure" => "Microsoft",
        other => other,
    }
    .to_owned()
}

/// The day (`YYYY-MM-DD`, or the date of an ISO 8601 time) or month (`YYYY-MM`) a record was
/// billed on, as a charge period.
fn billed_period(text: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let day = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
    if let Some(date) = text
        .get(..10)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    {
        return Ok((day(date), day(date + chrono::Days::new(1))));
    }
    if let Ok(month) = text.parse::<Month>() {
        return Ok((day(month.first_day()), day(month.next().first_day())));
    }
    Err(if text.is_empty() {
        "the record has no billed_date".to_owned()
    } else {
        format!("billed_date `{text}` is neither YYYY-MM-DD nor YYYY-MM")
    })
}

/// A changed period: a start month and an optional end month (both included).
type Period = (Month, Option<Month>);

fn covered(periods: &[Period], month: Month) -> bool {
    periods
        .iter()
        .any(|&(start, end)| start <= month && end.is_none_or(|end| month <= end))
}

fn periods_text(periods: &[Period]) -> String {
    let shown: Vec<String> = periods
        .iter()
        .map(|(start, end)| match end {
            Some(end) => format!("{start}..{end}"),
            None => format!("{start}.."),
        })
        .collect();
    shown.join(", ")
}

/// The months a `Job.get_tasks` answer says it replaces: the answer's `changed`, and each
/// sub-task's `task_changed` (a sub-task streams from its own start, so it sends the months
/// its period holds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    answer: Vec<Period>,
    /// Per sub-task, in order; `None` for one that names no period.
    tasks: Vec<Option<Period>>,
}

/// Whether an answer replaces a month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every sub-task sends the month: it is replaced.
    All,
    /// None does: it is kept as stored. Says which periods the answer replaces.
    None(String),
    /// Some do and some do not: a month of a service account is replaced whole, so it cannot
    /// be replaced from part of its records. Says which sub-tasks leave it out.
    Partial(String),
}

impl Changed {
    /// The periods of an answer; unreadable ones are skipped.
    #[must_use]
    pub fn of(tasks: &crate::pb::cost::TasksInfo) -> Self {
        let month = |s: &str| s.get(..7).and_then(|m| m.parse::<Month>().ok());
        // Only an empty end is open: a period whose end does not read is left out, rather
        // than taken to run on (and replace months it does not send).
        let period = |c: &crate::pb::cost::ChangedInfo| {
            let end = if c.end.is_empty() {
                None
            } else {
                Some(month(&c.end)?)
            };
            Some((month(&c.start)?, end))
        };
        Self {
            answer: tasks.changed.iter().filter_map(period).collect(),
            tasks: tasks
                .tasks
                .iter()
                .map(|t| t.task_changed.as_ref().and_then(period))
                .collect(),
        }
    }

    /// Whether the answer replaces `month`. A sub-task naming no period goes by the answer's
    /// `changed`, and an answer naming none replaces what it was asked for.
    #[must_use]
    pub fn coverage(&self, month: Month) -> Coverage {
        let by_answer = self.answer.is_empty() || covered(&self.answer, month);
        let each: Vec<bool> = self
            .tasks
            .iter()
            .map(|t| t.map_or(by_answer, |p| covered(&[p], month)))
            .collect();
        let all = if each.is_empty() {
            by_answer
        } else {
            each.iter().all(|c| *c)
        };
        if all {
            return Coverage::All;
        }
        if !each.iter().any(|c| *c) {
            let mut periods = self.answer.clone();
            periods.extend(self.tasks.iter().flatten());
            return Coverage::None(periods_text(&periods));
        }
        let left_out: Vec<String> = each
            .iter()
            .enumerate()
            .filter(|(_, c)| !**c)
            .map(|(i, _)| {
                let p: Vec<Period> = self.tasks[i].into_iter().collect();
                format!("sub-task {i} ({})", periods_text(&p))
            })
            .collect();
        Coverage::Partial(left_out.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_doubles_both_decode() {
        // cost 1.25 as a double (field 1, wire type 1) and as a float (wire type 5), then the
        // billed date.
        let double = [
            &[0x09][..],
            &1.25f64.to_le_bytes(),
            &[0xaa, 0x01, 10],
            b"2026-11-30",
        ]
        .concat();
        let float = [&[0x0d][..], &1.25f32.to_le_bytes()].concat();
        assert_eq!(double[..9], [0x09, 0, 0, 0, 0, 0, 0, 0xf4, 0x3f]);
        assert_eq!(float, [0x0d, 0, 0, 0xa0, 0x3f]);
        let d = CostInfo::decode(&double[..]).expect("double");
        assert_eq!(d.cost, Amount::Double(1.25));
        assert_eq!(d.billed_date, "2026-11-30");
        let f = CostInfo::decode(&float[..]).expect("float");
        assert_eq!(f.cost, Amount::Float(1.25));
    }

    #[test]
    fn amounts_are_their_shortest_text() {
        let dec = |a: Amount| a.to_decimal().expect("amount").to_string();
        assert_eq!(dec(Amount::Double(0.1)), "0.1");
        assert_eq!(dec(Amount::Double(0.1 + 0.2)), "0.30000000000000004");
        // The float's own shortest text, not its value widened to a double.
        assert_eq!(dec(Amount::Float(0.1)), "0.1");
        assert_eq!(dec(Amount::Double(1e-10)), "0.0000000001");
        assert_eq!(
            dec(Amount::Double(123_456_789.012_345_67)),
            "123456789.01234567"
        );
        assert_eq!(dec(Amount::Double(-2.5)), "-2.5");
        assert_eq!(dec(Amount::default()), "0");
        assert!(Amount::Double(f64::NAN).to_decimal().is_err());
        assert!(Amount::Double(1e40).to_decimal().is_err());
    }

    #[test]
    fn a_record_survives_a_round_trip() {
        let c = CostInfo {
            cost: Amount::Double(3.5),
            usage_quantity: Amount::Double(24.0),
            usage_unit: "Hrs".into(),
            provider: "aws".into(),
            region_code: "us-east-1".into(),
            product: "AmazonEC2".into(),
            usage_type: "USE1-BoxUsage:t3.micro".into(),
            resource: "i-1".into(),
            tags: Some(crate::value::from_json(
                serde_json::json!({"env": "prod"})
                    .as_object()
                    .expect("object"),
            )),
            additional_info: None,
            data: None,
            billed_date: "2026-11-30".into(),
        };
        let bytes = c.encode_to_vec();
        assert_eq!(bytes.len(), c.encoded_len());
        assert_eq!(CostInfo::decode(&bytes[..]).expect("decode"), c);
    }

    fn costing() -> Costing {
        let metadata = serde_json::json!({
            "currency": "eur",
            "data_source_rules": [{"actions": {"match_service_account":
                {"source": "additional_info.Payer", "target": "data.account_id"}}}],
        });
        Costing::new(
            metadata.as_object().unwrap(),
            "aws",
            "sa-default".to_owned(),
        )
    }

    fn info(billed_date: &str, additional_info: serde_json::Value) -> CostInfo {
        CostInfo {
            cost: Amount::Float(0.1),
            usage_quantity: Amount::Double(2.5),
            usage_type: "USE1-BoxUsage:t3.micro".into(),
            product: "AmazonEC2".into(),
            billed_date: billed_date.into(),
            additional_info: Some(crate::value::from_json(
                additional_info.as_object().unwrap(),
            )),
            ..CostInfo::default()
        }
    }

    #[test]
    fn records_map_to_focus_fields_with_the_metadata_s_currency_and_account_rules() {
        let c = costing();
        assert_eq!(c.currency, "EUR");
        assert_eq!(c.account_paths[0], "additional_info.Payer");
        let r = c
            .record(info(
                "2026-09-02",
                serde_json::json!({"Payer": "999", "account_id": "1"}),
            ))
            .unwrap();
        // The rule's source wins over the known places; a float's shortest text is the amount.
        assert_eq!(r.billing_account_id, "999");
        assert_eq!(r.billed_cost.to_string(), "0.1");
        assert_eq!(r.effective_cost, r.billed_cost);
        assert_eq!(
            r.consumed_quantity.map(|q| q.to_string()).as_deref(),
            Some("2.5")
        );
        assert_eq!(
            r.provider, "AWS",
            "the record names none: the plugin's provider"
        );
        assert_eq!(r.service_name.as_deref(), Some("AmazonEC2"));
        assert_eq!(r.usage_type.as_deref(), Some("USE1-BoxUsage:t3.micro"));
        assert_eq!(r.currency, "EUR");
        assert_eq!(
            r.charge_period_start.to_rfc3339(),
            "2026-09-02T00:00:00+00:00"
        );
        assert_eq!(
            r.charge_period_end.unwrap().to_rfc3339(),
            "2026-09-03T00:00:00+00:00"
        );
        assert_eq!(
            r.billing_period_start.unwrap().to_rfc3339(),
            "2026-09-01T00:00:00+00:00"
        );
        // Hyperbilling's key, then the service account when the record names no account.
        let r = c
            .record(info(
                "2026-09-02T10:00:00Z",
                serde_json::json!({"Account ID": "42"}),
            ))
            .unwrap();
        assert_eq!(r.billing_account_id, "42");
        assert_eq!(
            r.charge_period_start.to_rfc3339(),
            "2026-09-02T00:00:00+00:00"
        );
        let r = c.record(info("2026-09", serde_json::json!({}))).unwrap();
        assert_eq!(r.billing_account_id, "sa-default");
        assert_eq!(
            r.charge_period_end.unwrap().to_rfc3339(),
            "2026-10-01T00:00:00+00:00"
        );
        for bad in ["", "09/02/2026", "2026-13"] {
            assert!(c.record(info(bad, serde_json::json!({}))).is_err(), "{bad}");
        }
    }

    #[test]
    fn changed_periods_cover_their_months_and_none_covers_all() {
        use crate::pb::cost::{ChangedInfo, TaskInfo, TasksInfo};
        let m = |s: &str| s.parse::<Month>().unwrap();
        assert_eq!(Changed::default().coverage(m("2020-01")), Coverage::All);
        let changed = |start: &str, end: &str| ChangedInfo {
            start: start.into(),
            end: end.into(),
            filter: None,
        };
        let task = |c: Option<ChangedInfo>| TaskInfo {
            task_options: None,
            task_changed: c,
        };
        // The answer's periods alone.
        let answer = Changed::of(&TasksInfo {
            changed: vec![changed("2026-10", ""), changed("2026-06-15", "2026-07")],
            ..TasksInfo::default()
        });
        for (month, all) in [
            ("2026-05", false),
            ("2026-06", true),
            ("2026-07", true),
            ("2026-08", false),
            ("2026-10", true),
            ("2027-03", true),
        ] {
            assert_eq!(answer.coverage(m(month)) == Coverage::All, all, "{month}");
        }
        assert_eq!(
            answer.coverage(m("2026-09")),
            Coverage::None("2026-10.., 2026-06..2026-07".into())
        );
        // Sub-tasks from different months: a month only some send is neither kept nor
        // replaced; a sub-task without a period goes by the answer's.
        let tasks = Changed::of(&TasksInfo {
            changed: vec![changed("2026-09", "")],
            tasks: vec![task(Some(changed("2026-10", ""))), task(None)],
            ..TasksInfo::default()
        });
        assert_eq!(tasks.coverage(m("2026-10")), Coverage::All);
        assert_eq!(
            tasks.coverage(m("2026-09")),
            Coverage::Partial("sub-task 0 (2026-10..)".into())
        );
        assert!(matches!(tasks.coverage(m("2026-08")), Coverage::None(_)));
        // An end that does not read leaves its period out, rather than open-ended.
        let garbled = Changed::of(&TasksInfo {
            changed: vec![changed("2026-10", "")],
            tasks: vec![task(Some(changed("2026-06", "2026-7")))],
            ..TasksInfo::default()
        });
        assert!(matches!(garbled.coverage(m("2026-09")), Coverage::None(_)));
        assert_eq!(garbled.coverage(m("2026-10")), Coverage::All);
    }
}
