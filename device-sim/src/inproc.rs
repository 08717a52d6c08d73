//! `--in-process`: the whole city in one process on the simulated clock — the fog
//! regions' cores ([`fog_server::region::Region`]) and central's, the devices of the
//! [`Driver`], and the network between them as a discrete-event [`Bus`]. No broker, no
//! server process, no wall clock: the same seed and flags give the same report, in
//! seconds. See `docs/simulation.md` (in-process runs).
//!
//! What each part does here, as the local run's processes and brokers would:
//!
//! - **central** ([`central::core::CentralCore`], central's defaults at the run's
//!   speed) receives what the regions' bridges carry up (`regions/{r}/up/…`), is
//!   ticked when it asks to be ([`CentralCore::next_wake_ms`]), and what it publishes
//!   goes down the bridges;
//! - **a region** receives every device message of its region's broker and central's
//!   messages over its bridge (`regions/{r}/down/…` → `fog/down/…`), is ticked every
//!   `--sweep-ms`, and publishes its aggregate when its [`AggregateSchedule`] says
//!   (every `--aggregate-ms`, after a change no sooner than `--aggregate-min-ms`) —
//!   the fog server's defaults, in real ms turned into simulated ms by the speed;
//!   what it publishes goes to the vehicles' fleets, the stations, or up the bridge
//!   (`fog/up/…` → `regions/{r}/up/…`);
//! - **the network**: each one-way path of the local run (`--edge-rtt-ms`,
//!   `--cloud-rtt-ms` and their jitter, placed as the strategy places its servers)
//!   takes half its round trip, real ms, times `--speed` in simulated ms, plus jitter
//!   drawn from the seed; nothing overtakes on one connection. Processing takes no
//!   time;
//! - **the world** steps as in the MQTT run: deliveries due by the end of a step are
//!   made first (answers applied at their time), then requests nobody answered in time,
//!   then the step; what the devices say goes out at the step's end.
//!
//! The world starts as the local run's does: once the broker confirmed the stations'
//! first statuses, it asks every 50 ms (real) whether every region's latest aggregate
//! on the central broker lists all its stations in service and every fog has heard
//! central name another open region, and starts at the first yes. The regions' timers start at phases drawn from the seed.
//! Round trips are the modelled request → answer time, converted back to real ms;
//! `msgs_per_s` is per modelled real second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use central::core::{CentralCore, Outgoing as CentralOutgoing};
use fog_server::region::{AggregateSchedule, Outgoing, Region};
use launcher::delay::Delay;
use protocol::fog::FogMessage;
use protocol::{Recommendation, StationChannel, Topic, VehicleChannel, topics};
use tokio_util::sync::CancellationToken;
use topology::Topology;
use tracing::debug;

use crate::bus::{Bus, OneWay};
use crate::driver::{Driver, Out};
use crate::report::StrategyReport;
use crate::run::{Strategy, progress_bar, show_progress};
use crate::world::World;

/// The simulated instant at which every in-process run begins (2026-01-01 00:00 UTC):
/// a fixed clock, so that timestamps repeat too.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Longest wait, modelled real time, for the servers to list every station.
const SETTLE_REAL_MS: f64 = 30_000.0;

/// How often the local run asks central whether it lists every station, real ms.
const POLL_REAL_MS: f64 = 50.0;

/// What an in-process run of one strategy is made of.
pub struct Options<'a> {
    /// The servers' regions (the city's, or one for the whole city).
    pub topology: &'a Topology,
    /// The world as the devices talk about it.
    pub world: &'a World,
    /// Device ↔ regional broker, and regional broker ↔ central broker (real time).
    pub devices: Delay,
    pub bridges: Delay,
    /// Simulated ms per real ms.
    pub speed: f64,
    /// A request not answered within this much real time is asked once more.
    pub answer_timeout: Duration,
    /// The stations of a region share one connection (`--station-connections
    /// per-region`): their statuses name it, and it says it is online first.
    pub shared_stations: bool,
    pub progress: bool,
    pub shutdown: &'a CancellationToken,
}

