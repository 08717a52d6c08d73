//! Stations that take reservations (OCPP chargers behind the gateway), without a
//! broker: what the fog tells them, and what it does with their answers.

mod driver;

use driver::Driven;
use fog_server::planner::PlannerParams;
use fog_server::region::{Outgoing, Region};
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, ReservationAction, ReservationUpdate,
    StationReservation, StationReservationAction, StationReservationEvent,
    StationReservationEventKind, StationStatus, decode, encode, topics,
};

const NOW: u64 = 1_700_000_000_000;

fn station(id: &str, km_north: f64, takes_reservations: bool) -> StationStatus {
    StationStatus {
        takes_reservations,
        ..testkit::messages::station(id, km_north / 111.19, 0.0, 2, 50.0)
    }
}

fn region_with(stations: &[StationStatus]) -> Driven {
    let mut r = Driven::from(Region::new("north", PlannerParams::default()));
    r.reroute.enabled = false;
    for s in stations {
        let topic = topics::station_status("north", &s.station_id);
        assert!(r.handle(&topic, &encode(s), NOW).is_none());
    }
    r
}

fn request(id: &str) -> ChargeRequest {
    testkit::messages::request(id, 0.0, 0.0, 0.4)
}

fn ask(r: &mut Driven, vehicle: &str, id: &str) -> Recommendation {
    let out = r
        .handle(
            &topics::request("north", vehicle),
            &encode(&request(id)),
            NOW,
        )
        .expect("an answer");
    decode(&out.payload).unwrap()
}

fn event(
    r: &mut Driven,
    station: &str,
    reservation: &str,
    kind: StationReservationEventKind,
) -> Option<Outgoing> {
    let e = StationReservationEvent {
        v: 1,
        reservation_id: reservation.into(),
        event: kind,
        reason: Some("Occupied".into()),
    };
    r.handle(
        &topics::station_reservation_events("north", station),
        &encode(&e),
        NOW,
    )
}

fn only_station_message(r: &mut Driven) -> (String, StationReservation) {
    let mut out = r.take_station_messages();
    assert_eq!(out.len(), 1, "{out:?}");
    let o = out.remove(0);
    assert!(!o.retain);
    (o.topic, decode(&o.payload).unwrap())
}

#[test]
fn a_reservation_at_such_a_station_is_sent_there_and_cancelled_with_the_vehicle() {
    let mut r = region_with(&[station("CP-1", 1.0, true)]);
    let rec = ask(&mut r, "car-7", "r-1");
    assert_eq!(rec.status, RecommendationStatus::Assigned);
    let reservation_id = rec.reservation_id.clone().unwrap();
    let (topic, msg) = only_station_message(&mut r);
    assert_eq!(topic, "ev/north/stations/CP-1/reservations");
    assert_eq!(msg.action, StationReservationAction::Reserve);
    assert_eq!(msg.reservation_id, reservation_id);
    assert_eq!(msg.id_tag.as_deref(), Some("car-7"));
    assert_eq!(msg.expires_ms, rec.expires_ms);

    // The station holds it: nothing changes.
    assert!(
        event(
            &mut r,
            "CP-1",
            &reservation_id,
            StationReservationEventKind::Accepted
        )
        .is_none()
    );
    assert_eq!(r.planner.active_reservations(), 1);

    let cancel = ReservationUpdate {
        v: 1,
        reservation_id: reservation_id.clone(),
        action: ReservationAction::Cancel,
    };
    r.handle(
        &topics::reservation("north", "car-7"),
        &encode(&cancel),
        NOW,
    );
    let (_, msg) = only_station_message(&mut r);
    assert_eq!(msg.action, StationReservationAction::Cancel);
    assert_eq!(msg.reservation_id, reservation_id);
    assert_eq!((msg.id_tag, msg.expires_ms), (None, None));
}

#[test]
fn plain_stations_get_nothing() {
    let mut r = region_with(&[station("plain-1", 1.0, false)]);
    let rec = ask(&mut r, "car-7", "r-1");
    assert_eq!(rec.status, RecommendationStatus::Assigned);
    assert!(r.take_station_messages().is_empty());
    let exp = rec.expires_ms.unwrap();
    assert!(r.tick(exp + 1).is_empty());
    assert!(r.take_station_messages().is_empty());
}

#[test]
fn expiry_and_a_replacing_request_cancel_at_the_station() {
    let mut r = region_with(&[station("CP-1", 1.0, true)]);
    let first = ask(&mut r, "car-7", "r-1");
    only_station_message(&mut r);
    // A new request replaces the reservation: cancel the old, reserve the new.
    let second = ask(&mut r, "car-7", "r-2");
    let out: Vec<StationReservation> = r
        .take_station_messages()
        .iter()
        .map(|o| decode(&o.payload).unwrap())
        .collect();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out.iter()
            .any(|m| m.action == StationReservationAction::Cancel
                && Some(&m.reservation_id) == first.reservation_id.as_ref())
    );
    assert!(
        out.iter()
            .any(|m| m.action == StationReservationAction::Reserve
                && Some(&m.reservation_id) == second.reservation_id.as_ref())
    );
    r.tick(second.expires_ms.unwrap() + 1);
    let (_, msg) = only_station_message(&mut r);
    assert_eq!(msg.action, StationReservationAction::Cancel);
    assert_eq!(Some(msg.reservation_id), second.reservation_id);
}

