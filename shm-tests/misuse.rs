//! Misuse: every wrong way to build or call a pool gets a typed error (or
//! the one correct behaviour), never a hang, a crash or a wrong answer; and
//! a pool that refused a call still maps correctly afterwards.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytemuck::Zeroable;
use common::{children, deadline, in_isolation, isolated, wait_until};
use shmpool::{Error, Pool, ShmVec};

/// Asserts that `$call` failed with the error variant `$variant`.
macro_rules! assert_err {
    ($call:expr, $variant:pat) => {
        match $call {
            Err($variant) => {}
            Err(other) => panic!(
                "{}: expected {}, got {other:?}",
                stringify!($call),
                stringify!($variant)
            ),
            Ok(_) => panic!(
                "{}: expected {}, got Ok",
                stringify!($call),
                stringify!($variant)
            ),
        }
    };
}

/// The pool still maps correctly.
fn assert_maps(pool: &Pool) {
    let xs: Vec<u64> = (0..10_000).collect();
    let ys = pool.map(&xs, |x| x * 3 + 1).unwrap();
    assert_eq!(ys.len(), xs.len());
    assert!(ys.iter().enumerate().all(|(i, &y)| y == 3 * i as u64 + 1));
}

/// The real uid of a task, from its `status` file.
fn real_uid(status_path: &std::path::Path) -> Option<u32> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `(pid, tid)` of every task (threads included: `RLIMIT_NPROC` counts
/// threads) whose real uid is `uid`.
fn tasks_of(uid: u32) -> Vec<(u32, u32)> {
    let mut tasks = Vec::new();
    for pid in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Some(pid_n) = pid.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(threads) = std::fs::read_dir(pid.path().join("task")) else {
            continue;
        };
        for tid in threads.filter_map(|e| e.ok()) {
            let Some(tid_n) = tid.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if real_uid(&tid.path().join("status")) == Some(uid) {
                tasks.push((pid_n, tid_n));
            }
        }
    }
    tasks
}

// 1, 2, 6, 11: the builder refuses bad settings before it creates anything.

#[test]
fn zero_workers_is_an_invalid_argument() {
    deadline(30, || {
        assert_err!(Pool::new(0), Error::InvalidArgument { .. });
        assert_err!(
            Pool::builder().workers(0).build(),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            Pool::builder().workers(0).arena_size(1 << 20).build(),
            Error::InvalidArgument { .. }
        );
    })
}

#[test]
fn more_workers_than_supported_is_an_invalid_argument() {
    deadline(30, || {
        assert_err!(
            Pool::builder().workers(100_000).build(),
            Error::InvalidArgument { .. }
        );
        // The documented maximum is 1024.
        assert_err!(
            Pool::builder().workers(1025).build(),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            Pool::builder().workers(usize::MAX).build(),
            Error::InvalidArgument { .. }
        );
    })
}

#[test]
fn chunk_size_zero_is_refused_and_small_chunks_map_correctly() {
    deadline(60, || {
        assert_err!(
            Pool::builder().workers(2).chunk_size(0).build(),
            Error::InvalidArgument { .. }
        );
        let xs: Vec<u32> = (0..1000).collect();
        let expected: Vec<u32> = xs.iter().map(|x| x * 7 + 3).collect();
        // 1: one element per range; 7: does not divide 1000; 5000: longer
        // than the input.
        for chunk in [1, 7, 5000] {
            let pool = Pool::builder()
                .workers(2)
                .chunk_size(chunk)
                .build()
                .unwrap();
            let ys = pool.map(&xs, |x| x * 7 + 3).unwrap();
            assert!(ys == expected, "chunk size {chunk}");
            let shm = pool.to_shm(&xs).unwrap();
            let ys = pool.map(&shm, |x| x * 7 + 3).unwrap();
            assert!(ys == expected, "chunk size {chunk}, in place");
            let ys = pool.map_async(shm, |x| x * 7 + 3).unwrap().get().unwrap();
            assert!(ys == expected, "chunk size {chunk}, async");
            assert_maps(&pool);
        }
    })
}

#[test]
fn a_zero_task_timeout_is_an_invalid_argument() {
    deadline(30, || {
        assert_err!(
            Pool::builder()
                .workers(1)
                .task_timeout(Duration::ZERO)
                .build(),
            Error::InvalidArgument { .. }
        );
    })
}

