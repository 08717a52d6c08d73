//! The optional TLS listener of the generated broker configs: certificates made with
//! `openssl` for the test, the fog server and a vehicle over `ssl://`, and a client that
//! does not trust the CA is turned away.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use protocol::{Recommendation, RecommendationStatus, topics};
use serverkit::{Link, LinkSettings};
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port};
use tokio_util::sync::CancellationToken;
use topology::{Bounds, RenderOptions, Tls, Topology};

const REGION: &str = "north";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for `name` valid for 127.0.0.1, in `dir`.
fn certificates(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fogcharge test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

#[tokio::test]
async fn fog_and_vehicles_talk_over_tls_and_an_untrusting_client_is_turned_away() {
    testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), REGION);
    let (central_port, port, tls_port) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let bounds = Bounds {
        min_lat: -13.0,
        min_lon: -39.0,
        max_lat: -12.0,
        max_lon: -38.0,
    };
    let t = Topology::local("tls", &[(REGION, bounds)], central_port, &[port]).unwrap();
    let tls = Tls {
        dir: dir.path().to_path_buf(),
        ports: BTreeMap::from([(REGION.to_owned(), tls_port)]),
    };
    let broker = Mosquitto::start(
        MosquittoConfig::from_template(move |_, d| {
            let opts = RenderOptions {
                tls: Some(tls.clone()),
                ..RenderOptions::test(d)
            };
            topology::region_broker_conf(&t, REGION, &opts).unwrap()
        })
        .with_port(port),
    )
    .unwrap();
    assert!(
        broker.log().contains(&format!("port {tls_port}")),
        "{}",
        broker.log()
    );
    let ssl_url = format!("ssl://127.0.0.1:{tls_port}");
    let ca = dir.path().join("ca.crt");

    // A station over the plain listener, the fog over TLS.
    let station = TestClient::connect(&broker.url(), "n-1").await.unwrap();
    let status = common::station("n-1", -12.24, -38.95, 2, 50.0);
    station
        .publish_json(&topics::station_status(REGION, "n-1"), &status, 1, true)
        .await
        .unwrap();
    let mut config = Fog::config(&ssl_url, REGION);
    config.mqtt_ca_file = Some(ca.clone());
    let fog = Fog::start_with(config).await.unwrap();

    // A vehicle over TLS gets its answer.
    let shutdown = CancellationToken::new();
    let settings = |ca_file| LinkSettings {
        url: ssl_url.clone(),
        client_id: "car-1".into(),
        persistent: false,
        username: None,
        password: None,
        will: None,
        ca_file,
        ..Default::default()
    };
    let mut car = Link::connect(
        &settings(Some(ca.clone())),
        vec![(topics::recommendation(REGION, "car-1"), 1)],
        &shutdown,
    )
    .await
    .unwrap();
    let request = common::request("r-tls", -12.25, -38.95, 0.4);
    car.publish(
        &topics::request(REGION, "car-1"),
        &serde_json::to_vec(&request).unwrap(),
        1,
        false,
    );
    let msg = tokio::time::timeout(Duration::from_secs(10), car.next(&shutdown))
        .await
        .expect("an answer over TLS")
        .unwrap();
    let answer: Recommendation = serde_json::from_slice(msg.payload()).unwrap();
    assert_eq!(answer.status, RecommendationStatus::Assigned, "{answer:?}");

    // A client that does not trust this CA never gets connected: it keeps retrying
    // until it is told to stop.
    let give_up = CancellationToken::new();
    let stop = give_up.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
    });
    let stranger = Link::connect(&settings(None), Vec::new(), &give_up).await;
    assert!(stranger.is_err(), "a client without the CA was let in");
    shutdown.cancel();
    car.disconnect().await;
    fog.stop().await.unwrap();
}
