//! Priority merge of resources that several collectors report (same match key: provider,
//! resource type, resource key).
//!
//! Each collector's report of such a resource is kept in `resource_sources`; the resource shows,
//! for each top-level field of its data, the value of the reporting collector with the lowest
//! priority number, the most recent report winning a tie. `name` and `region` follow the same
//! rule, and the resource's owner (collector, service account, project) is the collector that
//! wins overall. A resource only one collector reports has no source rows and is written by the
//! sinks' bulk path; it moves here when a second collector reports it, and back when only one
//! source is left.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, FixedOffset, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::resource::{Aging, Sweep, content_hash, json_diff, key_hash};
use super::{Error, Result};
use crate::entity::{collector, resource, resource_change, resource_source};
use crate::id::{CollectorId, DomainId, JobId, ProjectId, ServiceAccountId, TaskId};
use crate::lifecycle::{self, task::Attempt};
use crate::model::{ChangeKind, Counts, ResourceState};

/// Ids per `IN (…)` list, within both databases' limits of bound parameters.
const CHUNK: usize = 500;

/// One resource as a collector reported it.
#[derive(Clone, Debug)]
pub struct Reported {
    pub resource_type: String,
    pub resource_key: String,
    pub name: Option<String>,
    pub region: Option<String>,
    /// A JSON object.
    pub data: Value,
}

/// Who reported, for which task attempt.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub domain: DomainId,
    pub provider: String,
    pub collector_id: CollectorId,
    pub service_account_id: Option<ServiceAccountId>,
    pub project_id: Option<ProjectId>,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
}

/// A source as the merge ranks it.
struct Ranked {
    row: resource_source::Model,
    priority: i32,
}

/// What a resource shows, merged from its sources ranked best first.
struct View<'a> {
    winner: &'a resource_source::Model,
    name: Option<String>,
    region: Option<String>,
    data: Value,
}

