//! `Builder`: configuring a pool, creating its region and starting its
//! threads and workers.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::Error;
use crate::os;
use crate::parent::core::{Config, Core};
use crate::parent::limits;
use crate::parent::supervisor;
use crate::pool::Pool;
use crate::shm::layout::{LINE, Layout, MAX_RING};
use crate::shm::region::Region;
use crate::worker::template::{PanicHook, StdioProbe, Template};
use crate::worker::{WorkerConfig, in_task};

/// Spin rounds a worker polls for work before it sleeps.
const DEFAULT_SPIN: u32 = 2000;
/// The largest pool.
const MAX_WORKERS: usize = 1024;

/// Configures a [`Pool`]; from [`Pool::builder`].
///
/// ```
/// let pool = shmpool::Pool::builder().workers(2).arena_size(64 << 20).build()?;
/// assert_eq!(pool.workers(), 2);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Builder does nothing until build() is called"]
pub struct Builder {
    workers: Option<usize>,
    arena_size: Option<usize>,
    ring_size: Option<usize>,
    spin: u32,
    task_timeout: Option<Duration>,
    max_retries: u32,
    initializer: Option<fn()>,
    max_tasks_per_worker: usize,
    worker_memory_limit: Option<usize>,
    chunk_size: Option<usize>,
    guided: bool,
    stream_from: Option<usize>,
    caller_runs: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            workers: None,
            arena_size: None,
            ring_size: None,
            spin: DEFAULT_SPIN,
            task_timeout: None,
            max_retries: 1,
            initializer: None,
            max_tasks_per_worker: 0,
            worker_memory_limit: None,
            chunk_size: None,
            guided: false,
            stream_from: None,
            caller_runs: false,
        }
    }
}

