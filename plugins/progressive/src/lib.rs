//! The clone-based rollout engine that the `blue-green` and `canary` strategies share.
//!
//! A strategy describes its rollout as a [`Plan`] (the steps to walk before promotion,
//! whether to ask before promoting, timings) and hands each `step` and `abort` call to
//! [`step`] and [`abort`]. The engine keeps everything in the rollout's state, so each
//! call does the next bit of work and returns; it never blocks and it measures every wait
//! with `rollout.elapsed_ms`.
//!
//! # The sequence
//!
//! `ID` is the instance, and its endpoint is the one named `ID`. Weights are percentages;
//! only backends with a weight above 0 are sent.
//!
//! 1. **Start** (first step): remember `rollout.actual` as the *previous* configuration;
//!    weights `[ID: 100]` (this creates the endpoint); `clone-instance(ID, desired)`. The
//!    call ends here so the clone's id is saved at once; a replay of this first call
//!    creates another clone and the host's leak sweep deletes the unrecorded one.
//! 2. **Clone starting**: `start(clone)` with the configuration it was created with
//!    (skipped when its runtime status already says `Running`), then `probe-health`
//!    every `health_poll_ms` until healthy, for at most `health_deadline_ms`.
//! 3. **Steps**, in order: `weight w` probes the clone and sets `[ID: 100-w, clone: w]`;
//!    `pause d` waits `d`; `pause approval` returns `await-approval`; `analysis` measures
//!    the clone's error rate ([`setpoint_plugin::analysis`]).
//! 4. **Gate**: `await-approval` before promotion when the plan says so
//!    (`auto_promote: false`) or the policy does (`$approval = "before-promote"`).
//! 5. **Promoting**: probe the clone, weights `[clone: 100]`, wait `drain`.
//! 6. **Converging**: `stop(ID)`, `start(ID, desired)`, wait until `ID` is healthy (at most
//!    `health_deadline_ms`), then weights `[ID: 100]`.
//! 7. **Scaling down**: wait `max(drain, scale_down_delay)`, `delete-clone`, done.
//!
//! `$promote = "step"` ends the wait the rollout is in when the call arrives (a pause,
//! an analysis, an approval, or the gate) and carries on; elsewhere it is ignored.
//! `$promote = "full"` skips every remaining step, pause, analysis and the gate (it is
//! the operator's approval) and promotes as soon as the clone is healthy; once promotion
//! has begun it changes nothing.
//!
//! # Failures
//!
//! - Before `ID` was touched (steps 1–5): weights `[ID: 100]`, `delete-clone`, and
//!   `failed`. Not retryable for a failed or inconclusive analysis and for a control
//!   plane that refuses a call (`denied`, `invalid`, `not-found`); retryable for a clone
//!   that does not become healthy, turns unhealthy or disappears, and for a control plane
//!   that stays unavailable.
//! - After `ID` was touched (steps 6–7: it did not become healthy with the desired
//!   configuration, or a call was refused): the undo sequence below runs first, then the
//!   rollout fails, not retryable, with both reasons.
//! - A call that fails with `unavailable` or `other` is retried every `health_poll_ms`
//!   until it has failed for `health_deadline_ms`, then handled as above.
//!
//! # Undo (abort, and the rollback after a failure)
//!
//! 1. If `ID` was not touched and is healthy: go to 4.
//! 2. Otherwise move traffic off `ID`: if the clone is healthy, weights `[clone: 100]`
//!    and wait `drain` (unless traffic was already all on the clone). Without a healthy
//!    clone, `ID` is restarted in place.
//! 3. `stop(ID)`, `start(ID, previous)`, wait until healthy (at most
//!    `health_deadline_ms`; then the abort fails, retryable).
//! 4. Weights `[ID: 100]`; wait `drain` unless traffic was already all on `ID`;
//!    `delete-clone` (`not-found` counts as deleted); done.
//!
//! Without a previous configuration (`rollout.actual` was `none`) `ID` keeps what it runs:
//! the undo only moves traffic back to it and deletes the clone.
//!
//! # State
//!
//! A JSON object: `status` (the [`RolloutStatus`] the host shows), `previous`, `clone`,
//! `original_touched`, `at` (where the machine is), and a few flags. Every step is safe to
//! replay with the same state: calls repeat harmlessly, and a recorded clone is never
//! created twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use setpoint_plugin::analysis::{AnalysisOutcome, AnalysisRun, AnalysisSpec, Reading};
use setpoint_plugin::serde_json::Value;
use setpoint_plugin::steps::{CanaryStep, Pause};
use setpoint_plugin::{
    BackendWeight, ControlPlane, ControlPlaneError, InstanceStatus, PluginError, Progress, Promote,
    Rollout, RolloutStatus, duration, log,
};

/// How often to probe health while waiting, unless policy says otherwise.
pub const DEFAULT_HEALTH_POLL_MS: u64 = 500;
/// How long to wait for an instance to become healthy, unless policy says otherwise.
pub const DEFAULT_HEALTH_DEADLINE_MS: u64 = 30_000;
/// How long to let in-flight requests finish after moving traffic away from an
/// instance, before stopping or deleting it, unless policy says otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(1);

/// The timing parameters both strategies accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `health_poll_ms`: how often to probe while waiting for health (at least 1 ms).
    pub health_poll: Duration,
    /// `health_deadline_ms`: how long an instance may take to become healthy.
    pub health_deadline: Duration,
    /// `drain`: the wait after moving traffic away from an instance.
    pub drain: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            health_poll: Duration::from_millis(DEFAULT_HEALTH_POLL_MS),
            health_deadline: Duration::from_millis(DEFAULT_HEALTH_DEADLINE_MS),
            drain: DEFAULT_DRAIN,
        }
    }
}

