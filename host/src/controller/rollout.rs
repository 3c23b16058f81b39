//! Acting on a decision: start a rollout of a revision, step it, supersede it when the
//! desired configuration moves on, abort it, and the dry-run simulation behind plans.
//!
//! Invariants kept here:
//! - a rollout record names the revision (desired digest) it applies, and is saved
//!   before the strategy's first step and after every step that returns;
//! - what a strategy sent in `start` is recorded as applied right after the step that
//!   sent it, whether or not the step then failed;
//! - an abort request that arrived while a step ran wins over the step's result.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::decide::unix_ms;
use super::{
    Bridge, Classification, Controller, Decision, Envelope, Error, Judged, Observation, Outcome,
    Result,
};
use crate::policy::Approval;
use crate::queue::Action;
use crate::runtime::{
    CallError, CallOutcome, Drift, ImportCall, Member, Plugin, Progress, Rollout, RolloutScope,
    StepOutcome, World,
};
use crate::store::{AuditKind, ConditionType, RolloutPhase, RolloutRecord, short_digest};

/// How long after a failed but retryable abort its strategy is asked to undo again.
pub const ABORT_RETRY: Duration = Duration::from_secs(10);

/// Most steps `plan` simulates before it stops (a strategy that never finishes in
/// dry-run must not hang `setpoint diff`).
const MAX_PLAN_STEPS: u32 = 500;

/// Delay before a strategy picked by policy is chosen again when the registry swapped
/// it out while the reconcile ran.
const RESELECT_DELAY: Duration = Duration::from_millis(50);

