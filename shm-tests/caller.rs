//! `Builder::caller_runs`: the calling thread runs ranges of its own blocking
//! jobs. Results are the same; one-range jobs run in the caller's process;
//! a panic there is still an error, but a crash takes the caller down (the
//! documented trade-off); asynchronous jobs never run in the caller.

mod common;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assert_healthy, deadline, in_isolation};
use shmpool::{Error, Pool};

fn helping_pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .caller_runs(true)
        .build()
        .unwrap()
}

fn pid_of(_: u32) -> u32 {
    std::process::id()
}

fn slow_pid(_: u32) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(2));
    std::process::id()
}

#[test]
fn results_match_the_isolated_pool() {
    deadline(120, || {
        let pool = helping_pool(2);
        for n in [0usize, 1, 7, 1000, 65_537, 1_000_003] {
            let xs: Vec<f64> = (0..n).map(|i| i as f64 * 0.25 - 3.0).collect();
            let want: Vec<f64> = xs.iter().map(|x| x * x + 1.0).collect();
            assert_eq!(pool.map(&xs, |x| x * x + 1.0).unwrap(), want, "n = {n}");
            let shared = pool.to_shm(&xs).unwrap();
            let mut out = pool.alloc_zeroed::<f64>(n).unwrap();
            pool.map_into(&shared, &mut out, |x| x * x + 1.0).unwrap();
            assert_eq!(&out[..], &want[..]);
            let sum = pool
                .map_reduce(&xs, |x| x * x + 1.0, |a, b| a + b, 0.0)
                .unwrap();
            let serial: f64 = want.iter().sum();
            assert!(
                (sum - serial).abs() <= 1e-9 * serial.abs().max(1.0),
                "{sum} vs {serial}"
            );
            let ys: Vec<f64> = xs.iter().map(|x| -x).collect();
            let want2: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| x * y).collect();
            assert_eq!(pool.map2(&xs, &ys, |x, y| x * y).unwrap(), want2);
        }
        assert_eq!(pool.apply(21u64, |x| x * 2).unwrap(), 42);
        assert_healthy(&pool);
    });
}

#[test]
fn one_range_jobs_run_in_the_caller_and_larger_ones_are_shared() {
    deadline(120, || {
        let me = std::process::id();
        let pool = helping_pool(2);
        let workers: HashSet<u32> = pool.worker_pids().into_iter().collect();
        // One element: one range, taken by the caller; no worker is woken.
        assert_eq!(pool.map(&[0u32], pid_of).unwrap()[..], [me]);
        assert_eq!(pool.apply(0u32, pid_of).unwrap(), me);
        // 64 slow ranges of one element: the caller and the workers share.
        let xs = [0u32; 64];
        let one_each = Pool::builder()
            .workers(2)
            .caller_runs(true)
            .chunk_size(1)
            .build()
            .unwrap();
        let pids: HashSet<u32> = one_each
            .map(&xs, slow_pid)
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert!(pids.contains(&me), "the caller ran no range: {pids:?}");
        assert!(pids.len() >= 2, "no worker ran a range: {pids:?}");
        // Asynchronous jobs never run in the caller.
        let ids = pool.map_async(&[0u32][..], pid_of).unwrap().get().unwrap();
        assert!(workers.contains(&ids[0]), "{} is not a worker", ids[0]);
        let id = pool.apply_async(0u32, pid_of).unwrap().get().unwrap();
        assert!(workers.contains(&id));
        // The default pool never runs user code in the caller.
        let isolated = Pool::new(2).unwrap();
        assert_ne!(isolated.map(&[0u32], pid_of).unwrap()[0], me);
        assert_ne!(isolated.apply(0u32, pid_of).unwrap(), me);
    });
}

fn panics_on_seven(x: u32) -> u32 {
    assert!(x != 7, "seven is not allowed");
    x
}

