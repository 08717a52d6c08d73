//! `fogcharge setup`: what a container deployment needs before its brokers start.
//!
//! From the topology and the scenario (whose stations log in as themselves) it makes
//! the deployment's users ([`topology::auth::Credentials`]) and writes
//! [`topology::deploy::secret_files`] plus the shared clock (`clock.json`):
//!
//! - `--out DIR` (docker compose: a named volume): files in DIR. Run again, it keeps the
//!   users and the clock already there (adding users that are missing), so a restart of
//!   the deployment changes no password.
//! - `--kubernetes-secret NAME` (Kubernetes: a Job): creates the Secret NAME in the
//!   pod's namespace through the API server with the pod's service account, keys from
//!   [`topology::deploy::secret_key`]; an existing Secret is left as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use serverkit::clock::{ClockFile, wall_ms};
use topology::Topology;
use topology::auth::Credentials;
use topology::deploy::{CLOCK_FILE, secret_files, secret_key};
use tracing::info;

use crate::world::{Regions, Scenario, World};

/// Makes a deployment's users, broker password/ACL files, bridge sections and clock.
#[derive(Debug, Clone, Parser)]
#[command(name = "fogcharge setup")]
pub struct SetupArgs {
    /// The deployment's topology (TOML).
    #[arg(long, env = "SETUP_TOPOLOGY")]
    pub topology: PathBuf,

    /// Write the files into this directory.
    #[arg(long, env = "SETUP_OUT", required_unless_present = "kubernetes_secret")]
    pub out: Option<PathBuf>,

    /// Create this Kubernetes Secret (in the pod's namespace) instead.
    #[arg(long, env = "SETUP_KUBERNETES_SECRET", conflicts_with = "out")]
    pub kubernetes_secret: Option<String>,

    /// Simulated seconds per real second of the whole deployment.
    #[arg(long, env = "SETUP_CLOCK_SPEED", default_value_t = 1.0)]
    pub clock_speed: f64,

    /// The API server (default: from the pod's environment).
    #[arg(long, env = "SETUP_KUBERNETES_API", hide = true)]
    pub kubernetes_api: Option<String>,

    /// The service account folder (token, namespace, ca.crt).
    #[arg(
        long,
        env = "SETUP_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount",
        hide = true
    )]
    pub service_account_dir: PathBuf,

    /// The simulated stations log in as themselves: the same scenario as device-sim's.
    #[command(flatten)]
    pub scenario: Scenario,
}

/// Runs `fogcharge setup`.
pub async fn run(args: SetupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clock_speed.is_finite() && args.clock_speed > 0.0,
        "--clock-speed must be a positive number"
    );
    let t = Topology::load(&args.topology)?;
    match (&args.out, &args.kubernetes_secret) {
        (Some(dir), _) => write_dir(&args, &t, dir),
        (None, Some(name)) => {
            let api = KubeApi::from_pod(&args)?;
            if api.secret_exists(name).await? {
                println!("secret {name} exists: nothing to do");
                return Ok(());
            }
            let files = make_files(&args, &t, Credentials::default(), None)?;
            let data: BTreeMap<String, String> = files
                .into_iter()
                .map(|(path, text)| (secret_key(&path), text))
                .collect();
            api.create_secret(name, &data).await?;
            println!("created secret {name} ({} keys)", data.len());
            Ok(())
        }
        (None, None) => bail!("give --out DIR or --kubernetes-secret NAME"),
    }
}

/// The users for the topology and the scenario's stations, `existing` kept.
fn make_files(
    args: &SetupArgs,
    t: &Topology,
    mut existing: Credentials,
    clock: Option<ClockFile>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let world = World::generate(&args.scenario, Regions::from_topology(t))?;
    let stations: Vec<(String, String)> = world
        .stations
        .iter()
        .map(|s| (world.regions.areas[s.region].id.clone(), s.id.clone()))
        .collect();
    existing.merge_missing(Credentials::generate(t, &stations, &[]));
    let mut files = secret_files(t, &existing)?;
    let clock = clock
        .filter(|c| c.speed == args.clock_speed)
        .unwrap_or(ClockFile {
            speed: args.clock_speed,
            epoch_ms: wall_ms(),
        });
    files.insert(CLOCK_FILE.to_owned(), clock.to_json());
    Ok(files)
}

fn write_dir(args: &SetupArgs, t: &Topology, dir: &Path) -> anyhow::Result<()> {
    let users = dir.join("users.toml");
    let existing = if users.exists() {
        info!(path = %users.display(), "keeping the users already there");
        Credentials::load(&users)?
    } else {
        Credentials::default()
    };
    let clock = ClockFile::load(&dir.join(CLOCK_FILE)).ok();
    let files = make_files(args, t, existing, clock)?;
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // The brokers (another user in another container) read these files: readable,
        // and only ever mounted into this deployment's own containers.
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("wrote {} files to {}", files.len(), dir.display());
    Ok(())
}

/// The Kubernetes API server, as a pod's service account reaches it.
struct KubeApi {
    base: String,
    namespace: String,
    token: String,
    client: reqwest::Client,
}

impl KubeApi {
    fn from_pod(args: &SetupArgs) -> anyhow::Result<Self> {
        let sa = &args.service_account_dir;
        let read = |name: &str| {
            std::fs::read_to_string(sa.join(name))
                .map(|s| s.trim().to_owned())
                .with_context(|| {
                    format!(
                        "reading {} (is this running in a Kubernetes pod with a service account?)",
                        sa.join(name).display()
                    )
                })
        };
        let base = match &args.kubernetes_api {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .context("KUBERNETES_SERVICE_HOST is not set: not in a Kubernetes pod")?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if base.starts_with("https://") {
            let pem = std::fs::read(sa.join("ca.crt"))
                .with_context(|| format!("reading {}", sa.join("ca.crt").display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            base,
            namespace: read("namespace")?,
            token: read("token")?,
            client: builder.build()?,
        })
    }

    fn secrets_url(&self) -> String {
        format!("{}/api/v1/namespaces/{}/secrets", self.base, self.namespace)
    }

    async fn secret_exists(&self, name: &str) -> anyhow::Result<bool> {
        let response = self
            .client
            .get(format!("{}/{name}", self.secrets_url()))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("asking the API server for the secret")?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!(
                "the API server answered {status} for secret {name}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    async fn create_secret(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/name": name,
                    "app.kubernetes.io/part-of": "fogcharge",
                    "app.kubernetes.io/managed-by": "fogcharge-setup",
                },
            },
            "type": "Opaque",
            "stringData": data,
        });
        let response = self
            .client
            .post(self.secrets_url())
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .context("creating the secret")?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            // Another setup pod made it first: theirs stands.
            409 => Ok(()),
            status => bail!(
                "the API server refused secret {name} ({status}): {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
}
