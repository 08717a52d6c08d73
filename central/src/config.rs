//! Command line and environment: `central --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use cost_model::{CostParams, EnvNames};
pub use serverkit::LogFormat;

use crate::core::CoreSettings;

/// The fogcharge central server: keeps the latest aggregate of every region, moves
/// vehicles from saturated regions to neighbours that can serve them sooner, and serves
/// an HTTP API with Prometheus metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "central", version, about)]
#[command(mut_args(|arg| CostParams::with_env(arg, &COST_ENV)))]
pub struct Config {
    /// The central MQTT broker (the regional brokers bridge to it), e.g. tcp://127.0.0.1:1884.
    #[arg(long, env = "CENTRAL_BROKER", default_value = "tcp://127.0.0.1:1884")]
    pub broker: String,

    /// MQTT client id. Keep it stable: the session is persistent, so reroute requests
    /// published while central is down are delivered when it comes back.
    #[arg(long, env = "CENTRAL_CLIENT_ID", default_value = "central")]
    pub client_id: String,

    /// MQTT username.
    #[arg(long, env = "CENTRAL_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password (prefer the environment variable to the flag).
    #[arg(long, env = "CENTRAL_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// File holding the MQTT password (a mounted secret), instead of `--mqtt-password`.
    #[arg(long, env = "CENTRAL_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,

    /// CA certificate (PEM) of an `ssl://` broker (default: the system's trust store).
    #[arg(long, env = "CENTRAL_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<std::path::PathBuf>,

    /// Serve /healthz, /readyz, /metrics and /api/* on this address (port 0: any free port).
    #[arg(long, env = "CENTRAL_HTTP")]
    pub http: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "CENTRAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A region is stale when its latest aggregate arrived longer ago than this (real
    /// milliseconds; about three aggregate periods). Stale regions get no reroutes.
    #[arg(long, env = "CENTRAL_STALE_AFTER_MS", default_value_t = 6000)]
    pub stale_after_ms: u64,

    /// How often central tells every region it is there (and which regions can take
    /// vehicles), real milliseconds. Fog servers that miss a few treat central as gone.
    #[arg(long, env = "CENTRAL_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// How long to wait for a target region's handoff reply before trying the next
    /// candidate, real milliseconds.
    #[arg(long, env = "CENTRAL_HANDOFF_TIMEOUT_MS", default_value_t = 1000)]
    pub handoff_timeout_ms: u64,

    /// Clock speed: clock milliseconds per real millisecond (1 = wall clock). Must
    /// match the fog servers' `--clock-speed`: reroute deadlines are on their clock.
    #[arg(long, env = "CENTRAL_CLOCK_SPEED", default_value_t = 1.0)]
    pub clock_speed: f64,

    /// The wall instant (ms since the Unix epoch) from which the clock runs
    /// `--clock-speed` times faster (default: start-up). Processes given the same epoch
    /// and speed read the same time: see docs/simulation.md.
    #[arg(long, env = "CENTRAL_CLOCK_EPOCH_MS")]
    pub clock_epoch_ms: Option<u64>,

    /// A deployment's shared clock as JSON `{"speed": …, "epoch_ms": …}` (written by
    /// `fogcharge setup`); replaces `--clock-speed` and `--clock-epoch-ms`.
    #[arg(long, env = "CENTRAL_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,

    /// The heartbeat offers each region the stations of other regions that can take
    /// vehicles (fresh, not saturated) within this distance of the region's outline,
    /// km (see docs/fog-central.md).
    #[arg(long, env = "CENTRAL_OFFER_RADIUS_KM", default_value_t = 15.0)]
    pub offer_radius_km: f64,

    /// At most this many offers per heartbeat, nearest to the region's outline first
    /// (0: none).
    #[arg(long, env = "CENTRAL_OFFER_LIMIT", default_value_t = 16)]
    pub offer_limit: usize,

    /// device-sim's JSON report (`--report-json`), shown at `/report`.
    #[arg(long, env = "CENTRAL_REPORT_FILE")]
    pub report_file: Option<PathBuf>,

    /// The cost model (the fog servers' own, see `docs/planner.md`). `--max-wait-s`
    /// counts only for a region whose aggregate does not state its fog's limit (a fog
    /// older than that field): such a region is saturated when its shortest predicted
    /// wait is longer, or when it has no station in service.
    #[command(flatten)]
    pub model: CostParams,
}

/// The most offers a heartbeat may carry (`--offer-limit`): a heartbeat must stay
/// within the fogs' 16 KiB payload limit (central leaves out the farthest offers when
/// it would not).
pub const MAX_OFFER_LIMIT: usize = 100;

/// The environment fallbacks of the cost model's flags.
const COST_ENV: EnvNames = EnvNames {
    road_factor: "CENTRAL_ROAD_FACTOR",
    avg_speed_kmh: "CENTRAL_AVG_SPEED_KMH",
    safety_margin: "CENTRAL_SAFETY_MARGIN",
    max_wait_s: "CENTRAL_MAX_WAIT_S",
};

impl Config {
    /// A configuration with every default, on `broker`.
    pub fn new(broker: &str) -> Self {
        Self::parse_from(["central", "--broker", broker])
    }

