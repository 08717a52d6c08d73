//! `fog-server`: parse the configuration, start logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use fog_server::{Config, cancel_on_signal};
use service::logging;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match fog_server::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fog-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
