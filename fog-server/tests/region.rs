//! The region's message handling without a broker: rerouting through central, the
//! local fallback, handoffs from other regions, aggregates.

mod driver;

use std::time::Duration;

use driver::Driven;
use fog_server::planner::PlannerParams;
use fog_server::region::{CentralView, Outgoing, Region, RerouteSettings};
use protocol::fog::{
    Aggregate, CentralHeartbeat, FogMessage, Handoff, HandoffReply, RerouteReply, RerouteRequest,
    Revoked,
};
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, StationRef, StationStatus, decode, encode,
    topics,
};

const NOW: u64 = 1_700_000_000_000;
const KM_PER_DEG: f64 = 111.19;

fn region(name: &str, reroute_timeout: Duration) -> Driven {
    let mut r = Driven::from(Region::new(name, PlannerParams::default()));
    r.reroute = RerouteSettings {
        enabled: true,
        timeout: reroute_timeout,
        ..RerouteSettings::default()
    };
    // Central is there, and another region can take vehicles.
    heartbeat(&mut r, &["other"]);
    r
}

/// Central's heartbeat, listing `open` as the regions that can take vehicles.
fn heartbeat(r: &mut Driven, open: &[&str]) {
    let hb = testkit::messages::heartbeat(NOW, open, Vec::new());
    let topic = FogMessage::Heartbeat.regional_topic();
    assert!(r.handle(&topic, &encode(&hb), NOW).is_none());
}

fn add_station(r: &mut Driven, id: &str, km_north: f64, chargers: u32, occupied: u32, queue: u32) {
    let s = StationStatus {
        occupied,
        queue,
        ..testkit::messages::station(id, km_north / KM_PER_DEG, 0.0, chargers, 50.0)
    };
    let topic = topics::station_status(&r.name, id);
    assert!(r.handle(&topic, &encode(&s), NOW).is_none());
}

fn request(id: &str) -> ChargeRequest {
    testkit::messages::request(id, 0.0, 0.0, 0.4)
}

fn ask(r: &mut Driven, vehicle: &str, req: &ChargeRequest) -> Option<Outgoing> {
    let topic = topics::request(&r.name.clone(), vehicle);
    r.handle(&topic, &encode(req), NOW)
}

fn recommendation(out: &Outgoing) -> Recommendation {
    assert!(out.topic.ends_with("/recommendation"), "{}", out.topic);
    decode(&out.payload).unwrap()
}

/// A region whose only station has a long queue: every request is saturated.
fn saturated(name: &str, timeout: Duration) -> Driven {
    let mut r = region(name, timeout);
    add_station(&mut r, &format!("{name}-busy"), 1.0, 1, 1, 6);
    r
}

/// Central's answer to request r-1 of region a: station `station_id` in region b,
/// reservation b-77.
fn rerouted_to_b(station_id: &str) -> Recommendation {
    Recommendation {
        v: 1,
        request_id: "r-1".into(),
        status: RecommendationStatus::Rerouted,
        station: Some(StationRef {
            station_id: station_id.into(),
            region: "b".into(),
            lat: 0.05,
            lon: 0.0,
        }),
        distance_km: Some(7.2),
        eta_s: Some(650),
        wait_s: Some(0),
        charge_s: Some(1700),
        reservation_id: Some("b-77".into()),
        expires_ms: Some(NOW + 1_250_000),
        reason: Some("region a is saturated; rerouted to b".into()),
        served_by: Some("b".into()),
        data_age_ms: Some(10),
        revised: false,
    }
}

