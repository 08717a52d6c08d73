//! An OCPP 1.6J gateway for one region: holds the WebSockets of real charge points
//! and turns them into fogcharge stations on the region's broker (status in,
//! reservations out as ReserveNow / CancelReservation). See `docs/ocpp.md`.
//!
//! - [`config`]: command line / environment ([`Config`]).
//! - [`chargers`]: the chargers file (the registry: location, connectors, power,
//!   password hash), reloaded on SIGHUP.
//! - [`frame`]: OCPP-J framing (CALL / CALLRESULT / CALLERROR), no I/O.
//! - [`status`]: connector statuses → station status, no I/O.
//! - [`session`]: one charge point's session: its CALLs answered, the CSMS's calls to
//!   it one at a time with a timeout, its station status.
//! - [`waiting`]: the reservations waiting at a busy charger, in the order the fog
//!   planned them (`start_ms`), no I/O.
//! - [`server`]: the WebSocket endpoint `/ocpp/{chargePointId}` (subprotocol
//!   `ocpp1.6`, Basic auth, TLS) and `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`start`] binds and connects and returns a handle; [`run`] is what `main` calls.

pub mod chargers;
pub mod config;
pub mod frame;
pub mod metrics;
pub mod server;
pub mod session;
pub mod status;
pub mod waiting;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::Context as _;
use protocol::{
    GatewayStatus, StationChannel, StationReservation, StationReservationAction,
    StationReservationEventKind, StationStatus, Topic, decode, topics,
};
use serverkit::{Link, LinkSettings, Publisher, Will};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use chargers::Registry;
use config::AuthorizeRule;
pub use config::Config;
use metrics::{Label, Metrics};
use session::{Command, now_ms};

/// Reads a password from stdin and prints its hash, the form the chargers file holds
/// (`ocpp-gateway hash-password`).
pub fn hash_password_from_stdin() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "give the password on stdin");
    println!("{}", topology::auth::hash_password(password));
    Ok(())
}

/// A reservation a charger was asked to hold.
#[derive(Debug, Clone)]
pub struct Held {
    pub charger: String,
    pub ocpp_id: i32,
    pub id_tag: String,
    pub connector: u32,
    /// The expiry the charger was last sent: a `reserve` with another one updates it.
    pub expires_ms: u64,
}

/// What sessions need to know of the gateway's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub call_timeout: Duration,
    pub authorize: AuthorizeRule,
    pub accept_unknown: bool,
    pub max_message_bytes: usize,
}

struct SessionHandle {
    generation: u64,
    commands: mpsc::Sender<Command>,
}

/// State shared by the sessions, the MQTT loop and the HTTP handlers. Locks are held
/// for synchronous work only.
pub struct Shared {
    pub region: String,
    /// This gateway's id (its MQTT client id, `ocpp-{region}` by default): the
    /// presence topic and the `gateway` of every station status it publishes.
    pub gateway_id: String,
    pub settings: Settings,
    pub metrics: Metrics,
    pub prometheus: prometheus_client::registry::Registry,
    registry: RwLock<Registry>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    /// Charge points seen since start (a new connection of one is a reconnect).
    seen: Mutex<HashSet<String>>,
    /// Reservations held at chargers, by the fog's reservation id.
    reservations: Mutex<HashMap<String, Held>>,
    /// The last status published for each charger, sent again after a reconnect to
    /// the broker (the last will said the gateway was gone meanwhile).
    last_status: Mutex<HashMap<String, StationStatus>>,
    publisher: Publisher,
    link: Arc<serverkit::link::LinkStatus>,
    next_transaction: AtomicI32,
    next_reservation: AtomicI32,
    next_generation: AtomicU64,
    /// Stops every session.
    shutdown: CancellationToken,
}

