//! A collection's resources on their way to the sink: gathered into batches and written, by
//! one writer, or for a big task in a database that writes several transactions at once by
//! several, each on its own share of the resource keys.
//!
//! One writer makes the plugin wait while each batch is copied and upserted: one big account
//! ran at about twice the time of a raw COPY of its rows, two accounts side by side at 1.3×
//! (BENCHMARKS.md). Writers on disjoint keys keep what a single writer guarantees: a key's
//! versions are written in the order reported (a key always goes to the same writer, which
//! writes its batches one after another), and no two transactions of the task wait on the
//! same resource rows.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gleaner_common::store::{self, resource};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Summary;
use super::inventory::flush;
use crate::Context;
use crate::plugin::ResourceItem;
use crate::sink::{Scope, SinkError, Written};

/// One writer's batch being filled.
#[derive(Default)]
struct Lane {
    batch: Vec<ResourceItem>,
    keys: HashSet<(String, String)>,
    /// A batch of this writer is being written: the next one waits for it.
    busy: bool,
}

/// What a writer's batch came to.
type Outcome = (usize, Result<Written, SinkError>);

/// A task's batches being filled and written.
pub(super) struct Batches<'c> {
    ctx: &'c Context,
    scope: Scope,
    lanes: Vec<Lane>,
    /// Items per batch of each writer.
    size: usize,
    /// Batches being written by concurrent writers (never with one lane, which writes in
    /// place). Aborted if dropped: a task that stops early leaves no writer running.
    writing: JoinSet<Outcome>,
    /// Item errors not yet added to the task's progress.
    failed: i64,
}

impl<'c> Batches<'c> {
    /// One writer, batches of `size` items.
    pub(super) fn new(ctx: &'c Context, scope: Scope, size: usize) -> Self {
        let mut lane = Lane::default();
        lane.batch.reserve(size);
        Self {
            ctx,
            scope,
            lanes: vec![lane],
            size: size.max(1),
            writing: JoinSet::new(),
            failed: 0,
        }
    }

    /// The task turned big: batches of `batch_size` items in all, split among the worker's
    /// writers when the sink writes batches concurrently and no other collector shares the
    /// provider (whose resources go through the priority merge, one batch after another).
    /// Called with nothing being written. A first collection of the collector and account
    /// (nothing of theirs stored) is marked [`Scope::fresh`].
    pub(super) async fn grow(&mut self, batch_size: usize) -> Result<(), SinkError> {
        if let Some(collector) = self.scope.collector_id
            && self.ctx.sink.copies_fresh()
            && !self.scope.shared
        {
            let (account, job) = (self.scope.service_account_id, self.scope.job_id);
            let stored = read(self.ctx, "look for stored resources", || {
                resource::any_stored(&self.ctx.db, collector, account, job)
            })
            .await?;
            if !stored {
                self.scope.fresh = Some(Arc::new(AtomicBool::new(true)));
            }
        }
        let writers = Self::writers(self.ctx, &self.scope);
        self.size = (batch_size / writers).max(1);
        let pending = std::mem::take(&mut self.lanes[0].batch);
        self.lanes = (0..writers).map(|_| Lane::default()).collect();
        for lane in &mut self.lanes {
            lane.batch.reserve(self.size);
        }
        // The pending items have distinct keys and nothing is being written: spreading them
        // keeps every key's order.
        for item in pending {
            let n = self.lane_of(&item);
            let lane = &mut self.lanes[n];
            lane.keys
                .insert((item.resource_type.clone(), item.resource_key.clone()));
            lane.batch.push(item);
        }
        Ok(())
    }

    /// Room for the plugin's items waiting in its channel: a whole batch with one writer, so
    /// the plugin produces the next one while this one is written; one writer's batch with
    /// several, whose writes go on while the task takes in items. A big task then holds about
    /// three batches of items with one writer (the batch being written, its COPY encoding, the
    /// next one in the channel) and three and a half with two (the batches being filled, those
    /// being written and their encoding, half a batch in the channel).
    pub(super) fn channel_room(&self) -> usize {
        self.size
    }

    /// Writers of a big task of `scope`.
    pub(super) fn writers(ctx: &Context, scope: &Scope) -> usize {
        if ctx.sink.concurrent_batches() && !scope.shared {
            ctx.settings.writers.clamp(1, 16)
        } else {
            1
        }
    }

    /// An item error, added to the progress with the next batch.
    pub(super) fn fail(&mut self) {
        self.failed += 1;
    }

    /// Adds a resource, writing its writer's batch first when the key is already in it (the
    /// later version wins, as it would row by row) and after when the batch is full. `false`
    /// when the task turned out to be stale.
    pub(super) async fn push(
        &mut self,
        item: ResourceItem,
        summary: &mut Summary,
    ) -> Result<bool, SinkError> {
        let key = (item.resource_type.clone(), item.resource_key.clone());
        let mut n = self.lane_of(&item);
        if self.lanes[n].keys.contains(&key) {
            if !self.send(n, summary).await? {
                return Ok(false);
            }
            // The send may have brought the lanes back to one.
            n = self.lane_of(&item);
        }
        let lane = &mut self.lanes[n];
        lane.keys.insert(key);
        lane.batch.push(item);
        if lane.batch.len() >= self.size {
            return self.send(n, summary).await;
        }
        self.settle_done(summary)
    }

