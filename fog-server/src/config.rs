//! Command line and environment: `fog-server --help` is the reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;
use geo::{Contains, Coord, LineString, Point, Polygon};
use serde::Serialize;
pub use serverkit::LogFormat;

use crate::planner::{CostParams, PlannerParams};
use cost_model::EnvNames;

/// The environment fallbacks of the cost model's flags.
const COST_ENV: EnvNames = EnvNames {
    road_factor: "FOG_ROAD_FACTOR",
    avg_speed_kmh: "FOG_AVG_SPEED_KMH",
    safety_margin: "FOG_SAFETY_MARGIN",
    max_wait_s: "FOG_MAX_WAIT_S",
};

/// A regional fog server: answers charge requests from the region's vehicles with the
/// station that charges them soonest, and reserves a slot there.
#[derive(Debug, Clone, Parser)]
#[command(name = "fog-server", version, about)]
#[command(mut_args(|arg| CostParams::with_env(arg, &COST_ENV)))]
pub struct Config {
    /// Region id (1-64 of A-Z a-z 0-9 _ -): the `{region}` of the device topics.
    #[arg(long, env = "FOG_REGION")]
    pub region: String,

    /// The regional MQTT broker, e.g. tcp://127.0.0.1:1883.
    #[arg(long, env = "FOG_BROKER", default_value = "tcp://127.0.0.1:1883")]
    pub broker: String,

    /// MQTT client id (default: fog-{region}). Keep it stable: the session is persistent.
    #[arg(long, env = "FOG_CLIENT_ID")]
    pub client_id: Option<String>,

    /// MQTT username.
    #[arg(long, env = "FOG_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password (prefer the environment variable to the flag).
    #[arg(long, env = "FOG_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// File holding the MQTT password (a mounted secret), instead of `--mqtt-password`.
    #[arg(long, env = "FOG_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,

    /// CA certificate (PEM) of an `ssl://` broker (default: the system's trust store).
    #[arg(long, env = "FOG_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,

    /// The region's bounding box: min_lat,min_lon,max_lat,max_lon.
    #[arg(
        long,
        env = "FOG_BOUNDS",
        value_parser = parse_bounds,
        conflicts_with = "polygon",
        allow_hyphen_values = true
    )]
    pub bounds: Option<Bounds>,

    /// The region's outline: a JSON file holding an array of [lat, lon] points.
    #[arg(long, env = "FOG_POLYGON")]
    pub polygon: Option<PathBuf>,

    /// Serve /healthz, /readyz, /metrics and /api/* on this address (port 0: any free port).
    #[arg(long, env = "FOG_HTTP")]
    pub http: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "FOG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often expired reservations are swept, real milliseconds.
    #[arg(long, env = "FOG_SWEEP_MS", default_value_t = 250)]
    pub sweep_ms: u64,

    /// Clock speed: simulated milliseconds per real millisecond (1 = wall clock). A
    /// simulation running N times faster than real time starts its servers with N.
    #[arg(long, env = "FOG_CLOCK_SPEED", default_value_t = 1.0)]
    pub clock_speed: f64,

    /// The wall instant (ms since the Unix epoch) from which the clock runs
    /// `--clock-speed` times faster (default: start-up). Processes given the same epoch
    /// and speed read the same time: see docs/simulation.md.
    #[arg(long, env = "FOG_CLOCK_EPOCH_MS")]
    pub clock_epoch_ms: Option<u64>,

    /// A deployment's shared clock as JSON `{"speed": …, "epoch_ms": …}` (written by
    /// `fogcharge setup`); replaces `--clock-speed` and `--clock-epoch-ms`.
    #[arg(long, env = "FOG_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,

    /// Publish the region's aggregate for central at least this often, real ms (and
    /// sooner, at most every `--aggregate-min-ms`, when something changed).
    #[arg(long, env = "FOG_AGGREGATE_MS", default_value_t = 2000)]
    pub aggregate_ms: u64,

    /// Shortest interval between two aggregates, real ms.
    #[arg(long, env = "FOG_AGGREGATE_MIN_MS", default_value_t = 250)]
    pub aggregate_min_ms: u64,

    /// How long a saturated request waits for central's reroute before it is answered
    /// locally, real ms.
    #[arg(long, env = "FOG_REROUTE_TIMEOUT_MS", default_value_t = 1500)]
    pub reroute_timeout_ms: u64,

    /// Central counts as unreachable when no heartbeat of its came for this long (real
    /// milliseconds; central sends one a second): saturated requests are then answered
    /// at once with the best local choice, not asked of central.
    #[arg(long, env = "FOG_CENTRAL_TIMEOUT_MS", default_value_t = 3500)]
    pub central_timeout_ms: u64,

    /// Ask central also for a request this region can serve when a station of a
    /// neighbouring region (offered on central's heartbeat) gets the vehicle charged
    /// at least this many seconds sooner; 0: ask only for saturated requests.
    #[arg(long, env = "FOG_BORDER_MARGIN_S", default_value_t = 30)]
    pub border_margin_s: u32,

    /// Where the active reservations are kept across restarts (`{region}.jsonl` in
    /// it), relative to the working directory unless absolute: started again in the
    /// same directory, the server comes back with its reservations.
    #[arg(long, env = "FOG_STATE_DIR", default_value = "fog-state")]
    pub state_dir: PathBuf,

    /// Keep reservations in memory only (a restart forgets them).
    #[arg(long, env = "FOG_NO_STATE")]
    pub no_state: bool,

    /// Never ask central to reroute: saturated requests are answered `unavailable`.
    #[arg(long, env = "FOG_NO_REROUTE")]
    pub no_reroute: bool,

    #[command(flatten)]
    pub planner: PlannerParams,
}

