//! A real Prometheus server for a test: Debian's `prometheus` package (or
//! `PROMETHEUS_BIN`), started on a free loopback port with its own temporary storage,
//! scraping the given targets every second.
//!
//! ```ignore
//! let Some(prometheus) = Prometheus::start(&targets).await else { return };
//! prometheus.scraped(Duration::from_secs(20), &[&port_a, &port_b]).await;
//! ```
//!
//! When the binary is missing the test is skipped with a loud message, unless `CI` is
//! set: then it fails, so a CI machine without Prometheus cannot pass by skipping.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// One scrape target: `host:port`, with extra labels Prometheus attaches to its series.
#[derive(Debug, Clone)]
pub struct Target {
    /// `127.0.0.1:31001`.
    pub address: String,
    /// Labels added to every series scraped from it (`static_configs[].labels`).
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus, stopped (and its storage deleted) when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// Base URL of its HTTP API, `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
}

/// The Prometheus executable: `PROMETHEUS_BIN`, or `prometheus` on `PATH`.
pub fn prometheus_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
}

/// The Prometheus executable, or `None` after a loud "SKIPPED" message when it is
/// missing and `CI` is unset; panics when it is missing and `CI` is set. Call it before
/// setting anything else up, so a skipped test starts nothing.
pub fn require() -> Option<PathBuf> {
    if let Some(bin) = prometheus_bin() {
        return Some(bin);
    }
    let message = "Prometheus is not installed (no `prometheus` on PATH, PROMETHEUS_BIN unset): \
         install it with `apt-get install -y prometheus` (scripts/setup does)";
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set, so this test fails instead of skipping");
    }
    eprintln!(
        "\n==================== SKIPPED ====================\n{message}.\nThis test did NOT run.\n=================================================\n"
    );
    None
}

/// The `promtool` executable (same package): `PROMTOOL_BIN`, or `promtool` on `PATH`.
pub fn promtool_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PROMTOOL_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file())
}

/// `promtool`, or `None` after a loud "SKIPPED" message when it is missing and `CI` is
/// unset; panics when it is missing and `CI` is set (as [`require`]).
pub fn require_promtool() -> Option<PathBuf> {
    if let Some(bin) = promtool_bin() {
        return Some(bin);
    }
    let message = "promtool is not installed (no `promtool` on PATH, PROMTOOL_BIN unset): \
         install it with `apt-get install -y prometheus` (scripts/setup does)";
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set, so this test fails instead of skipping");
    }
    eprintln!(
        "\n==================== SKIPPED ====================\n{message}.\nThis test did NOT run.\n=================================================\n"
    );
    None
}

impl Prometheus {
    /// Start Prometheus scraping `targets` (path `/metrics`, every second) and wait until
    /// it is ready. `None` (after a loud message) when the binary is missing and `CI` is
    /// unset; panics when it is missing and `CI` is set, or when it does not start.
    pub async fn start(targets: &[Target]) -> Option<Prometheus> {
        // JSON is YAML, and serde_json quotes label values of any content correctly.
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|t| {
                let labels: serde_json::Map<String, Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                serde_json::json!({ "targets": [t.address], "labels": labels })
            })
            .collect();
        Self::start_scraping(serde_json::json!({ "static_configs": static_configs })).await
    }

    /// Start Prometheus scraping whatever the HTTP service discovery at `url` lists
    /// (`http_sd_configs`, refreshed every second), as the reference control plane's
    /// `GET /api/extensions/prometheus/targets` serves it. Otherwise as [`Self::start`].
    pub async fn start_discovering(url: &str) -> Option<Prometheus> {
        Self::start_scraping(serde_json::json!({
            "http_sd_configs": [{ "url": url, "refresh_interval": "1s" }],
        }))
        .await
    }

    /// Start Prometheus with one scrape job (`/metrics` every second) whose targets come
    /// from `targets` (the job's `static_configs` or `http_sd_configs`).
    async fn start_scraping(targets: Value) -> Option<Prometheus> {
        let bin = require()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        let mut job = serde_json::json!({ "job_name": "drasi-stub", "metrics_path": "/metrics" });
        job.as_object_mut()
            .unwrap()
            .extend(targets.as_object().unwrap().clone());
        let yaml = serde_json::json!({
            "global": { "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s" },
            "scrape_configs": [job],
        });
        std::fs::write(&config, serde_json::to_string_pretty(&yaml).unwrap()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let prometheus = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Some(prometheus);
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready within 30 s; its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prometheus's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Run an instant query directly (the test's own view, not the daemon's).
    pub async fn query(&self, promql: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Wait until every target has been scraped successfully (`up == 1`) at least
    /// `scrapes` times within `limit`; panics with the targets' state otherwise.
    pub async fn scraped(&self, limit: Duration, targets: &[&str], scrapes: u32) {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = true;
            for target in targets {
                let promql = format!(
                    "count_over_time(up{{instance=\"{target}\"}}[1m]) and up{{instance=\"{target}\"}} == 1"
                );
                let value = self.query(&promql).await.and_then(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                });
                all &= value.is_some_and(|n| n >= f64::from(scrapes));
            }
            if all {
                return;
            }
            if Instant::now() >= deadline {
                let state = self
                    .http
                    .get(format!("{}/api/v1/targets", self.url))
                    .send()
                    .await
                    .ok();
                let state = match state {
                    Some(r) => r.text().await.unwrap_or_default(),
                    None => "(no answer)".into(),
                };
                panic!(
                    "Prometheus did not scrape {targets:?} {scrapes} times within {limit:?}; targets: {state}\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
