//! The process-shared semaphore that hands work tokens to workers, and the
//! result thread's doorbell (`Doorbell`, at the end).
//!
//! The semaphore is two words on one cache line of the shared region, and a
//! shared futex (no `FUTEX_PRIVATE_FLAG`) on the count. Nothing in it has an
//! owner, so a worker killed at any instruction cannot wedge it: the worst
//! it leaves behind is a stale `sleepers` count, which only makes later
//! posts issue a wake-up system call that finds nobody. A post that wakes
//! sleepers uncounts them itself, so that the posts that follow, before the
//! woken run again, make no such call.
//!
//! The sleep and wake protocol (post and wait, spin then sleep, the wake cap
//! and relays, ticks and kicks) is written out, with its named events and a
//! proof sketch, in `README.md` in this directory.
//!
//! ## Memory ordering
//! `post` does Add and then LookSleepers; a sleeper does Sleepy and then
//! LookCount. All four are `SeqCst`, so at least one side sees the other
//! (the Dekker pattern): either the poster sees a sleeper and wakes it, or
//! the sleeper sees the tokens and does not sleep. `FUTEX_WAIT` (Wait)
//! re-checks the count atomically in the kernel, which closes the window
//! between the sleeper's LookCount and its sleep.
//!
//! ## How many a post wakes
//! A post of `n` tokens wakes at most `wake_cap` sleepers (the CPUs the
//! pool may run on, at least two), at least one. The tokens left over stay
//! in the count, and a worker that claims a range and leaves more behind
//! relays (`relay`: one more token, one more sleeper woken), so ranges that
//! block still reach as many workers as before, one wake-up after another.

use std::hint::spin_loop;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use crate::os::Wake;
use crate::shm::atomic::AtomicU32;
use crate::shm::futex;

/// A counting semaphore in shared memory.
#[repr(C, align(128))]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Semaphore {
    count: AtomicU32,
    sleepers: AtomicU32,
    /// The most sleepers one `post` wakes; 0 reads as 1. Written by the
    /// parent before any worker exists. Untrusted like every shared word: a
    /// scribbled value costs wake-ups, never a lost token.
    wake_cap: AtomicU32,
}

impl Semaphore {
    /// Sets how many sleepers one `post` wakes at most (see the module
    /// docs).
    pub(crate) fn set_wake_cap(&self, cap: u32) {
        // ORDERING: Relaxed: the wake cap, written before the workers are
        // forked, which publishes it; a hint after that.
        self.wake_cap.store(cap, Relaxed);
    }

    /// The most sleepers a `post` wakes, at least 1.
    pub(crate) fn wake_cap(&self) -> u32 {
        // ORDERING: Relaxed: the wake cap, a hint (see the field).
        self.wake_cap.load(Relaxed).max(1)
    }

    /// Adds `n` tokens and wakes up to `n` sleeping workers, but no more
    /// than the wake cap.
    pub(crate) fn post(&self, n: u32) {
        self.post_waking(n, n.min(self.wake_cap()));
    }

    /// Adds `n` tokens and wakes up to `n` sleeping workers, whatever the
    /// cap: for posts every worker must see (shutdown, a death).
    pub(crate) fn post_all(&self, n: u32) {
        self.post_waking(n, n);
    }

    /// Adds one token and wakes one sleeper: a worker that took a range of
    /// a job with more left behind passes the wake-up on.
    pub(crate) fn relay(&self) {
        self.post_waking(1, 1);
    }

    fn post_waking(&self, n: u32, wake: u32) {
        if n == 0 {
            return;
        }
        // ORDERING: SeqCst: Add, before LookSleepers; pairs with a sleeper's
        // Sleepy followed by LookCount (README.md, "Proof sketch"). It also
        // releases everything the poster wrote before, such as a published
        // job (Publish, Pend), to the Take that acquires this token.
        self.count.fetch_add(n, SeqCst);
        // ORDERING: SeqCst: LookSleepers, the second half of the pair; Wake
        // follows if anyone sleeps.
        if self.sleepers.load(SeqCst) != 0 {
            let woken = futex::wake(&self.count, wake.max(1));
            if woken != 0 {
                // Unsleep: the sleepers just woken are no longer counted (they
                // do not do Awake for this sleep). Without it, every post in
                // the tens of microseconds before a woken worker runs again
                // saw it still counted and made a wake-up system call that
                // found nobody: nine in ten of a busy `apply_async` caller's
                // posts.
                // ORDERING: SeqCst, like Awake, which it stands in for: it
                // only lowers the count of sleepers later posts see, never
                // below those still queued or about to be (see README.md,
                // "Proof sketch").
                self.sleepers.fetch_sub(woken, SeqCst);
            }
        }
    }

