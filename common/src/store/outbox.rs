//! The outbox: messages written in the same transaction as the rows they announce, and
//! published to the broker by a relay afterwards.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use serde::Serialize;

use super::{Error, Result};
use crate::entity::outbox;
use crate::envelope::{Envelope, Message};
use crate::events::JobEvent;
use crate::id::MessageId;

/// Where an outbox row goes: the work exchange, consumed by workers.
pub const WORK: &str = "work";
/// Where an outbox row goes: the events exchange, for integrations.
pub const EVENTS: &str = "events";

/// Queues job events; they are published after the caller's transaction commits.
///
/// # Errors
/// Database errors only.
pub async fn insert_events(db: &impl ConnectionTrait, events: &[JobEvent]) -> Result<()> {
    let rows = events.iter().map(|event| {
        Row::of(
            event.domain_id.as_uuid(),
            event.event_id.as_uuid(),
            event.event_type.to_owned(),
            event,
        )
    });
    write(db, EVENTS, None, rows).await
}

/// An outbox row's own values; its destination and `not_before` are those of its statement.
struct Row {
    domain_id: uuid::Uuid,
    message_id: uuid::Uuid,
    routing_key: String,
    body: String,
}

impl Row {
    fn of(
        domain_id: uuid::Uuid,
        message_id: uuid::Uuid,
        routing_key: String,
        body: &impl Serialize,
    ) -> Result<Self> {
        let body = serde_json::to_string(body).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(Self {
            domain_id,
            message_id,
            routing_key,
            body,
        })
    }
}

/// [`write`] in PostgreSQL: the rows unnested from arrays, one parameter a column, so a job's
/// thousands of messages are one short statement to parse and plan, in their order.
const WRITE_PG: &str = "INSERT INTO outbox (domain_id, message_id, routing_key, body, \
     publish_attempts, created_at, not_before, destination) \
     SELECT u.domain_id, u.message_id, u.routing_key, u.body, 0, $1, $2::timestamptz, $3 \
     FROM unnest($4::uuid[], $5::uuid[], $6::text[], $7::text[]) \
     WITH ORDINALITY AS u(domain_id, message_id, routing_key, body, n) ORDER BY u.n";

/// Inserts the rows, for `destination` and not before `not_before`, in one statement (none:
/// nothing).
async fn write(
    db: &impl ConnectionTrait,
    destination: &'static str,
    not_before: Option<DateTime<Utc>>,
    rows: impl Iterator<Item = Result<Row>>,
) -> Result<()> {
    let rows = rows.collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(());
    }
    let now = Utc::now().fixed_offset();
    let not_before = not_before.map(|t| t.fixed_offset());
    if db.get_database_backend() == DbBackend::Postgres {
        let (mut domains, mut messages, mut keys, mut bodies) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for r in rows {
            domains.push(r.domain_id);
            messages.push(r.message_id);
            keys.push(r.routing_key);
            bodies.push(r.body);
        }
        let insert = Statement::from_sql_and_values(
            DbBackend::Postgres,
            WRITE_PG,
            [
                now.into(),
                not_before.into(),
                destination.into(),
                domains.into(),
                messages.into(),
                keys.into(),
                bodies.into(),
            ],
        );
        db.execute_raw(insert).await?;
        return Ok(());
    }
    let models = rows.into_iter().map(|r| outbox::ActiveModel {
        id: NotSet,
        domain_id: Set(r.domain_id),
        message_id: Set(r.message_id),
        routing_key: Set(r.routing_key),
        body: Set(r.body),
        publish_attempts: Set(0),
        last_error: Set(None),
        created_at: Set(now),
        dead_at: Set(None),
        not_before: Set(not_before),
        destination: Set(destination.to_owned()),
        claimed_until: Set(None),
    });
    outbox::Entity::insert_many(models)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Queues a message; it is published after the caller's transaction commits.
///
/// # Errors
/// Database errors only.
pub async fn insert<P: Message + Serialize>(
    db: &impl ConnectionTrait,
    envelope: &Envelope<P>,
) -> Result<()> {
    insert_many(db, std::slice::from_ref(envelope)).await
}

/// Queues several messages in one statement.
///
/// # Errors
/// Database errors only.
pub async fn insert_many<P: Message + Serialize>(
    db: &impl ConnectionTrait,
    envelopes: &[Envelope<P>],
) -> Result<()> {
    insert_rows(db, envelopes, None).await
}

