//! The fog's planner and the estimate central (and the fog's border check) make from a
//! listed station are one cost model: for a station with no queue, no reservations and
//! a free charger, the total the fog computes for a vehicle equals
//! [`cost_model::estimate`] from the fog's own aggregate, and both agree on whether the
//! vehicle can reach it.
//!
//! The two sides measure the great-circle distance in two ways (the fog from its
//! R-tree's chord, central by haversine), so totals are compared to 1e-9 relative and
//! reachability away from the exact edge of the range.

use cost_model::{Vehicle, estimate};
use fog_server::index::{Station, StationIndex};
use fog_server::planner::{CostParams, NoChoice, PlannerParams};
use fog_server::region::Region;
use proptest::prelude::*;
use protocol::geo::{haversine_km, unit_vector};
use protocol::{ChargeRequest, StationState};

const NOW: u64 = 1_750_000_000_000;

prop_compose! {
    fn params()(
        road_factor in 1.0..2.5f64,
        avg_speed_kmh in 5.0..130.0f64,
        safety_margin in 0.0..0.6f64,
        max_wait_s in 0u32..7200,
    ) -> PlannerParams {
        PlannerParams {
            cost: CostParams { road_factor, avg_speed_kmh, safety_margin, max_wait_s },
            ..PlannerParams::default()
        }
    }
}

prop_compose! {
    /// An idle station: no queue, at least one charger free.
    fn idle_station()(
        lat in -0.6..0.6f64,
        lon in -0.6..0.6f64,
        chargers in 1u32..=12,
        power_kw in 3.0..350.0f64,
    )(
        lat in Just(lat),
        lon in Just(lon),
        chargers in Just(chargers),
        occupied in 0..chargers,
        power_kw in Just(power_kw),
    ) -> Station {
        Station {
            station_id: "s1".into(),
            lat,
            lon,
            unit: unit_vector(lat, lon),
            chargers,
            power_kw,
            occupied,
            queue: 0,
            state: StationState::Available,
            updated_ms: NOW,
            holds: false,
        }
    }
}

prop_compose! {
    fn request()(
        soc in 0.01..1.0f64,
        battery_kwh in 15.0..150.0f64,
        kwh_per_km in 0.08..0.4f64,
        target_soc in 0.0..=1.0f64,
    ) -> ChargeRequest {
        ChargeRequest {
            v: 1,
            request_id: "r1".into(),
            lat: 0.0,
            lon: 0.0,
            soc,
            battery_kwh,
            kwh_per_km,
            target_soc,
            ts_ms: None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_fogs_total_is_centrals_estimate(
        params in params(),
        station in idle_station(),
        req in request(),
    ) {
        let cost = params.cost;
        let (lat, lon) = (station.lat, station.lon);
        let mut region = Region::new("north", params);
        region.planner.stations = StationIndex::bulk_load([station]);
        let fog = region.planner.choose(&req, NOW);
        let aggregate = region.aggregate(NOW);
        prop_assert_eq!(aggregate.max_wait_s, Some(cost.max_wait_s));
        prop_assert_eq!(aggregate.best.len(), 1);
        let central = estimate(&Vehicle::from(&req), (&aggregate.best[0]).into(), &cost);

        let vehicle = Vehicle::from(&req);
        let road_km = cost.road_km(haversine_km(req.lat, req.lon, lat, lon));
        let usable = cost.usable_range_km(&vehicle);
        let on_the_edge = (road_km - usable).abs() <= 1e-9 * usable.max(1.0);
        match (fog, central) {
            (Ok(choice), Some(e)) => {
                prop_assert_eq!(choice.wait_s, 0.0);
                prop_assert_eq!(e.wait_s, 0.0);
                let tolerance = 1e-9 * e.total_s.max(1.0);
                prop_assert!(
                    (choice.total_s() - e.total_s).abs() <= tolerance,
                    "fog {:?} vs central {:?}", choice, e
                );
                prop_assert!((choice.road_km - e.road_km).abs() <= 1e-9 * e.road_km.max(1.0));
                prop_assert!((choice.eta_s - e.drive_s).abs() <= tolerance);
                prop_assert!((choice.charge_s - e.charge_s).abs() <= tolerance);
            }
            (Err(NoChoice::NothingReachable { .. }), None) => {}
            (fog, central) => prop_assert!(
                on_the_edge,
                "fog {:?} vs central {:?} at {} road km of {} usable", fog, central, road_km, usable
            ),
        }
    }
}
