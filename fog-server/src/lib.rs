//! A regional fog server: keeps the region's stations in an R-tree, answers charge
//! requests with the station that charges the vehicle soonest, and holds the
//! reservations it promised.
//!
//! - [`config`]: command line / environment ([`Config`]).
//! - [`index`]: the station R-tree, in great-circle order.
//! - [`planner`]: the cost model and the reservations.
//! - [`region`]: what each incoming message does to the region's state (no I/O).
//! - [`store`]: the reservations journal (`{state-dir}/{region}.jsonl`), read back at
//!   start so that a restart keeps every promise.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/api/*`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`start`] connects and returns a handle; [`run`] is what `main` calls.

pub mod config;
pub mod http;
pub mod index;
pub mod metrics;
pub mod planner;
pub mod region;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocol::{VehicleChannel, topics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use config::Area;
pub use config::Config;
use metrics::Metrics;
use region::{Region, RerouteSettings};
use service::clock;
use service::link::LinkStatus;
pub use service::{Clock, cancel_on_signal};
use service::{Link, LinkSettings, Publisher};

/// How long after subscribing the server waits for retained station statuses before it
/// calls itself ready without any.
const SETTLE: Duration = Duration::from_secs(2);

/// State shared between the message loop, the sweeper and the HTTP handlers. The lock
/// is only ever held for synchronous work (microseconds), never across an `.await`.
pub struct Shared {
    region: Mutex<Region>,
    pub clock: Clock,
    pub area: Option<Area>,
    pub registry: prometheus_client::registry::Registry,
    link: Arc<LinkStatus>,
    subscribed_at: Instant,
}

impl Shared {
    /// Locks the region's state (recovering it if a panic poisoned the lock).
    pub fn lock(&self) -> MutexGuard<'_, Region> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready when connected and subscribed, and either stations are known or the
    /// retained statuses had time to arrive.
    pub fn readiness(&self) -> (bool, &'static str) {
        if self.link.is_taken_over() {
            return (
                false,
                "connection taken over by another client with this client id (a second instance?)",
            );
        }
        if !self.link.is_connected() {
            return (false, "not connected to the broker");
        }
        if self.lock().planner.stations.is_empty() && self.subscribed_at.elapsed() < SETTLE {
            return (false, "loading stations");
        }
        (true, "ready")
    }
}

/// A running fog server.
pub struct FogServer {
    pub shared: Arc<Shared>,
    /// Where the HTTP server listens, if it was asked for.
    pub http_addr: Option<SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl FogServer {
    /// Waits until the server has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("fog server task panicked")?
    }
}

/// Connects to the broker, subscribes, binds HTTP (if configured) and starts serving.
/// Returns once the server is subscribed; it runs until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<FogServer> {
    config.check()?;
    let area = config.area()?;
    let clock = clock::from_options(
        config.clock_speed,
        config.clock_epoch_ms,
        config.clock_file.as_deref(),
    )?;
    let password = service::secret::password(
        config.mqtt_password.as_deref(),
        config.mqtt_password_file.as_deref(),
    )?;
    let metrics = Arc::new(Metrics::new());
    let region_name = config.region.clone();
    let subscriptions = vec![
        (topics::filters::station_status(&region_name), 1),
        (
            topics::filters::vehicles(&region_name, VehicleChannel::Request),
            1,
        ),
        (
            topics::filters::vehicles(&region_name, VehicleChannel::Reservation),
            1,
        ),
        (
            topics::filters::vehicles(&region_name, VehicleChannel::Telemetry),
            0,
        ),
        (protocol::fog::filters::FOG_DOWN.to_owned(), 1),
        (
            topics::filters::stations(&region_name, protocol::StationChannel::ReservationEvents),
            1,
        ),
    ];
    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP on {addr}"))?,
        ),
        None => None,
    };
    let settings = LinkSettings {
        url: config.broker.clone(),
        client_id: config.client_id(),
        persistent: true,
        username: config.mqtt_username.clone(),
        password,
        will: None,
        ca_file: config.mqtt_ca_file.clone(),
        ..Default::default()
    };
    let mut link = Link::connect(&settings, subscriptions, &shutdown).await?;
    let reconnects = metrics.mqtt_reconnects.clone();
    link.on_reconnect = Some(Box::new(move || {
        reconnects.inc();
    }));
    let takeovers = metrics.mqtt_takeovers.clone();
    link.on_takeover = Some(Box::new(move || {
        takeovers.inc();
    }));
    let mut region = Region::new(&region_name, config.planner.clone(), metrics.clone());
    region.reroute = RerouteSettings {
        enabled: !config.no_reroute,
        timeout: Duration::from_millis(config.reroute_timeout_ms),
        clock_speed: clock.speed(),
        central_timeout: Duration::from_millis(config.central_timeout_ms),
    };
    region.outline = area.as_ref().map(Area::outline).unwrap_or_default();
    if !config.no_state {
        let (store, restored) = store::Store::open(&config.state_dir, &region_name, clock.now_ms())
            .context("opening the reservation journal (--state-dir)")?;
        info!(journal = %store.path().display(), restoring = restored.reservations.len(), "reservations are kept on disk");
        region.attach_store(store, restored, clock.now_ms());
    }
    let shared = Arc::new(Shared {
        region: Mutex::new(region),
        clock,
        area,
        registry: metrics.registry(),
        link: link.status(),
        subscribed_at: Instant::now(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let app = http::router(shared.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("HTTP server")
            });
            info!(%addr, "HTTP listening");
            Some(addr)
        }
        None => None,
    };
    tasks.spawn(sweep(
        shared.clone(),
        link.publisher(),
        Duration::from_millis(config.sweep_ms.max(1)),
        shutdown.clone(),
    ));
    tasks.spawn(publish_aggregates(
        shared.clone(),
        link.publisher(),
        Duration::from_millis(config.aggregate_min_ms.max(10)),
        Duration::from_millis(config.aggregate_ms.max(10)),
        shutdown.clone(),
    ));
    let loop_shared = shared.clone();
    let task = tokio::spawn(async move {
        serve(&mut link, &loop_shared, &shutdown).await;
        link.disconnect().await;
        shutdown.cancel();
        while let Some(res) = tasks.join_next().await {
            res.context("fog server task panicked")??;
        }
        info!("fog server stopped");
        Ok(())
    });
    info!(region = %region_name, broker = %config.broker, "fog server serving");
    Ok(FogServer {
        shared,
        http_addr,
        task,
    })
}

