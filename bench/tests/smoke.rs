//! The end-to-end benchmark runs every scenario, at toy sizes, and reports each one
//! completely (so that it still works when someone needs its numbers).

use std::process::Command;

use serde_json::Value;

#[test]
fn every_scenario_runs_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("e2e.json");
    let out = Command::new(env!("CARGO_BIN_EXE_fogcharge-bench"))
        .args([
            "--stations",
            "50",
            "--round-trips",
            "20",
            "--pause-ms",
            "0",
            "--burst",
            "100",
            "--burst-vehicles",
            "10",
            "--rates",
            "100",
            "--step-s",
            "0.5",
            "--rate-vehicles",
            "20",
            "--reroutes",
            "5",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let scenarios: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    for wanted in [
        "echo round trip",
        "request -> recommendation",
        "burst",
        "open loop 100 req/s",
        "cross-region reroute",
        "saturated burst, no central",
        "saturated burst, central present",
    ] {
        assert!(
            scenarios.iter().any(|s| s.starts_with(wanted)),
            "no {wanted:?} row in {scenarios:?}"
        );
    }
    for r in rows {
        assert_eq!(r["sent"], r["answered"], "{r}");
        assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    let rtt = rows
        .iter()
        .find(|r| r["scenario"] == "request -> recommendation")
        .unwrap();
    assert_eq!(rtt["statuses"]["assigned"], 20, "{rtt}");
    assert!(rtt["vs_echo"][0].as_f64().unwrap() > 0.0, "{rtt}");
    let reroute = rows
        .iter()
        .find(|r| r["scenario"] == "cross-region reroute")
        .unwrap();
    assert_eq!(reroute["statuses"]["rerouted"], 5, "{reroute}");
    assert!(stdout.contains("highest step with p99"), "{stdout}");
    assert!(report["targets"].as_object().unwrap().len() >= 4);
}
