//! The plugin registry: the plugins policy may choose from, indexed by name and version,
//! and every file of the plugin directory with its state.
//!
//! Start at [`PluginRegistry::resolve`] (what policy gets) and [`EntryState`] (what
//! operators see in `plugins list` and `/v1/plugins`). A registry is an immutable
//! snapshot: [`PluginDir`] watches the directory, validates new and changed files and
//! builds the next snapshot; [`watch`] is the daemon's task that swaps it in
//! (`Controller::set_plugins`). A file that fails validation is listed as `rejected`
//! with the reason and never takes the place of a valid plugin; a byte-identical copy of
//! a serving file under another name is listed as `duplicate` and not loaded again; a
//! plugin whose file was removed or replaced stays reachable by digest, as `retiring`,
//! while a rollout in flight still uses it ([`PluginRegistry::retain_in_use`]).

mod dir;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runtime::{Capability, Contract, Plugin, PluginRuntime, World};

pub use dir::{PluginDir, SETTLE_DELAY};

/// One file of the plugin directory (or one retained version) and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginEntry {
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of its bytes, hex (empty when it could not be read).
    pub digest: String,
    /// Its name (from metadata), when it loaded.
    pub name: Option<String>,
    /// Its version, when it loaded.
    pub version: Option<String>,
    /// Its kind, when it loaded.
    pub kind: Option<World>,
    /// The contract version it was built against, when it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<Contract>,
    /// The optional control-plane capabilities it imports, when it loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
    /// `active`, `superseded`, `retiring`, or `rejected` or `duplicate` with the reason.
    #[serde(flatten)]
    pub state: EntryState,
}

impl PluginEntry {
    /// `name@version`, or the file name when it did not load.
    pub fn label(&self) -> String {
        match (&self.name, &self.version) {
            (Some(name), Some(version)) => format!("{name}@{version}"),
            _ => self
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// Whether a plugin serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum EntryState {
    /// Valid, and the newest version of its name: policy without a pin gets it.
    Active,
    /// Valid, but a newer version of its name is active: only a policy that pins this
    /// version (`name@=1.2.0`, or a requirement the newer one does not meet) gets it.
    Superseded,
    /// Its file was removed or replaced, and a rollout in flight still uses it: it
    /// serves that rollout to the end and no new selection.
    Retiring,
    /// Failed validation; the reason says why. It never replaces a valid version.
    Rejected(String),
    /// The same bytes as a file that serves (a copy under another name): not loaded a
    /// second time, never selected; the reason names that file. It takes over when that
    /// file goes away.
    Duplicate(String),
}

impl EntryState {
    /// Every state's name, as `/metrics` labels them.
    pub const NAMES: [&'static str; 5] =
        ["active", "superseded", "retiring", "rejected", "duplicate"];

    /// Why the file does not serve, for `rejected` and `duplicate`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            EntryState::Rejected(reason) | EntryState::Duplicate(reason) => Some(reason),
            _ => None,
        }
    }

    /// The state's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryState::Active => "active",
            EntryState::Superseded => "superseded",
            EntryState::Retiring => "retiring",
            EntryState::Rejected(_) => "rejected",
            EntryState::Duplicate(_) => "duplicate",
        }
    }
}

/// Why a plugin reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No valid plugin of that name and kind.
    #[error(
        "no {kind} plugin named `{name}` is loaded (loaded {kind}s: {available}); put its .wasm in the plugin directory or fix the policy"
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The kind asked for.
        kind: World,
        /// What is there.
        available: String,
    },
    /// Nothing loaded matches yet, but plugin files are still being loaded (a large
    /// component compiling in the background): one of them may be it.
    #[error(
        "no {kind} plugin named `{name}`{requirement} is loaded yet; still loading: {files} (large components compile in the background; the instance is tried again)"
    )]
    Loading {
        /// The name asked for.
        name: String,
        /// The kind asked for.
        kind: World,
        /// ` matching REQ` when a version was required, else empty.
        requirement: String,
        /// The files not loaded yet, by name.
        files: String,
    },
    /// Plugins of that name exist but none matches the version requirement.
    #[error("no version of {kind} `{name}` matches `{requirement}` (loaded: {available})")]
    NoMatchingVersion {
        /// The name asked for.
        name: String,
        /// The kind asked for.
        kind: World,
        /// The requirement.
        requirement: String,
        /// The versions there are.
        available: String,
    },
}

/// A snapshot of the plugins: those offered to policy, those retained for rollouts in
/// flight, and every file with its state.
#[derive(Debug, Default, Clone)]
pub struct PluginRegistry {
    entries: Vec<PluginEntry>,
    /// (kind, name) → version → plugin: what policy may select.
    index: BTreeMap<(World, String), BTreeMap<semver::Version, Arc<Plugin>>>,
    /// digest → plugin: removed or replaced, kept for the rollouts that use them.
    retiring: BTreeMap<String, Arc<Plugin>>,
    /// Files whose current content is not loaded (nor rejected) yet.
    loading: Vec<PathBuf>,
}