/// Something due on the bus.
#[derive(Debug)]
enum Item {
    /// A message on region `region`'s broker, for its fog.
    ToRegion {
        region: usize,
        topic: String,
        payload: Vec<u8>,
    },
    /// A message on the central broker, for central.
    ToCentral { topic: String, payload: Vec<u8> },
    /// A recommendation for a vehicle, through the fleet connection of `region`.
    ToFleet {
        region: usize,
        vehicle_id: String,
        payload: Vec<u8>,
    },
    /// A message for station `station` (its reservations).
    ToStation { station: usize, payload: Vec<u8> },
    /// Region `region`'s periodic tick.
    Tick(usize),
    /// Region `region`'s aggregate check.
    AggregateCheck(usize),
    /// Central's timers, as it asked to be woken at this time.
    CentralWake(u64),
}

/// A connection and its direction: what may not overtake itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Link {
    FleetUp(usize),
    FleetDown(usize),
    /// A station's own connection, or (shared) its region's.
    StationUp(usize),
    StationDown(usize),
    SharedStationsUp(usize),
    SharedStationsDown(usize),
    BridgeUp(usize),
    BridgeDown(usize),
}

/// The one-way paths of the run, simulated ms.
struct Paths {
    device_up: OneWay,
    device_down: OneWay,
    bridge_up: OneWay,
    bridge_down: OneWay,
}

/// A region's fog server.
struct Node {
    id: String,
    region: Region,
    schedule: AggregateSchedule,
    sweep_ms: u64,
    /// Stations in service it should list (the devices' stations in its region).
    stations: u32,
    /// In-service stations of its latest aggregate on the central broker.
    listed: Option<u32>,
    /// Device messages sent and received on its broker.
    messages: u64,
}

/// The servers and the network of one run.
struct City<'a> {
    nodes: Vec<Node>,
    region_of_station: Vec<usize>,
    station_index: HashMap<&'a str, usize>,
    region_index: HashMap<String, usize>,
    /// Central, beside the central broker.
    central: CentralCore,
    /// When central asked to be woken next (a wake-up for another time is stale).
    central_wake: Option<u64>,
    bus: Bus<Item, Link>,
    paths: Paths,
    shared_stations: bool,
}

/// Whether vehicles' answers are applied (the world runs) or only counted (it ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Ended,
}

