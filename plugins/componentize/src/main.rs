//! `setpoint-componentize`: wraps a plugin's core Wasm module into a component.
//!
//! ```text
//! setpoint-componentize [--wasip1-reactor] IN.core.wasm OUT.wasm
//! setpoint-componentize --imports COMPONENT.wasm...
//! ```
//!
//! The core module carries its world in the `component-type` custom section that
//! `wit_bindgen::generate!` embeds; `wit_component::ComponentEncoder` reads it and
//! lifts the module's exports and lowers its imports accordingly. With
//! `--wasip1-reactor` the module's `wasi_snapshot_preview1` imports are satisfied by
//! wasmtime's preview1 *reactor* adapter (what cargo-component produces by default), so
//! the component imports `wasi:*` interfaces instead. The result is validated with
//! wasmparser (component model enabled) before it is written. `scripts/build-plugins`
//! runs this for every plugin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::ComponentEncoder;

const USAGE: &str = "usage: setpoint-componentize [--wasip1-reactor] IN.core.wasm OUT.wasm\n       \
                     setpoint-componentize --imports COMPONENT.wasm...";

/// The top-level import and export names of `component`, in order.
fn imports_and_exports(component: &[u8]) -> Result<(Vec<String>, Vec<String>)> {
    if !wasmparser::Parser::is_component(component) {
        bail!("not a component");
    }
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.context("parsing the component")? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.context("reading an import")?.name.name.to_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.context("reading an export")?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// `--imports`: print each component's imports and exports.
fn print_imports(paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        let (imports, exports) = imports_and_exports(&read(path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        println!("{}", path.display());
        for name in imports {
            println!("  import {name}");
        }
        for name in exports {
            println!("  export {name}");
        }
    }
    Ok(())
}

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    input: PathBuf,
    output: PathBuf,
    wasip1_reactor: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut wasip1_reactor = false;
    let mut paths = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--wasip1-reactor" => wasip1_reactor = true,
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with('-') => bail!("unknown option {flag:?}\n{USAGE}"),
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    let [input, output] = <[PathBuf; 2]>::try_from(paths)
        .map_err(|paths| anyhow::anyhow!("expected two paths, got {}\n{USAGE}", paths.len()))?;
    Ok(Args {
        input,
        output,
        wasip1_reactor,
    })
}

/// Encode `core` (a core module with an embedded world) as a component.
fn componentize(core: &[u8], wasip1_reactor: bool) -> Result<Vec<u8>> {
    if !wasmparser::Parser::is_core_wasm(core) {
        if wasmparser::Parser::is_component(core) {
            bail!("the input is already a component, not a core module");
        }
        bail!("the input is not a WebAssembly module");
    }
    let mut encoder = ComponentEncoder::default()
        .validate(true)
        .module(core)
        .context(
            "reading the module's embedded world (was it built with wit_bindgen::generate!, \
             i.e. with the setpoint-plugin SDK's `comparator!` or `strategy!` macro?)",
        )?;
    if wasip1_reactor {
        encoder = encoder
            .adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .context("loading the WASI preview1 reactor adapter")?;
    }
    encoder.encode().map_err(|e| {
        let hint = if !wasip1_reactor && format!("{e:#}").contains("wasi_snapshot_preview1") {
            " (the module imports WASI preview1: pass --wasip1-reactor)"
        } else {
            ""
        };
        e.context(format!("encoding the component{hint}"))
    })
}

/// Validate `component` with the component model enabled.
fn validate(component: &[u8]) -> Result<()> {
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(component)
        .context("the encoded component does not validate")?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let core = read(&args.input)?;
    let component = componentize(&core, args.wasip1_reactor)
        .with_context(|| format!("componentizing {}", args.input.display()))?;
    validate(&component).with_context(|| format!("componentizing {}", args.input.display()))?;
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    std::fs::write(&args.output, &component)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--imports") {
        let paths: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
        if paths.is_empty() {
            Err(anyhow::anyhow!(
                "--imports needs at least one component\n{USAGE}"
            ))
        } else {
            print_imports(&paths)
        }
    } else {
        parse_args(args).and_then(run)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("setpoint-componentize: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("Caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flag_and_two_paths() {
        let parsed = args(&["--wasip1-reactor", "in.wasm", "out.wasm"]).unwrap();
        assert!(parsed.wasip1_reactor);
        assert_eq!(parsed.input, PathBuf::from("in.wasm"));
        assert_eq!(parsed.output, PathBuf::from("out.wasm"));
    }

    #[test]
    fn rejects_wrong_arity_and_unknown_flags() {
        assert!(args(&["in.wasm"]).is_err());
        assert!(args(&["--nope", "a", "b"]).is_err());
    }

    #[test]
    fn rejects_input_that_is_not_a_module() {
        let error = componentize(b"not wasm", false).unwrap_err();
        assert!(
            error.to_string().contains("not a WebAssembly module"),
            "{error}"
        );
    }

    #[test]
    fn a_module_without_imports_or_world_becomes_an_empty_valid_component() {
        // The smallest valid core module: magic and version only.
        let component = componentize(b"\0asm\x01\0\0\0", false).unwrap();
        assert!(wasmparser::Parser::is_component(&component));
        validate(&component).unwrap();
    }

    #[test]
    fn lists_no_imports_of_an_empty_component_and_refuses_a_module() {
        let component = componentize(b"\0asm\x01\0\0\0", false).unwrap();
        let (imports, exports) = imports_and_exports(&component).unwrap();
        assert!(imports.is_empty() && exports.is_empty());
        assert!(imports_and_exports(b"\0asm\x01\0\0\0").is_err());
    }

    #[test]
    fn rejects_a_component_as_input() {
        let component = componentize(b"\0asm\x01\0\0\0", false).unwrap();
        let error = componentize(&component, false).unwrap_err();
        assert!(error.to_string().contains("already a component"), "{error}");
    }
}
