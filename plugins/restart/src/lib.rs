//! `restart`: a strategy that stops the instance, starts it with the desired
//! configuration and waits until it reports healthy.
//!
//! Start reading at [`Restart::step`]. The steps:
//!
//! 1. First step (no state): remember the configuration the instance ran
//!    (`rollout.actual`) in the state, `stop` the instance, `start` it with the desired
//!    configuration, and requeue after `health_poll_ms`.
//! 2. Every later step: `probe-health`. Healthy: done. Not healthy (or the probe could
//!    not reach it): requeue after `health_poll_ms` while `elapsed < health_deadline_ms`,
//!    then fail, retryable, naming the deadline. A control plane without health probes
//!    (`unavailable`, as the DRaaS seed API): done once its runtime status is `Running`.
//!
//! [`Restart::abort`] restarts the instance with the configuration remembered in the
//! state (without state: `rollout.actual`) and is done.
//!
//! Parameters (a JSON object, all optional): `health_poll_ms` (default 500, at least 1),
//! `health_deadline_ms` (default 30000). An invalid or unknown parameter fails the
//! rollout, not retryable, naming the parameter; the host's reserved `$` keys
//! (`$approval`, `$promote`, `$undo`) are accepted and have nothing to act on here.
//!
//! The state carries a `status` object for the host ([`RolloutStatus`]): phase
//! `restarting`, waiting for the instance to become healthy.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use setpoint_plugin::serde_json::Value;
use setpoint_plugin::{
    ControlPlane, ControlPlaneError, InstanceStatus, Metadata, PluginError, Progress, Rollout,
    RolloutStatus, Strategy, log,
};

/// The `restart` strategy.
#[derive(Debug)]
pub struct Restart;

setpoint_plugin::strategy!(Restart);

/// How often to probe health while waiting, unless policy says otherwise.
pub const DEFAULT_HEALTH_POLL_MS: u64 = 500;
/// How long to wait for health before failing, unless policy says otherwise: long enough
/// for a drasi-server to load its sources, short enough to surface a broken config.
pub const DEFAULT_HEALTH_DEADLINE_MS: u64 = 30_000;

/// The parameters `restart` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Params {
    health_poll_ms: u64,
    health_deadline_ms: u64,
}

impl Params {
    fn parse(rollout: &Rollout) -> Result<Self, PluginError> {
        rollout.check_params("restart", &["health_poll_ms", "health_deadline_ms"])?;
        let params = Self {
            health_poll_ms: rollout.param_or("health_poll_ms", DEFAULT_HEALTH_POLL_MS)?,
            health_deadline_ms: rollout
                .param_or("health_deadline_ms", DEFAULT_HEALTH_DEADLINE_MS)?,
        };
        if params.health_poll_ms == 0 {
            return Err(PluginError::invalid_params(
                "parameter `health_poll_ms` must be at least 1",
            ));
        }
        Ok(params)
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.health_poll_ms)
    }
}

/// What `restart` carries from step to step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// What the host shows (`setpoint status`).
    #[serde(default)]
    status: RolloutStatus,
    /// The configuration the instance ran before the restart (`None`: unknown), for
    /// `abort`.
    previous: Option<Value>,
}

impl Strategy for Restart {
    fn metadata() -> Metadata {
        Metadata::strategy(
            "restart",
            env!("CARGO_PKG_VERSION"),
            "Stop, start with the desired configuration, wait until healthy",
        )
    }

    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        let params = match Params::parse(rollout) {
            Ok(params) => params,
            Err(error) => return error.into(),
        };
        match rollout.state::<State>() {
            Err(error) => error.into(),
            Ok(None) => restart(rollout, cp, &params),
            Ok(Some(state)) => wait_for_health(rollout, cp, &params, &state),
        }
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        let previous = match rollout.state::<State>() {
            Ok(Some(state)) => state.previous,
            Ok(None) => rollout.actual().cloned(),
            Err(error) => return error.into(),
        };
        let Some(previous) = previous else {
            return Progress::failed(
                format!(
                    "cannot abort the restart of {}: the configuration it ran before is unknown",
                    rollout.instance_id()
                ),
                false,
            );
        };
        let id = rollout.instance_id();
        log::info(&format!(
            "abort: restarting {id} with its previous configuration"
        ));
        if let Err(error) = cp.stop(id) {
            return control_plane_failure(&format!("abort: stopping {id}"), &error);
        }
        if let Err(error) = cp.start(id, Some(&previous)) {
            return control_plane_failure(
                &format!("abort: starting {id} with its previous configuration"),
                &error,
            );
        }
        Progress::done(format!("restarted {id} with its previous configuration"))
    }
}

