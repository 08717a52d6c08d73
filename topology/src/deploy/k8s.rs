//! The manifests of `k8s/`, one function per kind of object, from the typed objects of
//! [`api`].

mod api;
mod pod;

use api::{
    Binding, ClaimRef, ClaimTemplate, ConfigMapData, ConfigMapVolume, ContainerPort,
    DeploymentSpec, Empty, Exec, JobSpec, KeyToPath, LabelSelector, Labels, Metadata, Object,
    PodSecurityContext, PodSpec, PolicyRule, PolicyRules, Probe, RoleRef, Selector, ServicePort,
    ServiceSpec, Spec, StatefulSetSpec, Strategy, Subject, TcpSocket, VolumeMount, VolumeSource,
};
use pod::{
    claim_spec, container, fogcharge_security, http_probe, mount, pod_security, pod_template,
    resources, secret_volume, tmp_mount, tmp_volume, topology_mount, topology_volume, volume,
};
use serde::Serialize;

use super::containers::{CHARGERS_DIR, CHARGERS_FILE, MQTT_PORT, OCPP_PORT};
use super::{
    BROKER_CONF, BROKER_SECRETS, CLOCK_FILE, Container, Role, SERVER_SECRETS, Settings, containers,
    header, health_check_script, yaml,
};
use crate::{RenderOptions, Topology, TopologyError, central_broker_conf, region_broker_conf};

/// The Secret `fogcharge setup --kubernetes-secret` creates.
pub const SECRET_NAME: &str = "fogcharge-secrets";

/// The ConfigMap of the regions' chargers files (`{region}.toml`), made from
/// `deploy/chargers/`; each OCPP gateway mounts its region's.
pub const CHARGERS_CONFIG_MAP: &str = "fogcharge-chargers";

/// The image's `mosquitto` group: it reads the secrets.
const MOSQUITTO_GID: u32 = 1883;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

fn labels(name: &str, component: &str) -> Labels {
    Labels {
        name: name.to_owned(),
        instance: "fogcharge",
        component: component.to_owned(),
        part_of: "fogcharge",
        managed_by: "fogcharge-topology",
    }
}

fn selector(name: &str) -> Selector {
    Selector {
        name: name.to_owned(),
        instance: "fogcharge",
    }
}

fn metadata(name: &str, component: &str, namespace: &str) -> Metadata {
    Metadata {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(name, component)),
    }
}

fn object<B: Serialize>(
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    body: B,
) -> String {
    yaml(&Object {
        api_version,
        kind,
        metadata,
        body,
    })
}

/// One file of objects, `---` between them.
fn file(source: &str, objects: &[String]) -> String {
    header(source) + &objects.join("---\n")
}

fn namespace(ns: &str) -> String {
    let metadata = Metadata {
        name: Some(ns.to_owned()),
        labels: Some(labels(ns, "namespace")),
        ..Metadata::default()
    };
    object("v1", "Namespace", metadata, Empty {})
}

fn config_map(name: &str, component: &str, ns: &str, data: Vec<(String, String)>) -> String {
    let data = data.into_iter().collect();
    let body = ConfigMapData { data };
    object("v1", "ConfigMap", metadata(name, component, ns), body)
}

/// A ClusterIP Service in front of `name`'s pods.
fn service(name: &str, component: &str, ns: &str, port: u16, port_name: &str) -> String {
    let spec = ServiceSpec {
        selector: selector(name),
        ports: vec![ServicePort {
            name: port_name.to_owned(),
            port,
            target_port: port,
        }],
    };
    object(
        "v1",
        "Service",
        metadata(name, component, ns),
        Spec { spec },
    )
}

fn persistent_volume_claim(name: &str, component: &str, ns: &str, size: &str) -> String {
    let spec = claim_spec(size);
    let meta = metadata(name, component, ns);
    object("v1", "PersistentVolumeClaim", meta, Spec { spec })
}

fn service_account(name: &str, component: &str, ns: &str) -> String {
    object(
        "v1",
        "ServiceAccount",
        metadata(name, component, ns),
        Empty {},
    )
}

/// A Role that may do `verbs` to `resources` of the core API group.
fn role(name: &str, component: &str, ns: &str, resources: &[&str], verbs: &[&str]) -> String {
    let rules = PolicyRules {
        rules: vec![PolicyRule {
            api_groups: strings(&[""]),
            resources: strings(resources),
            verbs: strings(verbs),
        }],
    };
    object(RBAC, "Role", metadata(name, component, ns), rules)
}

