//! The decision core: from what was observed of one instance and what the host has
//! recorded about it, what to do now. Pure functions, no I/O: [`Controller::reconcile`]
//! acts on a [`Decision`] and [`Controller::plan`] (`setpoint diff`) prints the same one,
//! so the two cannot disagree.
//!
//! Start at [`classify`] (how the instance relates to its desired state, before any
//! comparator runs), then [`decide`] (rollout records, given-up revisions, abort
//! requests, approvals and the policy's gates → [`Decision`]). [`destructive_paths`] and
//! [`apply_ignored`] are the document rules the gates and the apply step use.
//!
//! [`Controller::reconcile`]: super::Controller::reconcile
//! [`Controller::plan`]: super::Controller::plan

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::ControllerSettings;
use crate::client::InstanceStatus;
use crate::policy::{Approval, Gates};
use crate::store::{AbortRequest, ApprovalRecord, GivenUp, RolloutPhase};

/// How an instance relates to its desired state (Ovi's diff types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Runs what it should.
    InSync,
    /// Desired but not running (created, stopped, failed).
    Missing,
    /// Running something other than its desired configuration.
    Drifted,
    /// Exists in the control plane without a desired configuration: reported only.
    Unwanted,
    /// Runs something other than its desired configuration, and this host never applied
    /// a configuration to it: reported only.
    Unmanaged,
    /// Recorded by this host but unknown to the control plane.
    Orphaned,
    /// Stopped on purpose and left alone (`reconcile_stopped_instances = false`).
    Stopped,
    /// In `Error` and left alone (`reconcile_error_instances = false`).
    Failed,
}

impl Classification {
    /// The name used in metrics, the audit log and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::InSync => "in_sync",
            Classification::Missing => "missing",
            Classification::Drifted => "drifted",
            Classification::Unwanted => "unwanted",
            Classification::Unmanaged => "unmanaged",
            Classification::Orphaned => "orphaned",
            Classification::Stopped => "stopped",
            Classification::Failed => "failed",
        }
    }

    /// Whether the instance is out of its desired state in a way the metrics count
    /// (`setpoint_drift_detected_total`).
    pub fn is_drift(self) -> bool {
        matches!(
            self,
            Classification::Missing
                | Classification::Drifted
                | Classification::Unwanted
                | Classification::Unmanaged
                | Classification::Orphaned
        )
    }
}

/// Where the actual configuration an instance is judged by comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActualSource {
    /// The control plane reports what the instance runs (the reference control plane's
    /// running-configuration extension).
    ControlPlane,
    /// Nothing reports what runs: the host's record of what a strategy last sent stands
    /// in for it, and drift made behind the host's back cannot be seen.
    AppliedRecord,
}

impl ActualSource {
    /// A phrase for status messages: "actual state from …".
    pub fn describe(self) -> &'static str {
        match self {
            ActualSource::ControlPlane => "the control plane's running configuration",
            ActualSource::AppliedRecord => {
                "the host's applied record (the control plane does not report what runs)"
            }
        }
    }
}

/// What [`classify`] needs to know, all of it observed or recorded before.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The instance's lifecycle state.
    pub status: InstanceStatus,
    /// Digest of the desired configuration; `None` when the control plane has none.
    pub desired_digest: Option<&'a str>,
    /// Digest of the actual configuration; `None` when it is unknown or nothing runs.
    pub actual_digest: Option<&'a str>,
    /// Whether this host ever applied a configuration to the instance, or has a rollout
    /// of it, or made a lifecycle call on it whose outcome it does not know.
    pub managed: bool,
    /// Whether the last lifecycle call of this host's strategies on the instance was a
    /// `stop`: a stop of its own is never "left alone".
    pub stopped_by_host: bool,
}

/// [`classify`]'s answer: a classification, or "run the comparator".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Known without a comparator.
    Known(Classification),
    /// The instance runs a configuration other than the desired one byte for byte: the
    /// comparator decides between [`Classification::InSync`] and
    /// [`Classification::Drifted`] (or [`Classification::Unmanaged`] when not managed).
    Compare,
}

