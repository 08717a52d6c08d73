//! Runs one strategy over a world: steps the [`Sim`] in fixed simulated steps, paced by
//! the shared clock, publishes what the devices say and applies the decisions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::{
    ChargeRequest, RecommendationStatus, ReservationAction, ReservationUpdate, Telemetry, topics,
};
use serde::{Deserialize, Serialize};
use serverkit::Clock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::net::{Answer, Net, station_status};
use crate::report::{self, StrategyReport};
use crate::sim::{Event, Phase, Reservation, Sim};
use crate::world::World;

/// How vehicles choose a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Ask the fog server of the region (a regional broker near the vehicles, behind
    /// the edge delay; central in the cloud); follow its answer, reroutes included.
    Fog,
    /// Ask one server for the whole city: a single fog server whose region is the whole
    /// city, on one broker, behind the cloud delay.
    Cloud,
    /// The regional fog servers and their brokers placed far away, beside central:
    /// the regional split without the nearness (devices behind the cloud delay).
    FogFar,
    /// Drive to the nearest reachable station; no server.
    Nearest,
    /// The reachable station with the smallest visible queue; no reservations.
    LeastQueue,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Fog,
        Strategy::Cloud,
        Strategy::FogFar,
        Strategy::Nearest,
        Strategy::LeastQueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Fog => "fog",
            Strategy::Cloud => "cloud",
            Strategy::FogFar => "fog-far",
            Strategy::Nearest => "nearest",
            Strategy::LeastQueue => "least-queue",
        }
    }

    /// Whether vehicles ask a server (and so need brokers).
    pub fn asks_server(self) -> bool {
        matches!(self, Strategy::Fog | Strategy::Cloud | Strategy::FogFar)
    }

    /// Whether it needs a placement only the local run can make (one city-wide
    /// server, or the regions moved far away).
    pub fn local_only(self) -> bool {
        matches!(self, Strategy::Cloud | Strategy::FogFar)
    }
}

/// Which drivers follow the server's answer: `compliance` of them, drawn per vehicle
/// from the seed (the same seed and share, the same drivers).
pub fn followers(vehicles: usize, compliance: f64, seed: u64) -> Vec<bool> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x636f_6d70_6c79);
    (0..vehicles)
        .map(|_| rng.random::<f64>() < compliance)
        .collect()
}

/// How a run is paced and connected.
pub struct RunOptions<'a> {
    /// The shared clock (speed and epoch as the servers have them). `None`: no pacing,
    /// the world runs as fast as it can (only without servers).
    pub clock: Option<Clock>,
    /// The devices' connections; `None`: nothing is published (naive strategies only).
    pub net: Option<&'a mut Net>,
    /// A request not answered within this much real time is sent again once, then the
    /// vehicle falls back to the nearest station.
    pub answer_timeout: Duration,
    pub progress: bool,
    pub shutdown: CancellationToken,
    /// After the stations announced themselves: how to know the servers have them.
    pub settle: Settle<'a>,
}

/// How a run waits, after the stations' first status, before the first vehicle moves.
pub enum Settle<'a> {
    /// Not at all (no servers).
    No,
    /// Until this holds (polled every 50 ms, at most 30 s).
    Until(
        Box<
            dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>
                + Send
                + Sync
                + 'a,
        >,
    ),
    /// This long (servers that cannot be asked).
    For(Duration),
}

/// Requests waiting for the fog's answer, and the round trips of those answered.
#[derive(Default)]
struct Requests {
    pending: HashMap<usize, Pending>,
    seq: u64,
    rtts: Vec<f64>,
    /// The request whose answer (with a reservation) each vehicle follows now.
    followed: HashMap<usize, String>,
    /// Vehicles asking again after a revision, and those whose latest request was such
    /// a second try (a second revision does not make them ask a third time).
    reasking: std::collections::HashSet<usize>,
    second_try: std::collections::HashSet<usize>,
}

