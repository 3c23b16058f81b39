//! The plugin runtime: loads comparator and strategy components and calls them in a
//! sandbox, under a time budget and a memory cap.
//!
//! Start at [`PluginRuntime`]. It follows wasmtime's canonical order: one [`Engine`] per
//! process (pooling allocator, copy-on-write memory images, epoch interruption), one
//! [`Linker`] built at start, one `InstancePre` per loaded plugin (kept in [`Plugin`]),
//! and a fresh [`Store`] per call behind a gate smaller than the pool. [`inspect`] tells
//! what a file is before anything is compiled; [`scope`] implements the strategy's
//! `control-plane` imports, restricted to one rollout.
//!
//! Calls are synchronous and CPU-bound: an async caller runs them on a blocking thread
//! (`tokio::task::spawn_blocking`).

pub mod bindings;
mod error;
mod gate;
mod host;
pub mod inspect;
pub mod scope;
mod v0_1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

/// The `plugin-metadata` record as a plugin returns it, before validation.
pub use bindings::types::PluginMetadata as WireMetadata;
pub use bindings::types::{
    AwaitApproval, Drift, DriftKind, Failure, Member, PluginError, PluginKind, Progress, Requeue,
    Rollout,
};
use bindings::v0_1::comparator::ComparatorPre as ComparatorPre01;
use bindings::v0_1::strategy::StrategyPre as StrategyPre01;
use bindings::v0_2::comparator::ComparatorPre;
use bindings::v0_2::strategy::StrategyPre;
pub use error::{BoxError, CallError, CallFailure, Error, Phase, Result};
use gate::Gate;
use host::HostState;
pub use inspect::{Capability, ComponentShape, Contract, World};
pub use scope::{CallOutcome, ImportCall, RolloutScope, ScopedControlPlane, StrategyHost, Weight};

/// Default cap on a plugin's linear memory. Configurations are kilobytes; 64 MiB leaves
/// room for JSON work on documents of megabytes and still stops a runaway guest long
/// before it matters to the host.
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Default time budget of one plugin call: the plugin's own execution. A strategy's time
/// blocked in its control-plane imports is not counted (each request has its own
/// timeout); see [`PluginRuntime`]'s calls. A comparator takes microseconds and a
/// strategy step's own work little more; five seconds is generous for both and still
/// bounds a stuck plugin well inside a reconcile timeout.
pub const PLUGIN_CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Time budget of the smoke call a comparator must pass before it is offered to policy
/// (`compare` of `{}` with `{}`). A healthy comparator answers in microseconds; a
/// quarter of a second still allows a cold instance on a loaded machine, and keeps a
/// plugin that loops from holding up the directory scan for the full call budget.
pub const SMOKE_CALL_DEADLINE: Duration = Duration::from_millis(250);

/// How often the engine's epoch advances. The time budget is enforced in these steps,
/// so a call overruns its budget by at most one tick; 10 ms keeps the ticker thread's
/// cost negligible.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest JSON document (configuration, parameters, state) handed to a plugin. DRaaS
/// configurations are a few kilobytes; 4 MiB bounds the copy into guest memory well
/// under [`MAX_PLUGIN_MEMORY_BYTES`].
pub const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// Default number of plugin calls that run at once. Calls are CPU-bound, so more than a
/// few per core only adds latency; the pool below is sized larger than this.
pub const MAX_CONCURRENT_CALLS: usize = 16;

/// Component instances the pooling allocator reserves. Larger than
/// [`MAX_CONCURRENT_CALLS`] so loading (metadata calls) never starves calls.
const POOL_COMPONENT_INSTANCES: u32 = 64;

/// Core instances, memories and tables the pool reserves: a Rust component has one core
/// module plus a few small shim modules (more with the WASI adapter).
const POOL_CORE_INSTANCES: u32 = POOL_COMPONENT_INSTANCES * 8;
const POOL_MEMORIES: u32 = POOL_COMPONENT_INSTANCES * 2;
const POOL_TABLES: u32 = POOL_COMPONENT_INSTANCES * 4;

/// Dirty bytes of each pooled linear memory that are reset in place (copied back from
/// the module's image, or zeroed) and kept resident when an instance is torn down,
/// instead of being handed back to the kernel and faulted in again by the next instance.
/// With `PAGEMAP_SCAN` (Linux 6.7 and later; used when the kernel has it) only pages the
/// call actually wrote are reset, so a call that touches 100 KiB costs 100 KiB of copying
/// however large this is; without it the first this-many bytes are reset every time.
/// 1 MiB covers a plugin built by `scripts/build-plugins` (128 KiB stack, data, and the
/// SDK arena's first 256 KiB) with room to spare; what a call writes beyond it is
/// released with `madvise`. Measured with `benches/plugins.rs` (see `BENCHMARKS.md`).
const POOL_KEEP_RESIDENT_BYTES: usize = 1024 * 1024;

/// [`POOL_KEEP_RESIDENT_BYTES`] on kernels without `PAGEMAP_SCAN`, where every byte of
/// it is reset on every call: the stack, data and first heap pages of a typical call.
const POOL_KEEP_RESIDENT_BYTES_NO_PAGEMAP: usize = 512 * 1024;

/// Components at least this large are compiled by a second engine without cross-function
/// inlining and instantiated on demand instead of from the pool. Components from
/// toolchains that embed a language runtime (JavaScript through componentize-js, Python)
/// are tens of megabytes: with inlining, compiling one 18 MB component took 19 s and
/// 8 GB of memory, without it 5.5 s and 373 MB. Rust plugins are well under 1 MiB, and
/// keep the about 5 % per call that inlining buys.
pub const LARGE_COMPONENT_BYTES: usize = 4 * 1024 * 1024;

