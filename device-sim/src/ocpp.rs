//! The simulated stations as OCPP 1.6J charge points (`--station-transport ocpp`): each
//! station is a WebSocket client of its region's gateway (`ws://…/ocpp/{station id}`,
//! subprotocol `ocpp1.6`), and the gateway makes it a station on the regional broker.
//!
//! What a station says, as its simulated occupancy changes:
//! - at start: BootNotification, then StatusNotification `Available` for every
//!   connector; Heartbeat at the interval the gateway's answer gives (real seconds);
//! - a vehicle plugs in: StatusNotification `Preparing`, StartTransaction (with the
//!   `reservationId` when the vehicle holds a reservation here: the gateway ends it as
//!   arrived), StatusNotification `Charging`;
//! - a vehicle leaves: StopTransaction, StatusNotification `Available` (`Reserved` when
//!   the connector holds a reservation).
//!
//! What it answers: GetConfiguration (`ReserveConnectorZeroSupported` = false, so the
//! gateway picks the connector), ReserveNow (`Accepted` when the connector is free and
//! not reserved, else `Occupied`; then StatusNotification `Reserved`),
//! CancelReservation (`Accepted` for a reservation it holds, else `Rejected`),
//! TriggerMessage (StatusNotification and Heartbeat); anything else gets CALLERROR
//! `NotImplemented`.
//!
//! A station sends its calls without waiting for the previous answer (the gateway
//! answers each in order); every answer is still awaited and counted, and a CALLERROR
//! counts as an error. Timestamps are simulated time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// One simulated charge point.
#[derive(Debug, Clone)]
pub struct ChargePoint {
    /// The charge point id (the station id).
    pub id: String,
    pub connectors: u32,
    /// The gateway's base URL, `ws://host:port/ocpp` (the id is appended).
    pub url: String,
    /// Frames sent and received by this charge point count here too (its region's).
    pub region_counter: Arc<AtomicU64>,
}

/// What the charge points did over a run, all stations together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OcppFigures {
    /// OCPP-J frames sent and received by the charge points.
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Calls the charge points made that the gateway answered with CALLERROR.
    pub call_errors: u64,
    /// ReserveNow answered `Accepted`, and refused (`Occupied`, `Rejected`).
    pub reservations_accepted: u64,
    pub reservations_refused: u64,
    /// CancelReservation of a reservation the charge point held.
    pub reservations_cancelled: u64,
    /// StartTransaction sent, and of them with a `reservationId`.
    pub transactions: u64,
    pub transactions_on_reservation: u64,
    /// Connections the gateway closed during the run.
    pub disconnects: u64,
    /// The gateways' own view (their `/metrics`, all regions), at the end of the run
    /// before the charge points disconnect.
    #[serde(default)]
    pub gateways: GatewayFigures,
}

/// What the gateways' `/metrics` said, summed over regions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GatewayFigures {
    /// `ocpp_connected`: charge points connected.
    pub connected: u64,
    /// `ocpp_reservations_total` by outcome (`accepted`, `rejected`, `arrived`, …).
    pub reservations: std::collections::BTreeMap<String, u64>,
    /// `ocpp_call_errors_sent_total`: CALLERRORs the gateways sent the charge points.
    pub call_errors_sent: u64,
    /// `ocpp_call_timeouts_total`: calls to the charge points not answered in time.
    pub call_timeouts: u64,
}

impl GatewayFigures {
    /// Adds what one gateway's `/metrics` (Prometheus text) says.
    pub fn add_metrics(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let value = value as u64;
            let (metric, labels) = name.split_once('{').unwrap_or((name, ""));
            match metric {
                "ocpp_connected" => self.connected += value,
                "ocpp_call_errors_sent_total" => self.call_errors_sent += value,
                "ocpp_call_timeouts_total" => self.call_timeouts += value,
                "ocpp_reservations_total" => {
                    let kind = labels
                        .split_once("kind=\"")
                        .and_then(|(_, rest)| rest.split_once('"'))
                        .map_or("", |(k, _)| k);
                    *self.reservations.entry(kind.to_owned()).or_default() += value;
                }
                _ => {}
            }
        }
    }

    /// Reads every gateway's `/metrics`.
    pub async fn scrape(http: impl IntoIterator<Item = std::net::SocketAddr>) -> Result<Self> {
        let client = reqwest::Client::new();
        let mut figures = Self::default();
        for addr in http {
            let text = client
                .get(format!("http://{addr}/metrics"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("reading the metrics of the gateway at {addr}"))?
                .text()
                .await?;
            figures.add_metrics(&text);
        }
        Ok(figures)
    }
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    call_errors: AtomicU64,
    reservations_accepted: AtomicU64,
    reservations_refused: AtomicU64,
    reservations_cancelled: AtomicU64,
    transactions: AtomicU64,
    transactions_on_reservation: AtomicU64,
    disconnects: AtomicU64,
}