impl Requests {
    /// Sends vehicle `v`'s request (a new request id each time) and waits for it.
    fn ask(&mut self, net: &Net, sim: &Sim<'_>, v: usize, retried: bool) {
        self.seq += 1;
        let request_id = send_request(net, sim, v, self.seq);
        self.pending.insert(
            v,
            Pending {
                request_id,
                sent: Instant::now(),
                retried,
            },
        );
    }

    /// The vehicle `answer` is for, when it answers that vehicle's pending request
    /// (which then ends, its round trip recorded).
    /// The vehicle a revised answer is for, when it revises the answer that vehicle
    /// follows now (a station refused the reservation).
    fn revision(&mut self, vehicles: &HashMap<&str, usize>, answer: &Answer) -> Option<usize> {
        let &v = vehicles.get(answer.vehicle_id.as_str())?;
        if !answer.recommendation.revised
            || self.followed.get(&v)? != &answer.recommendation.request_id
        {
            return None;
        }
        self.followed.remove(&v);
        Some(v)
    }

    fn answered(&mut self, vehicles: &HashMap<&str, usize>, answer: &Answer) -> Option<usize> {
        let &v = vehicles.get(answer.vehicle_id.as_str())?;
        if self.pending.get(&v)?.request_id != answer.recommendation.request_id {
            return None;
        }
        let p = self.pending.remove(&v)?;
        self.rtts
            .push(answer.received.duration_since(p.sent).as_secs_f64() * 1000.0);
        Some(v)
    }
}

struct Pending {
    request_id: String,
    sent: Instant,
    retried: bool,
}

