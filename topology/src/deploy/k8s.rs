//! The manifests of `k8s/`, one function per kind of object, from the typed objects of
//! [`api`].

mod api;

use api::{
    Binding, Capabilities, ClaimRef, ClaimSpec, ClaimTemplate, ConfigMapData, ConfigMapVolume,
    ContainerPort, DeploymentSpec, Empty, EnvVar, Exec, HttpGet, JobSpec, KeyToPath, LabelSelector,
    Labels, Metadata, Object, PodSecurityContext, PodSpec, PodTemplate, PolicyRule, PolicyRules,
    Probe, Quantities, Resources, RoleRef, SeccompProfile, SecretVolume, SecurityContext, Selector,
    ServicePort, ServiceSpec, Spec, StatefulSetSpec, Storage, StorageRequest, Strategy, Subject,
    TcpSocket, Volume, VolumeMount, VolumeSource,
};
use serde::Serialize;

use super::containers::MQTT_PORT;
use super::{
    BROKER_CONF, BROKER_SECRETS, CLOCK_FILE, Container, Role, SERVER_SECRETS, Settings, containers,
    header, health_check_script, secret_key, yaml,
};
use crate::{RenderOptions, Topology, TopologyError, central_broker_conf, region_broker_conf};

/// The Secret `fogcharge setup --kubernetes-secret` creates.
pub const SECRET_NAME: &str = "fogcharge-secrets";

/// The user and group of the fogcharge image.
const FOGCHARGE_UID: u32 = 10001;
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

fn pod_template(name: &str, component: &str, spec: PodSpec) -> PodTemplate {
    PodTemplate {
        metadata: Metadata {
            labels: Some(labels(name, component)),
            ..Metadata::default()
        },
        spec,
    }
}

/// The pods of the fogcharge image: not root, the default seccomp profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(FOGCHARGE_UID),
        run_as_group: Some(FOGCHARGE_UID),
        fs_group: Some(FOGCHARGE_UID),
        seccomp_profile: Some(SeccompProfile {
            kind: "RuntimeDefault",
        }),
    }
}

/// A fogcharge container: read-only root, no privileges.
fn fogcharge_security() -> Option<SecurityContext> {
    Some(SecurityContext {
        run_as_non_root: true,
        run_as_user: FOGCHARGE_UID,
        run_as_group: FOGCHARGE_UID,
        allow_privilege_escalation: false,
        read_only_root_filesystem: true,
        capabilities: Capabilities {
            drop: strings(&["ALL"]),
        },
    })
}

fn resources(cpu_req: &str, mem_req: &str, cpu_lim: &str, mem_lim: &str) -> Resources {
    let q = |cpu: &str, memory: &str| Quantities {
        cpu: cpu.to_owned(),
        memory: memory.to_owned(),
    };
    Resources {
        requests: q(cpu_req, mem_req),
        limits: q(cpu_lim, mem_lim),
    }
}

/// The container of `c`: its image, command and environment, with these mounts.
fn container(
    c: &Container,
    volume_mounts: Vec<VolumeMount>,
    resources: Resources,
) -> api::Container {
    api::Container {
        name: c.name.clone(),
        image: c.image.clone(),
        image_pull_policy: "IfNotPresent",
        command: c.command.clone(),
        env: c
            .env
            .iter()
            .map(|(name, value)| EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        volume_mounts,
        ports: vec![],
        readiness_probe: None,
        liveness_probe: None,
        security_context: None,
        resources,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        sub_path: None,
        read_only: read_only.then_some(true),
    }
}

fn volume(name: &str, source: VolumeSource) -> Volume {
    Volume {
        name: name.to_owned(),
        source,
    }
}

fn tmp_mount() -> VolumeMount {
    mount("tmp", "/tmp", false)
}

fn tmp_volume() -> Volume {
    volume("tmp", VolumeSource::EmptyDir(Empty {}))
}

fn topology_mount() -> VolumeMount {
    mount("topology", "/etc/fogcharge", true)
}

fn topology_volume() -> Volume {
    volume(
        "topology",
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: "fogcharge-topology".into(),
            items: vec![],
        }),
    )
}

