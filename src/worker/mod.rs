//! The worker process: what a forked child runs until it is told to stop or
//! its parent dies.
//!
//! A worker never returns into the code that forked it and never runs the
//! parent's destructors: it ends with `_exit`. It touches no parent-side lock
//! (a lock another parent thread held at the moment of the fork stays locked
//! forever in the child); it reads the region through the layout it was
//! forked with and allocates only to format a panic message (glibc's malloc
//! is fork-safe).
//!
//! The slot protocol (publish, claim and run, count, complete, harvest,
//! drain, retries) is written out, with its named events and a proof sketch,
//! in `README.md` in this directory; the `// ORDERING:` comments below cite
//! those events.
//!
//! Uses `unsafe` (denied at the crate root): a worker calls a job's
//! type-erased trampoline, and its `SIGABRT` hook marks its record through a
//! raw pointer.

#![allow(unsafe_code)]

pub(crate) mod heap_view;
pub(crate) mod job;
pub(crate) mod stream;
pub(crate) mod template;

use std::any::Any;
use std::cell::Cell;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::panic::{self, AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use crate::os;
use crate::parent::ring::Spec;
use crate::shm::atomic::AtomicU32;
use crate::shm::futex;
use crate::shm::layout::{ErrorRecord, LOC_CAP, MSG_CAP, RetryEntry, Slot, WorkerRecord};
use crate::shm::region::Region;
use crate::shm::registry;
use crate::shm::states::*;
use crate::worker::job::{BadDescriptor, JobArgs, Memory, RunFn};

/// How long an idle worker sleeps before it checks that its parent is alive
/// (belt and braces: the parent-death signal normally kills it first).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// True in worker processes only.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Marks this process as a worker (or the template): pool calls in it fail.
pub(crate) fn set_in_worker() {
    // ORDERING: Relaxed: see `in_worker`.
    IN_WORKER.store(true, Relaxed);
}

/// Whether user code of a task is running on this thread: in a worker, or
/// in a caller running ranges of its own job (`Builder::caller_runs`). Pool
/// calls from a task fail with `WouldDeadlock` either way, so a task behaves
/// the same wherever it runs (a `join` from a task the caller runs would
/// wait for the job that thread itself is running). Drops are the
/// exception (`Core::in_owner_process`): in the caller they drop the real
/// pool, result or stream, in a worker a copy.
pub(crate) fn in_task() -> bool {
    in_worker() || RUNNING_RANGES.try_with(Cell::get).unwrap_or(false)
}

/// Whether this process is a pool worker.
pub(crate) fn in_worker() -> bool {
    // ORDERING: Relaxed: set once, before any task runs, in a process whose
    // only thread then reads it.
    IN_WORKER.load(Relaxed)
}

/// The pool's settings that shape a worker's life (from the `Builder`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkerConfig {
    pub(crate) spin: u32,
    /// How many idle workers may spin: the CPUs the pool may run on. Only
    /// the workers with the last `spinners` indices spin.
    pub(crate) spinners: usize,
    /// Runs once in each worker before its first task.
    pub(crate) initializer: Option<fn()>,
    /// Ranges a worker runs before it exits to be replaced; 0 for no limit.
    pub(crate) max_tasks: u64,
    /// Extra address space a worker may map (`RLIMIT_AS`).
    pub(crate) memory_limit: Option<usize>,
    /// Whether ranges are timed (the pool has a task timeout).
    pub(crate) timed: bool,
    /// Whether the worker may flush stdout: its lock was free when the
    /// template was forked (`Template::fork`). Otherwise a thread that no
    /// longer exists may hold it, and a flush would block forever.
    pub(crate) flush_stdout: bool,
}

/// Everything a worker needs, copied into the child by `fork`.
pub(crate) struct WorkerCtx<'a> {
    pub(crate) region: &'a Region,
    pub(crate) index: usize,
    /// The supervisor's number for this worker: 0 for the template's first
    /// workers, else the count of workers it had asked for, this one
    /// included. A retry kept for workers from number `after` on
    /// (`RetryEntry::after`) is not this worker's to take if `born < after`.
    pub(crate) born: u32,
    pub(crate) event_fd: BorrowedFd<'a>,
    /// The process that forked this worker (the template).
    pub(crate) parent: u32,
    pub(crate) config: WorkerConfig,
}

/// The running job of one slot visit, as the worker read it once on entry
/// (`enter`), and what the visit has done so far.
struct JobView<'a> {
    slot: &'a Slot,
    /// The slot's index.
    index: u32,
    args: JobArgs,
    run: usize,
    len: u64,
    /// Elements per claim, clamped to the job.
    chunk: u64,
    /// Guided claims (`FLAG_GUIDED`).
    guided: bool,
    /// The pool's workers (for guided claims and the relay).
    workers: u64,
    notify: u32,
    /// Whether this visit has marked the worker in the slot's visitors.
    visited: Cell<bool>,
    /// Whether this visit will still relay the wake-up (once, and only when
    /// the pool has more workers than a post wakes).
    relay: Cell<bool>,
    /// Whether this visit ran user code (a range not skipped).
    ran: Cell<bool>,
}

/// The entry point of a freshly forked worker. Never returns.
pub(crate) fn worker_main(ctx: WorkerCtx<'_>) -> ! {
    // Our own code does not panic; if it ever did, the worker must still end
    // here, with `_exit`, rather than unwind into the parent's stack frames.
    let code = catch_unwind(AssertUnwindSafe(|| serve(&ctx))).unwrap_or(EXIT_BUG);
    os::exit_now(code)
}

