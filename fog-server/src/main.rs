//! `fog-server`: parse the configuration, then [`serverkit::serve`]: logging, run until
//! SIGTERM/Ctrl-C.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = fog_server::Config::parse();
    serverkit::serve("fog-server", config.log_format, |shutdown| {
        fog_server::run(config, shutdown)
    })
    .await
}
