//! The shared heap's lock: a futex word that knows about `fork`.
//!
//! The word is 0 when free, else the holder's fork generation
//! (`os::fork_generation`, truncated to 30 bits) shifted left by two, with
//! bit 0 set ("locked") and bit 1 set when a thread may be sleeping on it
//! ("waiters"). A process finds a word that names another generation free:
//! the thread that held it belongs to an ancestor and does not exist here.
//! A `std::sync::Mutex` held by another thread at a `fork` stays locked in
//! the child forever.
//!
//! It guards only the heap's bookkeeping, which is O(1) and never calls out,
//! so a waiter spins briefly before it sleeps. Sleeps are bounded (a timed
//! futex wait in a loop), so a lost wake-up could only delay, never hang.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use crate::os;

const LOCKED: u32 = 1;
const WAITERS: u32 = 2;
/// Spins before a waiter sleeps.
const SPINS: u32 = 100;

pub(crate) struct ForkLock {
    word: AtomicU32,
}

/// Held while the heap's bookkeeping is read or changed.
#[must_use]
pub(crate) struct Guard<'a>(&'a ForkLock);

impl ForkLock {
    pub(crate) const fn new() -> ForkLock {
        ForkLock {
            word: AtomicU32::new(0),
        }
    }

    /// This process's "locked" word. Valid once `os::fork_generation` has
    /// been called (the heap's reservation calls it).
    fn mine() -> u32 {
        ((os::fork_generation_registered() as u32) << 2) | LOCKED
    }

    /// Takes the lock; never waits for a word another process left held.
    pub(crate) fn lock(&self) -> Guard<'_> {
        let me = Self::mine();
        let mut contended = false;
        let mut spins = 0;
        loop {
            // ORDERING: Relaxed: a first look; the exchange decides.
            let word = self.word.load(Relaxed);
            if word & !WAITERS != me {
                // Free, or held by a thread of an ancestor process. A thread
                // that slept keeps the waiters bit set: others may sleep too.
                let new = if contended { me | WAITERS } else { me };
                // ORDERING: Acquire on success: pairs with the Release in
                // `Guard::drop`, so the holder's bookkeeping is visible.
                if self
                    .word
                    .compare_exchange_weak(word, new, Acquire, Relaxed)
                    .is_ok()
                {
                    return Guard(self);
                }
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if word & WAITERS == 0
                // ORDERING: Relaxed: only announces a sleeper; the futex
                // compares the word again atomically.
                && self
                    .word
                    .compare_exchange_weak(word, word | WAITERS, Relaxed, Relaxed)
                    .is_err()
            {
                continue;
            }
            contended = true;
            os::futex_wait(&self.word, word | WAITERS, Some(Duration::from_millis(50)));
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // ORDERING: Release: the bookkeeping done under the lock happens
        // before the next holder's Acquire.
        if self.0.word.swap(0, Release) & WAITERS != 0 {
            os::futex_wake(&self.0.word, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn a_word_held_by_another_generation_is_free() {
        let _ = os::fork_generation();
        let lock = ForkLock::new();
        let other = ((os::fork_generation() as u32 + 3) << 2) | LOCKED | WAITERS;
        // ORDERING: SeqCst: a test.
        lock.word.store(other, SeqCst);
        let g = lock.lock();
        // ORDERING: SeqCst: a test.
        assert_eq!(lock.word.load(SeqCst) & !WAITERS, ForkLock::mine());
        drop(g);
        // ORDERING: SeqCst: a test.
        assert_eq!(lock.word.load(SeqCst), 0);
    }

    #[test]
    fn threads_exclude_each_other() {
        let _ = os::fork_generation();
        let lock = ForkLock::new();
        let inside = AtomicU32::new(0);
        let mut total = 0u64;
        let total_ptr = &raw mut total as usize;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let _g = lock.lock();
                        // ORDERING: SeqCst: a test.
                        assert_eq!(inside.fetch_add(1, SeqCst), 0, "two holders");
                        // SAFETY: only the lock's holder touches `total`.
                        unsafe { *(total_ptr as *mut u64) += 1 };
                        // ORDERING: SeqCst: a test.
                        inside.fetch_sub(1, SeqCst);
                    }
                });
            }
        });
        assert_eq!(total, 80_000);
    }
}
