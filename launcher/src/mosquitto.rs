//! A real Mosquitto broker process on a free loopback port, for tests and the local
//! launcher.
//!
//! [`Mosquitto::start`] writes a config file into a fresh temporary directory, spawns
//! `mosquitto -c <conf>` and returns once this broker has logged that it is running and
//! answers an MQTT CONNECT with a CONNACK (polled every 10 ms, 10 s timeout) — never
//! after a blind sleep. If the broker exits at start-up (its free port was taken in a
//! race) it retries on a new port; errors quote the tail of the broker's log. The
//! persistence database and the log live in the same directory, so
//! [`Mosquitto::restart`] brings back retained messages and persistent sessions on the
//! same port.
//!
//! No broker outlives its owner: dropping a [`Mosquitto`] kills the process, and a
//! watchdog kills it if the owning process dies without dropping it.
//!
//! Mosquitto facts this module relies on (2.0.11; `testkit/tests/broker.rs` shows the
//! queue limit):
//! - run as root, Mosquitto drops privileges to user `mosquitto` and then cannot write
//!   its log or persistence file in a root-owned temporary directory. The
//!   generated config therefore says `user root` (no privilege drop; ignored when not
//!   run as root).
//! - `max_queued_messages` defaults to 1000 and Mosquitto silently drops QoS 1
//!   messages beyond it; the test brokers raise it to 100 000.
//! - `set_tcp_nodelay true`, or a QoS 1 round trip costs ~44 ms of Nagle delay.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::process::Supervised;
use tempfile::TempDir;

/// The hint given when no `mosquitto` binary can be found.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install -y mosquitto mosquitto-clients` (Debian/Ubuntu)";

/// Directories searched after `PATH`: Debian installs the broker in `/usr/sbin`, which is
/// not on an ordinary user's `PATH`.
const EXTRA_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin"];

/// How long [`Mosquitto::start`] waits for a broker to accept MQTT connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(10);
/// How long [`Mosquitto::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when the broker exits at start-up (port taken in a race).
const START_ATTEMPTS: usize = 5;
/// Lines of broker log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 30;

/// Finds the `mosquitto` binary on `PATH`, then in `/usr/sbin` and `/usr/local/sbin`.
///
/// The error says how to install it.
pub fn find_mosquitto() -> Result<PathBuf> {
    let mut search = std::env::var_os("PATH").unwrap_or_default();
    for dir in EXTRA_BIN_DIRS {
        if !search.is_empty() {
            search.push(":");
        }
        search.push(dir);
    }
    find_mosquitto_in(&search)
}

/// Finds an executable `mosquitto` in the directories of `search_path`, a `PATH`-style
/// list (`dir1:dir2:…`). Only these directories are searched; [`find_mosquitto`] adds
/// the `sbin` directories.
pub fn find_mosquitto_in(search_path: &OsStr) -> Result<PathBuf> {
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            anyhow!(
                "the Mosquitto broker (`mosquitto`) was not found (searched {:?}); {INSTALL_HINT}",
                search_path
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Picks a loopback port that is free right now (bind port 0, read it, release it).
///
/// Another process may take it before it is used again; [`Mosquitto::start`] retries
/// with a new port when that happens.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Settings for a broker. Build with [`MosquittoConfig::new`] and the `with_*`
/// methods; the defaults are what every fogcharge broker needs.
#[derive(Clone)]
pub struct MosquittoConfig {
    template: Option<Template>,
    port: Option<u16>,
    extra: Vec<String>,
    persistence: bool,
    max_queued_messages: u32,
    max_inflight_messages: Option<u32>,
    log_all: bool,
}

/// Makes a broker's whole config (listener, persistence, bridges) from its port and
/// directory.
pub type Template = std::sync::Arc<dyn Fn(u16, &Path) -> String + Send + Sync>;

impl std::fmt::Debug for MosquittoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosquittoConfig")
            .field("template", &self.template.is_some())
            .field("port", &self.port)
            .field("extra", &self.extra)
            .field("persistence", &self.persistence)
            .finish_non_exhaustive()
    }
}

impl Default for MosquittoConfig {
    fn default() -> Self {
        Self {
            template: None,
            port: None,
            extra: Vec::new(),
            persistence: true,
            max_queued_messages: 100_000,
            max_inflight_messages: None,
            log_all: false,
        }
    }
}

impl MosquittoConfig {
    /// A broker on a free port with persistence on, `set_tcp_nodelay true` and
    /// `max_queued_messages 100000`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends raw config lines (one or several, `\n`-separated) after the generated
    /// ones — for example a bridge `connection` section, which must come last.
    pub fn with_extra(mut self, lines: &str) -> Self {
        self.extra.push(lines.trim_end().to_owned());
        self
    }

