//! `central`: parse the configuration, start logging, run until SIGTERM/Ctrl-C.

use central::{Config, cancel_on_signal};
use clap::Parser;
use service::logging;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match central::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("central: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
