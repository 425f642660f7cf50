//! The shared heap: an opt-in global allocator whose large blocks live in one
//! process-wide `MAP_SHARED` memfd, so that forked workers can read them at
//! the same addresses (design.md, section 15).
//!
//! - `books.rs`: the bookkeeping (which pages are in use, warm, cold or in
//!   transit), pure and O(1), over a private tag table;
//! - `bins.rs`: the index of free spans by size (TLSF) that the books use;
//! - `lock.rs`: the fork-aware lock that guards them;
//! - `cgroup.rs`: the memory cgroup's limit, read at reservation without
//!   allocating (the system calls themselves are in `crate::os`);
//! - `state.rs`: the process-wide state, the reservation, the fork handler,
//!   the block operations, and the interface the pool uses;
//! - this file: `SharedHeap` (configuration, routing between the heap and
//!   `std::alloc::System`).
//!
//! # Interface for the pool
//!
//! Address questions, answered without a lock from any thread of any
//! process: [`active`] (the heap exists and this process owns it),
//! [`base`] and [`capacity`] (the mapping's range; 0 and 0 without a heap),
//! [`contains`] (`Some(offset)` when a byte range lies wholly in the heap),
//! [`memfd`] (to map a second view of the file), [`owner_generation`],
//! [`in_child_view`] (this process replaced its view with a private one),
//! [`share_view`] (a child maps the heap shared again, e.g. a pool's
//! template before it forks workers) and [`protect_read_only`] (for a
//! worker). None of them says whether a
//! block is live: a safe `&[T]` in the heap is part of a live block by
//! construction.
//!
//! Uses `unsafe` (denied at the crate root): the global allocator hands out
//! raw memory, maps the heap and keeps its books in raw tables; its
//! submodules inherit the allowance.

#![allow(unsafe_code)]

mod bins;
mod books;
mod cgroup;
mod lock;
mod state;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt;
use std::ptr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use state::{
    Phase, alloc_block, free_block, holds, is_owner, resize_in_place, snapshot, start, trim_to,
};
#[allow(
    unused_imports,
    reason = "the pool's integration with the heap uses them"
)]
pub(crate) use state::{
    active, base, capacity, contains, in_child_view, memfd, owner_generation, protect_read_only,
    share_view, writable_alias,
};

use crate::os;

/// Requests of this many bytes or more go to the heap, by default.
const DEFAULT_THRESHOLD: usize = 64 << 10;
/// Free pages kept warm, at most, by default.
const DEFAULT_KEEP_WARM: usize = 256 << 20;
/// "Decide at reservation": the capacity `SharedHeap::new` asks for.
const DEFAULT_CAPACITY: usize = usize::MAX;
/// No heap block is smaller: the threshold in force is at least the page
/// size, and at least this. So a free of fewer bytes needs no range check.
const MIN_BLOCK: usize = 4096;

