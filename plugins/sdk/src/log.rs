//! Log lines from a plugin, which the host attributes to the plugin and the instance.
//!
//! On wasm32 the lines go to the host through the contract's `logging` import. Natively
//! they are kept (the newest [`MAX_CAPTURED_LINES`] per thread) for
//! [`testing::take_logs`](crate::testing::take_logs).

use std::fmt;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        })
    }
}

/// How many lines a native build keeps per thread: enough for any unit test, bounded so
/// a benchmark that logs in a loop does not grow without limit.
pub const MAX_CAPTURED_LINES: usize = 1024;

/// Write one log line at `level`.
pub fn log(level: Level, message: &str) {
    sink::write(level, message);
}

/// Write a trace line.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Write a debug line.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Write an info line.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Write a warning line.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Write an error line.
pub fn error(message: &str) {
    log(Level::Error, message);
}

#[cfg(all(
    target_arch = "wasm32",
    any(feature = "comparator", feature = "strategy")
))]
mod sink {
    use super::Level;
    use crate::__bindings::setpoint::plugin::logging::{self, Level as Wire};

    pub(super) fn write(level: Level, message: &str) {
        let level = match level {
            Level::Trace => Wire::Trace,
            Level::Debug => Wire::Debug,
            Level::Info => Wire::Info,
            Level::Warn => Wire::Warn,
            Level::Error => Wire::Error,
        };
        logging::log(level, message);
    }
}

/// A wasm32 build without a world has no logging import: lines are dropped.
#[cfg(all(
    target_arch = "wasm32",
    not(any(feature = "comparator", feature = "strategy"))
))]
mod sink {
    use super::Level;

    pub(super) fn write(_level: Level, _message: &str) {}
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod sink {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::{Level, MAX_CAPTURED_LINES};

    thread_local! {
        static LINES: RefCell<VecDeque<(Level, String)>> = const { RefCell::new(VecDeque::new()) };
    }

    pub(super) fn write(level: Level, message: &str) {
        LINES.with_borrow_mut(|lines| {
            if lines.len() == MAX_CAPTURED_LINES {
                lines.pop_front();
            }
            lines.push_back((level, message.to_owned()));
        });
    }

    pub(crate) fn take() -> Vec<(Level, String)> {
        LINES.with_borrow_mut(|lines| lines.drain(..).collect())
    }
}
