//! A strategy's unit of work ([`Rollout`]) and its answer ([`Progress`]).
//!
//! # Parameters the host adds
//!
//! Besides what policy sets, the host puts *reserved* parameters into `rollout.params`,
//! under keys that start with `$` (policy cannot set them):
//!
//! | Key | Values | Meaning | Accessor |
//! |---|---|---|---|
//! | `$approval` | `"none"`, `"before-apply"`, `"before-promote"` | The policy's approval gate. | [`Rollout::approval`], [`Rollout::approval_before_promote`] |
//! | `$promote` | `"step"`, `"full"` | Present only on the one `step` call that delivers an operator's `setpoint promote`. | [`Rollout::promote`] |
//! | `$undo` | `"again"` | Present only on the `abort` call that retries an undo which failed (retryable): start the undo over rather than continue a wait that ran out. | [`Rollout::undo_again`] |
//!
//! A strategy must accept `$` keys it does not know when it validates its parameters
//! ([`Rollout::check_params`] does), so a newer host can add more.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Drift, PluginError};

/// Keys of `rollout.params` that start with this are the host's, not policy's.
pub const RESERVED_PARAM_PREFIX: char = '$';
/// The reserved parameter that carries the policy's approval gate.
pub const APPROVAL_PARAM: &str = "$approval";
/// The reserved parameter that carries an operator's `setpoint promote`.
pub const PROMOTE_PARAM: &str = "$promote";
/// The reserved parameter on the `abort` call that retries an undo which failed.
pub const UNDO_PARAM: &str = "$undo";

/// Whether `key` is a parameter the host reserves (it starts with `$`).
pub fn is_reserved_param(key: &str) -> bool {
    key.starts_with(RESERVED_PARAM_PREFIX)
}

/// What an operator's `setpoint promote` asks for (`$promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Promote {
    /// `"step"`: end the current pause, analysis or approval wait and go on to the next
    /// step.
    Step,
    /// `"full"`: skip every remaining step, pause and analysis and go straight to full
    /// promotion.
    Full,
}

impl Promote {
    /// The value of `$promote`: `step` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Full => "full",
        }
    }
}

/// The approval gate of the policy rule that applies (`$approval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Approval {
    /// `"none"`: no gate.
    None,
    /// `"before-apply"`: the host held the change before the rollout's first step.
    BeforeApply,
    /// `"before-promote"`: the strategy should ask (return `await-approval`) before it
    /// promotes the change fully.
    BeforePromote,
}

impl Approval {
    /// The value of `$approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::BeforeApply => "before-apply",
            Self::BeforePromote => "before-promote",
        }
    }
}

/// One instance a rollout converges (the contract's `member`).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The instance's identifier; the control plane may be asked about it.
    pub instance_id: String,
    /// The desired configuration to roll out.
    pub desired: Value,
    /// The configuration the instance runs now as far as the host knows; `None` when the
    /// host cannot tell. When a step of this rollout stopped the instance, what it ran
    /// when the rollout started.
    pub actual: Option<Value>,
    /// The drifts the comparator found between `desired` and `actual`; empty for a member
    /// of a group that already runs its desired configuration.
    pub drifts: Vec<Drift>,
}

impl Member {
    /// A member to converge `instance_id` to `desired`, actual configuration unknown, no
    /// drifts.
    pub fn new(instance_id: impl Into<String>, desired: Value) -> Self {
        Self {
            instance_id: instance_id.into(),
            desired,
            actual: None,
            drifts: Vec::new(),
        }
    }

    /// With `actual` as the running configuration.
    #[must_use]
    pub fn with_actual(mut self, actual: Value) -> Self {
        self.actual = Some(actual);
        self
    }

    /// With `drifts` as the comparator's findings.
    #[must_use]
    pub fn with_drifts(mut self, drifts: Vec<Drift>) -> Self {
        self.drifts = drifts;
        self
    }

    /// Whether the comparator found drift on this member (a member of a group may have
    /// none).
    pub fn has_drift(&self) -> bool {
        !self.drifts.is_empty()
    }
}

