//! What a plugin's store holds: a WASI context that grants nothing, the memory limiter,
//! the plugin's log attribution and, for a strategy call, the scoped control-plane.
//!
//! Start at [`HostState`]. The control-plane imports are implemented in
//! [`super::scope`]; this module wires logging and WASI.

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{logging, v0_1};
use super::scope::ScopedControlPlane;

/// Longest log line a plugin may write; longer lines are cut (a plugin must not flood
/// the host's logs).
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;

/// Most log lines one call may write; later lines are dropped and counted.
pub const MAX_LOG_LINES_PER_CALL: u32 = 1_000;

/// The data of one plugin call's `Store`.
pub struct HostState {
    /// Built on first use: most plugins import no WASI, and building a context costs
    /// allocations and random seeding on every call.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    pub(super) label: Arc<str>,
    pub(super) instance: String,
    log_lines: u32,
    /// The last line logged at error level, for the trap's error when there is no
    /// panic message.
    pub(super) last_error_log: Option<String>,
    /// What the plugin sent through `trap-reason` (0.1.0: `panic-message`; a Rust
    /// guest's panic hook does, just before it traps), at most [`MAX_LOG_LINE_BYTES`].
    panic_message: Vec<u8>,
    pub(super) control_plane: Option<ScopedControlPlane>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("label", &self.label)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// A fresh state for one call by `label` (`name@version`) on `instance`.
    pub(super) fn new(label: Arc<str>, instance: &str, max_memory_bytes: usize) -> Self {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limits: MemoryLimiter {
                max_memory_bytes,
                exceeded: None,
            },
            label,
            instance: instance.to_owned(),
            log_lines: 0,
            last_error_log: None,
            panic_message: Vec::new(),
            control_plane: None,
        }
    }
}

/// A WASI context with no preopened directories, no environment, no arguments, no
/// network, no stdio, and clocks frozen at zero: plugins get time only through
/// `rollout.elapsed-ms`.
fn deny_all_wasi() -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_blocking_current_thread(false)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

/// A pollable that is ready at once: what `wasi:clocks/monotonic-clock`'s
/// `subscribe-duration` and `subscribe-instant` give a plugin (see [`shadow_sleeps`]).
struct Ready;

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Replaces WASI's timers with ones that are ready at once. A plugin's clocks are frozen,
/// so there is no time to wait for; and WASI's own timers wait in the host, on real
/// time, where the call's time budget (epoch interruption, which only reaches running
/// Wasm) cannot stop them: a plugin that slept for a day held a blocking thread and one
/// of the runtime's call slots for a day (`tests/reliability/sandbox.rs`).
pub(super) fn shadow_sleeps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_wrap(
            name,
            |mut store: StoreContextMut<'_, HostState>, (_,): (u64,)| {
                let table = &mut store.data_mut().table;
                let ready = table.push(Ready)?;
                Ok((wasmtime_wasi::p2::subscribe(table, ready)?,))
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// A clock that never moves.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(deny_all_wasi),
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// One `log` line from the plugin, whatever its contract version.
    fn write_log(&mut self, level: logging::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.label, instance = %self.instance,
                    "plugin wrote more than {MAX_LOG_LINES_PER_CALL} log lines in one call; dropping the rest");
            }
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …(truncated)");
        }
        if matches!(level, logging::Level::Error) {
            self.last_error_log = Some(message.clone());
        }
        let (plugin, instance) = (&*self.label, &self.instance);
        match level {
            logging::Level::Trace => tracing::trace!(plugin, instance, "{message}"),
            logging::Level::Debug => tracing::debug!(plugin, instance, "{message}"),
            logging::Level::Info => tracing::info!(plugin, instance, "{message}"),
            logging::Level::Warn => tracing::warn!(plugin, instance, "{message}"),
            logging::Level::Error => tracing::error!(plugin, instance, "{message}"),
        }
    }

    /// Append up to `len` bytes of `bytes` (little-endian) to the trap reason, keeping at
    /// most [`MAX_LOG_LINE_BYTES`].
    fn push_trap_reason(&mut self, words: &[u64], len: usize) {
        let len = len.min(words.len() * 8);
        let room = MAX_LOG_LINE_BYTES.saturating_sub(self.panic_message.len());
        let bytes = words.iter().flat_map(|w| w.to_le_bytes());
        self.panic_message.extend(bytes.take(len.min(room)));
    }
}

impl logging::Host for HostState {
    fn log(&mut self, level: logging::Level, message: String) {
        self.write_log(level, message);
    }

    fn trap_reason(&mut self, bytes: u64, len: u8) {
        self.push_trap_reason(&[bytes], usize::from(len));
    }
}

