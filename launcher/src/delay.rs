//! A TCP delay proxy: what a real network adds between a device and its broker, on
//! loopback (these machines have no kernel `netem`).
//!
//! [`DelayProxy::start`] listens on a local address and forwards every connection to
//! an upstream address. Each direction of each connection goes through its own
//! [`Path`]: a fixed one-way `latency`, plus `jitter` (uniform in `±jitter`, never
//! below zero), plus, with a `bandwidth` cap, the time the bytes take to pass a link of
//! that rate (a chunk waits for the chunks before it). Bytes of one TCP stream are never
//! reordered: a chunk is written no earlier than its own deadline and never before the
//! chunk read before it — as on a real path, where TCP hides reordering from the
//! application behind the same kind of head-of-line wait.
//!
//! Each direction is a reader that stamps every chunk with its deadline and a writer
//! that waits for it (and writes the chunks behind it that are due by then with it, in
//! one write); the queue between them is bounded (backpressure reaches the
//! sender as on a full path). End of stream is passed on after the data before it;
//! an error on either side closes both. `TCP_NODELAY` is set on both sockets, so the
//! proxy adds no Nagle delay of its own. The proxies run on a tokio runtime of their
//! own, so a caller whose runtime threads block (paho) cannot stall them.
//!
//! Precision: tokio's timers tick in milliseconds (rounded up, ~1.5 ms late on average
//! here), too coarse for an edge path of a few ms. A chunk therefore sleeps on tokio's
//! timer until 3 ms before its deadline and then on a [`precise`] timer thread
//! (nanosecond sleeps), so it leaves no earlier than its deadline and, measured here,
//! 0.2–0.4 ms after it (the wake-up of the tokio task).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use std::time::Instant;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// One direction of a network path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Path {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Each chunk's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// Link rate in bits per second (`None`: unlimited).
    pub bandwidth_bps: Option<u64>,
}

impl Path {
    /// `latency` one way, `jitter` either side of it, no bandwidth cap.
    pub fn new(latency: Duration, jitter: Duration) -> Self {
        Self {
            latency,
            jitter,
            bandwidth_bps: None,
        }
    }

    /// Whether this path adds nothing (no proxy needed).
    pub fn is_zero(&self) -> bool {
        self.latency.is_zero() && self.jitter.is_zero() && self.bandwidth_bps.is_none()
    }
}

/// Both directions of a network path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Delay {
    /// Client → upstream (device → broker).
    pub up: Path,
    /// Upstream → client.
    pub down: Path,
}

impl Delay {
    /// The same path both ways: `rtt / 2` each way, `jitter` either side, `bandwidth`
    /// (bits per second) each way.
    pub fn symmetric(rtt: Duration, jitter: Duration, bandwidth_bps: Option<u64>) -> Self {
        let path = Path {
            latency: rtt / 2,
            jitter,
            bandwidth_bps,
        };
        Self {
            up: path,
            down: path,
        }
    }

    /// Whether neither direction adds anything.
    pub fn is_zero(&self) -> bool {
        self.up.is_zero() && self.down.is_zero()
    }

    /// The configured round trip (both latencies; jitter averages out).
    pub fn rtt(&self) -> Duration {
        self.up.latency + self.down.latency
    }
}

/// Bytes and connections that went through a proxy.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A running delay proxy. Dropping it (or [`stop`](Self::stop)) closes the listener and
/// every connection through it.
pub struct DelayProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    delay: Delay,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Chunks in flight per direction before the reader stops reading (backpressure).
const QUEUE_CHUNKS: usize = 4096;
/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;

