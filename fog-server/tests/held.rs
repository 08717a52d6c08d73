//! While central is asked about a request, the region holds its own best station for
//! the vehicle: later requests see it taken, a reroute ends it, no reroute answers
//! with it. A request near a neighbour's free station is answered at once and
//! revised when central finds the neighbour sooner.

use std::time::Duration;

use fog_server::planner::PlannerParams;
use fog_server::region::{Effects, Region, RerouteSettings};
use protocol::fog::{FogMessage, Offer, RerouteReply, RerouteRequest};
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, StationRef, StationStatus, decode, encode,
    topics,
};

const NOW: u64 = 1_700_000_000_000;
const KM_PER_DEG: f64 = 111.19;

/// Region `a` with one station 1 km north of the vehicles (`occupied` of its one
/// charger, `queue` waiting), central heard, `offers` on its heartbeat.
fn region(occupied: u32, queue: u32, offers: Vec<Offer>) -> Region {
    let mut r = Region::new("a", PlannerParams::default());
    r.reroute = RerouteSettings {
        enabled: true,
        timeout: Duration::from_secs(5),
        border_margin_s: 30,
        ..RerouteSettings::default()
    };
    let hb = testkit::messages::heartbeat(NOW, &["b"], offers);
    r.receive(&FogMessage::Heartbeat.regional_topic(), &encode(&hb), NOW);
    let s = StationStatus {
        occupied,
        queue,
        ..testkit::messages::station("a-1", 1.0 / KM_PER_DEG, 0.0, 1, 50.0)
    };
    r.receive(&topics::station_status("a", "a-1"), &encode(&s), NOW);
    r
}

/// A free station of region `b`, 2 km south of the vehicles.
fn free_across_the_border() -> Offer {
    Offer {
        region: "b".into(),
        station_id: "b-1".into(),
        lat: -2.0 / KM_PER_DEG,
        lon: 0.0,
        power_kw: 50.0,
        wait_s: 0,
    }
}

fn ask(r: &mut Region, vehicle: &str, id: &str) -> Effects {
    let req: ChargeRequest = testkit::messages::request(id, 0.0, 0.0, 0.4);
    r.receive(&topics::request("a", vehicle), &encode(&req), NOW)
}

fn answers(fx: &Effects) -> Vec<Recommendation> {
    fx.publish
        .iter()
        .filter(|o| o.topic.ends_with("/recommendation"))
        .map(|o| decode(&o.payload).unwrap())
        .collect()
}

fn reroute_request(fx: &Effects) -> RerouteRequest {
    let out = fx
        .publish
        .iter()
        .find(|o| o.topic == FogMessage::Reroute.regional_topic())
        .unwrap_or_else(|| panic!("central asked: {fx:?}"));
    decode(&out.payload).unwrap()
}

fn reply(rr: &RerouteRequest, to: Option<Recommendation>) -> Vec<u8> {
    encode(&RerouteReply {
        v: 1,
        reroute_id: rr.reroute_id.clone(),
        ok: to.is_some(),
        recommendation: to,
        reason: Some("nothing better".into()),
        tried: vec!["b".into()],
        no_region_within_km: None,
        hold_ms: None,
    })
}

/// Central's answer: station b-1, reservation b-77.
fn to_b(request_id: &str) -> Recommendation {
    Recommendation {
        v: 1,
        request_id: request_id.into(),
        status: RecommendationStatus::Rerouted,
        station: Some(StationRef {
            station_id: "b-1".into(),
            region: "b".into(),
            lat: -2.0 / KM_PER_DEG,
            lon: 0.0,
        }),
        distance_km: Some(2.6),
        eta_s: Some(240),
        wait_s: Some(0),
        charge_s: Some(1700),
        reservation_id: Some("b-77".into()),
        expires_ms: Some(NOW + 1_250_000),
        reason: None,
        served_by: Some("b".into()),
        data_age_ms: Some(10),
        revised: false,
    }
}

