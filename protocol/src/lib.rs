//! The fogcharge wire contract, shared by every binary. No I/O lives here.
//!
//! - [`topics`]: every MQTT topic string — builders, subscription filters and the one
//!   parser ([`Topic::parse`]).
//! - [`messages`]: the device-facing messages of protocol v1 (station status, charge
//!   request, recommendation, reservation update, telemetry) as serde types.
//! - [`validate`]: the rules every message obeys, and [`decode`], which turns a payload
//!   into a checked message or a [`ProtocolError`] that says what is wrong.
//! - [`fog`]: fog ↔ central messages and topics (aggregates, reroutes, handoffs),
//!   carried over the Mosquitto bridges.
//! - [`incoming`]: everything a fog server receives, parsed in one place
//!   ([`Incoming::parse`]: topic and payload in, a checked message or an error out).
//! - [`geo`]: great-circle distances and the 3-D unit vectors the station index stores.
//! - [`error`]: [`ProtocolError`], what is wrong with a topic or a payload.
//! - [`api`]: the JSON of central's HTTP API (`GET /api/regions`), for its clients.

pub mod api;
pub mod error;
pub mod fog;
pub mod geo;
pub mod incoming;
pub mod messages;
pub mod topics;
pub mod validate;

pub use error::ProtocolError;
pub use incoming::{Incoming, IncomingError, IncomingKind, Refused};
pub use messages::*;
pub use topics::{StationChannel, Topic, VehicleChannel};
pub use validate::{Validate, decode, decode_at_most, encode, validate_id};

/// The only protocol version this crate speaks; every payload carries it as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Payloads larger than this are refused before any parsing.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Longest id (region, station, vehicle, request, reservation) the protocol accepts.
pub const MAX_ID_LEN: usize = 64;
