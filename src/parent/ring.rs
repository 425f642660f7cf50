//! The parent's side of the job ring: which slot holds which job, publishing
//! a job, and harvesting its outcome.
//!
//! The shared slot is only the medium. What a job *is* (its length, its
//! output block, who waits for it) lives here, in the parent's memory, behind
//! the pool's ring lock; nothing read back from shared memory is trusted
//! beyond comparing it with these values. The slot protocol, with its named
//! events and a proof sketch, is in `src/worker/README.md`; the
//! `// ORDERING:` comments below cite its events (Reset, Publish, Pend,
//! LookDone, Drain, Empty, Scan, ...).
//!
//! Uses `unsafe` (denied at the crate root): a harvested job's output block
//! becomes a `ShmVec` (`RawOut::into_vec`), once no worker can write it.

#![allow(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::error::Error;
use crate::os;
use crate::shm::futex;
use crate::shm::layout::{INLINE_CAP, LINE, LOC_CAP, MSG_CAP, RETRY_CAP, RetryEntry, Slot};
use crate::shm::region::{Alloc, FIRST_SLOTS, Region};
use crate::shm::states::*;
use crate::shmvec::ShmVec;
use crate::worker::job::HEAP_TAG;

/// Receives the outcome of an asynchronous job; implemented by the typed
/// result cell behind an `AsyncResult`.
pub(crate) trait Deliver: Send + Sync {
    fn deliver(&self, outcome: Result<RawOut, Error>);
}

/// A finished job's result, before it is given its type.
// Moved once per job; boxing the inline bytes would cost an allocation per
// `apply`.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RawOut {
    /// The result of an empty `map_async`: nothing was submitted.
    Empty,
    /// An arena block: a `map` output, or a large `apply` result.
    Block(Alloc),
    /// A small `apply` result, copied out of the slot's inline area.
    Bytes([u8; INLINE_CAP]),
}

impl RawOut {
    /// A `map` outcome as a vector of `len` values of `U`.
    ///
    /// # Panics
    /// If the block is too small for them, or not aligned for `U`: the job
    /// allocated it for them.
    pub(crate) fn into_vec<U: Pod>(self, len: usize) -> ShmVec<U> {
        match self {
            RawOut::Block(block) => {
                let fits = len
                    .checked_mul(size_of::<U>())
                    .is_some_and(|b| b <= block.len());
                assert!(fits && block.ptr().cast::<U>().is_aligned());
                // SAFETY: large enough and aligned (checked above); an
                // outcome is made only once every range has run and the
                // slot has drained (`try_harvest`), so no worker reads or
                // writes the block any more, and the job gave it up.
                unsafe { ShmVec::from_alloc(block, len) }
            }
            RawOut::Bytes(_) | RawOut::Empty => ShmVec::new(),
        }
    }
}

/// Where a job's result will be.
pub(crate) enum Out {
    Block(Alloc),
    /// Nothing to hand back: the job wrote its input in place.
    Nothing,
    /// At this offset within the slot's inline area.
    Inline {
        rel: u64,
        size: usize,
    },
}

/// Who is waiting for a job.
pub(crate) enum Waiter {
    /// A thread blocked in `map`/`apply`, which harvests the slot itself.
    Sync,
    /// An `AsyncResult`; the outcome goes to the pool's result thread.
    Async(Arc<dyn Deliver>),
    /// A cancelled asynchronous job, already answered with `Cancelled`. The
    /// result thread harvests it (freeing its memory) once no worker is in
    /// it.
    Detached,
}

/// What a worker's death means for its job (decided by the supervisor).
pub(crate) enum Verdict {
    /// Run this range again, unless it has already been tried `max` extra
    /// times; then fail with the error.
    Range(std::ops::Range<usize>, u32, Error),
    /// Fail the job.
    Fail(Error),
}

/// A job as the parent knows it.
pub(crate) struct Job {
    pub(crate) seq: u64,
    pub(crate) len: u64,
    pub(crate) out: Out,
    /// Blocks the job owns until it finishes: staged inputs, a context.
    pub(crate) _holds: [Option<Alloc>; 4],
    /// A value the job reads in place and keeps alive until it is harvested
    /// (a shared-heap `Vec` moved into `map_async`).
    pub(crate) _keep: crate::parent::place::Keep,
    /// Set by the parent when the job failed outside the workers' view (a
    /// worker died, the pool was terminated).
    pub(crate) failure: Option<Error>,
    pub(crate) waiter: Waiter,
    /// Retries so far, by range start.
    pub(crate) attempts: Vec<(u64, u32)>,
    /// Lost ranges (start, end) to run again that found every retry entry
    /// of the slot taken (more ranges of the job lost at once than it has
    /// entries): queued as entries come free (`requeue_held_back`), open to
    /// every worker.
    pub(crate) held_back: Vec<(u64, u64)>,
    /// For each retry entry kept for new workers, its `after` and when
    /// `open_retries` first saw it so (it opens the entry to every worker
    /// after `KEEP_FOR_NEW`).
    /// Boxed, and only while one is kept: every job carries the field, and
    /// a larger `Job` cost `apply_async` about a tenth of its rate.
    pub(crate) kept_for_new: Option<Box<KeptSince>>,
    /// Whether a lost range may run again: false for a job that writes its
    /// input in place (a range the dead worker half-updated would be mapped
    /// twice).
    pub(crate) retryable: bool,
    /// The descriptor as published, to detect a worker overwriting it.
    pub(crate) published: [u64; 11],
    /// Why the harvest found the slot corrupt although it said DONE (its
    /// counts do not add up, say). The job is then failed with
    /// `Corrupted` once no worker is left in the slot.
    pub(crate) corrupt: Option<&'static str>,
    /// `CLOCK_MONOTONIC` nanoseconds when the job was published.
    pub(crate) published_ns: u64,
}

