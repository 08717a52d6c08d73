//! `device-sim`: the simulated city. Stations and vehicles are MQTT clients on the
//! regional brokers (or, with `--station-transport ocpp`, the stations are OCPP 1.6J
//! charge points of each region's gateway); the world runs faster than real time on a clock it shares with the
//! servers; the same seed gives the same world; and one run compares strategies side by
//! side. See `docs/simulation.md`.
//!
//! Four ways to run:
//! - **local** (no `--brokers`/`--topology`): starts the whole topology itself — a
//!   central Mosquitto and one per region from the generated configs, a fog server per
//!   region and central (and an OCPP gateway per region for `--station-transport
//!   ocpp`) — and stops it all at the end (also on Ctrl-C);
//! - **external** (`--topology file` and/or `--brokers region=url,…`): against brokers
//!   and servers that already run (docker compose, Kubernetes), which must share the
//!   clock (`--speed` = their `--clock-speed`, same `--clock-epoch-ms`);
//! - **in process** (`--in-process`): every strategy of the local run with the fog
//!   regions' and central's cores in this process, on the simulated clock, over a
//!   modelled network — no broker, no server process; the same seed gives the same
//!   report, in seconds;
//! - **offline** (`--offline`): the naive strategies with no broker at all, as fast as
//!   the machine goes — deterministic, for tests and quick what-ifs.
//!
//! The local run starts the fog servers and central as processes of the `fogcharge`
//! binary (`fogcharge fog-server …`, `fogcharge central …`, see [`Config::server_exe`]).
//! The in-process run links their pure cores instead (the `fog-server` and `central`
//! crates as libraries: `fog_server::region::Region`, `central::core::CentralCore`),
//! never their shells (no MQTT link, journal, HTTP or clock of theirs).

//! Modules:
//! - [`world`]: the scenario (`--seed`, `--vehicles`, …) and the world it generates:
//!   regions, stations, vehicles.
//! - [`sim`]: the simulated city stepping in simulated time: driving, queues, charging.
//! - [`driver`]: what the devices do with a strategy, whatever carries their messages:
//!   requests, answers followed or cancelled, revisions, timeouts and fallbacks, the
//!   report's counters — shared by every way to run.
//! - [`run`](mod@run): one strategy over MQTT, paced by the shared clock (or, offline,
//!   as fast as it goes): the [`driver`] fed with the answers that came in.
//! - [`inproc`]: `--in-process`: the servers' cores, the network modelled on a
//!   [`bus`] (a discrete-event queue of deliveries), the [`driver`] on simulated time.
//! - [`net`]: the devices' MQTT connections: one per station (or one per region for
//!   its stations, `--station-connections per-region`) and a fleet per region.
//! - [`ocpp`]: the stations as OCPP 1.6J charge points of each region's gateway
//!   (`--station-transport ocpp`).
//! - [`report`]: the per-strategy figures and the comparison table.
//! - [`sweep`]: `--seeds`: the in-process run over many seeds, its table.
//! - [`setup`]: `fogcharge setup`, a container deployment's users, secrets and clock.
//! - [`cli`]: the simulation as a command: run, print the table, stop on Ctrl-C.

#![forbid(unsafe_code)]

pub mod bus;
pub mod cli;
pub mod driver;
pub mod inproc;
pub mod net;
pub mod ocpp;
pub mod report;
pub mod run;
pub mod setup;
pub mod sim;
pub mod sweep;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use launcher::delay::Delay;
use launcher::{LocalBrokers, LocalServers, ServerSettings};
use serverkit::{Clock, LogFormat, clock::wall_ms};
use tokio_util::sync::CancellationToken;
use topology::Topology;
use tracing::warn;

pub use report::{Report, StrategyReport};
pub use run::Strategy;
pub use world::{Regions, Scenario, World};

/// Simulates a city of electric vehicles and charging stations against the fogcharge
/// servers and compares strategies.
#[derive(Debug, Clone, Parser)]
#[command(name = "device-sim", version, about)]
pub struct Config {
    #[command(flatten)]
    pub scenario: Scenario,

    /// Strategies to run, comma-separated: fog, cloud, fog-far, nearest, least-queue, or
    /// all (one after another, same world).
    #[arg(long, env = "SIM_STRATEGY", default_value = "all", value_parser = parse_strategies)]
    pub strategy: StrategySet,

    /// Simulated seconds per real second. The servers run on the same time scale.
    #[arg(long, env = "SIM_SPEED", default_value_t = 240.0)]
    pub speed: f64,

    /// The topology (regions and brokers) as TOML. Without `--brokers`, the brokers it
    /// names are used; without both, device-sim starts the demo city itself.
    #[arg(long, env = "SIM_TOPOLOGY")]
    pub topology: Option<PathBuf>,

