//! OCPP gateways' presence, without a broker: while a gateway is offline (its last
//! will), every station whose status names it is offline in the fog, whatever its
//! retained status says; a plain station is not affected.

mod driver;

use driver::Driven;
use fog_server::planner::PlannerParams;
use fog_server::region::Region;
use protocol::{
    GatewayStatus, Recommendation, RecommendationStatus, StationState, StationStatus, decode,
    encode, topics,
};

const NOW: u64 = 1_700_000_000_000;
const GATEWAY: &str = "ocpp-north";

fn ocpp_station(id: &str, km_north: f64) -> StationStatus {
    StationStatus {
        takes_reservations: true,
        gateway: Some(GATEWAY.into()),
        ..testkit::messages::station(id, km_north / 111.19, 0.0, 2, 50.0)
    }
}

fn region() -> Driven {
    let mut r = Driven::from(Region::new("north", PlannerParams::default()));
    r.reroute.enabled = false;
    r
}

fn status(r: &mut Driven, s: &StationStatus) {
    let topic = topics::station_status("north", &s.station_id);
    assert!(r.handle(&topic, &encode(s), NOW).is_none());
}

fn gateway(r: &mut Driven, online: bool) {
    let g = GatewayStatus {
        v: 1,
        gateway_id: GATEWAY.into(),
        online,
        ts_ms: None,
    };
    let topic = topics::gateway_status("north", GATEWAY);
    assert!(r.handle(&topic, &encode(&g), NOW).is_none());
}

fn state(r: &Driven, id: &str) -> StationState {
    let slot = r.planner.stations.slot_of(id).expect("known station");
    r.planner.stations.get(slot).expect("a station").state
}

fn ask(r: &mut Driven, vehicle: &str, id: &str) -> Recommendation {
    let request = testkit::messages::request(id, 0.0, 0.0, 0.4);
    let out = r
        .handle(&topics::request("north", vehicle), &encode(&request), NOW)
        .expect("an answer");
    decode(&out.payload).unwrap()
}

fn station_of(rec: &Recommendation) -> Option<&str> {
    rec.station.as_ref().map(|s| s.station_id.as_str())
}

#[test]
fn a_dead_gateway_takes_its_stations_offline_and_frees_their_slots() {
    let mut r = region();
    status(&mut r, &ocpp_station("CP-1", 1.0));
    status(
        &mut r,
        &testkit::messages::station("plain", 5.0 / 111.19, 0.0, 2, 50.0),
    );
    let rec = ask(&mut r, "car-1", "r-1");
    assert_eq!(station_of(&rec), Some("CP-1"));
    assert_eq!(r.planner.active_reservations(), 1);
    r.take_station_messages();

    // The broker publishes the gateway's last will: car-1 is planned again, at the
    // plain station, and told so before it arrives.
    let g = GatewayStatus {
        v: 1,
        gateway_id: GATEWAY.into(),
        online: false,
        ts_ms: None,
    };
    let out = r
        .handle(&topics::gateway_status("north", GATEWAY), &encode(&g), NOW)
        .expect("a revised answer for car-1");
    assert_eq!(out.topic, topics::recommendation("north", "car-1"));
    let revised: Recommendation = decode(&out.payload).unwrap();
    assert!(revised.revised);
    assert_eq!(revised.request_id, "r-1");
    assert_eq!(station_of(&revised), Some("plain"));
    assert_eq!(state(&r, "CP-1"), StationState::Offline);
    assert_eq!(state(&r, "plain"), StationState::Available);
    assert_eq!(
        r.planner.active_reservations(),
        1,
        "CP-1's slot is released"
    );
    assert!(
        r.planner
            .reservation_of("car-1")
            .is_some_and(|res| res.station_id == "plain")
    );
    let rec = ask(&mut r, "car-2", "r-2");
    assert_eq!(rec.status, RecommendationStatus::Assigned);
    assert_eq!(station_of(&rec), Some("plain"), "never the dead gateway's");

    // A status still on its way from the gateway does not bring the station back.
    status(&mut r, &ocpp_station("CP-1", 1.0));
    assert_eq!(state(&r, "CP-1"), StationState::Offline);

    // The gateway is back: its stations count again once it says how they are.
    gateway(&mut r, true);
    assert_eq!(state(&r, "CP-1"), StationState::Offline);
    status(&mut r, &ocpp_station("CP-1", 1.0));
    assert_eq!(state(&r, "CP-1"), StationState::Available);
    let rec = ask(&mut r, "car-3", "r-3");
    assert_eq!(station_of(&rec), Some("CP-1"));
}

#[test]
fn retained_messages_in_either_order_agree_after_a_fog_restart() {
    // The will arrived before the fog started, the stale "available" after it.
    let mut r = region();
    gateway(&mut r, false);
    status(&mut r, &ocpp_station("CP-1", 1.0));
    assert_eq!(state(&r, "CP-1"), StationState::Offline);
    let rec = ask(&mut r, "car-1", "r-1");
    assert_ne!(station_of(&rec), Some("CP-1"));

    // The other way round.
    let mut r = region();
    status(&mut r, &ocpp_station("CP-1", 1.0));
    gateway(&mut r, false);
    assert_eq!(state(&r, "CP-1"), StationState::Offline);
}

#[test]
fn another_gateway_and_a_cleared_presence_leave_stations_alone() {
    let mut r = region();
    status(&mut r, &ocpp_station("CP-1", 1.0));
    let other = GatewayStatus {
        v: 1,
        gateway_id: "ocpp-other".into(),
        online: false,
        ts_ms: None,
    };
    let topic = topics::gateway_status("north", "ocpp-other");
    assert!(r.handle(&topic, &encode(&other), NOW).is_none());
    assert_eq!(state(&r, "CP-1"), StationState::Available);

    gateway(&mut r, false);
    // The retained presence is cleared: nothing is known of the gateway any more.
    let topic = topics::gateway_status("north", GATEWAY);
    assert!(r.handle(&topic, b"", NOW).is_none());
    status(&mut r, &ocpp_station("CP-1", 1.0));
    assert_eq!(state(&r, "CP-1"), StationState::Available);

    // A malformed presence is refused and counted; nothing changes.
    assert!(r.handle(&topic, b"{\"v\":1}", NOW).is_none());
    assert_eq!(state(&r, "CP-1"), StationState::Available);
    assert_eq!(
        r.metrics()
            .invalid_messages
            .get_or_create(&fog_server::metrics::KindLabel { kind: "gateway" })
            .get(),
        1
    );
}
