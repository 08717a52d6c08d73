//! `topology`: show a deployment, generate its Mosquitto configs, check checked-in
//! configs for drift.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use topology::{RenderOptions, Topology, checked_in_files, generate_all};

/// The fogcharge deployment description and the broker configs made from it.
#[derive(Parser)]
#[command(name = "topology", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rewrite every checked-in generated file (deploy/mosquitto/compose/, deploy/regions.yml,
    /// k8s/; run from the repository root), or one set of broker configs with --topology and --out.
    Generate {
        #[arg(long, requires = "out")]
        topology: Option<PathBuf>,
        #[arg(long, requires = "topology")]
        out: Option<PathBuf>,
        /// Render for local processes keeping their state under this directory
        /// (default: for containers, state in /mosquitto/data/).
        #[arg(long, requires = "topology")]
        state_dir: Option<PathBuf>,
    },
    /// Exit non-zero, listing the files, if a checked-in config differs from what would
    /// be generated.
    Check,
    /// Print the regions of a topology file (default: the built-in demo city).
    Show {
        #[arg(long)]
        topology: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("topology: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Generate {
            topology,
            out,
            state_dir,
        } => {
            match (topology, out) {
                (Some(t), Some(out)) => {
                    let source = t.display().to_string();
                    let opts = match state_dir {
                        Some(dir) => {
                            let mut opts = RenderOptions::local(&dir);
                            opts.source = source;
                            opts
                        }
                        None => RenderOptions::container(&source),
                    };
                    let topo = Topology::load(&t)?;
                    std::fs::create_dir_all(&out)?;
                    for (name, text) in generate_all(&topo, &opts) {
                        let path = out.join(name);
                        std::fs::write(&path, text)?;
                        println!("wrote {}", path.display());
                    }
                }
                _ => {
                    for (path, text) in checked_in_files(Path::new("."))? {
                        if let Some(dir) = path.parent() {
                            std::fs::create_dir_all(dir)?;
                        }
                        std::fs::write(&path, text)?;
                        println!("wrote {}", path.display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let drift = drifted(Path::new("."))?;
            if drift.is_empty() {
                println!("every generated config is up to date");
                Ok(ExitCode::SUCCESS)
            } else {
                for f in &drift {
                    eprintln!("drifted: {f}");
                }
                eprintln!("run `cargo run -p topology -- generate` and commit the result");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Show { topology } => {
            let t = match topology {
                Some(p) => Topology::load(&p)?,
                None => Topology::demo_city(),
            };
            println!("{}: central {}", t.name, t.central.url());
            for r in &t.regions {
                println!(
                    "  {:<12} broker {:<28} outline {:?}",
                    r.id,
                    r.broker.url(),
                    r.outline()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checked-in files that differ from what the generator makes (or are missing).
fn drifted(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut drift = Vec::new();
    for (path, text) in checked_in_files(root)? {
        let path = root.join(path);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(path.display().to_string());
        }
    }
    Ok(drift)
}
