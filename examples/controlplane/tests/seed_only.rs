//! Seed-only mode (`--seed-api-only`): the DRaaS seed's routes and answer shapes and
//! nothing else, over real HTTP with a real `drasi-stub` process.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestCp, alive};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn extensions_are_not_served() {
    let cp = TestCp::start_with(|c| c.seed_api_only = true).await;
    let id = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path) in [
        ("GET", "/api/extensions/info".to_owned()),
        ("GET", "/api/extensions/running-configurations".to_owned()),
        (
            "GET",
            format!("/api/extensions/instances/{id}/running-configuration"),
        ),
        ("GET", format!("/api/extensions/instances/{id}/health")),
        ("GET", format!("/api/extensions/instances/{id}/metrics")),
        ("POST", format!("/api/extensions/instances/{id}/clone")),
        ("GET", "/api/extensions/endpoints".to_owned()),
        ("PUT", "/api/extensions/endpoints/web".to_owned()),
        ("GET", "/api/extensions/endpoints/web/proxy/".to_owned()),
        ("GET", format!("/api/server/instances/{id}/metadata")),
        ("PUT", format!("/api/server/instances/{id}/metadata")),
        ("GET", "/healthz".to_owned()),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = cp.send(method.clone(), &path, Some(&json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    // The seed has GET and PATCH of a configuration, not PUT or DELETE.
    let (status, body) = cp
        .put(
            &format!("/api/configuration/instances/{id}"),
            &json!({"logLevel": "debug"}),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, body) = cp
        .delete(&format!("/api/configuration/instances/{id}"))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(cp.configuration(&id).await["logLevel"], "info");
    cp.shutdown().await;
}

#[tokio::test]
async fn the_feed_is_timestamp_based_only() {
    let cp = TestCp::start_with(|c| c.seed_api_only = true).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let id = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    cp.post(&format!("/api/server/instances/{id}/stop"), None)
        .await;

    // The cursor form is refused, saying why.
    for query in [
        "after=0",
        "after=0&wait=5",
        "since=2000-01-01T00:00:00Z&after=3",
    ] {
        let (status, body) = cp.get(&format!("/api/status/recent-changes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("no sequence feed"), "{query}: {error}");
    }

    // The seed's form: a plain array, without sequence numbers.
    let (status, changes) = cp
        .get(&format!(
            "/api/status/recent-changes?since={}",
            timestamp(before)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    let changes = changes.as_array().unwrap();
    let statuses: Vec<&Value> = changes.iter().map(|c| &c["newStatus"]).collect();
    assert_eq!(
        statuses,
        [&json!("Created"), &json!("Running"), &json!("Stopped")]
    );
    assert!(changes.iter().all(|c| c["instanceId"] == id.as_str()));
    assert!(
        changes.iter().all(|c| c.get("sequence").is_none()),
        "{changes:?}"
    );
    assert_eq!(changes[2]["oldStatus"], "Running");
    let (_, stopped) = cp
        .get(&format!(
            "/api/status/recent-changes?since={}&statusFilter=Stopped",
            timestamp(before)
        ))
        .await;
    assert_eq!(stopped.as_array().unwrap().len(), 1, "{stopped}");

    // No long poll: `wait=` is ignored, as the seed ignores parameters it does not know.
    let started = Instant::now();
    let (status, future) = cp
        .get("/api/status/recent-changes?since=2999-01-01T00:00:00Z&wait=5")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(future, json!([]));
    assert!(started.elapsed() < Duration::from_secs(3), "it waited");

    // A pushed status: 202 with the seed's empty body, and it shows in the feed.
    let (status, body) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": id, "status": "Error", "source": "daemon"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, Value::Null);
    assert_eq!(cp.runtime(&id).await["status"], "Error");
    let (_, errors) = cp
        .get(&format!(
            "/api/status/recent-changes?since={}&statusFilter=Error",
            timestamp(before)
        ))
        .await;
    assert_eq!(errors[0]["source"], "daemon", "{errors}");
    cp.shutdown().await;
}

#[tokio::test]
async fn the_lifecycle_works_with_a_real_process() {
    let cp = TestCp::start_with(|c| c.seed_api_only = true).await;
    let instance = cp.create(json!({"name": "orders"})).await;
    assert_eq!(instance["status"], "Created");
    let id = instance["id"].as_str().unwrap().to_owned();
    let (status, list) = cp.get("/api/server/instances").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, got) = cp.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["name"], "orders");
    let port = cp.configuration(&id).await["port"].as_u64().unwrap();
    let stub = Client::new(format!("http://127.0.0.1:{port}"));

    // The seed's start takes an optional configuration body, and answers a message.
    let (status, message) = cp
        .post(
            &format!("/api/server/instances/{id}/start"),
            Some(&json!({"logLevel": "debug"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        message,
        json!(format!("Instance '{id}' started successfully"))
    );
    let pid = cp.pid(&id).await;
    assert!(alive(pid));
    let (_, running) = stub.get("/config").await;
    assert_eq!(running["logLevel"], "debug");
    assert_eq!(cp.configuration(&id).await["logLevel"], "info");

    // PATCH (RFC 6902, including a whole-document replace) and GET of the configuration.
    let mut desired = cp.configuration(&id).await;
    desired["logLevel"] = json!("warn");
    let (status, patched) = cp
        .patch(
            &format!("/api/configuration/instances/{id}"),
            &json!([{"op": "replace", "path": "", "value": desired}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(cp.configuration(&id).await, desired);

    let (status, message) = cp
        .post(&format!("/api/server/instances/{id}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        message,
        json!(format!("Instance '{id}' restarted successfully"))
    );
    let (_, running) = stub.get("/config").await;
    assert_eq!(running["logLevel"], "warn");
    assert_eq!(cp.runtime(&id).await["status"], "Running");

    let pid = cp.pid(&id).await;
    let (status, message) = cp
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        message,
        json!(format!("Instance '{id}' stopped successfully"))
    );
    assert!(!alive(pid));
    assert_eq!(cp.runtime(&id).await["status"], "Stopped");

    let (status, _) = cp.delete(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = cp.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    cp.shutdown().await;
}

#[tokio::test]
async fn enums_are_integers_when_asked() {
    let cp = TestCp::start_with(|c| {
        c.seed_api_only = true;
        c.enum_as_int = true;
    })
    .await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let instance = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await;
    assert_eq!(instance["platformType"], 3);
    assert_eq!(instance["status"], 0);
    let id = instance["id"].as_str().unwrap().to_owned();
    cp.start(&id).await;
    assert_eq!(cp.runtime(&id).await["status"], 1);
    let (_, list) = cp.get("/api/server/instances").await;
    assert_eq!(list[0]["status"], 1);
    let (_, changes) = cp
        .get(&format!(
            "/api/status/recent-changes?since={}&statusFilter=1",
            timestamp(before)
        ))
        .await;
    assert_eq!(changes[0]["newStatus"], 1, "{changes}");
    assert_eq!(changes[0]["oldStatus"], 0, "{changes}");
    assert!(changes[0].get("sequence").is_none());
    let (status, _) = cp.get("/api/status/recent-changes?after=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = cp.get("/api/extensions/info").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    cp.shutdown().await;
}

/// Runs the real binary with `args` and `envs`; returns it and a client for its API.
async fn spawn_binary(
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, Client) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_setpoint-controlplane"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--db")
        .arg(dir.join("cp.db"))
        .arg("--runtime-dir")
        .arg(dir.join("runtime"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning setpoint-controlplane");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("the control plane did not print its address in time")
    .unwrap()
    .expect("the control plane exited before printing its address");
    let base = line.strip_prefix("listening on ").unwrap().to_owned();
    (child, Client::new(base))
}

#[tokio::test]
async fn the_binary_takes_the_flag_and_the_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut flag, cp) = spawn_binary(
        &dir.path().join("flag"),
        &["--seed-api-only", "--enum-as-int"],
        &[],
    )
    .await;
    let (status, _) = cp.get("/api/extensions/info").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sim = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await;
    assert_eq!(sim["platformType"], 3);
    flag.kill().await.unwrap();

    let (mut env, cp) = spawn_binary(
        &dir.path().join("env"),
        &[],
        &[("SETPOINT_CP_SEED_API_ONLY", "true")],
    )
    .await;
    let (status, body) = cp.get("/api/status/recent-changes?after=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    env.kill().await.unwrap();

    // Without either, the extensions are there.
    let (mut full, cp) = spawn_binary(&dir.path().join("full"), &[], &[]).await;
    let (status, _) = cp.get("/api/extensions/info").await;
    assert_eq!(status, StatusCode::OK);
    full.kill().await.unwrap();
}
