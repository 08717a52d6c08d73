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

use protocol::{
    Recommendation, RecommendationStatus, StationReservation, StationReservationAction,
    StationReservationEvent, StationReservationEventKind, StationStatus, id_tag_for_vehicle,
    topics,
};
use tracing::{info, warn};

use super::{Effects, Outgoing, Region};
use crate::metrics::Update;
use crate::planner::ReservationChange;

/// A reservation a station was told about.
#[derive(Debug, Clone)]
struct Told {
    station_id: String,
    vehicle_id: String,
    /// The request it answered, when this region answered it (not for handoffs).
    request_id: Option<String>,
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

    /// Tells stations that take reservations about the reservations made and ended
    /// at them (`changes` from the planner since the last call; `request_of` gives
    /// the request a new reservation answered, if this region answered one).
    pub(super) fn tell_stations(
        &mut self,
        changes: &[ReservationChange],
        request_of: impl Fn(&str) -> Option<String>,
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
                    let message = StationReservation {
                        v: protocol::PROTOCOL_VERSION,
                        reservation_id: r.reservation_id.clone(),
                        action: StationReservationAction::Reserve,
                        id_tag: Some(id_tag_for_vehicle(&r.vehicle_id)),
                        expires_ms: Some(r.expires_ms),
                    };
                    fx.send(Outgoing {
                        topic: topics::station_reservations(&self.name, &r.station_id),
                        payload: protocol::encode(&message),
                        retain: false,
                    });
                    self.station_reservations.told.insert(
                        r.reservation_id.clone(),
                        Told {
                            station_id: r.station_id.clone(),
                            vehicle_id: r.vehicle_id.clone(),
                            request_id,
                        },
                    );
                    self.count(Update::StationReservation("reserve"));
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
                if self
                    .planner
                    .end(&event.reservation_id, &told.vehicle_id)
                    .is_ok()
                {
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
                let Some(request_id) = told.request_id else {
                    // A handoff's vehicle is answered by its own region.
                    return;
                };
                let mut answer = Recommendation::refusal(
                    request_id,
                    RecommendationStatus::Unavailable,
                    format!(
                        "station {station_id} could not hold reservation {} ({why}); the slot is released, ask again",
                        event.reservation_id
                    ),
                    &self.name,
                );
                answer.revised = true;
                // A redelivered request gets the revision, not the refused station.
                if let Some(memory) = self.vehicles.get_mut(&told.vehicle_id) {
                    for (id, remembered) in memory.answers.iter_mut() {
                        if *id == answer.request_id {
                            *remembered = answer.clone();
                        }
                    }
                }
                let out = self.reply(&told.vehicle_id, &answer);
                fx.send(out);
            }
        }
    }
}
