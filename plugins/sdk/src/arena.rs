//! The plugin's global allocator on wasm32: a per-call arena with size-class reuse.
//!
//! The host runs every call in a fresh instance and throws its linear memory away when
//! the call returns, so a plugin's heap only has to live for one call. This allocator
//! is built for that: it hands out blocks by bumping a pointer through memory that is
//! already there (a 256 KiB region reserved in the module's zero-initialised data, so a
//! typical call grows memory not at all), keeps freed blocks on one free list per size
//! class for reuse, and only grows linear memory when the arena is used up. Compared
//! with Rust's default `dlmalloc` it does far less work per allocation and no
//! `memory.grow` per call, which the host pays for with `mprotect` (measured in
//! `host/benches/plugins.rs`; figures in `BENCHMARKS.md`).
//!
//! Costs, stated plainly: a block is rounded up to a multiple of 16 bytes (up to 1 KiB)
//! or to a power of two (above), so memory use can be up to twice what is requested for
//! large blocks; memory freed in one size class is reused only for that class.
//! Allocations larger than [`LARGEST_CLASS`] or aligned to more than 16 bytes are
//! bump-allocated and reclaimed only when they are the most recent allocation. A call
//! that churns through more than the host's memory cap (64 MiB by default) this way
//! fails with the host's out-of-memory error. Plugins that need a general-purpose
//! allocator turn the SDK's default `arena` feature off (`default-features = false`)
//! and get Rust's default allocator back.
//!
//! The arena logic ([`Arena`]) is plain Rust over addresses and is unit-tested natively;
//! only the `#[global_allocator]` glue at the bottom is wasm32-specific.

// An allocator is raw memory management: `unsafe` by nature. Nothing else in the SDK
// outside generated bindings uses it.
#![allow(unsafe_code)]

/// Smallest block, and the alignment every block has.
const MIN_BLOCK: usize = 16;

/// Blocks up to this size come in steps of [`MIN_BLOCK`] (16, 32, 48, … bytes), so the
/// small objects that dominate a plugin's heap (strings, tree nodes) waste little.
const SMALL_LIMIT: usize = 1024;

/// Number of small classes.
const SMALL_CLASSES: usize = SMALL_LIMIT / MIN_BLOCK;

/// Largest size-class block (1 MiB); larger requests are bump-allocated. Between
/// [`SMALL_LIMIT`] and this, classes are powers of two (2 KiB, 4 KiB, …).
pub const LARGEST_CLASS: usize = 1 << 20;

/// Number of size classes: the small ones, then 2 KiB … [`LARGEST_CLASS`].
const CLASSES: usize =
    SMALL_CLASSES + (LARGEST_CLASS.trailing_zeros() - SMALL_LIMIT.trailing_zeros()) as usize;

/// Where an arena gets more memory when its current region is used up: returns the
/// start of a new region of at least `bytes` bytes, aligned to [`MIN_BLOCK`], and its
/// length, or `None` when no more memory is available.
pub trait Grow {
    /// Provide a fresh region of at least `bytes` bytes.
    fn grow(&mut self, bytes: usize) -> Option<(usize, usize)>;
}

/// A bump arena with per-class free lists, over addresses handed out by a [`Grow`].
#[derive(Debug)]
pub struct Arena<G> {
    /// Next free address of the current region.
    next: usize,
    /// End of the current region.
    end: usize,
    /// Head of each size class's free list (0: empty). A free block's first word holds
    /// the address of the next one.
    free: [usize; CLASSES],
    grow: G,
}

/// The size class of a block for `size` bytes aligned to `align`, or `None` when it is
/// bump-allocated (too large or over-aligned).
fn class_of(size: usize, align: usize) -> Option<usize> {
    if align > MIN_BLOCK || size > LARGEST_CLASS {
        return None;
    }
    if size <= SMALL_LIMIT {
        return Some(size.max(1).div_ceil(MIN_BLOCK) - 1);
    }
    let block = size.next_power_of_two();
    Some(SMALL_CLASSES - 1 + (block.trailing_zeros() - SMALL_LIMIT.trailing_zeros()) as usize)
}