/// Compilations that run at once in one runtime (the daemon's plugin directory scans one
/// file at a time; `plugins list DIR` and embedders may load from several threads).
/// Compiling is memory-heavy (with inlining, a Rust plugin of 400 KB peaks at about
/// 200 MB; a component of tens of megabytes at hundreds) and CPU-bound, so one at a
/// time bounds both; loads from the compilation cache wait behind it too, which costs
/// milliseconds.
pub const MAX_CONCURRENT_COMPILES: usize = 1;

/// Compiler threads a child process compiling a component of [`LARGE_COMPONENT_BYTES`]
/// or more may use (`RAYON_NUM_THREADS`): a large component takes seconds of CPU, and
/// one thread leaves the other cores to the daemon's reconciles and plugin calls.
pub const LARGE_COMPILE_THREADS: usize = 1;

/// Bytes of each pooled table kept resident, for the same reason (tables are small).
const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Settings of the plugin runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Time budget of one plugin call: its own execution, not the time a strategy spends
    /// blocked in a control-plane import. Default [`PLUGIN_CALL_DEADLINE`].
    pub call_deadline: Duration,
    /// Cap on a plugin's linear memory in bytes. Default [`MAX_PLUGIN_MEMORY_BYTES`].
    pub max_memory_bytes: usize,
    /// Plugin calls that may run at once. Default [`MAX_CONCURRENT_CALLS`].
    pub max_concurrent_calls: usize,
    /// Where compiled plugins are cached, keyed by content digest and engine settings;
    /// `None` compiles every time. Default `None` (the daemon sets one under its state
    /// directory).
    pub cache_dir: Option<PathBuf>,
    /// Instantiate from a pre-reserved pool (fast) rather than on demand. Default on;
    /// off only to compare the two in benchmarks.
    pub pooling: bool,
    /// The optional control-plane capabilities the embedder's control plane offers.
    /// `Some`: a strategy that imports any other is refused when it is validated
    /// ([`PluginRuntime::smoke`]), with the reason. `None` (default): not known, not
    /// checked at load (a call the control plane lacks answers `unavailable`).
    pub offered_capabilities: Option<Vec<Capability>>,
    /// Write `/tmp/perf-<pid>.map` so `perf report` names the functions of compiled
    /// plugins (for profiling; `benches/plugins.rs` turns it on with
    /// `SETPOINT_BENCH_PERFMAP=1`). Default off.
    pub perf_map: bool,
    /// A program that compiles components in a child process: `PROGRAM plugins compile
    /// …` with the component on its standard input (see [`compile_args`](Self::compile_args)
    /// and [`precompile`]), which writes the compiled code into
    /// [`cache_dir`](Self::cache_dir); this process then loads it from the cache. The
    /// compiler's memory peak (about 200 MB for a Rust plugin of 400 KB with inlining,
    /// hundreds for a component of tens of megabytes) is then the child's, returned to
    /// the system when it exits, not this process's high-water mark. Used only with a
    /// `cache_dir`; when the child fails, the component is compiled in this process
    /// (which reports the compile error, if that is what it was). `setpoint run` sets
    /// its own executable. Default `None`: compile in this process.
    pub compiler: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            call_deadline: PLUGIN_CALL_DEADLINE,
            max_memory_bytes: MAX_PLUGIN_MEMORY_BYTES,
            max_concurrent_calls: MAX_CONCURRENT_CALLS,
            cache_dir: None,
            pooling: true,
            offered_capabilities: None,
            perf_map: false,
            compiler: None,
        }
    }
}

impl RuntimeConfig {
    /// The arguments after the program's name of the child that compiles a component for
    /// a runtime with these settings: `plugins compile` and every setting that goes into
    /// the engine's configuration, so the child's engine is this one's and its cache
    /// entries are the ones this runtime looks up.
    pub fn compile_args(&self) -> Vec<String> {
        let mut args = vec!["plugins".to_owned(), "compile".to_owned()];
        if let Some(dir) = &self.cache_dir {
            args.push("--cache-dir".to_owned());
            args.push(dir.display().to_string());
        }
        args.push("--max-memory-bytes".to_owned());
        args.push(self.max_memory_bytes.to_string());
        if !self.pooling {
            args.push("--no-pooling".to_owned());
        }
        if self.perf_map {
            args.push("--perf-map".to_owned());
        }
        args
    }
}

/// The child's side of [`RuntimeConfig::compiler`]: compile `bytes` (a component) with the
/// engine a runtime of `config` would use for it, which stores the result in
/// `config.cache_dir`. Nothing is instantiated or called; the parent validates the
/// plugin when it loads it from the cache.
pub fn precompile(config: &RuntimeConfig, bytes: &[u8]) -> Result<()> {
    let engine = build_engine(config, bytes.len() >= LARGE_COMPONENT_BYTES)?;
    Component::new(&engine, bytes).map_err(|e| Error::Compile {
        origin: "<stdin>".to_owned(),
        source: e.into_boxed_dyn_error(),
    })?;
    Ok(())
}

/// What a plugin says about itself, validated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginMetadata {
    /// Its name as policy refers to it.
    pub name: String,
    /// Its own version.
    #[serde(serialize_with = "serialize_display")]
    pub version: semver::Version,
    /// The world it implements.
    pub kind: World,
    /// One line for listings.
    pub description: String,
    /// A strategy that can roll one change out across a group of instances.
    pub group_rollouts: bool,
}

