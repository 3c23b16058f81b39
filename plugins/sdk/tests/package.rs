//! `cargo package -p setpoint-plugin` works: the crate carries everything it builds from
//! (its own copy of the WIT contract, `build.rs`), so it can be published or vendored
//! apart from this repository. Runs the real `cargo`, with the package verified (built
//! from the `.crate` alone), in a temporary target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo() -> Command {
    Command::new(env!("CARGO"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh directory under the system's temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_sdk_packages_with_its_wit_and_builds_from_the_package() {
    let target = TempDir::new("setpoint-plugin-package");
    let output = cargo()
        .current_dir(workspace_root())
        .args([
            "package",
            "-p",
            "setpoint-plugin",
            "--allow-dirty",
            "--offline",
        ])
        .arg("--target-dir")
        .arg(&target.0)
        // The outer `cargo test`'s settings are not this build's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("running cargo package");
    assert!(
        output.status.success(),
        "cargo package -p setpoint-plugin failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let list = cargo()
        .current_dir(workspace_root())
        .args([
            "package",
            "-p",
            "setpoint-plugin",
            "--allow-dirty",
            "--offline",
            "--list",
        ])
        .output()
        .expect("running cargo package --list");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let files = String::from_utf8_lossy(&list.stdout);
    for needed in ["wit/setpoint.wit", "build.rs", "src/lib.rs", "Cargo.toml"] {
        assert!(
            files.lines().any(|f| f == needed),
            "the package lacks {needed}; it holds:\n{files}"
        );
    }

    // What the package holds is the contract itself, not a link to it.
    let crate_file = std::fs::read_dir(target.0.join("package"))
        .expect("cargo package writes target/package")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "crate"))
        .expect("a .crate file");
    let size = std::fs::metadata(&crate_file)
        .expect("the .crate file")
        .len();
    assert!(
        size > 10_000,
        "{} is only {size} bytes",
        crate_file.display()
    );
}
