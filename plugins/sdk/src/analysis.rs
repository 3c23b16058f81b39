//! Error-rate analysis of a clone (and optionally of the original beside it), measured
//! over intervals from two readings of the request counters.
//!
//! Strategies have no clock and never block, so an analysis is a small state machine
//! ([`AnalysisRun`]) the strategy keeps in its state and feeds one [`Reading`] per step
//! call:
//!
//! 1. The first reading is the baseline; the strategy requeues for [`AnalysisSpec::interval`].
//! 2. At the next call (once the interval is over, by `rollout.elapsed_ms`), a reading is
//!    compared with the baseline: `error rate = Δerrors / Δrequests`. That reading is the
//!    baseline of the next interval.
//! 3. Each interval gets a [`Verdict`]:
//!    - **inconclusive** when the clone served fewer than `min_requests` requests in it,
//!      when its counters went backwards (it restarted), or when they could not be read;
//!    - otherwise **fail** when the clone's error rate is above the limit, else **pass**.
//!      The limit is `max_error_rate`; with `compare_with_original`, it is the original's
//!      error rate over the same interval plus `max_error_rate` (the original's rate
//!      counts as 0 when the original served fewer than `max(min_requests, 1)` requests in
//!      the interval). A rate equal to the limit passes.
//! 4. The analysis **passes** once `measurements` intervals passed (not necessarily in a
//!    row); it **fails** once `failure_limit` intervals in a row failed, or once
//!    `inconclusive_limit` intervals (in all) were inconclusive. An inconclusive
//!    interval neither extends nor breaks a run of failures. A pass resets it.
//!
//! With `min_requests: 0`, an interval without requests is judged with an error rate of
//! 0 (it passes): use it where nothing but real traffic reaches the clone and silence is
//! acceptable.
//!
//! ## A named query instead of the counters
//!
//! With `query` (a name policy defines under `[metrics.queries]`, such as a PromQL error
//! rate), each interval is judged by one value of that query for the clone, asked for
//! once the interval is over ([`AnalysisRun::observe_query`]): it **fails** above `max`
//! or below `min` (at least one of the two is required; a value equal to a bound
//! passes), and is **inconclusive** when the query has no value (no samples yet, or
//! 0/0) or could not be run. The query itself decides what too little traffic is, so
//! `min_requests`, `max_error_rate` and `compare_with_original` do not apply to it and
//! are refused beside `query`. `failure_limit`, `measurements` and `inconclusive_limit`
//! count intervals as above. The first interval starts at the first call, so the query
//! is first asked one `interval` after the analysis begins: make the interval at least
//! the query's range plus a scrape interval.
//!
//! ```
//! use setpoint_plugin::analysis::{AnalysisOutcome, AnalysisRun, AnalysisSpec, Reading};
//! use setpoint_plugin::Counters;
//! use std::time::Duration;
//!
//! let spec = AnalysisSpec::new(Duration::from_secs(10), 0.05);
//! let mut run = AnalysisRun::default();
//! let at = |requests, errors| Ok(Reading::clone_only(Counters { requests, errors }));
//! // First call: the baseline, then wait one interval.
//! assert_eq!(run.observe(&spec, 0, at(100, 1)), AnalysisOutcome::Continue { after: Duration::from_secs(10) });
//! // Ten seconds later: 400 requests, 93 errors in the interval.
//! let AnalysisOutcome::Failed { reason, .. } = run.observe(&spec, 10_000, at(500, 94)) else { panic!() };
//! assert_eq!(reason, "analysis failed: clone error rate 0.2325 (93 of 400 requests) > max 0.05 over 10s, 1 of 1 consecutive failures");
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration;
use crate::status::{AnalysisFigures, Verdict};
use crate::{Counters, PluginError};

/// Default of `min_requests`: one request is enough to judge an interval.
pub const DEFAULT_MIN_REQUESTS: u64 = 1;
/// Default of `failure_limit`: the first failed interval fails the analysis.
pub const DEFAULT_FAILURE_LIMIT: u32 = 1;
/// Default of `measurements`: one passing interval passes the analysis.
pub const DEFAULT_MEASUREMENTS: u32 = 1;
/// Default of `inconclusive_limit`: the third inconclusive interval fails the analysis.
pub const DEFAULT_INCONCLUSIVE_LIMIT: u32 = 3;

/// The keys an analysis spec accepts.
pub const SPEC_KEYS: [&str; 10] = [
    "interval",
    "max_error_rate",
    "min_requests",
    "failure_limit",
    "measurements",
    "compare_with_original",
    "inconclusive_limit",
    "query",
    "max",
    "min",
];

/// The keys that belong to the counters' form of an analysis, refused beside `query`.
const COUNTER_KEYS: [&str; 3] = ["max_error_rate", "min_requests", "compare_with_original"];

/// An analysis judged by a named query's value instead of the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryCheck {
    /// The query's name, as policy defines it under `[metrics.queries]`.
    pub name: String,
    /// The highest acceptable value (`max`).
    pub max: Option<f64>,
    /// The lowest acceptable value (`min`).
    pub min: Option<f64>,
}

impl QueryCheck {
    /// `max 0.1`, `min 5`, `min 5, max 10`.
    fn bounds(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("min {}, max {}", rate(min), rate(max)),
            (Some(min), None) => format!("min {}", rate(min)),
            (None, Some(max)) => format!("max {}", rate(max)),
            (None, None) => "no bound".to_owned(),
        }
    }
}