impl Shared {
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    fn reservations(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charge points connected now.
    pub fn connected_chargers(&self) -> usize {
        self.sessions().len()
    }

    /// Whether connected to the broker.
    pub fn ready(&self) -> bool {
        self.link.is_connected()
    }

    fn next_transaction(&self) -> i32 {
        self.next_transaction.fetch_add(1, Ordering::Relaxed)
    }

    fn next_reservation(&self) -> i32 {
        self.next_reservation.fetch_add(1, Ordering::Relaxed)
    }

    fn publish_status(&self, status: &StationStatus) {
        let status = StationStatus {
            gateway: Some(self.gateway_id.clone()),
            ..status.clone()
        };
        self.metrics.statuses.inc();
        self.publisher.publish(
            &topics::station_status(&self.region, &status.station_id),
            &protocol::encode(&status),
            1,
            true,
        );
        self.last_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(status.station_id.clone(), status);
    }

    /// Says (retained) whether this gateway is there.
    fn announce(&self, online: bool) {
        self.publisher.publish(
            &topics::gateway_status(&self.region, &self.gateway_id),
            &protocol::encode(&presence(&self.gateway_id, online, Some(now_ms()))),
            1,
            true,
        );
    }

    /// After a reconnect to the broker: the gateway is back, and so is the status of
    /// each of its chargers (the last will made them all offline in the fog).
    fn republish(&self) {
        self.announce(true);
        let statuses: Vec<StationStatus> = self
            .last_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for status in &statuses {
            self.publish_status(status);
        }
    }

    /// Registers a new session for `charger_id`, replacing (and closing) an older one.
    /// Returns its generation, its command channel and whether the charger was seen
    /// before.
    fn begin_session(&self, charger_id: &str) -> (u64, mpsc::Receiver<Command>, bool) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let old = self.sessions().insert(
            charger_id.to_owned(),
            SessionHandle {
                generation,
                commands: tx,
            },
        );
        if let Some(old) = old {
            info!(
                charger = charger_id,
                "a new connection replaces the old one"
            );
            let _ = old.commands.try_send(Command::Replaced);
        }
        let reconnect = !self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(charger_id.to_owned());
        (generation, rx, reconnect)
    }

    /// Forgets a session if it is still the current one for the charger.
    fn end_session(&self, charger_id: &str, generation: u64) -> bool {
        let mut sessions = self.sessions();
        if sessions
            .get(charger_id)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(charger_id);
            true
        } else {
            false
        }
    }

    /// Reloads the chargers file.
    pub fn reload(&self, path: &std::path::Path) {
        match Registry::load(path) {
            Ok(r) => {
                info!(chargers = r.len(), "chargers file reloaded");
                *self.registry.write().unwrap_or_else(|e| e.into_inner()) = r;
                self.metrics
                    .registry_reloads
                    .get_or_create(&Label::of("ok"))
                    .inc();
            }
            Err(e) => {
                warn!(error = %e, "chargers file not reloaded: keeping the previous one");
                self.metrics
                    .registry_reloads
                    .get_or_create(&Label::of("failed"))
                    .inc();
            }
        }
    }
}

/// The gateway's presence message; `online: false` is its last will.
fn presence(gateway_id: &str, online: bool, ts_ms: Option<u64>) -> GatewayStatus {
    GatewayStatus {
        v: protocol::PROTOCOL_VERSION,
        gateway_id: gateway_id.to_owned(),
        online,
        ts_ms,
    }
}

/// A running gateway.
pub struct Gateway {
    pub shared: Arc<Shared>,
    /// Where charge points connect.
    pub listen_addr: SocketAddr,
    /// Where `/healthz`, `/readyz`, `/metrics` are served, if asked for.
    pub http_addr: Option<SocketAddr>,
    pub tls: bool,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    /// Waits until the gateway has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("gateway task panicked")?
    }
}

