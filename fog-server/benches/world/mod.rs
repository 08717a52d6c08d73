//! The world the fog server's benchmarks plan in, mirroring device-sim's: stations
//! uniform over a ~40 × 44 km region with 1-8 chargers of 22-150 kW, partly occupied;
//! vehicles at 25% charge asking from the middle of the region.

#![allow(dead_code)] // each benchmark uses its part

use fog_server::index::{Station, StationIndex};
use fog_server::planner::{Planner, PlannerParams};
use fog_server::region::Region;
use protocol::geo::unit_vector;
use protocol::{ChargeRequest, StationState, StationStatus, topics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const POWERS_KW: [f64; 5] = [22.0, 50.0, 75.0, 100.0, 150.0];
/// The region: ~40 × 44 km.
pub const LAT: (f64, f64) = (-13.15, -12.79);
pub const LON: (f64, f64) = (-38.7, -38.3);
/// Request points: the middle quarter of the region (where reservations pile up).
pub const QUERY_LAT: (f64, f64) = (-13.06, -12.88);
pub const QUERY_LON: (f64, f64) = (-38.6, -38.4);
pub const NOW_MS: u64 = 1_750_000_000_000;
/// Distinct request points cycled through.
pub const QUERIES: usize = 256;
/// Vehicles asking through the region in the request benchmarks.
pub const VEHICLES: usize = 1_000;

pub fn stations(n: usize) -> Vec<Station> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let lat = rng.random_range(LAT.0..LAT.1);
            let lon = rng.random_range(LON.0..LON.1);
            let chargers = rng.random_range(1..=8);
            Station {
                station_id: format!("st-{i:06}"),
                lat,
                lon,
                unit: unit_vector(lat, lon),
                chargers,
                power_kw: POWERS_KW[rng.random_range(0..POWERS_KW.len())],
                occupied: rng.random_range(0..=chargers),
                queue: if rng.random_bool(0.1) { 1 } else { 0 },
                state: StationState::Available,
                updated_ms: NOW_MS,
                holds: false,
            }
        })
        .collect()
}

pub fn requests(seed: u64) -> Vec<ChargeRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..QUERIES)
        .map(|i| ChargeRequest {
            v: 1,
            request_id: format!("r-{i}"),
            lat: rng.random_range(QUERY_LAT.0..QUERY_LAT.1),
            lon: rng.random_range(QUERY_LON.0..QUERY_LON.1),
            soc: 0.25,
            battery_kwh: rng.random_range(40.0..=100.0),
            kwh_per_km: rng.random_range(0.14..=0.22),
            target_soc: 0.8,
            ts_ms: None,
        })
        .collect()
}

/// A planner over `n` stations with `reservations` promises made by as many vehicles
/// planning from the request area.
pub fn planner(n: usize, reservations: usize) -> Planner {
    let mut planner = Planner::new(PlannerParams::default());
    planner.stations = StationIndex::bulk_load(stations(n));
    let mut made = 0;
    for (i, req) in requests(11).iter().cycle().take(reservations).enumerate() {
        if let Ok(choice) = planner.choose(req, NOW_MS) {
            let id = format!("pre-{i}");
            planner.reserve(id, &format!("pre-car-{i}"), &choice, NOW_MS, None);
            made += 1;
        }
    }
    assert_eq!(made, reservations, "every promise found a station");
    planner.take_changes();
    planner
}

/// Plans request `i` (of a fixed set) for the benchmark's own vehicle and reserves the
/// best station: its new reservation replaces its previous one, so the number of
/// promises stays where [`planner`] set it.
pub fn plan_one(planner: &mut Planner, reqs: &[ChargeRequest], i: usize) -> Option<u64> {
    let req = &reqs[i % reqs.len()];
    let choice = planner.choose(req, NOW_MS).expect("a station");
    let id = format!("bench-{i:x}");
    planner
        .reserve(id, "bench-car", &choice, NOW_MS, None)
        .map(|r| r.expires_ms)
}

/// A region knowing `n` stations (from their status messages), with [`VEHICLES`]
/// vehicles each holding the reservation of its last request.
pub fn region(n: usize) -> Region {
    let mut region = Region::new("north", PlannerParams::default());
    for s in stations(n) {
        let status = StationStatus {
            v: 1,
            station_id: s.station_id,
            lat: Some(s.lat),
            lon: Some(s.lon),
            chargers: Some(s.chargers),
            power_kw: Some(s.power_kw),
            occupied: s.occupied,
            queue: s.queue,
            state: s.state,
            ts_ms: None,
            takes_reservations: false,
            gateway: None,
        };
        let topic = topics::station_status("north", &status.station_id);
        region.receive(&topic, &protocol::encode(&status), NOW_MS);
    }
    let reqs = requests(5);
    for v in 0..VEHICLES {
        let fx = region.receive(&request_topic(v), &request_payload(&reqs, v), NOW_MS);
        assert!(!fx.publish.is_empty(), "answered");
    }
    region
}

/// The request topic of vehicle `v`.
pub fn request_topic(v: usize) -> String {
    topics::request("north", &format!("car-{:04}", v % VEHICLES))
}

/// Request number `k` as its JSON payload (request ids are new every time).
pub fn request_payload(reqs: &[ChargeRequest], k: usize) -> Vec<u8> {
    let mut req = reqs[k % reqs.len()].clone();
    req.request_id = format!("r-{k}");
    protocol::encode(&req)
}
