//! Central end to end: a real Mosquitto as the central broker, the fogs played by a
//! test client publishing directly on `regions/{r}/up/…` (bridging is tested
//! elsewhere), central exactly as `central` runs it.

use std::net::SocketAddr;
use std::time::Duration;

use central::{Central, Config};
use protocol::fog::{
    Aggregate, AggregateStation, FogMessage, Handoff, HandoffReply, RerouteReply, RerouteRequest,
    Revoked,
};
use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationRef};
use serde_json::Value;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const KM_PER_DEG: f64 = 111.195;
const LAT0: f64 = -12.25;
const LON0: f64 = -38.95;
/// Central's handoff timeout in these tests, unless a test sets another.
const HANDOFF_TIMEOUT_MS: u64 = 300;
/// Every down-direction message central publishes.
const DOWN: &str = "regions/+/down/#";

struct World {
    broker: Mosquitto,
    central: Option<Central>,
    shutdown: CancellationToken,
    http: SocketAddr,
    /// Plays every fog: publishes on `regions/{r}/up/…`, hears `regions/+/down/#`.
    fogs: TestClient,
    client: reqwest::Client,
    /// Aggregate sequence numbers per region.
    seq: std::collections::HashMap<String, u64>,
}

fn config(url: &str) -> Config {
    let mut c = Config::new(url);
    c.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.handoff_timeout_ms = HANDOFF_TIMEOUT_MS;
    c
}

async fn world() -> World {
    world_with(|_| {}).await
}

async fn world_with(adjust: impl FnOnce(&mut Config)) -> World {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).expect("mosquitto");
    let fogs = TestClient::connect(&broker.url(), "fogs").await.unwrap();
    fogs.subscribe(DOWN, 1).await.unwrap();
    let mut c = config(&broker.url());
    adjust(&mut c);
    start_central(broker, fogs, c).await
}

