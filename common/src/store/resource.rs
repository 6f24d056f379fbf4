//! Reading stored resources.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{Error, Result};
use crate::entity::{resource, resource_change};
use crate::id::{CollectorId, DomainId, JobId, ProjectId, ResourceId, ServiceAccountId};
use crate::model::{ChangeKind, ResourceState};

/// A resource as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Resource {
    pub id: ResourceId,
    pub provider: String,
    pub resource_type: String,
    pub resource_key: String,
    pub name: Option<String>,
    pub region: Option<String>,
    pub project_id: Option<ProjectId>,
    pub service_account_id: Option<ServiceAccountId>,
    pub collector_id: Option<CollectorId>,
    pub state: ResourceState,
    pub data: Value,
    pub created_job_id: Option<JobId>,
    pub updated_job_id: Option<JobId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Where its history and its metrics are.
    pub links: ResourceLinks,
}

/// The API paths of what belongs to a resource.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ResourceLinks {
    pub changes: String,
    /// The metric series stored for it; each is at `metrics/{metric}` below.
    pub metrics: String,
}

impl ResourceLinks {
    fn of(id: uuid::Uuid) -> Self {
        Self {
            changes: format!("/v1/resources/{id}/changes"),
            metrics: format!("/v1/resources/{id}/metrics"),
        }
    }
}

impl From<resource::Model> for Resource {
    fn from(m: resource::Model) -> Self {
        Self {
            id: m.id.into(),
            provider: m.provider,
            resource_type: m.resource_type,
            resource_key: m.resource_key,
            name: m.name,
            region: m.region,
            project_id: m.project_id.map(Into::into),
            service_account_id: m.service_account_id.map(Into::into),
            collector_id: m.collector_id.map(Into::into),
            state: m.state,
            data: m.data,
            created_job_id: m.created_job_id.map(Into::into),
            updated_job_id: m.updated_job_id.map(Into::into),
            created_at: m.created_at.to_utc(),
            updated_at: m.updated_at.to_utc(),
            deleted_at: m.deleted_at.map(|t| t.to_utc()),
            links: ResourceLinks::of(m.id),
        }
    }
}

/// Filters of a resource listing.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub collector_id: Option<CollectorId>,
    pub resource_type: Option<String>,
    pub project_id: Option<ProjectId>,
    /// Only these projects' resources (an API key limited to them).
    pub projects: Option<Vec<ProjectId>>,
    pub service_account_id: Option<ServiceAccountId>,
    pub state: Option<ResourceState>,
}

impl Filter {
    /// The filter over `resources`, or over `resource_counts` (which has the same columns):
    /// unqualified, so it reads either.
    fn condition(&self, domain: DomainId) -> sea_orm::Condition {
        use resource::Column as C;
        let mut c = sea_orm::Condition::all().add(Expr::col(C::DomainId).eq(domain.as_uuid()));
        if let Some(id) = self.collector_id {
            c = c.add(Expr::col(C::CollectorId).eq(id.as_uuid()));
        }
        if let Some(t) = &self.resource_type {
            c = c.add(Expr::col(C::ResourceType).eq(t.as_str()));
        }
        if let Some(p) = self.project_id {
            c = c.add(Expr::col(C::ProjectId).eq(p.as_uuid()));
        }
        if let Some(projects) = &self.projects {
            c = c.add(Expr::col(C::ProjectId).is_in(projects.iter().map(|p| p.as_uuid())));
        }
        if let Some(s) = self.service_account_id {
            c = c.add(Expr::col(C::ServiceAccountId).eq(s.as_uuid()));
        }
        if let Some(s) = self.state {
            c = c.add(Expr::col(C::State).eq(s));
        }
        c
    }
}

/// The table of resource counts kept by triggers on `resources` (PostgreSQL only; migration
/// 20 says how).
const COUNTS: &str = "resource_counts";

