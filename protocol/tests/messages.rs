//! Every message round-trips, and every validation rule refuses what it should with the
//! error variant that says why and a message that names the field. Property tests make
//! sure that no input, however broken, makes `decode` panic.

use std::fmt::Debug;

use proptest::prelude::*;
use protocol::validate::limits;
use protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Valid messages
// ---------------------------------------------------------------------------------

fn station() -> StationStatus {
    StationStatus {
        v: 1,
        station_id: "north-001".into(),
        lat: Some(-12.2664),
        lon: Some(-38.9663),
        chargers: Some(4),
        power_kw: Some(50.0),
        occupied: 2,
        queue: 1,
        state: StationState::Available,
        ts_ms: Some(1_732_400_000_000),
        takes_reservations: false,
        gateway: None,
    }
}

fn request() -> ChargeRequest {
    ChargeRequest {
        v: 1,
        request_id: "r-42".into(),
        lat: -12.25,
        lon: -38.95,
        soc: 0.18,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: Some(1_732_400_000_000),
    }
}

fn recommendation() -> Recommendation {
    Recommendation {
        v: 1,
        request_id: "r-42".into(),
        status: RecommendationStatus::Assigned,
        station: Some(StationRef {
            station_id: "north-003".into(),
            region: "north".into(),
            lat: -12.26,
            lon: -38.95,
        }),
        distance_km: Some(2.4),
        eta_s: Some(260),
        wait_s: Some(300),
        charge_s: Some(1900),
        reservation_id: Some("north-3f9c".into()),
        expires_ms: Some(1_732_400_600_000),
        reason: None,
        served_by: Some("north".into()),
        data_age_ms: Some(120),
        revised: false,
    }
}

fn reservation() -> ReservationUpdate {
    ReservationUpdate {
        v: 1,
        reservation_id: "north-3f9c".into(),
        action: ReservationAction::Arrived,
    }
}

fn telemetry() -> Telemetry {
    Telemetry {
        v: 1,
        lat: -12.25,
        lon: -38.95,
        soc: 0.55,
        speed_kmh: Some(38.0),
        ts_ms: Some(1_732_400_000_000),
    }
}

fn roundtrip<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    msg.validate()
        .unwrap_or_else(|e| panic!("{msg:?} is invalid: {e}"));
    let bytes = encode(msg);
    let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
    assert_eq!(&back, msg);
    assert_eq!(encode(&back), bytes, "encoding is stable");
}

#[test]
fn every_message_round_trips() {
    roundtrip(&station());
    roundtrip(&request());
    roundtrip(&recommendation());
    roundtrip(&reservation());
    roundtrip(&telemetry());
}

#[test]
fn every_variant_round_trips() {
    for state in [
        StationState::Available,
        StationState::Full,
        StationState::Faulted,
        StationState::Offline,
    ] {
        roundtrip(&StationStatus { state, ..station() });
    }
    let last_will = StationStatus {
        v: 1,
        station_id: "x".into(),
        lat: None,
        lon: None,
        chargers: None,
        power_kw: None,
        occupied: 0,
        queue: 0,
        state: StationState::Offline,
        ts_ms: None,
        takes_reservations: false,
        gateway: None,
    };
    roundtrip(&last_will);
    roundtrip(&ChargeRequest {
        ts_ms: None,
        ..request()
    });
    roundtrip(&Recommendation {
        status: RecommendationStatus::Rerouted,
        reason: Some("north saturated; reserved in south".into()),
        ..recommendation()
    });
    for status in [
        RecommendationStatus::Unavailable,
        RecommendationStatus::Rejected,
    ] {
        roundtrip(&Recommendation::refusal("r-42", status, "why", "north"));
    }
    roundtrip(&Recommendation::refusal(
        "",
        RecommendationStatus::Rejected,
        "no request id",
        "north",
    ));
    roundtrip(&ReservationUpdate {
        action: ReservationAction::Cancel,
        ..reservation()
    });
    roundtrip(&Telemetry {
        speed_kmh: None,
        ts_ms: None,
        ..telemetry()
    });
}

#[test]
fn optional_fields_are_left_out_when_absent() {
    let refusal = Recommendation::refusal("r-1", RecommendationStatus::Unavailable, "far", "n");
    let v: Value = serde_json::from_slice(&encode(&refusal)).unwrap();
    assert_eq!(
        v,
        json!({"v": 1, "request_id": "r-1", "status": "unavailable", "reason": "far", "served_by": "n"})
    );
}

#[test]
fn design_examples_decode() {
    let status = br#"{"v":1,"station_id":"north-001","lat":-12.2664,"lon":-38.9663,"chargers":4,
 "power_kw":50.0,"occupied":2,"queue":1,"state":"available","ts_ms":1732400000000}"#;
    assert_eq!(decode::<StationStatus>(status).unwrap(), station());
    let req =
        br#"{"v":1,"request_id":"r-42","lat":-12.25,"lon":-38.95,"soc":0.18,"battery_kwh":60.0,
 "kwh_per_km":0.18,"target_soc":0.8,"ts_ms":1732400000000}"#;
    assert_eq!(decode::<ChargeRequest>(req).unwrap(), request());
    let rec = br#"{"v":1,"request_id":"r-42","status":"assigned",
 "station":{"station_id":"north-003","region":"north","lat":-12.26,"lon":-38.95},
 "distance_km":2.4,"eta_s":260,"wait_s":300,"charge_s":1900,
 "reservation_id":"north-3f9c","expires_ms":1732400600000,
 "served_by":"north","data_age_ms":120}"#;
    assert_eq!(decode::<Recommendation>(rec).unwrap(), recommendation());
    let res = br#"{"v":1,"reservation_id":"north-3f9c","action":"arrived"}"#;
    assert_eq!(decode::<ReservationUpdate>(res).unwrap(), reservation());
    let tel =
        br#"{"v":1,"lat":-12.25,"lon":-38.95,"soc":0.55,"speed_kmh":38.0,"ts_ms":1732400000000}"#;
    assert_eq!(decode::<Telemetry>(tel).unwrap(), telemetry());
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = json_of(&request());
    v["colour"] = json!("red");
    v["future"] = json!({"nested": [1, 2, {"x": null}]});
    assert_eq!(decode::<ChargeRequest>(&bytes(&v)).unwrap(), request());
}

