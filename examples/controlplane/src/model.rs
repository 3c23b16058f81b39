//! The DRaaS data model: instances, statuses, platform types, runtime info, status
//! changes and desired configurations, with their camelCase JSON shapes.
//!
//! Start with [`Instance`] and [`InstanceStatus`]. Enums are written as strings; the
//! integer form of the .NET original is produced by [`encode_enums`] when the control
//! plane runs with `enum_as_int`. Both forms are accepted on input.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Labels (DRaaS `metadata`): string keys to string values.
pub type Labels = BTreeMap<String, String>;

/// An instance's status, in the .NET original's order (its integer form is the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Created, never started.
    Created,
    /// Running (a live process on the Process platform).
    Running,
    /// Stopped by request.
    Stopped,
    /// Failed to start, or exited by itself.
    Error,
    /// The desired configuration changed and has not been applied yet.
    ConfigurationChanged,
}

impl InstanceStatus {
    /// Every status, in integer order.
    pub const ALL: [InstanceStatus; 5] = [
        Self::Created,
        Self::Running,
        Self::Stopped,
        Self::Error,
        Self::ConfigurationChanged,
    ];

    /// The string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Stopped => "Stopped",
            Self::Error => "Error",
            Self::ConfigurationChanged => "ConfigurationChanged",
        }
    }

    /// The integer form (.NET enum order).
    pub fn as_int(self) -> i64 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as i64
    }

    /// Parses the string form (case-insensitive) or the integer form written as text.
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(n) = text.trim().parse::<i64>() {
            return Self::from_int(n);
        }
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The status with integer form `n`.
    pub fn from_int(n: i64) -> Option<Self> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance runs.
///
/// Integer forms: `Process = 0` (as in the .NET original, where `Docker = 1` and `AKS = 2`,
/// which this control plane does not implement) and `Simulated = 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PlatformType {
    /// A real OS process (`drasi-stub`) per instance.
    #[default]
    Process,
    /// A record only: start and stop just record the running configuration.
    Simulated,
}

impl PlatformType {
    /// The string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "Process",
            Self::Simulated => "Simulated",
        }
    }

    /// The integer form.
    pub fn as_int(self) -> i64 {
        match self {
            Self::Process => 0,
            Self::Simulated => 3,
        }
    }

    /// Parses the string form (case-insensitive) or the integer form written as text.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "process" | "0" => Some(Self::Process),
            "simulated" | "3" => Some(Self::Simulated),
            _ => None,
        }
    }
}

impl fmt::Display for PlatformType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serde support shared by both enums: write the string, read a string or an integer.
macro_rules! string_or_int_serde {
    ($ty:ty, $what:literal, $expected:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expected)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        <$ty>::parse(v).ok_or_else(|| {
                            E::custom(format!("unknown {} `{v}`, expected {}", $what, $expected))
                        })
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

string_or_int_serde!(
    InstanceStatus,
    "status",
    "one of Created, Running, Stopped, Error, ConfigurationChanged (or 0-4)"
);
string_or_int_serde!(
    PlatformType,
    "platformType",
    "Process or Simulated (or 0, 3)"
);

/// A managed instance, as the DRaaS API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Unique id (a UUID).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Where it runs.
    pub platform_type: PlatformType,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of its record, configuration or status.
    pub last_modified_at: Option<DateTime<Utc>>,
    /// Last known status.
    pub status: InstanceStatus,
    /// Labels.
    pub metadata: Labels,
}

/// Last known runtime information of an instance (`GET /api/status/{id}/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    /// The instance.
    pub instance_id: String,
    /// Last known status.
    pub status: InstanceStatus,
    /// When the current or last run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last run ended.
    pub stopped_at: Option<DateTime<Utc>>,
    /// OS process id while running (Process platform), as text like the original.
    pub process_id: Option<String>,
    /// Details: `platformType`, `port`, `configFilePath`, `exitCode`, … merged from every
    /// status change.
    pub runtime_metadata: Labels,
    /// Why the instance is in `Error`, if it is.
    pub error_message: Option<String>,
}

