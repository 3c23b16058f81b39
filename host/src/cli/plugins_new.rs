//! `setpoint plugins new NAME --kind comparator|strategy [--lang rust|js]`: write a plugin
//! project that builds and loads with `setpoint plugins check` with no edits: a Rust crate
//! (which also passes its own `cargo test`), or a JavaScript package built with
//! componentize-js.
//!
//! A template set is one language and one kind: the files under
//! `host/templates/<lang>-<kind>/`, embedded in the binary with `include_str!`
//! ([`template_set`]). Adding a language is adding its sets there and a [`Lang`]
//! variant; nothing else here changes. Every file is rendered by replacing a few
//! placeholders ([`Placeholders`]): `{{name}}`, `{{sdk_path}}`, `{{repo}}`, and, in Rust
//! sources, the identifier `TemplatePlugin` (so a Rust template is valid Rust as it
//! stands: the host's unit tests compile both and run their tests).
//!
//! A JavaScript package gets the contract, `wit/setpoint.wit` of the checkout this
//! `setpoint` was built from, embedded verbatim at `wit/deps/setpoint/setpoint.wit`, and
//! its own world in `wit/world.wit` that imports only what the template's source calls:
//! componentize-js imports every interface of the world it builds, used or not, and the
//! host refuses a strategy that imports a capability its control plane does not offer.
//! Its `package-lock.json` is the one of `examples/js-comparator` (a unit test keeps them
//! the same), so both pin the same componentize-js.
//!
//! The SDK (`setpoint-plugin`) is not on crates.io, so a generated Rust crate depends on it
//! by path: by default the `plugins/sdk` of the checkout this `setpoint` was built from
//! (known at build time), or `--sdk PATH`. A JavaScript package needs no SDK, and `--sdk`
//! with `--lang js` is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::runtime::inspect::CONTRACT_VERSION;

/// Where the SDK was when this binary was built: `<checkout>/plugins/sdk`.
const BUILT_SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk");

/// The SDK's package name, as a generated crate depends on it.
const SDK_PACKAGE: &str = "setpoint-plugin";

/// Longest accepted plugin name (crates.io's limit for crate names).
const MAX_NAME_LEN: usize = 64;

/// `setpoint plugins new …`
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: its crate or npm package name, and the name it reports to the
    /// host. Lowercase letters, digits and `-`, starting with a letter (e.g.
    /// `port-check`).
    pub name: String,
    /// What the plugin is: a drift comparator or a rollout strategy.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The language of the plugin's source.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The directory to create the project in (it must not exist, or be empty); default:
    /// `./NAME`.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Rust only: the SDK crate (`plugins/sdk` of a setpoint checkout) the plugin
    /// depends on by path; default: the one this `setpoint` was built from.
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// The plugin kinds a template exists for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Finds the drifts between a desired and an actual configuration.
    Comparator,
    /// Rolls a change out to an instance, one step at a time.
    Strategy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Comparator => "comparator",
            Kind::Strategy => "strategy",
        })
    }
}

/// The languages `plugins new` knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust, with the `setpoint-plugin` SDK: a crate built with
    /// `scripts/build-plugin-crate` or cargo-component.
    Rust,
    /// JavaScript: an npm package built with componentize-js (needs node >= 20.19, npm and
    /// the npm registry; the component is about 12 MB).
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
        })
    }
}

/// One file of a template set: where it goes in the new crate, and its text.
#[derive(Debug, Clone, Copy)]
pub struct TemplateFile {
    /// Path relative to the crate's directory, `/`-separated.
    pub path: &'static str,
    /// The text, with placeholders.
    pub text: &'static str,
}

macro_rules! template {
    ($set:literal, $path:literal) => {
        TemplateFile {
            path: $path,
            text: include_str!(concat!("../../templates/", $set, "/", $path)),
        }
    };
    ($set:literal, $path:literal from $file:literal) => {
        TemplateFile {
            path: $path,
            text: include_str!(concat!("../../templates/", $set, "/", $file)),
        }
    };
}

const RUST_COMPARATOR: &[TemplateFile] = &[
    template!("rust-comparator", "Cargo.toml" from "Cargo.toml.tmpl"),
    template!("rust-comparator", ".gitignore" from "gitignore"),
    template!("rust-comparator", "README.md"),
    template!("rust-comparator", "src/lib.rs"),
    template!("rust-comparator", "testdata/desired.json"),
    template!("rust-comparator", "testdata/actual.json"),
];

