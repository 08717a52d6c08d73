//! The container deployments made from a topology: `deploy/regions.yml` (docker
//! compose) and the manifests in `k8s/` (Kubernetes), plus the secret files that
//! `fogcharge setup` writes at deploy time.
//!
//! Both deployments run the same containers with the same commands and environment:
//!
//! | container | image | command |
//! | --- | --- | --- |
//! | setup (compose service / Kubernetes Job) | `fogcharge` | `fogcharge setup`: users, password and ACL files, bridge sections, the shared clock |
//! | `broker-central`, `broker-{region}` | `eclipse-mosquitto:2` (compose: `$FOGCHARGE_BROKER_IMAGE` overrides it) | `mosquitto -c /mosquitto/config/mosquitto.conf` with the generated config |
//! | `fog-{region}` | `fogcharge` | `fogcharge fog-server` |
//! | `central` | `fogcharge` | `fogcharge central` |
//! | `device-sim` | `fogcharge` | `fogcharge sim` against the deployment |
//!
//! Service names are the topology's broker host names, so one topology file serves
//! both (compose service names and Kubernetes Service names resolve alike).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

use crate::auth::{Credentials, Role};
use crate::{RenderOptions, Topology, TopologyError, central_broker_conf, region_broker_conf};

/// Where a broker container sees the secret files.
pub const BROKER_SECRETS: &str = "/mosquitto/secrets";
/// Where a fogcharge container sees the secret files.
pub const SERVER_SECRETS: &str = "/fogcharge/secrets";
/// The broker config inside a broker container.
pub const BROKER_CONF: &str = "/mosquitto/config/mosquitto.conf";
/// The topology file inside setup and device-sim containers.
pub const TOPOLOGY_PATH: &str = "/etc/fogcharge/topology.toml";
/// The shared clock written by setup, in the secrets.
pub const CLOCK_FILE: &str = "clock.json";

/// The secret files of a deployment, by path relative to the secrets directory:
/// `users.toml`, `{broker}.passwd`, `{broker}.acl`, `bridge-{region}/bridge.conf` and
/// `{user}.password` for central, each fog server and the health-check user.
pub fn secret_files(
    t: &Topology,
    credentials: &Credentials,
) -> Result<BTreeMap<String, String>, TopologyError> {
    let mut files = BTreeMap::new();
    files.insert("users.toml".to_owned(), credentials.to_toml());
    files.insert("central.passwd".into(), credentials.password_file(None));
    files.insert("central.acl".into(), credentials.acl(None));
    for r in &t.regions {
        files.insert(
            format!("{}.passwd", r.id),
            credentials.password_file(Some(&r.id)),
        );
        files.insert(format!("{}.acl", r.id), credentials.acl(Some(&r.id)));
        let user = format!("bridge-{}", r.id);
        let password = credentials
            .password(&user)
            .ok_or_else(|| TopologyError::Parse(format!("the users have no {user}")))?;
        files.insert(
            format!("bridge-{}/bridge.conf", r.id),
            crate::bridge_conf(t, &r.id, Some((&user, password)))?,
        );
    }
    for u in &credentials.users {
        if matches!(u.role, Role::Central | Role::Fog { .. } | Role::Health) {
            files.insert(format!("{}.password", u.name), format!("{}\n", u.password));
        }
    }
    Ok(files)
}

/// The key of a secret file in a Kubernetes Secret (no `/` allowed there).
pub fn secret_key(path: &str) -> String {
    path.replace('/', "_")
}

/// What the deployments run besides the topology: the image and the demo scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The fogcharge image (built from the repository's `Dockerfile`).
    pub image: String,
    pub mosquitto_image: String,
    /// The topology file, relative to the compose file.
    pub topology_file: String,
    /// The broker configs' folder, relative to the compose file.
    pub broker_conf_dir: String,
    /// Simulated seconds per real second of the whole deployment (servers and
    /// device-sim share the clock `setup` writes).
    pub clock_speed: f64,
    /// device-sim's scenario, as its environment (`SIM_*`).
    pub scenario: Vec<(String, String)>,
    /// Host ports: central's HTTP API, the central broker, the first regional broker
    /// (the next regions count up).
    pub central_http_port: u16,
    pub central_broker_port: u16,
    pub first_region_port: u16,
    /// Host port of the first fog server's HTTP API (`/metrics`; the next count up).
    pub first_fog_port: u16,
    /// Kubernetes namespace.
    pub namespace: String,
}