/// The files of the Secret a pod sees, each at its path in the secrets directory.
fn secret_volume(paths: &[&str]) -> Volume {
    let items = paths
        .iter()
        .map(|&path| KeyToPath {
            key: secret_key(path),
            path: path.to_owned(),
        })
        .collect();
    volume(
        "secrets",
        VolumeSource::Secret(SecretVolume {
            secret_name: SECRET_NAME.into(),
            // 0440: the owner and the pod's fsGroup read it.
            default_mode: 0o440,
            items,
        }),
    )
}

fn claim_spec(size: &str) -> ClaimSpec {
    ClaimSpec {
        access_modes: strings(&["ReadWriteOnce"]),
        resources: StorageRequest {
            requests: Storage {
                storage: size.to_owned(),
            },
        },
    }
}

fn http_probe(path: &str, port: u16, period: u32) -> Option<Probe> {
    Some(Probe {
        http_get: Some(HttpGet {
            path: path.to_owned(),
            port,
        }),
        period_seconds: period,
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    })
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
    object(
        "v1",
        "ConfigMap",
        metadata(name, component, ns),
        ConfigMapData { data },
    )
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
    object(
        "v1",
        "PersistentVolumeClaim",
        metadata(name, component, ns),
        Spec { spec },
    )
}

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

/// The broker configs and the topology, as ConfigMaps.
fn config_maps(t: &Topology, opts: &RenderOptions, ns: &str) -> Result<Vec<String>, TopologyError> {
    let mut confs = vec![("central.conf".to_owned(), central_broker_conf(t, opts))];
    for r in &t.regions {
        confs.push((
            format!("{}.conf", r.id),
            region_broker_conf(t, &r.id, opts)?,
        ));
    }
    let topology = vec![("topology.toml".to_owned(), crate::to_toml(t))];
    Ok(vec![
        config_map("fogcharge-brokers", "broker", ns, confs),
        config_map("fogcharge-topology", "config", ns, topology),
    ])
}

/// setup as a Job, with a ServiceAccount allowed to create the Secret and nothing else.
fn setup_objects(c: &Container, ns: &str) -> Vec<String> {
    let sa = "fogcharge-setup";
    let rules = PolicyRules {
        rules: vec![PolicyRule {
            api_groups: strings(&[""]),
            resources: strings(&["secrets"]),
            verbs: strings(&["get", "create"]),
        }],
    };
    let binding = Binding {
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io",
            kind: "Role",
            name: sa.into(),
        },
        subjects: vec![Subject {
            kind: "ServiceAccount",
            name: sa.into(),
            namespace: ns.into(),
        }],
    };
    let mut setup = c.clone();
    setup
        .command
        .extend(strings(&["--kubernetes-secret", SECRET_NAME]));
    let mut main = container(
        &setup,
        vec![topology_mount(), tmp_mount()],
        resources("50m", "32Mi", "500m", "128Mi"),
    );
    main.security_context = fogcharge_security();
    let pod = PodSpec {
        service_account_name: Some(sa.into()),
        restart_policy: Some("OnFailure"),
        security_context: pod_security(),
        containers: vec![main],
        volumes: vec![topology_volume(), tmp_volume()],
        ..PodSpec::default()
    };
    let rbac = "rbac.authorization.k8s.io/v1";
    vec![
        object("v1", "ServiceAccount", metadata(sa, "setup", ns), Empty {}),
        object(rbac, "Role", metadata(sa, "setup", ns), rules),
        object(rbac, "RoleBinding", metadata(sa, "setup", ns), binding),
        job(sa, "setup", ns, 6, pod),
    ]
}

