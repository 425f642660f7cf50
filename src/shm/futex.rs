//! Futex wait and wake on the words of the shared region: the system calls
//! (`os::futex_wait`, `os::futex_wake`), or, when the crate is built for its
//! loom models (`--cfg shmpool_loom`), a stand-in made of loom's mutex and
//! condition variable.
//!
//! Only words of the region go through here (the semaphore's count, a
//! slot's state); every other futex (the shared heap's lock) calls `os`
//! directly.
//!
//! ## The stand-in
//! It keeps what a protocol may rely on from `FUTEX_WAIT` and `FUTEX_WAKE`
//! and nothing more:
//! - `wait` compares the word with the expected value and queues the caller
//!   as one step with respect to `wake` (the kernel does both under its
//!   hash-bucket lock; here, under the table's mutex). A `wake` that comes
//!   after the word's new value was stored therefore either finds the
//!   sleeper queued or the sleeper sees the new value and does not sleep.
//! - `wake(n)` wakes at most `n` sleepers of that word, the oldest first,
//!   and returns how many it woke; each of them returns `Woken`, and only
//!   they do.
//! - The comparison is a `Relaxed` load: the kernel's barriers are not
//!   promised by the futex interface, so the protocols must not lean on
//!   them.
//! - A timeout never expires and nothing wakes spuriously. A wake-up that a
//!   protocol relies on and that never comes is then a sleeper that never
//!   returns, which loom reports as a deadlock, instead of a late wake-up
//!   that the real code's timeouts (`WAIT_TICK`, `IDLE_CHECK`) would cover.

#[cfg(not(shmpool_loom))]
pub(crate) use crate::os::{futex_wait as wait, futex_wake as wake};

#[cfg(shmpool_loom)]
pub(crate) use model::{wait, wake};

#[cfg(shmpool_loom)]
mod model {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use loom::sync::{Condvar, Mutex};

    use crate::os::Wake;
    use crate::shm::atomic::AtomicU32;

    /// The sleepers of every word, in the order they went to sleep.
    #[derive(Default)]
    struct Queue {
        /// (word address, ticket) of each sleeper not yet woken.
        asleep: Vec<(usize, u64)>,
        /// Tickets of sleepers woken but not yet returned.
        woken: Vec<u64>,
        next: u64,
    }

    struct Table {
        queue: Mutex<Queue>,
        changed: Condvar,
    }

    loom::lazy_static! {
        /// One table per loom execution.
        static ref TABLE: Table = Table {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        };
    }

    fn key(word: &AtomicU32) -> usize {
        std::ptr::from_ref(word) as usize
    }

    /// `FUTEX_WAIT`: sleeps while `word` holds `expected`, until a `wake`
    /// on the word picks this sleeper (`Wake::Woken`), or at once if it does
    /// not (`Wake::Changed`). `timeout` is ignored (see the module docs).
    pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
        let _ = timeout;
        let table = &*TABLE;
        let mut q = table.queue.lock().unwrap();
        // ORDERING: Relaxed: see the module docs; the mutex orders this
        // comparison against every `wake`.
        if word.load(Relaxed) != expected {
            return Wake::Changed;
        }
        let me = q.next;
        q.next += 1;
        q.asleep.push((key(word), me));
        loop {
            q = table.changed.wait(q).unwrap();
            if let Some(i) = q.woken.iter().position(|&t| t == me) {
                q.woken.swap_remove(i);
                return Wake::Woken;
            }
        }
    }

    /// `FUTEX_WAKE`: wakes up to `n` sleepers on `word` and returns how
    /// many it woke.
    pub(crate) fn wake(word: &AtomicU32, n: u32) -> u32 {
        let table = &*TABLE;
        let mut q = table.queue.lock().unwrap();
        let at = key(word);
        let mut left = n;
        let mut i = 0;
        while i < q.asleep.len() && left > 0 {
            if q.asleep[i].0 == at {
                let (_, ticket) = q.asleep.remove(i);
                q.woken.push(ticket);
                left -= 1;
            } else {
                i += 1;
            }
        }
        if left < n {
            table.changed.notify_all();
        }
        n - left
    }
}
