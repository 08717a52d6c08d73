//! The region's state and what each incoming message does to it. No I/O: the MQTT
//! link hands in `(topic, payload)` and publishes what comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use protocol::fog::{
    Aggregate, AggregateStation, CentralHeartbeat, FogMessage, Handoff, HandoffReply, RerouteReply,
    RerouteRequest,
};
use protocol::{
    ChargeRequest, ProtocolError, Recommendation, RecommendationStatus, ReservationAction,
    ReservationUpdate, StationChannel, StationRef, StationState, StationStatus, Telemetry, Topic,
    VehicleChannel, decode, topics, validate_id,
};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::index::{Change, Slot, Station};
use crate::metrics::{KindLabel, Metrics, StateLabel, StatusLabel};
use crate::planner::{Choice, NoChoice, Planner, PlannerParams, ReservationChange};
use crate::store::{Record, Restored, Saved, Store};

mod station_reservations;

/// Answers remembered per vehicle, so a redelivered request gets the same answer.
const REMEMBERED_ANSWERS: usize = 8;
/// How long a vehicle's remembered answers are kept after its last request.
const ANSWER_MEMORY_MS: u64 = 3_600_000;

/// How many of the region's best stations an aggregate lists.
const AGGREGATE_BEST: usize = 8;
/// How long handoff replies are remembered, for redelivered handoffs.
const HANDOFF_MEMORY_MS: u64 = 600_000;

/// Cross-region rerouting, as the fog server sees it.
#[derive(Debug, Clone)]
pub struct RerouteSettings {
    /// Ask central when the region is saturated for a request.
    pub enabled: bool,
    /// How long to wait for central's answer before answering locally.
    pub timeout: std::time::Duration,
    /// Clock ms per real ms: the deadline sent to central is on the (scaled) clock.
    pub clock_speed: f64,
    /// Central counts as unreachable when its last heartbeat is older than this (or
    /// none came yet): saturated requests are then answered at once, not asked.
    pub central_timeout: std::time::Duration,
}

impl Default for RerouteSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: std::time::Duration::from_millis(1500),
            clock_speed: 1.0,
            central_timeout: std::time::Duration::from_millis(3500),
        }
    }
}

/// A request waiting for central's reroute answer.
#[derive(Debug)]
struct PendingReroute {
    vehicle_id: String,
    request: ChargeRequest,
    deadline: Instant,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

#[derive(Debug, Default)]
struct VehicleMemory {
    answers: VecDeque<(String, Recommendation)>,
    last_ms: u64,
}

/// Everything a fog server knows about its region.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub planner: Planner,
    vehicles: HashMap<String, VehicleMemory>,
    metrics: Arc<Metrics>,
    next_reservation: u64,
    /// Random per process start, so reservation ids differ across restarts.
    id_salt: u32,
    pub reroute: RerouteSettings,
    /// Reroutes waiting for central, by reroute id.
    pending: HashMap<String, PendingReroute>,
    /// Handoff replies already sent, by handoff id (with when), for redeliveries.
    handoffs: HashMap<String, (HandoffReply, u64)>,
    /// The region's outline, for aggregates.
    pub outline: Vec<[f64; 2]>,
    aggregate_seq: u64,
    saturated_requests: u64,
    /// Requests answered since start (any status), for the aggregates.
    answered: std::cell::Cell<u64>,
    /// Something an aggregate shows changed since the last one.
    dirty: bool,
    /// Where reservations are kept across restarts (none: in memory only).
    store: Option<Store>,
    /// Reservations read back at start whose station is not known yet, by station id.
    restoring: HashMap<String, Vec<Saved>>,
    /// Answers to publish at the next tick (requests superseded while with central).
    deferred: Vec<Outgoing>,
    /// Central's last heartbeat and when it came.
    central: Option<(Instant, CentralHeartbeat)>,
    /// Central's recent "no region within" answers (see [`NoRegionHint`]).
    hints: VecDeque<NoRegionHint>,
    /// Stations that take reservations and what they were told.
    station_reservations: station_reservations::StationReservations,
}

/// Central said that no region that can take vehicles lists a station within `km` of
/// (`lat`, `lon`): until `until`, a request that could not reach past that either is
/// answered at once.
#[derive(Debug, Clone)]
struct NoRegionHint {
    lat: f64,
    lon: f64,
    km: f64,
    at: Instant,
    until: Instant,
}

/// Most hints kept.
const HINTS: usize = 32;

/// What the fog knows of central when a request is saturated.
#[derive(Debug, Clone, PartialEq)]
pub enum CentralView {
    /// Heard recently, and another region can take vehicles: ask.
    Ask,
    /// Heard recently, but no other region can take vehicles now.
    NoOpenRegion,
    /// Not heard within the timeout (or never).
    Unreachable { silent_ms: Option<u128> },
}

impl Region {
    pub fn new(name: impl Into<String>, params: PlannerParams, metrics: Arc<Metrics>) -> Self {
        Self {
            name: name.into(),
            planner: {
                // Changes are read only by a state store (see `attach_store`).
                let mut planner = Planner::new(params);
                planner.keep_changes(false);
                planner
            },
            vehicles: HashMap::new(),
            metrics,
            next_reservation: 0,
            id_salt: rand::random(),
            reroute: RerouteSettings::default(),
            pending: HashMap::new(),
            handoffs: HashMap::new(),
            outline: Vec::new(),
            aggregate_seq: 0,
            saturated_requests: 0,
            answered: std::cell::Cell::new(0),
            dirty: true,
            store: None,
            restoring: HashMap::new(),
            deferred: Vec::new(),
            central: None,
            hints: VecDeque::new(),
            station_reservations: Default::default(),
        }
    }

