//! `Incoming::parse`: every topic a fog server receives gives its typed message, and
//! every bad topic or payload an error that keeps what the fog needs to answer.

use protocol::fog::{CentralHeartbeat, FogMessage, Handoff, RerouteReply};
use protocol::*;

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
        ts_ms: None,
    }
}

fn status(id: &str) -> StationStatus {
    StationStatus {
        v: 1,
        station_id: id.into(),
        lat: Some(-12.2),
        lon: Some(-38.9),
        chargers: Some(2),
        power_kw: Some(50.0),
        occupied: 0,
        queue: 0,
        state: StationState::Available,
        ts_ms: None,
        takes_reservations: false,
        gateway: None,
    }
}

fn payload_error(topic: &str, payload: &[u8]) -> (IncomingKind, Option<String>, String, String) {
    match Incoming::parse(topic, payload) {
        Err(IncomingError::Payload(r)) => (r.kind, r.region, r.id, r.request_id),
        other => panic!("{topic}: expected a payload error, got {other:?}"),
    }
}

#[test]
fn device_topics_give_their_messages() {
    let req = request();
    assert_eq!(
        Incoming::parse(&topics::request("north", "car-1"), &encode(&req)),
        Ok(Incoming::Request {
            region: "north".into(),
            vehicle_id: "car-1".into(),
            request: req,
        })
    );
    let s = status("n-1");
    assert_eq!(
        Incoming::parse(&topics::station_status("north", "n-1"), &encode(&s)),
        Ok(Incoming::StationStatus {
            region: "north".into(),
            station_id: "n-1".into(),
            status: Some(s),
        })
    );
    // A cleared retained status: the station is gone.
    assert_eq!(
        Incoming::parse(&topics::station_status("north", "n-1"), b""),
        Ok(Incoming::StationStatus {
            region: "north".into(),
            station_id: "n-1".into(),
            status: None,
        })
    );
    let update = ReservationUpdate {
        v: 1,
        reservation_id: "res-1".into(),
        action: ReservationAction::Cancel,
    };
    let parsed = Incoming::parse(&topics::reservation("south", "car-2"), &encode(&update));
    assert_eq!(
        parsed,
        Ok(Incoming::Reservation {
            region: "south".into(),
            vehicle_id: "car-2".into(),
            update,
        })
    );
    assert_eq!(parsed.unwrap().region(), Some("south"));
    // What the fog publishes itself needs no payload check.
    assert_eq!(
        Incoming::parse(&topics::recommendation("north", "car-1"), b"whatever"),
        Ok(Incoming::Own {
            region: "north".into()
        })
    );
    assert_eq!(
        Incoming::parse(&topics::station_reservations("north", "CP-1"), b""),
        Ok(Incoming::Own {
            region: "north".into()
        })
    );
}

#[test]
fn fog_topics_give_central_messages() {
    let hb = CentralHeartbeat {
        v: 1,
        started_ms: 1,
        seq: 2,
        ts_ms: 3,
        period_ms: 1000,
        open_regions: vec!["south".into()],
        nearest_open_km: None,
        offers: Vec::new(),
    };
    let parsed = Incoming::parse(&FogMessage::Heartbeat.regional_topic(), &encode(&hb));
    assert_eq!(parsed, Ok(Incoming::Heartbeat(hb)));
    assert_eq!(parsed.unwrap().region(), None);
    let reply = RerouteReply {
        v: 1,
        reroute_id: "rr-1".into(),
        ok: false,
        recommendation: None,
        reason: Some("none".into()),
        tried: vec![],
        no_region_within_km: None,
        hold_ms: None,
    };
    assert_eq!(
        Incoming::parse(&FogMessage::RerouteReply.regional_topic(), &encode(&reply)),
        Ok(Incoming::RerouteReply(reply))
    );
    let handoff = Handoff {
        v: 1,
        handoff_id: "h-1".into(),
        reroute_id: "rr-1".into(),
        origin_region: "south".into(),
        vehicle_id: "car-3".into(),
        request: request(),
        max_total_s: Some(900.0),
    };
    assert_eq!(
        Incoming::parse(&FogMessage::Handoff.regional_topic(), &encode(&handoff)),
        Ok(Incoming::Handoff(handoff))
    );
}

