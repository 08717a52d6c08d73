//! The dashboard in a real browser: headless Chromium driven by ChromeDriver against a
//! running three-region city. The page shows the three regions and their stations; a
//! region that becomes saturated and a reroute show up within seconds of happening.
//! A screenshot is saved as `target/dashboard.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (CI installs them); without them the
//! test fails with the install command.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use protocol::topics;
use testkit::city::{City, CitySpec};
use testkit::{TestClient, free_port, wait_until};

const T: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

use testkit::messages::busy_station as status;

fn find(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL}"))
}

/// ChromeDriver on a free port in a process group of its own: on drop the whole group
/// goes, Chromium included, even when the test failed before closing the session.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("kill -KILL -- -{}", self.0.id());
        let _ = Command::new("sh").args(["-c", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_city_and_what_happens_in_it() {
    testkit::init_tracing();
    let chromium = find("chromium");
    let chromedriver = find("chromedriver");
    let port = free_port().unwrap();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver_url = format!("http://127.0.0.1:{port}");
    wait_until("chromedriver is up", T, POLL, || async {
        reqwest::get(format!("{driver_url}/status")).await.is_ok()
    })
    .await
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::native()
        .capabilities(caps)
        .connect(&driver_url)
        .await
        .expect("a Chromium session through chromedriver");

    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let http = city.central.as_ref().unwrap().http;
    let mut stations = Vec::new();
    for (region, s) in [
        ("west", status("west-1", 0.05, 2, 0, 0)),
        ("middle", status("middle-1", 0.11, 2, 0, 0)),
        ("middle", status("middle-2", 0.16, 6, 1, 0)),
        ("east", status("east-1", 0.25, 4, 1, 0)),
    ] {
        let c = TestClient::connect(&city.broker(region).url(), &format!("st-{}", s.station_id))
            .await
            .unwrap();
        c.publish_json(&topics::station_status(region, &s.station_id), &s, 1, true)
            .await
            .unwrap();
        stations.push((region, c));
    }

    browser.goto(&format!("http://{http}/")).await.unwrap();
    let count = |selector: &'static str| {
        let browser = browser.clone();
        async move {
            browser
                .find_all(Locator::Css(selector))
                .await
                .map(|v| v.len())
                .unwrap_or(0)
        }
    };
    wait_until(
        "three regions and four stations on the map",
        T,
        POLL,
        || async { count("#map .region").await == 3 && count("#map .station").await == 4 },
    )
    .await
    .unwrap();
    assert_eq!(count("#regions-table tbody tr").await, 3);
    assert_eq!(count("#map .region.saturated").await, 0);

    // West fills up: one charger busy, six queued.
    let started = Instant::now();
    let (_, west) = &stations[0];
    west.publish_json(
        &topics::station_status("west", "west-1"),
        &status("west-1", 0.05, 1, 1, 6),
        1,
        true,
    )
    .await
    .unwrap();
    wait_until("west shown saturated", T, POLL, || async {
        count("#map .region.saturated[data-region=\"west\"]").await == 1
    })
    .await
    .unwrap();
    let saturated_after = started.elapsed();
    let row = browser
        .find(Locator::Css(
            "#regions-table tr[data-region=\"west\"] td.state",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(row, "saturated");

    // A vehicle in west is rerouted: the arrow appears.
    let cars = TestClient::connect(&city.broker("west").url(), "car-w")
        .await
        .unwrap();
    cars.subscribe("ev/west/vehicles/+/recommendation", 1)
        .await
        .unwrap();
    let request = testkit::messages::request("r-1", 0.0, 0.08, 0.3);
    let asked = Instant::now();
    cars.publish_json(&topics::request("west", "car-1"), &request, 1, false)
        .await
        .unwrap();
    wait_until("a reroute arrow from west", T, POLL, || async {
        count("#map line.reroute[data-origin=\"west\"]").await == 1
    })
    .await
    .unwrap();
    let arrow_after = asked.elapsed();
    let counter = browser
        .find(Locator::Id("c-reroutes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    wait_until("the reroute counter", T, POLL, || async {
        browser
            .find(Locator::Id("c-reroutes"))
            .await
            .ok()?
            .text()
            .await
            .ok()
            .filter(|t| t == "1")
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (showed {counter:?})"));

    // Hovering a station shows its details.
    let station = browser
        .find(Locator::Css("#map .station[data-station=\"middle-2\"]"))
        .await
        .unwrap();
    station.click().await.unwrap();
    let details = browser
        .find(Locator::Id("details"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        details.contains("middle-2") && details.contains("6 × 50 kW"),
        "{details}"
    );

    let png = browser.screenshot().await.unwrap();
    let path = target_dir().join("dashboard.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
    eprintln!(
        "saturation shown {saturated_after:?} after the station update, reroute arrow {arrow_after:?} after the request; screenshot {}",
        path.display()
    );
    browser.close().await.unwrap();
}
