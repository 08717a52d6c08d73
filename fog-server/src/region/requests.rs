//! A vehicle's charge request, from memory to answer: a redelivered request gets the
//! answer it got before; a new one replaces the vehicle's reservation and gets the
//! station that charges it soonest, or — when every station is saturated — is asked
//! of central ([`super::reroute`]) or answered locally. Every answer is remembered and
//! published from [`Region::finish`]; a saturated request is finished from
//! [`Region::finish_saturated`], whoever gives up on finding better (central, the
//! timeout, or the region at once).

use std::collections::VecDeque;

use protocol::{
    ChargeRequest, ProtocolError, Recommendation, RecommendationStatus, ReservationAction,
    ReservationUpdate, StationRef, topics,
};
use tracing::{debug, info, warn};

use super::reroute::LocalBest;
use super::{Effects, Outgoing, Region};
use crate::metrics::Update;
use crate::planner::{Choice, NoChoice, Trip};

/// Answers remembered per vehicle, so a redelivered request gets the same answer.
const REMEMBERED_ANSWERS: usize = 8;
/// How long a vehicle's remembered answers are kept after its last request.
const ANSWER_MEMORY_MS: u64 = 3_600_000;

/// A vehicle's latest answers, by request id.
#[derive(Debug, Default)]
pub(super) struct VehicleMemory {
    pub(super) answers: VecDeque<(String, Recommendation)>,
    pub(super) last_ms: u64,
}

impl Region {
    /// A valid charge request.
    pub(super) fn on_request(
        &mut self,
        vehicle_id: &str,
        req: ChargeRequest,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        if let Some(previous) = self.remembered(vehicle_id, &req.request_id) {
            debug!(vehicle = vehicle_id, request = %req.request_id, "repeated request answered from memory");
            self.count(Update::DuplicateRequest);
            fx.planned = true;
            let out = self.reply(vehicle_id, &previous);
            fx.send(out);
            return;
        }
        if self.is_with_central(vehicle_id, &req.request_id) {
            debug!(vehicle = vehicle_id, request = %req.request_id, "repeated request already with central");
            self.count(Update::DuplicateRequest);
            return;
        }
        self.supersede_pending(vehicle_id, &req.request_id, now_ms);
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
        match self.planner.choose(&req, now_ms) {
            Ok(choice) => {
                let local = choice.total_s();
                let across = self.better_across_border(&req, local, now_ms);
                let answer = self.assign(
                    vehicle_id,
                    &req,
                    &choice,
                    now_ms,
                    RecommendationStatus::Assigned,
                    None,
                );
                fx.planned = true;
                let held = answer.reservation_id.clone();
                self.finish(vehicle_id, &req.request_id, answer, now_ms, fx);
                if let (Some(across), Some(held)) = (across, held) {
                    // A neighbour's station looks much sooner: the vehicle has the
                    // local one, and central may place it there instead (only a region
                    // beating the local best by the margin qualifies), as a revision.
                    debug!(vehicle = vehicle_id, request = %req.request_id, local_s = local, across_s = across, "asking central across the border");
                    self.count_reroute("border");
                    let margin = f64::from(self.reroute.border_margin_s);
                    let local = LocalBest {
                        total_s: local - margin,
                        held: Some(held),
                        border: true,
                    };
                    let out = self.ask_central(vehicle_id, req, Some(local), now_ms);
                    fx.send(out);
                }
            }
            Err(no) => self.on_saturated(vehicle_id, req, &no, now_ms, fx),
        }
    }

    /// A request no local station serves well: ask central, or answer at once.
    fn on_saturated(
        &mut self,
        vehicle_id: &str,
        req: ChargeRequest,
        no: &NoChoice,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        self.saturated_requests += 1;
        self.dirty = true;
        if !self.reroute.enabled {
            let answer = self.unavailable(&req, no);
            fx.planned = true;
            self.finish(vehicle_id, &req.request_id, answer, now_ms, fx);
            return;
        }
        match self.why_not_ask_central(&req, now_ms) {
            None => {
                let local = match no {
                    NoChoice::TooSlow { best } => Some(LocalBest {
                        total_s: best.total_s(),
                        // Held while central is asked (see `PendingReroute::held`).
                        held: self
                            .reserve(vehicle_id, &req, best, now_ms)
                            .map(|(id, _)| id),
                        border: false,
                    }),
                    NoChoice::NothingReachable { .. } => None,
                };
                let out = self.ask_central(vehicle_id, req, local, now_ms);
                fx.send(out);
            }
            Some(why) => {
                fx.planned = true;
                self.finish_saturated(vehicle_id, &req, &why, now_ms, fx);
            }
        }
    }

    /// Reserves `choice` for the vehicle of `req`: the reservation's id and expiry
    /// (clock ms); `None` if the chosen station vanished.
    fn reserve(
        &mut self,
        vehicle_id: &str,
        req: &ChargeRequest,
        choice: &Choice,
        now_ms: u64,
    ) -> Option<(String, u64)> {
        let id = self.next_id("");
        let trip = Some(Trip::new(req, now_ms));
        let r = self.planner.reserve(id, vehicle_id, choice, now_ms, trip)?;
        let made = (r.reservation_id.clone(), r.expires_ms);
        self.dirty = true;
        Some(made)
    }

