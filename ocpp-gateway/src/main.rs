//! `ocpp-gateway`: parse the configuration, start logging, run until SIGTERM/Ctrl-C.
//! `ocpp-gateway hash-password` reads a password on stdin and prints the hash to put
//! in the chargers file.

use clap::Parser;
use ocpp_gateway::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        return match ocpp_gateway::hash_password_from_stdin() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ocpp-gateway hash-password: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = Config::parse();
    serverkit::serve("ocpp-gateway", config.log_format, |shutdown| {
        ocpp_gateway::run(config, shutdown)
    })
    .await
}
