//! The `setpoint` binary: parses the command line, runs the library, maps an error to an
//! exit code and prints its cause chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = setpoint::cli::Cli::parse();
    match setpoint::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("Caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