fn serve(ctx: &WorkerCtx<'_>) -> i32 {
    // Let whoever waits for this CPU go first. A worker's start (about
    // 100 µs, mostly page faults) is on no one's critical path, while the
    // template forking the next worker and the parent that a report woke
    // onto this CPU are (the template reports the first workers after the
    // last one's fork; a replacement, right after its own); the scheduler
    // often picked the new process before the parent (the seed example
    // 2-4% faster against its processes alone, in interleaved runs).
    std::thread::yield_now();
    set_in_worker();
    if !os::worker_process_setup(ctx.parent) {
        return 0;
    }
    // SAFETY: the worker ends with `_exit` and, of what it inherited, uses
    // only the region's mapping and its event fd: the `OwnedFd`s that
    // shmpool's own frames inherited are never dropped (those frames never
    // return). A task that drops a `File` it reaches through a `static`
    // closes whatever number that is by then, as it would after any
    // `close_range`: the documented limit of what a task may do with
    // inherited descriptors (design.md, "Fork safety").
    unsafe { os::close_fds_except(&[ctx.event_fd]) };
    registry::unmap_others(ctx.region.base() as usize);
    let control = ctx.region.control();
    let rec = ctx.region.record(ctx.index);
    // A request to retire was meant for the worker this one replaces, and
    // a range it was running is not ours.
    // ORDERING: Relaxed: only this worker acts on `retire`; the parent may
    // set it again at any time. `in_range` was cleared by the supervisor
    // when the worker replaced died (a scribbled value only delays a
    // Drain until this store is seen).
    rec.retire.store(0, Relaxed);
    rec.in_range.store(NO_SLOT, Relaxed);
    // Even: no claim held (the worker replaced may have died holding one).
    // ORDERING: Relaxed: as `in_range`.
    rec.steps.store(0, Relaxed);
    // A task that writes the shared heap (read-only here) fails its job
    // with a typed error.
    heap_view::install(&rec.oom);
    if let Some(limit) = ctx.config.memory_limit {
        install_abort_handler(&rec.oom);
        let Some(cap) = os::limit_address_space(limit) else {
            // `Builder::build` checked that the limit can be set; a worker
            // that cannot set it must not run tasks unlimited.
            return EXIT_BUG;
        };
        // ORDERING: Relaxed: read by the handler in this thread.
        AS_CAP.store(cap, Relaxed);
        // ORDERING: Relaxed: as above.
        AS_SLACK.store(limit as u64 / 8, Relaxed);
    }
    if let Some(init) = ctx.config.initializer {
        // ORDERING: Relaxed: the supervisor reads it after the process is
        // gone.
        rec.init.store(INIT_MARK, Relaxed);
        let outcome = catch_unwind(init);
        flush_stdout(&ctx.config);
        if let Err(payload) = outcome {
            let message = payload_message(&*payload);
            let location = take_panic_location();
            write_error(
                &control.init_err,
                KIND_PANIC,
                0,
                0,
                &message,
                location.as_deref(),
            );
            std::mem::forget(payload);
            return EXIT_INIT_FAILED;
        }
    }
    // ORDERING: Relaxed: as above.
    rec.init.store(0, Relaxed);
    let budget = match ctx.config.max_tasks {
        0 => u64::MAX,
        n => n,
    };
    // Idle workers spin only as many as the pool has CPUs: more spinners
    // than CPUs take the CPUs from the workers that have work and from the
    // caller (a 16-element map's round trip went from 1.7 µs to tens of µs
    // with 64 workers on 2 CPUs). The workers with the last `spinners`
    // indices spin; the others sleep at once.
    let workers = ctx.region.layout().workers;
    let idle_spin = if ctx.index.saturating_add(ctx.config.spinners) >= workers {
        ctx.config.spin
    } else {
        0
    };
    // At build the template forks the workers one after another: the last
    // one spins for the first job, the others sleep at once rather than take
    // the cores from the template while it forks the rest. A replacement
    // (or a recycled worker's successor) follows the same rule: it sleeps
    // until a job's tokens wake it, which costs one wake-up at most.
    let spin = if ctx.index + 1 == workers {
        idle_spin
    } else {
        0
    };
    // A worker the supervisor asked for (a replacement, above all) looks at
    // the pending slots before it first sleeps: a retry kept for workers
    // started after its range was lost waits for it (`may_take`), and the
    // tokens posted for the retry went to the workers that were there.
    let look_first = ctx.born != 0;
    work(ctx, spin, idle_spin, budget, IDLE_CHECK, look_first)
}

/// The worker's life once it is set up: takes a work token (spinning
/// `spin` rounds the first time, `idle_spin` after), visits the slots whose
/// pending bits are set, and waits again, until it is told to exit or its
/// `budget` of ranges is spent. Returns its exit code. A sleep lasts at
/// most `idle_check`, after which the worker checks that its parent lives.
/// With `look_first`, it visits the pending slots once before it first
/// waits, as if woken.
pub(crate) fn work(
    ctx: &WorkerCtx<'_>,
    mut spin: u32,
    idle_spin: u32,
    mut budget: u64,
    idle_check: Duration,
    mut look_first: bool,
) -> i32 {
    let control = ctx.region.control();
    let rec = ctx.region.record(ctx.index);
    loop {
        let woken = if std::mem::take(&mut look_first) {
            true
        } else {
            let woken = control.sem.wait(spin, idle_check);
            spin = idle_spin;
            woken
        };
        // ORDERING: SeqCst: pairs with the parent's store before it posts the
        // shutdown tokens (Shutdown; `shm/README.md`).
        if control.shutdown.0.load(SeqCst) != 0 {
            return 0;
        }
        // Restore: we are in no slot, past the initializer, with no failed
        // allocation: say so again, in case another worker scribbled over
        // our record (a Drain would wait for us; a death would be misread).
        // ORDERING: SeqCst, like Announce and Leave (README.md, "Draining").
        rec.slot.store(NO_SLOT, SeqCst);
        // ORDERING: Relaxed: read by the supervisor after our death.
        rec.init.store(0, Relaxed);
        // ORDERING: Relaxed: as above.
        rec.oom.store(0, Relaxed);
        // ORDERING: Relaxed: a Drain that still reads a scribbled value
        // only waits for the next look (the kick that woke us recurs).
        rec.in_range.store(NO_SLOT, Relaxed);
        if retiring(rec) {
            return EXIT_RETIRED;
        }
        if !woken {
            if os::parent_pid() != ctx.parent {
                return 0;
            }
            continue;
        }
        while pass(ctx, &mut budget) {}
        if budget == 0 {
            return EXIT_RECYCLED;
        }
        if retiring(rec) {
            return EXIT_RETIRED;
        }
    }
}

