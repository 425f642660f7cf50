//! `Pool` and its `Builder`: the public face.

use std::mem::{align_of, size_of};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytemuck::Pod;

use crate::builder::Builder;
use crate::element::Element;
use crate::error::Error;
use crate::input::AsyncInput;
use crate::input::sealed::Source;
use crate::parent::core::{
    CLOSED, Core, OPEN, STOP_GRACEFUL, STOP_KILL, STOP_NONE, TERMINATED, lock,
};
use crate::parent::place::Keep;
use crate::parent::ring::{Deliver, InlineData, Job, Loc, Out, RawOut, Spec, Waiter};
use crate::result::{AsyncResult, Cell, in_callback};
use crate::shm::region::{Alloc, Fresh};
use crate::shmvec::ShmVec;
use crate::stats::{Profile, Stats};
use crate::worker::job::{CAPTURE_MESSAGE, RunFn, assert_no_captures, run_map, run_map_with};
use crate::worker::{in_task, run_as_caller};

/// Default scheduling: about this many fixed ranges per worker, claimed
/// dynamically. 16 rather than 4: a map whose first tenth costs 100 times
/// more ran 1.8× faster, uniform and memory-bound maps the same
/// (`benches/tuning.rs`).
const CHUNKS_PER_WORKER: usize = 16;
/// Guided ranges (`Builder::guided`): the smallest is about
/// `1 / (this × workers)` of the job; the first about `1 / (2 × workers)`.
const GUIDED_MIN_PER_WORKER: usize = 16;
/// Ranges whose output is at least this large end on page boundaries.
const PAGE_CHUNK_FROM: usize = 64 << 10;
/// The largest alignment an arena block can guarantee (the region is page
/// aligned).
pub(crate) const MAX_ALIGN: usize = 4096;
/// By default, outputs smaller than this are never streamed.
const STREAM_FLOOR: usize = 1 << 20;
/// By default, outputs this large are always streamed, however large the
/// last-level cache sysfs reports. A cache that large is a whole socket's,
/// shared with every other core (and, in a virtual machine, with other
/// guests): on a 2-vCPU guest whose sysfs reports a 480 MiB L3, `x*x`
/// streamed ran 0.61-0.75× plain at 32 MiB of output and 0.69-0.71× at
/// 128 MiB, and a staging copy of 128 MiB 0.62-0.69×. It also won at 16 MiB
/// there (0.71-0.80×), but plain stores won at 16 MiB on a guest with a
/// real 32 MiB L3, so the cap stays at 32 MiB.
const STREAM_CAP: usize = 32 << 20;
/// The longest job, in elements (only a slice of a zero-sized type comes
/// near it: 2^48 bytes is 256 TiB). Claims add `chunk` (at most the
/// length) to a `u64` counter, once per range and once more per visit that
/// finds nothing left, so the counter stays far from wrapping; near
/// `u64::MAX` it wrapped, handing ranges out again forever.
const MAX_JOB_LEN: usize = 1 << 48;

/// The default streaming threshold: the size of the largest CPU cache, read
/// once from sysfs, but at most `STREAM_CAP` (and `STREAM_CAP` when
/// unknown). Streaming stores win once the output no longer fits in the
/// part of that cache the program can count on (measured: `x*x` into 16 MiB
/// of output ran 641 µs plain, 755 µs streamed; into 32 MiB, 2016 µs plain,
/// 1786 µs streamed, with a 32 MiB L3).
fn stream_threshold() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| threshold_for(crate::os::largest_cache()))
}

/// The default streaming threshold for a largest cache of `cache` bytes.
fn threshold_for(cache: Option<usize>) -> usize {
    cache.map_or(STREAM_CAP, |c| c.min(STREAM_CAP))
}

/// A pool of forked worker processes that map and apply functions over
/// plain-old-data in shared memory.
///
/// Python's `multiprocessing.Pool`, without pickling or pipes: inputs and
/// outputs are [`bytemuck::Pod`] values in a shared arena, and each task runs
/// in a process of its own, so a crash, an `abort` or a runaway allocation in
/// it cannot take the caller down.
///
/// Tasks are fn items or closures that capture nothing (they must already be
/// in the binary when the workers are forked); state reaches them through a
/// `Pod` context ([`map_with`](Self::map_with)) or a read-only table
/// ([`map_shared`](Self::map_shared)). Capturing closures are a compile
/// error, reported by `cargo build` (not by `cargo check`), naming the call:
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(2).unwrap();
/// let k = 3.0;
/// // error[E0080]: evaluation panicked: shmpool: this task captures variables, ...
/// // note: the above error was encountered while instantiating `fn Pool::map::<..>`
/// let _ = pool.map(&[1.0f64, 2.0], move |x| x * k);
/// ```
///
/// The fix is to pass `k` in:
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let k = 3.0;
/// let ys = pool.map_with(k, &[1.0f64, 2.0], |k, x| x * k)?;
/// assert_eq!(ys, vec![3.0, 6.0]);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// A `Pool` is `Send + Sync`: many threads may call it at once. Dropping it
/// terminates and reaps the workers; [`ShmVec`]s it produced stay valid.
///
/// # Example
/// ```
/// use shmpool::Pool;
///
/// let pool = Pool::new(4)?;
/// let inputs: Vec<i64> = (0..100).collect();
/// let outputs = pool.map(&inputs, |x| x * x)?;
/// pool.close();
/// pool.join()?;
/// assert_eq!(outputs[99], 9801);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Pool {
    pub(crate) inner: Arc<Core>,
    /// The supervisor thread, joined on drop (with the result thread, if
    /// an asynchronous job started it).
    pub(crate) supervisor: Option<JoinHandle<()>>,
}

