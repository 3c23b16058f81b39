//! The batch engine of the `rolling` and `rolling-surge` strategies: one change rolled
//! out across a group of instances in batches, each batch healthy for a while before the
//! next one starts.
//!
//! Start reading at [`Rolling::step`]. Policy groups instances (`group_by = ["app"]`)
//! and hands the group's members to the strategy as one rollout; it also takes a
//! rollout of one instance (a group of one). The steps:
//!
//! 1. First step: the members that drift, in the host's order (by instance id), are the
//!    members to update; what each runs now is kept in the state, for a rollback.
//! 2. A batch: up to `max_unavailable` members to update are stopped and started with
//!    their desired configuration (in place), and, with `rolling-surge`, up to
//!    `max_surge` more are *covered* (below). A member that no longer drifts (a step
//!    replayed after the host was killed, or a member already converged) is not
//!    touched again.
//! 3. The gate: every member of the batch must be healthy, continuously, for
//!    `health_gate`; then, after `pause_between`, the next batch. A batch that is not
//!    healthy within `health_deadline` (counted from the batch's start) fails the
//!    rollout: with `on_failure = "pause"` (default) the rollout stops and waits for an
//!    operator (`setpoint approve` goes on with the next batch, `setpoint abort` rolls
//!    the updated members back); with `on_failure = "rollback"` every updated member is
//!    restarted with what it ran before, batch by batch, and the rollout fails.
//!
//! Before each batch every member is probed: members down for any reason (a rollout
//! superseded half-way, a crash, a failure elsewhere) count against `max_unavailable`,
//! and a member that is down and still to be updated goes first. So no more than
//! `max_unavailable` members are down at any moment because of this rollout, and
//! members after a failed one are never touched.
//!
//! **Surge** (`rolling-surge`, `max_surge > 0`; Kubernetes' `maxSurge` for instances
//! that have no replicas): a covered member's traffic is served by a clone while the
//! member is updated, so it never counts as unavailable. For each covered member: a
//! clone is created with the desired configuration and started; once healthy, the
//! member's endpoint (its own traffic address, named by its id) sends 100 % to the
//! clone; after `drain` the member is updated in place; once the batch passed its gate,
//! the endpoint goes back to the member, and after `drain` the clone is deleted. At most
//! `max_surge` clones exist at once. With `max_unavailable = 0` a rollout takes no
//! member's traffic away at any moment. A covered member that fails is rolled back while
//! its clone still serves (then the traffic returns and the clone is deleted) before
//! the rollout pauses or rolls back the rest; members rolled back after they passed
//! their gate are restarted in place, at least one at a time.
//!
//! [`Rolling::abort`] rolls the updated members back the same way and is done.
//!
//! Parameters (all optional): `max_unavailable` (members taken down at once: a count, or
//! a percentage of the group such as `"25%"`, rounded down; default 1; 0 only with a
//! surge), `max_surge` (clones at once, a count or a percentage rounded up; default 0;
//! only `rolling-surge` takes more), `drain` (`rolling-surge` only, default `"1s"`),
//! `health_gate` (default `"2s"`), `pause_between` (default `"0s"`), `health_deadline`
//! (default `"60s"`), `health_poll` (default `"1s"`), `on_failure` (`"pause"` or
//! `"rollback"`). Durations are `"500ms"`, `"10s"`, `"2m"` or milliseconds.
//!
//! The state carries a `status` object for the host: phase, batch n of N, the members
//! `converged`, `in_progress`, `waiting` and `failed`, and the surge clones by member.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use setpoint_plugin::serde_json::Value;
use setpoint_plugin::{
    ControlPlane, ControlPlaneError, InstanceStatus, Metadata, PluginError, Progress, Rollout,
    Strategy, log,
};

/// The `rolling` strategy: updates in place (`max_surge` must be 0). Needs no
/// capability beyond `instances`.
#[derive(Debug)]
pub struct Rolling;