    /// Writes what is left and waits for every writer. `false` when the task is stale.
    pub(super) async fn finish(mut self, summary: &mut Summary) -> Result<bool, SinkError> {
        // A send may bring the lanes back to one (another collector shares the provider now):
        // their number is read again each time.
        let mut n = 0;
        while n < self.lanes.len() {
            if (!self.lanes[n].batch.is_empty() || self.failed > 0)
                && !self.send(n, summary).await?
            {
                return Ok(false);
            }
            n += 1;
        }
        while let Some(done) = self.writing.join_next().await {
            if !self.settle(done, summary)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn lane_of(&self, item: &ResourceItem) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        let hash = resource::key_hash(&item.resource_type, &item.resource_key);
        usize::try_from(hash % self.lanes.len() as u64).unwrap_or(0)
    }

    /// Writes lane `n`'s batch: in place with one writer, else once the lane's previous batch
    /// is written, beside the other lanes'.
    async fn send(&mut self, n: usize, summary: &mut Summary) -> Result<bool, SinkError> {
        if self.lanes.len() > 1 && !self.still_alone().await? && !self.narrow(summary).await? {
            return Ok(false);
        }
        if self.lanes.len() == 1 {
            let lane = &mut self.lanes[0];
            let written = flush(
                self.ctx,
                &mut self.scope,
                &mut lane.batch,
                &mut self.failed,
                summary,
            )
            .await?;
            lane.keys.clear();
            return Ok(written);
        }
        while self.lanes[n].busy {
            let Some(done) = self.writing.join_next().await else {
                break;
            };
            if !self.settle(done, summary)? {
                return Ok(false);
            }
        }
        let lane = &mut self.lanes[n];
        let batch = std::mem::replace(&mut lane.batch, Vec::with_capacity(self.size));
        lane.keys.clear();
        lane.busy = true;
        let failed = std::mem::take(&mut self.failed);
        let (sink, retry, scope) = (
            Arc::clone(&self.ctx.sink),
            self.ctx.db_retry,
            self.scope.clone(),
        );
        self.writing.spawn(
            async move {
                let written = retry
                    .run("write batch", SinkError::is_transient, || {
                        sink.write(&scope, &batch, failed)
                    })
                    .await;
                (n, written)
            }
            .in_current_span(),
        );
        Ok(true)
    }

    /// Whether the batches may still be written apart: asked before each one, because a
    /// collector of the same provider created while the task runs makes the rest of its
    /// batches go through the priority merge.
    async fn still_alone(&mut self) -> Result<bool, SinkError> {
        let shared = read(self.ctx, "find collectors sharing the provider", || {
            super::inventory::shares_provider(self.ctx, &self.scope)
        })
        .await?;
        self.scope.shared = shared;
        Ok(!shared)
    }

    /// Back to one writer: waits for every batch being written, then gathers the lanes' items
    /// into one batch (their keys are disjoint). `false` when the task is stale.
    async fn narrow(&mut self, summary: &mut Summary) -> Result<bool, SinkError> {
        tracing::debug!("another collector reports the provider now; back to one writer");
        while let Some(done) = self.writing.join_next().await {
            if !self.settle(done, summary)? {
                return Ok(false);
            }
        }
        let mut one = Lane::default();
        for lane in self.lanes.drain(..) {
            one.batch.extend(lane.batch);
            one.keys.extend(lane.keys);
        }
        self.lanes = vec![one];
        self.size = self.ctx.settings.batch_size.max(1);
        Ok(true)
    }

    /// Takes in the writes that are done without waiting, so a failure stops the task early.
    fn settle_done(&mut self, summary: &mut Summary) -> Result<bool, SinkError> {
        while let Some(done) = self.writing.try_join_next() {
            if !self.settle(done, summary)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn settle(
        &mut self,
        done: Result<Outcome, tokio::task::JoinError>,
        summary: &mut Summary,
    ) -> Result<bool, SinkError> {
        let (n, written) =
            done.map_err(|e| SinkError::Refused(format!("a batch writer stopped: {e}")))?;
        if let Some(lane) = self.lanes.get_mut(n) {
            lane.busy = false;
        }
        match written? {
            Written::Stale => Ok(false),
            // Lanes write only while no other collector shares the provider, so nothing is
            // contested: the sink looks for contested rows only in a shared scope.
            Written::Committed { counts, .. } => {
                summary.counts += counts;
                Ok(true)
            }
        }
    }
}

/// A read of the store on the batches' way, retried while it fails transiently; a failure
/// after the retries is the write's (the task tries again later).
pub(super) async fn read<T, F, Fut>(ctx: &Context, what: &str, op: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, store::Error>>,
{
    ctx.db_retry
        .run(what, store::Error::is_transient, op)
        .await
        .map_err(|e| SinkError::Db(e.to_string()))
}