impl Counters {
    fn figures(&self) -> OcppFigures {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OcppFigures {
            frames_sent: get(&self.frames_sent),
            frames_received: get(&self.frames_received),
            call_errors: get(&self.call_errors),
            reservations_accepted: get(&self.reservations_accepted),
            reservations_refused: get(&self.reservations_refused),
            reservations_cancelled: get(&self.reservations_cancelled),
            transactions: get(&self.transactions),
            transactions_on_reservation: get(&self.transactions_on_reservation),
            disconnects: get(&self.disconnects),
            gateways: GatewayFigures::default(),
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The vehicles now charging at a station, at simulated time `now_ms`.
struct Occupancy {
    vehicles: Vec<String>,
    now_ms: u64,
}

/// Every simulated station as a connected charge point.
pub struct ChargePoints {
    updates: Vec<mpsc::UnboundedSender<Occupancy>>,
    counters: Arc<Counters>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

/// How long a charge point may take to connect, boot and report its connectors.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

impl ChargePoints {
    /// Connects every charge point (all at once) and returns when each has booted and
    /// its connectors' statuses are answered; `sent`/`received` count every frame.
    pub async fn connect(
        points: Vec<ChargePoint>,
        sent: Arc<AtomicU64>,
        received: Arc<AtomicU64>,
        now_ms: u64,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let shutdown = shutdown.child_token();
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        let mut updates = Vec::with_capacity(points.len());
        let mut booted = Vec::with_capacity(points.len());
        for point in points {
            let (tx, rx) = mpsc::unbounded_channel();
            updates.push(tx);
            let (ready, is_ready) = oneshot::channel();
            booted.push((point.id.clone(), is_ready));
            let station = Station::new(point, counters.clone(), sent.clone(), received.clone());
            tasks.spawn(station.run(rx, ready, now_ms, shutdown.clone()));
        }
        let all = async {
            for (id, is_ready) in booted {
                match is_ready.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.context(format!("charge point {id}"))),
                    Err(_) => bail!("charge point {id} stopped before it booted"),
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(BOOT_TIMEOUT, all).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "the charge points did not boot within {BOOT_TIMEOUT:?}"
            )),
        };
        let points = Self {
            updates,
            counters,
            tasks,
            shutdown,
        };
        if let Err(e) = result {
            points.close().await;
            return Err(e);
        }
        Ok(points)
    }

    /// Station `station` now charges `vehicles` (their ids), at simulated `now_ms`.
    pub fn occupancy(&self, station: usize, vehicles: Vec<String>, now_ms: u64) {
        if let Some(tx) = self.updates.get(station) {
            let _ = tx.send(Occupancy { vehicles, now_ms });
        }
    }

    pub fn figures(&self) -> OcppFigures {
        self.counters.figures()
    }

    /// Closes every connection (WebSocket close: the gateway marks the stations
    /// offline).
    pub async fn close(mut self) {
        self.shutdown.cancel();
        self.updates.clear();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// A call of ours waiting for its answer.
enum Call {
    Boot,
    Status,
    Heartbeat,
    Start { vehicle: String },
    Stop,
}

/// A reservation the charge point holds.
struct Held {
    reservation_id: i64,
    connector: u32,
    id_tag: String,
}

struct Station {
    point: ChargePoint,
    /// The vehicle on each connector (index 0: connector 1).
    connectors: Vec<Option<String>>,
    held: Vec<Held>,
    calls: HashMap<String, Call>,
    next_id: u64,
    /// Transactions by vehicle, once the gateway numbered them.
    transactions: HashMap<String, i64>,
    /// Vehicles that left before their StartTransaction was answered.
    stop_when_started: HashSet<String>,
    heartbeat: Option<Duration>,
    out: Vec<String>,
    now_ms: u64,
    counters: Arc<Counters>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Station {
    fn new(
        point: ChargePoint,
        counters: Arc<Counters>,
        sent: Arc<AtomicU64>,
        received: Arc<AtomicU64>,
    ) -> Self {
        Self {
            connectors: vec![None; point.connectors as usize],
            point,
            held: Vec::new(),
            calls: HashMap::new(),
            next_id: 0,
            transactions: HashMap::new(),
            stop_when_started: HashSet::new(),
            heartbeat: None,
            out: Vec::new(),
            now_ms: 0,
            counters,
            sent,
            received,
        }
    }

    async fn run(
        mut self,
        mut updates: mpsc::UnboundedReceiver<Occupancy>,
        ready: oneshot::Sender<Result<()>>,
        now_ms: u64,
        shutdown: CancellationToken,
    ) {
        self.now_ms = now_ms;
        let url = format!("{}/{}", self.point.url, self.point.id);
        let ws = match connect(&url).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let (mut sink, mut stream) = ws.split();
        // Boot, then every connector Available; ready once all are answered.
        self.call(
            "BootNotification",
            json!({"chargePointVendor": "fogcharge", "chargePointModel": "device-sim"}),
            Call::Boot,
        );
        for c in 1..=self.point.connectors {
            self.status(c, "Available");
        }
        let mut ready = Some(ready);
        let mut heartbeat: Option<tokio::time::Interval> = None;
        loop {
            if !self.out.is_empty() {
                let frames = std::mem::take(&mut self.out);
                let n = frames.len() as u64;
                let mut failed = false;
                for f in frames {
                    if sink.feed(Message::text(f)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    self.lost(&mut ready, "sending to the gateway failed");
                    return;
                }
                self.count(&self.sent, &self.counters.frames_sent, n);
            }
            if ready.is_some() && self.calls.is_empty() {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            if heartbeat.is_none() {
                if let Some(every) = self.heartbeat {
                    let mut i = tokio::time::interval(every);
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    i.reset();
                    heartbeat = Some(i);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
                update = updates.recv() => match update {
                    Some(u) => self.occupy(u),
                    None => {
                        let _ = sink.send(Message::Close(None)).await;
                        return;
                    }
                },
                _ = async { heartbeat.as_mut().expect("set").tick().await }, if heartbeat.is_some() => {
                    self.call("Heartbeat", json!({}), Call::Heartbeat);
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        self.count(&self.received, &self.counters.frames_received, 1);
                        self.on_frame(text.as_str());
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        self.lost(&mut ready, "the gateway closed the connection");
                        return;
                    }
                    Some(Ok(_)) => {} // ping/pong (answered by the library), binary
                    Some(Err(e)) => {
                        self.lost(&mut ready, &format!("WebSocket error: {e}"));
                        return;
                    }
                },
            }
        }
    }

    fn count(&self, total: &AtomicU64, ocpp: &AtomicU64, n: u64) {
        total.fetch_add(n, Ordering::Relaxed);
        ocpp.fetch_add(n, Ordering::Relaxed);
        self.point.region_counter.fetch_add(n, Ordering::Relaxed);
    }

    fn lost(&self, ready: &mut Option<oneshot::Sender<Result<()>>>, why: &str) {
        match ready.take() {
            Some(r) => {
                let _ = r.send(Err(anyhow::anyhow!("{why} before the boot was answered")));
            }
            None => {
                inc(&self.counters.disconnects);
                warn!(station = self.point.id, why, "charge point disconnected");
            }
        }
    }

    fn timestamp(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.now_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn call(&mut self, action: &str, payload: Value, purpose: Call) {
        self.next_id += 1;
        let id = self.next_id.to_string();
        self.out.push(json!([2, id, action, payload]).to_string());
        self.calls.insert(id, purpose);
    }

    fn status(&mut self, connector: u32, status: &str) {
        let payload = json!({
            "connectorId": connector,
            "errorCode": "NoError",
            "status": status,
            "timestamp": self.timestamp(),
        });
        self.call("StatusNotification", payload, Call::Status);
    }

    /// The status of an idle connector: Reserved when it holds a reservation.
    fn idle_status(&self, connector: u32) -> &'static str {
        if self.held.iter().any(|h| h.connector == connector) {
            "Reserved"
        } else {
            "Available"
        }
    }

    fn is_idle(&self, connector: u32) -> bool {
        self.connectors
            .get(connector as usize - 1)
            .is_some_and(Option::is_none)
    }

    /// The simulation says who charges now: plug out who left, plug in who came.
    fn occupy(&mut self, u: Occupancy) {
        self.now_ms = u.now_ms;
        for c in 1..=self.point.connectors {
            let Some(v) = self.connectors[c as usize - 1].clone() else {
                continue;
            };
            if u.vehicles.contains(&v) {
                continue;
            }
            self.connectors[c as usize - 1] = None;
            match self.transactions.remove(&v) {
                Some(tx) => self.stop(&v, tx),
                None => {
                    self.stop_when_started.insert(v);
                }
            }
            let s = self.idle_status(c);
            self.status(c, s);
        }
        for v in u.vehicles {
            if self.connectors.iter().flatten().any(|w| *w == v) {
                continue;
            }
            self.plug_in(v);
        }
    }

    fn plug_in(&mut self, vehicle: String) {
        let id_tag = protocol::id_tag_for_vehicle(&vehicle);
        let held = self.held.iter().position(|h| h.id_tag == id_tag);
        let own = held
            .map(|i| self.held[i].connector)
            .filter(|&c| self.is_idle(c));
        let free = (1..=self.point.connectors).filter(|&c| self.is_idle(c));
        let unreserved = free
            .clone()
            .find(|&c| !self.held.iter().any(|h| h.connector == c));
        // The simulation never charges more vehicles than connectors; a connector
        // reserved for another vehicle is taken when no other is free.
        let Some(connector) = own.or(unreserved).or_else(|| free.clone().next()) else {
            warn!(
                station = self.point.id,
                vehicle, "no free connector for a vehicle that charges"
            );
            return;
        };
        self.connectors[connector as usize - 1] = Some(vehicle.clone());
        self.status(connector, "Preparing");
        let mut payload = json!({
            "connectorId": connector,
            "idTag": id_tag,
            "meterStart": 0,
            "timestamp": self.timestamp(),
        });
        inc(&self.counters.transactions);
        let mut freed = None;
        if let Some(i) = held {
            let h = self.held.remove(i);
            payload["reservationId"] = json!(h.reservation_id);
            inc(&self.counters.transactions_on_reservation);
            if h.connector != connector && self.is_idle(h.connector) {
                freed = Some(h.connector);
            }
        }
        self.call("StartTransaction", payload, Call::Start { vehicle });
        self.status(connector, "Charging");
        if let Some(c) = freed {
            let s = self.idle_status(c);
            self.status(c, s);
        }
    }

    fn stop(&mut self, vehicle: &str, transaction_id: i64) {
        let payload = json!({
            "idTag": protocol::id_tag_for_vehicle(vehicle),
            "meterStop": 0,
            "timestamp": self.timestamp(),
            "transactionId": transaction_id,
            "reason": "EVDisconnected",
        });
        self.call("StopTransaction", payload, Call::Stop);
    }

    fn on_frame(&mut self, text: &str) {
        let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text) else {
            warn!(station = self.point.id, frame = text, "not an OCPP-J frame");
            return;
        };
        let id = frame.get(1).and_then(Value::as_str).unwrap_or_default();
        match frame.first().and_then(Value::as_u64) {
            Some(2) => {
                let action = frame.get(2).and_then(Value::as_str).unwrap_or_default();
                let payload = frame.get(3).cloned().unwrap_or(Value::Null);
                let id = id.to_owned();
                let answer = match self.on_call(action, &payload) {
                    Ok((result, then)) => {
                        let frame = json!([3, id, result]).to_string();
                        (frame, then)
                    }
                    Err((code, why)) => (json!([4, id, code, why, {}]).to_string(), Vec::new()),
                };
                // The answer first, then what it leads to (a Reserved status, …).
                let then = std::mem::take(&mut self.out);
                self.out.push(answer.0);
                self.out.extend(then);
                for (c, s) in answer.1 {
                    self.status(c, s);
                }
            }
            Some(3) => match self.calls.remove(id) {
                Some(call) => self.on_result(call, frame.get(2).unwrap_or(&Value::Null)),
                None => debug!(station = self.point.id, id, "answer to no call of ours"),
            },
            Some(4) => {
                let call = self.calls.remove(id);
                inc(&self.counters.call_errors);
                warn!(
                    station = self.point.id,
                    frame = text,
                    "the gateway answered CALLERROR"
                );
                if let Some(Call::Start { vehicle }) = call {
                    self.stop_when_started.remove(&vehicle);
                }
            }
            _ => warn!(
                station = self.point.id,
                frame = text,
                "unknown message type"
            ),
        }
    }

    fn on_result(&mut self, call: Call, payload: &Value) {
        match call {
            Call::Boot => {
                let interval = payload["interval"].as_u64().unwrap_or(300).max(1);
                self.heartbeat = Some(Duration::from_secs(interval));
            }
            Call::Start { vehicle } => {
                let Some(tx) = payload["transactionId"].as_i64() else {
                    warn!(station = self.point.id, %payload, "StartTransaction answered without a transaction id");
                    return;
                };
                if self.stop_when_started.remove(&vehicle) {
                    self.stop(&vehicle, tx);
                } else {
                    self.transactions.insert(vehicle, tx);
                }
            }
            Call::Status | Call::Heartbeat | Call::Stop => {}
        }
    }

    /// The answer to a CALL of the gateway, and the statuses it changes.
    #[allow(clippy::type_complexity)]
    fn on_call(
        &mut self,
        action: &str,
        payload: &Value,
    ) -> Result<(Value, Vec<(u32, &'static str)>), (&'static str, String)> {
        match action {
            "GetConfiguration" => Ok((
                json!({"configurationKey": [
                    {"key": "ReserveConnectorZeroSupported", "readonly": true, "value": "false"}
                ]}),
                Vec::new(),
            )),
            "ReserveNow" => {
                let (Some(connector), Some(reservation_id), Some(id_tag)) = (
                    payload["connectorId"].as_u64(),
                    payload["reservationId"].as_i64(),
                    payload["idTag"].as_str(),
                ) else {
                    return Err((
                        "OccurenceConstraintViolation",
                        "connectorId, reservationId and idTag are required".into(),
                    ));
                };
                // A reservation id held already is replaced (OCPP 1.6, 5.13).
                self.held.retain(|h| h.reservation_id != reservation_id);
                let connector = connector as u32;
                let status = if connector == 0 || connector > self.point.connectors {
                    "Rejected"
                } else if !self.is_idle(connector)
                    || self.held.iter().any(|h| h.connector == connector)
                {
                    "Occupied"
                } else {
                    "Accepted"
                };
                let mut then = Vec::new();
                if status == "Accepted" {
                    inc(&self.counters.reservations_accepted);
                    self.held.push(Held {
                        reservation_id,
                        connector,
                        id_tag: id_tag.to_owned(),
                    });
                    then.push((connector, "Reserved"));
                } else {
                    inc(&self.counters.reservations_refused);
                }
                Ok((json!({"status": status}), then))
            }
            "CancelReservation" => {
                let Some(reservation_id) = payload["reservationId"].as_i64() else {
                    return Err((
                        "OccurenceConstraintViolation",
                        "reservationId is required".into(),
                    ));
                };
                let Some(i) = self
                    .held
                    .iter()
                    .position(|h| h.reservation_id == reservation_id)
                else {
                    return Ok((json!({"status": "Rejected"}), Vec::new()));
                };
                let h = self.held.remove(i);
                inc(&self.counters.reservations_cancelled);
                let then = if self.is_idle(h.connector) {
                    vec![(h.connector, self.idle_status(h.connector))]
                } else {
                    Vec::new()
                };
                Ok((json!({"status": "Accepted"}), then))
            }
            "TriggerMessage" => match payload["requestedMessage"].as_str() {
                Some("StatusNotification") => {
                    let then = (1..=self.point.connectors)
                        .map(|c| {
                            let s = if self.is_idle(c) {
                                self.idle_status(c)
                            } else {
                                "Charging"
                            };
                            (c, s)
                        })
                        .collect();
                    Ok((json!({"status": "Accepted"}), then))
                }
                Some("Heartbeat") => {
                    self.call("Heartbeat", json!({}), Call::Heartbeat);
                    Ok((json!({"status": "Accepted"}), Vec::new()))
                }
                _ => Ok((json!({"status": "NotImplemented"}), Vec::new())),
            },
            other => Err((
                "NotImplemented",
                format!("{other} is not implemented by this charge point"),
            )),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Result<Ws> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("{url}: not a WebSocket URL"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ocpp1.6"),
    );
    // TCP_NODELAY: a charge point's frames are small and answer the gateway's at once.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn station(connectors: u32) -> Station {
        let point = ChargePoint {
            id: "west-s0001".into(),
            connectors,
            url: "ws://127.0.0.1:1/ocpp".into(),
            region_counter: Arc::default(),
        };
        Station::new(point, Arc::default(), Arc::default(), Arc::default())
    }

    /// The frames the station would send, parsed, and forgotten.
    fn sent(s: &mut Station) -> Vec<Value> {
        s.out
            .drain(..)
            .map(|f| serde_json::from_str(&f).unwrap())
            .collect()
    }

    fn calls<'a>(frames: &'a [Value], action: &str) -> Vec<&'a Value> {
        frames
            .iter()
            .filter(|f| f[0] == 2 && f[2] == action)
            .map(|f| &f[3])
            .collect()
    }

    fn reserve(s: &mut Station, msg: &str, connector: u32, reservation: i64, tag: &str) -> Value {
        let frame = json!([2, msg, "ReserveNow", {
            "connectorId": connector, "expiryDate": "2030-01-01T00:00:00Z",
            "idTag": tag, "reservationId": reservation
        }]);
        s.on_frame(&frame.to_string());
        let frames = sent(s);
        assert_eq!(frames[0][0], 3, "answered first: {frames:?}");
        assert_eq!(frames[0][1], msg);
        frames[0][2]["status"].clone()
    }

    fn occupy(s: &mut Station, vehicles: &[&str]) -> Vec<Value> {
        s.occupy(Occupancy {
            vehicles: vehicles.iter().map(|v| (*v).to_owned()).collect(),
            now_ms: 1_000,
        });
        sent(s)
    }

    #[test]
    fn reserve_now_is_accepted_only_on_a_free_connector_not_reserved_yet() {
        let mut s = station(2);
        assert_eq!(reserve(&mut s, "a", 1, 7, "v00001"), "Accepted");
        assert_eq!(s.out.len(), 0);
        assert_eq!(reserve(&mut s, "b", 1, 8, "v00002"), "Occupied");
        occupy(&mut s, &["v00003"]);
        // v00003 took the connector not reserved: 2.
        assert_eq!(s.connectors, vec![None, Some("v00003".into())]);
        assert_eq!(reserve(&mut s, "c", 2, 9, "v00004"), "Occupied");
        assert_eq!(reserve(&mut s, "d", 0, 10, "v00004"), "Rejected");
        assert_eq!(reserve(&mut s, "e", 3, 11, "v00004"), "Rejected");
        let f = s.counters.figures();
        assert_eq!((f.reservations_accepted, f.reservations_refused), (1, 4));
    }

    #[test]
    fn an_accepted_reservation_marks_its_connector_reserved() {
        let mut s = station(2);
        let frame = json!([2, "a", "ReserveNow", {
            "connectorId": 2, "expiryDate": "2030-01-01T00:00:00Z",
            "idTag": "v00001", "reservationId": 7
        }]);
        s.on_frame(&frame.to_string());
        let frames = sent(&mut s);
        assert_eq!(frames[0][2]["status"], "Accepted");
        let status = calls(&frames, "StatusNotification");
        assert_eq!(status.len(), 1);
        assert_eq!(status[0]["connectorId"], 2);
        assert_eq!(status[0]["status"], "Reserved");
    }

    #[test]
    fn a_vehicle_on_its_reservation_starts_its_transaction_with_it_and_stops_when_it_leaves() {
        let mut s = station(2);
        reserve(&mut s, "a", 2, 7, "v00001");
        sent(&mut s);
        let frames = occupy(&mut s, &["v00001"]);
        let start = calls(&frames, "StartTransaction");
        assert_eq!(start.len(), 1);
        assert_eq!(start[0]["reservationId"], 7);
        assert_eq!(start[0]["connectorId"], 2, "its reserved connector");
        assert_eq!(start[0]["idTag"], "v00001");
        let statuses: Vec<&Value> = calls(&frames, "StatusNotification")
            .into_iter()
            .map(|p| &p["status"])
            .collect();
        assert_eq!(statuses, ["Preparing", "Charging"]);
        assert!(s.held.is_empty(), "the reservation is used");
        // The gateway numbers the transaction; the vehicle leaves.
        let id = frames.iter().find(|f| f[2] == "StartTransaction").unwrap()[1]
            .as_str()
            .unwrap()
            .to_owned();
        s.on_frame(
            &json!([3, id, {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}]).to_string(),
        );
        let frames = occupy(&mut s, &[]);
        let stop = calls(&frames, "StopTransaction");
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0]["transactionId"], 42);
        assert_eq!(
            calls(&frames, "StatusNotification")[0]["status"],
            "Available"
        );
        let f = s.counters.figures();
        assert_eq!((f.transactions, f.transactions_on_reservation), (1, 1));
    }

    #[test]
    fn a_vehicle_that_leaves_before_its_transaction_is_numbered_is_stopped_once_it_is() {
        let mut s = station(1);
        let frames = occupy(&mut s, &["v00009"]);
        let start = calls(&frames, "StartTransaction");
        assert!(start[0].get("reservationId").is_none(), "no reservation");
        let id = frames.iter().find(|f| f[2] == "StartTransaction").unwrap()[1]
            .as_str()
            .unwrap()
            .to_owned();
        let frames = occupy(&mut s, &[]);
        assert!(calls(&frames, "StopTransaction").is_empty());
        s.on_frame(
            &json!([3, id, {"transactionId": 5, "idTagInfo": {"status": "Accepted"}}]).to_string(),
        );
        let frames = sent(&mut s);
        let stop = calls(&frames, "StopTransaction");
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0]["transactionId"], 5);
    }

    #[test]
    fn cancel_reservation_frees_a_held_reservation_and_refuses_an_unknown_one() {
        let mut s = station(1);
        reserve(&mut s, "a", 1, 7, "v00001");
        sent(&mut s);
        s.on_frame(&json!([2, "b", "CancelReservation", {"reservationId": 7}]).to_string());
        let frames = sent(&mut s);
        assert_eq!(frames[0][2]["status"], "Accepted");
        assert_eq!(
            calls(&frames, "StatusNotification")[0]["status"],
            "Available"
        );
        s.on_frame(&json!([2, "c", "CancelReservation", {"reservationId": 7}]).to_string());
        assert_eq!(sent(&mut s)[0][2]["status"], "Rejected");
        assert_eq!(
            reserve(&mut s, "d", 1, 8, "v00002"),
            "Accepted",
            "free again"
        );
    }

    #[test]
    fn trigger_message_resends_every_connector_status_and_unknown_calls_get_not_implemented() {
        let mut s = station(2);
        occupy(&mut s, &["v00001"]);
        s.on_frame(
            &json!([2, "t", "TriggerMessage", {"requestedMessage": "StatusNotification"}])
                .to_string(),
        );
        let frames = sent(&mut s);
        assert_eq!(frames[0][2]["status"], "Accepted");
        let statuses: Vec<&Value> = calls(&frames, "StatusNotification")
            .into_iter()
            .map(|p| &p["status"])
            .collect();
        assert_eq!(statuses, ["Charging", "Available"]);
        s.on_frame(&json!([2, "r", "Reset", {"type": "Soft"}]).to_string());
        let frames = sent(&mut s);
        assert_eq!(
            frames[0],
            json!([
                4,
                "r",
                "NotImplemented",
                "Reset is not implemented by this charge point",
                {}
            ])
        );
        s.on_frame(&json!([4, "1", "InternalError", "", {}]).to_string());
        assert_eq!(s.counters.figures().call_errors, 1);
    }

    #[test]
    fn gateway_metrics_are_summed_over_regions() {
        let text = "# HELP ocpp_connected Charge points connected\n# TYPE ocpp_connected gauge\nocpp_connected 3\nocpp_reservations_total{kind=\"arrived\"} 2\nocpp_reservations_total{kind=\"accepted\"} 5\nocpp_call_errors_sent_total{kind=\"NotImplemented\"} 1\nocpp_call_timeouts_total 0\n# EOF\n";
        let mut g = GatewayFigures::default();
        g.add_metrics(text);
        g.add_metrics(text);
        assert_eq!(g.connected, 6);
        assert_eq!(g.reservations["arrived"], 4);
        assert_eq!(g.reservations["accepted"], 10);
        assert_eq!(g.call_errors_sent, 2);
        assert_eq!(g.call_timeouts, 0);
    }
}