fn serialize_display<S: serde::Serializer>(
    v: &semver::Version,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl PluginMetadata {
    /// `name@version`, as errors and logs name a plugin.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A plugin ready to instantiate, by world and contract version.
enum PluginPre {
    Comparator(ComparatorPre<HostState>),
    Strategy(StrategyPre<HostState>),
    Comparator01(ComparatorPre01<HostState>),
    Strategy01(StrategyPre01<HostState>),
}

/// A loaded, validated plugin, ready to be called. Cheap to share (`Arc`); the compiled
/// code lives as long as any holder.
pub struct Plugin {
    metadata: PluginMetadata,
    /// `name@version`, made once: every call's store and error carries it.
    label: Arc<str>,
    digest: String,
    origin: String,
    shape: ComponentShape,
    /// The engine that compiled it (the runtime's large-component engine for a
    /// component of [`LARGE_COMPONENT_BYTES`] or more); its stores are made from it.
    engine: Engine,
    pre: PluginPre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("metadata", &self.metadata)
            .field("digest", &self.digest)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Its validated metadata.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }
    /// SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The file or name it was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// Its world, contract version, imports and exports.
    pub fn shape(&self) -> &ComponentShape {
        &self.shape
    }
    /// The contract version it was built against.
    pub fn contract(&self) -> Contract {
        self.shape.contract
    }
    /// The optional control-plane capabilities it imports.
    pub fn capabilities(&self) -> &[Capability] {
        &self.shape.capabilities
    }
    /// The capabilities it imports that are not in `offered`, for a refusal that names
    /// them; empty when the control plane offers everything it needs.
    pub fn missing_capabilities(&self, offered: &[Capability]) -> Vec<Capability> {
        self.shape
            .capabilities
            .iter()
            .copied()
            .filter(|c| !offered.contains(c))
            .collect()
    }
    /// `name@version`.
    pub fn label(&self) -> String {
        self.label.to_string()
    }
}

/// What a strategy's `step` or `abort` produced, with the scope after the call and every
/// control-plane call it made: also when the call then trapped or ran out of time, so a
/// mutation that went through is always reported.
#[derive(Debug)]
pub struct StepOutcome {
    /// The strategy's answer, or why the call failed.
    pub progress: std::result::Result<Progress, Box<CallError>>,
    /// The rollout's scope after the call (clones added or removed); persist it.
    pub scope: RolloutScope,
    /// The control-plane calls made, in order, including those made before a failure.
    pub calls: Vec<ImportCall>,
}

/// Loads plugins and calls them under limits. One per process.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    /// The engine and linker for components of [`LARGE_COMPONENT_BYTES`] or more.
    large_engine: Engine,
    large_linker: Linker<HostState>,
    config: RuntimeConfig,
    gate: Gate,
    /// Bounds compilations to [`MAX_CONCURRENT_COMPILES`].
    compiles: Gate,
    loaded: Mutex<HashMap<String, Weak<Plugin>>>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Set up the engine, the linker and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let engine = build_engine(&config, false)?;
        let linker = build_linker(&engine)?;
        let large_engine = build_engine(&config, true)?;
        let large_linker = build_linker(&large_engine)?;
        let ticker = EpochTicker::start(vec![engine.clone(), large_engine.clone()]);
        Ok(PluginRuntime {
            engine,
            linker,
            large_engine,
            large_linker,
            gate: Gate::new(config.max_concurrent_calls.max(1)),
            compiles: Gate::new(MAX_CONCURRENT_COMPILES),
            config,
            loaded: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }
}

/// A linker with every import a plugin may have: WASI with nothing granted, and both
/// contract versions' interfaces.
fn build_linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
    host::shadow_sleeps(&mut linker).map_err(engine_error)?;
    // Each version's strategy world imports a superset of its comparator world's
    // (logging), so one linker serves both worlds; the versions' interfaces have
    // distinct names (`…@0.1.0`, `…@0.2.0`), so one linker serves both versions.
    bindings::v0_2::strategy::Strategy::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |state| state,
    )
    .map_err(engine_error)?;
    bindings::v0_1::strategy::Strategy::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |state| state,
    )
    .map_err(engine_error)?;
    Ok(linker)
}

