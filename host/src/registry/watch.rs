//! The daemon's plugin-directory watcher: filesystem notifications, a rescan every
//! [`RESCAN_INTERVAL`] as the fallback, and the swap of each new registry into the
//! controller.
//!
//! Start at [`run`]. Each wake-up scans the directory ([`PluginDir::scan`], on a blocking
//! thread since validation compiles), and when anything changed, or a retiring plugin
//! may have been released, offers the new registry to the controller
//! (`Controller::set_plugins`), logs every state change and updates the
//! `setpoint_plugins` gauge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{Notify, watch};

use super::{EntryState, PluginDir, PluginEntry, PluginRegistry, SETTLE_DELAY};
use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::runtime::PluginRuntime;

/// How often the directory is rescanned without a notification: the fallback when
/// notifications are unavailable (network filesystems, some containers) or lost, and
/// the pace at which retiring plugins are released after their rollouts finish. A scan
/// of an unchanged directory is one `readdir` and a `stat` per file.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait after a notification for the rest of its burst before scanning.
const EVENT_COALESCE: Duration = Duration::from_millis(20);

/// Watch `dir` until `stop` turns true, keeping `controller`'s registry in step with it.
pub async fn run(
    mut dir: PluginDir,
    runtime: Arc<PluginRuntime>,
    controller: Arc<Controller>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let wake = Arc::new(Notify::new());
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut watch_error: Option<String> = None;
    let mut pending = false;
    // A change the controller has not taken yet (the store could not be read).
    let mut unpublished = false;
    loop {
        if watcher.is_none() {
            match start_watcher(&dir, wake.clone()) {
                Ok(w) => {
                    tracing::debug!(dir = %dir.path().display(), "watching the plugin directory");
                    watcher = Some(w);
                    watch_error = None;
                }
                Err(error) => {
                    let error = error.to_string();
                    if watch_error.as_ref() != Some(&error) {
                        tracing::info!(dir = %dir.path().display(), %error, every = ?RESCAN_INTERVAL, "no filesystem notifications for the plugin directory; rescanning it instead");
                        watch_error = Some(error);
                    }
                }
            }
        }
        let wait = if pending {
            SETTLE_DELAY
        } else {
            RESCAN_INTERVAL
        };
        let notified = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = wake.notified() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if notified {
            // A burst of events (a copy writes many times) makes one scan; the settle
            // delay catches the rest.
            tokio::time::sleep(EVENT_COALESCE).await;
        }

        let scan_runtime = runtime.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let report = dir.scan(&scan_runtime);
            (dir, report)
        })
        .await;
        let report;
        (dir, report) = match joined {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "the plugin directory scan panicked; plugin hot reload stopped");
                return;
            }
        };
        pending = report.pending;
        unpublished |= report.changed;
        if unpublished || controller.plugins().has_retiring() {
            unpublished = !publish(&dir, &controller, &metrics);
        }
    }
}

/// Offer the directory's registry to the controller, then log what changed and count
/// the states. `false` when the controller kept its current plugins (try again later).
pub fn publish(dir: &PluginDir, controller: &Controller, metrics: &Metrics) -> bool {
    let before = controller.plugins();
    match controller.set_plugins(dir.registry()) {
        Ok(after) => {
            log_changes(&before, &after);
            count(metrics, &after);
            true
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot tell which plugins rollouts still use; keeping the current plugins until the next scan");
            false
        }
    }
}

/// Set the `setpoint_plugins{state}` gauge from a registry, and register the call
/// metrics of every plugin it serves at zero.
pub fn count(metrics: &Metrics, registry: &PluginRegistry) {
    for (state, n) in registry.counts() {
        metrics.set_plugins(state, n);
    }
    for entry in registry.entries() {
        if matches!(entry.state, EntryState::Active | EntryState::Superseded)
            && let Some(kind) = entry.kind
        {
            metrics.plugin_loaded(&entry.label(), kind);
        }
    }
}

/// Log every entry whose state is new: loaded, superseded, rejected (with the reason),
/// retiring, gone.
pub fn log_changes(before: &PluginRegistry, after: &PluginRegistry) {
    type Key = (std::path::PathBuf, String);
    let index = |r: &PluginRegistry| -> BTreeMap<Key, PluginEntry> {
        r.entries()
            .iter()
            .map(|e| ((e.file.clone(), e.digest.clone()), e.clone()))
            .collect()
    };
    let (old, new) = (index(before), index(after));
    for (key, entry) in &new {
        if old.get(key).is_some_and(|o| o.state == entry.state) {
            continue;
        }
        let file = entry.file.display();
        let plugin = entry.label();
        let kind = entry.kind.map(|k| k.to_string()).unwrap_or_default();
        match &entry.state {
            EntryState::Active => {
                tracing::info!(%plugin, %kind, %file, digest = %entry.digest, "plugin active")
            }
            EntryState::Superseded => {
                tracing::info!(%plugin, %kind, %file, "plugin superseded by a newer version; served only where policy pins it")
            }
            EntryState::Retiring => {
                tracing::info!(%plugin, %kind, %file, digest = %entry.digest, "plugin file removed or replaced; kept for the rollouts in flight that use it")
            }
            EntryState::Rejected(reason) => {
                tracing::warn!(%plugin, %file, %reason, "plugin rejected")
            }
            EntryState::Duplicate(reason) => {
                tracing::warn!(%plugin, %file, %reason, "plugin file is a duplicate; not loaded")
            }
        }
    }
    for (key, entry) in &old {
        if !new.contains_key(key) {
            tracing::info!(plugin = %entry.label(), file = %entry.file.display(), was = entry.state.as_str(), "plugin unloaded");
        }
    }
}

fn start_watcher(dir: &PluginDir, wake: Arc<Notify>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads are no news; anything else (and an error, such as an overflowed event
        // queue) is worth a scan.
        let news = match &event {
            Ok(event) => !event.kind.is_access(),
            Err(_) => true,
        };
        if news {
            wake.notify_one();
        }
    })?;
    watcher.watch(dir.path(), notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