impl Settings {
    /// The checked-in deployments: an hour of a city with an overloaded region (so
    /// reroutes cross the bridges) at 60x, about a minute of wall time.
    pub fn demo(t: &Topology) -> Self {
        let overloaded = t.regions.first().map(|r| r.id.clone()).unwrap_or_default();
        Self {
            image: "fogcharge:latest".into(),
            mosquitto_image: "eclipse-mosquitto:2".into(),
            topology_file: "./topology.toml".into(),
            broker_conf_dir: "./mosquitto/compose".into(),
            clock_speed: 60.0,
            scenario: [
                ("SIM_SEED", "7".to_owned()),
                ("SIM_VEHICLES", "400".to_owned()),
                ("SIM_STATIONS", "30".to_owned()),
                ("SIM_HOURS", "1".to_owned()),
                ("SIM_OVERLOAD_REGION", overloaded),
                ("SIM_OVERLOAD_STATIONS", "1".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            central_http_port: 8080,
            central_broker_port: 1884,
            first_region_port: 1885,
            first_fog_port: 9091,
            namespace: "fogcharge".into(),
        }
    }
}

/// One container of the deployment, the same for compose and Kubernetes.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// HTTP port of `/healthz` and `/readyz` (fogcharge servers).
    pub http_port: Option<u16>,
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn health_check_script(secrets: &str) -> String {
    format!(
        "mosquitto_sub -u health -P \"$(cat {secrets}/health.password)\" -t '$SYS/broker/uptime' -C 1 -W 3 >/dev/null"
    )
}

/// The containers of the deployment of `t`, in start order.
pub fn containers(t: &Topology, settings: &Settings) -> Result<Vec<Container>, TopologyError> {
    let secret = |file: &str| format!("{SERVER_SECRETS}/{file}");
    let mut out = vec![Container {
        name: "setup".into(),
        image: settings.image.clone(),
        command: vec![
            s("fogcharge"),
            s("setup"),
            s("--topology"),
            s(TOPOLOGY_PATH),
            s("--out"),
            s(SERVER_SECRETS),
            s("--clock-speed"),
            settings.clock_speed.to_string(),
        ],
        env: settings.scenario.clone(),
        http_port: None,
    }];
    let mosquitto = |name: String| Container {
        name,
        image: settings.mosquitto_image.clone(),
        command: vec![s("mosquitto"), s("-c"), s(BROKER_CONF)],
        env: vec![],
        http_port: None,
    };
    out.push(mosquitto(t.central.host.clone()));
    for r in &t.regions {
        out.push(mosquitto(r.broker.host.clone()));
    }
    let clock = secret(CLOCK_FILE);
    let log = (s("RUST_LOG"), s("info"));
    for r in &t.regions {
        let bounds = r.bounds.as_ref().ok_or_else(|| {
            TopologyError::Parse(format!(
                "region {}: the deployments need `bounds` (a polygon is not supported there yet)",
                r.id
            ))
        })?;
        out.push(Container {
            name: format!("fog-{}", r.id),
            image: settings.image.clone(),
            command: vec![s("fogcharge"), s("fog-server")],
            env: vec![
                (s("FOG_REGION"), r.id.clone()),
                (s("FOG_BROKER"), r.broker.url()),
                (s("FOG_MQTT_USERNAME"), format!("fog-{}", r.id)),
                (
                    s("FOG_MQTT_PASSWORD_FILE"),
                    secret(&format!("fog-{}.password", r.id)),
                ),
                (s("FOG_BOUNDS"), bounds.to_arg()),
                (s("FOG_HTTP"), s("0.0.0.0:9090")),
                (s("FOG_CLOCK_FILE"), clock.clone()),
                (s("FOG_STATE_DIR"), s("/fogcharge/state")),
                log.clone(),
            ],
            http_port: Some(9090),
        });
    }
    out.push(Container {
        name: "central".into(),
        image: settings.image.clone(),
        command: vec![s("fogcharge"), s("central")],
        env: vec![
            (s("CENTRAL_BROKER"), t.central.url()),
            (s("CENTRAL_MQTT_USERNAME"), s("central")),
            (s("CENTRAL_MQTT_PASSWORD_FILE"), secret("central.password")),
            (s("CENTRAL_HTTP"), format!("0.0.0.0:{}", 8080)),
            (s("CENTRAL_CLOCK_FILE"), clock.clone()),
            log,
        ],
        http_port: Some(8080),
    });
    let mut sim_env = settings.scenario.clone();
    sim_env.extend([
        (s("SIM_TOPOLOGY"), s(TOPOLOGY_PATH)),
        (s("SIM_CREDENTIALS"), secret("users.toml")),
        (s("SIM_CLOCK_FILE"), clock),
        (s("SIM_STRATEGY"), s("fog")),
        (s("SIM_NO_PROGRESS"), s("true")),
        (s("SIM_REPORT_JSON"), s("/fogcharge/reports/report.json")),
    ]);
    out.push(Container {
        name: "device-sim".into(),
        image: settings.image.clone(),
        command: vec![s("fogcharge"), s("sim")],
        env: sim_env,
        http_port: None,
    });
    Ok(out)
}

// --- YAML building -------------------------------------------------------------------

fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(Value::String(k.into()), v);
    }
    Value::Mapping(m)
}

