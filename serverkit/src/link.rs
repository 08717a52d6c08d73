//! The MQTT connection: one task owns it (see [`Link::next`]); everyone else publishes
//! through a [`Publisher`]. Persistent session, QoS 1, reconnect with back-off, every
//! subscription restored after each reconnect, a silent broker noticed by the
//! keep-alive, and a second client with the same client id detected instead of fought.
//!
//! # One paho client per connection, retired off the callback threads
//!
//! Each connection is made by a new paho client (reusing a client whose connection
//! died with QoS 1 messages in flight sent malformed packets and corrupted memory in
//! paho.mqtt.c 1.3 after a broker crash). The old client must be destroyed, or every
//! reconnect leaks it, but never by the C library's own thread: a connect token holds a
//! clone of its client, and when the token's callback, which runs inside the library's
//! global lock, drops the last clone, `MQTTAsync_destroy` waits for that same lock and
//! every paho client in the process deadlocks (eclipse-paho/paho.mqtt.rust#239). So a
//! client is never dropped while a connect is in flight: finished clients — and
//! clients whose connect future was dropped half-way, with their token — go to the
//! [`reaper`] thread, which waits for the token, lets the callback return, and only
//! then destroys the client.
//!
//! # Nothing acknowledged is lost
//!
//! Messages come in through one channel that outlives the clients, so nothing
//! received before a connection loss is dropped with its client. QoS 1 publishes are
//! tracked until the broker acknowledges them; what the old client still held
//! unacknowledged is published again by the new one (at least once: receivers
//! de-duplicate by id), and what was published while disconnected waits in an outbox.
//!
//! # Takeover
//!
//! The link speaks MQTT 5 so that the broker says why it closes a connection: reason
//! 0x8E "session taken over" means another client connected with this client id (a
//! second instance of the same server). The link then logs one error per episode,
//! reports itself taken over ([`LinkStatus`]), and waits with a back-off growing to
//! [`MAX_TAKEOVER_BACKOFF`] before connecting again, so two instances swap the
//! connection a few times a minute instead of hundreds of times a second.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paho_mqtt as mqtt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How to reach a broker.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// `tcp://host:port` (or `ssl://…`).
    pub url: String,
    pub client_id: String,
    /// Keep the session (subscriptions, queued QoS 1 messages) across disconnects.
    pub persistent: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Published by the broker when this client vanishes without disconnecting.
    pub will: Option<Will>,
    /// For `ssl://` brokers: the CA certificate (PEM) the broker's certificate must
    /// chain to (default: the system's trust store).
    pub ca_file: Option<std::path::PathBuf>,
    /// A broker that stops answering (host gone, process stopped, connection
    /// half-open) is noticed within twice this. paho declares the connection dead when
    /// a ping goes unanswered for one MQTT keep-alive after an idle keep-alive, and
    /// checks once a second: so the keep-alive sent to the broker is this less one
    /// second (at least one second).
    pub keep_alive: Duration,
    /// The longest wait before connecting again after a takeover (see the module
    /// docs); the first wait is a thirtieth of it, doubling with each takeover.
    pub max_takeover_backoff: Duration,
}

/// The keep-alive of [`LinkSettings::default`].
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            persistent: false,
            username: None,
            password: None,
            will: None,
            ca_file: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            max_takeover_backoff: MAX_TAKEOVER_BACKOFF,
        }
    }
}

/// A last-will message.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: i32,
    pub retain: bool,
}

/// What a link is doing, for readiness checks and metrics. Cheap to read from any task.
#[derive(Debug, Default)]
pub struct LinkStatus {
    connected: AtomicBool,
    taken_over: AtomicBool,
    reconnects: AtomicU64,
    takeovers: AtomicU64,
}

impl LinkStatus {
    /// Connected and subscribed.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The last connection was taken over by another client with the same client id,
    /// and this link has not got it back yet.
    pub fn is_taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Acquire)
    }

    /// Reconnections since the first connect.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Connections taken over by another client with the same client id.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }
}

/// Most messages kept while disconnected; beyond it the oldest are dropped (with a
/// warning).
const OUTBOX_LIMIT: usize = 100_000;
/// Most unacknowledged QoS 1 messages tracked for a resend after a reconnect.
const INFLIGHT_LIMIT: usize = 200_000;
/// Most received messages waiting for [`Link::next`]; beyond it paho's callback drops
/// them (with a warning). Allocated as it fills, not up front.
const INCOMING_LIMIT: usize = 100_000;