#[test]
fn a_refusal_releases_the_slot_and_revises_the_answer() {
    let mut r = region_with(&[station("CP-1", 1.0, true)]);
    let rec = ask(&mut r, "car-7", "r-1");
    let reservation_id = rec.reservation_id.clone().unwrap();
    only_station_message(&mut r);

    // Another station's word, or an unknown reservation, changes nothing.
    assert!(
        event(
            &mut r,
            "CP-2",
            &reservation_id,
            StationReservationEventKind::Rejected
        )
        .is_none()
    );
    assert!(
        event(
            &mut r,
            "CP-1",
            "north-nope",
            StationReservationEventKind::Rejected
        )
        .is_none()
    );
    assert_eq!(r.planner.active_reservations(), 1);

    let out = event(
        &mut r,
        "CP-1",
        &reservation_id,
        StationReservationEventKind::Rejected,
    )
    .expect("a revised recommendation");
    assert_eq!(out.topic, topics::recommendation("north", "car-7"));
    let revised: Recommendation = decode(&out.payload).unwrap();
    assert!(revised.revised);
    assert_eq!(revised.request_id, "r-1");
    assert_eq!(revised.status, RecommendationStatus::Unavailable);
    let reason = revised.reason.clone().unwrap();
    assert!(
        reason.contains("CP-1") && reason.contains("Occupied"),
        "{reason}"
    );
    assert_eq!(r.planner.active_reservations(), 0, "the slot is free again");
    // Nothing goes back to the station that refused.
    assert!(r.take_station_messages().is_empty());
    // A redelivered request gets the revision, not the refused station.
    assert_eq!(ask(&mut r, "car-7", "r-1"), revised);
    // A second refusal of the same reservation is ignored.
    assert!(
        event(
            &mut r,
            "CP-1",
            &reservation_id,
            StationReservationEventKind::Rejected
        )
        .is_none()
    );
}

#[test]
fn arrival_at_the_charger_ends_the_reservation_as_arrived() {
    let mut r = region_with(&[station("CP-1", 1.0, true)]);
    let rec = ask(&mut r, "car-7", "r-1");
    let reservation_id = rec.reservation_id.clone().unwrap();
    only_station_message(&mut r);
    assert!(
        event(
            &mut r,
            "CP-1",
            &reservation_id,
            StationReservationEventKind::Arrived
        )
        .is_none()
    );
    assert_eq!(r.planner.active_reservations(), 0);
    assert!(
        r.take_station_messages().is_empty(),
        "no cancel to the station"
    );
    let ended = r
        .metrics()
        .reservations_ended
        .get_or_create(&fog_server::metrics::KindLabel { kind: "arrived" })
        .get();
    assert_eq!(ended, 1);
}

#[test]
fn a_station_that_drops_the_flag_gets_nothing_more_and_bad_events_are_counted() {
    let mut r = region_with(&[station("CP-1", 1.0, true)]);
    r.handle(
        &topics::station_status("north", "CP-1"),
        &encode(&station("CP-1", 1.0, false)),
        NOW,
    );
    ask(&mut r, "car-7", "r-1");
    assert!(r.take_station_messages().is_empty());
    assert!(
        r.handle(
            &topics::station_reservation_events("north", "CP-1"),
            b"{not json",
            NOW
        )
        .is_none()
    );
    let invalid = r
        .metrics()
        .invalid_messages
        .get_or_create(&fog_server::metrics::KindLabel {
            kind: "station-reservation",
        })
        .get();
    assert_eq!(invalid, 1);
}

#[test]
fn reservations_that_expire_together_are_cancelled_at_their_stations_in_id_order() {
    let mut big = station("CP-1", 1.0, true);
    big.chargers = Some(20);
    let mut r = region_with(&[big]);
    let mut ids: Vec<String> = (0..8)
        .map(|i| {
            let rec = ask(&mut r, &format!("car-{i}"), "r-1");
            rec.reservation_id.expect("a reservation")
        })
        .collect();
    r.take_station_messages();
    let out = r.tick(NOW + 24 * 3_600_000);
    assert!(out.is_empty(), "{out:?}");
    let cancelled: Vec<String> = r
        .take_station_messages()
        .iter()
        .map(|o| {
            let m: StationReservation = decode(&o.payload).unwrap();
            assert_eq!(m.action, StationReservationAction::Cancel);
            m.reservation_id
        })
        .collect();
    ids.sort();
    assert_eq!(cancelled, ids);
}
