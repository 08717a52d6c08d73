//! The planner's model, without a broker: reachability, cost, spreading, reservations.

use fog_server::planner::{NoChoice, Planner, PlannerParams, ReservationError};
use protocol::{ChargeRequest, StationState, StationStatus};
use testkit::messages::{request, station};

const NOW: u64 = 1_700_000_000_000;
/// Kilometres per degree of latitude (and of longitude at the equator).
const KM_PER_DEG: f64 = 111.19;

fn status(id: &str, lat: f64, lon: f64, chargers: u32, occupied: u32, queue: u32) -> StationStatus {
    StationStatus {
        occupied,
        queue,
        ..station(id, lat, lon, chargers, 50.0)
    }
}

fn planner(stations: &[StationStatus]) -> Planner {
    let mut p = Planner::new(PlannerParams::default());
    for s in stations {
        p.stations.apply(s, NOW);
    }
    p
}

fn chosen(p: &Planner, req: &ChargeRequest) -> String {
    let choice = p.choose(req, NOW).expect("a station");
    p.stations.get(choice.slot).unwrap().station_id.clone()
}

#[test]
fn stations_beyond_safe_range_are_not_candidates() {
    // soc 0.03 of 60 kWh at 0.18 kWh/km = 10 km; 90 % of it usable = 9 km road,
    // i.e. 9 / 1.3 = 6.9 km great-circle.
    let near = status("near", 6.0 / KM_PER_DEG, 0.0, 2, 0, 0);
    let far = status("far", 7.5 / KM_PER_DEG, 0.0, 8, 0, 0);
    let p = planner(std::slice::from_ref(&far));
    let req = request("r1", 0.0, 0.0, 0.03);
    match p.choose(&req, NOW) {
        Err(NoChoice::NothingReachable { range_km }) => assert!((range_km - 9.0).abs() < 1e-9),
        other => panic!("expected nothing reachable, got {other:?}"),
    }
    let p = planner(&[far, near]);
    assert_eq!(chosen(&p, &req), "near");
    // With more charge both are reachable; the near one still wins on drive time.
    assert_eq!(chosen(&p, &request("r2", 0.0, 0.0, 0.5)), "near");
}

#[test]
fn a_farther_free_station_beats_a_nearer_busy_one() {
    let busy = status("busy", 0.5 / KM_PER_DEG, 0.0, 2, 2, 4);
    let free = status("free", 5.0 / KM_PER_DEG, 0.0, 2, 0, 0);
    let p = planner(&[busy, free]);
    let req = request("r1", 0.0, 0.0, 0.3);
    let choice = p.choose(&req, NOW).unwrap();
    assert_eq!(p.stations.get(choice.slot).unwrap().station_id, "free");
    assert_eq!(choice.wait_s, 0.0);
    // The busy station's predicted wait is far longer than the extra drive.
    let (slot, busy_station, _) = p.stations.nearest(0.0, 0.0).next().unwrap();
    let busy_wait = p.expected_wait_s(slot, busy_station, NOW, 60.0);
    assert!(busy_wait > 3_000.0, "busy wait {busy_wait}");
    // When the busy station frees up, the nearer one wins again.
    let mut p = p;
    p.stations
        .apply(&status("busy", 0.5 / KM_PER_DEG, 0.0, 2, 0, 0), NOW);
    assert_eq!(chosen(&p, &req), "busy");
}

#[test]
fn faulted_and_offline_stations_are_never_chosen() {
    let mut faulted = status("faulted", 0.0, 0.0, 8, 0, 0);
    faulted.state = StationState::Faulted;
    let mut offline = status("offline", 0.1 / KM_PER_DEG, 0.0, 8, 0, 0);
    offline.state = StationState::Offline;
    let ok = status("ok", 3.0 / KM_PER_DEG, 0.0, 1, 0, 0);
    let p = planner(&[faulted, offline, ok]);
    assert_eq!(chosen(&p, &request("r", 0.0, 0.0, 0.5)), "ok");
}