/// What to measure and how to judge it: the parameters of an analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSpec {
    /// How long one measured interval lasts (`interval`, required, above 0).
    pub interval: Duration,
    /// The highest acceptable error rate, 0.0 to 1.0 (`max_error_rate`, required).
    pub max_error_rate: f64,
    /// Fewer requests than this in an interval make it inconclusive (`min_requests`,
    /// default 1; 0 judges an interval without requests as a pass).
    pub min_requests: u64,
    /// Failed intervals in a row that fail the analysis (`failure_limit`, default 1).
    pub failure_limit: u32,
    /// Passing intervals that pass the analysis (`measurements`, default 1).
    pub measurements: u32,
    /// Judge the clone against the original's error rate over the same interval
    /// (`compare_with_original`, default false).
    pub compare_with_original: bool,
    /// Inconclusive intervals (in all) that end the analysis as failed
    /// (`inconclusive_limit`, default 3).
    pub inconclusive_limit: u32,
    /// Judge a named query's value instead of the counters (`query`, with `max` and/or
    /// `min`). With it, `max_error_rate`, `min_requests` and `compare_with_original` are
    /// unused.
    pub query: Option<QueryCheck>,
}

impl AnalysisSpec {
    /// An analysis over `interval` with `max_error_rate` and every other setting at its
    /// default.
    pub fn new(interval: Duration, max_error_rate: f64) -> Self {
        Self {
            interval,
            max_error_rate,
            min_requests: DEFAULT_MIN_REQUESTS,
            failure_limit: DEFAULT_FAILURE_LIMIT,
            measurements: DEFAULT_MEASUREMENTS,
            compare_with_original: false,
            inconclusive_limit: DEFAULT_INCONCLUSIVE_LIMIT,
            query: None,
        }
    }

    /// An analysis over `interval` judged by the named query `name` against `max` and/or
    /// `min`, every other setting at its default.
    pub fn query(interval: Duration, name: &str, max: Option<f64>, min: Option<f64>) -> Self {
        Self {
            query: Some(QueryCheck {
                name: name.to_owned(),
                max,
                min,
            }),
            ..Self::new(interval, 0.0)
        }
    }

    /// Parse the spec given as parameter `name` (a path such as `steps[2].analysis` or
    /// `preview_analysis`): an object with the keys of [`SPEC_KEYS`]. Errors are
    /// [`PluginError::InvalidParams`] naming `name.key`.
    pub fn from_param(name: &str, value: &Value) -> Result<Self, PluginError> {
        let Value::Object(map) = value else {
            return Err(PluginError::invalid_params(format!(
                "parameter `{name}` must be an object like {{\"interval\": \"10s\", \"max_error_rate\": 0.05}}, got {value}"
            )));
        };
        if let Some(unknown) = map.keys().find(|k| !SPEC_KEYS.contains(&k.as_str())) {
            return Err(PluginError::invalid_params(format!(
                "unknown parameter `{name}.{unknown}`; an analysis accepts {}",
                SPEC_KEYS.map(|k| format!("`{k}`")).join(", ")
            )));
        }
        let key = |k: &str| format!("{name}.{k}");
        let interval = match map.get("interval") {
            None | Some(Value::Null) => {
                return Err(PluginError::invalid_params(format!(
                    "parameter `{}` is required (a duration like \"10s\")",
                    key("interval")
                )));
            }
            Some(value) => duration::from_param(&key("interval"), value)?,
        };
        if interval.is_zero() {
            return Err(PluginError::invalid_params(format!(
                "parameter `{}` must be longer than 0",
                key("interval")
            )));
        }
        if let Some(query) = map.get("query").filter(|q| !q.is_null()) {
            let mut spec = Self::query(interval, "", None, None);
            spec.query = Some(query_check(map, name, query)?);
            spec.failure_limit = count(map, name, "failure_limit", DEFAULT_FAILURE_LIMIT)?;
            spec.measurements = count(map, name, "measurements", DEFAULT_MEASUREMENTS)?;
            spec.inconclusive_limit =
                count(map, name, "inconclusive_limit", DEFAULT_INCONCLUSIVE_LIMIT)?;
            return Ok(spec);
        }
        if let Some(bound) = ["max", "min"].into_iter().find(|k| map.contains_key(*k)) {
            return Err(PluginError::invalid_params(format!(
                "parameter `{}` bounds a named query's value and goes with `{}`; the counters' limit is `{}`",
                key(bound),
                key("query"),
                key("max_error_rate")
            )));
        }
        let max_error_rate = match map.get("max_error_rate") {
            Some(Value::Number(n)) => n.as_f64().filter(|r| (0.0..=1.0).contains(r)),
            None | Some(Value::Null) => {
                return Err(PluginError::invalid_params(format!(
                    "parameter `{}` is required (a number from 0.0 to 1.0)",
                    key("max_error_rate")
                )));
            }
            Some(_) => None,
        }
        .ok_or_else(|| {
            PluginError::invalid_params(format!(
                "parameter `{}` must be a number from 0.0 to 1.0, got {}",
                key("max_error_rate"),
                map["max_error_rate"]
            ))
        })?;
        let mut spec = Self::new(interval, max_error_rate);
        spec.min_requests = uint(map, name, "min_requests", 0, DEFAULT_MIN_REQUESTS)?;
        spec.failure_limit = count(map, name, "failure_limit", DEFAULT_FAILURE_LIMIT)?;
        spec.measurements = count(map, name, "measurements", DEFAULT_MEASUREMENTS)?;
        spec.inconclusive_limit =
            count(map, name, "inconclusive_limit", DEFAULT_INCONCLUSIVE_LIMIT)?;
        spec.compare_with_original = match map.get("compare_with_original") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(PluginError::invalid_params(format!(
                    "parameter `{}` must be true or false, got {other}",
                    key("compare_with_original")
                )));
            }
        };
        Ok(spec)
    }

    /// One line for people: `analysis: error rate <= 0.05 over 10s, 1 measurement`.
    pub fn describe(&self) -> String {
        if let Some(check) = &self.query {
            return format!(
                "analysis: query `{}` within {} over {} intervals, {} passing measurement(s) needed",
                check.name,
                check.bounds(),
                duration::format(self.interval),
                self.measurements
            );
        }
        format!(
            "analysis: error rate <= {}{} over {} intervals, {} passing measurement(s) needed",
            rate(self.max_error_rate),
            if self.compare_with_original {
                " above the original's"
            } else {
                ""
            },
            duration::format(self.interval),
            self.measurements
        )
    }
}

