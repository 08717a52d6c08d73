//! The simulated city in fixed time steps, with no I/O: vehicles drive, drain, ask for a
//! station, drive there, queue, charge and drive on; stations serve their queue first
//! come, first served with their chargers. What devices would send is left in an outbox
//! for the runner to publish; decisions come back through [`Sim::send_to`].
//!
//! Vehicles move in a straight line at `speed / road_factor` (so that they cover road
//! distance at their road speed) and use `kwh_per_km` per *road* km — the model the fog
//! servers plan with. A vehicle whose battery empties away from a station is stranded
//! and stays where it is.
//!
//! Vehicles move on a local plane around the city's centre ([`Plane`]): the world
//! steps 10,000 vehicles every simulated second, and a great-circle distance per
//! vehicle and step (three trigonometric calls) was a tenth of the simulation's CPU.
//! At city scale the plane is within 0.01% of the great circle (a test checks it);
//! distances to stations for decisions (range, nearest) stay great-circle.

use std::collections::VecDeque;

use protocol::geo::{EARTH_RADIUS_KM, haversine_km};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::world::World;

/// Where a vehicle is in its day.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// On a trip; may be waiting for an answer to a station request meanwhile.
    Driving { asked: bool },
    /// Driving to a station (with the fog's reservation, if any).
    ToStation {
        station: usize,
        reservation: Option<Reservation>,
    },
    /// Queued or charging at a station.
    AtStation { station: usize },
    /// Ran out of charge on the road.
    Stranded,
}

/// A reservation held for a vehicle, as the fog's answer gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The region whose fog server holds it (where `arrived` goes).
    pub region: String,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Vehicle {
    pub lat: f64,
    pub lon: f64,
    pub soc: f64,
    pub dest: (f64, f64),
    pub phase: Phase,
    next_telemetry_ms: f64,
    trips: ChaCha8Rng,
}

#[derive(Debug, Clone, Default)]
pub struct Station {
    /// (vehicle, charging ends at ms)
    pub charging: Vec<(usize, f64)>,
    /// (vehicle, arrived at ms)
    pub queue: VecDeque<(usize, f64)>,
    /// Charger-milliseconds spent charging.
    pub busy_ms: f64,
    pub sessions: u32,
}

/// Something a device does that the outside world hears about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A station's occupancy changed: publish its status.
    StationChanged(usize),
    /// A vehicle fell below the threshold and needs a station.
    NeedStation(usize),
    /// A vehicle reached the station it reserved.
    Arrived {
        vehicle: usize,
        reservation: Reservation,
    },
    /// A vehicle's periodic telemetry.
    Telemetry(usize),
    /// A vehicle ran out of charge.
    Stranded(usize),
}

/// Counters of what happened, all in simulated terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Waits at stations of vehicles that started charging, ms.
    pub waits_ms: Vec<f64>,
    pub stranded: u32,
    pub arrivals: u32,
    pub sessions_done: u32,
    /// Times a station had more vehicles charging than chargers (must stay 0).
    pub overbooked: u32,
    /// Vehicles sent to a station they could not reach with their charge at the time.
    pub sent_out_of_range: u32,
}

/// Distances on a local plane around a reference latitude (equirectangular, with the
/// east-west scale taken at the two points' mean latitude by a first-order expansion of
/// its cosine around the reference): a few multiply-adds and a square root instead of
/// the haversine's trigonometry. Meant for a city: the error grows with the square of
/// the distance from the reference latitude and of the distance itself (within 0.01%
/// for 40 km at 60°, see the tests); no wrap at the antimeridian.
#[derive(Debug, Clone, Copy)]
pub struct Plane {
    lat0: f64,
    /// km per degree of latitude.
    km_per_deg: f64,
    /// cos and sin of the reference latitude.
    cos0: f64,
    sin0: f64,
}

impl Plane {
    /// The plane around latitude `lat0` (degrees).
    pub fn around(lat0: f64) -> Self {
        let (sin0, cos0) = lat0.to_radians().sin_cos();
        Self {
            lat0,
            km_per_deg: EARTH_RADIUS_KM * std::f64::consts::PI / 180.0,
            cos0,
            sin0,
        }
    }

    /// km between two positions (degrees).
    #[inline]
    pub fn km(&self, lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
        let mid = ((lat1 + lat2) * 0.5 - self.lat0).to_radians();
        // cos(lat0 + d) ≈ cos(lat0) − sin(lat0)·d − cos(lat0)·d²/2
        let cos_mid = self.cos0 * (1.0 - 0.5 * mid * mid) - self.sin0 * mid;
        let dy = lat2 - lat1;
        let dx = (lon2 - lon1) * cos_mid;
        self.km_per_deg * (dx * dx + dy * dy).sqrt()
    }
}

