//! The pool's limits and life-cycle controls: task timeouts, memory limits,
//! cancellation, initializers, worker recycling, prompt termination, and a
//! worker that corrupts the control block. Each fault fails only its own job,
//! with a typed error, and the pool's next map is correct.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Gate, assert_healthy, deadline, is_dead, wait_until};
use shmpool::{Error, Pool};

/// Spins forever on element `bad`; passes the others through.
fn spin_on(bad: &u64, x: u64) -> u64 {
    if x == *bad {
        loop {
            std::hint::spin_loop();
        }
    }
    x
}

#[test]
fn a_task_past_its_timeout_is_killed_and_its_job_fails() {
    deadline(60, || {
        let limit = Duration::from_millis(100);
        let pool = Pool::builder()
            .workers(2)
            .task_timeout(limit)
            .build()
            .unwrap();
        let xs: Vec<u64> = (0..1000).collect();
        let before = pool.worker_pids();
        let t = Instant::now();
        let err = pool.map_with(777u64, &xs, spin_on).unwrap_err();
        let took = t.elapsed();
        let killed = match &err {
            Error::TaskTimedOut {
                pid, after, range, ..
            } => {
                assert_eq!(*after, limit);
                assert!(range.clone().expect("a range").contains(&777), "{err}");
                *pid
            }
            other => panic!("expected TaskTimedOut, got {other:?}"),
        };
        assert!(
            before.contains(&killed),
            "{killed} is not one of {before:?}"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            err.to_string()
                .starts_with("task timed out after 100ms on elements "),
            "{err}"
        );
        // Not retried: exactly one worker was killed and replaced.
        assert!(wait_until(Duration::from_secs(5), || pool
            .stats()
            .worker_restarts
            == 1));
        let after = pool.worker_pids();
        assert_eq!(before.iter().filter(|p| !after.contains(p)).count(), 1);
        assert!(!after.contains(&killed), "the killed worker was replaced");
        // A blocking apply times out the same way.
        let err = pool.apply(5u64, |x| spin_on(&5, x)).unwrap_err();
        assert!(
            matches!(err, Error::TaskTimedOut { range: Some(_), .. }),
            "{err:?}"
        );
        assert_healthy(&pool);
        // A job of many short ranges (50 elements of 0-1 ms) is not affected
        // by the timeout, however long the whole job takes.
        let xs: Vec<u64> = (0..400).collect();
        let ys = pool.map(&xs, |x| common::sleepy(x % 2)).unwrap();
        assert_eq!(ys.len(), 400);
    })
}

/// Leaves its worker as one stopped between a claim and the range's
/// start: the record says "in the slot, between ranges", and the process
/// stops itself. 2: the record was not found.
fn stops_between_ranges(x: u32) -> u32 {
    if !common::forge::pose_between_ranges(0, 1) {
        return 2;
    }
    // SAFETY: stops this worker process, on purpose.
    unsafe { libc::raise(libc::SIGSTOP) };
    x
}

#[test]
fn a_worker_stopped_between_a_claim_and_its_range_is_timed_out() {
    deadline(60, || {
        let limit = Duration::from_millis(200);
        let pool = Pool::builder()
            .workers(2)
            .task_timeout(limit)
            .chunk_size(1)
            .build()
            .unwrap();
        let before = pool.worker_pids();
        let t = Instant::now();
        let err = pool.apply(7u32, stops_between_ranges).unwrap_err();
        let took = t.elapsed();
        // No range was recorded as running: the timeout names none.
        match &err {
            Error::TaskTimedOut {
                pid,
                after,
                range: None,
                ..
            } => {
                assert_eq!(*after, limit);
                assert!(before.contains(pid), "{pid} is not one of {before:?}");
                assert!(wait_until(Duration::from_secs(5), || is_dead(*pid)));
            }
            other => panic!("expected TaskTimedOut without a range, got {other:?}"),
        }
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(wait_until(Duration::from_secs(5), || pool
            .stats()
            .worker_restarts
            == 1));
        // A job of many short ranges is not taken for one stopped between
        // them, however long the whole job takes.
        let xs: Vec<u64> = (0..1000).collect();
        let ys = pool.map(&xs, |x| common::sleepy(x % 2)).unwrap();
        assert_eq!(ys.len(), 1000);
        assert_eq!(pool.stats().worker_restarts, 1);
        assert_healthy(&pool);
    })
}

/// Stops a process (SIGSTOP) for as long as it lives; continues it when
/// dropped, whatever happens to the test.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on a process of this pool.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process stopped above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn a_kill_from_outside_reported_after_the_timeout_is_a_death_not_a_timeout() {
    deadline(60, || {
        // The template reports deaths. Stopped, it reports a worker killed
        // from outside only once continued, long after the range that
        // worker was in has passed the task timeout. The worker died; it
        // did not overrun: its range is retried, as for any death.
        let limit = Duration::from_millis(200);
        // An attempt whose kill came later than `limit` after the job was
        // submitted proves nothing (its range may really have overrun
        // while this thread was held up): it is made again.
        for _ in 0..5 {
            let pool = Pool::builder()
                .workers(1)
                .task_timeout(limit)
                .max_retries(1)
                .build()
                .unwrap();
            let worker = pool.worker_pids()[0];
            let template = common::proc_stat(worker).expect("the worker runs").1;
            let stopped = Stopped::new(template);
            let gate = common::Gate::new();
            let submitted = Instant::now();
            let r = pool.apply_async(gate.token(), common::gated).unwrap();
            assert!(wait_until(Duration::from_secs(10), || gate.reached()));
            // SAFETY: kill(2) on our worker.
            unsafe { libc::kill(worker as i32, libc::SIGKILL) };
            let killed_after = submitted.elapsed();
            assert!(wait_until(Duration::from_secs(10), || is_dead(worker)));
            // The supervisor looks every `limit / 8`: it sees the dead
            // worker's range running for five times the limit.
            thread::sleep(5 * limit);
            // The retry passes the gate at once.
            gate.open();
            drop(stopped);
            let outcome = r.get();
            if killed_after >= limit {
                continue;
            }
            match outcome {
                Ok(v) => assert_eq!(v, gate.token()),
                Err(e) => panic!("the range is retried after a death, got {e:?}"),
            }
            assert!(wait_until(Duration::from_secs(5), || pool
                .stats()
                .worker_restarts
                == 1));
            assert_healthy(&pool);
            return;
        }
        panic!("in 5 attempts, the worker was never killed within {limit:?} of its job");
    })
}

