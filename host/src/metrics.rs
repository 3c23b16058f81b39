//! Prometheus metrics of the daemon: reconciles by outcome and their duration, queue
//! depth, drift detected, plugin call duration and failures by plugin.
//!
//! Start at [`Metrics`]. `/metrics` serves what the scraper negotiates:
//! [`Metrics::encode`] renders OpenMetrics text 1.0.0, [`Metrics::encode_prometheus`]
//! the Prometheus text format 0.0.4 ([`wants_openmetrics`] chooses). Names follow
//! Prometheus conventions and are listed in the README; every family there has samples
//! from the start (label sets known up front are registered at zero, and each plugin's
//! call metrics when it loads), so a dashboard or alert need not wait for a first event.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runtime::World;

/// Content type of OpenMetrics text, as `/metrics` serves it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the Prometheus text format 0.0.4, as `/metrics` serves it.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `setpoint_reconciles_total` outcomes.
pub const OUTCOMES: [&str; 7] = [
    "synced",
    "progressing",
    "awaiting_approval",
    "reported",
    "skipped",
    "degraded",
    "error",
];

/// `setpoint_drift_detected_total` classifications.
pub const DRIFT_CLASSIFICATIONS: [&str; 5] =
    ["missing", "drifted", "unwanted", "unmanaged", "orphaned"];

/// `setpoint_plugin_call_failures_total` reasons.
pub const FAILURE_REASONS: [&str; 6] = [
    "timeout",
    "out_of_memory",
    "trap",
    "plugin_error",
    "input_too_large",
    "bad_output",
];

/// Labels of `setpoint_reconciles_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `synced`, `progressing`, `awaiting_approval`, `reported`, `skipped`, `degraded`
    /// or `error`.
    pub outcome: String,
}

/// Labels of the plugin call metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// `name@version`.
    pub plugin: String,
    /// `compare`, `step`, `abort`.
    pub phase: String,
}

/// Labels of `setpoint_plugin_call_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailureLabels {
    /// `name@version`.
    pub plugin: String,
    /// `compare`, `step`, `abort`.
    pub phase: String,
    /// `timeout`, `out_of_memory`, `trap`, `plugin_error`, `input_too_large`,
    /// `bad_output`.
    pub reason: String,
}

/// Labels of `setpoint_drift_detected_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `missing`, `drifted`, `unwanted`, `unmanaged`, `orphaned`.
    pub classification: String,
}

/// Labels of `setpoint_plugins`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginStateLabels {
    /// `active`, `superseded`, `retiring`, `rejected`, `duplicate`.
    pub state: String,
}

