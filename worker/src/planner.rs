//! Planning a job: one task per service account linked to the job's plugin; for billing, one
//! per service account and month of the job's window (by default the previous month and the
//! current one).

use gleaner_common::billing::Window;
use gleaner_common::id::JobId;
use gleaner_common::id::TaskId;
use gleaner_common::lifecycle::job::{self, Unit};
use gleaner_common::model::{JobKind, JobStatus};
use gleaner_common::store::{self, service_account};
use tracing::info;

use crate::Context;

/// Plans a QUEUED job: its tasks, or `None` when there was nothing to plan (a redelivered
/// message of a job already planned, or a job since deleted with its domain).
///
/// # Errors
/// Database errors; the caller retries the message.
pub async fn plan(ctx: &Context, job_id: JobId) -> Result<Option<Vec<TaskId>>, store::Error> {
    let Some(input) = job::plan_input(&ctx.db, job_id).await? else {
        return Ok(None);
    };
    if input.status != JobStatus::Queued {
        return Ok(None);
    }
    let plugin = ctx
        .registry
        .resolve(
            &ctx.db,
            input.domain,
            &input.plugin_id,
            &input.plugin_version,
        )
        .await?;
    let (accounts, reason) = match plugin {
        Some(plugin) => {
            let provider = plugin.info().provider.clone();
            let filter = service_account::Filter {
                provider: Some(&provider),
                ..service_account::Filter::default()
            };
            let accounts = service_account::list(&ctx.db, input.domain, &filter).await?;
            let ids: Vec<_> = accounts.into_iter().map(|a| a.id).collect();
            (
                ids,
                format!(
                    "no service account of provider `{provider}` exists to collect from: create one first"
                ),
            )
        }
        None => (
            Vec::new(),
            format!(
                "plugin `{}` version {} is not in the catalog",
                input.plugin_id, input.plugin_version
            ),
        ),
    };
    let window =
        (input.kind == JobKind::Billing).then(|| input.window.unwrap_or_else(Window::recent));
    let units: Vec<Unit> = match window {
        Some(w) => accounts
            .iter()
            .flat_map(|&account| {
                w.months().map(move |m| Unit {
                    account,
                    month: Some(m),
                })
            })
            .collect(),
        None => accounts
            .iter()
            .map(|&account| Unit {
                account,
                month: None,
            })
            .collect(),
    };
    let attempts = i32::from(ctx.settings.task_attempts.max(1));
    let planned = job::plan(&ctx.db, &input, &units, window, attempts, &reason).await?;
    if let Some(tasks) = &planned {
        info!(job_id = %job_id, tasks = tasks.len(), "job planned");
        ctx.signal.notify();
    }
    Ok(planned)
}
