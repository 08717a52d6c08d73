//! The topology description: parsing, every validation rule, the bridge contract in
//! the generated configs, and no drift in the checked-in files.

use std::path::Path;

use serde::Deserialize as _;

use topology::{
    Bounds, RenderOptions, Topology, TopologyError, central_broker_conf, checked_in_files,
    region_broker_conf,
};

const GOOD: &str = r#"
name = "t"
[central]
host = "broker-central"
port = 1883
[[region]]
id = "north"
bounds = { min_lat = 0.0, min_lon = 0.0, max_lat = 1.0, max_lon = 1.0 }
broker = { host = "broker-north", port = 1883 }
[[region]]
id = "south"
polygon = [[-1.0, 0.0], [-1.0, 1.0], [0.0, 0.5]]
broker = { host = "broker-south", port = 1883 }
"#;

fn with(text: &str, from: &str, to: &str) -> Result<Topology, TopologyError> {
    assert!(text.contains(from), "{from}");
    Topology::from_toml_str(&text.replacen(from, to, 1))
}

#[test]
fn a_good_topology_parses() {
    let t = Topology::from_toml_str(GOOD).unwrap();
    assert_eq!(t.regions.len(), 2);
    assert_eq!(t.central.listen, "127.0.0.1");
    assert_eq!(t.region("south").unwrap().outline().len(), 3);
    assert_eq!(t.region("north").unwrap().outline().len(), 4);
    assert_eq!(t.mosquitto.max_queued_messages, 100_000);
    // It survives a round trip through TOML.
    assert_eq!(Topology::from_toml_str(&t.to_toml()).unwrap(), t);
}

#[test]
fn every_rule_refuses_with_a_clear_error() {
    assert!(matches!(
        Topology::from_toml_str("name = "),
        Err(TopologyError::Parse(_))
    ));
    assert!(matches!(
        with(GOOD, "host = \"broker-central\"", "hots = \"x\""),
        Err(TopologyError::Parse(_))
    ));
    let no_regions = "name = \"t\"\nregion = []\n[central]\nhost = \"c\"\nport = 1\n";
    assert_eq!(
        Topology::from_toml_str(no_regions),
        Err(TopologyError::NoRegions)
    );
    assert_eq!(
        with(GOOD, "id = \"north\"", "id = \"no rth\""),
        Err(TopologyError::BadId("no rth".into()))
    );
    assert_eq!(
        with(GOOD, "id = \"south\"", "id = \"north\""),
        Err(TopologyError::DuplicateRegion("north".into()))
    );
    assert!(matches!(
        with(GOOD, "max_lat = 1.0", "max_lat = 0.0"),
        Err(TopologyError::BadArea { .. })
    ));
    assert!(matches!(
        with(GOOD, "max_lat = 1.0", "max_lat = 91.0"),
        Err(TopologyError::BadArea { .. })
    ));
    assert!(matches!(
        with(GOOD, "[0.0, 0.5]]", "]"),
        Err(TopologyError::BadArea { .. })
    ));
    assert_eq!(
        with(GOOD, "polygon = [[-1.0, 0.0], [-1.0, 1.0], [0.0, 0.5]]", ""),
        Err(TopologyError::NoArea("south".into()))
    );
    assert!(matches!(
        with(GOOD, "port = 1883\n[[region]]", "port = 0\n[[region]]"),
        Err(TopologyError::PortZero { .. })
    ));
    assert!(matches!(
        with(GOOD, "broker-south", "broker-north"),
        Err(TopologyError::DuplicateAddress { .. })
    ));
    let t = Topology::from_toml_str(GOOD).unwrap();
    assert_eq!(
        region_broker_conf(&t, "east", &RenderOptions::test(Path::new("/tmp"))),
        Err(TopologyError::UnknownRegion("east".into()))
    );
    let e = Topology::load(Path::new("/nonexistent/topology.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/topology.toml"), "{e}");
}

#[test]
fn regional_configs_carry_the_bridge_contract() {
    let t = Topology::from_toml_str(GOOD).unwrap();
    let conf =
        region_broker_conf(&t, "north", &RenderOptions::test(Path::new("/data/north"))).unwrap();
    for line in [
        "listener 1883 127.0.0.1",
        "set_tcp_nodelay true",
        "max_queued_messages 100000",
        "persistence true",
        "persistence_location /data/north/",
        "connection north-to-central",
        "address broker-central:1883",
        "bridge_protocol_version mqttv311",
        "cleansession false",
        "local_cleansession false",
        "restart_timeout 1 2",
        "keepalive_interval 5",
        "topic # out 1 fog/up/ regions/north/up/",
        "topic # in 0 fog/down/ regions/north/down/",
    ] {
        assert!(
            conf.lines().any(|l| l == line),
            "missing {line:?} in\n{conf}"
        );
    }
    // The bridge section comes last (Mosquitto reads everything after `connection` as
    // part of it), and only device-free prefixes are bridged.
    let bridge = conf.split("connection ").nth(1).unwrap();
    assert!(!bridge.contains("listener") && !bridge.contains("ev/"));
    let central = central_broker_conf(&t, &RenderOptions::test(Path::new("/data/c")));
    assert!(central.contains("listener 1883 127.0.0.1") && !central.contains("connection"));
}

