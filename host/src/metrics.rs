//! Prometheus metrics of the daemon: reconciles by outcome and their duration, queue
//! depth, drift detected, plugin call duration and failures by plugin.
//!
//! Start at [`Metrics`]; [`Metrics::encode`] renders the text format `/metrics` serves.
//! Names follow Prometheus conventions and are listed in the README.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// `timeout`, `out_of_memory`, `trap`, `plugin_error`.
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
    /// `active`, `rejected`, `superseded`, `retiring`.
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
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            queue_depth,
            drift_detected,
            plugin_call_duration,
            plugin_call_failures,
            plugins,
            denied_calls,
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
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
}
