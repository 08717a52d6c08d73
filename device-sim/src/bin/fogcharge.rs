//! `fogcharge`: every process of a deployment in one binary (see `device_sim::cli`):
//! `fogcharge sim|setup|probe|fog-server|central`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    device_sim::cli::main().await
}
