//! Loom models of the shared-memory protocols (design.md, "Model
//! checking"). Built only with `--cfg shmpool_loom`, which gives the region
//! loom's atomics (`shm::atomic`) and a futex stand-in (`shm::futex`); run
//! them with
//!
//! ```text
//! RUSTFLAGS="--cfg shmpool_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --lib models::
//! ```
//!
//! Threads stand in for processes: two workers and the parent (loom's main
//! thread). The region is a real one (`Region::create`, a memfd mapping),
//! and the code under test is the crate's own: the semaphore, the worker's
//! loop (`worker::work` and everything it calls), and the parent's
//! `Ring::publish`, `Ring::take_free`, `Ring::try_harvest`, `Ring::lost`
//! and `core::sleep_on_job`. What the models replace is said in each model's
//! docs: the job's task (a function that records which elements ran), the
//! blocking caller's loop (`Core::wait_sync` without its ring lock, spin and
//! timeout kick) and the pool's shutdown (the flag and tokens of
//! `Supervisor`'s stop, without reaping).
//!
//! Each model bounds loom's search by preemptions (loom explores every
//! interleaving with at most that many preemptions of a runnable thread, and
//! every value the memory model allows each load); the whole set checks in
//! about a minute on two cores, in release mode.
//!
//! Uses `unsafe` (denied at the crate root): the model task has the
//! trampolines' signature (`RunFn`, an `unsafe fn`) and writes loom's cells.

#![allow(unsafe_code)]

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::thread;

use crate::parent::core::sleep_on_job;
use crate::parent::ring::{
    Harvest, InlineData, Job, Loc, Out, RawOut, Ring, Spec, Verdict, Waiter,
};
use crate::shm::layout::Layout;
use crate::shm::region::Region;
use crate::shm::states::RETRY_EMPTY;
use crate::shm::sync::Semaphore;
use crate::worker::job::{BadDescriptor, JobArgs, RunFn};
use crate::worker::{WorkerConfig, WorkerCtx, work};

/// Preemptions loom may add to an execution, for all models but the
/// two-job one (which takes 1: at 2 it runs for eight minutes). Enough to
/// find every bug the mutations in design.md ("Model checking") plant.
const PREEMPTIONS: usize = 2;

/// A wait that never times out: the futex stand-in never expires a sleep,
/// so a wake-up the protocol owes and never sends is a deadlock loom
/// reports, not a late return.
const FOREVER: Duration = Duration::MAX;

/// Workers in the pool models (threads besides loom's main thread).
const WORKERS: usize = 2;

/// Jobs and elements per job the task records.
const JOBS: usize = 2;
const LEN: usize = 2;

fn builder(preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b
}

// ---------------------------------------------------------------------------
// The semaphore

/// Two workers sleep on the semaphore and the parent posts one token at a
/// time: both wake (no wake-up is lost between a sleeper's check of the
/// count and its futex wait, nor between a post and its look at
/// `sleepers`), each takes one token, and none is left over or made up.
#[test]
fn semaphore_posts_wake_every_sleeper() {
    builder(PREEMPTIONS).check(|| {
        let sem = Arc::new(Semaphore::default());
        sem.set_wake_cap(2);
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let sem = sem.clone();
                thread::spawn(move || assert!(sem.wait(0, FOREVER)))
            })
            .collect();
        sem.post(1);
        sem.post(1);
        for t in sleepers {
            t.join().unwrap();
        }
        // Two posted, two taken.
        assert!(!sem.try_acquire());
    });
}

/// A post of two tokens wakes one sleeper (the wake cap is 1); the one it
/// wakes relays, as a worker does that leaves work behind, and the relay
/// wakes the other even if it went to sleep with a token in the count. Every
/// token is accounted for: 2 posted + 2 relayed - 2 taken.
#[test]
fn semaphore_relays_reach_a_capped_sleeper() {
    builder(PREEMPTIONS).check(|| {
        let sem = Arc::new(Semaphore::default());
        sem.set_wake_cap(1);
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let sem = sem.clone();
                thread::spawn(move || {
                    assert!(sem.wait(0, FOREVER));
                    sem.relay();
                })
            })
            .collect();
        sem.post(2);
        for t in sleepers {
            t.join().unwrap();
        }
        assert!(sem.try_acquire());
        assert!(sem.try_acquire());
        assert!(!sem.try_acquire());
    });
}

// ---------------------------------------------------------------------------
// The pool: the task, the workers, the parent