#[test]
fn a_saturated_request_goes_to_central_and_a_reroute_is_forwarded() {
    let mut a = saturated("a", Duration::from_secs(5));
    let out = ask(&mut a, "car-1", &request("r-1")).expect("a reroute request");
    assert_eq!(out.topic, FogMessage::Reroute.regional_topic());
    let rr: RerouteRequest = decode(&out.payload).unwrap();
    assert_eq!(
        (rr.origin_region.as_str(), rr.vehicle_id.as_str()),
        ("a", "car-1")
    );
    assert_eq!(rr.request, request("r-1"));
    assert!(
        rr.local_best_total_s.is_some(),
        "a slow local option exists"
    );
    assert_eq!(a.pending_reroutes(), 1);
    // A redelivered request while central works on it: nothing new is sent.
    assert!(ask(&mut a, "car-1", &request("r-1")).is_none());

    let target = rerouted_to_b("b-1");
    let reply = RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id.clone(),
        ok: true,
        recommendation: Some(target.clone()),
        reason: None,
        tried: vec!["b".into()],
        no_region_within_km: None,
        hold_ms: None,
    };
    let out = a
        .handle(
            &FogMessage::RerouteReply.regional_topic(),
            &encode(&reply),
            NOW,
        )
        .expect("the vehicle's answer");
    assert_eq!(out.topic, topics::recommendation("a", "car-1"));
    assert_eq!(recommendation(&out), target);
    assert_eq!(a.pending_reroutes(), 0);
    // The same reply again (redelivery) answers nobody twice.
    assert!(
        a.handle(
            &FogMessage::RerouteReply.regional_topic(),
            &encode(&reply),
            NOW
        )
        .is_none()
    );
    // And the request id is remembered: a later redelivery gets the rerouted answer.
    let again = ask(&mut a, "car-1", &request("r-1")).unwrap();
    assert_eq!(recommendation(&again), target);
    // Origin holds no reservation for the vehicle.
    assert_eq!(a.planner.active_reservations(), 0);
}

#[test]
fn without_an_answer_from_central_the_fog_answers_locally_with_a_reason() {
    let mut a = saturated("a", Duration::ZERO);
    assert!(ask(&mut a, "car-1", &request("r-1")).is_some());
    let out = a.tick(NOW);
    assert_eq!(out.len(), 1);
    let answer = recommendation(&out[0]);
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    assert_eq!(answer.station.unwrap().station_id, "a-busy");
    let reason = answer.reason.unwrap();
    assert!(reason.contains("central unreachable"), "{reason}");
    assert!(reason.contains("despite a predicted wait"), "{reason}");
    assert_eq!(a.planner.active_reservations(), 1);
    assert!(a.tick(NOW).is_empty(), "answered once");

    // Nothing reachable at all: unavailable, with both reasons.
    let mut empty = region("e", Duration::ZERO);
    assert!(ask(&mut empty, "car-2", &request("r-2")).is_some());
    let answer = recommendation(&empty.tick(NOW)[0]);
    assert_eq!(answer.status, RecommendationStatus::Unavailable);
    let reason = answer.reason.unwrap();
    assert!(
        reason.contains("central unreachable") && reason.contains("no station in service"),
        "{reason}"
    );
}

#[test]
fn reroutes_central_left_unanswered_are_answered_in_the_order_they_were_asked() {
    // Each local answer reserves a slot the next one sees: the order decides who waits
    // least, and must not depend on the order of a hash map.
    let mut a = saturated("a", Duration::from_secs(1));
    let vehicles: Vec<String> = (0..8).map(|i| format!("car-{i}")).collect();
    for (i, v) in vehicles.iter().enumerate() {
        let topic = topics::request("a", v);
        let out = a.handle(&topic, &encode(&request("r-1")), NOW + i as u64);
        assert!(out.is_some(), "asked central");
    }
    let out = a.tick(NOW + 60_000);
    let answered: Vec<String> = out
        .iter()
        .map(|o| {
            assert_eq!(recommendation(o).status, RecommendationStatus::Assigned);
            o.topic.split('/').nth(3).unwrap().to_owned()
        })
        .collect();
    assert_eq!(answered, vehicles);
}

