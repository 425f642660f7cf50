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
//! Uses `unsafe` (denied at the crate root): the `SIGSEGV` hook marks the
//! worker's record through a raw pointer, and the template narrows the heap's
//! protection.

#![allow(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicPtr, AtomicUsize};

use crate::heap;
use crate::os;
use crate::shm::atomic::AtomicU32;
use crate::shm::states::HEAP_WRITE_MARK;

/// The record word the handler marks (the worker's `oom` word).
static MARK: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// The heap's range in this process, for the handler.
static HEAP_BASE: AtomicUsize = AtomicUsize::new(0);
static HEAP_LEN: AtomicUsize = AtomicUsize::new(0);

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
    // If it cannot be installed, a write dies as a plain SIGSEGV.
    let _ = os::on_protection_fault(on_fault);
}

/// What the `SIGSEGV` handler calls for an access a protection refused
/// (`os::on_protection_fault`): marks a write into the heap's read-only
/// view. The handler then puts back the previous disposition and returns,
/// so the access faults again and the previous handler (or the default
/// action) ends the worker. Async-signal-safe: atomics only.
fn on_fault(addr: usize) {
    // ORDERING: Relaxed: stored by `install` in this thread.
    let (base, len) = (HEAP_BASE.load(Relaxed), HEAP_LEN.load(Relaxed));
    if addr.wrapping_sub(base) < len {
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