/// Writes out what a range (or the initializer) left in stdout's buffer (a
/// `print!` without a newline), before the range counts as done: the
/// worker may be killed idle as soon as its job is, at `join` or
/// `terminate`, or exit to be replaced, and `_exit` flushes nothing. A
/// flush that blocks (a full pipe) is part of the range, as the task's own
/// printing would be. Stderr is unbuffered. An empty buffer costs a lock
/// and no system call.
fn flush_stdout(config: &WorkerConfig) {
    if config.flush_stdout {
        let _ = std::io::stdout().flush();
    }
}

/// Whether the parent asked this worker to exit and be replaced. Checked
/// between ranges: the worker then leaves its slot as after its last range
/// (`max_tasks_per_worker`), so no job loses a range to the replacement.
fn retiring(rec: &WorkerRecord) -> bool {
    // ORDERING: Relaxed: a request; a late look costs one more range.
    rec.retire.load(Relaxed) == RETIRE_MARK
}

/// The record flag the `SIGABRT` handler sets; null until installed.
static OOM_FLAG: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// The worker's address-space cap, in bytes (0: none).
static AS_CAP: AtomicU64 = AtomicU64::new(0);
/// An eighth of the memory limit: how close to the cap counts as "reached".
static AS_SLACK: AtomicU64 = AtomicU64::new(0);

/// Notes, in the worker's record, that an abort followed a failed allocation.
/// Rust aborts when an allocation fails. Two signs tell such an abort apart:
/// `errno` still holds the `ENOMEM` of the failed `mmap`/`brk` (unless a
/// backtrace was printed in between), or the address space is within an
/// eighth of the limit of the cap (a leak that crept up to it): mapping that
/// eighth, inaccessible, fails. Returning lets `abort` go on to kill the
/// process.
fn on_abort() {
    let errno = os::errno();
    // ORDERING: Relaxed: set before the handler was installed.
    let (cap, slack) = (AS_CAP.load(Relaxed), AS_SLACK.load(Relaxed));
    if errno == os::errno::ENOMEM || (cap != 0 && !os::can_map(slack)) {
        // ORDERING: Relaxed: set once before the handler can run.
        let flag = OOM_FLAG.load(Relaxed);
        if !flag.is_null() {
            // SAFETY: the pointer is this worker's record in the region,
            // mapped for the life of the process. Atomic stores are
            // async-signal-safe.
            unsafe { (*flag).store(OOM_MARK, SeqCst) };
        }
    }
}

fn install_abort_handler(flag: &AtomicU32) {
    // ORDERING: Relaxed: the handler runs in this thread.
    OOM_FLAG.store(std::ptr::from_ref(flag).cast_mut(), Relaxed);
    // `on_abort` is async-signal-safe: atomics, `errno`, `mmap`.
    os::on_abort(on_abort);
}

/// Visits every slot whose pending bit is set, once. Returns whether it ran
/// any range (then another pass may find more).
fn pass(ctx: &WorkerCtx<'_>, budget: &mut u64) -> bool {
    let ring = ctx.region.layout().ring;
    let pending = &ctx.region.control().pending.0;
    let rec = ctx.region.record(ctx.index);
    let mut did = false;
    for (w, word) in pending.iter().enumerate().take(ring.div_ceil(64)) {
        // ORDERING: Acquire: Find, pairs with the parent's Pend (Release),
        // which follows its Publish.
        let mut bits = word.load(Acquire);
        while bits != 0 {
            let s = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if *budget == 0 || retiring(rec) {
                return did;
            }
            if s < ring {
                did |= run_slot(ctx, s, budget);
            }
        }
    }
    did
}

/// Enters slot `s`, runs ranges until its claims and queued retries are
/// exhausted (or the worker's task budget is), and leaves. Returns whether
/// any range was run.
///
/// Each step is a group of the slot protocol's events (`README.md` in this
/// directory): `enter` (Announce, LookState), then rounds of `run_retries`
/// (TakeRetry, FreeRetry) and `run_claims` (Claim, Relay) until `unpend`
/// (Unpend, LookRetries) finds no retry waiting, then `leave` (Leave,
/// LookAbort). Every range runs through `run_claimed`.
fn run_slot(ctx: &WorkerCtx<'_>, s: usize, budget: &mut u64) -> bool {
    let Some(job) = enter(ctx, s) else {
        return false;
    };
    // Retries first: they are the oldest work of the job.
    while run_retries(ctx, &job, budget) && run_claims(ctx, &job, budget) && unpend(ctx, &job) {}
    leave(ctx, &job);
    job.ran.get()
}

