//! Policy: which comparator, strategy and gates apply to an instance (`docs/design.md` §4).
//!
//! Start reading at [`Policy::from_rules`] (validation) and [`Policy::select`] (first match
//! wins, then the built-in default rule); [`Policy::explain`] is what `setpoint explain ID`
//! prints. Rules come from the `[[policy.rules]]` tables of the configuration:
//!
//! ```toml
//! [[policy.rules]]
//! name = "prod-canary"
//! match = { labels = { env = "prod" }, name = "api-*", platform = "Process" }
//! comparator = "drasi-summary"
//! strategy = "canary@^1.2"
//! strategy_params = { steps = [10, 50, 100], bake = "5m" }
//! approval = "before-promote"
//! window = { days = ["mon", "tue", "wed", "thu"], start = "22:00", end = "02:00" }
//! ```
//!
//! A rule that leaves out `comparator` or `strategy` gets the default one
//! ([`DEFAULT_COMPARATOR`], [`DEFAULT_STRATEGY`]), so a rule can set gates only (for
//! example, mark instances `protected`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::metrics_provider::MetricQueries;

/// Comparator of the built-in default rule and of rules that name none: a structural diff
/// works for any configuration shape.
pub const DEFAULT_COMPARATOR: &str = "field-diff";
/// Strategy of the built-in default rule and of rules that name none: restart is the one
/// strategy every control plane supports (no clones or endpoints needed).
pub const DEFAULT_STRATEGY: &str = "restart";
/// Name of the built-in rule that matches every instance no other rule matched. Reserved:
/// a configured rule may not use it, so `explain` output is unambiguous.
pub const DEFAULT_RULE_NAME: &str = "default";

/// Errors in policy rules, each naming the rule and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule has an empty name; names identify rules in `explain` and the audit log.
    #[error("rule #{index}: name must not be empty")]
    EmptyName {
        /// Position of the rule in the list, starting at 1.
        index: usize,
    },
    /// Two rules share a name.
    #[error("rule \"{rule}\": duplicate rule name; give each rule a unique name")]
    DuplicateName {
        /// The repeated name.
        rule: String,
    },
    /// A rule uses the name reserved for the built-in default rule.
    #[error(
        "rule \"{rule}\": the name is reserved for the built-in fallback rule; choose another name"
    )]
    ReservedName {
        /// The reserved name.
        rule: String,
    },
    /// `match.name` is not a valid glob.
    #[error("rule \"{rule}\": match.name: invalid glob \"{pattern}\"")]
    BadGlob {
        /// The rule.
        rule: String,
        /// The pattern as written.
        pattern: String,
        /// Why globset rejected it.
        #[source]
        source: globset::Error,
    },
    /// `comparator` or `strategy` is not a valid plugin reference.
    #[error("rule \"{rule}\": {key}: invalid plugin reference \"{value}\"")]
    BadPluginRef {
        /// The rule.
        rule: String,
        /// `comparator` or `strategy`.
        key: &'static str,
        /// The reference as written.
        value: String,
        /// What is wrong with it.
        #[source]
        source: PluginRefError,
    },
    /// A strategy parameter uses the host's reserved `$` prefix.
    #[error(
        "rule \"{rule}\": strategy_params.{key}: names starting with `$` are reserved for what the host passes (`$approval`, `$promote`, `$undo`); rename the parameter"
    )]
    ReservedParam {
        /// The rule.
        rule: String,
        /// The parameter's name.
        key: String,
    },
    /// `progress_deadline` is zero.
    #[error(
        "rule \"{rule}\": progress_deadline: must be longer than zero (for example \"10m\"); remove it for the default of 10 minutes"
    )]
    ZeroProgressDeadline {
        /// The rule.
        rule: String,
    },
    /// `group_by` is not a list of distinct label keys.
    #[error("rule \"{rule}\": group_by: {reason}")]
    BadGroupBy {
        /// The rule.
        rule: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// `window` can never be open.
    #[error("rule \"{rule}\": window: {reason}")]
    BadWindow {
        /// The rule.
        rule: String,
        /// What is wrong with the window.
        reason: &'static str,
    },
}

/// Result alias for policy operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a plugin reference (`"name"` or `"name@<version requirement>"`).
#[derive(Debug, thiserror::Error)]
pub enum PluginRefError {
    /// The plugin name is empty or has characters other than `a-z`, `0-9`, `-` and `_`.
    #[error("plugin name \"{name}\" must be non-empty lowercase letters, digits, '-' or '_'")]
    BadName {
        /// The name as written.
        name: String,
    },
    /// The part after `@` is not a semver version requirement.
    #[error(
        "\"{requirement}\" is not a version requirement (write e.g. \"1.2\", \"=1.2.0\" or \">=1, <2\")"
    )]
    BadVersion {
        /// The requirement as written.
        requirement: String,
        /// semver's complaint.
        #[source]
        source: semver::Error,
    },
}

/// A reference to a plugin by name and, optionally, a semver version requirement.
///
/// The requirement follows Cargo's rules, as `Cargo.toml` dependencies do: `canary@1.2.0`
/// means `^1.2.0` (any `1.x.y` at least `1.2.0`); pin an exact version with `canary@=1.2.0`.
/// As in Cargo, a pre-release version matches only a requirement that names a pre-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// Plugin name, as in the plugin's metadata.
    pub name: String,
    /// Versions acceptable; `None` accepts any version.
    pub version: Option<semver::VersionReq>,
}

impl PluginRef {
    /// A reference to any version of `name`.
    pub fn any(name: impl Into<String>) -> Self {
        PluginRef {
            name: name.into(),
            version: None,
        }
    }

