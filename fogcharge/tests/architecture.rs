//! What the architecture buys, end to end on the local topology with delay proxies
//! between the devices and their brokers: regional fog servers near the vehicles
//! against one city-wide server in the cloud; drivers who do not follow their answer;
//! and the default scenario's overloaded region, relieved through central.

use std::path::Path;

use clap::Parser;
use device_sim::{Config, Report, StrategyReport};
use tokio_util::sync::CancellationToken;

/// Three regions side by side at the equator, each ~13 × 33 km, on free ports.
fn three_regions(dir: &Path) -> std::path::PathBuf {
    testkit::city::three_band_topology_file("arch-test", dir).unwrap()
}

/// device-sim's arguments: a small city for a simulated hour at 600x, what `args` does
/// not set itself.
fn base_args(args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "device-sim",
        "--server-exe",
        env!("CARGO_BIN_EXE_fogcharge"),
        "--central-http",
        "127.0.0.1:0",
        "--no-progress",
        "--speed",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("--stations", "24"),
        ("--vehicles", "200"),
        ("--hours", "1"),
    ] {
        if !args.contains(&flag) {
            all.extend([flag.to_string(), value.to_string()]);
        }
    }
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

async fn run(args: Vec<String>) -> Report {
    testkit::init_tracing();
    let report = device_sim::run(Config::parse_from(args), CancellationToken::new())
        .await
        .expect("the simulation runs");
    println!("{}", report.table());
    report
}