const RUST_STRATEGY: &[TemplateFile] = &[
    template!("rust-strategy", "Cargo.toml" from "Cargo.toml.tmpl"),
    template!("rust-strategy", ".gitignore" from "gitignore"),
    template!("rust-strategy", "README.md"),
    template!("rust-strategy", "src/lib.rs"),
    template!("rust-strategy", "testdata/desired.json"),
    template!("rust-strategy", "testdata/actual.json"),
];

/// The contract, as a JavaScript package's `wit/` holds it (componentize-js reads
/// `wit/deps/*/` as the packages the package's own `wit/world.wit` uses).
const JS_CONTRACT: TemplateFile = TemplateFile {
    path: "wit/deps/setpoint/setpoint.wit",
    text: include_str!("../../../wit/setpoint.wit"),
};

/// The lock file of both JavaScript sets: `examples/js-comparator/package-lock.json`
/// with the package's name as `{{name}}`.
const JS_LOCK: TemplateFile = TemplateFile {
    path: "package-lock.json",
    text: include_str!("../../templates/js-package-lock.json"),
};

const JS_COMPARATOR: &[TemplateFile] = &[
    template!("js-comparator", "package.json" from "package.json.tmpl"),
    JS_LOCK,
    template!("js-comparator", ".gitignore" from "gitignore"),
    template!("js-comparator", "README.md"),
    template!("js-comparator", "build.mjs"),
    template!("js-comparator", "src/comparator.js"),
    template!("js-comparator", "wit/world.wit"),
    JS_CONTRACT,
    template!("js-comparator", "testdata/desired.json"),
    template!("js-comparator", "testdata/actual.json"),
];

const JS_STRATEGY: &[TemplateFile] = &[
    template!("js-strategy", "package.json" from "package.json.tmpl"),
    JS_LOCK,
    template!("js-strategy", ".gitignore" from "gitignore"),
    template!("js-strategy", "README.md"),
    template!("js-strategy", "build.mjs"),
    template!("js-strategy", "src/strategy.js"),
    template!("js-strategy", "wit/world.wit"),
    JS_CONTRACT,
    template!("js-strategy", "testdata/desired.json"),
    template!("js-strategy", "testdata/actual.json"),
];

/// The template set for `lang` and `kind`.
pub fn template_set(lang: Lang, kind: Kind) -> &'static [TemplateFile] {
    match (lang, kind) {
        (Lang::Rust, Kind::Comparator) => RUST_COMPARATOR,
        (Lang::Rust, Kind::Strategy) => RUST_STRATEGY,
        (Lang::Js, Kind::Comparator) => JS_COMPARATOR,
        (Lang::Js, Kind::Strategy) => JS_STRATEGY,
    }
}

/// What the placeholders of a template are replaced with.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// The plugin's name (`{{name}}`).
    pub name: String,
    /// The SDK's directory, absolute (`{{sdk_path}}`; TOML-escaped in `Cargo.toml`).
    pub sdk_path: String,
    /// The setpoint checkout the SDK belongs to (`{{repo}}`), for the README's commands.
    pub repo: String,
}

impl Placeholders {
    /// The Rust type name for the plugin: `port-check` becomes `PortCheck`.
    pub fn type_name(&self) -> String {
        self.name
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            })
            .collect()
    }

    /// `text` (the file at `path` of a template set) with every placeholder replaced.
    pub fn render(&self, path: &str, text: &str) -> String {
        let sdk_path = if path.ends_with(".toml") {
            toml_string_body(&self.sdk_path)
        } else {
            self.sdk_path.clone()
        };
        let mut out = text
            .replace("{{name}}", &self.name)
            .replace("{{lib_name}}", &self.name.replace('-', "_"))
            .replace("{{sdk_path}}", &sdk_path)
            .replace("{{repo}}", &self.repo);
        if path.ends_with(".rs") {
            out = out.replace("TemplatePlugin", &self.type_name());
        }
        out
    }
}