/// Allocates and touches `mib` MiB, and keeps it.
fn hog(mib: &u64, x: u64) -> u64 {
    if x == 3 {
        common::mute_stderr();
        let v = vec![1u8; (*mib as usize) << 20];
        std::hint::black_box(&v);
        std::mem::forget(v);
    }
    x
}

#[test]
fn an_allocation_past_the_memory_limit_kills_only_its_worker() {
    deadline(60, || {
        let limit = 64 << 20;
        let pool = Pool::builder()
            .workers(2)
            .worker_memory_limit(limit)
            .build()
            .unwrap();
        // Within the limit: fine.
        let xs: Vec<u64> = (0..16).collect();
        assert_eq!(pool.map_with(8u64, &xs, hog).unwrap(), xs);
        // Past it: the worker aborts, is replaced, the range is retried once
        // and aborts again.
        let err = pool.map_with(1024u64, &xs, hog).unwrap_err();
        match &err {
            Error::MemoryLimit {
                limit: l, range, ..
            } => {
                assert_eq!(*l, limit);
                assert!(range.clone().expect("a range").contains(&3));
                assert!(err.to_string().contains("memory limit"), "{err}");
            }
            // Printing a backtrace (RUST_BACKTRACE) before the abort can hide
            // that a single allocation far past the limit failed (design.md,
            // "Memory limits"): then it is a plain SIGABRT.
            Error::WorkerDied {
                signal: Some(libc::SIGABRT),
                range: Some(r),
                ..
            } if backtraces_on() => assert!(r.contains(&3)),
            other => panic!("expected MemoryLimit, got {other:?}"),
        }
        assert_healthy(&pool);
        // A leak that creeps up to the limit is recognised (without retries,
        // the first worker to reach it fails the job). 4 MiB a call: reused
        // heap the worker inherited does not count against the limit
        // (design.md, "Memory limits"), so leak well past it.
        let strict = Pool::builder()
            .workers(2)
            .worker_memory_limit(limit)
            .max_retries(0)
            .build()
            .unwrap();
        let err = strict.map_with(4u64, &[3u64; 200], hog).unwrap_err();
        assert!(matches!(err, Error::MemoryLimit { .. }), "{err:?}");
        assert_healthy(&strict);
        assert_healthy(&pool);
    })
}

fn backtraces_on() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// Leaks `mib` MiB per call.
fn leak(mib: &u64, x: u64) -> u64 {
    common::mute_stderr();
    let v = vec![7u8; (*mib as usize) << 20];
    std::mem::forget(v);
    x
}

#[test]
fn a_leaking_task_is_contained_by_the_limit_and_the_retry() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .worker_memory_limit(48 << 20)
            .chunk_size(1)
            .build()
            .unwrap();
        // Each call leaks 8 MiB: a worker dies every few calls, and each lost
        // range runs again (once, the default) on a worker started after it
        // was lost, never on the other old worker, which may be near its own
        // limit too.
        for round in 0..10u64 {
            let xs: Vec<u64> = (round * 4..round * 4 + 4).collect();
            assert_eq!(pool.map_with(8u64, &xs, leak).unwrap(), xs);
        }
        assert!(pool.stats().worker_restarts >= 2, "{:?}", pool.stats());
        assert_healthy(&pool);
    })
}

/// Bumps the counter at address `addr` in shared memory (the mapping is at
/// the same address in every worker), then works for 2 ms.
fn bump(addr: u64) -> u64 {
    // SAFETY: `addr` is the address of a live `u64` in the pool's shared
    // region, mapped at the same address in the workers; it is only accessed
    // atomically.
    let counter = unsafe { &*(addr as *const AtomicU64) };
    counter.fetch_add(1, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(2));
    addr
}

/// A shared counter for `bump`, and a way to read it.
fn counter(pool: &Pool) -> (shmpool::ShmVec<u64>, u64) {
    let c = pool.alloc_zeroed::<u64>(1).unwrap();
    let addr = c.as_ptr() as u64;
    (c, addr)
}

fn read(addr: u64) -> u64 {
    // SAFETY: as in `bump`; the ShmVec is alive in the caller.
    unsafe { &*(addr as *const AtomicU64) }.load(Ordering::SeqCst)
}

#[test]
fn cancel_answers_at_once_and_no_new_range_is_claimed() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
        let (_c, addr) = counter(&pool);
        let in_use = pool.stats().arena_in_use;
        // 10,000 ranges of 2 ms each, cancelled after 50 ms.
        let xs = vec![addr; 10_000];
        let slow = pool.map_async(&xs, bump).unwrap();
        thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        slow.cancel();
        let took = t.elapsed();
        assert!(slow.ready(), "answered at once");
        assert!(took < Duration::from_millis(100), "cancel took {took:?}");
        assert!(matches!(slow.get(), Err(Error::Cancelled)));
        // The ranges already running finish; then nothing more runs.
        thread::sleep(Duration::from_millis(50));
        let c1 = read(addr);
        thread::sleep(Duration::from_millis(200));
        assert_eq!(read(addr), c1, "no range was claimed after the cancel");
        assert!(c1 < 1000, "{c1} ranges ran");
        // Its memory is freed once no worker is in it.
        assert!(wait_until(Duration::from_secs(5), || pool
            .stats()
            .arena_in_use
            == in_use));
        let s = pool.stats();
        assert_eq!((s.jobs_cancelled, s.worker_restarts), (1, 0));
        assert_healthy(&pool);
    })
}

