//! `drasi-summary`: a comparator with the DRaaS seed's drift rules for drasi-server
//! configurations.
//!
//! Start reading at [`DrasiSummary::compare`]. It looks at what the seed's reconciler
//! looks at, and nothing else:
//!
//! - the scalars `host`, `port` and `logLevel`: one drift each when they differ, with a
//!   message such as `port: 8080 -> 8081` (the running value, then the desired one);
//! - the number of `sources`, `queries` and `reactions`: one drift per list whose length
//!   differs, such as `sources: 2 -> 3`. The drift's values are the whole lists, so its
//!   path (`/sources`) points at them; a missing or `null` list counts as empty. Lists of
//!   equal length are not compared element by element (use `field-diff` for that).
//!
//! A key absent on one side is an added or removed drift. Both configurations must be
//! JSON objects. The comparator takes no parameters.
//!
//! Natively, [`compare_json`] runs what the component's `compare` export runs up to the
//! drifts; `setpoint_plugin::compare_wire::<DrasiSummary>` adds their conversion to the
//! contract's records.

use setpoint_plugin::serde_json::Value;
use setpoint_plugin::{Comparator, Drift, Metadata, PluginError};

/// The `drasi-summary` comparator.
#[derive(Debug)]
pub struct DrasiSummary;

setpoint_plugin::comparator!(DrasiSummary);

/// The scalar settings compared by value, in the order drifts are reported.
const SCALARS: [&str; 3] = ["host", "port", "logLevel"];
/// The lists compared by length, in the order drifts are reported.
const LISTS: [&str; 3] = ["sources", "queries", "reactions"];

impl Comparator for DrasiSummary {
    fn metadata() -> Metadata {
        Metadata::comparator(
            "drasi-summary",
            env!("CARGO_PKG_VERSION"),
            "DRaaS rules: host, port, logLevel and the counts of sources, queries, reactions",
        )
    }

    fn compare(desired: &Value, actual: &Value, params: &Value) -> Result<Vec<Drift>, PluginError> {
        check_params(params)?;
        let desired = object(desired, "desired")?;
        let actual = object(actual, "actual")?;
        let mut drifts = Vec::new();
        for key in SCALARS {
            let path = format!("/{key}");
            let drift = match (desired.get(key), actual.get(key)) {
                (Some(d), Some(a)) if d == a => continue,
                (None, None) => continue,
                (Some(d), Some(a)) => Drift::changed(path, d.clone(), a.clone()),
                (Some(d), None) => Drift::added(path, d.clone()),
                (None, Some(a)) => Drift::removed(path, a.clone()),
            };
            let message = format!(
                "{key}: {} -> {}",
                render(drift.actual.as_ref()),
                render(drift.desired.as_ref())
            );
            drifts.push(drift.with_message(message));
        }
        for key in LISTS {
            let (d, a) = (desired.get(key), actual.get(key));
            let (d_len, a_len) = (list_len(d, key, "desired")?, list_len(a, key, "actual")?);
            if d_len == a_len {
                continue;
            }
            let path = format!("/{key}");
            let drift = match (present(d), present(a)) {
                (Some(d), Some(a)) => Drift::changed(path, d.clone(), a.clone()),
                (Some(d), None) => Drift::added(path, d.clone()),
                (None, Some(a)) => Drift::removed(path, a.clone()),
                (None, None) => unreachable!("two absent lists have the same length"),
            };
            drifts.push(drift.with_message(format!("{key}: {a_len} -> {d_len}")));
        }
        Ok(drifts)
    }
}

/// Parse the JSON texts and compare them, for native callers and tests.
pub fn compare_json(desired: &str, actual: &str, params: &str) -> Result<Vec<Drift>, PluginError> {
    setpoint_plugin::compare_json::<DrasiSummary>(desired, actual, params)
}

fn check_params(params: &Value) -> Result<(), PluginError> {
    match params {
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(name) => Err(PluginError::invalid_params(format!(
                "unknown parameter `{name}`; drasi-summary takes no parameters"
            ))),
        },
        other => Err(PluginError::invalid_params(format!(
            "params must be a JSON object, got {other}"
        ))),
    }
}

