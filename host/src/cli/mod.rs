//! The `setpoint` command line: argument definitions and what each command does.
//!
//! Start at [`Cli`] and [`run`]. `main` only parses, calls [`run`] and prints errors.
//! `run` and `demo` run the daemon in this process; `status`, `explain`, `diff`,
//! `reconcile`, `approve`, `abort`, `retry`, `history`, `rollback` and `audit` talk to a
//! running daemon's admin API;
//! `plugins` inspects and runs files with the same runtime the daemon uses, and writes
//! new plugin crates from templates (`plugins new`).
//!
//! Every command prints through the `print!` and `println!` defined here ([`out`]), so
//! output into a closed pipe (`setpoint plugins list | head -1`) ends the command
//! quietly instead of panicking.

/// `print!` for the commands: through [`out::print`], so a closed pipe ends the command
/// quietly (this shadows the standard macro in every module below).
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!($($arg)*))
    };
}

/// `println!` for the commands: through [`out::print`], as [`print!`].
macro_rules! println {
    () => {
        $crate::cli::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod admin_client;
mod daemon;
mod demo;
pub mod out;
mod plugin_run;
mod plugins;
mod plugins_new;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use admin_client::AdminArgs;
pub use daemon::RunArgs;
pub use demo::DemoArgs;

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
    /// Run the daemon in the foreground until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Start the reference control plane and the daemon, create three instances, change
    /// one and show it converge.
    Demo(DemoArgs),
    /// Instances with their conditions (or one instance in detail).
    Status {
        /// One instance.
        id: Option<String>,
        /// Redraw every second while the instance's rollout moves (until it ends).
        #[arg(long, requires = "id")]
        watch: bool,
        /// A group of instances (`app=orders`: the label values a rule's `group_by`
        /// keys take): its members converged, in progress and waiting, and its rollout.
        #[arg(long, value_name = "KEY=VALUE[,…]", conflicts_with_all = ["id", "watch"])]
        group: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Which policy rule applies to an instance, and why the earlier ones did not.
    Explain {
        /// The instance.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Dry-run plan for one instance: its drifts and the calls the strategy would make.
    Diff {
        /// The instance.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reconcile an instance now.
    Reconcile {
        /// The instance.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve the revision an instance waits with (shows its digest and drift first).
    Approve {
        /// The instance.
        #[arg(required_unless_present = "group")]
        id: Option<String>,
        /// Instead of an instance, a group (`app=orders`): let its paused rollout go on.
        #[arg(long, value_name = "KEY=VALUE[,…]", conflicts_with_all = ["id", "digest"])]
        group: Option<String>,
        /// Approve only this revision (digest or prefix, as `status` shows it).
        #[arg(long)]
        digest: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Abort an instance's rollout (or the change waiting for approval): the strategy
    /// rolls it back and the revision is given up.
    Abort {
        /// The instance.
        #[arg(required_unless_present = "group")]
        id: Option<String>,
        /// Instead of an instance, a group (`app=orders`): abort its rollout (the
        /// strategy rolls the updated members back).
        #[arg(long, value_name = "KEY=VALUE[,…]", conflicts_with = "id")]
        group: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Promote an instance's rollout: end the pause, approval or analysis it waits in
    /// and go to the next step (`--full`: skip every remaining step).
    Promote {
        /// The instance.
        id: String,
        /// Skip every remaining step, pause and analysis.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Try a given-up revision (failed for good or aborted) again.
    Retry {
        /// The instance.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Applied revisions of an instance: digest, when, by which strategy.
    History {
        /// The instance.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Roll an instance back to a kept configuration through its strategy.
    Rollback {
        /// The instance.
        id: String,
        /// The revision (digest or prefix from `history`); default: the one before the last.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The audit log, of one instance or all.
    Audit {
        /// One instance.
        id: Option<String>,
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every setting: key, environment variable, default, meaning.
    Config,
    /// Inspect, run and install plugin components; start a new plugin crate.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
}

/// Errors of CLI commands, with the cause chain kept for `main` to print.
pub type CliError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Run a parsed command line; `Ok` carries the exit code (a verdict can fail without an
/// error, as `plugins check` on a bad file does).
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    init_tracing(matches!(cli.command, Command::Run(_)));
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Plugins(cmd) => plugins::run(cmd),
        Command::Config => {
            print!("{}", crate::config::reference_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            runtime()?.block_on(daemon::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            runtime()?.block_on(demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            runtime()?.block_on(admin_command(command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn admin_command(command: Command) -> Result<(), CliError> {
    use admin_client::Admin;
    match command {
        Command::Status {
            id,
            watch,
            group,
            admin,
        } => {
            let admin = Admin::new(admin)?;
            match (id, group) {
                (_, Some(group)) => admin_client::group_status(&admin, &group).await,
                (Some(id), None) if watch => admin_client::watch(&admin, &id).await,
                (id, None) => admin_client::status(&admin, id).await,
            }
        }
        Command::Promote { id, full, admin } => {
            admin_client::promote(&Admin::new(admin)?, &id, full).await
        }
        Command::Explain { id, admin } => admin_client::explain(&Admin::new(admin)?, &id).await,
        Command::Diff { id, admin } => admin_client::diff(&Admin::new(admin)?, &id).await,
        Command::Reconcile { id, admin } => {
            admin_client::mutate(&Admin::new(admin)?, &id, "reconcile").await
        }
        Command::Approve {
            group: Some(group),
            admin,
            ..
        } => admin_client::group_action(&Admin::new(admin)?, &group, "approve").await,
        Command::Approve {
            id: Some(id),
            digest,
            admin,
            ..
        } => admin_client::approve(&Admin::new(admin)?, &id, digest).await,
        Command::Retry { id, admin } => {
            admin_client::mutate(&Admin::new(admin)?, &id, "retry").await
        }
        Command::History { id, admin } => admin_client::history(&Admin::new(admin)?, &id).await,
        Command::Rollback { id, to, admin } => {
            admin_client::rollback(&Admin::new(admin)?, &id, to).await
        }
        Command::Abort {
            group: Some(group),
            admin,
            ..
        } => admin_client::group_action(&Admin::new(admin)?, &group, "abort").await,
        Command::Abort {
            id: Some(id),
            admin,
            ..
        } => admin_client::mutate(&Admin::new(admin)?, &id, "abort").await,
        Command::Audit { id, limit, admin } => {
            admin_client::audit(&Admin::new(admin)?, id.as_deref(), limit).await
        }
        Command::Approve { .. } | Command::Abort { .. } => {
            Err("name an instance, or a group with --group".into())
        }
        Command::Run(_) | Command::Demo(_) | Command::Config | Command::Plugins(_) => {
            unreachable!("handled in run")
        }
    }
}

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