impl PluginRegistry {
    /// Validate every `*.wasm` file directly in `dir` (see [`PluginDir`]), waiting for
    /// files that are still being written to settle. A missing directory is an empty
    /// registry (with a warning), so the daemon starts and reports it.
    pub fn load_dir(runtime: &PluginRuntime, dir: &Path) -> Self {
        let mut plugins = PluginDir::new(dir);
        plugins.load(runtime);
        plugins.registry()
    }

    /// Validate one file and add it: offered to policy when it passes, listed as
    /// rejected when not.
    pub fn add_file(&mut self, runtime: &PluginRuntime, file: &Path) {
        match runtime.validate_file(file) {
            Ok(plugin) => self.add(file, plugin),
            Err(error) => {
                let digest = std::fs::read(file)
                    .map(|bytes| dir::digest(&bytes))
                    .unwrap_or_default();
                self.reject(file, digest, crate::error_chain(&error));
            }
        }
    }

    /// Add a loaded plugin (the embedder's way to register plugins it built in). A
    /// second plugin with the same kind, name and version but other content is listed as
    /// rejected, naming both files; with the same content, as a duplicate; the first
    /// keeps serving.
    pub fn add(&mut self, file: &Path, plugin: Arc<Plugin>) {
        let meta = plugin.metadata().clone();
        let versions = self
            .index
            .entry((meta.kind, meta.name.clone()))
            .or_default();
        let state = match versions.get(&meta.version) {
            Some(existing) if existing.digest() != plugin.digest() => {
                EntryState::Rejected(format!(
                    "{} duplicates {} {} from {} with different content; give one of them another version or remove one",
                    file.display(),
                    meta.kind,
                    meta.label(),
                    existing.origin()
                ))
            }
            Some(existing) => EntryState::Duplicate(duplicate_reason(
                Path::new(existing.origin()),
                existing.digest(),
            )),
            None => {
                versions.insert(meta.version.clone(), plugin.clone());
                EntryState::Active
            }
        };
        self.entries.push(PluginEntry {
            file: file.to_path_buf(),
            digest: plugin.digest().to_owned(),
            name: Some(meta.name),
            version: Some(meta.version.to_string()),
            kind: Some(meta.kind),
            contract: Some(plugin.contract()),
            capabilities: plugin.capabilities().to_vec(),
            state,
        });
        self.refresh_states();
    }

    /// List `file`, whose bytes are those of `original`'s plugin (`plugin`), as a
    /// duplicate of it: listed, never selected.
    pub fn duplicate(&mut self, file: &Path, original: &Path, plugin: &Plugin) {
        let meta = plugin.metadata();
        self.entries.push(PluginEntry {
            file: file.to_path_buf(),
            digest: plugin.digest().to_owned(),
            name: Some(meta.name.clone()),
            version: Some(meta.version.to_string()),
            kind: Some(meta.kind),
            contract: Some(plugin.contract()),
            capabilities: plugin.capabilities().to_vec(),
            state: EntryState::Duplicate(duplicate_reason(original, plugin.digest())),
        });
    }

    /// List a file that failed validation.
    pub fn reject(&mut self, file: &Path, digest: String, reason: String) {
        self.entries.push(PluginEntry {
            file: file.to_path_buf(),
            digest,
            name: None,
            version: None,
            kind: None,
            contract: None,
            capabilities: Vec::new(),
            state: EntryState::Rejected(reason),
        });
    }

    /// Keep reachable by digest, as `retiring`, every plugin of `previous` (offered or
    /// retiring there) that this registry no longer offers and whose digest is in
    /// `in_use` (the digests of the rollouts in flight). What is not kept here is freed
    /// when its last holder (a call in progress) lets go.
    pub fn retain_in_use(&mut self, previous: &PluginRegistry, in_use: &HashSet<String>) {
        let candidates = previous
            .index
            .values()
            .flat_map(|versions| versions.values())
            .chain(previous.retiring.values());
        for plugin in candidates {
            let digest = plugin.digest();
            if !in_use.contains(digest) || self.offers(digest) || self.retiring.contains_key(digest)
            {
                continue;
            }
            let meta = plugin.metadata();
            self.retiring.insert(digest.to_owned(), plugin.clone());
            self.entries.push(PluginEntry {
                file: PathBuf::from(plugin.origin()),
                digest: digest.to_owned(),
                name: Some(meta.name.clone()),
                version: Some(meta.version.to_string()),
                kind: Some(meta.kind),
                contract: Some(plugin.contract()),
                capabilities: plugin.capabilities().to_vec(),
                state: EntryState::Retiring,
            });
        }
    }

