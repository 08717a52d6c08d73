//! `device-sim`: simulate the city, print the comparison table (see `--help`). The
//! local run starts its servers with the `fogcharge` binary (`--server-exe`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    device_sim::cli::simulate(device_sim::Config::parse()).await
}
