//! The command line of the `fogcharge` (and `device-sim`) binary: one binary for every
//! process of a deployment.
//!
//! | command | what |
//! | --- | --- |
//! | `fogcharge [sim] …` | the simulation (`--help` lists its options) |
//! | `fogcharge fog-server …` | a regional fog server, as the `fog-server` binary |
//! | `fogcharge central …` | the central server, as the `central` binary |
//! | `fogcharge setup …` | a deployment's users, broker password/ACL files, bridge sections and shared clock ([`setup`]) |
//! | `fogcharge probe URL` | exit 0 when URL answers 2xx (container health checks; `--wait-s` retries) |

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use service::{cancel_on_signal, logging};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::setup::{self, SetupArgs};

/// Runs the command named by the process's arguments.
pub async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fog-server") => return serve("fog-server", fog(&args[1..])).await,
        Some("central") => return serve("central", central(&args[1..])).await,
        Some("setup") => {
            let setup_args = SetupArgs::parse_from(&args[1..]);
            logging::init(logging::LogFormat::Text, "info");
            return serve("setup", setup::run(setup_args)).await;
        }
        Some("probe") => return serve("probe", probe(ProbeArgs::parse_from(&args[1..]))).await,
        Some("sim") => {
            args.remove(1);
        }
        _ => {}
    }
    simulate(Config::parse_from(args)).await
}

async fn simulate(mut config: Config) -> ExitCode {
    logging::init(config.log_format, "warn,fog_server=error,central=error");
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

async fn serve(name: &str, run: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exits 0 when the URL answers with a 2xx status (container health checks).
#[derive(Debug, Parser)]
#[command(name = "fogcharge probe")]
struct ProbeArgs {
    /// e.g. http://127.0.0.1:9090/healthz
    url: String,
    /// Keep trying (once a second) for up to this many seconds.
    #[arg(long, default_value_t = 0)]
    wait_s: u64,
    /// Timeout of one attempt, in ms.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_s);
    loop {
        let error = match client.get(&args.url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{} answered {}", args.url, r.status()),
            Err(e) => format!("{}: {e}", args.url),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(error);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