#[test]
fn the_demo_city_tiles_forty_by_forty_km() {
    let t = Topology::demo_city();
    assert_eq!(t.regions.len(), 4);
    let b: Vec<Bounds> = t.regions.iter().map(|r| r.bounds.unwrap()).collect();
    let span_lat = b.iter().map(|b| b.max_lat).fold(f64::MIN, f64::max)
        - b.iter().map(|b| b.min_lat).fold(f64::MAX, f64::min);
    let km = span_lat * 111.19;
    assert!((35.0..45.0).contains(&km), "{km} km");
}

#[test]
fn checked_in_configs_match_the_generator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = checked_in_files(&root).unwrap();
    assert!(files.iter().any(|(p, _)| p.ends_with("regions.yml")));
    assert!(files.iter().any(|(p, _)| p.starts_with("k8s")));
    for (path, text) in files {
        let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} drifted from deploy/topology.toml: run `cargo run -p topology -- generate` and commit",
            path.display()
        );
    }
    // every file in k8s/ is generated: nothing stale stays behind
    for entry in std::fs::read_dir(root.join("k8s")).unwrap() {
        let name = entry.unwrap().file_name();
        let rel = Path::new("k8s").join(&name);
        assert!(
            checked_in_files(&root)
                .unwrap()
                .iter()
                .any(|(p, _)| p == &rel),
            "k8s/{} is not generated any more: delete it",
            name.to_string_lossy()
        );
    }
}

#[test]
fn deployment_configs_refuse_anonymous_clients_and_hold_no_secret() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Topology::load(&root.join(topology::DEPLOY_TOPOLOGY)).unwrap();
    let creds = topology::auth::Credentials::generate(&t, &[], &[]);
    let confs: Vec<(std::path::PathBuf, String)> = checked_in_files(&root)
        .unwrap()
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "conf" || e == "yaml"))
        .collect();
    for (path, text) in &confs {
        if path.extension().is_some_and(|e| e == "conf") {
            assert!(text.contains("allow_anonymous false"), "{}", path.display());
            assert!(!text.contains("allow_anonymous true"), "{}", path.display());
        }
        assert!(!text.contains("remote_password"), "{}", path.display());
        for u in &creds.users {
            assert!(!text.contains(&u.password));
        }
    }
    // The secrets made at deploy time: each bridge logs in as its own user.
    let files = topology::deploy::secret_files(&t, &creds).unwrap();
    for r in &t.regions {
        let bridge = &files[&format!("bridge-{}/bridge.conf", r.id)];
        let user = format!("bridge-{}", r.id);
        assert!(bridge.contains(&format!("remote_username {user}\n")));
        assert!(bridge.contains(&format!(
            "remote_password {}\n",
            creds.password(&user).unwrap()
        )));
        assert!(files[&format!("{}.passwd", r.id)].contains("health:$7$101$"));
        assert!(files[&format!("{}.acl", r.id)].contains(&format!("user fog-{}", r.id)));
        // the region's OCPP gateway: its password file, and the broker knows it
        let ocpp = format!("ocpp-{}", r.id);
        assert_eq!(
            files[&format!("{ocpp}.password")].trim_end(),
            creds.password(&ocpp).unwrap()
        );
        assert!(files[&format!("{}.passwd", r.id)].contains(&format!("{ocpp}:$7$")));
        assert!(files[&format!("{}.acl", r.id)].contains(&format!("user {ocpp}\n")));
    }
    assert!(files["central.passwd"].contains("central:$7$"));
    assert_eq!(
        files["central.password"].trim_end(),
        creds.password("central").unwrap()
    );
    assert!(files.keys().all(|k| {
        topology::deploy::secret_key(k)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    }));
}

