//! What a worker does with the shared heap (`SharedHeap`): the read-only
//! view its template gives it, and the fault handler that turns a task's
//! write into that view into a typed error instead of an unexplained
//! `SIGSEGV`.
//!
//! Workers see the owner's heap live, at the owner's addresses, read-only
//! (design.md, "The shared heap and the pool"). A task that writes it (through
//! a `static` that points into the heap, say) faults. The handler notes in
//! the worker's record that the fault was a write into the heap, puts back
//! the disposition it replaced (the standard library's stack-overflow
//! handler, or the default) and returns: the write faults again, and the
//! worker dies of `SIGSEGV` as before. The supervisor, seeing the mark,
//! fails the job with `Error::HeapWrite` and does not retry the range (it
//! would write again). The engine itself writes job outputs that live in
//! the heap through the heap's writable alias, never through this view.
//!
//! The alias is inaccessible too, except for one *window*: the pages of the
//! output of the job whose ranges this worker is running ([`set`], before
//! the first range of each job it visits, so that no task runs with another
//! job's output writable). A stray write anywhere else in the alias (a
//! kernel that runs past the end of its output) faults and is reported like
//! a write into the view.
//!
//! Uses `unsafe` (denied at the crate root): the `SIGSEGV` hook marks the
//! worker's record through a raw pointer, and the template narrows the heap's
//! protection.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize};

use crate::heap;
use crate::os;
use crate::shm::atomic::AtomicU32;
use crate::shm::states::{EXIT_BUG, HEAP_WRITE_MARK};

/// The record word the handler marks (the worker's `oom` word).
static MARK: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// The heap's range in this process, for the handler.
static HEAP_BASE: AtomicUsize = AtomicUsize::new(0);
static HEAP_LEN: AtomicUsize = AtomicUsize::new(0);
/// The writable alias's start (its length is `HEAP_LEN`), 0 if none.
static ALIAS_BASE: AtomicUsize = AtomicUsize::new(0);
/// The open window of the alias: page-aligned start and length (0: none).
/// Read and written by this single-threaded worker only.
static WINDOW_START: AtomicUsize = AtomicUsize::new(0);
static WINDOW_LEN: AtomicUsize = AtomicUsize::new(0);
/// The `errno` of the last window that could not be opened (0: none), for
/// the error record of the range that asked (`take_window_error`).
static WINDOW_ERROR: AtomicI32 = AtomicI32::new(0);

/// In the template, before it forks any worker: makes its view of the
/// shared heap read-only (a freshly forked child of the owner has a private,
/// writable one). Workers inherit it. Does nothing without a heap.
pub(crate) fn protect_view() {
    // SAFETY: the template holds no reference into the heap that it writes
    // (it never runs user code); its workers write only through the alias.
    unsafe { heap::protect_read_only() };
}

/// In a worker, before its first task: installs the handler that marks
/// `mark` when a task writes the read-only heap. Does nothing without a
/// heap.
pub(crate) fn install(mark: &AtomicU32) {
    let (base, len) = (heap::base(), heap::capacity());
    if len == 0 {
        return;
    }
    // ORDERING: Relaxed: read by the handler, in this thread, after the
    // `sigaction` below.
    MARK.store(std::ptr::from_ref(mark).cast_mut(), Relaxed);
    // ORDERING: Relaxed: as above.
    HEAP_BASE.store(base, Relaxed);
    // ORDERING: Relaxed: as above.
    HEAP_LEN.store(len, Relaxed);
    // ORDERING: Relaxed: as above.
    ALIAS_BASE.store(heap::writable_alias().unwrap_or(0), Relaxed);
    // If it cannot be installed, a write dies as a plain SIGSEGV.
    let _ = os::on_protection_fault(on_fault);
}

