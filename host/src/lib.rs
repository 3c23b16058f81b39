//! setpoint: an embeddable desired-state reconciliation host with WebAssembly plugins.
//!
//! Start reading at [`runtime`] (how plugins are loaded and called under limits).

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod metrics;
pub mod metrics_provider;
pub mod policy;
pub mod queue;
pub mod reachability;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod tls;

/// An error and its causes on one line, `outer: cause: root cause`, for log fields and
/// one-line messages.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
