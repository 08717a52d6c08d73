//! device-sim's stations sharing one connection per region (`--station-connections
//! per-region`): the fog sees them as with a connection each — in service from their
//! statuses, offline at once when the connection dies (its presence's last will), back
//! after the reconnect — and a whole city run with them answers every request.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use device_sim::Config;
use device_sim::net::{Brokers, Net, StationGateway};
use protocol::topics;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};
use tokio_util::sync::CancellationToken;

/// Each station's state as the fog's API lists it (`available`, `offline`, …).
async fn states(fog: &testkit::fog::Fog) -> HashMap<String, String> {
    fog.get_json::<Vec<serde_json::Value>>("/api/stations")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            (
                s["station_id"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_sharing_a_connection_go_offline_with_it_and_come_back_after_the_reconnect() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let fog = testkit::fog::Fog::start(&broker.url(), "north")
        .await
        .unwrap();
    let brokers = Brokers {
        urls: HashMap::from([("north".to_owned(), broker.url())]),
        username: None,
        password: None,
        credentials: None,
        ca_file: None,
        shared_stations: true,
        station_reservations: false,
    };
    let ids = ["north-s1", "north-s2", "north-s3"];
    let stations: Vec<(String, String)> = ids
        .iter()
        .map(|id| ("north".to_owned(), (*id).to_owned()))
        .collect();
    let shutdown = CancellationToken::new();
    let net = Net::connect(&brokers, &stations, None, "t", &shutdown)
        .await
        .unwrap();
    let gateway = StationGateway::id("north");
    let messages = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            assert_eq!(net.station_gateway(i), Some(gateway.as_str()));
            let status = protocol::StationStatus {
                gateway: net.station_gateway(i).map(str::to_owned),
                ..testkit::messages::station(id, 0.0, 0.01 * i as f64, 2, 50.0)
            };
            (
                i,
                topics::station_status("north", id),
                protocol::encode(&status),
            )
        })
        .collect();
    net.station_publish_confirmed(messages).await.unwrap();
    let all = |want: &'static str| {
        let fog = &fog;
        move || async move {
            let s = states(fog).await;
            s.len() == ids.len() && s.values().all(|st| st == want)
        }
    };
    wait_until(
        "the fog has every station in service",
        Duration::from_secs(10),
        Duration::from_millis(20),
        all("available"),
    )
    .await
    .unwrap();

    // Another client takes the connection's client id: the broker closes it, its last
    // will says the gateway is offline, and the fog takes every station out of service.
    let intruder = TestClient::connect(&broker.url(), &format!("device-sim-t-{gateway}"))
        .await
        .unwrap();
    wait_until(
        "the fog counts every station of the dead connection offline",
        Duration::from_secs(5),
        Duration::from_millis(10),
        all("offline"),
    )
    .await
    .unwrap();
    // The connection comes back (it takes its client id again), says it is online and
    // publishes its stations' statuses again.
    wait_until(
        "the stations are back in service after the reconnect",
        Duration::from_secs(15),
        Duration::from_millis(20),
        all("available"),
    )
    .await
    .unwrap();
    drop(intruder);
    net.close().await;
    fog.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_with_a_station_connection_per_region_answers_every_request() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| testkit::free_port().unwrap()).collect();
    let band = |i: u32| topology::Bounds {
        min_lat: -0.15,
        min_lon: f64::from(i) * 0.12,
        max_lat: 0.15,
        max_lon: f64::from(i + 1) * 0.12,
    };
    let t = topology::Topology::local(
        "sim-test",
        &[("west", band(0)), ("east", band(1))],
        ports[0],
        &ports[1..],
    )
    .unwrap();
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, t.to_toml()).unwrap();
    let config = Config::parse_from([
        "device-sim",
        "--topology",
        path.to_str().unwrap(),
        "--start-local",
        "--server-exe",
        env!("CARGO_BIN_EXE_fogcharge"),
        "--central-http",
        "127.0.0.1:0",
        "--no-progress",
        "--stations",
        "20",
        "--vehicles",
        "200",
        "--hours",
        "1",
        "--speed",
        "600",
        "--strategy",
        "fog",
        "--station-connections",
        "per-region",
    ]);
    // The run waits until central lists every station: their statuses, sent through the
    // shared connections (with their own users and ACL), reached the fogs.
    let report = device_sim::run(config, CancellationToken::new())
        .await
        .expect("the simulation runs");
    let fog = &report.strategies["fog"];
    assert!(fog.requests > 0, "{fog:?}");
    assert_eq!(fog.answered, fog.requests, "{fog:?}");
    assert_eq!(fog.stranded, 0, "{fog:?}");
    assert_eq!(fog.timeouts, 0, "{fog:?}");
}