pub struct Sim<'w> {
    pub world: &'w World,
    /// The plane vehicles move on.
    pub plane: Plane,
    pub now_ms: f64,
    pub start_ms: f64,
    pub vehicles: Vec<Vehicle>,
    pub stations: Vec<Station>,
    pub tally: Tally,
    pub outbox: Vec<Event>,
    changed: Vec<bool>,
}

impl<'w> Sim<'w> {
    /// The world at simulated time `start_ms`.
    pub fn new(world: &'w World, start_ms: f64) -> Self {
        let telemetry_ms = world.scenario.telemetry_s * 1000.0;
        let n = world.vehicles.len().max(1) as f64;
        let vehicles = world
            .vehicles
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut trips = ChaCha8Rng::seed_from_u64(v.trip_seed);
                let dest = world.destination(&mut trips);
                Vehicle {
                    lat: v.lat,
                    lon: v.lon,
                    soc: v.soc,
                    dest,
                    phase: Phase::Driving { asked: false },
                    // Spread telemetry over the period.
                    next_telemetry_ms: start_ms + telemetry_ms * (i as f64 / n),
                    trips,
                }
            })
            .collect();
        let stations = vec![Station::default(); world.stations.len()];
        let [min_lat, _, max_lat, _] = world.regions.bbox;
        let lat0 = if min_lat <= max_lat {
            (min_lat + max_lat) / 2.0
        } else {
            0.0
        };
        Self {
            world,
            plane: Plane::around(lat0),
            now_ms: start_ms,
            start_ms,
            vehicles,
            changed: vec![true; stations.len()],
            stations,
            tally: Tally::default(),
            outbox: Vec::new(),
        }
    }

    /// Publishes every station's status once (at start).
    pub fn announce_stations(&mut self) {
        for i in 0..self.stations.len() {
            self.outbox.push(Event::StationChanged(i));
        }
        self.changed.fill(false);
    }

    /// How far the vehicle can drive on the road, km, keeping `safety_margin` in reserve.
    pub fn range_km(&self, v: usize) -> f64 {
        let spec = &self.world.vehicles[v];
        self.vehicles[v].soc * spec.battery_kwh / spec.kwh_per_km
            * (1.0 - self.world.scenario.safety_margin)
    }

    /// Road distance from vehicle to station, km.
    pub fn road_km(&self, v: usize, s: usize) -> f64 {
        let (veh, st) = (&self.vehicles[v], &self.world.stations[s]);
        haversine_km(veh.lat, veh.lon, st.lat, st.lon) * self.world.scenario.road_factor
    }

    /// Advances the world by `dt_ms`.
    pub fn step(&mut self, dt_ms: f64) {
        let t0 = self.now_ms;
        self.now_ms += dt_ms;
        let now = self.now_ms;
        for s in 0..self.stations.len() {
            self.serve(s, t0, now);
        }
        let world: &'w World = self.world;
        let scenario = &world.scenario;
        let telemetry_ms = scenario.telemetry_s * 1000.0;
        let plane = self.plane;
        for i in 0..self.vehicles.len() {
            let spec = &world.vehicles[i];
            let v = &mut self.vehicles[i];
            let target = match &v.phase {
                Phase::Driving { .. } => v.dest,
                Phase::ToStation { station, .. } => {
                    let st = &world.stations[*station];
                    (st.lat, st.lon)
                }
                Phase::AtStation { .. } | Phase::Stranded => continue,
            };
            // Move toward the target at road speed along the road (detour included).
            let line_km = plane.km(v.lat, v.lon, target.0, target.1);
            let step_line_km = spec.speed_kmh / scenario.road_factor * dt_ms / 3_600_000.0;
            let moved_km = step_line_km.min(line_km);
            let used = moved_km * scenario.road_factor * spec.kwh_per_km / spec.battery_kwh;
            if used >= v.soc {
                // Runs dry part of the way.
                let f = if line_km > 0.0 {
                    v.soc / used * moved_km / line_km
                } else {
                    0.0
                };
                v.lat += (target.0 - v.lat) * f;
                v.lon += (target.1 - v.lon) * f;
                v.soc = 0.0;
                v.phase = Phase::Stranded;
                self.tally.stranded += 1;
                self.outbox.push(Event::Stranded(i));
                continue;
            }
            v.soc -= used;
            if moved_km >= line_km {
                v.lat = target.0;
                v.lon = target.1;
            } else {
                let f = moved_km / line_km;
                v.lat += (target.0 - v.lat) * f;
                v.lon += (target.1 - v.lon) * f;
            }
            let arrived = moved_km >= line_km;
            match v.phase {
                Phase::Driving { asked } => {
                    if arrived {
                        v.dest = world.destination(&mut v.trips);
                    }
                    if !asked && v.soc < scenario.soc_threshold {
                        v.phase = Phase::Driving { asked: true };
                        self.outbox.push(Event::NeedStation(i));
                    }
                }
                Phase::ToStation { station, .. } if arrived => {
                    let Phase::ToStation { reservation, .. } =
                        std::mem::replace(&mut v.phase, Phase::AtStation { station })
                    else {
                        unreachable!("matched above")
                    };
                    self.tally.arrivals += 1;
                    self.stations[station].queue.push_back((i, now));
                    self.changed[station] = true;
                    if let Some(reservation) = reservation {
                        self.outbox.push(Event::Arrived {
                            vehicle: i,
                            reservation,
                        });
                    }
                    // Start charging at once if a charger is free.
                    self.serve(station, now, now);
                }
                _ => {}
            }
            let v = &mut self.vehicles[i];
            if telemetry_ms > 0.0
                && now >= v.next_telemetry_ms
                && !matches!(v.phase, Phase::Stranded)
            {
                v.next_telemetry_ms += telemetry_ms;
                self.outbox.push(Event::Telemetry(i));
            }
        }
        for (s, changed) in self.changed.iter_mut().enumerate() {
            if std::mem::take(changed) {
                self.outbox.push(Event::StationChanged(s));
            }
        }
    }

    /// Finishes charging sessions due by `now`, then fills free chargers from the queue.
    /// Counts charger time over `[t0, now]`.
    fn serve(&mut self, s: usize, t0: f64, now: f64) {
        let world: &'w World = self.world;
        let spec = &world.stations[s];
        let target = world.scenario.target_soc;
        let station = &mut self.stations[s];
        for &(_, end) in &station.charging {
            station.busy_ms += (end.min(now) - t0).max(0.0);
        }
        let mut i = 0;
        while i < station.charging.len() {
            let (v, end) = station.charging[i];
            if end <= now {
                station.charging.swap_remove(i);
                station.sessions += 1;
                self.tally.sessions_done += 1;
                self.changed[s] = true;
                let veh = &mut self.vehicles[v];
                veh.soc = veh.soc.max(target);
                veh.dest = world.destination(&mut veh.trips);
                veh.phase = Phase::Driving { asked: false };
                // A freed charger is taken at once, from the moment it was freed.
                if let Some((next, arrived)) = station.queue.pop_front() {
                    let start = end.max(arrived);
                    self.tally.waits_ms.push(start - arrived);
                    let charge_ms = charge_ms(world, next, self.vehicles[next].soc, spec.power_kw);
                    station.charging.push((next, start + charge_ms));
                    station.busy_ms += (now - start).max(0.0).min(charge_ms);
                }
                continue;
            }
            i += 1;
        }
        while station.charging.len() < spec.chargers as usize {
            let Some((v, arrived)) = station.queue.pop_front() else {
                break;
            };
            let start = now.max(arrived);
            self.tally.waits_ms.push(start - arrived);
            let charge_ms = charge_ms(world, v, self.vehicles[v].soc, spec.power_kw);
            station.charging.push((v, start + charge_ms));
            self.changed[s] = true;
        }
        if station.charging.len() > spec.chargers as usize {
            self.tally.overbooked += 1;
        }
    }

    /// Sends vehicle `v` to station `s` (with a reservation, if the fog made one).
    pub fn send_to(&mut self, v: usize, s: usize, reservation: Option<Reservation>) {
        if matches!(
            self.vehicles[v].phase,
            Phase::Stranded | Phase::AtStation { .. }
        ) {
            return;
        }
        if self.road_km(v, s) > self.range_km(v) / (1.0 - self.world.scenario.safety_margin) {
            self.tally.sent_out_of_range += 1;
        }
        self.vehicles[v].phase = Phase::ToStation {
            station: s,
            reservation,
        };
    }

    /// Lets a vehicle that got no station ask again at its next step.
    pub fn ask_again(&mut self, v: usize) {
        if let Phase::Driving { asked } = &mut self.vehicles[v].phase {
            *asked = false;
        }
    }

    /// A vehicle on its way to a station that refused its reservation: it is back on
    /// its trip and asks again at its next step.
    pub fn reservation_refused(&mut self, v: usize) {
        if matches!(self.vehicles[v].phase, Phase::ToStation { .. }) {
            self.vehicles[v].phase = Phase::Driving { asked: false };
        }
    }

    /// Stations a vehicle can reach with its charge (keeping the safety margin).
    pub fn reachable(&self, v: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let range = self.range_km(v);
        (0..self.stations.len())
            .map(move |s| (s, self.road_km(v, s)))
            .filter(move |(_, d)| *d <= range)
    }

    /// The nearest station it can reach; else the nearest of all (it may not make it).
    pub fn nearest(&self, v: usize) -> usize {
        let mut best = (f64::MAX, 0);
        for s in 0..self.stations.len() {
            let d = self.road_km(v, s);
            if d < best.0 {
                best = (d, s);
            }
        }
        best.1
    }

    /// The reachable station with the fewest vehicles waiting (then most free chargers,
    /// then nearest); the nearest station when none is reachable.
    pub fn least_queue(&self, v: usize) -> usize {
        let key = |s: usize, d: f64| {
            let st = &self.stations[s];
            let free = self.world.stations[s].chargers as i64 - st.charging.len() as i64;
            (st.queue.len() as i64, -free, d)
        };
        self.reachable(v)
            .min_by(|a, b| {
                key(a.0, a.1)
                    .partial_cmp(&key(b.0, b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(s, _)| s)
            .unwrap_or_else(|| self.nearest(v))
    }

    /// Vehicles queued and charging now.
    pub fn at_stations(&self) -> (usize, usize) {
        self.stations.iter().fold((0, 0), |(q, c), s| {
            (q + s.queue.len(), c + s.charging.len())
        })
    }

    /// Waits of vehicles still queued, ms so far.
    pub fn open_waits_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.stations
            .iter()
            .flat_map(|s| s.queue.iter().map(|(_, at)| self.now_ms - at))
    }
}

/// How long charging from `soc` to the target takes at `power_kw`, ms.
pub fn charge_ms(world: &World, v: usize, soc: f64, power_kw: f64) -> f64 {
    let spec = &world.vehicles[v];
    let kwh = (world.scenario.target_soc - soc).max(0.0) * spec.battery_kwh;
    kwh / power_kw * 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{RegionArea, Regions, Scenario, StationSpec, VehicleSpec};

    /// One region, one station with `chargers`, and vehicles parked on it.
    fn tiny(chargers: u32, vehicles: usize) -> World {
        let regions = Regions::new(vec![RegionArea::new(
            "r",
            &[[0.0, 0.0], [0.0, 0.1], [0.1, 0.1], [0.1, 0.0]],
        )]);
        let scenario = Scenario {
            vehicles,
            stations: 1,
            hotspot_share: 0.0,
            telemetry_s: 0.0,
            ..Scenario::default()
        };
        let mut world = World::generate(&scenario, regions).unwrap();
        world.stations = vec![StationSpec {
            id: "r-s0001".into(),
            region: 0,
            lat: 0.05,
            lon: 0.05,
            chargers,
            power_kw: 50.0,
        }];
        world.vehicles = (0..vehicles)
            .map(|i| VehicleSpec {
                id: format!("v{i}"),
                lat: 0.05,
                lon: 0.0501,
                battery_kwh: 50.0,
                kwh_per_km: 0.2,
                speed_kmh: 36.0,
                soc: 0.3,
                trip_seed: i as u64,
            })
            .collect();
        world
    }

    #[test]
    fn the_plane_vehicles_move_on_is_within_a_hundredth_of_a_percent_of_the_great_circle() {
        use rand::Rng as _;
        // The demo city (40 × 40 km around 12.97° S) and the same size at 60° N.
        for (lat0, lon0) in [(-12.97, -38.5), (60.0, 10.75)] {
            let plane = Plane::around(lat0);
            let half_lat = 20.0 / 111.2;
            let half_lon = half_lat / f64::cos(lat0.to_radians());
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let mut worst: f64 = 0.0;
            for _ in 0..100_000 {
                let mut p = || {
                    (
                        lat0 + rng.random_range(-half_lat..=half_lat),
                        lon0 + rng.random_range(-half_lon..=half_lon),
                    )
                };
                let ((a, b), (c, d)) = (p(), p());
                let great = haversine_km(a, b, c, d);
                let flat = plane.km(a, b, c, d);
                assert!(
                    (flat - great).abs() <= 1e-4 * great + 1e-6,
                    "({a}, {b}) → ({c}, {d}): {flat} km on the plane, {great} km great-circle"
                );
                worst = worst.max((flat - great).abs() / great.max(1e-9));
            }
            assert!(worst > 0.0, "the plane is not the great circle itself");
        }
        // Short hops, as a vehicle's distance to its target shrinks to a step.
        let plane = Plane::around(-12.97);
        let great = haversine_km(-12.9, -38.5, -12.9001, -38.5001);
        assert!((plane.km(-12.9, -38.5, -12.9001, -38.5001) - great).abs() < 1e-6);
    }

    #[test]
    fn a_station_charges_at_most_its_chargers_and_serves_first_come_first_served() {
        let world = tiny(2, 5);
        let mut sim = Sim::new(&world, 0.0);
        for v in 0..5 {
            sim.send_to(v, 0, None);
        }
        let mut max_charging = 0;
        for _ in 0..(4 * 3600) {
            sim.step(1000.0);
            max_charging = max_charging.max(sim.stations[0].charging.len());
        }
        assert_eq!(max_charging, 2);
        assert_eq!(sim.tally.overbooked, 0);
        assert_eq!(sim.tally.arrivals, 5);
        assert_eq!(sim.tally.sessions_done, 5);
        // 25 kWh at 50 kW = 30 min each: waits 0, 0, 30, 30, 60 min (about).
        let mut waits: Vec<f64> = sim.tally.waits_ms.iter().map(|w| w / 60_000.0).collect();
        waits.sort_by(f64::total_cmp);
        let expect = [0.0, 0.0, 30.0, 30.0, 60.0];
        for (w, e) in waits.iter().zip(expect) {
            assert!((w - e).abs() < 1.0, "{waits:?}");
        }
        assert!((sim.stations[0].busy_ms / 60_000.0 - 150.0).abs() < 2.0);
    }

    #[test]
    fn a_vehicle_that_drives_dry_is_stranded_and_stops() {
        let mut world = tiny(1, 1);
        world.vehicles[0].soc = 0.001; // 0.05 kWh: 250 m of road
        let mut sim = Sim::new(&world, 0.0);
        sim.vehicles[0].dest = (0.09, 0.09);
        for _ in 0..600 {
            sim.step(1000.0);
        }
        assert_eq!(sim.tally.stranded, 1);
        assert_eq!(sim.vehicles[0].phase, Phase::Stranded);
        assert!(sim.outbox.contains(&Event::Stranded(0)));
    }

    #[test]
    fn a_vehicle_whose_reservation_is_refused_on_the_way_asks_again() {
        let mut world = tiny(1, 1);
        world.vehicles[0].soc = 0.1;
        let mut sim = Sim::new(&world, 0.0);
        sim.vehicles[0].dest = (0.09, 0.09);
        sim.step(1000.0);
        assert!(sim.outbox.contains(&Event::NeedStation(0)));
        sim.outbox.clear();
        let reservation = Reservation {
            region: "r".into(),
            id: "x".into(),
        };
        sim.send_to(0, 0, Some(reservation));
        sim.reservation_refused(0);
        assert_eq!(sim.vehicles[0].phase, Phase::Driving { asked: false });
        sim.step(1000.0);
        assert!(sim.outbox.contains(&Event::NeedStation(0)), "asks again");
    }

    #[test]
    fn a_vehicle_asks_once_when_below_the_threshold_and_arrives_with_its_reservation() {
        let mut world = tiny(1, 1);
        world.vehicles[0].soc = 0.251;
        let mut sim = Sim::new(&world, 0.0);
        sim.vehicles[0].dest = (0.09, 0.09);
        for _ in 0..600 {
            sim.step(1000.0);
        }
        let asks = sim
            .outbox
            .iter()
            .filter(|e| matches!(e, Event::NeedStation(0)))
            .count();
        assert_eq!(asks, 1);
        let reservation = Reservation {
            region: "r".into(),
            id: "r-1".into(),
        };
        sim.send_to(0, 0, Some(reservation.clone()));
        for _ in 0..3600 {
            sim.step(1000.0);
        }
        assert!(sim.outbox.contains(&Event::Arrived {
            vehicle: 0,
            reservation
        }));
        assert_eq!(sim.tally.arrivals, 1);
    }
}
