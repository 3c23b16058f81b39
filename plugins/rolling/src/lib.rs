//! `rolling`: a strategy that rolls one change out across a group of instances in
//! batches, each batch healthy for a while before the next one starts.
//!
//! Start reading at [`Rolling::step`]. Policy groups instances (`group_by = ["app"]`)
//! and hands the group's members to this strategy as one rollout; it also takes a
//! rollout of one instance (a group of one). The steps:
//!
//! 1. First step: the members that drift, in the host's order (by instance id), are the
//!    members to update; what each runs now is kept in the state, for a rollback.
//! 2. A batch: the next `max_unavailable` members to update are stopped and started with
//!    their desired configuration. A member that no longer drifts (a step replayed after
//!    the host was killed, or a member already converged) is not touched again.
//! 3. The gate: every member of the batch must be healthy, continuously, for
//!    `health_gate`; then, after `pause_between`, the next batch. A batch that is not
//!    healthy within `health_deadline` fails the rollout: with `on_failure = "pause"`
//!    (default) the rollout stops and waits for an operator (`setpoint approve` goes on
//!    with the next batch, `setpoint abort` rolls the updated members back); with
//!    `on_failure = "rollback"` every updated member is restarted with what it ran
//!    before, batch by batch, and the rollout fails.
//!
//! Before each batch every member is probed: members down for any reason (a rollout
//! superseded half-way, a crash, a failure elsewhere) count against `max_unavailable`,
//! and a member that is down and still to be updated goes first. So no more than
//! `max_unavailable` members are down at any moment because of this rollout, and
//! members after a failed one are never touched.
//!
//! [`Rolling::abort`] rolls the updated members back the same way and is done.
//!
//! Parameters (all optional): `max_unavailable` (members taken down at once: a count, or
//! a percentage of the group such as `"25%"`, at least 1; default 1), `max_surge` (clones
//! allowed at once; only 0 is supported: a rolling update in place), `health_gate`
//! (default `"2s"`), `pause_between` (default `"0s"`), `health_deadline` (default
//! `"60s"`), `health_poll` (default `"1s"`), `on_failure` (`"pause"` or `"rollback"`).
//! Durations are `"500ms"`, `"10s"`, `"2m"` or milliseconds.
//!
//! The state carries a `status` object for the host: phase, batch n of N, and the
//! members `converged`, `in_progress`, `waiting` and `failed`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use setpoint_plugin::serde_json::Value;
use setpoint_plugin::{
    ControlPlane, ControlPlaneError, InstanceStatus, Metadata, PluginError, Progress, Rollout,
    Strategy, log,
};

/// The `rolling` strategy.
#[derive(Debug)]
pub struct Rolling;

setpoint_plugin::strategy!(Rolling);

/// What to do when a batch fails its health gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop and wait for an operator.
    Pause,
    /// Restart every updated member with what it ran before, then fail.
    Rollback,
}

/// The parameters, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params {
    batch: usize,
    health_gate: Duration,
    pause_between: Duration,
    health_deadline: Duration,
    health_poll: Duration,
    on_failure: OnFailure,
}

impl Params {
    fn parse(rollout: &Rollout) -> Result<Self, PluginError> {
        rollout.check_params(
            "rolling",
            &[
                "max_unavailable",
                "max_surge",
                "health_gate",
                "pause_between",
                "health_deadline",
                "health_poll",
                "on_failure",
            ],
        )?;
        let size = rollout.members().len();
        let batch = match rollout.param::<Value>("max_unavailable")? {
            None => 1,
            Some(value) => count_or_percent("max_unavailable", &value, size)?.max(1),
        };
        if let Some(value) = rollout.param::<Value>("max_surge")?
            && count_or_percent("max_surge", &value, size)? > 0
        {
            return Err(PluginError::InvalidParams(
                "max_surge: only 0 is supported (an update in place, max_unavailable members at a time); remove it or set 0".into(),
            ));
        }
        let on_failure = match rollout.param::<String>("on_failure")?.as_deref() {
            None | Some("pause") => OnFailure::Pause,
            Some("rollback") => OnFailure::Rollback,
            Some(other) => {
                return Err(PluginError::InvalidParams(format!(
                    "on_failure: {other:?} is not one of \"pause\", \"rollback\""
                )));
            }
        };
        let health_poll = rollout.duration_param_or("health_poll", Duration::from_secs(1))?;
        if health_poll.is_zero() {
            return Err(PluginError::InvalidParams(
                "health_poll: must be longer than zero, for example \"1s\"".into(),
            ));
        }
        Ok(Params {
            batch,
            health_gate: rollout.duration_param_or("health_gate", Duration::from_secs(2))?,
            pause_between: rollout.duration_param_or("pause_between", Duration::ZERO)?,
            health_deadline: rollout
                .duration_param_or("health_deadline", Duration::from_secs(60))?,
            health_poll,
            on_failure,
        })
    }
}