/// First step: remember the running configuration, stop, start with the desired one.
fn restart(rollout: &Rollout, cp: &mut dyn ControlPlane, params: &Params) -> Progress {
    let id = rollout.instance_id();
    let mut status = RolloutStatus::new("restart", "restarting");
    status.waiting_for = Some(format!("{id} to become healthy"));
    let state = State {
        status,
        previous: rollout.actual().cloned(),
    };
    log::info(&format!("restarting {id} with the desired configuration"));
    if let Err(error) = cp.stop(id) {
        return control_plane_failure(&format!("stopping {id}"), &error);
    }
    if let Err(error) = cp.start(id, Some(rollout.desired())) {
        return control_plane_failure(
            &format!("starting {id} with the desired configuration"),
            &error,
        );
    }
    Progress::requeue(
        params.poll(),
        &state,
        format!("restarted {id}; waiting for it to become healthy"),
    )
}

/// Later steps: done once healthy; keep polling until the deadline.
fn wait_for_health(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    params: &Params,
    state: &State,
) -> Progress {
    let id = rollout.instance_id();
    let seen = match cp.probe_health(id) {
        Ok(health) if health.healthy => {
            return Progress::done(format!(
                "restarted {id} with the desired configuration; healthy after {} ms",
                rollout.elapsed.as_millis()
            ));
        }
        Ok(health) => format!("unhealthy: {}", health.detail),
        Err(error @ (ControlPlaneError::Denied(_) | ControlPlaneError::NotFound(_))) => {
            return control_plane_failure(&format!("probing the health of {id}"), &error);
        }
        // A control plane without health probes (the DRaaS seed API): running is the
        // best sign it gives.
        Err(ControlPlaneError::Unavailable(why)) => match cp.get_runtime_status(id) {
            Ok(status) if status.status == InstanceStatus::Running => {
                return Progress::done(format!(
                    "restarted {id} with the desired configuration; running after {} ms (no health probe: {why})",
                    rollout.elapsed.as_millis()
                ));
            }
            Ok(status) => format!("no health probe ({why}); status {}", status.status),
            Err(error) => format!("no health probe ({why}); status unknown: {error}"),
        },
        Err(error) => format!("probe failed: {error}"),
    };
    let elapsed_ms = u64::try_from(rollout.elapsed.as_millis()).unwrap_or(u64::MAX);
    if elapsed_ms >= params.health_deadline_ms {
        return Progress::failed(
            format!(
                "{id} did not become healthy within health_deadline_ms = {} ms (last probe: {seen})",
                params.health_deadline_ms
            ),
            true,
        );
    }
    Progress::requeue(
        params.poll(),
        state,
        format!("waiting for {id} to become healthy ({seen})"),
    )
}

