//! What the simulated devices do with a strategy, whatever carries their messages: the
//! pure part of a run, shared by the run over MQTT on the wall clock
//! ([`run`](mod@crate::run)) and the run in one process on the simulated clock
//! ([`inproc`](crate::inproc)).
//!
//! A [`Driver`] owns the [`Sim`] and everything the vehicles decide: their requests
//! (a new id each time, the round trips of those answered), the answers they follow
//! or — for the drivers who do not follow (`--compliance`) — cancel, revised answers
//! (ask again once, then drive on without a reservation), requests nobody answers in
//! time (asked once more, then the nearest station), the naive strategies, the
//! stations' side of the fog's reservations (with the server strategies the simulated
//! stations take reservations: they hold what the fog reserves, answer `accepted` or
//! `rejected`, and say `arrived` when a holder starts charging), the promises (each
//! followed answer's `wait_s` against the wait the vehicle then had), and the
//! report's counters. It does no I/O and reads no clock: the shell hands it answers,
//! messages for stations, the real time (ms since the run started: the round trips
//! and the answer timeout are real time, as in the local run) and the world's steps,
//! and sends the [`Out`] messages it returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use protocol::validate::MAX_REASON_LEN;
use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, ReservationAction, ReservationUpdate,
    StationReservation, StationReservationAction, StationReservationEvent,
    StationReservationEventKind, Telemetry, id_tag_for_vehicle, topics,
};
use tracing::{debug, info, warn};

use crate::report::{self, StrategyReport};
use crate::run::{Strategy, followers};
use crate::sim::{Event, Phase, Reservation, Sim};
use crate::world::World;

/// A message the devices send.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A vehicle's message, through the fleet connection of `region` (the region it is
    /// in, or the one that holds its reservation).
    Fleet {
        region: String,
        topic: String,
        payload: Vec<u8>,
        qos: i32,
    },
    /// Station `s`'s occupancy changed: its status goes out (retained, QoS 1; see
    /// [`Driver::status_message`]).
    Status(usize),
    /// Station `station`'s answer about a reservation (`…/reservation-events`, QoS 1).
    Station {
        station: usize,
        topic: String,
        payload: Vec<u8>,
    },
}

/// Requests waiting for the fog's answer, and the round trips of those answered.
#[derive(Default)]
struct Requests {
    /// By vehicle (ordered: requests that time out together are asked again in the
    /// same order every run).
    pending: BTreeMap<usize, Pending>,
    seq: u64,
    rtts: Vec<f64>,
    /// The answer (with a reservation) each vehicle follows now.
    followed: HashMap<usize, Followed>,
    /// Vehicles asking again after a revision, and those whose latest request was such
    /// a second try (a second revision does not make them ask a third time).
    reasking: HashSet<usize>,
    second_try: HashSet<usize>,
}

/// An answer a vehicle follows, until it starts charging.
struct Followed {
    request_id: String,
    /// The wait it promised (its latest revision's), s.
    wait_s: Option<f64>,
    /// It sends the vehicle to another region (counted once in the report).
    rerouted: bool,
}

struct Pending {
    request_id: String,
    /// Real ms since the run started.
    sent_ms: f64,
    retried: bool,
}

impl Requests {
    /// The vehicle an answer is for, when it answers that vehicle's pending request
    /// (which then ends, its round trip recorded).
    fn answered(&mut self, v: usize, request_id: &str, real_ms: f64) -> bool {
        if self
            .pending
            .get(&v)
            .is_none_or(|p| p.request_id != request_id)
        {
            return false;
        }
        if let Some(p) = self.pending.remove(&v) {
            self.rtts.push(real_ms - p.sent_ms);
        }
        true
    }

    /// Whether a revised answer revises the answer vehicle `v` follows now (a station
    /// refused the reservation); it then follows none.
    fn revision(&mut self, v: usize, answer: &Recommendation) -> bool {
        answer.revised
            && self
                .followed
                .get(&v)
                .is_some_and(|f| f.request_id == answer.request_id)
    }
}

