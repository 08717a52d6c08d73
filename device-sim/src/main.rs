//! `device-sim`: simulate the city, print the comparison table (see `--help`).

use clap::Parser;
use device_sim::Config;
use service::{cancel_on_signal, logging};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    logging::init(config.log_format, "warn");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match device_sim::run(config.clone(), shutdown).await {
        Ok(report) => {
            println!(
                "\nfogcharge device-sim — seed {}, {} vehicles, {} stations, {} simulated hours at {}x\n",
                config.scenario.seed,
                config.scenario.vehicles,
                config.scenario.stations,
                config.scenario.hours,
                config.speed
            );
            print!("{}", report.table());
            if let Some(path) = &config.report_json {
                println!("\nreport written to {}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("device-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
