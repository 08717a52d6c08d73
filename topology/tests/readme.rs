//! The README's "Several regions and central, by hand" section, run as written. Its
//! commands are read from README.md itself, so they cannot rot: the topology file, the
//! config generation and the brokers run for real (free ports instead of the README's,
//! a temporary directory instead of `/tmp/fc`), and each region's bridge must carry
//! `fog/up/…` to central and `regions/{region}/down/…` back. The servers' command lines
//! are checked against the topology the section writes (their own tests run them).

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use topology::Topology;

const SECTION: &str = "## Several regions and central, by hand";
const DIR: &str = "/tmp/fc";
const WAIT: Duration = Duration::from_secs(15);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell commands of the section's first `sh` block; a here-document stays one
/// command with its body. Comments and blank lines are left out.
fn section_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find(SECTION)
        .expect("the README has the by-hand section");
    let section = &readme[start..];
    let section = &section[..section[SECTION.len()..]
        .find("\n## ")
        .map_or(section.len(), |e| e + SECTION.len())];
    let block = section
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

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The value of `--flag value` or `--flag=value`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == name {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// The servers' command lines agree with the topology: central on its broker, one fog
/// server per region on the region's broker with the region's bounds, and the `curl`s
/// at central's HTTP address.
fn check_servers(commands: &[String], t: &Topology) {
    let mut regions = Vec::new();
    let mut central_http = None;
    for c in commands {
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
        }
    }
    let all: Vec<String> = t.regions.iter().map(|r| r.id.clone()).collect();
    assert_eq!(regions, all, "one fog server per region");
    let central_http = central_http.expect("the section starts central");
    for c in commands.iter().filter(|c| c.starts_with("curl ")) {
        assert!(
            c.contains(&format!("{central_http}/")),
            "{c} asks central at {central_http}"
        );
    }
}

/// A process killed when the test ends, whichever way.
struct Running {
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
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process has exited.
    fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("`{}` exited ({status}):\n{}", self.what, self.log());
        }
    }
}

fn shell(command: &str) -> Command {
    let mut sh = Command::new("bash");
    sh.args(["-euo", "pipefail", "-c", command])
        .current_dir(repo_root())
        // Debian's package puts mosquitto in /usr/sbin (the README says so)
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    sh
}

/// Starts `mosquitto -c conf` as written and waits until its listener accepts.
fn start_broker(command: &str, logs: &Path) -> Running {
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

/// A message published on `from` arrives on `to`: subscribes on `to`, then publishes
/// until the subscriber has its message (the bridge may still be connecting).
fn crosses(from: (u16, &str), to: (u16, &str), brokers: &mut [Running]) {
    let payload = format!("readme-{}-{}", from.0, to.0);
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &to.0.to_string(),
            "-t",
            to.1,
            "-C",
            "1",
            "-W",
            "15",
        ])
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
        assert!(
            Instant::now() < deadline,
            "{} on :{} never reached :{}",
            from.1,
            from.0,
            to.0
        );
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

/// `text` with port `from` (after `:` or `port = `, not followed by a digit) as `to`.
fn replace_port(text: &str, from: u16, to: u16) -> String {
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

#[test]
fn ports_are_replaced_where_they_are_ports() {
    assert_eq!(
        replace_port("port = 1885 }\ntcp://h:1885 :18850 port = 1885", 1885, 4000),
        "port = 4000 }\ntcp://h:4000 :18850 port = 4000"
    );
}

#[test]
fn the_readme_by_hand_section_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let commands = section_commands(&readme);
    let t = written_topology(&commands);
    check_servers(&commands, &t);

    // The same commands on free ports and in a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fc");
    let brokers: Vec<&topology::Broker> = std::iter::once(&t.central)
        .chain(t.regions.iter().map(|r| &r.broker))
        .collect();
    let ports = free_ports(brokers.len());
    let topology_bin = env!("CARGO_BIN_EXE_topology");
    let localise = |c: &str| {
        let mut c = c
            .replace(DIR, &dir.display().to_string())
            .replace("./target/release/topology", topology_bin)
            .replace("cargo run -q -p topology --", topology_bin);
        for (b, port) in brokers.iter().zip(&ports) {
            c = replace_port(&c, b.port, *port);
        }
        c
    };
    let is_broker = |c: &str| c.starts_with("mosquitto ");
    let is_server = |c: &str| c.starts_with("./target/release/") && !c.contains("/topology ");
    let (setup, started): (Vec<&String>, Vec<&String>) = commands
        .iter()
        .filter(|c| !c.starts_with("curl ") && !is_server(c))
        .partition(|c| !is_broker(c));
    let script: Vec<String> = setup.iter().map(|c| localise(c)).collect();
    let out = shell(&script.join("\n")).output().unwrap();
    assert!(
        out.status.success(),
        "the section's setup failed:\n{}\n{}{}",
        script.join("\n"),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        started.len(),
        brokers.len(),
        "one mosquitto per broker: {started:?}"
    );
    let mut running: Vec<Running> = started
        .iter()
        .map(|c| start_broker(&localise(c), tmp.path()))
        .collect();
    let central = ports[0];
    for (r, &port) in t.regions.iter().zip(&ports[1..]) {
        let up = format!("regions/{}/up/readme", r.id);
        crosses((port, "fog/up/readme"), (central, &up), &mut running);
        let down = format!("regions/{}/down/readme", r.id);
        crosses((central, &down), (port, "fog/down/readme"), &mut running);
    }
    for b in &mut running {
        b.alive();
    }
}