#[test]
fn a_region_given_a_salt_makes_the_same_ids_every_time() {
    let ids = |salt: u32| {
        let mut r = Driven::from(Region::new("a", PlannerParams::default()).with_id_salt(salt));
        add_station(&mut r, "a-free", 1.0, 2, 0, 0);
        let answer = recommendation(&ask(&mut r, "car-1", &request("r-1")).unwrap());
        answer.reservation_id.unwrap()
    };
    assert_eq!(ids(7), ids(7));
    assert_eq!(ids(7), "a-000000071");
    assert_ne!(ids(7), ids(8));
}

#[test]
fn a_failed_reroute_is_answered_locally_with_centrals_reason() {
    let mut a = saturated("a", Duration::from_secs(5));
    let rr: RerouteRequest =
        decode(&ask(&mut a, "car-1", &request("r-1")).unwrap().payload).unwrap();
    let reply = RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id,
        ok: false,
        recommendation: None,
        reason: Some("every region in range refused".into()),
        tried: vec!["b".into(), "c".into()],
        no_region_within_km: None,
        hold_ms: None,
    };
    let out = a
        .handle(
            &FogMessage::RerouteReply.regional_topic(),
            &encode(&reply),
            NOW,
        )
        .unwrap();
    let answer = recommendation(&out);
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    assert!(
        answer
            .reason
            .unwrap()
            .contains("every region in range refused")
    );
}

#[test]
fn with_rerouting_off_a_saturated_request_is_unavailable_at_once() {
    let mut a = saturated("a", Duration::from_secs(5));
    a.reroute.enabled = false;
    let answer = recommendation(&ask(&mut a, "car-1", &request("r-1")).unwrap());
    assert_eq!(answer.status, RecommendationStatus::Unavailable);
    assert!(answer.reason.unwrap().contains("saturated"));
}

fn handoff(id: &str, max_total_s: Option<f64>) -> Handoff {
    Handoff {
        v: 1,
        handoff_id: id.into(),
        reroute_id: "a-rr-1".into(),
        origin_region: "a".into(),
        vehicle_id: "car-9".into(),
        request: request("r-9"),
        max_total_s,
    }
}

fn handoff_reply(r: &mut Driven, h: &Handoff) -> HandoffReply {
    let out = r
        .handle(&FogMessage::Handoff.regional_topic(), &encode(h), NOW)
        .expect("a handoff reply");
    assert_eq!(out.topic, FogMessage::HandoffReply.regional_topic());
    decode(&out.payload).unwrap()
}

#[test]
fn a_free_region_accepts_a_handoff_and_holds_the_reservation() {
    let mut b = region("b", Duration::from_secs(5));
    add_station(&mut b, "b-1", 2.0, 2, 0, 0);
    let reply = handoff_reply(&mut b, &handoff("h-1", Some(100_000.0)));
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.region, "b");
    let rec = reply.recommendation.clone().unwrap();
    assert_eq!(rec.status, RecommendationStatus::Rerouted);
    assert_eq!(rec.request_id, "r-9");
    let station = rec.station.unwrap();
    assert_eq!(
        (station.station_id.as_str(), station.region.as_str()),
        ("b-1", "b")
    );
    let reservation = b.planner.reservation_of("car-9").expect("held by b");
    assert_eq!(Some(reservation.reservation_id.clone()), rec.reservation_id);
    // A redelivered handoff gets the same reply and no second reservation.
    assert_eq!(
        handoff_reply(&mut b, &handoff("h-1", Some(100_000.0))),
        reply
    );
    assert_eq!(b.planner.active_reservations(), 1);
}

#[test]
fn a_handoff_is_refused_when_the_region_cannot_do_better() {
    let mut b = region("b", Duration::from_secs(5));
    add_station(&mut b, "b-1", 2.0, 2, 0, 0);
    let reply = handoff_reply(&mut b, &handoff("h-1", Some(10.0)));
    assert!(!reply.accepted);
    assert!(reply.reason.unwrap().contains("no better"));
    let mut full = saturated("c", Duration::from_secs(5));
    let reply = handoff_reply(&mut full, &handoff("h-2", None));
    assert!(!reply.accepted);
    assert!(reply.reason.unwrap().contains("saturated"));
    assert_eq!(
        b.planner.active_reservations() + full.planner.active_reservations(),
        0
    );
}

