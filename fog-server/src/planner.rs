//! Choosing a station and holding reservations (the model is documented in
//! `docs/planner.md`).
//!
//! For every reachable in-service station, nearest first:
//!
//! ```text
//! total = drive time + predicted wait + charge time (+ the delay it would cause others)
//! ```
//!
//! Each station has a **plan**: its chargers' timelines. Chargers in use free up when
//! their sessions are expected to end (a vehicle that started on one of our
//! reservations ends after its own charge time; one of unknown start after half a
//! typical session; one that should have ended by now a little later, `overrun_s`),
//! and the reservations promised there take the chargers in the order of their place
//! in the plan (`key_ms`, then the order they were made), each starting when its
//! charger is free and its vehicle has arrived — exactly how a station that holds
//! reservations serves them (`docs/protocol.md`, the station's side).
//!
//! A new vehicle is placed where it **delays nobody already promised**: at the
//! earliest place in the order from which every later reservation still starts no
//! later than before (the last place always qualifies). Its predicted wait is the wait
//! that plan gives it. At a station that does not hold reservations (first come, first
//! served: its walk-in queue goes first, then vehicles in order of arrival) a vehicle
//! that arrives earlier than others does delay them; that delay is added to its
//! total, so it goes there only when that is still best for everyone.
//!
//! When reality diverges (a session runs over, a walk-in takes a charger, a charger
//! faults), [`Planner::planned_starts`] shows how the plan moved; the region re-plans
//! the reservations that got later ([`crate::region`]).

use std::collections::HashMap;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::index::{Slot, Station, StationIndex};
pub use cost_model::CostParams;
use cost_model::{Vehicle, session_s};
use protocol::ChargeRequest;

/// The planner's parameters; every one is a CLI flag with an environment fallback
/// (`FOG_…`, see the fog server's `Config`).
#[derive(Debug, Clone, Args)]
pub struct PlannerParams {
    /// The cost model's parameters, shared with central.
    #[command(flatten)]
    pub cost: CostParams,
    /// Seconds a reservation is held past the vehicle's planned start.
    #[arg(long, env = "FOG_RESERVATION_GRACE_S", default_value_t = 600)]
    pub reservation_grace_s: u32,
    /// Typical energy of the charging session of a vehicle already at a station, kWh:
    /// such a session lasts `session_kwh / power_kw` hours at that station (a charging
    /// vehicle of unknown start is assumed to be half-way through one). 40 kWh is a
    /// 70 kWh battery from about 25% to 80%.
    #[arg(long, env = "FOG_SESSION_KWH", default_value_t = 40.0)]
    pub session_kwh: f64,
    /// Most candidates examined per request (nearest first).
    #[arg(long, env = "FOG_MAX_CANDIDATES", default_value_t = 256)]
    pub max_candidates: usize,
    /// Seconds a charger whose session should have ended by now is still expected to
    /// be busy (the session ran over, or its end is not heard yet).
    #[arg(long, env = "FOG_OVERRUN_S", default_value_t = 120)]
    pub overrun_s: u32,
}

impl Default for PlannerParams {
    fn default() -> Self {
        Self {
            cost: CostParams::default(),
            reservation_grace_s: 600,
            session_kwh: 40.0,
            max_candidates: 256,
            overrun_s: 120,
        }
    }
}

impl PlannerParams {
    /// Refuses parameters that would make the model meaningless.
    pub fn check(&self) -> Result<(), String> {
        self.cost.check().map_err(|e| e.to_string())?;
        if !(self.session_kwh.is_finite() && self.session_kwh > 0.0) {
            return Err(format!(
                "--session-kwh must be a positive number, got {}",
                self.session_kwh
            ));
        }
        if self.max_candidates == 0 {
            return Err("--max-candidates must be at least 1".into());
        }
        Ok(())
    }
}

/// Where a vehicle asked from and what it drives: enough to plan it again from where
/// it is likely to be now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub vehicle: Vehicle,
    /// When it asked (fog clock, ms).
    pub asked_ms: u64,
}

impl Trip {
    pub fn new(req: &ChargeRequest, asked_ms: u64) -> Self {
        Self {
            vehicle: Vehicle::from(req),
            asked_ms,
        }
    }

    /// The vehicle as it probably is at `now_ms`, on its way to (`lat`, `lon`) which
    /// it reaches at `arrival_ms` (along a straight line, using energy per road km).
    pub fn at(
        &self,
        lat: f64,
        lon: f64,
        arrival_ms: u64,
        road_factor: f64,
        now_ms: u64,
    ) -> Vehicle {
        let total = arrival_ms.saturating_sub(self.asked_ms).max(1) as f64;
        let f = (now_ms.saturating_sub(self.asked_ms) as f64 / total).clamp(0.0, 1.0);
        let v = self.vehicle;
        let road_km = protocol::geo::haversine_km(v.lat, v.lon, lat, lon) * road_factor * f;
        Vehicle {
            lat: v.lat + (lat - v.lat) * f,
            lon: v.lon + (lon - v.lon) * f,
            soc: (v.soc - road_km * v.kwh_per_km / v.battery_kwh).max(0.0),
            ..v
        }
    }
}

