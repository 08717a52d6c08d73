//! Faults with real containers: each test starts its own project of `deploy/regions.yml`
//! (brokers, fog servers, central; the test is the fleet), breaks one thing with the
//! Docker engine and checks that nothing is lost: every request answered exactly once,
//! reservations kept. Each prints its figure (`cargo nextest run -p deploy-tests
//! --no-capture`); docs/reliability.md has them.
//!
//! Bounds: a saturated request waits at most for the reroute timeout (1.5 s) before the
//! region answers on its own, so "answered within the bound" is 1.5 s plus 1.5 s of
//! slack for a loaded two-core machine.

use std::time::{Duration, Instant};

use deploy_tests::city::{City, Load, NORTH_VEHICLE};
use deploy_tests::{container_logs, docker};
use protocol::RecommendationStatus;

const BOUND: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_millis(200);

async fn load(city: &City, region: &str, name: &str, at: (f64, f64)) -> Load {
    let client = city
        .fleet(region, &format!("fleet-test-{name}"))
        .await
        .unwrap();
    Load::new(client, region, name, at)
}

/// SIGKILL of a fog server's container: its restart policy brings it back, its
/// reservations come back from its volume, and it answers again within 5 s; requests
/// sent meanwhile wait in the broker's session for it and are answered once.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_fog_container_is_restarted_with_its_reservations() {
    let mut city = City::start().await.unwrap();
    let id = city.station_id("north", 0).unwrap();
    city.station("north", &id, (-12.9, -38.6), 4, 0, 0)
        .await
        .unwrap();
    let at = (-12.901, -38.6);
    let mut fleet = load(&city, "north", "kill", at).await;
    // A reservation made before the kill (wait for the fog to know the station).
    let first = fleet
        .ask_until(
            "north assigns a vehicle",
            Duration::from_secs(20),
            RecommendationStatus::Assigned,
        )
        .await
        .unwrap();
    let reservation = first.reservation_id.clone().unwrap();
    let before = city.reservations("north").await.unwrap();
    assert!(
        before
            .iter()
            .any(|r| r["reservation_id"] == reservation.as_str())
    );

    let fog = city.project.container("fog-north").unwrap();
    let restarts = |c: &City| {
        c.project.inspect(&fog).unwrap()["RestartCount"]
            .as_u64()
            .unwrap_or(0)
    };
    let restarts_before = restarts(&city);
    // SIGKILL to the container's process, from the host: to the engine a crash, which
    // its restart policy answers. (`docker kill` itself counts as a manual stop for
    // Docker 20.10: the policy then leaves the container down.)
    let pid = city.project.inspect(&fog).unwrap()["State"]["Pid"].to_string();
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
    // Requests keep coming while it is down; the first answer to one marks it back.
    let mut after_kill = std::collections::BTreeSet::new();
    let mut back = None;
    while killed.elapsed() < Duration::from_secs(20) {
        after_kill.extend(fleet.send().await);
        fleet.pump(EVERY).await;
        back = fleet
            .answers
            .iter()
            .filter(|(id, _)| after_kill.contains(*id))
            .map(|(_, a)| a[0].0 - killed)
            .min();
        if back.is_some_and(|b| killed.elapsed() > b + Duration::from_secs(1)) {
            break;
        }
    }
    let back = back.expect("the killed fog server never answered again");
    let slowest = fleet.settle(Duration::from_secs(10)).await.unwrap();
    assert!(
        restarts(&city) > restarts_before,
        "not restarted by its policy"
    );
    assert!(
        back < Duration::from_secs(5),
        "answering again after {back:?}"
    );
    let after = city.reservations("north").await.unwrap();
    assert!(
        after
            .iter()
            .any(|r| r["reservation_id"] == reservation.as_str()),
        "the reservation made before the kill is gone: {after:?}"
    );
    println!(
        "SIGKILL of fog-north (its container process): answering again {} ms after the kill; {} requests meanwhile all answered once (slowest {} ms); reservation {reservation} kept",
        back.as_millis(),
        fleet.sent.len(),
        slowest.as_millis()
    );
}