/// One unit of work for a strategy, parsed from the contract's `rollout` record.
///
/// A rollout converges one instance, or, for a strategy whose metadata declares
/// [`Metadata::with_group_rollouts`](crate::Metadata::with_group_rollouts), a group of
/// them: [`Rollout::members`], ordered by instance id, never empty. A strategy that does
/// not declare group rollouts is never handed more than one member, and uses the
/// single-instance accessors [`Rollout::instance_id`], [`Rollout::desired`],
/// [`Rollout::actual`] and [`Rollout::drifts`]. On a group rollout those describe the
/// *first* member only (the lowest instance id): a group-aware strategy reads
/// [`Rollout::members`] instead.
///
/// Tests build one with [`Rollout::new`] (one instance) or [`Rollout::for_group`], and the
/// `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The group's name (`key=value` pairs joined by `,`); `None` for one instance.
    group: Option<String>,
    /// The instances this rollout converges; never empty.
    members: Vec<Member>,
    /// The parameters policy gives this strategy for these instances (a JSON object).
    pub params: Value,
    /// The state the strategy returned at its previous step, as it wrote it; `None` at the
    /// first step. Read it typed with [`Rollout::state`].
    pub raw_state: Option<String>,
    /// How many times `step` (or, in an abort, `abort`) has been called before for this
    /// rollout (0 at the first call).
    pub step: u32,
    /// Time since the first step of this rollout, by the host's clock (plugins have no
    /// clock of their own).
    pub elapsed: Duration,
}

impl Rollout {
    /// The first step of a rollout of `desired` to the one instance `instance_id`, with no
    /// params.
    pub fn new(instance_id: impl Into<String>, desired: Value) -> Self {
        Self::from_members(None, vec![Member::new(instance_id, desired)])
            .expect("one member is not empty")
    }

    /// The first step of a group rollout of `group` (its name, for example
    /// `app=orders`) over `members`, with no params. Members are kept ordered by
    /// instance id, as the host sends them.
    ///
    /// # Panics
    ///
    /// When `members` is empty: a rollout converges at least one instance.
    pub fn for_group(group: impl Into<String>, members: impl IntoIterator<Item = Member>) -> Self {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Self::from_members(Some(group.into()), members)
            .expect("Rollout::for_group needs at least one member")
    }

    /// A rollout at its first step over `members` as the host sent them; `None` when
    /// there are none.
    pub(crate) fn from_members(group: Option<String>, members: Vec<Member>) -> Option<Self> {
        if members.is_empty() {
            return None;
        }
        Some(Self {
            group,
            members,
            params: Value::Object(serde_json::Map::new()),
            raw_state: None,
            step: 0,
            elapsed: Duration::ZERO,
        })
    }

    /// The group's name for a group rollout; `None` for a rollout of one instance.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Whether this is a group rollout (the host sent a group name).
    pub fn is_group(&self) -> bool {
        self.group.is_some()
    }

    /// The instances this rollout converges, ordered by instance id; never empty. A
    /// rollout of one instance has exactly one.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members, to change between calls in a test (for example a new desired
    /// configuration).
    pub fn members_mut(&mut self) -> &mut [Member] {
        &mut self.members
    }

