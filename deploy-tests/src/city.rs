//! A running deployment for the fault tests: `deploy/regions.yml` without device-sim (the
//! test is the fleet), the shared clock at 1x (reservations last their real ten minutes),
//! stations and vehicles driven from the host through the published broker ports with
//! the users `fogcharge setup` made.
//!
//! The map (deploy/topology.toml): north above latitude -12.97, south below it west of
//! longitude -38.5. [`City::saturate_north`] puts a full station in north just above the
//! border and a free one in south just below it, so that north's requests are rerouted
//! through central to south.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::api::RegionView;
use protocol::topics::{VehicleChannel, filters};
use protocol::{ChargeRequest, Recommendation, RecommendationStatus, StationStatus, topics};
use serde_json::Value;
use testkit::TestClient;
use topology::auth::{Credentials, Role};

use crate::{Engine, Project, get_json};

/// The shared clock at real time (setup's command with `--clock-speed 1`).
const CLOCK_1X: &str = "services:
  setup:
    command: [fogcharge, setup, --topology, /etc/fogcharge/topology.toml, --out, /fogcharge/secrets, --clock-speed, '1']
";

/// Where the test's vehicle waits in north, next to the border with south.
pub const NORTH_VEHICLE: (f64, f64) = (-12.972, -38.6);

/// A deployment of the compose file with central, the fog servers and the brokers up.
pub struct City {
    pub project: Project,
    pub users: Credentials,
    stations: Vec<TestClient>,
}

impl City {
    /// `up -d` of every server (setup and the brokers first), all healthy.
    pub async fn start() -> Result<City> {
        let engine = Engine::require();
        let project = Project::new(&engine, &[CLOCK_1X])?;
        let t = crate::deploy_topology();
        let mut services = vec!["central".to_owned()];
        services.extend(t.regions.iter().map(|r| format!("fog-{}", r.id)));
        let services: Vec<&str> = services.iter().map(String::as_str).collect();
        project.up(&services)?;
        let mut all = services.clone();
        all.push(&t.central.host);
        let brokers: Vec<String> = t.regions.iter().map(|r| r.broker.host.clone()).collect();
        all.extend(brokers.iter().map(String::as_str));
        project.wait_healthy(&all, Duration::from_secs(120)).await?;
        let users = crate::users(&project, "central")?;
        Ok(City {
            project,
            users,
            stations: Vec::new(),
        })
    }

    /// The published MQTT address of `region`'s broker.
    pub fn broker_url(&self, region: &str) -> String {
        format!(
            "tcp://127.0.0.1:{}",
            self.project.port(&format!("broker-{region}"))
        )
    }

    /// A fleet gateway client (`fleet-{region}`) hearing every vehicle's recommendation.
    pub async fn fleet(&self, region: &str, client_id: &str) -> Result<TestClient> {
        let user = format!("fleet-{region}");
        let password = self.users.password(&user).context("no fleet user")?;
        let c =
            TestClient::connect_as(&self.broker_url(region), client_id, &user, password).await?;
        c.subscribe(
            &filters::vehicles(region, VehicleChannel::Recommendation),
            1,
        )
        .await?;
        Ok(c)
    }

    /// The `n`th station user of `region`.
    pub fn station_id(&self, region: &str, n: usize) -> Result<String> {
        self.users
            .users
            .iter()
            .filter(|u| matches!(&u.role, Role::Station { region: r } if r == region))
            .nth(n)
            .map(|u| u.name.clone())
            .with_context(|| format!("no station {n} in {region}"))
    }

    /// Publishes a station's status (retained) as that station.
    pub async fn station(
        &mut self,
        region: &str,
        id: &str,
        at: (f64, f64),
        chargers: u32,
        occupied: u32,
        queue: u32,
    ) -> Result<()> {
        let password = self.users.password(id).context("no station user")?;
        let c = TestClient::connect_as(
            &self.broker_url(region),
            &format!("test-{id}"),
            id,
            password,
        )
        .await?;
        let status = StationStatus {
            occupied,
            queue,
            ..testkit::messages::station(id, at.0, at.1, chargers, 50.0)
        };
        c.publish_json(&topics::station_status(region, id), &status, 1, true)
            .await?;
        self.stations.push(c);
        Ok(())
    }