    /// Every file seen, loaded or not, and every retiring version.
    pub fn entries(&self) -> &[PluginEntry] {
        &self.entries
    }

    /// How many entries are in each state, in [`EntryState::NAMES`] order.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        EntryState::NAMES.map(|name| {
            (
                name,
                self.entries
                    .iter()
                    .filter(|e| e.state.as_str() == name)
                    .count(),
            )
        })
    }

    /// List `file` as not loaded yet: its content is waiting to settle, or to be
    /// compiled ([`PluginDir::load_at_start`]).
    pub fn add_loading(&mut self, file: &Path) {
        self.loading.push(file.to_path_buf());
    }

    /// The files of the directory whose current content is not loaded (nor rejected)
    /// yet.
    pub fn loading(&self) -> &[PathBuf] {
        &self.loading
    }

    /// Whether any plugin is kept only for rollouts in flight.
    pub fn has_retiring(&self) -> bool {
        !self.retiring.is_empty()
    }

    /// The newest valid `kind` plugin called `name` whose version matches `requirement`
    /// (any version when `None`). Retiring plugins are never selected.
    pub fn resolve(
        &self,
        kind: World,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> Result<Arc<Plugin>, ResolveError> {
        let loading = || {
            (!self.loading.is_empty()).then(|| ResolveError::Loading {
                name: name.to_owned(),
                kind,
                requirement: requirement
                    .map(|r| format!(" matching `{r}`"))
                    .unwrap_or_default(),
                files: self
                    .loading
                    .iter()
                    .map(|f| {
                        f.file_name()
                            .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        };
        let Some(versions) = self.index.get(&(kind, name.to_owned())) else {
            if let Some(loading) = loading() {
                return Err(loading);
            }
            let available: Vec<String> = self
                .index
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, n), _)| n.clone())
                .collect();
            return Err(ResolveError::Unknown {
                name: name.to_owned(),
                kind,
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            });
        };
        let found = versions
            .iter()
            .rev()
            .find(|(v, _)| requirement.is_none_or(|r| r.matches(v)));
        match found {
            Some((_, plugin)) => Ok(plugin.clone()),
            None if let Some(loading) = loading() => Err(loading),
            None => Err(ResolveError::NoMatchingVersion {
                name: name.to_owned(),
                kind,
                requirement: requirement.map(|r| r.to_string()).unwrap_or_default(),
                available: versions
                    .keys()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Whether policy may select the plugin with this digest (it is active or
    /// superseded, not retiring).
    pub fn offers(&self, digest: &str) -> bool {
        self.index
            .values()
            .flat_map(|versions| versions.values())
            .any(|p| p.digest() == digest)
    }

    /// A plugin by its exact digest, offered or retiring (a rollout in flight keeps the
    /// digest it started with).
    pub fn by_digest(&self, digest: &str) -> Option<Arc<Plugin>> {
        self.index
            .values()
            .flat_map(|versions| versions.values())
            .find(|p| p.digest() == digest)
            .or_else(|| self.retiring.get(digest))
            .cloned()
    }

    /// Mark each offered entry active when it is the newest version of its name,
    /// superseded otherwise.
    fn refresh_states(&mut self) {
        for entry in &mut self.entries {
            if !matches!(entry.state, EntryState::Active | EntryState::Superseded) {
                continue;
            }
            let (Some(kind), Some(name), Some(version)) =
                (entry.kind, entry.name.as_ref(), entry.version.as_ref())
            else {
                continue;
            };
            let newest = self
                .index
                .get(&(kind, name.clone()))
                .and_then(|versions| versions.keys().next_back())
                .map(|v| v.to_string());
            entry.state = if newest.as_deref() == Some(version.as_str()) {
                EntryState::Active
            } else {
                EntryState::Superseded
            };
        }
    }
}

/// Why a file is a duplicate: the same component as `original` (by digest).
fn duplicate_reason(original: &Path, digest: &str) -> String {
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| original.display().to_string());
    format!(
        "same component as {name} (digest {}…); remove one",
        digest.get(..12).unwrap_or(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_not_found_while_files_load_is_loading_not_unknown() {
        let mut registry = PluginRegistry::default();
        let unknown = registry
            .resolve(World::Comparator, "big-diff", None)
            .unwrap_err();
        assert!(matches!(unknown, ResolveError::Unknown { .. }), "{unknown}");

        registry.add_loading(Path::new("/plugins/big.wasm"));
        let requirement = semver::VersionReq::parse("=0.2.0").unwrap();
        let loading = registry
            .resolve(World::Comparator, "big-diff", Some(&requirement))
            .unwrap_err();
        assert!(matches!(loading, ResolveError::Loading { .. }), "{loading}");
        let message = loading.to_string();
        assert!(
            message.contains("`big-diff` matching `=0.2.0`") && message.contains("big.wasm"),
            "{message}"
        );
    }
}
