//! The JSON Patch applier of the reference control plane, compiled on its own: the
//! module has no dependency on the rest of its crate, and building the whole control
//! plane (axum, SQLite, tokio) with coverage instrumentation would cost CI minutes.
//! The host's targets use `setpoint_tests::fuzz` (feature `host`).

#[path = "../../examples/controlplane/src/patch.rs"]
pub mod patch;