#[test]
fn dropping_an_unfinished_result_cancels_and_detach_does_not() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
        let (_c, addr) = counter(&pool);
        let xs = vec![addr; 5_000];
        // No callback: nobody can see the outcome, so the drop cancels.
        let dropped = pool.map_async(&xs, bump).unwrap();
        thread::sleep(Duration::from_millis(20));
        drop(dropped);
        assert_eq!(pool.stats().jobs_cancelled, 1, "cancelled at once");
        thread::sleep(Duration::from_millis(50));
        let c1 = read(addr);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(read(addr), c1);
        // Detached: runs to the end, and its callback sees the result.
        let (tx, rx) = std::sync::mpsc::channel();
        let ys = vec![addr; 200];
        let kept = pool.map_async(&ys, bump).unwrap();
        kept.on_complete(move |out| tx.send(out.as_ref().map(|v| v.len()).ok()).unwrap());
        kept.detach();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Some(200));
        assert_eq!(read(addr), c1 + 200);
        assert_eq!(pool.stats().jobs_cancelled, 1);
        // A finished result dropped unread is not counted as cancelled.
        let done = pool.apply_async(1u8, |x| x).unwrap();
        done.wait();
        drop(done);
        assert_eq!(pool.stats().jobs_cancelled, 1);
        assert_healthy(&pool);
    })
}

#[test]
fn a_caller_s_own_timeout_does_not_cancel_the_job() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let xs = vec![20u64; 20];
        let mut r = pool.map_async(&xs, common::sleepy).unwrap();
        assert!(!r.wait_timeout(Duration::from_millis(10)));
        match r.get_timeout(Duration::from_millis(1)) {
            Err(Error::WaitTimedOut { after, .. }) => {
                assert_eq!(after, Duration::from_millis(1));
            }
            other => panic!("expected WaitTimedOut, got {other:?}"),
        }
        assert_eq!(r.get().unwrap(), xs, "the job ran to the end");
        assert_eq!(pool.stats().jobs_cancelled, 0);
    })
}

/// Set by the initializer, in each worker; never in the parent.
static INIT_RUNS: AtomicU32 = AtomicU32::new(0);

fn init() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn init_runs(_: u32) -> u32 {
    thread::sleep(Duration::from_millis(1));
    INIT_RUNS.load(Ordering::SeqCst)
}

#[test]
fn the_initializer_runs_once_in_every_worker_and_never_in_the_parent() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(init)
            .chunk_size(1)
            .build()
            .unwrap();
        let xs = vec![0u32; 200];
        assert!(pool.map(&xs, init_runs).unwrap().iter().all(|&n| n == 1));
        assert_eq!(INIT_RUNS.load(Ordering::SeqCst), 0, "not in the parent");
        // Replacements run it too.
        for pid in pool.worker_pids() {
            // SAFETY: kill(2) on a worker of ours.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        assert!(wait_until(Duration::from_secs(5), || pool
            .stats()
            .worker_restarts
            == 2));
        assert!(pool.map(&xs, init_runs).unwrap().iter().all(|&n| n == 1));
        assert_eq!(INIT_RUNS.load(Ordering::SeqCst), 0);
    })
}

fn bad_init() {
    panic!("no licence file");
}

#[test]
fn a_panicking_initializer_fails_every_job_with_its_message() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(bad_init)
            .build()
            .unwrap();
        let err = pool.apply(1u8, |x| x).unwrap_err();
        match &err {
            Error::InitializerFailed { message, .. } => {
                assert!(message.contains("no licence file"), "{message}")
            }
            other => panic!("expected InitializerFailed, got {other:?}"),
        }
        assert!(matches!(
            pool.map(&[1u8], |x| x),
            Err(Error::InitializerFailed { .. })
        ));
        pool.close();
        pool.join().unwrap();
    })
}

/// The first time any worker reaches element 3: stops the template (this
/// worker's parent) and exits, so that no one reports the death.
fn stop_template_and_die(test: &u64, x: u64) -> u64 {
    if x == 3 {
        let marker = std::env::temp_dir().join(format!("shmpool-test-stopped-{test}"));
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok()
        {
            // SAFETY: signals this worker's parent, then ends this process
            // without unwinding, on purpose.
            unsafe {
                libc::kill(libc::getppid(), libc::SIGSTOP);
                libc::_exit(7);
            }
        }
    }
    x
}

#[test]
fn a_stopped_template_does_not_leave_a_dead_worker_s_job_waiting() {
    deadline(90, || {
        let pool = Pool::builder().workers(2).build().unwrap();
        let test = u64::from(std::process::id());
        let marker = std::env::temp_dir().join(format!("shmpool-test-stopped-{test}"));
        let _ = std::fs::remove_file(&marker);
        let worker = pool.worker_pids()[0];
        let (_, template) = common::proc_stat(worker).expect("a worker's parent");
        let xs: Vec<u64> = (0..16).collect();
        let t = Instant::now();
        // The template is found stopped with a death unreported, and
        // replaced; the range runs again (or the job fails: no hang).
        match pool.map_with(test, &xs, stop_template_and_die) {
            Ok(ys) => assert_eq!(ys, xs),
            Err(e) => assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}"),
        }
        let took = t.elapsed();
        let _ = std::fs::remove_file(&marker);
        // It waited for the template to be found wedged (about ten
        // seconds), and no longer.
        assert!(took >= Duration::from_secs(5), "took {took:?}");
        assert!(took < Duration::from_secs(30), "took {took:?}");
        // The stopped template is gone (killed and reaped), and the pool
        // carries on with a new one.
        assert!(wait_until(Duration::from_secs(5), || is_dead(template)));
        assert_healthy(&pool);
    })
}

fn quiet_init() {}

