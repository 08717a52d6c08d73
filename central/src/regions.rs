//! The latest aggregate of every region, and what those aggregates predict for a
//! vehicle. No I/O and no clock: [`crate::core`] feeds [`Regions::ingest`] with the
//! time on the shared clock; the core, the HTTP handlers and the dashboard read.
//!
//! **Ordering.** Aggregates are latest-value messages (retained, QoS 1) and may arrive
//! twice or out of order (a retained copy after a reconnect, a bridge replaying its
//! queue). One replaces the held one when its `seq` is higher, or when its `ts_ms` is
//! newer — a lower (or equal) `seq` with a newer timestamp means the fog server
//! restarted and counts from 1 again. Anything else is old news and is ignored.
//!
//! **Data age** is measured from the moment the aggregate was *received*, on the
//! shared clock central is given (`now_ms`), and shown in real milliseconds: clock
//! milliseconds divided by the clock speed, so that a simulation running faster sees
//! the same real limit and a fog clock that is off does not matter (the fog's `ts_ms`
//! is only shown). A region is **stale** when its data age exceeds `--stale-after-ms`.
//!
//! **Saturation** (one rule, the fog planner's own, [`cost_model::is_saturated`]): a
//! region is saturated when its shortest predicted wait (`min_wait_s`) is missing — no
//! station in service — or longer than the wait limit its aggregate states
//! (`max_wait_s`, its fog's `--max-wait-s`). An aggregate without one, from a fog
//! server older than that field, is held to central's own `--max-wait-s`. Free
//! chargers and queues are already inside the predicted waits, so they are not counted
//! a second time.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::fog::{Aggregate, AggregateStation, Offer};
use serde::Serialize;

use cost_model::CostParams;
pub use cost_model::{Estimate, Vehicle, estimate};

/// What central holds for one region.
#[derive(Debug, Clone)]
pub struct RegionState {
    pub aggregate: Aggregate,
    /// When it was received, on the shared clock (ms since the epoch): data age is
    /// measured from here.
    pub received_ms: u64,
}

/// What [`Regions::ingest`] did with an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// The first aggregate of a region.
    New,
    /// A newer aggregate replaced the held one.
    Updated,
    /// A lower (or equal) sequence number with a newer timestamp: the fog restarted.
    Restarted,
    /// Old news (a duplicate or an out-of-order copy): ignored.
    Ignored { held_seq: u64 },
}

/// The latest aggregate of every region, by region id.
#[derive(Debug, Clone)]
pub struct Regions {
    map: BTreeMap<String, RegionState>,
    /// Real time.
    stale_after: Duration,
    /// The wait limit of regions whose aggregate states none.
    max_wait_s: u32,
    /// Clock milliseconds per real millisecond.
    clock_speed: f64,
}

pub use protocol::api::RegionView;

impl Regions {
    /// `stale_after` is real time; `clock_speed` is how many milliseconds of the
    /// clock that `now_ms` is read on pass per real millisecond (a speed that is not a
    /// positive number means 1).
    pub fn new(stale_after: Duration, max_wait_s: u32, clock_speed: f64) -> Self {
        Self {
            map: BTreeMap::new(),
            stale_after,
            max_wait_s,
            clock_speed: if clock_speed.is_finite() && clock_speed > 0.0 {
                clock_speed
            } else {
                1.0
            },
        }
    }

    /// Takes an aggregate (already decoded and validated, its region matching its
    /// topic) received at `now_ms` on the shared clock.
    pub fn ingest(&mut self, aggregate: Aggregate, now_ms: u64) -> Ingest {
        let outcome = match self.map.get(&aggregate.region) {
            None => Ingest::New,
            Some(held) => {
                let h = &held.aggregate;
                if aggregate.seq > h.seq {
                    Ingest::Updated
                } else if aggregate.ts_ms > h.ts_ms {
                    Ingest::Restarted
                } else {
                    return Ingest::Ignored { held_seq: h.seq };
                }
            }
        };
        self.map.insert(
            aggregate.region.clone(),
            RegionState {
                aggregate,
                received_ms: now_ms,
            },
        );
        outcome
    }

    /// Forgets a region (its retained aggregate was cleared). True if it was known.
    pub fn remove(&mut self, region: &str) -> bool {
        self.map.remove(region).is_some()
    }

    pub fn get(&self, region: &str) -> Option<&RegionState> {
        self.map.get(region)
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every region, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RegionState)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Real milliseconds (whole) since the region's aggregate was received, `now_ms`
    /// being on the shared clock: what the API shows as `data_age_ms`.
    pub fn data_age_ms(&self, state: &RegionState, now_ms: u64) -> u64 {
        real_ms(now_ms.saturating_sub(state.received_ms), self.clock_speed)
    }

