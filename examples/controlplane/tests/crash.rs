//! Crash detection: a process that dies by itself becomes `Error` in the feed within two
//! seconds, with its exit code in the metadata.

mod common;

use std::time::Duration;

use common::{TestCp, alive, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The feed entry with `status` for `id` after `after`, if there is one yet.
async fn find_change(cp: &TestCp, after: u64, id: &str, status: &str) -> Option<Value> {
    let page = cp.changes_after(after).await;
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["instanceId"] == id && c["status"] == status)
        .cloned()
}

#[tokio::test]
async fn a_killed_process_becomes_error_in_the_feed_within_two_seconds() {
    let cp = TestCp::start().await;
    let id = cp.create(json!({"name": "victim"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    let pid = cp.pid(&id).await;
    let cursor = cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap();

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let change = eventually(Duration::from_secs(2), "Error in the feed", || {
        find_change(&cp, cursor, &id, "Error")
    })
    .await;

    assert_eq!(change["previousStatus"], "Running");
    assert_eq!(change["source"], "process-monitor");
    assert_eq!(change["metadata"]["exitCode"], "137", "{change}");
    assert_eq!(change["metadata"]["signal"], "9");
    let info = cp.runtime(&id).await;
    assert_eq!(info["status"], "Error");
    assert_eq!(info["runtimeMetadata"]["exitCode"], "137");
    assert!(info["errorMessage"].as_str().unwrap().contains("SIGKILL"));
    assert_eq!(
        cp.get(&format!("/api/server/instances/{id}")).await.1["status"],
        "Error"
    );

    // It can be started again afterwards.
    cp.start(&id).await;
    assert!(alive(cp.pid(&id).await));
    cp.shutdown().await;
}

#[tokio::test]
async fn a_process_that_exits_by_itself_reports_its_exit_code() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "quitter",
                       "serverConfiguration": {"stub": {"exitAfterMs": 300, "exitCode": 3}}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    let change = eventually(Duration::from_secs(3), "Error in the feed", || {
        find_change(&cp, 0, &id, "Error")
    })
    .await;
    assert_eq!(change["metadata"]["exitCode"], "3", "{change}");
    assert!(change["metadata"].get("signal").is_none());
    cp.shutdown().await;
}

#[tokio::test]
async fn a_stop_is_not_reported_as_a_crash() {
    let cp = TestCp::start().await;
    let id = cp.create(json!({"name": "calm"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start(&id).await;
    cp.post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    // Give a wrongly reported exit every chance to arrive: the monitor reports within
    // milliseconds, so a later status update is ordered after it in the feed.
    let (_, accepted) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": id, "status": "Running", "source": "probe"})),
        )
        .await;
    let marker = accepted["sequence"].as_u64().unwrap();
    let page = cp.changes_after(0).await;
    let statuses: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sequence"].as_u64().unwrap() <= marker)
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Created", "Running", "Stopped", "Running"]);
    cp.shutdown().await;
}