impl Builder {
    /// The number of worker processes (default: the available parallelism,
    /// at most 1024).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The size of the shared arena in bytes. It is address space only until
    /// allocated: pages are reserved when a block is allocated, and kept for
    /// reuse when it is freed.
    ///
    /// Default: half the physical memory, but at most half of the process's
    /// memory cgroup limit, at least 64 MiB and at most 1 TiB; and at most
    /// half of the address space it may still map under `RLIMIT_AS`
    /// (`ulimit -v`), even below 64 MiB; and within the file size limit
    /// (`ulimit -f`), since the shared memory is one file. Under such a
    /// limit, a size that does not fit fails at [`build`](Self::build) with
    /// `Error::Io` naming the limit and the size to use; a memory cgroup's
    /// limit is checked again at each allocation, which fails with
    /// [`Error::OutOfSharedMemory`] rather than wake the cgroup's OOM killer.
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = Some(bytes);
        self
    }

    /// How many jobs can be in flight at once (default: 256, or 4 per worker
    /// if that is more; at most 1024). Submitting to a full ring waits for a
    /// free slot.
    pub fn ring_size(mut self, slots: usize) -> Self {
        self.ring_size = Some(slots);
        self
    }

    /// How many rounds an idle worker polls for new work before it sleeps
    /// (default: 2000, some tens of microseconds). 0 makes workers sleep at
    /// once.
    /// Only as many idle workers spin as the process has CPUs
    /// (`sched_getaffinity`), and none on a single CPU: more spinners would
    /// take the CPUs from the workers with work and from the caller.
    /// The caller of a blocking call polls for its result an eighth as long
    /// (at most 1024 rounds) before it sleeps, which shortens the round trip
    /// of small maps.
    pub fn spin(mut self, rounds: u32) -> Self {
        self.spin = rounds;
        self
    }

    /// The longest one claimed range of a job may run (default: no limit).
    /// A worker that runs past it is killed (`SIGKILL`) and replaced, and its
    /// job fails with [`Error::TaskTimedOut`] naming the range. A range is
    /// [`chunk_size`](Self::chunk_size) elements of a map (by default about
    /// `len / (16 × workers)`), or one `apply`: the deadline covers all the
    /// tasks of a range together, not each task, so 100 tasks of 20 ms in one
    /// range overrun a 1 s timeout. Set `chunk_size(1)` for a deadline per
    /// element. The deadline is checked every `timeout / 8` (at least every
    /// 50 ms). A timeout too large for the clock (`Duration::MAX`) is no
    /// limit. It is wall-clock time: a range that a busy machine leaves
    /// unscheduled runs out of it too, so leave headroom. A worker killed
    /// from outside that has exited is a death, not a timeout, even if its
    /// death is reported only after its range passed the deadline: its range
    /// is retried ([`max_retries`](Self::max_retries)). A worker that stands
    /// still for the timeout between two ranges of a job (stopped after it
    /// claimed a range, before starting it) is killed too; its job fails
    /// with `TaskTimedOut { range: None, .. }`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::builder()
    ///     .workers(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// let stuck = pool.apply(0u8, |x| {
    ///     while x == 0 {
    ///         std::hint::spin_loop(); // runs forever
    ///     }
    ///     x
    /// });
    /// assert!(matches!(stuck, Err(shmpool::Error::TaskTimedOut { .. })));
    /// assert_eq!(pool.apply(2u8, |x| x * 2)?, 4); // a fresh worker
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many times a range whose worker died is run again before its job
    /// fails with [`Error::WorkerDied`] (default: 1). Ranges that ran past
    /// the task timeout are not retried.
    ///
    /// Each try runs on a worker started after the range was lost (the dead
    /// worker's replacement, or a later one), never on one of the workers
    /// that were running then: a range lost to something workers accumulate
    /// (a leak that reached [`worker_memory_limit`](Self::worker_memory_limit))
    /// would kill them too. If no new worker takes it within half a second
    /// (none can be started, or they are busy), any worker may; so may a
    /// range lost while 8 others of its job wait to run again (it is held
    /// back until one of its slot's 8 retry entries is free).
    ///
    /// ```
    /// use std::{fs::File, process};
    /// // Dies the first time it runs for `tag` (it leaves a mark first).
    /// fn flaky(tag: u32) -> u32 {
    ///     let mark = std::env::temp_dir().join(format!("flaky-{tag}"));
    ///     if File::create_new(&mark).is_ok() {
    ///         process::abort();
    ///     }
    ///     tag
    /// }
    /// let tag = process::id();
    /// # let mark = std::env::temp_dir().join(format!("flaky-{tag}"));
    /// # let _ = std::fs::remove_file(&mark);
    /// let pool = shmpool::Pool::builder().workers(1).max_retries(1).build()?;
    /// assert_eq!(pool.apply(tag, flaky)?, tag); // the second try, on a new worker
    /// # let _ = std::fs::remove_file(&mark);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// A function each worker runs once, after it is forked and before its
    /// first task (replacements included); never in the parent. If it
    /// panics, or its worker dies in it (a crash, an `exit`), the pool is
    /// unusable: every job fails with [`Error::InitializerFailed`]. It is
    /// not under [`task_timeout`](Self::task_timeout): an initializer that
    /// never returns keeps every job waiting (a wait with a timeout, or
    /// [`Pool::terminate`], ends that).
    ///
    /// It is also where a worker's process settings go. For one: workers
    /// start as `SCHED_BATCH` jobs when the thread that builds the pool runs
    /// under the ordinary policy (a woken worker does not preempt a busy
    /// thread; design.md, "Workers are batch jobs"); an initializer that
    /// calls `sched_setscheduler(0, SCHED_OTHER, ..)` gives them ordinary
    /// wake-up preemption back.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// static READY: AtomicU32 = AtomicU32::new(0);
    /// fn init() {
    ///     READY.store(7, Ordering::Relaxed);
    /// }
    /// let pool = shmpool::Pool::builder().workers(2).initializer(init).build()?;
    /// assert_eq!(pool.apply(0u32, |_| READY.load(Ordering::Relaxed))?, 7);
    /// assert_eq!(READY.load(Ordering::Relaxed), 0, "not in the parent");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn initializer(mut self, init: fn()) -> Self {
        self.initializer = Some(init);
        self
    }

    /// Replaces each worker with a fresh process after it has run `n` ranges
    /// (Python's `maxtasksperchild`; default 0: never). Useful against tasks
    /// that leak. Recycled workers are reaped and counted in
    /// [`Stats::workers_recycled`](crate::Stats::workers_recycled).
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().workers(1).max_tasks_per_worker(1).build()?;
    /// let first = pool.apply(0u32, |_| std::process::id())?;
    /// let second = pool.apply(0u32, |_| std::process::id())?;
    /// assert_ne!(first, second); // one range each, then a fresh process
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn max_tasks_per_worker(mut self, n: usize) -> Self {
        self.max_tasks_per_worker = n;
        self
    }

    /// Caps the memory each worker may map beyond what it inherits at start
    /// (the shared region, the parent's image), with `RLIMIT_AS`. A task that
    /// allocates past it kills only its own worker; the job fails with
    /// [`Error::MemoryLimit`] (after [`max_retries`](Self::max_retries) more
    /// tries, each on a new worker), and the pool carries on. It holds without
    /// `/proc` too (chroots, minimal containers): a worker then measures
    /// what it maps by probing. [`build`](Self::build) fails with
    /// `Error::Io` if `RLIMIT_AS` cannot be set at all (a filter refuses
    /// `setrlimit`).
    ///
    /// ```
    /// // Leaks `mib` MiB, one MiB at a time.
    /// fn leak(mib: u32) -> u32 {
    ///     for _ in 0..mib {
    ///         std::mem::forget(vec![1u8; 1 << 20]);
    ///     }
    ///     mib
    /// }
    /// let pool = shmpool::Pool::builder()
    ///     .workers(1)
    ///     .worker_memory_limit(64 << 20)
    ///     .max_retries(0)
    ///     .build()?;
    /// assert_eq!(pool.apply(8, leak)?, 8);
    /// let err = pool.apply(1024, leak).unwrap_err();
    /// assert!(matches!(err, shmpool::Error::MemoryLimit { limit, .. } if limit == 64 << 20));
    /// assert_eq!(pool.apply(8, leak)?, 8); // a fresh worker
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn worker_memory_limit(mut self, bytes: usize) -> Self {
        self.worker_memory_limit = Some(bytes);
        self
    }

    /// Elements per claimed range in maps (`map`, `map_chunks` and the other
    /// numeric forms, reductions). Default: automatic, about 16 ranges per
    /// worker (`len / (16 × workers)` elements), claimed dynamically; large
    /// ranges end on page boundaries of the output. 0 is refused by
    /// [`build`](Self::build).
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().workers(2).chunk_size(4).build()?;
    /// // Each range writes its own length: 10 elements are ranges of 4, 4 and 2.
    /// let lens = pool.map_chunks(&[0u32; 10], |inp: &[u32], out: &mut [u32]| {
    ///     out.fill(inp.len() as u32)
    /// })?;
    /// assert_eq!(lens, vec![4, 4, 4, 4, 4, 4, 4, 4, 2, 2]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn chunk_size(mut self, elements: usize) -> Self {
        self.chunk_size = Some(elements);
        self
    }

    /// Guided scheduling for maps without a [`chunk_size`](Self::chunk_size):
    /// each claim takes a share of what is left (`remaining / (2 ×
    /// workers)`), so ranges start large and shrink to `1 / (16 × workers)`
    /// of the job. Fewer claims than the default; better when the expensive
    /// elements come last, worse when they come first (measured in
    /// `benches/tuning.rs`). Reductions always use fixed ranges.
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().workers(2).guided(true).build()?;
    /// // Each range writes its own length.
    /// let lens = pool.map_chunks(&[0u32; 1024], |inp: &[u32], out: &mut [u32]| {
    ///     out.fill(inp.len() as u32)
    /// })?;
    /// assert_eq!(lens[0], 256); // 1024 / (2 × 2): a quarter of the job
    /// assert_eq!(lens[1023], 32); // 1024 / (16 × 2): the smallest
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn guided(mut self, on: bool) -> Self {
        self.guided = on;
        self
    }

    /// Maps whose output is at least `bytes` long write it with streaming
    /// (non-temporal) stores, which skip reading each output line into the
    /// cache before overwriting it: a large map then moves two streams
    /// through memory instead of three, which makes memory-bound maps over
    /// large arrays markedly faster (`benches/compare.rs`). They also leave the output out of the
    /// cache, a loss when it would have fit and is read soon after.
    ///
    /// Default: the size of the last-level cache, read from sysfs, where the
    /// crossover was measured, but at most 32 MiB (and 32 MiB when unknown):
    /// a larger cache is shared by many cores, and streaming won from 16 MiB
    /// on a guest that reports a 480 MiB L3 (plain stores won at 16 MiB on
    /// one with a real 32 MiB L3). `usize::MAX` turns streaming off. Only
    /// x86-64 streams; elsewhere this does nothing. In-place maps and
    /// reductions never stream. The same threshold applies to inputs staged
    /// from a plain slice and to [`Pool::to_shm`]: those copies stream too,
    /// so their data starts out of cache.
    pub fn stream_stores_from(mut self, bytes: usize) -> Self {
        self.stream_from = Some(bytes);
        self
    }

    /// Lets the calling thread of a blocking call (`map`, `map_into`,
    /// `apply`, the numeric maps, reductions) run ranges of its own job while
    /// it would otherwise wait, in its own process. Default: off.
    ///
    /// **This gives up isolation for those ranges**: a segfault, an `abort`,
    /// a stack overflow, a runaway loop or a leak in `f` then happens in the
    /// caller's process, which is what the pool exists to prevent. (A panic
    /// is still caught and returned as `Error::TaskPanicked`, unless the
    /// program is built with `panic = "abort"`.) Inside such a task, as in a
    /// worker, pool calls return `WouldDeadlock`. What it buys:
    /// a job of one range runs without waking any worker, so a small `map`
    /// or an `apply` returns in a fraction of the time; large jobs gain a
    /// worker's worth of compute only if a core is idle (`benches/tuning.rs`
    /// measures both). Asynchronous calls never
    /// run in the caller.
    ///
    /// [`build`](Self::build) refuses it together with `task_timeout`,
    /// `worker_memory_limit` or an `initializer`: none of them can hold for
    /// ranges that run in the caller.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::builder().workers(2).caller_runs(true).build()?;
    /// // One range: the caller runs it, in its own process.
    /// assert_eq!(pool.apply(0u32, |_| std::process::id())?, std::process::id());
    /// let timed = shmpool::Pool::builder().caller_runs(true).task_timeout(Duration::from_secs(1));
    /// assert!(matches!(timed.build(), Err(shmpool::Error::InvalidArgument { .. })));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn caller_runs(mut self, on: bool) -> Self {
        self.caller_runs = on;
        self
    }

    /// Creates the shared region, forks the template process and starts the
    /// workers.
    ///
    /// # Errors
    /// `InvalidArgument` for zero workers (or more than 1024), a ring size
    /// of 0 or more than 1024, an arena size that overflows the address
    /// space, a chunk size of 0, a task timeout of zero, `caller_runs`
    /// together with `task_timeout`, `worker_memory_limit` or an
    /// `initializer`, or when called inside a task; `Io` when
    /// `worker_memory_limit` cannot be enforced (`RLIMIT_AS` cannot be set),
    /// and when the region, the supervisor thread or the processes cannot
    /// be created: past the process limit (`EAGAIN`), past the descriptor
    /// limit (`EMFILE`: each worker needs one), an arena larger than
    /// `RLIMIT_AS` allows (kind `OutOfMemory`, with a message that names the
    /// limit). A pool is built with all its workers or not at all: on error,
    /// whatever was started is killed and reaped. The result thread starts
    /// with the first asynchronous job.
    ///
    /// ```
    /// use shmpool::{Error, Pool};
    ///
    /// let pool = Pool::builder().workers(3).build()?;
    /// assert_eq!(pool.worker_pids().len(), 3); // every worker is running
    /// let refused = Pool::builder().workers(2).chunk_size(0).build();
    /// assert!(matches!(refused, Err(Error::InvalidArgument { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        if in_task() {
            return Err(Error::invalid(
                "a pool cannot be created inside a task (or a pool worker)",
            ));
        }
        let workers = self.workers.unwrap_or_else(default_workers);
        if workers > MAX_WORKERS {
            return Err(Error::invalid(format!(
                "{workers} workers requested, at most {MAX_WORKERS} are supported"
            )));
        }
        if self.chunk_size == Some(0) {
            return Err(Error::invalid("the chunk size must be at least 1"));
        }
        if self.caller_runs
            && (self.task_timeout.is_some()
                || self.worker_memory_limit.is_some()
                || self.initializer.is_some())
        {
            return Err(Error::invalid(
                "caller_runs cannot be combined with task_timeout, worker_memory_limit or an \
                 initializer: ranges run by the caller could not honour them",
            ));
        }
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("the task timeout must be longer than zero"));
        }
        if self.worker_memory_limit.is_some() {
            limits::can_cap_address_space().map_err(|e| {
                Error::Io(io::Error::new(
                    e.kind(),
                    format!("worker_memory_limit cannot be enforced: RLIMIT_AS cannot be set: {e}"),
                ))
            })?;
        }
        let ring = self.ring_size.unwrap_or((4 * workers).clamp(256, MAX_RING));
        // The shared heap's writable alias, if the program installed the
        // heap: mapped once, before the default arena is sized (it takes
        // address space too) and before the template is forked (which
        // inherits it; design.md, "The shared heap and the pool").
        crate::heap::writable_alias();
        let layout = match self.arena_size {
            Some(arena) => Layout::new(workers, ring, arena)?,
            None => within_file_size_limit(Layout::new(workers, ring, default_arena_size())?)?,
        };
        // Looks at the stdio locks while the region is created; under
        // `RLIMIT_AS`, once it is mapped: in glibc a new thread's first
        // allocations reserve a 64 MiB heap for an instant while the room
        // allows one, and a reservation that overlapped the mapping failed it
        // (`ENOMEM` under a 100 MiB limit, one `Pool::new` in ten).
        let early = limits::address_space_limit()
            .is_none()
            .then(StdioProbe::start);
        let region = Region::create(layout).map_err(|e| explain_map_failure(e, layout.len))?;
        let stdio = early.unwrap_or_else(StdioProbe::start);
        let cpus = limits::cpus();
        region.control().sem.set_wake_cap(wake_cap(cpus));
        let worker = WorkerConfig {
            spin: self.spin,
            spinners: spinners(cpus),
            initializer: self.initializer,
            max_tasks: self.max_tasks_per_worker as u64,
            memory_limit: self.worker_memory_limit,
            timed: self.task_timeout.is_some(),
            // Decided at the fork (`Template::fork`).
            flush_stdout: false,
        };
        let config = Config {
            worker,
            task_timeout: self.task_timeout,
            max_retries: self.max_retries,
            memory_limit: self.worker_memory_limit,
            chunk_size: self.chunk_size,
            guided: self.guided,
            stream_from: self.stream_from,
            caller_runs: self.caller_runs,
        };
        let inner = Arc::new(Core::new(region, config)?);
        // A descriptor for each worker's pidfd, and three for the template
        // (its pidfd and a socket pair, one end of which is closed after the
        // fork): without them, fail before anything is forked.
        os::descriptors_available(inner.done_fd(), workers + 3)?;
        // The one fork of this (possibly multi-threaded) process: every worker
        // is forked by the single-threaded template, the first `workers` of
        // them at once.
        let template = Template::fork(
            &inner.region,
            inner.done_fd(),
            worker,
            stdio,
            PanicHook::Own,
            workers,
        )?;
        let supervisor = supervisor::start(inner.clone(), template)?;
        // The result thread starts with the first asynchronous job
        // (`Core::submit`).
        Ok(Pool {
            inner,
            supervisor: Some(supervisor),
        })
    }
}