impl Config {
    /// A configuration with every default, for `region` on `broker`.
    pub fn new(region: &str, broker: &str) -> Self {
        Self::parse_from(["fog-server", "--region", region, "--broker", broker])
    }

    /// Checks what clap cannot; the message names the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        protocol::validate_id("region", &self.region)
            .map_err(|e| anyhow::anyhow!("--region: {e}"))?;
        if !(self.broker.starts_with("tcp://")
            || self.broker.starts_with("ssl://")
            || self.broker.starts_with("mqtt://")
            || self.broker.starts_with("mqtts://"))
        {
            bail!(
                "--broker must look like tcp://host:port, got {:?}",
                self.broker
            );
        }
        if !(self.clock_speed.is_finite() && self.clock_speed > 0.0) {
            bail!("--clock-speed must be a positive number");
        }
        self.planner.check().map_err(anyhow::Error::msg)
    }

    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("fog-{}", self.region))
    }

    /// The region's area from `--bounds` or `--polygon`, if given.
    pub fn area(&self) -> anyhow::Result<Option<Area>> {
        if let Some(b) = self.bounds {
            return Ok(Some(Area::Bounds(b)));
        }
        match &self.polygon {
            Some(path) => Ok(Some(Area::from_file(path)?)),
            None => Ok(None),
        }
    }
}

/// A latitude/longitude box (not crossing the antimeridian).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    pub min_lat: f64,
    pub min_lon: f64,
    pub max_lat: f64,
    pub max_lon: f64,
}

/// Parses `min_lat,min_lon,max_lat,max_lon`.
pub fn parse_bounds(s: &str) -> Result<Bounds, String> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("expected min_lat,min_lon,max_lat,max_lon: {e}"))?;
    let [min_lat, min_lon, max_lat, max_lon] = parts[..] else {
        return Err(format!(
            "expected 4 numbers min_lat,min_lon,max_lat,max_lon, got {}",
            parts.len()
        ));
    };
    let lat_ok = |v: f64| (-90.0..=90.0).contains(&v);
    let lon_ok = |v: f64| (-180.0..=180.0).contains(&v);
    if !(lat_ok(min_lat) && lat_ok(max_lat) && lon_ok(min_lon) && lon_ok(max_lon)) {
        return Err("latitudes must be in [-90, 90] and longitudes in [-180, 180]".into());
    }
    if min_lat >= max_lat || min_lon >= max_lon {
        return Err("min_lat < max_lat and min_lon < max_lon are required".into());
    }
    Ok(Bounds {
        min_lat,
        min_lon,
        max_lat,
        max_lon,
    })
}

/// The region's area.
#[derive(Debug, Clone, PartialEq)]
pub enum Area {
    Bounds(Bounds),
    Polygon(Polygon<f64>),
}

impl Area {
    /// Reads a JSON array of `[lat, lon]` points (at least 3).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading polygon file {}", path.display()))?;
        let points: Vec<[f64; 2]> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected a JSON array of [lat, lon]", path.display()))?;
        if points.len() < 3 {
            bail!("{}: a polygon needs at least 3 points", path.display());
        }
        for [lat, lon] in &points {
            if !((-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon)) {
                bail!("{}: point [{lat}, {lon}] is out of range", path.display());
            }
        }
        let ring: Vec<Coord<f64>> = points
            .iter()
            .map(|[lat, lon]| Coord { x: *lon, y: *lat })
            .collect();
        Ok(Self::Polygon(Polygon::new(LineString::new(ring), vec![])))
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match self {
            Self::Bounds(b) => {
                (b.min_lat..=b.max_lat).contains(&lat) && (b.min_lon..=b.max_lon).contains(&lon)
            }
            Self::Polygon(poly) => poly.contains(&Point::new(lon, lat)),
        }
    }

    /// The outline as `[lat, lon]` points.
    pub fn outline(&self) -> Vec<[f64; 2]> {
        match self {
            Self::Bounds(b) => vec![
                [b.min_lat, b.min_lon],
                [b.min_lat, b.max_lon],
                [b.max_lat, b.max_lon],
                [b.max_lat, b.min_lon],
            ],
            Self::Polygon(poly) => poly.exterior().coords().map(|c| [c.y, c.x]).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_model_flags_keep_their_fog_variables_and_defaults() {
        let cmd = <Config as clap::CommandFactory>::command();
        let env = |id: &str| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_env().and_then(|e| e.to_str()).map(str::to_owned)
        };
        for (id, var) in [
            ("road_factor", "FOG_ROAD_FACTOR"),
            ("avg_speed_kmh", "FOG_AVG_SPEED_KMH"),
            ("safety_margin", "FOG_SAFETY_MARGIN"),
            ("max_wait_s", "FOG_MAX_WAIT_S"),
            ("session_kwh", "FOG_SESSION_KWH"),
            ("region", "FOG_REGION"),
        ] {
            assert_eq!(env(id).as_deref(), Some(var), "{id}");
        }
        let c = Config::new("north", "tcp://127.0.0.1:1883");
        assert_eq!(c.planner.cost, CostParams::default());
        c.check().unwrap();
        let c = Config::try_parse_from(["fog-server", "--region", "n", "--max-wait-s", "900"]);
        assert_eq!(c.unwrap().planner.cost.max_wait_s, 900);
    }
}