/// A failed control-plane call ends the rollout; only transient errors are retryable.
fn control_plane_failure(action: &str, error: &ControlPlaneError) -> Progress {
    let retryable = matches!(
        error,
        ControlPlaneError::Unavailable(_) | ControlPlaneError::Other(_)
    );
    log::error(&format!("{action} failed: {error}"));
    Progress::failed(format!("{action} failed: {error}"), retryable)
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::serde_json::json;
    use setpoint_plugin::testing::{Call, FakeControlPlane, Operation};

    use super::*;

    const ID: &str = "drasi-1";

    fn first_step() -> Rollout {
        Rollout::new(ID, json!({"port": 8081})).with_actual(json!({"port": 8080}))
    }

    /// The rollout of the step after `progress`, `elapsed` after the first.
    fn next(rollout: &Rollout, progress: &Progress, elapsed_ms: u64) -> Rollout {
        rollout
            .clone()
            .with_raw_state(progress.state())
            .at_step(rollout.step + 1, Duration::from_millis(elapsed_ms))
    }

    #[test]
    fn happy_path_stops_starts_with_desired_then_finishes_when_healthy() {
        let mut cp = FakeControlPlane::new().with_health(ID, [false, true]);
        let rollout = first_step();

        let progress = Restart::step(&rollout, &mut cp);
        let Progress::Requeue { after, .. } = &progress else {
            panic!("first step should requeue, got {progress:?}");
        };
        assert_eq!(*after, Duration::from_millis(DEFAULT_HEALTH_POLL_MS));
        assert_eq!(
            cp.mutations(),
            [
                &Call::Stop {
                    instance_id: ID.into()
                },
                &Call::Start {
                    instance_id: ID.into(),
                    configuration: Some(json!({"port": 8081}))
                },
            ]
        );

        let rollout = next(&rollout, &progress, 500);
        let progress = Restart::step(&rollout, &mut cp);
        assert!(matches!(progress, Progress::Requeue { .. }), "{progress:?}");

        let rollout = next(&rollout, &progress, 1000);
        let progress = Restart::step(&rollout, &mut cp);
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert_eq!(
            cp.mutations().len(),
            2,
            "waiting must not touch the instance"
        );
    }

    #[test]
    fn health_deadline_fails_retryably_naming_the_deadline() {
        let mut cp = FakeControlPlane::new().with_health(ID, [false]);
        let rollout =
            first_step().with_params(json!({"health_poll_ms": 100, "health_deadline_ms": 1000}));
        let progress = Restart::step(&rollout, &mut cp);

        let rollout = next(&rollout, &progress, 999);
        let progress = Restart::step(&rollout, &mut cp);
        let Progress::Requeue { after, .. } = &progress else {
            panic!("before the deadline it should keep waiting, got {progress:?}");
        };
        assert_eq!(*after, Duration::from_millis(100));

        let rollout = next(&rollout, &progress, 1000);
        let Progress::Failed { reason, retryable } = Restart::step(&rollout, &mut cp) else {
            panic!("at the deadline it should fail");
        };
        assert!(retryable);
        assert!(reason.contains("health_deadline_ms = 1000 ms"), "{reason}");
    }

    #[test]
    fn abort_restarts_with_the_previous_configuration_from_state() {
        let mut cp = FakeControlPlane::new();
        let rollout = first_step();
        let progress = Restart::step(&rollout, &mut cp);
        cp.take_calls();

        let rollout = next(&rollout, &progress, 200);
        let progress = Restart::abort(&rollout, &mut cp);
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert_eq!(
            cp.calls(),
            [
                Call::Stop {
                    instance_id: ID.into()
                },
                Call::Start {
                    instance_id: ID.into(),
                    configuration: Some(json!({"port": 8080}))
                },
            ]
        );
    }

    #[test]
    fn abort_without_state_uses_the_actual_configuration() {
        let mut cp = FakeControlPlane::new();
        let progress = Restart::abort(&first_step(), &mut cp);
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert_eq!(
            cp.calls()[1],
            Call::Start {
                instance_id: ID.into(),
                configuration: Some(json!({"port": 8080}))
            }
        );
    }

    #[test]
    fn abort_with_nothing_to_restore_fails_without_touching_the_instance() {
        let mut cp = FakeControlPlane::new();
        let progress = Restart::abort(&Rollout::new(ID, json!({})), &mut cp);
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
        assert!(cp.calls().is_empty());
    }

    #[test]
    fn invalid_params_fail_without_retry_naming_the_param() {
        for (params, name) in [
            (json!({"health_poll_ms": "fast"}), "health_poll_ms"),
            (json!({"health_poll_ms": 0}), "health_poll_ms"),
            (json!({"health_deadline_ms": -1}), "health_deadline_ms"),
            (json!({"health_deadlin_ms": 5}), "health_deadlin_ms"),
            (json!([5]), "JSON object"),
        ] {
            let mut cp = FakeControlPlane::new();
            let progress = Restart::step(&first_step().with_params(params), &mut cp);
            let Progress::Failed { reason, retryable } = progress else {
                panic!("invalid params should fail, got {progress:?}");
            };
            assert!(!retryable);
            assert!(reason.contains(name), "{reason}");
            assert!(cp.calls().is_empty());
        }
    }

    #[test]
    fn reserved_host_params_are_accepted() {
        let mut cp = FakeControlPlane::new();
        let rollout = first_step().with_params(json!({
            "health_poll_ms": 100, "$approval": "before-promote", "$promote": "full", "$later": 1
        }));
        let progress = Restart::step(&rollout, &mut cp);
        assert!(matches!(progress, Progress::Requeue { .. }), "{progress:?}");
        let state: setpoint_plugin::Value =
            setpoint_plugin::serde_json::from_str(progress.state().unwrap()).unwrap();
        assert_eq!(state["status"]["strategy"], "restart");
        assert_eq!(state["status"]["phase"], "restarting");
    }

    #[test]
    fn unavailable_control_plane_fails_retryably() {
        let mut cp = FakeControlPlane::new();
        cp.fail_next(
            Operation::Stop,
            ControlPlaneError::Unavailable("down".into()),
        );
        let Progress::Failed { reason, retryable } = Restart::step(&first_step(), &mut cp) else {
            panic!("a failed stop should fail the step");
        };
        assert!(retryable);
        assert!(reason.contains("stopping drasi-1"), "{reason}");
    }

    #[test]
    fn denied_probe_fails_without_retry() {
        let mut cp = FakeControlPlane::new();
        let progress = Restart::step(&first_step(), &mut cp);
        cp.fail_next(
            Operation::ProbeHealth,
            ControlPlaneError::Denied("scope".into()),
        );
        let rollout = next(&first_step(), &progress, 10);
        assert!(matches!(
            Restart::step(&rollout, &mut cp),
            Progress::Failed {
                retryable: false,
                ..
            }
        ));
    }

    #[test]
    fn without_a_health_probe_a_running_instance_counts_as_healthy() {
        let mut cp = FakeControlPlane::new().with_instance(setpoint_plugin::InstanceInfo {
            id: ID.into(),
            name: "db".into(),
            status: InstanceStatus::Running,
            platform: "Process".into(),
            labels: Default::default(),
        });
        let rollout = first_step();
        let progress = Restart::step(&rollout, &mut cp);
        cp.fail_next(
            Operation::ProbeHealth,
            ControlPlaneError::Unavailable("probe-health: not offered".into()),
        );
        let progress = Restart::step(&next(&rollout, &progress, 500), &mut cp);
        let Progress::Done(message) = &progress else {
            panic!("expected done, got {progress:?}");
        };
        assert!(message.contains("no health probe"), "{message}");
    }
}