impl Timing {
    /// The parameter names [`Timing::parse`] reads.
    pub const KEYS: [&'static str; 3] = ["health_poll_ms", "health_deadline_ms", "drain"];

    /// Read `health_poll_ms` (default 500, at least 1), `health_deadline_ms` (default
    /// 30000) and `drain` (a duration, default `"1s"`).
    pub fn parse(rollout: &Rollout) -> Result<Self, PluginError> {
        let health_poll_ms: u64 = rollout.param_or("health_poll_ms", DEFAULT_HEALTH_POLL_MS)?;
        if health_poll_ms == 0 {
            return Err(PluginError::invalid_params(
                "parameter `health_poll_ms` must be at least 1",
            ));
        }
        let health_deadline_ms: u64 =
            rollout.param_or("health_deadline_ms", DEFAULT_HEALTH_DEADLINE_MS)?;
        Ok(Self {
            health_poll: Duration::from_millis(health_poll_ms),
            health_deadline: Duration::from_millis(health_deadline_ms),
            drain: rollout.duration_param_or("drain", DEFAULT_DRAIN)?,
        })
    }
}

/// What a strategy asks of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The strategy's name, for the status object and messages.
    pub strategy: &'static str,
    /// The status phase before promotion (`preview` for blue-green, `canary`).
    pub before_phase: &'static str,
    /// The steps to walk once the clone is healthy, before the gate.
    pub steps: Vec<CanaryStep>,
    /// Whether the status shows `step`/`steps` (a canary's list; blue-green has none).
    pub numbered_steps: bool,
    /// Promote without asking (`auto_promote`); the policy's `before-promote` asks anyway.
    pub auto_promote: bool,
    /// Health polling, deadline and drain.
    pub timing: Timing,
    /// How long the clone is kept after traffic is back on the instance.
    pub scale_down_delay: Duration,
}

impl Plan {
    /// A plan without steps, asking nothing, with `timing`: what `abort` needs when the
    /// params no longer parse.
    pub fn fallback(strategy: &'static str, before_phase: &'static str, timing: Timing) -> Self {
        Self {
            strategy,
            before_phase,
            steps: Vec::new(),
            numbered_steps: false,
            auto_promote: true,
            timing,
            scale_down_delay: Duration::ZERO,
        }
    }
}

/// The `auto_promote` parameter (a boolean, default true).
pub fn auto_promote(rollout: &Rollout) -> Result<bool, PluginError> {
    rollout.param_or("auto_promote", true)
}

/// Where the machine is. Serialised under the state's `at` key, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
enum At {
    /// The clone was created; start it.
    CloneCreated,
    /// The clone was started at `since_ms`; wait until it is healthy.
    CloneStarting { since_ms: u64 },
    /// Walking the plan's steps; `index` is the current one, entered at `entered_ms`.
    Steps {
        index: usize,
        entered_ms: u64,
        /// A `pause approval` step asked already: being called again means approved.
        #[serde(default)]
        asked: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<Box<AnalysisRun>>,
    },
    /// Before promotion; `asked`: the approval was asked for already.
    Gate { asked: bool },
    /// Switch all traffic to the clone.
    Promote,
    /// All traffic went to the clone at `since_ms`; drain, then restart the instance.
    Promoting { since_ms: u64 },
    /// The instance was restarted with the desired configuration at `since_ms`.
    Converging { since_ms: u64 },
    /// Traffic went back to the instance at `since_ms`; delete the clone after the delay.
    ScalingDown { since_ms: u64 },
    /// Undo: decide whether the instance needs restarting with its previous configuration.
    UndoCheck,
    /// Undo: move traffic off the instance before restarting it.
    UndoMoveAway,
    /// Undo: traffic went to the clone at `since_ms`; drain.
    UndoDrainBeforeRestart { since_ms: u64 },
    /// Undo: restart the instance with its previous configuration.
    UndoRestart,
    /// Undo: the instance was restarted with its previous configuration at `since_ms`.
    UndoRestarting { since_ms: u64 },
    /// Undo: all traffic back to the instance.
    UndoReturn,
    /// Undo: traffic went back to the instance at `since_ms`; drain, then delete.
    UndoDraining { since_ms: u64 },
    /// Undo: delete the clone.
    UndoDelete,
}

impl At {
    fn is_undo(&self) -> bool {
        matches!(
            self,
            Self::UndoCheck
                | Self::UndoMoveAway
                | Self::UndoDrainBeforeRestart { .. }
                | Self::UndoRestart
                | Self::UndoRestarting { .. }
                | Self::UndoReturn
                | Self::UndoDraining { .. }
                | Self::UndoDelete
        )
    }

    /// Before promotion began: a failure there only needs the clone cleaned up.
    fn before_promotion(&self) -> bool {
        matches!(
            self,
            Self::CloneCreated
                | Self::CloneStarting { .. }
                | Self::Steps { .. }
                | Self::Gate { .. }
        )
    }

    /// The wait a `$promote = "step"` ends, identified: the step index, or `usize::MAX`
    /// for the gate.
    fn promotable_wait(&self) -> Option<usize> {
        match self {
            Self::Steps { index, .. } => Some(*index),
            Self::Gate { .. } => Some(usize::MAX),
            _ => None,
        }
    }
}

/// The engine's state, the JSON the host keeps between calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// What the host shows.
    status: RolloutStatus,
    /// What the instance ran before the rollout (`rollout.actual` at the first step).
    previous: Option<Value>,
    /// The clone, from right after `clone-instance` returned until it is deleted.
    clone: Option<String>,
    /// Whether the instance was stopped or started by this rollout (it may no longer run
    /// the previous configuration).
    #[serde(default)]
    original_touched: bool,
    /// Where the machine is.
    at: At,
    /// An operator asked for full promotion while the clone was not healthy yet.
    #[serde(default)]
    promote_full: bool,
    /// Since when calls have been failing with transient errors (`elapsed_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_since_ms: Option<u64>,
    /// Why the rollout is being rolled back (the undo was started by a failure, not by
    /// the host's abort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_reason: Option<String>,
}

/// A control-plane call that failed.
#[derive(Debug)]
struct Fault {
    action: String,
    error: ControlPlaneError,
}