    /// Listens on this port instead of a free one (no retry if it is taken).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Turns persistence (`persistence true`, on by default) on or off.
    pub fn with_persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Sets `max_queued_messages` (default here: 100 000; Mosquitto's own default is 1000).
    pub fn with_max_queued_messages(mut self, n: u32) -> Self {
        self.max_queued_messages = n;
        self
    }

    /// Sets `max_inflight_messages` (left at Mosquitto's default, 20, unless set).
    pub fn with_max_inflight_messages(mut self, n: u32) -> Self {
        self.max_inflight_messages = Some(n);
        self
    }

    /// Logs everything (`log_type all`: every packet, verbose) instead of Mosquitto's
    /// default error/warning/notice/information.
    pub fn with_log_all(mut self, on: bool) -> Self {
        self.log_all = on;
        self
    }

    /// A broker whose config comes from elsewhere (e.g. the topology generator):
    /// `template(port, dir)` gives everything but logging, which the kit adds (its
    /// start-up wait reads the log). The other `with_*` settings are then unused,
    /// except [`with_port`](Self::with_port).
    pub fn from_template(template: impl Fn(u16, &Path) -> String + Send + Sync + 'static) -> Self {
        Self {
            template: Some(std::sync::Arc::new(template)),
            ..Self::default()
        }
    }

    /// The config file text for a broker on `port` keeping its files in `dir`.
    pub fn render(&self, port: u16, dir: &Path) -> String {
        if let Some(template) = &self.template {
            let mut conf = String::new();
            let _ = writeln!(
                conf,
                "# fogcharge launcher: logging, then the template's config"
            );
            let _ = writeln!(conf, "user root");
            let _ = writeln!(conf, "log_dest file {}/mosquitto.log", dir.display());
            let _ = writeln!(conf, "log_timestamp_format %Y-%m-%dT%H:%M:%S");
            for log_type in ["error", "warning", "notice", "information"] {
                let _ = writeln!(conf, "log_type {log_type}");
            }
            conf.push_str(&template(port, dir));
            for extra in &self.extra {
                let _ = writeln!(conf, "{extra}");
            }
            return conf;
        }
        let dir = dir.display();
        let mut conf = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(conf, "# generated by launcher::mosquitto");
        let _ = writeln!(
            conf,
            "# run as root, Mosquitto would drop to user `mosquitto`, which cannot write here; ignored when not root"
        );
        let _ = writeln!(conf, "user root");
        let _ = writeln!(conf, "listener {port} 127.0.0.1");
        let _ = writeln!(conf, "allow_anonymous true");
        let _ = writeln!(conf, "set_tcp_nodelay true");
        let _ = writeln!(conf, "max_queued_messages {}", self.max_queued_messages);
        if let Some(n) = self.max_inflight_messages {
            let _ = writeln!(conf, "max_inflight_messages {n}");
        }
        if self.persistence {
            let _ = writeln!(conf, "persistence true");
            // The location must end with a slash: Mosquitto appends the file name.
            let _ = writeln!(conf, "persistence_location {dir}/");
        } else {
            let _ = writeln!(conf, "persistence false");
        }
        let _ = writeln!(conf, "log_dest file {dir}/mosquitto.log");
        let _ = writeln!(conf, "log_timestamp_format %Y-%m-%dT%H:%M:%S");
        // Explicit, so that extra `log_type` lines add to these instead of replacing
        // them: start-up waits for the "running" notice.
        for log_type in ["error", "warning", "notice", "information"] {
            let _ = writeln!(conf, "log_type {log_type}");
        }
        if self.log_all {
            let _ = writeln!(conf, "log_type all");
        }
        for extra in &self.extra {
            let _ = writeln!(conf, "{extra}");
        }
        conf
    }
}

/// A running (or stopped) Mosquitto process with its own temporary directory.
///
/// Dropping it kills the process and deletes the directory.
#[derive(Debug)]
pub struct Mosquitto {
    cfg: MosquittoConfig,
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    process: Option<Supervised>,
}

impl Mosquitto {
    /// Starts a broker and waits until it accepts MQTT connections.
    ///
    /// Blocks the calling thread for the start-up (usually a few milliseconds); fine in
    /// `#[tokio::test]`s.
    pub fn start(cfg: MosquittoConfig) -> Result<Mosquitto> {
        let binary = find_mosquitto()?;
        let dir = tempfile::Builder::new()
            .prefix("fogcharge-mosquitto-")
            .tempdir()
            .context("create the broker's temporary directory")?;
        let attempts = if cfg.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut last_err = None;
        for _ in 0..attempts {
            let port = match cfg.port {
                Some(port) => port,
                None => free_port()?,
            };
            match spawn_and_wait(&binary, &cfg, port, dir.path()) {
                Ok(process) => {
                    tracing::debug!(port, dir = %dir.path().display(), "mosquitto started");
                    return Ok(Mosquitto {
                        cfg,
                        binary,
                        dir,
                        port,
                        process: Some(process),
                    });
                }
                Err(StartError::Exited(err)) => {
                    tracing::debug!(port, error = %err, "mosquitto exited at start-up, retrying");
                    last_err = Some(err);
                }
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("mosquitto did not start")))
    }

    /// Starts a broker with the default [`MosquittoConfig`].
    pub fn start_default() -> Result<Mosquitto> {
        Self::start(MosquittoConfig::new())
    }

