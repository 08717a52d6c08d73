//! The gateway's presence, with the real binary as a process: killed (SIGKILL, no
//! clean disconnect), the broker publishes its last will and the fog takes its
//! chargers offline at once; a new gateway asks a charger that reconnects without
//! booting for its statuses and brings the station back; stopped cleanly, it says so
//! itself.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use common::{ChargePoint, REGION, charger};
use protocol::GatewayStatus;
use serde_json::Value;
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port, wait_until};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// Starts the `ocpp-gateway` binary.
fn spawn_gateway(broker: &str, listen: u16, http: u16, chargers: &Path) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_ocpp-gateway"))
        .args(["--region", REGION, "--broker", broker])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--chargers")
        .arg(chargers)
        .kill_on_drop(true)
        .spawn()
        .context("starting ocpp-gateway")
}

/// Starts the `ocpp-gateway` binary and waits until it is connected to the broker.
async fn gateway(broker: &str, listen: u16, http: u16, chargers: &Path) -> Result<Child> {
    let child = spawn_gateway(broker, listen, http, chargers)?;
    let ready = format!("http://127.0.0.1:{http}/readyz");
    wait_until("the gateway is ready", T, POLL, || async {
        let r = reqwest::get(&ready).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    Ok(child)
}

async fn presence(watcher: &mut TestClient) -> Result<GatewayStatus> {
    watcher
        .wait_for_json(&protocol::topics::gateway_status(REGION, "ocpp-north"), T)
        .await
}

async fn state(fog: &Fog, id: &str, want: &str) -> Result<Value> {
    wait_until(&format!("{id} {want} in the fog"), T, POLL, || async {
        let stations: Vec<Value> = fog.get_json("/api/stations").await.ok()?;
        stations
            .into_iter()
            .find(|s| s["station_id"] == id && s["state"] == want)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_takes_its_chargers_offline_and_a_new_one_brings_them_back() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let fog = Fog::start(&broker.url(), REGION).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chargers = dir.path().join("chargers.toml");
    std::fs::write(&chargers, charger("CP-001", 1, None)).unwrap();
    let (listen, http) = (free_port().unwrap(), free_port().unwrap());
    let url = format!("ws://127.0.0.1:{listen}/ocpp");
    let mut watcher = TestClient::connect(&broker.url(), "watcher").await.unwrap();
    watcher
        .subscribe(&protocol::topics::filters::gateway_status(REGION), 1)
        .await
        .unwrap();

    let mut first = gateway(&broker.url(), listen, http, &chargers)
        .await
        .unwrap();
    assert!(presence(&mut watcher).await.unwrap().online);
    let args = ["--url", url.as_str(), "--id", "CP-001", "--connectors", "1"];
    let mut cp = ChargePoint::spawn(&args).await.unwrap();
    cp.boot(1).await.unwrap();
    let s = state(&fog, "CP-001", "available").await.unwrap();
    assert_eq!(s["chargers"], 1);

    // SIGKILL: the gateway cannot say anything; its last will does.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let will = presence(&mut watcher).await.unwrap();
    assert!(!will.online, "{will:?}");
    state(&fog, "CP-001", "offline").await.unwrap();
    cp.expect("closed", T).await.unwrap();

    // A new gateway: online again, but the charger stays offline until it is back.
    let mut second = gateway(&broker.url(), listen, http, &chargers)
        .await
        .unwrap();
    assert!(presence(&mut watcher).await.unwrap().online);
    state(&fog, "CP-001", "offline").await.unwrap();
    // The charger reconnects without booting again: the gateway asks for its statuses.
    let mut cp = ChargePoint::spawn(&args).await.unwrap();
    cp.expect("connected", T).await.unwrap();
    let trigger = cp.expect("trigger_message", T).await.unwrap();
    assert_eq!(trigger["requested_message"], "StatusNotification");
    state(&fog, "CP-001", "available").await.unwrap();

    // Stopped cleanly (SIGTERM): no last will, the gateway says it is gone itself.
    let pid = second.id().unwrap().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let stopped = tokio::time::timeout(T, second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    assert!(!presence(&mut watcher).await.unwrap().online);
    state(&fog, "CP-001", "offline").await.unwrap();
    cp.exit().await.unwrap();
}

/// `series`'s value on the gateway's `/metrics` at `http`.
async fn metric(http: u16, series: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{http}/metrics");
    let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_of_the_region_is_counted_as_a_takeover() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chargers = dir.path().join("chargers.toml");
    std::fs::write(&chargers, charger("CP-001", 1, None)).unwrap();
    let (listen, http) = (free_port().unwrap(), free_port().unwrap());
    let _first = gateway(&broker.url(), listen, http, &chargers)
        .await
        .unwrap();
    assert_eq!(metric(http, "ocpp_mqtt_takeovers_total").await, Some(0.0));
    // The same region, so the same client id, on other ports: the two take the
    // broker's connection from each other, and the link says so.
    let (listen2, http2) = (free_port().unwrap(), free_port().unwrap());
    let _second = spawn_gateway(&broker.url(), listen2, http2, &chargers).unwrap();
    wait_until(
        "a takeover counted",
        Duration::from_secs(30),
        POLL,
        || async {
            let a = metric(http, "ocpp_mqtt_takeovers_total")
                .await
                .unwrap_or(0.0);
            let b = metric(http2, "ocpp_mqtt_takeovers_total")
                .await
                .unwrap_or(0.0);
            (a + b >= 1.0).then_some(())
        },
    )
    .await
    .unwrap();
}