fn class_size(class: usize) -> usize {
    if class < SMALL_CLASSES {
        MIN_BLOCK * (class + 1)
    } else {
        SMALL_LIMIT << (class + 1 - SMALL_CLASSES)
    }
}

fn align_up(addr: usize, align: usize) -> Option<usize> {
    Some(addr.checked_add(align - 1)? & !(align - 1))
}

/// Bytes a block for `size` bytes aligned to `align` occupies: its class's size, or
/// for a bump-allocated block the size rounded up to [`MIN_BLOCK`].
fn block_len(size: usize, align: usize) -> Option<usize> {
    match class_of(size, align) {
        Some(class) => Some(class_size(class)),
        None => align_up(size.max(MIN_BLOCK), MIN_BLOCK),
    }
}

impl<G: Grow> Arena<G> {
    /// An arena that starts empty and takes all of its memory from `grow`.
    pub const fn new(grow: G) -> Self {
        Self {
            next: 0,
            end: 0,
            free: [0; CLASSES],
            grow,
        }
    }

    /// Allocate `size` bytes aligned to `align` (a power of two); 0 when out of memory.
    ///
    /// # Safety
    /// The regions `grow` returns must be memory this arena may write to exclusively.
    pub unsafe fn alloc(&mut self, size: usize, align: usize) -> usize {
        match class_of(size, align) {
            Some(class) => {
                let head = self.free[class];
                if head != 0 {
                    // SAFETY: `head` is a block of this class that was freed, so it is
                    // ours, at least 16 bytes, and aligned for a `usize`.
                    self.free[class] = unsafe { (head as *const usize).read() };
                    return head;
                }
                self.bump(class_size(class), MIN_BLOCK)
            }
            None => self.bump(size, align.max(MIN_BLOCK)),
        }
    }

    /// Give back a block from [`Arena::alloc`] with the same `size` and `align`.
    ///
    /// # Safety
    /// `addr` must come from this arena's `alloc` with this `size` and `align`, and not
    /// be used afterwards.
    pub unsafe fn free(&mut self, addr: usize, size: usize, align: usize) {
        match class_of(size, align) {
            Some(class) => {
                // SAFETY: the block is ours again and holds at least one `usize`.
                unsafe { (addr as *mut usize).write(self.free[class]) };
                self.free[class] = addr;
            }
            None => {
                // Reclaim a bump-allocated block only when it is the latest one.
                if block_len(size, align).and_then(|len| addr.checked_add(len)) == Some(self.next) {
                    self.next = addr;
                }
            }
        }
    }

    /// Resize a block in place when that is possible: when the new size still fits its
    /// block, or when it is the latest bump allocation and the region has room. Returns
    /// whether it did; if not, the caller moves the data.
    pub fn resize_in_place(&mut self, addr: usize, size: usize, align: usize, new: usize) -> bool {
        let old_class = class_of(size, align);
        let new_class = class_of(new, align);
        if old_class.is_some() && old_class == new_class {
            return true;
        }
        // The latest block from the bump region: move its end.
        let (Some(old_len), Some(new_len)) = (block_len(size, align), block_len(new, align)) else {
            return false;
        };
        if addr.checked_add(old_len) != Some(self.next) {
            return false;
        }
        match addr.checked_add(new_len) {
            Some(new_end) if new_end <= self.end => {
                self.next = new_end;
                true
            }
            _ => false,
        }
    }

    fn bump(&mut self, len: usize, align: usize) -> usize {
        let Some(len) = align_up(len.max(MIN_BLOCK), MIN_BLOCK) else {
            return 0;
        };
        if let Some(addr) = self.fit(len, align) {
            return addr;
        }
        // The rest of the current region is abandoned; blocks already handed out stay.
        let Some((start, region)) = len.checked_add(align).and_then(|want| self.grow.grow(want))
        else {
            return 0;
        };
        self.next = start;
        self.end = start + region;
        self.fit(len, align).unwrap_or(0)
    }

