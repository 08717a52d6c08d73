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
//! | `ocpp-{region}` | `fogcharge` | `fogcharge ocpp-gateway`: the region's OCPP 1.6J charge points, from its chargers file (`deploy/chargers/{region}.toml`) |
//! | `central` | `fogcharge` | `fogcharge central` |
//! | `device-sim` | `fogcharge` | `fogcharge sim` against the deployment |
//!
//! Service names are the topology's broker host names, so one topology file serves
//! both (compose service names and Kubernetes Service names resolve alike). Both files
//! are serialised from typed structs, and what the deployments run besides the
//! topology (images, host ports, the scenario) comes from a settings file
//! ([`Settings`], `deploy/deployment.toml` for the checked-in ones).
//!
//! Modules:
//! - `settings`: the settings file.
//! - `containers`: the containers and what each runs ([`containers`]).
//! - `compose`: the compose file ([`compose()`]), one function per kind of service.
//! - `k8s`: the Kubernetes manifests ([`kubernetes`]), one function per kind of
//!   object (Namespace, ConfigMap, Service, StatefulSet, Deployment, Job, …);
//!   `k8s::api` holds the typed objects, `k8s::pod` the parts of their pods.

mod compose;
mod containers;
mod k8s;
mod settings;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::auth::{Credentials, Role as UserRole};
use crate::{Topology, TopologyError};

pub use compose::{BROKER_IMAGE_VAR, CENTRAL_NETWORK, compose, port_var};
pub use containers::{CHARGERS_PATH, Container, OCPP_PORT, Role, containers};
pub use k8s::{CHARGERS_CONFIG_MAP, SECRET_NAME, kubernetes};
pub use settings::{
    ComposeSettings, DEPLOY_SETTINGS, KubernetesSettings, Overload, Scenario, Settings,
};

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
/// `{user}.password` for central, each fog server, each OCPP gateway and the
/// health-check user.
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
        if matches!(
            u.role,
            UserRole::Central | UserRole::Fog { .. } | UserRole::Ocpp { .. } | UserRole::Health
        ) {
            files.insert(format!("{}.password", u.name), format!("{}\n", u.password));
        }
    }
    Ok(files)
}

/// The regions' chargers files (`{region}.toml` in `dir`), as `(region, text)` in the
/// topology's order: every region needs one (an empty file is an empty registry).
/// They are configuration, not secrets: a charger's `password` must be its `$7$` hash,
/// so a plain password is refused here before it reaches a generated ConfigMap (the
/// gateway checks the rest when it loads the file).
pub fn chargers_files(t: &Topology, dir: &Path) -> Result<Vec<(String, String)>, TopologyError> {
    t.regions
        .iter()
        .map(|r| {
            let path = dir.join(format!("{}.toml", r.id));
            let text = std::fs::read_to_string(&path).map_err(|e| TopologyError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            check_chargers(&text)
                .map_err(|why| TopologyError::Parse(format!("{}: {why}", path.display())))?;
            Ok((r.id.clone(), text))
        })
        .collect()
}

/// A chargers file is TOML whose `[[charger]]` passwords, if any, are `$7$` hashes.
fn check_chargers(text: &str) -> Result<(), String> {
    let file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let chargers = file.get("charger").and_then(|c| c.as_array());
    for c in chargers.into_iter().flatten() {
        let id = c.get("id").and_then(|v| v.as_str()).unwrap_or("?");
        match c.get("password") {
            None => {}
            Some(p) if p.as_str().is_some_and(|p| p.starts_with("$7$")) => {}
            Some(_) => {
                return Err(format!(
                    "charger {id:?}: password must be a $7$ hash (`fogcharge hash-password`), not the password itself"
                ));
            }
        }
    }
    Ok(())
}

/// The key of a secret file in a Kubernetes Secret (no `/` allowed there).
pub fn secret_key(path: &str) -> String {
    path.replace('/', "_")
}

/// The broker health check: a login as the health user and one `$SYS` message.
fn health_check_script(secrets: &str) -> String {
    format!(
        "mosquitto_sub -u health -P \"$(cat {secrets}/health.password)\" -t '{}' -C 1 -W 3 >/dev/null",
        crate::auth::HEALTH_TOPIC
    )
}

/// The first line of every generated deployment file.
fn header(source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated from {source} by `cargo run -p topology -- generate`. Do not edit: regenerate."
    );
    out
}

/// YAML of a typed object (serialising these structs cannot fail: string keys only).
fn yaml(v: &impl serde::Serialize) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_default()
}
