//! Every device message decoder on arbitrary bytes: refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{ChargeRequest, ReservationUpdate, StationStatus, Telemetry, Topic, decode};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<ChargeRequest>(data);
    let _ = decode::<StationStatus>(data);
    let _ = decode::<ReservationUpdate>(data);
    let _ = decode::<Telemetry>(data);
    if let Ok(topic) = std::str::from_utf8(data) {
        let _ = Topic::parse(topic);
    }
});
