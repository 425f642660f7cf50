//! The structures that live in the shared region, and where they sit.
//!
//! ```text
//! offset 0            Control        magic, shutdown flag, semaphore, pending bitmap,
//!                                    the result thread's doorbell
//! records_off         [WorkerRecord; workers]   one 128-byte line per worker
//! slots_off           [Slot; ring]              the job ring
//! arena_off (2 MiB)   arena                     ShmVec data, staged inputs, outputs
//! ```
//!
//! Everything here is `#[repr(C)]`, refers to other parts of the region by
//! offset (never by pointer), and is made of atomics, so that any process may
//! read or write any word at any time without undefined behaviour. Counters
//! that many processes update sit on cache lines of their own. Which process
//! writes which word, and when, is in `src/worker/README.md` (the slot
//! protocol) and `src/shm/README.md` (the sleep protocol).
//!
//! Uses `unsafe` (denied at the crate root): the shared structures are read
//! by reference in a raw mapping (`Inline` is `Sync` across processes).

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::mem::{offset_of, size_of};

use crate::error::Error;
use crate::shm::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};
use crate::shm::sync::{Doorbell, Semaphore};

/// The unit of alignment for shared structures: two 64-byte lines, because
/// adjacent-line prefetch makes neighbours share on x86.
pub(crate) const LINE: usize = 128;
/// The arena starts on a 2 MiB boundary so large blocks can use huge pages.
pub(crate) const ARENA_ALIGN: usize = 2 << 20;
/// Bytes of panic message a worker can report.
pub(crate) const MSG_CAP: usize = 480;
/// Bytes of panic location (`file:line:col`) a worker can report.
pub(crate) const LOC_CAP: usize = 224;
/// Bytes of per-slot inline data, for small `apply` arguments, results and
/// `map_with` contexts, so that they need no arena allocation.
pub(crate) const INLINE_CAP: usize = 256;
/// Words in the pending-work bitmap; bounds the ring size.
pub(crate) const PENDING_WORDS: usize = 16;
/// The largest ring.
pub(crate) const MAX_RING: usize = PENDING_WORDS * 64;
/// Retry entries per slot: how many lost ranges of one job can wait for
/// another attempt at once.
pub(crate) const RETRY_CAP: usize = 8;
/// A value every live region starts with, to recognise our own mapping.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmpool1");

/// One value alone on its own line.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Line<T>(pub(crate) T);

/// The region's header.
#[repr(C)]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Control {
    pub(crate) magic: Line<AtomicU64>,
    /// Set (to 1) by the parent when workers should exit after their current
    /// range. Read by workers each time they wake.
    pub(crate) shutdown: Line<AtomicU32>,
    /// Work tokens: posted by submitters, consumed by workers.
    pub(crate) sem: Semaphore,
    /// Bit `s` set: slot `s` may have unclaimed ranges. Set by the parent on
    /// publish and when it queues a retry; cleared by a worker that finds the
    /// slot's claims exhausted, and by the parent when it frees the slot.
    pub(crate) pending: Line<[AtomicU64; PENDING_WORDS]>,
    /// The panic of the first worker whose initializer failed (its `start`
    /// and `end` are unused).
    pub(crate) init_err: ErrorRecord,
    /// Whether a worker that completes an asynchronous job writes the
    /// completion eventfd (the result thread may be asleep on it).
    pub(crate) doorbell: Doorbell,
}

