//! The fog server's MQTT link as processes meet it: a second instance for the same
//! region (a double start, a rolling update) stands by until the first hands over or
//! dies, and SIGTERM stops the server within its grace period whatever the link is
//! doing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{ChargeRequest, Recommendation, RecommendationStatus, topics};
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port, wait_until};

const REGION: &str = "north";
/// SIGTERM to exit, at most (Kubernetes gives 15 s, compose 10 s).
const GRACE: Duration = Duration::from_secs(5);

fn request(id: &str) -> ChargeRequest {
    common::request(id, -12.25, -38.95, 0.3)
}

struct FogProcess {
    child: Child,
    http: u16,
    log: PathBuf,
}

impl FogProcess {
    fn start(dir: &Path, name: &str, broker: &str) -> FogProcess {
        Self::spawn(dir, name, broker, &["--no-state"])
    }

    /// With its reservations kept in `dir/state` (shared by every instance in `dir`).
    fn start_kept(dir: &Path, name: &str, broker: &str) -> FogProcess {
        let state = dir.join("state");
        Self::spawn(dir, name, broker, &["--state-dir", state.to_str().unwrap()])
    }

    fn spawn(dir: &Path, name: &str, broker: &str, state: &[&str]) -> FogProcess {
        let http = free_port().unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_fog-server"))
            .current_dir(dir)
            .args(["--region", REGION, "--broker", broker])
            .args(state)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("fog-server starts");
        FogProcess { child, http, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.http))
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, and how long until the process exited.
    fn terminate(&mut self) -> Duration {
        let sent = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return sent.elapsed();
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "still running 30 s after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FogProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TAKEN_OVER_LOG: &str = "handed this client's connection to another client";

/// Waits until `fog`'s `/readyz` answers `code` with a body containing `says`.
async fn wait_ready(fog: &FogProcess, what: &str, code: u16, says: &str) {
    wait_until(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            fog.get("/readyz")
                .await
                .is_some_and(|(c, body)| c == code && body.contains(says))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", fog.log()));
}

/// Sends `n` requests from `vehicle`, one every `every`, calling `meanwhile` after the
/// `at`-th (if any); then collects the answers until each has one or `patience` passes, and a
/// little longer for any answered twice. Returns how often each request was answered.
async fn ask_through(
    vehicle: &mut TestClient,
    first: usize,
    n: usize,
    every: Duration,
    at: Option<usize>,
    mut meanwhile: impl FnMut(),
) -> std::collections::BTreeMap<String, usize> {
    let topic = topics::recommendation(REGION, "car-1");
    let mut answers = std::collections::BTreeMap::new();
    let tally = |msg: paho_mqtt::Message,
                 answers: &mut std::collections::BTreeMap<String, usize>| {
        let rec: Recommendation = serde_json::from_slice(msg.payload()).unwrap();
        assert_eq!(rec.status, RecommendationStatus::Assigned, "{rec:?}");
        *answers.entry(rec.request_id).or_insert(0) += 1;
    };
    for k in first..first + n {
        vehicle
            .publish_json(
                &topics::request(REGION, "car-1"),
                &request(&format!("r-{k}")),
                1,
                false,
            )
            .await
            .unwrap();
        if Some(k - first) == at {
            meanwhile();
        }
        for msg in vehicle.collect_for(every).await.unwrap() {
            tally(msg, &mut answers);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.len() < n && Instant::now() < deadline {
        if let Ok(msg) = vehicle.wait_for(&topic, deadline - Instant::now()).await {
            tally(msg, &mut answers);
        }
    }
    for msg in vehicle
        .collect_for(Duration::from_millis(500))
        .await
        .unwrap()
    {
        tally(msg, &mut answers);
    }
    answers
}

/// A second instance for one region (a double start, a rolling update) stands by — no
/// fight over the client id — and takes over, with the journal, when the first stops
/// (SIGTERM: a hand-over) or dies (SIGKILL: its will). Every request is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_fog_server_for_one_region_stands_by_and_takes_over() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut vehicle = TestClient::connect(&broker.url(), "car-1").await.unwrap();
    vehicle
        .subscribe(&topics::recommendation(REGION, "car-1"), 1)
        .await
        .unwrap();
    vehicle
        .publish_json(
            &topics::station_status(REGION, "north-001"),
            &common::station("north-001", -12.25, -38.95, 4, 50.0),
            1,
            true,
        )
        .await
        .unwrap();
    let mut first = FogProcess::start_kept(dir.path(), "first", &broker.url());
    wait_ready(&first, "the first fog is ready", 200, "ready").await;
    let mut second = FogProcess::start_kept(dir.path(), "second", &broker.url());
    let started = Instant::now();
    wait_ready(
        &second,
        "the second stands by",
        503,
        "standing by: instance",
    )
    .await;
    assert_eq!(second.get("/healthz").await.map(|r| r.0), Some(200));
    let rss_start = second.rss_kb();

    // Longer than the lease's refresh: the second keeps standing by, the first answers.
    let answers = ask_through(&mut vehicle, 0, 20, Duration::from_millis(400), None, || {}).await;
    assert!(
        answers.values().all(|&n| n == 1) && answers.len() == 20,
        "{answers:?}"
    );
    wait_ready(&second, "still standing by", 503, "standing by").await;
    assert_eq!(first.metric("fog_mqtt_takeovers_total").await, Some(0.0));
    let rss_standby = second.rss_kb();

    // SIGTERM to the first in the middle of a stream of requests.
    let mut took = Duration::ZERO;
    let handed = Instant::now();
    let answers = ask_through(
        &mut vehicle,
        100,
        40,
        Duration::from_millis(50),
        Some(10),
        || {
            took = first.terminate();
        },
    )
    .await;
    assert!(took <= GRACE, "SIGTERM to exit {took:?}");
    assert_eq!(
        answers.len(),
        40,
        "answered {} of 40: {answers:?}",
        answers.len()
    );
    assert!(
        answers.values().all(|&n| n == 1),
        "answered twice: {answers:?}"
    );
    wait_ready(&second, "the second took over", 200, "ready").await;
    let handover = handed.elapsed();
    // It took the journal with it: the vehicle's reservation, from its last answer.
    let (_, held) = second.get("/api/reservations").await.unwrap();
    assert!(held.contains("car-1"), "{held}");
    assert_eq!(second.metric("fog_mqtt_takeovers_total").await, Some(0.0));

    // A third stands by; the second is killed (SIGKILL): its will releases the lease.
    let third = FogProcess::start_kept(dir.path(), "third", &broker.url());
    wait_ready(&third, "the third stands by", 503, "standing by: instance").await;
    let killed = Instant::now();
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    wait_ready(&third, "the third took over", 200, "ready").await;
    let failover = killed.elapsed();
    let answers = ask_through(
        &mut vehicle,
        200,
        10,
        Duration::from_millis(50),
        None,
        || {},
    )
    .await;
    assert!(
        answers.values().all(|&n| n == 1) && answers.len() == 10,
        "{answers:?}"
    );
    let (_, held) = third.get("/api/reservations").await.unwrap();
    assert!(held.contains("car-1"), "{held}");
    assert!(!second.log().contains(TAKEN_OVER_LOG) && !third.log().contains(TAKEN_OVER_LOG));
    println!(
        "second instance: stood by {:.1?} (RSS {rss_start} -> {rss_standby} kB); SIGTERM hand-over: first exited after {took:?}, 40 of 40 requests answered once, second ready {handover:?} after the SIGTERM; SIGKILL: third ready {failover:?} after the kill",
        started.elapsed()
    );
    assert!(
        rss_standby <= rss_start + 4 * 1024,
        "RSS {rss_start} -> {rss_standby} kB"
    );
    // SIGTERM while standing by: gone within the grace period.
    let mut fourth = FogProcess::start_kept(dir.path(), "fourth", &broker.url());
    wait_ready(&fourth, "the fourth stands by", 503, "standing by").await;
    let took = fourth.terminate();
    assert!(took <= GRACE, "{took:?}");
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_fog_server_whatever_its_link_is_doing() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();

    // The broker unreachable from the start: nothing listens on the port.
    let nowhere = format!("tcp://127.0.0.1:{}", free_port().unwrap());
    let mut fog = FogProcess::start(dir.path(), "unreachable", &nowhere);
    wait_until(
        "the fog retries",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { fog.log().contains("cannot reach the broker yet") },
    )
    .await
    .unwrap();
    let unreachable = fog.terminate();

    // Connected, then the broker killed: reconnecting.
    let mut broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let mut fog = FogProcess::start(dir.path(), "reconnecting", &broker.url());
    wait_until(
        "the fog serves",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            fog.get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        },
    )
    .await
    .unwrap();
    broker.kill().unwrap();
    wait_until(
        "the fog is reconnecting",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { fog.log().contains("reconnect failed") },
    )
    .await
    .unwrap();
    let reconnecting = fog.terminate();

    // Reconnecting to a broker that is stopped (SIGSTOP: it accepts, never answers).
    broker.restart().unwrap();
    let mut fog = FogProcess::start(dir.path(), "silent", &broker.url());
    wait_until(
        "the fog serves",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            fog.get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        },
    )
    .await
    .unwrap();
    let pid = broker.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let silent = fog.terminate();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );

    println!(
        "SIGTERM to exit: broker unreachable {unreachable:?}, reconnecting {reconnecting:?}, broker silent {silent:?}"
    );
    for (state, took) in [
        ("unreachable", unreachable),
        ("reconnecting", reconnecting),
        ("silent", silent),
    ] {
        assert!(took <= GRACE, "{state}: {took:?}");
    }
}
