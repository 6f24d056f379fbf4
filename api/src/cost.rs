//! `/v1/costs`, `/v1/dashboards/billing` and `/v1/projects/{id}/billing`: what billing jobs
//! imported, summed per currency.
//!
//! The domain total is the sum over every billing account (each its own service account); a
//! project's total sums the accounts of that project. Amounts are decimal strings.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{NaiveDate, Utc};
use gleaner_common::billing::Month;
use gleaner_common::id::{ProjectId, ServiceAccountId};
use gleaner_common::model::Invalid;
use gleaner_common::store::cost::{self, CostPage, Dim, Filter, Summary, SummaryItem};
use gleaner_common::store::project;
use rust_decimal::Decimal;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiQuery, Auth, page_limit};
use crate::problem::{self, ApiError, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(summary))
        .routes(routes!(list))
        .routes(routes!(dashboard))
        .routes(routes!(project_billing))
}

/// Services a dashboard lists.
const TOP_SERVICES: usize = 10;

/// Cost records per page unless asked otherwise.
const DEFAULT_LIMIT: u64 = 100;

/// Declares a query with the filters every cost query takes besides its own fields. Not
/// `#[serde(flatten)]`: serde cannot combine it with `deny_unknown_fields`, and the errors of a
/// flattened field lose its name.
macro_rules! cost_query {
    ($(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize, IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        struct $name {
            $($(#[$fmeta])* $field: $ty,)*
            /// Only this cloud (FOCUS `ProviderName`: `AWS`, `Microsoft`, `demo`, ...).
            provider: Option<String>,
            /// Only the billing accounts (service accounts) of this project.
            project_id: Option<ProjectId>,
            /// Only this billing service account.
            service_account_id: Option<ServiceAccountId>,
            /// Only this `BillingAccountId`.
            billing_account: Option<String>,
            /// Only this service (`ServiceName`).
            service: Option<String>,
            /// Only this region (`RegionId`).
            region: Option<String>,
            /// Only amounts in this currency (ISO 4217).
            currency: Option<String>,
        }

        impl $name {
            /// The query's filters, within the projects `auth`'s key is limited to.
            fn filter(&self, auth: &Auth) -> Filter {
                Filter {
                    provider: self.provider.clone(),
                    project_id: self.project_id,
                    projects: auth.projects().map(<[_]>::to_vec),
                    service_account_id: self.service_account_id,
                    billing_account: self.billing_account.clone(),
                    service: self.service.clone(),
                    region: self.region.clone(),
                    currency: self.currency.as_ref().map(|c| c.to_ascii_uppercase()),
                }
            }
        }
    };
}

cost_query! {
    struct SummaryQuery {
        /// First day counted (`YYYY-MM-DD`); default: the first day of this month (UTC).
        #[param(value_type = Option<String>, example = "2024-09-01")]
        start: Option<NaiveDate>,
        /// First day not counted (exclusive); default: the first day of the month after
        /// `start`.
        #[param(value_type = Option<String>, example = "2024-10-01")]
        end: Option<NaiveDate>,
        /// Comma-separated dimensions: any of provider, project, service_account,
        /// billing_account, service, region, month, day. Empty: one total per currency.
        #[param(example = "month,provider")]
        group_by: Option<String>,
    }
}

/// A summary: one item per group and currency.
#[derive(Debug, Serialize, ToSchema)]
struct SummaryList {
    items: Vec<SummaryItem>,
}

/// The days from `start` to `end`, defaulting to the current month; `end` after `start`.
fn range(
    start: Option<NaiveDate>,
    end: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let month = Month::current();
    let start = start.unwrap_or(month.first_day());
    let end = end.unwrap_or_else(|| Month::of(start).next().first_day());
    if end <= start {
        return Err(Invalid::new("end", "must be after start (end is exclusive)").into());
    }
    Ok((start, end))
}

fn group_by(raw: Option<&str>) -> Result<Vec<Dim>, ApiError> {
    let mut dims = Vec::new();
    for name in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let dim: Dim = name.parse().map_err(|e: cost::UnknownDim| {
            ApiError::from(Invalid::new("group_by", e.to_string()))
        })?;
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    Ok(dims)
}

/// The longest range a summary adds up: its work grows with the days it reads.
const MAX_SUMMARY_DAYS: i64 = 1_096;
/// The most groups a summary answers with: past this it is an export, which `GET /v1/costs`
/// pages through.
const MAX_SUMMARY_GROUPS: u64 = 10_000;

/// Sums costs from `start` to `end` per `group_by` and currency. A range of at most 1,096 days
/// (three years) and at most 10,000 groups; beyond either, 400 naming `end` or `group_by`.
#[utoipa::path(
    get, path = "/v1/costs/summary", operation_id = "cost_summary", tag = "billing",
    params(SummaryQuery),
    responses(
        (status = 200, description = "Sums per group and currency", body = SummaryList),
        (status = 400, description = "A bad date, range or dimension; a range over 1,096 days \
            (`end`) or more than 10,000 groups (`group_by`)",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn summary(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<SummaryList>> {
    let (start, end) = range(q.start, q.end)?;
    if (end - start).num_days() > MAX_SUMMARY_DAYS {
        return Err(Invalid::new(
            "end",
            format!(
                "a summary spans at most {MAX_SUMMARY_DAYS} days (three years): ask for several"
            ),
        )
        .into());
    }
    let query = Summary {
        start,
        end,
        group_by: group_by(q.group_by.as_deref())?,
        filter: q.filter(&auth),
        // One more than shown, to tell a full answer from a cut one.
        max_groups: Some(MAX_SUMMARY_GROUPS + 1),
    };
    let items = cost::summary(&state.db, auth.domain(), &query).await?;
    if items.len() as u64 > MAX_SUMMARY_GROUPS {
        return Err(Invalid::new(
            "group_by",
            format!(
                "more than {MAX_SUMMARY_GROUPS} groups: group by fewer dimensions, filter, or narrow start and end (or page through GET /v1/costs)"
            ),
        )
        .into());
    }
    Ok(Json(SummaryList { items }))
}

cost_query! {
    struct ListQuery {
        /// First charge day listed (`YYYY-MM-DD`); default: the first day of this month.
        #[param(value_type = Option<String>)]
        start: Option<NaiveDate>,
        /// First charge day not listed; default: the first day of the month after `start`.
        #[param(value_type = Option<String>)]
        end: Option<NaiveDate>,
        /// Records per page, 1–1000 (default 100).
        #[param(minimum = 1, maximum = 1000)]
        limit: Option<u64>,
        /// The previous page's `next_cursor`.
        cursor: Option<String>,
    }
}

/// Lists cost records, a page at a time.
#[utoipa::path(
    get, path = "/v1/costs", operation_id = "list_costs", tag = "billing",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of cost records", body = CostPage),
        (status = 400, description = "A bad date, range or cursor",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<CostPage>> {
    let limit = page_limit(q.limit, DEFAULT_LIMIT)?;
    let range = range(q.start, q.end)?;
    // A cursor is input, like a date: one that is not a previous page's is a 400 naming it, as
    // documented, not a 404 of some object.
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            c.trim()
                .parse::<i64>()
                .map_err(|_| Invalid::new("cursor", "is not a `next_cursor` of this listing"))
        })
        .transpose()?;
    Ok(Json(
        cost::list(
            &state.db,
            auth.domain(),
            range,
            &q.filter(&auth),
            cursor,
            limit,
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DashboardQuery {
    /// The month shown (`YYYY-MM`); default: this month (UTC).
    #[param(value_type = Option<String>, example = "2024-09")]
    month: Option<Month>,
}

/// A total in one currency.
#[derive(Debug, Serialize, ToSchema)]
struct Total {
    currency: String,
    #[schema(value_type = String)]
    billed_cost: Decimal,
    #[schema(value_type = String)]
    effective_cost: Decimal,
}

/// A billing dashboard: the month, the month before, and where the money went.
#[derive(Debug, Serialize, ToSchema)]
struct Dashboard {
    #[schema(value_type = String, example = "2024-09")]
    month: Month,
    /// The month's total per currency (to date, for the current month).
    this_month: Vec<Total>,
    /// The previous month's total per currency.
    last_month: Vec<Total>,
    /// The month's costs per day, oldest first: `{day, currency, billed_cost, effective_cost}`.
    month_to_date_trend: Vec<SummaryItem>,
    /// The month's costs per cloud: `{provider, ...}`.
    by_provider: Vec<SummaryItem>,
    /// The domain dashboard: the month's costs per project, `{project, project_name, ...}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    by_project: Option<Vec<SummaryItem>>,
    /// A project's dashboard: the month's costs per billing service account.
    #[serde(skip_serializing_if = "Option::is_none")]
    by_service_account: Option<Vec<SummaryItem>>,
    /// The month's most expensive services (by billed cost), at most 10 per currency.
    top_services: Vec<SummaryItem>,
}

fn totals(items: Vec<SummaryItem>) -> Vec<Total> {
    items
        .into_iter()
        .map(|i| Total {
            currency: i.currency,
            billed_cost: i.billed_cost,
            effective_cost: i.effective_cost,
        })
        .collect()
}

async fn build_dashboard(
    db: &impl ConnectionTrait,
    auth: &Auth,
    month: Month,
    project: Option<ProjectId>,
) -> ApiResult<Dashboard> {
    let domain = auth.domain();
    let filter = Filter {
        project_id: project,
        projects: auth.projects().map(<[_]>::to_vec),
        ..Filter::default()
    };
    let of = |start: Month, group_by: Vec<Dim>| Summary {
        start: start.first_day(),
        end: start.next().first_day(),
        group_by,
        filter: filter.clone(),
        max_groups: None,
    };
    let this_month = cost::summary(db, domain, &of(month, vec![])).await?;
    let last_month = cost::summary(db, domain, &of(month.previous(), vec![])).await?;
    let trend = cost::summary(db, domain, &of(month, vec![Dim::Day])).await?;
    let by_provider = cost::summary(db, domain, &of(month, vec![Dim::Provider])).await?;
    let mut services = cost::summary(db, domain, &of(month, vec![Dim::Service])).await?;
    services.sort_by(|a, b| {
        a.currency
            .cmp(&b.currency)
            .then(b.billed_cost.cmp(&a.billed_cost))
    });
    let mut per_currency: std::collections::HashMap<String, usize> = Default::default();
    services.retain(|s| {
        let n = per_currency.entry(s.currency.clone()).or_default();
        *n += 1;
        *n <= TOP_SERVICES
    });
    let (by_project, by_service_account) = match project {
        None => {
            let mut items = cost::summary(db, domain, &of(month, vec![Dim::Project])).await?;
            let projects = project::list(db, domain, auth.projects()).await?;
            for item in &mut items {
                let id = item.keys.get("project").cloned().flatten();
                let name = projects
                    .iter()
                    .find(|p| Some(p.id.to_string()) == id)
                    .map(|p| p.name.to_string());
                item.keys.insert("project_name", name);
            }
            (Some(items), None)
        }
        Some(_) => (
            None,
            Some(cost::summary(db, domain, &of(month, vec![Dim::ServiceAccount])).await?),
        ),
    };
    Ok(Dashboard {
        month,
        this_month: totals(this_month),
        last_month: totals(last_month),
        month_to_date_trend: trend,
        by_provider,
        by_project,
        by_service_account,
        top_services: services,
    })
}

/// The domain's billing dashboard: totals over every billing account.
#[utoipa::path(
    get, path = "/v1/dashboards/billing", operation_id = "billing_dashboard", tag = "billing",
    params(DashboardQuery),
    responses(
        (status = 200, description = "The dashboard", body = Dashboard),
        (status = 400, description = "A bad month",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn dashboard(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<DashboardQuery>,
) -> ApiResult<Json<Dashboard>> {
    let month = q
        .month
        .unwrap_or_else(|| Month::of(Utc::now().date_naive()));
    Ok(Json(build_dashboard(&state.db, &auth, month, None).await?))
}

/// A project's billing dashboard: totals over the billing accounts of the project.
#[utoipa::path(
    get, path = "/v1/projects/{id}/billing", operation_id = "project_billing", tag = "billing",
    params(("id" = ProjectId, Path, description = "The project's id"), DashboardQuery),
    responses(
        (status = 200, description = "The project's dashboard", body = Dashboard),
        (status = 400, description = "A bad month",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No project with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn project_billing(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DashboardQuery>,
) -> ApiResult<Json<Dashboard>> {
    let id = crate::project::visible(&state, &auth, &id).await?.id;
    let month = q
        .month
        .unwrap_or_else(|| Month::of(Utc::now().date_naive()));
    Ok(Json(
        build_dashboard(&state.db, &auth, month, Some(id)).await?,
    ))
}