// 3: past the OS process limit.
//
// Each case lowers `RLIMIT_NPROC` to the tasks this user runs plus a
// headroom, so that one particular fork or thread of `build` fails with
// `EAGAIN`. As root the limit is not enforced (root has `CAP_SYS_RESOURCE`),
// so the isolated process first becomes `nobody`; if it cannot, the build
// may succeed, and the test only checks that it does not misbehave. The
// cases count every task of the user, so they assume no other process of
// that user starts or ends meanwhile (two copies of this binary running at
// once as root would share `nobody`'s count).

#[test]
fn past_the_process_limit_build_fails_with_io() {
    isolated("past_the_process_limit_body", 60);
}

#[test]
#[ignore = "run in a process of its own by past_the_process_limit_build_fails_with_io"]
fn past_the_process_limit_body() {
    if !in_isolation() {
        return;
    }
    // The template, the supervisor thread and four workers start; the fifth
    // worker's fork fails.
    deadline(50, || build_past_the_process_limit(6))
}

#[test]
fn no_thread_for_the_supervisor_build_fails_with_io() {
    isolated("no_thread_for_the_supervisor_body", 60);
}

#[test]
#[ignore = "run in a process of its own by no_thread_for_the_supervisor_build_fails_with_io"]
fn no_thread_for_the_supervisor_body() {
    if !in_isolation() {
        return;
    }
    // The template starts; the supervisor thread cannot.
    deadline(50, || build_past_the_process_limit(1))
}

#[test]
fn no_thread_for_the_results_fails_the_asynchronous_job_with_io() {
    isolated("no_thread_for_the_results_body", 60);
}

#[test]
#[ignore = "run in a process of its own by no_thread_for_the_results_fails_the_asynchronous_job_with_io"]
fn no_thread_for_the_results_body() {
    if !in_isolation() {
        return;
    }
    // The result thread starts with the first asynchronous job; here it
    // cannot. That job fails, blocking jobs (which need no thread) still
    // run, and once it can start, the next asynchronous job starts it.
    deadline(50, || {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let enforced = !root || become_nobody();
        let pool = Pool::new(2).unwrap();
        // SAFETY: getuid has no preconditions.
        let running = tasks_of(unsafe { libc::getuid() }).len();
        let old = nproc_limit();
        // A limit of one task: no thread can start, whatever other tasks
        // of this user start or end meanwhile.
        set_nproc_limit(libc::rlimit {
            rlim_cur: 1,
            rlim_max: old.rlim_max,
        });
        let refused = pool.apply_async(1u32, |x| x + 1).map(|r| r.get());
        let blocking = pool.apply(2u32, |x| x + 1);
        set_nproc_limit(old);
        println!("enforced: {enforced}, {running} tasks: {refused:?}");
        match refused {
            Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}"),
            Ok(Ok(2)) if !enforced => {}
            other => panic!("expected Io(EAGAIN), got {other:?}"),
        }
        assert_eq!(blocking.unwrap(), 3);
        let r = pool.apply_async(5u32, |x| x + 1).unwrap();
        assert_eq!(r.get().unwrap(), 6);
        pool.close();
        pool.join().unwrap();
    })
}

#[test]
fn global_from_several_threads_builds_one_pool() {
    isolated("global_from_several_threads_body", 60);
}

#[test]
#[ignore = "run in a process of its own by global_from_several_threads_builds_one_pool"]
fn global_from_several_threads_body() {
    if !in_isolation() {
        return;
    }
    // Threads that ask for the global pool at once get the same pool, and
    // only one is built: with room for about one pool under
    // `RLIMIT_NPROC`, every thread gets it (builds racing each other made
    // all but the first fail with `EAGAIN`, and forked a pool's worth of
    // processes per thread for nothing).
    deadline(50, || {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let enforced = !root || become_nobody();
        let n = 6;
        let barrier = std::sync::Barrier::new(n + 1);
        let got: Vec<Result<usize, String>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        shmpool::try_global()
                            .map(|p| p as *const Pool as usize)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            // SAFETY: getuid has no preconditions.
            let running = tasks_of(unsafe { libc::getuid() }).len();
            let old = nproc_limit();
            // The template, the workers, the supervisor and the stdio probe
            // of one pool, and a few to spare: not two pools.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let headroom = (workers + 4) as libc::rlim_t;
            set_nproc_limit(libc::rlimit {
                rlim_cur: (running as libc::rlim_t + headroom).min(old.rlim_max),
                rlim_max: old.rlim_max,
            });
            barrier.wait();
            let got = threads.into_iter().map(|t| t.join().unwrap()).collect();
            set_nproc_limit(old);
            got
        });
        println!("enforced: {enforced}: {got:?}");
        let first = got[0].clone().expect("the global pool");
        assert!(
            got.iter().all(|g| g.as_ref() == Ok(&first)),
            "every thread gets the one pool: {got:?}"
        );
        assert_maps(shmpool::global());
    })
}