/// `2`, or `"25%"` of `size` (rounded down).
fn count_or_percent(name: &str, value: &Value, size: usize) -> Result<usize, PluginError> {
    let bad = || {
        PluginError::InvalidParams(format!(
            "{name}: {value} is not a count (for example 2) or a percentage of the group (for example \"25%\")"
        ))
    };
    match value {
        Value::Number(n) => n.as_u64().map(|n| n as usize).ok_or_else(bad),
        Value::String(s) => {
            let percent: u64 = s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(bad)?;
            Ok(size * percent as usize / 100)
        }
        _ => Err(bad()),
    }
}

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    /// Updating batches.
    Updating,
    /// A batch failed its gate; waiting for an operator.
    Paused,
    /// Restarting updated members with what they ran before.
    RollingBack,
}

/// What the strategy keeps between steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    phase: Phase,
    /// The members to update, in order.
    order: Vec<String>,
    /// Members updated and through their gate.
    done: Vec<String>,
    /// The batch being updated (or rolled back).
    batch: Vec<String>,
    /// When the batch was started (rollout milliseconds).
    batch_started_ms: u64,
    /// Since when every member of the batch has been healthy.
    healthy_since_ms: Option<u64>,
    /// No next batch before this (rollout milliseconds).
    next_batch_at_ms: u64,
    /// What each member to update ran before the rollout.
    previous: BTreeMap<String, Value>,
    /// Members rolled back so far.
    rolled_back: Vec<String>,
    /// The member that failed its gate, and why.
    failure: Option<String>,
    /// Members an operator let the rollout go on past (approved after a failed gate):
    /// not counted as unavailable from then on.
    #[serde(default)]
    accepted: Vec<String>,
    /// Whether the roll-back ends an abort (done) rather than a failed rollout.
    aborting: bool,
    /// For the host (see the crate docs).
    status: Value,
}

impl State {
    fn batches(&self, batch: usize) -> usize {
        self.order.len().div_ceil(batch.max(1))
    }

    fn refresh_status(&mut self, rollout: &Rollout, params: &Params, waiting_for: String) {
        let members: Vec<&str> = rollout
            .members()
            .iter()
            .map(|m| m.instance_id.as_str())
            .collect();
        let failed: Vec<&str> = self
            .failure
            .as_deref()
            .and_then(|f| f.split_once(':').map(|(id, _)| id))
            .into_iter()
            .collect();
        let in_progress: Vec<&str> = self
            .batch
            .iter()
            .map(String::as_str)
            .filter(|id| !failed.contains(id))
            .collect();
        let converged: Vec<&str> = members
            .iter()
            .copied()
            .filter(|id| {
                !self.order.iter().any(|o| o == id) && !self.rolled_back.iter().any(|r| r == id)
                    || self.done.iter().any(|d| d == id)
            })
            .collect();
        let waiting: Vec<&str> = members
            .iter()
            .copied()
            .filter(|id| {
                !converged.contains(id) && !in_progress.contains(id) && !failed.contains(id)
            })
            .collect();
        let batches = self.batches(params.batch);
        let batch_no = (self.done.len() / params.batch.max(1) + 1).min(batches.max(1));
        self.status = setpoint_plugin::serde_json::json!({
            "strategy": "rolling",
            "phase": match self.phase {
                Phase::Updating => "rolling",
                Phase::Paused => "paused",
                Phase::RollingBack => "rolling-back",
            },
            "step": batch_no,
            "steps": batches,
            "paused": self.phase == Phase::Paused,
            "waiting_for": waiting_for,
            "converged": converged,
            "in_progress": in_progress,
            "waiting": waiting,
            "failed": failed,
        });
    }
}

