//! The fog server's hot path without I/O:
//!
//! - `index/bulk_load`: building the station R-tree from 1k / 10k / 100k stations;
//! - `plan`: one charge request — nearest reachable candidates, cost of each, and the
//!   reservation at the best — at 1k / 10k / 100k stations, with 0 and with 1,000
//!   reservations already promised around the request points;
//! - `region/request`: the same through [`Region::handle`], as the MQTT loop calls it
//!   (topic parse, JSON decode + validation, plan, reserve, remember the answer,
//!   encode it, metrics);
//! - `fog_messages`: the aggregate and the station list for central: built, encoded,
//!   decoded.
//!
//! The world mirrors device-sim's: stations uniform over a ~40 × 40 km region with 1-8
//! chargers of 22-150 kW, partly occupied; vehicles at 25% charge.
//!
//! `cargo bench -p fog-server --bench planner`

mod world;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fog_server::index::StationIndex;

use world::{
    VEHICLES, plan_one, planner, region, request_payload, request_topic, requests, stations,
};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn bulk_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("index/bulk_load");
    for n in SIZES {
        let all = stations(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &all, |b, all| {
            b.iter_batched(
                || all.clone(),
                |s| StationIndex::bulk_load(black_box(s)),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Choose + reserve for one vehicle (see [`world::plan_one`]).
fn plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for reservations in [0, 1_000] {
        for n in SIZES {
            let mut planner = planner(n, reservations);
            let reqs = requests(3);
            let mut i = 0usize;
            group.bench_function(
                BenchmarkId::new(format!("{reservations}_reservations"), n),
                |b| {
                    b.iter(|| {
                        i += 1;
                        plan_one(&mut planner, black_box(&reqs), i)
                    })
                },
            );
            planner.take_changes();
            // The benchmark's own vehicle holds one more (if it ran: filters skip it).
            assert!(planner.active_reservations() <= reservations + 1);
        }
    }
    group.finish();
}

/// One request through the region's message handler (what the MQTT loop calls):
/// topic parse, JSON decode + validation, plan, reserve (replacing the vehicle's
/// previous reservation), remember the answer, encode it, metrics.
fn region_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("region/request");
    for n in [1_000, 10_000] {
        let mut region = region(n);
        let reqs = requests(5);
        let mut k = VEHICLES;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    k += 1;
                    (request_topic(k), request_payload(&reqs, k))
                },
                |(topic, payload)| {
                    let fx = region.receive(&topic, black_box(&payload), world::NOW_MS);
                    assert!(!fx.publish.is_empty(), "answered");
                    fx
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The messages a fog server sends central, built from a region of 1,000 stations:
/// the aggregate (every 2 s and on change; its best 8 stations) and the station list
/// (once a period, every station).
fn fog_messages(c: &mut Criterion) {
    let mut region = region(1_000);
    let aggregate = region.aggregate(world::NOW_MS);
    let stations = region.stations_snapshot(world::NOW_MS);
    let mut group = c.benchmark_group("fog_messages");
    let payload = protocol::encode(&aggregate);
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("aggregate/build", |b| {
        b.iter(|| region.aggregate(black_box(world::NOW_MS)))
    });
    group.bench_function("aggregate/encode", |b| {
        b.iter(|| protocol::encode(black_box(&aggregate)))
    });
    group.bench_function("aggregate/decode", |b| {
        b.iter(|| protocol::decode::<protocol::fog::Aggregate>(black_box(&payload)).expect("valid"))
    });
    let payload = protocol::encode(&stations);
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("stations_1000/encode", |b| {
        b.iter(|| protocol::encode(black_box(&stations)))
    });
    group.bench_function("stations_1000/decode", |b| {
        b.iter(|| protocol::fog::Stations::decode(black_box(&payload)).expect("valid"))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bulk_load, plan, region_request, fog_messages
}
criterion_main!(benches);
