//! Runs a fogcharge topology on this machine: a central Mosquitto and one per region,
//! bridged with the configs the topology generator makes, a fog server per region and
//! central, all as child processes.
//!
//! - [`delay`]: [`delay::DelayProxy`], a TCP proxy that adds a network's latency,
//!   jitter and bandwidth cap between clients and a broker (per direction, never
//!   reordering a stream).
//! - [`mosquitto`]: one broker process with its own temporary directory (config, log,
//!   persistence), started when it answers MQTT, stopped or killed on drop, with a
//!   watchdog so that no broker outlives its owner.
//! - [`process`]: [`process::Supervised`], a child process that never outlives its
//!   owner (killed on drop, and by a watchdog if the owner dies).
//! - [`LocalBrokers`]: every broker of a [`Topology`] on `127.0.0.1`.
//! - [`LocalServers`]: the fog servers and central on those brokers, each its own
//!   process (so that no MQTT client library instance is shared), sharing one clock
//!   (`--clock-speed`/`--clock-epoch-ms`), stopped gracefully with SIGTERM; with
//!   [`ServerSettings::ocpp`], an OCPP 1.6J gateway per region too, its chargers file
//!   written from [`OcppCharger`]s.
//!
//! `device-sim` uses it for its one-command local run (the servers as processes of the
//! `fogcharge` binary); the tests use it through the test kit.

#![forbid(unsafe_code)]

pub mod delay;
pub mod mosquitto;
pub mod process;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use protocol::api::RegionView;
use serde::de::DeserializeOwned;
use topology::auth::Credentials;
use topology::{Auth, RenderOptions, Topology};

use crate::process::Supervised;

pub use mosquitto::{Mosquitto, MosquittoConfig, find_mosquitto, free_port};

/// Every broker of a topology, running on this machine.
pub struct LocalBrokers {
    /// The topology with the ports actually used.
    pub topology: Topology,
    pub central: Mosquitto,
    pub regions: BTreeMap<String, Mosquitto>,
    /// Between the regional brokers' bridges and the central broker, when their path
    /// has a delay ([`start_with_bridge_delay`](Self::start_with_bridge_delay)).
    pub bridge_proxy: Option<delay::DelayProxy>,
    /// Password and ACL files, when authentication is on.
    _auth_dir: Option<tempfile::TempDir>,
}

impl LocalBrokers {
    /// Starts the central broker and the regional brokers (bridged to it) of `topology`
    /// on `127.0.0.1`. A port that is 0 or already taken is replaced by a free one (the
    /// returned topology says which); every broker answers MQTT when this returns.
    pub fn start(topology: &Topology) -> Result<Self> {
        Self::start_with(topology, None)
    }

    /// [`start`](Self::start), with authentication and ACLs for `credentials` when
    /// given (anonymous clients refused; see `docs/security.md`).
    pub fn start_with(topology: &Topology, credentials: Option<&Credentials>) -> Result<Self> {
        Self::start_with_bridge_delay(topology, credentials, delay::Delay::default())
    }

