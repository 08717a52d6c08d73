//! The simulated city in fixed time steps, with no I/O: vehicles drive, drain, ask for a
//! station, drive there, queue, charge and drive on. What devices would send is left in
//! an outbox ([`Event`]) for the runner to publish; decisions come back through
//! [`Sim::send_to`], and the fog's reservations at stations through [`Sim::reserve`] and
//! [`Sim::cancel_reservation`].
//!
//! A [`Station`] has `chargers` connectors, each free, charging a vehicle, held for a
//! reservation, or faulted (out of service until repaired). It serves, in this order:
//!
//! 1. **Reservations** it holds (only when [`Sim::set_takes_reservations`] is on; the
//!    contract is "The station's side of a reservation" in `docs/protocol.md`): a free
//!    connector goes to the waiting reservation with the earliest `start_ms` (those
//!    without one last, then in the order they came) and idles for its holder alone
//!    until the holder arrives (and starts at once), the reservation is cancelled, or
//!    it passes `expires_ms`. A holder that arrives before its reservation holds a
//!    connector waits on site, ahead of walk-ins, for the next one its place gives it.
//! 2. **Walk-ins** (vehicles without a reservation the station holds), first come,
//!    first served on the connectors nobody holds. A holder whose reservation expires or
//!    is cancelled while it waits on site becomes a walk-in, placed by its arrival time.
//!
//! With `--charger-fault-rate F`, a share F of session starts fail (drawn from a
//! generator per station seeded from the scenario's seed): the connector is faulted for
//! `--charger-fault-s` and the vehicle keeps its place in line (a holder loses the
//! held connector, not its reservation) and tries the next free connector. Every step
//! costs O(chargers + queue + reservations) per station.
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
use protocol::{StationState, StationStatus};
use rand::{Rng as _, SeedableRng};
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

/// A station's state: who charges, who waits, what it holds, which connectors are
/// faulted. Only the [`Sim`] changes it.
#[derive(Debug, Clone)]
pub struct Station {
    /// (vehicle, charging ends at ms)
    pub charging: Vec<(usize, f64)>,
    /// Walk-ins waiting on site, (vehicle, arrived at ms), in arrival order: what the
    /// station's status reports as `queue` (the fog counts reservations itself).
    pub queue: VecDeque<(usize, f64)>,
    /// Charger-milliseconds spent charging.
    pub busy_ms: f64,
    pub sessions: u32,
    /// The reservations it holds or waits to hold, in the order they get connectors.
    reservations: Vec<StationReservation>,
    /// How many of them hold a connector.
    held: u32,
    /// The earliest `expires_ms` among them (infinite when none).
    next_expiry_ms: f64,
    /// Order in which reservations came (ties of `start_ms`).
    next_seq: u64,
    /// Faulted connectors, each until when (ms).
    faulted: Vec<f64>,
    /// Draws which session starts fail.
    faults: ChaCha8Rng,
}

/// A reservation a station holds, or waits to hold, for a vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct StationReservation {
    pub id: String,
    pub vehicle: usize,
    /// The fog's planned start: the reservation's place among those waiting.
    pub start_ms: Option<f64>,
    pub expires_ms: f64,
    /// A connector is held for it (then its holder is not on site yet).
    pub held: bool,
    /// Its holder is on site, waiting since then (ms).
    pub on_site_ms: Option<f64>,
    seq: u64,
}

impl StationReservation {
    /// Sort key: `start_ms` (none last), then the order they came.
    fn key(&self) -> (f64, u64) {
        (self.start_ms.unwrap_or(f64::INFINITY), self.seq)
    }
}

impl Station {
    /// An idle station; its fault draws come from `seed`, on a stream of its own
    /// (`index`), so its faults do not depend on what happens at other stations.
    fn new(seed: u64, index: usize) -> Self {
        // Apart from the world's own generator, which is seeded with `seed` too.
        let mut faults = ChaCha8Rng::seed_from_u64(seed ^ 0xFA17_C4A2_6E5D_0001);
        faults.set_stream(index as u64);
        Self {
            charging: Vec::new(),
            queue: VecDeque::new(),
            busy_ms: 0.0,
            sessions: 0,
            reservations: Vec::new(),
            held: 0,
            next_expiry_ms: f64::INFINITY,
            next_seq: 0,
            faulted: Vec::new(),
            faults,
        }
    }

    /// The reservations it holds or waits to hold, in the order they get connectors
    /// (held ones wherever their `start_ms` puts them).
    pub fn reservations(&self) -> &[StationReservation] {
        &self.reservations
    }

