//! The PostgreSQL sink: binary `COPY` into a temporary staging table, then one statement per
//! batch that upserts the resources, skips those whose content hash is unchanged, and records a
//! change (with a field-level diff for updates) for each created or updated one.
//!
//! One INSERT per row would cost a round trip each, and a multi-row INSERT is capped at 65,535
//! bind parameters; COPY streams the batch in one go.

use async_trait::async_trait;
use gleaner_common::lifecycle::fence;
use gleaner_common::model::Counts;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{ResourceSink, Scope, SinkError, Write, Written, content_hash, indexes_of};
use crate::plugin::ResourceItem;

/// Rows live until the end of the transaction; the table itself is created once per
/// connection. Temporary tables are not WAL-logged, so staging costs little beyond the copy.
///
/// JIT is off for the batch: the planner has no statistics for the staging table, guesses it
/// large, and compiles the upsert, which costs more than running it (measured: 300 ms of JIT
/// for a 230 ms statement).
const PREPARE: &str = "SET LOCAL jit = off;
CREATE TEMP TABLE IF NOT EXISTS gleaner_stage_resources (
    id uuid NOT NULL,
    resource_type text NOT NULL,
    resource_key text NOT NULL,
    name text,
    region text,
    data jsonb NOT NULL,
    content_hash bigint NOT NULL
) ON COMMIT DELETE ROWS";

const COPY_STAGE: &str = "COPY gleaner_stage_resources (id, resource_type, resource_key, name, region, data, content_hash) FROM STDIN (FORMAT binary)";

/// `$1` domain, `$2` provider, `$3` project, `$4` service account, `$5` collector, `$6` job.
///
/// The diff of an update is computed in the SET clause, the one place that sees the old row
/// and the new one together, and handed to `changes` through `last_diff`. A join of the staged
/// rows with `resources` would need the planner to choose index lookups, and with no
/// statistics for the staging table (and stale ones for a fast-growing `resources`) it chose
/// to hash every resource of the provider per batch (BENCHMARKS.md).
pub(super) const UPSERT: &str = "
WITH up AS (
    INSERT INTO resources AS r (
        id, domain_id, provider, resource_type, resource_key, name, region,
        project_id, service_account_id, collector_id, data, content_hash, state, missed_runs,
        created_job_id, updated_job_id, created_at, updated_at)
    SELECT s.id, $1, $2, s.resource_type, s.resource_key, s.name, s.region,
        $3, $4, $5, s.data, s.content_hash, 'ACTIVE', 0, $6, $6, now(), now()
    FROM gleaner_stage_resources s
    ON CONFLICT (domain_id, provider, resource_type, resource_key) DO UPDATE SET
        name = excluded.name,
        region = excluded.region,
        project_id = excluded.project_id,
        service_account_id = excluded.service_account_id,
        collector_id = excluded.collector_id,
        last_diff = gleaner_jsonb_diff(r.data, excluded.data),
        data = excluded.data,
        content_hash = excluded.content_hash,
        state = 'ACTIVE',
        missed_runs = 0,
        deleted_at = NULL,
        updated_job_id = excluded.updated_job_id,
        updated_at = now()
    WHERE (r.content_hash <> excluded.content_hash OR r.state <> 'ACTIVE')
        AND NOT r.merged AND (r.collector_id IS NULL OR r.collector_id = excluded.collector_id)
    RETURNING r.id, r.last_diff, (r.xmax = 0) AS inserted
), changes AS (
    INSERT INTO resource_changes (domain_id, resource_id, job_id, kind, diff, created_at)
    SELECT $1, up.id, $6,
        CASE WHEN up.inserted THEN 'CREATED' ELSE 'UPDATED' END,
        CASE WHEN up.inserted THEN NULL ELSE up.last_diff END,
        now()
    FROM up
    RETURNING kind
)
SELECT count(*) FILTER (WHERE kind = 'CREATED') AS created,
       count(*) FILTER (WHERE kind = 'UPDATED') AS updated
FROM changes";

/// Batches up to this many rows, when no other collector shares the provider, skip the staging
/// table: [`UPSERT`] reads them from arrays bound to the statement instead. For a task of a few
/// resources the staging table's set-up and the COPY exchange were most of the batch's time
/// (a one-row batch: 73 ms of staging against 23 ms of upsert on a loaded machine).
pub(super) const ARRAY_BATCH: usize = 64;

