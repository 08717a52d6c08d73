//! A regional fog server: keeps the region's stations in an R-tree, answers charge
//! requests with the station that charges the vehicle soonest, and holds the
//! reservations it promised.
//!
//! - [`config`]: command line / environment ([`Config`]).
//! - [`index`]: the station R-tree, in great-circle order.
//! - [`planner`]: the cost model and the reservations.
//! - [`region`]: the region as a pure state machine: a parsed message
//!   ([`protocol::Incoming`]) and the time in, [`region::Effects`] (journal records,
//!   metric changes, messages to publish) out; split by job into requests, reroute,
//!   handoff, stations, station reservations, aggregate and views.
//! - [`store`]: the reservations journal (`{state-dir}/{region}.jsonl`), read back at
//!   start so that a restart keeps every promise.
//! - [`journal`]: the task that writes the journal, off the region's lock.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/api/*`.
//! - [`metrics`]: Prometheus metrics, and the changes to them the region reports.
//!
//! This file is the I/O shell around the region: it owns the MQTT link, parses each
//! message, hands it to the region under its lock, has the journal written, and only
//! then publishes. [`start`] stands by while another instance holds the region's
//! lease (`serverkit::lease`), then connects and returns a handle; [`run`] is what
//! `main` calls. Stopping hands over: the link disconnects, what was already received
//! is answered, the journal finishes, and the lease is released last.

pub mod config;
pub mod http;
pub mod index;
pub mod journal;
pub mod metrics;
pub mod planner;
pub mod region;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocol::{Incoming, VehicleChannel, topics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use config::Area;
pub use config::Config;
use journal::{Journal, Written};
use metrics::Metrics;
use region::{AggregateSchedule, Effects, Region, RerouteSettings};
use serverkit::clock;
use serverkit::lease::{self, Lease};
use serverkit::link::LinkStatus;
pub use serverkit::{Clock, cancel_on_signal};
use serverkit::{Link, LinkSettings, Publisher};

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
    metrics: Arc<Metrics>,
    link: Arc<LinkStatus>,
    subscribed_at: Instant,
    /// Set once the stations are in: the first ones known and the burst of retained
    /// statuses read (see [`serve`]), or [`SETTLE`] passed.
    loaded: AtomicBool,
    /// The reservation journal's writer (none: `--no-state`).
    journal: Option<Journal>,
}

impl Shared {
    /// Locks the region's state (recovering it if a panic poisoned the lock).
    pub fn lock(&self) -> MutexGuard<'_, Region> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `step` on the region under its lock, queues the journal records of its
    /// effects (under the lock, so they keep the region's order) and applies its
    /// metric changes; returns the messages to publish once the records are written.
    fn step(&self, step: impl FnOnce(&mut Region) -> Effects) -> (Vec<region::Outgoing>, Written) {
        let mut region = self.lock();
        let Effects {
            journal,
            publish,
            metrics,
            ..
        } = step(&mut region);
        for update in &metrics {
            self.metrics.apply(update);
        }
        let written = match &self.journal {
            Some(j) => j.write(journal),
            None => Written::none(),
        };
        (publish, written)
    }