    /// Existing regional brokers, `region=tcp://host:port,…` (the regions of the
    /// topology, default: the demo city).
    #[arg(long, env = "SIM_BROKERS", value_parser = parse_brokers)]
    pub brokers: Option<BrokerList>,

    /// MQTT username of the simulated devices.
    #[arg(long, env = "SIM_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password (prefer the environment variable).
    #[arg(long, env = "SIM_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// File holding the MQTT password (a mounted secret), instead of `--mqtt-password`.
    #[arg(long, env = "SIM_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,

    /// CA certificate (PEM) of `ssl://` brokers (default: the system's trust store).
    #[arg(long, env = "SIM_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,

    /// Users of the brokers (TOML `[[user]]` entries, see docs/security.md): stations
    /// log in as themselves and fleets as `fleet-{region}`. The local run makes its
    /// own.
    #[arg(long, env = "SIM_CREDENTIALS")]
    pub credentials: Option<PathBuf>,

    /// The wall instant (ms since the Unix epoch) from which the shared clock runs
    /// `--speed` times faster. Required against existing servers unless `--speed 1`:
    /// give them the same `--clock-epoch-ms` and `--clock-speed`.
    #[arg(long, env = "SIM_CLOCK_EPOCH_MS")]
    pub clock_epoch_ms: Option<u64>,

    /// A deployment's shared clock as JSON `{"speed": …, "epoch_ms": …}` (written by
    /// `fogcharge setup`, read by the servers too); replaces `--speed` and
    /// `--clock-epoch-ms`.
    #[arg(long, env = "SIM_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,

    /// Start the topology of `--topology` here (brokers on its ports, or free ones when
    /// taken), as without a topology file, instead of using existing brokers.
    #[arg(long, env = "SIM_START_LOCAL", conflicts_with = "brokers")]
    pub start_local: bool,

    /// Run the naive strategies without any broker, as fast as possible.
    #[arg(long, env = "SIM_OFFLINE")]
    pub offline: bool,

    /// Run every strategy in this one process on the simulated clock: the fog
    /// regions' and central's cores linked in, the network between them modelled (the
    /// delays of the local run, times `--speed`), no broker and no server process.
    /// Exactly reproducible, and fast (see docs/simulation.md, in-process runs).
    #[arg(long, env = "SIM_IN_PROCESS", conflicts_with_all = ["offline", "brokers", "start_local"])]
    pub in_process: bool,

    /// With `--in-process`: run once per seed instead of `--seed` and print each
    /// seed's mean waits, the fog/cloud ratio and its mean and worst over the seeds:
    /// `1..20` (1 to 20, both included) or a list `3,7,11`. `--report-json` then
    /// holds every seed's figures.
    #[arg(long, env = "SIM_SEEDS", value_parser = parse_seeds, requires = "in_process")]
    pub seeds: Option<SeedList>,

    /// Central's HTTP API in the local run (taken port: any free one).
    #[arg(long, env = "SIM_CENTRAL_HTTP", default_value = "127.0.0.1:8080")]
    pub central_http: SocketAddr,

    /// A request the fog does not answer within this many real ms is sent again once,
    /// then the vehicle drives to the nearest station.
    #[arg(long, env = "SIM_ANSWER_TIMEOUT_MS", default_value_t = 5000)]
    pub answer_timeout_ms: u64,

    /// The binary that runs the local fog servers and central as `EXE fog-server …` and
    /// `EXE central …` (default: this binary when it is `fogcharge`, else the
    /// `fogcharge` beside it).
    #[arg(long, env = "SIM_SERVER_EXE", hide = true)]
    pub server_exe: Option<PathBuf>,

    /// Round trip between a device and a regional edge server (metro / 5G edge, see
    /// docs/simulation.md), ms: the `fog` strategy's devices reach their regional
    /// brokers through it. 0 with no jitter: direct.
    #[arg(long, env = "SIM_EDGE_RTT_MS", default_value_t = 6.0)]
    pub edge_rtt_ms: f64,

    /// Jitter of the edge path, each way, ms (uniform ±).
    #[arg(long, env = "SIM_EDGE_JITTER_MS", default_value_t = 1.0)]
    pub edge_jitter_ms: f64,

    /// Round trip between a device and a cloud region in another country, ms: `cloud`
    /// and `fog-far` devices reach their broker through it, and the `fog` regions'
    /// bridges reach central through it. 0 with no jitter: direct.
    #[arg(long, env = "SIM_CLOUD_RTT_MS", default_value_t = 120.0)]
    pub cloud_rtt_ms: f64,

    /// Jitter of the cloud path, each way, ms (uniform ±).
    #[arg(long, env = "SIM_CLOUD_JITTER_MS", default_value_t = 10.0)]
    pub cloud_jitter_ms: f64,

