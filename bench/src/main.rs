//! End-to-end benchmark of fogcharge against real local Mosquitto brokers (started by
//! testkit on free loopback ports, `set_tcp_nodelay true`, `max_queued_messages
//! 100000`), with the fog server and central in this process.
//!
//! ```text
//! cargo run --release -p fogcharge-bench            # everything, ~2 minutes
//! cargo run --release -p fogcharge-bench -- --help  # sizes, rates, which scenarios
//! ```
//!
//! Scenarios, all in one run so that their ratios mean something on a noisy machine:
//!
//! - **echo**: a bare paho echo client on the same broker, QoS 1 — the floor;
//! - **rtt**: request → recommendation, one at a time, interleaved with echo round
//!   trips (so both see the same machine), over one fleet connection;
//! - **burst**: N simultaneous requests from M vehicles: latency of each and time until
//!   all are answered;
//! - **rate**: open-loop load at stepped rates; latency is measured from each
//!   request's *scheduled* send time (no coordinated omission);
//! - **reroute**: a three-region city bridged to central (testkit's city); a request in
//!   the saturated region comes back `rerouted` to a station in the next region.
//! - **saturated**: the burst again, into a region whose stations are all far over the
//!   wait limit, rerouting on: once with no central at all, once bridged to central
//!   with the only other region out of every vehicle's reach — to set beside the
//!   unsaturated burst of the same run.
//!
//! Prints one table and writes the numbers as JSON (`--json`).

mod cpu;
mod devices;
mod fleet;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use protocol::{StationStatus, topics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use testkit::city::{City, CitySpec};
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};

use fleet::{Echo, EchoKind, Fleet, Status, request_id};
use stats::Summary;

const REGION: &str = "north";
/// The single region: ~40 × 44 km.
const LAT: (f64, f64) = (-13.15, -12.79);
const LON: (f64, f64) = (-38.7, -38.3);
const POWERS_KW: [f64; 5] = [22.0, 50.0, 75.0, 100.0, 150.0];
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// p99 bound of the sustained-rate target.
const RATE_P99_MS: f64 = 10.0;

#[derive(Debug, Clone, Parser)]
#[command(about = "End-to-end benchmark of a fog server against real local Mosquitto")]
struct Args {
    /// Where the JSON report goes (default: target/bench/e2e.json in the workspace).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Scenarios to run: rtt (with echo), burst, rate, reroute, saturated.
    #[arg(long, value_delimiter = ',', default_values = ["rtt", "burst", "rate", "reroute", "saturated"])]
    only: Vec<String>,
    /// Stations in the fog's region.
    #[arg(long, default_value_t = 1_000)]
    stations: usize,
    /// Round trips one at a time (each: echo and fog).
    #[arg(long, default_value_t = 500)]
    round_trips: usize,
    /// Pause between two round trips, ms (keeps the rate low).
    #[arg(long, default_value_t = 1.0)]
    pause_ms: f64,
    /// Requests in the burst.
    #[arg(long, default_value_t = 2_000)]
    burst: usize,
    /// Vehicles the burst comes from.
    #[arg(long, default_value_t = 200)]
    burst_vehicles: usize,
    /// Open-loop request rates, per second.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u32, 2_000, 5_000, 8_000, 10_000, 15_000])]
    rates: Vec<u32>,
    /// Seconds of load at each rate.
    #[arg(long, default_value_t = 3.0)]
    step_s: f64,
    /// Vehicles the open-loop load comes from.
    #[arg(long, default_value_t = 1_000)]
    rate_vehicles: usize,
    /// Fleet connections the open-loop load is spread over.
    #[arg(long, default_value_t = 1)]
    rate_connections: usize,
    /// Mosquitto's `max_inflight_messages` (QoS 1 messages on their way to one client
    /// without a PUBACK yet); default: Mosquitto's own (20), as the deployment has it.
    #[arg(long)]
    max_inflight: Option<u32>,
    /// The burst and rate floors use the echo replying from a tokio task (the fog
    /// link's path) instead of the bare one replying from paho's callback.
    #[arg(long)]
    echo_task: bool,
    /// Run the fog without its reservation journal (by default it keeps one in a
    /// temporary directory, as `fog-server` does in its `--state-dir`).
    #[arg(long)]
    no_journal: bool,
    /// Worker threads of the fog server's (this process's) tokio runtime.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Cross-region reroutes, one at a time.
    #[arg(long, default_value_t = 100)]
    reroutes: usize,
}

