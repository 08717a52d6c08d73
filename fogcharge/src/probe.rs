//! `fogcharge probe URL`: exit 0 when URL answers 2xx. The image has no curl; its
//! health checks and the deployments' start-up ordering use this.

use std::time::Duration;

/// Exits 0 when the URL answers with a 2xx status (container health checks).
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// e.g. http://127.0.0.1:9090/healthz
    url: String,
    /// Keep trying (once a second) for up to this many seconds.
    #[arg(long, default_value_t = 0)]
    wait_s: u64,
    /// Timeout of one attempt, in ms.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_s);
    loop {
        let error = match client.get(&args.url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{} answered {}", args.url, r.status()),
            Err(e) => format!("{}: {e}", args.url),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(error);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