impl Fault {
    fn transient(&self) -> bool {
        matches!(
            self.error,
            ControlPlaneError::Unavailable(_) | ControlPlaneError::Other(_)
        )
    }

    fn describe(&self) -> String {
        format!("{} failed: {}", self.action, self.error)
    }
}

fn fault(action: impl Into<String>) -> impl FnOnce(ControlPlaneError) -> Fault {
    let action = action.into();
    move |error| Fault { action, error }
}

/// How a call ends, before the state is written into it.
#[derive(Debug)]
enum Exit {
    /// Requeue after `after`, waiting for `message`; `paused`: on purpose (a pause, a
    /// configured delay).
    Requeue {
        after: Duration,
        message: String,
        paused: bool,
    },
    /// Ask for an operator's approval.
    Approval(String),
    /// Done.
    Done(String),
    /// Failed.
    Failed { reason: String, retryable: bool },
}

fn requeue(after: Duration, message: String, paused: bool) -> Exit {
    Exit::Requeue {
        after,
        message,
        paused,
    }
}

/// What a health probe saw.
#[derive(Debug)]
enum Seen {
    Healthy,
    Unhealthy(String),
    Gone,
}

/// Which export the call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Step,
    Abort,
}

/// Take the next step of a rollout under `plan` (a strategy's `step`).
pub fn step(plan: &Plan, rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
    let state = match rollout.state::<State>() {
        Ok(state) => state,
        Err(error) => return error.into(),
    };
    let mut machine = Machine {
        plan,
        rollout,
        cp,
        now: rollout.elapsed_ms(),
        id: rollout.instance_id(),
    };
    match state {
        None => machine.begin(),
        Some(state) => machine.run(state, Entry::Step),
    }
}

/// Undo a rollout from the state of its last step (a strategy's `abort`). `plan` gives
/// the timings (and the strategy's name); its steps are not used.
pub fn abort(plan: &Plan, rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
    let mut state = match rollout.state::<State>() {
        Ok(Some(state)) => state,
        Ok(None) => {
            return Progress::done(format!(
                "nothing to undo: the rollout of {} had not started",
                rollout.instance_id()
            ));
        }
        Err(error) => return error.into(),
    };
    if !state.at.is_undo() {
        log::info(&format!(
            "abort: undoing the rollout of {} from {:?}",
            rollout.instance_id(),
            state.at
        ));
        state.at = At::UndoCheck;
        state.error_since_ms = None;
    } else if rollout.undo_again() {
        // The undo failed (the instance did not come back healthy in time) and the host
        // asks again: start it over, so the instance is restarted, rather than report
        // the same expired wait.
        log::info(&format!(
            "abort: undoing the rollout of {} again from {:?}",
            rollout.instance_id(),
            state.at
        ));
        state.at = At::UndoCheck;
        state.error_since_ms = None;
    }
    let mut machine = Machine {
        plan,
        rollout,
        cp,
        now: rollout.elapsed_ms(),
        id: rollout.instance_id(),
    };
    machine.run(state, Entry::Abort)
}

/// The weights of a split: only backends with a weight above 0.
fn split(original: &str, clone: &str, clone_weight: u32) -> Vec<BackendWeight> {
    let clone_weight = clone_weight.min(100);
    [
        BackendWeight::new(original, 100 - clone_weight),
        BackendWeight::new(clone, clone_weight),
    ]
    .into_iter()
    .filter(|w| w.weight > 0)
    .collect()
}

fn all_to(instance: &str) -> Vec<BackendWeight> {
    vec![BackendWeight::new(instance, 100)]
}

/// What is left of `wait` that started at `since_ms`, at `now_ms`; `None` when over.
fn left(wait: Duration, since_ms: u64, now_ms: u64) -> Option<Duration> {
    let end = since_ms.saturating_add(duration::as_millis(wait));
    (now_ms < end).then(|| Duration::from_millis(end - now_ms))
}

struct Machine<'a> {
    plan: &'a Plan,
    rollout: &'a Rollout,
    cp: &'a mut dyn ControlPlane,
    now: u64,
    id: &'a str,
}