fn object<'v>(
    value: &'v Value,
    side: &str,
) -> Result<&'v setpoint_plugin::serde_json::Map<String, Value>, PluginError> {
    value.as_object().ok_or_else(|| {
        PluginError::invalid_input(format!(
            "the {side} configuration must be a JSON object (a drasi-server configuration)"
        ))
    })
}

/// `value` unless it is absent or `null`.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn list_len(value: Option<&Value>, key: &str, side: &str) -> Result<usize, PluginError> {
    match present(value) {
        None => Ok(0),
        Some(Value::Array(items)) => Ok(items.len()),
        Some(other) => Err(PluginError::invalid_input(format!(
            "`{key}` in the {side} configuration must be a list, got {other}"
        ))),
    }
}

/// A scalar as people write it: strings without quotes, `(absent)` for a missing value.
fn render(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::DriftKind;
    use setpoint_plugin::serde_json::json;

    use super::*;

    fn seed() -> Value {
        json!({
            "host": "0.0.0.0",
            "port": 8080,
            "logLevel": "info",
            "sources": [{"id": "my-postgres"}, {"id": "test-source"}],
            "queries": [{"id": "active-orders"}],
            "reactions": [{"id": "log-output"}],
        })
    }

    fn messages(desired: &Value, actual: &Value) -> Vec<String> {
        DrasiSummary::compare(desired, actual, &json!({}))
            .unwrap()
            .into_iter()
            .map(|d| d.message)
            .collect()
    }

    #[test]
    fn equal_configurations_have_no_drift() {
        assert!(messages(&seed(), &seed()).is_empty());
    }

    #[test]
    fn scalar_changes_read_running_then_desired() {
        let mut desired = seed();
        desired["port"] = json!(8081);
        desired["logLevel"] = json!("debug");
        assert_eq!(
            messages(&desired, &seed()),
            ["port: 8080 -> 8081", "logLevel: info -> debug"]
        );
    }

    #[test]
    fn list_counts_are_compared_and_point_at_the_lists() {
        let mut desired = seed();
        desired["sources"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "x"}));
        let drifts = DrasiSummary::compare(&desired, &seed(), &json!({})).unwrap();
        assert_eq!(drifts.len(), 1);
        assert_eq!(drifts[0].message, "sources: 2 -> 3");
        assert_eq!(drifts[0].path, "/sources");
        assert_eq!(drifts[0].kind, DriftKind::Changed);
        assert_eq!(drifts[0].desired.as_ref(), desired.get("sources"));
    }

    #[test]
    fn same_count_with_different_elements_is_not_drift() {
        let mut desired = seed();
        desired["queries"] = json!([{"id": "other"}]);
        assert!(messages(&desired, &seed()).is_empty());
    }

    #[test]
    fn absent_values_are_added_or_removed() {
        let mut actual = seed();
        actual.as_object_mut().unwrap().remove("host");
        actual.as_object_mut().unwrap().remove("reactions");
        let drifts = DrasiSummary::compare(&seed(), &actual, &json!({})).unwrap();
        let kinds: Vec<_> = drifts.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("/host", DriftKind::Added),
                ("/reactions", DriftKind::Added)
            ]
        );
        assert_eq!(drifts[0].message, "host: (absent) -> 0.0.0.0");
        assert_eq!(drifts[1].message, "reactions: 0 -> 1");
    }

    #[test]
    fn wrong_shapes_are_invalid_input() {
        assert!(matches!(
            DrasiSummary::compare(&json!([]), &seed(), &json!({})),
            Err(PluginError::InvalidInput(_))
        ));
        let mut bad = seed();
        bad["sources"] = json!("two");
        let Err(PluginError::InvalidInput(message)) =
            DrasiSummary::compare(&bad, &seed(), &json!({}))
        else {
            panic!("a non-list `sources` should be rejected");
        };
        assert!(message.contains("`sources`"), "{message}");
    }

    #[test]
    fn parameters_are_rejected_by_name() {
        let Err(PluginError::InvalidParams(message)) =
            DrasiSummary::compare(&seed(), &seed(), &json!({"ignore": []}))
        else {
            panic!("params should be rejected");
        };
        assert!(message.contains("`ignore`"), "{message}");
    }

    #[test]
    fn compare_json_parses_like_the_export() {
        let drifts = compare_json(r#"{"port": 1}"#, r#"{"port": 2}"#, "{}").unwrap();
        assert_eq!(drifts[0].message, "port: 2 -> 1");
    }
}