/// All metrics of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles finished, by outcome.
    pub reconciles: Family<OutcomeLabels, Counter>,
    /// Reconcile wall time.
    pub reconcile_duration: Histogram,
    /// Keys waiting in the work queue.
    pub queue_depth: Gauge,
    /// Instances found out of their desired state, by classification.
    pub drift_detected: Family<DriftLabels, Counter>,
    /// Plugin call wall time, by plugin and phase.
    pub plugin_call_duration: Family<PluginLabels, Histogram>,
    /// Plugin calls that failed, by plugin, phase and reason.
    pub plugin_call_failures: Family<PluginFailureLabels, Counter>,
    /// Plugin files by state.
    pub plugins: Family<PluginStateLabels, Gauge>,
    /// Control-plane calls a strategy made that were denied as out of scope.
    pub denied_calls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("setpoint");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by outcome",
            reconciles.clone(),
        );
        // 1 ms .. ~65 s: a converged reconcile takes milliseconds, a rollout step seconds.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "reconcile_duration_seconds",
            "Wall time of one reconcile",
            reconcile_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Instances waiting in the work queue",
            queue_depth.clone(),
        );
        let drift_detected = Family::<DriftLabels, Counter>::default();
        registry.register(
            "drift_detected",
            "Reconciles that found an instance out of its desired state, by classification",
            drift_detected.clone(),
        );
        // 10 µs .. ~10 s: a comparator takes microseconds, a budget-killed call seconds.
        let plugin_call_duration = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 21))
        });
        registry.register(
            "plugin_call_duration_seconds",
            "Wall time of one plugin call, by plugin and phase",
            plugin_call_duration.clone(),
        );
        let plugin_call_failures = Family::<PluginFailureLabels, Counter>::default();
        registry.register(
            "plugin_call_failures",
            "Plugin calls that trapped, timed out, ran out of memory or returned an error",
            plugin_call_failures.clone(),
        );
        let plugins = Family::<PluginStateLabels, Gauge>::default();
        registry.register("plugins", "Plugin files by state", plugins.clone());
        let denied_calls = Counter::default();
        registry.register(
            "denied_control_plane_calls",
            "Control-plane calls by strategies that were denied as out of scope",
            denied_calls.clone(),
        );
        let metrics = Metrics {
            registry,
            reconciles,
            reconcile_duration,
            queue_depth,
            drift_detected,
            plugin_call_duration,
            plugin_call_failures,
            plugins,
            denied_calls,
        };
        // The label sets known up front, at zero, so each family is there from the start.
        for outcome in OUTCOMES {
            drop(metrics.reconciles.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
        }
        for classification in DRIFT_CLASSIFICATIONS {
            drop(metrics.drift_detected.get_or_create(&DriftLabels {
                classification: classification.to_owned(),
            }));
        }
        for state in crate::registry::EntryState::NAMES {
            metrics.set_plugins(state, 0);
        }
        metrics
    }

    /// Register a loaded plugin's call metrics at zero (each phase of its kind, each
    /// failure reason), so they are there before its first call or failure.
    pub fn plugin_loaded(&self, plugin: &str, kind: World) {
        let phases: &[&str] = match kind {
            World::Comparator => &["compare"],
            World::Strategy => &["step", "abort"],
        };
        for phase in phases {
            drop(self.plugin_call_duration.get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
                phase: (*phase).to_owned(),
            }));
            for reason in FAILURE_REASONS {
                drop(
                    self.plugin_call_failures
                        .get_or_create(&PluginFailureLabels {
                            plugin: plugin.to_owned(),
                            phase: (*phase).to_owned(),
                            reason: reason.to_owned(),
                        }),
                );
            }
        }
    }

    /// Count a finished reconcile.
    pub fn reconciled(&self, outcome: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    /// Set how many plugin entries are in `state` (`active`, `superseded`, `retiring`,
    /// `rejected`).
    pub fn set_plugins(&self, state: &str, n: usize) {
        self.plugins
            .get_or_create(&PluginStateLabels {
                state: state.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Record one plugin call.
    pub fn plugin_call(&self, plugin: &str, phase: &str, seconds: f64, failure: Option<&str>) {
        self.plugin_call_duration
            .get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
                phase: phase.to_owned(),
            })
            .observe(seconds);
        if let Some(reason) = failure {
            self.plugin_call_failures
                .get_or_create(&PluginFailureLabels {
                    plugin: plugin.to_owned(),
                    phase: phase.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// The OpenMetrics text exposition (1.0.0), ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text exposition (format 0.0.4): [`Metrics::encode`] without what
    /// OpenMetrics adds. A counter family is named as its samples are (`…_total`, where
    /// OpenMetrics names the family without the suffix), and there is no `# UNIT` and no
    /// `# EOF`. Samples and label escaping are the same in both (no exemplars or
    /// `_created` samples are recorded here).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition with counters, gauges
/// and histograms (what [`Metrics`] has).
fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len());
    let counter_name = |name: &str| {
        if name.ends_with("_total") {
            name.to_owned()
        } else {
            format!("{name}_total")
        }
    };
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // HELP comes right before its family's TYPE.
            let counter = lines
                .get(i + 1)
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            let name = if counter {
                counter_name(name)
            } else {
                name.to_owned()
            };
            // 0.0.4 escapes backslash and line feed in help text.
            let help = help.replace('\\', "\\\\");
            out.push_str(&format!("# HELP {name} {help}\n"));
        } else if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            out.push_str(&format!("# TYPE {} counter\n", counter_name(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics over the Prometheus text format: it
/// names `application/openmetrics-text` with a quality above zero and at least that of
/// any text format it accepts (`text/plain`, `text/*`, `*/*`). No header, or one that
/// does not name OpenMetrics, gets the Prometheus text format 0.0.4.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut openmetrics = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        m.reconciled("synced", 0.004);
        m.plugin_call("field-diff@0.1.0", "compare", 0.0001, Some("trap"));
        m.queue_depth.set(3);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in [
            "setpoint_reconciles_total{outcome=\"synced\"} 1",
            "setpoint_reconcile_duration_seconds_count 1",
            "setpoint_queue_depth 3",
            "setpoint_plugin_call_duration_seconds_count{plugin=\"field-diff@0.1.0\",phase=\"compare\"} 1",
            "setpoint_plugin_call_failures_total{plugin=\"field-diff@0.1.0\",phase=\"compare\",reason=\"trap\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn known_label_sets_are_there_at_zero_from_the_start() {
        let m = Metrics::new();
        m.plugin_loaded("restart@0.1.0", World::Strategy);
        let text = m.encode_prometheus();
        for sample in [
            "setpoint_reconciles_total{outcome=\"error\"} 0",
            "setpoint_drift_detected_total{classification=\"orphaned\"} 0",
            "setpoint_plugins{state=\"duplicate\"} 0",
            "setpoint_plugin_call_duration_seconds_count{plugin=\"restart@0.1.0\",phase=\"abort\"} 0",
            "setpoint_plugin_call_failures_total{plugin=\"restart@0.1.0\",phase=\"step\",reason=\"timeout\"} 0",
        ] {
            assert!(text.contains(sample), "missing {sample} in\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_format_names_counter_families_by_their_samples() {
        let m = Metrics::new();
        m.reconciled("synced", 0.004);
        let text = m.encode_prometheus();
        assert!(
            text.contains("# TYPE setpoint_reconciles_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP setpoint_reconciles_total "), "{text}");
        assert!(
            text.contains("# TYPE setpoint_reconcile_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE setpoint_queue_depth gauge\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&m.encode()));
    }

    #[test]
    fn openmetrics_is_served_when_the_accept_header_prefers_it() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0"
        )));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
    }
}
