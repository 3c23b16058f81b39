//! Host bindings generated from `wit/` for the two plugin worlds.
//!
//! The comparator world owns the shared `types` and `logging` interfaces; the strategy
//! world reuses them (`with:`), so a [`Drift`](comparator::setpoint::plugin::types::Drift)
//! is one Rust type on both sides.

/// Bindings for the `setpoint:plugin/comparator` world.
pub mod comparator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "setpoint:plugin/comparator",
    });
}

/// Bindings for the `setpoint:plugin/strategy` world.
pub mod strategy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "setpoint:plugin/strategy",
        with: {
            "setpoint:plugin/types": super::comparator::setpoint::plugin::types,
            "setpoint:plugin/logging": super::comparator::setpoint::plugin::logging,
        },
    });
}

pub use comparator::setpoint::plugin::logging;
pub use comparator::setpoint::plugin::types;
pub use strategy::setpoint::plugin::control_plane;