impl Job {
    pub(crate) fn new(len: u64, out: Out, holds: [Option<Alloc>; 4], waiter: Waiter) -> Self {
        Job {
            seq: 0,
            len,
            out,
            _holds: holds,
            _keep: None,
            failure: None,
            waiter,
            attempts: Vec::new(),
            held_back: Vec::new(),
            kept_for_new: None,
            retryable: true,
            published: [0; 11],
            corrupt: None,
            published_ns: 0,
        }
    }
}

/// The descriptor words a job is published with, in a fixed order.
fn descriptor(slot: &Slot) -> [u64; 11] {
    let d = &slot.desc;
    // ORDERING: Relaxed: Believe: compared by the parent, which wrote them
    // in Reset; a worker that changed them is what the comparison looks for.
    [
        d.run.load(Relaxed) as u64,
        d.in_off.load(Relaxed),
        d.out_off.load(Relaxed),
        d.ctx_off.load(Relaxed),
        d.len.load(Relaxed),
        d.chunk.load(Relaxed),
        u64::from(d.notify.load(Relaxed)),
        d.more[0].load(Relaxed),
        d.more[1].load(Relaxed),
        d.window[0].load(Relaxed),
        d.window[1].load(Relaxed),
    ]
}

/// Requeue, Repend: queues range `start..end` of the job in slot `s` to run
/// again, in the first EMPTY retry entry. Returns false if none is EMPTY.
fn requeue(region: &Region, s: usize, (start, end, after): Lost) -> bool {
    // ORDERING: Acquire: an EMPTY entry was released by the worker that ran
    // it (FreeRetry), or by our Reset or Unclaim.
    let free = region
        .slot(s)
        .retries
        .0
        .iter()
        .find(|e| e.state.load(Acquire) == RETRY_EMPTY);
    let Some(entry) = free else {
        return false;
    };
    // ORDERING: Relaxed: Requeue, published by the SeqCst store of READY,
    // which TakeRetry acquires.
    entry.start.store(start, Relaxed);
    entry.end.store(end, Relaxed);
    entry.after.store(after, Relaxed);
    // ORDERING: SeqCst: Requeue, before Repend (the Dekker pair with a
    // worker's Unpend and LookRetries), and before the Stall checks that
    // now see a retry waiting.
    entry.state.store(RETRY_READY, SeqCst);
    // ORDERING: SeqCst: Repend, see above.
    region.control().pending.0[s / 64].fetch_or(1u64 << (s % 64), SeqCst);
    true
}

/// A lost range queued for another attempt: its start and end, and the
/// first worker number that may take it (`RetryEntry::after`).
pub(crate) type Lost = (u64, u64, u32);

/// For each retry entry of a slot kept for new workers: its `after`, and
/// when `Ring::open_retries` first saw it kept.
pub(crate) type KeptSince = [Option<(u32, Instant)>; RETRY_CAP];

/// How long a retry is kept for a worker started after its range was lost
/// before any worker may take it (`Ring::open_retries`). A replacement
/// starts within milliseconds; this only bounds the wait when it is slow,
/// or busy in another job.
const KEEP_FOR_NEW: Duration = Duration::from_millis(500);

/// What `Ring::open_retries` did.
pub(crate) struct Opened {
    /// How many tokens to post: one per retry opened to every worker.
    pub(crate) tokens: u32,
    /// Whether a retry is still kept for new workers: the supervisor then
    /// repairs every `REPAIR_EVERY`, however idle the pool.
    pub(crate) keeping: bool,
}

/// Whether a retry of slot `slot` is queued and not yet claimed.
fn retry_ready(slot: &Slot) -> bool {
    // ORDERING: SeqCst: Stall (or Believe, or a kick), read before Drain,
    // like the claim counter.
    slot.retries
        .0
        .iter()
        .any(|e| e.state.load(SeqCst) == RETRY_READY)
}

/// Small values (an `apply` argument and result, a `map_with` context) that
/// travel in the slot itself.
pub(crate) struct InlineData {
    pub(crate) bytes: [u8; INLINE_CAP],
    pub(crate) used: usize,
}

impl InlineData {
    pub(crate) fn new() -> Self {
        InlineData {
            bytes: [0; INLINE_CAP],
            used: 0,
        }
    }

    /// Room for `size` bytes aligned to `align`; the offset within the inline
    /// area, or `None` if it does not fit.
    pub(crate) fn reserve(&mut self, size: usize, align: usize) -> Option<u64> {
        if align > LINE {
            return None;
        }
        let at = self.used.next_multiple_of(align);
        let end = at.checked_add(size).filter(|&e| e <= INLINE_CAP)?;
        self.used = end;
        Some(at as u64)
    }

    /// Copies `v` in; its offset, or `None` if it does not fit.
    pub(crate) fn put<V: bytemuck::Pod>(&mut self, v: &V) -> Option<u64> {
        let at = self.reserve(size_of::<V>(), align_of::<V>())?;
        let at_usize = at as usize;
        self.bytes[at_usize..at_usize + size_of::<V>()].copy_from_slice(bytemuck::bytes_of(v));
        Some(at)
    }
}

/// Where a job's input, output or context lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// At this region offset (an arena block).
    Arena(u64),
    /// At this offset within the slot's inline area.
    Inline(u64),
    /// At this offset of the shared heap (`SharedHeap`).
    Heap(u64),
}

impl Loc {
    /// The descriptor word for this location: a region offset, or a heap
    /// offset tagged with `HEAP_TAG`.
    pub(crate) fn resolve(self, inline_off: u64) -> u64 {
        match self {
            Loc::Arena(off) => off,
            Loc::Inline(rel) => inline_off + rel,
            Loc::Heap(off) => off | HEAP_TAG,
        }
    }
}