    /// Bandwidth cap of every delayed path, each way, Mbit/s (default: none).
    #[arg(long, env = "SIM_LINK_MBPS")]
    pub link_mbps: Option<f64>,

    /// How the simulated stations talk: `mqtt` (each its own MQTT client on the
    /// regional broker) or `ocpp` (each an OCPP 1.6J charge point of its region's
    /// gateway, which the local run starts: see docs/ocpp.md).
    #[arg(long, env = "SIM_STATION_TRANSPORT", value_enum, default_value_t = StationTransport::Mqtt)]
    pub station_transport: StationTransport,

    /// With `--station-transport ocpp`: the heartbeat interval the gateways give the
    /// charge points, real seconds (a charger silent for twice this long is offline).
    #[arg(long, env = "SIM_OCPP_HEARTBEAT_S", default_value_t = 30)]
    pub ocpp_heartbeat_s: u32,

    /// How the MQTT stations connect: `each` (one client per station, with its own
    /// last will on its status) or `per-region` (the stations of a region share one
    /// connection, `stations-{region}`, that speaks for them as their gateway: their
    /// statuses name it, and its presence's last will takes them all offline — the
    /// same for the fog, with a connection per region instead of per station; for
    /// large cities).
    #[arg(long, env = "SIM_STATION_CONNECTIONS", value_enum, default_value_t = StationConnections::Each)]
    pub station_connections: StationConnections,

    /// Write the report as JSON to this file.
    #[arg(long, env = "SIM_REPORT_JSON")]
    pub report_json: Option<PathBuf>,

    /// Write the report as a self-contained HTML page with charts to this file.
    #[arg(long, env = "SIM_REPORT_HTML")]
    pub report_html: Option<PathBuf>,

    /// No progress bar.
    #[arg(long, env = "SIM_NO_PROGRESS")]
    pub no_progress: bool,

    /// Log format.
    #[arg(long, env = "SIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the simulated stations reach the fog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StationTransport {
    /// Each station its own MQTT client on the regional broker.
    Mqtt,
    /// Each station an OCPP 1.6J charge point (WebSocket) of its region's gateway.
    Ocpp,
}

impl StationTransport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Ocpp => "ocpp",
        }
    }
}

/// How the simulated MQTT stations connect to their brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StationConnections {
    /// One MQTT client per station, with its own last will.
    Each,
    /// One connection per region speaks for its stations (a station gateway).
    PerRegion,
}

/// The strategies of one run, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySet(pub Vec<Strategy>);

fn parse_strategies(s: &str) -> Result<StrategySet, String> {
    use clap::ValueEnum as _;
    if s == "all" {
        return Ok(StrategySet(Strategy::ALL.to_vec()));
    }
    s.split(',')
        .map(|n| Strategy::from_str(n.trim(), false))
        .collect::<Result<Vec<_>, _>>()
        .map(StrategySet)
        .map_err(|_| {
            format!(
                "unknown strategy in {s:?}: use fog, cloud, fog-far, nearest, least-queue or all"
            )
        })
}

/// The seeds of a sweep, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedList(pub Vec<u64>);

fn parse_seeds(s: &str) -> Result<SeedList, String> {
    let bad = |e: std::num::ParseIntError| format!("{s:?}: {e} (use 1..20 or 3,7,11)");
    let seeds: Vec<u64> = match s.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(bad)?;
            let b: u64 = b.trim().trim_start_matches('=').parse().map_err(bad)?;
            if b < a {
                return Err(format!("{s:?}: the range is empty"));
            }
            (a..=b).collect()
        }
        None => s
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(bad)?,
    };
    if seeds.len() > 10_000 {
        return Err(format!("{s:?}: at most 10000 seeds"));
    }
    Ok(SeedList(seeds))
}

/// Regional broker URLs by region id.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerList(pub BTreeMap<String, String>);

fn parse_brokers(s: &str) -> Result<BrokerList, String> {
    let mut map = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (region, url) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected region=tcp://host:port"))?;
        protocol::validate_id("region", region).map_err(|e| e.to_string())?;
        if !url.contains("://") {
            return Err(format!(
                "{item:?}: the broker must look like tcp://host:port"
            ));
        }
        map.insert(region.to_owned(), url.to_owned());
    }
    if map.is_empty() {
        return Err("no brokers given".into());
    }
    Ok(BrokerList(map))
}

impl Config {
    /// Reads `--clock-file` and `--mqtt-password-file` into the options they replace.
    pub fn read_files(&mut self) -> Result<()> {
        if let Some(path) = self.clock_file.take() {
            let file = serverkit::clock::ClockFile::load(&path)?;
            self.speed = file.speed;
            self.clock_epoch_ms = Some(file.epoch_ms);
        }
        if let Some(path) = self.mqtt_password_file.take() {
            self.mqtt_password =
                serverkit::secret::password(self.mqtt_password.as_deref(), Some(&path))?;
        }
        Ok(())
    }

