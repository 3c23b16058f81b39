//! `setpoint-controlplane`: the reference DRaaS (Drasi-as-a-Service) control plane that
//! setpoint reconciles against — the DRaaS REST API with durable SQLite state, a
//! sequence-numbered change feed, RFC 6902 configuration patches, a Process platform
//! that runs real `drasi-stub` processes and a Simulated platform for scale.
//!
//! Embed it with [`serve`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), setpoint_controlplane::ServeError> {
//! use setpoint_controlplane::{ControlPlaneConfig, serve};
//! let dir = std::env::temp_dir().join("cp-demo");
//! let cp = serve(ControlPlaneConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     ..ControlPlaneConfig::in_dir(&dir)
//! })
//! .await?;
//! println!("DRaaS API at {}", cp.base_url());
//! cp.shutdown().await; // stops every instance process
//! # Ok(()) }
//! ```
//!
//! Where to read next: [`service`] (every operation), [`api`] (the routes), [`feed`],
//! [`store`], [`platform::process`].

pub mod api;
pub mod feed;
pub mod model;
pub mod patch;
pub mod platform;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use model::{Instance, InstanceStatus, Labels, PlatformType, RuntimeInfo, StatusChange};
pub use service::{ControlPlane, Error};

/// The default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5080";
/// The default database file.
pub const DEFAULT_DB: &str = "setpoint-controlplane.db";
/// The default runtime directory (instance YAML, logs, pid files).
pub const DEFAULT_RUNTIME_DIR: &str = "setpoint-controlplane-runtime";
/// The default ports for Process instances: below Linux's ephemeral range (32768+), so
/// outgoing connections do not take them.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 18000..=18999;
/// The default number of retained feed changes (the seed's ring buffer size).
pub const DEFAULT_FEED_CAPACITY: usize = 1000;
/// The default time a start waits for the process to answer.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a stop waits after SIGTERM before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shutdown lets requests in flight finish (a start can take up to the start
/// timeout) before it stops the processes anyway.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The stub binary's name.
pub const STUB_BIN_NAME: &str = "drasi-stub";

/// Everything [`serve`] needs. [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// API address; port 0 picks a free one (see [`RunningControlPlane::local_addr`]).
    pub listen: SocketAddr,
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    /// Directory for instance YAML configurations, logs and pid files (created if missing).
    pub runtime_dir: PathBuf,
    /// The `drasi-stub` executable; `None` looks next to the current executable (and
    /// one directory up, for test binaries in `target/*/deps`), then on `PATH`.
    pub stub_bin: Option<PathBuf>,
    /// Ports handed to Process instances.
    pub port_range: RangeInclusive<u16>,
    /// Feed changes retained for `recent-changes` (older cursors get `truncated`).
    pub feed_capacity: usize,
    /// Write enums as integers like the .NET original.
    pub enum_as_int: bool,
    /// Serve only the DRaaS seed's routes and answer shapes (no extensions, no sequence
    /// feed); see [`api::ApiOptions::seed_api_only`].
    pub seed_api_only: bool,
    /// How long a start waits for the process to answer.
    pub start_timeout: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            db_path: DEFAULT_DB.into(),
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
            stub_bin: None,
            port_range: DEFAULT_PORT_RANGE,
            feed_capacity: DEFAULT_FEED_CAPACITY,
            enum_as_int: false,
            seed_api_only: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }
}

