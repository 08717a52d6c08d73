//! Regions bridged to central, end to end: a central Mosquitto and three regional ones
//! bridged with the generated configs, three fog servers and central — all real.
//!
//! The city: three bands side by side along the equator, west | middle | east, each
//! 0.1° (~11 km) wide.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::api::RegionView;
use protocol::fog::{Aggregate, AggregateStation, FogMessage, Handoff, HandoffReply};
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, ReservationAction, ReservationUpdate,
    StationStatus, topics,
};
use serde_json::Value;
use testkit::city::{City, CitySpec};
use testkit::{TestClient, wait_until};

const T: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

use testkit::messages::busy_station as status;

fn request(id: &str, lon: f64) -> ChargeRequest {
    testkit::messages::request(id, 0.0, lon, 0.3)
}

/// A device client on one region's broker, hearing its vehicles' recommendations.
async fn devices(city: &City, region: &str) -> TestClient {
    let c = TestClient::connect(&city.broker(region).url(), &format!("devices-{region}"))
        .await
        .unwrap();
    c.subscribe(&format!("ev/{region}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    c
}

async fn publish_station(c: &TestClient, region: &str, s: &StationStatus) {
    c.publish_json(&topics::station_status(region, &s.station_id), s, 1, true)
        .await
        .unwrap();
}

async fn ask(
    c: &mut TestClient,
    region: &str,
    vehicle: &str,
    req: &ChargeRequest,
) -> Recommendation {
    c.publish_json(&topics::request(region, vehicle), req, 1, false)
        .await
        .unwrap();
    c.wait_for_json(&topics::recommendation(region, vehicle), T)
        .await
        .unwrap()
}

/// Waits until central's view of `region` satisfies `check`.
async fn wait_region(
    city: &City,
    region: &str,
    what: &str,
    check: impl Fn(&RegionView) -> bool,
) -> RegionView {
    wait_until(what, T, POLL, || async {
        city.regions()
            .await
            .ok()?
            .remove(region)
            .filter(|v| check(v))
    })
    .await
    .unwrap()
}

fn lists_station(v: &RegionView, id: &str) -> bool {
    v.aggregate.best.iter().any(|s| s.station_id == id)
}

/// West saturated (one charger, long queue), middle free just across the border.
async fn saturated_west(city: &City) -> (TestClient, TestClient) {
    let west = devices(city, "west").await;
    let middle = devices(city, "middle").await;
    publish_station(&west, "west", &status("west-busy", 0.09, 1, 1, 6)).await;
    publish_station(&middle, "middle", &status("middle-free", 0.11, 2, 0, 0)).await;
    wait_region(city, "west", "west is saturated", |v| v.saturated).await;
    wait_region(city, "middle", "middle lists its free station", |v| {
        lists_station(v, "middle-free")
    })
    .await;
    // And west has heard from central that middle can take vehicles.
    west_hears_middle_is_open(city).await;
    (west, middle)
}

async fn west_hears_middle_is_open(city: &City) {
    wait_until("west hears that middle is open", T, POLL, || async {
        city.fog("west")
            .get_json::<Value>("/api/region")
            .await
            .is_ok_and(|v| {
                v["central_open_regions"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|id| id == "middle"))
            })
    })
    .await
    .unwrap();
}

async fn reservations(city: &City, region: &str) -> Vec<Value> {
    city.fog(region)
        .get_json("/api/reservations")
        .await
        .unwrap()
}

#[tokio::test]
async fn aggregates_reach_central_and_device_traffic_does_not() {
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let mut spy = TestClient::connect(&city.central_broker.url(), "spy")
        .await
        .unwrap();
    spy.subscribe("#", 1).await.unwrap();
    let west = devices(&city, "west").await;
    publish_station(&west, "west", &status("west-1", 0.05, 4, 1, 0)).await;

    let first = wait_region(&city, "west", "west's station in the aggregate", |v| {
        lists_station(v, "west-1")
    })
    .await;
    let seq = first.aggregate.seq;
    assert_eq!(first.aggregate.chargers, 4);
    assert_eq!(first.aggregate.chargers_free, 3);
    assert_eq!(first.aggregate.outline.len(), 4);
    assert!(first.data_age_ms < 3 * city.spec.aggregate_ms);
    wait_region(&city, "west", "a newer aggregate", |v| {
        v.aggregate.seq > seq
    })
    .await;

    // Telemetry, a request and its answer on west's device topics: none of it crosses.
    let mut west = west;
    west.publish(
        &topics::telemetry("west", "car-1"),
        &br#"{"v":1,"lat":0,"lon":0.05,"soc":0.5}"#[..],
        1,
        false,
    )
    .await
    .unwrap();
    let answer = ask(&mut west, "west", "car-1", &request("r-1", 0.05)).await;
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    let seen = spy
        .collect_for(Duration::from_millis(2 * city.spec.aggregate_ms))
        .await
        .unwrap();
    assert!(!seen.is_empty());
    for m in &seen {
        // Only the fog's latest-value messages (aggregates and station lists) and
        // central's heartbeat to the regions.
        assert!(
            m.topic().starts_with("regions/")
                && (m.topic().ends_with("/up/aggregate")
                    || m.topic().ends_with("/up/stations")
                    || m.topic().ends_with("/down/heartbeat")),
            "unexpected on the central broker: {}",
            m.topic()
        );
    }
}

#[tokio::test]
async fn a_saturated_region_reroutes_to_a_free_neighbour_that_holds_the_reservation() {
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let (mut west, middle) = saturated_west(&city).await;
    // Count everything on the central broker and on west's broker meanwhile.
    let mut central_spy = TestClient::connect(&city.central_broker.url(), "spy-c")
        .await
        .unwrap();
    central_spy
        .subscribe("regions/+/up/reroute", 1)
        .await
        .unwrap();
    central_spy.subscribe("regions/+/down/#", 1).await.unwrap();
    central_spy
        .subscribe("regions/+/up/handoff-reply", 1)
        .await
        .unwrap();
    let mut west_spy = TestClient::connect(&city.broker("west").url(), "spy-w")
        .await
        .unwrap();
    west_spy.subscribe("fog/#", 1).await.unwrap();
    west_spy.subscribe("regions/#", 1).await.unwrap();

    let started = Instant::now();
    let answer = ask(&mut west, "west", "car-1", &request("r-1", 0.08)).await;
    let rtt = started.elapsed();
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
    assert_eq!(answer.request_id, "r-1");
    let station = answer.station.clone().unwrap();
    assert_eq!(
        (station.station_id.as_str(), station.region.as_str()),
        ("middle-free", "middle")
    );
    let reservation_id = answer.reservation_id.clone().unwrap();
    assert!(reservation_id.starts_with("middle-"), "{reservation_id}");
    eprintln!("cross-region reroute round trip: {rtt:?}");

    // Middle's fog holds it; west holds nothing for the vehicle.
    let held = reservations(&city, "middle").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["reservation_id"], reservation_id.as_str());
    assert_eq!(held[0]["vehicle_id"], "car-1");
    assert!(reservations(&city, "west").await.is_empty());

    // The vehicle arrives, telling the region that holds the reservation.
    let arrived = ReservationUpdate {
        v: 1,
        reservation_id,
        action: ReservationAction::Arrived,
    };
    middle
        .publish_json(&topics::reservation("middle", "car-1"), &arrived, 1, false)
        .await
        .unwrap();
    wait_until("middle releases the reservation", T, POLL, || async {
        reservations(&city, "middle").await.is_empty()
    })
    .await
    .unwrap();

    // For comparison, an in-region round trip in the same run.
    let mut middle = middle;
    let started = Instant::now();
    let local = ask(&mut middle, "middle", "car-2", &request("r-2", 0.11)).await;
    eprintln!("in-region round trip: {:?}", started.elapsed());
    assert_eq!(local.status, RecommendationStatus::Assigned);

    // No loops: each step crossed once, in its direction, and nothing came back.
    let mut counts = BTreeMap::<String, usize>::new();
    for m in central_spy
        .collect_for(Duration::from_millis(500))
        .await
        .unwrap()
    {
        *counts.entry(m.topic().to_owned()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [
        ("regions/west/up/reroute", 1),
        ("regions/middle/down/handoff", 1),
        ("regions/middle/up/handoff-reply", 1),
        ("regions/west/down/reroute-reply", 1),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    assert_eq!(counts, expected);
    let mut west_counts = BTreeMap::<String, usize>::new();
    for m in west_spy
        .collect_for(Duration::from_millis(200))
        .await
        .unwrap()
    {
        *west_counts.entry(m.topic().to_owned()).or_default() += 1;
    }
    assert_eq!(west_counts.get("fog/up/reroute"), Some(&1));
    assert_eq!(west_counts.get("fog/down/reroute-reply"), Some(&1));
    assert!(
        west_counts.keys().all(|t| t.starts_with("fog/up/")
                || t == "fog/down/reroute-reply"
                // central's heartbeat, every region gets it (whether one falls in the
                // window depends on its period)
                || t == "fog/down/heartbeat"
                // the fog's lease, refreshed every 5 s on its own broker (never bridged)
                || t == protocol::fog::LEASE),
        "{west_counts:?}"
    );
    let (_, metrics) = city.fog("west").get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"fog_reroutes_total{kind="succeeded"} 1"#),
        "{metrics}"
    );
}

/// Middle is played by the test: its aggregate says it is free, but it refuses every
/// handoff (it "filled up meanwhile"). Central must fall back to east.
#[tokio::test]
async fn a_refused_handoff_falls_back_to_the_next_region() {
    let mut spec = CitySpec::three_regions();
    spec.without_fog = vec!["middle".into()];
    let city = City::start(spec).await.unwrap();
    let mut west = devices(&city, "west").await;
    let east = devices(&city, "east").await;
    publish_station(&west, "west", &status("west-busy", 0.09, 1, 1, 6)).await;
    publish_station(&east, "east", &status("east-free", 0.21, 2, 0, 0)).await;

    let mut fake = TestClient::connect(&city.broker("middle").url(), "fake-middle-fog")
        .await
        .unwrap();
    fake.subscribe(protocol::fog::filters::FOG_DOWN, 1)
        .await
        .unwrap();
    let aggregate = |seq: u64| Aggregate {
        v: 1,
        region: "middle".into(),
        seq,
        ts_ms: serverkit::clock::wall_ms(),
        stations: 1,
        stations_in_service: 1,
        chargers: 4,
        chargers_free: 4,
        queued: 0,
        reservations: 0,
        min_wait_s: Some(0),
        max_wait_s: None,
        outline: vec![],
        best: vec![AggregateStation {
            station_id: "middle-ghost".into(),
            lat: 0.0,
            lon: 0.11,
            chargers: 4,
            power_kw: 50.0,
            occupied: 0,
            queue: 0,
            reservations: 0,
            predicted_wait_s: 0,
        }],
        saturated_requests: 0,
        requests_total: 0,
    };
    fake.publish_json(
        &FogMessage::Aggregate.regional_topic(),
        &aggregate(1),
        1,
        true,
    )
    .await
    .unwrap();
    wait_region(&city, "middle", "the fake middle is fresh", |v| {
        lists_station(v, "middle-ghost")
    })
    .await;
    wait_region(&city, "east", "east lists its station", |v| {
        lists_station(v, "east-free")
    })
    .await;
    wait_region(&city, "west", "west is saturated", |v| v.saturated).await;

    // Ask from west; middle (nearer) is tried first and refuses.
    west.publish_json(
        &topics::request("west", "car-1"),
        &request("r-1", 0.08),
        1,
        false,
    )
    .await
    .unwrap();
    let handoff: Handoff = fake
        .wait_for_json(&FogMessage::Handoff.regional_topic(), T)
        .await
        .unwrap();
    assert_eq!(
        (handoff.origin_region.as_str(), handoff.vehicle_id.as_str()),
        ("west", "car-1")
    );
    let refusal = HandoffReply {
        v: 1,
        handoff_id: handoff.handoff_id,
        region: "middle".into(),
        accepted: false,
        recommendation: None,
        reason: Some("filled up meanwhile".into()),
    };
    fake.publish_json(
        &FogMessage::HandoffReply.regional_topic(),
        &refusal,
        1,
        false,
    )
    .await
    .unwrap();
    let answer: Recommendation = west
        .wait_for_json(&topics::recommendation("west", "car-1"), T)
        .await
        .unwrap();
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
    assert_eq!(answer.station.unwrap().station_id, "east-free");
    assert_eq!(reservations(&city, "east").await.len(), 1);
}

#[tokio::test]
async fn without_central_regions_still_answer_and_rerouting_resumes_when_it_is_back() {
    let mut city = City::start(CitySpec::three_regions()).await.unwrap();
    let (mut west, _middle) = saturated_west(&city).await;
    let mut east = devices(&city, "east").await;
    publish_station(&east, "east", &status("east-free", 0.25, 2, 0, 0)).await;
    wait_region(&city, "east", "east lists its station", |v| {
        lists_station(v, "east-free")
    })
    .await;

    city.stop_central().await.unwrap();
    let started = Instant::now();
    let answer = ask(&mut west, "west", "car-1", &request("r-1", 0.08)).await;
    let waited = started.elapsed();
    assert_eq!(answer.status, RecommendationStatus::Assigned, "{answer:?}");
    assert_eq!(answer.station.as_ref().unwrap().station_id, "west-busy");
    let reason = answer.reason.clone().unwrap_or_default();
    assert!(reason.contains("central unreachable"), "{reason}");
    let timeout = Duration::from_millis(city.spec.reroute_timeout_ms);
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(3),
        "{waited:?}"
    );
    // A request that needs no reroute is answered as usual.
    let plain = ask(&mut east, "east", "car-2", &request("r-2", 0.25)).await;
    assert_eq!(plain.status, RecommendationStatus::Assigned);
    assert_eq!(plain.reason, None);
    // Within a few heartbeat periods west knows central is gone, and answers saturated
    // requests at once instead of asking.
    wait_until("west notices central is gone", T, POLL, || async {
        city.fog("west")
            .get_json::<serde_json::Value>("/api/region")
            .await
            .is_ok_and(|v| v["central_present"] == false)
    })
    .await
    .unwrap();
    let noticed = started.elapsed();
    let t = Instant::now();
    let answer = ask(&mut west, "west", "car-1b", &request("r-1b", 0.08)).await;
    let fast = t.elapsed();
    assert_eq!(answer.status, RecommendationStatus::Assigned, "{answer:?}");
    let reason = answer.reason.unwrap_or_default();
    assert!(
        reason.contains("central unreachable (no heartbeat for"),
        "{reason}"
    );
    assert!(fast < Duration::from_millis(500), "{fast:?}");
    println!(
        "central stopped: west noticed after {noticed:?}; a saturated request then answered in {fast:?}"
    );

    // Central back: rerouting works again, nothing else restarted.
    city.start_central().await.unwrap();
    city.wait_all_regions_fresh(T).await.unwrap();
    let answer = ask(&mut west, "west", "car-3", &request("r-3", 0.08)).await;
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
    assert_eq!(answer.station.unwrap().region, "middle");
}

#[tokio::test]
async fn after_a_central_broker_restart_the_bridges_reconnect_and_data_is_fresh() {
    let mut city = City::start(CitySpec::three_regions()).await.unwrap();
    let period = city.spec.aggregate_ms;
    city.central_broker.restart().unwrap();
    let fresh = wait_until(
        "every region's data is younger than two aggregate periods",
        Duration::from_secs(20),
        POLL,
        || async {
            let regions = city.regions().await.ok()?;
            (regions.len() == 3 && regions.values().all(|v| v.data_age_ms < 2 * period))
                .then_some(regions)
        },
    )
    .await
    .unwrap();
    assert!(fresh.values().all(|v| !v.stale));
    // And the reroute path works through the reconnected bridges.
    let (mut west, _middle) = saturated_west(&city).await;
    let answer = ask(&mut west, "west", "car-1", &request("r-1", 0.08)).await;
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
}

#[tokio::test]
async fn with_the_central_broker_down_ten_seconds_regions_answer_and_everything_resumes() {
    let mut city = City::start(CitySpec::three_regions()).await.unwrap();
    let (mut west, _middle) = saturated_west(&city).await;
    let mut east = devices(&city, "east").await;
    publish_station(&east, "east", &status("east-free", 0.25, 2, 0, 0)).await;
    wait_region(&city, "east", "east lists its station", |v| {
        lists_station(v, "east-free")
    })
    .await;

    city.central_broker.stop().unwrap();
    let down = Instant::now();
    // Central's view goes stale: no aggregate crosses.
    wait_until("central marks every region stale", T, POLL, || async {
        city.regions()
            .await
            .is_ok_and(|r| r.len() == 3 && r.values().all(|v| v.stale))
    })
    .await
    .unwrap();
    // In-region answers continue at once; a saturated request is answered locally after
    // the reroute timeout, saying why.
    let mut n = 0;
    while down.elapsed() < Duration::from_secs(10) {
        n += 1;
        let t = Instant::now();
        let plain = ask(
            &mut east,
            "east",
            "car-e",
            &request(&format!("r-e{n}"), 0.25),
        )
        .await;
        assert_eq!(plain.status, RecommendationStatus::Assigned, "{plain:?}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "in-region answer took {:?}",
            t.elapsed()
        );
        let saturated = ask(
            &mut west,
            "west",
            &format!("car-w{n}"),
            &request(&format!("r-w{n}"), 0.08),
        )
        .await;
        assert_eq!(
            saturated.status,
            RecommendationStatus::Assigned,
            "{saturated:?}"
        );
        let reason = saturated.reason.unwrap_or_default();
        assert!(reason.contains("central unreachable"), "{reason}");
    }
    assert!(n >= 3, "{n} rounds in 10 s");

    city.central_broker.restart().unwrap();
    let back = Instant::now();
    city.wait_all_regions_fresh(Duration::from_secs(20))
        .await
        .unwrap();
    let fresh_after = back.elapsed();
    let answer = ask(&mut west, "west", "car-after", &request("r-after", 0.08)).await;
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
    println!(
        "central broker down 10 s: {n} rounds answered; regions fresh {fresh_after:?} after its restart"
    );
}

#[tokio::test]
async fn a_rerouted_vehicle_whose_charger_refuses_the_reservation_is_told_by_its_own_region() {
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let mut west = devices(&city, "west").await;
    publish_station(&west, "west", &status("west-busy", 0.09, 1, 1, 6)).await;
    // Middle's free station is an OCPP charger (it takes reservations), played here by
    // a client on middle's broker that refuses every ReserveNow.
    let mut charger = TestClient::connect(&city.broker("middle").url(), "CP-middle")
        .await
        .unwrap();
    charger
        .subscribe(&topics::station_reservations("middle", "CP-middle"), 1)
        .await
        .unwrap();
    let ocpp = StationStatus {
        takes_reservations: true,
        ..status("CP-middle", 0.11, 2, 0, 0)
    };
    publish_station(&charger, "middle", &ocpp).await;
    wait_region(&city, "west", "west is saturated", |v| v.saturated).await;
    wait_region(&city, "middle", "middle lists the charger", |v| {
        lists_station(v, "CP-middle")
    })
    .await;
    west_hears_middle_is_open(&city).await;

    let answer = ask(&mut west, "west", "car-1", &request("r-1", 0.08)).await;
    assert_eq!(answer.status, RecommendationStatus::Rerouted, "{answer:?}");
    let reservation_id = answer.reservation_id.clone().unwrap();
    let reserve: protocol::StationReservation = charger
        .wait_for_json(&topics::station_reservations("middle", "CP-middle"), T)
        .await
        .unwrap();
    assert_eq!(reserve.reservation_id, reservation_id);
    let refused = protocol::StationReservationEvent {
        v: 1,
        reservation_id: reservation_id.clone(),
        event: protocol::StationReservationEventKind::Rejected,
        reason: Some("Occupied".into()),
    };
    charger
        .publish_json(
            &topics::station_reservation_events("middle", "CP-middle"),
            &refused,
            1,
            false,
        )
        .await
        .unwrap();

    // Middle frees the slot; the vehicle hears it from west, its own region.
    let revised: Recommendation = west
        .wait_for_json(&topics::recommendation("west", "car-1"), T)
        .await
        .unwrap();
    assert_eq!(
        (revised.request_id.as_str(), revised.status, revised.revised),
        ("r-1", RecommendationStatus::Unavailable, true),
        "{revised:?}"
    );
    let reason = revised.reason.unwrap();
    assert!(
        reason.contains(&reservation_id) && reason.contains("Occupied"),
        "{reason}"
    );
    wait_until("middle frees the slot", T, POLL, || async {
        reservations(&city, "middle").await.is_empty()
    })
    .await
    .unwrap();
    // Asked again, the same request id gets the revision, not the lost reservation.
    let again = ask(&mut west, "west", "car-1", &request("r-1", 0.08)).await;
    assert!(again.revised && again.reservation_id.is_none(), "{again:?}");
}

#[tokio::test]
async fn when_a_bridge_comes_back_the_region_sends_its_aggregate_at_once() {
    // A period far longer than the test: any aggregate after the first comes from the
    // bridge reconnecting, not from the clock.
    let spec = CitySpec {
        aggregate_ms: 60_000,
        ..CitySpec::three_regions()
    };
    let mut city = City::start(spec).await.unwrap();
    let before: BTreeMap<String, u64> = wait_until("every region known", T, POLL, || async {
        let regions = city.regions().await.ok()?;
        (regions.len() == 3).then(|| {
            regions
                .iter()
                .map(|(id, v)| (id.clone(), v.aggregate.seq))
                .collect()
        })
    })
    .await
    .unwrap();
    city.central_broker.restart().unwrap();
    let restarted = Instant::now();
    // Retained: an aggregate that came before the spy subscribed is delivered too.
    let mut spy = TestClient::connect(&city.central_broker.url(), "spy")
        .await
        .unwrap();
    spy.subscribe("regions/+/up/aggregate", 1).await.unwrap();
    let mut fresh = BTreeMap::new();
    while fresh.len() < 3 {
        // Without the bridge's word, the next aggregate would come a minute later.
        let m = spy
            .wait_for("regions/+/up/aggregate", Duration::from_secs(20))
            .await
            .unwrap();
        let a: Aggregate = serde_json::from_slice(m.payload()).unwrap();
        if a.seq > before[&a.region] {
            fresh.entry(a.region).or_insert(restarted.elapsed());
        }
    }
    eprintln!("a new aggregate from each region after the central broker restart: {fresh:?}");
}
