//! The SDK for setpoint plugins: drift comparators and rollout strategies written in Rust
//! and shipped as WebAssembly components of the `setpoint:plugin@0.2.0` contract
//! (`wit/setpoint.wit`, which this crate ships).
//!
//! Start reading at the two traits, [`Comparator`] and [`Strategy`], and the export macros
//! [`comparator!`] and [`strategy!`]. A plugin implements one trait on a type of its own
//! and exports it with the matching macro; the SDK turns the contract's JSON text into
//! [`serde_json::Value`]s, its records into [`Drift`], [`Rollout`] and [`Progress`], and
//! the control-plane imports (`instances` and the capabilities `clones`, `traffic`,
//! `metrics`) into a [`ControlPlane`] trait object.
//!
//! # A comparator in twenty lines
//!
//! `Cargo.toml`: `crate-type = ["cdylib", "rlib"]` and `setpoint-plugin.workspace = true`
//! (under that name: the export macros refer to `::setpoint_plugin`). No wit-bindgen
//! dependency and no feature is needed.
//!
//! ```
//! use setpoint_plugin::{Comparator, Drift, Metadata, PluginError, Value};
//!
//! /// Reports a changed `port`, and nothing else.
//! pub struct PortOnly;
//! setpoint_plugin::comparator!(PortOnly);
//!
//! impl Comparator for PortOnly {
//!     fn metadata() -> Metadata {
//!         Metadata::comparator("port-only", env!("CARGO_PKG_VERSION"), "Compares the port only")
//!     }
//!
//!     fn compare(desired: &Value, actual: &Value, _params: &Value) -> Result<Vec<Drift>, PluginError> {
//!         let (want, have) = (&desired["port"], &actual["port"]);
//!         if want == have {
//!             return Ok(Vec::new());
//!         }
//!         Ok(vec![Drift::changed("/port", want.clone(), have.clone())
//!             .with_message(format!("port: {have} -> {want}"))])
//!     }
//! }
//! ```
//!
//! Build it with `scripts/build-plugins`, which compiles every crate marked
//! `[package.metadata.setpoint] plugin = true` for `wasm32-unknown-unknown` and wraps the
//! core module into a component at `target/plugins/<name>.wasm`.
//!
//! # A strategy in thirty lines
//!
//! Same `Cargo.toml`; a strategy that only stops and starts its instance needs no
//! capability feature (see below).
//!
//! ```
//! use setpoint_plugin::{ControlPlane, Metadata, Progress, Rollout, Strategy};
//!
//! /// Stops the instance and starts it with the desired configuration.
//! pub struct StopStart;
//! setpoint_plugin::strategy!(StopStart);
//!
//! impl Strategy for StopStart {
//!     fn metadata() -> Metadata {
//!         Metadata::strategy("stop-start", env!("CARGO_PKG_VERSION"), "Stop, then start")
//!     }
//!
//!     fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
//!         let id = rollout.instance_id();
//!         if let Err(e) = cp.stop(id).and_then(|()| cp.start(id, Some(rollout.desired()))) {
//!             return Progress::failed(format!("restarting {id}: {e}"), true);
//!         }
//!         Progress::done(format!("restarted {id}"))
//!     }
//!
//!     fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
//!         match rollout.actual() {
//!             Some(previous) => match cp.start(rollout.instance_id(), Some(previous)) {
//!                 Ok(()) => Progress::done("restarted with the previous configuration"),
//!                 Err(e) => Progress::failed(format!("abort: {e}"), true),
//!             },
//!             None => Progress::done("nothing known to restore"),
//!         }
//!     }
//! }
//! ```
//!
//! # One world per plugin, no features to pick
//!
//! A component implements one world, and wit-component builds it from the
//! `component-type` custom sections in the core module, *merging* all of them: a module
//! that carried both worlds would be asked to export both interfaces. So the world's
//! bindings are not generated in this crate. [`comparator!`] and [`strategy!`] expand,
//! on wasm32, to `wit_bindgen::generate!` for their world *in the plugin's crate*, from
//! the WIT text this crate ships (`build.rs` writes it into a hidden `macro_rules!`,
//! because `generate!` takes its WIT as a literal only); the types and imports of that
//! world are mapped (`with`) onto this crate's own bindings. This crate's bindings are
//! of a world of imports only (`setpoint:sdk/imports`: every import of the contract, no
//! export), which the SDK needs to log, report panics and implement
//! `HostControlPlane`; merged with the plugin's world it adds no export, and
//! wit-component drops from the component every import the module never calls. One
//! crate builds for either world, and a crate that depends on both kinds (tests, the
//! host's tools) needs nothing special. The bindings exist on `wasm32` only; native
//! builds (unit tests, clippy, benchmarks) see the idiomatic types and traits, and the
//! export macros then only check that the trait is implemented.
//!
//! Chosen over a `path:` to this crate's directory (computed in `build.rs`): the inline
//! text works the same from a registry or a vendored copy and from any directory.
//!
//! # Capabilities: cargo features `clones`, `traffic`, `metrics`
//!
//! A strategy's component imports `setpoint:plugin/instances` and `logging`, and the
//! optional capability interfaces `clones`, `traffic` and `metrics` only if it calls
//! them; the host refuses at load time a strategy that needs a capability its control
//! plane lacks. A strategy gets its control plane as `&mut dyn ControlPlane`, and a
//! trait object's vtable references every method, so "whatever it calls" would keep
//! every import alive. Instead each capability is an *additive* cargo feature of this
//! crate that adds the [`ControlPlane`] methods of its interface
//! (`clone_instance`/`delete_clone` with `clones`,
//! `set_traffic_weights` with `traffic`, `get_counters`/`query` with `metrics`): a
//! strategy declares what it needs in its `Cargo.toml`
//! (`setpoint-plugin = { workspace = true, features = ["clones", "traffic"] }`), and
//! calling a method it did not declare does not compile. Features unify: a crate built
//! together with one that enables a capability (a workspace-wide `cargo test`) sees the
//! methods too, which is harmless natively; `scripts/build-plugins` builds each plugin
//! in its own cargo invocation, so its component imports only what its own dependency
//! graph declares. Comparators need no feature.
//!
//! # Group rollouts
//!
//! A [`Rollout`] carries [`Rollout::members`]: one for a rollout of one instance, every
//! member of the group for a group rollout ([`Rollout::group`] names it). The host hands
//! a strategy more than one member only if its metadata says it can
//! ([`Metadata::with_group_rollouts`]); without that, [`Rollout::instance_id`],
//! [`Rollout::desired`], [`Rollout::actual`] and [`Rollout::drifts`] are the one member's.
//! On a group rollout they are the *first* member's (lowest instance id), so a
//! group-aware strategy reads the members instead.
//!
//! # Memory
//!
//! The host runs every call in a fresh instance and discards it afterwards, so on wasm32
//! the SDK installs an allocator built for that (the default `arena` feature; see
//! `src/arena.rs`): blocks come from a bump pointer over a 256 KiB region reserved in the
//! module, freed blocks are reused per size class, and linear memory grows only when a
//! call needs more. It does far less work per allocation than Rust's default
//! allocator and lets a typical call run without growing memory, which the host pays for
//! with page-table changes. It rounds blocks up (to 16 bytes, and to a power of two above
//! 1 KiB), so a plugin that churns through large buffers of ever-different sizes in one
//! call can reach the host's memory cap sooner; such a plugin depends on the SDK with
//! `default-features = false` to get Rust's default allocator back. The comparator export
//! also leaves the parsed configurations to the instance's teardown instead of freeing
//! them. On `wasm32-unknown-unknown` the SDK supplies a word-at-a-time `memcmp` in place
//! of the byte loop Rust's runtime library ships for that target.
//!
//! # Speed
//!
//! A fresh instance per call also means every first use is paid on every call. The one
//! that is easy to trip over is `format!`/`to_string()`/`write!`: `fmt` calls through
//! vtables, and each vtable method an instance calls is a function-table slot the host
//! fills on first use, about 140 ns each. The SDK's drift builders avoid `fmt`; in a hot
//! path, build strings with `push_str`. The host's benchmark
//! (`SETPOINT_BENCH_COMPARE=a.wasm,b.wasm cargo bench -p setpoint --bench plugins`) puts
//! two builds of a comparator side by side.
//!
//! # Testing natively
//!
//! Everything a plugin's logic touches runs natively: call [`compare_wire`] (exactly what
//! the Wasm export runs, minus the canonical ABI), [`compare_json`] (the same before the
//! drifts become the contract's records) or your trait methods directly, drive a
//! strategy with [`testing::FakeControlPlane`], which answers from a script and records
//! every call, and read log lines back with [`testing::take_logs`].
//!
//! # Writing a strategy
//!
//! A strategy's `step` is called until it returns done or failed; it never blocks and
//! has no clock, so it measures every wait with [`Rollout::elapsed`] and returns
//! [`Progress::requeue`]. The host may call the same step again with the same state
//! after a crash, so a step must be safe to replay (record a clone's id in the state as
//! soon as `clone_instance` returns, and treat `not-found` on a recorded clone as
//! already deleted). What the SDK offers for it:
//!
//! - **Parameters.** [`Rollout::param_or`], [`Rollout::duration_param_or`] (module
//!   [`duration`]: `"500ms"`, `"10s"`, `"2m"`, `"1h"` or a number of milliseconds) and
//!   [`Rollout::check_params`], which refuses unknown keys but accepts the host's
//!   reserved `$` keys.
//! - **Reserved parameters.** The host adds `$approval` (the policy's approval gate,
//!   [`Rollout::approval`], [`Rollout::approval_before_promote`]) and, on the one call
//!   that delivers an operator's `setpoint promote`, `$promote`
//!   ([`Rollout::promote`]: [`Promote::Step`] ends the current pause, analysis or
//!   approval wait; [`Promote::Full`] skips to full promotion). An `await-approval` always
//!   holds until an operator approves or promotes, so ask only when you mean it: in a
//!   step the params ask for, and before full promotion when `$approval` is
//!   `before-promote` (or your own params say so).
//! - **Status.** Put a [`RolloutStatus`] under the top-level `"status"` key of your state
//!   (module [`status`]): the host shows it, audits its changes and does not count a
//!   `paused` wait against the rollout's progress deadline.
//! - **Canary building blocks.** [`steps::CanarySteps`] parses a list of weight, pause
//!   and analysis steps; [`analysis::AnalysisRun`] measures an error rate over intervals
//!   from two counter readings and judges it.
//! - **Tests.** [`testing::FakeControlPlane`] keeps clones, endpoint weights and every
//!   time traffic went to an instance that was not running or healthy;
//!   [`testing::Driver`] plays the host, step after step.
//!
//! The shipped `blue-green` and `canary` strategies are built from these, on a shared
//! engine (`plugins/progressive`); `docs/strategies.md` describes them for operators.
//!
//! # Without the SDK
//!
//! The contract is plain WIT, so the SDK is a convenience, not a requirement. The raw
//! route is about ten lines (build for `wasm32-unknown-unknown`, then wrap with
//! `setpoint-componentize`; with raw bindings a panic reaches the host only as a trap,
//! unless the plugin reports it with `logging.trap-reason` itself):
//!
//! ```ignore
//! wit_bindgen::generate!({ path: "../../wit", world: "setpoint:plugin/comparator@0.2.0" });
//!
//! use exports::setpoint::plugin::drift_comparator::{Guest, PluginMetadata};
//! use setpoint::plugin::types::{Drift, PluginError, PluginKind};
//!
//! struct Raw;
//! impl Guest for Raw {
//!     fn metadata() -> PluginMetadata {
//!         PluginMetadata { name: "raw".into(), version: "0.1.0".into(), kind: PluginKind::Comparator, description: "raw bindings".into(), group_rollouts: false }
//!     }
//!     fn compare(_desired: String, _actual: String, _params: String) -> Result<Vec<Drift>, PluginError> { Ok(vec![]) }
//! }
//! export!(Raw);
//! ```

