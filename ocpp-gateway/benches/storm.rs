//! The 1,000-charge-point connect storm: a real Mosquitto, a fog server and the
//! `ocpp-gateway` binary as its own process; 1,000 charge points of the Python `ocpp`
//! package connect at once and each sends a StatusNotification. Prints the time until
//! the fog lists every one, the status latency (charger → fog) p50/p99, the gateway's
//! RSS before and after, and ReserveNow round trips (the fog's assignment → the
//! charger's ReserveNow → Accepted back on the fog's broker).
//!
//! `cargo bench -p ocpp-gateway --bench storm` (`STORM_N` to change the 1,000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{REGION, storm, storm_chargers};
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, free_port};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks for the list of benchmarks
    }
    let n: usize = std::env::var("STORM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let broker = Mosquitto::start(MosquittoConfig::new())?;
    let fog = Fog::start(&broker.url(), REGION).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("chargers.toml");
    std::fs::write(&file, storm_chargers("CP", n))?;
    let port = free_port()?;
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_ocpp-gateway"))
        .args(["--region", REGION, "--broker", &broker.url()])
        .arg("--chargers")
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = gateway.id().unwrap_or(0);
    testkit::wait_until(
        "the gateway listens",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await?;
    let rss_before = rss_kib(pid);
    let url = format!("ws://127.0.0.1:{port}/ocpp");
    let figures = storm(&url, &fog, "CP", n).await?;
    let rss_after = rss_kib(pid);
    let rtts = common::reserve_round_trips(&broker.url(), 20).await?;
    println!("connect storm: {n} charge points, 1 connector each, one gateway");
    println!(
        "  charge points connected, booted, status answered: {:.2} s",
        figures.connect_s
    );
    println!(
        "  all visible in the fog (from spawning them):      {:.2} s",
        figures.all_visible_s
    );
    println!(
        "  status latency charger -> fog: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        figures.percentile(0.5),
        figures.percentile(0.99),
        figures.latencies_ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "  gateway RSS: {:.1} MiB idle, {:.1} MiB with {n} connected",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    let p = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  ReserveNow round trip (fog assignment -> ReserveNow -> Accepted at the fog), {} runs: p50 {:.2} ms, max {:.2} ms",
        rtts.len(),
        p(0.5),
        rtts.last().copied().unwrap_or(0.0)
    );
    drop(figures);
    gateway.kill().await?;
    Ok(())
}