    /// The member `instance_id`, if it is one.
    pub fn member(&self, instance_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.instance_id == instance_id)
    }

    /// The one member of a rollout of one instance; the first member (lowest instance
    /// id) of a group rollout.
    pub fn first_member(&self) -> &Member {
        &self.members[0]
    }

    /// The instance being reconciled: see [`Rollout::first_member`] (a group rollout's
    /// first member).
    pub fn instance_id(&self) -> &str {
        &self.first_member().instance_id
    }

    /// The desired configuration: see [`Rollout::first_member`].
    pub fn desired(&self) -> &Value {
        &self.first_member().desired
    }

    /// The configuration the instance runs now, as far as the host knows: see
    /// [`Rollout::first_member`].
    pub fn actual(&self) -> Option<&Value> {
        self.first_member().actual.as_ref()
    }

    /// The drifts the comparator found: see [`Rollout::first_member`].
    pub fn drifts(&self) -> &[Drift] {
        &self.first_member().drifts
    }

    /// With `actual` as the running configuration of the first (for one instance: the)
    /// member.
    #[must_use]
    pub fn with_actual(mut self, actual: Value) -> Self {
        self.members[0].actual = Some(actual);
        self
    }

    /// With `drifts` as the comparator's findings on the first (for one instance: the)
    /// member.
    #[must_use]
    pub fn with_drifts(mut self, drifts: Vec<Drift>) -> Self {
        self.members[0].drifts = drifts;
        self
    }

    /// With `params` as the policy's parameters.
    #[must_use]
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// With `state` as written by a previous step (see [`Progress::state`]).
    #[must_use]
    pub fn with_raw_state(mut self, state: Option<impl Into<String>>) -> Self {
        self.raw_state = state.map(Into::into);
        self
    }

    /// At step number `step`, `elapsed` after the first step.
    #[must_use]
    pub fn at_step(mut self, step: u32, elapsed: Duration) -> Self {
        self.step = step;
        self.elapsed = elapsed;
        self
    }

    /// With the reserved parameter `$promote` set to `promote` (what the host sends on the
    /// step call that delivers `setpoint promote`); `None` removes it.
    #[must_use]
    pub fn with_promote(self, promote: Option<Promote>) -> Self {
        self.with_reserved(PROMOTE_PARAM, promote.map(Promote::as_str))
    }

    /// With the reserved parameter `$approval` set to `approval`; `None` removes it.
    #[must_use]
    pub fn with_approval(self, approval: Option<Approval>) -> Self {
        self.with_reserved(APPROVAL_PARAM, approval.map(Approval::as_str))
    }

    fn with_reserved(mut self, key: &str, value: Option<&str>) -> Self {
        if !self.params.is_object() {
            self.params = Value::Object(serde_json::Map::new());
        }
        if let Value::Object(params) = &mut self.params {
            match value {
                Some(value) => params.insert(key.to_owned(), Value::String(value.to_owned())),
                None => params.remove(key),
            };
        }
        self
    }

    /// [`Rollout::elapsed`] in whole milliseconds (the host's `elapsed-ms`).
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// What an operator's `setpoint promote` asks for, on the one step call that
    /// delivers it (`$promote`); `None` on every other call. A value this SDK does not
    /// know is `None` too.
    pub fn promote(&self) -> Option<Promote> {
        match self.params.get(PROMOTE_PARAM)?.as_str()? {
            "step" => Some(Promote::Step),
            "full" => Some(Promote::Full),
            _ => None,
        }
    }

    /// Whether this `abort` call retries an undo that failed (`$undo = "again"`): the
    /// strategy should start its undo over (restart what it restarts, re-check what it
    /// checks) rather than continue a wait that already ran out, which would only fail
    /// again.
    pub fn undo_again(&self) -> bool {
        self.params.get(UNDO_PARAM).and_then(Value::as_str) == Some("again")
    }

    /// The policy's approval gate (`$approval`); `None` when the host does not say (an
    /// older host) or says something this SDK does not know.
    pub fn approval(&self) -> Option<Approval> {
        match self.params.get(APPROVAL_PARAM)?.as_str()? {
            "none" => Some(Approval::None),
            "before-apply" => Some(Approval::BeforeApply),
            "before-promote" => Some(Approval::BeforePromote),
            _ => None,
        }
    }

    /// Whether the policy asks for an approval before full promotion
    /// (`$approval == "before-promote"`). A strategy that promotes asks for it with
    /// `await-approval` then, and only then (or when its own params ask).
    pub fn approval_before_promote(&self) -> bool {
        self.approval() == Some(Approval::BeforePromote)
    }

    /// Check that params are a JSON object whose keys are all in `accepted`, ignoring the
    /// host's reserved `$` keys. An unknown key is [`PluginError::InvalidParams`] naming
    /// it and listing what the strategy accepts (`strategy` names the strategy there).
    pub fn check_params(&self, strategy: &str, accepted: &[&str]) -> Result<(), PluginError> {
        let Value::Object(params) = &self.params else {
            return Err(PluginError::invalid_params(format!(
                "params must be a JSON object, got {}",
                self.params
            )));
        };
        match params
            .keys()
            .find(|key| !is_reserved_param(key) && !accepted.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(unknown) => {
                let list: Vec<String> = accepted.iter().map(|k| format!("`{k}`")).collect();
                Err(PluginError::invalid_params(format!(
                    "unknown parameter `{unknown}`; {strategy} accepts {}",
                    if list.is_empty() {
                        "none".to_owned()
                    } else {
                        list.join(", ")
                    }
                )))
            }
        }
    }

    /// The duration parameter `name` ([`crate::duration`]: `"500ms"`, `"10s"`, `"2m"`,
    /// `"1h"` or a number of milliseconds), or `default` when policy does not set it.
    pub fn duration_param_or(
        &self,
        name: &str,
        default: Duration,
    ) -> Result<Duration, PluginError> {
        match self.param::<Value>(name)? {
            None => Ok(default),
            Some(value) => crate::duration::from_param(name, &value),
        }
    }

    /// The state of the previous step as `T`; `Ok(None)` at the first step.
    ///
    /// State that does not parse as `T` is [`PluginError::InvalidInput`].
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        self.raw_state
            .as_deref()
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    PluginError::InvalidInput(format!(
                        "the rollout state is not what this strategy writes: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// The parameter `name` as `T`, or `default` when policy does not set it (or sets it
    /// to `null`).
    ///
    /// A value that is not a `T` is [`PluginError::InvalidParams`] naming the parameter.
    pub fn param_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T, PluginError> {
        Ok(self.param(name)?.unwrap_or(default))
    }

    /// The parameter `name` as `T`; `Ok(None)` when policy does not set it.
    ///
    /// Params that are not an object, or a value that is not a `T`, are
    /// [`PluginError::InvalidParams`] naming the parameter.
    pub fn param<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, PluginError> {
        let Value::Object(params) = &self.params else {
            return Err(PluginError::InvalidParams(format!(
                "params must be a JSON object, got {}",
                self.params
            )));
        };
        match params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value).map(Some).map_err(|e| {
                PluginError::InvalidParams(format!("parameter `{name}` = {value}: {e}"))
            }),
        }
    }
}