/// Runs `strategy` over `world` from its start to `scenario.hours` later.
pub async fn run(
    world: &World,
    strategy: Strategy,
    mut opts: RunOptions<'_>,
) -> Result<StrategyReport> {
    anyhow::ensure!(
        !strategy.asks_server() || opts.net.is_some(),
        "the {} strategy needs brokers and servers",
        strategy.name()
    );
    let follows = followers(
        world.vehicles.len(),
        world.scenario.compliance,
        world.scenario.seed,
    );
    let mut asked = vec![false; world.vehicles.len()];
    let now = |clock: &Option<Clock>| clock.as_ref().map_or(0.0, Clock::now_ms_f64).floor();
    let dt = world.scenario.step_s * 1000.0;
    let steps = (world.scenario.duration_ms() / dt).ceil() as u64;
    let mut sim = Sim::new(world, now(&opts.clock));
    let vehicle_index: HashMap<&str, usize> = world
        .vehicles
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.as_str(), i))
        .collect();
    let station_index: HashMap<&str, usize> = world
        .stations
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();

    // Stations announce themselves before the first vehicle asks.
    sim.announce_stations();
    let gateway = |s: usize| opts.net.as_deref().and_then(|n| n.station_gateway(s));
    let initial: Vec<(usize, String, Vec<u8>)> = std::mem::take(&mut sim.outbox)
        .into_iter()
        .filter_map(|e| match e {
            Event::StationChanged(s) => Some(status_message(&sim, s, gateway(s))),
            _ => None,
        })
        .collect();
    // (OCPP charge points reported their connectors when they booted.)
    if let Some(net) = opts.net.as_deref().filter(|n| n.ocpp().is_none()) {
        net.station_publish_confirmed(initial).await?;
    }
    match &opts.settle {
        Settle::No => {}
        Settle::For(d) => tokio::time::sleep(*d).await,
        Settle::Until(ready) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !ready().await {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the servers did not list every station within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The world starts now, on the shared clock.
    let start_ms = now(&opts.clock);
    let mut sim = Sim::new(world, start_ms);

    let progress = if opts.progress {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {percent:>3}% sim {msg} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(strategy.name());
        bar
    } else {
        ProgressBar::hidden()
    };

    let wall_start = Instant::now();
    let messages_before = opts.net.as_deref().map_or(0, Net::messages);
    let regional_before: std::collections::BTreeMap<String, u64> = opts
        .net
        .as_deref()
        .map(Net::messages_by_region)
        .unwrap_or_default();
    let mut requests = Requests::default();
    let mut r = StrategyReport {
        sim_hours: world.scenario.hours,
        ..StrategyReport::default()
    };
    let mut max_lag_ms: f64 = 0.0;

    for k in 1..=steps {
        if opts.shutdown.is_cancelled() {
            anyhow::bail!("interrupted");
        }
        let t = start_ms + k as f64 * dt;
        if let Some(clock) = &opts.clock {
            // Wait until the shared clock reaches the end of this step.
            let ahead_ms = t - clock.now_ms_f64();
            if ahead_ms > 0.0 {
                let real = Duration::from_secs_f64(ahead_ms / clock.speed() / 1000.0);
                tokio::select! {
                    _ = opts.shutdown.cancelled() => anyhow::bail!("interrupted"),
                    _ = tokio::time::sleep(real) => {}
                }
            } else {
                max_lag_ms = max_lag_ms.max(-ahead_ms);
            }
        }

        // Answers that came in meanwhile.
        if let Some(net) = opts.net.as_deref_mut() {
            while let Ok(answer) = net.answers.try_recv() {
                let Some(v) = requests.answered(&vehicle_index, &answer) else {
                    // A station that refused the reservation: the fog released it and
                    // says so; the vehicle, still on its way, asks again.
                    // A second refusal: it drives on to that station without one.
                    if let Some(v) = requests.revision(&vehicle_index, &answer) {
                        if let Phase::ToStation {
                            station,
                            reservation: Some(_),
                        } = sim.vehicles[v].phase
                        {
                            r.revised += 1;
                            if requests.second_try.contains(&v) {
                                sim.send_to(v, station, None);
                            } else {
                                requests.reasking.insert(v);
                                sim.reservation_refused(v);
                            }
                        }
                    }
                    continue; // not a vehicle of ours, or an answer to a retried request
                };
                let rec = answer.recommendation;
                r.answered += 1;
                if !follows[v] {
                    // Drives to the nearest station anyway; gives the reservation back.
                    if let (Some(id), Some(st)) = (&rec.reservation_id, &rec.station) {
                        let update = ReservationUpdate {
                            v: 1,
                            reservation_id: id.clone(),
                            action: ReservationAction::Cancel,
                        };
                        let topic = topics::reservation(&st.region, &world.vehicles[v].id);
                        net.fleet_publish(&st.region, &topic, &protocol::encode(&update), 1);
                        r.cancelled += 1;
                    }
                    if rec.status == RecommendationStatus::Rerouted {
                        r.rerouted += 1;
                    }
                    let s = nearest_reachable(&sim, v);
                    sim.send_to(v, s, None);
                    continue;
                }
                let station = rec
                    .station
                    .as_ref()
                    .and_then(|st| station_index.get(st.station_id.as_str()).map(|&i| (i, st)));
                match (rec.status, station) {
                    (
                        RecommendationStatus::Assigned | RecommendationStatus::Rerouted,
                        Some((s, st)),
                    ) => {
                        if rec.status == RecommendationStatus::Rerouted {
                            r.rerouted += 1;
                        }
                        let reservation = rec.reservation_id.clone().map(|id| Reservation {
                            region: st.region.clone(),
                            id,
                        });
                        if reservation.is_some() {
                            requests.followed.insert(v, rec.request_id.clone());
                        }
                        sim.send_to(v, s, reservation);
                    }
                    (status, _) => {
                        if status == RecommendationStatus::Unavailable {
                            r.unavailable += 1;
                        } else {
                            warn!(vehicle = answer.vehicle_id, ?status, reason = ?rec.reason, "no usable station in the answer");
                        }
                        r.fallbacks += 1;
                        let s = sim.nearest(v);
                        sim.send_to(v, s, None);
                    }
                }
            }
            // Requests nobody answered in time: ask once more, then fall back.
            let now = Instant::now();
            let late: Vec<usize> = requests
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.sent) > opts.answer_timeout)
                .map(|(&v, _)| v)
                .collect();
            for v in late {
                r.timeouts += 1;
                let retried = requests.pending.get(&v).is_some_and(|p| p.retried);
                if retried || matches!(sim.vehicles[v].phase, Phase::Stranded) {
                    requests.pending.remove(&v);
                    if !matches!(sim.vehicles[v].phase, Phase::Stranded) {
                        r.fallbacks += 1;
                        let s = sim.nearest(v);
                        sim.send_to(v, s, None);
                    }
                } else {
                    requests.ask(net, &sim, v, true);
                }
            }
        }

        sim.step(dt);

        let events = std::mem::take(&mut sim.outbox);
        for event in events {
            match event {
                Event::NeedStation(v) => {
                    r.requests += 1;
                    if requests.reasking.remove(&v) {
                        requests.second_try.insert(v);
                    } else {
                        requests.second_try.remove(&v);
                    }
                    match strategy {
                        Strategy::Fog | Strategy::Cloud | Strategy::FogFar => {
                            if !std::mem::replace(&mut asked[v], true) {
                                if follows[v] {
                                    r.followers += 1;
                                } else {
                                    r.non_followers += 1;
                                }
                            }
                            if let Some(net) = opts.net.as_deref() {
                                requests.ask(net, &sim, v, false);
                            }
                        }
                        Strategy::Nearest | Strategy::LeastQueue => {
                            let s = if strategy == Strategy::Nearest {
                                nearest_reachable(&sim, v)
                            } else {
                                sim.least_queue(v)
                            };
                            r.answered += 1;
                            sim.send_to(v, s, None);
                        }
                    }
                }
                Event::StationChanged(s) => match opts.net.as_deref() {
                    Some(net) if net.ocpp().is_some() => {
                        let charging = sim.stations[s]
                            .charging
                            .iter()
                            .map(|&(v, _)| world.vehicles[v].id.clone())
                            .collect();
                        if let Some(points) = net.ocpp() {
                            points.occupancy(s, charging, sim.now_ms as u64);
                        }
                    }
                    Some(net) => {
                        let (s, topic, payload) = status_message(&sim, s, net.station_gateway(s));
                        net.station_publish(s, &topic, &payload);
                    }
                    None => {}
                },
                Event::Arrived {
                    vehicle,
                    reservation,
                } => {
                    // An OCPP charge point reports the arrival itself: StartTransaction
                    // with the reservation when the vehicle plugs in.
                    if let Some(net) = opts.net.as_deref().filter(|n| n.ocpp().is_none()) {
                        let update = ReservationUpdate {
                            v: 1,
                            reservation_id: reservation.id.clone(),
                            action: ReservationAction::Arrived,
                        };
                        let topic =
                            topics::reservation(&reservation.region, &world.vehicles[vehicle].id);
                        net.fleet_publish(
                            &reservation.region,
                            &topic,
                            &protocol::encode(&update),
                            1,
                        );
                    }
                }
                Event::Telemetry(v) => {
                    if let Some(net) = opts.net.as_deref() {
                        let veh = &sim.vehicles[v];
                        let region =
                            &world.regions.areas[world.regions.locate(veh.lat, veh.lon)].id;
                        let msg = Telemetry {
                            v: 1,
                            lat: veh.lat,
                            lon: veh.lon,
                            soc: veh.soc.clamp(0.0, 1.0),
                            speed_kmh: Some(world.vehicles[v].speed_kmh),
                            ts_ms: Some(sim.now_ms as u64),
                        };
                        let topic = topics::telemetry(region, &world.vehicles[v].id);
                        net.fleet_publish(region, &topic, &protocol::encode(&msg), 0);
                    }
                }
                Event::ReservationStarted { .. } | Event::StartedCharging { .. } => {}
                Event::Stranded(v) => {
                    requests.pending.remove(&v);
                    info!(vehicle = world.vehicles[v].id, "stranded");
                }
            }
        }
        if k % 64 == 0 || k == steps {
            progress.set_position(k);
            let elapsed_h = (sim.now_ms - start_ms) / 3_600_000.0;
            progress.set_message(format!(
                "{elapsed_h:.2}/{:.1} h, requests {}, stranded {}",
                world.scenario.hours, r.requests, sim.tally.stranded
            ));
        }
    }
    progress.finish_and_clear();

    // Answers still on their way count (the world is over: they are not applied).
    if let Some(net) = opts.net.as_deref_mut() {
        let deadline = tokio::time::Instant::now() + opts.answer_timeout;
        while !requests.pending.is_empty() {
            let answer = tokio::select! {
                a = net.answers.recv() => a,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(answer) = answer else { break };
            if requests.answered(&vehicle_index, &answer).is_some() {
                r.answered += 1;
                if answer.recommendation.status == RecommendationStatus::Rerouted {
                    r.rerouted += 1;
                }
            }
        }
        r.timeouts += requests.pending.len() as u32;
    }

    r.wall_s = wall_start.elapsed().as_secs_f64();
    r.max_lag_s = max_lag_ms / 1000.0;
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
    let duration_ms = sim.now_ms - start_ms;
    r.utilisation = report::utilisation(
        sim.stations
            .iter()
            .zip(&world.stations)
            .map(|(s, spec)| s.busy_ms / (duration_ms * f64::from(spec.chargers)))
            .collect(),
    );
    if let Some(net) = opts.net.as_deref() {
        r.ocpp = net.ocpp().map(crate::ocpp::ChargePoints::figures);
        r.messages = net.messages() - messages_before;
        r.msgs_per_s = r.messages as f64 / r.wall_s.max(1e-9);
        r.msgs_per_s_by_broker = net
            .messages_by_region()
            .into_iter()
            .map(|(region, n)| {
                let before = regional_before.get(&region).copied().unwrap_or(0);
                (region, (n - before) as f64 / r.wall_s.max(1e-9))
            })
            .collect();
    }
    Ok(r)
}