    /// How far `req` can get, great-circle km (its usable range over the road factor).
    fn reach_km(&self, req: &ChargeRequest) -> f64 {
        let vehicle = cost_model::Vehicle::from(req);
        self.planner.params.cost.reach_great_circle_km(&vehicle)
    }

    /// Whether central's heartbeat says that every station of a region that can take
    /// vehicles is beyond `req`'s reach.
    fn beyond_reach(&self, req: &ChargeRequest) -> bool {
        let Some(nearest_open_km) = self.central.as_ref().and_then(|(_, hb)| hb.nearest_open_km)
        else {
            return false;
        };
        let Some(outside_km) =
            protocol::fog::distance_to_outline_km(&self.outline, req.lat, req.lon)
        else {
            return false;
        };
        outside_km + self.reach_km(req) < nearest_open_km
    }

    /// A recent hint of central's that covers `req`: it can reach no region that could
    /// take it. Its age, if so.
    fn hint_for(&mut self, req: &ChargeRequest) -> Option<std::time::Duration> {
        let now = Instant::now();
        self.hints.retain(|h| h.until > now);
        let reach_km = self.reach_km(req);
        self.hints
            .iter()
            .find(|h| protocol::geo::haversine_km(req.lat, req.lon, h.lat, h.lon) + reach_km < h.km)
            .map(|h| h.at.elapsed())
    }

    /// What asking central for a saturated request would do now.
    pub fn central_view(&self) -> CentralView {
        match &self.central {
            None => CentralView::Unreachable { silent_ms: None },
            Some((at, _)) if at.elapsed() > self.reroute.central_timeout => {
                CentralView::Unreachable {
                    silent_ms: Some(at.elapsed().as_millis()),
                }
            }
            Some((_, hb)) if hb.open_regions.iter().any(|r| *r != self.name) => CentralView::Ask,
            Some(_) => CentralView::NoOpenRegion,
        }
    }

    /// The regions central's last heartbeat lists as able to take vehicles.
    pub fn central_open_regions(&self) -> Vec<String> {
        self.central
            .as_ref()
            .map(|(_, hb)| hb.open_regions.clone())
            .unwrap_or_default()
    }

    /// Whether central's heartbeat was heard within the timeout.
    pub fn central_present(&self) -> bool {
        !matches!(self.central_view(), CentralView::Unreachable { .. })
    }

