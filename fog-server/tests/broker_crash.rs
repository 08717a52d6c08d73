//! The regional broker killed (SIGKILL) in the middle of a burst and started again: the
//! fog server and the vehicles' gateway reconnect and resubscribe, requests sent while
//! the broker was down go out after it is back, requests the dead broker swallowed are
//! asked again under the same id, and every request ends up answered exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{ChargeRequest, Recommendation, topics};
use serde_json::Value;
use serverkit::{Link, LinkSettings};
use testkit::fog::Fog;
use testkit::messages::station;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};
use tokio_util::sync::CancellationToken;

/// Per (vehicle, request id), the distinct answers it got.
type Answers = HashMap<(String, String), HashSet<String>>;
const REGION: &str = "north";
const VEHICLES: usize = 50;
const PER_VEHICLE: usize = 10;

fn request(vehicle: usize, n: usize) -> (String, Vec<u8>) {
    let req = ChargeRequest {
        v: 1,
        request_id: format!("r-{n}"),
        lat: -12.25 + (vehicle % 10) as f64 * 0.004,
        lon: -38.95 + (vehicle / 10) as f64 * 0.004,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: None,
    };
    (
        topics::request(REGION, &format!("car-{vehicle:02}")),
        serde_json::to_vec(&req).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_during_a_burst_loses_no_request_and_answers_none_twice() {
    testkit::init_tracing();
    // Saves its state every second (generated configs: every 10 s), so that the
    // sessions of the fog and the gateway survive the crash.
    let mut broker =
        Mosquitto::start(MosquittoConfig::new().with_extra("autosave_interval 1")).unwrap();
    let fog = Fog::start(&broker.url(), REGION).await.unwrap();
    let stations = TestClient::connect(&broker.url(), "stations")
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("n-{i:02}");
        let s = station(
            &id,
            -12.25 + f64::from(i % 5) * 0.01,
            -38.95 + f64::from(i / 5) * 0.01,
            8,
            150.0,
        );
        stations
            .publish_json(&topics::station_status(REGION, &id), &s, 1, true)
            .await
            .unwrap();
    }
    wait_until(
        "the fog knows the stations",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.len() == 20)
        },
    )
    .await
    .unwrap();
    drop(stations);

    // The vehicles' gateway: the same reconnecting link the servers use.
    let shutdown = CancellationToken::new();
    let settings = LinkSettings {
        url: broker.url(),
        client_id: "fleet".into(),
        persistent: true,
        username: None,
        password: None,
        will: None,
        ca_file: None,
        ..Default::default()
    };
    let filter = format!("ev/{REGION}/vehicles/+/recommendation");
    let mut link = Link::connect(&settings, vec![(filter, 1)], &shutdown)
        .await
        .unwrap();
    let publisher = link.publisher();
    let link_up = link.status();
    // Both sessions (subscriptions included) are on disk before the crash.
    let subscribed = std::time::SystemTime::now();
    let db = broker.dir().join("mosquitto.db");
    wait_until(
        "the broker saved the sessions",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            std::fs::metadata(&db)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > subscribed)
        },
    )
    .await
    .unwrap();
    // Per request, the distinct answers it got (QoS 1 is at least once: after a crash
    // a message the broker took but did not acknowledge is sent again, so the same
    // answer may arrive twice; a second, different answer must never).
    let answers: Arc<Mutex<Answers>> = Arc::default();
    let seen = answers.clone();
    let listener = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            while let Some(msg) = link.next(&shutdown).await {
                let vehicle = msg.topic().split('/').nth(3).unwrap_or_default().to_owned();
                let rec: Recommendation = serde_json::from_slice(msg.payload()).unwrap();
                let answer = format!("{:?} {:?}", rec.status, rec.reservation_id);
                seen.lock()
                    .unwrap()
                    .entry((vehicle, rec.request_id))
                    .or_default()
                    .insert(answer);
            }
        }
    });

    // Half the burst, the broker dies, the other half is sent while it is down.
    let all: Vec<(usize, usize)> = (0..PER_VEHICLE)
        .flat_map(|n| (0..VEHICLES).map(move |v| (v, n)))
        .collect();
    let (before, during) = all.split_at(all.len() / 2);
    for &(v, n) in before {
        let (topic, payload) = request(v, n);
        publisher.publish(&topic, &payload, 1, false);
    }
    broker.kill().unwrap();
    wait_until(
        "the gateway notices the broker is gone",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async { !link_up.is_connected() },
    )
    .await
    .unwrap();
    for &(v, n) in during {
        let (topic, payload) = request(v, n);
        publisher.publish(&topic, &payload, 1, false);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the outage
    let restarted = Instant::now();
    broker.restart().unwrap();

    // Vehicles ask again, under the same id, what got no answer for 2 s; until every
    // request has one.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last_progress = (0, Instant::now());
    let mut asked_again = 0;
    loop {
        let answered = answers.lock().unwrap().len();
        if answered == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} of {} requests answered 40 s after the restart; broker log:\n{}",
            all.len(),
            broker
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        if answered != last_progress.0 {
            last_progress = (answered, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(2) {
            let missing: Vec<(usize, usize)> = {
                let a = answers.lock().unwrap();
                all.iter()
                    .copied()
                    .filter(|&(v, n)| !a.contains_key(&(format!("car-{v:02}"), format!("r-{n}"))))
                    .collect()
            };
            for (v, n) in missing {
                asked_again += 1;
                let (topic, payload) = request(v, n);
                publisher.publish(&topic, &payload, 1, false);
            }
            last_progress.1 = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_answered = restarted.elapsed();
    // What was sent while the link was down went out after the reconnect by itself:
    // only requests the dead broker swallowed had to be asked again.
    assert!(
        asked_again <= before.len(),
        "{asked_again} asked again, more than the {} sent before the crash",
        before.len()
    );
    // Nothing is answered twice (with a second answer), also after a quiet spell.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let twice: Vec<_> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    // One reservation per vehicle.
    let reservations: Vec<Value> = fog.get_json("/api/reservations").await.unwrap();
    assert_eq!(reservations.len(), VEHICLES, "{reservations:?}");
    println!(
        "{} requests, broker killed half-way: all answered once, {all_answered:?} after its restart; {asked_again} asked again",
        all.len()
    );
    shutdown.cancel();
    listener.await.unwrap();
}
