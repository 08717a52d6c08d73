//! The simulated devices on the regional brokers.
//!
//! - every **station** is its own MQTT client (client id = station id) on its region's
//!   broker, with a retained last will `{"state":"offline"}`, and publishes its status
//!   retained, QoS 1, on every change — or, with `--station-transport ocpp`, an OCPP
//!   1.6J charge point of its region's gateway ([`crate::ocpp`]), which publishes for
//!   it; or, with `--station-connections per-region`, the stations of a region share
//!   one connection that speaks for them as their gateway (`stations-{region}`, see
//!   [`StationGateway`]); with `station_reservations` (the server strategies) a
//!   station also takes the fog's reservations: it subscribes to its
//!   `…/reservations` (a shared connection to its region's) and answers on its
//!   `…/reservation-events`;
//! - the **vehicles** of a region talk through one fleet connection per region (as a
//!   fleet operator's gateway would): requests, reservation updates and telemetry on
//!   each vehicle's own topics, and one subscription to
//!   `ev/{region}/vehicles/+/recommendation`. A vehicle uses the broker of the region it
//!   is in, and sends `arrived` to the region that holds its reservation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use protocol::{Recommendation, StationChannel, StationStatus, Topic, VehicleChannel, topics};
use serverkit::{Link, LinkSettings, Publisher, Will};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Brokers by region id (`tcp://host:port`) and credentials.
#[derive(Debug, Clone)]
pub struct Brokers {
    pub urls: HashMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-device users (stations log in as themselves, fleets as `fleet-{region}`);
    /// devices without an entry use `username`/`password`.
    pub credentials: Option<topology::auth::Credentials>,
    /// CA certificate of `ssl://` brokers.
    pub ca_file: Option<std::path::PathBuf>,
    /// The stations of a region share one connection (a [`StationGateway`]) instead of
    /// one client each.
    pub shared_stations: bool,
    /// The stations take the fog's reservations: they read what the fog sends them
    /// ([`Net::station_messages`]) and answer ([`Net::station_send`]).
    pub station_reservations: bool,
}

impl Brokers {
    /// The login of `user`: its own password when it has one, else the shared one.
    fn login(&self, user: &str) -> (Option<String>, Option<String>) {
        match self.credentials.as_ref().and_then(|c| c.password(user)) {
            Some(pw) => (Some(user.to_owned()), Some(pw.to_owned())),
            None => (self.username.clone(), self.password.clone()),
        }
    }
}

/// The stations as OCPP charge points instead of MQTT clients.
#[derive(Debug, Clone)]
pub struct OcppGateways {
    /// Each region's gateway, `ws://host:port/ocpp`.
    pub urls: HashMap<String, String>,
    /// Connectors of each station (parallel to the stations given to [`Net::connect`]).
    pub connectors: Vec<u32>,
    /// Simulated time of the boot (for the timestamps).
    pub now_ms: u64,
}

/// The connection that speaks for the plain stations of one region when they share one
/// (`--station-connections per-region`): user and gateway id `stations-{region}`.
/// It works like a station's own connection, per connection instead of per station:
///
/// - every status it publishes names it (`"gateway": "stations-{region}"`);
/// - its last will is its presence `{"online": false}` (retained, QoS 1) on
///   `ev/{region}/gateways/stations-{region}/status`: the fog then counts all its
///   stations offline at once, as it would on each station's own last will;
/// - it says `online: true` on connect (before any status) and after every reconnect,
///   followed by each of its stations' latest status again.
///
/// See docs/protocol.md (gateway presence).
pub struct StationGateway;

impl StationGateway {
    /// The gateway id (and MQTT user) of `region`'s stations.
    pub fn id(region: &str) -> String {
        topology::auth::station_gateway(region)
    }

    fn presence(region: &str, online: bool) -> (String, Vec<u8>) {
        let id = Self::id(region);
        let msg = protocol::GatewayStatus {
            v: 1,
            gateway_id: id.clone(),
            online,
            ts_ms: None,
        };
        (
            topics::gateway_status(region, &id),
            serde_json::to_vec(&msg).unwrap_or_default(),
        )
    }
}

/// Each station's latest status (topic, payload), to publish again after a reconnect
/// of a shared connection.
type LatestStatuses = Arc<std::sync::Mutex<Vec<Option<(String, Vec<u8>)>>>>;

/// A recommendation that came back, with when it arrived.
#[derive(Debug)]
pub struct Answer {
    pub vehicle_id: String,
    pub recommendation: Recommendation,
    pub received: Instant,
}

/// What a station connection reads, and for which station: its own (`One`), or any
/// of its region's by id (a shared connection).
#[derive(Clone)]
enum Readers {
    One(usize),
    ById(Arc<HashMap<String, usize>>),
}