    /// Whether a plugin of this name at `version` satisfies the reference.
    pub fn matches(&self, version: &semver::Version) -> bool {
        self.version.as_ref().is_none_or(|req| req.matches(version))
    }
}

impl FromStr for PluginRef {
    type Err = PluginRefError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (name, requirement) = match s.split_once('@') {
            Some((name, requirement)) => (name.trim(), Some(requirement.trim())),
            None => (s.trim(), None),
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(PluginRefError::BadName {
                name: name.to_owned(),
            });
        }
        let version = requirement
            .map(|requirement| {
                semver::VersionReq::parse(requirement).map_err(|source| {
                    PluginRefError::BadVersion {
                        requirement: requirement.to_owned(),
                        source,
                    }
                })
            })
            .transpose()?;
        Ok(PluginRef {
            name: name.to_owned(),
            version,
        })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(req) => write!(f, "{}@{req}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What policy knows about an instance when choosing a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFacts {
    /// Control-plane instance id.
    pub id: String,
    /// Instance name (matched by `match.name` globs).
    pub name: String,
    /// Platform type, e.g. `Process` or `Simulated` (matched case-insensitively).
    pub platform: String,
    /// Labels (DRaaS `metadata`).
    pub labels: BTreeMap<String, String>,
}

/// Which instances a rule applies to; every given criterion must hold, and an empty match
/// matches every instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Every `key = value` here must be among the instance's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Glob on the instance name (`*`, `?`, `[a-z]`, `{a,b}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Platform type, compared case-insensitively (`Process`, `Simulated`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// When a change may be applied without an operator's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Never ask.
    #[default]
    None,
    /// Ask before the strategy's first step.
    BeforeApply,
    /// Let the strategy run up to promotion (e.g. a canary's last step), then ask.
    BeforePromote,
}

impl fmt::Display for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Approval::None => "none",
            Approval::BeforeApply => "before-apply",
            Approval::BeforePromote => "before-promote",
        })
    }
}

/// One rule as written in the configuration (`[[policy.rules]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name, shown by `explain` and recorded in the audit log.
    pub name: String,
    /// Which instances the rule applies to.
    #[serde(default, rename = "match")]
    pub selector: Match,
    /// Comparator plugin reference (`"name"` or `"name@req"`); default [`DEFAULT_COMPARATOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparator: Option<String>,
    /// Strategy plugin reference (`"name"` or `"name@req"`); default [`DEFAULT_STRATEGY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Parameters handed to the comparator as a JSON object.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub comparator_params: Map<String, Value>,
    /// Parameters handed to the strategy as a JSON object.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub strategy_params: Map<String, Value>,
    /// Plan only: mutating control-plane calls are simulated and recorded.
    #[serde(default)]
    pub dry_run: bool,
    /// Never apply a change that removes something (drifts of kind `removed`).
    #[serde(default)]
    pub skip_destructive: bool,
    /// Report drift but never act ("blessed" instances).
    #[serde(default)]
    pub protected: bool,
    /// Whether and when an operator must approve.
    #[serde(default)]
    pub approval: Approval,
    /// Maintenance window outside which no change is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// A rollout that makes no progress for this long is aborted; default
    /// [`DEFAULT_PROGRESS_DEADLINE`]. Time waiting for an approval or in a pause the
    /// strategy reports does not count.
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub progress_deadline: Option<std::time::Duration>,
    /// Label keys that group the instances this rule matches: those that share the
    /// values of every key form one group, and a change that reaches several of them is
    /// rolled out as one group rollout by a strategy that supports groups (`rolling`).
    /// An instance without one of the keys is reconciled on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
}

/// How long a rollout may go without progress unless a rule says otherwise.
pub const DEFAULT_PROGRESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The gates that decide whether and how a change may be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gates {
    /// Plan only.
    pub dry_run: bool,
    /// Skip destructive changes.
    pub skip_destructive: bool,
    /// Report only.
    pub protected: bool,
    /// Approval requirement.
    pub approval: Approval,
    /// Maintenance window; `None` means any time.
    pub window: Option<Window>,
}

