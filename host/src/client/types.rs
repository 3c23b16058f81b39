//! The host's own view of the DRaaS data model, decoded tolerantly.
//!
//! These types do not depend on the reference control plane's crate: they accept what the
//! .NET original writes (enums as integers, `oldStatus`/`newStatus`, `null` collections,
//! timestamps without a zone) as well as what the reference control plane writes (enums as
//! strings, sequence numbers). Unknown fields are ignored everywhere.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Labels (DRaaS `metadata`): string keys to string values.
pub type Labels = BTreeMap<String, String>;

/// A point in time, in UTC.
pub type Timestamp = DateTime<Utc>;

/// An instance's status, in the .NET original's order: its integer form is the index
/// (`Created = 0`, `Running = 1`, `Stopped = 2`, `Error = 3`, `ConfigurationChanged = 4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Created, never started.
    Created,
    /// Running.
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

    /// The status with .NET integer form `n`.
    pub fn from_int(n: i64) -> Option<Self> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// Parses the string form, case-insensitively, or an integer written as text.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(n) = text.parse::<i64>() {
            return Self::from_int(n);
        }
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for InstanceStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InstanceStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;
        impl Visitor<'_> for StatusVisitor {
            type Value = InstanceStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "one of Created, Running, Stopped, Error, ConfigurationChanged (or 0-4)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InstanceStatus, E> {
                InstanceStatus::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown status `{v}`, expected one of Created, Running, Stopped, Error, \
                         ConfigurationChanged (or 0-4)"
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InstanceStatus, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InstanceStatus, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(StatusVisitor)
    }
}

/// Where an instance runs. Integer forms follow the .NET original (`Process = 0`,
/// `Docker = 1`, `AKS = 2`) and the reference control plane (`Simulated = 3`); any other
/// value is kept as [`PlatformType::Other`] rather than rejected, so a control plane that
/// grows a platform does not break the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PlatformType {
    /// A local OS process.
    Process,
    /// A Docker container.
    Docker,
    /// Azure Kubernetes Service.
    Aks,
    /// A record only (the reference control plane's scale-test platform).
    Simulated,
    /// A platform this host does not know, as written (an integer is kept as its text).
    Other(String),
}

impl PlatformType {
    /// The string form (the .NET name; `Other` as written).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Process => "Process",
            Self::Docker => "Docker",
            Self::Aks => "AKS",
            Self::Simulated => "Simulated",
            Self::Other(text) => text,
        }
    }

    /// Parses the string form (case-insensitive) or the integer form written as text;
    /// never fails.
    pub fn parse(text: &str) -> Self {
        match text.trim().to_ascii_lowercase().as_str() {
            "process" | "0" => Self::Process,
            "docker" | "1" => Self::Docker,
            "aks" | "2" => Self::Aks,
            "simulated" | "3" => Self::Simulated,
            _ => Self::Other(text.trim().to_owned()),
        }
    }
}

impl fmt::Display for PlatformType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PlatformType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PlatformType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PlatformVisitor;
        impl Visitor<'_> for PlatformVisitor {
            type Value = PlatformType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a platform name or its integer form")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PlatformType, E> {
                Ok(PlatformType::parse(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PlatformType, E> {
                Ok(PlatformType::parse(&v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PlatformType, E> {
                Ok(PlatformType::parse(&v.to_string()))
            }
        }
        deserializer.deserialize_any(PlatformVisitor)
    }
}

/// A managed instance (`GET {base}/server/instances/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Unique id.
    pub id: String,
    /// Human name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Free text (`null` reads as empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    /// Where it runs (absent reads as `Process`, the .NET default).
    #[serde(default = "default_platform")]
    pub platform_type: PlatformType,
    /// Creation time.
    #[serde(deserialize_with = "timestamp")]
    pub created_at: Timestamp,
    /// Last change of its record, configuration or status, when the control plane says.
    #[serde(default, deserialize_with = "optional_timestamp")]
    pub last_modified_at: Option<Timestamp>,
    /// Last known status.
    pub status: InstanceStatus,
    /// Labels (`null` reads as empty; non-string values are kept as their JSON text).
    #[serde(default, deserialize_with = "labels")]
    pub metadata: Labels,
}

fn default_platform() -> PlatformType {
    PlatformType::Process
}

/// Last known runtime information of an instance (`GET {base}/status/{id}/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    /// The instance (empty if the control plane omits it).
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    /// Last known status.
    pub status: InstanceStatus,
    /// When the current or last run started.
    #[serde(default, deserialize_with = "optional_timestamp")]
    pub started_at: Option<Timestamp>,
    /// When the last run ended.
    #[serde(default, deserialize_with = "optional_timestamp")]
    pub stopped_at: Option<Timestamp>,
    /// Why the instance is in `Error`, if the control plane says.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Everything else the control plane reports (`runtimeMetadata`: `platformType`,
    /// `port`, `exitCode`, …), as JSON: `{}` when absent.
    #[serde(default = "empty_object", deserialize_with = "json_object")]
    pub runtime_metadata: Value,
}

