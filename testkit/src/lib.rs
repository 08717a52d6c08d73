//! Test kit for fogcharge: real brokers on free loopback ports, MQTT test clients, and
//! waits with timeouts instead of sleeps. Used by the other crates' integration tests;
//! never shipped (`publish = false`).
//!
//! Modules:
//! - [`broker`]: [`Mosquitto`], a real `mosquitto` process with its own temporary
//!   directory (config, log, persistence), on a free `127.0.0.1` port or a given one;
//!   start waits until it accepts MQTT connections; stop / restart (same port, same
//!   persistence) / kill; killed on drop. [`MosquittoConfig`] takes extra config lines
//!   (bridges).
//! - [`mqtt`]: [`TestClient`], a paho-mqtt async client with `subscribe`, `publish`,
//!   `publish_json`, `recv_timeout`, `wait_for` / `wait_for_json` (next message on one
//!   topic; others are buffered), `expect_silence`; [`wait_for_bridge`] (a Mosquitto
//!   bridge reports itself connected); and [`wait_until`] for any polled condition
//!   (HTTP state, counters).
//! - [`city`]: [`city::City`], a whole deployment — central broker, bridged regional
//!   brokers from the topology generator, fog servers, central — on free ports.
//! - [`fog`]: [`fog::Fog`], a fog server started in-process exactly as `fog-server`
//!   runs it, with its HTTP API on a free port and helpers to read it.
//! - [`messages`]: builders of the device messages the tests send (station statuses,
//!   charge requests), so that no test spells a whole message out.
//! - [`charge_point`]: a minimal OCPP 1.6J charge point on a plain socket (handshake
//!   with Basic auth, a few calls), for a gateway that is only a port.
//! - [`init_tracing`]: log output for tests, filtered by `RUST_LOG` (default `warn`).
//!
//! Nothing here needs a broker already running; only the `mosquitto` binary (see
//! [`broker::INSTALL_HINT`]).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use testkit::{Mosquitto, MosquittoConfig, TestClient};
//!
//! let broker = Mosquitto::start(MosquittoConfig::new())?;
//! let mut sub = TestClient::connect(&broker.url(), "sub").await?;
//! sub.subscribe("ev/north/#", 1).await?;
//! let publisher = TestClient::connect(&broker.url(), "pub").await?;
//! publisher.publish("ev/north/x", "hello", 1, false).await?;
//! let msg = sub.wait_for("ev/north/x", Duration::from_secs(5)).await?;
//! assert_eq!(msg.payload(), b"hello");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

/// Real Mosquitto processes (shared with the local launcher).
pub use launcher::mosquitto as broker;
pub mod charge_point;
pub mod city;
pub mod messages;
pub mod mqtt;

pub use broker::{Mosquitto, MosquittoConfig, find_mosquitto, find_mosquitto_in, free_port};
pub use mqtt::{TestClient, topic_matches, wait_for_bridge, wait_until};

pub mod fog;

/// Installs a `tracing` subscriber for tests: fmt output through the test writer (shown
/// for failing tests only), filtered by `RUST_LOG` (default `warn`). Safe to call from
/// every test; only the first call installs it.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
