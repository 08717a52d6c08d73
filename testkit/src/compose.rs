//! Runs the services of a docker-compose file as local processes, each in its own Linux
//! network namespace: a stand-in for `docker compose up` where there is no Docker engine
//! (this machine, CI). Integration tests use it to prove that a compose file such as
//! `deploy/regions.yml` works — each service's command, environment and mounted config
//! files exactly as the compose file states them, each service name resolving to its own
//! address — without building or pulling images.
//!
//! [`ComposeRun::start`] reads the file, then:
//!
//! - **Network.** It makes a Linux bridge in the host namespace (`fcbr<hex>`) with a
//!   random `10.231.X.0/24` (the bridge is `.1`), and for every service a network
//!   namespace `fc-<hex>-<service>` joined to the bridge by a veth pair, its end named
//!   `eth0` with address `.10`, `.11`, … in file order; `lo` is up. So every service can
//!   listen on the same port (all brokers on 1883), and the host reaches each one at
//!   [`ComposeRun::address`]. `/etc/netns/<ns>/hosts` maps `localhost` and every service
//!   name to its address and `/etc/netns/<ns>/resolv.conf` names no DNS server;
//!   `ip netns exec` bind-mounts both over `/etc` for the service's processes, which is
//!   how service names resolve like on a compose network.
//! - **Volumes.** A named volume `v` is the directory `<root>/volumes/v` (see
//!   [`ComposeRun::volume`]), shared by every service that mounts it. A bind-mounted
//!   directory is the host directory itself; a bind-mounted file is *copied* to
//!   `<root>/mounts/<service>/` with its text path-rewritten (below), so the original is
//!   never modified.
//! - **Paths.** Nothing is mounted: instead every occurrence of a mount's container path
//!   (as a path prefix) in the service's command, environment values, healthcheck and the
//!   text of its bind-mounted files is replaced by the host path — longest container path
//!   first. `/mosquitto/data/` in a broker config becomes `<root>/volumes/<volume>/`.
//! - **Processes.** Services start in dependency order, honouring `depends_on`
//!   conditions (`service_started`, `service_healthy` — the healthcheck is polled,
//!   `service_completed_successfully`). Each runs as `ip netns exec <ns> <argv…>` in its
//!   own process group with a clean environment (`PATH`, `HOME=/tmp`, then the service's
//!   `environment`), working directory `<root>/work/<service>`, stdout and stderr
//!   appended to `<root>/logs/<service>.log` ([`ComposeRun::log`]). `argv[0]` (also of a
//!   `CMD` healthcheck) is looked up in the `programs` mapping, e.g.
//!   `("fogcharge", path_to_the_built_binary)`, else found on `PATH`.
//! - **Stop.** [`ComposeRun::stop`] (also on drop) sends `SIGTERM` to every service's
//!   process group in reverse start order, waits up to 10 s each, then `SIGKILL`s; kills
//!   anything left in the namespaces; and deletes the namespaces, veths, bridge and
//!   `/etc/netns` entries. The temporary root (logs, volumes) lives until the
//!   [`ComposeRun`] is dropped; set `FC_COMPOSE_KEEP=1` to keep it (its path is printed).
//!
//! Compose subset: `services` with `command` (list form only: the whole argv),
//! `environment` (map or `KEY=VALUE` list), `volumes` (short syntax `SRC:DST[:ro|rw]`;
//! `SRC` starting with `.` or `/` is a bind mount relative to the compose file, otherwise
//! a named volume that must be declared under the top-level `volumes`), `depends_on`
//! (list or long form) and `healthcheck` (`test` as `CMD`/`CMD-SHELL`/`NONE` list or a
//! shell string; `interval`, `timeout`, `retries`, `start_period`, `disable`). Anchors
//! and merge keys (`<<: *x`) are applied; `x-*` and every other key (`image`, `build`,
//! `ports`, `restart`, `stop_grace_period`, …) are ignored. `$$` becomes `$`; variable
//! interpolation (`${VAR}`, `$VAR`) is refused with an error.
//!
//! Limits — what it does *not* stand in for:
//!
//! - no images: the programs come from this machine (`PATH`, `programs`), so an image's
//!   entrypoint, default command, files and default healthcheck do not exist here;
//! - no user switching: services run as root (the caller must be root), and named
//!   volumes are made world-writable (`chmod -R a+rwX`) before each service starts, in
//!   place of the image's ownership (Mosquitto started as root drops to `mosquitto`);
//! - paths are rewritten, not mounted: a container path the program builds itself, or
//!   one written inside a file that is not bind-mounted as a file (e.g. a file a service
//!   writes into a named volume, or files in a bind-mounted directory), is not rewritten;
//!   `:ro` is not enforced;
//! - no restart policies, no published `ports` (reach services at their address), no
//!   DNS beyond the service names, no outside network access from the services.
//!
//! Needs root and the `ip` command (iproute2); otherwise [`ComposeRun::start`] fails
//! saying so (callers must not treat that as a skip). Services run in their own process
//! groups, so if the test process itself is killed (not unwound), they and the network
//! objects outlive it: find them with `ip netns list | grep ^fc-` and
//! `ip link show type bridge`.
//!
//! ```no_run
//! # fn example() -> anyhow::Result<()> {
//! use std::path::Path;
//! use std::time::Duration;
//! use testkit::compose::ComposeRun;
//!
//! let fogcharge = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/fogcharge");
//! let mut run = ComposeRun::start(
//!     Path::new("deploy/regions.yml"),
//!     &[("fogcharge", fogcharge.as_path())],
//! )?;
//! let status = run.wait_exit("device-sim", Duration::from_secs(600))?;
//! assert!(status.success(), "{}", run.log("device-sim"));
//! run.stop();
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// Lines of a service's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// Healthcheck defaults when the compose file gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRIES: u32 = 3;
/// Healthchecks are polled at least this often, whatever the stated interval.
const MAX_POLL: Duration = Duration::from_secs(1);
/// A `service_healthy` dependency gets at least this long.
const MIN_HEALTHY_BUDGET: Duration = Duration::from_secs(60);
/// How long a `service_completed_successfully` dependency may run.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a service gets to exit after `SIGTERM`.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Service addresses are `.10`, `.11`, … of the /24.
const FIRST_HOST: usize = 10;
const MAX_SERVICES: usize = 240;
/// Set (to anything but `0` or empty) to keep the temporary root after drop.
const KEEP_ENV: &str = "FC_COMPOSE_KEEP";
/// Directories added to `PATH` for the services when missing, as in Debian images.
const STANDARD_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Network setup (choosing a free subnet) is serialised within the process.
static NETWORK_LOCK: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// The compose file
// ---------------------------------------------------------------------------------------