/// One line of the table (and of the JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    scenario: String,
    sent: usize,
    answered: usize,
    latency: Summary,
    /// p50 and p99 divided by the bare echo's, same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_echo: Option<(f64, f64)>,
    statuses: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_rate: Option<u32>,
    /// Requests per second actually sent (rate steps) or answered (burst).
    #[serde(skip_serializing_if = "Option::is_none")]
    achieved_rate: Option<f64>,
    /// Time from the first request to the last answer (burst), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    all_answered_ms: Option<f64>,
    /// CPU use of each process during the scenario, percent of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<cpu::Cpu>,
    /// The fog's mean time to plan one request during the scenario (its
    /// `fog_planning_seconds` histogram), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fog_planning_us: Option<f64>,
    /// Rate steps: the worst latency in each 100 ms of the schedule, ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    worst_ms_per_100ms: Vec<f64>,
    note: String,
}

impl Row {
    fn new(scenario: impl Into<String>, sent: usize, answers: &[(Duration, Status)]) -> Self {
        let latencies: Vec<Duration> = answers.iter().map(|(d, _)| *d).collect();
        let mut statuses = BTreeMap::new();
        for (_, s) in answers {
            *statuses.entry(s.as_str().to_owned()).or_default() += 1;
        }
        Self {
            scenario: scenario.into(),
            sent,
            answered: answers.len(),
            latency: Summary::of(&latencies),
            vs_echo: None,
            statuses,
            target_rate: None,
            achieved_rate: None,
            all_answered_ms: None,
            cpu: None,
            fog_planning_us: None,
            worst_ms_per_100ms: Vec::new(),
            note: String::new(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: BTreeMap<String, String>,
    args: BTreeMap<String, Value>,
    rows: Vec<Row>,
    /// Highest rate step with everything answered, p99 ≤ 10 ms and ≥ 95% of the
    /// target rate actually sent.
    sustained_rate: Option<u32>,
    /// The same for the bare echo (the floor).
    echo_sustained_rate: Option<u32>,
    targets: BTreeMap<String, Value>,
}

fn station_statuses(region: &str, n: usize) -> Vec<StationStatus> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            // Drawn in this order: the same seed, the same stations.
            let chargers = rng.random_range(1..=8);
            let lat = rng.random_range(LAT.0..LAT.1);
            let lon = rng.random_range(LON.0..LON.1);
            let power_kw = POWERS_KW[rng.random_range(0..POWERS_KW.len())];
            StationStatus {
                occupied: rng.random_range(0..=chargers / 2),
                ..testkit::messages::station(
                    &format!("{region}-{i:05}"),
                    lat,
                    lon,
                    chargers,
                    power_kw,
                )
            }
        })
        .collect()
}

async fn publish_stations(url: &str, region: &str, stations: &[StationStatus]) -> Result<()> {
    let client = TestClient::connect(url, &format!("bench-stations-{region}")).await?;
    let tokens: Vec<_> = stations
        .iter()
        .map(|s| {
            client.publish_no_wait(
                &topics::station_status(region, &s.station_id),
                protocol::encode(s),
                1,
                true,
            )
        })
        .collect();
    for t in tokens {
        t.await.context("publishing a station status")?;
    }
    client.disconnect().await
}

/// Waits until the fog's HTTP API lists `n` stations.
async fn wait_stations(fog: &Fog, n: usize) -> Result<()> {
    wait_until(
        &format!("the fog knows {n} stations"),
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            fog.get_json::<Vec<Value>>("/api/stations")
                .await
                .is_ok_and(|s| s.len() == n)
        },
    )
    .await
}

