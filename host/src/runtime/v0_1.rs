//! Contract 0.1.0 served on top of 0.2.0: the conversions between the two versions'
//! records, and the 0.1.0 `control-plane` imports implemented by the 0.2.0 ones, so a
//! component built against 0.1.0 runs unchanged, with the same scope, audit and limits.
//!
//! What 0.1.0 cannot say is refused here with a reason, never guessed: a group rollout
//! (0.1.0 rollouts have one instance).

use super::bindings::{clones, instances, metrics, traffic, types, v0_1};
use super::host::HostState;
use v0_1::control_plane as old_cp;
use v0_1::types as old;

/// A 0.1.0 comparator's or strategy's metadata in 0.2.0's record: never group rollouts.
pub(super) fn metadata(m: old::Metadata) -> types::PluginMetadata {
    types::PluginMetadata {
        name: m.name,
        version: m.version,
        kind: match m.kind {
            old::PluginKind::Comparator => types::PluginKind::Comparator,
            old::PluginKind::Strategy => types::PluginKind::Strategy,
        },
        description: m.description,
        group_rollouts: false,
    }
}

/// A 0.1.0 drift as 0.2.0's (the records are the same).
pub(super) fn drift(d: old::Drift) -> types::Drift {
    types::Drift {
        path: d.path,
        kind: match d.kind {
            old::DriftKind::Added => types::DriftKind::Added,
            old::DriftKind::Removed => types::DriftKind::Removed,
            old::DriftKind::Changed => types::DriftKind::Changed,
        },
        desired: d.desired,
        actual: d.actual,
        message: d.message,
    }
}

fn drift_to_old(d: &types::Drift) -> old::Drift {
    old::Drift {
        path: d.path.clone(),
        kind: match d.kind {
            types::DriftKind::Added => old::DriftKind::Added,
            types::DriftKind::Removed => old::DriftKind::Removed,
            types::DriftKind::Changed => old::DriftKind::Changed,
        },
        desired: d.desired.clone(),
        actual: d.actual.clone(),
        message: d.message.clone(),
    }
}

/// A 0.1.0 comparator's domain error as 0.2.0's.
pub(super) fn plugin_error(e: old::PluginError) -> types::PluginError {
    match e {
        old::PluginError::InvalidInput(m) => types::PluginError::InvalidInput(m),
        old::PluginError::InvalidParams(m) => types::PluginError::InvalidParams(m),
        old::PluginError::Other(m) => types::PluginError::Other(m),
    }
}

/// The 0.1.0 form of a rollout: one instance. A group rollout has no 0.1.0 form.
pub(super) fn rollout(r: &types::Rollout) -> Result<old::Rollout, String> {
    let [member] = r.members.as_slice() else {
        return Err(format!(
            "a rollout of {} instances cannot be handed to a plugin built against contract \
             0.1.0, which rolls out one instance at a time; use a 0.2.0 strategy that \
             supports group rollouts",
            r.members.len()
        ));
    };
    Ok(old::Rollout {
        instance_id: member.instance_id.clone(),
        desired: member.desired.clone(),
        actual: member.actual.clone(),
        drifts: member.drifts.iter().map(drift_to_old).collect(),
        params: r.params.clone(),
        state: r.state.clone(),
        step: r.step,
        elapsed_ms: r.elapsed_ms,
    })
}

/// A 0.1.0 strategy's answer as 0.2.0's (the records are the same).
pub(super) fn progress(p: old::Progress) -> types::Progress {
    match p {
        old::Progress::Done(m) => types::Progress::Done(m),
        old::Progress::Requeue(r) => types::Progress::Requeue(types::Requeue {
            after_ms: r.after_ms,
            state: r.state,
            message: r.message,
        }),
        old::Progress::AwaitApproval(a) => types::Progress::AwaitApproval(types::AwaitApproval {
            state: a.state,
            message: a.message,
        }),
        old::Progress::Failed(f) => types::Progress::Failed(types::Failure {
            reason: f.reason,
            retryable: f.retryable,
        }),
    }
}

fn error(e: instances::Error) -> old_cp::Error {
    match e {
        instances::Error::NotFound(m) => old_cp::Error::NotFound(m),
        instances::Error::Denied(m) => old_cp::Error::Denied(m),
        instances::Error::Unavailable(m) => old_cp::Error::Unavailable(m),
        instances::Error::Invalid(m) => old_cp::Error::Invalid(m),
        instances::Error::Other(m) => old_cp::Error::Other(m),
    }
}

fn status(s: instances::InstanceStatus) -> old_cp::InstanceStatus {
    match s {
        instances::InstanceStatus::Created => old_cp::InstanceStatus::Created,
        instances::InstanceStatus::Running => old_cp::InstanceStatus::Running,
        instances::InstanceStatus::Stopped => old_cp::InstanceStatus::Stopped,
        instances::InstanceStatus::Failed => old_cp::InstanceStatus::Error,
        instances::InstanceStatus::Outdated => old_cp::InstanceStatus::ConfigurationChanged,
    }
}