/// An opt-in global allocator that puts large allocations in shared memory.
///
/// Install it once, in the binary:
///
/// ```no_run
/// #[global_allocator]
/// // SAFETY: tasks read heap memory only through their arguments (see
/// // "Safety" below).
/// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
/// ```
///
/// Allocations of at least [`threshold`](SharedHeap::threshold) bytes
/// (64 KiB by default) come from **one process-wide memfd, mapped
/// `MAP_SHARED`**. Smaller ones go to [`std::alloc::System`], at the cost
/// of one compare. The heap reserves its address space at its first use of
/// any kind. A program's runtime and [`Pool::new`](crate::Pool::new) both
/// allocate before a pool forks anything, so the heap always exists before
/// any pool. Every pool's template and workers inherit the mapping at the
/// same address, and a big `Vec` the program builds, before or after
/// `Pool::new`, lives in memory that the pool's processes map too.
///
/// Two effects follow:
/// - forking a big process is cheap: `fork` copies the page tables of
///   private memory (tens of milliseconds per GiB), but not those of a
///   shared file mapping (a small fraction of that);
/// - there is no copy-on-write tax: after a fork, the parent writes its
///   heap pages in place instead of copying each one on its first write.
///
/// # Blocks, pages, limits
///
/// - A large block is whole pages of the memfd, aligned to its layout's
///   alignment (any power of two). Its pages are allocated (`fallocate`)
///   before it is returned, so touching it never raises `SIGBUS`.
/// - **Warm first.** A freed block keeps its pages for reuse: refilling warm
///   pages is an order of magnitude cheaper than fresh ones. At most
///   [`keep_warm`](SharedHeap::keep_warm) bytes (256 MiB by default) stay
///   warm. The rest is given back to the system (hole punching), as glibc's
///   trim threshold does; [`trim`](SharedHeap::trim) gives back all of it
///   at once.
/// - **The capacity** is address space, not memory:
///   [`capacity`](SharedHeap::capacity), or by default the smallest of the
///   physical memory, the memory cgroup's limit, the file size limit
///   (`RLIMIT_FSIZE`), and a quarter of what `RLIMIT_AS` leaves free.
/// - **It never fails the process.** If the reservation cannot be made, the
///   heap is off and everything goes to the system allocator. If the heap is
///   full, or the kernel refuses its pages (a memory cgroup or tmpfs limit),
///   that one allocation goes to the system allocator
///   ([`HeapStats::fallbacks`] counts them).
///
/// # Processes
///
/// The process that reserved the heap is its **owner**. In any other
/// process (a pool's template or worker, a child the program `fork`s, their
/// descendants), allocations go to the system allocator, and frees of heap
/// blocks are ignored: children never allocate from the owner's heap or
/// free into it. Right after a `fork`, a child of the owner replaces its
/// view of the heap with a private, copy-on-write one at the same address:
/// it reads the owner's heap **live** (a page it has not written shows what
/// the owner writes later), and its own writes never reach the owner. A
/// child that keeps using heap data the owner then changes or frees sees
/// those bytes change. Programs that fork such children (without `exec`)
/// should not install the heap. Pool workers, whose tasks only read data
/// the pool hands them, are what it is for. A pool's workers see the heap
/// live and read-only, but for the output of the job they run (a heap
/// slice given to `map_into` or `map_in_place`, written through a second
/// mapping): a task that writes anywhere else in the heap fails its job with
/// [`Error::HeapWrite`](crate::Error::HeapWrite), the owner's data unchanged.
///
/// **Statics read inside tasks.** A `static` itself is private memory: a
/// worker sees the value it had when the pool's template was forked, at
/// [`Pool::new`](crate::Pool::new). The heap blocks it points to are live.
/// So a task that reads a `static` `Vec`, `String` or `Box` (or anything
/// else that leads into the heap: a `OnceLock`, a `Mutex`, a leaked
/// reference, a library's cache) reads the owner's memory as it is *now*,
/// through pointers as they were at `Pool::new`: if the owner has since
/// changed that memory, freed it, or handed it out again, the task reads
/// half-done changes, another allocation's bytes, or pointers into memory
/// the worker does not share. With `Pod` data that is a wrong value; with
/// a `String`, a `Box<dyn Fn>` or a reference, undefined behaviour.
/// Hence the contract of [`new`](SharedHeap::new).
///
/// # Safety
///
/// Installing the heap is `unsafe` because workers see it live. The
/// program promises that **tasks reach heap memory only through their
/// arguments** (the input, table, context or output a pool call hands
/// them, which the pool keeps alive and unchanged for the job). The one
/// exception is data built before `Pool::new` that the owner then neither
/// frees, grows, nor changes while a task may read it (a lookup table kept
/// in a `static`, say). The same holds for any child the program forks
/// without `exec`. Data a task needs should travel as an argument:
/// [`map_shared`](crate::Pool::map_shared) hands a whole table to every
/// task.
///
/// # Example
///
/// A `SharedHeap` can also be called directly, through [`GlobalAlloc`]:
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
/// use shmpool::SharedHeap;
///
/// // SAFETY: no pool here; nothing reads the heap in another process.
/// static HEAP: SharedHeap = unsafe { SharedHeap::new() }.keep_warm(64 << 20);
///
/// let layout = Layout::from_size_align(1 << 20, 8).unwrap();
/// // SAFETY: a non-zero size; the block is freed with the same layout.
/// unsafe {
///     let p = HEAP.alloc(layout);
///     assert!(!p.is_null());
///     p.write_bytes(7, layout.size());
///     assert_eq!(*p.add(12345), 7);
///     HEAP.dealloc(p, layout);
/// }
/// let stats = HEAP.stats();
/// if stats.active {
///     // The freed megabyte stays warm for the next large allocation.
///     assert_eq!(stats.in_use, 0);
///     assert!(stats.warm >= 1 << 20);
/// }
/// ```
pub struct SharedHeap {
    threshold: usize,
    capacity: usize,
    keep_warm: usize,
    /// 0 until this value first runs in the process; then the threshold in
    /// force: `threshold` (at least a page) with a heap, `usize::MAX`
    /// without one. Inherited by children, where the heap path then sends
    /// every allocation to the system allocator.
    live: AtomicUsize,
}