#[test]
fn bad_payloads_keep_the_topic_ids_and_the_request_id() {
    let topic = topics::request("north", "car-1");
    assert_eq!(
        payload_error(&topic, br#"{"v":1,"request_id":"r-9","soc":7}"#),
        (
            IncomingKind::Request,
            Some("north".into()),
            "car-1".into(),
            "r-9".into()
        )
    );
    // No usable request id: the rejection names none.
    assert_eq!(payload_error(&topic, b"\x00\x01").3, "");
    assert_eq!(payload_error(&topic, br#"{"request_id":"a b"}"#).3, "");
    assert_eq!(
        payload_error(&topics::telemetry("east", "car-1"), b"[]"),
        (
            IncomingKind::Telemetry,
            Some("east".into()),
            "car-1".into(),
            String::new()
        )
    );
    assert_eq!(
        payload_error(&FogMessage::Handoff.regional_topic(), b"{}"),
        (IncomingKind::Handoff, None, String::new(), String::new())
    );
}

#[test]
fn a_status_for_another_station_is_a_topic_mismatch() {
    let topic = topics::station_status("north", "n-1");
    let Err(IncomingError::Payload(refused)) = Incoming::parse(&topic, &encode(&status("n-2")))
    else {
        panic!("expected a refusal");
    };
    assert_eq!(refused.kind, IncomingKind::StationStatus);
    let error = refused.error;
    assert!(
        matches!(
            error,
            ProtocolError::TopicMismatch {
                field: "station_id",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn unknown_topics_are_refused() {
    for topic in ["ev/north/vehicles/a b/request", "ev/north", "other/x"] {
        let e = Incoming::parse(topic, b"{}").unwrap_err();
        assert!(matches!(e, IncomingError::Topic(_)), "{topic}: {e:?}");
        assert_eq!(e.region(), None);
    }
    for topic in ["fog/up/aggregate", "fog/down/nothing", "fog/x"] {
        let e = Incoming::parse(topic, b"{}").unwrap_err();
        assert!(
            matches!(e, IncomingError::FogTopic { .. }),
            "{topic}: {e:?}"
        );
    }
}

#[test]
fn a_gateway_status_is_parsed_checked_against_its_topic_and_may_be_cleared() {
    let topic = topics::gateway_status("north", "ocpp-north");
    assert_eq!(topic, "ev/north/gateways/ocpp-north/status");
    let will = GatewayStatus {
        v: 1,
        gateway_id: "ocpp-north".into(),
        online: false,
        ts_ms: None,
    };
    assert_eq!(
        Incoming::parse(&topic, &encode(&will)).unwrap(),
        Incoming::GatewayStatus {
            region: "north".into(),
            gateway_id: "ocpp-north".into(),
            status: Some(will.clone()),
        }
    );
    assert_eq!(
        Incoming::parse(&topic, b"").unwrap(),
        Incoming::GatewayStatus {
            region: "north".into(),
            gateway_id: "ocpp-north".into(),
            status: None,
        }
    );
    // Another gateway's status on this topic, or a payload of the wrong shape.
    let other = GatewayStatus {
        gateway_id: "ocpp-south".into(),
        ..will
    };
    let Err(IncomingError::Payload(refused)) = Incoming::parse(&topic, &encode(&other)) else {
        panic!("expected a refusal");
    };
    assert_eq!(refused.kind, IncomingKind::GatewayStatus);
    assert_eq!(refused.id, "ocpp-north");
    assert!(matches!(
        refused.error,
        ProtocolError::TopicMismatch {
            field: "gateway_id",
            ..
        }
    ));
    let (kind, region, id, _) = payload_error(&topic, br#"{"v":1,"gateway_id":"ocpp-north"}"#);
    assert_eq!(
        (kind, region.as_deref(), id.as_str()),
        (IncomingKind::GatewayStatus, Some("north"), "ocpp-north")
    );
    assert!(Incoming::parse("ev/north/gateways/a b/status", b"{}").is_err());
    assert!(Incoming::parse("ev/north/gateways/ocpp-north/other", b"{}").is_err());
    // A station status may name its gateway; a bad name is refused.
    let mut s = status("n-1");
    s.gateway = Some("bad gateway".into());
    assert!(Incoming::parse(&topics::station_status("north", "n-1"), &encode(&s)).is_err());
}

#[test]
fn the_bridge_state_is_read_from_mosquittos_notification() {
    let topic = "$SYS/broker/connection/north-bridge/state";
    for (payload, connected) in [(&b"1"[..], true), (b"0", false), (b"", false)] {
        assert_eq!(
            Incoming::parse(topic, payload).unwrap(),
            Incoming::BridgeState {
                connection: "north-bridge".into(),
                connected
            }
        );
    }
    for bad in [
        "$SYS/broker/connection//state",
        "$SYS/broker/connection/a/b/state",
        "$SYS/broker/uptime",
    ] {
        assert!(Incoming::parse(bad, b"1").is_err(), "{bad}");
    }
}