/// The state every [`Publisher`] and the [`Link`] share.
struct Shared {
    /// The current client. Publishers take it for reading; the link replaces it (and
    /// hands over the outbox and the unacknowledged messages) under the write lock, so
    /// no publish falls between two clients.
    client: RwLock<mqtt::AsyncClient>,
    status: Arc<LinkStatus>,
    /// Messages published while disconnected, sent by the next client once connected.
    outbox: Mutex<VecDeque<mqtt::Message>>,
    /// QoS ≥ 1 publishes not yet known to be acknowledged, oldest first.
    inflight: Mutex<VecDeque<mqtt::DeliveryToken>>,
}

impl Shared {
    /// Publishes through `client` (the current one, read-locked by the caller).
    fn send(&self, client: &mqtt::AsyncClient, msg: mqtt::Message) {
        let qos = msg.qos();
        let topic_for_log = || msg.topic().to_owned();
        match client.try_publish(msg.clone()) {
            Ok(token) if qos != mqtt::QoS::AtMostOnce => self.track(token),
            Ok(_) => {}
            Err(e) => warn!(topic = %topic_for_log(), error = %e, "publish failed"),
        }
    }

    fn track(&self, token: mqtt::DeliveryToken) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // Acknowledgements come in order: drop what is done from the front. A publish
        // that failed (its connection broke while it was written) goes out again after
        // the reconnect.
        while let Some(front) = inflight.front_mut() {
            match poll_now(front) {
                None => break,
                Some(Ok(())) => {}
                Some(Err(_)) => self.queue(front.message().clone()),
            }
            inflight.pop_front();
        }
        if inflight.len() >= INFLIGHT_LIMIT {
            inflight.pop_front();
            warn!(
                limit = INFLIGHT_LIMIT,
                "too many unacknowledged messages: the oldest is no longer tracked"
            );
        }
        inflight.push_back(token);
    }

    /// Waits up to `wait` for the acknowledgements of the tracked publishes. The
    /// acknowledged ones are forgotten, a failed one goes to the outbox (as in
    /// [`Shared::track`]); the rest stay tracked, in order.
    async fn settle_inflight(&self, wait: Duration) {
        let pending: Vec<mqtt::DeliveryToken> = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        let mut left = Vec::new();
        for mut token in pending {
            // Past the deadline this still takes a token that is already done.
            match tokio::time::timeout_at(deadline, &mut token).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => self.queue(token.message().clone()),
                Err(_) => left.push(token),
            }
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for token in left.into_iter().rev() {
            inflight.push_front(token);
        }
    }

    fn queue(&self, msg: mqtt::Message) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if outbox.len() >= OUTBOX_LIMIT {
            outbox.pop_front();
            warn!(
                limit = OUTBOX_LIMIT,
                "outbox full while disconnected: oldest message dropped"
            );
        }
        outbox.push_back(msg);
    }
}

/// The result of a delivery token if it has one yet (takes it: ask once).
fn poll_now(token: &mut mqtt::DeliveryToken) -> Option<mqtt::Result<()>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(token).poll(&mut cx) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// Publishes through a [`Link`]'s connection from any task (also after the link has
/// replaced its client on a reconnect).
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

fn message(topic: &str, payload: &[u8], qos: i32, retain: bool) -> mqtt::Message {
    if retain {
        mqtt::Message::new_retained(topic, payload, qos)
    } else {
        mqtt::Message::new(topic, payload, qos)
    }
}

impl Publisher {
    /// Queues a message without waiting for the broker's acknowledgement; while the
    /// link is down it waits in the link's outbox and goes out after the reconnect. A
    /// QoS 1 message the broker has not acknowledged when the connection is lost is
    /// published again after the reconnect.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: i32, retain: bool) {
        let msg = message(topic, payload, qos, retain);
        let client = self.shared.client.read().unwrap_or_else(|e| e.into_inner());
        if self.shared.status.is_connected() {
            self.shared.send(&client, msg);
        } else {
            self.shared.queue(msg);
        }
    }

    /// Publishes and waits for the broker's acknowledgement.
    pub async fn publish_confirmed(
        &self,
        topic: &str,
        payload: &[u8],
        qos: i32,
        retain: bool,
    ) -> anyhow::Result<()> {
        let msg = message(topic, payload, qos, retain);
        let client = self
            .shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        client
            .publish(msg)
            .await
            .with_context(|| format!("publishing to {topic}"))
    }

    /// The link's status.
    pub fn status(&self) -> Arc<LinkStatus> {
        self.shared.status.clone()
    }
}

