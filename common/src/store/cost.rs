//! Reading costs: sums grouped by any of their dimensions, from the rollups written with each
//! month's load, and the cost rows themselves, paged.
//!
//! A summary over whole months reads `cost_account_monthly` (sums per account and month); when it
//! groups or filters by service or by region, `cost_service_monthly` or `cost_region_monthly`
//! (PostgreSQL), and by both (or on SQLite) `cost_monthly`; any other one reads `cost_daily`.
//! No query scans `costs`. Amounts are summed exactly and per currency: by PostgreSQL's `numeric`, or,
//! on SQLite (which keeps them as decimal text), here with `rust_decimal`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Params, Result};
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
    /// Only the costs of these projects' accounts (an API key limited to them).
    pub projects: Option<Vec<ProjectId>>,
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
    /// Groups returned at most (the first ones in order); `None`: all.
    pub max_groups: Option<u64>,
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
    if let Some(projects) = &filter.projects {
        // One parameter per project: a key is limited to a few.
        let list: Vec<String> = projects.iter().map(|pr| p.push(pr.as_uuid())).collect();
        let list = if list.is_empty() {
            "NULL".to_owned()
        } else {
            list.join(", ")
        };
        sql.push_str(&format!(
            " AND r.service_account_id IN \
             (SELECT id FROM service_accounts WHERE project_id IN ({list}))"
        ));
    }
    sql
}

/// Sums costs per group and currency, ordered by the groups' keys (nulls last).
///
/// # Errors
/// Database errors.
pub async fn summary(
    db: &impl ConnectionTrait,
    domain: DomainId,
    q: &Summary,
) -> Result<Vec<SummaryItem>> {
    let backend = db.get_database_backend();
    let (table, column) = rollup_for(q, backend);
    let mut p = Params::new(backend);
    let d = p.push(domain.as_uuid());
    let s = p.push(q.start);
    let e = p.push(q.end);
    if backend == DbBackend::Sqlite {
        return summary_sqlite(db, q, (table, column), p, [d, s, e]).await;
    }
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
        // As text: sqlx reads a `numeric` zero as a plain 0, dropping its scale (`0.00000000000`
        // would show as `0`).
        "SELECT {keys}, sum(r.billed_cost)::text AS billed_cost,
            sum(r.effective_cost)::text AS effective_cost
         FROM {table} r{join}
         WHERE r.domain_id = {d} AND r.{column} >= {s} AND r.{column} < {e}{conditions}
         GROUP BY {groups} ORDER BY {groups}{limit}",
        limit = q
            .max_groups
            .map(|n| format!(" LIMIT {n}"))
            .unwrap_or_default(),
        keys = keys.join(", "),
        groups = groups.join(", "),
        conditions = conditions(&q.filter, &mut p),
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    rows.iter().map(|r| item(r, &q.group_by)).collect()
}

/// The smallest rollup that answers `q`, and its time column. PostgreSQL has monthly rollups
/// by service and by region besides SQLite's (migration 21).
fn rollup_for(q: &Summary, backend: DbBackend) -> (&'static str, &'static str) {
    let whole_months = q.start.day() == 1 && q.end.day() == 1 && !q.group_by.contains(&Dim::Day);
    if !whole_months {
        return ("cost_daily", "day");
    }
    let by_service = q.group_by.contains(&Dim::Service) || q.filter.service.is_some();
    let by_region = q.group_by.contains(&Dim::Region) || q.filter.region.is_some();
    match (by_service, by_region) {
        (false, false) => ("cost_account_monthly", "month"),
        (true, false) if backend == DbBackend::Postgres => ("cost_service_monthly", "month"),
        (false, true) if backend == DbBackend::Postgres => ("cost_region_monthly", "month"),
        _ => ("cost_monthly", "month"),
    }
}

