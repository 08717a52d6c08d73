//! `central`: parse the configuration, then [`service::serve`]: logging, run until
//! SIGTERM/Ctrl-C.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = central::Config::parse();
    service::serve("central", config.log_format, |shutdown| {
        central::run(config, shutdown)
    })
    .await
}
