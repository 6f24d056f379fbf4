//! Starting Gleaner's components from settings.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use gleaner_api::{AppState, Inner};
use gleaner_common::broker::{self, AmqpPublisher, Names, Publisher};
use gleaner_common::config::{DatabaseSettings, Settings};
use gleaner_common::model::JobKind;
use gleaner_common::outbox::{Relay, Signal};
use gleaner_migrations::{Migrator, MigratorTrait};
use gleaner_worker::consumer::{self, ConsumerSettings};
use gleaner_worker::lock::{Locks, RedisLocks};
use gleaner_worker::sink::ResourceSink;
use gleaner_worker::sink::postgres::PgSink;
use gleaner_worker::{Context, Registry};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connects to PostgreSQL, applying pending migrations first when `migrate` is set.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn database(settings: &Settings, migrate: bool) -> anyhow::Result<DatabaseConnection> {
    if migrate {
        gleaner_common::db::ensure_database(&settings.database_url)
            .await
            .context("creating the database")?;
    }
    let db = gleaner_common::db::connect(&settings.database_url, &settings.database).await?;
    if migrate {
        apply_migrations(&db, settings.database.schema.as_deref()).await?;
    }
    Ok(db)
}

/// Applies pending migrations (in `schema` when given, creating it).
///
/// # Errors
/// A migration failed.
pub async fn apply_migrations(db: &DatabaseConnection, schema: Option<&str>) -> anyhow::Result<()> {
    if let Some(schema) = schema {
        let quoted = schema.replace('"', "\"\"");
        db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{quoted}\""))
            .await
            .context("creating the schema")?;
    }
    Migrator::up(db, None)
        .await
        .context("applying migrations")?;
    Ok(())
}

/// The broker publisher of a process.
#[must_use]
pub fn publisher(settings: &Settings, process: &str) -> Arc<AmqpPublisher> {
    AmqpPublisher::new(
        settings.amqp_url.clone(),
        Names::new(settings.amqp.prefix.clone()),
        format!("gleaner-{process}"),
    )
}

/// Spawns the outbox relay of a process.
pub fn spawn_relay(
    settings: &Settings,
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    signal: Signal,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let relay = Relay::new(db, publisher, signal, settings.outbox.clone());
    tokio::spawn(relay.run(shutdown))
}

