//! Platforms that run instances: [`process`] (a real `drasi-stub` OS process per
//! instance) and [`simulated`] (records only, for scale benchmarks).
//!
//! The control plane ([`crate::service`]) decides *what* happens to an instance and
//! records it; a platform only runs, stops and probes.

pub mod process;
pub mod simulated;

pub use process::{ExitEvent, ExitInfo, Launched, PlatformError, ProcessPlatform, ProcessSettings};
