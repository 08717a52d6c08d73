//! The delay proxy (`launcher::delay`): measured round trips over a real socket pair
//! match the configured latency; bytes keep their order under jitter; a bandwidth cap
//! paces a transfer; and MQTT passes through untouched both ways (paho clients, a real
//! Mosquitto behind the proxy).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use launcher::delay::{Delay, DelayProxy, Path};
use testkit::{Mosquitto, MosquittoConfig, TestClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A TCP echo server on a free loopback port.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

fn proxy(upstream: SocketAddr, delay: Delay) -> DelayProxy {
    DelayProxy::start("127.0.0.1:0".parse().unwrap(), upstream, delay, 1).unwrap()
}

/// Round trips of one byte, ms.
async fn ping(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8]).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i as u8);
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_through_the_proxy_takes_the_configured_latency() {
    let echo = echo_server().await;
    let direct = median(ping(echo, 20).await);
    // 15 ms up, 25 ms down: 40 ms round trip.
    let delay = Delay {
        up: Path::new(ms(15), Duration::ZERO),
        down: Path::new(ms(25), Duration::ZERO),
    };
    let p = proxy(echo, delay);
    let rtts = ping(p.addr(), 30).await;
    // Never faster than configured.
    assert!(rtts.iter().all(|r| *r >= 40.0), "{rtts:?}");
    // Above it: the direct round trip and the wake-ups of the proxy's tasks, which a
    // loaded machine (tests in parallel) delays by a few ms more. The best of 30 shows
    // what the proxy itself adds; the median, what it adds under that load.
    let best = rtts.iter().copied().fold(f64::MAX, f64::min);
    let m = median(rtts.clone());
    println!("best {best:.3} ms, median {m:.3} ms: {rtts:?}");
    assert!(
        best <= 42.5 + direct,
        "best {best:.2} ms for 40 ms configured (direct {direct:.3} ms): {rtts:?}"
    );
    assert!(m <= 50.0, "median {m:.2} ms for 40 ms configured: {rtts:?}");
    assert_eq!(
        p.counters()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        p.counters()
            .bytes_up
            .load(std::sync::atomic::Ordering::Relaxed),
        30
    );
    p.stop().await;

    // Jitter: round trips spread over latency ± jitter each way.
    let p = proxy(echo, Delay::symmetric(ms(40), ms(8), None));
    let rtts = ping(p.addr(), 60).await;
    let m = median(rtts.clone());
    // 40 ms ± up to 16 ms; the load of parallel tests adds to it (see above).
    assert!((36.0..=50.0).contains(&m), "median {m:.2}: {rtts:?}");
    let (lo, hi) = rtts
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    assert!(lo >= 24.0 && hi <= 90.0, "{rtts:?}");
    assert!(hi - lo > 4.0, "jitter makes round trips vary: {rtts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_never_reorders_the_bytes_of_a_stream() {
    let echo = echo_server().await;
    // Jitter as large as the latency, chunks written back to back.
    let p = proxy(echo, Delay::symmetric(ms(20), ms(10), None));
    let s = TcpStream::connect(p.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let n: u32 = 5000;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            wr.write_all(&i.to_be_bytes()).await.unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(ms(1)).await; // many separate chunks
            }
        }
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got))
        .await
        .expect("the echo ends after the stream ends")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), n as usize * 4);
    for (i, w) in got.chunks(4).enumerate() {
        assert_eq!(
            u32::from_be_bytes(w.try_into().unwrap()),
            i as u32,
            "at {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_cap_paces_a_transfer() {
    let echo = echo_server().await;
    // 2 Mbit/s up, unlimited down, 1 ms each way: 100 kB take ~0.4 s to go up.
    let delay = Delay {
        up: Path {
            latency: ms(1),
            jitter: Duration::ZERO,
            bandwidth_bps: Some(2_000_000),
        },
        down: Path::new(ms(1), Duration::ZERO),
    };
    let p = proxy(echo, delay);
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let t = Instant::now();
    tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, data);
    assert!(
        (0.39..1.5).contains(&secs),
        "100 kB at 2 Mbit/s took {secs:.3} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passes_through_untouched_both_ways() {
    testkit::init_tracing();
    let broker = Mosquitto::start(MosquittoConfig::new()).unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    // 30 ms round trip, ±3 ms each way.
    let p = proxy(upstream, Delay::symmetric(ms(30), ms(3), None));

    // One client behind the proxy, one directly on the broker.
    let mut far = TestClient::connect(&p.url(), "far").await.unwrap();
    let mut near = TestClient::connect(&broker.url(), "near").await.unwrap();
    far.subscribe("down/#", 1).await.unwrap();
    near.subscribe("up/#", 2).await.unwrap();

    // Payloads of every byte value and of several sizes (one beyond a proxy chunk).
    let payloads: Vec<Vec<u8>> = [0usize, 1, 255, 4096, 70_000]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 % 256) as u8).collect())
        .collect();
    for qos in [0, 1, 2] {
        for (i, payload) in payloads.iter().enumerate() {
            let t = Instant::now();
            far.publish(&format!("up/{qos}/{i}"), payload.clone(), qos, false)
                .await
                .unwrap();
            if qos > 0 {
                // The acknowledgement came back through the proxy.
                assert!(t.elapsed() >= ms(24), "qos {qos}: {:?}", t.elapsed());
            }
            let m = near
                .wait_for(&format!("up/{qos}/{i}"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(m.payload(), &payload[..], "up qos {qos} payload {i}");
            assert_eq!(m.qos(), qos.into());

            near.publish(&format!("down/{qos}/{i}"), payload.clone(), qos, false)
                .await
                .unwrap();
            let m = far
                .wait_for(&format!("down/{qos}/{i}"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(m.payload(), &payload[..], "down qos {qos} payload {i}");
            assert_eq!(m.qos(), qos.min(1).into());
        }
    }
    // A retained message set behind the proxy is there for a new direct client.
    far.publish("up/retained", "kept", 1, true).await.unwrap();
    let mut late = TestClient::connect(&broker.url(), "late").await.unwrap();
    late.subscribe("up/retained", 1).await.unwrap();
    let m = late
        .wait_for("up/retained", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.payload(), b"kept");
    assert!(m.retained());
    far.disconnect().await.unwrap();
    near.disconnect().await.unwrap();
    late.disconnect().await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn stopping_the_proxy_closes_its_connections() {
    let echo = echo_server().await;
    let p = proxy(echo, Delay::symmetric(ms(2), Duration::ZERO, None));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let addr = p.addr();
    p.stop().await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed at once");
    assert!(n.is_err() || rest.is_empty());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
}