/// The `rolling-surge` strategy: [`Rolling`] with surge clones (`max_surge`). Needs the
/// `clones` and `traffic` capabilities.
#[cfg(feature = "surge")]
#[derive(Debug)]
pub struct RollingSurge;

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
    /// The strategy's name (`rolling` or `rolling-surge`).
    name: &'static str,
    /// `max_unavailable`: members updated in place at once.
    batch: usize,
    /// `max_surge`: members covered by a clone at once.
    surge: usize,
    /// After moving a member's traffic, before touching what it moved away from.
    drain: Duration,
    health_gate: Duration,
    pause_between: Duration,
    health_deadline: Duration,
    health_poll: Duration,
    on_failure: OnFailure,
}

impl Params {
    /// The parameters of strategy `name`; `surge_allowed` for `rolling-surge`.
    fn parse(
        rollout: &Rollout,
        name: &'static str,
        surge_allowed: bool,
    ) -> Result<Self, PluginError> {
        let mut keys = vec![
            "max_unavailable",
            "max_surge",
            "health_gate",
            "pause_between",
            "health_deadline",
            "health_poll",
            "on_failure",
        ];
        if surge_allowed {
            keys.push("drain");
        }
        rollout.check_params(name, &keys)?;
        let size = rollout.members().len();
        let surge = match rollout.param::<Value>("max_surge")? {
            None => 0,
            Some(value) => count_or_percent("max_surge", &value, size, true)?,
        };
        if surge > 0 && !surge_allowed {
            return Err(PluginError::InvalidParams(format!(
                "max_surge: {name} updates in place and creates no clones; use strategy \"rolling-surge\" (it imports the clones and traffic capabilities), or set max_surge to 0"
            )));
        }
        let batch = match rollout.param::<Value>("max_unavailable")? {
            None => 1,
            Some(value) => count_or_percent("max_unavailable", &value, size, false)?,
        };
        let explicit_zero = matches!(
            rollout.param::<Value>("max_unavailable")?,
            Some(Value::Number(n)) if n.as_u64() == Some(0)
        );
        let batch = match (batch, surge) {
            (0, 0) if explicit_zero => {
                return Err(PluginError::InvalidParams(format!(
                    "max_unavailable: 0 with max_surge 0 would never update a member; allow at least 1{}",
                    if surge_allowed {
                        ", or set max_surge"
                    } else {
                        " (or, to keep every member serving, use rolling-surge with max_surge)"
                    }
                )));
            }
            // A percentage that rounds down to 0 still lets one member through.
            (0, 0) => 1,
            (batch, _) => batch,
        };
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
            name,
            batch,
            surge,
            drain: rollout.duration_param_or("drain", Duration::from_secs(1))?,
            health_gate: rollout.duration_param_or("health_gate", Duration::from_secs(2))?,
            pause_between: rollout.duration_param_or("pause_between", Duration::ZERO)?,
            health_deadline: rollout
                .duration_param_or("health_deadline", Duration::from_secs(60))?,
            health_poll,
            on_failure,
        })
    }

    /// Members a batch takes: in place and covered.
    fn per_batch(&self) -> usize {
        (self.batch + self.surge).max(1)
    }
}

/// `2`, or `"25%"` of `size` (rounded down, or up with `round_up`).
fn count_or_percent(
    name: &str,
    value: &Value,
    size: usize,
    round_up: bool,
) -> Result<usize, PluginError> {
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
            let share = size * percent as usize;
            Ok(if round_up {
                share.div_ceil(100)
            } else {
                share / 100
            })
        }
        _ => Err(bad()),
    }
}

/// Where a covered member is (`rolling-surge`): its clone serves its traffic while it
/// is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "at")]
enum CoverAt {
    /// The clone is to be created (nothing touched yet).
    Create,
    /// The clone exists; started once `started`, healthy by `since_ms + deadline`.
    Starting { since_ms: u64, started: bool },
    /// The member's endpoint sends 100 % to the clone since `since_ms`: drain, then
    /// update the member.
    Draining { since_ms: u64 },
    /// The member was updated (or, rolling back, restarted with what it ran before);
    /// the clone still serves its traffic.
    Updated,
    /// The endpoint sends 100 % to the member again since `since_ms`: drain, then
    /// delete the clone.
    Returning { since_ms: u64 },
}