/// One entry of the change feed.
///
/// Reads both the reference control plane's names (`status`, `previousStatus`,
/// `sequence`) and the .NET original's `StatusChangeRecord` names (`newStatus`,
/// `oldStatus`, no sequence); when both are present they agree and `status` wins.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    /// Position in the sequence-numbered feed; `None` from the timestamp route of a
    /// control plane that has no sequence numbers.
    pub sequence: Option<u64>,
    /// The instance that changed.
    pub instance_id: String,
    /// The new status.
    pub status: InstanceStatus,
    /// The status before, if the control plane says.
    pub previous_status: Option<InstanceStatus>,
    /// Who reported it (`controlplane`, `process-monitor`, a daemon's name).
    pub source: String,
    /// When it was recorded.
    pub timestamp: Timestamp,
    /// Details (e.g. `exitCode`).
    pub metadata: Labels,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusChangeWire {
    #[serde(default)]
    sequence: Option<u64>,
    instance_id: String,
    #[serde(default)]
    status: Option<InstanceStatus>,
    #[serde(default)]
    new_status: Option<InstanceStatus>,
    #[serde(default)]
    previous_status: Option<InstanceStatus>,
    #[serde(default)]
    old_status: Option<InstanceStatus>,
    #[serde(default, deserialize_with = "null_as_default")]
    source: String,
    #[serde(deserialize_with = "timestamp")]
    timestamp: Timestamp,
    #[serde(default, deserialize_with = "labels")]
    metadata: Labels,
}

impl<'de> Deserialize<'de> for StatusChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = StatusChangeWire::deserialize(deserializer)?;
        let status = w
            .status
            .or(w.new_status)
            .ok_or_else(|| de::Error::missing_field("status"))?;
        Ok(Self {
            sequence: w.sequence,
            instance_id: w.instance_id,
            status,
            previous_status: w.previous_status.or(w.old_status),
            source: w.source,
            timestamp: w.timestamp,
            metadata: w.metadata,
        })
    }
}

/// One page of the sequence-numbered change feed
/// (`GET {base}/status/recent-changes?after=SEQ&wait=S`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeBatch {
    /// Changes after the cursor, oldest first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub changes: Vec<StatusChange>,
    /// The newest sequence number the control plane has handed out: the next cursor when
    /// `changes` is empty (otherwise the last change's sequence is).
    #[serde(default)]
    pub latest_sequence: Option<u64>,
    /// The oldest sequence number still retained, if the control plane says.
    #[serde(default)]
    pub oldest_sequence: Option<u64>,
    /// `true` when changes after the cursor may be missing (the cursor fell off the
    /// control plane's buffer, or is from the future): the caller must resync fully.
    #[serde(default)]
    pub truncated: bool,
}

impl ChangeBatch {
    /// The cursor to pass to the next [`changes_after`](super::ControlPlane::changes_after):
    /// the newest sequence seen in this batch or reported by the control plane.
    pub fn next_cursor(&self) -> Option<u64> {
        let last = self.changes.iter().filter_map(|c| c.sequence).max();
        match (last, self.latest_sequence) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An instance's health as the control plane probes it
/// (`GET {base}/extensions/instances/{id}/health`, an extension).
///
/// Also reads a drasi-server style body, `{"status": "healthy" | "unhealthy"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Whether the instance answers its health check.
    pub healthy: bool,
    /// Why not, or what was checked.
    pub detail: Option<String>,
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            healthy: Option<bool>,
            #[serde(default)]
            status: Option<String>,
            #[serde(default)]
            detail: Option<String>,
        }
        let w = Wire::deserialize(deserializer)?;
        let healthy = match (w.healthy, w.status.as_deref()) {
            (Some(h), _) => h,
            (None, Some(s)) => s.eq_ignore_ascii_case("healthy"),
            (None, None) => return Err(de::Error::missing_field("healthy")),
        };
        Ok(Self {
            healthy,
            detail: w.detail,
        })
    }
}

