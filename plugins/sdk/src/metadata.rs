//! What a plugin says about itself (the contract's `metadata` record).

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
        }
    }
}