async fn start_central(broker: Mosquitto, fogs: TestClient, config: Config) -> World {
    let shutdown = CancellationToken::new();
    let central = tokio::time::timeout(T, central::start(config, shutdown.clone()))
        .await
        .expect("central connects in time")
        .expect("central starts");
    let http = central.http_addr.expect("HTTP address");
    World {
        broker,
        central: Some(central),
        shutdown,
        http,
        fogs,
        client: reqwest::Client::new(),
        seq: Default::default(),
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn station(id: &str, km_north: f64, wait_s: u32) -> AggregateStation {
    AggregateStation {
        station_id: id.into(),
        lat: LAT0 + km_north / KM_PER_DEG,
        lon: LON0,
        chargers: 2,
        power_kw: 50.0,
        occupied: 0,
        queue: 0,
        reservations: 0,
        predicted_wait_s: wait_s,
    }
}

fn aggregate(region: &str, seq: u64, ts_ms: u64, best: Vec<AggregateStation>) -> Aggregate {
    Aggregate {
        v: 1,
        region: region.into(),
        seq,
        ts_ms,
        stations: best.len() as u32,
        stations_in_service: best.len() as u32,
        chargers: 2 * best.len() as u32,
        chargers_free: 2 * best.len() as u32,
        queued: 0,
        reservations: 0,
        min_wait_s: best.iter().map(|s| s.predicted_wait_s).min(),
        max_wait_s: None,
        outline: vec![],
        best,
        saturated_requests: 0,
        requests_total: 0,
    }
}

fn charge_request(id: &str) -> ChargeRequest {
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

fn reroute_request(id: &str, origin: &str, local_best: Option<f64>) -> RerouteRequest {
    RerouteRequest {
        v: 1,
        reroute_id: id.into(),
        origin_region: origin.into(),
        vehicle_id: "car-1".into(),
        request: charge_request("r-1"),
        local_best_total_s: local_best,
        deadline_ms: serverkit::clock::wall_ms() + 10_000,
    }
}

/// What a target fog answers when it takes the vehicle.
fn rerouted(region: &str, station_id: &str) -> Recommendation {
    Recommendation {
        v: 1,
        request_id: "r-1".into(),
        status: RecommendationStatus::Rerouted,
        station: Some(StationRef {
            station_id: station_id.into(),
            region: region.into(),
            lat: LAT0,
            lon: LON0,
        }),
        distance_km: Some(6.5),
        eta_s: Some(585),
        wait_s: Some(0),
        charge_s: Some(2300),
        reservation_id: Some(format!("{region}-0001")),
        expires_ms: Some(serverkit::clock::wall_ms() + 1_200_000),
        reason: None,
        served_by: Some(region.into()),
        data_age_ms: Some(10),
        revised: false,
    }
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The value of one metric series (`name{labels}` exactly as exposed), or 0.
    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    async fn wait_metric(&self, series: &str, value: f64) {
        wait_until(&format!("{series} = {value}"), T, POLL, || async {
            self.metric(series).await == value
        })
        .await
        .unwrap();
    }

    /// Publishes the next aggregate of `region` (retained, as a fog does), waits
    /// until central shows it and returns the region as `/api/regions` shows it.
    async fn publish_aggregate(&mut self, region: &str, best: Vec<AggregateStation>) -> Value {
        let seq = self.seq.entry(region.to_owned()).or_insert(0);
        *seq += 1;
        let a = aggregate(region, *seq, serverkit::clock::wall_ms(), best);
        self.publish_aggregate_raw(&a).await;
        self.wait_region_seq(region, a.seq).await
    }

    async fn publish_aggregate_raw(&self, a: &Aggregate) {
        self.fogs
            .publish_json(&FogMessage::Aggregate.central_topic(&a.region), a, 1, true)
            .await
            .unwrap();
    }

    async fn region(&self, region: &str) -> Option<Value> {
        let regions = self.get_json("/api/regions").await;
        regions
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == region)
            .cloned()
    }

    async fn wait_region_seq(&self, region: &str, seq: u64) -> Value {
        wait_until(&format!("{region} shows seq {seq}"), T, POLL, || async {
            self.region(region)
                .await
                .filter(|r| r["aggregate"]["seq"] == seq)
        })
        .await
        .unwrap()
    }

    async fn send_reroute(&self, origin: &str, req: &RerouteRequest) {
        self.fogs
            .publish_json(&FogMessage::Reroute.central_topic(origin), req, 1, false)
            .await
            .unwrap();
    }

    /// Waits for central's handoff to `region` and checks it.
    async fn expect_handoff(&mut self, region: &str, reroute_id: &str) -> Handoff {
        let topic = FogMessage::Handoff.central_topic(region);
        let h: Handoff = self.fogs.wait_for_json(&topic, T).await.unwrap();
        protocol::Validate::validate(&h).expect("a valid handoff");
        assert_eq!(h.reroute_id, reroute_id);
        h
    }

    /// Answers a handoff as the target fog would.
    async fn answer_handoff(&self, region: &str, h: &Handoff, accept: bool) {
        let reply = HandoffReply {
            v: 1,
            handoff_id: h.handoff_id.clone(),
            region: region.into(),
            accepted: accept,
            recommendation: accept.then(|| rerouted(region, &format!("{region}-s1"))),
            reason: (!accept).then(|| "no station free".to_owned()),
        };
        self.fogs
            .publish_json(
                &FogMessage::HandoffReply.central_topic(region),
                &reply,
                1,
                false,
            )
            .await
            .unwrap();
    }

    async fn expect_reply(&mut self, origin: &str) -> RerouteReply {
        let topic = FogMessage::RerouteReply.central_topic(origin);
        let r: RerouteReply = self.fogs.wait_for_json(&topic, T).await.unwrap();
        protocol::Validate::validate(&r).expect("a valid reroute reply");
        r
    }

    /// Three regions around the origin `a`: `b` 5 km away, `c` 8 km away, `far` out of
    /// range; all free.
    async fn neighbours(&mut self) {
        self.publish_aggregate("a", vec![station("a1", 0.1, 3000)])
            .await;
        self.publish_aggregate("b", vec![station("b1", 5.0, 0)])
            .await;
        self.publish_aggregate("c", vec![station("c1", 8.0, 0)])
            .await;
        self.publish_aggregate("far", vec![station("far1", 500.0, 0)])
            .await;
    }
}

#[tokio::test]
async fn starts_ready_and_healthy() {
    let w = world().await;
    assert_eq!(w.get("/healthz").await.0, 200);
    let (status, body) = w.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.get_json("/api/regions").await, serde_json::json!([]));
}

#[tokio::test]
async fn aggregate_is_visible_with_seq_and_data_age() {
    let w = world().await;
    let ts = serverkit::clock::wall_ms();
    let a = aggregate("north", 7, ts, vec![station("n1", 1.0, 120)]);
    w.publish_aggregate_raw(&a).await;
    let r = w.wait_region_seq("north", 7).await;
    assert_eq!(r["aggregate"]["ts_ms"], ts);
    assert_eq!(r["aggregate"]["best"][0]["station_id"], "n1");
    assert_eq!(r["stale"], false);
    assert_eq!(r["saturated"], false);
    let age = r["data_age_ms"].as_u64().expect("data_age_ms");
    assert!(age < 6000, "fresh data, got age {age}");
    // Data age grows with time since reception.
    wait_until("data age grows", T, POLL, || async {
        w.region("north").await.unwrap()["data_age_ms"]
            .as_u64()
            .unwrap()
            > age
    })
    .await
    .unwrap();

    // An older copy (lower seq, older ts) is ignored ...
    w.publish_aggregate_raw(&aggregate("north", 6, ts - 1000, vec![]))
        .await;
    w.wait_metric("central_aggregates_ignored_total", 1.0).await;
    assert_eq!(w.region("north").await.unwrap()["aggregate"]["seq"], 7);
    // ... a lower seq with a newer ts is the fog restarting.
    w.publish_aggregate_raw(&aggregate("north", 1, ts + 1000, vec![]))
        .await;
    let r = w.wait_region_seq("north", 1).await;
    assert_eq!(r["saturated"], true, "nothing in service is saturated");
    assert_eq!(w.metric("central_aggregates_total").await, 2.0);
}

#[tokio::test]
async fn retained_aggregates_from_before_the_start_are_loaded() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).expect("mosquitto");
    let fogs = TestClient::connect(&broker.url(), "fogs").await.unwrap();
    fogs.subscribe(DOWN, 1).await.unwrap();
    let a = aggregate("east", 3, serverkit::clock::wall_ms(), vec![]);
    fogs.publish_json(&FogMessage::Aggregate.central_topic("east"), &a, 1, true)
        .await
        .unwrap();
    let c = config(&broker.url());
    let w = start_central(broker, fogs, c).await;
    w.wait_region_seq("east", 3).await;
    // Clearing the retained aggregate withdraws the region.
    w.fogs
        .publish(&FogMessage::Aggregate.central_topic("east"), "", 1, true)
        .await
        .unwrap();
    wait_until("east is withdrawn", T, POLL, || async {
        w.region("east").await.is_none()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_silent_region_becomes_stale_and_fresh_again() {
    let mut w = world_with(|c| c.stale_after_ms = 1000).await;
    w.publish_aggregate("quiet", vec![station("q1", 1.0, 0)])
        .await;
    let r = wait_until("quiet is stale", T, POLL, || async {
        w.region("quiet").await.filter(|r| r["stale"] == true)
    })
    .await
    .unwrap();
    assert!(r["data_age_ms"].as_u64().unwrap() > 1000);
    w.wait_metric("central_regions_stale", 1.0).await;
    let age = w
        .metric("central_region_data_age_seconds{region=\"quiet\"}")
        .await;
    assert!(age > 1.0, "data age gauge {age}");
    // A stale region is not offered for reroutes.
    w.send_reroute("a", &reroute_request("rr-stale", "a", None))
        .await;
    let reply = w.expect_reply("a").await;
    assert!(!reply.ok);
    assert!(
        reply.reason.as_deref().unwrap().contains("fresh data"),
        "{reply:?}"
    );
    // A new aggregate makes it fresh again.
    let r = w
        .publish_aggregate("quiet", vec![station("q1", 1.0, 0)])
        .await;
    assert_eq!(r["stale"], false);
}

#[tokio::test]
async fn best_stations_are_ranked_by_estimated_total_and_bad_params_get_400() {
    let mut w = world().await;
    // north: near but long waits; south: a bit farther, free; east: out of range.
    w.publish_aggregate(
        "north",
        vec![station("n-busy", 0.5, 2400), station("n-ok", 1.0, 600)],
    )
    .await;
    w.publish_aggregate("south", vec![station("s-free", 3.0, 0)])
        .await;
    w.publish_aggregate("east", vec![station("e-far", 400.0, 0)])
        .await;

    let body = w
        .get_json(&format!("/api/stations/best?lat={LAT0}&lon={LON0}"))
        .await;
    let ids: Vec<&str> = body["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["station_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s-free", "n-ok", "n-busy"]);
    let first = &body["stations"][0];
    assert_eq!(first["region"], "south");
    let total = first["total_s"].as_f64().unwrap();
    let parts = first["drive_s"].as_f64().unwrap()
        + first["wait_s"].as_f64().unwrap()
        + first["charge_s"].as_f64().unwrap();
    assert!((total - parts).abs() < 1e-6);
    assert_eq!(body["vehicle"]["battery_kwh"], 60.0);

    // k limits the answer; a vehicle with a big battery reaches east too.
    let body = w
        .get_json(&format!("/api/stations/best?lat={LAT0}&lon={LON0}&k=1"))
        .await;
    assert_eq!(body["stations"].as_array().unwrap().len(), 1);
    let body = w
        .get_json(&format!(
            "/api/stations/best?lat={LAT0}&lon={LON0}&soc=1&battery_kwh=200&k=10"
        ))
        .await;
    assert_eq!(body["stations"].as_array().unwrap().len(), 4);

    for (query, needle) in [
        ("lon=1", "lat is required"),
        ("lat=abc&lon=1", "lat must be a number"),
        ("lat=95&lon=1", "lat"),
        ("lat=1&lon=1&soc=2", "soc"),
        ("lat=1&lon=1&kwh_per_km=-1", "kwh_per_km"),
        ("lat=1&lon=1&k=0", "k must be"),
        ("lat=1&lon=1&colour=red", "unknown parameter"),
    ] {
        let (status, body) = w.get(&format!("/api/stations/best?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn reroute_goes_to_the_best_region_that_accepts() {
    let mut w = world().await;
    w.neighbours().await;
    w.send_reroute("a", &reroute_request("rr-1", "a", Some(5000.0)))
        .await;
    let h = w.expect_handoff("b", "rr-1").await;
    assert_eq!(h.origin_region, "a");
    assert_eq!(h.vehicle_id, "car-1");
    assert_eq!(h.max_total_s, Some(5000.0));
    assert_eq!(h.request, charge_request("r-1"));
    w.answer_handoff("b", &h, true).await;

    let reply = w.expect_reply("a").await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.reroute_id, "rr-1");
    assert_eq!(reply.tried, ["b"]);
    // B's recommendation, passed on unchanged.
    let rec = reply.recommendation.expect("a recommendation");
    assert_eq!(rec.status, RecommendationStatus::Rerouted);
    assert_eq!(rec.station.as_ref().unwrap().station_id, "b-s1");
    assert_eq!(rec.station.as_ref().unwrap().region, "b");
    assert_eq!(rec.reservation_id.as_deref(), Some("b-0001"));
    assert_eq!(rec.served_by.as_deref(), Some("b"));
    // Nobody else was asked.
    w.fogs
        .expect_silence(
            &FogMessage::Handoff.central_topic("+"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    w.wait_metric("central_reroutes_succeeded_total", 1.0).await;
    assert_eq!(w.metric("central_reroutes_requested_total").await, 1.0);
    assert_eq!(
        w.metric("central_handoffs_total{outcome=\"accepted\"}")
            .await,
        1.0
    );
    assert_eq!(w.metric("central_handoff_seconds_count").await, 1.0);
}

#[tokio::test]
async fn a_refusal_falls_back_to_the_next_region() {
    let mut w = world().await;
    w.neighbours().await;
    w.send_reroute("a", &reroute_request("rr-2", "a", None))
        .await;
    let hb = w.expect_handoff("b", "rr-2").await;
    w.answer_handoff("b", &hb, false).await;
    let hc = w.expect_handoff("c", "rr-2").await;
    assert_ne!(hb.handoff_id, hc.handoff_id, "a fresh id per handoff");
    w.answer_handoff("c", &hc, true).await;
    let reply = w.expect_reply("a").await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.tried, ["b", "c"]);
    assert_eq!(
        reply.recommendation.unwrap().station.unwrap().station_id,
        "c-s1"
    );
    w.wait_metric("central_handoffs_total{outcome=\"refused\"}", 1.0)
        .await;
}

#[tokio::test]
async fn a_silent_region_times_out_and_the_next_one_is_asked() {
    let mut w = world().await;
    w.neighbours().await;
    let started = std::time::Instant::now();
    w.send_reroute("a", &reroute_request("rr-3", "a", None))
        .await;
    let hb = w.expect_handoff("b", "rr-3").await;
    // b says nothing; c is asked after the handoff timeout.
    let hc = w.expect_handoff("c", "rr-3").await;
    assert!(
        started.elapsed() >= Duration::from_millis(HANDOFF_TIMEOUT_MS),
        "c asked after {:?}",
        started.elapsed()
    );
    w.answer_handoff("c", &hc, true).await;
    let reply = w.expect_reply("a").await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.tried, ["b", "c"]);
    w.wait_metric("central_handoffs_total{outcome=\"timeout\"}", 1.0)
        .await;
    // b's late acceptance is counted and dropped; it changes nothing.
    w.answer_handoff("b", &hb, true).await;
    w.wait_metric("central_handoff_replies_unmatched_total", 1.0)
        .await;
    w.fogs
        .expect_silence(
            &FogMessage::RerouteReply.central_topic("a"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn when_every_region_refuses_or_is_silent_the_reply_says_so() {
    let mut w = world().await;
    w.neighbours().await;
    w.send_reroute("a", &reroute_request("rr-4", "a", None))
        .await;
    let hb = w.expect_handoff("b", "rr-4").await;
    w.answer_handoff("b", &hb, false).await;
    w.expect_handoff("c", "rr-4").await;
    let reply = w.expect_reply("a").await;
    assert!(!reply.ok);
    assert_eq!(reply.tried, ["b", "c"]);
    let reason = reply.reason.unwrap();
    assert!(reason.contains("refused or timed out"), "{reason}");
    assert!(reason.contains("b refused (no station free)"), "{reason}");
    assert!(reason.contains("c did not answer"), "{reason}");
    w.wait_metric("central_reroutes_failed_total{reason=\"refused\"}", 1.0)
        .await;
}

#[tokio::test]
async fn no_region_in_range_is_a_failure_with_a_reason() {
    let mut w = world().await;
    w.publish_aggregate("a", vec![station("a1", 0.1, 3000)])
        .await;
    w.publish_aggregate("far", vec![station("far1", 500.0, 0)])
        .await;
    w.send_reroute("a", &reroute_request("rr-5", "a", None))
        .await;
    let reply = w.expect_reply("a").await;
    assert!(!reply.ok);
    assert!(reply.tried.is_empty());
    assert!(reply.recommendation.is_none());
    let reason = reply.reason.unwrap();
    assert!(reason.starts_with("no region in range"), "{reason}");
    // The origin learns how far the nearest region that could take vehicles is, so
    // that it need not ask for like vehicles for a while.
    let km = reply.no_region_within_km.expect("a hint");
    assert!((km - 500.0).abs() < 1.0, "{km}");
    assert_eq!(reply.hold_ms, Some(2000));
    w.fogs
        .expect_silence(
            &FogMessage::Handoff.central_topic("+"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    w.wait_metric("central_reroutes_failed_total{reason=\"no_region\"}", 1.0)
        .await;
}

#[tokio::test]
async fn only_regions_beating_the_local_best_are_asked() {
    let mut w = world().await;
    w.neighbours().await;
    // b and c both take over 45 min (charging alone ≈ 37 min); nobody beats 20 min.
    w.send_reroute("a", &reroute_request("rr-6", "a", Some(1200.0)))
        .await;
    let reply = w.expect_reply("a").await;
    assert!(!reply.ok);
    let reason = reply.reason.unwrap();
    assert!(reason.contains("beats the local best"), "{reason}");
    assert!(reply.tried.is_empty());
}

#[tokio::test]
async fn the_deadline_stops_the_search() {
    let mut w = world_with(|c| c.handoff_timeout_ms = 5000).await;
    w.neighbours().await;
    let mut req = reroute_request("rr-7", "a", None);
    req.deadline_ms = serverkit::clock::wall_ms() + 500;
    w.send_reroute("a", &req).await;
    w.expect_handoff("b", "rr-7").await;
    // b is silent; the deadline (not the 5 s timeout) ends the search before c.
    let reply = w.expect_reply("a").await;
    // Well before the 5 s handoff timeout would have ended the wait.
    assert!(serverkit::clock::wall_ms() < req.deadline_ms + 2000);
    assert!(!reply.ok);
    assert_eq!(reply.tried, ["b"]);
    assert!(
        reply
            .reason
            .as_deref()
            .unwrap()
            .starts_with("deadline reached"),
        "{reply:?}"
    );
    w.fogs
        .expect_silence(
            &FogMessage::Handoff.central_topic("c"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_duplicate_reroute_id_starts_no_second_reroute() {
    let mut w = world().await;
    w.neighbours().await;
    let req = reroute_request("rr-8", "a", None);
    w.send_reroute("a", &req).await;
    w.send_reroute("a", &req).await;
    let h = w.expect_handoff("b", "rr-8").await;
    w.wait_metric("central_reroutes_duplicate_total", 1.0).await;
    w.fogs
        .expect_silence(
            &FogMessage::Handoff.central_topic("+"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    w.answer_handoff("b", &h, true).await;
    let reply = w.expect_reply("a").await;
    assert!(reply.ok);
    w.fogs
        .expect_silence(
            &FogMessage::RerouteReply.central_topic("a"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert_eq!(w.metric("central_reroutes_requested_total").await, 1.0);

    // Asked again after it finished: the same answer again, still no new handoff.
    w.send_reroute("a", &req).await;
    let again = w.expect_reply("a").await;
    assert_eq!(again, reply);
    w.fogs
        .expect_silence(
            &FogMessage::Handoff.central_topic("+"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    // The same id from another origin is another reroute.
    let mut other = req.clone();
    other.origin_region = "c".into();
    w.send_reroute("c", &other).await;
    w.expect_handoff("b", "rr-8").await;
}

#[tokio::test]
async fn concurrent_reroutes_do_not_wait_for_each_other() {
    let mut w = world().await;
    w.neighbours().await;
    // rr-x goes to b, which stays silent for now; rr-y from c goes to b as well.
    w.send_reroute("a", &reroute_request("rr-x", "a", None))
        .await;
    let hx = w.expect_handoff("b", "rr-x").await;
    let mut y = reroute_request("rr-y", "c", None);
    y.origin_region = "c".into();
    w.send_reroute("c", &y).await;
    let hy = w.expect_handoff("b", "rr-y").await;
    // Answered in the opposite order.
    w.answer_handoff("b", &hy, true).await;
    let ry = w.expect_reply("c").await;
    assert!(ry.ok && ry.reroute_id == "rr-y");
    w.answer_handoff("b", &hx, true).await;
    let rx = w.expect_reply("a").await;
    assert!(rx.ok && rx.reroute_id == "rr-x");
}

#[tokio::test]
async fn bad_payloads_are_counted_and_central_keeps_working() {
    let mut w = world().await;
    let up = |m: FogMessage, r: &str| m.central_topic(r);
    let bad: Vec<(String, Vec<u8>)> = vec![
        (up(FogMessage::Aggregate, "a"), b"not json".to_vec()),
        (up(FogMessage::Aggregate, "a"), br#"{"v":2}"#.to_vec()),
        (
            up(FogMessage::Aggregate, "a"),
            serde_json::to_vec(&aggregate("other", 1, 1, vec![])).unwrap(),
        ),
        (up(FogMessage::HandoffReply, "b"), b"{}".to_vec()),
        ("regions/a/up/nonsense".into(), b"{}".to_vec()),
        ("regions/bad region/up/aggregate".into(), b"{}".to_vec()),
        (up(FogMessage::Reroute, "a"), vec![0xff; 100_000]),
    ];
    for (topic, payload) in &bad {
        w.fogs
            .publish(topic, payload.clone(), 1, false)
            .await
            .unwrap();
    }
    // A reroute request that names itself but is invalid gets an answer at once.
    let mut broken = serde_json::to_value(reroute_request("rr-bad", "a", None)).unwrap();
    broken["request"]["soc"] = serde_json::json!(7);
    w.fogs
        .publish_json(&up(FogMessage::Reroute, "a"), &broken, 1, false)
        .await
        .unwrap();
    let reply = w.expect_reply("a").await;
    assert_eq!(reply.reroute_id, "rr-bad");
    assert!(!reply.ok);
    assert!(
        reply
            .reason
            .as_deref()
            .unwrap()
            .starts_with("invalid reroute request"),
        "{reply:?}"
    );

    w.wait_metric("central_invalid_messages_total{kind=\"aggregate\"}", 3.0)
        .await;
    w.wait_metric("central_invalid_messages_total{kind=\"topic\"}", 2.0)
        .await;
    w.wait_metric(
        "central_invalid_messages_total{kind=\"handoff_reply\"}",
        1.0,
    )
    .await;
    w.wait_metric("central_invalid_messages_total{kind=\"reroute\"}", 2.0)
        .await;
    // Still working.
    w.publish_aggregate("a", vec![station("a1", 0.1, 0)]).await;
    assert_eq!(w.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn metrics_are_exposed() {
    let mut w = world().await;
    w.publish_aggregate("north", vec![station("n1", 1.0, 0)])
        .await;
    let (status, text) = w.get("/metrics").await;
    assert_eq!(status, 200);
    for (name, kind) in [
        ("central_aggregates", "counter"),
        ("central_aggregates_ignored", "counter"),
        ("central_invalid_messages", "counter"),
        ("central_reroutes_requested", "counter"),
        ("central_reroutes_duplicate", "counter"),
        ("central_reroutes_succeeded", "counter"),
        ("central_reroutes_failed", "counter"),
        ("central_handoffs", "counter"),
        ("central_handoff_replies_unmatched", "counter"),
        ("central_handoff_seconds", "histogram"),
        ("central_reroute_seconds", "histogram"),
        ("central_regions", "gauge"),
        ("central_regions_stale", "gauge"),
        ("central_regions_saturated", "gauge"),
        ("central_region_data_age_seconds", "gauge"),
        ("central_mqtt_reconnects", "counter"),
    ] {
        let line = format!("# TYPE {name} {kind}");
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    for sample in [
        "central_aggregates_total 1",
        "central_regions 1",
        "central_regions_stale 0",
        "central_regions_saturated 0",
        "central_reroutes_requested_total 0",
        "central_handoff_seconds_count 0",
        "central_handoffs_total{outcome=\"timeout\"} 0",
        "central_reroutes_failed_total{reason=\"no_region\"} 0",
        "central_invalid_messages_total{kind=\"aggregate\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "missing {sample:?} in\n{text}"
        );
    }
    assert!(
        w.metric("central_region_data_age_seconds{region=\"north\"}")
            .await
            >= 0.0
    );
    assert!(text.contains("central_region_data_age_seconds{region=\"north\"} "));
}

#[tokio::test]
async fn after_a_broker_restart_central_reconnects_and_serves_what_was_queued() {
    let mut w = world().await;
    w.neighbours().await;
    // A graceful stop: the broker saves central's persistent session.
    w.broker.stop().unwrap();
    wait_until("readyz says not ready", T, POLL, || async {
        w.get("/readyz").await.0 == 503
    })
    .await
    .unwrap();
    w.broker.restart().unwrap();
    // The fogs' client had a clean session: connect it again.
    let fogs = TestClient::connect(&w.broker.url(), "fogs-2")
        .await
        .unwrap();
    fogs.subscribe(DOWN, 1).await.unwrap();
    w.fogs = fogs;
    // Published at once: queued in central's session if central is not back yet.
    w.send_reroute("a", &reroute_request("rr-9", "a", None))
        .await;
    let h = w.expect_handoff("b", "rr-9").await;
    w.answer_handoff("b", &h, true).await;
    assert!(w.expect_reply("a").await.ok);
    wait_until("readyz says ready", T, POLL, || async {
        w.get("/readyz").await.0 == 200
    })
    .await
    .unwrap();
    w.wait_metric("central_mqtt_reconnects_total", 1.0).await;
}

#[tokio::test]
async fn shutdown_is_clean() {
    let mut w = world().await;
    assert_eq!(w.get("/readyz").await.0, 200);
    w.shutdown.cancel();
    let central = w.central.take().unwrap();
    tokio::time::timeout(T, central.wait())
        .await
        .expect("central stops in time")
        .expect("central stops cleanly");
}

#[tokio::test]
async fn central_tells_every_region_it_is_there_and_which_regions_are_open() {
    let mut w = world().await;
    w.publish_aggregate("a", vec![station("a1", 0.1, 3000)])
        .await;
    w.publish_aggregate("b", vec![station("b1", 5.0, 0)]).await;
    let topic = FogMessage::Heartbeat.central_topic("a");
    let first: protocol::fog::CentralHeartbeat = w.fogs.wait_for_json(&topic, T).await.unwrap();
    let mut hb = first.clone();
    // "a" is saturated (3000 s over the 1800 s limit), "b" is open.
    while hb.open_regions != vec!["b".to_string()] {
        hb = w.fogs.wait_for_json(&topic, T).await.unwrap();
    }
    assert!(hb.period_ms > 0);
    // These aggregates carry no outline: no distance to tell.
    assert_eq!(hb.nearest_open_km, None);
    assert_eq!(hb.started_ms, first.started_ms);
    assert!(hb.seq > first.seq || hb == first);
    // Every known region gets it, also the open one.
    let hb_b: protocol::fog::CentralHeartbeat = w
        .fogs
        .wait_for_json(&FogMessage::Heartbeat.central_topic("b"), T)
        .await
        .unwrap();
    assert_eq!(hb_b.started_ms, first.started_ms);
}

#[tokio::test]
async fn a_revoked_handoff_is_passed_on_to_the_origin() {
    let mut w = world().await;
    let revoked = Revoked {
        v: 1,
        reroute_id: "a-rr-1".into(),
        handoff_id: "h-1".into(),
        origin_region: "a".into(),
        region: "b".into(),
        vehicle_id: "car-1".into(),
        reservation_id: "b-77".into(),
        reason: "station CP-b could not hold reservation b-77 (Occupied)".into(),
        revised: None,
    };
    let up = FogMessage::HandoffRevoked.central_topic("b");
    // From another region than the one that held the reservation: refused.
    w.fogs
        .publish_json(
            &FogMessage::HandoffRevoked.central_topic("c"),
            &revoked,
            1,
            false,
        )
        .await
        .unwrap();
    w.wait_metric(
        r#"central_invalid_messages_total{kind="handoff_revoked"}"#,
        1.0,
    )
    .await;
    w.fogs.publish(&up, b"{\"v\":1}", 1, false).await.unwrap();
    w.wait_metric(
        r#"central_invalid_messages_total{kind="handoff_revoked"}"#,
        2.0,
    )
    .await;
    w.fogs.publish_json(&up, &revoked, 1, false).await.unwrap();
    let down = FogMessage::RerouteRevoked.central_topic("a");
    let got: Revoked = w.fogs.wait_for_json(&down, T).await.unwrap();
    assert_eq!(got, revoked);
    w.wait_metric(r#"central_handoffs_total{outcome="revoked"}"#, 1.0)
        .await;
}
