//! MQTT test clients over paho-mqtt (async, under tokio), and wait helpers.
//!
//! A [`TestClient`] opens its message stream before it connects (so nothing that a
//! persistent session delivers at connect time is lost), uses an unbounded stream, and
//! raises paho's `max_buffered_messages` so that bursts of publishes are not dropped.
//!
//! Every wait takes a timeout and fails with a message naming what it waited for.
//! [`TestClient::wait_for`] returns the next message on one topic (or filter) and keeps
//! messages on other topics in an internal buffer for later calls, in arrival order.
//! The only fixed-duration wait is [`TestClient::expect_silence`]: proving that nothing
//! arrives takes the whole duration by definition.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use paho_mqtt as mqtt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// How many outgoing messages paho buffers (its default, 100, silently drops a burst
/// unless every token is awaited).
pub const MAX_BUFFERED_MESSAGES: i32 = 100_000;

/// How long [`TestClient::connect`] waits for the CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the MQTT topic filter `filter` (with `+` and `#`) matches `topic`. An exact
/// topic matches itself.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    mqtt::topic_matcher::topic_matches(filter, topic)
}

/// An MQTT client for tests, with buffered, filter-aware receiving.
pub struct TestClient {
    client: mqtt::AsyncClient,
    stream: mqtt::AsyncReceiver<Option<mqtt::Message>>,
    /// Received but not yet returned, in arrival order.
    pending: VecDeque<mqtt::Message>,
    client_id: String,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient")
            .field("client_id", &self.client_id)
            .field("server_uri", &self.client.server_uri())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl TestClient {
    /// Connects with a clean session (MQTT 3.1.1).
    ///
    /// paho's C library sets TCP_NODELAY on every socket (it is compiled in; there is no
    /// option to turn it on or off from Rust).
    pub async fn connect(url: &str, client_id: &str) -> Result<TestClient> {
        Self::connect_with(url, client_id, true).await
    }

    /// Connects with a persistent session (`clean_session = false`): the broker keeps the
    /// subscriptions and queues QoS 1 messages while this client id is disconnected.
    pub async fn connect_persistent(url: &str, client_id: &str) -> Result<TestClient> {
        Self::connect_with(url, client_id, false).await
    }

    /// Connects with a clean session as `user` (broker authentication).
    pub async fn connect_as(
        url: &str,
        client_id: &str,
        user: &str,
        password: &str,
    ) -> Result<TestClient> {
        let opts = mqtt::ConnectOptionsBuilder::new_v3()
            .clean_session(true)
            .keep_alive_interval(Duration::from_secs(30))
            .connect_timeout(CONNECT_TIMEOUT)
            .user_name(user)
            .password(password)
            .finalize();
        Self::connect_with_options(url, client_id, opts).await
    }

    /// Connects with the given clean-session flag.
    pub async fn connect_with(
        url: &str,
        client_id: &str,
        clean_session: bool,
    ) -> Result<TestClient> {
        let opts = mqtt::ConnectOptionsBuilder::new_v3()
            .clean_session(clean_session)
            .keep_alive_interval(Duration::from_secs(30))
            .connect_timeout(CONNECT_TIMEOUT)
            .finalize();
        Self::connect_with_options(url, client_id, opts).await
    }

    /// Connects with caller-made connect options (will message, MQTT v5, …).
    pub async fn connect_with_options(
        url: &str,
        client_id: &str,
        opts: mqtt::ConnectOptions,
    ) -> Result<TestClient> {
        let mut client = mqtt::CreateOptionsBuilder::new()
            .server_uri(url)
            .client_id(client_id)
            .max_buffered_messages(MAX_BUFFERED_MESSAGES)
            .create_client()
            .with_context(|| format!("create MQTT client {client_id:?} for {url}"))?;
        // Before connect: a persistent session may deliver messages right away.
        let stream = client.get_stream(None);
        // Leaked rather than dropped should this future be dropped while the connect is
        // in flight (see below).
        let client = std::mem::ManuallyDrop::new(client);
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            client.connect(opts),
        )
        .await;
        // paho-mqtt 0.14 hazard: the connect token holds a clone of the client, and the C
        // library runs the token's callback (which drops it) while holding its global
        // mutex. If that clone is the last one, `MQTTAsync_destroy` locks the same mutex
        // and every paho client in the process deadlocks (eclipse-paho/paho.mqtt.rust#239,
        // reproduced here with 0.14.0; see tests/paho_connect_failure.rs). So the callback
        // must be over before our clone may be dropped.
        let Ok(result) = connected else {
            // The callback may still come: never let it own the last clone (leak it; tests
            // only, and only when a broker hangs for 10 s).
            bail!("MQTT client {client_id:?}: no CONNACK from {url} within {CONNECT_TIMEOUT:?}");
        };
        // The token completed inside the callback; this takes the same global mutex, so it
        // returns only once the callback (and its drop of the token) is over.
        let _ = client.is_connected();
        let client = std::mem::ManuallyDrop::into_inner(client);
        result.with_context(|| format!("MQTT client {client_id:?}: connect to {url}"))?;
        Ok(TestClient {
            client,
            stream,
            pending: VecDeque::new(),
            client_id: client_id.to_owned(),
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The underlying paho client, for anything not covered here.
    pub fn inner(&self) -> &mqtt::AsyncClient {
        &self.client
    }

    /// Subscribes and waits for the SUBACK; fails if the broker refused.
    pub async fn subscribe(&self, filter: &str, qos: i32) -> Result<()> {
        let rsp = self
            .client
            .subscribe(filter, qos)
            .await
            .with_context(|| format!("{}: subscribe to {filter:?}", self.client_id))?;
        if let Some(granted) = rsp.subscribe_response() {
            if !(0..=2).contains(&granted) {
                bail!(
                    "{}: broker refused subscription to {filter:?} (granted {granted})",
                    self.client_id
                );
            }
        }
        Ok(())
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) -> Result<()> {
        self.client
            .unsubscribe(filter)
            .await
            .with_context(|| format!("{}: unsubscribe from {filter:?}", self.client_id))?;
        Ok(())
    }

    /// Publishes and waits until delivery completes (PUBACK for QoS 1, handed to the
    /// socket for QoS 0).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: i32,
        retained: bool,
    ) -> Result<()> {
        self.publish_no_wait(topic, payload, qos, retained)
            .await
            .with_context(|| format!("{}: publish to {topic:?}", self.client_id))
    }

    /// Starts a publish and returns its token without waiting: for bursts, start many,
    /// then await the tokens (up to [`MAX_BUFFERED_MESSAGES`] may be outstanding).
    pub fn publish_no_wait(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: i32,
        retained: bool,
    ) -> mqtt::DeliveryToken {
        let msg = mqtt::MessageBuilder::new()
            .topic(topic)
            .payload(payload.into())
            .qos(qos)
            .retained(retained)
            .finalize();
        self.client.publish(msg)
    }

    /// Serializes `value` to JSON and publishes it like [`publish`](Self::publish).
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        qos: i32,
        retained: bool,
    ) -> Result<()> {
        let payload = serde_json::to_vec(value).context("serialize JSON payload")?;
        self.publish(topic, payload, qos, retained).await
    }

    /// The next message on any topic (buffered ones first).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<mqtt::Message> {
        if let Some(msg) = self.pending.pop_front() {
            return Ok(msg);
        }
        match self.recv_until(Instant::now() + timeout).await? {
            Some(msg) => Ok(msg),
            None => bail!(
                "{}: no message on any topic within {timeout:?}",
                self.client_id
            ),
        }
    }

