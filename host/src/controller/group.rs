//! Group rollouts: one change rolled out across the instances a policy rule groups
//! (`group_by = ["app"]`: the instances it matches that share those label values), by a
//! strategy that supports groups (metadata `group-rollouts`, such as `rolling`).
//!
//! Start at [`Controller::reconcile_group`]. A group has a key of its own in the work
//! queue and the store, `group:<rule>/<name>` ([`group_key`]), so a group rollout is
//! persisted, resumed after a restart and audited like an instance's. A member's own
//! reconcile judges the member, records its conditions and then reconciles its group
//! (under a per-group lock, and no earlier than the strategy asked to be stepped), so
//! whichever member is looked at first moves the group on, and a change to any member
//! is seen within one event.
//!
//! The rollout keeps every member's desired digest (its revision set). When a member's
//! desired configuration changes, or a member joins or leaves, the rollout in flight
//! goes on (audited) with the members as they are now, as a rolling update does: the
//! strategy keeps track of the members it has taken down and sees each member's drift
//! afresh at every step. After a crash, the step is called again with the state saved before the last
//! wait; a strategy judges each member by its drift, so a member finished before the
//! crash is not touched again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decide::unix_ms;
use super::{Controller, Error, Observation, Outcome, Result, config_digest, decide};
use crate::client;
use crate::policy::Selection;
use crate::queue::Action;
use crate::runtime::{Member, Plugin, Progress, Rollout, RolloutScope, World};
use crate::store::{AuditKind, ConditionType, RolloutPhase, RolloutRecord};

/// What a group's key starts with, in the work queue and the store.
pub const GROUP_KEY_PREFIX: &str = "group:";

/// The key of group `name` of rule `rule`: `group:<rule>/<name>`.
pub fn group_key(rule: &str, name: &str) -> String {
    format!("{GROUP_KEY_PREFIX}{rule}/{name}")
}

/// The rule and group name of a group key, or `None` for an instance id.
pub fn parse_group_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(GROUP_KEY_PREFIX)?.split_once('/')
}

/// What the host persists with a group rollout besides the strategy's own state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct GroupEnvelope {
    /// The group's name, e.g. `app=orders`.
    pub group: String,
    /// The strategy's opaque state from its last step.
    pub plugin_state: Option<String>,
    /// The members and the clones the rollout created.
    pub scope: Option<RolloutScope>,
    /// Every member's desired digest when the rollout started: its revision set.
    pub revisions: BTreeMap<String, String>,
    /// What each member ran when the rollout started, for `actual` when it runs nothing
    /// at a later step.
    #[serde(default)]
    pub previous: BTreeMap<String, Value>,
    /// Unix milliseconds before which the strategy asked not to be stepped again.
    #[serde(default)]
    pub not_before_ms: Option<u64>,
}

impl GroupEnvelope {
    fn read(record: &RolloutRecord) -> GroupEnvelope {
        serde_json::from_value(record.state.clone()).unwrap_or_default()
    }

    /// The status object the strategy reports in its state, if any.
    pub fn status(&self) -> Option<Value> {
        let state: Value = serde_json::from_str(self.plugin_state.as_deref()?).ok()?;
        state.get("status").filter(|s| s.is_object()).cloned()
    }
}

/// A member as the group reconcile sees it.
struct Seen {
    observation: Observation,
    drifts: Vec<crate::runtime::Drift>,
}

/// The members whose revision differs between two revision sets (changed, joined or left).
fn changed_members(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(id, digest)| was.get(*id) != Some(*digest))
        .map(|(id, _)| id.clone())
        .collect();
    changed.extend(was.keys().filter(|id| !now.contains_key(*id)).cloned());
    changed
}

/// One digest for a revision set, for approvals and given-up records.
fn revision_digest(revisions: &BTreeMap<String, String>) -> String {
    config_digest(&serde_json::to_value(revisions).expect("a map serialises"))
}

