//! The `topology` command line: show a deployment, generate its Mosquitto configs,
//! check checked-in configs for drift. In the library so that tests run exactly what
//! the binary runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::{RenderOptions, Topology, checked_in_files, generate_all};
use clap::{Parser, Subcommand};

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
    /// k8s/; run from the repository root), or one set of broker configs with --topology and --out
    /// (for containers: passwords and bridge logins from the secrets `fogcharge setup` makes).
    Generate {
        #[arg(long, requires = "out")]
        topology: Option<PathBuf>,
        #[arg(long, requires = "topology")]
        out: Option<PathBuf>,
        /// Render for brokers started by hand on this machine: anonymous clients
        /// (loopback only), state in {state-dir}/{broker}/ (made here), logs to stdout
        /// (default: for containers, state in /mosquitto/data/, secrets in
        /// /mosquitto/secrets/).
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

/// Runs the tool with these arguments (the program name first, as in `std::env::args`).
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
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
            topology: Some(t),
            out: Some(out),
            state_dir,
        } => generate_one(&t, &out, state_dir.as_deref())?,
        Command::Generate { .. } => {
            for (path, text) in checked_in_files(Path::new("."))? {
                write(&path, &text)?;
            }
        }
        Command::Check => return check(),
        Command::Show { topology } => show(topology.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The broker configs of one topology in `out`: for containers, or for processes on
/// this machine with their state under `state_dir` (its directories made here).
fn generate_one(topology: &Path, out: &Path, state_dir: Option<&Path>) -> anyhow::Result<()> {
    let source = topology.display().to_string();
    let t = Topology::load(topology)?;
    let opts = match state_dir {
        Some(dir) => RenderOptions {
            source,
            ..RenderOptions::local(dir)
        },
        None => RenderOptions::container(&source),
    };
    if state_dir.is_some() {
        for dir in opts.state_dirs(&t) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
        }
    }
    for (name, text) in generate_all(&t, &opts) {
        write(&out.join(name), &text)?;
    }
    Ok(())
}

fn check() -> anyhow::Result<ExitCode> {
    let drift = drifted(Path::new("."))?;
    if drift.is_empty() {
        println!("every generated config is up to date");
        return Ok(ExitCode::SUCCESS);
    }
    for f in &drift {
        eprintln!("drifted: {f}");
    }
    eprintln!("run `cargo run -p topology -- generate` and commit the result");
    Ok(ExitCode::FAILURE)
}

fn show(topology: Option<&Path>) -> anyhow::Result<()> {
    let t = match topology {
        Some(p) => Topology::load(p)?,
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
    Ok(())
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