/// Runs a fog server until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// The message loop: one message at a time, answered before the next is read.
///
/// Right after the start, requests wait until the stations are in: a persistent
/// session delivers what was queued for the server as soon as it connects, before the
/// broker sends the retained station statuses that follow the subscription. So until
/// the first station is known and the burst of retained statuses is read (or
/// [`SETTLE`] has passed), requests are held, then answered in order.
async fn serve(link: &mut Link, shared: &Shared, shutdown: &CancellationToken) {
    let mut held: Vec<paho_mqtt::Message> = Vec::new();
    let settled = tokio::time::Instant::from_std(shared.subscribed_at + SETTLE);
    let loading = |link: &Link| {
        Instant::now() < shared.subscribed_at + SETTLE
            && (shared.lock().planner.stations.is_empty() || link.queued() > 0)
    };
    loop {
        let next = if held.is_empty() {
            Some(link.next(shutdown).await)
        } else {
            tokio::select! {
                m = link.next(shutdown) => Some(m),
                _ = tokio::time::sleep_until(settled) => None,
            }
        };
        let msg = match next {
            Some(Some(msg)) => msg,
            Some(None) => return, // shut down
            None => {
                answer_held(link, shared, &mut held); // settled
                continue;
            }
        };
        if !held.is_empty() || loading(link) {
            let is_request = matches!(
                protocol::Topic::parse(msg.topic()),
                Ok(protocol::Topic::Vehicle {
                    channel: VehicleChannel::Request,
                    ..
                })
            );
            if is_request {
                held.push(msg);
                continue;
            }
        }
        handle(link, shared, &msg);
        if !held.is_empty() && !loading(link) {
            answer_held(link, shared, &mut held);
        }
    }
}

fn handle(link: &Link, shared: &Shared, msg: &paho_mqtt::Message) {
    let now = shared.clock.now_ms();
    let (out, to_stations) = {
        let mut region = shared.lock();
        let out = region.handle(msg.topic(), msg.payload(), now);
        (out, region.take_station_messages())
    };
    if let Some(out) = out {
        link.publish(&out.topic, &out.payload, 1, out.retain);
    }
    for o in to_stations {
        link.publish(&o.topic, &o.payload, 1, o.retain);
    }
}

fn answer_held(link: &Link, shared: &Shared, held: &mut Vec<paho_mqtt::Message>) {
    if !held.is_empty() {
        debug!(
            requests = held.len(),
            stations = shared.lock().planner.stations.len(),
            "stations loaded: answering the requests held since the start"
        );
    }
    for msg in held.drain(..) {
        handle(link, shared, &msg);
    }
}

/// Periodically: ends expired reservations, answers reroutes central left unanswered,
/// forgets idle vehicles.
async fn sweep(
    shared: Arc<Shared>,
    publisher: Publisher,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {
                let now = shared.clock.now_ms();
                let out = {
                    let mut region = shared.lock();
                    let mut out = region.tick(now);
                    out.extend(region.take_station_messages());
                    out
                };
                for o in out {
                    publisher.publish(&o.topic, &o.payload, 1, o.retain);
                }
            }
        }
    }
}

/// Publishes the region's aggregate (retained) every `period`, and after a change as
/// soon as `min_interval` allows.
async fn publish_aggregates(
    shared: Arc<Shared>,
    publisher: Publisher,
    min_interval: Duration,
    period: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topic = protocol::fog::FogMessage::Aggregate.regional_topic();
    let stations_topic = protocol::fog::FogMessage::Stations.regional_topic();
    let mut interval = tokio::time::interval(min_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Instant> = None;
    let mut last_stations: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let due = last.is_none_or(|t| t.elapsed() >= period);
        // Every station, for central's dashboard: once a period, busy or not.
        let stations_due = last_stations.is_none_or(|t| t.elapsed() >= period);
        let (aggregate, stations) = {
            let mut region = shared.lock();
            if !(due || stations_due || region.is_dirty()) {
                continue;
            }
            let now = shared.clock.now_ms();
            let stations = stations_due.then(|| region.stations_snapshot(now));
            (region.aggregate(now), stations)
        };
        if stations.is_some() {
            last_stations = Some(Instant::now());
        }
        publisher.publish(&topic, &protocol::encode(&aggregate), 1, true);
        if let Some(stations) = stations {
            publisher.publish(&stations_topic, &protocol::encode(&stations), 1, true);
        }
        shared.lock().metrics().aggregates_published.inc();
        last = Some(Instant::now());
    }
}
