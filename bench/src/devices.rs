//! The simulated devices: a child process of the bench (`fogcharge-bench devices`),
//! so that the fog server under test has its process — and paho's send and receive
//! threads — to itself, as in a deployment. The load still competes for the same
//! cores.
//!
//! The parent starts it with a [`Spec`] (JSON, one argument); it connects, prints
//! `READY`, waits for a line on stdin, runs the scenario and prints its rows as one
//! JSON line.

use std::io::{BufRead as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use protocol::{ChargeRequest, topics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::fleet::{self, Answer, EchoKind, Fleet, Status, request_id};
use crate::{ANSWER_TIMEOUT, REGION, Row};

/// What the child is to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub scenario: String,
    pub url: String,
    /// First request sequence number (request ids are `b{seq}`, unique in the run).
    pub first_seq: u64,
    pub seed: u64,
    pub stations: usize,
    pub round_trips: usize,
    pub pause_ms: f64,
    pub burst: usize,
    pub burst_vehicles: usize,
    pub rate: u32,
    pub step_s: f64,
    pub rate_vehicles: usize,
    pub connections: usize,
    /// Burst and rate: send to the bare echo server instead of the fog.
    pub echo: bool,
    /// Which echo server the burst and rate floors use.
    pub echo_task: bool,
}

/// What the child reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub rows: Vec<Row>,
    /// The child's own CPU use during the scenario, percent of one core.
    pub cpu_percent: Option<f64>,
}

/// Sequence numbers, unique in the run.
struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        let s = self.0;
        self.0 += 1;
        s
    }
}

/// A charge request from somewhere in the middle of the region.
fn request_payload(rng: &mut StdRng, seq: u64) -> Vec<u8> {
    protocol::encode(&ChargeRequest {
        v: 1,
        request_id: request_id(seq),
        lat: rng.random_range(-13.06..-12.88),
        lon: rng.random_range(-38.6..-38.4),
        soc: 0.25,
        battery_kwh: rng.random_range(40.0..=100.0),
        kwh_per_km: rng.random_range(0.14..=0.22),
        target_soc: 0.8,
        ts_ms: None,
    })
}

fn load_vehicle(v: usize) -> String {
    format!("load-{v:05}")
}

/// Where a vehicle's request goes: the fog, or the echo server.
fn request_topic(spec: &Spec, vehicle: &str) -> String {
    if spec.echo {
        fleet::echo_topic(echo_kind(spec), vehicle)
    } else {
        topics::request(REGION, vehicle)
    }
}

fn echo_kind(spec: &Spec) -> EchoKind {
    if spec.echo_task {
        EchoKind::Task
    } else {
        EchoKind::Callback
    }
}

/// `echo ` before a scenario name when it ran against the echo server.
fn named(spec: &Spec, name: String) -> String {
    match (spec.echo, spec.echo_task) {
        (false, _) => name,
        (true, false) => format!("echo {name}"),
        (true, true) => format!("echo (task) {name}"),
    }
}

/// The child's main: connect, `READY`, wait for the go, run, report.
pub async fn main(spec_json: &str) -> Result<()> {
    let spec: Spec = serde_json::from_str(spec_json).context("devices spec")?;
    let recommendations =
        topics::filters::vehicles(REGION, protocol::VehicleChannel::Recommendation);
    let pid = std::process::id();
    let mut fleets = Vec::new();
    if spec.scenario == "rate" && spec.connections > 1 {
        // Each connection its own share of the vehicles, subscribed to their answers.
        for c in 0..spec.connections {
            let filters: Vec<String> = (c..spec.rate_vehicles)
                .step_by(spec.connections)
                .map(|v| {
                    if spec.echo {
                        fleet::echo_reply_topic(echo_kind(&spec), &load_vehicle(v))
                    } else {
                        topics::recommendation(REGION, &load_vehicle(v))
                    }
                })
                .collect();
            fleets
                .push(Fleet::connect(&spec.url, &format!("bench-load-{pid}-{c}"), &filters).await?);
        }
    } else {
        fleets.push(
            Fleet::connect(
                &spec.url,
                &format!("bench-fleet-{pid}"),
                &[recommendations, fleet::ECHO_REPLIES.to_owned()],
            )
            .await?,
        );
    }
    println!("READY");
    std::io::stdout().flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    let window = cpu::Window::start(None);
    let mut seq = Seq(spec.first_seq);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let rows = match spec.scenario.as_str() {
        "rtt" => rtt(&spec, &mut fleets[0], &mut seq, &mut rng).await?,
        "burst" => vec![burst(&spec, &mut fleets[0], &mut seq, &mut rng).await?],
        "rate" => vec![rate_step(&spec, &mut fleets, &mut seq, &mut rng).await?],
        other => bail!("unknown scenario {other:?}"),
    };
    let outcome = Outcome {
        rows,
        cpu_percent: window.percent(),
    };
    println!("{}", serde_json::to_string(&outcome)?);
    std::io::stdout().flush()?;
    for f in fleets {
        f.close().await?;
    }
    Ok(())
}

