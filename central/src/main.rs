//! `central`: parse the configuration, then [`serverkit::serve`]: logging, run until
//! SIGTERM/Ctrl-C.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = central::Config::parse();
    serverkit::serve("central", config.log_format, |shutdown| {
        central::run(config, shutdown)
    })
    .await
}
