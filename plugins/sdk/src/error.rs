//! The domain error a plugin returns (the contract's `plugin-error`).

/// Why a plugin could not do its work. A domain error, never a trap: panics, running out
/// of fuel or memory are reported by the host separately.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// An input configuration or the rollout state is not something the plugin accepts
    /// (for example not a JSON object). The text says what was wrong.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The parameters policy gave the plugin are invalid. The text names the parameter
    /// and what was expected.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// Any other failure, described for an operator.
    #[error("{0}")]
    Other(String),
}

impl PluginError {
    /// An [`PluginError::InvalidInput`] with `message`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// An [`PluginError::InvalidParams`] with `message`; name the parameter in it.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::InvalidParams(message.into())
    }

    /// An [`PluginError::Other`] with `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }
}
