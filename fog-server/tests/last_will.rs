//! A station that vanishes (its process killed, no DISCONNECT) is taken out of service
//! by its retained last will, published by the broker.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::{Recommendation, RecommendationStatus, topics};
use serde_json::Value;
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};

const REGION: &str = "north";
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_killed_station_goes_offline_by_its_will_and_is_never_recommended() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let fog = Fog::start(&broker.url(), REGION).await.unwrap();
    let topic = topics::station_status(REGION, "n-1");
    let will = r#"{"v":1,"station_id":"n-1","state":"offline"}"#;
    // The station: a separate process holding a connection with a retained last will.
    let mut station = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-i",
            "n-1",
            "-q",
            "1",
        ])
        .args(["-t", "ev/north/stations/n-1/commands", "-k", "5"])
        .args([
            "--will-topic",
            &topic,
            "--will-payload",
            will,
            "--will-qos",
            "1",
            "--will-retain",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (package mosquitto-clients) starts");
    wait_until(
        "the station is connected",
        T,
        Duration::from_millis(20),
        || async { broker.log().contains("as n-1") },
    )
    .await
    .unwrap();
    let status = common::station("n-1", -12.24, -38.95, 2, 50.0);
    let devices = TestClient::connect(&broker.url(), "devices").await.unwrap();
    devices
        .publish_json(&topic, &status, 1, true)
        .await
        .unwrap();
    let mut car = TestClient::connect(&broker.url(), "car-1").await.unwrap();
    car.subscribe(&topics::recommendation(REGION, "car-1"), 1)
        .await
        .unwrap();
    let ask = |id: &'static str| common::request(id, -12.25, -38.95, 0.4);
    wait_until(
        "the fog knows the station",
        T,
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.len() == 1)
        },
    )
    .await
    .unwrap();
    car.publish_json(&topics::request(REGION, "car-1"), &ask("r-1"), 1, false)
        .await
        .unwrap();
    let a: Recommendation = car
        .wait_for_json(&topics::recommendation(REGION, "car-1"), T)
        .await
        .unwrap();
    assert_eq!(a.status, RecommendationStatus::Assigned);

    station.kill().unwrap(); // no DISCONNECT: the broker publishes the will
    station.wait().unwrap();
    wait_until(
        "the station is offline",
        T,
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.first().is_some_and(|st| st["state"] == "offline"))
        },
    )
    .await
    .unwrap();
    car.publish_json(&topics::request(REGION, "car-1"), &ask("r-2"), 1, false)
        .await
        .unwrap();
    let b: Recommendation = car
        .wait_for_json(&topics::recommendation(REGION, "car-1"), T)
        .await
        .unwrap();
    assert_eq!(b.status, RecommendationStatus::Unavailable, "{b:?}");
    // The reservation made before is gone with its station.
    let reservations: Vec<Value> = fog.get_json("/api/reservations").await.unwrap();
    assert!(reservations.is_empty(), "{reservations:?}");
    fog.stop().await.unwrap();
}
