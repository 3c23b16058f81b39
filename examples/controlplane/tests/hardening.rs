//! Reliability: what the control plane records must not depend on the client (a client
//! that hangs up mid-request), writes that would make the next start fail are refused, and
//! every error the API returns is JSON. Real HTTP on loopback, real `drasi-stub` processes.

mod common;

use std::time::Duration;

use common::{Client, TestCp, alive, eventually, stub_pids_in};
use reqwest::StatusCode;
use serde_json::{Value, json};

// ----- a client that goes away mid-request -----------------------------------------------

/// Sends `method path` with a 20 ms timeout (like `curl -m 0.02`), so the client hangs
/// up while the control plane is still working. Returns whether it gave up (a fast call
/// may finish in time).
async fn hang_up(cp: &TestCp, method: reqwest::Method, path: &str) -> bool {
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    match impatient
        .request(method.clone(), format!("{}{path}", cp.base))
        .send()
        .await
    {
        Err(error) if error.is_timeout() => true,
        Err(error) => panic!("{method} {path}: {error}"),
        Ok(_) => false,
    }
}

/// An instance whose process listens only 300 ms after it started, so a client that
/// gives up after 20 ms surely hangs up in the middle of its start.
fn slow_starting() -> Value {
    json!({"name": "impatient", "serverConfiguration": {"stub": {"listenAfterMs": 300}}})
}

/// Waits until the instance is recorded `Running` with a process id, then checks that
/// the record is the truth: that process is alive, answers on the instance's port as this
/// instance, and is the only `drasi-stub` this control plane has running.
async fn settles_running(cp: &TestCp, id: &str) -> u32 {
    let pid = eventually(
        Duration::from_secs(15),
        "the instance to be recorded Running with a process id",
        || async {
            let info = cp.runtime(id).await;
            (info["status"] == "Running")
                .then(|| info["processId"].as_str()?.parse::<u32>().ok())
                .flatten()
        },
    )
    .await;
    assert!(alive(pid), "recorded pid {pid} is not alive");
    let port = cp.configuration(id).await["port"].as_u64().unwrap();
    let (status, running) = Client::new(format!("http://127.0.0.1:{port}"))
        .get("/config")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        running["id"], id,
        "port {port} is served by another instance"
    );
    assert_eq!(
        stub_pids_in(cp.dir.path()),
        [pid],
        "the only stub process must be the recorded one"
    );
    let (_, instance) = cp.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(instance["status"], "Running", "{instance}");
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{id}/health"))
        .await;
    assert_eq!(health["healthy"], true, "{health}");
    pid
}