    /// Checks what clap cannot; the message names the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if !["tcp://", "ssl://", "mqtt://", "mqtts://"]
            .iter()
            .any(|scheme| self.broker.starts_with(scheme))
        {
            bail!(
                "--broker must look like tcp://host:port, got {:?}",
                self.broker
            );
        }
        if self.client_id.is_empty() {
            bail!("--client-id must not be empty");
        }
        if self.heartbeat_ms == 0 {
            bail!("--heartbeat-ms must be positive");
        }
        if self.stale_after_ms == 0 {
            bail!("--stale-after-ms must be positive");
        }
        if self.handoff_timeout_ms == 0 {
            bail!("--handoff-timeout-ms must be positive");
        }
        if !(self.clock_speed.is_finite() && self.clock_speed > 0.0) {
            bail!("--clock-speed must be a positive number");
        }
        if !(self.offer_radius_km.is_finite() && self.offer_radius_km >= 0.0) {
            bail!("--offer-radius-km must be a number of km, 0 or more");
        }
        if self.offer_limit > MAX_OFFER_LIMIT {
            bail!("--offer-limit must be at most {MAX_OFFER_LIMIT}");
        }
        Ok(self.model.check()?)
    }

    /// What the core ([`crate::core::CentralCore`]) needs of this configuration.
    pub fn core_settings(&self) -> CoreSettings {
        CoreSettings {
            model: self.model,
            stale_after: self.stale_after(),
            handoff_timeout: self.handoff_timeout(),
            heartbeat_period: self.heartbeat(),
            clock_speed: self.clock_speed,
            offer_radius_km: self.offer_radius_km,
            offer_limit: self.offer_limit,
        }
    }

    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.handoff_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_env_names_are_documented() {
        let c = Config::new("tcp://127.0.0.1:1884");
        c.check().unwrap();
        assert_eq!(c.client_id, "central");
        assert_eq!(c.stale_after_ms, 6000);
        assert_eq!(c.model.max_wait_s, 1800);
        assert_eq!(c.handoff_timeout_ms, 1000);
        assert_eq!(c.model, CostParams::default());
        assert!(c.http.is_none());
        assert_eq!((c.offer_radius_km, c.offer_limit), (15.0, 16));
        // The core's defaults are central's.
        assert_eq!(c.core_settings(), CoreSettings::default());
    }

    #[test]
    fn the_core_gets_what_the_flags_say() {
        let c = Config::try_parse_from([
            "central",
            "--stale-after-ms",
            "900",
            "--handoff-timeout-ms",
            "300",
            "--heartbeat-ms",
            "250",
            "--clock-speed",
            "60",
            "--offer-radius-km",
            "7.5",
            "--offer-limit",
            "3",
            "--max-wait-s",
            "600",
        ])
        .unwrap();
        c.check().unwrap();
        let s = c.core_settings();
        assert_eq!(s.stale_after, Duration::from_millis(900));
        assert_eq!(s.handoff_timeout, Duration::from_millis(300));
        assert_eq!(s.heartbeat_period, Duration::from_millis(250));
        assert_eq!(s.clock_speed, 60.0);
        assert_eq!((s.offer_radius_km, s.offer_limit), (7.5, 3));
        assert_eq!(s.model.max_wait_s, 600);
        // Real time on a clock 60 times faster.
        assert_eq!(s.clock_ms(s.handoff_timeout), 18_000);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut c = Config::new("localhost:1884");
        assert!(c.check().unwrap_err().to_string().contains("--broker"));
        c.broker = "tcp://h:1".into();
        c.model.road_factor = 0.5;
        assert!(c.check().unwrap_err().to_string().contains("--road-factor"));
        c.model.road_factor = 1.3;
        c.model.safety_margin = 1.0;
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("--safety-margin")
        );
        c.model.safety_margin = 0.1;
        c.handoff_timeout_ms = 0;
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("--handoff-timeout-ms")
        );
        c.handoff_timeout_ms = 1000;
        c.offer_radius_km = -1.0;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("--offer-radius-km"), "{e}");
        c.offer_radius_km = 15.0;
        c.offer_limit = MAX_OFFER_LIMIT + 1;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("--offer-limit"), "{e}");
        c.offer_limit = MAX_OFFER_LIMIT;
        c.check().unwrap();
    }

    #[test]
    fn the_cost_model_flags_keep_their_central_variables() {
        let cmd = <Config as clap::CommandFactory>::command();
        let env = |id: &str| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_env().and_then(|e| e.to_str()).map(str::to_owned)
        };
        for (id, var) in [
            ("road_factor", "CENTRAL_ROAD_FACTOR"),
            ("avg_speed_kmh", "CENTRAL_AVG_SPEED_KMH"),
            ("safety_margin", "CENTRAL_SAFETY_MARGIN"),
            ("max_wait_s", "CENTRAL_MAX_WAIT_S"),
            ("broker", "CENTRAL_BROKER"),
        ] {
            assert_eq!(env(id).as_deref(), Some(var), "{id}");
        }
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "central",
            "--broker",
            "tcp://127.0.0.1:1884",
            "--http",
            "127.0.0.1:8080",
            "--log-format",
            "json",
            "--road-factor",
            "1.5",
        ])
        .unwrap();
        assert_eq!(c.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.model.road_factor, 1.5);
    }
}
