//! The images of `./dev images` against what users build: `fogcharge:latest` must
//! agree with the runtime stage of the public `Dockerfile` on what matters (binary path,
//! user, working directory, entrypoint and command, environment, exposed ports, health
//! check, the folders the deployments mount), and `fogcharge-mosquitto:2` must be laid
//! out like `eclipse-mosquitto:2` (config and data paths, the `mosquitto` user with
//! uid 1883, port 1883, the clients the health checks use).

use deploy_tests::{Engine, IMAGE, LOCAL_BROKER_IMAGE, docker, repo};
use serde_json::{Value, json};

/// The runtime stage of the Dockerfile: its instructions (continuations joined), after
/// the last `FROM`.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut joined = Vec::new();
    let mut line = String::new();
    for l in text.lines() {
        if l.trim_start().starts_with('#') && line.is_empty() {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(l);
                if !line.trim().is_empty() {
                    joined.push(std::mem::take(&mut line));
                }
                line.clear();
            }
        }
    }
    let start = joined.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    joined[start + 1..]
        .iter()
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap();
            (
                op.to_owned(),
                rest.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn instructions<'a>(stage: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(o, _)| o == op)
        .map(|(_, r)| r.as_str())
        .collect()
}

fn config(image: &str) -> Value {
    let v: Value = serde_json::from_str(&docker(&["image", "inspect", image]).unwrap()).unwrap();
    v[0]["Config"].clone()
}

/// "5s" as nanoseconds (Docker's unit in the image config).
fn nanos(d: &str) -> u64 {
    d.strip_suffix('s').unwrap().parse::<u64>().unwrap() * 1_000_000_000
}

fn exposed(c: &Value) -> Vec<String> {
    c["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn sh(image: &str, script: &str) -> String {
    docker(&["run", "--rm", "--entrypoint", "sh", image, "-c", script])
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn the_fogcharge_image_agrees_with_the_dockerfile() {
    Engine::require();
    let stage = runtime_stage();
    let c = config(IMAGE);

    let user = instructions(&stage, "USER");
    assert_eq!(c["User"].as_str(), user.last().copied(), "USER");
    let workdir = instructions(&stage, "WORKDIR");
    assert_eq!(c["WorkingDir"].as_str(), workdir.last().copied(), "WORKDIR");
    for env in instructions(&stage, "ENV") {
        assert!(
            c["Env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str() == Some(env)),
            "ENV {env}: {}",
            c["Env"]
        );
    }
    let entrypoint: Vec<String> =
        serde_json::from_str(instructions(&stage, "ENTRYPOINT").last().unwrap()).unwrap();
    let image_entrypoint: Vec<String> =
        serde_json::from_value(c["Entrypoint"].clone()).unwrap_or_default();
    assert_eq!(image_entrypoint, entrypoint, "ENTRYPOINT");
    let cmd: Value = serde_json::from_str(instructions(&stage, "CMD").last().unwrap()).unwrap();
    assert_eq!(c["Cmd"], cmd, "CMD");
    let mut expose: Vec<String> = instructions(&stage, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    expose.sort();
    assert_eq!(exposed(&c), expose, "EXPOSE");

    // HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 CMD …
    let check = instructions(&stage, "HEALTHCHECK");
    let check = check.last().unwrap();
    let (options, command) = check.split_once(" CMD ").unwrap();
    let h = &c["Healthcheck"];
    assert_eq!(h["Test"], json!(["CMD-SHELL", command]), "HEALTHCHECK");
    for option in options.split_whitespace() {
        let (k, v) = option.trim_start_matches("--").split_once('=').unwrap();
        let (key, want) = match k {
            "interval" => ("Interval", nanos(v)),
            "timeout" => ("Timeout", nanos(v)),
            "start-period" => ("StartPeriod", nanos(v)),
            "retries" => ("Retries", v.parse().unwrap()),
            other => panic!("HEALTHCHECK option {other}"),
        };
        assert_eq!(h[key].as_u64(), Some(want), "HEALTHCHECK {k}");
    }

    // The binary where COPY puts it, run by the image's user; the mounted folders its own.
    let copy = instructions(&stage, "COPY");
    let binary = copy.last().unwrap().rsplit(' ').next().unwrap();
    let out = sh(
        IMAGE,
        "command -v fogcharge; id -u; id -g; stat -c %u:%g /fogcharge/secrets /fogcharge/state /fogcharge/reports; fogcharge --help >/dev/null && echo runs",
    );
    let lines: Vec<&str> = out.lines().collect();
    let (uid, gid) = user.last().unwrap().split_once(':').unwrap();
    assert_eq!(lines[0], binary, "{out}");
    assert_eq!(lines[1], uid, "{out}");
    assert_eq!(lines[2], gid, "{out}");
    for owner in &lines[3..6] {
        assert_eq!(*owner, format!("{uid}:{gid}"), "{out}");
    }
    assert_eq!(lines[6], "runs", "{out}");
}

#[test]
fn the_broker_image_is_laid_out_like_eclipse_mosquitto() {
    Engine::require();
    let c = config(LOCAL_BROKER_IMAGE);
    assert_eq!(exposed(&c), ["1883/tcp"]);
    let mut volumes: Vec<&String> = c["Volumes"].as_object().unwrap().keys().collect();
    volumes.sort();
    assert_eq!(volumes, ["/mosquitto/data"]);
    assert_eq!(
        c["Cmd"],
        json!([
            "/usr/sbin/mosquitto",
            "-c",
            "/mosquitto/config/mosquitto.conf"
        ])
    );
    let out = sh(
        LOCAL_BROKER_IMAGE,
        "id -u mosquitto; id -g mosquitto; stat -c %U /mosquitto/data; test -s /mosquitto/config/mosquitto.conf && echo conf; for c in mosquitto mosquitto_sub mosquitto_pub; do command -v $c; done",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "1883",
            "1883",
            "mosquitto",
            "conf",
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto_sub",
            "/usr/bin/mosquitto_pub"
        ],
        "{out}"
    );
}
