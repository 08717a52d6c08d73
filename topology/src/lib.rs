//! The one description of a fogcharge deployment — regions with their areas and
//! brokers, and the central broker — and the Mosquitto configs generated from it.
//!
//! Every config of every deployment comes from here: tests render them for brokers on
//! free ports, the local launcher for its own processes, and `cargo run -p topology --
//! generate` writes the checked-in files under `deploy/` (a test fails when they drift).
//!
//! Modules: this file holds the [`Topology`] and the broker configs; [`auth`] the
//! deployment's users, password and ACL files; [`deploy`] the compose file and the
//! Kubernetes objects. `src/main.rs` is the `topology` command (`show`, `generate`,
//! `check`).
//!
//! # The bridge contract
//!
//! A regional broker of region `{region}` bridges to the central broker with
//!
//! ```text
//! topic # out 1 fog/up/ regions/{region}/up/
//! topic # in 0 fog/down/ regions/{region}/down/
//! ```
//!
//! so the fog server publishes under `fog/up/…` and subscribes to `fog/down/…` on its own
//! broker, and central sees `regions/{region}/up/…` and publishes `regions/{region}/down/…`.
//! Nothing else crosses: device topics (`ev/…`) stay in the region. Any broker bridged
//! by this contract works with the fog servers and central; the generated Mosquitto
//! bridge adds `bridge_protocol_version mqttv311`, `cleansession false`,
//! `local_cleansession false`, `restart_timeout 1 2` and `keepalive_interval 5` (facts
//! measured on Mosquitto 2.0.11: see `docs/fog-central.md`). What goes down to the region crosses at QoS 0:
//! Mosquitto's outgoing bridge socket has Nagle's algorithm on, and the PUBACKs a QoS 1
//! downlink makes the regional broker send there held each next message back for a
//! delayed ACK (40 ms); the downlink messages are time-bound and retried by timeouts
//! (see `docs/fog-central.md`).

//!
//! Modules:
//! - this file: the [`Topology`] (regions, brokers, central) and its checks.
//! - [`mosquitto`]: the broker configs ([`RenderOptions`] for tests, local processes
//!   and containers), each region's bridge by the contract above.
//! - [`auth`]: users, passwords, password files and ACLs.
//! - [`deploy`]: the container deployments (compose, Kubernetes) and their secrets.
//! - [`cli`]: the `topology` command line.

pub mod auth;
pub mod cli;
pub mod deploy;
pub mod mosquitto;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use mosquitto::{
    Auth, Persistence, RenderOptions, Tls, bridge_conf, central_broker_conf, generate_all,
    region_broker_conf,
};

/// A deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    pub central: Broker,
    #[serde(default)]
    pub mosquitto: MosquittoSettings,
    #[serde(rename = "region")]
    pub regions: Vec<Region>,
}

/// Where a broker is reached and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// The host others dial (an IP, a DNS or compose/Kubernetes service name).
    pub host: String,
    pub port: u16,
    /// The address the broker binds.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1".into()
}

impl Broker {
    /// `tcp://host:port`
    pub fn url(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }
}

/// One region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
    /// The outline as `[lat, lon]` points, instead of `bounds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<Vec<[f64; 2]>>,
    pub broker: Broker,
}

impl Region {
    /// The region's outline as `[lat, lon]` points.
    pub fn outline(&self) -> Vec<[f64; 2]> {
        match (&self.bounds, &self.polygon) {
            (Some(b), _) => vec![
                [b.min_lat, b.min_lon],
                [b.min_lat, b.max_lon],
                [b.max_lat, b.max_lon],
                [b.max_lat, b.min_lon],
            ],
            (None, Some(p)) => p.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// The Mosquitto bridge connection's name.
    pub fn bridge_name(&self) -> String {
        format!("{}-to-central", self.id)
    }
}

/// A latitude/longitude box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min_lat: f64,
    pub min_lon: f64,
    pub max_lat: f64,
    pub max_lon: f64,
}

impl Bounds {
    /// `min_lat,min_lon,max_lat,max_lon`, as `fog-server --bounds` takes it.
    pub fn to_arg(&self) -> String {
        format!(
            "{},{},{},{}",
            self.min_lat, self.min_lon, self.max_lat, self.max_lon
        )
    }