/// Becomes `nobody` (uid and gid 65534), dropping root's capabilities with
/// root's uid. Returns whether it did.
fn become_nobody() -> bool {
    const NOBODY: u32 = 65534;
    // SAFETY: setgroups/setgid/setuid change this process's credentials only
    // (glibc applies them to every thread); the results are checked.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            return false;
        }
        // Changing uid made the process non-dumpable, which hides parts of
        // `/proc/self` from it; undo that.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        libc::getuid() == NOBODY && libc::geteuid() == NOBODY
    }
}

fn nproc_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live struct.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) },
        0
    );
    limit
}

fn set_nproc_limit(limit: libc::rlimit) {
    // SAFETY: setrlimit reads a live struct and changes this process only.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &limit) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Builds a pool of 16 workers with `RLIMIT_NPROC` at the user's running
/// tasks plus `headroom`; expects `Io(EAGAIN)` and nothing left behind.
fn build_past_the_process_limit(headroom: usize) {
    // As a child subreaper, this process inherits any worker the pool
    // orphans, so `children()` sees everything the build left behind.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let switched = root && become_nobody();
    let enforced = !root || switched;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let old = nproc_limit();
    let running = tasks_of(uid).len();
    // Only the soft limit is lowered, so it can be raised again.
    let low = ((running + headroom) as libc::rlim_t).min(old.rlim_max);
    set_nproc_limit(libc::rlimit {
        rlim_cur: low,
        rlim_max: old.rlim_max,
    });
    let built = Pool::new(16);
    set_nproc_limit(old);
    println!(
        "uid {uid} (root: {root}, switched: {switched}), {running} tasks, limit {low}: {:?}",
        built.as_ref().err()
    );
    match (enforced, built) {
        (true, Err(Error::Io(e))) => {
            assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
        }
        (true, Err(other)) => panic!("expected Io(EAGAIN), got {other:?}"),
        (true, Ok(_)) => panic!("a pool of 16 workers was built past RLIMIT_NPROC"),
        (false, Err(Error::Io(_))) => {}
        (false, Err(other)) => panic!("expected Ok or Io, got {other:?}"),
        (false, Ok(pool)) => {
            assert_maps(&pool);
            drop(pool);
        }
    }
    // The template and the workers that did start are all gone: no child,
    // live or zombie, and no orphan handed to us.
    let states = || {
        children()
            .into_iter()
            .map(|pid| (pid, common::proc_stat(pid)))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || children().is_empty()),
        "left behind (pid, (state, ppid)): {:?}",
        states()
    );
    // With the limit restored, the same user builds a pool (as nobody: the
    // memfd region needs no privilege).
    let pool = Pool::new(2).unwrap();
    assert_maps(&pool);
    drop(pool);
    assert!(
        wait_until(Duration::from_secs(5), || children().is_empty()),
        "left behind: {:?}",
        states()
    );
}

// 4: zero-length inputs.

#[test]
fn zero_length_inputs_give_empty_results_without_a_job() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let before = pool.stats();
        let none: &[u32] = &[];
        assert!(pool.map(none, |x| x + 1).unwrap().is_empty());
        assert!(pool.map(&Vec::<u32>::new(), |x| x + 1).unwrap().is_empty());
        assert!(
            pool.map(&ShmVec::<u32>::new(), |x| x + 1)
                .unwrap()
                .is_empty()
        );
        assert!(pool.map_with(5u32, none, |c, x| c + x).unwrap().is_empty());
        assert!(
            pool.map_async(none, |x| x + 1)
                .unwrap()
                .get()
                .unwrap()
                .is_empty()
        );
        assert!(
            pool.map_async(ShmVec::<u32>::new(), |x| x + 1)
                .unwrap()
                .get()
                .unwrap()
                .is_empty()
        );
        let zeroed = pool.alloc_zeroed::<u32>(0).unwrap();
        assert!(zeroed.is_empty());
        let pending = pool.map_async(zeroed, |x| x + 1).unwrap();
        assert!(pending.ready(), "an empty map is complete at once");
        assert!(futures::executor::block_on(pending).unwrap().is_empty());
        let empty = pool.to_shm(none).unwrap();
        assert!(empty.is_empty());
        let after = pool.stats();
        assert_eq!(after.jobs_submitted, before.jobs_submitted);
        assert_eq!(after.jobs_completed, before.jobs_completed);
        assert_eq!(after.bytes_staged, before.bytes_staged);
        assert_eq!(after.arena_in_use, 0);

        // `apply` always runs its task once, as Python's `apply(f, ())` calls
        // `f()`: a zero-sized argument or result is a job like any other.
        assert_eq!(pool.apply([0u32; 0], |a| a.len() as u32 + 42).unwrap(), 42);
        assert_eq!(pool.apply(7u32, |_| [0u64; 0]).unwrap(), [0u64; 0]);
        assert_eq!(pool.apply((), |()| 9u8).unwrap(), 9);
        let r = pool.apply_async([0u8; 0], |_| [0u16; 0]).unwrap();
        assert_eq!(r.get().unwrap(), [0u16; 0]);
        assert_eq!(pool.stats().jobs_submitted, before.jobs_submitted + 4);

        // Zero-sized elements: the input or output occupies no bytes.
        let ys = pool.map(&[[0u8; 0]; 100], |_| 7u32).unwrap();
        assert_eq!(ys, vec![7; 100]);
        let units = pool.map(&[1u32, 2, 3], |_| ()).unwrap();
        assert_eq!(units.len(), 3);
        assert_maps(&pool);
    })
}

