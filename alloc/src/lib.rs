//! # apiary-alloc: large blocks are reused, not returned to the kernel
//!
//! A training step allocates the same large buffers every step (activations, gradients,
//! optimizer temporaries: hundreds of blocks of 0.1-50 MiB) and frees them all by the end of
//! the step. glibc's `malloc` serves blocks above its mmap threshold with a fresh `mmap` and
//! `munmap`s them on free, so every step page-faults its whole working set back in: the kernel
//! zeroes each 4 KiB page and flushes TLBs on unmap. Measured with `perf` on the CPU training
//! bench (2 threads), that kernel work was about 40 % of apiary's step time.
//!
//! [`CachingAlloc`] wraps the system allocator. Blocks of at least [`MIN_CACHED`] bytes are
//! rounded up to a size class (8 classes per power of two, so at most 12.5 % slack) and, when
//! freed, kept on that class's free list instead of being returned; the next allocation of the
//! class takes a kept block, whose pages are already mapped. Smaller blocks go straight to the
//! system allocator, which already recycles them well. The bytes kept are bounded
//! ([`set_cache_limit`], default [`DEFAULT_CACHE_LIMIT`]); a block freed past the limit goes
//! back to the system. [`stats`] reports hits, misses and the bytes kept.
//!
//! `unsafe` is denied across the workspace; this crate allows it because a `GlobalAlloc` cannot
//! be written without it (the only other exception is the bounds-checked `gemm` call in
//! apiary-model's CPU training step). The free lists are intrusive (a kept block's first word points to the next kept
//! block of its class), so the allocator never allocates while holding its lock.
//!
//! Install it in a binary with
//! `#[global_allocator] static ALLOC: apiary_alloc::CachingAlloc = apiary_alloc::CachingAlloc::new();`
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Smallest block size that is cached (128 KiB, glibc's default mmap threshold).
pub const MIN_CACHED: usize = 1 << MIN_LOG2;
const MIN_LOG2: u32 = 17;
/// Largest block size that is cached (1 TiB; larger requests go straight to the system).
const MAX_LOG2: u32 = 40;
/// Size classes per power of two.
const SUB: usize = 8;
const SUB_LOG2: u32 = 3;
const CLASSES: usize = (MAX_LOG2 - MIN_LOG2 + 1) as usize * SUB;
/// Alignment of every cached block; requests with a larger alignment are not cached.
const BLOCK_ALIGN: usize = 64;
/// Default bound on the bytes kept on the free lists: 256 MiB (`node.alloc_cache_mb`). A
/// training step's working set larger than the limit is partly served by the system allocator
/// again; the training bench raises the limit to measure the cache at its best.
pub const DEFAULT_CACHE_LIMIT: usize = 256 << 20;

/// The size class of a request of `size >= MIN_CACHED` bytes: its free-list index and the
/// rounded block size, or `None` when it is too large to cache.
fn class_of(size: usize) -> Option<(usize, usize)> {
    if size < MIN_CACHED {
        return None;
    }
    let s = size - 1;
    let e = usize::BITS - 1 - s.leading_zeros(); // floor(log2(size - 1)) >= MIN_LOG2 - 1
    if e >= MAX_LOG2 {
        return None;
    }
    let shift = e - SUB_LOG2;
    let m = s >> shift; // SUB..2*SUB
    let rounded = (m + 1) << shift;
    let idx = (e + 1 - MIN_LOG2) as usize * SUB + (m - SUB);
    // e + 1 - MIN_LOG2 is 0 only for size == MIN_CACHED exactly (m == 2*SUB - 1), so
    // indices start at SUB - 1; the largest is (MAX_LOG2 - MIN_LOG2) * SUB + SUB - 1.
    Some((idx, rounded))
}

/// The free lists: one intrusive singly linked list per size class.
struct Lists {
    heads: [*mut u8; CLASSES],
}

// SAFETY: the pointers are blocks owned by the allocator, only touched under the mutex.
unsafe impl Send for Lists {}

/// Counters of the cache (see [`stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Large allocations served from a kept block.
    pub hits: u64,
    /// Large allocations that went to the system allocator.
    pub misses: u64,
    /// Large frees returned to the system because the cache was at its limit.
    pub overflows: u64,
    /// Bytes currently kept on the free lists.
    pub cached_bytes: usize,
    /// The bound on `cached_bytes`.
    pub limit_bytes: usize,
}