/// Binds the Role `name` to the ServiceAccount `name`.
fn role_binding(name: &str, component: &str, ns: &str) -> String {
    let binding = Binding {
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io",
            kind: "Role",
            name: name.into(),
        },
        subjects: vec![Subject {
            kind: "ServiceAccount",
            name: name.into(),
            namespace: ns.into(),
        }],
    };
    object(RBAC, "RoleBinding", metadata(name, component, ns), binding)
}

const RBAC: &str = "rbac.authorization.k8s.io/v1";

fn job(name: &str, component: &str, ns: &str, backoff_limit: u32, pod: PodSpec) -> String {
    let spec = JobSpec {
        backoff_limit,
        template: pod_template(name, component, pod),
    };
    object(
        "batch/v1",
        "Job",
        metadata(name, component, ns),
        Spec { spec },
    )
}

/// One pod, recreated rather than rolled: one writer of a region's reservations
/// journal at a time.
fn deployment(name: &str, component: &str, ns: &str, pod: PodSpec) -> String {
    let spec = DeploymentSpec {
        replicas: 1,
        strategy: Strategy { kind: "Recreate" },
        selector: LabelSelector {
            match_labels: selector(name),
        },
        template: pod_template(name, component, pod),
    };
    let meta = metadata(name, component, ns);
    object("apps/v1", "Deployment", meta, Spec { spec })
}

/// One pod with its own claim `data` of `size`, behind the Service of the same name.
fn stateful_set(name: &str, component: &str, ns: &str, pod: PodSpec, size: &str) -> String {
    let spec = StatefulSetSpec {
        service_name: name.to_owned(),
        replicas: 1,
        selector: LabelSelector {
            match_labels: selector(name),
        },
        template: pod_template(name, component, pod),
        volume_claim_templates: vec![ClaimTemplate {
            metadata: Metadata {
                name: Some("data".into()),
                ..Metadata::default()
            },
            spec: claim_spec(size),
        }],
    };
    let meta = metadata(name, component, ns);
    object("apps/v1", "StatefulSet", meta, Spec { spec })
}

/// The broker configs, the topology and the chargers files, as ConfigMaps.
fn config_maps(
    t: &Topology,
    opts: &RenderOptions,
    chargers: &[(String, String)],
    ns: &str,
) -> Result<Vec<String>, TopologyError> {
    let mut confs = vec![("central.conf".to_owned(), central_broker_conf(t, opts))];
    for r in &t.regions {
        let conf = region_broker_conf(t, &r.id, opts)?;
        confs.push((format!("{}.conf", r.id), conf));
    }
    let topology = vec![("topology.toml".to_owned(), crate::to_toml(t))];
    let chargers_data = chargers
        .iter()
        .map(|(region, text)| (format!("{region}.toml"), text.clone()))
        .collect();
    Ok(vec![
        config_map("fogcharge-brokers", "broker", ns, confs),
        config_map("fogcharge-topology", "config", ns, topology),
        config_map(CHARGERS_CONFIG_MAP, "ocpp-gateway", ns, chargers_data),
    ])
}

/// setup as a Job, with a ServiceAccount allowed to create the Secret and nothing else.
fn setup_objects(c: &Container, ns: &str) -> Vec<String> {
    let sa = "fogcharge-setup";
    let mut setup = c.clone();
    // The Secret instead of the compose file's shared folder (setup takes one or the other).
    if let Some(at) = setup.command.iter().position(|a| a == "--out") {
        setup.command.drain(at..(at + 2).min(setup.command.len()));
    }
    setup
        .command
        .extend(strings(&["--kubernetes-secret", SECRET_NAME]));
    let mounts = vec![topology_mount(), tmp_mount()];
    let mut main = container(&setup, mounts, resources("50m", "32Mi", "500m", "128Mi"));
    main.security_context = fogcharge_security();
    let pod = PodSpec {
        service_account_name: Some(sa.into()),
        restart_policy: Some("OnFailure"),
        security_context: pod_security(),
        containers: vec![main],
        volumes: vec![topology_volume(), tmp_volume()],
        ..PodSpec::default()
    };
    vec![
        service_account(sa, "setup", ns),
        role(sa, "setup", ns, &["secrets"], &["get", "create"]),
        role_binding(sa, "setup", ns),
        job(sa, "setup", ns, 6, pod),
    ]
}