/// Ranks sources (lowest priority number, then newest report, first) and merges them field by
/// field; `None` without sources.
fn merged_view(sources: &mut [Ranked]) -> Option<View<'_>> {
    sources.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.row.updated_at.cmp(&a.row.updated_at))
    });
    let mut data = Map::new();
    for s in sources.iter() {
        if let Value::Object(fields) = &s.row.data {
            for (k, v) in fields {
                data.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    let winner = &sources.first()?.row;
    Some(View {
        winner,
        name: sources.iter().find_map(|s| s.row.name.clone()),
        region: sources.iter().find_map(|s| s.row.region.clone()),
        data: Value::Object(data),
    })
}

/// What re-merging did.
#[derive(Debug, Default)]
pub struct Remerged {
    /// Resources whose shown content changed (an UPDATED change each).
    pub updated: HashSet<Uuid>,
    /// Resources left without any source, now DELETED.
    pub deleted: HashSet<Uuid>,
}

/// Recomputes the shown content of `ids` from their sources, recording an UPDATED change (by
/// `job`, if any) where it changed. A resource left with one source goes back to the bulk path
/// (its source row folded into the resource); one left with none becomes DELETED.
///
/// # Errors
/// Database errors only.
pub async fn remerge(
    db: &impl ConnectionTrait,
    domain: DomainId,
    ids: &[Uuid],
    job: Option<JobId>,
) -> Result<Remerged> {
    let mut out = Remerged::default();
    for chunk in ids.chunks(CHUNK) {
        // Locked (PostgreSQL) in id order: two merges of one resource take turns, each seeing
        // the other's sources, instead of the later commit showing a stale view.
        let resources = resource::Entity::find()
            .filter(resource::Column::Id.is_in(chunk.iter().copied()))
            .order_by_asc(resource::Column::Id)
            .lock_exclusive()
            .all(db)
            .await?;
        let sources = resource_source::Entity::find()
            .filter(resource_source::Column::ResourceId.is_in(chunk.iter().copied()))
            .all(db)
            .await?;
        let collectors: HashSet<Uuid> = sources.iter().map(|s| s.collector_id).collect();
        let priorities: HashMap<Uuid, i32> = collector::Entity::find()
            .select_only()
            .columns([collector::Column::Id, collector::Column::Priority])
            .filter(collector::Column::Id.is_in(collectors))
            .into_tuple::<(Uuid, i32)>()
            .all(db)
            .await?
            .into_iter()
            .collect();
        let mut by_resource: HashMap<Uuid, Vec<Ranked>> = HashMap::new();
        for row in sources {
            // A deleted collector's reports no longer count.
            if let Some(&priority) = priorities.get(&row.collector_id) {
                by_resource
                    .entry(row.resource_id)
                    .or_default()
                    .push(Ranked { row, priority });
            }
        }
        let now = Utc::now().fixed_offset();
        for r in resources {
            let mut ranked = by_resource.remove(&r.id).unwrap_or_default();
            apply(db, domain, &r, &mut ranked, job, now, &mut out).await?;
        }
    }
    Ok(out)
}

/// Writes one resource's merged view.
async fn apply(
    db: &impl ConnectionTrait,
    domain: DomainId,
    r: &resource::Model,
    ranked: &mut [Ranked],
    job: Option<JobId>,
    now: DateTime<FixedOffset>,
    out: &mut Remerged,
) -> Result<()> {
    let single = ranked.len() == 1;
    let Some(view) = merged_view(ranked) else {
        if r.state == ResourceState::Active {
            resource::Entity::update_many()
                .col_expr(resource::Column::State, Expr::value(ResourceState::Deleted))
                .col_expr(resource::Column::DeletedAt, Expr::value(now))
                .col_expr(resource::Column::Merged, Expr::value(false))
                .col_expr(
                    resource::Column::UpdatedJobId,
                    Expr::value(job.map(|j| j.as_uuid())),
                )
                .col_expr(resource::Column::UpdatedAt, Expr::value(now))
                .filter(resource::Column::Id.eq(r.id))
                .exec(db)
                .await?;
            record(db, domain, r.id, job, ChangeKind::Deleted, None, now).await?;
            out.deleted.insert(r.id);
        }
        return Ok(());
    };
    let json = serde_json::to_vec(&view.data).map_err(|e| Error::Corrupt(e.to_string()))?;
    let hash = content_hash(view.name.as_deref(), view.region.as_deref(), &json);
    let changed = hash != r.content_hash || r.state != ResourceState::Active;
    let mut update = resource::Entity::update_many()
        .col_expr(resource::Column::Merged, Expr::value(!single))
        .col_expr(
            resource::Column::CollectorId,
            Expr::value(view.winner.collector_id),
        )
        .col_expr(
            resource::Column::ServiceAccountId,
            Expr::value(view.winner.service_account_id),
        )
        .col_expr(
            resource::Column::ProjectId,
            Expr::value(view.winner.project_id),
        )
        .filter(resource::Column::Id.eq(r.id));
    if single {
        // Back to the bulk path: the one report left is the resource itself.
        update = update.col_expr(
            resource::Column::MissedRuns,
            Expr::value(view.winner.missed_runs),
        );
        resource_source::Entity::delete_many()
            .filter(resource_source::Column::ResourceId.eq(r.id))
            .exec(db)
            .await?;
    }
    if changed {
        let diff = json_diff(&r.data, &view.data);
        update = update
            .col_expr(resource::Column::Name, Expr::value(view.name.clone()))
            .col_expr(resource::Column::Region, Expr::value(view.region.clone()))
            .col_expr(resource::Column::Data, Expr::value(view.data.clone()))
            .col_expr(resource::Column::ContentHash, Expr::value(hash))
            .col_expr(resource::Column::LastDiff, Expr::value(diff.clone()))
            .col_expr(resource::Column::State, Expr::value(ResourceState::Active))
            .col_expr(
                resource::Column::DeletedAt,
                Expr::value(Option::<DateTime<FixedOffset>>::None),
            )
            .col_expr(
                resource::Column::UpdatedJobId,
                Expr::value(job.map(|j| j.as_uuid())),
            )
            .col_expr(resource::Column::UpdatedAt, Expr::value(now));
        record(db, domain, r.id, job, ChangeKind::Updated, Some(diff), now).await?;
        out.updated.insert(r.id);
    }
    update.exec(db).await?;
    Ok(())
}

async fn record(
    db: &impl ConnectionTrait,
    domain: DomainId,
    resource_id: Uuid,
    job: Option<JobId>,
    kind: ChangeKind,
    diff: Option<Value>,
    now: DateTime<FixedOffset>,
) -> Result<()> {
    resource_change::Entity::insert(resource_change::ActiveModel {
        domain_id: Set(domain.as_uuid()),
        resource_id: Set(resource_id),
        job_id: Set(job.map(|j| j.as_uuid())),
        kind: Set(kind),
        diff: Set(diff),
        created_at: Set(now),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// The report a resource's single owner made so far: the resource itself.
fn owner_source(r: &resource::Model, owner: Uuid) -> resource_source::ActiveModel {
    resource_source::ActiveModel {
        resource_id: Set(r.id),
        collector_id: Set(owner),
        domain_id: Set(r.domain_id),
        service_account_id: Set(r.service_account_id),
        project_id: Set(r.project_id),
        name: Set(r.name.clone()),
        region: Set(r.region.clone()),
        data: Set(r.data.clone()),
        missed_runs: Set(r.missed_runs),
        updated_at: Set(r.updated_at),
    }
}

fn reported_source(
    resource_id: Uuid,
    who: &Reporter,
    item: Reported,
    now: DateTime<FixedOffset>,
) -> resource_source::ActiveModel {
    resource_source::ActiveModel {
        resource_id: Set(resource_id),
        collector_id: Set(who.collector_id.as_uuid()),
        domain_id: Set(who.domain.as_uuid()),
        service_account_id: Set(who.service_account_id.map(|s| s.as_uuid())),
        project_id: Set(who.project_id.map(|p| p.as_uuid())),
        name: Set(item.name),
        region: Set(item.region),
        data: Set(item.data),
        missed_runs: Set(0),
        updated_at: Set(now),
    }
}

async fn upsert_source(db: &impl ConnectionTrait, row: resource_source::ActiveModel) -> Result<()> {
    resource_source::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                resource_source::Column::ResourceId,
                resource_source::Column::CollectorId,
            ])
            .update_columns([
                resource_source::Column::ServiceAccountId,
                resource_source::Column::ProjectId,
                resource_source::Column::Name,
                resource_source::Column::Region,
                resource_source::Column::Data,
                resource_source::Column::MissedRuns,
                resource_source::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Writes resources that another collector reports too (or that are merged already): each
/// report becomes a source row, and the resources are re-merged. Fenced by the task's attempt
/// like a batch: `None` when a newer attempt owns the task. The counts go to the task's
/// progress.
///
/// # Errors
/// Database errors; [`Error::Corrupt`] if a reported resource has no row.
pub async fn write_reported<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    who: &Reporter,
    items: Vec<Reported>,
) -> Result<Option<Counts>> {
    let txn = super::begin_write(db).await?;
    let attempt = Attempt {
        task: who.task_id,
        number: who.attempt,
    };
    if !lifecycle::task::hold(&txn, attempt).await? {
        txn.rollback().await?;
        return Ok(None);
    }
    let now = Utc::now().fixed_offset();
    let mine = who.collector_id.as_uuid();
    let mut ids = Vec::with_capacity(items.len());
    let mut items: HashMap<(String, String), Reported> = items
        .into_iter()
        .map(|i| ((i.resource_type.clone(), i.resource_key.clone()), i))
        .collect();
    let keys: Vec<String> = items.keys().map(|(_, k)| k.clone()).collect();
    for chunk in keys.chunks(CHUNK) {
        let rows = resource::Entity::find()
            .filter(resource::Column::DomainId.eq(who.domain.as_uuid()))
            .filter(resource::Column::Provider.eq(who.provider.as_str()))
            .filter(resource::Column::ResourceKey.is_in(chunk.iter().cloned()))
            .all(&txn)
            .await?;
        for r in rows {
            let Some(item) = items.remove(&(r.resource_type.clone(), r.resource_key.clone()))
            else {
                continue;
            };
            // A DELETED resource's owner no longer reports it: its old data is not a report.
            if !r.merged
                && r.state == ResourceState::Active
                && let Some(owner) = r.collector_id.filter(|o| *o != mine)
            {
                // The owner's report so far is the resource itself.
                upsert_source(&txn, owner_source(&r, owner)).await?;
            }
            upsert_source(&txn, reported_source(r.id, who, item, now)).await?;
            ids.push(r.id);
        }
    }
    if let Some(((t, k), _)) = items.into_iter().next() {
        return Err(Error::Corrupt(format!(
            "resource {t}/{k} was reported as existing but has no row"
        )));
    }
    let merged = remerge(&txn, who.domain, &ids, Some(who.job_id)).await?;
    let updated = i64::try_from(merged.updated.len()).unwrap_or(i64::MAX);
    let counts = Counts {
        updated,
        unchanged: i64::try_from(ids.len()).unwrap_or(i64::MAX) - updated,
        ..Counts::default()
    };
    lifecycle::task::add_progress(&txn, attempt, who.job_id, &counts).await?;
    txn.commit().await?;
    Ok(Some(counts))
}

/// Which of `sweeps` (by index) have reports of merged resources to age: one read for all,
/// so the collections that report none (most of them) need no other.
///
/// # Errors
/// Database errors only.
pub(crate) async fn reporting(
    db: &impl ConnectionTrait,
    sweeps: &[Sweep],
) -> Result<std::collections::HashSet<usize>> {
    if sweeps.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let of = super::resource::of_sweeps(
        sweeps,
        resource_source::Column::CollectorId,
        resource_source::Column::ServiceAccountId,
    );
    let found: Vec<(Uuid, Option<Uuid>)> = resource_source::Entity::find()
        .select_only()
        .columns([
            resource_source::Column::CollectorId,
            resource_source::Column::ServiceAccountId,
        ])
        .filter(of)
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    Ok(sweeps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            found.contains(&(
                s.collector_id.as_uuid(),
                s.service_account_id.map(|a| a.as_uuid()),
            ))
        })
        .map(|(n, _)| n)
        .collect())
}

/// The merged part of a sweep's plan: this collector and account's reports of merged
/// resources, sorted by whether the collection saw them. Read-only.
///
/// # Errors
/// Database errors only.
pub(crate) async fn age_sources(db: &impl ConnectionTrait, s: &Sweep) -> Result<Aging> {
    let mut query = resource_source::Entity::find()
        .select_only()
        .columns([
            resource_source::Column::ResourceId,
            resource_source::Column::MissedRuns,
        ])
        .filter(resource_source::Column::CollectorId.eq(s.collector_id.as_uuid()));
    query = match s.service_account_id {
        Some(sa) => query.filter(resource_source::Column::ServiceAccountId.eq(sa.as_uuid())),
        None => query.filter(resource_source::Column::ServiceAccountId.is_null()),
    };
    let sources: Vec<(Uuid, i32)> = query.into_tuple().all(db).await?;
    let mut rows = Vec::with_capacity(sources.len());
    for chunk in sources.chunks(CHUNK) {
        let keys: HashMap<Uuid, u64> = resource::Entity::find()
            .select_only()
            .columns([
                resource::Column::Id,
                resource::Column::ResourceType,
                resource::Column::ResourceKey,
            ])
            .filter(resource::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .into_tuple::<(Uuid, String, String)>()
            .all(db)
            .await?
            .into_iter()
            .map(|(id, t, k)| (id, key_hash(&t, &k)))
            .collect();
        rows.extend(
            chunk
                .iter()
                .filter_map(|(id, missed)| keys.get(id).map(|k| (*id, *k, *missed))),
        );
    }
    Ok(Aging::sort(rows, s))
}

/// Applies the merged part of a sweep: a report missing `delete_after` times is dropped and
/// its resource re-merged (DELETED when no report is left). Returns how many resources became
/// DELETED.
///
/// # Errors
/// Database errors only.
pub(crate) async fn apply_source_aging(
    db: &impl ConnectionTrait,
    s: &Sweep,
    aging: &Aging,
) -> Result<i64> {
    let (reset, aged, expired) = (&aging.reset, &aging.aged, &aging.expired);
    let mine = || resource_source::Column::CollectorId.eq(s.collector_id.as_uuid());
    for chunk in reset.chunks(CHUNK) {
        resource_source::Entity::update_many()
            .col_expr(resource_source::Column::MissedRuns, Expr::value(0))
            .filter(mine())
            .filter(resource_source::Column::ResourceId.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    for chunk in aged.chunks(CHUNK) {
        resource_source::Entity::update_many()
            .col_expr(
                resource_source::Column::MissedRuns,
                Expr::col(resource_source::Column::MissedRuns).add(1),
            )
            .filter(mine())
            .filter(resource_source::Column::ResourceId.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    for chunk in expired.chunks(CHUNK) {
        resource_source::Entity::delete_many()
            .filter(mine())
            .filter(resource_source::Column::ResourceId.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    let merged = remerge(db, s.domain, expired, Some(s.job_id)).await?;
    Ok(i64::try_from(merged.deleted.len()).unwrap_or(i64::MAX))
}

/// Re-merges every resource `collector` reports alongside others: after its priority changed,
/// or, with `drop` set, after it was deleted (its reports are removed first).
///
/// # Errors
/// Database errors only.
pub async fn remerge_collector(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: CollectorId,
    drop: bool,
) -> Result<usize> {
    let ids: Vec<Uuid> = resource_source::Entity::find()
        .select_only()
        .column(resource_source::Column::ResourceId)
        .filter(resource_source::Column::CollectorId.eq(collector.as_uuid()))
        .into_tuple()
        .all(db)
        .await?;
    if drop {
        resource_source::Entity::delete_many()
            .filter(resource_source::Column::CollectorId.eq(collector.as_uuid()))
            .exec(db)
            .await?;
    }
    let merged = remerge(db, domain, &ids, None).await?;
    Ok(merged.updated.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ranked(priority: i32, age_s: i64, name: Option<&str>, data: Value) -> Ranked {
        let at = Utc::now().fixed_offset() - chrono::Duration::seconds(age_s);
        Ranked {
            priority,
            row: resource_source::Model {
                resource_id: Uuid::nil(),
                collector_id: Uuid::now_v7(),
                domain_id: Uuid::nil(),
                service_account_id: None,
                project_id: None,
                name: name.map(String::from),
                region: None,
                data,
                missed_runs: 0,
                updated_at: at,
            },
        }
    }

    #[test]
    fn lower_priority_number_wins_field_by_field() {
        let mut sources = vec![
            ranked(
                20,
                0,
                Some("from 20"),
                json!({"a": 20, "b": 20, "only20": true}),
            ),
            ranked(10, 100, None, json!({"a": 10, "only10": true})),
        ];
        let view = merged_view(&mut sources).expect("view");
        assert_eq!(
            view.data,
            json!({"a": 10, "b": 20, "only10": true, "only20": true})
        );
        // The winner has no name: the next source's is shown.
        assert_eq!(view.name.as_deref(), Some("from 20"));
        assert_eq!(view.winner.data["a"], 10);
    }

    #[test]
    fn equal_priority_takes_the_newest() {
        let mut sources = vec![
            ranked(10, 100, None, json!({"a": "old"})),
            ranked(10, 1, None, json!({"a": "new"})),
        ];
        assert_eq!(merged_view(&mut sources).expect("view").data["a"], "new");
        assert!(merged_view(&mut []).is_none());
    }
}
