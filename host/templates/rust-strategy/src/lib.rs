//! A setpoint rollout strategy: stops the instance, starts it with the desired
//! configuration, and is done once the instance reports healthy; it fails (retryably)
//! when that takes longer than the `timeout` parameter.
//!
//! Parameters (a JSON object, from the policy rule that picks this strategy): `timeout`,
//! how long to wait for health, as `"500ms"`, `"30s"`, `"2m"` or a number of
//! milliseconds (default `"30s"`). The host's reserved `$` parameters are accepted.
//!
//! A strategy never blocks and has no clock: the host calls [`Strategy::step`] again
//! after the delay a requeue asks for, with the state it returned, and tells it how long
//! the rollout has run ([`Rollout::elapsed`]). The same step may be called again after a
//! crash, so each step must be safe to repeat.
//!
//! It uses only the control plane's `instances` calls, which every control plane offers,
//! and rolls out one instance at a time. A strategy that clones instances, moves traffic
//! or reads metrics turns on the SDK's matching feature (`clones`, `traffic`,
//! `metrics`) in Cargo.toml; one that converges a group of instances at once declares it
//! with `Metadata::with_group_rollouts`.
//!
//! Start here: change [`TemplatePlugin::step`] and its tests below. `cargo test` runs
//! them natively against a fake control plane; README.md says how to build the component
//! and try it with `setpoint plugins check` and `setpoint plugins run`.

use std::time::Duration;

use setpoint_plugin::serde_json::{Value, json};
use setpoint_plugin::{ControlPlane, Metadata, PluginError, Progress, Rollout, Strategy};

/// The strategy.
#[derive(Debug)]
pub struct TemplatePlugin;

// Export `TemplatePlugin` as the component's `rollout-strategy` (on wasm32; natively this
// only checks that it implements `Strategy`).
setpoint_plugin::strategy!(TemplatePlugin);

/// How often to ask for health while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How long to wait for health unless the `timeout` parameter says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Strategy for TemplatePlugin {
    fn metadata() -> Metadata {
        Metadata::strategy(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Stops the instance, starts it with the desired configuration, waits for health",
        )
    }

    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        match step(rollout, cp) {
            Ok(progress) => progress,
            Err(error) => error.into(),
        }
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        // Put back what the instance ran before, when the host knows it.
        let Some(previous) = rollout.actual() else {
            return Progress::done("nothing to undo: the previous configuration is unknown");
        };
        let id = rollout.instance_id();
        if let Err(error) = cp.stop(id).and_then(|()| cp.start(id, Some(previous))) {
            return Progress::failed(format!("restoring {id}: {error}"), true);
        }
        Progress::done(format!("{id} restarted with its previous configuration"))
    }
}

fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Result<Progress, PluginError> {
    rollout.check_params(env!("CARGO_PKG_NAME"), &["timeout"])?;
    let timeout = rollout.duration_param_or("timeout", DEFAULT_TIMEOUT)?;
    let id = rollout.instance_id();

    // First step (no state yet): restart the instance with the desired configuration.
    let state: Option<Value> = rollout.state()?;
    if state.is_none() {
        cp.stop(id)
            .map_err(|e| PluginError::other(format!("stopping {id}: {e}")))?;
        cp.start(id, Some(rollout.desired()))
            .map_err(|e| PluginError::other(format!("starting {id}: {e}")))?;
        return Ok(Progress::requeue(
            POLL,
            &json!({"started": true}),
            format!("started {id}; waiting for it to report healthy"),
        ));
    }

    // Later steps: wait for health.
    let health = cp
        .probe_health(id)
        .map_err(|e| PluginError::other(format!("probing {id}: {e}")))?;
    if health.healthy {
        return Ok(Progress::done(format!(
            "{id} runs the desired configuration and is healthy"
        )));
    }
    if rollout.elapsed >= timeout {
        return Ok(Progress::failed(
            format!("{id} not healthy within {timeout:?}: {}", health.detail),
            true,
        ));
    }
    Ok(Progress::requeue(
        POLL,
        &state,
        format!("waiting for {id} to report healthy: {}", health.detail),
    ))
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::testing::{Call, Driver, FakeControlPlane};
    use setpoint_plugin::{InstanceInfo, InstanceStatus};

    use super::*;

    fn control_plane() -> FakeControlPlane {
        FakeControlPlane::new().with_instance(InstanceInfo {
            id: "i-1".into(),
            name: "one".into(),
            status: InstanceStatus::Running,
            platform: "Process".into(),
            labels: Vec::new(),
        })
    }

    fn rollout() -> Rollout {
        Rollout::new("i-1", json!({"port": 8081})).with_actual(json!({"port": 8080}))
    }

    #[test]
    fn restarts_with_the_desired_configuration_then_waits_for_health() {
        let mut driver = Driver::<TemplatePlugin>::new(rollout(), control_plane());
        let first = driver.step();
        assert!(matches!(first, Progress::Requeue { .. }), "{first:?}");
        assert!(driver.cp.calls().contains(&Call::Start {
            instance_id: "i-1".into(),
            configuration: Some(json!({"port": 8081})),
        }));

        driver.cp.set_health("i-1", true);
        let second = driver.step();
        assert!(matches!(second, Progress::Done(_)), "{second:?}");
    }

    #[test]
    fn fails_retryably_when_health_does_not_come_in_time() {
        let mut rollout = rollout();
        rollout.params = json!({"timeout": "1s"});
        let mut driver = Driver::<TemplatePlugin>::new(rollout, control_plane());
        let _ = driver.step();
        driver.cp.set_health("i-1", false);
        let waiting = driver.step();
        assert!(matches!(waiting, Progress::Requeue { .. }), "{waiting:?}");
        driver.wait(Duration::from_secs(2));
        let failed = driver.step();
        assert!(
            matches!(
                failed,
                Progress::Failed {
                    retryable: true,
                    ..
                }
            ),
            "{failed:?}"
        );
    }

    #[test]
    fn an_unknown_parameter_fails_without_touching_the_instance() {
        let mut rollout = rollout();
        rollout.params = json!({"timeot": "1s"});
        let mut driver = Driver::<TemplatePlugin>::new(rollout, control_plane());
        let progress = driver.step();
        assert!(
            matches!(
                progress,
                Progress::Failed {
                    retryable: false,
                    ..
                }
            ),
            "{progress:?}"
        );
        assert!(driver.cp.mutations().is_empty());
    }

    #[test]
    fn abort_restores_the_previous_configuration() {
        let mut cp = control_plane();
        let progress = TemplatePlugin::abort(&rollout(), &mut cp);
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert!(cp.calls().contains(&Call::Start {
            instance_id: "i-1".into(),
            configuration: Some(json!({"port": 8080})),
        }));
    }
}