impl Strategy for Rolling {
    fn metadata() -> Metadata {
        Metadata::strategy(
            "rolling",
            env!("CARGO_PKG_VERSION"),
            "Rolls a change across a group of instances, max_unavailable at a time, each batch healthy before the next",
        )
        .with_group_rollouts()
    }

    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        let params = match Params::parse(rollout) {
            Ok(params) => params,
            Err(error) => return Progress::failed(error.to_string(), false),
        };
        let state = match rollout.state::<State>() {
            Ok(Some(state)) => state,
            Ok(None) => match first_state(rollout) {
                Some(state) => state,
                None => {
                    return Progress::done("every member already runs its desired configuration");
                }
            },
            Err(error) => return Progress::failed(error.to_string(), false),
        };
        match state.phase {
            Phase::Updating => update(rollout, cp, &params, state),
            Phase::Paused => {
                // An operator approved: accept the failed batch as it is and go on.
                let mut state = state;
                let batch = std::mem::take(&mut state.batch);
                log::info(&format!(
                    "approved after a failed gate: going on past {}",
                    batch.join(", ")
                ));
                state.accepted.extend(batch.iter().cloned());
                state.done.extend(batch);
                state.failure = None;
                state.phase = Phase::Updating;
                state.next_batch_at_ms = rollout.elapsed_ms();
                update(rollout, cp, &params, state)
            }
            Phase::RollingBack => roll_back(rollout, cp, &params, state),
        }
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        let params = match Params::parse(rollout) {
            Ok(params) => params,
            Err(error) => return Progress::failed(error.to_string(), false),
        };
        let mut state = match rollout.state::<State>() {
            Ok(Some(state)) => state,
            // Nothing was done yet.
            Ok(None) => return Progress::done("nothing to undo"),
            Err(error) => return Progress::failed(error.to_string(), false),
        };
        if state.phase != Phase::RollingBack {
            start_roll_back(&mut state, true);
        }
        state.aborting = true;
        roll_back(rollout, cp, &params, state)
    }
}

fn first_state(rollout: &Rollout) -> Option<State> {
    let order: Vec<String> = rollout
        .members()
        .iter()
        .filter(|m| m.has_drift())
        .map(|m| m.instance_id.clone())
        .collect();
    if order.is_empty() {
        return None;
    }
    let previous = rollout
        .members()
        .iter()
        .filter(|m| m.has_drift())
        .filter_map(|m| m.actual.clone().map(|a| (m.instance_id.clone(), a)))
        .collect();
    Some(State {
        phase: Phase::Updating,
        order,
        done: Vec::new(),
        batch: Vec::new(),
        batch_started_ms: 0,
        healthy_since_ms: None,
        next_batch_at_ms: 0,
        previous,
        rolled_back: Vec::new(),
        failure: None,
        accepted: Vec::new(),
        aborting: false,
        status: Value::Null,
    })
}

/// Whether a member answers healthy (or, without health probes, runs).
fn healthy(cp: &mut dyn ControlPlane, id: &str) -> Result<(bool, String), ControlPlaneError> {
    match cp.probe_health(id) {
        Ok(health) => Ok((health.healthy, health.detail)),
        Err(ControlPlaneError::Unavailable(why)) => {
            let status = cp.get_runtime_status(id)?;
            Ok((
                status.status == InstanceStatus::Running,
                format!("no health probe ({why}); status {}", status.status),
            ))
        }
        Err(error) => Err(error),
    }
}

fn poll(params: &Params) -> Duration {
    params.health_poll
}

