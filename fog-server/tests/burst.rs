//! A bounded burst against one region: 5,000 requests from 500 vehicles sent within a
//! second are all answered, each exactly once, and the reservations add up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{ChargeRequest, Recommendation, RecommendationStatus, topics};
use serde_json::Value;
use testkit::fog::Fog;
use testkit::messages::station;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};

const REGION: &str = "north";
const VEHICLES: usize = 500;
const PER_VEHICLE: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_requests_in_a_second_are_each_answered_once() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let fog = Fog::start(&broker.url(), REGION).await.unwrap();
    let stations = TestClient::connect(&broker.url(), "stations")
        .await
        .unwrap();
    for i in 0..40 {
        let id = format!("n-{i:02}");
        let status = station(
            &id,
            -12.25 + f64::from(i % 8) * 0.01,
            -38.95 + f64::from(i / 8) * 0.01,
            4,
            50.0,
        );
        stations
            .publish_json(&topics::station_status(REGION, &id), &status, 1, true)
            .await
            .unwrap();
    }
    wait_until(
        "the fog knows the 40 stations",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.len() == 40)
        },
    )
    .await
    .unwrap();

    let mut fleet = TestClient::connect(&broker.url(), "fleet").await.unwrap();
    fleet
        .subscribe(&format!("ev/{REGION}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    // Round-robin over vehicles, so that every vehicle's requests are spread over the
    // burst; each request asks again, so each replaces the vehicle's reservation.
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(VEHICLES * PER_VEHICLE);
    for n in 0..PER_VEHICLE {
        for v in 0..VEHICLES {
            let req = ChargeRequest {
                v: 1,
                request_id: format!("r-{n}"),
                lat: -12.25 + (v % 20) as f64 * 0.004,
                lon: -38.95 + (v / 20) as f64 * 0.002,
                soc: 0.3,
                battery_kwh: 60.0,
                kwh_per_km: 0.18,
                target_soc: 0.8,
                ts_ms: None,
            };
            tokens.push(fleet.publish_no_wait(
                &topics::request(REGION, &format!("car-{v:03}")),
                serde_json::to_vec(&req).unwrap(),
                1,
                false,
            ));
        }
    }
    for t in tokens {
        t.await.unwrap();
    }
    let sent_in = started.elapsed();
    assert!(
        sent_in < Duration::from_secs(2),
        "the burst took {sent_in:?} to send"
    );

    // Every answer, exactly once.
    let mut answers: HashMap<(String, String), Recommendation> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.len() < VEHICLES * PER_VEHICLE && Instant::now() < deadline {
        for msg in fleet.collect_for(Duration::from_millis(200)).await.unwrap() {
            let vehicle = msg.topic().split('/').nth(3).unwrap().to_owned();
            let rec: Recommendation = serde_json::from_slice(msg.payload()).unwrap();
            let key = (vehicle, rec.request_id.clone());
            assert!(
                answers.insert(key.clone(), rec).is_none(),
                "{key:?} answered twice"
            );
        }
    }
    let answered_in = started.elapsed();
    assert_eq!(
        answers.len(),
        VEHICLES * PER_VEHICLE,
        "answers missing after {answered_in:?}"
    );
    // Nothing more comes.
    let extra = fleet.collect_for(Duration::from_millis(500)).await.unwrap();
    assert!(extra.is_empty(), "{} answers came twice", extra.len());

    // One reservation per vehicle, the one its last answer named.
    let reservations: Vec<Value> = fog.get_json("/api/reservations").await.unwrap();
    assert_eq!(reservations.len(), VEHICLES, "one reservation per vehicle");
    for v in 0..VEHICLES {
        let car = format!("car-{v:03}");
        let last = &answers[&(car.clone(), format!("r-{}", PER_VEHICLE - 1))];
        assert_eq!(last.status, RecommendationStatus::Assigned, "{last:?}");
        let held: Vec<&Value> = reservations
            .iter()
            .filter(|r| r["vehicle_id"] == car.as_str())
            .collect();
        assert_eq!(held.len(), 1, "{car}: {held:?}");
        assert_eq!(
            held[0]["reservation_id"].as_str(),
            last.reservation_id.as_deref()
        );
    }
    println!(
        "{} requests sent in {sent_in:?}, all answered after {answered_in:?}",
        VEHICLES * PER_VEHICLE
    );
}