impl Machine<'_> {
    /// The first step: remember what runs, endpoint to the instance, create the clone.
    fn begin(&mut self) -> Progress {
        let id = self.id;
        let weights = all_to(id);
        if let Err(e) = self.cp.set_traffic_weights(id, &weights) {
            let f = Fault {
                action: format!("setting the weights of endpoint {id} to 100 % {id}"),
                error: e,
            };
            log::error(&f.describe());
            return Progress::failed(f.describe(), f.transient());
        }
        let clone = match self.cp.clone_instance(id, self.rollout.desired()) {
            Ok(clone) => clone,
            Err(e) => {
                let f = Fault {
                    action: format!("cloning {id} with the desired configuration"),
                    error: e,
                };
                log::error(&f.describe());
                return Progress::failed(f.describe(), f.transient());
            }
        };
        log::info(&format!(
            "created clone {clone} of {id} with the desired configuration"
        ));
        let mut status = RolloutStatus::new(self.plan.strategy, self.plan.before_phase);
        status.weights = weights;
        let state = State {
            status,
            previous: self.rollout.actual().cloned(),
            clone: Some(clone.clone()),
            original_touched: false,
            at: At::CloneCreated,
            promote_full: self.rollout.promote() == Some(Promote::Full),
            error_since_ms: None,
            rollback_reason: None,
        };
        // End the call here: the clone's id is saved before anything else happens.
        self.finish(
            state,
            requeue(
                Duration::ZERO,
                format!("clone {clone} to be started"),
                false,
            ),
        )
    }

    /// Run the machine from `st` until it has to wait or it ends.
    fn run(&mut self, mut st: State, entry: Entry) -> Progress {
        let promote = if entry == Entry::Step {
            self.rollout.promote()
        } else {
            None
        };
        // `$promote = "step"` ends the wait this call arrives in, and only that one.
        let promote_step_wait = if promote == Some(Promote::Step) {
            st.at.promotable_wait()
        } else {
            None
        };
        match promote {
            Some(Promote::Full) if st.at.before_promotion() => {
                log::info(&format!(
                    "promote (full): skipping the remaining steps of {}",
                    self.id
                ));
                st.promote_full = true;
            }
            Some(Promote::Step) if promote_step_wait.is_some() => {
                log::info(&format!(
                    "promote (step): ending the current wait of {}",
                    self.id
                ));
            }
            Some(p) => log::warn(&format!(
                "promote ({}) ignored: the rollout of {} is not waiting in a step ({:?})",
                p.as_str(),
                self.id,
                st.at
            )),
            None => {}
        }
        if entry == Entry::Step && st.at.is_undo() && st.rollback_reason.is_none() {
            st.rollback_reason = Some("the rollout was being aborted".to_owned());
        }
        loop {
            let result = match st.at.clone() {
                At::CloneCreated => self.clone_created(&mut st),
                At::CloneStarting { since_ms } => self.clone_starting(&mut st, since_ms),
                At::Steps {
                    index,
                    entered_ms,
                    asked,
                    analysis,
                } => self.steps(
                    &mut st,
                    index,
                    entered_ms,
                    asked,
                    analysis,
                    promote_step_wait == Some(index),
                ),
                At::Gate { asked } => {
                    self.gate(&mut st, asked, promote_step_wait == Some(usize::MAX))
                }
                At::Promote => self.promote(&mut st),
                At::Promoting { since_ms } => self.promoting(&mut st, since_ms),
                At::Converging { since_ms } => self.converging(&mut st, since_ms),
                At::ScalingDown { since_ms } => self.scaling_down(&mut st, since_ms),
                At::UndoCheck => self.undo_check(&mut st),
                At::UndoMoveAway => self.undo_move_away(&mut st),
                At::UndoDrainBeforeRestart { since_ms } => {
                    Ok(match left(self.plan.timing.drain, since_ms, self.now) {
                        Some(after) => Some(requeue(
                            after,
                            format!(
                                "drain: in-flight requests to {} finish before it restarts with its previous configuration ({} left)",
                                self.id,
                                duration::format(after)
                            ),
                            false,
                        )),
                        None => {
                            st.at = At::UndoRestart;
                            None
                        }
                    })
                }
                At::UndoRestart => self.undo_restart(&mut st),
                At::UndoRestarting { since_ms } => self.undo_restarting(&mut st, since_ms),
                At::UndoReturn => self.undo_return(&mut st),
                At::UndoDraining { since_ms } => {
                    Ok(match left(self.plan.timing.drain, since_ms, self.now) {
                        Some(after) => Some(requeue(
                            after,
                            format!(
                                "drain: in-flight requests to the clone finish before it is deleted ({} left)",
                                duration::format(after)
                            ),
                            false,
                        )),
                        None => {
                            st.at = At::UndoDelete;
                            None
                        }
                    })
                }
                At::UndoDelete => Ok(Some(self.undo_delete(&mut st, entry))),
            };
            match result {
                Ok(None) => {}
                Ok(Some(exit)) => {
                    st.error_since_ms = None;
                    return self.finish(st, exit);
                }
                Err(fault) => {
                    if let Some(exit) = self.on_fault(&mut st, fault) {
                        return self.finish(st, exit);
                    }
                }
            }
        }
    }

    /// A control-plane call failed: retry a transient failure for a while, clean up
    /// before promotion, roll back after it, or fail the undo.
    fn on_fault(&mut self, st: &mut State, fault: Fault) -> Option<Exit> {
        let timing = self.plan.timing;
        let mut reason = fault.describe();
        log::warn(&reason);
        if fault.transient() {
            let since = *st.error_since_ms.get_or_insert(self.now);
            if left(timing.health_deadline, since, self.now).is_some() {
                return Some(requeue(
                    timing.health_poll,
                    format!("retrying after: {reason}"),
                    false,
                ));
            }
            reason = format!(
                "{reason} (failing for {} ms, health_deadline_ms = {} ms)",
                self.now - since,
                duration::as_millis(timing.health_deadline)
            );
        }
        st.error_since_ms = None;
        if st.at.is_undo() {
            return Some(Exit::Failed {
                reason: format!("abort: {reason}"),
                retryable: fault.transient(),
            });
        }
        if !st.original_touched {
            return Some(self.fail_before_touch(st, reason, fault.transient()));
        }
        log::error(&format!(
            "{reason}; rolling {} back to its previous configuration",
            self.id
        ));
        st.rollback_reason = Some(reason);
        st.at = At::UndoCheck;
        None
    }

    /// Write `exit` as the call's progress, with the status brought up to date.
    fn finish(&mut self, mut st: State, exit: Exit) -> Progress {
        let plan = self.plan;
        st.status.strategy = plan.strategy.to_owned();
        st.status.clone.clone_from(&st.clone);
        st.status.phase = match &st.at {
            At::CloneCreated | At::CloneStarting { .. } | At::Steps { .. } | At::Gate { .. } => {
                plan.before_phase
            }
            At::Promote | At::Promoting { .. } => "promoting",
            At::Converging { .. } => "converging",
            At::ScalingDown { .. } => "scaling-down",
            _ => "aborting",
        }
        .to_owned();
        let steps = u32::try_from(plan.steps.len()).unwrap_or(u32::MAX);
        st.status.steps = plan.numbered_steps.then_some(steps);
        st.status.step = match &st.at {
            At::Steps { index, .. } if plan.numbered_steps && *index < plan.steps.len() => {
                u32::try_from(index + 1).ok()
            }
            _ => None,
        };
        if !matches!(st.at, At::Steps { .. } | At::Gate { .. }) {
            st.status.analysis = None;
        }
        match exit {
            Exit::Requeue {
                after,
                message,
                paused,
            } => {
                st.status.paused = paused;
                st.status.waiting_for = Some(message.clone());
                Progress::requeue(after, &st, message)
            }
            Exit::Approval(message) => {
                st.status.paused = true;
                st.status.waiting_for = Some(format!("approval: {message}"));
                Progress::await_approval(&st, message)
            }
            Exit::Done(message) => {
                log::info(&message);
                Progress::done(message)
            }
            Exit::Failed { reason, retryable } => {
                log::error(&reason);
                Progress::failed(reason, retryable)
            }
        }
    }

    fn clone_id(st: &State) -> Result<String, Fault> {
        st.clone.clone().ok_or_else(|| Fault {
            action: "reading the rollout state".to_owned(),
            error: ControlPlaneError::Invalid("the state names no clone".to_owned()),
        })
    }

    /// Probe `instance`; a control plane without probes answers with the runtime status.
    fn health(&mut self, instance: &str) -> Result<Seen, Fault> {
        match self.cp.probe_health(instance) {
            Ok(h) if h.healthy => Ok(Seen::Healthy),
            Ok(h) => Ok(Seen::Unhealthy(h.detail)),
            Err(ControlPlaneError::NotFound(_)) => Ok(Seen::Gone),
            Err(ControlPlaneError::Unavailable(why)) => {
                match self.cp.get_runtime_status(instance) {
                    Ok(s) if s.status == InstanceStatus::Running => Ok(Seen::Healthy),
                    Ok(s) => Ok(Seen::Unhealthy(format!(
                        "no health probe ({why}); status {}",
                        s.status
                    ))),
                    Err(ControlPlaneError::NotFound(_)) => Ok(Seen::Gone),
                    Err(e) => Ok(Seen::Unhealthy(format!(
                        "no health probe ({why}); status unknown: {e}"
                    ))),
                }
            }
            Err(ControlPlaneError::Other(why)) => {
                Ok(Seen::Unhealthy(format!("probe failed: {why}")))
            }
            Err(error) => Err(Fault {
                action: format!("probing the health of {instance}"),
                error,
            }),
        }
    }

    /// The instance's own health: gone is a fault, not a state.
    fn original_health(&mut self) -> Result<Result<(), String>, Fault> {
        match self.health(self.id)? {
            Seen::Healthy => Ok(Ok(())),
            Seen::Unhealthy(seen) => Ok(Err(seen)),
            Seen::Gone => Err(Fault {
                action: format!("probing the health of {}", self.id),
                error: ControlPlaneError::NotFound(format!("instance {}", self.id)),
            }),
        }
    }

    fn set_weights(&mut self, st: &mut State, weights: Vec<BackendWeight>) -> Result<(), Fault> {
        let id = self.id;
        let text: Vec<String> = weights
            .iter()
            .map(|w| format!("{} {} %", w.instance_id, w.weight))
            .collect();
        let text = text.join(", ");
        self.cp
            .set_traffic_weights(id, &weights)
            .map_err(fault(format!(
                "setting the weights of endpoint {id} to {text}"
            )))?;
        log::info(&format!("endpoint {id}: {text}"));
        st.status.weights = weights;
        Ok(())
    }

    /// Before the instance was touched: traffic back to it, the clone deleted, failed.
    fn fail_before_touch(&mut self, st: &mut State, reason: String, retryable: bool) -> Exit {
        let id = self.id;
        let mut notes = Vec::new();
        if st.status.weights != all_to(id)
            && let Err(e) = self.cp.set_traffic_weights(id, &all_to(id))
        {
            notes.push(format!(
                "setting endpoint {id} back to 100 % {id} failed: {e}"
            ));
        }
        if let Some(clone) = st.clone.take() {
            match self.cp.delete_clone(&clone) {
                Ok(()) | Err(ControlPlaneError::NotFound(_)) => {
                    log::info(&format!("deleted clone {clone}"));
                }
                Err(e) => notes.push(format!(
                    "deleting clone {clone} failed ({e}); the host's leak sweep deletes it"
                )),
            }
        }
        let reason = if notes.is_empty() {
            reason
        } else {
            format!("{reason} (cleaning up: {})", notes.join("; "))
        };
        Exit::Failed { reason, retryable }
    }

    fn clone_created(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        let clone = Self::clone_id(st)?;
        // Started by an earlier attempt of this call (replayed after a crash)? Any other
        // answer, including none (a clone dry-run only pretends to make is unknown to the
        // control plane), means start it.
        let running = matches!(
            self.cp.get_runtime_status(&clone),
            Ok(s) if s.status == InstanceStatus::Running
        );
        if !running {
            match self.cp.start(&clone, None) {
                Ok(()) => log::info(&format!("started clone {clone}")),
                Err(ControlPlaneError::NotFound(_)) => {
                    return Ok(Some(self.fail_before_touch(
                        st,
                        format!("clone {clone} disappeared before it was started"),
                        true,
                    )));
                }
                Err(e) => return Err(fault(format!("starting clone {clone}"))(e)),
            }
        }
        st.at = At::CloneStarting { since_ms: self.now };
        Ok(Some(requeue(
            self.plan.timing.health_poll,
            format!("clone {clone} to become healthy"),
            false,
        )))
    }

    fn clone_starting(&mut self, st: &mut State, since_ms: u64) -> Result<Option<Exit>, Fault> {
        let clone = Self::clone_id(st)?;
        let timing = self.plan.timing;
        match self.health(&clone)? {
            Seen::Healthy => {
                log::info(&format!("clone {clone} is healthy"));
                st.at = if st.promote_full {
                    At::Promote
                } else {
                    At::Steps {
                        index: 0,
                        entered_ms: self.now,
                        asked: false,
                        analysis: None,
                    }
                };
                Ok(None)
            }
            Seen::Gone => Ok(Some(self.fail_before_touch(
                st,
                format!("clone {clone} disappeared before it became healthy"),
                true,
            ))),
            Seen::Unhealthy(seen) => {
                if left(timing.health_deadline, since_ms, self.now).is_none() {
                    return Ok(Some(self.fail_before_touch(
                        st,
                        format!(
                            "clone {clone} did not become healthy within health_deadline_ms = {} ms (last probe: {seen})",
                            duration::as_millis(timing.health_deadline)
                        ),
                        true,
                    )));
                }
                Ok(Some(requeue(
                    timing.health_poll,
                    format!("clone {clone} to become healthy ({seen})"),
                    false,
                )))
            }
        }
    }

    /// On to the step after `index`. The status keeps the figures of an analysis that
    /// ended until the next one starts, so its verdict is shown (and audited).
    fn advance(&self, st: &mut State, index: usize) -> Result<Option<Exit>, Fault> {
        st.at = At::Steps {
            index: index + 1,
            entered_ms: self.now,
            asked: false,
            analysis: None,
        };
        Ok(None)
    }

    fn steps(
        &mut self,
        st: &mut State,
        index: usize,
        entered_ms: u64,
        asked: bool,
        analysis: Option<Box<AnalysisRun>>,
        promoted: bool,
    ) -> Result<Option<Exit>, Fault> {
        if st.promote_full {
            st.at = At::Promote;
            return Ok(None);
        }
        let plan = self.plan;
        let Some(step) = plan.steps.get(index) else {
            st.at = At::Gate { asked: false };
            return Ok(None);
        };
        let clone = Self::clone_id(st)?;
        let id = self.id;
        let number = index + 1;
        let of = plan.steps.len();
        match step {
            CanaryStep::Weight(w) => {
                if *w > 0 {
                    match self.health(&clone)? {
                        Seen::Healthy => {}
                        Seen::Unhealthy(seen) => {
                            return Ok(Some(self.fail_before_touch(
                                st,
                                format!(
                                    "clone {clone} is unhealthy at step {number} of {of} (weight {w} %): {seen}"
                                ),
                                true,
                            )));
                        }
                        Seen::Gone => {
                            return Ok(Some(self.fail_before_touch(
                                st,
                                format!("clone {clone} disappeared at step {number} of {of}"),
                                true,
                            )));
                        }
                    }
                }
                self.set_weights(st, split(id, &clone, *w))?;
                self.advance(st, index)
            }
            CanaryStep::Pause(Pause::For(wait)) => {
                if promoted {
                    return self.advance(st, index);
                }
                match left(*wait, entered_ms, self.now) {
                    None => self.advance(st, index),
                    Some(after) => Ok(Some(requeue(
                        after,
                        format!(
                            "pause {} at step {number} of {of} ({} left)",
                            duration::format(*wait),
                            duration::format(after)
                        ),
                        true,
                    ))),
                }
            }
            CanaryStep::Pause(Pause::Approval) => {
                if asked || promoted {
                    log::info(&format!("step {number} of {of} approved"));
                    return self.advance(st, index);
                }
                st.at = At::Steps {
                    index,
                    entered_ms,
                    asked: true,
                    analysis: None,
                };
                Ok(Some(Exit::Approval(format!(
                    "continue the {} of {id} past step {number} of {of} (traffic now: {})",
                    plan.strategy,
                    describe_weights(&st.status.weights)
                ))))
            }
            CanaryStep::Analysis(spec) => {
                if promoted {
                    // Ended by an operator before it concluded: no verdict to show.
                    st.status.analysis = None;
                    return self.advance(st, index);
                }
                let mut run = analysis.unwrap_or_default();
                if let Some(after) = run.due_in(spec, self.now) {
                    st.status.analysis = Some(run.figures(spec));
                    let message = run.waiting_for(spec, self.now);
                    st.at = At::Steps {
                        index,
                        entered_ms,
                        asked,
                        analysis: Some(run),
                    };
                    return Ok(Some(requeue(after, message, false)));
                }
                let outcome = if let Some(check) = &spec.query {
                    // The first call only starts the interval: nothing to ask yet.
                    let value = if run.started() {
                        match self.cp.query(&check.name, &clone) {
                            Ok(value) => Ok(value),
                            // A name policy does not define never starts answering:
                            // fail now instead of after `inconclusive_limit` intervals.
                            Err(ControlPlaneError::NotFound(e)) => {
                                return Ok(Some(self.fail_before_touch(
                                    st,
                                    format!(
                                        "analysis at step {number} of {of} cannot run: query `{}` for clone {clone}: {e} (is it defined under [metrics.queries]?)",
                                        check.name
                                    ),
                                    false,
                                )));
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    } else {
                        Ok(None)
                    };
                    run.observe_query(spec, self.now, value)
                } else {
                    let reading = match self.read(spec, &clone) {
                        Some(reading) => reading,
                        None => {
                            return Ok(Some(self.fail_before_touch(
                                st,
                                format!("clone {clone} disappeared during the analysis at step {number} of {of}"),
                                true,
                            )));
                        }
                    };
                    run.observe(spec, self.now, reading)
                };
                st.status.analysis = Some(run.figures(spec));
                match outcome {
                    AnalysisOutcome::Continue { after } => {
                        let message = run.waiting_for(spec, self.now);
                        st.at = At::Steps {
                            index,
                            entered_ms,
                            asked,
                            analysis: Some(run),
                        };
                        Ok(Some(requeue(after, message, false)))
                    }
                    AnalysisOutcome::Passed => {
                        if let Some(last) = &run.last {
                            log::info(&format!(
                                "analysis at step {number} of {of} passed: {}",
                                last.summary
                            ));
                        }
                        self.advance(st, index)
                    }
                    AnalysisOutcome::Failed { reason, .. } => {
                        Ok(Some(self.fail_before_touch(st, reason, false)))
                    }
                }
            }
        }
    }

    /// Read the counters an analysis needs; `None` when the clone is gone.
    fn read(&mut self, spec: &AnalysisSpec, clone: &str) -> Option<Result<Reading, String>> {
        let clone_metrics = match self.cp.get_counters(clone) {
            Ok(m) => m,
            Err(ControlPlaneError::NotFound(_)) => return None,
            Err(e) => return Some(Err(format!("clone {clone}: {e}"))),
        };
        let original = if spec.compare_with_original {
            match self.cp.get_counters(self.id) {
                Ok(m) => Some(m),
                Err(e) => return Some(Err(format!("{}: {e}", self.id))),
            }
        } else {
            None
        };
        Some(Ok(Reading {
            clone: clone_metrics,
            original,
        }))
    }

    fn gate(&mut self, st: &mut State, asked: bool, promoted: bool) -> Result<Option<Exit>, Fault> {
        let needs = !self.plan.auto_promote || self.rollout.approval_before_promote();
        if st.promote_full || asked || promoted || !needs {
            if asked || promoted {
                log::info(&format!("promotion of {} approved", self.id));
            }
            st.at = At::Promote;
            return Ok(None);
        }
        let clone = Self::clone_id(st)?;
        st.at = At::Gate { asked: true };
        Ok(Some(Exit::Approval(format!(
            "promote the desired configuration of {id}: all traffic to clone {clone}, then {id} restarts with it",
            id = self.id
        ))))
    }

    fn promote(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        let clone = Self::clone_id(st)?;
        match self.health(&clone)? {
            Seen::Healthy => {}
            Seen::Unhealthy(seen) => {
                return Ok(Some(self.fail_before_touch(
                    st,
                    format!("clone {clone} is unhealthy at promotion: {seen}"),
                    true,
                )));
            }
            Seen::Gone => {
                return Ok(Some(self.fail_before_touch(
                    st,
                    format!("clone {clone} disappeared before promotion"),
                    true,
                )));
            }
        }
        self.set_weights(st, all_to(&clone))?;
        st.at = At::Promoting { since_ms: self.now };
        Ok(None)
    }

    fn promoting(&mut self, st: &mut State, since_ms: u64) -> Result<Option<Exit>, Fault> {
        let id = self.id;
        if let Some(after) = left(self.plan.timing.drain, since_ms, self.now) {
            return Ok(Some(requeue(
                after,
                format!(
                    "drain: in-flight requests to {id} finish before it restarts ({} left)",
                    duration::format(after)
                ),
                false,
            )));
        }
        let desired = self.rollout.desired().clone();
        self.restart_original(st, &desired, "the desired configuration")?;
        st.at = At::Converging { since_ms: self.now };
        Ok(Some(self.await_original("the desired configuration")))
    }

    /// Stop the instance and start it with `configuration` (`which`, for people): the
    /// one place the instance itself is restarted, forward or back.
    fn restart_original(
        &mut self,
        st: &mut State,
        configuration: &Value,
        which: &str,
    ) -> Result<(), Fault> {
        let id = self.id;
        st.original_touched = true;
        self.cp.stop(id).map_err(fault(format!("stopping {id}")))?;
        self.cp
            .start(id, Some(configuration))
            .map_err(fault(format!("starting {id} with {which}")))?;
        log::info(&format!("restarted {id} with {which}"));
        Ok(())
    }

    /// The wait after [`Self::restart_original`]: the next health probe.
    fn await_original(&self, which: &str) -> Exit {
        requeue(
            self.plan.timing.health_poll,
            format!("{} to become healthy with {which}", self.id),
            false,
        )
    }

    fn converging(&mut self, st: &mut State, since_ms: u64) -> Result<Option<Exit>, Fault> {
        let id = self.id;
        let timing = self.plan.timing;
        match self.original_health()? {
            Ok(()) => {
                self.set_weights(st, all_to(id))?;
                st.at = At::ScalingDown { since_ms: self.now };
                Ok(None)
            }
            Err(seen) if left(timing.health_deadline, since_ms, self.now).is_none() => {
                let reason = format!(
                    "{id} did not become healthy with the desired configuration within health_deadline_ms = {} ms (last probe: {seen})",
                    duration::as_millis(timing.health_deadline)
                );
                log::error(&format!("{reason}; rolling it back"));
                st.rollback_reason = Some(reason);
                st.at = At::UndoCheck;
                Ok(None)
            }
            Err(seen) => Ok(Some(requeue(
                timing.health_poll,
                format!("{id} to become healthy with the desired configuration ({seen})"),
                false,
            ))),
        }
    }

    fn scaling_down(&mut self, st: &mut State, since_ms: u64) -> Result<Option<Exit>, Fault> {
        let plan = self.plan;
        let wait = plan.timing.drain.max(plan.scale_down_delay);
        let clone = Self::clone_id(st)?;
        if let Some(after) = left(wait, since_ms, self.now) {
            return Ok(Some(requeue(
                after,
                format!(
                    "clone {clone} is kept for {} before it is deleted ({} left)",
                    duration::format(wait),
                    duration::format(after)
                ),
                plan.scale_down_delay > plan.timing.drain,
            )));
        }
        self.delete_clone(st, &clone)?;
        Ok(Some(Exit::Done(format!(
            "{id} runs the desired configuration and serves all traffic; {strategy} promoted it through clone {clone}, now deleted",
            id = self.id,
            strategy = plan.strategy
        ))))
    }

    /// Delete the clone; `not-found` means an earlier attempt did.
    fn delete_clone(&mut self, st: &mut State, clone: &str) -> Result<(), Fault> {
        match self.cp.delete_clone(clone) {
            Ok(()) => log::info(&format!("deleted clone {clone}")),
            Err(ControlPlaneError::NotFound(_)) => {
                log::info(&format!("clone {clone} was already deleted"));
            }
            Err(e) => return Err(fault(format!("deleting clone {clone}"))(e)),
        }
        st.clone = None;
        Ok(())
    }

    fn undo_check(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        if st.previous.is_none() {
            log::warn(&format!(
                "the configuration {} ran before is unknown: it keeps what it runs",
                self.id
            ));
            st.at = At::UndoReturn;
            return Ok(None);
        }
        if !st.original_touched {
            match self.original_health()? {
                Ok(()) => {
                    st.at = At::UndoReturn;
                    return Ok(None);
                }
                Err(seen) => log::warn(&format!(
                    "{} runs its previous configuration but is unhealthy ({seen}): restarting it",
                    self.id
                )),
            }
        }
        st.at = At::UndoMoveAway;
        Ok(None)
    }

    fn undo_move_away(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        if let Some(clone) = st.clone.clone() {
            match self.health(&clone)? {
                Seen::Healthy => {
                    // Traffic already all on the clone (promotion had begun): the
                    // instance can restart at once.
                    st.at = if st.status.weights == all_to(&clone) {
                        At::UndoRestart
                    } else {
                        self.set_weights(st, all_to(&clone))?;
                        At::UndoDrainBeforeRestart { since_ms: self.now }
                    };
                    return Ok(None);
                }
                Seen::Gone => {
                    log::warn(&format!("clone {clone} is gone"));
                    st.clone = None;
                }
                Seen::Unhealthy(seen) => log::warn(&format!(
                    "clone {clone} is unhealthy ({seen}): restarting {} in place",
                    self.id
                )),
            }
        }
        st.at = At::UndoRestart;
        Ok(None)
    }

    fn undo_restart(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        let Some(previous) = st.previous.clone() else {
            st.at = At::UndoReturn;
            return Ok(None);
        };
        self.restart_original(st, &previous, "its previous configuration")?;
        st.at = At::UndoRestarting { since_ms: self.now };
        Ok(Some(self.await_original("its previous configuration")))
    }

    fn undo_restarting(&mut self, st: &mut State, since_ms: u64) -> Result<Option<Exit>, Fault> {
        let id = self.id;
        let timing = self.plan.timing;
        match self.original_health()? {
            Ok(()) => {
                st.original_touched = false;
                st.at = At::UndoReturn;
                Ok(None)
            }
            Err(seen) if left(timing.health_deadline, since_ms, self.now).is_none() => {
                let undo = format!(
                    "{id} did not become healthy with its previous configuration within health_deadline_ms = {} ms (last probe: {seen}); traffic stays on {}",
                    duration::as_millis(timing.health_deadline),
                    describe_weights(&st.status.weights)
                );
                Ok(Some(Exit::Failed {
                    reason: match &st.rollback_reason {
                        Some(reason) => format!("{reason}; rolling back failed: {undo}"),
                        None => format!("abort: {undo}"),
                    },
                    retryable: true,
                }))
            }
            Err(seen) => Ok(Some(requeue(
                timing.health_poll,
                format!("{id} to become healthy with its previous configuration ({seen})"),
                false,
            ))),
        }
    }

    fn undo_return(&mut self, st: &mut State) -> Result<Option<Exit>, Fault> {
        let id = self.id;
        let all_on_original = st.status.weights == all_to(id);
        self.set_weights(st, all_to(id))?;
        st.at = if all_on_original || st.clone.is_none() {
            At::UndoDelete
        } else {
            At::UndoDraining { since_ms: self.now }
        };
        Ok(None)
    }

    fn undo_delete(&mut self, st: &mut State, entry: Entry) -> Exit {
        let id = self.id;
        let deleted = match st.clone.clone() {
            Some(clone) => match self.delete_clone(st, &clone) {
                Ok(()) => format!("clone {clone} deleted"),
                Err(f) => format!("{} (the host's leak sweep deletes it)", f.describe()),
            },
            None => "no clone left".to_owned(),
        };
        let runs = if st.previous.is_some() {
            "its previous configuration"
        } else {
            "what it ran (its previous configuration is unknown)"
        };
        match (entry, st.rollback_reason.take()) {
            (Entry::Step, Some(reason)) => Exit::Failed {
                reason: format!(
                    "{reason}; rolled back: {id} runs {runs} and serves all traffic, {deleted}"
                ),
                retryable: false,
            },
            _ => Exit::Done(format!(
                "aborted: {id} runs {runs} and serves all traffic, {deleted}"
            )),
        }
    }
}

fn describe_weights(weights: &[BackendWeight]) -> String {
    if weights.is_empty() {
        return "none set".to_owned();
    }
    weights
        .iter()
        .map(|w| format!("{} {} %", w.instance_id, w.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::serde_json::{self, json};

    use super::*;

    #[test]
    fn splits_send_only_backends_with_weight() {
        assert_eq!(split("a", "b", 0), [BackendWeight::new("a", 100)]);
        assert_eq!(
            split("a", "b", 30),
            [BackendWeight::new("a", 70), BackendWeight::new("b", 30)]
        );
        assert_eq!(split("a", "b", 100), [BackendWeight::new("b", 100)]);
        assert_eq!(split("a", "b", 250), [BackendWeight::new("b", 100)]);
    }

    #[test]
    fn waits_are_measured_from_their_start() {
        let second = Duration::from_secs(1);
        assert_eq!(left(second, 500, 500), Some(second));
        assert_eq!(left(second, 500, 1_200), Some(Duration::from_millis(300)));
        assert_eq!(left(second, 500, 1_500), None);
        assert_eq!(left(Duration::ZERO, 500, 500), None);
    }

    #[test]
    fn the_state_keeps_status_beside_the_private_keys() {
        let state = State {
            status: RolloutStatus::new("canary", "canary"),
            previous: Some(json!({"port": 1})),
            clone: Some("c".into()),
            original_touched: false,
            at: At::Steps {
                index: 2,
                entered_ms: 10,
                asked: false,
                analysis: None,
            },
            promote_full: false,
            error_since_ms: None,
            rollback_reason: None,
        };
        let value = serde_json::to_value(&state).unwrap();
        assert_eq!(
            value["at"],
            json!({"name": "steps", "index": 2, "entered_ms": 10, "asked": false})
        );
        assert_eq!(value["status"]["strategy"], "canary");
        assert_eq!(serde_json::from_value::<State>(value).unwrap(), state);
        let undo: At =
            serde_json::from_value(json!({"name": "undo-draining", "since_ms": 5})).unwrap();
        assert!(undo.is_undo());
    }
}
