//! The worker process: what a forked child runs until it is told to stop or
//! its parent dies.
//!
//! A worker never returns into the code that forked it and never runs the
//! parent's destructors: it ends with `_exit`. It touches no parent-side lock
//! (a lock another parent thread held at the moment of the fork stays locked
//! forever in the child); it reads the region through the layout it was
//! forked with and allocates only to format a panic message (glibc's malloc
//! is fork-safe).

use std::any::Any;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use crate::job::{BadDescriptor, JobArgs, RunFn};
use crate::layout::{LOC_CAP, MSG_CAP, Slot};
use crate::os;
use crate::region::{Region, registry};
use crate::states::*;

/// How long an idle worker sleeps before it checks that its parent is alive
/// (belt and braces: the parent-death signal normally kills it first).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// True in worker processes only.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a pool worker.
pub(crate) fn in_worker() -> bool {
    // ORDERING: Relaxed: set once, before any task runs, in a process whose
    // only thread then reads it.
    IN_WORKER.load(Relaxed)
}

/// Everything a worker needs, copied into the child by `fork`.
pub(crate) struct WorkerCtx<'a> {
    pub(crate) region: &'a Region,
    pub(crate) index: usize,
    pub(crate) event_fd: RawFd,
    pub(crate) parent: u32,
    pub(crate) spin: u32,
}

/// The entry point of a freshly forked worker. Never returns.
pub(crate) fn worker_main(ctx: WorkerCtx<'_>) -> ! {
    // Our own code does not panic; if it ever did, the worker must still end
    // here, with `_exit`, rather than unwind into the parent's stack frames.
    let code = catch_unwind(AssertUnwindSafe(|| serve(&ctx))).unwrap_or(101);
    os::exit_now(code)
}

fn serve(ctx: &WorkerCtx<'_>) -> i32 {
    // ORDERING: Relaxed: see `in_worker`.
    IN_WORKER.store(true, Relaxed);
    if !os::worker_process_setup(ctx.parent) {
        return 0;
    }
    os::close_fds_except(ctx.event_fd);
    registry::unmap_others(ctx.region.base() as usize);
    let control = ctx.region.control();
    loop {
        let woken = control.sem.wait(ctx.spin, IDLE_CHECK);
        // ORDERING: SeqCst: pairs with the parent's store before it posts the
        // shutdown tokens.
        if control.shutdown.0.load(SeqCst) != 0 {
            return 0;
        }
        if !woken {
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } as u32 != ctx.parent {
                return 0;
            }
            continue;
        }
        while pass(ctx) {}
    }
}

/// Visits every slot whose pending bit is set, once. Returns whether it ran
/// any range (then another pass may find more).
fn pass(ctx: &WorkerCtx<'_>) -> bool {
    let ring = ctx.region.layout().ring;
    let pending = &ctx.region.control().pending.0;
    let mut did = false;
    for (w, word) in pending.iter().enumerate().take(ring.div_ceil(64)) {
        // ORDERING: Acquire: pairs with the parent's Release `fetch_or` after
        // it published the slot.
        let mut bits = word.load(Acquire);
        while bits != 0 {
            let s = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if s < ring {
                did |= run_slot(ctx, s);
            }
        }
    }
    did
}