/// What a strategy's `step` or `abort` reports (the contract's `progress`).
#[must_use = "the host acts on the progress a strategy returns"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The rollout is complete; the text summarises what was done.
    Done(String),
    /// Not finished: call `step` again after `after` with `state`.
    Requeue {
        /// How long the host waits before the next step (millisecond resolution).
        after: Duration,
        /// The state for the next step, as JSON text.
        state: String,
        /// What the rollout is waiting for.
        message: String,
    },
    /// Not finished: call `step` again once an operator approves.
    AwaitApproval {
        /// The state for the step after approval, as JSON text.
        state: String,
        /// What the operator is asked to approve.
        message: String,
    },
    /// The rollout failed.
    Failed {
        /// Why, for an operator.
        reason: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
}

impl Progress {
    /// The rollout is complete.
    pub fn done(message: impl Into<String>) -> Self {
        Self::Done(message.into())
    }

    /// Call `step` again after `after` with `state` (serialised as JSON).
    ///
    /// State that cannot be serialised (a map with non-string keys) turns into a
    /// non-retryable [`Progress::Failed`] saying so.
    pub fn requeue<S: Serialize + ?Sized>(
        after: Duration,
        state: &S,
        message: impl Into<String>,
    ) -> Self {
        match serde_json::to_string(state) {
            Ok(state) => Self::Requeue {
                after,
                state,
                message: message.into(),
            },
            Err(e) => unserialisable_state(&e),
        }
    }

    /// Wait for an operator's approval, then call `step` with `state` (serialised as
    /// JSON; see [`Progress::requeue`] for serialisation failures).
    pub fn await_approval<S: Serialize + ?Sized>(state: &S, message: impl Into<String>) -> Self {
        match serde_json::to_string(state) {
            Ok(state) => Self::AwaitApproval {
                state,
                message: message.into(),
            },
            Err(e) => unserialisable_state(&e),
        }
    }

    /// The rollout failed; `retryable` says whether trying again later may succeed.
    pub fn failed(reason: impl Into<String>, retryable: bool) -> Self {
        Self::Failed {
            reason: reason.into(),
            retryable,
        }
    }

    /// The state to hand to the next step, if this progress continues the rollout.
    pub fn state(&self) -> Option<&str> {
        match self {
            Self::Requeue { state, .. } | Self::AwaitApproval { state, .. } => Some(state),
            Self::Done(_) | Self::Failed { .. } => None,
        }
    }

    /// Whether the rollout is finished, successfully or not.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Failed { .. })
    }
}

impl From<PluginError> for Progress {
    /// A domain error ends the rollout: invalid params or input are not retryable (the
    /// same inputs fail the same way), anything else is.
    fn from(error: PluginError) -> Self {
        let retryable = matches!(error, PluginError::Other(_));
        Self::failed(error.to_string(), retryable)
    }
}