    fn fit(&mut self, len: usize, align: usize) -> Option<usize> {
        let addr = align_up(self.next, align)?;
        let end = addr.checked_add(len)?;
        (end <= self.end).then(|| {
            self.next = end;
            addr
        })
    }
}

#[cfg(all(target_arch = "wasm32", feature = "arena"))]
mod global {
    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::UnsafeCell;

    use super::{Arena, Grow};

    /// Bytes reserved in the module's zero-initialised data for the arena's first
    /// region: enough for a comparator on configurations of a few kilobytes. Untouched
    /// pages cost the host nothing, but they do count towards the memory the host scans
    /// and resets after every call, so this is not larger.
    const FIRST_REGION: usize = 256 * 1024;

    const WASM_PAGE: usize = 64 * 1024;

    #[repr(C, align(16))]
    struct Region([u8; FIRST_REGION]);

    static mut FIRST: Region = Region([0; FIRST_REGION]);

    /// Memory for the arena: [`FIRST`] once, then `memory.grow`.
    struct LinearMemory {
        first_taken: bool,
    }

    impl Grow for LinearMemory {
        fn grow(&mut self, bytes: usize) -> Option<(usize, usize)> {
            if !self.first_taken && bytes <= FIRST_REGION {
                self.first_taken = true;
                return Some((&raw mut FIRST as usize, FIRST_REGION));
            }
            // Grow by at least a first region's worth so a busy call does not grow page
            // by page (each growth costs the host an `mprotect`).
            let bytes = bytes.max(FIRST_REGION);
            let pages = bytes.div_ceil(WASM_PAGE);
            let previous = core::arch::wasm32::memory_grow(0, pages);
            (previous != usize::MAX).then(|| (previous * WASM_PAGE, pages * WASM_PAGE))
        }
    }

    #[cfg(target_feature = "atomics")]
    compile_error!(
        "setpoint-plugin's arena allocator is single-threaded; build without the `atomics` \
         target feature or turn off the SDK's `arena` feature"
    );

    /// The `#[global_allocator]`. wasm32 plugins are single-threaded, so plain interior
    /// mutability suffices.
    struct CallArena(UnsafeCell<Arena<LinearMemory>>);

    // SAFETY: a plugin instance runs on one thread (wasm32 without threads).
    unsafe impl Sync for CallArena {}

    #[global_allocator]
    static ALLOCATOR: CallArena = CallArena(UnsafeCell::new(Arena::new(LinearMemory {
        first_taken: false,
    })));

    impl CallArena {
        #[allow(clippy::mut_from_ref)]
        fn arena(&self) -> &mut Arena<LinearMemory> {
            // SAFETY: single-threaded, and no method below re-enters the allocator.
            unsafe { &mut *self.0.get() }
        }
    }

