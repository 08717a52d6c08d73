//! What only the dashboard shows: each region's station list (from its retained
//! `stations` message), its request rate (from the aggregates' `requests_total`), and
//! the latest reroutes (the map's arrows). Times on the shared clock.

use std::collections::{BTreeMap, VecDeque};

use protocol::fog::AggregateStation;
use serde::Serialize;

/// Reroutes kept for the page (the newest).
pub const RECENT_REROUTES: usize = 50;

/// A reroute central answered: drawn as an arrow from the vehicle to the station.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RerouteEvent {
    /// The shared clock, ms since the epoch.
    pub at_ms: u64,
    pub origin_region: String,
    pub target_region: String,
    pub vehicle_id: String,
    pub station_id: String,
    /// Where the vehicle asked from.
    pub from: [f64; 2],
    /// The station it was sent to.
    pub to: [f64; 2],
}

/// A region's latest station list.
#[derive(Debug, Clone, PartialEq)]
pub struct StationList {
    pub stations: Vec<AggregateStation>,
    /// When it was received, on the shared clock.
    pub received_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Rate {
    total: u64,
    at_ms: u64,
    per_s: f64,
}

/// The dashboard's own data (see the module docs).
#[derive(Debug, Default)]
pub struct Board {
    stations: BTreeMap<String, StationList>,
    rates: BTreeMap<String, Rate>,
    reroutes: VecDeque<RerouteEvent>,
}

impl Board {
    /// Every region's latest station list, by region id.
    pub fn stations(&self) -> impl Iterator<Item = (&str, &StationList)> {
        self.stations.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A region's requests per real second, between its last two aggregates that
    /// were at least 0.2 s apart; 0 before there are two.
    pub fn requests_per_s(&self, region: &str) -> f64 {
        self.rates.get(region).map_or(0.0, |r| r.per_s)
    }

    /// The latest reroutes that sent a vehicle somewhere, oldest first (at most
    /// [`RECENT_REROUTES`]).
    pub fn reroutes(&self) -> impl Iterator<Item = &RerouteEvent> {
        self.reroutes.iter()
    }

    pub(super) fn on_stations(
        &mut self,
        region: &str,
        stations: Vec<AggregateStation>,
        now_ms: u64,
    ) {
        self.stations.insert(
            region.to_owned(),
            StationList {
                stations,
                received_ms: now_ms,
            },
        );
    }

    /// The region's request counter from an aggregate: the request rate.
    pub(super) fn on_requests_total(&mut self, region: &str, total: u64, now_ms: u64, speed: f64) {
        let per_s = match self.rates.get(region) {
            Some(prev) if total >= prev.total => {
                let dt = now_ms.saturating_sub(prev.at_ms) as f64 / speed / 1000.0;
                if dt < 0.2 {
                    // too close to the last one to say anything new
                    return;
                }
                (total - prev.total) as f64 / dt
            }
            _ => 0.0,
        };
        self.rates.insert(
            region.to_owned(),
            Rate {
                total,
                at_ms: now_ms,
                per_s,
            },
        );
    }

    pub(super) fn on_reroute(&mut self, event: RerouteEvent) {
        if self.reroutes.len() == RECENT_REROUTES {
            self.reroutes.pop_front();
        }
        self.reroutes.push_back(event);
    }

    /// A region was withdrawn.
    pub(super) fn remove(&mut self, region: &str) {
        self.stations.remove(region);
        self.rates.remove(region);
    }
}