#[test]
fn aggregates_count_the_region_and_list_the_best_stations() {
    let mut r = region("n", Duration::from_secs(5));
    r.outline = vec![[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]];
    add_station(&mut r, "n-busy", 1.0, 2, 2, 3);
    add_station(&mut r, "n-free", 3.0, 4, 1, 0);
    assert!(r.is_dirty());
    let agg: Aggregate = r.aggregate(NOW);
    assert!(!r.is_dirty());
    assert_eq!((agg.region.as_str(), agg.seq, agg.ts_ms), ("n", 1, NOW));
    assert_eq!((agg.stations, agg.stations_in_service), (2, 2));
    assert_eq!((agg.chargers, agg.chargers_free, agg.queued), (6, 3, 3));
    assert_eq!(agg.min_wait_s, Some(0));
    assert_eq!(agg.best[0].station_id, "n-free");
    assert_eq!(agg.outline.len(), 4);
    // A reservation changes it and makes it dirty; the sequence number grows.
    assert!(ask(&mut r, "car-1", &request("x")).is_some());
    assert!(r.is_dirty());
    let agg2 = r.aggregate(NOW);
    assert_eq!((agg2.seq, agg2.reservations), (2, 1));
    protocol::Validate::validate(&agg2).unwrap();
}

#[test]
fn the_reroute_deadline_is_on_the_scaled_clock() {
    // 1.5 s of real time at 60x is 90 s on the clock that central shares.
    let mut a = saturated("a", Duration::from_millis(1500));
    a.reroute.clock_speed = 60.0;
    let out = ask(&mut a, "car-1", &request("r-1")).expect("a reroute request");
    let rr: RerouteRequest = decode(&out.payload).unwrap();
    assert_eq!(rr.deadline_ms, NOW + 90_000);
    let mut b = saturated("b", Duration::from_millis(1500));
    let out = ask(&mut b, "car-1", &request("r-1")).expect("a reroute request");
    let rr: RerouteRequest = decode(&out.payload).unwrap();
    assert_eq!(rr.deadline_ms, NOW + 1_500);
}

