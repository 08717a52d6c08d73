//! Regression test, in its own binary because a failure hangs every paho client in the
//! process: a runtime shut down while links are connecting (first connect or reconnect)
//! drops their futures half-way. paho-mqtt 0.14 deadlocks if the connect token's
//! callback, which runs inside the C library's global lock, then drops the last clone
//! of the client (eclipse-paho/paho.mqtt.rust#239). Seen as a test process that hung
//! at the end of a test, after its brokers were gone.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serverkit::link::{Link, LinkSettings};
use testkit::{Mosquitto, MosquittoConfig, TestClient};
use tokio_util::sync::CancellationToken;

/// Longest wait for paho to give up a connect (its timeout in `Link` is 5 s).
const GIVE_UP_WITHIN: Duration = Duration::from_secs(20);

fn settings(url: &str, client_id: &str) -> LinkSettings {
    LinkSettings {
        url: url.to_owned(),
        client_id: client_id.to_owned(),
        persistent: false,
        username: None,
        password: None,
        will: None,
        ca_file: None,
        ..Default::default()
    }
}

#[test]
fn a_runtime_dropped_while_links_connect_does_not_deadlock_paho() {
    let (done, finished) = mpsc::channel();
    // A deadlock blocks inside a C call, where no tokio timeout can fire: watch from here.
    std::thread::spawn(move || {
        done.send(body()).ok();
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("paho clients deadlocked after a runtime dropped connecting links")
        .expect("test body");
}

fn body() -> Result<()> {
    let mut broker = Mosquitto::start(MosquittoConfig::new())?;
    let port = broker.port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    // Links connected to the broker, each waiting for messages.
    let links: Vec<Link> = runtime.block_on(async {
        let mut links = Vec::new();
        for i in 0..3 {
            let filter = format!("t/{i}");
            links.push(
                Link::connect(
                    &settings(&broker.url(), &format!("reconnecting-{i}")),
                    vec![(filter, 1)],
                    &shutdown,
                )
                .await?,
            );
        }
        anyhow::Ok(links)
    })?;
    for mut link in links {
        let shutdown = shutdown.clone();
        runtime.spawn(async move { while link.next(&shutdown).await.is_some() {} });
    }
    // The broker goes; in its place a listener that accepts and never answers, so the
    // links' reconnects stay in flight until paho's connect timeout.
    broker.kill()?;
    let silent = bind_when_free(port)?;
    // First connects in flight to the silent listener too.
    for i in 0..3 {
        let settings = settings(
            &format!("tcp://127.0.0.1:{port}"),
            &format!("connecting-{i}"),
        );
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            Link::connect(&settings, Vec::new(), &shutdown)
                .await
                .map(|_| ())
        });
    }
    let mut held: Vec<TcpStream> = Vec::new();
    silent.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 6 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of 6 connects reached the listener",
            held.len()
        );
        match silent.accept() {
            Ok((stream, _)) => held.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Every connect is in flight: the runtime goes, dropping the futures that await them.
    drop(runtime);
    // paho gives up on them at its connect timeout: it closes each socket and runs the
    // token's callback in the same turn, under its global lock (where the deadlock was).
    for mut stream in held {
        wait_closed(&mut stream)?;
    }

    // paho still works in this process.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let broker = Mosquitto::start(MosquittoConfig::new())?;
        let mut client = TestClient::connect(&broker.url(), "after").await?;
        client.subscribe("ping", 1).await?;
        client.publish("ping", "pong", 1, false).await?;
        client.wait_for("ping", Duration::from_secs(10)).await?;
        Ok(())
    })
}

/// Binds the port a killed broker held (its socket may linger for a moment).
fn bind_when_free(port: u16) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if Instant::now() < deadline => {
                eprintln!("port {port} still taken: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("binding port {port}")),
        }
    }
}

/// Waits until the client end of `stream` closes it (end of file or reset).
fn wait_closed(stream: &mut TcpStream) -> Result<()> {
    use std::io::Read as _;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(GIVE_UP_WITHIN))?;
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue, // the CONNECT packet
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("paho did not give up a connect within {GIVE_UP_WITHIN:?}")
                });
            }
        }
    }
}
