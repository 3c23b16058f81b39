//! Host bindings generated from `wit/` for every contract version the host serves.
//!
//! - [`v0_2`]: `setpoint:plugin@0.2.0` (`wit/setpoint.wit`), the current contract. Its
//!   types are the runtime's own: the rest of the host speaks 0.2.
//! - [`v0_1`]: `setpoint:plugin@0.1.0` (`wit/v0.1.0/setpoint.wit`), kept so components
//!   built against it load and run unchanged. The runtime converts at the boundary
//!   (`runtime::v0_1`).
//!
//! Within a version, the comparator world owns the shared `types` and `logging`
//! interfaces and the strategy world reuses them (`with:`), so a drift is one Rust type
//! on both sides.

/// Bindings of contract 0.2.0.
pub mod v0_2 {
    /// The `setpoint:plugin/comparator@0.2.0` world.
    pub mod comparator {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "setpoint:plugin/comparator@0.2.0",
        });
    }

    /// The `setpoint:plugin/strategy@0.2.0` world.
    pub mod strategy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "setpoint:plugin/strategy@0.2.0",
            with: {
                "setpoint:plugin/types@0.2.0": super::comparator::setpoint::plugin::types,
                "setpoint:plugin/logging@0.2.0": super::comparator::setpoint::plugin::logging,
            },
        });
    }

    pub use comparator::setpoint::plugin::{logging, types};
    pub use strategy::setpoint::plugin::{clones, instances, metrics, traffic};
}

/// Bindings of contract 0.1.0, served beside 0.2.0.
pub mod v0_1 {
    /// The `setpoint:plugin/comparator@0.1.0` world.
    pub mod comparator {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0",
            world: "setpoint:plugin/comparator@0.1.0",
        });
    }

    /// The `setpoint:plugin/strategy@0.1.0` world.
    pub mod strategy {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0",
            world: "setpoint:plugin/strategy@0.1.0",
            with: {
                "setpoint:plugin/types@0.1.0": super::comparator::setpoint::plugin::types,
                "setpoint:plugin/logging@0.1.0": super::comparator::setpoint::plugin::logging,
            },
        });
    }

    pub use comparator::setpoint::plugin::{logging, types};
    pub use strategy::setpoint::plugin::control_plane;
}

pub use v0_2::{clones, instances, logging, metrics, traffic, types};
