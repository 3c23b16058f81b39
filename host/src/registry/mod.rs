//! The plugin registry: every plugin file in the plugin directory, validated and loaded,
//! indexed by name and version so policy can pick one.
//!
//! Start at [`PluginRegistry::load_dir`] and [`PluginRegistry::resolve`]. A file that
//! fails validation is kept as a [`PluginEntry`] in state `rejected` with the reason, so
//! operators see it in `plugins list` and `/v1/plugins`; it never takes the place of a
//! valid plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::runtime::{Plugin, PluginRuntime, World};

/// One file of the plugin directory and what became of it.
#[derive(Debug, Clone, Serialize)]
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
    /// `active`, or `rejected` with the reason.
    #[serde(flatten)]
    pub state: EntryState,
}

/// Whether a file serves.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum EntryState {
    /// Valid and offered to policy.
    Active,
    /// Failed validation; the reason says why.
    Rejected(String),
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

/// The loaded plugins.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    entries: Vec<PluginEntry>,
    /// (kind, name) → version → plugin.
    index: BTreeMap<(World, String), BTreeMap<semver::Version, Arc<Plugin>>>,
}

impl PluginRegistry {
    /// Load every `*.wasm` file directly in `dir`. A missing directory is an empty
    /// registry (with a warning), so the daemon starts and reports it.
    pub fn load_dir(runtime: &PluginRuntime, dir: &Path) -> Self {
        let mut registry = PluginRegistry::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
                .collect(),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the plugin directory; no plugins loaded");
                Vec::new()
            }
        };
        files.sort();
        for file in files {
            registry.add_file(runtime, &file);
        }
        registry
    }

    /// Load one file into the registry.
    pub fn add_file(&mut self, runtime: &PluginRuntime, file: &Path) {
        match runtime.load_file(file) {
            Ok(plugin) => self.add(file, plugin),
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "plugin rejected");
                self.entries.push(PluginEntry {
                    file: file.to_path_buf(),
                    digest: String::new(),
                    name: None,
                    version: None,
                    kind: None,
                    state: EntryState::Rejected(error.to_string()),
                });
            }
        }
    }

    /// Add a loaded plugin (the embedder's way to register plugins it built in).
    pub fn add(&mut self, file: &Path, plugin: Arc<Plugin>) {
        let meta = plugin.metadata().clone();
        let key = (meta.kind, meta.name.clone());
        let versions = self.index.entry(key).or_default();
        if let Some(existing) = versions.get(&meta.version)
            && existing.digest() != plugin.digest()
        {
            let reason = format!(
                "{} duplicates {} {} from {} with different content; give one of them another version",
                file.display(),
                meta.kind,
                meta.label(),
                existing.origin()
            );
            tracing::warn!(%reason, "plugin rejected");
            self.entries.push(PluginEntry {
                file: file.to_path_buf(),
                digest: plugin.digest().to_owned(),
                name: Some(meta.name),
                version: Some(meta.version.to_string()),
                kind: Some(meta.kind),
                state: EntryState::Rejected(reason),
            });
            return;
        }
        tracing::info!(plugin = %meta.label(), kind = %meta.kind, file = %file.display(), "plugin loaded");
        versions.insert(meta.version.clone(), plugin.clone());
        self.entries.push(PluginEntry {
            file: file.to_path_buf(),
            digest: plugin.digest().to_owned(),
            name: Some(meta.name),
            version: Some(meta.version.to_string()),
            kind: Some(meta.kind),
            state: EntryState::Active,
        });
    }

    /// Every file seen, loaded or not.
    pub fn entries(&self) -> &[PluginEntry] {
        &self.entries
    }

    /// The newest valid `kind` plugin called `name` whose version matches `requirement`
    /// (any version when `None`).
    pub fn resolve(
        &self,
        kind: World,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> Result<Arc<Plugin>, ResolveError> {
        let Some(versions) = self.index.get(&(kind, name.to_owned())) else {
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

    /// A plugin by its exact digest (a rollout in flight keeps the digest it started
    /// with).
    pub fn by_digest(&self, digest: &str) -> Option<Arc<Plugin>> {
        self.index
            .values()
            .flat_map(|versions| versions.values())
            .find(|p| p.digest() == digest)
            .cloned()
    }
}
