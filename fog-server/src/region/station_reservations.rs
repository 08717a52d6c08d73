//! Reservations at stations that take them (OCPP chargers behind the gateway): the
//! fog tells such a station about each reservation made there and each one that ends
//! (`ev/{region}/stations/{id}/reservations`), and hears back whether the station
//! holds it (`…/reservation-events`). A refused reservation releases its slot and the
//! vehicle gets a revised recommendation for the same `request_id`; a vehicle that
//! starts charging on it ends it as `arrived`.
//!
//! Plain stations never announce `takes_reservations`: for them nothing here runs, and
//! the planner keeps no change log unless a state store reads it.

use std::collections::{HashMap, HashSet};

use protocol::fog::{FogMessage, Revoked};
use protocol::validate::MAX_REASON_LEN;
use protocol::{
    Recommendation, RecommendationStatus, StationReservation, StationReservationAction,
    StationReservationEvent, StationReservationEventKind, StationStatus, id_tag_for_vehicle,
    topics,
};
use tracing::{info, warn};

use super::{Effects, Outgoing, Region};
use crate::metrics::Update;
use crate::planner::{Reservation, ReservationChange};

/// A reservation a station was told about.
#[derive(Debug, Clone)]
struct Told {
    station_id: String,
    vehicle_id: String,
    /// The request it answered, when this region answered it (not for handoffs).
    request_id: Option<String>,
    /// For a handoff: whom to tell when the station refuses it (the origin region
    /// answered the vehicle).
    handoff: Option<HandedOff>,
}

/// A vehicle another region sent here, as its handoff named it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HandedOff {
    pub handoff_id: String,
    pub reroute_id: String,
    pub origin_region: String,
}

/// What the region knows about stations that take reservations.
#[derive(Debug, Default)]
pub struct StationReservations {
    /// Stations whose latest status says `takes_reservations`.
    stations: HashSet<String>,
    /// Active reservations at such stations, by reservation id.
    told: HashMap<String, Told>,
}

impl Region {
    /// Notes whether a station (its status just arrived) takes reservations.
    pub(super) fn note_station_reservations(&mut self, status: &StationStatus) {
        let known = &mut self.station_reservations.stations;
        if status.takes_reservations {
            if known.insert(status.station_id.clone()) {
                info!(station = %status.station_id, "station takes reservations");
                // From now on the planner's changes say what to tell stations.
                self.planner.keep_changes(true);
            }
        } else if status.state.is_in_service() || status.chargers.is_some() {
            // A full status without the flag (not a last will): a plain station.
            known.remove(&status.station_id);
        }
    }

    /// A held reservation now answers `request_id`: the station (for a refusal's
    /// revision) and the journal (for a restart) learn so.
    pub(super) fn answered_held(&mut self, r: &Reservation, request_id: String) {
        if let Some(told) = self.station_reservations.told.get_mut(&r.reservation_id) {
            told.request_id = Some(request_id);
        }
        if self.journal {
            // Journalled again, now with its answer.
            self.planner.replanned(&r.reservation_id, r.start_ms);
        }
    }