    /// A request that did not parse: answered `rejected`, saying why.
    pub(super) fn reject(
        &mut self,
        vehicle_id: &str,
        request_id: String,
        error: &ProtocolError,
        fx: &mut Effects,
    ) {
        let answer = Recommendation::refusal(
            request_id,
            RecommendationStatus::Rejected,
            error.to_string(),
            &self.name,
        );
        fx.planned = true;
        let out = self.reply(vehicle_id, &answer);
        fx.send(out);
    }

    /// The answer the vehicle got for `request_id` before, if any.
    fn remembered(&self, vehicle_id: &str, request_id: &str) -> Option<Recommendation> {
        self.vehicles.get(vehicle_id).and_then(|m| {
            m.answers
                .iter()
                .find(|(id, _)| id == request_id)
                .map(|(_, a)| a.clone())
        })
    }

    /// Remembers and publishes the answer to a request.
    pub(super) fn finish(
        &mut self,
        vehicle_id: &str,
        request_id: &str,
        answer: Recommendation,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        self.remember(vehicle_id, request_id, &answer, now_ms);
        let out = self.reply(vehicle_id, &answer);
        fx.send(out);
    }

    /// Finishes a saturated request nobody found better for (`why`): the best local
    /// station despite its wait, or `unavailable`.
    pub(super) fn finish_saturated(
        &mut self,
        vehicle_id: &str,
        req: &ChargeRequest,
        why: &str,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let answer = self.answer_locally(vehicle_id, req, why, now_ms);
        self.finish(vehicle_id, &req.request_id, answer, now_ms, fx);
    }

    /// The recommendation message for a vehicle, counted.
    pub(super) fn reply(&mut self, vehicle_id: &str, answer: &Recommendation) -> Outgoing {
        self.answered += 1;
        self.count(Update::Answered(answer.status.as_str()));
        self.set_reservations_gauge();
        Outgoing {
            topic: topics::recommendation(&self.name, vehicle_id),
            payload: protocol::encode(answer),
            retain: false,
        }
    }

    pub(super) fn remember(
        &mut self,
        vehicle_id: &str,
        request_id: &str,
        answer: &Recommendation,
        now_ms: u64,
    ) {
        if answer.reservation_id.is_some() {
            self.just_answered
                .push((request_id.to_owned(), answer.clone()));
        }
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

    /// Forgets vehicles that asked nothing for a long time.
    pub(super) fn forget_idle_vehicles(&mut self, now_ms: u64) {
        self.vehicles
            .retain(|_, m| now_ms.saturating_sub(m.last_ms) < ANSWER_MEMORY_MS);
    }

    /// An `unavailable` answer saying why.
    pub(super) fn unavailable(&self, req: &ChargeRequest, no: &NoChoice) -> Recommendation {
        Recommendation::refusal(
            req.request_id.clone(),
            RecommendationStatus::Unavailable,
            saturation_reason(no, self.planner.params.cost.max_wait_s),
            self.name.clone(),
        )
    }

    /// Reserves `choice` for the vehicle and builds the answer.
    pub(super) fn assign(
        &mut self,
        vehicle_id: &str,
        req: &ChargeRequest,
        choice: &Choice,
        now_ms: u64,
        status: RecommendationStatus,
        reason: Option<String>,
    ) -> Recommendation {
        let reserved = self.reserve(vehicle_id, req, choice, now_ms);
        let refusal = |reason: &str| {
            Recommendation::refusal(
                req.request_id.clone(),
                RecommendationStatus::Unavailable,
                reason,
                self.name.clone(),
            )
        };
        let Some((reservation_id, expires_ms)) = reserved else {
            return refusal("internal error: chosen station vanished");
        };
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
        let assigned = RecommendationStatus::Assigned;
        match self.planner.choose(req, now_ms) {
            Ok(choice) => {
                let reason = format!("{why}; a local station has room again");
                self.assign(vehicle_id, req, &choice, now_ms, assigned, Some(reason))
            }
            Err(NoChoice::TooSlow { best }) => {
                let reason = format!(
                    "{why}; best local station despite a predicted wait of {:.0} s",
                    best.wait_s
                );
                self.assign(vehicle_id, req, &best, now_ms, assigned, Some(reason))
            }
            Err(no @ NoChoice::NothingReachable { .. }) => {
                let mut answer = self.unavailable(req, &no);
                answer.reason = Some(format!("{why}; {}", answer.reason.unwrap_or_default()));
                answer
            }
        }
    }

    /// A vehicle arrived at its reserved station or cancels.
    pub(super) fn on_reservation(&mut self, vehicle_id: &str, update: &ReservationUpdate) {
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
                self.count(Update::Invalid("reservation"));
            }
        }
        self.set_reservations_gauge();
    }
}

/// Why the region cannot serve a request well, in words for the vehicle.
pub(super) fn saturation_reason(no: &NoChoice, max_wait_s: u32) -> String {
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