    /// [`start_with`](Self::start_with), the regional brokers' bridges reaching the
    /// central broker through a [`delay::DelayProxy`] with `bridge` (central far
    /// away, in the cloud); no proxy when `bridge` adds nothing.
    pub fn start_with_bridge_delay(
        topology: &Topology,
        credentials: Option<&Credentials>,
        bridge: delay::Delay,
    ) -> Result<Self> {
        find_mosquitto()?;
        let mut t = topology.clone();
        t.central.host = "127.0.0.1".into();
        t.central.listen = "127.0.0.1".into();
        t.central.port = usable_port(t.central.port)?;
        for r in &mut t.regions {
            r.broker.host = "127.0.0.1".into();
            r.broker.listen = "127.0.0.1".into();
            r.broker.port = usable_port(r.broker.port)?;
        }
        t.check()?;
        let (auth, auth_dir) = match credentials {
            Some(creds) => {
                let dir = tempfile::Builder::new()
                    .prefix("fogcharge-auth-")
                    .tempdir()
                    .context("creating the directory of the password files")?;
                std::fs::write(dir.path().join("central.acl"), creds.acl(None))?;
                creds.write_password_file(None, &dir.path().join("central.passwd"))?;
                for r in &t.regions {
                    std::fs::write(
                        dir.path().join(format!("{}.acl", r.id)),
                        creds.acl(Some(&r.id)),
                    )?;
                    creds.write_password_file(
                        Some(&r.id),
                        &dir.path().join(format!("{}.passwd", r.id)),
                    )?;
                }
                (Auth::files(dir.path(), creds), Some(dir))
            }
            None => (Auth::Anonymous, None),
        };
        let options = move |dir: &Path| RenderOptions {
            auth: auth.clone(),
            ..RenderOptions::test(dir)
        };
        let central_topology = t.clone();
        let central_options = options.clone();
        let central = Mosquitto::start(
            MosquittoConfig::from_template(move |_, dir| {
                topology::central_broker_conf(&central_topology, &central_options(dir))
            })
            .with_port(t.central.port),
        )
        .context("starting the central broker")?;
        // What the regional brokers' bridges dial: central, or a delay proxy before it.
        let mut bridged = t.clone();
        let bridge_proxy = if bridge.is_zero() {
            None
        } else {
            let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, central.port()));
            let proxy = delay::DelayProxy::start(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                upstream,
                bridge,
                u64::from(central.port()),
            )
            .context("starting the delay proxy before the central broker")?;
            bridged.central.port = proxy.addr().port();
            Some(proxy)
        };
        let mut regions = BTreeMap::new();
        for region in &t.regions {
            let (rt, id, region_options) = (bridged.clone(), region.id.clone(), options.clone());
            let broker = Mosquitto::start(
                MosquittoConfig::from_template(move |_, dir| {
                    topology::region_broker_conf(&rt, &id, &region_options(dir))
                        .unwrap_or_else(|e| format!("# {e}"))
                })
                .with_port(region.broker.port),
            )
            .with_context(|| format!("starting the broker of region {}", region.id))?;
            regions.insert(region.id.clone(), broker);
        }
        Ok(Self {
            topology: t,
            central,
            regions,
            bridge_proxy,
            _auth_dir: auth_dir,
        })
    }

    /// `tcp://127.0.0.1:PORT` of a region's broker.
    pub fn region_url(&self, region: &str) -> Option<String> {
        self.regions.get(region).map(Mosquitto::url)
    }
}

/// `port` if it can be bound on 127.0.0.1 right now, else a free one.
fn usable_port(port: u16) -> Result<u16> {
    if port != 0 && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
        return Ok(port);
    }
    free_port()
}

/// How [`LocalServers`] run.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The command that runs a fog server, before its flags (e.g. `[fog-server]`, or
    /// `[fogcharge, fog-server]`).
    pub fog_command: Vec<OsString>,
    /// The command that runs central, before its flags.
    pub central_command: Vec<OsString>,
    /// Clock speed shared by every server (1 = real time).
    pub clock_speed: f64,
    /// Wall instant from which the shared clock runs `clock_speed` times faster.
    pub clock_epoch_ms: u64,
    /// Central's HTTP address; a taken port is replaced by a free one.
    pub central_http: SocketAddr,
    /// More flags for every fog server (e.g. `--max-wait-s 900`).
    pub fog_args: Vec<String>,
    /// `RUST_LOG` of the servers (their logs go to files, quoted when one fails).
    pub log_filter: String,
    /// The servers log in as `fog-{region}`, `ocpp-{region}` and `central` of these
    /// (passwords passed in the environment, not on the command line).
    pub credentials: Option<Credentials>,
    /// The command that runs an OCPP gateway, before its flags.
    pub ocpp_command: Vec<OsString>,
    /// An OCPP 1.6J gateway per region, with these chargers; none: no gateway.
    pub ocpp: Option<OcppSettings>,
}