/// Announce, LookState: puts slot `s` in this worker's record, then reads
/// the job it holds. `None`, with the record cleared again, if the slot
/// holds no running job.
fn enter<'a>(ctx: &WorkerCtx<'a>, s: usize) -> Option<JobView<'a>> {
    let region = ctx.region;
    let rec = region.record(ctx.index);
    let slot = region.slot(s);
    // ORDERING: SeqCst: Announce, before LookState (pairs with the parent's
    // Empty or Abort followed by Drain or Scan; README.md, "Draining"):
    // either the parent's scan sees us, or we see its store.
    rec.slot.store(s as u32, SeqCst);
    // ORDERING: SeqCst: LookState, the second half of that pair; it also
    // acquires the descriptor of the parent's Publish (Release).
    if slot.desc.state.load(SeqCst) != SLOT_RUNNING {
        // ORDERING: Release: we touched nothing.
        rec.slot.store(NO_SLOT, Release);
        return None;
    }
    // ORDERING: Relaxed: ordered after LookState, which acquired Publish.
    let d = &slot.desc;
    let (run, notify) = (d.run.load(Relaxed), d.notify.load(Relaxed));
    // A chunk larger than the job (scribbled) could wrap the claim counter.
    let len = d.len.load(Relaxed);
    let chunk = d.chunk.load(Relaxed).clamp(1, len.max(1));
    let workers = region.layout().workers as u64;
    Some(JobView {
        slot,
        index: s as u32,
        args: JobArgs {
            mem: Memory::here(region),
            in_off: d.in_off.load(Relaxed),
            out_off: d.out_off.load(Relaxed),
            ctx_off: d.ctx_off.load(Relaxed),
            len,
            more: [d.more[0].load(Relaxed), d.more[1].load(Relaxed)],
            window: [d.window[0].load(Relaxed), d.window[1].load(Relaxed)],
            chunk,
            stream: notify & FLAG_STREAM != 0,
        },
        run,
        len,
        chunk,
        guided: notify & FLAG_GUIDED != 0,
        workers,
        notify,
        visited: Cell::new(false),
        relay: Cell::new((region.control().sem.wake_cap() as u64) < workers),
        ran: Cell::new(false),
    })
}

/// Whether the worker must leave its slot now: its budget of ranges is
/// spent (`max_tasks_per_worker`), or the parent asked it to retire.
fn must_leave(rec: &WorkerRecord, budget: u64) -> bool {
    budget == 0 || retiring(rec)
}

/// TakeRetry, FreeRetry: runs every queued retry of the job this worker can
/// take. Returns `false` if the worker must leave the slot at once.
fn run_retries(ctx: &WorkerCtx<'_>, job: &JobView<'_>, budget: &mut u64) -> bool {
    let rec = ctx.region.record(ctx.index);
    let mine = RETRY_CLAIMED + ctx.index as u32;
    for entry in &job.slot.retries.0 {
        if must_leave(rec, *budget) {
            return false;
        }
        // ORDERING: Acquire: a first look; the exchange below decides.
        if entry.state.load(Acquire) != RETRY_READY || !may_take(ctx, entry) {
            continue;
        }
        hold(ctx, rec);
        // ORDERING: AcqRel: TakeRetry: acquires the range of the
        // supervisor's Requeue (SeqCst, so Release); the exchange makes the
        // entry ours alone, and names us as its owner.
        if entry
            .state
            .compare_exchange(RETRY_READY, mine, AcqRel, Relaxed)
            .is_err()
        {
            hold(ctx, rec);
            continue;
        }
        // ORDERING: Relaxed: ordered by the exchange above.
        let (start, end) = (entry.start.load(Relaxed), entry.end.load(Relaxed));
        if start < end && end <= job.len {
            if run_claimed(ctx, job, start, end) {
                job.ran.set(true);
            }
        } else {
            hold(ctx, rec);
            record_error(
                job.slot,
                KIND_CORRUPT,
                0,
                0,
                "a queued retry is out of bounds",
                None,
            );
        }
        *budget -= 1;
        // ORDERING: Release: FreeRetry: the entry may be reused once we are
        // done (the supervisor's Requeue acquires it).
        entry.state.store(RETRY_EMPTY, Release);
    }
    true
}

/// Whether this worker may take retry `entry`: it is open to every worker,
/// or kept for workers started after its range was lost and this is one
/// (`RetryEntry::after`). A scribbled `after` only delays the job's own
/// retry until the supervisor opens it (`Ring::open_retries`).
fn may_take(ctx: &WorkerCtx<'_>, entry: &RetryEntry) -> bool {
    // ORDERING: Relaxed: written before the entry's SeqCst READY (Requeue),
    // which the caller's Acquire load saw, or opened before a Pend
    // (Release) that this visit's Find acquired. A stale look mostly skips
    // the entry this time; only if the entry was taken, freed and queued
    // again between the caller's load and its exchange can the look read
    // the earlier use's `after` and let an older worker take a retry kept
    // for a newer one (the range still runs once: the exchange decides).
    let after = entry.after.load(Relaxed);
    after == 0 || ctx.born >= after
}

/// Claim (and Relay): claims and runs ranges until every element of the
/// job is claimed. Returns `false` if the worker must leave the slot at
/// once.
fn run_claims(ctx: &WorkerCtx<'_>, job: &JobView<'_>, budget: &mut u64) -> bool {
    let rec = ctx.region.record(ctx.index);
    loop {
        if must_leave(rec, *budget) {
            return false;
        }
        hold(ctx, rec);
        let Some((start, end)) = claim(job.slot, job.len, job.chunk, job.guided, job.workers)
        else {
            hold(ctx, rec);
            return true;
        };
        if job.relay.get() && end < job.len {
            // A post wakes no more sleepers than the pool has CPUs: with
            // more workers, pass the wake-up on, once a visit, in case this
            // range blocks and the rest need other workers (Relay; the
            // sleep protocol, `shm/README.md`).
            job.relay.set(false);
            ctx.region.control().sem.relay();
        }
        if run_claimed(ctx, job, start, end) {
            job.ran.set(true);
        }
        *budget -= 1;
    }
}

