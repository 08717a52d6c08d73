//! The containers of a deployment, the same for compose and Kubernetes: what each runs
//! (image, command, environment). How each is wired up (mounts, ports, health checks)
//! is the business of [`super::compose`] and [`super::k8s`].

use super::{CLOCK_FILE, SERVER_SECRETS, Settings, TOPOLOGY_PATH};
use crate::{Region, Topology, TopologyError};

/// The HTTP port of a fog server inside its container.
pub const FOG_HTTP_PORT: u16 = 9090;
/// The HTTP port of central inside its container.
pub const CENTRAL_HTTP_PORT: u16 = 8080;
/// The MQTT port of a broker inside its container.
pub const MQTT_PORT: u16 = 1883;
/// Where charge points connect to an OCPP gateway inside its container
/// (`ws://…:8887/ocpp/{chargePointId}`).
pub const OCPP_PORT: u16 = 8887;
/// The HTTP port (`/healthz`, `/readyz`, `/metrics`) of an OCPP gateway inside its
/// container.
pub const OCPP_HTTP_PORT: u16 = 9090;
/// The region's chargers file inside an OCPP gateway's container (compose mounts the
/// file, Kubernetes its folder from a ConfigMap, so that a changed ConfigMap reaches it).
pub const CHARGERS_PATH: &str = "/etc/fogcharge/chargers/chargers.toml";
/// The folder of [`CHARGERS_PATH`] (Kubernetes mounts it).
pub const CHARGERS_DIR: &str = "/etc/fogcharge/chargers";
/// The file name of [`CHARGERS_PATH`].
pub const CHARGERS_FILE: &str = "chargers.toml";

/// One container of the deployment, the same for compose and Kubernetes.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// HTTP port of `/healthz` and `/readyz` (fogcharge servers).
    pub http_port: Option<u16>,
    pub role: Role,
}

/// What a container is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// `fogcharge setup`: the secrets and the shared clock, then exits.
    Setup,
    /// A Mosquitto broker: the central one (`region` none) or a region's.
    Broker {
        region: Option<String>,
    },
    Fog {
        region: String,
    },
    /// A region's OCPP 1.6J gateway: the region's real charge points.
    Ocpp {
        region: String,
    },
    Central,
    /// device-sim against the deployment, then exits.
    Simulator,
}

