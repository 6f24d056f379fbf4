//! Collectors.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Result, is_unique_violation};
use crate::entity::{collector, job, resource, schedule};
use crate::id::{CollectorId, DomainId, JobId};
use crate::model::{
    CollectorState, JobStatus, JobTimeout, Name, Priority, ScheduleState, UpgradeMode,
};
use crate::plugin::PluginInfo;

/// A collector as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Collector {
    pub id: CollectorId,
    pub name: String,
    pub plugin_id: String,
    pub version: String,
    pub upgrade_mode: UpgradeMode,
    pub priority: i32,
    pub options: Value,
    pub tags: BTreeMap<String, String>,
    pub state: CollectorState,
    /// A job still unfinished this many seconds after it was accepted fails with reason
    /// "timeout" and its tasks are stopped.
    pub job_timeout_seconds: i32,
    pub last_collected_at: Option<DateTime<Utc>>,
    pub last_job: Option<LastJob>,
    /// When its schedules collect next (the earliest next fire of its enabled schedules).
    pub next_scheduled_at: Option<DateTime<Utc>>,
    /// Where its history, schedules, resources and credentials are.
    pub links: CollectorLinks,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Collector {
    /// The plugin version a collection of it runs now: the plugin's latest while it follows
    /// the latest (`upgrade_mode` AUTO), else the version pinned.
    #[must_use]
    pub fn version_to_run<'a>(&'a self, plugin: &'a PluginInfo) -> &'a str {
        plugin.version_for(self.upgrade_mode, &self.version)
    }
}

/// The API paths of what belongs to a collector.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CollectorLinks {
    /// Its job history, newest first.
    #[schema(example = "/v1/collectors/01a2…/jobs")]
    pub jobs: String,
    pub schedules: String,
    pub resources: String,
    pub credentials: String,
}

impl CollectorLinks {
    fn of(id: uuid::Uuid) -> Self {
        Self {
            jobs: format!("/v1/collectors/{id}/jobs"),
            schedules: format!("/v1/collectors/{id}/schedules"),
            resources: format!("/v1/resources?collector_id={id}"),
            credentials: format!("/v1/collectors/{id}/credentials"),
        }
    }
}

/// The collector's most recent job, for the collector list.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct LastJob {
    pub id: JobId,
    pub status: JobStatus,
}

fn view(
    m: collector::Model,
    last_status: Option<JobStatus>,
    next_scheduled_at: Option<DateTime<Utc>>,
) -> Result<Collector> {
    let tags = serde_json::from_value(m.tags)
        .map_err(|e| Error::Corrupt(format!("tags of collector {}: {e}", m.id)))?;
    Ok(Collector {
        id: m.id.into(),
        name: m.name,
        plugin_id: m.plugin_id,
        version: m.version,
        upgrade_mode: m.upgrade_mode,
        priority: m.priority,
        options: m.options,
        tags,
        state: m.state,
        job_timeout_seconds: m.job_timeout_seconds,
        last_collected_at: m.last_collected_at.map(|t| t.to_utc()),
        last_job: m.last_job_id.zip(last_status).map(|(id, status)| LastJob {
            id: id.into(),
            status,
        }),
        next_scheduled_at,
        links: CollectorLinks::of(m.id),
        created_at: m.created_at.to_utc(),
        updated_at: m.updated_at.to_utc(),
    })
}

/// A validated request to create a collector.
#[derive(Debug)]
pub struct NewCollector<'a> {
    pub name: Name,
    pub plugin: &'a PluginInfo,
    /// `None` follows the plugin's latest version.
    pub version: Option<String>,
    pub priority: Priority,
    pub options: Value,
    pub tags: BTreeMap<String, String>,
    pub job_timeout: JobTimeout,
}