impl ControlPlaneConfig {
    /// Defaults with the database and runtime directory inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            db_path: dir.join(DEFAULT_DB),
            runtime_dir: dir.join("runtime"),
            ..Self::default()
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The runtime directory could not be created.
    #[error("cannot create the runtime directory {path}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or read.
    #[error("cannot load the control-plane state")]
    Store(#[from] store::StoreError),
    /// Re-attaching or recording instances found at start-up failed.
    #[error("cannot recover the instances found at start-up")]
    Recover(#[source] service::Error),
    /// The API address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane. [`RunningControlPlane::shutdown`] stops it and its
/// processes; dropping it without a shutdown kills the processes (SIGKILL).
#[derive(Debug)]
pub struct RunningControlPlane {
    local_addr: SocketAddr,
    control_plane: ControlPlane,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

/// Opens the state, recovers instances left running, binds the API and serves it in the
/// background. Returns once the API accepts connections.
pub async fn serve(config: ControlPlaneConfig) -> Result<RunningControlPlane, ServeError> {
    std::fs::create_dir_all(&config.runtime_dir).map_err(|source| ServeError::RuntimeDir {
        path: config.runtime_dir.clone(),
        source,
    })?;
    if let Some(parent) = config
        .db_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| ServeError::RuntimeDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let store = store::Store::open(&config.db_path)?;
    let (exits_tx, mut exits_rx) = mpsc::unbounded_channel();
    let process = platform::ProcessPlatform::new(
        platform::ProcessSettings {
            stub_bin: resolve_stub_bin(config.stub_bin.as_deref()),
            runtime_dir: config.runtime_dir.clone(),
            start_timeout: config.start_timeout,
            stop_timeout: config.stop_timeout,
        },
        exits_tx,
    );
    let control_plane = ControlPlane::new(
        service::Settings {
            port_range: config.port_range.clone(),
        },
        store,
        config.feed_capacity,
        process,
    )
    .map_err(|e| match e {
        Error::Store(e) => ServeError::Store(e),
        other => ServeError::Recover(other),
    })?;
    let monitor = {
        let cp = control_plane.clone();
        tokio::spawn(async move {
            while let Some(event) = exits_rx.recv().await {
                cp.handle_exit(event).await;
            }
        })
    };
    control_plane.recover().await.map_err(ServeError::Recover)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let app = api::router_with(
        control_plane.clone(),
        api::ApiOptions {
            enum_as_int: config.enum_as_int,
            seed_api_only: config.seed_api_only,
        },
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "the API server failed");
        }
    });
    tracing::info!(%local_addr, seed_api_only = config.seed_api_only, "control plane listening");
    Ok(RunningControlPlane {
        local_addr,
        control_plane,
        stop_server: Some(stop_tx),
        server: Some(server),
        monitor: Some(monitor),
    })
}

impl RunningControlPlane {
    /// The bound API address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://{local_addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The control plane, for calls without HTTP.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// Stops serving (ending long polls and letting requests in flight finish, for at
    /// most [`SHUTDOWN_DRAIN_TIMEOUT`]), then stops every instance process (recording
    /// them `Stopped`).
    pub async fn shutdown(mut self) {
        self.control_plane.begin_shutdown();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
        self.control_plane.shutdown().await;
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
    }
}

impl Drop for RunningControlPlane {
    fn drop(&mut self) {
        if self.server.is_some() {
            // Dropped without shutdown (a panicking test, say): leave no process behind.
            self.control_plane.kill_all_now();
            if let Some(stop) = self.stop_server.take() {
                let _ = stop.send(());
            }
            if let Some(monitor) = self.monitor.take() {
                monitor.abort();
            }
        }
    }
}

/// Finds the `drasi-stub` executable: the given path (a bare name is looked up on
/// `PATH`), else next to the current executable or one directory up, else on `PATH`,
/// else the bare name (a start then fails saying the binary is missing).
pub fn resolve_stub_bin(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        if path.components().count() == 1
            && let Some(found) = search_path(&path.to_string_lossy())
        {
            return found;
        }
        return path.to_owned();
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for candidate in [dir.join(STUB_BIN_NAME), dir.join("..").join(STUB_BIN_NAME)] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    search_path(STUB_BIN_NAME).unwrap_or_else(|| PathBuf::from(STUB_BIN_NAME))
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Parses `LOW-HIGH` (inclusive) as a port range.
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH such as 18000-18999, not `{text}`"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| format!("`{low}` is not a port number"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| format!("`{high}` is not a port number"))?;
    if low == 0 || low > high {
        return Err(format!(
            "the range must satisfy 1 <= LOW <= HIGH, not {low}-{high}"
        ));
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_nonsense() {
        assert_eq!(parse_port_range("18000-18999").unwrap(), 18000..=18999);
        assert!(parse_port_range("9-1").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("18000").is_err());
    }
}