    /// Ready when connected and subscribed, and either the stations are in (the first
    /// known and the burst of retained statuses read) or they had time to arrive.
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
        if !self.loaded.load(Ordering::Relaxed) && self.subscribed_at.elapsed() < SETTLE {
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
    let metrics = Arc::new(Metrics::new());
    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP on {addr}"))?,
        ),
        None => None,
    };
    let lease = Lease::new(protocol::fog::LEASE);
    let settings = link_settings(&config, &lease)?;
    let (http_listener, store) =
        stand_by(&config, &settings, &lease, http_listener, &clock, &shutdown).await?;
    let mut link = connect(&config, &settings, &metrics, &shutdown).await?;
    // This instance serves the region now: retained, refreshed, its will the release.
    link.publish(&lease.topic, &lease.online(), 1, true);
    let mut region = configured_region(&config, area.as_ref(), clock.speed());
    let journal_stop = CancellationToken::new();
    let (journal, journal_task) = store
        .map(|(store, restored)| {
            region.restore_journal(restored, clock.now_ms());
            Journal::start(store, journal_stop.clone())
        })
        .unzip();
    let shared = Arc::new(Shared {
        region: Mutex::new(region),
        clock,
        area,
        registry: metrics.registry(),
        metrics,
        link: link.status(),
        subscribed_at: Instant::now(),
        loaded: AtomicBool::new(false),
        journal,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let http_addr = match http_listener {
        Some(listener) => Some(serve_http(listener, &shared, &shutdown, &mut tasks)?),
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
        AggregateSchedule::new(config.aggregate_min_ms.max(10), config.aggregate_ms.max(10)),
        shutdown.clone(),
    ));
    tasks.spawn(refresh_lease(
        lease.clone(),
        link.publisher(),
        shutdown.clone(),
    ));
    let loop_shared = shared.clone();
    let handover_id = format!("{}-handover", settings.client_id);
    let task = tokio::spawn(async move {
        let mut taken = serve(&mut link, &loop_shared, &shutdown).await;
        // The hand-over: nothing more comes from the session (the broker keeps what
        // arrives for the next instance); what was taken from it is answered.
        let disconnected = link.disconnect().await;
        while let Some(msg) = link.try_next() {
            taken.push(msg);
        }
        if !taken.is_empty() {
            info!(
                messages = taken.len(),
                "answering what was received before the disconnect"
            );
        }
        for msg in &taken {
            handle(&link, &loop_shared, msg).await;
        }
        shutdown.cancel();
        while let Some(res) = tasks.join_next().await {
            res.context("fog server task panicked")??;
        }
        // Everything that queues records has stopped: the journal ends last.
        journal_stop.cancel();
        if let Some(task) = journal_task {
            task.await.context("journal writer panicked")?;
        }
        // The answers go out, then the lease is released: the next instance starts
        // from the journal as written and the session as left.
        if !disconnected {
            tracing::warn!("the broker is not answering: no hand-over (the lease expires)");
        } else {
            match link.hand_over(&handover_id, &lease.released()).await {
                Ok(sent) => info!(sent, "handed over: lease released"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not hand over: the lease expires instead");
                }
            }
        }
        info!("fog server stopped");
        Ok(())
    });
    info!(region = %config.region, broker = %config.broker, "fog server serving");
    Ok(FogServer {
        shared,
        http_addr,
        task,
    })
}

/// The region `config` describes, on a clock running `clock_speed` times real time:
/// its planner, its reroute settings (real durations, turned into clock time by the
/// speed) and its outline `area`. No journal yet ([`Region::restore_journal`]).
pub fn configured_region(config: &Config, area: Option<&Area>, clock_speed: f64) -> Region {
    let mut region = Region::new(&config.region, config.planner.clone());
    region.reroute = RerouteSettings {
        enabled: !config.no_reroute,
        timeout: Duration::from_millis(config.reroute_timeout_ms),
        clock_speed,
        central_timeout: Duration::from_millis(config.central_timeout_ms),
        border_margin_s: config.border_margin_s,
    };
    region.outline = area.map(Area::outline).unwrap_or_default();
    region
}

/// The region's broker, as the fog server logs in: its persistent session, the lease's
/// release as its last will.
fn link_settings(config: &Config, lease: &Lease) -> anyhow::Result<LinkSettings> {
    let password = serverkit::secret::password(
        config.mqtt_password.as_deref(),
        config.mqtt_password_file.as_deref(),
    )?;
    Ok(LinkSettings {
        url: config.broker.clone(),
        client_id: config.client_id(),
        persistent: true,
        username: config.mqtt_username.clone(),
        password,
        will: Some(lease.released()),
        ca_file: config.mqtt_ca_file.clone(),
        ..Default::default()
    })
}