/// The nearest station the vehicle can reach; else the nearest of all.
fn nearest_reachable(sim: &Sim<'_>, v: usize) -> usize {
    sim.reachable(v)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
        .unwrap_or_else(|| sim.nearest(v))
}

/// Publishes a charge request for vehicle `v` on the broker of the region it is in.
fn send_request(net: &Net, sim: &Sim<'_>, v: usize, seq: u64) -> String {
    let world = sim.world;
    let (veh, spec) = (&sim.vehicles[v], &world.vehicles[v]);
    let region = &world.regions.areas[world.regions.locate(veh.lat, veh.lon)].id;
    let request_id = format!("r{seq}");
    let req = ChargeRequest {
        v: 1,
        request_id: request_id.clone(),
        lat: veh.lat,
        lon: veh.lon,
        soc: veh.soc.clamp(0.0, 1.0),
        battery_kwh: spec.battery_kwh,
        kwh_per_km: spec.kwh_per_km,
        target_soc: world.scenario.target_soc,
        ts_ms: Some(sim.now_ms as u64),
    };
    let topic = topics::request(region, &spec.id);
    net.fleet_publish(region, &topic, &protocol::encode(&req), 1);
    request_id
}

/// Station `s`'s status message (naming `gateway` when it speaks through one).
fn status_message(sim: &Sim<'_>, s: usize, gateway: Option<&str>) -> (usize, String, Vec<u8>) {
    let spec = &sim.world.stations[s];
    let st = &sim.stations[s];
    let region = &sim.world.regions.areas[spec.region].id;
    let msg = station_status(
        &spec.id,
        spec,
        st.charging.len(),
        st.queue.len(),
        sim.now_ms as u64,
        gateway,
    );
    (
        s,
        topics::station_status(region, &spec.id),
        protocol::encode(&msg),
    )
}