/// The OCPP gateways of a local run: one per region, on a free loopback port.
#[derive(Debug, Clone, Default)]
pub struct OcppSettings {
    /// Each region's charge points (its chargers file); a region not named gets an
    /// empty file.
    pub chargers: BTreeMap<String, Vec<OcppCharger>>,
    /// `--heartbeat-s`: the heartbeat interval given to the charge points, real seconds.
    pub heartbeat_s: u32,
    /// `--call-timeout-ms`: how long a call to a charge point may go unanswered.
    pub call_timeout_ms: u64,
}

/// A charge point of a gateway's chargers file (profile 0: no password).
#[derive(Debug, Clone, PartialEq)]
pub struct OcppCharger {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    pub connectors: u32,
    pub power_kw: f64,
}

/// The chargers file (TOML, `[[charger]]` entries) of `chargers`.
pub fn chargers_file(chargers: &[OcppCharger]) -> String {
    let mut s = String::new();
    for c in chargers {
        // `{:?}`: a TOML string for an id, a float with its decimal point.
        s.push_str(&format!(
            "[[charger]]\nid = {:?}\nlat = {:?}\nlon = {:?}\nconnectors = {}\npower_kw = {:?}\n\n",
            c.id, c.lat, c.lon, c.connectors, c.power_kw
        ));
    }
    s
}

impl ServerSettings {
    /// Servers run by `exe fog-server …` and `exe central …` (a binary that has both
    /// commands, as `fogcharge` does).
    pub fn embedded(exe: &Path) -> Self {
        Self {
            fog_command: vec![exe.into(), "fog-server".into()],
            central_command: vec![exe.into(), "central".into()],
            clock_speed: 1.0,
            clock_epoch_ms: 0,
            central_http: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            fog_args: Vec::new(),
            log_filter: "warn".into(),
            credentials: None,
            ocpp_command: vec![exe.into(), "ocpp-gateway".into()],
            ocpp: None,
        }
    }
}

struct ServerProcess {
    name: String,
    http: SocketAddr,
    process: Supervised,
}

/// A region's OCPP gateway of [`LocalServers`].
struct GatewayProcess {
    server: ServerProcess,
    /// Where its charge points connect: `ws://{listen}/ocpp/{id}`.
    listen: SocketAddr,
}

