//! The shared heap: an opt-in global allocator whose large blocks live in one
//! process-wide `MAP_SHARED` memfd, so that forked workers can read them at
//! the same addresses (design.md, section 14).
//!
//! - `books.rs`: the bookkeeping (which pages are in use, warm, cold or in
//!   transit), pure and O(1), over a private tag table;
//! - `lock.rs`: the fork-aware lock that guards it;
//! - `sys.rs`: the system calls and the limits read at reservation, none of
//!   which allocates;
//! - this file: `SharedHeap` (configuration, routing between the heap and
//!   `std::alloc::System`), the process-wide state, the fork rules, and the
//!   interface the pool uses.
//!
//! # Interface for the pool
//!
//! Address questions, answered without a lock from any thread of any
//! process: [`active`] (the heap exists and this process owns it),
//! [`base`] and [`capacity`] (the mapping's range; 0 and 0 without a heap),
//! [`contains`] (`Some(offset)` when a byte range lies wholly in the heap),
//! [`memfd`] (to map a second view of the file), [`owner_generation`],
//! [`in_child_view`] (this process replaced its view with a private one),
//! and [`protect_read_only`] (for a worker). None of them says whether a
//! block is live: a safe `&[T]` in the heap is part of a live block by
//! construction.

mod books;
mod lock;
mod sys;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

use books::{Books, Grant, Span, Tag};
use lock::ForkLock;

use crate::os;

/// Requests of this many bytes or more go to the heap, by default.
const DEFAULT_THRESHOLD: usize = 64 << 10;
/// Free pages kept warm, at most, by default.
const DEFAULT_KEEP_WARM: usize = 256 << 20;
/// "Decide at reservation": the capacity `SharedHeap::new` asks for.
const DEFAULT_CAPACITY: usize = usize::MAX;
/// A default capacity below this leaves the heap off.
const MIN_DEFAULT_CAPACITY: u64 = 32 << 20;
/// The mapping's alignment (a huge page), and the unit the capacity is
/// rounded down to.
const MAP_ALIGN: usize = 2 << 20;
/// Warm-bound pieces punched per round of the lock.
const PIECES: usize = 8;

