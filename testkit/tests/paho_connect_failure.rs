//! Regression test, in its own binary because a failure hangs every paho client in the
//! process: paho-mqtt 0.14 deadlocks (global C mutex taken twice) when the last clone
//! of a client is dropped by the connect token's callback. `TestClient::connect` makes
//! sure that never happens, also when the connect fails.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::Result;
use testkit::{Mosquitto, MosquittoConfig, TestClient, free_port};

#[test]
fn failed_connects_do_not_deadlock_paho() {
    let (done, finished) = mpsc::channel();
    // A deadlock blocks inside a C call, where no tokio timeout can fire: watch from here.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        done.send(runtime.block_on(connect_refused_then_work()))
            .ok();
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("paho clients deadlocked after failed connects")
        .expect("test body");
}

async fn connect_refused_then_work() -> Result<()> {
    let broker = Mosquitto::start(MosquittoConfig::new())?;
    // Connected throughout, as in real tests. (It also keeps paho's threads running: when
    // the last client goes, paho stops them, which takes up to a second per client.)
    let mut anchor = TestClient::connect(&broker.url(), "anchor").await?;
    anchor.subscribe("ping", 1).await?;

    let refused = format!("tcp://127.0.0.1:{}", free_port()?);
    for i in 0..300 {
        let attempt = TestClient::connect(&refused, &format!("refused-{i}")).await;
        assert!(attempt.is_err(), "connected to a closed port?");
    }
    // Connect and drop right away: the same race on the success path.
    for i in 0..300 {
        drop(TestClient::connect(&broker.url(), &format!("brief-{i}")).await?);
    }
    anchor.publish("ping", "pong", 1, false).await?;
    anchor.wait_for("ping", Duration::from_secs(10)).await?;
    Ok(())
}