/// The fog servers and central of a topology, each in its own process.
pub struct LocalServers {
    fogs: Vec<ServerProcess>,
    gateways: Vec<GatewayProcess>,
    central: ServerProcess,
    logs: tempfile::TempDir,
    http: reqwest::Client,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalServers {
    /// Starts central and a fog server per region of `topology` (whose brokers must be
    /// running), and waits until every fog is ready and central holds a fresh aggregate
    /// of every region.
    pub async fn start(topology: &Topology, settings: &ServerSettings) -> Result<Self> {
        let logs = tempfile::Builder::new()
            .prefix("fogcharge-servers-")
            .tempdir()
            .context("creating the servers' log directory")?;
        let central_http = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            usable_port(settings.central_http.port())?,
        ));
        let clock = [
            "--clock-speed".to_owned(),
            settings.clock_speed.to_string(),
            "--clock-epoch-ms".to_owned(),
            settings.clock_epoch_ms.to_string(),
        ];
        let mut args: Vec<String> = vec![
            "--broker".into(),
            topology.central.url(),
            "--http".into(),
            central_http.to_string(),
        ];
        args.extend(clock.iter().cloned());
        let login = |user: &str, prefix: &str| -> Vec<(String, String)> {
            settings
                .credentials
                .as_ref()
                .and_then(|c| c.password(user))
                .map(|pw| {
                    vec![
                        (format!("{prefix}_MQTT_USERNAME"), user.to_owned()),
                        (format!("{prefix}_MQTT_PASSWORD"), pw.to_owned()),
                    ]
                })
                .unwrap_or_default()
        };
        let central = spawn_server(
            "central",
            &settings.central_command,
            &args,
            &login("central", "CENTRAL"),
            central_http,
            logs.path(),
            &settings.log_filter,
        )?;
        let mut servers = Self {
            fogs: Vec::new(),
            gateways: Vec::new(),
            central,
            logs,
            http: reqwest::Client::new(),
        };
        for region in &topology.regions {
            let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let mut args: Vec<String> = vec![
                "--region".into(),
                region.id.clone(),
                "--broker".into(),
                region.broker.url(),
                "--http".into(),
                http.to_string(),
            ];
            if let Some(b) = region.bounds {
                args.push(format!("--bounds={}", b.to_arg()));
            }
            // Reservations journal: in the run's own directory, not the caller's.
            args.push("--state-dir".into());
            args.push(servers.logs.path().join("state").display().to_string());
            args.extend(clock.iter().cloned());
            args.extend(settings.fog_args.iter().cloned());
            let name = format!("fog-{}", region.id);
            let fog = spawn_server(
                &name,
                &settings.fog_command,
                &args,
                &login(&name, "FOG"),
                http,
                servers.logs.path(),
                &settings.log_filter,
            )?;
            servers.fogs.push(fog);
        }
        if let Some(ocpp) = &settings.ocpp {
            for region in &topology.regions {
                let chargers = servers
                    .logs
                    .path()
                    .join(format!("chargers-{}.toml", region.id));
                let list = ocpp.chargers.get(&region.id).map_or(&[][..], Vec::as_slice);
                std::fs::write(&chargers, chargers_file(list))
                    .with_context(|| format!("writing {}", chargers.display()))?;
                let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                let args: Vec<String> = vec![
                    "--region".into(),
                    region.id.clone(),
                    "--broker".into(),
                    region.broker.url(),
                    "--listen".into(),
                    listen.to_string(),
                    "--http".into(),
                    http.to_string(),
                    "--chargers".into(),
                    chargers.display().to_string(),
                    "--heartbeat-s".into(),
                    ocpp.heartbeat_s.to_string(),
                    "--call-timeout-ms".into(),
                    ocpp.call_timeout_ms.to_string(),
                ];
                let name = format!("ocpp-{}", region.id);
                let server = spawn_server(
                    &name,
                    &settings.ocpp_command,
                    &args,
                    &login(&name, "OCPP"),
                    http,
                    servers.logs.path(),
                    &settings.log_filter,
                )?;
                servers.gateways.push(GatewayProcess { server, listen });
            }
        }
        servers.wait_ready(START_TIMEOUT).await?;
        Ok(servers)
    }

    /// Central's HTTP address.
    pub fn central_http(&self) -> SocketAddr {
        self.central.http
    }

    /// Each region's OCPP gateway: `(region, where charge points connect, its HTTP
    /// address with /metrics)`; empty without [`ServerSettings::ocpp`].
    pub fn ocpp_gateways(&self) -> impl Iterator<Item = (&str, SocketAddr, SocketAddr)> {
        self.gateways.iter().map(|g| {
            (
                g.server.name.trim_start_matches("ocpp-"),
                g.listen,
                g.server.http,
            )
        })
    }

    /// Each region's fog server HTTP address.
    pub fn fog_http(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.fogs
            .iter()
            .map(|f| (f.name.trim_start_matches("fog-"), f.http))
    }

    async fn get_json<T: DeserializeOwned>(&self, addr: SocketAddr, path: &str) -> Option<T> {
        let response = self
            .http
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Central's view of every region, by id (none while central does not answer).
    pub async fn regions(&self) -> BTreeMap<String, RegionView> {
        let list: Vec<RegionView> = self
            .get_json(self.central.http, "/api/regions")
            .await
            .unwrap_or_default();
        list.into_iter().map(|r| (r.id.clone(), r)).collect()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for p in std::iter::once(&mut self.central)
                .chain(self.fogs.iter_mut())
                .chain(self.gateways.iter_mut().map(|g| &mut g.server))
            {
                if let Some(status) = p.process.try_wait()? {
                    bail!(
                        "{} exited at start-up ({status}); its log:\n{}",
                        p.name,
                        log_tail(&self.logs.path().join(format!("{}.log", p.name)))
                    );
                }
            }
            let mut fogs_ready = true;
            // A gateway is ready once connected to its broker.
            for f in self
                .fogs
                .iter()
                .chain(self.gateways.iter().map(|g| &g.server))
            {
                let ready = self
                    .http
                    .get(format!("http://{}/readyz", f.http))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                fogs_ready &= ready;
            }
            let regions = self.regions().await;
            let fresh = self.fogs.iter().all(|f| {
                regions
                    .get(f.name.trim_start_matches("fog-"))
                    .is_some_and(|r| !r.stale)
            });
            if fogs_ready && fresh {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the servers were not ready within {timeout:?} (fogs and gateways ready: {fogs_ready}, central sees every region: {fresh}); logs in {}",
                    self.logs.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether central's latest aggregate of every region counts exactly `stations`
    /// stations in service (so the fogs and central both know them).
    pub async fn lists_stations(&self, stations: &BTreeMap<String, u32>) -> bool {
        let regions = self.regions().await;
        stations.iter().all(|(id, n)| {
            regions
                .get(id)
                .is_some_and(|r| r.aggregate.stations_in_service == *n)
        })
    }

    /// Whether every fog server hears central's heartbeat and, with several regions,
    /// knows of another region that can take vehicles: until then a saturated request
    /// would be answered locally (the opening burst of a run that started earlier
    /// queued at the hotspot's one station).
    pub async fn fogs_hear_central(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct View {
            central_present: bool,
            #[serde(default)]
            central_open_regions: Vec<String>,
        }
        let several = self.fogs.len() > 1;
        for fog in &self.fogs {
            let url = format!("http://{}/api/region", fog.http);
            let view: Option<View> = match self.http.get(&url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let name = fog.name.trim_start_matches("fog-");
            let ok = view.is_some_and(|v| {
                v.central_present && (!several || v.central_open_regions.iter().any(|r| r != name))
            });
            if !ok {
                return false;
            }
        }
        true
    }

    /// Stops every server with SIGTERM (SIGKILL after 10 s) and waits for them.
    pub async fn stop(mut self) -> Result<()> {
        tokio::task::spawn_blocking(move || {
            // All at once: each takes most of a second to stop gracefully, and none
            // needs another to do so (they only talk through the brokers).
            let mut servers: Vec<&mut ServerProcess> = self
                .gateways
                .iter_mut()
                .map(|g| &mut g.server)
                .chain(self.fogs.iter_mut())
                .chain(std::iter::once(&mut self.central))
                .collect();
            let mut stopping = Vec::new();
            for p in servers.iter_mut() {
                if p.process.ask_to_stop()? {
                    stopping.push(p);
                }
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            for p in stopping {
                p.process.wait_or_kill(deadline)?;
            }
            Ok(())
        })
        .await
        .context("stopping the servers")?
    }
}

fn spawn_server(
    name: &str,
    command: &[OsString],
    args: &[String],
    env: &[(String, String)],
    http: SocketAddr,
    logs: &Path,
    log_filter: &str,
) -> Result<ServerProcess> {
    let (program, prefix) = command.split_first().context("empty server command")?;
    let log = std::fs::File::create(logs.join(format!("{name}.log")))
        .with_context(|| format!("creating the log of {name}"))?;
    let process = Supervised::spawn(
        Command::new(program)
            .args(prefix)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )
    .with_context(|| format!("starting {name} ({})", Path::new(program).display()))?;
    Ok(ServerProcess {
        name: name.to_owned(),
        http,
        process,
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
