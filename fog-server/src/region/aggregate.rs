//! The region's summary for central: totals over its stations and its best few
//! (`aggregate`, retained, after each change as often as allowed), and every station
//! once a period (`stations`, for central's dashboard); [`AggregateSchedule`] decides
//! when they go out.

use protocol::fog::{Aggregate, AggregateStation, FogMessage};

use super::{Outgoing, Region};
use crate::index::{Slot, Station};

/// When the region's aggregate goes out: every period, and after a change as soon as
/// the shortest interval allows; the station list once a period, busy or not. The
/// caller checks every [`check_every_ms`](Self::check_every_ms) (its one timer) and
/// asks [`due`](Self::due). Times are in the ms of whichever clock the caller keeps,
/// the same for every call: the server's shell uses real ms of a monotonic clock, a
/// simulation its own simulated ms (with the periods scaled to match).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSchedule {
    min_interval_ms: u64,
    period_ms: u64,
    last_ms: Option<u64>,
    last_stations_ms: Option<u64>,
}

/// What is due at a check: the aggregate, and the station list with it when `stations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateDue {
    pub stations: bool,
}

impl AggregateSchedule {
    /// Aggregates at least every `period_ms`, and after a change no sooner than
    /// `min_interval_ms` after the last one.
    pub fn new(min_interval_ms: u64, period_ms: u64) -> Self {
        Self {
            min_interval_ms: min_interval_ms.max(1),
            period_ms,
            last_ms: None,
            last_stations_ms: None,
        }
    }

    /// How often to check.
    pub fn check_every_ms(&self) -> u64 {
        self.min_interval_ms
    }

    /// At a check at `now_ms`, `dirty` when something an aggregate shows changed since
    /// the last one ([`Region::is_dirty`]): what to publish now, if anything (taken as
    /// published).
    pub fn due(&mut self, now_ms: u64, dirty: bool) -> Option<AggregateDue> {
        let passed =
            |last: Option<u64>| last.is_none_or(|t| now_ms.saturating_sub(t) >= self.period_ms);
        let aggregate_due = passed(self.last_ms);
        // Every station, for central's dashboard: once a period, busy or not.
        let stations = passed(self.last_stations_ms);
        if !(aggregate_due || stations || dirty) {
            return None;
        }
        if stations {
            self.last_stations_ms = Some(now_ms);
        }
        self.last_ms = Some(now_ms);
        Some(AggregateDue { stations })
    }
}

/// How many of the region's best stations an aggregate lists.
const AGGREGATE_BEST: usize = 8;
/// How many more it lists for each side of the region's outline: those that serve a
/// vehicle just across that side soonest (wait + drive from the side). With many
/// stations free, the best by wait alone are an arbitrary few, often far from the
/// neighbour that would need them.
const AGGREGATE_BEST_PER_SIDE: usize = 3;

impl Region {
    /// Whether something an aggregate shows changed since the last aggregate.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The bridge to central is up again: what central holds of this region is as old
    /// as the cut, so the next aggregate goes out at once, not a period later.
    pub(super) fn on_bridge_state(&mut self, connection: &str, connected: bool) {
        tracing::info!(connection, connected, "bridge to central");
        if connected {
            self.dirty = true;
        }
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
            requests_total: self.answered,
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
        let by_side = self.best_by_side(&mut ranked);
        if ranked.len() > AGGREGATE_BEST {
            ranked.select_nth_unstable_by(AGGREGATE_BEST - 1, order);
            ranked.truncate(AGGREGATE_BEST);
        }
        ranked.sort_by(order);
        agg.min_wait_s = ranked.first().map(|(wait, _, _)| *wait);
        let mut extra: Vec<(u32, Slot, &Station)> = by_side
            .into_iter()
            .filter(|(_, slot, _)| !ranked.iter().any(|r| r.1 == *slot))
            .collect();
        extra.sort_by(order);
        extra.dedup_by_key(|e| e.1);
        agg.best = ranked
            .iter()
            .chain(&extra)
            .map(|&(wait, slot, s)| self.summary(slot, s, wait))
            .collect();
        agg
    }