/// What a worker's look at a slot's retry entries found.
#[derive(PartialEq, Eq)]
enum Retries {
    /// A `READY` entry this worker may take.
    Mine,
    /// Only `READY` entries kept for newer workers.
    Kept,
    None,
}

/// Looks at the retry entries of `job`'s slot (LookRetries when `order` is
/// SeqCst).
fn look_retries(ctx: &WorkerCtx<'_>, job: &JobView<'_>, order: Ordering) -> Retries {
    let mut found = Retries::None;
    for e in &job.slot.retries.0 {
        // ORDERING: the caller's: Acquire for `unpend`'s first look,
        // SeqCst for LookRetries (see there).
        if e.state.load(order) == RETRY_READY {
            if may_take(ctx, e) {
                return Retries::Mine;
            }
            found = Retries::Kept;
        }
    }
    found
}

/// Unpend, LookRetries: clears the slot's pending bit once its claims are
/// exhausted, then looks at its retry entries once more. Returns whether a
/// retry this worker may take waits (the visit goes on).
///
/// A retry kept for newer workers must leave the bit set, so that the one
/// it waits for finds the slot when it starts or wakes: a first look, before
/// the clear, leaves the bit alone if it sees one (a new worker's first
/// pass never falls between our clear and our Repend then); one queued
/// after that look is seen by LookRetries, and the bit set again (Repend).
fn unpend(ctx: &WorkerCtx<'_>, job: &JobView<'_>) -> bool {
    // ORDERING: Acquire: a first look, pairing with Requeue's SeqCst store
    // (so a Release); a stale answer only sends us through the exact pair
    // below.
    match look_retries(ctx, job, Acquire) {
        Retries::Mine => return true,
        Retries::Kept => return false,
        Retries::None => {}
    }
    let s = job.index as usize;
    let word = &ctx.region.control().pending.0[s / 64];
    // ORDERING: SeqCst: Unpend, the worker's half of a Dekker pair with the
    // supervisor's Requeue then Repend: either its bit survives our clear
    // (and a token brings someone back), or LookRetries below sees its
    // entry.
    word.fetch_and(!(1u64 << (s % 64)), SeqCst);
    // ORDERING: SeqCst: LookRetries, see above.
    match look_retries(ctx, job, SeqCst) {
        Retries::Mine => true,
        Retries::Kept => {
            // ORDERING: SeqCst: as the supervisor's Repend, which this
            // restores.
            word.fetch_or(1u64 << (s % 64), SeqCst);
            false
        }
        Retries::None => false,
    }
}

/// Leave, LookAbort: clears this worker's record, then, if the job failed,
/// tells its waiters to look again (a failed job is finished once no worker
/// is left in it).
fn leave(ctx: &WorkerCtx<'_>, job: &JobView<'_>) {
    let rec = ctx.region.record(ctx.index);
    let slot = job.slot;
    // ORDERING: SeqCst: Leave (so also Release: a Drain that reads it sees
    // all our writes). Before LookAbort: pairs with the parent's Abort
    // followed by Drain: either we see the abort and wake the waiters, or
    // the parent's Drain sees us gone.
    rec.slot.store(NO_SLOT, SeqCst);
    // ORDERING: SeqCst: LookAbort, the second half of that pair.
    if slot.desc.abort.load(SeqCst) != 0 {
        futex::wake(&slot.desc.state, u32::MAX);
        if job.notify & NOTIFY_EVENT != 0 {
            os::eventfd_signal(ctx.event_fd);
        }
    }
}

/// Claims the next range of a job of `len` elements: fixed ranges of `chunk`,
/// or guided ones (a share of what is left, a multiple of `chunk`, at least
/// `chunk`). `None` once every element is claimed.
fn claim(slot: &Slot, len: u64, chunk: u64, guided: bool, workers: u64) -> Option<(u64, u64)> {
    let counter = &slot.claim.next;
    if !guided {
        // ORDERING: AcqRel: Claim: the claim counter only hands out disjoint
        // ranges; the atomicity of the RMW is what matters.
        let start = counter.fetch_add(chunk, AcqRel);
        return (start < len).then(|| (start, start.saturating_add(chunk).min(len)));
    }
    // ORDERING: Relaxed: a first guess; the exchange below decides.
    let mut start = counter.load(Relaxed);
    loop {
        if start >= len {
            return None;
        }
        let share = (len - start) / (2 * workers.max(1));
        let size = (share / chunk).max(1).saturating_mul(chunk);
        let end = start.saturating_add(size).min(len);
        // ORDERING: AcqRel: Claim, as above: the exchange alone hands out
        // `start..end`.
        match counter.compare_exchange_weak(start, end, AcqRel, Relaxed) {
            Ok(_) => return Some((start, end)),
            Err(now) => start = now,
        }
    }
}

