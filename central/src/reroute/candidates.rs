//! Which regions are worth asking for a vehicle, best first (the rule is in the
//! module docs of [`crate::reroute`]).

use std::fmt;
use std::time::Duration;

use cost_model::CostParams;

use crate::regions::{Estimate, Regions, Vehicle};

/// A region worth asking, with the station that makes it worth it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub region: String,
    pub station_id: String,
    pub estimate: Estimate,
}

/// Why no region is worth asking.
#[derive(Debug, Clone, PartialEq)]
pub enum NoCandidate {
    /// No region other than the origin has fresh data.
    NoFreshRegion { stale: usize },
    /// No fresh region lists a station the vehicle can reach.
    NoneInRange { fresh: usize },
    /// Every fresh region in range is saturated.
    AllSaturated { in_range: usize },
    /// Regions are in range, but none beats the origin's own best.
    NoneBetter { in_range: usize, local_best_s: f64 },
}

impl fmt::Display for NoCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFreshRegion { stale: 0 } => write!(f, "no other region has reported"),
            Self::NoFreshRegion { stale } => write!(
                f,
                "no other region has fresh data ({stale} stale region(s))"
            ),
            Self::NoneInRange { fresh } => write!(
                f,
                "no region in range: none of {fresh} other region(s) with fresh data lists a station the vehicle can reach"
            ),
            Self::AllSaturated { in_range } => write!(
                f,
                "every region in range is saturated ({in_range} region(s))"
            ),
            Self::NoneBetter {
                in_range,
                local_best_s,
            } => write!(
                f,
                "no region in range beats the local best total of {local_best_s:.0} s ({in_range} region(s) in range)"
            ),
        }
    }
}

/// The regions worth asking for `vehicle` from `origin`, best first (see the module
/// docs for the rule).
pub fn candidates(
    regions: &Regions,
    origin: &str,
    vehicle: &Vehicle,
    model: &CostParams,
    local_best_total_s: Option<f64>,
    now_ms: u64,
) -> Result<Vec<Candidate>, NoCandidate> {
    let (mut fresh, mut stale, mut in_range, mut unsaturated) = (0, 0, 0, 0);
    let mut out = Vec::new();
    for (id, state) in regions.iter() {
        if id == origin {
            continue;
        }
        if regions.is_stale(state, now_ms) {
            stale += 1;
            continue;
        }
        fresh += 1;
        let best = state
            .aggregate
            .best
            .iter()
            .filter_map(|s| cost_model::estimate(vehicle, s.into(), model).map(|e| (s, e)))
            .min_by(|a, b| a.1.total_s.total_cmp(&b.1.total_s));
        let Some((station, estimate)) = best else {
            continue;
        };
        in_range += 1;
        if regions.is_saturated(&state.aggregate) {
            continue;
        }
        unsaturated += 1;
        if local_best_total_s.is_some_and(|local| estimate.total_s >= local) {
            continue;
        }
        out.push(Candidate {
            region: id.to_owned(),
            station_id: station.station_id.clone(),
            estimate,
        });
    }
    if out.is_empty() {
        return Err(if fresh == 0 {
            NoCandidate::NoFreshRegion { stale }
        } else if in_range == 0 {
            NoCandidate::NoneInRange { fresh }
        } else if unsaturated == 0 {
            NoCandidate::AllSaturated { in_range }
        } else {
            NoCandidate::NoneBetter {
                in_range,
                local_best_s: local_best_total_s.unwrap_or_default(),
            }
        });
    }
    out.sort_by(|a, b| {
        a.estimate
            .total_s
            .total_cmp(&b.estimate.total_s)
            .then_with(|| a.region.cmp(&b.region))
    });
    Ok(out)
}

/// How long a "no region within" hint holds for the origin fog (real time).
pub const HINT_HOLD: Duration = Duration::from_secs(2);

