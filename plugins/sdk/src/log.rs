//! Log lines from a plugin, which the host attributes to the plugin and the instance.
//!
//! On wasm32 the lines go to the host through the contract's `logging` import. Natively
//! they are kept (the newest [`MAX_CAPTURED_LINES`] per thread) for
//! [`testing::take_logs`](crate::testing::take_logs).
//!
//! Cost: a plugin that calls [`log`] anywhere imports `logging.log`, which takes a
//! string, so every call of the plugin is instantiated with two extra small modules that
//! connect the import to the plugin's memory: about a microsecond per call (measured in
//! `host/benches/plugins.rs`). A plugin that never logs does not pay it; its panics still
//! reach the host, through the memory-free `trap-reason` import.

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

/// Bytes of text one `trap-reason` call carries: one 8-byte word.
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) const TRAP_PIECE_BYTES: usize = 8;

/// Most bytes of a panic message sent to the host (it keeps no more).
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) const MAX_PANIC_MESSAGE_BYTES: usize = 4 * 1024;

/// `text` cut into the pieces the contract's `trap-reason` import takes: each up to 8
/// bytes packed little-endian into a word (the first byte of the piece in the lowest 8
/// bits) and how many of them are text (1 to 8). Pieces may split a UTF-8 sequence; the
/// host joins them before decoding.
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) fn trap_reason_pieces(text: &str) -> impl Iterator<Item = (u64, u8)> + '_ {
    let bytes = &text.as_bytes()[..text.len().min(MAX_PANIC_MESSAGE_BYTES)];
    bytes.chunks(TRAP_PIECE_BYTES).map(|piece| {
        let mut le = [0u8; 8];
        le[..piece.len()].copy_from_slice(piece);
        (u64::from_le_bytes(le), piece.len() as u8)
    })
}

/// Tell the host why the plugin is about to trap (used by the SDK's panic hook). Goes
/// through `trap-reason`, which needs no linear memory, so a plugin that never calls
/// [`log`] does not import `log` and is instantiated without wit-component's shim.
#[cfg(target_arch = "wasm32")]
pub(crate) fn trap_reason(text: &str) {
    sink::trap_reason(text);
}

#[cfg(target_arch = "wasm32")]
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

    pub(super) fn trap_reason(text: &str) {
        for (bytes, len) in super::trap_reason_pieces(text) {
            logging::trap_reason(bytes, len);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host does with the pieces: join the bytes, then decode.
    fn unpack(pieces: impl Iterator<Item = (u64, u8)>) -> String {
        let mut bytes = Vec::new();
        for (word, len) in pieces {
            assert!((1..=8).contains(&len), "len {len} is outside 1..=8");
            bytes.extend_from_slice(&word.to_le_bytes()[..usize::from(len)]);
        }
        String::from_utf8(bytes).expect("the pieces join into the original UTF-8")
    }

    #[test]
    fn trap_reason_pieces_round_trip() {
        for text in [
            String::new(),
            "x".to_owned(),
            "plugin panicked at src/lib.rs:10:5: index out of bounds".to_owned(),
            "é€😀".repeat(40), // multi-byte sequences split across pieces
            "a".repeat(TRAP_PIECE_BYTES),
            "b".repeat(TRAP_PIECE_BYTES + 1),
        ] {
            assert_eq!(unpack(trap_reason_pieces(&text)), text);
        }
        assert_eq!(trap_reason_pieces("").count(), 0);
        assert_eq!(trap_reason_pieces(&"c".repeat(17)).count(), 3);
    }

    #[test]
    fn trap_reason_pieces_stop_at_the_limit() {
        let long = "d".repeat(MAX_PANIC_MESSAGE_BYTES * 2);
        assert_eq!(
            unpack(trap_reason_pieces(&long)).len(),
            MAX_PANIC_MESSAGE_BYTES
        );
    }

    #[test]
    fn first_byte_is_the_low_byte_and_the_rest_is_zero() {
        let pieces: Vec<_> = trap_reason_pieces("ABCDEFGHI").collect();
        assert_eq!(pieces, [(0x4847_4645_4443_4241, 8), (0x49, 1)]);
    }
}