/// What workers need to run a job.
pub(crate) struct Spec {
    /// The trampoline's address.
    pub(crate) run: usize,
    pub(crate) input: Loc,
    pub(crate) output: Loc,
    pub(crate) ctx: Loc,
    pub(crate) len: u64,
    pub(crate) chunk: u64,
    /// `Desc::more`: where the inputs beyond the first two are.
    pub(crate) more: [u64; 2],
    /// `Desc::window`: the heap offset and byte length of an output that
    /// lies in the shared heap, else zeros.
    pub(crate) window: [u64; 2],
    /// Guided claims (`FLAG_GUIDED`); else fixed ranges of `chunk`.
    pub(crate) guided: bool,
    /// Streaming stores for the output (`FLAG_STREAM`).
    pub(crate) stream: bool,
    /// Copied into the slot's inline area on publish.
    pub(crate) inline: InlineData,
}

// One per reserved slot: the vector grows with the reservation, so a new
// pool allocates 16 (a ring of 256 was 29 µs of `Pool::new` to allocate and
// initialise), and a job needs no allocation of its own.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Free,
    Busy(Job),
    /// Harvested, but a worker may still be in the slot (only claiming
    /// nothing and leaving); not reusable until none is.
    Draining,
}

/// The parent-side state of the ring. Guarded by the pool's ring lock.
pub(crate) struct Ring {
    /// One per slot in use: slots `0..phases.len()` have reserved pages
    /// (`Region::reserve_slots`); the ring doubles them, up to `size`, when
    /// they are all busy.
    phases: Vec<Phase>,
    /// The ring's size (`Layout::ring`).
    size: usize,
    cursor: usize,
    next_seq: u64,
    /// Jobs submitted and not yet handed to their waiter.
    pub(crate) in_flight: usize,
    /// Asynchronous outcomes harvested by threads other than the result
    /// thread, waiting for it to deliver them.
    pub(crate) ready: Vec<(Arc<dyn Deliver>, Result<RawOut, Error>)>,
}

/// A harvested job: its waiter and its outcome.
pub(crate) struct Harvest {
    pub(crate) waiter: Waiter,
    pub(crate) outcome: Result<RawOut, Error>,
    /// Where a successful job's time went, if its runners' stamps make sense.
    pub(crate) times: Option<JobTimes>,
}

/// A finished job's time, in nanoseconds, from the runners' stamps in its
/// descriptor (untrusted: used only when they are in order).
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobTimes {
    /// Publication to the first claim: waking a worker.
    pub(crate) dispatch: u64,
    /// The first claim to the last range's end: running the ranges.
    pub(crate) compute: u64,
    /// The last range's end to the harvest.
    pub(crate) completion: u64,
}