/// Why the current client's connection ended, set by paho's callbacks.
#[derive(Default)]
struct Loss {
    lost: AtomicBool,
    taken_over: AtomicBool,
    notify: Notify,
}

/// A connected client plus what it needs to come back after a connection loss.
pub struct Link {
    shared: Arc<Shared>,
    /// Every client's message callback sends here; the link keeps a sender for the
    /// next client, so the channel outlives them all.
    incoming_tx: mpsc::Sender<mqtt::Message>,
    incoming: mpsc::Receiver<mqtt::Message>,
    /// The current client's connection loss.
    loss: Arc<Loss>,
    settings: LinkSettings,
    connect_opts: mqtt::ConnectOptions,
    subscriptions: Vec<(String, i32)>,
    connected_at: Instant,
    /// The wait before the next connect after a takeover, while an episode lasts.
    takeover_backoff: Option<Duration>,
    /// The last loss after which the broker took the link back at once.
    last_kick: Option<Instant>,
    /// Called after every reconnection (for metrics).
    pub on_reconnect: Option<Box<dyn Fn() + Send + Sync>>,
    /// Called after every takeover (for metrics).
    pub on_takeover: Option<Box<dyn Fn() + Send + Sync>>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long [`Link::disconnect`] waits for the acknowledgements of messages in flight.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for one connect (paho gives up after its own 5 s first) or resubscribe.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the hand-over client's connection ([`Link::hand_over`]).
const HANDOVER_CONNECT: Duration = Duration::from_secs(2);
/// The longest wait after a takeover, by default ([`LinkSettings::max_takeover_backoff`]).
pub const MAX_TAKEOVER_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lasted this long ends a takeover episode.
const STABLE: Duration = Duration::from_secs(60);

/// Why a connect attempt failed.
enum Failed {
    /// The settings cannot work (bad URL, unreadable CA file): no point retrying.
    Fatal(anyhow::Error),
    Retry(String),
}

impl Link {
    /// Connects (retrying until `shutdown`) and subscribes to every `(filter, qos)`.
    pub async fn connect(
        settings: &LinkSettings,
        subscriptions: Vec<(String, i32)>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let connect_opts = connect_options(settings)?;
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_LIMIT);
        let mut link = Self {
            shared: Arc::new(Shared {
                client: RwLock::new(create_client(settings, &incoming_tx)?.0),
                status: Arc::default(),
                outbox: Mutex::default(),
                inflight: Mutex::default(),
            }),
            incoming_tx,
            incoming,
            loss: Arc::default(),
            settings: settings.clone(),
            connect_opts,
            subscriptions,
            connected_at: Instant::now(),
            takeover_backoff: None,
            last_kick: None,
            on_reconnect: None,
            on_takeover: None,
        };
        let mut backoff = MIN_BACKOFF;
        let (client, loss) = loop {
            match link.connect_once(shutdown).await {
                Some(Ok(connected)) => break connected,
                Some(Err(e)) => {
                    warn!(url = %settings.url, error = %e, retry_in = ?backoff, "cannot reach the broker yet");
                }
                None => anyhow::bail!("shut down before the broker at {} answered", settings.url),
            }
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("shut down before the broker at {} answered", settings.url),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        // The placeholder client never connected: nothing of the C library holds it.
        let placeholder = std::mem::replace(
            &mut *link
                .shared
                .client
                .write()
                .unwrap_or_else(|e| e.into_inner()),
            client,
        );
        reaper::retire(placeholder, None);
        link.loss = loss;
        link.connected_at = Instant::now();
        link.shared.status.connected.store(true, Ordering::Release);
        info!(url = %settings.url, client_id = %settings.client_id, "connected to the broker");
        Ok(link)
    }

    /// Messages received and not yet taken by [`Link::next`].
    pub fn queued(&self) -> usize {
        self.incoming.len()
    }

    /// What the link is doing (connected, taken over, counters).
    pub fn status(&self) -> Arc<LinkStatus> {
        self.shared.status.clone()
    }

