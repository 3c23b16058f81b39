//! Daemon settings: one [`Settings`] struct from defaults, a TOML file, `SETPOINT_…`
//! environment variables and command-line flags, in rising precedence.
//!
//! Start reading at [`Settings::load`]; the defaults live in the `Default` impls right below
//! the section structs, each with the reason for its value, and [`reference`] is the table
//! of every setting (key, environment variable, default, meaning) that the README and
//! `setpoint config --help` print, so the documentation cannot drift from the code.
//!
//! Every setting is addressed by its key path (`controller.resync_interval`). In the file it
//! is that key in that table; as an environment variable it is `SETPOINT_` followed by the
//! key path in upper case with `.` turned into `_` (`SETPOINT_CONTROLLER_RESYNC_INTERVAL`);
//! as a flag the CLI passes it through [`Overrides`]. Durations are written as humantime
//! strings (`"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`).
//!
//! A malformed value is an error naming where it came from, the key, and what was expected:
//! `SETPOINT_CONTROLLER_RESYNC_INTERVAL: expected a duration like "30s", got "abc"`. So is an
//! unknown key in the file, and an unknown variable under a settings section's prefix
//! (`SETPOINT_CONTROLLER_…`, `SETPOINT_ADMIN_…`): an operator who mistypes a variable would
//! otherwise run with a default without noticing. Other `SETPOINT_*` variables are left
//! alone, because other tools own them (`SETPOINT_LOG` for the log filter, the reference
//! control plane's `SETPOINT_CP_…`, the tests' `SETPOINT_PLUGIN_DIR`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{self, Policy, Rule};
use crate::queue::{Backoff, QueueSettings};

/// Prefix of every environment variable that names a setting.
pub const ENV_PREFIX: &str = "SETPOINT_";

/// Errors loading settings. Each names the source (file and key path, environment variable
/// or flag) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("configuration file {path} is not valid TOML")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value has the wrong type or format.
    #[error("{origin}: expected {expected}, got {got}")]
    Malformed {
        /// Where the value came from: `FILE: key.path`, `SETPOINT_…` or `--flag`.
        origin: String,
        /// What a valid value looks like.
        expected: &'static str,
        /// The value as given.
        got: String,
    },
    /// A key in the file, or an override, that is not a setting.
    #[error("{origin}: unknown setting `{key}`{}", suggestion(.did_you_mean))]
    UnknownKey {
        /// The file, or `flag`.
        origin: String,
        /// The unknown key path.
        key: String,
        /// The closest known key, if one is close.
        did_you_mean: Option<String>,
    },
    /// An environment variable under a settings section's prefix that is not a setting.
    #[error(
        "unknown environment variable {var}{}; {}",
        suggestion(.did_you_mean),
        known_list(.known)
    )]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The closest known variable, if one is close.
        did_you_mean: Option<String>,
        /// Every variable of the section the name falls under.
        known: Vec<String>,
    },
    /// A rule in `policy.rules` does not have the shape of a rule.
    #[error("{origin}: policy.rules[{index}]: {detail}")]
    MalformedRule {
        /// The file.
        origin: String,
        /// Position of the rule, from 0.
        index: usize,
        /// The parser's complaint (unknown field, wrong type, …).
        detail: String,
    },
    /// Values that are well-formed but cannot work (a concurrency of zero).
    #[error("{key}: {reason}")]
    Invalid {
        /// The key path.
        key: &'static str,
        /// Why the value cannot work, and the value.
        reason: String,
    },
    /// The policy rules are well-formed but invalid (bad glob, duplicate names, …).
    #[error("invalid policy.rules")]
    Policy(#[source] policy::Error),
    /// The `[metrics]` settings are invalid (the error names the key).
    #[error(transparent)]
    Metrics(#[from] crate::metrics_provider::Error),
}

/// Result alias for loading settings.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn suggestion(did_you_mean: &Option<String>) -> String {
    did_you_mean
        .as_ref()
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "this section can only be set in the configuration file".to_owned()
    } else {
        format!("the settings of this section are: {}", known.join(", "))
    }
}

/// Every setting of the daemon. Missing keys take the defaults documented in [`reference`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How to reach the control plane.
    pub control_plane: ControlPlaneSettings,
    /// The reconcile loop.
    pub controller: ControllerSettings,
    /// Plugin loading and sandbox limits.
    pub plugins: PluginSettings,
    /// Durable state.
    pub store: StoreSettings,
    /// The admin HTTP API.
    pub admin: AdminSettings,
    /// Plan only, for every instance: mutating control-plane calls are simulated. A rule's
    /// own `dry_run` can only add to this, never lift it.
    pub dry_run: bool,
    /// Which plugins and gates apply to which instances.
    pub policy: PolicySettings,
    /// Named metric queries for strategies' analysis, and where they run.
    pub metrics: MetricsSettings,
}

/// `[metrics]`: the named queries a strategy may ask for (`metrics.query`), and the
/// provider that runs them (see [`crate::metrics_provider`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// The Prometheus server queries run on.
    pub prometheus: PrometheusSettings,
    /// Query name → PromQL template with `{{instance.id}}`, `{{instance.name}}`,
    /// `{{instance.labels.KEY}}` placeholders.
    pub queries: std::collections::BTreeMap<String, String>,
}

/// `[metrics.prometheus]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusSettings {
    /// Base URL of the Prometheus HTTP API; `None`: no Prometheus.
    pub url: Option<String>,
    /// Timeout of one query.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