impl old::Host for HostState {}

/// 0.1.0's single `control-plane` interface: each call is the 0.2.0 call of the same
/// meaning (`get-metrics` is `metrics.get-counters`), scoped and audited the same way.
impl old_cp::Host for HostState {
    fn get_instance(&mut self, id: String) -> Result<old_cp::InstanceInfo, old_cp::Error> {
        let i = instances::Host::get_instance(self, id).map_err(error)?;
        Ok(old_cp::InstanceInfo {
            id: i.id,
            name: i.name,
            status: status(i.status),
            platform_type: i.platform,
            labels: i.labels,
        })
    }

    fn get_runtime_status(&mut self, id: String) -> Result<old_cp::RuntimeStatus, old_cp::Error> {
        let r = instances::Host::get_runtime_status(self, id).map_err(error)?;
        Ok(old_cp::RuntimeStatus {
            status: status(r.status),
            details: r.details,
        })
    }

    fn get_desired_configuration(&mut self, id: String) -> Result<String, old_cp::Error> {
        instances::Host::get_desired_configuration(self, id).map_err(error)
    }

    fn start(&mut self, id: String, configuration: Option<String>) -> Result<(), old_cp::Error> {
        instances::Host::start(self, id, configuration).map_err(error)
    }

    fn stop(&mut self, id: String) -> Result<(), old_cp::Error> {
        instances::Host::stop(self, id).map_err(error)
    }

    fn restart(&mut self, id: String) -> Result<(), old_cp::Error> {
        instances::Host::restart(self, id).map_err(error)
    }

    fn clone_instance(
        &mut self,
        id: String,
        configuration: String,
    ) -> Result<String, old_cp::Error> {
        clones::Host::clone_instance(self, id, configuration).map_err(error)
    }

    fn delete_clone(&mut self, id: String) -> Result<(), old_cp::Error> {
        clones::Host::delete_clone(self, id).map_err(error)
    }

    fn set_traffic_weights(
        &mut self,
        endpoint: String,
        weights: Vec<old_cp::BackendWeight>,
    ) -> Result<(), old_cp::Error> {
        let weights = weights
            .into_iter()
            .map(|w| traffic::BackendWeight {
                instance_id: w.instance_id,
                weight: w.weight,
            })
            .collect();
        traffic::Host::set_traffic_weights(self, endpoint, weights).map_err(error)
    }

    fn probe_health(&mut self, id: String) -> Result<old_cp::Health, old_cp::Error> {
        let h = instances::Host::probe_health(self, id).map_err(error)?;
        Ok(old_cp::Health {
            healthy: h.healthy,
            detail: h.detail,
        })
    }

    fn get_metrics(&mut self, id: String) -> Result<old_cp::InstanceMetrics, old_cp::Error> {
        let c = metrics::Host::get_counters(self, id).map_err(error)?;
        Ok(old_cp::InstanceMetrics {
            requests: c.requests,
            errors: c.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> types::Member {
        types::Member {
            instance_id: id.into(),
            desired: "{\"port\":2}".into(),
            actual: Some("{\"port\":1}".into()),
            drifts: vec![types::Drift {
                path: "/port".into(),
                kind: types::DriftKind::Changed,
                desired: Some("2".into()),
                actual: Some("1".into()),
                message: "port: 1 -> 2".into(),
            }],
        }
    }

    fn rollout_of(members: Vec<types::Member>) -> types::Rollout {
        types::Rollout {
            group: None,
            members,
            params: "{}".into(),
            state: Some("s".into()),
            step: 3,
            elapsed_ms: 1_500,
        }
    }

    #[test]
    fn a_one_instance_rollout_keeps_every_field_in_the_0_1_form() {
        let old = rollout(&rollout_of(vec![member("a")])).unwrap();
        assert_eq!(old.instance_id, "a");
        assert_eq!(old.actual.as_deref(), Some("{\"port\":1}"));
        assert_eq!(old.drifts.len(), 1);
        let back = drift(old.drifts[0].clone());
        assert_eq!(
            (back.path.as_str(), back.message.as_str()),
            ("/port", "port: 1 -> 2")
        );
        assert_eq!(back.desired.as_deref(), Some("2"));
        assert_eq!(
            (old.state.as_deref(), old.step, old.elapsed_ms),
            (Some("s"), 3, 1_500)
        );
    }

    #[test]
    fn a_group_rollout_is_refused_for_a_0_1_plugin_with_the_reason() {
        let err = rollout(&rollout_of(vec![member("a"), member("b")])).unwrap_err();
        assert!(
            err.contains("2 instances") && err.contains("0.1.0"),
            "{err}"
        );
    }
}
