//! The JSON of central's HTTP API, for its clients as much as for central: the local
//! launcher, the test kit and the benchmarks read `GET /api/regions` as these types.

use serde::{Deserialize, Serialize};

use crate::fog::Aggregate;

/// A region as `GET /api/regions` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionView {
    pub id: String,
    /// The latest aggregate central holds from the region's fog server.
    pub aggregate: Aggregate,
    /// When central received it, ms on central's clock.
    pub received_ms: u64,
    /// How old its data is now, ms.
    pub data_age_ms: u64,
    /// Too old to be trusted (the fog server or its bridge is down).
    pub stale: bool,
    /// Over its wait limit: central moves vehicles out of it.
    pub saturated: bool,
}