/// `s` escaped for the inside of a TOML basic string (`"…"`).
fn toml_string_body(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Rust's keywords and the standard crates' names: a crate named so cannot be used
/// from Rust code (`use fn::…`), or shadows the standard library.
const RESERVED_NAMES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Check a plugin name: lowercase ASCII letters, digits and single `-` between them,
/// starting with a letter, at most [`MAX_NAME_LEN`] characters, not reserved.
pub fn validate_name(name: &str) -> Result<(), String> {
    let rule = "a plugin name is lowercase letters, digits and '-', starts with a letter and \
                does not end with '-' (for example: port-check)";
    if name.is_empty() {
        return Err(format!("the plugin name is empty; {rule}"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let hint = if bad.is_ascii_uppercase() || bad == '_' {
            format!(
                " (try {:?})",
                name.to_ascii_lowercase().replace(['_', ' '], "-")
            )
        } else {
            String::new()
        };
        return Err(format!(
            "invalid plugin name {name:?}: {bad:?} is not allowed; {rule}{hint}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "invalid plugin name {name:?}: it must start with a letter; {rule}"
        ));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "invalid plugin name {name:?}: '-' only between letters or digits, one at a time; {rule}"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "invalid plugin name {name:?}: longer than {MAX_NAME_LEN} characters"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "invalid plugin name {name:?}: it is a Rust keyword or a standard crate's name; \
             pick another (for example {name}-check)"
        ));
    }
    if name == SDK_PACKAGE || name == "setpoint" {
        return Err(format!(
            "invalid plugin name {name:?}: it is the name of a setpoint crate; pick another"
        ));
    }
    Ok(())
}

/// Find the SDK: `--sdk PATH`, else the checkout this binary was built from. The
/// directory must hold the `setpoint-plugin` package.
fn locate_sdk(sdk: Option<&Path>) -> Result<PathBuf, String> {
    let (dir, given) = match sdk {
        Some(dir) => (dir.to_path_buf(), true),
        None => (PathBuf::from(BUILT_SDK_DIR), false),
    };
    let how_to = "pass --sdk PATH with the plugins/sdk directory of a setpoint checkout";
    let dir = dir.canonicalize().map_err(|e| {
        if given {
            format!("--sdk {}: {e}; {how_to}", dir.display())
        } else {
            format!(
                "the setpoint-plugin SDK is not where this setpoint was built from ({}: {e}); \
                 {how_to}",
                dir.display()
            )
        }
    })?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "{} is not the setpoint-plugin SDK (cannot read {}: {e}); {how_to}",
            dir.display(),
            manifest.display()
        )
    })?;
    let names_sdk = text
        .lines()
        .any(|l| l.split_whitespace().collect::<String>() == format!("name=\"{SDK_PACKAGE}\""));
    if !names_sdk {
        return Err(format!(
            "{} is not the setpoint-plugin SDK (its Cargo.toml does not name the package \
             {SDK_PACKAGE}); {how_to}",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Make sure `dir` can take the new crate: it does not exist, or is an empty directory.
fn check_target_dir(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(format!(
                    "{} already exists and is not empty; `plugins new` never overwrites files: \
                     choose another directory with --dir PATH, or remove this one first",
                    dir.display()
                ))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => Err(format!(
            "{} already exists and is not a directory; choose another path with --dir PATH",
            dir.display()
        )),
        Err(e) => Err(format!("cannot use {}: {e}", dir.display())),
    }
}

/// Run `setpoint plugins new`.
pub(super) fn run(args: NewArgs) -> Result<ExitCode, CliError> {
    validate_name(&args.name)?;
    if args.lang == Lang::Js && args.sdk.is_some() {
        return Err(format!(
            "--sdk is for --lang rust only: a JavaScript plugin does not use the Rust SDK \
             (its package gets the contract, setpoint:plugin@{CONTRACT_VERSION}, in \
             wit/deps/setpoint/); leave --sdk out"
        )
        .into());
    }
    let files = template_set(args.lang, args.kind);
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    check_target_dir(&dir)?;
    let sdk = match args.lang {
        Lang::Rust => Some(locate_sdk(args.sdk.as_deref())?),
        Lang::Js => None,
    };
    let repo = sdk.as_deref().map(|sdk| {
        sdk.parent()
            .and_then(Path::parent)
            .unwrap_or(sdk)
            .to_path_buf()
    });

    let placeholders = Placeholders {
        name: args.name.clone(),
        sdk_path: sdk
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        repo: repo
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    };
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, placeholders.render(file.path, file.text))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    let shown = dir.display();
    let name = &args.name;
    println!(
        "created {} {} plugin {name} in {shown}",
        args.lang, args.kind
    );
    match (sdk, repo) {
        (Some(sdk), Some(repo)) => {
            println!("  SDK: {}", sdk.display());
            println!();
            println!("next:");
            println!("  cd {shown} && cargo test");
            println!(
                "  {}/scripts/build-plugin-crate {shown}    # -> {shown}/target/{name}.wasm",
                repo.display(),
            );
            println!("  setpoint plugins check {shown}/target/{name}.wasm");
            println!(
                "  setpoint plugins run {shown}/target/{name}.wasm --desired {shown}/testdata/desired.json --actual {shown}/testdata/actual.json",
            );
            println!("(the crate's README.md has both build paths, cargo-component's too)");
        }
        _ => {
            println!(
                "  contract: {shown}/{} (setpoint:plugin@{CONTRACT_VERSION})",
                JS_CONTRACT.path
            );
            println!();
            println!("next (needs node >= 20.19 and npm; npm ci downloads from the npm registry):");
            println!(
                "  cd {shown} && npm ci && npm run build    # -> {shown}/dist/{name}.wasm, about 12 MB, about a minute"
            );
            println!("  setpoint plugins check {shown}/dist/{name}.wasm");
            println!(
                "  setpoint plugins run {shown}/dist/{name}.wasm --desired {shown}/testdata/desired.json --actual {shown}/testdata/actual.json",
            );
            println!("(the package's README.md says more)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cargo_and_the_host_accept_are_valid() {
        for name in ["a", "port-check", "v2-diff", "x9"] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        for (name, says) in [
            ("", "empty"),
            ("Port", "'P' is not allowed"),
            ("port_check", "try \"port-check\""),
            ("9lives", "start with a letter"),
            ("-x", "start with a letter"),
            ("x-", "'-' only between"),
            ("a--b", "'-' only between"),
            ("a b", "' ' is not allowed"),
            ("ünïcode", "is not allowed"),
            ("fn", "Rust keyword"),
            ("setpoint-plugin", "setpoint crate"),
        ] {
            let error = validate_name(name).expect_err(name);
            assert!(error.contains(says), "{name}: {error}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn every_placeholder_is_replaced_and_toml_paths_are_escaped() {
        let p = Placeholders {
            name: "port-check".into(),
            sdk_path: r#"/a "b"\c/plugins/sdk"#.into(),
            repo: "/a/b".into(),
        };
        assert_eq!(p.type_name(), "PortCheck");
        for set in [RUST_COMPARATOR, RUST_STRATEGY] {
            for file in set {
                let out = p.render(file.path, file.text);
                assert!(
                    !out.contains("{{"),
                    "{} keeps a placeholder:\n{out}",
                    file.path
                );
                if file.path.ends_with(".rs") {
                    assert!(!out.contains("TemplatePlugin"), "{}", file.path);
                    assert!(out.contains("PortCheck"), "{}", file.path);
                }
            }
            let manifest = p.render("Cargo.toml", set[0].text);
            let toml: toml::Table = manifest.parse().expect("Cargo.toml parses");
            assert_eq!(toml["package"]["name"].as_str(), Some("port-check"));
            assert_eq!(
                toml["dependencies"][SDK_PACKAGE]["path"].as_str(),
                Some(r#"/a "b"\c/plugins/sdk"#)
            );
            assert!(toml.contains_key("workspace"), "own [workspace] table");
            let crate_type = toml["lib"]["crate-type"].as_array().unwrap();
            assert_eq!(crate_type.len(), 2);
            assert!(toml["package"]["metadata"]["component"].is_table());
        }
    }

    #[test]
    fn every_javascript_template_renders_and_its_manifests_parse() {
        let p = Placeholders {
            name: "port-check".into(),
            sdk_path: String::new(),
            repo: String::new(),
        };
        for (set, source) in [
            (JS_COMPARATOR, "src/comparator.js"),
            (JS_STRATEGY, "src/strategy.js"),
        ] {
            let paths: Vec<&str> = set.iter().map(|f| f.path).collect();
            for path in ["build.mjs", source, "wit/world.wit", JS_CONTRACT.path] {
                assert!(paths.contains(&path), "no {path} in {paths:?}");
            }
            for file in set {
                let out = p.render(file.path, file.text);
                assert!(
                    !out.contains("{{"),
                    "{} keeps a placeholder:\n{out}",
                    file.path
                );
                // Every import and export names the contract this host serves.
                let code = [".js", ".mjs", ".wit"]
                    .iter()
                    .any(|e| file.path.ends_with(e));
                if code && file.path != JS_CONTRACT.path {
                    for (at, _) in out.match_indices("setpoint:plugin/") {
                        let rest = &out[at..];
                        let end = rest
                            .find(|c: char| c == '\'' || c == ';' || c.is_whitespace())
                            .unwrap_or(rest.len());
                        assert!(
                            rest[..end].ends_with(&format!("@{CONTRACT_VERSION}")),
                            "{}: {} is not contract {CONTRACT_VERSION}",
                            file.path,
                            &rest[..end]
                        );
                    }
                }
                if file.path.ends_with(".json") {
                    serde_json::from_str::<serde_json::Value>(&out)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.path));
                }
            }
            let package: serde_json::Value =
                serde_json::from_str(&p.render("package.json", set[0].text)).unwrap();
            assert_eq!(package["name"], "port-check");
            let lock: serde_json::Value =
                serde_json::from_str(&p.render(JS_LOCK.path, JS_LOCK.text)).unwrap();
            assert_eq!(lock["name"], "port-check");
            assert_eq!(lock["packages"][""]["name"], "port-check");
            // `npm ci` refuses a lock whose dependencies differ from package.json's.
            assert_eq!(
                lock["packages"][""]["devDependencies"], package["devDependencies"],
                "package.json and package-lock.json disagree"
            );
            let build = p.render("build.mjs", template_file(set, "build.mjs"));
            assert!(build.contains(source), "build.mjs does not build {source}");
            assert!(build.contains("dist/port-check.wasm"), "{build}");
        }
        // The contract goes in verbatim.
        assert_eq!(
            p.render(JS_CONTRACT.path, JS_CONTRACT.text),
            include_str!("../../../wit/setpoint.wit")
        );
        assert!(
            JS_CONTRACT
                .text
                .contains(&format!("package setpoint:plugin@{CONTRACT_VERSION};"))
        );
    }

    #[test]
    fn the_javascript_templates_pin_what_the_example_pins() {
        let example_package: serde_json::Value =
            serde_json::from_str(include_str!("../../../examples/js-comparator/package.json"))
                .unwrap();
        for set in [JS_COMPARATOR, JS_STRATEGY] {
            let package: serde_json::Value = serde_json::from_str(set[0].text).unwrap();
            assert_eq!(
                package["devDependencies"], example_package["devDependencies"],
                "the templates' package.json pins other versions than examples/js-comparator's"
            );
        }
        assert_eq!(
            JS_LOCK.text.replace("{{name}}", "setpoint-js-comparator"),
            include_str!("../../../examples/js-comparator/package-lock.json"),
            "host/templates/js-package-lock.json is not examples/js-comparator's lock file \
             with the name as {{{{name}}}}"
        );
    }

    #[test]
    fn the_strategy_world_imports_no_capability() {
        let world = template_file(JS_STRATEGY, "wit/world.wit");
        let imports: Vec<&str> = world
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("import "))
            .collect();
        assert_eq!(
            imports,
            [
                format!("import setpoint:plugin/logging@{CONTRACT_VERSION};"),
                format!("import setpoint:plugin/instances@{CONTRACT_VERSION};"),
            ]
        );
    }

    fn template_file(set: &[TemplateFile], path: &str) -> &'static str {
        set.iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .text
    }

    #[test]
    fn an_existing_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_target_dir(dir.path()), Ok(()));
        assert_eq!(check_target_dir(&dir.path().join("new")), Ok(()));
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let error = check_target_dir(dir.path()).unwrap_err();
        assert!(error.contains("not empty"), "{error}");
        assert!(error.contains("--dir"), "{error}");
        let error = check_target_dir(&dir.path().join("f")).unwrap_err();
        assert!(error.contains("not a directory"), "{error}");
    }

    #[test]
    fn the_sdk_this_binary_was_built_from_is_found_and_a_wrong_one_refused() {
        let sdk = locate_sdk(None).unwrap();
        assert!(sdk.join("src/lib.rs").is_file());
        let dir = tempfile::tempdir().unwrap();
        let error = locate_sdk(Some(dir.path())).unwrap_err();
        assert!(error.contains("is not the setpoint-plugin SDK"), "{error}");
        let error = locate_sdk(Some(&dir.path().join("missing"))).unwrap_err();
        assert!(error.contains("--sdk"), "{error}");
    }
}

// The templates' Rust sources compile here as they stand, against the workspace's SDK, and
// their own unit tests run with the host's.
#[cfg(test)]
#[path = "../../templates/rust-comparator/src/lib.rs"]
mod rust_comparator_template;

#[cfg(test)]
#[path = "../../templates/rust-strategy/src/lib.rs"]
mod rust_strategy_template;