    /// Defaults that depend on the topology: the demo city (no `--topology`) gets an
    /// overloaded region, `nw`, unless `--overload-region` says otherwise.
    pub fn apply_demo_defaults(&mut self) {
        if self.topology.is_none() && self.scenario.overload_region.is_none() {
            self.scenario.overload_region = Some("nw".into());
        }
    }

    fn path(rtt_ms: f64, jitter_ms: f64, mbps: Option<f64>) -> Delay {
        Delay::symmetric(
            Duration::from_secs_f64(rtt_ms.max(0.0) / 1000.0),
            Duration::from_secs_f64(jitter_ms.max(0.0) / 1000.0),
            mbps.map(|m| (m * 1e6) as u64),
        )
    }

    /// Device ↔ regional edge.
    pub fn edge_delay(&self) -> Delay {
        Self::path(self.edge_rtt_ms, self.edge_jitter_ms, self.link_mbps)
    }

    /// Device (or regional broker) ↔ cloud.
    pub fn cloud_delay(&self) -> Delay {
        Self::path(self.cloud_rtt_ms, self.cloud_jitter_ms, self.link_mbps)
    }

    pub fn check(&self) -> Result<()> {
        self.scenario.check()?;
        for (flag, v) in [
            ("--edge-rtt-ms", self.edge_rtt_ms),
            ("--edge-jitter-ms", self.edge_jitter_ms),
            ("--cloud-rtt-ms", self.cloud_rtt_ms),
            ("--cloud-jitter-ms", self.cloud_jitter_ms),
        ] {
            anyhow::ensure!(
                v.is_finite() && (0.0..=10_000.0).contains(&v),
                "{flag} must be in [0, 10000] ms, got {v}"
            );
        }
        if let Some(m) = self.link_mbps {
            anyhow::ensure!(
                m.is_finite() && m > 0.0,
                "--link-mbps must be a positive number"
            );
        }
        anyhow::ensure!(
            self.speed.is_finite() && self.speed > 0.0,
            "--speed must be a positive number"
        );
        if let Some(s) = self
            .strategy
            .0
            .iter()
            .find(|s| self.offline && s.asks_server())
        {
            bail!(
                "--offline runs only the nearest and least-queue strategies (the {} strategy needs brokers): add --strategy nearest,least-queue",
                s.name()
            );
        }
        if self.in_process {
            anyhow::ensure!(
                self.station_transport == StationTransport::Mqtt,
                "--in-process runs the stations as plain devices: --station-transport ocpp needs the local run's gateways"
            );
        }
        if self.station_transport == StationTransport::Ocpp {
            anyhow::ensure!(
                !self.offline && !self.is_external(),
                "--station-transport ocpp needs the local run, which starts a gateway per region (not --offline, --brokers or a --topology without --start-local)"
            );
            anyhow::ensure!(
                (1..=86_400).contains(&self.ocpp_heartbeat_s),
                "--ocpp-heartbeat-s must be in [1, 86400] s"
            );
        }
        if self.is_external() && self.speed != 1.0 && self.clock_epoch_ms.is_none() {
            bail!(
                "against existing servers the clock must be shared: pass --clock-epoch-ms (and --speed) equal to the servers' --clock-epoch-ms and --clock-speed"
            );
        }
        Ok(())
    }

    fn is_external(&self) -> bool {
        !self.offline
            && !self.in_process
            && !self.start_local
            && (self.brokers.is_some() || self.topology.is_some())
    }

    /// The topology: from `--topology`, else the demo city, with `--brokers` applied.
    pub fn topology(&self) -> Result<Topology> {
        let mut t = match &self.topology {
            Some(path) => Topology::load(path)?,
            None => Topology::demo_city(),
        };
        if let Some(BrokerList(brokers)) = &self.brokers {
            for (region, url) in brokers {
                let r = t
                    .regions
                    .iter_mut()
                    .find(|r| &r.id == region)
                    .with_context(|| {
                        format!(
                            "--brokers names region {region:?}, which the topology does not have"
                        )
                    })?;
                let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                let (host, port) = rest
                    .rsplit_once(':')
                    .with_context(|| format!("{url}: no port"))?;
                r.broker.host = host.to_owned();
                r.broker.port = port.parse().with_context(|| format!("{url}: bad port"))?;
            }
        }
        Ok(t)
    }
}

/// Runs the configured strategies and returns the report (also written with
/// `--report-json`).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Report> {
    // Ctrl-C in the middle of anything (connecting a fleet, waiting for the servers)
    // ends the run with this reason first.
    run_to_end(config, shutdown.clone()).await.map_err(|e| {
        if shutdown.is_cancelled() && e.to_string() != "interrupted" {
            e.context("interrupted")
        } else {
            e
        }
    })
}