/// Where a job writes its results.
pub(crate) enum Output {
    /// A new block, which becomes the caller's `ShmVec`.
    New(Alloc),
    /// Memory the caller borrows mutably for the job's life (`map_into`):
    /// an arena block of this pool, or a slice of the shared heap; and its
    /// length in bytes.
    At(Loc, usize),
    /// The input itself (`map_in_place`), of this many bytes.
    Input(usize),
}

/// Where a job's inputs beyond the first two are, in the descriptor's
/// `more` words (`map3`'s second and third inputs, or a table's offset and
/// length), and the staged blocks the job owns for them.
#[derive(Default)]
pub(crate) struct More {
    pub(crate) words: [u64; 2],
    pub(crate) holds: [Option<Alloc>; 2],
}

/// A job ready to submit: where its pieces are, and who waits for it.
pub(crate) struct Parts {
    pub(crate) len: usize,
    pub(crate) sched: Schedule,
    pub(crate) run: RunFn,
    pub(crate) input: (Loc, Option<Alloc>),
    /// Inputs beyond the first two (`map3`'s, a table).
    pub(crate) more: More,
    pub(crate) ctx: Option<(Loc, Option<Alloc>)>,
    pub(crate) out: Output,
    pub(crate) inline: InlineData,
    pub(crate) waiter: Waiter,
}

/// How a job's ranges are claimed and its outputs written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) chunk: usize,
    /// Guided claims of at least `chunk` (maps), or fixed ranges of `chunk`.
    pub(crate) guided: bool,
    /// Streaming stores for the output (`Builder::stream_stores_from`).
    pub(crate) stream: bool,
}

impl Schedule {
    /// Fixed ranges of `chunk`, plain stores.
    pub(crate) fn fixed(chunk: usize) -> Schedule {
        Schedule {
            chunk,
            guided: false,
            stream: false,
        }
    }
}

/// The default range size: about `CHUNKS_PER_WORKER` ranges per worker;
/// large ranges end on page boundaries of the output.
fn default_chunk(len: usize, workers: usize, out_size: usize) -> usize {
    chunk_of(len, workers * CHUNKS_PER_WORKER, out_size)
}

/// `len / parts`, rounded up, ending on page boundaries of the output when
/// that is large.
fn chunk_of(len: usize, parts: usize, out_size: usize) -> usize {
    let per = len.div_ceil(parts.max(1)).max(1);
    if out_size == 0 || per.saturating_mul(out_size) < PAGE_CHUNK_FROM {
        return per;
    }
    per.next_multiple_of((MAX_ALIGN / out_size).max(1))
}

pub(crate) fn check_align<T>() -> Result<(), Error> {
    if align_of::<T>() > MAX_ALIGN {
        return Err(Error::invalid(format!(
            "types aligned to more than {MAX_ALIGN} bytes cannot live in shared memory"
        )));
    }
    Ok(())
}

fn byte_len<T>(len: usize) -> Result<usize, Error> {
    len.checked_mul(size_of::<T>()).ok_or_else(|| {
        Error::invalid(format!(
            "{len} elements of {} bytes overflow",
            size_of::<T>()
        ))
    })
}

/// Gives a `map` outcome its type.
pub(crate) fn into_vec<U: Pod>(raw: RawOut, len: usize) -> ShmVec<U> {
    raw.into_vec(len)
}

/// Gives an `apply` outcome its type.
fn into_value<U: Pod>(raw: RawOut, _len: usize) -> U {
    match raw {
        RawOut::Bytes(bytes) => bytemuck::pod_read_unaligned(&bytes[..size_of::<U>()]),
        RawOut::Empty => U::zeroed(),
        RawOut::Block(block) => block.read_value(),
    }
}