impl DelayProxy {
    /// Listens on `listen` (port 0: a free one) and forwards every connection to
    /// `upstream` through `delay`. `seed` makes the jitter of each connection a fixed
    /// sequence.
    ///
    /// The proxies run on a runtime of their own (two threads, started with the first
    /// proxy), not the caller's: a client library that blocks the caller's runtime
    /// threads — paho's C client takes a process-wide lock that its send thread holds
    /// while it writes to a socket — must not stop the proxy from reading that socket
    /// (both would wait for each other for ever).
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Delay,
        seed: u64,
    ) -> std::io::Result<Self> {
        let runtime = proxy_runtime()?;
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shutdown = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = runtime.spawn(accept_loop(
            listener,
            upstream,
            delay,
            seed,
            counters.clone(),
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            upstream,
            delay,
            counters,
            shutdown,
            task: Some(task),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tcp://addr` (for MQTT clients).
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn delay(&self) -> Delay {
        self.delay
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Closes the listener and every connection, and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The runtime every delay proxy of the process runs on.
fn proxy_runtime() -> std::io::Result<tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("delay-proxy")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
        .map_err(|e| std::io::Error::other(format!("starting the delay proxies' runtime: {e}")))
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Delay,
    seed: u64,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "delay proxy: accept failed");
                continue;
            }
        };
        n += 1;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        let conn_seed = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        connections.spawn(async move {
            if let Err(e) = connection(client, upstream, delay, conn_seed, &counters).await {
                debug!(%peer, error = %e, "delay proxy: connection ended");
            }
        });
    }
    // Dropping the set aborts every connection: both sockets close.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Delay,
    seed: u64,
    counters: &Counters,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    tokio::try_join!(
        pipe(client_rd, server_wr, delay.up, seed, &counters.bytes_up),
        pipe(
            server_rd,
            client_wr,
            delay.down,
            !seed,
            &counters.bytes_down
        ),
    )?;
    Ok(())
}

/// Carries one direction: reads chunks, stamps each with its deadline, writes it then.
async fn pipe(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    path: Path,
    seed: u64,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let mut schedule = Schedule::new(path, seed);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(()); // end of stream: tx drops
            }
            let deadline = schedule.deadline(Instant::now(), n);
            if tx.send((deadline, buf[..n].to_vec())).await.is_err() {
                return Ok(()); // the writer is gone (it failed: its error is returned)
            }
        }
    };
    let writer = async move {
        let mut batch: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut next = rx.recv().await;
        while let Some((deadline, chunk)) = next.take() {
            precise::sleep_until(deadline).await;
            // The chunks behind it that are due by now go out in the same write: one
            // wake-up and one system call for a burst of small messages.
            let now = Instant::now();
            batch.clear();
            batch.extend_from_slice(&chunk);
            while batch.len() < CHUNK {
                match rx.try_recv() {
                    Ok((d, c)) if d <= now => batch.extend_from_slice(&c),
                    Ok(later) => {
                        next = Some(later);
                        break;
                    }
                    Err(_) => break,
                }
            }
            wr.write_all(&batch).await?;
            bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if next.is_none() {
                next = rx.recv().await;
            }
        }
        // Everything before the end of stream is delivered: pass the end on.
        wr.shutdown().await
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// When each chunk of one direction is due.
struct Schedule {
    path: Path,
    rng: rand::rngs::StdRng,
    /// When the (bandwidth-capped) link is free again.
    link_free: Instant,
    /// The previous chunk's deadline: no chunk overtakes it.
    last: Instant,
}

impl Schedule {
    fn new(path: Path, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            path,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            link_free: now,
            last: now,
        }
    }

    /// The deadline of a chunk of `len` bytes read at `now`.
    fn deadline(&mut self, now: Instant, len: usize) -> Instant {
        let sent = match self.path.bandwidth_bps {
            Some(bps) if bps > 0 => {
                let start = self.link_free.max(now);
                let on_wire = Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
                self.link_free = start + on_wire;
                self.link_free
            }
            _ => now,
        };
        let jitter = self.path.jitter.as_secs_f64();
        let delay = if jitter > 0.0 {
            let d = self.path.latency.as_secs_f64() + self.rng.random_range(-jitter..=jitter);
            Duration::from_secs_f64(d.max(0.0))
        } else {
            self.path.latency
        };
        let deadline = (sent + delay).max(self.last);
        self.last = deadline;
        deadline
    }
}

