//! The process's one heap: its state, reservation, the fork handler, and
//! the block operations that combine the books with system calls.
//!
//! Everything here but the books is written once, by the thread that
//! reserves the heap, before it is published; the books are reached only
//! under the lock, and only in the owner process.

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

use super::bins::{Span, Tag};
use super::books::{Books, Grant};
use super::lock::ForkLock;
use super::{DEFAULT_CAPACITY, cgroup};
use crate::os;

/// A default capacity below this leaves the heap off.
const MIN_DEFAULT_CAPACITY: u64 = 32 << 20;
/// The mapping's alignment (a huge page), and the unit the capacity is
/// rounded down to.
const MAP_ALIGN: usize = 2 << 20;
/// Warm-bound pieces punched per round of the lock.
const PIECES: usize = 8;

/// Phases of the process-wide heap.
const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const OFF: u8 = 3;

/// What `start` found.
pub(super) enum Phase {
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
pub(super) fn with_books<R>(f: impl FnOnce(&mut Books) -> R) -> R {
    let _guard = STATE.lock.lock();
    // SAFETY: the lock gives this thread sole access to the books, which
    // were written before the heap was published `READY` (our callers run
    // only in the owner, after `start` saw `READY` with Acquire).
    f(unsafe { &mut *STATE.books.get() })
}

/// Reserves the process's heap the first time any `SharedHeap` runs.
pub(super) fn start(capacity: usize, keep_warm: usize) -> Phase {
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
/// unknown), the cgroup limit, the file size limit (`RLIMIT_FSIZE`: the
/// memfd may be no larger), and a quarter of the address space the
/// `RLIMIT_AS` leaves free beyond what is mapped now.
fn default_capacity(
    physical: u64,
    cgroup: Option<u64>,
    file: Option<u64>,
    rlimit: Option<u64>,
    mapped: u64,
) -> u64 {
    let mut cap = if physical == 0 { 4 << 30 } else { physical };
    for limit in [cgroup, file].into_iter().flatten() {
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
            cgroup::cgroup_limit(),
            os::file_size_limit(),
            os::address_space_limit(),
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
    // `memfd:heap.shmpool` in `/proc/<pid>/maps` (not `shmpool...`: tools
    // that count a pool's regions look for that prefix).
    let Ok(fd) = os::memfd(c"heap.shmpool", len as u64) else {
        return false;
    };
    let table_len = pages * size_of::<Tag>();
    let Ok(table) = os::map_private(table_len) else {
        return false;
    };
    let Ok(base) = os::map_shared_aligned(std::os::fd::AsFd::as_fd(&fd), len, MAP_ALIGN.max(page))
    else {
        // SAFETY: the table mapping was made above and is not used.
        unsafe { os::munmap(table as usize, table_len) };
        return false;
    };
    let (dev, ino) = os::file_id(&fd).unwrap_or((0, 0));
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
    // The handler makes only async-signal-safe system calls; registering
    // it does not recurse into us (see `os::at_fork_in_child`).
    os::at_fork_in_child(after_fork_in_child);
    true
}

/// In a child forked from a process that maps the heap: replaces the
/// shared view with a private, copy-on-write one (design.md, section 15,
/// "Fork rules"). Only the owner's direct children do it; their
/// descendants inherit the view.
extern "C" fn after_fork_in_child() {
    // ORDERING: Relaxed: this process has one thread now.
    if CHILD_VIEW.load(Relaxed) || STATE.len.load(Relaxed) == 0 {
        return;
    }
    // ORDERING: Relaxed: as above.
    CHILD_VIEW.store(true, Relaxed);
    let (base, len, fd) = (base(), capacity(), fd());
    // ORDERING: Relaxed: written before the heap was published; this thread
    // saw it (it was forked from a process that did).
    let ours = (STATE.file_dev.load(Relaxed), STATE.file_ino.load(Relaxed));
    if os::file_id(fd) == Some(ours) {
        // SAFETY: `base..base + len` is our mapping of all of that memfd
        // (checked by its identity: the program may have closed our
        // descriptor and reused the number), and this freshly forked child
        // has a single thread.
        unsafe { os::private_view(base, len, fd) };
    } else {
        // SAFETY: our mapping; read-only keeps the owner's pages safe from
        // this child.
        unsafe { os::protect(base, len, false) };
    }
}

/// Whether the heap exists and this process owns it.
#[inline]
pub(super) fn is_owner() -> bool {
    // ORDERING: Acquire: pairs with the phase's Release, so the owner's
    // generation and the books are visible.
    STATE.phase.load(Acquire) == READY
        // ORDERING: Relaxed: published with the phase.
        && os::fork_generation_registered() == STATE.owner.load(Relaxed)
}

/// Whether `ptr` lies in the heap's range: one subtraction and a compare.
#[inline]
pub(super) fn holds(ptr: *mut u8) -> bool {
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
    cgroup::fatal(
        "shmpool: SharedHeap: a block the heap did not hand out was freed or resized \
         (a double free, a wrong layout, or a wild pointer); aborting\n",
    )
}

/// The memfd's descriptor.
fn fd() -> BorrowedFd<'static> {
    // ORDERING: Relaxed: as in `address`.
    let fd = STATE.fd.load(Relaxed);
    // SAFETY: the heap's memfd, published before the heap was, is never
    // closed (the heap lives as long as the process). A program that
    // closes the number behind our back breaks the heap, as it would break
    // any `File` it closed that way: mapping a new view checks the file's
    // identity first (`os::file_id`); reserving or punching pages would act
    // on whatever file the number then names.
    unsafe { BorrowedFd::borrow_raw(fd) }
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
        if refuse_now() {
            return false;
        }
        // ORDERING: Relaxed: a hint; any value is correct.
        if !POPULATE_REFUSED.load(Relaxed) {
            // SAFETY: the span is a block this thread was just given, in the
            // owner's shared, writable mapping of the heap.
            match unsafe { os::populate(address(c.start), len as usize) } {
                Ok(()) => return true,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(os::errno::EINVAL | os::errno::ENOSYS | os::errno::EPERM)
                    ) =>
                {
                    // ORDERING: Relaxed: a hint.
                    POPULATE_REFUSED.store(true, Relaxed);
                }
                Err(_) => {}
            }
            punch(c);
        }
        os::reserve(fd(), off, len).is_ok()
    })
}