impl PluginRuntime {
    /// The settings it runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Read, validate and load a plugin file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Plugin>> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&path.display().to_string(), &bytes)
    }

    /// Validate and load a plugin from its bytes; `origin` names it in messages.
    ///
    /// Checks, in order: that it is a component of a plugin world and a supported
    /// contract version, that it compiles and links, and that its metadata call
    /// succeeds within the budget and describes the world it implements. Loading the
    /// same bytes again returns the plugin already loaded.
    pub fn load(&self, origin: &str, bytes: &[u8]) -> Result<Arc<Plugin>> {
        let shape = inspect::classify(origin, bytes)?;
        let digest = hex::encode(sha2::Sha256::digest(bytes));
        if let Some(plugin) = self.cached(&digest) {
            return Ok(plugin);
        }

        let (engine, linker) = if bytes.len() >= LARGE_COMPONENT_BYTES {
            (&self.large_engine, &self.large_linker)
        } else {
            (&self.engine, &self.linker)
        };
        let component = self.compile(engine, origin, bytes, &digest)?;
        let link_error = |e: wasmtime::Error| Error::Link {
            origin: origin.to_owned(),
            world: shape.world,
            imports: shape.imports.join(", "),
            source: e.into_boxed_dyn_error(),
        };
        let instance_pre = linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = match (shape.world, shape.contract) {
            (World::Comparator, Contract::V0_2) => {
                PluginPre::Comparator(ComparatorPre::new(instance_pre).map_err(link_error)?)
            }
            (World::Strategy, Contract::V0_2) => {
                PluginPre::Strategy(StrategyPre::new(instance_pre).map_err(link_error)?)
            }
            (World::Comparator, Contract::V0_1) => {
                PluginPre::Comparator01(ComparatorPre01::new(instance_pre).map_err(link_error)?)
            }
            (World::Strategy, Contract::V0_1) => {
                PluginPre::Strategy01(StrategyPre01::new(instance_pre).map_err(link_error)?)
            }
        };

        let label: Arc<str> = format!("{} (loading)", short_origin(origin)).into();
        let raw = self
            .call(
                engine,
                self.config.call_deadline,
                shape.world,
                &label,
                "-",
                Phase::Metadata,
                None,
                |store| match &pre {
                    PluginPre::Comparator(pre) => {
                        let plugin = pre.instantiate(&mut *store)?;
                        plugin
                            .setpoint_plugin_drift_comparator()
                            .call_metadata(&mut *store)
                    }
                    PluginPre::Strategy(pre) => {
                        let plugin = pre.instantiate(&mut *store)?;
                        plugin
                            .setpoint_plugin_rollout_strategy()
                            .call_metadata(&mut *store)
                    }
                    PluginPre::Comparator01(pre) => {
                        let plugin = pre.instantiate(&mut *store)?;
                        plugin
                            .setpoint_plugin_drift_comparator()
                            .call_metadata(&mut *store)
                            .map(v0_1::metadata)
                    }
                    PluginPre::Strategy01(pre) => {
                        let plugin = pre.instantiate(&mut *store)?;
                        plugin
                            .setpoint_plugin_rollout_strategy()
                            .call_metadata(&mut *store)
                            .map(v0_1::metadata)
                    }
                },
            )
            .0
            .map_err(Error::Call)?;
        let metadata = validate_metadata(origin, shape.world, raw)?;

        let plugin = Arc::new(Plugin {
            label: metadata.label().into(),
            metadata,
            digest: digest.clone(),
            origin: origin.to_owned(),
            shape,
            engine: engine.clone(),
            pre,
        });
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, weak| weak.strong_count() > 0);
        loaded.insert(digest, Arc::downgrade(&plugin));
        Ok(plugin)
    }

    /// Compile a component (or load it from the cache), one at a time: in a child process
    /// first when [`RuntimeConfig::compiler`] is set and the cache has no code for it,
    /// so that this process only loads the result from the cache.
    fn compile(
        &self,
        engine: &Engine,
        origin: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component> {
        let _permit = self.compiles.enter();
        let marker = self.compiled_marker(engine, digest);
        let cached = marker.as_ref().is_some_and(|m| m.exists());
        if cached {
            tracing::debug!(plugin = %short_origin(origin), "plugin code is in the compile cache");
        } else if let (Some(program), Some(_)) = (&self.config.compiler, &self.config.cache_dir) {
            let started = Instant::now();
            match self.compile_in_child(program, bytes) {
                Ok(peak_kib) => tracing::info!(
                    plugin = %short_origin(origin),
                    bytes = bytes.len(),
                    took = ?started.elapsed(),
                    child_peak_rss_kib = peak_kib,
                    "plugin compiled by a child process"
                ),
                Err(why) => tracing::warn!(
                    plugin = %short_origin(origin),
                    %why,
                    "compiling the plugin in a child process failed; compiling it here"
                ),
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| Error::Compile {
            origin: origin.to_owned(),
            source: e.into_boxed_dyn_error(),
        })?;
        if let Some(marker) = marker.filter(|_| !cached) {
            // Best effort: without the marker the next start asks a child again, which
            // finds the code in the cache (tens of milliseconds).
            let written = marker
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&marker, b""));
            if let Err(error) = written {
                tracing::debug!(marker = %marker.display(), %error, "cannot mark the plugin's code as cached");
            }
        }
        Ok(component)
    }

    /// Whether the compile cache holds code for the component `bytes` (by its SHA-256,
    /// `digest`) made by the engine this runtime would use for it: a load then needs no
    /// compile (nor a compile child). `false` without a cache. Read from a marker this
    /// runtime writes beside the cache once it has loaded a component; should the cache
    /// have evicted the code since, the next load compiles it again in this process.
    pub fn is_compiled(&self, bytes: &[u8], digest: &str) -> bool {
        let engine = if bytes.len() >= LARGE_COMPONENT_BYTES {
            &self.large_engine
        } else {
            &self.engine
        };
        self.compiled_marker(engine, digest)
            .is_some_and(|m| m.exists())
    }

    /// `<cache_dir>/compiled/<engine>-<digest>`, where `<engine>` hashes what makes
    /// compiled code usable by an engine (wasmtime's version and the compiler's
    /// settings): the marker that `digest`'s code is in the cache for `engine`. Beside
    /// wasmtime's own directory (`<cache_dir>/wasmtime`), whose cleanup would delete it.
    fn compiled_marker(&self, engine: &Engine, digest: &str) -> Option<PathBuf> {
        use std::hash::{Hash as _, Hasher as _};
        let dir = self.config.cache_dir.as_ref()?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(
            dir.join("compiled")
                .join(format!("{:016x}-{digest}", hasher.finish())),
        )
    }

    /// Run `program plugins compile …` on `bytes`; its peak RSS in KiB as it reported it.
    fn compile_in_child(&self, program: &Path, bytes: &[u8]) -> std::result::Result<u64, String> {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut command = Command::new(program);
        command
            .args(self.config.compile_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if bytes.len() >= LARGE_COMPONENT_BYTES {
            command.env("RAYON_NUM_THREADS", LARGE_COMPILE_THREADS.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(bytes))
            .unwrap_or(Ok(()));
        let output = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("{} ({})", output.status, stderr.trim()));
        }
        written.map_err(|e| format!("writing the component to the child: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss_kib ")?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Read, validate, load and smoke-test a plugin file: what the plugin directory
    /// requires before it offers a file to policy.
    pub fn validate_file(&self, path: &Path) -> Result<Arc<Plugin>> {
        let plugin = self.load_file(path)?;
        self.smoke(&plugin)?;
        Ok(plugin)
    }

    /// The smoke call a plugin must pass before it is offered to policy: a comparator
    /// compares `{}` with `{}` within [`SMOKE_CALL_DEADLINE`] (or the call budget, when
    /// shorter) without trapping, running out of memory or overrunning; a domain error
    /// is an answer and passes (a comparator may require parameters). A strategy's smoke
    /// call is its metadata call, already made by [`load`](Self::load); a strategy is
    /// checked instead for the capabilities it imports, against
    /// [`RuntimeConfig::offered_capabilities`].
    pub fn smoke(&self, plugin: &Plugin) -> Result<()> {
        if plugin.shape.world != World::Comparator {
            return match &self.config.offered_capabilities {
                Some(offered) => check_capabilities(plugin, offered),
                None => Ok(()),
            };
        }
        let budget = SMOKE_CALL_DEADLINE.min(self.config.call_deadline);
        let label = &plugin.label;
        let result = self
            .call(
                &plugin.engine,
                budget,
                World::Comparator,
                label,
                "-",
                Phase::Compare,
                None,
                |store| compare_call(&plugin.pre, store, "{}", "{}", "{}"),
            )
            .0;
        match result {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::SmokeCall {
                origin: plugin.origin().to_owned(),
                budget,
                source,
            }),
        }
    }

    fn cached(&self, digest: &str) -> Option<Arc<Plugin>> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.get(digest).and_then(Weak::upgrade)
    }

    /// Run a comparator's `compare` on `instance`'s configurations (JSON text).
    pub fn compare(
        &self,
        plugin: &Plugin,
        instance: &str,
        desired: &str,
        actual: &str,
        params: &str,
    ) -> std::result::Result<Vec<Drift>, Box<CallError>> {
        let label = &plugin.label;
        let fail = |failure| {
            Box::new(CallError {
                world: World::Comparator,
                plugin: label.to_string(),
                instance: instance.to_owned(),
                phase: Phase::Compare,
                failure,
            })
        };
        if plugin.shape.world != World::Comparator {
            return Err(fail(CallFailure::Plugin(format!(
                "{label} is a strategy, not a comparator"
            ))));
        }
        for (what, text) in [("desired", desired), ("actual", actual), ("params", params)] {
            check_size(what, text).map_err(fail)?;
        }
        let result = self
            .call(
                &plugin.engine,
                self.config.call_deadline,
                World::Comparator,
                label,
                instance,
                Phase::Compare,
                None,
                |store| compare_call(&plugin.pre, store, desired, actual, params),
            )
            .0?;
        let drifts = result.map_err(|e| fail(CallFailure::Plugin(describe_plugin_error(&e))))?;
        check_drifts(&drifts).map_err(|why| fail(CallFailure::BadOutput(why)))?;
        Ok(drifts)
    }

    /// Run a strategy's `step` for a rollout within `scope`.
    pub fn step(
        &self,
        plugin: &Plugin,
        rollout: &Rollout,
        host: Arc<dyn StrategyHost>,
        scope: RolloutScope,
        dry_run: bool,
    ) -> StepOutcome {
        self.strategy_call(plugin, Phase::Step, rollout, host, scope, dry_run)
    }

    /// Run a strategy's `abort` for a rollout within `scope`.
    pub fn abort(
        &self,
        plugin: &Plugin,
        rollout: &Rollout,
        host: Arc<dyn StrategyHost>,
        scope: RolloutScope,
        dry_run: bool,
    ) -> StepOutcome {
        self.strategy_call(plugin, Phase::Abort, rollout, host, scope, dry_run)
    }

    fn strategy_call(
        &self,
        plugin: &Plugin,
        phase: Phase,
        rollout: &Rollout,
        host: Arc<dyn StrategyHost>,
        scope: RolloutScope,
        dry_run: bool,
    ) -> StepOutcome {
        let label = &plugin.label;
        let instance = rollout_subject(rollout);
        let fail = |failure| {
            Box::new(CallError {
                world: World::Strategy,
                plugin: label.to_string(),
                instance: instance.clone(),
                phase,
                failure,
            })
        };
        let refuse = |failure| StepOutcome {
            progress: Err(fail(failure)),
            scope: scope.clone(),
            calls: Vec::new(),
        };
        if plugin.shape.world != World::Strategy {
            return refuse(CallFailure::Plugin(format!(
                "{label} is a comparator, not a strategy"
            )));
        }
        let mut sizes = vec![
            ("params", rollout.params.as_str()),
            ("state", rollout.state.as_deref().unwrap_or("")),
        ];
        for member in &rollout.members {
            sizes.push(("desired", member.desired.as_str()));
            sizes.push(("actual", member.actual.as_deref().unwrap_or("")));
        }
        if let Some(failure) = sizes.iter().find_map(|(w, t)| check_size(w, t).err()) {
            return refuse(failure);
        }
        if rollout.members.len() > 1 && !plugin.metadata.group_rollouts {
            return refuse(CallFailure::Plugin(format!(
                "{label} does not roll out groups (its metadata says `group-rollouts: false`), \
                 but was given {} instances",
                rollout.members.len()
            )));
        }
        let old_rollout = match &plugin.pre {
            PluginPre::Strategy01(_) => match v0_1::rollout(rollout) {
                Ok(old) => Some(old),
                Err(why) => return refuse(CallFailure::Plugin(why)),
            },
            _ => None,
        };
        let cp = ScopedControlPlane::new(host, scope, dry_run);
        let (progress, cp) = self.call(
            &plugin.engine,
            self.config.call_deadline,
            World::Strategy,
            label,
            &instance,
            phase,
            Some(cp),
            |store| match &plugin.pre {
                PluginPre::Strategy(pre) => {
                    let plugin = pre.instantiate(&mut *store)?;
                    let api = plugin.setpoint_plugin_rollout_strategy();
                    match phase {
                        Phase::Abort => api.call_abort(&mut *store, rollout),
                        _ => api.call_step(&mut *store, rollout),
                    }
                }
                PluginPre::Strategy01(pre) => {
                    let old = old_rollout.as_ref().expect("converted above");
                    let plugin = pre.instantiate(&mut *store)?;
                    let api = plugin.setpoint_plugin_rollout_strategy();
                    match phase {
                        Phase::Abort => api.call_abort(&mut *store, old),
                        _ => api.call_step(&mut *store, old),
                    }
                    .map(v0_1::progress)
                }
                PluginPre::Comparator(_) | PluginPre::Comparator01(_) => {
                    unreachable!("the world was checked above")
                }
            },
        );
        let cp = cp.expect("strategy calls carry a control plane");
        let progress = progress.and_then(|p| {
            check_state(&p).map_err(|why| fail(CallFailure::BadOutput(why)))?;
            Ok(p)
        });
        StepOutcome {
            progress,
            scope: cp.scope,
            calls: cp.calls,
        }
    }

    /// One call in a fresh store, under the gate, the time budget and the memory cap.
    ///
    /// The budget counts the plugin's own execution. A comparator imports nothing that
    /// blocks, so its store simply traps at the epoch deadline. A strategy's
    /// control-plane imports block on the network, bounded by the [`StrategyHost`]'s own
    /// timeouts: its store runs [`at_deadline`] when the deadline is reached, which
    /// leaves out the time spent in those imports and moves the deadline on by what is
    /// left of the budget, or traps exactly as a comparator's store does.
    #[allow(clippy::too_many_arguments)]
    fn call<R>(
        &self,
        engine: &Engine,
        budget: Duration,
        world: World,
        label: &Arc<str>,
        instance: &str,
        phase: Phase,
        control_plane: Option<ScopedControlPlane>,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (
        std::result::Result<R, Box<CallError>>,
        Option<ScopedControlPlane>,
    ) {
        let _permit = self.gate.enter();
        let mut state = HostState::new(Arc::clone(label), instance, self.config.max_memory_bytes);
        state.control_plane = control_plane;
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(deadline_ticks(budget));
        if store.data().control_plane.is_some() {
            let started = Instant::now();
            store.epoch_deadline_callback(move |store| {
                let blocked = store
                    .data()
                    .control_plane
                    .as_ref()
                    .map_or(Duration::ZERO, |cp| cp.blocked);
                Ok(at_deadline(budget, started.elapsed(), blocked))
            });
        } else {
            store.epoch_deadline_trap();
        }

        let result = f(&mut store);
        let state = store.into_data();
        let result = result.map_err(|error| {
            let failure = if let Some(requested) = state.limits.exceeded {
                CallFailure::OutOfMemory {
                    limit: self.config.max_memory_bytes,
                    requested,
                }
            } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                CallFailure::Timeout { budget }
            } else {
                CallFailure::Trap {
                    message: describe_trap(
                        &error,
                        state.panic_message().as_deref(),
                        state.last_error_log.as_deref(),
                    ),
                }
            };
            Box::new(CallError {
                world,
                plugin: label.to_string(),
                instance: instance.to_owned(),
                phase,
                failure,
            })
        });
        (result, state.control_plane)
    }
}

