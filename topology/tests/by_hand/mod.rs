//! The README's "Several regions and central, by hand" section as commands a test can
//! run: read from README.md itself (so they cannot rot), localised to free ports and a
//! temporary directory instead of the README's ports and `/tmp/fc`.
//!
//! Used by `topology/tests/readme.rs` (the topology binary and the brokers) and, by
//! path, by `testkit/tests/readme_by_hand.rs` (the same, plus the servers and the
//! `curl`s).

#![allow(dead_code)] // each of the two tests uses a part

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use topology::Topology;

pub const SECTION: &str = "## Several regions and central, by hand";
/// The directory the section works in.
const DIR: &str = "/tmp/fc";
pub const WAIT: Duration = Duration::from_secs(15);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The section's commands and the topology it writes.
pub struct Section {
    pub commands: Vec<String>,
    pub topology: Topology,
}

/// What a command of the section does.
#[derive(Debug, PartialEq)]
pub enum Kind {
    /// Runs to completion (directories, the topology file, the topology tool).
    Setup,
    /// `mosquitto -c …`: runs until stopped.
    Broker,
    /// `./target/release/central` or `…/fog-server`: runs until stopped.
    Server,
    /// `curl` against the servers.
    Query,
}

pub fn kind(command: &str) -> Kind {
    if command.starts_with("mosquitto ") {
        Kind::Broker
    } else if command.starts_with("curl ") {
        Kind::Query
    } else if command.starts_with("./target/release/") && !is_topology_tool(command) {
        Kind::Server
    } else {
        Kind::Setup
    }
}

/// The topology tool, as the README runs it (the release binary or `cargo run`).
const TOPOLOGY_TOOL: [&str; 2] = ["./target/release/topology ", "cargo run -q -p topology -- "];

pub fn is_topology_tool(command: &str) -> bool {
    TOPOLOGY_TOOL.iter().any(|t| command.starts_with(t))
}

/// The arguments of a topology tool command, after the program.
pub fn topology_args(command: &str) -> Vec<String> {
    let rest = TOPOLOGY_TOOL
        .iter()
        .find_map(|t| command.strip_prefix(t))
        .unwrap_or_else(|| panic!("not the topology tool: {command}"));
    rest.split_whitespace().map(str::to_owned).collect()
}

impl Section {
    pub fn from_readme() -> Self {
        let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
        let commands = section_commands(&readme);
        let topology = written_topology(&commands);
        Self { commands, topology }
    }

    pub fn of(&self, k: Kind) -> Vec<&String> {
        self.commands.iter().filter(|c| kind(c) == k).collect()
    }

    /// The ports the section uses: every broker's, and the servers' HTTP ports.
    pub fn ports(&self) -> Vec<u16> {
        let t = &self.topology;
        let mut ports: Vec<u16> = std::iter::once(t.central.port)
            .chain(t.regions.iter().map(|r| r.broker.port))
            .collect();
        for c in self.of(Kind::Server) {
            let args: Vec<&str> = c.split_whitespace().collect();
            if let Some(http) = flag(&args, "--http") {
                ports.push(http.rsplit(':').next().unwrap().parse().unwrap());
            }
        }
        ports
    }

