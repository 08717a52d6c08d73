//! Command line and environment: `ocpp-gateway --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, ValueEnum};
pub use serverkit::LogFormat;

/// An OCPP 1.6J gateway for one region: charge points connect over WebSocket and
/// appear as stations on the region's broker; the fog's reservations reach them as
/// ReserveNow / CancelReservation.
#[derive(Debug, Clone, Parser)]
#[command(name = "ocpp-gateway", version, about)]
pub struct Config {
    /// Region id: the `{region}` of the station topics.
    #[arg(long, env = "OCPP_REGION")]
    pub region: String,

    /// The regional MQTT broker, e.g. tcp://127.0.0.1:1883.
    #[arg(long, env = "OCPP_BROKER", default_value = "tcp://127.0.0.1:1883")]
    pub broker: String,

    /// MQTT client id (default: ocpp-{region}). Keep it stable: the session is persistent.
    #[arg(long, env = "OCPP_CLIENT_ID")]
    pub client_id: Option<String>,

    /// MQTT username (the deployments' `ocpp-{region}` user).
    #[arg(long, env = "OCPP_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password (prefer the environment variable to the flag).
    #[arg(long, env = "OCPP_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// File holding the MQTT password (a mounted secret), instead of `--mqtt-password`.
    #[arg(long, env = "OCPP_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,

    /// CA certificate (PEM) of an `ssl://` broker.
    #[arg(long, env = "OCPP_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,

    /// Where charge points connect: ws://{listen}/ocpp/{chargePointId} (wss:// with
    /// --tls-cert). Port 0: any free port.
    #[arg(long, env = "OCPP_LISTEN", default_value = "0.0.0.0:8887")]
    pub listen: SocketAddr,

    /// The chargers file (TOML, `[[charger]]` with id, lat, lon, connectors, power_kw,
    /// optional password hash); reloaded on SIGHUP.
    #[arg(long, env = "OCPP_CHARGERS")]
    pub chargers: PathBuf,

    /// Accept charge points that are not in the chargers file (they speak OCPP but
    /// become stations only once listed there with a location).
    #[arg(long, env = "OCPP_ACCEPT_UNKNOWN")]
    pub accept_unknown: bool,

    /// TLS certificate chain (PEM): serve wss:// (security profile 2).
    #[arg(long, env = "OCPP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "OCPP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve /healthz, /readyz and /metrics on this address.
    #[arg(long, env = "OCPP_HTTP")]
    pub http: Option<SocketAddr>,

    /// Heartbeat interval given to charge points in BootNotification, seconds; no
    /// message for twice this long marks the charger offline.
    #[arg(long, env = "OCPP_HEARTBEAT_S", default_value_t = 300)]
    pub heartbeat_s: u32,

    /// How long a call to a charge point (ReserveNow, …) may go unanswered, ms.
    #[arg(long, env = "OCPP_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub call_timeout_ms: u64,

    /// Largest WebSocket message a charge point may send, bytes; a larger one closes
    /// its connection.
    #[arg(long, env = "OCPP_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Who Authorize / StartTransaction accept: everyone, or only id tags holding a
    /// reservation at that charger.
    #[arg(long, env = "OCPP_AUTHORIZE", value_enum, default_value_t = AuthorizeRule::Accept)]
    pub authorize: AuthorizeRule,

    /// Log format.
    #[arg(long, env = "OCPP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Which id tags Authorize accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorizeRule {
    /// Every id tag.
    Accept,
    /// Only id tags with a reservation at the charger.
    Reserved,
}

impl Config {
    /// A configuration with every default.
    pub fn new(region: &str, broker: &str, chargers: &std::path::Path) -> Self {
        Self::parse_from([
            "ocpp-gateway",
            "--region",
            region,
            "--broker",
            broker,
            "--chargers",
            &chargers.display().to_string(),
        ])
    }

    /// Checks what clap cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        protocol::validate_id("region", &self.region)
            .map_err(|e| anyhow::anyhow!("--region: {e}"))?;
        if !["tcp://", "ssl://", "mqtt://", "mqtts://"]
            .iter()
            .any(|p| self.broker.starts_with(p))
        {
            bail!(
                "--broker must look like tcp://host:port, got {:?}",
                self.broker
            );
        }
        if self.heartbeat_s == 0 {
            bail!("--heartbeat-s must be at least 1");
        }
        if self.max_message_bytes < 1024 {
            bail!("--max-message-bytes must be at least 1024");
        }
        Ok(())
    }

    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("ocpp-{}", self.region))
    }
}