impl JobTimes {
    fn from_stamps(published: u64, first: u64, done: u64, now: u64) -> Option<JobTimes> {
        (published <= first && first <= done && done <= now).then(|| JobTimes {
            dispatch: first - published,
            compute: done - first,
            completion: now - done,
        })
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.size)
            .field("in_use", &self.phases.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// Whether no live worker is in slot `s`. Dead workers' records are cleared
/// by the supervisor after it has dealt with their job. A worker counts as
/// in the slot if either of its words says so (`slot`, or `in_range` while
/// it runs a range): a task that overwrites one of them (its `slot`, say)
/// does not hide the worker, which would let the slot's output go back to
/// its caller while the worker still writes it.
pub(crate) fn drained(region: &Region, s: usize) -> bool {
    (0..region.layout().workers).all(|w| {
        let rec = region.record(w);
        // ORDERING: SeqCst: Drain, the parent's half of the Dekker pair with
        // a worker's Announce and LookState (and its Enter); the caller
        // stored Empty or Abort (SeqCst) before calling this.
        rec.slot.load(SeqCst) != s as u32 && rec.in_range.load(SeqCst) != s as u32
    })
}

/// Whether slot `s` is drained (as [`drained`] decides), and whether a live
/// worker is inside one of its ranges (`WorkerRecord::in_range`; a dead
/// worker's is cleared by the supervisor before it deals with its job).
fn presence(region: &Region, s: usize) -> (bool, bool) {
    let s = s as u32;
    let (mut drained, mut in_range) = (true, false);
    for w in 0..region.layout().workers {
        let rec = region.record(w);
        // ORDERING: SeqCst: Scan: `slot` as in Drain; `in_range` is the
        // harvest's half of the Dekker pair with a worker's Enter and
        // LookRange, loaded after the caller's Empty.
        let inside = rec.in_range.load(SeqCst) == s;
        if rec.slot.load(SeqCst) == s || inside {
            drained = false;
            in_range |= inside;
        }
    }
    (drained, in_range)
}

fn set_pending(region: &Region, s: usize) {
    // ORDERING: Release: Pend (or a Kick), pairs with the worker's Find
    // (Acquire); the descriptor was already released by Publish.
    region.control().pending.0[s / 64].fetch_or(1u64 << (s % 64), Release);
}

fn clear_pending(region: &Region, s: usize) {
    // ORDERING: Relaxed: after Empty (or in a repair): a stale bit only
    // costs a worker a wasted look.
    region.control().pending.0[s / 64].fetch_and(!(1u64 << (s % 64)), Relaxed);
}

impl Ring {
    pub(crate) fn new(slots: usize) -> Self {
        Ring {
            phases: (0..slots.min(FIRST_SLOTS)).map(|_| Phase::Free).collect(),
            size: slots,
            cursor: 0,
            next_seq: 1,
            in_flight: 0,
            ready: Vec::new(),
        }
    }

    /// A slot that can take a job now, if any: a free or drained one among
    /// the reserved slots, else the first of as many again newly reserved.
    /// `None` if every slot is busy, or if reserving failed (memory is
    /// short): either way the caller waits for a job to finish.
    pub(crate) fn take_free(&mut self, region: &Region) -> Option<usize> {
        let n = self.phases.len();
        let found = (0..n)
            .map(|i| (self.cursor + i) % n)
            .find(|&s| match self.phases[s] {
                Phase::Free => true,
                Phase::Draining => drained(region, s),
                Phase::Busy(_) => false,
            });
        if found.is_some() || n == self.size {
            return found;
        }
        let to = (2 * n).min(self.size);
        region.reserve_slots(n, to).ok()?;
        self.phases.resize_with(to, || Phase::Free);
        Some(n)
    }

    /// Publishes `job` in slot `s` (from `take_free`) and returns its sequence
    /// number. The caller then posts work tokens.
    pub(crate) fn publish(
        &mut self,
        region: &Region,
        s: usize,
        spec: &Spec,
        mut job: Job,
        notify: u32,
    ) -> u64 {
        let slot = region.slot(s);
        let d = &slot.desc;
        let sync = matches!(job.waiter, Waiter::Sync);
        let inline_off = region.layout().inline_off(s);
        let inline = &spec.inline;
        // No worker is in the slot (it is free or drained).
        region.write_inline(s, &inline.bytes[..inline.used]);
        // ORDERING: Relaxed: Reset: no worker is in the slot (it is free or
        // drained), and these stores are published by Publish (Release).
        slot.claim.next.store(0, Relaxed);
        slot.counts.done.store(0, Relaxed);
        slot.counts.squares.store(0, Relaxed);
        let workers = region.layout().workers;
        for word in slot.claim.visitors.iter().take(workers.div_ceil(64)) {
            word.store(0, Relaxed);
        }
        for e in &slot.retries.0 {
            e.state.store(RETRY_EMPTY, Relaxed);
            e.after.store(0, Relaxed);
        }
        slot.err.state.store(ERR_NONE, Relaxed);
        d.abort.store(0, Relaxed);
        d.waiters.store(sync as u32, Relaxed);
        let flags = notify
            | if spec.guided { FLAG_GUIDED } else { 0 }
            | if spec.stream { FLAG_STREAM } else { 0 };
        d.notify.store(flags, Relaxed);
        d.run.store(spec.run, Relaxed);
        d.in_off.store(spec.input.resolve(inline_off), Relaxed);
        d.out_off.store(spec.output.resolve(inline_off), Relaxed);
        d.ctx_off.store(spec.ctx.resolve(inline_off), Relaxed);
        d.len.store(spec.len, Relaxed);
        d.chunk.store(spec.chunk, Relaxed);
        d.more[0].store(spec.more[0], Relaxed);
        d.more[1].store(spec.more[1], Relaxed);
        d.window[0].store(spec.window[0], Relaxed);
        d.window[1].store(spec.window[1], Relaxed);
        d.first_claim_ns.store(0, Relaxed);
        d.done_ns.store(0, Relaxed);
        job.published_ns = os::monotonic_ns();
        // ORDERING: Release: Publish: publishes the descriptor above, and the
        // input data written before, to a worker's LookState (SeqCst, so
        // Acquire).
        d.state.store(SLOT_RUNNING, Release);
        set_pending(region, s);
        let seq = self.next_seq;
        self.next_seq += 1;
        job.seq = seq;
        job.published = descriptor(slot);
        self.phases[s] = Phase::Busy(job);
        self.cursor = (s + 1) % self.phases.len();
        self.in_flight += 1;
        seq
    }

    /// Whether slot `s` holds job `seq`.
    pub(crate) fn holds(&self, s: usize, seq: u64) -> bool {
        matches!(&self.phases[s], Phase::Busy(j) if j.seq == seq)
    }

    /// The length of the job in slot `s` (0 if there is none).
    pub(crate) fn job_len(&self, s: usize) -> u64 {
        match &self.phases[s] {
            Phase::Busy(job) => job.len,
            _ => 0,
        }
    }

    /// The number of slots in use, whose pages are reserved (at most the
    /// ring's size). Every slot index the parent uses is below it.
    pub(crate) fn len(&self) -> usize {
        self.phases.len()
    }

    /// Whether the job in slot `s` said DONE but was found corrupt: it
    /// finishes (as `Corrupted`) once no worker is left in the slot.
    pub(crate) fn awaits_drain(&self, s: usize) -> bool {
        matches!(&self.phases[s], Phase::Busy(job) if job.corrupt.is_some())
    }

    /// Whether slot `s` holds an unfinished asynchronous job (or a
    /// cancelled one still to be harvested).
    pub(crate) fn is_async(&self, s: usize) -> bool {
        matches!(
            &self.phases[s],
            Phase::Busy(job) if matches!(job.waiter, Waiter::Async(_) | Waiter::Detached)
        )
    }

    /// Cancels the asynchronous job `seq` in slot `s` if it is unfinished:
    /// its failure becomes `Cancelled`, workers claim no more of its ranges,
    /// and its cell is returned, to be answered at once (the caller then
    /// lowers `in_flight`). The slot stays busy (its memory in use) until no
    /// worker is in it.
    pub(crate) fn cancel(
        &mut self,
        region: &Region,
        s: usize,
        seq: u64,
    ) -> Option<Arc<dyn Deliver>> {
        if !self.holds(s, seq) || !self.is_async(s) {
            return None;
        }
        // ORDERING: Acquire: as LookDone; a finished job is delivered as it
        // is.
        if region.slot(s).desc.state.load(Acquire) == SLOT_DONE {
            return None;
        }
        let Phase::Busy(job) = &mut self.phases[s] else {
            return None;
        };
        let Waiter::Async(cell) = std::mem::replace(&mut job.waiter, Waiter::Detached) else {
            return None;
        };
        job.failure = Some(Error::Cancelled);
        let slot = region.slot(s);
        // ORDERING: SeqCst: Abort (Cancel), as in `fail`.
        slot.desc.abort.store(1, SeqCst);
        // `in_flight` drops once the cell is answered and its callbacks have
        // run (`Core::cancel`): `join` waits for them.
        Some(cell)
    }

    /// A worker died in slot `s`. `decide` gets the job's length and says
    /// whether to queue the lost range again or to fail the job. A retry is
    /// for workers asked for as number `after` or later (0: any worker),
    /// unless every retry entry is taken: then it is held back, and queued
    /// open to every worker (`requeue_held_back`). Returns whether a retry
    /// was queued or held back (the caller then posts tokens).
    pub(crate) fn lost(
        &mut self,
        region: &Region,
        s: usize,
        after: u32,
        decide: impl FnOnce(u64) -> Verdict,
    ) -> bool {
        let slot = region.slot(s);
        let Phase::Busy(job) = &mut self.phases[s] else {
            return false;
        };
        // ORDERING: Acquire: as LookDone.
        if slot.desc.state.load(Acquire) == SLOT_DONE || job.failure.is_some() {
            return false;
        }
        let error = match decide(job.len) {
            Verdict::Fail(e) => e,
            Verdict::Range(_, _, e) if !job.retryable => e,
            Verdict::Range(range, max, e) => {
                let start = range.start as u64;
                let tries = match job.attempts.iter_mut().find(|(at, _)| *at == start) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        job.attempts.push((start, 1));
                        1
                    }
                };
                if tries > max {
                    e
                } else {
                    if !requeue(region, s, (start, range.end as u64, after)) {
                        // Every entry is taken: run it once one comes free.
                        job.held_back.push((start, range.end as u64));
                    }
                    return true;
                }
            }
        };
        self.fail(region, s, |_| error);
        false
    }