    pub fn center(&self) -> (f64, f64) {
        (
            (self.min_lat + self.max_lat) / 2.0,
            (self.min_lon + self.max_lon) / 2.0,
        )
    }
}

/// Broker settings shared by every generated config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MosquittoSettings {
    /// Mosquitto's default (1000) silently drops QoS 1 messages queued for a busy client.
    #[serde(default = "default_max_queued")]
    pub max_queued_messages: u32,
    /// Seconds between saves of the persistence file (Mosquitto's default is 1800).
    #[serde(default = "default_autosave")]
    pub autosave_interval: u32,
}

fn default_max_queued() -> u32 {
    100_000
}

fn default_autosave() -> u32 {
    10
}

impl Default for MosquittoSettings {
    fn default() -> Self {
        Self {
            max_queued_messages: default_max_queued(),
            autosave_interval: default_autosave(),
        }
    }
}

/// What is wrong with a topology.
#[derive(Debug, Error, PartialEq)]
pub enum TopologyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not a valid topology file: {0}")]
    Parse(String),
    #[error("the topology has no regions")]
    NoRegions,
    #[error("region id {0:?} is not a valid id (1-64 of A-Z a-z 0-9 _ -)")]
    BadId(String),
    #[error("region {0:?} appears twice")]
    DuplicateRegion(String),
    #[error("region {0:?} needs exactly one of bounds or polygon")]
    NoArea(String),
    #[error("region {region:?}: {reason}")]
    BadArea { region: String, reason: String },
    #[error("{what}: port 0 is not a port")]
    PortZero { what: String },
    #[error("{what}: {host}:{port} is used twice")]
    DuplicateAddress {
        what: String,
        host: String,
        port: u16,
    },
    #[error("no region {0:?} in the topology")]
    UnknownRegion(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl Topology {
    /// Reads and checks a TOML topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses and checks a TOML topology.
    pub fn from_toml_str(text: &str) -> Result<Self, TopologyError> {
        let t: Self = toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string()))?;
        t.check()?;
        Ok(t)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// A topology on 127.0.0.1 with the given regions and ports.
    pub fn local(
        name: &str,
        regions: &[(&str, Bounds)],
        central_port: u16,
        region_ports: &[u16],
    ) -> Result<Self, TopologyError> {
        let broker = |port| Broker {
            host: "127.0.0.1".into(),
            port,
            listen: "127.0.0.1".into(),
        };
        let t = Self {
            name: name.into(),
            central: broker(central_port),
            mosquitto: MosquittoSettings::default(),
            regions: regions
                .iter()
                .zip(region_ports)
                .map(|((id, bounds), port)| Region {
                    id: (*id).into(),
                    bounds: Some(*bounds),
                    polygon: None,
                    broker: broker(*port),
                })
                .collect(),
        };
        t.check()?;
        Ok(t)
    }

    /// The demo city: ~40 × 40 km around Salvador (Bahia), in four quadrant regions
    /// `nw`, `ne`, `sw`, `se`; central on port 1884, the regions on 1885-1888.
    pub fn demo_city() -> Self {
        let (lat0, lon0) = (-12.97, -38.50);
        let (dlat, dlon) = (0.18, 0.185); // ~20 km each way
        let quadrant = |north: bool, east: bool| Bounds {
            min_lat: if north { lat0 } else { lat0 - dlat },
            max_lat: if north { lat0 + dlat } else { lat0 },
            min_lon: if east { lon0 } else { lon0 - dlon },
            max_lon: if east { lon0 + dlon } else { lon0 },
        };
        let regions = [
            ("nw", quadrant(true, false)),
            ("ne", quadrant(true, true)),
            ("sw", quadrant(false, false)),
            ("se", quadrant(false, true)),
        ];
        Self::local("demo-city", &regions, 1884, &[1885, 1886, 1887, 1888])
            .expect("the demo city is valid")
    }

    pub fn region(&self, id: &str) -> Result<&Region, TopologyError> {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| TopologyError::UnknownRegion(id.into()))
    }

    /// Checks everything a broker or server would otherwise trip over later.
    pub fn check(&self) -> Result<(), TopologyError> {
        if self.regions.is_empty() {
            return Err(TopologyError::NoRegions);
        }
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        let mut address = |what: String, b: &Broker| {
            if b.port == 0 {
                return Err(TopologyError::PortZero { what });
            }
            if !addresses.insert((b.host.clone(), b.port)) {
                return Err(TopologyError::DuplicateAddress {
                    what,
                    host: b.host.clone(),
                    port: b.port,
                });
            }
            Ok(())
        };
        address("central".into(), &self.central)?;
        for r in &self.regions {
            protocol::validate_id("region", &r.id)
                .map_err(|_| TopologyError::BadId(r.id.clone()))?;
            if !ids.insert(r.id.as_str()) {
                return Err(TopologyError::DuplicateRegion(r.id.clone()));
            }
            address(format!("region {}", r.id), &r.broker)?;
            let bad = |reason: &str| TopologyError::BadArea {
                region: r.id.clone(),
                reason: reason.into(),
            };
            let in_range = |lat: f64, lon: f64| {
                (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
            };
            match (&r.bounds, &r.polygon) {
                (Some(b), None) => {
                    if !(in_range(b.min_lat, b.min_lon) && in_range(b.max_lat, b.max_lon)) {
                        return Err(bad("bounds out of range"));
                    }
                    if b.min_lat >= b.max_lat || b.min_lon >= b.max_lon {
                        return Err(bad("bounds need min_lat < max_lat and min_lon < max_lon"));
                    }
                }
                (None, Some(p)) => {
                    if p.len() < 3 {
                        return Err(bad("a polygon needs at least 3 points"));
                    }
                    if !p.iter().all(|[lat, lon]| in_range(*lat, *lon)) {
                        return Err(bad("polygon point out of range"));
                    }
                }
                _ => return Err(TopologyError::NoArea(r.id.clone())),
            }
        }
        Ok(())
    }
}

