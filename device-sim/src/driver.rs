//! What the simulated devices do with a strategy, whatever carries their messages: the
//! pure part of a run, shared by the run over MQTT on the wall clock
//! ([`run`](mod@crate::run)) and the run in one process on the simulated clock
//! ([`inproc`](crate::inproc)).
//!
//! A [`Driver`] owns the [`Sim`] and everything the vehicles decide: their requests
//! (a new id each time, the round trips of those answered), the answers they follow
//! or — for the drivers who do not follow (`--compliance`) — cancel, revised answers
//! (ask again once, then drive on without a reservation), requests nobody answers in
//! time (asked once more, then the nearest station), the naive strategies, and the
//! report's counters. It does no I/O and reads no clock: the shell hands it answers,
//! the real time (ms since the run started: the round trips and the answer timeout
//! are real time, as in the local run) and the world's steps, and sends the [`Out`]
//! messages it returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use protocol::{
    ChargeRequest, Recommendation, RecommendationStatus, ReservationAction, ReservationUpdate,
    Telemetry, topics,
};
use tracing::{info, warn};

use crate::net::station_status;
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
}

/// Requests waiting for the fog's answer, and the round trips of those answered.
#[derive(Default)]
struct Requests {
    /// By vehicle (ordered: requests that time out together are asked again in the
    /// same order every run).
    pending: BTreeMap<usize, Pending>,
    seq: u64,
    rtts: Vec<f64>,
    /// The request whose answer (with a reservation) each vehicle follows now.
    followed: HashMap<usize, String>,
    /// Vehicles asking again after a revision, and those whose latest request was such
    /// a second try (a second revision does not make them ask a third time).
    reasking: HashSet<usize>,
    second_try: HashSet<usize>,
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
        if self.pending.get(&v).is_none_or(|p| p.request_id != request_id) {
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
        if !answer.revised || self.followed.get(&v) != Some(&answer.request_id) {
            return false;
        }
        self.followed.remove(&v);
        true
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
        Self {
            world,
            sim: Sim::new(world, start_ms),
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
            answer_timeout_ms: answer_timeout.as_secs_f64() * 1000.0,
            vehicles_say_arrived: true,
        }
    }

    /// The stations report a vehicle's arrival on its reservation themselves (OCPP
    /// charge points: StartTransaction with the reservation): vehicles don't.
    pub fn stations_report_arrivals(&mut self) {
        self.vehicles_say_arrived = false;
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
        let st = &self.sim.stations[s];
        let region = &self.world.regions.areas[spec.region].id;
        let msg = station_status(
            &spec.id,
            spec,
            st.charging.len(),
            st.queue.len(),
            self.sim.now_ms as u64,
            gateway,
        );
        (
            topics::station_status(region, &spec.id),
            protocol::encode(&msg),
        )
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
                    self.requests.followed.insert(v, rec.request_id.clone());
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

    /// A revised answer to the request vehicle `v` follows: its station refused the
    /// reservation and the fog released it. The vehicle, still on its way, asks again
    /// once; refused a second time, it drives on to that station without one.
    fn revised(&mut self, v: usize, rec: &Recommendation) {
        if !self.requests.revision(v, rec) {
            return;
        }
        if let Phase::ToStation {
            station,
            reservation: Some(_),
        } = self.sim.vehicles[v].phase
        {
            self.report.revised += 1;
            if self.requests.second_try.contains(&v) {
                self.sim.send_to(v, station, None);
            } else {
                self.requests.reasking.insert(v);
                self.sim.reservation_refused(v);
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
                Event::ReservationStarted { .. } | Event::StartedCharging { .. } => {}
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
            ..
        } = self;
        r.timeouts += requests.pending.len() as u32;
        r.wall_s = wall_s;
        if strategy.asks_server() {
            r.rtt_ms = Some(report::rtt(requests.rtts));
        }
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