/// Runs one scenario in a devices child process and returns its rows, with the CPU
/// use of every process over the scenario. (Blocking I/O on the child's pipes, on a
/// blocking thread, so that the fog server keeps its runtime.)
async fn in_child(spec: &devices::Spec, broker_pid: Option<u32>) -> Result<Vec<Row>> {
    let spec = serde_json::to_string(spec)?;
    tokio::task::spawn_blocking(move || run_child(&spec, broker_pid))
        .await
        .context("devices runner panicked")?
}

fn run_child(spec: &str, broker_pid: Option<u32>) -> Result<Vec<Row>> {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut child = Command::new(exe)
        .arg("devices")
        .arg(spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the devices process")?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut line = String::new();
    let outcome = (|| -> Result<(devices::Outcome, cpu::Cpu)> {
        stdout.read_line(&mut line)?;
        ensure!(line.trim() == "READY", "devices process said {line:?}");
        let server = cpu::Window::start(None);
        let broker = cpu::Window::start(broker_pid);
        let machine = cpu::MachineWindow::start();
        stdin.write_all(b"GO\n")?;
        stdin.flush()?;
        line.clear();
        stdout.read_line(&mut line)?;
        let machine = machine.percent();
        let cpu = cpu::Cpu {
            server: server.percent(),
            broker: broker.percent(),
            devices: None,
            server_us_per_request: server.used_s(),
            other: machine.map(|m| m.0),
            steal: machine.map(|m| m.1),
        };
        let outcome = serde_json::from_str(&line)
            .with_context(|| format!("devices process result {line:?}"))?;
        Ok((outcome, cpu))
    })();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    drop(stdin);
    let status = child.wait()?;
    ensure!(status.success(), "devices process failed: {status}");
    let (outcome, cpu) = outcome;
    Ok(outcome
        .rows
        .into_iter()
        .map(|mut r| {
            let ours = cpu.server.unwrap_or(0.0)
                + cpu.broker.unwrap_or(0.0)
                + outcome.cpu_percent.unwrap_or(0.0);
            r.cpu = Some(cpu::Cpu {
                devices: outcome.cpu_percent,
                other: cpu.other.map(|busy| (busy - ours).max(0.0)),
                // Only meaningful when the row is the whole scenario (burst, rate).
                server_us_per_request: cpu
                    .server_us_per_request
                    .filter(|_| {
                        r.sent > 0 && r.target_rate.is_some() || r.all_answered_ms.is_some()
                    })
                    .map(|s| s * 1e6 / r.sent.max(1) as f64),
                ..cpu
            });
            r
        })
        .collect())
}

/// Runs `scenario` and notes, on its fog rows, the fog's own mean time to plan one
/// request meanwhile (its `fog_planning_seconds` histogram: decode, plan, reserve,
/// remember the answer; not encoding it, not the journal, not MQTT).
async fn with_planning(
    fog: &Fog,
    scenario: impl std::future::Future<Output = Result<Vec<Row>>>,
) -> Result<Vec<Row>> {
    let read = || async {
        let sum = fog.metric("fog_planning_seconds_sum").await?;
        let count = fog.metric("fog_planning_seconds_count").await?;
        anyhow::Ok((sum, count))
    };
    let before = read().await?;
    let mut rows = scenario.await?;
    let after = read().await?;
    let n = after.1 - before.1;
    for row in &mut rows {
        if n > 0.0 && !row.statuses.contains_key("echo") {
            row.fog_planning_us = Some((after.0 - before.0) / n * 1e6);
        }
    }
    Ok(rows)
}

fn sustained(row: &Row) -> bool {
    let Some(target) = row.target_rate else {
        return false;
    };
    row.answered == row.sent
        && row.sent > 0
        && row.latency.p99_ms <= RATE_P99_MS
        && row.achieved_rate.unwrap_or(0.0) >= 0.95 * f64::from(target)
}

/// Cross-region reroutes in testkit's three-region city: west saturated, middle free.
async fn reroute(args: &Args, first_seq: u64) -> Result<Vec<Row>> {
    let mut next_seq = first_seq;
    let mut seq = || {
        next_seq += 1;
        next_seq
    };
    let city = City::start(CitySpec::three_regions()).await?;
    let status = testkit::messages::busy_station;
    publish_stations(
        &city.broker("west").url(),
        "west",
        &[status("west-busy", 0.09, 1, 1, 6)],
    )
    .await?;
    let middle: Vec<StationStatus> = (0..5)
        .map(|i| status(&format!("middle-{i}"), 0.11 + 0.005 * f64::from(i), 4, 0, 0))
        .collect();
    publish_stations(&city.broker("middle").url(), "middle", &middle).await?;
    wait_until(
        "central sees west saturated and middle's stations",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let Ok(regions) = city.regions().await else {
                return false;
            };
            let west = regions.get("west").is_some_and(|v| v.saturated);
            let middle = regions
                .get("middle")
                .is_some_and(|v| u64::from(v.aggregate.stations_in_service) == middle.len() as u64);
            west && middle
        },
    )
    .await?;
    let mut west = Fleet::connect(
        &city.broker("west").url(),
        "bench-fleet-west",
        &[topics::filters::vehicles(
            "west",
            protocol::VehicleChannel::Recommendation,
        )],
    )
    .await?;
    let mut local = Fleet::connect(
        &city.broker("middle").url(),
        "bench-fleet-middle",
        &[topics::filters::vehicles(
            "middle",
            protocol::VehicleChannel::Recommendation,
        )],
    )
    .await?;
    let request = |seq: u64, lon: f64| {
        protocol::encode(&testkit::messages::request(&request_id(seq), 0.0, lon, 0.3))
    };
    const VEHICLES: usize = 10;
    const WARM_UP: usize = 5;
    let mut rerouted = Vec::new();
    let mut in_region = Vec::new();
    for i in 0..WARM_UP + args.reroutes {
        let s = seq();
        let rt = west
            .round_trip(
                &topics::request("west", &format!("w-{}", i % VEHICLES)),
                request(s, 0.08),
                s,
                ANSWER_TIMEOUT,
            )
            .await?;
        let s = seq();
        let local_rt = local
            .round_trip(
                &topics::request("middle", &format!("m-{}", i % VEHICLES)),
                request(s, 0.14),
                s,
                ANSWER_TIMEOUT,
            )
            .await?;
        if i >= WARM_UP {
            rerouted.push(rt);
            in_region.push(local_rt);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    west.close().await?;
    local.close().await?;
    let mut reroute_row = Row::new("cross-region reroute", args.reroutes, &rerouted);
    reroute_row.note = "3-region city + central, bridged brokers: west saturated -> middle".into();
    let mut local_row = Row::new("in-region, same city", args.reroutes, &in_region);
    local_row.note = "middle's own vehicles, interleaved with the reroutes".into();
    Ok(vec![reroute_row, local_row])
}

/// Two stations of eight chargers with 60 vehicles queued at each: every request in
/// the region is far over the wait limit.
fn saturated_stations(region: &str) -> Vec<StationStatus> {
    (0..2)
        .map(|i| StationStatus {
            queue: 60,
            occupied: 8,
            chargers: Some(8),
            lat: Some(-12.97 + 0.02 * f64::from(i)),
            lon: Some(-38.5),
            ..station_statuses(region, 1).remove(0)
        })
        .enumerate()
        .map(|(i, mut s)| {
            s.station_id = format!("{region}-busy-{i}");
            s
        })
        .collect()
}

/// The burst into a saturated region: with no central, then with central present and
/// the only other region out of reach.
async fn saturated(args: &Args, first_seq: [u64; 2]) -> Result<Vec<Row>> {
    let burst = |url: String, first_seq: u64| devices::Spec {
        scenario: "burst".into(),
        url,
        first_seq,
        seed: first_seq,
        stations: 2,
        round_trips: 0,
        pause_ms: 0.0,
        burst: args.burst,
        burst_vehicles: args.burst_vehicles,
        rate: 0,
        step_s: 0.0,
        rate_vehicles: 1,
        connections: 1,
        echo: false,
        echo_task: args.echo_task,
    };
    let mut rows = Vec::new();

    // No central anywhere: the fog has never heard its heartbeat.
    let broker = Mosquitto::start(MosquittoConfig::new())?;
    let fog = Fog::start(&broker.url(), REGION).await?;
    publish_stations(&broker.url(), REGION, &saturated_stations(REGION)).await?;
    wait_stations(&fog, 2).await?;
    let mut row = in_child(&burst(broker.url(), first_seq[0]), broker.pid())
        .await?
        .remove(0);
    row.scenario = format!("saturated burst, no central ({} req)", args.burst);
    row.note = "every station far over the limit; rerouting on, central never heard".into();
    rows.push(row);
    fog.stop().await?;
    drop(broker);

    // Central present, the other region ~2,000 km away: out of every vehicle's reach.
    let far = topology::Bounds {
        min_lat: 5.0,
        min_lon: -38.7,
        max_lat: 5.4,
        max_lon: -38.3,
    };
    let spec = CitySpec {
        regions: vec![
            (
                REGION.into(),
                topology::Bounds {
                    min_lat: LAT.0,
                    min_lon: LON.0,
                    max_lat: LAT.1,
                    max_lon: LON.1,
                },
            ),
            ("far".into(), far),
        ],
        ..CitySpec::three_regions()
    };
    let city = City::start(spec).await?;
    publish_stations(
        &city.broker(REGION).url(),
        REGION,
        &saturated_stations(REGION),
    )
    .await?;
    let far_station = StationStatus {
        lat: Some(5.2),
        lon: Some(-38.5),
        ..station_statuses("far", 1).remove(0)
    };
    publish_stations(&city.broker("far").url(), "far", &[far_station]).await?;
    wait_until(
        "central sees north saturated and far open",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let Ok(regions) = city.regions().await else {
                return false;
            };
            let north = regions.get(REGION).is_some_and(|v| v.saturated);
            let far = regions.get("far").is_some_and(|v| !v.saturated);
            north && far
        },
    )
    .await?;
    city.wait_fogs_hear_central(Duration::from_secs(20)).await?;
    let url = city.broker(REGION).url();
    let pid = city.broker(REGION).pid();
    let mut row = in_child(&burst(url, first_seq[1]), pid).await?.remove(0);
    row.scenario = format!("saturated burst, central present ({} req)", args.burst);
    row.note = "the other region out of reach: central's answer holds for like requests".into();
    rows.push(row);
    Ok(rows)
}

fn machine() -> BTreeMap<String, String> {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let model = run("lscpu", &[])
        .lines()
        .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_owned()))
        .unwrap_or_default();
    let memory = run("free", &["-h"])
        .lines()
        .find_map(|l| {
            l.strip_prefix("Mem:")
                .map(|m| m.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    BTreeMap::from([
        ("nproc".into(), run("nproc", &[])),
        ("cpu".into(), model),
        ("memory".into(), memory),
        (
            "mosquitto".into(),
            run("/usr/sbin/mosquitto", &["-h"])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
    ])
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<30} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>20} {:>6} {:>7}  statuses; note",
        "scenario",
        "sent",
        "answd",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p50/e",
        "p99/e",
        "rate/s",
        "cpu% fog/mq/dev/other",
        "us/req",
        "plan us"
    );
    let pct = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}"));
    for r in rows {
        let (x50, x99) = r.vs_echo.map_or(("-".into(), "-".into()), |(a, b)| {
            (format!("{a:.2}x"), format!("{b:.2}x"))
        });
        let rate = r.achieved_rate.map_or("-".into(), |x| format!("{x:.0}"));
        let cpu = r.cpu.map_or("-".into(), |c| {
            format!(
                "{}/{}/{}/{}",
                pct(c.server),
                pct(c.broker),
                pct(c.devices),
                pct(c.other)
            )
        });
        let us = r
            .cpu
            .and_then(|c| c.server_us_per_request)
            .map_or("-".into(), |x| format!("{x:.0}"));
        let statuses: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "{:<30} {:>6} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>6} {:>7} {:>20} {:>6} {:>7}  {}; {}",
            r.scenario,
            r.sent,
            r.answered,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            x50,
            x99,
            rate,
            cpu,
            us,
            r.fog_planning_us.map_or("-".into(), |x| format!("{x:.1}")),
            statuses.join(", "),
            r.note
        );
    }
}

