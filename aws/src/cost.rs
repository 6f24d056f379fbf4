//! The `aws-cost-explorer` cost data source: an account's daily costs from Cost Explorer's
//! GetCostAndUsage, grouped by service and by region (or by linked account), with
//! UnblendedCost as the billed cost and AmortizedCost as the effective cost.
//!
//! AWS charges each GetCostAndUsage request (USD 0.01 each in 2026, pages included): a task asks
//! for one month, one request per page of results, paced by
//! `GLEANER_AWS__COST_EXPLORER_INTERVAL`.

use std::str::FromStr as _;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_costexplorer::types::{
    DateInterval, Granularity, GroupDefinition, GroupDefinitionType, MetricValue, ResultByTime,
};
use chrono::{Datelike as _, Duration, NaiveDate, TimeZone as _, Utc};
use gleaner_common::access::Access;
use gleaner_common::billing::CostItem;
use gleaner_common::config::AwsSettings;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_worker::plugin::{CollectRequest, Item, ItemError, ItemSender, Plugin, PluginError};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Failure, classify};
use crate::inventory::endpoint_schema;
use crate::session::{Endpoint, Identity, Session, open_checked};

const UNBLENDED: &str = "UnblendedCost";
const AMORTIZED: &str = "AmortizedCost";

/// The second dimension costs are grouped by, beside SERVICE.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupBy {
    #[default]
    Region,
    LinkedAccount,
}

/// The options of an `aws-cost-explorer` data source.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostOptions {
    #[serde(default)]
    pub group_by: GroupBy,
    pub endpoint_url: Option<String>,
}

/// The `aws-cost-explorer` cost data source.
pub struct CostExplorer {
    info: PluginInfo,
    access: Arc<Access>,
    settings: AwsSettings,
}

impl CostExplorer {
    /// The plugin, calling only the endpoints `access` allows.
    #[must_use]
    pub fn new(access: Arc<Access>, settings: AwsSettings) -> Self {
        Self {
            access,
            settings,
            info: PluginInfo {
                id: "aws-cost-explorer".into(),
                name: "AWS Cost Explorer".into(),
                description: "Daily costs of an AWS account by service and region (or linked account), from Cost Explorer. AWS charges each request.".into(),
                kind: PluginKind::CostDataSource,
                provider: "aws".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: Vec::new(),
                metrics: Vec::new(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "group_by": {"enum": ["REGION", "LINKED_ACCOUNT"],
                            "description": "the dimension costs are grouped by beside SERVICE (default REGION); LINKED_ACCOUNT on a payer account gives each member account's costs"},
                        "endpoint_url": endpoint_schema()
                    },
                    "additionalProperties": false
                }),
            },
        }
    }

    async fn session(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(CostOptions, Session), PluginError> {
        open_checked(&self.info, &self.access, &self.settings, options, secret).await
    }
}

#[async_trait]
impl Plugin for CostExplorer {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        let (opts, session) = self.session(options, secret).await?;
        session.identity().await?;
        // One day, to learn whether Cost Explorer answers these credentials (one request, which
        // AWS charges).
        let day = Utc::now().date_naive() - Duration::days(2);
        page(&session, &opts, day, day + Duration::days(1), None)
            .await
            .map(drop)
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let month = request.task.billing_month()?;
        let (opts, session) = self.session(&request.options, &request.secret).await?;
        let me = session.identity().await?;
        let start = month.first_day();
        // Cost Explorer has nothing after today.
        let tomorrow = Utc::now().date_naive() + Duration::days(1);
        let end = month.next().first_day().min(tomorrow);
        if start >= end {
            return Ok(());
        }
        let mut token: Option<String> = None;
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.cost_explorer_interval) => {}
                    () = request.cancel.cancelled() => return Err(PluginError::Stopped),
                }
            }
            first = false;
            let answer = page(&session, &opts, start, end, token.take()).await?;
            for by_time in answer.results_by_time() {
                for item in items(&me, opts.group_by, by_time) {
                    out.send(item).await?;
                }
            }
            match answer.next_page_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(()),
            }
        }
    }
}

/// One page of GetCostAndUsage for `[start, end)`.
async fn page(
    session: &Session,
    opts: &CostOptions,
    start: NaiveDate,
    end: NaiveDate,
    token: Option<String>,
) -> Result<aws_sdk_costexplorer::operation::get_cost_and_usage::GetCostAndUsageOutput, PluginError>
{
    let ce = session.cost_explorer(session.home());
    let second = match opts.group_by {
        GroupBy::Region => "REGION",
        GroupBy::LinkedAccount => "LINKED_ACCOUNT",
    };
    let group = |key: &str| {
        GroupDefinition::builder()
            .r#type(GroupDefinitionType::Dimension)
            .key(key)
            .build()
    };
    let period = DateInterval::builder()
        .start(start.format("%Y-%m-%d").to_string())
        .end(end.format("%Y-%m-%d").to_string())
        .build()
        .map_err(|e| PluginError::Permanent(format!("bad period: {e}")))?;
    let _permit = session.call().await;
    ce.get_cost_and_usage()
        .time_period(period)
        .granularity(Granularity::Daily)
        .metrics(UNBLENDED)
        .metrics(AMORTIZED)
        .group_by(group("SERVICE"))
        .group_by(group(second))
        .set_next_page_token(token)
        .send()
        .await
        .map_err(|e| match classify(e) {
            Failure::Transient(w) => PluginError::Transient(format!("ce:GetCostAndUsage: {w}")),
            Failure::Denied(w) | Failure::Gone(w) | Failure::Other(w) => {
                PluginError::Permanent(format!("ce:GetCostAndUsage: {w}"))
            }
        })
}