// 5: input larger than the arena.

#[test]
fn a_zero_sized_input_past_2_to_the_48_is_refused_not_run_forever() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // Near u64::MAX the claim counter wrapped: ranges were handed out
        // again forever, or a finished job looked corrupt.
        let huge = vec![(); usize::MAX];
        assert_err!(pool.map(&huge, |x: ()| x), Error::InvalidArgument { .. });
        let huge = vec![(); (1 << 63) + 1];
        assert_err!(
            pool.map_reduce_chunked(&huge, 1 << 63, |_: ()| 1u64, |a, b| a + b, 0),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            pool.map_indexed(&huge, |_: &[()], i| i as u64 & 1),
            Error::InvalidArgument { .. }
        );
        // At the limit, it runs (one call per range, nothing per element).
        let most = vec![(); 1 << 48];
        let out = pool.map_chunks(&most, |_: &[()], _: &mut [()]| {}).unwrap();
        assert_eq!(out.len(), 1 << 48);
        assert_maps(&pool);
    })
}

#[test]
fn input_larger_than_the_arena_is_out_of_shared_memory() {
    deadline(60, || {
        const ARENA: usize = 1 << 20;
        let pool = Pool::builder()
            .workers(2)
            .arena_size(ARENA)
            .build()
            .unwrap();
        let big = vec![1u8; 4 << 20];
        let check = |result: Result<(), Error>, requested: usize| match result {
            Err(Error::OutOfSharedMemory {
                requested: r,
                available,
                ..
            }) => {
                assert_eq!(r, requested);
                assert!(available <= ARENA, "{available}");
            }
            other => panic!("expected OutOfSharedMemory, got {other:?}"),
        };
        check(pool.map(&big, |x| x + 1).map(drop), 4 << 20);
        check(pool.map_with(1u8, &big, |c, x| c + x).map(drop), 4 << 20);
        check(pool.map_async(&big, |x| x + 1).map(drop), 4 << 20);
        check(pool.to_shm(&big).map(drop), 4 << 20);
        check(pool.alloc_zeroed::<u8>(4 << 20).map(drop), 4 << 20);
        // The input fits, the output does not: the staged input is freed.
        let quarter = vec![1u8; 256 << 10];
        check(pool.map(&quarter, u64::from).map(drop), 2 << 20);
        check(pool.map_async(&quarter, u64::from).map(drop), 2 << 20);
        assert_eq!(pool.stats().jobs_submitted, 0, "no job was submitted");
        assert_eq!(pool.stats().arena_in_use, 0, "nothing leaked");
        // Room held by a live vector is not available until it is dropped.
        let held = pool.alloc_zeroed::<u8>(900 << 10).unwrap();
        let small = vec![3u8; 200 << 10];
        check(pool.map(&small, |x| x).map(drop), 200 << 10);
        drop(held);
        assert_eq!(pool.map(&small, |x| x * 2).unwrap(), vec![6u8; 200 << 10]);
        assert_maps(&pool);
        assert_eq!(pool.stats().arena_in_use, 0);
    })
}

// 7: use after close, after terminate; join before close.