    /// Tells stations that take reservations about the reservations made and ended
    /// at them (`changes` from the planner since the last call; `request_of` gives
    /// the request a new reservation answered, if this region answered one; `handed`
    /// the handoffs taken since the last call, by reservation id).
    pub(super) fn tell_stations(
        &mut self,
        changes: &[ReservationChange],
        request_of: impl Fn(&str) -> Option<String>,
        handed: &[(String, HandedOff)],
        fx: &mut Effects,
    ) {
        if self.station_reservations.stations.is_empty()
            && self.station_reservations.told.is_empty()
        {
            return;
        }
        for change in changes {
            match change {
                ReservationChange::Made(r) => {
                    if !self.station_reservations.stations.contains(&r.station_id) {
                        continue;
                    }
                    let request_id = request_of(&r.reservation_id);
                    let handoff = handed
                        .iter()
                        .find(|(id, _)| *id == r.reservation_id)
                        .map(|(_, h)| h.clone());
                    fx.send(self.reserve_message(r));
                    self.station_reservations.told.insert(
                        r.reservation_id.clone(),
                        Told {
                            station_id: r.station_id.clone(),
                            vehicle_id: r.vehicle_id.clone(),
                            request_id,
                            handoff,
                        },
                    );
                    self.count(Update::StationReservation("reserve"));
                }
                ReservationChange::Updated(r) => {
                    if !self
                        .station_reservations
                        .told
                        .contains_key(&r.reservation_id)
                    {
                        continue;
                    }
                    fx.send(self.reserve_message(r));
                    self.count(Update::StationReservation("update"));
                }
                ReservationChange::Ended(id) => {
                    let Some(told) = self.station_reservations.told.remove(id) else {
                        continue;
                    };
                    let message = StationReservation {
                        v: protocol::PROTOCOL_VERSION,
                        reservation_id: id.clone(),
                        action: StationReservationAction::Cancel,
                        id_tag: None,
                        expires_ms: None,
                        start_ms: None,
                    };
                    fx.send(Outgoing {
                        topic: topics::station_reservations(&self.name, &told.station_id),
                        payload: protocol::encode(&message),
                        retain: false,
                    });
                    self.count(Update::StationReservation("cancel"));
                }
            }
        }
    }

    /// What a station said about one of its reservations. A refusal releases the slot
    /// and sends the vehicle a revised recommendation.
    pub(super) fn on_station_reservation_event(
        &mut self,
        station_id: &str,
        event: &StationReservationEvent,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let told = match self.station_reservations.told.get(&event.reservation_id) {
            Some(t) if t.station_id == station_id => t.clone(),
            _ => {
                warn!(station = station_id, reservation = %event.reservation_id, event = event.event.as_str(), "event for a reservation this station does not hold (ended or unknown)");
                self.count(Update::Invalid("station-reservation"));
                return;
            }
        };
        self.count(Update::StationReservationEvent(event.event.as_str()));
        match event.event {
            StationReservationEventKind::Accepted => {
                info!(station = station_id, reservation = %event.reservation_id, "station holds the reservation");
            }
            StationReservationEventKind::Arrived => {
                // Nothing to tell the station: it saw the vehicle start.
                self.station_reservations.told.remove(&event.reservation_id);
                if let Ok(r) = self.planner.end(&event.reservation_id, &told.vehicle_id) {
                    // Its session ends after its own charge time.
                    self.planner.note_started(r.slot, r.charge_s, now_ms);
                    info!(station = station_id, vehicle = %told.vehicle_id, reservation = %event.reservation_id, "vehicle started charging on its reservation");
                    self.count_ended("arrived", 1);
                    self.dirty = true;
                }
            }
            StationReservationEventKind::Rejected => {
                self.station_reservations.told.remove(&event.reservation_id);
                if self
                    .planner
                    .end(&event.reservation_id, &told.vehicle_id)
                    .is_err()
                {
                    return;
                }
                self.count_ended("station_rejected", 1);
                self.dirty = true;
                let why = event.reason.as_deref().unwrap_or("no reason given");
                warn!(station = station_id, vehicle = %told.vehicle_id, reservation = %event.reservation_id, reason = why, "station refused the reservation: slot released");
                let reason = format!(
                    "station {station_id} could not hold reservation {} ({why}); the slot is released, ask again",
                    event.reservation_id
                );
                match (told.request_id, told.handoff) {
                    (Some(request_id), _) => {
                        let out = self.revise(&told.vehicle_id, request_id, reason);
                        fx.send(out);
                    }
                    // A handoff's vehicle was answered by its own region: tell it, by
                    // central.
                    (None, Some(h)) => {
                        let revoked = Revoked {
                            v: protocol::PROTOCOL_VERSION,
                            reroute_id: h.reroute_id,
                            handoff_id: h.handoff_id,
                            origin_region: h.origin_region,
                            region: self.name.clone(),
                            vehicle_id: told.vehicle_id,
                            reservation_id: event.reservation_id.clone(),
                            reason: reason.chars().take(MAX_REASON_LEN).collect(),
                            revised: None,
                        };
                        self.count(Update::Handoff("revoked"));
                        fx.send(Outgoing {
                            topic: FogMessage::HandoffRevoked.regional_topic(),
                            payload: protocol::encode(&revoked),
                            retain: false,
                        });
                    }
                    (None, None) => {}
                }
            }
        }
    }
}

