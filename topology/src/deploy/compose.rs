//! `deploy/regions.yml`: the whole system for `docker compose -f deploy/regions.yml up`,
//! one function per kind of service.

use indexmap::IndexMap;
use serde::Serialize;

use super::containers::{CENTRAL_HTTP_PORT, CHARGERS_PATH, MQTT_PORT, OCPP_PORT};
use super::{
    BROKER_CONF, BROKER_SECRETS, Container, Role, SERVER_SECRETS, Settings, TOPOLOGY_PATH,
    containers, header, health_check_script, yaml,
};
use crate::{Topology, TopologyError};

/// The environment variable that overrides the broker image in the compose file: the
/// official `eclipse-mosquitto:2` by default, a locally built one (`./dev images`) where
/// no registry is reachable.
pub const BROKER_IMAGE_VAR: &str = "FOGCHARGE_BROKER_IMAGE";

/// The compose network the central broker shares with central and every regional
/// broker (their bridges); each region has its own, `region-{id}`, for its broker, its
/// fog server and device-sim. Its name sorts after `region-…`: Docker routes a
/// container's published ports through the first of its networks by name, and a
/// regional broker's must not go through the network a bridge cut disconnects.
pub const CENTRAL_NETWORK: &str = "to-central";

/// The environment variable that overrides the host port a compose service publishes:
/// `FOGCHARGE_PORT_` and the service name in capitals, `-` as `_`
/// (`FOGCHARGE_PORT_FOG_NORTH`).
pub fn port_var(service: &str) -> String {
    format!(
        "FOGCHARGE_PORT_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// A compose file: services, named volumes and networks, in the order written.
#[derive(Serialize)]
struct ComposeFile {
    services: IndexMap<String, Service>,
    /// Named volumes with compose's defaults (`name: null`).
    volumes: IndexMap<String, ()>,
    networks: IndexMap<String, ()>,
}

/// One compose service.
#[derive(Serialize, Default)]
struct Service {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<Build>,
    command: Vec<String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    environment: IndexMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    volumes: Vec<String>,
    /// None: compose's default network (setup needs none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    networks: Vec<String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    depends_on: IndexMap<String, Depends>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<HealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_grace_period: Option<String>,
    /// None for one-shot containers: compose's default (no restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<String>,
}

#[derive(Serialize)]
struct Build {
    context: String,
    dockerfile: String,
}

#[derive(Serialize)]
struct Depends {
    condition: Condition,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Condition {
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HealthCheck {
    /// One-shot containers: not the image's HTTP check.
    Disabled { disable: bool },
    Test {
        test: Vec<String>,
        interval: String,
        timeout: String,
        retries: u32,
        start_period: String,
    },
}

impl HealthCheck {
    fn test(test: Vec<String>) -> Self {
        HealthCheck::Test {
            test,
            interval: "2s".into(),
            timeout: "5s".into(),
            retries: 30,
            start_period: "2s".into(),
        }
    }
}

/// Compose escapes `$` as `$$`.
fn escape(v: &str) -> String {
    v.replace('$', "$$")
}

fn region_network(id: &str) -> String {
    format!("region-{id}")
}

/// `${FOGCHARGE_PORT_X:-host}:container`
fn publish(service: &str, host: u16, container: u16) -> String {
    format!("${{{}:-{host}}}:{container}", port_var(service))
}

fn depends(on: &[(&str, Condition)]) -> IndexMap<String, Depends> {
    on.iter()
        .map(|&(name, condition)| (name.to_owned(), Depends { condition }))
        .collect()
}

/// What every service has: image, command and environment; the fogcharge image's
/// services can build it.
fn base(c: &Container, settings: &Settings) -> Service {
    let fogcharge = !matches!(c.role, Role::Broker { .. });
    Service {
        image: if fogcharge {
            c.image.clone()
        } else {
            format!("${{{BROKER_IMAGE_VAR}:-{}}}", c.image)
        },
        build: (fogcharge && c.image == settings.image).then(|| Build {
            context: "..".into(),
            dockerfile: "Dockerfile".into(),
        }),
        command: c.command.iter().map(|a| escape(a)).collect(),
        environment: c.env.iter().map(|(k, v)| (k.clone(), escape(v))).collect(),
        ..Service::default()
    }
}

/// A fogcharge server's HTTP health check and its SIGTERM grace period.
fn http_checked(mut svc: Service, port: u16) -> Service {
    svc.healthcheck = Some(HealthCheck::test(vec![
        "CMD".into(),
        "fogcharge".into(),
        "probe".into(),
        format!("http://127.0.0.1:{port}/healthz"),
    ]));
    svc.stop_grace_period = Some("15s".into());
    svc.restart = Some("unless-stopped".into());
    svc
}

fn topology_mount(settings: &Settings) -> String {
    format!("{}:{TOPOLOGY_PATH}:ro", settings.compose.topology_file)
}

fn setup_service(c: &Container, settings: &Settings) -> Service {
    Service {
        volumes: vec![
            topology_mount(settings),
            format!("secrets:{SERVER_SECRETS}"),
        ],
        healthcheck: Some(HealthCheck::Disabled { disable: true }),
        ..base(c, settings)
    }
}

/// A broker: its config and the secrets read-only, its data volume, on the central
/// network (the bridges) and its region's, started once setup has made the secrets.
fn broker_service(c: &Container, settings: &Settings, host_port: u16) -> Service {
    let conf = c.role.broker_conf().unwrap_or("central");
    let mut networks = vec![CENTRAL_NETWORK.to_owned()];
    if let Role::Broker { region: Some(r) } = &c.role {
        networks.push(region_network(r));
    }
    Service {
        ports: vec![publish(&c.name, host_port, MQTT_PORT)],
        volumes: vec![
            format!(
                "{}/{conf}.conf:{BROKER_CONF}:ro",
                settings.compose.broker_conf_dir
            ),
            format!("secrets:{BROKER_SECRETS}:ro"),
            format!("{}-data:/mosquitto/data", c.name),
        ],
        networks,
        depends_on: depends(&[("setup", Condition::ServiceCompletedSuccessfully)]),
        healthcheck: Some(HealthCheck::test(vec![
            "CMD-SHELL".into(),
            escape(&health_check_script(BROKER_SECRETS)),
        ])),
        restart: Some("unless-stopped".into()),
        ..base(c, settings)
    }
}

/// A region's server, on its region's network, started once its broker is healthy,
/// with its HTTP check: a fog server (its HTTP API published, its state volume) or an
/// OCPP gateway (its WebSocket published, the region's chargers file read-only).
fn region_service(
    c: &Container,
    settings: &Settings,
    t: &Topology,
    region: &str,
    host_port: u16,
) -> Service {
    let secrets = format!("secrets:{SERVER_SECRETS}:ro");
    let (port, volumes) = match c.role {
        Role::Ocpp { .. } => {
            let dir = &settings.compose.chargers_dir;
            let chargers = format!("{dir}/{region}.toml:{CHARGERS_PATH}:ro");
            (OCPP_PORT, vec![secrets, chargers])
        }
        _ => {
            let state = format!("{}-state:/fogcharge/state", c.name);
            (c.http_port.unwrap_or_default(), vec![secrets, state])
        }
    };
    let broker = t
        .region(region)
        .map(|r| r.broker.host.as_str())
        .unwrap_or_default();
    let svc = Service {
        ports: vec![publish(&c.name, host_port, port)],
        volumes,
        networks: vec![region_network(region)],
        depends_on: depends(&[(broker, Condition::ServiceHealthy)]),
        ..base(c, settings)
    };
    http_checked(svc, c.http_port.unwrap_or_default())
}

fn central_service(c: &Container, settings: &Settings, t: &Topology) -> Service {
    let svc = Service {
        ports: vec![publish(
            &c.name,
            settings.compose.central_http_port,
            CENTRAL_HTTP_PORT,
        )],
        volumes: vec![format!("secrets:{SERVER_SECRETS}:ro")],
        networks: vec![CENTRAL_NETWORK.to_owned()],
        depends_on: depends(&[(&t.central.host, Condition::ServiceHealthy)]),
        ..base(c, settings)
    };
    http_checked(svc, c.http_port.unwrap_or(CENTRAL_HTTP_PORT))
}

/// device-sim: in every region, started once every server is healthy.
fn simulator_service(
    c: &Container,
    settings: &Settings,
    t: &Topology,
    all: &[Container],
) -> Service {
    let servers: Vec<(&str, Condition)> = all
        .iter()
        .filter(|o| o.http_port.is_some())
        .map(|o| (o.name.as_str(), Condition::ServiceHealthy))
        .collect();
    Service {
        volumes: vec![
            topology_mount(settings),
            format!("secrets:{SERVER_SECRETS}:ro"),
            "reports:/fogcharge/reports".into(),
        ],
        networks: t.regions.iter().map(|r| region_network(&r.id)).collect(),
        depends_on: depends(&servers),
        healthcheck: Some(HealthCheck::Disabled { disable: true }),
        ..base(c, settings)
    }
}

/// The named volumes a service mounts (`name:/path`, not a host path such as
/// `./file:/path`).
fn named_volumes(svc: &Service) -> impl Iterator<Item = String> + '_ {
    svc.volumes
        .iter()
        .filter_map(|v| v.split(':').next())
        .filter(|source| !source.starts_with(['.', '~']) && !source.contains('/'))
        .map(str::to_owned)
}

/// `deploy/regions.yml`: the whole system for `docker compose -f deploy/regions.yml up`.
pub fn compose(t: &Topology, settings: &Settings, source: &str) -> Result<String, TopologyError> {
    let all = containers(t, settings)?;
    let ports = &settings.compose;
    // the regions' host ports count up from the first, in the topology's order
    let nth = |first: u16, region: &str| {
        let i = t
            .regions
            .iter()
            .position(|r| r.id == region)
            .unwrap_or_default();
        first + i as u16
    };
    let mut file = ComposeFile {
        services: IndexMap::new(),
        volumes: IndexMap::new(),
        networks: IndexMap::new(),
    };
    for c in &all {
        let svc = match &c.role {
            Role::Setup => setup_service(c, settings),
            Role::Broker { region: None } => broker_service(c, settings, ports.central_broker_port),
            Role::Broker { region: Some(r) } => {
                broker_service(c, settings, nth(ports.first_region_port, r))
            }
            Role::Fog { region } => {
                region_service(c, settings, t, region, nth(ports.first_fog_port, region))
            }
            Role::Ocpp { region } => {
                region_service(c, settings, t, region, nth(ports.first_ocpp_port, region))
            }
            Role::Central => central_service(c, settings, t),
            Role::Simulator => simulator_service(c, settings, t, &all),
        };
        file.volumes.extend(named_volumes(&svc).map(|v| (v, ())));
        file.services.insert(c.name.clone(), svc);
    }
    file.networks.insert(CENTRAL_NETWORK.to_owned(), ());
    for r in &t.regions {
        file.networks.insert(region_network(&r.id), ());
    }
    let mut out = header(source);
    out.push_str("# docker compose -f deploy/regions.yml up   (README: Deploy)\n\n");
    out.push_str(&yaml(&file));
    Ok(out)
}