impl fmt::Display for Gates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.protected {
            parts.push("protected".to_owned());
        }
        if self.dry_run {
            parts.push("dry-run".to_owned());
        }
        if self.skip_destructive {
            parts.push("skip-destructive".to_owned());
        }
        if self.approval != Approval::None {
            parts.push(format!("approval {}", self.approval));
        }
        if let Some(window) = &self.window {
            parts.push(format!("window {window}"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The outcome of policy for one instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The rule that matched ([`DEFAULT_RULE_NAME`] if none did).
    pub rule_name: String,
    /// Comparator to judge drift with.
    #[serde(serialize_with = "serialize_display")]
    pub comparator: PluginRef,
    /// Parameters for the comparator.
    pub comparator_params: Map<String, Value>,
    /// Strategy to roll changes out with.
    #[serde(serialize_with = "serialize_display")]
    pub strategy: PluginRef,
    /// Parameters for the strategy.
    pub strategy_params: Map<String, Value>,
    /// Gates before acting.
    pub gates: Gates,
    /// How long a rollout may go without progress before it is aborted.
    #[serde(serialize_with = "serialize_duration")]
    pub progress_deadline: std::time::Duration,
    /// Label keys that group the instances of this rule (empty: no groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
}

impl Selection {
    /// The group an instance with `labels` belongs to under this selection: the values
    /// of the `group_by` keys as `key=value` pairs joined by `,`, in the rule's key
    /// order (for example `app=orders`). `None` when the rule groups nothing or the
    /// instance lacks one of the keys.
    pub fn group_of(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        if self.group_by.is_empty() {
            return None;
        }
        let mut pairs = Vec::with_capacity(self.group_by.len());
        for key in &self.group_by {
            pairs.push(format!("{key}={}", labels.get(key)?));
        }
        Some(pairs.join(","))
    }
}

fn serialize_duration<S: serde::Serializer>(
    value: &std::time::Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

/// Serde for an optional duration written as humantime text (`"10m"`, `"1h 30m"`).
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.collect_str(&humantime::format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|_| {
                D::Error::custom(format!("expected a duration like \"10m\", got {text:?}"))
            })
    }
}

fn serialize_display<S: serde::Serializer, T: fmt::Display>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// A day of the week, written `"mon"` … `"sun"` (full names are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    #[serde(alias = "monday")]
    Mon,
    /// Tuesday.
    #[serde(alias = "tuesday")]
    Tue,
    /// Wednesday.
    #[serde(alias = "wednesday")]
    Wed,
    /// Thursday.
    #[serde(alias = "thursday")]
    Thu,
    /// Friday.
    #[serde(alias = "friday")]
    Fri,
    /// Saturday.
    #[serde(alias = "saturday")]
    Sat,
    /// Sunday.
    #[serde(alias = "sunday")]
    Sun,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The weekday of a day counted from 1970-01-01, which was a Thursday.
    fn from_days_since_epoch(days: i64) -> Self {
        Self::ALL[(days + 3).rem_euclid(7) as usize]
    }

    fn short(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

/// A time of day in minutes since midnight, written `"HH:MM"`; `"24:00"` is allowed as
/// the end of a window that runs to midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay(u16);

const MINUTES_PER_DAY: u16 = 24 * 60;
const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

impl TimeOfDay {
    /// `hour:minute`; `None` unless it is between 00:00 and 24:00.
    pub fn new(hour: u16, minute: u16) -> Option<Self> {
        let minutes = hour.checked_mul(60)?.checked_add(minute)?;
        (minute < 60 && minutes <= MINUTES_PER_DAY).then_some(TimeOfDay(minutes))
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl TryFrom<String> for TimeOfDay {
    type Error = String;

    fn try_from(value: String) -> std::result::Result<Self, Self::Error> {
        let parsed = value.split_once(':').and_then(|(h, m)| {
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            TimeOfDay::new(h.parse().ok()?, m.parse().ok()?)
        });
        parsed
            .ok_or_else(|| format!("expected a time of day like \"02:00\" (UTC), got \"{value}\""))
    }
}

impl From<TimeOfDay> for String {
    fn from(value: TimeOfDay) -> String {
        value.to_string()
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// A weekly maintenance window in UTC, e.g. `{ days = ["sat", "sun"], start = "02:00", end
/// = "04:00" }`.
///
/// `start` is inclusive, `end` exclusive. When `end` is earlier than `start` the window
/// crosses midnight: it opens on a listed day at `start` and closes at `end` the next day
/// (`days` names the day the window *opens*). An empty `days` list means every day. Times
/// are UTC so that a window means the same on every replica, whatever its local zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days on which the window opens; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// Opening time (UTC, inclusive).
    pub start: TimeOfDay,
    /// Closing time (UTC, exclusive).
    pub end: TimeOfDay,
    /// Times are UTC. Written out (`utc = true`) for readers of the file; `false` (local
    /// time) is rejected, since a local-time window would open at different instants on
    /// replicas in different zones and shift with daylight saving.
    #[serde(default = "utc_default")]
    pub utc: bool,
}

fn utc_default() -> bool {
    true
}

impl Window {
    fn opens_on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }

    fn crosses_midnight(&self) -> bool {
        self.end < self.start
    }

    /// Whether the window is open at `at`.
    pub fn is_open(&self, at: SystemTime) -> bool {
        let (day, minute) = day_and_minute(at);
        let today = Weekday::from_days_since_epoch(day);
        let yesterday = Weekday::from_days_since_epoch(day - 1);
        if self.crosses_midnight() {
            (self.opens_on(today) && minute >= self.start.0)
                || (self.opens_on(yesterday) && minute < self.end.0)
        } else {
            self.opens_on(today) && minute >= self.start.0 && minute < self.end.0
        }
    }

    /// How long from `at` until the window is next open: zero if it is open now. Lets a
    /// controller requeue exactly when the window opens instead of polling.
    pub fn until_open(&self, at: SystemTime) -> Duration {
        if self.is_open(at) {
            return Duration::ZERO;
        }
        let seconds = unix_seconds(at);
        let day = seconds.div_euclid(SECONDS_PER_DAY);
        // The next opening is at most a week away; look at today and the next seven days.
        (day..=day + 7)
            .filter(|d| self.opens_on(Weekday::from_days_since_epoch(*d)))
            .map(|d| d * SECONDS_PER_DAY + i64::from(self.start.0) * 60)
            .find(|opening| *opening > seconds)
            .map(|opening| Duration::from_secs((opening - seconds) as u64))
            .unwrap_or(Duration::ZERO)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = if self.days.is_empty() {
            "daily".to_owned()
        } else {
            self.days
                .iter()
                .map(|d| d.short())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "{days} {}-{} UTC", self.start, self.end)
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs_f64().ceil() as i64),
    }
}

/// Days since the epoch and minute of that day (UTC).
fn day_and_minute(at: SystemTime) -> (i64, u16) {
    let seconds = unix_seconds(at);
    let day = seconds.div_euclid(SECONDS_PER_DAY);
    let minute = (seconds.rem_euclid(SECONDS_PER_DAY) / 60) as u16;
    (day, minute)
}

/// Why a rule did not match an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The instance lacks a required label.
    LabelMissing {
        /// Label key.
        key: String,
        /// Value the rule expects.
        expected: String,
    },
    /// The instance has the label with another value.
    LabelDiffers {
        /// Label key.
        key: String,
        /// Value the rule expects.
        expected: String,
        /// Value the instance has.
        actual: String,
    },
    /// The instance name does not match the glob.
    Name {
        /// The glob.
        pattern: String,
        /// The instance name.
        actual: String,
    },
    /// The platform differs.
    Platform {
        /// Platform the rule expects.
        expected: String,
        /// Platform of the instance.
        actual: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::LabelMissing { key, expected } => {
                write!(
                    f,
                    "label {key}={expected} expected, instance has no label {key}"
                )
            }
            Mismatch::LabelDiffers {
                key,
                expected,
                actual,
            } => write!(
                f,
                "label {key}={expected} expected, instance has {key}={actual}"
            ),
            Mismatch::Name { pattern, actual } => {
                write!(
                    f,
                    "name matching \"{pattern}\" expected, instance is named \"{actual}\""
                )
            }
            Mismatch::Platform { expected, actual } => {
                write!(f, "platform {expected} expected, instance runs on {actual}")
            }
        }
    }
}

/// What `explain` says about one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The rule matched and won; `because` lists the criteria that held (empty for a rule
    /// that matches everything).
    Matched {
        /// Criteria that held, e.g. `label env=prod`.
        because: Vec<String>,
    },
    /// The rule did not match, for every reason listed.
    NotMatched {
        /// Every criterion that failed.
        mismatches: Vec<Mismatch>,
    },
    /// An earlier rule matched, so this one was not considered.
    Skipped,
}

