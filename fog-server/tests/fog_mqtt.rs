//! The fog server end to end: a real Mosquitto, stations and vehicles as MQTT clients,
//! the fog server exactly as `fog-server` runs it.

use std::time::Duration;

use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, ReservationAction, ReservationUpdate,
    StationState, StationStatus, topics,
};
use serde_json::Value;
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};

const REGION: &str = "north";
const T: Duration = Duration::from_secs(10);
const KM_PER_DEG: f64 = 111.19;
const LAT0: f64 = -12.25;
const LON0: f64 = -38.95;

fn station(id: &str, km_north: f64, chargers: u32, occupied: u32, queue: u32) -> StationStatus {
    StationStatus {
        occupied,
        queue,
        ts_ms: Some(1_732_400_000_000),
        ..testkit::messages::station(id, LAT0 + km_north / KM_PER_DEG, LON0, chargers, 50.0)
    }
}

fn request(id: &str) -> ChargeRequest {
    ChargeRequest {
        v: 1,
        request_id: id.into(),
        lat: LAT0,
        lon: LON0,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: None,
    }
}

struct World {
    broker: Mosquitto,
    /// Stations and vehicles publish through this client; it hears recommendations.
    devices: TestClient,
}

async fn world() -> World {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).expect("mosquitto");
    let devices = TestClient::connect(&broker.url(), "devices").await.unwrap();
    devices
        .subscribe(&format!("ev/{REGION}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    World { broker, devices }
}

impl World {
    async fn publish_station(&self, s: &StationStatus) {
        let topic = topics::station_status(REGION, &s.station_id);
        self.devices.publish_json(&topic, s, 1, true).await.unwrap();
    }

    async fn ask(&mut self, vehicle: &str, req: &ChargeRequest) -> Recommendation {
        self.devices
            .publish_json(&topics::request(REGION, vehicle), req, 1, false)
            .await
            .unwrap();
        self.answer(vehicle).await
    }

    async fn ask_raw(&mut self, vehicle: &str, payload: impl Into<Vec<u8>>) -> Recommendation {
        self.devices
            .publish(&topics::request(REGION, vehicle), payload, 1, false)
            .await
            .unwrap();
        self.answer(vehicle).await
    }

    async fn answer(&mut self, vehicle: &str) -> Recommendation {
        let topic = topics::recommendation(REGION, vehicle);
        let answer: Recommendation = self.devices.wait_for_json(&topic, T).await.unwrap();
        protocol::Validate::validate(&answer).expect("every answer is a valid v1 message");
        answer
    }

    async fn fog(&self) -> Fog {
        Fog::start(&self.broker.url(), REGION).await.unwrap()
    }
}

fn station_of(r: &Recommendation) -> &str {
    &r.station.as_ref().expect("a station").station_id
}

async fn reservations(fog: &Fog) -> Vec<Value> {
    fog.get_json("/api/reservations").await.unwrap()
}

#[tokio::test]
async fn retained_stations_before_start_are_used_and_a_request_is_assigned() {
    let mut w = world().await;
    // A busy station next to the vehicle, a free one 4 km away.
    w.publish_station(&station("north-busy", 0.2, 2, 2, 4))
        .await;
    w.publish_station(&station("north-free", 4.0, 2, 0, 0))
        .await;
    let fog = w.fog().await;

    let answer = w.ask("car-1", &request("r-1")).await;
    assert_eq!(answer.status, RecommendationStatus::Assigned, "{answer:?}");
    assert_eq!(answer.request_id, "r-1");
    assert_eq!(station_of(&answer), "north-free");
    let s = answer.station.as_ref().unwrap();
    assert_eq!(s.region, REGION);
    assert_eq!(answer.served_by.as_deref(), Some(REGION));
    let km = answer.distance_km.unwrap();
    assert!((km - 4.0 * 1.3).abs() < 0.05, "road km {km}");
    assert_eq!(answer.wait_s, Some(0));
    assert!(answer.eta_s.unwrap() > 400 && answer.charge_s.unwrap() > 1000);
    let reservation_id = answer.reservation_id.clone().unwrap();
    assert!(reservation_id.starts_with("north-"));
    assert!(answer.expires_ms.unwrap() > protocol_now());

    let held = reservations(&fog).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["reservation_id"], reservation_id.as_str());
    assert_eq!(held[0]["vehicle_id"], "car-1");
    fog.stop().await.unwrap();
}

fn protocol_now() -> u64 {
    serverkit::clock::wall_ms()
}