impl Region {
    /// `reserve` for a station that holds reservations: a new one, or a re-planned
    /// one (same place in the plan, a later expiry: the station replaces it).
    fn reserve_message(&self, r: &crate::planner::Reservation) -> Outgoing {
        let message = StationReservation {
            v: protocol::PROTOCOL_VERSION,
            reservation_id: r.reservation_id.clone(),
            action: StationReservationAction::Reserve,
            id_tag: Some(id_tag_for_vehicle(&r.vehicle_id)),
            expires_ms: Some(r.expires_ms),
            start_ms: Some(r.key_ms),
        };
        Outgoing {
            topic: topics::station_reservations(&self.name, &r.station_id),
            payload: protocol::encode(&message),
            retain: false,
        }
    }

    /// Replaces the answer to a vehicle's request with a revised `unavailable` one
    /// (what a redelivered request gets from now on) and returns it to send.
    pub(super) fn revise(
        &mut self,
        vehicle_id: &str,
        request_id: String,
        reason: String,
    ) -> Outgoing {
        let mut answer = Recommendation::refusal(
            request_id,
            RecommendationStatus::Unavailable,
            reason,
            &self.name,
        );
        answer.revised = true;
        if let Some(memory) = self.vehicles.get_mut(vehicle_id) {
            for (id, remembered) in memory.answers.iter_mut() {
                if *id == answer.request_id {
                    *remembered = answer.clone();
                }
            }
        }
        self.reply(vehicle_id, &answer)
    }

    /// A vehicle this region rerouted lost its reservation in the target region (its
    /// station refused it): the vehicle gets a revised recommendation for its request,
    /// if that answer is still the one it holds.
    pub(super) fn on_reroute_revoked(&mut self, revoked: &Revoked, fx: &mut Effects) {
        let request_id = self.vehicles.get(&revoked.vehicle_id).and_then(|m| {
            m.answers
                .iter()
                .rev()
                .find(|(_, a)| {
                    a.status == RecommendationStatus::Rerouted
                        && a.reservation_id.as_deref() == Some(revoked.reservation_id.as_str())
                })
                .map(|(id, _)| id.clone())
        });
        let Some(request_id) = request_id else {
            info!(vehicle = %revoked.vehicle_id, reservation = %revoked.reservation_id, "revoked reservation is no longer the vehicle's answer");
            self.count(Update::Reroute("revoked_stale"));
            return;
        };
        if let Some(revised) = &revoked.revised {
            // Re-planned in the target region: the vehicle gets the new answer.
            let mut answer = (**revised).clone();
            answer.request_id = request_id;
            answer.status = RecommendationStatus::Rerouted;
            answer.revised = true;
            info!(vehicle = %revoked.vehicle_id, region = %revoked.region, reservation = %revoked.reservation_id, "rerouted vehicle re-planned in its target region: revised answer sent");
            self.count(Update::Reroute("replanned"));
            if let Some(memory) = self.vehicles.get_mut(&revoked.vehicle_id) {
                for (id, remembered) in memory.answers.iter_mut() {
                    if *id == answer.request_id {
                        *remembered = answer.clone();
                    }
                }
            }
            let out = self.reply(&revoked.vehicle_id, &answer);
            fx.send(out);
            return;
        }
        info!(vehicle = %revoked.vehicle_id, region = %revoked.region, reservation = %revoked.reservation_id, "rerouted vehicle's reservation revoked: revised answer sent");
        self.count(Update::Reroute("revoked"));
        let reason = format!(
            "region {} could not keep reservation {}: {}",
            revoked.region, revoked.reservation_id, revoked.reason
        );
        let out = self.revise(&revoked.vehicle_id, request_id, reason);
        fx.send(out);
    }
}