/// Queues a message to be delivered no earlier than `not_before` (a retry's backoff).
///
/// # Errors
/// Database errors only.
pub async fn insert_delayed<P: Message + Serialize>(
    db: &impl ConnectionTrait,
    envelope: &Envelope<P>,
    not_before: DateTime<Utc>,
) -> Result<()> {
    insert_rows(db, std::slice::from_ref(envelope), Some(not_before)).await
}

async fn insert_rows<P: Message + Serialize>(
    db: &impl ConnectionTrait,
    envelopes: &[Envelope<P>],
    not_before: Option<DateTime<Utc>>,
) -> Result<()> {
    let rows = envelopes.iter().map(|envelope| {
        Row::of(
            envelope.domain_id.as_uuid(),
            envelope.message_id.as_uuid(),
            envelope.routing_key(),
            envelope,
        )
    });
    write(db, WORK, not_before, rows).await
}

/// An outbox row ready to publish.
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: i64,
    pub message_id: MessageId,
    pub routing_key: String,
    pub body: String,
    /// A retry's backoff: the broker holds the message in a delay queue until then.
    pub not_before: Option<DateTime<Utc>>,
    /// [`WORK`] or [`EVENTS`].
    pub destination: String,
    /// How many times the broker refused the row so far.
    pub refusals: i32,
}

/// Claims up to `limit` live rows, oldest first, that no relay is publishing (or whose claim
/// ran out before `now`), until `until`, in one statement that commits at once: the relay then
/// publishes them with no transaction open and no row locked while the broker confirms, and
/// several relays never take the same row. PostgreSQL only (the standalone mode has no relay).
///
/// # Errors
/// Database errors only.
pub async fn claim_batch(
    db: &impl ConnectionTrait,
    limit: u64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Pending>> {
    let claim = Statement::from_sql_and_values(
        DbBackend::Postgres,
        CLAIM_PG,
        [
            until.fixed_offset().into(),
            now.fixed_offset().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    );
    let mut rows = outbox::Entity::find().from_raw_sql(claim).all(db).await?;
    // RETURNING keeps no order.
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows
        .into_iter()
        .map(|r| Pending {
            id: r.id,
            message_id: r.message_id.into(),
            routing_key: r.routing_key,
            body: r.body,
            not_before: r.not_before.map(|t| t.to_utc()),
            destination: r.destination,
            refusals: r.publish_attempts,
        })
        .collect())
}

/// [`claim_batch`]: the rows are picked with `SKIP LOCKED`, so two relays claiming at once
/// take different rows instead of waiting for each other. The function (migration 22) walks
/// the primary key even while the statistics say the outbox is empty.
const CLAIM_PG: &str = "SELECT * FROM gleaner_claim_outbox($1, $2, $3)";

/// Refusals of a row by the broker (in as many rounds) after which the relay marks it dead
/// instead of offering it again: a message the broker refuses that often will not be taken,
/// and it must not hold up the rows behind it. Clearing `dead_at` and `publish_attempts`
/// offers it again.
pub const REFUSALS_BEFORE_DEAD: i32 = 5;

/// Deletes the rows of a relay's round that the broker took. Like every settlement of a round,
/// only while the round's claim (`until`) holds them: a relay that outlived its claim leaves
/// the rows to the one that claimed them since.
///
/// # Errors
/// Database errors only.
pub async fn sent(db: &impl ConnectionTrait, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
    settle(
        db,
        "DELETE FROM outbox WHERE id = ANY($1) AND claimed_until = $2",
        ids,
        until,
        Vec::new(),
    )
    .await
}

/// Records that the broker refused the rows (`error` says why), and marks dead those refused
/// [`REFUSALS_BEFORE_DEAD`] times. The others are not offered again before 1 s, 3 s, 9 s, 27 s
/// after their first, second, third, fourth refusal: a refusal that passes does not cost a
/// message, and one that lasts sets it aside within a minute.
///
/// # Errors
/// Database errors only.
pub async fn refused(
    db: &impl ConnectionTrait,
    ids: &[i64],
    until: DateTime<Utc>,
    error: &str,
) -> Result<()> {
    settle(
        db,
        "UPDATE outbox SET publish_attempts = publish_attempts + 1, last_error = $3, \
         dead_at = CASE WHEN publish_attempts + 1 >= $4 THEN $5 ELSE dead_at END, \
         claimed_until = CASE WHEN publish_attempts + 1 >= $4 THEN NULL \
             ELSE $5 + make_interval(secs => power(3, publish_attempts)) END \
         WHERE id = ANY($1) AND claimed_until = $2",
        ids,
        until,
        vec![
            error.into(),
            REFUSALS_BEFORE_DEAD.into(),
            Utc::now().fixed_offset().into(),
        ],
    )
    .await
}

/// Records that the broker did not take the rows for a reason of its own (unreachable, a
/// nack, access refused): not held against them. Their claim ends, so the next round offers
/// them again.
///
/// # Errors
/// Database errors only.
pub async fn unreachable(
    db: &impl ConnectionTrait,
    ids: &[i64],
    until: DateTime<Utc>,
    error: &str,
) -> Result<()> {
    settle(
        db,
        "UPDATE outbox SET last_error = $3, claimed_until = NULL \
         WHERE id = ANY($1) AND claimed_until = $2",
        ids,
        until,
        vec![error.into()],
    )
    .await
}

/// Runs one settlement of a relay's round: `$1` the rows, `$2` the round's claim, then `more`.
async fn settle(
    db: &impl ConnectionTrait,
    sql: &str,
    ids: &[i64],
    until: DateTime<Utc>,
    more: Vec<sea_orm::Value>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut values: Vec<sea_orm::Value> = vec![ids.to_vec().into(), until.fixed_offset().into()];
    values.extend(more);
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await?;
    Ok(())
}

/// Up to `limit` live rows, oldest first, leaving out `busy` (rows being handled or waiting for
/// a retry). The in-process dispatcher of the standalone mode is the only reader, so it needs
/// no row locks; SQLite has none.
///
/// # Errors
/// Database errors only.
pub async fn next_deliveries(
    db: &impl ConnectionTrait,
    busy: &[i64],
    limit: u64,
) -> Result<Vec<Delivery>> {
    let now = Utc::now().fixed_offset();
    let rows = outbox::Entity::find()
        .filter(outbox::Column::DeadAt.is_null())
        .filter(outbox::Column::Id.is_not_in(busy.iter().copied()))
        .filter(
            sea_orm::Condition::any()
                .add(outbox::Column::NotBefore.is_null())
                .add(outbox::Column::NotBefore.lte(now)),
        )
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Delivery {
            id: r.id,
            attempts: r.publish_attempts,
            body: r.body,
            event: r.destination == EVENTS,
        })
        .collect())
}