/// Resources matching `filter`: on PostgreSQL summed from `resource_counts` (a few rows per
/// collector, account and type, whatever the estate's size), on SQLite counted.
async fn total(db: &impl ConnectionTrait, domain: DomainId, filter: &Filter) -> Result<u64> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(resource::Entity::find()
            .filter(filter.condition(domain))
            .count(db)
            .await?);
    }
    let q = Query::select()
        .expr(Expr::cust("CAST(coalesce(sum(n), 0) AS bigint)"))
        .from(Alias::new(COUNTS))
        .cond_where(filter.condition(domain))
        .take();
    let n: i64 = db
        .query_one(&q)
        .await?
        .map(|r| r.try_get_by_index(0))
        .transpose()?
        .unwrap_or(0);
    Ok(n.unsigned_abs())
}

/// Folds the rows that the triggers appended to `resource_counts` into one per key, dropping
/// keys that count nothing; how many rows it removed. Only keys with several rows (or a zero
/// sum) are rewritten, so an estate that did not change since the last fold costs one read of
/// the table and no writes. Readers see the same sums before and after, and writers are not
/// blocked: they only append. A no-op on SQLite.
///
/// # Errors
/// Database errors only.
pub async fn fold_counts(db: &impl ConnectionTrait) -> Result<u64> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    // The rows deleted are those of the statement's snapshot; rows appended meanwhile are left
    // for the next fold, so nothing is counted twice or lost. Rows are never updated, so a
    // row's `ctid` names it until it is deleted.
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "WITH merged AS (
                SELECT ctid FROM (
                    SELECT ctid, count(*) OVER k AS rows_of_key, sum(n) OVER k AS total
                    FROM resource_counts
                    WINDOW k AS (PARTITION BY domain_id, collector_id, service_account_id,
                                              project_id, resource_type, state)) r
                WHERE rows_of_key > 1 OR total = 0),
             gone AS (DELETE FROM resource_counts WHERE ctid IN (SELECT ctid FROM merged)
                      RETURNING *),
             kept AS (
                INSERT INTO resource_counts
                    (domain_id, collector_id, service_account_id, project_id, resource_type,
                     state, n)
                SELECT domain_id, collector_id, service_account_id, project_id, resource_type,
                       state, sum(n)
                FROM gone GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(n) <> 0
                RETURNING 1)
             SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept)",
        ))
        .await?;
    let removed: i64 = row.map(|r| r.try_get_by_index(0)).transpose()?.unwrap_or(0);
    Ok(removed.unsigned_abs())
}

/// One page of resources.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Page {
    pub items: Vec<Resource>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<ResourceId>,
    /// Resources matching the filters, over all pages: exact when read (a statement of its own,
    /// before the page's), and summed from counts kept as resources are written, so it costs
    /// the same at any size.
    pub total: u64,
}

/// A page of resources in id order, after `cursor`. Keyset pagination: a page costs the same
/// wherever it is, and rows written meanwhile neither repeat nor vanish from later pages.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    filter: &Filter,
    cursor: Option<ResourceId>,
    limit: u64,
) -> Result<Page> {
    let mut q = resource::Entity::find().filter(filter.condition(domain));
    let total = total(db, domain, filter).await?;
    if let Some(after) = cursor {
        q = q.filter(resource::Column::Id.gt(after.as_uuid()));
    }
    let mut rows = q
        .order_by_asc(resource::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more {
        rows.last().map(|r| ResourceId::from_uuid(r.id))
    } else {
        None
    };
    Ok(Page {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
        total,
    })
}

/// One resource.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such resource.
pub async fn get(db: &impl ConnectionTrait, domain: DomainId, id: ResourceId) -> Result<Resource> {
    resource::Entity::find_by_id(id.as_uuid())
        .filter(resource::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::not_found("resource", id))
}

/// One entry of a resource's history.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Change {
    pub id: i64,
    pub kind: ChangeKind,
    /// The job that caused it.
    pub job_id: Option<JobId>,
    /// For updates: `{"field": {"old": .., "new": ..}}` per top-level field that changed.
    pub diff: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// A page of a resource's history, oldest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChangePage {
    pub items: Vec<Change>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<i64>,
}