/// Request and error counters of an instance's traffic
/// (`GET {base}/extensions/instances/{id}/metrics`, an extension). Counters only grow while
/// an instance runs; a strategy compares two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Requests served.
    #[serde(default)]
    pub requests: u64,
    /// Of which failed.
    #[serde(default)]
    pub errors: u64,
}

/// One backend of a weighted endpoint (`PUT {base}/extensions/endpoints/{name}`, an extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendWeight {
    /// The instance serving the share.
    pub instance_id: String,
    /// Its relative weight (the share is `weight / sum of weights`).
    pub weight: u32,
}

/// Which extensions beyond the DRaaS seed API a control plane offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The sequence-numbered change feed with long-poll
    /// ([`changes_after`](super::ControlPlane::changes_after)); without it the host polls
    /// [`changes_since`](super::ControlPlane::changes_since) and cannot detect lost changes.
    pub sequence_feed: bool,
    /// [`clone_instance`](super::ControlPlane::clone_instance).
    pub clone_instance: bool,
    /// [`delete_clone`](super::ControlPlane::delete_clone). Read as `deleteInstance`
    /// too, its name before contract 0.2.
    #[serde(alias = "deleteInstance")]
    pub delete_clone: bool,
    /// [`set_traffic_weights`](super::ControlPlane::set_traffic_weights).
    pub traffic_weights: bool,
    /// [`probe_health`](super::ControlPlane::probe_health).
    pub health: bool,
    /// [`metrics`](super::ControlPlane::metrics).
    pub metrics: bool,
    /// [`running_configuration`](super::ControlPlane::running_configuration) and its bulk
    /// form: what instances run is observed, not taken from the host's record. Absent in
    /// older serialised forms, where it reads as `false`.
    #[serde(default)]
    pub running_configuration: bool,
}

impl Capabilities {
    /// What the DRaaS seed API offers: delete, nothing else.
    pub const SEED: Capabilities = Capabilities {
        sequence_feed: false,
        clone_instance: false,
        delete_clone: true,
        traffic_weights: false,
        health: false,
        metrics: false,
        running_configuration: false,
    };

    /// What the reference control plane (`examples/controlplane`) offers: everything.
    pub const REFERENCE: Capabilities = Capabilities {
        sequence_feed: true,
        clone_instance: true,
        delete_clone: true,
        traffic_weights: true,
        health: true,
        metrics: true,
        running_configuration: true,
    };
}

/// `null` (or absence, with `#[serde(default)]`) reads as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Labels: `null` is empty; a non-string value is kept as its JSON text (a control plane
/// that writes `"port": 8080` does not make the whole instance unreadable).
fn labels<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
    let map = Option::<BTreeMap<String, Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A JSON object, `{}` for `null`.
fn json_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Value::Object(Default::default())),
        other => Ok(other),
    }
}

/// Parses RFC 3339, or a zone-less ISO 8601 timestamp (what .NET writes for a
/// `DateTime` of unspecified kind), taken as UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
}

fn timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_timestamp(&text).ok_or_else(|| {
        de::Error::custom(format!(
            "invalid timestamp `{text}`, expected RFC 3339 like 2024-05-01T12:00:00Z"
        ))
    })
}

