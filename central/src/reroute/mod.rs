//! Cross-region rerouting: how central decides where a vehicle from a saturated region
//! goes, and the handoff conversation that reserves it a slot there.
//!
//! # The decision
//!
//! An origin fog that cannot serve a vehicle well publishes a [`RerouteRequest`] on
//! `regions/{origin}/up/reroute`. Central then
//!
//! 1. **ranks the other regions** from their latest aggregates. A region is a
//!    candidate when it is not the origin, its data is fresh (not stale, see
//!    [`crate::regions`]), it is not saturated (its fog would refuse: judged by the
//!    wait limit its aggregate states), and one of the stations its aggregate lists as
//!    `best` is reachable. For every listed station the vehicle can reach (the cost
//!    model of the `cost_model` crate, the fogs' own):
//!
//!    ```text
//!    road km = great-circle km × road factor          (reachable if ≤ range × (1 − safety margin))
//!    total   = road km / avg speed                     (drive)
//!            + the station's predicted_wait_s          (wait, as its fog predicted it)
//!            + (target soc − soc at arrival) × battery / power_kw   (charge)
//!    ```
//!
//!    A region's estimate is the least total among its reachable listed stations (see
//!    [`cost_model::estimate`]). When the request carries `local_best_total_s`,
//!    only regions whose estimate beats it qualify: moving a vehicle to another region
//!    must save it time. Candidates are sorted by estimate, least first (ties by
//!    region id).
//!
//! 2. **asks them in turn**: publishes a [`Handoff`] (a fresh `handoff_id`:
//!    `h-{central's start, hex}-{n}`; `max_total_s` = the origin's
//!    `local_best_total_s`) on
//!    `regions/{target}/down/handoff` and waits for the [`HandoffReply`] with that id on
//!    `regions/{target}/up/handoff-reply`, for at most `--handoff-timeout-ms`. The
//!    target fog plans the vehicle with its full, current station data, and either
//!    reserves a slot (accepted, with a `rerouted` recommendation) or refuses. On a
//!    refusal or a timeout central asks the next candidate.
//!
//! 3. **stops** at the first acceptance, when the candidates run out, or when the
//!    request's `deadline_ms` (on the fogs' clock, which central shares through
//!    `--clock-speed`/`--clock-epoch-ms`) would be passed: a handoff is only sent
//!    while at least [`MIN_ATTEMPT`] is left before the deadline less
//!    [`REPLY_MARGIN`] (the time kept for the reply to reach the origin), and its wait
//!    is cut to fit.
//!
//! 4. **answers the origin** with a [`RerouteReply`] on
//!    `regions/{origin}/down/reroute-reply`: `ok = true` with the target's
//!    recommendation unchanged (the target made it, with its station and reservation;
//!    an `assigned` status is corrected to `rerouted`), or `ok = false` with a `reason`
//!    that says why — no other region has fresh data, no region in range, every region
//!    in range saturated, none beats the local best, all refused, timed out, deadline
//!    reached — and, in both cases, `tried`: the regions asked, in order.
//!
//! # Where it runs, and duplicates
//!
//! The conversation is a step of [`crate::core::CentralCore`], driven by the messages
//! it receives and the time passed in (the shared clock): a reroute request ranks the
//! candidates and sends the first handoff; a [`HandoffReply`] (matched by
//! `handoff_id`; one from another region than the one asked is refused, one that
//! nobody waits for — late, after a timeout — is counted and dropped, the target's
//! reservation then expires by itself) answers the origin or asks the next; a
//! handoff's timeout, at `tick`, asks the next or, when the deadline cut the wait,
//! answers. Many reroutes run at once without waiting for each other. A repeated
//! `reroute_id` from the same origin (a QoS 1 redelivery, a retry) never starts a
//! second reroute ([`Memory`]): while the first runs it is ignored, afterwards the
//! first reply is published again.
//!
//! # Limits
//!
//! Aggregates list only a region's best few stations (by wait), so the estimate can
//! miss a region whose good station is not listed, or rank a region by a station the
//! vehicle cannot reach while a nearer unlisted one would do; the target fog's own
//! plan is what the vehicle gets. Travel between regions uses the same road factor
//! and speed everywhere.
//!
//! [`RerouteRequest`]: protocol::fog::RerouteRequest
//! [`Handoff`]: protocol::fog::Handoff
//! [`HandoffReply`]: protocol::fog::HandoffReply
//! [`RerouteReply`]: protocol::fog::RerouteReply

use std::time::Duration;

mod candidates;
mod memory;

pub use candidates::{Candidate, HINT_HOLD, NoCandidate, candidates, open_station_distance_km};
pub use memory::{MEMORY_CAP, MEMORY_TTL, Memory, Seen};

/// Time kept, before a request's deadline, for the reply to reach the origin fog
/// (real time).
pub const REPLY_MARGIN: Duration = Duration::from_millis(25);

/// A handoff is only sent when at least this long (real time) is left to wait for
/// its reply.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(25);