    /// Stale once the data is older than `stale_after`, in whole milliseconds: the
    /// same figure the API shows as `data_age_ms`, so a region shown stale always
    /// shows an age above the limit.
    pub fn is_stale(&self, state: &RegionState, now_ms: u64) -> bool {
        self.data_age_ms(state, now_ms) > millis(self.stale_after)
    }

    /// The first time on the shared clock at which the region is stale (unless a newer
    /// aggregate comes first).
    pub fn stale_at_ms(&self, state: &RegionState) -> u64 {
        let limit = millis(self.stale_after).saturating_add(1) as f64;
        let mut at = state
            .received_ms
            .saturating_add((limit * self.clock_speed).ceil() as u64);
        // The float's rounding, corrected against the rule itself.
        while at < u64::MAX && !self.is_stale(state, at) {
            at += 1;
        }
        while at > state.received_ms && self.is_stale(state, at - 1) {
            at -= 1;
        }
        at
    }

    /// The saturation rule (see the module docs).
    pub fn is_saturated(&self, aggregate: &Aggregate) -> bool {
        let limit = aggregate.max_wait_s.unwrap_or(self.max_wait_s);
        cost_model::is_saturated(aggregate.min_wait_s, limit)
    }

    /// Every region as the API shows it, by id.
    pub fn views(&self, now_ms: u64) -> Vec<RegionView> {
        self.iter()
            .map(|(id, s)| RegionView {
                id: id.to_owned(),
                aggregate: s.aggregate.clone(),
                received_ms: s.received_ms,
                data_age_ms: self.data_age_ms(s, now_ms),
                stale: self.is_stale(s, now_ms),
                saturated: self.is_saturated(&s.aggregate),
            })
            .collect()
    }

    /// Whether a region can take vehicles from others now: fresh and not saturated.
    pub fn is_open(&self, state: &RegionState, now_ms: u64) -> bool {
        !self.is_stale(state, now_ms) && !self.is_saturated(&state.aggregate)
    }

