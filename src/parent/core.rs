//! The state a pool's handle, its result thread and its supervisor share, and
//! the two ways of waiting for a job: blocking on its slot (`map`, `apply`,
//! the drop of a borrowing `AsyncResult`) and collecting finished
//! asynchronous jobs for the result thread.
//!
//! The waits follow the slot protocol (`src/worker/README.md`: Register,
//! Sleep, and the harvest) and the sleep protocol's ticks and kicks
//! (`src/shm/README.md`).

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::os::{self, Wake};
use crate::parent::ring::{Job, JobTimes, RawOut, Ring, Spec, Waiter};
use crate::result::result_loop;
use crate::shm::futex;
use crate::shm::layout::Desc;
use crate::shm::region::Region;
use crate::shm::states::{NOTIFY_EVENT, SLOT_DONE, SLOT_RUNNING};
use crate::worker::{WorkerConfig, in_task, in_worker};

/// The most rounds a blocking caller polls its slot before it sleeps.
const CALLER_SPIN_MAX: u32 = 1024;

/// How long a blocked caller sleeps before it re-checks its job on its own
/// (a lost wake-up, a stalled job). Wake-ups normally come much sooner.
pub(crate) const WAIT_TICK: Duration = Duration::from_millis(50);

/// A deadline `timeout` from now, or `None` (no deadline: wait forever) if
/// it lies beyond what `Instant` can represent. A huge timeout saturates;
/// `Instant + Duration` would panic.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// `now + timeout`, saturating at a century from now (for internal waits
/// that need an `Instant`; none is that long).
pub(crate) fn saturating_deadline(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout.min(CENTURY))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// `Core::life`: accepting work.
pub(crate) const OPEN: u8 = 0;
/// `Core::life`: `close()` was called; outstanding jobs still run.
pub(crate) const CLOSED: u8 = 1;
/// `Core::life`: `terminate()` was called (or the pool dropped).
pub(crate) const TERMINATED: u8 = 2;

/// `Core::stop`: the supervisor keeps the workers alive.
pub(crate) const STOP_NONE: u8 = 0;
/// `Core::stop`: ask workers to exit, wait for them, then kill stragglers.
pub(crate) const STOP_GRACEFUL: u8 = 1;
/// `Core::stop`: kill every worker now.
pub(crate) const STOP_KILL: u8 = 2;

thread_local! {
    /// Set while this thread submits a chunk of a stream (`imap`) that the
    /// pool accepted while it was open: such a chunk is admitted after
    /// `close()` (not after `terminate()`), so the stream delivers every
    /// result. Only the stream's own submission code runs while it is set.
    static ADMITTED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a stream's own submission) with the stream's admission: a
/// closed pool accepts its jobs. Restored on the way out, unwinding too.
pub(crate) fn admitted<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = ADMITTED.try_with(|a| a.set(self.0));
        }
    }
    // Without the thread's locals (being destroyed), no admission.
    let _restore = ADMITTED.try_with(|a| a.replace(true)).map(Restore);
    f()
}

/// The streams (`imap`) a pool accepted and that are not finished yet:
/// `join` waits for them.
#[derive(Default)]
pub(crate) struct Streams {
    next_id: u64,
    /// Each open stream, with the thread that last asked it for a chunk.
    open: Vec<(u64, ThreadId)>,
}

/// Running totals behind `Pool::stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) jobs_submitted: AtomicU64,
    pub(crate) jobs_completed: AtomicU64,
    pub(crate) jobs_failed: AtomicU64,
    pub(crate) bytes_staged: AtomicU64,
    pub(crate) worker_restarts: AtomicU64,
    pub(crate) workers_recycled: AtomicU64,
    pub(crate) jobs_cancelled: AtomicU64,
    /// `Stats::profile`, in nanoseconds.
    pub(crate) staging_ns: AtomicU64,
    pub(crate) dispatch_ns: AtomicU64,
    pub(crate) compute_ns: AtomicU64,
    pub(crate) completion_ns: AtomicU64,
    pub(crate) jobs_profiled: AtomicU64,
}