impl Controller {
    /// Carry out `decision` for the judged observation.
    pub(super) async fn act(
        &self,
        o: &Observation,
        judged: Judged,
        decision: Decision,
    ) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        let revision = short_digest(&o.desired_digest).to_owned();
        match decision {
            Decision::InSync => {
                if o.given_up.is_some() {
                    self.store.clear_given_up(id)?;
                }
                if o.approval.is_some() {
                    self.store.withdraw_approvals(id)?;
                }
                if o.abort.is_some() {
                    self.store.clear_abort(id)?;
                }
                let message = format!(
                    "runs its desired configuration (revision {revision}; actual state from {})",
                    o.source.describe()
                );
                let was = o
                    .conditions
                    .iter()
                    .find(|c| c.type_ == ConditionType::Synced);
                self.conditions_against(
                    id,
                    &o.conditions,
                    &[
                        (ConditionType::Synced, true, "InSync", &message),
                        (ConditionType::Progressing, false, "InSync", ""),
                        (ConditionType::Degraded, false, "InSync", ""),
                        (ConditionType::AwaitingApproval, false, "InSync", ""),
                    ],
                )?;
                // Converged: observed in sync after being out of it (not on every resync).
                if was.is_some_and(|c| !c.status || c.message != message) {
                    self.audit(
                        id,
                        AuditKind::Outcome,
                        format!("converged: {message}"),
                        serde_json::json!({ "digest": o.desired_digest, "actualDigest": o.actual_digest, "actualSource": o.source }),
                    )?;
                }
                Ok((Action::await_change(), Outcome::Synced))
            }
            Decision::Report { classification } => self.report_classification(o, classification),
            Decision::Protected => {
                let message = format!(
                    "protected by rule `{}`: {} reported, no action taken",
                    o.selection.rule_name,
                    judged.classification.as_str()
                );
                self.gated(o, &judged, "Protected", &message)?;
                Ok((Action::await_change(), Outcome::Reported))
            }
            Decision::DestructiveSkipped { paths } => {
                let message = format!(
                    "skip_destructive (rule `{}`): revision {revision} would remove {}; reported only",
                    o.selection.rule_name,
                    paths.join(", ")
                );
                self.gated(o, &judged, "DestructiveSkipped", &message)?;
                Ok((Action::await_change(), Outcome::Reported))
            }
            Decision::GivenUp { reason } => {
                let message = format!(
                    "revision {revision} was given up ({reason}); it stays given up until the desired configuration changes or `setpoint retry {id}`"
                );
                self.conditions(
                    id,
                    &[
                        (ConditionType::Synced, false, "GivenUp", &message),
                        (ConditionType::Progressing, false, "GivenUp", ""),
                    ],
                )?;
                Ok((Action::await_change(), Outcome::Degraded))
            }
            Decision::OutsideWindow { opens_in } => {
                // The opening time, to the minute (windows are minute-aligned), so the
                // message stays the same across the resyncs of one closed period and the
                // condition and audit entry are written once.
                let opens_at = chrono::DateTime::<chrono::Utc>::from(
                    self.now() + opens_in + Duration::from_secs(30),
                );
                let message = format!(
                    "revision {revision} waits: outside the maintenance window of rule `{}`; it opens at {}",
                    o.selection.rule_name,
                    opens_at.format("%Y-%m-%d %H:%M UTC")
                );
                self.gated(o, &judged, "OutsideWindow", &message)?;
                Ok((Action::requeue(opens_in), Outcome::Skipped))
            }
            Decision::AwaitApprovalBeforeApply => {
                let message = format!(
                    "revision {revision} ({}) needs approval before it is applied (rule `{}`): run `setpoint approve {id}`",
                    drift_summary(&judged),
                    o.selection.rule_name
                );
                self.store
                    .request_approval(id, &o.desired_digest, &message)?;
                if self.conditions(
                    id,
                    &[
                        (
                            ConditionType::AwaitingApproval,
                            true,
                            "ApprovalRequested",
                            &message,
                        ),
                        (ConditionType::Synced, false, "AwaitingApproval", &message),
                    ],
                )? {
                    self.observed_drift(o, &judged)?;
                    self.audit(
                        id,
                        AuditKind::Decision,
                        message,
                        serde_json::json!({ "digest": o.desired_digest }),
                    )?;
                }
                Ok((Action::await_change(), Outcome::AwaitingApproval))
            }
            Decision::DryRun => self.dry_run(o, &judged).await,
            Decision::StartRollout => self.start_rollout(o, &judged).await,
            Decision::StepRollout { approved } => {
                let (record, envelope) = o.rollout.clone().expect("a rollout to step");
                self.step(o, record, envelope, approved).await
            }
            Decision::NotYet { wait } => Ok((Action::requeue(wait), Outcome::Progressing)),
            Decision::AwaitApprovalToPromote => {
                Ok((Action::await_change(), Outcome::AwaitingApproval))
            }
            Decision::Abort => {
                let (record, envelope) = o.rollout.clone().expect("a rollout to abort");
                self.abort_step(o, record, envelope).await
            }
            Decision::Supersede { .. } => unreachable!("handled by the caller"),
        }
    }

    fn report_classification(
        &self,
        o: &Observation,
        classification: Classification,
    ) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        match classification {
            Classification::Stopped => {
                self.conditions(
                    id,
                    &[(
                        ConditionType::Synced,
                        true,
                        "Stopped",
                        "instance is stopped; left alone (reconcile_stopped_instances = false)",
                    )],
                )?;
                Ok((Action::await_change(), Outcome::Skipped))
            }
            Classification::Failed => {
                self.conditions(
                    id,
                    &[(
                        ConditionType::Degraded,
                        true,
                        "InstanceError",
                        "instance is in Error; left alone (reconcile_error_instances = false)",
                    )],
                )?;
                Ok((Action::await_change(), Outcome::Skipped))
            }
            Classification::Unwanted => self.report(
                id,
                classification,
                "Unwanted",
                "the instance exists but has no desired configuration; reported only",
            ),
            _ => self.report(
                id,
                classification,
                "Unmanaged",
                &format!(
                    "instance is {} and runs something other than its desired configuration, but this host never applied a configuration to it; reported only (stop it, or let setpoint start it, to manage it)",
                    o.instance.status.as_str()
                ),
            ),
        }
    }

    /// A gate stopped a drifted instance: say so, and audit the drift and the decision
    /// the first time (not on every resync).
    fn gated(&self, o: &Observation, judged: &Judged, reason: &str, message: &str) -> Result<()> {
        let id = o.instance.id.as_str();
        if self.conditions(
            id,
            &[
                (ConditionType::Synced, false, reason, message),
                (ConditionType::Progressing, false, reason, message),
            ],
        )? {
            self.observed_drift(o, judged)?;
            self.audit(
                id,
                AuditKind::Decision,
                message.to_owned(),
                serde_json::json!({ "digest": o.desired_digest, "rule": o.selection.rule_name }),
            )?;
        }
        Ok(())
    }

    /// Count and audit the drift an observation found.
    fn observed_drift(&self, o: &Observation, judged: &Judged) -> Result<()> {
        self.count_drift(judged.classification);
        let views: Vec<super::DriftView> = judged.drifts.iter().map(Into::into).collect();
        self.audit(
            &o.instance.id,
            AuditKind::Observation,
            format!(
                "instance is {}{}",
                judged.classification.as_str(),
                if views.is_empty() {
                    String::new()
                } else {
                    format!(": {}", drift_summary(judged))
                }
            ),
            serde_json::json!({
                "classification": judged.classification,
                "status": o.instance.status.as_str(),
                "drifts": views,
                "desiredDigest": o.desired_digest,
                "actualDigest": o.actual_digest,
                "actualSource": o.source,
                "rule": o.selection.rule_name,
            }),
        )
    }

    async fn dry_run(&self, o: &Observation, judged: &Judged) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        let strategy = self.resolve(&o.selection, World::Strategy)?;
        let desired = self.apply_document(o);
        let message = format!(
            "{} (revision {}): dry-run recorded the plan; no action taken",
            judged.classification.as_str(),
            short_digest(&o.desired_digest)
        );
        if self.conditions(id, &[(ConditionType::Synced, false, "DryRun", &message)])? {
            self.observed_drift(o, judged)?;
            let (calls, outcome) = self
                .simulate(id, &strategy, o, &desired, &judged.drifts)
                .await?;
            // The plan's waits and approval pauses are markers, not calls.
            let made: Vec<ImportCall> = calls
                .iter()
                .filter(|c| !is_plan_marker(c))
                .cloned()
                .collect();
            self.store
                .append_audits(&self.call_entries(id, &strategy, &made))?;
            self.audit(
                id,
                AuditKind::Decision,
                format!(
                    "dry-run: {} would make {} control-plane call(s); nothing sent",
                    strategy.label(),
                    made.len()
                ),
                serde_json::json!({ "plan": calls, "outcome": outcome }),
            )?;
        }
        Ok((Action::await_change(), Outcome::Reported))
    }

    async fn start_rollout(&self, o: &Observation, judged: &Judged) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        let strategy = self.resolve(&o.selection, World::Strategy)?;
        self.observed_drift(o, judged)?;
        // The record is saved under the pin lock, and only while the registry still
        // offers the strategy: a registry swap then either sees this rollout (and keeps
        // its plugin) or happened before, and the strategy is chosen again.
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if !self.plugins().offers(strategy.digest()) {
            drop(pins);
            tracing::info!(instance.id = id, strategy = %strategy.label(), "strategy was replaced or removed while this reconcile ran; choosing again");
            return Ok((Action::requeue(RESELECT_DELAY), Outcome::Skipped));
        }
        if o.selection.gates.approval == Approval::BeforeApply
            && let Some(approval) = self.store.take_approval(id, &o.desired_digest)?
        {
            self.audit(
                id,
                AuditKind::Approval,
                format!(
                    "approval of revision {} by {} used: the rollout starts",
                    short_digest(&o.desired_digest),
                    approval.approved_by.as_deref().unwrap_or("?")
                ),
                serde_json::json!({ "digest": o.desired_digest }),
            )?;
        }
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "roll out revision {} with {} (rule `{}`)",
                short_digest(&o.desired_digest),
                strategy.label(),
                o.selection.rule_name
            ),
            serde_json::json!({ "strategy": strategy.label(), "digest": strategy.digest(), "desiredDigest": o.desired_digest }),
        )?;
        let now = self.now();
        let envelope = Envelope {
            plugin_state: None,
            scope: RolloutScope::new(id),
            desired_digest: o.desired_digest.clone(),
            desired: Some(self.apply_document(o)),
            drifts: judged.drifts.iter().map(Into::into).collect(),
            previous: o.actual.clone(),
            not_before_ms: None,
            promote_delivered_ms: None,
            weights: None,
            progress_at_ms: Some(unix_ms(now)),
            progress_key: None,
            undo_again: false,
        };
        let record = new_record(id, &strategy, &envelope, now);
        self.store.save_rollout(&record)?;
        drop(pins);
        self.conditions(
            id,
            &[(
                ConditionType::Synced,
                false,
                "RolloutStarted",
                &format!(
                    "{} (revision {}): rolling out with {}",
                    judged.classification.as_str(),
                    short_digest(&o.desired_digest),
                    strategy.label()
                ),
            )],
        )?;
        self.step(o, record, envelope, false).await
    }

    /// Take one strategy step and act on its progress.
    async fn step(
        &self,
        o: &Observation,
        mut record: RolloutRecord,
        mut envelope: Envelope,
        approved: bool,
    ) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        // A promotion already handed to the strategy (the daemon stopped before it could
        // drop the request) is not handed over twice.
        if let Some(p) = &o.promote
            && envelope.promote_delivered_ms == Some(p.at_ms)
        {
            self.store.clear_promote(id, p.at_ms)?;
        }
        let before = envelope.status();
        // Waiting for an approval or in a pause the strategy reported is not a lack of
        // progress: the deadline counts from the end of the wait.
        if approved || before.as_ref().is_some_and(paused) {
            envelope.progress_at_ms = Some(unix_ms(self.now()));
        }
        if approved {
            if let Some(approval) = self.store.take_approval(id, &envelope.desired_digest)? {
                self.audit(
                    id,
                    AuditKind::Approval,
                    format!(
                        "approval of revision {} by {} used: the rollout continues",
                        short_digest(&envelope.desired_digest),
                        approval.approved_by.as_deref().unwrap_or("?")
                    ),
                    serde_json::json!({ "digest": envelope.desired_digest }),
                )?;
                self.conditions(
                    id,
                    &[(ConditionType::AwaitingApproval, false, "Approved", "")],
                )?;
            }
            record.phase = RolloutPhase::Running;
        }
        let (strategy, progress) = self.rollout_call(&record, &mut envelope, o, false).await?;
        if self.store.abort_request(id)?.is_some() {
            // The operator's abort arrived while the step ran: it wins over the step's
            // result, whatever that was. What the step did is in the envelope and the
            // applied record, so the strategy's `abort` sees it.
            if let Ok(Progress::Requeue(r)) = &progress {
                envelope.plugin_state = Some(r.state.clone());
            } else if let Ok(Progress::AwaitApproval(a)) = &progress {
                envelope.plugin_state = Some(a.state.clone());
            }
            record.step += 1;
            record.phase = RolloutPhase::Aborting;
            envelope.not_before_ms = None;
            self.save_envelope(&mut record, &envelope)?;
            return Ok((Action::requeue(Duration::ZERO), Outcome::Progressing));
        }
        let progress = match progress {
            Ok(progress) => progress,
            Err(error) => {
                self.save_envelope(&mut record, &envelope)?;
                return Err(Error::Plugin(error));
            }
        };
        let delivered = envelope.promote_delivered_ms;
        // The status the strategy reports now is in the state it just returned.
        let reported = match &progress {
            Progress::Requeue(r) => Some(r.state.clone()),
            Progress::AwaitApproval(a) => Some(a.state.clone()),
            Progress::Done(_) | Progress::Failed(_) => None,
        };
        let mut plan_for = None;
        if let Some(state) = reported {
            let next = Envelope {
                plugin_state: Some(state),
                ..envelope.clone()
            };
            self.audit_status(id, before.as_ref(), &next)?;
            // A strategy that walks steps (its status counts them) gets its whole plan
            // written to the audit after its first step, so a finished rollout reads
            // back against what was planned.
            if record.step == 0 && next.status().is_some_and(|s| s.get("steps").is_some()) {
                plan_for = Some((
                    envelope.desired.clone().unwrap_or(Value::Null),
                    envelope
                        .drifts
                        .iter()
                        .map(|d| d.to_drift())
                        .collect::<Vec<_>>(),
                    envelope.desired_digest.clone(),
                ));
            }
        }
        let result = self.after_progress(o, &strategy, record, envelope, progress)?;
        if let Some((desired, drifts, digest)) = plan_for {
            self.audit_plan(id, &strategy, o, &desired, &drifts, &digest)
                .await?;
        }
        if let Some(at_ms) = delivered
            && o.promote.as_ref().is_some_and(|p| p.at_ms == at_ms)
        {
            self.store.clear_promote(id, at_ms)?;
        }
        Ok(result)
    }

    /// Simulate the rollout from its start (as `setpoint diff` does) and audit the plan.
    /// A plan that cannot be simulated is said so in the audit; the rollout goes on.
    async fn audit_plan(
        &self,
        id: &str,
        strategy: &Arc<Plugin>,
        o: &Observation,
        desired: &Value,
        drifts: &[Drift],
        digest: &str,
    ) -> Result<()> {
        let (calls, outcome) = match self.simulate(id, strategy, o, desired, drifts).await {
            Ok(plan) => plan,
            Err(error) => (
                Vec::new(),
                format!("cannot be simulated: {}", crate::error_chain(&error)),
            ),
        };
        let count = |marker: &str| calls.iter().filter(|c| c.call == marker).count();
        let made = calls.iter().filter(|c| !is_plan_marker(c)).count();
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "rollout plan of revision {} with {} (simulated): {made} control-plane call(s), {} wait(s), {} pause(s) for approval; {outcome}",
                short_digest(digest),
                strategy.label(),
                count("wait"),
                count("await-approval"),
            ),
            serde_json::json!({ "plan": calls, "outcome": outcome, "digest": digest }),
        )
    }

    /// Audit the strategy's reported status when it changed at this step: a finished
    /// rollout reads back step by step, analysis figures included (`setpoint audit ID`).
    fn audit_status(&self, id: &str, before: Option<&Value>, envelope: &Envelope) -> Result<()> {
        let Some(status) = envelope.status() else {
            return Ok(());
        };
        if before == Some(&status) {
            return Ok(());
        }
        self.audit(
            id,
            AuditKind::Observation,
            format!("rollout progress: {}", describe_status(&status)),
            serde_json::json!({ "status": status, "digest": envelope.desired_digest }),
        )
    }

    /// The progress deadline: a step that reports the same status (or, without one, the
    /// same message) as before moves nothing; after `progress_deadline` of that the
    /// rollout is aborted. Returns whether it was.
    fn check_progress(
        &self,
        o: &Observation,
        envelope: &mut Envelope,
        message: &str,
    ) -> Result<bool> {
        let id = o.instance.id.as_str();
        let now = unix_ms(self.now());
        let status = envelope.status();
        let key = match &status {
            Some(status) => status.to_string(),
            None => message.to_owned(),
        };
        if envelope.progress_key.as_deref() != Some(key.as_str())
            || status.as_ref().is_some_and(paused)
        {
            envelope.progress_key = Some(key);
            envelope.progress_at_ms = Some(now);
            return Ok(false);
        }
        let since = envelope.progress_at_ms.unwrap_or(now);
        let deadline = o.selection.progress_deadline;
        if now.saturating_sub(since) <= deadline.as_millis() as u64 {
            return Ok(false);
        }
        let by = format!(
            "{PROGRESS_DEADLINE} (no progress for {}, rule `{}`)",
            humantime::format_duration(deadline),
            o.selection.rule_name
        );
        if !self
            .store
            .request_abort(id, &envelope.desired_digest, &by)?
        {
            return Ok(false);
        }
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "rollout of revision {} made no progress for {}: aborting it",
                short_digest(&envelope.desired_digest),
                humantime::format_duration(deadline)
            ),
            serde_json::json!({ "digest": envelope.desired_digest, "status": status, "message": message }),
        )?;
        Ok(true)
    }

    fn after_progress(
        &self,
        o: &Observation,
        strategy: &Arc<Plugin>,
        mut record: RolloutRecord,
        mut envelope: Envelope,
        progress: Progress,
    ) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        let revision = short_digest(&envelope.desired_digest).to_owned();
        match progress {
            Progress::Done(message) => {
                if !self.store.complete_rollout(id)? {
                    record.step += 1;
                    record.phase = RolloutPhase::Aborting;
                    self.save_envelope(&mut record, &envelope)?;
                    return Ok((Action::requeue(Duration::ZERO), Outcome::Progressing));
                }
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("rollout of revision {revision} done: {message}"),
                    serde_json::json!({ "strategy": strategy.label(), "steps": record.step + 1, "digest": envelope.desired_digest }),
                )?;
                // Synced is not claimed here: the next reconcile, right away, observes
                // what the instance runs and says.
                self.conditions(
                    id,
                    &[
                        (
                            ConditionType::Synced,
                            false,
                            "Verifying",
                            &format!("rollout of revision {revision} done; checking what the instance runs"),
                        ),
                        (ConditionType::Progressing, false, "RolloutDone", &message),
                        (ConditionType::Degraded, false, "RolloutDone", ""),
                        (ConditionType::AwaitingApproval, false, "RolloutDone", ""),
                    ],
                )?;
                Ok((Action::requeue(Duration::ZERO), Outcome::Progressing))
            }
            Progress::Requeue(requeue) => {
                envelope.plugin_state = Some(requeue.state);
                envelope.not_before_ms = Some(unix_ms(self.now()) + requeue.after_ms);
                record.step += 1;
                record.phase = RolloutPhase::Running;
                if self.check_progress(o, &mut envelope, &requeue.message)? {
                    record.phase = RolloutPhase::Aborting;
                    envelope.not_before_ms = None;
                    self.save_envelope(&mut record, &envelope)?;
                    return Ok((Action::requeue(Duration::ZERO), Outcome::Progressing));
                }
                self.save_envelope(&mut record, &envelope)?;
                let message = format!("revision {revision}: {}", requeue.message);
                self.conditions(
                    id,
                    &[
                        (ConditionType::Synced, false, "RolloutInProgress", &message),
                        (
                            ConditionType::Progressing,
                            true,
                            "RolloutInProgress",
                            &message,
                        ),
                    ],
                )?;
                Ok((
                    Action::requeue(Duration::from_millis(requeue.after_ms)),
                    Outcome::Progressing,
                ))
            }
            Progress::AwaitApproval(wait) => {
                envelope.plugin_state = Some(wait.state);
                envelope.not_before_ms = None;
                record.step += 1;
                // A strategy asks only where it means to (its parameters, or the rule's
                // `approval = "before-promote"` it is told as `$approval`): it waits.
                record.phase = RolloutPhase::AwaitingApproval;
                self.save_envelope(&mut record, &envelope)?;
                let message = format!(
                    "revision {revision}: {}; run `setpoint approve {id}`",
                    wait.message
                );
                self.store
                    .request_approval(id, &envelope.desired_digest, &message)?;
                self.audit(
                    id,
                    AuditKind::Decision,
                    format!("awaiting approval: {message}"),
                    serde_json::json!({ "digest": envelope.desired_digest }),
                )?;
                self.conditions(
                    id,
                    &[
                        (
                            ConditionType::AwaitingApproval,
                            true,
                            "ApprovalRequested",
                            &message,
                        ),
                        (
                            ConditionType::Progressing,
                            true,
                            "AwaitingApproval",
                            &message,
                        ),
                    ],
                )?;
                Ok((Action::await_change(), Outcome::AwaitingApproval))
            }
            Progress::Failed(failure) => {
                let conditions = |reason: &str, synced: &str| -> Result<bool> {
                    self.conditions(
                        id,
                        &[
                            (ConditionType::Synced, false, reason, synced),
                            (ConditionType::Progressing, false, "RolloutFailed", ""),
                            (
                                ConditionType::Degraded,
                                true,
                                "RolloutFailed",
                                &failure.reason,
                            ),
                            (ConditionType::AwaitingApproval, false, "RolloutFailed", ""),
                        ],
                    )
                };
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("rollout of revision {revision} failed: {}", failure.reason),
                    serde_json::json!({ "retryable": failure.retryable, "strategy": strategy.label(), "digest": envelope.desired_digest }),
                )?;
                if failure.retryable {
                    self.store.clear_rollout(id)?;
                    self.store.withdraw_approvals(id)?;
                    conditions("RolloutFailed", &failure.reason)?;
                    Err(Error::StrategyFailed {
                        plugin: strategy.label(),
                        instance: id.to_owned(),
                        reason: failure.reason,
                    })
                } else {
                    let reason = format!("failed for good: {}", failure.reason);
                    self.store
                        .finish_abort(id, &envelope.desired_digest, &reason)?;
                    conditions(
                        "GivenUp",
                        &format!(
                            "revision {revision} was given up ({reason}); it stays given up until the desired configuration changes or `setpoint retry {id}`"
                        ),
                    )?;
                    Ok((Action::await_change(), Outcome::Degraded))
                }
            }
        }
    }

    /// Run the strategy's `abort` for a rollout an operator aborted.
    async fn abort_step(
        &self,
        o: &Observation,
        mut record: RolloutRecord,
        mut envelope: Envelope,
    ) -> Result<(Action, Outcome)> {
        let id = o.instance.id.as_str();
        let revision = short_digest(&envelope.desired_digest).to_owned();
        if record.phase != RolloutPhase::Aborting {
            record.phase = RolloutPhase::Aborting;
            self.save_envelope(&mut record, &envelope)?;
        }
        let before = envelope.status();
        let (_, progress) = self.rollout_call(&record, &mut envelope, o, true).await?;
        let by = o
            .abort
            .as_ref()
            .map(|a| a.requested_by.clone())
            .unwrap_or_else(|| "an operator".into());
        match progress {
            Err(error) => {
                self.save_envelope(&mut record, &envelope)?;
                Err(Error::Plugin(error))
            }
            Ok(Progress::Failed(failure)) if failure.retryable => {
                // The undo did not finish (the instance did not come back healthy, say)
                // and may later: the rollout stays, aborting, so that what it made (a
                // clone that may be serving the traffic) is still owned and not swept,
                // and its strategy is asked to undo it again (`$undo = "again"`).
                envelope.undo_again = true;
                record.step += 1;
                self.save_envelope(&mut record, &envelope)?;
                let message = format!(
                    "undoing revision {revision} failed and is tried again in {}s: {}",
                    ABORT_RETRY.as_secs(),
                    failure.reason
                );
                self.audit(
                    id,
                    AuditKind::Outcome,
                    message.clone(),
                    serde_json::json!({ "digest": envelope.desired_digest, "retryable": true }),
                )?;
                self.conditions(
                    id,
                    &[
                        (ConditionType::Progressing, true, "Aborting", &message),
                        (ConditionType::Degraded, true, "AbortFailed", &message),
                    ],
                )?;
                Ok((Action::requeue(ABORT_RETRY), Outcome::Degraded))
            }
            Ok(Progress::Requeue(requeue)) => {
                envelope.plugin_state = Some(requeue.state);
                record.step += 1;
                self.save_envelope(&mut record, &envelope)?;
                self.audit_status(id, before.as_ref(), &envelope)?;
                self.conditions(
                    id,
                    &[(
                        ConditionType::Progressing,
                        true,
                        "Aborting",
                        &format!("aborting revision {revision}: {}", requeue.message),
                    )],
                )?;
                Ok((
                    Action::requeue(Duration::from_millis(requeue.after_ms)),
                    Outcome::Progressing,
                ))
            }
            Ok(other) => {
                let (message, failed) = match other {
                    Progress::Done(m) => (m, false),
                    Progress::Failed(f) => (format!("abort failed: {}", f.reason), true),
                    Progress::AwaitApproval(a) => (a.message, false),
                    Progress::Requeue(_) => unreachable!("handled above"),
                };
                if o.abort.as_ref().is_some_and(|a| !a.give_up) {
                    // Undone because a newer revision superseded it: nothing is given
                    // up, and the newer revision is decided right away.
                    self.store.finish_supersede(id)?;
                    self.audit(
                        id,
                        AuditKind::Outcome,
                        format!(
                            "rollout of revision {revision} undone by its strategy ({by}): {message}"
                        ),
                        serde_json::json!({ "digest": envelope.desired_digest, "failed": failed }),
                    )?;
                    self.conditions(
                        id,
                        &[
                            (ConditionType::Progressing, false, "Superseded", &message),
                            (ConditionType::AwaitingApproval, false, "Superseded", ""),
                        ],
                    )?;
                    return Ok((Action::requeue(Duration::ZERO), Outcome::Progressing));
                }
                let deadline = by.starts_with(PROGRESS_DEADLINE);
                let reason = format!("aborted by {by}: {message}");
                self.store
                    .finish_abort(id, &envelope.desired_digest, &reason)?;
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("rollout of revision {revision} {reason}"),
                    serde_json::json!({ "digest": envelope.desired_digest, "failed": failed }),
                )?;
                let synced = format!(
                    "revision {revision} was given up ({reason}); it stays given up until the desired configuration changes or `setpoint retry {id}`"
                );
                self.conditions(
                    id,
                    &[
                        (ConditionType::Synced, false, "GivenUp", &synced),
                        (ConditionType::Progressing, false, "Aborted", ""),
                        (ConditionType::AwaitingApproval, false, "Aborted", ""),
                        (
                            ConditionType::Degraded,
                            failed || deadline,
                            if failed {
                                "AbortFailed"
                            } else if deadline {
                                "ProgressDeadlineExceeded"
                            } else {
                                "Aborted"
                            },
                            if failed || deadline { &reason } else { "" },
                        ),
                    ],
                )?;
                Ok((Action::await_change(), Outcome::Degraded))
            }
        }
    }

    /// The desired configuration changed mid-rollout: the rollout for the old revision
    /// ends (its clones deleted, so nothing it made outlives it), and the caller decides
    /// again for the new revision. Nothing of the old rollout is recorded as applied
    /// beyond what its strategy sent.
    pub(super) async fn supersede(&self, o: &Observation, from: &str) -> Result<bool> {
        let id = o.instance.id.as_str();
        let Some((record, envelope)) = &o.rollout else {
            return Ok(false);
        };
        // A rollout that made clones or steered traffic is undone by its strategy, which
        // knows how to move traffic back before a clone goes: an abort that gives nothing
        // up. The newer revision is decided when it is done.
        if (envelope.weights.is_some() || !envelope.scope.clones.is_empty())
            && self.store.request_supersede(
                id,
                from,
                &format!(
                    "setpoint: revision {} supersedes it",
                    short_digest(&o.desired_digest)
                ),
            )?
        {
            self.audit(
                id,
                AuditKind::Observation,
                format!(
                    "desired configuration changed during the rollout of revision {} (after {} step(s) of {}): its strategy undoes it, then revision {} is decided",
                    short_digest(from),
                    record.step,
                    record.strategy,
                    short_digest(&o.desired_digest)
                ),
                serde_json::json!({ "from": from, "to": o.desired_digest }),
            )?;
            return Ok(true);
        }
        for clone in &envelope.scope.clones {
            let deleted = self
                .delete_clone_journalled(clone, "superseded rollout")
                .await?;
            let outcome = match deleted {
                Ok(()) => "deleted".to_owned(),
                Err(e) if e.is_not_found() => "already gone".to_owned(),
                Err(e) => format!(
                    "delete failed (the leak sweep retries): {}",
                    crate::error_chain(&e)
                ),
            };
            self.audit(
                id,
                AuditKind::Action,
                format!("clone {clone} of the superseded rollout: {outcome}"),
                serde_json::json!({ "clone": clone, "digest": from }),
            )?;
            self.store.clear_intents(clone)?;
        }
        self.store.clear_rollout(id)?;
        self.store.withdraw_approvals(id)?;
        self.audit(
            id,
            AuditKind::Observation,
            format!(
                "desired configuration changed during the rollout of revision {} (after {} step(s) of {}): that rollout ends, revision {} is decided afresh",
                short_digest(from),
                record.step,
                record.strategy,
                short_digest(&o.desired_digest)
            ),
            serde_json::json!({ "from": from, "to": o.desired_digest }),
        )?;
        Ok(false)
    }

    fn save_envelope(&self, record: &mut RolloutRecord, envelope: &Envelope) -> Result<()> {
        record.state = serde_json::to_value(envelope).expect("envelope serialises");
        record.updated_at = self.now();
        self.store.save_rollout(record)?;
        Ok(())
    }

    pub(super) fn pinned(&self, record: &RolloutRecord) -> Result<Arc<Plugin>> {
        self.plugins()
            .by_digest(&record.plugin_digest)
            .ok_or_else(|| Error::PinnedPluginGone {
                instance: record.instance_id.clone(),
                plugin: format!("{}@{}", record.strategy, record.plugin_version),
                digest: record.plugin_digest.clone(),
            })
    }

    /// Call the rollout's pinned strategy (`step`, or `abort` when `abort`), record what
    /// it sent as applied, audit its control-plane calls and keep its new scope.
    async fn rollout_call(
        &self,
        record: &RolloutRecord,
        envelope: &mut Envelope,
        o: &Observation,
        abort: bool,
    ) -> Result<(Arc<Plugin>, std::result::Result<Progress, Box<CallError>>)> {
        let strategy = self.pinned(record)?;
        let desired = envelope
            .desired
            .clone()
            .or_else(|| o.desired.clone())
            .unwrap_or(Value::Null);
        let elapsed_ms = self
            .now()
            .duration_since(record.started_at)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut params = strategy_params(o);
        if abort && envelope.undo_again {
            // The one call that retries an undo that failed: the strategy starts its undo
            // over instead of continuing a wait that ran out.
            params.insert(UNDO_PARAM.into(), Value::String("again".into()));
            envelope.undo_again = false;
        }
        if !abort
            && let Some(p) = o.promote.as_ref().filter(|p| {
                p.digest == envelope.desired_digest
                    && envelope.promote_delivered_ms != Some(p.at_ms)
            })
        {
            params.insert(
                PROMOTE_PARAM.into(),
                Value::String(if p.full { "full" } else { "step" }.into()),
            );
            envelope.promote_delivered_ms = Some(p.at_ms);
            self.audit(
                &record.instance_id,
                AuditKind::Approval,
                format!(
                    "promotion{} by {} handed to {}",
                    if p.full { " (full)" } else { "" },
                    p.requested_by,
                    strategy.label()
                ),
                serde_json::json!({ "digest": p.digest, "full": p.full }),
            )?;
        }
        let rollout = Rollout {
            group: None,
            members: vec![Member {
                instance_id: record.instance_id.clone(),
                desired: desired.to_string(),
                actual: o
                    .actual
                    .as_ref()
                    .or(envelope.previous.as_ref())
                    .map(Value::to_string),
                drifts: envelope.drifts.iter().map(|d| d.to_drift()).collect(),
            }],
            params: Value::Object(params).to_string(),
            state: envelope.plugin_state.clone(),
            step: record.step,
            elapsed_ms,
        };
        self.report_leftover_intents(&record.instance_id)?;
        let outcome = self
            .run_strategy(
                &record.instance_id,
                strategy.clone(),
                rollout,
                envelope.scope.clone(),
                false,
                abort,
            )
            .await?;
        // If a write fails here, the step's intents stay in the journal and its next
        // step audits them first (`report_leftover_intents`).
        self.record_sent(&record.instance_id, &outcome.calls, &desired, &strategy)?;
        self.store.append_audits(&self.call_entries(
            &record.instance_id,
            &strategy,
            &outcome.calls,
        ))?;
        self.store.clear_intents(&record.instance_id)?;
        if let Some(weights) = outcome
            .calls
            .iter()
            .rev()
            .find(|c| c.call == "set-traffic-weights" && c.outcome == CallOutcome::Ok)
            .and_then(|c| c.weights.clone())
        {
            envelope.weights = Some(weights);
        }
        envelope.scope = outcome.scope;
        Ok((strategy, outcome.progress))
    }

    /// Record as applied what the strategy's successful `start` calls sent to the
    /// instance itself (a `start` without a configuration starts the desired one the
    /// strategy was given), and whether its last lifecycle call stopped it: an instance
    /// this host stopped is brought back, never "left alone" as a stopped one. A
    /// lifecycle call that failed counts as a stop: a timeout may come after the control
    /// plane acted, so the instance may be stopped by this host, or run what this host
    /// started without a record of it; either way it is not taken for one an operator
    /// stopped or one this host never managed (the next successful start clears it).
    pub(super) fn record_sent(
        &self,
        id: &str,
        calls: &[ImportCall],
        desired: &Value,
        strategy: &Plugin,
    ) -> Result<()> {
        for call in calls {
            if call.mutating && matches!(call.outcome, CallOutcome::Ok | CallOutcome::Failed(_)) {
                self.note_own_change(&call.target);
            }
            if let Some(stopped) = host_stop_effect(id, call) {
                self.store.set_host_stopped(id, stopped)?;
            }
            if call.target != id || call.outcome != CallOutcome::Ok {
                continue;
            }
            if call.call == "start" {
                let sent = call.configuration.as_ref().unwrap_or(desired);
                self.store.record_applied(
                    id,
                    sent,
                    &super::config_digest(sent),
                    &strategy.label(),
                )?;
            }
        }
        Ok(())
    }

    /// Step (or abort) `strategy` for the rollout `key` (an instance id or a group key).
    /// Every mutating call's intent is recorded under `key` before it is sent; the
    /// caller clears them once the calls' outcomes are audited.
    pub(super) async fn run_strategy(
        &self,
        key: &str,
        strategy: Arc<Plugin>,
        rollout: Rollout,
        scope: RolloutScope,
        dry_run: bool,
        abort: bool,
    ) -> Result<StepOutcome> {
        let runtime = self.runtime.clone();
        let host = Arc::new(
            Bridge::new(self.cp.clone(), tokio::runtime::Handle::current())
                .with_metric_queries(self.policy.metric_queries().clone())
                .with_intents(self.store.clone(), key, strategy.label()),
        );
        let label = strategy.label();
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            if abort {
                runtime.abort(&strategy, &rollout, host, scope, dry_run)
            } else {
                runtime.step(&strategy, &rollout, host, scope, dry_run)
            }
        })
        .await
        .map_err(|_| Error::Cancelled)?;
        self.metrics.plugin_call(
            &label,
            if abort { "abort" } else { "step" },
            started.elapsed().as_secs_f64(),
            outcome
                .progress
                .as_ref()
                .err()
                .map(|e| super::records::failure_reason(e)),
        );
        Ok(outcome)
    }

    /// Run a rollout in dry-run from step 0 until it finishes (or [`MAX_PLAN_STEPS`]),
    /// collecting the calls it would make.
    pub(super) async fn simulate(
        &self,
        id: &str,
        strategy: &Arc<Plugin>,
        o: &Observation,
        desired: &Value,
        drifts: &[Drift],
    ) -> Result<(Vec<ImportCall>, String)> {
        let mut scope = RolloutScope::new(id);
        let mut state = None;
        let mut elapsed_ms = 0u64;
        let mut calls = Vec::new();
        for step in 0..MAX_PLAN_STEPS {
            let rollout = Rollout {
                group: None,
                members: vec![Member {
                    instance_id: id.to_owned(),
                    desired: desired.to_string(),
                    actual: o.actual.as_ref().map(Value::to_string),
                    drifts: drifts.to_vec(),
                }],
                params: Value::Object(strategy_params(o)).to_string(),
                state: state.clone(),
                step,
                elapsed_ms,
            };
            let outcome = self
                .run_strategy(id, strategy.clone(), rollout, scope, true, false)
                .await?;
            calls.extend(outcome.calls);
            scope = outcome.scope;
            match outcome.progress {
                Err(error) => return Err(Error::Plugin(error)),
                Ok(Progress::Done(m)) => return Ok((calls, format!("done: {m}"))),
                Ok(Progress::Failed(f)) => return Ok((calls, format!("failed: {}", f.reason))),
                Ok(Progress::AwaitApproval(a)) => {
                    // The plan shows the pause and goes on as if it were approved.
                    calls.push(ImportCall {
                        call: "await-approval".into(),
                        target: a.message,
                        mutating: false,
                        outcome: CallOutcome::Simulated,
                        configuration: None,
                        weights: None,
                        intent: None,
                    });
                    state = Some(a.state);
                }
                Ok(Progress::Requeue(r)) => {
                    if r.after_ms > 0 {
                        calls.push(ImportCall {
                            call: "wait".into(),
                            target: format!(
                                "{}: {}",
                                humantime::format_duration(Duration::from_millis(r.after_ms)),
                                r.message
                            ),
                            mutating: false,
                            outcome: CallOutcome::Simulated,
                            configuration: None,
                            weights: None,
                            intent: None,
                        });
                    }
                    state = Some(r.state);
                    elapsed_ms += r.after_ms;
                }
            }
        }
        Ok((
            calls,
            format!("still in progress after {MAX_PLAN_STEPS} simulated steps"),
        ))
    }
}