/// A covered member's clone and where the cover is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cover {
    /// The clone, once created.
    clone: Option<String>,
    #[serde(flatten)]
    at: CoverAt,
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
    /// Covered members of the batch and their clones (`rolling-surge`).
    #[serde(default)]
    covers: BTreeMap<String, Cover>,
    /// A roll-back of the failed batch's covered members, after which the rollout
    /// pauses (`on_failure = "pause"` with covers).
    #[serde(default)]
    pause_after_roll_back: bool,
    /// The failed batch's members updated in place, kept aside while its covered
    /// members are rolled back before the pause.
    #[serde(default)]
    paused_batch: Vec<String>,
    /// For the host (see the crate docs).
    status: Value,
}

impl State {
    fn batches(&self, per_batch: usize) -> usize {
        self.order.len().div_ceil(per_batch.max(1))
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
        let batches = self.batches(params.per_batch());
        let batch_no = (self.done.len() / params.per_batch() + 1).min(batches.max(1));
        let surge: BTreeMap<&str, &str> = self
            .covers
            .iter()
            .filter_map(|(id, c)| Some((id.as_str(), c.clone.as_deref()?)))
            .collect();
        self.status = setpoint_plugin::serde_json::json!({
            "strategy": params.name,
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
            "surge_clones": surge,
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
        step_as(rollout, cp, "rolling", false)
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        abort_as(rollout, cp, "rolling", false)
    }
}

#[cfg(feature = "surge")]
impl Strategy for RollingSurge {
    fn metadata() -> Metadata {
        Metadata::strategy(
            "rolling-surge",
            env!("CARGO_PKG_VERSION"),
            "Rolls a change across a group of instances in batches; each member's traffic is served by a surge clone while it is updated",
        )
        .with_group_rollouts()
    }

    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        step_as(rollout, cp, "rolling-surge", true)
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        abort_as(rollout, cp, "rolling-surge", true)
    }
}

fn step_as(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    name: &'static str,
    surge_allowed: bool,
) -> Progress {
    let params = match Params::parse(rollout, name, surge_allowed) {
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
            let mut batch = std::mem::take(&mut state.batch);
            // Covered members of the failed batch were rolled back before the pause.
            batch.append(&mut state.rolled_back);
            batch.sort();
            batch.dedup();
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

fn abort_as(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    name: &'static str,
    surge_allowed: bool,
) -> Progress {
    let params = match Params::parse(rollout, name, surge_allowed) {
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
    } else if state.pause_after_roll_back {
        // Rolling the failed batch's covered members back before a pause: roll back
        // everything updated instead.
        let done: Vec<String> = state.done.drain(..).rev().collect();
        state.order.extend(done);
    }
    state.aborting = true;
    state.pause_after_roll_back = false;
    roll_back(rollout, cp, &params, state)
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
        covers: BTreeMap::new(),
        pause_after_roll_back: false,
        paused_batch: Vec::new(),
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
                state.batches(params.per_batch()),
                params.per_batch()
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
        if budget == 0 && params.surge == 0 {
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
        // In place: members already down first, up to what `max_unavailable` leaves.
        // Covered (surge): the next ones, up to `max_surge`. Then in place again.
        let mut in_place: Vec<String> = down_pending.iter().take(budget).cloned().collect();
        let rest: Vec<String> = remaining
            .iter()
            .filter(|id| !in_place.contains(id))
            .cloned()
            .collect();
        let covered: Vec<String> = rest.iter().take(params.surge).cloned().collect();
        let more = budget - in_place.len();
        in_place.extend(rest.into_iter().skip(covered.len()).take(more));
        if in_place.is_empty() && covered.is_empty() {
            let why = format!(
                "{} unavailable, which uses up max_unavailable = {}",
                down_other.join(", "),
                params.batch
            );
            state.refresh_status(rollout, params, why.clone());
            return Progress::requeue(poll(params), &state, format!("waiting: {why}"));
        }
        state.batch = in_place.clone();
        state.batch.extend(covered.iter().cloned());
        state.batch_started_ms = now;
        state.healthy_since_ms = None;
        for id in covered {
            state.covers.insert(
                id,
                Cover {
                    clone: None,
                    at: CoverAt::Create,
                },
            );
        }
        for id in in_place {
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
        if !state.covers.is_empty() {
            return update(rollout, cp, params, state);
        }
        let batch = state.batch.join(", ");
        state.refresh_status(rollout, params, format!("{batch} to become healthy"));
        return Progress::requeue(poll(params), &state, format!("updated {batch}"));
    }

    // Surge: the covered members' clones take their traffic before they are updated;
    // once the batch passed its gate, the traffic returns and the clones go.
    #[cfg(feature = "surge")]
    if !state.covers.is_empty() {
        match covers::advance(rollout, cp, params, &mut state, now) {
            covers::Next::Wait(after, why) => {
                state.refresh_status(rollout, params, why.clone());
                return Progress::requeue(after, &state, why);
            }
            covers::Next::Failed(why) => return fail_batch(rollout, cp, params, state, why),
            covers::Next::Fault(progress) => return progress,
            covers::Next::Returned => {
                let batch = std::mem::take(&mut state.batch);
                log::info(&format!(
                    "{} passed the health gate; surge clones deleted",
                    batch.join(", ")
                ));
                state.done.extend(batch);
                state.next_batch_at_ms = now + params.pause_between.as_millis() as u64;
                return update(rollout, cp, params, state);
            }
            covers::Next::Gate => {}
        }
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
                #[cfg(feature = "surge")]
                if !state.covers.is_empty() {
                    if let Err(error) = covers::move_back(cp, &mut state, now) {
                        return control_plane_failure("returning traffic", &error);
                    }
                    return update(rollout, cp, params, state);
                }
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
            fail_batch(rollout, cp, params, state, why)
        }
    }
}

/// The batch failed (`why`: the member and what was seen): pause or roll back, as
/// `on_failure` says. Covered members are rolled back first (their clones still serve).
fn fail_batch(
    rollout: &Rollout,
    cp: &mut dyn ControlPlane,
    params: &Params,
    mut state: State,
    why: String,
) -> Progress {
    let deadline = params.health_deadline.as_millis() as u64;
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
        OnFailure::Pause if !state.covers.is_empty() => {
            log::warn(&format!(
                "{why}; rolling the covered members back before pausing (untouched: {untouched})"
            ));
            let covered: Vec<String> = state.covers.keys().cloned().collect();
            state.paused_batch = std::mem::take(&mut state.batch);
            state.paused_batch.retain(|id| !covered.contains(id));
            state.order = covered;
            state.rolled_back.clear();
            state.phase = Phase::RollingBack;
            state.pause_after_roll_back = true;
            state.healthy_since_ms = None;
            roll_back(rollout, cp, params, state)
        }
        OnFailure::Pause => {
            state.phase = Phase::Paused;
            let message = format!(
                "paused: {why} (not healthy within {deadline} ms); untouched: {untouched}; approve to go on with the next batch, abort to roll the updated members back"
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
        if remaining.is_empty() && state.pause_after_roll_back {
            // The failed batch's covered members run what they ran before and serve
            // their own traffic again: now wait for an operator.
            state.pause_after_roll_back = false;
            state.batch = std::mem::take(&mut state.paused_batch);
            state.phase = Phase::Paused;
            let message = format!(
                "paused: {} (not healthy within {} ms); rolled back {}; approve to go on with the next batch, abort to roll the updated members back",
                state.failure.as_deref().unwrap_or("a batch failed"),
                params.health_deadline.as_millis(),
                state.rolled_back.join(", ")
            );
            state.refresh_status(rollout, params, "an operator".into());
            log::warn(&message);
            return Progress::await_approval(&state, message);
        }
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
        state.batch = remaining.into_iter().take(params.batch.max(1)).collect();
        state.batch_started_ms = now;
        for id in state.batch.clone() {
            #[cfg(feature = "surge")]
            match covers::roll_back_member(cp, &mut state, &id) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    return control_plane_failure(&format!("rolling {id} back"), &error);
                }
            }
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
    let settled = all || now.saturating_sub(state.batch_started_ms) >= deadline;
    // Covered members: their traffic returns from the clone, then the clone goes.
    #[cfg(feature = "surge")]
    if settled && state.batch.iter().any(|id| state.covers.contains_key(id)) {
        match covers::settle_roll_back(cp, params, &mut state, now) {
            Ok(None) => {}
            Ok(Some(after)) => {
                let batch = state.batch.join(", ");
                let why = format!("{batch}: traffic back from the surge clones, draining");
                state.refresh_status(rollout, params, why.clone());
                return Progress::requeue(after, &state, why);
            }
            Err(error) => return control_plane_failure("returning traffic", &error),
        }
    }
    if settled {
        let batch = std::mem::take(&mut state.batch);
        state.rolled_back.extend(batch);
        return roll_back(rollout, cp, params, state);
    }
    let batch = state.batch.join(", ");
    state.refresh_status(rollout, params, format!("{batch} to become healthy again"));
    Progress::requeue(poll(params), &state, format!("rolling back {batch}"))
}

/// Surge clones: a covered member's clone serves its traffic while it is updated (see
/// the crate docs). Each function drives every cover of the batch as far as it can go
/// without waiting, and ends the call right after a clone is created, so its id is in
/// the saved state before anything else happens.
#[cfg(feature = "surge")]
mod covers {
    use setpoint_plugin::BackendWeight;

    use super::*;

    /// What [`advance`] found.
    pub(super) enum Next {
        /// Come back after this long.
        Wait(Duration, String),
        /// Every covered member is updated: judge the batch's gate.
        Gate,
        /// The traffic returned and every clone is deleted: the batch is done.
        Returned,
        /// A clone did not become healthy: the batch failed.
        Failed(String),
        /// A control-plane call failed.
        Fault(Progress),
    }

    fn all_to(id: &str) -> Vec<BackendWeight> {
        vec![BackendWeight::new(id, 100)]
    }

    fn millis(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// Move every cover of the batch on.
    pub(super) fn advance(
        rollout: &Rollout,
        cp: &mut dyn ControlPlane,
        params: &Params,
        state: &mut State,
        now: u64,
    ) -> Next {
        let mut wait: Option<(Duration, String)> = None;
        let mut returning = false;
        let ids: Vec<String> = state.covers.keys().cloned().collect();
        for id in ids {
            let cover = state.covers[&id].clone();
            let step = |what: &str, error: ControlPlaneError| {
                Next::Fault(control_plane_failure(&format!("{what} for {id}"), &error))
            };
            let mut soonest = |after: Duration, why: String| {
                if wait.as_ref().is_none_or(|(a, _)| after < *a) {
                    wait = Some((after, why));
                }
            };
            match (cover.at, cover.clone) {
                (CoverAt::Create, _) => {
                    let Some(member) = rollout.member(&id) else {
                        continue;
                    };
                    match cp.clone_instance(&id, &member.desired) {
                        Ok(clone) => {
                            log::info(&format!(
                                "created surge clone {clone} of {id} with the desired configuration"
                            ));
                            state.covers.insert(
                                id.clone(),
                                Cover {
                                    clone: Some(clone.clone()),
                                    at: CoverAt::Starting {
                                        since_ms: now,
                                        started: false,
                                    },
                                },
                            );
                            // End the call: the clone's id is saved first.
                            return Next::Wait(
                                Duration::ZERO,
                                format!("surge clone {clone} of {id} to be started"),
                            );
                        }
                        Err(error) => return step("creating a surge clone", error),
                    }
                }
                (CoverAt::Starting { since_ms, started }, Some(clone)) => {
                    if !started {
                        if let Err(error) = cp.start(&clone, None) {
                            return step(&format!("starting surge clone {clone}"), error);
                        }
                        state.covers.insert(
                            id.clone(),
                            Cover {
                                clone: Some(clone.clone()),
                                at: CoverAt::Starting {
                                    since_ms,
                                    started: true,
                                },
                            },
                        );
                    }
                    match healthy(cp, &clone) {
                        Ok((true, _)) => {
                            if let Err(error) = cp.set_traffic_weights(&id, &all_to(&clone)) {
                                return step("moving traffic to the surge clone", error);
                            }
                            log::info(&format!(
                                "endpoint {id}: 100 % to surge clone {clone}; draining {id}"
                            ));
                            state.covers.insert(
                                id.clone(),
                                Cover {
                                    clone: Some(clone.clone()),
                                    at: CoverAt::Draining { since_ms: now },
                                },
                            );
                            soonest(params.drain, format!("{id} to drain"));
                        }
                        Ok((false, detail)) => {
                            if now.saturating_sub(since_ms) >= millis(params.health_deadline) {
                                return Next::Failed(format!(
                                    "{id}: its surge clone {clone} did not become healthy ({detail})"
                                ));
                            }
                            soonest(
                                params.health_poll,
                                format!("surge clone {clone} of {id} to become healthy"),
                            );
                        }
                        Err(error) => return step(&format!("probing surge clone {clone}"), error),
                    }
                }
                (CoverAt::Draining { since_ms }, Some(clone)) => {
                    let drained = since_ms + millis(params.drain);
                    if now < drained {
                        soonest(
                            Duration::from_millis(drained - now),
                            format!("{id} to drain"),
                        );
                        continue;
                    }
                    let Some(member) = rollout.member(&id) else {
                        continue;
                    };
                    if let Err(error) = cp
                        .stop(&id)
                        .and_then(|()| cp.start(&id, Some(&member.desired)))
                    {
                        return step("updating", error);
                    }
                    log::info(&format!(
                        "updated {id} while surge clone {clone} serves its traffic"
                    ));
                    state.covers.insert(
                        id.clone(),
                        Cover {
                            clone: Some(clone),
                            at: CoverAt::Updated,
                        },
                    );
                }
                (CoverAt::Updated, _) => {}
                (CoverAt::Returning { since_ms }, Some(clone)) => {
                    returning = true;
                    let drained = since_ms + millis(params.drain);
                    if now < drained {
                        soonest(
                            Duration::from_millis(drained - now),
                            format!("surge clone {clone} to drain"),
                        );
                        continue;
                    }
                    match cp.delete_clone(&clone) {
                        Ok(()) | Err(ControlPlaneError::NotFound(_)) => {
                            log::info(&format!("deleted surge clone {clone} of {id}"));
                            state.covers.remove(&id);
                        }
                        Err(error) => return step(&format!("deleting surge clone {clone}"), error),
                    }
                }
                (_, None) => {
                    // Only `Create` has no clone; anything else is a state this engine
                    // never writes. Start the cover over.
                    state.covers.insert(
                        id.clone(),
                        Cover {
                            clone: None,
                            at: CoverAt::Create,
                        },
                    );
                    soonest(Duration::ZERO, format!("a surge clone for {id}"));
                }
            }
        }
        if let Some((after, why)) = wait {
            return Next::Wait(after, why);
        }
        if returning || state.covers.is_empty() {
            return if state.covers.is_empty() {
                Next::Returned
            } else {
                Next::Wait(params.health_poll, "surge clones to be deleted".into())
            };
        }
        Next::Gate
    }

    /// The batch passed its gate: every covered member's endpoint points back at it.
    pub(super) fn move_back(
        cp: &mut dyn ControlPlane,
        state: &mut State,
        now: u64,
    ) -> Result<(), ControlPlaneError> {
        for (id, cover) in state.covers.iter_mut() {
            if cover.at == CoverAt::Updated {
                cp.set_traffic_weights(id, &all_to(id))?;
                log::info(&format!("endpoint {id}: 100 % back to {id}"));
                cover.at = CoverAt::Returning { since_ms: now };
            }
        }
        Ok(())
    }

    /// Begin rolling back `id`: `Ok(true)` when it must be restarted with what it ran
    /// before (its clone takes its traffic first), `Ok(false)` when it was never
    /// touched (its clone, if any, is left to [`settle_roll_back`]).
    pub(super) fn roll_back_member(
        cp: &mut dyn ControlPlane,
        state: &mut State,
        id: &str,
    ) -> Result<bool, ControlPlaneError> {
        let Some(cover) = state.covers.get(id).cloned() else {
            return Ok(true);
        };
        match (cover.at, cover.clone) {
            (CoverAt::Create, _) | (_, None) => {
                state.covers.remove(id);
                state.batch.retain(|b| b != id);
                state.rolled_back.push(id.to_owned());
                Ok(false)
            }
            (CoverAt::Starting { .. }, Some(clone)) => {
                match cp.delete_clone(&clone) {
                    Ok(()) | Err(ControlPlaneError::NotFound(_)) => {}
                    Err(error) => return Err(error),
                }
                state.covers.remove(id);
                state.batch.retain(|b| b != id);
                state.rolled_back.push(id.to_owned());
                Ok(false)
            }
            // The clone serves; the member still runs what it ran: traffic back, then
            // the clone goes (in `settle_roll_back`).
            (CoverAt::Draining { .. }, Some(_)) => {
                if let Some(c) = state.covers.get_mut(id) {
                    c.at = CoverAt::Updated;
                }
                Ok(false)
            }
            (CoverAt::Updated | CoverAt::Returning { .. }, Some(clone)) => {
                cp.set_traffic_weights(id, &all_to(&clone))?;
                if let Some(c) = state.covers.get_mut(id) {
                    c.at = CoverAt::Updated;
                }
                Ok(true)
            }
        }
    }

    /// The rolled-back batch is healthy (or out of time): covered members get their
    /// traffic back, then their clones are deleted after `drain`. `Ok(None)` once no
    /// member of the batch is covered; `Ok(Some(after))` to come back.
    pub(super) fn settle_roll_back(
        cp: &mut dyn ControlPlane,
        params: &Params,
        state: &mut State,
        now: u64,
    ) -> Result<Option<Duration>, ControlPlaneError> {
        let mut after: Option<Duration> = None;
        for id in state.batch.clone() {
            let Some(cover) = state.covers.get(&id).cloned() else {
                continue;
            };
            let Some(clone) = cover.clone else {
                state.covers.remove(&id);
                continue;
            };
            match cover.at {
                CoverAt::Returning { since_ms } => {
                    let drained = since_ms + millis(params.drain);
                    if now >= drained {
                        match cp.delete_clone(&clone) {
                            Ok(()) | Err(ControlPlaneError::NotFound(_)) => {}
                            Err(error) => return Err(error),
                        }
                        log::info(&format!("deleted surge clone {clone} of {id}"));
                        state.covers.remove(&id);
                    } else {
                        let left = Duration::from_millis(drained - now);
                        after = Some(after.map_or(left, |a| a.min(left)));
                    }
                }
                _ => {
                    cp.set_traffic_weights(&id, &all_to(&id))?;
                    log::info(&format!("endpoint {id}: 100 % back to {id}"));
                    if let Some(c) = state.covers.get_mut(&id) {
                        c.at = CoverAt::Returning { since_ms: now };
                    }
                    after = Some(after.map_or(params.drain, |a| a.min(params.drain)));
                }
            }
        }
        Ok(after)
    }
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