    /// Lowers the token count to `most` if it is above. A token wakes one
    /// worker, which then looks at every slot, so more tokens than workers
    /// never make more progress; a count scribbled up to billions would
    /// keep idle workers taking tokens and finding nothing, at full speed,
    /// for minutes. The parent calls this with the worker count.
    pub(crate) fn clamp(&self, most: u32) {
        // ORDERING: Relaxed: a hint for the exchange below.
        let mut c = self.count.load(Relaxed);
        while c > most {
            // ORDERING: Relaxed: a read-modify-write, so it continues the
            // release sequence of the posts whose tokens it keeps; a Take
            // that reads what it wrote still acquires them.
            match self.count.compare_exchange_weak(c, most, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => c = now,
            }
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_acquire(&self) -> bool {
        // ORDERING: Relaxed: only a hint for the loop below (Take).
        let mut c = self.count.load(Relaxed);
        while c != 0 {
            // ORDERING: Acquire: Take; on success it synchronises with the
            // Add that added the token, so the job published before it is
            // visible.
            match self.count.compare_exchange_weak(c, c - 1, Acquire, Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes one token: spins `spin` rounds, then sleeps until a token comes
    /// or `timeout` passes. Returns whether a token was taken.
    pub(crate) fn wait(&self, spin: u32, timeout: Duration) -> bool {
        for _ in 0..spin {
            // ORDERING: Relaxed: Poll, a read-only look that keeps the line
            // shared while spinning; Take does the synchronising exchange.
            if self.count.load(Relaxed) != 0 && self.try_acquire() {
                return true;
            }
            spin_loop();
        }
        // ORDERING: SeqCst: Sleepy, before LookCount: the sleeper's half of
        // the Dekker pair with a post's Add and LookSleepers.
        self.sleepers.fetch_add(1, SeqCst);
        // Whether this sleeper is counted in `sleepers`: a wake-up uncounts
        // it (the waker's Unsleep).
        let mut counted = true;
        // A timeout too long to represent waits without one (`post` wakes).
        let deadline = Instant::now().checked_add(timeout);
        let got = loop {
            // ORDERING: SeqCst: LookCount, after Sleepy; Wait (FUTEX_WAIT on
            // 0) then re-checks the count in the kernel.
            if self.count.load(SeqCst) != 0 && self.try_acquire() {
                break true;
            }
            if !counted {
                // Woken, but another worker took the token: Sleepy again
                // before the next LookCount, so that a post after it sees
                // this sleeper.
                // ORDERING: SeqCst: Sleepy, as above.
                self.sleepers.fetch_add(1, SeqCst);
                counted = true;
                continue;
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break false;
                    }
                    Some(d - now)
                }
                None => None,
            };
            if futex::wait(&self.count, 0, left) == Wake::Woken {
                counted = false;
            }
        };
        if counted {
            // ORDERING: SeqCst: Awake. Relaxed would do (it only suppresses
            // wake-ups); SeqCst keeps the counter's story simple.
            self.sleepers.fetch_sub(1, SeqCst);
        }
        got
    }
}

/// The result thread's doorbell: a worker that completes an asynchronous
/// job writes the completion eventfd only while the result thread may be
/// asleep on it (`README.md`, "The result thread's doorbell"). Without it,
/// every completion was a system call, and every one woke the result
/// thread, even while it was busy harvesting.
///
/// Nothing in it has an owner: a worker that scribbles a 0 over it makes
/// completions go unannounced until the result thread's next tick (100 ms
/// while asynchronous jobs were unfinished at its last look, else 1 s), and
/// a 1 makes them announced needlessly. A worker stopped between taking
/// the mark and its write holds up the announcement of the others'
/// completions the same way (one killed there is noticed: the supervisor
/// pokes the result thread when it settles a death).
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Doorbell {
    /// Non-zero while the result thread may sleep on the eventfd.
    asleep: AtomicU32,
}

impl Doorbell {
    /// **Announce** (the result thread): completions ring from now on. The
    /// thread then looks once more for finished jobs, and sleeps only if
    /// that look found none.
    pub(crate) fn announce(&self) {
        // ORDERING: SeqCst: Announce, before the look's SeqCst loads of the
        // slots' states (LookDone); pairs with a worker's Complete followed
        // by LookAsleep: either the look sees the job done, or the worker
        // sees the announcement and rings. A swap rather than a store, at
        // the same cost (x86 compiles both to `xchg`): Rust's memory model
        // already puts a store after a worker's swap that read the Awake
        // before it (a read-modify-write follows the write it reads at once
        // in the word's modification order), but loom orders it so only for
        // a read-modify-write, and with a store reports a deadlock that
        // cannot happen.
        self.asleep.swap(1, SeqCst);
    }

    /// **Awake** (the result thread): back from its sleep, or its last look
    /// found work. Completions stop ringing until the next Announce.
    pub(crate) fn awake(&self) {
        // ORDERING: SeqCst: in the total order with the workers' LookAsleep,
        // so that a worker that reads this 0 completed before the next
        // Announce, whose look then finds its job.
        self.asleep.store(0, SeqCst);
    }

    /// **LookAsleep** (a worker, after Complete): whether to write the
    /// eventfd. Of the workers that see the result thread asleep, the one
    /// that takes the mark rings; the others' jobs are found by the look
    /// that follows the wake-up.
    pub(crate) fn should_ring(&self) -> bool {
        // ORDERING: SeqCst: LookAsleep, the second half of the pair in
        // `announce`. The plain load first keeps a busy result thread's
        // line shared (no read-modify-write when nobody sleeps).
        self.asleep.load(SeqCst) != 0 && self.asleep.swap(0, SeqCst) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn sem() -> Semaphore {
        Semaphore {
            count: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            wake_cap: AtomicU32::new(0),
        }
    }

    #[test]
    fn tokens_are_counted() {
        let s = sem();
        assert!(!s.try_acquire());
        s.post(2);
        assert!(s.try_acquire());
        assert!(s.wait(0, Duration::ZERO));
        assert!(!s.wait(10, Duration::from_millis(5)));
    }

    #[test]
    fn a_clamp_lowers_the_tokens_and_never_raises_them() {
        let s = sem();
        s.post(10);
        s.clamp(3);
        assert_eq!(s.count.load(SeqCst), 3);
        s.clamp(5);
        assert_eq!(s.count.load(SeqCst), 3);
        for _ in 0..3 {
            assert!(s.try_acquire());
        }
        assert!(!s.try_acquire());
    }

    #[test]
    fn a_sleeper_is_woken_by_post() {
        let s = Arc::new(sem());
        let t = {
            let s = s.clone();
            thread::spawn(move || s.wait(0, Duration::from_secs(10)))
        };
        while s.sleepers.load(SeqCst) == 0 {
            thread::yield_now();
        }
        let start = Instant::now();
        s.post(1);
        assert!(t.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn every_token_is_taken_exactly_once() {
        let s = Arc::new(sem());
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    let mut n = 0;
                    while s.wait(50, Duration::from_millis(200)) {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for _ in 0..1000 {
            s.post(1);
        }
        let total: u32 = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000);
        assert_eq!(s.sleepers.load(SeqCst), 0, "every sleeper uncounted once");
    }

    /// A sleeper woken for a token that another worker takes first sleeps
    /// again, counted, so that the next post wakes it (not its timeout).
    #[test]
    fn a_sleeper_that_loses_its_token_is_woken_by_the_next_post() {
        for _ in 0..20 {
            let s = Arc::new(sem());
            let t = {
                let s = s.clone();
                thread::spawn(move || {
                    let start = Instant::now();
                    (s.wait(0, Duration::from_secs(20)), start.elapsed())
                })
            };
            while s.sleepers.load(SeqCst) == 0 {
                thread::yield_now();
            }
            thread::sleep(Duration::from_millis(10));
            s.post(1);
            // Take the token before the woken sleeper runs, as another
            // worker would.
            if !s.try_acquire() {
                // The sleeper was quicker: try again.
                assert!(t.join().unwrap().0);
                continue;
            }
            thread::sleep(Duration::from_millis(10));
            s.post(1);
            let (got, waited) = t.join().unwrap();
            assert!(got);
            assert!(waited < Duration::from_secs(10), "{waited:?}");
            assert_eq!(s.sleepers.load(SeqCst), 0);
            return;
        }
        panic!("the woken sleeper took its token first 20 times");
    }

    /// Four sleepers, a cap of one: a post of four tokens wakes one, and
    /// each taker that blocks (as a worker in a long task would) relays, so
    /// all four tokens reach four different sleepers.
    #[test]
    fn a_capped_post_reaches_every_sleeper_through_relays() {
        let s = Arc::new(sem());
        s.set_wake_cap(1);
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    let got = s.wait(0, Duration::from_secs(10));
                    if got {
                        s.relay();
                    }
                    got
                })
            })
            .collect();
        while s.sleepers.load(SeqCst) < 4 {
            thread::yield_now();
        }
        let start = Instant::now();
        s.post(4);
        let woken = takers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&g| g)
            .count();
        assert_eq!(woken, 4);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Four tokens posted, four relayed, four taken: four left over, for
        // the next worker that waits.
        assert_eq!(s.count.load(SeqCst), 4);
        assert_eq!(s.sleepers.load(SeqCst), 0);
    }

    #[test]
    fn post_all_wakes_past_the_cap() {
        let s = Arc::new(sem());
        s.set_wake_cap(1);
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || s.wait(0, Duration::from_secs(10)))
            })
            .collect();
        while s.sleepers.load(SeqCst) < 3 {
            thread::yield_now();
        }
        let start = Instant::now();
        s.post_all(3);
        assert!(takers.into_iter().all(|t| t.join().unwrap()));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_doorbell_rings_once_per_announcement() {
        let bell = Doorbell::default();
        // Awake: no one rings.
        assert!(!bell.should_ring());
        bell.announce();
        // The first to look takes the mark; the rest of that sleep is quiet.
        assert!(bell.should_ring());
        assert!(!bell.should_ring());
        bell.announce();
        bell.awake();
        assert!(!bell.should_ring());
    }
}