/// The Mosquitto container: its config from the ConfigMap, its secrets, its data.
fn broker_container(c: &Container) -> api::Container {
    let config = VolumeMount {
        sub_path: Some("mosquitto.conf".into()),
        ..mount("config", BROKER_CONF, true)
    };
    let secrets = mount("secrets", BROKER_SECRETS, true);
    let mounts = vec![config, secrets, mount("data", "/mosquitto/data", false)];
    let mut broker = container(c, mounts, resources("50m", "32Mi", "1", "512Mi"));
    broker.ports = vec![ContainerPort {
        name: "mqtt".into(),
        container_port: MQTT_PORT,
    }];
    let script = health_check_script(BROKER_SECRETS);
    broker.readiness_probe = Some(Probe {
        exec: Some(Exec {
            command: vec!["sh".into(), "-c".into(), script],
        }),
        period_seconds: 5,
        timeout_seconds: Some(5),
        ..Probe::default()
    });
    broker.liveness_probe = Some(Probe {
        tcp_socket: Some(TcpSocket { port: MQTT_PORT }),
        period_seconds: 10,
        failure_threshold: Some(3),
        ..Probe::default()
    });
    broker
}

/// A broker as a StatefulSet (its own data volume) behind a Service.
fn broker_objects(c: &Container, ns: &str) -> Vec<String> {
    let conf = c.role.broker_conf().unwrap_or("central");
    let mut secrets = vec![
        format!("{conf}.passwd"),
        format!("{conf}.acl"),
        "health.password".into(),
    ];
    if let Role::Broker { region: Some(r) } = &c.role {
        secrets.push(format!("bridge-{r}/bridge.conf"));
    }
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let config = volume(
        "config",
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: "fogcharge-brokers".into(),
            items: vec![KeyToPath {
                key: format!("{conf}.conf"),
                path: "mosquitto.conf".into(),
            }],
        }),
    );
    let pod = PodSpec {
        // the image's mosquitto group: reads the secrets
        security_context: PodSecurityContext {
            fs_group: Some(MOSQUITTO_GID),
            ..PodSecurityContext::default()
        },
        termination_grace_period_seconds: Some(15),
        containers: vec![broker_container(c)],
        volumes: vec![config, secret_volume(&secrets)],
        ..PodSpec::default()
    };
    vec![
        service(&c.name, "broker", ns, MQTT_PORT, "mqtt"),
        stateful_set(&c.name, "broker", ns, pod, "1Gi"),
    ]
}

/// device-sim as a Job that starts once central is ready.
fn simulator_job(c: &Container, ns: &str) -> String {
    let wait = Container {
        name: "wait-for-central".into(),
        command: strings(&[
            "fogcharge",
            "probe",
            "--wait-s",
            "600",
            "http://central:8080/readyz",
        ]),
        env: vec![],
        ..c.clone()
    };
    let mut init = container(&wait, vec![], resources("10m", "16Mi", "100m", "64Mi"));
    init.security_context = fogcharge_security();
    let mounts = vec![
        topology_mount(),
        mount("secrets", SERVER_SECRETS, true),
        mount("reports", "/fogcharge/reports", false),
        tmp_mount(),
    ];
    let mut sim = container(c, mounts, resources("250m", "128Mi", "2", "1Gi"));
    sim.security_context = fogcharge_security();
    let pod = PodSpec {
        restart_policy: Some("Never"),
        security_context: pod_security(),
        init_containers: vec![init],
        containers: vec![sim],
        volumes: vec![
            topology_volume(),
            secret_volume(&["users.toml", CLOCK_FILE]),
            volume("reports", VolumeSource::EmptyDir(Empty {})),
            tmp_volume(),
        ],
        ..PodSpec::default()
    };
    job("device-sim", "simulator", ns, 2, pod)
}

