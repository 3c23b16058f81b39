//! Standard output of the commands. A reader that went away (`setpoint plugins check F |
//! head -1`) ends the command quietly, as it ends other Unix tools, instead of a panic
//! with "failed printing to stdout": Rust ignores SIGPIPE, so the write fails with
//! EPIPE, and `print!` would panic on it. The commands' `print!` and `println!` are the
//! macros in `cli/mod.rs`, which write through [`print`].

use std::io::Write;

/// The exit status when the reader of standard output went away: what a shell reports
/// for a tool SIGPIPE ended (128 + 13), so `set -o pipefail` scripts still notice the
/// output was cut short.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Write `args` to standard output. A closed pipe ends the process at once with
/// [`BROKEN_PIPE_EXIT`] and no message; any other error panics, as `print!` does.
pub fn print(args: std::fmt::Arguments<'_>) {
    let result = std::io::stdout().lock().write_fmt(args);
    if let Err(error) = result {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        panic!("failed printing to stdout: {error}");
    }
}
