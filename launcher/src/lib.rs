//! Runs a fogcharge topology on this machine: a central Mosquitto and one per region,
//! bridged with the configs the topology generator makes, a fog server per region and
//! central — the brokers as child processes, the servers in this process, exactly as
//! their binaries run them.
//!
//! - [`mosquitto`]: one broker process with its own temporary directory (config, log,
//!   persistence), started when it answers MQTT, stopped or killed on drop, with a
//!   watchdog so that no broker outlives its owner.
//! - [`LocalBrokers`]: every broker of a [`Topology`] on `127.0.0.1`.
//! - [`LocalServers`]: the fog servers and central on those brokers, sharing one clock
//!   (`--clock-speed`/`--clock-epoch-ms`), stopped gracefully.
//!
//! `device-sim` uses it for its one-command local run; the tests use it through the
//! test kit.

#![forbid(unsafe_code)]

pub mod mosquitto;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;
use topology::{RenderOptions, Topology};

pub use mosquitto::{Mosquitto, MosquittoConfig, find_mosquitto, free_port};

/// Every broker of a topology, running on this machine.
pub struct LocalBrokers {
    /// The topology with the ports actually used.
    pub topology: Topology,
    pub central: Mosquitto,
    pub regions: BTreeMap<String, Mosquitto>,
}

impl LocalBrokers {
    /// Starts the central broker and the regional brokers (bridged to it) of `topology`
    /// on `127.0.0.1`. A port that is 0 or already taken is replaced by a free one (the
    /// returned topology says which); every broker answers MQTT when this returns.
    pub fn start(topology: &Topology) -> Result<Self> {
        find_mosquitto()?;
        let mut t = topology.clone();
        t.central.host = "127.0.0.1".into();
        t.central.listen = "127.0.0.1".into();
        t.central.port = usable_port(t.central.port)?;
        for r in &mut t.regions {
            r.broker.host = "127.0.0.1".into();
            r.broker.listen = "127.0.0.1".into();
            r.broker.port = usable_port(r.broker.port)?;
        }
        t.check()?;
        let central_topology = t.clone();
        let central = Mosquitto::start(
            MosquittoConfig::from_template(move |_, dir| {
                topology::central_broker_conf(&central_topology, &RenderOptions::test(dir))
            })
            .with_port(t.central.port),
        )
        .context("starting the central broker")?;
        let mut regions = BTreeMap::new();
        for region in &t.regions {
            let (rt, id) = (t.clone(), region.id.clone());
            let broker = Mosquitto::start(
                MosquittoConfig::from_template(move |_, dir| {
                    topology::region_broker_conf(&rt, &id, &RenderOptions::test(dir))
                        .unwrap_or_else(|e| format!("# {e}"))
                })
                .with_port(region.broker.port),
            )
            .with_context(|| format!("starting the broker of region {}", region.id))?;
            regions.insert(region.id.clone(), broker);
        }
        Ok(Self {
            topology: t,
            central,
            regions,
        })
    }

    /// `tcp://127.0.0.1:PORT` of a region's broker.
    pub fn region_url(&self, region: &str) -> Option<String> {
        self.regions.get(region).map(Mosquitto::url)
    }
}

/// `port` if it can be bound on 127.0.0.1 right now, else a free one.
fn usable_port(port: u16) -> Result<u16> {
    if port != 0 && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
        return Ok(port);
    }
    free_port()
}

/// How [`LocalServers`] run.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Clock speed shared by every server (1 = real time).
    pub clock_speed: f64,
    /// Wall instant from which the shared clock runs `clock_speed` times faster.
    pub clock_epoch_ms: u64,
    /// Central's HTTP address (port 0: any free port); `None`: no HTTP.
    pub central_http: Option<SocketAddr>,
    /// Give every fog server an HTTP API on a free port.
    pub fog_http: bool,
    /// Adjusts each fog server's configuration before it starts.
    pub fog_tweak: Option<fn(&mut fog_server::Config)>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            clock_speed: 1.0,
            clock_epoch_ms: service_wall_ms(),
            central_http: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            fog_http: true,
            fog_tweak: None,
        }
    }
}

