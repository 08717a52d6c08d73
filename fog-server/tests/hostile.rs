//! Whatever a device (or an impostor) sends, the region never panics: a request gets
//! exactly one well-formed answer when its topic names a vehicle, everything else is
//! dropped and counted — thousands of generated cases on every test run.

mod driver;

use driver::Driven;
use fog_server::planner::PlannerParams;
use fog_server::region::Region;
use proptest::prelude::*;
use protocol::fog::FogMessage;
use protocol::{Recommendation, RecommendationStatus, encode, topics};

const NOW: u64 = 1_700_000_000_000;

fn region() -> Driven {
    let mut r = Driven::from(Region::new("north", PlannerParams::default()));
    r.reroute.enabled = false;
    for i in 0..5 {
        let id = format!("n-{i}");
        let s = testkit::messages::station(&id, -12.25 + f64::from(i) * 0.01, -38.95, 2, 50.0);
        r.handle(&topics::station_status("north", &id), &encode(&s), NOW);
    }
    r
}

/// Topics a client could publish to (some valid, some not).
fn topic() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        "[A-Za-z0-9_-]{1,8}",
        ".{0,80}",
        Just(String::new()),
        Just("+".to_owned()),
        Just("a b".to_owned()),
    ];
    (id, 0..8u8).prop_map(|(id, kind)| match kind {
        0 => format!("ev/north/vehicles/{id}/request"),
        1 => format!("ev/north/vehicles/{id}/reservation"),
        2 => format!("ev/north/vehicles/{id}/telemetry"),
        3 => format!("ev/north/stations/{id}/status"),
        4 => format!("ev/north/vehicles/{id}/request/extra"),
        5 => FogMessage::Handoff.regional_topic().replace("handoff", &id),
        6 => FogMessage::RerouteReply.regional_topic(),
        _ => FogMessage::Handoff.regional_topic(),
    })
}

/// JSON numbers no device should send.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| format!("{f:e}")),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("NaN".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-0".to_owned()),
        Just("\"0.5\"".to_owned()),
        Just("null".to_owned()),
        (-200.0..200.0f64).prop_map(|f| f.to_string()),
    ]
}

/// Request-shaped payloads with hostile values.
fn request_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(1u64), any::<u64>()],
        "[A-Za-z0-9_ -]{0,70}",
        number(),
        number(),
        number(),
        number(),
        number(),
        number(),
    )
        .prop_map(|(v, id, lat, lon, soc, kwh, per_km, target)| {
            format!(
                r#"{{"v":{v},"request_id":"{id}","lat":{lat},"lon":{lon},"soc":{soc},"battery_kwh":{kwh},"kwh_per_km":{per_km},"target_soc":{target}}}"#
            )
            .into_bytes()
        })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        request_like(),
        request_like().prop_map(|p| p[..p.len() / 2].to_vec()),
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"null".to_vec()),
        Just(vec![b'{'; 20_000]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn no_input_makes_the_region_panic_or_answer_badly(topic in topic(), payload in payload()) {
        let mut r = region();
        let out = r.handle(&topic, &payload, NOW);
        if let Some(out) = out {
            prop_assert!(
                out.topic.ends_with("/recommendation") || out.topic.starts_with("fog/up/"),
                "unexpected publish to {}", out.topic
            );
            if out.topic.ends_with("/recommendation") {
                let rec: Recommendation = serde_json::from_slice(&out.payload).unwrap();
                prop_assert_eq!(rec.v, 1);
                match rec.status {
                    RecommendationStatus::Rejected => {
                        prop_assert!(rec.reason.is_some() && rec.station.is_none());
                    }
                    RecommendationStatus::Assigned => {
                        prop_assert!(rec.station.is_some() && rec.reservation_id.is_some());
                    }
                    _ => prop_assert!(rec.reason.is_some()),
                }
            }
        }
        // The region keeps serving.
        let _ = r.tick(NOW + 1000);
        prop_assert!(r.planner.stations.len() <= 6);
    }
}

/// The documented reaction to each hostile input (docs/reliability.md).
#[test]
fn each_hostile_input_gets_its_documented_reaction() {
    let mut r = region();
    let rejected = |out: Option<fog_server::region::Outgoing>, why: &str| {
        let out = out.unwrap_or_else(|| panic!("{why}: no answer"));
        let rec: Recommendation = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(rec.status, RecommendationStatus::Rejected, "{why}: {rec:?}");
        rec.reason.unwrap_or_default()
    };
    let req = "ev/north/vehicles/car-1/request";
    assert!(rejected(r.handle(req, b"\x00\x01\x02", NOW), "random bytes").contains("JSON"));
    assert!(
        rejected(
            r.handle(req, br#"{"v":1,"request_id":"r"#, NOW),
            "truncated"
        )
        .contains("JSON")
    );
    let inf = br#"{"v":1,"request_id":"r","lat":0,"lon":0,"soc":0.5,"battery_kwh":1e400,"kwh_per_km":0.2,"target_soc":0.8}"#;
    let why = rejected(r.handle(req, inf, NOW), "infinity");
    assert!(why.contains("battery_kwh") || why.contains("JSON"), "{why}");
    // A topic whose vehicle id is malformed names no vehicle: dropped, counted.
    assert!(
        r.handle("ev/north/vehicles/a b/request", b"{}", NOW)
            .is_none()
    );
    assert!(r.handle("ev/north/vehicles//request", b"{}", NOW).is_none());
    // Garbage on the other device topics: dropped, counted, nothing published.
    assert!(
        r.handle("ev/north/vehicles/car-1/reservation", b"\xff", NOW)
            .is_none()
    );
    assert!(
        r.handle("ev/north/vehicles/car-1/telemetry", b"[]", NOW)
            .is_none()
    );
    assert!(
        r.handle("ev/north/stations/n-9/status", b"{\"v\":1", NOW)
            .is_none()
    );
    assert_eq!(
        r.planner.stations.len(),
        5,
        "no station was added by garbage"
    );
    // Another region's topic is not ours.
    assert!(
        r.handle("ev/south/vehicles/car-1/request", b"{}", NOW)
            .is_none()
    );
}