/// The rows of a batch as arrays, in [`UPSERT`]'s staging table's place: `$7`–`$13`.
const FROM_ARRAYS: &str = "FROM (SELECT u.id, u.resource_type, u.resource_key, u.name, u.region,
        u.data::jsonb AS data, u.content_hash
    FROM unnest($7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::int8[]) AS u(id, resource_type, resource_key, name, region, data, content_hash)) s";

/// [`UPSERT`] over bound arrays.
static UPSERT_ARRAYS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| UPSERT.replacen("FROM gleaner_stage_resources s", FROM_ARRAYS, 1));

/// Staged rows whose resource another collector owns, or several do. `$1` domain, `$2`
/// provider, `$3` collector. LATERAL keeps the planner on one unique-index probe per staged row.
const CONTESTED: &str = "
SELECT s.resource_type, s.resource_key FROM gleaner_stage_resources s
CROSS JOIN LATERAL (
    SELECT 1 FROM resources r
    WHERE r.domain_id = $1 AND r.provider = $2
        AND r.resource_type = s.resource_type AND r.resource_key = s.resource_key
        AND (r.merged OR (r.collector_id IS NOT NULL AND r.collector_id IS DISTINCT FROM $3))
) x";

const UNSTAGE: &str = "DELETE FROM gleaner_stage_resources
WHERE (resource_type, resource_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

/// A first collection's batch, straight into `resources`: no staging table and no upsert, which
/// with the staging COPY cost about twice a raw COPY of the same rows (BENCHMARKS.md). The
/// columns left out take their defaults: no misses, not merged, created and updated now.
const COPY_FRESH: &str = "COPY resources (id, domain_id, provider, resource_type, resource_key, \
    name, region, project_id, service_account_id, collector_id, data, content_hash, state, \
    created_job_id, updated_job_id) FROM STDIN (FORMAT binary)";

/// The change records of [`COPY_FRESH`]'s rows, as [`UPSERT`] writes them for created ones.
/// `$1` domain, `$2` job, `$3` the resources' ids.
const CREATED_FRESH: &str = "INSERT INTO resource_changes (domain_id, resource_id, job_id, kind) \
    SELECT $1, u.id, $2, 'CREATED' FROM unnest($3::uuid[]) AS u(id)";

/// Writes resources to PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgSink {
    pool: PgPool,
}

