//! `device-sim`: simulate the city, print the comparison table (see `--help`). The same
//! program as `fogcharge` (see `device_sim::cli`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    device_sim::cli::main().await
}
