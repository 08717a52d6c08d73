//! The region's state and what each incoming message does to it. No I/O: the MQTT
//! link hands in `(topic, payload)` and publishes what comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use protocol::{
    ChargeRequest, ProtocolError, Recommendation, RecommendationStatus, ReservationAction,
    ReservationUpdate, StationRef, StationState, StationStatus, Telemetry, Topic, VehicleChannel,
    decode, topics, validate_id,
};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::index::Change;
use crate::metrics::{KindLabel, Metrics, StateLabel, StatusLabel};
use crate::planner::{NoChoice, Planner, PlannerParams};

/// Answers remembered per vehicle, so a redelivered request gets the same answer.
const REMEMBERED_ANSWERS: usize = 8;
/// How long a vehicle's remembered answers are kept after its last request.
const ANSWER_MEMORY_MS: u64 = 3_600_000;

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
}

impl Region {
    pub fn new(name: impl Into<String>, params: PlannerParams, metrics: Arc<Metrics>) -> Self {
        Self {
            name: name.into(),
            planner: Planner::new(params),
            vehicles: HashMap::new(),
            metrics,
            next_reservation: 0,
            id_salt: rand::random(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one message received on the region's broker.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Outgoing> {
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
                VehicleChannel::Request => Some(self.on_request(vehicle_id, payload, now_ms)),
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
        }
    }

    fn on_status(&mut self, station_id: &str, payload: &[u8], now_ms: u64) {
        if payload.is_empty() {
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let released = self.planner.release_station(slot);
                self.count_ended("station_removed", released);
                self.planner.stations.remove(station_id);
                info!(station = station_id, released, "station removed");
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
        let change = self.planner.stations.apply(&status, now_ms);
        debug!(
            station = station_id,
            state = status.state.as_str(),
            ?change,
            "station status"
        );
        if change == Change::Inserted {
            info!(station = station_id, "station added");
        }
        if change != Change::Ignored && !status.state.is_in_service() {
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let released = self.planner.release_station(slot);
                self.count_ended("station_removed", released);
            }
        }
        self.refresh_station_gauges();
    }

    fn on_request(&mut self, vehicle_id: &str, payload: &[u8], now_ms: u64) -> Outgoing {
        let topic = topics::recommendation(&self.name, vehicle_id);
        let started = Instant::now();
        let answer = match decode::<ChargeRequest>(payload) {
            Ok(req) => self.answer(vehicle_id, &req, now_ms),
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
            topic,
            payload: protocol::encode(&answer),
            retain: false,
        }
    }

    /// The answer to a valid request: remembered if the request id was seen before.
    fn answer(&mut self, vehicle_id: &str, req: &ChargeRequest, now_ms: u64) -> Recommendation {
        if let Some(previous) = self.vehicles.get(vehicle_id).and_then(|m| {
            m.answers
                .iter()
                .find(|(id, _)| *id == req.request_id)
                .map(|(_, a)| a.clone())
        }) {
            debug!(vehicle = vehicle_id, request = %req.request_id, "repeated request answered from memory");
            self.metrics.duplicate_requests.inc();
            return previous;
        }
        let answer = self.plan(vehicle_id, req, now_ms);
        let memory = self.vehicles.entry(vehicle_id.to_owned()).or_default();
        if memory.answers.len() == REMEMBERED_ANSWERS {
            memory.answers.pop_front();
        }
        memory
            .answers
            .push_back((req.request_id.clone(), answer.clone()));
        memory.last_ms = now_ms;
        answer
    }

    fn plan(&mut self, vehicle_id: &str, req: &ChargeRequest, now_ms: u64) -> Recommendation {
        let refusal = |reason: String| {
            Recommendation::refusal(
                req.request_id.clone(),
                RecommendationStatus::Unavailable,
                reason,
                self.name.clone(),
            )
        };
        let choice = match self.planner.choose(req, now_ms) {
            Ok(choice) => choice,
            Err(NoChoice::NothingReachable { range_km }) => {
                return refusal(format!(
                    "no station in service within the vehicle's safe range of {range_km:.1} km"
                ));
            }
            Err(NoChoice::TooSlow { best }) => {
                return refusal(format!(
                    "every reachable station is saturated: the shortest predicted wait is {:.0} s, over the limit of {} s",
                    best.wait_s, self.planner.params.max_wait_s
                ));
            }
        };
        self.next_reservation += 1;
        let reservation_id = format!(
            "{}-{:08x}{:x}",
            truncate_id(&self.name, 40),
            self.id_salt,
            self.next_reservation
        );
        if self.planner.reservation_of(vehicle_id).is_some() {
            self.count_ended("replaced", 1);
        }
        let Some(reservation) = self
            .planner
            .reserve(reservation_id, vehicle_id, &choice, now_ms)
            .cloned()
        else {
            return refusal("internal error: chosen station vanished".into());
        };
        let Some(station) = self.planner.stations.get(choice.slot) else {
            return refusal("internal error: chosen station vanished".into());
        };
        Recommendation {
            v: protocol::PROTOCOL_VERSION,
            request_id: req.request_id.clone(),
            status: RecommendationStatus::Assigned,
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
            reservation_id: Some(reservation.reservation_id),
            expires_ms: Some(reservation.expires_ms),
            reason: None,
            served_by: Some(self.name.clone()),
            data_age_ms: Some(now_ms.saturating_sub(station.updated_ms)),
        }
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

    /// Ends reservations whose time is up and forgets idle vehicles. Call periodically.
    pub fn tick(&mut self, now_ms: u64) {
        let expired = self.planner.expire(now_ms);
        for r in &expired {
            info!(vehicle = %r.vehicle_id, reservation = %r.reservation_id, station = %r.station_id, "reservation expired");
        }
        self.count_ended("expired", expired.len());
        self.vehicles
            .retain(|_, m| now_ms.saturating_sub(m.last_ms) < ANSWER_MEMORY_MS);
        self.metrics
            .reservations_active
            .set(self.planner.active_reservations() as i64);
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

/// The `request_id` of a request that failed to decode, if it has a usable one.
fn request_id_of(payload: &[u8]) -> String {
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