    /// The next message whose topic matches `filter` (an exact topic or a filter with
    /// `+`/`#`). Messages on other topics are kept for later calls.
    pub async fn wait_for(&mut self, filter: &str, timeout: Duration) -> Result<mqtt::Message> {
        if let Some(msg) = self.take_pending(filter) {
            return Ok(msg);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline).await? {
                Some(msg) if topic_matches(filter, msg.topic()) => return Ok(msg),
                Some(other) => self.pending.push_back(other),
                None => bail!(
                    "{}: no message on {filter:?} within {timeout:?} ({} message(s) on other topics buffered: {})",
                    self.client_id,
                    self.pending.len(),
                    self.pending_topics()
                ),
            }
        }
    }

    /// Like [`wait_for`](Self::wait_for), then parses the payload as JSON.
    pub async fn wait_for_json<T: DeserializeOwned>(
        &mut self,
        filter: &str,
        timeout: Duration,
    ) -> Result<T> {
        let msg = self.wait_for(filter, timeout).await?;
        serde_json::from_slice(msg.payload()).with_context(|| {
            format!(
                "{}: payload on {:?} is not the expected JSON: {}",
                self.client_id,
                msg.topic(),
                msg.payload_str()
            )
        })
    }

    /// Asserts that no message matching `filter` arrives (or is already buffered) during
    /// `duration`. Messages on other topics are buffered, not dropped.
    ///
    /// This always takes the full `duration`: it is the one legitimate fixed-duration wait
    /// in tests, because absence can only be shown by waiting. Keep it short (100–500 ms)
    /// and use it only after something that would have produced the message.
    pub async fn expect_silence(&mut self, filter: &str, duration: Duration) -> Result<()> {
        if let Some(msg) = self.take_pending(filter) {
            bail!(
                "{}: expected silence on {filter:?}, but {:?} had already arrived: {}",
                self.client_id,
                msg.topic(),
                msg.payload_str()
            );
        }
        let deadline = Instant::now() + duration;
        loop {
            match self.recv_until(deadline).await? {
                Some(msg) if topic_matches(filter, msg.topic()) => bail!(
                    "{}: expected silence on {filter:?} for {duration:?}, but got {:?}: {}",
                    self.client_id,
                    msg.topic(),
                    msg.payload_str()
                ),
                Some(other) => self.pending.push_back(other),
                None => return Ok(()),
            }
        }
    }

    /// Returns and forgets all buffered messages, then everything that arrives until
    /// nothing has come for `quiet` (a fixed-duration wait, like
    /// [`expect_silence`](Self::expect_silence)).
    pub async fn drain(&mut self, quiet: Duration) -> Result<Vec<mqtt::Message>> {
        let mut out: Vec<_> = self.pending.drain(..).collect();
        while let Some(msg) = self.recv_until(Instant::now() + quiet).await? {
            out.push(msg);
        }
        Ok(out)
    }

    /// Returns and forgets all buffered messages, then everything that arrives within
    /// `window` (a fixed-duration wait: for counting what crossed, when messages keep
    /// coming and [`drain`](Self::drain) would never see a quiet spell).
    pub async fn collect_for(&mut self, window: Duration) -> Result<Vec<mqtt::Message>> {
        let deadline = Instant::now() + window;
        let mut out: Vec<_> = self.pending.drain(..).collect();
        while let Some(msg) = self.recv_until(deadline).await? {
            out.push(msg);
        }
        Ok(out)
    }

    /// How many received messages are buffered, not yet returned.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Disconnects cleanly (a persistent session stays on the broker).
    pub async fn disconnect(self) -> Result<()> {
        self.client
            .disconnect(None)
            .await
            .with_context(|| format!("{}: disconnect", self.client_id))?;
        Ok(())
    }

    /// Removes and returns the first buffered message matching `filter`.
    fn take_pending(&mut self, filter: &str) -> Option<mqtt::Message> {
        let i = self
            .pending
            .iter()
            .position(|m| topic_matches(filter, m.topic()))?;
        self.pending.remove(i)
    }

    /// The next message from the stream, `None` at the deadline; an error when the
    /// connection was lost.
    async fn recv_until(&mut self, deadline: Instant) -> Result<Option<mqtt::Message>> {
        match tokio::time::timeout_at(deadline, self.stream.recv()).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(Some(msg))) => Ok(Some(msg)),
            Ok(Ok(None)) => bail!("{}: connection to the broker lost", self.client_id),
            Ok(Err(_closed)) => bail!("{}: message stream closed", self.client_id),
        }
    }

    fn pending_topics(&self) -> String {
        let mut topics: Vec<&str> = self.pending.iter().map(|m| m.topic()).collect();
        topics.dedup();
        topics.truncate(10);
        topics.join(", ")
    }
}