/// Runs the range `start..end` of `job`, which this worker claimed, and
/// accounts for it: Visit (once a visit), Begin, Enter, LookRange, Run,
/// Exit, Count, and Complete for the range that completes the job
/// (README.md in this directory). Returns whether user code ran (not
/// skipped after an abort).
fn run_claimed(ctx: &WorkerCtx<'_>, job: &JobView<'_>, start: u64, end: u64) -> bool {
    let rec = ctx.region.record(ctx.index);
    let slot = job.slot;
    if !job.visited.replace(true) {
        note_visit(slot, ctx.index);
        // Before this job's first task runs here: only its own output (if
        // it lies in the heap) is writable through the heap's alias. Kept
        // open while job after job writes the same output.
        heap_view::set(job.args.window_of());
    }
    // ORDERING: Begin: Relaxed stores, then a Release store of the phase:
    // the supervisor reads them after reaping this process, or (for a
    // timeout) after an Acquire load of the phase.
    rec.start.store(start, Relaxed);
    rec.end.store(end, Relaxed);
    if ctx.config.timed {
        rec.started_ns.store(os::monotonic_ns(), Relaxed);
    }
    rec.phase.store(PHASE_RUNNING, Release);
    // The claim is recorded now; released after the phase says so, so that
    // no instant shows neither (the supervisor times a RUNNING phase as a
    // range, whatever the count).
    hold(ctx, rec);
    // ORDERING: SeqCst: Enter, before LookRange: the Dekker pair with the
    // harvest's LookDone, Empty and Scan (README.md, "Harvest"). Either the
    // harvest's Scan sees us here, or we see DONE (or EMPTY) and skip the
    // range.
    rec.in_range.store(job.index, SeqCst);
    stamp_first_claim(slot);
    // ORDERING: SeqCst: LookRange, the second half of that pair. A job that
    // is no longer RUNNING while we hold one of its ranges was finished (or
    // said so) with a range still out: a scribbled claim counter handed it
    // out twice, or a scribbled state word. Never honest.
    let live = slot.desc.state.load(SeqCst) == SLOT_RUNNING;
    // ORDERING: SeqCst: LookRange reads `abort` too: pairs with an Abort
    // (SeqCst) stored before the parent's Drain, as LookState does.
    let ran = live && slot.desc.abort.load(SeqCst) == 0;
    if ran {
        run_range(slot, &job.args, job.run, start, end);
        flush_stdout(&ctx.config);
    }
    // Until it is counted, the range is held again without a record.
    hold(ctx, rec);
    // ORDERING: Relaxed: Exit; published by the Release half of Count (or
    // of the error record), which comes after.
    rec.in_range.store(NO_SLOT, Relaxed);
    // Past the initializer: a mark a task wrote here (by mistake or on
    // purpose) must not outlive its range and make a later death look like
    // the initializer's. ORDERING: Relaxed: read by the supervisor after
    // our death.
    rec.init.store(0, Relaxed);
    // ORDERING: Release: Exit, see above.
    rec.phase.store(PHASE_IDLE, Release);
    if !live {
        // Not counted: a job that said DONE with this range out must not
        // come to add up.
        record_error(
            slot,
            KIND_MISCOUNT,
            start,
            end,
            "a claimed range found its job no longer running",
            None,
        );
        hold(ctx, rec);
        return false;
    }
    if account(slot, job.len, start, end) {
        complete(ctx, slot, job.notify);
    }
    hold(ctx, rec);
    ran
}