impl Controller {
    /// A member of a group: judge it, record its own conditions, then move its group on.
    pub(super) async fn reconcile_member(
        &self,
        o: &Observation,
        group: &str,
    ) -> Result<(Action, Outcome)> {
        let key = group_key(&o.selection.rule_name, group);
        let judged = self.judge(o, false).await?;
        let (action, outcome) = self.reconcile_group(&key).await?;
        let synced = judged.classification == decide::Classification::InSync;
        let message = if synced {
            format!("runs its desired configuration (group {group})")
        } else {
            format!("member of group {group}: {}", outcome_text(outcome))
        };
        self.conditions(
            &o.instance.id,
            &[
                (
                    ConditionType::Synced,
                    synced,
                    if synced { "Synced" } else { "GroupRollout" },
                    &message,
                ),
                (
                    ConditionType::Progressing,
                    !synced && outcome == Outcome::Progressing,
                    if synced { "Synced" } else { "GroupRollout" },
                    &message,
                ),
            ],
        )?;
        Ok((action, if synced { Outcome::Synced } else { outcome }))
    }

    /// The group reconcile, under the group's lock: observe every member, then start,
    /// step, supersede or finish the group's rollout.
    pub(super) async fn reconcile_group(&self, key: &str) -> Result<(Action, Outcome)> {
        let lock = self.group_lock(key);
        let _held = lock.lock().await;
        let Some((rule, group)) = parse_group_key(key) else {
            return Ok((Action::await_change(), Outcome::Skipped));
        };
        let members = self.group_members(rule, group).await?;
        let record = self.store.load_rollout(key)?;
        if members.is_empty() {
            if record.is_some() {
                self.store.clear_rollout(key)?;
                self.audit(
                    key,
                    AuditKind::Outcome,
                    format!("group {group} has no members any more; its rollout ended"),
                    Value::Null,
                )?;
            }
            return Ok((Action::await_change(), Outcome::Skipped));
        }
        let selection = members[0].observation.selection.clone();
        let revisions: BTreeMap<String, String> = members
            .iter()
            .map(|m| {
                (
                    m.observation.instance.id.clone(),
                    m.observation.desired_digest.clone(),
                )
            })
            .collect();
        let drifting: Vec<&str> = members
            .iter()
            .filter(|m| !m.drifts.is_empty())
            .map(|m| m.observation.instance.id.as_str())
            .collect();

        let mut record = match record {
            Some(record) => {
                let mut envelope = GroupEnvelope::read(&record);
                if envelope.revisions != revisions {
                    // A member's desired configuration changed, or a member joined or
                    // left: the rollout goes on towards the newest revisions (the
                    // strategy sees each member's drift as it is now), like a rolling
                    // update does, instead of starting over and losing track of the
                    // members it has already taken down.
                    self.audit(
                        key,
                        AuditKind::Decision,
                        format!(
                            "group rollout of {group} goes on with changed members: {}",
                            changed_members(&envelope.revisions, &revisions).join(", ")
                        ),
                        serde_json::json!({ "was": envelope.revisions, "now": revisions }),
                    )?;
                    envelope.revisions = revisions.clone();
                    for m in &members {
                        let id = &m.observation.instance.id;
                        if let (false, Some(actual)) =
                            (envelope.previous.contains_key(id), &m.observation.actual)
                        {
                            envelope.previous.insert(id.clone(), actual.clone());
                        }
                    }
                    if let Some(scope) = &mut envelope.scope {
                        scope.members = members
                            .iter()
                            .map(|m| m.observation.instance.id.clone())
                            .filter(|id| *id != scope.instance_id)
                            .collect();
                    }
                    let mut record = record;
                    record.state = serde_json::to_value(&envelope).expect("envelope serialises");
                    self.store.save_rollout(&record)?;
                    Some((record, envelope))
                } else {
                    Some((record, envelope))
                }
            }
            None => None,
        };

        if record.is_none() {
            if drifting.is_empty() {
                let message =
                    format!("every member of group {group} runs its desired configuration");
                self.conditions(
                    key,
                    &[
                        (ConditionType::Synced, true, "Synced", &message),
                        (ConditionType::Degraded, false, "InSync", ""),
                    ],
                )?;
                return Ok((Action::await_change(), Outcome::Synced));
            }
            let digest = revision_digest(&revisions);
            if self
                .store
                .given_up(key)?
                .is_some_and(|g| g.digest == digest)
            {
                return Ok((Action::await_change(), Outcome::Degraded));
            }
            if selection.gates.protected {
                self.audit(
                    key,
                    AuditKind::Observation,
                    format!(
                        "group {group}: {} drifted; the rule is protected, reported only",
                        drifting.join(", ")
                    ),
                    Value::Null,
                )?;
                return Ok((Action::await_change(), Outcome::Reported));
            }
            if let Some(window) = &selection.gates.window
                && !window.is_open(self.now())
            {
                let wait = window.until_open(self.now());
                return Ok((Action::requeue(wait), Outcome::Skipped));
            }
            let strategy = self.resolve(&selection, World::Strategy)?;
            if !strategy.metadata().group_rollouts {
                let reason = format!(
                    "rule `{rule}` groups instances (group_by) but {} rolls out one instance at a time; use a strategy that supports groups, such as `rolling`",
                    strategy.label()
                );
                // Said on the group too (the error lands on the member whose reconcile
                // got here), so `status --group` shows why nothing moves.
                self.conditions(
                    key,
                    &[
                        (ConditionType::Synced, false, "RolloutFailed", &reason),
                        (ConditionType::Degraded, true, "RolloutFailed", &reason),
                    ],
                )?;
                return Err(Error::StrategyFailed {
                    plugin: strategy.label(),
                    instance: key.to_owned(),
                    reason,
                });
            }
            let now = self.now();
            let envelope = GroupEnvelope {
                group: group.to_owned(),
                plugin_state: None,
                scope: Some(RolloutScope::group(
                    members[0].observation.instance.id.clone(),
                    members
                        .iter()
                        .skip(1)
                        .map(|m| m.observation.instance.id.clone()),
                )),
                revisions: revisions.clone(),
                previous: members
                    .iter()
                    .filter_map(|m| {
                        m.observation
                            .actual
                            .clone()
                            .map(|a| (m.observation.instance.id.clone(), a))
                    })
                    .collect(),
                not_before_ms: None,
            };
            let new = super::rollout::new_record(key, &strategy, &envelope, now);
            self.store.save_rollout(&new)?;
            self.audit(
                key,
                AuditKind::Decision,
                format!(
                    "group rollout of {group} started with {}: {} of {} members drift ({})",
                    strategy.label(),
                    drifting.len(),
                    members.len(),
                    drifting.join(", ")
                ),
                serde_json::json!({ "revisions": revisions, "strategy": strategy.label() }),
            )?;
            record = Some((new, envelope));
        }
        let (mut record, mut envelope) = record.expect("set above");

        if let Some(abort) = self.store.abort_request(key)? {
            return self
                .abort_group(
                    key,
                    &selection,
                    &members,
                    &mut record,
                    &mut envelope,
                    &abort.requested_by,
                )
                .await;
        }
        if record.phase == RolloutPhase::AwaitingApproval {
            let digest = revision_digest(&envelope.revisions);
            if self.store.take_approval(key, &digest)?.is_none() {
                return Ok((Action::await_change(), Outcome::AwaitingApproval));
            }
            record.phase = RolloutPhase::Running;
        }
        if let Some(not_before) = envelope.not_before_ms {
            let now = unix_ms(self.now());
            if now < not_before {
                return Ok((
                    Action::requeue(Duration::from_millis(not_before - now)),
                    Outcome::Progressing,
                ));
            }
        }
        self.step_group(key, &selection, &members, &mut record, &mut envelope)
            .await
    }