/// Every region runs an OCPP gateway: in compose with its WebSocket on a host port of
/// its own and its region's chargers file mounted; in Kubernetes behind a Service on
/// the OCPP port, the chargers file from the ConfigMap made of the same file.
#[test]
fn every_region_runs_an_ocpp_gateway_with_its_chargers_file() {
    use serde_yaml_ng::Value;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Topology::load(&root.join(topology::DEPLOY_TOPOLOGY)).unwrap();
    let compose: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("deploy/regions.yml")).unwrap())
            .unwrap();
    let config = std::fs::read_to_string(root.join("k8s/10-config.yaml")).unwrap();
    let chargers = serde_yaml_ng::Deserializer::from_str(&config)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|o| o["metadata"]["name"] == "fogcharge-chargers")
        .expect("the ConfigMap fogcharge-chargers");
    let mut host_ports = Vec::new();
    for r in &t.regions {
        let name = format!("ocpp-{}", r.id);
        let svc = &compose["services"][name.as_str()];
        let port = svc["ports"][0].as_str().unwrap();
        assert!(port.ends_with(":8887"), "{name}: {port}");
        host_ports.push(compose_default(port));
        let volumes: Vec<&str> = svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mount = format!(
            "./chargers/{}.toml:/etc/fogcharge/chargers/chargers.toml:ro",
            r.id
        );
        assert!(volumes.contains(&mount.as_str()), "{name}: {volumes:?}");
        assert!(
            svc["depends_on"][r.broker.host.as_str()]["condition"] == "service_healthy",
            "{name}"
        );
        assert!(
            compose["services"]["device-sim"]["depends_on"][name.as_str()].is_mapping(),
            "device-sim waits for {name}"
        );
        let on_disk =
            std::fs::read_to_string(root.join(format!("deploy/chargers/{}.toml", r.id))).unwrap();
        assert_eq!(
            chargers["data"][format!("{}.toml", r.id).as_str()].as_str(),
            Some(on_disk.as_str()),
            "{name}"
        );
        let k8s = std::fs::read_to_string(root.join(format!("k8s/45-{name}.yaml"))).unwrap();
        let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&k8s)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let service = objects.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(8887));
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let items = &pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "chargers")
            .unwrap()["configMap"];
        assert_eq!(items["name"], "fogcharge-chargers");
        assert_eq!(
            items["items"][0]["key"].as_str(),
            Some(format!("{}.toml", r.id).as_str())
        );
        assert_eq!(items["items"][0]["path"], "chargers.toml");
    }
    assert_eq!(host_ports, ["8887:8887", "8888:8887", "8889:8887"]);
}

#[test]
fn a_chargers_file_is_refused_with_a_plain_password_or_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Topology::load(&root.join(topology::DEPLOY_TOPOLOGY)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let charger = |password: &str| {
        format!(
            "[[charger]]\nid = \"CP-1\"\nlat = 0.0\nlon = 0.0\nconnectors = 1\npower_kw = 22.0\n{password}"
        )
    };
    std::fs::write(dir.path().join("north.toml"), "").unwrap();
    std::fs::write(dir.path().join("south.toml"), charger("")).unwrap();
    let missing = topology::deploy::chargers_files(&t, dir.path()).unwrap_err();
    assert!(missing.to_string().contains("east.toml"), "{missing}");
    let hash = topology::auth::hash_password("pw");
    std::fs::write(
        dir.path().join("east.toml"),
        charger(&format!("password = \"{hash}\"\n")),
    )
    .unwrap();
    let files = topology::deploy::chargers_files(&t, dir.path()).unwrap();
    let regions: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(regions, ["north", "south", "east"]);
    std::fs::write(dir.path().join("east.toml"), charger("password = \"pw\"\n")).unwrap();
    let plain = topology::deploy::chargers_files(&t, dir.path()).unwrap_err();
    let plain = plain.to_string();
    assert!(
        plain.contains("east.toml") && plain.contains("CP-1") && plain.contains("$7$"),
        "{plain}"
    );
    std::fs::write(dir.path().join("east.toml"), "[[charger]\n").unwrap();
    let bad = topology::deploy::chargers_files(&t, dir.path()).unwrap_err();
    assert!(bad.to_string().contains("east.toml"), "{bad}");
}

/// `${VAR:-default}` as its default (compose interpolation with nothing set).
fn compose_default(v: &str) -> String {
    match v.strip_prefix("${").and_then(|r| r.split_once(":-")) {
        Some((_, rest)) => match rest.split_once('}') {
            Some((default, tail)) => format!("{default}{tail}"),
            None => v.to_owned(),
        },
        None => v.to_owned(),
    }
}