    /// For each side of the region's outline (its bounding box), the
    /// [`AGGREGATE_BEST_PER_SIDE`] stations of `ranked` (predicted wait, slot, station)
    /// soonest for a vehicle at that side: least wait + drive from the side. Reorders
    /// `ranked`; picks a station once per side it is best for.
    fn best_by_side<'a>(
        &self,
        ranked: &mut [(u32, Slot, &'a Station)],
    ) -> Vec<(u32, Slot, &'a Station)> {
        let Some(first) = self.outline.first() else {
            return Vec::new();
        };
        if ranked.len() <= AGGREGATE_BEST {
            return Vec::new();
        }
        let (mut south, mut north, mut west, mut east) = (first[0], first[0], first[1], first[1]);
        for [lat, lon] in &self.outline {
            (south, north) = (south.min(*lat), north.max(*lat));
            (west, east) = (west.min(*lon), east.max(*lon));
        }
        let cost = &self.planner.params.cost;
        let km_per_deg = protocol::geo::EARTH_RADIUS_KM.to_radians();
        let sides: [&dyn Fn(&Station) -> f64; 4] = [
            &|s| (s.lat - south).abs() * km_per_deg,
            &|s| (north - s.lat).abs() * km_per_deg,
            &|s| (s.lon - west).abs() * km_per_deg * s.lat.to_radians().cos(),
            &|s| (east - s.lon).abs() * km_per_deg * s.lat.to_radians().cos(),
        ];
        let n = AGGREGATE_BEST_PER_SIDE.min(ranked.len());
        let mut out = Vec::with_capacity(4 * n);
        for km_from_side in sides {
            let soonest = |e: &(u32, Slot, &Station)| {
                f64::from(e.0) + cost.drive_s(cost.road_km(km_from_side(e.2)))
            };
            let order = |a: &(u32, Slot, &Station), b: &(u32, Slot, &Station)| {
                soonest(a)
                    .total_cmp(&soonest(b))
                    .then_with(|| summary_order(a.0, a.2, b.0, b.2))
            };
            ranked.select_nth_unstable_by(n - 1, order);
            out.extend_from_slice(&ranked[..n]);
        }
        out
    }

    /// The messages of an aggregate that is `due` (see [`AggregateSchedule`]): the
    /// aggregate, then — when due — the station list, both retained, on their regional
    /// topics (`fog/up/…`).
    pub fn aggregate_messages(&mut self, due: AggregateDue, now_ms: u64) -> Vec<Outgoing> {
        let stations = due.stations.then(|| self.stations_snapshot(now_ms));
        let mut out = vec![Outgoing {
            topic: FogMessage::Aggregate.regional_topic(),
            payload: protocol::encode(&self.aggregate(now_ms)),
            retain: true,
        }];
        if let Some(stations) = stations {
            out.push(Outgoing {
                topic: FogMessage::Stations.regional_topic(),
                payload: protocol::encode(&stations),
                retain: true,
            });
        }
        out
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
}

/// The order of stations in aggregates: shortest predicted wait, then most chargers,
/// then by id (as the `stations` message sorts them).
fn summary_order(a_wait: u32, a: &Station, b_wait: u32, b: &Station) -> std::cmp::Ordering {
    a_wait
        .cmp(&b_wait)
        .then(b.chargers.cmp(&a.chargers))
        .then_with(|| a.station_id.cmp(&b.station_id))
}

#[cfg(test)]
mod tests {
    use protocol::{StationState, StationStatus, topics};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::planner::PlannerParams;

    #[test]
    fn aggregates_go_out_every_period_and_after_a_change_at_the_shortest_interval() {
        let mut schedule = AggregateSchedule::new(250, 2000);
        assert_eq!(schedule.check_every_ms(), 250);
        let with_stations = Some(AggregateDue { stations: true });
        let alone = Some(AggregateDue { stations: false });
        // The first check publishes both, whatever changed.
        assert_eq!(schedule.due(1000, false), with_stations);
        // Nothing changed: nothing until a period has passed.
        assert_eq!(schedule.due(1250, false), None);
        // A change goes out at the next check, without the station list.
        assert_eq!(schedule.due(1500, true), alone);
        assert_eq!(schedule.due(1750, true), alone);
        // The station list is due a period after the last one: the aggregate with it.
        assert_eq!(schedule.due(2750, false), None);
        assert_eq!(schedule.due(3000, false), with_stations);
        assert_eq!(schedule.due(4999, false), None);
        assert_eq!(schedule.due(5000, false), with_stations);
    }

    #[test]
    fn aggregate_messages_are_the_aggregate_and_the_station_list_retained() {
        let mut region = Region::new("north", PlannerParams::default());
        let now = 1_750_000_000_000;
        let out = region.aggregate_messages(AggregateDue { stations: true }, now);
        let topics: Vec<(&str, bool)> = out.iter().map(|o| (o.topic.as_str(), o.retain)).collect();
        assert_eq!(
            topics,
            [("fog/up/aggregate", true), ("fog/up/stations", true)]
        );
        let agg: Aggregate = protocol::decode(&out[0].payload).unwrap();
        assert_eq!((agg.region.as_str(), agg.seq, agg.ts_ms), ("north", 1, now));
        assert!(!region.is_dirty(), "published");
        let out = region.aggregate_messages(AggregateDue { stations: false }, now + 1);
        assert_eq!(out.len(), 1);
        let agg: Aggregate = protocol::decode(&out[0].payload).unwrap();
        assert_eq!(agg.seq, 2);
    }

    /// The aggregate picks its best stations without sorting them all: the same ones,
    /// in the same order, as the full list (`stations` message), and the same totals.
    #[test]
    fn aggregate_best_is_the_head_of_the_full_list() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = 1_750_000_000_000;
        for n in [0, 1, 5, 8, 9, 300] {
            let mut region = Region::new("north", PlannerParams::default());
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
                    gateway: None,
                };
                let topic = topics::station_status("north", &status.station_id);
                region.receive(&topic, &protocol::encode(&status), now);
            }
            let all = region.stations_snapshot(now).stations;
            let agg = region.aggregate(now);
            let head = all.len().min(AGGREGATE_BEST);
            assert_eq!(agg.best[..head], all[..head], "n = {n}");
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