/// A fog server or central: a Deployment with probes on its HTTP port, behind a
/// Service; a fog server keeps its reservations journal on a claim of its own.
fn server_objects(c: &Container, ns: &str) -> Vec<String> {
    let port = c.http_port.unwrap_or(8080);
    let is_fog = matches!(c.role, Role::Fog { .. });
    let component = if is_fog { "fog-server" } else { "central" };
    let password = if is_fog {
        format!("{}.password", c.name)
    } else {
        "central.password".into()
    };
    let mut mounts = vec![mount("secrets", SERVER_SECRETS, true), tmp_mount()];
    let mut volumes = vec![secret_volume(&[&password, CLOCK_FILE]), tmp_volume()];
    let mut objects = Vec::new();
    if is_fog {
        let claim = format!("{}-state", c.name);
        mounts.push(mount("state", "/fogcharge/state", false));
        let claim_ref = ClaimRef {
            claim_name: claim.clone(),
        };
        volumes.push(volume(
            "state",
            VolumeSource::PersistentVolumeClaim(claim_ref),
        ));
        objects.push(persistent_volume_claim(&claim, component, ns, "256Mi"));
    }
    let pod = server_pod(c, mounts, volumes, ("http", port));
    objects.push(service(&c.name, component, ns, port, "http"));
    objects.push(deployment(&c.name, component, ns, pod));
    objects
}

/// The pod of a fogcharge server: its container listening on `port`, with readiness
/// and liveness probes on its HTTP port.
fn server_pod(
    c: &Container,
    mounts: Vec<VolumeMount>,
    volumes: Vec<api::Volume>,
    (port_name, port): (&str, u16),
) -> PodSpec {
    let http = c.http_port.unwrap_or(port);
    let mut server = container(c, mounts, resources("100m", "64Mi", "1", "256Mi"));
    server.ports = vec![ContainerPort {
        name: port_name.into(),
        container_port: port,
    }];
    server.readiness_probe = http_probe("/readyz", http, 2);
    server.liveness_probe = http_probe("/healthz", http, 10);
    server.security_context = fogcharge_security();
    PodSpec {
        security_context: pod_security(),
        // SIGTERM: the servers stop within a few seconds
        termination_grace_period_seconds: Some(15),
        containers: vec![server],
        volumes,
        ..PodSpec::default()
    }
}

/// A region's OCPP gateway: a Deployment (one pod: the charge points' sessions and
/// the MQTT client id are the region's) behind a Service on the OCPP port, its
/// region's chargers file from the ConfigMap (a folder mount: an updated ConfigMap
/// reaches the pod, and SIGHUP reloads it).
fn ocpp_objects(c: &Container, region: &str, ns: &str) -> Vec<String> {
    let component = "ocpp-gateway";
    let password = format!("{}.password", c.name);
    let mounts = vec![
        mount("secrets", SERVER_SECRETS, true),
        mount("chargers", CHARGERS_DIR, true),
        tmp_mount(),
    ];
    let chargers = volume(
        "chargers",
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: CHARGERS_CONFIG_MAP.into(),
            items: vec![KeyToPath {
                key: format!("{region}.toml"),
                path: CHARGERS_FILE.into(),
            }],
        }),
    );
    let volumes = vec![secret_volume(&[&password]), chargers, tmp_volume()];
    let pod = server_pod(c, mounts, volumes, ("ocpp", OCPP_PORT));
    vec![
        service(&c.name, component, ns, OCPP_PORT, "ocpp"),
        deployment(&c.name, component, ns, pod),
    ]
}

/// The manifests of `k8s/`: (file name, content). Every file holds Kubernetes objects
/// only, so `kubectl apply -f k8s` applies the folder.
pub fn kubernetes(
    t: &Topology,
    settings: &Settings,
    broker_confs: &RenderOptions,
    chargers: &[(String, String)],
    source: &str,
) -> Result<Vec<(String, String)>, TopologyError> {
    let ns = settings.kubernetes.namespace.as_str();
    let mut files = vec![
        (
            "00-namespace.yaml".to_owned(),
            file(source, &[namespace(ns)]),
        ),
        (
            "10-config.yaml".to_owned(),
            file(source, &config_maps(t, broker_confs, chargers, ns)?),
        ),
    ];
    for c in &containers(t, settings)? {
        let (name, objects) = match &c.role {
            Role::Setup => ("20-setup.yaml".to_owned(), setup_objects(c, ns)),
            Role::Broker { .. } => (format!("30-{}.yaml", c.name), broker_objects(c, ns)),
            Role::Fog { .. } => (format!("40-{}.yaml", c.name), server_objects(c, ns)),
            Role::Ocpp { region } => (format!("45-{}.yaml", c.name), ocpp_objects(c, region, ns)),
            Role::Central => (format!("50-{}.yaml", c.name), server_objects(c, ns)),
            Role::Simulator => ("60-device-sim.yaml".to_owned(), vec![simulator_job(c, ns)]),
        };
        files.push((name, file(source, &objects)));
    }
    Ok(files)
}
