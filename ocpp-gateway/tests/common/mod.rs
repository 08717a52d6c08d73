//! What the gateway's integration tests share: a real Mosquitto, a fog server and the
//! gateway in-process, and charge points driven by the Python `ocpp` package (a
//! third-party OCPP 1.6 implementation) in a venv under `target/ocpp-venv`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ocpp_gateway::{Config, Gateway};
use serde_json::{Value, json};
use testkit::fog::Fog;
use testkit::{Mosquitto, MosquittoConfig, TestClient, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

pub const REGION: &str = "north";
/// Where the test chargers stand (the vehicles ask from here).
pub const LAT: f64 = -12.97;
pub const LON: f64 = -38.50;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// The venv's python with the `ocpp` package: made on first use (pinned versions
/// from `tests/py/requirements.txt`), one process at a time.
pub fn python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let venv = target.join("ocpp-venv");
    let python = venv.join("bin/python");
    let ok = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", "import ocpp, websockets"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(&python) {
        return python;
    }
    std::fs::create_dir_all(&target).unwrap();
    let lock = target.join("ocpp-venv.lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    // Another test process may be making it.
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            Instant::now() < deadline,
            "waited 10 min for {} (remove it if stale)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
        if ok(&python) {
            return python;
        }
    }
    let made = (|| -> Result<()> {
        let status = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 -m venv")?;
        anyhow::ensure!(status.success(), "python3 -m venv failed");
        let status = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(py_dir().join("requirements.txt"))
            .status()
            .context("pip install")?;
        anyhow::ensure!(status.success(), "pip install failed");
        Ok(())
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = made {
        panic!(
            "the charge point tests need Python 3 with venv and the `ocpp` package: {e:#}\n\
             install python3-venv (sudo apt-get install -y python3-venv) and run ./dev test, \
             or: python3 -m venv {v} && {v}/bin/pip install -r ocpp-gateway/tests/py/requirements.txt",
            v = venv.display()
        );
    }
    assert!(ok(&python), "{} has no ocpp package", python.display());
    python
}

/// One charger entry of a chargers file.
pub fn charger(id: &str, connectors: u32, password: Option<&str>) -> String {
    let mut s = format!(
        "[[charger]]\nid = \"{id}\"\nlat = {LAT}\nlon = {LON}\nconnectors = {connectors}\npower_kw = 50.0\n"
    );
    if let Some(p) = password {
        s.push_str(&format!(
            "password = \"{}\"\n",
            topology::auth::hash_password(p)
        ));
    }
    s
}

/// A broker, a fog server and a gateway for region north.
pub struct Env {
    pub broker: Mosquitto,
    pub fog: Fog,
    pub gateway: Option<Gateway>,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub url: String,
}

impl Env {
    pub async fn start(chargers: &str) -> Result<Self> {
        Self::start_with(chargers, |_| {}).await
    }

    /// Starts everything; `adjust` changes the gateway's configuration first.
    pub async fn start_with(chargers: &str, adjust: impl FnOnce(&mut Config)) -> Result<Self> {
        testkit::init_tracing();
        let broker = Mosquitto::start(MosquittoConfig::new())?;
        let fog = Fog::start(&broker.url(), REGION).await?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("chargers.toml");
        std::fs::write(&file, chargers)?;
        let mut config = Config::new(REGION, &broker.url(), &file);
        config.listen = "127.0.0.1:0".parse()?;
        config.http = Some("127.0.0.1:0".parse()?);
        config.call_timeout_ms = 3_000;
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let gateway = ocpp_gateway::start(config, shutdown.clone()).await?;
        let scheme = if gateway.tls { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/ocpp", gateway.listen_addr);
        Ok(Self {
            broker,
            fog,
            gateway: Some(gateway),
            dir,
            shutdown,
            url,
        })
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// A charge point on this gateway.
    pub async fn charge_point(&self, id: &str, extra: &[&str]) -> Result<ChargePoint> {
        let mut args = vec!["--url", &self.url, "--id", id];
        args.extend_from_slice(extra);
        ChargePoint::spawn(&args).await
    }

    /// The fog's view of a station, once `ok` holds for it.
    pub async fn station_where(
        &self,
        id: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async {
                let stations: Vec<Value> = self.fog.get_json("/api/stations").await.ok()?;
                stations
                    .into_iter()
                    .find(|s| s["station_id"] == id)
                    .filter(|s| ok(s))
            },
        )
        .await
    }

    pub async fn reservations(&self) -> Result<Vec<Value>> {
        self.fog.get_json("/api/reservations").await
    }

    /// A vehicle subscribed to its recommendations.
    pub async fn vehicle(&self, id: &str) -> Result<Vehicle> {
        let client = TestClient::connect(&self.broker.url(), id).await?;
        client
            .subscribe(&protocol::topics::recommendation(REGION, id), 1)
            .await?;
        Ok(Vehicle {
            id: id.to_owned(),
            client,
        })
    }

    /// A stand-in for the fog on a station's reservation topics: it sends the
    /// `reserve` / `cancel` messages a test chooses (a given `start_ms`, none, an
    /// update) and reads the station's events.
    pub async fn fog_side(&self, station_id: &str) -> Result<FogSide> {
        let client =
            TestClient::connect(&self.broker.url(), &format!("fog-side-{station_id}")).await?;
        let events = protocol::topics::station_reservation_events(REGION, station_id);
        client.subscribe(&events, 1).await?;
        Ok(FogSide {
            client,
            reservations: protocol::topics::station_reservations(REGION, station_id),
            events,
        })
    }

    /// A gateway metric (`name{labels}` as exposed), or 0.
    pub async fn gateway_metric(&self, series: &str) -> Result<f64> {
        let addr = self.gateway().http_addr.context("no HTTP")?;
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
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

    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(g) = self.gateway.take() {
            tokio::time::timeout(Duration::from_secs(10), g.wait())
                .await
                .context("the gateway did not stop within 10 s")??;
        }
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Vehicle {
    pub id: String,
    pub client: TestClient,
}

impl Vehicle {
    /// Asks for a station next to the chargers; returns the recommendation.
    pub async fn ask(&mut self, request_id: &str) -> Result<protocol::Recommendation> {
        let req = testkit::messages::request(request_id, LAT + 0.001, LON, 0.3);
        self.client
            .publish_json(&protocol::topics::request(REGION, &self.id), &req, 1, false)
            .await?;
        self.next().await
    }

    pub async fn next(&mut self) -> Result<protocol::Recommendation> {
        self.client
            .wait_for_json(
                &protocol::topics::recommendation(REGION, &self.id),
                Duration::from_secs(10),
            )
            .await
    }

    pub async fn end(
        &self,
        reservation_id: &str,
        action: protocol::ReservationAction,
    ) -> Result<()> {
        let update = protocol::ReservationUpdate {
            v: 1,
            reservation_id: reservation_id.into(),
            action,
        };
        self.client
            .publish_json(
                &protocol::topics::reservation(REGION, &self.id),
                &update,
                1,
                false,
            )
            .await
    }
}

/// See [`Env::fog_side`].
pub struct FogSide {
    client: TestClient,
    reservations: String,
    events: String,
}

impl FogSide {
    /// Sends `reserve` (QoS 1, as the fog does).
    pub async fn reserve(
        &self,
        reservation_id: &str,
        id_tag: &str,
        expires_ms: u64,
        start_ms: Option<u64>,
    ) -> Result<()> {
        let msg = protocol::StationReservation {
            v: 1,
            reservation_id: reservation_id.into(),
            action: protocol::StationReservationAction::Reserve,
            id_tag: Some(id_tag.into()),
            expires_ms: Some(expires_ms),
            start_ms,
        };
        self.client
            .publish_json(&self.reservations, &msg, 1, false)
            .await
    }

    pub async fn cancel(&self, reservation_id: &str) -> Result<()> {
        let msg = protocol::StationReservation {
            v: 1,
            reservation_id: reservation_id.into(),
            action: protocol::StationReservationAction::Cancel,
            id_tag: None,
            expires_ms: None,
            start_ms: None,
        };
        self.client
            .publish_json(&self.reservations, &msg, 1, false)
            .await
    }

    /// The station's next reservation event, as (reservation id, event).
    pub async fn event(&mut self) -> Result<(String, protocol::StationReservationEventKind)> {
        let msg = self
            .client
            .wait_for(&self.events, Duration::from_secs(10))
            .await?;
        let e: protocol::StationReservationEvent = protocol::decode(msg.payload())?;
        Ok((e.reservation_id, e.event))
    }
}

/// A charge point run by `tests/py/charge_point.py`.
pub struct ChargePoint {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Events read but not yet asked for.
    seen: Vec<(String, Value)>,
}

impl ChargePoint {
    pub async fn spawn(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(python())
            .arg(py_dir().join("charge_point.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting charge_point.py")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        })
    }

    /// Sends a command (see charge_point.py).
    pub async fn send(&mut self, command: Value) -> Result<()> {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next event called `name` (earlier other events are kept).
    pub async fn expect(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        if let Some(i) = self.seen.iter().position(|(n, _)| n == name) {
            return Ok(self.seen.remove(i).1);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| {
                    format!("no {name} event within {timeout:?}; saw {:?}", self.seen)
                })??;
            let Some(line) = line else {
                bail!("the charge point exited before {name}; saw {:?}", self.seen);
            };
            let Some(rest) = line.strip_prefix("EVENT ") else {
                continue;
            };
            let (event, data) = rest.split_once(' ').unwrap_or((rest, "{}"));
            let data: Value = serde_json::from_str(data)?;
            if event == "error" {
                bail!("the charge point failed: {data}");
            }
            if event == name {
                return Ok(data);
            }
            self.seen.push((event.to_owned(), data));
        }
    }

    /// The names of the events read but not asked for yet.
    pub fn seen_names(&self) -> Vec<String> {
        self.seen.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Runs a command and returns its event (named like the command).
    pub async fn run(&mut self, command: Value) -> Result<Value> {
        let name = command["cmd"].as_str().context("cmd")?.to_owned();
        self.send(command).await?;
        self.expect(&name, Duration::from_secs(10)).await
    }

    /// Connects, boots and reports every connector `Available`.
    pub async fn boot(&mut self, connectors: u32) -> Result<()> {
        self.expect("connected", Duration::from_secs(15)).await?;
        let boot = self.run(json!({"cmd": "boot"})).await?;
        anyhow::ensure!(boot["status"] == "Accepted", "boot: {boot}");
        for c in 1..=connectors {
            self.status(c, "Available").await?;
        }
        Ok(())
    }

    pub async fn status(&mut self, connector: u32, status: &str) -> Result<()> {
        self.send(json!({"cmd": "status", "connector": connector, "status": status}))
            .await?;
        let sent = self.expect("status_sent", Duration::from_secs(10)).await?;
        anyhow::ensure!(sent["answered"] == true, "status not answered: {sent}");
        Ok(())
    }

    pub async fn exit(mut self) -> Result<()> {
        let _ = self.send(json!({"cmd": "exit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}

/// Runs `tests/py/hostile.py` and returns what it printed.
pub async fn hostile(url: &str, oversized: usize) -> Result<Value> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(python())
            .arg(py_dir().join("hostile.py"))
            .args(["--url", url, "--oversized", &oversized.to_string()])
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("hostile.py took over 60 s")??;
    anyhow::ensure!(out.status.success(), "hostile.py failed");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A chargers file of `n` one-connector chargers `{prefix}-00000…`, spread over a
/// few kilometres around the test position.
pub fn storm_chargers(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            let (dlat, dlon) = ((i % 40) as f64 * 0.001, (i / 40) as f64 * 0.001);
            format!(
                "[[charger]]\nid = \"{prefix}-{i:05}\"\nlat = {}\nlon = {}\nconnectors = 1\npower_kw = 50.0\n",
                LAT + dlat,
                LON + dlon
            )
        })
        .collect()
}

/// What a connect storm measured.
#[derive(Debug)]
pub struct StormFigures {
    pub n: usize,
    /// From starting the charge points until the fog listed every one in service.
    pub all_visible_s: f64,
    /// The charge points' own time to connect, boot and have every status answered.
    pub connect_s: f64,
    /// StatusNotification sent → the fog's station updated, ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// The charge points, still connected (answering ReserveNow with Accepted).
    pub storm: Child,
}

impl StormFigures {
    pub fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms[i]
    }
}

/// Connects `n` charge points at once through `url` and waits until `fog` has them
/// all in service.
pub async fn storm(url: &str, fog: &Fog, prefix: &str, n: usize) -> Result<StormFigures> {
    let started = Instant::now();
    let mut child = Command::new(python())
        .arg(py_dir().join("storm.py"))
        .args([
            "--url",
            url,
            "--n",
            &n.to_string(),
            "--prefix",
            prefix,
            "--connectors",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting storm.py")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let timeout = Duration::from_secs(60 + n as u64 / 5);
    let ready: Value = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(data) = line.strip_prefix("EVENT ready ") {
                return Ok(serde_json::from_str(data)?);
            }
        }
        bail!("storm.py exited before every charge point was ready")
    })
    .await
    .context("the storm did not finish in time")??;
    let stations: Vec<Value> = wait_until(
        "every storm charger is in service in the fog",
        timeout,
        Duration::from_millis(50),
        || async {
            let all: Vec<Value> = fog.get_json("/api/stations").await.ok()?;
            let ours = all
                .into_iter()
                .filter(|s| {
                    s["station_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with(prefix))
                        && s["state"] == "available"
                })
                .count();
            (ours == n).then_some(())
        },
    )
    .await
    .map(|_| ())
    .and(Ok(Vec::new()))?;
    drop(stations);
    let all_visible_s = started.elapsed().as_secs_f64();
    let fetched_ms = wall_ms();
    let views: Vec<Value> = fog.get_json("/api/stations").await?;
    let sent = ready["sent_ms"].as_object().context("sent_ms")?;
    let mut latencies_ms: Vec<f64> = views
        .iter()
        .filter_map(|s| {
            let id = s["station_id"].as_str()?;
            let sent = sent.get(id)?.as_f64()?;
            let updated = fetched_ms - s["data_age_ms"].as_f64()?;
            Some((updated - sent).max(0.0))
        })
        .collect();
    anyhow::ensure!(
        latencies_ms.len() == n,
        "{} latencies for {n}",
        latencies_ms.len()
    );
    latencies_ms.sort_by(f64::total_cmp);
    Ok(StormFigures {
        n,
        all_visible_s,
        connect_s: ready["connect_s"].as_f64().unwrap_or(0.0),
        latencies_ms,
        storm: child,
    })
}

pub fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One ReserveNow round trip per vehicle: the fog's reservation message for the
/// station (the assignment) → the charger's ReserveNow → `accepted` back on the
/// fog's broker, ms, sorted.
pub async fn reserve_round_trips(broker_url: &str, vehicles: usize) -> Result<Vec<f64>> {
    let mut observer = TestClient::connect(broker_url, "rtt-observer").await?;
    observer
        .subscribe(&format!("ev/{REGION}/stations/+/reservations"), 1)
        .await?;
    observer
        .subscribe(&format!("ev/{REGION}/stations/+/reservation-events"), 1)
        .await?;
    let mut out = Vec::new();
    for i in 0..vehicles {
        let id = format!("rtt-car-{i}");
        let client = TestClient::connect(broker_url, &id).await?;
        let req = testkit::messages::request(&format!("r-{i}"), LAT + 0.01, LON + 0.01, 0.5);
        client
            .publish_json(&protocol::topics::request(REGION, &id), &req, 1, false)
            .await?;
        let _ = observer
            .wait_for(
                &format!("ev/{REGION}/stations/+/reservations"),
                Duration::from_secs(10),
            )
            .await?;
        let assigned = Instant::now();
        let event = observer
            .wait_for(
                &format!("ev/{REGION}/stations/+/reservation-events"),
                Duration::from_secs(10),
            )
            .await?;
        let elapsed = assigned.elapsed().as_secs_f64() * 1000.0;
        let e: protocol::StationReservationEvent = protocol::decode(event.payload())?;
        anyhow::ensure!(
            e.event == protocol::StationReservationEventKind::Accepted,
            "{e:?}"
        );
        out.push(elapsed);
        client.disconnect().await?;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// A `reserve_now` event's `expiry_date`, ms since the epoch.
pub fn expiry_ms(reserve_now: &Value) -> u64 {
    let date = reserve_now["expiry_date"].as_str().expect("an expiry_date");
    chrono::DateTime::parse_from_rfc3339(date)
        .expect("RFC 3339")
        .timestamp_millis() as u64
}
