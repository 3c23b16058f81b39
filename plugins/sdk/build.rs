//! Puts the contract's WIT text (`wit/setpoint.wit`, this crate's copy of the project's
//! `wit/setpoint.wit`) into a `macro_rules!` that the export macros expand to, so that a
//! plugin crate generates the bindings of exactly the world it exports (see the crate
//! docs, "One world per plugin, no features"). `wit_bindgen::generate!` takes its WIT as
//! a string literal only, which a macro cannot compute; writing the literal into the
//! macro here is the way to hand it over without a path into this crate's directory.

use std::path::PathBuf;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let wit_path = manifest_dir.join("wit").join("setpoint.wit");
    println!("cargo::rerun-if-changed={}", wit_path.display());
    println!("cargo::rerun-if-changed=build.rs");
    let wit = std::fs::read_to_string(&wit_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", wit_path.display()));

    // A raw string literal whose delimiter the text does not contain.
    let mut hashes = String::from("#");
    while wit.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }

    let source = format!(
        r#"/// Expands to `wit_bindgen::generate!` for one world of the contract, from the WIT
/// text this crate ships (written by `build.rs`). Used by the export macros only.
#[doc(hidden)]
#[macro_export]
macro_rules! __generate_world {{
    ($world:tt, {{ $($with:tt)* }}) => {{
        $crate::__private::wit_bindgen::generate!({{
            inline: r{hashes}"{wit}"{hashes},
            world: $world,
            runtime_path: "::setpoint_plugin::__private::wit_bindgen::rt",
            with: {{ $($with)* }},
        }});
    }};
}}
"#
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("generate_world.rs");
    std::fs::write(&out, source).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
