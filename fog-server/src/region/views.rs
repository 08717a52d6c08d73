//! What the outside sees of the region besides its messages: the HTTP API's station
//! list, and the metric changes (gauges and counters) that keep Prometheus in step
//! with the state.

use protocol::StationState;
use serde::Serialize;

use super::Region;
use crate::metrics::Update;

impl Region {
    /// Counts reservations ended, by how.
    pub(super) fn count_ended(&mut self, kind: &'static str, n: usize) {
        if n > 0 {
            self.count(Update::Ended(kind, n));
        }
    }

    /// Sets the stations-by-state gauges.
    pub(super) fn refresh_station_gauges(&mut self) {
        let mut counts = [0usize; 4];
        for (_, s) in self.planner.stations.iter() {
            counts[s.state as usize] += 1;
        }
        for state in [
            StationState::Available,
            StationState::Full,
            StationState::Faulted,
            StationState::Offline,
        ] {
            self.count(Update::Stations(state.as_str(), counts[state as usize]));
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

    /// Sets the active-reservations gauge.
    pub(super) fn set_reservations_gauge(&mut self) {
        self.count(Update::ReservationsActive(
            self.planner.active_reservations(),
        ));
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