/// Set once a punch was refused: from then on, a cold span may still have
/// pages holding old bytes, so `alloc_block` zeroes cold pages too.
static PUNCH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Gives back the pages of `span` (a hole in the file), or, if the kernel
/// refuses, records that cold pages may no longer read as zeros. Returns
/// whether it did.
fn punch(span: Span) -> bool {
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let (off, len) = (
        u64::from(span.start) << shift,
        u64::from(span.pages) << shift,
    );
    if !os::punch(fd(), off, len) {
        // ORDERING: Relaxed: every caller then returns the span to the
        // books as cold under the lock, and a thread that is handed its
        // pages takes that lock after: the lock orders this store before
        // its load in `alloc_block`.
        PUNCH_REFUSED.store(true, Relaxed);
        return false;
    }
    true
}

/// A heap block for `layout`, in the owner; `None` in any other process,
/// or when the heap cannot serve it (counted as a fallback).
pub(super) fn alloc_block(layout: Layout, zeroed: bool) -> Option<*mut u8> {
    if !is_owner() {
        return None;
    }
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let grant = pages_for(layout.size(), layout.align(), shift).and_then(|(pages, align)| {
        match with_books(|b| b.alloc(pages, align).ok_or_else(|| b.fits_once_cold(pages))) {
            Ok(grant) => Some(grant),
            // Enough free pages, in warm and cold pieces (which never
            // merge): given back, the warm ones merge with their cold
            // neighbours, as after `trim`, and the search runs once more.
            Err(true) => {
                trim_to(0);
                with_books(|b| b.alloc(pages, align))
            }
            Err(false) => None,
        }
    });
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
    if zeroed {
        // Warm pages hold old bytes. Cold ones are holes in the file,
        // fresh from the kernel and zero, unless a punch was ever refused.
        // ORDERING: Relaxed: see `punch`.
        let cold: &[Span] = if PUNCH_REFUSED.load(Relaxed) {
            &grant.cold
        } else {
            &[]
        };
        for part in std::iter::once(&grant.warm).chain(cold) {
            if part.pages == 0 {
                continue;
            }
            let from = ((part.start - grant.block.start) as usize) << shift;
            let to = ((part.end() - grant.block.start) as usize) << shift;
            let to = to.min(layout.size());
            if to > from {
                // SAFETY: `from..to` lies inside the block just handed out,
                // whose pages are all reserved.
                unsafe { p.add(from).write_bytes(0, to - from) };
            }
        }
    }
    Some(p)
}

