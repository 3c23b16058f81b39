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