/// How long requests taken from the queue may finish when the API stops.
const REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown`, with its outbox relay and, unless turned off
/// (`GLEANER_API__REQUESTS__ENABLED=false`), its intake of requests through RabbitMQ.
///
/// # Errors
/// The credentials key is missing or the server fails.
pub async fn serve_api(
    settings: &Settings,
    db: DatabaseConnection,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    gleaner_common::metrics::install();
    let signal = Signal::new();
    let publisher = publisher(settings, "api");
    let relay = spawn_relay(
        settings,
        db.clone(),
        publisher.clone(),
        signal.clone(),
        shutdown.clone(),
    );
    let state = api_state(settings, db, signal, Some(publisher.clone()))?;
    let requests = settings.api.requests.enabled.then(|| {
        let intake = gleaner_api::requests::Settings {
            amqp_url: settings.amqp_url.clone(),
            names: Names::new(settings.amqp.prefix.clone()),
            concurrency: settings.api.requests.concurrency,
            reply_queues: settings.api.requests.reply_queues.clone(),
            grace: REQUEST_GRACE,
        };
        tokio::spawn(gleaner_api::requests::run(
            gleaner_api::router(state.clone()),
            intake,
            shutdown.clone(),
        ))
    });
    let served = serve(state, listener, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(requests) = requests {
        requests.await.ok();
    }
    relay.await.ok();
    publisher.close().await;
    served
}

/// The API's state; `broker` is `None` in the standalone mode.
///
/// # Errors
/// The credentials key is missing, or it or the previous one is malformed.
pub fn api_state(
    settings: &Settings,
    db: DatabaseConnection,
    signal: Signal,
    broker: Option<Arc<dyn Publisher>>,
) -> anyhow::Result<AppState> {
    // The API runs plugins' credential checks itself, private plugins too: like registering
    // them, which runs their `init` here, so the plugin directory is the API host's as well.
    let registry = registry(settings)?;
    let access = registry.access().clone();
    Ok(AppState::new(Inner {
        db,
        cipher: settings.cipher()?,
        catalog: registry.catalog(),
        signal,
        broker,
        shutdown: CancellationToken::new(),
        events_poll_interval: settings.api.events_poll_interval,
        plugins: settings.plugins.clone(),
        verifier: Arc::new(registry),
        verify_timeout: settings.api.verify_timeout,
        keys: gleaner_api::auth::Keys::default(),
        // Empty is unset, as for the other secrets: an empty token could never be presented.
        metrics_token: settings
            .api
            .metrics_token
            .clone()
            .filter(|t| !t.trim().is_empty()),
        access: Arc::new(access),
        limits: gleaner_api::auth::Limits::new(
            settings.api.rate_limit_per_second,
            settings.api.rate_limit_burst,
            settings.api.event_streams_per_key,
            settings.api.failed_auth_per_second,
        ),
        max_body_bytes: settings.api.max_body_bytes,
        idempotency_retention: settings.api.idempotency_retention(),
    }))
}

/// The plugins a process runs: the built-in ones, private ones from the plugin directory, all
/// reaching only what the operator's allowlists let them.
///
/// # Errors
/// An allowlist entry is malformed.
pub fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    let access = settings.access().context("the access allowlists")?;
    let host = gleaner_cloudforet::Host::new(std::time::Duration::from_secs(
        settings.plugins.idle_seconds.max(1),
    ));
    Ok(official(Arc::new(access), settings)
        .with_private(settings.plugins.clone())
        .with_cloudforet_host(host))
}

/// The official plugins: the worker's own and the AWS ones, reaching what `access` allows.
#[must_use]
pub fn official(access: Arc<gleaner_common::access::Access>, settings: &Settings) -> Registry {
    let mut registry = Registry::builtin(access.clone());
    for plugin in gleaner_aws::plugins(&access, &settings.aws) {
        registry.add(plugin);
    }
    registry
}

/// Serves the API on `listener` until `shutdown`, letting requests in progress finish.
///
/// A graceful shutdown waits for every response to end, and a `GET /v1/jobs/events` stream
/// would never end by itself: the state's own token, which the streams watch, is cancelled
/// along with `shutdown`, so they end and their connections close.
///
/// # Errors
/// The server fails.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let streams = state.shutdown.clone();
    let app = gleaner_api::router(state);
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    // The peer's address limits failed authentications per address (`auth::Limits`).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            streams.cancel();
        })
        .await
        .context("serving HTTP")
}

/// What a worker's handlers share, over `sink`.
///
/// # Errors
/// The credentials key is missing or malformed.
pub fn worker_context(
    settings: &Settings,
    db: DatabaseConnection,
    signal: Signal,
    sink: Arc<dyn ResourceSink>,
    locks: Arc<dyn Locks>,
) -> anyhow::Result<Arc<Context>> {
    let costs: Arc<dyn gleaner_worker::sink::costs::CostSink> = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => {
            Arc::new(gleaner_worker::sink::costs_sqlite::SqliteCostSink::new(
                db.get_sqlite_connection_pool().clone(),
            ))
        }
        _ => Arc::new(gleaner_worker::sink::costs::PgCostSink::new(
            db.get_postgres_connection_pool().clone(),
        )),
    };
    let metrics: Arc<dyn gleaner_worker::sink::metrics::MetricSink> =
        match db.get_database_backend() {
            sea_orm::DbBackend::Sqlite => {
                Arc::new(gleaner_worker::sink::metrics_sqlite::SqliteMetricSink::new(
                    db.get_sqlite_connection_pool().clone(),
                ))
            }
            _ => Arc::new(gleaner_worker::sink::metrics::PgMetricSink::new(db.clone())),
        };
    let ctx = Context::new(
        db,
        settings.cipher()?,
        registry(settings)?,
        sink,
        settings.worker.clone(),
        signal,
    )
    .with_locks(locks)
    .with_costs(costs)
    .with_metrics(metrics, settings.metrics);
    Ok(Arc::new(ctx))
}

/// The scheduler over `db`, with the catalog of the built-in plugins (private ones are found
/// in the store).
#[must_use]
pub fn scheduler(settings: &Settings, db: DatabaseConnection) -> gleaner_scheduler::Scheduler {
    gleaner_scheduler::Scheduler::new(
        db,
        // The catalog only: its plugins never run here.
        official(Arc::default(), settings).catalog(),
        settings.scheduler.clone(),
    )
    .with_metrics(settings.metrics)
    .with_idempotency_retention(settings.api.idempotency_retention())
}

/// Runs a worker (consumer and outbox relay) until `shutdown`.
///
/// # Errors
/// The credentials key is missing.
pub async fn run_worker(
    settings: &Settings,
    db: DatabaseConnection,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    gleaner_common::metrics::install();
    let signal = Signal::new();
    let sink = Arc::new(PgSink::new(db.get_postgres_connection_pool().clone()));
    // A collection lock outlives a worker that died holding it by as long as its task's lease:
    // the task's next attempt can take the lock about when the reaper hands the task over.
    let lock_ttl = settings.worker.lease.max(std::time::Duration::from_secs(1));
    let locks = RedisLocks::connect(&settings.redis_url, &settings.redis.prefix, lock_ttl)
        .await
        .context("Redis (GLEANER_REDIS_URL) holds the collection locks")?;
    let ctx = worker_context(settings, db.clone(), signal.clone(), sink, Arc::new(locks))?;
    // Serves until the worker has stopped, so scrapes see the tasks of the grace period end.
    let metrics_stop = CancellationToken::new();
    let metrics = match settings.worker.metrics_listen {
        Some(addr) => bind_metrics(addr)
            .await
            .map(|l| tokio::spawn(serve_metrics(l, metrics_stop.clone()))),
        None => None,
    };
    let publisher = publisher(settings, "worker");
    // The relay outlives the consumer, so tasks finished during the grace period still get
    // their follow-up messages out.
    let relay_stop = CancellationToken::new();
    let reaper = gleaner_worker::reaper::spawn(
        db.clone(),
        &settings.worker,
        signal.clone(),
        shutdown.clone(),
    );
    let relay = spawn_relay(settings, db, publisher.clone(), signal, relay_stop.clone());
    let consumer_settings = ConsumerSettings {
        amqp_url: settings.amqp_url.clone(),
        names: Names::new(settings.amqp.prefix.clone()),
        kinds: JobKind::ALL.to_vec(),
        prefetch: settings.amqp.prefetch,
        grace: settings.worker.shutdown_grace,
        // At least a second: with none, every delivery would be handed back at once.
        hold: settings
            .worker
            .delivery_hold
            .max(std::time::Duration::from_secs(1)),
    };
    let plugin_processes = ctx.registry.cloudforet_host().clone();
    consumer::run(ctx, consumer_settings, shutdown).await;
    plugin_processes.shutdown().await;
    reaper.await.ok();
    relay_stop.cancel();
    relay.await.ok();
    publisher.close().await;
    metrics_stop.cancel();
    if let Some(served) = metrics
        && let Ok(Err(e)) = served.await
    {
        tracing::warn!(error = %e, "the metrics listener failed");
    }
    Ok(())
}

/// Binds a worker's metrics listener. `None`, with a warning, when it cannot: several workers
/// on one host share the default address, and metrics are not worth stopping a worker for.
pub async fn bind_metrics(addr: SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "the metrics listener could not bind; set GLEANER_WORKER__METRICS_LISTEN to another address, or `off`");
            None
        }
    }
}

/// Serves a worker's `/metrics` (Prometheus text) and `/healthz` on `listener` until
/// `shutdown`.
///
/// # Errors
/// The server fails.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(CONTENT_TYPE, gleaner_common::metrics::CONTENT_TYPE)],
                    gleaner_common::metrics::render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        );
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving metrics")
}

/// Removes an isolated installation (a test's or a benchmark's, named by its AMQP prefix and
/// database schema, both `name`): first its exchanges and queues, then its schema.
///
/// # Errors
/// The broker or the database is unreachable, or the schema stays locked for 30 s.
pub async fn remove_isolated(settings: &Settings, name: &str) -> anyhow::Result<()> {
    let conn = broker::connect(&settings.amqp_url, "gleaner-cleanup").await?;
    let ch = conn.create_channel().await?;
    broker::delete(&ch, &Names::new(name)).await?;
    conn.close(200, "done".into()).await.ok();

    let admin = DatabaseSettings {
        max_connections: 1,
        schema: None,
    };
    let db = gleaner_common::db::connect(&settings.database_url, &admin).await?;
    // A killed process leaves its pool connections open, possibly inside a transaction that
    // holds locks DROP SCHEMA would wait for; its connections carry `name` as
    // `application_name` when it was started that way (the tests do).
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
        [name.into()],
    ))
    .await?;
    db.execute_unprepared("SET lock_timeout = '30s'").await?;
    let quoted = name.replace('"', "\"\"");
    db.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{quoted}\" CASCADE"))
        .await?;
    db.close().await?;
    Ok(())
}
