//! `device-sim`: simulate the city, print the comparison table (see `--help`).

use clap::Parser;
use device_sim::Config;
use service::{cancel_on_signal, logging};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The local run starts its fog servers and central as `device-sim fog-server …` and
    // `device-sim central …`: the same code as their own binaries, one binary to build.
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fog-server") => return serve("fog-server", fog(&args[1..])).await,
        Some("central") => return serve("central", central(&args[1..])).await,
        _ => {}
    }
    let config = Config::parse();
    logging::init(config.log_format, "warn,fog_server=error,central=error");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    // A second Ctrl-C, or a shutdown that hangs, ends the process at once; the brokers'
    // watchdogs then stop them.
    let guard = shutdown.clone();
    tokio::spawn(async move {
        guard.cancelled().await;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => {}
        }
        eprintln!("device-sim: not stopped in time, exiting now");
        std::process::exit(130);
    });
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

async fn fog(args: &[String]) -> anyhow::Result<()> {
    let config = fog_server::Config::parse_from(args);
    logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    fog_server::run(config, shutdown).await
}

async fn central(args: &[String]) -> anyhow::Result<()> {
    let config = central::Config::parse_from(args);
    logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    central::run(config, shutdown).await
}

async fn serve(
    name: &str,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
