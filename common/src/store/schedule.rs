//! Schedules and their fires.
//!
//! A schedule keeps `next_fire_at`, the next instant it fires; [`fire_due`] takes the schedules
//! whose instant has come and records one fire per instant: QUEUED with a job, SKIPPED (the
//! collector's previous job is still queued or running, or a later fire caught it up) or MISSED
//! (no scheduler ran within the catch-up window). The fire row and its job commit together,
//! and the unique (schedule, fire time) makes a second scheduler's attempt at the same fire a
//! no-op: each fire produces one job at most.

use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{CaseStatement, Expr, LockBehavior, LockType, OnConflict, SimpleExpr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Error, Result, collector as collector_store, is_unique_violation};
use crate::calendar::Calendar;
use crate::entity::{collector, job, schedule, schedule_fire};
use crate::id::{CollectorId, DomainId, JobId, ScheduleId};
use crate::lifecycle::job::{Queued, insert_queued, queued};
use crate::model::{CollectorState, FireOutcome, JobStatus, Name, ScheduleState, Trigger};
use crate::plugin::{Catalog, PluginInfo};

/// Upcoming fires shown with a schedule.
pub const SHOWN_FIRES: usize = 5;

/// A schedule as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Schedule {
    pub id: ScheduleId,
    pub collector_id: CollectorId,
    pub name: String,
    /// IANA timezone the hours, or the days of an interval, are in.
    #[schema(example = "Asia/Seoul")]
    pub timezone: String,
    /// Hours of the day (0–23), ascending; empty for an interval schedule.
    pub hours: Vec<u8>,
    /// Fires at local midnight, then every this many minutes until the next midnight; null
    /// for an hours schedule.
    #[schema(required = true, minimum = 1, maximum = 1440)]
    pub every_minutes: Option<u16>,
    pub state: ScheduleState,
    /// The next fires (RFC 3339, UTC); empty while paused.
    pub next_fires: Vec<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One fire of a schedule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Fire {
    pub fire_time: DateTime<Utc>,
    pub outcome: FireOutcome,
    /// The job it queued.
    pub job_id: Option<JobId>,
    /// Why it was skipped or missed.
    pub reason: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

fn calendar_of(m: &schedule::Model) -> Result<Calendar> {
    let calendar = match m.every_minutes {
        // An interval schedule's `hours` is an empty array, kept for the column's NOT NULL.
        Some(n) => Calendar::every(&m.timezone, i64::from(n)),
        None => {
            let hours: Vec<i64> = serde_json::from_value(m.hours.clone())
                .map_err(|e| Error::Corrupt(format!("hours of schedule {}: {e}", m.id)))?;
            Calendar::new(&m.timezone, &hours)
        }
    };
    calendar.map_err(|e| Error::Corrupt(format!("schedule {}: {}", m.id, e[0])))
}

fn view(m: schedule::Model, now: DateTime<Utc>) -> Result<Schedule> {
    let calendar = calendar_of(&m)?;
    let next_fires = match m.state {
        ScheduleState::Enabled => {
            // From the stored next fire: one due but not yet taken is still upcoming.
            let from = m.next_fire_at.map_or(now, |t| {
                t.with_timezone(&Utc) - chrono::Duration::seconds(1)
            });
            calendar.upcoming(from, SHOWN_FIRES)
        }
        ScheduleState::Paused => Vec::new(),
    };
    Ok(Schedule {
        id: m.id.into(),
        collector_id: m.collector_id.into(),
        name: m.name,
        timezone: calendar.timezone().to_owned(),
        hours: calendar.hours(),
        every_minutes: calendar.every_minutes(),
        state: m.state,
        next_fires,
        created_at: m.created_at.with_timezone(&Utc),
        updated_at: m.updated_at.with_timezone(&Utc),
    })
}

fn hours_json(calendar: &Calendar) -> serde_json::Value {
    serde_json::Value::from(calendar.hours())
}

fn every_minutes_column(calendar: &Calendar) -> Option<i32> {
    calendar.every_minutes().map(i32::from)
}

fn next_fire(
    calendar: &Calendar,
    state: ScheduleState,
    now: DateTime<Utc>,
) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    match state {
        ScheduleState::Enabled => calendar.next_after(now).map(|t| t.fixed_offset()),
        ScheduleState::Paused => None,
    }
}

