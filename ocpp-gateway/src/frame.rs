//! OCPP-J framing (OCPP 1.6 JSON, section 4): `[2, id, action, payload]` (CALL),
//! `[3, id, payload]` (CALLRESULT), `[4, id, code, description, details]` (CALLERROR).
//! No I/O: text in, [`Frame`] or the CALLERROR to answer out.

use serde_json::{Value, json};

/// Longest unique id (OCPP-J: at most 36 characters).
pub const MAX_ID_LEN: usize = 36;

/// The OCPP-J error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotImplemented,
    NotSupported,
    InternalError,
    ProtocolError,
    SecurityError,
    FormationViolation,
    PropertyConstraintViolation,
    OccurenceConstraintViolation,
    TypeConstraintViolation,
    GenericError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotImplemented => "NotImplemented",
            Self::NotSupported => "NotSupported",
            Self::InternalError => "InternalError",
            Self::ProtocolError => "ProtocolError",
            Self::SecurityError => "SecurityError",
            Self::FormationViolation => "FormationViolation",
            Self::PropertyConstraintViolation => "PropertyConstraintViolation",
            Self::OccurenceConstraintViolation => "OccurenceConstraintViolation",
            Self::TypeConstraintViolation => "TypeConstraintViolation",
            Self::GenericError => "GenericError",
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Call {
        id: String,
        action: String,
        payload: Value,
    },
    CallResult {
        id: String,
        payload: Value,
    },
    CallError {
        id: String,
        code: String,
        description: String,
    },
}

/// A frame that cannot be used, and the CALLERROR that answers it (with the message id
/// when one could be read, else `"-1"`).
#[derive(Debug, Clone, PartialEq)]
pub struct BadFrame {
    pub id: String,
    pub code: ErrorCode,
    pub description: String,
}

impl BadFrame {
    fn new(id: Option<&str>, code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            id: id.unwrap_or("-1").to_owned(),
            code,
            description: description.into(),
        }
    }

    /// The CALLERROR frame for it.
    pub fn to_text(&self) -> String {
        call_error(&self.id, self.code, &self.description)
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Frame, BadFrame> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        BadFrame::new(
            None,
            ErrorCode::FormationViolation,
            format!("not JSON: {e}"),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(BadFrame::new(
            None,
            ErrorCode::FormationViolation,
            "an OCPP-J message is a JSON array",
        ));
    };
    let id = match items.get(1) {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => id.clone(),
        Some(Value::String(_)) => {
            return Err(BadFrame::new(
                None,
                ErrorCode::FormationViolation,
                format!("the message id must be 1-{MAX_ID_LEN} characters"),
            ));
        }
        _ => {
            return Err(BadFrame::new(
                None,
                ErrorCode::FormationViolation,
                "the second element must be the message id (a string)",
            ));
        }
    };
    let bad = |code, what: &str| Err(BadFrame::new(Some(&id), code, what));
    match items.first().and_then(Value::as_u64) {
        Some(2) => {
            let [_, _, Value::String(action), payload] = &items[..] else {
                return bad(
                    ErrorCode::FormationViolation,
                    "a CALL is [2, id, action, payload]",
                );
            };
            if !payload.is_object() {
                return bad(
                    ErrorCode::FormationViolation,
                    "a CALL's payload is a JSON object",
                );
            }
            Ok(Frame::Call {
                action: action.clone(),
                payload: payload.clone(),
                id,
            })
        }
        Some(3) => {
            let [_, _, payload] = &items[..] else {
                return bad(
                    ErrorCode::FormationViolation,
                    "a CALLRESULT is [3, id, payload]",
                );
            };
            Ok(Frame::CallResult {
                payload: payload.clone(),
                id,
            })
        }
        Some(4) => {
            let (Some(Value::String(code)), Some(Value::String(description))) =
                (items.get(2), items.get(3))
            else {
                return bad(
                    ErrorCode::FormationViolation,
                    "a CALLERROR is [4, id, code, description, details]",
                );
            };
            Ok(Frame::CallError {
                code: code.clone(),
                description: description.clone(),
                id,
            })
        }
        _ => bad(
            ErrorCode::ProtocolError,
            "the message type must be 2 (CALL), 3 (CALLRESULT) or 4 (CALLERROR)",
        ),
    }
}

