//! The change feed over HTTP: ordering, the `after=` cursor, the gap (`truncated`)
//! answer, the seed's `since=` array, filters and long polling.

mod common;

use std::time::{Duration, Instant};

use common::TestCp;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn sequences(page: &Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sequence"].as_u64().unwrap())
        .collect()
}

async fn simulated(cp: &TestCp, name: &str) -> String {
    cp.create(json!({"name": name, "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn changes_are_numbered_in_order_and_the_cursor_returns_the_rest() {
    let cp = TestCp::start().await;
    let id = simulated(&cp, "a").await;
    cp.start(&id).await;
    cp.patch(
        &format!("/api/configuration/instances/{id}"),
        &json!([{"op": "replace", "path": "/logLevel", "value": "debug"}]),
    )
    .await;
    cp.post(&format!("/api/server/instances/{id}/stop"), None)
        .await;

    let page = cp.changes_after(0).await;
    assert_eq!(sequences(&page), vec![1, 2, 3, 4]);
    assert_eq!(page["latestSequence"], 4);
    assert_eq!(page["truncated"], false);
    let statuses: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["Created", "Running", "ConfigurationChanged", "Stopped"]
    );
    let change = &page["changes"][2];
    assert_eq!(change["previousStatus"], "Running");
    assert_eq!(change["instanceId"], id.as_str());
    assert_eq!(change["metadata"]["patchOperations"], "1");
    assert!(change["timestamp"].is_string());

    let rest = cp.changes_after(2).await;
    assert_eq!(sequences(&rest), vec![3, 4]);
    let none = cp.changes_after(4).await;
    assert_eq!(sequences(&none), Vec::<u64>::new());
    assert_eq!(none["latestSequence"], 4);
    assert_eq!(none["truncated"], false);

    let (_, errors) = cp
        .get("/api/status/recent-changes?after=0&statusFilter=Stopped")
        .await;
    assert_eq!(sequences(&errors), vec![4]);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_cursor_older_than_the_buffer_is_answered_truncated() {
    let cp = TestCp::start_with(|c| c.feed_capacity = 5).await;
    let id = simulated(&cp, "a").await;
    for _ in 0..4 {
        cp.start(&id).await;
        cp.post(&format!("/api/server/instances/{id}/stop"), None)
            .await;
    }
    // 1 Created + 8 lifecycle changes = 9; only 5..=9 are retained.
    let page = cp.changes_after(0).await;
    assert_eq!(page["truncated"], true);
    assert_eq!(page["latestSequence"], 9);
    assert_eq!(page["oldestSequence"], 5);
    assert_eq!(sequences(&page), vec![5, 6, 7, 8, 9]);
    assert_eq!(cp.changes_after(3).await["truncated"], true);
    assert_eq!(cp.changes_after(4).await["truncated"], false);
    assert_eq!(cp.changes_after(9).await["truncated"], false);
    // A cursor from the future (a reset control plane) also asks for a resync.
    assert_eq!(cp.changes_after(50).await["truncated"], true);
    cp.shutdown().await;
}

#[tokio::test]
async fn the_since_form_answers_the_seeds_plain_array() {
    let cp = TestCp::start().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let id = simulated(&cp, "a").await;
    cp.start(&id).await;
    let (status, all) = cp
        .get(&format!(
            "/api/status/recent-changes?since={}",
            before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2);
    // The seed's field names are there too.
    assert_eq!(all[1]["newStatus"], "Running");
    assert_eq!(all[1]["oldStatus"], "Created");
    let (_, default_window) = cp.get("/api/status/recent-changes").await;
    assert_eq!(default_window.as_array().unwrap().len(), 2);
    let (_, running) = cp
        .get("/api/status/recent-changes?statusFilter=Running")
        .await;
    assert_eq!(running.as_array().unwrap().len(), 1);
    let (_, future) = cp
        .get("/api/status/recent-changes?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future, json!([]));
    cp.shutdown().await;
}

#[tokio::test]
async fn bad_feed_parameters_are_400_naming_the_parameter() {
    let cp = TestCp::start().await;
    for (query, name) in [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("since=yesterday", "since"),
        ("statusFilter=Sleeping", "statusFilter"),
        ("after=0&wait=forever", "wait"),
    ] {
        let (status, body) = cp.get(&format!("/api/status/recent-changes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"].as_str().unwrap().starts_with(name),
            "{query}: {body}"
        );
    }
    cp.shutdown().await;
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_a_change_arrives() {
    let cp = TestCp::start().await;
    let id = simulated(&cp, "a").await;
    let latest = cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap();

    let client = cp.client.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let (status, page) = client
            .get(&format!(
                "/api/status/recent-changes?after={latest}&wait=20"
            ))
            .await;
        (status, page, started.elapsed())
    });
    // The poll is parked until a change arrives: it has not answered yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the long poll answered without a change"
    );
    cp.start(&id).await;
    let (status, page, elapsed) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sequences(&page), vec![latest + 1]);
    assert_eq!(page["changes"][0]["status"], "Running");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    // Without a change it answers empty when the wait is over.
    let (status, page) = cp
        .get(&format!(
            "/api/status/recent-changes?after={}&wait=0.2",
            latest + 1
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sequences(&page), Vec::<u64>::new());
    cp.shutdown().await;
}

#[tokio::test]
async fn a_long_poll_with_a_filter_ignores_other_changes() {
    let cp = TestCp::start().await;
    let id = simulated(&cp, "a").await;
    let client = cp.client.clone();
    let waiting = tokio::spawn(async move {
        client
            .get("/api/status/recent-changes?after=1&wait=20&statusFilter=Stopped")
            .await
    });
    cp.start(&id).await;
    cp.post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    let (_, page) = waiting.await.unwrap();
    let statuses: Vec<&Value> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["status"])
        .collect();
    assert_eq!(statuses, [&json!("Stopped")]);
    cp.shutdown().await;
}

#[tokio::test]
async fn status_updates_from_daemons_join_the_feed_once_per_change() {
    let cp = TestCp::start().await;
    let id = simulated(&cp, "a").await;
    let update = json!({"instanceId": id, "status": "Running", "source": "docker-daemon",
                        "metadata": {"containerId": "c1"}});
    let (status, first) = cp.post("/api/status/updates", Some(&update)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(first["sequence"], 2);
    // The same status again adds nothing (the seed's rule) but its metadata is kept.
    let again = json!({"instanceId": id, "status": 1, "source": "docker-daemon",
                       "metadata": {"restarts": "0"}});
    let (_, second) = cp.post("/api/status/updates", Some(&again)).await;
    assert_eq!(second["sequence"], Value::Null);
    assert_eq!(cp.changes_after(0).await["latestSequence"], 2);
    let info = cp.runtime(&id).await;
    assert_eq!(info["status"], "Running");
    assert_eq!(info["runtimeMetadata"]["containerId"], "c1");
    assert_eq!(info["runtimeMetadata"]["restarts"], "0");
    let (status, _) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": id, "status": "Error", "source": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    cp.shutdown().await;
}
