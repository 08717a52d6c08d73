//! Decoding (JSON + validation, as the fog server does it) and encoding of every
//! device message, with the payloads of `docs/protocol.md`.
//!
//! `cargo bench -p protocol --bench codec`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocol::{
    ChargeRequest, Recommendation, ReservationUpdate, StationStatus, Telemetry, Topic, Validate,
    decode, encode, topics,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const STATUS: &str = r#"{"v":1,"station_id":"north-001","lat":-12.2664,"lon":-38.9663,"chargers":4,"power_kw":50.0,"occupied":2,"queue":1,"state":"available","ts_ms":1732400000000}"#;
const REQUEST: &str = r#"{"v":1,"request_id":"r-42","lat":-12.25,"lon":-38.95,"soc":0.18,"battery_kwh":60.0,"kwh_per_km":0.18,"target_soc":0.8,"ts_ms":1732400000000}"#;
const RECOMMENDATION: &str = r#"{"v":1,"request_id":"r-42","status":"assigned","station":{"station_id":"north-001","region":"north","lat":-12.2664,"lon":-38.9663},"distance_km":3.3,"eta_s":297,"wait_s":0,"charge_s":2721,"reservation_id":"north-1405304f1","expires_ms":1795473457740,"served_by":"north","data_age_ms":1294}"#;
const RESERVATION: &str = r#"{"v":1,"reservation_id":"north-1405304f1","action":"arrived"}"#;
const TELEMETRY: &str =
    r#"{"v":1,"lat":-12.25,"lon":-38.95,"soc":0.42,"speed_kmh":38.5,"ts_ms":1732400000000}"#;

fn codec<T: DeserializeOwned + Serialize + Validate>(c: &mut Criterion, name: &str, json: &str) {
    let payload = json.as_bytes();
    let msg: T = decode(payload).expect("the example decodes");
    let mut group = c.benchmark_group(format!("protocol/{name}"));
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| decode::<T>(black_box(payload)).expect("valid"))
    });
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&msg))));
    group.finish();
}

fn messages(c: &mut Criterion) {
    codec::<StationStatus>(c, "station_status", STATUS);
    codec::<ChargeRequest>(c, "charge_request", REQUEST);
    codec::<Recommendation>(c, "recommendation", RECOMMENDATION);
    codec::<ReservationUpdate>(c, "reservation_update", RESERVATION);
    codec::<Telemetry>(c, "telemetry", TELEMETRY);
}

fn topic(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol/topic");
    group.bench_function("parse_request", |b| {
        b.iter(|| Topic::parse(black_box("ev/north/vehicles/car-00042/request")).expect("valid"))
    });
    group.bench_function("build_recommendation", |b| {
        b.iter(|| topics::recommendation(black_box("north"), black_box("car-00042")))
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
    targets = messages, topic
}
criterion_main!(benches);
