//! The command line printing into a pipe whose reader is gone (`setpoint … | head -1`):
//! it stops quietly, as other Unix tools do, instead of panicking with "failed printing
//! to stdout".

use std::process::{Command, Stdio};

use setpoint_tests::{plugin, setpoint_bin};

/// Run `setpoint ARGS` with standard output a real pipe whose read end is closed before
/// it starts, so its first write fails with EPIPE. (exit code, standard error).
fn into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(setpoint_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .env_remove("SETPOINT_ENDPOINT")
        .output()
        .expect("setpoint runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    let field_diff = plugin("field-diff");
    let dir = field_diff.parent().unwrap().to_str().unwrap().to_owned();
    let file = field_diff.to_str().unwrap().to_owned();
    for args in [
        vec!["plugins", "check", &file],
        vec!["plugins", "check", "--json", &file],
        vec!["plugins", "list", &dir],
        vec!["config"],
    ] {
        let (code, stderr) = into_closed_pipe(&args);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("failed printing"),
            "setpoint {args:?} panicked:\n{stderr}"
        );
        assert!(
            stderr.trim().is_empty(),
            "setpoint {args:?} says nothing on a closed pipe:\n{stderr}"
        );
        // 141 is what a shell reports for a tool killed by SIGPIPE.
        assert!(
            matches!(code, Some(0) | Some(141)),
            "setpoint {args:?} exited with {code:?}:\n{stderr}"
        );
    }
}

/// `setpoint plugins check FILE | head -1` as a shell runs it: the first line arrives,
/// the rest goes nowhere, and nothing is said about it.
#[test]
fn a_pipeline_into_head_prints_the_first_line_and_no_panic() {
    let field_diff = plugin("field-diff");
    let script = format!(
        "'{}' plugins check '{}' | head -1",
        setpoint_bin().display(),
        field_diff.display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
