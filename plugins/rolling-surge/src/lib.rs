//! `rolling-surge`: `rolling` with surge clones. Up to `max_surge` members of a batch are
//! covered: a clone with the desired configuration takes the member's traffic while the
//! member is updated, so with `max_unavailable = 0` no member's endpoint ever loses its
//! traffic. It imports the `clones` and `traffic` capabilities, so a control plane
//! without them refuses it at load.
//!
//! The engine, its parameters and its guarantees are `setpoint-rolling`'s (see its
//! crate docs); the user-facing description is `docs/strategies.md`.

pub use setpoint_rolling::RollingSurge;

setpoint_plugin::strategy!(RollingSurge);
