//! The extensions progressive delivery needs: clone, health, metrics and endpoints whose
//! weighted backends really split requests between real processes.

mod common;

use std::collections::HashMap;

use common::TestCp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn endpoints_split_traffic_by_weight_and_instances_count_it() {
    let cp = TestCp::start().await;
    let a = cp.create(json!({"name": "stable"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&a).await;

    // Clone with a configuration that fails half the traffic (a bad canary).
    let (status, clone) = cp
        .post(
            &format!("/api/extensions/instances/{a}/clone"),
            Some(&json!({"name": "canary", "configuration": {"stub": {"failRate": 0.5}}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{clone}");
    let b = clone["id"].as_str().unwrap().to_owned();
    assert_eq!(clone["name"], "canary");
    assert_eq!(clone["platformType"], "Process");
    assert_eq!(clone["status"], "Created");
    assert_eq!(clone["metadata"]["setpoint.io/clone-of"], a.as_str());
    let (port_a, port_b) = (
        cp.configuration(&a).await["port"].clone(),
        cp.configuration(&b).await["port"].clone(),
    );
    assert_ne!(port_a, port_b);
    assert_eq!(cp.configuration(&b).await["stub"]["failRate"], 0.5);
    // Prometheus's service discovery lists what runs: `a` only, until the clone starts.
    let targets = |v: serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["targets"][0].as_str().unwrap().to_owned(),
                    g["labels"]["instance_name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (_, listed) = cp.get("/api/extensions/prometheus/targets").await;
    assert_eq!(
        targets(listed),
        [(format!("127.0.0.1:{port_a}"), "stable".to_owned())]
    );
    cp.start(&b).await;
    let (_, listed) = cp.get("/api/extensions/prometheus/targets").await;
    let mut listed = targets(listed);
    listed.sort();
    let mut expected = vec![
        (format!("127.0.0.1:{port_a}"), "stable".to_owned()),
        (format!("127.0.0.1:{port_b}"), "canary".to_owned()),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    let (status, endpoint) = cp
        .put(
            "/api/extensions/endpoints/web",
            &json!({"backends": [{"instanceId": a, "weight": 3}, {"instanceId": b, "weight": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{endpoint}");
    let (_, got) = cp.get("/api/extensions/endpoints/web").await;
    assert_eq!(got["backends"][1]["weight"], 1);

    let mut by_backend: HashMap<String, usize> = HashMap::new();
    let mut server_errors = 0;
    for _ in 0..40 {
        let response = cp
            .client
            .http
            .get(format!(
                "{}/api/extensions/endpoints/web/proxy/query?x=1",
                cp.base
            ))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
            server_errors += 1;
        }
        let backend = response.headers()["x-setpoint-backend"]
            .to_str()
            .unwrap()
            .to_owned();
        *by_backend.entry(backend).or_default() += 1;
    }
    assert_eq!(by_backend[&a], 30, "{by_backend:?}");
    assert_eq!(by_backend[&b], 10, "{by_backend:?}");
    assert_eq!(server_errors, 5);

    let (_, metrics_a) = cp
        .get(&format!("/api/extensions/instances/{a}/metrics"))
        .await;
    assert_eq!(metrics_a, json!({"requests": 30, "errors": 0}));
    let (_, metrics_b) = cp
        .get(&format!("/api/extensions/instances/{b}/metrics"))
        .await;
    assert_eq!(metrics_b, json!({"requests": 10, "errors": 5}));

    // Shift everything to a; a stopped backend is skipped.
    cp.put(
        "/api/extensions/endpoints/web",
        &json!({"backends": [{"instanceId": a, "weight": 0}, {"instanceId": b, "weight": 1}]}),
    )
    .await;
    cp.post(&format!("/api/server/instances/{b}/stop"), None)
        .await;
    let (status, body) = cp.get("/api/extensions/endpoints/web/proxy/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = cp
        .get(&format!("/api/extensions/instances/{b}/metrics"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = cp
        .put(
            "/api/extensions/endpoints/web",
            &json!({"backends": [{"instanceId": "nope", "weight": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("backends[0]"));
    let (status, _) = cp.get("/api/extensions/endpoints/none").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp.delete("/api/extensions/endpoints/web").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = cp.get("/api/extensions/endpoints").await;
    assert_eq!(list, json!([]));
    cp.shutdown().await;
}

#[tokio::test]
async fn health_reports_an_unhealthy_stub() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "sick", "serverConfiguration": {"stub": {"unhealthy": true}}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], false);
    assert!(health["detail"].as_str().unwrap().contains("not running"));
    cp.start(&id).await;
    let (status, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["healthy"], false, "{health}");
    assert!(
        health["detail"].as_str().unwrap().contains("503"),
        "{health}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_clone_of_a_simulated_instance_stays_simulated() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, clone) = cp
        .post(&format!("/api/extensions/instances/{id}/clone"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{clone}");
    assert_eq!(clone["platformType"], "Simulated");
    assert!(clone["name"].as_str().unwrap().starts_with("sim-clone-"));
    let (status, _) = cp
        .post("/api/extensions/instances/nope/clone", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    cp.shutdown().await;
}

#[tokio::test]
async fn running_configurations_lists_what_each_running_instance_runs() {
    let cp = TestCp::start().await;
    let (status, info) = cp.get("/api/extensions/info").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        info["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("runningConfigurations")),
        "{info}"
    );
    let (status, none) = cp.get("/api/extensions/running-configurations").await;
    assert_eq!(status, StatusCode::OK, "{none}");
    assert_eq!(none, json!({"configurations": {}}));

    let id = |instance: serde_json::Value| instance["id"].as_str().unwrap().to_owned();
    // A real process, started with its desired configuration.
    let process = id(cp.create(json!({"name": "proc"})).await);
    cp.start(&process).await;
    // Simulated: started with a body, never started, started then stopped.
    let with_body = id(cp
        .create(json!({"name": "body", "platformType": "Simulated"}))
        .await);
    let (status, started) = cp
        .post(
            &format!("/api/server/instances/{with_body}/start"),
            Some(&json!({"logLevel": "debug"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let never = id(cp
        .create(json!({"name": "never", "platformType": "Simulated"}))
        .await);
    let stopped = id(cp
        .create(json!({"name": "stopped", "platformType": "Simulated"}))
        .await);
    cp.start(&stopped).await;
    let (status, _) = cp
        .post(&format!("/api/server/instances/{stopped}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A desired configuration changed after the start is not what runs.
    let (status, _) = cp
        .patch(
            &format!("/api/configuration/instances/{process}"),
            &json!([{"op": "replace", "path": "/logLevel", "value": "warn"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, bulk) = cp.get("/api/extensions/running-configurations").await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    let configurations = bulk["configurations"].as_object().unwrap();
    let mut ids: Vec<&str> = configurations.keys().map(String::as_str).collect();
    ids.sort_unstable();
    let mut expected = vec![process.as_str(), with_body.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{bulk}");
    assert_eq!(configurations[&process]["logLevel"], "info");
    assert_eq!(cp.configuration(&process).await["logLevel"], "warn");
    assert_eq!(configurations[&with_body]["logLevel"], "debug");
    // The bulk answer agrees with the per-instance route, instance by instance.
    for instance in [&process, &with_body, &never, &stopped] {
        let (_, one) = cp
            .get(&format!(
                "/api/extensions/instances/{instance}/running-configuration"
            ))
            .await;
        assert_eq!(
            one["running"],
            configurations.contains_key(instance.as_str()),
            "{one}"
        );
        assert_eq!(
            one["configuration"],
            configurations
                .get(instance.as_str())
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        );
    }

    // Stopping the process removes it.
    cp.post(&format!("/api/server/instances/{process}/stop"), None)
        .await;
    let (_, bulk) = cp.get("/api/extensions/running-configurations").await;
    assert_eq!(
        bulk,
        json!({"configurations": {with_body.as_str(): configurations[&with_body].clone()}})
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_removed_desired_configuration_is_404_until_a_put_and_what_runs_keeps_running() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "orders", "serverConfiguration": {"logLevel": "warn"}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    let pid = cp.pid(&id).await;
    let desired = cp.configuration(&id).await;
    let configuration = format!("/api/configuration/instances/{id}");
    let running = format!("/api/extensions/instances/{id}/running-configuration");
    let (_, before) = cp.get(&running).await;
    let latest = cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap();

    let (status, body) = cp.delete(&configuration).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, serde_json::Value::Null);
    let (status, body) = cp.get(&configuration).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": format!("instance '{id}' has no desired configuration")})
    );
    // What runs keeps running, and says so.
    let (status, after) = cp.get(&running).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after, before);
    assert_eq!(after["configuration"], desired);
    assert!(common::alive(pid));
    assert_eq!(cp.pid(&id).await, pid);
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], true, "{health}");
    // The removal is a change of the feed.
    let page = cp.changes_after(latest).await;
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["status"], "ConfigurationChanged");
    assert_eq!(changes[0]["metadata"]["desiredConfiguration"], "removed");
    let (_, info) = cp.get("/api/extensions/info").await;
    assert!(
        info["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("deleteConfiguration")),
        "{info}"
    );

    // Nothing needs a desired configuration silently: each says it has none, and the
    // process is not touched.
    let (status, body) = cp.delete(&configuration).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = cp
        .patch(
            &configuration,
            &json!([{"op": "replace", "path": "/logLevel", "value": "debug"}]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("PUT one"),
        "{body}"
    );
    for action in ["start", "restart"] {
        let (status, body) = cp
            .post(&format!("/api/server/instances/{id}/{action}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {body}");
    }
    let (status, body) = cp
        .post(&format!("/api/extensions/instances/{id}/clone"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(cp.pid(&id).await, pid);
    assert_eq!(cp.get(&running).await.1, before);
    let (status, _) = cp.delete("/api/configuration/instances/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A PUT gives it one again; PATCH works on it from then on.
    let mut restored = desired.clone();
    restored["logLevel"] = json!("error");
    let (status, body) = cp.put(&configuration, &restored).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(cp.configuration(&id).await, restored);
    let (status, body) = cp
        .patch(
            &configuration,
            &json!([{"op": "replace", "path": "/logLevel", "value": "debug"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["logLevel"], "debug");
    assert_eq!(cp.get(&running).await.1, before, "a PUT does not restart");
    cp.shutdown().await;
}

#[tokio::test]
async fn lifecycle_calls_are_recorded_in_the_order_they_ended_with_their_outcome() {
    let cp = TestCp::start().await;
    let a = cp.create(json!({"name": "orders"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&a).await;
    let (status, _) = cp
        .post(&format!("/api/server/instances/{a}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cp
        .post(&format!("/api/server/instances/{a}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, clone) = cp
        .post(&format!("/api/extensions/instances/{a}/clone"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{clone}");
    let b = clone["id"].as_str().unwrap().to_owned();
    let (status, _) = cp.delete(&format!("/api/server/instances/{b}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Refused calls are recorded too, as not ok.
    let (status, _) = cp
        .post("/api/server/instances/no-such-instance/start", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, log) = cp.get("/api/extensions/lifecycle-calls").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let calls = log["calls"].as_array().unwrap();
    let seen: Vec<(&str, &str, bool)> = calls
        .iter()
        .map(|c| {
            (
                c["operation"].as_str().unwrap(),
                c["instanceId"].as_str().unwrap(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("start", a.as_str(), true),
            ("restart", a.as_str(), true),
            ("stop", a.as_str(), true),
            ("clone", a.as_str(), true),
            ("delete", b.as_str(), true),
            ("start", "no-such-instance", false),
        ],
        "{log:#}"
    );
    assert_eq!(calls[3]["cloneId"], b.as_str());
    assert!(calls[5]["error"].as_str().unwrap().contains("not found"));
    let sequences: Vec<u64> = calls
        .iter()
        .map(|c| c["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    // `after=` reads only what is newer.
    let (_, newer) = cp.get("/api/extensions/lifecycle-calls?after=4").await;
    assert_eq!(newer["calls"].as_array().unwrap().len(), 2, "{newer}");
    let (status, _) = cp.get("/api/extensions/lifecycle-calls?after=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    cp.shutdown().await;
}

/// Deleting one instance while another's desired configuration changes: every change is
/// stored with its own feed sequence number. (A delete once published its change after
/// letting go of the state lock, so a concurrent PATCH took the same number and failed
/// with a 500 on the feed's primary key; seen in the SIGKILL suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_and_patches_at_once_each_get_their_own_feed_sequence() {
    let cp = TestCp::start_with(|c| c.feed_capacity = 10_000).await;
    let id = cp
        .create(json!({"name": "patched", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let patcher = {
        let client = cp.client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let level = ["info", "debug"][i % 2];
                let (status, body) = client
                    .patch(
                        &format!("/api/configuration/instances/{id}"),
                        &json!([{ "op": "replace", "path": "/logLevel", "value": level }]),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "PATCH {i}: {body}");
            }
        })
    };
    let cloner = {
        let client = cp.client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let (status, clone) = client
                    .post(&format!("/api/extensions/instances/{id}/clone"), None)
                    .await;
                assert_eq!(status, StatusCode::CREATED, "clone {i}: {clone}");
                let clone = clone["id"].as_str().unwrap();
                let (status, body) = client
                    .delete(&format!("/api/server/instances/{clone}"))
                    .await;
                assert!(status.is_success(), "delete {i}: {status} {body}");
            }
        })
    };
    patcher.await.expect("every PATCH succeeds");
    cloner.await.expect("every clone and delete succeeds");
    let (_, feed) = cp.get("/api/status/recent-changes?after=0").await;
    let sequences: Vec<u64> = feed["changes"]
        .as_array()
        .expect("a feed page")
        .iter()
        .map(|c| c["sequence"].as_u64().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "feed sequences are not strictly increasing"
    );
    assert_eq!(sequences.len(), 1 + 400 + 2 * 200, "one change per write");
    cp.shutdown().await;
}

/// Starting an instance while its desired configuration changes never undoes the change.
/// (A start once stored the whole record it had read before starting, so a PATCH that
/// landed meanwhile was silently reverted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_never_reverts_a_desired_change_made_meanwhile() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "busy", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let starter = {
        let client = cp.client.clone();
        let (id, done) = (id.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = client
                    .post(&format!("/api/server/instances/{id}/start"), None)
                    .await;
                assert_eq!(status, StatusCode::OK, "start: {body}");
            }
        })
    };
    let path = format!("/api/configuration/instances/{id}");
    let mut reverted = Vec::new();
    for i in 0..300 {
        let level = ["info", "debug", "warn"][i % 3];
        let (status, body) = cp
            .patch(
                &path,
                &json!([{ "op": "replace", "path": "/logLevel", "value": level }]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "PATCH {i}: {body}");
        let (_, desired) = cp.get(&path).await;
        if desired["logLevel"] != level {
            reverted.push((i, level, desired["logLevel"].clone()));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    starter.await.expect("every start succeeds");
    assert!(reverted.is_empty(), "desired changes undone: {reverted:?}");
    cp.shutdown().await;
}