/// The cost records of one day, one per group; a group whose amounts do not parse is an item
/// error.
fn items(me: &Identity, group_by: GroupBy, by_time: &ResultByTime) -> Vec<Item> {
    let day = by_time
        .time_period()
        .and_then(|p| NaiveDate::parse_from_str(p.start(), "%Y-%m-%d").ok());
    let Some(day) = day else {
        return vec![Item::Error(ItemError {
            resource_type: None,
            resource_key: None,
            message: format!("a result without a valid day: {:?}", by_time.time_period()),
        })];
    };
    let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
    let month_start = Utc.from_utc_datetime(
        &day.with_day0(0)
            .unwrap_or(day)
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default(),
    );
    let mut out = Vec::new();
    for group in by_time.groups() {
        let keys = group.keys();
        let service = keys.first().cloned();
        let second = keys.get(1).cloned();
        let metrics = group.metrics();
        let amount = |name: &str| metrics.and_then(|m| m.get(name)).map(parse);
        let parsed = match (amount(UNBLENDED), amount(AMORTIZED)) {
            (Some(Ok(billed)), Some(Ok(effective))) => billed.zip_unit(effective),
            (Some(Ok(billed)), None) => Ok((billed.0, billed.0, billed.1)),
            (billed, effective) => Err(format!(
                "{day} {}: amounts that are not decimals: {billed:?} {effective:?}",
                keys.join("/")
            )),
        };
        let (billed, effective, currency) = match parsed {
            Ok(amounts) => amounts,
            Err(message) => {
                out.push(Item::Error(ItemError {
                    resource_type: None,
                    resource_key: None,
                    message,
                }));
                continue;
            }
        };
        let (region, sub_account) = match group_by {
            GroupBy::Region => (second, me.account.clone()),
            GroupBy::LinkedAccount => (None, second.unwrap_or_else(|| me.account.clone())),
        };
        out.push(Item::Cost(Box::new(CostItem {
            charge_period_start: start,
            charge_period_end: Some(start + Duration::days(1)),
            billing_period_start: Some(month_start),
            provider: "AWS".into(),
            billing_account_id: me.account.clone(),
            billing_account_name: None,
            sub_account_id: Some(sub_account),
            sub_account_name: None,
            service_name: service,
            service_category: None,
            region_id: region.filter(|r| !r.is_empty() && r != "NoRegion"),
            resource_id: None,
            charge_category: Some("Usage".into()),
            usage_type: None,
            currency,
            billed_cost: billed,
            effective_cost: effective,
            // Cost Explorer has no list prices.
            list_cost: Decimal::ZERO,
            consumed_quantity: None,
            consumed_unit: None,
            pricing_quantity: None,
            pricing_unit: None,
            tags: None,
        })));
    }
    out
}

/// An amount and its currency.
#[derive(Debug)]
struct Amount(Decimal, String);

impl Amount {
    /// Billed and effective amounts of one currency.
    fn zip_unit(self, effective: Amount) -> Result<(Decimal, Decimal, String), String> {
        if self.1 == effective.1 {
            Ok((self.0, effective.0, self.1))
        } else {
            Err(format!(
                "the billed and effective costs are in different currencies ({} and {})",
                self.1, effective.1
            ))
        }
    }
}

/// An amount as Cost Explorer writes it: a decimal string (sometimes in E notation).
fn parse(m: &MetricValue) -> Result<Amount, String> {
    let text = m.amount().unwrap_or("0");
    let amount = Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|e| format!("`{text}`: {e}"))?;
    Ok(Amount(amount, m.unit().unwrap_or("USD").to_owned()))
}

impl Endpoint for CostOptions {
    fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_costexplorer::types::{DateInterval, Group};
    use rust_decimal::Decimal;

    use super::*;

    fn metric(amount: &str) -> MetricValue {
        MetricValue::builder().amount(amount).unit("USD").build()
    }

    #[test]
    fn groups_become_exact_daily_costs() {
        let me = Identity {
            account: "123456789012".into(),
            partition: "aws".into(),
        };
        let day = ResultByTime::builder()
            .time_period(
                DateInterval::builder()
                    .start("2024-09-03")
                    .end("2024-09-04")
                    .build()
                    .unwrap(),
            )
            .groups(
                Group::builder()
                    .keys("Amazon Elastic Compute Cloud - Compute")
                    .keys("us-east-1")
                    .metrics(UNBLENDED, metric("12.3456789012"))
                    .metrics(AMORTIZED, metric("1.2E-3"))
                    .build(),
            )
            .groups(
                Group::builder()
                    .keys("Tax")
                    .keys("NoRegion")
                    .metrics(UNBLENDED, metric("not a number"))
                    .build(),
            )
            .build();
        let items = items(&me, GroupBy::Region, &day);
        let Item::Cost(cost) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(
            cost.billed_cost,
            Decimal::from_str("12.3456789012").unwrap()
        );
        assert_eq!(cost.effective_cost, Decimal::from_str("0.0012").unwrap());
        assert_eq!(cost.region_id.as_deref(), Some("us-east-1"));
        assert_eq!(cost.sub_account_id.as_deref(), Some("123456789012"));
        assert_eq!(
            cost.charge_period_start.to_rfc3339(),
            "2024-09-03T00:00:00+00:00"
        );
        assert_eq!(
            cost.billing_period_start.unwrap().to_rfc3339(),
            "2024-09-01T00:00:00+00:00"
        );
        assert!(
            matches!(&items[1], Item::Error(e) if e.message.contains("not a number")),
            "{items:?}"
        );
    }
}