/// The default number of workers: one per CPU the process may use
/// (`available_parallelism`), but at most `MAX_WORKERS`: on a machine with
/// more CPUs, a pool built with the defaults (and `shmpool::global()`)
/// would otherwise be refused.
fn default_workers() -> usize {
    workers_for(thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The default number of workers on `cpus` CPUs.
fn workers_for(cpus: usize) -> usize {
    cpus.clamp(1, MAX_WORKERS)
}

/// How many idle workers may spin on `cpus` CPUs: one per CPU, so that
/// spinners never queue for a CPU behind the workers with work or the
/// caller; none on a single CPU, where a spinning worker could only see a
/// job once the caller that submits it had been switched out.
fn spinners(cpus: usize) -> usize {
    if cpus > 1 { cpus } else { 0 }
}

/// How many sleeping workers one job's post wakes at most on `cpus` CPUs:
/// one per CPU, and two on a single CPU, where a pool of two workers
/// otherwise paid a second wake-up for every job (one relayed by the first
/// worker: 14 → 24 µs for a 16-element map). Workers that take a range and
/// leave more behind wake the rest, one by one (`Semaphore::relay`).
fn wake_cap(cpus: usize) -> u32 {
    u32::try_from(cpus.max(2)).unwrap_or(u32::MAX)
}

/// Half the physical memory, but at most half of what the process's memory
/// cgroup allows, at least 64 MiB and at most 1 TiB; and at most half of
/// the address space the process may still map (`RLIMIT_AS`), so that its
/// own allocations and threads and its workers' keep the other half. Under
/// that limit the 64 MiB floor gives way (down to 1 MiB): address space is
/// what the limit counts, and an arena that took more than half left too
/// little for the pool's own threads (a bare `EAGAIN` from the first
/// `map_async` under `ulimit -v 74000`).
fn default_arena_size() -> usize {
    let mut size = os::physical_memory() / 2;
    if let Some(limit) = limits::memory_cgroup().and_then(|c| c.limit()) {
        size = size.min(limit / 2);
    }
    size = size.clamp(64 << 20, 1 << 40);
    if let Some(room) = limits::address_space_room() {
        size = size.min(room / 2).max(1 << 20);
    }
    size as usize
}

/// `layout`, with its arena shrunk so that the region fits this process's
/// file size limit (`RLIMIT_FSIZE`, `ulimit -f`), if it is finite: the
/// region is one file, and sizing a file past the limit is refused (and
/// would send `SIGXFSZ`). The header stays; a limit that leaves no room
/// for 1 MiB of arena leaves the layout as it is, to fail with the error
/// that names the limit.
fn within_file_size_limit(layout: Layout) -> Result<Layout, Error> {
    let Some(limit) = os::file_size_limit() else {
        return Ok(layout);
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let room = limit.saturating_sub(layout.arena_off) / LINE * LINE;
    if layout.len <= limit || room < 1 << 20 {
        return Ok(layout);
    }
    Layout::new(layout.workers, layout.ring, room)
}

/// Turns a failed mapping of the region (`ENOMEM`), or a refused size
/// (`EFBIG` under a file size limit), into an error that says which limit
/// it ran into and how to size the arena; other errors pass.
fn explain_map_failure(e: Error, region: usize) -> Error {
    let Error::Io(os_error) = e else {
        return e;
    };
    let mib = |b: u64| b >> 20;
    if os_error.raw_os_error() == Some(os::errno::EFBIG) {
        if let Some(limit) = os::file_size_limit() {
            let message = format!(
                "the pool's {} MiB of shared memory (one file) exceed the file size limit \
                 (RLIMIT_FSIZE, `ulimit -f`) of {} MiB: build with a Builder::arena_size \
                 a few MiB below it, or raise the limit",
                mib(region as u64),
                mib(limit)
            );
            return Error::Io(io::Error::new(
                io::ErrorKind::FileTooLarge,
                LimitError {
                    message,
                    source: os_error,
                },
            ));
        }
    }
    if os_error.raw_os_error() != Some(os::errno::ENOMEM) {
        return Error::Io(os_error);
    }
    let message = match limits::address_space_limit() {
        Some(limit) => {
            let mapped = os::mapped_bytes();
            let room = mapped.map(|m| limit.saturating_sub(m));
            let mut m = format!(
                "cannot map the pool's {} MiB of shared memory: the address-space limit \
                 (RLIMIT_AS, `ulimit -v`) is {} MiB",
                mib(region as u64),
                mib(limit)
            );
            let fits = room.filter(|&room| region as u64 <= room);
            let full_map = limits::map_count().filter(|&(count, max)| count + 2 >= max);
            if let (Some(_), Some((count, max))) = (fits, full_map) {
                m += &format!(
                    ", which it fits, but the process has {count} mappings, at the kernel's \
                     limit (vm.max_map_count = {max}): unmap some, or raise that limit"
                );
            } else if let Some(room) = fits {
                m += &format!(
                    "; it fits the {} MiB left now: another thread held the room for an \
                     instant (glibc reserves 64 MiB for each thread's first allocations; \
                     MALLOC_ARENA_MAX=1 stops that), so building the pool again may succeed",
                    mib(room)
                );
            } else if let (Some(mapped), Some(room)) = (mapped, room) {
                m += &format!(
                    ", of which this process maps {} MiB; build with \
                     Builder::arena_size at most {} MiB (about half of the {} MiB left, so \
                     that tasks can still allocate), or raise the limit",
                    mib(mapped),
                    mib(room / 2),
                    mib(room)
                );
            } else {
                m += "; build with a smaller Builder::arena_size, or raise the limit";
            }
            m
        }
        None => format!(
            "cannot map the pool's {} MiB of shared memory: the address space is exhausted \
             (or the mapping count, vm.max_map_count); build with a smaller \
             Builder::arena_size",
            mib(region as u64)
        ),
    };
    Error::Io(io::Error::new(
        io::ErrorKind::OutOfMemory,
        LimitError {
            message,
            source: os_error,
        },
    ))
}

/// An operating-system error with an explanation of the limit behind it.
#[derive(Debug)]
struct LimitError {
    message: String,
    source: io::Error,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.source)
    }
}

impl std::error::Error for LimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_fits_any_machine() {
        assert_eq!(workers_for(1), 1);
        assert_eq!(workers_for(64), 64);
        assert_eq!(workers_for(MAX_WORKERS), MAX_WORKERS);
        // More CPUs than a pool may have workers: the most it may have,
        // not a refused build.
        assert_eq!(workers_for(4 * MAX_WORKERS), MAX_WORKERS);
        assert!(default_workers() <= MAX_WORKERS);
    }

    #[test]
    fn spinning_and_waking_follow_the_cpus() {
        assert_eq!(spinners(1), 0, "nobody spins on one CPU");
        assert_eq!(spinners(2), 2);
        assert_eq!(spinners(64), 64);
        assert_eq!(wake_cap(1), 2);
        assert_eq!(wake_cap(2), 2);
        assert_eq!(wake_cap(48), 48);
    }
}