/// What the model task saw: per job and element, how often it ran, and an
/// output cell it wrote (loom checks that the parent's read after the
/// harvest happens after that write).
struct Trace {
    runs: [[AtomicU32; LEN]; JOBS],
    out: [[UnsafeCell<u32>; LEN]; JOBS],
    /// The worker number (`WorkerCtx::born`) of the worker that last ran
    /// each element.
    born: [[AtomicU32; LEN]; JOBS],
}

loom::lazy_static! {
    /// One per execution.
    static ref TRACE: Trace = Trace {
        runs: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        out: std::array::from_fn(|_| std::array::from_fn(|_| UnsafeCell::new(0))),
        born: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
    };
}

loom::thread_local! {
    /// The worker number of the worker this thread stands in for.
    static BORN: std::cell::Cell<u32> = std::cell::Cell::new(0);
}

/// The model's task in place of a trampoline: the job's index travels in the
/// context offset; each element counts its run and writes its output cell.
///
/// # Safety
/// None beyond `RunFn`'s: it touches nothing in the region.
unsafe fn record(args: &JobArgs, start: usize, end: usize) -> Result<(), BadDescriptor> {
    let job = args.ctx_off as usize;
    for i in start..end {
        // ORDERING: Relaxed: a tally read after every thread is joined.
        TRACE.runs[job][i].fetch_add(1, Relaxed);
        // ORDERING: Relaxed: as above.
        TRACE.born[job][i].store(BORN.with(std::cell::Cell::get), Relaxed);
        // SAFETY: loom checks this: only the worker that claimed element
        // `i` writes it, and the parent reads it after the harvest.
        TRACE.out[job][i].with_mut(|p| unsafe { *p += 1 });
    }
    Ok(())
}

/// Publishes job `job` (`len` elements of one each) in a free slot, as
/// `Core::submit` does once it has one, and posts `tokens`.
fn submit(region: &Region, ring: &mut Ring, job: usize, len: u64, tokens: u32) -> (usize, u64) {
    let s = loop {
        // A draining slot frees itself when its last worker leaves; the
        // real submit sleeps on the ring's condition variable with a tick.
        match ring.take_free(region) {
            Some(s) => break s,
            None => thread::yield_now(),
        }
    };
    let spec = Spec {
        run: record as RunFn as usize,
        input: Loc::Arena(0),
        output: Loc::Arena(0),
        ctx: Loc::Arena(job as u64),
        len,
        chunk: 1,
        more: [0; 2],
        window: [0; 2],
        guided: false,
        stream: false,
        inline: InlineData::new(),
    };
    let seq = ring.publish(
        region,
        s,
        &spec,
        Job::new(len, Out::Nothing, [None, None, None, None], Waiter::Sync),
        0,
    );
    region.control().sem.post(tokens);
    (s, seq)
}

/// The blocking caller's wait (`Core::wait_sync`): harvests the job if it is
/// finished, else sleeps on the slot's state word. Reduced: no ring lock (the
/// parent is one thread here), no spin, and no kick on a timed-out sleep
/// (the futex stand-in never times out, so the model relies on the wake-up).
fn wait(region: &Region, ring: &mut Ring, s: usize, seq: u64) -> Harvest {
    loop {
        if let Some(h) = ring.try_harvest(region, s, Some(seq)) {
            ring.in_flight -= 1;
            return h;
        }
        let draining = ring.awaits_drain(s);
        sleep_on_job(&region.slot(s).desc, draining);
    }
}

/// Checks that job `job` finished with every one of its `len` elements run
/// exactly once, and reads the outputs (loom checks the reads are ordered
/// after the workers' writes).
fn check_job(h: Harvest, job: usize, len: usize) {
    assert!(matches!(h.outcome, Ok(RawOut::Empty)), "job {job} failed");
    for i in 0..len {
        // ORDERING: Relaxed: the harvest acquired the job's completion.
        assert_eq!(TRACE.runs[job][i].load(Relaxed), 1, "job {job} element {i}");
        // SAFETY: loom checks the write happens before this read.
        assert_eq!(TRACE.out[job][i].with(|p| unsafe { *p }), 1);
    }
}

