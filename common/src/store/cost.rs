//! Reading costs: sums grouped by any of their dimensions, from the rollups written with each
//! month's load, and the cost rows themselves, paged.
//!
//! A summary over whole months reads `cost_monthly`, any other one `cost_daily`: both hold sums
//! per service account, provider, billing account, service, region and currency, so no query
//! scans `costs`. Amounts are summed by PostgreSQL's `numeric`, exactly, and per currency.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value as DbValue};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Result};
use crate::id::{DomainId, ProjectId, ServiceAccountId};

/// A dimension costs are grouped by; its name is the key in each summary item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dim {
    Provider,
    Project,
    ServiceAccount,
    BillingAccount,
    Service,
    Region,
    Month,
    Day,
}

impl Dim {
    pub const ALL: [Dim; 8] = [
        Dim::Provider,
        Dim::Project,
        Dim::ServiceAccount,
        Dim::BillingAccount,
        Dim::Service,
        Dim::Region,
        Dim::Month,
        Dim::Day,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Dim::Provider => "provider",
            Dim::Project => "project",
            Dim::ServiceAccount => "service_account",
            Dim::BillingAccount => "billing_account",
            Dim::Service => "service",
            Dim::Region => "region",
            Dim::Month => "month",
            Dim::Day => "day",
        }
    }

    /// Its value in a rollup row `r` (joined to its service account `sa`), as text.
    const fn expr(self) -> &'static str {
        match self {
            Dim::Provider => "r.provider",
            Dim::Project => "sa.project_id::text",
            Dim::ServiceAccount => "r.service_account_id::text",
            Dim::BillingAccount => "r.billing_account_id",
            Dim::Service => "r.service_name",
            Dim::Region => "r.region_id",
            Dim::Month => "to_char(r.month, 'YYYY-MM')",
            Dim::Day => "to_char(r.day, 'YYYY-MM-DD')",
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown dimension's name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown dimension `{0}`; group by any of provider, project, service_account, billing_account, service, region, month, day"
)]
pub struct UnknownDim(pub String);

impl FromStr for Dim {
    type Err = UnknownDim;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Dim::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDim(s.to_owned()))
    }
}

/// Which costs to count; every field narrows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub provider: Option<String>,
    pub project_id: Option<ProjectId>,
    pub service_account_id: Option<ServiceAccountId>,
    pub billing_account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    pub currency: Option<String>,
}

/// A summary: costs charged from `start` (included) to `end` (excluded), summed per
/// `group_by` and currency.
#[derive(Clone, Debug)]
pub struct Summary {
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub group_by: Vec<Dim>,
    pub filter: Filter,
}

/// One group's sums. The group's keys are named after the dimensions.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct SummaryItem {
    /// One key per `group_by` dimension (`provider`, `month`, ...), null where the records
    /// have no value (a record without a region).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub keys: BTreeMap<&'static str, Option<String>>,
    pub currency: String,
    /// A decimal, as a string.
    #[schema(value_type = String, example = "3.71561541189")]
    pub billed_cost: Decimal,
    #[schema(value_type = String, example = "1.80063469386")]
    pub effective_cost: Decimal,
}

fn postgres_only(db: &impl ConnectionTrait) -> Result<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        Ok(())
    } else {
        Err(Error::Unsupported(
            "billing data is stored in PostgreSQL only for now: run Gleaner in the distributed mode".into(),
        ))
    }
}

/// Binds values as `$n` in the order the SQL text asks for them.
#[derive(Default)]
struct Params(Vec<DbValue>);

impl Params {
    fn push(&mut self, v: impl Into<DbValue>) -> String {
        self.0.push(v.into());
        format!("${}", self.0.len())
    }
}