/// A global allocator that keeps freed blocks of at least [`MIN_CACHED`] bytes for reuse.
/// See the crate documentation.
pub struct CachingAlloc {
    lists: Mutex<Lists>,
    cached: AtomicUsize,
    limit: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    overflows: AtomicU64,
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAlloc {
    /// An empty cache with the [`DEFAULT_CACHE_LIMIT`].
    pub const fn new() -> CachingAlloc {
        CachingAlloc {
            lists: Mutex::new(Lists {
                heads: [ptr::null_mut(); CLASSES],
            }),
            cached: AtomicUsize::new(0),
            limit: AtomicUsize::new(DEFAULT_CACHE_LIMIT),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    /// Bounds the bytes kept on the free lists (blocks already kept beyond a lowered limit are
    /// released as they would be reused, not immediately).
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
            cached_bytes: self.cached.load(Ordering::Relaxed),
            limit_bytes: self.limit.load(Ordering::Relaxed),
        }
    }

    /// Returns every kept block to the system allocator.
    pub fn trim(&self) {
        let mut lists = self.lock();
        for (idx, head) in lists.heads.iter_mut().enumerate() {
            let size = class_size(idx);
            while !head.is_null() {
                let block = *head;
                // SAFETY: a kept block starts with the pointer to the next one (written in
                // `push`), and was allocated from System with (size, BLOCK_ALIGN).
                unsafe {
                    *head = block.cast::<*mut u8>().read();
                    System.dealloc(block, Layout::from_size_align_unchecked(size, BLOCK_ALIGN));
                }
                self.cached.fetch_sub(size, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a kept block of class `idx`, if any.
    fn pop(&self, idx: usize, size: usize) -> *mut u8 {
        let mut lists = self.lock();
        let block = lists.heads[idx];
        if !block.is_null() {
            // SAFETY: see `trim`.
            lists.heads[idx] = unsafe { block.cast::<*mut u8>().read() };
            self.cached.fetch_sub(size, Ordering::Relaxed);
        }
        block
    }

    /// Keeps `block` of class `idx`; false when the cache is full.
    fn push(&self, block: *mut u8, idx: usize, size: usize) -> bool {
        if self.cached.load(Ordering::Relaxed) + size > self.limit.load(Ordering::Relaxed) {
            return false;
        }
        let mut lists = self.lock();
        // SAFETY: the block is at least MIN_CACHED bytes, 64-aligned and no longer in use.
        unsafe { block.cast::<*mut u8>().write(lists.heads[idx]) };
        lists.heads[idx] = block;
        self.cached.fetch_add(size, Ordering::Relaxed);
        true
    }

    /// The class of a cacheable layout.
    fn cacheable(layout: Layout) -> Option<(usize, usize)> {
        if layout.align() > BLOCK_ALIGN {
            return None;
        }
        class_of(layout.size())
    }

    unsafe fn alloc_impl(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let Some((idx, size)) = Self::cacheable(layout) else {
            // SAFETY: forwarded unchanged.
            return unsafe {
                if zeroed {
                    System.alloc_zeroed(layout)
                } else {
                    System.alloc(layout)
                }
            };
        };
        let block = self.pop(idx, size);
        if !block.is_null() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            if zeroed {
                // SAFETY: the block holds at least layout.size() bytes.
                unsafe { ptr::write_bytes(block, 0, layout.size()) };
            }
            return block;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // SAFETY: size is non-zero and BLOCK_ALIGN a power of two; size is a multiple of 64.
        unsafe {
            let l = Layout::from_size_align_unchecked(size, BLOCK_ALIGN);
            if zeroed {
                System.alloc_zeroed(l)
            } else {
                System.alloc(l)
            }
        }
    }
}

/// The block size of class `idx` (inverse of [`class_of`]).
fn class_size(idx: usize) -> usize {
    let e = (idx / SUB) as u32 + MIN_LOG2 - 1;
    let m = idx % SUB + SUB;
    (m + 1) << (e - SUB_LOG2)
}

// SAFETY: every block handed out is either the system allocator's answer for the caller's own
// layout, or a block of at least the requested size allocated from the system with alignment
// BLOCK_ALIGN >= layout.align(); a block is handed out at most once until it is freed again.
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.alloc_impl(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.alloc_impl(layout, true) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match Self::cacheable(layout) {
            None => {
                // SAFETY: allocated by System with this very layout.
                unsafe { System.dealloc(block, layout) }
            }
            Some((idx, size)) => {
                if !self.push(block, idx, size) {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: allocated by System with (size, BLOCK_ALIGN) in alloc_impl.
                    unsafe {
                        System.dealloc(block, Layout::from_size_align_unchecked(size, BLOCK_ALIGN))
                    }
                }
            }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = Self::cacheable(layout);
        // SAFETY: the caller guarantees new_size > 0 and that it does not overflow at this align.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = Self::cacheable(new_layout);
        match (old, new) {
            // Both uncached: the system allocator may grow in place (mremap).
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // Same class: the block already has room.
            (Some((a, _)), Some((b, _))) if a == b => block,
            _ => {
                // SAFETY: as in the default GlobalAlloc::realloc.
                unsafe {
                    let new_block = self.alloc(new_layout);
                    if !new_block.is_null() {
                        ptr::copy_nonoverlapping(block, new_block, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    new_block
                }
            }
        }
    }
}

/// The process's global allocator, when it is a [`CachingAlloc`] registered with [`register`].
static REGISTERED: std::sync::OnceLock<&'static CachingAlloc> = std::sync::OnceLock::new();

/// Makes `alloc` (the binary's `#[global_allocator]`) reachable through [`stats`] and
/// [`set_cache_limit`] from library code that does not know the binary's static.
pub fn register(alloc: &'static CachingAlloc) {
    let _ = REGISTERED.set(alloc);
}

/// The registered allocator's counters; `None` when the process does not use one.
pub fn stats() -> Option<CacheStats> {
    REGISTERED.get().map(|a| a.stats())
}

/// Returns the registered allocator's kept blocks to the system and, on glibc, asks `malloc`
/// to give its free heap pages back to the kernel (`malloc_trim`): after large transient work
/// (an aggregation, an applied window) the process's RSS falls back to what it uses. Returns
/// the bytes the cache released (0 when the process does not use a [`CachingAlloc`]).
pub fn trim() -> usize {
    let released = REGISTERED.get().map_or(0, |a| {
        let before = a.stats().cached_bytes;
        a.trim();
        before
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free memory of malloc's own arenas.
        unsafe {
            malloc_trim(0);
        }
    }
    released
}

/// Bounds the registered allocator's cache; false when the process does not use one.
pub fn set_cache_limit(bytes: usize) -> bool {
    match REGISTERED.get() {
        Some(a) => {
            a.set_limit(bytes);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth_and_invert() {
        let mut last = 0;
        for size in (MIN_CACHED..(64 << 20)).step_by(4093) {
            let (idx, rounded) = class_of(size).expect("cacheable");
            assert!(rounded >= size, "{size} -> {rounded}");
            assert!(rounded - size <= size / 8 + 1, "{size} -> {rounded}");
            assert_eq!(class_size(idx), rounded, "size {size} idx {idx}");
            assert!(idx >= last, "classes are monotonic");
            last = idx;
        }
        assert_eq!(class_of(MIN_CACHED), Some((SUB - 1, MIN_CACHED)));
        assert_eq!(class_of(MIN_CACHED + 1).map(|c| c.0), Some(SUB));
        let largest = class_of((1 << MAX_LOG2) - 1).expect("cacheable");
        assert_eq!(largest, (CLASSES - 1, 1 << MAX_LOG2));
        assert_eq!(class_of(1 << MAX_LOG2).map(|c| c.0), Some(CLASSES - 1));
        assert_eq!(class_of((1 << MAX_LOG2) + 1), None);
        assert_eq!(class_of(MIN_CACHED - 1), None);
        assert_eq!(class_of(1 << 41), None);
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("layout")
    }

    #[test]
    fn a_freed_block_is_reused_for_the_same_class_and_zeroed_on_request() {
        let a = CachingAlloc::new();
        unsafe {
            let l = layout(1 << 20);
            let p = a.alloc(l);
            assert!(!p.is_null());
            ptr::write_bytes(p, 0xAB, l.size());
            a.dealloc(p, l);
            assert_eq!(a.stats().cached_bytes, 1 << 20);
            // A slightly smaller request of the same class gets the same block, zeroed.
            let l2 = layout((1 << 20) - 1000);
            let q = a.alloc_zeroed(l2);
            assert_eq!(p, q);
            let bytes = std::slice::from_raw_parts(q, l2.size());
            assert!(bytes.iter().all(|&b| b == 0));
            assert_eq!(a.stats().hits, 1);
            assert_eq!(a.stats().cached_bytes, 0);
            a.dealloc(q, l2);
            a.trim();
            assert_eq!(a.stats().cached_bytes, 0);
        }
    }

    #[test]
    fn small_and_overaligned_blocks_bypass_the_cache() {
        let a = CachingAlloc::new();
        unsafe {
            let small = layout(1000);
            let p = a.alloc(small);
            a.dealloc(p, small);
            let big_align = Layout::from_size_align(1 << 20, 4096).expect("layout");
            let q = a.alloc(big_align);
            assert_eq!(q as usize % 4096, 0);
            a.dealloc(q, big_align);
        }
        assert_eq!(
            a.stats(),
            CacheStats {
                limit_bytes: DEFAULT_CACHE_LIMIT,
                ..CacheStats::default()
            }
        );
    }

    #[test]
    fn the_limit_bounds_the_kept_bytes() {
        let a = CachingAlloc::new();
        a.set_limit(3 << 20);
        unsafe {
            let l = layout(1 << 20);
            let blocks: Vec<_> = (0..5).map(|_| a.alloc(l)).collect();
            for &b in &blocks {
                a.dealloc(b, l);
            }
            let s = a.stats();
            assert_eq!(s.cached_bytes, 3 << 20);
            assert_eq!(s.overflows, 2);
            assert_eq!(s.misses, 5);
            a.trim();
        }
    }

    #[test]
    fn realloc_keeps_contents_across_classes() {
        let a = CachingAlloc::new();
        unsafe {
            let l = layout(200_000);
            let p = a.alloc(l);
            for i in 0..l.size() {
                *p.add(i) = (i % 251) as u8;
            }
            // Same class: grows in place.
            let q = a.realloc(p, l, 200_100);
            assert_eq!(p, q);
            // Another class, then back below the threshold.
            let l2 = layout(200_100);
            let r = a.realloc(q, l2, 3 << 20);
            let l3 = layout(3 << 20);
            let s = a.realloc(r, l3, 1000);
            for i in 0..1000 {
                assert_eq!(*s.add(i), (i % 251) as u8);
            }
            a.dealloc(s, layout(1000));
            a.trim();
        }
    }

    #[test]
    fn threads_never_share_a_block() {
        let a = std::sync::Arc::new(CachingAlloc::new());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || unsafe {
                    for round in 0..200usize {
                        let l = layout(MIN_CACHED + (round % 7) * 70_000);
                        let p = a.alloc(l);
                        ptr::write_bytes(p, t, l.size());
                        std::thread::yield_now();
                        let bytes = std::slice::from_raw_parts(p, l.size());
                        assert!(
                            bytes.iter().all(|&b| b == t),
                            "block shared between threads"
                        );
                        a.dealloc(p, l);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let s = a.stats();
        assert_eq!(s.hits + s.misses, 800);
        assert!(s.hits > 0);
        a.trim();
        assert_eq!(a.stats().cached_bytes, 0);
    }
}