fn str_v(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn list(items: impl IntoIterator<Item = Value>) -> Value {
    Value::Sequence(items.into_iter().collect())
}

fn strs<S: AsRef<str>>(items: &[S]) -> Value {
    list(items.iter().map(|i| str_v(i.as_ref())))
}

fn num(n: u64) -> Value {
    Value::Number(n.into())
}

fn yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_default()
}

/// Compose escapes `$` as `$$`.
fn compose_escape(v: &str) -> String {
    v.replace('$', "$$")
}

fn header(out: &mut String, source: &str) {
    let _ = writeln!(
        out,
        "# Generated from {source} by `cargo run -p topology -- generate`. Do not edit: regenerate."
    );
}

/// The environment variable that overrides the broker image in the compose file: the
/// official `eclipse-mosquitto:2` by default, a locally built one (`./dev images`) where
/// no registry is reachable.
pub const BROKER_IMAGE_VAR: &str = "FOGCHARGE_BROKER_IMAGE";

/// The environment variable that overrides the host port a compose service publishes:
/// `FOGCHARGE_PORT_` and the service name in capitals, `-` as `_`
/// (`FOGCHARGE_PORT_FOG_NORTH`).
pub fn port_var(service: &str) -> String {
    format!(
        "FOGCHARGE_PORT_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// The compose network the central broker shares with central and every regional
/// broker (their bridges); each region has its own, `region-{id}`, for its broker, its
/// fog server and device-sim. Its name sorts after `region-…`: Docker routes a
/// container's published ports through the first of its networks by name, and a
/// regional broker's must not go through the network a bridge cut disconnects.
pub const CENTRAL_NETWORK: &str = "to-central";

/// `deploy/regions.yml`: the whole system for `docker compose -f deploy/regions.yml up`.
pub fn compose(t: &Topology, settings: &Settings, source: &str) -> Result<String, TopologyError> {
    let containers = containers(t, settings)?;
    let build = map([
        ("context", str_v("..")),
        ("dockerfile", str_v("Dockerfile")),
    ]);
    let topology_mount = format!("{}:{TOPOLOGY_PATH}:ro", settings.topology_file);
    let mut services = Mapping::new();
    let mut volumes = Mapping::new();
    volumes.insert(str_v("secrets"), Value::Null);
    let healthy = |name: &str| {
        (
            name.to_owned(),
            map([("condition", str_v("service_healthy"))]),
        )
    };
    let region_ports: BTreeMap<String, u16> = t
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.broker.host.clone(), settings.first_region_port + i as u16))
        .collect();
    let fog_ports: BTreeMap<String, u16> = t
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("fog-{}", r.id), settings.first_fog_port + i as u16))
        .collect();
    let publish = |service: &str, host: u16, container: u16| {
        format!("${{{}:-{host}}}:{container}", port_var(service))
    };
    let region_network = |id: &str| format!("region-{id}");
    let mut networks = Mapping::new();
    networks.insert(str_v(CENTRAL_NETWORK), Value::Null);
    for r in &t.regions {
        networks.insert(str_v(region_network(&r.id)), Value::Null);
    }
    for c in &containers {
        let mut svc = Vec::<(&str, Value)>::new();
        if c.image == settings.mosquitto_image {
            svc.push((
                "image",
                str_v(format!("${{{BROKER_IMAGE_VAR}:-{}}}", c.image)),
            ));
        } else {
            svc.push(("image", str_v(&c.image)));
        }
        if c.image == settings.image {
            svc.push(("build", build.clone()));
        }
        svc.push((
            "command",
            list(c.command.iter().map(|a| str_v(compose_escape(a)))),
        ));
        if !c.env.is_empty() {
            svc.push((
                "environment",
                map(c
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), str_v(compose_escape(v))))),
            ));
        }
        let mut mounts: Vec<String> = Vec::new();
        let mut depends: Vec<(String, Value)> = Vec::new();
        let mut ports: Vec<String> = Vec::new();
        // none: compose's default network (setup needs none)
        let mut nets: Vec<String> = Vec::new();
        // one-shot containers keep compose's default (no restart)
        let mut restart = Some("unless-stopped");
        let mut healthcheck = None;
        let mut grace = None;
        if c.name == "setup" {
            mounts.push(topology_mount.clone());
            mounts.push(format!("secrets:{SERVER_SECRETS}"));
            restart = None;
        } else if c.image == settings.mosquitto_image {
            let conf = if c.name == t.central.host {
                "central".to_owned()
            } else {
                t.regions
                    .iter()
                    .find(|r| r.broker.host == c.name)
                    .map(|r| r.id.clone())
                    .unwrap_or_default()
            };
            mounts.push(format!(
                "{}/{conf}.conf:{BROKER_CONF}:ro",
                settings.broker_conf_dir
            ));
            mounts.push(format!("secrets:{BROKER_SECRETS}:ro"));
            let data = format!("{}-data", c.name);
            mounts.push(format!("{data}:/mosquitto/data"));
            volumes.insert(str_v(data), Value::Null);
            depends.push((
                "setup".into(),
                map([("condition", str_v("service_completed_successfully"))]),
            ));
            let port = if c.name == t.central.host {
                settings.central_broker_port
            } else {
                region_ports.get(&c.name).copied().unwrap_or_default()
            };
            ports.push(publish(&c.name, port, 1883));
            nets.push(CENTRAL_NETWORK.to_owned());
            if let Some(r) = t.regions.iter().find(|r| r.broker.host == c.name) {
                nets.push(region_network(&r.id));
            }
            healthcheck = Some(map([
                (
                    "test",
                    strs(&[
                        s("CMD-SHELL"),
                        compose_escape(&health_check_script(BROKER_SECRETS)),
                    ]),
                ),
                ("interval", str_v("2s")),
                ("timeout", str_v("5s")),
                ("retries", num(30)),
                ("start_period", str_v("2s")),
            ]));
        } else {
            mounts.push(format!("secrets:{SERVER_SECRETS}:ro"));
            if let Some(region) = c.name.strip_prefix("fog-") {
                let state = format!("{}-state", c.name);
                mounts.push(format!("{state}:/fogcharge/state"));
                volumes.insert(str_v(state), Value::Null);
                if let Ok(r) = t.region(region) {
                    depends.push(healthy(&r.broker.host));
                }
                nets.push(region_network(region));
                if let (Some(&host), Some(port)) = (fog_ports.get(&c.name), c.http_port) {
                    ports.push(publish(&c.name, host, port));
                }
            } else if c.name == "central" {
                depends.push(healthy(&t.central.host));
                ports.push(publish(&c.name, settings.central_http_port, 8080));
                nets.push(CENTRAL_NETWORK.to_owned());
            } else {
                nets.extend(t.regions.iter().map(|r| region_network(&r.id)));
                mounts.insert(0, topology_mount.clone());
                mounts.push("reports:/fogcharge/reports".into());
                volumes.insert(str_v("reports"), Value::Null);
                for other in &containers {
                    if other.http_port.is_some() {
                        depends.push(healthy(&other.name));
                    }
                }
                restart = None;
            }
            if let Some(port) = c.http_port {
                healthcheck = Some(map([
                    (
                        "test",
                        strs(&[
                            s("CMD"),
                            s("fogcharge"),
                            s("probe"),
                            format!("http://127.0.0.1:{port}/healthz"),
                        ]),
                    ),
                    ("interval", str_v("2s")),
                    ("timeout", str_v("5s")),
                    ("retries", num(30)),
                    ("start_period", str_v("2s")),
                ]));
                grace = Some("15s");
            }
        }
        if !ports.is_empty() {
            svc.push(("ports", strs(&ports)));
        }
        svc.push(("volumes", strs(&mounts)));
        if !nets.is_empty() {
            svc.push(("networks", strs(&nets)));
        }
        if !depends.is_empty() {
            svc.push(("depends_on", map(depends)));
        }
        match healthcheck {
            Some(h) => svc.push(("healthcheck", h)),
            // one-shot containers: not the image's HTTP check
            None if c.image == settings.image => {
                svc.push(("healthcheck", map([("disable", Value::Bool(true))])));
            }
            None => {}
        }
        if let Some(g) = grace {
            svc.push(("stop_grace_period", str_v(g)));
        }
        if let Some(r) = restart {
            svc.push(("restart", str_v(r)));
        }
        services.insert(str_v(&c.name), map(svc));
    }
    let doc = map([
        ("services", Value::Mapping(services)),
        ("volumes", Value::Mapping(volumes)),
        ("networks", Value::Mapping(networks)),
    ]);
    let mut out = String::new();
    header(&mut out, source);
    let _ = writeln!(
        out,
        "# docker compose -f deploy/regions.yml up   (README: Deploy)\n"
    );
    out.push_str(&yaml(&doc));
    Ok(out)
}