/// What runs for real in compose is what Kubernetes would run: for every compose service
/// a Kubernetes container with the same image (the compose default), command (plus
/// setup's `--kubernetes-secret`), environment, mounts (path and read-only; Kubernetes
/// mounts a folder where compose mounts a file of it, and adds `/tmp` for its read-only
/// root), container ports, and probes for health checks (the same command, or the same
/// HTTP check).
#[test]
fn kubernetes_containers_match_the_compose_services() {
    use serde_yaml_ng::Value;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("deploy/regions.yml")).unwrap())
            .unwrap();
    let mut k8s = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(root.join("k8s")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).unwrap();
            let kind = object["kind"].as_str().unwrap().to_owned();
            if !["Deployment", "StatefulSet", "Job"].contains(&kind.as_str()) {
                continue;
            }
            for c in object["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                k8s.insert(c["name"].as_str().unwrap().to_owned(), c.clone());
            }
        }
    }
    let services = compose["services"].as_mapping().unwrap();
    assert!(services.len() >= 8);
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let c = k8s
            .get(name)
            .unwrap_or_else(|| panic!("no Kubernetes container for compose service {name}"));
        assert_eq!(
            c["image"].as_str().unwrap(),
            compose_default(svc["image"].as_str().unwrap()),
            "{name}"
        );
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .map(|s| {
                    s.iter()
                        .map(|a| a.as_str().unwrap().replace("$$", "$"))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut command = strings(&svc["command"]);
        if name == "setup" {
            // Kubernetes: the Secret instead of the shared folder (setup takes one only)
            let at = command.iter().position(|a| a == "--out").unwrap();
            command.drain(at..at + 2);
            command.extend(["--kubernetes-secret".into(), "fogcharge-secrets".into()]);
        }
        assert_eq!(strings(&c["command"]), command, "{name}");
        let compose_env: Vec<(String, String)> = svc["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
                    .collect()
            })
            .unwrap_or_default();
        let k8s_env: Vec<(String, String)> = c["env"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .map(|e| {
                        (
                            e["name"].as_str().unwrap().into(),
                            e["value"].as_str().unwrap().into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(k8s_env, compose_env, "{name}");

        // mounts: (container path, read-only)
        let mut compose_mounts: Vec<(String, bool)> = strings(&svc["volumes"])
            .iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(':').collect();
                (parts[1].to_owned(), parts.get(2) == Some(&"ro"))
            })
            .collect();
        if name == "setup" {
            // Kubernetes: setup writes a Secret, not files in a shared volume
            compose_mounts.retain(|(p, _)| p != "/fogcharge/secrets");
        }
        let k8s_mounts: Vec<(String, bool)> = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap().to_owned(),
                    m["readOnly"].as_bool().unwrap_or(false),
                )
            })
            .filter(|(p, _)| p != "/tmp")
            .collect();
        assert_eq!(
            k8s_mounts.len(),
            compose_mounts.len(),
            "{name}: {k8s_mounts:?}"
        );
        for (path, ro) in &compose_mounts {
            assert!(
                k8s_mounts.iter().any(|(k, kro)| kro == ro
                    && (k == path || Path::new(path).parent() == Some(Path::new(k)))),
                "{name}: compose mounts {path} (read-only {ro}), Kubernetes {k8s_mounts:?}"
            );
        }

        // ports: what the container listens on
        let compose_ports: Vec<u64> = strings(&svc["ports"])
            .iter()
            .map(|p| p.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        let k8s_ports: Vec<u64> = c["ports"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .map(|p| p["containerPort"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(k8s_ports, compose_ports, "{name}");

        // health checks <-> probes
        let check = &svc["healthcheck"];
        if check["disable"] == Value::Bool(true) {
            assert!(c.get("readinessProbe").is_none(), "{name}");
            assert!(c.get("livenessProbe").is_none(), "{name}");
            continue;
        }
        let test = strings(&check["test"]);
        match test[0].as_str() {
            "CMD-SHELL" => {
                let exec = strings(&c["readinessProbe"]["exec"]["command"]);
                assert_eq!(exec, ["sh", "-c", test[1].as_str()], "{name}");
            }
            "CMD" => {
                // fogcharge probe http://127.0.0.1:{port}{path}
                assert_eq!(test[1..3], ["fogcharge", "probe"], "{name}");
                let url = test[3].strip_prefix("http://127.0.0.1:").unwrap();
                let (port, path) = url.split_once('/').unwrap();
                let live = &c["livenessProbe"]["httpGet"];
                assert_eq!(
                    live["path"].as_str(),
                    Some(format!("/{path}").as_str()),
                    "{name}"
                );
                assert_eq!(live["port"].as_u64(), port.parse().ok(), "{name}");
                assert_eq!(
                    c["readinessProbe"]["httpGet"]["port"], live["port"],
                    "{name}"
                );
            }
            other => panic!("{name}: health check {other}"),
        }
    }
}
