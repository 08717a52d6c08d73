//! `docker compose -f deploy/regions.yml up -d` for real, on the Docker engine, with the
//! images of `./dev images` (`docker-compose` v1 where that is all there is).
//!
//! Checks: every service starts after what it depends on (setup completed, brokers
//! healthy, servers healthy) and becomes healthy; an anonymous MQTT client is refused;
//! device-sim's report, read from its logs, has every request answered, reroutes out of
//! the overloaded region and no fallback; the reroutes went through central; central's
//! API and every fog server's `/metrics` answer on the published host ports; every
//! region's OCPP gateway answers charge points on its published port, and a charger
//! listed in its chargers file (an override mounts one) opens a session and becomes a
//! station on its region's broker; `down` leaves no container, `down -v` no volume and
//! no network.

use std::time::{Duration, Instant};

use deploy_tests::{Engine, Project, counter, deploy_topology, get_json, get_text, ms};
use protocol::api::RegionView;
use serde_json::Value;
use testkit::charge_point;

/// The password of the charger the test lists in the first region's chargers file.
const CHARGER_PASSWORD: &str = "cp-001-secret";

/// `2026-12-01T16:40:01.12345Z` as (seconds part, nanoseconds): Docker's timestamps
/// drop trailing zeros, so they do not compare as strings.
fn instant(ts: &str) -> (String, u32) {
    let ts = ts.trim_end_matches('Z');
    match ts.split_once('.') {
        Some((secs, frac)) => (
            secs.to_owned(),
            format!("{frac:0<9}")[..9].parse().unwrap_or(0),
        ),
        None => (ts.to_owned(), 0),
    }
}

