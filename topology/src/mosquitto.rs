//! The Mosquitto configs of a topology: one per broker, each regional one with its
//! bridge to central by the contract (see the crate's documentation), rendered for
//! test brokers, local processes or containers ([`RenderOptions`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use protocol::fog::{self, Direction};

use crate::{Broker, MosquittoSettings, Topology, TopologyError, auth, deploy};

/// How configs are rendered for one kind of deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Where each broker keeps its persistence file.
    pub persistence: Persistence,
    /// `log_dest` lines (none: Mosquitto's default).
    pub log_dest: Option<String>,
    /// Named in the header of every file.
    pub source: String,
    pub auth: Auth,
    /// An extra TLS listener on each broker that has a port here.
    pub tls: Option<Tls>,
    /// `user`: whom Mosquitto runs as when started as root (none: its default,
    /// `mosquitto`; ignored when not started as root).
    pub user: Option<String>,
}

/// TLS listeners: for broker `b` (`central` or a region id) a listener on `ports[b]`
/// with `{dir}/ca.crt`, `{dir}/{b}.crt` and `{dir}/{b}.key` (PEM), as the broker sees
/// the directory. The plain listener stays (for loopback or a private network).
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub dir: PathBuf,
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// Where persistence files go.
#[derive(Debug, Clone, PartialEq)]
pub enum Persistence {
    /// This exact directory (one broker per directory, e.g. in tests).
    Dir(PathBuf),
    /// `{base}/{broker name}/` for each broker.
    PerBroker(PathBuf),
}

/// How clients authenticate.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// No credentials (loopback and private networks only).
    Anonymous,
    /// Passwords and ACLs ([`auth`]): anonymous access off.
    Files {
        /// `password_file`/`acl_file` of each broker: `{dir}/{broker}.passwd` and
        /// `{dir}/{broker}.acl`, as the broker sees the directory.
        dir: PathBuf,
        /// Username and password of each region's bridge at the central broker.
        bridges: Vec<(String, String, String)>,
    },
    /// Passwords and ACLs made at deploy time (`fogcharge setup`, see [`deploy`]):
    /// `{dir}/{broker}.passwd`, `{dir}/{broker}.acl`, and each region's bridge section,
    /// which holds the bridge's password, in `{dir}/bridge-{region}/bridge.conf`
    /// (`include_dir`). Anonymous access off. The config itself holds no secret.
    Secrets { dir: PathBuf },
}

impl Auth {
    /// Passwords and ACLs in `dir`, bridges logging in with the `bridge-{region}`
    /// users of `credentials`.
    pub fn files(dir: &Path, credentials: &auth::Credentials) -> Self {
        let bridges = credentials
            .users
            .iter()
            .filter_map(|u| match &u.role {
                auth::Role::Bridge { region } => {
                    Some((region.clone(), u.name.clone(), u.password.clone()))
                }
                _ => None,
            })
            .collect();
        Auth::Files {
            dir: dir.to_path_buf(),
            bridges,
        }
    }
}

impl RenderOptions {
    /// For a test broker keeping its files in `dir`.
    pub fn test(dir: &Path) -> Self {
        Self {
            persistence: Persistence::Dir(dir.to_path_buf()),
            log_dest: None,
            source: "a test topology".into(),
            auth: Auth::Anonymous,
            tls: None,
            user: None,
        }
    }

    /// For brokers started by hand on this machine (`topology generate --state-dir`):
    /// state under `base/{broker}/`, logs to stdout, anonymous clients (loopback and
    /// private networks only), and `user root`: started as root, Mosquitto would
    /// otherwise drop to user `mosquitto`, which cannot write a state directory root
    /// made (ignored when not started as root).
    pub fn local(base: &Path) -> Self {
        Self {
            persistence: Persistence::PerBroker(base.to_path_buf()),
            log_dest: Some("stdout".into()),
            source: "the local topology".into(),
            auth: Auth::Anonymous,
            tls: None,
            user: Some("root".into()),
        }
    }

    /// The directories the brokers of `t` keep their state in.
    pub fn state_dirs(&self, t: &Topology) -> Vec<PathBuf> {
        let brokers = std::iter::once("central").chain(t.regions.iter().map(|r| r.id.as_str()));
        brokers
            .map(|b| PathBuf::from(self.persistence_dir(b)))
            .collect()
    }

    /// For the official `eclipse-mosquitto` image: one broker per container with its
    /// data volume at `/mosquitto/data/`, logs to stdout.
    pub fn container(source: &str) -> Self {
        Self {
            persistence: Persistence::Dir("/mosquitto/data".into()),
            log_dest: Some("stdout".into()),
            source: source.into(),
            auth: Auth::Secrets {
                dir: deploy::BROKER_SECRETS.into(),
            },
            tls: None,
            user: None,
        }
    }

    fn persistence_dir(&self, broker: &str) -> String {
        let dir = match &self.persistence {
            Persistence::Dir(d) => d.clone(),
            Persistence::PerBroker(base) => base.join(broker),
        };
        // Mosquitto appends the file name: the location must end with a slash.
        format!("{}/", dir.display().to_string().trim_end_matches('/'))
    }
}

