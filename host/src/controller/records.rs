//! What a reconcile leaves behind: status conditions (written only when they change),
//! audit entries, drift metrics, and the report-only paths (orphaned instances, clones
//! seen on their own).

use serde_json::Value;

use super::{CLONE_OF_LABEL, Classification, Controller, Error, Outcome, Result};
use crate::client;
use crate::metrics::DriftLabels;
use crate::queue::Action;
use crate::registry::ResolveError;
use crate::runtime::{CallError, CallFailure, CallOutcome, ImportCall, Plugin};
use crate::store::{AuditEntry, AuditKind, Condition, ConditionType};

impl Controller {
    pub(super) fn audit(
        &self,
        id: &str,
        kind: AuditKind,
        message: String,
        details: Value,
    ) -> Result<()> {
        self.store.append_audit(&AuditEntry {
            instance_id: Some(id.to_owned()),
            kind,
            message,
            details,
        })?;
        Ok(())
    }

    /// Set conditions, writing only those that changed (a converged resync writes
    /// nothing). Returns whether any changed.
    pub(super) fn conditions(
        &self,
        id: &str,
        updates: &[(ConditionType, bool, &str, &str)],
    ) -> Result<bool> {
        let current = self.store.conditions(id)?;
        self.conditions_against(id, &current, updates)
    }

    /// [`Controller::conditions`] against conditions already read (a converged resync
    /// then reads them once per instance).
    pub(super) fn conditions_against(
        &self,
        id: &str,
        current: &[Condition],
        updates: &[(ConditionType, bool, &str, &str)],
    ) -> Result<bool> {
        let mut changed = false;
        for (type_, status, reason, message) in updates {
            let same = current.iter().any(|c| {
                c.type_ == *type_
                    && c.status == *status
                    && c.reason == *reason
                    && c.message == *message
            });
            if same {
                continue;
            }
            // A condition that never held and still does not is not worth a row.
            let absent = !current.iter().any(|c| c.type_ == *type_);
            if absent && !*status && type_ != &ConditionType::Synced {
                continue;
            }
            changed = true;
            self.store.set_condition(
                id,
                &Condition {
                    type_: *type_,
                    status: *status,
                    reason: (*reason).to_owned(),
                    message: (*message).to_owned(),
                    last_transition: self.now(),
                },
            )?;
        }
        Ok(changed)
    }

    pub(super) fn count_drift(&self, classification: Classification) {
        self.metrics
            .drift_detected
            .get_or_create(&DriftLabels {
                classification: classification.as_str().to_owned(),
            })
            .inc();
    }

    /// A report-only classification: set the condition, and count and audit it when it
    /// is newly seen (not on every resync).
    pub(super) fn report(
        &self,
        id: &str,
        classification: Classification,
        reason: &str,
        message: &str,
    ) -> Result<(Action, Outcome)> {
        let newly = self.conditions(
            id,
            &[
                (ConditionType::Synced, false, reason, message),
                (ConditionType::Progressing, false, reason, ""),
            ],
        )?;
        if newly {
            if classification.is_drift() {
                self.count_drift(classification);
            }
            self.audit(
                id,
                AuditKind::Observation,
                format!("instance is {}: {message}", classification.as_str()),
                serde_json::json!({ "classification": classification }),
            )?;
        }
        Ok((Action::await_change(), Outcome::Reported))
    }

    /// The control plane does not know `id`.
    pub(super) fn orphaned(&self, id: &str) -> Result<(Action, Outcome)> {
        if self.store.last_applied(id)?.is_none()
            && self.store.load_rollout(id)?.is_none()
            && self.store.given_up(id)?.is_none()
        {
            // Never managed here: nothing to report.
            return Ok((Action::await_change(), Outcome::Skipped));
        }
        self.report(
            id,
            Classification::Orphaned,
            "Orphaned",
            "the control plane no longer knows this instance; the host's records are kept for an operator",
        )
    }