// --- Kubernetes ----------------------------------------------------------------------

fn labels(name: &str, component: &str) -> Value {
    map([
        ("app.kubernetes.io/name", str_v(name)),
        ("app.kubernetes.io/instance", str_v("fogcharge")),
        ("app.kubernetes.io/component", str_v(component)),
        ("app.kubernetes.io/part-of", str_v("fogcharge")),
        ("app.kubernetes.io/managed-by", str_v("fogcharge-topology")),
    ])
}

fn selector(name: &str) -> Value {
    map([
        ("app.kubernetes.io/name", str_v(name)),
        ("app.kubernetes.io/instance", str_v("fogcharge")),
    ])
}

fn metadata(name: &str, component: &str, namespace: &str) -> Value {
    map([
        ("name", str_v(name)),
        ("namespace", str_v(namespace)),
        ("labels", labels(name, component)),
    ])
}

fn env_list(env: &[(String, String)]) -> Value {
    list(
        env.iter()
            .map(|(k, v)| map([("name", str_v(k)), ("value", str_v(v))])),
    )
}

fn secret_volume(items: &[(String, String)]) -> Value {
    map([
        ("name", str_v("secrets")),
        (
            "secret",
            map([
                ("secretName", str_v(SECRET_NAME)),
                // 0440: the owner and the pod's fsGroup read it.
                ("defaultMode", num(0o440)),
                (
                    "items",
                    list(
                        items
                            .iter()
                            .map(|(key, path)| map([("key", str_v(key)), ("path", str_v(path))])),
                    ),
                ),
            ]),
        ),
    ])
}