/// One line of an explanation: a rule and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    /// The rule's name.
    pub rule: String,
    /// What happened to it.
    pub verdict: Verdict,
}

/// Why an instance got the selection it got: every rule in order, then the winner.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The instance explained.
    pub instance: InstanceFacts,
    /// Every rule in order, the built-in default last.
    pub rules: Vec<RuleVerdict>,
    /// The resulting selection.
    pub selection: Selection,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.instance;
        let labels = if i.labels.is_empty() {
            "none".to_owned()
        } else {
            i.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "instance {} (name \"{}\", platform {}, labels {labels})",
            i.id, i.name, i.platform
        )?;
        for RuleVerdict { rule, verdict } in &self.rules {
            match verdict {
                Verdict::Matched { because } if because.is_empty() => {
                    writeln!(f, "  rule \"{rule}\": matched (it matches every instance)")?
                }
                Verdict::Matched { because } => {
                    writeln!(f, "  rule \"{rule}\": matched ({})", because.join(", "))?
                }
                Verdict::NotMatched { mismatches } => {
                    let why: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
                    writeln!(f, "  rule \"{rule}\": {}", why.join("; "))?
                }
                Verdict::Skipped => writeln!(
                    f,
                    "  rule \"{rule}\": not considered (an earlier rule matched)"
                )?,
            }
        }
        let s = &self.selection;
        writeln!(f, "selected rule \"{}\":", s.rule_name)?;
        writeln!(
            f,
            "  comparator {}{}",
            s.comparator,
            params_suffix(&s.comparator_params)
        )?;
        writeln!(
            f,
            "  strategy   {}{}",
            s.strategy,
            params_suffix(&s.strategy_params)
        )?;
        write!(f, "  gates      {}", s.gates)
    }
}

fn params_suffix(params: &Map<String, Value>) -> String {
    if params.is_empty() {
        String::new()
    } else {
        format!(" with {}", Value::Object(params.clone()))
    }
}

/// A validated rule, ready to match.
#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    labels: BTreeMap<String, String>,
    name_glob: Option<(String, GlobMatcher)>,
    platform: Option<String>,
    selection: Selection,
}

impl CompiledRule {
    /// The criteria that held, or every one that failed.
    fn check(&self, facts: &InstanceFacts) -> std::result::Result<Vec<String>, Vec<Mismatch>> {
        let mut held = Vec::new();
        let mut mismatches = Vec::new();
        for (key, expected) in &self.labels {
            match facts.labels.get(key) {
                Some(actual) if actual == expected => held.push(format!("label {key}={expected}")),
                Some(actual) => mismatches.push(Mismatch::LabelDiffers {
                    key: key.clone(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                }),
                None => mismatches.push(Mismatch::LabelMissing {
                    key: key.clone(),
                    expected: expected.clone(),
                }),
            }
        }
        if let Some((pattern, glob)) = &self.name_glob {
            if glob.is_match(&facts.name) {
                held.push(format!("name matches \"{pattern}\""));
            } else {
                mismatches.push(Mismatch::Name {
                    pattern: pattern.clone(),
                    actual: facts.name.clone(),
                });
            }
        }
        if let Some(platform) = &self.platform {
            if platform.eq_ignore_ascii_case(&facts.platform) {
                held.push(format!("platform {platform}"));
            } else {
                mismatches.push(Mismatch::Platform {
                    expected: platform.clone(),
                    actual: facts.platform.clone(),
                });
            }
        }
        if mismatches.is_empty() {
            Ok(held)
        } else {
            Err(mismatches)
        }
    }
}

/// Validated policy rules followed by the built-in default rule.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Configured rules in order, then the default rule.
    rules: Vec<CompiledRule>,
    /// The named metric queries strategies may ask for (`[metrics.queries]`).
    metric_queries: Arc<MetricQueries>,
}

