//! `fogcharge`: every process of a deployment in one binary, the one the container
//! image holds. Each command runs a library's `run`, exactly as the piece's own binary
//! does:
//!
//! | command | what |
//! | --- | --- |
//! | `fogcharge [sim] …` | the simulation, as `device-sim` (the default command) |
//! | `fogcharge fog-server …` | a regional fog server, as `fog-server` |
//! | `fogcharge central …` | the central server, as `central` |
//! | `fogcharge ocpp-gateway …` | a region's OCPP 1.6J gateway, as `ocpp-gateway` |
//! | `fogcharge hash-password` | the hash of the password on stdin, for a chargers file (as `ocpp-gateway hash-password`) |
//! | `fogcharge setup …` | a deployment's users, broker password/ACL files, bridge sections and shared clock (`device_sim::setup`) |
//! | `fogcharge probe URL` | exit 0 when URL answers 2xx (container health checks; `--wait-s` retries) ([`probe`]) |

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serverkit::logging;

mod probe;

/// Every process of a fogcharge deployment: the fog servers, central, their setup, the
/// simulated city and a health probe. Without a command: the simulation.
#[derive(Debug, Parser)]
#[command(name = "fogcharge", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The simulation's options, when no command is given.
    #[command(flatten)]
    sim: device_sim::Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate the city and compare strategies (the default command; as `device-sim`).
    Sim(device_sim::Config),
    /// A regional fog server (as `fog-server`).
    FogServer(fog_server::Config),
    /// The central server (as `central`).
    Central(central::Config),
    /// A region's OCPP 1.6J gateway (as `ocpp-gateway`).
    OcppGateway(ocpp_gateway::Config),
    /// Print the hash of the password given on stdin, for a chargers file.
    HashPassword,
    /// A deployment's users, broker password/ACL files, bridge sections and clock.
    Setup(device_sim::setup::SetupArgs),
    /// Exit 0 when a URL answers 2xx (container health checks).
    Probe(probe::ProbeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Sim(cli.sim)) {
        Command::Sim(config) => device_sim::cli::simulate(config).await,
        Command::FogServer(config) => {
            serverkit::serve("fog-server", config.log_format, |shutdown| {
                fog_server::run(config, shutdown)
            })
            .await
        }
        Command::Central(config) => {
            serverkit::serve("central", config.log_format, |shutdown| {
                central::run(config, shutdown)
            })
            .await
        }
        Command::OcppGateway(config) => {
            serverkit::serve("ocpp-gateway", config.log_format, |shutdown| {
                ocpp_gateway::run(config, shutdown)
            })
            .await
        }
        Command::HashPassword => {
            exit_code("hash-password", ocpp_gateway::hash_password_from_stdin())
        }
        Command::Setup(args) => {
            logging::init(logging::LogFormat::Text, "info");
            exit_code("setup", device_sim::setup::run(args).await)
        }
        Command::Probe(args) => exit_code("probe", probe::run(args).await),
    }
}