async fn run_to_end(mut config: Config, shutdown: CancellationToken) -> Result<Report> {
    config.read_files()?;
    config.apply_demo_defaults();
    config.check()?;
    let topology = config.topology()?;
    let world = World::generate(&config.scenario, Regions::from_topology(&topology))?;
    let mut report = Report {
        scenario: serde_json::to_value(&config.scenario)?,
        strategies: BTreeMap::new(),
        order: Vec::new(),
        station_transport: config.station_transport.name().into(),
        in_process: false,
    };
    let answer_timeout = Duration::from_millis(config.answer_timeout_ms);
    let progress = !config.no_progress;

    if config.offline {
        for &strategy in &config.strategy.0 {
            let opts = run::RunOptions {
                clock: None,
                net: None,
                answer_timeout,
                progress,
                shutdown: shutdown.clone(),
                settle: run::Settle::No,
            };
            let r = run::run(&world, strategy, opts).await?;
            report.order.push(strategy.name().into());
            report.strategies.insert(strategy.name().into(), r);
        }
        return finish(report, &config);
    }

    if config.in_process {
        report.in_process = true;
        for &strategy in &config.strategy.0 {
            let r = in_process(&config, strategy, &topology, &world, &shutdown)?;
            eprintln!(
                "{}: done in {:.1} s (in process)",
                strategy.name(),
                r.wall_s
            );
            report.order.push(strategy.name().into());
            report.strategies.insert(strategy.name().into(), r);
        }
        return finish(report, &config);
    }

    let external = config.is_external();
    for &strategy in &config.strategy.0 {
        if external && strategy.local_only() {
            eprintln!(
                "{}: skipped — it places the servers itself, which only the local run does",
                strategy.name()
            );
            continue;
        }
        let placement = Placement::of(strategy, &config, &topology, &world);
        let r = if external {
            run_external(&config, &placement, strategy, &shutdown).await?
        } else {
            run_local(&config, &placement, strategy, &shutdown).await?
        };
        eprintln!("{}: done in {:.1} s", strategy.name(), r.wall_s);
        report.order.push(strategy.name().into());
        report.strategies.insert(strategy.name().into(), r);
    }
    finish(report, &config)
}

/// Runs `strategy` over `world` in this process (`--in-process`), placed as the local
/// run would place it.
fn in_process(
    config: &Config,
    strategy: Strategy,
    topology: &Topology,
    world: &World,
    shutdown: &CancellationToken,
) -> Result<StrategyReport> {
    let placement = Placement::of(strategy, config, topology, world);
    let opts = inproc::Options {
        topology: &placement.topology,
        world: &placement.world,
        devices: placement.devices,
        bridges: placement.bridges,
        speed: config.speed,
        answer_timeout: Duration::from_millis(config.answer_timeout_ms),
        shared_stations: config.station_connections == StationConnections::PerRegion,
        progress: !config.no_progress,
        shutdown,
    };
    Ok(placement.label(inproc::run(strategy, &opts)?))
}