/// Enters slot `s`, runs ranges until its claims are exhausted, and leaves.
/// Returns whether any range was run.
fn run_slot(ctx: &WorkerCtx<'_>, s: usize) -> bool {
    let region = ctx.region;
    let rec = region.record(ctx.index);
    let slot = region.slot(s);
    // ORDERING: SeqCst: announce ourselves *before* reading the slot's state
    // and abort flag. The parent stores state/abort (SeqCst) *before* it scans
    // the records; so either it sees us, or we see its store (design.md,
    // "Draining").
    rec.slot.store(s as u32, SeqCst);
    // ORDERING: SeqCst (acquire): the second half of that pair; also acquires
    // the descriptor published by the parent's Release store of `state`.
    if slot.desc.state.load(SeqCst) != SLOT_RUNNING {
        // ORDERING: Release: we touched nothing.
        rec.slot.store(NO_SLOT, Release);
        return false;
    }
    // ORDERING: Relaxed: ordered after the acquire load of `state` above.
    let d = &slot.desc;
    let (run, notify) = (d.run.load(Relaxed), d.notify.load(Relaxed));
    let (len, chunk) = (d.len.load(Relaxed), d.chunk.load(Relaxed).max(1));
    let args = JobArgs {
        base: region.base(),
        region_len: region.layout().len as u64,
        in_off: d.in_off.load(Relaxed),
        out_off: d.out_off.load(Relaxed),
        ctx_off: d.ctx_off.load(Relaxed),
        len,
    };
    let mut ran = false;
    loop {
        // ORDERING: AcqRel: the claim counter only hands out disjoint ranges;
        // the atomicity of the RMW is what matters.
        let start = slot.claim.0.fetch_add(chunk, AcqRel);
        if start >= len {
            clear_pending(region, s);
            break;
        }
        let end = start.saturating_add(chunk).min(len);
        // ORDERING: Relaxed stores, then a Release store of the phase: the
        // supervisor reads them only after reaping this process.
        rec.start.store(start, Relaxed);
        rec.end.store(end, Relaxed);
        rec.phase.store(PHASE_RUNNING, Release);
        // ORDERING: SeqCst: pairs with the SeqCst store of `abort` by the
        // parent; see the record store above.
        if slot.desc.abort.load(SeqCst) == 0 {
            ran = true;
            run_range(slot, &args, run, start, end);
        }
        // ORDERING: Release: see above.
        rec.phase.store(PHASE_IDLE, Release);
        let n = end - start;
        // ORDERING: AcqRel: Release publishes this range's output; Acquire on
        // the increment that completes the job makes every range's output
        // visible to the worker that then marks the slot done.
        if slot.done.0.fetch_add(n, AcqRel).wrapping_add(n) == len {
            complete(ctx, slot, notify);
        }
    }
    // ORDERING: SeqCst (so also Release: the parent's drain check then sees
    // all our writes). Clearing the record *before* reading `abort` pairs
    // with the parent storing `abort` before it scans the records: either we
    // see the abort and wake the waiters, or the parent's scan sees us gone.
    rec.slot.store(NO_SLOT, SeqCst);
    // ORDERING: SeqCst, the second half of that pair.
    if slot.desc.abort.load(SeqCst) != 0 {
        // A failed job is finished once no worker is left in it: tell the
        // waiters to look again.
        os::futex_wake(&slot.desc.state, u32::MAX);
        if notify & NOTIFY_EVENT != 0 {
            os::eventfd_signal(ctx.event_fd);
        }
    }
    ran
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
    // SAFETY: see `RunFn`: the mapping is live, the trampoline matches the
    // data, and this worker alone claimed `start..end`.
    match catch_unwind(AssertUnwindSafe(|| unsafe { f(args, s, e) })) {
        Ok(Ok(())) => {}
        Ok(Err(BadDescriptor)) => record_error(
            slot,
            KIND_CORRUPT,
            start,
            end,
            "job descriptor out of bounds",
            None,
        ),
        Err(payload) => {
            let message = payload_message(&*payload);
            let location = take_panic_location();
            record_error(slot, KIND_PANIC, start, end, &message, location.as_deref());
            // Dropping the payload runs user code that may panic again; the
            // worker is a process of its own, so leaking it is harmless.
            std::mem::forget(payload);
        }
    }
}

/// Marks the slot done and announces it. Called by the worker whose `done`
/// increment reached the job's length.
fn complete(ctx: &WorkerCtx<'_>, slot: &Slot, notify: u32) {
    // ORDERING: SeqCst: Release publishes all outputs (acquired through the
    // `done` chain) to the parent's Acquire load of `state`; SeqCst pairs with
    // the waiter's SeqCst store of `waiters` followed by its load of `state`.
    // The exchange fails if the parent already emptied the slot.
    if slot
        .desc
        .state
        .compare_exchange(SLOT_RUNNING, SLOT_DONE, SeqCst, Relaxed)
        .is_err()
    {
        return;
    }
    if notify & NOTIFY_EVENT != 0 {
        os::eventfd_signal(ctx.event_fd);
    }
    // ORDERING: SeqCst: see above.
    if slot.desc.waiters.load(SeqCst) != 0 {
        os::futex_wake(&slot.desc.state, u32::MAX);
    }
}

fn clear_pending(region: &Region, s: usize) {
    // ORDERING: Release: nothing depends on it but the next pass's Acquire.
    region.control().pending.0[s / 64].fetch_and(!(1u64 << (s % 64)), Release);
}

/// Writes the job's first error; later errors are dropped. Sets `abort`, so
/// the job's remaining ranges are skipped.
fn record_error(
    slot: &Slot,
    kind: u32,
    start: u64,
    end: u64,
    message: &str,
    location: Option<&str>,
) {
    let err = &slot.err;
    // ORDERING: AcqRel: claims the record; the first error wins.
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
        // ORDERING: Release: publishes the fields to the parent's Acquire.
        err.state.store(ERR_READY, Release);
    }
    // ORDERING: SeqCst: other workers' SeqCst loads of `abort` see it from
    // now on; they skip their remaining ranges.
    slot.desc.abort.store(1, SeqCst);
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

/// Where the last panic in this worker happened. Only workers write it, so no
/// parent thread can hold its lock at the moment of a fork.
static PANIC_LOCATION: Mutex<Option<String>> = Mutex::new(None);

fn take_panic_location() -> Option<String> {
    PANIC_LOCATION
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

/// Installs, once per process, a panic hook that in workers records where a
/// task panicked instead of printing to stderr (the message travels to the
/// caller as `Error::TaskPanicked`), and in the parent defers to the hook
/// that was installed before.
///
/// It is installed in the parent, before the first fork, because setting a
/// hook in a forked child would take a lock that another parent thread may
/// have held at the moment of the fork.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    if std::thread::panicking() {
        return;
    }
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if in_worker() {
                let location = info.location().map(|l| l.to_string());
                *PANIC_LOCATION
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = location;
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