#[test]
fn a_newer_request_supersedes_one_still_with_central() {
    let mut a = saturated("a", Duration::from_secs(5));
    let first = ask(&mut a, "car-1", &request("r-1")).expect("a reroute request");
    let rr1: RerouteRequest = decode(&first.payload).unwrap();
    let second = ask(&mut a, "car-1", &request("r-2")).expect("a reroute request");
    assert_eq!(second.topic, FogMessage::Reroute.regional_topic());
    assert_eq!(
        a.pending_reroutes(),
        1,
        "only the newer request waits for central"
    );
    // r-1 still gets its one answer, at the next tick.
    let out = a.tick(NOW);
    let answers: Vec<Recommendation> = out
        .iter()
        .filter(|o| o.topic == topics::recommendation("a", "car-1"))
        .map(recommendation)
        .collect();
    assert_eq!(answers.len(), 1, "{out:?}");
    assert_eq!(answers[0].request_id, "r-1");
    assert_eq!(answers[0].status, RecommendationStatus::Unavailable);
    assert!(
        answers[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("superseded by request r-2")
    );
    // Central's late reply to r-1 changes nothing.
    let late = RerouteReply {
        v: 1,
        reroute_id: rr1.reroute_id,
        ok: false,
        recommendation: None,
        reason: Some("nothing better".into()),
        tried: Vec::new(),
        no_region_within_km: None,
        hold_ms: None,
    };
    assert!(
        a.handle(
            &FogMessage::RerouteReply.regional_topic(),
            &encode(&late),
            NOW
        )
        .is_none()
    );
    assert_eq!(a.pending_reroutes(), 1);
    assert!(
        a.tick(NOW)
            .iter()
            .all(|o| !o.topic.ends_with("/recommendation"))
    );
}

#[test]
fn with_no_heartbeat_from_central_a_saturated_request_is_answered_at_once() {
    let mut a = Driven::from(Region::new("a", PlannerParams::default()));
    add_station(&mut a, "a-busy", 1.0, 1, 1, 6);
    assert_eq!(
        a.central_view(NOW),
        CentralView::Unreachable { silent_ms: None }
    );
    let out = ask(&mut a, "car-1", &request("r-1")).expect("an answer, not a reroute request");
    let rec = recommendation(&out);
    assert_eq!(rec.status, RecommendationStatus::Assigned);
    assert_eq!(rec.station.unwrap().station_id, "a-busy");
    let reason = rec.reason.unwrap();
    assert!(
        reason.contains("central unreachable (no heartbeat heard yet)"),
        "{reason}"
    );
    assert!(
        reason.contains("best local station despite a predicted wait"),
        "{reason}"
    );
    assert_eq!(a.pending_reroutes(), 0);
    // Central comes: the next saturated request goes to it.
    heartbeat(&mut a, &["b"]);
    assert_eq!(a.central_view(NOW), CentralView::Ask);
    let out = ask(&mut a, "car-2", &request("r-2")).unwrap();
    assert_eq!(out.topic, FogMessage::Reroute.regional_topic());
}

#[test]
fn a_heartbeat_too_old_means_central_is_gone() {
    let mut a = saturated("a", Duration::from_secs(5));
    a.reroute.central_timeout = Duration::ZERO;
    // The heartbeat came at NOW: a millisecond later it is too old.
    assert_eq!(a.central_view(NOW), CentralView::Ask);
    assert!(matches!(
        a.central_view(NOW + 1),
        CentralView::Unreachable { silent_ms: Some(1) }
    ));
    let topic = topics::request("a", "car-1");
    let out = a.handle(&topic, &encode(&request("r-1")), NOW + 1);
    let rec = recommendation(&out.unwrap());
    let reason = rec.reason.unwrap();
    assert!(
        reason.contains("central unreachable (no heartbeat for"),
        "{reason}"
    );
}

#[test]
fn when_central_lists_no_other_open_region_the_fog_does_not_ask() {
    let mut a = saturated("a", Duration::from_secs(5));
    // Only this region itself is "open" (it is not, for this request): nobody else.
    heartbeat(&mut a, &["a"]);
    assert_eq!(a.central_view(NOW), CentralView::NoOpenRegion);
    let rec = recommendation(&ask(&mut a, "car-1", &request("r-1")).unwrap());
    assert_eq!(rec.status, RecommendationStatus::Assigned);
    assert!(
        rec.reason
            .unwrap()
            .contains("no other region can take vehicles now"),
    );
    assert_eq!(a.pending_reroutes(), 0);
    // A bad heartbeat changes nothing.
    let topic = FogMessage::Heartbeat.regional_topic();
    assert!(a.handle(&topic, b"{\"v\":1}", NOW).is_none());
    assert_eq!(a.central_view(NOW), CentralView::NoOpenRegion);
}

#[test]
fn when_central_says_no_region_is_in_reach_like_requests_are_answered_at_once() {
    let mut a = saturated("a", Duration::from_secs(5));
    let rr: RerouteRequest =
        decode(&ask(&mut a, "car-1", &request("r-1")).unwrap().payload).unwrap();
    // request() can drive 0.4 * 60 / 0.18 = 133 km (less the margin): nothing within
    // 500 km is out of its reach from anywhere near here.
    let reply = RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id,
        ok: false,
        recommendation: None,
        reason: Some("no region in range".into()),
        tried: Vec::new(),
        no_region_within_km: Some(500.0),
        hold_ms: Some(60_000),
    };
    let topic = FogMessage::RerouteReply.regional_topic();
    recommendation(&a.handle(&topic, &encode(&reply), NOW).unwrap());
    // The next saturated request from about there is not asked of central.
    let answer = recommendation(&ask(&mut a, "car-2", &request("r-2")).unwrap());
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    let reason = answer.reason.unwrap();
    assert!(
        reason.contains("no other region that can take vehicles is in reach"),
        "{reason}"
    );
    assert_eq!(a.pending_reroutes(), 0);
    // A vehicle with a longer reach still asks.
    let mut far = request("r-3");
    far.soc = 1.0;
    far.battery_kwh = 200.0;
    let out = ask(&mut a, "car-3", &far).unwrap();
    assert_eq!(out.topic, FogMessage::Reroute.regional_topic());
    // And when the regions that can take vehicles change, everyone asks again.
    heartbeat(&mut a, &["other", "b"]);
    let out = ask(&mut a, "car-4", &request("r-4")).unwrap();
    assert_eq!(out.topic, FogMessage::Reroute.regional_topic());
}