/// Runs the configured strategies in process once per seed of `--seeds` (the same
/// scenario otherwise) and returns every seed's report (also written with
/// `--report-json`).
pub async fn sweep(mut config: Config, shutdown: CancellationToken) -> Result<sweep::Sweep> {
    config.read_files()?;
    config.apply_demo_defaults();
    config.check()?;
    let Some(seeds) = config.seeds.clone() else {
        bail!("a sweep needs --seeds");
    };
    let topology = config.topology()?;
    let mut sweep = sweep::Sweep::default();
    for seed in seeds.0 {
        config.scenario.seed = seed;
        let world = World::generate(&config.scenario, Regions::from_topology(&topology))?;
        let mut strategies = BTreeMap::new();
        for &strategy in &config.strategy.0 {
            if shutdown.is_cancelled() {
                bail!("interrupted");
            }
            let r = in_process(&config, strategy, &topology, &world, &shutdown)?;
            strategies.insert(strategy.name().to_owned(), r);
        }
        eprintln!("seed {seed}: done");
        sweep.runs.push(sweep::SeedRun { seed, strategies });
    }
    sweep.order = config
        .strategy
        .0
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    sweep.scenario = serde_json::to_value(&config.scenario)?;
    if let Some(path) = &config.report_json {
        std::fs::write(path, serde_json::to_string_pretty(&sweep)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(sweep)
}

/// Where a strategy's servers are and what lies between them and the devices.
struct Placement {
    /// The servers' regions (the city's, or one region for the whole city).
    topology: Topology,
    /// The world as the devices talk about it (the same world; for a city-wide server
    /// every station and vehicle is in its one region).
    world: World,
    /// Device ↔ broker.
    devices: Delay,
    /// Regional broker ↔ central broker (the bridges).
    bridges: Delay,
}

impl Placement {
    fn of(strategy: Strategy, config: &Config, topology: &Topology, world: &World) -> Self {
        let (edge, cloud) = (config.edge_delay(), config.cloud_delay());
        match strategy {
            // Regional servers beside the vehicles; central in the cloud.
            Strategy::Fog => Self {
                topology: topology.clone(),
                world: world.clone(),
                devices: edge,
                bridges: cloud,
            },
            // The regional servers moved to the cloud, beside central.
            Strategy::FogFar => Self {
                topology: topology.clone(),
                world: world.clone(),
                devices: cloud,
                bridges: Delay::default(),
            },
            // One server for the whole city, in the cloud.
            Strategy::Cloud => {
                let city = world::city_wide(world, CLOUD_REGION);
                let [min_lat, min_lon, max_lat, max_lon] = world.regions.bbox;
                let mut t = topology.clone();
                t.regions.truncate(1);
                t.regions[0].id = CLOUD_REGION.into();
                t.regions[0].polygon = None;
                t.regions[0].bounds = Some(topology::Bounds {
                    min_lat,
                    min_lon,
                    max_lat,
                    max_lon,
                });
                Self {
                    topology: t,
                    world: city,
                    devices: cloud,
                    bridges: Delay::default(),
                }
            }
            Strategy::Nearest | Strategy::LeastQueue => Self {
                topology: topology.clone(),
                world: world.clone(),
                devices: Delay::default(),
                bridges: Delay::default(),
            },
        }
    }

    /// The report, with the network it ran over.
    fn label(&self, mut r: StrategyReport) -> StrategyReport {
        if r.rtt_ms.is_some() {
            let ms = |d: &Delay| d.rtt().as_secs_f64() * 1000.0;
            r.device_rtt_ms = Some(ms(&self.devices));
            r.bridge_rtt_ms = Some(ms(&self.bridges));
        }
        r
    }

    /// `(region, station id)` of every station, as the devices are configured.
    fn stations(&self) -> Vec<(String, String)> {
        self.world
            .stations
            .iter()
            .map(|s| (self.world.regions.areas[s.region].id.clone(), s.id.clone()))
            .collect()
    }

    /// A gateway per region, its chargers file the region's stations.
    fn ocpp_settings(&self, config: &Config) -> launcher::OcppSettings {
        let mut chargers: BTreeMap<String, Vec<launcher::OcppCharger>> = BTreeMap::new();
        for s in &self.world.stations {
            chargers
                .entry(self.world.regions.areas[s.region].id.clone())
                .or_default()
                .push(launcher::OcppCharger {
                    id: s.id.clone(),
                    lat: s.lat,
                    lon: s.lon,
                    connectors: s.chargers,
                    power_kw: s.power_kw,
                });
        }
        launcher::OcppSettings {
            chargers,
            heartbeat_s: config.ocpp_heartbeat_s,
            // A simulated charge point answers at once; a call unanswered for this
            // long means it is gone.
            call_timeout_ms: 5_000,
        }
    }

    /// Stations in service per region, as central should list them.
    fn in_service(&self) -> BTreeMap<String, u32> {
        let mut n: BTreeMap<String, u32> = self
            .topology
            .regions
            .iter()
            .map(|r| (r.id.clone(), 0))
            .collect();
        for (region, _) in self.stations() {
            *n.entry(region).or_default() += 1;
        }
        n
    }
}

/// The region id of the city-wide server of `--strategy cloud`.
pub const CLOUD_REGION: &str = "cloud";

/// Starts brokers, delay proxies and servers of one strategy, runs it, stops them.
async fn run_local(
    config: &Config,
    placement: &Placement,
    strategy: Strategy,
    shutdown: &CancellationToken,
) -> Result<StrategyReport> {
    let stations = placement.stations();
    let credentials = match &config.credentials {
        Some(path) => topology::auth::Credentials::load(path)?,
        // The local run has authentication on, with users made for this run.
        None => topology::auth::Credentials::generate(&placement.topology, &stations, &[]),
    };
    let mut credentials = credentials;
    if config.station_connections == StationConnections::PerRegion {
        credentials.add_station_gateways(&placement.topology);
    }
    let ocpp = config.station_transport == StationTransport::Ocpp;
    eprintln!(
        "{}: starting the local topology: a central broker and {} regional broker(s) (Mosquitto, authentication on), fog server(s){} and central; devices {}, bridges {}",
        strategy.name(),
        placement.topology.regions.len(),
        if ocpp { ", OCPP gateway(s)" } else { "" },
        describe(&placement.devices),
        describe(&placement.bridges),
    );
    let brokers = LocalBrokers::start_with_bridge_delay(
        &placement.topology,
        Some(&credentials),
        placement.bridges,
    )?;
    let topology = brokers.topology.clone();
    let mut proxies = Vec::new();
    let mut urls = HashMap::new();
    for r in &topology.regions {
        if strategy.asks_server() && !placement.devices.is_zero() {
            let upstream = SocketAddr::from(([127, 0, 0, 1], r.broker.port));
            let proxy = launcher::delay::DelayProxy::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                upstream,
                placement.devices,
                config.scenario.seed ^ u64::from(r.broker.port),
            )
            .with_context(|| format!("starting the delay proxy of region {}", r.id))?;
            urls.insert(r.id.clone(), proxy.url());
            proxies.push(proxy);
        } else {
            urls.insert(r.id.clone(), r.broker.url());
        }
    }
    let net_brokers = net::Brokers {
        urls,
        username: config.mqtt_username.clone(),
        password: config.mqtt_password.clone(),
        credentials: Some(credentials.clone()),
        ca_file: config.mqtt_ca_file.clone(),
        shared_stations: config.station_connections == StationConnections::PerRegion,
        // The server strategies' stations hold the fog's reservations (an OCPP
        // gateway does that for its charge points).
        station_reservations: strategy.asks_server() && !ocpp,
    };
    let epoch = wall_ms();
    let clock = Clock::scaled(epoch, config.speed);
    let exe = match &config.server_exe {
        Some(p) => p.clone(),
        None => server_exe_beside(&std::env::current_exe().context("locating this binary")?)?,
    };
    let settings = ServerSettings {
        clock_speed: config.speed,
        clock_epoch_ms: epoch,
        central_http: config.central_http,
        credentials: Some(credentials),
        ocpp: ocpp.then(|| placement.ocpp_settings(config)),
        ..ServerSettings::embedded(&exe)
    };
    let servers = LocalServers::start(&topology, &settings).await?;
    // The charge points reach their gateway over the devices' network too.
    let mut gateways = HashMap::new();
    for (region, listen, _) in servers.ocpp_gateways() {
        let addr = if strategy.asks_server() && !placement.devices.is_zero() {
            let proxy = launcher::delay::DelayProxy::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                listen,
                placement.devices,
                config.scenario.seed ^ u64::from(listen.port()),
            )
            .with_context(|| format!("starting the delay proxy of the gateway of {region}"))?;
            let addr = proxy.addr();
            proxies.push(proxy);
            addr
        } else {
            listen
        };
        gateways.insert(region.to_owned(), format!("ws://{addr}/ocpp"));
    }
    let ocpp_gateways = ocpp.then(|| net::OcppGateways {
        urls: gateways,
        connectors: placement
            .world
            .stations
            .iter()
            .map(|s| s.chargers)
            .collect(),
        now_ms: clock.now_ms(),
    });
    eprintln!(
        "{}: central API http://{}/api/regions (metrics: /metrics)",
        strategy.name(),
        servers.central_http()
    );
    let in_service = placement.in_service();
    let result = async {
        let mut net = net::Net::connect(
            &net_brokers,
            &stations,
            ocpp_gateways.as_ref(),
            strategy.name(),
            shutdown,
        )
        .await?;
        let settle = run::Settle::Until(Box::new(|| {
            Box::pin(async {
                servers.lists_stations(&in_service).await && servers.fogs_hear_central().await
            })
        }));
        let opts = run::RunOptions {
            clock: Some(clock),
            net: Some(&mut net),
            answer_timeout: Duration::from_millis(config.answer_timeout_ms),
            progress: !config.no_progress,
            shutdown: shutdown.clone(),
            settle,
        };
        let mut r = run::run(&placement.world, strategy, opts).await;
        // The gateways' view while every charge point is still connected.
        if let Ok(Some(o)) = r.as_mut().map(|r| r.ocpp.as_mut()) {
            match ocpp::GatewayFigures::scrape(servers.ocpp_gateways().map(|(_, _, http)| http))
                .await
            {
                Ok(g) => o.gateways = g,
                Err(e) => warn!("{e:#}"),
            }
        }
        net.close().await;
        r.map(|r| placement.label(r))
    }
    .await;
    servers.stop().await?;
    for p in proxies {
        p.stop().await;
    }
    drop(brokers);
    result
}

