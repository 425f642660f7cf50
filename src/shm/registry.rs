//! The live regions of this process, and the lock that orders mapping them
//! against forking a template.
//!
//! A freshly forked worker unmaps every region it inherited except its own
//! pool's (`unmap_others`): otherwise dropping pool B would leave B's memory
//! pinned by pool A's workers. The worker reads the registry right after
//! `fork`, where taking a lock another thread held at that moment would block
//! forever, so the entries are atomics in fixed chunks that are only ever
//! appended (a chunk, once linked, is never freed), and a reader needs no
//! lock.
//!
//! Mapping and registering a region, unregistering and unmapping it, and
//! forking a template happen under [`lock`], so a template never inherits a
//! mapping without its entry. That lock is *fork-aware*: its word names the
//! fork generation (`os::fork_generation`) of the process whose thread holds
//! it, so a forked child (a process the user forked from a pool's owner)
//! treats a word held by another generation as free: the thread that held
//! it does not exist in the child. A `std::sync::Mutex` would stay locked
//! there forever (a task that dropped an orphaned `ShmVec` hung on it).
//!
//! Uses `unsafe` (denied at the crate root): a worker unmaps the other pools'
//! regions it inherited (`os::munmap`).

#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use std::time::Duration;

use crate::os;

/// Entries per chunk.
const CHUNK: usize = 64;

/// One registered region: its address range while `taken`.
pub(crate) struct Entry {
    base: AtomicUsize,
    len: AtomicUsize,
    /// 0 free, 1 taken.
    taken: AtomicU32,
}

struct Chunk {
    entries: [Entry; CHUNK],
    /// The next chunk, once the entries of this one were all taken at once;
    /// never unlinked.
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            entries: [const {
                Entry {
                    base: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                    taken: AtomicU32::new(0),
                }
            }; CHUNK],
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

static FIRST: Chunk = Chunk::new();

/// The registry's lock word: 0 when free, else `generation << 1 | 1` of the
/// process whose thread holds it.
static LOCK: AtomicU64 = AtomicU64::new(0);

/// Held while a region is mapped and registered, unregistered and unmapped,
/// or a template is forked.
#[must_use]
pub(crate) struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        // ORDERING: Release: what was done under the lock happens before the
        // next holder's Acquire.
        LOCK.store(0, Release);
    }
}