impl PgSink {
    /// Uses the sqlx pool behind SeaORM's connection (`get_postgres_connection_pool`).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ResourceSink for PgSink {
    async fn write(
        &self,
        scope: &Scope,
        batch: &[ResourceItem],
        failed: i64,
    ) -> Result<Written, SinkError> {
        let started = std::time::Instant::now();
        // Encoded before the transaction begins, which stays as short as the writes.
        let staged = if batch.is_empty() {
            Staged::Nothing
        } else if scope.fresh() {
            let (copy, ids) = encode_fresh(batch, scope)?;
            Staged::Fresh { copy, ids }
        } else if !scope.shared && batch.len() <= ARRAY_BATCH {
            Staged::Arrays(Arrays::of(batch)?)
        } else {
            Staged::Copy(encode(batch)?)
        };
        let encoded = started.elapsed();
        let db = SinkError::from;
        let mut tx = self.pool.begin().await.map_err(db)?;
        if !fence::pg::owns(&mut tx, scope.attempt())
            .await
            .map_err(db)?
        {
            return Ok(Written::Stale);
        }
        let mut counts = Counts {
            failed,
            ..Counts::default()
        };
        let mut contested = Vec::new();
        let merged = match staged {
            Staged::Nothing => None,
            Staged::Arrays(rows) => Some(changed(
                &rows
                    .bind_content(
                        bind_scope(sqlx::query(UPSERT_ARRAYS.as_str()), scope).bind(&rows.ids),
                    )
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?,
            )),
            Staged::Fresh { copy, ids } => {
                if copy_fresh(&mut tx, scope, copy, &ids).await? {
                    Some((i64::try_from(ids.len()).unwrap_or(i64::MAX), 0))
                } else {
                    // A key was stored after all (the collector's other account has it, or
                    // the plugin reported it again): this batch and the task's next ones
                    // upsert.
                    tracing::debug!(
                        rows = batch.len(),
                        "a first collection's batch found a key stored; upserting from here on"
                    );
                    scope.not_fresh();
                    let copy = encode(batch)?;
                    Some(upsert_staged(&mut tx, scope, batch, copy, &mut contested, encoded).await?)
                }
            }
            Staged::Copy(copy) => {
                Some(upsert_staged(&mut tx, scope, batch, copy, &mut contested, encoded).await?)
            }
        };
        if let Some((created, updated)) = merged {
            counts.created = created;
            counts.updated = updated;
            counts.unchanged = i64::try_from(batch.len() - contested.len()).unwrap_or(i64::MAX)
                - counts.created
                - counts.updated;
        }
        // The fence is taken last: the rows above were written with no lock on the task's row,
        // so another writer of the same task (on other keys) writes beside this one and waits
        // only for the commit. A stale attempt's transaction rolls back all it wrote.
        if !fence::pg::hold(&mut tx, scope.attempt())
            .await
            .map_err(db)?
        {
            return Ok(Written::Stale);
        }
        // A job's counts are summed from its tasks, and `GET /v1/jobs/events` finds changed
        // jobs by `updated_at` alone: the job moves with its task's progress.
        fence::pg::add_progress(&mut tx, &[(scope.attempt(), counts)])
            .await
            .map_err(db)?;
        fence::pg::touch_jobs(&mut tx, &[scope.job_id.as_uuid()])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Written::Committed { counts, contested })
    }

    fn concurrent_batches(&self) -> bool {
        true
    }

    fn copies_fresh(&self) -> bool {
        true
    }

    fn combines(&self, scope: &Scope, rows: usize) -> bool {
        !scope.shared && rows <= ARRAY_BATCH
    }

    async fn write_many(&self, writes: Vec<Write>) -> Vec<Result<Written, SinkError>> {
        super::pg_group::write_many(self, &self.pool, writes).await
    }
}

/// The created and updated counts [`UPSERT`] returns.
fn changed(row: &sqlx::postgres::PgRow) -> (i64, i64) {
    (row.get("created"), row.get("updated"))
}

/// Copies `copy` into the staging table, leaves out (into `contested`) the rows other
/// collectors own when the scope is shared, and upserts the rest: the created and updated
/// counts.
async fn upsert_staged(
    tx: &mut sqlx::PgConnection,
    scope: &Scope,
    batch: &[ResourceItem],
    copy: Vec<u8>,
    contested: &mut Vec<usize>,
    encoded: std::time::Duration,
) -> Result<(i64, i64), SinkError> {
    let started = std::time::Instant::now();
    let db = SinkError::from;
    sqlx::raw_sql(PREPARE).execute(&mut *tx).await.map_err(db)?;
    let mut sink = tx.copy_in_raw(COPY_STAGE).await.map_err(db)?;
    sink.send(copy).await.map_err(db)?;
    sink.finish().await.map_err(db)?;
    if scope.shared {
        let rows = sqlx::query(CONTESTED)
            .bind(scope.domain.as_uuid())
            .bind(&scope.provider)
            .bind(scope.collector_id.map(|c| c.as_uuid()))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        if !rows.is_empty() {
            let (types, keys): (Vec<String>, Vec<String>) = rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
                .unzip();
            sqlx::query(UNSTAGE)
                .bind(&types)
                .bind(&keys)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            *contested = indexes_of(batch, types.into_iter().zip(keys));
        }
    }
    let copied = started.elapsed();
    let row = bind_scope(sqlx::query(UPSERT), scope)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    tracing::debug!(
        rows = batch.len(),
        encode_ms = encoded.as_millis(),
        copy_ms = copied.as_millis(),
        upsert_ms = (started.elapsed() - copied).as_millis(),
        "batch staged and merged"
    );
    Ok(changed(&row))
}

