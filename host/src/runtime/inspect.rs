//! Tells what a file is before the runtime compiles it: not Wasm, a core module, or a
//! component, and for a component which plugin world and contract version it exports.
//!
//! Start at [`classify`]. Nothing here compiles code, so it is cheap and safe to run on
//! any file an operator drops in.

use super::Error;

/// The contract package every plugin exports from.
pub const PACKAGE: &str = "setpoint:plugin";

/// The current contract version: what `wit/setpoint.wit` declares and the SDK builds.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// Every contract version this host serves, oldest first. A component declaring any
/// 0.x.y with the same minor (any x.y.z with the same major, from 1.0) loads.
pub const SUPPORTED_VERSIONS: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

/// A contract version the host serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Contract {
    /// `setpoint:plugin@0.1.0` (`wit/v0.1.0/setpoint.wit`): one instance per rollout,
    /// one `control-plane` interface.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `setpoint:plugin@0.2.0` (`wit/setpoint.wit`): group rollouts, capability
    /// interfaces, named metric queries.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// `0.1.0` or `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    fn matches(self, found: &semver::Version) -> bool {
        let ours = semver::Version::parse(self.as_str()).expect("contract versions are semver");
        if ours.major == 0 {
            found.major == 0 && found.minor == ours.minor
        } else {
            found.major == ours.major
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An optional control-plane capability of contract 0.2.0: an interface a strategy
/// imports only when it uses it, checked against the control plane when it loads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `setpoint:plugin/clones`: create and delete sibling instances.
    Clones,
    /// `setpoint:plugin/traffic`: weighted traffic endpoints.
    Traffic,
    /// `setpoint:plugin/metrics`: request counters and named queries.
    Metrics,
}

impl Capability {
    /// Every capability, in contract order.
    pub const ALL: [Capability; 3] = [Capability::Clones, Capability::Traffic, Capability::Metrics];

    /// The interface's name in the contract: `clones`, `traffic` or `metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Clones => "clones",
            Capability::Traffic => "traffic",
            Capability::Metrics => "metrics",
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Export name of the comparator world's interface, without version.
pub const COMPARATOR_EXPORT: &str = "setpoint:plugin/drift-comparator";

/// Export name of the strategy world's interface, without version.
pub const STRATEGY_EXPORT: &str = "setpoint:plugin/rollout-strategy";

/// The plugin world a component implements.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// `setpoint:plugin/comparator`: exports `drift-comparator`.
    Comparator,
    /// `setpoint:plugin/strategy`: exports `rollout-strategy`.
    Strategy,
}

impl World {
    /// The world's WIT name, for messages.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Comparator => "setpoint:plugin/comparator",
            World::Strategy => "setpoint:plugin/strategy",
        }
    }

    /// Short name: `comparator` or `strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Comparator => "comparator",
            World::Strategy => "strategy",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`classify`] found in a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentShape {
    /// The plugin world it implements.
    pub world: World,
    /// The contract version it was built against.
    pub contract: Contract,
    /// The optional capabilities it imports (0.2.0 strategies only; a 0.1.0 strategy
    /// imports one interface with every call and is told `unavailable` at the call).
    pub capabilities: Vec<Capability>,
    /// Every top-level import name, for `plugins check`.
    pub imports: Vec<String>,
    /// Every top-level export name, for `plugins check`.
    pub exports: Vec<String>,
    /// Whether it imports any `wasi:` interface (built with a WASI adapter).
    pub uses_wasi: bool,
}

/// Which served contract a version a plugin was built against belongs to, if any.
///
/// Follows semver: before 1.0 the minor version must match (0.1.x works with 0.1.0),
/// from 1.0 the major version.
pub fn contract_for(found: &semver::Version) -> Option<Contract> {
    SUPPORTED_VERSIONS.into_iter().find(|c| c.matches(found))
}

/// Whether a contract version a plugin was built against is one this host runs.
pub fn version_supported(found: &semver::Version) -> bool {
    contract_for(found).is_some()
}

/// The versions this host supports, as a sentence fragment.
pub fn supported_versions() -> String {
    let each: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|c| {
            let v = semver::Version::parse(c.as_str()).expect("contract versions are semver");
            if v.major == 0 {
                format!("{PACKAGE}@0.{}.x", v.minor)
            } else {
                format!("{PACKAGE}@{}.x", v.major)
            }
        })
        .collect();
    each.join(" or ")
}