/// Takes the registry lock. Held only around a `mmap`, `munmap` or `fork`
/// (tens of microseconds), so a waiter spins briefly, then sleeps in short
/// steps. Never blocks on a lock word inherited from a parent process.
pub(crate) fn lock() -> Guard {
    let me = (os::fork_generation() << 1) | 1;
    let mut tries = 0u32;
    loop {
        // ORDERING: Relaxed: a first look; the exchange below decides.
        let word = LOCK.load(Relaxed);
        // Free, or held by a thread of an ancestor process (another
        // generation), which does not exist here.
        if word != me
            // ORDERING: Acquire on success: pairs with the holder's Release
            // in `Guard::drop`.
            && LOCK
                .compare_exchange_weak(word, me, Acquire, Relaxed)
                .is_ok()
        {
            return Guard(());
        }
        tries += 1;
        if tries < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Registers a region mapped at `base..base + len`; the caller holds the
/// lock. Grows the registry by a chunk when every entry is taken, so there
/// is no limit on the number of live regions.
pub(crate) fn register(_guard: &Guard, base: usize, len: usize) -> &'static Entry {
    let mut chunk: &'static Chunk = &FIRST;
    loop {
        for e in &chunk.entries {
            // ORDERING: SeqCst on the claim; the fields are then written and
            // read under the same total order by `unmap_others`.
            if e.taken.compare_exchange(0, 1, SeqCst, Relaxed).is_ok() {
                // ORDERING: SeqCst, see above.
                e.len.store(len, SeqCst);
                // ORDERING: SeqCst, see above.
                e.base.store(base, SeqCst);
                return e;
            }
        }
        // ORDERING: Acquire: pairs with the Release that linked it.
        let next = chunk.next.load(Acquire);
        chunk = if next.is_null() {
            // Only holders of the lock link chunks, so no one races us here.
            let fresh: &'static Chunk = Box::leak(Box::new(Chunk::new()));
            // ORDERING: Release: publishes the zeroed chunk.
            chunk
                .next
                .store(std::ptr::from_ref(fresh).cast_mut(), Release);
            fresh
        } else {
            // SAFETY: linked chunks are leaked boxes, never freed.
            unsafe { &*next }
        };
    }
}

/// Frees `entry`; the caller holds the lock.
pub(crate) fn unregister(_guard: &Guard, entry: &Entry) {
    // ORDERING: SeqCst, as in `register`.
    entry.base.store(0, SeqCst);
    // ORDERING: SeqCst: releases the entry after it is cleared.
    entry.taken.store(0, SeqCst);
}

/// Calls `f(base, len)` for every registered region.
fn each(mut f: impl FnMut(usize, usize)) {
    let mut chunk: &Chunk = &FIRST;
    loop {
        for e in &chunk.entries {
            // ORDERING: SeqCst, as in `register`.
            let (base, len) = (e.base.load(SeqCst), e.len.load(SeqCst));
            if base != 0 && len != 0 {
                f(base, len);
            }
        }
        // ORDERING: Acquire, as in `register`.
        let next = chunk.next.load(Acquire);
        if next.is_null() {
            return;
        }
        // SAFETY: linked chunks are leaked boxes, never freed.
        chunk = unsafe { &*next };
    }
}

/// In a freshly forked worker or template (single-threaded, so the entries
/// are the snapshot the fork took): unmaps every registered region but the
/// one at `own`.
pub(crate) fn unmap_others(own: usize) {
    each(|base, len| {
        if base != own {
            // SAFETY: a worker never touches other pools' regions: it runs
            // only its own pool's jobs, whose offsets are validated against
            // its own region; and a `Region` of another pool that a task
            // reaches through a static never unmaps or reads it in a worker
            // (`Region::drop`, `ShmVec::as_slice`).
            unsafe { os::munmap(base, len) };
        }
    });
}

/// The number of registered regions (for tests).
#[cfg(test)]
pub(crate) fn live() -> usize {
    let mut n = 0;
    each(|_, _| n += 1);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_grows_past_a_chunk_and_reuses_entries() {
        let guard = lock();
        let before = live();
        // Addresses nobody maps: entries are bookkeeping only.
        let entries: Vec<&Entry> = (0..3 * CHUNK)
            .map(|i| register(&guard, 0x7000_0000_0000 + i * 4096, 4096))
            .collect();
        assert_eq!(live(), before + 3 * CHUNK);
        for e in &entries {
            unregister(&guard, e);
        }
        assert_eq!(live(), before);
        let again = register(&guard, 0x7000_0000_0000, 4096);
        assert!(
            entries.iter().any(|e| std::ptr::eq(*e, again)),
            "a freed entry is reused"
        );
        unregister(&guard, again);
    }

    #[test]
    fn a_lock_word_of_another_generation_is_free() {
        let me = (os::fork_generation() << 1) | 1;
        let outer = lock();
        // While we hold it, make the word look held by a thread of an
        // ancestor process (any generation but ours), as a forked child
        // inherits it.
        // ORDERING: SeqCst: a test.
        LOCK.store(((os::fork_generation() + 7) << 1) | 1, SeqCst);
        let inner = lock();
        // ORDERING: SeqCst: a test.
        assert_eq!(LOCK.load(SeqCst), me, "taken, not waited for");
        drop(inner);
        // ORDERING: SeqCst: a test.
        assert_eq!(LOCK.load(SeqCst), 0);
        // Released by `inner` already.
        std::mem::forget(outer);
    }
}
