//! The one error type of the protocol: each variant says what is wrong with a payload
//! or a topic, in words fit to send back to the device in a `rejected` answer.

use std::fmt;

use thiserror::Error;

/// Why a payload or topic was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ProtocolError {
    #[error("payload is {size} bytes, over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },

    #[error("payload is not UTF-8 JSON of the expected shape: {0}")]
    Json(String),

    #[error("unsupported protocol version v={0} (this server speaks v=1)")]
    Version(u64),

    #[error("{field} {value:?} is not a valid id (1-64 characters of A-Z a-z 0-9 _ -)")]
    InvalidId { field: &'static str, value: String },

    #[error("{field} must be a finite number")]
    NotFinite { field: &'static str },

    #[error("{field} = {} is out of range {}", Num(*.value), Bounds(*.min, *.max))]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },

    #[error("occupied ({occupied}) exceeds chargers ({chargers})")]
    OccupiedExceedsChargers { occupied: u32, chargers: u32 },

    #[error("{field} is required when state is {state}")]
    MissingField {
        field: &'static str,
        state: &'static str,
    },

    #[error("{field} {payload:?} in the payload does not match {topic:?} in the topic")]
    TopicMismatch {
        field: &'static str,
        payload: String,
        topic: String,
    },

    #[error("malformed topic {topic:?}: {reason}")]
    Topic { topic: String, reason: &'static str },
}

/// A number as an error message shows it: plainly for ordinary magnitudes, in exponent
/// form for extreme ones (plain `Display` writes `1e300` with 301 digits).
struct Num(f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&x.abs()) {
            write!(f, "{x}")
        } else {
            write!(f, "{x:e}")
        }
    }
}

/// `[min, max]`; a lower bound of `f64::MIN_POSITIVE` means "above zero": `(0, max]`.
struct Bounds(f64, f64);

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == f64::MIN_POSITIVE {
            write!(f, "(0, {}]", Num(self.1))
        } else {
            write!(f, "[{}, {}]", Num(self.0), Num(self.1))
        }
    }
}
