//! The plugin directory as the daemon sees it over time: which files are there, which
//! have settled, and what validating each one's current content gave.
//!
//! Start at [`PluginDir::scan`]. A file is validated only once it is *stable*: the same
//! size and modification time in two scans at least [`SETTLE_DELAY`] apart, so a file
//! still being copied in is never loaded half-written. Validation is
//! [`PluginRuntime::validate_file`]'s: a component of a supported world and contract
//! version, with its exports and metadata, that compiles, links and passes its smoke
//! call. A file whose new content fails keeps serving the version it served before;
//! files whose names start with `.` (temporary names, as `plugins install` writes) are
//! ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest as _;

use super::PluginRegistry;
use crate::runtime::{LARGE_COMPONENT_BYTES, Plugin, PluginRuntime};

/// How long a file's size and modification time must stay the same before it is
/// validated. Copying a plugin of a few hundred kilobytes takes milliseconds, so a
/// writer that paused this long has almost surely finished; short enough that a new
/// file serves well within two seconds. Writing to a temporary name and renaming into
/// place (what `plugins install` does) makes the wait moot.
pub const SETTLE_DELAY: Duration = Duration::from_millis(300);

/// At start-up, how many settle rounds [`PluginDir::load`] waits for files still being
/// written before it goes on without them (the watcher picks them up later).
const STARTUP_SETTLE_ROUNDS: u32 = 10;

/// SHA-256 of a file's bytes, hex (what [`Plugin::digest`] is).
pub(super) fn digest(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What a scan saw of one file: its size, modification time and (on Unix) inode, so a
/// file renamed into place is noticed even when it keeps the old one's size and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// One `.wasm` file of the directory.
#[derive(Debug)]
struct Tracked {
    /// The latest observation, and when it was first made.
    seen: Observation,
    seen_at: Instant,
    /// The observation whose content was last validated.
    validated: Option<Observation>,
    /// The version this file serves, with the order in which it was accepted (the
    /// earlier of two files claiming one name and version wins).
    serving: Option<(u64, Arc<Plugin>)>,
    /// The file's current content when it failed validation: digest and reason.
    rejected: Option<(String, String)>,
    /// The file whose serving plugin has this file's exact content (digest): not loaded
    /// again, listed as a duplicate of it.
    duplicate_of: Option<(String, PathBuf)>,
}

/// What one scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Something served or listed changed: build a new registry.
    pub changed: bool,
    /// A file is waiting to settle: scan again after [`SETTLE_DELAY`].
    pub pending: bool,
}

/// The plugin directory, tracked across scans.
#[derive(Debug)]
pub struct PluginDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Tracked>,
    accepted: u64,
    unreadable: Option<String>,
    /// While set ([`load_at_start`](Self::load_at_start)), a large component whose code
    /// is not in the compile cache is left for a later scan.
    defer_uncompiled_large: bool,
}

impl PluginDir {
    /// Track `dir`; nothing is read until the first scan.
    pub fn new(dir: &Path) -> Self {
        PluginDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            accepted: 0,
            unreadable: None,
            defer_uncompiled_large: false,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Scan until every file has settled and been validated, or for at most
    /// ten settle delays (start-up, and `plugins list DIR`).
    pub fn load(&mut self, runtime: &PluginRuntime) {
        for _ in 0..STARTUP_SETTLE_ROUNDS {
            if !self.scan(runtime).pending {
                return;
            }
            std::thread::sleep(SETTLE_DELAY);
        }
        tracing::warn!(dir = %self.dir.display(), "some plugin files are still being written; they are loaded once they settle");
    }

    /// [`load`](Self::load) as the daemon starts: the same, except that a large component
    /// ([`LARGE_COMPONENT_BYTES`] or more) whose code is not in the compile cache yet is
    /// left for the next [`scan`](Self::scan), so that compiling it (seconds to minutes)
    /// does not hold up the start and every other instance's reconciles. Until it is
    /// loaded, the registry lists it as loading ([`PluginRegistry::loading`]).
    pub fn load_at_start(&mut self, runtime: &PluginRuntime) {
        self.defer_uncompiled_large = true;
        self.load(runtime);
        self.defer_uncompiled_large = false;
    }

    /// Look at the directory once: forget removed files, note new and changed ones,
    /// validate those that have settled.
    pub fn scan(&mut self, runtime: &PluginRuntime) -> ScanReport {
        let mut report = ScanReport::default();
        let listing = match list_wasm(&self.dir) {
            Ok(listing) => {
                if self.unreadable.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "the plugin directory is readable again");
                }
                listing
            }
            Err(error) => {
                // Keep serving what was loaded: an unreadable directory is not an
                // instruction to unload everything.
                let error = error.to_string();
                if self.unreadable.as_ref() != Some(&error) {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot read the plugin directory; keeping the plugins loaded so far");
                    self.unreadable = Some(error);
                }
                return report;
            }
        };

        let before = self.files.len();
        self.files.retain(|path, _| listing.contains_key(path));
        report.changed |= self.files.len() != before;