fn update(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    params: &Params,
    mut state: State,
) -> Progress {
    let now = rollout.elapsed_ms();
    if state.batch.is_empty() {
        // The host hands over the members as they are now: a member that drifts again
        // (its desired configuration changed once more) or newly (it joined, or changed
        // after the rollout started) is updated too.
        for member in rollout.members() {
            let id = &member.instance_id;
            if !member.has_drift() || state.accepted.contains(id) {
                continue;
            }
            state.done.retain(|d| d != id);
            if !state.order.contains(id) {
                state.order.push(id.clone());
                if let Some(actual) = &member.actual {
                    state
                        .previous
                        .entry(id.clone())
                        .or_insert_with(|| actual.clone());
                }
            }
        }
        // Members that no longer drift (converged meanwhile, or updated by a step
        // replayed after a crash) are done without being touched.
        let converged: Vec<String> = state
            .order
            .iter()
            .filter(|id| !state.done.contains(id))
            .filter(|id| rollout.member(id).is_none_or(|m| !m.has_drift()))
            .cloned()
            .collect();
        state.done.extend(converged);
        let remaining: Vec<String> = state
            .order
            .iter()
            .filter(|id| !state.done.contains(id))
            .cloned()
            .collect();
        if remaining.is_empty() {
            return Progress::done(format!(
                "rolled out to {} members in {} batches of at most {}",
                state.done.len(),
                state.batches(params.batch),
                params.batch
            ));
        }
        if now < state.next_batch_at_ms {
            let wait = state.next_batch_at_ms - now;
            state.refresh_status(
                rollout,
                params,
                format!("the pause between batches ({wait} ms)"),
            );
            return Progress::requeue(
                Duration::from_millis(wait),
                &state,
                "pausing between batches",
            );
        }
        // Availability is judged from the world, not from this rollout's bookkeeping:
        // every member that is down counts against `max_unavailable`, so the bound
        // holds across a superseded rollout, a crash and members down for other
        // reasons. A member that is down and still to be updated goes first, as
        // updating it takes nothing more down.
        let mut down_pending = Vec::new();
        let mut down_other = Vec::new();
        for member in rollout.members() {
            let id = &member.instance_id;
            if state.accepted.contains(id) {
                continue;
            }
            if !matches!(healthy(cp, id), Ok((true, _))) {
                if remaining.contains(id) {
                    down_pending.push(id.clone());
                } else {
                    down_other.push(id.clone());
                }
            }
        }
        let budget = params.batch.saturating_sub(down_other.len());
        if budget == 0 {
            let why = format!(
                "{} unavailable, which uses up max_unavailable = {}",
                down_other.join(", "),
                params.batch
            );
            state.refresh_status(
                rollout,
                params,
                format!("{} to become available", down_other.join(", ")),
            );
            return Progress::requeue(poll(params), &state, format!("waiting: {why}"));
        }
        let mut batch = down_pending.clone();
        batch.extend(
            remaining
                .iter()
                .filter(|id| !down_pending.contains(id))
                .cloned(),
        );
        batch.truncate(budget);
        state.batch = batch;
        state.batch_started_ms = now;
        state.healthy_since_ms = None;
        for id in state.batch.clone() {
            let Some(member) = rollout.member(&id) else {
                continue;
            };
            if let Err(error) = cp
                .stop(&id)
                .and_then(|()| cp.start(&id, Some(&member.desired)))
            {
                return control_plane_failure(&format!("updating {id}"), &error);
            }
            log::info(&format!(
                "updated {id}; waiting for it to pass its health gate"
            ));
        }
        let batch = state.batch.join(", ");
        state.refresh_status(rollout, params, format!("{batch} to become healthy"));
        return Progress::requeue(poll(params), &state, format!("updated {batch}"));
    }

    // The gate: every member of the batch healthy for `health_gate`.
    let mut unhealthy = None;
    for id in state.batch.clone() {
        match healthy(cp, &id) {
            Ok((true, _)) => {}
            Ok((false, detail)) => {
                unhealthy = Some(format!("{id}: {detail}"));
                break;
            }
            Err(error @ (ControlPlaneError::Denied(_) | ControlPlaneError::NotFound(_))) => {
                return control_plane_failure(&format!("probing {id}"), &error);
            }
            Err(error) => {
                unhealthy = Some(format!("{id}: probe failed: {error}"));
                break;
            }
        }
    }
    match unhealthy {
        None => {
            let since = *state.healthy_since_ms.get_or_insert(now);
            let gate = params.health_gate.as_millis() as u64;
            if now.saturating_sub(since) >= gate {
                let batch = std::mem::take(&mut state.batch);
                log::info(&format!("{} passed the health gate", batch.join(", ")));
                state.done.extend(batch);
                state.next_batch_at_ms = now + params.pause_between.as_millis() as u64;
                return update(rollout, cp, params, state);
            }
            let left = gate - now.saturating_sub(since);
            let batch = state.batch.join(", ");
            state.refresh_status(
                rollout,
                params,
                format!("{batch} to stay healthy for {left} ms more"),
            );
            Progress::requeue(
                poll(params).min(Duration::from_millis(left.max(1))),
                &state,
                format!("{batch} healthy; holding the gate"),
            )
        }
        Some(why) => {
            state.healthy_since_ms = None;
            let deadline = params.health_deadline.as_millis() as u64;
            if now.saturating_sub(state.batch_started_ms) < deadline {
                state.refresh_status(rollout, params, why.clone());
                return Progress::requeue(poll(params), &state, format!("waiting: {why}"));
            }
            state.failure = Some(why.clone());
            let untouched: Vec<&str> = state
                .order
                .iter()
                .filter(|id| !state.done.contains(id) && !state.batch.contains(id))
                .map(String::as_str)
                .collect();
            let untouched = if untouched.is_empty() {
                "none".to_owned()
            } else {
                untouched.join(", ")
            };
            match params.on_failure {
                OnFailure::Pause => {
                    state.phase = Phase::Paused;
                    let message = format!(
                        "paused: {why} (not healthy within {} ms); untouched: {untouched}; approve to go on with the next batch, abort to roll the updated members back",
                        deadline
                    );
                    state.refresh_status(rollout, params, "an operator".into());
                    log::warn(&message);
                    Progress::await_approval(&state, message)
                }
                OnFailure::Rollback => {
                    log::warn(&format!("{why}; rolling the updated members back"));
                    start_roll_back(&mut state, false);
                    roll_back(rollout, cp, params, state)
                }
            }
        }
    }
}

