//! `memcmp` and `bcmp` for `wasm32-unknown-unknown`, eight bytes at a time.
//!
//! On that target Rust's `compiler-builtins` supplies these as byte-by-byte loops
//! (weak symbols, meant to be replaced). Every `String` comparison, `BTreeMap` lookup
//! and `serde_json::Value` equality goes through them, and in a comparator that was a
//! tenth of a call's time (profiled with `host/benches/plugins.rs`). These strong
//! definitions replace them; targets with a C library (wasip1) keep the library's.
//!
//! The comparison logic is plain Rust over slices and unit-tested natively.

use std::cmp::Ordering;

/// Compare `a` and `b` (equal lengths) as `memcmp` does: the sign of the difference of
/// the first differing bytes, as unsigned, or 0.
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    let mut a_words = a.chunks_exact(8);
    let mut b_words = b.chunks_exact(8);
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        let x = u64::from_le_bytes(x.try_into().expect("chunks of 8"));
        let y = u64::from_le_bytes(y.try_into().expect("chunks of 8"));
        if x != y {
            // The first differing byte in memory is the lowest differing one.
            let shift = (x ^ y).trailing_zeros() & !7;
            return i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8);
        }
    }
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        match x.cmp(y) {
            Ordering::Equal => {}
            _ => return i32::from(*x) - i32::from(*y),
        }
    }
    0
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod symbols {
    // Defining C symbols that replace compiler-builtins' weak ones is `unsafe` by nature.
    #![allow(unsafe_code)]

    /// # Safety
    /// `a` and `b` must be valid for reads of `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        if n == 0 {
            return 0;
        }
        // SAFETY: the caller guarantees `n` readable bytes at each pointer.
        unsafe {
            super::compare(
                std::slice::from_raw_parts(a, n),
                std::slice::from_raw_parts(b, n),
            )
        }
    }

    /// # Safety
    /// As for [`memcmp`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: forwarded unchanged.
        unsafe { memcmp(a, b, n) }
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    fn reference(a: &[u8], b: &[u8]) -> i32 {
        a.iter()
            .zip(b)
            .find(|(x, y)| x != y)
            .map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
    }

    #[test]
    fn agrees_with_a_byte_loop_at_every_position_and_length() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(compare(&a, &a), 0);
            for at in 0..len {
                for delta in [1u8, 0x80, 0xff] {
                    let mut b = a.clone();
                    b[at] = b[at].wrapping_add(delta);
                    // A later difference must not mask the first one.
                    if at + 1 < len {
                        let last = len - 1;
                        b[last] = b[last].wrapping_sub(1);
                    }
                    assert_eq!(compare(&a, &b), reference(&a, &b), "len {len} at {at}");
                    assert_eq!(compare(&b, &a), reference(&b, &a), "len {len} at {at}");
                }
            }
        }
    }
}
