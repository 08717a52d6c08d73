//! A broker that stops answering without closing the connection (its host gone, the
//! process stopped, a half-open TCP connection): the link notices within twice its
//! keep-alive and reconnects once the broker is back.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use serverkit::link::{Link, LinkSettings};
use testkit::{Mosquitto, MosquittoConfig, wait_until};
use tokio_util::sync::CancellationToken;

const KEEP_ALIVE: Duration = Duration::from_secs(2);

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_noticed_within_twice_the_keep_alive() -> Result<()> {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new())?;
    let settings = LinkSettings {
        url: broker.url(),
        client_id: "half-open".into(),
        persistent: true,
        keep_alive: KEEP_ALIVE,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let mut link = Link::connect(&settings, vec![("t/echo".into(), 1)], &shutdown).await?;
    let status = link.status();
    let publisher = link.publisher();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            while let Some(msg) = link.next(&shutdown).await {
                let _ = tx.send(msg.payload().to_vec());
            }
        }
    });
    let pid = broker.pid().expect("running");

    let mut detections = Vec::new();
    for round in 0..2 {
        // The broker freezes: the TCP connection stays open, nothing answers.
        signal(pid, "-STOP");
        let frozen = Instant::now();
        wait_until(
            "the link notices the silent broker",
            KEEP_ALIVE * 4,
            Duration::from_millis(10),
            || async { !status.is_connected() },
        )
        .await?;
        let detected = frozen.elapsed();
        detections.push(detected);
        // Published while the broker is away: delivered once it is back.
        let payload = format!("after-{round}");
        publisher.publish("t/echo", payload.as_bytes(), 1, false);
        signal(pid, "-CONT");
        let thawed = Instant::now();
        wait_until(
            "the link reconnects",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || async { status.is_connected() },
        )
        .await?;
        let back = thawed.elapsed();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
        assert_eq!(got.as_deref(), Some(payload.as_bytes()));
        println!(
            "keep-alive {KEEP_ALIVE:?}: silent broker noticed after {detected:.2?}, reconnected {back:.2?} after it answered again"
        );
    }
    for d in detections {
        assert!(d <= KEEP_ALIVE * 2, "noticed after {d:?}");
    }
    shutdown.cancel();
    reader.await?;
    Ok(())
}