fn json_path(args: &Args) -> PathBuf {
    args.json.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("bench/e2e.json")
    })
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("devices") {
        let spec = argv.get(2).context("devices: missing spec")?;
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(devices::main(spec));
    }
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    for s in &args.only {
        if !["rtt", "burst", "rate", "reroute", "saturated"].contains(&s.as_str()) {
            bail!("unknown scenario {s:?} (rtt, burst, rate, reroute, saturated)");
        }
    }
    ensure!(args.burst_vehicles > 0 && args.rate_vehicles > 0 && args.rate_connections > 0);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runs = |s: &str| args.only.iter().any(|o| o == s);
    let mut rows = Vec::new();
    let mut sustained_rate = None;
    let mut echo_sustained_rate = None;
    // Each scenario's request ids come from a range of their own.
    let mut next_seq = 0u64;
    let mut seq_range = || {
        next_seq += 10_000_000;
        next_seq
    };

    if runs("rtt") || runs("burst") || runs("rate") {
        let mut broker_config = MosquittoConfig::new();
        if let Some(n) = args.max_inflight {
            broker_config = broker_config.with_max_inflight_messages(n);
        }
        let broker = Mosquitto::start(broker_config)?;
        let mut config = Fog::config(&broker.url(), REGION);
        // No central here: a saturated request is answered at once instead of after
        // the reroute timeout.
        config.no_reroute = true;
        // The deployment's sweep period (testkit's is short, for quick tests).
        config.sweep_ms = fog_server::Config::new(REGION, &broker.url()).sweep_ms;
        let state_dir = tempfile::tempdir()?;
        if !args.no_journal {
            config.no_state = false;
            config.state_dir = state_dir.path().to_owned();
        }
        let fog = Fog::start_with(config).await?;
        publish_stations(
            &broker.url(),
            REGION,
            &station_statuses(REGION, args.stations),
        )
        .await?;
        wait_stations(&fog, args.stations).await?;
        let echo = Echo::start(&broker.url(), EchoKind::Callback).await?;
        let echo_task = Echo::start(&broker.url(), EchoKind::Task).await?;
        let spec = |scenario: &str, first_seq: u64, rate: u32, echo: bool| devices::Spec {
            scenario: scenario.to_owned(),
            url: broker.url(),
            first_seq,
            seed: first_seq,
            stations: args.stations,
            round_trips: args.round_trips,
            pause_ms: args.pause_ms,
            burst: args.burst,
            burst_vehicles: args.burst_vehicles,
            rate,
            step_s: args.step_s,
            rate_vehicles: args.rate_vehicles,
            connections: args.rate_connections,
            echo,
            echo_task: args.echo_task,
        };
        if runs("rtt") {
            eprintln!(
                "rtt: {} echo and fog round trips, interleaved",
                args.round_trips
            );
            let spec = spec("rtt", seq_range(), 0, false);
            rows.extend(with_planning(&fog, in_child(&spec, broker.pid())).await?);
        }
        if runs("burst") {
            eprintln!(
                "burst: {} requests from {} vehicles",
                args.burst, args.burst_vehicles
            );
            // The echo's burst first: the floor, on the same broker.
            for echo in [true, false] {
                let spec = spec("burst", seq_range(), 0, echo);
                rows.extend(with_planning(&fog, in_child(&spec, broker.pid())).await?);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if runs("rate") {
            let mut failures = 0;
            for &rate in &args.rates {
                eprintln!("rate: {rate} req/s for {} s", args.step_s);
                // The echo at the same rate first: the floor for this step.
                let echo = in_child(&spec("rate", seq_range(), rate, true), broker.pid()).await?;
                if echo.first().is_some_and(sustained) {
                    echo_sustained_rate = Some(rate);
                }
                rows.extend(echo);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let spec = spec("rate", seq_range(), rate, false);
                let mut step = with_planning(&fog, in_child(&spec, broker.pid())).await?;
                let row = step.remove(0);
                if sustained(&row) {
                    sustained_rate = Some(rate);
                    failures = 0;
                } else {
                    failures += 1;
                }
                rows.push(row);
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                if failures >= 2 {
                    eprintln!("rate: two steps in a row missed the target; stopping");
                    break;
                }
            }
        }
        echo.stop().await?;
        echo_task.stop().await?;
        fog.stop().await?;
        drop(broker);
    }
    if runs("reroute") {
        eprintln!("reroute: {} cross-region round trips", args.reroutes);
        rows.extend(reroute(&args, seq_range()).await?);
    }
    if runs("saturated") {
        eprintln!(
            "saturated: bursts of {} requests into a saturated region, without and with central",
            args.burst
        );
        rows.extend(saturated(&args, [seq_range(), seq_range()]).await?);
    }
    println!();
    print_table(&rows);
    if runs("rate") {
        let show = |r: Option<u32>| r.map_or("none".to_owned(), |r| format!("{r} req/s"));
        println!(
            "\nhighest step with p99 <= {RATE_P99_MS} ms, everything answered, >= 95% of the rate sent: fog {}, bare echo {}",
            show(sustained_rate),
            show(echo_sustained_rate)
        );
    }
    let find = |name: &str| rows.iter().find(|r| r.scenario.starts_with(name));
    let mut targets = BTreeMap::new();
    if let Some(r) = find("request -> recommendation") {
        let (x50, x99) = r.vs_echo.unwrap_or((f64::NAN, f64::NAN));
        targets.insert("rtt_p50_le_1.5x_echo".into(), Value::Bool(x50 <= 1.5));
        targets.insert("rtt_p99_le_2x_echo".into(), Value::Bool(x99 <= 2.0));
    }
    if let Some(r) = find("burst") {
        targets.insert(
            "burst_p50_le_10ms_all_answered".into(),
            Value::Bool(r.latency.p50_ms <= 10.0 && r.answered == r.sent),
        );
    }
    if runs("rate") {
        targets.insert(
            "sustained_ge_10000_per_s_p99_le_10ms".into(),
            Value::Bool(sustained_rate.is_some_and(|r| r >= 10_000)),
        );
    }
    let report = Report {
        machine: machine(),
        args: BTreeMap::from([
            ("stations".into(), args.stations.into()),
            ("round_trips".into(), args.round_trips.into()),
            ("burst".into(), args.burst.into()),
            ("burst_vehicles".into(), args.burst_vehicles.into()),
            ("rates".into(), args.rates.clone().into()),
            ("step_s".into(), args.step_s.into()),
            ("rate_vehicles".into(), args.rate_vehicles.into()),
            ("reroutes".into(), args.reroutes.into()),
            ("max_inflight".into(), args.max_inflight.into()),
            ("rate_connections".into(), args.rate_connections.into()),
            ("workers".into(), args.workers.into()),
            ("journal".into(), (!args.no_journal).into()),
        ]),
        rows,
        sustained_rate,
        echo_sustained_rate,
        targets,
    };
    let path = json_path(&args);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(())
}