/// The conditions of `filter` on a rollup row `r`, each starting with ` AND`.
fn conditions(filter: &Filter, p: &mut Params) -> String {
    let mut sql = String::new();
    let text = |col: &str, v: &Option<String>, sql: &mut String, p: &mut Params| {
        if let Some(v) = v {
            let n = p.push(v.clone());
            sql.push_str(&format!(" AND {col} = {n}"));
        }
    };
    text("r.provider", &filter.provider, &mut sql, p);
    text("r.billing_account_id", &filter.billing_account, &mut sql, p);
    text("r.service_name", &filter.service, &mut sql, p);
    text("r.region_id", &filter.region, &mut sql, p);
    text("r.currency", &filter.currency, &mut sql, p);
    if let Some(sa) = filter.service_account_id {
        let n = p.push(sa.as_uuid());
        sql.push_str(&format!(" AND r.service_account_id = {n}"));
    }
    if let Some(project) = filter.project_id {
        let n = p.push(project.as_uuid());
        sql.push_str(&format!(
            " AND r.service_account_id IN (SELECT id FROM service_accounts WHERE project_id = {n})"
        ));
    }
    sql
}

/// Sums costs per group and currency, ordered by the groups' keys.
///
/// # Errors
/// [`Error::Unsupported`] on SQLite; database errors.
pub async fn summary(
    db: &impl ConnectionTrait,
    domain: DomainId,
    q: &Summary,
) -> Result<Vec<SummaryItem>> {
    postgres_only(db)?;
    let whole_months = q.start.day() == 1 && q.end.day() == 1 && !q.group_by.contains(&Dim::Day);
    let (table, column) = if whole_months {
        ("cost_monthly", "month")
    } else {
        ("cost_daily", "day")
    };
    let mut p = Params::default();
    let d = p.push(domain.as_uuid());
    let s = p.push(q.start);
    let e = p.push(q.end);
    let mut keys: Vec<String> = q
        .group_by
        .iter()
        .enumerate()
        .map(|(i, dim)| format!("{} AS k{i}", dim.expr()))
        .collect();
    keys.push("r.currency".into());
    let groups: Vec<String> = (1..=keys.len()).map(|n| n.to_string()).collect();
    let join = if q.group_by.contains(&Dim::Project) {
        " JOIN service_accounts sa ON sa.id = r.service_account_id"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {keys}, sum(r.billed_cost) AS billed_cost, sum(r.effective_cost) AS effective_cost
         FROM {table} r{join}
         WHERE r.domain_id = {d} AND r.{column} >= {s} AND r.{column} < {e}{conditions}
         GROUP BY {groups} ORDER BY {groups}",
        keys = keys.join(", "),
        groups = groups.join(", "),
        conditions = conditions(&q.filter, &mut p),
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            p.0,
        ))
        .await?;
    rows.iter().map(|r| item(r, &q.group_by)).collect()
}

fn item(r: &QueryResult, dims: &[Dim]) -> Result<SummaryItem> {
    let mut keys = BTreeMap::new();
    for (i, dim) in dims.iter().enumerate() {
        keys.insert(
            dim.as_str(),
            r.try_get::<Option<String>>("", &format!("k{i}"))?,
        );
    }
    Ok(SummaryItem {
        keys,
        currency: r.try_get("", "currency")?,
        billed_cost: r.try_get("", "billed_cost")?,
        effective_cost: r.try_get("", "effective_cost")?,
    })
}

/// One cost record as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Cost {
    pub id: i64,
    pub service_account_id: ServiceAccountId,
    pub job_id: uuid::Uuid,
    pub charge_period_start: DateTime<Utc>,
    pub charge_period_end: Option<DateTime<Utc>>,
    pub billing_period_start: Option<DateTime<Utc>>,
    pub provider: String,
    pub billing_account_id: String,
    pub billing_account_name: Option<String>,
    pub sub_account_id: Option<String>,
    pub sub_account_name: Option<String>,
    pub service_name: Option<String>,
    pub service_category: Option<String>,
    pub region_id: Option<String>,
    pub resource_id: Option<String>,
    pub charge_category: Option<String>,
    pub currency: String,
    #[schema(value_type = String)]
    pub billed_cost: Decimal,
    #[schema(value_type = String)]
    pub effective_cost: Decimal,
    #[schema(value_type = String)]
    pub list_cost: Decimal,
    #[schema(value_type = Option<String>)]
    pub consumed_quantity: Option<Decimal>,
    pub consumed_unit: Option<String>,
    #[schema(value_type = Option<String>)]
    pub pricing_quantity: Option<Decimal>,
    pub pricing_unit: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Value>,
}