#[test]
fn offline_last_will_is_accepted() {
    let s = decode::<StationStatus>(br#"{"v":1,"station_id":"x","state":"offline"}"#).unwrap();
    assert_eq!(s.state, StationState::Offline);
    assert_eq!((s.lat, s.chargers, s.occupied, s.queue), (None, None, 0, 0));
    assert!(!s.state.is_in_service());
    // A faulted station may say just as little.
    decode::<StationStatus>(br#"{"v":1,"station_id":"x","state":"faulted"}"#).unwrap();
}

#[test]
fn range_is_soc_times_battery_over_consumption() {
    let r = request();
    assert!((r.range_km() - 60.0).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------
// Helpers for refusals
// ---------------------------------------------------------------------------------

fn json_of<T: Serialize>(msg: &T) -> Value {
    serde_json::from_slice(&encode(msg)).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// `base` with `path` (dot-separated for nested fields) set to `value`.
fn with(base: &Value, path: &str, value: Value) -> Vec<u8> {
    let mut v = base.clone();
    let mut slot = &mut v;
    for part in path.split('.') {
        slot = &mut slot[part];
    }
    *slot = value;
    bytes(&v)
}

fn without(base: &Value, field: &str) -> Vec<u8> {
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove(field);
    bytes(&v)
}

fn refused<T>(payload: &[u8]) -> ProtocolError
where
    T: DeserializeOwned + Validate + Debug,
{
    match decode::<T>(payload) {
        Ok(msg) => panic!(
            "accepted {:?} as {msg:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(300)])
        ),
        Err(e) => e,
    }
}

/// The error is `OutOfRange` for `field`, and its message names the field.
fn assert_out_of_range(e: &ProtocolError, field: &str) {
    match e {
        ProtocolError::OutOfRange { field: f, .. } => assert_eq!(*f, field, "{e}"),
        other => panic!("expected OutOfRange for {field}, got {other:?}"),
    }
    assert_names(e, field);
}

fn assert_invalid_id(e: &ProtocolError, field: &str) {
    match e {
        ProtocolError::InvalidId { field: f, .. } => assert_eq!(*f, field, "{e}"),
        other => panic!("expected InvalidId for {field}, got {other:?}"),
    }
    assert_names(e, field);
}

fn assert_json(e: &ProtocolError) -> &str {
    match e {
        ProtocolError::Json(msg) => msg,
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

fn assert_names(e: &ProtocolError, word: &str) {
    let text = e.to_string();
    assert!(text.contains(word), "{text:?} does not name {word:?}");
    assert!(text.len() < 300, "message too long: {text}");
}

// ---------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------

fn bad_ids() -> Vec<String> {
    vec![
        String::new(),
        "a".repeat(MAX_ID_LEN + 1),
        "a".repeat(1000),
        "car 7".into(),
        " car7".into(),
        "car7\n".into(),
        "car\t7".into(),
        "car/7".into(),
        "car+7".into(),
        "car#7".into(),
        "+".into(),
        "#".into(),
        "car.7".into(),
        "car:7".into(),
        "car\"7".into(),
        "car\\7".into(),
        "car\u{0}7".into(),
        "café".into(),
        "Ünï".into(),
        "車".into(),
        "🚗".into(),
        "car\u{200b}7".into(),
    ]
}

#[test]
fn good_ids_pass() {
    for id in [
        "a",
        "Z",
        "0",
        "_",
        "-",
        "north-001",
        "ev_000123",
        &"a".repeat(MAX_ID_LEN),
        "ABCxyz019_-",
    ] {
        validate_id("station_id", id).unwrap();
        decode::<ChargeRequest>(&with(&json_of(&request()), "request_id", json!(id))).unwrap();
    }
}

#[test]
fn bad_ids_are_refused_naming_the_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json_of(&request()), "request_id", "ChargeRequest"),
        (json_of(&station()), "station_id", "StationStatus"),
        (
            json_of(&reservation()),
            "reservation_id",
            "ReservationUpdate",
        ),
        (json_of(&recommendation()), "request_id", "Recommendation"),
        (
            json_of(&recommendation()),
            "reservation_id",
            "Recommendation",
        ),
        (
            json_of(&recommendation()),
            "station.station_id",
            "Recommendation",
        ),
        (
            json_of(&recommendation()),
            "station.region",
            "Recommendation",
        ),
    ];
    for id in bad_ids() {
        for (base, field, kind) in &cases {
            // An empty request id is allowed in exactly one place: a rejected answer.
            let payload = with(base, field, json!(id));
            let e = match *kind {
                "ChargeRequest" => refused::<ChargeRequest>(&payload),
                "StationStatus" => refused::<StationStatus>(&payload),
                "ReservationUpdate" => refused::<ReservationUpdate>(&payload),
                _ => refused::<Recommendation>(&payload),
            };
            assert_invalid_id(&e, field);
            if let ProtocolError::InvalidId { value, .. } = &e {
                assert!(value.chars().count() <= 80, "the echoed value is truncated");
            }
        }
    }
}

#[test]
fn empty_request_id_only_in_rejected_answers() {
    let rejected = Recommendation::refusal("", RecommendationStatus::Rejected, "bad", "north");
    decode::<Recommendation>(&encode(&rejected)).unwrap();
    for status in ["assigned", "rerouted", "unavailable"] {
        let mut v = json_of(&recommendation());
        v["status"] = json!(status);
        v["request_id"] = json!("");
        assert_invalid_id(&refused::<Recommendation>(&bytes(&v)), "request_id");
    }
    // A rejected answer with a request id still needs a valid one.
    let mut v = json_of(&rejected);
    v["request_id"] = json!("r 1");
    assert_invalid_id(&refused::<Recommendation>(&bytes(&v)), "request_id");
}

#[test]
fn validate_id_direct() {
    for id in bad_ids() {
        let e = validate_id("vehicle_id", &id).unwrap_err();
        assert_invalid_id(&e, "vehicle_id");
    }
}

// ---------------------------------------------------------------------------------
// Numbers and ranges
// ---------------------------------------------------------------------------------

#[test]
fn positions_out_of_range_are_refused() {
    let lat_bad = [90.000_001, -90.000_001, 91.0, -180.0, 1e10, -1e300];
    let lon_bad = [180.000_001, -180.000_001, 181.0, 360.0, -1e300];
    let req = json_of(&request());
    let tel = json_of(&telemetry());
    let sta = json_of(&station());
    let rec = json_of(&recommendation());
    for x in lat_bad {
        assert_out_of_range(
            &refused::<ChargeRequest>(&with(&req, "lat", json!(x))),
            "lat",
        );
        assert_out_of_range(&refused::<Telemetry>(&with(&tel, "lat", json!(x))), "lat");
        assert_out_of_range(
            &refused::<StationStatus>(&with(&sta, "lat", json!(x))),
            "lat",
        );
        assert_out_of_range(
            &refused::<Recommendation>(&with(&rec, "station.lat", json!(x))),
            "lat",
        );
    }
    for x in lon_bad {
        assert_out_of_range(
            &refused::<ChargeRequest>(&with(&req, "lon", json!(x))),
            "lon",
        );
        assert_out_of_range(&refused::<Telemetry>(&with(&tel, "lon", json!(x))), "lon");
        assert_out_of_range(
            &refused::<StationStatus>(&with(&sta, "lon", json!(x))),
            "lon",
        );
        assert_out_of_range(
            &refused::<Recommendation>(&with(&rec, "station.lon", json!(x))),
            "lon",
        );
    }
    // The edges are inside.
    for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (-0.0, -0.0)] {
        let mut v = req.clone();
        v["lat"] = json!(lat);
        v["lon"] = json!(lon);
        decode::<ChargeRequest>(&bytes(&v)).unwrap();
    }
}

#[test]
fn state_of_charge_out_of_range_is_refused() {
    let req = json_of(&request());
    for field in ["soc", "target_soc"] {
        for x in [-0.000_001, -1.0, 1.000_001, 2.0, 100.0] {
            assert_out_of_range(
                &refused::<ChargeRequest>(&with(&req, field, json!(x))),
                field,
            );
        }
        for x in [0.0, 1.0, 0.5] {
            decode::<ChargeRequest>(&with(&req, field, json!(x))).unwrap();
        }
    }
    let tel = json_of(&telemetry());
    for x in [-0.1, 1.1] {
        assert_out_of_range(&refused::<Telemetry>(&with(&tel, "soc", json!(x))), "soc");
    }
}

#[test]
fn battery_and_consumption_must_be_positive_and_sane() {
    let req = json_of(&request());
    for (field, max) in [
        ("battery_kwh", limits::MAX_BATTERY_KWH),
        ("kwh_per_km", limits::MAX_KWH_PER_KM),
    ] {
        for x in [0.0, -0.0, -1.0, -1e300, max * 1.000_001, max + 1.0, 1e300] {
            let e = refused::<ChargeRequest>(&with(&req, field, json!(x)));
            assert_out_of_range(&e, field);
        }
        // 1e-400 is a valid JSON number that reads as 0.
        let payload = String::from_utf8(with(&req, field, json!(1)))
            .unwrap()
            .replace(&format!("\"{field}\":1"), &format!("\"{field}\":1e-400"));
        assert_out_of_range(&refused::<ChargeRequest>(payload.as_bytes()), field);
        for x in [1e-9, 1.0, max] {
            decode::<ChargeRequest>(&with(&req, field, json!(x))).unwrap();
        }
    }
    // Zero says "above zero", and a huge value stays short.
    let e = refused::<ChargeRequest>(&with(&req, "battery_kwh", json!(0.0)));
    assert_eq!(e.to_string(), "battery_kwh = 0 is out of range (0, 1000]");
    let e = refused::<ChargeRequest>(&with(&req, "battery_kwh", json!(1e300)));
    assert_eq!(
        e.to_string(),
        "battery_kwh = 1e300 is out of range (0, 1000]"
    );
    let e = refused::<ChargeRequest>(&with(&req, "soc", json!(1.8)));
    assert_eq!(e.to_string(), "soc = 1.8 is out of range [0, 1]");
}

#[test]
fn station_numbers_are_checked() {
    let sta = json_of(&station());
    let e = refused::<StationStatus>(&with(&sta, "chargers", json!(0)));
    assert_out_of_range(&e, "chargers");
    let e = refused::<StationStatus>(&with(&sta, "chargers", json!(limits::MAX_CHARGERS + 1)));
    assert_out_of_range(&e, "chargers");
    for x in [0.0, -22.0, limits::MAX_POWER_KW + 1.0] {
        let e = refused::<StationStatus>(&with(&sta, "power_kw", json!(x)));
        assert_out_of_range(&e, "power_kw");
    }
    let e = refused::<StationStatus>(&with(&sta, "queue", json!(limits::MAX_QUEUE + 1)));
    assert_out_of_range(&e, "queue");

    // occupied ≤ chargers
    let e = refused::<StationStatus>(&with(&sta, "occupied", json!(5)));
    assert_eq!(
        e,
        ProtocolError::OccupiedExceedsChargers {
            occupied: 5,
            chargers: 4
        }
    );
    assert_names(&e, "occupied");
    assert_names(&e, "chargers");
    decode::<StationStatus>(&with(&sta, "occupied", json!(4))).unwrap();
    // Also when the station is not in service.
    let mut off = sta.clone();
    off["state"] = json!("faulted");
    off["occupied"] = json!(9);
    assert!(matches!(
        refused::<StationStatus>(&bytes(&off)),
        ProtocolError::OccupiedExceedsChargers { .. }
    ));
}

#[test]
fn other_ranges_are_checked() {
    let tel = json_of(&telemetry());
    for x in [-1.0, limits::MAX_SPEED_KMH + 0.1] {
        assert_out_of_range(
            &refused::<Telemetry>(&with(&tel, "speed_kmh", json!(x))),
            "speed_kmh",
        );
    }
    let rec = json_of(&recommendation());
    for x in [-0.1, 40_100.1] {
        assert_out_of_range(
            &refused::<Recommendation>(&with(&rec, "distance_km", json!(x))),
            "distance_km",
        );
    }
}

// ---------------------------------------------------------------------------------
// Central's heartbeat and its offers
// ---------------------------------------------------------------------------------

fn heartbeat() -> fog::CentralHeartbeat {
    fog::CentralHeartbeat {
        v: 1,
        started_ms: 1_796_140_000_000,
        seq: 42,
        ts_ms: 1_796_140_041_000,
        period_ms: 1000,
        open_regions: vec!["east".into(), "middle".into()],
        nearest_open_km: Some(3.2),
        offers: vec![
            fog::Offer {
                region: "middle".into(),
                station_id: "middle-s0007".into(),
                lat: -12.91,
                lon: -38.47,
                power_kw: 150.0,
                wait_s: 0,
            },
            fog::Offer {
                region: "east".into(),
                station_id: "east-s0002".into(),
                lat: -12.95,
                lon: -38.41,
                power_kw: 50.0,
                wait_s: 240,
            },
        ],
    }
}

#[test]
fn a_heartbeat_round_trips_with_and_without_offers() {
    let hb = heartbeat();
    roundtrip(&hb);
    let json = json_of(&hb);
    assert_eq!(json["offers"][1]["wait_s"], 240);
    assert_eq!(json["offers"][0]["station_id"], "middle-s0007");
    // No offers: the field is left out, and a heartbeat without it (an older
    // central's) decodes with none.
    let bare = fog::CentralHeartbeat {
        offers: Vec::new(),
        ..heartbeat()
    };
    roundtrip(&bare);
    assert!(json_of(&bare).get("offers").is_none());
    let old = decode::<fog::CentralHeartbeat>(&without(&json, "offers")).unwrap();
    assert_eq!(old, bare);
}

#[test]
fn a_heartbeat_with_a_bad_offer_is_refused_naming_the_field() {
    let base = json_of(&heartbeat());
    let offer = |field: &str, value: Value| {
        let mut v = base.clone();
        v["offers"][1][field] = value;
        bytes(&v)
    };
    let refuse = |payload: Vec<u8>| refused::<fog::CentralHeartbeat>(&payload);
    assert_out_of_range(&refuse(offer("lat", json!(91))), "lat");
    assert_out_of_range(&refuse(offer("lon", json!(-180.5))), "lon");
    assert_out_of_range(&refuse(offer("power_kw", json!(0))), "power_kw");
    assert_out_of_range(&refuse(offer("power_kw", json!(-50))), "power_kw");
    assert_out_of_range(
        &refuse(offer("power_kw", json!(limits::MAX_POWER_KW + 1.0))),
        "power_kw",
    );
    assert_invalid_id(&refuse(offer("station_id", json!("s 1"))), "station_id");
    assert_invalid_id(&refuse(offer("region", json!(""))), "region");
    // A negative wait or a missing field is not an offer at all.
    assert_json(&refuse(offer("wait_s", json!(-1))));
    let mut missing = base.clone();
    missing["offers"][0].as_object_mut().unwrap().remove("lon");
    assert!(assert_json(&refuse(bytes(&missing))).contains("lon"));
}

#[test]
fn in_service_stations_need_position_chargers_and_power() {
    let sta = json_of(&station());
    for state in ["available", "full"] {
        for field in ["lat", "lon", "chargers", "power_kw"] {
            let mut v = sta.clone();
            v["state"] = json!(state);
            v.as_object_mut().unwrap().remove(field);
            let e = refused::<StationStatus>(&bytes(&v));
            match &e {
                ProtocolError::MissingField { field: f, state: s } => {
                    assert_eq!((*f, *s), (field, state));
                }
                other => panic!("expected MissingField {field}, got {other:?}"),
            }
            assert_names(&e, field);
            assert_names(&e, state);
        }
    }
    // Out of service: no position needed, but never half of one.
    for state in ["faulted", "offline"] {
        let mut v = json!({"v": 1, "station_id": "x", "state": state, "lat": 1.0});
        let e = refused::<StationStatus>(&bytes(&v));
        assert!(
            matches!(e, ProtocolError::MissingField { field: "lon", .. }),
            "{e:?}"
        );
        v.as_object_mut().unwrap().remove("lat");
        v["lon"] = json!(1.0);
        let e = refused::<StationStatus>(&bytes(&v));
        assert!(
            matches!(e, ProtocolError::MissingField { field: "lat", .. }),
            "{e:?}"
        );
    }
}

#[test]
fn assigned_and_rerouted_need_a_station() {
    let rec = json_of(&recommendation());
    for status in ["assigned", "rerouted"] {
        let mut v = rec.clone();
        v["status"] = json!(status);
        v.as_object_mut().unwrap().remove("station");
        let e = refused::<Recommendation>(&bytes(&v));
        assert_eq!(
            e,
            ProtocolError::MissingField {
                field: "station",
                state: if status == "assigned" {
                    "assigned"
                } else {
                    "rerouted"
                }
            }
        );
        assert_names(&e, "station");
    }
}

// ---------------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------------

#[test]
fn another_version_is_a_version_error_whatever_else_is_wrong() {
    let weird = [
        r#"{"v":2}"#,
        r#"{"v":2,"lat":"north","soc":[1,2],"request_id":7}"#,
        r#"{"request_id":"r 1","v":2,"lat":999}"#,
        r#"{"v":2,"request_id":"r-1","lat":999,"lon":0,"soc":5,"battery_kwh":-1,"kwh_per_km":0,"target_soc":9}"#,
    ];
    for p in weird {
        assert_eq!(
            refused::<ChargeRequest>(p.as_bytes()),
            ProtocolError::Version(2),
            "{p}"
        );
        assert_eq!(
            refused::<StationStatus>(p.as_bytes()),
            ProtocolError::Version(2)
        );
        assert_eq!(
            refused::<Recommendation>(p.as_bytes()),
            ProtocolError::Version(2)
        );
        assert_eq!(
            refused::<ReservationUpdate>(p.as_bytes()),
            ProtocolError::Version(2)
        );
        assert_eq!(
            refused::<Telemetry>(p.as_bytes()),
            ProtocolError::Version(2)
        );
    }
    // A well-formed message of another version.
    for v in [
        0_u64,
        2,
        3,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::MAX,
    ] {
        let e = refused::<ChargeRequest>(&with(&json_of(&request()), "v", json!(v)));
        assert_eq!(e, ProtocolError::Version(v));
        assert_names(&e, &format!("v={v}"));
    }
}

#[test]
fn missing_or_malformed_version_is_a_json_error() {
    let req = json_of(&request());
    let e = refused::<ChargeRequest>(&without(&req, "v"));
    assert!(assert_json(&e).contains("missing field `v`"), "{e}");
    for v in [json!("1"), json!(1.0), json!(-1), json!(null), json!([1])] {
        let e = refused::<ChargeRequest>(&with(&req, "v", v.clone()));
        assert_json(&e);
    }
    let e = refused::<StationStatus>(br#"{"station_id":"x","state":"offline"}"#);
    assert!(assert_json(&e).contains("missing field `v`"));
}

// ---------------------------------------------------------------------------------
// Size and syntax
// ---------------------------------------------------------------------------------

/// A valid request padded with spaces to exactly `len` bytes.
fn padded_request(len: usize) -> Vec<u8> {
    let mut p = encode(&request());
    assert!(p.len() <= len);
    p.resize(len, b' ');
    p
}

#[test]
fn payloads_over_16_kib_are_too_large() {
    assert_eq!(MAX_PAYLOAD_BYTES, 16 * 1024);
    decode::<ChargeRequest>(&padded_request(MAX_PAYLOAD_BYTES)).unwrap();
    for len in [MAX_PAYLOAD_BYTES + 1, 100_000, 1 << 20] {
        let e = refused::<ChargeRequest>(&padded_request(len));
        assert_eq!(
            e,
            ProtocolError::TooLarge {
                size: len,
                max: MAX_PAYLOAD_BYTES
            }
        );
        assert_names(&e, &len.to_string());
        assert_names(&e, "16384");
    }
    // Size is checked first: even garbage or another version is just too large.
    let garbage = vec![0xff_u8; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        refused::<StationStatus>(&garbage),
        ProtocolError::TooLarge { .. }
    ));
    let mut v2 = br#"{"v":2}"#.to_vec();
    v2.resize(MAX_PAYLOAD_BYTES + 1, b' ');
    assert!(matches!(
        refused::<Telemetry>(&v2),
        ProtocolError::TooLarge { .. }
    ));
    // A big string field inside the limit is a different story.
    let mut v = json_of(&request());
    v["comment"] = json!("x".repeat(MAX_PAYLOAD_BYTES));
    assert!(matches!(
        refused::<ChargeRequest>(&bytes(&v)),
        ProtocolError::TooLarge { .. }
    ));
}

type Refuse = fn(&[u8]) -> ProtocolError;

#[test]
fn every_truncation_is_a_json_error() {
    let cases: [(Vec<u8>, Refuse); 5] = [
        (encode(&request()), refused::<ChargeRequest>),
        (encode(&station()), refused::<StationStatus>),
        (encode(&recommendation()), refused::<Recommendation>),
        (encode(&reservation()), refused::<ReservationUpdate>),
        (encode(&telemetry()), refused::<Telemetry>),
    ];
    for (full, refuse) in cases {
        for cut in 0..full.len() {
            assert_json(&refuse(&full[..cut]));
        }
    }
    let e = refused::<ChargeRequest>(b"");
    assert!(assert_json(&e).contains("EOF"), "{e}");
}

#[test]
fn wrong_types_are_json_errors_that_locate_the_problem() {
    let req = json_of(&request());
    let cases = [
        ("lat", json!("-12.25")),
        ("lon", json!(true)),
        ("soc", json!(null)),
        ("battery_kwh", json!([60])),
        ("kwh_per_km", json!({"value": 0.18})),
        ("target_soc", json!("0.8")),
        ("request_id", json!(42)),
        ("request_id", json!(null)),
        ("ts_ms", json!(-5)),
        ("ts_ms", json!(1.5)),
        ("ts_ms", json!("1732400000000")),
    ];
    for (field, value) in cases {
        let e = refused::<ChargeRequest>(&with(&req, field, value.clone()));
        let msg = assert_json(&e);
        assert!(msg.contains("line 1 column"), "{field} = {value}: {msg}");
        assert!(msg.contains("invalid"), "{field} = {value}: {msg}");
    }
    let sta = json_of(&station());
    for (field, value) in [
        ("chargers", json!(-1)),
        ("chargers", json!(2.5)),
        ("chargers", json!(4_294_967_296_u64)),
        ("occupied", json!("2")),
        ("state", json!("broken")),
        ("state", json!("Available")),
    ] {
        let e = refused::<StationStatus>(&with(&sta, field, value));
        assert_json(&e);
    }
    let e = refused::<StationStatus>(&with(&sta, "state", json!("broken")));
    assert!(assert_json(&e).contains("unknown variant `broken`"));
    let e = refused::<ReservationUpdate>(&with(&json_of(&reservation()), "action", json!("done")));
    assert!(assert_json(&e).contains("unknown variant `done`"));
    let e = refused::<Recommendation>(&with(&json_of(&recommendation()), "status", json!(1)));
    assert_json(&e);
    // Not an object at all.
    for p in [&b"[]"[..], b"1", b"\"v\"", b"null", b"true", b"{}"] {
        assert_json(&refused::<ChargeRequest>(p));
    }
    // Missing required fields are named.
    for field in [
        "request_id",
        "lat",
        "lon",
        "soc",
        "battery_kwh",
        "kwh_per_km",
        "target_soc",
    ] {
        let e = refused::<ChargeRequest>(&without(&req, field));
        assert!(
            assert_json(&e).contains(&format!("missing field `{field}`")),
            "{e}"
        );
    }
}

#[test]
fn numbers_json_cannot_hold_are_json_errors() {
    let base = String::from_utf8(encode(&request())).unwrap();
    for (from, to) in [
        ("\"lat\":-12.25", "\"lat\":1e400"),
        ("\"lat\":-12.25", "\"lat\":-1e400"),
        ("\"soc\":0.18", "\"soc\":NaN"),
        ("\"soc\":0.18", "\"soc\":Infinity"),
        ("\"soc\":0.18", "\"soc\":-Infinity"),
        ("\"soc\":0.18", "\"soc\":.5"),
        ("\"soc\":0.18", "\"soc\":0x1"),
        ("\"soc\":0.18", "\"soc\":+0.5"),
        ("\"ts_ms\":1732400000000", "\"ts_ms\":18446744073709551616"),
        ("\"ts_ms\":1732400000000", "\"ts_ms\":1e400"),
    ] {
        assert!(base.contains(from), "{from}");
        let p = base.replace(from, to);
        let e = refused::<ChargeRequest>(p.as_bytes());
        assert_json(&e);
    }
    let p = base.replace("\"lat\":-12.25", "\"lat\":1e400");
    assert!(assert_json(&refused::<ChargeRequest>(p.as_bytes())).contains("number out of range"));
}

#[test]
fn random_bytes_and_invalid_utf8_are_json_errors() {
    let samples: [&[u8]; 9] = [
        b"\xff\xfe\xfd",
        b"\x00",
        b"\x00\x00\x00\x00",
        b"\xef\xbb\xbf{\"v\":1}",
        b"{\"v\":1,\"station_id\":\"\xff\",\"state\":\"offline\"}",
        b"{\"v\":1,\"station_id\":\"\xc3\x28\",\"state\":\"offline\"}",
        b"{\"v\":1,\"station_id\":\"\xed\xa0\x80\",\"state\":\"offline\"}",
        b"{\"v\":1,\"station_id\":\"x\",\"state\":\"offline\"}\xff",
        b"{\"v\":1,\"station_id\":\"\\ud800\",\"state\":\"offline\"}",
    ];
    for p in samples {
        assert_json(&refused::<StationStatus>(p));
    }
    // Trailing garbage, or two objects.
    assert_json(&refused::<StationStatus>(
        br#"{"v":1,"station_id":"x","state":"offline"} x"#,
    ));
    assert_json(&refused::<StationStatus>(
        br#"{"v":1,"station_id":"x","state":"offline"}{}"#,
    ));
    // Duplicate fields are refused, not silently resolved.
    assert_json(&refused::<StationStatus>(
        br#"{"v":1,"station_id":"x","station_id":"y","state":"offline"}"#,
    ));
    // Whitespace around the object is fine.
    decode::<StationStatus>(b" \n\t{\"v\":1,\"station_id\":\"x\",\"state\":\"offline\"}\r\n ")
        .unwrap();
}

#[test]
fn rejection_messages_stay_short() {
    // A rejected answer echoes the error; it must not balloon.
    let long = "a".repeat(10_000);
    let e = refused::<ChargeRequest>(&with(&json_of(&request()), "request_id", json!(long)));
    assert!(e.to_string().len() < 200, "{e}");
    let e = refused::<ChargeRequest>(&padded_request(1 << 20));
    assert!(e.to_string().len() < 200, "{e}");
}

// ---------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------

/// `[A-Za-z0-9_-]{1,64}`, built from a list (much faster than a regex strategy).
fn id() -> impl Strategy<Value = String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    proptest::collection::vec(proptest::sample::select(ALPHABET), 1..=MAX_ID_LEN)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

fn coord(max: f64) -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -max..=max,
        1 => Just(max),
        1 => Just(-max),
        1 => Just(0.0),
    ]
}

fn unit() -> impl Strategy<Value = f64> {
    prop_oneof![4 => 0.0..=1.0_f64, 1 => Just(0.0), 1 => Just(1.0)]
}

prop_compose! {
    fn valid_request()(
        request_id in id(),
        lat in coord(90.0),
        lon in coord(180.0),
        soc in unit(),
        target_soc in unit(),
        battery_kwh in prop_oneof![1e-6..=limits::MAX_BATTERY_KWH, Just(limits::MAX_BATTERY_KWH)],
        kwh_per_km in prop_oneof![1e-6..=limits::MAX_KWH_PER_KM, Just(limits::MAX_KWH_PER_KM)],
        ts_ms in proptest::option::of(any::<u64>()),
    ) -> ChargeRequest {
        ChargeRequest { v: 1, request_id, lat, lon, soc, battery_kwh, kwh_per_km, target_soc, ts_ms }
    }
}

fn state() -> impl Strategy<Value = StationState> {
    prop_oneof![
        Just(StationState::Available),
        Just(StationState::Full),
        Just(StationState::Faulted),
        Just(StationState::Offline),
    ]
}

prop_compose! {
    fn valid_station()(
        station_id in id(),
        lat in coord(90.0),
        lon in coord(180.0),
        chargers in 1..=limits::MAX_CHARGERS,
        occupied_share in 0.0..=1.0_f64,
        power_kw in 0.1..=limits::MAX_POWER_KW,
        queue in 0..=limits::MAX_QUEUE,
        state in state(),
        ts_ms in proptest::option::of(any::<u64>()),
    ) -> StationStatus {
        let occupied = (f64::from(chargers) * occupied_share).floor() as u32;
        StationStatus {
            v: 1, station_id, lat: Some(lat), lon: Some(lon), chargers: Some(chargers),
            power_kw: Some(power_kw), occupied, queue, state, ts_ms,
            takes_reservations: false,
            gateway: None,
        }
    }
}

/// Field names of every message, so that generated objects hit real fields.
const FIELDS: &[&str] = &[
    "v",
    "request_id",
    "station_id",
    "reservation_id",
    "lat",
    "lon",
    "soc",
    "target_soc",
    "battery_kwh",
    "kwh_per_km",
    "chargers",
    "power_kw",
    "occupied",
    "queue",
    "state",
    "ts_ms",
    "status",
    "station",
    "action",
    "speed_kmh",
    "region",
];

/// Strings that matter to some field, and some that break ids.
const STRINGS: &[&str] = &[
    "available",
    "full",
    "faulted",
    "offline",
    "assigned",
    "rerouted",
    "unavailable",
    "rejected",
    "arrived",
    "cancel",
    "",
    "r-1",
    "north-001",
    "a b",
    "a/b",
    "+",
    "#",
    "café",
    "\u{0}",
    "1",
    "1e400",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(0)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        (-200.0..200.0_f64).prop_map(|x| json!(x)),
        proptest::sample::select(STRINGS).prop_map(|s| json!(s)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(2, 24, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    4 => proptest::sample::select(FIELDS),
                    1 => proptest::sample::select(&["x", "comment", "V", "lat ", ""][..]),
                ]
                .prop_map(str::to_owned),
                inner,
                0..10,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid request or station with some fields replaced, dropped or added.
fn mutated_object() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            valid_request().prop_map(|r| json_of(&r)),
            valid_station().prop_map(|s| json_of(&s)),
        ],
        proptest::collection::vec(
            (
                proptest::sample::select(FIELDS),
                proptest::option::of(json_leaf()),
            ),
            0..4,
        ),
    )
        .prop_map(|(mut v, edits)| {
            let obj = v.as_object_mut().unwrap();
            for (field, value) in edits {
                match value {
                    Some(value) => obj.insert(field.to_owned(), value),
                    None => obj.remove(field),
                };
            }
            v
        })
}

