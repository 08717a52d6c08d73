//! The dashboard's HTTP side against a real three-region city: the page and its assets,
//! the JSON it draws, and the event stream (snapshots, reroutes as they happen).

use std::time::Duration;

use protocol::topics;
use serde_json::Value;
use testkit::city::{City, CitySpec};
use testkit::{TestClient, wait_until};

const T: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

use testkit::messages::busy_station as status;

async fn publish_stations(city: &City) -> TestClient {
    let mut clients = Vec::new();
    for (region, station) in [
        ("west", status("west-busy", 0.09, 1, 1, 6)),
        ("middle", status("middle-free", 0.11, 2, 0, 0)),
        ("east", status("east-free", 0.25, 4, 1, 0)),
    ] {
        let c = TestClient::connect(&city.broker(region).url(), &format!("st-{region}"))
            .await
            .unwrap();
        c.publish_json(
            &topics::station_status(region, &station.station_id),
            &station,
            1,
            true,
        )
        .await
        .unwrap();
        clients.push(c);
    }
    let west = TestClient::connect(&city.broker("west").url(), "cars-west")
        .await
        .unwrap();
    west.subscribe("ev/west/vehicles/+/recommendation", 1)
        .await
        .unwrap();
    west
}

async fn dashboard(city: &City) -> Value {
    city.central_json("/api/dashboard").await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_json_and_event_stream_show_the_city_live() {
    testkit::init_tracing();
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let http = city.central.as_ref().unwrap().http;
    let mut cars = publish_stations(&city).await;

    // The JSON the page draws: three regions with outlines, every station, west saturated.
    let snap = wait_until(
        "three regions, three stations, west saturated",
        T,
        POLL,
        || async {
            let d = dashboard(&city).await;
            let ok = d["regions"].as_array()?.len() == 3
                && d["stations"].as_array()?.len() == 3
                && d["regions"]
                    .as_array()?
                    .iter()
                    .any(|r| r["id"] == "west" && r["saturated"] == true);
            ok.then_some(d)
        },
    )
    .await
    .unwrap();
    for r in snap["regions"].as_array().unwrap() {
        assert_eq!(r["outline"].as_array().unwrap().len(), 4, "{r}");
        assert_eq!(r["stale"], false);
    }
    let free = snap["stations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["station_id"] == "middle-free")
        .unwrap();
    assert_eq!(free["region"], "middle");
    assert_eq!(free["chargers"], 2);
    assert!(free["data_age_ms"].as_u64().unwrap() < 5_000);

    // The event stream: a snapshot at once, then the reroute the moment it happens.
    let mut events = reqwest::get(format!("http://{http}/api/events"))
        .await
        .unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buf = String::new();
    let mut next_event = async || -> (String, Value) {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or_default()
                    .to_owned();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !name.is_empty() {
                    return (name, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(T, events.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("the stream stays open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let (name, first) = next_event().await;
    assert_eq!(name, "snapshot");
    assert_eq!(first["regions"].as_array().unwrap().len(), 3);

    let request = testkit::messages::request("r-1", 0.0, 0.08, 0.3);
    cars.publish_json(&topics::request("west", "car-1"), &request, 1, false)
        .await
        .unwrap();
    let answer: Value = cars
        .wait_for_json(&topics::recommendation("west", "car-1"), T)
        .await
        .unwrap();
    assert_eq!(answer["status"], "rerouted", "{answer}");
    let deadline = std::time::Instant::now() + T;
    let mut seen = Vec::new();
    let reroute = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no reroute event within 10 s; events: {seen:?}"
        );
        let (name, data) = next_event().await;
        if name == "reroute" {
            break data;
        }
        seen.push(format!("{name}: reroutes {}", data["reroutes"]));
    };
    assert_eq!(reroute["origin_region"], "west");
    assert_eq!(reroute["target_region"], "middle");
    assert_eq!(reroute["station_id"], "middle-free");
    assert_eq!(reroute["vehicle_id"], "car-1");
    assert_eq!(reroute["from"][1], 0.08);
    // ...and the next snapshots keep it, with the counters.
    let d = dashboard(&city).await;
    assert_eq!(d["reroutes"].as_array().unwrap().len(), 1);
    assert_eq!(d["counters"]["reroutes_succeeded"], 1);
    wait_until("the next aggregate counts the request", T, POLL, || async {
        let d = dashboard(&city).await;
        let counted = d["counters"]["saturated_requests"].as_u64()? >= 1
            && d["regions"]
                .as_array()?
                .iter()
                .any(|r| r["id"] == "west" && r["requests_total"] == 1);
        counted.then_some(())
    })
    .await
    .unwrap();
}

/// A region's station list grows with it (~170 bytes a station): a region of 400
/// stations (~70 KB, far above the devices' 16 KiB message limit) still reaches the
/// dashboard whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_region_shows_all_its_stations() {
    const N: usize = 400;
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let stations = TestClient::connect(&city.broker("middle").url(), "st-many")
        .await
        .unwrap();
    let tokens: Vec<_> = (0..N)
        .map(|i| {
            let s = testkit::messages::station(
                &format!("middle-{i:03}"),
                -0.04 + 0.08 * (i % 20) as f64 / 20.0,
                0.101 + 0.098 * (i / 20) as f64 / 20.0,
                2,
                50.0,
            );
            stations.publish_no_wait(
                &topics::station_status("middle", &s.station_id),
                protocol::encode(&s),
                1,
                true,
            )
        })
        .collect();
    for t in tokens {
        t.await.unwrap();
    }
    wait_until(
        "all the middle region's stations on the dashboard",
        T,
        POLL,
        || async {
            let d = dashboard(&city).await;
            let shown = d["stations"]
                .as_array()?
                .iter()
                .filter(|s| s["region"] == "middle")
                .count();
            (shown == N).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_assets_are_served_by_central_itself() {
    let city = City::start(CitySpec::three_regions()).await.unwrap();
    let http = city.central.as_ref().unwrap().http;
    let get = |path: &str| {
        let url = format!("http://{http}{path}");
        async move { reqwest::get(url).await.unwrap() }
    };
    let page = get("/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<script src=\"/dashboard.js\">"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external asset"
    );
    for (path, kind) in [
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
        ("/report", "text/html"),
        ("/report.js", "text/javascript"),
    ] {
        let r = get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
    }
    // No report file given: a 404 that says how to get one.
    let report = get("/api/report").await;
    assert_eq!(report.status(), 404);
    assert!(report.text().await.unwrap().contains("--report-file"));
}