/// What a [`SharedHeap`] holds, from [`SharedHeap::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapStats {
    /// The heap is reserved and this process owns it. `false` when the
    /// reservation failed or the capacity is 0, and in every process but
    /// the owner (there, every other field but `threshold` is 0).
    pub active: bool,
    /// Bytes of address space reserved.
    pub capacity: usize,
    /// Requests of this many bytes or more go to the heap.
    pub threshold: usize,
    /// Bytes in live heap blocks (whole pages).
    pub in_use: usize,
    /// Bytes of free blocks that still have their pages, kept for reuse.
    pub warm: usize,
    /// Blocks the heap has handed out (a block moved by `realloc` counts
    /// again).
    pub allocations: u64,
    /// Requests of at least the threshold that the heap could not serve
    /// (full, or the kernel refused the pages), so the system allocator did.
    pub fallbacks: u64,
}

impl SharedHeap {
    /// A heap with the defaults: 64 KiB threshold, 256 MiB kept warm, and a
    /// capacity decided when it is reserved (see [`capacity`](Self::capacity)).
    ///
    /// ```
    /// // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
    /// ```
    ///
    /// # Safety
    /// Once this value is the global allocator, tasks (and children forked
    /// without `exec`) must reach heap memory only through the arguments a
    /// pool call hands them, or data built before `Pool::new` that the
    /// owner neither frees, grows, nor changes while a task may read it:
    /// see ["Safety"](SharedHeap#safety). Without `unsafe`, it does not
    /// compile:
    ///
    /// ```compile_fail,E0133
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new();
    /// ```
    #[must_use]
    pub const unsafe fn new() -> SharedHeap {
        SharedHeap {
            threshold: DEFAULT_THRESHOLD,
            capacity: DEFAULT_CAPACITY,
            keep_warm: DEFAULT_KEEP_WARM,
            live: AtomicUsize::new(0),
        }
    }

    /// Sends requests of at least `bytes` to the heap (default 64 KiB).
    /// Values below the page size count as the page size. Each `SharedHeap`
    /// value routes by its own threshold; all of them share the one heap.
    ///
    /// ```
    /// # // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() }.threshold(1 << 20);
    /// assert_eq!(HEAP.stats().threshold, 1 << 20);
    ///
    /// # // SAFETY: as above.
    /// static TINY: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() }.threshold(100);
    /// assert!(TINY.stats().threshold >= 4096); // a page at least
    /// ```
    #[must_use]
    pub const fn threshold(self, bytes: usize) -> SharedHeap {
        SharedHeap {
            threshold: bytes,
            ..self
        }
    }

    /// Reserves `bytes` of address space (rounded down to 2 MiB, at most
    /// 16 TiB). `0` turns the heap off. The default is the smallest of the
    /// physical memory, the memory cgroup's limit, the file size limit
    /// (`RLIMIT_FSIZE`: the heap is one file), and a quarter of the address
    /// space that `RLIMIT_AS` leaves free; below 32 MiB the heap stays off.
    /// A capacity set here is tried as given: if the kernel refuses it
    /// (`RLIMIT_AS`), or it exceeds `RLIMIT_FSIZE`, the heap is off. The first `SharedHeap`
    /// used in a process (the global allocator, in practice) decides the
    /// capacity and the warm bound.
    ///
    /// ```
    /// # // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() }.capacity(64 << 30);
    /// ```
    #[must_use]
    pub const fn capacity(self, bytes: usize) -> SharedHeap {
        SharedHeap {
            capacity: bytes,
            ..self
        }
    }

    /// Keeps at most `bytes` of freed blocks' pages for reuse (default
    /// 256 MiB, and never more than a quarter of the capacity); pages beyond
    /// that are given back to the system when a block is freed.
    ///
    /// ```
    /// # // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() }.keep_warm(1 << 30);
    /// ```
    #[must_use]
    pub const fn keep_warm(self, bytes: usize) -> SharedHeap {
        SharedHeap {
            keep_warm: bytes,
            ..self
        }
    }

