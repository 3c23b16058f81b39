//! A setpoint drift comparator: reports every top-level field of the desired
//! configuration that the actual one lacks, has with another value, or has in excess,
//! except the fields named in the `ignore` parameter.
//!
//! Parameters (a JSON object, from the policy rule that picks this comparator):
//! `ignore`, a list of top-level field names to skip (default: none).
//!
//! Start here: change [`TemplatePlugin::compare`] and its tests below. `cargo test` runs
//! them natively; README.md says how to build the component and try it with
//! `setpoint plugins check` and `setpoint plugins run`.

use setpoint_plugin::{Comparator, Drift, Metadata, PluginError, Value, pointer};

/// The comparator.
#[derive(Debug)]
pub struct TemplatePlugin;

// Export `TemplatePlugin` as the component's `drift-comparator` (on wasm32; natively this
// only checks that it implements `Comparator`).
setpoint_plugin::comparator!(TemplatePlugin);

impl Comparator for TemplatePlugin {
    fn metadata() -> Metadata {
        Metadata::comparator(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Reports the top-level fields that differ, except those in `ignore`",
        )
    }

    fn compare(desired: &Value, actual: &Value, params: &Value) -> Result<Vec<Drift>, PluginError> {
        let ignore = ignored_fields(params)?;
        let (Some(desired), Some(actual)) = (desired.as_object(), actual.as_object()) else {
            // Not two objects: compare them whole.
            if desired == actual {
                return Ok(Vec::new());
            }
            return Ok(vec![Drift::changed("", desired.clone(), actual.clone())]);
        };
        let mut drifts = Vec::new();
        for (key, want) in desired {
            if ignore.contains(&key.as_str()) {
                continue;
            }
            let path = pointer::join("", key);
            match actual.get(key) {
                None => drifts.push(Drift::added(path, want.clone())),
                Some(have) if have != want => {
                    drifts.push(Drift::changed(path, want.clone(), have.clone()));
                }
                Some(_) => {}
            }
        }
        for (key, have) in actual {
            if !desired.contains_key(key) && !ignore.contains(&key.as_str()) {
                drifts.push(Drift::removed(pointer::join("", key), have.clone()));
            }
        }
        Ok(drifts)
    }
}

/// The `ignore` parameter: a list of field names, or nothing.
fn ignored_fields(params: &Value) -> Result<Vec<&str>, PluginError> {
    match params.get("ignore") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(names)) => names
            .iter()
            .map(|name| {
                name.as_str().ok_or_else(|| {
                    PluginError::invalid_params(
                        "parameter `ignore` must list field names (strings)",
                    )
                })
            })
            .collect(),
        Some(_) => Err(PluginError::invalid_params(
            "parameter `ignore` must be a list of field names",
        )),
    }
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::DriftKind;
    use setpoint_plugin::serde_json::json;

    use super::*;

    #[test]
    fn equal_configurations_have_no_drift() {
        let config = json!({"port": 8080, "logLevel": "info"});
        let drifts = TemplatePlugin::compare(&config, &config, &json!({})).unwrap();
        assert!(drifts.is_empty(), "{drifts:?}");
    }

    #[test]
    fn changed_added_and_removed_fields_are_reported() {
        let desired = json!({"port": 8081, "logLevel": "info", "tls": true});
        let actual = json!({"port": 8080, "logLevel": "info", "debug": true});
        let drifts = TemplatePlugin::compare(&desired, &actual, &json!({})).unwrap();
        let found: Vec<(&str, DriftKind)> =
            drifts.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            found,
            [
                ("/port", DriftKind::Changed),
                ("/tls", DriftKind::Added),
                ("/debug", DriftKind::Removed),
            ]
        );
        assert_eq!(drifts[0].message, "/port: 8080 -> 8081");
    }

    #[test]
    fn ignored_fields_are_skipped() {
        let desired = json!({"port": 8081, "replicas": 3});
        let actual = json!({"port": 8080, "replicas": 5});
        let params = json!({"ignore": ["replicas"]});
        let drifts = TemplatePlugin::compare(&desired, &actual, &params).unwrap();
        assert_eq!(drifts.len(), 1);
        assert_eq!(drifts[0].path, "/port");
    }

    #[test]
    fn a_bad_ignore_parameter_is_an_invalid_params_error() {
        let error = TemplatePlugin::compare(&json!({}), &json!({}), &json!({"ignore": "port"}))
            .unwrap_err();
        assert!(matches!(error, PluginError::InvalidParams(_)), "{error:?}");
    }

    #[test]
    fn the_contract_text_is_parsed_as_the_host_sends_it() {
        // What the component's `compare` export runs, minus the Wasm boundary.
        let drifts = setpoint_plugin::compare_json::<TemplatePlugin>(
            r#"{"port": 8081}"#,
            r#"{"port": 8080}"#,
            "{}",
        )
        .unwrap();
        assert_eq!(drifts.len(), 1);
        let error =
            setpoint_plugin::compare_json::<TemplatePlugin>("not json", "{}", "{}").unwrap_err();
        assert!(matches!(error, PluginError::InvalidInput(_)), "{error:?}");
    }

    #[test]
    fn metadata_names_the_crate() {
        let metadata = TemplatePlugin::metadata();
        assert_eq!(metadata.name, env!("CARGO_PKG_NAME"));
        assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
    }
}