impl Default for PrometheusSettings {
    fn default() -> Self {
        PrometheusSettings {
            url: None,
            // An instant query of an error rate answers in milliseconds; 2 s means the
            // server is in trouble, and the strategy's call should not wait longer.
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[control_plane]`: the DRaaS API. Enums that the control plane sends as integers (as the
/// .NET original does) are always accepted, so there is no setting for that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneSettings {
    /// Base URL, scheme and authority.
    pub url: String,
    /// Path prefix of the API routes.
    pub base_path: String,
    /// Timeout of one HTTP request.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Which API the control plane speaks: probe it, or declare it.
    pub api: ControlPlaneApi,
}

/// `control_plane.api`: what the host may ask of the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlaneApi {
    /// Read the extension discovery document (and probe the change feed) once.
    #[default]
    Auto,
    /// The DRaaS seed API exactly: no extension route is ever called, not even to probe.
    Seed,
    /// The reference control plane's API with every extension.
    Reference,
}

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        ControlPlaneSettings {
            // The reference control plane's default listen address, so `setpoint run` works
            // next to it out of the box.
            url: "http://127.0.0.1:5080".to_owned(),
            // DRaaS serves its routes under /api.
            base_path: "/api".to_owned(),
            // Control-plane calls are small JSON requests; 5 s is far above a healthy
            // latency and short enough that a hung server fails a reconcile, not the loop.
            request_timeout: Duration::from_secs(5),
            // Asking is cheap (one request, cached) and right for both APIs.
            api: ControlPlaneApi::Auto,
        }
    }
}

/// `[controller]`: the reconcile loop and its work queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerSettings {
    /// How often every instance is reconciled even without a change event.
    #[serde(with = "duration_text")]
    pub resync_interval: Duration,
    /// Most reconciles running at once.
    pub max_concurrent_reconciles: usize,
    /// A reconcile running longer than this is aborted and retried with backoff.
    #[serde(with = "duration_text")]
    pub reconcile_timeout: Duration,
    /// Retry delay after a first failure; doubles with each consecutive failure.
    #[serde(with = "duration_text")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "duration_text")]
    pub backoff_cap: Duration,
    /// Spread retry delays randomly over half to all of the backoff.
    pub backoff_jitter: bool,
    /// How long shutdown waits for running reconciles before aborting them.
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
    /// Reconcile instances whose status is `Error`.
    pub reconcile_error_instances: bool,
    /// Reconcile instances whose status is `Stopped`.
    pub reconcile_stopped_instances: bool,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            // Change events make most reconciles immediate; the resync catches lost events
            // and out-of-band drift. 30 s bounds how long that drift lives.
            resync_interval: Duration::from_secs(30),
            // Reconciles are I/O bound (control-plane calls, plugin calls behind their own
            // semaphore); 8 keeps a burst from flooding the control plane. Unlike kube-rs,
            // never unbounded.
            max_concurrent_reconciles: 8,
            // Long rollouts do not block a reconcile (strategies requeue), so one reconcile
            // is a few calls; a minute means something hangs.
            reconcile_timeout: Duration::from_secs(60),
            // Retry a transient failure quickly...
            backoff_base: Duration::from_secs(1),
            // ...but a persistently failing instance at most every 5 minutes.
            backoff_cap: Duration::from_secs(5 * 60),
            // Instances failing together (a control-plane outage) should not retry in step.
            backoff_jitter: true,
            // Enough for in-flight control-plane calls to finish (each bounded by
            // request_timeout); a rollout's state is persisted between steps anyway.
            shutdown_grace: Duration::from_secs(30),
            // An instance in Error may be in Error because of its configuration; converging
            // it is how it recovers.
            reconcile_error_instances: true,
            // A stopped instance was usually stopped on purpose; starting it to apply a
            // configuration would override the operator.
            reconcile_stopped_instances: false,
        }
    }
}

impl ControllerSettings {
    /// The work queue settings these controller settings describe.
    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            max_concurrent_reconciles: self.max_concurrent_reconciles,
            reconcile_timeout: self.reconcile_timeout,
            backoff: Backoff {
                base: self.backoff_base,
                cap: self.backoff_cap,
                jitter: self.backoff_jitter,
            },
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// `[plugins]`: where plugins come from and the sandbox's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory of `.wasm` components, watched for changes.
    pub dir: PathBuf,
    /// Time budget of one plugin call.
    #[serde(with = "duration_text")]
    pub call_deadline: Duration,
    /// Linear memory cap of one plugin instance, in bytes.
    pub max_memory_bytes: u64,
    /// Directory of compiled components; `None` means `plugin-cache` next to the state
    /// database (see [`Settings::plugin_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// The program that compiles plugins in a child process
    /// (`crate::runtime::RuntimeConfig::compiler`); not a configuration key: `setpoint
    /// run` sets its own executable, an embedder may set a `setpoint` binary. `None`:
    /// compile in the daemon's process.
    #[serde(skip)]
    pub compiler: Option<PathBuf>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            // Relative to the working directory, like the shipped demo layout.
            dir: PathBuf::from("plugins"),
            // The runtime's own reasoning for these limits lives with the constants.
            call_deadline: crate::runtime::PLUGIN_CALL_DEADLINE,
            max_memory_bytes: crate::runtime::MAX_PLUGIN_MEMORY_BYTES as u64,
            // Derived from store.path so that all state lives in one directory.
            cache_dir: None,
            compiler: None,
        }
    }
}

/// `[store]`: the SQLite state database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Database file (created if missing).
    pub path: PathBuf,
    /// Previous applied configurations kept per instance.
    pub backup_retention: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            // In the working directory, where an operator trying setpoint out will look.
            path: PathBuf::from("setpoint.db"),
            backup_retention: crate::store::DEFAULT_BACKUP_RETENTION,
        }
    }
}

/// `[admin]`: the admin HTTP API (health, metrics, status, approvals).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token required by mutating routes; without one they are refused.
    pub token: Option<String>,
    /// Serve the admin API over TLS with this certificate chain (PEM); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Listen beyond loopback without a token or without TLS all the same: a decision an
    /// operator makes explicitly (a private network, TLS ended by a proxy in front).
    pub allow_insecure_remote: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            // Loopback: the admin API can approve rollouts, so exposing it is a decision.
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            // No token means mutating routes are refused: safe until an operator opts in.
            token: None,
            tls_cert: None,
            tls_key: None,
            allow_insecure_remote: false,
        }
    }
}

