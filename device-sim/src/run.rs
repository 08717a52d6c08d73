//! Runs one strategy over MQTT on the wall clock: steps the world in fixed simulated
//! steps, paced by the shared clock, hands the answers that came in to the
//! [`Driver`] (which decides what the devices do) and publishes what it says.
//! Without a network (`--offline`) the naive strategies run as fast as they can.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serverkit::Clock;
use tokio_util::sync::CancellationToken;

use crate::driver::{Driver, Out};
use crate::net::Net;
use crate::report::StrategyReport;
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
    // Real time since the run began, ms: what round trips and timeouts are measured in.
    let base = Instant::now();
    let real_ms = |at: Instant| at.saturating_duration_since(base).as_secs_f64() * 1000.0;
    let now = |clock: &Option<Clock>| clock.as_ref().map_or(0.0, Clock::now_ms_f64).floor();
    let dt = world.scenario.step_s * 1000.0;
    let steps = (world.scenario.duration_ms() / dt).ceil() as u64;
    let ocpp = opts.net.as_deref().is_some_and(|n| n.ocpp().is_some());
    let driver = |start_ms: f64| {
        let mut d = Driver::new(world, strategy, start_ms, opts.answer_timeout);
        if ocpp {
            d.ocpp_stations();
        }
        d
    };

    // Stations announce themselves before the first vehicle asks.
    let mut first = driver(now(&opts.clock));
    let initial: Vec<(usize, String, Vec<u8>)> = first
        .announce()
        .into_iter()
        .filter_map(|o| match o {
            Out::Status(s) => {
                let gateway = opts.net.as_deref().and_then(|n| n.station_gateway(s));
                let (topic, payload) = first.status_message(s, gateway);
                Some((s, topic, payload))
            }
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
    let mut driver = driver(start_ms);
    let progress = progress_bar(strategy, steps, opts.progress);

    let wall_start = Instant::now();
    let messages_before = opts.net.as_deref().map_or(0, Net::messages);
    let regional_before: BTreeMap<String, u64> = opts
        .net
        .as_deref()
        .map(Net::messages_by_region)
        .unwrap_or_default();
    let mut max_lag_ms: f64 = 0.0;
    let mut out = Vec::new();

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

        // Answers that came in meanwhile; requests nobody answered in time.
        if let Some(net) = opts.net.as_deref_mut() {
            while let Ok(answer) = net.answers.try_recv() {
                let at = real_ms(answer.received);
                driver.answer(&answer.vehicle_id, answer.recommendation, at, &mut out);
            }
            while let Ok((s, payload)) = net.station_messages.try_recv() {
                driver.station_message(s, &payload, &mut out);
            }
            driver.timeouts(real_ms(Instant::now()), &mut out);
            send(net, &driver, &mut out);
        }

        driver.advance(dt);
        driver.react(real_ms(Instant::now()), &mut out);
        match opts.net.as_deref() {
            Some(net) => send(net, &driver, &mut out),
            None => out.clear(),
        }
        if k % 64 == 0 || k == steps {
            show_progress(&progress, &driver, k, start_ms);
        }
    }
    progress.finish_and_clear();

    // Answers still on their way count (the world is over: they are not applied).
    if let Some(net) = opts.net.as_deref_mut() {
        let deadline = tokio::time::Instant::now() + opts.answer_timeout;
        while driver.pending() > 0 {
            let answer = tokio::select! {
                a = net.answers.recv() => a,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(answer) = answer else { break };
            driver.late_answer(
                &answer.vehicle_id,
                &answer.recommendation,
                real_ms(answer.received),
            );
        }
    }

    let mut r = driver.finish(wall_start.elapsed().as_secs_f64());
    r.max_lag_s = max_lag_ms / 1000.0;
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

/// Publishes what the devices said (and empties `out`): vehicles through their
/// region's fleet connection, stations on their own (an OCPP charge point reports its
/// connectors instead).
fn send(net: &Net, driver: &Driver<'_>, out: &mut Vec<Out>) {
    for o in out.drain(..) {
        match o {
            Out::Fleet {
                region,
                topic,
                payload,
                qos,
            } => net.fleet_publish(&region, &topic, &payload, qos),
            Out::Status(s) => match net.ocpp() {
                Some(points) => {
                    let charging = driver.sim.stations[s]
                        .charging
                        .iter()
                        .map(|&(v, _)| driver.world.vehicles[v].id.clone())
                        .collect();
                    points.occupancy(s, charging, driver.sim.now_ms as u64);
                }
                None => {
                    let (topic, payload) = driver.status_message(s, net.station_gateway(s));
                    net.station_publish(s, &topic, &payload);
                }
            },
            Out::Station {
                station,
                topic,
                payload,
            } => net.station_send(station, &topic, &payload),
        }
    }
}

/// The progress bar of a run of `steps` steps (hidden unless `show`).
pub(crate) fn progress_bar(strategy: Strategy, steps: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {percent:>3}% sim {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(strategy.name());
    bar
}

/// Step `k` done.
pub(crate) fn show_progress(bar: &ProgressBar, driver: &Driver<'_>, k: u64, start_ms: f64) {
    let sim = &driver.sim;
    bar.set_position(k);
    let elapsed_h = (sim.now_ms - start_ms) / 3_600_000.0;
    bar.set_message(format!(
        "{elapsed_h:.2}/{:.1} h, requests {}, stranded {}",
        driver.world.scenario.hours,
        driver.report().requests,
        sim.tally.stranded
    ));
}