    fn on_heartbeat(&mut self, payload: &[u8]) {
        let hb = match decode::<CentralHeartbeat>(payload) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "central heartbeat refused");
                self.metrics.invalid("heartbeat");
                return;
            }
        };
        match &self.central {
            None => {
                info!(open_regions = ?hb.open_regions, "central heard: saturated requests are rerouted")
            }
            Some((at, _)) if at.elapsed() > self.reroute.central_timeout => {
                info!(
                    silent_ms = at.elapsed().as_millis() as u64,
                    "central heard again: saturated requests are rerouted again"
                )
            }
            Some((_, old)) if old.started_ms != hb.started_ms => info!("central restarted"),
            Some(_) => {}
        }
        if self
            .central
            .as_ref()
            .is_none_or(|(_, old)| old.open_regions != hb.open_regions)
        {
            // Which regions can take vehicles changed: central's hints are out of date.
            self.hints.clear();
        }
        self.central = Some((Instant::now(), hb));
    }

    /// Keeps reservations in `store` from now on, and puts back those it held (each as
    /// soon as its station is known again).
    pub fn attach_store(&mut self, store: Store, restored: Restored, now_ms: u64) {
        self.store = Some(store);
        self.planner.keep_changes(true);
        for entry in restored.reservations {
            self.restoring
                .entry(entry.reservation.station_id.clone())
                .or_default()
                .push(entry);
        }
        let known: Vec<String> = self
            .restoring
            .keys()
            .filter(|id| self.planner.stations.slot_of(id).is_some())
            .cloned()
            .collect();
        for station_id in known {
            self.restore_at(&station_id, now_ms);
        }
    }

    /// Reservations read back at start and not yet put back.
    pub fn restoring(&self) -> usize {
        self.restoring.values().map(Vec::len).sum()
    }

    /// Puts back the saved reservations of a station that just became known.
    fn restore_at(&mut self, station_id: &str, now_ms: u64) {
        let Some(entries) = self.restoring.remove(station_id) else {
            return;
        };
        let mut restored = 0;
        for Saved {
            reservation,
            request_id,
            answer,
        } in entries
        {
            if reservation.expires_ms <= now_ms {
                continue;
            }
            let vehicle = reservation.vehicle_id.clone();
            if self.planner.restore(reservation) {
                restored += 1;
                if let (Some(request_id), Some(answer)) = (request_id, answer) {
                    self.remember(&vehicle, &request_id, &answer, now_ms);
                }
            }
        }
        if restored > 0 {
            info!(station = station_id, restored, "reservations restored");
            self.dirty = true;
        }
    }

    /// Writes the reservations made and ended since the last call to the store.
    fn sync_store(&mut self) {
        let changes = self.planner.take_changes();
        self.tell_stations(&changes);
        let Some(store) = self.store.as_mut() else {
            return;
        };
        for change in changes {
            let record = match change {
                ReservationChange::Made(reservation) => {
                    let remembered = self.vehicles.get(&reservation.vehicle_id).and_then(|m| {
                        m.answers.iter().rev().find(|(_, a)| {
                            a.reservation_id.as_deref() == Some(reservation.reservation_id.as_str())
                        })
                    });
                    Record::Made(Box::new(Saved {
                        request_id: remembered.map(|(id, _)| id.clone()),
                        answer: remembered.map(|(_, a)| a.clone()),
                        reservation,
                    }))
                }
                ReservationChange::Ended(id) => Record::Ended { id },
            };
            store.append(record);
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A fresh id, unique across restarts: `{region}-{kind}{salt}{counter}`, at most 64
    /// characters.
    fn next_id(&mut self, kind: &str) -> String {
        self.next_reservation += 1;
        format!(
            "{}-{kind}{:08x}{:x}",
            truncate_id(&self.name, 40 - kind.len()),
            self.id_salt,
            self.next_reservation
        )
    }

    /// Handles one message received on the region's broker.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        let out = self.handle_message(topic, payload, now_ms);
        self.sync_store();
        out
    }

    fn handle_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        if topic.starts_with("fog/") {
            return self.on_fog_message(topic, payload, now_ms);
        }
        let parsed = match Topic::parse(topic) {
            Ok(t) if t.region() == self.name => t,
            Ok(_) => {
                warn!(topic, "message for another region ignored");
                self.metrics.invalid("topic");
                return None;
            }
            Err(e) => {
                warn!(error = %e, "message on a malformed topic dropped");
                self.metrics.invalid("topic");
                return None;
            }
        };
        match parsed {
            Topic::StationStatus { station_id, .. } => {
                self.on_status(station_id, payload, now_ms);
                None
            }
            Topic::Vehicle {
                vehicle_id,
                channel,
                ..
            } => match channel {
                VehicleChannel::Request => self.on_request(vehicle_id, payload, now_ms),
                VehicleChannel::Reservation => {
                    self.on_reservation(vehicle_id, payload);
                    None
                }
                VehicleChannel::Telemetry => {
                    self.on_telemetry(vehicle_id, payload);
                    None
                }
                VehicleChannel::Recommendation => None,
            },
            Topic::Station {
                station_id,
                channel: StationChannel::ReservationEvents,
                ..
            } => self.on_station_reservation_event(station_id, payload),
            Topic::Station { .. } => None,
        }
    }

    fn on_status(&mut self, station_id: &str, payload: &[u8], now_ms: u64) {
        if payload.is_empty() {
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let released = self.planner.release_station(slot);
                self.count_ended("station_removed", released);
                self.planner.stations.remove(station_id);
                info!(station = station_id, released, "station removed");
                self.dirty = true;
            }
            self.refresh_station_gauges();
            return;
        }
        let status = match decode::<StationStatus>(payload) {
            Ok(s) if s.station_id == station_id => s,
            Ok(s) => {
                let e = ProtocolError::TopicMismatch {
                    field: "station_id",
                    payload: s.station_id,
                    topic: station_id.into(),
                };
                warn!(station = station_id, error = %e, "station status refused");
                self.metrics.invalid("status");
                return;
            }
            Err(e) => {
                warn!(station = station_id, error = %e, "station status refused");
                self.metrics.invalid("status");
                return;
            }
        };
        self.note_station_reservations(&status);
        let change = self.planner.stations.apply(&status, now_ms);
        self.dirty = true;
        debug!(
            station = station_id,
            state = status.state.as_str(),
            ?change,
            "station status"
        );
        if change == Change::Inserted {
            info!(station = station_id, "station added");
        }
        if change != Change::Ignored && status.state.is_in_service() {
            self.restore_at(station_id, now_ms);
        }
        if change != Change::Ignored && !status.state.is_in_service() {
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let released = self.planner.release_station(slot);
                self.count_ended("station_removed", released);
            }
        }
        self.refresh_station_gauges();
    }

    fn on_request(&mut self, vehicle_id: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        let started = Instant::now();
        let answer = match decode::<ChargeRequest>(payload) {
            Ok(req) => match self.answer(vehicle_id, req, now_ms) {
                Answer::Now(answer) => answer,
                Answer::AskCentral(out) => return out,
            },
            Err(e) => {
                warn!(vehicle = vehicle_id, error = %e, "charge request rejected");
                self.metrics.invalid("request");
                Recommendation::refusal(
                    request_id_of(payload),
                    RecommendationStatus::Rejected,
                    e.to_string(),
                    &self.name,
                )
            }
        };
        self.metrics
            .planning_seconds
            .observe(started.elapsed().as_secs_f64());
        Some(self.reply(vehicle_id, &answer))
    }

    /// The recommendation message for a vehicle, counted.
    fn reply(&self, vehicle_id: &str, answer: &Recommendation) -> Outgoing {
        self.answered.set(self.answered.get() + 1);
        self.metrics
            .requests
            .get_or_create(&StatusLabel {
                status: answer.status.as_str(),
            })
            .inc();
        self.metrics
            .reservations_active
            .set(self.planner.active_reservations() as i64);
        Outgoing {
            topic: topics::recommendation(&self.name, vehicle_id),
            payload: protocol::encode(answer),
            retain: false,
        }
    }

    fn remember(
        &mut self,
        vehicle_id: &str,
        request_id: &str,
        answer: &Recommendation,
        now_ms: u64,
    ) {
        // Only a vehicle seen for the first time costs a copy of its id.
        let memory = match self.vehicles.get_mut(vehicle_id) {
            Some(memory) => memory,
            None => self.vehicles.entry(vehicle_id.to_owned()).or_default(),
        };
        if memory.answers.len() == REMEMBERED_ANSWERS {
            memory.answers.pop_front();
        }
        memory
            .answers
            .push_back((request_id.to_owned(), answer.clone()));
        memory.last_ms = now_ms;
    }

    /// The answer to a valid request: remembered if the request id was seen before,
    /// planned here, or (saturated) asked of central.
    fn answer(&mut self, vehicle_id: &str, req: ChargeRequest, now_ms: u64) -> Answer {
        if let Some(previous) = self.vehicles.get(vehicle_id).and_then(|m| {
            m.answers
                .iter()
                .find(|(id, _)| *id == req.request_id)
                .map(|(_, a)| a.clone())
        }) {
            debug!(vehicle = vehicle_id, request = %req.request_id, "repeated request answered from memory");
            self.metrics.duplicate_requests.inc();
            return Answer::Now(previous);
        }
        if self
            .pending
            .values()
            .any(|p| p.vehicle_id == vehicle_id && p.request.request_id == req.request_id)
        {
            debug!(vehicle = vehicle_id, request = %req.request_id, "repeated request already with central");
            self.metrics.duplicate_requests.inc();
            return Answer::AskCentral(None);
        }
        // A request still with central is superseded by this one: it is answered
        // `unavailable` (at the next tick) and central's late reply will be ignored, so
        // that it cannot replace the reservation this request gets.
        let superseded: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.vehicle_id == vehicle_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in superseded {
            if let Some(p) = self.pending.remove(&id) {
                let answer = Recommendation::refusal(
                    p.request.request_id.clone(),
                    RecommendationStatus::Unavailable,
                    format!("superseded by request {}", req.request_id),
                    &self.name,
                );
                self.remember(vehicle_id, &p.request.request_id, &answer, now_ms);
                let out = self.reply(vehicle_id, &answer);
                self.deferred.push(out);
            }
        }
        // A new request means the vehicle's plans changed: its old promise goes.
        if let Some(old) = self
            .planner
            .reservation_of(vehicle_id)
            .map(|r| r.reservation_id.clone())
        {
            if self.planner.end(&old, vehicle_id).is_ok() {
                self.count_ended("replaced", 1);
            }
        }
        let answer = match self.planner.choose(&req, now_ms) {
            Ok(choice) => self.assign(
                vehicle_id,
                &req,
                &choice,
                now_ms,
                RecommendationStatus::Assigned,
                None,
            ),
            Err(no) => {
                self.saturated_requests += 1;
                self.dirty = true;
                if !self.reroute.enabled {
                    self.unavailable(&req, &no)
                } else {
                    let why = match self.central_view() {
                        CentralView::Ask if self.beyond_reach(&req) => {
                            self.count_reroute("no_region_in_reach");
                            "no other region that can take vehicles is in reach (central's heartbeat)"
                                .to_owned()
                        }
                        CentralView::Ask => match self.hint_for(&req) {
                            None => {
                                return Answer::AskCentral(Some(
                                    self.ask_central(vehicle_id, req, &no, now_ms),
                                ));
                            }
                            Some(age) => {
                                self.count_reroute("no_region_in_reach");
                                format!(
                                    "no other region that can take vehicles is in reach (central, {} ms ago)",
                                    age.as_millis()
                                )
                            }
                        },
                        CentralView::NoOpenRegion => {
                            self.count_reroute("no_open_region");
                            "no other region can take vehicles now (central's heartbeat lists none)"
                                .to_owned()
                        }
                        CentralView::Unreachable { silent_ms } => {
                            self.count_reroute("central_unreachable");
                            match silent_ms {
                                Some(ms) => {
                                    format!("central unreachable (no heartbeat for {ms} ms)")
                                }
                                None => "central unreachable (no heartbeat heard yet)".to_owned(),
                            }
                        }
                    };
                    self.answer_locally(vehicle_id, &req, &why, now_ms)
                }
            }
        };
        self.remember(vehicle_id, &req.request_id, &answer, now_ms);
        Answer::Now(answer)
    }

    /// An `unavailable` answer saying why.
    fn unavailable(&self, req: &ChargeRequest, no: &NoChoice) -> Recommendation {
        Recommendation::refusal(
            req.request_id.clone(),
            RecommendationStatus::Unavailable,
            saturation_reason(no, self.planner.params.cost.max_wait_s),
            self.name.clone(),
        )
    }

    /// Sends the request to central for a reroute; the vehicle is answered when
    /// central replies or the timeout passes ([`Region::tick`]).
    fn ask_central(
        &mut self,
        vehicle_id: &str,
        req: ChargeRequest,
        no: &NoChoice,
        now_ms: u64,
    ) -> Outgoing {
        let reroute_id = self.next_id("rr-");
        let local_best_total_s = match no {
            NoChoice::TooSlow { best } => Some(best.total_s()),
            NoChoice::NothingReachable { .. } => None,
        };
        let message = RerouteRequest {
            v: protocol::PROTOCOL_VERSION,
            reroute_id: reroute_id.clone(),
            origin_region: self.name.clone(),
            vehicle_id: vehicle_id.to_owned(),
            request: req.clone(),
            local_best_total_s,
            deadline_ms: now_ms
                + (self.reroute.timeout.as_secs_f64() * 1000.0 * self.reroute.clock_speed) as u64,
        };
        info!(vehicle = vehicle_id, request = %req.request_id, reroute = %reroute_id, "region saturated: asking central");
        self.metrics
            .reroutes
            .get_or_create(&KindLabel { kind: "requested" })
            .inc();
        self.pending.insert(
            reroute_id,
            PendingReroute {
                vehicle_id: vehicle_id.to_owned(),
                request: req,
                deadline: Instant::now() + self.reroute.timeout,
            },
        );
        Outgoing {
            topic: FogMessage::Reroute.regional_topic(),
            payload: protocol::encode(&message),
            retain: false,
        }
    }

    /// Reserves `choice` for the vehicle and builds the answer.
    fn assign(
        &mut self,
        vehicle_id: &str,
        req: &ChargeRequest,
        choice: &Choice,
        now_ms: u64,
        status: RecommendationStatus,
        reason: Option<String>,
    ) -> Recommendation {
        let reservation_id = self.next_id("");
        let refusal = |reason: &str| {
            Recommendation::refusal(
                req.request_id.clone(),
                RecommendationStatus::Unavailable,
                reason,
                self.name.clone(),
            )
        };
        let Some((reservation_id, expires_ms)) = self
            .planner
            .reserve(reservation_id, vehicle_id, choice, now_ms)
            .map(|r| (r.reservation_id.clone(), r.expires_ms))
        else {
            return refusal("internal error: chosen station vanished");
        };
        self.dirty = true;
        let Some(station) = self.planner.stations.get(choice.slot) else {
            return refusal("internal error: chosen station vanished");
        };
        Recommendation {
            v: protocol::PROTOCOL_VERSION,
            request_id: req.request_id.clone(),
            status,
            station: Some(StationRef {
                station_id: station.station_id.clone(),
                region: self.name.clone(),
                lat: station.lat,
                lon: station.lon,
            }),
            distance_km: Some((choice.road_km * 100.0).round() / 100.0),
            eta_s: Some(choice.eta_s.round() as u32),
            wait_s: Some(choice.wait_s.round() as u32),
            charge_s: Some(choice.charge_s.round() as u32),
            reservation_id: Some(reservation_id),
            expires_ms: Some(expires_ms),
            reason,
            served_by: Some(self.name.clone()),
            data_age_ms: Some(now_ms.saturating_sub(station.updated_ms)),
            revised: false,
        }
    }

    /// The local answer for a request central could not place (or did not answer in
    /// time): the best local station despite its wait, or `unavailable`.
    fn answer_locally(
        &mut self,
        vehicle_id: &str,
        req: &ChargeRequest,
        why: &str,
        now_ms: u64,
    ) -> Recommendation {
        match self.planner.choose(req, now_ms) {
            Ok(choice) => self.assign(
                vehicle_id,
                req,
                &choice,
                now_ms,
                RecommendationStatus::Assigned,
                Some(format!("{why}; a local station has room again")),
            ),
            Err(NoChoice::TooSlow { best }) => {
                let reason = format!(
                    "{why}; best local station despite a predicted wait of {:.0} s",
                    best.wait_s
                );
                self.assign(
                    vehicle_id,
                    req,
                    &best,
                    now_ms,
                    RecommendationStatus::Assigned,
                    Some(reason),
                )
            }
            Err(no @ NoChoice::NothingReachable { .. }) => {
                let mut answer = self.unavailable(req, &no);
                answer.reason = Some(format!("{why}; {}", answer.reason.unwrap_or_default()));
                answer
            }
        }
    }

    fn on_fog_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        match FogMessage::parse_regional(topic) {
            Ok(FogMessage::Handoff) => self.on_handoff(payload, now_ms),
            Ok(FogMessage::RerouteReply) => self.on_reroute_reply(payload, now_ms),
            Ok(FogMessage::Heartbeat) => {
                self.on_heartbeat(payload);
                None
            }
            Ok(_) | Err(_) => {
                warn!(topic, "unexpected message on a fog topic dropped");
                self.metrics.invalid("fog");
                None
            }
        }
    }

    /// Central asks this region to take a vehicle from another region.
    fn on_handoff(&mut self, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        let handoff = match decode::<Handoff>(payload) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "handoff refused");
                self.metrics.invalid("handoff");
                return None;
            }
        };
        let reply = match self.handoffs.get(&handoff.handoff_id) {
            Some((reply, _)) => reply.clone(),
            None => {
                let reply = self.take_handoff(&handoff, now_ms);
                self.handoffs
                    .insert(handoff.handoff_id.clone(), (reply.clone(), now_ms));
                reply
            }
        };
        Some(Outgoing {
            topic: FogMessage::HandoffReply.regional_topic(),
            payload: protocol::encode(&reply),
            retain: false,
        })
    }

    fn take_handoff(&mut self, h: &Handoff, now_ms: u64) -> HandoffReply {
        let refuse = |reason: String| HandoffReply {
            v: protocol::PROTOCOL_VERSION,
            handoff_id: h.handoff_id.clone(),
            region: self.name.clone(),
            accepted: false,
            recommendation: None,
            reason: Some(reason),
        };
        let choice = match self.planner.choose(&h.request, now_ms) {
            Ok(choice) => choice,
            Err(no) => return refuse(saturation_reason(&no, self.planner.params.cost.max_wait_s)),
        };
        if let Some(max) = h.max_total_s {
            if choice.total_s() >= max {
                return refuse(format!(
                    "best total here is {:.0} s, no better than {max:.0} s at the origin",
                    choice.total_s()
                ));
            }
        }
        let reason = format!(
            "region {} is saturated; rerouted to {}",
            h.origin_region, self.name
        );
        let recommendation = self.assign(
            &h.vehicle_id,
            &h.request,
            &choice,
            now_ms,
            RecommendationStatus::Rerouted,
            Some(reason),
        );
        let accepted = recommendation.status == RecommendationStatus::Rerouted;
        info!(vehicle = %h.vehicle_id, origin = %h.origin_region, accepted, "handoff");
        self.metrics
            .handoffs
            .get_or_create(&KindLabel {
                kind: if accepted { "accepted" } else { "refused" },
            })
            .inc();
        HandoffReply {
            v: protocol::PROTOCOL_VERSION,
            handoff_id: h.handoff_id.clone(),
            region: self.name.clone(),
            accepted,
            reason: recommendation.reason.clone(),
            recommendation: accepted.then_some(recommendation),
        }
    }

    /// Central's answer to a reroute: forward it to the vehicle, or answer locally.
    fn on_reroute_reply(&mut self, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
        let reply = match decode::<RerouteReply>(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reroute reply refused");
                self.metrics.invalid("reroute-reply");
                return None;
            }
        };
        let Some(pending) = self.pending.remove(&reply.reroute_id) else {
            debug!(reroute = %reply.reroute_id, "reroute reply for no pending request (late or repeated)");
            return None;
        };
        if let (false, Some(km), Some(hold_ms)) =
            (reply.ok, reply.no_region_within_km, reply.hold_ms)
        {
            let at = Instant::now();
            if self.hints.len() >= HINTS {
                self.hints.pop_front();
            }
            self.hints.push_back(NoRegionHint {
                lat: pending.request.lat,
                lon: pending.request.lon,
                km,
                at,
                until: at + std::time::Duration::from_millis(hold_ms.min(60_000)),
            });
        }
        let answer = match reply.recommendation {
            Some(mut rec) if reply.ok && rec.station.is_some() => {
                rec.request_id = pending.request.request_id.clone();
                rec.status = RecommendationStatus::Rerouted;
                self.metrics
                    .reroutes
                    .get_or_create(&KindLabel { kind: "succeeded" })
                    .inc();
                rec
            }
            _ => {
                self.metrics
                    .reroutes
                    .get_or_create(&KindLabel { kind: "failed" })
                    .inc();
                let why = format!(
                    "no other region could take the vehicle: {}",
                    reply.reason.as_deref().unwrap_or("central gave no reason")
                );
                self.answer_locally(&pending.vehicle_id, &pending.request, &why, now_ms)
            }
        };
        self.remember(
            &pending.vehicle_id,
            &pending.request.request_id,
            &answer,
            now_ms,
        );
        Some(self.reply(&pending.vehicle_id, &answer))
    }

    fn on_reservation(&mut self, vehicle_id: &str, payload: &[u8]) {
        let update = match decode::<ReservationUpdate>(payload) {
            Ok(u) => u,
            Err(e) => {
                warn!(vehicle = vehicle_id, error = %e, "reservation update refused");
                self.metrics.invalid("reservation");
                return;
            }
        };
        match self.planner.end(&update.reservation_id, vehicle_id) {
            Ok(r) => {
                let how = match update.action {
                    ReservationAction::Arrived => "arrived",
                    ReservationAction::Cancel => "cancel",
                };
                info!(vehicle = vehicle_id, reservation = %r.reservation_id, station = %r.station_id, how, "reservation ended");
                self.count_ended(how, 1);
            }
            Err(e) => {
                warn!(vehicle = vehicle_id, reservation = %update.reservation_id, error = %e, "reservation update ignored");
                self.metrics.invalid("reservation");
            }
        }
        self.metrics
            .reservations_active
            .set(self.planner.active_reservations() as i64);
    }

    fn on_telemetry(&mut self, vehicle_id: &str, payload: &[u8]) {
        match decode::<Telemetry>(payload) {
            Ok(_) => {
                self.metrics.telemetry.inc();
            }
            Err(e) => {
                debug!(vehicle = vehicle_id, error = %e, "telemetry refused");
                self.metrics.invalid("telemetry");
            }
        }
    }

    /// Ends reservations whose time is up, answers reroutes central did not answer in
    /// time, and forgets idle vehicles. Call periodically; publish what it returns.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.restoring.retain(|_, entries| {
            entries.retain(|s| s.reservation.expires_ms > now_ms);
            !entries.is_empty()
        });
        let out = self.tick_inner(now_ms);
        self.sync_store();
        out
    }

    fn tick_inner(&mut self, now_ms: u64) -> Vec<Outgoing> {
        let now = Instant::now();
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = std::mem::take(&mut self.deferred);
        for id in late {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            warn!(vehicle = %pending.vehicle_id, reroute = %id, "central did not answer in time");
            self.metrics
                .reroutes
                .get_or_create(&KindLabel { kind: "timed_out" })
                .inc();
            let why = format!(
                "central unreachable (no reroute answer within {} ms)",
                self.reroute.timeout.as_millis()
            );
            let answer = self.answer_locally(&pending.vehicle_id, &pending.request, &why, now_ms);
            self.remember(
                &pending.vehicle_id,
                &pending.request.request_id,
                &answer,
                now_ms,
            );
            out.push(self.reply(&pending.vehicle_id, &answer));
        }
        self.handoffs
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < HANDOFF_MEMORY_MS);
        let expired = self.planner.expire(now_ms);
        for r in &expired {
            info!(vehicle = %r.vehicle_id, reservation = %r.reservation_id, station = %r.station_id, "reservation expired");
        }
        self.count_ended("expired", expired.len());
        if !expired.is_empty() {
            self.dirty = true;
        }
        self.vehicles
            .retain(|_, m| now_ms.saturating_sub(m.last_ms) < ANSWER_MEMORY_MS);
        self.metrics
            .reservations_active
            .set(self.planner.active_reservations() as i64);
        out
    }

    /// Whether something an aggregate shows changed since the last aggregate.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The region's aggregate for central (and marks the state as published).
    pub fn aggregate(&mut self, now_ms: u64) -> Aggregate {
        self.aggregate_seq += 1;
        self.dirty = false;
        let mut agg = Aggregate {
            v: protocol::PROTOCOL_VERSION,
            region: self.name.clone(),
            seq: self.aggregate_seq,
            ts_ms: now_ms,
            stations: self.planner.stations.len() as u32,
            stations_in_service: self.planner.stations.in_service() as u32,
            chargers: 0,
            chargers_free: 0,
            queued: 0,
            reservations: self.planner.active_reservations() as u32,
            min_wait_s: None,
            max_wait_s: Some(self.planner.params.cost.max_wait_s),
            outline: self.outline.clone(),
            best: Vec::new(),
            saturated_requests: self.saturated_requests,
            requests_total: self.answered.get(),
        };
        // Totals over every in-service station; only the best few are described
        // (picked without sorting, or copying, all of them: this runs under the
        // region's lock, every `--aggregate-min-ms` while requests come in).
        let mut ranked: Vec<(u32, Slot, &Station)> = Vec::new();
        for (slot, s) in self.planner.stations.iter() {
            if !s.state.is_in_service() {
                continue;
            }
            agg.chargers += s.chargers;
            agg.chargers_free += s.chargers - s.occupied.min(s.chargers);
            agg.queued += s.queue;
            ranked.push((self.predicted_wait_s(slot, s, now_ms), slot, s));
        }
        let order = |a: &(u32, Slot, &Station), b: &(u32, Slot, &Station)| {
            summary_order(a.0, a.2, b.0, b.2)
        };
        if ranked.len() > AGGREGATE_BEST {
            ranked.select_nth_unstable_by(AGGREGATE_BEST - 1, order);
            ranked.truncate(AGGREGATE_BEST);
        }
        ranked.sort_by(order);
        agg.min_wait_s = ranked.first().map(|(wait, _, _)| *wait);
        agg.best = ranked
            .iter()
            .map(|&(wait, slot, s)| self.summary(slot, s, wait))
            .collect();
        agg
    }

    /// A station's predicted wait for a vehicle arriving now, whole seconds.
    fn predicted_wait_s(&self, slot: Slot, s: &Station, now_ms: u64) -> u32 {
        self.planner.expected_wait_s(slot, s, now_ms, 0.0).round() as u32
    }

    /// A station as aggregates show it.
    fn summary(&self, slot: Slot, s: &Station, predicted_wait_s: u32) -> AggregateStation {
        AggregateStation {
            station_id: s.station_id.clone(),
            lat: s.lat,
            lon: s.lon,
            chargers: s.chargers,
            power_kw: s.power_kw,
            occupied: s.occupied,
            queue: s.queue,
            reservations: self.planner.promised_at(slot) as u32,
            predicted_wait_s,
        }
    }

    /// Every in-service station, shortest predicted wait first (the `stations` message).
    pub fn stations_snapshot(&self, now_ms: u64) -> protocol::fog::Stations {
        protocol::fog::Stations {
            v: protocol::PROTOCOL_VERSION,
            region: self.name.clone(),
            ts_ms: now_ms,
            stations: self.station_summaries(now_ms),
        }
    }

    /// The in-service stations as aggregates show them, best first.
    fn station_summaries(&self, now_ms: u64) -> Vec<AggregateStation> {
        let mut out: Vec<AggregateStation> = self
            .planner
            .stations
            .iter()
            .filter(|(_, s)| s.state.is_in_service())
            .map(|(slot, s)| self.summary(slot, s, self.predicted_wait_s(slot, s, now_ms)))
            .collect();
        out.sort_by(|a, b| {
            a.predicted_wait_s
                .cmp(&b.predicted_wait_s)
                .then(b.chargers.cmp(&a.chargers))
                .then_with(|| a.station_id.cmp(&b.station_id))
        });
        out
    }

    /// Reroutes waiting for central.
    pub fn pending_reroutes(&self) -> usize {
        self.pending.len()
    }

    fn count_reroute(&self, kind: &'static str) {
        self.metrics
            .reroutes
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    fn count_ended(&self, kind: &'static str, n: usize) {
        if n > 0 {
            self.metrics
                .reservations_ended
                .get_or_create(&KindLabel { kind })
                .inc_by(n as u64);
        }
    }

    fn refresh_station_gauges(&self) {
        let mut counts = [0i64; 4];
        for (_, s) in self.planner.stations.iter() {
            counts[s.state as usize] += 1;
        }
        for state in [
            StationState::Available,
            StationState::Full,
            StationState::Faulted,
            StationState::Offline,
        ] {
            self.metrics
                .stations
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(counts[state as usize]);
        }
    }

    /// The region's stations with their predicted wait for a vehicle arriving now.
    pub fn station_views(&self, now_ms: u64) -> Vec<StationView> {
        let mut views: Vec<StationView> = self
            .planner
            .stations
            .iter()
            .map(|(slot, s)| StationView {
                station_id: s.station_id.clone(),
                lat: s.lat,
                lon: s.lon,
                chargers: s.chargers,
                power_kw: s.power_kw,
                occupied: s.occupied,
                queue: s.queue,
                state: s.state,
                reservations: self.planner.promised_at(slot),
                predicted_wait_s: s
                    .state
                    .is_in_service()
                    .then(|| self.planner.expected_wait_s(slot, s, now_ms, 0.0).round() as u32),
                data_age_ms: now_ms.saturating_sub(s.updated_ms),
            })
            .collect();
        views.sort_by(|a, b| a.station_id.cmp(&b.station_id));
        views
    }
}