/// A slot promised to a vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub vehicle_id: String,
    pub station_id: String,
    #[serde(skip)]
    pub slot: Slot,
    /// Expected arrival (fog clock, ms).
    pub arrival_ms: u64,
    /// Expected charging time at the station, seconds.
    pub charge_s: u32,
    pub expires_ms: u64,
    /// When the vehicle was last told it would start charging (fog clock, ms): its
    /// arrival plus the wait of its latest answer. Journals from before this field
    /// read back as the arrival.
    #[serde(default)]
    pub start_ms: u64,
    /// Its place in the station's plan (fog clock, ms; ties go by `seq`): what a
    /// station that holds reservations serves them by (`start_ms` on the wire).
    #[serde(default)]
    pub key_ms: u64,
    /// Order of making, among equal keys.
    #[serde(default)]
    pub seq: u64,
    /// Where the vehicle asked from, for re-planning it (absent: it is not moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<Trip>,
}

/// The best option for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub slot: Slot,
    pub road_km: f64,
    pub eta_s: f64,
    pub wait_s: f64,
    pub charge_s: f64,
    /// How much later, in all, the vehicles already promised at the station would
    /// start (only at a station that does not hold reservations), seconds.
    pub delay_s: f64,
    /// Its place in the station's plan (fog clock, ms).
    pub key_ms: u64,
}

impl Choice {
    /// What choosing it costs: the vehicle's own time plus the delay it causes.
    pub fn total_s(&self) -> f64 {
        self.eta_s + self.wait_s + self.charge_s + self.delay_s
    }
}

/// Why no station was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum NoChoice {
    /// No in-service station within the vehicle's safe range.
    NothingReachable { range_km: f64 },
    /// Stations are reachable, but every one waits longer than `max_wait_s`.
    TooSlow { best: Choice },
}

/// Why a reservation could not be ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReservationError {
    #[error("unknown or already ended reservation")]
    Unknown,
    #[error("reservation belongs to another vehicle")]
    NotYours,
}

/// A reservation's entry in its station's plan.
#[derive(Debug, Clone, PartialEq)]
struct Promise {
    key_ms: u64,
    seq: u64,
    arrival_ms: u64,
    charge_s: u32,
    id: String,
}

/// A charging session in progress, as the planner estimates it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Session {
    /// Expected end (fog clock, ms).
    end_ms: u64,
    /// Known from a reservation's own charge time (not a typical session).
    precise: bool,
    /// When the planner learnt of it.
    since_ms: u64,
}

/// Where a new vehicle would go in a station's plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Insertion {
    pub wait_s: f64,
    pub delay_s: f64,
    pub key_ms: u64,
}

/// The planner: stations, their plans, and the cost model.
#[derive(Debug, Default)]
pub struct Planner {
    pub params: PlannerParams,
    pub stations: StationIndex,
    reservations: HashMap<String, Reservation>,
    /// Per station slot (indexed by slot, grown on demand): the reservations promised
    /// there, in plan order (`key_ms`, `seq`).
    promised: Vec<Vec<Promise>>,
    /// Per station slot: the sessions in progress (as many as it reports occupied),
    /// `None` before its first status was noted.
    sessions: Vec<Option<Vec<Session>>>,
    /// Per vehicle: its one active reservation.
    by_vehicle: HashMap<String, String>,
    next_seq: u64,
    /// Reservations made, updated and ended since [`take_changes`](Self::take_changes),
    /// for the state store and the stations.
    changes: Vec<ReservationChange>,
    /// Nobody reads the changes (no state store): don't keep them.
    changes_unread: bool,
}

/// A change to the set of reservations.
#[derive(Debug, Clone, PartialEq)]
pub enum ReservationChange {
    Made(Reservation),
    /// Re-planned: a new start and expiry (same station, same place in its plan).
    Updated(Reservation),
    Ended(String),
}

/// The index of the first smallest time.
fn first_min(times: &[f64]) -> usize {
    let mut first = 0;
    for (i, t) in times.iter().enumerate().skip(1) {
        if *t < times[first] {
            first = i;
        }
    }
    first
}

/// The next vehicle takes the charger that frees first: its start (seconds from now).
fn take(free: &mut [f64], arrival_s: f64, duration_s: f64) -> f64 {
    let i = first_min(free);
    let start = free[i].max(arrival_s);
    free[i] = start + duration_s;
    start
}

/// Seconds from `now_ms` to `at_ms` (0 for the past).
fn secs_from(now_ms: u64, at_ms: u64) -> f64 {
    at_ms.saturating_sub(now_ms) as f64 / 1000.0
}