/// Copies a first collection's batch straight into `resources` and records each row's
/// creation, inside a savepoint: `false`, with nothing written, when a key of the batch was
/// stored after all (the unique key refused the copy).
async fn copy_fresh(
    tx: &mut sqlx::PgConnection,
    scope: &Scope,
    copy: Vec<u8>,
    ids: &[Uuid],
) -> Result<bool, SinkError> {
    let db = SinkError::from;
    sqlx::raw_sql("SAVEPOINT gleaner_fresh")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let copied = async {
        let mut sink = tx.copy_in_raw(COPY_FRESH).await?;
        sink.send(copy).await?;
        sink.finish().await
    }
    .await;
    match copied {
        Ok(_) => {}
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT gleaner_fresh")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            return Ok(false);
        }
        Err(e) => return Err(db(e)),
    }
    sqlx::query(CREATED_FRESH)
        .bind(scope.domain.as_uuid())
        .bind(scope.job_id.as_uuid())
        .bind(ids)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    Ok(true)
}

/// A batch, encoded for the way it is written.
enum Staged {
    Nothing,
    /// A first collection's: for [`COPY_FRESH`], with the rows' ids.
    Fresh {
        copy: Vec<u8>,
        ids: Vec<Uuid>,
    },
    /// Small, and no other collector's resources to pick out: bound to [`UPSERT_ARRAYS`].
    Arrays(Arrays),
    /// For [`COPY_STAGE`], then [`UPSERT`] from the staging table.
    Copy(Vec<u8>),
}

/// Binds `$1`–`$6` of [`UPSERT`]: where the batch's resources belong.
fn bind_scope<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    scope: &Scope,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(scope.domain.as_uuid())
        .bind(scope.provider.clone())
        .bind(scope.project_id.map(|p| p.as_uuid()))
        .bind(scope.service_account_id.map(|s| s.as_uuid()))
        .bind(scope.collector_id.map(|c| c.as_uuid()))
        .bind(scope.job_id.as_uuid())
}

/// A small batch as the arrays [`FROM_ARRAYS`] reads.
#[derive(Default)]
pub(super) struct Arrays {
    pub(super) ids: Vec<Uuid>,
    pub(super) types: Vec<String>,
    pub(super) keys: Vec<String>,
    pub(super) names: Vec<Option<String>>,
    pub(super) regions: Vec<Option<String>>,
    pub(super) data: Vec<String>,
    pub(super) hashes: Vec<i64>,
}

impl Arrays {
    pub(super) fn of(batch: &[ResourceItem]) -> Result<Self, SinkError> {
        let n = batch.len();
        let mut a = Arrays {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            regions: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
        };
        for item in batch {
            let mut json = Vec::new();
            json_into(item, &mut json)?;
            a.ids.push(Uuid::now_v7());
            a.types.push(item.resource_type.clone());
            a.keys.push(item.resource_key.clone());
            a.names.push(item.name.clone());
            a.regions.push(item.region.clone());
            a.hashes.push(content_hash(item, &json));
            a.data
                .push(String::from_utf8(json).map_err(|_| SinkError::NotAnObject {
                    key: item.resource_key.clone(),
                })?);
        }
        Ok(a)
    }

    /// Appends row `i` of `other`.
    pub(super) fn push_row(&mut self, other: &Arrays, i: usize) {
        self.ids.push(other.ids[i]);
        self.types.push(other.types[i].clone());
        self.keys.push(other.keys[i].clone());
        self.names.push(other.names[i].clone());
        self.regions.push(other.regions[i].clone());
        self.data.push(other.data[i].clone());
        self.hashes.push(other.hashes[i]);
    }

    /// Binds every column but the ids, in the order [`FROM_ARRAYS`] reads them after the ids.
    pub(super) fn bind_content<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.types)
            .bind(&self.keys)
            .bind(&self.names)
            .bind(&self.regions)
            .bind(&self.data)
            .bind(&self.hashes)
    }
}

/// Writes an item's data as JSON text to `out`; it must be an object.
fn json_into(item: &ResourceItem, out: &mut Vec<u8>) -> Result<(), SinkError> {
    let not_an_object = || SinkError::NotAnObject {
        key: item.resource_key.clone(),
    };
    if !item.data.is_object() {
        return Err(not_an_object());
    }
    serde_json::to_writer(out, &item.data).map_err(|_| not_an_object())
}