/// One strategy's run over a world, without the transport.
pub struct Driver<'w> {
    pub world: &'w World,
    pub sim: Sim<'w>,
    strategy: Strategy,
    follows: Vec<bool>,
    asked: Vec<bool>,
    requests: Requests,
    report: StrategyReport,
    vehicle_index: HashMap<&'w str, usize>,
    station_index: HashMap<&'w str, usize>,
    /// Each vehicle by the `id_tag` the fog names it by at stations.
    id_tags: HashMap<String, usize>,
    /// (promised, actual) waits of the vehicles that followed an answer, s.
    promises: Vec<(f64, f64)>,
    answer_timeout_ms: f64,
    /// Vehicles say `arrived` themselves (not when an OCPP charge point reports the
    /// start of the transaction instead).
    vehicles_say_arrived: bool,
}

impl<'w> Driver<'w> {
    /// `strategy` over `world`, starting at simulated time `start_ms`; a request not
    /// answered within `answer_timeout` (real time) is asked once more, then the
    /// vehicle drives to the nearest station.
    pub fn new(
        world: &'w World,
        strategy: Strategy,
        start_ms: f64,
        answer_timeout: Duration,
    ) -> Self {
        let scenario = &world.scenario;
        let mut sim = Sim::new(world, start_ms);
        // The server strategies' stations hold what the fog reserves there.
        sim.set_takes_reservations(strategy.asks_server());
        Self {
            world,
            sim,
            strategy,
            follows: followers(world.vehicles.len(), scenario.compliance, scenario.seed),
            asked: vec![false; world.vehicles.len()],
            requests: Requests::default(),
            report: StrategyReport {
                sim_hours: scenario.hours,
                ..StrategyReport::default()
            },
            vehicle_index: world
                .vehicles
                .iter()
                .enumerate()
                .map(|(i, v)| (v.id.as_str(), i))
                .collect(),
            station_index: world
                .stations
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i))
                .collect(),
            id_tags: world
                .vehicles
                .iter()
                .enumerate()
                .map(|(i, v)| (id_tag_for_vehicle(&v.id), i))
                .collect(),
            promises: Vec::new(),
            answer_timeout_ms: answer_timeout.as_secs_f64() * 1000.0,
            vehicles_say_arrived: true,
        }
    }

    /// The stations are OCPP charge points: the gateway and the charge points hold
    /// the reservations and report a vehicle's arrival on one (StartTransaction with
    /// the reservation), not the simulated stations, and vehicles don't say `arrived`.
    pub fn ocpp_stations(&mut self) {
        self.vehicles_say_arrived = false;
        self.sim.set_takes_reservations(false);
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The counters so far.
    pub fn report(&self) -> &StrategyReport {
        &self.report
    }

    /// Every station's status, once, before the first vehicle moves.
    pub fn announce(&mut self) -> Vec<Out> {
        self.sim.announce_stations();
        let mut out = Vec::new();
        self.react(0.0, &mut out);
        out
    }

    /// Station `s`'s status message now (naming `gateway` when one speaks for it):
    /// topic and payload.
    pub fn status_message(&self, s: usize, gateway: Option<&str>) -> (String, Vec<u8>) {
        let spec = &self.world.stations[s];
        let region = &self.world.regions.areas[spec.region].id;
        let msg = self.sim.station_status(s, gateway);
        (
            topics::station_status(region, &spec.id),
            protocol::encode(&msg),
        )
    }

    /// A message of the fog's for station `s` (`…/reservations`): a `reserve` is held
    /// or refused (answered `accepted` or `rejected`), a `cancel` frees what it held.
    pub fn station_message(&mut self, s: usize, payload: &[u8], out: &mut Vec<Out>) {
        let msg: StationReservation = match protocol::decode(payload) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(station = self.world.stations[s].id, error = %e, "undecodable station reservation");
                return;
            }
        };
        let result = match msg.action {
            StationReservationAction::Cancel => {
                self.sim.cancel_reservation(s, &msg.reservation_id);
                return;
            }
            StationReservationAction::Reserve => {
                let vehicle = msg.id_tag.as_ref().and_then(|t| self.id_tags.get(t));
                match (vehicle, msg.expires_ms) {
                    (Some(&v), Some(expires_ms)) => self.sim.reserve(
                        s,
                        &msg.reservation_id,
                        v,
                        msg.start_ms.map(|t| t as f64),
                        expires_ms as f64,
                    ),
                    (None, _) => Err("unknown id_tag".to_owned()),
                    (_, None) => Err("no expires_ms".to_owned()),
                }
            }
        };
        let (event, reason) = match result {
            Ok(()) => (StationReservationEventKind::Accepted, None),
            Err(why) => {
                debug!(
                    station = self.world.stations[s].id,
                    reservation = msg.reservation_id,
                    why,
                    "reservation refused"
                );
                let why: String = why.chars().take(MAX_REASON_LEN).collect();
                (StationReservationEventKind::Rejected, Some(why))
            }
        };
        self.station_event(s, msg.reservation_id, event, reason, out);
    }

    /// Station `s` says `event` about a reservation.
    fn station_event(
        &self,
        s: usize,
        reservation_id: String,
        event: StationReservationEventKind,
        reason: Option<String>,
        out: &mut Vec<Out>,
    ) {
        let spec = &self.world.stations[s];
        let region = &self.world.regions.areas[spec.region].id;
        let msg = StationReservationEvent {
            v: 1,
            reservation_id,
            event,
            reason,
        };
        out.push(Out::Station {
            station: s,
            topic: topics::station_reservation_events(region, &spec.id),
            payload: protocol::encode(&msg),
        });
    }

    /// An answer that reached vehicle `vehicle_id` at `real_ms`: followed (or, by a
    /// driver who does not follow, cancelled), a revision acted on, anything else
    /// ignored (not a vehicle of ours, or an answer to a request retried since).
    pub fn answer(
        &mut self,
        vehicle_id: &str,
        rec: Recommendation,
        real_ms: f64,
        out: &mut Vec<Out>,
    ) {
        let Some(&v) = self.vehicle_index.get(vehicle_id) else {
            return;
        };
        if !self.requests.answered(v, &rec.request_id, real_ms) {
            self.revised(v, &rec);
            return;
        }
        let r = &mut self.report;
        r.answered += 1;
        if !self.follows[v] {
            // Drives to the nearest station anyway; gives the reservation back.
            if let (Some(id), Some(st)) = (&rec.reservation_id, &rec.station) {
                let update = ReservationUpdate {
                    v: 1,
                    reservation_id: id.clone(),
                    action: ReservationAction::Cancel,
                };
                out.push(Out::Fleet {
                    region: st.region.clone(),
                    topic: topics::reservation(&st.region, &self.world.vehicles[v].id),
                    payload: protocol::encode(&update),
                    qos: 1,
                });
                r.cancelled += 1;
            }
            if rec.status == RecommendationStatus::Rerouted {
                r.rerouted += 1;
            }
            let s = nearest_reachable(&self.sim, v);
            self.sim.send_to(v, s, None);
            return;
        }
        let station = rec.station.as_ref().and_then(|st| {
            self.station_index
                .get(st.station_id.as_str())
                .map(|&i| (i, st))
        });
        match (rec.status, station) {
            (RecommendationStatus::Assigned | RecommendationStatus::Rerouted, Some((s, st))) => {
                if rec.status == RecommendationStatus::Rerouted {
                    r.rerouted += 1;
                }
                let reservation = rec.reservation_id.clone().map(|id| Reservation {
                    region: st.region.clone(),
                    id,
                });
                if reservation.is_some() {
                    let followed = Followed {
                        request_id: rec.request_id.clone(),
                        wait_s: rec.wait_s.map(f64::from),
                        rerouted: rec.status == RecommendationStatus::Rerouted,
                    };
                    self.requests.followed.insert(v, followed);
                }
                self.sim.send_to(v, s, reservation);
            }
            (status, _) => {
                if status == RecommendationStatus::Unavailable {
                    r.unavailable += 1;
                } else {
                    warn!(vehicle = vehicle_id, ?status, reason = ?rec.reason, "no usable station in the answer");
                }
                r.fallbacks += 1;
                let s = self.sim.nearest(v);
                self.sim.send_to(v, s, None);
            }
        }
    }

    /// A revised answer to the request vehicle `v` follows. With a station (a
    /// re-plan), the vehicle follows it and the promise is its wait. Without one, its
    /// station refused the reservation and the fog released it: the vehicle, still on
    /// its way, asks again once; refused a second time, it drives on to that station
    /// without one.
    fn revised(&mut self, v: usize, rec: &Recommendation) {
        if !self.requests.revision(v, rec) {
            return;
        }
        let station = rec.station.as_ref().and_then(|st| {
            self.station_index
                .get(st.station_id.as_str())
                .map(|&s| (s, st))
        });
        match (&self.sim.vehicles[v].phase, station, &rec.reservation_id) {
            (Phase::ToStation { .. }, Some((s, st)), Some(id)) => {
                self.report.revised += 1;
                if let Some(f) = self.requests.followed.get_mut(&v) {
                    f.wait_s = rec.wait_s.map(f64::from);
                    if rec.status == RecommendationStatus::Rerouted && !f.rerouted {
                        // Rerouted by a revision (a border ask central placed).
                        f.rerouted = true;
                        self.report.rerouted += 1;
                    }
                }
                let reservation = Reservation {
                    region: st.region.clone(),
                    id: id.clone(),
                };
                self.sim.send_to(v, s, Some(reservation));
            }
            (Phase::AtStation { station: here }, Some((s, _)), Some(_)) if *here == s => {
                // Waiting there already: only the promise moves.
                self.report.revised += 1;
                if let Some(f) = self.requests.followed.get_mut(&v) {
                    f.wait_s = rec.wait_s.map(f64::from);
                }
            }
            (
                &Phase::ToStation {
                    station,
                    reservation: Some(_),
                },
                None,
                _,
            ) => {
                self.requests.followed.remove(&v);
                self.report.revised += 1;
                if self.requests.second_try.contains(&v) {
                    self.sim.send_to(v, station, None);
                } else {
                    self.requests.reasking.insert(v);
                    self.sim.reservation_refused(v);
                }
            }
            _ => {
                self.requests.followed.remove(&v);
            }
        }
    }

    /// Requests nobody answered within the answer timeout by `real_ms`: asked once
    /// more, then the vehicle falls back to the nearest station.
    pub fn timeouts(&mut self, real_ms: f64, out: &mut Vec<Out>) {
        let late: Vec<usize> = self
            .requests
            .pending
            .iter()
            .filter(|(_, p)| real_ms - p.sent_ms > self.answer_timeout_ms)
            .map(|(&v, _)| v)
            .collect();
        for v in late {
            self.report.timeouts += 1;
            let retried = self.requests.pending.get(&v).is_some_and(|p| p.retried);
            let stranded = matches!(self.sim.vehicles[v].phase, Phase::Stranded);
            if retried || stranded {
                self.requests.pending.remove(&v);
                if !stranded {
                    self.report.fallbacks += 1;
                    let s = self.sim.nearest(v);
                    self.sim.send_to(v, s, None);
                }
            } else {
                self.ask(v, true, real_ms, out);
            }
        }
    }

    /// Advances the world by `dt_ms` (what the devices then say: [`Driver::react`]).
    pub fn advance(&mut self, dt_ms: f64) {
        self.sim.step(dt_ms);
    }

    /// What the devices say about what just happened in the world, at `real_ms`: the
    /// requests of vehicles that need a station (or, for the naive strategies, their
    /// own choice), statuses, arrivals, telemetry.
    pub fn react(&mut self, real_ms: f64, out: &mut Vec<Out>) {
        let world = self.world;
        for event in std::mem::take(&mut self.sim.outbox) {
            match event {
                Event::NeedStation(v) => self.need_station(v, real_ms, out),
                Event::StationChanged(s) => out.push(Out::Status(s)),
                Event::Arrived {
                    vehicle,
                    reservation,
                } => {
                    if self.vehicles_say_arrived {
                        let update = ReservationUpdate {
                            v: 1,
                            reservation_id: reservation.id.clone(),
                            action: ReservationAction::Arrived,
                        };
                        out.push(Out::Fleet {
                            topic: topics::reservation(
                                &reservation.region,
                                &world.vehicles[vehicle].id,
                            ),
                            region: reservation.region,
                            payload: protocol::encode(&update),
                            qos: 1,
                        });
                    }
                }
                Event::Telemetry(v) => {
                    let veh = &self.sim.vehicles[v];
                    let region = &world.regions.areas[world.regions.locate(veh.lat, veh.lon)].id;
                    let msg = Telemetry {
                        v: 1,
                        lat: veh.lat,
                        lon: veh.lon,
                        soc: veh.soc.clamp(0.0, 1.0),
                        speed_kmh: Some(world.vehicles[v].speed_kmh),
                        ts_ms: Some(self.sim.now_ms as u64),
                    };
                    out.push(Out::Fleet {
                        region: region.clone(),
                        topic: topics::telemetry(region, &world.vehicles[v].id),
                        payload: protocol::encode(&msg),
                        qos: 0,
                    });
                }
                Event::ReservationStarted {
                    station,
                    reservation_id,
                    ..
                } => {
                    let arrived = StationReservationEventKind::Arrived;
                    self.station_event(station, reservation_id, arrived, None, out);
                }
                Event::StartedCharging {
                    vehicle, wait_ms, ..
                } => {
                    // The promise of the answer it followed, against its wait.
                    if let Some(f) = self.requests.followed.remove(&vehicle) {
                        if let Some(promised) = f.wait_s {
                            self.promises.push((promised, wait_ms / 1000.0));
                        }
                    }
                }
                Event::Stranded(v) => {
                    self.requests.pending.remove(&v);
                    info!(vehicle = world.vehicles[v].id, "stranded");
                }
            }
        }
    }

    /// Vehicle `v` fell below the threshold: it asks (server strategies) or chooses.
    fn need_station(&mut self, v: usize, real_ms: f64, out: &mut Vec<Out>) {
        self.report.requests += 1;
        if self.requests.reasking.remove(&v) {
            self.requests.second_try.insert(v);
        } else {
            self.requests.second_try.remove(&v);
        }
        match self.strategy {
            Strategy::Fog | Strategy::Cloud | Strategy::FogFar => {
                if !std::mem::replace(&mut self.asked[v], true) {
                    if self.follows[v] {
                        self.report.followers += 1;
                    } else {
                        self.report.non_followers += 1;
                    }
                }
                self.ask(v, false, real_ms, out);
            }
            Strategy::Nearest | Strategy::LeastQueue => {
                let s = if self.strategy == Strategy::Nearest {
                    nearest_reachable(&self.sim, v)
                } else {
                    self.sim.least_queue(v)
                };
                self.report.answered += 1;
                self.sim.send_to(v, s, None);
            }
        }
    }

    /// Sends vehicle `v`'s request (a new request id each time) to the broker of the
    /// region it is in, and waits for its answer.
    fn ask(&mut self, v: usize, retried: bool, real_ms: f64, out: &mut Vec<Out>) {
        let world = self.world;
        self.requests.seq += 1;
        let (veh, spec) = (&self.sim.vehicles[v], &world.vehicles[v]);
        let region = &world.regions.areas[world.regions.locate(veh.lat, veh.lon)].id;
        let request_id = format!("r{}", self.requests.seq);
        let req = ChargeRequest {
            v: 1,
            request_id: request_id.clone(),
            lat: veh.lat,
            lon: veh.lon,
            soc: veh.soc.clamp(0.0, 1.0),
            battery_kwh: spec.battery_kwh,
            kwh_per_km: spec.kwh_per_km,
            target_soc: world.scenario.target_soc,
            ts_ms: Some(self.sim.now_ms as u64),
        };
        out.push(Out::Fleet {
            region: region.clone(),
            topic: topics::request(region, &spec.id),
            payload: protocol::encode(&req),
            qos: 1,
        });
        self.requests.pending.insert(
            v,
            Pending {
                request_id,
                sent_ms: real_ms,
                retried,
            },
        );
    }

    /// Requests still waiting for their answer.
    pub fn pending(&self) -> usize {
        self.requests.pending.len()
    }

    /// An answer that came after the world ended: counted (answered, rerouted, its
    /// round trip), not applied.
    pub fn late_answer(&mut self, vehicle_id: &str, rec: &Recommendation, real_ms: f64) {
        let Some(&v) = self.vehicle_index.get(vehicle_id) else {
            return;
        };
        if self.requests.answered(v, &rec.request_id, real_ms) {
            self.report.answered += 1;
            if rec.status == RecommendationStatus::Rerouted {
                self.report.rerouted += 1;
            }
        }
    }

    /// The report of the run, the world as it ended (requests still unanswered count
    /// as timeouts); `wall_s` the run's wall time. The shell adds what it measured of
    /// the transport (messages, lag, the network).
    pub fn finish(self, wall_s: f64) -> StrategyReport {
        let Self {
            sim,
            requests,
            report: mut r,
            strategy,
            world,
            promises,
            ..
        } = self;
        r.timeouts += requests.pending.len() as u32;
        r.wall_s = wall_s;
        if strategy.asks_server() {
            r.rtt_ms = Some(report::rtt(requests.rtts));
            r.promise = Some(report::promise(&promises, r.revised));
        }
        r.faults = sim.tally.faults;
        let mut waits: Vec<f64> = sim.tally.waits_ms.iter().map(|w| w / 1000.0).collect();
        waits.extend(sim.open_waits_ms().map(|w| w / 1000.0));
        r.wait_s = report::wait(waits);
        r.stranded = sim.tally.stranded;
        r.arrivals = sim.tally.arrivals;
        r.charged = sim.tally.sessions_done;
        let (queued, charging) = sim.at_stations();
        r.queued_at_end = queued as u32;
        r.charging_at_end = charging as u32;
        r.overbooked = sim.tally.overbooked;
        let duration_ms = sim.now_ms - sim.start_ms;
        r.utilisation = report::utilisation(
            sim.stations
                .iter()
                .zip(&world.stations)
                .map(|(s, spec)| s.busy_ms / (duration_ms * f64::from(spec.chargers)))
                .collect(),
        );
        r
    }
}

