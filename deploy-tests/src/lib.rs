//! The deployment run for real: `deploy/regions.yml` started by the Compose tool on a
//! Docker engine, with the images `./dev images` builds (`fogcharge:latest`,
//! `fogcharge-mosquitto:2`), for the container tests in `tests/`.
//!
//! Modules (all here, small):
//! - [`Engine`]: the Docker engine and the Compose tool found on this machine
//!   (`docker compose` if it works, else `docker-compose` v1); missing pieces fail with
//!   how to get them ([`Engine::require`]).
//! - [`Project`]: one run of the compose file under a project name unique to the test
//!   run (containers, networks and volumes are named after it), with free host ports for
//!   every published port; `docker compose down -v` on drop, also when a test fails.
//! - [`users`], [`get_json`], [`counter`]: the users `fogcharge setup` made, central's
//!   and the fog servers' HTTP APIs on the published ports.
//! - [`city`]: a deployment for the fault tests (no device-sim, the clock at 1x), with
//!   stations and a fleet driven from the host, and [`city::Load`], requests whose
//!   answers are counted (each exactly once) and timed.
//!
//! Everything a test starts is on Docker networks the project creates; the test process
//! reaches the containers only through ports published on the host's loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod city;

/// The broker image `./dev images` builds (laid out like `eclipse-mosquitto:2`).
pub const LOCAL_BROKER_IMAGE: &str = "fogcharge-mosquitto:2";
/// The fogcharge image.
pub const IMAGE: &str = "fogcharge:latest";

const IMAGES_HINT: &str = "build the images with `./dev images` (no registry needed)";
const ENGINE_HINT: &str = "the container tests need a running Docker engine and the Compose \
tool: on Debian `apt-get install docker.io docker-compose` and start the engine \
(`service docker start` or `dockerd &`); check with `docker info`";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))
}

/// Runs `docker args…`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = run("docker", args)?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Docker engine and the Compose tool of this machine.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `["docker", "compose"]` or `["docker-compose"]`.
    pub compose: Vec<String>,
    /// What `… version` says.
    pub compose_version: String,
}

