//! Soak of the MQTT link against a real Mosquitto: hundreds of forced disconnects of
//! three kinds — broker restart, broker SIGKILL with QoS 1 messages in flight, takeover
//! by another client with the same client id — and after them memory, threads and file
//! descriptors are where they were after the first few, every QoS 1 message published
//! meanwhile arrived, and the link still works. Its own test binary: it reads this
//! process's `/proc/self/status`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serverkit::link::{Link, LinkSettings};
use testkit::{Mosquitto, MosquittoConfig, wait_until};
use tokio_util::sync::CancellationToken;

const RESTARTS: usize = 170;
const KILLS: usize = 165;
const TAKEOVERS: usize = 165;
/// Disconnects after which memory is measured the first time.
const WARM_UP: usize = 20;
/// Messages published right before each disconnect (in flight when it happens) and
/// while the link is down.
const PER_PHASE: usize = 3;
const ECHO: &str = "soak/echo";

#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kb: u64,
    threads: u64,
    fds: usize,
}

fn usage() -> Result<Usage> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in /proc/self/status"))
    };
    Ok(Usage {
        rss_kb: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds: std::fs::read_dir("/proc/self/fd")?.count(),
    })
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Restart,
    Kill,
    Takeover,
}

/// Takes the client id over, as a second instance would: a bare MQTT 3.1.1 CONNECT
/// with that id (clean session), its CONNACK read, then the socket closed.
fn take_over(port: u16, client_id: &str) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut packet = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    packet.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    packet.extend_from_slice(client_id.as_bytes());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&[0x10, packet.len() as u8])?;
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    anyhow::ensure!(connack == [0x20, 0x02, 0x00, 0x00], "CONNACK {connack:?}");
    Ok(())
}

fn signal(broker: &Mosquitto, sig: &str) -> Result<()> {
    let pid = broker.pid().context("broker running")?;
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_disconnects_leak_nothing_and_lose_no_message() -> Result<()> {
    testkit::init_tracing();
    let mut broker = Mosquitto::start(MosquittoConfig::new())?;
    let shutdown = CancellationToken::new();
    // The soaked link publishes; a second one, as persistent, receives (and goes
    // through every restart and kill too).
    let settings = LinkSettings {
        url: broker.url(),
        client_id: "soaked".into(),
        persistent: true,
        // Takeovers here are the test's own, one after another: no long back-off.
        max_takeover_backoff: Duration::from_millis(30),
        ..Default::default()
    };
    let link = Link::connect(&settings, Vec::new(), &shutdown).await?;
    let receiver_settings = LinkSettings {
        client_id: "receiver".into(),
        ..settings.clone()
    };
    let mut receiver =
        Link::connect(&receiver_settings, vec![(ECHO.to_owned(), 1)], &shutdown).await?;
    let status = link.status();
    let receiver_status = receiver.status();
    let publisher = link.publisher();
    let received: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let reader = tokio::spawn({
        let received = received.clone();
        let shutdown = shutdown.clone();
        async move {
            while let Some(msg) = receiver.next(&shutdown).await {
                if let Ok(id) = std::str::from_utf8(msg.payload()).unwrap_or("").parse() {
                    received.lock().unwrap().insert(id);
                }
            }
            receiver.disconnect().await;
        }
    });
    // The soaked link's own loop (it receives nothing, but notices losses there).
    let driver = tokio::spawn({
        let shutdown = shutdown.clone();
        let mut link = link;
        async move {
            while link.next(&shutdown).await.is_some() {}
            link.disconnect().await;
        }
    });

    // Interleaved, so that the warm-up sees every kind.
    let faults: Vec<Fault> = (0..RESTARTS + KILLS + TAKEOVERS)
        .map(|i| match i % 3 {
            0 if i / 3 < RESTARTS => Fault::Restart,
            1 if i / 3 < KILLS => Fault::Kill,
            _ => Fault::Takeover,
        })
        .collect();
    let started = Instant::now();
    let mut next_id = 0u64;
    let mut publish = |n: usize| {
        for _ in 0..n {
            publisher.publish(ECHO, next_id.to_string().as_bytes(), 1, false);
            next_id += 1;
        }
        next_id
    };
    let mut baseline = None;
    let mut sent = 0;
    for (i, fault) in faults.iter().enumerate() {
        let reconnects = status.reconnects();
        let receiver_reconnects = receiver_status.reconnects();
        match fault {
            Fault::Restart => {
                publish(PER_PHASE);
                broker.stop()?;
                publish(PER_PHASE); // while down: the outbox
                broker.restart()?;
            }
            Fault::Kill => {
                // Stopped first, so that what is published next is in flight for
                // sure (written, never acknowledged) when the broker dies.
                signal(&broker, "-STOP")?;
                publish(PER_PHASE);
                broker.kill()?;
                publish(PER_PHASE);
                broker.restart()?;
            }
            Fault::Takeover => {
                publish(PER_PHASE);
                take_over(broker.port(), "soaked")?;
                publish(PER_PHASE);
            }
        }
        let restarted = !matches!(fault, Fault::Takeover);
        wait_until(
            "the links reconnect",
            Duration::from_secs(20),
            Duration::from_millis(2),
            || async {
                status.reconnects() > reconnects
                    && status.is_connected()
                    && (!restarted || receiver_status.reconnects() > receiver_reconnects)
                    && receiver_status.is_connected()
            },
        )
        .await
        .with_context(|| format!("after fault {i} ({fault:?})"))?;
        // Everything published so far arrives before the next fault.
        sent = publish(0);
        wait_until(
            "what was published arrives",
            Duration::from_secs(20),
            Duration::from_millis(2),
            || async { received.lock().unwrap().len() as u64 == sent },
        )
        .await
        .map_err(|e| {
            let got = received.lock().unwrap();
            let missing: Vec<u64> = (0..sent).filter(|id| !got.contains(id)).take(20).collect();
            e.context(format!(
                "after fault {i} ({fault:?}): {} of {sent} arrived; first missing: {missing:?}",
                got.len()
            ))
        })?;
        if i + 1 == WARM_UP {
            baseline = Some(usage()?);
        }
    }
    let elapsed = started.elapsed();
    // And the link still works.
    publisher.publish(ECHO, b"999999999", 1, false);
    wait_until(
        "a message after the soak arrives",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async { received.lock().unwrap().contains(&999_999_999) },
    )
    .await?;

    let before = baseline.context("warm-up done")?;
    let after = usage()?;
    println!(
        "{} disconnects ({RESTARTS} restarts, {KILLS} kills with QoS 1 in flight, {TAKEOVERS} takeovers) in {elapsed:.1?}: \
         {} reconnects, {} takeovers seen, {sent} messages all delivered; \
         after {WARM_UP}: {before:?}; after all: {after:?}",
        faults.len(),
        status.reconnects(),
        status.takeovers(),
    );
    assert!(
        status.takeovers() as usize >= TAKEOVERS,
        "takeovers detected: {}",
        status.takeovers()
    );
    assert!(
        after.rss_kb <= before.rss_kb + 8 * 1024,
        "RSS grew from {} kB to {} kB",
        before.rss_kb,
        after.rss_kb
    );
    assert!(
        after.threads <= before.threads + 2,
        "threads: {before:?} -> {after:?}"
    );
    assert!(after.fds <= before.fds + 4, "fds: {before:?} -> {after:?}");
    shutdown.cancel();
    reader.await?;
    driver.await?;
    Ok(())
}