/// What one worker is doing. Only that worker writes it while it lives; the
/// supervisor clears it after reaping the worker.
#[repr(C, align(128))]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct WorkerRecord {
    /// The slot the worker is in, or `NO_SLOT`. Written *before* the worker
    /// looks at the slot's state, so the parent can tell when a slot is
    /// drained.
    pub(crate) slot: AtomicU32,
    /// `PHASE_IDLE` or `PHASE_RUNNING`.
    pub(crate) phase: AtomicU32,
    /// `OOM_MARK` once the worker's `SIGABRT` handler saw that the abort
    /// followed a failed allocation (its memory limit was reached).
    pub(crate) oom: AtomicU32,
    /// `INIT_MARK` while the worker runs the pool's initializer (0 before
    /// and after); a death then is a failed initializer, not a crash in a
    /// task.
    pub(crate) init: AtomicU32,
    /// The range being run, valid while `phase == PHASE_RUNNING`.
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds when the range started (only written
    /// when the pool has a task timeout).
    pub(crate) started_ns: AtomicU64,
    /// The slot whose range the worker is running (or skipping), stored
    /// with SeqCst before it checks `abort` and `state`; `NO_SLOT` between
    /// ranges. The harvest of a job that said DONE hands its output over
    /// only if no worker in the slot is in one of its ranges.
    pub(crate) in_range: AtomicU32,
    /// `RETIRE_MARK` once the parent asks the worker to exit and be
    /// replaced (it ran a job whose slot was found corrupt). Set by the
    /// parent; cleared by each worker when it starts.
    pub(crate) retire: AtomicU32,
    /// Odd while the worker holds a claim it has not recorded (from just
    /// before a claim to its Begin, and from Exit until the range is
    /// counted), when the pool has a task timeout; each hold has a count of
    /// its own. A worker seen in a slot with the same odd count for longer
    /// than the timeout is not moving (stopped after a claim, say), and is
    /// killed like one that overran.
    pub(crate) steps: AtomicU64,
}

/// The job descriptor: written by the parent while the slot is empty and no
/// worker is in it, published by the `Release` store of `state`.
#[repr(C, align(128))]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Desc {
    /// `SLOT_EMPTY`, `SLOT_RUNNING` or `SLOT_DONE`; also the futex word that
    /// blocking callers sleep on.
    pub(crate) state: AtomicU32,
    /// Non-zero while a parent thread may sleep on `state`; the worker that
    /// completes the job then wakes it.
    pub(crate) waiters: AtomicU32,
    /// `NOTIFY_*` bits: how to announce completion.
    pub(crate) notify: AtomicU32,
    /// Non-zero once the job has failed: workers skip the ranges they still
    /// claim (counting them as done without running them).
    pub(crate) abort: AtomicU32,
    /// The address of the monomorphised trampoline (a `job::RunFn`).
    pub(crate) run: AtomicUsize,
    pub(crate) in_off: AtomicU64,
    pub(crate) out_off: AtomicU64,
    pub(crate) ctx_off: AtomicU64,
    pub(crate) len: AtomicU64,
    pub(crate) chunk: AtomicU64,
    /// Where the inputs beyond the first two are (`job::More`): `map3`'s
    /// second and third inputs, or a table's offset and length. Part of the
    /// descriptor, so that a worker rewriting them fails the job.
    pub(crate) more: [AtomicU64; 2],
    /// The job's output in the shared heap, if it has one there: its heap
    /// offset and length in bytes (0 and 0 otherwise). A worker makes these
    /// pages of the heap's writable alias writable while it runs the job's
    /// ranges, and writes no other heap page (`worker::heap_view`).
    pub(crate) window: [AtomicU64; 2],
    /// `CLOCK_MONOTONIC` nanoseconds of the job's first claim (0 until then),
    /// set once by whichever runner claims first; for `Stats::profile`.
    pub(crate) first_claim_ns: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds at which the completing runner finished
    /// the last range; for `Stats::profile`.
    pub(crate) done_ns: AtomicU64,
}

/// The first error of a job, written by the worker that hit it.
#[repr(C, align(128))]
pub(crate) struct ErrorRecord {
    /// `ERR_NONE`, `ERR_WRITING`, `ERR_READY`. A worker claims the record
    /// with a compare-exchange from `ERR_NONE`; the first error wins.
    pub(crate) state: AtomicU32,
    pub(crate) kind: AtomicU32,
    pub(crate) msg_len: AtomicU32,
    pub(crate) loc_len: AtomicU32,
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
    pub(crate) msg: [AtomicU8; MSG_CAP],
    pub(crate) loc: [AtomicU8; LOC_CAP],
}

/// A range of a job to run again because the worker running it died.
#[repr(C)]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct RetryEntry {
    /// `RETRY_EMPTY`, `RETRY_READY` (queued by the supervisor) or
    /// `RETRY_CLAIMED + w` (worker `w` took it with a compare-exchange).
    pub(crate) state: AtomicU32,
    /// Only a worker the supervisor asked for as this number or later
    /// (`WorkerCtx::born`) may take the entry: one started after the range
    /// was lost. 0: any worker (design.md, "A retry goes to a new worker").
    pub(crate) after: AtomicU32,
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
}