impl Readers {
    fn station(&self, topic: &str) -> Option<usize> {
        match self {
            Self::One(s) => Some(*s),
            Self::ById(ids) => match Topic::parse(topic) {
                Ok(Topic::Station { station_id, .. }) => ids.get(station_id).copied(),
                _ => None,
            },
        }
    }
}

/// Connections of every simulated device.
pub struct Net {
    fleets: HashMap<String, Publisher>,
    stations: Vec<Publisher>,
    pub answers: mpsc::UnboundedReceiver<Answer>,
    /// What the fog sent the stations (`…/reservations`): (station, payload).
    pub station_messages: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
    /// Messages sent by the devices and received by them.
    pub sent: Arc<AtomicU64>,
    pub received: Arc<AtomicU64>,
    /// Messages sent and received, per region's broker.
    by_region: HashMap<String, Arc<AtomicU64>>,
    /// The counter of each station's broker (parallel to `stations`).
    station_counters: Vec<Arc<AtomicU64>>,
    /// The gateway each station's status names (parallel to `stations`; `None`: the
    /// station is its own client).
    station_gateways: Vec<Option<String>>,
    /// With shared connections: each station's latest status.
    latest: Option<LatestStatuses>,
    tasks: JoinSet<()>,
    links: Vec<Arc<tokio::sync::Mutex<Link>>>,
    /// The stations, when they are OCPP charge points (then `stations` is empty).
    ocpp: Option<crate::ocpp::ChargePoints>,
    shutdown: CancellationToken,
}