/// A `depends_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

impl Condition {
    fn parse(text: &str) -> Result<Self> {
        match text {
            "service_started" => Ok(Self::Started),
            "service_healthy" => Ok(Self::Healthy),
            "service_completed_successfully" => Ok(Self::CompletedSuccessfully),
            other => bail!(
                "unknown depends_on condition `{other}` (expected service_started, \
                 service_healthy or service_completed_successfully)"
            ),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Started => "service_started",
            Self::Healthy => "service_healthy",
            Self::CompletedSuccessfully => "service_completed_successfully",
        }
    }
}

/// A healthcheck's `test`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HealthTest {
    /// `["CMD", argv…]`.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "…"]` or a plain string: run with `sh -c`.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Healthcheck {
    test: HealthTest,
    interval: Duration,
    timeout: Duration,
    retries: u32,
    start_period: Duration,
}

/// A short-syntax volume entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mount {
    /// `name:/container/path`.
    Named { name: String, target: String },
    /// `./host/path:/container/path`, `source` absolute and existing.
    Bind { source: PathBuf, target: String },
}

impl Mount {
    fn target(&self) -> &str {
        match self {
            Self::Named { target, .. } | Self::Bind { target, .. } => target,
        }
    }
}

#[derive(Debug, Clone)]
struct ServiceSpec {
    name: String,
    /// The full argv, `$$` unescaped, container paths not yet rewritten.
    argv: Vec<String>,
    environment: Vec<(String, String)>,
    mounts: Vec<Mount>,
    depends_on: Vec<(String, Condition)>,
    healthcheck: Option<Healthcheck>,
}

#[derive(Debug)]
struct ComposeSpec {
    /// In file order.
    services: Vec<ServiceSpec>,
    /// Declared named volumes.
    volumes: Vec<String>,
}

#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    command: Option<Value>,
    #[serde(default)]
    environment: Option<RawEnvironment>,
    #[serde(default)]
    volumes: Vec<Value>,
    #[serde(default)]
    depends_on: Option<RawDependsOn>,
    #[serde(default)]
    healthcheck: Option<RawHealthcheck>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnvironment {
    Map(BTreeMap<String, Value>),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, Option<RawDependency>>),
}

#[derive(Deserialize)]
struct RawDependency {
    #[serde(default)]
    condition: Option<String>,
}

#[derive(Deserialize)]
struct RawHealthcheck {
    #[serde(default)]
    test: Option<Value>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

/// Reads and checks a compose file (merge keys applied, bind sources resolved against
/// its directory).
fn load(compose_file: &Path) -> Result<ComposeSpec> {
    let text = fs::read_to_string(compose_file)
        .with_context(|| format!("read compose file {}", compose_file.display()))?;
    let base_dir = compose_file
        .parent()
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .unwrap_or(Path::new("."));
    parse(&text, base_dir).with_context(|| format!("compose file {}", compose_file.display()))
}

fn parse(text: &str, base_dir: &Path) -> Result<ComposeSpec> {
    let mut value: Value = serde_yaml_ng::from_str(text).context("parse YAML")?;
    value
        .apply_merge()
        .context("apply YAML merge keys (`<<`)")?;
    let Value::Mapping(top) = value else {
        bail!("the top level is not a mapping");
    };

    let volumes = match top.get("volumes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Mapping(map)) => map
            .keys()
            .map(|key| {
                key.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("a volume name is not a string: {key:?}"))
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("top-level `volumes` is not a mapping: {other:?}"),
    };

    let Some(Value::Mapping(raw_services)) = top.get("services") else {
        bail!("no `services` mapping");
    };
    let mut services = Vec::new();
    for (key, raw) in raw_services {
        let name = key
            .as_str()
            .ok_or_else(|| anyhow!("a service name is not a string: {key:?}"))?;
        let service = parse_service(name, raw.clone(), base_dir, &volumes)
            .with_context(|| format!("service `{name}`"))?;
        services.push(service);
    }
    if services.is_empty() {
        bail!("no services");
    }
    if services.len() > MAX_SERVICES {
        bail!(
            "{} services; at most {MAX_SERVICES} are supported",
            services.len()
        );
    }
    for service in &services {
        for (dependency, _) in &service.depends_on {
            if !services.iter().any(|other| &other.name == dependency) {
                bail!(
                    "service `{}` depends on `{dependency}`, which is not a service",
                    service.name
                );
            }
        }
    }
    start_order(&services)?;
    Ok(ComposeSpec { services, volumes })
}

fn parse_service(
    name: &str,
    raw: Value,
    base_dir: &Path,
    declared_volumes: &[String],
) -> Result<ServiceSpec> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("invalid service name (use letters, digits, `.`, `_`, `-`)");
    }
    let raw: RawService = serde_yaml_ng::from_value(raw)?;

