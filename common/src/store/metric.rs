//! Metric samples: what a metrics task collects for, where each series stands, the day
//! partitions and their retention, and the queries of the API.
//!
//! PostgreSQL keeps times as `timestamptz`, SQLite as integer milliseconds since the epoch; the
//! queries differ in those expressions only. Every query reads `(min, max, sum, count)` per
//! bin, whatever the tier, and [`crate::metric::Stat`] picks the answer from them.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Days, NaiveDate, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryResult,
    QuerySelect, Statement,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Error, Params, Result};
use crate::config::MetricsSettings;
use crate::entity::resource;
use crate::id::{CollectorId, DomainId, ProjectId, ResourceId, ServiceAccountId};
use crate::metric::{ANY_TYPE, Agg, Piece, Tier, Window, instant};
use crate::model::ResourceState;

/// A resource a metrics task collects for.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub id: ResourceId,
    pub resource_type: String,
    pub resource_key: String,
    pub name: Option<String>,
    pub region: Option<String>,
    /// What the collector stored of it: a data source finds its own ids there (an instance id,
    /// a private IP).
    pub data: Value,
}

/// The active resources of `types` found with the service account, in id order; a type of
/// [`ANY_TYPE`] stands for every type.
///
/// # Errors
/// Database errors only.
pub async fn targets(
    db: &impl ConnectionTrait,
    domain: DomainId,
    account: ServiceAccountId,
    types: &[String],
) -> Result<Vec<Target>> {
    let owned = Condition::all().add(resource::Column::ServiceAccountId.eq(account.as_uuid()));
    active(db, domain, owned, types).await
}

/// The active resources of `types` in `project`, whoever found them, in id order; the whole
/// domain's without a project. A type of [`ANY_TYPE`] stands for every type. For a source that
/// watches resources other accounts collect (a Prometheus server).
///
/// # Errors
/// Database errors only.
pub async fn project_targets(
    db: &impl ConnectionTrait,
    domain: DomainId,
    project: Option<ProjectId>,
    types: &[String],
) -> Result<Vec<Target>> {
    let within = match project {
        Some(p) => Condition::all().add(resource::Column::ProjectId.eq(p.as_uuid())),
        None => Condition::all(),
    };
    active(db, domain, within, types).await
}

async fn active(
    db: &impl ConnectionTrait,
    domain: DomainId,
    within: Condition,
    types: &[String],
) -> Result<Vec<Target>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let mut find = resource::Entity::find()
        .filter(resource::Column::DomainId.eq(domain.as_uuid()))
        .filter(within)
        .filter(resource::Column::State.eq(ResourceState::Active));
    if !types.iter().any(|t| t == ANY_TYPE) {
        find = find.filter(resource::Column::ResourceType.is_in(types.iter().cloned()));
    }
    let mut targets: Vec<Target> = find
        .all(db)
        .await?
        .into_iter()
        .map(|m| Target {
            id: m.id.into(),
            resource_type: m.resource_type,
            resource_key: m.resource_key,
            name: m.name,
            region: m.region,
            data: m.data,
        })
        .collect();
    targets.sort_by_key(|t| t.id);
    Ok(targets)
}

/// The newest sample stored of each series of these resources, in milliseconds since the
/// epoch, by (resource, metric).
///
/// # Errors
/// Database errors only.
pub async fn watermarks(
    db: &impl ConnectionTrait,
    resources: &[ResourceId],
) -> Result<HashMap<(ResourceId, String), i64>> {
    let backend = db.get_database_backend();
    let mut out = HashMap::new();
    // SQLite binds at most 32,766 values a statement.
    for chunk in resources.chunks(10_000) {
        let mut p = Params::new(backend);
        let ids = in_list(&mut p, chunk);
        let last = time_ms(backend, "last_time");
        let sql = format!(
            "SELECT resource_id, metric, {last} AS last FROM metric_watermarks WHERE resource_id {ids}"
        );
        for r in query(db, backend, sql, p).await? {
            let id: Uuid = r.try_get("", "resource_id")?;
            out.insert(
                (id.into(), r.try_get("", "metric")?),
                r.try_get("", "last")?,
            );
        }
    }
    Ok(out)
}