/// Bookkeeping that must hold for every strategy, and every request answered.
fn check_answered(name: &str, r: &StrategyReport) {
    assert_eq!(r.overbooked, 0, "{name}: {r:?}");
    assert_eq!(
        r.arrivals,
        r.charged + r.queued_at_end + r.charging_at_end,
        "{name}: every vehicle that arrived charged or is still at the station: {r:?}"
    );
    assert!(r.requests > 20, "{name}: too little demand: {r:?}");
    assert_eq!(
        r.answered, r.requests,
        "{name}: every request answered: {r:?}"
    );
    assert_eq!(r.timeouts, 0, "{name}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_fog_answers_sooner_than_one_cloud_server_by_the_network_delay() {
    let dir = tempfile::tempdir().unwrap();
    let topology = three_regions(dir.path());
    let report = run(base_args(&[
        "--topology",
        topology.to_str().unwrap(),
        "--start-local",
        "--strategy",
        "fog,cloud",
        // Nobody starts below the threshold: requests come one by one over two
        // hours, not in an opening burst whose queueing would blur the medians.
        "--vehicles",
        "300",
        "--min-start-soc",
        "0.31",
        "--soc-threshold",
        "0.3",
        "--hours",
        "2",
        "--edge-rtt-ms",
        "4",
        "--edge-jitter-ms",
        "0.5",
        "--cloud-rtt-ms",
        "80",
        "--cloud-jitter-ms",
        "4",
    ]))
    .await;
    assert_eq!(report.order, ["fog", "cloud"]);
    let (fog, cloud) = (&report.strategies["fog"], &report.strategies["cloud"]);
    check_answered("fog", fog);
    check_answered("cloud", cloud);
    // The same world and the same demand.
    assert!(
        fog.requests.abs_diff(cloud.requests) * 10 <= fog.requests,
        "{fog:?} {cloud:?}"
    );
    // The network each one ran over, as the run set it up.
    let (fog_net, cloud_net) = (fog.device_rtt_ms.unwrap(), cloud.device_rtt_ms.unwrap());
    assert!(
        (fog_net - 4.0).abs() < 0.01 && (cloud_net - 80.0).abs() < 0.01,
        "{fog_net} {cloud_net}"
    );
    let (f, c) = (fog.rtt_ms.unwrap(), cloud.rtt_ms.unwrap());
    // Measured: the cloud's answers come later by at least the difference of the paths
    // (less the proxy timers' 1 ms resolution per direction, which both runs pay).
    assert!(
        c.p50 - f.p50 >= cloud_net - fog_net - 2.0,
        "round trip p50: fog {:.1} ms, cloud {:.1} ms",
        f.p50,
        c.p50
    );
    assert!(f.p50 >= fog_net, "fog p50 {:.2} below its path", f.p50);
    assert!(c.p50 >= cloud_net, "cloud p50 {:.2} below its path", c.p50);
    // One broker carries all the cloud's device traffic; the fog's is split.
    assert_eq!(cloud.msgs_per_s_by_broker.len(), 1, "{cloud:?}");
    assert!(cloud.msgs_per_s_by_broker.contains_key("cloud"));
    assert_eq!(fog.msgs_per_s_by_broker.len(), 3, "{fog:?}");
    let busiest_fog = fog
        .msgs_per_s_by_broker
        .values()
        .copied()
        .fold(0.0, f64::max);
    assert!(
        busiest_fog < cloud.msgs_per_s_by_broker["cloud"],
        "{fog:?} {cloud:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_half_the_drivers_ignoring_their_answer_every_request_is_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let topology = three_regions(dir.path());
    let json = dir.path().join("report.json");
    let report = run(base_args(&[
        "--topology",
        topology.to_str().unwrap(),
        "--start-local",
        "--strategy",
        "fog",
        "--compliance",
        "0.5",
        "--report-json",
        json.to_str().unwrap(),
    ]))
    .await;
    let fog = &report.strategies["fog"];
    check_answered("fog", fog);
    assert_eq!(fog.stranded, 0, "{fog:?}");
    let askers = fog.followers + fog.non_followers;
    assert!(askers > 20 && askers <= fog.requests, "{fog:?}");
    let share = f64::from(fog.followers) / f64::from(askers);
    assert!(
        (0.3..=0.7).contains(&share),
        "followers {share:.2}: {fog:?}"
    );
    // The non-followers gave their reservations back.
    assert!(fog.cancelled > 0, "{fog:?}");
    assert!(fog.cancelled <= fog.answered, "{fog:?}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = &j["strategies"]["fog"];
    for key in ["followers", "non_followers", "cancelled"] {
        assert!(f[key].is_number(), "{key} in {f}");
    }
    assert_eq!(j["scenario"]["compliance"], 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_scenario_at_toy_size_reroutes_through_central() {
    // No topology: the demo city, whose default scenario overloads region nw.
    let report = run(base_args(&["--strategy", "fog"])).await;
    let fog = &report.strategies["fog"];
    check_answered("fog", fog);
    assert!(
        fog.rerouted > 0,
        "the overloaded region sent vehicles to its neighbours: {fog:?}"
    );
    assert_eq!(report.scenario["overload_region"], "nw");
}

#[tokio::test]
async fn bad_network_and_compliance_settings_are_refused_with_the_flag_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--offline", "--strategy", "cloud"], "cloud"),
        (&["--offline", "--strategy", "fog-far"], "fog-far"),
        (
            &["--offline", "--strategy", "nearest", "--compliance", "1.5"],
            "--compliance",
        ),
        (
            &["--offline", "--strategy", "nearest", "--cloud-rtt-ms=-1"],
            "--cloud-rtt-ms",
        ),
        (
            &["--offline", "--strategy", "nearest", "--link-mbps", "0"],
            "--link-mbps",
        ),
    ];
    for (args, expect) in cases {
        let mut all = vec!["device-sim", "--no-progress"];
        all.extend_from_slice(args);
        let err = device_sim::run(Config::parse_from(all), CancellationToken::new())
            .await
            .expect_err("refused");
        assert!(format!("{err:#}").contains(expect), "{args:?}: {err:#}");
    }
    let all = Config::parse_from(["device-sim"]);
    let names: Vec<&str> = all.strategy.0.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        ["fog", "cloud", "fog-far", "nearest", "least-queue"],
        "all includes the cloud"
    );
    assert!(Config::try_parse_from(["device-sim", "--strategy", "cloud,moon"]).is_err());
}

#[test]
fn compliance_picks_the_same_drivers_for_the_same_seed() {
    let a = device_sim::run::followers(10_000, 0.8, 7);
    assert_eq!(a, device_sim::run::followers(10_000, 0.8, 7));
    assert_ne!(a, device_sim::run::followers(10_000, 0.8, 8));
    let share = a.iter().filter(|f| **f).count() as f64 / a.len() as f64;
    assert!((0.78..0.82).contains(&share), "{share}");
    assert!(device_sim::run::followers(100, 1.0, 7).iter().all(|f| *f));
    assert!(device_sim::run::followers(100, 0.0, 7).iter().all(|f| !*f));
}