/// A station as the HTTP API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StationView {
    pub station_id: String,
    pub lat: f64,
    pub lon: f64,
    pub chargers: u32,
    pub power_kw: f64,
    pub occupied: u32,
    pub queue: u32,
    pub state: StationState,
    pub reservations: usize,
    pub predicted_wait_s: Option<u32>,
    pub data_age_ms: u64,
}

/// What to do with a valid request.
enum Answer {
    /// Answer the vehicle now.
    Now(Recommendation),
    /// Central decides; publish this (nothing if the request is already with central).
    AskCentral(Option<Outgoing>),
}

/// The order of stations in aggregates: shortest predicted wait, then most chargers,
/// then by id (as the `stations` message sorts them).
fn summary_order(a_wait: u32, a: &Station, b_wait: u32, b: &Station) -> std::cmp::Ordering {
    a_wait
        .cmp(&b_wait)
        .then(b.chargers.cmp(&a.chargers))
        .then_with(|| a.station_id.cmp(&b.station_id))
}

/// Why the region cannot serve a request well, in words for the vehicle.
fn saturation_reason(no: &NoChoice, max_wait_s: u32) -> String {
    match no {
        NoChoice::NothingReachable { range_km } => {
            format!("no station in service within the vehicle's safe range of {range_km:.1} km")
        }
        NoChoice::TooSlow { best } => format!(
            "every reachable station is saturated: the shortest predicted wait is {:.0} s, over the limit of {max_wait_s} s",
            best.wait_s
        ),
    }
}