impl Role {
    /// The broker's config name: `central` or the region id.
    pub fn broker_conf(&self) -> Option<&str> {
        match self {
            Role::Broker { region } => Some(region.as_deref().unwrap_or("central")),
            _ => None,
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

fn env(items: &[(&str, String)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn secret(file: &str) -> String {
    format!("{SERVER_SECRETS}/{file}")
}

fn setup(settings: &Settings) -> Container {
    let mut command = strings(&["fogcharge", "setup", "--topology", TOPOLOGY_PATH]);
    command.extend(strings(&["--out", SERVER_SECRETS, "--clock-speed"]));
    command.push(settings.clock_speed.to_string());
    Container {
        name: "setup".into(),
        image: settings.image.clone(),
        command,
        env: settings.scenario.env(),
        http_port: None,
        role: Role::Setup,
    }
}

fn broker(settings: &Settings, host: &str, region: Option<&str>) -> Container {
    Container {
        name: host.to_owned(),
        image: settings.mosquitto_image.clone(),
        command: strings(&["mosquitto", "-c", super::BROKER_CONF]),
        env: vec![],
        http_port: None,
        role: Role::Broker {
            region: region.map(str::to_owned),
        },
    }
}

fn fog(settings: &Settings, r: &Region) -> Result<Container, TopologyError> {
    let bounds = r.bounds.as_ref().ok_or_else(|| {
        TopologyError::Parse(format!(
            "region {}: the deployments need `bounds` (a polygon is not supported there yet)",
            r.id
        ))
    })?;
    Ok(Container {
        name: format!("fog-{}", r.id),
        image: settings.image.clone(),
        command: strings(&["fogcharge", "fog-server"]),
        env: env(&[
            ("FOG_REGION", r.id.clone()),
            ("FOG_BROKER", r.broker.url()),
            ("FOG_MQTT_USERNAME", format!("fog-{}", r.id)),
            (
                "FOG_MQTT_PASSWORD_FILE",
                secret(&format!("fog-{}.password", r.id)),
            ),
            ("FOG_BOUNDS", bounds.to_arg()),
            ("FOG_HTTP", format!("0.0.0.0:{FOG_HTTP_PORT}")),
            ("FOG_CLOCK_FILE", secret(CLOCK_FILE)),
            ("FOG_STATE_DIR", "/fogcharge/state".into()),
            ("RUST_LOG", "info".into()),
        ]),
        http_port: Some(FOG_HTTP_PORT),
        role: Role::Fog {
            region: r.id.clone(),
        },
    })
}

fn ocpp(settings: &Settings, r: &Region) -> Container {
    let user = format!("ocpp-{}", r.id);
    Container {
        name: user.clone(),
        image: settings.image.clone(),
        command: strings(&["fogcharge", "ocpp-gateway"]),
        env: env(&[
            ("OCPP_REGION", r.id.clone()),
            ("OCPP_BROKER", r.broker.url()),
            ("OCPP_MQTT_USERNAME", user.clone()),
            (
                "OCPP_MQTT_PASSWORD_FILE",
                secret(&format!("{user}.password")),
            ),
            ("OCPP_LISTEN", format!("0.0.0.0:{OCPP_PORT}")),
            ("OCPP_CHARGERS", CHARGERS_PATH.into()),
            ("OCPP_HTTP", format!("0.0.0.0:{OCPP_HTTP_PORT}")),
            ("RUST_LOG", "info".into()),
        ]),
        http_port: Some(OCPP_HTTP_PORT),
        role: Role::Ocpp {
            region: r.id.clone(),
        },
    }
}

fn central(settings: &Settings, t: &Topology) -> Container {
    Container {
        name: "central".into(),
        image: settings.image.clone(),
        command: strings(&["fogcharge", "central"]),
        env: env(&[
            ("CENTRAL_BROKER", t.central.url()),
            ("CENTRAL_MQTT_USERNAME", "central".into()),
            ("CENTRAL_MQTT_PASSWORD_FILE", secret("central.password")),
            ("CENTRAL_HTTP", format!("0.0.0.0:{CENTRAL_HTTP_PORT}")),
            ("CENTRAL_CLOCK_FILE", secret(CLOCK_FILE)),
            ("RUST_LOG", "info".into()),
        ]),
        http_port: Some(CENTRAL_HTTP_PORT),
        role: Role::Central,
    }
}

fn simulator(settings: &Settings) -> Container {
    let mut sim_env = settings.scenario.env();
    sim_env.extend(env(&[
        ("SIM_TOPOLOGY", TOPOLOGY_PATH.into()),
        ("SIM_CREDENTIALS", secret("users.toml")),
        ("SIM_CLOCK_FILE", secret(CLOCK_FILE)),
        ("SIM_STRATEGY", "fog".into()),
        ("SIM_NO_PROGRESS", "true".into()),
        ("SIM_REPORT_JSON", "/fogcharge/reports/report.json".into()),
    ]));
    Container {
        name: "device-sim".into(),
        image: settings.image.clone(),
        command: strings(&["fogcharge", "sim"]),
        env: sim_env,
        http_port: None,
        role: Role::Simulator,
    }
}

/// The containers of the deployment of `t`, in start order: setup, the brokers
/// (central first), the fog servers, the OCPP gateways, central, device-sim.
pub fn containers(t: &Topology, settings: &Settings) -> Result<Vec<Container>, TopologyError> {
    let mut out = vec![setup(settings), broker(settings, &t.central.host, None)];
    for r in &t.regions {
        out.push(broker(settings, &r.broker.host, Some(&r.id)));
    }
    for r in &t.regions {
        out.push(fog(settings, r)?);
    }
    for r in &t.regions {
        out.push(ocpp(settings, r));
    }
    out.push(central(settings, t));
    out.push(simulator(settings));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chargers_path_is_its_folder_and_file() {
        assert_eq!(CHARGERS_PATH, format!("{CHARGERS_DIR}/{CHARGERS_FILE}"));
    }
}