/// Marks its worker's record as if the initializer were running, then
/// returns (`how == 0`) or dies (`how == 1`). 2: the mark was not found.
fn marks_itself_initializing(how: u32) -> u32 {
    if !common::forge::mark_as_initializing(0, 1) {
        return 2;
    }
    if how == 1 {
        // SAFETY: kills this worker process, on purpose.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    how
}

#[test]
fn a_task_that_marks_its_worker_as_initializing_does_not_break_the_pool() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(quiet_init)
            .max_tasks_per_worker(3)
            .build()
            .unwrap();
        // Recycled after its third task, with the mark left behind.
        for _ in 0..12 {
            assert_eq!(pool.apply(0u32, marks_itself_initializing).unwrap(), 0);
        }
        let s = pool.stats();
        assert!(s.workers_recycled >= 2, "{s:?}");
        // Killed inside the task, with the mark: a task's death.
        for _ in 0..3 {
            let err = pool.apply(1u32, marks_itself_initializing).unwrap_err();
            assert!(matches!(err, Error::WorkerDied { .. }), "{err:?}");
        }
        assert_healthy(&pool);
    })
}

#[test]
fn workers_are_recycled_after_max_tasks_and_reaped() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .max_tasks_per_worker(3)
            .build()
            .unwrap();
        let first = pool.worker_pids();
        let mut seen = first.clone();
        for i in 0..30u32 {
            assert_eq!(pool.apply(i, |x| x + 1).unwrap(), i + 1);
            seen.extend(pool.worker_pids());
        }
        seen.sort_unstable();
        seen.dedup();
        let s = pool.stats();
        assert!(s.workers_recycled >= 8, "{s:?}");
        assert_eq!(s.worker_restarts, 0, "recycling is not a crash");
        assert!(seen.len() >= 4, "{seen:?}");
        assert!(wait_until(Duration::from_secs(5), || first
            .iter()
            .all(|&p| is_dead(p))));
        assert_healthy(&pool);
    })
}

#[test]
fn terminate_kills_busy_workers_within_100_ms() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let xs = vec![10_000u64; 8];
        let busy = pool.map_async(&xs, common::sleepy).unwrap();
        thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        pool.terminate();
        let took = t.elapsed();
        assert!(pids.iter().all(|&p| is_dead(p)));
        assert!(took < Duration::from_millis(100), "terminate took {took:?}");
        assert!(matches!(busy.get(), Err(Error::Terminated)));
    })
}

/// Writes `words` pseudo-random words at random places of the region's
/// control part (its first 64 KiB: control block, worker records, slots),
/// from inside a task.
fn scribble(seed: &u64, x: u64) -> u64 {
    if x != 100 {
        return x;
    }
    let Some(base) = common::forge::region_base() else {
        return x;
    };
    let mut s = *seed | 1;
    for _ in 0..64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let off = (s as usize % (64 << 10)) & !7;
        // SAFETY: unsafe test code that corrupts the control block on
        // purpose: `base + off` lies in the first 64 KiB of the shared
        // mapping, which is mapped and 8-byte aligned; other processes access
        // it only atomically.
        unsafe { (*((base + off) as *const AtomicU64)).store(s, Ordering::Relaxed) };
    }
    x
}

#[test]
fn a_worker_that_corrupts_the_control_block_fails_at_most_its_job() {
    deadline(120, || {
        let pool = Pool::builder()
            .workers(2)
            .ring_size(8)
            .task_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let xs: Vec<u64> = (0..1000).collect();
        let mut errors = 0;
        for seed in 1..=20u64 {
            match pool.map_with(seed * 0x9e37_79b9, &xs, scribble) {
                Ok(ys) => assert_eq!(ys, xs, "seed {seed}: a success is correct"),
                Err(_) => errors += 1,
            }
            assert_healthy(&pool);
        }
        println!("{errors} of 20 corrupted jobs failed; every next map was correct");
    })
}

/// The `i`th of the shared flags at `flags` (a `ShmVec<u64>` of the test).
fn flag(flags: u64, i: u64) -> &'static AtomicU64 {
    // SAFETY: `flags` is the address of a live `ShmVec<u64>` of at least
    // `i + 1` elements in the pool's shared region, mapped at the same
    // address in every worker; only accessed atomically.
    unsafe { &*((flags + 8 * i) as *const AtomicU64) }
}

/// Marks `flags[0]`, then writes the pool's completion eventfd (the one
/// descriptor a worker keeps above stderr) every millisecond for `ms`
/// milliseconds: a task that keeps the result thread from sleeping out a
/// tick. Returns how many writes it made.
fn ring_the_eventfd([flags, ms]: [u64; 2]) -> u64 {
    let fd = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| {
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (n > 2 && target.to_string_lossy().contains("eventfd")).then_some(n)
        });
    flag(flags, 0).store(1, Ordering::SeqCst);
    let Some(fd) = fd else {
        return 0;
    };
    let end = Instant::now() + Duration::from_millis(ms);
    let mut rings = 0;
    while Instant::now() < end {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of a live `u64` to a descriptor this
        // process holds.
        if unsafe { libc::write(fd, (&raw const one).cast(), 8) } == 8 {
            rings += 1;
        }
        thread::sleep(Duration::from_millis(1));
    }
    rings
}