impl Planner {
    pub fn new(params: PlannerParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    /// When each charger of a station is free, seconds from `now_ms` (for a plain
    /// station with its walk-in queue served first), before any reservation.
    fn free_times(&self, slot: Slot, station: &Station, now_ms: u64) -> Vec<f64> {
        let chargers = station.chargers as usize;
        let busy = (station.occupied as usize).min(chargers);
        let session = session_s(self.params.session_kwh, station.power_kw);
        let overrun = f64::from(self.params.overrun_s).min(session);
        let mut free = vec![0.0; chargers];
        let known: &[Session] = self
            .sessions
            .get(slot)
            .and_then(Option::as_deref)
            .unwrap_or(&[]);
        // The latest-ending known sessions, then half a session for any unknown one.
        let mut ends: Vec<f64> = known
            .iter()
            .map(|s| {
                if s.end_ms <= now_ms {
                    overrun
                } else {
                    secs_from(now_ms, s.end_ms)
                }
            })
            .collect();
        ends.sort_by(f64::total_cmp);
        let from_known = ends.len().min(busy);
        let mut busy_ends: Vec<f64> = ends[ends.len() - from_known..].to_vec();
        busy_ends.resize(busy, session / 2.0);
        for (slot_free, end) in free[chargers - busy..].iter_mut().zip(busy_ends) {
            *slot_free = end;
        }
        if !station.holds && chargers > 0 {
            for _ in 0..station.queue {
                take(&mut free, 0.0, session);
            }
        }
        free
    }

    fn promises(&self, slot: Slot) -> &[Promise] {
        self.promised.get(slot).map_or(&[], Vec::as_slice)
    }

    /// The station's plan now: when each reservation there starts (seconds from
    /// `now_ms`, in plan order), and the chargers' free times before them.
    fn plan(&self, slot: Slot, station: &Station, now_ms: u64) -> (Vec<f64>, Vec<f64>) {
        let free = self.free_times(slot, station, now_ms);
        let promises = self.promises(slot);
        if free.is_empty() {
            return (
                free,
                promises
                    .iter()
                    .map(|p| secs_from(now_ms, p.arrival_ms))
                    .collect(),
            );
        }
        let mut state = free.clone();
        let starts = promises
            .iter()
            .map(|p| {
                take(
                    &mut state,
                    secs_from(now_ms, p.arrival_ms),
                    f64::from(p.charge_s),
                )
            })
            .collect();
        (free, starts)
    }

    /// Where a vehicle arriving `eta_s` from `now_ms` and charging `charge_s` would go
    /// in the station's plan, and its wait there.
    pub fn insertion(
        &self,
        slot: Slot,
        station: &Station,
        now_ms: u64,
        eta_s: f64,
        charge_s: f64,
    ) -> Insertion {
        let at_ms = |s: f64| now_ms + (s * 1000.0) as u64;
        let (free, base) = self.plan(slot, station, now_ms);
        let promises = self.promises(slot);
        if free.is_empty() {
            // No charger at all (not in service in practice): nothing to wait for.
            return Insertion {
                wait_s: 0.0,
                delay_s: 0.0,
                key_ms: at_ms(eta_s),
            };
        }
        let n = promises.len();
        // Later reservations start from `state` (the plan before place `k`) once the
        // new vehicle took the first free charger at `start`: how much later they
        // start than in `base`, in all (`None` on the first delay when `strict`).
        let delays = |state: &[f64], k: usize, start: f64, strict: bool| -> Option<f64> {
            let mut state = state.to_vec();
            let i = first_min(&state);
            state[i] = start + charge_s;
            let mut delay = 0.0;
            for (p, before) in promises[k..].iter().zip(&base[k..]) {
                let s = take(
                    &mut state,
                    secs_from(now_ms, p.arrival_ms),
                    f64::from(p.charge_s),
                );
                if s > before + 1e-6 {
                    if strict {
                        return None;
                    }
                    delay += s - before;
                }
            }
            Some(delay)
        };
        let mut state = free;
        if !station.holds {
            // First come, first served: its place is its arrival.
            let arrival = at_ms(eta_s);
            let k = promises.partition_point(|p| p.key_ms <= arrival);
            for p in &promises[..k] {
                take(
                    &mut state,
                    secs_from(now_ms, p.arrival_ms),
                    f64::from(p.charge_s),
                );
            }
            let start = state[first_min(&state)].max(eta_s);
            let delay_s = delays(&state, k, start, false).unwrap_or(0.0);
            return Insertion {
                wait_s: start - eta_s,
                delay_s,
                key_ms: arrival,
            };
        }
        let mut best: Option<(f64, u64)> = None;
        for k in 0..=n {
            let start = state[first_min(&state)].max(eta_s);
            // Later places only start later: the earliest free time never goes down.
            if best.is_some_and(|(b, _)| start >= b) {
                break;
            }
            let low = if k == 0 { 0 } else { promises[k - 1].key_ms };
            let key = if k == n {
                Some(at_ms(start).max(low))
            } else {
                // Strictly before the next one (a new reservation comes last among
                // equal keys).
                let high = promises[k].key_ms;
                (high > low).then(|| at_ms(start).clamp(low, high - 1))
            };
            if let Some(key) = key {
                if k == n || delays(&state, k, start, true).is_some() {
                    best = Some((start, key));
                }
            }
            if k < n {
                let p = &promises[k];
                take(
                    &mut state,
                    secs_from(now_ms, p.arrival_ms),
                    f64::from(p.charge_s),
                );
            }
        }
        let (start, key_ms) = best.unwrap_or((eta_s, at_ms(eta_s)));
        Insertion {
            wait_s: start - eta_s,
            delay_s: 0.0,
            key_ms,
        }
    }

    /// Predicted wait, seconds, for a vehicle arriving `eta_s` from `now_ms` with a
    /// typical session (what the aggregate and the API show).
    pub fn expected_wait_s(&self, slot: Slot, station: &Station, now_ms: u64, eta_s: f64) -> f64 {
        let session = session_s(self.params.session_kwh, station.power_kw);
        self.insertion(slot, station, now_ms, eta_s, session).wait_s
    }

    /// When each reservation at a station starts in its plan now (fog clock, ms), in
    /// plan order.
    pub fn planned_starts(&self, slot: Slot, now_ms: u64) -> Vec<(String, u64)> {
        let Some(station) = self.stations.get(slot) else {
            return Vec::new();
        };
        let (_, starts) = self.plan(slot, station, now_ms);
        self.promises(slot)
            .iter()
            .zip(starts)
            .map(|(p, s)| (p.id.clone(), now_ms + (s * 1000.0) as u64))
            .collect()
    }

    /// The reservations at a station whose start in the plan now waits for a charger
    /// (not for their vehicle to arrive): `(id, start ms)`, in plan order. A vehicle
    /// that is late itself only holds its charger idle; its wait does not grow.
    pub fn waiting_for_chargers(&self, slot: Slot, now_ms: u64) -> Vec<(String, u64)> {
        let Some(station) = self.stations.get(slot) else {
            return Vec::new();
        };
        let mut state = self.free_times(slot, station, now_ms);
        if state.is_empty() {
            return Vec::new();
        }
        self.promises(slot)
            .iter()
            .filter_map(|p| {
                let arrival = secs_from(now_ms, p.arrival_ms);
                let free = state[first_min(&state)];
                let start = take(&mut state, arrival, f64::from(p.charge_s));
                (free > arrival + 1.0).then(|| (p.id.clone(), now_ms + (start * 1000.0) as u64))
            })
            .collect()
    }

    /// Stations that have reservations, in slot order.
    pub fn slots_with_reservations(&self) -> Vec<Slot> {
        (0..self.promised.len())
            .filter(|&slot| !self.promised[slot].is_empty())
            .collect()
    }

    /// The best station for a request, without reserving it.
    pub fn choose(&self, req: &ChargeRequest, now_ms: u64) -> Result<Choice, NoChoice> {
        self.choose_for(&Vehicle::from(req), now_ms, None)
    }

    /// The best station for a vehicle (as it is at `now_ms`), without reserving it;
    /// `except` is never chosen.
    pub fn choose_for(
        &self,
        vehicle: &Vehicle,
        now_ms: u64,
        except: Option<Slot>,
    ) -> Result<Choice, NoChoice> {
        let p = &self.params;
        let cost = &p.cost;
        let range_km = cost.usable_range_km(vehicle);
        let max_power = self.stations.max_power_kw().max(f64::MIN_POSITIVE);
        let mut best: Option<Choice> = None;
        let mut best_too_slow: Option<Choice> = None;
        for (slot, station, gc_km) in self
            .stations
            .nearest(vehicle.lat, vehicle.lon)
            .take(p.max_candidates)
        {
            let road_km = cost.road_km(gc_km);
            if road_km > range_km {
                break;
            }
            if except == Some(slot) {
                continue;
            }
            let eta_s = cost.drive_s(road_km);
            // No farther station can beat the best: it drives longer and charges at
            // best at the highest power in the region.
            if let Some(b) = &best {
                if eta_s + vehicle.charge_s(road_km, max_power) >= b.total_s() {
                    break;
                }
            }
            let charge_s = vehicle.charge_s(road_km, station.power_kw);
            // Nor can this one, even without any wait or delay.
            if best
                .as_ref()
                .is_some_and(|b| eta_s + charge_s >= b.total_s())
            {
                continue;
            }
            let ins = self.insertion(slot, station, now_ms, eta_s, charge_s.ceil());
            let choice = Choice {
                slot,
                road_km,
                eta_s,
                wait_s: ins.wait_s,
                charge_s,
                delay_s: ins.delay_s,
                key_ms: ins.key_ms,
            };
            let target = if cost.accepts_wait(choice.wait_s) {
                &mut best
            } else {
                &mut best_too_slow
            };
            if target
                .as_ref()
                .is_none_or(|b| choice.total_s() < b.total_s())
            {
                *target = Some(choice);
            }
        }
        match (best, best_too_slow) {
            (Some(best), _) => Ok(best),
            (None, Some(best)) => Err(NoChoice::TooSlow { best }),
            (None, None) => Err(NoChoice::NothingReachable { range_km }),
        }
    }

    /// Promises a slot to `vehicle_id` per `choice`, replacing the vehicle's earlier
    /// reservation if it had one (a vehicle goes to one station at a time). `trip`
    /// lets the region plan the vehicle again later.
    pub fn reserve(
        &mut self,
        reservation_id: String,
        vehicle_id: &str,
        choice: &Choice,
        now_ms: u64,
        trip: Option<Trip>,
    ) -> Option<&Reservation> {
        let station_id = self.stations.get(choice.slot)?.station_id.clone();
        if let Some(previous) = self.by_vehicle.remove(vehicle_id) {
            self.release(&previous);
        }
        let arrival_ms = now_ms + (choice.eta_s * 1000.0) as u64;
        let start_ms = arrival_ms + (choice.wait_s.max(0.0) * 1000.0) as u64;
        self.next_seq += 1;
        let reservation = Reservation {
            reservation_id: reservation_id.clone(),
            vehicle_id: vehicle_id.to_owned(),
            station_id,
            slot: choice.slot,
            arrival_ms,
            charge_s: choice.charge_s.ceil() as u32,
            expires_ms: start_ms + u64::from(self.params.reservation_grace_s) * 1000,
            start_ms,
            key_ms: choice.key_ms,
            seq: self.next_seq,
            trip,
        };
        self.insert(reservation.clone());
        if !self.changes_unread {
            self.changes.push(ReservationChange::Made(reservation));
        }
        self.reservations.get(&reservation_id)
    }

    /// Adds a reservation to its station's plan and the maps.
    fn insert(&mut self, reservation: Reservation) {
        let list = self.promised_mut(reservation.slot);
        let at =
            list.partition_point(|p| (p.key_ms, p.seq) <= (reservation.key_ms, reservation.seq));
        list.insert(
            at,
            Promise {
                key_ms: reservation.key_ms,
                seq: reservation.seq,
                arrival_ms: reservation.arrival_ms,
                charge_s: reservation.charge_s,
                id: reservation.reservation_id.clone(),
            },
        );
        self.by_vehicle.insert(
            reservation.vehicle_id.clone(),
            reservation.reservation_id.clone(),
        );
        self.reservations
            .insert(reservation.reservation_id.clone(), reservation);
    }

    /// Puts back a reservation saved before a restart, at its station's slot now (the
    /// station must be known). Replaces nothing: a vehicle that meanwhile got another
    /// reservation keeps that one.
    pub fn restore(&mut self, mut reservation: Reservation) -> bool {
        let Some(slot) = self.stations.slot_of(&reservation.station_id) else {
            return false;
        };
        if self.reservations.contains_key(&reservation.reservation_id)
            || self.by_vehicle.contains_key(&reservation.vehicle_id)
        {
            return false;
        }
        reservation.slot = slot;
        if reservation.start_ms == 0 {
            reservation.start_ms = reservation.arrival_ms;
        }
        if reservation.key_ms == 0 {
            reservation.key_ms = reservation.start_ms;
        }
        if reservation.seq == 0 {
            self.next_seq += 1;
            reservation.seq = self.next_seq;
        }
        self.next_seq = self.next_seq.max(reservation.seq);
        self.insert(reservation);
        true
    }

    /// Tells the plan that a reservation now starts at `start_ms` (the vehicle is told
    /// so): its expiry moves with it. Returns the reservation as updated.
    pub fn replanned(&mut self, reservation_id: &str, start_ms: u64) -> Option<&Reservation> {
        let grace = u64::from(self.params.reservation_grace_s) * 1000;
        let r = self.reservations.get_mut(reservation_id)?;
        r.start_ms = start_ms;
        r.expires_ms = start_ms.max(r.arrival_ms) + grace;
        if !self.changes_unread {
            self.changes.push(ReservationChange::Updated(r.clone()));
        }
        self.reservations.get(reservation_id)
    }

    /// The reservations made, updated and ended since the last call.
    pub fn take_changes(&mut self) -> Vec<ReservationChange> {
        std::mem::take(&mut self.changes)
    }

    /// Whether [`take_changes`](Self::take_changes) is used (default: yes). Without a
    /// reader, the changes are not kept at all (saves copying every reservation).
    pub fn keep_changes(&mut self, keep: bool) {
        self.changes_unread = !keep;
        if !keep {
            self.changes = Vec::new();
        }
    }

    /// Ends a reservation on the vehicle's word (`arrived` or `cancel`).
    pub fn end(
        &mut self,
        reservation_id: &str,
        vehicle_id: &str,
    ) -> Result<Reservation, ReservationError> {
        match self.reservations.get(reservation_id) {
            None => Err(ReservationError::Unknown),
            Some(r) if r.vehicle_id != vehicle_id => Err(ReservationError::NotYours),
            Some(_) => self
                .release(reservation_id)
                .ok_or(ReservationError::Unknown),
        }
    }

    /// A reservation's vehicle started charging at its station: its session ends after
    /// its own charge time (it takes the place of a just-noted session of unknown
    /// length, if the station's status came first).
    pub fn note_started(&mut self, slot: Slot, charge_s: u32, now_ms: u64) {
        let session = Session {
            end_ms: now_ms + u64::from(charge_s) * 1000,
            precise: true,
            since_ms: now_ms,
        };
        let Some(list) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match list
            .iter()
            .position(|s| !s.precise && now_ms.saturating_sub(s.since_ms) <= RECENT_MS)
        {
            Some(i) => list[i] = session,
            None => list.push(session),
        }
    }

    /// Brings the sessions in progress at a station in line with the occupancy its
    /// status just gave (after [`StationIndex::apply`]): sessions that ended are the
    /// ones expected to end first; new ones are a typical session (half of one at a
    /// station just heard of for the first time).
    pub fn note_status(&mut self, slot: Slot, now_ms: u64) {
        let Some(station) = self.stations.get(slot) else {
            return;
        };
        let occupied = station.occupied.min(station.chargers) as usize;
        let session_ms = (session_s(self.params.session_kwh, station.power_kw) * 1000.0) as u64;
        if self.sessions.len() <= slot {
            self.sessions.resize_with(slot + 1, || None);
        }
        let first = self.sessions[slot].is_none();
        let list = self.sessions[slot].get_or_insert_with(Vec::new);
        while list.len() > occupied {
            let earliest = first_min_by_end(list);
            list.swap_remove(earliest);
        }
        while list.len() < occupied {
            list.push(Session {
                end_ms: now_ms + if first { session_ms / 2 } else { session_ms },
                precise: false,
                since_ms: now_ms,
            });
        }
    }

    fn release(&mut self, reservation_id: &str) -> Option<Reservation> {
        let r = self.reservations.remove(reservation_id)?;
        if !self.changes_unread {
            self.changes
                .push(ReservationChange::Ended(reservation_id.to_owned()));
        }
        if let Some(list) = self.promised.get_mut(r.slot) {
            list.retain(|p| p.id != reservation_id);
            if list.is_empty() {
                // Give the memory back.
                *list = Vec::new();
            }
        }
        if self
            .by_vehicle
            .get(&r.vehicle_id)
            .is_some_and(|id| id == reservation_id)
        {
            self.by_vehicle.remove(&r.vehicle_id);
        }
        Some(r)
    }

    /// Takes a reservation out of its plan (to plan its vehicle again); put it back
    /// with [`Planner::put_back`] to keep it as it was.
    pub fn take_out(&mut self, reservation_id: &str) -> Option<Reservation> {
        let keep = self.changes_unread;
        self.changes_unread = true;
        let r = self.release(reservation_id);
        self.changes_unread = keep;
        r
    }

    /// Puts back a reservation taken out by [`Planner::take_out`], at its old place.
    pub fn put_back(&mut self, reservation: Reservation) {
        self.insert(reservation);
    }

    /// Ends a reservation taken out by [`Planner::take_out`] for good.
    pub fn ended_elsewhere(&mut self, reservation_id: &str) {
        if !self.changes_unread {
            self.changes
                .push(ReservationChange::Ended(reservation_id.to_owned()));
        }
    }

    /// Ends every reservation whose time is up; returns them (in id order).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Reservation> {
        let mut due: Vec<String> = self
            .reservations
            .values()
            .filter(|r| r.expires_ms <= now_ms)
            .map(|r| r.reservation_id.clone())
            .collect();
        due.sort_unstable();
        due.iter().filter_map(|id| self.release(id)).collect()
    }