/// Runs one strategy against brokers and servers that already exist.
async fn run_external(
    config: &Config,
    placement: &Placement,
    strategy: Strategy,
    shutdown: &CancellationToken,
) -> Result<StrategyReport> {
    let stations = placement.stations();
    let credentials = match &config.credentials {
        Some(path) => Some(topology::auth::Credentials::load(path)?),
        None => None,
    };
    let net_brokers = net::Brokers {
        urls: placement
            .topology
            .regions
            .iter()
            .map(|r| (r.id.clone(), r.broker.url()))
            .collect(),
        username: config.mqtt_username.clone(),
        password: config.mqtt_password.clone(),
        credentials,
        ca_file: config.mqtt_ca_file.clone(),
        shared_stations: config.station_connections == StationConnections::PerRegion,
        // The server strategies' stations hold the fog's reservations.
        station_reservations: strategy.asks_server(),
    };
    let epoch = config.clock_epoch_ms.unwrap_or_else(wall_ms);
    let clock = Clock::scaled(epoch, config.speed);
    let mut net =
        net::Net::connect(&net_brokers, &stations, None, strategy.name(), shutdown).await?;
    let opts = run::RunOptions {
        clock: Some(clock),
        net: Some(&mut net),
        answer_timeout: Duration::from_millis(config.answer_timeout_ms),
        progress: !config.no_progress,
        shutdown: shutdown.clone(),
        // Existing servers: two aggregate periods for the stations to reach central.
        settle: run::Settle::For(Duration::from_secs(4)),
    };
    let r = run::run(&placement.world, strategy, opts).await;
    net.close().await;
    r
}