/// A resource's history: created, updated (with a field-level diff) and deleted entries, with
/// the job that caused each, oldest first, `limit` at a time after `cursor`.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such resource.
pub async fn changes(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ResourceId,
    cursor: Option<i64>,
    limit: u64,
) -> Result<ChangePage> {
    // A resource of another domain has no history here either.
    get(db, domain, id).await?;
    let mut query = resource_change::Entity::find()
        .filter(resource_change::Column::DomainId.eq(domain.as_uuid()))
        .filter(resource_change::Column::ResourceId.eq(id.as_uuid()))
        .order_by_asc(resource_change::Column::Id)
        .limit(limit + 1);
    if let Some(after) = cursor {
        query = query.filter(resource_change::Column::Id.gt(after));
    }
    let mut rows = query.all(db).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(ChangePage {
        items: rows
            .into_iter()
            .map(|r| Change {
                id: r.id,
                kind: r.kind,
                job_id: r.job_id.map(Into::into),
                diff: r.diff,
                created_at: r.created_at.to_utc(),
            })
            .collect(),
        next_cursor,
    })
}

/// How many resources of one type a collector holds.
#[derive(Clone, Debug, Serialize, sea_orm::FromQueryResult, ToSchema)]
pub struct TypeCount {
    pub resource_type: String,
    pub count: i64,
}

/// The resources a collector collected, by resource type with counts, by type name.
///
/// # Errors
/// Database errors only.
pub async fn count_by_type(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: CollectorId,
) -> Result<Vec<TypeCount>> {
    let of_collector = Filter {
        collector_id: Some(collector),
        ..Filter::default()
    }
    .condition(domain);
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(resource::Entity::find()
            .select_only()
            .column(resource::Column::ResourceType)
            .column_as(resource::Column::Id.count(), "count")
            .filter(of_collector)
            .group_by(resource::Column::ResourceType)
            .order_by_asc(resource::Column::ResourceType)
            .into_model::<TypeCount>()
            .all(db)
            .await?);
    }
    let q = Query::select()
        .column(resource::Column::ResourceType)
        .expr_as(Expr::cust("CAST(sum(n) AS bigint)"), Alias::new("count"))
        .from(Alias::new(COUNTS))
        .cond_where(of_collector)
        .group_by_col(resource::Column::ResourceType)
        .and_having(Expr::cust("sum(n) > 0"))
        .order_by(resource::Column::ResourceType, sea_orm::Order::Asc)
        .take();
    Ok(db
        .query_all(&q)
        .await?
        .iter()
        .map(|r| TypeCount::from_query_result(r, ""))
        .collect::<std::result::Result<_, _>>()?)
}

/// The identity of a reported resource within one collection, for [`Sweep::seen`]: a 64-bit
/// hash of (resource type, resource key). Two keys of one collection would have to collide for
/// an unseen resource to be taken as seen (odds about n²/2⁶⁵: 3·10⁻⁸ for a million resources),
/// and it would then only be deleted one run later.
#[must_use]
pub fn key_hash(resource_type: &str, resource_key: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(resource_type.as_bytes());
    h.update(&[0]);
    h.update(resource_key.as_bytes());
    h.digest()
}

/// Whether anything of a collector's account (`None`: its resources of no account) is stored,
/// in any state, that `job` did not create: a collection that finds nothing is its first (what
/// it wrote before it asked does not count).
///
/// # Errors
/// Database errors only.
pub async fn any_stored(
    db: &impl ConnectionTrait,
    collector: CollectorId,
    account: Option<ServiceAccountId>,
    job: JobId,
) -> Result<bool> {
    let of_account = match account {
        Some(a) => resource::Column::ServiceAccountId.eq(a.as_uuid()),
        None => resource::Column::ServiceAccountId.is_null(),
    };
    Ok(resource::Entity::find()
        .select_only()
        .column(resource::Column::Id)
        .filter(resource::Column::CollectorId.eq(collector.as_uuid()))
        .filter(of_account)
        .filter(
            sea_orm::Condition::any()
                .add(resource::Column::CreatedJobId.is_null())
                .add(resource::Column::CreatedJobId.ne(job.as_uuid())),
        )
        .limit(1)
        .into_tuple::<uuid::Uuid>()
        .one(db)
        .await?
        .is_some())
}