/// Looks at `bytes` (from `origin`, a path or name for messages) and says whether it is a
/// component of a supported plugin world and contract version.
pub fn classify(origin: &str, bytes: &[u8]) -> Result<ComponentShape, Error> {
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::NotWasm {
            origin: origin.to_owned(),
            detail: describe_prefix(bytes),
        });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(Error::CoreModule {
            origin: origin.to_owned(),
        });
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(Error::NotWasm {
            origin: origin.to_owned(),
            detail: "it starts like WebAssembly but has an unknown version or layer".into(),
        });
    }

    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Error::Malformed {
            origin: origin.to_owned(),
            detail: e.to_string(),
        })?;
        use wasmparser::Payload;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| Error::Malformed {
                        origin: origin.to_owned(),
                        detail: e.to_string(),
                    })?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| Error::Malformed {
                        origin: origin.to_owned(),
                        detail: e.to_string(),
                    })?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }

    let mut found = None;
    for name in &exports {
        let (base, version) = match name.split_once('@') {
            Some((base, version)) => (base, Some(version)),
            None => (name.as_str(), None),
        };
        let world = match base {
            COMPARATOR_EXPORT => World::Comparator,
            STRATEGY_EXPORT => World::Strategy,
            _ => continue,
        };
        let version = version.ok_or_else(|| Error::IncompatibleVersion {
            origin: origin.to_owned(),
            found: "an unversioned package".into(),
            supported: supported_versions(),
        })?;
        let parsed = semver::Version::parse(version).map_err(|_| Error::IncompatibleVersion {
            origin: origin.to_owned(),
            found: format!("{PACKAGE}@{version}"),
            supported: supported_versions(),
        })?;
        let Some(contract) = contract_for(&parsed) else {
            return Err(Error::IncompatibleVersion {
                origin: origin.to_owned(),
                found: format!("{PACKAGE}@{version}"),
                supported: supported_versions(),
            });
        };
        if found.replace((world, contract)).is_some() {
            return Err(Error::NotAPlugin {
                origin: origin.to_owned(),
                detail: "it exports both the comparator and the strategy interface; a plugin \
                         implements exactly one world"
                    .into(),
            });
        }
    }
    let Some((world, contract)) = found else {
        return Err(Error::NotAPlugin {
            origin: origin.to_owned(),
            detail: format!(
                "it exports [{}] but a plugin exports `{COMPARATOR_EXPORT}@{CONTRACT_VERSION}` \
                 (comparator world) or `{STRATEGY_EXPORT}@{CONTRACT_VERSION}` (strategy world); \
                 components built against 0.1.0 are served too",
                exports.join(", ")
            ),
        });
    };
    const CONTROL_PLANE: [&str; 5] = [
        "setpoint:plugin/control-plane",
        "setpoint:plugin/instances",
        "setpoint:plugin/clones",
        "setpoint:plugin/traffic",
        "setpoint:plugin/metrics",
    ];
    if world == World::Comparator
        && let Some(cp) = imports
            .iter()
            .find(|i| CONTROL_PLANE.iter().any(|p| i.starts_with(p)))
    {
        return Err(Error::NotAPlugin {
            origin: origin.to_owned(),
            detail: format!(
                "it is a comparator but imports `{cp}`; comparators are pure and may import \
                 only `setpoint:plugin/logging`"
            ),
        });
    }
    let uses_wasi = imports.iter().any(|i| i.starts_with("wasi:"));
    let capabilities = if contract == Contract::V0_1 {
        Vec::new()
    } else {
        Capability::ALL
            .into_iter()
            .filter(|c| {
                let prefix = format!("{PACKAGE}/{}@", c.as_str());
                imports.iter().any(|i| i.starts_with(&prefix))
            })
            .collect()
    };
    Ok(ComponentShape {
        world,
        contract,
        capabilities,
        imports,
        exports,
        uses_wasi,
    })
}

fn describe_prefix(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the file is empty".into();
    }
    let head = &bytes[..bytes.len().min(4)];
    if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        format!(
            "it starts with the text {:?}, not the Wasm magic bytes `\\0asm`",
            String::from_utf8_lossy(head)
        )
    } else {
        format!("it starts with the bytes {head:02x?}, not the Wasm magic bytes `\\0asm`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_file_is_not_wasm() {
        let err = classify("notes.txt", b"hello world").unwrap_err();
        assert!(matches!(err, Error::NotWasm { .. }), "{err}");
        assert!(err.to_string().contains("\"hell\""), "{err}");
    }

    #[test]
    fn empty_file_is_not_wasm() {
        let err = classify("empty.wasm", b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn core_module_is_named_as_such() {
        // The smallest valid core module: magic + version 1.
        let err = classify("core.wasm", b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(err, Error::CoreModule { .. }), "{err}");
    }

    #[test]
    fn contract_versions_follow_semver() {
        let v = semver::Version::new;
        assert_eq!(contract_for(&v(0, 1, 0)), Some(Contract::V0_1));
        assert_eq!(contract_for(&v(0, 1, 7)), Some(Contract::V0_1));
        assert_eq!(contract_for(&v(0, 2, 0)), Some(Contract::V0_2));
        assert_eq!(contract_for(&v(0, 2, 3)), Some(Contract::V0_2));
        assert!(!version_supported(&v(0, 3, 0)));
        assert!(!version_supported(&v(9, 0, 0)));
        assert_eq!(
            supported_versions(),
            "setpoint:plugin@0.1.x or setpoint:plugin@0.2.x"
        );
        assert_eq!(Contract::V0_2.as_str(), CONTRACT_VERSION);
    }
}
