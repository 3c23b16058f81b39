//! `setpoint plugins check|list|install|run|new`: what a plugin file or directory holds,
//! validated by the same runtime and rules the daemon uses, what a running daemon
//! serves, installing a file into a plugin directory atomically, calling a file on
//! given documents (`run`, in `plugin_run.rs`), and writing a new plugin crate (`new`,
//! in `plugins_new.rs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::CliError;
use super::admin_client::{Admin, AdminArgs};
use crate::config::{Overrides, Settings};
use crate::registry::{EntryState, PluginEntry, PluginRegistry};
use crate::runtime::{Plugin, PluginRuntime, RuntimeConfig};

/// `setpoint plugins …`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Validate one plugin file as the daemon would (component, world, contract version,
    /// exports, metadata, compile, smoke call) and print a verdict; exits non-zero on any
    /// problem.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Print `{"name","version","kind","world","contract","capabilities",
        /// "group_rollouts"}` (or `{"error"}`) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List plugins with their states (active, superseded, retiring, rejected): those a
    /// running daemon serves, or, given a directory, what the daemon would make of it.
    List {
        /// A plugin directory to validate here instead of asking the daemon.
        dir: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate a plugin file, then place it in the plugin directory atomically (a
    /// temporary name in that directory, fsync, rename), as `NAME-VERSION.wasm`.
    Install {
        /// The `.wasm` file.
        file: PathBuf,
        /// The plugin directory; default: the daemon's `plugins.dir` from `--config`, the
        /// environment and the defaults.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The daemon's TOML configuration file, to find `plugins.dir`.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Call a plugin file on given documents, loaded as the daemon would load it: a
    /// comparator compares them and prints the drifts; a strategy is stepped in dry-run
    /// against a simulated control plane (nothing is sent anywhere) and its plan printed.
    /// Exits non-zero on bad input, a failed call, and a strategy that does not end done.
    Run {
        /// The `.wasm` file.
        file: PathBuf,
        /// The desired configuration, a JSON file.
        #[arg(long, value_name = "FILE")]
        desired: PathBuf,
        /// The actual configuration (what the instance runs), a JSON file.
        #[arg(long, value_name = "FILE")]
        actual: PathBuf,
        /// The plugin's parameters, a JSON file holding an object (default `{}`).
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
        /// The instance id the strategy is given and the simulated control plane knows.
        #[arg(long, value_name = "ID", default_value = "instance-1")]
        instance_id: String,
        /// The daemon's TOML configuration file, to call the plugin with its
        /// `plugins.call_deadline` and `plugins.max_memory_bytes` (default: the defaults,
        /// as `plugins check`).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the drifts (comparator) or the plan and outcome (strategy) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin from a template, a Rust crate or (`--lang js`) a JavaScript
    /// package: it builds into a component and passes `plugins check` with no edits, and
    /// its README says how to build and try it.
    New(super::plugins_new::NewArgs),
    /// (Internal: the daemon's compile child.) Compile the component on standard input
    /// into the cache directory with the engine the given settings make, print
    /// `peak_rss_kib N` (this process's peak RSS) and exit. See `RuntimeConfig::compiler`.
    #[command(hide = true)]
    Compile {
        /// The compilation cache directory (`plugins.cache_dir`).
        #[arg(long, value_name = "DIR")]
        cache_dir: PathBuf,
        /// The plugin memory cap (`plugins.max_memory_bytes`), part of the engine's
        /// configuration.
        #[arg(long, value_name = "BYTES")]
        max_memory_bytes: usize,
        /// The runtime instantiates on demand rather than from a pool.
        #[arg(long)]
        no_pooling: bool,
        /// The runtime writes perf maps.
        #[arg(long)]
        perf_map: bool,
    },
}

pub(super) fn run(cmd: PluginsCommand) -> Result<ExitCode, CliError> {
    match cmd {
        PluginsCommand::Check { file, json } => {
            let runtime = PluginRuntime::new(RuntimeConfig::default())?;
            Ok(check(&runtime, &file, json))
        }
        PluginsCommand::List {
            dir: Some(dir),
            admin,
        } => {
            let runtime = PluginRuntime::new(RuntimeConfig::default())?;
            list_dir(&runtime, &dir, admin.json)
        }
        PluginsCommand::List { dir: None, admin } => {
            let json = admin.json;
            let rows = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move { Admin::new(admin)?.get("/v1/plugins").await })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let entries: Vec<PluginEntry> = serde_json::from_value(rows).map_err(|e| {
                    format!("the daemon's /v1/plugins answer is not a plugin list: {e}")
                })?;
                print_table(&entries, "the daemon serves no plugins");
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Install { file, dir, config } => {
            let dir = match dir {
                Some(dir) => dir,
                None => {
                    Settings::load(config.as_deref(), std::env::vars(), &Overrides::new())?
                        .plugins
                        .dir
                }
            };
            let runtime = PluginRuntime::new(RuntimeConfig::default())?;
            install(&runtime, &file, &dir)
        }
        PluginsCommand::New(args) => super::plugins_new::run(args),
        PluginsCommand::Compile {
            cache_dir,
            max_memory_bytes,
            no_pooling,
            perf_map,
        } => {
            let config = RuntimeConfig {
                cache_dir: Some(cache_dir),
                max_memory_bytes,
                pooling: !no_pooling,
                perf_map,
                ..RuntimeConfig::default()
            };
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)?;
            crate::runtime::precompile(&config, &bytes)?;
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
            {
                println!("peak_rss_kib {kib}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Run {
            file,
            desired,
            actual,
            params,
            instance_id,
            config,
            json,
        } => super::plugin_run::run(super::plugin_run::RunArgs {
            file,
            desired,
            actual,
            params,
            instance_id,
            config,
            json,
        }),
    }
}

fn check(runtime: &PluginRuntime, file: &Path, json: bool) -> ExitCode {
    match runtime.validate_file(file) {
        Ok(plugin) => {
            if json {
                println!("{}", summary_json(&plugin));
            } else {
                print_verdict(file, &plugin);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            if json {
                println!("{}", serde_json::json!({ "error": error.to_string() }));
            } else {
                println!("{}: rejected", file.display());
                println!("  error: {error}");
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    println!("  caused by: {cause}");
                    source = cause.source();
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn summary_json(plugin: &Plugin) -> serde_json::Value {
    let meta = plugin.metadata();
    serde_json::json!({
        "name": meta.name,
        "version": meta.version.to_string(),
        "kind": meta.kind,
        "world": plugin.shape().world.wit_name(),
        "contract": plugin.contract(),
        "capabilities": plugin.capabilities(),
        "group_rollouts": meta.group_rollouts,
    })
}

fn print_verdict(file: &Path, plugin: &Plugin) {
    let meta = plugin.metadata();
    let shape = plugin.shape();
    println!("{}: ok", file.display());
    println!("  component:   yes");
    println!(
        "  world:       {} ({})",
        shape.world,
        shape.world.wit_name()
    );
    println!("  contract:    setpoint:plugin@{}", shape.contract);
    println!("  exports:     {}", shape.exports.join(", "));
    let imports = if shape.imports.is_empty() {
        "(none)".to_owned()
    } else {
        shape.imports.join(", ")
    };
    println!("  imports:     {imports}");
    if shape.world == crate::runtime::World::Strategy {
        let needs: Vec<&str> = shape.capabilities.iter().map(|c| c.as_str()).collect();
        println!(
            "  needs:       {}",
            match (shape.contract, needs.is_empty()) {
                (crate::runtime::Contract::V0_1, _) =>
                    "(0.1.0: one control-plane interface; checked at each call)".to_owned(),
                (_, true) => "instances only".to_owned(),
                (_, false) => format!("instances, {}", needs.join(", ")),
            }
        );
        println!(
            "  groups:      {}",
            if meta.group_rollouts {
                "rolls out groups of instances"
            } else {
                "one instance per rollout"
            }
        );
    }
    if shape.uses_wasi {
        println!("  wasi:        imported; the host links it with no capabilities");
    }
    println!("  name:        {}", meta.name);
    println!("  version:     {}", meta.version);
    println!("  description: {}", meta.description);
    println!("  digest:      sha256:{}", plugin.digest());
}

fn list_dir(runtime: &PluginRuntime, dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let registry = PluginRegistry::load_dir(runtime, dir);
    if json {
        println!("{}", serde_json::to_string_pretty(registry.entries())?);
    } else {
        print_table(
            registry.entries(),
            &format!("no .wasm files in {}", dir.display()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(entries: &[PluginEntry], empty: &str) {
    if entries.is_empty() {
        println!("{empty}");
        return;
    }
    println!(
        "{:<28} {:<10} {:<11} {:<11} {:<13} FILE",
        "NAME", "VERSION", "KIND", "STATE", "DIGEST"
    );
    for e in entries {
        let file = e
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{:<28} {:<10} {:<11} {:<11} {:<13} {}",
            e.name.as_deref().unwrap_or("-"),
            e.version.as_deref().unwrap_or("-"),
            e.kind.map(|k| k.to_string()).unwrap_or_else(|| "-".into()),
            e.state.as_str(),
            e.digest.get(..12).unwrap_or("-"),
            file
        );
        if let Some(reason) = e.state.reason() {
            println!("    {reason}");
        }
    }
}

/// Validate `file`, refuse a second file claiming the same name and version with other
/// content, then write it into `dir` under a temporary name, fsync and rename it into
/// place, so the daemon never sees it half-written.
fn install(runtime: &PluginRuntime, file: &Path, dir: &Path) -> Result<ExitCode, CliError> {
    let plugin = match runtime.validate_file(file) {
        Ok(plugin) => plugin,
        Err(error) => {
            println!("{}: rejected, not installed", file.display());
            println!("  error: {}", crate::error_chain(&error));
            return Ok(ExitCode::FAILURE);
        }
    };
    if !dir.is_dir() {
        return Err(format!(
            "plugin directory {} does not exist; create it, or pass --dir (or --config) to name the daemon's plugins.dir",
            dir.display()
        )
        .into());
    }
    let meta = plugin.metadata();
    let dest = dir.join(format!("{}-{}.wasm", meta.name, meta.version));
    let installed = PluginRegistry::load_dir(runtime, dir);
    let exact = semver::VersionReq::parse(&format!("={}", meta.version))?;
    if let Some(e) = installed
        .entries()
        .iter()
        .find(|e| e.digest == plugin.digest() && !matches!(e.state, EntryState::Rejected(_)))
    {
        println!(
            "{} {} is already installed as {}; nothing to do",
            meta.kind,
            meta.label(),
            e.file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(existing) = installed.resolve(meta.kind, &meta.name, Some(&exact))
        && Path::new(existing.origin()) != dest
    {
        return Err(format!(
            "{} already provides {} {} with different content than {}; the daemon would reject one of them as a duplicate. Give the new build another version, or remove {} first",
            existing.origin(),
            meta.kind,
            meta.label(),
            file.display(),
            existing.origin()
        )
        .into());
    }
    let bytes = std::fs::read(file)?;
    let temp = dir.join(format!(
        ".{}-{}.wasm.tmp-{}",
        meta.name,
        meta.version,
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut out = std::fs::File::create(&temp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&temp, &dest)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("cannot install into {}: {error}", dest.display()).into());
    }
    println!(
        "installed {} {} as {} (digest {}); a running daemon validates and serves it within about two seconds",
        meta.kind,
        meta.label(),
        dest.display(),
        &plugin.digest()[..12]
    );
    Ok(ExitCode::SUCCESS)
}
