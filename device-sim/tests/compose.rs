//! The compose smoke test: `deploy/regions.yml` run as local processes, each service in
//! its own network namespace under its service name, with the command, environment and
//! mounted files the compose file gives it (`testkit::compose`). The `fogcharge` image
//! is this crate's `fogcharge` binary; the `eclipse-mosquitto:2` image is the system's
//! `mosquitto` and `mosquitto_sub` (its health check).
//!
//! Checks: setup makes the secrets, every broker comes up healthy with authentication on
//! (an anonymous client is refused), each fog server and central become healthy, and
//! device-sim's run gets every request answered, in every region, with reroutes out of
//! the overloaded region crossing the bridges through central.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use testkit::compose::ComposeRun;

const EXE: &str = env!("CARGO_BIN_EXE_fogcharge");

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Sum of a Prometheus counter over its label sets.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(url: &str) -> String {
    reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_deployment_runs_end_to_end() {
    testkit::init_tracing();
    let compose = repo().join("deploy/regions.yml");
    let mut run = ComposeRun::start(&compose, &[("fogcharge", Path::new(EXE))])
        .unwrap_or_else(|e| panic!("starting deploy/regions.yml: {e:#}"));
    let topology = topology::Topology::load(&repo().join("deploy/topology.toml")).unwrap();

    // Authentication is on in the deployment: an anonymous client is refused.
    let north = run.address("broker-north").expect("broker-north address");
    let anonymous = testkit::TestClient::connect(&format!("tcp://{north}:1883"), "anon").await;
    assert!(anonymous.is_err(), "an anonymous client got in");

    let status =
        tokio::task::block_in_place(|| run.wait_exit("device-sim", Duration::from_secs(300)))
            .unwrap_or_else(|e| panic!("device-sim: {e:#}"));
    assert!(
        status.success(),
        "device-sim failed:\n{}",
        run.log("device-sim")
    );

    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.volume("reports").join("report.json")).unwrap(),
    )
    .unwrap();
    let fog = &report["strategies"]["fog"];
    let requests = fog["requests"].as_u64().unwrap();
    assert!(requests > 50, "too few requests: {fog}");
    assert_eq!(fog["answered"].as_u64(), Some(requests), "{fog}");
    assert_eq!(fog["fallbacks"].as_u64(), Some(0), "{fog}");
    assert!(fog["rerouted"].as_u64().unwrap() > 0, "no reroute: {fog}");

    // Answers came from every region's fog server...
    let mut answered = BTreeMap::new();
    for r in &topology.regions {
        let addr = run.address(&format!("fog-{}", r.id)).unwrap();
        let metrics = get(&format!("http://{addr}:9090/metrics")).await;
        answered.insert(r.id.clone(), counter(&metrics, "fog_requests_total"));
    }
    assert!(answered.values().all(|&n| n > 0.0), "{answered:?}");
    // ...and the reroutes went through central (over the bridges).
    let central = run.address("central").unwrap();
    let metrics = get(&format!("http://{central}:8080/metrics")).await;
    assert!(
        counter(&metrics, "central_reroutes_succeeded_total") > 0.0,
        "{metrics}"
    );
    let regions = get(&format!("http://{central}:8080/api/regions")).await;
    for r in &topology.regions {
        assert!(regions.contains(&format!("\"{}\"", r.id)), "{regions}");
    }
    eprintln!("answered by region: {answered:?}; device-sim report: {fog}");
    run.stop();
}
