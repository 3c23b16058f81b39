//! Instance lifecycle over real HTTP with real `drasi-stub` processes: create, start,
//! stop, restart, delete, metadata, bad input and failed starts.

mod common;

use std::time::Duration;

use common::{Client, TestCp, alive, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn stub_config(port: u64) -> Value {
    let client = Client::new(format!("http://127.0.0.1:{port}"));
    let (status, config) = client.get("/config").await;
    assert_eq!(status, StatusCode::OK);
    config
}

#[tokio::test]
async fn create_start_stop_restart_delete_runs_a_real_process() {
    let cp = TestCp::start().await;

    let instance = cp
        .create(json!({"name": "orders", "description": "d", "metadata": {"team": "a"}}))
        .await;
    let id = instance["id"].as_str().unwrap().to_owned();
    assert_eq!(instance["status"], "Created");
    assert_eq!(instance["platformType"], "Process");
    assert_eq!(instance["metadata"], json!({"team": "a"}));
    assert_eq!(instance["description"], "d");

    // The allocated port is in the configured range and stored in the configuration.
    let config = cp.configuration(&id).await;
    let port = config["port"].as_u64().unwrap();
    let range = cp.dir.path(); // keep the tempdir alive
    assert!(range.exists());
    assert_eq!(config["logLevel"], "info");
    assert_eq!(config["sources"], json!([]));

    let (status, list) = cp.get("/api/server/instances").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Start: a real process serves the configuration it was given.
    let started = cp.start(&id).await;
    assert_eq!(started["status"], "Running");
    let pid = cp.pid(&id).await;
    assert!(alive(pid));
    let running = stub_config(port).await;
    assert_eq!(running["id"], id.as_str());
    assert_eq!(running["port"], port);
    let yaml = std::fs::read_to_string(
        cp.runtime(&id).await["runtimeMetadata"]["configFilePath"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(yaml.contains(&format!("id: {id}")), "{yaml}");
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], true, "{health}");

    // Stop: the process is gone and the status says so.
    let (status, stopped) = cp
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "Stopped");
    assert!(!alive(pid), "the process must be gone after stop");
    let info = cp.runtime(&id).await;
    assert_eq!(info["processId"], Value::Null);
    assert_eq!(info["runtimeMetadata"]["exitCode"], "0", "{info}");

    // Start with a configuration body: the process runs that one; desired is unchanged.
    let (status, _) = cp
        .post(
            &format!("/api/server/instances/{id}/start"),
            Some(&json!({"logLevel": "debug", "queries": [{"id": "q", "query": "MATCH (n) RETURN n"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let running = stub_config(port).await;
    assert_eq!(running["logLevel"], "debug");
    assert_eq!(running["queries"][0]["queryText"], "MATCH (n) RETURN n");
    assert_eq!(cp.configuration(&id).await["logLevel"], "info");
    let (_, rc) = cp
        .get(&format!(
            "/api/extensions/instances/{id}/running-configuration"
        ))
        .await;
    assert_eq!(rc["running"], true);
    assert_eq!(rc["configuration"]["logLevel"], "debug");

    // Restart: back to the desired configuration, in a new process.
    let first_pid = cp.pid(&id).await;
    let (status, restarted) = cp
        .post(&format!("/api/server/instances/{id}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{restarted}");
    assert_eq!(restarted["status"], "Running");
    let second_pid = cp.pid(&id).await;
    assert_ne!(first_pid, second_pid);
    assert!(!alive(first_pid));
    assert_eq!(stub_config(port).await["logLevel"], "info");

    // Metadata can be changed later.
    let (status, updated) = cp
        .put(
            &format!("/api/server/instances/{id}/metadata"),
            &json!({"team": "b", "tier": "gold"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["metadata"], json!({"team": "b", "tier": "gold"}));
    assert_eq!(
        cp.get(&format!("/api/server/instances/{id}")).await.1["metadata"]["tier"],
        "gold"
    );

    // Delete stops the running process first.
    let (status, _) = cp.delete(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!alive(second_pid), "delete must stop the process");
    let (status, body) = cp.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains(&id));

    cp.shutdown().await;
}

#[tokio::test]
async fn unknown_instances_are_404_with_a_message_on_every_route() {
    let cp = TestCp::start().await;
    let get = [
        "/api/server/instances/nope",
        "/api/configuration/instances/nope",
        "/api/status/nope/status",
        "/api/extensions/instances/nope/health",
        "/api/extensions/instances/nope/metrics",
    ];
    for path in get {
        let (status, body) = cp.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"], "instance 'nope' not found", "{path}");
    }
    for action in ["start", "stop", "restart"] {
        let (status, body) = cp
            .post(&format!("/api/server/instances/nope/{action}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}: {body}");
    }
    let (status, _) = cp.delete("/api/server/instances/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp
        .patch("/api/configuration/instances/nope", &json!([]))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": "nope", "status": "Running", "source": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = cp.get("/api/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("no route"));
    cp.shutdown().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_naming_the_field() {
    let cp = TestCp::start().await;
    let cases = [
        (r#"{"name": "#, "malformed JSON"),
        (r#"{"name": 5}"#, "`name`"),
        (
            r#"{"name": "a", "platformType": "Docker"}"#,
            "`platformType`",
        ),
        (r#"{"name": "a", "metadata": {"k": 1}}"#, "`metadata.k`"),
        (
            r#"{"name": "a", "serverConfiguration": {"port": "x"}}"#,
            "`port`",
        ),
        (
            r#"{"name": "a", "serverConfiguration": {"sources": {}}}"#,
            "`sources`",
        ),
        (r#"{"description": "no name"}"#, "name"),
        (r#"{"name": ""}"#, "`name`"),
        ("", "body is required"),
    ];
    for (body, field) in cases {
        let (status, answer) = cp
            .raw(reqwest::Method::POST, "/api/server/instances", body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{body}: expected {field} in {error}");
    }
    let id = cp
        .create(json!({"name": "x", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, answer) = cp
        .raw(
            reqwest::Method::POST,
            "/api/status/updates",
            &json!({"instanceId": id, "status": "Sleeping", "source": "t"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("`status`"),
        "{answer}"
    );
    let (status, answer) = cp
        .raw(
            reqwest::Method::PUT,
            &format!("/api/server/instances/{id}/metadata"),
            r#"["not", "an", "object"]"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = cp
        .raw(
            reqwest::Method::POST,
            &format!("/api/server/instances/{id}/start"),
            r#"{"port": true}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("`port`"));
    cp.shutdown().await;
}

#[tokio::test]
async fn a_start_on_a_taken_port_fails_with_the_reason_and_leaves_nothing_behind() {
    let cp = TestCp::start().await;
    let instance = cp.create(json!({"name": "blocked"})).await;
    let id = instance["id"].as_str().unwrap();
    let port = cp.configuration(id).await["port"].as_u64().unwrap() as u16;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();

    let (status, body) = cp
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("already in use"), "{error}");
    assert!(error.contains(&port.to_string()), "{error}");

    let info = cp.runtime(id).await;
    assert_eq!(info["status"], "Error");
    assert!(info["errorMessage"].as_str().unwrap().contains("in use"));
    assert_eq!(info["processId"], Value::Null);
    let yaml = cp.dir.path().join("runtime").join(format!("{id}.yaml"));
    assert!(!yaml.exists(), "no configuration file may be left behind");
    assert_eq!(cp.configuration(id).await["port"], port);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_start_with_a_missing_binary_fails_with_the_reason() {
    let cp = TestCp::start_with(|c| c.stub_bin = Some("/nonexistent/drasi-stub".into())).await;
    let id = cp.create(json!({"name": "nobin"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = cp
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("/nonexistent/drasi-stub"), "{error}");
    assert_eq!(cp.runtime(&id).await["status"], "Error");
    cp.shutdown().await;
}

#[tokio::test]
async fn ports_are_unique_and_an_explicit_taken_port_is_a_conflict() {
    let cp = TestCp::start().await;
    let a = cp.create(json!({"name": "a"})).await;
    let b = cp.create(json!({"name": "b"})).await;
    let pa = cp.configuration(a["id"].as_str().unwrap()).await["port"].clone();
    let pb = cp.configuration(b["id"].as_str().unwrap()).await["port"].clone();
    assert_ne!(pa, pb);
    let (status, body) = cp
        .post(
            "/api/server/instances",
            Some(&json!({"name": "c", "serverConfiguration": {"port": pa}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    cp.shutdown().await;
}

#[tokio::test]
async fn simulated_instances_record_their_running_configuration() {
    let cp = TestCp::start().await;
    let instance = cp
        .create(json!({"name": "sim", "platformType": "Simulated",
                       "serverConfiguration": {"logLevel": "warn"}}))
        .await;
    let id = instance["id"].as_str().unwrap();
    assert_eq!(instance["platformType"], "Simulated");
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], false);
    cp.post(
        &format!("/api/server/instances/{id}/start"),
        Some(&json!({"logLevel": "debug"})),
    )
    .await;
    let (_, rc) = cp
        .get(&format!(
            "/api/extensions/instances/{id}/running-configuration"
        ))
        .await;
    assert_eq!(rc["configuration"]["logLevel"], "debug");
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], true);
    let (_, stopped) = cp
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(stopped["status"], "Stopped");
    let (_, rc) = cp
        .get(&format!(
            "/api/extensions/instances/{id}/running-configuration"
        ))
        .await;
    assert_eq!(rc["running"], false);
    cp.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_simulated_instances_are_listed_in_one_answer() {
    let cp = TestCp::start().await;
    let control_plane = cp.running.as_ref().unwrap().control_plane().clone();
    for i in 0..10_000 {
        control_plane
            .create(setpoint_controlplane::service::CreateInstance {
                name: format!("sim-{i}"),
                platform_type: Some(setpoint_controlplane::PlatformType::Simulated),
                ..Default::default()
            })
            .unwrap();
    }
    let started = std::time::Instant::now();
    let (status, list) = cp.get("/api/server/instances").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 10_000);
    assert_eq!(list[0]["name"], "sim-0");
    assert_eq!(list[9_999]["name"], "sim-9999");
    // Reported, not asserted: timing belongs in benchmarks (see the README).
    eprintln!("listing 10k instances over HTTP took {elapsed:?}");
    cp.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_process() {
    let cp = TestCp::start().await;
    let mut pids = Vec::new();
    for name in ["a", "b"] {
        let id = cp.create(json!({"name": name})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        cp.start(&id).await;
        pids.push(cp.pid(&id).await);
    }
    assert!(pids.iter().all(|p| alive(*p)));
    cp.shutdown().await;
    eventually(Duration::from_secs(5), "processes to exit", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
}