/// An opt-in global allocator that puts large allocations in shared memory.
///
/// Install it once, in the binary:
///
/// ```no_run
/// #[global_allocator]
/// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new();
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
/// Two measured effects follow:
/// - forking a big process is cheap: `fork` copies the page tables of
///   private memory (about 71 ms for 2 GiB here), but not those of a shared
///   file mapping (about 1.3 ms for the same 2 GiB);
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
///   physical memory, the memory cgroup's limit, and a quarter of what
///   `RLIMIT_AS` leaves free.
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
/// the pool hands them, are what it is for.
///
/// # Example
///
/// A `SharedHeap` can also be called directly, through [`GlobalAlloc`]:
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
/// use shmpool::SharedHeap;
///
/// static HEAP: SharedHeap = SharedHeap::new().keep_warm(64 << 20);
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
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new();
    /// ```
    #[must_use]
    pub const fn new() -> SharedHeap {
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
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new().threshold(1 << 20);
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
    /// physical memory, the memory cgroup's limit, and a quarter of the
    /// address space that `RLIMIT_AS` leaves free; below 32 MiB the heap
    /// stays off. A capacity set here is tried as given: if the kernel
    /// refuses it (`RLIMIT_AS`), the heap is off. The first `SharedHeap`
    /// used in a process (the global allocator, in practice) decides the
    /// capacity and the warm bound.
    ///
    /// ```
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new().capacity(64 << 30);
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
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new().keep_warm(1 << 30);
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
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new();
    ///
    /// let stats = HEAP.stats();
    /// assert_eq!(stats.threshold, 64 << 10);
    /// if !stats.active {
    ///     assert_eq!(stats.in_use, 0);
    /// }
    /// ```
    pub fn stats(&self) -> HeapStats {
        self.current_threshold();
        let threshold = self.threshold.max(os::page_size());
        if !is_owner() {
            return HeapStats {
                threshold,
                ..HeapStats::default()
            };
        }
        let (used, warm) = with_books(|b| (b.used_pages(), b.warm_pages() + b.transit_pages()));
        let shift = STATE.shift.load(Relaxed);
        HeapStats {
            active: true,
            capacity: capacity(),
            threshold,
            in_use: (used << shift) as usize,
            warm: (warm << shift) as usize,
            // ORDERING: Relaxed: statistics.
            allocations: STATE.allocations.load(Relaxed),
            // ORDERING: Relaxed: statistics.
            fallbacks: STATE.fallbacks.load(Relaxed),
        }
    }

    /// Gives every warm page back to the system now, as `malloc_trim(0)`
    /// does, and returns how many bytes that was. Blocks in use keep their
    /// pages. Does nothing outside the owner process.
    ///
    /// ```
    /// static HEAP: shmpool::SharedHeap = shmpool::SharedHeap::new();
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
            Phase::Ready => self.threshold.max(os::page_size()),
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

impl Default for SharedHeap {
    fn default() -> SharedHeap {
        SharedHeap::new()
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
        if holds(ptr) {
            free_block(ptr, layout.size());
        } else {
            // SAFETY: not a heap block, so `System` made it (see the impl's
            // SAFETY note); our caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if holds(ptr) {
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

// The process-wide state.

/// Phases of the process-wide heap.
const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const OFF: u8 = 3;

/// What `start` found.
enum Phase {
    Ready,
    Off,
    Busy,
}

/// The one heap of this process. Everything but the books is written once,
/// by the thread that reserves the heap, before `phase` turns `READY`
/// (Release), and never changes after.
struct State {
    phase: AtomicU8,
    base: AtomicUsize,
    /// The capacity in bytes; 0 until the heap is `READY`. Stored last
    /// (Release) and read first (Acquire) by `holds`, so whoever sees it
    /// non-zero sees `base` too.
    len: AtomicUsize,
    fd: AtomicI32,
    /// The fork generation of the owner process.
    owner: AtomicU64,
    /// log2 of the page size.
    shift: AtomicU32,
    /// The warm bound, in pages.
    keep_warm: AtomicU64,
    /// `(st_dev, st_ino)` of the memfd, to recognise it after a fork.
    file_dev: AtomicU64,
    file_ino: AtomicU64,
    allocations: AtomicU64,
    fallbacks: AtomicU64,
    lock: ForkLock,
    books: UnsafeCell<Books>,
}

// SAFETY: the books are reached only under `lock` (`with_books`), or by the
// one reserving thread before the heap is published; all else is atomics.
unsafe impl Sync for State {}

static STATE: State = State {
    phase: AtomicU8::new(UNINIT),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    fd: AtomicI32::new(-1),
    owner: AtomicU64::new(0),
    shift: AtomicU32::new(12),
    keep_warm: AtomicU64::new(0),
    file_dev: AtomicU64::new(0),
    file_ino: AtomicU64::new(0),
    allocations: AtomicU64::new(0),
    fallbacks: AtomicU64::new(0),
    lock: ForkLock::new(),
    books: UnsafeCell::new(Books::EMPTY),
};

/// Set in a child once it replaced its view of the heap (its descendants
/// inherit the view, and the flag).
static CHILD_VIEW: AtomicBool = AtomicBool::new(false);

/// Runs `f` on the books under the lock.
fn with_books<R>(f: impl FnOnce(&mut Books) -> R) -> R {
    let _guard = STATE.lock.lock();
    // SAFETY: the lock gives this thread sole access to the books, which
    // were written before the heap was published `READY` (our callers run
    // only in the owner, after `start` saw `READY` with Acquire).
    f(unsafe { &mut *STATE.books.get() })
}

/// Reserves the process's heap the first time any `SharedHeap` runs.
fn start(capacity: usize, keep_warm: usize) -> Phase {
    loop {
        // ORDERING: Acquire: pairs with the Release that published the
        // phase, and with it the state `reserve` wrote.
        match STATE.phase.load(Acquire) {
            READY => return Phase::Ready,
            OFF => return Phase::Off,
            BUSY => return Phase::Busy,
            _ => {
                // ORDERING: Relaxed: the winner alone writes the state, and
                // publishes it with the Release below.
                if STATE
                    .phase
                    .compare_exchange(UNINIT, BUSY, Relaxed, Relaxed)
                    .is_ok()
                {
                    let ok = reserve(capacity, keep_warm);
                    // ORDERING: Release: publishes the state to `start`'s
                    // Acquire in other threads.
                    STATE.phase.store(if ok { READY } else { OFF }, Release);
                    return if ok { Phase::Ready } else { Phase::Off };
                }
            }
        }
    }
}

/// The default capacity: the smallest of the physical memory (4 GiB if
/// unknown), the cgroup limit, and a quarter of the address space the
/// `RLIMIT_AS` leaves free beyond what is mapped now.
fn default_capacity(physical: u64, cgroup: Option<u64>, rlimit: Option<u64>, mapped: u64) -> u64 {
    let mut cap = if physical == 0 { 4 << 30 } else { physical };
    if let Some(limit) = cgroup {
        cap = cap.min(limit);
    }
    if let Some(limit) = rlimit {
        cap = cap.min(limit.saturating_sub(mapped) / 4);
    }
    cap
}

/// Makes the heap: the memfd, the tag table, the mapping, the books and the
/// fork handler. Runs once per process, on the thread that won `start`.
/// Returns `false`, leaving nothing behind, when the heap is to be off.
fn reserve(capacity: usize, keep_warm: usize) -> bool {
    let generation = os::fork_generation();
    let page = os::page_size();
    let shift = page.trailing_zeros();
    let wanted = if capacity == DEFAULT_CAPACITY {
        let cap = default_capacity(
            os::physical_memory(),
            sys::cgroup_limit(),
            sys::address_space_limit(),
            os::mapped_bytes().unwrap_or(0),
        );
        if cap < MIN_DEFAULT_CAPACITY {
            return false;
        }
        cap
    } else {
        capacity as u64
    };
    // Whole 2 MiB units, and fewer than u32::MAX pages (the books' unit).
    let most = (u64::from(u32::MAX - 1) << shift) & !(MAP_ALIGN as u64 - 1);
    let Ok(len) = usize::try_from(wanted.min(most) & !(MAP_ALIGN as u64 - 1)) else {
        return false;
    };
    if len == 0 {
        return false;
    }
    let pages = len >> shift;
    let Ok(fd) = sys::memfd(len as u64) else {
        return false;
    };
    let table_len = pages * size_of::<Tag>();
    let Ok(table) = sys::map_private(table_len) else {
        return false;
    };
    let Ok(base) = sys::map_shared(&fd, len, MAP_ALIGN.max(page)) else {
        // SAFETY: the table mapping was made above and is not used.
        unsafe { sys::unmap(table as usize, table_len) };
        return false;
    };
    let (dev, ino) = sys::file_id(fd.as_raw_fd()).unwrap_or((0, 0));
    // SAFETY: a fresh, zero-filled private mapping of `pages` tags that only
    // the books use; `pages < u32::MAX` by `most`.
    let books = unsafe { Books::new(table.cast(), pages as u32, (base >> shift) as u64) };
    // SAFETY: the phase is BUSY: no other thread reads or writes the books
    // until it is READY.
    unsafe { *STATE.books.get() = books };
    let warm = (keep_warm.min(len / 4) >> shift) as u64;
    // ORDERING: Relaxed: published by the Release of `len` and of the
    // phase.
    STATE.keep_warm.store(warm, Relaxed);
    STATE.shift.store(shift, Relaxed);
    STATE.owner.store(generation, Relaxed);
    STATE.file_dev.store(dev, Relaxed);
    STATE.file_ino.store(ino, Relaxed);
    STATE.fd.store(fd.into_raw_fd(), Relaxed);
    STATE.base.store(base, Relaxed);
    // ORDERING: Release: see `State::len`.
    STATE.len.store(len, Release);
    // SAFETY: registers a plain function as a child-side fork handler; it
    // makes only async-signal-safe system calls. glibc keeps the handler
    // list in its own memory (its `malloc`, never Rust's allocator), so
    // this does not recurse into us.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    true
}

/// In a child forked from a process that maps the heap: replaces the
/// shared view with a private, copy-on-write one (design.md, section 14,
/// "Fork rules"). Only the owner's direct children do it; their
/// descendants inherit the view.
extern "C" fn after_fork_in_child() {
    // ORDERING: Relaxed: this process has one thread now.
    if CHILD_VIEW.load(Relaxed) || STATE.len.load(Relaxed) == 0 {
        return;
    }
    // ORDERING: Relaxed: as above.
    CHILD_VIEW.store(true, Relaxed);
    let (base, len, fd) = (base(), capacity(), STATE.fd.load(Relaxed));
    // ORDERING: Relaxed: written before the heap was published; this thread
    // saw it (it was forked from a process that did).
    let ours = (STATE.file_dev.load(Relaxed), STATE.file_ino.load(Relaxed));
    if sys::file_id(fd) == Some(ours) {
        // SAFETY: `base..base + len` is our mapping of all of that memfd
        // (checked by its identity: the program may have closed our
        // descriptor and reused the number), and this freshly forked child
        // has a single thread.
        unsafe { sys::private_view(base, len, fd) };
    } else {
        // SAFETY: our mapping; read-only keeps the owner's pages safe from
        // this child.
        unsafe { sys::protect(base, len, libc::PROT_READ) };
    }
}

/// Whether the heap exists and this process owns it.
#[inline]
fn is_owner() -> bool {
    // ORDERING: Acquire: pairs with the phase's Release, so the owner's
    // generation and the books are visible.
    STATE.phase.load(Acquire) == READY
        // ORDERING: Relaxed: published with the phase.
        && os::fork_generation_registered() == STATE.owner.load(Relaxed)
}

/// Whether `ptr` lies in the heap's range: one subtraction and a compare.
#[inline]
fn holds(ptr: *mut u8) -> bool {
    // ORDERING: Acquire on `len`: see `State::len`. A pointer into the heap
    // exists only after the heap was published, and its holder's view of
    // that publication reaches us through whatever handed us the pointer.
    let len = STATE.len.load(Acquire);
    // ORDERING: Relaxed: ordered by `len`'s Acquire.
    (ptr as usize).wrapping_sub(STATE.base.load(Relaxed)) < len
}

/// Page counts for a request: `(pages, alignment in pages)`, if the books
/// can express them.
fn pages_for(size: usize, align: usize, shift: u32) -> Option<(u32, u32)> {
    let pages = u32::try_from(size.div_ceil(1 << shift)).ok()?;
    let align = u32::try_from((align >> shift).max(1)).ok()?;
    Some((pages, align))
}

/// The address of page `page` of the heap.
fn address(page: u32) -> *mut u8 {
    // ORDERING: Relaxed: fixed once the heap is published, which our
    // callers observed.
    let (base, shift) = (STATE.base.load(Relaxed), STATE.shift.load(Relaxed));
    (base + ((page as usize) << shift)) as *mut u8
}

/// The books' view of the heap block at `ptr` of `size` bytes:
/// `(first page, pages)`. Aborts for a pointer that is not on a page
/// boundary: no heap block starts there.
fn block_of(ptr: *mut u8, size: usize) -> (u32, u32) {
    // ORDERING: Relaxed: as in `address`.
    let (base, shift) = (STATE.base.load(Relaxed), STATE.shift.load(Relaxed));
    let off = ptr as usize - base;
    let pages = size.div_ceil(1 << shift);
    match (u32::try_from(off >> shift), u32::try_from(pages)) {
        (Ok(start), Ok(pages)) if off & ((1 << shift) - 1) == 0 => (start, pages),
        _ => not_a_block(),
    }
}

#[cold]
fn not_a_block() -> ! {
    sys::fatal(
        "shmpool: SharedHeap: a block the heap did not hand out was freed or resized \
         (a double free, a wrong layout, or a wild pointer); aborting\n",
    )
}

/// The memfd's descriptor.
fn fd() -> RawFd {
    // ORDERING: Relaxed: as in `address`.
    STATE.fd.load(Relaxed)
}

/// Set once `MADV_POPULATE_WRITE` is refused outright (a kernel before
/// 5.14, a seccomp filter): later reservations go straight to `fallocate`.
static POPULATE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Allocates the file's pages under the block's cold parts, so that
/// touching them can never raise `SIGBUS`; `false` if the kernel refused
/// (nothing of a failed reservation stays allocated).
///
/// Faulting them in through the mapping (`MADV_POPULATE_WRITE`) allocates
/// the file's pages just as `fallocate` does, and maps them too: measured
/// here, 64 MiB populated and then filled took 60-170 ms, against 100-196
/// ms reserved with `fallocate` and then filled page fault by page fault
/// (and 75-146 ms for fresh anonymous memory). It also runs beside other
/// threads' reservations, where `fallocate` holds the file's lock. When
/// populating fails, the pages it got are punched out again and
/// `fallocate` decides, as in the pool's arena (`Region::reserve_arena`).
fn reserve_cold(grant: &Grant) -> bool {
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    grant.cold.iter().filter(|c| c.pages > 0).all(|&c| {
        let (off, len) = (u64::from(c.start) << shift, u64::from(c.pages) << shift);
        #[cfg(test)]
        if tests::refuse_now() {
            return false;
        }
        // ORDERING: Relaxed: a hint; any value is correct.
        if !POPULATE_REFUSED.load(Relaxed) {
            // SAFETY: the span is a block this thread was just given, in the
            // owner's shared, writable mapping of the heap.
            match unsafe { os::populate(address(c.start), len as usize) } {
                Ok(()) => return true,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)) => {
                    // ORDERING: Relaxed: a hint.
                    POPULATE_REFUSED.store(true, Relaxed);
                }
                Err(_) => {}
            }
            punch(c);
        }
        // SAFETY: the memfd stays open for the life of the process.
        unsafe { sys::reserve(fd(), off, len) }.is_ok()
    })
}

/// Gives back the pages of `span` (a hole in the file).
fn punch(span: Span) {
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let (off, len) = (u64::from(span.start) << shift, u64::from(span.pages) << shift);
    // SAFETY: the memfd stays open for the life of the process.
    unsafe { sys::punch(fd(), off, len) };
}

/// A heap block for `layout`, in the owner; `None` in any other process,
/// or when the heap cannot serve it (counted as a fallback).
fn alloc_block(layout: Layout, zeroed: bool) -> Option<*mut u8> {
    if !is_owner() {
        return None;
    }
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let grant = pages_for(layout.size(), layout.align(), shift)
        .and_then(|(pages, align)| with_books(|b| b.alloc(pages, align)));
    let Some(grant) = grant else {
        // ORDERING: Relaxed: statistics.
        STATE.fallbacks.fetch_add(1, Relaxed);
        return None;
    };
    // The block is marked in use: its pages are ours to reserve without
    // the lock.
    if !reserve_cold(&grant) {
        // The pages of one cold part may have been reserved: punch the whole
        // block (its warm part too) and return it cold.
        punch(grant.block);
        if with_books(|b| b.free_cold(grant.block.start, grant.block.pages)).is_err() {
            not_a_block();
        }
        // ORDERING: Relaxed: statistics.
        STATE.fallbacks.fetch_add(1, Relaxed);
        return None;
    }
    // ORDERING: Relaxed: statistics.
    STATE.allocations.fetch_add(1, Relaxed);
    let p = address(grant.block.start);
    if zeroed && grant.warm.pages > 0 {
        // Cold pages are fresh from the kernel, zero already; warm ones hold
        // old bytes.
        let from = ((grant.warm.start - grant.block.start) as usize) << shift;
        let to = ((grant.warm.end() - grant.block.start) as usize) << shift;
        let to = to.min(layout.size());
        if to > from {
            // SAFETY: `from..to` lies inside the block just handed out.
            unsafe { p.add(from).write_bytes(0, to - from) };
        }
    }
    Some(p)
}

/// Frees the heap block at `ptr` (in the owner; ignored elsewhere) and
/// gives back warm pages beyond the bound.
fn free_block(ptr: *mut u8, size: usize) {
    if !is_owner() {
        return;
    }
    let (start, pages) = block_of(ptr, size);
    // ORDERING: Relaxed: fixed once published.
    let bound = STATE.keep_warm.load(Relaxed);
    let mut pieces = [Span::EMPTY; PIECES];
    let taken = with_books(|b| {
        b.free(start, pages)
            .map(|()| b.take_excess(bound, &mut pieces))
    });
    match taken {
        Err(_) => not_a_block(),
        Ok(0) => {}
        Ok(n) => {
            settle(&pieces[..n]);
            trim_to(bound);
        }
    }
}

/// Punches out pieces in transit and returns them to the books, cold;
/// returns their bytes.
fn settle(pieces: &[Span]) -> u64 {
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let mut bytes = 0;
    for &piece in pieces {
        punch(piece);
        if with_books(|b| b.settle(piece)).is_err() {
            not_a_block();
        }
        bytes += u64::from(piece.pages) << shift;
    }
    bytes
}

/// Gives back warm pages until at most `bound` pages are warm; returns the
/// bytes given back.
fn trim_to(bound: u64) -> u64 {
    let mut bytes = 0;
    loop {
        let mut pieces = [Span::EMPTY; PIECES];
        let n = with_books(|b| b.take_excess(bound, &mut pieces));
        if n == 0 {
            return bytes;
        }
        bytes += settle(&pieces[..n]);
    }
}

/// Resizes the heap block at `ptr` in place (in the owner): shrinking
/// always works; growing needs free pages right after it. Returns whether
/// it did.
fn resize_in_place(ptr: *mut u8, old_size: usize, new_size: usize) -> bool {
    let (start, old) = block_of(ptr, old_size);
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let Some((new, _)) = pages_for(new_size, 1, shift) else {
        return false;
    };
    if new == old {
        return true;
    }
    if new < old {
        if with_books(|b| b.shrink(start, old, new, false)).is_err() {
            not_a_block();
        }
        // ORDERING: Relaxed: fixed once published.
        trim_to(STATE.keep_warm.load(Relaxed));
        return true;
    }
    match with_books(|b| b.grow(start, old, new)) {
        Err(_) => not_a_block(),
        Ok(None) => false,
        Ok(Some(grant)) => {
            if reserve_cold(&grant) {
                return true;
            }
            punch(grant.block);
            if with_books(|b| b.shrink(start, new, old, true)).is_err() {
                not_a_block();
            }
            false
        }
    }
}

// The interface for the pool (module docs, "Interface for the pool").

/// Whether the heap exists and this process owns it.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) fn active() -> bool {
    is_owner()
}

/// The start of the heap's mapping; 0 without a heap.
pub(crate) fn base() -> usize {
    if capacity() == 0 {
        0
    } else {
        // ORDERING: Relaxed: ordered by `capacity`'s Acquire.
        STATE.base.load(Relaxed)
    }
}

/// The heap's capacity in bytes; 0 without a heap.
pub(crate) fn capacity() -> usize {
    // ORDERING: Acquire: see `State::len`.
    STATE.len.load(Acquire)
}

/// The heap's memfd, to map a second view of it; `None` without a heap.
/// Open in the owner for the life of the process, and in children until
/// they close it.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) fn memfd() -> Option<RawFd> {
    (capacity() != 0).then(fd)
}