/// Decoding never panics; whatever decodes is valid and round-trips.
fn decode_everything(bytes: &[u8]) {
    fn one<T>(bytes: &[u8])
    where
        T: DeserializeOwned + Serialize + Validate + PartialEq + Debug,
    {
        if let Ok(msg) = decode::<T>(bytes) {
            assert!(msg.validate().is_ok());
            let again: T = decode(&encode(&msg)).expect("re-encoded message decodes");
            assert_eq!(again, msg);
        }
    }
    one::<ChargeRequest>(bytes);
    one::<StationStatus>(bytes);
    one::<Recommendation>(bytes);
    one::<ReservationUpdate>(bytes);
    one::<Telemetry>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decode_never_panics_on_json_ish_text(text in r#"[{}\[\]":,.0-9eE+\-a-z_ \\]{0,120}"#) {
        decode_everything(text.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_json_values(v in json_value()) {
        decode_everything(&bytes(&v));
    }

    #[test]
    fn decode_never_panics_on_mutated_messages(v in mutated_object(), cut in any::<proptest::sample::Index>()) {
        let full = bytes(&v);
        decode_everything(&full);
        // …and on any prefix of it.
        decode_everything(&full[..cut.index(full.len() + 1)]);
    }

    #[test]
    fn valid_requests_round_trip(req in valid_request()) {
        let bytes = encode(&req);
        let back = decode::<ChargeRequest>(&bytes);
        prop_assert_eq!(back.as_ref(), Ok(&req));
        prop_assert_eq!(encode(&back.unwrap()), bytes);
    }

    #[test]
    fn valid_stations_round_trip(station in valid_station()) {
        let back = decode::<StationStatus>(&encode(&station));
        prop_assert_eq!(back, Ok(station));
    }

    #[test]
    fn out_of_range_soc_is_always_refused(req in valid_request(), soc in prop_oneof![-1e6..-1e-9_f64, 1.000_000_001..1e6_f64]) {
        let bad = ChargeRequest { soc, ..req };
        let e = decode::<ChargeRequest>(&encode(&bad)).unwrap_err();
        let is_soc = matches!(e, ProtocolError::OutOfRange { field: "soc", .. });
        prop_assert!(is_soc, "{:?}", e);
    }
}

/// The error texts `docs/protocol.md` quotes are the real ones.
#[test]
fn documented_error_texts() {
    let req = json_of(&request());
    let text = |e: ProtocolError| e.to_string();
    assert_eq!(
        text(refused::<ChargeRequest>(&with(&req, "lat", json!(91)))),
        "lat = 91 is out of range [-90, 90]"
    );
    assert_eq!(
        text(refused::<ChargeRequest>(&with(
            &req,
            "request_id",
            json!("r 42")
        ))),
        r#"request_id "r 42" is not a valid id (1-64 characters of A-Z a-z 0-9 _ -)"#
    );
    assert_eq!(
        text(refused::<ChargeRequest>(&with(&req, "v", json!(2)))),
        "unsupported protocol version v=2 (this server speaks v=1)"
    );
    assert_eq!(
        text(refused::<ChargeRequest>(&padded_request(20_000))),
        "payload is 20000 bytes, over the limit of 16384 bytes"
    );
    assert_eq!(
        text(refused::<StationStatus>(&with(
            &json_of(&station()),
            "occupied",
            json!(5)
        ))),
        "occupied (5) exceeds chargers (4)"
    );
    assert_eq!(
        text(refused::<StationStatus>(&without(
            &json_of(&station()),
            "lat"
        ))),
        "lat is required when state is available"
    );
    let mut rec = json_of(&recommendation());
    rec.as_object_mut().unwrap().remove("station");
    assert_eq!(
        text(refused::<Recommendation>(&bytes(&rec))),
        "station is required when state is assigned"
    );
    let e = text(refused::<ChargeRequest>(&without(&req, "lat")));
    assert!(
        e.starts_with("payload is not UTF-8 JSON of the expected shape: missing field `lat`"),
        "{e}"
    );
}

/// The fog's station list grows with its region: it has a limit of its own, far above
/// the 16 KiB every device message is held to (and still a limit).
#[test]
fn a_large_station_list_decodes_under_its_own_limit() {
    let list = fog::Stations {
        v: 1,
        region: "north".into(),
        ts_ms: 1_732_400_000_000,
        stations: (0..1_000)
            .map(|i| fog::AggregateStation {
                station_id: format!("north-{i:04}"),
                lat: -12.5 + f64::from(i) * 1e-4,
                lon: -38.5,
                chargers: 4,
                power_kw: 50.0,
                occupied: 1,
                queue: 0,
                reservations: 0,
                predicted_wait_s: 0,
            })
            .collect(),
    };
    let payload = encode(&list);
    assert!(payload.len() > 100_000, "{} bytes", payload.len());
    assert!(matches!(
        decode::<fog::Stations>(&payload),
        Err(ProtocolError::TooLarge { .. })
    ));
    assert_eq!(fog::Stations::decode(&payload).unwrap(), list);
    let mut huge = payload.clone();
    huge.resize(fog::MAX_STATIONS_PAYLOAD_BYTES + 1, b' ');
    assert!(matches!(
        fog::Stations::decode(&huge),
        Err(ProtocolError::TooLarge { .. })
    ));
}
