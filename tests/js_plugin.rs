//! A comparator written in JavaScript (`examples/js-comparator`, built with componentize-js
//! by `scripts/build-js-plugins`) end to end: `setpoint plugins check` accepts it as a
//! comparator of contract 0.2.0, and the daemon loads it from its plugin directory and
//! judges an instance on the real reference control plane with it, under policy, while
//! the `restart` strategy converges what it reports.
//!
//! The component is about 12 MB (it embeds a JavaScript engine). Compiling it is the
//! expensive part (seconds, and far more memory than a Rust plugin: see `BENCHMARKS.md`,
//! "A JavaScript comparator"), so no time bound here includes a compile, the daemon
//! compiles into the cache shared by the tests (`target/test-plugin-cache`), and the two
//! tests here never compile at the same time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::store::AuditKind;
use setpoint_tests::world::{World, converged, eventually};
use setpoint_tests::{setpoint_bin, workspace_root};

/// Held while a test compiles the component, so two compiles never add up their peaks.
static COMPILING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The JavaScript comparator component: `SETPOINT_JS_PLUGIN` when set, otherwise built
/// (or found up to date, in well under a second) by `scripts/build-js-plugins`.
fn js_comparator() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("SETPOINT_JS_PLUGIN") {
            return PathBuf::from(path);
        }
        let root = workspace_root();
        let status = Command::new(root.join("scripts/build-js-plugins"))
            .arg("js-comparator")
            .status()
            .expect("running scripts/build-js-plugins (needs bash, node >= 18 and npm)");
        assert!(
            status.success(),
            "scripts/build-js-plugins failed: it needs node >= 18, npm and, the first time, the npm registry"
        );
        root.join("target/plugins/js/js-comparator.wasm")
    })
    .clone()
}

#[test]
fn plugins_check_accepts_the_javascript_component_as_a_comparator_of_contract_0_2_0() {
    let file = js_comparator();
    let _compiling = COMPILING.blocking_lock();
    let run = |json: bool| {
        let mut cmd = Command::new(setpoint_bin());
        cmd.args(["plugins", "check"]).arg(&file);
        if json {
            cmd.arg("--json");
        }
        let started = Instant::now();
        let out = cmd
            .env("SETPOINT_LOG", "warn")
            .output()
            .expect("run setpoint plugins check");
        eprintln!(
            "setpoint plugins check{} took {:.1?} (a cold compile)",
            if json { " --json" } else { "" },
            started.elapsed()
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        stdout
    };

    let text = run(false);
    let line = |label: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
            .to_owned()
    };
    assert!(text.lines().next().unwrap().ends_with(": ok"), "{text}");
    assert_eq!(
        line("world:"),
        "comparator (setpoint:plugin/comparator)",
        "{text}"
    );
    assert_eq!(line("contract:"), "setpoint:plugin@0.2.0", "{text}");
    assert_eq!(
        line("exports:"),
        "setpoint:plugin/drift-comparator@0.2.0",
        "{text}"
    );
    // Every WASI feature was disabled at build time: only the contract is imported.
    let imports = line("imports:");
    assert!(
        imports.contains("setpoint:plugin/logging@0.2.0") && !imports.contains("wasi:"),
        "{text}"
    );
    assert!(!text.contains("wasi:"), "{text}");
    assert_eq!(line("name:"), "js-comparator", "{text}");
    assert_eq!(line("version:"), "0.1.0", "{text}");

    let summary: Value = serde_json::from_str(run(true).trim()).expect("--json prints JSON");
    assert_eq!(summary["name"], "js-comparator", "{summary}");
    assert_eq!(summary["kind"], "comparator", "{summary}");
    assert_eq!(summary["world"], "setpoint:plugin/comparator", "{summary}");
    assert_eq!(summary["contract"], "0.2.0", "{summary}");
    assert_eq!(summary["group_rollouts"], false, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_judges_an_instance_with_the_javascript_comparator_and_restart_converges_it() {
    let file = js_comparator();
    let mut world = World::new(&[]).await;
    std::fs::copy(&file, world.plugin_dir().join("js-comparator.wasm")).unwrap();
    let cache = workspace_root().join("target/test-plugin-cache");
    let settings = format!(
        r#"
[plugins]
cache_dir = {cache:?}

[[policy.rules]]
name = "js-judged"
match = {{ labels = {{ compare = "js" }} }}
comparator = "js-comparator"
comparator_params = {{ ignore = ["/host"] }}
strategy = "restart"
"#,
        cache = cache.display().to_string()
    );
    {
        // The component is large (12 MB): not in the cache yet, it is compiled after the
        // daemon has started, and served once loaded; from the cache it loads at start.
        let _compiling = COMPILING.lock().await;
        let started = Instant::now();
        world.start_daemon("1s", &settings).await;
        let ready = started.elapsed();
        eventually(
            Duration::from_secs(600),
            "the daemon to serve js-comparator",
            async || {
                let (code, plugins) = world.admin(false, "/v1/plugins", Value::Null).await;
                code == 200
                    && plugins.as_array().is_some_and(|entries| {
                        entries.iter().any(|e| {
                            e["name"] == "js-comparator"
                                && e["kind"] == "comparator"
                                && e["state"] == "active"
                        })
                    })
            },
        )
        .await;
        eprintln!(
            "daemon with the JavaScript comparator: ready after {ready:.1?}, serving it after {:.1?}",
            started.elapsed()
        );
    }

    let id = world
        .create("judged-by-js", json!({ "compare": "js" }))
        .await;
    converged(&world, &[&id]).await;
    assert!(world.serves(&id, "info").await);

    // One change the comparator reports and one under a path the rule tells it to ignore.
    world
        .patch(
            &id,
            json!([
                { "op": "replace", "path": "/logLevel", "value": "debug" },
                { "op": "replace", "path": "/host", "value": "0.0.0.0" }
            ]),
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the restart strategy to roll out the logLevel the JavaScript comparator reported",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;

    let audit = world.audit(&id);
    // The drift as this comparator words it (field-diff would say `/logLevel: "info" ->
    // "debug"`), and nothing about the ignored path.
    assert!(
        audit
            .iter()
            .any(|(kind, message)| *kind == AuditKind::Observation
                && message.contains(r#"/logLevel changed: "info" -> "debug""#)),
        "no drift reported by js-comparator in the audit: {audit:#?}"
    );
    assert!(
        !audit.iter().any(|(_, m)| m.contains("/host")),
        "the ignored path was reported: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|(kind, message)| *kind == AuditKind::Decision
                && message.contains("with restart@")
                && message.contains("(rule `js-judged`)")),
        "no rollout with restart under the rule: {audit:#?}"
    );
    // What the host started keeps the ignored path as the instance ran it.
    let running = world.stub_config(&id).await.expect("the stub serves");
    assert_eq!(running["host"], "127.0.0.1", "{running:#}");
    world.stop_daemon().await;
}