#[test]
fn a_heartbeat_that_puts_every_open_station_beyond_reach_spares_the_round_trip() {
    let mut a = saturated("a", Duration::from_secs(5));
    a.outline = vec![[-0.1, -0.1], [-0.1, 0.1], [0.1, 0.1], [0.1, -0.1]];
    let hb = |nearest_open_km: f64| CentralHeartbeat {
        seq: 2,
        nearest_open_km: Some(nearest_open_km),
        ..testkit::messages::heartbeat(NOW, &["far"], Vec::new())
    };
    let topic = FogMessage::Heartbeat.regional_topic();
    // 1,000 km from the region's outline: request() reaches ~92 km.
    assert!(a.handle(&topic, &encode(&hb(1000.0)), NOW).is_none());
    let answer = recommendation(&ask(&mut a, "car-1", &request("r-1")).unwrap());
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    let reason = answer.reason.unwrap();
    assert!(
        reason.contains("is in reach (central's heartbeat)"),
        "{reason}"
    );
    assert_eq!(a.pending_reroutes(), 0);
    // 50 km: within reach, so central is asked.
    assert!(a.handle(&topic, &encode(&hb(50.0)), NOW).is_none());
    let out = ask(&mut a, "car-2", &request("r-2")).unwrap();
    assert_eq!(out.topic, FogMessage::Reroute.regional_topic());
}

/// An OCPP charger of region b (it takes reservations) on which a handoff lands.
fn add_ocpp_station(r: &mut Driven, id: &str, km_north: f64) {
    let s = StationStatus {
        takes_reservations: true,
        ..testkit::messages::station(id, km_north / KM_PER_DEG, 0.0, 2, 50.0)
    };
    let topic = topics::station_status(&r.name, id);
    assert!(r.handle(&topic, &encode(&s), NOW).is_none());
}

#[test]
fn a_handoff_the_charger_refuses_is_revoked_towards_the_origin() {
    let mut b = region("b", Duration::from_secs(5));
    add_ocpp_station(&mut b, "CP-b", 2.0);
    let reply = handoff_reply(&mut b, &handoff("h-1", Some(100_000.0)));
    assert!(reply.accepted, "{reply:?}");
    let reservation_id = reply.recommendation.unwrap().reservation_id.unwrap();
    assert_eq!(b.take_station_messages().len(), 1, "ReserveNow goes out");

    let refused = protocol::StationReservationEvent {
        v: 1,
        reservation_id: reservation_id.clone(),
        event: protocol::StationReservationEventKind::Rejected,
        reason: Some("Occupied".into()),
    };
    let out = b
        .handle(
            &topics::station_reservation_events("b", "CP-b"),
            &encode(&refused),
            NOW,
        )
        .expect("a revocation for central");
    assert_eq!(out.topic, FogMessage::HandoffRevoked.regional_topic());
    let revoked: Revoked = decode(&out.payload).unwrap();
    assert_eq!(
        revoked,
        Revoked {
            v: 1,
            reroute_id: "a-rr-1".into(),
            handoff_id: "h-1".into(),
            origin_region: "a".into(),
            region: "b".into(),
            vehicle_id: "car-9".into(),
            reservation_id: reservation_id.clone(),
            reason: revoked.reason.clone(),
            revised: None,
        }
    );
    assert!(revoked.reason.contains("Occupied"), "{}", revoked.reason);
    assert_eq!(b.planner.active_reservations(), 0, "the slot is free again");
    // The same refusal again: the reservation is gone, nothing is sent twice.
    let again = b.handle(
        &topics::station_reservation_events("b", "CP-b"),
        &encode(&refused),
        NOW,
    );
    assert!(again.is_none());
}