impl Default for Policy {
    /// Only the built-in default rule.
    fn default() -> Self {
        Policy {
            rules: vec![default_rule()],
            metric_queries: Arc::default(),
        }
    }
}

fn default_rule() -> CompiledRule {
    CompiledRule {
        name: DEFAULT_RULE_NAME.to_owned(),
        labels: BTreeMap::new(),
        name_glob: None,
        platform: None,
        selection: Selection {
            rule_name: DEFAULT_RULE_NAME.to_owned(),
            comparator: PluginRef::any(DEFAULT_COMPARATOR),
            comparator_params: Map::new(),
            strategy: PluginRef::any(DEFAULT_STRATEGY),
            strategy_params: Map::new(),
            gates: Gates::default(),
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            group_by: Vec::new(),
        },
    }
}

fn plugin_ref(
    rule: &str,
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<PluginRef> {
    match value {
        None => Ok(PluginRef::any(default)),
        Some(value) => value.parse().map_err(|source| Error::BadPluginRef {
            rule: rule.to_owned(),
            key,
            value: value.to_owned(),
            source,
        }),
    }
}

impl Policy {
    /// Validates `rules` (names unique and non-empty, globs, plugin references, windows) and
    /// appends the built-in default rule.
    pub fn from_rules(rules: Vec<Rule>) -> Result<Policy> {
        let mut seen = HashSet::new();
        let mut compiled = Vec::with_capacity(rules.len() + 1);
        for (index, rule) in rules.into_iter().enumerate() {
            if rule.name.trim().is_empty() {
                return Err(Error::EmptyName { index: index + 1 });
            }
            if rule.name == DEFAULT_RULE_NAME {
                return Err(Error::ReservedName { rule: rule.name });
            }
            if !seen.insert(rule.name.clone()) {
                return Err(Error::DuplicateName { rule: rule.name });
            }
            let name_glob = rule
                .selector
                .name
                .as_ref()
                .map(|pattern| {
                    Glob::new(pattern)
                        .map(|glob| (pattern.clone(), glob.compile_matcher()))
                        .map_err(|source| Error::BadGlob {
                            rule: rule.name.clone(),
                            pattern: pattern.clone(),
                            source,
                        })
                })
                .transpose()?;
            let comparator = plugin_ref(
                &rule.name,
                "comparator",
                rule.comparator.as_deref(),
                DEFAULT_COMPARATOR,
            )?;
            let strategy = plugin_ref(
                &rule.name,
                "strategy",
                rule.strategy.as_deref(),
                DEFAULT_STRATEGY,
            )?;
            if let Some(key) = rule.strategy_params.keys().find(|k| k.starts_with('$')) {
                return Err(Error::ReservedParam {
                    rule: rule.name,
                    key: key.clone(),
                });
            }
            if rule.progress_deadline.is_some_and(|d| d.is_zero()) {
                return Err(Error::ZeroProgressDeadline { rule: rule.name });
            }
            let mut keys = HashSet::new();
            for key in &rule.group_by {
                let reason = if key.trim().is_empty() {
                    Some("a key is empty; list label keys, for example [\"app\"]".to_owned())
                } else if key.contains(['=', ',']) {
                    Some(format!(
                        "{key:?} is not a label key (no `=` or `,`); list keys only, for example [\"app\"]"
                    ))
                } else if !keys.insert(key.as_str()) {
                    Some(format!("{key:?} is listed twice"))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(Error::BadGroupBy {
                        rule: rule.name,
                        reason,
                    });
                }
            }
            if let Some(window) = &rule.window {
                if window.start == window.end {
                    return Err(Error::BadWindow {
                        rule: rule.name,
                        reason: "start and end are equal, so the window is never open; remove `window` to allow changes at any time",
                    });
                }
                if !window.utc {
                    return Err(Error::BadWindow {
                        rule: rule.name,
                        reason: "only UTC windows are supported (utc = true); convert the times to UTC",
                    });
                }
                if window.start.0 == MINUTES_PER_DAY {
                    return Err(Error::BadWindow {
                        rule: rule.name,
                        reason: "start may not be 24:00; use 00:00",
                    });
                }
            }
            compiled.push(CompiledRule {
                labels: rule.selector.labels,
                name_glob,
                platform: rule.selector.platform,
                selection: Selection {
                    rule_name: rule.name.clone(),
                    comparator,
                    comparator_params: rule.comparator_params,
                    strategy,
                    strategy_params: rule.strategy_params,
                    progress_deadline: rule.progress_deadline.unwrap_or(DEFAULT_PROGRESS_DEADLINE),
                    group_by: rule.group_by,
                    gates: Gates {
                        dry_run: rule.dry_run,
                        skip_destructive: rule.skip_destructive,
                        protected: rule.protected,
                        approval: rule.approval,
                        window: rule.window,
                    },
                },
                name: rule.name,
            });
        }
        compiled.push(default_rule());
        Ok(Policy {
            rules: compiled,
            metric_queries: Arc::default(),
        })
    }

    /// This policy with the named metric queries strategies may ask for (checked when
    /// settings load, see [`crate::config::Settings::policy`]).
    pub fn with_metric_queries(mut self, queries: MetricQueries) -> Policy {
        self.metric_queries = Arc::new(queries);
        self
    }

    /// The named metric queries (empty unless configured).
    pub fn metric_queries(&self) -> &Arc<MetricQueries> {
        &self.metric_queries
    }

    /// The names of the rules that group instances (`group_by`), in order.
    pub fn grouping_rules(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| !r.selection.group_by.is_empty())
            .map(|r| r.name.as_str())
    }

    /// The selection of the first rule that matches `facts` (the default rule if none does).
    pub fn select(&self, facts: &InstanceFacts) -> Selection {
        self.rules
            .iter()
            .find(|rule| rule.check(facts).is_ok())
            .map(|rule| rule.selection.clone())
            .expect("the default rule matches every instance")
    }

    /// Every rule in order with why it did or did not match `facts`, and the selection.
    pub fn explain(&self, facts: &InstanceFacts) -> Explanation {
        let mut winner = None;
        let rules = self
            .rules
            .iter()
            .map(|rule| {
                let verdict = if winner.is_some() {
                    Verdict::Skipped
                } else {
                    match rule.check(facts) {
                        Ok(because) => {
                            winner = Some(rule.selection.clone());
                            Verdict::Matched { because }
                        }
                        Err(mismatches) => Verdict::NotMatched { mismatches },
                    }
                };
                RuleVerdict {
                    rule: rule.name.clone(),
                    verdict,
                }
            })
            .collect();
        Explanation {
            instance: facts.clone(),
            rules,
            selection: winner.expect("the default rule matches every instance"),
        }
    }

    /// Names of the rules in order, the default last.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, platform: &str, labels: &[(&str, &str)]) -> InstanceFacts {
        InstanceFacts {
            id: format!("id-{name}"),
            name: name.to_owned(),
            platform: platform.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn rules_from_toml(text: &str) -> Vec<Rule> {
        #[derive(Deserialize)]
        struct Doc {
            rules: Vec<Rule>,
        }
        toml::from_str::<Doc>(text).expect("valid rules").rules
    }

    const RULES: &str = r#"
        [[rules]]
        name = "blessed"
        match = { labels = { blessed = "true" } }
        protected = true

        [[rules]]
        name = "prod-canary"
        match = { labels = { env = "prod", tier = "api" }, name = "api-*", platform = "Process" }
        comparator = "drasi-summary@0.1"
        strategy = "canary@=1.2.0"
        strategy_params = { steps = [10, 50, 100], bake = "5m" }
        approval = "before-promote"
        window = { days = ["sat", "sun"], start = "22:00", end = "02:00" }

        [[rules]]
        name = "simulated"
        match = { platform = "simulated" }
        dry_run = true
        skip_destructive = true
    "#;

    fn policy() -> Policy {
        Policy::from_rules(rules_from_toml(RULES)).unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_carries_its_plugins_params_and_gates() {
        let selection = policy().select(&facts(
            "api-1",
            "Process",
            &[("env", "prod"), ("tier", "api")],
        ));
        assert_eq!(selection.rule_name, "prod-canary");
        assert_eq!(selection.comparator.to_string(), "drasi-summary@^0.1");
        assert_eq!(selection.strategy.to_string(), "canary@=1.2.0");
        assert_eq!(
            Value::Object(selection.strategy_params),
            serde_json::json!({"steps": [10, 50, 100], "bake": "5m"})
        );
        assert_eq!(selection.gates.approval, Approval::BeforePromote);
        assert!(!selection.gates.protected);
        assert_eq!(
            selection.gates.window.unwrap().to_string(),
            "sat,sun 22:00-02:00 UTC"
        );
    }

    #[test]
    fn earlier_rule_shadows_a_later_one_that_also_matches() {
        let selection = policy().select(&facts(
            "api-1",
            "Process",
            &[("env", "prod"), ("tier", "api"), ("blessed", "true")],
        ));
        assert_eq!(selection.rule_name, "blessed");
        assert!(selection.gates.protected);
        assert_eq!(selection.strategy, PluginRef::any(DEFAULT_STRATEGY));
    }

    #[test]
    fn unmatched_instance_gets_the_default_rule() {
        let selection = policy().select(&facts("db-1", "Process", &[("env", "prod")]));
        assert_eq!(selection.rule_name, DEFAULT_RULE_NAME);
        assert_eq!(selection.comparator, PluginRef::any("field-diff"));
        assert_eq!(selection.strategy, PluginRef::any("restart"));
        assert_eq!(selection.gates, Gates::default());
        assert_eq!(
            Policy::default().select(&facts("x", "Process", &[])),
            selection
        );
    }

    #[test]
    fn platform_matches_case_insensitively() {
        let selection = policy().select(&facts("sim-1", "Simulated", &[]));
        assert_eq!(selection.rule_name, "simulated");
        assert!(selection.gates.dry_run && selection.gates.skip_destructive);
    }

    #[test]
    fn every_criterion_must_hold() {
        let policy = policy();
        // Right labels and platform, wrong name.
        let wrong_name = facts("web-1", "Process", &[("env", "prod"), ("tier", "api")]);
        assert_eq!(policy.select(&wrong_name).rule_name, DEFAULT_RULE_NAME);
        // Right name and platform, one label missing.
        let missing_label = facts("api-1", "Process", &[("env", "prod")]);
        assert_eq!(policy.select(&missing_label).rule_name, DEFAULT_RULE_NAME);
    }

    #[test]
    fn explain_says_why_each_rule_did_or_did_not_match() {
        let explanation = policy().explain(&facts(
            "api-7",
            "Simulated",
            &[("env", "dev"), ("tier", "api")],
        ));
        assert_eq!(
            explanation.rules,
            [
                RuleVerdict {
                    rule: "blessed".into(),
                    verdict: Verdict::NotMatched {
                        mismatches: vec![Mismatch::LabelMissing {
                            key: "blessed".into(),
                            expected: "true".into()
                        }]
                    }
                },
                RuleVerdict {
                    rule: "prod-canary".into(),
                    verdict: Verdict::NotMatched {
                        mismatches: vec![
                            Mismatch::LabelDiffers {
                                key: "env".into(),
                                expected: "prod".into(),
                                actual: "dev".into()
                            },
                            Mismatch::Platform {
                                expected: "Process".into(),
                                actual: "Simulated".into()
                            },
                        ]
                    }
                },
                RuleVerdict {
                    rule: "simulated".into(),
                    verdict: Verdict::Matched {
                        because: vec!["platform simulated".into()]
                    }
                },
                RuleVerdict {
                    rule: "default".into(),
                    verdict: Verdict::Skipped
                },
            ]
        );
        assert_eq!(explanation.selection.rule_name, "simulated");
    }

    #[test]
    fn explanation_display_is_what_setpoint_explain_prints() {
        let text = policy()
            .explain(&facts(
                "api-7",
                "Process",
                &[("env", "dev"), ("tier", "api")],
            ))
            .to_string();
        let expected = "\
instance id-api-7 (name \"api-7\", platform Process, labels env=dev, tier=api)
  rule \"blessed\": label blessed=true expected, instance has no label blessed
  rule \"prod-canary\": label env=prod expected, instance has env=dev
  rule \"simulated\": platform simulated expected, instance runs on Process
  rule \"default\": matched (it matches every instance)
selected rule \"default\":
  comparator field-diff
  strategy   restart
  gates      none";
        assert_eq!(text, expected);
    }

    #[test]
    fn explanation_display_shows_params_and_gates_of_the_winner() {
        let text = policy()
            .explain(&facts(
                "api-1",
                "Process",
                &[("env", "prod"), ("tier", "api")],
            ))
            .to_string();
        assert!(
            text.contains(
                "  rule \"prod-canary\": matched (label env=prod, label tier=api, name matches \"api-*\", platform Process)"
            ),
            "{text}"
        );
        assert!(text.contains("  rule \"simulated\": not considered (an earlier rule matched)"));
        assert!(
            text.contains(
                "  strategy   canary@=1.2.0 with {\"bake\":\"5m\",\"steps\":[10,50,100]}"
            )
        );
        assert!(
            text.ends_with("gates      approval before-promote, window sat,sun 22:00-02:00 UTC")
        );
    }

    #[test]
    fn progress_deadline_defaults_to_ten_minutes_and_reserved_params_are_refused() {
        let policy = Policy::from_rules(rules_from_toml(
            r#"
            [[rules]]
            name = "slow"
            match = { labels = { tier = "db" } }
            progress_deadline = "30m"
            "#,
        ))
        .unwrap();
        let db = InstanceFacts {
            labels: [("tier".to_owned(), "db".to_owned())].into(),
            ..InstanceFacts::default()
        };
        assert_eq!(
            policy.select(&db).progress_deadline,
            Duration::from_secs(1800)
        );
        assert_eq!(
            policy.select(&InstanceFacts::default()).progress_deadline,
            DEFAULT_PROGRESS_DEADLINE
        );

        let error = Policy::from_rules(rules_from_toml(
            r#"
            [[rules]]
            name = "sneaky"
            strategy_params = { "$promote" = "full" }
            "#,
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "rule \"sneaky\": strategy_params.$promote: names starting with `$` are reserved for what the host passes (`$approval`, `$promote`, `$undo`); rename the parameter"
        );
        let error = Policy::from_rules(rules_from_toml(
            "[[rules]]\nname = \"never\"\nprogress_deadline = \"0s\"",
        ))
        .unwrap_err();
        assert!(
            matches!(error, Error::ZeroProgressDeadline { .. }),
            "{error}"
        );
    }

    #[test]
    fn duplicate_rule_names_are_rejected_naming_the_rule() {
        let rule = Rule {
            name: "twice".into(),
            ..Rule::default()
        };
        let error = Policy::from_rules(vec![rule.clone(), rule]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "rule \"twice\": duplicate rule name; give each rule a unique name"
        );
    }

    #[test]
    fn reserved_and_empty_rule_names_are_rejected() {
        let reserved = Policy::from_rules(vec![Rule {
            name: "default".into(),
            ..Rule::default()
        }]);
        assert!(matches!(reserved, Err(Error::ReservedName { .. })));
        let empty = Policy::from_rules(vec![
            Rule {
                name: "a".into(),
                ..Rule::default()
            },
            Rule::default(),
        ])
        .unwrap_err();
        assert_eq!(empty.to_string(), "rule #2: name must not be empty");
    }

    #[test]
    fn bad_glob_is_rejected_naming_the_rule_and_key() {
        let error = Policy::from_rules(vec![Rule {
            name: "broken".into(),
            selector: Match {
                name: Some("api-[".into()),
                ..Match::default()
            },
            ..Rule::default()
        }])
        .unwrap_err();
        assert!(matches!(error, Error::BadGlob { .. }));
        assert_eq!(
            error.to_string(),
            "rule \"broken\": match.name: invalid glob \"api-[\""
        );
        assert!(std::error::Error::source(&error).is_some(), "cause kept");
    }

    #[test]
    fn bad_version_requirement_is_rejected_naming_the_rule_and_key() {
        let error = Policy::from_rules(vec![Rule {
            name: "canary".into(),
            strategy: Some("canary@latest".into()),
            ..Rule::default()
        }])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "rule \"canary\": strategy: invalid plugin reference \"canary@latest\""
        );
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(
            cause.starts_with("\"latest\" is not a version requirement"),
            "{cause}"
        );
    }

    #[test]
    fn bad_plugin_name_is_rejected() {
        let error = Policy::from_rules(vec![Rule {
            name: "r".into(),
            comparator: Some("Field Diff".into()),
            ..Rule::default()
        }])
        .unwrap_err();
        assert!(
            matches!(
                &error,
                Error::BadPluginRef {
                    key: "comparator",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn plugin_ref_follows_cargo_version_semantics() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let caret: PluginRef = "canary@1.2.0".parse().unwrap();
        assert_eq!(caret.name, "canary");
        assert!(caret.matches(&v("1.2.0")));
        assert!(caret.matches(&v("1.9.3")));
        assert!(!caret.matches(&v("1.1.9")));
        assert!(!caret.matches(&v("2.0.0")));
        let exact: PluginRef = "canary@=1.2.0".parse().unwrap();
        assert!(exact.matches(&v("1.2.0")));
        assert!(!exact.matches(&v("1.2.1")));
        let any: PluginRef = "restart".parse().unwrap();
        assert_eq!(any.version, None);
        assert!(any.matches(&v("0.0.1")) && any.matches(&v("9.0.0-rc.1")));
        assert!(
            !caret.matches(&v("1.3.0-beta.1")),
            "pre-releases need opting in"
        );
    }

    fn at(day: i64, hour: i64, minute: i64) -> SystemTime {
        // Day 0 is Monday 2024-01-01 (19723 days after the epoch).
        UNIX_EPOCH + Duration::from_secs((((19723 + day) * 24 + hour) * 60 + minute) as u64 * 60)
    }

    fn window(days: &[Weekday], start: &str, end: &str) -> Window {
        Window {
            days: days.to_vec(),
            start: start.to_owned().try_into().unwrap(),
            end: end.to_owned().try_into().unwrap(),
            utc: true,
        }
    }

    #[test]
    fn window_is_open_from_start_inclusive_to_end_exclusive() {
        let w = window(&[Weekday::Mon], "02:00", "04:00");
        assert!(!w.is_open(at(0, 1, 59)));
        assert!(w.is_open(at(0, 2, 0)));
        assert!(w.is_open(at(0, 3, 59)));
        assert!(!w.is_open(at(0, 4, 0)));
        assert!(!w.is_open(at(1, 3, 0)), "tuesday is not listed");
        assert!(w.is_open(at(7, 3, 0)), "next monday");
    }

    #[test]
    fn window_crossing_midnight_stays_open_into_the_next_day() {
        // Opens Sunday 22:00, closes Monday 02:00.
        let w = window(&[Weekday::Sun], "22:00", "02:00");
        assert!(!w.is_open(at(6, 21, 59)));
        assert!(w.is_open(at(6, 22, 0)));
        assert!(w.is_open(at(6, 23, 59)));
        assert!(w.is_open(at(7, 0, 0)), "monday after sunday night");
        assert!(w.is_open(at(7, 1, 59)));
        assert!(!w.is_open(at(7, 2, 0)));
        assert!(!w.is_open(at(7, 22, 30)), "monday night is not listed");
        assert!(
            !w.is_open(at(6, 1, 0)),
            "sunday early morning belongs to saturday's window"
        );
    }

    #[test]
    fn window_without_days_is_daily_and_may_run_to_midnight() {
        let w = window(&[], "20:00", "24:00");
        assert!(w.is_open(at(3, 23, 59)));
        assert!(!w.is_open(at(4, 0, 0)));
        assert!(!w.is_open(at(4, 19, 59)));
    }

    #[test]
    fn until_open_counts_to_the_next_opening() {
        let w = window(&[Weekday::Sat], "02:00", "04:00");
        assert_eq!(w.until_open(at(5, 3, 0)), Duration::ZERO);
        assert_eq!(w.until_open(at(5, 1, 0)), Duration::from_secs(3600));
        // Saturday 05:00 → next Saturday 02:00.
        assert_eq!(
            w.until_open(at(5, 5, 0)),
            Duration::from_secs((7 * 24 - 3) * 3600)
        );
    }

    #[test]
    fn malformed_window_times_are_rejected_when_parsing() {
        let error = toml::from_str::<Window>("start = \"2am\"\nend = \"04:00\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected a time of day like \"02:00\" (UTC), got \"2am\""),
            "{error}"
        );
        assert!(toml::from_str::<Window>("start = \"24:01\"\nend = \"04:00\"").is_err());
        assert!(
            toml::from_str::<Window>("start = \"01:00\"\nend = \"04:00\"\ndays = [\"funday\"]")
                .is_err()
        );
    }

    #[test]
    fn window_that_is_never_open_is_rejected() {
        let error = Policy::from_rules(vec![Rule {
            name: "never".into(),
            window: Some(window(&[], "03:00", "03:00")),
            ..Rule::default()
        }])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("rule \"never\": window: start and end are equal")
        );
    }

    #[test]
    fn window_must_be_utc() {
        let utc: Window =
            toml::from_str("days = [\"sun\"]\nstart = \"02:00\"\nend = \"04:00\"\nutc = true")
                .unwrap();
        assert_eq!(utc, window(&[Weekday::Sun], "02:00", "04:00"));
        let local = Window { utc: false, ..utc };
        let error = Policy::from_rules(vec![Rule {
            name: "local".into(),
            window: Some(local),
            ..Rule::default()
        }])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "rule \"local\": window: only UTC windows are supported (utc = true); convert the times to UTC"
        );
    }

    #[test]
    fn unknown_rule_keys_are_rejected_by_the_parser() {
        let error = toml::from_str::<Rule>("name = \"x\"\nprotect = true").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `protect`"),
            "{error}"
        );
    }
}
