//! setpoint: an embeddable desired-state reconciliation host with WebAssembly plugins.
//!
//! Start reading at [`runtime`] (how plugins are loaded and called under limits).

pub mod cli;
pub mod config;
pub mod policy;
pub mod queue;
pub mod runtime;
pub mod store;
