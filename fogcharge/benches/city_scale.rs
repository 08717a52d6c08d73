//! The scale benchmark: 10,000 vehicles and 1,000 stations over the 4 regions of the
//! demo city, one simulated hour, servers included (local topology: 5 Mosquitto
//! brokers, 4 fog servers, central, the delay proxies), at several speeds. Prints a
//! table.
//!
//! The start is spread: every vehicle starts above its charging threshold
//! (`--min-start-soc 0.3`, threshold 0.25), so requests come as batteries drain, not
//! all in the first simulated minute; the round trips measure steady operation. The
//! stations' opening burst (1,000 stations announcing themselves) is over before the
//! world starts (the run waits until central lists every station). The stations of a
//! region share one connection (`--station-connections per-region`; `--
//! --station-connections each` for 1,000 clients of their own).
//!
//! `cargo bench -p fogcharge --bench city_scale` (`-- 60 120 240` picks the speeds;
//! arguments starting with `--` go to device-sim, e.g. `-- 240 --edge-rtt-ms 0`).

use clap::Parser;
use device_sim::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Speeds first, then device-sim flags with their values (cargo adds `--bench`).
    let mut speeds: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let mut value_due = false;
    for a in std::env::args().skip(1).filter(|a| a != "--bench") {
        if a.starts_with("--") {
            value_due = !a.contains('=');
            extra.push(a);
        } else if value_due {
            value_due = false;
            extra.push(a);
        } else if a.parse::<f64>().is_ok() {
            speeds.push(a);
        }
    }
    let speeds = if speeds.is_empty() {
        vec!["120".to_owned(), "240".to_owned()]
    } else {
        speeds
    };
    println!(
        "{:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "speed",
        "wall_s",
        "sim/wall",
        "lag_s",
        "requests",
        "answered",
        "rtt_p50",
        "rtt_p95",
        "rtt_p99",
        "stranded",
        "wait_mean",
        "msgs/s",
        "rerouted"
    );
    for speed in speeds {
        let mut argv: Vec<String> = [
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
            env!("CARGO_BIN_EXE_fogcharge"),
            "--min-start-soc",
            "0.3",
            "--overload-region",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.iter().any(|a| a.starts_with("--station-connections")) {
            argv.extend(["--station-connections".into(), "per-region".into()]);
        }
        argv.extend(extra.iter().cloned());
        let config = Config::parse_from(argv);
        let report = device_sim::run(config, CancellationToken::new()).await?;
        let r = &report.strategies["fog"];
        let rtt = r.rtt_ms.unwrap_or_default();
        println!(
            "{:>6} {:>8.1} {:>8.0} {:>9.1} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>9.1} {:>9.0} {:>9}",
            speed,
            r.wall_s,
            r.sim_hours * 3600.0 / r.wall_s,
            r.max_lag_s,
            r.requests,
            r.answered,
            rtt.p50,
            rtt.p95,
            rtt.p99,
            r.stranded,
            r.wait_s.mean / 60.0,
            r.msgs_per_s,
            r.rerouted
        );
    }
    Ok(())
}