#[test]
fn the_origin_revises_a_rerouted_answer_whose_reservation_was_revoked() {
    let mut a = saturated("a", Duration::from_secs(5));
    let out = ask(&mut a, "car-1", &request("r-1")).expect("a reroute request");
    let rr: RerouteRequest = decode(&out.payload).unwrap();
    let target = rerouted_to_b("CP-b");
    let reply = RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id.clone(),
        ok: true,
        recommendation: Some(target),
        reason: None,
        tried: vec!["b".into()],
        no_region_within_km: None,
        hold_ms: None,
    };
    a.handle(
        &FogMessage::RerouteReply.regional_topic(),
        &encode(&reply),
        NOW,
    )
    .expect("the rerouted answer");

    let revoked = Revoked {
        v: 1,
        reroute_id: rr.reroute_id.clone(),
        handoff_id: "h-1".into(),
        origin_region: "a".into(),
        region: "b".into(),
        vehicle_id: "car-1".into(),
        reservation_id: "b-77".into(),
        reason: "station CP-b could not hold reservation b-77 (Occupied)".into(),
        revised: None,
    };
    let topic = FogMessage::RerouteRevoked.regional_topic();
    let out = a
        .handle(&topic, &encode(&revoked), NOW)
        .expect("a revised answer");
    assert_eq!(out.topic, topics::recommendation("a", "car-1"));
    let revised = recommendation(&out);
    assert_eq!(
        (
            revised.request_id.as_str(),
            revised.status,
            revised.revised,
            revised.reservation_id.as_deref()
        ),
        ("r-1", RecommendationStatus::Unavailable, true, None)
    );
    assert!(revised.reason.as_deref().unwrap().contains("Occupied"));
    // A redelivered request gets the revision, not the lost reservation.
    let again = ask(&mut a, "car-1", &request("r-1")).unwrap();
    assert_eq!(recommendation(&again), revised);
    // Once the vehicle holds another answer, a revocation of the old one changes nothing.
    assert!(a.handle(&topic, &encode(&revoked), NOW).is_none());
    let other = Revoked {
        vehicle_id: "car-unknown".into(),
        ..revoked.clone()
    };
    assert!(a.handle(&topic, &encode(&other), NOW).is_none());
    // A malformed one is refused.
    assert!(a.handle(&topic, b"{\"v\":1}", NOW).is_none());
}

#[test]
fn the_bridge_coming_back_makes_the_next_aggregate_go_out_at_once() {
    let mut r = region("a", Duration::from_secs(5));
    add_station(&mut r, "a-1", 1.0, 2, 0, 0);
    let _ = r.aggregate(NOW);
    assert!(!r.is_dirty());
    let topic = "$SYS/broker/connection/a-bridge/state";
    assert!(r.handle(topic, b"0", NOW).is_none());
    assert!(!r.is_dirty(), "a lost bridge changes nothing");
    assert!(r.handle(topic, b"1", NOW).is_none());
    assert!(r.is_dirty(), "the bridge is back: publish now");
}