#[test]
fn calls_after_close_are_refused_but_allocation_is_not() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let kept = pool.to_shm(&[1u32, 2, 3]).unwrap();
        pool.close();
        assert_err!(pool.apply(1u32, |x| x), Error::Closed);
        assert_err!(pool.map(&[1u32], |x| x), Error::Closed);
        assert_err!(pool.map(&[0u32; 0], |x| x), Error::Closed);
        assert_err!(pool.map_with(1u32, &[1u32], |c, x| c + x), Error::Closed);
        assert_err!(pool.map_async(&[1u32], |x| x), Error::Closed);
        assert_err!(pool.map_async(kept, |x| x), Error::Closed);
        assert_err!(pool.apply_async(1u32, |x| x), Error::Closed);
        // Whatever else is wrong with the call: the pool's state comes first.
        assert_err!(
            pool.map_into(&[1u32, 2], &mut [0u32; 1], |x| x),
            Error::Closed
        );
        assert_err!(pool.map2(&[1u32], &[1u32, 2], |a, b| a + b), Error::Closed);
        assert_err!(
            pool.map_reduce_chunked(&[1u32, 2], 0, |x| x, |a, b| a + b, 0),
            Error::Closed
        );
        // Allocating needs no worker: a closed pool still hands out shared
        // memory (the vectors outlive the pool anyway).
        let z = pool.alloc_zeroed::<u64>(1000).unwrap();
        assert!(z.len() == 1000 && z.iter().all(|&x| x == 0));
        assert_eq!(pool.to_shm(&[4u8, 5]).unwrap(), vec![4, 5]);
        pool.close(); // twice is harmless
        pool.join().unwrap();
        assert!(pool.worker_pids().is_empty());
        assert_err!(pool.apply(1u32, |x| x), Error::Closed);
        assert_err!(pool.map(&[1u32], |x| x), Error::Closed);
        assert_eq!(pool.to_shm(&[6u8]).unwrap(), vec![6]);
        pool.join().unwrap(); // twice is harmless
        assert_eq!(pool.stats().jobs_submitted, 0);
    })
}

#[test]
fn calls_after_terminate_are_refused_and_join_succeeds() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        pool.terminate();
        assert!(pool.worker_pids().is_empty());
        assert_err!(pool.apply(1u32, |x| x), Error::Closed);
        assert_err!(pool.map(&[1u32], |x| x), Error::Closed);
        assert_err!(pool.map_with(1u32, &[1u32], |c, x| c + x), Error::Closed);
        assert_err!(pool.map_async(&[1u32], |x| x), Error::Closed);
        assert_err!(pool.apply_async(1u32, |x| x), Error::Closed);
        let z = pool.alloc_zeroed::<u16>(10).unwrap();
        assert_eq!(z, vec![0u16; 10]);
        pool.close(); // no step back from terminated
        assert_err!(pool.apply(1u32, |x| x), Error::Closed);
        let t = Instant::now();
        pool.join().unwrap();
        pool.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        pool.terminate();
    })
}

#[test]
fn join_before_close_is_refused_and_the_pool_carries_on() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        assert_err!(pool.join(), Error::InvalidArgument { .. });
        assert_eq!(pool.worker_pids().len(), 2);
        assert_maps(&pool);
        pool.close();
        pool.join().unwrap();
    })
}

// 8: calling a pool from inside a task.

static OUTER: OnceLock<Pool> = OnceLock::new();

/// Tries every submitting call on `OUTER` from inside a task; returns a bit
/// per call that did not fail with `WouldDeadlock` (0: all did).
fn use_outer(x: u32) -> u32 {
    let Some(outer) = OUTER.get() else {
        return 1 << 31;
    };
    let would_deadlock = |r: Result<(), Error>| matches!(r, Err(Error::WouldDeadlock { .. }));
    let checks = [
        would_deadlock(outer.map_async(&[x], |y| y + 1).map(drop)),
        would_deadlock(outer.apply_async(x, |y| y + 1).map(drop)),
        would_deadlock(outer.map_with(x, &[x], |c, y| c + y).map(drop)),
        would_deadlock(outer.to_shm(&[x]).map(drop)),
    ];
    checks
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

#[test]
fn async_calls_from_inside_a_task_would_deadlock() {
    deadline(60, || {
        // Set before `pool` forks its workers, so they hold a copy of it.
        let outer = OUTER.get_or_init(|| Pool::new(1).unwrap());
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.map(&[1u32, 2, 3, 4], use_outer).unwrap(), vec![0; 4]);
        assert_eq!(pool.apply(5u32, use_outer).unwrap(), 0);
        assert_eq!(pool.apply_async(6u32, use_outer).unwrap().get().unwrap(), 0);
        let pending = pool.map_async(&[7u32, 8], use_outer).unwrap();
        assert_eq!(pending.get().unwrap(), vec![0, 0]);
        assert_eq!(outer.stats().jobs_submitted, 0, "nothing reached it");
        assert_maps(&pool);
        assert_maps(outer);
    })
}

