//! Small batches of many tasks in one PostgreSQL transaction: the group commit of
//! [`super::postgres::PgSink`].
//!
//! A task of a few resources spends its batch on round trips and the commit, not on rows. The
//! batches of a group are fenced together (each by its own attempt), upserted in one statement
//! with each row carrying its own task's scope, and their progress recorded with one update:
//! five round trips and one commit for the group.
//!
//! A group that fails is written again one batch at a time, so that one task's bad row (or a
//! lost race) fails that task only.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use gleaner_common::lifecycle::{Attempt, fence};
use gleaner_common::model::Counts;
use sqlx::{PgPool, Row};
use tracing::debug;
use uuid::Uuid;

use super::postgres::{Arrays, UPSERT};
use super::{ResourceSink, SinkError, Write, Written};

/// [`UPSERT`] where every row brings its own scope (`$2`–`$7`) beside its content, and which
/// returns each row written, for the counts of its task.
static UPSERT_GROUP: LazyLock<String> = LazyLock::new(|| {
    let mut sql = UPSERT.to_owned();
    for (from, to) in [
        (
            "SELECT s.id, $1, $2, s.resource_type, s.resource_key, s.name, s.region,
        $3, $4, $5, s.data, s.content_hash, 'ACTIVE', 0, $6, $6, now(), now()
    FROM gleaner_stage_resources s",
            "SELECT s.id, s.domain_id, s.provider, s.resource_type, s.resource_key, s.name,
        s.region, s.project_id, s.service_account_id, s.collector_id, s.data, s.content_hash,
        'ACTIVE', 0, s.job_id, s.job_id, now(), now()
    FROM (SELECT u.id, u.domain_id, u.provider, u.project_id, u.service_account_id,
            u.collector_id, u.job_id, u.resource_type, u.resource_key, u.name, u.region,
            u.data::jsonb AS data, u.content_hash
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::uuid[],
            $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::int8[])
        AS u(id, domain_id, provider, project_id, service_account_id, collector_id, job_id,
            resource_type, resource_key, name, region, data, content_hash)) s",
        ),
        (
            "RETURNING r.id, r.last_diff, (r.xmax = 0) AS inserted",
            "RETURNING r.id, r.last_diff, (r.xmax = 0) AS inserted, r.domain_id, r.provider,
        r.resource_type, r.resource_key, r.updated_job_id",
        ),
        (
            "SELECT $1, up.id, $6,",
            "SELECT up.domain_id, up.id, up.updated_job_id,",
        ),
        (
            "SELECT count(*) FILTER (WHERE kind = 'CREATED') AS created,
       count(*) FILTER (WHERE kind = 'UPDATED') AS updated
FROM changes",
            // `changes` runs whether or not it is read: data-modifying CTEs always do.
            "SELECT domain_id, provider, resource_type, resource_key, inserted FROM up",
        ),
    ] {
        assert!(sql.contains(from), "UPSERT changed: `{from}` not found");
        sql = sql.replacen(from, to, 1);
    }
    sql
});

/// Where a resource lives: its unique key.
type Key = (Uuid, String, String, String);

/// Writes `writes`: those [`ResourceSink::combines`] accepts and whose keys no earlier one of
/// the group has, together; the others one at a time.
pub(super) async fn write_many(
    sink: &dyn ResourceSink,
    pool: &PgPool,
    writes: Vec<Write>,
) -> Vec<Result<Written, SinkError>> {
    let mut out: Vec<Option<Result<Written, SinkError>>> = writes.iter().map(|_| None).collect();
    let mut alone = Vec::new();
    let mut together: Vec<(usize, Arrays)> = Vec::new();
    // An upsert may touch a row once: a key of two writes sends the later one to be alone.
    let mut owner: HashMap<Key, usize> = HashMap::new();
    for (n, w) in writes.iter().enumerate() {
        if !sink.combines(&w.scope, w.batch.len()) {
            alone.push(n);
            continue;
        }
        let keys: Vec<Key> = w
            .batch
            .iter()
            .map(|r| {
                (
                    w.scope.domain.as_uuid(),
                    w.scope.provider.clone(),
                    r.resource_type.clone(),
                    r.resource_key.clone(),
                )
            })
            .collect();
        if keys.iter().any(|k| owner.contains_key(k)) {
            alone.push(n);
            continue;
        }
        match Arrays::of(&w.batch) {
            Ok(a) => {
                owner.extend(keys.into_iter().map(|k| (k, n)));
                together.push((n, a));
            }
            Err(e) => out[n] = Some(Err(e)),
        }
    }
    if !together.is_empty() {
        let members: Vec<usize> = together.iter().map(|(n, _)| *n).collect();
        match write_group(pool, &writes, together, &owner).await {
            Ok(written) => {
                for (n, w) in written {
                    out[n] = Some(Ok(w));
                }
            }
            Err(e) => {
                debug!(error = %e, writes = members.len(), "a group of batches failed; writing them one by one");
                alone.extend(members);
            }
        }
    }
    for n in alone {
        let w = &writes[n];
        out[n] = Some(sink.write(&w.scope, &w.batch, w.failed).await);
    }
    out.into_iter()
        .map(|w| w.unwrap_or_else(|| Err(SinkError::Db("the batch was not written".into()))))
        .collect()
}