impl Net {
    /// Connects a fleet gateway per region and a client per station (`stations`:
    /// `(region, station_id)`), `run` making client ids unique per run; with `ocpp`,
    /// the stations are charge points of the gateways instead, each booted when this
    /// returns.
    pub async fn connect(
        brokers: &Brokers,
        stations: &[(String, String)],
        ocpp: Option<&OcppGateways>,
        run: &str,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let shutdown = shutdown.child_token();
        let (tx, answers) = mpsc::unbounded_channel();
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let mut fleets = HashMap::new();
        let mut links = Vec::new();
        let by_region: HashMap<String, Arc<AtomicU64>> = brokers
            .urls
            .keys()
            .map(|r| (r.clone(), Arc::new(AtomicU64::new(0))))
            .collect();
        for (region, url) in &brokers.urls {
            let (username, password) = brokers.login(&format!("fleet-{region}"));
            let settings = LinkSettings {
                url: url.clone(),
                client_id: format!("device-sim-{run}-fleet-{region}"),
                persistent: false,
                username,
                password,
                will: None,
                ca_file: brokers.ca_file.clone(),
                ..Default::default()
            };
            let filter = topics::filters::vehicles(region, VehicleChannel::Recommendation);
            let link = Link::connect(&settings, vec![(filter, 1)], &shutdown)
                .await
                .with_context(|| format!("connecting the fleet of region {region} to {url}"))?;
            fleets.insert(region.clone(), link.publisher());
            let link = Arc::new(tokio::sync::Mutex::new(link));
            links.push(link.clone());
            let (tx, received, shutdown) = (tx.clone(), received.clone(), shutdown.clone());
            let regional = by_region[region].clone();
            tasks.spawn(async move {
                let mut link = link.lock().await;
                while let Some(msg) = link.next(&shutdown).await {
                    received.fetch_add(1, Ordering::Relaxed);
                    regional.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    let Ok(Topic::Vehicle { vehicle_id, .. }) = Topic::parse(msg.topic()) else {
                        continue;
                    };
                    match serde_json::from_slice::<Recommendation>(msg.payload()) {
                        Ok(recommendation) => {
                            let _ = tx.send(Answer {
                                vehicle_id: vehicle_id.to_owned(),
                                recommendation,
                                received: now,
                            });
                        }
                        Err(e) => {
                            warn!(topic = msg.topic(), error = %e, "undecodable recommendation")
                        }
                    }
                }
            });
        }

        // Stations: one client each, connected one after another — paho.mqtt.c 1.3
        // deadlocks its send and receive threads when hundreds of connects are in
        // progress at once (the send thread blocks writing to its full wake-up socket
        // while holding the lock the receive thread needs to drain it).
        let sent = Arc::new(AtomicU64::new(0));
        let charge_points = match ocpp {
            Some(gateways) => {
                let mut points = Vec::with_capacity(stations.len());
                for ((region, id), &connectors) in stations.iter().zip(&gateways.connectors) {
                    points.push(crate::ocpp::ChargePoint {
                        id: id.clone(),
                        connectors,
                        url: gateways
                            .urls
                            .get(region)
                            .with_context(|| format!("no OCPP gateway for region {region}"))?
                            .clone(),
                        region_counter: by_region
                            .get(region)
                            .with_context(|| format!("no broker for region {region}"))?
                            .clone(),
                    });
                }
                let points = crate::ocpp::ChargePoints::connect(
                    points,
                    sent.clone(),
                    received.clone(),
                    gateways.now_ms,
                    &shutdown,
                )
                .await
                .context("connecting the stations to the OCPP gateways")?;
                Some(points)
            }
            None => None,
        };
        let mqtt_stations = if charge_points.is_some() {
            &[][..]
        } else {
            stations
        };
        let mut station_links = Vec::with_capacity(mqtt_stations.len());
        let mut station_counters = Vec::with_capacity(mqtt_stations.len());
        let mut station_gateways = Vec::with_capacity(mqtt_stations.len());
        let mut station_publishers = Vec::with_capacity(mqtt_stations.len());
        let mut latest = None;
        if brokers.shared_stations && !mqtt_stations.is_empty() {
            let statuses: LatestStatuses =
                Arc::new(std::sync::Mutex::new(vec![None; mqtt_stations.len()]));
            let mut of_region: std::collections::BTreeMap<&str, Vec<usize>> =
                std::collections::BTreeMap::new();
            for (i, (region, _)) in mqtt_stations.iter().enumerate() {
                of_region.entry(region.as_str()).or_default().push(i);
            }
            let mut gateways = HashMap::new();
            for (region, members) in of_region {
                let subscriptions = if brokers.station_reservations {
                    vec![(
                        topics::filters::stations(region, StationChannel::Reservations),
                        1,
                    )]
                } else {
                    Vec::new()
                };
                let ids: HashMap<String, usize> = members
                    .iter()
                    .map(|&i| (mqtt_stations[i].1.clone(), i))
                    .collect();
                let url = brokers
                    .urls
                    .get(region)
                    .with_context(|| format!("no broker for region {region}"))?
                    .clone();
                let id = StationGateway::id(region);
                let (username, password) = brokers.login(&id);
                let (will_topic, will_payload) = StationGateway::presence(region, false);
                let settings = LinkSettings {
                    url: url.clone(),
                    client_id: format!("device-sim-{run}-{id}"),
                    persistent: false,
                    username,
                    password,
                    will: Some(Will {
                        topic: will_topic,
                        payload: will_payload,
                        qos: 1,
                        retain: true,
                    }),
                    ca_file: brokers.ca_file.clone(),
                    ..Default::default()
                };
                let mut link = Link::connect(&settings, subscriptions, &shutdown)
                    .await
                    .with_context(|| {
                        format!("connecting the stations of region {region} to {url}")
                    })?;
                let publisher = link.publisher();
                // Online before any status: a status naming a gateway that is down
                // counts as offline.
                let (topic, payload) = StationGateway::presence(region, true);
                publisher
                    .publish_confirmed(&topic, &payload, 1, true)
                    .await
                    .with_context(|| {
                        format!("announcing the stations' gateway of region {region}")
                    })?;
                sent.fetch_add(1, Ordering::Relaxed);
                let (again, statuses, region_owned, counter) = (
                    publisher.clone(),
                    statuses.clone(),
                    region.to_owned(),
                    by_region[region].clone(),
                );
                link.on_reconnect = Some(Box::new(move || {
                    let (topic, payload) = StationGateway::presence(&region_owned, true);
                    again.publish(&topic, &payload, 1, true);
                    let latest = statuses.lock().unwrap_or_else(|e| e.into_inner());
                    for (topic, payload) in members.iter().filter_map(|&i| latest[i].as_ref()) {
                        again.publish(topic, payload, 1, true);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                gateways.insert(region.to_owned(), (publisher, id));
                station_links.push((
                    link,
                    Readers::ById(Arc::new(ids)),
                    by_region[region].clone(),
                ));
            }
            for (region, _) in mqtt_stations {
                let (publisher, id) = &gateways[region];
                station_publishers.push(publisher.clone());
                station_gateways.push(Some(id.clone()));
                station_counters.push(by_region[region].clone());
            }
            latest = Some(statuses);
        } else {
            for (i, (region, id)) in mqtt_stations.iter().enumerate() {
                let url = brokers
                    .urls
                    .get(region)
                    .with_context(|| format!("no broker for region {region}"))?
                    .clone();
                station_counters.push(by_region[region].clone());
                station_gateways.push(None);
                let offline = StationStatus::offline(id.clone());
                let (username, password) = brokers.login(id);
                let settings = LinkSettings {
                    url,
                    client_id: id.clone(),
                    persistent: false,
                    username,
                    password,
                    will: Some(Will {
                        topic: topics::station_status(region, id),
                        payload: protocol::encode(&offline),
                        qos: 1,
                        retain: true,
                    }),
                    ca_file: brokers.ca_file.clone(),
                    ..Default::default()
                };
                let subscriptions = if brokers.station_reservations {
                    vec![(topics::station_reservations(region, id), 1)]
                } else {
                    Vec::new()
                };
                let link = Link::connect(&settings, subscriptions, &shutdown)
                    .await
                    .with_context(|| format!("connecting station {id}"))?;
                station_publishers.push(link.publisher());
                station_links.push((link, Readers::One(i), by_region[region].clone()));
            }
        }
        let (station_tx, station_messages) = mpsc::unbounded_channel();
        for (link, readers, regional) in station_links {
            let link = Arc::new(tokio::sync::Mutex::new(link));
            links.push(link.clone());
            let (shutdown, tx, received) = (shutdown.clone(), station_tx.clone(), received.clone());
            // Keeps the connection (reconnects after a broker restart) and hands on
            // what the fog sends its stations.
            tasks.spawn(async move {
                let mut link = link.lock().await;
                while let Some(msg) = link.next(&shutdown).await {
                    received.fetch_add(1, Ordering::Relaxed);
                    regional.fetch_add(1, Ordering::Relaxed);
                    match readers.station(msg.topic()) {
                        Some(s) => {
                            let _ = tx.send((s, msg.payload().to_vec()));
                        }
                        None => debug!(topic = msg.topic(), "a message for no station of ours"),
                    }
                }
            });
        }
        Ok(Self {
            fleets,
            stations: station_publishers,
            answers,
            station_messages,
            sent,
            received,
            by_region,
            station_counters,
            station_gateways,
            latest,
            tasks,
            links,
            ocpp: charge_points,
            shutdown,
        })
    }

    /// The stations' OCPP charge points, when they are.
    pub fn ocpp(&self) -> Option<&crate::ocpp::ChargePoints> {
        self.ocpp.as_ref()
    }

    /// Publishes through the fleet connection of `region`.
    pub fn fleet_publish(&self, region: &str, topic: &str, payload: &[u8], qos: i32) {
        match self.fleets.get(region) {
            Some(p) => {
                p.publish(topic, payload, qos, false);
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.count(region);
            }
            None => debug!(region, "no fleet connection for this region"),
        }
    }

    /// The gateway station `station`'s status must name (`None`: its own client).
    pub fn station_gateway(&self, station: usize) -> Option<&str> {
        self.station_gateways.get(station)?.as_deref()
    }

    fn remember(&self, station: usize, topic: &str, payload: &[u8]) {
        if let Some(latest) = &self.latest {
            let mut latest = latest.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = latest.get_mut(station) {
                *slot = Some((topic.to_owned(), payload.to_vec()));
            }
        }
    }

    /// Publishes a station's status, retained, QoS 1.
    pub fn station_publish(&self, station: usize, topic: &str, payload: &[u8]) {
        if let Some(p) = self.stations.get(station) {
            self.remember(station, topic, payload);
            p.publish(topic, payload, 1, true);
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.station_counters[station].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes a station's message other than its status (a reservation event),
    /// QoS 1, not retained.
    pub fn station_send(&self, station: usize, topic: &str, payload: &[u8]) {
        if let Some(p) = self.stations.get(station) {
            p.publish(topic, payload, 1, false);
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.station_counters[station].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, region: &str) {
        if let Some(c) = self.by_region.get(region) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages sent and received so far, per region's broker.
    pub fn messages_by_region(&self) -> std::collections::BTreeMap<String, u64> {
        self.by_region
            .iter()
            .map(|(r, c)| (r.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Publishes every station's status and waits until the broker has them all.
    pub async fn station_publish_confirmed(
        &self,
        messages: Vec<(usize, String, Vec<u8>)>,
    ) -> Result<()> {
        let mut set = JoinSet::new();
        for (station, topic, payload) in messages {
            let Some(p) = self.stations.get(station).cloned() else {
                continue;
            };
            self.remember(station, &topic, &payload);
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.station_counters[station].fetch_add(1, Ordering::Relaxed);
            set.spawn(async move { p.publish_confirmed(&topic, &payload, 1, true).await });
        }
        while let Some(r) = set.join_next().await {
            r.context("publish task")??;
        }
        Ok(())
    }

    pub fn messages(&self) -> u64 {
        self.sent.load(Ordering::Relaxed) + self.received.load(Ordering::Relaxed)
    }

    /// Disconnects every device cleanly (no last will is sent).
    pub async fn close(mut self) {
        if let Some(points) = self.ocpp.take() {
            points.close().await;
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        // One at a time: paho.mqtt.c deadlocks on hundreds of concurrent closes (see
        // `connect`).
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            for link in self.links.drain(..) {
                link.lock().await.disconnect().await;
            }
        })
        .await;
    }
}