/// The bridge cut: the regional broker disconnected from the network it shares with the
/// central broker. The region answers saturated requests on its own (with `reason`)
/// within the bound, central shows it stale; after the reconnect it is fresh again and
/// reroutes resume, each handed off once.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_cut_off_from_central_answers_alone_and_comes_back() {
    let mut city = City::start().await.unwrap();
    city.saturate_north().await.unwrap();
    let mut fleet = load(&city, "north", "cut", NORTH_VEHICLE).await;
    let (r, _) = fleet.ask(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.status, RecommendationStatus::Rerouted, "{r:?}");

    // North's bridge noticing the cut shows in its broker's log as a new attempt to
    // connect (Mosquitto 2.0 publishes no local "0" state when a bridge drops).
    let attempts = |c: &City| {
        c.project
            .logs("broker-north")
            .map(|l| l.matches("Connecting bridge").count())
            .unwrap_or(0)
    };
    let attempts_before = attempts(&city);
    let network = city.project.object(topology::deploy::CENTRAL_NETWORK);
    let broker = city.project.container("broker-north").unwrap();
    docker(&["network", "disconnect", &network, &broker]).unwrap();
    let cut = Instant::now();
    let mut local = 0;
    while cut.elapsed() < Duration::from_secs(8) {
        let (r, took) = fleet.ask(Duration::from_secs(10)).await.unwrap();
        assert!(
            took < BOUND,
            "a saturated request took {took:?} with the bridge cut"
        );
        if r.status == RecommendationStatus::Assigned {
            assert!(
                r.reason.is_some(),
                "answered alone without saying why: {r:?}"
            );
            local += 1;
        }
    }
    assert!(local > 0, "north never answered on its own while cut off");
    city.wait_region(
        "north",
        "central shows north stale",
        Duration::from_secs(20),
        |v| v.stale,
    )
    .await
    .unwrap();
    let stale_ms = cut.elapsed().as_millis();
    // The cut is noticed by the bridge itself, through its keepalive (5 s): an
    // unanswered PINGREQ closes the connection (~17 s after the cut here), and it
    // connects again (failing until the network is back). A cut shorter than that is
    // bridged by TCP's own retransmissions, whose back-off decides when data flows
    // again.
    testkit::wait_until(
        "broker-north's bridge notices the cut",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { attempts(&city) > attempts_before },
    )
    .await
    .unwrap();
    let noticed_ms = cut.elapsed().as_millis();

    docker(&["network", "connect", &network, &broker]).unwrap();
    let reconnected = Instant::now();
    city.wait_region(
        "north",
        "central shows north fresh",
        Duration::from_secs(60),
        |v| !v.stale,
    )
    .await
    .unwrap();
    let fresh = reconnected.elapsed();
    // Within two aggregate periods (2 s each): the bridge, which its keepalive (5 s)
    // dropped during the cut, reconnects after its back-off (1-2 s), and the fog sends
    // its aggregate as soon as it reads the bridge's state.
    assert!(
        fresh < Duration::from_secs(4),
        "fresh only {fresh:?} after the reconnect"
    );
    // Reroutes again, one handoff each: one reservation in south per rerouted vehicle.
    let rerouted = fleet
        .ask_until(
            "north reroutes again",
            Duration::from_secs(20),
            RecommendationStatus::Rerouted,
        )
        .await
        .unwrap();
    let slowest = fleet.settle(Duration::from_secs(10)).await.unwrap();
    let south = city.reservations("south").await.unwrap();
    let vehicle = rerouted.request_id.clone();
    let held = south
        .iter()
        .filter(|r| r["vehicle_id"] == vehicle.as_str())
        .count();
    assert_eq!(
        held, 1,
        "south holds {held} reservations for {vehicle}: {south:?}"
    );
    println!(
        "bridge cut (docker network disconnect broker-north from to-central): {local} saturated requests answered alone with a reason, slowest {} ms; central stale after {stale_ms} ms; the bridge noticed it after {noticed_ms} ms; fresh {} ms after the reconnect; {} requests all answered once",
        slowest.as_millis(),
        fresh.as_millis(),
        fleet.sent.len()
    );
}