#[test]
fn requests_asked_of_central_at_once_do_not_all_get_the_same_local_slot() {
    // Saturated: the one charger is busy with a queue.
    let mut a = region(1, 3, Vec::new());
    let rr1 = reroute_request(&ask(&mut a, "car-1", "r-1"));
    let rr2 = reroute_request(&ask(&mut a, "car-2", "r-2"));
    assert_eq!(a.planner.active_reservations(), 2, "both held meanwhile");
    let (t1, t2) = (
        rr1.local_best_total_s.unwrap(),
        rr2.local_best_total_s.unwrap(),
    );
    assert!(t2 > t1 + 600.0, "car-2 queues behind car-1: {t1} {t2}");

    // car-1 goes to b: its hold ends. car-2 finds nothing better: answered with its
    // hold, which now starts earlier.
    let fx = a.receive(
        &FogMessage::RerouteReply.regional_topic(),
        &reply(&rr1, Some(to_b("r-1"))),
        NOW,
    );
    assert_eq!(answers(&fx)[0].status, RecommendationStatus::Rerouted);
    assert_eq!(a.planner.active_reservations(), 1);
    let fx = a.receive(
        &FogMessage::RerouteReply.regional_topic(),
        &reply(&rr2, None),
        NOW,
    );
    let answer = &answers(&fx)[0];
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    assert_eq!(answer.request_id, "r-2");
    assert!(!answer.revised);
    assert!(
        answer.reason.as_deref().unwrap().contains("nothing better"),
        "{answer:?}"
    );
    let total = answer.eta_s.unwrap() + answer.wait_s.unwrap() + answer.charge_s.unwrap();
    assert!(f64::from(total) < t2, "car-1's slot went to car-2");
    assert_eq!(a.planner.active_reservations(), 1, "the hold is the answer");
}

#[test]
fn a_request_near_a_free_neighbour_is_answered_at_once_and_revised_when_rerouted() {
    // Not saturated (one vehicle ahead), but b's free station is much sooner.
    let mut a = region(1, 0, vec![free_across_the_border()]);
    let fx = ask(&mut a, "car-1", "r-1");
    let first = &answers(&fx)[..];
    assert_eq!(first.len(), 1, "answered at once: {fx:?}");
    assert_eq!(first[0].status, RecommendationStatus::Assigned);
    assert_eq!(first[0].station.as_ref().unwrap().station_id, "a-1");
    let local = first[0].reservation_id.clone().unwrap();
    let rr = reroute_request(&fx);
    assert!(rr.local_best_total_s.is_some());
    assert_eq!(a.pending_reroutes(), 1);

    let fx = a.receive(
        &FogMessage::RerouteReply.regional_topic(),
        &reply(&rr, Some(to_b("r-1"))),
        NOW + 1000,
    );
    let revised = &answers(&fx)[..];
    assert_eq!(revised.len(), 1, "{fx:?}");
    assert_eq!(revised[0].status, RecommendationStatus::Rerouted);
    assert!(revised[0].revised);
    assert_eq!(revised[0].request_id, "r-1");
    assert_eq!(revised[0].reservation_id.as_deref(), Some("b-77"));
    assert!(revised[0].reason.is_some());
    assert!(a.planner.reservation(&local).is_none(), "local slot freed");
    assert_eq!(a.planner.active_reservations(), 0);
    // The request is remembered with its revised answer.
    let again = answers(&ask(&mut a, "car-1", "r-1"));
    assert_eq!(again, revised);
}

#[test]
fn a_border_ask_nobody_beats_changes_nothing_for_the_vehicle() {
    for outcome in ["refused", "timed out"] {
        let mut a = region(1, 0, vec![free_across_the_border()]);
        let fx = ask(&mut a, "car-1", "r-1");
        let first = answers(&fx).remove(0);
        let rr = reroute_request(&fx);
        let fx = match outcome {
            "refused" => a.receive(
                &FogMessage::RerouteReply.regional_topic(),
                &reply(&rr, None),
                NOW + 1000,
            ),
            _ => a.tick(rr.deadline_ms),
        };
        assert!(answers(&fx).is_empty(), "{outcome}: {fx:?}");
        assert_eq!(a.pending_reroutes(), 0, "{outcome}");
        let id = first.reservation_id.as_deref().unwrap();
        assert!(a.planner.reservation(id).is_some(), "{outcome}: kept");
    }
}

#[test]
fn a_reroute_after_the_local_reservation_ended_is_not_passed_on() {
    let mut a = region(1, 0, vec![free_across_the_border()]);
    let fx = ask(&mut a, "car-1", "r-1");
    let rr = reroute_request(&fx);
    // The vehicle asks again before central answers: r-2 supersedes r-1, silently
    // (r-1 had its answer), and r-1's reroute is not passed on.
    let fx2 = ask(&mut a, "car-1", "r-2");
    assert!(answers(&fx2).iter().all(|r| r.request_id == "r-2"));
    let fx = a.receive(
        &FogMessage::RerouteReply.regional_topic(),
        &reply(&rr, Some(to_b("r-1"))),
        NOW + 1000,
    );
    assert!(answers(&fx).is_empty(), "{fx:?}");
    assert!(
        answers(&a.tick(NOW + 1000))
            .iter()
            .all(|r| r.request_id != "r-1"),
        "no refusal for an answered request"
    );
}