/// A plan entry that is not a control-plane call: a wait the strategy asked for, or a
/// pause for approval.
fn is_plan_marker(call: &ImportCall) -> bool {
    call.outcome == CallOutcome::Simulated
        && matches!(call.call.as_str(), "wait" | "await-approval")
}

/// The reserved parameter that hands an operator's promotion to the strategy.
pub const PROMOTE_PARAM: &str = "$promote";
/// The reserved parameter on the `abort` call that retries an undo that failed.
pub const UNDO_PARAM: &str = "$undo";
/// The reserved parameter that tells the strategy the rule's approval gate.
pub const APPROVAL_PARAM: &str = "$approval";
/// Who an abort for a missed progress deadline is requested by.
const PROGRESS_DEADLINE: &str = "the progress deadline";

/// The parameters a strategy is given: the rule's, and the host's `$approval`.
fn strategy_params(o: &Observation) -> serde_json::Map<String, Value> {
    selection_params(&o.selection)
}

/// The parameters a strategy is given under `selection` (an instance's or a group's
/// rule): the rule's, and the host's `$approval`.
pub(super) fn selection_params(
    selection: &crate::policy::Selection,
) -> serde_json::Map<String, Value> {
    let mut params = selection.strategy_params.clone();
    params.insert(
        APPROVAL_PARAM.into(),
        Value::String(selection.gates.approval.to_string()),
    );
    params
}

