//! A fog server's region on arbitrary (topic, payload) pairs, after a few stations:
//! never panics, and answers only on recommendation or `fog/up/` topics.
#![no_main]

use fog_server::planner::PlannerParams;
use fog_server::region::Region;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000_000;

fuzz_target!(|input: (String, Vec<u8>)| {
    let (topic, payload) = input;
    let mut r = Region::new("north", PlannerParams::default());
    for i in 0..3 {
        let status = format!(
            r#"{{"v":1,"station_id":"n-{i}","lat":{},"lon":-38.95,"chargers":2,"power_kw":50,"occupied":0,"queue":0,"state":"available"}}"#,
            -12.25 + f64::from(i) * 0.01
        );
        r.receive(
            &format!("ev/north/stations/n-{i}/status"),
            status.as_bytes(),
            NOW,
        );
    }
    for out in r.receive(&topic, &payload, NOW).publish {
        assert!(out.topic.ends_with("/recommendation") || out.topic.starts_with("fog/up/"));
    }
    let _ = r.tick(NOW + 1_000);
});
