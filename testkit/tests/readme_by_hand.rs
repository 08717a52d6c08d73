//! The README's "Several regions and central, by hand" section with its servers: the
//! commands read from README.md (`topology/tests/by_hand`), localised to free ports and
//! a temporary directory, the topology tool and the servers run in-process from the
//! README's own arguments (as their binaries parse them), the brokers as processes, and
//! the section's `curl`s must show every region's aggregate at central.

#[path = "../../topology/tests/by_hand/mod.rs"]
mod by_hand;

use std::process::ExitCode;
use std::time::Duration;

use by_hand::{Kind, Local, Section};
use clap::Parser as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// What the test reads of central's `/api/regions`.
#[derive(Deserialize)]
struct RegionSeen {
    id: String,
    stale: bool,
}

/// Starts each server line in-process, its arguments parsed as its binary parses them
/// (a fog server's journal in the test's directory instead of `./fog-state`).
fn start_servers(
    section: &Section,
    local: &Local,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let mut tasks = Vec::new();
    for c in section.of(Kind::Server) {
        let c = local.apply(c);
        let mut args: Vec<String> = c.split_whitespace().map(str::to_owned).collect();
        let task = if args[0].ends_with("/fog-server") {
            let state = local.dir.join("fog-state");
            args.extend(["--state-dir".into(), state.display().to_string()]);
            let config =
                fog_server::Config::try_parse_from(&args).unwrap_or_else(|e| panic!("`{c}`: {e}"));
            tokio::spawn(Box::pin(fog_server::run(config, shutdown.clone())))
        } else {
            let config =
                central::Config::try_parse_from(&args).unwrap_or_else(|e| panic!("`{c}`: {e}"));
            tokio::spawn(Box::pin(central::run(config, shutdown.clone())))
        };
        tasks.push(task);
    }
    tasks
}

/// Runs a `curl` line of the section until `done` accepts its output.
async fn query_until(line: &str, done: impl Fn(&str) -> bool) {
    let mut last = String::new();
    let every = Duration::from_millis(200);
    // 60 s: a server whose broker connection dropped waits out one back-off (up to
    // ~20 s) before it answers again; in one full-suite run it did.
    let answered = testkit::wait_until(line, Duration::from_secs(60), every, || {
        let out = tokio::task::block_in_place(|| by_hand::shell(line).output().unwrap());
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let ok = out.status.success() && done(&last);
        async move { ok }
    })
    .await;
    if let Err(e) = answered {
        panic!("{e}; the last answer: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_by_hand_section_runs_with_its_servers() {
    testkit::init_tracing();
    let section = Section::from_readme();
    section.check_servers();
    let tmp = tempfile::tempdir().unwrap();
    let local = Local::new(&section, tmp.path());
    by_hand::run_setup(&section, &local, |args| {
        let argv = std::iter::once("topology".to_owned()).chain(args.clone());
        let code = topology::cli::main_with(argv.map(Into::into));
        assert_eq!(code, ExitCode::SUCCESS, "topology {args:?}");
    });
    let mut brokers: Vec<_> = section
        .of(Kind::Broker)
        .iter()
        .map(|c| by_hand::start_broker(&local.apply(c), tmp.path()))
        .collect();
    by_hand::check_bridges(&section, &local, &mut brokers);

    let shutdown = CancellationToken::new();
    let servers = start_servers(&section, &local, &shutdown);
    let regions: Vec<&str> = section
        .topology
        .regions
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    for c in section.of(Kind::Query) {
        let line = local.apply(c);
        if line.contains("/api/regions") {
            query_until(&line, |out| {
                let seen: Vec<RegionSeen> = serde_json::from_str(out).unwrap_or_default();
                regions
                    .iter()
                    .all(|id| seen.iter().any(|r| r.id == *id && !r.stale))
            })
            .await;
        } else {
            query_until(&line, |out| {
                serde_json::from_str::<serde_json::Value>(out).is_ok()
            })
            .await;
        }
    }
    for b in &mut brokers {
        b.alive();
    }
    shutdown.cancel();
    for s in servers {
        let stopped = tokio::time::timeout(Duration::from_secs(10), s).await;
        stopped.expect("a server stopped").unwrap().unwrap();
    }
}