/// The group's transaction: each write's answer, by its index in `writes`.
async fn write_group(
    pool: &PgPool,
    writes: &[Write],
    together: Vec<(usize, Arrays)>,
    owner: &HashMap<Key, usize>,
) -> Result<Vec<(usize, Written)>, SinkError> {
    let db = SinkError::from;
    let attempts: Vec<Attempt> = together
        .iter()
        .map(|(n, _)| writes[*n].scope.attempt())
        .collect();
    let mut tx = pool.begin().await.map_err(db)?;
    let owned: HashSet<Uuid> = fence::pg::hold_many(&mut tx, &attempts).await.map_err(db)?;
    let (live, stale): (Vec<_>, Vec<_>) = together
        .into_iter()
        .partition(|(n, _)| owned.contains(&writes[*n].scope.task_id.as_uuid()));
    let mut counts: HashMap<usize, Counts> = live
        .iter()
        .map(|(n, _)| {
            let c = Counts {
                failed: writes[*n].failed,
                ..Counts::default()
            };
            (*n, c)
        })
        .collect();
    let group = Group::of(writes, &live);
    if !group.rows.ids.is_empty() {
        let scoped = sqlx::query(UPSERT_GROUP.as_str())
            .bind(&group.rows.ids)
            .bind(&group.domains)
            .bind(&group.providers)
            .bind(&group.projects)
            .bind(&group.accounts)
            .bind(&group.collectors)
            .bind(&group.jobs);
        let written = group
            .rows
            .bind_content(scoped)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        for r in written {
            let key: Key = (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some(c) = owner.get(&key).and_then(|n| counts.get_mut(n)) else {
                continue;
            };
            if r.get::<bool, _>(4) {
                c.created += 1;
            } else {
                c.updated += 1;
            }
        }
    }
    for (n, c) in &mut counts {
        c.unchanged =
            i64::try_from(writes[*n].batch.len()).unwrap_or(i64::MAX) - c.created - c.updated;
    }
    let progress: Vec<(Attempt, Counts)> = live
        .iter()
        .map(|(n, _)| (writes[*n].scope.attempt(), counts[n]))
        .collect();
    fence::pg::add_progress(&mut tx, &progress)
        .await
        .map_err(db)?;
    let mut jobs: Vec<Uuid> = live
        .iter()
        .map(|(n, _)| writes[*n].scope.job_id.as_uuid())
        .collect();
    jobs.sort_unstable();
    jobs.dedup();
    fence::pg::touch_jobs(&mut tx, &jobs).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    let mut out: Vec<(usize, Written)> = live
        .into_iter()
        .map(|(n, _)| {
            let w = Written::Committed {
                counts: counts[&n],
                contested: Vec::new(),
            };
            (n, w)
        })
        .collect();
    out.extend(stale.into_iter().map(|(n, _)| (n, Written::Stale)));
    Ok(out)
}

/// The rows of a group's batches as [`UPSERT_GROUP`]'s arrays, sorted by key: two groups
/// touching the same resources lock them in the same order.
#[derive(Default)]
struct Group {
    domains: Vec<Uuid>,
    providers: Vec<String>,
    projects: Vec<Option<Uuid>>,
    accounts: Vec<Option<Uuid>>,
    collectors: Vec<Option<Uuid>>,
    jobs: Vec<Uuid>,
    /// Each row's content, beside its scope above.
    rows: Arrays,
}

impl Group {
    fn of(writes: &[Write], live: &[(usize, Arrays)]) -> Self {
        let mut rows: Vec<(usize, &Arrays, usize)> = live
            .iter()
            .flat_map(|(n, a)| (0..a.ids.len()).map(move |i| (*n, a, i)))
            .collect();
        rows.sort_by(|&(xn, xa, xi), &(yn, ya, yi)| {
            sort_key(writes, xn, xa, xi).cmp(&sort_key(writes, yn, ya, yi))
        });
        let mut g = Self::default();
        for (n, a, i) in rows {
            let scope = &writes[n].scope;
            g.rows.push_row(a, i);
            g.domains.push(scope.domain.as_uuid());
            g.providers.push(scope.provider.clone());
            g.projects.push(scope.project_id.map(|p| p.as_uuid()));
            g.accounts
                .push(scope.service_account_id.map(|s| s.as_uuid()));
            g.collectors.push(scope.collector_id.map(|c| c.as_uuid()));
            g.jobs.push(scope.job_id.as_uuid());
        }
        g
    }
}

fn sort_key<'a>(
    writes: &'a [Write],
    n: usize,
    a: &'a Arrays,
    i: usize,
) -> (Uuid, &'a str, &'a str, &'a str) {
    let scope = &writes[n].scope;
    (
        scope.domain.as_uuid(),
        scope.provider.as_str(),
        a.types[i].as_str(),
        a.keys[i].as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_upsert_is_derived_from_the_single_one() {
        let sql = UPSERT_GROUP.as_str();
        assert!(sql.contains("unnest($1::uuid[]"));
        assert!(!sql.contains("gleaner_stage_resources"));
        assert!(sql.ends_with("FROM up"));
    }
}