/// A new rollout's record for `key` (an instance id or a group key) under `strategy`,
/// at step 0, with `envelope` as its host-side state.
pub(super) fn new_record(
    key: &str,
    strategy: &Plugin,
    envelope: &impl serde::Serialize,
    now: SystemTime,
) -> RolloutRecord {
    RolloutRecord {
        instance_id: key.to_owned(),
        strategy: strategy.metadata().name.clone(),
        plugin_version: strategy.metadata().version.to_string(),
        plugin_digest: strategy.digest().to_owned(),
        state: serde_json::to_value(envelope).expect("envelope serialises"),
        step: 0,
        started_at: now,
        updated_at: now,
        phase: RolloutPhase::Running,
    }
}

/// Whether a reported status says the rollout waits in a pause or for an approval.
fn paused(status: &Value) -> bool {
    status.get("paused").and_then(Value::as_bool) == Some(true)
}

/// One line for a reported status: `canary step 2/5, weights a=90 b=10, waiting for ...`.
pub fn describe_status(status: &Value) -> String {
    let mut parts = Vec::new();
    let phase = status.get("phase").and_then(Value::as_str);
    match (
        status.get("step").and_then(Value::as_u64),
        status.get("steps").and_then(Value::as_u64),
    ) {
        (Some(step), Some(steps)) => {
            parts.push(format!("{} step {step}/{steps}", phase.unwrap_or("step")))
        }
        _ => parts.extend(phase.map(str::to_owned)),
    }
    if let Some(weights) = status.get("weights").and_then(Value::as_array) {
        let text: Vec<String> = weights
            .iter()
            .filter_map(|w| {
                Some(format!(
                    "{}={}",
                    w.get("instance_id")?.as_str()?,
                    w.get("weight")?.as_u64()?
                ))
            })
            .collect();
        if !text.is_empty() {
            parts.push(format!("weights {}", text.join(" ")));
        }
    }
    if let Some(a) = status.get("analysis").filter(|a| a.is_object()) {
        let rate = a.get("error_rate").and_then(Value::as_f64);
        let max = a.get("max_error_rate").and_then(Value::as_f64);
        let requests = a.get("requests").and_then(Value::as_u64);
        let errors = a.get("errors").and_then(Value::as_u64);
        let verdict = a
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or("measuring");
        let query = a.get("query").and_then(Value::as_str);
        parts.push(match (query, rate, max, requests, errors) {
            (Some(query), ..) => {
                let value = a
                    .get("value")
                    .and_then(Value::as_f64)
                    .map_or("no value yet".to_owned(), |v| format!("{v:.3}"));
                let bounds: Vec<String> = ["min", "max"]
                    .into_iter()
                    .filter_map(|k| Some(format!("{k} {:.3}", a.get(k)?.as_f64()?)))
                    .collect();
                format!(
                    "analysis {verdict}: query {query} {value} against {}",
                    bounds.join(", ")
                )
            }
            (None, Some(rate), Some(max), Some(requests), Some(errors)) => format!(
                "analysis {verdict}: error rate {rate:.3} ({errors} of {requests}) against max {max:.3}"
            ),
            _ => format!("analysis {verdict}"),
        });
    }
    if let Some(waiting) = status.get("waiting_for").and_then(Value::as_str) {
        parts.push(format!("waiting: {waiting}"));
    }
    if parts.is_empty() {
        status.to_string()
    } else {
        parts.join(", ")
    }
}

