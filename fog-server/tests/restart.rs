//! A fog server process killed with SIGKILL and started again with the same command
//! line in the same working directory comes back with its reservations.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationStatus, topics};
use serde_json::Value;
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port, wait_until};

const REGION: &str = "north";
const T: Duration = Duration::from_secs(10);

fn station(id: &str, km_north: f64, chargers: u32) -> StationStatus {
    common::station(id, -12.25 + km_north / 111.19, -38.95, chargers, 50.0)
}

fn request(id: &str) -> ChargeRequest {
    common::request(id, -12.25, -38.95, 0.3)
}

/// A fog-server process, killed when dropped (also when the test fails half-way, so
/// that no server outlives it and later connects to a broker that reuses its port).
struct FogChild(Child);

impl std::ops::Deref for FogChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for FogChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for FogChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fog-server` as an operator starts it: no state flag, in `cwd`.
fn start(cwd: &Path, broker: &str, http: u16) -> FogChild {
    Command::new(env!("CARGO_BIN_EXE_fog-server"))
        .current_dir(cwd)
        .args(["--region", REGION, "--broker", broker])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(cwd.join("fog.log"))
                .expect("fog log"),
        )
        .spawn()
        .map(FogChild)
        .expect("fog-server starts")
}

async fn reservations(http: u16) -> Option<Vec<Value>> {
    let r = reqwest::get(format!("http://127.0.0.1:{http}/api/reservations"))
        .await
        .ok()?;
    r.json::<Vec<Value>>().await.ok()
}

async fn ask(vehicle: &mut TestClient, id: &str, car: &str) -> Recommendation {
    vehicle
        .publish_json(&topics::request(REGION, car), &request(id), 1, false)
        .await
        .unwrap();
    vehicle
        .wait_for_json(&topics::recommendation(REGION, car), T)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_killed_fog_server_comes_back_with_every_reservation_and_books_nothing_twice() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let stations = TestClient::connect(&broker.url(), "stations")
        .await
        .unwrap();
    for (i, id) in ["n-1", "n-2", "n-3"].iter().enumerate() {
        stations
            .publish_json(
                &topics::station_status(REGION, id),
                &station(id, i as f64, 2),
                1,
                true,
            )
            .await
            .unwrap();
    }
    let http = free_port().unwrap();
    let mut fog = start(cwd.path(), &broker.url(), http);
    let mut vehicle = TestClient::connect(&broker.url(), "fleet").await.unwrap();
    vehicle
        .subscribe(&format!("ev/{REGION}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    wait_until(
        "the fog server knows the stations",
        T,
        Duration::from_millis(50),
        || async {
            reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await
    .unwrap();

    let mut answers = Vec::new();
    for n in 0..5 {
        let a = ask(&mut vehicle, &format!("r-{n}"), &format!("car-{n}")).await;
        assert_eq!(a.status, RecommendationStatus::Assigned, "{a:?}");
        answers.push(a);
    }
    let before = reservations(http).await.unwrap();
    assert_eq!(before.len(), 5);

    fog.kill().unwrap(); // SIGKILL: no shutdown code runs
    fog.wait().unwrap();
    let restarted = Instant::now();
    let mut fog = start(cwd.path(), &broker.url(), http);

    // Answers again within 5 s of the restart.
    let fresh = loop {
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(500), async {
            vehicle
                .publish_json(
                    &topics::request(REGION, "car-new"),
                    &request("r-new"),
                    1,
                    false,
                )
                .await
                .unwrap();
            vehicle
                .wait_for_json::<Recommendation>(
                    &topics::recommendation(REGION, "car-new"),
                    Duration::from_millis(400),
                )
                .await
        })
        .await
        {
            break answer;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no answer within 5 s of the restart"
        );
    };
    assert_eq!(fresh.status, RecommendationStatus::Assigned, "{fresh:?}");
    let answered_after = restarted.elapsed();

    // Every reservation is back with the same id, station and expiry (each as soon as
    // its station's retained status is in again).
    let after = wait_until(
        "every reservation is back",
        T,
        Duration::from_millis(20),
        || async {
            reservations(http).await.filter(|after| {
                before.iter().all(|r| {
                    after
                        .iter()
                        .any(|a| a["reservation_id"] == r["reservation_id"])
                })
            })
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: before {before:?}; now {:?}; the fog's log:\n{}",
            futures_now(http),
            std::fs::read_to_string(cwd.path().join("fog.log")).unwrap_or_default()
        )
    });
    for r in &before {
        let same = after
            .iter()
            .find(|a| a["reservation_id"] == r["reservation_id"])
            .unwrap_or_else(|| panic!("{} lost: {after:?}", r["reservation_id"]));
        assert_eq!(same["station_id"], r["station_id"]);
        assert_eq!(same["expires_ms"], r["expires_ms"]);
        assert_eq!(same["vehicle_id"], r["vehicle_id"]);
    }
    assert_eq!(after.len(), 6, "five restored and the new one: {after:?}");

    // A redelivered request (same id) gets the same answer, not a second reservation.
    let again = ask(&mut vehicle, "r-2", "car-2").await;
    assert_eq!(again.reservation_id, answers[2].reservation_id);
    assert_eq!(reservations(http).await.unwrap().len(), 6);
    println!("answering again {answered_after:?} after the restart");

    fog.kill().unwrap();
    fog.wait().unwrap();
}

/// The reservations the fog holds now, read without the async runtime (for a panic
/// message).
fn futures_now(http: u16) -> String {
    std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{http}/api/reservations")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