/// Round trips one at a time, interleaved: the bare echo (paho callback), the echo
/// through a tokio task, and request → recommendation.
async fn rtt(spec: &Spec, fleet: &mut Fleet, seq: &mut Seq, rng: &mut StdRng) -> Result<Vec<Row>> {
    const VEHICLES: usize = 50;
    const WARM_UP: usize = 50;
    // 0: echo (callback), 1: echo (task), 2: fog.
    let mut samples: [Vec<(Duration, Status)>; 3] = Default::default();
    for i in 0..WARM_UP + spec.round_trips {
        let vehicle = format!("rtt-{:03}", i % VEHICLES);
        // A different order every round.
        for k in 0..3 {
            let which = (i + k) % 3;
            let s = seq.next();
            let payload = request_payload(rng, s);
            let topic = match which {
                0 => fleet::echo_topic(EchoKind::Callback, &vehicle),
                1 => fleet::echo_topic(EchoKind::Task, &vehicle),
                _ => topics::request(REGION, &vehicle),
            };
            let rt = fleet.round_trip(&topic, payload, s, ANSWER_TIMEOUT).await?;
            if i >= WARM_UP {
                samples[which].push(rt);
            }
            tokio::time::sleep(Duration::from_secs_f64(spec.pause_ms / 1e3)).await;
        }
    }
    let [echo, task, fog] = samples;
    let echo_row = Row {
        note: "bare echo: paho client replying from its message callback, QoS 1 (the floor)".into(),
        ..Row::new("echo round trip", spec.round_trips, &echo)
    };
    let mut task_row = Row {
        note: "echo replying from a tokio task reading paho's stream (the fog link's path)".into(),
        ..Row::new("echo round trip, tokio task", spec.round_trips, &task)
    };
    let mut fog_row = Row {
        note: format!(
            "one at a time, interleaved with both echoes; {VEHICLES} vehicles, {} stations",
            spec.stations
        ),
        ..Row::new("request -> recommendation", spec.round_trips, &fog)
    };
    for row in [&mut task_row, &mut fog_row] {
        row.vs_echo = Some((
            row.latency.p50_ms / echo_row.latency.p50_ms,
            row.latency.p99_ms / echo_row.latency.p99_ms,
        ));
    }
    Ok(vec![echo_row, task_row, fog_row])
}

/// Collects answers to `first..first + n` until all are in or `timeout` passes. Polls
/// (every 2 ms) instead of waiting on each answer, so that the collector does not
/// wake for every message.
async fn collect(
    fleets: &mut [Fleet],
    first: u64,
    n: usize,
    got: &mut [Option<Answer>],
    timeout: Duration,
) {
    let mut left = got.iter().filter(|a| a.is_none()).count();
    let deadline = Instant::now() + timeout;
    loop {
        let answers = fleets
            .iter_mut()
            .flat_map(|f| std::iter::from_fn(|| f.answers.try_recv().ok()));
        for a in answers.collect::<Vec<_>>() {
            let slot = a
                .seq
                .checked_sub(first)
                .filter(|i| (*i as usize) < n)
                .and_then(|i| got.get_mut(i as usize))
                .filter(|s| s.is_none());
            if let Some(slot) = slot {
                *slot = Some(a);
                left -= 1;
            }
        }
        if left == 0 || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `n` requests from `vehicles` vehicles, published as fast as the client can.
async fn burst(spec: &Spec, fleet: &mut Fleet, seq: &mut Seq, rng: &mut StdRng) -> Result<Row> {
    let n = spec.burst;
    let first = seq.0;
    let requests: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let s = seq.next();
            let vehicle = format!("burst-{:04}", i % spec.burst_vehicles);
            (request_topic(spec, &vehicle), request_payload(rng, s))
        })
        .collect();
    fleet.clear();
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(n);
    for (topic, payload) in requests {
        sent_at.push(Instant::now());
        fleet.send(&topic, payload);
    }
    let sent_in = started.elapsed();
    let mut got = vec![None; n];
    collect(
        std::slice::from_mut(fleet),
        first,
        n,
        &mut got,
        Duration::from_secs(30),
    )
    .await;
    let answers: Vec<(Duration, Status)> = got
        .iter()
        .zip(&sent_at)
        .filter_map(|(a, sent)| a.map(|a| (a.at.duration_since(*sent), a.status)))
        .collect();
    let last = got.iter().flatten().map(|a| a.at).max();
    let mut row = Row::new(
        named(
            spec,
            format!("burst {n} req / {} vehicles", spec.burst_vehicles),
        ),
        n,
        &answers,
    );
    row.all_answered_ms = last.map(|t| t.duration_since(started).as_secs_f64() * 1e3);
    row.achieved_rate = row
        .all_answered_ms
        .map(|ms| answers.len() as f64 / (ms / 1e3));
    row.note = format!(
        "published in {:.1} ms over one connection; all answered after {}",
        sent_in.as_secs_f64() * 1e3,
        row.all_answered_ms
            .map_or("-".to_owned(), |ms| format!("{ms:.1} ms"))
    );
    Ok(row)
}