fn drift_summary(judged: &Judged) -> String {
    if judged.drifts.is_empty() {
        return judged.classification.as_str().to_owned();
    }
    judged
        .drifts
        .iter()
        .map(|d| d.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `call` says about whether this host stopped instance `id` last: `Some(true)`
/// after a `stop` it sent, also one that failed (its answer may have been lost after the
/// control plane stopped the instance: a reset, a truncated answer, a timeout), so that a
/// rollout failing after its own stop brings the instance back instead of leaving it
/// "stopped on purpose"; `Some(true)` too after a `start` or `restart` that failed (it may
/// have landed, so nothing was recorded as applied, or left the instance down: either
/// way the instance stays the host's to manage); `Some(false)` after a successful `start`
/// or `restart`; `None` for anything else (other calls, other instances, calls not sent).
pub(super) fn host_stop_effect(id: &str, call: &ImportCall) -> Option<bool> {
    if call.target != id {
        return None;
    }
    match (call.call.as_str(), &call.outcome) {
        // A stop that failed may have landed (its answer lost); a start or restart that
        // failed may have landed or left the instance down. Either way the instance is
        // the host's to bring back, not an operator's stop to leave alone.
        ("stop", CallOutcome::Ok) | ("stop" | "start" | "restart", CallOutcome::Failed(_)) => {
            Some(true)
        }
        ("start" | "restart", CallOutcome::Ok) => Some(false),
        _ => None,
    }
}
