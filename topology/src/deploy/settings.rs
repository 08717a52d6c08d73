//! What the container deployments run besides the topology: images, host ports, the
//! shared clock, the Kubernetes namespace and device-sim's scenario. The checked-in
//! deployments read them from [`DEPLOY_SETTINGS`], beside the topology file.

use std::path::Path;

use serde::Deserialize;

use crate::{Topology, TopologyError};

/// The settings of the checked-in deployments, relative to the repository root.
pub const DEPLOY_SETTINGS: &str = "deploy/deployment.toml";

/// What the deployments run besides the topology.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The fogcharge image (built from the repository's `Dockerfile`).
    pub image: String,
    pub mosquitto_image: String,
    /// Simulated seconds per real second of the whole deployment (servers and
    /// device-sim share the clock `setup` writes).
    pub clock_speed: f64,
    pub compose: ComposeSettings,
    pub kubernetes: KubernetesSettings,
    pub scenario: Scenario,
}

/// What only the compose file needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSettings {
    /// The topology file, relative to the compose file.
    pub topology_file: String,
    /// The broker configs' folder, relative to the compose file.
    pub broker_conf_dir: String,
    /// Host port of central's HTTP API.
    pub central_http_port: u16,
    /// Host port of the central broker.
    pub central_broker_port: u16,
    /// Host port of the first regional broker (the next regions count up).
    pub first_region_port: u16,
    /// Host port of the first fog server's HTTP API (`/metrics`; the next count up).
    pub first_fog_port: u16,
    /// Host port of the first OCPP gateway's WebSocket (charge points; the next count up).
    pub first_ocpp_port: u16,
    /// The regions' chargers files (`{region}.toml`), relative to the compose file; the
    /// Kubernetes ConfigMap `fogcharge-chargers` is made from the same files.
    pub chargers_dir: String,
}

/// What only the Kubernetes manifests need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    pub namespace: String,
}

/// device-sim's scenario, handed to setup and device-sim as `SIM_*` variables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub seed: u64,
    pub vehicles: u32,
    pub stations: u32,
    pub hours: f64,
    /// A region with too few stations, so that reroutes cross the bridges.
    pub overload: Option<Overload>,
}

/// `SIM_OVERLOAD_REGION` and `SIM_OVERLOAD_STATIONS`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    pub region: String,
    pub stations: u32,
}

impl Scenario {
    /// The scenario as device-sim's environment, in a fixed order.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SIM_SEED", self.seed.to_string()),
            ("SIM_VEHICLES", self.vehicles.to_string()),
            ("SIM_STATIONS", self.stations.to_string()),
            ("SIM_HOURS", self.hours.to_string()),
        ];
        if let Some(o) = &self.overload {
            env.push(("SIM_OVERLOAD_REGION", o.region.clone()));
            env.push(("SIM_OVERLOAD_STATIONS", o.stations.to_string()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

impl Settings {
    /// Reads a settings file and checks it against the topology it deploys.
    pub fn load(path: &Path, t: &Topology) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text, t)
            .map_err(|e| TopologyError::Parse(format!("{}: {e}", path.display())))
    }

    /// Parses settings and checks them against the topology they deploy.
    pub fn from_toml_str(text: &str, t: &Topology) -> Result<Self, String> {
        let s: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(o) = &s.scenario.overload {
            t.region(&o.region)
                .map_err(|e| format!("scenario.overload: {e}"))?;
        }
        if !(s.clock_speed.is_finite() && s.clock_speed > 0.0) {
            return Err(format!(
                "clock_speed {} is not a positive number",
                s.clock_speed
            ));
        }
        let c = &s.compose;
        let regions = t.regions.len() as u32;
        for (what, first) in [
            ("first_region_port", c.first_region_port),
            ("first_fog_port", c.first_fog_port),
            ("first_ocpp_port", c.first_ocpp_port),
        ] {
            if first == 0 || u32::from(first) + regions > 65_536 {
                return Err(format!(
                    "compose.{what} {first}: no room for {regions} ports"
                ));
            }
        }
        if c.central_http_port == 0 || c.central_broker_port == 0 {
            return Err("compose: port 0 is not a port".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Topology::load(&root.join(crate::DEPLOY_TOPOLOGY)).unwrap()
    }

    fn checked_in() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(DEPLOY_SETTINGS)).unwrap()
    }

    fn with(from: &str, to: &str) -> Result<Settings, String> {
        let text = checked_in();
        assert!(text.contains(from), "{from}");
        Settings::from_toml_str(&text.replacen(from, to, 1), &topology())
    }

    #[test]
    fn the_checked_in_settings_give_the_scenario_in_order() {
        let s = Settings::from_toml_str(&checked_in(), &topology()).unwrap();
        let env = s.scenario.env();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "SIM_SEED",
                "SIM_VEHICLES",
                "SIM_STATIONS",
                "SIM_HOURS",
                "SIM_OVERLOAD_REGION",
                "SIM_OVERLOAD_STATIONS"
            ]
        );
        assert_eq!(env[3].1, "1", "hours as device-sim reads them");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let e = with("region = \"north\"", "region = \"west\"").unwrap_err();
        assert!(e.contains("scenario.overload") && e.contains("west"), "{e}");
        let e = with("namespace =", "name_space =").unwrap_err();
        assert!(e.contains("name_space"), "{e}");
        let e = with("clock_speed = 60.0", "clock_speed = 0.0").unwrap_err();
        assert!(e.contains("clock_speed"), "{e}");
        let e = with("first_fog_port = 9091", "first_fog_port = 65534").unwrap_err();
        assert!(e.contains("first_fog_port"), "{e}");
        let e = with("first_ocpp_port = 8887", "first_ocpp_port = 0").unwrap_err();
        assert!(e.contains("first_ocpp_port"), "{e}");
        let e = Settings::load(Path::new("/nonexistent/deployment.toml"), &topology()).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/deployment.toml"),
            "{e}"
        );
    }
}
