//! One module per subcommand: `pub async fn run(args, settings, shutdown)`.

use tokio_util::sync::CancellationToken;

pub mod api;
pub mod domain;
pub mod migrate;
pub mod rotate_secret_key;
pub mod scheduler;
pub mod standalone;
pub mod worker;

/// Cancels `token` on Ctrl-C or SIGTERM; exits at once on a second Ctrl-C.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down (press Ctrl-C again to stop at once)");
    token.cancel();
    // A second Ctrl-C skips the grace period. Nothing is lost: work that was running is
    // handed back from the store or the broker, as after a crash.
    tokio::signal::ctrl_c().await.ok();
    tracing::warn!("second interrupt: exiting now");
    std::process::exit(130);
}