    /// Queues the held-back ranges of the job in slot `s` into retry entries
    /// that have come free, as many as there are. Returns whether one was
    /// queued.
    ///
    /// Each is open to every worker (`after` 0), not kept for workers
    /// started after it was lost: those have made their first pass by now,
    /// found nothing, and sleep, and no post can wake them in particular (a
    /// token goes to whichever sleeper the futex wakes first, and a woken
    /// worker that finds no token sleeps again). Kept, such a range waited
    /// until a kick's single token happened to reach one of them, or until
    /// `open_retries`: 28 ranges lost at once in a pool of 30 took 2.2 to
    /// 3 s instead of 0.2 s.
    pub(crate) fn requeue_held_back(&mut self, region: &Region, s: usize) -> bool {
        let Phase::Busy(job) = &mut self.phases[s] else {
            return false;
        };
        if job.failure.is_some() {
            return false;
        }
        let mut queued = false;
        while let Some(&(start, end)) = job.held_back.last() {
            if !requeue(region, s, (start, end, 0)) {
                break;
            }
            job.held_back.pop();
            queued = true;
        }
        queued
    }

    /// Frees the retry entries of slot `s` that worker `w`, now dead, had
    /// claimed (its range is then queued again, or the job fails).
    pub(crate) fn release_retries(&mut self, region: &Region, s: usize, w: usize) {
        let theirs = RETRY_CLAIMED + w as u32;
        for entry in &region.slot(s).retries.0 {
            // ORDERING: Relaxed: Unclaim: only the parent reads it next, under
            // the ring lock, or a worker after a Requeue (SeqCst).
            let _ = entry
                .state
                .compare_exchange(theirs, RETRY_EMPTY, Relaxed, Relaxed);
        }
    }

    /// Opens retries kept for new workers to every worker: each one kept
    /// for `KEEP_FOR_NEW` already (no new worker came for it), or every one
    /// if `now` (none is coming: the pool is stopping, or a replacement
    /// cannot be started yet). Returns how many tokens to post, and whether
    /// a retry is still kept.
    pub(crate) fn open_retries(&mut self, region: &Region, now: bool) -> Opened {
        let mut tokens = 0u32;
        let mut keeping = false;
        for s in 0..self.phases.len() {
            let Phase::Busy(job) = &mut self.phases[s] else {
                continue;
            };
            let entries = &region.slot(s).retries.0;
            // ORDERING: Relaxed: a look, as below.
            let kept_now =
                |e: &RetryEntry| e.after.load(Relaxed) != 0 && e.state.load(Relaxed) == RETRY_READY;
            if job.kept_for_new.is_none() && !entries.iter().any(kept_now) {
                continue;
            }
            let mut opened = false;
            let mut still = false;
            let seen = job.kept_for_new.get_or_insert_with(Default::default);
            for (e, kept) in entries.iter().zip(seen.iter_mut()) {
                // ORDERING: Relaxed: a look; a worker takes the entry with
                // its own exchange, and the store below only lets more
                // workers take it (published by the Pend below).
                let after = e.after.load(Relaxed);
                // ORDERING: Relaxed: as above.
                if after == 0 || e.state.load(Relaxed) != RETRY_READY {
                    *kept = None;
                    continue;
                }
                let since = match *kept {
                    Some((a, since)) if a == after => since,
                    _ => Instant::now(),
                };
                if now || since.elapsed() >= KEEP_FOR_NEW {
                    // ORDERING: Relaxed: published by `set_pending` below
                    // (Release), which a worker's Find acquires.
                    e.after.store(0, Relaxed);
                    *kept = None;
                    opened = true;
                    tokens = tokens.saturating_add(1);
                } else {
                    *kept = Some((after, since));
                    still = true;
                }
            }
            if !still {
                job.kept_for_new = None;
            }
            keeping |= still;
            if opened {
                set_pending(region, s);
            }
        }
        Opened { tokens, keeping }
    }