/// Encodes a batch for [`COPY_STAGE`].
fn encode(batch: &[ResourceItem]) -> Result<Vec<u8>, SinkError> {
    let mut out = BinaryCopy::with_capacity(batch.len() * 700);
    let mut json = Vec::with_capacity(1024);
    for item in batch {
        json.clear();
        json_into(item, &mut json)?;
        out.row(7);
        out.uuid(Uuid::now_v7());
        out.text(&item.resource_type);
        out.text(&item.resource_key);
        out.opt_text(item.name.as_deref());
        out.opt_text(item.region.as_deref());
        out.jsonb(&json);
        out.int8(content_hash(item, &json));
    }
    Ok(out.finish())
}

/// Encodes a batch for [`COPY_FRESH`], with the ids given to its rows.
fn encode_fresh(batch: &[ResourceItem], scope: &Scope) -> Result<(Vec<u8>, Vec<Uuid>), SinkError> {
    let mut out = BinaryCopy::with_capacity(batch.len() * 800);
    let mut ids = Vec::with_capacity(batch.len());
    let mut json = Vec::with_capacity(1024);
    let uuid = |out: &mut BinaryCopy, id: Option<Uuid>| match id {
        Some(id) => out.uuid(id),
        None => out.null(),
    };
    for item in batch {
        json.clear();
        json_into(item, &mut json)?;
        let id = Uuid::now_v7();
        ids.push(id);
        out.row(15);
        out.uuid(id);
        out.uuid(scope.domain.as_uuid());
        out.text(&scope.provider);
        out.text(&item.resource_type);
        out.text(&item.resource_key);
        out.opt_text(item.name.as_deref());
        out.opt_text(item.region.as_deref());
        uuid(&mut out, scope.project_id.map(|p| p.as_uuid()));
        uuid(&mut out, scope.service_account_id.map(|a| a.as_uuid()));
        uuid(&mut out, scope.collector_id.map(|c| c.as_uuid()));
        out.jsonb(&json);
        out.int8(content_hash(item, &json));
        out.text("ACTIVE");
        out.uuid(scope.job_id.as_uuid());
        out.uuid(scope.job_id.as_uuid());
    }
    Ok((out.finish(), ids))
}

/// A buffer in PostgreSQL's binary COPY format: a fixed header, then per row a field count and
/// length-prefixed fields in network byte order, then a -1 trailer. Binary COPY skips the text
/// parsing (and the escaping of JSON) that the text and CSV formats need.
#[derive(Debug)]
pub struct BinaryCopy {
    buf: Vec<u8>,
}

impl BinaryCopy {
    /// A buffer with the header written and room for `capacity` more bytes.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(19 + capacity);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self { buf }
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    pub fn uuid(&mut self, id: Uuid) {
        self.field(id.as_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.field(s.as_bytes()),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    /// A `jsonb` value from JSON text: its binary form is a version byte (1) and the text.
    pub fn jsonb(&mut self, json: &[u8]) {
        self.len(json.len() + 1);
        self.buf.push(1);
        self.buf.extend_from_slice(json);
    }

    /// A one-dimensional `float8[]` without nulls.
    pub fn float8_array(&mut self, values: &[f64]) {
        self.array(701, values.iter().map(|v| v.to_be_bytes()));
    }

    /// A one-dimensional `int8[]` without nulls.
    pub fn int8_array(&mut self, values: &[i64]) {
        self.array(20, values.iter().map(|v| v.to_be_bytes()));
    }

    /// An array's binary form: dimensions, a has-nulls flag, the element type's oid, each
    /// dimension's length and lower bound, then the length-prefixed elements.
    fn array(&mut self, element_oid: i32, values: impl ExactSizeIterator<Item = [u8; 8]>) {
        let n = values.len();
        self.len(20 + n * 12);
        for header in [1, 0, element_oid, i32::try_from(n).unwrap_or(i32::MAX), 1] {
            self.buf.extend_from_slice(&header.to_be_bytes());
        }
        for v in values {
            self.buf.extend_from_slice(&8i32.to_be_bytes());
            self.buf.extend_from_slice(&v);
        }
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// Bytes written so far, header included.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes written so far, leaving an empty buffer (no header) for the next chunk
    /// of the same COPY stream.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The buffer with its trailer.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }

    fn field(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    fn len(&mut self, n: usize) {
        // A field is at most 1 GB in PostgreSQL; anything larger is rejected by the server.
        self.buf
            .extend_from_slice(&i32::try_from(n).unwrap_or(i32::MAX).to_be_bytes());
    }
}