/// The `request_id` of a request that failed to decode, if it has a usable one.
/// Oversized payloads are not parsed at all.
fn request_id_of(payload: &[u8]) -> String {
    if payload.len() > protocol::MAX_PAYLOAD_BYTES {
        return String::new();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        request_id: String,
    }
    serde_json::from_slice::<Probe>(payload)
        .ok()
        .map(|p| p.request_id)
        .filter(|id| validate_id("request_id", id).is_ok())
        .unwrap_or_default()
}

fn truncate_id(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The aggregate picks its best stations without sorting them all: the same ones,
    /// in the same order, as the full list (`stations` message), and the same totals.
    #[test]
    fn aggregate_best_is_the_head_of_the_full_list() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = 1_750_000_000_000;
        for n in [0, 1, 5, 8, 9, 300] {
            let mut region = Region::new("north", PlannerParams::default(), Arc::default());
            for i in 0..n {
                let chargers = rng.random_range(1..=4);
                let status = StationStatus {
                    v: 1,
                    station_id: format!("s-{:03}", rng.random_range(0..1000)),
                    lat: Some(rng.random_range(0.0..0.1)),
                    lon: Some(rng.random_range(0.0..0.1)),
                    chargers: Some(chargers),
                    power_kw: Some(50.0),
                    // Many ties: free stations all wait 0.
                    occupied: rng.random_range(0..=chargers),
                    queue: if i % 3 == 0 {
                        rng.random_range(0..3)
                    } else {
                        0
                    },
                    state: if i % 7 == 0 {
                        StationState::Faulted
                    } else {
                        StationState::Available
                    },
                    ts_ms: None,
                    takes_reservations: false,
                };
                let topic = topics::station_status("north", &status.station_id);
                region.handle(&topic, &protocol::encode(&status), now);
            }
            let all = region.stations_snapshot(now).stations;
            let agg = region.aggregate(now);
            assert_eq!(agg.best, all[..all.len().min(AGGREGATE_BEST)], "n = {n}");
            assert_eq!(agg.min_wait_s, all.first().map(|s| s.predicted_wait_s));
            assert_eq!(agg.chargers, all.iter().map(|s| s.chargers).sum::<u32>());
            assert_eq!(
                agg.chargers_free,
                all.iter()
                    .map(|s| s.chargers - s.occupied.min(s.chargers))
                    .sum::<u32>()
            );
            assert_eq!(agg.queued, all.iter().map(|s| s.queue).sum::<u32>());
        }
    }
}