impl AdminSettings {
    /// TLS needs both files; beyond loopback the API needs a token and TLS, unless
    /// `allow_insecure_remote` says an operator accepts going without. [`Settings::load`]
    /// checks it, and so does the daemon at start (an embedder's settings too).
    pub fn validate(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(Error::Invalid {
                    key: "admin.tls_key",
                    reason: "must be set with admin.tls_cert: the PEM file of the certificate's private key".to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(Error::Invalid {
                    key: "admin.tls_cert",
                    reason: "must be set with admin.tls_key: the PEM file of the certificate chain"
                        .to_owned(),
                });
            }
            _ => {}
        }
        if self.listen.ip().is_loopback() || self.allow_insecure_remote {
            return Ok(());
        }
        let listen = self.listen;
        if self.token.is_none() {
            return Err(Error::Invalid {
                key: "admin.listen",
                reason: format!(
                    "{listen} is not a loopback address and admin.token is not set: set admin.token (SETPOINT_ADMIN_TOKEN) and admin.tls_cert/admin.tls_key, or listen on 127.0.0.1, or set admin.allow_insecure_remote = true to accept that anyone who reaches {listen} reads the fleet's state"
                ),
            });
        }
        if self.tls_cert.is_none() {
            return Err(Error::Invalid {
                key: "admin.listen",
                reason: format!(
                    "{listen} is not a loopback address and there is no TLS, so the admin token would cross the network in clear text: set admin.tls_cert and admin.tls_key (PEM files), or listen on 127.0.0.1, or set admin.allow_insecure_remote = true (e.g. when a proxy in front ends TLS)"
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("allow_insecure_remote", &self.allow_insecure_remote)
            .finish()
    }
}

/// `[policy]`: the rules of [`crate::policy`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Rules in order; the first that matches an instance wins, then the built-in default.
    pub rules: Vec<Rule>,
}

impl Settings {
    /// Loads settings: defaults, then `file` (if given), then the `SETPOINT_…` variables
    /// among `env`, then `overrides` (flags). Validates the result, including the policy.
    ///
    /// Pass `std::env::vars()` as `env` in the daemon, and a fixed list in tests.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Settings> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Settings::load_text(file.zip(text.as_deref()), env, overrides)
    }

    /// [`Settings::load`] with the file's text already read: `file` is its path (named
    /// in errors) and its text. The settings fuzz target (`fuzz/`) enters here.
    pub fn load_text(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Settings> {
        let mut layered = toml::Table::new();
        if let Some((path, text)) = file {
            layer_file(&mut layered, path, text)?;
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        // Deterministic: the first error reported is the same on every run.
        env.sort();
        for (name, value) in &env {
            layer_env(&mut layered, name, value)?;
        }
        for entry in &overrides.entries {
            let spec = find_spec(&entry.key).ok_or_else(|| Error::UnknownKey {
                origin: entry.flag.clone(),
                key: entry.key.clone(),
                did_you_mean: closest(&entry.key, SPECS.iter().map(|s| s.key)),
            })?;
            set_text(&mut layered, spec, &entry.flag, &entry.value)?;
        }
        let settings: Settings =
            toml::Value::Table(layered)
                .try_into()
                .map_err(|error: toml::de::Error| Error::Malformed {
                    origin: "settings".to_owned(),
                    expected: "values of the documented types",
                    got: error.message().to_owned(),
                })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work, and the policy rules.
    pub fn validate(&self) -> Result<()> {
        let c = &self.controller;
        let positive = [
            (
                "control_plane.request_timeout",
                self.control_plane.request_timeout,
            ),
            ("controller.resync_interval", c.resync_interval),
            ("controller.reconcile_timeout", c.reconcile_timeout),
            ("controller.backoff_base", c.backoff_base),
            ("plugins.call_deadline", self.plugins.call_deadline),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(Error::Invalid {
                    key,
                    reason: "must be greater than zero".to_owned(),
                });
            }
        }
        if c.max_concurrent_reconciles == 0 {
            return Err(Error::Invalid {
                key: "controller.max_concurrent_reconciles",
                reason: "must be at least 1 (0 would never reconcile anything)".to_owned(),
            });
        }
        if c.backoff_cap < c.backoff_base {
            return Err(Error::Invalid {
                key: "controller.backoff_cap",
                reason: format!(
                    "must not be less than controller.backoff_base ({} < {})",
                    humantime::format_duration(c.backoff_cap),
                    humantime::format_duration(c.backoff_base)
                ),
            });
        }
        if self.plugins.max_memory_bytes < MIN_PLUGIN_MEMORY_BYTES {
            return Err(Error::Invalid {
                key: "plugins.max_memory_bytes",
                reason: format!(
                    "must be at least {MIN_PLUGIN_MEMORY_BYTES} (one 64 KiB Wasm page), got {}",
                    self.plugins.max_memory_bytes
                ),
            });
        }
        self.admin.validate()?;
        self.policy().map(drop)
    }

    /// The validated policy of these settings, with the named metric queries.
    pub fn policy(&self) -> Result<Policy> {
        let queries = crate::metrics_provider::MetricQueries::new(&self.metrics)?;
        Ok(Policy::from_rules(self.policy.rules.clone())
            .map_err(Error::Policy)?
            .with_metric_queries(queries))
    }

    /// Where compiled plugins are cached: `plugins.cache_dir`, or `plugin-cache` in the
    /// directory of `store.path`.
    pub fn plugin_cache_dir(&self) -> PathBuf {
        match &self.plugins.cache_dir {
            Some(dir) => dir.clone(),
            None => self
                .store
                .path
                .parent()
                .unwrap_or(Path::new(""))
                .join("plugin-cache"),
        }
    }
}

/// A plugin cannot run with less than one Wasm page of memory.
const MIN_PLUGIN_MEMORY_BYTES: u64 = 64 * 1024;

/// Settings given as command-line flags; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    entries: Vec<Override>,
}

#[derive(Debug, Clone)]
struct Override {
    flag: String,
    key: String,
    value: String,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Overrides::default()
    }

    /// Sets `key` (a key path such as `controller.max_concurrent_reconciles`) to `value`,
    /// written as on the command line. Errors name the flag `--controller-max-concurrent-reconciles`.
    pub fn set(self, key: &str, value: impl Into<String>) -> Self {
        let flag = format!("--{}", key.replace(['.', '_'], "-"));
        self.set_flag(&flag, key, value)
    }

    /// Like [`Overrides::set`], naming the flag as the CLI spells it (e.g. `--dry-run`).
    pub fn set_flag(mut self, flag: &str, key: &str, value: impl Into<String>) -> Self {
        self.entries.push(Override {
            flag: flag.to_owned(),
            key: key.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The type of a setting, which decides how its text is parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Duration,
    Integer,
    Bool,
    Path,
    OptionalPath,
    Url,
    OptionalUrl,
    BasePath,
    SocketAddr,
    Secret,
    Rules,
    Api,
    Queries,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Duration => "a duration like \"30s\"",
            Kind::Integer => "a whole number",
            Kind::Bool => "true or false",
            Kind::Path | Kind::OptionalPath => "a path",
            Kind::Url | Kind::OptionalUrl => {
                "an http:// or https:// URL like \"http://127.0.0.1:8080\""
            }
            Kind::BasePath => "a path starting with \"/\" like \"/api\"",
            Kind::SocketAddr => "an address and port like \"127.0.0.1:9187\"",
            Kind::Secret => "a string",
            Kind::Rules => "an array of [[policy.rules]] tables",
            Kind::Api => "one of \"auto\", \"seed\", \"reference\"",
            Kind::Queries => {
                "a [metrics.queries] table of names to PromQL strings, like error-rate = 'sum(...)'"
            }
        }
    }

    /// Settings too structured for one variable or flag: the file is the place for them.
    fn file_only(self) -> bool {
        matches!(self, Kind::Rules | Kind::Queries)
    }

    /// Parses text from an environment variable or flag. `Ok(None)` unsets the setting (an
    /// empty value for an optional one).
    fn parse_text(self, text: &str) -> Option<Option<toml::Value>> {
        let string = || Some(Some(toml::Value::String(text.to_owned())));
        match self {
            Kind::Duration => humantime::parse_duration(text.trim()).ok().and(string()),
            Kind::Integer => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(|n| Some(toml::Value::Integer(n))),
            Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(Some(toml::Value::Boolean(true))),
                "false" | "0" | "no" | "off" => Some(Some(toml::Value::Boolean(false))),
                _ => None,
            },
            Kind::Path => (!text.is_empty()).then(|| Some(toml::Value::String(text.to_owned()))),
            Kind::OptionalPath | Kind::Secret | Kind::OptionalUrl if text.is_empty() => Some(None),
            Kind::OptionalPath | Kind::Secret => string(),
            Kind::Url | Kind::OptionalUrl => {
                let valid = (text.starts_with("http://") || text.starts_with("https://"))
                    && text
                        .split_once("://")
                        .is_some_and(|(_, rest)| !rest.is_empty());
                valid.then(|| Some(toml::Value::String(text.to_owned())))
            }
            Kind::BasePath => text
                .starts_with('/')
                .then(|| Some(toml::Value::String(text.to_owned()))),
            Kind::SocketAddr => text.trim().parse::<SocketAddr>().ok().and(string()),
            // Rules are too structured for one variable; the file is the place for them.
            Kind::Rules | Kind::Queries => None,
            Kind::Api => matches!(text, "auto" | "seed" | "reference").then(|| string().flatten()),
        }
    }

    /// Checks a value from the file; same rules as text, but typed.
    fn parse_toml(self, value: &toml::Value) -> Option<Option<toml::Value>> {
        match (self, value) {
            (Kind::Integer, toml::Value::Integer(n)) if *n >= 0 => Some(Some(value.clone())),
            (Kind::Bool, toml::Value::Boolean(_)) => Some(Some(value.clone())),
            (Kind::Integer | Kind::Bool | Kind::Rules | Kind::Queries, _) => None,
            (_, toml::Value::String(text)) => self.parse_text(text),
            _ => None,
        }
    }
}

/// One setting: its key path, type and meaning.
#[derive(Debug)]
struct Spec {
    key: &'static str,
    kind: Kind,
    description: &'static str,
    /// Shown instead of the default value when the value alone would not explain it.
    default_note: Option<&'static str>,
}

const fn spec(key: &'static str, kind: Kind, description: &'static str) -> Spec {
    Spec {
        key,
        kind,
        description,
        default_note: None,
    }
}

/// Every setting, in the order of the documentation.
static SPECS: &[Spec] = &[
    spec(
        "control_plane.url",
        Kind::Url,
        "Base URL of the control plane (scheme and authority).",
    ),
    spec(
        "control_plane.base_path",
        Kind::BasePath,
        "Path prefix of the control-plane API routes.",
    ),
    spec(
        "control_plane.request_timeout",
        Kind::Duration,
        "Timeout of one control-plane HTTP request.",
    ),
    spec(
        "control_plane.api",
        Kind::Api,
        "`auto` asks the control plane which extensions it has; `seed` declares the DRaaS seed API (no extension route is called, actual state comes from the applied record); `reference` declares every extension.",
    ),
    spec(
        "controller.resync_interval",
        Kind::Duration,
        "How often every instance is reconciled even without a change event.",
    ),
    spec(
        "controller.max_concurrent_reconciles",
        Kind::Integer,
        "Most reconciles running at once (at least 1).",
    ),
    spec(
        "controller.reconcile_timeout",
        Kind::Duration,
        "A reconcile running longer is aborted and retried with backoff.",
    ),
    spec(
        "controller.backoff_base",
        Kind::Duration,
        "Retry delay after a first failure; doubles with each consecutive failure.",
    ),
    spec(
        "controller.backoff_cap",
        Kind::Duration,
        "Longest retry delay of a failing instance.",
    ),
    spec(
        "controller.backoff_jitter",
        Kind::Bool,
        "Spread retry delays over half to all of the backoff.",
    ),
    spec(
        "controller.shutdown_grace",
        Kind::Duration,
        "How long shutdown waits for running reconciles before aborting them.",
    ),
    spec(
        "controller.reconcile_error_instances",
        Kind::Bool,
        "Reconcile instances whose status is Error.",
    ),
    spec(
        "controller.reconcile_stopped_instances",
        Kind::Bool,
        "Reconcile instances whose status is Stopped.",
    ),
    spec(
        "plugins.dir",
        Kind::Path,
        "Directory of plugin .wasm components, watched for changes.",
    ),
    spec(
        "plugins.call_deadline",
        Kind::Duration,
        "Time budget of one plugin call.",
    ),
    spec(
        "plugins.max_memory_bytes",
        Kind::Integer,
        "Memory cap of one plugin instance, in bytes.",
    ),
    Spec {
        default_note: Some("plugin-cache next to store.path"),
        ..spec(
            "plugins.cache_dir",
            Kind::OptionalPath,
            "Directory of compiled plugins (cached by content digest).",
        )
    },
    spec(
        "store.path",
        Kind::Path,
        "SQLite state database (created if missing).",
    ),
    spec(
        "store.backup_retention",
        Kind::Integer,
        "Previous applied configurations kept per instance.",
    ),
    spec(
        "admin.listen",
        Kind::SocketAddr,
        "Listen address of the admin HTTP API.",
    ),
    Spec {
        default_note: Some("none: mutating routes are refused"),
        ..spec(
            "admin.token",
            Kind::Secret,
            "Bearer token required by mutating admin routes.",
        )
    },
    Spec {
        default_note: Some("none: plain HTTP (loopback only)"),
        ..spec(
            "admin.tls_cert",
            Kind::OptionalPath,
            "Certificate chain (PEM) the admin API serves HTTPS with; needed beyond loopback.",
        )
    },
    Spec {
        default_note: Some("none: plain HTTP"),
        ..spec(
            "admin.tls_key",
            Kind::OptionalPath,
            "Private key (PEM) of admin.tls_cert.",
        )
    },
    spec(
        "admin.allow_insecure_remote",
        Kind::Bool,
        "Let admin.listen be beyond loopback without admin.token or without TLS.",
    ),
    spec(
        "dry_run",
        Kind::Bool,
        "Plan only, for every instance: mutating control-plane calls are simulated.",
    ),
    Spec {
        default_note: Some("no rules: field-diff + restart, no gates"),
        ..spec(
            "policy.rules",
            Kind::Rules,
            "Policy rules, first match wins (file only; see the policy documentation).",
        )
    },
    Spec {
        default_note: Some("none: no Prometheus"),
        ..spec(
            "metrics.prometheus.url",
            Kind::OptionalUrl,
            "Base URL of the Prometheus server that runs metrics.queries.",
        )
    },
    spec(
        "metrics.prometheus.timeout",
        Kind::Duration,
        "Timeout of one Prometheus query (a slower one answers `unavailable`).",
    ),
    Spec {
        default_note: Some("none"),
        ..spec(
            "metrics.queries",
            Kind::Queries,
            "Named PromQL queries strategies may ask for (file only; see docs/metrics-providers.md).",
        )
    },
];

fn find_spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The documentation of one setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingDoc {
    /// Key path in the TOML file, e.g. `controller.resync_interval`.
    pub key: &'static str,
    /// Environment variable, or `None` for settings only the file can hold.
    pub env: Option<String>,
    /// The default, as it would be written in the file.
    pub default: String,
    /// What it does.
    pub description: &'static str,
}

static REFERENCE: LazyLock<Vec<SettingDoc>> = LazyLock::new(|| {
    let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
    SPECS
        .iter()
        .map(|spec| {
            let value = spec
                .key
                .split('.')
                .fold(&defaults, |value, part| &value[part]);
            let default = match (spec.default_note, value) {
                (Some(note), _) => note.to_owned(),
                (None, serde_json::Value::String(text)) => format!("\"{text}\""),
                (None, other) => other.to_string(),
            };
            SettingDoc {
                key: spec.key,
                env: (!spec.kind.file_only()).then(|| env_var(spec.key)),
                default,
                description: spec.description,
            }
        })
        .collect()
});

/// Every setting with its environment variable, default and description.
pub fn reference() -> &'static [SettingDoc] {
    &REFERENCE
}

/// [`reference`] as a Markdown table, for the README and `setpoint config --help`.
pub fn reference_markdown() -> String {
    let mut out =
        String::from("| Key | Environment variable | Default | Description |\n|---|---|---|---|\n");
    for doc in reference() {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            doc.key,
            doc.env
                .as_deref()
                .map(|e| format!("`{e}`"))
                .unwrap_or_else(|| "(file only)".to_owned()),
            doc.default,
            doc.description
        ));
    }
    out
}