// The arena is the global allocator only on wasm32 with the `arena` feature; natively
// its logic is compiled for its unit tests alone.
pub mod analysis;
#[cfg_attr(not(all(target_arch = "wasm32", feature = "arena")), allow(dead_code))]
mod arena;
mod control_plane;
mod drift;
pub mod duration;
mod error;
pub mod log;
// Word-at-a-time `memcmp` for wasm32-unknown-unknown; natively only its tests use it.
#[cfg_attr(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    allow(dead_code)
)]
mod memcmp;
mod metadata;
pub mod pointer;
mod rollout;
pub mod status;
pub mod steps;
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use control_plane::{
    BackendWeight, ControlPlane, ControlPlaneError, Counters, Health, InstanceInfo, InstanceStatus,
    RuntimeStatus,
};
pub use drift::{Drift, DriftKind, WireDrift};
pub use error::PluginError;
pub use metadata::{Metadata, PluginKind};
pub use rollout::{
    APPROVAL_PARAM, Approval, Member, PROMOTE_PARAM, Progress, Promote, RESERVED_PARAM_PREFIX,
    Rollout, is_reserved_param,
};
pub use serde_json::{self, Value};
pub use status::{AnalysisFigures, RolloutStatus, Verdict};

#[cfg(target_arch = "wasm32")]
pub use control_plane::HostControlPlane;