/// Per-slot scratch bytes, only ever accessed through raw pointers.
#[repr(C, align(128))]
pub(crate) struct Inline(UnsafeCell<[u8; INLINE_CAP]>);

#[cfg(shmpool_loom)]
impl Default for Inline {
    fn default() -> Self {
        Inline(UnsafeCell::new([0; INLINE_CAP]))
    }
}

#[cfg(shmpool_loom)]
impl Default for ErrorRecord {
    fn default() -> Self {
        ErrorRecord {
            state: AtomicU32::default(),
            kind: AtomicU32::default(),
            msg_len: AtomicU32::default(),
            loc_len: AtomicU32::default(),
            start: AtomicU64::default(),
            end: AtomicU64::default(),
            msg: std::array::from_fn(|_| AtomicU8::default()),
            loc: std::array::from_fn(|_| AtomicU8::default()),
        }
    }
}

// SAFETY: `Inline` is never read or written through a reference: the parent
// and the workers reach it only through raw pointers computed from region
// offsets, under the slot protocol's ownership rules.
unsafe impl Sync for Inline {}

/// How much of a job has been accounted for, in two independent sums over
/// the same ranges. A runner adds to both after each range (`squares`
/// first), so the pair moves together; a scribble that sets one word to
/// "finished" leaves the other short.
#[repr(C, align(128))]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Counts {
    /// Elements finished (run, or skipped after an abort): `end - start`
    /// per range.
    pub(crate) done: AtomicU64,
    /// `end² - start²` per range, wrapping. Over any partition of `0..len`
    /// into ranges the sum telescopes to `len²` (mod 2^64), in any order;
    /// a range missing or counted twice leaves it off.
    pub(crate) squares: AtomicU64,
}

/// Words of a slot's visitor bitmap: one bit per worker.
pub(crate) const VISITOR_WORDS: usize = 16;
/// The most workers a region has room for (the builder allows as many).
pub(crate) const MAX_WORKERS: usize = VISITOR_WORDS * 64;

/// The claim counter, and the workers that ran ranges of the job.
#[repr(C, align(128))]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Claim {
    /// The next unclaimed element index; workers `fetch_add` the chunk size.
    pub(crate) next: AtomicU64,
    /// Bit `w % 64` of word `w / 64`: worker `w` ran ranges of the job (set
    /// once per visit, before its first range; cleared by the parent on
    /// publish). Those are the workers the parent replaces if the slot is
    /// found corrupt. On the counter's line, which the parent's publish and
    /// every runner's claim write anyway, so the bitmap costs no line
    /// transfer of its own (the sixteenth word, for workers 960 and up,
    /// spills onto the next line).
    pub(crate) visitors: [AtomicU64; VISITOR_WORDS],
}

/// One entry of the job ring.
#[repr(C)]
#[cfg_attr(shmpool_loom, derive(Default))]
pub(crate) struct Slot {
    pub(crate) desc: Desc,
    pub(crate) claim: Claim,
    pub(crate) counts: Counts,
    pub(crate) err: ErrorRecord,
    /// Ranges queued for another attempt (`Builder::max_retries`).
    pub(crate) retries: Line<[RetryEntry; RETRY_CAP]>,
    pub(crate) inline: Inline,
}