impl<'a> City<'a> {
    fn new(opts: &Options<'a>) -> Result<Self> {
        let speed = opts.speed;
        let seed = opts.world.scenario.seed;
        let mut nodes = Vec::new();
        for (i, r) in opts.topology.regions.iter().enumerate() {
            // A fog server as the local run starts it: its region and bounds, the
            // defaults (or their environment variables) for the rest.
            let mut args = vec![
                "fog-server".to_owned(),
                "--region".into(),
                r.id.clone(),
                "--no-state".into(),
            ];
            if let Some(b) = r.bounds {
                args.push(format!("--bounds={}", b.to_arg()));
            }
            let config = <fog_server::Config as clap::Parser>::try_parse_from(&args)
                .with_context(|| format!("the in-process fog server of region {}", r.id))?;
            config.check()?;
            let area = config.area()?;
            // Reservation ids from the seed, not a random salt: they repeat.
            let salt = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32 ^ i as u32;
            let region =
                fog_server::configured_region(&config, area.as_ref(), speed).with_id_salt(salt);
            let scaled = |ms: u64| (ms as f64 * speed).round() as u64;
            nodes.push(Node {
                id: r.id.clone(),
                region,
                schedule: AggregateSchedule::new(
                    scaled(config.aggregate_min_ms.max(10)),
                    scaled(config.aggregate_ms.max(10)),
                ),
                sweep_ms: scaled(config.sweep_ms.max(1)).max(1),
                stations: 0,
                listed: None,
                messages: 0,
            });
        }
        let region_index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let world = opts.world;
        let mut region_of_station = Vec::with_capacity(world.stations.len());
        for s in &world.stations {
            let id = &world.regions.areas[s.region].id;
            let &i = region_index.get(id).with_context(|| {
                format!("station {} is in region {id}, which has no server", s.id)
            })?;
            nodes[i].stations += 1;
            region_of_station.push(i);
        }
        // Central as the local run starts it: its defaults, the shared clock's speed.
        let args = ["central".to_owned(), format!("--clock-speed={speed}")];
        let config = <central::Config as clap::Parser>::try_parse_from(&args)
            .context("the in-process central")?;
        config.check()?;
        let central = CentralCore::new(config.core_settings(), EPOCH_MS);
        let path = |p: &launcher::delay::Path| OneWay::scaled(p, speed);
        Ok(Self {
            central,
            central_wake: None,
            nodes,
            region_of_station,
            station_index: world
                .stations
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i))
                .collect(),
            region_index,
            // Jitter drawn from the seed (apart from the world's own draws).
            bus: Bus::new(seed ^ 0x6E65_7477_6F72_6B00),
            paths: Paths {
                device_up: path(&opts.devices.up),
                device_down: path(&opts.devices.down),
                bridge_up: path(&opts.bridges.up),
                bridge_down: path(&opts.bridges.down),
            },
            shared_stations: opts.shared_stations,
        })
    }

    /// Every region's first tick and aggregate check, from `now`: each at a phase of
    /// its own within its period, drawn from `seed` — servers started one after
    /// another do not tick in step, and regions whose aggregates all reached central
    /// at the same instant would make every start-up look alike.
    fn start_timers(&mut self, now: u64, seed: u64) {
        use rand::{Rng as _, SeedableRng as _};
        let mut phases = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7068_6173_6573);
        for i in 0..self.nodes.len() {
            let check = self.nodes[i].schedule.check_every_ms();
            let aggregate = phases.random_range(0..check);
            let tick = phases.random_range(0..self.nodes[i].sweep_ms);
            self.bus.at(now + aggregate, Item::AggregateCheck(i));
            self.bus.at(now + tick, Item::Tick(i));
        }
    }

    /// Whether every region's latest aggregate on the central broker lists all its
    /// stations in service, and (with several regions) every fog has heard central's
    /// heartbeat name another region that can take vehicles: a world that starts
    /// earlier sends its opening burst to fogs that cannot reroute yet.
    fn settled(&self, now: u64) -> bool {
        let several = self.nodes.len() > 1;
        self.nodes.iter().all(|n| {
            n.listed == Some(n.stations)
                && (!several
                    || !n.region.reroute.enabled
                    || (n.region.central_present(now)
                        && n.region.central_open_regions().iter().any(|r| *r != n.id)))
        })
    }

    /// The link station `s` talks on.
    fn station_link(&self, s: usize, up: bool) -> Link {
        match (self.shared_stations, up) {
            (false, true) => Link::StationUp(s),
            (false, false) => Link::StationDown(s),
            (true, true) => Link::SharedStationsUp(self.region_of_station[s]),
            (true, false) => Link::SharedStationsDown(self.region_of_station[s]),
        }
    }

    /// With shared station connections: each region's says it is online, before any
    /// status names it.
    fn stations_online(&mut self, now: u64) {
        if !self.shared_stations {
            return;
        }
        for i in 0..self.nodes.len() {
            let region = self.nodes[i].id.clone();
            let id = crate::net::StationGateway::id(&region);
            let msg = protocol::GatewayStatus {
                v: 1,
                gateway_id: id.clone(),
                online: true,
                ts_ms: None,
            };
            self.nodes[i].messages += 1;
            let item = Item::ToRegion {
                region: i,
                topic: topics::gateway_status(&region, &id),
                payload: protocol::encode(&msg),
            };
            self.bus
                .send(now, Link::SharedStationsUp(i), self.paths.device_up, item);
        }
    }

    /// Sends what the devices said at `now`.
    fn send_devices(&mut self, now: u64, driver: &Driver<'_>, out: &mut Vec<Out>) {
        for o in out.drain(..) {
            match o {
                Out::Fleet {
                    region,
                    topic,
                    payload,
                    ..
                } => {
                    let Some(&i) = self.region_index.get(&region) else {
                        debug!(region, "no broker for this region");
                        continue;
                    };
                    self.nodes[i].messages += 1;
                    let item = Item::ToRegion {
                        region: i,
                        topic,
                        payload,
                    };
                    self.bus
                        .send(now, Link::FleetUp(i), self.paths.device_up, item);
                }
                Out::Status(s) => {
                    let i = self.region_of_station[s];
                    let gateway = self
                        .shared_stations
                        .then(|| crate::net::StationGateway::id(&self.nodes[i].id));
                    let (topic, payload) = driver.status_message(s, gateway.as_deref());
                    self.send_station(now, s, topic, payload);
                }
                Out::Station {
                    station,
                    topic,
                    payload,
                } => self.send_station(now, station, topic, payload),
            }
        }
    }

    /// Station `s`'s message at `now`, to its region's broker.
    fn send_station(&mut self, now: u64, s: usize, topic: String, payload: Vec<u8>) {
        let i = self.region_of_station[s];
        self.nodes[i].messages += 1;
        let item = Item::ToRegion {
            region: i,
            topic,
            payload,
        };
        let link = self.station_link(s, true);
        self.bus.send(now, link, self.paths.device_up, item);
    }

    /// Sends what region `i`'s fog published at `now`: to a vehicle's fleet, to a
    /// station, or over the bridge to the central broker.
    fn send_from_region(&mut self, i: usize, now: u64, out: Vec<Outgoing>) {
        for o in out {
            if let Ok(m) = FogMessage::parse_regional(&o.topic) {
                let item = Item::ToCentral {
                    topic: m.central_topic(&self.nodes[i].id),
                    payload: o.payload,
                };
                self.bus
                    .send(now, Link::BridgeUp(i), self.paths.bridge_up, item);
                continue;
            }
            match Topic::parse(&o.topic) {
                Ok(Topic::Vehicle {
                    vehicle_id,
                    channel: VehicleChannel::Recommendation,
                    ..
                }) => {
                    let item = Item::ToFleet {
                        region: i,
                        vehicle_id: vehicle_id.to_owned(),
                        payload: o.payload,
                    };
                    self.bus
                        .send(now, Link::FleetDown(i), self.paths.device_down, item);
                }
                Ok(Topic::Station {
                    station_id,
                    channel: StationChannel::Reservations,
                    ..
                }) => {
                    let Some(&s) = self.station_index.get(station_id) else {
                        debug!(topic = o.topic, "no such station");
                        continue;
                    };
                    let item = Item::ToStation {
                        station: s,
                        payload: o.payload,
                    };
                    let link = self.station_link(s, false);
                    self.bus.send(now, link, self.paths.device_down, item);
                }
                _ => debug!(topic = o.topic, "published to nobody"),
            }
        }
    }

    /// Sends what central published at `now` down the bridges to its regions, and
    /// keeps central's next wake-up on the bus.
    fn send_from_central(&mut self, now: u64, out: Vec<CentralOutgoing>) {
        // Only the figures of this run's report count: central's own events are not
        // kept.
        self.central.take_events();
        for o in out {
            let Ok((region, m)) = FogMessage::parse_central(&o.topic) else {
                debug!(topic = o.topic, "central published to nobody");
                continue;
            };
            let Some(&i) = self.region_index.get(region) else {
                debug!(region, "central published to a region without a server");
                continue;
            };
            let item = Item::ToRegion {
                region: i,
                topic: m.regional_topic(),
                payload: o.payload,
            };
            self.bus
                .send(now, Link::BridgeDown(i), self.paths.bridge_down, item);
        }
        let wake = self.central.next_wake_ms();
        if wake != self.central_wake {
            self.central_wake = wake;
            if let Some(at) = wake {
                // Never now or before (central's shell sleeps at least 1 ms too): a
                // tick that left something due at once cannot spin.
                self.bus.at(at.max(now + 1), Item::CentralWake(at));
            }
        }
    }

    /// Makes one delivery due at `now`.
    fn deliver(
        &mut self,
        now: u64,
        item: Item,
        driver: &mut Driver<'_>,
        phase: Phase,
        real_ms: f64,
    ) {
        match item {
            Item::ToRegion {
                region,
                topic,
                payload,
            } => {
                let fx = self.nodes[region].region.receive(&topic, &payload, now);
                self.send_from_region(region, now, fx.publish);
            }
            Item::ToCentral { topic, payload } => {
                if let Ok((region, FogMessage::Aggregate)) = FogMessage::parse_central(&topic) {
                    if let (Some(&i), Ok(agg)) = (
                        self.region_index.get(region),
                        protocol::decode::<protocol::fog::Aggregate>(&payload),
                    ) {
                        self.nodes[i].listed = Some(agg.stations_in_service);
                    }
                }
                let out = self.central.receive(&topic, &payload, now);
                self.send_from_central(now, out);
            }
            Item::CentralWake(at) => {
                if self.central_wake == Some(at) {
                    self.central_wake = None;
                    let out = self.central.tick(now);
                    self.send_from_central(now, out);
                }
            }
            Item::ToFleet {
                region,
                vehicle_id,
                payload,
            } => {
                self.nodes[region].messages += 1;
                let rec: Recommendation = match serde_json::from_slice(&payload) {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::warn!(vehicle = vehicle_id, error = %e, "undecodable recommendation");
                        return;
                    }
                };
                match phase {
                    Phase::Running => {
                        let mut out = Vec::new();
                        driver.answer(&vehicle_id, rec, real_ms, &mut out);
                        self.send_devices(now, driver, &mut out);
                    }
                    Phase::Ended => driver.late_answer(&vehicle_id, &rec, real_ms),
                }
            }
            Item::ToStation { station, payload } => {
                self.nodes[self.region_of_station[station]].messages += 1;
                let mut out = Vec::new();
                driver.station_message(station, &payload, &mut out);
                self.send_devices(now, driver, &mut out);
            }
            Item::Tick(i) => {
                let fx = self.nodes[i].region.tick(now);
                self.send_from_region(i, now, fx.publish);
                let next = now + self.nodes[i].sweep_ms;
                self.bus.at(next, Item::Tick(i));
            }
            Item::AggregateCheck(i) => {
                let node = &mut self.nodes[i];
                let due = node.schedule.due(now, node.region.is_dirty());
                let out = due.map(|due| node.region.aggregate_messages(due, now));
                let next = now + node.schedule.check_every_ms();
                self.bus.at(next, Item::AggregateCheck(i));
                if let Some(out) = out {
                    self.send_from_region(i, now, out);
                }
            }
        }
    }
}