/// An unfinished asynchronous result, set before a second pool forks its
/// workers, so that their tasks find a copy of it.
static PENDING: std::sync::Mutex<Vec<shmpool::AsyncResult<u64>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits for a copy of a pending result from inside a task, with `get` (0),
/// `wait_timeout` (1), or by polling it as a `Future` (2): 1 for
/// `WouldDeadlock` (or, from `wait_timeout`, "not complete"), 0 otherwise.
fn wait_for_pending(how: u64) -> u64 {
    let Some(r) = PENDING.lock().unwrap().pop() else {
        return 0;
    };
    let would_deadlock = |r: Result<u64, Error>| matches!(r, Err(Error::WouldDeadlock { .. }));
    let ok = match how {
        0 => would_deadlock(r.get()),
        1 => !r.wait_timeout(Duration::from_secs(3600)),
        _ => {
            use std::future::Future;
            let mut r = std::pin::pin!(r);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            matches!(
                r.as_mut().poll(&mut cx),
                std::task::Poll::Ready(Err(Error::WouldDeadlock { .. }))
            )
        }
    };
    u64::from(ok)
}

#[test]
fn waiting_for_another_pool_s_result_inside_a_task_would_deadlock() {
    deadline(60, || {
        let gate = common::Gate::new();
        let outer = Pool::new(1).unwrap();
        let pending = outer.apply_async(gate.token(), common::gated).unwrap();
        {
            let mut copies = PENDING.lock().unwrap();
            for _ in 0..3 {
                // Copies of the same result (the job is the same), one per
                // way of waiting; only the tasks' snapshots use them.
                copies.push(outer.apply_async(gate.token(), common::gated).unwrap());
            }
        }
        // The workers of `pool` fork now, with the three results pending.
        let pool = Pool::new(1).unwrap();
        // Waited for in a worker, none can ever complete there: each returns
        // at once instead of waiting for the outer job (or forever).
        let t = Instant::now();
        let got: Vec<u64> = (0..3)
            .map(|how| pool.apply(how, wait_for_pending).unwrap())
            .collect();
        assert_eq!(got, [1, 1, 1], "get, wait_timeout, poll");
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        gate.open();
        assert_eq!(pending.get().unwrap(), gate.token());
        for r in std::mem::take(&mut *PENDING.lock().unwrap()) {
            assert_eq!(r.get().unwrap(), gate.token());
        }
        assert_maps(&pool);
    })
}

// 9: a pool used in a forked child.

#[test]
fn a_forked_child_cannot_use_the_parent_s_pool_but_can_build_its_own() {
    isolated("forked_child_body", 120);
}

/// What the forked child checks; a nonzero code names the failed check.
fn in_forked_child(parent_pool: Pool) -> i32 {
    // (a) The copy refuses to work: its workers belong to the parent.
    if !matches!(
        parent_pool.map(&[1u32, 2], |x| x + 1),
        Err(Error::InvalidArgument { .. })
    ) {
        return 10;
    }
    if !matches!(
        parent_pool.apply(1u32, |x| x + 1),
        Err(Error::InvalidArgument { .. })
    ) {
        return 11;
    }
    if !matches!(
        parent_pool.map_async(&[1u32], |x| x + 1),
        Err(Error::InvalidArgument { .. })
    ) {
        return 12;
    }
    if !matches!(
        parent_pool.alloc_zeroed::<u8>(8),
        Err(Error::InvalidArgument { .. })
    ) {
        return 13;
    }
    if parent_pool.join().is_ok() {
        return 14;
    }
    // (b) Neither terminating nor dropping the copy touches the parent's
    // workers (the parent checks them).
    parent_pool.terminate();
    drop(parent_pool);
    // (c) A pool of its own works.
    let pool = match Pool::new(2) {
        Ok(pool) => pool,
        Err(_) => return 20,
    };
    let xs: Vec<u64> = (0..10_000).collect();
    match pool.map(&xs, |x| x * 3 + 1) {
        Ok(ys) if ys.iter().enumerate().all(|(i, &y)| y == 3 * i as u64 + 1) => {}
        _ => return 21,
    }
    if !matches!(pool.apply(6u32, |x| x * 7), Ok(42)) {
        return 22;
    }
    drop(pool);
    0
}