    /// Deletes `clone` for the host itself (not for a strategy), journalled as a
    /// strategy's mutating call is: the intent under the clone's own id (no rollout is
    /// keyed by a clone's id, so clearing it after the caller's audit entry clears
    /// nothing else), so a daemon that dies between the delete and that audit entry
    /// reports the delete at its next start instead of losing it. The caller audits the
    /// outcome, then clears the intent with `clear_intents(clone)`.
    pub(super) async fn delete_clone_journalled(
        &self,
        clone: &str,
        why: &str,
    ) -> Result<client::Result<()>> {
        let intent = self.store.record_intent(
            clone,
            &format!("setpoint ({why})"),
            "delete-clone",
            clone,
            None,
        )?;
        let result = self.cp.delete_clone(clone).await;
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("failed: {}", crate::error_chain(e)),
        };
        // Best effort: without it the delete is reported in doubt after a crash.
        if let Err(e) = self.store.settle_intent(intent, &outcome) {
            tracing::warn!(error = %crate::error_chain(&e), "could not record a delete's outcome ahead of the audit");
        }
        Ok(result)
    }

    /// An instance labelled as a clone: it belongs to its owner's rollout (or to the
    /// group rollout its owner is a member of: a surge clone) and is never reconciled on
    /// its own. A clone whose owner has no rollout any more is a leak and is deleted.
    pub(super) async fn clone_seen(
        &self,
        instance: &client::Instance,
        owner: &str,
    ) -> Result<(Action, Outcome)> {
        let id = instance.id.as_str();
        if self.store.load_rollout(owner)?.is_some() || self.in_group_rollout(owner)? {
            return Ok((Action::await_change(), Outcome::Skipped));
        }
        if self.settings.dry_run {
            self.audit(
                id,
                AuditKind::Observation,
                format!("clone of {owner} has no rollout; dry-run: not deleted"),
                serde_json::json!({ "owner": owner }),
            )?;
            return Ok((Action::await_change(), Outcome::Reported));
        }
        let result = self
            .delete_clone_journalled(id, "leaked-clone sweep")
            .await?;
        let outcome = match &result {
            Ok(()) => "deleted".to_owned(),
            Err(e) if e.is_not_found() => "already gone".to_owned(),
            Err(e) => format!("delete failed: {}", crate::error_chain(e)),
        };
        self.audit(
            owner,
            AuditKind::Action,
            format!(
                "leaked clone {id} (label {CLONE_OF_LABEL}={owner}, no rollout owns it): {outcome}"
            ),
            serde_json::json!({ "clone": id, "outcome": outcome }),
        )?;
        self.store.clear_intents(id)?;
        match result {
            Ok(()) => Ok((Action::await_change(), Outcome::Reported)),
            Err(e) if e.is_not_found() => Ok((Action::await_change(), Outcome::Reported)),
            Err(e) => Err(e.into()),
        }
    }

    /// Conditions for a failed reconcile: a missing plugin, an unreachable control plane
    /// and a failed plugin call each say so, so `Synced` never stays `true` over them.
    pub(super) fn failed_condition(&self, id: &str, error: &Error) -> Result<()> {
        let message = crate::error_chain(error);
        if let Error::Resolve {
            source: ResolveError::Loading { .. },
            ..
        } = error
        {
            // Not a fault: the plugin is being compiled, and the instance is tried again.
            self.conditions(
                id,
                &[
                    (ConditionType::Synced, false, "PluginLoading", &message),
                    (ConditionType::Degraded, false, "PluginLoading", &message),
                ],
            )?;
            return Ok(());
        }
        let reason = match error {
            Error::Resolve { .. } => "PluginMissing",
            Error::PinnedPluginGone { .. } => "PluginMissing",
            Error::ControlPlane(e) if e.is_not_found() => return Ok(()),
            Error::ControlPlane(
                client::Error::Unreachable { .. } | client::Error::Timeout { .. },
            ) => "ControlPlaneUnreachable",
            Error::ControlPlane(_) => "ControlPlaneError",
            Error::Plugin(_) => "PluginFailed",
            Error::StrategyFailed { .. } => "RolloutFailed",
            Error::Store(_) | Error::Cancelled => return Ok(()),
        };
        self.conditions(
            id,
            &[
                (ConditionType::Synced, false, reason, &message),
                (ConditionType::Degraded, true, reason, &message),
            ],
        )?;
        if let Error::Plugin(e) = error {
            self.audit(
                id,
                AuditKind::Outcome,
                format!("plugin call failed: {e}"),
                serde_json::json!({ "plugin": e.plugin, "phase": e.phase, "trap": e.is_trap() }),
            )?;
        }
        Ok(())
    }

    /// After a restart: every intent still recorded is a mutating call that was about
    /// to be sent, or sent, when the daemon stopped, and whose outcome never reached the
    /// audit. Each is audited (under its rollout and under the instance it named): with
    /// its outcome when that was saved as the call returned, else as *in doubt*; then
    /// logged and forgotten; the rollout resumes from its last saved
    /// step, and strategies re-read the world before acting, so a call that did go
    /// through is not assumed undone. Returns how many there were.
    pub fn report_calls_in_doubt(&self) -> Result<usize> {
        let intents = self.store.intents()?;
        self.report_intents(&intents, Leftover::Restart)?;
        Ok(intents.len())
    }

    /// Before a step of the rollout `key`: the intents an earlier step of it left, when
    /// writing that step's record failed (a full filesystem) after its calls were made,
    /// are audited now, as [`Controller::report_calls_in_doubt`] does after a restart.
    /// Without this the next step's `clear_intents` would forget calls that went
    /// through and were never audited. Intents whose calls were audited (only the
    /// clearing failed) are cleared without a second entry.
    pub(super) fn report_leftover_intents(&self, key: &str) -> Result<()> {
        let intents: Vec<_> = self
            .store
            .intents()?
            .into_iter()
            .filter(|i| i.rollout_key == key)
            .collect();
        if !intents.is_empty() {
            self.report_intents(&intents, Leftover::FailedRecord)?;
        }
        Ok(())
    }

    fn report_intents(&self, intents: &[crate::store::Intent], why: Leftover) -> Result<()> {
        let mut keys = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        let mut reported = Vec::new();
        for intent in intents {
            keys.insert(intent.rollout_key.clone());
            let at_ms = intent
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            // Audited already, by its step or an earlier report, and only the clearing
            // failed (or the daemon died before it): not audited twice.
            if self
                .store
                .intent_audited(&intent.rollout_key, intent.id, at_ms)?
            {
                continue;
            }
            reported.push(intent);
            let message = match (&intent.outcome, why) {
                (Some(outcome), Leftover::Restart) => format!(
                    "{} called {} on {}: {outcome} (its outcome was saved just before the daemon stopped; the step's record was not)",
                    intent.plugin, intent.call, intent.target
                ),
                (None, Leftover::Restart) => format!(
                    "in doubt: {} called {} on {} and the daemon stopped before its outcome was recorded; it may have gone through",
                    intent.plugin, intent.call, intent.target
                ),
                (Some(outcome), Leftover::FailedRecord) => format!(
                    "{} called {} on {}: {outcome} (audited late: writing its step's record had failed)",
                    intent.plugin, intent.call, intent.target
                ),
                (None, Leftover::FailedRecord) => format!(
                    "in doubt: {} called {} on {} and neither its outcome nor its step's record could be written; it may have gone through",
                    intent.plugin, intent.call, intent.target
                ),
            };
            let details = serde_json::json!({
                "intent": intent.id,
                "rollout": intent.rollout_key,
                "plugin": intent.plugin,
                "call": intent.call,
                "target": intent.target,
                "configurationDigest": intent.config_digest,
                "intendedAtMs": at_ms,
                "outcome": intent.outcome,
            });
            match why {
                Leftover::Restart => tracing::warn!(
                    rollout = %intent.rollout_key,
                    call = %intent.call,
                    target = %intent.target,
                    "a control-plane call was in flight when the daemon stopped; its outcome is unknown"
                ),
                Leftover::FailedRecord => tracing::warn!(
                    rollout = %intent.rollout_key,
                    call = %intent.call,
                    target = %intent.target,
                    "a control-plane call is audited late: writing its step's record had failed"
                ),
            }
            entries.push(AuditEntry {
                instance_id: Some(intent.rollout_key.clone()),
                kind: AuditKind::Action,
                message: message.clone(),
                details: details.clone(),
            });
            // A weighted endpoint (`endpoint ID`) is audited under its instance.
            let instance = intent
                .target
                .strip_prefix("endpoint ")
                .unwrap_or(&intent.target);
            if instance != intent.rollout_key {
                entries.push(AuditEntry {
                    instance_id: Some(instance.to_owned()),
                    kind: AuditKind::Action,
                    message,
                    details,
                });
            }
        }
        for intent in reported {
            // A lifecycle call a crash (or a failed record) hid may have stopped the
            // instance, or started it with nothing recorded as applied: it is this
            // host's doing (see `record_sent`), until a start of its own is seen to
            // succeed. Before the audit: setting it again, should the audit fail, is
            // harmless.
            if matches!(intent.call.as_str(), "stop" | "start" | "restart") {
                self.store.set_host_stopped(&intent.target, true)?;
            }
        }
        // All of them or none: a failure leaves every intent to be reported again.
        self.store.append_audits(&entries)?;
        for key in keys {
            self.store.clear_intents(&key)?;
        }
        Ok(())
    }

    /// The audit entries of a step's calls under `id`, written at once with
    /// [`Store::append_audits`](crate::store::Store::append_audits).
    pub(super) fn call_entries(
        &self,
        id: &str,
        strategy: &Plugin,
        calls: &[ImportCall],
    ) -> Vec<AuditEntry> {
        let mut entries = Vec::new();
        // When each journalled call was intended: with its id, it names the intent
        // (ids start again when the journal is emptied).
        let intended: std::collections::HashMap<i64, u64> =
            if calls.iter().any(|c| c.intent.is_some()) {
                self.store
                    .intents()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| {
                        let at =
                            i.at.duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64);
                        (i.id, at)
                    })
                    .collect()
            } else {
                Default::default()
            };
        for call in calls {
            let (kind, verb) = match &call.outcome {
                CallOutcome::Denied(_) => {
                    self.metrics.denied_calls.inc();
                    (AuditKind::Denied, "denied")
                }
                CallOutcome::Simulated => (AuditKind::Action, "simulated"),
                CallOutcome::Ok if !call.mutating => continue,
                CallOutcome::Ok => (AuditKind::Action, "ok"),
                CallOutcome::Failed(_) => (AuditKind::Action, "failed"),
            };
            let mut details = serde_json::to_value(call).expect("call serialises");
            if let (Some(config), Value::Object(map)) = (&call.configuration, &mut details) {
                map.insert(
                    "configurationDigest".into(),
                    Value::String(super::config_digest(config)),
                );
            }
            if let (Some(intent), Value::Object(map)) = (call.intent, &mut details)
                && let Some(at) = intended.get(&intent)
            {
                map.insert("intent".into(), intent.into());
                map.insert("intendedAtMs".into(), (*at).into());
            }
            entries.push(AuditEntry {
                instance_id: Some(id.to_owned()),
                kind,
                message: format!(
                    "{} called {} on {}: {verb}",
                    strategy.label(),
                    call.call,
                    call.target
                ),
                details,
            });
        }
        entries
    }
}

/// Why intents are left in the journal when they are reported.
#[derive(Debug, Clone, Copy)]
enum Leftover {
    /// The daemon stopped (or was killed) before the step's record.
    Restart,
    /// Writing the step's record failed; the daemon went on.
    FailedRecord,
}

pub(super) fn failure_reason(e: &CallError) -> &'static str {
    match e.failure {
        CallFailure::Timeout { .. } => "timeout",
        CallFailure::OutOfMemory { .. } => "out_of_memory",
        CallFailure::Trap { .. } => "trap",
        CallFailure::InputTooLarge { .. } => "input_too_large",
        CallFailure::Plugin(_) => "plugin_error",
        CallFailure::BadOutput(_) => "bad_output",
    }
}