fn item(path: &str) -> (String, String) {
    (secret_key(path), path.to_owned())
}

/// The Secret `fogcharge setup --kubernetes-secret` creates.
pub const SECRET_NAME: &str = "fogcharge-secrets";

fn resources(cpu_req: &str, mem_req: &str, cpu_lim: &str, mem_lim: &str) -> Value {
    map([
        (
            "requests",
            map([("cpu", str_v(cpu_req)), ("memory", str_v(mem_req))]),
        ),
        (
            "limits",
            map([("cpu", str_v(cpu_lim)), ("memory", str_v(mem_lim))]),
        ),
    ])
}

fn fogcharge_security() -> Value {
    map([
        ("runAsNonRoot", Value::Bool(true)),
        ("runAsUser", num(10001)),
        ("runAsGroup", num(10001)),
        ("allowPrivilegeEscalation", Value::Bool(false)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("capabilities", map([("drop", strs(&["ALL"]))])),
    ])
}

fn http_probe(path: &str, port: u16, period: u64) -> Value {
    map([
        (
            "httpGet",
            map([("path", str_v(path)), ("port", num(u64::from(port)))]),
        ),
        ("periodSeconds", num(period)),
        ("timeoutSeconds", num(3)),
        ("failureThreshold", num(3)),
    ])
}

fn service(name: &str, component: &str, ns: &str, port: u16, port_name: &str) -> Value {
    map([
        ("apiVersion", str_v("v1")),
        ("kind", str_v("Service")),
        ("metadata", metadata(name, component, ns)),
        (
            "spec",
            map([
                ("selector", selector(name)),
                (
                    "ports",
                    list([map([
                        ("name", str_v(port_name)),
                        ("port", num(u64::from(port))),
                        ("targetPort", num(u64::from(port))),
                    ])]),
                ),
            ]),
        ),
    ])
}

fn pvc_template(name: &str, size: &str) -> Value {
    map([
        ("metadata", map([("name", str_v(name))])),
        (
            "spec",
            map([
                ("accessModes", strs(&["ReadWriteOnce"])),
                (
                    "resources",
                    map([("requests", map([("storage", str_v(size))]))]),
                ),
            ]),
        ),
    ])
}

fn docs(objects: &[Value]) -> String {
    objects.iter().map(yaml).collect::<Vec<_>>().join("---\n")
}

/// The manifests of `k8s/`: (file name, content). Every file holds Kubernetes objects
/// only, so `kubectl apply -f k8s` applies the folder.
pub fn kubernetes(
    t: &Topology,
    settings: &Settings,
    broker_confs: &RenderOptions,
    source: &str,
) -> Result<Vec<(String, String)>, TopologyError> {
    let ns = settings.namespace.as_str();
    let containers = containers(t, settings)?;
    let mut files = Vec::new();
    let file = |objects: &[Value]| {
        let mut out = String::new();
        header(&mut out, source);
        out.push_str(&docs(objects));
        out
    };

    files.push((
        "00-namespace.yaml".to_owned(),
        file(&[map([
            ("apiVersion", str_v("v1")),
            ("kind", str_v("Namespace")),
            (
                "metadata",
                map([("name", str_v(ns)), ("labels", labels(ns, "namespace"))]),
            ),
        ])]),
    ));

    let mut confs = vec![(
        "central.conf".to_owned(),
        central_broker_conf(t, broker_confs),
    )];
    for r in &t.regions {
        confs.push((
            format!("{}.conf", r.id),
            region_broker_conf(t, &r.id, broker_confs)?,
        ));
    }
    let topology_text = crate::to_toml(t);
    files.push((
        "10-config.yaml".to_owned(),
        file(&[
            map([
                ("apiVersion", str_v("v1")),
                ("kind", str_v("ConfigMap")),
                ("metadata", metadata("fogcharge-brokers", "broker", ns)),
                ("data", map(confs.into_iter().map(|(k, v)| (k, str_v(v))))),
            ]),
            map([
                ("apiVersion", str_v("v1")),
                ("kind", str_v("ConfigMap")),
                ("metadata", metadata("fogcharge-topology", "config", ns)),
                ("data", map([("topology.toml", str_v(topology_text))])),
            ]),
        ]),
    ));

    let topology_volume = map([
        ("name", str_v("topology")),
        ("configMap", map([("name", str_v("fogcharge-topology"))])),
    ]);
    let topology_mount = map([
        ("name", str_v("topology")),
        ("mountPath", str_v("/etc/fogcharge")),
        ("readOnly", Value::Bool(true)),
    ]);
    let secrets_mount = |path: &str| {
        map([
            ("name", str_v("secrets")),
            ("mountPath", str_v(path)),
            ("readOnly", Value::Bool(true)),
        ])
    };
    let pod_security = map([
        ("runAsNonRoot", Value::Bool(true)),
        ("runAsUser", num(10001)),
        ("runAsGroup", num(10001)),
        ("fsGroup", num(10001)),
        ("seccompProfile", map([("type", str_v("RuntimeDefault"))])),
    ]);
    let container_of = |c: &Container, mounts: Vec<Value>, extra: Vec<(&str, Value)>| {
        let mut entries: Vec<(&str, Value)> = vec![
            ("name", str_v(&c.name)),
            ("image", str_v(&c.image)),
            ("imagePullPolicy", str_v("IfNotPresent")),
            ("command", strs(&c.command)),
        ];
        if !c.env.is_empty() {
            entries.push(("env", env_list(&c.env)));
        }
        entries.push(("volumeMounts", list(mounts)));
        entries.extend(extra);
        map(entries)
    };
    let tmp_volume = map([("name", str_v("tmp")), ("emptyDir", map::<&str>([]))]);
    let tmp_mount = map([("name", str_v("tmp")), ("mountPath", str_v("/tmp"))]);

    for c in &containers {
        if c.name == "setup" {
            let mut command = c.command.clone();
            command.extend([s("--kubernetes-secret"), s(SECRET_NAME)]);
            let setup = Container {
                command,
                ..c.clone()
            };
            let sa = "fogcharge-setup";
            files.push((
                "20-setup.yaml".to_owned(),
                file(&[
                    map([
                        ("apiVersion", str_v("v1")),
                        ("kind", str_v("ServiceAccount")),
                        ("metadata", metadata(sa, "setup", ns)),
                    ]),
                    map([
                        ("apiVersion", str_v("rbac.authorization.k8s.io/v1")),
                        ("kind", str_v("Role")),
                        ("metadata", metadata(sa, "setup", ns)),
                        (
                            "rules",
                            list([map([
                                ("apiGroups", strs(&[""])),
                                ("resources", strs(&["secrets"])),
                                ("verbs", strs(&["get", "create"])),
                            ])]),
                        ),
                    ]),
                    map([
                        ("apiVersion", str_v("rbac.authorization.k8s.io/v1")),
                        ("kind", str_v("RoleBinding")),
                        ("metadata", metadata(sa, "setup", ns)),
                        (
                            "roleRef",
                            map([
                                ("apiGroup", str_v("rbac.authorization.k8s.io")),
                                ("kind", str_v("Role")),
                                ("name", str_v(sa)),
                            ]),
                        ),
                        (
                            "subjects",
                            list([map([
                                ("kind", str_v("ServiceAccount")),
                                ("name", str_v(sa)),
                                ("namespace", str_v(ns)),
                            ])]),
                        ),
                    ]),
                    map([
                        ("apiVersion", str_v("batch/v1")),
                        ("kind", str_v("Job")),
                        ("metadata", metadata(sa, "setup", ns)),
                        (
                            "spec",
                            map([
                                ("backoffLimit", num(6)),
                                (
                                    "template",
                                    map([
                                        ("metadata", map([("labels", labels(sa, "setup"))])),
                                        (
                                            "spec",
                                            map([
                                                ("serviceAccountName", str_v(sa)),
                                                ("restartPolicy", str_v("OnFailure")),
                                                ("securityContext", pod_security.clone()),
                                                (
                                                    "containers",
                                                    list([container_of(
                                                        &setup,
                                                        vec![
                                                            topology_mount.clone(),
                                                            tmp_mount.clone(),
                                                        ],
                                                        vec![
                                                            (
                                                                "securityContext",
                                                                fogcharge_security(),
                                                            ),
                                                            (
                                                                "resources",
                                                                resources(
                                                                    "50m", "32Mi", "500m", "128Mi",
                                                                ),
                                                            ),
                                                        ],
                                                    )]),
                                                ),
                                                (
                                                    "volumes",
                                                    list([
                                                        topology_volume.clone(),
                                                        tmp_volume.clone(),
                                                    ]),
                                                ),
                                            ]),
                                        ),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ]),
            ));
        } else if c.image == settings.mosquitto_image {
            let (conf, items): (String, Vec<(String, String)>) = if c.name == t.central.host {
                (
                    "central.conf".into(),
                    vec![
                        item("central.passwd"),
                        item("central.acl"),
                        item("health.password"),
                    ],
                )
            } else {
                let r = t
                    .regions
                    .iter()
                    .find(|r| r.broker.host == c.name)
                    .ok_or_else(|| TopologyError::Parse(format!("no region for {}", c.name)))?;
                (
                    format!("{}.conf", r.id),
                    vec![
                        item(&format!("{}.passwd", r.id)),
                        item(&format!("{}.acl", r.id)),
                        item("health.password"),
                        item(&format!("bridge-{}/bridge.conf", r.id)),
                    ],
                )
            };
            let probe_script = health_check_script(BROKER_SECRETS);
            let container = container_of(
                c,
                vec![
                    map([
                        ("name", str_v("config")),
                        ("mountPath", str_v(BROKER_CONF)),
                        ("subPath", str_v("mosquitto.conf")),
                        ("readOnly", Value::Bool(true)),
                    ]),
                    secrets_mount(BROKER_SECRETS),
                    map([
                        ("name", str_v("data")),
                        ("mountPath", str_v("/mosquitto/data")),
                    ]),
                ],
                vec![
                    (
                        "ports",
                        list([map([("name", str_v("mqtt")), ("containerPort", num(1883))])]),
                    ),
                    (
                        "readinessProbe",
                        map([
                            (
                                "exec",
                                map([("command", strs(&[s("sh"), s("-c"), probe_script]))]),
                            ),
                            ("periodSeconds", num(5)),
                            ("timeoutSeconds", num(5)),
                        ]),
                    ),
                    (
                        "livenessProbe",
                        map([
                            ("tcpSocket", map([("port", num(1883))])),
                            ("periodSeconds", num(10)),
                            ("failureThreshold", num(3)),
                        ]),
                    ),
                    ("resources", resources("50m", "32Mi", "1", "512Mi")),
                ],
            );
            let sts = map([
                ("apiVersion", str_v("apps/v1")),
                ("kind", str_v("StatefulSet")),
                ("metadata", metadata(&c.name, "broker", ns)),
                (
                    "spec",
                    map([
                        ("serviceName", str_v(&c.name)),
                        ("replicas", num(1)),
                        ("selector", map([("matchLabels", selector(&c.name))])),
                        (
                            "template",
                            map([
                                ("metadata", map([("labels", labels(&c.name, "broker"))])),
                                (
                                    "spec",
                                    map([
                                        // the image's mosquitto user: reads the secrets
                                        ("securityContext", map([("fsGroup", num(1883))])),
                                        ("terminationGracePeriodSeconds", num(15)),
                                        ("containers", list([container])),
                                        (
                                            "volumes",
                                            list([
                                                map([
                                                    ("name", str_v("config")),
                                                    (
                                                        "configMap",
                                                        map([
                                                            ("name", str_v("fogcharge-brokers")),
                                                            (
                                                                "items",
                                                                list([map([
                                                                    ("key", str_v(&conf)),
                                                                    (
                                                                        "path",
                                                                        str_v("mosquitto.conf"),
                                                                    ),
                                                                ])]),
                                                            ),
                                                        ]),
                                                    ),
                                                ]),
                                                secret_volume(&items),
                                            ]),
                                        ),
                                    ]),
                                ),
                            ]),
                        ),
                        ("volumeClaimTemplates", list([pvc_template("data", "1Gi")])),
                    ]),
                ),
            ]);
            files.push((
                format!("30-{}.yaml", c.name),
                file(&[service(&c.name, "broker", ns, 1883, "mqtt"), sts]),
            ));
        } else if c.name == "device-sim" {
            let wait = Container {
                name: "wait-for-central".into(),
                image: c.image.clone(),
                command: vec![
                    s("fogcharge"),
                    s("probe"),
                    s("--wait-s"),
                    s("600"),
                    s("http://central:8080/readyz"),
                ],
                env: vec![],
                http_port: None,
            };
            let job = map([
                ("apiVersion", str_v("batch/v1")),
                ("kind", str_v("Job")),
                ("metadata", metadata("device-sim", "simulator", ns)),
                (
                    "spec",
                    map([
                        ("backoffLimit", num(2)),
                        (
                            "template",
                            map([
                                (
                                    "metadata",
                                    map([("labels", labels("device-sim", "simulator"))]),
                                ),
                                (
                                    "spec",
                                    map([
                                        ("restartPolicy", str_v("Never")),
                                        ("securityContext", pod_security.clone()),
                                        (
                                            "initContainers",
                                            list([container_of(
                                                &wait,
                                                vec![],
                                                vec![
                                                    ("securityContext", fogcharge_security()),
                                                    (
                                                        "resources",
                                                        resources("10m", "16Mi", "100m", "64Mi"),
                                                    ),
                                                ],
                                            )]),
                                        ),
                                        (
                                            "containers",
                                            list([container_of(
                                                c,
                                                vec![
                                                    topology_mount.clone(),
                                                    secrets_mount(SERVER_SECRETS),
                                                    map([
                                                        ("name", str_v("reports")),
                                                        ("mountPath", str_v("/fogcharge/reports")),
                                                    ]),
                                                    tmp_mount.clone(),
                                                ],
                                                vec![
                                                    ("securityContext", fogcharge_security()),
                                                    (
                                                        "resources",
                                                        resources("250m", "128Mi", "2", "1Gi"),
                                                    ),
                                                ],
                                            )]),
                                        ),
                                        (
                                            "volumes",
                                            list([
                                                topology_volume.clone(),
                                                secret_volume(&[
                                                    item("users.toml"),
                                                    item(CLOCK_FILE),
                                                ]),
                                                map([
                                                    ("name", str_v("reports")),
                                                    ("emptyDir", map::<&str>([])),
                                                ]),
                                                tmp_volume.clone(),
                                            ]),
                                        ),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ]);
            files.push(("60-device-sim.yaml".to_owned(), file(&[job])));
        } else {
            // fog-{region} and central: Deployments with probes on their HTTP port.
            let port = c.http_port.unwrap_or(8080);
            let is_fog = c.name.starts_with("fog-");
            let password = if is_fog {
                format!("{}.password", c.name)
            } else {
                "central.password".into()
            };
            let mut mounts = vec![secrets_mount(SERVER_SECRETS), tmp_mount.clone()];
            let mut volumes = vec![
                secret_volume(&[item(&password), item(CLOCK_FILE)]),
                tmp_volume.clone(),
            ];
            let mut objects = Vec::new();
            if is_fog {
                let claim = format!("{}-state", c.name);
                mounts.push(map([
                    ("name", str_v("state")),
                    ("mountPath", str_v("/fogcharge/state")),
                ]));
                volumes.push(map([
                    ("name", str_v("state")),
                    ("persistentVolumeClaim", map([("claimName", str_v(&claim))])),
                ]));
                objects.push(map([
                    ("apiVersion", str_v("v1")),
                    ("kind", str_v("PersistentVolumeClaim")),
                    ("metadata", metadata(&claim, "fog-server", ns)),
                    (
                        "spec",
                        map([
                            ("accessModes", strs(&["ReadWriteOnce"])),
                            (
                                "resources",
                                map([("requests", map([("storage", str_v("256Mi"))]))]),
                            ),
                        ]),
                    ),
                ]));
            }
            let component = if is_fog { "fog-server" } else { "central" };
            let container = container_of(
                c,
                mounts,
                vec![
                    (
                        "ports",
                        list([map([
                            ("name", str_v("http")),
                            ("containerPort", num(u64::from(port))),
                        ])]),
                    ),
                    ("readinessProbe", http_probe("/readyz", port, 2)),
                    ("livenessProbe", http_probe("/healthz", port, 10)),
                    ("securityContext", fogcharge_security()),
                    ("resources", resources("100m", "64Mi", "1", "256Mi")),
                ],
            );
            objects.push(service(&c.name, component, ns, port, "http"));
            objects.push(map([
                ("apiVersion", str_v("apps/v1")),
                ("kind", str_v("Deployment")),
                ("metadata", metadata(&c.name, component, ns)),
                (
                    "spec",
                    map([
                        ("replicas", num(1)),
                        // one writer of the region's reservations journal at a time
                        ("strategy", map([("type", str_v("Recreate"))])),
                        ("selector", map([("matchLabels", selector(&c.name))])),
                        (
                            "template",
                            map([
                                ("metadata", map([("labels", labels(&c.name, component))])),
                                (
                                    "spec",
                                    map([
                                        ("securityContext", pod_security.clone()),
                                        // SIGTERM: the servers stop within a few seconds
                                        ("terminationGracePeriodSeconds", num(15)),
                                        ("containers", list([container])),
                                        ("volumes", list(volumes)),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ]));
            let prefix = if is_fog { "40" } else { "50" };
            files.push((format!("{prefix}-{}.yaml", c.name), file(&objects)));
        }
    }
    Ok(files)
}
