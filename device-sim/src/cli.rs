//! The simulation as a command (`device-sim …`, `fogcharge sim …`): runs the
//! configured strategies (or, with `--seeds`, a sweep over seeds in process), prints
//! the comparison table, and turns Ctrl-C into a clean stop of everything the local
//! run started.

use std::process::ExitCode;
use std::time::Duration;

use serverkit::{cancel_on_signal, logging};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Runs the simulation `config` describes and prints its report; a failure is one line
/// on stderr and a non-zero exit.
pub async fn simulate(mut config: Config) -> ExitCode {
    // In process, the servers' cores log into this process: only their errors by
    // default (a run's warnings, e.g. a reroute central did not answer in time, are
    // its figures).
    let filter = if config.in_process {
        "warn,fog_server=error,central=error"
    } else {
        "warn"
    };
    logging::init(config.log_format, filter);
    if let Err(e) = config.read_files() {
        eprintln!("device-sim: {e:#}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    // A second Ctrl-C, or a shutdown that hangs, ends the process at once; the brokers'
    // watchdogs then stop them.
    let guard = shutdown.clone();
    tokio::spawn(async move {
        guard.cancelled().await;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(Duration::from_secs(20)) => {}
        }
        eprintln!("device-sim: not stopped in time, exiting now");
        std::process::exit(130);
    });
    if config.seeds.is_some() {
        return match crate::sweep(config.clone(), shutdown).await {
            Ok(sweep) => {
                println!(
                    "\nfogcharge device-sim — in process, {} vehicles, {} stations, {} simulated hours at {}x\n",
                    config.scenario.vehicles,
                    config.scenario.stations,
                    config.scenario.hours,
                    config.speed
                );
                print!("{}", sweep.table());
                if let Some(path) = &config.report_json {
                    println!("\nevery seed's report written to {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("device-sim: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match crate::run(config.clone(), shutdown).await {
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
            for path in [&config.report_json, &config.report_html]
                .into_iter()
                .flatten()
            {
                println!("\nreport written to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("device-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
