//! `ocpp-gateway`: parse the configuration, start logging, run until SIGTERM/Ctrl-C.
//! `ocpp-gateway hash-password` reads a password on stdin and prints the hash to put
//! in the chargers file.

use clap::Parser;
use ocpp_gateway::{Config, cancel_on_signal};
use serverkit::logging;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim_end().is_empty() {
            eprintln!("ocpp-gateway hash-password: give the password on stdin");
            return std::process::ExitCode::FAILURE;
        }
        println!(
            "{}",
            topology::auth::hash_password(line.trim_end_matches(['\n', '\r']))
        );
        return std::process::ExitCode::SUCCESS;
    }
    let config = Config::parse();
    logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match ocpp_gateway::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocpp-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