fn optional_timestamp<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Timestamp>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => parse_timestamp(&text).map(Some).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid timestamp `{text}`, expected RFC 3339 like 2024-05-01T12:00:00Z"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_decodes_dotnet_integers_and_nulls() {
        let v = json!({
            "id": "a", "name": "n", "description": null, "platformType": 0,
            "createdAt": "2024-05-01T12:00:00.1234567", "lastModifiedAt": null,
            "status": 1, "metadata": null, "extra": {"ignored": true}
        });
        let i: Instance = serde_json::from_value(v).unwrap();
        assert_eq!(i.status, InstanceStatus::Running);
        assert_eq!(i.platform_type, PlatformType::Process);
        assert_eq!(i.description, "");
        assert!(i.metadata.is_empty());
        assert_eq!(
            i.created_at.to_rfc3339(),
            "2024-05-01T12:00:00.123456700+00:00"
        );
    }

    #[test]
    fn instance_decodes_strings_case_insensitively_and_keeps_unknown_platforms() {
        let v = json!({
            "id": "a", "name": "n", "description": "d", "platformType": "kubernetes",
            "createdAt": "2024-05-01T12:00:00Z", "status": "configurationCHANGED",
            "metadata": {"team": "x", "port": 8080}
        });
        let i: Instance = serde_json::from_value(v).unwrap();
        assert_eq!(i.status, InstanceStatus::ConfigurationChanged);
        assert_eq!(i.platform_type, PlatformType::Other("kubernetes".into()));
        assert_eq!(i.metadata["port"], "8080");
        for (n, p) in [
            (1, PlatformType::Docker),
            (2, PlatformType::Aks),
            (3, PlatformType::Simulated),
        ] {
            assert_eq!(serde_json::from_value::<PlatformType>(json!(n)).unwrap(), p);
        }
        assert_eq!(
            serde_json::from_value::<PlatformType>(json!(7)).unwrap(),
            PlatformType::Other("7".into())
        );
    }

    #[test]
    fn every_status_integer_maps_in_dotnet_order_and_unknowns_are_rejected() {
        for (n, s) in InstanceStatus::ALL.iter().enumerate() {
            assert_eq!(
                serde_json::from_value::<InstanceStatus>(json!(n)).unwrap(),
                *s
            );
            let lower = s.as_str().to_lowercase();
            assert_eq!(
                serde_json::from_value::<InstanceStatus>(json!(lower)).unwrap(),
                *s
            );
        }
        let err = serde_json::from_value::<InstanceStatus>(json!("Paused")).unwrap_err();
        assert!(err.to_string().contains("unknown status `Paused`"), "{err}");
        assert!(serde_json::from_value::<InstanceStatus>(json!(5)).is_err());
    }

    #[test]
    fn status_change_reads_seed_and_reference_names() {
        let seed: StatusChange = serde_json::from_value(json!({
            "instanceId": "a", "oldStatus": 1, "newStatus": 3,
            "source": "ProcessMonitor", "timestamp": "2024-05-01T12:00:00Z"
        }))
        .unwrap();
        assert_eq!(seed.sequence, None);
        assert_eq!(seed.status, InstanceStatus::Error);
        assert_eq!(seed.previous_status, Some(InstanceStatus::Running));

        let reference: StatusChange = serde_json::from_value(json!({
            "sequence": 7, "instanceId": "a", "status": "Stopped", "previousStatus": "Running",
            "newStatus": "Stopped", "oldStatus": "Running", "source": "controlplane",
            "timestamp": "2024-05-01T12:00:00Z", "metadata": {"exitCode": "0"}
        }))
        .unwrap();
        assert_eq!(reference.sequence, Some(7));
        assert_eq!(reference.status, InstanceStatus::Stopped);
        assert_eq!(reference.metadata["exitCode"], "0");
    }

    #[test]
    fn runtime_info_keeps_metadata_as_json() {
        let r: RuntimeInfo = serde_json::from_value(json!({
            "instanceId": "a", "status": 2, "startedAt": null, "processId": "42",
            "runtimeMetadata": {"port": "8080"}
        }))
        .unwrap();
        assert_eq!(r.status, InstanceStatus::Stopped);
        assert_eq!(r.runtime_metadata["port"], "8080");
        let r: RuntimeInfo = serde_json::from_value(json!({"status": "Running"})).unwrap();
        assert_eq!(r.runtime_metadata, json!({}));
    }

    #[test]
    fn health_reads_both_shapes() {
        let h: Health = serde_json::from_value(json!({"healthy": false, "detail": "x"})).unwrap();
        assert!(!h.healthy);
        let h: Health = serde_json::from_value(json!({"status": "healthy", "id": "a"})).unwrap();
        assert!(h.healthy);
        assert!(serde_json::from_value::<Health>(json!({})).is_err());
    }

    #[test]
    fn next_cursor_prefers_the_newest_sequence() {
        let batch: ChangeBatch = serde_json::from_value(json!({
            "latestSequence": 9, "truncated": false,
            "changes": [{"sequence": 8, "instanceId": "a", "status": 1,
                         "source": "s", "timestamp": "2024-05-01T12:00:00Z"}]
        }))
        .unwrap();
        assert_eq!(batch.next_cursor(), Some(9));
        let empty = ChangeBatch {
            changes: vec![],
            latest_sequence: None,
            oldest_sequence: None,
            truncated: false,
        };
        assert_eq!(empty.next_cursor(), None);
    }
}