    /// The reservations at a station, in plan order, taken out of the plan (the
    /// station went out of service or away): the region plans their vehicles again.
    pub fn take_station(&mut self, slot: Slot) -> Vec<Reservation> {
        let ids: Vec<String> = self.promises(slot).iter().map(|p| p.id.clone()).collect();
        if let Some(Some(list)) = self.sessions.get_mut(slot) {
            list.clear();
        }
        ids.iter().filter_map(|id| self.take_out(id)).collect()
    }

    /// Ends every reservation at a station (it was removed from the region).
    pub fn release_station(&mut self, slot: Slot) -> usize {
        let ids: Vec<String> = self.promises(slot).iter().map(|p| p.id.clone()).collect();
        if let Some(entry) = self.sessions.get_mut(slot) {
            *entry = None;
        }
        ids.iter().filter_map(|id| self.release(id)).count()
    }

    pub fn reservation(&self, reservation_id: &str) -> Option<&Reservation> {
        self.reservations.get(reservation_id)
    }

    /// The vehicle's active reservation, if it has one.
    pub fn reservation_of(&self, vehicle_id: &str) -> Option<&Reservation> {
        self.reservations.get(self.by_vehicle.get(vehicle_id)?)
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// Active reservations at a station.
    pub fn promised_at(&self, slot: Slot) -> usize {
        self.promises(slot).len()
    }

    /// The promises at a slot, the table grown to hold it.
    fn promised_mut(&mut self, slot: Slot) -> &mut Vec<Promise> {
        if self.promised.len() <= slot {
            self.promised.resize_with(slot + 1, Vec::new);
        }
        &mut self.promised[slot]
    }

    pub fn active_reservations(&self) -> usize {
        self.reservations.len()
    }
}

/// A session noted this recently without a known length may be the one a reservation
/// just started (the station's status and the vehicle's start can come in any order).
const RECENT_MS: u64 = 60_000;

/// The index of the session that ends first.
fn first_min_by_end(list: &[Session]) -> usize {
    let mut first = 0;
    for (i, s) in list.iter().enumerate().skip(1) {
        if s.end_ms < list[first].end_ms {
            first = i;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    //! The plan against hand-worked cases, and the promise property: a later
    //! reservation never makes an earlier one start later.

    use super::*;
    use crate::index::StationIndex;
    use proptest::prelude::*;
    use protocol::StationState;
    use protocol::geo::unit_vector;

    const NOW: u64 = 1_750_000_000_000;

    fn station(id: &str, lat: f64, chargers: u32, holds: bool) -> Station {
        Station {
            station_id: id.into(),
            lat,
            lon: 0.0,
            unit: unit_vector(lat, 0.0),
            chargers,
            power_kw: 50.0,
            occupied: 0,
            queue: 0,
            state: StationState::Available,
            updated_ms: NOW,
            holds,
        }
    }

    fn planner(stations: Vec<Station>) -> Planner {
        let mut p = Planner::new(PlannerParams::default());
        p.stations = StationIndex::bulk_load(stations);
        p
    }

    /// Reserves at slot 0 for a vehicle arriving `eta_s` from `now` and charging
    /// `charge_s`; returns its wait.
    fn book(p: &mut Planner, id: &str, now: u64, eta_s: f64, charge_s: f64) -> f64 {
        let station = p.stations.get(0).unwrap().clone();
        let ins = p.insertion(0, &station, now, eta_s, charge_s);
        let choice = Choice {
            slot: 0,
            road_km: 1.0,
            eta_s,
            wait_s: ins.wait_s,
            charge_s,
            delay_s: ins.delay_s,
            key_ms: ins.key_ms,
        };
        p.reserve(id.into(), &format!("car-{id}"), &choice, now, None);
        ins.wait_s
    }

    fn start_of(p: &Planner, id: &str, now: u64) -> u64 {
        p.planned_starts(0, now)
            .into_iter()
            .find(|(r, _)| r == id)
            .map(|(_, s)| s)
            .unwrap()
    }

    #[test]
    fn a_vehicle_that_asks_later_but_arrives_earlier_does_not_jump_the_queue() {
        let mut p = planner(vec![station("s", 0.0, 1, true)]);
        assert_eq!(book(&mut p, "a", NOW, 600.0, 1800.0), 0.0);
        // Arriving at 300 s it would keep the charger until 2,100 s: a's start (600 s)
        // would slip. It goes after a, and is told so.
        assert_eq!(book(&mut p, "b", NOW, 300.0, 1800.0), 2100.0);
        assert_eq!(start_of(&p, "a", NOW), NOW + 600_000);
        assert_eq!(start_of(&p, "b", NOW), NOW + 2_400_000);
        assert_eq!(p.reservation("b").unwrap().start_ms, NOW + 2_400_000);
        assert_eq!(
            p.reservation("b").unwrap().expires_ms,
            NOW + 2_400_000 + 600_000,
            "it expires after its planned start, not after its arrival"
        );
    }

    #[test]
    fn a_vehicle_that_fits_before_a_later_promise_takes_the_gap() {
        let mut p = planner(vec![station("s", 0.0, 1, true)]);
        assert_eq!(book(&mut p, "a", NOW, 3600.0, 1800.0), 0.0);
        assert_eq!(
            book(&mut p, "b", NOW, 300.0, 1200.0),
            0.0,
            "done by 1,500 s"
        );
        assert_eq!(start_of(&p, "a", NOW), NOW + 3_600_000);
        let (a, b) = (p.reservation("a").unwrap(), p.reservation("b").unwrap());
        assert!(
            (b.key_ms, b.seq) < (a.key_ms, a.seq),
            "b comes first in the plan"
        );
    }

    #[test]
    fn at_a_first_come_first_served_station_the_delay_counts_in_the_cost() {
        let mut p = planner(vec![station("s", 0.0, 1, false)]);
        assert_eq!(book(&mut p, "a", NOW, 600.0, 1800.0), 0.0);
        let station = p.stations.get(0).unwrap().clone();
        let ins = p.insertion(0, &station, NOW, 300.0, 1800.0);
        assert_eq!(ins.wait_s, 0.0, "it arrives first and is served first");
        assert_eq!(
            ins.delay_s, 1500.0,
            "a then starts at 2,100 s instead of 600 s"
        );
    }

    #[test]
    fn sessions_in_progress_and_walk_ins_come_first() {
        let mut st = station("s", 0.0, 2, false);
        st.occupied = 2;
        st.queue = 1;
        let mut p = planner(vec![st]);
        p.note_status(0, NOW);
        // A session of 40 kWh at 50 kW is 2,880 s; unknown ones are half-way (1,440 s);
        // the walk-in takes the first charger to free until 4,320 s; the second frees
        // at 1,440 s.
        assert_eq!(
            p.expected_wait_s(0, p.stations.get(0).unwrap(), NOW, 0.0),
            1440.0
        );
        // The same station holding reservations: walk-ins wait for unheld chargers.
        p.stations.get_mut(0).unwrap().holds = true;
        assert_eq!(
            p.expected_wait_s(0, p.stations.get(0).unwrap(), NOW, 0.0),
            1440.0
        );
        let mut p2 = planner(vec![{
            let mut s = station("s", 0.0, 1, true);
            s.occupied = 1;
            s.queue = 3;
            s
        }]);
        p2.note_status(0, NOW);
        assert_eq!(
            p2.expected_wait_s(0, p2.stations.get(0).unwrap(), NOW, 0.0),
            1440.0
        );
    }

    #[test]
    fn a_started_reservation_ends_after_its_own_charge_and_an_overrun_is_noticed() {
        let mut st = station("s", 0.0, 1, true);
        let mut p = planner(vec![st.clone()]);
        p.note_status(0, NOW);
        st.occupied = 1;
        *p.stations.get_mut(0).unwrap() = st;
        p.note_status(0, NOW);
        p.note_started(0, 600, NOW + 1000);
        let wait = |p: &Planner, now| p.expected_wait_s(0, p.stations.get(0).unwrap(), now, 0.0);
        assert_eq!(
            wait(&p, NOW + 1000),
            600.0,
            "its own 600 s, not a typical session"
        );
        // Still occupied after its expected end: it ran over.
        assert_eq!(wait(&p, NOW + 1000 + 900_000), 120.0);
    }

    #[test]
    fn replanning_moves_the_start_and_the_expiry_and_says_so() {
        let mut p = planner(vec![station("s", 0.0, 1, true)]);
        book(&mut p, "a", NOW, 600.0, 1800.0);
        p.take_changes();
        let r = p.replanned("a", NOW + 1_800_000).unwrap().clone();
        assert_eq!(r.start_ms, NOW + 1_800_000);
        assert_eq!(r.expires_ms, NOW + 2_400_000);
        assert_eq!(p.take_changes(), vec![ReservationChange::Updated(r)]);
    }

    #[test]
    fn expired_reservations_come_out_in_id_order() {
        let mut p = planner(vec![station("s", 0.0, 3, true)]);
        for id in ["c", "a", "b"] {
            book(&mut p, id, NOW, 0.0, 60.0);
        }
        let ids: Vec<String> = p
            .expire(NOW + 3_600_000)
            .into_iter()
            .map(|r| r.reservation_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A request: arrives `eta` s from now, charges `charge` s.
        Request { eta: u32, charge: u32 },
        /// The `i`-th live reservation (mod their number) ends: arrived or cancelled.
        End { i: usize },
        /// Time passes.
        Wait { s: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..7200, 60u32..5400).prop_map(|(eta, charge)| Op::Request { eta, charge }),
            2 => (0usize..64).prop_map(|i| Op::End { i }),
            1 => (1u32..1200).prop_map(|s| Op::Wait { s }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the requests, ends and the passing of time, a new reservation
        /// never makes an earlier promise start later, and an ending one never does
        /// either (chargers free, nothing else happening at the station).
        #[test]
        fn a_later_reservation_never_makes_an_earlier_promise_later(
            chargers in 1u32..5,
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let mut p = planner(vec![station("s", 0.0, chargers, true)]);
            p.note_status(0, NOW);
            let mut now = NOW;
            let mut live: Vec<String> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let before: HashMap<String, u64> = p.planned_starts(0, now).into_iter().collect();
                match op {
                    Op::Request { eta, charge } => {
                        let id = format!("r{n}");
                        let wait = book(&mut p, &id, now, f64::from(eta), f64::from(charge));
                        let start = start_of(&p, &id, now);
                        // Its promise is the plan's start.
                        prop_assert!(start.abs_diff(now + u64::from(eta) * 1000 + (wait * 1000.0) as u64) <= 1);
                        live.push(id);
                    }
                    Op::End { i } if !live.is_empty() => {
                        let id = live.remove(i % live.len());
                        let vehicle = format!("car-{id}");
                        prop_assert!(p.end(&id, &vehicle).is_ok());
                    }
                    Op::End { .. } => {}
                    // Time passing is reality, not a reservation: a vehicle that should
                    // have arrived and did not start yet moves its followers; the
                    // region re-plans for that (not checked here).
                    Op::Wait { s } => {
                        now += u64::from(s) * 1000;
                        continue;
                    }
                }
                for (id, start) in p.planned_starts(0, now) {
                    if let Some(old) = before.get(&id) {
                        prop_assert!(start <= *old + 1, "{id}: {old} -> {start}");
                    }
                }
            }
        }
    }
}