    /// Puts back what the parent owns in shared memory, in case a worker
    /// scribbled over it: slots without a job are EMPTY with no pending bit,
    /// (while the pool runs) the shutdown flag is clear, and there are no
    /// more work tokens than workers (`Semaphore::clamp`).
    pub(crate) fn repair(&mut self, region: &Region, running: bool) {
        let control = region.control();
        // ORDERING: Relaxed: Repair; workers re-read it on every wake-up.
        if running && control.shutdown.0.load(Relaxed) != 0 {
            control.shutdown.0.store(0, SeqCst);
        }
        control.sem.clamp(region.layout().workers as u32);
        for s in 0..self.size {
            if matches!(self.phases.get(s), Some(Phase::Busy(_))) {
                continue;
            }
            // Slots not reserved yet are left alone: touching their pages
            // would allocate them. They have held no job, and `publish`
            // rewrites every shared word of a slot before its job.
            if s < self.phases.len() {
                let desc = &region.slot(s).desc;
                // ORDERING: Relaxed: Repair, see above. A worker entering the
                // slot reads EMPTY in LookState and leaves.
                if desc.state.load(Relaxed) != SLOT_EMPTY {
                    desc.state.store(SLOT_EMPTY, SeqCst);
                }
            }
            // ORDERING: Relaxed: see above.
            let word = &control.pending.0[s / 64];
            if word.load(Relaxed) & (1u64 << (s % 64)) != 0 {
                clear_pending(region, s);
            }
        }
    }

    /// The slots of all unfinished jobs.
    pub(crate) fn busy_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.phases
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Phase::Busy(_)))
            .map(|(s, _)| s)
    }

    /// Marks the job in slot `s` failed with `error` (unless it already
    /// failed or finished) and tells its workers to skip what is left.
    /// Returns whether the slot holds an unfinished job.
    /// `error` receives the job's length, to validate a range against it.
    pub(crate) fn fail(
        &mut self,
        region: &Region,
        s: usize,
        error: impl FnOnce(u64) -> Error,
    ) -> bool {
        let Phase::Busy(job) = &mut self.phases[s] else {
            return false;
        };
        let slot = region.slot(s);
        // ORDERING: Acquire: as LookDone.
        if slot.desc.state.load(Acquire) == SLOT_DONE {
            return false;
        }
        if job.failure.is_none() {
            job.failure = Some(error(job.len));
        }
        // ORDERING: SeqCst: Abort (Fail), stored before any Drain scans the
        // records (the Dekker pair with a worker's Announce and LookState,
        // and with its Leave and LookAbort).
        slot.desc.abort.store(1, SeqCst);
        futex::wake(&slot.desc.state, u32::MAX);
        true
    }

    /// Re-announces an unfinished job that may have lost its wake-up (a
    /// worker died holding the token, or a worker scribbled over the bit or
    /// over an idle worker's record). Returns how many tokens to post: one if
    /// ranges or retries wait, else every worker's worth if a record still
    /// names the slot (each woken worker rewrites its own record).
    pub(crate) fn kick(&mut self, region: &Region, s: usize) -> u32 {
        // Ranges held back for want of a retry entry go in as entries
        // come free (workers free them without telling the parent).
        self.requeue_held_back(region, s);
        let Phase::Busy(job) = &self.phases[s] else {
            return 0;
        };
        let slot = region.slot(s);
        // ORDERING: Relaxed: Kick, a heuristic; a spurious kick costs one
        // wake-up.
        let running = slot.desc.state.load(Relaxed) == SLOT_RUNNING;
        let waiting = slot.claim.next.load(Relaxed) < job.len || retry_ready(slot);
        if running && waiting {
            set_pending(region, s);
            return 1;
        }
        // A job that cannot make progress by itself finishes once drained:
        // make sure no sleeping worker's (scribbled) record holds it up.
        if !drained(region, s) {
            return region.layout().workers as u32;
        }
        0
    }

    /// If the job `seq` in slot `s` (any job, for `None`) has finished, takes
    /// it out of the ring and returns its waiter and outcome; the slot is
    /// freed, or left draining until the last worker leaves it.
    ///
    /// The steps are the harvest's events (`worker/README.md`, "Harvest"):
    /// `look_done` (LookDone, Believe), `stalled_and_drained` for a job not
    /// (believably) done (Stall, Drain, Relook), `verdict`, Retire for a
    /// corrupt job, `empty_and_scan` (Empty, Scan), then `hand_over`.
    pub(crate) fn try_harvest(
        &mut self,
        region: &Region,
        s: usize,
        seq: Option<u64>,
    ) -> Option<Harvest> {
        let Phase::Busy(job) = &mut self.phases[s] else {
            return None;
        };
        if seq.is_some_and(|q| q != job.seq) {
            return None;
        }
        let slot = region.slot(s);
        let mut state = look_done(slot, job);
        if state != SLOT_DONE || job.corrupt.is_some() {
            state = stalled_and_drained(region, s, job, state)?;
        }
        let verdict = verdict(slot, job, state);
        if matches!(verdict, Err(Error::Corrupted { .. })) {
            // Retire: given only once the slot is drained (above), so the
            // bitmap is complete.
            retire_visitors(region, s);
        }
        let Some(drained) = empty_and_scan(region, s, job, verdict.is_ok()) else {
            // The job is now corrupt and aborted. The worker seen inside its
            // range may have left between our Scan and our Abort: it then
            // read no abort and woke nobody, and only a tick would bring
            // us back. Look once more now: this time the verdict is an
            // error (`empty_and_scan` returns a value), and a worker still
            // inside leaves after our Abort, so it wakes us when it goes.
            debug_assert!(matches!(&self.phases[s], Phase::Busy(j) if j.corrupt.is_some()));
            return self.try_harvest(region, s, seq);
        };
        Some(self.hand_over(region, s, drained, verdict))
    }

    /// HandOver: takes the harvested job out of slot `s` (which becomes
    /// `Free` if `drained`, else `Draining`) and gives its outcome its raw
    /// form: the output block, or the inline bytes.
    fn hand_over(
        &mut self,
        region: &Region,
        s: usize,
        drained: bool,
        verdict: Result<(), Error>,
    ) -> Harvest {
        let slot = region.slot(s);
        let next = if drained {
            Phase::Free
        } else {
            Phase::Draining
        };
        let Phase::Busy(job) = std::mem::replace(&mut self.phases[s], next) else {
            unreachable!("checked by `try_harvest`");
        };
        // ORDERING: Relaxed: ordered after LookDone's acquire of DONE; only
        // used when in order.
        let times = verdict.is_ok().then(|| {
            JobTimes::from_stamps(
                job.published_ns,
                slot.desc.first_claim_ns.load(Relaxed),
                slot.desc.done_ns.load(Relaxed),
                os::monotonic_ns(),
            )
        });
        let outcome = verdict.map(|()| match job.out {
            Out::Block(block) => RawOut::Block(block),
            Out::Nothing => RawOut::Empty,
            Out::Inline { rel, size } => {
                let mut bytes = [0u8; INLINE_CAP];
                let size = size.min(INLINE_CAP - (rel as usize).min(INLINE_CAP));
                // Every range is done, so no worker writes it any more.
                region.read_inline(s, rel as usize, &mut bytes[..size]);
                RawOut::Bytes(bytes)
            }
        });
        // `job._holds` (staged input, context) are freed here: no worker reads
        // them any more.
        Harvest {
            waiter: job.waiter,
            outcome,
            times: times.flatten(),
        }
    }
}