    /// `tcp://127.0.0.1:PORT`, for paho-mqtt.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The port the broker listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as used in a bridge's `address` line.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The temporary directory with the config, log and persistence files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the broker was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// The broker's log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Supervised::id)
    }

    /// Whether the process is still alive (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        let alive = self
            .process
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)));
        if !alive {
            self.process = None;
        }
        alive
    }

    /// The whole log so far (log file, then anything the broker wrote to stderr, such as
    /// errors from before the log file was opened).
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Stops the broker gracefully: SIGTERM (Mosquitto then writes its persistence
    /// database), wait up to 10 s, then SIGKILL. No-op when already stopped.
    pub fn stop(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut process) => process.terminate(STOP_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Kills the broker with SIGKILL, as a crash would: nothing is saved, so a later
    /// [`restart`](Self::restart) finds only what an earlier graceful stop saved.
    pub fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut process) => process.kill().context("kill mosquitto"),
            None => Ok(()),
        }
    }

    /// Stops the broker (if running) and starts it again on the same port with the same
    /// config and persistence directory, so retained messages and persistent sessions
    /// survive a graceful stop. Returns once it accepts connections again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let process = spawn_and_wait(&self.binary, &self.cfg, self.port, self.dir.path())
            .map_err(StartError::into_inner)?;
        self.process = Some(process);
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Before the temporary directory goes.
        if let Some(mut process) = self.process.take() {
            process.kill().ok();
        }
    }
}

enum StartError {
    /// The process exited during start-up — typically the port was taken meanwhile.
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

impl StartError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::Exited(e) | StartError::Other(e) => e,
        }
    }
}

/// One MQTT 3.1.1 CONNECT / CONNACK exchange with an empty client id: proves that an MQTT
/// broker (not just a socket) is ready on `addr` (a refusal for want of credentials
/// counts).
fn mqtt_handshake(addr: SocketAddr) -> Result<()> {
    const CONNECT: [u8; 14] = [
        0x10, 12, // CONNECT, remaining length
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // protocol level 3.1.1
        0x02, // clean session
        0x00, 0x0a, // keep-alive 10 s
        0x00, 0x00, // empty client id
    ];
    const DISCONNECT: [u8; 2] = [0xe0, 0x00];
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&CONNECT)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    // Accepted, or refused for want of credentials (a broker with authentication on):
    // either way an MQTT broker answers.
    if connack[..3] != [0x20, 0x02, 0x00] || !matches!(connack[3], 0x00 | 0x04 | 0x05) {
        bail!("unexpected CONNACK {connack:02x?} from {addr}");
    }
    stream.write_all(&DISCONNECT).ok();
    Ok(())
}

/// Writes the config into `dir`, spawns the broker on `port` and waits until it completes
/// an MQTT handshake.
fn spawn_and_wait(
    binary: &Path,
    cfg: &MosquittoConfig,
    port: u16,
    dir: &Path,
) -> Result<Supervised, StartError> {
    let conf_path = dir.join("mosquitto.conf");
    fs::write(&conf_path, cfg.render(port, dir))
        .context("write mosquitto.conf")
        .map_err(StartError::Other)?;
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .context("open stderr.log")
        .map_err(StartError::Other)?;
    // Only log lines written after this offset belong to this run (the log is appended
    // to across restarts).
    let log_offset = fs::metadata(dir.join("mosquitto.log")).map_or(0, |m| m.len());
    let mut process = Supervised::spawn(
        Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr),
    )
    .with_context(|| format!("spawn {}", binary.display()))
    .map_err(StartError::Other)?;

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process
            .try_wait()
            .map_err(|e| StartError::Other(e.into()))?
        {
            return Err(StartError::Exited(anyhow!(
                "mosquitto on port {port} exited at start-up ({status}); log tail:\n{}",
                log_tail(dir)
            )));
        }
        // "running" is logged once the listeners are bound, so the handshake that follows
        // talks to this broker and not to another process that took the port meanwhile.
        if logged_running(dir, log_offset) && mqtt_handshake(addr).is_ok() {
            return Ok(process);
        }
        if Instant::now() >= deadline {
            process.kill().ok();
            return Err(StartError::Other(anyhow!(
                "mosquitto on port {port} did not accept MQTT connections within {READY_TIMEOUT:?}; log tail:\n{}",
                log_tail(dir)
            )));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Whether the log, from byte `offset` on, says "mosquitto version … running".
fn logged_running(dir: &Path, offset: u64) -> bool {
    let Ok(mut file) = fs::File::open(dir.join("mosquitto.log")) else {
        return false;
    };
    let mut text = String::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_string(&mut text).is_err() {
        return false;
    }
    text.lines()
        .any(|line| line.contains("mosquitto version") && line.ends_with(" running"))
}

/// The log file, then anything the broker wrote to stderr (errors from before the log
/// file was opened, such as config errors).
fn read_log(dir: &Path) -> String {
    let mut log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    let stderr = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    if !stderr.trim().is_empty() {
        log.push_str("--- stderr ---\n");
        log.push_str(&stderr);
    }
    log
}

fn log_tail(dir: &Path) -> String {
    let log = read_log(dir);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