/// Marks `flags[1]`, waits (at most 10 s) for `flags[2]`, then loses every
/// wake-up posted so far, as a task that scribbles over the control block
/// could: the semaphore's count and the pending bits, zeroed. Their offsets
/// in the region (`src/shm/layout.rs`: a 128-byte line each for `magic` and
/// `shutdown`, then the semaphore's line, then the pending words). Returns
/// 0, or 2 if those words held no wake-up to lose (the layout moved).
fn lose_the_wake_ups(flags: u64) -> u64 {
    const COUNT: usize = 256;
    const PENDING: usize = 384;
    flag(flags, 1).store(1, Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(10);
    while flag(flags, 2).load(Ordering::SeqCst) == 0 && Instant::now() < end {
        thread::sleep(Duration::from_micros(100));
    }
    let Some(base) = common::forge::region_base() else {
        return 1;
    };
    // SAFETY: unsafe test code that corrupts the control block on purpose:
    // both addresses lie in the region's first page, mapped and aligned;
    // other processes access these words only atomically.
    let (count, pending) = unsafe {
        (
            &*((base + COUNT) as *const AtomicU32),
            std::slice::from_raw_parts((base + PENDING) as *const AtomicU64, 16),
        )
    };
    // The job posted while both workers were busy left its tokens and its
    // pending bit.
    if count.load(Ordering::SeqCst) == 0 || pending.iter().all(|w| w.load(Ordering::SeqCst) == 0) {
        return 2;
    }
    count.store(0, Ordering::SeqCst);
    pending.iter().for_each(|w| w.store(0, Ordering::SeqCst));
    0
}

#[test]
fn a_lost_wake_up_is_kicked_while_completions_keep_ringing() {
    deadline(60, || {
        // One worker keeps writing the completion eventfd, so that the
        // result thread never sleeps out its tick; the other loses the
        // wake-ups of a job posted while both were busy, then sleeps. The
        // job runs only once the result thread kicks it, which it does a
        // tick after its last kick whatever rings meanwhile.
        let pool = Pool::builder().workers(2).ring_size(8).build().unwrap();
        let flags = pool.alloc_zeroed::<u64>(3).unwrap();
        let at = flags.as_ptr() as u64;
        let ringing = pool.apply_async([at, 4000], ring_the_eventfd).unwrap();
        let losing = pool.apply_async(at, lose_the_wake_ups).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || flag(at, 0)
                .load(Ordering::SeqCst)
                == 1
                && flag(at, 1).load(Ordering::SeqCst) == 1),
            "both workers run their tasks"
        );
        let mut job = pool.map_async(&[1u64, 2, 3, 4], |x| x + 1).unwrap();
        flag(at, 2).store(1, Ordering::SeqCst);
        assert_eq!(losing.get().unwrap(), 0, "the wake-ups were lost");
        let lost_at = Instant::now();
        let out = job
            .get_timeout(Duration::from_secs(2))
            .expect("kicked within a few ticks, while the eventfd rings");
        let took = lost_at.elapsed();
        assert_eq!(out, vec![2, 3, 4, 5]);
        assert!(!ringing.ready(), "the eventfd still rings");
        println!("the lost job ran {took:?} after its wake-ups were lost");
        assert!(ringing.get().unwrap() > 100, "the task rang the eventfd");
        assert_healthy(&pool);
    })
}

/// One element of a job whose task forges its own slot's completion words
/// (`common::forge`) at the element with `kind != 0`.
#[derive(Clone, Copy, Debug, bytemuck_derive::Zeroable, bytemuck_derive::Pod)]
#[repr(C)]
struct Item {
    x: u64,
    /// 1 + the forgery, on one element; 0 elsewhere.
    kind: u64,
    /// The job's length, to find its slot.
    len: u64,
    /// Microseconds of work, so that other ranges are still running when
    /// the forgery lands.
    work_us: u64,
    /// The test process: a caller running ranges (`caller_runs`) does not
    /// forge.
    parent: u64,
    /// The address of a shared `u64` for the forger's pid (0: none).
    pid_at: u64,
}

fn forger(i: Item) -> u64 {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(i.work_us) {
        std::hint::spin_loop();
    }
    if i.kind != 0 {
        if i.pid_at != 0 && std::process::id() != i.parent as u32 {
            // SAFETY: the address of a live `u64` in the pool's region (as
            // in `bump`), accessed atomically.
            unsafe { &*(i.pid_at as *const AtomicU64) }
                .store(u64::from(std::process::id()), Ordering::SeqCst);
        }
        if !common::forge::forge(i.kind - 1, i.len, i.parent as u32) {
            return u64::MAX;
        }
    }
    2 * i.x + 1
}

/// `n` elements with forgery `kind` at `at`.
fn forged_job(n: u64, kind: usize, at: u64, work_us: u64, pid_at: u64) -> Vec<Item> {
    (0..n)
        .map(|x| Item {
            x,
            kind: if x == at { kind as u64 + 1 } else { 0 },
            len: n,
            work_us,
            parent: u64::from(std::process::id()),
            pid_at,
        })
        .collect()
}

/// Checks one forged job's outcome: a correct `Ok`, or `Corrupted`. Returns
/// whether it failed.
fn judge_forgery(what: &str, outcome: Result<&[u64], &Error>, n: u64) -> bool {
    match outcome {
        Ok(v) => {
            assert!(
                !v.contains(&u64::MAX),
                "{what}: the forger did not find its slot"
            );
            let right = v
                .iter()
                .enumerate()
                .filter(|&(i, &y)| y == 2 * i as u64 + 1)
                .count();
            assert!(
                v.len() as u64 == n && right as u64 == n,
                "{what}: Ok with {} of {n} values wrong",
                n - right as u64
            );
            false
        }
        Err(Error::Corrupted { .. }) => true,
        Err(e) => panic!("{what}: expected Corrupted or a correct result, got {e:?}"),
    }
}

/// Two workers and a small ring (the forgers search the first 64 KiB for
/// their slot), with the caller running ranges or not.
fn forgers_pool(caller_runs: bool) -> Pool {
    Pool::builder()
        .workers(2)
        .ring_size(8)
        .caller_runs(caller_runs)
        .build()
        .unwrap()
}