fn exit_code(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::{ArgAction, CommandFactory as _};
    use serde::Deserialize as _;
    use serde_yaml_ng::Value;

    use super::*;

    fn parse(args: &[&str]) -> Command {
        let cli = Cli::try_parse_from(std::iter::once("fogcharge").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.command.unwrap_or(Command::Sim(cli.sim))
    }

    #[test]
    fn the_command_lines_of_the_deployments_parse_as_before() {
        // deploy/regions.yml and k8s/: `fogcharge setup|fog-server|central|sim|probe …`.
        assert!(matches!(
            parse(&["setup", "--topology", "t.toml", "--out", "/s"]),
            Command::Setup(a) if a.out.as_deref() == Some(std::path::Path::new("/s"))
        ));
        assert!(matches!(
            parse(&["fog-server", "--region", "north"]),
            Command::FogServer(c) if c.region == "north"
        ));
        assert!(matches!(
            parse(&["central", "--broker", "tcp://b:1883"]),
            Command::Central(c) if c.broker == "tcp://b:1883"
        ));
        assert!(matches!(
            parse(&["sim", "--vehicles", "7"]),
            Command::Sim(c) if c.scenario.vehicles == 7
        ));
        assert!(matches!(
            parse(&["probe", "--wait-s", "30", "http://c:8080/healthz"]),
            Command::Probe(_)
        ));
        // No command: the simulation, as `fogcharge --vehicles 7` always was.
        assert!(matches!(
            parse(&["--vehicles", "7"]),
            Command::Sim(c) if c.scenario.vehicles == 7
        ));
    }

    #[test]
    fn negative_coordinates_follow_a_space_in_every_command() {
        let Command::FogServer(c) = parse(&[
            "fog-server",
            "--region",
            "north",
            "--bounds",
            "-12.30,-39.10,-12.10,-38.80",
        ]) else {
            panic!("not fog-server");
        };
        let b = c.bounds.unwrap();
        assert_eq!(
            [b.min_lat, b.min_lon, b.max_lat, b.max_lon],
            [-12.30, -39.10, -12.10, -38.80]
        );
        for args in [
            &["sim", "--hotspot", "-12.97,-38.50"][..],
            &["--hotspot", "-12.97,-38.50"],
        ] {
            let Command::Sim(c) = parse(args) else {
                panic!("{args:?}: not sim");
            };
            assert_eq!(c.scenario.hotspot, Some((-12.97, -38.50)), "{args:?}");
        }
    }

    /// Every `fogcharge …` command line in `file` (compose services and health checks,
    /// Kubernetes containers), each with its container's environment.
    fn command_lines(file: &str) -> Vec<(Vec<String>, BTreeMap<String, String>)> {
        fn text(v: &Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        fn walk(v: &Value, out: &mut Vec<(Vec<String>, BTreeMap<String, String>)>) {
            match v {
                Value::Mapping(m) => {
                    let mut env = BTreeMap::new();
                    if let Some(Value::Mapping(e)) = m.get("environment") {
                        for (k, v) in e {
                            env.extend(text(k).zip(text(v)));
                        }
                    }
                    if let Some(Value::Sequence(e)) = m.get("env") {
                        for item in e {
                            env.extend(text(&item["name"]).zip(text(&item["value"])));
                        }
                    }
                    for key in ["command", "test"] {
                        if let Some(Value::Sequence(c)) = m.get(key) {
                            let args: Vec<String> = c.iter().filter_map(text).collect();
                            let start = usize::from(args.first().is_some_and(|a| a == "CMD"));
                            if args.get(start).is_some_and(|a| a == "fogcharge") {
                                out.push((args[start..].to_vec(), env.clone()));
                            }
                        }
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Sequence(s) => s.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            walk(&Value::deserialize(doc).unwrap(), &mut out);
        }
        out
    }

    /// `args` with the options its container sets through the environment given as
    /// flags (the test cannot set a process's environment per command).
    fn env_as_flags(mut args: Vec<String>, env: &BTreeMap<String, String>) -> Vec<String> {
        let cli = Cli::command();
        let command = match args.get(1) {
            Some(name) => cli.find_subcommand(name).unwrap_or(&cli),
            None => &cli,
        };
        for a in command.get_arguments() {
            let (Some(var), Some(long)) = (a.get_env(), a.get_long()) else {
                continue;
            };
            let Some(value) = var.to_str().and_then(|v| env.get(v)) else {
                continue;
            };
            match a.get_action() {
                ArgAction::SetTrue => {
                    if value == "true" || value == "1" {
                        args.push(format!("--{long}"));
                    }
                }
                _ => args.extend([format!("--{long}"), value.clone()]),
            }
        }
        args
    }

    /// The command lines of `files` that do not parse, with clap's error.
    fn refused(files: &[String]) -> Vec<String> {
        let mut lines = Vec::new();
        for file in files {
            lines.extend(command_lines(file).into_iter().map(|l| (file, l)));
        }
        assert!(lines.len() >= 3, "{files:?}: fogcharge commands missing");
        lines
            .into_iter()
            .filter_map(|(file, (args, env))| {
                let args = env_as_flags(args, &env);
                Cli::try_parse_from(&args)
                    .err()
                    .map(|e| format!("{file}: {args:?}: {e}"))
            })
            .collect()
    }

    #[test]
    fn every_command_line_of_the_compose_deployment_parses() {
        let refused = refused(&["deploy/regions.yml".to_owned()]);
        assert!(refused.is_empty(), "{refused:#?}");
    }

    #[test]
    fn every_command_line_of_the_kubernetes_deployment_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| format!("k8s/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|f| f.ends_with(".yaml"))
            .collect();
        files.sort();
        let refused = refused(&files);
        assert!(refused.is_empty(), "{refused:#?}");
    }

    #[test]
    fn an_unknown_command_is_refused() {
        assert!(Cli::try_parse_from(["fogcharge", "fog-servr", "--region", "x"]).is_err());
    }
}
