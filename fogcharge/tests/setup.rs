//! `fogcharge setup`: the deployment's secrets in a folder (compose) or a Kubernetes
//! Secret created through the API server (a stand-in API server here).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

const EXE: &str = env!("CARGO_BIN_EXE_fogcharge");

fn topology() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/topology.toml")
        .display()
        .to_string()
}

fn setup(args: &[&str]) -> std::process::Output {
    Command::new(EXE)
        .arg("setup")
        .args([
            "--topology",
            &topology(),
            "--stations",
            "12",
            "--vehicles",
            "50",
        ])
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

#[test]
fn setup_writes_the_secrets_once_and_keeps_them_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let first = setup(&["--out", &out, "--clock-speed", "60"]);
    assert!(first.status.success(), "{first:?}");
    let users = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    let clock = std::fs::read_to_string(dir.path().join("clock.json")).unwrap();
    let creds = topology::auth::Credentials::load(&dir.path().join("users.toml")).unwrap();
    let stations = creds
        .users
        .iter()
        .filter(|u| matches!(u.role, topology::auth::Role::Station { .. }))
        .count();
    assert_eq!(stations, 12, "one user per simulated station");
    for file in [
        "central.passwd",
        "central.acl",
        "north.passwd",
        "north.acl",
        "bridge-north/bridge.conf",
        "fog-north.password",
        "ocpp-north.password",
        "central.password",
        "health.password",
    ] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    let ocpp = std::fs::read_to_string(dir.path().join("ocpp-north.password")).unwrap();
    assert_eq!(ocpp.trim_end(), creds.password("ocpp-north").unwrap());
    assert!(clock.contains("\"speed\":60.0"), "{clock}");

    let second = setup(&["--out", &out, "--clock-speed", "60"]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("users.toml")).unwrap(),
        users,
        "a second run changes no password"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("clock.json")).unwrap(),
        clock,
        "nor the clock"
    );

    let bad = Command::new(EXE)
        .args(["setup", "--topology", "/nonexistent.toml", "--out", &out])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.toml"));
}

#[derive(Default)]
struct Api {
    exists: bool,
    created: Vec<serde_json::Value>,
    tokens: Vec<String>,
}

type Shared = Arc<Mutex<Api>>;

async fn get_secret(State(api): State<Shared>, headers: HeaderMap) -> StatusCode {
    let mut api = api.lock().unwrap();
    api.tokens.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
    if api.exists {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn create_secret(
    State(api): State<Shared>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> StatusCode {
    let mut api = api.lock().unwrap();
    api.created.push(body);
    api.exists = true;
    StatusCode::CREATED
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_creates_the_kubernetes_secret_once() {
    let api: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/api/v1/namespaces/fogcharge/secrets/fogcharge-secrets",
            get(get_secret),
        )
        .route(
            "/api/v1/namespaces/fogcharge/secrets",
            axum::routing::post(create_secret),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(sa.path().join("namespace"), "fogcharge").unwrap();
    let url = format!("http://{addr}");
    let sa_dir = sa.path().display().to_string();
    let args = [
        "--kubernetes-secret",
        "fogcharge-secrets",
        "--kubernetes-api",
        url.as_str(),
        "--service-account-dir",
        sa_dir.as_str(),
        "--clock-speed",
        "60",
    ];
    for _ in 0..2 {
        let args = args.map(str::to_owned);
        let out = tokio::task::spawn_blocking(move || {
            setup(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let api = api.lock().unwrap();
    assert_eq!(
        api.created.len(),
        1,
        "the second run finds the secret and keeps it"
    );
    assert!(
        api.tokens.iter().all(|t| t == "Bearer t0ken"),
        "{:?}",
        api.tokens
    );
    let secret = &api.created[0];
    assert_eq!(secret["metadata"]["name"], "fogcharge-secrets");
    let data: BTreeMap<String, String> =
        serde_json::from_value(secret["stringData"].clone()).unwrap();
    for key in [
        "users.toml",
        "clock.json",
        "north.passwd",
        "north.acl",
        "bridge-north_bridge.conf",
        "fog-north.password",
        "ocpp-north.password",
        "health.password",
    ] {
        assert!(data.contains_key(key), "{key} missing: {:?}", data.keys());
    }
    assert!(data["bridge-north_bridge.conf"].contains("remote_username bridge-north"));
}

#[test]
fn probe_tells_a_healthy_url_from_a_dead_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    rt.spawn(async move { axum::serve(listener, app).await });
    let probe = |path: &str| {
        Command::new(EXE)
            .args(["probe", &format!("http://{addr}{path}")])
            .output()
            .unwrap()
    };
    assert!(probe("/healthz").status.success());
    let not_ready = probe("/readyz");
    assert!(!not_ready.status.success());
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));
}