/// The fork generation of the heap's owner; `None` without a heap.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) fn owner_generation() -> Option<u64> {
    // ORDERING: Relaxed: ordered by `capacity`'s Acquire.
    (capacity() != 0).then(|| STATE.owner.load(Relaxed))
}

/// `Some(offset)` when `ptr..ptr + len` lies wholly in the heap's address
/// range. Compares addresses only; never dereferences.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) fn contains(ptr: *const u8, len: usize) -> Option<usize> {
    let cap = capacity();
    let off = (ptr as usize).wrapping_sub(base());
    (off < cap && len <= cap - off).then_some(off)
}

/// Whether this process replaced its view of the heap with a private one
/// (it descends from the owner).
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) fn in_child_view() -> bool {
    // ORDERING: Relaxed: written in this process before it had a second
    // thread, or inherited.
    CHILD_VIEW.load(Relaxed)
}

/// Makes this process's view of the heap read-only (for a worker: a task
/// that writes heap memory then faults instead of writing a private copy).
/// Returns whether it worked; does nothing in the owner.
///
/// # Safety
/// No live reference in this process relies on writing heap memory.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) unsafe fn protect_read_only() -> bool {
    if is_owner() || capacity() == 0 {
        return false;
    }
    // SAFETY: our view of the heap; the caller's contract.
    unsafe { sys::protect(base(), capacity(), libc::PROT_READ) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// Reservations to refuse, for the tests of the refusal path.
    static REFUSE: AtomicU32 = AtomicU32::new(0);

    /// Whether to refuse this reservation (as `ENOMEM` would).
    pub(super) fn refuse_now() -> bool {
        // ORDERING: Relaxed: a test counter.
        REFUSE
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The heap of this test process (the first `SharedHeap` used in it
    /// decides for all: only these tests use one), one test at a time.
    static HEAP: SharedHeap = SharedHeap::new().capacity(64 << 20).keep_warm(4 << 20);
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
            REFUSE.store(1, Relaxed);
            let p = h.alloc(layout(1 << 20));
            assert!(!p.is_null() && contains(p, 1).is_none());
            let s = h.stats();
            assert_eq!(s.fallbacks - before.fallbacks, 1);
            assert_eq!((s.in_use, s.warm), (before.in_use, 0), "the block went back");
            p.write_bytes(1, 1 << 20);
            h.dealloc(p, layout(1 << 20));

            // A block in the heap whose in-place growth is refused moves.
            let q = h.alloc(layout(256 << 10));
            assert!(contains(q, 1).is_some());
            q.write_bytes(2, 256 << 10);
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
    fn the_default_capacity_takes_the_smallest_limit() {
        let gib = 1u64 << 30;
        assert_eq!(default_capacity(24 * gib, None, None, 0), 24 * gib);
        assert_eq!(default_capacity(0, None, None, 0), 4 * gib, "unknown memory");
        assert_eq!(default_capacity(24 * gib, Some(2 * gib), None, 0), 2 * gib);
        assert_eq!(
            default_capacity(24 * gib, None, Some(8 * gib), 4 * gib),
            gib,
            "a quarter of what RLIMIT_AS leaves"
        );
        assert_eq!(default_capacity(24 * gib, None, Some(gib), 2 * gib), 0);
    }

    #[test]
    fn requests_in_pages() {
        assert_eq!(pages_for(1, 8, 12), Some((1, 1)));
        assert_eq!(pages_for(4097, 8192, 12), Some((2, 2)));
        assert_eq!(pages_for(64 << 10, 2 << 20, 12), Some((16, 512)));
        assert_eq!(pages_for(usize::MAX, 1, 12), None);
    }

    #[test]
    fn configuration_is_const() {
        const H: SharedHeap = SharedHeap::new().threshold(1).capacity(0).keep_warm(5);
        assert_eq!((H.threshold, H.capacity, H.keep_warm), (1, 0, 5));
        assert_eq!(
            format!("{:?}", SharedHeap::new()),
            "SharedHeap { threshold: 65536, capacity: \"default\", keep_warm: 268435456 }"
        );
    }
}
