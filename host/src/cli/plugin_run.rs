//! `setpoint plugins run`: call one plugin file on given documents, as the daemon would
//! call it, without a daemon or a control plane (like `kwctl run`).
//!
//! The file is loaded and validated exactly as `plugins check` does (same runtime
//! settings, sandbox and limits). A comparator's `compare` is called once. A strategy is
//! stepped from step 0 in dry-run ([`PluginRuntime::step`] with `dry_run = true`: the
//! scope simulates every mutating call) against [`SimulatedControlPlane`], which answers
//! the reads from the given documents, until it is done or failed or
//! [`MAX_RUN_STEPS`] steps have run — what the daemon's own dry-run plans do
//! (`Controller::simulate`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::CliError;
use crate::config::{Overrides, Settings};
use crate::controller::{APPROVAL_PARAM, DriftView};
use crate::runtime::scope::{
    Counters, CpError, Health, InstanceInfo, InstanceStatus, RuntimeStatus,
};
use crate::runtime::{
    CallOutcome, ImportCall, Member, Plugin, PluginRuntime, Progress, Rollout, RolloutScope,
    RuntimeConfig, StrategyHost, World,
};

/// Most strategy steps a run simulates (as many as the daemon's dry-run plans).
pub const MAX_RUN_STEPS: u32 = 500;

/// Requests a simulated instance serves between two `get-metrics` readings.
const REQUESTS_PER_READING: u64 = 1_000;

/// What `setpoint plugins run` was asked to do.
#[derive(Debug)]
pub(super) struct RunArgs {
    pub file: PathBuf,
    pub desired: PathBuf,
    pub actual: PathBuf,
    pub params: Option<PathBuf>,
    pub instance_id: String,
    pub config: Option<PathBuf>,
    pub json: bool,
}

pub(super) fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let desired = read_json("--desired", &args.desired)?;
    let actual = read_json("--actual", &args.actual)?;
    let params = match &args.params {
        Some(path) => {
            let params = read_json("--params", path)?;
            if !params.is_object() {
                return Err(format!(
                    "--params file {} must hold a JSON object (the parameters a policy rule gives the plugin), not {}",
                    path.display(),
                    json_kind(&params)
                )
                .into());
            }
            params
        }
        None => Value::Object(serde_json::Map::new()),
    };
    let runtime = PluginRuntime::new(runtime_config(args.config.as_deref())?)?;
    let plugin = runtime.validate_file(&args.file)?;
    match plugin.shape().world {
        World::Comparator => compare(&runtime, &plugin, &args, &desired, &actual, &params),
        World::Strategy => strategy(&runtime, &plugin, &args, &desired, &actual, params),
    }
}

/// The runtime settings `plugins check` uses (the daemon's defaults) or, given the
/// daemon's configuration file, the daemon's own call budget and memory cap.
fn runtime_config(config: Option<&Path>) -> Result<RuntimeConfig, CliError> {
    let Some(config) = config else {
        return Ok(RuntimeConfig::default());
    };
    let settings = Settings::load(Some(config), std::env::vars(), &Overrides::new())?;
    Ok(RuntimeConfig {
        call_deadline: settings.plugins.call_deadline,
        max_memory_bytes: usize::try_from(settings.plugins.max_memory_bytes).unwrap_or(usize::MAX),
        ..RuntimeConfig::default()
    })
}