/// Refuse `plugin` when it imports a capability not in `offered`, naming what is missing.
fn check_capabilities(plugin: &Plugin, offered: &[Capability]) -> Result<()> {
    let missing = plugin.missing_capabilities(offered);
    if missing.is_empty() {
        return Ok(());
    }
    let list = |caps: &[Capability]| {
        caps.iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::MissingCapability {
        origin: plugin.origin().to_owned(),
        plugin: plugin.label(),
        what: if missing.len() == 1 {
            "capability"
        } else {
            "capabilities"
        },
        missing: list(&missing),
        offered: if offered.is_empty() {
            format!("none of {}", list(&Capability::ALL))
        } else {
            list(offered)
        },
    })
}

/// A comparator's `compare` in a fresh instance, whatever its contract version.
fn compare_call(
    pre: &PluginPre,
    store: &mut Store<HostState>,
    desired: &str,
    actual: &str,
    params: &str,
) -> wasmtime::Result<std::result::Result<Vec<Drift>, PluginError>> {
    match pre {
        PluginPre::Comparator(pre) => {
            let plugin = pre.instantiate(&mut *store)?;
            plugin.setpoint_plugin_drift_comparator().call_compare(
                &mut *store,
                desired,
                actual,
                params,
            )
        }
        PluginPre::Comparator01(pre) => {
            let plugin = pre.instantiate(&mut *store)?;
            let result = plugin.setpoint_plugin_drift_comparator().call_compare(
                &mut *store,
                desired,
                actual,
                params,
            )?;
            Ok(result
                .map(|drifts| drifts.into_iter().map(v0_1::drift).collect())
                .map_err(v0_1::plugin_error))
        }
        PluginPre::Strategy(_) | PluginPre::Strategy01(_) => {
            wasmtime::bail!("a strategy has no `compare`")
        }
    }
}