/// `docker restart` of the central broker: regions keep answering (saturated requests
/// alone within the bound), then the bridges reconnect and reroutes resume.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_central_broker_is_rejoined() {
    let mut city = City::start().await.unwrap();
    city.saturate_north().await.unwrap();
    let mut fleet = load(&city, "north", "rc", NORTH_VEHICLE).await;
    let broker = city.project.container("broker-central").unwrap();
    let started = Instant::now();
    // in the background: the restart takes the broker's stop (up to its 10 s grace)
    let restart = tokio::task::spawn_blocking(move || docker(&["restart", "-t", "10", &broker]));
    let mut slowest_during = Duration::ZERO;
    while !restart.is_finished() {
        let (_, took) = fleet.ask(Duration::from_secs(10)).await.unwrap();
        slowest_during = slowest_during.max(took);
    }
    restart.await.unwrap().unwrap();
    let restarted = started.elapsed();
    city.project
        .wait_healthy(&["broker-central"], Duration::from_secs(30))
        .await
        .unwrap();
    let back = Instant::now();
    let r = fleet
        .ask_until(
            "north reroutes again",
            Duration::from_secs(30),
            RecommendationStatus::Rerouted,
        )
        .await
        .unwrap();
    let reroutes_again = back.elapsed();
    assert!(slowest_during < BOUND, "a request took {slowest_during:?}");
    fleet.settle(Duration::from_secs(10)).await.unwrap();
    let south = city.reservations("south").await.unwrap();
    assert_eq!(
        south
            .iter()
            .filter(|x| x["vehicle_id"] == r.request_id.as_str())
            .count(),
        1
    );
    println!(
        "docker restart broker-central: took {} ms; slowest answer meanwhile {} ms; rerouting again {} ms after it was healthy; {} requests all answered once",
        restarted.as_millis(),
        slowest_during.as_millis(),
        reroutes_again.as_millis(),
        fleet.sent.len()
    );
}

/// `docker restart` of a regional broker: its devices reconnect, the fog server's
/// session (and the broker's persistence) bring the region back; requests taken by the
/// broker are answered once, reservations kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_regional_broker_brings_its_region_back() {
    let mut city = City::start().await.unwrap();
    let id = city.station_id("north", 0).unwrap();
    city.station("north", &id, (-12.9, -38.6), 4, 0, 0)
        .await
        .unwrap();
    let at = (-12.901, -38.6);
    let mut fleet = load(&city, "north", "rr", at).await;
    let first = fleet
        .ask_until(
            "north assigns a vehicle",
            Duration::from_secs(20),
            RecommendationStatus::Assigned,
        )
        .await
        .unwrap();
    fleet.settle(Duration::from_secs(5)).await.unwrap();
    let reservation = first.reservation_id.unwrap();

    let broker = city.project.container("broker-north").unwrap();
    let started = Instant::now();
    docker(&["restart", "-t", "10", &broker]).unwrap();
    // A new device connection once the broker takes them, then the region answers.
    let client = testkit::wait_until(
        "broker-north takes connections again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { city.fleet("north", "fleet-test-rr2").await.ok() },
    )
    .await
    .unwrap();
    let mut fleet = Load::new(client, "north", "rr2", at);
    let (r, _) = fleet.ask(Duration::from_secs(30)).await.unwrap();
    let answering = started.elapsed();
    assert_eq!(r.status, RecommendationStatus::Assigned, "{r:?}");
    fleet.run_for(Duration::from_secs(2), EVERY).await;
    fleet.settle(Duration::from_secs(10)).await.unwrap();
    let after = city.reservations("north").await.unwrap();
    assert!(
        after
            .iter()
            .any(|r| r["reservation_id"] == reservation.as_str())
    );
    println!(
        "docker restart broker-north: the region answers again {} ms after the restart began; {} requests after it all answered once; reservation kept",
        answering.as_millis(),
        fleet.sent.len()
    );
}