fn service_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running fog server.
pub struct LocalFog {
    pub server: fog_server::FogServer,
    pub http: Option<SocketAddr>,
}

/// The fog servers and central of a topology, in this process.
pub struct LocalServers {
    pub fogs: BTreeMap<String, LocalFog>,
    pub central: central::Central,
    pub central_http: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Cancels `shutdown` when dropped without [`stop`](Self::stop).
    _guard: tokio_util::sync::DropGuard,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

impl LocalServers {
    /// Starts central and a fog server per region of `topology` (whose brokers must be
    /// running), and waits until every fog is ready and central holds a fresh aggregate
    /// of every region.
    pub async fn start(topology: &Topology, settings: &ServerSettings) -> Result<Self> {
        let shutdown = CancellationToken::new();
        let mut central_config = central::Config::new(&topology.central.url());
        central_config.http = settings.central_http;
        central_config.clock_speed = settings.clock_speed;
        central_config.clock_epoch_ms = Some(settings.clock_epoch_ms);
        let central = tokio::time::timeout(
            START_TIMEOUT,
            central::start(central_config, shutdown.child_token()),
        )
        .await
        .context("central did not connect within 20 s")??;
        let mut fogs = BTreeMap::new();
        for region in &topology.regions {
            let mut config = fog_server::Config::new(&region.id, &region.broker.url());
            config.bounds = region.bounds.map(|b| fog_server::config::Bounds {
                min_lat: b.min_lat,
                min_lon: b.min_lon,
                max_lat: b.max_lat,
                max_lon: b.max_lon,
            });
            config.http = settings
                .fog_http
                .then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
            config.clock_speed = settings.clock_speed;
            config.clock_epoch_ms = Some(settings.clock_epoch_ms);
            if let Some(tweak) = settings.fog_tweak {
                tweak(&mut config);
            }
            config.check()?;
            let server = tokio::time::timeout(
                START_TIMEOUT,
                fog_server::start(config, shutdown.child_token()),
            )
            .await
            .with_context(|| format!("fog server {} did not connect within 20 s", region.id))??;
            let http = server.http_addr;
            fogs.insert(region.id.clone(), LocalFog { server, http });
        }
        let central_http = central.http_addr;
        let servers = Self {
            fogs,
            central,
            central_http,
            _guard: shutdown.clone().drop_guard(),
            shutdown,
        };
        servers.wait_ready(START_TIMEOUT).await?;
        Ok(servers)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let fogs_ready = self.fogs.values().all(|f| f.server.shared.readiness().0);
            let fresh = {
                let regions = self.central.shared.regions();
                let now = std::time::Instant::now();
                self.fogs.keys().all(|id| {
                    regions
                        .get(id)
                        .is_some_and(|state| !regions.is_stale(state, now))
                })
            };
            if fogs_ready && fresh {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the servers were not ready within {timeout:?} (fogs ready: {fogs_ready}, central sees every region: {fresh})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether central's latest aggregate of every region counts exactly `stations`
    /// stations in service (so the fogs and central both know them).
    pub fn lists_stations(&self, stations: &BTreeMap<String, u32>) -> bool {
        let regions = self.central.shared.regions();
        stations.iter().all(|(id, n)| {
            regions
                .get(id)
                .is_some_and(|s| s.aggregate.stations_in_service == *n)
        })
    }

    /// Stops every server gracefully and waits for them.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        for (id, fog) in self.fogs {
            tokio::time::timeout(Duration::from_secs(10), fog.server.wait())
                .await
                .with_context(|| format!("fog server {id} did not stop within 10 s"))??;
        }
        tokio::time::timeout(Duration::from_secs(10), self.central.wait())
            .await
            .context("central did not stop within 10 s")??;
        Ok(())
    }
}