    /// What the heap holds now. Reserves the heap if nothing has yet.
    ///
    /// ```
    /// # // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
    ///
    /// let stats = HEAP.stats();
    /// assert_eq!(stats.threshold, 64 << 10);
    /// if !stats.active {
    ///     assert_eq!(stats.in_use, 0);
    /// }
    /// ```
    pub fn stats(&self) -> HeapStats {
        self.current_threshold();
        let threshold = self.threshold.max(os::page_size()).max(MIN_BLOCK);
        if !is_owner() {
            return HeapStats {
                threshold,
                ..HeapStats::default()
            };
        }
        let now = snapshot();
        HeapStats {
            active: true,
            capacity: capacity(),
            threshold,
            in_use: now.in_use,
            warm: now.warm,
            allocations: now.allocations,
            fallbacks: now.fallbacks,
        }
    }

    /// Gives every warm page back to the system now, as `malloc_trim(0)`
    /// does, and returns how many bytes that was. Blocks in use keep their
    /// pages. Does nothing outside the owner process.
    ///
    /// ```
    /// # // SAFETY: tasks read heap memory only through their arguments.
    /// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
    ///
    /// HEAP.trim();
    /// assert_eq!(HEAP.stats().warm, 0);
    /// ```
    pub fn trim(&self) -> usize {
        self.current_threshold();
        if !is_owner() {
            return 0;
        }
        trim_to(0) as usize
    }

    /// The threshold in force in this process, reserving the heap on the
    /// first call.
    #[inline]
    fn current_threshold(&self) -> usize {
        // ORDERING: Relaxed: a routing decision; every value it can read
        // (0, the threshold, or "off") leads to a correct path.
        match self.live.load(Relaxed) {
            0 => self.begin(),
            t => t,
        }
    }

    /// The first call in this process: reserves the heap (once per
    /// process, whichever `SharedHeap` comes first) and fixes this value's
    /// threshold.
    #[cold]
    #[inline(never)]
    fn begin(&self) -> usize {
        let live = match start(self.capacity, self.keep_warm) {
            Phase::Ready => self.threshold.max(os::page_size()).max(MIN_BLOCK),
            Phase::Off => usize::MAX,
            // Another thread is reserving it: the system allocator serves
            // this call, and the next one asks again.
            Phase::Busy => return usize::MAX,
        };
        // ORDERING: Relaxed: see `current_threshold`.
        self.live.store(live, Relaxed);
        live
    }

    /// An allocation of at least the threshold, or the first of all.
    #[inline(never)]
    fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if layout.size() >= self.current_threshold() {
            if let Some(p) = alloc_block(layout, zeroed) {
                return p;
            }
        }
        // SAFETY: `GlobalAlloc::alloc`'s contract (a non-zero size), passed
        // on from our caller.
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    /// `realloc` of a heap block.
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract, and `ptr` lies in the heap.
    #[inline(never)]
    unsafe fn realloc_heap(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract: `new_size`, rounded up to the
        // alignment, does not overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let keep = layout.size().min(new_size);
        if !is_owner() {
            // A child's copy of the owner's block: copy it out and leave the
            // owner's block alone.
            // SAFETY: a non-zero size (`realloc`'s contract).
            let p = unsafe { System.alloc(new_layout) };
            if !p.is_null() {
                // SAFETY: both blocks hold at least `keep` bytes; a fresh
                // block does not overlap the old one.
                unsafe { ptr::copy_nonoverlapping(ptr, p, keep) };
            }
            return p;
        }
        let threshold = self.current_threshold();
        if new_size >= threshold && resize_in_place(ptr, layout.size(), new_size) {
            return ptr;
        }
        let p = if new_size >= threshold {
            alloc_block(new_layout, false)
        } else {
            None
        };
        // SAFETY: a non-zero size (`realloc`'s contract).
        let p = p.unwrap_or_else(|| unsafe { System.alloc(new_layout) });
        if p.is_null() {
            // The old block stays valid, as `realloc` promises.
            return p;
        }
        // SAFETY: both blocks hold at least `keep` bytes and are distinct.
        unsafe { ptr::copy_nonoverlapping(ptr, p, keep) };
        free_block(ptr, layout.size());
        p
    }