/// LookDone, Believe: reads the state of `job`'s slot. DONE is one word
/// that any task can write: it is believed only if the rest of the slot
/// agrees (`corrupt_when_done`); if not, the job is marked corrupt and its
/// workers are told to skip what they still claim (Abort).
fn look_done(slot: &Slot, job: &mut Job) -> u32 {
    // ORDERING: SeqCst: LookDone. Acquires the completing worker's Complete
    // (SeqCst), after which every range's output (and every range's Count)
    // is visible; and, SeqCst on both sides, puts Complete before our Empty
    // in the single order the `in_range` check relies on (worker/README.md,
    // "Harvest").
    let state = slot.desc.state.load(SeqCst);
    if state == SLOT_DONE && job.corrupt.is_none() {
        job.corrupt = corrupt_when_done(slot, job);
        if job.corrupt.is_some() {
            // ORDERING: SeqCst: Abort, stored before the Drain that follows
            // (the Dekker pair with a worker's Announce and LookState).
            slot.desc.abort.store(1, SeqCst);
        }
    }
    state
}

/// Stall, Drain, Relook, for a job that is not done (or whose DONE is not
/// believed): it is finished only if it failed, is corrupt, or is stalled
/// in an impossible state, *and* no worker is left in its slot (until then
/// a worker may still write the output). Returns the state as read after
/// the drain check (the last worker may have completed the job in
/// between), or `None` if the job is not finished.
fn stalled_and_drained(region: &Region, s: usize, job: &mut Job, state: u32) -> Option<u32> {
    let slot = region.slot(s);
    // ORDERING: SeqCst: Stall, read before Drain, like Abort.
    let exhausted =
        slot.claim.next.load(SeqCst) >= job.len && !retry_ready(slot) && job.held_back.is_empty();
    let stalled =
        job.corrupt.is_some() || job.failure.is_some() || state != SLOT_RUNNING || exhausted;
    if !stalled || !drained(region, s) {
        return None;
    }
    let was_done = state == SLOT_DONE;
    // ORDERING: Acquire: Relook, as LookDone.
    let state = slot.desc.state.load(Acquire);
    if state == SLOT_DONE && !was_done {
        job.corrupt = corrupt_when_done(slot, job);
    }
    Some(state)
}

/// The outcome of a finished job, from what its slot and the parent
/// recorded: `Corrupted` if the slot was found corrupt; else, for DONE, the
/// task's error, the parent's recorded failure, or success; else the error
/// that explains the stall, or `Corrupted` if none does.
fn verdict(slot: &Slot, job: &mut Job, state: u32) -> Result<(), Error> {
    if let Some(detail) = job.corrupt {
        Err(Error::Corrupted { detail })
    } else if state == SLOT_DONE {
        match task_error(slot, job.len).or_else(|| job.failure.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    } else {
        let detail = if descriptor(slot) != job.published {
            "a worker overwrote the job descriptor"
        } else if state == SLOT_RUNNING {
            "every range was claimed and no worker is running, but the job is not done"
        } else {
            "the slot state is not a valid value"
        };
        Err(task_error(slot, job.len)
            .or_else(|| job.failure.take())
            .unwrap_or(Error::Corrupted { detail }))
    }
}

/// Empty, Scan: empties slot `s` and scans the worker records. Returns
/// whether the slot is drained, or `None` if the job was about to be handed
/// over as a success while a worker is inside one of its ranges: the job is
/// then marked corrupt (and aborted), to fail once the slot is drained.
fn empty_and_scan(region: &Region, s: usize, job: &mut Job, ok: bool) -> Option<bool> {
    let slot = region.slot(s);
    // ORDERING: SeqCst: Empty. From here no worker can enter the slot
    // unseen: one whose Announce comes after our Scan reads EMPTY in
    // LookState and leaves. It also comes after LookDone, so the Scan
    // below is the harvest's half of the `in_range` Dekker pair (Enter,
    // LookRange).
    slot.desc.state.store(SLOT_EMPTY, SeqCst);
    clear_pending(region, s);
    let (drained, in_range) = presence(region, s);
    if ok && in_range {
        // A worker is inside a range of a job whose counts say it is
        // finished: a rewound claim counter handed the range out again.
        // It would write the output after the caller got it; the job
        // fails instead, once the slot is drained.
        job.corrupt = Some("a worker was running a range of a finished job");
        // ORDERING: SeqCst: Abort, as in `fail`.
        slot.desc.abort.store(1, SeqCst);
        return None;
    }
    Some(drained)
}

/// Why a slot that says DONE cannot be believed, if it cannot. An honest
/// completion leaves `done == len`, `squares == len²` (the two sums over the
/// same partition of `0..len`), every element claimed, no retry waiting,
/// the descriptor as published, and no `abort` without an error to explain
/// it. A worker scribbling over one or two of these words, or rewinding the
/// claim counter so that ranges ran twice, fails at least one test; the
/// job is then failed as `Corrupted` once the slot is drained.
fn corrupt_when_done(slot: &Slot, job: &Job) -> Option<&'static str> {
    // ORDERING: Relaxed: Believe, ordered after LookDone's acquire of DONE,
    // which every honest Count happens before.
    let (done, squares) = (
        slot.counts.done.load(Relaxed),
        slot.counts.squares.load(Relaxed),
    );
    // ORDERING: SeqCst: Believe, read before Drain, as in Stall.
    let claimed = slot.claim.next.load(SeqCst);
    // ORDERING: Relaxed: Believe, ordered after LookDone's acquire.
    let aborted = slot.desc.abort.load(Relaxed) != 0;
    let detail = if done != job.len {
        "a finished job's done counter does not match its length"
    } else if squares != job.len.wrapping_mul(job.len) {
        "a finished job's ranges do not add up to its length"
    } else if claimed < job.len {
        "a finished job has elements no worker claimed"
    } else if retry_ready(slot) || !job.held_back.is_empty() {
        "a finished job has a retry waiting"
    } else if descriptor(slot) != job.published {
        "a worker overwrote the job descriptor"
    } else {
        match task_error(slot, job.len) {
            Some(Error::Corrupted { detail }) => detail,
            Some(_) => return None,
            None if aborted && job.failure.is_none() => {
                "the job was aborted with no error recorded"
            }
            None => return None,
        }
    };
    Some(detail)
}

