//! Keeping promises when reality diverges: a session runs over, a walk-in takes a
//! charger, a charger faults, a station goes offline or away. The plans are checked
//! after every status of a station with reservations and every
//! [`REPLAN_EVERY_MS`] of clock time; a vehicle whose wait grows by more than
//! [`REVISE_AFTER_MS`] is planned again from where it probably is now: it moves to
//! another station when that gets it charged at least [`MOVE_MARGIN_S`] sooner, else
//! it keeps its place. Either way it gets a revised answer (`revised: true`, same
//! `request_id`) before it arrives — from this region, or for a vehicle another region
//! sent here, from its own region by way of central (a [`Revoked`] carrying the new
//! answer). A vehicle whose station went out of service is always planned again
//! (or told that nothing can take it).

use protocol::fog::{FogMessage, Revoked};
use protocol::validate::MAX_REASON_LEN;
use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationRef};
use tracing::info;

use super::{Effects, Outgoing, Region};
use crate::index::Slot;
use crate::metrics::Update;
use crate::planner::{Choice, NoChoice, Reservation};

/// How often every plan is checked against the clock (clock ms).
pub(super) const REPLAN_EVERY_MS: u64 = 30_000;
/// A wait that grows by more than this (clock ms) is revised.
pub const REVISE_AFTER_MS: u64 = 300_000;
/// Another station must finish charging the vehicle this much sooner (seconds) for
/// the vehicle to move there.
pub const MOVE_MARGIN_S: f64 = 300.0;

impl Region {
    /// The request a reservation answered in this region and that answer, from the
    /// vehicles' memory.
    pub(super) fn answer_holding(&self, reservation_id: &str) -> Option<(String, Recommendation)> {
        let vehicle = self
            .planner
            .reservation(reservation_id)?
            .vehicle_id
            .as_str();
        self.answer_of(vehicle, reservation_id)
    }

    fn answer_of(
        &self,
        vehicle_id: &str,
        reservation_id: &str,
    ) -> Option<(String, Recommendation)> {
        self.vehicles
            .get(vehicle_id)?
            .answers
            .iter()
            .rev()
            .find_map(|(id, a)| {
                (a.reservation_id.as_deref() == Some(reservation_id))
                    .then(|| (id.clone(), a.clone()))
            })
    }

    /// Checks every station's plan against the clock.
    pub(super) fn replan_all(&mut self, now_ms: u64, fx: &mut Effects) {
        self.handed
            .retain(|id, _| self.planner.reservation(id).is_some());
        for slot in self.planner.slots_with_reservations() {
            self.replan_station(slot, now_ms, fx);
        }
    }

    /// Revises, one by one in plan order, the reservations at a station whose wait
    /// grew too much.
    pub(super) fn replan_station(&mut self, slot: Slot, now_ms: u64, fx: &mut Effects) {
        for _ in 0..=self.planner.promised_at(slot) {
            let Some((id, start_ms)) = self.first_late(slot, now_ms) else {
                break;
            };
            self.replan_one(&id, start_ms, now_ms, fx);
        }
    }

    /// The first reservation in the station's plan whose start, waiting for a
    /// charger, moved more than [`REVISE_AFTER_MS`] past what its vehicle was told (a
    /// vehicle that is late itself does not count: its charger waits for it).
    fn first_late(&self, slot: Slot, now_ms: u64) -> Option<(String, u64)> {
        self.planner
            .waiting_for_chargers(slot, now_ms)
            .into_iter()
            .find(|(id, start)| {
                self.planner
                    .reservation(id)
                    .is_some_and(|r| *start > r.start_ms + REVISE_AFTER_MS)
            })
    }