#[test]
fn a_forged_completion_never_returns_ok_with_wrong_values() {
    deadline(240, || {
        for caller_runs in [false, true] {
            let pool = forgers_pool(caller_runs);
            let n = 2000u64;
            let mut failed = 0;
            for (kind, name) in common::forge::KINDS.iter().enumerate() {
                for at in [0, n / 2, n - 1] {
                    let items = forged_job(n, kind, at, 5, 0);
                    let what = format!("{name} at {at} (caller_runs {caller_runs})");
                    let out = pool.map(&items, forger);
                    failed += judge_forgery(&what, out.as_deref(), n) as u32;
                    assert_healthy(&pool);
                    // The same through the result thread.
                    let out = pool.map_async(&items, forger).unwrap().get();
                    failed += judge_forgery(&what, out.as_deref(), n) as u32;
                    assert_healthy(&pool);
                }
            }
            let jobs = 6 * common::forge::KINDS.len();
            println!(
                "caller_runs {caller_runs}: {failed} of {jobs} forged jobs failed with Corrupted"
            );
        }
    })
}

/// `map_shared`'s task: `2x + table[0]` (the table is all ones), after
/// pointing the job's table at its own output on the forging element.
fn through_table(table: &[u64], i: Item) -> u64 {
    if i.kind != 0 && !common::forge::redirect_more(i.len, i.parent as u32) {
        return u64::MAX;
    }
    2 * i.x + table[0]
}

/// `map3`'s task: `2x + b·c` (both all ones), after pointing the job's
/// second and third inputs at its own output on the forging element.
fn through_more(i: Item, b: u64, c: u64) -> u64 {
    if i.kind != 0 && !common::forge::redirect_more(i.len, i.parent as u32) {
        return u64::MAX;
    }
    2 * i.x + b * c
}

#[test]
fn a_worker_that_moves_a_table_or_map3_s_inputs_fails_its_job() {
    deadline(120, || {
        for caller_runs in [false, true] {
            let pool = forgers_pool(caller_runs);
            let n = 2000u64;
            let ones = vec![1u64; n as usize];
            let (mut jobs, mut failed) = (0, 0);
            for at in [0, n / 2, n - 1] {
                let items = forged_job(n, 0, at, 5, 0);
                let what = format!("table moved at {at} (caller_runs {caller_runs})");
                let out = pool.map_shared(&[1u64; 4], &items, through_table);
                failed += judge_forgery(&what, out.as_deref(), n) as u32;
                assert_healthy(&pool);
                let what = format!("map3 inputs moved at {at} (caller_runs {caller_runs})");
                let out = pool.map3(&items, &ones, &ones, through_more);
                failed += judge_forgery(&what, out.as_deref(), n) as u32;
                assert_healthy(&pool);
                jobs += 2;
            }
            // A worker that moved them changed the descriptor, which the
            // harvest compares; a caller running ranges moves nothing.
            if !caller_runs {
                assert_eq!(failed, jobs, "every job with moved inputs fails");
            }
            println!("caller_runs {caller_runs}: {failed} of {jobs} jobs failed with Corrupted");
        }
    })
}

#[test]
fn after_a_forged_completion_no_worker_writes_the_output_and_the_forger_is_replaced() {
    deadline(120, || {
        let pool = Pool::builder().workers(2).ring_size(8).build().unwrap();
        let (_pid, pid_at) = counter(&pool);
        let n = 4000u64;
        for (kind, what) in common::forge::KINDS.iter().enumerate() {
            let items = forged_job(n, kind, 0, 20, pid_at);
            let mut out = pool.alloc_zeroed::<u64>(n as usize).unwrap();
            let outcome = pool.map_into(&items, &mut out, forger);
            // Whatever the verdict, the caller owns `out` again: no worker
            // may write it any more.
            let seen = out.to_vec();
            thread::sleep(Duration::from_millis(100));
            assert!(
                out[..] == seen[..],
                "{what}: a worker wrote the output after map_into returned"
            );
            match outcome {
                Ok(()) => {
                    judge_forgery(what, Ok(&out[..]), n);
                }
                Err(e) => {
                    judge_forgery(what, Err(&e), n);
                    // The forger (and whoever else ran the job) is replaced.
                    let forger_pid = read(pid_at) as u32;
                    assert_ne!(forger_pid, 0);
                    assert!(
                        wait_until(Duration::from_secs(5), || is_dead(forger_pid)),
                        "{what}: the forging worker {forger_pid} still runs"
                    );
                }
            }
            assert_healthy(&pool);
        }
    })
}

#[test]
fn only_the_workers_that_ran_a_corrupt_job_are_replaced() {
    deadline(60, || {
        // One range: only the worker that runs it (the forger) touches the
        // job; the other three see a finished slot and stay out.
        let n = 1000u64;
        let pool = Pool::builder()
            .workers(4)
            .ring_size(8)
            .chunk_size(n as usize)
            .build()
            .unwrap();
        let (_pid, pid_at) = counter(&pool);
        let before = pool.worker_pids();
        let items = forged_job(n, 0, 0, 20, pid_at);
        let err = pool.map(&items, forger).unwrap_err();
        assert!(matches!(err, Error::Corrupted { .. }), "{err:?}");
        let forger_pid = read(pid_at) as u32;
        assert!(before.contains(&forger_pid));
        assert!(wait_until(Duration::from_secs(5), || is_dead(forger_pid)));
        // Its replacement is counted once the supervisor has it.
        assert!(wait_until(Duration::from_secs(5), || {
            let pids = pool.worker_pids();
            pids.len() == 4 && !pids.contains(&forger_pid) && pool.stats().worker_restarts == 1
        }));
        let after = pool.worker_pids();
        let replaced: Vec<u32> = before.into_iter().filter(|p| !after.contains(p)).collect();
        assert_eq!(replaced, [forger_pid], "only the forger is replaced");
        let s = pool.stats();
        assert_eq!((s.worker_restarts, s.jobs_failed), (1, 1), "{s:?}");
        assert_healthy(&pool);
    })
}

fn crashing_init() {
    std::process::abort();
}

#[test]
fn an_initializer_that_crashes_breaks_the_pool_instead_of_respawning_forever() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(crashing_init)
            .build()
            .unwrap();
        let t = Instant::now();
        let err = pool.apply(1u8, |x| x).unwrap_err();
        match &err {
            Error::InitializerFailed { message, .. } => {
                assert!(message.contains("SIGABRT"), "{message}")
            }
            other => panic!("expected InitializerFailed, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(pool.stats().worker_restarts <= 2, "{:?}", pool.stats());
    })
}