    /// The rollout handed to the strategy: every member with its drifts, the rule's
    /// parameters and `$approval`, and the state of the last step.
    fn group_rollout(
        &self,
        selection: &Selection,
        members: &[Seen],
        record: &RolloutRecord,
        envelope: &GroupEnvelope,
    ) -> Rollout {
        let ignored = decide::ignored_paths(&selection.comparator_params);
        let rollout_members = members
            .iter()
            .filter_map(|m| {
                let o = &m.observation;
                let desired = o.desired.as_ref()?;
                let actual = o
                    .actual
                    .as_ref()
                    .or_else(|| envelope.previous.get(&o.instance.id));
                Some(Member {
                    instance_id: o.instance.id.clone(),
                    desired: decide::apply_ignored(desired, actual, &ignored).to_string(),
                    actual: actual.map(Value::to_string),
                    drifts: m.drifts.clone(),
                })
            })
            .collect();
        let params = super::rollout::selection_params(selection);
        let elapsed_ms = self
            .now()
            .duration_since(record.started_at)
            .unwrap_or_default()
            .as_millis() as u64;
        Rollout {
            group: Some(envelope.group.clone()),
            members: rollout_members,
            params: Value::Object(params).to_string(),
            state: envelope.plugin_state.clone(),
            step: record.step,
            elapsed_ms,
        }
    }

