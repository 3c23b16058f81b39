//! Scale benchmark: creates Simulated instances and times listing them over HTTP at
//! 1,000 and 10,000 instances, side by side, so the ratio shows whether listing stays
//! linear.
//!
//! ```sh
//! cargo run --release -p setpoint-controlplane --example scale
//! ```

use std::time::{Duration, Instant};

use setpoint_controlplane::service::CreateInstance;
use setpoint_controlplane::{ControlPlaneConfig, PlatformType, serve};

/// Listings per size; the median is reported.
const ROUNDS: usize = 7;

async fn median_list_time(
    http: &reqwest::Client,
    url: &str,
    expected: usize,
) -> reqwest::Result<Duration> {
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let list: Vec<serde_json::Value> = http.get(url).send().await?.json().await?;
        times.push(started.elapsed());
        assert_eq!(list.len(), expected);
    }
    times.sort();
    Ok(times[ROUNDS / 2])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = serve(ControlPlaneConfig {
        listen: "127.0.0.1:0".parse()?,
        ..ControlPlaneConfig::in_dir(dir.path())
    })
    .await?;
    let cp = running.control_plane().clone();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{}/api/server/instances", running.base_url());

    let mut results = Vec::new();
    let mut created = 0;
    for size in [1_000, 10_000] {
        let started = Instant::now();
        while created < size {
            cp.create(CreateInstance {
                name: format!("sim-{created}"),
                platform_type: Some(PlatformType::Simulated),
                ..CreateInstance::default()
            })?;
            created += 1;
        }
        let create_time = started.elapsed();
        let list_time = median_list_time(&http, &url, size).await?;
        println!(
            "{size:>6} instances: list {list_time:>10.2?} ({:.2} µs/instance), created the last batch in {create_time:.2?}",
            list_time.as_secs_f64() * 1e6 / size as f64
        );
        results.push(list_time);
    }
    println!(
        "ratio list(10k) / list(1k) = {:.1} (10.0 is linear)",
        results[1].as_secs_f64() / results[0].as_secs_f64()
    );
    running.shutdown().await;
    Ok(())
}