#[test]
#[ignore = "run in a process of its own by a_forked_child_cannot_use_the_parent_s_pool_but_can_build_its_own"]
fn forked_child_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        assert_maps(&pool);
        // SAFETY: the child runs only `in_forked_child`, inside
        // `catch_unwind`, and ends with `_exit`: it never returns into the
        // test harness. This isolated process runs no other test, so no
        // other thread holds a lock the child takes.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            let code = catch_unwind(AssertUnwindSafe(|| in_forked_child(pool))).unwrap_or(99);
            // SAFETY: _exit ends the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let end = Instant::now() + Duration::from_secs(60);
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes into a live int.
            let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if r == child {
                break;
            }
            assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
            if Instant::now() > end {
                // SAFETY: kill and waitpid on our own child.
                unsafe {
                    libc::kill(child, libc::SIGKILL);
                    libc::waitpid(child, &mut status, 0);
                }
                panic!("the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child failed: raw status {status:#x} (exit code {})",
            libc::WEXITSTATUS(status)
        );
        assert_eq!(pool.worker_pids(), pids, "the parent's workers live on");
        assert_eq!(pool.stats().worker_restarts, 0);
        assert_maps(&pool);
        assert!(pids.iter().all(|&pid| !common::is_dead(pid)));
    })
}

#[test]
fn a_forked_child_gets_a_global_pool_of_its_own() {
    isolated("forked_child_global_body", 120);
}

/// What the forked child checks of `shmpool::global()`; a nonzero code
/// names the failed check.
fn global_in_forked_child(parents: usize) -> i32 {
    // The global pool it inherited is the parent's: its own is built.
    let Ok(pool) = shmpool::try_global() else {
        return 30;
    };
    if std::ptr::eq(pool, parents as *const Pool) {
        return 31;
    }
    match pool.apply(20u64, |x| x + 1) {
        Ok(21) => {}
        _ => return 32,
    }
    // Built once: the same pool again.
    if !std::ptr::eq(pool, shmpool::global()) {
        return 33;
    }
    if !matches!(pool.map(&[1u32, 2, 3], |x| x * 2), Ok(v) if v == vec![2, 4, 6]) {
        return 34;
    }
    0
}

#[test]
#[ignore = "run in a process of its own by a_forked_child_gets_a_global_pool_of_its_own"]
fn forked_child_global_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let global = shmpool::global();
        let pids = global.worker_pids();
        assert_maps(global);
        let parents = global as *const Pool as usize;
        // SAFETY: the child runs only `global_in_forked_child`, inside
        // `catch_unwind`, and ends with `_exit`: it never returns into the
        // test harness. This isolated process runs no other test, so no
        // other thread holds a lock the child takes.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            let code =
                catch_unwind(AssertUnwindSafe(|| global_in_forked_child(parents))).unwrap_or(99);
            // SAFETY: _exit ends the child without running the parent's
            // destructors or atexit handlers; its pool's template sees the
            // socket close and takes the child's workers along.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        assert!(
            wait_until(Duration::from_secs(60), || {
                // SAFETY: waitpid writes into a live int.
                unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) == child }
            }),
            "the forked child hung"
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child failed: raw status {status:#x} (exit code {})",
            libc::WEXITSTATUS(status)
        );
        assert!(std::ptr::eq(global, shmpool::global()));
        assert_eq!(global.worker_pids(), pids, "the parent's workers live on");
        assert_maps(global);
    })
}

// 10: very large and over-aligned Pod types.

/// 64 KiB of `u64` (bytemuck, without its `min_const_generics` feature,
/// implements `Pod` for arrays of a fixed list of lengths only, up to 4096:
/// so the big types are nested arrays).
type Words64K = [[u64; 1024]; 8];
/// 64 KiB of bytes.
type Bytes64K = [[u8; 4096]; 16];

/// A type aligned to two pages: more than an arena block guarantees.
#[repr(C, align(8192))]
#[derive(Clone, Copy, Debug, bytemuck_derive::Zeroable, bytemuck_derive::Pod)]
struct Big([[u8; 4096]; 2]);

/// A type aligned to exactly one page: the largest alignment allowed.
#[repr(C, align(4096))]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck_derive::Zeroable, bytemuck_derive::Pod)]
struct Paged([u8; 4096]);

fn triple_words(mut a: Words64K) -> Words64K {
    for x in a.iter_mut().flatten() {
        *x = x.wrapping_mul(3) + 1;
    }
    a
}