#[test]
fn a_panic_in_the_caller_fails_the_job_and_the_pool_goes_on() {
    deadline(120, || {
        let pool = helping_pool(2);
        // One element: it surely runs in the caller.
        for _ in 0..3 {
            match pool.map(&[7u32], panics_on_seven) {
                Err(Error::TaskPanicked {
                    message,
                    range,
                    location,
                    ..
                }) => {
                    assert!(message.contains("seven is not allowed"), "{message}");
                    assert_eq!(range, 0..1);
                    let location = location.expect("the caller records where it panicked");
                    assert!(location.contains("caller.rs"), "{location}");
                }
                other => panic!("expected TaskPanicked, got {other:?}"),
            }
        }
        match pool.apply(7u32, panics_on_seven) {
            Err(Error::TaskPanicked { .. }) => {}
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        let xs: Vec<u32> = (0..10_000).collect();
        assert!(matches!(
            pool.map(&xs, panics_on_seven),
            Err(Error::TaskPanicked { .. })
        ));
        assert_eq!(pool.stats().worker_restarts, 0);
        assert_healthy(&pool);
    });
}

#[test]
fn options_that_cannot_hold_in_the_caller_are_refused() {
    let refused = [
        Pool::builder()
            .caller_runs(true)
            .task_timeout(std::time::Duration::from_secs(1))
            .build(),
        Pool::builder()
            .caller_runs(true)
            .worker_memory_limit(1 << 30)
            .build(),
        Pool::builder().caller_runs(true).initializer(|| {}).build(),
    ];
    for r in refused {
        match r {
            Err(Error::InvalidArgument { reason, .. }) => {
                assert!(reason.contains("caller_runs"), "{reason}")
            }
            other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
    }
}

fn crash(_: u32) -> u32 {
    std::process::abort()
}

/// Run by `a_crash_in_the_caller_takes_the_caller_down` in a process of its
/// own, which is expected to die.
#[test]
#[ignore = "run in a child process by a_crash_in_the_caller_takes_the_caller_down"]
fn crash_in_caller_body() {
    if !in_isolation() {
        return;
    }
    let pool = helping_pool(2);
    let _ = pool.map(&[1u32], crash);
    println!("survived");
}

#[test]
fn a_crash_in_the_caller_takes_the_caller_down() {
    // The trade-off, demonstrated: with caller_runs, an abort in a range the
    // caller runs kills the caller. (In the default pool the same task is a
    // `WorkerDied` error: shm-tests/faults.rs.)
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_in_caller_body",
            "--ignored",
            "--nocapture",
        ])
        .env(common::ISOLATED, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "{:?}",
        out.status
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
}

fn libc_sigabrt() -> i32 {
    6
}

static SHARED: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
/// What `uses_its_pool` returns in a worker.
const NOT_HERE: u32 = 99;

/// A task that reaches its own pool through a static: every call must be
/// refused, whether the caller or a worker runs it, and none may hang.
fn uses_its_pool(_: u32) -> u32 {
    // The workers were forked while the static was being set, so in them it
    // is empty (pool calls from workers are refused too: misuse.rs).
    let Some(pool) = SHARED.get() else {
        return NOT_HERE;
    };
    let mut refused = 0;
    refused += u32::from(matches!(
        pool.map(&[1u32], |v| v),
        Err(Error::WouldDeadlock { .. })
    ));
    refused += u32::from(matches!(
        pool.alloc_zeroed::<u8>(8),
        Err(Error::WouldDeadlock { .. })
    ));
    pool.close();
    refused += u32::from(matches!(pool.join(), Err(Error::WouldDeadlock { .. })));
    refused += u32::from(matches!(Pool::new(1), Err(Error::InvalidArgument { .. })));
    refused
}

#[test]
fn a_task_run_by_the_caller_cannot_use_its_own_pool() {
    deadline(60, || {
        let pool = SHARED.get_or_init(|| helping_pool(2));
        // One element: the caller runs it. 64 ranges: shared with workers.
        assert_eq!(pool.map(&[0u32], uses_its_pool).unwrap()[..], [4]);
        let one_each: Vec<u32> = (0..64).collect();
        let all = pool.map(&one_each, uses_its_pool).unwrap();
        assert!(
            all.iter().all(|&r| r == 4 || r == NOT_HERE),
            "{:?}",
            &all[..]
        );
        // `close` from a task was ignored, like any pool call from a task.
        assert_healthy(pool);
    });
}

/// A pool the tests below hand to a task through a static.
static OTHER: std::sync::Mutex<Option<Pool>> = std::sync::Mutex::new(None);

/// Takes the pool in `OTHER`, if any, and drops it; returns the pid of the
/// process that ran it and 1 if it dropped one.
fn drops_the_other_pool(_: u32) -> [u32; 2] {
    let taken = OTHER.lock().unwrap_or_else(|e| e.into_inner()).take();
    [std::process::id(), u32::from(taken.is_some())]
}

#[test]
fn a_task_run_by_the_caller_that_drops_another_pool_ends_it() {
    common::isolated(
        "a_task_run_by_the_caller_that_drops_another_pool_ends_it_body",
        60,
    );
}

#[test]
#[ignore = "run in a process of its own by a_task_run_by_the_caller_that_drops_another_pool_ends_it"]
fn a_task_run_by_the_caller_that_drops_another_pool_ends_it_body() {
    if !in_isolation() {
        return;
    }
    let threads = common::threads;
    let pool = helping_pool(1);
    assert_eq!(pool.map(&[1u32, 2], |x| x + 1).unwrap()[..], [2, 3]);
    // (The helping pool's own probe thread may still be on its way out.)
    let before = common::settled_threads();
    let children = common::children();
    let other = Pool::new(2).unwrap();
    let r = other.apply_async(5u32, |x| x * 2).unwrap();
    assert_eq!(r.get().unwrap(), 10);
    let pids = other.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(threads() > before, "the other pool started no thread");
    *OTHER.lock().unwrap() = Some(other);
    // One element: one range, which the caller runs (the workers were
    // forked before `OTHER` was set: in them it is empty).
    let ran = pool.map(&[0u32], drops_the_other_pool).unwrap();
    assert_eq!(ran[..], [[std::process::id(), 1]]);
    assert!(OTHER.lock().unwrap().is_none());
    // The dropped pool is gone, as if the program had dropped it: workers
    // ended, template reaped, threads ended. It used to be left running
    // until exit.
    for pid in pids {
        assert!(
            common::is_dead(pid),
            "worker {pid}: {:?}",
            common::proc_stat(pid)
        );
    }
    assert_eq!(common::children(), children, "the other pool's template");
    // (A `Pool::new` in a program with threads starts a short-lived probe
    // thread of its own, and an ended thread may stay listed for a moment.)
    assert!(
        common::wait_until(Duration::from_secs(10), || threads() == before),
        "the other pool's threads are still running: {} for {before}",
        threads()
    );
    assert_healthy(&pool);
    println!("ok");
}

/// The pool whose result and stream the test below keeps in `HELD`.
static STREAMING: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();

/// An unfinished result of `STREAMING`, and an open stream of it.
static HELD_RESULT: std::sync::Mutex<Option<shmpool::AsyncResult<u64>>> =
    std::sync::Mutex::new(None);
type Stream = Box<dyn Iterator<Item = Result<u64, Error>> + Send>;
static HELD_STREAM: std::sync::Mutex<Option<Stream>> = std::sync::Mutex::new(None);

/// Takes `held`'s value, if any, and drops it; returns the pid of the
/// process that ran it and 1 if it dropped something.
fn drop_held<T>(held: &std::sync::Mutex<Option<T>>) -> [u32; 2] {
    let taken = held.lock().unwrap_or_else(|e| e.into_inner()).take();
    [std::process::id(), u32::from(taken.is_some())]
}

fn drops_the_result(_: u32) -> [u32; 2] {
    drop_held(&HELD_RESULT)
}

fn drops_the_stream(_: u32) -> [u32; 2] {
    drop_held(&HELD_STREAM)
}

#[test]
fn a_task_run_by_the_caller_that_drops_a_result_or_a_stream_ends_them() {
    common::isolated(
        "a_task_run_by_the_caller_that_drops_a_result_or_a_stream_ends_them_body",
        60,
    );
}

#[test]
#[ignore = "run in a process of its own by a_task_run_by_the_caller_that_drops_a_result_or_a_stream_ends_them"]
fn a_task_run_by_the_caller_that_drops_a_result_or_a_stream_ends_them_body() {
    if !in_isolation() {
        return;
    }
    deadline(50, || {
        let pool = helping_pool(1);
        let other = STREAMING.get_or_init(|| Pool::new(2).unwrap());
        let gate = common::Gate::new();
        let held = other.apply_async(gate.token(), common::gated).unwrap();
        assert!(common::wait_until(Duration::from_secs(20), || gate.reached()));
        let mut stream = other.imap(0u64..1_000_000, |x| x + 1).unwrap();
        assert_eq!(stream.next().unwrap().unwrap(), 1);
        *HELD_RESULT.lock().unwrap() = Some(held);
        *HELD_STREAM.lock().unwrap() = Some(Box::new(stream));
        // One element: the caller runs it. The result's drop cancels its
        // job, as a drop anywhere in the program does (it used to do
        // nothing in a task the caller runs).
        let me = std::process::id();
        assert_eq!(pool.map(&[0u32], drops_the_result).unwrap()[..], [[me, 1]]);
        assert_eq!(other.stats().jobs_cancelled, 1);
        gate.open();
        // And the stream's drop tells the pool it is finished: `join`
        // returns (it used to wait for the stream forever, or refuse).
        assert_eq!(pool.map(&[0u32], drops_the_stream).unwrap()[..], [[me, 1]]);
        other.close();
        other.join().unwrap();
        assert_healthy(&pool);
        println!("ok");
    })
}