/// A drift comparator: a pure function from two configurations to the list of drifts.
///
/// Export an implementation with [`comparator!`]. The SDK parses the contract's JSON
/// text first: a desired or actual configuration that is not JSON is reported as
/// [`PluginError::InvalidInput`], params that are not JSON as
/// [`PluginError::InvalidParams`], before `compare` is called.
pub trait Comparator {
    /// Describe the plugin; use [`Metadata::comparator`].
    fn metadata() -> Metadata;

    /// List how `actual` differs from `desired` under `params` (a JSON object, `{}` when
    /// policy sets none). An empty list means no drift.
    fn compare(desired: &Value, actual: &Value, params: &Value) -> Result<Vec<Drift>, PluginError>;
}

/// A rollout strategy: converges one instance (or, with
/// [`Metadata::with_group_rollouts`], a group of them), one non-blocking step at a time.
///
/// Export an implementation with [`strategy!`]. The host calls [`Strategy::step`] until
/// it returns [`Progress::Done`] or [`Progress::Failed`]; to wait, return
/// [`Progress::requeue`] with the state the next step needs.
pub trait Strategy {
    /// Describe the plugin; use [`Metadata::strategy`].
    fn metadata() -> Metadata;

    /// Take the next step of `rollout`, acting through `cp`. Never block.
    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress;