/// A worker running the real worker loop (`worker::work`) as worker
/// `index`, the supervisor's worker number `born`; with `look_first`, it
/// visits the pending slots once before it first waits, as a replacement
/// does. Reduced: no fork, no initializer, no parent check (the wait never
/// times out).
fn spawn_worker(
    region: &Arc<Region>,
    index: usize,
    born: u32,
    look_first: bool,
) -> thread::JoinHandle<i32> {
    let region = region.clone();
    thread::spawn(move || {
        BORN.with(|b| b.set(born));
        let stdin = std::io::stdin();
        let ctx = WorkerCtx {
            region: &region,
            index,
            born,
            // Never signalled: no model job asks for an event.
            event_fd: stdin.as_fd(),
            parent: 0,
            config: WorkerConfig {
                spin: 0,
                spinners: 0,
                initializer: None,
                max_tasks: 0,
                memory_limit: None,
                timed: false,
                flush_stdout: false,
            },
        };
        work(&ctx, 0, 0, u64::MAX, FOREVER, look_first)
    })
}

/// Starts the workers, the template's first (worker number 0), each from
/// its first wait on the semaphore.
fn start_workers(region: &Arc<Region>) -> Vec<thread::JoinHandle<i32>> {
    region.control().sem.set_wake_cap(WORKERS as u32);
    (0..WORKERS)
        .map(|index| spawn_worker(region, index, 0, false))
        .collect()
}

/// The pool's stop, reduced to what the workers see: the shutdown flag,
/// then a token for each (`Supervisor`'s stop); then the workers exit
/// cleanly.
fn shut_down(region: &Region, workers: Vec<thread::JoinHandle<i32>>) {
    // ORDERING: SeqCst, as the supervisor's store before its tokens.
    region.control().shutdown.0.store(1, SeqCst);
    region.control().sem.post_all(WORKERS as u32);
    for w in workers {
        assert_eq!(w.join().unwrap(), 0);
    }
}

fn region(ring: usize) -> Arc<Region> {
    Region::create(Layout::new(WORKERS, ring, 4096).unwrap()).unwrap()
}

/// Claim -> run -> done -> complete: a job of two elements, two workers
/// woken by two tokens, the blocking caller waiting on the slot. Every
/// element is claimed and run exactly once, the job completes once (its
/// harvest is `Ok` with counts that add up, checked by `try_harvest`
/// itself), its outputs are visible to the caller, and the caller wakes.
#[test]
fn a_job_runs_each_element_once_and_wakes_its_caller() {
    builder(PREEMPTIONS).check(|| {
        let region = region(1);
        let workers = start_workers(&region);
        let mut ring = Ring::new(1);
        let (s, seq) = submit(&region, &mut ring, 0, LEN as u64, 2);
        let h = wait(&region, &mut ring, s, seq);
        check_job(h, 0, LEN);
        shut_down(&region, workers);
    });
}

/// The worker-drain / parent-harvest pair: a one-slot ring runs two jobs of
/// one element back to back, with both workers woken for the first, so one
/// of them may enter the slot late, after the job finished (or after it was
/// harvested). The harvest leaves the slot draining while a worker is in
/// it, and `take_free` gives it out again only once it is drained: a worker
/// that read the first job's descriptor never claims or runs an element of
/// the second (each element of each job runs exactly once, under the right
/// job's index), and no output is written after its job was harvested.
#[test]
fn a_slot_is_not_reused_while_a_worker_is_in_it() {
    builder(1).check(|| {
        let region = region(1);
        let workers = start_workers(&region);
        let mut ring = Ring::new(1);
        for job in 0..JOBS {
            let (s, seq) = submit(&region, &mut ring, job, 1, WORKERS as u32);
            let h = wait(&region, &mut ring, s, seq);
            check_job(h, job, 1);
        }
        shut_down(&region, workers);
        // Nothing ran after its harvest either (a late worker running the
        // first job's task on the second job's claims).
        for job in 0..JOBS {
            // ORDERING: Relaxed: every worker is joined.
            assert_eq!(TRACE.runs[job][0].load(Relaxed), 1, "job {job} ran again");
        }
    });
}