/// What a successful collection saw, to age what it did not.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub domain: DomainId,
    pub provider: String,
    pub collector_id: CollectorId,
    pub service_account_id: Option<ServiceAccountId>,
    pub job_id: JobId,
    /// [`key_hash`] of every resource the collection reported. Shared, not copied, by the
    /// sweep's retries and groups: 5,000,000 keys are about 75 MB.
    pub seen: std::sync::Arc<std::collections::HashSet<u64>>,
    /// Consecutive successful collections a resource may be missing from before it is DELETED.
    pub delete_after: i32,
}

/// Rows per `IN (…)` list: within SQLite's and PostgreSQL's limits of bound parameters.
const ID_CHUNK: usize = 1_000;

/// What a sweep will do, decided from reads made before the finishing transaction, so the
/// database's write lock (SQLite has one) is not held while every key is read.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// The sweep, its `seen` set emptied (but for a part's).
    pub sweep: Sweep,
    resources: Aging,
    sources: Aging,
    /// A part of an account's collection: nothing is planned yet. What it saw is kept until
    /// every part of the job's account succeeded; the last one sweeps what none of them saw
    /// (`lifecycle::task`).
    part: bool,
}

impl SweepPlan {
    /// What a part of an account's collection saw, swept with its sibling parts.
    #[must_use]
    pub fn of_part(sweep: Sweep) -> Self {
        Self {
            sweep,
            resources: Aging::default(),
            sources: Aging::default(),
            part: true,
        }
    }

    #[must_use]
    pub fn is_part(&self) -> bool {
        self.part
    }
}

/// Reads the active resources of (collector, service account), and its reports of merged
/// ones, and sorts them by whether the collection saw them. Read-only.
///
/// # Errors
/// Database errors only.
pub async fn plan_sweep<C: ConnectionTrait + sea_orm::StreamTrait>(
    db: &C,
    s: Sweep,
) -> Result<SweepPlan> {
    let mut plans = plan_sweeps(db, vec![s]).await?;
    plans
        .pop()
        .ok_or_else(|| Error::Corrupt("a sweep was planned without its plan".into()))
}

/// [`plan_sweep`] for several collections at once: one read of their resources and one of
/// their reports whatever their number (plus one per collection that reports merged ones).
/// The plans come in the sweeps' order.
///
/// # Errors
/// Database errors only.
pub async fn plan_sweeps<C: ConnectionTrait + sea_orm::StreamTrait>(
    db: &C,
    sweeps: Vec<Sweep>,
) -> Result<Vec<SweepPlan>> {
    let mut plans: Vec<Option<SweepPlan>> = sweeps.iter().map(|_| None).collect();
    let mut left: Vec<(usize, Sweep)> = sweeps.into_iter().enumerate().collect();
    // A read tells the rows of (collector, account) apart, not two sweeps of the same pair:
    // those are planned in reads of their own.
    while !left.is_empty() {
        let mut pairs = std::collections::HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|(_, s)| pairs.insert((s.collector_id, s.service_account_id)));
        let (at, group): (Vec<usize>, Vec<Sweep>) = now.into_iter().unzip();
        for (n, plan) in at.into_iter().zip(plan_distinct(db, group).await?) {
            plans[n] = Some(plan);
        }
        left = later;
    }
    Ok(plans.into_iter().flatten().collect())
}

