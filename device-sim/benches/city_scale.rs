//! The scale benchmark: 10,000 vehicles and 1,000 stations over the 4 regions of the
//! demo city, one simulated hour, servers included (local topology: 5 Mosquitto
//! brokers, 4 fog servers, central), at several speeds. Prints a table.
//!
//! `cargo bench -p device-sim --bench city_scale` (`-- 60 120 240` picks the speeds).

use clap::Parser;
use device_sim::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let speeds: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<f64>().is_ok())
        .collect();
    let speeds = if speeds.is_empty() {
        vec!["120".to_owned(), "240".to_owned()]
    } else {
        speeds
    };
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "speed",
        "wall_s",
        "lag_s",
        "requests",
        "answered",
        "rtt_p50",
        "rtt_p95",
        "rtt_p99",
        "stranded",
        "wait_mean",
        "msgs/s"
    );
    for speed in speeds {
        let config = Config::parse_from([
            "device-sim",
            "--vehicles",
            "10000",
            "--stations",
            "1000",
            "--hours",
            "1",
            "--strategy",
            "fog",
            "--speed",
            &speed,
            "--central-http",
            "127.0.0.1:0",
            "--no-progress",
            "--server-exe",
            env!("CARGO_BIN_EXE_device-sim"),
        ]);
        let report = device_sim::run(config, CancellationToken::new()).await?;
        let r = &report.strategies["fog"];
        let rtt = r.rtt_ms.unwrap_or_default();
        println!(
            "{:>6} {:>8.1} {:>9.1} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>9.1} {:>9.0}",
            speed,
            r.wall_s,
            r.max_lag_s,
            r.requests,
            r.answered,
            rtt.p50,
            rtt.p95,
            rtt.p99,
            r.stranded,
            r.wait_s.mean / 60.0,
            r.msgs_per_s
        );
    }
    Ok(())
}
