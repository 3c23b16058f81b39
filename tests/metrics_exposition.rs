//! `/metrics` of a running daemon: the format the scraper negotiates (OpenMetrics when
//! its `Accept` asks for it, the Prometheus text format 0.0.4 otherwise), each body
//! checked by Prometheus's own `promtool`, and every family the README's metrics table
//! lists present in a fresh daemon's output (the table is parsed here, so README and
//! code cannot drift apart).
//!
//! Needs `promtool` (Debian's `prometheus` package): skipped loudly without it unless
//! `CI` is set, then it fails.

use std::io::Write;
use std::process::{Command, Stdio};

use setpoint_tests::prometheus::require_promtool;
use setpoint_tests::workspace_root;
use setpoint_tests::world::World;

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// One row of the README's metrics table: name and type.
fn documented_families() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a `## Metrics` section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `setpoint_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect();
    assert!(rows.len() >= 8, "README's metrics table: {rows:?}");
    rows
}

async fn scrape(world: &World, accept: Option<&str>) -> (String, String) {
    let mut request =
        reqwest::Client::new().get(format!("http://{}/metrics", world.daemon().admin_addr()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// Run `promtool ARGS` with `stdin`; (success, stdout and stderr).
fn promtool(bin: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether `body` has the family `name` of `kind` with at least one sample. `name` is
/// how the README (and the 0.0.4 format) names it; OpenMetrics names a counter family
/// without `_total`.
fn has_family(body: &str, name: &str, kind: &str, openmetrics: bool) -> bool {
    let family = if openmetrics && kind == "counter" {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    };
    let sample = if kind == "histogram" {
        format!("{name}_count")
    } else {
        name.to_owned()
    };
    body.lines().any(|l| l == format!("# TYPE {family} {kind}"))
        && body.lines().any(|l| {
            l.strip_prefix(sample.as_str())
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_served_in_the_negotiated_format_with_every_documented_family() {
    let Some(promtool_bin) = require_promtool() else {
        return;
    };
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let families = documented_families();

    // No Accept header, or plain text: the Prometheus text format 0.0.4.
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (content_type, body) = scrape(&world, accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "Accept {accept:?}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        let (ok, report) = promtool(&promtool_bin, &["check", "metrics"], &body);
        assert!(
            ok,
            "promtool check metrics (Accept {accept:?}):\n{report}\n---\n{body}"
        );
        for (name, kind) in &families {
            assert!(
                has_family(&body, name, kind, false),
                "README lists {name} ({kind}); a fresh daemon's 0.0.4 output lacks it:\n{body}"
            );
        }
    }

    // OpenMetrics when asked for, as Prometheus asks.
    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text; version=1.0.0",
    ] {
        let (content_type, body) = scrape(&world, Some(accept)).await;
        assert_eq!(
            content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "Accept {accept}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        // `promtool check metrics` lints the 0.0.4 format only (it reads an OpenMetrics
        // counter family as a family without samples); promtool's OpenMetrics parser is
        // its backfill, which wants a timestamp on every sample.
        let stamped: String = body
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("{l}\n")
                } else {
                    format!("{l} 1700000000\n")
                }
            })
            .collect();
        let out = tempfile::tempdir().unwrap();
        let input = out.path().join("metrics.om");
        std::fs::write(&input, &stamped).unwrap();
        let blocks = out.path().join("blocks");
        let (ok, report) = promtool(
            &promtool_bin,
            &[
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                input.to_str().unwrap(),
                blocks.to_str().unwrap(),
            ],
            "",
        );
        assert!(
            ok,
            "promtool's OpenMetrics parser (Accept {accept}):\n{report}\n---\n{body}"
        );
        for (name, kind) in &families {
            assert!(
                has_family(&body, name, kind, true),
                "README lists {name} ({kind}); a fresh daemon's OpenMetrics output lacks it:\n{body}"
            );
        }
    }
    world.stop_daemon().await;
}