    /// The regions that can take vehicles from others now: fresh and not saturated,
    /// sorted (what central's heartbeat lists).
    pub fn open_regions(&self, now_ms: u64) -> Vec<String> {
        // The map is sorted by id.
        self.iter()
            .filter(|(_, s)| self.is_open(s, now_ms))
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// For `region`: the distance from its outline to the nearest listed station of
    /// another region that can take vehicles now, km (see
    /// [`protocol::fog::CentralHeartbeat::nearest_open_km`]); `None` without an outline.
    pub fn nearest_open_km(&self, region: &str, now_ms: u64) -> Option<f64> {
        let outline = &self.map.get(region)?.aggregate.outline;
        if outline.is_empty() {
            return None;
        }
        let nearest = self
            .open_stations(region, now_ms)
            .filter_map(|(_, st)| protocol::fog::distance_to_outline_km(outline, st.lat, st.lon))
            .fold(protocol::fog::EVERYWHERE_KM, f64::min);
        Some(nearest)
    }

    /// For `region`: the stations listed by other regions that can take vehicles now
    /// (fresh, not saturated) within `radius_km` of its outline (its bounding box,
    /// [`protocol::fog::distance_to_outline_km`]), nearest to the outline first (ties:
    /// region, then station id), at most `limit` (see
    /// [`protocol::fog::CentralHeartbeat::offers`]). None for a region without an
    /// outline, or one central does not know.
    pub fn offers(&self, region: &str, now_ms: u64, radius_km: f64, limit: usize) -> Vec<Offer> {
        let Some(outline) = self.map.get(region).map(|s| &s.aggregate.outline) else {
            return Vec::new();
        };
        let mut near: Vec<(f64, &str, &AggregateStation)> = self
            .open_stations(region, now_ms)
            .filter_map(|(id, st)| {
                let km = protocol::fog::distance_to_outline_km(outline, st.lat, st.lon)?;
                (km <= radius_km).then_some((km, id, st))
            })
            .collect();
        near.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.cmp(b.1))
                .then_with(|| a.2.station_id.cmp(&b.2.station_id))
        });
        near.into_iter()
            .take(limit)
            .map(|(_, id, st)| Offer {
                region: id.to_owned(),
                station_id: st.station_id.clone(),
                lat: st.lat,
                lon: st.lon,
                power_kw: st.power_kw,
                wait_s: st.predicted_wait_s,
            })
            .collect()
    }

    /// The listed stations of every region other than `region` that can take vehicles
    /// now, with their region's id.
    fn open_stations<'a>(
        &'a self,
        region: &'a str,
        now_ms: u64,
    ) -> impl Iterator<Item = (&'a str, &'a AggregateStation)> + 'a {
        self.iter()
            .filter(move |(id, s)| *id != region && self.is_open(s, now_ms))
            .flat_map(|(id, s)| s.aggregate.best.iter().map(move |st| (id, st)))
    }

    /// Every region central has heard of, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.map.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many regions are stale now.
    pub fn stale_count(&self, now_ms: u64) -> usize {
        self.map
            .values()
            .filter(|s| self.is_stale(s, now_ms))
            .count()
    }

    /// How many regions are saturated now.
    pub fn saturated_count(&self) -> usize {
        self.map
            .values()
            .filter(|s| self.is_saturated(&s.aggregate))
            .count()
    }

    /// Every reachable station that the aggregates list (each region's `best`), with
    /// its estimate for `vehicle`, least total first (ties: region, then station id).
    pub fn rank_stations(
        &self,
        vehicle: &Vehicle,
        model: &CostParams,
        now_ms: u64,
    ) -> Vec<StationEstimate> {
        let mut out: Vec<StationEstimate> = self
            .iter()
            .flat_map(|(id, s)| {
                let stale = self.is_stale(s, now_ms);
                let age = self.data_age_ms(s, now_ms);
                s.aggregate.best.iter().filter_map(move |st| {
                    estimate(vehicle, st.into(), model).map(|e| StationEstimate {
                        region: id.to_owned(),
                        station_id: st.station_id.clone(),
                        lat: st.lat,
                        lon: st.lon,
                        power_kw: st.power_kw,
                        predicted_wait_s: st.predicted_wait_s,
                        estimate: e,
                        stale,
                        data_age_ms: age,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.estimate
                .total_s
                .total_cmp(&b.estimate.total_s)
                .then_with(|| a.region.cmp(&b.region))
                .then_with(|| a.station_id.cmp(&b.station_id))
        });
        out
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Clock milliseconds as whole real milliseconds at `speed` (rounded down).
pub(crate) fn real_ms(clock_ms: u64, speed: f64) -> u64 {
    (clock_ms as f64 / speed) as u64
}

/// A station from some region's aggregate, with its estimate for one vehicle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StationEstimate {
    pub region: String,
    pub station_id: String,
    pub lat: f64,
    pub lon: f64,
    pub power_kw: f64,
    pub predicted_wait_s: u32,
    #[serde(flatten)]
    pub estimate: Estimate,
    /// Whether the region's data is stale.
    pub stale: bool,
    pub data_age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn aggregate(region: &str, seq: u64, ts_ms: u64) -> Aggregate {
        Aggregate {
            v: 1,
            region: region.into(),
            seq,
            ts_ms,
            stations: 1,
            stations_in_service: 1,
            chargers: 2,
            chargers_free: 1,
            queued: 0,
            reservations: 0,
            min_wait_s: Some(0),
            max_wait_s: None,
            outline: vec![],
            best: vec![],
            saturated_requests: 0,
            requests_total: 0,
        }
    }

    fn station(id: &str, lat: f64, lon: f64, wait: u32) -> AggregateStation {
        AggregateStation {
            station_id: id.into(),
            lat,
            lon,
            chargers: 2,
            power_kw: 50.0,
            occupied: 0,
            queue: 0,
            reservations: 0,
            predicted_wait_s: wait,
        }
    }

    const CAR: Vehicle = Vehicle {
        lat: 0.0,
        lon: 0.0,
        soc: 0.3,
        battery_kwh: 60.0,
        kwh_per_km: 0.18,
        target_soc: 0.8,
    };

    #[test]
    fn newer_seq_replaces_old_and_duplicate_are_ignored_and_restart_is_detected() {
        let mut r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        assert_eq!(r.ingest(aggregate("a", 5, 1000), 0), Ingest::New);
        assert_eq!(r.ingest(aggregate("a", 6, 2000), 0), Ingest::Updated);
        // Redelivered retained copy, or an out-of-order old one.
        assert_eq!(
            r.ingest(aggregate("a", 6, 2000), 0),
            Ingest::Ignored { held_seq: 6 }
        );
        assert_eq!(
            r.ingest(aggregate("a", 4, 900), 0),
            Ingest::Ignored { held_seq: 6 }
        );
        // The fog restarted: counts from 1 again, with a newer timestamp.
        assert_eq!(r.ingest(aggregate("a", 1, 3000), 0), Ingest::Restarted);
        assert_eq!(r.get("a").unwrap().aggregate.seq, 1);
        assert_eq!(r.ingest(aggregate("a", 2, 3100), 0), Ingest::Updated);
    }

    #[test]
    fn staleness_is_measured_from_reception() {
        let mut r = Regions::new(Duration::from_millis(100), 1800, 1.0);
        let t0 = 1_000_000;
        r.ingest(aggregate("a", 1, 0), t0);
        let s = r.get("a").unwrap();
        assert!(!r.is_stale(s, t0 + 100));
        assert!(r.is_stale(s, t0 + 101));
        assert_eq!(r.stale_at_ms(s), t0 + 101);
        assert_eq!(r.views(t0 + 100)[0].data_age_ms, 100);
        assert_eq!(r.stale_count(t0 + 1000), 1);
        let v = &r.views(t0 + 42)[0];
        assert_eq!(v.data_age_ms, 42);
        // A clock that stepped back shows no negative age.
        assert_eq!(r.views(t0 - 5)[0].data_age_ms, 0);
    }

    #[test]
    fn data_age_is_real_time_on_a_faster_clock() {
        // The clock runs 60 times faster: 100 real ms are 6,000 clock ms.
        let mut r = Regions::new(Duration::from_millis(100), 1800, 60.0);
        let t0 = 1_000_000;
        r.ingest(aggregate("a", 1, 0), t0);
        let s = r.get("a").unwrap();
        assert_eq!(r.data_age_ms(s, t0 + 6_000), 100);
        assert!(!r.is_stale(s, t0 + 6_059));
        assert!(r.is_stale(s, t0 + 6_060));
        assert_eq!(r.stale_at_ms(s), t0 + 6_060);
        // A speed of 2.5: stale from 101 × 2.5 = 252.5, the first whole ms 253.
        let mut r = Regions::new(Duration::from_millis(100), 1800, 2.5);
        r.ingest(aggregate("a", 1, 0), t0);
        let s = r.get("a").unwrap();
        assert_eq!(r.stale_at_ms(s), t0 + 253);
        assert!(!r.is_stale(s, t0 + 252));
    }

    #[test]
    fn saturation_rule() {
        let r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        let mut a = aggregate("a", 1, 0);
        a.min_wait_s = Some(1800);
        assert!(!r.is_saturated(&a));
        a.min_wait_s = Some(1801);
        assert!(r.is_saturated(&a));
        a.min_wait_s = None;
        assert!(r.is_saturated(&a));
    }

    #[test]
    fn the_fogs_own_wait_limit_decides_and_central_s_only_without_one() {
        let r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        let mut a = aggregate("a", 1, 0);
        a.min_wait_s = Some(900);
        a.max_wait_s = Some(600);
        assert!(r.is_saturated(&a), "the fog accepts at most 600 s");
        a.min_wait_s = Some(2400);
        a.max_wait_s = Some(3600);
        assert!(!r.is_saturated(&a), "the fog accepts up to 3600 s");
        a.max_wait_s = None;
        assert!(r.is_saturated(&a), "an older fog: central's 1800 s");
        a.max_wait_s = Some(3600);
        a.min_wait_s = None;
        assert!(r.is_saturated(&a), "nothing in service");
        let views = {
            let mut r = r.clone();
            a.min_wait_s = Some(2400);
            r.ingest(a, 0);
            r.views(0)
        };
        assert!(!views[0].saturated);
    }

    #[test]
    fn estimate_adds_drive_wait_and_charge_and_respects_range() {
        let model = CostParams::default();
        // 10 km north (great circle) => 13 road km.
        let s = station("s", 10.0 / 111.195, 0.0, 300);
        let e = estimate(&CAR, (&s).into(), &model).unwrap();
        assert!((e.road_km - 13.0).abs() < 0.01, "{e:?}");
        assert!((e.drive_s - 13.0 / 40.0 * 3600.0).abs() < 2.0);
        assert_eq!(e.wait_s, 300.0);
        // arrival soc = 0.3 - 13*0.18/60 = 0.261; (0.8-0.261)*60/50 h.
        assert!((e.charge_s - (0.8 - 0.261) * 60.0 / 50.0 * 3600.0).abs() < 3.0);
        assert!((e.total_s - (e.drive_s + e.wait_s + e.charge_s)).abs() < 1e-9);
        // Range: 0.3*60/0.18 = 100 km, 90 usable => 69.2 great-circle km.
        let at =
            |id: &str, km: f64| estimate(&CAR, (&station(id, km / 111.195, 0.0, 0)).into(), &model);
        assert!(at("near", 69.0).is_some());
        assert!(at("far", 69.5).is_none());
    }

    #[test]
    fn stations_are_ranked_by_total_across_regions() {
        let mut r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        let t0 = 0;
        let mut a = aggregate("a", 1, 0);
        a.best = vec![
            station("a-busy", 0.01, 0.0, 3000),
            station("a-far", 5.0, 0.0, 0),
        ];
        let mut b = aggregate("b", 1, 0);
        b.best = vec![station("b-ok", 0.05, 0.0, 60)];
        r.ingest(a, t0);
        r.ingest(b, t0);
        let ranked = r.rank_stations(&CAR, &CostParams::default(), t0);
        let ids: Vec<&str> = ranked.iter().map(|s| s.station_id.as_str()).collect();
        assert_eq!(ids, ["b-ok", "a-busy"], "a-far is out of range");
    }

    #[test]
    fn nearest_open_km_measures_from_the_outline_to_open_regions_only() {
        let mut r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        let now = 1;
        let mut a = aggregate("a", 1, 1);
        a.outline = vec![[0.0, 0.0], [0.0, 0.1], [0.1, 0.1], [0.1, 0.0]];
        r.ingest(a, now);
        // No other region: nowhere.
        assert_eq!(
            r.nearest_open_km("a", now),
            Some(protocol::fog::EVERYWHERE_KM)
        );
        // An open region with a station 1 degree east of the box: ~100 km.
        let mut b = aggregate("b", 1, 1);
        b.best = vec![station("b1", 0.05, 1.1, 0)];
        r.ingest(b, now);
        let km = r.nearest_open_km("a", now).unwrap();
        assert!((km - 111.19).abs() < 0.5, "{km}");
        // A saturated region nearer does not count.
        let mut c = aggregate("c", 1, 1);
        c.min_wait_s = Some(9999);
        c.best = vec![station("c1", 0.05, 0.2, 9999)];
        r.ingest(c, now);
        let km2 = r.nearest_open_km("a", now).unwrap();
        assert!((km2 - km).abs() < 1e-9, "{km2}");
        // A region without an outline gets none.
        assert_eq!(r.nearest_open_km("b", now), None);
        assert_eq!(r.nearest_open_km("unknown", now), None);
    }

    #[test]
    fn offers_are_open_regions_stations_near_the_outline_nearest_first() {
        const KM: f64 = 1.0 / 111.195;
        let mut r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        // "d" reports first and is stale by the time the others have reported.
        let mut d = aggregate("d", 1, 1);
        d.best = vec![station("d1", 0.05, 0.1 + KM, 0)];
        r.ingest(d, 0);
        let now = 7_000;
        let mut a = aggregate("a", 1, 1);
        a.outline = vec![[0.0, 0.0], [0.0, 0.1], [0.1, 0.1], [0.1, 0.0]];
        a.best = vec![station("a1", 0.05, 0.05, 0)];
        r.ingest(a, now);
        let mut b = aggregate("b", 1, 1);
        b.best = vec![
            station("b-far", 0.05, 0.1 + 20.0 * KM, 0),
            station("b-near", 0.05, 0.1 + 5.0 * KM, 60),
            station("b-inside", 0.05, 0.09, 0),
        ];
        r.ingest(b, now);
        let mut c = aggregate("c", 1, 1);
        c.best = vec![station("c1", 0.05, 0.1 + 2.0 * KM, 0)];
        r.ingest(c, now);
        // "e" is as near as "c1" but saturated.
        let mut e = aggregate("e", 1, 1);
        e.min_wait_s = Some(9999);
        e.best = vec![station("e1", 0.05, 0.1 + KM, 9999)];
        r.ingest(e, now);

        let offers = r.offers("a", now, 15.0, 16);
        let ids: Vec<(&str, &str)> = offers
            .iter()
            .map(|o| (o.region.as_str(), o.station_id.as_str()))
            .collect();
        assert_eq!(ids, [("b", "b-inside"), ("c", "c1"), ("b", "b-near")]);
        let near = &offers[2];
        assert_eq!((near.lat, near.lon), (0.05, 0.1 + 5.0 * KM));
        assert_eq!((near.power_kw, near.wait_s), (50.0, 60));
        // The limit keeps the nearest; a larger radius reaches farther.
        assert_eq!(r.offers("a", now, 15.0, 1)[0].station_id, "b-inside");
        assert_eq!(r.offers("a", now, 25.0, 16).len(), 4);
        assert!(r.offers("a", now, 15.0, 0).is_empty());
        // Regions without an outline, and unknown ones, get none.
        assert!(r.offers("b", now, 1000.0, 16).is_empty());
        assert!(r.offers("zz", now, 1000.0, 16).is_empty());
    }
}