/// `docker pause` of central: hung, not dead (the TCP connections stay open). Saturated
/// requests are still answered within the bound, each once; after `unpause` reroutes
/// resume.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_central_does_not_hold_saturated_requests() {
    let mut city = City::start().await.unwrap();
    city.saturate_north().await.unwrap();
    let mut fleet = load(&city, "north", "pause", NORTH_VEHICLE).await;
    let central = city.project.container("central").unwrap();
    docker(&["pause", &central]).unwrap();
    let paused = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut alone = 0;
    while paused.elapsed() < Duration::from_secs(10) {
        let (r, took) = fleet.ask(Duration::from_secs(10)).await.unwrap();
        slowest = slowest.max(took);
        if r.status == RecommendationStatus::Assigned {
            alone += 1;
        }
    }
    docker(&["unpause", &central]).unwrap();
    assert!(alone > 0, "no saturated request answered by north alone");
    assert!(slowest < BOUND, "a saturated request took {slowest:?}");
    let unpaused = Instant::now();
    fleet
        .ask_until(
            "north reroutes again",
            Duration::from_secs(30),
            RecommendationStatus::Rerouted,
        )
        .await
        .unwrap();
    let again = unpaused.elapsed();
    fleet.settle(Duration::from_secs(10)).await.unwrap();
    println!(
        "docker pause central 10 s: {} saturated requests answered once, slowest {} ms; rerouting again {} ms after unpause",
        fleet.sent.len(),
        slowest.as_millis(),
        again.as_millis()
    );
}

/// A rolling replacement of a fog server: the new container starts (same service: same
/// client id, same volume) before the old one stops. The new one stands by (healthy,
/// not ready) while the old one holds the region's lease; stopped, the old one answers
/// what it took from its session, hands over and releases the lease; the new one
/// takes over the session and the journal. No fight over the client id, and every
/// request sent throughout is answered exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_replacement_of_a_fog_container_loses_nothing() {
    let mut city = City::start().await.unwrap();
    let id = city.station_id("north", 0).unwrap();
    city.station("north", &id, (-12.9, -38.6), 40, 0, 0)
        .await
        .unwrap();
    let at = (-12.901, -38.6);
    let mut fleet = load(&city, "north", "roll", at).await;
    fleet
        .ask_until(
            "north assigns a vehicle",
            Duration::from_secs(20),
            RecommendationStatus::Assigned,
        )
        .await
        .unwrap();
    let old = city.project.container("fog-north").unwrap();
    let next = format!("{}-fog-north-next", city.project.name);
    let started = Instant::now();
    city.project
        .compose(&["run", "-d", "--no-deps", "--name", &next, "fog-north"])
        .unwrap();
    // Until the new one is healthy both run; then the old one stops (SIGTERM).
    while docker(&["inspect", "-f", "{{.State.Health.Status}}", &next])
        .is_ok_and(|h| h.trim() != "healthy")
        && started.elapsed() < Duration::from_secs(60)
    {
        fleet.send().await;
        fleet.pump(EVERY).await;
    }
    let overlap = started.elapsed();
    let stop = {
        let old = old.clone();
        tokio::task::spawn_blocking(move || docker(&["stop", "-t", "15", &old]))
    };
    while !stop.is_finished() {
        fleet.send().await;
        fleet.pump(EVERY).await;
    }
    stop.await.unwrap().unwrap();
    let stopped = started.elapsed();
    fleet.run_for(Duration::from_secs(3), EVERY).await;
    let slowest = fleet.settle(Duration::from_secs(15)).await.unwrap();
    let served: Vec<_> = fleet
        .answers
        .values()
        .filter_map(|a| a[0].1.served_by.clone())
        .collect();
    assert!(served.iter().all(|s| s == "north"));
    let (r, _) = fleet.ask(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.status, RecommendationStatus::Assigned, "{r:?}");
    let (old_log, new_log) = (
        container_logs(&old).unwrap(),
        container_logs(&next).unwrap(),
    );
    docker(&["rm", "-f", &next]).unwrap();
    assert!(
        new_log.contains("another instance holds the lease: standing by"),
        "{new_log}"
    );
    assert!(old_log.contains("handed over: lease released"), "{old_log}");
    for log in [&old_log, &new_log] {
        assert!(
            !log.contains("taken over"),
            "a fight over the client id:\n{log}"
        );
    }
    println!(
        "rolling replacement of fog-north: the new one healthy (standing by) after {} ms, the old one stopped (handed over) after {} ms; {} requests, every one answered once; slowest {} ms",
        overlap.as_millis(),
        stopped.as_millis(),
        fleet.sent.len(),
        slowest.as_millis()
    );
}