/// What a strategy call names in its errors and logs: the member of a one-instance
/// rollout, or the group.
fn rollout_subject(rollout: &Rollout) -> String {
    match (&rollout.group, rollout.members.as_slice()) {
        (Some(group), _) => format!("group {group}"),
        (None, [member, ..]) => member.instance_id.clone(),
        (None, []) => "-".to_owned(),
    }
}

/// The engine for plugins; `large`: for components of [`LARGE_COMPONENT_BYTES`] or more
/// (no inlining, instances allocated on demand rather than from a pool).
fn build_engine(config: &RuntimeConfig, large: bool) -> Result<Engine> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    cfg.memory_init_cow(true);
    // Plugin code is call-heavy (serde, collections) and every wasm function entry pays an
    // epoch check, so inlining small functions pays for itself: about 5% per field-diff
    // call, for roughly twice the compile time of a component (once per plugin digest,
    // then served from the on-disk cache).
    cfg.compiler_inlining(if large {
        wasmtime::Inlining::No
    } else {
        wasmtime::Inlining::Yes
    });
    if config.perf_map {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if config.pooling && !large {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_MEMORIES)
            .total_tables(POOL_TABLES)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(if PoolingAllocationConfig::is_pagemap_scan_available() {
                POOL_KEEP_RESIDENT_BYTES
            } else {
                POOL_KEEP_RESIDENT_BYTES_NO_PAGEMAP
            })
            .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    if let Some(dir) = &config.cache_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::Engine {
            detail: format!(
                "cannot create the plugin cache directory {}: {e}",
                dir.display()
            ),
        })?;
        let mut cache = wasmtime::CacheConfig::new();
        // A directory of wasmtime's own: its cleanup removes whatever it does not
        // recognise, such as the markers beside it (`compiled_marker`).
        cache.with_directory(dir.join("wasmtime"));
        let cache = wasmtime::Cache::new(cache).map_err(engine_error)?;
        cfg.cache(Some(cache));
    }
    Engine::new(&cfg).map_err(engine_error)
}

