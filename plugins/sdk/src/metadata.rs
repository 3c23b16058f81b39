//! What a plugin says about itself (the contract's `plugin-metadata` record).

use std::fmt;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// Implements the `comparator` world (exports `drift-comparator`).
    Comparator,
    /// Implements the `strategy` world (exports `rollout-strategy`).
    Strategy,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Comparator => "comparator",
            Self::Strategy => "strategy",
        })
    }
}

/// What a plugin says about itself. The host reads it when it loads the plugin; policy
/// refers to the plugin by `name` (and optionally `version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The name policy refers to, for example `field-diff`: lowercase ASCII letters,
    /// digits and `-`.
    pub name: String,
    /// The plugin's own semantic version; pass `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// The world the plugin implements.
    pub kind: PluginKind,
    /// One line that `setpoint plugins list` shows next to the name.
    pub description: String,
    /// For a strategy: whether it can roll one change out across a group of instances
    /// (a [`Rollout`](crate::Rollout) with several members); policy may group instances
    /// only under a strategy that says so. `false` unless set with
    /// [`Metadata::with_group_rollouts`]; always `false` for a comparator.
    pub group_rollouts: bool,
}

impl Metadata {
    /// Metadata of a comparator.
    pub fn comparator(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::new(PluginKind::Comparator, name, version, description)
    }

    /// Metadata of a strategy.
    pub fn strategy(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::new(PluginKind::Strategy, name, version, description)
    }

    /// Declare that this strategy handles group rollouts: it reads
    /// [`Rollout::members`](crate::Rollout::members) and converges every member. Without
    /// it the host never hands the strategy more than one member.
    #[must_use]
    pub fn with_group_rollouts(mut self) -> Self {
        self.group_rollouts = true;
        self
    }

    fn new(
        kind: PluginKind,
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            kind,
            description: description.into(),
            group_rollouts: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rollouts_are_off_unless_declared() {
        assert!(!Metadata::strategy("s", "0.1.0", "").group_rollouts);
        assert!(!Metadata::comparator("c", "0.1.0", "").group_rollouts);
        assert!(
            Metadata::strategy("s", "0.1.0", "")
                .with_group_rollouts()
                .group_rollouts
        );
    }
}
