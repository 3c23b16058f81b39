//! `setpoint-controlplane`: parses the command line, serves the reference DRaaS control
//! plane until SIGTERM or Ctrl-C, then stops its instance processes.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use setpoint_controlplane::{
    ControlPlaneConfig, DEFAULT_DB, DEFAULT_LISTEN, DEFAULT_RUNTIME_DIR, parse_port_range, serve,
};

/// The reference DRaaS control plane: REST API, SQLite state, real drasi-stub processes.
///
/// Every flag can also be set with the environment variable shown. Once the API is
/// bound, one line `listening on http://ADDR` is printed to stdout; logs go to stderr
/// (filter with RUST_LOG, default `info`).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address of the API; port 0 picks a free one.
    #[arg(long, env = "SETPOINT_CP_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// SQLite database file (created if missing).
    #[arg(long, env = "SETPOINT_CP_DB", default_value = DEFAULT_DB)]
    db: PathBuf,

    /// Directory for instance YAML configurations, logs and pid files.
    #[arg(long, env = "SETPOINT_CP_RUNTIME_DIR", default_value = DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,

    /// The drasi-stub executable [default: `drasi-stub` next to this executable, else on PATH].
    #[arg(long, env = "SETPOINT_CP_STUB_BIN")]
    stub_bin: Option<PathBuf>,

    /// Ports handed to Process instances, LOW-HIGH inclusive.
    #[arg(long, env = "SETPOINT_CP_PORT_RANGE", default_value = "18000-18999", value_parser = parse_port_range)]
    port_range: RangeInclusive<u16>,

    /// Status changes retained for /api/status/recent-changes (older cursors get `truncated`).
    #[arg(long, env = "SETPOINT_CP_FEED_CAPACITY", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    feed_capacity: u64,

    /// Write enums (status, platformType) as integers like the .NET original.
    #[arg(long, env = "SETPOINT_CP_ENUM_AS_INT", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    enum_as_int: bool,

    /// Serve only the DRaaS seed's routes and answer shapes: no /api/extensions, no
    /// metadata or PUT configuration routes, recent-changes by timestamp only (`after=` is
    /// refused, no long poll).
    #[arg(long, env = "SETPOINT_CP_SEED_API_ONLY", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    seed_api_only: bool,

    /// Seconds a start waits for the instance process to answer.
    #[arg(long, env = "SETPOINT_CP_START_TIMEOUT", default_value_t = 10.0)]
    start_timeout: f64,

    /// Seconds a stop waits after SIGTERM before SIGKILL.
    #[arg(long, env = "SETPOINT_CP_STOP_TIMEOUT", default_value_t = 5.0)]
    stop_timeout: f64,
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        anyhow::anyhow!("--{flag} must be a non-negative number of seconds, not {value}")
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("Caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = ControlPlaneConfig {
        listen: args.listen,
        db_path: args.db,
        runtime_dir: args.runtime_dir,
        stub_bin: args.stub_bin,
        port_range: args.port_range,
        feed_capacity: usize::try_from(args.feed_capacity)?,
        enum_as_int: args.enum_as_int,
        seed_api_only: args.seed_api_only,
        start_timeout: seconds("start-timeout", args.start_timeout)?,
        stop_timeout: seconds("stop-timeout", args.stop_timeout)?,
    };
    let running = serve(config).await?;
    println!("listening on http://{}", running.local_addr());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    running.shutdown().await;
    Ok(())
}