/// The query form's keys: `query` (a non-empty name), `max` and/or `min` (finite
/// numbers, `min <= max`), and none of the counters' keys.
fn query_check(
    map: &Map<String, Value>,
    name: &str,
    query: &Value,
) -> Result<QueryCheck, PluginError> {
    let query = query
        .as_str()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .ok_or_else(|| {
            PluginError::invalid_params(format!(
                "parameter `{name}.query` must be the name of a query policy defines under [metrics.queries], like \"error-rate\", got {query}"
            ))
        })?;
    if let Some(counter) = COUNTER_KEYS.iter().find(|k| map.contains_key(**k)) {
        return Err(PluginError::invalid_params(format!(
            "parameter `{name}.{counter}` judges the control plane's counters and does not go with `{name}.query`; \
             bound the query's value with `max`/`min`, and let the query itself answer no value when there is too little traffic"
        )));
    }
    let bound = |k: &str| -> Result<Option<f64>, PluginError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    PluginError::invalid_params(format!(
                        "parameter `{name}.{k}` must be a number, got {value}"
                    ))
                }),
        }
    };
    let (max, min) = (bound("max")?, bound("min")?);
    match (min, max) {
        (None, None) => Err(PluginError::invalid_params(format!(
            "parameter `{name}` needs `max` or `min` (or both) to judge query `{query}` by, like {{\"query\": \"{query}\", \"max\": 0.05}}"
        ))),
        (Some(lo), Some(hi)) if lo > hi => Err(PluginError::invalid_params(format!(
            "parameter `{name}.min` ({lo}) is above `{name}.max` ({hi}): no value could pass"
        ))),
        _ => Ok(QueryCheck {
            name: query.to_owned(),
            max,
            min,
        }),
    }
}

/// An unsigned integer key of an analysis spec, at least `min`.
fn uint(
    map: &Map<String, Value>,
    name: &str,
    key: &str,
    min: u64,
    default: u64,
) -> Result<u64, PluginError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_u64().filter(|n| *n >= min).ok_or_else(|| {
            PluginError::invalid_params(format!(
                "parameter `{name}.{key}` must be an integer of at least {min}, got {value}"
            ))
        }),
    }
}

/// A count key of an analysis spec: an integer from 1 to `u32::MAX`.
fn count(
    map: &Map<String, Value>,
    name: &str,
    key: &str,
    default: u32,
) -> Result<u32, PluginError> {
    let n = uint(map, name, key, 1, u64::from(default))?;
    u32::try_from(n).map_err(|_| {
        PluginError::invalid_params(format!("parameter `{name}.{key}` is too large, got {n}"))
    })
}

/// The counters read at one moment: the clone's, and the original's when comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The clone's counters.
    pub clone: Counters,
    /// The original's counters (read only with `compare_with_original`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Counters>,
}

impl Reading {
    /// A reading of the clone alone.
    pub fn clone_only(clone: Counters) -> Self {
        Self {
            clone,
            original: None,
        }
    }
}

/// The verdict on one interval and the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// How long the interval lasted, in milliseconds.
    pub interval_ms: u64,
    /// Requests the clone served in it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Requests the original served in it, when comparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_requests: Option<u64>,
    /// Of which failed, when comparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_errors: Option<u64>,
    /// The original's error rate, when comparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_error_rate: Option<f64>,
    /// The named query's value for the clone, with a query (`requests` and `errors` are
    /// then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
    /// The verdict in words, with the figures: `clone error rate 0.31 (93 of 300
    /// requests) > max 0.05 over 10s`.
    pub summary: String,
}

impl Measurement {
    fn inconclusive(interval_ms: u64, summary: String) -> Self {
        Self {
            interval_ms,
            requests: 0,
            errors: 0,
            error_rate: 0.0,
            original_requests: None,
            original_errors: None,
            original_error_rate: None,
            value: None,
            verdict: Verdict::Inconclusive,
            summary,
        }
    }
}

/// `errors / requests`, 0 without requests.
fn ratio(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        // Counters far beyond 2^53 lose precision here, which a rate can afford.
        #[allow(clippy::cast_precision_loss)]
        let r = errors as f64 / requests as f64;
        r
    }
}

