//! The region's stations, in an R-tree ordered by great-circle distance.
//!
//! Points are stored as 3-D unit vectors ([`protocol::geo::unit_vector`]): the chord
//! between two of them grows monotonically with their great-circle distance, so the
//! tree's Euclidean nearest-neighbour order is great-circle order everywhere (poles and
//! antimeridian included). Only stations in service (`available`, `full`) are in the
//! tree; faulted and offline ones are remembered (for the API) but never found.

use std::collections::HashMap;

use protocol::geo::{chord_to_km, unit_vector};
use protocol::{StationState, StationStatus};
use rstar::RTree;
use rstar::primitives::GeomWithData;
use serde::Serialize;

/// Index of a station in [`StationIndex`]'s slots; stable while the station exists.
pub type Slot = usize;

type Entry = GeomWithData<[f64; 3], Slot>;

/// What the fog knows of one station.
#[derive(Debug, Clone, Serialize)]
pub struct Station {
    pub station_id: String,
    pub lat: f64,
    pub lon: f64,
    #[serde(skip)]
    pub unit: [f64; 3],
    pub chargers: u32,
    pub power_kw: f64,
    pub occupied: u32,
    pub queue: u32,
    pub state: StationState,
    /// When the fog last heard from the station (fog clock, ms).
    pub updated_ms: u64,
    /// The station takes reservations and holds a connector for each (its status says
    /// `takes_reservations`): walk-ins queue only for connectors nobody holds.
    #[serde(default)]
    pub holds: bool,
}

impl Station {
    fn in_tree(&self) -> bool {
        self.state.is_in_service()
    }
}

/// What an update did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Inserted,
    Updated,
    Removed,
    /// An offline/faulted notice for a station never seen with a position.
    Ignored,
}

#[derive(Debug, Default)]
pub struct StationIndex {
    tree: RTree<Entry>,
    slots: Vec<Option<Station>>,
    free: Vec<Slot>,
    by_id: HashMap<String, Slot>,
    max_power_kw: f64,
}