/// The newest sample a collector stored, over all its series; `None` before its first.
///
/// # Errors
/// Database errors only.
pub async fn collector_watermark(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: CollectorId,
) -> Result<Option<DateTime<Utc>>> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let sql = format!(
        "SELECT {} AS last FROM metric_watermarks WHERE domain_id = {} AND collector_id = {}",
        time_ms(backend, "max(last_time)"),
        p.push(domain.as_uuid()),
        p.push(collector.as_uuid())
    );
    let rows = query(db, backend, sql, p).await?;
    let last: Option<i64> = match rows.first() {
        Some(r) => r.try_get("", "last")?,
        None => None,
    };
    Ok(last.map(instant))
}

/// A series stored for a resource.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StoredSeries {
    pub metric: String,
    /// The newest sample stored.
    pub last_time: DateTime<Utc>,
    /// The collector that stored it.
    pub collector_id: Option<CollectorId>,
}

/// The series stored for a resource, by metric name.
///
/// # Errors
/// Database errors only.
pub async fn stored(
    db: &impl ConnectionTrait,
    domain: DomainId,
    resource: ResourceId,
) -> Result<Vec<StoredSeries>> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let sql = format!(
        "SELECT metric, {} AS last, collector_id FROM metric_watermarks \
         WHERE domain_id = {} AND resource_id = {} ORDER BY metric",
        time_ms(backend, "last_time"),
        p.push(domain.as_uuid()),
        p.push(resource.as_uuid())
    );
    query(db, backend, sql, p)
        .await?
        .iter()
        .map(|r| {
            let collector: Option<Uuid> = r.try_get("", "collector_id")?;
            Ok(StoredSeries {
                metric: r.try_get("", "metric")?,
                last_time: instant(r.try_get("", "last")?),
                collector_id: collector.map(Into::into),
            })
        })
        .collect()
}

/// The resources of a domain among `ids`, with their project: what the API checks a caller may
/// see.
///
/// # Errors
/// Database errors only.
pub async fn owners(
    db: &impl ConnectionTrait,
    domain: DomainId,
    ids: &[ResourceId],
) -> Result<HashMap<ResourceId, Option<ProjectId>>> {
    let rows: Vec<(Uuid, Option<Uuid>)> = resource::Entity::find()
        .select_only()
        .column(resource::Column::Id)
        .column(resource::Column::ProjectId)
        .filter(resource::Column::DomainId.eq(domain.as_uuid()))
        .filter(resource::Column::Id.is_in(ids.iter().map(|i| i.as_uuid())))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, project)| (id.into(), project.map(Into::into)))
        .collect())
}

/// One series' bins of a window: `(min, max, sum, count)` per period, by resource; a period
/// without samples is absent.
///
/// # Errors
/// Database errors only.
pub async fn series(
    db: &impl ConnectionTrait,
    domain: DomainId,
    ids: &[ResourceId],
    metric: &str,
    window: &Window,
) -> Result<HashMap<ResourceId, HashMap<i64, Agg>>> {
    let backend = db.get_database_backend();
    let tier = Tier::serving(window.period_ms);
    let mut p = Params::new(backend);
    let column = column(tier);
    let mut out: HashMap<ResourceId, HashMap<i64, Agg>> = HashMap::new();
    // A join counts an id given twice twice.
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let ids = &ids[..];
    // The ids as a table to join (PostgreSQL): `= ANY(array)` compares each row with every id.
    let (join, only) = match backend {
        DbBackend::Postgres => (
            format!(
                "JOIN unnest(CAST({} AS uuid[])) AS q(id) ON q.id = t.resource_id",
                p.push(ids.iter().map(ResourceId::as_uuid).collect::<Vec<_>>())
            ),
            String::new(),
        ),
        _ => (
            String::new(),
            format!("AND t.resource_id {}", in_list(&mut p, ids)),
        ),
    };
    let filter = format!(
        "t.domain_id = {domain} AND t.metric = {metric} {only} \
         AND t.{column} >= {start} AND t.{column} < {end}{hours}",
        domain = p.push(domain.as_uuid()),
        metric = p.push(metric),
        start = push_time(&mut p, backend, window.start),
        end = push_time(&mut p, backend, window.end),
        hours = packed_hours(&mut p, backend, tier, (window.start, window.end)),
    );
    if tier == Tier::Raw {
        let bin = format!(
            "{} / {}",
            time_ms(backend, &format!("t.{column}")),
            p.push(window.period_ms)
        );
        let sql = format!(
            "SELECT t.resource_id, {bin} AS bin, {aggs} FROM {table} t {join} WHERE {filter} \
             GROUP BY t.resource_id, bin",
            aggs = aggregates(tier).replace("value", "t.value"),
            table = tier.table(),
        );
        for r in query(db, backend, sql, p).await? {
            let id: Uuid = r.try_get("", "resource_id")?;
            let bin: i64 = r.try_get("", "bin")?;
            out.entry(id.into())
                .or_default()
                .insert(bin * window.period_ms, agg(&r)?);
        }
        return Ok(out);
    }
    // A rollup's rows are binned here rather than grouped by the database: a bucket has few
    // partial rows, and merging them costs less than the database's hashing of
    // (resource, bucket) and its date arithmetic.
    let sql = format!(
        "SELECT t.resource_id, t.{column} AS at, t.min AS mn, t.max AS mx, t.sum AS sm, \
         t.count AS n FROM {table} t {join} WHERE {filter}",
        table = source(tier, backend),
    );
    for r in query(db, backend, sql, p).await? {
        let id: Uuid = r.try_get("", "resource_id")?;
        let at = read_ms(&r, backend, "at")?;
        out.entry(id.into())
            .or_default()
            .entry(at - at.rem_euclid(window.period_ms))
            .or_default()
            .merge(&agg(&r)?);
    }
    Ok(out)
}