/// Turn the updated members (the current batch first, then the earlier ones, newest
/// first) into the roll-back's order.
fn start_roll_back(state: &mut State, aborting: bool) {
    let mut order: Vec<String> = state.batch.drain(..).collect();
    order.extend(state.done.drain(..).rev());
    state.order = order;
    state.phase = Phase::RollingBack;
    state.aborting = aborting;
    state.healthy_since_ms = None;
}

fn roll_back(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    params: &Params,
    mut state: State,
) -> Progress {
    let now = rollout.elapsed_ms();
    if state.batch.is_empty() {
        let remaining: Vec<String> = state
            .order
            .iter()
            .filter(|id| !state.rolled_back.contains(id))
            .cloned()
            .collect();
        if remaining.is_empty() {
            let members = if state.rolled_back.is_empty() {
                "nothing to roll back".to_owned()
            } else {
                format!("rolled back {}", state.rolled_back.join(", "))
            };
            return match (&state.failure, state.aborting) {
                (_, true) => Progress::done(format!("aborted: {members}")),
                (Some(why), false) => Progress::failed(
                    format!("{why} did not pass its health gate; {members}"),
                    false,
                ),
                (None, false) => Progress::failed(members, false),
            };
        }
        state.batch = remaining.into_iter().take(params.batch).collect();
        state.batch_started_ms = now;
        for id in state.batch.clone() {
            let Some(previous) = state.previous.get(&id).cloned() else {
                log::warn(&format!(
                    "no record of what {id} ran before; leaving it as it is"
                ));
                continue;
            };
            if let Err(error) = cp.stop(&id).and_then(|()| cp.start(&id, Some(&previous))) {
                return control_plane_failure(&format!("rolling {id} back"), &error);
            }
        }
        let batch = state.batch.join(", ");
        state.refresh_status(
            rollout,
            params,
            format!("{batch} to run their previous configuration"),
        );
        return Progress::requeue(poll(params), &state, format!("rolling back {batch}"));
    }
    // Wait until the rolled-back batch is healthy (or the deadline: go on regardless,
    // the roll-back must not stop half-way).
    let deadline = params.health_deadline.as_millis() as u64;
    let mut all = true;
    for id in state.batch.clone() {
        if !matches!(healthy(cp, &id), Ok((true, _))) {
            all = false;
            break;
        }
    }
    if all || now.saturating_sub(state.batch_started_ms) >= deadline {
        let batch = std::mem::take(&mut state.batch);
        state.rolled_back.extend(batch);
        return roll_back(rollout, cp, params, state);
    }
    let batch = state.batch.join(", ");
    state.refresh_status(rollout, params, format!("{batch} to become healthy again"));
    Progress::requeue(poll(params), &state, format!("rolling back {batch}"))
}

/// A failed control-plane call: retryable when the control plane may answer later.
fn control_plane_failure(action: &str, error: &ControlPlaneError) -> Progress {
    let retryable = matches!(
        error,
        ControlPlaneError::Unavailable(_) | ControlPlaneError::Other(_)
    );
    log::error(&format!("{action} failed: {error}"));
    Progress::failed(format!("{action} failed: {error}"), retryable)
}

#[cfg(test)]
mod tests;