fn unserialisable_state(error: &serde_json::Error) -> Progress {
    Progress::failed(
        format!("the strategy's state cannot be serialised as JSON: {error}"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        phase: u8,
    }

    #[test]
    fn state_round_trips_through_requeue() {
        let progress = Progress::requeue(Duration::from_secs(1), &State { phase: 2 }, "waiting");
        let rollout = Rollout::new("i", json!({})).with_raw_state(progress.state());
        assert_eq!(rollout.state::<State>().unwrap(), Some(State { phase: 2 }));
        assert_eq!(Rollout::new("i", json!({})).state::<State>().unwrap(), None);
    }

    #[test]
    fn foreign_state_is_invalid_input() {
        let rollout = Rollout::new("i", json!({})).with_raw_state(Some(r#""not the state""#));
        assert!(matches!(
            rollout.state::<State>(),
            Err(PluginError::InvalidInput(_))
        ));
    }

    #[test]
    fn params_are_typed_and_errors_name_the_parameter() {
        let rollout = Rollout::new("i", json!({})).with_params(json!({"a": 5, "b": "x"}));
        assert_eq!(rollout.param_or::<u64>("a", 1).unwrap(), 5);
        assert_eq!(rollout.param_or::<u64>("missing", 1).unwrap(), 1);
        let Err(PluginError::InvalidParams(message)) = rollout.param::<u64>("b") else {
            panic!("expected invalid params");
        };
        assert!(message.contains("`b`"), "{message}");
    }

    #[test]
    fn reserved_params_are_read_and_skipped_by_check_params() {
        let rollout = Rollout::new("i", json!({}))
            .with_params(json!({"a": 1, "$approval": "before-promote", "$future": {"x": 1}}))
            .with_promote(Some(Promote::Full));
        assert_eq!(rollout.promote(), Some(Promote::Full));
        assert_eq!(rollout.approval(), Some(Approval::BeforePromote));
        assert!(rollout.approval_before_promote());
        rollout.check_params("test", &["a"]).unwrap();

        let Err(PluginError::InvalidParams(message)) = rollout.check_params("test", &["b", "c"])
        else {
            panic!("`a` is unknown");
        };
        assert_eq!(message, "unknown parameter `a`; test accepts `b`, `c`");

        let plain = rollout
            .clone()
            .with_promote(None)
            .with_approval(Some(Approval::BeforeApply));
        assert_eq!(plain.promote(), None);
        assert!(!plain.approval_before_promote());
        assert_eq!(plain.params["$approval"], "before-apply");

        let odd = Rollout::new("i", json!({})).with_params(json!({"$promote": "sideways"}));
        assert_eq!(odd.promote(), None);
        assert_eq!(odd.approval(), None);
        assert!(matches!(
            Rollout::new("i", json!({}))
                .with_params(json!([1]))
                .check_params("test", &[]),
            Err(PluginError::InvalidParams(_))
        ));
    }

    #[test]
    fn duration_params_take_strings_numbers_and_defaults() {
        let rollout =
            Rollout::new("i", json!({})).with_params(json!({"drain": "2s", "n": 5, "bad": "x"}));
        assert_eq!(
            rollout.duration_param_or("drain", Duration::ZERO).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            rollout.duration_param_or("n", Duration::ZERO).unwrap(),
            Duration::from_millis(5)
        );
        assert_eq!(
            rollout
                .duration_param_or("missing", Duration::from_secs(1))
                .unwrap(),
            Duration::from_secs(1)
        );
        assert!(
            rollout
                .duration_param_or("bad", Duration::ZERO)
                .unwrap_err()
                .to_string()
                .contains("`bad`")
        );
    }

    #[test]
    fn unserialisable_state_fails_the_rollout() {
        let mut bad = BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let progress = Progress::requeue(Duration::ZERO, &bad, "x");
        assert!(matches!(
            progress,
            Progress::Failed {
                retryable: false,
                ..
            }
        ));
    }

    #[test]
    fn single_instance_accessors_read_the_one_member() {
        let rollout = Rollout::new("db", json!({"port": 1})).with_actual(json!({"port": 0}));
        assert_eq!(rollout.group(), None);
        assert!(!rollout.is_group());
        assert_eq!(rollout.members().len(), 1);
        assert_eq!(rollout.instance_id(), "db");
        assert_eq!(rollout.desired(), &json!({"port": 1}));
        assert_eq!(rollout.actual(), Some(&json!({"port": 0})));
        assert!(rollout.drifts().is_empty());
    }

    #[test]
    fn a_group_keeps_its_members_ordered_and_the_accessors_read_the_first() {
        let rollout = Rollout::for_group(
            "app=orders",
            [
                Member::new("b", json!({"v": 2})),
                Member::new("a", json!({"v": 2})).with_actual(json!({"v": 1})),
            ],
        );
        assert_eq!(rollout.group(), Some("app=orders"));
        assert!(rollout.is_group());
        let ids: Vec<&str> = rollout
            .members()
            .iter()
            .map(|m| m.instance_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(rollout.instance_id(), "a");
        assert_eq!(rollout.actual(), Some(&json!({"v": 1})));
        assert!(rollout.member("b").is_some_and(|m| m.actual.is_none()));
        assert!(rollout.member("c").is_none());
    }

    #[test]
    #[should_panic(expected = "at least one member")]
    fn a_group_without_members_is_refused() {
        let _ = Rollout::for_group("app=none", []);
    }
}
