//! A region's OCPP gateway as the deployments run it: the command and environment of
//! the generated `ocpp-{region}` container ([`topology::deploy::containers`]), the
//! MQTT user `fogcharge setup` makes for it, the region's checked-in chargers file, and
//! a real Mosquitto with the password file and ACL setup wrote for the region. Only
//! the paths and addresses move to this machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use testkit::charge_point::{boot_as_station, open as charge_point};
use testkit::{Mosquitto, MosquittoConfig, free_port, wait_until};
use topology::Topology;
use topology::auth::Credentials;
use topology::deploy::{CHARGERS_PATH, SERVER_SECRETS, Settings, containers};

const EXE: &str = env!("CARGO_BIN_EXE_fogcharge");
const T: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The gateway process, stopped when the test ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_gateway_connects_as_its_user_and_serves_its_chargers_file() {
    testkit::init_tracing();
    let root = root();
    let topology_file = root.join(topology::DEPLOY_TOPOLOGY);
    let t = Topology::load(&topology_file).unwrap();
    let settings = Settings::load(&root.join(topology::deploy::DEPLOY_SETTINGS), &t).unwrap();
    let region = t.regions[0].id.clone();
    let name = format!("ocpp-{region}");
    let c = containers(&t, &settings)
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .expect("an OCPP gateway container per region");

    // The secrets as setup makes them for the deployment.
    let secrets = tempfile::tempdir().unwrap();
    let setup = Command::new(EXE)
        .arg("setup")
        .arg("--topology")
        .arg(&topology_file)
        .arg("--out")
        .arg(secrets.path())
        .args(["--stations", "3", "--vehicles", "5"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(setup.status.success(), "{setup:?}");
    let creds = Credentials::load(&secrets.path().join("users.toml")).unwrap();

    // The region's broker: setup's password file and ACL, no anonymous client.
    let s = secrets.path().display().to_string();
    let r = region.clone();
    let broker = Mosquitto::start(MosquittoConfig::from_template(move |port, _| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n\
             password_file {s}/{r}.passwd\nacl_file {s}/{r}.acl\n"
        )
    }))
    .unwrap();

    // The region's checked-in chargers file, copied (the test adds a charger later).
    let checked_in =
        std::fs::read_to_string(root.join(format!("deploy/chargers/{region}.toml"))).unwrap();
    let chargers = tempfile::tempdir().unwrap();
    let chargers_file = chargers.path().join("chargers.toml");
    std::fs::write(&chargers_file, &checked_in).unwrap();

    let (ocpp_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let mut cmd = Command::new(EXE);
    cmd.args(&c.command[1..]).env_clear();
    for (k, v) in &c.env {
        let v = match k.as_str() {
            "OCPP_BROKER" => broker.url(),
            "OCPP_LISTEN" => format!("127.0.0.1:{ocpp_port}"),
            "OCPP_HTTP" => format!("127.0.0.1:{http_port}"),
            "OCPP_CHARGERS" => {
                assert_eq!(v, CHARGERS_PATH);
                chargers_file.display().to_string()
            }
            _ => v.replace(SERVER_SECRETS, &secrets.path().display().to_string()),
        };
        cmd.env(k, v);
    }
    let gateway = Gateway(cmd.spawn().unwrap());
    let pid = gateway.0.id().to_string();

    // Ready: logged in to the broker as its user, with setup's password.
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    wait_until("the gateway is ready", T, POLL, || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .unwrap();
    // The checked-in file is an empty registry: any charge point is unknown.
    assert!(charge_point(ocpp_port, "CP-001", None, &[]).contains(" 404 "));

    // The file's own example, filled in with a hash, then SIGHUP: the charger is known.
    let hash = topology::auth::hash_password("cp-001-secret");
    let example = format!(
        "{checked_in}\n[[charger]]\nid = \"CP-001\"\nlat = -12.9\nlon = -38.5\n\
         connectors = 2\npower_kw = 50.0\npassword = \"{hash}\"\n"
    );
    std::fs::write(&chargers_file, example).unwrap();
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    wait_until("the reloaded file knows CP-001", T, POLL, || async {
        charge_point(ocpp_port, "CP-001", None, &[]).contains(" 401 ")
    })
    .await
    .unwrap();
    assert!(charge_point(ocpp_port, "CP-001", Some("wrong"), &[]).contains(" 401 "));

    // The charger opens its session and reports: the station appears on the broker
    // (the gateway's user may write it), with the file's location.
    let fog_user = format!("fog-{region}");
    let fog = (
        region.as_str(),
        fog_user.as_str(),
        creds.password(&fog_user).unwrap(),
    );
    let charger = ("CP-001", "cp-001-secret");
    let station = boot_as_station(&broker.url(), fog, ocpp_port, charger)
        .await
        .unwrap();
    assert_eq!(station["station_id"], "CP-001", "{station}");
    assert_eq!(station["lat"], -12.9, "{station}");
    assert_eq!(station["chargers"], 2, "{station}");
    assert_eq!(station["takes_reservations"], true, "{station}");
    drop(gateway);
}
