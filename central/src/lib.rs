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
//! - [`core`]: every decision, as one pure state machine ([`core::CentralCore`]):
//!   messages and the time on the shared clock in, messages to publish and events out;
//!   no I/O, no clock (a simulator runs it in-process on simulated time).
//! - [`regions`]: the latest aggregate per region, data age, staleness, the saturation
//!   rule, and the travel estimate for a vehicle (the `cost_model` crate's, no I/O).
//! - [`reroute`]: the reroute decision (documented there): `candidates` (which regions
//!   to ask), `memory` (duplicate suppression); the conversation is the core's.
//! - [`http`]: `/api/regions`, `/api/stations/best`, `/healthz`, `/readyz`, `/metrics`.
//! - [`dashboard`]: the live web page at `/`, its JSON and event stream, `/report`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`start`] connects and returns a handle; [`run`] is what `main` calls. This file is
//! the thin shell around the core: one task owns the MQTT connection and hands every
//! message to [`core::CentralCore::receive`] with the time; a timer task calls
//! [`core::CentralCore::tick`] at the core's next wake-up (at least every
//! [`TICK_MAX`]); the messages the core returns are published in order, its events
//! applied to the metrics and the dashboard's stream. The core sits behind a
//! `std::sync::Mutex`, held only for a step (microseconds; publishing only queues),
//! never across an `.await`; the HTTP handlers read from it the same way.

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod regions;
pub mod reroute;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use protocol::fog;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::core::{CentralCore, Event, Outgoing};
pub use config::Config;
use metrics::Metrics;
use serverkit::clock;
use serverkit::link::LinkStatus;
pub use serverkit::{Clock, cancel_on_signal};
use serverkit::{Link, LinkSettings, Publisher};

/// The timer task calls the core's `tick` at least this often (real time), besides at
/// its next wake-up.
pub const TICK_MAX: Duration = Duration::from_millis(20);

/// State shared between the message loop, the timer task and the HTTP handlers.
/// Locks are only held for synchronous work (microseconds), never across an `.await`.
pub struct Shared {
    core: Mutex<CentralCore>,
    pub clock: Clock,
    /// The latest time handed to the core: the clock, never going back (the wall
    /// clock may step back).
    last_ms: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub registry: prometheus_client::registry::Registry,
    publisher: Publisher,
    link: Arc<LinkStatus>,
    /// Wakes the timer task (a message may have brought the next wake-up forward).
    timer_wake: tokio::sync::Notify,
    pub dashboard: dashboard::Dashboard,
}

impl Shared {
    /// Locks the core (recovering it if a panic poisoned the lock). Never hold the
    /// guard across an `.await`.
    pub fn core(&self) -> MutexGuard<'_, CentralCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now on the shared clock, never earlier than a time already handed out.
    pub fn now_ms(&self) -> u64 {
        let now = self.clock.now_ms();
        self.last_ms.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Whether central is connected to the central broker and subscribed.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// One step of the core at the current time: applies its events to the metrics and
    /// the dashboard's stream, then publishes what it returned, in order. All under the
    /// core's lock, so that steps publish in the order they were taken (publishing only
    /// queues, it never blocks).
    fn step(&self, f: impl FnOnce(&mut CentralCore, u64) -> Vec<Outgoing>) {
        let mut core = self.core();
        let now = self.now_ms();
        let out = f(&mut core, now);
        let speed = core.settings().speed();
        for event in core.take_events() {
            self.metrics.apply(&event, speed);
            if let Event::RerouteAnswered(answered) = event {
                if let Some(moved) = answered.moved {
                    self.dashboard.on_reroute(moved);
                }
            }
        }
        for o in &out {
            self.publisher
                .publish(&o.topic, &o.payload, o.qos(), o.retain);
        }
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
    let started_ms = clock.now_ms();
    let mut settings = config.core_settings();
    // A clock file's speed replaces --clock-speed.
    settings.clock_speed = clock.speed();
    let shared = Arc::new(Shared {
        core: Mutex::new(CentralCore::new(settings, started_ms)),
        clock,
        last_ms: AtomicU64::new(started_ms),
        registry: metrics.registry(),
        metrics,
        publisher: link.publisher(),
        link: link.status(),
        timer_wake: tokio::sync::Notify::new(),
        dashboard: dashboard::Dashboard::new(config.report_file.clone(), shutdown.clone()),
    });

    let mut tasks = JoinSet::new();
    let http_addr = match http_listener {
        Some(listener) => Some(serve_http(listener, &shared, &mut tasks, &shutdown)?),
        None => None,
    };
    tasks.spawn(timers(shared.clone(), shutdown.clone()));
    let loop_shared = shared.clone();
    let task = tokio::spawn(async move {
        serve(&mut link, &loop_shared, &shutdown).await;
        shutdown.cancel();
        // Running reroutes answer "shutting down" at once; those replies go out
        // before the link closes.
        loop_shared.step(|core, now| core.shutdown(now));
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

/// The message loop: every message is a step of the core; nothing here waits on
/// anything but the next message.
async fn serve(link: &mut Link, shared: &Shared, shutdown: &CancellationToken) {
    while let Some(msg) = link.next(shutdown).await {
        shared.step(|core, now| core.receive(msg.topic(), msg.payload(), now));
        shared.timer_wake.notify_one();
    }
}

/// The core's timers: `tick` at its next wake-up, or after [`TICK_MAX`], or when a
/// message may have brought the wake-up forward; until `shutdown`.
async fn timers(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        shared.step(|core, now| core.tick(now));
        let wait = {
            let core = shared.core();
            let now = shared.now_ms();
            core.next_wake_ms().map_or(TICK_MAX, |at| {
                let real = core.settings().real(at.saturating_sub(now));
                real.clamp(Duration::from_millis(1), TICK_MAX)
            })
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            _ = shared.timer_wake.notified() => {}
        }
    }
}