    /// Run the strategy's `step` (or `abort`) for the group, audit the calls under the
    /// group and each member, and record what it sent; returns the strategy and its
    /// answer, with the envelope's scope updated.
    async fn call_group(
        &self,
        key: &str,
        selection: &Selection,
        members: &[Seen],
        record: &RolloutRecord,
        envelope: &mut GroupEnvelope,
        abort: bool,
    ) -> Result<(Arc<Plugin>, Result<Progress>)> {
        let strategy: Arc<Plugin> = self.pinned(record)?;
        let rollout = self.group_rollout(selection, members, record, envelope);
        let scope = envelope.scope.clone().unwrap_or_else(|| {
            RolloutScope::group(
                members[0].observation.instance.id.clone(),
                members.iter().map(|m| m.observation.instance.id.clone()),
            )
        });
        let dry_run = selection.gates.dry_run || self.settings.dry_run;
        self.report_leftover_intents(key)?;
        let outcome = self
            .run_strategy(key, strategy.clone(), rollout, scope, dry_run, abort)
            .await?;
        envelope.scope = Some(outcome.scope);
        // Each member's own audit shows what was done to it, the group's shows it all;
        // written at once, after the members' records. If a write fails, the step's
        // intents stay in the journal and the next step audits them first.
        let mut entries = self.call_entries(key, &strategy, &outcome.calls);
        for m in members {
            let id = &m.observation.instance.id;
            let mine: Vec<_> = outcome
                .calls
                .iter()
                .filter(|c| c.target == *id)
                .cloned()
                .collect();
            entries.extend(self.call_entries(id, &strategy, &mine));
            if !dry_run && let Some(desired) = &m.observation.desired {
                self.record_sent(id, &mine, desired, &strategy)?;
            }
        }
        self.store.append_audits(&entries)?;
        self.store.clear_intents(key)?;
        Ok((strategy, outcome.progress.map_err(Error::Plugin)))
    }

