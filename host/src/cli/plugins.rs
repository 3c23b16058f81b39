//! `setpoint plugins check|list`: what a plugin file or directory holds, validated by the
//! same runtime the daemon uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::CliError;
use crate::runtime::{Plugin, PluginRuntime, RuntimeConfig};

/// `setpoint plugins …`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Validate one plugin file and print a verdict; exits non-zero on any problem.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Print `{"name","version","kind","world"}` (or `{"error"}`) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the plugins a directory holds, valid or not.
    List {
        /// The plugin directory.
        dir: PathBuf,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: PluginsCommand) -> Result<ExitCode, CliError> {
    let runtime = PluginRuntime::new(RuntimeConfig::default())?;
    match cmd {
        PluginsCommand::Check { file, json } => Ok(check(&runtime, &file, json)),
        PluginsCommand::List { dir, json } => list(&runtime, &dir, json),
    }
}

fn check(runtime: &PluginRuntime, file: &Path, json: bool) -> ExitCode {
    match runtime.load_file(file) {
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
    println!("  exports:     {}", shape.exports.join(", "));
    let imports = if shape.imports.is_empty() {
        "(none)".to_owned()
    } else {
        shape.imports.join(", ")
    };
    println!("  imports:     {imports}");
    if shape.uses_wasi {
        println!("  wasi:        imported; the host links it with no capabilities");
    }
    println!("  name:        {}", meta.name);
    println!("  version:     {}", meta.version);
    println!("  description: {}", meta.description);
    println!("  digest:      sha256:{}", plugin.digest());
}

fn list(runtime: &PluginRuntime, dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read plugin directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match runtime.load_file(file) {
            Ok(plugin) => {
                let meta = plugin.metadata();
                rows.push(serde_json::json!({
                    "file": name,
                    "state": "valid",
                    "name": meta.name,
                    "version": meta.version.to_string(),
                    "kind": meta.kind,
                    "digest": plugin.digest(),
                    "description": meta.description,
                }));
            }
            Err(error) => rows.push(serde_json::json!({
                "file": name,
                "state": "rejected",
                "reason": error.to_string(),
            })),
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no .wasm files in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<10} {:<11} {:<14} FILE",
        "NAME", "VERSION", "KIND", "DIGEST"
    );
    for row in &rows {
        let s = |k: &str| row[k].as_str().unwrap_or("").to_owned();
        if s("state") == "valid" {
            println!(
                "{:<28} {:<10} {:<11} {:<14} {}",
                s("name"),
                s("version"),
                s("kind"),
                &s("digest")[..12],
                s("file")
            );
        } else {
            println!(
                "{:<28} {:<10} {:<11} {:<14} {}",
                "-",
                "-",
                "rejected",
                "-",
                s("file")
            );
            println!("    {}", s("reason"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
