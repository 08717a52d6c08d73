//! The MQTT connection: one task owns it (see [`Link::next`]); everyone else talks to
//! that task. Persistent session, QoS 1, reconnect with back-off, and every
//! subscription restored after each reconnect (the broker may have lost the session).

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use paho_mqtt as mqtt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
}

/// A last-will message.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: i32,
    pub retain: bool,
}

/// Publishes through a [`Link`]'s connection from any task (also after the link has
/// replaced its client on a reconnect).
#[derive(Clone)]
pub struct Publisher {
    client: Arc<RwLock<mqtt::AsyncClient>>,
    connected: Arc<AtomicBool>,
    /// Messages published while disconnected, sent by the new client once connected.
    outbox: Arc<Mutex<VecDeque<mqtt::Message>>>,
}

/// Most messages kept while disconnected; beyond it the oldest are dropped (with a
/// warning).
const OUTBOX_LIMIT: usize = 100_000;

impl Publisher {
    /// Queues a message without waiting for the broker's acknowledgement; while the
    /// link is down it waits in the link's outbox and goes out after the reconnect.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: i32, retain: bool) {
        let msg = if retain {
            mqtt::Message::new_retained(topic, payload, qos)
        } else {
            mqtt::Message::new(topic, payload, qos)
        };
        if !self.connected.load(Ordering::Acquire) {
            let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            if outbox.len() >= OUTBOX_LIMIT {
                outbox.pop_front();
                warn!(
                    limit = OUTBOX_LIMIT,
                    "outbox full while disconnected: oldest message dropped"
                );
            }
            outbox.push_back(msg);
            return;
        }
        let client = self.client.read().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = client.try_publish(msg) {
            warn!(topic, error = %e, "publish failed");
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
        let msg = if retain {
            mqtt::Message::new_retained(topic, payload, qos)
        } else {
            mqtt::Message::new(topic, payload, qos)
        };
        let client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        client
            .publish(msg)
            .await
            .with_context(|| format!("publishing to {topic}"))
    }
}

