//! What every fogcharge server shares.
//!
//! - [`link`]: the MQTT connection (persistent session, reconnect with back-off, resend
//!   of what was not acknowledged, takeover detection, a reaper for old paho clients,
//!   subscriptions restored after every reconnect).
//! - [`lease`]: one active instance per role (a retained lease; a new instance stands
//!   by until the old one hands over).
//! - [`logging`]: tracing set-up (`RUST_LOG`, text or JSON).
//! - [`clock`]: the servers' notion of now (wall clock, or a simulation's scaled clock).
//! - [`secret`]: passwords read from files (container secrets).
//! - [`cancel_on_signal`]: SIGTERM / Ctrl-C cancel a shutdown token.
//! - [`serve`]: the body of every server's `main` (logging, signals, exit code).

pub mod clock;
pub mod lease;
pub mod link;
pub mod logging;
pub mod secret;

pub use clock::Clock;
pub use link::{Link, LinkSettings, Publisher, Will};
pub use logging::LogFormat;

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a server's `main` does once its configuration is parsed, the same in its own
/// binary and as a `fogcharge` command: logging (`RUST_LOG`, default `info`), `run`
/// until SIGTERM or Ctrl-C cancels its token, and a failure as one line `name: error`
/// with a non-zero exit.
pub async fn serve<F>(
    name: &str,
    log_format: LogFormat,
    run: impl FnOnce(CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    logging::init(log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => info!("Ctrl-C: shutting down"),
            _ = term => info!("SIGTERM: shutting down"),
        }
        token.cancel();
    });
}