fn flip_bytes(mut a: Bytes64K) -> Bytes64K {
    for x in a.iter_mut().flatten() {
        *x ^= 0x5a;
    }
    a
}

fn bytes_pattern(i: usize) -> Bytes64K {
    let mut a = Bytes64K::zeroed();
    for (j, x) in a.iter_mut().flatten().enumerate() {
        *x = (i * 7 + j * 13 + j / 4096) as u8;
    }
    a
}

#[test]
fn very_large_pod_values_work() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let mut words = Words64K::zeroed();
        for (i, x) in words.iter_mut().flatten().enumerate() {
            *x = i as u64;
        }
        let out = pool.apply(words, triple_words).unwrap();
        assert!(
            out.iter()
                .flatten()
                .enumerate()
                .all(|(i, &x)| x == 3 * i as u64 + 1)
        );
        let out = pool
            .apply_async(words, triple_words)
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(out, triple_words(words));

        let xs: Vec<Bytes64K> = (0..16).map(bytes_pattern).collect();
        let ys = pool.map(&xs, flip_bytes).unwrap();
        assert_eq!(ys.len(), 16);
        assert!(ys.iter().zip(&xs).all(|(y, &x)| *y == flip_bytes(x)));
        let sums = pool
            .map(&xs, |a| {
                a.iter().flatten().map(|&b| u64::from(b)).sum::<u64>()
            })
            .unwrap();
        for (x, &sum) in xs.iter().zip(sums.iter()) {
            assert_eq!(sum, x.iter().flatten().map(|&b| u64::from(b)).sum::<u64>());
        }
        let ys = pool.map_async(&xs, flip_bytes).unwrap().get().unwrap();
        assert!(ys.iter().zip(&xs).all(|(y, &x)| *y == flip_bytes(x)));

        // Page alignment is the limit, and it works.
        let page = Paged([9; 4096]);
        let out = pool.apply(page, |mut p| {
            p.0[0] = 1;
            p
        });
        assert_eq!(out.unwrap().0[..2], [1, 9]);
        let pages = pool.to_shm(&[page, page]).unwrap();
        assert_eq!(pages.as_ptr() as usize % 4096, 0);
        let firsts = pool.map(&pages, |p| p.0[0]).unwrap();
        assert_eq!(firsts, vec![9, 9]);
        assert_maps(&pool);
    })
}

#[test]
fn types_aligned_past_a_page_are_invalid_arguments() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let big = Big::zeroed();
        let bigs = vec![big; 4];
        assert_err!(
            pool.apply(big, |b| b.0[0][0]),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            pool.apply(1u8, |_| Big::zeroed()),
            Error::InvalidArgument { .. }
        );
        assert_err!(pool.apply_async(big, |b| b), Error::InvalidArgument { .. });
        assert_err!(pool.to_shm(&bigs), Error::InvalidArgument { .. });
        assert_err!(pool.alloc_zeroed::<Big>(1), Error::InvalidArgument { .. });
        assert_err!(
            pool.map(&bigs, |b| b.0[1][0]),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            pool.map(&[1u8, 2], |_| Big::zeroed()),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            pool.map_with(big, &[1u8, 2], |b, x| b.0[0][0] + x),
            Error::InvalidArgument { .. }
        );
        assert_err!(
            pool.map_async(&bigs, |b| b.0[0][1]),
            Error::InvalidArgument { .. }
        );
        assert_eq!(pool.stats().jobs_submitted, 0);
        assert_eq!(pool.stats().arena_in_use, 0, "staged inputs were freed");
        assert_maps(&pool);
    })
}

/// 64 MiB: more than any thread's stack.
type Huge = [[u64; 4096]; 2048];

#[test]
fn a_pod_too_big_for_the_worker_stack_kills_only_its_worker() {
    deadline(60, || {
        // Rust reports the overflow on the worker's stderr before it aborts;
        // the test checks the typed error instead.
        let pool = Pool::builder()
            .workers(1)
            .initializer(common::mute_stderr)
            .build()
            .unwrap();
        let xs = pool.alloc_zeroed::<Huge>(1).unwrap();
        // The task copies its 64 MiB argument onto the worker's stack.
        let err = pool
            .map(&xs, |b: Huge| std::hint::black_box(b)[0][0] + 1)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::WorkerDied {
                    signal: Some(libc::SIGSEGV | libc::SIGABRT),
                    range: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            pool.apply(1u8, |x| x + 1).unwrap(),
            2,
            "the pool carries on"
        );
    })
}
