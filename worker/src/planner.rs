//! Planning a job: one task per service account linked to the job's plugin; for billing, one
//! per service account and month of the job's window (by default the previous month and the
//! current one).

use gleaner_common::billing::Window;
use gleaner_common::id::JobId;
use gleaner_common::id::ServiceAccountId;
use gleaner_common::id::TaskId;
use gleaner_common::lifecycle::job::{self, Unit};
use gleaner_common::lifecycle::task::SubTask;
use gleaner_common::model::{JobKind, JobStatus};
use gleaner_common::store::{self, service_account};
use tracing::{info, warn};

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
    let (accounts, reason) = match &plugin {
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
                    sub_task: None,
                })
            })
            .collect(),
        None => {
            let mut units = Vec::with_capacity(accounts.len());
            for &account in &accounts {
                let parts = match &plugin {
                    Some(p) if input.kind == JobKind::Inventory && p.splits() => {
                        split(ctx, &input, p.as_ref(), account).await
                    }
                    _ => None,
                };
                match parts {
                    Some(parts) => {
                        let n = i32::try_from(parts.len()).unwrap_or(i32::MAX);
                        units.extend(parts.into_iter().zip(0..).map(|(options, part)| Unit {
                            account,
                            month: None,
                            sub_task: Some(SubTask {
                                options,
                                part,
                                parts: n,
                            }),
                        }));
                    }
                    None => units.push(Unit {
                        account,
                        month: None,
                        sub_task: None,
                    }),
                }
            }
            units
        }
    };
    let attempts = i32::from(ctx.settings.task_attempts.max(1));
    // Planning again (a redelivered message) must plan the same tasks: the first plan wins,
    // since only a QUEUED job is planned.
    let planned = job::plan(&ctx.db, &input, &units, window, attempts, &reason).await?;
    if let Some(tasks) = &planned {
        info!(job_id = %job_id, tasks = tasks.len(), "job planned");
        ctx.signal.notify();
    }
    Ok(planned)
}

/// The parts a plugin splits an account's collection into, or `None` to collect it as one
/// task: when it does not split it, or cannot say now (the task then asks again itself, and
/// fails there with the reason if the plugin cannot run).
async fn split(
    ctx: &Context,
    input: &job::PlanInput,
    plugin: &dyn crate::plugin::Plugin,
    account: ServiceAccountId,
) -> Option<Vec<serde_json::Value>> {
    let secret = match service_account::credentials(&ctx.db, &ctx.cipher, input.domain, account)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(job_id = %input.id, %account, error = %e, "reading the credentials to split the collection failed; one task collects the account");
            return None;
        }
    };
    match plugin.sub_tasks(&input.options, &secret, account).await {
        // A part's options are stored with its task: never credentials.
        Ok(Some(parts))
            if parts.iter().any(|p| {
                let text = p.to_string();
                gleaner_common::external::redact(&text, &secret) != text
            }) =>
        {
            warn!(job_id = %input.id, %account, "the plugin's sub-tasks carry credentials, which a task does not keep; one task collects the account");
            None
        }
        Ok(parts) => parts,
        Err(e) => {
            let error = gleaner_common::external::redact(&e.to_string(), &secret);
            warn!(job_id = %input.id, %account, %error, "the plugin did not say how to split the collection; one task collects the account");
            None
        }
    }
}
