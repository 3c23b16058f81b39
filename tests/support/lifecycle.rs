//! Comparing what the daemon audited with what the control plane did: the reference
//! control plane's lifecycle call log (`GET /api/extensions/lifecycle-calls`) against the
//! mutating calls in the daemon's audit (done, failed, or in doubt after a crash), read
//! from its SQLite store. Plus what the crash and shutdown tests share: a seeded random
//! number generator whose seed a test prints and an environment variable replays, the
//! instance's clones, a rule label, the daemon's settings with the shared compile
//! cache, and when an instance counts as settled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};
use setpoint::store::{AuditFilter, Store};

use crate::process::Setpoint;
use crate::traffic::endpoint_weights;
use crate::workspace_root;
use crate::world::World;

/// The label the reference control plane puts on clones.
pub const CLONE_OF: &str = "setpoint.io/clone-of";

/// The daemon's configuration file: `policy` (TOML) with the plugin compile cache shared
/// by every test run (`target/test-plugin-cache`), so a restart does not recompile.
pub fn settings_with_cache(policy: &str) -> String {
    let cache = workspace_root().join("target/test-plugin-cache");
    format!(
        "[plugins]\ncache_dir = {:?}\n{policy}",
        cache.display().to_string()
    )
}

/// Put `key = value` on the instance's labels (replacing its labels).
pub async fn label(world: &World, id: &str, key: &str, value: &str) {
    world
        .http
        .put(format!(
            "{}/api/server/instances/{id}/metadata",
            world.cp_url()
        ))
        .json(&json!({ key: value }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// Every clone on the control plane, as `(clone, instance it was cloned from)`.
pub async fn clones(world: &World) -> Vec<(String, String)> {
    world
        .get("/api/server/instances")
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_owned(),
                i["metadata"][CLONE_OF].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// In sync on `level` (the daemon says `Synced` `InSync`, no rollout, nothing given
/// up, and the instance serves `level`); with `endpoint`, its traffic endpoint sends
/// all traffic to itself.
pub async fn settled(
    world: &World,
    daemon: &Setpoint,
    id: &str,
    level: &str,
    endpoint: bool,
) -> bool {
    let v = daemon.instance(id).await;
    let in_sync = v["rollout"].is_null()
        && v["givenUp"].is_null()
        && v["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type_"] == "Synced" && c["status"] == true && c["reason"] == "InSync")
        });
    in_sync
        && world.serves(id, level).await
        && (!endpoint
            || endpoint_weights(&world.http, &world.cp_url(), id).await
                == Some(vec![(id.to_owned(), 100)]))
}

/// A small seeded generator (SplitMix64): the same seed gives the same trials.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The seed from the environment variable `var` when set (to replay a run), else one
    /// from the clock; printed either way, with how to replay it.
    pub fn from_env(var: &str) -> (Rng, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("seed {seed} (replay with {var}={seed})");
        (Rng(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A lifecycle operation as the control plane names it.
pub type Operation = &'static str;

/// The control plane's name for a strategy import, when it is a lifecycle call.
fn operation(call: &str) -> Option<Operation> {
    Some(match call {
        "start" => "start",
        "stop" => "stop",
        "restart" => "restart",
        "clone-instance" => "clone",
        "delete-clone" => "delete",
        _ => return None,
    })
}

/// How the daemon's audit says a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Audited {
    /// It returned success.
    Ok,
    /// It returned an error (it may or may not have reached the control plane).
    Failed,
    /// The daemon died with it in flight (intent journal): it may have gone through.
    InDoubt,
}

/// One mutating lifecycle call in the daemon's audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedCall {
    pub operation: Operation,
    /// The instance the call named (for a clone: the instance cloned).
    pub target: String,
    pub audited: Audited,
    pub message: String,
}

/// One call in the control plane's lifecycle call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub operation: String,
    pub target: String,
    pub ok: bool,
}

/// The control plane's lifecycle call log, oldest first.
pub async fn recorded_calls(world: &World) -> Vec<RecordedCall> {
    let log = world.get("/api/extensions/lifecycle-calls").await;
    log["calls"]
        .as_array()
        .expect("the control plane serves its lifecycle call log")
        .iter()
        .map(|c| RecordedCall {
            operation: c["operation"].as_str().unwrap_or_default().to_owned(),
            target: c["instanceId"].as_str().unwrap_or_default().to_owned(),
            ok: c["ok"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// Every lifecycle call in the daemon's audit, read from the store at `db`: strategy
/// calls with their outcome, calls reported at a start as saved or in doubt (intent
/// journal), and the clones the host deleted itself (leak sweep, superseded rollouts).
pub fn audited_calls(db: &Path) -> Vec<AuditedCall> {
    let store = Store::open(db).expect("the daemon's database opens");
    let mut calls = Vec::new();
    let mut intents_seen = BTreeSet::new();
    {
        let mut after = None;
        loop {
            let page = store
                .audit(&AuditFilter {
                    instance_id: None,
                    after_id: after,
                    ..AuditFilter::default()
                })
                .expect("the audit reads");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for record in &page {
                let message = &record.entry.message;
                let d = &record.entry.details;
                // A call's entry names its intent (id and time), as does a report of
                // the intent at a start (under the rollout and under the instance the
                // call named): each intent is counted once.
                let intent = (d["intent"].as_i64(), d["intendedAtMs"].as_u64());
                if intent.0.is_some() && !intents_seen.insert(intent) {
                    continue;
                }
                let call = if d.get("mutating") == Some(&Value::Bool(true)) {
                    let audited = if message.ends_with(": ok") {
                        Audited::Ok
                    } else if message.ends_with(": failed") {
                        Audited::Failed
                    } else {
                        // Denied or simulated: never sent.
                        continue;
                    };
                    operation(d["call"].as_str().unwrap_or_default())
                        .map(|op| (op, d["target"].clone(), audited))
                } else if d.get("intent").is_some() {
                    // Reported at a start (or by the next step) from the intent journal.
                    let audited = match d["outcome"].as_str() {
                        None => Audited::InDoubt,
                        Some("ok") => Audited::Ok,
                        Some(_) => Audited::Failed,
                    };
                    operation(d["call"].as_str().unwrap_or_default())
                        .map(|op| (op, d["target"].clone(), audited))
                } else if d.get("clone").is_some() && message.contains("clone ") {
                    // A clone the host deleted itself: `leaked clone … : OUTCOME`, `clone
                    // … of the superseded rollout: OUTCOME`.
                    let outcome = d["outcome"]
                        .as_str()
                        .or(message.rsplit_once(": ").map(|(_, o)| o));
                    let audited = if outcome == Some("deleted") {
                        Audited::Ok
                    } else {
                        Audited::Failed
                    };
                    Some(("delete", d["clone"].clone(), audited))
                } else {
                    None
                };
                if let Some((operation, target, audited)) = call {
                    calls.push(AuditedCall {
                        operation,
                        target: target.as_str().unwrap_or_default().to_owned(),
                        audited,
                        message: message.clone(),
                    });
                }
            }
        }
    }
    calls
}

/// Counts of one `(operation, target)` on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub recorded_ok: usize,
    pub recorded_failed: usize,
    pub audited_ok: usize,
    pub audited_failed: usize,
    pub in_doubt: usize,
}

/// What [`compare`] found.
#[derive(Debug, Clone, Default)]
pub struct Agreement {
    pub by_call: BTreeMap<(String, String), Tally>,
    /// Disagreements, one line each; empty when the audit and the control plane agree.
    pub problems: Vec<String>,
}

impl Agreement {
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for x in self.by_call.values() {
            t.recorded_ok += x.recorded_ok;
            t.recorded_failed += x.recorded_failed;
            t.audited_ok += x.audited_ok;
            t.audited_failed += x.audited_failed;
            t.in_doubt += x.in_doubt;
        }
        t
    }
}

/// The audit and the control plane agree on every mutation when, for each operation on
/// each instance: every call the control plane recorded was audited (as done, failed or
/// in doubt), and every call audited as done is one the control plane carried out.
/// Counted per `(operation, target)`: calls on one instance are made one at a time.
pub fn compare(recorded: &[RecordedCall], audited: &[AuditedCall]) -> Agreement {
    let mut by_call: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for call in recorded {
        let tally = by_call
            .entry((call.operation.clone(), call.target.clone()))
            .or_default();
        if call.ok {
            tally.recorded_ok += 1;
        } else {
            tally.recorded_failed += 1;
        }
    }
    for call in audited {
        let tally = by_call
            .entry((call.operation.to_owned(), call.target.clone()))
            .or_default();
        match call.audited {
            Audited::Ok => tally.audited_ok += 1,
            Audited::Failed => tally.audited_failed += 1,
            Audited::InDoubt => tally.in_doubt += 1,
        }
    }
    let mut problems = Vec::new();
    for ((operation, target), t) in &by_call {
        let recorded = t.recorded_ok + t.recorded_failed;
        if recorded > t.audited_ok + t.audited_failed + t.in_doubt {
            problems.push(format!(
                "{operation} on {target}: the control plane carried out {recorded} call(s) ({} ok), the audit accounts for {} ({} ok, {} failed, {} in doubt)",
                t.recorded_ok,
                t.audited_ok + t.audited_failed + t.in_doubt,
                t.audited_ok,
                t.audited_failed,
                t.in_doubt
            ));
        }
        if t.audited_ok > t.recorded_ok {
            problems.push(format!(
                "{operation} on {target}: audited as done {} time(s), the control plane carried it out {} time(s)",
                t.audited_ok, t.recorded_ok
            ));
        }
    }
    Agreement { by_call, problems }
}