/// Makes `want` (an output inside the heap's writable alias: address and
/// length) the alias's one writable window, rounded out to whole pages:
/// closes the window open before unless it is the same, and opens the new
/// one. `None` closes it. Called by a worker before the first range of each
/// job it visits, so no task runs with another job's output writable. A job
/// that writes the same output as the one before costs no system call.
///
/// If the old window cannot be closed, the worker exits (it is replaced):
/// it must not run this job's tasks with that one open. If the new one
/// cannot be opened, it stays closed and the failure is kept for the range
/// that finds it closed (`take_window_error`).
pub(crate) fn set(want: Option<(usize, usize)>) {
    // ORDERING: Relaxed: this worker's own state, read and written by its
    // one thread (see `WINDOW_START`).
    WINDOW_ERROR.store(0, Relaxed);
    let page = os::page_size();
    let (start, len) = match want {
        Some((addr, len)) => {
            let start = addr & !(page - 1);
            (
                start,
                addr.saturating_add(len).next_multiple_of(page) - start,
            )
        }
        None => (0, 0),
    };
    // ORDERING: Relaxed: as above.
    let (open_start, open_len) = (WINDOW_START.load(Relaxed), WINDOW_LEN.load(Relaxed));
    if (open_start, open_len) == (start, len) {
        return;
    }
    if open_len != 0 {
        // SAFETY: the window a previous call opened, in the alias; no slice
        // into it outlives the range that wrote it, which has returned.
        if unsafe { os::open_window(open_start, open_len, false) }.is_err() {
            os::write_stderr(b"shmpool: a worker could not close its window on the shared heap\n");
            os::exit_now(EXIT_BUG);
        }
        // ORDERING: Relaxed: as above.
        WINDOW_LEN.store(0, Relaxed);
        // ORDERING: Relaxed: as above.
        WINDOW_START.store(0, Relaxed);
    }
    if len == 0 {
        return;
    }
    // SAFETY: `start..start + len` is page-aligned and lies in the alias
    // (`JobArgs::window_of` checked the output against the heap's length,
    // a multiple of the page size), a shared mapping of the heap's memfd,
    // which is open for writing.
    match unsafe { os::open_window(start, len, true) } {
        Ok(()) => {
            // ORDERING: Relaxed: as above.
            WINDOW_START.store(start, Relaxed);
            // ORDERING: Relaxed: as above.
            WINDOW_LEN.store(len, Relaxed);
        }
        // ORDERING: Relaxed: as above.
        Err(e) => WINDOW_ERROR.store(e.raw_os_error().unwrap_or(-1), Relaxed),
    }
}

/// Whether `addr..addr + len` lies in the open window of the alias.
pub(crate) fn covers(addr: usize, len: usize) -> bool {
    // ORDERING: Relaxed: as in `set`.
    let (start, open) = (WINDOW_START.load(Relaxed), WINDOW_LEN.load(Relaxed));
    open != 0 && addr >= start && addr.saturating_add(len) <= start + open
}

/// The error of the last window [`set`] could not open, once: the range
/// that found the window closed is reported as this error rather than as a
/// bad descriptor.
pub(crate) fn take_window_error() -> Option<io::Error> {
    // ORDERING: Relaxed: as in `set`.
    match WINDOW_ERROR.swap(0, Relaxed) {
        0 => None,
        -1 => Some(io::Error::other("mprotect failed")),
        errno => Some(io::Error::from_raw_os_error(errno)),
    }
}

/// What the `SIGSEGV` handler calls for an access a protection refused
/// (`os::on_protection_fault`): marks a write into the heap's read-only
/// view. The handler then puts back the previous disposition and returns,
/// so the access faults again and the previous handler (or the default
/// action) ends the worker. Async-signal-safe: atomics only.
fn on_fault(addr: usize) {
    // ORDERING: Relaxed: stored by `install` in this thread.
    let (base, len) = (HEAP_BASE.load(Relaxed), HEAP_LEN.load(Relaxed));
    // ORDERING: Relaxed: as above.
    let alias = ALIAS_BASE.load(Relaxed);
    let in_alias = alias != 0 && addr.wrapping_sub(alias) < len;
    if addr.wrapping_sub(base) < len || in_alias {
        // ORDERING: Relaxed: as above.
        let mark = MARK.load(Relaxed);
        if !mark.is_null() {
            // SAFETY: the worker's record, mapped for the life of the
            // process; an atomic store is async-signal-safe. The supervisor
            // reads it after the process is gone.
            unsafe { (*mark).store(HEAP_WRITE_MARK, Relaxed) };
        }
    }
}
