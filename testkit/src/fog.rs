//! An in-process fog server against a test broker, exactly as `fog-server` runs it,
//! with its HTTP API on a free port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use fog_server::{Config, FogServer};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::wait_until;

/// A running fog server; stopped on [`Fog::stop`] or when dropped.
pub struct Fog {
    pub region: String,
    pub http: SocketAddr,
    server: Option<FogServer>,
    shutdown: CancellationToken,
    client: reqwest::Client,
}

impl Fog {
    /// A fog server for `region` on the broker at `url`, with default parameters.
    pub async fn start(url: &str, region: &str) -> Result<Self> {
        Self::start_with(Self::config(url, region)).await
    }

    /// The default test configuration (HTTP on a free port), to adjust before
    /// [`Fog::start_with`].
    pub fn config(url: &str, region: &str) -> Config {
        let mut config = Config::new(region, url);
        config.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.sweep_ms = 20;
        // Tests that restart a fog give it a state directory of their own.
        config.no_state = true;
        config
    }

    /// Starts the server and waits until it is subscribed and `/readyz` says ready.
    pub async fn start_with(mut config: Config) -> Result<Self> {
        if config.http.is_none() {
            config.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        let region = config.region.clone();
        let shutdown = CancellationToken::new();
        let server = tokio::time::timeout(
            Duration::from_secs(20),
            fog_server::start(config, shutdown.clone()),
        )
        .await
        .context("fog server did not connect within 20 s")??;
        let http = server.http_addr.context("fog server has no HTTP address")?;
        let fog = Self {
            region,
            http,
            server: Some(server),
            shutdown,
            client: reqwest::Client::new(),
        };
        fog.wait_ready(Duration::from_secs(10)).await?;
        Ok(fog)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = self.url("/readyz");
        wait_until(
            "the fog server is ready",
            timeout,
            Duration::from_millis(20),
            || async {
                matches!(self.client.get(&url).send().await, Ok(r) if r.status().is_success())
            },
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GETs a JSON document from the fog's HTTP API.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.client.get(self.url(path)).send().await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {path}: {status}");
        Ok(response.json().await?)
    }

    /// GETs a text document (e.g. `/metrics`) and its status code.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String)> {
        let response = self.client.get(self.url(path)).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The value of one metric line (`name{labels}` exactly as exposed), or 0.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.get_text("/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0))
    }

    /// The fog server's shared state (for assertions on reservations).
    pub fn server(&self) -> &FogServer {
        self.server.as_ref().expect("running")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => tokio::time::timeout(Duration::from_secs(10), server.wait())
                .await
                .context("fog server did not stop within 10 s")?,
            None => Ok(()),
        }
    }
}

impl Drop for Fog {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
