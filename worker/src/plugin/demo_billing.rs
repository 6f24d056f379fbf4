//! The `demo-billing` cost data source: deterministic synthetic daily costs per service and
//! region, so billing can be tried and tested without a cloud account.
//!
//! For a task's month, one record per day, service `s` (1..=`services`) and region `r`
//! (1..=`regions`), of `unit_cost × s × r`. A month's billed total is therefore
//! `unit_cost × days × S(S+1)/2 × R(R+1)/2` (every day of a past month; the current month stops
//! at today, UTC). The effective cost is 90% of the billed cost, the list cost equals it.

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use gleaner_common::billing::Month;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{CollectRequest, CostItem, Item, ItemSender, Plugin, PluginError};

/// The options a `demo-billing` collector takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoBillingOptions {
    pub services: u32,
    pub regions: u32,
    /// A decimal, as a string so that it stays exact.
    pub unit_cost: Decimal,
    pub currency: String,
    /// The billing account the records belong to; by default `demo-<first 8 hex digits of the
    /// service account's id>`, so each service account is its own billing account.
    pub billing_account_id: Option<String>,
}

impl Default for DemoBillingOptions {
    fn default() -> Self {
        Self {
            services: 4,
            regions: 2,
            unit_cost: Decimal::new(125, 2),
            currency: "USD".into(),
            billing_account_id: None,
        }
    }
}

/// The `demo-billing` plugin.
pub struct DemoBilling {
    info: PluginInfo,
}

impl Default for DemoBilling {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoBilling {
    #[must_use]
    pub fn new() -> Self {
        Self {
            info: PluginInfo {
                id: "demo-billing".into(),
                name: "Demo costs".into(),
                description: "Deterministic synthetic daily costs per service and region: no cloud account needed.".into(),
                kind: PluginKind::CostDataSource,
                provider: "demo".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: Vec::new(),
                metrics: Vec::new(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "services": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "services per account (default 4)"},
                        "regions": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "regions per account (default 2)"},
                        "unit_cost": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "description": "cost of service 1 in region 1 per day, a decimal (default \"1.25\")"},
                        "currency": {"type": "string", "minLength": 3, "maxLength": 3, "description": "ISO 4217 code (default USD)"},
                        "billing_account_id": {"type": "string", "minLength": 1, "description": "default: demo-<service account id prefix>"}
                    },
                    "additionalProperties": false
                }),
            },
        }
    }

    fn options(options: &Value) -> Result<DemoBillingOptions, PluginError> {
        if options.is_null() {
            return Ok(DemoBillingOptions::default());
        }
        serde_json::from_value(options.clone())
            .map_err(|e| PluginError::Permanent(format!("invalid options: {e}")))
    }
}

/// The days of `month` the demo reports: all of a past month, up to today for the current one.
fn days(month: Month, today: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    let end = month
        .next()
        .first_day()
        .min(today.succ_opt().unwrap_or(today));
    month.first_day().iter_days().take_while(move |d| *d < end)
}

/// The records of one day.
pub fn day_records(opts: &DemoBillingOptions, account: &str, day: NaiveDate) -> Vec<CostItem> {
    let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
    let mut out = Vec::with_capacity((opts.services * opts.regions) as usize);
    for s in 1..=opts.services {
        for r in 1..=opts.regions {
            let billed = opts.unit_cost * Decimal::from(s) * Decimal::from(r);
            out.push(CostItem {
                charge_period_start: start,
                charge_period_end: Some(start + chrono::Duration::days(1)),
                billing_period_start: Some(
                    Utc.from_utc_datetime(
                        &day.with_day(1)
                            .unwrap_or(day)
                            .and_hms_opt(0, 0, 0)
                            .unwrap_or_default(),
                    ),
                ),
                provider: "demo".into(),
                billing_account_id: account.to_owned(),
                billing_account_name: None,
                sub_account_id: Some(account.to_owned()),
                sub_account_name: None,
                service_name: Some(format!("Demo Service {s}")),
                service_category: Some("Compute".into()),
                region_id: Some(format!("demo-region-{r}")),
                resource_id: None,
                charge_category: Some("Usage".into()),
                usage_type: None,
                currency: opts.currency.clone(),
                billed_cost: billed,
                effective_cost: billed * Decimal::new(9, 1),
                list_cost: billed,
                consumed_quantity: Some(Decimal::from(s * r)),
                consumed_unit: Some("Hours".into()),
                pricing_quantity: Some(Decimal::from(s * r)),
                pricing_unit: Some("Hours".into()),
                tags: None,
            });
        }
    }
    out
}

#[async_trait]
impl Plugin for DemoBilling {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        _secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        Self::options(options).map(drop)
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let opts = Self::options(&request.options)?;
        let month = request.task.billing_month()?;
        let account = opts.billing_account_id.clone().unwrap_or_else(|| {
            let id = request
                .task
                .service_account_id
                .map(|s| s.to_string())
                .unwrap_or_default();
            format!("demo-{}", id.get(..8).unwrap_or(&id))
        });
        for day in days(month, Utc::now().date_naive()) {
            if request.cancel.is_cancelled() {
                return Err(PluginError::Stopped);
            }
            for record in day_records(&opts, &account, day) {
                out.send(Item::Cost(Box::new(record))).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month(s: &str) -> Month {
        s.parse().expect("month")
    }

    #[test]
    fn a_past_month_has_every_day_and_the_documented_total() {
        let opts = DemoBillingOptions::default();
        let today = NaiveDate::from_ymd_opt(2026, 1, 15).expect("date");
        let sept: Vec<_> = days(month("2024-09"), today).collect();
        assert_eq!(sept.len(), 30);
        let total: Decimal = sept
            .iter()
            .flat_map(|d| day_records(&opts, "a", *d))
            .map(|r| r.billed_cost)
            .sum();
        // 1.25 × 30 days × (1+2+3+4) × (1+2)
        assert_eq!(total, Decimal::new(112_500, 2));
    }

    #[test]
    fn the_current_month_stops_at_today() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 15).expect("date");
        assert_eq!(days(month("2026-01"), today).count(), 15);
        assert_eq!(days(month("2026-02"), today).count(), 0);
    }

    #[test]
    fn unknown_options_are_refused() {
        assert!(DemoBilling::options(&json!({"services": 2, "unit_cost": "0.5"})).is_ok());
        assert!(DemoBilling::options(&json!({"resources": 2})).is_err());
    }
}