fn engine_error(e: wasmtime::Error) -> Error {
    Error::Engine {
        detail: format!("{e:#}"),
    }
}

/// Epoch ticks for a budget: rounded up, plus one because the current tick is already
/// partly over when the call starts.
fn deadline_ticks(budget: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (budget.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}

/// What a strategy call does when its epoch deadline is reached, `elapsed` after it
/// started, `blocked` of which in control-plane imports: carry on for what is left of the
/// `budget` of its own time, or stop (a [`Trap::Interrupt`], reported as a timeout).
fn at_deadline(budget: Duration, elapsed: Duration, blocked: Duration) -> UpdateDeadline {
    let own = elapsed.saturating_sub(blocked);
    match budget.checked_sub(own) {
        Some(left) if !left.is_zero() => UpdateDeadline::Continue(deadline_ticks(left)),
        _ => UpdateDeadline::Interrupt,
    }
}

fn check_size(what: &'static str, text: &str) -> std::result::Result<(), CallFailure> {
    if text.len() > MAX_JSON_BYTES {
        return Err(CallFailure::InputTooLarge {
            what,
            len: text.len(),
            limit: MAX_JSON_BYTES,
        });
    }
    Ok(())
}

/// A comparator's drifts as the contract has them: each value JSON text. Checked once
/// here, so the controller, the audit, the admin API and the strategies that receive
/// these drifts never meet a value they cannot parse.
fn check_drifts(drifts: &[Drift]) -> std::result::Result<(), String> {
    for (i, drift) in drifts.iter().enumerate() {
        for (which, value) in [("desired", &drift.desired), ("actual", &drift.actual)] {
            let Some(text) = value else { continue };
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return Err(format!(
                    "drift {i} (path {:?}) has a {which} value that is not JSON text ({e}): \
                     {}; a comparator returns values as JSON (the SDK's `Drift` does this)",
                    preview(&drift.path, 64),
                    preview(text, 64),
                ));
            }
        }
    }
    Ok(())
}

/// A strategy's new state within [`MAX_JSON_BYTES`]: it is stored with every step and
/// handed back at the next, where a larger one would be refused as input.
fn check_state(progress: &Progress) -> std::result::Result<(), String> {
    let state = match progress {
        Progress::Requeue(r) => &r.state,
        Progress::AwaitApproval(a) => &a.state,
        Progress::Done(_) | Progress::Failed(_) => return Ok(()),
    };
    if state.len() > MAX_JSON_BYTES {
        return Err(format!(
            "a state of {} bytes, more than the limit of {MAX_JSON_BYTES} bytes; keep what a \
             rollout carries from step to step small (ids, counters, the step reached)",
            state.len()
        ));
    }
    Ok(())
}