    /// Undo what the rollout has done so far, starting from the state of its last step.
    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress;
}

/// Parse the contract's JSON text and run `C::compare`: what the Wasm export of a
/// comparator runs before it converts the drifts to the contract's records
/// ([`compare_wire`] does that too). Plugin crates re-export it natively for tests.
pub fn compare_json<C: Comparator>(
    desired: &str,
    actual: &str,
    params: &str,
) -> Result<Vec<Drift>, PluginError> {
    let [desired, actual, params] = parse_compare_inputs(desired, actual, params)?;
    C::compare(&desired, &actual, &params)
}

/// [`compare_json`], then each drift as the record the contract carries
/// ([`Drift::into_wire`]: values as compact JSON text). Natively, this is exactly what a
/// comparator's Wasm `compare` export runs, minus the canonical ABI and minus freeing the
/// parsed documents (the export leaves that to the instance's teardown); the host's
/// benchmark measures a component against it.
pub fn compare_wire<C: Comparator>(
    desired: &str,
    actual: &str,
    params: &str,
) -> Result<Vec<WireDrift>, PluginError> {
    compare_json::<C>(desired, actual, params)
        .map(|drifts| drifts.into_iter().map(Drift::into_wire).collect())
}

/// The desired and actual configurations and the params of a `compare` call, parsed.
pub(crate) fn parse_compare_inputs(
    desired: &str,
    actual: &str,
    params: &str,
) -> Result<[Value; 3], PluginError> {
    let desired: Value = serde_json::from_str(desired).map_err(|e| {
        PluginError::InvalidInput(format!("the desired configuration is not JSON: {e}"))
    })?;
    let actual: Value = serde_json::from_str(actual).map_err(|e| {
        PluginError::InvalidInput(format!("the actual configuration is not JSON: {e}"))
    })?;
    let params: Value = if params.trim().is_empty() {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(params)
            .map_err(|e| PluginError::InvalidParams(format!("params are not JSON: {e}")))?
    };
    Ok([desired, actual, params])
}

// The SDK's own bindings: the contract's imports only, so the SDK can call them (log
// lines, the panic hook, `HostControlPlane`). The world a plugin exports is generated in
// the plugin's crate by the export macros below, from `__generate_world!` (`build.rs`).
#[cfg(target_arch = "wasm32")]
include!(concat!(env!("OUT_DIR"), "/generate_world.rs"));

