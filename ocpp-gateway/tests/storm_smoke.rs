//! A small connect storm (the 1,000-charger figures come from `cargo bench -p
//! ocpp-gateway --bench storm`): every charge point appears in the fog, and a
//! reservation round trip goes through one of them.

mod common;

use common::{Env, REGION, storm, storm_chargers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_charge_points_at_once_all_appear_and_take_reservations() {
    let env = Env::start(&storm_chargers("ST", 50)).await.unwrap();
    let figures = storm(&env.url, &env.fog, "ST", 50).await.unwrap();
    assert_eq!(figures.latencies_ms.len(), 50);
    assert_eq!(env.gateway().shared.connected_chargers(), 50);
    let rtts = common::reserve_round_trips(&env.broker.url(), 3)
        .await
        .unwrap();
    assert_eq!(rtts.len(), 3);
    assert_eq!(REGION, env.fog.region);
    drop(figures);
    env.stop().await.unwrap();
}