/// 20 vehicles ask at once right next to a 2-charger station; other stations lie
/// 2-6 km away. Reservations must spread them instead of herding onto the nearest.
#[test]
fn a_burst_next_to_one_station_is_spread() {
    let mut stations = vec![status("hub", 0.0, 0.0005, 2, 0, 0)];
    let others = [(2.0, 0.0), (0.0, 3.0), (-4.0, 0.0), (0.0, -5.0), (4.0, 4.0)];
    for (i, (dlat, dlon)) in others.into_iter().enumerate() {
        stations.push(status(
            &format!("s{i}"),
            dlat / KM_PER_DEG,
            dlon / KM_PER_DEG,
            4,
            0,
            0,
        ));
    }
    let mut p = planner(&stations);
    let herd_charge_s = p
        .choose(&request("probe", 0.0, 0.0, 0.25), NOW)
        .unwrap()
        .charge_s;
    let mut waits = Vec::new();
    let mut per_station = std::collections::HashMap::<String, usize>::new();
    for v in 0..20 {
        let req = request(&format!("r{v}"), 0.0, 0.0, 0.25);
        let choice = p.choose(&req, NOW).expect("every vehicle gets a station");
        let id = p.stations.get(choice.slot).unwrap().station_id.clone();
        waits.push(choice.wait_s);
        *per_station.entry(id).or_default() += 1;
        p.reserve(format!("res-{v}"), &format!("car-{v}"), &choice, NOW, None)
            .unwrap();
    }
    assert_eq!(p.active_reservations(), 20);
    // Everyone's predicted wait respects the limit the model allows.
    let limit = f64::from(p.params.cost.max_wait_s);
    let worst = waits.iter().copied().fold(0.0, f64::max);
    assert!(
        worst <= limit,
        "worst wait {worst} s over the limit {limit} s"
    );
    // The herd: all 20 at the hub's 2 chargers, so the last waits 9 whole sessions.
    let herd_worst = 9.0 * herd_charge_s;
    assert!(
        worst < herd_worst / 4.0,
        "worst {worst} s vs herd {herd_worst} s"
    );
    // Demand spread over all six stations, none promised more than its chargers
    // can take without a wait over the limit (2 at the hub, 4 elsewhere, plus the
    // few that are worth a short wait).
    assert_eq!(per_station.len(), 6, "{per_station:?}");
    assert!(per_station["hub"] <= 3, "{per_station:?}");
    assert!(per_station.values().all(|&n| n <= 5), "{per_station:?}");
    // The first two vehicles take the hub's free chargers without waiting.
    assert_eq!((waits[0], waits[1]), (0.0, 0.0));
}

#[test]
fn reservations_expire_and_end_on_arrival_or_cancel() {
    let mut p = planner(&[
        status("a", 0.0, 0.0, 1, 0, 0),
        status("b", 0.02, 0.0, 1, 0, 0),
    ]);
    let req = request("r", 0.0, 0.0, 0.5);
    let reserve = |p: &mut Planner, id: &str, vehicle: &str| {
        let choice = p.choose(&req, NOW).unwrap();
        p.reserve(id.into(), vehicle, &choice, NOW, None)
            .unwrap()
            .clone()
    };
    let r1 = reserve(&mut p, "res-1", "car-1");
    assert_eq!(r1.station_id, "a");
    // The next vehicle sees a's only charger promised and goes to b.
    let r2 = reserve(&mut p, "res-2", "car-2");
    assert_eq!(r2.station_id, "b");
    assert_eq!(r1.expires_ms, r1.arrival_ms + 600_000);

    // Only the holder can end it.
    assert_eq!(
        p.end("res-1", "car-2").unwrap_err(),
        ReservationError::NotYours
    );
    assert_eq!(p.end("res-1", "car-1").unwrap().reservation_id, "res-1");
    assert_eq!(
        p.end("res-1", "car-1").unwrap_err(),
        ReservationError::Unknown
    );
    // a is free again.
    let r3 = reserve(&mut p, "res-3", "car-3");
    assert_eq!(r3.station_id, "a");

    // Nothing expires before its time; everything after.
    assert!(p.expire(r3.expires_ms.min(r2.expires_ms) - 1).is_empty());
    let expired = p.expire(r2.expires_ms + 1);
    assert_eq!(expired.len(), 2, "{expired:?}");
    assert_eq!(p.active_reservations(), 0);
}

#[test]
fn a_new_reservation_replaces_the_vehicles_previous_one() {
    let mut p = planner(&[status("a", 0.0, 0.0, 1, 0, 0)]);
    let req = request("r", 0.0, 0.0, 0.5);
    let c = p.choose(&req, NOW).unwrap();
    p.reserve("res-1".into(), "car-1", &c, NOW, None).unwrap();
    let c = p.choose(&req, NOW).unwrap();
    assert!(c.wait_s > 0.0, "the first reservation counts");
    p.reserve("res-2".into(), "car-1", &c, NOW, None).unwrap();
    assert_eq!(p.active_reservations(), 1);
    assert!(p.reservation("res-1").is_none());
    assert_eq!(p.reservation_of("car-1").unwrap().reservation_id, "res-2");
}

#[test]
fn saturated_region_reports_too_slow() {
    let p = planner(&[status("a", 0.0, 0.0, 1, 1, 10)]);
    match p.choose(&request("r", 0.0, 0.0, 0.5), NOW) {
        Err(NoChoice::TooSlow { best }) => assert!(best.wait_s > 1800.0),
        other => panic!("expected too slow, got {other:?}"),
    }
}

#[test]
fn charge_time_follows_energy_and_power() {
    let p = planner(&[status("a", 0.0, 0.0, 1, 0, 0)]);
    // At the station: (0.8 - 0.2) * 60 kWh = 36 kWh at 50 kW = 2592 s.
    let c = p.choose(&request("r", 0.0, 0.0, 0.2), NOW).unwrap();
    assert!((c.charge_s - 2592.0).abs() < 1.0, "{}", c.charge_s);
    assert!(c.eta_s < 1.0);
    // Already above the target: nothing to charge.
    let mut full = request("r", 0.0, 0.0, 0.9);
    full.target_soc = 0.8;
    assert_eq!(p.choose(&full, NOW).unwrap().charge_s, 0.0);
}