impl Engine {
    /// The engine, the Compose tool and the images, or a panic saying how to get each.
    pub fn require() -> Engine {
        match Self::find() {
            Ok(e) => e,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`Engine::require`], as an error.
    pub fn find() -> Result<Engine> {
        let info = run("docker", &["info", "--format", "{{.ServerVersion}}"])
            .with_context(|| format!("no docker command: {ENGINE_HINT}"))?;
        if !info.status.success() {
            bail!(
                "the Docker engine does not answer ({}): {ENGINE_HINT}",
                String::from_utf8_lossy(&info.stderr).trim()
            );
        }
        let compose = [vec!["docker", "compose"], vec!["docker-compose"]]
            .into_iter()
            .find_map(|cmd| {
                let mut args: Vec<&str> = cmd[1..].to_vec();
                args.push("version");
                let out = run(cmd[0], &args).ok()?;
                out.status.success().then(|| {
                    (
                        cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
            });
        let Some((compose, compose_version)) = compose else {
            bail!("neither `docker compose` nor `docker-compose` works: {ENGINE_HINT}");
        };
        for image in [IMAGE, LOCAL_BROKER_IMAGE] {
            if run("docker", &["image", "inspect", image])
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                bail!("the Docker engine has no image {image}: {IMAGES_HINT}");
            }
        }
        Ok(Engine {
            compose,
            compose_version,
        })
    }
}

static PROJECTS: AtomicU32 = AtomicU32::new(0);

/// One run of `deploy/regions.yml` (plus override files) under its own project name.
pub struct Project {
    pub engine: Engine,
    /// The compose project name: containers, networks and volumes start with it.
    pub name: String,
    files: Vec<PathBuf>,
    /// Host port of each published service (`FOGCHARGE_PORT_*`).
    pub ports: BTreeMap<String, u16>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    down: bool,
}

/// The services of the compose file that publish a port, with the container port.
pub fn published_services() -> Vec<(String, u16)> {
    let t = deploy_topology();
    let mut out = vec![(t.central.host.clone(), 1883), ("central".to_owned(), 8080)];
    for r in &t.regions {
        out.push((r.broker.host.clone(), 1883));
        out.push((format!("fog-{}", r.id), 9090));
        out.push((format!("ocpp-{}", r.id), topology::deploy::OCPP_PORT));
    }
    out
}

/// `deploy/topology.toml`.
pub fn deploy_topology() -> topology::Topology {
    topology::Topology::load(&repo().join("deploy/topology.toml")).expect("deploy/topology.toml")
}

impl Project {
    /// A project for `deploy/regions.yml` with `overrides` (compose YAML, applied in
    /// order), nothing started yet.
    pub fn new(engine: &Engine, overrides: &[&str]) -> Result<Project> {
        let dir = tempfile::tempdir()?;
        let mut files = vec![repo().join("deploy/regions.yml")];
        for (i, text) in overrides.iter().enumerate() {
            let path = dir.path().join(format!("override-{i}.yml"));
            std::fs::write(&path, text)?;
            files.push(path);
        }
        let name = format!(
            "fctest{}x{}",
            std::process::id(),
            PROJECTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut ports = BTreeMap::new();
        let mut env = vec![(
            topology::deploy::BROKER_IMAGE_VAR.to_owned(),
            std::env::var(topology::deploy::BROKER_IMAGE_VAR)
                .unwrap_or_else(|_| LOCAL_BROKER_IMAGE.to_owned()),
        )];
        for (service, _) in published_services() {
            let port = testkit::free_port()?;
            // `127.0.0.1:port`: published on the loopback only
            env.push((
                topology::deploy::port_var(&service),
                format!("127.0.0.1:{port}"),
            ));
            ports.insert(service, port);
        }
        Ok(Project {
            engine: engine.clone(),
            name,
            files,
            ports,
            env,
            _dir: dir,
            down: false,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.engine.compose[0]);
        cmd.args(&self.engine.compose[1..]);
        cmd.arg("-p").arg(&self.name);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs the Compose tool with `args`; its stdout, or an error with its output.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().with_context(|| {
            format!(
                "running {} {}",
                self.engine.compose.join(" "),
                args.join(" ")
            )
        })?;
        if !out.status.success() {
            bail!(
                "{} -p {} {} failed:\n{}{}",
                self.engine.compose.join(" "),
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `up -d --no-build` of `services` (all when empty) and what they depend on; the
    /// tool waits for each dependency's condition (healthy, completed) before starting
    /// what needs it.
    pub fn up(&self, services: &[&str]) -> Result<()> {
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend(services);
        self.compose(&args).map(|_| ()).map_err(|e| {
            let logs = self
                .compose(&["logs", "--no-color", "--tail", "30"])
                .unwrap_or_default();
            e.context(format!("logs:\n{logs}"))
        })
    }

    /// The container of `service` (the first, if scaled), by compose's labels.
    pub fn container(&self, service: &str) -> Result<String> {
        self.containers(service)?
            .into_iter()
            .next()
            .with_context(|| format!("no container for service {service} in {}", self.name))
    }

    /// Every container (running or not) of `service`.
    pub fn containers(&self, service: &str) -> Result<Vec<String>> {
        let out = docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// `docker inspect` of a container.
    pub fn inspect(&self, container: &str) -> Result<Value> {
        let v: Value = serde_json::from_str(&docker(&["inspect", container])?)?;
        Ok(v[0].clone())
    }

    /// The health status of `service`'s container (`healthy`, `starting`, … or `none`).
    pub fn health(&self, service: &str) -> Result<String> {
        let c = self.container(service)?;
        let v = self.inspect(&c)?;
        Ok(v["State"]["Health"]["Status"]
            .as_str()
            .unwrap_or("none")
            .to_owned())
    }

    /// Waits until every one of `services` is healthy.
    pub async fn wait_healthy(&self, services: &[&str], timeout: Duration) -> Result<()> {
        testkit::wait_until(
            &format!("{services:?} are healthy"),
            timeout,
            Duration::from_millis(200),
            || async {
                services
                    .iter()
                    .all(|s| self.health(s).is_ok_and(|h| h == "healthy"))
            },
        )
        .await
    }

    /// The logs of `service`'s container (stdout and stderr).
    pub fn logs(&self, service: &str) -> Result<String> {
        container_logs(&self.container(service)?)
    }

    /// The name of a network or volume of this project (`{project}_{name}`).
    pub fn object(&self, name: &str) -> String {
        format!("{}_{name}", self.name)
    }

    /// The host port published for `service`.
    pub fn port(&self, service: &str) -> u16 {
        self.ports[service]
    }

    /// `down` (with `-v`: also the volumes), after which drop does nothing.
    pub fn down(&mut self, volumes: bool) -> Result<()> {
        let mut args = vec!["down", "--remove-orphans", "-t", "5"];
        if volumes {
            args.push("-v");
            self.down = true;
        }
        self.compose(&args).map(|_| ())
    }

    /// The containers, networks and volumes of this project still on the engine.
    pub fn leftovers(&self) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let split = |s: String| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        Ok((
            split(docker(&["ps", "-aq", "--filter", &label])?),
            split(docker(&["network", "ls", "-q", "--filter", &label])?),
            split(docker(&["volume", "ls", "-q", "--filter", &label])?),
        ))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            // also when the test failed: nothing of this run stays on the engine
            if let Err(e) = self.down(true) {
                eprintln!("cleaning up compose project {}: {e:#}", self.name);
            }
            // and what the tool does not remove (one-off `run` containers, failures)
            if let Ok((containers, networks, volumes)) = self.leftovers() {
                for c in containers {
                    let _ = docker(&["rm", "-f", "-v", &c]);
                }
                for n in networks {
                    let _ = docker(&["network", "rm", &n]);
                }
                for v in volumes {
                    let _ = docker(&["volume", "rm", "-f", &v]);
                }
            }
        }
    }
}

/// The users `fogcharge setup` made, read from a container that mounts the secrets.
/// The logs of a container (stdout and stderr).
pub fn container_logs(container: &str) -> Result<String> {
    let out = run("docker", &["logs", container])?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

pub fn users(project: &Project, service: &str) -> Result<topology::auth::Credentials> {
    let c = project.container(service)?;
    let text = docker(&["exec", &c, "cat", "/fogcharge/secrets/users.toml"])?;
    toml::from_str(&text).context("users.toml")
}

/// An HTTP GET on a published port of the host; the body as JSON or text.
pub async fn get_text(port: u16, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| url.clone())?
        .error_for_status()?;
    Ok(r.text().await?)
}

/// [`get_text`], parsed.
pub async fn get_json<T: serde::de::DeserializeOwned>(port: u16, path: &str) -> Result<T> {
    Ok(serde_json::from_str(&get_text(port, path).await?)?)
}

/// Sum of a Prometheus counter over its label sets.
pub fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Milliseconds since `start`, for the figures the tests print.
pub fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}