/// A time column as milliseconds since the epoch: a `timestamptz` (PostgreSQL) or the integer
/// SQLite stores.
fn read_ms(r: &QueryResult, backend: DbBackend, column: &str) -> Result<i64> {
    Ok(if backend == DbBackend::Postgres {
        r.try_get::<DateTime<Utc>>("", column)?.timestamp_millis()
    } else {
        r.try_get::<i64>("", column)?
    })
}

/// Which resources a top-N ranks.
#[derive(Clone, Debug, Default)]
pub struct TopFilter {
    pub resource_type: Option<String>,
    /// A project-limited caller's projects.
    pub projects: Option<Vec<ProjectId>>,
}

/// A resource's aggregate over a range.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub id: ResourceId,
    pub name: Option<String>,
    pub resource_type: String,
    pub agg: Agg,
}

/// Every resource's `(min, max, sum, count)` of `metric` over `[start, end)` (milliseconds),
/// read from the coarsest tier covering each part of the range ([`crate::metric::cover`]).
///
/// # Errors
/// Database errors only.
pub async fn aggregate(
    db: &impl ConnectionTrait,
    domain: DomainId,
    metric: &str,
    (start, end): (i64, i64),
    filter: &TopFilter,
) -> Result<Vec<Ranked>> {
    let backend = db.get_database_backend();
    let mut out: HashMap<ResourceId, Ranked> = HashMap::new();
    for Piece { tier, start, end } in crate::metric::cover(start, end) {
        let mut p = Params::new(backend);
        let column = format!("t.{}", column(tier));
        let mut sql = format!(
            "SELECT t.resource_id, r.name, r.resource_type, {aggs} FROM {table} t \
             JOIN resources r ON r.id = t.resource_id \
             WHERE t.domain_id = {domain} AND r.domain_id = {domain} AND t.metric = {metric} \
               AND {column} >= {start_at} AND {column} < {end_at}{hours}",
            aggs = aggregates(tier).replace("value", "t.value"),
            table = source(tier, backend),
            domain = p.push(domain.as_uuid()),
            metric = p.push(metric),
            start_at = push_time(&mut p, backend, start),
            end_at = push_time(&mut p, backend, end),
            hours = packed_hours(&mut p, backend, tier, (start, end)),
        );
        if let Some(t) = &filter.resource_type {
            sql.push_str(&format!(" AND r.resource_type = {}", p.push(t.as_str())));
        }
        if let Some(projects) = &filter.projects {
            let ids: Vec<Uuid> = projects.iter().map(|p| p.as_uuid()).collect();
            sql.push_str(&format!(" AND r.project_id {}", in_uuids(&mut p, &ids)));
        }
        sql.push_str(" GROUP BY t.resource_id, r.name, r.resource_type");
        for r in query(db, backend, sql, p).await? {
            let id: Uuid = r.try_get("", "resource_id")?;
            let a = agg(&r)?;
            out.entry(id.into())
                .and_modify(|x| x.agg.merge(&a))
                .or_insert(Ranked {
                    id: id.into(),
                    name: r.try_get("", "name")?,
                    resource_type: r.try_get("", "resource_type")?,
                    agg: a,
                });
        }
    }
    Ok(out.into_values().collect())
}