/// The topology as TOML, as [`Topology::load`] reads it.
pub fn to_toml(t: &Topology) -> String {
    toml::to_string_pretty(t).unwrap_or_default()
}

/// The topology of the container deployments, relative to the repository root.
pub const DEPLOY_TOPOLOGY: &str = "deploy/topology.toml";

/// Every generated file that is checked in, by path relative to the repository root
/// (`root`): the container broker configs (`deploy/mosquitto/compose/`), the compose
/// file (`deploy/regions.yml`) and the Kubernetes manifests (`k8s/`), all from
/// [`DEPLOY_TOPOLOGY`], the deployment settings beside it ([`deploy::DEPLOY_SETTINGS`])
/// and the regions' chargers files (`deploy/chargers/`, not generated).
pub fn checked_in_files(root: &Path) -> Result<Vec<(PathBuf, String)>, TopologyError> {
    let t = Topology::load(&root.join(DEPLOY_TOPOLOGY))?;
    let opts = RenderOptions::container(DEPLOY_TOPOLOGY);
    let settings = deploy::Settings::load(&root.join(deploy::DEPLOY_SETTINGS), &t)?;
    let mut files: Vec<(PathBuf, String)> = generate_all(&t, &opts)
        .into_iter()
        .map(|(name, text)| (Path::new("deploy/mosquitto/compose").join(name), text))
        .collect();
    files.push((
        "deploy/regions.yml".into(),
        deploy::compose(&t, &settings, DEPLOY_TOPOLOGY)?,
    ));
    // the chargers files are beside the compose file, as it mounts them
    let chargers_dir = root.join("deploy").join(&settings.compose.chargers_dir);
    let chargers = deploy::chargers_files(&t, &chargers_dir)?;
    for (name, text) in deploy::kubernetes(&t, &settings, &opts, &chargers, DEPLOY_TOPOLOGY)? {
        files.push((Path::new("k8s").join(name), text));
    }
    Ok(files)
}
