//! The bench's MQTT clients, all plain paho-mqtt clients (connected through testkit's
//! [`TestClient`], which does it safely), QoS 1 like the fog protocol:
//!
//! - [`Fleet`]: a fleet gateway — many vehicle ids over one connection, as device-sim
//!   does it — that stamps every answer in paho's message callback (no hop through
//!   the async runtime before the clock is read);
//! - [`Echo`]: the floor. It sends every request back, either straight from paho's
//!   message callback ([`EchoKind::Callback`], the least any paho server can do) or
//!   from a tokio task reading paho's message stream ([`EchoKind::Task`], the path the
//!   fog server's MQTT link takes, without the fog's work).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use paho_mqtt as mqtt;
use serde::Deserialize;
use testkit::TestClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every request id the bench sends is `b{seq}`; `seq` is unique in the run.
pub fn request_id(seq: u64) -> String {
    format!("b{seq}")
}

/// What an answer said, as far as the bench cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// A reply from an echo server (the request itself, sent back).
    Echo,
    Assigned,
    Rerouted,
    Unavailable,
    Rejected,
    Other,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Assigned => "assigned",
            Self::Rerouted => "rerouted",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Other => "other",
        }
    }
}

/// One answer, stamped when paho handed it over.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub seq: u64,
    pub at: Instant,
    pub status: Status,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    request_id: &'a str,
    #[serde(default, borrow)]
    status: Option<&'a str>,
}

fn parse(payload: &[u8]) -> Option<(u64, Status)> {
    let probe: Probe = serde_json::from_slice(payload).ok()?;
    let seq = probe.request_id.strip_prefix('b')?.parse().ok()?;
    let status = match probe.status {
        None => Status::Echo,
        Some("assigned") => Status::Assigned,
        Some("rerouted") => Status::Rerouted,
        Some("unavailable") => Status::Unavailable,
        Some("rejected") => Status::Rejected,
        Some(_) => Status::Other,
    };
    Some((seq, status))
}

/// A connection that publishes requests for many vehicles and hears their answers.
pub struct Fleet {
    client: TestClient,
    pub answers: mpsc::UnboundedReceiver<Answer>,
}

impl Fleet {
    /// Connects as `client_id` and subscribes (QoS 1) to every filter.
    pub async fn connect(url: &str, client_id: &str, filters: &[String]) -> Result<Self> {
        let client = TestClient::connect(url, client_id).await?;
        let (tx, answers) = mpsc::unbounded_channel();
        // Replaces the test client's stream: answers are stamped in paho's thread.
        client.inner().set_message_callback(move |_, msg| {
            let at = Instant::now();
            if let Some((seq, status)) = msg.and_then(|m| parse(m.payload())) {
                let _ = tx.send(Answer { seq, at, status });
            }
        });
        for f in filters {
            client.subscribe(f, 1).await?;
        }
        Ok(Self { client, answers })
    }

    /// Publishes with QoS 1 without waiting for the PUBACK.
    pub fn send(&self, topic: &str, payload: Vec<u8>) {
        // The token is not awaited: paho completes the QoS 1 flow on its own.
        drop(
            self.client
                .inner()
                .publish(mqtt::Message::new(topic, payload, 1)),
        );
    }

    /// Publishes `payload` and waits for the answer to `seq` (answers to other
    /// requests, e.g. late ones, are skipped). Returns the round trip.
    pub async fn round_trip(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        seq: u64,
        timeout: Duration,
    ) -> Result<(Duration, Status)> {
        let started = Instant::now();
        self.send(topic, payload);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = tokio::time::timeout_at(deadline, self.answers.recv())
                .await
                .with_context(|| {
                    format!("no answer to request b{seq} on {topic} within {timeout:?}")
                })?
                .context("fleet callback gone")?;
            if answer.seq == seq {
                return Ok((answer.at.duration_since(started), answer.status));
            }
        }
    }

    /// Forgets answers received so far.
    pub fn clear(&mut self) {
        while self.answers.try_recv().is_ok() {}
    }

    /// Disconnects cleanly.
    pub async fn close(self) -> Result<()> {
        self.client.disconnect().await
    }
}

/// How an echo server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    /// Publishes the reply from paho's message callback.
    Callback,
    /// Publishes the reply from a tokio task reading paho's message stream.
    Task,
}

impl EchoKind {
    fn level(self) -> &'static str {
        match self {
            Self::Callback => "echo",
            Self::Task => "echo-task",
        }
    }
}

/// Where a request to an echo server goes.
pub fn echo_topic(kind: EchoKind, id: &str) -> String {
    format!("bench/{}/{id}/request", kind.level())
}

/// Where an echo server's reply to `id` goes.
pub fn echo_reply_topic(kind: EchoKind, id: &str) -> String {
    format!("bench/{}/{id}/reply", kind.level())
}

/// Every echo reply.
pub const ECHO_REPLIES: &str = "bench/+/+/reply";

/// An echo server: sends every message on `bench/{kind}/{id}/request` back on
/// `bench/{kind}/{id}/reply`, QoS 1.
pub struct Echo {
    stop: CancellationToken,
    task: Option<JoinHandle<TestClient>>,
    client: Option<TestClient>,
}

fn reply_to(topic: &str) -> Option<String> {
    topic
        .strip_suffix("/request")
        .map(|base| format!("{base}/reply"))
}

impl Echo {
    pub async fn start(url: &str, kind: EchoKind) -> Result<Self> {
        let stop = CancellationToken::new();
        let filter = format!("bench/{}/+/request", kind.level());
        let mut client = TestClient::connect(url, &format!("bench-{}", kind.level())).await?;
        if kind == EchoKind::Callback {
            client.inner().set_message_callback(|cli, msg| {
                if let Some(msg) = msg {
                    if let Some(reply) = reply_to(msg.topic()) {
                        drop(cli.publish(mqtt::Message::new(reply, msg.payload(), 1)));
                    }
                }
            });
            client.subscribe(&filter, 1).await?;
            return Ok(Self {
                stop,
                task: None,
                client: Some(client),
            });
        }
        client.subscribe(&filter, 1).await?;
        let publisher = Arc::new(client.inner().clone());
        let work = {
            let stop = stop.clone();
            async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = client.recv_timeout(Duration::from_secs(3600)) => match m {
                            Ok(m) => m,
                            Err(_) => break,
                        },
                    };
                    if let Some(reply) = reply_to(msg.topic()) {
                        drop(publisher.publish(mqtt::Message::new(reply, msg.payload(), 1)));
                    }
                }
                client
            }
        };
        let task = tokio::spawn(work);
        Ok(Self {
            stop,
            task: Some(task),
            client: None,
        })
    }

    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        let client = match (self.task, self.client) {
            (Some(task), _) => task.await.context("echo task panicked")?,
            (None, Some(client)) => client,
            (None, None) => return Ok(()),
        };
        client.disconnect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_recognised() {
        let rec = br#"{"v":1,"request_id":"b42","status":"assigned","served_by":"north"}"#;
        assert_eq!(parse(rec), Some((42, Status::Assigned)));
        let echo = br#"{"v":1,"request_id":"b7","lat":1.0}"#;
        assert_eq!(parse(echo), Some((7, Status::Echo)));
        assert_eq!(parse(br#"{"request_id":"x1"}"#), None);
        assert_eq!(
            reply_to("bench/echo/car-1/request").as_deref(),
            Some("bench/echo/car-1/reply")
        );
    }
}
