//! Broker authentication and ACLs generated from the topology and the deployment's
//! users (topology/src/auth.rs), enforced by a real Mosquitto: nobody speaks for
//! somebody else, and the fog never sees a forged message.

mod common;

use std::time::Duration;

use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationStatus, topics};
use serde_json::Value;
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port, wait_until};
use topology::auth::Credentials;
use topology::{Auth, Bounds, RenderOptions, Topology};

const REGION: &str = "north";
const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

fn request(id: &str) -> ChargeRequest {
    common::request(id, -12.25, -38.95, 0.3)
}

fn station(id: &str) -> StationStatus {
    common::station(id, -12.24, -38.95, 2, 50.0)
}

#[tokio::test]
async fn every_role_is_held_to_its_own_topics() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        min_lat: -13.0,
        min_lon: -39.0,
        max_lat: -12.0,
        max_lon: -38.0,
    };
    let (central_port, port) = (free_port().unwrap(), free_port().unwrap());
    let t = Topology::local("acl", &[(REGION, bounds)], central_port, &[port]).unwrap();
    let creds = Credentials::generate(
        &t,
        &[(REGION.into(), "n-1".into())],
        &["car-a".into(), "car-b".into()],
    );
    std::fs::write(dir.path().join("north.acl"), creds.acl(Some(REGION))).unwrap();
    creds
        .write_password_file(Some(REGION), &dir.path().join("north.passwd"))
        .unwrap();
    let auth = Auth::files(dir.path(), &creds);
    let conf_t = t.clone();
    let broker = Mosquitto::start(
        MosquittoConfig::from_template(move |_, d| {
            let opts = RenderOptions {
                auth: auth.clone(),
                ..RenderOptions::test(d)
            };
            topology::region_broker_conf(&conf_t, REGION, &opts).unwrap()
        })
        .with_port(port),
    )
    .unwrap();
    let url = broker.url();
    let pw = |name: &str| creds.password(name).unwrap().to_owned();

    // Anonymous and wrong passwords are refused.
    assert!(
        TestClient::connect(&url, "anon").await.is_err(),
        "anonymous refused"
    );
    assert!(
        TestClient::connect_as(&url, "car-a", "car-a", "wrong")
            .await
            .is_err(),
        "a wrong password is refused"
    );

    let mut config = Fog::config(&url, REGION);
    config.mqtt_username = Some("fog-north".into());
    config.mqtt_password = Some(pw("fog-north"));
    let fog = Fog::start_with(config).await.unwrap();

    let st = TestClient::connect_as(&url, "n-1", "n-1", &pw("n-1"))
        .await
        .unwrap();
    st.publish_json(
        &topics::station_status(REGION, "n-1"),
        &station("n-1"),
        1,
        true,
    )
    .await
    .unwrap();
    wait_until(
        "the fog knows the station",
        T,
        Duration::from_millis(20),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.len() == 1)
        },
    )
    .await
    .unwrap();

    let mut a = TestClient::connect_as(&url, "car-a", "car-a", &pw("car-a"))
        .await
        .unwrap();
    let mut b = TestClient::connect_as(&url, "car-b", "car-b", &pw("car-b"))
        .await
        .unwrap();
    a.subscribe(&format!("ev/{REGION}/vehicles/+/recommendation"), 1)
        .await
        .unwrap();
    b.subscribe(&topics::recommendation(REGION, "car-b"), 1)
        .await
        .unwrap();

    // A's own request is answered, and only A hears it.
    a.publish_json(&topics::request(REGION, "car-a"), &request("a-1"), 1, false)
        .await
        .unwrap();
    let answer: Recommendation = a
        .wait_for_json(&topics::recommendation(REGION, "car-a"), T)
        .await
        .unwrap();
    assert_eq!(answer.status, RecommendationStatus::Assigned);
    b.expect_silence(&topics::recommendation(REGION, "car-a"), QUIET)
        .await
        .unwrap();

    // A forging B's request, a station status, or B reading... all dropped by the broker.
    a.publish_json(
        &topics::request(REGION, "car-b"),
        &request("forged"),
        1,
        false,
    )
    .await
    .unwrap();
    a.publish_json(
        &topics::station_status(REGION, "n-2"),
        &station("n-2"),
        1,
        true,
    )
    .await
    .unwrap();
    // The station may not ask for a charge, nor announce another station.
    st.publish_json(&topics::request(REGION, "n-1"), &request("st-1"), 1, false)
        .await
        .unwrap();
    st.publish_json(
        &topics::station_status(REGION, "n-9"),
        &station("n-9"),
        1,
        true,
    )
    .await
    .unwrap();
    // B's own request: B hears its answer; A, subscribed to every vehicle, does not.
    b.publish_json(&topics::request(REGION, "car-b"), &request("b-1"), 1, false)
        .await
        .unwrap();
    let answer: Recommendation = b
        .wait_for_json(&topics::recommendation(REGION, "car-b"), T)
        .await
        .unwrap();
    assert_eq!(answer.request_id, "b-1", "B got only its own answer");
    a.expect_silence(&topics::recommendation(REGION, "car-b"), QUIET)
        .await
        .unwrap();
    b.expect_silence(&topics::recommendation(REGION, "car-b"), QUIET)
        .await
        .unwrap();

    // The fog saw exactly the two genuine requests and the one station.
    let requests = fog
        .metric(r#"fog_requests_total{status="assigned"}"#)
        .await
        .unwrap()
        + fog
            .metric(r#"fog_requests_total{status="rejected"}"#)
            .await
            .unwrap()
        + fog
            .metric(r#"fog_requests_total{status="unavailable"}"#)
            .await
            .unwrap();
    assert_eq!(requests, 2.0, "forged requests never reached the fog");
    let stations: Vec<Value> = fog.get_json("/api/stations").await.unwrap();
    assert_eq!(stations.len(), 1, "{stations:?}");
    let reservations: Vec<Value> = fog.get_json("/api/reservations").await.unwrap();
    assert_eq!(reservations.len(), 2);
    assert!(reservations.iter().all(|r| r["vehicle_id"] != "n-1"));
    fog.stop().await.unwrap();
}

#[tokio::test]
async fn bridges_log_in_to_central_and_reach_only_their_own_prefix() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let band = |i: u32| Bounds {
        min_lat: 0.0,
        min_lon: f64::from(i),
        max_lat: 1.0,
        max_lon: f64::from(i + 1),
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let t = Topology::local(
        "acl",
        &[("north", band(0)), ("south", band(1))],
        ports[0],
        &ports[1..],
    )
    .unwrap();
    let creds = Credentials::generate(&t, &[], &[]);
    for broker in [None, Some("north"), Some("south")] {
        let name = broker.unwrap_or("central");
        std::fs::write(dir.path().join(format!("{name}.acl")), creds.acl(broker)).unwrap();
        creds
            .write_password_file(broker, &dir.path().join(format!("{name}.passwd")))
            .unwrap();
    }
    let auth = Auth::files(dir.path(), &creds);
    let start = |name: &'static str, port: u16| {
        let (t, auth) = (t.clone(), auth.clone());
        Mosquitto::start(
            MosquittoConfig::from_template(move |_, d| {
                let opts = RenderOptions {
                    auth: auth.clone(),
                    ..RenderOptions::test(d)
                };
                if name == "central" {
                    topology::central_broker_conf(&t, &opts)
                } else {
                    topology::region_broker_conf(&t, name, &opts).unwrap()
                }
            })
            .with_port(port),
        )
        .unwrap()
    };
    let central = start("central", ports[0]);
    let north = start("north", ports[1]);
    let pw = |name: &str| creds.password(name).unwrap().to_owned();

    let mut c = TestClient::connect_as(&central.url(), "central", "central", &pw("central"))
        .await
        .unwrap();
    c.subscribe("regions/#", 1).await.unwrap();
    let fog = TestClient::connect_as(&north.url(), "fog-north", "fog-north", &pw("fog-north"))
        .await
        .unwrap();
    // The bridge logged in with its user: what the fog sends up reaches central.
    let deadline = std::time::Instant::now() + T;
    let got = loop {
        fog.publish("fog/up/probe", "up", 1, false).await.unwrap();
        let seen = c.drain(Duration::from_millis(200)).await.unwrap();
        if let Some(m) = seen
            .into_iter()
            .find(|m| m.topic() == "regions/north/up/probe")
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "north's bridge never carried fog/up to central"
        );
    };
    assert_eq!(got.payload(), b"up");

    // The bridge user may not speak for another region, nor read central's other traffic.
    let impostor = TestClient::connect_as(&central.url(), "x", "bridge-north", &pw("bridge-north"))
        .await
        .unwrap();
    impostor
        .publish("regions/south/up/aggregate", "forged", 1, false)
        .await
        .unwrap();
    c.expect_silence("regions/south/#", QUIET).await.unwrap();
    // A fog user is unknown at the central broker.
    assert!(
        TestClient::connect_as(&central.url(), "y", "fog-north", &pw("fog-north"))
            .await
            .is_err()
    );
}

