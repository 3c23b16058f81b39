//! `enum_as_int` mode: enums are written as the .NET original's integers, and both forms
//! are accepted on input.

mod common;

use common::TestCp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn enums_round_trip_as_integers_and_strings_are_still_accepted() {
    let cp = TestCp::start_with(|c| c.enum_as_int = true).await;

    let sim = cp.create(json!({"name": "sim", "platformType": 3})).await;
    assert_eq!(sim["platformType"], 3);
    assert_eq!(sim["status"], 0);
    let id = sim["id"].as_str().unwrap().to_owned();
    let process = cp
        .create(json!({"name": "proc", "platformType": "Process"}))
        .await;
    assert_eq!(process["platformType"], 0);

    let (_, list) = cp.get("/api/server/instances").await;
    let kinds: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["platformType"].as_i64().unwrap())
        .collect();
    assert_eq!(kinds, [3, 0]);

    // Integer and string statuses are both accepted.
    let (status, _) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": id, "status": 1, "source": "daemon"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = cp
        .post(
            "/api/status/updates",
            Some(&json!({"instanceId": id, "status": "Stopped", "source": "daemon"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    cp.patch(
        &format!("/api/configuration/instances/{id}"),
        &json!([{"op": "replace", "path": "/logLevel", "value": "debug"}]),
    )
    .await;

    let info = cp.runtime(&id).await;
    assert_eq!(info["status"], 4);
    let page = cp.changes_after(2).await;
    let change = &page["changes"][0];
    assert_eq!(change["status"], 1);
    assert_eq!(change["previousStatus"], 0);
    assert_eq!(change["newStatus"], 1);
    assert_eq!(change["oldStatus"], 0);
    let statuses: Vec<i64> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [1, 2, 4]);

    let (_, seed_form) = cp.get("/api/status/recent-changes").await;
    assert!(
        seed_form
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"].is_i64())
    );
    for filter in ["2", "Stopped"] {
        let (_, filtered) = cp
            .get(&format!(
                "/api/status/recent-changes?after=0&statusFilter={filter}"
            ))
            .await;
        let only: Vec<i64> = filtered["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_i64().unwrap())
            .collect();
        assert_eq!(only, [2], "statusFilter={filter}");
    }
    let (_, info) = cp.get("/api/extensions/info").await;
    assert_eq!(info["enumAsInt"], true);
    // The configuration is user data: never rewritten.
    assert_eq!(cp.configuration(&id).await["logLevel"], "debug");
    cp.shutdown().await;
}

#[tokio::test]
async fn string_mode_writes_strings_and_accepts_integers() {
    let cp = TestCp::start().await;
    let sim = cp.create(json!({"name": "sim", "platformType": 3})).await;
    assert_eq!(sim["platformType"], "Simulated");
    assert_eq!(sim["status"], "Created");
    let id = sim["id"].as_str().unwrap();
    cp.post(
        "/api/status/updates",
        Some(&json!({"instanceId": id, "status": 3, "source": "daemon"})),
    )
    .await;
    assert_eq!(cp.runtime(id).await["status"], "Error");
    cp.shutdown().await;
}
