//! `memcmp` and `bcmp` for `wasm32-unknown-unknown`, eight bytes at a time.
//!
//! On that target Rust's `compiler-builtins` supplies these as byte-by-byte loops
//! (weak symbols, meant to be replaced). Every `String` comparison, `BTreeMap` lookup
//! and `serde_json::Value` equality goes through them, and in a comparator that was a
//! tenth of a call's time (profiled with `host/benches/plugins.rs`). These strong
//! definitions replace them; targets with a C library (wasip1) keep the library's.
//!
//! The comparison logic is plain Rust over slices and unit-tested natively.

/// Compare `a` and `b` (equal lengths) as `memcmp` does: the sign of the difference of
/// the first differing bytes, as unsigned, or 0.
///
/// Up to 16 bytes (most keys and short strings) it runs without a loop: under Wasmtime
/// every loop iteration pays an epoch check. Longer inputs go a word at a time, and the
/// last word is read overlapping the previous one instead of a byte loop for the tail.
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    if n >= 8 {
        if n <= 16 {
            let d = word_diff(u64_at(a, 0), u64_at(b, 0));
            if d != 0 {
                return d;
            }
        } else {
            let mut at = 0;
            while at + 8 < n {
                let d = word_diff(u64_at(a, at), u64_at(b, at));
                if d != 0 {
                    return d;
                }
                at += 8;
            }
        }
        // The last eight bytes; any overlap with the words above is known to be equal.
        return word_diff(u64_at(a, n - 8), u64_at(b, n - 8));
    }
    if n >= 4 {
        let d = word_diff(u32_at(a, 0).into(), u32_at(b, 0).into());
        if d != 0 {
            return d;
        }
        return word_diff(u32_at(a, n - 4).into(), u32_at(b, n - 4).into());
    }
    // 0 to 3 bytes.
    for i in 0..n {
        if a[i] != b[i] {
            return i32::from(a[i]) - i32::from(b[i]);
        }
    }
    0
}

/// `memcmp` of two little-endian words: the first differing byte in memory is the lowest
/// differing one.
#[inline(always)]
fn word_diff(x: u64, y: u64) -> i32 {
    if x == y {
        return 0;
    }
    let shift = (x ^ y).trailing_zeros() & !7;
    i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8)
}

#[inline(always)]
fn u64_at(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"))
}

#[inline(always)]
fn u32_at(s: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes"))
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
