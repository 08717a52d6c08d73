//! The fogcharge central server: keeps the latest aggregate of every region, moves
//! vehicles from saturated regions to neighbours that can serve them sooner, and serves
//! an HTTP API with Prometheus metrics.
//!
//! Central connects to the **central** broker (client id `central`, persistent
//! session), subscribes to `regions/+/up/#` (QoS 1) and publishes to
//! `regions/{region}/down/…`; the Mosquitto bridges carry both to and from the
//! regional brokers (see `protocol::fog`).
//!
//! - [`config`]: command line / environment ([`Config`]).
//! - [`regions`]: the latest aggregate per region, data age, staleness, the saturation
//!   rule, and the travel estimate for a vehicle (the `cost_model` crate's, no I/O).
//! - [`reroute`]: the reroute decision (documented there): `candidates` (which regions
//!   to ask), `conversation` (one reroute, its handoffs, the reply), `handoffs` (replies
//!   to the waiting tasks), `memory` (duplicate suppression).
//! - [`http`]: `/api/regions`, `/api/stations/best`, `/healthz`, `/readyz`, `/metrics`.
//! - [`dashboard`]: the live web page at `/`, its JSON and event stream, `/report`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`start`] connects and returns a handle; [`run`] is what `main` calls. One task owns
//! the MQTT connection and never waits on anything slow: aggregates are applied in
//! place, each reroute runs in a task of its own, and handoff replies are handed to
//! the waiting reroute task through a oneshot channel.

#![forbid(unsafe_code)]

pub mod config;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod regions;
pub mod reroute;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocol::fog::{
    self, Aggregate, FogMessage, HandoffReply, RerouteReply, RerouteRequest, Revoked,
};
use protocol::{PROTOCOL_VERSION, ProtocolError};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::Config;
use cost_model::CostParams;
use metrics::Metrics;
use regions::{Ingest, Regions};
use reroute::{Handoffs, Memory, Seen};
use serverkit::clock;
use serverkit::link::LinkStatus;
pub use serverkit::{Clock, cancel_on_signal};
use serverkit::{Link, LinkSettings, Publisher};

/// State shared between the message loop, the reroute tasks and the HTTP handlers.
/// Locks are only held for synchronous work (microseconds), never across an `.await`.
pub struct Shared {
    regions: Mutex<Regions>,
    reroutes: Mutex<Memory>,
    /// Handoffs waiting for their reply.
    pub handoffs: Handoffs,
    pub clock: Clock,
    pub model: CostParams,
    pub handoff_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub registry: prometheus_client::registry::Registry,
    publisher: Publisher,
    link: Arc<LinkStatus>,
    /// Wakes the heartbeat task early (an aggregate may have changed the open regions).
    heartbeat_wake: tokio::sync::Notify,
    pub dashboard: dashboard::Dashboard,
}

impl Shared {
    /// Locks the regions' state (recovering it if a panic poisoned the lock).
    pub fn regions(&self) -> MutexGuard<'_, Regions> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reroutes(&self) -> MutexGuard<'_, Memory> {
        self.reroutes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether central is connected to the central broker and subscribed.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Publishes with QoS 1, not retained (queued by the client; never blocks).
    pub(crate) fn publish(&self, topic: &str, payload: &[u8]) {
        self.publisher.publish(topic, payload, 1, false);
    }

    pub(crate) fn finish_reroute(&self, origin: &str, reroute_id: &str, reply: Vec<u8>) {
        self.reroutes().finish(origin, reroute_id, reply);
    }
}

/// A running central server.
pub struct Central {
    pub shared: Arc<Shared>,
    /// Where the HTTP server listens, if it was asked for.
    pub http_addr: Option<SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Central {
    /// Waits until central has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("central task panicked")?
    }
}

/// Connects to the central broker, subscribes, binds HTTP (if configured) and starts
/// serving. Returns once connected and subscribed; runs until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Central> {
    config.check()?;
    let clock = clock::from_options(
        config.clock_speed,
        config.clock_epoch_ms,
        config.clock_file.as_deref(),
    )?;
    let password = serverkit::secret::password(
        config.mqtt_password.as_deref(),
        config.mqtt_password_file.as_deref(),
    )?;
    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP on {addr}"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let mut link = connect(&config, password, &metrics, &shutdown).await?;
    let shared = Arc::new(Shared {
        regions: Mutex::new(Regions::new(config.stale_after(), config.model.max_wait_s)),
        reroutes: Mutex::new(Memory::default()),
        handoffs: Handoffs::default(),
        clock,
        model: config.model,
        handoff_timeout: config.handoff_timeout(),
        registry: metrics.registry(),
        metrics,
        publisher: link.publisher(),
        link: link.status(),
        heartbeat_wake: tokio::sync::Notify::new(),
        dashboard: dashboard::Dashboard::new(config.report_file.clone(), shutdown.clone()),
    });