/// One entry of the change feed.
///
/// `oldStatus`/`newStatus` repeat `previousStatus`/`status` under the names the .NET
/// original's `StatusChangeRecord` uses, so a seed client reads the array form unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// Monotonically increasing, never reused, survives restarts.
    pub sequence: u64,
    /// The instance that changed.
    pub instance_id: String,
    /// The new status.
    pub status: InstanceStatus,
    /// The status before, if the instance had one.
    pub previous_status: Option<InstanceStatus>,
    /// Who reported it (`controlplane`, `process-monitor`, or a daemon's name).
    pub source: String,
    /// When it was recorded.
    pub timestamp: DateTime<Utc>,
    /// Details (e.g. `exitCode`).
    pub metadata: Labels,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusChangeWire {
    sequence: u64,
    instance_id: String,
    status: InstanceStatus,
    previous_status: Option<InstanceStatus>,
    #[serde(default, skip_deserializing)]
    new_status: Option<InstanceStatus>,
    #[serde(default, skip_deserializing)]
    old_status: Option<InstanceStatus>,
    source: String,
    timestamp: DateTime<Utc>,
    #[serde(default)]
    metadata: Labels,
}

impl Serialize for StatusChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StatusChangeWire {
            sequence: self.sequence,
            instance_id: self.instance_id.clone(),
            status: self.status,
            previous_status: self.previous_status,
            new_status: Some(self.status),
            old_status: self.previous_status,
            source: self.source.clone(),
            timestamp: self.timestamp,
            metadata: self.metadata.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StatusChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = StatusChangeWire::deserialize(deserializer)?;
        Ok(Self {
            sequence: w.sequence,
            instance_id: w.instance_id,
            status: w.status,
            previous_status: w.previous_status,
            source: w.source,
            timestamp: w.timestamp,
            metadata: w.metadata,
        })
    }
}

/// Field names whose string enum values [`encode_enums`] turns into integers.
const ENUM_FIELDS: [&str; 5] = [
    "status",
    "previousStatus",
    "oldStatus",
    "newStatus",
    "platformType",
];

/// Rewrites the enum fields of one serialized model object (an [`Instance`],
/// [`RuntimeInfo`] or [`StatusChange`]) to their integer form. Only the object's own
/// top-level fields are touched, never nested user data.
pub fn encode_enums(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    for field in ENUM_FIELDS {
        if let Some(Value::String(text)) = map.get(field) {
            let int = if field == "platformType" {
                PlatformType::parse(text).map(PlatformType::as_int)
            } else {
                InstanceStatus::parse(text).map(InstanceStatus::as_int)
            };
            if let Some(int) = int {
                map.insert(field.to_owned(), Value::from(int));
            }
        }
    }
}

/// The default desired configuration of a new instance (the seed's defaults, bound to
/// loopback like the seed's Process platform).
pub fn default_configuration(port: u16) -> Value {
    serde_json::json!({
        "host": "127.0.0.1",
        "port": port,
        "logLevel": "info",
        "sources": [],
        "queries": [],
        "reactions": [],
    })
}

/// Checks and normalises a desired configuration: it must be an object; `host` and
/// `logLevel` strings; `port` an integer in 1..=65535; `sources`, `queries`, `reactions`
/// arrays of objects. A query's `query` (the YAML name) is renamed `queryText` (the JSON
/// model's name). Unknown keys (e.g. `stub`, `persistConfig`) are kept.
///
/// The error names the offending field (`port`, `queries[1].queryText`, …).
pub fn normalize_configuration(mut config: Value) -> Result<Value, String> {
    let Some(map) = config.as_object_mut() else {
        return Err(format!(
            "the configuration must be a JSON object, not {}",
            kind(&config)
        ));
    };
    for key in ["host", "logLevel"] {
        if let Some(v) = map.get(key)
            && !v.is_string()
        {
            return Err(format!("`{key}` must be a string, not {}", kind(v)));
        }
    }
    if let Some(v) = map.get("port") {
        let ok = v.as_u64().is_some_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err(format!(
                "`port` must be an integer between 1 and 65535, not {v}"
            ));
        }
    }
    for key in ["sources", "queries", "reactions"] {
        match map.get(key) {
            None => {}
            Some(Value::Array(items)) => {
                if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                    return Err(format!(
                        "`{key}[{i}]` must be an object, not {}",
                        kind(item)
                    ));
                }
            }
            Some(other) => return Err(format!("`{key}` must be an array, not {}", kind(other))),
        }
    }
    if let Some(Value::Array(queries)) = map.get_mut("queries") {
        for (i, query) in queries.iter_mut().enumerate() {
            let query: &mut Map<String, Value> = query.as_object_mut().expect("checked above");
            if let Some(text) = query.remove("query") {
                match query.get("queryText") {
                    Some(existing) if *existing != text => {
                        return Err(format!(
                            "`queries[{i}]` has both `query` and `queryText` with different text; give one"
                        ));
                    }
                    _ => {
                        query.insert("queryText".to_owned(), text);
                    }
                }
            }
            if let Some(v) = query.get("queryText")
                && !v.is_string()
            {
                return Err(format!(
                    "`queries[{i}].queryText` must be a string, not {}",
                    kind(v)
                ));
            }
        }
    }
    Ok(config)
}