    /// The next message; reconnects and resubscribes transparently. `None` once
    /// `shutdown` is cancelled.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<mqtt::Message> {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                m = self.incoming.recv() => {
                    // The link holds a sender: the channel never closes.
                    if let Some(msg) = m {
                        return Some(msg);
                    }
                }
                _ = self.loss.notify.notified() => {}
            }
            if self.loss.lost.load(Ordering::Acquire) && !self.recover(shutdown).await {
                return None;
            }
        }
    }

    /// After a connection loss: waits if the connection was taken over, then connects
    /// a new client. False if `shutdown` came first.
    ///
    /// A takeover is known when the broker says so (MQTT 5 reason 0x8E), or inferred:
    /// a loss after which the broker takes the link back at the first attempt (so it
    /// was up: somebody closed the connection) is a *kick*; a second kick within
    /// [`STABLE`] of the first means another client keeps taking this client id.
    async fn recover(&mut self, shutdown: &CancellationToken) -> bool {
        let status = self.shared.status.clone();
        status.connected.store(false, Ordering::Release);
        let lasted = self.connected_at.elapsed();
        if lasted >= STABLE {
            // A connection that lasted ends an episode.
            self.takeover_backoff = None;
        }
        let told = self.loss.taken_over.load(Ordering::Acquire);
        let kicked_recently = self.last_kick.is_some_and(|t| t.elapsed() < STABLE);
        if told || kicked_recently {
            self.last_kick = Some(Instant::now());
            status.taken_over.store(true, Ordering::Release);
            status.takeovers.fetch_add(1, Ordering::Relaxed);
            if let Some(cb) = &self.on_takeover {
                cb();
            }
            let wait = match self.takeover_backoff {
                None => {
                    error!(
                        client_id = %self.settings.client_id,
                        url = %self.settings.url,
                        "the broker handed this client's connection to another client with the same client id: \
                         most likely a second instance of this server is running (check for a double start, \
                         or a rolling update whose old instance has not stopped); not ready while it lasts, \
                         retrying with a back-off of up to {:?}",
                        self.settings.max_takeover_backoff
                    );
                    self.settings.max_takeover_backoff / 30
                }
                Some(previous) => (previous * 2).min(self.settings.max_takeover_backoff),
            };
            self.takeover_backoff = Some(wait);
            warn!(client_id = %self.settings.client_id, after = ?lasted, retry_in = ?wait, "connection taken over");
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            return self.reconnect(shutdown).await;
        }
        warn!(after = ?lasted, "connection to the broker lost; reconnecting");
        match self.connect_once(shutdown).await {
            Some(Ok((client, loss))) => {
                // Back at the first attempt: the broker was up all along.
                self.last_kick = Some(Instant::now());
                self.activate(client, loss);
                true
            }
            Some(Err(e)) => {
                warn!(error = %e, "reconnect failed");
                self.reconnect(shutdown).await
            }
            None => false,
        }
    }

    /// Connects again with a new client (same id, same session), resubscribes, and
    /// hands the outbox and the unacknowledged messages to it.
    async fn reconnect(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect_once(shutdown).await {
                Some(Ok((client, loss))) => {
                    self.activate(client, loss);
                    return true;
                }
                Some(Err(e)) => warn!(error = %e, retry_in = ?backoff, "reconnect failed"),
                None => return false,
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connect and resubscribe with a new client. `None` if `shutdown` came first.
    async fn connect_once(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<Result<(mqtt::AsyncClient, Arc<Loss>), String>> {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            a = attempt(&self.settings, &self.connect_opts, &self.incoming_tx) => a,
        };
        let (client, loss) = match attempt {
            Ok(connected) => connected,
            Err(Failed::Fatal(e)) => return Some(Err(format!("{e:#}"))),
            Err(Failed::Retry(e)) => return Some(Err(e)),
        };
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => {
                reaper::retire(client, None);
                return None;
            }
            s = tokio::time::timeout(STEP_TIMEOUT, subscribe_all(&client, &self.subscriptions)) => s,
        };
        match subscribed {
            Ok(Ok(())) => Some(Ok((client, loss))),
            Ok(Err(e)) => {
                reaper::retire(client, None);
                Some(Err(format!("resubscribe failed: {e:#}")))
            }
            Err(_) => {
                reaper::retire(client, None);
                Some(Err(format!(
                    "resubscribe: no answer within {STEP_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Makes `client` the current one: what was published while disconnected and what
    /// the old client still held unacknowledged go out through it.
    fn activate(&mut self, client: mqtt::AsyncClient, loss: Arc<Loss>) {
        let (old, resent, queued) = {
            let mut current = self
                .shared
                .client
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let old = std::mem::replace(&mut *current, client);
            let unacknowledged: Vec<mqtt::DeliveryToken> = self
                .shared
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            let outbox: Vec<mqtt::Message> = self
                .shared
                .outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            let mut resent = 0;
            for mut token in unacknowledged {
                if !matches!(poll_now(&mut token), Some(Ok(()))) {
                    self.shared.send(&current, token.message().clone());
                    resent += 1;
                }
            }
            let queued = outbox.len();
            for msg in outbox {
                self.shared.send(&current, msg);
            }
            let status = &self.shared.status;
            status.connected.store(true, Ordering::Release);
            status.taken_over.store(false, Ordering::Release);
            status.reconnects.fetch_add(1, Ordering::Relaxed);
            (old, resent, queued)
        };
        reaper::retire(old, None);
        self.loss = loss;
        self.connected_at = Instant::now();
        info!(
            sent_from_outbox = queued,
            resent_unacknowledged = resent,
            "reconnected and resubscribed"
        );
        if let Some(cb) = &self.on_reconnect {
            cb();
        }
    }

    /// Queues a message for sending without waiting for the broker's acknowledgement
    /// (see [`Publisher::publish`]).
    pub fn publish(&self, topic: &str, payload: &[u8], qos: i32, retain: bool) {
        self.publisher().publish(topic, payload, qos, retain);
    }

    /// A handle other tasks can publish through.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            shared: self.shared.clone(),
        }
    }

    /// A message already received, without waiting and without reconnecting (for
    /// draining what came in before [`Link::disconnect`]).
    pub fn try_next(&mut self) -> Option<mqtt::Message> {
        self.incoming.try_recv().ok()
    }

    /// After [`Link::disconnect`]: sends what is still waiting — the outbox (messages
    /// published since the disconnect, e.g. the answers to the messages drained with
    /// [`Link::try_next`]) and anything not acknowledged — and then `last`, through a
    /// short-lived client of its own (`client_id`, clean session, `last` also its will),
    /// and waits for each acknowledgement. So a server can answer everything it took
    /// from its session and only then say it is gone, while its session (still holding
    /// what arrives meanwhile) waits for the next instance. Returns how many messages
    /// went out before `last`.
    pub async fn hand_over(&self, client_id: &str, last: &Will) -> anyhow::Result<usize> {
        let mut waiting: Vec<mqtt::Message> = self
            .shared
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .filter_map(|mut token| {
                (!matches!(poll_now(&mut token), Some(Ok(())))).then(|| token.message().clone())
            })
            .collect();
        waiting.extend(
            self.shared
                .outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
        let settings = LinkSettings {
            client_id: client_id.to_owned(),
            persistent: false,
            will: Some(last.clone()),
            ..self.settings.clone()
        };
        let opts = connect_options(&settings)?;
        let (unused, _) = mpsc::channel(1);
        // Bounded: a server stopping must be gone within its grace period even when
        // the broker accepts connections and never answers (dropped half-way, the
        // attempt hands its client to the reaper).
        let (client, _) =
            tokio::time::timeout(HANDOVER_CONNECT, attempt(&settings, &opts, &unused))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {HANDOVER_CONNECT:?}"))
                .and_then(|a| {
                    a.map_err(|e| match e {
                        Failed::Fatal(e) => e,
                        Failed::Retry(e) => anyhow::anyhow!(e),
                    })
                })
                .context("connecting to hand over")?;
        let sent = waiting.len();
        let result = async {
            let tokens: Vec<_> = waiting.into_iter().map(|m| client.publish(m)).collect();
            for token in tokens {
                tokio::time::timeout(STEP_TIMEOUT, token)
                    .await
                    .context("handing over: no acknowledgement")??;
            }
            let release = message(&last.topic, &last.payload, last.qos, last.retain);
            tokio::time::timeout(STEP_TIMEOUT, client.publish(release))
                .await
                .context("handing over: no acknowledgement")??;
            let opts = mqtt::DisconnectOptionsBuilder::new()
                .timeout(Duration::from_secs(2))
                .finalize();
            tokio::time::timeout(Duration::from_secs(3), client.disconnect(opts))
                .await
                .context("handing over: disconnect")??;
            anyhow::Ok(())
        }
        .await;
        reaper::retire(client, None);
        result.map(|()| sent)
    }

    /// Disconnects cleanly, after waiting up to [`DISCONNECT_WAIT`] for the
    /// acknowledgements of the messages in flight; what is still unacknowledged then
    /// stays tracked (for [`Link::hand_over`]). False if the broker did not take the
    /// disconnect (not connected, or not answering).
    ///
    /// The link waits for the acknowledgements itself and then has paho disconnect at
    /// once: paho's own wait (a disconnect timeout) ends only on its timeout check,
    /// which runs once every 3 s, not when the last acknowledgement arrives, so a
    /// server stopping — or a fog server's lease watcher — with one message in flight
    /// took up to 3 s to go.
    pub async fn disconnect(&self) -> bool {
        let connected = self.shared.status.connected.swap(false, Ordering::AcqRel);
        if connected && !self.loss.lost.load(Ordering::Acquire) {
            self.shared.settle_inflight(DISCONNECT_WAIT).await;
        }
        let client = self
            .shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let opts = mqtt::DisconnectOptionsBuilder::new()
            .timeout(Duration::ZERO)
            .finalize();
        match tokio::time::timeout(Duration::from_secs(3), client.disconnect(opts)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "disconnect failed");
                false
            }
            Err(_) => {
                warn!("disconnect: no answer within 3 s");
                false
            }
        }
    }
}

/// Subscribes `client` to every `(filter, qos)`.
async fn subscribe_all(
    client: &mqtt::AsyncClient,
    subscriptions: &[(String, i32)],
) -> anyhow::Result<()> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let (filters, qos): (Vec<&str>, Vec<i32>) =
        subscriptions.iter().map(|(f, q)| (f.as_str(), *q)).unzip();
    client
        .subscribe_many(&filters, &qos)
        .await
        .context("subscribing")?;
    Ok(())
}

/// The MQTT keep-alive for a link that must notice a silent broker within twice
/// `keep_alive` (see [`LinkSettings::keep_alive`]).
fn mqtt_keep_alive(keep_alive: Duration) -> Duration {
    keep_alive
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

/// The connect options for `settings` (MQTT 5; a persistent session never expires).
fn connect_options(settings: &LinkSettings) -> anyhow::Result<mqtt::ConnectOptions> {
    let mut builder = mqtt::ConnectOptionsBuilder::new_v5();
    builder
        .clean_start(!settings.persistent)
        .keep_alive_interval(mqtt_keep_alive(settings.keep_alive))
        .connect_timeout(Duration::from_secs(5))
        .max_inflight(1_000);
    if settings.persistent {
        let mut props = mqtt::Properties::new();
        props
            .push_u32(mqtt::PropertyCode::SessionExpiryInterval, u32::MAX)
            .context("session expiry property")?;
        builder.properties(props);
    }
    if let Some(user) = &settings.username {
        builder.user_name(user);
    }
    if let Some(password) = &settings.password {
        builder.password(password.as_str());
    }
    if settings.url.starts_with("ssl://") || settings.url.starts_with("mqtts://") {
        let mut ssl = mqtt::SslOptionsBuilder::new();
        if let Some(ca) = &settings.ca_file {
            ssl.trust_store(ca)
                .with_context(|| format!("CA file {}", ca.display()))?;
        }
        builder.ssl_options(ssl.finalize());
    }
    if let Some(will) = &settings.will {
        builder.will_message(message(&will.topic, &will.payload, will.qos, will.retain));
    }
    Ok(builder.finalize())
}

/// One connect with a new client. On success the client is connected and its
/// callbacks feed `incoming` and the returned [`Loss`].
async fn attempt(
    settings: &LinkSettings,
    opts: &mqtt::ConnectOptions,
    incoming: &mpsc::Sender<mqtt::Message>,
) -> Result<(mqtt::AsyncClient, Arc<Loss>), Failed> {
    let (client, loss) = create_client(settings, incoming).map_err(Failed::Fatal)?;
    let token = client.connect(opts.clone());
    // If this future is dropped before the connect is over, the client and its token
    // go to the reaper, never dropped here (see the module docs).
    let mut connecting = Connecting {
        client: Some(client),
        token: Some(token),
    };
    let result = match connecting.token.as_mut() {
        Some(token) => tokio::time::timeout(STEP_TIMEOUT, token).await,
        None => unreachable!("set above"),
    };
    let Ok(result) = result else {
        // Still in flight: `connecting` hands client and token to the reaper.
        return Err(Failed::Retry(format!("no answer within {STEP_TIMEOUT:?}")));
    };
    connecting.token = None;
    let client = connecting.client.take().expect("set above");
    // The token's callback may still be running (it drops its clone of the client
    // inside the library's lock): this takes the same lock, so it returns after.
    let _ = client.is_connected();
    match result {
        Ok(_) => Ok((client, loss)),
        Err(e) => {
            reaper::retire(client, None);
            Err(Failed::Retry(e.to_string()))
        }
    }
}

/// A client whose connect may be in flight.
struct Connecting {
    client: Option<mqtt::AsyncClient>,
    token: Option<mqtt::Token>,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            reaper::retire(client, self.token.take());
        }
    }
}

/// A paho client for `settings` whose callbacks feed `incoming` and its [`Loss`].
fn create_client(
    settings: &LinkSettings,
    incoming: &mpsc::Sender<mqtt::Message>,
) -> anyhow::Result<(mqtt::AsyncClient, Arc<Loss>)> {
    let client = mqtt::CreateOptionsBuilder::new()
        .mqtt_version(mqtt::MQTT_VERSION_5)
        .server_uri(&settings.url)
        .client_id(&settings.client_id)
        .persistence(mqtt::PersistenceType::None)
        .max_buffered_messages(100_000)
        .send_while_disconnected(true)
        .create_client()
        .with_context(|| format!("invalid broker url {:?}", settings.url))?;
    let loss = Arc::new(Loss::default());
    let tx = incoming.clone();
    client.set_message_callback(move |_, msg| {
        if let Some(msg) = msg {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
                warn!(
                    limit = INCOMING_LIMIT,
                    "incoming messages not read fast enough: message dropped"
                );
            }
        }
    });
    let lost = loss.clone();
    client.set_connection_lost_callback(move |_| {
        lost.lost.store(true, Ordering::Release);
        lost.notify.notify_one();
    });
    let lost = loss.clone();
    client.set_disconnected_callback(move |_, _, reason| {
        if reason == mqtt::ReasonCode::SessionTakenOver {
            lost.taken_over.store(true, Ordering::Release);
        }
        lost.lost.store(true, Ordering::Release);
        lost.notify.notify_one();
    });
    Ok((client, loss))
}