/// A row of device-sim's comparison table (one strategy: `fog`).
fn row(table: &str, label: &str) -> u64 {
    table
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(label)?;
            rest.starts_with("  ")
                .then(|| rest.split_whitespace().next())?
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no row {label:?} in device-sim's report:\n{table}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_deployment_runs_for_real() {
    let engine = Engine::require();
    let t = deploy_topology();
    // The first region's gateway gets a chargers file with one charger (the checked-in
    // ones are empty): its password hash made here, the file mounted instead.
    let first = t.regions[0].id.clone();
    let chargers = tempfile::tempdir().unwrap();
    let chargers_file = chargers.path().join("chargers.toml");
    std::fs::write(
        &chargers_file,
        format!(
            "[[charger]]\nid = \"CP-001\"\nlat = -12.9\nlon = -38.5\nconnectors = 2\n\
             power_kw = 50.0\npassword = \"{}\"\n",
            topology::auth::hash_password(CHARGER_PASSWORD)
        ),
    )
    .unwrap();
    let override_chargers = format!(
        "services:\n  ocpp-{first}:\n    volumes:\n      - {}:{}:ro\n",
        chargers_file.display(),
        topology::deploy::CHARGERS_PATH
    );
    let mut project = Project::new(&engine, &[&override_chargers]).unwrap();
    let mut servers: Vec<String> = vec![t.central.host.clone(), "central".into()];
    for r in &t.regions {
        servers.push(r.broker.host.clone());
        servers.push(format!("fog-{}", r.id));
        servers.push(format!("ocpp-{}", r.id));
    }
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();

    let started = Instant::now();
    project.up(&[]).unwrap();
    project
        .wait_healthy(&servers, Duration::from_secs(120))
        .await
        .unwrap();
    let healthy_ms = ms(started);

    // Each service started only after what it depends on was healthy (or completed).
    let compose: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(deploy_tests::repo().join("deploy/regions.yml")).unwrap(),
    )
    .unwrap();
    let state = |service: &str| {
        project
            .inspect(&project.container(service).unwrap())
            .unwrap()
    };
    for (name, svc) in compose["services"].as_object().unwrap() {
        let Some(deps) = svc["depends_on"].as_object() else {
            continue;
        };
        let me = state(name);
        for (dep, cond) in deps {
            let other = state(dep);
            let after = match cond["condition"].as_str() {
                Some("service_completed_successfully") => {
                    assert_eq!(other["State"]["ExitCode"], 0, "{dep}");
                    &other["State"]["FinishedAt"]
                }
                _ => &other["State"]["StartedAt"],
            };
            assert!(
                instant(me["State"]["StartedAt"].as_str().unwrap())
                    >= instant(after.as_str().unwrap()),
                "{name} started before {dep} was ready"
            );
        }
    }

    // Authentication is on: an anonymous client is refused.
    let north = t.regions[0].broker.host.clone();
    let anonymous = testkit::TestClient::connect(
        &format!("tcp://127.0.0.1:{}", project.port(&north)),
        "anonymous",
    )
    .await;
    assert!(anonymous.is_err(), "an anonymous client got in");

    // device-sim runs its hour at 60x and exits; its report is in its log.
    let sim = project.container("device-sim").unwrap();
    let exited = testkit::wait_until(
        "device-sim exits",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async {
            let s = project.inspect(&sim).ok()?;
            (s["State"]["Status"] == "exited").then(|| s["State"]["ExitCode"].clone())
        },
    )
    .await
    .unwrap();
    let log = project.logs("device-sim").unwrap();
    assert_eq!(exited, 0, "device-sim failed:\n{log}");
    let requests = row(&log, "requests");
    assert!(requests > 50, "too few requests:\n{log}");
    assert_eq!(row(&log, "answered"), requests, "{log}");
    assert_eq!(row(&log, "unavailable / fallback"), 0, "{log}");
    let rerouted = row(&log, "rerouted");
    assert!(rerouted > 0, "no reroute:\n{log}");

    // Every fog server answered, and its /metrics is on its published port...
    let mut answered = Vec::new();
    for r in &t.regions {
        let metrics = get_text(project.port(&format!("fog-{}", r.id)), "/metrics")
            .await
            .unwrap();
        let n = counter(&metrics, "fog_requests_total");
        assert!(n > 0.0, "fog-{} answered nothing", r.id);
        answered.push((r.id.clone(), n));
    }
    // ...and the reroutes went through central, whose API is published too.
    let central = project.port("central");
    let metrics = get_text(central, "/metrics").await.unwrap();
    assert!(
        counter(&metrics, "central_reroutes_succeeded_total") > 0.0,
        "{metrics}"
    );
    let regions: Vec<RegionView> = get_json(central, "/api/regions").await.unwrap();
    for r in &t.regions {
        assert!(
            regions.iter().any(|v| v.id == r.id),
            "{} not in {regions:?}",
            r.id
        );
    }

    // Every gateway answers charge points on its published port; the checked-in
    // chargers files know none.
    for r in t.regions.iter().skip(1) {
        let port = project.port(&format!("ocpp-{}", r.id));
        let status = charge_point::open(port, "CP-001", None, &[]);
        assert!(status.contains(" 404 "), "ocpp-{}: {status}", r.id);
    }
    // The first region's charger: a wrong password is refused, the right one opens a
    // session, and the gateway (as its own broker user) publishes the station.
    let gateway = project.port(&format!("ocpp-{first}"));
    let status = charge_point::open(gateway, "CP-001", Some("wrong"), &[]);
    assert!(status.contains(" 401 "), "{status}");
    let fog_user = format!("fog-{first}");
    let users = deploy_tests::users(&project, &fog_user).unwrap();
    let fog = (
        first.as_str(),
        fog_user.as_str(),
        users.password(&fog_user).unwrap(),
    );
    let broker = format!("tcp://127.0.0.1:{}", project.port(&north));
    let station =
        charge_point::boot_as_station(&broker, fog, gateway, ("CP-001", CHARGER_PASSWORD))
            .await
            .unwrap();
    assert_eq!(station["station_id"], "CP-001", "{station}");
    assert_eq!(station["takes_reservations"], true, "{station}");

    // down: no container left (volumes stay); down -v: nothing left, also no volume
    // without the project's label (anonymous ones).
    let mut mounted = Vec::new();
    for service in compose["services"].as_object().unwrap().keys() {
        let s = state(service);
        for m in s["Mounts"].as_array().unwrap() {
            if m["Type"] == "volume" {
                mounted.push(m["Name"].as_str().unwrap().to_owned());
            }
        }
    }
    project.down(false).unwrap();
    let (containers, networks, volumes) = project.leftovers().unwrap();
    assert!(containers.is_empty(), "{containers:?}");
    assert!(networks.is_empty(), "{networks:?}");
    assert!(!volumes.is_empty(), "down removed the volumes");
    project.down(true).unwrap();
    let (containers, networks, volumes) = project.leftovers().unwrap();
    assert!(containers.is_empty() && networks.is_empty() && volumes.is_empty());
    for v in &mounted {
        assert!(
            deploy_tests::docker(&["volume", "inspect", v]).is_err(),
            "volume {v} outlived down -v"
        );
    }
    println!(
        "compose ({}): up to all healthy {healthy_ms} ms; device-sim {requests} requests, all answered, {rerouted} rerouted, 0 fallback; answered by region {answered:?}; {} OCPP gateways healthy, a charger of {first} became a station",
        engine.compose_version,
        t.regions.len()
    );
}