/// The Mosquitto container: its config from the ConfigMap, its secrets, its data.
fn broker_container(c: &Container) -> api::Container {
    let config = VolumeMount {
        sub_path: Some("mosquitto.conf".into()),
        ..mount("config", BROKER_CONF, true)
    };
    let mounts = vec![
        config,
        mount("secrets", BROKER_SECRETS, true),
        mount("data", "/mosquitto/data", false),
    ];
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

/// A broker as a StatefulSet of one (its own data volume) behind a Service.
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
        security_context: PodSecurityContext {
            fs_group: Some(MOSQUITTO_GID),
            ..PodSecurityContext::default()
        },
        termination_grace_period_seconds: Some(15),
        containers: vec![broker_container(c)],
        volumes: vec![
            config,
            secret_volume(&secrets.iter().map(String::as_str).collect::<Vec<_>>()),
        ],
        ..PodSpec::default()
    };
    let spec = StatefulSetSpec {
        service_name: c.name.clone(),
        replicas: 1,
        selector: LabelSelector {
            match_labels: selector(&c.name),
        },
        template: pod_template(&c.name, "broker", pod),
        volume_claim_templates: vec![ClaimTemplate {
            metadata: Metadata {
                name: Some("data".into()),
                ..Metadata::default()
            },
            spec: claim_spec("1Gi"),
        }],
    };
    vec![
        service(&c.name, "broker", ns, MQTT_PORT, "mqtt"),
        object(
            "apps/v1",
            "StatefulSet",
            metadata(&c.name, "broker", ns),
            Spec { spec },
        ),
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

/// A fog server or central: a Deployment of one with probes on its HTTP port, behind a
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
        volumes.push(volume(
            "state",
            VolumeSource::PersistentVolumeClaim(ClaimRef {
                claim_name: claim.clone(),
            }),
        ));
        objects.push(persistent_volume_claim(&claim, component, ns, "256Mi"));
    }
    let mut server = container(c, mounts, resources("100m", "64Mi", "1", "256Mi"));
    server.ports = vec![ContainerPort {
        name: "http".into(),
        container_port: port,
    }];
    server.readiness_probe = http_probe("/readyz", port, 2);
    server.liveness_probe = http_probe("/healthz", port, 10);
    server.security_context = fogcharge_security();
    let pod = PodSpec {
        security_context: pod_security(),
        // SIGTERM: the servers stop within a few seconds
        termination_grace_period_seconds: Some(15),
        containers: vec![server],
        volumes,
        ..PodSpec::default()
    };
    let spec = DeploymentSpec {
        replicas: 1,
        // one writer of the region's reservations journal at a time
        strategy: Strategy { kind: "Recreate" },
        selector: LabelSelector {
            match_labels: selector(&c.name),
        },
        template: pod_template(&c.name, component, pod),
    };
    objects.push(service(&c.name, component, ns, port, "http"));
    objects.push(object(
        "apps/v1",
        "Deployment",
        metadata(&c.name, component, ns),
        Spec { spec },
    ));
    objects
}

/// The manifests of `k8s/`: (file name, content). Every file holds Kubernetes objects
/// only, so `kubectl apply -f k8s` applies the folder.
pub fn kubernetes(
    t: &Topology,
    settings: &Settings,
    broker_confs: &RenderOptions,
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
            file(source, &config_maps(t, broker_confs, ns)?),
        ),
    ];
    for c in &containers(t, settings)? {
        let (name, objects) = match &c.role {
            Role::Setup => ("20-setup.yaml".to_owned(), setup_objects(c, ns)),
            Role::Broker { .. } => (format!("30-{}.yaml", c.name), broker_objects(c, ns)),
            Role::Fog { .. } => (format!("40-{}.yaml", c.name), server_objects(c, ns)),
            Role::Central => (format!("50-{}.yaml", c.name), server_objects(c, ns)),
            Role::Simulator => ("60-device-sim.yaml".to_owned(), vec![simulator_job(c, ns)]),
        };
        files.push((name, file(source, &objects)));
    }
    Ok(files)
}