/// Asks every worker that ran ranges of slot `s`'s job to exit and be
/// replaced (`RETIRE_MARK`): the slot was found corrupt, and the worker that
/// scribbled on it may be one of them. Each leaves at its next point between
/// ranges, in no slot, so no other job loses a range. Called once the slot
/// is drained.
fn retire_visitors(region: &Region, s: usize) {
    let workers = region.layout().workers;
    let mut any = false;
    for (i, word) in region.slot(s).claim.visitors.iter().enumerate() {
        // ORDERING: Relaxed: Retire: each visitor set its bit (Visit) before
        // its Leave (SeqCst), which the Drain loaded.
        let mut bits = word.load(Relaxed);
        while bits != 0 {
            let w = i * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // A scribbled bitmap may name workers that do not exist.
            if w < workers {
                // ORDERING: Relaxed: Retire, a request the worker polls; the
                // tokens posted below wake it if it sleeps.
                region.record(w).retire.store(RETIRE_MARK, Relaxed);
                any = true;
            }
        }
    }
    if any {
        // Sleeping visitors wake, see the mark and exit.
        region.control().sem.post(workers as u32);
    }
}

/// The error a worker recorded in the slot, if any, validated.
fn task_error(slot: &Slot, len: u64) -> Option<Error> {
    let err = &slot.err;
    // ORDERING: Acquire: pairs with Record's Release store of ERR_READY.
    match err.state.load(Acquire) {
        ERR_NONE | ERR_WRITING => return None,
        ERR_READY => {}
        _ => {
            return Some(Error::Corrupted {
                detail: "the error record state is not a valid value",
            });
        }
    }
    // ORDERING: Relaxed: ordered after the Acquire load above.
    let (start, end) = (err.start.load(Relaxed), err.end.load(Relaxed));
    let range = if start <= end && end <= len {
        start as usize..end as usize
    } else {
        0..0
    };
    let read = |cells: &[crate::shm::atomic::AtomicU8], n: u32, cap: usize| {
        let bytes: Vec<u8> = cells
            .iter()
            .take((n as usize).min(cap))
            .map(|c| c.load(Relaxed))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match err.kind.load(Relaxed) {
        KIND_PANIC => {
            let location = read(&err.loc, err.loc_len.load(Relaxed), LOC_CAP);
            Some(Error::TaskPanicked {
                message: read(&err.msg, err.msg_len.load(Relaxed), MSG_CAP),
                range,
                location: (!location.is_empty()).then_some(location),
            })
        }
        KIND_CORRUPT => Some(Error::Corrupted {
            detail: "a worker found the job descriptor out of bounds",
        }),
        KIND_MISCOUNT => Some(Error::Corrupted {
            detail: "a range of the job was handed out twice, or after it had finished",
        }),
        KIND_IO => Some(Error::Io(std::io::Error::other(format!(
            "a worker could not make the job's output in the shared heap writable: {}",
            read(&err.msg, err.msg_len.load(Relaxed), MSG_CAP)
        )))),
        _ => Some(Error::Corrupted {
            detail: "the error record kind is not a valid value",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_data_packs_and_refuses() {
        let mut d = InlineData::new();
        assert_eq!(d.put(&7u8), Some(0));
        assert_eq!(d.put(&1.5f64), Some(8));
        assert_eq!(&d.bytes[8..16], &1.5f64.to_ne_bytes());
        assert_eq!(d.reserve(INLINE_CAP, 1), None);
        assert_eq!(d.reserve(INLINE_CAP - 16, 8), Some(16));
        assert_eq!(d.reserve(1, 1), None);
        assert_eq!(InlineData::new().reserve(1, 2 * LINE), None, "over-aligned");
    }

    #[test]
    fn locations_resolve_against_the_slot() {
        assert_eq!(Loc::Arena(4096).resolve(100), 4096);
        assert_eq!(Loc::Inline(8).resolve(100), 108);
        assert_eq!(Loc::Heap(64).resolve(100), 64 | HEAP_TAG);
    }
}