/// A page of cost records.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CostPage {
    pub items: Vec<Cost>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Cost records charged from `start` to `end` (excluded) matching `filter`, in id order,
/// after `cursor`.
///
/// # Errors
/// [`Error::Unsupported`] on SQLite; database errors.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    (start, end): (NaiveDate, NaiveDate),
    filter: &Filter,
    cursor: Option<i64>,
    limit: u64,
) -> Result<CostPage> {
    postgres_only(db)?;
    let mut p = Params::default();
    let d = p.push(domain.as_uuid());
    let s = p.push(start);
    let e = p.push(end);
    let after = p.push(cursor.unwrap_or(0));
    let conditions = conditions(filter, &mut p);
    let n = p.push(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1));
    let sql = format!(
        "SELECT r.id, r.service_account_id, r.job_id, r.charge_period_start, r.charge_period_end,
            r.billing_period_start, r.provider, r.billing_account_id, r.billing_account_name,
            r.sub_account_id, r.sub_account_name, r.service_name, r.service_category, r.region_id,
            r.resource_id, r.charge_category, r.currency, r.billed_cost, r.effective_cost,
            r.list_cost, r.consumed_quantity, r.consumed_unit, r.pricing_quantity,
            r.pricing_unit, r.tags
         FROM costs r
         WHERE r.domain_id = {d} AND r.day >= {s} AND r.day < {e} AND r.id > {after}{conditions}
         ORDER BY r.id LIMIT {n}"
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            p.0,
        ))
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let time = |c: &str| -> Result<Option<DateTime<Utc>>> {
            Ok(
                r.try_get::<Option<sea_orm::prelude::DateTimeWithTimeZone>>("", c)?
                    .map(|t| t.to_utc()),
            )
        };
        items.push(Cost {
            id: r.try_get("", "id")?,
            service_account_id: r.try_get::<uuid::Uuid>("", "service_account_id")?.into(),
            job_id: r.try_get("", "job_id")?,
            charge_period_start: time("charge_period_start")?
                .ok_or_else(|| Error::Corrupt("a cost without charge_period_start".into()))?,
            charge_period_end: time("charge_period_end")?,
            billing_period_start: time("billing_period_start")?,
            provider: r.try_get("", "provider")?,
            billing_account_id: r.try_get("", "billing_account_id")?,
            billing_account_name: r.try_get("", "billing_account_name")?,
            sub_account_id: r.try_get("", "sub_account_id")?,
            sub_account_name: r.try_get("", "sub_account_name")?,
            service_name: r.try_get("", "service_name")?,
            service_category: r.try_get("", "service_category")?,
            region_id: r.try_get("", "region_id")?,
            resource_id: r.try_get("", "resource_id")?,
            charge_category: r.try_get("", "charge_category")?,
            currency: r.try_get("", "currency")?,
            billed_cost: r.try_get("", "billed_cost")?,
            effective_cost: r.try_get("", "effective_cost")?,
            list_cost: r.try_get("", "list_cost")?,
            consumed_quantity: r.try_get("", "consumed_quantity")?,
            consumed_unit: r.try_get("", "consumed_unit")?,
            pricing_quantity: r.try_get("", "pricing_quantity")?,
            pricing_unit: r.try_get("", "pricing_unit")?,
            tags: r.try_get("", "tags")?,
        });
    }
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        items.last().map(|c| c.id.to_string())
    } else {
        None
    };
    Ok(CostPage { items, next_cursor })
}