/// How the instance relates to its desired state, as far as it can be told without a
/// comparator.
pub fn classify(observed: &Observed<'_>, settings: &ControllerSettings) -> Assessment {
    use Classification as C;
    let Some(desired) = observed.desired_digest else {
        return Assessment::Known(C::Unwanted);
    };
    match observed.status {
        InstanceStatus::Stopped
            if !settings.reconcile_stopped_instances && !observed.stopped_by_host =>
        {
            Assessment::Known(C::Stopped)
        }
        InstanceStatus::Error if !settings.reconcile_error_instances => {
            Assessment::Known(C::Failed)
        }
        InstanceStatus::Created | InstanceStatus::Stopped | InstanceStatus::Error => {
            Assessment::Known(C::Missing)
        }
        InstanceStatus::Running | InstanceStatus::ConfigurationChanged => {
            match observed.actual_digest {
                Some(actual) if actual == desired => Assessment::Known(C::InSync),
                // Running, but nothing says what: never applied here, so not ours to judge.
                None if !observed.managed => Assessment::Known(C::Unmanaged),
                // Running, managed, and what runs is unknown (the control plane lost it):
                // bring it to the desired configuration.
                None => Assessment::Known(C::Missing),
                Some(_) => Assessment::Compare,
            }
        }
    }
}

/// The comparator's verdict turned into a classification.
pub fn judged(drift_count: usize, managed: bool) -> Classification {
    match (drift_count, managed) {
        (0, _) => Classification::InSync,
        (_, true) => Classification::Drifted,
        (_, false) => Classification::Unmanaged,
    }
}

/// The rollout in progress, as [`decide`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct RolloutFacts<'a> {
    /// The desired digest the rollout was started for.
    pub digest: &'a str,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// Unix milliseconds before which the strategy asked not to be stepped.
    pub not_before_ms: Option<u64>,
    /// An operator's promotion of this revision is waiting to be delivered: the
    /// strategy is stepped now, whatever delay it asked for.
    pub promote: bool,
}

/// Everything [`decide`] weighs.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// How the instance relates to its desired state.
    pub classification: Classification,
    /// Digest of the desired configuration (empty when there is none).
    pub desired_digest: &'a str,
    /// The rollout in progress.
    pub rollout: Option<RolloutFacts<'a>>,
    /// An operator's pending abort request.
    pub abort: Option<&'a AbortRequest>,
    /// The revision this host gave up, if any.
    pub given_up: Option<&'a GivenUp>,
    /// The approval request not yet used (pending or approved).
    pub approval: Option<&'a ApprovalRecord>,
    /// The policy's gates for this instance.
    pub gates: &'a Gates,
    /// Paths the change would remove from what the instance runs.
    pub destructive: &'a [String],
    /// Dry-run everything (the global switch).
    pub global_dry_run: bool,
    /// Whether the maintenance window is open now, and if not, how long until it opens.
    pub window_opens_in: Option<Duration>,
    /// Now, in Unix milliseconds.
    pub now_ms: u64,
}

/// What to do about one instance now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// It runs its desired configuration: nothing to do.
    InSync,
    /// Report only, never act (unwanted, unmanaged, stopped or failed left alone).
    Report {
        /// The classification reported.
        classification: Classification,
    },
    /// Drift reported; the rule protects the instance.
    Protected,
    /// The change would remove configuration and the rule skips destructive changes.
    DestructiveSkipped {
        /// What would disappear.
        paths: Vec<String>,
    },
    /// This revision was given up (failed for good or aborted); waits for a new desired
    /// configuration or `setpoint retry`.
    GivenUp {
        /// Why it was given up.
        reason: String,
    },
    /// Outside the maintenance window.
    OutsideWindow {
        /// Until it opens.
        #[serde(rename = "ms", serialize_with = "as_millis")]
        opens_in: Duration,
    },
    /// The rule wants approval before the change is applied and none was given for this
    /// revision.
    AwaitApprovalBeforeApply,
    /// Record the plan, send nothing.
    DryRun,
    /// Start a rollout of the desired revision (an approval for it, if one was needed,
    /// is used).
    StartRollout,
    /// Step the rollout in progress.
    StepRollout {
        /// Whether an approval for the rollout's pause is used.
        approved: bool,
    },
    /// The strategy asked not to be stepped before this much time passes.
    NotYet {
        /// How long to wait.
        #[serde(rename = "ms", serialize_with = "as_millis")]
        wait: Duration,
    },
    /// The rollout is paused for an operator's approval of its revision.
    AwaitApprovalToPromote,
    /// The desired configuration changed mid-rollout: end that rollout (its clones
    /// deleted) and decide again for the new revision.
    Supersede {
        /// The revision the rollout was for.
        from: String,
    },
    /// An operator asked to abort: run the strategy's `abort`.
    Abort,
}