/// Destroys retired paho clients on a thread of its own, once nothing of the C library
/// can still hold them (see the module docs).
mod reaper {
    use super::*;

    struct Retired {
        client: mqtt::AsyncClient,
        /// A connect still in flight: waited for before the client goes.
        connect: Option<mqtt::Token>,
    }

    /// Longest wait for a connect token (paho's own connect timeout is 5 s).
    const CONNECT_WAIT: Duration = Duration::from_secs(60);

    static REAPER: OnceLock<Mutex<std::sync::mpsc::Sender<Retired>>> = OnceLock::new();

    /// Hands `client` (with its connect token, if that may still be in flight) to the
    /// reaper thread, which destroys it.
    pub(super) fn retire(client: mqtt::AsyncClient, connect: Option<mqtt::Token>) {
        let sender = REAPER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Retired>();
            let spawned = std::thread::Builder::new()
                .name("mqtt-reaper".into())
                .spawn(move || {
                    for retired in rx {
                        reap(retired);
                    }
                });
            if let Err(e) = spawned {
                error!(error = %e, "cannot start the MQTT client reaper: retired clients are leaked");
            }
            Mutex::new(tx)
        });
        let sent = sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Retired { client, connect });
        if let Err(std::sync::mpsc::SendError(retired)) = sent {
            // No reaper: leaking is safe, dropping here might not be.
            std::mem::forget(retired.client);
            std::mem::forget(retired.connect);
        }
    }

    fn reap(retired: Retired) {
        let Retired { client, connect } = retired;
        if let Some(token) = connect {
            if let Err(mqtt::Error::Timeout) = token.wait_for(CONNECT_WAIT) {
                error!("a retired MQTT client's connect never finished: client leaked");
                std::mem::forget(client);
                return;
            }
        }
        // Let a callback still running on the client (inside the library's lock)
        // return and drop its clone, so that this is the last one.
        let _ = client.is_connected();
        std::thread::sleep(Duration::from_millis(50));
        let _ = client.is_connected();
        drop(client);
    }
}