    /// The servers' command lines agree with the topology: central on its broker, one
    /// fog server per region on the region's broker with the region's bounds, and the
    /// `curl`s at central's HTTP address.
    pub fn check_servers(&self) {
        let t = &self.topology;
        let mut regions = Vec::new();
        let mut central_http = None;
        for c in self.of(Kind::Server) {
            let args: Vec<&str> = c.split_whitespace().collect();
            if args[0].ends_with("/central") {
                assert_eq!(
                    flag(&args, "--broker"),
                    Some(t.central.url().as_str()),
                    "{c}"
                );
                central_http = flag(&args, "--http");
            } else if args[0].ends_with("/fog-server") {
                let id = flag(&args, "--region").unwrap_or_else(|| panic!("no --region: {c}"));
                let r = t.region(id).unwrap_or_else(|e| panic!("{e}: {c}"));
                assert_eq!(
                    flag(&args, "--broker"),
                    Some(r.broker.url().as_str()),
                    "{c}"
                );
                let bounds: Vec<f64> = flag(&args, "--bounds")
                    .unwrap_or_else(|| panic!("no --bounds: {c}"))
                    .split(',')
                    .map(|v| v.parse().unwrap())
                    .collect();
                let b = r.bounds.unwrap();
                assert_eq!(bounds, [b.min_lat, b.min_lon, b.max_lat, b.max_lon], "{c}");
                regions.push(id.to_owned());
            } else {
                panic!("a server the test does not know: {c}");
            }
        }
        let all: Vec<String> = t.regions.iter().map(|r| r.id.clone()).collect();
        assert_eq!(regions, all, "one fog server per region");
        let central_http = central_http.expect("the section starts central");
        for c in self.of(Kind::Query) {
            assert!(
                c.contains(&format!("{central_http}/")),
                "{c} asks central at {central_http}"
            );
        }
    }
}

/// The shell commands of the section's first `sh` block; a here-document stays one
/// command with its body. Comments and blank lines are left out.
fn section_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find(SECTION)
        .expect("the README has the by-hand section");
    let section = &readme[start..];
    let end = section[SECTION.len()..]
        .find("\n## ")
        .map_or(section.len(), |e| e + SECTION.len());
    let block = section[..end]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("the by-hand section has a ```sh block");
    let mut commands = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut command = line.to_owned();
        if let Some((_, tag)) = line.split_once("<<") {
            let tag = tag.trim().trim_matches('\'').trim_matches('"');
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body == tag {
                    break;
                }
            }
        }
        commands.push(command);
    }
    commands
}

/// The topology the section writes with its here-document.
fn written_topology(commands: &[String]) -> Topology {
    let heredoc = commands
        .iter()
        .find(|c| c.contains("topology.toml <<"))
        .expect("the section writes a topology file");
    let body: Vec<&str> = heredoc.lines().skip(1).collect();
    let body = body[..body.len() - 1].join("\n");
    Topology::from_toml_str(&body).expect("the README's topology is valid")
}