/// The pool's fixed settings (from the `Builder`).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) worker: WorkerConfig,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_retries: u32,
    pub(crate) memory_limit: Option<usize>,
    /// Elements per claimed range of a map; `None` for automatic.
    pub(crate) chunk_size: Option<usize>,
    /// Guided claims for maps without a `chunk_size`.
    pub(crate) guided: bool,
    /// Outputs of at least this many bytes are streamed; `None` for the
    /// last-level cache size, at most 32 MiB.
    pub(crate) stream_from: Option<usize>,
    /// A blocking caller runs ranges of its own job (`Builder::caller_runs`).
    pub(crate) caller_runs: bool,
}

/// The worker processes, as the supervisor last recorded them.
pub(crate) struct Procs {
    /// The pid and pidfd of worker `w`, while it is alive. Signals go through
    /// the pidfd, so they can never reach a process that recycled the pid.
    pub(crate) workers: Vec<Option<(u32, OwnedFd)>>,
    /// Set when the supervisor has reaped every worker and exited.
    pub(crate) gone: bool,
}

pub(crate) struct Core {
    pub(crate) region: Arc<Region>,
    pub(crate) workers: usize,
    pub(crate) config: Config,
    /// Whether this pool's workers can write the shared heap (its writable
    /// alias was mapped before the pool's template was forked): a job's
    /// output in the heap is then written in place, else staged.
    pub(crate) heap_writable: bool,
    /// Whether this pool's workers map the shared heap (it was reserved
    /// before the pool's template was forked): a job's input in the heap is
    /// then read in place, else staged. A program that uses a `SharedHeap`
    /// directly, not as its global allocator, may reserve it later.
    pub(crate) heap_mapped: bool,
    /// The fork generation (`os::fork_generation`) of the process that built
    /// the pool; a copy of the pool in a forked child refuses to work.
    pub(crate) owner: u64,
    /// Set when a worker's initializer failed: the panic message.
    pub(crate) broken: OnceLock<String>,
    ring: Mutex<Ring>,
    /// Notified when a slot is freed or a job delivered.
    ring_cv: Condvar,
    life: AtomicU8,
    /// A command to the supervisor (`STOP_*`).
    pub(crate) stop: AtomicU8,
    pub(crate) stats: Counters,
    /// Workers write it when an asynchronous job finishes; the result thread
    /// reads it. (Closed on drop except in a worker: see `Drop`; `None`
    /// only there.)
    done_fd: Option<OwnedFd>,
    /// Wakes the result thread from this process. Not `done_fd`, which
    /// every worker holds: its flags belong to one open file shared with
    /// them, and a task that cleared its `O_NONBLOCK` and filled its
    /// counter would make this process's next write to it block. (As
    /// `done_fd`.)
    poke_fd: Option<OwnedFd>,
    /// Wakes the supervisor. (As `done_fd`.)
    ctl_fd: Option<OwnedFd>,
    pub(crate) procs: Mutex<Procs>,
    pub(crate) procs_cv: Condvar,
    pub(crate) result_thread: OnceLock<ThreadId>,
    /// The result thread, once the first asynchronous job has started it.
    pub(crate) results: Mutex<Option<JoinHandle<()>>>,
    /// Whether `results` holds it (read without the lock).
    results_started: AtomicBool,
    /// Streams accepted while the pool was open, not yet finished.
    streams: Mutex<Streams>,
}

