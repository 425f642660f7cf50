//! The documented values of every state word that lives in shared memory.
//!
//! Workers and the parent agree on these numbers and nothing else; the
//! protocols that move between them are written out, with their named
//! events, in `src/worker/README.md` (the slot protocol: slot, retry, record
//! and error states) and `src/shm/README.md` (the sleep protocol).

/// `Slot::state`: the slot holds no job. Workers that find this value leave
/// the slot without touching it.
pub(crate) const SLOT_EMPTY: u32 = 0;
/// `Slot::state`: a job is published; its descriptor is valid and workers may
/// claim ranges.
pub(crate) const SLOT_RUNNING: u32 = 1;
/// `Slot::state`: every element has been accounted for (`done == len`); the
/// last worker moved the slot here with a compare-exchange from `RUNNING`.
pub(crate) const SLOT_DONE: u32 = 2;

/// `Slot::notify` bit: write the completion eventfd when the job finishes
/// (asynchronous jobs, whose results the pool's result thread delivers).
pub(crate) const NOTIFY_EVENT: u32 = 1;
/// `Slot::notify` bit (the word carries the job's flags): claim ranges
/// *guided*: each claim takes a share of what is left (`remaining / (2 ×
/// workers)`, a multiple of `chunk`, at least `chunk`), so ranges start large
/// and shrink towards the end, where balance matters.
pub(crate) const FLAG_GUIDED: u32 = 2;
/// `Slot::notify` bit: write map outputs with streaming stores
/// (`Builder::stream_stores_from`).
pub(crate) const FLAG_STREAM: u32 = 4;

/// `WorkerRecord::slot` when the worker is in no slot.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// `WorkerRecord::phase`: the worker is not running user code.
pub(crate) const PHASE_IDLE: u32 = 0;
/// `WorkerRecord::phase`: the worker is running the range `start..end` of the
/// slot named in its record.
pub(crate) const PHASE_RUNNING: u32 = 1;

/// `RetryEntry::state`: unused.
pub(crate) const RETRY_EMPTY: u32 = 0;
/// `RetryEntry::state`: queued by the supervisor; any worker may claim it.
pub(crate) const RETRY_READY: u32 = 1;
/// `RetryEntry::state`: `RETRY_CLAIMED + w`: worker `w` claimed it (with a
/// compare-exchange from READY, so claim and owner are one atomic step) and is
/// running it.
pub(crate) const RETRY_CLAIMED: u32 = 2;

/// A worker's exit code after `max_tasks_per_worker` ranges: recycled, not
/// crashed.
pub(crate) const EXIT_RECYCLED: i32 = 100;
/// A worker's exit code when its own code failed (a bug): never a task.
pub(crate) const EXIT_BUG: i32 = 101;
/// A worker's exit code when the pool's initializer panicked.
pub(crate) const EXIT_INIT_FAILED: i32 = 102;
/// A worker's exit code when it left because the parent asked it to
/// (`RETIRE_MARK`): a replacement, counted in `worker_restarts`, that no job
/// notices (it exits between ranges, in no slot).
pub(crate) const EXIT_RETIRED: i32 = 103;

/// `WorkerRecord::oom`: the worker's last abort followed a failed
/// allocation. A distinctive value, so a scribbled word is not taken for it.
pub(crate) const OOM_MARK: u32 = 0x4f4f_4d21; // "OOM!"
/// `WorkerRecord::oom` (the word that says why a worker died): a task wrote
/// to the shared heap, which workers map read-only (`worker/heap_view.rs`).
pub(crate) const HEAP_WRITE_MARK: u32 = 0x4845_4150; // "HEAP"
/// `WorkerRecord::init`: the worker is running the pool's initializer.
/// Distinctive for the same reason.
pub(crate) const INIT_MARK: u32 = 0x494e_4954; // "INIT"
/// `WorkerRecord::retire`: the parent asks the worker to exit at its next
/// point between ranges, to be replaced. Distinctive, so that a scribbled
/// word does not retire workers.
pub(crate) const RETIRE_MARK: u32 = 0x4259_4521; // "BYE!"

/// `ErrorRecord::state`: no error recorded.
pub(crate) const ERR_NONE: u32 = 0;
/// `ErrorRecord::state`: a worker won the right to write the record and is
/// writing it. Readers treat this as "an error, details unavailable".
pub(crate) const ERR_WRITING: u32 = 1;
/// `ErrorRecord::state`: the record is complete.
pub(crate) const ERR_READY: u32 = 2;

/// `ErrorRecord::kind`: user code panicked.
pub(crate) const KIND_PANIC: u32 = 1;
/// `ErrorRecord::kind`: a worker found the job descriptor out of bounds.
pub(crate) const KIND_CORRUPT: u32 = 2;
/// `ErrorRecord::kind`: a range was handed out twice, or after its job had
/// finished: a runner's increment took the job's `done` counter past its
/// length, or a worker holding a claimed range found the slot no longer
/// RUNNING. No honest run does either (the claim, done or state word was
/// scribbled on).
pub(crate) const KIND_MISCOUNT: u32 = 3;
/// `ErrorRecord::kind`: a system call the worker needed for the range
/// failed (the message says which error): making the job's output in the
/// shared heap writable (`worker::heap_view::set`).
pub(crate) const KIND_IO: u32 = 4;