    // SAFETY: blocks come from `FIRST` or from freshly grown linear memory, are never
    // handed out twice while live, and honour the layout's size and alignment.
    unsafe impl GlobalAlloc for CallArena {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { self.arena().alloc(layout.size(), layout.align()) as *mut u8 }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe {
                self.arena()
                    .free(ptr as usize, layout.size(), layout.align())
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let arena = self.arena();
            if arena.resize_in_place(ptr as usize, layout.size(), layout.align(), new_size) {
                return ptr;
            }
            unsafe {
                let new = arena.alloc(new_size, layout.align()) as *mut u8;
                if !new.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    arena.free(ptr as usize, layout.size(), layout.align());
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions carved out of boxed buffers, `chunk` bytes each, at most `limit` of them.
    struct Buffers {
        chunk: usize,
        limit: usize,
        held: Vec<Box<[u128]>>,
    }

    impl Grow for Buffers {
        fn grow(&mut self, bytes: usize) -> Option<(usize, usize)> {
            if self.held.len() == self.limit {
                return None;
            }
            let len = bytes.max(self.chunk).next_multiple_of(16);
            let buffer = vec![0u128; len / 16].into_boxed_slice();
            let start = buffer.as_ptr() as usize;
            self.held.push(buffer);
            Some((start, len))
        }
    }

    fn arena(chunk: usize, limit: usize) -> Arena<Buffers> {
        Arena::new(Buffers {
            chunk,
            limit,
            held: Vec::new(),
        })
    }

    #[test]
    fn blocks_are_aligned_distinct_and_reused_per_class() {
        let mut a = arena(4096, 4);
        unsafe {
            let x = a.alloc(10, 1);
            let y = a.alloc(10, 8);
            assert_ne!(x, 0);
            assert_eq!(x % 16, 0);
            assert_eq!(y, x + 16, "both round up to the 16-byte class");
            a.free(x, 10, 1);
            assert_eq!(a.alloc(16, 4), x, "a freed block serves its class again");
            let big = a.alloc(100, 8);
            assert_eq!(big % 16, 0);
            assert_ne!(big, x);
            a.free(big, 100, 8);
            assert_ne!(a.alloc(20, 4), big, "a 112-byte block is not reused for 32");
            assert_eq!(
                a.alloc(105, 1),
                big,
                "but is for another request of its class"
            );
        }
    }

    #[test]
    fn over_aligned_and_huge_requests_are_bumped_and_reclaimed_at_the_top() {
        let mut a = arena(LARGEST_CLASS * 4, 2);
        unsafe {
            let aligned = a.alloc(100, 4096);
            assert_eq!(aligned % 4096, 0);
            let huge = a.alloc(LARGEST_CLASS + 1, 8);
            assert_ne!(huge, 0);
            a.free(huge, LARGEST_CLASS + 1, 8);
            assert_eq!(
                a.alloc(LARGEST_CLASS + 1, 8),
                huge,
                "the top block came back"
            );
        }
    }

    #[test]
    fn grows_when_a_region_is_used_up_and_reports_exhaustion() {
        let mut a = arena(64, 2);
        unsafe {
            let first: Vec<usize> = (0..4).map(|_| a.alloc(16, 8)).collect();
            assert!(first.iter().all(|&p| p != 0));
            let next = a.alloc(16, 8);
            assert_ne!(next, 0, "a second region was taken");
            assert!(!first.contains(&next));
            for _ in 0..3 {
                assert_ne!(a.alloc(16, 8), 0);
            }
            assert_eq!(a.alloc(16, 8), 0, "no third region: out of memory");
        }
    }

    #[test]
    fn resize_in_place_within_the_class_or_at_the_top() {
        let mut a = arena(4096, 1);
        unsafe {
            let x = a.alloc(20, 1);
            assert!(a.resize_in_place(x, 20, 1, 32), "20 and 32 share a class");
            assert!(a.resize_in_place(x, 32, 1, 500), "the latest block grows");
            let y = a.alloc(8, 1);
            assert_eq!(y, x + 512);
            assert!(!a.resize_in_place(x, 500, 1, 1000), "no longer the latest");
            assert!(!a.resize_in_place(y, 8, 1, 10_000), "no room in the region");
        }
    }

    #[test]
    fn size_classes() {
        assert_eq!(class_of(0, 1), Some(0));
        assert_eq!(class_of(16, 16), Some(0));
        assert_eq!(class_of(17, 1), Some(1));
        assert_eq!(class_size(class_of(1000, 8).unwrap()), 1008);
        assert_eq!(class_size(class_of(1024, 8).unwrap()), 1024);
        assert_eq!(class_size(class_of(1025, 8).unwrap()), 2048);
        assert_eq!(class_size(class_of(5000, 8).unwrap()), 8192);
        assert_eq!(class_of(LARGEST_CLASS, 8), Some(CLASSES - 1));
        assert_eq!(class_size(CLASSES - 1), LARGEST_CLASS);
        for class in 0..CLASSES {
            assert_eq!(class_of(class_size(class), 1), Some(class), "class {class}");
        }
        assert_eq!(class_of(LARGEST_CLASS + 1, 8), None);
        assert_eq!(class_of(8, 32), None);
    }
}
