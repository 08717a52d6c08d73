//! The parts of pods: containers, mounts, volumes, probes, security contexts and
//! resources.

use super::api::{
    self, Capabilities, ClaimSpec, ConfigMapVolume, Empty, EnvVar, HttpGet, KeyToPath, Metadata,
    PodSecurityContext, PodSpec, PodTemplate, Probe, Quantities, Resources, SeccompProfile,
    SecretVolume, SecurityContext, Storage, StorageRequest, Volume, VolumeMount, VolumeSource,
};
use super::{SECRET_NAME, labels, strings};
use crate::deploy::{Container, secret_key};

/// The user and group of the fogcharge image.
const FOGCHARGE_UID: u32 = 10001;

pub(super) fn pod_template(name: &str, component: &str, spec: PodSpec) -> PodTemplate {
    PodTemplate {
        metadata: Metadata {
            labels: Some(labels(name, component)),
            ..Metadata::default()
        },
        spec,
    }
}

/// The pods of the fogcharge image: not root, the default seccomp profile.
pub(super) fn pod_security() -> PodSecurityContext {
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
pub(super) fn fogcharge_security() -> Option<SecurityContext> {
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

pub(super) fn resources(cpu_req: &str, mem_req: &str, cpu_lim: &str, mem_lim: &str) -> Resources {
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
pub(super) fn container(
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

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        sub_path: None,
        read_only: read_only.then_some(true),
    }
}

pub(super) fn volume(name: &str, source: VolumeSource) -> Volume {
    Volume {
        name: name.to_owned(),
        source,
    }
}

pub(super) fn tmp_mount() -> VolumeMount {
    mount("tmp", "/tmp", false)
}

pub(super) fn tmp_volume() -> Volume {
    volume("tmp", VolumeSource::EmptyDir(Empty {}))
}

pub(super) fn topology_mount() -> VolumeMount {
    mount("topology", "/etc/fogcharge", true)
}

pub(super) fn topology_volume() -> Volume {
    volume(
        "topology",
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: "fogcharge-topology".into(),
            items: vec![],
        }),
    )
}

/// The files of the Secret a pod sees, each at its path in the secrets directory.
pub(super) fn secret_volume(paths: &[&str]) -> Volume {
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

pub(super) fn claim_spec(size: &str) -> ClaimSpec {
    ClaimSpec {
        access_modes: strings(&["ReadWriteOnce"]),
        resources: StorageRequest {
            requests: Storage {
                storage: size.to_owned(),
            },
        },
    }
}

pub(super) fn http_probe(path: &str, port: u16, period: u32) -> Option<Probe> {
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
