//! Errors of the plugin runtime: why a file is not a usable plugin, and why a call into a
//! plugin failed.
//!
//! Loading errors ([`Error`]) name the file and say what to do. Call errors
//! ([`CallError`]) name the plugin, its version, the instance and the phase, and keep a
//! guest trap ([`CallFailure::Trap`], [`CallFailure::Timeout`],
//! [`CallFailure::OutOfMemory`]) apart from a domain error the plugin returned
//! ([`CallFailure::Plugin`]).

use std::time::Duration;

use super::inspect::World;

/// A boxed source error (wasmtime's own error type does not implement
/// `std::error::Error`, so it is converted into this).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of runtime operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the runtime could not load or call a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read plugin file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not WebAssembly at all.
    #[error(
        "{origin} is not a WebAssembly file: {detail}; a plugin is a `.wasm` component built with `scripts/build-plugins` or cargo-component"
    )]
    NotWasm {
        /// The file or name the bytes came from.
        origin: String,
        /// What was found instead.
        detail: String,
    },

    /// A core module was given where a component is needed.
    #[error(
        "{origin} is a core WebAssembly module, not a component; wrap it with `wasm-tools component new` (or build it with `scripts/build-plugins`, which does)"
    )]
    CoreModule {
        /// The file or name the bytes came from.
        origin: String,
    },

    /// The component is malformed.
    #[error("{origin} is not a valid WebAssembly component: {detail}")]
    Malformed {
        /// The file or name the bytes came from.
        origin: String,
        /// The parser's complaint.
        detail: String,
    },

    /// The component is valid but does not implement a plugin world.
    #[error("{origin} is not a setpoint plugin: {detail}")]
    NotAPlugin {
        /// The file or name the bytes came from.
        origin: String,
        /// What it exports or imports instead.
        detail: String,
    },

    /// A strategy imports a control-plane capability the configured control plane does
    /// not offer.
    #[error(
        "{origin} ({plugin}) needs the control-plane {what} {missing}, which the configured control plane does not offer (it offers: {offered}); use a strategy that does without, or a control plane that offers {missing}"
    )]
    MissingCapability {
        /// The file or name the bytes came from.
        origin: String,
        /// The plugin, `name@version`.
        plugin: String,
        /// `capability` or `capabilities`.
        what: &'static str,
        /// The capabilities it imports that are not offered, e.g. `clones, traffic`.
        missing: String,
        /// What the control plane offers, or `none of clones, traffic, metrics`.
        offered: String,
    },

    /// The component was built against a contract version this host does not run.
    #[error(
        "{origin} was built against {found}, but this host supports {supported}; rebuild the plugin with the matching setpoint-plugin SDK, or run a setpoint version that supports {found}"
    )]
    IncompatibleVersion {
        /// The file or name the bytes came from.
        origin: String,
        /// The version the plugin was built against.
        found: String,
        /// The versions this host supports.
        supported: String,
    },

    /// Wasmtime could not compile the component.
    #[error("cannot compile {origin}")]
    Compile {
        /// The file or name the bytes came from.
        origin: String,
        /// Wasmtime's error.
        #[source]
        source: BoxError,
    },

    /// The component needs imports the host does not provide.
    #[error(
        "cannot link {origin} as a {world} plugin; it imports [{imports}], the host provides setpoint:plugin@0.2.0's types and logging (and instances, clones, traffic, metrics to strategies), setpoint:plugin@0.1.0's types and logging (and control-plane to strategies), and WASI 0.2 without capabilities"
    )]
    Link {
        /// The file or name the bytes came from.
        origin: String,
        /// The world it claims.
        world: World,
        /// Its imports.
        imports: String,
        /// Wasmtime's error.
        #[source]
        source: BoxError,
    },

    /// The plugin's metadata is missing or wrong.
    #[error("{origin} has invalid metadata: {detail}")]
    Metadata {
        /// The file or name the bytes came from.
        origin: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The engine could not be set up (for example the pooling allocator could not
    /// reserve memory).
    #[error("cannot set up the plugin engine: {detail}")]
    Engine {
        /// What failed.
        detail: String,
    },

    /// The load-time smoke call failed: a comparator comparing `{}` with `{}` trapped,
    /// ran out of memory or overran its budget.
    #[error(
        "{origin} failed its smoke call (a comparator must compare `{{}}` with `{{}}` within {budget:?}); fix the plugin, the previous version keeps serving"
    )]
    SmokeCall {
        /// The file or name the bytes came from.
        origin: String,
        /// The smoke call's time budget.
        budget: Duration,
        /// The failed call.
        #[source]
        source: Box<CallError>,
    },

    /// A call into a plugin failed.
    #[error(transparent)]
    Call(#[from] Box<CallError>),
}

/// Which call into a plugin was being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading its metadata.
    Metadata,
    /// A comparator's `compare`.
    Compare,
    /// A strategy's `step`.
    Step,
    /// A strategy's `abort`.
    Abort,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Metadata => "metadata",
            Phase::Compare => "compare",
            Phase::Step => "step",
            Phase::Abort => "abort",
        })
    }
}

/// A call into a plugin that failed, with everything an operator needs to find it:
/// "comparator field-diff@0.1.0 on instance abc-123: compare trapped: …".
#[derive(Debug, thiserror::Error)]
#[error("{world} {plugin} on instance {instance}: {phase} {failure}")]
pub struct CallError {
    /// The plugin's world.
    pub world: World,
    /// `name@version` of the plugin.
    pub plugin: String,
    /// The instance being reconciled (`-` when there is none, as at load time).
    pub instance: String,
    /// Which call failed.
    pub phase: Phase,
    /// What happened.
    pub failure: CallFailure,
}

/// What went wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its time budget and was interrupted.
    #[error("ran past its time budget of {budget:?} and was stopped")]
    Timeout {
        /// The budget.
        budget: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("hit the memory cap of {limit} bytes (it asked for {requested} bytes) and was stopped")]
    OutOfMemory {
        /// The cap.
        limit: usize,
        /// The size it asked to grow to.
        requested: usize,
    },
    /// The guest trapped (panic, `unreachable`, bad memory access, …).
    #[error("trapped: {message}")]
    Trap {
        /// Wasmtime's description, with the guest backtrace when there is one.
        message: String,
    },
    /// An input was over [`MAX_JSON_BYTES`](super::MAX_JSON_BYTES).
    #[error("was not called: {what} is {len} bytes, more than the limit of {limit} bytes")]
    InputTooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin returned an error of its own (not a trap).
    #[error("returned an error: {0}")]
    Plugin(String),
    /// The plugin returned an answer the contract does not allow (a drift value that
    /// is not JSON text, a state over [`MAX_JSON_BYTES`](super::MAX_JSON_BYTES)); the
    /// host took none of it.
    #[error("returned an answer the host refused: {0}")]
    BadOutput(String),
}

impl CallError {
    /// Whether the guest misbehaved (trap, timeout, out of memory) rather than returning
    /// a domain error.
    pub fn is_trap(&self) -> bool {
        matches!(
            self.failure,
            CallFailure::Timeout { .. }
                | CallFailure::OutOfMemory { .. }
                | CallFailure::Trap { .. }
                | CallFailure::BadOutput(_)
        )
    }
}
