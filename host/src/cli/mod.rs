//! The `setpoint` command line: argument definitions and what each command does.
//!
//! Start at [`Cli`] and [`run`]. `main` only parses, calls [`run`] and prints errors.

mod plugins;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// setpoint: desired-state reconciliation with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "setpoint", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect plugin components.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
}

/// Errors of CLI commands, with the cause chain kept for `main` to print.
pub type CliError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Run a parsed command line; `Ok` carries the exit code (a verdict can fail without an
/// error, as `plugins check` on a bad file does).
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    init_tracing();
    match cli.command {
        Command::Plugins(cmd) => plugins::run(cmd),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