/// wit-bindgen's output for the contract's imports. Not a public API: use the idiomatic
/// types and the export macros instead.
///
/// The world is `setpoint:sdk/imports`, every import of the contract and no export: the
/// `component-type` section it leaves in a module merges with the exported world's
/// without adding an export, and wit-component drops from the component every import
/// the module does not call.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
// Generated code: its canonical-ABI glue is `unsafe` by nature and cannot be written
// otherwise, and it is not ours to restyle.
#[allow(unsafe_code, missing_debug_implementations, clippy::all)]
pub mod __bindings {
    wit_bindgen::generate!({
        inline: "
            package setpoint:sdk;
            world imports {
                import setpoint:plugin/types@0.2.0;
                import setpoint:plugin/logging@0.2.0;
                import setpoint:plugin/instances@0.2.0;
                import setpoint:plugin/clones@0.2.0;
                import setpoint:plugin/traffic@0.2.0;
                import setpoint:plugin/metrics@0.2.0;
            }
        ",
        path: "wit",
        world: "setpoint:sdk/imports",
        generate_all,
    });
}

/// The wasm32 expansion of this macro; see its native documentation.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! comparator {
    ($ty:ty) => {
        /// The bindings of the `comparator` world, generated in this crate (so that its
        /// module describes this world only). Types and imports come from the SDK.
        #[doc(hidden)]
        #[allow(unsafe_code, missing_debug_implementations, unused, clippy::all)]
        mod __setpoint_comparator_world {
            $crate::__generate_world!("comparator", {
                "setpoint:plugin/types@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::types,
                "setpoint:plugin/logging@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::logging,
            });
        }

        // The export glue wit-bindgen generates (`#[export_name]` functions, raw
        // pointers into linear memory) is `unsafe` by nature; nothing else is here.
        #[allow(unsafe_code)]
        const _: () = {
            struct __SetpointComparatorExport;

            impl __setpoint_comparator_world::exports::setpoint::plugin::drift_comparator::Guest
                for __SetpointComparatorExport
            {
                fn metadata() -> $crate::__bindings::setpoint::plugin::types::PluginMetadata {
                    $crate::__private::metadata_to_wire(<$ty as $crate::Comparator>::metadata())
                }

                fn compare(
                    desired: ::std::string::String,
                    actual: ::std::string::String,
                    params: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::__bindings::setpoint::plugin::types::Drift>,
                    $crate::__bindings::setpoint::plugin::types::PluginError,
                > {
                    $crate::__private::compare_export::<$ty>(&desired, &actual, &params)
                }
            }

            __setpoint_comparator_world::export!(
                __SetpointComparatorExport with_types_in __setpoint_comparator_world
            );
        };
    };
}

/// Export a [`Comparator`] implementation as the component's `drift-comparator`.
///
/// ```
/// # use setpoint_plugin::{Comparator, Drift, Metadata, PluginError, Value};
/// # pub struct Nothing;
/// # impl Comparator for Nothing {
/// #     fn metadata() -> Metadata { Metadata::comparator("nothing", "0.1.0", "No drift") }
/// #     fn compare(_: &Value, _: &Value, _: &Value) -> Result<Vec<Drift>, PluginError> { Ok(vec![]) }
/// # }
/// setpoint_plugin::comparator!(Nothing);
/// ```
///
/// Use it once per crate, at the crate root or in any module. On wasm32 it generates the
/// `comparator` world's bindings in the calling crate (a hidden module
/// `__setpoint_comparator_world`), implements their `Guest` trait by converting types,
/// and exports it; elsewhere it only checks that the type implements [`Comparator`].
/// The expansion names the SDK as `::setpoint_plugin`: depend on it under that name.
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! comparator {
    ($ty:ty) => {
        const _: () = {
            fn __setpoint_assert_comparator<T: $crate::Comparator>() {}
            let _: fn() = __setpoint_assert_comparator::<$ty>;
        };
    };
}