        // Which file serves each digest; a duplicate whose original no longer serves
        // its content is validated again (it may take over).
        let mut serving_digests: HashMap<String, PathBuf> = self
            .files
            .iter()
            .filter_map(|(path, t)| {
                t.serving
                    .as_ref()
                    .map(|(_, p)| (p.digest().to_owned(), path.clone()))
            })
            .collect();
        for tracked in self.files.values_mut() {
            if let Some((digest, original)) = &tracked.duplicate_of
                && serving_digests.get(digest) != Some(original)
            {
                tracked.duplicate_of = None;
                tracked.validated = None;
                report.changed = true;
            }
        }

        let now = Instant::now();
        for (path, seen) in listing {
            let tracked = self.files.entry(path.clone()).or_insert(Tracked {
                seen,
                seen_at: now,
                validated: None,
                serving: None,
                rejected: None,
                duplicate_of: None,
            });
            if tracked.validated == Some(seen) {
                continue;
            }
            if tracked.seen != seen {
                tracked.seen = seen;
                tracked.seen_at = now;
                report.pending = true;
                continue;
            }
            if now.duration_since(tracked.seen_at) < SETTLE_DELAY {
                report.pending = true;
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) if bytes.len() as u64 == seen.len => bytes,
                // Changed or gone since it was listed: look again next time.
                _ => {
                    report.pending = true;
                    continue;
                }
            };
            let digest = digest(&bytes);
            if self.defer_uncompiled_large
                && bytes.len() >= LARGE_COMPONENT_BYTES
                && !runtime.is_compiled(&bytes, &digest)
            {
                tracing::info!(file = %path.display(), bytes = bytes.len(), "large plugin file not compiled yet: it is compiled in the background, and serves once loaded");
                continue;
            }
            tracked.validated = Some(seen);
            if tracked
                .serving
                .as_ref()
                .is_some_and(|(_, p)| p.digest() == digest)
            {
                // Back to what it serves (a bad copy was replaced by the good one).
                report.changed |= tracked.rejected.take().is_some();
                continue;
            }
            if tracked.rejected.as_ref().is_some_and(|(d, _)| *d == digest) {
                continue;
            }
            report.changed = true;
            tracked.duplicate_of = None;
            if let Some(original) = serving_digests
                .get(&digest)
                .filter(|p| **p != path)
                .cloned()
            {
                // A copy of a file that serves: not loaded a second time.
                tracing::debug!(file = %path.display(), original = %original.display(), "plugin file is a copy of one that serves");
                if tracked.serving.take().is_some() {
                    serving_digests.retain(|_, p| *p != path);
                }
                tracked.rejected = None;
                tracked.duplicate_of = Some((digest, original));
                continue;
            }
            let origin = path.display().to_string();
            match runtime
                .load(&origin, &bytes)
                .and_then(|plugin| runtime.smoke(&plugin).map(|()| plugin))
            {
                Ok(plugin) => {
                    self.accepted += 1;
                    serving_digests.retain(|_, p| *p != path);
                    serving_digests.insert(plugin.digest().to_owned(), path.clone());
                    tracked.serving = Some((self.accepted, plugin));
                    tracked.rejected = None;
                }
                Err(error) => {
                    let reason = crate::error_chain(&error);
                    if let Some((_, serving)) = &tracked.serving {
                        tracing::warn!(file = %path.display(), %reason, keeps_serving = %serving.label(), "new content of a plugin file rejected; the previous version keeps serving");
                    }
                    tracked.rejected = Some((digest, reason));
                }
            }
        }
        // An original that took other content in this scan: its copies are judged again
        // at the next one.
        report.pending |= self.files.values().any(|t| {
            t.duplicate_of
                .as_ref()
                .is_some_and(|(digest, original)| serving_digests.get(digest) != Some(original))
        });
        report
    }

    /// The registry these files make: every serving version in the order it was
    /// accepted (so the first of two files claiming one name and version keeps it), then
    /// every duplicate and every rejected file.
    pub fn registry(&self) -> PluginRegistry {
        let mut registry = PluginRegistry::default();
        let mut serving: Vec<(u64, &Path, &Arc<Plugin>)> = self
            .files
            .iter()
            .filter_map(|(path, t)| t.serving.as_ref().map(|(n, p)| (*n, path.as_path(), p)))
            .collect();
        serving.sort_by_key(|(n, _, _)| *n);
        for (_, path, plugin) in serving {
            registry.add(path, plugin.clone());
        }
        for (path, tracked) in &self.files {
            if let Some((digest, original)) = &tracked.duplicate_of
                && let Some((_, plugin)) = self.files.get(original).and_then(|t| t.serving.as_ref())
                && plugin.digest() == digest
            {
                registry.duplicate(path, original, plugin);
            }
        }
        for (path, tracked) in &self.files {
            if let Some((digest, reason)) = &tracked.rejected {
                registry.reject(path, digest.clone(), reason.clone());
            }
            if tracked.validated != Some(tracked.seen) {
                registry.add_loading(path);
            }
        }
        registry
    }
}

/// The `.wasm` files directly in `dir` (names starting with `.` left out), with what
/// they look like now.
fn list_wasm(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Observation>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || path.extension().is_none_or(|x| x != "wasm") {
            continue;
        }
        // Follows symlinks: an operator may link a versioned file into place.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        files.insert(
            path,
            Observation {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: inode(&meta),
            },
        );
    }
    Ok(files)
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}