/// An outbox row as the in-process dispatcher handles it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: i64,
    /// Deliveries so far (each counted when handed out).
    pub attempts: i32,
    pub body: String,
    /// A job event: the standalone mode has no broker to publish it to, and drops it.
    pub event: bool,
}

/// Marks a row dead (never delivered again), keeping it with its reason for operators.
///
/// # Errors
/// Database errors only.
pub async fn mark_dead(db: &impl ConnectionTrait, id: i64, reason: &str) -> Result<()> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::DeadAt,
            sea_orm::sea_query::Expr::value(Utc::now().fixed_offset()),
        )
        .col_expr(
            outbox::Column::LastError,
            sea_orm::sea_query::Expr::value(reason),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Adds `delta` to a row's deliveries: +1 before it is handled (so a delivery cut short by a
/// crash counts too), -1 to take back one that a graceful stop handed back.
///
/// # Errors
/// Database errors only.
pub async fn count_delivery(db: &impl ConnectionTrait, id: i64, delta: i32) -> Result<()> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::PublishAttempts,
            sea_orm::sea_query::ExprTrait::add(
                sea_orm::sea_query::Expr::col(outbox::Column::PublishAttempts),
                delta,
            ),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Records why the handling of a row failed, for operators looking at a stuck outbox.
///
/// # Errors
/// Database errors only.
pub async fn record_error(db: &impl ConnectionTrait, id: i64, error: &str) -> Result<()> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::LastError,
            sea_orm::sea_query::Expr::value(error),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes rows whose publication the broker confirmed.
///
/// # Errors
/// Database errors only.
pub async fn delete(db: &impl ConnectionTrait, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    outbox::Entity::delete_many()
        .filter(outbox::Column::Id.is_in(ids.iter().copied()))
        .exec(db)
        .await?;
    Ok(())
}

/// Rows not yet published (or, in the standalone mode, not yet handled); dead rows left out.
///
/// # Errors
/// Database errors only.
pub async fn backlog(db: &impl ConnectionTrait) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(outbox::Entity::find()
        .filter(outbox::Column::DeadAt.is_null())
        .count(db)
        .await?)
}