impl Pool {
    /// A pool of `workers` processes with default settings.
    ///
    /// # Errors
    /// As [`Builder::build`]; `InvalidArgument` for 0 workers.
    ///
    /// ```
    /// assert!(shmpool::Pool::new(0).is_err());
    /// let pool = shmpool::Pool::new(2)?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn new(workers: usize) -> Result<Pool, Error> {
        Pool::builder().workers(workers).build()
    }

    /// A [`Builder`] with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// The process ids of the current workers (replacements included; empty
    /// once the pool is joined or terminated).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(3)?;
    /// assert_eq!(pool.worker_pids().len(), 3);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.inner.procs)
            .workers
            .iter()
            .flatten()
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// A counters snapshot.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// pool.map(&[1u32, 2, 3], |x| x + 1)?;
    /// let failed = pool.apply(0u32, |x| if x == 0 { panic!("zero") } else { x });
    /// assert!(failed.is_err());
    /// let s = pool.stats();
    /// assert_eq!((s.jobs_submitted, s.jobs_completed, s.jobs_failed), (2, 1, 1));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        let (arena_capacity, arena_in_use) = self.inner.region.arena_usage();
        // ORDERING: Acquire, in the opposite order of the counting
        // (`Core::submit`, `Core::count`, `Core::cancel`: submitted, then
        // completed or failed, then profiled or cancelled, each Release
        // after the one before), so that the snapshot adds up: no more
        // jobs profiled than completed, cancelled than failed, or finished
        // than submitted, whatever other threads do meanwhile.
        let jobs_profiled = c.jobs_profiled.load(Acquire);
        let jobs_cancelled = c.jobs_cancelled.load(Acquire);
        let jobs_completed = c.jobs_completed.load(Acquire);
        let jobs_failed = c.jobs_failed.load(Acquire);
        let jobs_submitted = c.jobs_submitted.load(Acquire);
        // ORDERING: Relaxed: statistics.
        Stats {
            jobs_submitted,
            jobs_completed,
            jobs_failed,
            bytes_staged: c.bytes_staged.load(Relaxed),
            jobs_cancelled,
            worker_restarts: c.worker_restarts.load(Relaxed),
            workers_recycled: c.workers_recycled.load(Relaxed),
            arena_capacity,
            arena_in_use,
            profile: Profile {
                jobs: jobs_profiled,
                staging: Duration::from_nanos(c.staging_ns.load(Relaxed)),
                dispatch: Duration::from_nanos(c.dispatch_ns.load(Relaxed)),
                compute: Duration::from_nanos(c.compute_ns.load(Relaxed)),
                completion: Duration::from_nanos(c.completion_ns.load(Relaxed)),
            },
        }
    }

    /// A zeroed vector of `len` values in shared memory.
    ///
    /// # Errors
    /// `OutOfSharedMemory` when the arena has no room; `InvalidArgument` when
    /// the size overflows or `T` is aligned to more than a page, or in a
    /// process forked from the pool's owner; `WouldDeadlock` from inside a
    /// task.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let v = pool.alloc_zeroed::<u32>(1000)?;
    /// assert!(v.iter().all(|&x| x == 0));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn alloc_zeroed<T: Element>(&self, len: usize) -> Result<ShmVec<T>, Error> {
        let mut block = self.alloc::<T>(len)?;
        block.zero();
        Ok(block.into_vec(len))
    }

    /// Copies `data` into a new vector in shared memory.
    ///
    /// # Errors
    /// As [`alloc_zeroed`](Self::alloc_zeroed).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let v = pool.to_shm(&[1u8, 2, 3])?;
    /// assert_eq!(v, vec![1, 2, 3]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn to_shm<T: Element>(&self, data: &[T]) -> Result<ShmVec<T>, Error> {
        Ok(self.copy_to_arena(data)?.into_vec(data.len()))
    }

    pub(crate) fn alloc<T: Pod>(&self, len: usize) -> Result<Fresh, Error> {
        if in_task() {
            return Err(Error::WouldDeadlock {
                reason: "a task allocated from the pool that runs it",
            });
        }
        if !self.inner.in_owner() {
            return Err(Error::invalid(
                "a pool was used in a forked copy of the process that built it",
            ));
        }
        check_align::<T>()?;
        self.inner
            .region
            .alloc(byte_len::<T>(len)?, align_of::<T>())
    }

    /// `f` applied to every element, in parallel across the workers; the
    /// results in a new [`ShmVec`], in input order. Blocks until done.
    ///
    /// If `input` lies in this pool's shared memory (a [`ShmVec`] of this
    /// pool or a slice of one) or in the shared heap
    /// ([`SharedHeap`](crate::SharedHeap)), workers read it in place;
    /// otherwise (a plain slice, a `ShmVec` of another pool) it is copied in
    /// once (counted in [`Stats::bytes_staged`]).
    ///
    /// # What a task is
    /// `f` runs in a worker process, forked from this one when the pool was
    /// built. It must be a fn item or a closure that captures nothing of
    /// size (a compile error otherwise); state reaches it as a `Pod` context
    /// ([`map_with`](Self::map_with)) or a shared table
    /// ([`map_indexed`](Self::map_indexed)). A closure that captures only
    /// zero-sized values compiles, but the worker makes its own copy of
    /// them from nothing: **captures are copied bytes, and a zero-sized
    /// value proves nothing across the process boundary**. A capability
    /// token (a zero-sized type whose constructor initialised something)
    /// says nothing about the worker, where that constructor never ran if
    /// it ran after the pool was built. The same holds for statics: a task
    /// sees them as they were when the pool was built (the workers' fork),
    /// never later changes, and a [`ShmVec`] reached through one panics
    /// (see [`ShmVec`]'s "One process only").
    ///
    /// # Errors
    /// `TaskPanicked` if `f` panicked, `WorkerDied` if a worker died while
    /// running it (in both cases the rest of the job is skipped, and the pool
    /// stays usable); `TaskTimedOut` and `MemoryLimit` past the builder's
    /// [`task_timeout`](Builder::task_timeout) and
    /// [`worker_memory_limit`](Builder::worker_memory_limit); `HeapWrite`
    /// for a task that wrote the shared heap; `InitializerFailed` once the
    /// pool's initializer failed; `OutOfSharedMemory`; `Closed` if the pool
    /// was closed or terminated before the call, `Terminated` if it was
    /// terminated while the job ran; `Corrupted` if a worker left the job's
    /// shared words impossible; `WouldDeadlock` from inside a task (or for a
    /// task blocked forever on a lock it inherited locked);
    /// `InvalidArgument` in a process forked from the pool's owner, for a
    /// type aligned to more than a page, or for more than 2^48 elements.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs = vec![1.0f64, 4.0, 9.0];
    /// assert_eq!(pool.map(&xs, f64::sqrt)?, vec![1.0, 2.0, 3.0]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map<T, U, F>(&self, input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Element,
        U: Element,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.map_unchecked(input, f)
    }

    /// [`map`](Self::map) without its compile-time check on `f`,
    /// for callers that made it themselves (one error per mistake).
    pub(crate) fn map_unchecked<T, U, F>(&self, input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Element,
        U: Element,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        self.prologue(f)?;
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let run: RunFn = run_map::<T, U, F>;
        let placed = self.place_input(input)?;
        let waiter = Waiter::Sync;
        let (slot, seq) =
            self.submit_map::<U>(input.len(), placed, run, None, InlineData::new(), waiter)?;
        Ok(into_vec(self.inner.wait_sync(slot, seq)?, input.len()))
    }

    /// Like [`map`](Self::map), with a context value that every call of `f`
    /// receives by reference: the way to pass state to a task.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// use bytemuck::{Pod, Zeroable};
    /// # // The derive macros, from bytemuck_derive: the workspace leaves
    /// # // bytemuck's `derive` feature off so that building an example does not
    /// # // build syn (see Cargo.toml, [workspace]). Should the feature come back,
    /// # // this line fails with E0252 (`Pod` defined twice), which is the point.
    /// # use bytemuck_derive::{Pod, Zeroable};
    ///
    /// #[derive(Clone, Copy, Pod, Zeroable)]
    /// #[repr(C)]
    /// struct Affine { a: f64, b: f64 }
    ///
    /// let pool = shmpool::Pool::new(2)?;
    /// let ys = pool.map_with(Affine { a: 2.0, b: 1.0 }, &[0.0, 1.0, 2.0], |c, x: f64| c.a * x + c.b)?;
    /// assert_eq!(ys, vec![1.0, 3.0, 5.0]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_with<C, T, U, F>(&self, ctx: C, input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        C: Element,
        T: Element,
        U: Element,
        F: Fn(&C, T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let mut inline = InlineData::new();
        let ctx = self.place_value(&ctx, &mut inline)?;
        let run: RunFn = run_map_with::<C, T, U, F>;
        let placed = self.place_input(input)?;
        let (slot, seq) =
            self.submit_map::<U>(input.len(), placed, run, Some(ctx), inline, Waiter::Sync)?;
        Ok(into_vec(self.inner.wait_sync(slot, seq)?, input.len()))
    }

    /// `out[i] = f(input[i])`, written into an existing slice: no output is
    /// allocated, so a loop that maps into the same buffer again and again
    /// touches no new pages. The `&mut` borrow keeps the caller from reading
    /// `out` while workers write it.
    ///
    /// Workers write `out` in place when it lies in this pool's shared memory
    /// (a [`ShmVec`] of this pool) or in the shared heap ([`SharedHeap`]).
    /// Any other slice (a plain `Vec`, a `ShmVec` of another pool) is
    /// *staged*: the job writes a block of this pool's arena, which is then
    /// copied into `out` (counted in [`Stats::bytes_staged`]), so the result
    /// is always right.
    ///
    /// If the job fails, an `out` written in place holds a mix of old and new
    /// values; a staged `out` is left as it was.
    ///
    /// [`SharedHeap`]: crate::SharedHeap
    ///
    /// # Errors
    /// `InvalidArgument` if the lengths differ; otherwise as
    /// [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs = pool.to_shm(&[1.0f64, 2.0, 3.0])?;
    /// let mut out = pool.alloc_zeroed::<f64>(3)?;
    /// for _ in 0..3 {
    ///     pool.map_into(&xs, &mut out, |x| x * x)?; // written in place
    /// }
    /// assert_eq!(out, vec![1.0, 4.0, 9.0]);
    /// let mut plain = vec![0.0f64; 3];
    /// pool.map_into(&xs, &mut plain, |x| x + 1.0)?; // staged, copied back
    /// assert_eq!(plain, vec![2.0, 3.0, 4.0]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_into<T, U, F>(&self, input: &[T], out: &mut [U], f: F) -> Result<(), Error>
    where
        T: Element,
        U: Element,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if input.len() != out.len() {
            return Err(Error::invalid(format!(
                "map_into: the input has {} elements, the output {}",
                input.len(),
                out.len()
            )));
        }
        if input.is_empty() {
            return Ok(());
        }
        let len = input.len();
        let placed = self.place_input(input)?;
        self.write_through(out, false, |at| {
            let sched = self.schedule_for::<U>(len);
            self.submit_parts(Parts {
                len,
                sched,
                run: run_map::<T, U, F>,
                input: placed,
                more: More::default(),
                ctx: None,
                out: Output::At(at, len * size_of::<U>()),
                inline: InlineData::new(),
                waiter: Waiter::Sync,
            })
        })
    }

    /// Runs a blocking job that writes `out` (as `submit` says, given where
    /// to write), in place if workers can reach `out`, else through a staged
    /// arena block that is copied back into `out` once the job succeeded
    /// (and filled from `out` first if `copy_in`: an in-place map reads it).
    pub(crate) fn write_through<U: Pod>(
        &self,
        out: &mut [U],
        copy_in: bool,
        submit: impl FnOnce(Loc) -> Result<(usize, u64), Error>,
    ) -> Result<(), Error> {
        if let Some(at) = self.place_output(out) {
            let (slot, seq) = submit(at)?;
            return self.inner.wait_sync(slot, seq).map(drop);
        }
        let bytes = size_of_val(out);
        let block = if copy_in {
            self.copy_to_arena(&*out)?.into_alloc()
        } else {
            self.alloc::<U>(out.len())?.into_alloc()
        };
        // The block outlives the job: `wait_sync` returns only once no
        // worker can write it any more (a failed job is drained first).
        let (slot, seq) = submit(Loc::Arena(block.off()))?;
        self.inner.wait_sync(slot, seq)?;
        // Written by the finished job; no worker touches it any more.
        block.read_into(out);
        // ORDERING: Relaxed: statistics.
        let copied = if copy_in { 2 * bytes } else { bytes };
        self.inner
            .stats
            .bytes_staged
            .fetch_add(copied as u64, Relaxed);
        Ok(())
    }

    /// Starts a [`map`](Self::map) and returns at once with an
    /// [`AsyncResult`].
    ///
    /// The job owns its input, so the caller may do anything with its own
    /// data meanwhile, and the result is `'static` (it can be spawned on an
    /// executor). A borrowed input (`&[T]`, `&Vec<T>`, `&ShmVec<T>`) is
    /// copied into shared memory once; a [`ShmVec`] of this pool moved in is
    /// read in place (one of another pool is copied, then dropped). See
    /// [`AsyncInput`](crate::AsyncInput).
    ///
    /// Python's `map_async(f, xs, callback=cb)` is
    /// `pool.map_async(&xs, f)?.on_complete(cb)`: a result with a callback
    /// may be dropped, and the callback still runs with the real outcome.
    /// **Dropping a result with no callback cancels its job** (nobody could
    /// see its outcome); [`detach`](AsyncResult::detach) it to let it run.
    ///
    /// # Errors
    /// `OutOfSharedMemory`, `Closed`, `WouldDeadlock` from inside a task;
    /// `InitializerFailed` once the pool's initializer failed;
    /// `InvalidArgument` in a process forked from the pool's owner, for a
    /// type aligned to more than a page, or for more than 2^48 elements;
    /// `Io` if this is the pool's first asynchronous job and its result
    /// thread cannot be started (`EAGAIN` past the process limit; a later
    /// call tries again). Task errors arrive through the `AsyncResult`.
    ///
    /// **A `ShmVec` moved in is dropped with the error**: the call took it
    /// by value and has nothing to give it back in. To keep your data when
    /// the pool may refuse the job (closed, out of shared memory), pass a
    /// reference (`&vec`, copied once) instead of the vector.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs = pool.to_shm(&[1u32, 2, 3])?;
    /// let pending = pool.map_async(xs, |x| x + 1)?; // moved in: no copy
    /// let ys = futures::executor::block_on(pending)?;
    /// assert_eq!(ys, vec![2, 3, 4]);
    ///
    /// // Fire and forget, with a callback (the result is dropped at once).
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.map_async(&[1u32, 2], |x| x * 2)?
    ///     .on_complete(move |out| tx.send(out.as_ref().map(|v| v.to_vec()).ok()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), Some(vec![2, 4]));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_async<'a, I, T, U, F>(&self, input: I, f: F) -> Result<AsyncResult<ShmVec<U>>, Error>
    where
        I: AsyncInput<'a, Elem = T>,
        T: Element,
        U: Element + Send,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.map_async_unchecked(input, f)
    }

    /// [`map_async`](Self::map_async) without its compile-time check on `f`,
    /// for callers that made it themselves (one error per mistake).
    pub(crate) fn map_async_unchecked<'a, I, U, F>(
        &self,
        input: I,
        f: F,
    ) -> Result<AsyncResult<ShmVec<U>>, Error>
    where
        I: AsyncInput<'a>,
        I::Elem: Element,
        U: Element + Send,
        F: Fn(I::Elem) -> U + Copy + Send + Sync + 'static,
    {
        self.prologue(f)?;
        let (len, placed, keep) = match input.source() {
            Source::Copy(slice) => (slice.len(), self.stage(slice)?, None),
            Source::Own(owned) => (owned.len(), self.take_input(owned)?, None),
            Source::Vec(vec) => {
                let len = vec.len();
                let (placed, keep) = self.take_vec(vec)?;
                (len, placed, keep)
            }
        };
        let cell = Arc::new(Cell::new(into_vec::<U>, len));
        let ticket = if len == 0 {
            cell.deliver(Ok(RawOut::Empty));
            None
        } else {
            let out = self.alloc::<U>(len)?.into_alloc();
            let parts = Parts {
                len,
                sched: self.schedule_for::<U>(len),
                run: run_map::<I::Elem, U, F>,
                input: placed,
                more: More::default(),
                ctx: None,
                out: Output::New(out),
                inline: InlineData::new(),
                waiter: Waiter::Async(cell.clone()),
            };
            Some(self.submit_keeping(parts, keep)?)
        };
        Ok(AsyncResult::new(cell, self.inner.clone(), ticket))
    }

    /// `f(arg)`, run in one worker. Blocks until done.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// assert_eq!(pool.apply(7u64, |x| x.pow(3))?, 343);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn apply<T, U, F>(&self, arg: T, f: F) -> Result<U, Error>
    where
        T: Element,
        U: Element,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        let (slot, seq) = self.submit_apply::<T, U>(&arg, run_map::<T, U, F>, Waiter::Sync)?;
        Ok(into_value(self.inner.wait_sync(slot, seq)?, 1))
    }

    /// Starts `f(arg)` in one worker and returns at once with an
    /// [`AsyncResult`].
    ///
    /// As with [`map_async`](Self::map_async), a result with a callback
    /// ([`on_complete`](AsyncResult::on_complete)) may be dropped and the
    /// callback still runs; **dropping a result with no callback cancels the
    /// job** unless it was [`detach`](AsyncResult::detach)ed.
    ///
    /// # Errors
    /// As [`map_async`](Self::map_async).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let pending: Vec<_> = (0..10u32).map(|i| pool.apply_async(i, |x| x * 2)).collect::<Result<_, _>>()?;
    /// let doubled: Vec<u32> = pending.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(doubled[9], 18);
    ///
    /// // Python's apply_async(f, (x,), callback=cb):
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.apply_async(20u32, |x| x + 1)?.on_complete(move |out| tx.send(*out.as_ref().unwrap()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), 21);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn apply_async<T, U, F>(&self, arg: T, f: F) -> Result<AsyncResult<U>, Error>
    where
        T: Element,
        U: Element + Send,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.apply_async_unchecked(arg, f)
    }

    /// [`apply_async`](Self::apply_async) without its compile-time check on `f`,
    /// for callers that made it themselves (one error per mistake).
    pub(crate) fn apply_async_unchecked<T, U, F>(
        &self,
        arg: T,
        f: F,
    ) -> Result<AsyncResult<U>, Error>
    where
        T: Element,
        U: Element + Send,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        self.prologue(f)?;
        let cell = Arc::new(Cell::new(into_value::<U>, 1));
        let ticket =
            self.submit_apply::<T, U>(&arg, run_map::<T, U, F>, Waiter::Async(cell.clone()))?;
        Ok(AsyncResult::new(cell, self.inner.clone(), Some(ticket)))
    }

    /// What every task-taking call checks first: that `f` captures nothing
    /// (checked at compile time by the public entry point, `CAPTURE_MESSAGE`;
    /// here again at run time, at no cost), and that the pool accepts work
    /// from here.
    pub(crate) fn prologue<F>(&self, f: F) -> Result<(), Error> {
        assert_no_captures::<F>();
        // `f` is zero-sized: the worker conjures its own copy.
        let _ = f;
        self.inner.check_open()
    }

    /// Submits a map over `len` elements whose input is already placed.
    fn submit_map<U: Pod>(
        &self,
        len: usize,
        input: (Loc, Option<Alloc>),
        run: RunFn,
        ctx: Option<(Loc, Option<Alloc>)>,
        inline: InlineData,
        waiter: Waiter,
    ) -> Result<(usize, u64), Error> {
        let out = self.alloc::<U>(len)?.into_alloc();
        let sched = self.schedule_for::<U>(len);
        self.submit_parts(Parts {
            len,
            sched,
            run,
            input,
            more: More::default(),
            ctx,
            out: Output::New(out),
            inline,
            waiter,
        })
    }

    /// The fixed claim size of a job over `len` elements producing `U`s:
    /// the pool's `chunk_size`, or about 16 ranges per worker
    /// (`CHUNKS_PER_WORKER`).
    pub(crate) fn chunk_for<U>(&self, len: usize) -> usize {
        match self.inner.config.chunk_size {
            Some(c) => c.min(len).max(1),
            None => default_chunk(len, self.inner.workers, size_of::<U>()),
        }
    }

    /// The scheduling of a map over `len` elements producing `U`s: fixed
    /// ranges of the pool's `chunk_size` if it has one; guided ranges of at
    /// least `len / (16 × workers)` if the pool is `guided`; else fixed
    /// ranges, about 16 per worker. Outputs of at least the pool's
    /// streaming threshold are streamed.
    pub(crate) fn schedule_for<U>(&self, len: usize) -> Schedule {
        let config = &self.inner.config;
        let (chunk, guided) = match config.chunk_size {
            Some(c) => (c.min(len).max(1), false),
            None if config.guided => {
                let parts = self.inner.workers * GUIDED_MIN_PER_WORKER;
                (chunk_of(len, parts, size_of::<U>()), true)
            }
            None => (self.chunk_for::<U>(len), false),
        };
        Schedule {
            chunk,
            guided,
            stream: self.streams(len.saturating_mul(size_of::<U>())),
        }
    }

    /// Whether `bytes` of output (or of a staged input) are written with
    /// streaming stores (`Builder::stream_stores_from`).
    pub(crate) fn streams(&self, bytes: usize) -> bool {
        match self.inner.config.stream_from {
            Some(from) => bytes >= from,
            // No cache worth streaming past is smaller: skip the lookup.
            None => bytes >= STREAM_FLOOR && bytes >= stream_threshold(),
        }
    }

    /// Submits a job whose pieces are placed.
    pub(crate) fn submit_parts(&self, p: Parts) -> Result<(usize, u64), Error> {
        self.submit_keeping(p, None)
    }

    /// [`submit_parts`](Self::submit_parts), with a value the job keeps alive
    /// until it is harvested.
    pub(crate) fn submit_keeping(&self, p: Parts, keep: Keep) -> Result<(usize, u64), Error> {
        if p.len > MAX_JOB_LEN {
            return Err(Error::invalid(format!(
                "a job of {} elements: at most 2^48 are supported (a longer \
                 slice of a zero-sized type can be split, or its index space \
                 mapped in parts)",
                p.len
            )));
        }
        let (in_loc, staged) = p.input;
        let (ctx_loc, ctx_block) = p.ctx.unwrap_or((self.nowhere(), None));
        // Never more than the length: claims add `chunk` to a counter, which
        // must not wrap (a reduction's partition is the same either way).
        let chunk = p.sched.chunk.clamp(1, p.len.max(1));
        let in_place = matches!(p.out, Output::Input(_));
        let (output, out, written) = match p.out {
            Output::New(block) => (Loc::Arena(block.off()), Out::Block(block), 0),
            Output::At(loc, bytes) => (loc, Out::Nothing, bytes),
            Output::Input(bytes) => (in_loc, Out::Nothing, bytes),
        };
        // The only heap pages a worker may write for this job.
        let window = match output {
            Loc::Heap(off) => [off, written as u64],
            _ => [0, 0],
        };
        let spec = Spec {
            run: p.run as usize,
            input: in_loc,
            output,
            ctx: ctx_loc,
            len: p.len as u64,
            chunk: chunk as u64,
            more: p.more.words,
            window,
            guided: p.sched.guided,
            stream: p.sched.stream && !in_place,
            inline: p.inline,
        };
        // A blocking caller that runs ranges takes one itself: a job of one
        // range wakes no worker at all.
        let helps = self.inner.config.caller_runs && matches!(p.waiter, Waiter::Sync);
        let [more_b, more_c] = p.more.holds;
        let holds = [staged, ctx_block, more_b, more_c];
        let mut job = Job::new(p.len as u64, out, holds, p.waiter);
        job.retryable = !in_place;
        job._keep = keep;
        let ranges = p.len.div_ceil(chunk).saturating_sub(usize::from(helps));
        let tokens = ranges.min(self.inner.workers) as u32;
        let (slot, seq) = self.inner.submit(&spec, job, tokens)?;
        if helps {
            run_as_caller(&self.inner.region, slot, &spec);
        }
        Ok((slot, seq))
    }

    fn submit_apply<T: Pod, U: Pod>(
        &self,
        arg: &T,
        run: RunFn,
        waiter: Waiter,
    ) -> Result<(usize, u64), Error> {
        check_align::<T>()?;
        check_align::<U>()?;
        let mut inline = InlineData::new();
        let (input, staged) = self.place_value(arg, &mut inline)?;
        let (output, out) = match inline.reserve(size_of::<U>(), align_of::<U>()) {
            Some(rel) => (
                Loc::Inline(rel),
                Out::Inline {
                    rel,
                    size: size_of::<U>(),
                },
            ),
            None => {
                let block = self.alloc::<U>(1)?.into_alloc();
                (Loc::Arena(block.off()), Out::Block(block))
            }
        };
        let spec = Spec {
            run: run as usize,
            input,
            output,
            ctx: self.nowhere(),
            len: 1,
            chunk: 1,
            more: [0; 2],
            window: [0; 2],
            guided: false,
            stream: false,
            inline,
        };
        let helps = self.inner.config.caller_runs && matches!(waiter, Waiter::Sync);
        let job = Job::new(1, out, [staged, None, None, None], waiter);
        let (slot, seq) = self.inner.submit(&spec, job, u32::from(!helps))?;
        if helps {
            run_as_caller(&self.inner.region, slot, &spec);
        }
        Ok((slot, seq))
    }

    /// Stops accepting work. Jobs already submitted still run; later
    /// submissions fail with `Error::Closed`. From inside a task, or in a
    /// process forked from the pool's owner, it does nothing (like
    /// [`terminate`](Self::terminate)).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// pool.close();
    /// assert!(matches!(pool.apply(1u8, |x| x), Err(shmpool::Error::Closed)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn close(&self) {
        if self.inner.in_owner() {
            self.inner.advance_life(CLOSED);
        }
    }

    /// After [`close`](Self::close) (or [`terminate`](Self::terminate)):
    /// waits until every submitted job is complete and its callbacks have run
    /// (a cancelled job's too), and every [`imap`](Self::imap) stream created
    /// before `close` is exhausted or dropped; then lets the workers exit and
    /// reaps them. Callbacks registered on a result that had already
    /// completed run in the registering thread and are not waited for.
    ///
    /// A stream that is never iterated to its end nor dropped (forgotten
    /// with `mem::forget`, or held by the joining thread after another
    /// thread iterated it) keeps `join` waiting: after `terminate`, from any
    /// thread, `join` no longer waits for streams (their jobs fail with
    /// `Terminated`) and returns.
    ///
    /// # Errors
    /// `InvalidArgument` if the pool is still open; `WouldDeadlock` from a
    /// completion callback (on any thread), from a task, or from the thread
    /// that created or last iterated an unfinished stream of this pool (only
    /// the iterating thread can finish the stream: finish or drop it first).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.apply_async(1u8, |x| x + 1)?;
    /// pool.close();
    /// pool.join()?;
    /// assert!(r.ready());
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        if !self.inner.in_owner() || self.inner.on_result_thread() || in_callback() {
            return Err(Error::WouldDeadlock {
                reason: "join() waits for the callbacks of the thread or process that called it",
            });
        }
        if self.inner.life() == OPEN {
            return Err(Error::invalid(
                "join() called before close() or terminate()",
            ));
        }
        self.inner.wait_idle()?;
        // ORDERING: SeqCst: read by the supervisor after we poke it.
        let _ = self
            .inner
            .stop
            .compare_exchange(STOP_NONE, STOP_GRACEFUL, SeqCst, SeqCst);
        self.inner.poke_supervisor();
        self.inner.wait_workers_gone();
        Ok(())
    }

    /// Kills every worker now (`SIGKILL`) and reaps them. Outstanding jobs
    /// complete with `Error::Terminated`; later submissions fail with
    /// `Error::Closed`.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let pids = pool.worker_pids();
    /// pool.terminate();
    /// assert!(pool.worker_pids().is_empty());
    /// # let _ = pids;
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn terminate(&self) {
        if self.inner.in_owner() {
            self.shut_down();
        }
    }

    /// What `terminate` does, in the process that owns the pool.
    fn shut_down(&self) {
        self.inner.advance_life(TERMINATED);
        // ORDERING: SeqCst: read by the supervisor after we poke it.
        self.inner.stop.store(STOP_KILL, SeqCst);
        self.inner.kill_workers();
        self.inner.poke_supervisor();
        self.inner.wait_workers_gone();
        self.inner.poke_result_thread();
    }
}