/// Read and parse one JSON document given with `flag`.
fn read_json(flag: &str, path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {flag} file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the {flag} file {} is not JSON: {e}", path.display()).into())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn compare(
    runtime: &PluginRuntime,
    plugin: &Plugin,
    args: &RunArgs,
    desired: &Value,
    actual: &Value,
    params: &Value,
) -> Result<ExitCode, CliError> {
    let drifts = runtime
        .compare(
            plugin,
            &args.instance_id,
            &desired.to_string(),
            &actual.to_string(),
            &params.to_string(),
        )
        .map_err(|e| format!("{}: {}", args.file.display(), crate::error_chain(&e)))?;
    let views: Vec<DriftView> = drifts.iter().map(DriftView::from).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: comparator {}",
        args.file.display(),
        plugin.metadata().label()
    );
    if views.is_empty() {
        println!("no drift");
    } else {
        println!("drifts:");
        for d in &views {
            let path = if d.path.is_empty() {
                "(whole document)"
            } else {
                d.path.as_str()
            };
            println!("  {:<8} {:<30} {}", d.kind, path, d.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Ending {
    Done,
    Failed,
    /// The strategy's call failed (trap, time budget, memory cap, or a plugin error).
    Error,
    /// Still in progress after [`MAX_RUN_STEPS`] steps.
    Unfinished,
}

fn strategy(
    runtime: &PluginRuntime,
    plugin: &Arc<Plugin>,
    args: &RunArgs,
    desired: &Value,
    actual: &Value,
    mut params: Value,
) -> Result<ExitCode, CliError> {
    if let Value::Object(map) = &mut params {
        // The host always tells a strategy the rule's approval gate; a run has no rule,
        // so `none` unless the author set it to try another gate.
        map.entry(APPROVAL_PARAM)
            .or_insert_with(|| Value::String("none".into()));
    }
    let id = args.instance_id.as_str();
    let host: Arc<dyn StrategyHost> = Arc::new(SimulatedControlPlane::new(desired));
    let mut scope = RolloutScope::new(id);
    let mut state = None;
    let mut elapsed_ms = 0u64;
    let mut calls: Vec<ImportCall> = Vec::new();
    let mut steps = 0u32;
    let (ending, outcome) = loop {
        if steps == MAX_RUN_STEPS {
            break (
                Ending::Unfinished,
                format!("still in progress after {MAX_RUN_STEPS} simulated steps"),
            );
        }
        let rollout = Rollout {
            group: None,
            members: vec![Member {
                instance_id: id.to_owned(),
                desired: desired.to_string(),
                actual: Some(actual.to_string()),
                drifts: Vec::new(),
            }],
            params: params.to_string(),
            state: state.clone(),
            step: steps,
            elapsed_ms,
        };
        let step = runtime.step(plugin, &rollout, Arc::clone(&host), scope, true);
        steps += 1;
        calls.extend(step.calls);
        scope = step.scope;
        match step.progress {
            Err(error) => {
                break (
                    Ending::Error,
                    format!("error: {}", crate::error_chain(&error)),
                );
            }
            Ok(Progress::Done(m)) => break (Ending::Done, format!("done: {m}")),
            Ok(Progress::Failed(f)) => {
                let retry = if f.retryable {
                    "retryable"
                } else {
                    "not retryable"
                };
                break (Ending::Failed, format!("failed ({retry}): {}", f.reason));
            }
            Ok(Progress::AwaitApproval(a)) => {
                // Treated as approved: the next step goes on.
                calls.push(marker("await-approval", a.message));
                state = Some(a.state);
            }
            Ok(Progress::Requeue(r)) => {
                if r.after_ms > 0 {
                    calls.push(marker(
                        "wait",
                        format!(
                            "{}: {}",
                            humantime::format_duration(Duration::from_millis(r.after_ms)),
                            r.message
                        ),
                    ));
                }
                state = Some(r.state);
                elapsed_ms = elapsed_ms.saturating_add(r.after_ms);
            }
        }
    };

    if args.json {
        let report = serde_json::json!({
            "plugin": plugin.metadata().label(),
            "kind": "strategy",
            "instance": id,
            "steps": steps,
            "elapsed_ms": elapsed_ms,
            "calls": calls,
            "result": ending,
            "outcome": outcome,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: strategy {} on instance {id} (dry-run: nothing is sent anywhere)",
            args.file.display(),
            plugin.metadata().label()
        );
        if calls.is_empty() {
            println!("plan: no control-plane calls");
        } else {
            println!("plan:");
            for (n, call) in calls.iter().enumerate() {
                println!("  {}. {}", n + 1, describe_call(call));
            }
        }
        println!(
            "outcome: {outcome} ({steps} step{}, {} simulated)",
            if steps == 1 { "" } else { "s" },
            humantime::format_duration(Duration::from_millis(elapsed_ms))
        );
    }
    Ok(if ending == Ending::Done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A plan entry that is not a control-plane call (a wait, a pause for approval).
fn marker(call: &str, target: String) -> ImportCall {
    ImportCall {
        call: call.into(),
        target,
        mutating: false,
        outcome: CallOutcome::Simulated,
        configuration: None,
        weights: None,
        intent: None,
    }
}

/// One line of the plan for a call or a marker.
fn describe_call(c: &ImportCall) -> String {
    let line = match c.call.as_str() {
        "wait" => return format!("wait {}", c.target),
        "await-approval" => {
            return format!("pause for approval (treated as approved): {}", c.target);
        }
        "set-traffic-weights" => {
            let weights: Vec<String> = c
                .weights
                .iter()
                .flatten()
                .map(|w| format!("{}={}", w.instance_id, w.weight))
                .collect();
            format!("{} {}: {}", c.call, c.target, weights.join(" "))
        }
        _ if c.mutating => format!("{} {}", c.call, c.target),
        _ => format!("{} {}   (read)", c.call, c.target),
    };
    match &c.outcome {
        CallOutcome::Ok | CallOutcome::Simulated => line,
        CallOutcome::Denied(why) => format!("{line}   DENIED: {why}"),
        CallOutcome::Failed(why) => format!("{line}   FAILED: {why}"),
    }
}

/// A control plane that exists only in this process: it answers a strategy's reads from
/// the documents given on the command line. Every instance it is asked about (the
/// instance being run, and the clones the dry-run pretends to make) is running, healthy,
/// has the desired configuration and serves [`REQUESTS_PER_READING`] more requests,
/// none failed, between two metric readings. Mutating calls never reach it: the scope
/// simulates them in dry-run.
#[derive(Debug)]
struct SimulatedControlPlane {
    desired: String,
    /// Metric readings so far, per instance.
    readings: Mutex<HashMap<String, u64>>,
}

impl SimulatedControlPlane {
    fn new(desired: &Value) -> Self {
        SimulatedControlPlane {
            desired: desired.to_string(),
            readings: Mutex::new(HashMap::new()),
        }
    }

    fn not_sent(call: &str) -> CpError {
        CpError::Denied(format!(
            "`{call}` is not sent: setpoint plugins run is a dry-run"
        ))
    }
}

impl StrategyHost for SimulatedControlPlane {
    fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError> {
        Ok(InstanceInfo {
            id: id.to_owned(),
            name: id.to_owned(),
            status: InstanceStatus::Running,
            platform: "Process".into(),
            labels: Vec::new(),
        })
    }

    fn get_runtime_status(&self, _id: &str) -> Result<RuntimeStatus, CpError> {
        Ok(RuntimeStatus {
            status: InstanceStatus::Running,
            details: "{}".into(),
        })
    }

    fn get_desired_configuration(&self, _id: &str) -> Result<String, CpError> {
        Ok(self.desired.clone())
    }

    fn start(&self, _id: &str, _configuration: Option<&str>) -> Result<(), CpError> {
        Err(Self::not_sent("start"))
    }

    fn stop(&self, _id: &str) -> Result<(), CpError> {
        Err(Self::not_sent("stop"))
    }

    fn restart(&self, _id: &str) -> Result<(), CpError> {
        Err(Self::not_sent("restart"))
    }

    fn probe_health(&self, _id: &str) -> Result<Health, CpError> {
        Ok(Health {
            healthy: true,
            detail: "simulated (setpoint plugins run)".into(),
        })
    }

    fn get_counters(&self, id: &str) -> Result<Counters, CpError> {
        let mut readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        let n = readings.entry(id.to_owned()).or_insert(0);
        let requests = REQUESTS_PER_READING * *n;
        *n += 1;
        Ok(Counters {
            requests,
            errors: 0,
        })
    }
}