    let argv = match raw.command {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                scalar(item)
                    .ok_or_else(|| anyhow!("a `command` item is not a scalar: {item:?}"))
                    .and_then(|text| unescape(&text))
            })
            .collect::<Result<Vec<_>>>()
            .context("command")?,
        Some(Value::String(_)) => {
            bail!("`command` is a string; only the list form (the whole argv) is supported")
        }
        None => bail!("no `command` (there is no image to take a default command from)"),
        Some(other) => bail!("`command` is neither a list nor a string: {other:?}"),
    };
    if argv.is_empty() || argv[0].is_empty() {
        bail!("`command` is empty");
    }

    let environment = match raw.environment {
        None => Vec::new(),
        Some(RawEnvironment::Map(map)) => {
            let mut environment = Vec::new();
            for (key, value) in map {
                // `KEY:` with no value passes the host's value in compose; the
                // environment here is clean, so it stays unset.
                if value.is_null() {
                    continue;
                }
                let text = scalar(&value).ok_or_else(|| {
                    anyhow!("environment `{key}` is not a string, number or boolean")
                })?;
                let text = unescape(&text).with_context(|| format!("environment `{key}`"))?;
                environment.push((key, text));
            }
            environment
        }
        Some(RawEnvironment::List(items)) => {
            let mut environment = Vec::new();
            for item in items {
                if let Some((key, value)) = item.split_once('=') {
                    let value = unescape(value).with_context(|| format!("environment `{key}`"))?;
                    environment.push((key.to_owned(), value));
                }
            }
            environment
        }
    };

    let mut mounts: Vec<Mount> = Vec::new();
    for item in &raw.volumes {
        let Value::String(text) = item else {
            bail!("volume {item:?}: only the short syntax `SRC:DST[:ro]` is supported");
        };
        let mount = parse_mount(text, base_dir, declared_volumes)
            .with_context(|| format!("volume `{text}`"))?;
        if mounts.iter().any(|other| other.target() == mount.target()) {
            bail!("two volumes are mounted at `{}`", mount.target());
        }
        mounts.push(mount);
    }

    let depends_on = match raw.depends_on {
        None => Vec::new(),
        Some(RawDependsOn::List(names)) => names
            .into_iter()
            .map(|dependency| (dependency, Condition::Started))
            .collect(),
        Some(RawDependsOn::Map(map)) => map
            .into_iter()
            .map(|(dependency, options)| {
                let condition = match options.and_then(|options| options.condition) {
                    None => Condition::Started,
                    Some(text) => Condition::parse(&text)
                        .with_context(|| format!("depends_on `{dependency}`"))?,
                };
                Ok((dependency, condition))
            })
            .collect::<Result<_>>()?,
    };
    if depends_on.iter().any(|(dependency, _)| dependency == name) {
        bail!("depends on itself");
    }

    let healthcheck = match raw.healthcheck {
        None => None,
        Some(raw) => parse_healthcheck(raw).context("healthcheck")?,
    };

    Ok(ServiceSpec {
        name: name.to_owned(),
        argv,
        environment,
        mounts,
        depends_on,
        healthcheck,
    })
}

fn parse_mount(text: &str, base_dir: &Path, declared_volumes: &[String]) -> Result<Mount> {
    let text = unescape(text)?;
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target) = match parts.as_slice() {
        [source, target] => (*source, *target),
        [source, target, mode] => {
            if !matches!(*mode, "ro" | "rw") {
                bail!("unsupported mode `{mode}` (expected ro or rw)");
            }
            (*source, *target)
        }
        _ => bail!("expected `SRC:DST` or `SRC:DST:ro` (anonymous volumes are not supported)"),
    };
    if !target.starts_with('/') {
        bail!("the container path `{target}` is not absolute");
    }
    let target = target.trim_end_matches('/');
    if target.is_empty() {
        bail!("cannot mount over `/`");
    }
    if source.is_empty() {
        bail!("empty source");
    }
    if source.starts_with('.') || source.starts_with('/') {
        let path = base_dir.join(source);
        let source = path
            .canonicalize()
            .with_context(|| format!("bind mount source {} does not exist", path.display()))?;
        Ok(Mount::Bind {
            source,
            target: target.to_owned(),
        })
    } else {
        if !declared_volumes.iter().any(|volume| volume == source) {
            bail!("named volume `{source}` is not declared under the top-level `volumes`");
        }
        Ok(Mount::Named {
            name: source.to_owned(),
            target: target.to_owned(),
        })
    }
}

fn parse_healthcheck(raw: RawHealthcheck) -> Result<Option<Healthcheck>> {
    if raw.disable {
        return Ok(None);
    }
    let test = match raw.test {
        // Without an image there is no default healthcheck to inherit.
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => HealthTest::Shell(unescape(&text)?),
        Some(Value::Sequence(items)) => {
            let items = items
                .iter()
                .map(|item| {
                    scalar(item)
                        .ok_or_else(|| anyhow!("a `test` item is not a scalar: {item:?}"))
                        .and_then(|text| unescape(&text))
                })
                .collect::<Result<Vec<_>>>()?;
            match items.split_first() {
                Some((kind, rest)) if kind == "CMD" => {
                    if rest.is_empty() || rest[0].is_empty() {
                        bail!("`CMD` without a command");
                    }
                    HealthTest::Cmd(rest.to_vec())
                }
                Some((kind, rest)) if kind == "CMD-SHELL" => match rest {
                    [script] => HealthTest::Shell(script.clone()),
                    _ => bail!("`CMD-SHELL` takes exactly one string"),
                },
                Some((kind, _)) if kind == "NONE" => return Ok(None),
                _ => bail!("`test` must start with CMD, CMD-SHELL or NONE"),
            }
        }
        Some(other) => bail!("`test` is neither a list nor a string: {other:?}"),
    };
    let duration = |field: &str, text: Option<String>, default: Duration| -> Result<Duration> {
        match text {
            None => Ok(default),
            Some(text) => parse_duration(&text).with_context(|| format!("`{field}`")),
        }
    };
    Ok(Some(Healthcheck {
        test,
        interval: duration("interval", raw.interval, DEFAULT_INTERVAL)?,
        timeout: duration("timeout", raw.timeout, DEFAULT_TIMEOUT)?,
        retries: raw.retries.unwrap_or(DEFAULT_RETRIES),
        start_period: duration("start_period", raw.start_period, Duration::ZERO)?,
    }))
}

/// A scalar as compose stringifies it.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Compose interpolation, minus variables: `$$` is a literal `$`; `${…}` and `$NAME`
/// (which compose would substitute) are errors.
fn unescape(text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => bail!(
                "`{text}` uses `${{…}}` interpolation, which is not supported (write `$$` for a \
                 literal `$`)"
            ),
            Some(next) if next.is_ascii_alphabetic() || *next == '_' => bail!(
                "`{text}` uses `$NAME` interpolation, which is not supported (write `$$` for a \
                 literal `$`)"
            ),
            _ => out.push('$'),
        }
    }
    Ok(out)
}

/// A compose duration: `2s`, `500ms`, `1m30s`, `1.5h`, `10us`.
fn parse_duration(text: &str) -> Result<Duration> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        bail!("empty duration");
    }
    let mut total = 0f64;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let number: f64 = number
            .parse()
            .map_err(|_| anyhow!("invalid duration `{text}`"))?;
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => bail!("invalid duration `{text}` (units: h, m, s, ms, us, ns)"),
        };
        total += number * seconds;
        rest = after;
    }
    Duration::try_from_secs_f64(total).map_err(|_| anyhow!("invalid duration `{text}`"))
}