fn insert(layered: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    let (sections, leaf) = match key.rsplit_once('.') {
        Some((sections, leaf)) => (Some(sections), leaf),
        None => (None, key),
    };
    // Sections nest (`metrics.prometheus.url`).
    let mut table = layered;
    for section in sections.into_iter().flat_map(|s| s.split('.')) {
        table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("sections are only ever inserted as tables");
    }
    match value {
        Some(value) => {
            table.insert(leaf.to_owned(), value);
        }
        None => {
            table.remove(leaf);
        }
    }
}

fn set_text(layered: &mut toml::Table, spec: &Spec, origin: &str, text: &str) -> Result<()> {
    let value = spec.kind.parse_text(text).ok_or_else(|| Error::Malformed {
        origin: origin.to_owned(),
        expected: spec.kind.expected(),
        got: format!("{text:?}"),
    })?;
    insert(layered, spec.key, value);
    Ok(())
}

fn layer_env(layered: &mut toml::Table, name: &str, value: &str) -> Result<()> {
    if let Some(spec) = SPECS
        .iter()
        .find(|s| !s.kind.file_only() && env_var(s.key) == name)
    {
        return set_text(layered, spec, name, value);
    }
    // Only names under a settings section's prefix are ours (see the module docs).
    let section = SPECS
        .iter()
        .filter_map(|s| s.key.split_once('.').map(|(section, _)| section))
        .find(|section| name.starts_with(&format!("{}_", env_var(section))));
    if let Some(section) = section {
        let known: Vec<String> = SPECS
            .iter()
            .filter(|s| !s.kind.file_only() && s.key.starts_with(&format!("{section}.")))
            .map(|s| env_var(s.key))
            .collect();
        return Err(Error::UnknownEnv {
            var: name.to_owned(),
            did_you_mean: closest(name, known.iter().map(String::as_str)),
            known,
        });
    }
    Ok(())
}