#[test]
fn exit_codes_of_tasks_are_crashes_not_signals_to_the_pool() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).max_retries(0).build().unwrap();
        // 100 and 102 are the codes a recycled worker and a failed
        // initializer exit with; from a task they are plain crashes.
        for code in [100u32, 102] {
            let err = pool
                .apply(code, |c| -> u32 { std::process::exit(c as i32) })
                .unwrap_err();
            assert!(
                matches!(err, Error::WorkerDied { exit_code: Some(c), .. } if c == code as i32),
                "{err:?}"
            );
            assert_healthy(&pool);
        }
        let s = pool.stats();
        assert_eq!((s.worker_restarts, s.workers_recycled), (2, 0));
    })
}

#[test]
fn hundreds_of_workers_start_serve_and_stop() {
    deadline(120, || {
        // More spawn requests and death reports than a socket buffer holds.
        let n = 600;
        let pool = Pool::builder()
            .workers(n)
            .arena_size(64 << 20)
            .build()
            .unwrap();
        assert_eq!(pool.worker_pids().len(), n);
        let xs: Vec<u32> = (0..10_000).collect();
        assert_eq!(pool.map(&xs, |x| x + 1).unwrap()[9_999], 10_000);
        pool.terminate();
        assert!(pool.worker_pids().is_empty());
    })
}

#[test]
fn a_killed_template_is_replaced_even_while_a_caller_holds_stdout() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let template = common::proc_stat(pool.worker_pids()[0]).unwrap().1;
        assert_ne!(template, std::process::id());
        let out = std::io::stdout();
        let _held = out.lock();
        // SAFETY: kill(2) on our template process.
        unsafe { libc::kill(template as i32, libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(5), || {
            let pids = pool.worker_pids();
            pids.len() == 2
                && pids
                    .iter()
                    .all(|&p| common::proc_stat(p).is_some_and(|(_, pp)| pp != template))
        }));
        assert_eq!(pool.apply(2u8, |x| x * 3).unwrap(), 6);
        assert_healthy(&pool);
    })
}

#[test]
fn a_parent_that_ignores_sigchld_still_learns_how_workers_died() {
    common::isolated("ignoring_sigchld_body", 60);
}

#[test]
#[ignore = "run in a process of its own by a_parent_that_ignores_sigchld_still_learns_how_workers_died"]
fn ignoring_sigchld_body() {
    if !common::in_isolation() {
        return;
    }
    // SAFETY: changes this (isolated) process's SIGCHLD disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let pool = Pool::builder().workers(2).max_retries(0).build().unwrap();
    let err = pool
        .apply(0u8, |x| {
            // SAFETY: raising a signal in the worker is the point.
            unsafe { libc::raise(libc::SIGKILL) };
            x
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                signal: Some(libc::SIGKILL),
                ..
            }
        ),
        "{err:?}"
    );
    assert_healthy(&pool);
}

/// A failed job's output goes back to its caller only once no worker can
/// write it: a worker whose task overwrote its record's `slot` is still
/// seen in its range (`in_range`), so `map_into` returns after it, and
/// nothing is written afterwards.
#[test]
fn a_worker_hidden_by_its_own_record_still_holds_its_job() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
        let xs: Vec<u64> = (0..64).collect();
        let mut out = pool.alloc_zeroed::<u64>(64).unwrap();
        let started = Instant::now();
        let r = pool.map_into(&xs, &mut out, common::forge::hide_then_write);
        let took = started.elapsed();
        assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
        let seen = out[0];
        thread::sleep(Duration::from_millis(700));
        assert_eq!(out[0], seen, "written after map_into returned ({took:?})");
        assert!(
            took >= Duration::from_millis(450),
            "returned after {took:?}"
        );
        assert_healthy(&pool);
    })
}

/// Sets its worker's record to "idle" (`how & 1`), or also marks it as in
/// the initializer (`how & 2`), then sleeps 3 s (`how & 4`) or dies of
/// `SIGKILL`. 9: a record was not found.
fn pose_and_stall(how: u32) -> u32 {
    if how & 2 != 0 && !common::forge::mark_as_initializing(0, 1) {
        return 9;
    }
    if how & 1 != 0 && !common::forge::pose_idle(0, 1) {
        return 9;
    }
    if how & 4 != 0 {
        thread::sleep(Duration::from_secs(3));
    } else {
        // SAFETY: kills this worker process, on purpose.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    how
}

/// A task that overwrites its record's `phase` with "idle" is still timed
/// (its `in_range` says it runs a range): the timeout kills it.
#[test]
fn a_task_that_poses_as_idle_is_still_timed() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(1)
            .task_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let started = Instant::now();
        let r = pool.apply(1u32 | 4, pose_and_stall);
        assert!(matches!(r, Err(Error::TaskTimedOut { .. })), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_healthy(&pool);
    })
}

/// A task that marks its record as in the initializer *and* idle, then
/// dies, is a task's death (its range known), not a failed initializer: the
/// pool goes on.
#[test]
fn a_task_that_poses_as_its_initializer_and_dies_does_not_break_the_pool() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(quiet_init)
            .max_retries(0)
            .build()
            .unwrap();
        let r = pool.apply(1u32 | 2, pose_and_stall);
        match r {
            Err(Error::WorkerDied { range, .. }) => assert_eq!(range, Some(0..1)),
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert_eq!(pool.apply(7u32, |x| x + 1).unwrap(), 8);
        assert_healthy(&pool);
    })
}