    fn replan_one(&mut self, id: &str, start_ms: u64, now_ms: u64, fx: &mut Effects) {
        let Some(r) = self.planner.reservation(id).cloned() else {
            return;
        };
        let Some((lat, lon)) = self.planner.stations.get(r.slot).map(|s| (s.lat, s.lon)) else {
            return;
        };
        let stay_done_ms = start_ms + u64::from(r.charge_s) * 1000;
        if let Some(trip) = r.trip {
            let road_factor = self.planner.params.cost.road_factor;
            let vehicle = trip.at(lat, lon, r.arrival_ms, road_factor, now_ms);
            let elsewhere = match self.planner.choose_for(&vehicle, now_ms, Some(r.slot)) {
                Ok(choice) | Err(NoChoice::TooSlow { best: choice }) => Some(choice),
                Err(NoChoice::NothingReachable { .. }) => None,
            };
            if let Some(choice) = elsewhere {
                let done_ms = now_ms as f64 + choice.total_s() * 1000.0;
                if done_ms + MOVE_MARGIN_S * 1000.0 < stay_done_ms as f64 {
                    let why = format!(
                        "re-planned: {} would start charging {} min later than promised; another station is sooner",
                        r.station_id,
                        (start_ms.saturating_sub(r.start_ms)) / 60_000
                    );
                    self.planner.take_out(&r.reservation_id);
                    self.planner.ended_elsewhere(&r.reservation_id);
                    self.move_to(&r, &vehicle, &choice, why, now_ms, fx);
                    return;
                }
            }
        }
        let why = format!(
            "re-planned: the charger is free {} min later than promised (a session ran over, a walk-in or a fault)",
            (start_ms.saturating_sub(r.start_ms)) / 60_000
        );
        let Some(updated) = self.planner.replanned(&r.reservation_id, start_ms).cloned() else {
            return;
        };
        self.dirty = true;
        info!(vehicle = %r.vehicle_id, reservation = %r.reservation_id, station = %r.station_id, late_s = (start_ms - r.start_ms) / 1000, "reservation re-planned later");
        let answer = self.answer_for(&updated, now_ms, Some(why));
        self.deliver(
            &r.vehicle_id,
            &r.reservation_id,
            answer,
            "later",
            now_ms,
            fx,
        );
    }

    /// Plans again the vehicles of reservations taken out of a station that went out
    /// of service or away (`why`).
    pub(super) fn relocate(
        &mut self,
        taken: Vec<Reservation>,
        why: &str,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        for r in taken {
            self.planner.ended_elsewhere(&r.reservation_id);
            self.dirty = true;
            let station = (
                r.trip,
                self.planner.stations.get(r.slot).map(|s| (s.lat, s.lon)),
            );
            let vehicle = match station {
                (Some(trip), Some((lat, lon))) => Some(trip.at(
                    lat,
                    lon,
                    r.arrival_ms,
                    self.planner.params.cost.road_factor,
                    now_ms,
                )),
                (Some(trip), None) => Some(trip.vehicle),
                (None, _) => None,
            };
            let choice = vehicle.as_ref().and_then(|v| {
                match self.planner.choose_for(v, now_ms, Some(r.slot)) {
                    Ok(c) | Err(NoChoice::TooSlow { best: c }) => Some(c),
                    Err(NoChoice::NothingReachable { .. }) => None,
                }
            });
            match (vehicle, choice) {
                (Some(vehicle), Some(choice)) => {
                    let why = format!("re-planned: {why}");
                    self.move_to(&r, &vehicle, &choice, why, now_ms, fx);
                }
                _ => {
                    let answer = Recommendation {
                        revised: true,
                        ..Recommendation::refusal(
                            "",
                            RecommendationStatus::Unavailable,
                            format!("{why}; no other station can take the vehicle, ask again"),
                            &self.name,
                        )
                    };
                    info!(vehicle = %r.vehicle_id, reservation = %r.reservation_id, "reservation lost its station; nothing else to offer");
                    self.deliver(
                        &r.vehicle_id,
                        &r.reservation_id,
                        answer,
                        "unavailable",
                        now_ms,
                        fx,
                    );
                }
            }
        }
    }

    /// Gives a vehicle (taken out of its old reservation `old`) a new one per
    /// `choice` and tells it.
    fn move_to(
        &mut self,
        old: &Reservation,
        vehicle: &cost_model::Vehicle,
        choice: &Choice,
        why: String,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let handed = self.handed.contains_key(&old.reservation_id);
        let request = ChargeRequest {
            v: protocol::PROTOCOL_VERSION,
            request_id: String::new(),
            lat: vehicle.lat,
            lon: vehicle.lon,
            soc: vehicle.soc,
            battery_kwh: vehicle.battery_kwh,
            kwh_per_km: vehicle.kwh_per_km,
            target_soc: vehicle.target_soc,
            ts_ms: Some(now_ms),
        };
        let status = if handed {
            RecommendationStatus::Rerouted
        } else {
            RecommendationStatus::Assigned
        };
        let mut answer = self.assign(&old.vehicle_id, &request, choice, now_ms, status, Some(why));
        answer.revised = true;
        info!(vehicle = %old.vehicle_id, from = %old.station_id, to = ?answer.station.as_ref().map(|s| &s.station_id), "reservation moved to another station");
        self.deliver(
            &old.vehicle_id,
            &old.reservation_id,
            answer,
            "moved",
            now_ms,
            fx,
        );
    }