/// At most `max` characters of `text`, with `…` when cut.
fn preview(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn validate_metadata(origin: &str, world: World, raw: WireMetadata) -> Result<PluginMetadata> {
    let bad = |detail: String| Error::Metadata {
        origin: origin.to_owned(),
        detail,
    };
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.name.starts_with('-');
    if !name_ok {
        return Err(bad(format!(
            "name {:?} must be 1 to 64 lowercase ASCII letters, digits and `-`",
            raw.name
        )));
    }
    let version = semver::Version::parse(&raw.version).map_err(|e| {
        bad(format!(
            "version {:?} of {} is not a semantic version ({e}); use for example \"0.1.0\"",
            raw.version, raw.name
        ))
    })?;
    let kind = match raw.kind {
        PluginKind::Comparator => World::Comparator,
        PluginKind::Strategy => World::Strategy,
    };
    if kind != world {
        return Err(bad(format!(
            "{} says it is a {kind} but implements the {world} world",
            raw.name
        )));
    }
    if raw.group_rollouts && kind == World::Comparator {
        return Err(bad(format!(
            "{} is a comparator but says it rolls out groups; only a strategy can",
            raw.name
        )));
    }
    Ok(PluginMetadata {
        name: raw.name,
        version,
        kind,
        description: raw.description,
        group_rollouts: raw.group_rollouts,
    })
}

fn describe_plugin_error(e: &PluginError) -> String {
    match e {
        PluginError::InvalidInput(m) => format!("invalid input: {m}"),
        PluginError::InvalidParams(m) => format!("invalid parameters: {m}"),
        PluginError::Other(m) => m.clone(),
    }
}

fn describe_trap(
    error: &wasmtime::Error,
    panic_message: Option<&str>,
    last_error_log: Option<&str>,
) -> String {
    let mut message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    if let Some(panic) = panic_message {
        message.push_str(&format!(" ({panic})"));
    } else if let Some(logged) = last_error_log {
        message.push_str(&format!(" (the plugin last logged: {logged})"));
    }
    if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames: Vec<String> = backtrace
            .frames()
            .iter()
            .take(8)
            .map(|frame| {
                frame
                    .func_name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| format!("<func {}>", frame.func_index()))
            })
            .collect();
        if !frames.is_empty() {
            message.push_str(&format!("; guest backtrace: {}", frames.join(" <- ")));
        }
    }
    message
}

fn short_origin(origin: &str) -> &str {
    Path::new(origin)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(origin)
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on a background thread until the
/// runtime is dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("setpoint-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(11)), 3);
        assert_eq!(deadline_ticks(Duration::from_secs(5)), 501);
    }

    #[test]
    fn at_the_deadline_time_blocked_in_imports_is_given_back() {
        let budget = Duration::from_millis(500);
        let ms = Duration::from_millis;
        let continues = |elapsed, blocked| match at_deadline(budget, ms(elapsed), ms(blocked)) {
            UpdateDeadline::Continue(ticks) => Some(ticks),
            UpdateDeadline::Interrupt => None,
            _ => panic!("only continue or interrupt"),
        };
        // Its own time is the budget or more: stop.
        assert_eq!(continues(500, 0), None);
        assert_eq!(continues(2_000, 1_400), None);
        assert_eq!(continues(2_000, 0), None);
        // 1.5 s of it blocked in an import: 10 ms of its own time spent, 490 ms left.
        assert_eq!(continues(1_510, 1_500), Some(deadline_ticks(ms(490))));
        // Just short of the budget: one more tick or two, never an endless extension.
        assert_eq!(continues(499, 0), Some(deadline_ticks(ms(1))));
        // A clock that says less time passed than was blocked does not extend past the
        // whole budget.
        assert_eq!(continues(100, 200), Some(deadline_ticks(budget)));
    }

    #[test]
    fn metadata_is_validated() {
        let meta = |name: &str, version: &str, kind| WireMetadata {
            name: name.into(),
            version: version.into(),
            kind,
            description: String::new(),
            group_rollouts: false,
        };
        let ok = validate_metadata(
            "x",
            World::Comparator,
            meta("field-diff", "0.1.0", PluginKind::Comparator),
        );
        assert_eq!(ok.unwrap().label(), "field-diff@0.1.0");
        let err = validate_metadata(
            "x",
            World::Comparator,
            meta("Field Diff", "0.1.0", PluginKind::Comparator),
        )
        .unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        let err = validate_metadata(
            "x",
            World::Comparator,
            meta("fd", "one", PluginKind::Comparator),
        )
        .unwrap_err();
        assert!(err.to_string().contains("semantic version"), "{err}");
        let err = validate_metadata(
            "x",
            World::Comparator,
            meta("fd", "1.0.0", PluginKind::Strategy),
        )
        .unwrap_err();
        assert!(err.to_string().contains("says it is a strategy"), "{err}");
    }

    #[test]
    fn runtime_refuses_garbage_with_a_clear_error() {
        let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
        let err = runtime
            .load("junk.wasm", b"#!/bin/sh\necho hi")
            .unwrap_err();
        assert!(matches!(err, Error::NotWasm { .. }), "{err}");
    }
}