/// Open-loop load at `spec.rate` requests/s for `spec.step_s`. Latency counts from
/// each request's scheduled send time (no coordinated omission).
async fn rate_step(
    spec: &Spec,
    fleets: &mut [Fleet],
    seq: &mut Seq,
    rng: &mut StdRng,
) -> Result<Row> {
    let rate = spec.rate;
    let n = (f64::from(rate) * spec.step_s).round() as usize;
    let first = seq.0;
    let requests: Vec<(usize, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let s = seq.next();
            let vehicle = i % spec.rate_vehicles;
            (
                vehicle % fleets.len(),
                request_topic(spec, &load_vehicle(vehicle)),
                request_payload(rng, s),
            )
        })
        .collect();
    for f in fleets.iter_mut() {
        f.clear();
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(20);
    let scheduled = |i: usize| start + interval.mul_f64(i as f64);
    let mut next = 0;
    let mut requests = requests.into_iter();
    let give_up = start + Duration::from_secs_f64(spec.step_s * 3.0 + 5.0);
    while next < n {
        let now = Instant::now();
        if now > give_up {
            break;
        }
        if now >= start {
            let due = (((now - start).as_secs_f64() * f64::from(rate)) as usize + 1).min(n);
            while next < due {
                let Some((fleet, topic, payload)) = requests.next() else {
                    break;
                };
                fleets[fleet].send(&topic, payload);
                next += 1;
            }
        }
        if next < n {
            let wake = scheduled(next).max(Instant::now() + Duration::from_micros(200));
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    let sent = next;
    let send_s = Instant::now().duration_since(start).as_secs_f64();
    // Answers wait in each connection's channel (no wake-ups while sending); up to
    // 10 s more for the last ones.
    let mut got: Vec<Option<Answer>> = vec![None; n];
    collect(fleets, first, n, &mut got, Duration::from_secs(10)).await;
    let answers: Vec<(Duration, Status)> = got
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.map(|a| (a.at.saturating_duration_since(scheduled(i)), a.status)))
        .collect();
    // The worst latency in each 100 ms of the schedule: shows stalls.
    let mut worst = vec![0.0f64; (spec.step_s * 10.0).ceil() as usize + 1];
    for (i, a) in got.iter().enumerate() {
        if let Some(a) = a {
            let bucket = (i as f64 / f64::from(rate) * 10.0) as usize;
            let ms = a.at.saturating_duration_since(scheduled(i)).as_secs_f64() * 1e3;
            if let Some(w) = worst.get_mut(bucket) {
                *w = w.max((ms * 10.0).round() / 10.0);
            }
        }
    }
    if std::env::var_os("BENCH_TRACE").is_some() {
        let line: Vec<String> = worst.iter().map(|w| format!("{w:.0}")).collect();
        eprintln!("worst ms per 100 ms: {}", line.join(" "));
    }
    let mut row = Row::new(
        named(spec, format!("open loop {rate} req/s")),
        sent,
        &answers,
    );
    row.worst_ms_per_100ms = worst;
    row.target_rate = Some(rate);
    row.achieved_rate = Some(sent as f64 / send_s.max(1e-9));
    row.note = format!(
        "{:.1} s, {} vehicles over {} connection(s); latency from the scheduled send time",
        spec.step_s,
        spec.rate_vehicles,
        fleets.len()
    );
    Ok(row)
}
