//! Station statuses (retained, one per station) and the reservations read back from
//! the journal at start, each put back as soon as its station is known again.

use protocol::StationStatus;
use tracing::{debug, info};

use super::{Effects, Region};
use crate::index::Change;
use crate::store::{Restored, Saved};

impl Region {
    /// A station's status; `None`: its retained status was cleared (the station is
    /// gone).
    pub(super) fn on_status(
        &mut self,
        station_id: &str,
        status: Option<StationStatus>,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let Some(status) = status else {
            self.forget_gateway_of(station_id);
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let taken = self.planner.take_station(slot);
                self.planner.release_station(slot);
                self.planner.stations.remove(station_id);
                info!(
                    station = station_id,
                    reservations = taken.len(),
                    "station removed"
                );
                let why = format!("station {station_id} was removed");
                self.relocate(taken, &why, now_ms, fx);
                self.dirty = true;
            }
            self.refresh_station_gauges();
            return;
        };
        let status = self.through_gateway(status);
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
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                self.planner.note_status(slot, now_ms);
                self.replan_station(slot, now_ms, fx);
            }
        }
        if change != Change::Ignored && !status.state.is_in_service() {
            if let Some(slot) = self.planner.stations.slot_of(station_id) {
                let taken = self.planner.take_station(slot);
                let why = format!("station {station_id} is {}", status.state.as_str());
                self.relocate(taken, &why, now_ms, fx);
            }
        }
        self.refresh_station_gauges();
    }

    /// Queues what the journal held, and puts back at once the reservations of the
    /// stations already known.
    pub(super) fn restore(&mut self, restored: Restored, now_ms: u64) {
        for entry in restored.reservations {
            self.restoring
                .entry(entry.reservation.station_id.clone())
                .or_default()
                .push(entry);
        }
        let mut known: Vec<String> = self
            .restoring
            .keys()
            .filter(|id| self.planner.stations.slot_of(id).is_some())
            .cloned()
            .collect();
        // Station by station in one order, not the map's (which differs from run to run).
        known.sort();
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
}
