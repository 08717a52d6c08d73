//! The gateway against a real Mosquitto and a real fog server, with charge points
//! driven by the Python `ocpp` package (a third-party OCPP 1.6 implementation).

mod common;

use std::time::Duration;

use common::{Env, charger};
use protocol::{RecommendationStatus, ReservationAction};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_and_status_make_a_station_in_the_fog() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env.charge_point("CP-001", &[]).await.unwrap();
    let connected = cp.expect("connected", T).await.unwrap();
    assert_eq!(connected["subprotocol"], "ocpp1.6");
    let boot = cp.run(json!({"cmd": "boot"})).await.unwrap();
    assert_eq!(boot["status"], "Accepted");
    assert_eq!(boot["interval"], 300);
    // The gateway asks whether connector 0 can be reserved.
    cp.expect("get_configuration", T).await.unwrap();
    cp.status(1, "Charging").await.unwrap();
    let s = env
        .station_where("CP-001", "CP-001 with one charging", |s| s["occupied"] == 1)
        .await
        .unwrap();
    assert_eq!(
        (s["chargers"].as_u64(), s["state"].as_str()),
        (Some(2), Some("available"))
    );
    assert_eq!(s["power_kw"], 50.0);
    cp.status(2, "SuspendedEV").await.unwrap();
    env.station_where("CP-001", "CP-001 full", |s| {
        s["state"] == "full" && s["occupied"] == 2
    })
    .await
    .unwrap();
    cp.status(0, "Faulted").await.unwrap();
    env.station_where("CP-001", "CP-001 faulted", |s| s["state"] == "faulted")
        .await
        .unwrap();
    cp.status(0, "Unavailable").await.unwrap();
    env.station_where("CP-001", "CP-001 offline", |s| s["state"] == "offline")
        .await
        .unwrap();

    // The other charger → CSMS messages are answered.
    let hb = cp.run(json!({"cmd": "heartbeat"})).await.unwrap();
    assert!(hb["current_time"].is_string());
    assert_eq!(
        cp.run(json!({"cmd": "authorize", "id_tag": "anyone"}))
            .await
            .unwrap()["status"],
        "Accepted"
    );
    let start = cp
        .run(json!({"cmd": "start", "connector": 1, "id_tag": "anyone"}))
        .await
        .unwrap();
    assert_eq!(start["status"], "Accepted");
    let tx = start["transaction_id"].as_i64().unwrap();
    let start2 = cp
        .run(json!({"cmd": "start", "connector": 2, "id_tag": "other"}))
        .await
        .unwrap();
    assert_ne!(
        start2["transaction_id"].as_i64().unwrap(),
        tx,
        "transaction ids differ"
    );
    assert_eq!(
        cp.run(json!({"cmd": "stop", "transaction_id": tx}))
            .await
            .unwrap()["answered"],
        true
    );
    assert_eq!(
        cp.run(json!({"cmd": "meter", "connector": 1}))
            .await
            .unwrap()["answered"],
        true
    );
    assert_eq!(
        cp.run(json!({"cmd": "data_transfer"})).await.unwrap()["status"],
        "UnknownVendorId"
    );
    // Anything else: NotImplemented (a CALLERROR; the session lives on).
    assert_eq!(
        cp.run(json!({"cmd": "unknown_action"})).await.unwrap()["answered"],
        false
    );
    assert_eq!(
        env.gateway_metric("ocpp_call_errors_sent_total{kind=\"NotImplemented\"}")
            .await
            .unwrap(),
        1.0
    );
    cp.run(json!({"cmd": "heartbeat"})).await.unwrap();
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_reaches_the_charger_as_reserve_now_and_cancel_as_cancel_reservation() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env.charge_point("CP-001", &[]).await.unwrap();
    cp.boot(2).await.unwrap();
    env.station_where("CP-001", "CP-001 known", |s| s["state"] == "available")
        .await
        .unwrap();
    let mut car = env.vehicle("car-7").await.unwrap();
    let rec = car.ask("r-1").await.unwrap();
    assert_eq!(rec.status, RecommendationStatus::Assigned, "{rec:?}");
    assert_eq!(rec.station.as_ref().unwrap().station_id, "CP-001");
    let reserve = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(reserve["id_tag"], "car-7");
    assert_eq!(
        reserve["connector_id"], 1,
        "a free connector (no connector-0 support)"
    );
    let expiry = chrono::DateTime::parse_from_rfc3339(reserve["expiry_date"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(
        expiry as u64,
        rec.expires_ms.unwrap(),
        "expiry = the reservation's"
    );
    // Accepted reaches the fog.
    testkit::wait_until(
        "the fog hears Accepted",
        T,
        Duration::from_millis(20),
        || async {
            env.fog
                .metric("fog_station_reservation_events_total{kind=\"accepted\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();

    car.end(
        rec.reservation_id.as_deref().unwrap(),
        ReservationAction::Cancel,
    )
    .await
    .unwrap();
    let cancel = cp.expect("cancel_reservation", T).await.unwrap();
    assert_eq!(cancel["reservation_id"], reserve["reservation_id"]);
    assert!(env.reservations().await.unwrap().is_empty());
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_zero_is_reserved_when_the_charger_supports_it() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env.charge_point("CP-001", &["--zero"]).await.unwrap();
    cp.boot(2).await.unwrap();
    cp.expect("get_configuration", T).await.unwrap();
    env.station_where("CP-001", "CP-001 known", |s| s["state"] == "available")
        .await
        .unwrap();
    let mut car = env.vehicle("car-8").await.unwrap();
    car.ask("r-1").await.unwrap();
    assert_eq!(
        cp.expect("reserve_now", T).await.unwrap()["connector_id"],
        0
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_transaction_with_the_reservation_id_ends_it_as_arrived() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env.charge_point("CP-001", &[]).await.unwrap();
    cp.boot(2).await.unwrap();
    env.station_where("CP-001", "CP-001 known", |s| s["state"] == "available")
        .await
        .unwrap();
    let mut car = env.vehicle("car-7").await.unwrap();
    let rec = car.ask("r-1").await.unwrap();
    let reserve = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(env.reservations().await.unwrap().len(), 1);
    let start = cp
        .run(
            json!({"cmd": "start", "connector": reserve["connector_id"], "id_tag": "car-7",
                    "reservation_id": reserve["reservation_id"]}),
        )
        .await
        .unwrap();
    assert_eq!(start["status"], "Accepted");
    testkit::wait_until(
        "the reservation ends as arrived",
        T,
        Duration::from_millis(20),
        || async {
            env.fog
                .metric("fog_reservations_ended_total{kind=\"arrived\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    assert!(env.reservations().await.unwrap().is_empty(), "{rec:?}");
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_answering_occupied_frees_the_slot_and_the_vehicle_is_told() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env
        .charge_point("CP-001", &["--reserve-answer", "Occupied"])
        .await
        .unwrap();
    cp.boot(2).await.unwrap();
    env.station_where("CP-001", "CP-001 known", |s| s["state"] == "available")
        .await
        .unwrap();
    let mut car = env.vehicle("car-7").await.unwrap();
    let first = car.ask("r-1").await.unwrap();
    assert_eq!(first.status, RecommendationStatus::Assigned);
    cp.expect("reserve_now", T).await.unwrap();
    let revised = car.next().await.unwrap();
    assert!(revised.revised, "{revised:?}");
    assert_eq!(revised.request_id, "r-1");
    assert_eq!(revised.status, RecommendationStatus::Unavailable);
    assert!(
        revised.reason.as_deref().unwrap().contains("Occupied"),
        "{revised:?}"
    );
    assert!(
        env.reservations().await.unwrap().is_empty(),
        "the slot is free again"
    );
    let s = env
        .station_where("CP-001", "CP-001", |_| true)
        .await
        .unwrap();
    assert_eq!(s["reservations"], 0);
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_means_offline_and_a_reconnect_is_resynchronised() {
    let env = Env::start(&charger("CP-001", 2, None)).await.unwrap();
    let mut cp = env.charge_point("CP-001", &[]).await.unwrap();
    cp.boot(2).await.unwrap();
    cp.status(1, "Charging").await.unwrap();
    env.station_where("CP-001", "CP-001 known", |s| s["occupied"] == 1)
        .await
        .unwrap();
    cp.send(json!({"cmd": "close"})).await.unwrap();
    cp.expect("closed", T).await.unwrap();
    env.station_where("CP-001", "CP-001 offline", |s| s["state"] == "offline")
        .await
        .unwrap();
    // Never recommended while offline.
    let mut car = env.vehicle("car-7").await.unwrap();
    let rec = car.ask("r-1").await.unwrap();
    assert_eq!(rec.status, RecommendationStatus::Unavailable, "{rec:?}");
    // Back: the gateway asks for the statuses at once (no boot needed).
    cp.send(json!({"cmd": "reconnect"})).await.unwrap();
    cp.expect("connected", T).await.unwrap();
    let trigger = cp.expect("trigger_message", T).await.unwrap();
    assert_eq!(trigger["requested_message"], "StatusNotification");
    env.station_where("CP-001", "CP-001 back", |s| {
        s["state"] == "available" && s["occupied"] == 1
    })
    .await
    .unwrap();
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_heartbeat_means_offline_until_the_charger_speaks() {
    let env = Env::start_with(&charger("CP-001", 1, None), |c| c.heartbeat_s = 1)
        .await
        .unwrap();
    let mut cp = env.charge_point("CP-001", &[]).await.unwrap();
    cp.boot(1).await.unwrap();
    env.station_where("CP-001", "CP-001 available", |s| s["state"] == "available")
        .await
        .unwrap();
    // Silence for 2 heartbeat intervals (2 s).
    env.station_where("CP-001", "CP-001 offline after silence", |s| {
        s["state"] == "offline"
    })
    .await
    .unwrap();
    let mut car = env.vehicle("car-7").await.unwrap();
    assert_eq!(
        car.ask("r-1").await.unwrap().status,
        RecommendationStatus::Unavailable
    );
    cp.run(json!({"cmd": "heartbeat"})).await.unwrap();
    env.station_where("CP-001", "CP-001 available again", |s| {
        s["state"] == "available"
    })
    .await
    .unwrap();
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_refused_without_password_subprotocol_or_registration() {
    let chargers = format!(
        "{}{}",
        charger("CP-001", 1, Some("s3cret")),
        charger("CP-002", 1, None)
    );
    let env = Env::start(&chargers).await.unwrap();
    let cases: [(&str, &[&str], u64); 4] = [
        ("CP-001", &["--password", "wrong"], 401),
        ("CP-001", &[], 401),
        ("CP-003", &[], 404),
        ("CP-002", &["--no-subprotocol"], 400),
    ];
    for (id, args, code) in cases {
        let mut cp = env.charge_point(id, args).await.unwrap();
        let failed = cp.expect("connect_failed", T).await.unwrap();
        assert_eq!(failed["status"], code, "{id} {args:?}");
    }
    // The right password gets in (security profile 1).
    let mut cp = env
        .charge_point("CP-001", &["--password", "s3cret"])
        .await
        .unwrap();
    cp.boot(1).await.unwrap();
    env.station_where("CP-001", "CP-001 in", |s| s["state"] == "available")
        .await
        .unwrap();
    assert_eq!(
        env.gateway_metric("ocpp_handshakes_refused_total{kind=\"unauthorized\"}")
            .await
            .unwrap(),
        2.0
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_unknown_lets_an_unlisted_charger_speak_without_becoming_a_station() {
    let env = Env::start_with("", |c| c.accept_unknown = true)
        .await
        .unwrap();
    let mut cp = env.charge_point("CP-009", &[]).await.unwrap();
    cp.boot(1).await.unwrap();
    cp.run(json!({"cmd": "heartbeat"})).await.unwrap();
    assert_eq!(
        env.gateway_metric("ocpp_statuses_published_total")
            .await
            .unwrap(),
        0.0
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_callerrors_and_every_session_lives_on() {
    let chargers = format!(
        "{}{}",
        charger("CP-001", 2, None),
        charger("CP-666", 2, None)
    );
    let env = Env::start_with(&chargers, |c| c.max_message_bytes = 8192)
        .await
        .unwrap();
    let mut good = env.charge_point("CP-001", &[]).await.unwrap();
    good.boot(2).await.unwrap();

    let out = common::hostile(&format!("{}/CP-666", env.url), 20_000)
        .await
        .unwrap();
    let codes: Vec<&str> = out["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r[0], 4, "a CALLERROR: {r}");
            r[2].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "FormationViolation",
            "FormationViolation",
            "FormationViolation",
            "FormationViolation",
            "ProtocolError",
            "FormationViolation",
            "NotImplemented",
            "TypeConstraintViolation",
            "TypeConstraintViolation",
            "OccurenceConstraintViolation",
            "PropertyConstraintViolation",
            "PropertyConstraintViolation",
        ]
    );
    // The ids of readable frames are echoed.
    assert_eq!(out["replies"][6][1], "h3");
    // The session lived on: a Heartbeat afterwards is answered.
    assert_eq!(out["heartbeat"][0], 3);
    assert_eq!(out["heartbeat"][1], "ok-1");
    // An oversized message is refused by closing that connection only.
    assert_eq!(out["oversized"], "closed");
    // The other charger and the gateway are unaffected.
    good.run(json!({"cmd": "heartbeat"})).await.unwrap();
    good.status(1, "Charging").await.unwrap();
    env.station_where("CP-001", "CP-001 still served", |s| s["occupied"] == 1)
        .await
        .unwrap();
    good.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chargers_file_is_reloaded_on_sighup() {
    let env = Env::start(&charger("CP-001", 1, None)).await.unwrap();
    let mut cp = env.charge_point("CP-002", &[]).await.unwrap();
    assert_eq!(cp.expect("connect_failed", T).await.unwrap()["status"], 404);
    let file = env.dir.path().join("chargers.toml");
    std::fs::write(&file, "not toml [").unwrap();
    let me = std::process::id().to_string();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &me])
            .status()
            .unwrap()
    };
    assert!(hup().success());
    testkit::wait_until(
        "a bad file is refused",
        T,
        Duration::from_millis(20),
        || async {
            env.gateway_metric("ocpp_registry_reloads_total{kind=\"failed\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    // Still the old registry.
    assert!(env.gateway().shared.registry().get("CP-001").is_some());
    std::fs::write(
        &file,
        format!(
            "{}{}",
            charger("CP-001", 1, None),
            charger("CP-002", 3, None)
        ),
    )
    .unwrap();
    assert!(hup().success());
    testkit::wait_until(
        "the new file is loaded",
        T,
        Duration::from_millis(20),
        || async {
            env.gateway_metric("ocpp_registry_reloads_total{kind=\"ok\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    let mut cp = env
        .charge_point("CP-002", &["--connectors", "3"])
        .await
        .unwrap();
    cp.boot(3).await.unwrap();
    env.station_where("CP-002", "CP-002 with 3 chargers", |s| s["chargers"] == 3)
        .await
        .unwrap();
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_2_tls_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (sudo apt-get install -y openssl)");
    assert!(status.success());
    let env = Env::start_with(&charger("CP-001", 1, Some("s3cret")), |c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await
    .unwrap();
    assert!(env.url.starts_with("wss://"));
    let ca = cert.display().to_string();
    let mut bad = env
        .charge_point("CP-001", &["--ca", &ca, "--password", "nope"])
        .await
        .unwrap();
    assert_eq!(
        bad.expect("connect_failed", T).await.unwrap()["status"],
        401
    );
    let mut cp = env
        .charge_point("CP-001", &["--ca", &ca, "--password", "s3cret"])
        .await
        .unwrap();
    cp.boot(1).await.unwrap();
    env.station_where("CP-001", "CP-001 over TLS", |s| s["state"] == "available")
        .await
        .unwrap();
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_for_later_at_a_busy_charger_waits_for_a_free_connector() {
    let env = Env::start(&charger("CP-001", 1, None)).await.unwrap();
    let mut cp = env
        .charge_point("CP-001", &["--connectors", "1"])
        .await
        .unwrap();
    cp.boot(1).await.unwrap();
    cp.status(1, "Charging").await.unwrap();
    env.station_where("CP-001", "CP-001 full", |s| s["state"] == "full")
        .await
        .unwrap();
    // The fog plans the vehicle in after the one charging now.
    let mut car = env.vehicle("car-7").await.unwrap();
    let rec = car.ask("r-1").await.unwrap();
    assert_eq!(rec.status, RecommendationStatus::Assigned, "{rec:?}");
    testkit::wait_until(
        "the reservation waits at the gateway",
        T,
        Duration::from_millis(20),
        || async {
            env.gateway_metric("ocpp_reservations_total{kind=\"waiting\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    // No ReserveNow (it would be Occupied, or hold a connector from now on), no revision.
    cp.send(json!({"cmd": "heartbeat"})).await.unwrap();
    cp.expect("heartbeat", T).await.unwrap();
    assert!(cp.seen_names().iter().all(|n| n != "reserve_now"));
    assert_eq!(env.reservations().await.unwrap().len(), 1, "the slot holds");

    // The vehicle charging leaves: the connector is reserved for ours at once.
    cp.status(1, "Available").await.unwrap();
    let reserve = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(reserve["connector_id"], 1);
    let expiry = chrono::DateTime::parse_from_rfc3339(reserve["expiry_date"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(expiry as u64, rec.expires_ms.unwrap());

    // Cancelled while waiting: the charger hears nothing, the fog frees the slot.
    let mut other = env.vehicle("car-8").await.unwrap();
    cp.status(1, "Charging").await.unwrap();
    let second = other.ask("r-2").await.unwrap();
    assert_eq!(second.status, RecommendationStatus::Assigned, "{second:?}");
    testkit::wait_until("the second waits", T, Duration::from_millis(20), || async {
        env.gateway_metric("ocpp_reservations_total{kind=\"waiting\"}")
            .await
            .unwrap()
            == 2.0
    })
    .await
    .unwrap();
    other
        .end(
            second.reservation_id.as_deref().unwrap(),
            ReservationAction::Cancel,
        )
        .await
        .unwrap();
    testkit::wait_until(
        "the waiting reservation is cancelled",
        T,
        Duration::from_millis(20),
        || async {
            env.gateway_metric("ocpp_reservations_total{kind=\"cancelled\"}")
                .await
                .unwrap()
                == 1.0
        },
    )
    .await
    .unwrap();
    cp.status(1, "Available").await.unwrap();
    cp.send(json!({"cmd": "heartbeat"})).await.unwrap();
    cp.expect("heartbeat", T).await.unwrap();
    assert!(
        cp.seen_names()
            .iter()
            .all(|n| n != "reserve_now" && n != "cancel_reservation"),
        "{:?}",
        cp.seen_names()
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

/// A one-connector charger busy with a transaction (id tag `walk-in`); returns the
/// charge point and the transaction id.
async fn busy_charger(env: &Env) -> (common::ChargePoint, i64) {
    let mut cp = env
        .charge_point("CP-001", &["--connectors", "1"])
        .await
        .unwrap();
    cp.boot(1).await.unwrap();
    let start = cp
        .run(json!({"cmd": "start", "connector": 1, "id_tag": "walk-in"}))
        .await
        .unwrap();
    cp.status(1, "Charging").await.unwrap();
    (cp, start["transaction_id"].as_i64().unwrap())
}

/// The transaction stops and the connector is Available again.
async fn stop(cp: &mut common::ChargePoint, transaction_id: i64) {
    cp.run(json!({"cmd": "stop", "transaction_id": transaction_id}))
        .await
        .unwrap();
    cp.status(1, "Available").await.unwrap();
}

async fn wait_metric(env: &Env, series: &str, value: f64) {
    testkit::wait_until(series, T, Duration::from_millis(20), || async {
        (env.gateway_metric(series).await.unwrap() == value).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// No ReserveNow reached the charger so far (a heartbeat's round trip after whatever
/// could have sent one).
async fn no_reserve_now_yet(cp: &mut common::ChargePoint) {
    cp.run(json!({"cmd": "heartbeat"})).await.unwrap();
    assert!(
        cp.seen_names().iter().all(|n| n != "reserve_now"),
        "{:?}",
        cp.seen_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_reservations_get_the_free_connector_in_the_order_the_fog_planned_them() {
    use protocol::StationReservationEventKind::{Accepted, Arrived};
    let env = Env::start(&charger("CP-001", 1, None)).await.unwrap();
    let (mut cp, tx) = busy_charger(&env).await;
    let mut fog = env.fog_side("CP-001").await.unwrap();
    let now = common::wall_ms() as u64;
    let expires = now + 3_600_000;
    // Sent in this order: A planned last, B first, C without a planned start.
    fog.reserve("res-a", "car-a", expires, Some(now + 1_800_000))
        .await
        .unwrap();
    fog.reserve("res-b", "car-b", expires, Some(now + 600_000))
        .await
        .unwrap();
    fog.reserve("res-c", "car-c", expires, None).await.unwrap();
    wait_metric(&env, "ocpp_reservations_total{kind=\"waiting\"}", 3.0).await;
    no_reserve_now_yet(&mut cp).await;

    // The transaction stops: B, planned first, gets the connector.
    stop(&mut cp, tx).await;
    let b = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(
        (b["id_tag"].as_str(), b["connector_id"].as_u64()),
        (Some("car-b"), Some(1))
    );
    assert_eq!(common::expiry_ms(&b), expires);
    assert_eq!(fog.event().await.unwrap(), ("res-b".into(), Accepted));
    // B's vehicle plugs in on it and charges: A still waits.
    let start = cp
        .run(json!({"cmd": "start", "connector": 1, "id_tag": "car-b",
                    "reservation_id": b["reservation_id"]}))
        .await
        .unwrap();
    cp.status(1, "Charging").await.unwrap();
    assert_eq!(fog.event().await.unwrap(), ("res-b".into(), Arrived));
    no_reserve_now_yet(&mut cp).await;

    // B's vehicle leaves: A next.
    stop(&mut cp, start["transaction_id"].as_i64().unwrap()).await;
    let a = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(a["id_tag"], "car-a");
    assert_ne!(a["reservation_id"], b["reservation_id"]);
    assert_eq!(fog.event().await.unwrap(), ("res-a".into(), Accepted));

    // A is cancelled: its connector goes to C, the one without a planned start.
    fog.cancel("res-a").await.unwrap();
    let cancel = cp.expect("cancel_reservation", T).await.unwrap();
    assert_eq!(cancel["reservation_id"], a["reservation_id"]);
    let c = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(c["id_tag"], "car-c");
    assert_eq!(fog.event().await.unwrap(), ("res-c".into(), Accepted));
    assert_eq!(
        env.gateway_metric("ocpp_reservations_total{kind=\"accepted\"}")
            .await
            .unwrap(),
        3.0
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_for_a_known_reservation_updates_it_and_a_redelivery_changes_nothing() {
    let env = Env::start(&charger("CP-001", 1, None)).await.unwrap();
    let (mut cp, tx) = busy_charger(&env).await;
    let fog = env.fog_side("CP-001").await.unwrap();
    let now = common::wall_ms() as u64;
    let expires = now + 3_600_000;
    fog.reserve("res-a", "car-a", expires, Some(now + 600_000))
        .await
        .unwrap();
    fog.reserve("res-b", "car-b", expires, Some(now + 1_200_000))
        .await
        .unwrap();
    wait_metric(&env, "ocpp_reservations_total{kind=\"waiting\"}", 2.0).await;
    // A re-plan moves B ahead of A, with a new expiry.
    let b_expires = expires + 60_000;
    fog.reserve("res-b", "car-b", b_expires, Some(now + 300_000))
        .await
        .unwrap();
    // The same again (a QoS 1 redelivery): nothing changes.
    fog.reserve("res-b", "car-b", b_expires, Some(now + 300_000))
        .await
        .unwrap();
    fog.reserve("res-c", "car-c", expires, None).await.unwrap();
    wait_metric(&env, "ocpp_reservations_total{kind=\"waiting\"}", 3.0).await;
    assert_eq!(
        env.gateway_metric("ocpp_reservations_total{kind=\"updated\"}")
            .await
            .unwrap(),
        1.0
    );
    no_reserve_now_yet(&mut cp).await;

    stop(&mut cp, tx).await;
    let b = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(b["id_tag"], "car-b", "B moved ahead of A");
    assert_eq!(common::expiry_ms(&b), b_expires, "with its new expiry");

    // B, placed on the charger, gets a new expiry: ReserveNow again with the same
    // reservationId, which replaces it there (OCPP 1.6 §5.13).
    let later = b_expires + 60_000;
    fog.reserve("res-b", "car-b", later, Some(now + 300_000))
        .await
        .unwrap();
    let again = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(again["reservation_id"], b["reservation_id"]);
    assert_eq!(again["connector_id"], b["connector_id"]);
    assert_eq!(common::expiry_ms(&again), later);
    // A redelivery of that, and a new start alone (the charger holds the connector
    // already: nothing of its ReserveNow changes), send nothing. (D, processed after
    // them, says when they have been.)
    fog.reserve("res-b", "car-b", later, Some(now + 300_000))
        .await
        .unwrap();
    fog.reserve("res-b", "car-b", later, Some(now + 400_000))
        .await
        .unwrap();
    fog.reserve("res-d", "car-d", expires, None).await.unwrap();
    wait_metric(&env, "ocpp_reservations_total{kind=\"waiting\"}", 4.0).await;
    no_reserve_now_yet(&mut cp).await;
    fog.cancel("res-b").await.unwrap();
    let cancel = cp.expect("cancel_reservation", T).await.unwrap();
    assert_eq!(cancel["reservation_id"], b["reservation_id"]);
    // The connector goes to A, then (A cancelled) to C.
    let a = cp.expect("reserve_now", T).await.unwrap();
    assert_eq!(a["id_tag"], "car-a");
    fog.cancel("res-a").await.unwrap();
    cp.expect("cancel_reservation", T).await.unwrap();
    assert_eq!(
        cp.expect("reserve_now", T).await.unwrap()["id_tag"],
        "car-c"
    );
    assert_eq!(
        env.gateway_metric("ocpp_reservations_total{kind=\"updated\"}")
            .await
            .unwrap(),
        2.0
    );
    cp.exit().await.unwrap();
    env.stop().await.unwrap();
}