/// A range lost with its worker runs again on a worker started after the
/// loss, never on an older one (the retry protocol, `shm/README.md`;
/// design.md, "A retry goes to a new worker"). An old worker (number 0)
/// runs element 1 of a two-element job while the parent queues element 0,
/// which a worker that died had claimed, as a retry kept for workers
/// numbered 1 and up (Requeue, Repend: `Ring::lost`), concurrently with the
/// old worker's Unpend and LookRetries. Then the replacement (number 1)
/// starts and makes its first pass over the pending slots; no token is
/// posted for it. If the old worker's Unpend could clear the slot's pending
/// bit after the Repend without its LookRetries seeing the entry, the
/// replacement would find no pending slot and sleep forever, and so would
/// the caller (the futex stand-in never times out), which loom reports; if
/// the old worker took the retry, element 0 would run on it, which the
/// model checks.
#[test]
fn a_retry_kept_for_a_new_worker_reaches_it() {
    builder(PREEMPTIONS).check(|| {
        let region = region(1);
        region.control().sem.set_wake_cap(WORKERS as u32);
        let old = spawn_worker(&region, 0, 0, false);
        let mut ring = Ring::new(1);
        // Element 0 was claimed by a worker that died before it counted
        // it: the claim counter is past it before any worker looks.
        let (s, seq) = submit(&region, &mut ring, 0, LEN as u64, 0);
        // ORDERING: SeqCst: the dead worker's Claim, published by the post.
        region.slot(s).claim.next.store(1, SeqCst);
        region.control().sem.post(1);
        let error = || crate::Error::WorkerDied {
            pid: 0,
            signal: None,
            exit_code: None,
            range: Some(0..1),
        };
        assert!(ring.lost(&region, s, 1, |_| Verdict::Range(0..1, 1, error())));
        let new = spawn_worker(&region, 1, 1, true);
        let h = wait(&region, &mut ring, s, seq);
        check_job(h, 0, LEN);
        shut_down(&region, vec![old, new]);
        // ORDERING: Relaxed: every worker is joined.
        assert_eq!(
            TRACE.born[0][0].load(Relaxed),
            1,
            "the old worker ran the retry"
        );
        // ORDERING: Relaxed: as above. The entry came free once the retry
        // ran (FreeRetry).
        let entries = &region.slot(s).retries.0;
        assert!(entries.iter().all(|e| e.state.load(Relaxed) == RETRY_EMPTY));
    });
}

// ---------------------------------------------------------------------------
// The result thread's doorbell

/// Two workers each complete one asynchronous job (Complete, then
/// LookAsleep and, if it says so, a write of the eventfd) while the result
/// thread loops as `result::result_loop` does (its steps copied here; only
/// the doorbell is the crate's code): a look that finds nothing is followed
/// by Announce and one more look, and only a look after Announce that finds
/// nothing is followed by a sleep on the eventfd; a look that finds a job,
/// and every wake-up, is followed by Awake. A third thread writes the
/// eventfd once, as the parent's pokes do, so that the result thread also
/// wakes without a ring. The eventfd is a counter with a futex on it,
/// level-triggered as `poll` sees one. A completion the doorbell let go
/// unannounced after the last look would leave the result thread asleep
/// forever (the model's sleep has no tick), which loom reports.
#[test]
fn the_doorbell_rings_for_a_completion_after_the_last_look() {
    use crate::shm::atomic::AtomicU32 as Word;
    use crate::shm::futex;
    use crate::shm::sync::Doorbell;

    builder(PREEMPTIONS).check(|| {
        let shared = Arc::new((
            Doorbell::default(),
            [Word::new(0), Word::new(0)],
            Word::new(0),
        ));
        let workers: Vec<_> = (0..2)
            .map(|j| {
                let shared = shared.clone();
                thread::spawn(move || {
                    let (bell, done, event) = &*shared;
                    // Complete.
                    done[j].store(1, SeqCst);
                    if bell.should_ring() {
                        event.fetch_add(1, SeqCst);
                        futex::wake(event, 1);
                    }
                })
            })
            .collect();
        let poke = {
            let shared = shared.clone();
            thread::spawn(move || {
                let (_, _, event) = &*shared;
                event.fetch_add(1, SeqCst);
                futex::wake(event, 1);
            })
        };
        let (bell, done, event) = &*shared;
        let mut found = [false; 2];
        let mut announced = false;
        let mut drained = 0;
        while found != [true; 2] {
            if announced {
                bell.announce();
            }
            // The look (LookDone of each unfinished job).
            let mut any = false;
            for (f, d) in found.iter_mut().zip(done) {
                if !*f && d.load(SeqCst) == 1 {
                    *f = true;
                    any = true;
                }
            }
            if any {
                if announced {
                    bell.awake();
                    announced = false;
                }
                continue;
            }
            if !announced {
                announced = true;
                continue;
            }
            // Sleep until the eventfd is written, then drain it.
            while event.load(SeqCst) == drained {
                futex::wait(event, drained, None);
            }
            drained = event.load(SeqCst);
            bell.awake();
            announced = false;
        }
        for w in workers {
            w.join().unwrap();
        }
        poke.join().unwrap();
    });
}
