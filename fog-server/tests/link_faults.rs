//! The fog server's MQTT link as processes meet it: a second instance for the same
//! region (a double start, a rolling update) is detected and not fought, and SIGTERM
//! stops the server within its grace period whatever the link is doing.

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
        let http = free_port().unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_fog-server"))
            .current_dir(dir)
            .args(["--region", REGION, "--broker", broker, "--no-state"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fog_servers_for_one_region_take_turns_instead_of_fighting() {
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
    let mut first = FogProcess::start(dir.path(), "first", &broker.url());
    wait_until(
        "the first fog is ready",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            first
                .get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        },
    )
    .await
    .unwrap();
    let mut second = FogProcess::start(dir.path(), "second", &broker.url());
    let started = Instant::now();
    wait_until(
        "the second fog serves HTTP",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { second.get("/healthz").await.is_some() },
    )
    .await
    .unwrap();
    let rss_start = (first.rss_kb(), second.rss_kb());

    // 30 s of two instances: the region keeps answering, one of them is not ready.
    let mut asked = 0;
    let mut answered = 0;
    let mut saw_not_ready = false;
    while started.elapsed() < Duration::from_secs(30) {
        asked += 1;
        let id = format!("r-{asked}");
        vehicle
            .publish_json(&topics::request(REGION, "car-1"), &request(&id), 1, false)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(35);
        while Instant::now() < deadline {
            let rec: Recommendation = vehicle
                .wait_for_json(
                    &topics::recommendation(REGION, "car-1"),
                    deadline - Instant::now(),
                )
                .await
                .unwrap_or_else(|e| panic!("request {id} not answered: {e:#}"));
            if rec.request_id == id {
                assert_eq!(rec.status, RecommendationStatus::Assigned, "{rec:?}");
                answered += 1;
                break;
            }
        }
        for fog in [&first, &second] {
            if let Some((503, body)) = fog.get("/readyz").await {
                saw_not_ready |= body.contains("taken over");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let window = started.elapsed();
    let takeovers = first.metric("fog_mqtt_takeovers_total").await.unwrap()
        + second.metric("fog_mqtt_takeovers_total").await.unwrap();
    let errors = (
        first.log().matches(TAKEN_OVER_LOG).count(),
        second.log().matches(TAKEN_OVER_LOG).count(),
    );
    let rss_end = (first.rss_kb(), second.rss_kb());
    println!(
        "two instances for {window:.1?}: {takeovers} takeovers ({:.1}/min), {answered} of {asked} requests answered, \
         takeover errors logged {errors:?}, RSS kB {rss_start:?} -> {rss_end:?}",
        takeovers * 60.0 / window.as_secs_f64()
    );
    assert_eq!(answered, asked);
    assert!(
        saw_not_ready,
        "/readyz never said the connection was taken over"
    );
    // With a back-off of 1, 2, 4, 8, 16 s after each takeover: about ten in 30 s, not
    // hundreds a second.
    assert!(
        (2.0..=16.0).contains(&takeovers),
        "{takeovers} takeovers in {window:?}"
    );
    // One error per episode and process.
    assert!(
        errors.0 <= 1 && errors.1 <= 1 && errors.0 + errors.1 >= 1,
        "{errors:?}"
    );
    for (before, after) in [(rss_start.0, rss_end.0), (rss_start.1, rss_end.1)] {
        assert!(after <= before + 8 * 1024, "RSS {before} kB -> {after} kB");
    }
    // SIGTERM while fighting: both go within the grace period.
    let took = (first.terminate(), second.terminate());
    println!("SIGTERM while fighting a twin: exited after {took:?}");
    assert!(took.0 <= GRACE && took.1 <= GRACE, "{took:?}");
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