impl Decision {
    /// A short name for audit details, metrics and `setpoint diff`.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::InSync => "in_sync",
            Decision::Report { .. } => "report",
            Decision::Protected => "protected",
            Decision::DestructiveSkipped { .. } => "destructive_skipped",
            Decision::GivenUp { .. } => "given_up",
            Decision::OutsideWindow { .. } => "outside_window",
            Decision::AwaitApprovalBeforeApply => "await_approval_before_apply",
            Decision::DryRun => "dry_run",
            Decision::StartRollout => "start_rollout",
            Decision::StepRollout { .. } => "step_rollout",
            Decision::NotYet { .. } => "not_yet",
            Decision::AwaitApprovalToPromote => "await_approval_to_promote",
            Decision::Supersede { .. } => "supersede",
            Decision::Abort => "abort",
        }
    }
}

/// Decide what to do. The order is the contract:
///
/// 1. A rollout in progress: an abort request wins; then a changed desired
///    configuration supersedes it; then a pause for approval waits for an approval of
///    *its* revision; then the strategy's requested delay; otherwise it is stepped. A
///    rollout runs to its end whatever the instance's classification (a restart stops
///    the instance on purpose).
/// 2. Without one: in sync, or report-only classifications, need nothing.
/// 3. A given-up revision stays given up while the desired configuration is that
///    revision (a stopped or failed instance included: it is not reported left alone).
/// 4. The gates, in order: protected, skip-destructive, maintenance window, approval
///    before apply, dry-run.
/// 5. Otherwise start a rollout.
pub fn decide(facts: &Facts<'_>) -> Decision {
    use Classification as C;
    if let Some(rollout) = facts.rollout {
        if facts.abort.is_some() {
            return Decision::Abort;
        }
        if rollout.digest != facts.desired_digest {
            return Decision::Supersede {
                from: rollout.digest.to_owned(),
            };
        }
        return match rollout.phase {
            RolloutPhase::Aborting => Decision::Abort,
            RolloutPhase::AwaitingApproval => {
                if approved_for(facts.approval, rollout.digest) {
                    Decision::StepRollout { approved: true }
                } else {
                    Decision::AwaitApprovalToPromote
                }
            }
            RolloutPhase::Running => match rollout.not_before_ms {
                Some(at) if at > facts.now_ms && !rollout.promote => Decision::NotYet {
                    wait: Duration::from_millis(at - facts.now_ms),
                },
                _ => Decision::StepRollout { approved: false },
            },
        };
    }
    let given_up = facts
        .given_up
        .filter(|given_up| given_up.digest == facts.desired_digest);
    match facts.classification {
        C::InSync => return Decision::InSync,
        // Stopped or failed with its revision given up: an abort or a rollout that could
        // not bring it back may have left it so; reported given up, not left alone.
        C::Stopped | C::Failed if given_up.is_some() => {}
        C::Unwanted | C::Unmanaged | C::Orphaned | C::Stopped | C::Failed => {
            return Decision::Report {
                classification: facts.classification,
            };
        }
        C::Missing | C::Drifted => {}
    }
    if let Some(given_up) = given_up {
        return Decision::GivenUp {
            reason: given_up.reason.clone(),
        };
    }
    let gates = facts.gates;
    if gates.protected {
        return Decision::Protected;
    }
    if gates.skip_destructive && !facts.destructive.is_empty() {
        return Decision::DestructiveSkipped {
            paths: facts.destructive.to_vec(),
        };
    }
    if let Some(opens_in) = facts.window_opens_in {
        return Decision::OutsideWindow { opens_in };
    }
    let dry_run = gates.dry_run || facts.global_dry_run;
    if gates.approval == Approval::BeforeApply
        && !dry_run
        && !approved_for(facts.approval, facts.desired_digest)
    {
        return Decision::AwaitApprovalBeforeApply;
    }
    if dry_run {
        return Decision::DryRun;
    }
    Decision::StartRollout
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn approved_for(approval: Option<&ApprovalRecord>, digest: &str) -> bool {
    approval.is_some_and(|a| a.is_approved() && a.digest == digest)
}

/// JSON pointers of what `desired` would remove from `actual`: object keys `actual` has
/// and `desired` lacks, and list elements that would disappear (for lists of objects
/// with an `id`, elements whose id is gone; otherwise the tail of a list that shrinks).
/// Judged on the documents by the host, whatever the comparator reports.
pub fn destructive_paths(desired: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_destructive(desired, actual, &mut String::new(), &mut out);
    out
}

fn walk_destructive(desired: &Value, actual: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => {
            for (key, actual_value) in a {
                push_token(path, key);
                match d.get(key) {
                    None => out.push(path.clone()),
                    Some(desired_value) => walk_destructive(desired_value, actual_value, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            let ids = |list: &[Value]| -> Option<Vec<Value>> {
                list.iter().map(|v| v.get("id").cloned()).collect()
            };
            match (ids(d), ids(a)) {
                (Some(desired_ids), Some(actual_ids)) if !a.is_empty() => {
                    for (index, (id, actual_value)) in actual_ids.iter().zip(a).enumerate() {
                        push_token(path, &index.to_string());
                        match desired_ids.iter().position(|d| d == id) {
                            None => out.push(path.clone()),
                            Some(at) => walk_destructive(&d[at], actual_value, path, out),
                        }
                        path.truncate(len);
                    }
                }
                _ => {
                    for (index, actual_value) in a.iter().enumerate() {
                        push_token(path, &index.to_string());
                        match d.get(index) {
                            None => out.push(path.clone()),
                            Some(desired_value) => {
                                walk_destructive(desired_value, actual_value, path, out)
                            }
                        }
                        path.truncate(len);
                    }
                }
            }
        }
        _ => {}
    }
}

fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// What a strategy is given to start: `desired`, except that every path under one of the
/// `ignored` JSON-pointer prefixes keeps the value `actual` has there (or stays absent
/// when `actual` lacks it). Ignoring a field means leaving it as it runs, not only
/// hiding its drift.
pub fn apply_ignored(desired: &Value, actual: Option<&Value>, ignored: &[String]) -> Value {
    let mut out = desired.clone();
    let Some(actual) = actual else {
        return out;
    };
    for pointer in ignored {
        if pointer.is_empty() {
            return actual.clone();
        }
        let running = actual.pointer(pointer).cloned();
        set_pointer(&mut out, pointer, running);
    }
    out
}

/// Set (`Some`) or remove (`None`) the value at `pointer`, creating nothing but the last
/// object key: a path whose parent is absent on the desired side is left alone.
fn set_pointer(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let Some(parent) = doc.pointer_mut(parent) else {
        return;
    };
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(last, v);
        }
        (Value::Object(map), None) => {
            map.remove(&last);
        }
        (Value::Array(list), Some(v)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < list.len()
            {
                list[i] = v;
            }
        }
        (Value::Array(_), None) | (_, _) => {}
    }
}

/// The JSON-pointer prefixes a selection ignores: the comparator parameter `ignore` (a
/// list of strings), which the shipped `field-diff` reads too.
pub fn ignored_paths(comparator_params: &serde_json::Map<String, Value>) -> Vec<String> {
    comparator_params
        .get("ignore")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Unix milliseconds of `at`.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings() -> ControllerSettings {
        ControllerSettings::default()
    }

    fn observed(status: InstanceStatus, actual: Option<&'static str>) -> Observed<'static> {
        Observed {
            status,
            desired_digest: Some("d1"),
            actual_digest: actual,
            managed: true,
            stopped_by_host: false,
        }
    }

    #[test]
    fn classification_follows_status_desired_and_actual() {
        use Classification as C;
        let s = settings();
        let known = |o: Observed<'_>| classify(&o, &s);
        assert_eq!(
            known(observed(InstanceStatus::Running, Some("d1"))),
            Assessment::Known(C::InSync)
        );
        assert_eq!(
            known(observed(InstanceStatus::Running, Some("d0"))),
            Assessment::Compare
        );
        assert_eq!(
            known(observed(InstanceStatus::Created, None)),
            Assessment::Known(C::Missing)
        );
        assert_eq!(
            known(observed(InstanceStatus::Stopped, Some("d1"))),
            Assessment::Known(C::Stopped)
        );
        assert_eq!(
            known(Observed {
                stopped_by_host: true,
                ..observed(InstanceStatus::Stopped, Some("d1"))
            }),
            Assessment::Known(C::Missing),
            "a stop of this host's own is not left alone"
        );
        assert_eq!(
            known(observed(InstanceStatus::Error, None)),
            Assessment::Known(C::Missing)
        );
        assert_eq!(
            known(Observed {
                desired_digest: None,
                ..observed(InstanceStatus::Running, Some("d1"))
            }),
            Assessment::Known(C::Unwanted)
        );
        assert_eq!(
            known(Observed {
                managed: false,
                ..observed(InstanceStatus::Running, None)
            }),
            Assessment::Known(C::Unmanaged)
        );
        // Someone else started it with exactly the desired configuration: in sync.
        assert_eq!(
            known(Observed {
                managed: false,
                ..observed(InstanceStatus::Running, Some("d1"))
            }),
            Assessment::Known(C::InSync)
        );
        let keep_all = ControllerSettings {
            reconcile_stopped_instances: true,
            reconcile_error_instances: false,
            ..settings()
        };
        assert_eq!(
            classify(&observed(InstanceStatus::Stopped, None), &keep_all),
            Assessment::Known(C::Missing)
        );
        assert_eq!(
            classify(&observed(InstanceStatus::Error, None), &keep_all),
            Assessment::Known(C::Failed)
        );
        assert_eq!(judged(0, true), C::InSync);
        assert_eq!(judged(2, true), C::Drifted);
        assert_eq!(judged(2, false), C::Unmanaged);
    }

    fn facts<'a>(classification: Classification, gates: &'a Gates) -> Facts<'a> {
        Facts {
            classification,
            desired_digest: "d2",
            rollout: None,
            abort: None,
            given_up: None,
            approval: None,
            gates,
            destructive: &[],
            global_dry_run: false,
            window_opens_in: None,
            now_ms: 1_000,
        }
    }

    fn approval(digest: &str, approved: bool) -> ApprovalRecord {
        ApprovalRecord {
            id: 1,
            instance_id: "i".into(),
            digest: digest.into(),
            message: String::new(),
            requested_at: SystemTime::UNIX_EPOCH,
            approved_by: approved.then(|| "alice".into()),
            approved_at: approved.then_some(SystemTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_rollout_is_bound_to_its_revision_and_an_abort_wins() {
        let gates = Gates::default();
        let rollout = RolloutFacts {
            digest: "d1",
            phase: RolloutPhase::Running,
            not_before_ms: None,
            promote: false,
        };
        let mut f = facts(Classification::Drifted, &gates);
        f.rollout = Some(rollout);
        assert_eq!(decide(&f), Decision::Supersede { from: "d1".into() });

        let abort = AbortRequest {
            instance_id: "i".into(),
            digest: "d1".into(),
            requested_by: "alice".into(),
            at: SystemTime::UNIX_EPOCH,
            give_up: true,
        };
        f.abort = Some(&abort);
        assert_eq!(decide(&f), Decision::Abort, "abort beats supersede");

        f.abort = None;
        f.rollout = Some(RolloutFacts {
            digest: "d2",
            not_before_ms: Some(1_500),
            ..rollout
        });
        assert_eq!(
            decide(&f),
            Decision::NotYet {
                wait: Duration::from_millis(500)
            }
        );
        // An operator's promotion steps it before the delay it asked for is over.
        f.rollout = Some(RolloutFacts {
            digest: "d2",
            not_before_ms: Some(1_500),
            promote: true,
            ..rollout
        });
        assert_eq!(decide(&f), Decision::StepRollout { approved: false });
        f.now_ms = 2_000;
        assert_eq!(decide(&f), Decision::StepRollout { approved: false });
        // A rollout continues whatever the instance looks like mid-way.
        f.classification = Classification::Stopped;
        assert_eq!(decide(&f), Decision::StepRollout { approved: false });
    }

    #[test]
    fn a_paused_rollout_is_released_only_by_an_approval_of_its_revision() {
        let gates = Gates::default();
        let mut f = facts(Classification::Drifted, &gates);
        f.rollout = Some(RolloutFacts {
            digest: "d2",
            phase: RolloutPhase::AwaitingApproval,
            not_before_ms: None,
            promote: false,
        });
        assert_eq!(decide(&f), Decision::AwaitApprovalToPromote);
        let stale = approval("d1", true);
        f.approval = Some(&stale);
        assert_eq!(decide(&f), Decision::AwaitApprovalToPromote);
        let pending = approval("d2", false);
        f.approval = Some(&pending);
        assert_eq!(decide(&f), Decision::AwaitApprovalToPromote);
        let given = approval("d2", true);
        f.approval = Some(&given);
        assert_eq!(decide(&f), Decision::StepRollout { approved: true });
    }

    #[test]
    fn gates_apply_in_order_and_a_given_up_revision_stays_given_up() {
        let destructive = vec!["/sources/1".to_owned()];
        let protected = Gates {
            protected: true,
            skip_destructive: true,
            approval: Approval::BeforeApply,
            dry_run: false,
            window: None,
        };
        let gates = Gates {
            protected: false,
            ..protected.clone()
        };
        let mut f = facts(Classification::Drifted, &protected);
        f.destructive = &destructive;
        f.window_opens_in = Some(Duration::from_secs(60));
        assert_eq!(decide(&f), Decision::Protected);
        f.gates = &gates;
        assert_eq!(
            decide(&f),
            Decision::DestructiveSkipped {
                paths: destructive.clone()
            }
        );
        f.destructive = &[];
        assert_eq!(
            decide(&f),
            Decision::OutsideWindow {
                opens_in: Duration::from_secs(60)
            }
        );
        f.window_opens_in = None;
        assert_eq!(decide(&f), Decision::AwaitApprovalBeforeApply);
        let stale = approval("d1", true);
        f.approval = Some(&stale);
        assert_eq!(decide(&f), Decision::AwaitApprovalBeforeApply);
        let given = approval("d2", true);
        f.approval = Some(&given);
        assert_eq!(decide(&f), Decision::StartRollout);
        f.global_dry_run = true;
        assert_eq!(decide(&f), Decision::DryRun);
        f.global_dry_run = false;

        let given_up = GivenUp {
            instance_id: "i".into(),
            digest: "d2".into(),
            reason: "aborted".into(),
            at: SystemTime::UNIX_EPOCH,
        };
        f.given_up = Some(&given_up);
        assert_eq!(
            decide(&f),
            Decision::GivenUp {
                reason: "aborted".into()
            }
        );
        f.desired_digest = "d3";
        f.approval = None;
        assert_eq!(decide(&f), Decision::AwaitApprovalBeforeApply);

        for c in [
            Classification::Unwanted,
            Classification::Unmanaged,
            Classification::Stopped,
            Classification::Failed,
        ] {
            assert_eq!(
                decide(&facts(c, &gates)),
                Decision::Report { classification: c }
            );
        }
        assert_eq!(
            decide(&facts(Classification::InSync, &gates)),
            Decision::InSync
        );
        // Stopped or failed with its revision given up (an abort that could not restore
        // it): given up, not left alone.
        for c in [Classification::Stopped, Classification::Failed] {
            let mut f = facts(c, &gates);
            f.given_up = Some(&given_up);
            assert_eq!(
                decide(&f),
                Decision::GivenUp {
                    reason: "aborted".into()
                }
            );
        }
    }

    #[test]
    fn destructive_paths_see_removed_keys_and_shrinking_lists() {
        let actual = json!({
            "host": "h", "logLevel": "info",
            "sources": [{"id": "s1"}, {"id": "s2", "x": 1}],
            "tags": ["a", "b", "c"],
        });
        let desired = json!({
            "host": "h",
            "sources": [{"id": "s2"}],
            "tags": ["a", "b"],
        });
        assert_eq!(
            destructive_paths(&desired, &actual),
            ["/logLevel", "/sources/0", "/sources/1/x", "/tags/2"]
        );
        assert!(destructive_paths(&actual, &actual).is_empty());
        let grows = json!({"host": "h", "logLevel": "debug", "sources": [{"id": "s1"}, {"id": "s2", "x": 2}, {"id": "s3"}], "tags": ["a", "b", "c", "d"]});
        assert!(destructive_paths(&grows, &actual).is_empty());
    }

    #[test]
    fn ignored_paths_keep_the_running_value_in_what_is_applied() {
        let desired = json!({"host": "h", "logLevel": "debug", "port": 1, "extra": {"a": 1}});
        let actual = json!({"host": "h", "logLevel": "info", "port": 2});
        let applied = apply_ignored(
            &desired,
            Some(&actual),
            &["/logLevel".into(), "/extra".into(), "/missing/deep".into()],
        );
        assert_eq!(applied, json!({"host": "h", "logLevel": "info", "port": 1}));
        assert_eq!(
            apply_ignored(&desired, None, &["/logLevel".into()]),
            desired
        );
        assert_eq!(
            ignored_paths(json!({"ignore": ["/logLevel", 3]}).as_object().unwrap()),
            ["/logLevel"]
        );
    }
}
