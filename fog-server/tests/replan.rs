//! Promises kept when reality diverges, without a broker: a charger that faults, a
//! session that runs over, a station that goes out of service. Every vehicle whose
//! wait grows by more than 5 min, or whose station changes, gets a revised answer for
//! its request before it arrives.

mod driver;

use driver::Driven;
use fog_server::planner::PlannerParams;
use fog_server::region::Region;
use protocol::{
    Recommendation, RecommendationStatus, StationState, StationStatus, decode, encode, topics,
};

const NOW: u64 = 1_700_000_000_000;
const KM: f64 = 1.0 / 111.19;

fn region() -> Driven {
    let mut r = Driven::from(Region::new("north", PlannerParams::default()));
    r.reroute.enabled = false;
    r
}

/// A station `km` north of the vehicles that holds reservations.
fn holding(id: &str, km: f64, chargers: u32) -> StationStatus {
    StationStatus {
        takes_reservations: true,
        ..testkit::messages::station(id, km * KM, 0.0, chargers, 50.0)
    }
}

fn status(r: &mut Driven, s: &StationStatus, now: u64) -> Vec<Recommendation> {
    let fx = r.receive(
        &topics::station_status("north", &s.station_id),
        &encode(s),
        now,
    );
    answers(fx.publish)
}

fn answers(out: Vec<fog_server::region::Outgoing>) -> Vec<Recommendation> {
    out.into_iter()
        .filter(|o| o.topic.ends_with("/recommendation"))
        .map(|o| decode(&o.payload).unwrap())
        .collect()
}

fn ask(r: &mut Driven, vehicle: &str, id: &str, now: u64) -> Recommendation {
    ask_with(r, vehicle, id, 0.3, now)
}

fn ask_with(r: &mut Driven, vehicle: &str, id: &str, soc: f64, now: u64) -> Recommendation {
    let request = testkit::messages::request(id, 0.0, 0.0, soc);
    let out = r
        .handle(&topics::request("north", vehicle), &encode(&request), now)
        .expect("an answer");
    decode(&out.payload).unwrap()
}

#[test]
fn a_faulted_station_moves_the_holders_of_its_reservations_elsewhere() {
    let mut r = region();
    status(&mut r, &holding("near", 1.0, 2), NOW);
    status(&mut r, &holding("far", 4.0, 2), NOW);
    let a = ask(&mut r, "car-a", "r-a", NOW);
    let b = ask(&mut r, "car-b", "r-b", NOW);
    assert_eq!(a.station.unwrap().station_id, "near");
    assert_eq!(b.station.unwrap().station_id, "near");

    let faulted = StationStatus {
        state: StationState::Faulted,
        ..holding("near", 1.0, 2)
    };
    let mut revised = status(&mut r, &faulted, NOW + 60_000);
    assert_eq!(revised.len(), 2, "{revised:?}");
    revised.sort_by(|x, y| x.request_id.cmp(&y.request_id));
    for (rec, request) in revised.iter().zip(["r-a", "r-b"]) {
        assert!(rec.revised);
        assert_eq!(rec.request_id, request);
        assert_eq!(rec.status, RecommendationStatus::Assigned);
        assert_eq!(rec.station.as_ref().unwrap().station_id, "far");
        assert!(rec.reservation_id.is_some());
    }
    // A repeated request gets the revision.
    let again = ask(&mut r, "car-a", "r-a", NOW + 61_000);
    assert_eq!(again, revised[0]);
}

#[test]
fn a_charger_that_faults_makes_the_waits_it_delays_revised_and_small_changes_are_not() {
    let mut r = region();
    // One station, two chargers, nothing else in range.
    status(&mut r, &holding("only", 1.0, 2), NOW);
    let first: Vec<Recommendation> = (0..4)
        .map(|i| ask_with(&mut r, &format!("car-{i}"), &format!("r-{i}"), 0.6, NOW))
        .collect();
    let waits: Vec<u32> = first.iter().map(|a| a.wait_s.unwrap()).collect();
    assert_eq!(waits[0], 0);
    assert_eq!(waits[1], 0);
    assert!(waits[2] > 0 && waits[3] > 0, "{waits:?}");

    // A status that changes nothing about the plan: no revision.
    assert!(status(&mut r, &holding("only", 1.0, 2), NOW + 1_000).is_empty());

    // One of the two chargers faults: half the capacity. The vehicles planned on it
    // start much later; each is told.
    let revised = status(&mut r, &holding("only", 1.0, 1), NOW + 2_000);
    assert!(!revised.is_empty());
    for rec in &revised {
        assert!(rec.revised);
        let before = first
            .iter()
            .find(|a| a.request_id == rec.request_id)
            .unwrap();
        assert_eq!(
            rec.reservation_id, before.reservation_id,
            "same place, later"
        );
        assert!(
            rec.wait_s.unwrap() > before.wait_s.unwrap() + 300,
            "{rec:?} vs {before:?}"
        );
        assert!(rec.expires_ms.unwrap() > before.expires_ms.unwrap());
    }
    // Told once: the plan did not move again.
    assert!(status(&mut r, &holding("only", 1.0, 1), NOW + 3_000).is_empty());
    // The station is told the new expiries of the reservations it holds.
    let updates = r.take_station_messages();
    assert!(
        updates.iter().any(|m| {
            let msg: protocol::StationReservation = decode(&m.payload).unwrap();
            revised
                .iter()
                .any(|rec| rec.reservation_id.as_deref() == Some(msg.reservation_id.as_str()))
                && msg.start_ms.is_some()
        }),
        "{updates:?}"
    );
}

#[test]
fn a_session_that_runs_over_is_noticed_on_the_clock() {
    let mut r = region();
    let busy = StationStatus {
        occupied: 1,
        ..holding("only", 1.0, 1)
    };
    status(&mut r, &busy, NOW);
    let a = ask(&mut r, "car-a", "r-a", NOW);
    // 40 kWh at 50 kW is 48 min; one of unknown start is half-way: 24 min.
    assert_eq!(a.wait_s.unwrap() + a.eta_s.unwrap(), 24 * 60);
    // An hour later the charger is still taken: the session ran over; the next
    // check of the plans tells car-a.
    let mut revised = Vec::new();
    for minute in 1..=60 {
        revised.extend(answers(r.tick(NOW + minute * 60_000)));
        if !revised.is_empty() {
            break;
        }
    }
    assert_eq!(revised.len(), 1, "{revised:?}");
    assert!(revised[0].revised);
    assert_eq!(revised[0].request_id, "r-a");
}