fn common(
    out: &mut String,
    name: &str,
    b: &Broker,
    settings: &MosquittoSettings,
    opts: &RenderOptions,
) {
    let _ = writeln!(
        out,
        "# Mosquitto config for {name}, generated from {} by `cargo run -p topology -- generate`.\n# Do not edit: regenerate.",
        opts.source
    );
    if let Some(user) = &opts.user {
        let _ = writeln!(
            out,
            "# whom to run as when started as root (ignored otherwise)\nuser {user}"
        );
    }
    let _ = writeln!(out, "listener {} {}", b.port, b.listen);
    if let Some(tls) = &opts.tls {
        if let Some(port) = tls.ports.get(name) {
            let _ = writeln!(out, "listener {port} {}", b.listen);
            let _ = writeln!(out, "cafile {}", tls.dir.join("ca.crt").display());
            let _ = writeln!(
                out,
                "certfile {}",
                tls.dir.join(format!("{name}.crt")).display()
            );
            let _ = writeln!(
                out,
                "keyfile {}",
                tls.dir.join(format!("{name}.key")).display()
            );
            let _ = writeln!(out, "tls_version tlsv1.2");
        }
    }
    match &opts.auth {
        Auth::Anonymous => {
            let _ = writeln!(out, "allow_anonymous true");
        }
        Auth::Files { dir, .. } | Auth::Secrets { dir } => {
            let _ = writeln!(out, "allow_anonymous false");
            let _ = writeln!(
                out,
                "password_file {}",
                dir.join(format!("{name}.passwd")).display()
            );
            let _ = writeln!(
                out,
                "acl_file {}",
                dir.join(format!("{name}.acl")).display()
            );
        }
    }
    let _ = writeln!(
        out,
        "# without it a QoS 1 round trip waits for Nagle (~44 ms instead of ~0.25 ms)"
    );
    let _ = writeln!(out, "set_tcp_nodelay true");
    let _ = writeln!(
        out,
        "# the default (1000) silently drops QoS 1 messages queued for one busy client"
    );
    let _ = writeln!(out, "max_queued_messages {}", settings.max_queued_messages);
    let _ = writeln!(out, "persistence true");
    let _ = writeln!(out, "persistence_location {}", opts.persistence_dir(name));
    let _ = writeln!(out, "autosave_interval {}", settings.autosave_interval);
    if let Some(dest) = &opts.log_dest {
        let _ = writeln!(out, "log_dest {dest}");
    }
}

/// The central broker's config.
pub fn central_broker_conf(t: &Topology, opts: &RenderOptions) -> String {
    let mut out = String::new();
    common(&mut out, "central", &t.central, &t.mosquitto, opts);
    out
}

/// A regional broker's config, with its bridge to central by the contract.
pub fn region_broker_conf(
    t: &Topology,
    region: &str,
    opts: &RenderOptions,
) -> Result<String, TopologyError> {
    let r = t.region(region)?;
    let mut out = String::new();
    common(&mut out, &r.id, &r.broker, &t.mosquitto, opts);
    let _ = writeln!(out);
    match &opts.auth {
        Auth::Secrets { dir } => {
            let _ = writeln!(
                out,
                "# The bridge to central (docs/fog-central.md) logs in with a password, so its\n# section is made at deploy time by `fogcharge setup` (topology::bridge_conf)."
            );
            let _ = writeln!(
                out,
                "include_dir {}",
                dir.join(format!("bridge-{}", r.id)).display()
            );
        }
        Auth::Files { bridges, .. } => {
            let login = bridges
                .iter()
                .find(|(region, _, _)| region == &r.id)
                .map(|(_, user, password)| (user.as_str(), password.as_str()));
            out.push_str(&bridge_conf(t, &r.id, login)?);
        }
        Auth::Anonymous => out.push_str(&bridge_conf(t, &r.id, None)?),
    }
    Ok(out)
}

/// The bridge section of region `region`'s broker: to central by the fixed contract,
/// logging in as `login` (user, password) when given.
pub fn bridge_conf(
    t: &Topology,
    region: &str,
    login: Option<(&str, &str)>,
) -> Result<String, TopologyError> {
    let r = t.region(region)?;
    let id = &r.id;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# bridge to central by the fixed contract (docs/fog-central.md)"
    );
    let _ = writeln!(out, "connection {}", r.bridge_name());
    let _ = writeln!(out, "address {}:{}", t.central.host, t.central.port);
    let _ = writeln!(out, "remote_clientid {id}-bridge");
    if let Some((user, password)) = login {
        let _ = writeln!(out, "remote_username {user}");
        let _ = writeln!(out, "remote_password {password}");
    }
    let _ = writeln!(
        out,
        "# an mqttv50 bridge on 2.0.x loses its session on disconnect"
    );
    let _ = writeln!(out, "bridge_protocol_version mqttv311");
    let _ = writeln!(out, "cleansession false");
    let _ = writeln!(out, "local_cleansession false");
    let _ = writeln!(
        out,
        "# a single value keeps the default 5-30 s random back-off on 2.0.11"
    );
    let _ = writeln!(out, "restart_timeout 1 2");
    let _ = writeln!(
        out,
        "# a network cut that keeps the TCP connection is noticed by this keepalive, not TCP's minutes"
    );
    let _ = writeln!(out, "keepalive_interval 5");
    let (local, remote) = fog::bridge_prefixes(id, Direction::Up);
    let _ = writeln!(out, "topic # out 1 {local} {remote}");
    let _ = writeln!(
        out,
        "# QoS 0 down: a QoS 1 PUBACK on this (Nagle) socket holds the next message up to 40 ms"
    );
    let (local, remote) = fog::bridge_prefixes(id, Direction::Down);
    let _ = writeln!(out, "topic # in 0 {local} {remote}");
    Ok(out)
}

/// Every broker config of a topology: `central.conf` and `{region}.conf`.
pub fn generate_all(t: &Topology, opts: &RenderOptions) -> Vec<(String, String)> {
    let mut files = vec![("central.conf".to_owned(), central_broker_conf(t, opts))];
    for r in &t.regions {
        if let Ok(conf) = region_broker_conf(t, &r.id, opts) {
            files.push((format!("{}.conf", r.id), conf));
        }
    }
    files
}