    async fn step_group(
        &self,
        key: &str,
        selection: &Selection,
        members: &[Seen],
        record: &mut RolloutRecord,
        envelope: &mut GroupEnvelope,
    ) -> Result<(Action, Outcome)> {
        let group = envelope.group.clone();
        let before = envelope.status();
        let (strategy, progress) = self
            .call_group(key, selection, members, record, envelope, false)
            .await?;
        let progress = match progress {
            Ok(progress) => progress,
            Err(error) => {
                self.save_group(record, envelope)?;
                return Err(error);
            }
        };
        match progress {
            Progress::Requeue(requeue) => {
                envelope.plugin_state = Some(requeue.state);
                envelope.not_before_ms = Some(unix_ms(self.now()).saturating_add(requeue.after_ms));
                record.step += 1;
                self.save_group(record, envelope)?;
                self.audit_group_status(key, before.as_ref(), envelope)?;
                self.conditions(
                    key,
                    &[
                        (
                            ConditionType::Synced,
                            false,
                            "GroupRollout",
                            &requeue.message,
                        ),
                        (
                            ConditionType::Progressing,
                            true,
                            "GroupRollout",
                            &requeue.message,
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
                record.phase = RolloutPhase::AwaitingApproval;
                self.save_group(record, envelope)?;
                self.audit_group_status(key, before.as_ref(), envelope)?;
                let digest = revision_digest(&envelope.revisions);
                self.store.request_approval(key, &digest, &wait.message)?;
                self.audit(
                    key,
                    AuditKind::Approval,
                    format!(
                        "group rollout of {group} paused for an operator: {}",
                        wait.message
                    ),
                    serde_json::json!({ "digest": digest }),
                )?;
                self.conditions(
                    key,
                    &[(
                        ConditionType::AwaitingApproval,
                        true,
                        "GroupRolloutPaused",
                        &wait.message,
                    )],
                )?;
                Ok((Action::await_change(), Outcome::AwaitingApproval))
            }
            Progress::Done(message) => {
                envelope.plugin_state = None;
                self.store.clear_rollout(key)?;
                self.audit_group_status(key, before.as_ref(), envelope)?;
                self.audit(
                    key,
                    AuditKind::Outcome,
                    format!(
                        "group rollout of {group} done with {}: {message}",
                        strategy.label()
                    ),
                    serde_json::json!({ "revisions": envelope.revisions }),
                )?;
                self.conditions(
                    key,
                    &[
                        (ConditionType::Synced, true, "Synced", &message),
                        (ConditionType::Progressing, false, "Done", &message),
                        (ConditionType::AwaitingApproval, false, "Done", ""),
                        (ConditionType::Degraded, false, "RolloutDone", ""),
                    ],
                )?;
                Ok((Action::requeue(Duration::ZERO), Outcome::Synced))
            }
            Progress::Failed(failure) if failure.retryable => {
                self.save_group(record, envelope)?;
                Err(Error::StrategyFailed {
                    plugin: strategy.label(),
                    instance: key.to_owned(),
                    reason: failure.reason,
                })
            }
            Progress::Failed(failure) => {
                let digest = revision_digest(&envelope.revisions);
                self.store.clear_rollout(key)?;
                self.store.give_up(key, &digest, &failure.reason)?;
                self.audit(
                    key,
                    AuditKind::Outcome,
                    format!(
                        "group rollout of {group} failed with {}: {}",
                        strategy.label(),
                        failure.reason
                    ),
                    serde_json::json!({ "revisions": envelope.revisions }),
                )?;
                self.conditions(
                    key,
                    &[
                        (
                            ConditionType::Degraded,
                            true,
                            "GroupRolloutFailed",
                            &failure.reason,
                        ),
                        (ConditionType::Progressing, false, "Failed", &failure.reason),
                    ],
                )?;
                Ok((Action::await_change(), Outcome::Degraded))
            }
        }
    }

    /// An operator aborted the group's rollout: its strategy undoes it (possibly over
    /// several calls), then the revision set is given up until a member changes.
    async fn abort_group(
        &self,
        key: &str,
        selection: &Selection,
        members: &[Seen],
        record: &mut RolloutRecord,
        envelope: &mut GroupEnvelope,
        by: &str,
    ) -> Result<(Action, Outcome)> {
        let group = envelope.group.clone();
        let digest = revision_digest(&envelope.revisions);
        if record.phase != RolloutPhase::Aborting {
            record.phase = RolloutPhase::Aborting;
            self.save_group(record, envelope)?;
        }
        let (strategy, progress) = self
            .call_group(key, selection, members, record, envelope, true)
            .await?;
        let message = match progress {
            Err(error) => {
                self.save_group(record, envelope)?;
                return Err(error);
            }
            Ok(Progress::Requeue(requeue)) => {
                envelope.plugin_state = Some(requeue.state);
                record.step += 1;
                self.save_group(record, envelope)?;
                return Ok((
                    Action::requeue(Duration::from_millis(requeue.after_ms)),
                    Outcome::Progressing,
                ));
            }
            Ok(Progress::Done(m)) => m,
            Ok(Progress::AwaitApproval(a)) => a.message,
            Ok(Progress::Failed(f)) => format!("abort failed: {}", f.reason),
        };
        let reason = format!("aborted by {by}: {message}");
        self.store.finish_abort(key, &digest, &reason)?;
        self.audit(
            key,
            AuditKind::Outcome,
            format!("group rollout of {group} {reason} ({})", strategy.label()),
            serde_json::json!({ "revisions": envelope.revisions }),
        )?;
        self.conditions(
            key,
            &[
                (ConditionType::Degraded, true, "Aborted", &reason),
                (ConditionType::Progressing, false, "Aborted", &reason),
                (ConditionType::AwaitingApproval, false, "Aborted", ""),
            ],
        )?;
        Ok((Action::await_change(), Outcome::Degraded))
    }

    /// The keys of the groups named `name`, one per rule that groups instances.
    /// Whether `id` is a member of a group rollout in progress (so a clone it owns, a
    /// surge clone, belongs to that rollout). The group's revision set names its
    /// members from the rollout's first step, before any clone exists.
    pub(super) fn in_group_rollout(&self, id: &str) -> Result<bool> {
        Ok(self.store.rollouts()?.iter().any(|record| {
            parse_group_key(&record.instance_id).is_some()
                && GroupEnvelope::read(record).revisions.contains_key(id)
        }))
    }

    pub fn group_keys_named(&self, name: &str) -> Vec<String> {
        self.policy
            .grouping_rules()
            .map(|rule| group_key(rule, name))
            .collect()
    }

    /// Ask for the group rollout of `key` to be aborted; `false` when none is in flight.
    pub fn request_group_abort(&self, key: &str, by: &str) -> Result<bool> {
        let Some(record) = self.store.load_rollout(key)? else {
            return Ok(false);
        };
        let digest = revision_digest(&GroupEnvelope::read(&record).revisions);
        self.store.request_abort(key, &digest, by)?;
        Ok(true)
    }

    fn save_group(&self, record: &mut RolloutRecord, envelope: &GroupEnvelope) -> Result<()> {
        record.state = serde_json::to_value(envelope).expect("envelope serialises");
        record.updated_at = self.now();
        self.store.save_rollout(record)?;
        Ok(())
    }

    /// Audit the strategy's reported status when it changed: the batches, read back.
    fn audit_group_status(
        &self,
        key: &str,
        before: Option<&Value>,
        envelope: &GroupEnvelope,
    ) -> Result<()> {
        let now = envelope.status();
        if now.is_none() || now.as_ref() == before {
            return Ok(());
        }
        let status = now.expect("checked");
        self.audit(
            key,
            AuditKind::Decision,
            format!(
                "group rollout progress: {}",
                super::rollout::describe_status(&status)
            ),
            status,
        )?;
        Ok(())
    }

    /// The members of group `name` of rule `rule` as they are now, ordered by id, each
    /// observed and judged. Clones are never members.
    async fn group_members(&self, rule: &str, name: &str) -> Result<Vec<Seen>> {
        let mut ids: Vec<String> = self
            .cp
            .list_instances()
            .await?
            .into_iter()
            .filter(|i| !i.metadata.contains_key(super::CLONE_OF_LABEL))
            .filter(|i| {
                let selection = self.policy.select(&Self::facts(i));
                selection.rule_name == rule
                    && selection.group_of(&i.metadata).as_deref() == Some(name)
            })
            .map(|i| i.id)
            .collect();
        ids.sort();
        let mut members = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut observation) = self.observe(&id, false).await? else {
                continue;
            };
            // The group's rollout, not the member's, is in flight: judge by drift.
            observation.rollout = None;
            let judged = self.judge(&observation, false).await?;
            let drifts = match judged.classification {
                decide::Classification::Drifted if !judged.drifts.is_empty() => judged.drifts,
                // Desired but not running, or drifted without a comparison: converge it
                // as a whole.
                decide::Classification::Drifted | decide::Classification::Missing => {
                    vec![whole_document_drift(&observation)]
                }
                // In sync, or left alone as the loop leaves it alone on its own
                // (unwanted, unmanaged, stopped or failed on purpose): nothing to do.
                _ => Vec::new(),
            };
            members.push(Seen {
                observation,
                drifts,
            });
        }
        Ok(members)
    }

    fn group_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.group_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Every group named `name` (for example `app=orders`), one per rule that groups
    /// instances, as [`Controller::group_progress`] shows it.
    pub async fn groups_named(&self, name: &str) -> Result<Vec<Value>> {
        let mut found = Vec::new();
        let rules: Vec<String> = self.policy.grouping_rules().map(str::to_owned).collect();
        for rule in rules {
            if let Some(group) = self.group_progress(&group_key(&rule, name)).await? {
                found.push(group);
            }
        }
        Ok(found)
    }

    /// The group rollout of `key` as the admin API shows it: the strategy, its step, the
    /// status it reports and every member's state.
    pub async fn group_progress(&self, key: &str) -> Result<Option<Value>> {
        let Some((rule, group)) = parse_group_key(key) else {
            return Ok(None);
        };
        let record = self.store.load_rollout(key)?;
        let members = self.group_members(rule, group).await?;
        if record.is_none() && members.is_empty() {
            return Ok(None);
        }
        let envelope = record.as_ref().map(GroupEnvelope::read);
        let member_rows: Vec<Value> = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.observation.instance.id,
                    "name": m.observation.instance.name,
                    "status": m.observation.instance.status,
                    "converged": m.drifts.is_empty(),
                    "drifts": m.drifts.len(),
                })
            })
            .collect();
        Ok(Some(serde_json::json!({
            "key": key,
            "rule": rule,
            "group": group,
            "rollout": record.as_ref().map(|r| serde_json::json!({
                "strategy": format!("{}@{}", r.strategy, r.plugin_version),
                "step": r.step,
                "phase": r.phase.as_str(),
            })),
            "status": envelope.as_ref().and_then(GroupEnvelope::status),
            "members": member_rows,
            "conditions": self.store.conditions(key)?,
        })))
    }
}