/// Creates a collector.
///
/// # Errors
/// [`Error::Conflict`] naming `name` when the domain has a collector of that name.
pub async fn create(
    db: &impl ConnectionTrait,
    domain: DomainId,
    new: NewCollector<'_>,
) -> Result<Collector> {
    let (version, upgrade_mode) = match new.version {
        Some(v) => (v, UpgradeMode::Manual),
        None => (new.plugin.latest.clone(), UpgradeMode::Auto),
    };
    let now = Utc::now().fixed_offset();
    let row = collector::ActiveModel {
        id: Set(CollectorId::new().into()),
        domain_id: Set(domain.into()),
        name: Set(new.name.to_string()),
        plugin_id: Set(new.plugin.id.clone()),
        version: Set(version),
        upgrade_mode: Set(upgrade_mode),
        priority: Set(new.priority.get()),
        options: Set(new.options),
        tags: Set(serde_json::to_value(&new.tags).map_err(|e| Error::Corrupt(e.to_string()))?),
        state: Set(CollectorState::Enabled),
        job_timeout_seconds: Set(new.job_timeout.seconds()),
        last_job_id: Set(None),
        last_collected_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    match collector::Entity::insert(row).exec_with_returning(db).await {
        Ok(m) => view(m, None, None),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict {
            field: "name",
            detail: format!("a collector named '{}' already exists", new.name),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Every collector of the domain, oldest first, with its last job's status.
///
/// # Errors
/// Database errors only.
pub async fn list(db: &impl ConnectionTrait, domain: DomainId) -> Result<Vec<Collector>> {
    let rows = collector::Entity::find()
        .filter(collector::Column::DomainId.eq(domain.as_uuid()))
        .order_by_asc(collector::Column::Id)
        .all(db)
        .await?;
    views(db, rows).await
}

/// Collectors as the API shows them: with their last job's status and next scheduled fire,
/// read in one query each for all of them.
async fn views(db: &impl ConnectionTrait, rows: Vec<collector::Model>) -> Result<Vec<Collector>> {
    let last_ids: Vec<_> = rows.iter().filter_map(|c| c.last_job_id).collect();
    let statuses: HashMap<_, _> = if last_ids.is_empty() {
        HashMap::new()
    } else {
        job::Entity::find()
            .filter(job::Column::Id.is_in(last_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|j| (j.id, j.status))
            .collect()
    };
    let next: HashMap<uuid::Uuid, DateTime<Utc>> = schedule::Entity::find()
        .select_only()
        .column(schedule::Column::CollectorId)
        .column_as(schedule::Column::NextFireAt.min(), "next")
        .filter(schedule::Column::CollectorId.is_in(rows.iter().map(|c| c.id)))
        .filter(schedule::Column::State.eq(ScheduleState::Enabled))
        .group_by(schedule::Column::CollectorId)
        .into_tuple::<(uuid::Uuid, Option<DateTime<chrono::FixedOffset>>)>()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(c, t)| Some((c, t?.to_utc())))
        .collect();
    rows.into_iter()
        .map(|c| {
            let status = c.last_job_id.and_then(|id| statuses.get(&id).copied());
            let next = next.get(&c.id).copied();
            view(c, status, next)
        })
        .collect()
}

/// Each collector of the domain with its plugin and version: one light query, for the worker's
/// check of which providers other collectors report.
///
/// # Errors
/// Database errors only.
pub async fn plugins(
    db: &impl ConnectionTrait,
    domain: DomainId,
) -> Result<Vec<(CollectorId, String, String)>> {
    Ok(collector::Entity::find()
        .select_only()
        .columns([
            collector::Column::Id,
            collector::Column::PluginId,
            collector::Column::Version,
        ])
        .filter(collector::Column::DomainId.eq(domain.as_uuid()))
        .into_tuple::<(uuid::Uuid, String, String)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(id, p, v)| (id.into(), p, v))
        .collect())
}

/// One collector's row, for code that acts on it.
pub(crate) async fn find(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: CollectorId,
) -> Result<collector::Model> {
    collector::Entity::find_by_id(id.as_uuid())
        .filter(collector::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("collector", id))
}

/// One collector with its last job's status.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such collector.
pub async fn get(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: CollectorId,
) -> Result<Collector> {
    let c = find(db, domain, id).await?;
    views(db, vec![c])
        .await?
        .pop()
        .ok_or_else(|| Error::not_found("collector", id))
}

/// The collector named `name` (exactly), with its last job's status; `None` when there is none.
///
/// # Errors
/// Database errors only.
pub async fn find_by_name(
    db: &impl ConnectionTrait,
    domain: DomainId,
    name: &str,
) -> Result<Option<Collector>> {
    let rows = collector::Entity::find()
        .filter(collector::Column::DomainId.eq(domain.as_uuid()))
        .filter(collector::Column::Name.eq(name))
        .all(db)
        .await?;
    Ok(views(db, rows).await?.pop())
}

/// A validated change to a collector; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct CollectorUpdate {
    pub name: Option<Name>,
    pub priority: Option<Priority>,
    /// `Some(None)` follows the plugin's latest version from now on; `Some(Some(v))` pins `v`.
    pub version: Option<Option<String>>,
    pub options: Option<Value>,
    pub tags: Option<BTreeMap<String, String>>,
    /// Applies to jobs accepted from now on.
    pub job_timeout: Option<JobTimeout>,
}

/// Applies an update.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector; [`Error::Conflict`] naming `name` when the new
/// name is taken.
pub async fn update<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    domain: DomainId,
    id: CollectorId,
    plugin: &PluginInfo,
    change: CollectorUpdate,
) -> Result<Collector> {
    let txn = super::begin_write(db).await?;
    let current = find(&txn, domain, id).await?;
    let reprioritized = change.priority.is_some_and(|p| p.get() != current.priority);
    let mut row: collector::ActiveModel = current.into();
    if let Some(name) = &change.name {
        row.name = Set(name.to_string());
    }
    if let Some(priority) = change.priority {
        row.priority = Set(priority.get());
    }
    match change.version {
        Some(Some(v)) => {
            row.version = Set(v);
            row.upgrade_mode = Set(UpgradeMode::Manual);
        }
        Some(None) => {
            row.version = Set(plugin.latest.clone());
            row.upgrade_mode = Set(UpgradeMode::Auto);
        }
        None => {}
    }
    if let Some(options) = change.options {
        row.options = Set(options);
    }
    if let Some(tags) = &change.tags {
        row.tags = Set(serde_json::to_value(tags).map_err(|e| Error::Corrupt(e.to_string()))?);
    }
    if let Some(timeout) = change.job_timeout {
        row.job_timeout_seconds = Set(timeout.seconds());
    }
    row.updated_at = Set(Utc::now().fixed_offset());
    match collector::Entity::update(row).exec(&txn).await {
        Ok(_) => {
            // What it reports alongside other collectors may now win or lose fields.
            if reprioritized {
                super::merge::remerge_collector(&txn, domain, id, false).await?;
            }
            txn.commit().await?;
            get(db, domain, id).await
        }
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict {
            field: "name",
            detail: format!(
                "a collector named '{}' already exists",
                change.name.map(|n| n.to_string()).unwrap_or_default()
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Enables or disables a collector. A disabled collector refuses `collect` and is skipped by
/// schedules; enabling or disabling twice is harmless.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such collector.
pub async fn set_state(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: CollectorId,
    state: CollectorState,
) -> Result<Collector> {
    let current = find(db, domain, id).await?;
    if current.state != state {
        let mut row: collector::ActiveModel = current.into();
        row.state = Set(state);
        row.updated_at = Set(Utc::now().fixed_offset());
        collector::Entity::update(row).exec(db).await?;
    }
    get(db, domain, id).await
}

/// Deletes a collector. Its resources stay, no longer owned by any collector; its jobs stay in
/// the history without it. Refused while one of its jobs is queued or running, since that job
/// would go on writing resources owned by a collector that no longer exists.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector; [`Error::State`] while a job of it is not
/// finished.
pub async fn delete<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    domain: DomainId,
    id: CollectorId,
) -> Result<()> {
    let txn = super::begin_write(db).await?;
    let c = find(&txn, domain, id).await?;
    let running = job::Entity::find()
        .filter(job::Column::CollectorId.eq(id.as_uuid()))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .count(&txn)
        .await?;
    if running > 0 {
        return Err(Error::State(format!(
            "collector '{}' has {running} job(s) queued or running: wait for them to finish, then delete it",
            c.name
        )));
    }
    // Resources it reported alongside others now show the others' reports alone.
    super::merge::remerge_collector(&txn, domain, id, true).await?;
    resource::Entity::update_many()
        .col_expr(
            resource::Column::CollectorId,
            Expr::value(Option::<uuid::Uuid>::None),
        )
        .filter(resource::Column::DomainId.eq(domain.as_uuid()))
        .filter(resource::Column::CollectorId.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    collector::Entity::delete_by_id(id.as_uuid())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}
