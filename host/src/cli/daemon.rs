//! `setpoint run`: the daemon in the foreground until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{Overrides, Settings};
use crate::daemon::Daemon;

/// Flags of `setpoint run`. Each overrides the setting named in its help; every other
/// setting comes from `--config`, `SETPOINT_*` variables and defaults (see the README).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (optional: every setting has a default).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Base URL of the DRaaS control plane (`control_plane.url`).
    #[arg(long, value_name = "URL")]
    pub control_plane: Option<String>,
    /// Plugin directory (`plugins.dir`).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// State database file (`store.path`).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Admin API address (`admin.listen`).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Report what would be done, change nothing (`dry_run`).
    #[arg(long)]
    pub dry_run: bool,
}

impl RunArgs {
    /// The settings these flags, the environment and the file give.
    pub fn settings(&self) -> Result<Settings, CliError> {
        let mut o = Overrides::new();
        if let Some(v) = &self.control_plane {
            o = o.set_flag("--control-plane", "control_plane.url", v.clone());
        }
        if let Some(v) = &self.plugins {
            o = o.set_flag("--plugins", "plugins.dir", v.display().to_string());
        }
        if let Some(v) = &self.db {
            o = o.set_flag("--db", "store.path", v.display().to_string());
        }
        if let Some(v) = &self.admin {
            o = o.set_flag("--admin", "admin.listen", v.clone());
        }
        if self.dry_run {
            o = o.set_flag("--dry-run", "dry_run", "true");
        }
        Ok(Settings::load(
            self.config.as_deref(),
            std::env::vars(),
            &o,
        )?)
    }
}

pub(super) async fn run(args: RunArgs) -> Result<(), CliError> {
    let mut settings = args.settings()?;
    // Plugins are compiled by a child `setpoint plugins compile`, so the compiler's
    // memory peak is not the daemon's (see `RuntimeConfig::compiler`).
    settings.plugins.compiler = std::env::current_exe().ok();
    let daemon = Daemon::start(settings).await?;
    eprintln!("setpoint: admin API on http://{}", daemon.admin_addr());
    shutdown_signal().await;
    daemon.shutdown().await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