/// A drift that stands for "converge this member" when it was not compared (it runs
/// nothing, or failed): the whole document.
fn whole_document_drift(o: &Observation) -> crate::runtime::Drift {
    crate::runtime::Drift {
        path: String::new(),
        kind: crate::runtime::DriftKind::Changed,
        desired: o.desired.as_ref().map(Value::to_string),
        actual: o.actual.as_ref().map(Value::to_string),
        message: format!(
            "{} is {} and does not run its desired configuration",
            o.instance.id,
            match o.instance.status {
                client::InstanceStatus::Stopped => "stopped",
                client::InstanceStatus::Error => "failed",
                _ => "not in sync",
            }
        ),
    }
}

fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Synced => "the group runs its desired configuration",
        Outcome::Progressing => "the group's rollout is under way",
        Outcome::AwaitingApproval => "the group's rollout waits for an operator",
        Outcome::Reported => "drift reported, no action (protected)",
        Outcome::Skipped => "nothing done now",
        Outcome::Degraded => "the group's rollout failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_round_trip_and_instance_ids_are_not_group_keys() {
        let key = group_key("orders", "app=orders,tier=web");
        assert_eq!(key, "group:orders/app=orders,tier=web");
        assert_eq!(
            parse_group_key(&key),
            Some(("orders", "app=orders,tier=web"))
        );
        assert_eq!(parse_group_key("3f2c-instance"), None);
    }

    #[test]
    fn a_revision_set_digest_changes_with_any_member() {
        let mut a = BTreeMap::new();
        a.insert("m1".to_owned(), "d1".to_owned());
        a.insert("m2".to_owned(), "d2".to_owned());
        let mut b = a.clone();
        b.insert("m2".to_owned(), "d3".to_owned());
        assert_ne!(revision_digest(&a), revision_digest(&b));
        assert_eq!(revision_digest(&a), revision_digest(&a.clone()));
        assert_eq!(crate::store::short_digest(&revision_digest(&a)).len(), 12);
    }
}