/// Turns this worker's hold on an unrecorded claim on or off
/// (`WorkerRecord::steps`: odd while it holds one), when the pool has a task
/// timeout. Called in pairs: before a claim (off again if it fails, or at
/// Begin, which records it), and at Exit (off once the range is counted).
fn hold(ctx: &WorkerCtx<'_>, rec: &WorkerRecord) {
    if ctx.config.timed {
        // ORDERING: Relaxed: only this worker writes the count, and the
        // supervisor only compares two readings of it (a stale one delays a
        // verdict by a tick); after our death it reads the final value.
        rec.steps
            .store(rec.steps.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// Marks worker `w` as one that ran ranges of the slot's job, before its
/// first range of a visit: if the slot is later found corrupt, the parent
/// replaces every worker marked (the one that scribbled may be among them).
fn note_visit(slot: &Slot, w: usize) {
    let Some(word) = slot.claim.visitors.get(w / 64) else {
        return;
    };
    let bit = 1u64 << (w % 64);
    // ORDERING: Relaxed: Visit. The parent reads the bitmap only once the
    // slot is drained, and our Leave (SeqCst), which its Drain loads, comes
    // after this in program order. The load spares the shared line an RMW
    // on later visits of the same job.
    if word.load(Relaxed) & bit == 0 {
        word.fetch_or(bit, Relaxed);
    }
}

/// Accounts for the range `start..end` (run or skipped) of a job of `len`
/// elements: `end - start` to `done`, `end² - start²` to `squares`. Returns
/// whether this increment completed the job. An increment that takes `done`
/// past `len` cannot be honest (every element is counted once): it fails the
/// job as corrupt, so its remaining ranges are skipped and a rewound claim
/// counter cannot keep the workers re-running ranges forever.
fn account(slot: &Slot, len: u64, start: u64, end: u64) -> bool {
    let n = end - start;
    let squares = end
        .wrapping_mul(end)
        .wrapping_sub(start.wrapping_mul(start));
    // ORDERING: Relaxed: Count, the `squares` half: published by the Release
    // half of the `done` increment below, which follows it in program
    // order; the runner that completes the job acquires every increment
    // before its Complete, and the harvest's LookDone acquires that.
    slot.counts.squares.fetch_add(squares, Relaxed);
    // ORDERING: AcqRel: Count, the `done` half: Release publishes this
    // range's output (and its `squares` term); Acquire on the increment that
    // completes the job makes every range's output visible to the runner
    // that then does Complete.
    let before = slot.counts.done.fetch_add(n, AcqRel);
    let after = before.wrapping_add(n);
    if after == len {
        return true;
    }
    if after > len || after < before {
        record_error(
            slot,
            KIND_MISCOUNT,
            start,
            end,
            "the job's done counter passed its length",
            None,
        );
    }
    false
}

/// The caller's share of a blocking job (`Builder::caller_runs`): claims and
/// runs ranges of slot `s` in this, the parent, process until none is left,
/// then returns; the caller goes on to wait for the workers' ranges.
///
/// It works from `spec`, the parent's own copy of the descriptor, not from
/// shared memory. Queued retries are left to the workers. A panic is caught
/// and fails the job, as in a worker; a crash, an abort or a runaway loop in
/// `f` is the caller's own (the trade-off `caller_runs` documents).
pub(crate) fn run_as_caller(region: &Region, s: usize, spec: &Spec) {
    let slot = region.slot(s);
    let inline_off = region.layout().inline_off(s);
    let len = spec.len;
    let chunk = spec.chunk.clamp(1, len.max(1));
    let args = JobArgs {
        mem: Memory::for_caller(region),
        in_off: spec.input.resolve(inline_off),
        out_off: spec.output.resolve(inline_off),
        ctx_off: spec.ctx.resolve(inline_off),
        len,
        more: spec.more,
        window: spec.window,
        chunk,
        stream: spec.stream,
    };
    let workers = region.layout().workers as u64;
    // Record where a task run here panics. Set here, on first use, and not
    // in `Pool::new`, which never waits for the hook's lock (design.md,
    // "Lock order across fork").
    install_caller_panic_hook();
    // Restored, not cleared, after (a task run here may itself make a
    // blocking call that runs ranges here), however this function ends.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = RUNNING_RANGES.try_with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RUNNING_RANGES.with(|r| r.replace(true)));
    // A worker rewinding the shared claim counter must not keep the parent
    // here: a correct job never hands out more than `len` elements.
    let mut claimed = 0u64;
    while let Some((start, end)) = claim(slot, len, chunk, spec.guided, workers) {
        claimed = claimed.saturating_add(end - start);
        if claimed > len {
            break;
        }
        stamp_first_claim(slot);
        // ORDERING: SeqCst: LookRange's load of `abort`, as in `run_claimed`.
        if slot.desc.abort.load(SeqCst) == 0 {
            run_range(slot, &args, spec.run, start, end);
        }
        // Count, as in `run_claimed`: the increment that completes the job
        // acquires every other range's output.
        if account(slot, len, start, end) {
            // ORDERING: Relaxed: published by the exchange below.
            slot.desc.done_ns.store(os::monotonic_ns(), Relaxed);
            // ORDERING: SeqCst: Complete: publishes the outputs to the
            // harvest's LookDone, as `complete` does. No one else waits on a
            // blocking job: its one waiter is this thread, so there is no
            // one to notify.
            let _ = slot
                .desc
                .state
                .compare_exchange(SLOT_RUNNING, SLOT_DONE, SeqCst, Relaxed);
        }
    }
}

/// Stamps the job's first claim (for `Stats::profile`), unless a runner
/// already did.
fn stamp_first_claim(slot: &Slot) {
    // ORDERING: Relaxed: a statistic, read by the harvest after LookDone
    // acquires DONE, which every runner's Count (Release) precedes.
    if slot.desc.first_claim_ns.load(Relaxed) == 0 {
        let now = os::monotonic_ns();
        // ORDERING: Relaxed, as above; the first stamp wins.
        let _ = slot
            .desc
            .first_claim_ns
            .compare_exchange(0, now, Relaxed, Relaxed);
    }
}

/// Runs one claimed range, recording a panic or a bad descriptor in the
/// slot's error record.
fn run_range(slot: &Slot, args: &JobArgs, run: usize, start: u64, end: u64) {
    if run == 0 {
        record_error(
            slot,
            KIND_CORRUPT,
            start,
            end,
            "job has no entry point",
            None,
        );
        return;
    }
    // SAFETY: the parent stored the address of a `RunFn` instantiated for
    // this job's types; function addresses are the same in the forked child.
    // (A worker that scribbled over the descriptor can make this jump
    // anywhere; that can only crash this worker, which fails its job.)
    let f: RunFn = unsafe { std::mem::transmute::<usize, RunFn>(run) };
    let (s, e) = (start as usize, end as usize);
    // A location left by an earlier panic that its task caught itself is
    // not this range's: a panic that reaches us without passing the hook
    // (`resume_unwind`) would be reported there. Only once the hook has
    // recorded one in this process: a thread-local's first use registers
    // its destructor (an allocation, and page faults, in a new worker).
    // ORDERING: Relaxed: set by the hook, on this thread for any location
    // this thread recorded.
    if PANIC_RECORDED.load(Relaxed) {
        drop(take_panic_location());
    }
    // SAFETY: see `RunFn`: the mapping is live, the trampoline matches the
    // data, and this worker alone claimed `start..end`.
    match catch_unwind(AssertUnwindSafe(|| unsafe { f(args, s, e) })) {
        Ok(Ok(())) => {}
        Ok(Err(BadDescriptor)) => match heap_view::take_window_error() {
            Some(e) => record_error(slot, KIND_IO, start, end, &e.to_string(), None),
            None => record_error(
                slot,
                KIND_CORRUPT,
                start,
                end,
                "job descriptor out of bounds",
                None,
            ),
        },
        Err(payload) => {
            let message = payload_message(&*payload);
            let location = take_panic_location();
            record_error(slot, KIND_PANIC, start, end, &message, location.as_deref());
            // Dropping the payload runs user code that may panic again: that
            // second payload is leaked rather than risk a third.
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
        }
    }
}

/// Complete, Notify: marks the slot done and announces it. Called by the
/// worker whose Count reached the job's length.
fn complete(ctx: &WorkerCtx<'_>, slot: &Slot, notify: u32) {
    // ORDERING: Relaxed: published by the exchange below.
    slot.desc.done_ns.store(os::monotonic_ns(), Relaxed);
    // ORDERING: SeqCst: Complete. Release publishes all outputs (acquired
    // through the chain of Counts) to the harvest's LookDone; SeqCst pairs
    // with the caller's Register followed by Sleep (README.md, "Waking a
    // blocked caller"). The exchange fails if the parent already emptied
    // the slot.
    if slot
        .desc
        .state
        .compare_exchange(SLOT_RUNNING, SLOT_DONE, SeqCst, Relaxed)
        .is_err()
    {
        return;
    }
    // LookAsleep, after Complete (`Doorbell`).
    if notify & NOTIFY_EVENT != 0 && ctx.region.control().doorbell.should_ring() {
        os::eventfd_signal(ctx.event_fd);
    }
    // ORDERING: SeqCst: Notify's load of `waiters`, after Complete; see
    // above.
    if slot.desc.waiters.load(SeqCst) != 0 {
        futex::wake(&slot.desc.state, u32::MAX);
    }
}

/// Record, Abort: writes the job's first error (later errors are dropped)
/// and sets `abort`, so the job's remaining ranges are skipped.
fn record_error(
    slot: &Slot,
    kind: u32,
    start: u64,
    end: u64,
    message: &str,
    location: Option<&str>,
) {
    write_error(&slot.err, kind, start, end, message, location);
    // ORDERING: SeqCst: Abort: other workers' LookRange (SeqCst) sees it
    // from now on; they skip their remaining ranges.
    slot.desc.abort.store(1, SeqCst);
}

/// Fills an error record unless another error got there first.
fn write_error(
    err: &ErrorRecord,
    kind: u32,
    start: u64,
    end: u64,
    message: &str,
    location: Option<&str>,
) {
    // ORDERING: AcqRel: Record: claims the record; the first error wins.
    if err
        .state
        .compare_exchange(ERR_NONE, ERR_WRITING, AcqRel, Relaxed)
        .is_ok()
    {
        // ORDERING: Relaxed: published by the Release store of ERR_READY.
        err.kind.store(kind, Relaxed);
        err.start.store(start, Relaxed);
        err.end.store(end, Relaxed);
        let msg = truncate(message, MSG_CAP);
        for (cell, &b) in err.msg.iter().zip(msg.as_bytes()) {
            cell.store(b, Relaxed);
        }
        err.msg_len.store(msg.len() as u32, Relaxed);
        let loc = truncate(location.unwrap_or(""), LOC_CAP);
        for (cell, &b) in err.loc.iter().zip(loc.as_bytes()) {
            cell.store(b, Relaxed);
        }
        err.loc_len.store(loc.len() as u32, Relaxed);
        // ORDERING: Release: Record: publishes the fields to the parent's
        // Acquire load of the record's state.
        err.state.store(ERR_READY, Release);
    }
}

/// The longest prefix of `s` of at most `cap` bytes that ends on a character
/// boundary.
fn truncate(s: &str, cap: usize) -> &str {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the hook in
    /// workers and in a caller running ranges. Per thread, so callers on
    /// different threads cannot swap locations, and no lock can be held
    /// across a fork.
    static PANIC_LOCATION: Cell<Option<String>> = const { Cell::new(None) };
    /// Set while this (parent) thread runs ranges (`Builder::caller_runs`):
    /// its panics are reported through the job, like a worker's.
    static RUNNING_RANGES: Cell<bool> = const { Cell::new(false) };
}

fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(Cell::take)
}

/// Set for good by the first panic location this process records.
static PANIC_RECORDED: AtomicBool = AtomicBool::new(false);

/// Records where a task panicked (the message travels in the payload; the
/// location only reaches a hook), for `Error::TaskPanicked`.
fn record_panic_location(info: &panic::PanicHookInfo<'_>) {
    let location = info.location().map(|l| l.to_string());
    // ORDERING: Relaxed: read by `run_range`, on this thread for this
    // location (another thread's look only clears its own, if any).
    PANIC_RECORDED.store(true, Relaxed);
    // Fails only while the thread's locals are being destroyed.
    let _ = PANIC_LOCATION.try_with(|l| l.set(location));
}

/// In the template, before it forks any worker: makes the process's panic
/// hook shmpool's own, which records where a task panicked and prints
/// nothing (the caller gets the message and location in
/// `Error::TaskPanicked`). Every worker inherits it, whatever hook the
/// parent had when the pool was built or sets later; a program that wants
/// its own hook in workers sets it in the pool's `initializer`, which runs
/// in each worker after this.
///
/// Set here, in the single-threaded template, rather than in the parent:
/// setting a hook takes a lock that a thread running a panic hook holds, and
/// `Pool::new` never waits for a lock user code may hold (design.md, "Lock
/// order across fork"). The parent's hook is taken and forgotten, not
/// dropped: dropping it would run a destructor of the user's in the
/// template.
pub(crate) fn install_worker_panic_hook() {
    std::mem::forget(panic::take_hook());
    panic::set_hook(Box::new(record_panic_location));
}

/// Installs, once per process, a panic hook for pools whose caller runs
/// ranges (`Builder::caller_runs`), before the first range the caller runs
/// (`run_as_caller`): on a parent thread running ranges it
/// records where the task panicked instead of printing; elsewhere it defers
/// to the hook installed before. A hook the user sets later replaces it
/// (then caller-run panics carry no location).
fn install_caller_panic_hook() {
    static ONCE: Once = Once::new();
    if std::thread::panicking() {
        return;
    }
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if in_task() {
                record_panic_location(info);
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn payload_messages() {
        assert_eq!(payload_message(&"static"), "static");
        assert_eq!(payload_message(&String::from("owned")), "owned");
        assert_eq!(payload_message(&42_u8), "panic with a non-string payload");
    }
}