#[tokio::test]
async fn a_start_completes_when_the_client_hangs_up() {
    let cp = TestCp::start().await;
    let id = cp.create(slow_starting()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        hang_up(
            &cp,
            reqwest::Method::POST,
            &format!("/api/server/instances/{id}/start")
        )
        .await,
        "a start waits 300 ms for the process to listen; the client gives up after 20 ms"
    );
    settles_running(&cp, &id).await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_restart_and_a_delete_complete_when_the_client_hangs_up() {
    let cp = TestCp::start().await;
    let id = cp.create(slow_starting()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    let first = cp.pid(&id).await;

    // Restart = stop + start: hanging up after the stop was recorded must not leave a
    // process running that the record calls `Stopped`.
    assert!(
        hang_up(
            &cp,
            reqwest::Method::POST,
            &format!("/api/server/instances/{id}/restart")
        )
        .await,
        "a restart waits 300 ms for the new process to listen"
    );
    let second = settles_running(&cp, &id).await;
    assert_ne!(first, second);
    assert!(!alive(first), "the first process must be gone");

    // Delete: whether or not the client waits, the instance and its process go.
    hang_up(
        &cp,
        reqwest::Method::DELETE,
        &format!("/api/server/instances/{id}"),
    )
    .await;
    let (status, _) = cp
        .send(
            reqwest::Method::DELETE,
            &format!("/api/server/instances/{id}"),
            None,
        )
        .await;
    assert!(
        status == StatusCode::NO_CONTENT || status == StatusCode::NOT_FOUND,
        "{status}"
    );
    eventually(Duration::from_secs(10), "the process to exit", || async {
        stub_pids_in(cp.dir.path()).is_empty().then_some(())
    })
    .await;
    let (status, _) = cp.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    cp.shutdown().await;
}

// ----- port checks of the desired configuration ------------------------------------------

/// The feed's latest sequence number.
async fn latest_sequence(cp: &TestCp) -> u64 {
    cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap()
}

/// Asserts a 422 whose error names `port` and contains every one of `words`, and that
/// the refused write stored nothing and published nothing.
async fn assert_refused(
    cp: &TestCp,
    id: &str,
    answer: (StatusCode, Value),
    words: &[&str],
    before: (&Value, u64),
) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(error.starts_with("port"), "{error}");
    for word in words {
        assert!(error.contains(word), "expected `{word}` in: {error}");
    }
    assert_eq!(
        &cp.configuration(id).await,
        before.0,
        "nothing may be stored"
    );
    assert_eq!(
        latest_sequence(cp).await,
        before.1,
        "nothing may be published"
    );
}

#[tokio::test]
async fn a_desired_port_held_by_another_instance_or_no_port_is_refused() {
    let cp = TestCp::start().await;
    let a = cp.create(json!({"name": "drasi-1"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = cp.create(json!({"name": "drasi-2"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let port_a = cp.configuration(&a).await["port"].as_u64().unwrap();
    let config_b = cp.configuration(&b).await;
    let path_b = format!("/api/configuration/instances/{b}");
    let port_a_text = port_a.to_string();
    let range = format!("{}..={}", cp.port_range.start(), cp.port_range.end());
    let held = [port_a_text.as_str(), a.as_str(), "drasi-1", range.as_str()];

    // PATCH to a's port.
    let before = latest_sequence(&cp).await;
    let answer = cp
        .patch(
            &path_b,
            &json!([{"op": "replace", "path": "/port", "value": port_a}]),
        )
        .await;
    assert_refused(&cp, &b, answer, &held, (&config_b, before)).await;

    // PUT with a's port.
    let mut put = config_b.clone();
    put["port"] = json!(port_a);
    let answer = cp.put(&path_b, &put).await;
    assert_refused(&cp, &b, answer, &held, (&config_b, before)).await;

    // PUT without a port.
    let mut put = config_b.clone();
    put.as_object_mut().unwrap().remove("port");
    let answer = cp.put(&path_b, &put).await;
    assert_refused(&cp, &b, answer, &["required"], (&config_b, before)).await;

    // PATCH that removes the port.
    let answer = cp
        .patch(&path_b, &json!([{"op": "remove", "path": "/port"}]))
        .await;
    assert_refused(&cp, &b, answer, &["required"], (&config_b, before)).await;

    // b can still start on its own port: nothing above touched it.
    cp.start(&b).await;

    // A port a running process still listens on stays taken after its desired port
    // moves: a runs on port_a, is patched to another port, and port_a is not handed out.
    cp.start(&a).await;
    let range_end = *cp.port_range.end();
    let (status, body) = cp
        .patch(
            &format!("/api/configuration/instances/{a}"),
            &json!([{"op": "replace", "path": "/port", "value": range_end}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let config_b = cp.configuration(&b).await;
    let before = latest_sequence(&cp).await;
    let answer = cp
        .patch(
            &path_b,
            &json!([{"op": "replace", "path": "/port", "value": port_a}]),
        )
        .await;
    assert_refused(&cp, &b, answer, &held, (&config_b, before)).await;
    // ... and a's new port is a's: an explicit create on it is refused as well.
    let (status, body) = cp
        .post(
            "/api/server/instances",
            Some(&json!({"name": "c", "serverConfiguration": {"port": range_end}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&a), "{body}");

    // a restarts on its new port.
    let (status, body) = cp
        .post(&format!("/api/server/instances/{a}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, running) = Client::new(format!("http://127.0.0.1:{range_end}"))
        .get("/config")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(running["id"], a.as_str());

    // Simulated instances take no port from the range and need none.
    let sim = cp
        .create(json!({"name": "sim", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = cp
        .put(
            &format!("/api/configuration/instances/{sim}"),
            &json!({"logLevel": "debug"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cp.shutdown().await;
}

// ----- every error is JSON -----------------------------------------------------------------

/// Sends a request and returns the status, the content type and the body as JSON (a
/// body that is not JSON fails the test with what it was).
async fn json_error(
    cp: &TestCp,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = cp
        .http
        .request(method.clone(), format!("{}{path}", cp.base))
        .header("content-type", "application/json");
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{method} {path}: {status} with content type `{content_type}`: {text:?}"
    );
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON ({e}): {text:?}"));
    let error = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path}: no `error` in {value}"));
    assert!(!error.is_empty(), "{method} {path}: empty error");
    (status, headers, error.to_owned())
}

#[tokio::test]
async fn every_error_is_json_with_a_helpful_message() {
    for seed_api_only in [false, true] {
        let cp = TestCp::start_with(|c| c.seed_api_only = seed_api_only).await;
        let id = cp
            .create(json!({"name": "sim", "platformType": "Simulated"}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mode = if seed_api_only { "seed-only" } else { "full" };

        // A body over the limit: 413, saying the limit and what to do.
        let big = {
            let mut body = br#"{"name": "big", "description": ""#.to_vec();
            body.resize(body.len() + 20 * 1024 * 1024, b'x');
            body.extend_from_slice(br#""}"#);
            body
        };
        let (status, _, error) = json_error(
            &cp,
            reqwest::Method::POST,
            "/api/server/instances",
            Some(big),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{mode}: {error}");
        assert!(error.contains("2 MiB"), "{mode}: {error}");
        assert!(error.contains("smaller"), "{mode}: {error}");

        // A method a route does not take: 405, naming the ones it does.
        let (status, headers, error) = json_error(
            &cp,
            reqwest::Method::PUT,
            "/api/server/instances",
            Some(b"{}".to_vec()),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{mode}: {error}");
        assert!(error.contains("PUT"), "{mode}: {error}");
        assert!(
            error.contains("GET") && error.contains("POST"),
            "{mode}: {error}"
        );
        assert!(
            headers.contains_key("allow"),
            "{mode}: the Allow header stays"
        );
        let (status, _, error) = json_error(
            &cp,
            reqwest::Method::GET,
            &format!("/api/server/instances/{id}/start"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{mode}: {error}");
        assert!(error.contains("POST"), "{mode}: {error}");
        if seed_api_only {
            // The seed has no PUT of a configuration.
            let (status, _, error) = json_error(
                &cp,
                reqwest::Method::PUT,
                &format!("/api/configuration/instances/{id}"),
                Some(b"{}".to_vec()),
            )
            .await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{mode}: {error}");
            assert!(error.contains("PATCH"), "{mode}: {error}");
        }

        // An unknown route: 404.
        let (status, _, error) =
            json_error(&cp, reqwest::Method::GET, "/api/no/such/route", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{mode}: {error}");
        assert!(error.contains("/api/no/such/route"), "{mode}: {error}");

        // Malformed JSON: 400 (this already worked).
        let (status, _, error) = json_error(
            &cp,
            reqwest::Method::POST,
            "/api/server/instances",
            Some(b"{\"name\": ".to_vec()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mode}: {error}");
        assert!(error.contains("malformed JSON"), "{mode}: {error}");

        // Successes keep their shapes: the seed's lifecycle answers stay text.
        let (status, answer) = cp
            .post(&format!("/api/server/instances/{id}/start"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        if seed_api_only {
            assert_eq!(
                answer,
                json!(format!("Instance '{id}' started successfully"))
            );
        } else {
            assert_eq!(answer["status"], "Running");
        }
        cp.shutdown().await;
    }
}

#[tokio::test]
async fn a_proxied_answer_is_passed_through_as_is() {
    let cp = TestCp::start().await;
    let id = cp.create(json!({"name": "web"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    let (status, _) = cp
        .put(
            "/api/extensions/endpoints/web",
            &json!({"backends": [{"instanceId": id, "weight": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The stub has no such route and answers an empty 404: that is the backend's answer,
    // not the control plane's error, so it is not rewritten.
    let response = cp
        .http
        .get(format!(
            "{}/api/extensions/endpoints/web/proxy/no-such-route",
            cp.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-setpoint-backend"], id.as_str());
    assert_eq!(response.text().await.unwrap(), "");
    cp.shutdown().await;
}