/// The rows of the sweeps' (collector, account) pairs, in a table's `collector` and `account`
/// columns: one condition per collector, its accounts in one list (a condition per sweep made
/// the planner's work grow with the group, 3 ms for a few dozen sweeps).
pub(crate) fn of_sweeps<C: ColumnTrait + Copy>(
    sweeps: &[Sweep],
    collector: C,
    account: C,
) -> sea_orm::Condition {
    let mut by_collector: std::collections::BTreeMap<uuid::Uuid, Vec<uuid::Uuid>> =
        std::collections::BTreeMap::new();
    let mut of = sea_orm::Condition::any();
    for s in sweeps {
        match s.service_account_id {
            Some(sa) => by_collector
                .entry(s.collector_id.as_uuid())
                .or_default()
                .push(sa.as_uuid()),
            None => {
                of = of.add(
                    sea_orm::Condition::all()
                        .add(collector.eq(s.collector_id.as_uuid()))
                        .add(account.is_null()),
                );
            }
        }
    }
    for (c, accounts) in by_collector {
        of = of.add(
            sea_orm::Condition::all()
                .add(collector.eq(c))
                .add(account.is_in(accounts)),
        );
    }
    of
}

/// A row of a sweep's read.
#[derive(Debug, FromQueryResult)]
struct SweepRow {
    id: uuid::Uuid,
    resource_type: String,
    resource_key: String,
    missed_runs: i32,
    collector_id: Option<uuid::Uuid>,
    service_account_id: Option<uuid::Uuid>,
    domain_id: uuid::Uuid,
    provider: String,
}

/// The sweep's read in PostgreSQL, for sweeps of accounts: one probe of
/// `(collector_id, service_account_id)` per (collector, account) pair `$1`, `$2`. As one
/// condition on the collector and a list of accounts, the planner read every resource of the
/// collector and filtered the accounts whenever its statistics lagged behind a job just
/// planned (they then say the collector has a few rows): 5–12 ms a group of 64 accounts at
/// 6,000 tasks, growing with the job (`auto_explain`, BENCHMARKS.md). `OFFSET 0` keeps each
/// probe a subquery of its own, which the planner cannot turn into a join over the collector.
const SWEEP_READ_PG: &str = "SELECT r.id, r.resource_type, r.resource_key, r.missed_runs, \
    r.collector_id, r.service_account_id, r.domain_id, r.provider \
    FROM unnest($1::uuid[], $2::uuid[]) AS s(collector_id, service_account_id) \
    CROSS JOIN LATERAL (SELECT * FROM resources x \
        WHERE x.collector_id = s.collector_id AND x.service_account_id = s.service_account_id \
            AND NOT x.merged AND x.state = 'ACTIVE' OFFSET 0) r";

