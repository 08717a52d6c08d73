//! Instructions per operation, counted by callgrind: repeatable where wall-clock
//! timings are not (a shared, noisy machine). Each scenario runs a fixed number of
//! times inside a function of its own; callgrind counts only inside it
//! (`--toggle-collect`), so the set-up is not counted.
//!
//! `cargo bench -p fog-server --bench instructions` (needs `valgrind`; ~1 minute)

mod world;

use std::hint::black_box;
use std::process::Command;

use world::{VEHICLES, plan_one, planner, region, request_payload, request_topic, requests};

/// Operations counted per scenario.
const ITERATIONS: usize = 2_000;

/// (name, what it counts)
const SCENARIOS: [(&str, &str); 10] = [
    (
        "plan_1k_0",
        "plan one request, 1,000 stations, no reservations",
    ),
    (
        "plan_10k_0",
        "plan one request, 10,000 stations, no reservations",
    ),
    (
        "plan_100k_0",
        "plan one request, 100,000 stations, no reservations",
    ),
    (
        "plan_1k_1000",
        "plan one request, 1,000 stations, 1,000 reservations",
    ),
    (
        "plan_10k_1000",
        "plan one request, 10,000 stations, 1,000 reservations",
    ),
    (
        "plan_100k_1000",
        "plan one request, 100,000 stations, 1,000 reservations",
    ),
    (
        "region_1k",
        "one request message through Region::receive (parse and handle), 1,000 stations",
    ),
    (
        "region_10k",
        "one request message through Region::receive (parse and handle), 10,000 stations",
    ),
    (
        "aggregate_1k",
        "the aggregate for central (under the region lock), 1,000 stations",
    ),
    (
        "aggregate_10k",
        "the aggregate for central (under the region lock), 10,000 stations",
    ),
];

/// Aggregates are large operations: fewer of them.
const AGGREGATES: usize = 20;

#[inline(never)]
fn measured_plan(planner: &mut fog_server::planner::Planner, reqs: &[protocol::ChargeRequest]) {
    for i in 0..ITERATIONS {
        black_box(plan_one(planner, black_box(reqs), i));
    }
}

#[inline(never)]
fn measured_aggregate(region: &mut fog_server::region::Region) {
    for i in 0..AGGREGATES {
        black_box(region.aggregate(world::NOW_MS + i as u64));
    }
}

#[inline(never)]
fn measured_region(region: &mut fog_server::region::Region, messages: &[(String, Vec<u8>)]) {
    for (topic, payload) in messages {
        black_box(region.receive(topic, black_box(payload), world::NOW_MS));
    }
}

/// Runs one scenario (in the process callgrind watches).
fn run(name: &str) {
    let (stations, reservations) = match name {
        "plan_1k_0" => (1_000, 0),
        "plan_10k_0" => (10_000, 0),
        "plan_100k_0" => (100_000, 0),
        "plan_1k_1000" => (1_000, 1_000),
        "plan_10k_1000" => (10_000, 1_000),
        "plan_100k_1000" => (100_000, 1_000),
        "region_1k" | "region_10k" => {
            let mut region = region(if name == "region_1k" { 1_000 } else { 10_000 });
            let reqs = requests(5);
            let messages: Vec<(String, Vec<u8>)> = (VEHICLES..VEHICLES + ITERATIONS)
                .map(|k| (request_topic(k), request_payload(&reqs, k)))
                .collect();
            measured_region(&mut region, &messages);
            return;
        }
        "aggregate_1k" | "aggregate_10k" => {
            let mut region = region(if name == "aggregate_1k" {
                1_000
            } else {
                10_000
            });
            measured_aggregate(&mut region);
            return;
        }
        other => panic!("unknown scenario {other}"),
    };
    let mut planner = planner(stations, reservations);
    measured_plan(&mut planner, &requests(3));
}

/// Instructions counted in a callgrind output file.
fn total(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        run(&args[i + 1]);
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: no instruction counts");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "{:<16} {:>12}  what (instructions per operation, {ITERATIONS} operations)",
        "scenario", "instr/op"
    );
    for (name, what) in SCENARIOS {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let out = dir.path().join(format!("{name}.callgrind"));
        let status = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--toggle-collect=*measured_*")
            .arg(&exe)
            .args(["--scenario", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running valgrind");
        let per = if name.starts_with("aggregate") {
            AGGREGATES
        } else {
            ITERATIONS
        };
        match total(&out).filter(|_| status.success()) {
            Some(n) => println!("{name:<16} {:>12}  {what}", n / per as u64),
            None => println!(
                "{name:<16} {:>12}  {what} (callgrind failed: {status})",
                "-"
            ),
        }
    }
}
