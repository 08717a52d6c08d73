//! The gateway's listeners: the OCPP WebSocket endpoint `/ocpp/{chargePointId}`
//! (plain or TLS) and the HTTP side (`/healthz`, `/readyz`, `/metrics`).
//!
//! The handshake, in order: an unknown charge point id is refused with 404 (unless
//! `--accept-unknown`), a wrong or missing password (for a charger that has one) with
//! 401, a handshake that does not offer the `ocpp1.6` subprotocol with 400.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path as UrlPath, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::chargers::Admission;
use crate::metrics::Label;

/// The one subprotocol spoken.
pub const SUBPROTOCOL: &str = "ocpp1.6";

/// A TLS configuration from PEM files (security profile 2).
pub async fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // Only one crypto provider is compiled in; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
}

pub fn ocpp_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ocpp/{id}", get(handshake))
        .with_state(shared)
}

/// Serves the OCPP endpoint on `listener` until `shutdown`. Every connection has
/// `TCP_NODELAY`: an OCPP call is one small frame, and with Nagle's algorithm a
/// ReserveNow written while the charge point's acknowledgement of the last frame is
/// delayed (40 ms on Linux) waits for it.
pub async fn serve_ocpp(
    listener: tokio::net::TcpListener,
    tls: Option<RustlsConfig>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = ocpp_router(shared);
    match tls {
        None => axum::serve(listener.tap_io(no_delay), app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("OCPP listener"),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            let listener = listener.into_std()?;
            let acceptor = RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new());
            axum_server::from_tcp(listener)
                .context("OCPP TLS listener")?
                .acceptor(acceptor)
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .context("OCPP TLS listener")
        }
    }
}

fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!("TCP_NODELAY on an OCPP connection: {e}");
    }
}

pub fn http_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &shared.prometheus) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The password of an `Authorization: Basic` header whose user is `id`.
fn basic_password(headers: &HeaderMap, id: &str) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == id).then(|| password.to_owned())
}

fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

fn refuse(shared: &Shared, kind: &str, code: StatusCode, why: &str) -> Response {
    shared.metrics.refused.get_or_create(&Label::of(kind)).inc();
    let mut response = (code, format!("{why}\n")).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"ocpp\""),
        );
    }
    response
}

async fn handshake(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if protocol::validate_id("chargePointId", &id).is_err() {
        return refuse(
            &shared,
            "unknown",
            StatusCode::NOT_FOUND,
            "unknown charge point",
        );
    }
    let admission = shared
        .registry()
        .admit(&id, basic_password(&headers, &id).as_deref());
    match admission {
        Admission::Known => {}
        Admission::Unknown if shared.settings.accept_unknown => {
            info!(charger = %id, "unknown charge point accepted (--accept-unknown)");
        }
        Admission::Unknown => {
            warn!(charger = %id, "unknown charge point refused");
            return refuse(
                &shared,
                "unknown",
                StatusCode::NOT_FOUND,
                "unknown charge point",
            );
        }
        Admission::BadPassword => {
            warn!(charger = %id, "wrong or missing password");
            return refuse(
                &shared,
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "wrong or missing password",
            );
        }
    }
    if !offers_subprotocol(&headers) {
        return refuse(
            &shared,
            "subprotocol",
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol ocpp1.6 is required",
        );
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = shared.settings.max_message_bytes;
    let shutdown = shared.shutdown.clone();
    ws.protocols([SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let (generation, commands, reconnect) = shared.begin_session(&id);
            crate::session::run(
                shared, id, socket, generation, commands, reconnect, shutdown,
            )
            .await;
        })
}