/// The nearest station the vehicle can reach; else the nearest of all.
fn nearest_reachable(sim: &Sim<'_>, v: usize) -> usize {
    sim.reachable(v)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
        .unwrap_or_else(|| sim.nearest(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{RegionArea, Regions, Scenario, StationSpec, VehicleSpec};
    use protocol::StationRef;

    /// One region, one two-charger station at (0.05, 0.05), and one vehicle below the
    /// threshold `km_west` of it.
    fn world(km_west: f64) -> World {
        let regions = Regions::new(vec![RegionArea::new(
            "r",
            &[[0.0, 0.0], [0.0, 0.1], [0.1, 0.1], [0.1, 0.0]],
        )]);
        let scenario = Scenario {
            vehicles: 1,
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
            chargers: 2,
            power_kw: 50.0,
        }];
        world.vehicles = vec![VehicleSpec {
            id: "v0".into(),
            lat: 0.05,
            lon: 0.05 - km_west / 111.2,
            battery_kwh: 50.0,
            kwh_per_km: 0.2,
            speed_kmh: 36.0,
            soc: world.scenario.soc_threshold - 0.05,
            trip_seed: 1,
        }];
        world
    }

    /// An answer to `request_id` sending v0 to the station on reservation `id`,
    /// promising `wait_s`.
    fn assigned(request_id: &str, id: &str, wait_s: u32) -> Recommendation {
        Recommendation {
            v: 1,
            request_id: request_id.into(),
            status: RecommendationStatus::Assigned,
            station: Some(StationRef {
                station_id: "r-s0001".into(),
                region: "r".into(),
                lat: 0.05,
                lon: 0.05,
            }),
            distance_km: Some(0.1),
            eta_s: Some(10),
            wait_s: Some(wait_s),
            charge_s: Some(1800),
            reservation_id: Some(id.into()),
            expires_ms: Some(3_600_000),
            reason: None,
            served_by: Some("r".into()),
            data_age_ms: Some(0),
            revised: false,
        }
    }

    fn revision(request_id: &str) -> Recommendation {
        let mut r = Recommendation::refusal(
            request_id.to_owned(),
            RecommendationStatus::Unavailable,
            "station r-s0001 could not hold the reservation",
            "r",
        );
        r.revised = true;
        r
    }

    /// Steps until the vehicle asks; its request's id.
    fn asks(d: &mut Driver<'_>) -> String {
        let mut out = Vec::new();
        for _ in 0..60 {
            d.advance(1000.0);
            d.react(0.0, &mut out);
            for o in out.drain(..) {
                if let Out::Fleet { topic, payload, .. } = o {
                    if topic.ends_with("/request") {
                        let req: ChargeRequest = protocol::decode(&payload).unwrap();
                        return req.request_id;
                    }
                }
            }
        }
        panic!("the vehicle never asked");
    }

    /// The reservation events a station said, in order.
    fn events(out: &[Out]) -> Vec<(String, StationReservationEventKind)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Station { topic, payload, .. } => {
                    assert!(topic.ends_with("/r-s0001/reservation-events"), "{topic}");
                    let e: StationReservationEvent = protocol::decode(payload).unwrap();
                    Some((e.reservation_id, e.event))
                }
                _ => None,
            })
            .collect()
    }

    fn reserve(id: &str, id_tag: &str) -> Vec<u8> {
        protocol::encode(&StationReservation {
            v: 1,
            reservation_id: id.into(),
            action: StationReservationAction::Reserve,
            id_tag: Some(id_tag.into()),
            expires_ms: Some(3_600_000),
            start_ms: Some(0),
        })
    }

    #[test]
    fn the_station_holds_the_reservation_and_the_promise_is_paired_with_the_wait() {
        let w = world(0.1);
        let mut d = Driver::new(&w, Strategy::Fog, 0.0, Duration::from_secs(5));
        let request = asks(&mut d);
        let mut out = Vec::new();
        d.answer("v0", assigned(&request, "r-1", 300), 12.5, &mut out);
        assert!(out.is_empty(), "a follower cancels nothing: {out:?}");
        // The fog tells the station; it holds a connector and says so.
        d.station_message(0, &reserve("r-1", "v0"), &mut out);
        assert_eq!(
            events(&out),
            [("r-1".into(), StationReservationEventKind::Accepted)]
        );
        out.clear();
        // The vehicle arrives and starts on its held connector: the station says
        // `arrived`, the vehicle says nothing itself.
        for _ in 0..120 {
            d.advance(1000.0);
            d.react(20.0, &mut out);
        }
        assert_eq!(
            events(&out),
            [("r-1".into(), StationReservationEventKind::Arrived)]
        );
        assert!(
            !out.iter()
                .any(|o| matches!(o, Out::Fleet { topic, .. } if topic.ends_with("/reservation"))),
            "{out:?}"
        );
        let r = d.finish(1.0);
        assert_eq!(
            (r.requests, r.answered, r.charged + r.charging_at_end),
            (1, 1, 1)
        );
        assert_eq!(r.rtt_ms.unwrap().p50, 12.5);
        // Promised 5 min, waited none: 5 min early.
        let p = r.promise.unwrap();
        assert_eq!(p.checked, 1);
        assert_eq!(p.error_s.p50, -300.0);
        assert_eq!(p.kept_share, 1.0);
    }

    #[test]
    fn a_reservation_for_nobody_we_know_is_refused_with_a_reason() {
        let w = world(0.1);
        let mut d = Driver::new(&w, Strategy::Fog, 0.0, Duration::from_secs(5));
        let mut out = Vec::new();
        d.station_message(0, &reserve("r-9", "stranger"), &mut out);
        assert_eq!(
            events(&out),
            [("r-9".into(), StationReservationEventKind::Rejected)]
        );
        let Out::Station { payload, .. } = &out[0] else {
            unreachable!()
        };
        let e: StationReservationEvent = protocol::decode(payload).unwrap();
        assert_eq!(e.reason.as_deref(), Some("unknown id_tag"));
    }

    #[test]
    fn a_refused_reservation_makes_the_vehicle_ask_again_once_then_drive_on_without() {
        // Far enough to be on its way when the revisions come.
        let w = world(5.0);
        let mut d = Driver::new(&w, Strategy::Fog, 0.0, Duration::from_secs(5));
        let first = asks(&mut d);
        let mut out = Vec::new();
        d.answer("v0", assigned(&first, "r-1", 60), 1.0, &mut out);
        d.answer("v0", revision(&first), 2.0, &mut out);
        assert_eq!(d.sim.vehicles[0].phase, Phase::Driving { asked: false });
        let second = asks(&mut d);
        assert_ne!(first, second, "a new request");
        d.answer("v0", assigned(&second, "r-2", 60), 3.0, &mut out);
        d.answer("v0", revision(&second), 4.0, &mut out);
        let to_station_without = Phase::ToStation {
            station: 0,
            reservation: None,
        };
        assert_eq!(d.sim.vehicles[0].phase, to_station_without);
        // A revision of an answer it no longer follows changes nothing.
        d.answer("v0", revision(&second), 5.0, &mut out);
        assert_eq!(d.sim.vehicles[0].phase, to_station_without);
        assert!(out.is_empty(), "{out:?}");
        let r = d.finish(1.0);
        assert_eq!((r.requests, r.answered, r.revised), (2, 2, 2));
        // No promise followed to the end: none checked, both revisions counted.
        let p = r.promise.unwrap();
        assert_eq!((p.checked, p.revised), (0, 2));
    }
}
