//! A whole fogcharge deployment in one test: a central Mosquitto and one per region,
//! bridged with the configs the topology generator makes, a fog server per region and
//! the central server — all real, on free loopback ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use protocol::api::RegionView;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use topology::{Bounds, RenderOptions, Topology};

use crate::fog::Fog;
use crate::{Mosquitto, MosquittoConfig, free_port, wait_until};

/// How a test city is set up.
#[derive(Debug, Clone)]
pub struct CitySpec {
    /// Regions: id and bounding box.
    pub regions: Vec<(String, Bounds)>,
    /// Aggregate period of the fog servers, ms.
    pub aggregate_ms: u64,
    /// How long a fog waits for central's reroute answer, ms.
    pub reroute_timeout_ms: u64,
    /// How long central waits for one handoff reply, ms.
    pub handoff_timeout_ms: u64,
    /// Regions whose fog server the test plays itself (none started).
    pub without_fog: Vec<String>,
}

impl CitySpec {
    /// Three regions side by side, west to east, each 0.1° (~11 km) wide, at the equator.
    pub fn three_regions() -> Self {
        let band = |i: u32| Bounds {
            min_lat: -0.05,
            min_lon: f64::from(i) * 0.1,
            max_lat: 0.05,
            max_lon: f64::from(i + 1) * 0.1,
        };
        Self {
            regions: vec![
                ("west".into(), band(0)),
                ("middle".into(), band(1)),
                ("east".into(), band(2)),
            ],
            aggregate_ms: 300,
            reroute_timeout_ms: 1500,
            handoff_timeout_ms: 500,
            without_fog: Vec::new(),
        }
    }
}

/// Three regions side by side at the equator (`west`, `middle`, `east`), each 0.12° ×
/// 0.3° (~13 × 33 km), their brokers and central's on free ports: written as
/// `topology.toml` in `dir` for a local run of device-sim (`name`: the city's).
pub fn three_band_topology_file(name: &str, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let band = |i: u32| Bounds {
        min_lat: -0.15,
        min_lon: f64::from(i) * 0.12,
        max_lat: 0.15,
        max_lon: f64::from(i + 1) * 0.12,
    };
    let ports = (0..4).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
    let t = Topology::local(
        name,
        &[("west", band(0)), ("middle", band(1)), ("east", band(2))],
        ports[0],
        &ports[1..],
    )?;
    let path = dir.join("topology.toml");
    std::fs::write(&path, t.to_toml()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A running in-process central server.
pub struct CentralServer {
    pub http: SocketAddr,
    server: Option<central::Central>,
    shutdown: CancellationToken,
}

impl CentralServer {
    async fn start(url: &str, spec: &CitySpec) -> Result<Self> {
        let mut config = central::Config::new(url);
        config.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.handoff_timeout_ms = spec.handoff_timeout_ms;
        config.stale_after_ms = spec.aggregate_ms * 3;
        let shutdown = CancellationToken::new();
        let server = tokio::time::timeout(
            Duration::from_secs(20),
            central::start(config, shutdown.clone()),
        )
        .await
        .context("central did not connect within 20 s")??;
        Ok(Self {
            http: server.http_addr.context("central has no HTTP address")?,
            server: Some(server),
            shutdown,
        })
    }

    /// Stops central gracefully and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(s) => tokio::time::timeout(Duration::from_secs(10), s.wait())
                .await
                .context("central did not stop within 10 s")?,
            None => Ok(()),
        }
    }
}

impl Drop for CentralServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The running city.
///
/// Fields drop in this order: the servers are told to stop before their brokers go.
pub struct City {
    pub spec: CitySpec,
    pub topology: Topology,
    pub fogs: BTreeMap<String, Fog>,
    pub central: Option<CentralServer>,
    pub central_broker: Mosquitto,
    pub brokers: BTreeMap<String, Mosquitto>,
    http: reqwest::Client,
}