/// Makes the worker's completion eventfd (one open file with the parent's)
/// blocking and fills its counter: the next write to it blocks until the
/// parent reads it.
fn wedge_the_completion_eventfd() {
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let link = std::fs::read_link(entry.path()).unwrap_or_default();
        if link.to_string_lossy() != "anon_inode:[eventfd]" {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: none needed beyond the descriptor being open: this
        // task misuses the worker's own descriptor on purpose.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            let most: u64 = 0xffff_ffff_ffff_fffe;
            libc::write(fd, (&raw const most).cast(), 8);
        }
    }
}

/// Element 0: wedges the completion eventfd and aborts; others pass
/// through.
fn wedge_the_eventfd(x: u64) -> u64 {
    if x == 0 {
        wedge_the_completion_eventfd();
        common::mute_stderr();
        std::process::abort();
    }
    x
}

#[test]
fn a_task_that_blocks_the_completion_eventfd_does_not_wedge_the_parent() {
    common::isolated("wedged_eventfd_body", 60);
}

/// The parent wakes its result thread through an eventfd of its own: a task
/// that makes the workers' one blocking and full cannot make the
/// supervisor (or any thread of the parent) block writing to it.
#[test]
#[ignore = "run in a process of its own by a_task_that_blocks_the_completion_eventfd_does_not_wedge_the_parent"]
fn wedged_eventfd_body() {
    if !common::in_isolation() {
        return;
    }
    deadline(50, || {
        let pool = Pool::builder().workers(1).max_retries(0).build().unwrap();
        let r = pool.map(&[0u64, 1], wedge_the_eventfd);
        assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
        assert_eq!(pool.map(&[5u64, 6], |x| x + 1).unwrap()[..], [6, 7]);
        let async_result = pool.apply_async(3u64, |x| x * 2).unwrap();
        assert_eq!(async_result.get().unwrap(), 6);
        assert_healthy(&pool);
    })
}

/// The CPU time process `pid` has used, in clock ticks (`utime` plus
/// `stime` from `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: state is the
    // first, utime the 12th and stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

/// A task that scribbles the work-token count up to four billion costs
/// the idle workers a repair round of CPU time at most: the parent lowers
/// it to the worker count. (They took tokens and found nothing, at full
/// speed, for minutes.)
#[test]
fn a_task_that_floods_the_work_tokens_does_not_keep_the_workers_busy() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).build().unwrap();
        let found = pool
            .apply(0u64, |_| u64::from(common::forge::flood_the_tokens()))
            .unwrap();
        assert_eq!(found, 1, "the region was not found");
        // The repair rounds (at least once a second).
        thread::sleep(Duration::from_secs(2));
        let pids = pool.worker_pids();
        let cpu = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
        let before = cpu();
        thread::sleep(Duration::from_secs(1));
        let used = cpu() - before;
        // Clock ticks are hundredths of a second here; idle workers use none.
        assert!(used < 20, "idle workers used {used} ticks of CPU in 1 s");
        assert_healthy(&pool);
    })
}

/// `[role, gate]`: role 0 makes its job (of three elements) ring the
/// completion eventfd and wedges that eventfd; role 1 waits at its gate;
/// role 2 says it reached its gate and panics.
fn ring_into_a_wedged_eventfd(x: [u64; 2]) -> u64 {
    match x[0] {
        0 => {
            if !common::forge::ring_on_completion(3) {
                return 1;
            }
            wedge_the_completion_eventfd();
            0
        }
        1 => common::gated(x[1]),
        _ => {
            common::arrive(x[1]);
            common::mute_stderr();
            panic!("the last element fails");
        }
    }
}

#[test]
fn a_worker_made_to_ring_a_wedged_eventfd_in_a_pool_without_async_jobs_goes_on() {
    common::isolated("ringing_a_wedged_eventfd_body", 60);
}

/// A pool that has run no asynchronous job has no result thread to read
/// the completion eventfd. A task that forges its job's notify bit and
/// wedges that eventfd (blocking, counter full) makes the next worker to
/// enter the job block writing it as it leaves: the supervisor reads the
/// eventfd in the result thread's place, so the worker goes on (and, as one
/// that ran a corrupt job, is replaced), and the pool keeps both workers.
#[test]
#[ignore = "run in a process of its own by a_worker_made_to_ring_a_wedged_eventfd_in_a_pool_without_async_jobs_goes_on"]
fn ringing_a_wedged_eventfd_body() {
    if !common::in_isolation() {
        return;
    }
    deadline(50, || {
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(1)
            .max_retries(0)
            .build()
            .unwrap();
        let (hold, wait, failing) = (Gate::new(), Gate::new(), Gate::new());
        thread::scope(|s| {
            // One worker is held outside the job, so that it enters it
            // after the forgery; the other runs the forgery, then waits.
            let held = s.spawn(|| pool.apply(hold.token(), common::gated));
            assert!(wait_until(Duration::from_secs(20), || hold.reached()));
            let opener = s.spawn(|| {
                assert!(wait_until(Duration::from_secs(20), || wait.reached()));
                hold.open();
                assert!(wait_until(Duration::from_secs(20), || failing.reached()));
                thread::sleep(Duration::from_millis(100));
                wait.open();
            });
            let xs = [[0, 0], [1, wait.token()], [2, failing.token()]];
            let r = pool.map(&xs, ring_into_a_wedged_eventfd);
            assert!(r.is_err(), "{r:?}");
            opener.join().unwrap();
            assert_eq!(held.join().unwrap().unwrap(), hold.token());
        });
        // Both workers take tasks at once.
        let (one, two) = (Gate::new(), Gate::new());
        thread::scope(|s| {
            let a = s.spawn(|| pool.apply(one.token(), common::gated));
            let b = s.spawn(|| pool.apply(two.token(), common::gated));
            let both = wait_until(Duration::from_secs(10), || one.reached() && two.reached());
            one.open();
            two.open();
            assert_eq!(a.join().unwrap().unwrap(), one.token());
            assert_eq!(b.join().unwrap().unwrap(), two.token());
            assert!(both, "only one worker took a task: the other stands still");
        });
        assert_healthy(&pool);
    })
}