/// The value of `--flag value` or `--flag=value`.
pub fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == name {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// The value of a flag of the section's topology tool command.
pub fn flag_of(section: &Section, name: &str) -> Option<String> {
    let tool = section.commands.iter().find(|c| is_topology_tool(c))?;
    let args = topology_args(tool);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    flag(&args, name).map(str::to_owned)
}

/// `text` with port `from` (after `:` or `port = `, not followed by a digit) as `to`.
pub fn replace_port(text: &str, from: u16, to: u16) -> String {
    let mut out = text.to_owned();
    for prefix in [":", "port = "] {
        let needle = format!("{prefix}{from}");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            result.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                result.push_str(&needle);
            } else {
                result.push_str(&format!("{prefix}{to}"));
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// The section's ports and directory mapped to free ports and a directory of the test.
pub struct Local {
    pub dir: PathBuf,
    /// (the README's port, the test's)
    pub ports: Vec<(u16, u16)>,
}

impl Local {
    pub fn new(section: &Section, base: &Path) -> Self {
        let theirs = section.ports();
        let listeners: Vec<TcpListener> = theirs
            .iter()
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ours = listeners.iter().map(|l| l.local_addr().unwrap().port());
        Self {
            dir: base.join("fc"),
            ports: theirs.iter().copied().zip(ours).collect(),
        }
    }

    pub fn apply(&self, command: &str) -> String {
        let mut c = command.replace(DIR, &self.dir.display().to_string());
        for &(theirs, ours) in &self.ports {
            c = replace_port(&c, theirs, ours);
        }
        c
    }

    /// The test's port for one of the README's.
    pub fn port(&self, theirs: u16) -> u16 {
        self.ports.iter().find(|(t, _)| *t == theirs).unwrap().1
    }
}

/// `bash -euo pipefail -c command` from the repository root (as the README says).
pub fn shell(command: &str) -> Command {
    let mut sh = Command::new("bash");
    let path = std::env::var("PATH").unwrap_or_default();
    sh.args(["-euo", "pipefail", "-c", command])
        .current_dir(repo_root())
        // Debian's package puts mosquitto in /usr/sbin (the README says so)
        .env("PATH", format!("{path}:/usr/sbin:/sbin"));
    sh
}

/// Runs the setup commands in order, localised: the topology tool through `tool` (its
/// arguments after the program), the rest in bash; any failure fails the test.
pub fn run_setup(section: &Section, local: &Local, tool: impl Fn(Vec<String>)) {
    for c in section.of(Kind::Setup) {
        let c = local.apply(c);
        if is_topology_tool(&c) {
            tool(topology_args(&c));
            continue;
        }
        let out = shell(&c).output().unwrap();
        assert!(
            out.status.success(),
            "`{c}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A process killed when the test ends, whichever way.
pub struct Running {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process with SIGTERM (Mosquitto then saves its persistence file) and
    /// waits for it to exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "`{}` did not stop", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the process has exited.
    pub fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("`{}` exited ({status}):\n{}", self.what, self.log());
        }
    }
}

/// Starts `mosquitto -c conf` as written and waits until its listener accepts.
pub fn start_broker(command: &str, logs: &Path) -> Running {
    let conf = command
        .split_whitespace()
        .skip_while(|a| *a != "-c")
        .nth(1)
        .unwrap_or_else(|| panic!("no -c in {command}"));
    let port: u16 = std::fs::read_to_string(conf)
        .unwrap_or_else(|e| panic!("{conf}: {e}"))
        .lines()
        .find_map(|l| {
            l.strip_prefix("listener ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no listener in {conf}"));
    let log = logs.join(format!("broker-{port}.log"));
    let out = File::create(&log).unwrap();
    let child = shell(&format!("exec {command}"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut broker = Running {
        child,
        log,
        what: command.to_owned(),
    };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        broker.alive();
        assert!(
            Instant::now() < deadline,
            "`{command}` not listening:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker
}

/// A message published on broker port `from.0`, topic `from.1`, arrives on `to`:
/// subscribes on `to`, then publishes until the subscriber has its message (a bridge
/// may still be connecting).
pub fn crosses(from: (u16, &str), to: (u16, &str), brokers: &mut [Running]) {
    let payload = format!("readme-{}-{}", from.0, to.0);
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &to.0.to_string(), "-t", to.1])
        .args(["-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients) is installed");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        for b in brokers.iter_mut() {
            b.alive();
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!("{} on :{} never reached :{}", from.1, from.0, to.0);
        }
        let published = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &from.0.to_string(), "-t", from.1])
            .args(["-q", "1", "-m", &payload])
            .output()
            .unwrap();
        assert!(
            published.status.success(),
            "mosquitto_pub on :{}: {}",
            from.0,
            String::from_utf8_lossy(&published.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(sub.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.success() && out.trim() == payload,
        "{} on :{} -> {} on :{}: {status} {out:?}",
        from.1,
        from.0,
        to.1,
        to.0
    );
}

/// Every region's bridge carries `fog/up/…` to central and `regions/{id}/down/…` back.
pub fn check_bridges(section: &Section, local: &Local, brokers: &mut [Running]) {
    let t = &section.topology;
    let central = local.port(t.central.port);
    for r in &t.regions {
        let port = local.port(r.broker.port);
        let up = format!("regions/{}/up/readme", r.id);
        crosses((port, "fog/up/readme"), (central, &up), brokers);
        let down = format!("regions/{}/down/readme", r.id);
        crosses((central, &down), (port, "fog/down/readme"), brokers);
    }
}