/// SQLite: reads the rollup rows and sums them here, exactly.
async fn summary_sqlite(
    db: &impl ConnectionTrait,
    q: &Summary,
    (table, column): (&str, &str),
    mut p: Params,
    [d, s, e]: [String; 3],
) -> Result<Vec<SummaryItem>> {
    let day = if table == "cost_daily" {
        "r.day"
    } else {
        "NULL"
    };
    let sql = format!(
        "SELECT r.service_account_id, sa.project_id, r.month, {day} AS day, r.provider,
            r.billing_account_id, r.service_name, r.region_id, r.currency, r.billed_cost,
            r.effective_cost
         FROM {table} r LEFT JOIN service_accounts sa ON sa.id = r.service_account_id
         WHERE r.domain_id = {d} AND r.{column} >= {s} AND r.{column} < {e}{conditions}",
        conditions = conditions(&q.filter, &mut p),
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            p.values,
        ))
        .await?;
    // Sorted as PostgreSQL sorts the groups: by each key, nulls last, then the currency.
    type Group = (Vec<(bool, String)>, String);
    let mut groups: BTreeMap<Group, (Decimal, Decimal)> = BTreeMap::new();
    for r in &rows {
        let text = |c: &str| r.try_get::<Option<String>>("", c);
        let uuid = |c: &str| -> Result<Option<String>> {
            Ok(r.try_get::<Option<uuid::Uuid>>("", c)?
                .map(|u| u.to_string()))
        };
        let date = |c: &str, f: &str| -> Result<Option<String>> {
            Ok(r.try_get::<Option<NaiveDate>>("", c)?
                .map(|d| d.format(f).to_string()))
        };
        let mut keys = Vec::with_capacity(q.group_by.len());
        for dim in &q.group_by {
            let v = match dim {
                Dim::Provider => text("provider")?,
                Dim::Project => uuid("project_id")?,
                Dim::ServiceAccount => uuid("service_account_id")?,
                Dim::BillingAccount => text("billing_account_id")?,
                Dim::Service => text("service_name")?,
                Dim::Region => text("region_id")?,
                Dim::Month => date("month", "%Y-%m")?,
                Dim::Day => date("day", "%Y-%m-%d")?,
            };
            keys.push((v.is_none(), v.unwrap_or_default()));
        }
        let sums = groups
            .entry((keys, r.try_get("", "currency")?))
            .or_default();
        sums.0 += decimal_text(r, "billed_cost")?;
        sums.1 += decimal_text(r, "effective_cost")?;
    }
    let kept = q
        .max_groups
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    Ok(groups
        .into_iter()
        .take(kept)
        .map(|((keys, currency), (billed, effective))| SummaryItem {
            keys: q
                .group_by
                .iter()
                .zip(keys)
                .map(|(dim, (null, v))| (dim.as_str(), (!null).then_some(v)))
                .collect(),
            currency,
            billed_cost: billed,
            effective_cost: effective,
        })
        .collect())
}

/// An amount SQLite keeps as decimal text.
fn decimal_text(r: &QueryResult, column: &str) -> Result<Decimal> {
    let text: String = r.try_get("", column)?;
    text.parse()
        .map_err(|e| Error::Corrupt(format!("{column} `{text}` is not a decimal: {e}")))
}

/// An amount read as text: SQLite keeps it so, and PostgreSQL's `numeric` is cast to it (sqlx
/// reads a `numeric` zero as a plain 0, dropping its scale).
fn amount(r: &QueryResult, column: &str) -> Result<Option<Decimal>> {
    match r.try_get::<Option<String>>("", column)? {
        None => Ok(None),
        Some(_) => decimal_text(r, column).map(Some),
    }
}

/// The amount columns of a cost row, as text in both backends ([`amount`]).
fn amount_columns(backend: DbBackend) -> String {
    let columns = [
        "billed_cost",
        "effective_cost",
        "list_cost",
        "consumed_quantity",
        "pricing_quantity",
    ];
    let cast: Vec<String> = columns
        .iter()
        .map(|c| match backend {
            DbBackend::Postgres => format!("r.{c}::text AS {c}"),
            _ => format!("r.{c}"),
        })
        .collect();
    cast.join(", ")
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
        billed_cost: decimal_text(r, "billed_cost")?,
        effective_cost: decimal_text(r, "effective_cost")?,
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
    pub usage_type: Option<String>,
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
/// Database errors.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    (start, end): (NaiveDate, NaiveDate),
    filter: &Filter,
    cursor: Option<i64>,
    limit: u64,
) -> Result<CostPage> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let d = p.push(domain.as_uuid());
    let s = p.push(start);
    let e = p.push(end);
    // A cost's month is the month of its day: naming it lets PostgreSQL read only the months'
    // partitions of `costs`.
    let first_month = p.push(crate::billing::Month::of(start).first_day());
    let after = p.push(cursor.unwrap_or(0));
    let conditions = conditions(filter, &mut p);
    let n = p.push(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1));
    let sql = format!(
        "SELECT r.id, r.service_account_id, r.job_id, r.charge_period_start, r.charge_period_end,
            r.billing_period_start, r.provider, r.billing_account_id, r.billing_account_name,
            r.sub_account_id, r.sub_account_name, r.service_name, r.service_category, r.region_id,
            r.resource_id, r.charge_category, r.usage_type, r.currency, {amounts}, r.consumed_unit,
            r.pricing_unit, r.tags
         FROM costs r
         WHERE r.domain_id = {d} AND r.month >= {first_month} AND r.month < {e}
           AND r.day >= {s} AND r.day < {e}
           AND r.id > {after}{conditions}
         ORDER BY r.id LIMIT {n}",
        amounts = amount_columns(backend),
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, p.values))
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
            usage_type: r.try_get("", "usage_type")?,
            currency: r.try_get("", "currency")?,
            billed_cost: amount(r, "billed_cost")?.unwrap_or_default(),
            effective_cost: amount(r, "effective_cost")?.unwrap_or_default(),
            list_cost: amount(r, "list_cost")?.unwrap_or_default(),
            consumed_quantity: amount(r, "consumed_quantity")?,
            consumed_unit: r.try_get("", "consumed_unit")?,
            pricing_quantity: amount(r, "pricing_quantity")?,
            pricing_unit: r.try_get("", "pricing_unit")?,
            tags: if backend == DbBackend::Postgres {
                r.try_get("", "tags")?
            } else {
                r.try_get::<Option<String>>("", "tags")?
                    .and_then(|t| serde_json::from_str(&t).ok())
            },
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