/// The wasm32 expansion of this macro; see its native documentation.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! strategy {
    ($ty:ty) => {
        /// The bindings of the `strategy` world, generated in this crate (so that its
        /// module describes this world only). Types and imports come from the SDK.
        #[doc(hidden)]
        #[allow(unsafe_code, missing_debug_implementations, unused, clippy::all)]
        mod __setpoint_strategy_world {
            $crate::__generate_world!("strategy", {
                "setpoint:plugin/types@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::types,
                "setpoint:plugin/logging@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::logging,
                "setpoint:plugin/instances@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::instances,
                "setpoint:plugin/clones@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::clones,
                "setpoint:plugin/traffic@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::traffic,
                "setpoint:plugin/metrics@0.2.0": ::setpoint_plugin::__bindings::setpoint::plugin::metrics,
            });
        }

        // See `comparator!`: the generated export glue is `unsafe` by nature.
        #[allow(unsafe_code)]
        const _: () = {
            struct __SetpointStrategyExport;

            impl __setpoint_strategy_world::exports::setpoint::plugin::rollout_strategy::Guest
                for __SetpointStrategyExport
            {
                fn metadata() -> $crate::__bindings::setpoint::plugin::types::PluginMetadata {
                    $crate::__private::metadata_to_wire(<$ty as $crate::Strategy>::metadata())
                }

                fn step(
                    rollout: $crate::__bindings::setpoint::plugin::types::Rollout,
                ) -> $crate::__bindings::setpoint::plugin::types::Progress {
                    $crate::__private::step_export(rollout, <$ty as $crate::Strategy>::step)
                }

                fn abort(
                    rollout: $crate::__bindings::setpoint::plugin::types::Rollout,
                ) -> $crate::__bindings::setpoint::plugin::types::Progress {
                    $crate::__private::step_export(rollout, <$ty as $crate::Strategy>::abort)
                }
            }

            __setpoint_strategy_world::export!(
                __SetpointStrategyExport with_types_in __setpoint_strategy_world
            );
        };
    };
}

/// Export a [`Strategy`] implementation as the component's `rollout-strategy`.
///
/// ```
/// # use setpoint_plugin::{ControlPlane, Metadata, Progress, Rollout, Strategy};
/// # pub struct Noop;
/// # impl Strategy for Noop {
/// #     fn metadata() -> Metadata { Metadata::strategy("noop", "0.1.0", "Does nothing") }
/// #     fn step(_: &Rollout, _: &mut dyn ControlPlane) -> Progress { Progress::done("nothing to do") }
/// #     fn abort(_: &Rollout, _: &mut dyn ControlPlane) -> Progress { Progress::done("nothing to undo") }
/// # }
/// setpoint_plugin::strategy!(Noop);
/// ```
///
/// Use it once per crate. On wasm32 it generates the `strategy` world's bindings in the
/// calling crate (a hidden module `__setpoint_strategy_world`) and implements their
/// `Guest` trait, handing the strategy a [`ControlPlane`] over the real imports;
/// elsewhere it only checks that the type implements [`Strategy`]. The expansion names
/// the SDK as `::setpoint_plugin`: depend on it under that name.
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! strategy {
    ($ty:ty) => {
        const _: () = {
            fn __setpoint_assert_strategy<T: $crate::Strategy>() {}
            let _: fn() = __setpoint_assert_strategy::<$ty>;
        };
    };
}

#[cfg(test)]
mod wit_copy_tests {
    use std::path::Path;

    /// The crate docs promise a comparator in twenty lines and a strategy in thirty; the
    /// examples that show it (compiled and run as doc tests) must stay that short.
    #[test]
    fn the_minimal_examples_stay_within_twenty_and_thirty_lines() {
        let docs = include_str!("lib.rs");
        let example = |heading: &str| -> usize {
            let after = docs
                .split_once(heading)
                .unwrap_or_else(|| panic!("the crate docs lost `{heading}`"))
                .1;
            let block = after
                .split_once("//! ```\n")
                .expect("an example under the heading")
                .1;
            block.lines().take_while(|l| l.trim() != "//! ```").count()
        };
        let comparator = example("# A comparator in twenty lines");
        let strategy = example("# A strategy in thirty lines");
        assert!(
            comparator <= 20,
            "the minimal comparator has {comparator} lines"
        );
        assert!(strategy <= 30, "the minimal strategy has {strategy} lines");
    }

    /// The SDK builds from its own copy of the contract (`plugins/sdk/wit/setpoint.wit`,
    /// so that the crate packages on its own); it must be the project's contract byte for
    /// byte. Outside the workspace (a packaged copy of this crate) there is nothing to
    /// compare with.
    #[test]
    fn the_shipped_wit_is_the_projects_contract() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let project = manifest.join("../../wit/setpoint.wit");
        let Ok(expected) = std::fs::read(&project) else {
            eprintln!(
                "{} is absent: not in the workspace, nothing to compare",
                project.display()
            );
            return;
        };
        let shipped = std::fs::read(manifest.join("wit/setpoint.wit"))
            .expect("the SDK ships wit/setpoint.wit");
        assert!(
            shipped == expected,
            "plugins/sdk/wit/setpoint.wit differs from wit/setpoint.wit; refresh it with\n    \
             cp wit/setpoint.wit plugins/sdk/wit/setpoint.wit\n(from the repository root)"
        );
    }
}