impl StationIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from many stations at once (R-tree bulk load).
    pub fn bulk_load(stations: impl IntoIterator<Item = Station>) -> Self {
        let mut index = Self::new();
        let mut entries = Vec::new();
        for station in stations {
            if let Some(&slot) = index.by_id.get(&station.station_id) {
                index.slots[slot] = None;
                index.free.push(slot);
            }
            let slot = index.slots.len();
            index.max_power_kw = index.max_power_kw.max(station.power_kw);
            index.by_id.insert(station.station_id.clone(), slot);
            index.slots.push(Some(station));
        }
        for (slot, station) in index.slots.iter().enumerate() {
            if let Some(s) = station.as_ref().filter(|s| s.in_tree()) {
                entries.push(Entry::new(s.unit, slot));
            }
        }
        index.tree = RTree::bulk_load(entries);
        index
    }

    /// Applies a validated status message received at `now_ms`.
    pub fn apply(&mut self, status: &StationStatus, now_ms: u64) -> Change {
        let existing = self.by_id.get(status.station_id.as_str()).copied();
        let position = status.lat.zip(status.lon);
        let Some(slot) = existing else {
            let (Some((lat, lon)), Some(chargers), Some(power_kw)) =
                (position, status.chargers, status.power_kw)
            else {
                return Change::Ignored;
            };
            let station = Station {
                station_id: status.station_id.clone(),
                lat,
                lon,
                unit: unit_vector(lat, lon),
                chargers,
                power_kw,
                occupied: status.occupied,
                queue: status.queue,
                state: status.state,
                updated_ms: now_ms,
                holds: status.takes_reservations,
            };
            self.insert(station);
            return Change::Inserted;
        };
        let Some(mut station) = self.take(slot) else {
            return Change::Ignored;
        };
        if let Some((lat, lon)) = position {
            station.lat = lat;
            station.lon = lon;
            station.unit = unit_vector(lat, lon);
        }
        station.chargers = status.chargers.unwrap_or(station.chargers);
        station.power_kw = status.power_kw.unwrap_or(station.power_kw);
        station.occupied = status.occupied.min(station.chargers);
        station.queue = status.queue;
        station.state = status.state;
        station.updated_ms = now_ms;
        if status.state.is_in_service() || status.chargers.is_some() {
            // A full status (not a last will) says whether the station holds.
            station.holds = status.takes_reservations;
        }
        self.put(slot, station);
        Change::Updated
    }

    /// Forgets a station (empty retained status). Returns whether it was known.
    pub fn remove(&mut self, station_id: &str) -> Option<Station> {
        let slot = self.by_id.remove(station_id)?;
        let station = self.take(slot)?;
        self.free.push(slot);
        Some(station)
    }

    fn insert(&mut self, station: Station) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.by_id.insert(station.station_id.clone(), slot);
        self.put(slot, station);
        slot
    }

    /// Removes the station from its slot and from the tree.
    fn take(&mut self, slot: Slot) -> Option<Station> {
        let station = self.slots.get_mut(slot)?.take()?;
        if station.in_tree() {
            self.tree.remove(&Entry::new(station.unit, slot));
        }
        Some(station)
    }

    fn put(&mut self, slot: Slot, station: Station) {
        if station.in_tree() {
            self.tree.insert(Entry::new(station.unit, slot));
        }
        self.max_power_kw = self.max_power_kw.max(station.power_kw);
        self.slots[slot] = Some(station);
    }

    pub fn get(&self, slot: Slot) -> Option<&Station> {
        self.slots.get(slot)?.as_ref()
    }

    pub fn slot_of(&self, station_id: &str) -> Option<Slot> {
        self.by_id.get(station_id).copied()
    }

    /// In-service stations, nearest first by great-circle distance, with that distance
    /// in km.
    pub fn nearest(&self, lat: f64, lon: f64) -> impl Iterator<Item = (Slot, &Station, f64)> {
        self.tree
            .nearest_neighbor_iter_with_distance_2(&unit_vector(lat, lon))
            .filter_map(|(entry, d2)| {
                let station = self.get(entry.data)?;
                Some((entry.data, station, chord_to_km(d2.sqrt())))
            })
    }

    /// Every known station, in service or not.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Station)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| Some((slot, s.as_ref()?)))
    }

    /// Known stations (in service or not).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Stations that can be recommended.
    pub fn in_service(&self) -> usize {
        self.tree.size()
    }

    /// A station to change in place (tests only: its position and state must stay).
    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut Station> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// An upper bound on any indexed station's power (never decreases).
    pub fn max_power_kw(&self) -> f64 {
        self.max_power_kw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::haversine_km;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(crate) fn station(id: &str, lat: f64, lon: f64) -> Station {
        Station {
            station_id: id.to_owned(),
            lat,
            lon,
            unit: unit_vector(lat, lon),
            chargers: 2,
            power_kw: 50.0,
            occupied: 0,
            queue: 0,
            state: StationState::Available,
            updated_ms: 0,
            holds: false,
        }
    }

    fn status(id: &str, lat: f64, lon: f64, state: StationState) -> StationStatus {
        StationStatus {
            v: 1,
            station_id: id.into(),
            lat: Some(lat),
            lon: Some(lon),
            chargers: Some(4),
            power_kw: Some(50.0),
            occupied: 0,
            queue: 0,
            state,
            ts_ms: None,
            takes_reservations: false,
            gateway: None,
        }
    }

    /// Random points worldwide, plus clusters at both poles and across the antimeridian.
    fn seeded_points(rng: &mut StdRng, n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| match i % 4 {
                0 => (
                    rng.random_range(-90.0..=90.0),
                    rng.random_range(-180.0..=180.0),
                ),
                1 => (
                    rng.random_range(85.0..=90.0),
                    rng.random_range(-180.0..=180.0),
                ),
                2 => (
                    rng.random_range(-90.0..=-85.0),
                    rng.random_range(-180.0..=180.0),
                ),
                _ => {
                    let lon: f64 = rng.random_range(175.0..=185.0);
                    let lon = if lon > 180.0 { lon - 360.0 } else { lon };
                    (rng.random_range(-10.0..=10.0), lon)
                }
            })
            .collect()
    }

    #[test]
    fn nearest_k_matches_brute_force_haversine() {
        let mut rng = StdRng::seed_from_u64(7);
        let points = seeded_points(&mut rng, 10_000);
        let index = StationIndex::bulk_load(
            points
                .iter()
                .enumerate()
                .map(|(i, &(lat, lon))| station(&format!("s{i}"), lat, lon)),
        );
        assert_eq!(index.in_service(), 10_000);
        let mut queries = seeded_points(&mut rng, 200);
        queries.extend([(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -180.0)]);
        for (qlat, qlon) in queries {
            let mut brute: Vec<(f64, usize)> = points
                .iter()
                .enumerate()
                .map(|(i, &(lat, lon))| (haversine_km(qlat, qlon, lat, lon), i))
                .collect();
            brute.sort_by(|a, b| a.0.total_cmp(&b.0));
            let got: Vec<(Slot, f64)> = index
                .nearest(qlat, qlon)
                .take(10)
                .map(|(slot, _, km)| (slot, km))
                .collect();
            for (k, ((slot, km), (bkm, bslot))) in got.iter().zip(&brute).enumerate() {
                assert!(
                    (km - bkm).abs() < 1e-6,
                    "query ({qlat},{qlon}) k={k}: tree {km} km vs brute {bkm} km"
                );
                // Ties aside, the same station.
                if (brute[k + 1].0 - bkm).abs() > 1e-9
                    && (k == 0 || (brute[k - 1].0 - bkm).abs() > 1e-9)
                {
                    assert_eq!(slot, bslot, "query ({qlat},{qlon}) k={k}");
                }
            }
        }
    }

    #[test]
    fn updates_move_exclude_and_remove() {
        let mut index = StationIndex::new();
        let t = 1_000;
        assert_eq!(
            index.apply(&status("a", 0.0, 0.0, StationState::Available), t),
            Change::Inserted
        );
        assert_eq!(
            index.apply(&status("b", 0.0, 1.0, StationState::Available), t),
            Change::Inserted
        );
        assert_eq!(first(&index, 0.0, 0.9), "b");
        // Move a next to the query point.
        assert_eq!(
            index.apply(&status("a", 0.0, 0.95, StationState::Full), t),
            Change::Updated
        );
        assert_eq!(first(&index, 0.0, 0.9), "a");
        // Faulted: known but never found.
        index.apply(&status("a", 0.0, 0.95, StationState::Faulted), t);
        assert_eq!(first(&index, 0.0, 0.9), "b");
        assert_eq!((index.len(), index.in_service()), (2, 1));
        // Last will (no position) takes b out of service too.
        let will = StationStatus {
            lat: None,
            lon: None,
            chargers: None,
            power_kw: None,
            ..status("b", 0.0, 0.0, StationState::Offline)
        };
        assert_eq!(index.apply(&will, t), Change::Updated);
        assert_eq!(index.nearest(0.0, 0.9).count(), 0);
        // Back in service at its old position.
        index.apply(&status("b", 0.0, 1.0, StationState::Available), t);
        assert_eq!(first(&index, 0.0, 0.9), "b");
        // Empty retained payload removes; the slot is reused.
        assert!(index.remove("b").is_some());
        assert!(index.remove("b").is_none());
        assert_eq!(index.nearest(0.0, 0.9).count(), 0);
        assert_eq!(
            index.apply(&status("c", 0.0, 2.0, StationState::Available), t),
            Change::Inserted
        );
        assert_eq!(first(&index, 0.0, 0.9), "c");
        // An offline notice for an unknown station is ignored.
        let ghost = StationStatus {
            station_id: "ghost".into(),
            ..will
        };
        assert_eq!(index.apply(&ghost, t), Change::Ignored);
        assert_eq!(index.len(), 2);
    }

    fn first(index: &StationIndex, lat: f64, lon: f64) -> String {
        index
            .nearest(lat, lon)
            .next()
            .map(|(_, s, _)| s.station_id.clone())
            .unwrap_or_default()
    }
}