/// [`plan_sweeps`] of sweeps with distinct (collector, account) pairs.
async fn plan_distinct<C: ConnectionTrait + sea_orm::StreamTrait>(
    db: &C,
    mut sweeps: Vec<Sweep>,
) -> Result<Vec<SweepPlan>> {
    if sweeps.is_empty() {
        return Ok(Vec::new());
    }
    // Which sweep a row of (collector, account) belongs to.
    let index: std::collections::HashMap<(uuid::Uuid, Option<uuid::Uuid>), usize> = sweeps
        .iter()
        .enumerate()
        .map(|(n, s)| {
            (
                (
                    s.collector_id.as_uuid(),
                    s.service_account_id.map(|a| a.as_uuid()),
                ),
                n,
            )
        })
        .collect();
    let mut resources: Vec<Aging> = sweeps.iter().map(|_| Aging::default()).collect();
    // Domain and provider are checked on the rows, not in the query: with them there, the
    // planner took the `(domain_id, provider, ...)` unique index, which for one provider of one
    // domain is every resource (20 ms per group for 12,000 resources), instead of
    // `(collector_id, service_account_id)`.
    let mut rows = if ConnectionTrait::get_database_backend(db) == DbBackend::Postgres
        && sweeps.iter().all(|s| s.service_account_id.is_some())
    {
        let (collectors, accounts): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = sweeps
            .iter()
            .filter_map(|s| Some((s.collector_id.as_uuid(), s.service_account_id?.as_uuid())))
            .unzip();
        let stmt = sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            SWEEP_READ_PG,
            [collectors.into(), accounts.into()],
        );
        SweepRow::find_by_statement(stmt).stream(db).await?
    } else {
        let mine = of_sweeps(
            &sweeps,
            resource::Column::CollectorId,
            resource::Column::ServiceAccountId,
        );
        let query = resource::Entity::find()
            .select_only()
            .columns([
                resource::Column::Id,
                resource::Column::ResourceType,
                resource::Column::ResourceKey,
                resource::Column::MissedRuns,
                resource::Column::CollectorId,
                resource::Column::ServiceAccountId,
                resource::Column::DomainId,
                resource::Column::Provider,
            ])
            .filter(resource::Column::Merged.eq(false))
            .filter(resource::Column::State.eq(ResourceState::Active))
            .filter(mine);
        query.into_model::<SweepRow>().stream(db).await?
    };
    // Streamed: a million keys are sorted as they come, never held as rows.
    while let Some(r) = rows.try_next().await? {
        let Some(&n) = r
            .collector_id
            .and_then(|c| index.get(&(c, r.service_account_id)))
        else {
            continue;
        };
        let s = &sweeps[n];
        if s.domain.as_uuid() == r.domain_id && s.provider == r.provider {
            resources[n].push(
                r.id,
                key_hash(&r.resource_type, &r.resource_key),
                r.missed_runs,
                s,
            );
        }
    }
    drop(rows);
    let reporting = super::merge::reporting(db, &sweeps).await?;
    let mut plans = Vec::with_capacity(sweeps.len());
    for (n, (s, resources)) in sweeps.iter_mut().zip(resources).enumerate() {
        let sources = if reporting.contains(&n) {
            super::merge::age_sources(db, s).await?
        } else {
            Aging::default()
        };
        plans.push(SweepPlan {
            sweep: Sweep {
                seen: std::sync::Arc::default(),
                ..s.clone()
            },
            resources,
            sources,
            part: false,
        });
    }
    Ok(plans)
}