/// What [`maintain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Day partitions made (PostgreSQL), over the three tables.
    pub created: usize,
    /// Days whose partitions were dropped (PostgreSQL).
    pub dropped: Vec<NaiveDate>,
    /// Rows deleted (SQLite).
    pub deleted: u64,
}

/// The partitioned tables and the column each is partitioned on.
const PARTITIONED: [Tier; 3] = [Tier::Raw, Tier::FiveMinutes, Tier::Hour];

/// The first day kept at `now`: days before it are past the retention.
#[must_use]
pub fn first_kept_day(now: DateTime<Utc>, settings: &MetricsSettings) -> NaiveDate {
    now.date_naive() - Days::new(u64::from(settings.retention_days.max(1)))
}

/// Makes the day partitions from `from` to `to` (both included) that are missing, in the
/// three tables; a no-op in SQLite. Returns how many were made.
///
/// # Errors
/// Database errors only.
pub async fn ensure_partitions(
    db: &impl ConnectionTrait,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<usize> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    let mut made = 0;
    for tier in PARTITIONED {
        let have = partitions(db, tier).await?;
        let mut day = from;
        while day <= to {
            if !have.contains(&day) {
                made += create_partition(db, tier, day).await?;
            }
            day = day + Days::new(1);
        }
    }
    Ok(made)
}

/// Makes the partitions of today and the days ahead, and drops (PostgreSQL) or deletes
/// (SQLite) what is past the retention: whole days before [`first_kept_day`].
///
/// # Errors
/// Database errors only.
pub async fn maintain(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    settings: &MetricsSettings,
) -> Result<Maintained> {
    let first_kept = first_kept_day(now, settings);
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        let cutoff = first_kept
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis());
        let mut deleted = 0;
        for tier in PARTITIONED {
            let sql = format!("DELETE FROM {} WHERE {} < ?", tier.table(), column(tier));
            deleted += db
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    sql,
                    [cutoff.into()],
                ))
                .await?
                .rows_affected();
        }
        return Ok(Maintained {
            deleted,
            ..Maintained::default()
        });
    }
    let today = now.date_naive();
    let created = ensure_partitions(
        db,
        today,
        today + Days::new(u64::from(settings.partitions_ahead_days)),
    )
    .await?;
    let mut dropped = BTreeSet::new();
    for tier in PARTITIONED {
        for day in partitions(db, tier).await? {
            if day < first_kept {
                // The name is made of the table's and a date, never of input.
                let sql = format!("DROP TABLE IF EXISTS {}", partition_name(tier, day));
                db.execute_unprepared(&sql).await?;
                dropped.insert(day);
            }
        }
    }
    Ok(Maintained {
        created,
        dropped: dropped.into_iter().collect(),
        deleted: 0,
    })
}

fn partition_name(tier: Tier, day: NaiveDate) -> String {
    format!("{}_p{}", tier.table(), day.format("%Y%m%d"))
}

/// The days a partitioned table has partitions for.
///
/// # Errors
/// Database errors only.
pub async fn partitions(db: &impl ConnectionTrait, tier: Tier) -> Result<BTreeSet<NaiveDate>> {
    let prefix = format!("{}_p", tier.table());
    // `to_regclass` resolves the table in the connection's search path, as every other
    // statement does: two schemas of one database (tests) keep their partitions apart.
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.relname::text AS name FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
            [tier.table().into()],
        ))
        .await?;
    let mut days = BTreeSet::new();
    for r in rows {
        let name: String = r.try_get("", "name")?;
        let day = name
            .strip_prefix(&prefix)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            .ok_or_else(|| Error::Corrupt(format!("`{name}` is not a day partition")))?;
        days.insert(day);
    }
    Ok(days)
}