    /// Central's view of each region (`/api/regions`).
    pub async fn regions(&self) -> Result<BTreeMap<String, RegionView>> {
        let list: Vec<RegionView> = get_json(self.project.port("central"), "/api/regions").await?;
        Ok(list.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    /// Waits until central's view of `region` satisfies `check`.
    pub async fn wait_region(
        &self,
        region: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&RegionView) -> bool,
    ) -> Result<RegionView> {
        testkit::wait_until(what, timeout, Duration::from_millis(100), || async {
            self.regions()
                .await
                .ok()?
                .remove(region)
                .filter(|v| check(v))
        })
        .await
    }

    /// A full station in north by the border, a free one in south across it; waits until
    /// central sees north saturated and south's free station.
    pub async fn saturate_north(&mut self) -> Result<()> {
        let full = self.station_id("north", 0)?;
        let free = self.station_id("south", 0)?;
        self.station("north", &full, (-12.975, -38.6), 1, 1, 8)
            .await?;
        self.station("south", &free, (-12.985, -38.6), 4, 0, 0)
            .await?;
        let t = Duration::from_secs(30);
        self.wait_region("north", "north is saturated", t, |v| v.saturated)
            .await?;
        self.wait_region("south", "south lists its free station", t, |v| {
            v.aggregate.best.iter().any(|s| s.station_id == free)
        })
        .await?;
        Ok(())
    }

    /// A fog server's reservations (`/api/reservations` on its published port).
    pub async fn reservations(&self, region: &str) -> Result<Vec<Value>> {
        let v: Value = get_json(
            self.project.port(&format!("fog-{region}")),
            "/api/reservations",
        )
        .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

/// A request from a 60 kWh vehicle at `at` with 30% charge.
pub fn request(id: &str, at: (f64, f64)) -> ChargeRequest {
    testkit::messages::request(id, at.0, at.1, 0.3)
}

/// Requests from a fleet client, one new vehicle each, and every answer they got.
pub struct Load {
    pub client: TestClient,
    region: String,
    prefix: String,
    at: (f64, f64),
    n: usize,
    /// request id → when it was sent.
    pub sent: BTreeMap<String, Instant>,
    /// request id → every answer (when, what).
    pub answers: BTreeMap<String, Vec<(Instant, Recommendation)>>,
    /// Requests whose publish failed (the broker was away): not sent, not expected.
    pub refused: usize,
    /// Why the last refused one was.
    pub last_error: Option<String>,
}

impl Load {
    pub fn new(client: TestClient, region: &str, prefix: &str, at: (f64, f64)) -> Load {
        Load {
            client,
            region: region.into(),
            prefix: prefix.into(),
            at,
            n: 0,
            sent: BTreeMap::new(),
            answers: BTreeMap::new(),
            refused: 0,
            last_error: None,
        }
    }

    /// Sends one request (a new vehicle); its id, or `None` if the broker did not take it.
    pub async fn send(&mut self) -> Option<String> {
        self.n += 1;
        let id = format!("{}-{}", self.prefix, self.n);
        let req = request(&id, self.at);
        let t = Instant::now();
        match self
            .client
            .publish_json(&topics::request(&self.region, &id), &req, 1, false)
            .await
        {
            Ok(()) => {
                self.sent.insert(id.clone(), t);
                Some(id)
            }
            Err(e) => {
                self.refused += 1;
                self.last_error = Some(format!("{e:#}"));
                None
            }
        }
    }

    /// Records the answers that come within `window`.
    pub async fn pump(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(msg) = self.client.recv_timeout(left).await else {
                break;
            };
            if let Ok(r) = serde_json::from_slice::<Recommendation>(msg.payload()) {
                self.answers
                    .entry(r.request_id.clone())
                    .or_default()
                    .push((Instant::now(), r));
            }
        }
    }

    /// One request every `every` for `duration`, recording answers in between.
    pub async fn run_for(&mut self, duration: Duration, every: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.send().await;
            self.pump(every).await;
        }
    }

    /// Sends one request and waits (up to `timeout`) for its answer.
    pub async fn ask(&mut self, timeout: Duration) -> Result<(Recommendation, Duration)> {
        let id = self
            .send()
            .await
            .context("the broker refused the request")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pump(Duration::from_millis(50)).await;
            if let Some((at, r)) = self.answers.get(&id).and_then(|a| a.first()) {
                return Ok((r.clone(), *at - self.sent[&id]));
            }
        }
        bail!("request {id}: no answer within {timeout:?}")
    }

    /// Asks until the answer has status `want`.
    pub async fn ask_until(
        &mut self,
        what: &str,
        timeout: Duration,
        want: RecommendationStatus,
    ) -> Result<Recommendation> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((r, _)) = self.ask(Duration::from_secs(5)).await
                && r.status == want
            {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting until {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every sent request has an answer, then listens one more second for
    /// duplicates; fails unless each got exactly one. The slowest answer.
    pub async fn settle(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        while self.sent.keys().any(|id| !self.answers.contains_key(id)) {
            if Instant::now() > deadline {
                let missing: Vec<&String> = self
                    .sent
                    .keys()
                    .filter(|id| !self.answers.contains_key(*id))
                    .collect();
                bail!(
                    "{} of {} requests unanswered: {missing:?}",
                    missing.len(),
                    self.sent.len()
                );
            }
            self.pump(Duration::from_millis(100)).await;
        }
        self.pump(Duration::from_secs(1)).await;
        let twice: Vec<(&String, usize)> = self
            .answers
            .iter()
            .filter(|(_, a)| a.len() > 1)
            .map(|(id, a)| (id, a.len()))
            .collect();
        if !twice.is_empty() {
            bail!("requests answered more than once: {twice:?}");
        }
        let slowest = self
            .sent
            .iter()
            .filter_map(|(id, t)| Some(self.answers.get(id)?[0].0 - *t))
            .max()
            .unwrap_or_default();
        Ok(slowest)
    }
}