/// Sub-millisecond waits: a thread that sleeps until the earliest deadline asked of it
/// (condition-variable timeouts are nanosecond sleeps on Linux) and wakes its waiters.
mod precise {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::OnceLock;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::{Duration, Instant};

    use tokio::sync::oneshot;

    struct Entry {
        at: Instant,
        seq: u64,
        wake: oneshot::Sender<()>,
    }

    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            (self.at, self.seq) == (other.at, other.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.at, self.seq).cmp(&(other.at, other.seq))
        }
    }

    type Request = (Instant, oneshot::Sender<()>);

    fn timer() -> &'static mpsc::Sender<Request> {
        static TIMER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
        TIMER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("delay-proxy-timer".into())
                .spawn(move || run(rx))
                .expect("spawning the delay proxy's timer thread");
            tx
        })
    }

    fn run(rx: mpsc::Receiver<Request>) {
        let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
        let mut seq = 0u64;
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|e| e.0.at <= now) {
                if let Some(Reverse(e)) = heap.pop() {
                    let _ = e.wake.send(());
                }
            }
            let next = match heap.peek() {
                Some(e) => rx.recv_timeout(e.0.at - now),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok((at, wake)) => {
                    seq += 1;
                    heap.push(Reverse(Entry { at, seq, wake }));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Waits until `deadline`: on tokio's timer while it is more than 3 ms away, then on
    /// the timer thread.
    pub async fn sleep_until(deadline: Instant) {
        let coarse = Duration::from_millis(3);
        if deadline.saturating_duration_since(Instant::now()) > coarse + Duration::from_millis(1) {
            tokio::time::sleep_until((deadline - coarse).into()).await;
        }
        if deadline > Instant::now() {
            let (tx, rx) = oneshot::channel();
            if timer().send((deadline, tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_go_back_even_with_jitter_larger_than_the_gaps() {
        let path = Path::new(Duration::from_millis(10), Duration::from_millis(8));
        let mut s = Schedule::new(path, 1);
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..10_000u64 {
            let d = s.deadline(t0 + Duration::from_micros(i * 100), 100);
            assert!(d >= last, "chunk {i} would overtake the one before");
            assert!(d >= t0 + Duration::from_micros(i * 100) + Duration::from_millis(2));
            last = d;
        }
    }

    #[test]
    fn jitter_spreads_around_the_latency_and_the_bandwidth_cap_paces_chunks() {
        let path = Path::new(Duration::from_millis(50), Duration::from_millis(10));
        let mut s = Schedule::new(path, 7);
        let t0 = Instant::now();
        // Chunks 100 ms apart: never held back by the one before.
        let delays: Vec<f64> = (0..2000u64)
            .map(|i| {
                let at = t0 + Duration::from_millis(i * 100);
                (s.deadline(at, 10) - at).as_secs_f64() * 1000.0
            })
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!((mean - 50.0).abs() < 1.0, "mean {mean}");
        assert!(delays.iter().all(|d| (40.0..=60.0).contains(d)));
        assert!(delays.iter().any(|d| *d < 45.0) && delays.iter().any(|d| *d > 55.0));

        // 1 Mbit/s: 10 chunks of 12,500 bytes sent at once take 100 ms each to pass.
        let path = Path {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            bandwidth_bps: Some(1_000_000),
        };
        let mut s = Schedule::new(path, 0);
        let t0 = Instant::now();
        let last = (0..10).map(|_| s.deadline(t0, 12_500)).last().unwrap();
        let ms = (last - t0).as_secs_f64() * 1000.0;
        assert!((ms - 1005.0).abs() < 0.01, "{ms}");
    }
}