/// Makes one day's partition; 0 when another process made it first.
async fn create_partition(db: &impl ConnectionTrait, tier: Tier, day: NaiveDate) -> Result<usize> {
    let next = day + Days::new(1);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
        partition_name(tier, day),
        tier.table()
    );
    match db.execute_unprepared(&sql).await {
        Ok(_) => Ok(1),
        // Two writers making the same day at once: the loser's `IF NOT EXISTS` can still
        // collide in the catalog. The partition is there, which is all that was wanted.
        Err(e) if partitions(db, tier).await?.contains(&day) => {
            tracing::debug!(error = %e, %day, "the partition was made by another process");
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a tier's rows are read from, as `t`. PostgreSQL packs the 5-minute rollup by hour
/// (migration 16): its arrays are unnested to a row per bucket, with the rows' `hour_start`
/// kept for [`packed_hours`].
fn source(tier: Tier, backend: DbBackend) -> &'static str {
    if packed(tier, backend) {
        return "(SELECT p.domain_id, p.resource_id, p.metric, p.hour_start, \
                 p.hour_start + (s.i - 1) * interval '5 minutes' AS bucket, \
                 s.min, s.max, s.sum, s.count \
          FROM metric_rollups_5m p \
          CROSS JOIN LATERAL unnest(p.min, p.max, p.sum, p.count) \
              WITH ORDINALITY AS s(min, max, sum, count, i) \
          WHERE s.count > 0)";
    }
    tier.table()
}

/// Whether a tier's rows are packed by hour: the 5-minute rollup in PostgreSQL.
fn packed(tier: Tier, backend: DbBackend) -> bool {
    (tier, backend) == (Tier::FiveMinutes, DbBackend::Postgres)
}

/// The packed rows' hours that can hold buckets of `[start, end)`, so that the index on
/// `hour_start` narrows the read: a bucket's time says nothing to it.
fn packed_hours(
    p: &mut Params,
    backend: DbBackend,
    tier: Tier,
    (start, end): (i64, i64),
) -> String {
    if !packed(tier, backend) {
        return String::new();
    }
    format!(
        " AND t.hour_start > {} AND t.hour_start < {}",
        push_time(p, backend, start - Tier::Hour.width_ms()),
        push_time(p, backend, end),
    )
}

/// The time column of a tier's table.
const fn column(tier: Tier) -> &'static str {
    match tier {
        Tier::Raw => "time",
        Tier::FiveMinutes | Tier::Hour => "bucket",
    }
}

/// `(min, max, sum, count)` of a tier's rows, as `mn, mx, sm, n`.
const fn aggregates(tier: Tier) -> &'static str {
    match tier {
        Tier::Raw => "min(value) AS mn, max(value) AS mx, sum(value) AS sm, count(*) AS n",
        // `sum` of a bigint is a numeric in PostgreSQL.
        Tier::FiveMinutes | Tier::Hour => {
            "min(min) AS mn, max(max) AS mx, sum(sum) AS sm, CAST(sum(count) AS bigint) AS n"
        }
    }
}

fn agg(r: &QueryResult) -> Result<Agg> {
    Ok(Agg {
        min: r.try_get("", "mn")?,
        max: r.try_get("", "mx")?,
        sum: r.try_get("", "sm")?,
        count: r.try_get("", "n")?,
    })
}

/// A time column as milliseconds since the epoch.
fn time_ms(backend: DbBackend, column: &str) -> String {
    if backend == DbBackend::Postgres {
        format!("CAST(floor(extract(epoch FROM {column}) * 1000) AS bigint)")
    } else {
        column.to_owned()
    }
}

/// Binds an instant given in milliseconds, as the backend stores times.
fn push_time(p: &mut Params, backend: DbBackend, ms: i64) -> String {
    if backend == DbBackend::Postgres {
        p.push(instant(ms))
    } else {
        p.push(ms)
    }
}

/// `= ANY($n)` (PostgreSQL) or `IN (?, ...)` (SQLite) over resource ids.
fn in_list(p: &mut Params, ids: &[ResourceId]) -> String {
    let ids: Vec<Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
    in_uuids(p, &ids)
}

fn in_uuids(p: &mut Params, ids: &[Uuid]) -> String {
    if p.is_postgres() {
        return format!("= ANY({})", p.push(ids.to_vec()));
    }
    if ids.is_empty() {
        return "IN (NULL)".to_owned();
    }
    let marks: Vec<String> = ids.iter().map(|id| p.push(*id)).collect();
    format!("IN ({})", marks.join(", "))
}

async fn query(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    sql: String,
    p: Params,
) -> Result<Vec<QueryResult>> {
    Ok(db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?)
}