/// docs/security.md, "Rotating a credential": new password file, SIGHUP, and the old
/// password stops working at once: Mosquitto re-checks the clients already connected
/// and disconnects the ones whose password changed; they log in again with the new one.
#[tokio::test]
async fn a_rotated_password_takes_effect_on_sighup_without_a_restart() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        min_lat: -13.0,
        min_lon: -39.0,
        max_lat: -12.0,
        max_lon: -38.0,
    };
    let (central_port, port) = (free_port().unwrap(), free_port().unwrap());
    let t = Topology::local("rotate", &[(REGION, bounds)], central_port, &[port]).unwrap();
    let mut creds = Credentials::generate(&t, &[], &["car-a".into()]);
    let passwd = dir.path().join("north.passwd");
    std::fs::write(dir.path().join("north.acl"), creds.acl(Some(REGION))).unwrap();
    creds.write_password_file(Some(REGION), &passwd).unwrap();
    let auth = Auth::files(dir.path(), &creds);
    let conf_t = t.clone();
    let broker = Mosquitto::start(
        MosquittoConfig::from_template(move |_, d| {
            let opts = RenderOptions {
                auth: auth.clone(),
                ..RenderOptions::test(d)
            };
            topology::region_broker_conf(&conf_t, REGION, &opts).unwrap()
        })
        .with_port(port),
    )
    .unwrap();
    let url = broker.url();
    let old = creds.password("car-a").unwrap().to_owned();
    let connected = TestClient::connect_as(&url, "car-a-1", "car-a", &old)
        .await
        .unwrap();

    // 1. new password, new password file; 2. SIGHUP.
    let new = topology::auth::random_password();
    creds
        .users
        .iter_mut()
        .find(|u| u.name == "car-a")
        .unwrap()
        .password = new.clone();
    creds.write_password_file(Some(REGION), &passwd).unwrap();
    let pid = broker.pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );

    // The old password is refused from now on, and the new one works.
    wait_until(
        "the old password is refused",
        T,
        Duration::from_millis(100),
        || {
            let url = url.clone();
            let old = old.clone();
            async move {
                TestClient::connect_as(&url, "car-a-2", "car-a", &old)
                    .await
                    .is_err()
            }
        },
    )
    .await
    .unwrap();
    TestClient::connect_as(&url, "car-a-3", "car-a", &new)
        .await
        .expect("the new password is accepted");
    // The client connected with the old password has been put out.
    let put_out = connected
        .publish_json(
            &topics::vehicle(REGION, "car-a", topics::VehicleChannel::Request),
            &request("r-after-rotation"),
            1,
            false,
        )
        .await;
    assert!(
        put_out.is_err(),
        "a client with the old password stayed connected"
    );
}