    let mut tasks = JoinSet::new();
    let http_addr = match http_listener {
        Some(listener) => Some(serve_http(listener, &shared, &mut tasks, &shutdown)?),
        None => None,
    };
    tasks.spawn(heartbeats(
        shared.clone(),
        config.heartbeat(),
        shutdown.clone(),
    ));
    let loop_shared = shared.clone();
    let task = tokio::spawn(async move {
        let mut reroutes = JoinSet::new();
        serve(&mut link, &loop_shared, &mut reroutes, &shutdown).await;
        shutdown.cancel();
        // Running reroutes answer "shutting down" at once; let those replies go out.
        while reroutes.join_next().await.is_some() {}
        link.disconnect().await;
        while let Some(res) = tasks.join_next().await {
            res.context("central task panicked")??;
        }
        info!("central stopped");
        Ok(())
    });
    info!(broker = %config.broker, client_id = %config.client_id, "central serving");
    Ok(Central {
        shared,
        http_addr,
        task,
    })
}

/// Connects to the central broker and subscribes to every region's `up/` topics; the
/// link counts its reconnects and takeovers.
async fn connect(
    config: &Config,
    password: Option<String>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Link> {
    let settings = LinkSettings {
        url: config.broker.clone(),
        client_id: config.client_id.clone(),
        persistent: true,
        username: config.mqtt_username.clone(),
        password,
        will: None,
        ca_file: config.mqtt_ca_file.clone(),
        ..Default::default()
    };
    let subscriptions = vec![(fog::filters::CENTRAL_UP.to_owned(), 1)];
    let mut link = Link::connect(&settings, subscriptions, shutdown).await?;
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

/// Serves the HTTP API on `listener` in `tasks` until `shutdown`; returns its address.
fn serve_http(
    listener: tokio::net::TcpListener,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
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

/// Runs central until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// The message loop: every message is handled without waiting; reroutes are spawned.
async fn serve(
    link: &mut Link,
    shared: &Arc<Shared>,
    reroutes: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    while let Some(msg) = link.next(shutdown).await {
        // Reap finished reroute tasks (their results are ()).
        while reroutes.try_join_next().is_some() {}
        if let Some((origin, request)) = handle(shared, msg.topic(), msg.payload()) {
            let task = reroute::run(
                shared.clone(),
                origin,
                request,
                Instant::now(),
                shutdown.clone(),
            );
            reroutes.spawn(task);
        }
    }
}

/// Handles one message from `regions/+/up/#`. Returns a reroute to start, if any.
fn handle(shared: &Shared, topic: &str, payload: &[u8]) -> Option<(String, RerouteRequest)> {
    let (region, kind) = match FogMessage::parse_central(topic) {
        Ok(parsed) => parsed,
        Err(e) => {
            shared.metrics.invalid("topic");
            warn!(topic, error = %e, "message on an unknown topic");
            return None;
        }
    };
    match kind {
        FogMessage::Aggregate => {
            on_aggregate(shared, region, payload);
            None
        }
        FogMessage::Stations => {
            on_stations(shared, region, payload);
            None
        }
        FogMessage::Reroute => on_reroute(shared, region, payload),
        FogMessage::HandoffReply => {
            on_handoff_reply(shared, region, payload);
            None
        }
        FogMessage::HandoffRevoked => {
            on_handoff_revoked(shared, region, payload);
            None
        }
        // parse_central refuses down-direction messages on up topics.
        FogMessage::Handoff
        | FogMessage::RerouteReply
        | FogMessage::Heartbeat
        | FogMessage::RerouteRevoked => {
            shared.metrics.invalid("topic");
            None
        }
    }
}

fn on_aggregate(shared: &Shared, region: &str, payload: &[u8]) {
    if payload.is_empty() {
        // The retained aggregate was cleared: the region is gone.
        if shared.regions().remove(region) {
            info!(region, "region withdrawn (retained aggregate cleared)");
        }
        shared.dashboard.remove(region);
        return;
    }
    let aggregate = match protocol::decode::<Aggregate>(payload).and_then(|a| {
        matches_topic("region", &a.region, region)?;
        Ok(a)
    }) {
        Ok(a) => a,
        Err(e) => {
            shared.metrics.invalid("aggregate");
            warn!(region, error = %e, "invalid aggregate");
            return;
        }
    };
    let seq = aggregate.seq;
    let requests_total = aggregate.requests_total;
    let outcome = shared
        .regions()
        .ingest(aggregate, Instant::now(), shared.clock.now_ms());
    match outcome {
        Ingest::Ignored { held_seq } => {
            shared.metrics.aggregates_ignored.inc();
            debug!(
                region,
                seq, held_seq, "aggregate ignored (duplicate or out of order)"
            );
        }
        Ingest::New => {
            shared.metrics.aggregates.inc();
            info!(region, seq, "first aggregate from region");
        }
        Ingest::Restarted => {
            shared.metrics.aggregates.inc();
            info!(region, seq, "region's fog server restarted");
        }
        Ingest::Updated => {
            shared.metrics.aggregates.inc();
        }
    }
    if !matches!(outcome, Ingest::Ignored { .. }) {
        shared
            .dashboard
            .on_requests_total(region, requests_total, Instant::now());
        shared.heartbeat_wake.notify_one();
    }
}

/// Tells every known region that central is there, every `period` and as soon as the
/// set of regions that can take vehicles changes ([`fog::CentralHeartbeat`]).
async fn heartbeats(
    shared: Arc<Shared>,
    period: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started_ms = shared.clock.now_ms();
    let mut seq = 0;
    let mut last: Option<(Vec<String>, Vec<String>)> = None;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let periodic = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => true,
            _ = shared.heartbeat_wake.notified() => false,
        };
        let (regions, open, nearest) = {
            let regions = shared.regions();
            let now = Instant::now();
            let ids = regions.ids();
            let nearest: Vec<Option<f64>> = ids
                .iter()
                .map(|id| regions.nearest_open_km(id, now))
                .collect();
            (ids, regions.open_regions(now), nearest)
        };
        let state = (regions, open);
        if !periodic && last.as_ref() == Some(&state) {
            continue;
        }
        let (regions, open) = state;
        seq += 1;
        let mut heartbeat = fog::CentralHeartbeat {
            v: PROTOCOL_VERSION,
            started_ms,
            seq,
            ts_ms: shared.clock.now_ms(),
            period_ms: period.as_millis().max(1) as u64,
            open_regions: open.clone(),
            nearest_open_km: None,
            offers: Vec::new(),
        };
        for (region, nearest_open_km) in regions.iter().zip(nearest) {
            heartbeat.nearest_open_km = nearest_open_km;
            shared.publisher.publish(
                &FogMessage::Heartbeat.central_topic(region),
                &protocol::encode(&heartbeat),
                0,
                false,
            );
        }
        last = Some((regions, open));
    }
}

/// A region's station list, for the dashboard.
fn on_stations(shared: &Shared, region: &str, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    match fog::Stations::decode(payload).and_then(|s| {
        matches_topic("region", &s.region, region)?;
        Ok(s)
    }) {
        Ok(stations) => shared.dashboard.on_stations(stations, Instant::now()),
        Err(e) => {
            shared.metrics.invalid("stations");
            warn!(region, error = %e, "invalid station list");
        }
    }
}

fn on_reroute(shared: &Shared, origin: &str, payload: &[u8]) -> Option<(String, RerouteRequest)> {
    let request = match protocol::decode::<RerouteRequest>(payload).and_then(|r| {
        matches_topic("origin_region", &r.origin_region, origin)?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.invalid("reroute");
            warn!(origin, error = %e, "invalid reroute request");
            reject_reroute(shared, origin, payload, &e);
            return None;
        }
    };
    match shared
        .reroutes()
        .admit(origin, &request.reroute_id, Instant::now())
    {
        Seen::New => {}
        Seen::Running => {
            shared.metrics.reroutes_duplicate.inc();
            debug!(origin, reroute = %request.reroute_id, "duplicate reroute request (running)");
            return None;
        }
        Seen::Done(reply) => {
            shared.metrics.reroutes_duplicate.inc();
            debug!(origin, reroute = %request.reroute_id, "duplicate reroute request (answered again)");
            shared.publish(&FogMessage::RerouteReply.central_topic(origin), &reply);
            return None;
        }
    }
    shared.metrics.reroutes_requested.inc();
    info!(origin, reroute = %request.reroute_id, vehicle = %request.vehicle_id,
        local_best_total_s = ?request.local_best_total_s, "reroute requested");
    Some((origin.to_owned(), request))
}

/// Answers an invalid reroute request with `ok = false`, when its `reroute_id` can be
/// read, so that the origin need not wait for its deadline.
fn reject_reroute(shared: &Shared, origin: &str, payload: &[u8], error: &ProtocolError) {
    #[derive(serde::Deserialize)]
    struct Probe {
        reroute_id: String,
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(payload) else {
        return;
    };
    if protocol::validate_id("reroute_id", &probe.reroute_id).is_err() {
        return;
    }
    shared.metrics.reroute_failed("invalid");
    let reply = RerouteReply {
        v: PROTOCOL_VERSION,
        reroute_id: probe.reroute_id,
        ok: false,
        recommendation: None,
        reason: Some(format!("invalid reroute request: {error}")),
        tried: Vec::new(),
        no_region_within_km: None,
        hold_ms: None,
    };
    shared.publish(
        &FogMessage::RerouteReply.central_topic(origin),
        &protocol::encode(&reply),
    );
}

fn on_handoff_reply(shared: &Shared, region: &str, payload: &[u8]) {
    let reply = match protocol::decode::<HandoffReply>(payload) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.invalid("handoff_reply");
            warn!(region, error = %e, "invalid handoff reply");
            return;
        }
    };
    let id = reply.handoff_id.clone();
    match shared.handoffs.deliver(region, reply) {
        reroute::Delivery::Delivered => {}
        reroute::Delivery::Unmatched => {
            shared.metrics.handoff_replies_unmatched.inc();
            info!(region, handoff = %id, "handoff reply for no waiting handoff (late or unknown)");
        }
        reroute::Delivery::WrongRegion { expected } => {
            shared.metrics.invalid("handoff_reply");
            warn!(region, handoff = %id, %expected, "handoff reply from another region than the one asked");
        }
    }
}

/// A target region could not keep a handed-off vehicle's reservation (its station
/// refused it): passed on to the origin, which answered the vehicle.
fn on_handoff_revoked(shared: &Shared, region: &str, payload: &[u8]) {
    let revoked = match protocol::decode::<Revoked>(payload)
        .and_then(|r| matches_topic("region", &r.region, region).map(|()| r))
    {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.invalid("handoff_revoked");
            warn!(region, error = %e, "invalid handoff revocation");
            return;
        }
    };
    shared.metrics.handoff("revoked");
    info!(region, origin = %revoked.origin_region, vehicle = %revoked.vehicle_id, reservation = %revoked.reservation_id, "handoff revoked: telling the origin");
    shared.publish(
        &FogMessage::RerouteRevoked.central_topic(&revoked.origin_region),
        &protocol::encode(&revoked),
    );
}

fn matches_topic(field: &'static str, payload: &str, topic: &str) -> Result<(), ProtocolError> {
    if payload == topic {
        Ok(())
    } else {
        Err(ProtocolError::TopicMismatch {
            field,
            payload: payload.to_owned(),
            topic: topic.to_owned(),
        })
    }
}