impl Drop for Pool {
    /// Terminates and reaps the workers and stops the pool's threads.
    /// Outstanding jobs complete with `Error::Terminated`.
    fn drop(&mut self) {
        if !self.inner.in_owner_process() {
            // A worker's copy of a pool, or one in a process forked from the
            // owner: its threads and workers belong to the owner.
            // The result thread's handle stays in `inner` untouched: its lock
            // may have been held by another thread of the forking process.
            std::mem::forget(self.supervisor.take());
            return;
        }
        // In the owner, even in a task the caller runs for another pool
        // (`caller_runs`, a pool kept in a static): this is the pool itself,
        // not a copy, and nothing else will end its workers and threads. It
        // cannot be the pool running that task (the caller borrows it).
        self.shut_down();
        let me = thread::current().id();
        // From such a task the result thread is let go, not joined: one of
        // its callbacks may be waiting for the job this thread is running
        // (a `map` of the other pool). It ends by itself once its last
        // callback returns, the workers being gone.
        let results = lock(&self.inner.results).take().filter(|_| !in_task());
        for handle in self.supervisor.take().into_iter().chain(results) {
            // A callback may drop the last handle on the result thread itself;
            // that thread exits once it returns.
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.inner.life() {
            OPEN => "open",
            CLOSED => "closed",
            _ => "terminated",
        };
        f.debug_struct("Pool")
            .field("workers", &self.inner.workers)
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_streaming_threshold_is_the_cache_at_most_32_mib() {
        assert_eq!(threshold_for(Some(8 << 20)), 8 << 20);
        assert_eq!(threshold_for(Some(32 << 20)), 32 << 20);
        assert_eq!(threshold_for(Some(480 << 20)), 32 << 20);
        assert_eq!(threshold_for(None), 32 << 20);
    }

    #[test]
    fn chunks_balance_and_align() {
        assert_eq!(default_chunk(64, 2, 8), 2);
        assert_eq!(default_chunk(1, 4, 8), 1);
        assert_eq!(default_chunk(100, 4, 4), 2);
        let big = default_chunk(16 << 20, 2, 8);
        assert_eq!(big % 512, 0, "large ranges end on page boundaries");
        assert!(big >= (16 << 20) / 32);
        assert_eq!(default_chunk(10, 1, 0), 1);
    }

    #[test]
    fn pool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pool>();
        check::<ShmVec<f64>>();
        fn send<T: Send>() {}
        send::<AsyncResult<ShmVec<f64>>>();
        send::<AsyncResult<u32>>();
    }
}