/// Fills the top-level keys a configuration lacks from `base` (used when a start body or
/// a clone gives a partial configuration).
pub fn fill_missing(config: &mut Value, base: &Value) {
    if let (Some(config), Some(base)) = (config.as_object_mut(), base.as_object()) {
        for (key, value) in base {
            config.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

/// The configuration's `port`, if it has a valid one.
pub fn configuration_port(config: &Value) -> Option<u16> {
    config
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
}

/// The configuration's `host`, or loopback.
pub fn configuration_host(config: &Value) -> String {
    config
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1")
        .to_owned()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_read_strings_and_integers_and_write_strings() {
        let s: InstanceStatus = serde_json::from_value(json!(1)).unwrap();
        assert_eq!(s, InstanceStatus::Running);
        let s: InstanceStatus = serde_json::from_value(json!("configurationchanged")).unwrap();
        assert_eq!(s, InstanceStatus::ConfigurationChanged);
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!("ConfigurationChanged")
        );
        assert!(serde_json::from_value::<InstanceStatus>(json!(9)).is_err());
        assert!(serde_json::from_value::<InstanceStatus>(json!("Paused")).is_err());
        for (i, s) in InstanceStatus::ALL.iter().enumerate() {
            assert_eq!(s.as_int(), i as i64);
        }
    }

    #[test]
    fn encode_enums_touches_only_top_level_enum_fields() {
        let mut v = json!({"status": "Error", "platformType": "Simulated",
                           "previousStatus": null, "metadata": {"status": "Running"}});
        encode_enums(&mut v);
        assert_eq!(v["status"], 3);
        assert_eq!(v["platformType"], 3);
        assert_eq!(v["previousStatus"], Value::Null);
        assert_eq!(v["metadata"]["status"], "Running");
    }

    #[test]
    fn normalize_names_the_offending_field() {
        let err = normalize_configuration(json!({"port": "80"})).unwrap_err();
        assert!(err.contains("`port`"), "{err}");
        let err = normalize_configuration(json!({"queries": [{}, 3]})).unwrap_err();
        assert!(err.contains("`queries[1]`"), "{err}");
        let err = normalize_configuration(json!({"queries": [{"query": 1}]})).unwrap_err();
        assert!(err.contains("queries[0].queryText"), "{err}");
        assert!(normalize_configuration(json!([])).is_err());
    }

    #[test]
    fn normalize_renames_query_to_query_text_and_keeps_unknown_keys() {
        let v = normalize_configuration(json!({"queries": [{"id": "q", "query": "MATCH"}],
                                               "stub": {"unhealthy": true}}))
        .unwrap();
        assert_eq!(v["queries"][0], json!({"id": "q", "queryText": "MATCH"}));
        assert_eq!(v["stub"]["unhealthy"], true);
    }

    #[test]
    fn status_change_carries_the_seed_names_too() {
        let change = StatusChange {
            sequence: 7,
            instance_id: "a".into(),
            status: InstanceStatus::Stopped,
            previous_status: Some(InstanceStatus::Running),
            source: "test".into(),
            timestamp: Utc::now(),
            metadata: Labels::new(),
        };
        let v = serde_json::to_value(&change).unwrap();
        assert_eq!(v["newStatus"], "Stopped");
        assert_eq!(v["oldStatus"], "Running");
        let back: StatusChange = serde_json::from_value(v).unwrap();
        assert_eq!(back, change);
    }
}