    /// The answer a reservation gives its vehicle now (for a revision).
    pub(super) fn answer_for(
        &self,
        r: &Reservation,
        now_ms: u64,
        reason: Option<String>,
    ) -> Recommendation {
        let station = self.planner.stations.get(r.slot);
        let road_km = match (r.trip, station) {
            (Some(trip), Some(s)) => {
                let cost = &self.planner.params.cost;
                let v = trip.at(s.lat, s.lon, r.arrival_ms, cost.road_factor, now_ms);
                Some(cost.road_km(protocol::geo::haversine_km(v.lat, v.lon, s.lat, s.lon)))
            }
            _ => None,
        };
        let status = if self.handed.contains_key(&r.reservation_id) {
            RecommendationStatus::Rerouted
        } else {
            RecommendationStatus::Assigned
        };
        Recommendation {
            v: protocol::PROTOCOL_VERSION,
            request_id: String::new(),
            status,
            station: station.map(|s| StationRef {
                station_id: s.station_id.clone(),
                region: self.name.clone(),
                lat: s.lat,
                lon: s.lon,
            }),
            distance_km: road_km.map(|km| (km * 100.0).round() / 100.0),
            eta_s: Some((r.arrival_ms.saturating_sub(now_ms) / 1000) as u32),
            wait_s: Some((r.start_ms.saturating_sub(r.arrival_ms) / 1000) as u32),
            charge_s: Some(r.charge_s),
            reservation_id: Some(r.reservation_id.clone()),
            expires_ms: Some(r.expires_ms),
            reason,
            served_by: Some(self.name.clone()),
            data_age_ms: station.map(|s| now_ms.saturating_sub(s.updated_ms)),
            revised: true,
        }
    }

    /// Sends a revised answer to the vehicle that held `old_reservation`: directly
    /// when this region answered it, else through central to the region that did.
    pub(super) fn deliver(
        &mut self,
        vehicle_id: &str,
        old_reservation: &str,
        mut answer: Recommendation,
        kind: &'static str,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        answer.revised = true;
        if let Some((request_id, _)) = self.answer_of(vehicle_id, old_reservation) {
            answer.request_id = request_id;
            if answer.reservation_id.is_some() {
                self.just_answered
                    .push((answer.request_id.clone(), answer.clone()));
            }
            if let Some(memory) = self.vehicles.get_mut(vehicle_id) {
                memory.last_ms = now_ms;
                for (id, remembered) in memory.answers.iter_mut() {
                    if *id == answer.request_id {
                        *remembered = answer.clone();
                    }
                }
            }
            self.count(Update::Revision(kind));
            let out = self.reply(vehicle_id, &answer);
            fx.send(out);
            return;
        }
        let Some(h) = self.handed.remove(old_reservation) else {
            info!(
                vehicle = vehicle_id,
                reservation = old_reservation,
                "revised reservation answered no known request"
            );
            return;
        };
        if let Some(new_id) = &answer.reservation_id {
            self.handed.insert(new_id.clone(), h.clone());
        }
        self.count(Update::Revision(kind));
        let reason: String = answer
            .reason
            .clone()
            .unwrap_or_default()
            .chars()
            .take(MAX_REASON_LEN)
            .collect();
        let revoked = Revoked {
            v: protocol::PROTOCOL_VERSION,
            reroute_id: h.reroute_id,
            handoff_id: h.handoff_id,
            origin_region: h.origin_region,
            region: self.name.clone(),
            vehicle_id: vehicle_id.to_owned(),
            reservation_id: old_reservation.to_owned(),
            reason,
            revised: answer.station.is_some().then(|| Box::new(answer)),
        };
        fx.send(Outgoing {
            topic: FogMessage::HandoffRevoked.regional_topic(),
            payload: protocol::encode(&revoked),
            retain: false,
        });
    }
}
