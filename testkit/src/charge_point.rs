//! A minimal OCPP 1.6J charge point over a plain TCP socket, for tests that only have
//! a port (a gateway in a container, or a process): the WebSocket handshake, then a
//! few short OCPP-J calls.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;

/// Opens `ws://127.0.0.1:{port}/ocpp/{id}` offering the subprotocol `ocpp1.6`, with
/// Basic auth (user = `id`) if a password is given, and returns the handshake's status
/// line (`HTTP/1.1 101 …`, `… 404 …`; `not listening` if nothing accepts the
/// connection). If the handshake is accepted, sends `frames` (OCPP-J calls, each
/// under 126 bytes) as text frames, waits for the first answer, and closes.
pub fn open(port: u16, id: &str, password: Option<&str>, frames: &[&str]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return "not listening".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = password
        .map(|p| {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{p}"));
            format!("Authorization: Basic {basic}\r\n")
        })
        .unwrap_or_default();
    let request = format!(
        "GET /ocpp/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n{auth}\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return "closed".into();
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or("closed").to_owned();
    if status.contains(" 101 ") {
        for f in frames {
            assert!(f.len() < 126, "a short frame only: {f}");
            // FIN + text, masked (as a client must) with a zero key: the payload as it is
            let mut frame = vec![0x81, 0x80 | f.len() as u8, 0, 0, 0, 0];
            frame.extend_from_slice(f.as_bytes());
            if s.write_all(&frame).is_err() {
                break;
            }
        }
        let mut answer = [0u8; 512];
        let _ = s.read(&mut answer);
    }
    status
}

/// A BootNotification and a StatusNotification (connector 1 Available): what a
/// charger sends first.
pub const BOOT_AND_STATUS: [&str; 2] = [
    r#"[2,"1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]"#,
    r#"[2,"2","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available"}]"#,
];

/// Boots charge point `id` (password `password`) on the gateway at `port` and returns
/// the station status the gateway publishes for it, as the region's fog server sees it
/// on the broker at `broker_url` (logged in as `fog_user`, e.g. `fog-north`).
pub async fn boot_as_station(
    broker_url: &str,
    (region, fog_user, fog_password): (&str, &str, &str),
    port: u16,
    (id, password): (&str, &str),
) -> anyhow::Result<serde_json::Value> {
    let mut fog =
        crate::TestClient::connect_as(broker_url, "test-fog", fog_user, fog_password).await?;
    let topic = protocol::topics::station_status(region, id);
    fog.subscribe(&topic, 1).await?;
    let status = open(port, id, Some(password), &BOOT_AND_STATUS);
    anyhow::ensure!(status.contains(" 101 "), "the handshake of {id}: {status}");
    // The gateway publishes each charger in its file `offline` when it starts (retained):
    // skip that until the charger's own status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = fog.wait_for(&topic, left).await?;
        let status: serde_json::Value = serde_json::from_slice(msg.payload())?;
        if status["state"] != "offline" {
            return Ok(status);
        }
    }
}
