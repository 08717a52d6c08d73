//! `docs/asyncapi.yaml` is checked against the crate: every message example decodes
//! (and round-trips) with the Rust type, validates against its JSON Schema, and loses
//! no field on the way; every channel address parses as the expected topic; the
//! schemas name exactly the fields the Rust types have; and schema and decoder agree on
//! which payloads are valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use protocol::validate::limits;
use protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

/// Follows local `$ref`s (`#/a/b`) until a non-reference object.
fn resolve<'a>(root: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..32 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references are expected, got {r}"));
        v = root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling reference {r}"));
    }
    panic!("reference loop")
}

fn object<'a>(v: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
}

fn component<'a>(root: &'a Value, kind: &str, name: &str) -> &'a Value {
    root.pointer(&format!("/components/{kind}/{name}"))
        .unwrap_or_else(|| panic!("components/{kind}/{name} is missing"))
}

// ---------------------------------------------------------------------------------
// A small JSON Schema checker for the keywords the document uses. An unknown keyword
// fails the test, so nothing in a schema is silently ignored.
// ---------------------------------------------------------------------------------

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

fn schema_errors(root: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let schema = resolve(root, schema);
    let s = object(schema, "schema");
    for (key, rule) in s {
        let mut fail = |msg: String| errs.push(format!("{path}: {msg}"));
        match key.as_str() {
            "description" | "title" | "default" | "examples" | "then" | "else" => {}
            "type" => {
                let ok = match rule.as_str().expect("type is a string") {
                    "object" => v.is_object(),
                    "string" => v.is_string(),
                    "number" => v.is_number(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "boolean" => v.is_boolean(),
                    "array" => v.is_array(),
                    "null" => v.is_null(),
                    other => panic!("unknown type {other}"),
                };
                if !ok {
                    fail(format!("{v} is not of type {rule}"));
                }
            }
            "const" => {
                if !json_eq(v, rule) {
                    fail(format!("{v} is not {rule}"));
                }
            }
            "enum" => {
                let options = rule.as_array().expect("enum is a list");
                if !options.iter().any(|o| json_eq(o, v)) {
                    fail(format!("{v} is not one of {rule}"));
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" => {
                let bound = rule.as_f64().expect("numeric bound");
                if let Some(x) = v.as_f64() {
                    let ok = match key.as_str() {
                        "minimum" => x >= bound,
                        "maximum" => x <= bound,
                        _ => x > bound,
                    };
                    if !ok {
                        fail(format!("{v} breaks {key} {bound}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                let bound = rule.as_u64().expect("length bound") as usize;
                if let Some(text) = v.as_str() {
                    let n = text.chars().count();
                    if (key == "minLength" && n < bound) || (key == "maxLength" && n > bound) {
                        fail(format!("{v} breaks {key} {bound}"));
                    }
                }
            }
            "pattern" => {
                assert_eq!(rule, ID_PATTERN, "only the id pattern is understood here");
                if let Some(text) = v.as_str() {
                    if validate_id("id", text).is_err() {
                        fail(format!("{v} does not match {ID_PATTERN}"));
                    }
                }
            }
            "required" => {
                if let Some(obj) = v.as_object() {
                    for field in rule.as_array().expect("required is a list") {
                        let field = field.as_str().expect("required names are strings");
                        if !obj.contains_key(field) {
                            fail(format!("required field {field} is missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(obj) = v.as_object() {
                    for (name, sub) in object(rule, "properties") {
                        if let Some(value) = obj.get(name) {
                            schema_errors(root, sub, value, &format!("{path}.{name}"), errs);
                        }
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(
                    rule,
                    &Value::Bool(true),
                    "messages must stay open to new optional fields"
                );
            }
            "items" => {
                for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                    schema_errors(root, rule, item, &format!("{path}[{i}]"), errs);
                }
            }
            "allOf" => {
                for sub in rule.as_array().expect("allOf is a list") {
                    schema_errors(root, sub, v, path, errs);
                }
            }
            "anyOf" => {
                let ok = rule.as_array().expect("anyOf is a list").iter().any(|sub| {
                    let mut e = Vec::new();
                    schema_errors(root, sub, v, path, &mut e);
                    e.is_empty()
                });
                if !ok {
                    fail(format!("{v} matches none of anyOf"));
                }
            }
            "if" => {
                let mut e = Vec::new();
                schema_errors(root, rule, v, path, &mut e);
                let branch = if e.is_empty() { "then" } else { "else" };
                if let Some(sub) = s.get(branch) {
                    schema_errors(root, sub, v, path, errs);
                }
            }
            other => panic!("schema keyword {other:?} is not understood by this test"),
        }
    }
}

fn schema_check(root: &Value, message: &str, payload: &Value) -> Vec<String> {
    let schema = &component(root, "messages", message)["payload"];
    let mut errs = Vec::new();
    schema_errors(root, schema, payload, message, &mut errs);
    errs
}

// ---------------------------------------------------------------------------------
// Rust side
// ---------------------------------------------------------------------------------

/// The JSON messages of the document and the fewest examples each must have.
const JSON_MESSAGES: [(&str, usize); 10] = [
    ("StationStatus", 2),
    ("GatewayStatus", 2),
    ("ChargeRequest", 1),
    ("Recommendation", 4),
    ("ReservationUpdate", 2),
    ("Telemetry", 1),
    ("StationReservation", 2),
    ("StationReservationEvent", 3),
    ("CentralHeartbeat", 1),
    ("Lease", 2),
];

/// Decodes with `T`, re-encodes, decodes again, and checks that every field of the
/// example survived (a misspelt field would otherwise be ignored as an unknown one).
fn roundtrip_as<T>(name: &str, payload: &Value) -> Value
where
    T: DeserializeOwned + Serialize + Validate + PartialEq + Debug,
{
    let bytes = serde_json::to_vec(payload).unwrap();
    let msg: T =
        decode(&bytes).unwrap_or_else(|e| panic!("{name} example {payload} does not decode: {e}"));
    let encoded = encode(&msg);
    let again: T = decode(&encoded).unwrap_or_else(|e| panic!("{name} re-encoded: {e}"));
    assert_eq!(again, msg, "{name} example does not round-trip");
    let encoded: Value = serde_json::from_slice(&encoded).unwrap();
    assert_fields_survive(name, payload, &encoded);
    encoded
}

fn assert_fields_survive(name: &str, example: &Value, encoded: &Value) {
    match (example, encoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let w = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}: field {k:?} is not a field of the type"));
                assert_fields_survive(&format!("{name}.{k}"), v, w);
            }
        }
        _ => assert!(
            json_eq(example, encoded),
            "{name}: {example} became {encoded}"
        ),
    }
}

/// Decodes a JSON payload as the message named `message`; `Err` carries the error.
fn decode_as(message: &str, bytes: &[u8]) -> Result<(), ProtocolError> {
    match message {
        "StationStatus" => decode::<StationStatus>(bytes).map(drop),
        "GatewayStatus" => decode::<GatewayStatus>(bytes).map(drop),
        "ChargeRequest" => decode::<ChargeRequest>(bytes).map(drop),
        "Recommendation" => decode::<Recommendation>(bytes).map(drop),
        "ReservationUpdate" => decode::<ReservationUpdate>(bytes).map(drop),
        "Telemetry" => decode::<Telemetry>(bytes).map(drop),
        "StationReservation" => decode::<StationReservation>(bytes).map(drop),
        "StationReservationEvent" => decode::<StationReservationEvent>(bytes).map(drop),
        "CentralHeartbeat" => decode::<fog::CentralHeartbeat>(bytes).map(drop),
        "Lease" => decode::<fog::Lease>(bytes).map(drop),
        other => panic!("no Rust type for message {other}"),
    }
}

fn examples<'a>(root: &'a Value, message: &str) -> Vec<&'a Value> {
    let msg = component(root, "messages", message);
    msg.get("examples")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|ex| {
                    ex.get("payload")
                        .unwrap_or_else(|| panic!("{message}: an example without payload"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_message_example_decodes_round_trips_and_fits_its_schema() {
    let root = doc();
    let messages = object(&root["components"]["messages"], "components/messages");
    let known: BTreeSet<&str> = JSON_MESSAGES
        .iter()
        .map(|(n, _)| *n)
        .chain(["StationRemoval"])
        .collect();
    let in_doc: BTreeSet<&str> = messages.keys().map(String::as_str).collect();
    assert_eq!(
        in_doc, known,
        "every message of the document needs a Rust type here"
    );

    let mut decoded = 0;
    for (name, min) in JSON_MESSAGES {
        let list = examples(&root, name);
        assert!(
            list.len() >= min,
            "{name} has {} examples, want at least {min}",
            list.len()
        );
        for payload in list {
            let errs = schema_check(&root, name, payload);
            assert!(
                errs.is_empty(),
                "{name} example {payload} fails its schema: {errs:?}"
            );
            match name {
                "StationStatus" => drop(roundtrip_as::<StationStatus>(name, payload)),
                "GatewayStatus" => drop(roundtrip_as::<GatewayStatus>(name, payload)),
                "ChargeRequest" => drop(roundtrip_as::<ChargeRequest>(name, payload)),
                "Recommendation" => drop(roundtrip_as::<Recommendation>(name, payload)),
                "ReservationUpdate" => drop(roundtrip_as::<ReservationUpdate>(name, payload)),
                "Telemetry" => drop(roundtrip_as::<Telemetry>(name, payload)),
                "StationReservation" => drop(roundtrip_as::<StationReservation>(name, payload)),
                "StationReservationEvent" => {
                    drop(roundtrip_as::<StationReservationEvent>(name, payload))
                }
                "CentralHeartbeat" => drop(roundtrip_as::<fog::CentralHeartbeat>(name, payload)),
                "Lease" => drop(roundtrip_as::<fog::Lease>(name, payload)),
                _ => unreachable!(),
            }
            decoded += 1;
        }
    }
    assert!(decoded >= 16, "only {decoded} examples decoded");

    // The removal is zero bytes: not JSON, and no message type accepts it.
    let removal = examples(&root, "StationRemoval");
    assert_eq!(
        removal,
        [&json!("")],
        "StationRemoval has one empty example"
    );
    assert!(schema_check(&root, "StationRemoval", removal[0]).is_empty());
    assert!(matches!(
        decode::<StationStatus>(b""),
        Err(ProtocolError::Json(_))
    ));
}

#[test]
fn examples_cover_every_form() {
    let root = doc();
    let statuses: Vec<&Value> = examples(&root, "StationStatus");
    assert!(
        statuses
            .iter()
            .any(|p| p["state"] == "available" && p.get("lat").is_some()),
        "an available station status"
    );
    let will = statuses
        .iter()
        .find(|p| object(p, "payload").len() == 3 && p["state"] == "offline")
        .expect("the offline last will, {v, station_id, state} only");
    assert_eq!(will["v"], 1);

    let recs = examples(&root, "Recommendation");
    for status in ["assigned", "rerouted", "unavailable", "rejected"] {
        assert!(
            recs.iter().any(|p| p["status"] == status),
            "a {status} recommendation"
        );
    }
    for p in &recs {
        match p["status"].as_str().unwrap() {
            "assigned" | "rerouted" => {
                for f in [
                    "station",
                    "distance_km",
                    "eta_s",
                    "wait_s",
                    "charge_s",
                    "reservation_id",
                    "expires_ms",
                ] {
                    assert!(p.get(f).is_some(), "{} lacks {f}", p["request_id"]);
                }
            }
            _ => {
                assert!(p.get("reason").is_some());
                assert!(p.get("station").is_none());
            }
        }
    }
    let rerouted = recs.iter().find(|p| p["status"] == "rerouted").unwrap();
    assert_ne!(
        rerouted["station"]["region"], rerouted["served_by"],
        "a reroute goes to another region"
    );

    let actions: BTreeSet<&str> = examples(&root, "ReservationUpdate")
        .iter()
        .map(|p| p["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, BTreeSet::from(["arrived", "cancel"]));
}

/// The `rejected` examples show the reasons the decoder really gives.
#[test]
fn rejected_examples_show_real_reasons() {
    let root = doc();
    let request = examples(&root, "ChargeRequest")[0].clone();
    let recs = examples(&root, "Recommendation");
    let reason_for = |payload: &Value| -> String {
        decode::<ChargeRequest>(&serde_json::to_vec(payload).unwrap())
            .unwrap_err()
            .to_string()
    };

    let mut bad_soc = request.clone();
    bad_soc["soc"] = json!(1.8);
    let mut no_id = request.clone();
    let obj = no_id.as_object_mut().unwrap();
    obj.remove("request_id");
    obj.remove("ts_ms");
    let expected = [reason_for(&bad_soc), reason_for(&no_id)];

    let rejected: Vec<&str> = recs
        .iter()
        .filter(|p| p["status"] == "rejected")
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, expected);
    assert!(
        recs.iter()
            .any(|p| p["status"] == "rejected" && p["request_id"] == "")
    );
}

// ---------------------------------------------------------------------------------
// Channels, parameters, operations
// ---------------------------------------------------------------------------------

const REGION: &str = "north";
const STATION: &str = "north-001";
const VEHICLE: &str = "car-7";
const GATEWAY: &str = "ocpp-north";

/// Channel key, address, expected action of the fog server, QoS, retain.
const CHANNELS: [(&str, &str, &str, u64, bool); 10] = [
    ("fogLease", fog::LEASE, "send", 1, true),
    (
        "gatewayStatus",
        "ev/{region}/gateways/{gateway_id}/status",
        "receive",
        1,
        true,
    ),
    (
        "stationReservations",
        "ev/{region}/stations/{station_id}/reservations",
        "send",
        1,
        false,
    ),
    (
        "stationReservationEvents",
        "ev/{region}/stations/{station_id}/reservation-events",
        "receive",
        1,
        false,
    ),
    (
        "stationStatus",
        "ev/{region}/stations/{station_id}/status",
        "receive",
        1,
        true,
    ),
    (
        "vehicleRequest",
        "ev/{region}/vehicles/{vehicle_id}/request",
        "receive",
        1,
        false,
    ),
    (
        "vehicleRecommendation",
        "ev/{region}/vehicles/{vehicle_id}/recommendation",
        "send",
        1,
        false,
    ),
    (
        "vehicleReservation",
        "ev/{region}/vehicles/{vehicle_id}/reservation",
        "receive",
        1,
        false,
    ),
    (
        "vehicleTelemetry",
        "ev/{region}/vehicles/{vehicle_id}/telemetry",
        "receive",
        0,
        false,
    ),
    // Not a device topic: central's heartbeat, brought down by the region's bridge.
    (
        "centralHeartbeat",
        "fog/down/heartbeat",
        "receive",
        0,
        false,
    ),
];

fn expected_topic(address: &str) -> Topic<'static> {
    if address.contains("/gateways/") {
        return Topic::GatewayStatus {
            region: REGION,
            gateway_id: GATEWAY,
        };
    }
    if address.ends_with("/status") {
        return Topic::StationStatus {
            region: REGION,
            station_id: STATION,
        };
    }
    let leaf = address.rsplit('/').next().unwrap();
    if let Some(channel) = StationChannel::ALL.into_iter().find(|c| c.as_str() == leaf) {
        return Topic::Station {
            region: REGION,
            station_id: STATION,
            channel,
        };
    }
    let channel = VehicleChannel::ALL
        .into_iter()
        .find(|c| c.as_str() == leaf)
        .unwrap_or_else(|| panic!("unknown leaf {leaf}"));
    Topic::Vehicle {
        region: REGION,
        vehicle_id: VEHICLE,
        channel,
    }
}

/// The `{name}`s of an address, in order.
fn placeholders(address: &str) -> Vec<&str> {
    address
        .split('{')
        .skip(1)
        .map(|rest| rest.split_once('}').expect("unclosed {").0)
        .collect()
}

#[test]
fn channel_addresses_parse_as_the_expected_topics() {
    let root = doc();
    let channels = object(&root["channels"], "channels");
    assert_eq!(
        channels.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        CHANNELS.iter().map(|c| c.0).collect::<BTreeSet<_>>()
    );
    let samples = BTreeMap::from([
        ("region", REGION),
        ("station_id", STATION),
        ("vehicle_id", VEHICLE),
        ("gateway_id", GATEWAY),
    ]);
    for (key, address, ..) in CHANNELS {
        let channel = &channels[key];
        assert_eq!(channel["address"], address, "{key}");
        if address == fog::LEASE {
            // The lease: local to the regional broker, no parameters, not bridged.
            assert!(channel.get("parameters").is_none(), "{key}");
            assert!(fog::FogMessage::parse_regional(address).is_err(), "{key}");
            continue;
        }
        if address.starts_with("fog/") {
            // A bridged fog topic: no parameters, parsed by the fog message parser.
            assert!(channel.get("parameters").is_none(), "{key}");
            let m =
                fog::FogMessage::parse_regional(address).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(m.regional_topic(), address, "{key}");
            assert_eq!(m, fog::FogMessage::Heartbeat, "{key}");
            continue;
        }

        let params = object(&channel["parameters"], "parameters");
        let named: BTreeSet<&str> = placeholders(address).into_iter().collect();
        let declared: BTreeSet<&str> = params.keys().map(String::as_str).collect();
        assert_eq!(
            named, declared,
            "{key}: parameters must match the address placeholders"
        );

        let mut topic = address.to_owned();
        for p in &named {
            topic = topic.replace(&format!("{{{p}}}"), samples[p]);
        }
        assert_eq!(
            Topic::parse(&topic).unwrap_or_else(|e| panic!("{key}: {e}")),
            expected_topic(address),
            "{key}"
        );
        // The builders produce the same string.
        let built = match expected_topic(address) {
            Topic::StationStatus { region, station_id } => {
                topics::station_status(region, station_id)
            }
            Topic::GatewayStatus { region, gateway_id } => {
                topics::gateway_status(region, gateway_id)
            }
            Topic::Station {
                region,
                station_id,
                channel,
            } => topics::station(region, station_id, channel),
            Topic::Vehicle {
                region,
                vehicle_id,
                channel,
            } => topics::vehicle(region, vehicle_id, channel),
        };
        assert_eq!(built, topic);

        // Every parameter's examples are valid ids and give parseable topics.
        for (name, param) in params {
            let param = resolve(&root, param);
            assert_eq!(param["x-pattern"], ID_PATTERN, "{key}.{name}");
            let list = param["examples"].as_array().expect("parameter examples");
            assert!(!list.is_empty());
            for ex in list {
                let ex = ex.as_str().unwrap();
                validate_id("example", ex).unwrap();
                let t = address.replace(&format!("{{{name}}}"), ex);
                let t = named
                    .iter()
                    .fold(t, |t, p| t.replace(&format!("{{{p}}}"), samples[p]));
                Topic::parse(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
            }
        }

        // The channel's messages resolve to component messages with examples.
        let messages = object(&channel["messages"], "channel messages");
        assert!(!messages.is_empty(), "{key} has no message");
        for m in messages.values() {
            let m = resolve(&root, m);
            assert!(
                m.get("examples")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
            );
        }
    }
}

#[test]
fn the_id_schema_agrees_with_validate_id() {
    let root = doc();
    let id = component(&root, "schemas", "Id");
    assert_eq!(id["pattern"], ID_PATTERN);
    assert_eq!(id["maxLength"], MAX_ID_LEN);
    let long = "a".repeat(MAX_ID_LEN);
    let too_long = "a".repeat(MAX_ID_LEN + 1);
    for s in ["a", "A-z_09", &long, "", &too_long, "a b", "a/b", "é"] {
        let mut errs = Vec::new();
        schema_errors(&root, id, &json!(s), "Id", &mut errs);
        assert_eq!(errs.is_empty(), validate_id("id", s).is_ok(), "{s:?}");
    }
}

#[test]
fn operations_are_the_fog_servers_with_design_qos_and_retain() {
    let root = doc();
    let ops = object(&root["operations"], "operations");
    let mut seen = BTreeSet::new();
    for (name, op) in ops {
        let channel = op["channel"]["$ref"].as_str().expect("channel $ref");
        let key = channel
            .strip_prefix("#/channels/")
            .expect("a channel reference");
        resolve(&root, &op["channel"]);
        let (_, _, action, qos, retain) = CHANNELS
            .iter()
            .find(|c| c.0 == key)
            .unwrap_or_else(|| panic!("{name}: unknown channel {key}"));
        assert_eq!(op["action"], *action, "{name}");
        assert_eq!(op["bindings"]["mqtt"]["qos"], *qos, "{name}");
        assert_eq!(op["bindings"]["mqtt"]["retain"], *retain, "{name}");
        for m in op["messages"].as_array().expect("operation messages") {
            let r = m["$ref"].as_str().unwrap();
            assert!(
                r.starts_with(&format!("{channel}/messages/")),
                "{name}: {r} is not a message of its channel"
            );
            resolve(&root, m);
        }
        if let Some(reply) = op.get("reply") {
            resolve(&root, &reply["channel"]);
            for m in reply["messages"].as_array().unwrap() {
                resolve(&root, m);
            }
        }
        seen.insert(key);
    }
    assert_eq!(seen.len(), CHANNELS.len(), "an operation for every channel");
    assert_eq!(
        ops["receiveChargeRequest"]["reply"]["channel"]["$ref"],
        "#/channels/vehicleRecommendation"
    );
}

// ---------------------------------------------------------------------------------
// Schemas against the Rust types
// ---------------------------------------------------------------------------------

fn full_instances() -> Vec<(&'static str, Value)> {
    let station = StationStatus {
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
        takes_reservations: true,
        gateway: Some("ocpp-north".into()),
    };
    let gateway = GatewayStatus {
        v: 1,
        gateway_id: "ocpp-north".into(),
        online: true,
        ts_ms: Some(1_732_400_000_000),
    };
    let request = ChargeRequest {
        v: 1,
        request_id: "r-42".into(),
        lat: -12.25,
        lon: -38.95,
        soc: 0.18,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
        ts_ms: Some(1_732_400_000_000),
    };
    let rec = Recommendation {
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
        reason: Some("note".into()),
        served_by: Some("north".into()),
        data_age_ms: Some(120),
        revised: true,
    };
    let update = ReservationUpdate {
        v: 1,
        reservation_id: "north-3f9c".into(),
        action: ReservationAction::Arrived,
    };
    let telemetry = Telemetry {
        v: 1,
        lat: -12.25,
        lon: -38.95,
        soc: 0.55,
        speed_kmh: Some(38.0),
        ts_ms: Some(1_732_400_000_000),
    };
    let v = |x: Vec<u8>| serde_json::from_slice::<Value>(&x).unwrap();
    vec![
        ("StationStatus", v(encode(&station))),
        ("ChargeRequest", v(encode(&request))),
        ("Recommendation", v(encode(&rec))),
        ("ReservationUpdate", v(encode(&update))),
        ("Telemetry", v(encode(&telemetry))),
        (
            "StationReservation",
            v(encode(&StationReservation {
                v: 1,
                reservation_id: "north-3f9c".into(),
                action: StationReservationAction::Reserve,
                id_tag: Some("car-7".into()),
                expires_ms: Some(1_732_400_600_000),
                start_ms: Some(1_732_400_420_000),
            })),
        ),
        (
            "CentralHeartbeat",
            v(encode(&fog::CentralHeartbeat {
                v: 1,
                started_ms: 1_796_140_000_000,
                seq: 42,
                ts_ms: 1_796_140_041_000,
                period_ms: 1000,
                open_regions: vec!["east".into(), "middle".into()],
                nearest_open_km: Some(12.5),
                offers: vec![fog::Offer {
                    region: "middle".into(),
                    station_id: "middle-s0007".into(),
                    lat: -12.91,
                    lon: -38.47,
                    power_kw: 150.0,
                    wait_s: 0,
                }],
            })),
        ),
        (
            "StationReservationEvent",
            v(encode(&StationReservationEvent {
                v: 1,
                reservation_id: "north-3f9c".into(),
                event: StationReservationEventKind::Rejected,
                reason: Some("Occupied".into()),
            })),
        ),
        ("GatewayStatus", v(encode(&gateway))),
        (
            "Lease",
            v(encode(&fog::Lease {
                v: 1,
                holder: "fog-north-7d9f-1-1796140000000".into(),
                online: true,
            })),
        ),
    ]
}

fn keys(v: &Value) -> BTreeSet<String> {
    object(v, "value").keys().cloned().collect()
}

#[test]
fn schemas_name_exactly_the_fields_of_the_rust_types() {
    let root = doc();
    for (name, full) in full_instances() {
        decode_as(name, &serde_json::to_vec(&full).unwrap()).unwrap();
        let schema = resolve(&root, &component(&root, "messages", name)["payload"]);
        assert!(
            schema_check(&root, name, &full).is_empty(),
            "{name}: {:?}",
            schema_check(&root, name, &full)
        );
        assert_eq!(
            keys(&schema["properties"]),
            keys(&full),
            "{name}: schema properties vs Rust fields"
        );

        // Fields the decoder cannot do without are exactly the schema's `required`.
        let required: BTreeSet<String> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        let mut needed = BTreeSet::new();
        for field in keys(&full) {
            let mut without = full.clone();
            without.as_object_mut().unwrap().remove(&field);
            if let Err(ProtocolError::Json(msg)) =
                decode_as(name, &serde_json::to_vec(&without).unwrap())
            {
                assert!(msg.contains(&format!("missing field `{field}`")), "{msg}");
                needed.insert(field);
            }
        }
        assert_eq!(required, needed, "{name}: required fields");
    }
    // The nested station of a recommendation too.
    let station_ref = component(&root, "schemas", "StationRef");
    let full = &full_instances()[2].1["station"];
    assert_eq!(keys(&station_ref["properties"]), keys(full));
    assert_eq!(
        keys(full).len(),
        station_ref["required"].as_array().unwrap().len()
    );
    // And the offers of central's heartbeat: every field, all required.
    let offer_schema = component(&root, "schemas", "Offer");
    let heartbeat = full_instances()
        .into_iter()
        .find(|(name, _)| *name == "CentralHeartbeat")
        .unwrap()
        .1;
    let offer = &heartbeat["offers"][0];
    assert_eq!(keys(&offer_schema["properties"]), keys(offer));
    assert_eq!(
        keys(offer).len(),
        offer_schema["required"].as_array().unwrap().len()
    );
}

#[test]
fn schema_limits_are_the_crate_limits() {
    let root = doc();
    assert_eq!(root["x-max-payload-bytes"], MAX_PAYLOAD_BYTES);
    assert_eq!(root["asyncapi"], "3.0.0");
    let prop = |schema: &str, field: &str| {
        resolve(
            &root,
            &component(&root, "schemas", schema)["properties"][field],
        )
        .clone()
    };
    assert_eq!(prop("StationStatus", "chargers")["minimum"], 1);
    assert_eq!(
        prop("StationStatus", "chargers")["maximum"],
        limits::MAX_CHARGERS
    );
    assert_eq!(prop("StationStatus", "queue")["maximum"], limits::MAX_QUEUE);
    assert_eq!(
        prop("StationStatus", "power_kw")["maximum"],
        limits::MAX_POWER_KW
    );
    assert_eq!(
        prop("ChargeRequest", "battery_kwh")["maximum"],
        limits::MAX_BATTERY_KWH
    );
    assert_eq!(
        prop("ChargeRequest", "kwh_per_km")["maximum"],
        limits::MAX_KWH_PER_KM
    );
    assert_eq!(
        prop("Telemetry", "speed_kmh")["maximum"],
        limits::MAX_SPEED_KMH
    );
    for (schema, field) in [
        ("StationStatus", "power_kw"),
        ("ChargeRequest", "battery_kwh"),
        ("ChargeRequest", "kwh_per_km"),
    ] {
        assert_eq!(
            prop(schema, field)["exclusiveMinimum"],
            0,
            "{schema}.{field}"
        );
    }
    assert_eq!(
        component(&root, "schemas", "Version")["const"],
        PROTOCOL_VERSION
    );
}

/// Mutations of the first example of a message: each must be accepted by both the
/// schema and the decoder, or refused by both.
#[test]
fn schema_and_decoder_agree_on_valid_and_invalid_payloads() {
    let root = doc();
    let long_id = "x".repeat(65);
    let offer = |lat: f64, power_kw: f64| {
        json!({"region": "east", "station_id": "east-s0002", "lat": lat, "lon": -38.41,
            "power_kw": power_kw, "wait_s": 240})
    };
    let cases: Vec<(&str, &str, Value, bool)> = vec![
        ("ChargeRequest", "lat", json!(90), true),
        ("ChargeRequest", "lat", json!(-90), true),
        ("ChargeRequest", "lat", json!(90.0001), false),
        ("ChargeRequest", "lon", json!(-180), true),
        ("ChargeRequest", "lon", json!(180.5), false),
        ("ChargeRequest", "soc", json!(0), true),
        ("ChargeRequest", "soc", json!(1), true),
        ("ChargeRequest", "soc", json!(-0.01), false),
        ("ChargeRequest", "target_soc", json!(1.01), false),
        ("ChargeRequest", "battery_kwh", json!(0), false),
        ("ChargeRequest", "battery_kwh", json!(-5), false),
        ("ChargeRequest", "battery_kwh", json!(1000), true),
        ("ChargeRequest", "battery_kwh", json!(1000.5), false),
        ("ChargeRequest", "kwh_per_km", json!(0), false),
        ("ChargeRequest", "kwh_per_km", json!(10.1), false),
        ("ChargeRequest", "request_id", json!(""), false),
        ("ChargeRequest", "request_id", json!(long_id), false),
        ("ChargeRequest", "request_id", json!("r 42"), false),
        ("ChargeRequest", "request_id", json!("r/42"), false),
        ("ChargeRequest", "request_id", json!(42), false),
        ("ChargeRequest", "v", json!(2), false),
        ("ChargeRequest", "v", json!("1"), false),
        ("ChargeRequest", "ts_ms", json!(-1), false),
        ("ChargeRequest", "ts_ms", json!(1.5), false),
        ("ChargeRequest", "extra_field", json!({"any": [1, 2]}), true),
        ("StationStatus", "chargers", json!(0), false),
        ("StationStatus", "chargers", json!(1001), false),
        ("StationStatus", "power_kw", json!(0), false),
        ("StationStatus", "queue", json!(100_001), false),
        ("StationStatus", "occupied", json!(-1), false),
        ("StationStatus", "state", json!("broken"), false),
        ("StationStatus", "state", json!("full"), true),
        ("StationStatus", "state", json!("offline"), true),
        ("StationStatus", "lat", json!(-91), false),
        ("StationStatus", "station_id", json!("a+b"), false),
        ("Recommendation", "status", json!("rerouted"), true),
        ("Recommendation", "status", json!("maybe"), false),
        ("Recommendation", "request_id", json!(""), false),
        ("Recommendation", "reservation_id", json!("a#b"), false),
        ("Recommendation", "distance_km", json!(-1), false),
        ("Recommendation", "eta_s", json!(-1), false),
        ("Recommendation", "eta_s", json!(4_294_967_296_u64), false),
        (
            "Recommendation",
            "station",
            json!({"station_id": "s", "region": "r", "lat": 0}),
            false,
        ),
        (
            "Recommendation",
            "station",
            json!({"station_id": "s", "region": "r", "lat": 0, "lon": 181}),
            false,
        ),
        ("ReservationUpdate", "action", json!("cancel"), true),
        ("ReservationUpdate", "action", json!("arrive"), false),
        ("ReservationUpdate", "reservation_id", json!("é"), false),
        ("Telemetry", "speed_kmh", json!(-1), false),
        ("Telemetry", "speed_kmh", json!(1000.1), false),
        ("Telemetry", "soc", json!(1.5), false),
        ("StationStatus", "takes_reservations", json!(true), true),
        ("StationStatus", "takes_reservations", json!("yes"), false),
        ("Recommendation", "revised", json!(true), true),
        ("Recommendation", "revised", json!(1), false),
        ("CentralHeartbeat", "open_regions", json!(["a b"]), false),
        ("CentralHeartbeat", "open_regions", json!([]), true),
        ("CentralHeartbeat", "period_ms", json!(0), false),
        ("CentralHeartbeat", "nearest_open_km", json!(-1.0), false),
        ("CentralHeartbeat", "offers", json!([]), true),
        (
            "CentralHeartbeat",
            "offers",
            json!([offer(-12.9, 50.0)]),
            true,
        ),
        (
            "CentralHeartbeat",
            "offers",
            json!([offer(91.0, 50.0)]),
            false,
        ),
        (
            "CentralHeartbeat",
            "offers",
            json!([offer(-12.9, 0.0)]),
            false,
        ),
        (
            "CentralHeartbeat",
            "offers",
            json!([{"region": "e"}]),
            false,
        ),
        ("CentralHeartbeat", "offers", json!({"region": "e"}), false),
        ("Lease", "holder", json!("host.example-1-2"), false),
        ("Lease", "holder", json!(""), false),
        ("Lease", "online", json!("yes"), false),
        ("StationReservation", "action", json!("cancel"), true),
        ("StationReservation", "action", json!("hold"), false),
        ("StationReservation", "id_tag", json!("a".repeat(20)), true),
        ("StationReservation", "id_tag", json!("a".repeat(21)), false),
        ("StationReservation", "id_tag", json!("car 7"), false),
        ("StationReservation", "reservation_id", json!("a/b"), false),
        ("StationReservation", "expires_ms", json!(-1), false),
        ("StationReservationEvent", "event", json!("arrived"), true),
        ("StationReservationEvent", "event", json!("maybe"), false),
        (
            "StationReservationEvent",
            "reason",
            json!("x".repeat(200)),
            true,
        ),
        (
            "StationReservationEvent",
            "reason",
            json!("x".repeat(201)),
            false,
        ),
        (
            "StationReservationEvent",
            "reservation_id",
            json!(""),
            false,
        ),
    ];
    let removals: Vec<(&str, Vec<&str>, bool)> = vec![
        ("StationStatus", vec!["lat"], false),
        ("StationStatus", vec!["lon"], false),
        ("StationStatus", vec!["chargers"], false),
        ("StationStatus", vec!["power_kw"], false),
        ("StationStatus", vec!["occupied", "queue", "ts_ms"], true),
        ("StationStatus", vec!["state"], false),
        ("ChargeRequest", vec!["ts_ms"], true),
        ("ChargeRequest", vec!["soc"], false),
        ("ChargeRequest", vec!["v"], false),
        ("Recommendation", vec!["station"], false),
        (
            "Recommendation",
            vec!["reason", "served_by", "data_age_ms"],
            true,
        ),
        ("Telemetry", vec!["speed_kmh", "ts_ms"], true),
        ("Telemetry", vec!["lon"], false),
        ("StationReservation", vec!["id_tag"], false),
        ("StationReservation", vec!["expires_ms"], false),
        ("StationReservationEvent", vec!["reason"], true),
        ("StationReservationEvent", vec!["event"], false),
    ];

    let check = |message: &str, payload: &Value, valid: bool, what: &str| {
        let schema_ok = schema_check(&root, message, payload).is_empty();
        let rust = decode_as(message, &serde_json::to_vec(payload).unwrap());
        assert_eq!(
            schema_ok, valid,
            "{message} {what}: schema says {schema_ok}"
        );
        assert_eq!(
            rust.is_ok(),
            valid,
            "{message} {what}: decoder says {rust:?}"
        );
    };
    for (message, field, value, valid) in cases {
        let mut payload = examples(&root, message)[0].clone();
        payload[field] = value.clone();
        check(message, &payload, valid, &format!("{field} = {value}"));
    }
    for (message, fields, valid) in removals {
        let mut payload = examples(&root, message)[0].clone();
        for f in &fields {
            payload.as_object_mut().unwrap().remove(*f);
        }
        check(message, &payload, valid, &format!("without {fields:?}"));
    }
    // Offline and faulted stations may leave out everything but their id and state.
    let will = json!({"v": 1, "station_id": "x", "state": "offline"});
    check("StationStatus", &will, true, "last will");
    let half = json!({"v": 1, "station_id": "x", "state": "faulted", "lat": 1.0});
    check("StationStatus", &half, false, "lat without lon");
    // An empty request id is only for rejected answers.
    let rejected = json!({"v": 1, "request_id": "", "status": "rejected", "reason": "r"});
    check(
        "Recommendation",
        &rejected,
        true,
        "rejected without request id",
    );
    let unavailable = json!({"v": 1, "request_id": "", "status": "unavailable", "reason": "r"});
    check(
        "Recommendation",
        &unavailable,
        false,
        "unavailable without request id",
    ); // A cancel needs neither the id tag nor the expiry.
    let cancel = json!({"v": 1, "reservation_id": "north-3f9c", "action": "cancel"});
    check("StationReservation", &cancel, true, "a bare cancel");
}