    /// Connectors faulted now.
    pub fn faulted(&self) -> usize {
        self.faulted.len()
    }

    /// Connectors free for whoever is first in line: in service, not charging, not
    /// held.
    fn free(&self, chargers: u32) -> usize {
        (chargers as usize)
            .saturating_sub(self.faulted.len() + self.charging.len() + self.held as usize)
    }

    /// Holders on site, waiting for a connector: (vehicle, arrived at ms).
    fn holders_waiting(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.reservations
            .iter()
            .filter_map(|r| r.on_site_ms.map(|at| (r.vehicle, at)))
    }

    /// Puts a reservation where its key says.
    fn insert(&mut self, r: StationReservation) {
        let (start, seq) = r.key();
        let at = self.reservations.partition_point(|x| {
            let (x_start, x_seq) = x.key();
            x_start.total_cmp(&start).then(x_seq.cmp(&seq)).is_lt()
        });
        self.next_expiry_ms = self.next_expiry_ms.min(r.expires_ms);
        self.reservations.insert(at, r);
    }

    /// Takes reservation `i` out; a connector it held is free again, a holder waiting
    /// on site becomes a walk-in, placed by its arrival time.
    fn remove(&mut self, i: usize) -> StationReservation {
        let r = self.reservations.remove(i);
        if r.held {
            self.held -= 1;
        }
        if let Some(at) = r.on_site_ms {
            let pos = self.queue.partition_point(|&(_, a)| a <= at);
            self.queue.insert(pos, (r.vehicle, at));
        }
        self.find_next_expiry();
        r
    }

    fn find_next_expiry(&mut self) {
        self.next_expiry_ms = self
            .reservations
            .iter()
            .map(|r| r.expires_ms)
            .fold(f64::INFINITY, f64::min);
    }
}