impl Drop for Core {
    /// Normally runs in the owner once the pool and its threads are gone. A
    /// copy in another process (a task reaching a pool through a static, a
    /// child the user forked) holds the handle of a thread that does not
    /// exist there: it is forgotten, not detached. In a worker, descriptor
    /// numbers inherited from the owner were closed at start and may name
    /// the task's own files now: they are forgotten too.
    fn drop(&mut self) {
        if os::fork_generation() != self.owner {
            let results = self
                .results
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::forget(results.take());
        }
        if in_worker() {
            let procs = self.procs.get_mut().unwrap_or_else(PoisonError::into_inner);
            std::mem::forget(std::mem::take(&mut procs.workers));
            std::mem::forget(self.done_fd.take());
            std::mem::forget(self.poke_fd.take());
            std::mem::forget(self.ctl_fd.take());
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A blocking caller's sleep between two looks at its job (`wait_sync`),
/// which it found unfinished; `draining`: the job said DONE but was found
/// corrupt, and waits for its last worker to leave. Returns `TimedOut` after
/// a `WAIT_TICK` without a wake-up (then the caller kicks the job), else
/// `Changed`: look again.
pub(crate) fn sleep_on_job(desc: &Desc, draining: bool) -> Wake {
    // ORDERING: SeqCst: Register, before Sleep's load of `state`: pairs
    // with the completing worker's Complete followed by Notify's load of
    // `waiters` (worker/README.md, "Waking a blocked caller").
    desc.waiters.store(1, SeqCst);
    // ORDERING: SeqCst: Sleep, see above; FUTEX_WAIT compares `state` with
    // this value.
    let seen = desc.state.load(SeqCst);
    if seen == SLOT_DONE && !draining {
        // Finished since we looked (its wake-up may be gone): harvest.
        return Wake::Changed;
    }
    // RUNNING: sleep until the completing worker wakes us. DONE but found
    // corrupt: until the last worker leaves the slot (workers leaving an
    // aborted job wake us). Anything else is a scribbled word: sleep a tick
    // rather than spin.
    futex::wait(&desc.state, seen, Some(WAIT_TICK))
}

impl Core {
    /// The eventfd workers write when an asynchronous job finishes.
    pub(crate) fn done_fd(&self) -> BorrowedFd<'_> {
        self.done_fd.as_ref().expect("open until dropped").as_fd()
    }

    /// The eventfd that wakes the supervisor.
    pub(crate) fn ctl_fd(&self) -> BorrowedFd<'_> {
        self.ctl_fd.as_ref().expect("open until dropped").as_fd()
    }

    pub(crate) fn new(region: Arc<Region>, config: Config) -> Result<Self, Error> {
        let layout = *region.layout();
        Ok(Core {
            workers: layout.workers,
            config,
            // Mapped by `Builder::build` before the template is forked.
            heap_writable: crate::heap::writable_alias().is_some(),
            heap_mapped: crate::heap::capacity() != 0,
            owner: os::fork_generation(),
            broken: OnceLock::new(),
            ring: Mutex::new(Ring::new(layout.ring)),
            ring_cv: Condvar::new(),
            life: AtomicU8::new(OPEN),
            stop: AtomicU8::new(STOP_NONE),
            stats: Counters::default(),
            done_fd: Some(os::new_eventfd()?),
            poke_fd: Some(os::new_eventfd()?),
            ctl_fd: Some(os::new_eventfd()?),
            procs: Mutex::new(Procs {
                workers: (0..layout.workers).map(|_| None).collect(),
                gone: false,
            }),
            procs_cv: Condvar::new(),
            result_thread: OnceLock::new(),
            results: Mutex::new(None),
            results_started: AtomicBool::new(false),
            streams: Mutex::new(Streams::default()),
            region,
        })
    }

    pub(crate) fn ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.ring)
    }

    pub(crate) fn life(&self) -> u8 {
        // ORDERING: SeqCst: life changes are rare; keep them simple.
        self.life.load(SeqCst)
    }

    /// Moves the pool to `to` if that is a step forward; returns the old value.
    pub(crate) fn advance_life(&self, to: u8) -> u8 {
        // ORDERING: SeqCst, see `life`.
        self.life.fetch_max(to, SeqCst)
    }

    /// Fails unless the pool accepts work from this thread.
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if in_task() {
            return Err(Error::WouldDeadlock {
                reason: "a task used the pool that runs it; tasks run in worker processes",
            });
        }
        if !self.in_owner() {
            return Err(Error::invalid(
                "a pool was used in a forked copy of the process that built it; build a new pool there",
            ));
        }
        if self.broken.get().is_some() {
            return Err(self.broken_error());
        }
        match self.life() {
            OPEN => Ok(()),
            // A chunk of a stream accepted while the pool was open.
            CLOSED if ADMITTED.try_with(Cell::get).unwrap_or(false) => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    /// Registers a stream accepted now (the pool is open), iterated by this
    /// thread; `join` waits until `close_stream`.
    pub(crate) fn open_stream(&self) -> u64 {
        let mut streams = lock(&self.streams);
        streams.next_id += 1;
        let id = streams.next_id;
        streams.open.push((id, thread::current().id()));
        id
    }

    /// Stream `id` is being iterated by `owner` now.
    pub(crate) fn stream_owner(&self, id: u64, owner: ThreadId) {
        let mut streams = lock(&self.streams);
        if let Some(entry) = streams.open.iter_mut().find(|(i, _)| *i == id) {
            entry.1 = owner;
        }
    }

    /// Stream `id` is finished (exhausted, ended by an error, or dropped).
    pub(crate) fn close_stream(&self, id: u64) {
        lock(&self.streams).open.retain(|(i, _)| *i != id);
        self.ring_cv.notify_all();
    }

    /// Whether this is the process that built the pool (not a worker, not a
    /// process forked from it by the user).
    pub(crate) fn in_owner(&self) -> bool {
        !in_task() && self.in_owner_process()
    }

    /// Whether this is the process that built the pool, on any of its
    /// threads (also one running a task for `caller_runs`).
    pub(crate) fn in_owner_process(&self) -> bool {
        os::fork_generation() == self.owner
    }

    /// The error of a pool whose initializer failed.
    pub(crate) fn broken_error(&self) -> Error {
        Error::InitializerFailed {
            message: self.broken.get().cloned().unwrap_or_default(),
        }
    }

    /// Elements of job `seq` in slot `s` accounted for so far (capped at its
    /// length: the counter is in shared memory), or `None` if the slot no
    /// longer holds the job.
    pub(crate) fn done_so_far(&self, s: usize, seq: u64) -> Option<u64> {
        let ring = self.ring();
        ring.holds(s, seq).then(|| {
            // ORDERING: Relaxed: a progress figure; validated by the cap.
            let done = self.region.slot(s).counts.done.load(Relaxed);
            done.min(ring.job_len(s))
        })
    }

    /// Cancels the asynchronous job `seq` in slot `s` if it is unfinished,
    /// answering its cell with `Cancelled` at once.
    pub(crate) fn cancel(&self, s: usize, seq: u64) {
        // A copy of the pool in a worker or a forked child owns no job (and
        // the ring lock may have been held at the fork). A task the caller
        // runs holds the real result: it cancels like any code of the owner.
        if !self.in_owner_process() {
            return;
        }
        let cell = self.ring().cancel(&self.region, s, seq);
        if let Some(cell) = cell {
            // ORDERING: Release: failed before cancelled, each after the
            // submission (ring lock); `Pool::stats` loads them in the
            // opposite order, Acquire, so a snapshot adds up.
            self.stats.jobs_failed.fetch_add(1, Release);
            self.stats.jobs_cancelled.fetch_add(1, Release);
            // Its callbacks run here, in the cancelling thread; the job
            // counts as in flight until they have returned, so `join` waits
            // for them as for any other job's.
            cell.deliver(Err(Error::Cancelled));
            self.delivered(1);
            // Workers skip its remaining ranges; the result thread frees it
            // once the last one leaves.
            self.poke_result_thread();
        }
    }

    pub(crate) fn on_result_thread(&self) -> bool {
        self.result_thread.get() == Some(&std::thread::current().id())
    }

    /// The eventfd this process writes to wake the result thread.
    pub(crate) fn poke_fd(&self) -> BorrowedFd<'_> {
        self.poke_fd.as_ref().expect("open until dropped").as_fd()
    }

    pub(crate) fn poke_result_thread(&self) {
        os::eventfd_signal(self.poke_fd());
    }

    /// Reads the completion eventfd in the result thread's place while
    /// there is none (a pool that has run no asynchronous job). Honest
    /// workers then never write it, but a task can set its job's notify bit
    /// and make the eventfd blocking and full: the next worker to ring it
    /// would block until someone reads it. The supervisor calls this every
    /// repair round. Under the `results` lock, which `start_result_thread`
    /// holds to start the thread, so the two are never both reading: a
    /// read after a `poll` that saw input cannot block.
    pub(crate) fn drain_unread_completions(&self) {
        // ORDERING: Acquire: pairs with `start_result_thread`'s Release; a
        // stale `false` only sends us to the lock.
        if self.results_started.load(Acquire) {
            return;
        }
        let results = lock(&self.results);
        if results.is_some() {
            return;
        }
        let mut fds = [os::watch(self.done_fd())];
        if matches!(os::poll(&mut fds, 0), Ok(n) if n > 0) && os::has_input(&fds[0]) {
            os::eventfd_drain(self.done_fd());
        }
    }

    /// Sends `SIGKILL` to every live worker, through its pidfd: never to a
    /// process that recycled a worker's pid.
    pub(crate) fn kill_workers(&self) {
        let procs = lock(&self.procs);
        for (_, pidfd) in procs.workers.iter().flatten() {
            os::pidfd_kill(pidfd);
        }
    }

    pub(crate) fn poke_supervisor(&self) {
        os::eventfd_signal(self.ctl_fd());
    }

    /// Starts the result thread, which delivers asynchronous outcomes, if
    /// it is not running yet. A pool that runs no asynchronous job never
    /// starts it: building and dropping the thread cost 60-90 µs of the seed
    /// example's 1.5 ms.
    fn start_result_thread(self: &Arc<Self>) -> Result<(), Error> {
        // ORDERING: Acquire: pairs with the Release store below; a stale
        // `false` only sends us to the lock.
        if self.results_started.load(Acquire) {
            return Ok(());
        }
        let mut results = lock(&self.results);
        if results.is_none() {
            let inner = self.clone();
            *results = Some(
                thread::Builder::new()
                    .name("shmpool-results".into())
                    .spawn(move || result_loop(inner))?,
            );
        }
        // ORDERING: Release: see above.
        self.results_started.store(true, Release);
        Ok(())
    }

    /// Publishes a job, waiting for a free slot if the ring is full, and
    /// posts `tokens` work tokens. Returns its slot and sequence number.
    pub(crate) fn submit(
        self: &Arc<Self>,
        spec: &Spec,
        job: Job,
        tokens: u32,
    ) -> Result<(usize, u64), Error> {
        let notify = match job.waiter {
            Waiter::Async(_) | Waiter::Detached => NOTIFY_EVENT,
            Waiter::Sync => 0,
        };
        if notify == NOTIFY_EVENT {
            self.check_open()?;
            self.start_result_thread()?;
        }
        let mut ring = self.ring();
        let s = loop {
            self.check_open()?;
            if let Some(s) = ring.take_free(&self.region) {
                break s;
            }
            // The ring is full. Finished asynchronous jobs may be holding
            // slots while the result thread is busy (perhaps running a callback
            // that is submitting right now): harvest them here.
            if self.collect_async(&mut ring) {
                self.poke_result_thread();
                continue;
            }
            ring = self
                .ring_cv
                .wait_timeout(ring, WAIT_TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        let seq = ring.publish(&self.region, s, spec, job, notify);
        // ORDERING: Relaxed: a statistic, counted under the ring lock, which
        // every harvest and cancel of the job takes before they count it
        // (`count`): a snapshot never sees it finished but not submitted.
        self.stats.jobs_submitted.fetch_add(1, Relaxed);
        drop(ring);
        self.region.control().sem.post(tokens);
        Ok((s, seq))
    }

    /// Blocks until the job `seq` in slot `s` finishes and returns its
    /// outcome: harvests it if it is finished, else sleeps on the slot's state
    /// word (Register, Sleep), looking again at least every `WAIT_TICK`
    /// (Tick) and kicking a job whose wake-up may be lost (Kick).
    pub(crate) fn wait_sync(&self, s: usize, seq: u64) -> Result<RawOut, Error> {
        let desc = &self.region.slot(s).desc;
        // A short spin first: a small job is often done within a few
        // microseconds, and a futex sleep and wake-up would double its round
        // trip. An eighth of the workers' budget, and never more than 1024
        // rounds, so it cannot keep a core from them for long.
        for _ in 0..(self.config.worker.spin / 8).min(CALLER_SPIN_MAX) {
            // ORDERING: Relaxed: the caller's spin, a poll; the harvest below
            // loads `state` again (LookDone).
            if desc.state.load(Relaxed) != SLOT_RUNNING {
                break;
            }
            std::hint::spin_loop();
        }
        loop {
            let draining = {
                let mut ring = self.ring();
                if !ring.holds(s, seq) {
                    return Err(Error::Corrupted {
                        detail: "a blocking job left the ring without its caller",
                    });
                }
                if let Some(h) = ring.try_harvest(&self.region, s, Some(seq)) {
                    ring.in_flight -= 1;
                    drop(ring);
                    self.ring_cv.notify_all();
                    self.count(&h.outcome, h.times);
                    return h.outcome;
                }
                ring.awaits_drain(s)
            };
            if sleep_on_job(desc, draining) == Wake::TimedOut {
                let tokens = self.ring().kick(&self.region, s);
                self.region.control().sem.post(tokens);
            }
        }
    }

    /// Harvests every finished asynchronous job into `ring.ready`. Returns
    /// whether it found any.
    pub(crate) fn collect_async(&self, ring: &mut Ring) -> bool {
        let mut any = false;
        for s in 0..ring.len() {
            if !ring.is_async(s) {
                continue;
            }
            if let Some(h) = ring.try_harvest(&self.region, s, None) {
                // A cancelled job was answered and counted when cancelled.
                if let Waiter::Async(cell) = h.waiter {
                    self.count(&h.outcome, h.times);
                    ring.ready.push((cell, h.outcome));
                    any = true;
                }
            }
        }
        any
    }

    /// Whether any asynchronous job is unfinished.
    pub(crate) fn any_async(&self, ring: &Ring) -> bool {
        (0..ring.len()).any(|s| ring.is_async(s))
    }

    /// Re-announces unfinished asynchronous jobs whose wake-up may be lost.
    pub(crate) fn kick_async(&self, ring: &mut Ring) {
        let mut tokens = 0u32;
        for s in 0..ring.len() {
            if ring.is_async(s) {
                tokens = tokens.saturating_add(ring.kick(&self.region, s));
            }
        }
        self.region.control().sem.post(tokens);
    }

    /// `n` asynchronous jobs were delivered.
    pub(crate) fn delivered(&self, n: usize) {
        self.ring().in_flight -= n;
        self.ring_cv.notify_all();
    }

    /// Blocks until every submitted job has been handed to its waiter (its
    /// callbacks have returned) and every stream accepted while the pool was
    /// open is finished. A stream this thread iterates can only finish if
    /// this thread goes on iterating it: then `WouldDeadlock`. Once the pool
    /// is terminated, streams are not waited for: none can submit another
    /// job, and one may never be finished (forgotten, say).
    pub(crate) fn wait_idle(&self) -> Result<(), Error> {
        let me = thread::current().id();
        loop {
            let streams_open = self.life() != TERMINATED && {
                let streams = lock(&self.streams);
                if streams.open.iter().any(|(_, owner)| *owner == me) {
                    return Err(Error::WouldDeadlock {
                        reason: "join() would wait for an imap stream that this thread has not \
                                 finished iterating; finish or drop it first",
                    });
                }
                !streams.open.is_empty()
            };
            let ring = self.ring();
            if ring.in_flight == 0 && !streams_open {
                return Ok(());
            }
            // A stream's end notifies without the ring lock: the tick
            // catches a wake-up lost in between.
            drop(
                self.ring_cv
                    .wait_timeout(ring, WAIT_TICK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0,
            );
        }
    }

    /// Blocks until the supervisor has reaped every worker and exited.
    pub(crate) fn wait_workers_gone(&self) {
        let mut procs = lock(&self.procs);
        while !procs.gone {
            procs = self
                .procs_cv
                .wait_timeout(procs, WAIT_TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(crate) fn workers_gone(&self) -> bool {
        lock(&self.procs).gone
    }

    fn count(&self, outcome: &Result<RawOut, Error>, times: Option<JobTimes>) {
        let c = &self.stats;
        let counter = if outcome.is_ok() {
            &c.jobs_completed
        } else {
            &c.jobs_failed
        };
        // ORDERING: Release: after the job's submission was counted (the
        // ring lock orders them) and before its profile; `Pool::stats`
        // loads them in the opposite order, Acquire, so that a snapshot
        // adds up (a plain `lock xadd` on x86, as Relaxed).
        counter.fetch_add(1, Release);
        if let Some(t) = times {
            // ORDERING: Relaxed: statistics, summed.
            c.dispatch_ns.fetch_add(t.dispatch, Relaxed);
            c.compute_ns.fetch_add(t.compute, Relaxed);
            c.completion_ns.fetch_add(t.completion, Relaxed);
            // ORDERING: Release: see above.
            c.jobs_profiled.fetch_add(1, Release);
        }
    }
}