/// A rate for messages: at most four decimals, no trailing zeros (`0.31`, `0.0005`, `0`).
pub fn rate(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Judge one interval of `interval_ms` from the reading `start` to the reading `end`
/// (the rule is in the [module docs](self)).
pub fn judge(spec: &AnalysisSpec, start: &Reading, end: &Reading, interval_ms: u64) -> Measurement {
    let over = duration::format(Duration::from_millis(interval_ms));
    let (Some(requests), Some(errors)) = (
        end.clone.requests.checked_sub(start.clone.requests),
        end.clone.errors.checked_sub(start.clone.errors),
    ) else {
        return Measurement::inconclusive(
            interval_ms,
            format!("the clone's counters went backwards over {over} (did it restart?)"),
        );
    };
    let original = match (spec.compare_with_original, start.original, end.original) {
        (false, _, _) => None,
        (true, Some(a), Some(b)) => {
            match (
                b.requests.checked_sub(a.requests),
                b.errors.checked_sub(a.errors),
            ) {
                (Some(r), Some(e)) => Some((r, e)),
                _ => {
                    return Measurement::inconclusive(
                        interval_ms,
                        format!(
                            "the original's counters went backwards over {over} (did it restart?)"
                        ),
                    );
                }
            }
        }
        (true, _, _) => {
            return Measurement::inconclusive(
                interval_ms,
                format!("the original's counters were not read over {over}"),
            );
        }
    };
    let error_rate = ratio(errors, requests);
    let mut measurement = Measurement {
        interval_ms,
        requests,
        errors,
        error_rate,
        original_requests: original.map(|(r, _)| r),
        original_errors: original.map(|(_, e)| e),
        original_error_rate: original.map(|(r, e)| ratio(e, r)),
        value: None,
        verdict: Verdict::Pass,
        summary: String::new(),
    };
    if requests < spec.min_requests {
        measurement.verdict = Verdict::Inconclusive;
        measurement.summary = format!(
            "clone served {requests} request(s) over {over}, fewer than min_requests {}",
            spec.min_requests
        );
        return measurement;
    }
    let clone = format!(
        "clone error rate {} ({errors} of {requests} requests)",
        rate(error_rate)
    );
    let (limit, limit_text) = match original {
        None => (
            spec.max_error_rate,
            format!("max {}", rate(spec.max_error_rate)),
        ),
        Some((r, e)) if r >= spec.min_requests.max(1) => {
            let original_rate = ratio(e, r);
            (
                original_rate + spec.max_error_rate,
                format!(
                    "original {} ({e} of {r} requests) + max {}",
                    rate(original_rate),
                    rate(spec.max_error_rate)
                ),
            )
        }
        Some((r, _)) => (
            spec.max_error_rate,
            format!(
                "max {} (the original served {r} request(s), too few to compare)",
                rate(spec.max_error_rate)
            ),
        ),
    };
    if error_rate > limit {
        measurement.verdict = Verdict::Fail;
        measurement.summary = format!("{clone} > {limit_text} over {over}");
    } else {
        measurement.summary = format!("{clone} <= {limit_text} over {over}");
    }
    measurement
}

/// Judge one interval of `interval_ms` by the named query's `value` for the clone
/// (`None`: the query had no value). The rule is in the [module docs](self).
pub fn judge_query(check: &QueryCheck, value: Option<f64>, interval_ms: u64) -> Measurement {
    let over = duration::format(Duration::from_millis(interval_ms));
    let Some(value) = value else {
        return Measurement::inconclusive(
            interval_ms,
            format!(
                "query `{}` had no value for the clone over {over} (no samples yet, or no traffic)",
                check.name
            ),
        );
    };
    let (verdict, summary) = if let Some(max) = check.max.filter(|max| value > *max) {
        (
            Verdict::Fail,
            format!(
                "clone's `{}` {} > max {} over {over}",
                check.name,
                rate(value),
                rate(max)
            ),
        )
    } else if let Some(min) = check.min.filter(|min| value < *min) {
        (
            Verdict::Fail,
            format!(
                "clone's `{}` {} < min {} over {over}",
                check.name,
                rate(value),
                rate(min)
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "clone's `{}` {} within {} over {over}",
                check.name,
                rate(value),
                check.bounds()
            ),
        )
    };
    Measurement {
        value: Some(value),
        verdict,
        summary,
        ..Measurement::inconclusive(interval_ms, String::new())
    }
}

/// What the strategy does after [`AnalysisRun::observe`].
#[derive(Debug, Clone, PartialEq)]
pub enum AnalysisOutcome {
    /// Not decided: call again (with a new reading) after `after`.
    Continue {
        /// When the next reading is due.
        after: Duration,
    },
    /// The analysis passed.
    Passed,
    /// The analysis failed: too many failed intervals in a row (`verdict` `Fail`) or too
    /// many inconclusive ones (`Inconclusive`). `reason` names the figures.
    Failed {
        /// Why, with the figures, for the rollout's failure.
        reason: String,
        /// `Fail` or `Inconclusive`.
        verdict: Verdict,
    },
}

/// An analysis in progress; keep it in the strategy's state between step calls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnalysisRun {
    /// When the current interval started (`rollout.elapsed_ms`); `None` before the
    /// baseline was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_started_ms: Option<u64>,
    /// The reading the current interval is measured from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Reading>,
    /// Intervals measured so far (all verdicts).
    #[serde(default)]
    pub measurements: u32,
    /// Of which passed.
    #[serde(default)]
    pub passes: u32,
    /// Failed intervals in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Inconclusive intervals so far.
    #[serde(default)]
    pub inconclusive: u32,
    /// The last measured interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Measurement>,
    /// How the analysis ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl AnalysisRun {
    /// How long until the next reading is due at `now_ms`; `None`: read now (no
    /// baseline yet, or the interval is over).
    pub fn due_in(&self, spec: &AnalysisSpec, now_ms: u64) -> Option<Duration> {
        let started = self.interval_started_ms?;
        if spec.query.is_none() {
            self.baseline?;
        }
        let end = started.saturating_add(duration::as_millis(spec.interval));
        (now_ms < end).then(|| Duration::from_millis(end - now_ms))
    }

    /// Take `reading` (or why it could not be read) at `now_ms` and say what next.
    ///
    /// Without a baseline the reading becomes it. Before the interval is over the
    /// reading is ignored. Otherwise the interval is judged and the counts updated; the
    /// reading is the next interval's baseline. A reading that failed counts as one
    /// inconclusive interval, and the next reading is measured from the same baseline.
    pub fn observe(
        &mut self,
        spec: &AnalysisSpec,
        now_ms: u64,
        reading: Result<Reading, String>,
    ) -> AnalysisOutcome {
        let interval = spec.interval;
        if let Some(after) = self.due_in(spec, now_ms) {
            return AnalysisOutcome::Continue { after };
        }
        let measurement = match (self.interval_started_ms, self.baseline, reading) {
            (Some(started), Some(baseline), Ok(reading)) => {
                let measurement = judge(spec, &baseline, &reading, now_ms.saturating_sub(started));
                self.baseline = Some(reading);
                self.interval_started_ms = Some(now_ms);
                measurement
            }
            (Some(started), Some(_), Err(why)) => Measurement::inconclusive(
                now_ms.saturating_sub(started),
                format!("the counters could not be read: {why}"),
            ),
            (_, _, Ok(reading)) => {
                self.baseline = Some(reading);
                self.interval_started_ms = Some(now_ms);
                return AnalysisOutcome::Continue { after: interval };
            }
            (_, _, Err(why)) => {
                Measurement::inconclusive(0, format!("the counters could not be read: {why}"))
            }
        };
        self.record(spec, measurement)
    }

    /// Take the named query's value for the clone (or why it could not be read) at
    /// `now_ms` and say what next; for a spec with a `query` (panics without one).
    ///
    /// The first call starts the first interval and ignores `value` (so a strategy may
    /// skip the query then: see [`AnalysisRun::started`]). Before the interval is over the
    /// value is ignored. Otherwise the interval is judged by `value` and the next one
    /// starts; a value that could not be read counts as one inconclusive interval.
    pub fn observe_query(
        &mut self,
        spec: &AnalysisSpec,
        now_ms: u64,
        value: Result<Option<f64>, String>,
    ) -> AnalysisOutcome {
        let check = spec
            .query
            .as_ref()
            .expect("observe_query is for an analysis with a query");
        if let Some(after) = self.due_in(spec, now_ms) {
            return AnalysisOutcome::Continue { after };
        }
        let Some(started) = self.interval_started_ms else {
            self.interval_started_ms = Some(now_ms);
            return AnalysisOutcome::Continue {
                after: spec.interval,
            };
        };
        self.interval_started_ms = Some(now_ms);
        let interval_ms = now_ms.saturating_sub(started);
        let measurement = match value {
            Ok(value) => judge_query(check, value, interval_ms),
            Err(why) => Measurement::inconclusive(
                interval_ms,
                format!("query `{}` could not be read: {why}", check.name),
            ),
        };
        self.record(spec, measurement)
    }

    /// Whether the first interval has started (for a query: whether the next due call
    /// judges a value).
    pub fn started(&self) -> bool {
        self.interval_started_ms.is_some()
    }

    /// Count one measured interval and decide.
    fn record(&mut self, spec: &AnalysisSpec, measurement: Measurement) -> AnalysisOutcome {
        let interval = spec.interval;
        self.measurements += 1;
        let verdict = measurement.verdict;
        let summary = measurement.summary.clone();
        self.last = Some(measurement);
        match verdict {
            Verdict::Pass => {
                self.passes += 1;
                self.consecutive_failures = 0;
                if self.passes >= spec.measurements {
                    self.verdict = Some(Verdict::Pass);
                    return AnalysisOutcome::Passed;
                }
            }
            Verdict::Fail => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= spec.failure_limit {
                    self.verdict = Some(Verdict::Fail);
                    return AnalysisOutcome::Failed {
                        reason: format!(
                            "analysis failed: {summary}, {} of {} consecutive failures",
                            self.consecutive_failures, spec.failure_limit
                        ),
                        verdict: Verdict::Fail,
                    };
                }
            }
            Verdict::Inconclusive => {
                self.inconclusive += 1;
                if self.inconclusive >= spec.inconclusive_limit {
                    self.verdict = Some(Verdict::Inconclusive);
                    return AnalysisOutcome::Failed {
                        reason: format!(
                            "analysis inconclusive: {} of {} allowed inconclusive intervals (inconclusive_limit), the last: {summary}",
                            self.inconclusive, spec.inconclusive_limit
                        ),
                        verdict: Verdict::Inconclusive,
                    };
                }
            }
        }
        AnalysisOutcome::Continue { after: interval }
    }

    /// The figures for the status object ([`crate::RolloutStatus::analysis`]).
    pub fn figures(&self, spec: &AnalysisSpec) -> AnalysisFigures {
        let last = self.last.as_ref();
        let counters = spec.query.is_none();
        AnalysisFigures {
            interval_ms: last.map_or(duration::as_millis(spec.interval), |m| m.interval_ms),
            requests: counters.then(|| last.map_or(0, |m| m.requests)),
            errors: counters.then(|| last.map_or(0, |m| m.errors)),
            error_rate: counters.then(|| last.map_or(0.0, |m| m.error_rate)),
            max_error_rate: counters.then_some(spec.max_error_rate),
            query: spec.query.as_ref().map(|q| q.name.clone()),
            value: last.and_then(|m| m.value),
            max: spec.query.as_ref().and_then(|q| q.max),
            min: spec.query.as_ref().and_then(|q| q.min),
            original_requests: last.and_then(|m| m.original_requests),
            original_errors: last.and_then(|m| m.original_errors),
            original_error_rate: last.and_then(|m| m.original_error_rate),
            consecutive_failures: self.consecutive_failures,
            failure_limit: spec.failure_limit,
            measurements: self.measurements,
            passes: self.passes,
            passes_required: spec.measurements,
            inconclusive: self.inconclusive,
            inconclusive_limit: spec.inconclusive_limit,
            verdict: self.verdict.or(last.map(|m| m.verdict)),
        }
    }

    /// What the analysis waits for, for people: `analysis: measuring interval 2, 10s
    /// each (1 of 3 passes, 0 of 2 failures in a row, 0 of 3 inconclusive), 4s left`.
    pub fn waiting_for(&self, spec: &AnalysisSpec, now_ms: u64) -> String {
        let left = self
            .due_in(spec, now_ms)
            .map_or_else(String::new, |d| format!(", {} left", duration::format(d)));
        format!(
            "analysis: measuring interval {}, {} each ({} of {} passes, {} of {} failures in a row, {} of {} inconclusive){left}",
            self.measurements + 1,
            duration::format(spec.interval),
            self.passes,
            spec.measurements,
            self.consecutive_failures,
            spec.failure_limit,
            self.inconclusive,
            spec.inconclusive_limit,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> AnalysisSpec {
        AnalysisSpec::new(Duration::from_secs(10), 0.05)
    }

    fn at(requests: u64, errors: u64) -> Result<Reading, String> {
        Ok(Reading::clone_only(Counters { requests, errors }))
    }

    fn both(clone: (u64, u64), original: (u64, u64)) -> Result<Reading, String> {
        Ok(Reading {
            clone: Counters {
                requests: clone.0,
                errors: clone.1,
            },
            original: Some(Counters {
                requests: original.0,
                errors: original.1,
            }),
        })
    }

    const WAIT: AnalysisOutcome = AnalysisOutcome::Continue {
        after: Duration::from_secs(10),
    };

    #[test]
    fn parses_a_spec_with_defaults_and_names_bad_keys() {
        let spec =
            AnalysisSpec::from_param("a", &json!({"interval": "10s", "max_error_rate": 0.05}))
                .unwrap();
        assert_eq!(spec, AnalysisSpec::new(Duration::from_secs(10), 0.05));
        let full = AnalysisSpec::from_param(
            "a",
            &json!({"interval": 500, "max_error_rate": 0, "min_requests": 0, "failure_limit": 2,
                    "measurements": 3, "compare_with_original": true, "inconclusive_limit": 4}),
        )
        .unwrap();
        assert_eq!(full.interval, Duration::from_millis(500));
        assert_eq!(
            (
                full.min_requests,
                full.failure_limit,
                full.measurements,
                full.inconclusive_limit
            ),
            (0, 2, 3, 4)
        );
        assert!(full.compare_with_original);

        for (value, named) in [
            (json!("10s"), "`steps[1].analysis`"),
            (
                json!({"max_error_rate": 0.1}),
                "`steps[1].analysis.interval`",
            ),
            (
                json!({"interval": "0s", "max_error_rate": 0.1}),
                "`steps[1].analysis.interval`",
            ),
            (
                json!({"interval": "ten", "max_error_rate": 0.1}),
                "`steps[1].analysis.interval`",
            ),
            (
                json!({"interval": "1s"}),
                "`steps[1].analysis.max_error_rate`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 1.5}),
                "`steps[1].analysis.max_error_rate`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": "5%"}),
                "`steps[1].analysis.max_error_rate`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "failure_limit": 0}),
                "`steps[1].analysis.failure_limit`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "measurements": -1}),
                "`steps[1].analysis.measurements`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "min_requests": 1.5}),
                "`steps[1].analysis.min_requests`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "compare_with_original": "yes"}),
                "`steps[1].analysis.compare_with_original`",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "max_errors": 1}),
                "`steps[1].analysis.max_errors`",
            ),
        ] {
            let Err(PluginError::InvalidParams(message)) =
                AnalysisSpec::from_param("steps[1].analysis", &value)
            else {
                panic!("{value} should be refused");
            };
            assert!(message.contains(named), "{value}: {message}");
        }
    }

    #[test]
    fn one_failed_interval_fails_by_default_naming_the_figures() {
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec(), 1_000, at(0, 0)), WAIT);
        assert_eq!(run.due_in(&spec(), 5_000), Some(Duration::from_secs(6)));
        // Too early: ignored.
        assert_eq!(
            run.observe(&spec(), 5_000, at(1, 1)),
            AnalysisOutcome::Continue {
                after: Duration::from_secs(6)
            }
        );
        let outcome = run.observe(&spec(), 11_000, at(300, 93));
        assert_eq!(
            outcome,
            AnalysisOutcome::Failed {
                reason: "analysis failed: clone error rate 0.31 (93 of 300 requests) > max 0.05 over 10s, 1 of 1 consecutive failures".into(),
                verdict: Verdict::Fail,
            }
        );
        let figures = run.figures(&spec());
        assert_eq!(
            (figures.requests, figures.errors, figures.measurements),
            (Some(300), Some(93), 1)
        );
        assert_eq!(figures.verdict, Some(Verdict::Fail));
    }

    #[test]
    fn passes_after_enough_passing_intervals_and_a_pass_resets_failures() {
        let spec = AnalysisSpec {
            failure_limit: 2,
            measurements: 2,
            ..spec()
        };
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, at(0, 0)), WAIT);
        assert_eq!(run.observe(&spec, 10_000, at(100, 10)), WAIT); // fail 1 of 2
        assert_eq!(run.consecutive_failures, 1);
        assert_eq!(run.observe(&spec, 20_000, at(200, 15)), WAIT); // pass (0.05 is within)
        assert_eq!(run.consecutive_failures, 0);
        assert_eq!(run.observe(&spec, 30_000, at(300, 25)), WAIT); // fail 1 of 2
        assert_eq!(
            run.observe(&spec, 40_000, at(400, 25)),
            AnalysisOutcome::Passed
        );
        assert_eq!(run.figures(&spec).verdict, Some(Verdict::Pass));
        assert_eq!((run.measurements, run.passes), (4, 2));
    }

    #[test]
    fn too_few_requests_is_inconclusive_until_the_limit() {
        let spec = AnalysisSpec {
            min_requests: 10,
            failure_limit: 2,
            ..spec()
        };
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, at(0, 0)), WAIT);
        assert_eq!(run.observe(&spec, 10_000, at(5, 5)), WAIT); // inconclusive 1
        assert_eq!(run.observe(&spec, 20_000, at(105, 55)), WAIT); // fail 1 of 2
        assert_eq!(run.observe(&spec, 30_000, at(105, 55)), WAIT); // inconclusive 2: streak kept
        assert_eq!(run.consecutive_failures, 1);
        let AnalysisOutcome::Failed { reason, verdict } = run.observe(&spec, 40_000, at(106, 55))
        else {
            panic!("the third inconclusive interval ends it");
        };
        assert_eq!(verdict, Verdict::Inconclusive);
        assert_eq!(
            reason,
            "analysis inconclusive: 3 of 3 allowed inconclusive intervals (inconclusive_limit), the last: clone served 1 request(s) over 10s, fewer than min_requests 10"
        );
    }

    #[test]
    fn min_requests_zero_passes_silence() {
        let spec = AnalysisSpec {
            min_requests: 0,
            ..spec()
        };
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, at(0, 0)), WAIT);
        assert_eq!(
            run.observe(&spec, 10_000, at(0, 0)),
            AnalysisOutcome::Passed
        );
    }

    #[test]
    fn unreadable_or_reset_counters_are_inconclusive() {
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec(), 0, Err("down".into())), WAIT);
        assert_eq!(run.inconclusive, 1);
        assert_eq!(run.observe(&spec(), 10_000, at(50, 0)), WAIT); // baseline
        assert_eq!(run.observe(&spec(), 20_000, at(10, 0)), WAIT); // restarted
        assert_eq!(run.inconclusive, 2);
        assert!(
            run.last
                .as_ref()
                .unwrap()
                .summary
                .contains("went backwards")
        );
        // A failed read keeps the baseline: the next reading measures from it.
        assert!(matches!(
            run.observe(&spec(), 30_000, Err("down".into())),
            AnalysisOutcome::Failed {
                verdict: Verdict::Inconclusive,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_read_keeps_the_baseline() {
        let spec = AnalysisSpec {
            inconclusive_limit: 5,
            ..spec()
        };
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, at(0, 0)), WAIT);
        assert_eq!(run.observe(&spec, 10_000, Err("timeout".into())), WAIT);
        assert_eq!(run.due_in(&spec, 10_000), None);
        assert_eq!(
            run.observe(&spec, 12_000, at(100, 0)),
            AnalysisOutcome::Passed
        );
        assert_eq!(run.last.as_ref().unwrap().interval_ms, 12_000);
    }

    #[test]
    fn comparing_with_the_original_fails_only_above_its_rate_plus_the_limit() {
        let spec = AnalysisSpec {
            compare_with_original: true,
            failure_limit: 3,
            ..spec()
        };
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, both((0, 0), (0, 0))), WAIT);
        // Clone 0.2, original 0.2: the clone is no worse. Pass.
        assert_eq!(
            run.observe(&spec, 10_000, both((100, 20), (900, 180))),
            AnalysisOutcome::Passed
        );
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe(&spec, 0, both((0, 0), (0, 0))), WAIT);
        // Clone 0.26 > 0.2 + 0.05: fail.
        assert_eq!(
            run.observe(&spec, 10_000, both((100, 26), (900, 180))),
            WAIT
        );
        let last = run.last.clone().unwrap();
        assert_eq!(last.verdict, Verdict::Fail);
        assert_eq!(
            last.summary,
            "clone error rate 0.26 (26 of 100 requests) > original 0.2 (180 of 900 requests) + max 0.05 over 10s"
        );
        assert_eq!(last.original_error_rate, Some(0.2));
        // The original served nothing: the absolute limit applies.
        assert_eq!(
            run.observe(&spec, 20_000, both((200, 36), (900, 180))),
            WAIT
        );
        let last = run.last.clone().unwrap();
        assert_eq!(last.verdict, Verdict::Fail);
        assert!(
            last.summary.contains("too few to compare"),
            "{}",
            last.summary
        );
        let figures = run.figures(&spec);
        assert_eq!(figures.original_requests, Some(0));
        assert_eq!(figures.consecutive_failures, 2);
    }

    fn query_spec() -> AnalysisSpec {
        AnalysisSpec::from_param(
            "a",
            &json!({"interval": "10s", "query": "error-rate", "max": 0.1, "failure_limit": 2}),
        )
        .unwrap()
    }

    #[test]
    fn parses_the_query_form_and_refuses_mixing_it_with_the_counters() {
        let spec = query_spec();
        assert_eq!(
            spec.query,
            Some(QueryCheck {
                name: "error-rate".into(),
                max: Some(0.1),
                min: None
            })
        );
        assert_eq!(spec.failure_limit, 2);
        assert_eq!(
            spec.describe(),
            "analysis: query `error-rate` within max 0.1 over 10s intervals, 1 passing measurement(s) needed"
        );
        for (value, says) in [
            (
                json!({"interval": "1s", "query": "q", "max": 1, "max_error_rate": 0.1}),
                "`a.max_error_rate` judges the control plane's counters and does not go with `a.query`",
            ),
            (
                json!({"interval": "1s", "query": "q", "max": 1, "min_requests": 5}),
                "`a.min_requests`",
            ),
            (
                json!({"interval": "1s", "query": "q"}),
                "parameter `a` needs `max` or `min`",
            ),
            (
                json!({"interval": "1s", "query": "", "max": 1}),
                "`a.query` must be the name",
            ),
            (
                json!({"interval": "1s", "query": 3, "max": 1}),
                "`a.query` must be the name",
            ),
            (
                json!({"interval": "1s", "query": "q", "max": "5%"}),
                "`a.max` must be a number",
            ),
            (
                json!({"interval": "1s", "query": "q", "min": 2, "max": 1}),
                "`a.min` (2) is above `a.max` (1)",
            ),
            (
                json!({"interval": "1s", "max_error_rate": 0.1, "max": 1}),
                "`a.max` bounds a named query's value and goes with `a.query`",
            ),
        ] {
            let Err(PluginError::InvalidParams(message)) = AnalysisSpec::from_param("a", &value)
            else {
                panic!("{value} should be refused");
            };
            assert!(message.contains(says), "{value}: {message}");
        }
    }

    #[test]
    fn a_query_is_judged_once_each_interval_against_its_bounds() {
        let spec = query_spec();
        let mut run = AnalysisRun::default();
        // The first call only starts the interval; what it carries is not judged.
        assert_eq!(run.observe_query(&spec, 0, Ok(Some(9.0))), WAIT);
        assert!(run.started());
        assert_eq!(run.measurements, 0);
        assert_eq!(
            run.observe_query(&spec, 4_000, Ok(Some(9.0))),
            AnalysisOutcome::Continue {
                after: Duration::from_secs(6)
            }
        );
        // No value: inconclusive. A value above max: fail 1 of 2. Then 2 of 2.
        assert_eq!(run.observe_query(&spec, 10_000, Ok(None)), WAIT);
        assert_eq!(run.inconclusive, 1);
        assert!(run.last.as_ref().unwrap().summary.contains("had no value"));
        assert_eq!(run.observe_query(&spec, 20_000, Ok(Some(0.31))), WAIT);
        let figures = run.figures(&spec);
        assert_eq!(
            (figures.query.as_deref(), figures.value, figures.max),
            (Some("error-rate"), Some(0.31), Some(0.1))
        );
        assert_eq!((figures.requests, figures.error_rate), (None, None));
        assert_eq!(
            run.observe_query(&spec, 30_000, Ok(Some(0.4))),
            AnalysisOutcome::Failed {
                reason: "analysis failed: clone's `error-rate` 0.4 > max 0.1 over 10s, 2 of 2 consecutive failures".into(),
                verdict: Verdict::Fail,
            }
        );
        // A value at the bound passes; an unreadable one is inconclusive.
        let mut run = AnalysisRun::default();
        assert_eq!(run.observe_query(&spec, 0, Ok(None)), WAIT);
        assert_eq!(
            run.observe_query(&spec, 10_000, Err("timed out".into())),
            WAIT
        );
        assert!(
            run.last
                .as_ref()
                .unwrap()
                .summary
                .contains("could not be read: timed out")
        );
        assert_eq!(
            run.observe_query(&spec, 20_000, Ok(Some(0.1))),
            AnalysisOutcome::Passed
        );
        // A lower bound fails below it.
        let min = AnalysisSpec::query(Duration::from_secs(1), "rps", None, Some(5.0));
        let mut run = AnalysisRun::default();
        run.observe_query(&min, 0, Ok(None));
        assert!(matches!(
            run.observe_query(&min, 1_000, Ok(Some(4.5))),
            AnalysisOutcome::Failed { ref reason, .. } if reason.contains("`rps` 4.5 < min 5")
        ));
    }

    #[test]
    fn rates_print_briefly() {
        assert_eq!(rate(0.31), "0.31");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(1.0), "1");
        assert_eq!(rate(0.00049), "0.0005");
        assert_eq!(rate(2.0 / 3.0), "0.6667");
    }
}