impl City {
    /// Starts brokers (bridged), fog servers and central, and waits until central
    /// holds a fresh aggregate of every region.
    pub async fn start(spec: CitySpec) -> Result<Self> {
        crate::init_tracing();
        let central_port = free_port()?;
        let mut region_ports = Vec::new();
        for _ in &spec.regions {
            region_ports.push(free_port()?);
        }
        let regions: Vec<(&str, Bounds)> = spec
            .regions
            .iter()
            .map(|(id, b)| (id.as_str(), *b))
            .collect();
        let topology = Topology::local("test-city", &regions, central_port, &region_ports)?;

        let central_topology = topology.clone();
        let central_broker = Mosquitto::start(
            MosquittoConfig::from_template(move |_, dir| {
                topology::central_broker_conf(&central_topology, &RenderOptions::test(dir))
            })
            .with_port(central_port),
        )?;
        let mut brokers = BTreeMap::new();
        for ((id, _), port) in spec.regions.iter().zip(&region_ports) {
            let t = topology.clone();
            let region = id.clone();
            let broker = Mosquitto::start(
                MosquittoConfig::from_template(move |_, dir| {
                    topology::region_broker_conf(&t, &region, &RenderOptions::test(dir))
                        .unwrap_or_else(|e| format!("# {e}"))
                })
                .with_port(*port),
            )?;
            brokers.insert(id.clone(), broker);
        }
        let mut fogs = BTreeMap::new();
        for (id, bounds) in &spec.regions {
            if spec.without_fog.contains(id) {
                continue;
            }
            let mut config = Fog::config(&brokers[id].url(), id);
            config.bounds = Some(fog_server::config::Bounds {
                min_lat: bounds.min_lat,
                min_lon: bounds.min_lon,
                max_lat: bounds.max_lat,
                max_lon: bounds.max_lon,
            });
            config.aggregate_ms = spec.aggregate_ms;
            config.reroute_timeout_ms = spec.reroute_timeout_ms;
            fogs.insert(id.clone(), Fog::start_with(config).await?);
        }
        let central = CentralServer::start(&central_broker.url(), &spec).await?;
        let city = Self {
            spec,
            topology,
            central_broker,
            brokers,
            fogs,
            central: Some(central),
            http: reqwest::Client::new(),
        };
        city.wait_all_regions_fresh(Duration::from_secs(20)).await?;
        Ok(city)
    }

    pub fn fog(&self, region: &str) -> &Fog {
        &self.fogs[region]
    }

    pub fn broker(&self, region: &str) -> &Mosquitto {
        &self.brokers[region]
    }

    /// GETs JSON from central's HTTP API.
    pub async fn central_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let central = self.central.as_ref().context("central is stopped")?;
        let response = self
            .http
            .get(format!("http://{}{path}", central.http))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Central's view of every region (`GET /api/regions`), by region id.
    pub async fn regions(&self) -> Result<BTreeMap<String, RegionView>> {
        let list: Vec<RegionView> = self.central_json("/api/regions").await?;
        Ok(list.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    /// Waits until central holds a non-stale aggregate of every region with a fog.
    pub async fn wait_all_regions_fresh(&self, timeout: Duration) -> Result<()> {
        let want = self.fogs.len();
        wait_until(
            "central sees every region fresh",
            timeout,
            Duration::from_millis(50),
            || async {
                match self.regions().await {
                    Ok(r) => r.values().filter(|v| !v.stale).count() >= want,
                    Err(_) => false,
                }
            },
        )
        .await?;
        self.wait_fogs_hear_central(timeout).await
    }

    /// Waits until every fog server hears central's heartbeat (the way down the
    /// bridges works too).
    pub async fn wait_fogs_hear_central(&self, timeout: Duration) -> Result<()> {
        wait_until(
            "every fog server hears central",
            timeout,
            Duration::from_millis(50),
            || async {
                for fog in self.fogs.values() {
                    match fog.get_json::<serde_json::Value>("/api/region").await {
                        Ok(v) if v["central_present"] == true => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await
    }

    /// Stops the central server.
    pub async fn stop_central(&mut self) -> Result<()> {
        match self.central.take() {
            Some(c) => c.stop().await,
            None => Ok(()),
        }
    }

    /// Starts the central server again.
    pub async fn start_central(&mut self) -> Result<()> {
        anyhow::ensure!(self.central.is_none(), "central is running");
        self.central = Some(CentralServer::start(&self.central_broker.url(), &self.spec).await?);
        Ok(())
    }
}