/// Applies a plan inside the transaction that records the task's success, so a run counts
/// once: each resource missed gets one more missed run, and those reaching `delete_after`
/// become DELETED (kept, with a DELETED change naming the job); those seen start again from
/// zero. Every update repeats the plan's selection, so a row that changed hands since it was
/// read is left alone. Returns how many resources were marked deleted.
///
/// # Errors
/// Database errors only.
pub async fn apply_sweep(db: &impl ConnectionTrait, plan: &SweepPlan) -> Result<i64> {
    let s = &plan.sweep;
    let (reset, aged, expired) = (
        &plan.resources.reset,
        &plan.resources.aged,
        &plan.resources.expired,
    );
    // Each update repeats the selection: a row another collector merged, or that changed state,
    // since it was read is left alone.
    let still_mine = || {
        let q = resource::Entity::update_many()
            .filter(resource::Column::CollectorId.eq(s.collector_id.as_uuid()))
            .filter(resource::Column::Merged.eq(false))
            .filter(resource::Column::State.eq(ResourceState::Active));
        match s.service_account_id {
            Some(sa) => q.filter(resource::Column::ServiceAccountId.eq(sa.as_uuid())),
            None => q.filter(resource::Column::ServiceAccountId.is_null()),
        }
    };
    let now = Utc::now().fixed_offset();
    for chunk in reset.chunks(ID_CHUNK) {
        still_mine()
            .col_expr(resource::Column::MissedRuns, Expr::value(0))
            .filter(resource::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    for chunk in aged.chunks(ID_CHUNK) {
        still_mine()
            .col_expr(
                resource::Column::MissedRuns,
                Expr::col(resource::Column::MissedRuns).add(1),
            )
            .filter(resource::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    let mut deleted = 0;
    for chunk in expired.chunks(ID_CHUNK) {
        // Only the rows this update changed get a DELETED change.
        let changed: Vec<uuid::Uuid> = resource::Entity::find()
            .select_only()
            .column(resource::Column::Id)
            .filter(resource::Column::Id.is_in(chunk.iter().copied()))
            .filter(resource::Column::CollectorId.eq(s.collector_id.as_uuid()))
            .filter(resource::Column::Merged.eq(false))
            .filter(resource::Column::State.eq(ResourceState::Active))
            .into_tuple()
            .all(db)
            .await?;
        if changed.is_empty() {
            continue;
        }
        deleted += changed.len();
        let chunk = changed.as_slice();
        resource::Entity::update_many()
            .col_expr(
                resource::Column::MissedRuns,
                Expr::col(resource::Column::MissedRuns).add(1),
            )
            .col_expr(resource::Column::State, Expr::value(ResourceState::Deleted))
            .col_expr(resource::Column::DeletedAt, Expr::value(now))
            .col_expr(
                resource::Column::UpdatedJobId,
                Expr::value(s.job_id.as_uuid()),
            )
            .col_expr(resource::Column::UpdatedAt, Expr::value(now))
            .filter(resource::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
        resource_change::Entity::insert_many(chunk.iter().map(|id| resource_change::ActiveModel {
            domain_id: Set(s.domain.as_uuid()),
            resource_id: Set(*id),
            job_id: Set(Some(s.job_id.as_uuid())),
            kind: Set(ChangeKind::Deleted),
            diff: Set(None),
            created_at: Set(now),
            ..Default::default()
        }))
        .exec(db)
        .await?;
    }
    let merged = super::merge::apply_source_aging(db, s, &plan.sources).await?;
    Ok(i64::try_from(deleted).unwrap_or(i64::MAX) + merged)
}

/// A sweep's verdict on the reports of one collector and account.
#[derive(Clone, Debug, Default)]
pub(crate) struct Aging {
    /// Seen again after missed runs: back to zero.
    pub reset: Vec<uuid::Uuid>,
    /// Missed once more.
    pub aged: Vec<uuid::Uuid>,
    /// Missed `delete_after` times in a row.
    pub expired: Vec<uuid::Uuid>,
}

impl Aging {
    /// Sorts (id, [`key_hash`], missed runs so far) by whether the collection saw the key.
    pub(crate) fn sort(rows: impl IntoIterator<Item = (uuid::Uuid, u64, i32)>, s: &Sweep) -> Self {
        let mut out = Self::default();
        for (id, key, missed) in rows {
            out.push(id, key, missed, s);
        }
        out
    }

    pub(crate) fn push(&mut self, id: uuid::Uuid, key: u64, missed: i32, s: &Sweep) {
        if s.seen.contains(&key) {
            if missed > 0 {
                self.reset.push(id);
            }
        } else if missed + 1 >= s.delete_after {
            self.expired.push(id);
        } else {
            self.aged.push(id);
        }
    }
}

/// The field-level diff of two JSON objects, as PostgreSQL's `gleaner_jsonb_diff` computes it:
/// `{"field": {"old": .., "new": ..}}` for each top-level key whose value differs, a missing
/// key reading as `null`.
#[must_use]
pub fn json_diff(old: &Value, new: &Value) -> Value {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut out = Map::new();
    for key in old.keys().chain(new.keys()) {
        if out.contains_key(key) {
            continue;
        }
        let (o, n) = (old.get(key), new.get(key));
        if o != n {
            out.insert(
                key.clone(),
                json!({"old": o.cloned().unwrap_or(Value::Null), "new": n.cloned().unwrap_or(Value::Null)}),
            );
        }
    }
    Value::Object(out)
}

/// A resource's content hash: equal content gives an equal hash whatever the key order of the
/// plugin's JSON, because `serde_json` maps are sorted.
#[must_use]
pub fn content_hash(name: Option<&str>, region: Option<&str>, data_json: &[u8]) -> i64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(name.unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(region.unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(data_json);
    i64::from_ne_bytes(h.digest().to_ne_bytes())
}