/// Where each part of a region lies. Computed once by the parent and copied
/// into each worker at fork; never read back from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) workers: usize,
    pub(crate) ring: usize,
    pub(crate) records_off: usize,
    pub(crate) slots_off: usize,
    pub(crate) arena_off: usize,
    /// The total size of the region.
    pub(crate) len: usize,
}

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl Layout {
    /// The layout for `workers` workers, a ring of `ring` slots and an arena
    /// of at least `arena_bytes` bytes.
    pub(crate) fn new(workers: usize, ring: usize, arena_bytes: usize) -> Result<Self, Error> {
        if workers == 0 {
            return Err(Error::invalid("a pool needs at least one worker"));
        }
        if workers > MAX_WORKERS {
            return Err(Error::invalid(format!(
                "{workers} workers requested, at most {MAX_WORKERS} are supported"
            )));
        }
        if !(1..=MAX_RING).contains(&ring) {
            return Err(Error::invalid(format!(
                "the ring must hold between 1 and {MAX_RING} slots, not {ring}"
            )));
        }
        let records_off = round_up(size_of::<Control>(), LINE);
        let slots_off = round_up(records_off + workers * size_of::<WorkerRecord>(), LINE);
        let arena_off = round_up(slots_off + ring * size_of::<Slot>(), ARENA_ALIGN);
        let len = arena_bytes
            .max(LINE)
            .checked_next_multiple_of(LINE)
            .and_then(|arena| arena_off.checked_add(arena))
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or_else(|| Error::invalid("the arena size overflows the address space"))?;
        Ok(Layout {
            workers,
            ring,
            records_off,
            slots_off,
            arena_off,
            len,
        })
    }

    /// The end of the first `n` slots within the region (`n <= ring`).
    pub(crate) fn slot_end(&self, n: usize) -> usize {
        self.slots_off + n * size_of::<Slot>()
    }

    /// The offset of slot `s`'s inline area within the region.
    pub(crate) fn inline_off(&self, s: usize) -> u64 {
        (self.slots_off + s * size_of::<Slot>() + offset_of!(Slot, inline)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::align_of;

    #[test]
    fn hot_words_have_their_own_lines() {
        assert_eq!(size_of::<WorkerRecord>(), LINE);
        assert_eq!(size_of::<Desc>(), LINE);
        assert_eq!(offset_of!(Slot, claim) % LINE, 0);
        assert_eq!(offset_of!(Slot, counts) % LINE, 0);
        assert!(offset_of!(Slot, counts) - offset_of!(Slot, claim) >= LINE);
        assert_eq!(size_of::<Counts>(), LINE);
        // The first 15 visitor words share the claim counter's line.
        assert_eq!(offset_of!(Claim, visitors) + 15 * 8, LINE);
        assert_eq!(VISITOR_WORDS * 64, MAX_WORKERS);
        assert_eq!(size_of::<Slot>() % LINE, 0);
        assert_eq!(align_of::<Slot>(), LINE);
        assert_eq!(size_of::<Semaphore>(), LINE);
    }

    #[test]
    fn the_fault_suite_knows_where_the_completion_words_are() {
        // `shm-tests/common/mod.rs` (`forge`) forges these words from inside
        // a task, at these offsets from the start of a slot.
        assert_eq!(offset_of!(Slot, desc) + offset_of!(Desc, state), 0);
        assert_eq!(offset_of!(Desc, notify), 8);
        assert_eq!(crate::shm::states::NOTIFY_EVENT, 1);
        assert_eq!(offset_of!(Desc, abort), 12);
        assert_eq!(offset_of!(Desc, len), 48);
        assert_eq!(offset_of!(Desc, chunk), 56);
        assert_eq!(offset_of!(Slot, claim) + offset_of!(Claim, next), 128);
        assert_eq!(offset_of!(Slot, counts) + offset_of!(Counts, done), 384);
        assert_eq!(offset_of!(Slot, counts) + offset_of!(Counts, squares), 392);
        // The work tokens (`Semaphore::count`, its first word) in the
        // control block, and a worker's record after the 1408-byte block.
        assert_eq!(offset_of!(Control, sem), 256);
        assert_eq!(size_of::<Control>(), 1408);
        assert_eq!(offset_of!(WorkerRecord, phase), 4);
        assert_eq!(offset_of!(WorkerRecord, init), 12);
        assert_eq!(offset_of!(WorkerRecord, start), 16);
        assert_eq!(offset_of!(WorkerRecord, end), 24);
        assert_eq!(offset_of!(WorkerRecord, steps), 48);
    }

    #[test]
    fn layout_is_ordered_and_aligned() {
        let l = Layout::new(4, 256, 1 << 20).unwrap();
        assert!(l.records_off >= size_of::<Control>());
        assert!(l.slots_off >= l.records_off + 4 * LINE);
        assert_eq!(l.arena_off % ARENA_ALIGN, 0);
        assert!(l.arena_off >= l.slots_off + 256 * size_of::<Slot>());
        assert_eq!(l.len, l.arena_off + (1 << 20));
        assert_eq!(l.inline_off(1) - l.inline_off(0), size_of::<Slot>() as u64);
        assert!(Layout::new(0, 8, 0).is_err());
        assert!(Layout::new(MAX_WORKERS, 8, 0).is_ok());
        assert!(Layout::new(MAX_WORKERS + 1, 8, 0).is_err());
        assert!(Layout::new(1, MAX_RING + 1, 0).is_err());
        assert!(Layout::new(1, 8, usize::MAX).is_err());
    }
}