fn layer_file(layered: &mut toml::Table, path: &Path, text: &str) -> Result<()> {
    let file: toml::Table = toml::from_str(text).map_err(|source| Error::ParseFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let origin = path.display().to_string();
    layer_file_table(layered, &origin, "", &file)
}

/// Layer the file's table at key path `prefix` (`""` at the top): settings are set,
/// sections (`controller`, `metrics.prometheus`) are walked into.
fn layer_file_table(
    layered: &mut toml::Table,
    origin: &str,
    prefix: &str,
    table: &toml::Table,
) -> Result<()> {
    let unknown = |key: String| Error::UnknownKey {
        origin: origin.to_owned(),
        did_you_mean: closest(&key, SPECS.iter().map(|s| s.key)),
        key,
    };
    for (name, value) in table {
        let key = format!("{prefix}{name}");
        if let Some(spec) = find_spec(&key) {
            set_file_value(layered, spec, origin, value)?;
            continue;
        }
        let is_section = SPECS.iter().any(|s| s.key.starts_with(&format!("{key}.")));
        if !is_section {
            return Err(unknown(key));
        }
        let section = value.as_table().ok_or_else(|| Error::Malformed {
            origin: format!("{origin}: {key}"),
            expected: "a table",
            got: value.to_string(),
        })?;
        layer_file_table(layered, origin, &format!("{key}."), section)?;
    }
    Ok(())
}

fn set_file_value(
    layered: &mut toml::Table,
    spec: &Spec,
    origin: &str,
    value: &toml::Value,
) -> Result<()> {
    let malformed = || Error::Malformed {
        origin: format!("{origin}: {}", spec.key),
        expected: spec.kind.expected(),
        got: value.to_string(),
    };
    if spec.kind == Kind::Rules {
        let rules = value.as_array().ok_or_else(malformed)?;
        for (index, rule) in rules.iter().enumerate() {
            // Parse each rule alone so the error can say which one is wrong.
            rule.clone()
                .try_into::<Rule>()
                .map_err(|error| Error::MalformedRule {
                    origin: origin.to_owned(),
                    index,
                    detail: error.message().trim().to_owned(),
                })?;
        }
        insert(layered, spec.key, Some(value.clone()));
        return Ok(());
    }
    if spec.kind == Kind::Queries {
        let queries = value.as_table().ok_or_else(malformed)?;
        for (name, query) in queries {
            if !query.is_str() {
                return Err(Error::Malformed {
                    origin: format!("{origin}: {}.{name}", spec.key),
                    expected: "a PromQL string",
                    got: query.to_string(),
                });
            }
        }
        insert(layered, spec.key, Some(value.clone()));
        return Ok(());
    }
    let value = spec.kind.parse_toml(value).ok_or_else(malformed)?;
    insert(layered, spec.key, value);
    Ok(())
}

/// The candidate within a small edit distance of `name`, if any: most mistypes are a
/// letter or two.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    const MAX_DISTANCE: usize = 3;
    candidates
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= MAX_DISTANCE)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Serde for durations as humantime strings (`"30s"`, `"5m"`, `"1h 30m"`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim()).map_err(|_| {
            D::Error::custom(format!("expected a duration like \"30s\", got {text:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn load_file(text: &str) -> Result<Settings> {
        let f = file(text);
        Settings::load(Some(f.path()), env(&[]), &Overrides::new())
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Settings> {
        Settings::load(None, env(vars), &Overrides::new())
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let s = Settings::load(None, env(&[]), &Overrides::new()).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.control_plane.url, "http://127.0.0.1:5080");
        assert_eq!(s.control_plane.base_path, "/api");
        assert_eq!(s.control_plane.request_timeout, Duration::from_secs(5));
        assert_eq!(s.controller.resync_interval, Duration::from_secs(30));
        assert_eq!(s.controller.max_concurrent_reconciles, 8);
        assert_eq!(s.controller.reconcile_timeout, Duration::from_secs(60));
        assert_eq!(s.controller.backoff_base, Duration::from_secs(1));
        assert_eq!(s.controller.backoff_cap, Duration::from_secs(300));
        assert!(s.controller.reconcile_error_instances);
        assert!(!s.controller.reconcile_stopped_instances);
        assert_eq!(s.plugins.dir, PathBuf::from("plugins"));
        assert_eq!(s.plugins.call_deadline, Duration::from_secs(5));
        assert_eq!(s.plugins.max_memory_bytes, 64 * 1024 * 1024);
        assert_eq!(s.plugins.cache_dir, None);
        assert_eq!(s.store.path, PathBuf::from("setpoint.db"));
        assert_eq!(s.store.backup_retention, 5);
        assert_eq!(s.admin.listen.to_string(), "127.0.0.1:9187");
        assert_eq!(s.admin.token, None);
        assert!(!s.dry_run);
        assert!(s.policy.rules.is_empty());
        assert!(s.validate().is_ok(), "defaults must be valid");
    }

    #[test]
    fn file_values_override_defaults() {
        let s = load_file(
            r#"
            dry_run = true
            [control_plane]
            url = "https://draas.example:8443"
            request_timeout = "2s 500ms"
            [controller]
            max_concurrent_reconciles = 2
            backoff_cap = "1m"
            [admin]
            token = "s3cret"
            [[policy.rules]]
            name = "prod"
            match = { labels = { env = "prod" } }
            approval = "before-apply"
            "#,
        )
        .unwrap();
        assert!(s.dry_run);
        assert_eq!(s.control_plane.url, "https://draas.example:8443");
        assert_eq!(s.control_plane.request_timeout, Duration::from_millis(2500));
        assert_eq!(s.controller.max_concurrent_reconciles, 2);
        assert_eq!(s.controller.backoff_cap, Duration::from_secs(60));
        assert_eq!(
            s.controller.resync_interval,
            Duration::from_secs(30),
            "untouched keys keep defaults"
        );
        assert_eq!(s.admin.token.as_deref(), Some("s3cret"));
        assert_eq!(s.policy.rules.len(), 1);
        assert_eq!(
            s.policy().unwrap().rule_names().collect::<Vec<_>>(),
            ["prod", "default"]
        );
    }

    #[test]
    fn precedence_is_flag_over_env_over_file_over_default() {
        let f = file(
            r#"
            [controller]
            max_concurrent_reconciles = 2
            resync_interval = "10s"
            reconcile_timeout = "20s"
            "#,
        );
        let s = Settings::load(
            Some(f.path()),
            env(&[
                ("SETPOINT_CONTROLLER_RESYNC_INTERVAL", "15s"),
                ("SETPOINT_CONTROLLER_MAX_CONCURRENT_RECONCILES", "3"),
                ("PATH", "/usr/bin"),
            ]),
            &Overrides::new().set("controller.max_concurrent_reconciles", "4"),
        )
        .unwrap();
        assert_eq!(
            s.controller.max_concurrent_reconciles, 4,
            "flag beats env and file"
        );
        assert_eq!(
            s.controller.resync_interval,
            Duration::from_secs(15),
            "env beats file"
        );
        assert_eq!(
            s.controller.reconcile_timeout,
            Duration::from_secs(20),
            "file beats default"
        );
        assert_eq!(s.controller.backoff_base, Duration::from_secs(1), "default");
    }

    #[test]
    fn env_vars_cover_every_type() {
        let s = load_env(&[
            ("SETPOINT_CONTROL_PLANE_URL", "http://cp:9000"),
            ("SETPOINT_ADMIN_TOKEN", "t0ken"),
            ("SETPOINT_ADMIN_LISTEN", "0.0.0.0:9999"),
            ("SETPOINT_ADMIN_TLS_CERT", "/etc/setpoint/admin.crt"),
            ("SETPOINT_ADMIN_TLS_KEY", "/etc/setpoint/admin.key"),
            ("SETPOINT_DRY_RUN", "true"),
            ("SETPOINT_CONTROLLER_BACKOFF_JITTER", "0"),
            ("SETPOINT_PLUGINS_CACHE_DIR", "/var/cache/setpoint"),
            ("SETPOINT_STORE_BACKUP_RETENTION", "0"),
        ])
        .unwrap();
        assert_eq!(s.control_plane.url, "http://cp:9000");
        assert_eq!(s.admin.token.as_deref(), Some("t0ken"));
        assert_eq!(s.admin.listen.port(), 9999);
        assert!(s.dry_run);
        assert!(!s.controller.backoff_jitter);
        assert_eq!(s.plugin_cache_dir(), PathBuf::from("/var/cache/setpoint"));
        assert_eq!(s.store.backup_retention, 0);
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token_and_tls_or_an_explicit_allow() {
        let listen = ("SETPOINT_ADMIN_LISTEN", "0.0.0.0:9187");
        let token = ("SETPOINT_ADMIN_TOKEN", "t0ken");
        let cert = ("SETPOINT_ADMIN_TLS_CERT", "/etc/setpoint/admin.crt");
        let key = ("SETPOINT_ADMIN_TLS_KEY", "/etc/setpoint/admin.key");
        let allow = ("SETPOINT_ADMIN_ALLOW_INSECURE_REMOTE", "true");
        let error = load_env(&[listen]).unwrap_err().to_string();
        assert!(
            error.starts_with("admin.listen: 0.0.0.0:9187 is not a loopback address")
                && error.contains("admin.token")
                && error.contains("admin.allow_insecure_remote = true"),
            "{error}"
        );
        let error = load_env(&[listen, token]).unwrap_err().to_string();
        assert!(
            error.contains("admin.tls_cert") && error.contains("admin.allow_insecure_remote"),
            "{error}"
        );
        let error = load_env(&[cert]).unwrap_err().to_string();
        assert!(error.starts_with("admin.tls_key: must be set"), "{error}");
        let error = load_env(&[key]).unwrap_err().to_string();
        assert!(error.starts_with("admin.tls_cert: must be set"), "{error}");
        let s = load_env(&[listen, token, cert, key]).unwrap();
        assert_eq!(
            s.admin.tls_cert.as_deref(),
            Some(Path::new("/etc/setpoint/admin.crt"))
        );
        assert!(
            load_env(&[listen, allow])
                .unwrap()
                .admin
                .allow_insecure_remote
        );
        load_env(&[("SETPOINT_ADMIN_LISTEN", "[::1]:9187")]).unwrap();
        load_env(&[("SETPOINT_ADMIN_LISTEN", "127.0.0.2:9187")]).unwrap();
    }

    #[test]
    fn empty_env_var_unsets_an_optional_setting_from_the_file() {
        let f = file("[admin]\ntoken = \"from-file\"");
        let s = Settings::load(
            Some(f.path()),
            env(&[("SETPOINT_ADMIN_TOKEN", "")]),
            &Overrides::new(),
        )
        .unwrap();
        assert_eq!(s.admin.token, None);
    }

    #[test]
    fn malformed_env_value_names_the_variable_and_the_expectation() {
        let error = load_env(&[("SETPOINT_CONTROLLER_RESYNC_INTERVAL", "abc")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SETPOINT_CONTROLLER_RESYNC_INTERVAL: expected a duration like \"30s\", got \"abc\""
        );
        let error =
            load_env(&[("SETPOINT_CONTROLLER_MAX_CONCURRENT_RECONCILES", "many")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SETPOINT_CONTROLLER_MAX_CONCURRENT_RECONCILES: expected a whole number, got \"many\""
        );
        let error = load_env(&[("SETPOINT_DRY_RUN", "maybe")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SETPOINT_DRY_RUN: expected true or false, got \"maybe\""
        );
        let error = load_env(&[("SETPOINT_ADMIN_LISTEN", "localhost")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SETPOINT_ADMIN_LISTEN: expected an address and port like \"127.0.0.1:9187\", got \"localhost\""
        );
        let error = load_env(&[("SETPOINT_CONTROL_PLANE_URL", "cp:8080")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("SETPOINT_CONTROL_PLANE_URL: expected an http:// or https:// URL")
        );
        let error = load_env(&[("SETPOINT_CONTROL_PLANE_BASE_PATH", "api")]).unwrap_err();
        assert!(error.to_string().contains("a path starting with \"/\""));
    }

    #[test]
    fn malformed_file_value_names_the_file_and_key_path() {
        let f = file("[controller]\nresync_interval = \"abc\"\n");
        let error = Settings::load(Some(f.path()), env(&[]), &Overrides::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: controller.resync_interval: expected a duration like \"30s\", got \"abc\"",
                f.path().display()
            )
        );
        let error = load_file("[controller]\nmax_concurrent_reconciles = \"8\"\n").unwrap_err();
        assert!(
            error.to_string().ends_with(
                "controller.max_concurrent_reconciles: expected a whole number, got \"8\""
            ),
            "{error}"
        );
        let error = load_file("[controller]\nresync_interval = 30\n").unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("expected a duration like \"30s\", got 30"),
            "{error}"
        );
        let error = load_file("controller = 3\n").unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(": controller: expected a table, got 3"),
            "{error}"
        );
    }

    #[test]
    fn malformed_flag_names_the_flag() {
        let error = Settings::load(
            None,
            env(&[]),
            &Overrides::new().set_flag("--dry-run", "dry_run", "sometimes"),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--dry-run: expected true or false, got \"sometimes\""
        );
        let error = Settings::load(
            None,
            env(&[]),
            &Overrides::new().set("controller.reconcile_timeout", "soon"),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--controller-reconcile-timeout: expected a duration")
        );
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it_with_a_suggestion() {
        let error = load_file("[controller]\nmax_concurent_reconciles = 4\n").unwrap_err();
        assert!(
            error.to_string().ends_with(
                ": unknown setting `controller.max_concurent_reconciles` (did you mean controller.max_concurrent_reconciles?)"
            ),
            "{error}"
        );
        let error = load_file("[telemetry]\nenabled = true\n").unwrap_err();
        assert!(
            error.to_string().ends_with(": unknown setting `telemetry`"),
            "{error}"
        );
        let error = load_file("dryrun = true\n").unwrap_err();
        assert!(
            error.to_string().ends_with("(did you mean dry_run?)"),
            "{error}"
        );
    }

    #[test]
    fn unknown_env_var_under_a_settings_section_is_an_error_listing_the_known_ones() {
        let error = load_env(&[("SETPOINT_ADMIN_TOKN", "x")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown environment variable SETPOINT_ADMIN_TOKN (did you mean SETPOINT_ADMIN_TOKEN?); \
             the settings of this section are: SETPOINT_ADMIN_LISTEN, SETPOINT_ADMIN_TOKEN, SETPOINT_ADMIN_TLS_CERT, SETPOINT_ADMIN_TLS_KEY, SETPOINT_ADMIN_ALLOW_INSECURE_REMOTE"
        );
    }

    #[test]
    fn other_tools_setpoint_variables_are_left_alone() {
        let s = load_env(&[
            ("SETPOINT_LOG", "debug"),
            ("SETPOINT_CP_STUB_BIN", "/bin/stub"),
            ("SETPOINT_PLUGIN_DIR", "/tmp/plugins"),
        ])
        .unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn policy_rules_cannot_come_from_the_environment() {
        let error = load_env(&[("SETPOINT_POLICY_RULES", "[]")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown environment variable SETPOINT_POLICY_RULES; this section can only be set in the configuration file"
        );
    }

    #[test]
    fn malformed_rule_names_its_position_and_the_problem() {
        let error = load_file(
            r#"
            [[policy.rules]]
            name = "ok"
            [[policy.rules]]
            name = "typo"
            protect = true
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(": policy.rules[1]: unknown field `protect`"),
            "{text}"
        );
    }

    #[test]
    fn invalid_policy_fails_at_load_with_the_rule_named() {
        let error = load_file(
            r#"
            [[policy.rules]]
            name = "canary"
            strategy = "canary@latest"
            "#,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "invalid policy.rules");
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(
            cause,
            "rule \"canary\": strategy: invalid plugin reference \"canary@latest\""
        );
    }

    #[test]
    fn values_that_cannot_work_are_rejected_naming_the_key() {
        let error =
            load_env(&[("SETPOINT_CONTROLLER_MAX_CONCURRENT_RECONCILES", "0")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "controller.max_concurrent_reconciles: must be at least 1 (0 would never reconcile anything)"
        );
        let error = load_env(&[("SETPOINT_CONTROLLER_BACKOFF_CAP", "500ms")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "controller.backoff_cap: must not be less than controller.backoff_base (500ms < 1s)"
        );
        let error = load_env(&[("SETPOINT_CONTROLLER_RECONCILE_TIMEOUT", "0s")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "controller.reconcile_timeout: must be greater than zero"
        );
        let error = load_env(&[("SETPOINT_PLUGINS_MAX_MEMORY_BYTES", "1024")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("plugins.max_memory_bytes: must be at least 65536")
        );
    }

    #[test]
    fn missing_or_invalid_file_is_reported_with_its_path() {
        let missing = Path::new("/nonexistent/setpoint.toml");
        let error = Settings::load(Some(missing), env(&[]), &Overrides::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot read configuration file /nonexistent/setpoint.toml"
        );
        let error = load_file("[controller\n").unwrap_err();
        assert!(matches!(error, Error::ParseFile { .. }), "{error:?}");
    }

    #[test]
    fn plugin_cache_defaults_next_to_the_state_database() {
        let s = load_env(&[("SETPOINT_STORE_PATH", "/var/lib/setpoint/state.db")]).unwrap();
        assert_eq!(
            s.plugin_cache_dir(),
            PathBuf::from("/var/lib/setpoint/plugin-cache")
        );
        assert_eq!(
            Settings::default().plugin_cache_dir(),
            PathBuf::from("plugin-cache")
        );
    }

    #[test]
    fn controller_settings_become_queue_settings() {
        let queue = Settings::default().controller.queue_settings();
        assert_eq!(queue.max_concurrent_reconciles, 8);
        assert_eq!(queue.reconcile_timeout, Duration::from_secs(60));
        assert_eq!(queue.backoff.base, Duration::from_secs(1));
        assert_eq!(queue.backoff.cap, Duration::from_secs(300));
        assert!(queue.backoff.jitter);
        assert!(crate::queue::WorkQueue::new(queue).is_ok());
    }

    #[test]
    fn admin_token_is_redacted_in_debug_output() {
        let s = load_env(&[("SETPOINT_ADMIN_TOKEN", "hunter2")]).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    /// Dotted paths of every leaf of the serialized settings (arrays are leaves).
    fn leaf_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            // An empty object is a table of names (`metrics.queries`): one setting.
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaf_keys(value, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn reference_documents_every_settings_field_and_nothing_else() {
        let mut fields = Vec::new();
        leaf_keys(
            &serde_json::to_value(Settings::default()).unwrap(),
            "",
            &mut fields,
        );
        fields.sort();
        let mut documented: Vec<String> = reference().iter().map(|d| d.key.to_owned()).collect();
        documented.sort();
        assert_eq!(documented, fields);
        assert!(
            reference()
                .iter()
                .all(|d| !d.description.is_empty() && !d.default.is_empty())
        );
    }

    #[test]
    fn reference_shows_defaults_and_env_vars_as_written() {
        let doc = |key: &str| reference().iter().find(|d| d.key == key).unwrap();
        let resync = doc("controller.resync_interval");
        assert_eq!(
            resync.env.as_deref(),
            Some("SETPOINT_CONTROLLER_RESYNC_INTERVAL")
        );
        assert_eq!(resync.default, "\"30s\"");
        assert_eq!(doc("controller.backoff_cap").default, "\"5m\"");
        assert_eq!(doc("controller.max_concurrent_reconciles").default, "8");
        assert_eq!(
            doc("control_plane.url").env.as_deref(),
            Some("SETPOINT_CONTROL_PLANE_URL")
        );
        assert_eq!(doc("dry_run").env.as_deref(), Some("SETPOINT_DRY_RUN"));
        assert_eq!(doc("policy.rules").env, None);
        let markdown = reference_markdown();
        assert!(
            markdown.contains(
                "| `admin.token` | `SETPOINT_ADMIN_TOKEN` | none: mutating routes are refused |"
            ),
            "{markdown}"
        );
    }

    #[test]
    fn every_documented_env_var_is_accepted() {
        // The reference's own variables, with their documented defaults as values, load.
        let vars: Vec<(String, String)> = reference()
            .iter()
            .filter_map(|d| {
                let env = d.env.clone()?;
                let value = d.default.trim_matches('"').to_owned();
                let value = if value.contains(' ') {
                    String::new()
                } else {
                    value
                };
                Some((env, value))
            })
            .collect();
        let s = Settings::load(None, vars, &Overrides::new()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn metric_queries_load_from_the_file_and_env_and_errors_name_the_key() {
        let q = r#"sum(rate(x_total{instance_id="{{instance.id}}"}[30s]))"#;
        let s = load_file(&format!(
            "[metrics.prometheus]\nurl = \"http://127.0.0.1:9090\"\ntimeout = \"3s\"\n[metrics.queries]\nerror-rate = '{q}'\n"
        ))
        .unwrap();
        assert_eq!(
            s.metrics.prometheus.url.as_deref(),
            Some("http://127.0.0.1:9090")
        );
        assert_eq!(s.metrics.prometheus.timeout, Duration::from_secs(3));
        let policy = s.policy().unwrap();
        assert_eq!(
            policy.metric_queries().names().collect::<Vec<_>>(),
            ["error-rate"]
        );

        let s = load_env(&[
            ("SETPOINT_METRICS_PROMETHEUS_URL", "http://p:9090"),
            ("SETPOINT_METRICS_PROMETHEUS_TIMEOUT", "500ms"),
        ])
        .unwrap();
        assert_eq!(s.metrics.prometheus.url.as_deref(), Some("http://p:9090"));
        assert_eq!(s.metrics.prometheus.timeout, Duration::from_millis(500));

        let error = |text: &str| load_file(text).unwrap_err().to_string();
        let e = error(&format!("[metrics.queries]\nerror-rate = '{q}'\n"));
        assert!(
            e.starts_with("metrics.queries.error-rate: no metric provider"),
            "{e}"
        );
        let e = error(
            "[metrics.prometheus]\nurl = \"http://p\"\n[metrics.queries]\nx = 'up{a=\"{{instance.nam}}\"}'\n",
        );
        assert!(
            e.contains("metrics.queries.x: unknown placeholder `{{instance.nam}}`"),
            "{e}"
        );
        let e = error(
            "[metrics.prometheus]\nurl = \"http://p\"\n[metrics.queries]\nErrorRate = 'up'\n",
        );
        assert!(
            e.starts_with("metrics.queries.ErrorRate: a query name"),
            "{e}"
        );
        let e = error("[metrics.prometheus]\nurl = \"p:9090\"\n");
        assert!(
            e.contains("metrics.prometheus.url: expected an http"),
            "{e}"
        );
        let e = error("[metrics.prometheus]\nurl = \"http://p\"\nuri = 1\n");
        assert!(
            e.contains("unknown setting `metrics.prometheus.uri`"),
            "{e}"
        );
        let e = error("[metrics.queries]\nx = 3\n");
        assert!(
            e.contains("metrics.queries.x: expected a PromQL string"),
            "{e}"
        );
        let e = load_env(&[("SETPOINT_METRICS_QUERIES_X", "up")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SETPOINT_METRICS_PROMETHEUS_URL"), "{e}");
        assert!(
            reference()
                .iter()
                .any(|d| d.key == "metrics.queries" && d.env.is_none())
        );
    }
}
