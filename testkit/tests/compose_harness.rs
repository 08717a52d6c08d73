//! `testkit::compose` against real processes: a small compose file with a Mosquitto
//! broker (bind-mounted config, named data volume, healthcheck), a writer that waits for
//! the broker to be healthy and reaches it by service name, and a reader that waits for
//! the writer to complete; plus the error when a dependency fails.
//!
//! Needs root and `ip` (as `ComposeRun::start` says when they are missing) and the
//! Mosquitto broker and clients.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::compose::ComposeRun;

const MOSQUITTO_CONF: &str = "\
listener 1883 0.0.0.0
allow_anonymous true
persistence true
persistence_location /mosquitto/data/
";

const COMPOSE: &str = r#"
x-mosquitto: &mosquitto
  image: eclipse-mosquitto:2
  restart: unless-stopped

services:
  broker:
    <<: *mosquitto
    command: ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    ports:
      - "1883:1883"
    volumes:
      - ./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro
      - data:/mosquitto/data
    healthcheck:
      test: ["CMD-SHELL", "mosquitto_sub -h localhost -t '$$SYS/broker/uptime' -C 1 -W 3 >/dev/null"]
      interval: 500ms
      timeout: 5s
      retries: 30
  writer:
    image: eclipse-mosquitto:2
    command: ["sh", "-c", "mosquitto_pub -h broker -t t -m hello -q 1 -r && echo done > /out/done"]
    volumes:
      - out:/out
    depends_on:
      broker:
        condition: service_healthy
  reader:
    image: eclipse-mosquitto:2
    command: ["mosquitto_sub", "-h", "broker", "-t", "t", "-C", "1", "-W", "10"]
    depends_on:
      writer:
        condition: service_completed_successfully

volumes:
  data:
  out: {}
"#;

/// Fails (never skips) when the Mosquitto broker or clients are missing.
fn require_mosquitto() {
    let path = std::env::var("PATH").unwrap_or_default();
    for program in ["mosquitto", "mosquitto_sub", "mosquitto_pub"] {
        let found = path
            .split(':')
            .chain(["/usr/sbin", "/usr/local/sbin"])
            .filter(|dir| !dir.is_empty())
            .any(|dir| Path::new(dir).join(program).is_file());
        assert!(
            found,
            "`{program}` not found: apt-get install mosquitto mosquitto-clients"
        );
    }
}

fn netns_list() -> Result<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("run `ip netns list`")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn services_run_in_their_own_namespaces_and_find_each_other_by_name() -> Result<()> {
    require_mosquitto();
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("mosquitto"))?;
    let conf = dir.path().join("mosquitto/mosquitto.conf");
    fs::write(&conf, MOSQUITTO_CONF)?;
    let compose_file = dir.path().join("compose.yml");
    fs::write(&compose_file, COMPOSE)?;

    let mut run = ComposeRun::start(&compose_file, &[])?;

    let status = run.wait_exit("reader", Duration::from_secs(30))?;
    assert!(status.success(), "reader: {status}\n{}", run.log("reader"));
    assert!(
        run.log("reader").contains("hello"),
        "reader log: {}",
        run.log("reader")
    );
    let done = fs::read_to_string(run.volume("out").join("done"))
        .with_context(|| format!("writer log: {}", run.log("writer")))?;
    assert_eq!(done.trim(), "done");
    assert!(
        run.is_running("broker"),
        "broker log: {}",
        run.log("broker")
    );

    // One address per service, all on one /24.
    let addresses: Vec<_> = ["broker", "writer", "reader"]
        .iter()
        .map(|service| run.address(service).expect("a known service"))
        .collect();
    assert_ne!(addresses[0], addresses[1]);
    assert_ne!(addresses[1], addresses[2]);
    assert_ne!(addresses[0], addresses[2]);
    assert!(
        addresses
            .iter()
            .all(|address| address.octets()[..3] == addresses[0].octets()[..3])
    );
    assert_eq!(run.address("nope"), None);

    // The bind-mounted file was copied and rewritten, never modified in place.
    assert_eq!(fs::read_to_string(&conf)?, MOSQUITTO_CONF);

    let prefix = run.netns_prefix().to_owned();
    let namespaces: Vec<String> = ["broker", "writer", "reader"]
        .iter()
        .map(|service| run.netns(service).expect("a known service").to_owned())
        .collect();
    assert!(namespaces.iter().all(|ns| ns.starts_with(&prefix)));
    assert!(netns_list()?.contains(&namespaces[0]));

    run.stop();
    assert!(!run.is_running("broker"));
    // Mosquitto writes its persistence file when it shuts down.
    assert!(
        run.volume("data").join("mosquitto.db").is_file(),
        "no mosquitto.db; broker log:\n{}",
        run.log("broker")
    );
    let remaining = netns_list()?;
    assert!(
        remaining.lines().all(|line| !line.starts_with(&prefix)),
        "namespaces left: {remaining}"
    );
    for ns in &namespaces {
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns} left"
        );
    }
    Ok(())
}

#[test]
fn a_failed_dependency_fails_start_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let compose_file = dir.path().join("compose.yml");
    fs::write(
        &compose_file,
        r#"
services:
  setup:
    image: busybox
    command: ["sh", "-c", "echo cannot set up >&2; exit 1"]
  app:
    image: busybox
    command: ["sleep", "30"]
    depends_on:
      setup:
        condition: service_completed_successfully
"#,
    )?;
    let error = match ComposeRun::start(&compose_file, &[]) {
        Ok(_) => panic!("start succeeded although `setup` exits 1"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("`setup`"), "{error}");
    assert!(error.contains("cannot set up"), "{error}");
    // Everything started was stopped and removed.
    let left: Vec<String> = netns_list()?
        .lines()
        .filter(|line| line.starts_with("fc-"))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| ns.ends_with("-setup") || ns.ends_with("-app"))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    Ok(())
}