/// Frees the heap block at `ptr` (in the owner; ignored elsewhere) and
/// gives back warm pages beyond the bound.
pub(super) fn free_block(ptr: *mut u8, size: usize) {
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
/// returns the bytes given back (none of a piece the kernel refused to
/// punch).
fn settle(pieces: &[Span]) -> u64 {
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    let mut bytes = 0;
    for &piece in pieces {
        let punched = punch(piece);
        if with_books(|b| b.settle(piece)).is_err() {
            not_a_block();
        }
        if punched {
            bytes += u64::from(piece.pages) << shift;
        }
    }
    bytes
}

/// Gives back warm pages until at most `bound` pages are warm; returns the
/// bytes given back.
pub(super) fn trim_to(bound: u64) -> u64 {
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
pub(super) fn resize_in_place(ptr: *mut u8, old_size: usize, new_size: usize) -> bool {
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
pub(crate) fn memfd() -> Option<BorrowedFd<'static>> {
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

/// In a child of the owner: maps the heap shared again, read-only or
/// writable, in place of the private view the fork handler gave it (for a
/// pool's template, right after its fork and before it closes the memfd;
/// the workers it forks then inherit that view). Returns whether it worked;
/// does nothing in the owner, or if the memfd's descriptor no longer names
/// the heap's file.
///
/// # Safety
/// No live reference in this process relies on the private copies of heap
/// pages it wrote (they are dropped), or, if `!writable`, on writing heap
/// memory.
#[allow(dead_code, reason = "the pool's integration with the heap uses it")]
pub(crate) unsafe fn share_view(writable: bool) -> bool {
    if is_owner() || capacity() == 0 {
        return false;
    }
    let fd = fd();
    // ORDERING: Relaxed: written before the heap was published.
    let ours = (STATE.file_dev.load(Relaxed), STATE.file_ino.load(Relaxed));
    if os::file_id(fd) != Some(ours) {
        return false;
    }
    // SAFETY: our view of all of that file (checked by its identity); the
    // caller's contract.
    unsafe { os::shared_view(base(), capacity(), fd, writable) }
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
    unsafe { os::protect(base(), capacity(), false) }
}

/// The start of a second shared mapping of the whole heap, made
/// inaccessible; 0 until made, or if it could not be. Made once, in the
/// owner, by the first pool built while the heap is active
/// (`writable_alias`), and inherited by every pool's template and workers:
/// their view of the heap at its own address is read-only (a task cannot
/// write the owner's data), and a worker writes a job's output that lives
/// in the heap through this mapping instead, at `alias + offset`, after
/// making the output's pages (and only those) writable for the job
/// (`worker::heap_view::set`).
static ALIAS: AtomicUsize = AtomicUsize::new(0);
/// Set once the owner tried to make the alias.
static ALIAS_TRIED: AtomicBool = AtomicBool::new(false);

/// The writable alias of the heap (see `ALIAS`), made on the first call in
/// the owner; `None` without a heap, or if the mapping was refused (then a
/// job's output in the heap is staged like any other slice's). In a child
/// it only reads what it inherited.
pub(crate) fn writable_alias() -> Option<usize> {
    // ORDERING: Acquire: pairs with the Release below.
    let alias = ALIAS.load(Acquire);
    if alias != 0 {
        return Some(alias);
    }
    if !is_owner() {
        return None;
    }
    // ORDERING: Relaxed: only decides who maps it; the mapping itself is
    // published by `ALIAS`. A racing thread answers `None` this once (its
    // job is staged).
    if ALIAS_TRIED.swap(true, Relaxed) {
        // ORDERING: Acquire, as above.
        let alias = ALIAS.load(Acquire);
        return (alias != 0).then_some(alias);
    }
    // SAFETY: the heap's memfd is never shrunk.
    let got = unsafe { os::map_alias(fd(), capacity()) }.ok()?;
    // ORDERING: Release: publishes the mapping to the Acquire above.
    ALIAS.store(got, Release);
    Some(got)
}

/// What the books hold, for `SharedHeap::stats` (in the owner).
pub(super) struct Snapshot {
    pub(super) in_use: usize,
    pub(super) warm: usize,
    pub(super) allocations: u64,
    pub(super) fallbacks: u64,
}

/// The books' counters now.
pub(super) fn snapshot() -> Snapshot {
    let (used, warm) = with_books(|b| (b.used_pages(), b.warm_pages() + b.transit_pages()));
    // ORDERING: Relaxed: as in `address`.
    let shift = STATE.shift.load(Relaxed);
    Snapshot {
        in_use: (used << shift) as usize,
        warm: (warm << shift) as usize,
        // ORDERING: Relaxed: statistics.
        allocations: STATE.allocations.load(Relaxed),
        // ORDERING: Relaxed: statistics.
        fallbacks: STATE.fallbacks.load(Relaxed),
    }
}

/// Reservations to refuse, for the tests of the refusal path.
#[cfg(test)]
pub(super) static REFUSE: AtomicU32 = AtomicU32::new(0);

/// Whether to refuse this reservation (as `ENOMEM` would).
#[cfg(test)]
fn refuse_now() -> bool {
    // ORDERING: Relaxed: a test counter.
    REFUSE
        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_capacity_takes_the_smallest_limit() {
        let gib = 1u64 << 30;
        assert_eq!(default_capacity(24 * gib, None, None, None, 0), 24 * gib);
        assert_eq!(
            default_capacity(0, None, None, None, 0),
            4 * gib,
            "unknown memory"
        );
        assert_eq!(
            default_capacity(24 * gib, Some(2 * gib), None, None, 0),
            2 * gib
        );
        assert_eq!(
            default_capacity(24 * gib, Some(2 * gib), Some(gib), None, 0),
            gib,
            "RLIMIT_FSIZE"
        );
        assert_eq!(
            default_capacity(24 * gib, None, None, Some(8 * gib), 4 * gib),
            gib,
            "a quarter of what RLIMIT_AS leaves"
        );
        assert_eq!(
            default_capacity(24 * gib, None, None, Some(gib), 2 * gib),
            0
        );
    }

    #[test]
    fn requests_in_pages() {
        assert_eq!(pages_for(1, 8, 12), Some((1, 1)));
        assert_eq!(pages_for(4097, 8192, 12), Some((2, 2)));
        assert_eq!(pages_for(64 << 10, 2 << 20, 12), Some((16, 512)));
        assert_eq!(pages_for(usize::MAX, 1, 12), None);
    }
}