/// The great-circle distance from `vehicle` to the nearest listed station of any other
/// region that can take vehicles now (fresh, not saturated), km;
/// [`protocol::fog::EVERYWHERE_KM`] when there is none.
pub fn open_station_distance_km(
    regions: &Regions,
    origin: &str,
    vehicle: &Vehicle,
    now_ms: u64,
) -> f64 {
    regions
        .iter()
        .filter(|(id, s)| *id != origin && regions.is_open(s, now_ms))
        .flat_map(|(_, s)| s.aggregate.best.iter())
        .map(|st| protocol::geo::haversine_km(vehicle.lat, vehicle.lon, st.lat, st.lon))
        .fold(protocol::fog::EVERYWHERE_KM, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::fog::{Aggregate, AggregateStation};

    const KM: f64 = 1.0 / 111.195;

    fn aggregate(region: &str, stations: &[(&str, f64, u32)]) -> Aggregate {
        Aggregate {
            v: 1,
            region: region.into(),
            seq: 1,
            ts_ms: 1,
            stations: stations.len() as u32,
            stations_in_service: stations.len() as u32,
            chargers: 2,
            chargers_free: 1,
            queued: 0,
            reservations: 0,
            min_wait_s: stations.iter().map(|s| s.2).min(),
            max_wait_s: None,
            outline: vec![],
            best: stations
                .iter()
                .map(|(id, km_north, wait)| AggregateStation {
                    station_id: (*id).into(),
                    lat: km_north * KM,
                    lon: 0.0,
                    chargers: 2,
                    power_kw: 50.0,
                    occupied: 0,
                    queue: 0,
                    reservations: 0,
                    predicted_wait_s: *wait,
                })
                .collect(),
            saturated_requests: 0,
            requests_total: 0,
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

    fn regions(list: Vec<Aggregate>) -> (Regions, u64) {
        let mut r = Regions::new(Duration::from_secs(6), 1800, 1.0);
        let now = 1_000_000;
        for a in list {
            r.ingest(a, now);
        }
        (r, now)
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.region.as_str()).collect()
    }

    #[test]
    fn ranks_by_the_best_reachable_station_and_skips_the_origin() {
        let (r, now) = regions(vec![
            aggregate("origin", &[("o", 0.1, 0)]),
            aggregate("slow", &[("s", 2.0, 1200)]),
            aggregate("fast", &[("f1", 5.0, 0), ("f-far", 500.0, 0)]),
            aggregate("far", &[("x", 500.0, 0)]),
        ]);
        let c = candidates(&r, "origin", &CAR, &CostParams::default(), None, now).unwrap();
        assert_eq!(names(&c), ["fast", "slow"]);
        assert_eq!(c[0].station_id, "f1");
    }

    #[test]
    fn only_regions_beating_the_local_best_qualify() {
        let (r, now) = regions(vec![
            aggregate("a", &[("a1", 2.0, 0)]),
            aggregate("b", &[("b1", 2.0, 1200)]),
        ]);
        let m = CostParams::default();
        let all = candidates(&r, "o", &CAR, &m, None, now).unwrap();
        let local = all[0].estimate.total_s + 10.0;
        let c = candidates(&r, "o", &CAR, &m, Some(local), now).unwrap();
        assert_eq!(names(&c), ["a"]);
        let err = candidates(&r, "o", &CAR, &m, Some(100.0), now).unwrap_err();
        assert!(matches!(err, NoCandidate::NoneBetter { in_range: 2, .. }));
        assert!(err.to_string().starts_with("no region in range beats"));
    }

    #[test]
    fn stale_saturated_and_unreachable_regions_are_not_asked() {
        let m = CostParams::default();
        let (r, now) = regions(vec![aggregate("far", &[("x", 500.0, 0)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::NoneInRange { fresh: 1 });
        assert!(err.to_string().starts_with("no region in range"));

        let (r, now) = regions(vec![aggregate("busy", &[("b", 1.0, 4000)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::AllSaturated { in_range: 1 });

        let (r, now) = regions(vec![aggregate("a", &[("a", 1.0, 0)])]);
        let later = now + 7_000;
        let err = candidates(&r, "o", &CAR, &m, None, later).unwrap_err();
        assert_eq!(err, NoCandidate::NoFreshRegion { stale: 1 });

        let (r, now) = regions(vec![aggregate("o", &[("a", 1.0, 0)])]);
        let err = candidates(&r, "o", &CAR, &m, None, now).unwrap_err();
        assert_eq!(err, NoCandidate::NoFreshRegion { stale: 0 });
    }
}