/// Something a device does that the outside world hears about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A station's occupancy changed: publish its status.
    StationChanged(usize),
    /// A vehicle fell below the threshold and needs a station.
    NeedStation(usize),
    /// A vehicle reached the station it reserved, at a station that does not take
    /// reservations (the vehicle says `arrived` itself). Stations that take them report
    /// [`Event::ReservationStarted`] instead, when the holder starts charging.
    Arrived {
        vehicle: usize,
        reservation: Reservation,
    },
    /// A holder started charging on its reservation (the station's `arrived`
    /// reservation-event); the station no longer holds it.
    ReservationStarted {
        station: usize,
        vehicle: usize,
        reservation_id: String,
    },
    /// A vehicle started charging (every session), after waiting `wait_ms` on site;
    /// `reservation_id` when it charges on a reservation the station held.
    StartedCharging {
        vehicle: usize,
        station: usize,
        wait_ms: f64,
        reservation_id: Option<String>,
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
    /// Session starts that failed (`--charger-fault-rate`): a charger went faulted.
    pub faults: u32,
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
    /// Stations hold the fog's reservations ([`Sim::reserve`]).
    takes_reservations: bool,
    /// When connectors freed during a step (scratch, kept to spare an allocation).
    freed: Vec<f64>,
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
        let stations: Vec<Station> = (0..world.stations.len())
            .map(|s| Station::new(world.scenario.seed, s))
            .collect();
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
            takes_reservations: false,
            freed: Vec::new(),
        }
    }

    /// Whether stations take reservations (the server strategies; naive strategies
    /// never reserve). Their status says so, [`Sim::reserve`] is refused without it,
    /// and a vehicle arriving on a reservation no longer emits [`Event::Arrived`]: the
    /// station reports [`Event::ReservationStarted`] when it starts charging.
    pub fn set_takes_reservations(&mut self, yes: bool) {
        self.takes_reservations = yes;
    }

    pub fn takes_reservations(&self) -> bool {
        self.takes_reservations
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
                    self.arrive(station, i, reservation, now);
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

    /// Vehicle `v` reaches station `s` at `now`: on its reservation if the station
    /// holds it (it starts on its held connector at once, or waits on site for its
    /// turn), else as a walk-in at the end of the queue.
    fn arrive(&mut self, s: usize, v: usize, reservation: Option<Reservation>, now: f64) {
        let station = &mut self.stations[s];
        let holding = match &reservation {
            Some(r) if self.takes_reservations => station
                .reservations
                .iter()
                .position(|x| x.id == r.id && x.vehicle == v),
            _ => None,
        };
        match holding {
            Some(i) => {
                station.reservations[i].on_site_ms = Some(now);
                if station.reservations[i].held {
                    self.start_holder(s, i, now);
                }
            }
            None => {
                station.queue.push_back((v, now));
                self.changed[s] = true;
                if let (Some(reservation), false) = (reservation, self.takes_reservations) {
                    self.outbox.push(Event::Arrived {
                        vehicle: v,
                        reservation,
                    });
                }
            }
        }
        // Start charging at once if a connector is free for it.
        self.serve(s, now, now);
    }

    /// Brings station `s` from `t0` to `now`: repairs faulted connectors and drops
    /// expired reservations that are due, finishes charging sessions, then gives every
    /// free connector to whoever is first in line, from the moment it was freed.
    /// Counts charger time over `[t0, now]`.
    fn serve(&mut self, s: usize, t0: f64, now: f64) {
        let world: &'w World = self.world;
        let target = world.scenario.target_soc;
        let mut freed = std::mem::take(&mut self.freed);
        freed.clear();
        let station = &mut self.stations[s];
        for &(_, end) in &station.charging {
            station.busy_ms += (end.min(now) - t0).max(0.0);
        }
        if !station.faulted.is_empty() {
            let before = station.faulted.len();
            station.faulted.retain(|&until| {
                if until <= now {
                    freed.push(until);
                }
                until > now
            });
            if station.faulted.len() != before {
                self.changed[s] = true;
            }
        }
        if station.next_expiry_ms <= now {
            let mut i = 0;
            while i < station.reservations.len() {
                let r = &station.reservations[i];
                if r.expires_ms > now {
                    i += 1;
                    continue;
                }
                if r.held {
                    freed.push(r.expires_ms);
                }
                if r.on_site_ms.is_some() {
                    self.changed[s] = true; // a walk-in more
                }
                station.remove(i);
            }
        }
        let mut i = 0;
        while i < station.charging.len() {
            let (v, end) = station.charging[i];
            if end > now {
                i += 1;
                continue;
            }
            station.charging.swap_remove(i);
            station.sessions += 1;
            self.tally.sessions_done += 1;
            self.changed[s] = true;
            freed.push(end);
            let veh = &mut self.vehicles[v];
            veh.soc = veh.soc.max(target);
            veh.dest = world.destination(&mut veh.trips);
            veh.phase = Phase::Driving { asked: false };
        }
        freed.sort_by(f64::total_cmp);
        self.fill(s, &freed, now);
        self.freed = freed;
        let station = &self.stations[s];
        if station.charging.len() + station.faulted.len() + station.held as usize
            > world.stations[s].chargers as usize
        {
            self.tally.overbooked += 1;
        }
    }

    /// Gives station `s`'s free connectors to whoever is first in line: the `k`-th
    /// from `freed[k]` (when it was freed during this step), the others from `now`.
    /// The first waiting reservation gets one held for it (its holder, if on site,
    /// starts on it); with none waiting, the first walk-in starts charging. Each turn
    /// uses up one connector (a failed start faults it), so this ends.
    fn fill(&mut self, s: usize, freed: &[f64], now: f64) {
        let chargers = self.world.stations[s].chargers;
        let mut k = 0;
        while self.stations[s].free(chargers) > 0 {
            let at = freed.get(k).copied().unwrap_or(now);
            k += 1;
            let station = &mut self.stations[s];
            let waiting = if station.reservations.len() > station.held as usize {
                station.reservations.iter().position(|r| !r.held)
            } else {
                None
            };
            if let Some(i) = waiting {
                station.reservations[i].held = true;
                station.held += 1;
                if station.reservations[i].on_site_ms.is_some() {
                    self.start_holder(s, i, at);
                }
            } else if let Some((v, arrived)) = station.queue.pop_front() {
                if !self.start(s, v, arrived, at, None) {
                    self.stations[s].queue.push_front((v, arrived));
                }
            } else {
                break;
            }
        }
    }

    /// The holder of reservation `i`, on site, starts on its held connector (from
    /// `at`, when the connector was free). On a fault the reservation keeps its place
    /// but holds nothing.
    fn start_holder(&mut self, s: usize, i: usize, at: f64) {
        let r = &self.stations[s].reservations[i];
        let (v, arrived) = (r.vehicle, r.on_site_ms.unwrap_or(at));
        let id = r.id.clone();
        let station = &mut self.stations[s];
        station.reservations[i].held = false;
        station.held -= 1;
        if self.start(s, v, arrived, at, Some(&id)) {
            // It charges now: not waiting any more, not a walk-in.
            self.stations[s].reservations[i].on_site_ms = None;
            self.stations[s].remove(i);
            self.outbox.push(Event::ReservationStarted {
                station: s,
                vehicle: v,
                reservation_id: id,
            });
        }
    }

    /// Vehicle `v`, on site since `arrived`, starts charging on a connector of station
    /// `s` free from `at` — unless the start fails (`--charger-fault-rate`): then the
    /// connector is faulted from then on and the vehicle still waits (`false`).
    fn start(
        &mut self,
        s: usize,
        v: usize,
        arrived: f64,
        at: f64,
        reservation_id: Option<&str>,
    ) -> bool {
        let world: &'w World = self.world;
        let now = self.now_ms;
        let scenario = &world.scenario;
        let start = at.max(arrived);
        let station = &mut self.stations[s];
        self.changed[s] = true;
        if scenario.charger_fault_rate > 0.0
            && station.faults.random_bool(scenario.charger_fault_rate)
        {
            station
                .faulted
                .push(start + scenario.charger_fault_s * 1000.0);
            self.tally.faults += 1;
            return false;
        }
        let charge_ms = charge_ms(world, v, self.vehicles[v].soc, world.stations[s].power_kw);
        station.charging.push((v, start + charge_ms));
        station.busy_ms += (now - start).max(0.0).min(charge_ms);
        self.tally.waits_ms.push(start - arrived);
        self.outbox.push(Event::StartedCharging {
            vehicle: v,
            station: s,
            wait_ms: start - arrived,
            reservation_id: reservation_id.map(str::to_owned),
        });
        true
    }

    /// A `reserve` (new, or an update: it replaces `start_ms` and `expires_ms`) for
    /// `vehicle` at station `s`. A free connector is held for it at once if it is first
    /// among those waiting. Returns `Err(reason)` when the station cannot hold it: it
    /// does not take reservations, no charger is in service, the reservation is already
    /// past `expires_ms`, or the id is another vehicle's.
    pub fn reserve(
        &mut self,
        s: usize,
        reservation_id: &str,
        vehicle: usize,
        start_ms: Option<f64>,
        expires_ms: f64,
    ) -> Result<(), String> {
        if !self.takes_reservations {
            return Err("the station does not take reservations".into());
        }
        if self.in_service_chargers(s) == 0 {
            return Err("faulted: no charger in service".into());
        }
        if expires_ms <= self.now_ms {
            return Err("the reservation has already expired".into());
        }
        let station = &mut self.stations[s];
        let r = match station
            .reservations
            .iter()
            .position(|r| r.id == reservation_id)
        {
            Some(i) if station.reservations[i].vehicle != vehicle => {
                return Err(format!(
                    "reservation {reservation_id} is held for another vehicle"
                ));
            }
            Some(i) => {
                // Out and back in at its new place, keeping the order it came in (and a
                // connector it holds).
                let mut r = station.reservations.remove(i);
                r.start_ms = start_ms;
                r.expires_ms = expires_ms;
                station.find_next_expiry();
                r
            }
            None => {
                station.next_seq += 1;
                StationReservation {
                    id: reservation_id.to_owned(),
                    vehicle,
                    start_ms,
                    expires_ms,
                    held: false,
                    on_site_ms: None,
                    seq: station.next_seq,
                }
            }
        };
        station.insert(r);
        let now = self.now_ms;
        self.fill(s, &[], now);
        Ok(())
    }

    /// A `cancel`: frees whatever reservation `reservation_id` held at station `s` (the
    /// connector goes to whoever is next); a holder waiting on site becomes a walk-in,
    /// placed by its arrival time. Unknown ids are ignored.
    pub fn cancel_reservation(&mut self, s: usize, reservation_id: &str) {
        let station = &mut self.stations[s];
        let Some(i) = station
            .reservations
            .iter()
            .position(|r| r.id == reservation_id)
        else {
            return;
        };
        if station.remove(i).on_site_ms.is_some() {
            self.changed[s] = true;
        }
        let now = self.now_ms;
        self.fill(s, &[], now);
    }

    /// Vehicles waiting at station `s` without a reservation it holds: the status's
    /// `queue`.
    pub fn walk_in_queue(&self, s: usize) -> usize {
        self.stations[s].queue.len()
    }

    /// Chargers of station `s` not faulted: the status's `chargers`.
    pub fn in_service_chargers(&self, s: usize) -> u32 {
        self.world.stations[s]
            .chargers
            .saturating_sub(self.stations[s].faulted.len() as u32)
    }

    /// Station `s`'s status now (naming `gateway` when one speaks for it): `chargers`
    /// in service, `occupied` charging, `queue` the walk-ins; `faulted` (without a
    /// charger count, which must be at least 1) when no charger is in service, `full`
    /// when every one in service charges.
    pub fn station_status(&self, s: usize, gateway: Option<&str>) -> StationStatus {
        let spec = &self.world.stations[s];
        let in_service = self.in_service_chargers(s);
        let occupied = self.stations[s].charging.len() as u32;
        let state = if in_service == 0 {
            StationState::Faulted
        } else if occupied >= in_service {
            StationState::Full
        } else {
            StationState::Available
        };
        StationStatus {
            v: protocol::PROTOCOL_VERSION,
            station_id: spec.id.clone(),
            lat: Some(spec.lat),
            lon: Some(spec.lon),
            chargers: (in_service > 0).then_some(in_service),
            power_kw: Some(spec.power_kw),
            occupied,
            queue: self.walk_in_queue(s) as u32,
            state,
            ts_ms: Some(self.now_ms as u64),
            takes_reservations: self.takes_reservations,
            gateway: gateway.map(str::to_owned),
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
            let free = st.free(self.world.stations[s].chargers) as i64;
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

    /// Vehicles waiting on site (walk-ins and holders) and charging now.
    pub fn at_stations(&self) -> (usize, usize) {
        self.stations.iter().fold((0, 0), |(q, c), s| {
            (
                q + s.queue.len() + s.holders_waiting().count(),
                c + s.charging.len(),
            )
        })
    }

    /// Waits of vehicles still waiting on site (walk-ins and holders), ms so far.
    pub fn open_waits_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.stations.iter().flat_map(|s| {
            s.queue
                .iter()
                .copied()
                .chain(s.holders_waiting())
                .map(|(_, at)| self.now_ms - at)
        })
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

    /// Seconds of simulated time, one step a second.
    fn run_for(sim: &mut Sim<'_>, secs: u32) {
        for _ in 0..secs {
            sim.step(1000.0);
        }
    }

    /// Puts vehicle `v` at station 0 and sends it there: it arrives at the next step.
    fn come(sim: &mut Sim<'_>, v: usize, reservation: Option<&str>) {
        let st = &sim.world.stations[0];
        (sim.vehicles[v].lat, sim.vehicles[v].lon) = (st.lat, st.lon);
        let reservation = reservation.map(|id| Reservation {
            region: "r".into(),
            id: id.into(),
        });
        sim.send_to(v, 0, reservation);
        sim.step(1000.0);
    }

    /// The session starts in the outbox: (vehicle, wait in minutes, reservation).
    fn starts(sim: &Sim<'_>) -> Vec<(usize, f64, Option<String>)> {
        sim.outbox
            .iter()
            .filter_map(|e| match e {
                Event::StartedCharging {
                    vehicle,
                    wait_ms,
                    reservation_id,
                    station: 0,
                } => Some((*vehicle, wait_ms / 60_000.0, reservation_id.clone())),
                _ => None,
            })
            .collect()
    }

    fn charging(sim: &Sim<'_>) -> Vec<usize> {
        sim.stations[0].charging.iter().map(|&(v, _)| v).collect()
    }

    fn min(m: f64) -> f64 {
        m * 60_000.0
    }

    #[test]
    fn a_held_reservation_beats_a_walk_in_that_came_first() {
        let world = tiny(1, 2);
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        sim.reserve(0, "r-1", 1, Some(min(10.0)), min(60.0))
            .unwrap();
        assert!(
            sim.stations[0].reservations()[0].held,
            "the free connector is held"
        );
        come(&mut sim, 0, None);
        run_for(&mut sim, 600);
        // The walk-in waits while the held connector idles.
        assert_eq!(charging(&sim), Vec::<usize>::new());
        assert_eq!(sim.walk_in_queue(0), 1);
        let status = sim.station_status(0, None);
        assert_eq!(
            (status.chargers, status.occupied, status.queue, status.state),
            (Some(1), 0, 1, StationState::Available)
        );
        assert!(status.takes_reservations);
        sim.outbox.clear();
        come(&mut sim, 1, Some("r-1"));
        assert_eq!(charging(&sim), vec![1], "the holder charges on arrival");
        assert_eq!(starts(&sim), vec![(1, 0.0, Some("r-1".into()))]);
        assert!(sim.outbox.contains(&Event::ReservationStarted {
            station: 0,
            vehicle: 1,
            reservation_id: "r-1".into()
        }));
        assert!(
            !sim.outbox
                .iter()
                .any(|e| matches!(e, Event::Arrived { .. })),
            "the station reports the start, not the vehicle"
        );
        assert!(sim.stations[0].reservations().is_empty());
        assert_eq!(sim.walk_in_queue(0), 1);
        sim.outbox.clear();
        // The holder charges about 30 min; then the walk-in (there since 1 s).
        let (_, end) = sim.stations[0].charging[0];
        run_for(&mut sim, 45 * 60);
        let started = starts(&sim);
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0].0, 0);
        assert!(
            (started[0].1 - (end - 1000.0) / 60_000.0).abs() < 1e-9,
            "{started:?}"
        );
        assert!(started[0].1 > 40.0, "{started:?}");
        assert_eq!(sim.tally.overbooked, 0);
        assert_eq!(sim.tally.arrivals, 2);
    }

    #[test]
    fn a_station_that_takes_no_reservations_refuses_them_and_its_vehicles_say_arrived() {
        let world = tiny(1, 1);
        let mut sim = Sim::new(&world, 0.0);
        let e = sim.reserve(0, "r-1", 0, None, min(60.0)).unwrap_err();
        assert!(e.contains("does not take reservations"), "{e}");
        assert!(!sim.station_status(0, None).takes_reservations);
        come(&mut sim, 0, Some("r-1"));
        assert!(sim.outbox.contains(&Event::Arrived {
            vehicle: 0,
            reservation: Reservation {
                region: "r".into(),
                id: "r-1".into()
            }
        }));
        assert_eq!(starts(&sim), vec![(0, 0.0, None)]);
    }

    /// One charger busy for 30 min with walk-in 0; reservations `a` (vehicle 1) and
    /// `b` (vehicle 2) made by `plan`; walk-in 3 on site at 2 min, both holders at
    /// 5 min: the order in which those three charge.
    fn holders_order(plan: impl FnOnce(&mut Sim<'_>)) -> Vec<(usize, Option<String>)> {
        let world = tiny(1, 4);
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        come(&mut sim, 0, None);
        plan(&mut sim);
        assert_eq!(charging(&sim), vec![0]);
        run_for(&mut sim, 2 * 60);
        come(&mut sim, 3, None);
        run_for(&mut sim, 3 * 60);
        come(&mut sim, 1, Some("a"));
        come(&mut sim, 2, Some("b"));
        // Holders wait on site, not in the walk-ins' queue.
        assert_eq!(sim.walk_in_queue(0), 1);
        assert_eq!(sim.at_stations(), (3, 1));
        assert_eq!(sim.station_status(0, None).queue, 1);
        sim.outbox.clear();
        run_for(&mut sim, 125 * 60);
        assert_eq!(sim.tally.overbooked, 0);
        starts(&sim).into_iter().map(|(v, _, id)| (v, id)).collect()
    }

    #[test]
    fn waiting_reservations_get_connectors_in_start_order_not_in_the_order_they_came() {
        let order = holders_order(|sim| {
            sim.reserve(0, "a", 1, Some(min(40.0)), min(200.0)).unwrap();
            sim.reserve(0, "b", 2, Some(min(35.0)), min(200.0)).unwrap();
        });
        assert_eq!(
            order,
            vec![(2, Some("b".into())), (1, Some("a".into())), (3, None)]
        );
        // Without a start, after those with one; among themselves in the order they came.
        let order = holders_order(|sim| {
            sim.reserve(0, "a", 1, None, min(200.0)).unwrap();
            sim.reserve(0, "b", 2, Some(min(50.0)), min(200.0)).unwrap();
        });
        assert_eq!(
            order,
            vec![(2, Some("b".into())), (1, Some("a".into())), (3, None)]
        );
        let order = holders_order(|sim| {
            sim.reserve(0, "a", 1, None, min(200.0)).unwrap();
            sim.reserve(0, "b", 2, None, min(200.0)).unwrap();
        });
        assert_eq!(
            order,
            vec![(1, Some("a".into())), (2, Some("b".into())), (3, None)]
        );
    }

    #[test]
    fn an_update_moves_a_reservation_in_the_order() {
        let order = holders_order(|sim| {
            sim.reserve(0, "a", 1, Some(min(35.0)), min(200.0)).unwrap();
            sim.reserve(0, "b", 2, Some(min(40.0)), min(200.0)).unwrap();
            sim.reserve(0, "a", 1, Some(min(45.0)), min(200.0)).unwrap();
            let e = sim.reserve(0, "a", 2, None, min(200.0)).unwrap_err();
            assert!(e.contains("another vehicle"), "{e}");
            let r = sim.stations[0].reservations();
            assert_eq!((r.len(), r[0].id.as_str()), (2, "b"));
        });
        assert_eq!(
            order,
            vec![(2, Some("b".into())), (1, Some("a".into())), (3, None)]
        );
    }

    #[test]
    fn an_expired_hold_frees_the_connector_for_walk_ins() {
        let world = tiny(1, 2);
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        sim.reserve(0, "r-1", 1, None, min(5.0)).unwrap();
        come(&mut sim, 0, None);
        sim.outbox.clear();
        run_for(&mut sim, 5 * 60 - 2);
        assert_eq!(charging(&sim), Vec::<usize>::new(), "held until it expires");
        run_for(&mut sim, 2);
        let started = starts(&sim);
        assert_eq!(started.len(), 1);
        // From the moment it expired: 5 min less the second it arrived at.
        assert!(
            (started[0].1 - (5.0 - 1.0 / 60.0)).abs() < 1e-9,
            "{started:?}"
        );
        assert!(sim.stations[0].reservations().is_empty());
        // Its vehicle, late, is a walk-in now.
        sim.outbox.clear();
        come(&mut sim, 1, Some("r-1"));
        assert_eq!(sim.walk_in_queue(0), 1);
        assert!(starts(&sim).is_empty());
        assert!(
            !sim.outbox
                .iter()
                .any(|e| matches!(e, Event::ReservationStarted { .. } | Event::Arrived { .. }))
        );
    }

    #[test]
    fn a_holder_on_site_whose_reservation_expires_keeps_its_place_by_arrival_time() {
        let world = tiny(1, 4);
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        come(&mut sim, 0, None); // charges for 30 min
        sim.reserve(0, "h", 2, None, min(10.0)).unwrap();
        run_for(&mut sim, 60);
        come(&mut sim, 2, Some("h")); // the holder, at 1 min
        run_for(&mut sim, 60);
        come(&mut sim, 1, None); // a walk-in at 2 min
        run_for(&mut sim, 60);
        come(&mut sim, 3, None); // another at 3 min
        let queue = |sim: &Sim<'_>| {
            sim.stations[0]
                .queue
                .iter()
                .map(|&(v, _)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(queue(&sim), vec![1, 3]);
        run_for(&mut sim, 7 * 60);
        assert!(sim.stations[0].reservations().is_empty());
        assert_eq!(queue(&sim), vec![2, 1, 3], "first by its arrival");
        assert_eq!(sim.walk_in_queue(0), 3);
    }

    #[test]
    fn a_cancel_frees_the_held_connector_at_once_and_unknown_ids_are_ignored() {
        let world = tiny(1, 2);
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        sim.reserve(0, "r-1", 1, Some(min(20.0)), min(60.0))
            .unwrap();
        come(&mut sim, 0, None);
        run_for(&mut sim, 120);
        sim.cancel_reservation(0, "nobody");
        assert_eq!(sim.stations[0].reservations().len(), 1);
        assert_eq!(charging(&sim), Vec::<usize>::new());
        sim.outbox.clear();
        sim.cancel_reservation(0, "r-1");
        assert_eq!(charging(&sim), vec![0], "the walk-in takes it on the spot");
        let started = starts(&sim);
        assert_eq!(started.len(), 1);
        assert!((started[0].1 - 2.0).abs() < 1e-9, "{started:?}");
        assert!(sim.stations[0].reservations().is_empty());
    }

    #[test]
    fn a_failed_start_faults_the_charger_until_it_is_repaired() {
        let mut world = tiny(2, 1);
        world.scenario.charger_fault_rate = 1.0;
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        come(&mut sim, 0, None);
        // It tried both chargers; both failed; it is still first in line.
        assert_eq!(sim.tally.faults, 2);
        assert_eq!(sim.in_service_chargers(0), 0);
        assert_eq!(sim.walk_in_queue(0), 1);
        assert!(charging(&sim).is_empty() && starts(&sim).is_empty());
        assert!(sim.outbox.contains(&Event::StationChanged(0)));
        let status = sim.station_status(0, None);
        assert_eq!(status.state, StationState::Faulted);
        assert_eq!(status.chargers, None, "a status counts at least 1 charger");
        protocol::Validate::validate(&status).unwrap();
        let e = sim.reserve(0, "r-1", 0, None, min(60.0)).unwrap_err();
        assert!(e.contains("faulted"), "{e}");
        // Out of service for --charger-fault-s (600 s) from the attempt at 1 s.
        run_for(&mut sim, 599);
        assert_eq!((sim.in_service_chargers(0), sim.tally.faults), (0, 2));
        run_for(&mut sim, 1);
        assert_eq!(
            sim.tally.faults, 4,
            "repaired at 601 s, and it tried both again"
        );
    }

    #[test]
    fn a_faulted_charger_is_out_of_service_until_its_repair() {
        let world = tiny(2, 2);
        let mut sim = Sim::new(&world, 0.0);
        sim.stations[0].faulted.push(min(5.0));
        assert_eq!(sim.in_service_chargers(0), 1);
        let status = sim.station_status(0, None);
        assert_eq!(
            (status.chargers, status.state),
            (Some(1), StationState::Available)
        );
        come(&mut sim, 0, None);
        come(&mut sim, 1, None);
        let status = sim.station_status(0, None);
        assert_eq!(
            (status.chargers, status.occupied, status.queue, status.state),
            (Some(1), 1, 1, StationState::Full)
        );
        protocol::Validate::validate(&status).unwrap();
        sim.outbox.clear();
        run_for(&mut sim, 5 * 60);
        assert_eq!(sim.in_service_chargers(0), 2);
        let started = starts(&sim);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].0, 1);
        assert!(
            (started[0].1 - (5.0 - 2.0 / 60.0)).abs() < 1e-9,
            "{started:?}"
        );
        assert!(sim.outbox.contains(&Event::StationChanged(0)));
    }

    #[test]
    fn a_holder_whose_start_fails_keeps_its_reservation_and_its_place() {
        let mut world = tiny(1, 2);
        world.scenario.charger_fault_rate = 1.0;
        let mut sim = Sim::new(&world, 0.0);
        sim.set_takes_reservations(true);
        sim.reserve(0, "r-1", 1, None, min(60.0)).unwrap();
        come(&mut sim, 1, Some("r-1"));
        assert_eq!(sim.tally.faults, 1);
        let r = &sim.stations[0].reservations()[0];
        assert_eq!((r.id.as_str(), r.held), ("r-1", false));
        assert_eq!(r.on_site_ms, Some(1000.0));
        assert_eq!(sim.walk_in_queue(0), 0);
        assert!(
            !sim.outbox
                .iter()
                .any(|e| matches!(e, Event::ReservationStarted { .. }))
        );
        // At the repair it is first again, ahead of a walk-in that came meanwhile.
        come(&mut sim, 0, None);
        run_for(&mut sim, 600);
        assert_eq!(sim.tally.faults, 2, "the holder tried the repaired charger");
        assert_eq!(sim.walk_in_queue(0), 1);
    }

    /// Vehicles that go to station 0 whenever they need a station, for `hours`:
    /// (when, faults so far) at every new fault, and the sessions started.
    fn fault_history(world: &World, hours: u32) -> (Vec<(f64, u32)>, u32) {
        let mut sim = Sim::new(world, 0.0);
        let mut history = Vec::new();
        for _ in 0..hours * 3600 {
            sim.step(1000.0);
            for e in std::mem::take(&mut sim.outbox) {
                if let Event::NeedStation(v) = e {
                    sim.send_to(v, 0, None);
                }
            }
            if history.last().map_or(0, |&(_, n)| n) != sim.tally.faults {
                history.push((sim.now_ms, sim.tally.faults));
            }
        }
        (history, sim.tally.waits_ms.len() as u32)
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let mut world = tiny(3, 20);
        world.scenario.charger_fault_rate = 0.5;
        world.scenario.charger_fault_s = 300.0;
        let (a, sessions) = fault_history(&world, 3);
        assert!(a.len() >= 5 && sessions >= 10, "{a:?}, {sessions} sessions");
        assert_eq!(fault_history(&world, 3), (a.clone(), sessions));
        world.scenario.seed += 1;
        assert_ne!(fault_history(&world, 3).0, a);
    }

    #[test]
    fn without_faults_or_reservations_walk_ins_are_served_first_come_first_served() {
        let world = tiny(2, 5);
        let serve = |takes_reservations: bool| {
            let mut sim = Sim::new(&world, 0.0);
            sim.set_takes_reservations(takes_reservations);
            for v in 0..5 {
                come(&mut sim, v, None);
            }
            run_for(&mut sim, 4 * 3600);
            assert_eq!((sim.tally.faults, sim.tally.overbooked), (0, 0));
            starts(&sim)
        };
        let started = serve(false);
        let order: Vec<usize> = started.iter().map(|s| s.0).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        // Arrivals a second apart; sessions of 30 min: 0, 0, then 30 and 60 min less
        // the arrival offsets.
        let expect = [0.0, 0.0, 29.98, 29.97, 59.97];
        for ((_, w, id), e) in started.iter().zip(expect) {
            assert!((w - e).abs() < 0.05 && id.is_none(), "{started:?}");
        }
        assert_eq!(serve(true), started);
    }
}