/// A connected client plus what it needs to come back after a connection loss.
pub struct Link {
    client: mqtt::AsyncClient,
    /// The current client, for [`Publisher`]s.
    shared: Arc<RwLock<mqtt::AsyncClient>>,
    outbox: Arc<Mutex<VecDeque<mqtt::Message>>>,
    stream: mqtt::AsyncReceiver<Option<mqtt::Message>>,
    settings: LinkSettings,
    capacity: usize,
    connect_opts: mqtt::ConnectOptions,
    subscriptions: Vec<(String, i32)>,
    connected: Arc<AtomicBool>,
    /// Called after every reconnection (for metrics).
    pub on_reconnect: Option<Box<dyn Fn() + Send + Sync>>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for one reconnect or resubscribe.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    /// Connects (retrying until `shutdown`) and subscribes to every `(filter, qos)`.
    pub async fn connect(
        settings: &LinkSettings,
        subscriptions: Vec<(String, i32)>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        // The channel is allocated up front: small for a client that only publishes.
        let capacity = if subscriptions.is_empty() {
            16
        } else {
            100_000
        };
        let (client, stream) = create_client(settings, capacity)?;
        // Until its connect is over, the client must outlive the connect token's
        // callback, even if this future is dropped half-way (the runtime shutting
        // down): see `reconnect`. So it is leaked then rather than dropped.
        let client = ManuallyDrop::new(client);
        // The builder is not `Send`: keep it out of the awaits below.
        let connect_opts = {
            let mut builder = mqtt::ConnectOptionsBuilder::new_v3();
            builder
                .clean_session(!settings.persistent)
                .keep_alive_interval(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                .max_inflight(1_000);
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
                builder.will_message(if will.retain {
                    mqtt::Message::new_retained(&will.topic, will.payload.clone(), will.qos)
                } else {
                    mqtt::Message::new(&will.topic, will.payload.clone(), will.qos)
                });
            }
            builder.finalize()
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let result = client.connect(connect_opts.clone()).await;
            // paho-mqtt 0.14: the token's callback drops a clone of the client while
            // holding the C library's global lock; dropping the last clone before that
            // callback is over deadlocks every client in the process
            // (eclipse-paho/paho.mqtt.rust#239). This call takes the same lock, so it
            // returns only once the callback is done.
            let _ = client.is_connected();
            match result {
                Ok(_) => break,
                Err(e) => {
                    warn!(url = %settings.url, error = %e, retry_in = ?backoff, "cannot reach the broker yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("shut down before the broker at {} answered", settings.url),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let client = ManuallyDrop::into_inner(client);
        let link = Self {
            shared: Arc::new(RwLock::new(client.clone())),
            outbox: Arc::default(),
            client,
            stream,
            settings: settings.clone(),
            capacity,
            connect_opts,
            subscriptions,
            connected: Arc::new(AtomicBool::new(false)),
            on_reconnect: None,
        };
        link.subscribe_all().await?;
        link.connected.store(true, Ordering::Release);
        info!(url = %settings.url, client_id = %settings.client_id, "connected to the broker");
        Ok(link)
    }

    async fn subscribe_all(&self) -> anyhow::Result<()> {
        if self.subscriptions.is_empty() {
            return Ok(());
        }
        let (filters, qos): (Vec<&str>, Vec<i32>) = self
            .subscriptions
            .iter()
            .map(|(f, q)| (f.as_str(), *q))
            .unzip();
        self.client
            .subscribe_many(&filters, &qos)
            .await
            .context("subscribing")?;
        Ok(())
    }

    /// A flag that is true while connected and subscribed.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// The next message; reconnects and resubscribes transparently. `None` once
    /// `shutdown` is cancelled.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<mqtt::Message> {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = self.stream.recv() => m,
            };
            match received {
                Ok(Some(msg)) => return Some(msg),
                Ok(None) | Err(_) => {
                    self.connected.store(false, Ordering::Release);
                    warn!("connection to the broker lost; reconnecting");
                    if !self.reconnect(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Connects again with a new client (same id, same session): reusing a paho client
    /// whose connection died with QoS 1 messages in flight sent malformed packets and
    /// corrupted memory in paho.mqtt.c 1.3 after a broker crash. Messages queued in
    /// the old client that the broker never acknowledged are dropped with it; every
    /// device request is retried by its sender, every fog message is periodic or
    /// answered again.
    async fn reconnect(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = MIN_BACKOFF;
        loop {
            let (client, stream) = match create_client(&self.settings, self.capacity) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot create an MQTT client");
                    return false;
                }
            };
            // Not dropped while its connect may be in flight, even when this future is
            // dropped at the await below (a runtime shutting down drops its tasks): the
            // token's callback would then drop the last clone inside the C library's
            // lock and deadlock the process (see `connect`). Leaked in that case.
            let client = ManuallyDrop::new(client);
            let result =
                tokio::time::timeout(STEP_TIMEOUT, client.connect(self.connect_opts.clone())).await;
            let _ = client.is_connected(); // see `connect`: let the callback finish
            let failed = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {STEP_TIMEOUT:?}")),
            };
            let old = if failed.is_none() {
                let old = std::mem::replace(&mut self.client, ManuallyDrop::into_inner(client));
                self.stream = stream;
                *self.shared.write().unwrap_or_else(|e| e.into_inner()) = self.client.clone();
                Some(old)
            } else {
                // A client whose connect failed may still have a callback pending: it
                // must never drop the last clone (paho.mqtt.rust#239), so it is kept
                // (left in its `ManuallyDrop`).
                None
            };
            if let Some(old) = old {
                // The same hazard for the old client's pending tokens.
                std::mem::forget(old);
                match tokio::time::timeout(STEP_TIMEOUT, self.subscribe_all()).await {
                    Ok(Ok(())) => {
                        self.connected.store(true, Ordering::Release);
                        // What was published during the outage goes out now (later
                        // publishes go straight to the new client).
                        let queued: Vec<mqtt::Message> = self
                            .outbox
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .drain(..)
                            .collect();
                        let sent = queued.len();
                        for msg in queued {
                            if let Err(e) = self.client.try_publish(msg) {
                                warn!(error = %e, "publish after reconnect failed");
                            }
                        }
                        info!(sent_from_outbox = sent, "reconnected and resubscribed");
                        if let Some(cb) = &self.on_reconnect {
                            cb();
                        }
                        return true;
                    }
                    Ok(Err(e)) => warn!(error = %e, "resubscribe failed"),
                    Err(_) => warn!("resubscribe: no answer within {STEP_TIMEOUT:?}"),
                }
            } else if let Some(error) = failed {
                warn!(%error, retry_in = ?backoff, "reconnect failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Queues a message for sending without waiting for the broker's acknowledgement
    /// (QoS 1 delivery continues in the client library, also across reconnects).
    pub fn publish(&self, topic: &str, payload: &[u8], qos: i32, retain: bool) {
        self.publisher().publish(topic, payload, qos, retain);
    }

    /// A handle other tasks can publish through.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            client: self.shared.clone(),
            connected: self.connected.clone(),
            outbox: self.outbox.clone(),
        }
    }

    /// Disconnects cleanly (waiting briefly for in-flight messages).
    pub async fn disconnect(&self) {
        self.connected.store(false, Ordering::Release);
        let opts = mqtt::DisconnectOptionsBuilder::new()
            .timeout(Duration::from_secs(2))
            .finalize();
        if let Err(e) = self.client.disconnect(opts).await {
            warn!(error = %e, "disconnect failed");
        }
        let _ = self.client.is_connected(); // see `connect`: let the callback finish
    }
}

/// A paho client for `settings` and its message stream.
fn create_client(
    settings: &LinkSettings,
    capacity: usize,
) -> anyhow::Result<(
    mqtt::AsyncClient,
    mqtt::AsyncReceiver<Option<mqtt::Message>>,
)> {
    let mut client = mqtt::CreateOptionsBuilder::new_v3()
        .server_uri(&settings.url)
        .client_id(&settings.client_id)
        .persistence(mqtt::PersistenceType::None)
        .max_buffered_messages(100_000)
        .send_while_disconnected(true)
        .create_client()
        .with_context(|| format!("invalid broker url {:?}", settings.url))?;
    let stream = client.get_stream(capacity);
    Ok((client, stream))
}