/// Runs `strategy` in one process (see the module's documentation).
pub fn run(strategy: Strategy, opts: &Options<'_>) -> Result<StrategyReport> {
    let wall = Instant::now();
    let world = opts.world;
    let speed = opts.speed;
    let mut city = City::new(opts)?;
    let t0 = EPOCH_MS;
    city.start_timers(t0, world.scenario.seed);

    // Stations announce themselves; the world starts once the servers list them all.
    let mut first = Driver::new(world, strategy, t0 as f64, opts.answer_timeout);
    city.stations_online(t0);
    let mut out = first.announce();
    city.send_devices(t0, &first, &mut out);
    // As the local run: once the broker has confirmed the statuses (a device round
    // trip), it asks central every 50 ms whether it lists them all.
    let limit = t0 + (SETTLE_REAL_MS * speed) as u64;
    let poll_ms = ((POLL_REAL_MS * speed).round() as u64).max(1);
    let confirmed =
        t0 + (city.paths.device_up.latency_ms + city.paths.device_down.latency_ms).round() as u64;
    let mut poll = confirmed;
    let start = loop {
        while let Some((due, item)) = city.bus.pop_until(poll) {
            city.deliver(due, item, &mut first, Phase::Running, 0.0);
        }
        if city.settled(poll) {
            break poll;
        }
        poll += poll_ms;
        if poll > limit {
            bail!(
                "the in-process servers did not list every station within {} s (modelled)",
                SETTLE_REAL_MS / 1000.0
            );
        }
    };
    let start_f = start as f64;
    let real = |t: u64| (t.saturating_sub(start)) as f64 / speed;

    let mut driver = Driver::new(world, strategy, start_f, opts.answer_timeout);
    let dt = world.scenario.step_s * 1000.0;
    let steps = (world.scenario.duration_ms() / dt).ceil() as u64;
    let progress = progress_bar(strategy, steps, opts.progress);
    let mut end = start;
    for k in 1..=steps {
        if opts.shutdown.is_cancelled() {
            bail!("interrupted");
        }
        let t = (start_f + k as f64 * dt).round() as u64;
        while let Some((due, item)) = city.bus.pop_until(t) {
            city.deliver(due, item, &mut driver, Phase::Running, real(due));
        }
        driver.timeouts(real(t), &mut out);
        city.send_devices(t, &driver, &mut out);
        driver.advance(dt);
        driver.react(real(t), &mut out);
        city.send_devices(t, &driver, &mut out);
        if k % 64 == 0 || k == steps {
            show_progress(&progress, &driver, k, start_f);
        }
        end = t;
    }
    progress.finish_and_clear();

    // Answers still on their way count, as in the MQTT run (not applied).
    let deadline = end + (opts.answer_timeout.as_secs_f64() * 1000.0 * speed) as u64;
    let mut last = end;
    while driver.pending() > 0 {
        let Some((due, item)) = city.bus.pop_until(deadline) else {
            break;
        };
        city.deliver(due, item, &mut driver, Phase::Ended, real(due));
        last = due;
    }

    let mut r = driver.finish(wall.elapsed().as_secs_f64());
    let real_s = real(last) / 1000.0;
    r.messages = city.nodes.iter().map(|n| n.messages).sum();
    r.msgs_per_s = r.messages as f64 / real_s.max(1e-9);
    r.msgs_per_s_by_broker = city
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.messages as f64 / real_s.max(1e-9)))
        .collect();
    Ok(r)
}