/// Loads the chargers file, binds, connects to the broker and starts serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Gateway> {
    config.check()?;
    let registry = Registry::load(&config.chargers)?;
    let password = serverkit::secret::password(
        config.mqtt_password.as_deref(),
        config.mqtt_password_file.as_deref(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the OCPP listener on {}", config.listen))?;
    let listen_addr = listener.local_addr()?;
    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP on {addr}"))?,
        ),
        None => None,
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_config(cert, key).await?),
        _ => None,
    };
    let gateway_id = config.client_id();
    let settings = LinkSettings {
        url: config.broker.clone(),
        client_id: gateway_id.clone(),
        persistent: true,
        username: config.mqtt_username.clone(),
        password,
        // A gateway that dies takes its chargers with it: the fog hears it at once.
        will: Some(Will {
            topic: topics::gateway_status(&config.region, &gateway_id),
            payload: protocol::encode(&presence(&gateway_id, false, None)),
            qos: 1,
            retain: true,
        }),
        ca_file: config.mqtt_ca_file.clone(),
        ..Default::default()
    };
    let subscriptions = vec![(
        topics::filters::stations(&config.region, StationChannel::Reservations),
        1,
    )];
    let mut link = Link::connect(&settings, subscriptions, &shutdown).await?;
    let metrics = Metrics::default();
    let reconnects = metrics.mqtt_reconnects.clone();
    let takeovers = metrics.mqtt_takeovers.clone();
    link.on_takeover = Some(Box::new(move || {
        takeovers.inc();
    }));
    // Reservation ids distinct across restarts of the gateway (chargers keep theirs).
    let base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 1_000_000) as i32
        * 1000;
    let shared = Arc::new(Shared {
        region: config.region.clone(),
        gateway_id,
        settings: Settings {
            heartbeat: Duration::from_secs(u64::from(config.heartbeat_s)),
            call_timeout: Duration::from_millis(config.call_timeout_ms.max(1)),
            authorize: config.authorize,
            accept_unknown: config.accept_unknown,
            max_message_bytes: config.max_message_bytes,
        },
        prometheus: metrics.registry(),
        metrics,
        registry: RwLock::new(registry),
        sessions: Mutex::default(),
        seen: Mutex::default(),
        reservations: Mutex::default(),
        last_status: Mutex::default(),
        publisher: link.publisher(),
        link: link.status(),
        next_transaction: AtomicI32::new(1),
        next_reservation: AtomicI32::new(base + 1),
        next_generation: AtomicU64::new(1),
        shutdown: shutdown.clone(),
    });

    let weak = Arc::downgrade(&shared);
    link.on_reconnect = Some(Box::new(move || {
        reconnects.inc();
        if let Some(shared) = weak.upgrade() {
            shared.republish();
        }
    }));
    // No charger is connected yet: a status retained from before (a crash) must not
    // stand for one. Then the gateway says it is there.
    let ids: Vec<String> = shared.registry().ids().map(str::to_owned).collect();
    for id in ids {
        shared.publish_status(&status::offline(&id, now_ms()));
    }
    shared.announce(true);

    let mut tasks = tokio::task::JoinSet::new();
    let is_tls = tls.is_some();
    tasks.spawn(server::serve_ocpp(
        listener,
        tls,
        shared.clone(),
        shutdown.clone(),
    ));
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let app = server::http_router(shared.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("HTTP server")
            });
            Some(addr)
        }
        None => None,
    };
    tasks.spawn(reload_on_sighup(
        shared.clone(),
        config.chargers.clone(),
        shutdown.clone(),
    ));
    let loop_shared = shared.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = link.next(&shutdown).await {
            on_mqtt(&loop_shared, msg.topic(), msg.payload());
        }
        shutdown.cancel();
        while let Some(res) = tasks.join_next().await {
            res.context("gateway task panicked")??;
        }
        // The sessions published their chargers offline; the gateway says it is gone
        // (a clean disconnect sends no last will); let it go out.
        loop_shared.announce(false);
        link.disconnect().await;
        info!("gateway stopped");
        Ok(())
    });
    info!(region = %config.region, %listen_addr, tls = is_tls, chargers = shared.registry().len(), "OCPP gateway serving");
    Ok(Gateway {
        shared,
        listen_addr,
        http_addr,
        tls: is_tls,
        task,
    })
}

/// Runs a gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// A message from the fog: a reservation for one of the region's stations.
fn on_mqtt(shared: &Shared, topic: &str, payload: &[u8]) {
    let station_id = match Topic::parse(topic) {
        Ok(Topic::Station {
            region,
            station_id,
            channel: StationChannel::Reservations,
        }) if region == shared.region => station_id,
        _ => {
            warn!(topic, "unexpected message ignored");
            return;
        }
    };
    let msg = match decode::<StationReservation>(payload) {
        Ok(m) => m,
        Err(e) => {
            warn!(station = station_id, error = %e, "reservation message refused");
            return;
        }
    };
    let command = match (msg.action, msg.id_tag, msg.expires_ms) {
        (StationReservationAction::Reserve, Some(id_tag), Some(expires_ms)) => Command::Reserve {
            fog_id: msg.reservation_id.clone(),
            id_tag,
            expires_ms,
            start_ms: msg.start_ms,
        },
        (StationReservationAction::Cancel, ..) => Command::Cancel {
            fog_id: msg.reservation_id.clone(),
        },
        _ => return, // validated: a reserve has both
    };
    let sender = shared
        .sessions()
        .get(station_id)
        .map(|s| s.commands.clone());
    let refused = match sender {
        Some(tx) => match tx.try_send(command) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(c)) => {
                Some((c, "the gateway is busy with this charger"))
            }
            Err(mpsc::error::TrySendError::Closed(c)) => Some((c, "the charger is not connected")),
        },
        None => Some((command, "the charger is not connected")),
    };
    if let Some((command, why)) = refused {
        match command {
            Command::Reserve { fog_id, .. } => {
                shared
                    .metrics
                    .reservations
                    .get_or_create(&Label::of("rejected"))
                    .inc();
                session::publish_event(
                    shared,
                    station_id,
                    &fog_id,
                    StationReservationEventKind::Rejected,
                    Some(why.into()),
                );
            }
            Command::Cancel { fog_id } => {
                shared.reservations().remove(&fog_id);
            }
            Command::Replaced => {}
        }
    }
}

/// SIGHUP reloads the chargers file (a bad file keeps the previous registry).
async fn reload_on_sighup(
    shared: Arc<Shared>,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                s = hup.recv() => {
                    if s.is_none() {
                        return Ok(());
                    }
                    shared.reload(&path);
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shared, path);
        shutdown.cancelled().await;
        Ok(())
    }
}