/// Service indices in start order: dependencies first, otherwise file order.
fn start_order(services: &[ServiceSpec]) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, service)| (service.name.as_str(), i))
        .collect();
    let mut done = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    while order.len() < services.len() {
        let next = (0..services.len()).find(|&i| {
            !done[i]
                && services[i]
                    .depends_on
                    .iter()
                    .all(|(dependency, _)| index.get(dependency.as_str()).is_some_and(|&d| done[d]))
        });
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                let left: Vec<&str> = (0..services.len())
                    .filter(|&i| !done[i])
                    .map(|i| services[i].name.as_str())
                    .collect();
                bail!("dependency cycle among services {}", left.join(", "));
            }
        }
    }
    Ok(order)
}

// ---------------------------------------------------------------------------------------
// Path rewriting
// ---------------------------------------------------------------------------------------

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~')
}

fn ends_path(c: char) -> bool {
    c == '/'
        || c.is_whitespace()
        || matches!(c, '"' | '\'' | '`' | ':' | ',' | ';' | ')' | ']' | '}')
}

/// Replaces every container path of `table` (container → host, sorted longest container
/// path first) where it appears as a whole path or a path prefix: not preceded by a path
/// character, followed by `/`, the end, whitespace, a quote, `:` or similar punctuation.
/// One pass, so replaced text is never rewritten again.
fn rewrite_paths(text: &str, table: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut i = 0;
    'scan: while let Some(c) = text[i..].chars().next() {
        if prev.is_none_or(|p| !is_path_char(p)) {
            for (container, host) in table {
                let matched = text[i..]
                    .strip_prefix(container.as_str())
                    .is_some_and(|after| after.chars().next().is_none_or(ends_path));
                if matched {
                    out.push_str(host);
                    i += container.len();
                    prev = container.chars().last();
                    continue 'scan;
                }
            }
        }
        out.push(c);
        i += c.len_utf8();
        prev = Some(c);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------

/// What a service runs, resolved against its mount table and `programs`.
#[derive(Debug, Default)]
struct Prepared {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    health: Option<(Vec<String>, Healthcheck)>,
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    netns: String,
    address: Ipv4Addr,
    work_dir: PathBuf,
    log_path: PathBuf,
    health_log_path: PathBuf,
    prepared: Prepared,
    child: Option<Child>,
    healthy: bool,
}

/// The services of a compose file running as local processes, one network namespace per
/// service (see the [module docs](self)). Stopped and cleaned up by [`ComposeRun::stop`]
/// or on drop.
#[derive(Debug)]
pub struct ComposeRun {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    ip: PathBuf,
    path_var: String,
    tag: String,
    prefix: String,
    bridge: Option<String>,
    host_veths: Vec<String>,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    services: Vec<Service>,
    volumes: Vec<String>,
    /// Indices into `services`, in start order.
    started: Vec<usize>,
    stopped: bool,
}

impl ComposeRun {
    /// Reads `compose_file` and starts its services, each in its own network namespace,
    /// in dependency order, waiting for `depends_on` conditions. `programs` maps
    /// `argv[0]` names (of commands and `CMD` healthchecks) to binaries on this machine,
    /// e.g. `[("fogcharge", path)]`; other names are looked up on `PATH`.
    ///
    /// Fails — after stopping whatever was started — if not running as root, if `ip` is
    /// missing, if the file uses something unsupported, or if a service cannot be
    /// started or a dependency condition fails (the error quotes the failing service's
    /// log).
    pub fn start(compose_file: &Path, programs: &[(&str, &Path)]) -> Result<ComposeRun> {
        let ip = preflight()?;
        let compose = load(compose_file)?;
        let order = start_order(&compose.services)?;

        let root = tempfile::Builder::new()
            .prefix("fc-compose-")
            .tempdir()
            .context("create the temporary root")?;
        let root_path = root.path().to_path_buf();
        set_mode(&root_path, 0o755)?;
        for dir in ["logs", "work", "volumes", "mounts"] {
            create_dir(&root_path.join(dir), 0o755)?;
        }

        let tag = format!("{:06x}", random_u64() & 0xff_ffff);
        let prefix = format!("fc-{tag}-");
        let services = compose
            .services
            .into_iter()
            .map(|spec| Service {
                netns: format!("{prefix}{}", spec.name),
                address: Ipv4Addr::UNSPECIFIED,
                work_dir: root_path.join("work").join(&spec.name),
                log_path: root_path.join("logs").join(format!("{}.log", spec.name)),
                health_log_path: root_path
                    .join("logs")
                    .join(format!("{}.health.log", spec.name)),
                prepared: Prepared::default(),
                child: None,
                healthy: false,
                spec,
            })
            .collect();

        let mut run = ComposeRun {
            root: Some(root),
            root_path,
            ip,
            path_var: service_path_var(),
            tag,
            prefix,
            bridge: None,
            host_veths: Vec::new(),
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            services,
            volumes: compose.volumes,
            started: Vec::new(),
            stopped: false,
        };
        // From here on, an error drops `run`, which stops and cleans up everything.
        run.setup_network()?;
        for volume in &run.volumes {
            create_dir(&run.volume(volume), 0o777)?;
        }
        for idx in order {
            run.wait_for_dependencies(idx)?;
            run.spawn(idx, programs)?;
        }
        Ok(run)
    }

    /// The service's address on the run's network (reachable from the host too), or
    /// `None` for an unknown service.
    pub fn address(&self, service: &str) -> Option<Ipv4Addr> {
        self.find(service).map(|idx| self.services[idx].address)
    }

    /// The host directory of named volume `name` (`<root>/volumes/<name>`); it exists
    /// while the run lives (also after [`stop`](Self::stop)) if the volume is declared.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root_path.join("volumes").join(name)
    }

    /// Everything the service wrote to stdout and stderr so far (empty for an unknown or
    /// not yet started service).
    pub fn log(&self, service: &str) -> String {
        self.find(service)
            .map(|idx| read_lossy(&self.services[idx].log_path))
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the service's process to exit; fails, quoting its log,
    /// if it is still running then (or the service is unknown or was never started).
    pub fn wait_exit(&mut self, service: &str, timeout: Duration) -> Result<ExitStatus> {
        let idx = self
            .find(service)
            .ok_or_else(|| anyhow!("no service `{service}` in this compose run"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(idx)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "service `{service}` still running after {timeout:?}\n{}",
                    self.log_excerpt(idx)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the service's process is running (started and not exited).
    pub fn is_running(&mut self, service: &str) -> bool {
        self.find(service)
            .is_some_and(|idx| matches!(self.try_wait(idx), Ok(None)))
    }

    /// The name of the service's network namespace (`<prefix><service>`).
    pub fn netns(&self, service: &str) -> Option<&str> {
        self.find(service)
            .map(|idx| self.services[idx].netns.as_str())
    }

    /// The prefix of every network namespace of this run (`fc-<hex>-`).
    pub fn netns_prefix(&self) -> &str {
        &self.prefix
    }

    /// The temporary root: `logs/`, `volumes/`, `mounts/` (rewritten file copies),
    /// `work/` (working directories).
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Stops every running service — `SIGTERM` to its process group in reverse start
    /// order, up to 10 s each, then `SIGKILL` — kills anything left in the namespaces,
    /// and deletes the namespaces, veths, bridge and `/etc/netns` entries. Volumes and
    /// logs stay until the run is dropped. Idempotent; never panics.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for idx in self.started.clone().into_iter().rev() {
            self.terminate(idx);
        }
        for ns in &self.namespaces {
            if let Ok(pids) = run_ip(&self.ip, &["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    signal(pid, "KILL");
                }
            }
        }
        for veth in &self.host_veths {
            let _ = run_ip(&self.ip, &["link", "del", veth]);
        }
        for ns in &self.namespaces {
            let _ = run_ip(&self.ip, &["netns", "del", ns]);
        }
        if let Some(bridge) = &self.bridge {
            let _ = run_ip(&self.ip, &["link", "del", bridge]);
        }
        for dir in &self.etc_dirs {
            let _ = fs::remove_dir_all(dir);
        }
        self.host_veths.clear();
        self.namespaces.clear();
        self.etc_dirs.clear();
        self.bridge = None;
    }

    fn find(&self, service: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|candidate| candidate.spec.name == service)
    }

    fn try_wait(&mut self, idx: usize) -> Result<Option<ExitStatus>> {
        let service = &mut self.services[idx];
        let child = service
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("service `{}` was not started", service.spec.name))?;
        child
            .try_wait()
            .with_context(|| format!("wait for service `{}`", service.spec.name))
    }

    fn log_excerpt(&self, idx: usize) -> String {
        let service = &self.services[idx];
        excerpt(&service.log_path, &format!("`{}` log", service.spec.name))
    }

    /// Bridge, namespaces, veths, `/etc/netns` files. Every resource is recorded before
    /// the next step so that `stop` removes it if a later step fails.
    fn setup_network(&mut self) -> Result<()> {
        let _guard = NETWORK_LOCK
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let bridge = format!("fcbr{}", self.tag);
        let mut octet = None;
        for _ in 0..20 {
            let used = used_subnets(&self.ip)?;
            let candidates: Vec<u8> = (1..=250).filter(|x| !used.contains(x)).collect();
            if candidates.is_empty() {
                bail!("no free subnet in 10.231.1.0/24 … 10.231.250.0/24");
            }
            let x = candidates[(random_u64() % candidates.len() as u64) as usize];
            run_ip(&self.ip, &["link", "add", &bridge, "type", "bridge"])?;
            self.bridge = Some(bridge.clone());
            run_ip(
                &self.ip,
                &["addr", "add", &format!("10.231.{x}.1/24"), "dev", &bridge],
            )?;
            // Another process may have picked the same subnet at the same time.
            if count_subnet_users(&self.ip, x)? == 1 {
                octet = Some(x);
                break;
            }
            run_ip(&self.ip, &["link", "del", &bridge])?;
            self.bridge = None;
            std::thread::sleep(Duration::from_millis(random_u64() % 100));
        }
        let x = octet.ok_or_else(|| anyhow!("could not find a free 10.231.X.0/24 subnet"))?;
        run_ip(&self.ip, &["link", "set", &bridge, "up"])?;

        for i in 0..self.services.len() {
            let host_octet = u8::try_from(FIRST_HOST + i).context("too many services")?;
            let address = Ipv4Addr::new(10, 231, x, host_octet);
            self.services[i].address = address;
            let ns = self.services[i].netns.clone();
            run_ip(&self.ip, &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let host_end = format!("fc{}h{i}", self.tag);
            let peer = format!("fc{}p{i}", self.tag);
            run_ip(
                &self.ip,
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", &peer,
                ],
            )?;
            self.host_veths.push(host_end.clone());
            run_ip(&self.ip, &["link", "set", &host_end, "master", &bridge])?;
            run_ip(&self.ip, &["link", "set", &host_end, "up"])?;
            run_ip(&self.ip, &["link", "set", &peer, "netns", &ns])?;
            run_ip(&self.ip, &["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
            run_ip(
                &self.ip,
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            run_ip(&self.ip, &["-n", &ns, "link", "set", "eth0", "up"])?;
            run_ip(&self.ip, &["-n", &ns, "link", "set", "lo", "up"])?;
        }

        let mut hosts = String::from("127.0.0.1 localhost\n");
        for service in &self.services {
            hosts.push_str(&format!("{} {}\n", service.address, service.spec.name));
        }
        for i in 0..self.services.len() {
            let dir = Path::new("/etc/netns").join(&self.services[i].netns);
            self.etc_dirs.push(dir.clone());
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            write_file(&dir.join("hosts"), hosts.as_bytes(), 0o644)?;
            write_file(
                &dir.join("resolv.conf"),
                b"# testkit::compose: no DNS server; service names are in /etc/hosts\n",
                0o644,
            )?;
        }
        Ok(())
    }

    fn wait_for_dependencies(&mut self, idx: usize) -> Result<()> {
        let dependent = self.services[idx].spec.name.clone();
        for (dependency, condition) in self.services[idx].spec.depends_on.clone() {
            let d = self
                .find(&dependency)
                .ok_or_else(|| anyhow!("`{dependent}` depends on unknown `{dependency}`"))?;
            match condition {
                // Started already: dependencies come first in the start order.
                Condition::Started => {}
                Condition::Healthy => self.wait_healthy(d, &dependent)?,
                Condition::CompletedSuccessfully => self.wait_completed(d, &dependent)?,
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self, d: usize, dependent: &str) -> Result<()> {
        if self.services[d].healthy {
            return Ok(());
        }
        let name = self.services[d].spec.name.clone();
        let Some((argv, check)) = self.services[d].prepared.health.clone() else {
            bail!(
                "service `{dependent}` depends on `{name}` ({}), but `{name}` has no \
                 healthcheck",
                Condition::Healthy.as_str()
            );
        };
        let budget = (check.start_period + check.interval * check.retries).max(MIN_HEALTHY_BUDGET);
        let poll = check.interval.min(MAX_POLL);
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            if let Some(status) = self.try_wait(d)? {
                bail!(
                    "service `{name}` exited ({status}) before becoming healthy, but \
                     `{dependent}` depends on it ({})\n{}",
                    Condition::Healthy.as_str(),
                    self.log_excerpt(d)
                );
            }
            attempts += 1;
            let attempt_start = Instant::now();
            if self.run_healthcheck(d, &argv, check.timeout)? {
                self.services[d].healthy = true;
                return Ok(());
            }
            if started.elapsed() >= budget {
                bail!(
                    "service `{name}` is not healthy after {attempts} healthcheck attempts in \
                     {budget:?}; `{dependent}` depends on it ({})\n{}\n{}",
                    Condition::Healthy.as_str(),
                    excerpt(
                        &self.services[d].health_log_path,
                        &format!("`{name}` healthcheck output")
                    ),
                    self.log_excerpt(d)
                );
            }
            let pause = poll
                .saturating_sub(attempt_start.elapsed())
                .max(Duration::from_millis(50));
            std::thread::sleep(pause);
        }
    }

    /// Runs the healthcheck once, killed after `timeout`; whether it passed.
    fn run_healthcheck(&mut self, d: usize, argv: &[String], timeout: Duration) -> Result<bool> {
        let service = &self.services[d];
        let mut log = open_append(&service.health_log_path)?;
        let _ = writeln!(log, "--- healthcheck: {}", argv.join(" "));
        let mut child = Command::new(&self.ip)
            .args(["netns", "exec", &service.netns])
            .args(argv)
            .env_clear()
            .envs(service.prepared.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&service.work_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("run the healthcheck of `{}`", service.spec.name))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                let _ = writeln!(log, "--- {status}");
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                signal(&format!("-{}", child.id()), "KILL");
                let _ = child.kill();
                let _ = child.wait();
                let _ = writeln!(log, "--- timed out after {timeout:?}");
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_completed(&mut self, d: usize, dependent: &str) -> Result<()> {
        let name = self.services[d].spec.name.clone();
        let deadline = Instant::now() + COMPLETION_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait(d)? {
                if status.success() {
                    return Ok(());
                }
                bail!(
                    "service `{name}` exited ({status}), but `{dependent}` depends on it \
                     completing successfully ({})\n{}",
                    Condition::CompletedSuccessfully.as_str(),
                    self.log_excerpt(d)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "service `{name}` still running after {COMPLETION_TIMEOUT:?}; `{dependent}` \
                     waits for it to complete ({})\n{}",
                    Condition::CompletedSuccessfully.as_str(),
                    self.log_excerpt(d)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Prepares the service's files and argv (just before it starts, as compose reads
    /// bind mounts at container start) and spawns it.
    fn spawn(&mut self, idx: usize, programs: &[(&str, &Path)]) -> Result<()> {
        for volume in &self.volumes {
            chmod_a_rwx(&self.volume(volume))?;
        }
        let name = self.services[idx].spec.name.clone();
        let prepared = self
            .prepare(idx, programs)
            .with_context(|| format!("prepare service `{name}`"))?;
        self.services[idx].prepared = prepared;

        let service = &self.services[idx];
        create_dir(&service.work_dir, 0o755)?;
        let log = open_append(&service.log_path)?;
        let child = Command::new(&self.ip)
            .args(["netns", "exec", &service.netns])
            .args(&service.prepared.argv)
            .env_clear()
            .envs(service.prepared.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&service.work_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start service `{name}`\n{}", self.log_excerpt(idx)))?;
        self.services[idx].child = Some(child);
        self.started.push(idx);
        Ok(())
    }

    fn prepare(&self, idx: usize, programs: &[(&str, &Path)]) -> Result<Prepared> {
        let spec = &self.services[idx].spec;
        let mount_dir = self.root_path.join("mounts").join(&spec.name);
        let mut table: Vec<(String, String)> = Vec::new();
        let mut copies: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (i, mount) in spec.mounts.iter().enumerate() {
            let host = match mount {
                Mount::Named { name, .. } => self.volume(name),
                Mount::Bind { source, .. } if source.is_dir() => source.clone(),
                Mount::Bind { source, .. } => {
                    let file_name = source
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "file".to_owned());
                    let copy = mount_dir.join(format!("{i}-{file_name}"));
                    copies.push((source.clone(), copy.clone()));
                    copy
                }
            };
            let host = host
                .to_str()
                .ok_or_else(|| anyhow!("host path {} is not UTF-8", host.display()))?
                .to_owned();
            table.push((mount.target().to_owned(), host));
        }
        table.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));

        if !copies.is_empty() {
            create_dir(&mount_dir, 0o755)?;
        }
        for (source, copy) in &copies {
            let bytes = fs::read(source)
                .with_context(|| format!("read bind mount {}", source.display()))?;
            let contents = match String::from_utf8(bytes) {
                Ok(text) => rewrite_paths(&text, &table).into_bytes(),
                // Binary files are copied as they are.
                Err(error) => error.into_bytes(),
            };
            write_file(copy, &contents, 0o644)?;
        }

        let resolve_argv = |argv: &[String]| -> Result<Vec<String>> {
            let program = match programs.iter().find(|(name, _)| *name == argv[0]) {
                Some((_, path)) => path
                    .to_str()
                    .ok_or_else(|| anyhow!("program path {} is not UTF-8", path.display()))?
                    .to_owned(),
                None => rewrite_paths(&argv[0], &table),
            };
            check_program(&program, &self.path_var)?;
            let mut resolved = vec![program];
            resolved.extend(argv[1..].iter().map(|arg| rewrite_paths(arg, &table)));
            Ok(resolved)
        };

        let argv = resolve_argv(&spec.argv)?;
        let mut env = vec![
            ("PATH".to_owned(), self.path_var.clone()),
            ("HOME".to_owned(), "/tmp".to_owned()),
        ];
        for (key, value) in &spec.environment {
            env.retain(|(existing, _)| existing != key);
            env.push((key.clone(), rewrite_paths(value, &table)));
        }
        let health = match &spec.healthcheck {
            None => None,
            Some(check) => {
                let argv = match &check.test {
                    HealthTest::Cmd(argv) => resolve_argv(argv).context("healthcheck")?,
                    HealthTest::Shell(script) => vec![
                        "sh".to_owned(),
                        "-c".to_owned(),
                        rewrite_paths(script, &table),
                    ],
                };
                Some((argv, check.clone()))
            }
        };
        Ok(Prepared { argv, env, health })
    }

    /// `SIGTERM` to the service's process group, `SIGKILL` after [`STOP_GRACE`].
    fn terminate(&mut self, idx: usize) {
        let Some(child) = self.services[idx].child.as_mut() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let group = format!("-{}", child.id());
        signal(&group, "TERM");
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&group, "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ComposeRun {
    fn drop(&mut self) {
        self.stop();
        let keep = std::env::var(KEEP_ENV).is_ok_and(|value| !value.is_empty() && value != "0");
        if keep {
            if let Some(root) = self.root.take() {
                let path = root.keep();
                eprintln!(
                    "testkit::compose: kept {} ({KEEP_ENV} is set)",
                    path.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Root and `ip`, or an error saying which is missing. Returns the path of `ip`.
fn preflight() -> Result<PathBuf> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok())
        .ok_or_else(|| anyhow!("no effective uid in /proc/self/status"))?;
    if euid != 0 {
        bail!(
            "testkit::compose must run as root (effective uid is {euid}): it gives every \
             service its own network namespace with `ip netns`; run the tests as root (CI does)"
        );
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(STANDARD_PATH.iter().map(PathBuf::from));
    dirs.into_iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("ip"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            anyhow!(
                "testkit::compose needs the `ip` command (iproute2), which is missing: \
                 apt-get install iproute2"
            )
        })
}

/// The services' `PATH`: the host's, plus the standard directories it lacks.
fn service_path_var() -> String {
    let host = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = host.split(':').filter(|dir| !dir.is_empty()).collect();
    for dir in STANDARD_PATH {
        if !dirs.contains(dir) {
            dirs.push(dir);
        }
    }
    dirs.join(":")
}

/// Fails early, with a hint, if `program` cannot be executed by `ip netns exec`.
fn check_program(program: &str, path_var: &str) -> Result<()> {
    let found = if program.contains('/') {
        is_executable(Path::new(program))
    } else {
        path_var
            .split(':')
            .filter(|dir| !dir.is_empty())
            .any(|dir| is_executable(&Path::new(dir).join(program)))
    };
    if found {
        Ok(())
    } else if program.contains('/') {
        bail!("program {program} does not exist or is not executable")
    } else {
        bail!(
            "program `{program}` is not on PATH ({path_var}); install it or map it in \
             `programs`, e.g. (\"{program}\", path)"
        )
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs `ip ARGS…`; its stdout, or an error with its stderr.
fn run_ip(ip: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run `ip {}`", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// IPv4 addresses of the host namespace in 10.231.0.0/16: (interface, third octet).
fn addresses_10_231(ip: &Path) -> Result<Vec<(String, u8)>> {
    let output = run_ip(ip, &["-4", "-o", "addr", "show"])?;
    Ok(output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let interface = fields.get(1)?.trim_end_matches(':');
            let address = fields.get(3)?.split('/').next()?;
            let octets: Vec<&str> = address.split('.').collect();
            if octets.len() == 4 && octets[0] == "10" && octets[1] == "231" {
                Some((interface.to_owned(), octets[2].parse().ok()?))
            } else {
                None
            }
        })
        .collect())
}

fn used_subnets(ip: &Path) -> Result<Vec<u8>> {
    Ok(addresses_10_231(ip)?
        .into_iter()
        .map(|(_, octet)| octet)
        .collect())
}

fn count_subnet_users(ip: &Path, octet: u8) -> Result<usize> {
    Ok(addresses_10_231(ip)?
        .into_iter()
        .filter(|(_, x)| *x == octet)
        .count())
}

/// Sends `SIGsig` to `target` (a pid, or `-pgid` for a process group) with the shell's
/// `kill` builtin; errors (already exited) are ignored.
fn signal(target: &str, sig: &str) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$0\" -- \"$1\"", sig, target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `chmod -R a+rwX`: what the image's ownership of a volume would allow, for anyone.
fn chmod_a_rwx(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Removed by a running service meanwhile.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("stat {}", path.display())),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() || mode & 0o111 != 0 {
        mode | 0o777
    } else {
        mode | 0o666
    };
    if wanted != mode {
        match fs::set_permissions(path, fs::Permissions::from_mode(wanted)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error).with_context(|| format!("chmod {}", path.display())),
        }
    }
    if meta.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error).with_context(|| format!("list {}", path.display())),
        };
        for entry in entries.flatten() {
            chmod_a_rwx(&entry.path())?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    set_mode(path, mode)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    set_mode(path, mode)
}

fn open_append(path: &Path) -> Result<fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, headed with `what`.
fn excerpt(path: &Path, what: &str) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("--- {what} ({}) is empty ---", path.display());
    }
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    format!(
        "--- last {} lines of {what} ({}) ---\n{}",
        tail.len(),
        path.display(),
        tail.join("\n")
    )
}

/// Random enough for resource names (std's hasher keys are seeded randomly).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut table: Vec<(String, String)> = entries
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        table.sort_by_key(|entry| std::cmp::Reverse(entry.0.len()));
        table
    }

    #[test]
    fn rewrites_container_paths_as_prefixes_only() {
        let table = table(&[
            ("/mosquitto/data", "/h/vol/data"),
            ("/mosquitto/config/mosquitto.conf", "/h/mounts/0-m.conf"),
            ("/out", "/h/vol/out"),
            ("/mosquitto", "/h/whole"),
        ]);
        let cases = [
            (
                "persistence_location /mosquitto/data/",
                "persistence_location /h/vol/data/",
            ),
            ("/mosquitto/data", "/h/vol/data"),
            (
                "-c /mosquitto/config/mosquitto.conf",
                "-c /h/mounts/0-m.conf",
            ),
            ("echo done > /out/done", "echo done > /h/vol/out/done"),
            ("x='/out' y=\"/out\"", "x='/h/vol/out' y=\"/h/vol/out\""),
            ("a:/out:b", "a:/h/vol/out:b"),
            // not a path prefix
            (
                "/outside /output /x/out /mosquitto.db",
                "/outside /output /x/out /mosquitto.db",
            ),
            ("/mosquitto/other", "/h/whole/other"),
            ("no paths here", "no paths here"),
            ("ünïcode /out ü", "ünïcode /h/vol/out ü"),
        ];
        for (input, expected) in cases {
            assert_eq!(rewrite_paths(input, &table), expected, "{input}");
        }
        // Replaced text is not rewritten again.
        let table = self::table(&[("/a", "/a/a"), ("/b", "/a")]);
        assert_eq!(rewrite_paths("/a /b", &table), "/a/a /a");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        for bad in ["", "2", "s", "2x", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unescapes_dollars_and_refuses_variables() {
        assert_eq!(unescape("'$$SYS/broker'").unwrap(), "'$SYS/broker'");
        assert_eq!(unescape("\"$$(cat f)\"").unwrap(), "\"$(cat f)\"");
        assert_eq!(unescape("a $ b $1").unwrap(), "a $ b $1");
        assert!(unescape("${HOME}").is_err());
        assert!(unescape("$HOME").is_err());
    }

    #[test]
    fn parses_the_supported_subset_with_merge_keys() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("conf")).unwrap();
        fs::write(dir.path().join("conf/a.conf"), "x").unwrap();
        let text = r#"
x-common: &common
  image: example:1
  environment:
    SHARED: "yes"
  healthcheck:
    test: ["CMD", "probe", "http://127.0.0.1:1/"]
    interval: 2s
    timeout: 500ms
    retries: 5
    start_period: 1m30s
services:
  first:
    <<: *common
    command: ["run", "--port", 1883, true]
    environment:
      NUMBER: 7
      FLAG: false
      PRICE: "$$5"
    volumes:
      - ./conf/a.conf:/etc/a.conf:ro
      - ./conf:/etc/conf
      - data:/data/
    ports: ["1883:1883"]
    restart: unless-stopped
  second:
    image: example:1
    command: ["sh", "-c", "true"]
    environment: ["A=1", "B=x=y"]
    depends_on: [first]
    healthcheck:
      test: ["CMD-SHELL", "mosquitto_sub -t '$$SYS/#' -C 1"]
  third:
    command: ["true"]
    depends_on:
      second:
        condition: service_completed_successfully
      first:
        condition: service_healthy
volumes:
  data:
"#;
        let compose = parse(text, dir.path()).unwrap();
        assert_eq!(compose.volumes, ["data"]);
        let names: Vec<&str> = compose.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["first", "second", "third"]);

        let first = &compose.services[0];
        assert_eq!(first.argv, ["run", "--port", "1883", "true"]);
        let mut env = first.environment.clone();
        env.sort();
        assert_eq!(
            env,
            [
                ("FLAG".to_owned(), "false".to_owned()),
                ("NUMBER".to_owned(), "7".to_owned()),
                ("PRICE".to_owned(), "$5".to_owned()),
            ]
        );
        let conf_dir = dir.path().join("conf").canonicalize().unwrap();
        assert_eq!(
            first.mounts,
            [
                Mount::Bind {
                    source: conf_dir.join("a.conf"),
                    target: "/etc/a.conf".to_owned()
                },
                Mount::Bind {
                    source: conf_dir,
                    target: "/etc/conf".to_owned()
                },
                Mount::Named {
                    name: "data".to_owned(),
                    target: "/data".to_owned()
                },
            ]
        );
        let check = first.healthcheck.as_ref().unwrap();
        assert_eq!(
            check.test,
            HealthTest::Cmd(vec!["probe".to_owned(), "http://127.0.0.1:1/".to_owned()])
        );
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.timeout, Duration::from_millis(500));
        assert_eq!(check.retries, 5);
        assert_eq!(check.start_period, Duration::from_secs(90));

        let second = &compose.services[1];
        assert_eq!(
            second.environment,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned())
            ]
        );
        assert_eq!(
            second.depends_on,
            [("first".to_owned(), Condition::Started)]
        );
        assert_eq!(
            second.healthcheck.as_ref().unwrap().test,
            HealthTest::Shell("mosquitto_sub -t '$SYS/#' -C 1".to_owned())
        );
        assert_eq!(
            second.healthcheck.as_ref().unwrap().interval,
            DEFAULT_INTERVAL
        );

        let mut third = compose.services[2].depends_on.clone();
        third.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            third,
            [
                ("first".to_owned(), Condition::Healthy),
                ("second".to_owned(), Condition::CompletedSuccessfully),
            ]
        );
        assert!(compose.services[2].healthcheck.is_none());
    }

    #[test]
    fn orders_by_dependencies_then_file_order() {
        let text = r#"
services:
  c: { command: ["true"], depends_on: [b] }
  a: { command: ["true"] }
  b: { command: ["true"], depends_on: [a] }
  d: { command: ["true"] }
"#;
        let compose = parse(text, Path::new(".")).unwrap();
        let order = start_order(&compose.services).unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|&i| compose.services[i].name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let cases = [
            ("services:\n  a: { command: \"run it\" }\n", "list form"),
            ("services:\n  a: { image: x }\n", "no `command`"),
            (
                "services:\n  a: { command: [\"echo\", \"${X}\"] }\n",
                "interpolation",
            ),
            (
                "services:\n  a: { command: [\"true\"], volumes: [\"v:/v\"] }\n",
                "not declared",
            ),
            (
                "services:\n  a: { command: [\"true\"], volumes: [\"./missing:/v\"] }\n",
                "does not exist",
            ),
            (
                "services:\n  a: { command: [\"true\"], depends_on: [b] }\n",
                "not a service",
            ),
            (
                "services:\n  a: { command: [\"true\"], depends_on: [b] }\n  b: { command: [\"true\"], depends_on: [a] }\n",
                "cycle",
            ),
            (
                "services:\n  a: { command: [\"true\"], depends_on: { b: { condition: service_ready } } }\n  b: { command: [\"true\"] }\n",
                "unknown depends_on condition",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", parse(text, Path::new("/nonexistent")).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