/// The binary that runs the servers of the local run when `--server-exe` is not given:
/// `current` when it is `fogcharge` (which has the `fog-server` and `central`
/// commands), else the `fogcharge` in the same directory (as cargo builds them).
pub fn server_exe_beside(current: &Path) -> Result<PathBuf> {
    let name = format!("fogcharge{}", std::env::consts::EXE_SUFFIX);
    if current.file_name().is_some_and(|n| *n == *name) {
        return Ok(current.to_owned());
    }
    let beside = current.with_file_name(&name);
    if !beside.is_file() {
        bail!(
            "the local run starts its servers with the fogcharge binary, which is not beside {} (build it with `cargo build -p fogcharge`, or pass --server-exe)",
            current.display()
        );
    }
    Ok(beside)
}

fn describe(d: &Delay) -> String {
    if d.is_zero() {
        return "direct".into();
    }
    let mut s = format!(
        "{:.1} ms round trip ±{:.1} ms",
        d.rtt().as_secs_f64() * 1000.0,
        d.up.jitter.as_secs_f64() * 1000.0
    );
    if let Some(bps) = d.up.bandwidth_bps {
        s.push_str(&format!(", {:.1} Mbit/s", bps as f64 / 1e6));
    }
    s
}

fn finish(report: Report, config: &Config) -> Result<Report> {
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &config.report_json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &config.report_html {
        std::fs::write(path, report_page::self_contained(&text))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_run_from_fogcharge_itself_or_the_one_beside_this_binary() {
        let dir = tempfile::tempdir().unwrap();
        let exe = |name: &str| {
            dir.path()
                .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
        };
        let (fogcharge, sim) = (exe("fogcharge"), exe("device-sim"));
        // `fogcharge sim` runs its servers from itself, whether or not anything is beside it.
        assert_eq!(server_exe_beside(&fogcharge).unwrap(), fogcharge);
        let e = server_exe_beside(&sim).unwrap_err().to_string();
        assert!(
            e.contains("cargo build -p fogcharge") && e.contains("--server-exe"),
            "{e}"
        );
        std::fs::write(&fogcharge, "").unwrap();
        assert_eq!(server_exe_beside(&sim).unwrap(), fogcharge);
    }

    #[test]
    fn seeds_are_a_range_with_both_ends_or_a_list_and_need_the_in_process_run() {
        let seeds = |arg: &str| {
            Config::try_parse_from(["device-sim", "--in-process", "--seeds", arg])
                .map(|c| c.seeds.unwrap().0)
        };
        assert_eq!(seeds("1..4").unwrap(), [1, 2, 3, 4]);
        assert_eq!(seeds("1..=4").unwrap(), [1, 2, 3, 4]);
        assert_eq!(seeds("7..7").unwrap(), [7]);
        assert_eq!(seeds("3, 7,11").unwrap(), [3, 7, 11]);
        for bad in ["4..1", "a..3", "1,,2", "0..20000"] {
            assert!(seeds(bad).is_err(), "{bad}");
        }
        assert!(Config::try_parse_from(["device-sim", "--seeds", "1..3"]).is_err());
        // The run that can repeat itself takes the other run modes' place.
        let c = Config::try_parse_from(["device-sim", "--in-process", "--topology", "t.toml"]);
        assert!(!c.unwrap().is_external());
        for other in [
            &["--offline"][..],
            &["--brokers", "nw=tcp://h:1"],
            &["--start-local"],
        ] {
            let mut args = vec!["device-sim", "--in-process"];
            args.extend_from_slice(other);
            assert!(Config::try_parse_from(args).is_err(), "{other:?}");
        }
    }

    #[test]
    fn a_hotspot_south_of_the_equator_and_west_of_greenwich_follows_a_space() {
        let c = Config::try_parse_from(["device-sim", "--hotspot", "-12.97,-38.50"]).unwrap();
        assert_eq!(c.scenario.hotspot, Some((-12.97, -38.50)));
    }
}