/// Waits until the Mosquitto bridge `connection` (the name on its `connection` line) of
/// the broker at `broker_url` is connected, as it reports with its retained
/// notification `$SYS/broker/connection/<client id>/state` = `1` (the client id defaults
/// to `<hostname>.<connection>`; bridges publish it with the default
/// `notifications true`).
///
/// Not needed before publishing through a bridge that was just started (its local
/// subscriptions exist before the broker accepts clients and queue QoS 1 messages), but
/// needed to know that a restarted peer has been reconnected to.
pub async fn wait_for_bridge(broker_url: &str, connection: &str, timeout: Duration) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "testkit-bridge-wait-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = TestClient::connect(broker_url, &id).await?;
    client
        .subscribe("$SYS/broker/connection/+/state", 0)
        .await?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = client
            .wait_for("$SYS/broker/connection/+/state", left)
            .await
            .with_context(|| {
                format!("bridge {connection:?} on {broker_url} not connected within {timeout:?}")
            })?;
        let client_id = msg.topic().split('/').nth(3).unwrap_or_default();
        let ours = client_id == connection || client_id.ends_with(&format!(".{connection}"));
        if ours && msg.payload() == b"1" {
            client.disconnect().await.ok();
            return Ok(());
        }
    }
}

/// What a [`wait_until`] condition returns: `bool` (ready when `true`) or `Option<T>`
/// (ready with the value when `Some`).
pub trait Ready {
    /// The value handed back when ready.
    type Output;
    /// `Some` when the condition holds.
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `condition` every `interval` until it is ready (`true` / `Some`), or fails after
/// `timeout` with an error naming `what`. The condition runs once more at the deadline.
///
/// ```no_run
/// # async fn example(state: impl Fn() -> u32) -> anyhow::Result<()> {
/// use std::time::Duration;
/// testkit::wait_until("two vehicles queued", Duration::from_secs(5), Duration::from_millis(20), || async {
///     state() == 2
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<F, Fut, R>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut condition: F,
) -> Result<R::Output>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
    R: Ready,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await.ready() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
    }
}