fn name_taken(name: &str) -> Error {
    Error::Conflict {
        field: "name",
        detail: format!("the collector has a schedule named '{name}' already"),
    }
}

/// Adds a schedule to a collector; it fires from the next of its times after `now`.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector; [`Error::Conflict`] naming `name`.
pub async fn create(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: CollectorId,
    name: Name,
    calendar: &Calendar,
    state: ScheduleState,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    collector_store::find(db, domain, collector).await?;
    let at = now.fixed_offset();
    let row = schedule::ActiveModel {
        id: Set(ScheduleId::new().into()),
        domain_id: Set(domain.as_uuid()),
        collector_id: Set(collector.as_uuid()),
        name: Set(name.to_string()),
        timezone: Set(calendar.timezone().to_owned()),
        hours: Set(hours_json(calendar)),
        every_minutes: Set(every_minutes_column(calendar)),
        state: Set(state),
        next_fire_at: Set(next_fire(calendar, state, now)),
        created_at: Set(at),
        updated_at: Set(at),
    };
    match schedule::Entity::insert(row).exec_with_returning(db).await {
        Ok(m) => view(m, now),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// A collector's schedules, oldest first.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: CollectorId,
    now: DateTime<Utc>,
) -> Result<Vec<Schedule>> {
    collector_store::find(db, domain, collector).await?;
    schedule::Entity::find()
        .filter(schedule::Column::DomainId.eq(domain.as_uuid()))
        .filter(schedule::Column::CollectorId.eq(collector.as_uuid()))
        .order_by_asc(schedule::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|m| view(m, now))
        .collect()
}

async fn find(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ScheduleId,
) -> Result<schedule::Model> {
    schedule::Entity::find_by_id(id.as_uuid())
        .filter(schedule::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("schedule", id))
}

/// One schedule.
///
/// # Errors
/// [`Error::NotFound`].
pub async fn get(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ScheduleId,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    view(find(db, domain, id).await?, now)
}

/// The stored calendar of a schedule, for an update that changes part of it.
///
/// # Errors
/// [`Error::NotFound`].
pub async fn current_calendar(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ScheduleId,
) -> Result<Calendar> {
    calendar_of(&find(db, domain, id).await?)
}

/// What an update changes.
#[derive(Debug, Default)]
pub struct ScheduleUpdate {
    pub name: Option<Name>,
    pub calendar: Option<Calendar>,
    pub state: Option<ScheduleState>,
}

/// Applies an update. A new calendar, or a paused schedule enabled again, fires from the next
/// of its times after `now`: fires that fell while it was paused are neither run nor missed.
///
/// # Errors
/// [`Error::NotFound`]; [`Error::Conflict`] naming `name`.
pub async fn update(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ScheduleId,
    change: ScheduleUpdate,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    let current = find(db, domain, id).await?;
    let calendar = match &change.calendar {
        Some(c) => c.clone(),
        None => calendar_of(&current)?,
    };
    let state = change.state.unwrap_or(current.state);
    let refire = change.calendar.is_some() || state != current.state;
    let mut row: schedule::ActiveModel = current.into();
    if let Some(name) = &change.name {
        row.name = Set(name.to_string());
    }
    if change.calendar.is_some() {
        row.timezone = Set(calendar.timezone().to_owned());
        row.hours = Set(hours_json(&calendar));
        row.every_minutes = Set(every_minutes_column(&calendar));
    }
    row.state = Set(state);
    if refire {
        row.next_fire_at = Set(next_fire(&calendar, state, now));
    }
    row.updated_at = Set(now.fixed_offset());
    match schedule::Entity::update(row).exec(db).await {
        Ok(m) => view(m, now),
        Err(e) if is_unique_violation(&e) => Err(name_taken(
            &change.name.map(|n| n.to_string()).unwrap_or_default(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a schedule and its fires.
///
/// # Errors
/// [`Error::NotFound`].
pub async fn delete(db: &impl ConnectionTrait, domain: DomainId, id: ScheduleId) -> Result<()> {
    let m = find(db, domain, id).await?;
    schedule::Entity::delete_by_id(m.id).exec(db).await?;
    Ok(())
}

/// A schedule's fires, newest first.
///
/// # Errors
/// [`Error::NotFound`].
pub async fn fires(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ScheduleId,
    limit: u64,
) -> Result<Vec<Fire>> {
    let m = find(db, domain, id).await?;
    Ok(schedule_fire::Entity::find()
        .filter(schedule_fire::Column::ScheduleId.eq(m.id))
        .order_by_desc(schedule_fire::Column::FireTime)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(|f| Fire {
            fire_time: f.fire_time.with_timezone(&Utc),
            outcome: f.outcome,
            job_id: f.job_id.map(Into::into),
            reason: f.reason,
            recorded_at: f.created_at.with_timezone(&Utc),
        })
        .collect())
}

/// The earliest instant an enabled schedule fires, to sleep until.
///
/// # Errors
/// Database errors only.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>> {
    Ok(schedule::Entity::find()
        .select_only()
        .column(schedule::Column::NextFireAt)
        .filter(schedule::Column::State.eq(ScheduleState::Enabled))
        .filter(schedule::Column::NextFireAt.is_not_null())
        .order_by_asc(schedule::Column::NextFireAt)
        .limit(1)
        .into_tuple::<Option<DateTime<chrono::FixedOffset>>>()
        .one(db)
        .await?
        .flatten()
        .map(|t| t.with_timezone(&Utc)))
}

/// What one pass of [`fire_due`] recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fired {
    pub queued: u64,
    pub skipped: u64,
    pub missed: u64,
    /// Schedules looked at.
    pub schedules: u64,
}

impl std::ops::AddAssign for Fired {
    fn add_assign(&mut self, other: Fired) {
        self.queued += other.queued;
        self.skipped += other.skipped;
        self.missed += other.missed;
        self.schedules += other.schedules;
    }
}

/// Fires of one schedule recorded per pass at most: a schedule idle for years records its
/// latest missed fires, not every one.
const MAX_FIRES_PER_PASS: usize = 1_000;

/// Rows per multi-row statement.
const ROWS: usize = 1_000;

/// A share of the due schedules, by collector, that one of several concurrent passes takes
/// (PostgreSQL): `lane` of `lanes`. A collector's schedules are all in one lane, so its fires
/// are recorded one batch after another and a second one sees the first one's job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    pub lane: u32,
    pub lanes: u32,
}

/// Takes up to `limit` schedules whose fire time has come (by `now`) and records their fires.
/// A fire older than `window` is MISSED; of the fires within it, the latest queues a job (or is
/// SKIPPED when the collector's previous job is still queued or running) and the earlier ones
/// are SKIPPED as caught up by it. Disabled collectors' schedules move on without recording.
///
/// The whole batch is a handful of statements (multi-row inserts, `CASE` updates), not a few
/// per schedule: a burst of thousands of fires at one instant is queued within a second.
/// Passes of distinct lanes ([`Lane`]) may run at once; within a lane, `FOR UPDATE SKIP
/// LOCKED` keeps two passes off the same schedules.
///
/// # Errors
/// Database errors; the pass's schedules are left for the next one.
pub async fn fire_due(
    db: &DatabaseConnection,
    catalog: &Catalog,
    now: DateTime<Utc>,
    window: chrono::Duration,
    limit: u64,
    lane: Lane,
) -> Result<Fired> {
    let txn = super::begin_write(db).await?;
    let mut due = schedule::Entity::find()
        .filter(schedule::Column::State.eq(ScheduleState::Enabled))
        .filter(schedule::Column::NextFireAt.lte(now.fixed_offset()));
    if lane.lanes > 1 {
        due = due.filter(Expr::cust(format!(
            "abs(hashtext(CAST(collector_id AS text)) % {}) = {}",
            lane.lanes, lane.lane
        )));
    }
    let due = due
        .order_by_asc(schedule::Column::NextFireAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .all(&txn)
        .await?;
    let mut fired = Fired {
        schedules: due.len() as u64,
        ..Fired::default()
    };
    if due.is_empty() {
        return Ok(fired);
    }
    let collector_ids: HashSet<Uuid> = due.iter().map(|s| s.collector_id).collect();
    let collectors: HashMap<Uuid, collector::Model> = collector::Entity::find()
        .filter(collector::Column::Id.is_in(collector_ids.iter().copied()))
        .all(&txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut busy: HashMap<Uuid, (Uuid, JobStatus)> = job::Entity::find()
        .select_only()
        .columns([
            job::Column::CollectorId,
            job::Column::Id,
            job::Column::Status,
        ])
        .filter(job::Column::CollectorId.is_in(collector_ids.iter().copied()))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .into_tuple::<(Option<Uuid>, Uuid, JobStatus)>()
        .all(&txn)
        .await?
        .into_iter()
        .filter_map(|(c, j, s)| Some((c?, (j, s))))
        .collect();
    let mut plugins: HashMap<(Uuid, String), Option<PluginInfo>> = HashMap::new();
    let mut plan = Plan::default();
    for s in &due {
        let calendar = calendar_of(s)?;
        let Some(first) = s.next_fire_at.map(|t| t.with_timezone(&Utc)) else {
            continue;
        };
        let mut times = vec![first];
        while let Some(t) = times.last().and_then(|t| calendar.next_after(*t))
            && t <= now
        {
            times.push(t);
            if times.len() > MAX_FIRES_PER_PASS {
                times.remove(0);
            }
        }
        plan.next
            .push((s.id, calendar.next_after(now).map(|t| t.fixed_offset())));
        let Some(c) = collectors.get(&s.collector_id) else {
            continue;
        };
        if c.state == CollectorState::Disabled {
            continue;
        }
        let (late, recent): (Vec<_>, Vec<_>) = times.into_iter().partition(|t| now - *t > window);
        for t in late {
            let reason = format!(
                "no scheduler ran within the catch-up window ({} min) after this fire",
                window.num_minutes()
            );
            plan.fire(s.id, t, FireOutcome::Missed, None, Some(reason));
        }
        let Some((&latest, earlier)) = recent.split_last() else {
            continue;
        };
        for t in earlier {
            let reason = format!("caught up by the fire at {}", latest.to_rfc3339());
            plan.fire(s.id, *t, FireOutcome::Skipped, None, Some(reason));
        }
        if let Some((job_id, status)) = busy.get(&c.id) {
            let status = match status {
                JobStatus::Queued => "queued",
                _ => "running",
            };
            let reason = format!("the collector's previous job {job_id} was still {status}");
            plan.fire(s.id, latest, FireOutcome::Skipped, None, Some(reason));
            continue;
        }
        let key = (c.domain_id, c.plugin_id.clone());
        if !plugins.contains_key(&key) {
            let found = super::plugin::find(
                &txn,
                catalog,
                DomainId::from_uuid(c.domain_id),
                &c.plugin_id,
            )
            .await?;
            plugins.insert(key.clone(), found);
        }
        let Some(Some(plugin)) = plugins.get(&key) else {
            let reason = format!("plugin `{}` is no longer in the catalog", c.plugin_id);
            plan.fire(s.id, latest, FireOutcome::Skipped, None, Some(reason));
            continue;
        };
        let job_id = JobId::new();
        plan.fire(s.id, latest, FireOutcome::Queued, Some(job_id), None);
        plan.jobs.insert(
            job_id.as_uuid(),
            queued(
                DomainId::from_uuid(c.domain_id),
                job_id,
                c,
                plugin,
                Trigger::Schedule,
                Some((ScheduleId::from_uuid(s.id), latest)),
            ),
        );
        // A second schedule of the same collector at the same instant finds this job.
        busy.insert(c.id, (job_id.as_uuid(), JobStatus::Queued));
    }
    plan.write(&txn, &mut fired).await?;
    txn.commit().await?;
    Ok(fired)
}

/// What a pass writes.
#[derive(Default)]
struct Plan {
    fires: Vec<schedule_fire::ActiveModel>,
    jobs: HashMap<Uuid, Queued>,
    next: Vec<(Uuid, Option<DateTime<chrono::FixedOffset>>)>,
}

impl Plan {
    fn fire(
        &mut self,
        schedule: Uuid,
        fire_time: DateTime<Utc>,
        outcome: FireOutcome,
        job: Option<JobId>,
        reason: Option<String>,
    ) {
        self.fires.push(schedule_fire::ActiveModel {
            schedule_id: Set(schedule),
            fire_time: Set(fire_time.fixed_offset()),
            outcome: Set(outcome),
            job_id: Set(job.map(|j| j.as_uuid())),
            reason: Set(reason),
            created_at: Set(Utc::now().fixed_offset()),
            ..Default::default()
        });
    }

    /// Records the fires no other scheduler recorded first, writes the jobs of those that
    /// queued one, and moves the schedules on.
    async fn write(self, txn: &DatabaseTransaction, fired: &mut Fired) -> Result<()> {
        let mut jobs = self.jobs;
        let mut queued = Vec::new();
        let mut last_jobs = Vec::new();
        let mut fires = self.fires;
        while !fires.is_empty() {
            let chunk: Vec<_> = fires.drain(..fires.len().min(ROWS)).collect();
            let recorded = match schedule_fire::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([
                        schedule_fire::Column::ScheduleId,
                        schedule_fire::Column::FireTime,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_with_returning(txn)
                .await
            {
                Ok(r) => r,
                Err(sea_orm::DbErr::RecordNotInserted) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for f in recorded {
                match f.outcome {
                    FireOutcome::Queued => fired.queued += 1,
                    FireOutcome::Skipped => fired.skipped += 1,
                    FireOutcome::Missed => fired.missed += 1,
                }
                if let Some(job) = f.job_id.and_then(|j| jobs.remove(&j)) {
                    if let (Set(Some(c)), Set(j)) = (&job.row.collector_id, &job.row.id) {
                        last_jobs.push((*c, *j));
                    }
                    queued.push(job);
                }
            }
        }
        insert_queued(txn, queued).await?;
        for chunk in last_jobs.chunks(ROWS) {
            collector::Entity::update_many()
                .col_expr(
                    collector::Column::LastJobId,
                    case_of(
                        collector::Column::Id,
                        chunk.iter().map(|(c, j)| (*c, Some(*j))),
                    ),
                )
                .filter(collector::Column::Id.is_in(chunk.iter().map(|(c, _)| *c)))
                .exec(txn)
                .await?;
        }
        for chunk in self.next.chunks(ROWS) {
            schedule::Entity::update_many()
                .col_expr(
                    schedule::Column::NextFireAt,
                    case_of(schedule::Column::Id, chunk.iter().copied()),
                )
                .filter(schedule::Column::Id.is_in(chunk.iter().map(|(s, _)| *s)))
                .exec(txn)
                .await?;
        }
        Ok(())
    }
}

/// `CASE column WHEN id THEN value … END`: one UPDATE sets a different value per row.
fn case_of<C, V>(column: C, values: impl Iterator<Item = (Uuid, V)>) -> SimpleExpr
where
    C: sea_orm::ColumnTrait,
    V: Into<sea_orm::Value>,
{
    let mut case = CaseStatement::new();
    for (id, v) in values {
        case = case.case(column.eq(id), Expr::value(v));
    }
    SimpleExpr::Case(Box::new(case))
}