#[tokio::test]
async fn the_second_request_sees_the_first_reservation() {
    let mut w = world().await;
    w.publish_station(&station("north-near", 0.5, 1, 0, 0))
        .await;
    w.publish_station(&station("north-far", 3.0, 1, 0, 0)).await;
    let fog = w.fog().await;

    let first = w.ask("car-1", &request("a")).await;
    assert_eq!(station_of(&first), "north-near");
    let second = w.ask("car-2", &request("b")).await;
    assert_eq!(
        station_of(&second),
        "north-far",
        "the near charger is promised"
    );

    // car-1 cancels: the near station is free again for the next vehicle.
    let cancel = ReservationUpdate {
        v: 1,
        reservation_id: first.reservation_id.clone().unwrap(),
        action: ReservationAction::Cancel,
    };
    w.devices
        .publish_json(&topics::reservation(REGION, "car-1"), &cancel, 1, false)
        .await
        .unwrap();
    wait_until(
        "the cancelled reservation is gone",
        T,
        Duration::from_millis(20),
        || async { reservations(&fog).await.len() == 1 },
    )
    .await
    .unwrap();
    let third = w.ask("car-3", &request("c")).await;
    assert_eq!(station_of(&third), "north-near");

    // car-2 arrives: its reservation ends.
    let arrived = ReservationUpdate {
        v: 1,
        reservation_id: second.reservation_id.clone().unwrap(),
        action: ReservationAction::Arrived,
    };
    w.devices
        .publish_json(&topics::reservation(REGION, "car-2"), &arrived, 1, false)
        .await
        .unwrap();
    wait_until(
        "the arrived reservation is gone",
        T,
        Duration::from_millis(20),
        || async {
            let held = reservations(&fog).await;
            held.len() == 1 && held[0]["vehicle_id"] == "car-3"
        },
    )
    .await
    .unwrap();
    // Someone else's reservation id cannot be cancelled.
    let hijack = ReservationUpdate {
        v: 1,
        reservation_id: third.reservation_id.clone().unwrap(),
        action: ReservationAction::Cancel,
    };
    w.devices
        .publish_json(&topics::reservation(REGION, "car-1"), &hijack, 1, false)
        .await
        .unwrap();
    wait_until(
        "the hijack is counted as invalid",
        T,
        Duration::from_millis(20),
        || async {
            fog.metric(r#"fog_invalid_messages_total{kind="reservation"}"#)
                .await
                .unwrap()
                >= 1.0
        },
    )
    .await
    .unwrap();
    assert_eq!(reservations(&fog).await.len(), 1);
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn a_faulted_station_is_never_recommended() {
    let mut w = world().await;
    let mut faulted = station("north-faulted", 0.1, 8, 0, 0);
    faulted.state = StationState::Faulted;
    w.publish_station(&faulted).await;
    w.publish_station(&station("north-ok", 2.0, 1, 0, 0)).await;
    w.publish_station(&station("north-later", 0.3, 4, 0, 0))
        .await;
    let fog = w.fog().await;
    assert_eq!(
        station_of(&w.ask("car-1", &request("1")).await),
        "north-later"
    );

    // The nearest good station faults, then goes offline by its last will.
    let mut later = station("north-later", 0.3, 4, 0, 0);
    later.state = StationState::Faulted;
    w.publish_station(&later).await;
    for i in 0..5 {
        let answer = w.ask(&format!("car-f{i}"), &request("x")).await;
        assert_eq!(station_of(&answer), "north-ok", "{answer:?}");
        w.devices
            .publish_json(
                &topics::reservation(REGION, &format!("car-f{i}")),
                &ReservationUpdate {
                    v: 1,
                    reservation_id: answer.reservation_id.unwrap(),
                    action: ReservationAction::Cancel,
                },
                1,
                false,
            )
            .await
            .unwrap();
    }
    let will = br#"{"v":1,"station_id":"north-ok","state":"offline"}"#;
    w.devices
        .publish(
            &topics::station_status(REGION, "north-ok"),
            &will[..],
            1,
            true,
        )
        .await
        .unwrap();
    let answer = w.ask("car-2", &request("2")).await;
    assert_eq!(
        answer.status,
        RecommendationStatus::Unavailable,
        "{answer:?}"
    );
    assert!(answer.reason.unwrap().contains("no station in service"));
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_rejected_with_a_reason_and_the_fog_keeps_serving() {
    let mut w = world().await;
    w.publish_station(&station("north-1", 1.0, 4, 0, 0)).await;
    let fog = w.fog().await;

    let oversized = format!(
        r#"{{"v":1,"request_id":"big","lat":0,"lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8,"pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"{\"v\":1,\"request_id\":\"r-trunc\",\"lat\":".to_vec(), "", "JSON"),
        (b"\xff\xfe\x00garbage".to_vec(), "", "JSON"),
        (
            br#"{"v":1,"request_id":"r-nan","lat":NaN,"lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "",
            "JSON",
        ),
        (
            br#"{"v":1,"request_id":"r-lat","lat":91,"lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "r-lat",
            "lat",
        ),
        (
            br#"{"v":1,"request_id":"r-soc","lat":0,"lon":0,"soc":1.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "r-soc",
            "soc",
        ),
        (
            br#"{"v":1,"request_id":"r-huge","lat":0,"lon":0,"soc":0.5,"battery_kwh":1e300,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "r-huge",
            "battery_kwh",
        ),
        (
            br#"{"v":2,"request_id":"r-v2","lat":0,"lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "r-v2",
            "version",
        ),
        (
            br#"{"v":1,"request_id":"r-type","lat":"north","lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "r-type",
            "invalid type",
        ),
        (
            br#"{"v":1,"request_id":"bad id!","lat":0,"lon":0,"soc":0.5,"battery_kwh":60,"kwh_per_km":0.2,"target_soc":0.8}"#.to_vec(),
            "",
            "request_id",
        ),
        (oversized.into_bytes(), "", "limit"),
    ];
    let n = cases.len();
    for (payload, request_id, reason_part) in cases {
        let answer = w.ask_raw("car-bad", payload).await;
        assert_eq!(answer.status, RecommendationStatus::Rejected, "{answer:?}");
        assert_eq!(answer.request_id, request_id, "{answer:?}");
        let reason = answer.reason.unwrap_or_default();
        assert!(
            reason.contains(reason_part),
            "{reason:?} should mention {reason_part:?}"
        );
        assert!(answer.station.is_none() && answer.reservation_id.is_none());
    }
    // Bad station statuses are refused and counted, never applied.
    for bad in [
        &br#"{"v":1,"station_id":"north-x","lat":0,"lon":0,"chargers":2,"power_kw":50,"occupied":3,"state":"available"}"#[..],
        br#"{"v":1,"station_id":"someone-else","lat":0,"lon":0,"chargers":2,"power_kw":50,"state":"available"}"#,
        br#"not json"#,
    ] {
        w.devices
            .publish(&topics::station_status(REGION, "north-x"), bad, 1, false)
            .await
            .unwrap();
    }
    wait_until(
        "3 bad statuses counted",
        T,
        Duration::from_millis(20),
        || async {
            fog.metric(r#"fog_invalid_messages_total{kind="status"}"#)
                .await
                .unwrap()
                == 3.0
        },
    )
    .await
    .unwrap();
    let stations: Vec<Value> = fog.get_json("/api/stations").await.unwrap();
    assert_eq!(stations.len(), 1, "{stations:?}");

    // Still serving.
    let ok = w.ask("car-good", &request("fine")).await;
    assert_eq!(ok.status, RecommendationStatus::Assigned);
    assert_eq!(
        fog.metric(r#"fog_requests_total{status="rejected"}"#)
            .await
            .unwrap(),
        n as f64
    );
    assert_eq!(
        fog.metric(r#"fog_invalid_messages_total{kind="request"}"#)
            .await
            .unwrap(),
        n as f64
    );
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn a_repeated_request_id_gets_the_same_answer_and_one_reservation() {
    let mut w = world().await;
    w.publish_station(&station("north-1", 1.0, 1, 0, 0)).await;
    w.publish_station(&station("north-2", 2.0, 1, 0, 0)).await;
    let fog = w.fog().await;
    let first = w.ask("car-1", &request("same")).await;
    let again = w.ask("car-1", &request("same")).await;
    assert_eq!(first, again);
    assert_eq!(reservations(&fog).await.len(), 1);
    assert_eq!(
        fog.metric("fog_duplicate_requests_total").await.unwrap(),
        1.0
    );
    // Another vehicle with the same request id is a different request.
    let other = w.ask("car-2", &request("same")).await;
    assert_ne!(other.reservation_id, first.reservation_id);
    assert_eq!(reservations(&fog).await.len(), 2);
    // A new request id from car-1 replaces its reservation.
    let replaced = w.ask("car-1", &request("next")).await;
    assert_ne!(replaced.reservation_id, first.reservation_id);
    assert_eq!(reservations(&fog).await.len(), 2);
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_fog_restores_its_stations_from_retained_statuses() {
    let mut w = world().await;
    w.publish_station(&station("north-1", 1.0, 2, 0, 0)).await;
    let fog = w.fog().await;
    // A station that arrives while the fog runs, and one removed by an empty payload.
    w.publish_station(&station("north-2", 0.2, 2, 0, 0)).await;
    w.publish_station(&station("north-3", 0.1, 2, 0, 0)).await;
    w.devices
        .publish(
            &topics::station_status(REGION, "north-3"),
            Vec::new(),
            1,
            true,
        )
        .await
        .unwrap();
    wait_until(
        "two stations known",
        T,
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .unwrap()
                .len()
                == 2
        },
    )
    .await
    .unwrap();
    fog.stop().await.unwrap();

    let fog = w.fog().await;
    let stations: Vec<Value> = fog.get_json("/api/stations").await.unwrap();
    let ids: Vec<&str> = stations
        .iter()
        .map(|s| s["station_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["north-1", "north-2"]);
    let answer = w.ask("car-1", &request("after-restart")).await;
    assert_eq!(station_of(&answer), "north-2");
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let w = world().await;
    w.publish_station(&station("north-1", 1.0, 2, 1, 0)).await;
    let fog = w.fog().await;
    assert_eq!(fog.get_text("/healthz").await.unwrap().0, 200);
    assert_eq!(fog.get_text("/readyz").await.unwrap().0, 200);
    let (code, text) = fog.get_text("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for series in [
        "fog_planning_seconds",
        "fog_reservations_active",
        "fog_stations",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    wait_until(
        "the station is counted",
        T,
        Duration::from_millis(20),
        || async {
            fog.metric(r#"fog_stations{state="available"}"#)
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    let region: Value = fog.get_json("/api/region").await.unwrap();
    assert_eq!(region["region"], REGION);
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn the_fog_reconnects_and_resubscribes_after_a_broker_restart() {
    let mut w = world().await;
    w.publish_station(&station("north-1", 1.0, 2, 0, 0)).await;
    let fog = w.fog().await;
    assert_eq!(
        w.ask("car-1", &request("before")).await.status,
        RecommendationStatus::Assigned
    );
    w.broker.restart().unwrap();
    wait_until(
        "the fog is connected again",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async { fog.metric("fog_mqtt_reconnects_total").await.unwrap() >= 1.0 },
    )
    .await
    .unwrap();
    // The device client reconnects too (fresh session), then asks again.
    let devices = TestClient::connect(&w.broker.url(), "devices-2")
        .await
        .unwrap();
    devices
        .subscribe(&format!("ev/{REGION}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    w.devices = devices;
    let answer = w.ask("car-2", &request("after")).await;
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    fog.stop().await.unwrap();
}

/// The station list for central's dashboard goes out once an aggregate period even when
/// the region changes all the time (aggregates then go out on change, every 250 ms).
#[tokio::test]
async fn the_station_list_is_published_every_period_even_in_a_busy_region() {
    let w = world().await;
    let mut spy = TestClient::connect(&w.broker.url(), "spy").await.unwrap();
    spy.subscribe("fog/up/stations", 1).await.unwrap();
    let mut config = Fog::config(&w.broker.url(), REGION);
    config.aggregate_ms = 500;
    config.aggregate_min_ms = 100;
    let _fog = Fog::start_with(config).await.unwrap();
    // A station whose queue changes every 100 ms for 2.5 s: the region is always dirty.
    let mut lists = Vec::new();
    let started = std::time::Instant::now();
    let mut queue = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        queue = (queue + 1) % 5;
        w.publish_station(&station("north-1", 0.5, 2, 2, queue))
            .await;
        if let Ok(m) = spy.recv_timeout(Duration::from_millis(100)).await {
            lists.push(serde_json::from_slice::<protocol::fog::Stations>(m.payload()).unwrap());
        }
    }
    assert!(
        lists.len() >= 3,
        "{} station lists in 2.5 s with a 500 ms period",
        lists.len()
    );
    let last = lists.last().unwrap();
    assert_eq!(last.region, REGION);
    assert_eq!(last.stations.len(), 1);
    assert_eq!(last.stations[0].station_id, "north-1");
}

#[tokio::test]
async fn with_no_central_ever_saturated_requests_are_answered_at_once_with_the_reason() {
    let mut w = world().await;
    // One station, far over the wait limit: every request is saturated.
    w.publish_station(&station("north-busy", 0.5, 1, 1, 40))
        .await;
    let fog = w.fog().await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = std::time::Instant::now();
        let answer = w
            .ask(&format!("car-{i}"), &request(&format!("r-{i}")))
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(answer.status, RecommendationStatus::Assigned, "{answer:?}");
        let reason = answer.reason.unwrap_or_default();
        assert!(
            reason.contains("central unreachable (no heartbeat heard yet)"),
            "{reason}"
        );
    }
    // Nothing waited for the 1.5 s reroute timeout (a debug build on a busy machine:
    // milliseconds, not seconds).
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let (_, metrics) = fog.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("fog_reroutes_total{kind=\"central_unreachable\"} 20"),
        "{metrics}"
    );
    fog.stop().await.unwrap();
}