/// `[2, id, action, payload]`
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    json!([2, id, action, payload]).to_string()
}

/// `[3, id, payload]`
pub fn call_result(id: &str, payload: &Value) -> String {
    json!([3, id, payload]).to_string()
}

/// `[4, id, code, description, {}]`
pub fn call_error(id: &str, code: ErrorCode, description: &str) -> String {
    let description: String = description.chars().take(255).collect();
    json!([4, id, code.as_str(), description, {}]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_frames_parse() {
        assert_eq!(
            parse(r#"[2,"19223201","BootNotification",{"chargePointVendor":"v"}]"#).unwrap(),
            Frame::Call {
                id: "19223201".into(),
                action: "BootNotification".into(),
                payload: json!({"chargePointVendor": "v"}),
            }
        );
        assert_eq!(
            parse(r#"[3,"a",{"status":"Accepted"}]"#).unwrap(),
            Frame::CallResult {
                id: "a".into(),
                payload: json!({"status": "Accepted"}),
            }
        );
        assert_eq!(
            parse(r#"[4,"a","NotImplemented","no",{}]"#).unwrap(),
            Frame::CallError {
                id: "a".into(),
                code: "NotImplemented".into(),
                description: "no".into(),
            }
        );
    }

    #[test]
    fn malformed_frames_say_why_with_the_id_when_there_is_one() {
        let cases = [
            ("nonsense", "-1", ErrorCode::FormationViolation),
            ("{}", "-1", ErrorCode::FormationViolation),
            ("[]", "-1", ErrorCode::FormationViolation),
            ("[2]", "-1", ErrorCode::FormationViolation),
            (
                "[2, 7, \"Heartbeat\", {}]",
                "-1",
                ErrorCode::FormationViolation,
            ),
            (
                &format!("[2, \"{}\", \"Heartbeat\", {{}}]", "x".repeat(37)),
                "-1",
                ErrorCode::FormationViolation,
            ),
            (
                "[2, \"m1\", \"Heartbeat\"]",
                "m1",
                ErrorCode::FormationViolation,
            ),
            (
                "[2, \"m1\", \"Heartbeat\", []]",
                "m1",
                ErrorCode::FormationViolation,
            ),
            ("[2, \"m1\", 5, {}]", "m1", ErrorCode::FormationViolation),
            ("[9, \"m1\", {}]", "m1", ErrorCode::ProtocolError),
            (
                "[\"2\", \"m1\", \"Heartbeat\", {}]",
                "m1",
                ErrorCode::ProtocolError,
            ),
            ("[4, \"m1\"]", "m1", ErrorCode::FormationViolation),
        ];
        for (text, id, code) in cases {
            let bad = parse(text).unwrap_err();
            assert_eq!((bad.id.as_str(), bad.code), (id, code), "{text}");
            let answer: Value = serde_json::from_str(&bad.to_text()).unwrap();
            assert_eq!(answer[0], 4);
            assert_eq!(answer[1], id);
            assert_eq!(answer[2], code.as_str());
        }
    }

    #[test]
    fn frames_we_send_are_frames_we_parse() {
        let p = json!({"connectorId": 0});
        assert_eq!(
            parse(&call("x1", "ReserveNow", &p)).unwrap(),
            Frame::Call {
                id: "x1".into(),
                action: "ReserveNow".into(),
                payload: p.clone()
            }
        );
        assert_eq!(
            parse(&call_result("x1", &p)).unwrap(),
            Frame::CallResult {
                id: "x1".into(),
                payload: p
            }
        );
        let long = "é".repeat(300);
        let e: Value =
            serde_json::from_str(&call_error("x1", ErrorCode::GenericError, &long)).unwrap();
        assert_eq!(e[3].as_str().unwrap().chars().count(), 255);
    }
}
