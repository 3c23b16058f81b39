//! `rolling`: rolls one change out across a group of instances in batches of
//! `max_unavailable`, updating each member in place, each batch healthy for a while
//! before the next one starts. It imports no capability beyond `instances`, so it runs
//! on any control plane; `rolling-surge` adds surge clones.
//!
//! The engine, its parameters and its guarantees are `setpoint-rolling`'s (see its
//! crate docs); the user-facing description is `docs/strategies.md`.

pub use setpoint_rolling::Rolling;

setpoint_plugin::strategy!(Rolling);