    /// `realloc` of a system block to at least the threshold: into the heap
    /// if it has room.
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract, and `ptr` came from `System`.
    #[inline(never)]
    unsafe fn realloc_from_system(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= self.current_threshold() {
            // SAFETY: as in `realloc_heap`.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            if let Some(p) = alloc_block(new_layout, false) {
                // SAFETY: both blocks hold at least this many bytes and are
                // distinct; the old one came from `System` with `layout`.
                unsafe {
                    ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    System.dealloc(ptr, layout);
                }
                return p;
            }
        }
        // SAFETY: our caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

impl fmt::Debug for SharedHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SharedHeap");
        d.field("threshold", &self.threshold);
        if self.capacity == DEFAULT_CAPACITY {
            d.field("capacity", &"default");
        } else {
            d.field("capacity", &self.capacity);
        }
        d.field("keep_warm", &self.keep_warm).finish()
    }
}

// SAFETY: blocks from the heap are whole pages of a mapping that lives as
// long as the process, handed out to one owner at a time by the bookkeeping
// (which never gives out a page of a live block, `books.rs`), aligned to the
// layout's alignment and at least its size; everything else comes from
// `System` unchanged. A pointer is routed back by the range it lies in, so
// each block returns to the allocator that made it. In any process but the
// owner, no heap block is handed out or reused, and the view of the heap is
// private (`after_fork_in_child`), so a block a child inherited stays
// valid for as long as the child holds it. Nothing here unwinds: misuse
// detected by the bookkeeping aborts.
unsafe impl GlobalAlloc for SharedHeap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // ORDERING: Relaxed: see `current_threshold`.
        if layout.size() < self.live.load(Relaxed) {
            // SAFETY: our caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        }
        self.alloc_large(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // ORDERING: Relaxed: see `current_threshold`.
        if layout.size() < self.live.load(Relaxed) {
            // SAFETY: our caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        self.alloc_large(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A small block needs no range check (`MIN_BLOCK`): one compare.
        if layout.size() >= MIN_BLOCK && holds(ptr) {
            free_block(ptr, layout.size());
        } else {
            // SAFETY: not a heap block, so `System` made it (see the impl's
            // SAFETY note); our caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() >= MIN_BLOCK && holds(ptr) {
            // SAFETY: our caller's contract; `ptr` lies in the heap.
            return unsafe { self.realloc_heap(ptr, layout, new_size) };
        }
        // ORDERING: Relaxed: see `current_threshold`.
        if new_size < self.live.load(Relaxed) {
            // SAFETY: `System` made `ptr`; our caller's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as above.
        unsafe { self.realloc_from_system(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state::REFUSE;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The heap of this test process (the first `SharedHeap` used in it
    /// decides for all: only these tests use one), one test at a time.
    // SAFETY: no pool here; nothing reads the heap in another process.
    static HEAP: SharedHeap = unsafe { SharedHeap::new() }
        .capacity(64 << 20)
        .keep_warm(4 << 20);
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn heap() -> (&'static SharedHeap, MutexGuard<'static, ()>) {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(HEAP.stats().active, "{:?}", HEAP.stats());
        (&HEAP, guard)
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn the_methods_route_by_size_and_address() {
        let (h, _one) = heap();
        let before = h.stats();
        assert_eq!(before.capacity, 64 << 20);
        // SAFETY: non-zero sizes; every block is freed once, with the layout
        // it has.
        unsafe {
            let small = h.alloc(layout(100));
            assert!(contains(small, 100).is_none());
            let big = h.alloc_zeroed(layout(1 << 20));
            let off = contains(big, 1 << 20).expect("a large block is in the heap");
            assert_eq!(off % 4096, 0);
            assert!((0..1 << 20).all(|i| *big.add(i) == 0));
            big.write_bytes(3, 1 << 20);
            // Grows in place into the cold pages after it.
            let grown = h.realloc(big, layout(1 << 20), 3 << 20);
            assert_eq!(grown, big);
            assert!((0..1 << 20).all(|i| *grown.add(i) == 3));
            // Below the threshold: out to the system allocator.
            let out = h.realloc(grown, layout(3 << 20), 1000);
            assert!(contains(out, 1000).is_none());
            assert!((0..1000).all(|i| *out.add(i) == 3));
            // And back in.
            let back = h.realloc(out, layout(1000), 200 << 10);
            assert!(contains(back, 200 << 10).is_some());
            assert!((0..1000).all(|i| *back.add(i) == 3));
            h.dealloc(back, layout(200 << 10));
            h.dealloc(small, layout(100));
        }
        let after = h.stats();
        assert_eq!(after.in_use, before.in_use);
        assert!(after.warm <= 4 << 20);
        assert_eq!(after.allocations - before.allocations, 2);
        assert_eq!(after.fallbacks, before.fallbacks);
    }

    #[test]
    fn a_refused_reservation_falls_back_and_loses_nothing() {
        let (h, _one) = heap();
        h.trim();
        let before = h.stats();
        // SAFETY: as above.
        unsafe {
            // REFUSE: the first reservation fails: the system serves it.
            // ORDERING: Relaxed: a test counter.
            REFUSE.store(1, Relaxed);
            let p = h.alloc(layout(1 << 20));
            assert!(!p.is_null() && contains(p, 1).is_none());
            let s = h.stats();
            assert_eq!(s.fallbacks - before.fallbacks, 1);
            assert_eq!(
                (s.in_use, s.warm),
                (before.in_use, 0),
                "the block went back"
            );
            p.write_bytes(1, 1 << 20);
            h.dealloc(p, layout(1 << 20));

            // A block in the heap whose in-place growth is refused moves.
            let q = h.alloc(layout(256 << 10));
            assert!(contains(q, 1).is_some());
            q.write_bytes(2, 256 << 10);
            // ORDERING: Relaxed: a test counter.
            REFUSE.store(1, Relaxed);
            let r = h.realloc(q, layout(256 << 10), 512 << 10);
            assert_ne!(r, q, "not grown in place");
            assert!(contains(r, 1).is_some(), "moved within the heap");
            assert!((0..256 << 10).all(|i| *r.add(i) == 2));
            h.dealloc(r, layout(512 << 10));
        }
        assert_eq!(h.stats().in_use, before.in_use);
        h.trim();
        assert_eq!(h.stats().warm, 0);
    }

    #[test]
    fn a_child_views_the_heap_privately_and_can_share_it_again() {
        let (h, _one) = heap();
        let l = layout(1 << 20);
        // SAFETY: a non-zero size; freed below. The child touches only
        // this block and atomics, makes system calls, and leaves with
        // `_exit` (no lock another thread of the test harness may hold).
        unsafe {
            let p = h.alloc(l);
            let off = contains(p, 1 << 20).expect("in the heap");
            p.write(1);
            assert!(!in_child_view());
            match os::fork().unwrap() {
                os::Forked::Child => {
                    let mut code = 0;
                    let mut check = |ok: bool, bit: i32| {
                        if !ok {
                            code |= bit;
                        }
                    };
                    check(in_child_view() && !active(), 1);
                    check(contains(p, 1) == Some(off), 2);
                    check(p.read_volatile() == 1, 4);
                    p.write_volatile(2); // a private copy
                    h.dealloc(p, l); // ignored: not the owner
                    check(share_view(true), 8);
                    check(p.read_volatile() == 1, 16);
                    p.write_volatile(3); // the owner's page
                    check(protect_read_only(), 32);
                    check(p.read_volatile() == 3, 64);
                    os::exit_now(code)
                }
                os::Forked::Parent(pid) => {
                    let status = os::wait_raw(pid).map(os::decode_status);
                    assert_eq!(
                        status.map(|s| s.code),
                        Some(Some(0)),
                        "failed checks (bits): {status:?}"
                    );
                }
            }
            assert_eq!(p.read(), 3, "the child's shared write, and only that");
            assert!(h.stats().in_use >= 1 << 20, "the child's free was ignored");
            h.dealloc(p, l);
        }
    }

    #[test]
    fn configuration_is_const() {
        // SAFETY: never installed; nothing reads the heap in another process.
        static H: SharedHeap = unsafe { SharedHeap::new() }
            .threshold(1)
            .capacity(0)
            .keep_warm(5);
        assert_eq!((H.threshold, H.capacity, H.keep_warm), (1, 0, 5));
        assert_eq!(
            // SAFETY: as above.
            format!("{:?}", unsafe { SharedHeap::new() }),
            "SharedHeap { threshold: 65536, capacity: \"default\", keep_warm: 268435456 }"
        );
    }
}
