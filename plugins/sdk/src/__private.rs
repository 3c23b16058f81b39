//! Glue the export macros expand to: conversions between the SDK's types and the
//! generated bindings' types. Not a public API.

#[cfg(target_arch = "wasm32")]
pub use wire::*;

/// The bindings generator, for the export macros' expansion in a plugin's crate (which
/// then needs no wit-bindgen dependency of its own).
#[cfg(target_arch = "wasm32")]
pub use wit_bindgen;

#[cfg(target_arch = "wasm32")]
mod wire {
    use std::sync::Once;

    use crate::__bindings::setpoint::plugin::types as wire;
    use crate::{Drift, DriftKind, Metadata, PluginError, PluginKind};

    /// Send a panic's message to the host before the module aborts: on
    /// `wasm32-unknown-unknown` there is no stderr, and the host only sees a trap. It goes
    /// through `trap-reason`, not `log` (see [`crate::log::trap_reason`]).
    pub fn install_panic_hook() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::trap_reason(&format!("plugin {info}"));
            }));
        });
    }

    pub fn metadata_to_wire(metadata: Metadata) -> wire::PluginMetadata {
        install_panic_hook();
        wire::PluginMetadata {
            name: metadata.name,
            version: metadata.version,
            kind: match metadata.kind {
                PluginKind::Comparator => wire::PluginKind::Comparator,
                PluginKind::Strategy => wire::PluginKind::Strategy,
            },
            description: metadata.description,
            group_rollouts: metadata.group_rollouts,
        }
    }

    pub fn error_to_wire(error: PluginError) -> wire::PluginError {
        match error {
            PluginError::InvalidInput(m) => wire::PluginError::InvalidInput(m),
            PluginError::InvalidParams(m) => wire::PluginError::InvalidParams(m),
            PluginError::Other(m) => wire::PluginError::Other(m),
        }
    }

    pub fn drift_to_wire(drift: Drift) -> wire::Drift {
        let drift = drift.into_wire();
        wire::Drift {
            path: drift.path,
            kind: match drift.kind {
                DriftKind::Added => wire::DriftKind::Added,
                DriftKind::Removed => wire::DriftKind::Removed,
                DriftKind::Changed => wire::DriftKind::Changed,
            },
            desired: drift.desired,
            actual: drift.actual,
            message: drift.message,
        }
    }

    pub fn compare_export<C: crate::Comparator>(
        desired: &str,
        actual: &str,
        params: &str,
    ) -> Result<Vec<wire::Drift>, wire::PluginError> {
        install_panic_hook();
        let inputs = crate::parse_compare_inputs(desired, actual, params).map_err(error_to_wire)?;
        let [desired, actual, params] = &inputs;
        let result = C::compare(desired, actual, params);
        // The instance, and its memory, is discarded when this call returns: walking the
        // parsed documents only to free them would be wasted work.
        std::mem::forget(inputs);
        result
            .map(|drifts| drifts.into_iter().map(drift_to_wire).collect())
            .map_err(error_to_wire)
    }

    pub use strategy::*;

    mod strategy {
        use std::time::Duration;

        use serde_json::Value;

        use super::{install_panic_hook, wire};
        use crate::{
            ControlPlane, Drift, DriftKind, HostControlPlane, Member, PluginError, Progress,
            Rollout,
        };

        fn parse(what: &str, text: &str) -> Result<Value, PluginError> {
            serde_json::from_str(text)
                .map_err(|e| PluginError::InvalidInput(format!("{what} is not JSON: {e}")))
        }

        fn drift_from_wire(drift: wire::Drift) -> Result<Drift, PluginError> {
            let value =
                |side: Option<String>| side.map(|t| parse("a drift's value", &t)).transpose();
            Ok(Drift {
                kind: match drift.kind {
                    wire::DriftKind::Added => DriftKind::Added,
                    wire::DriftKind::Removed => DriftKind::Removed,
                    wire::DriftKind::Changed => DriftKind::Changed,
                },
                desired: value(drift.desired)?,
                actual: value(drift.actual)?,
                path: drift.path,
                message: drift.message,
            })
        }

        fn member_from_wire(member: wire::Member) -> Result<Member, PluginError> {
            Ok(Member {
                desired: parse("the desired configuration", &member.desired)?,
                actual: member
                    .actual
                    .map(|t| parse("the actual configuration", &t))
                    .transpose()?,
                drifts: member
                    .drifts
                    .into_iter()
                    .map(drift_from_wire)
                    .collect::<Result<_, _>>()?,
                instance_id: member.instance_id,
            })
        }

        fn rollout_from_wire(rollout: wire::Rollout) -> Result<Rollout, PluginError> {
            let params = parse("the strategy's params", &rollout.params)
                .map_err(|e| PluginError::InvalidParams(e.to_string()))?;
            let members = rollout
                .members
                .into_iter()
                .map(member_from_wire)
                .collect::<Result<_, _>>()?;
            let mut parsed = Rollout::from_members(rollout.group, members).ok_or_else(|| {
                PluginError::InvalidInput("the rollout has no members".to_owned())
            })?;
            parsed.params = params;
            parsed.raw_state = rollout.state;
            parsed.step = rollout.step;
            parsed.elapsed = Duration::from_millis(rollout.elapsed_ms);
            Ok(parsed)
        }

        fn progress_to_wire(progress: Progress) -> wire::Progress {
            match progress {
                Progress::Done(message) => wire::Progress::Done(message),
                Progress::Requeue {
                    after,
                    state,
                    message,
                } => wire::Progress::Requeue(wire::Requeue {
                    after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    state,
                    message,
                }),
                Progress::AwaitApproval { state, message } => {
                    wire::Progress::AwaitApproval(wire::AwaitApproval { state, message })
                }
                Progress::Failed { reason, retryable } => {
                    wire::Progress::Failed(wire::Failure { reason, retryable })
                }
            }
        }

        /// Run `step` (a strategy's `step` or `abort`) on a wire rollout.
        pub fn step_export(
            rollout: wire::Rollout,
            step: fn(&Rollout, &mut dyn ControlPlane) -> Progress,
        ) -> wire::Progress {
            install_panic_hook();
            let progress = match rollout_from_wire(rollout) {
                Ok(rollout) => step(&rollout, &mut HostControlPlane),
                Err(error) => Progress::from(error),
            };
            progress_to_wire(progress)
        }
    }
}