/// Returned by [`start`] when `shutdown` comes while the server stands by.
#[derive(Debug, thiserror::Error)]
#[error("stopped while standing by")]
pub struct StoppedStandingBy;

/// What [`stand_by`] hands back: the HTTP listener and the journal, opened.
type Claimed = (
    Option<tokio::net::TcpListener>,
    Option<(store::Store, store::Restored)>,
);

/// Before serving: waits until no other instance holds the region — its lease on the
/// broker, then its journal — answering `/healthz` (200 once it knows it stands by)
/// and `/readyz` (503, why) meanwhile.
async fn stand_by(
    config: &Config,
    settings: &LinkSettings,
    lease: &Lease,
    listener: Option<tokio::net::TcpListener>,
    clock: &Clock,
    shutdown: &CancellationToken,
) -> anyhow::Result<Claimed> {
    let why = Arc::new(Mutex::new(http::Standby {
        standing_by: false,
        why: format!(
            "starting: looking for another instance serving region {}",
            config.region
        ),
    }));
    let set_why = |text: String| {
        *why.lock().unwrap_or_else(|e| e.into_inner()) = http::Standby {
            standing_by: true,
            why: text,
        };
    };
    let standby_stop = CancellationToken::new();
    let (listener, server) = match listener {
        Some(listener) => {
            // The same socket, served by the standby router until this returns.
            let socket = listener.into_std()?;
            let standby = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
            let app = http::standby_router(why.clone());
            let stop = standby_stop.clone();
            let server = tokio::spawn(async move {
                axum::serve(standby, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            });
            (
                Some(tokio::net::TcpListener::from_std(socket)?),
                Some(server),
            )
        }
        None => (None, None),
    };
    let claimed = async {
        let free = lease
            .wait_until_free(settings, shutdown, |holder| {
                set_why(format!(
                    "standing by: instance {holder} serves region {}",
                    config.region
                ));
            })
            .await?;
        if !free {
            return Err(StoppedStandingBy.into());
        }
        if config.no_state {
            return Ok(None);
        }
        let mut waited = false;
        loop {
            match store::Store::open(&config.state_dir, &config.region, clock.now_ms()) {
                Ok((store, restored)) => {
                    info!(journal = %store.path().display(), restoring = restored.reservations.len(), "reservations are kept on disk");
                    return Ok(Some((store, restored)));
                }
                Err(e) if e.is::<store::Locked>() => {
                    if !waited {
                        waited = true;
                        info!(error = %e, "standing by until the journal is free");
                        set_why(format!("standing by: {e}"));
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(StoppedStandingBy.into()),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                Err(e) => return Err(e.context("opening the reservation journal (--state-dir)")),
            }
        }
    }
    .await;
    standby_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok((listener, claimed?))
}

/// Publishes the lease again every [`lease::REFRESH`] until `shutdown`.
async fn refresh_lease(
    lease: Lease,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(lease::REFRESH);
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => publisher.publish(&lease.topic, &lease.online(), 1, true),
        }
    }
}

/// Connects to the region's broker and subscribes to everything a fog receives.
async fn connect(
    config: &Config,
    settings: &LinkSettings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Link> {
    let region = &config.region;
    let subscriptions = vec![
        (topics::filters::station_status(region), 1),
        (topics::filters::gateway_status(region), 1),
        (
            topics::filters::vehicles(region, VehicleChannel::Request),
            1,
        ),
        (
            topics::filters::vehicles(region, VehicleChannel::Reservation),
            1,
        ),
        (
            topics::filters::vehicles(region, VehicleChannel::Telemetry),
            0,
        ),
        (protocol::fog::filters::FOG_DOWN.to_owned(), 1),
        // The bridge reconnecting sends the next aggregate at once.
        (protocol::incoming::BRIDGE_STATE_FILTER.to_owned(), 0),
        (
            topics::filters::stations(region, protocol::StationChannel::ReservationEvents),
            1,
        ),
    ];
    let mut link = Link::connect(settings, subscriptions, shutdown).await?;
    let reconnects = metrics.mqtt_reconnects.clone();
    link.on_reconnect = Some(Box::new(move || {
        reconnects.inc();
    }));
    let takeovers = metrics.mqtt_takeovers.clone();
    link.on_takeover = Some(Box::new(move || {
        takeovers.inc();
    }));
    Ok(link)
}

/// Serves the HTTP API on `listener` until `shutdown`.
fn serve_http(
    listener: tokio::net::TcpListener,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
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
    Ok(addr)
}

/// Runs a fog server until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match start(config, shutdown).await {
        Ok(server) => server.wait().await,
        Err(e) if e.is::<StoppedStandingBy>() => {
            info!("fog server stopped while standing by");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The message loop: one message at a time, answered before the next is read.
///
/// Right after the start, requests wait until the stations are in: a persistent
/// session delivers what was queued for the server as soon as it connects, before the
/// broker sends the retained station statuses that follow the subscription. So until
/// the first station is known and the burst of retained statuses is read (or
/// [`SETTLE`] has passed), requests are held, then answered in order.
async fn serve(
    link: &mut Link,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Vec<paho_mqtt::Message> {
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
            Some(None) => return held, // shut down: the held requests are still to answer
            None => {
                answer_held(link, shared, &mut held).await; // settled
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
        handle(link, shared, &msg).await;
        if !loading(link) {
            shared.loaded.store(true, Ordering::Relaxed);
            answer_held(link, shared, &mut held).await;
        }
    }
}

/// One message: parsed, handed to the region, journaled, then published.
async fn handle(link: &Link, shared: &Shared, msg: &paho_mqtt::Message) {
    let incoming = Incoming::parse(msg.topic(), msg.payload());
    let now = shared.clock.now_ms();
    let (out, written) = shared.step(|region| {
        // planning time: the region's work only, not the parse or the wait for the lock
        let started = Instant::now();
        let fx = region.handle(incoming, now);
        if fx.planned {
            let seconds = started.elapsed().as_secs_f64();
            shared.metrics.planning_seconds.observe(seconds);
        }
        fx
    });
    publish_when_written(out, written, |o| {
        link.publish(&o.topic, &o.payload, 1, o.retain)
    })
    .await;
}

/// Publishes `out` once its journal records are written (nothing if they cannot be:
/// an answer must never be out without its reservation on disk).
async fn publish_when_written(
    out: Vec<region::Outgoing>,
    written: Written,
    mut publish: impl FnMut(&region::Outgoing),
) {
    if !written.wait().await {
        tracing::error!(
            messages = out.len(),
            "journal writer stopped: not publishing what it could not record"
        );
        return;
    }
    for o in &out {
        publish(o);
    }
}

async fn answer_held(link: &Link, shared: &Shared, held: &mut Vec<paho_mqtt::Message>) {
    if !held.is_empty() {
        debug!(
            requests = held.len(),
            stations = shared.lock().planner.stations.len(),
            "stations loaded: answering the requests held since the start"
        );
    }
    for msg in held.drain(..) {
        handle(link, shared, &msg).await;
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
                let (out, written) = shared.step(|region| region.tick(now));
                publish_when_written(out, written, |o| {
                    publisher.publish(&o.topic, &o.payload, 1, o.retain)
                })
                .await;
            }
        }
    }
}

/// Publishes the region's aggregate (retained) when `schedule` says (every period,
/// and after a change as soon as its shortest interval allows), on real time.
async fn publish_aggregates(
    shared: Arc<Shared>,
    publisher: Publisher,
    mut schedule: AggregateSchedule,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(schedule.check_every_ms()));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let out = {
            let mut region = shared.lock();
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let Some(due) = schedule.due(elapsed_ms, region.is_dirty()) else {
                continue;
            };
            region.aggregate_messages(due, shared.clock.now_ms())
        };
        for o in &out {
            publisher.publish(&o.topic, &o.payload, 1, o.retain);
        }
        shared.metrics.aggregates_published.inc();
    }
}