/// Contract 0.1.0's logging: the same lines, and the trap reason in 14-word pieces.
impl v0_1::logging::Host for HostState {
    fn log(&mut self, level: v0_1::logging::Level, message: String) {
        use v0_1::logging::Level as Old;
        let level = match level {
            Old::Trace => logging::Level::Trace,
            Old::Debug => logging::Level::Debug,
            Old::Info => logging::Level::Info,
            Old::Warn => logging::Level::Warn,
            Old::Error => logging::Level::Error,
        };
        self.write_log(level, message);
    }

    #[allow(clippy::too_many_arguments)]
    fn panic_message(
        &mut self,
        len: u8,
        w0: u64,
        w1: u64,
        w2: u64,
        w3: u64,
        w4: u64,
        w5: u64,
        w6: u64,
        w7: u64,
        w8: u64,
        w9: u64,
        w10: u64,
        w11: u64,
        w12: u64,
        w13: u64,
    ) {
        let words = [w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13];
        self.push_trap_reason(&words, usize::from(len));
    }
}

impl HostState {
    /// Why the plugin said it was about to trap, if it did.
    pub(super) fn panic_message(&self) -> Option<String> {
        (!self.panic_message.is_empty())
            .then(|| String::from_utf8_lossy(&self.panic_message).into_owned())
    }
}

impl super::bindings::types::Host for HostState {}

/// Caps a plugin's linear memory and remembers that it tried to go past the cap, so the
/// trap can be reported as out-of-memory instead of an unexplained crash.
#[derive(Debug)]
pub(super) struct MemoryLimiter {
    max_memory_bytes: usize,
    /// The size the guest asked for when it was refused.
    pub(super) exceeded: Option<usize>,
}

/// Most tables and table elements a plugin may have: Rust components use one small
/// table; the cap only stops a hostile guest.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.exceeded = Some(desired);
            wasmtime::bail!(
                "plugin memory cap of {} bytes reached (asked to grow to {desired} bytes)",
                self.max_memory_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logging::Host as _;

    fn send(state: &mut HostState, len: u8, text: &[u8]) {
        let mut w = [0u64; 14];
        for (i, &b) in text.iter().enumerate() {
            w[i / 8] |= u64::from(b) << (8 * (i % 8));
        }
        v0_1::logging::Host::panic_message(
            state, len, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11],
            w[12], w[13],
        );
    }

    /// What a 0.2.0 guest does: one call per 8 bytes.
    fn send_reason(state: &mut HostState, text: &[u8]) {
        for piece in text.chunks(8) {
            let mut word = 0u64;
            for (i, &b) in piece.iter().enumerate() {
                word |= u64::from(b) << (8 * i);
            }
            state.trap_reason(word, piece.len() as u8);
        }
    }

    #[test]
    fn trap_reason_pieces_are_joined_before_decoding() {
        let mut state = HostState::new("p@1.0.0".into(), "i", 1 << 20);
        assert_eq!(state.panic_message(), None);
        // "é" split across two pieces.
        send_reason(&mut state, b"panicked at src/lib.rs: caf\xc3");
        send_reason(&mut state, b"\xa9!");
        assert_eq!(
            state.panic_message().as_deref(),
            Some("panicked at src/lib.rs: café!")
        );
        // A length past the 8 bytes of the word reads only the word.
        state.trap_reason(u64::from_le_bytes(*b"12345678"), 200);
        assert!(state.panic_message().unwrap().ends_with("!12345678"));
    }

    #[test]
    fn panic_message_pieces_of_0_1_are_joined_before_decoding() {
        let mut state = HostState::new("p@1.0.0".into(), "i", 1 << 20);
        assert_eq!(state.panic_message(), None);
        // "é" split across two pieces.
        send(&mut state, 3, b"ab\xc3");
        send(&mut state, 2, b"\xa9!");
        assert_eq!(state.panic_message().as_deref(), Some("abé!"));
    }

    #[test]
    fn panic_message_is_bounded() {
        let mut state = HostState::new("p@1.0.0".into(), "i", 1 << 20);
        // A length past the 112 bytes the words hold reads only the words.
        send(&mut state, 255, &[b'x'; 112]);
        assert_eq!(state.panic_message().unwrap().len(), 112);
        for _ in 0..100 {
            send(&mut state, 112, &[b'y'; 112]);
        }
        assert_eq!(state.panic_message().unwrap().len(), MAX_LOG_LINE_BYTES);
        for _ in 0..10 {
            send_reason(&mut state, b"zzzzzzzz");
        }
        assert_eq!(state.panic_message().unwrap().len(), MAX_LOG_LINE_BYTES);
    }
}
