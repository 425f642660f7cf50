//! `close`, `join`, `terminate` and `Drop`: what each waits for, what later
//! calls get, and that none leaves a process, a zombie, a descriptor or a
//! mapping behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use common::{assert_reaped, deadline, in_isolation, isolated, sleepy, wait_until};
use shmpool::{Error, Pool};

#[test]
fn close_refuses_new_work_and_join_waits_for_the_old() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let ran = Arc::new(AtomicUsize::new(0));
        let pending: Vec<_> = (0..6u64)
            .map(|i| {
                let r = pool.apply_async(100 + i, sleepy).unwrap();
                let ran = ran.clone();
                r.on_complete(move |_| {
                    ran.fetch_add(1, SeqCst);
                });
                r
            })
            .collect();
        assert!(
            matches!(pool.join(), Err(Error::InvalidArgument { .. })),
            "join before close"
        );
        pool.close();
        assert!(matches!(pool.map(&[1u8], |x| x), Err(Error::Closed)));
        assert!(matches!(pool.apply(1u8, |x| x), Err(Error::Closed)));
        assert!(matches!(pool.apply_async(1u8, |x| x), Err(Error::Closed)));
        assert!(matches!(pool.map_async(&[1u8], |x| x), Err(Error::Closed)));
        pool.join().unwrap();
        assert_eq!(ran.load(SeqCst), 6, "join waits for every callback");
        for (i, r) in pending.into_iter().enumerate() {
            assert!(r.ready());
            assert_eq!(r.get().unwrap(), 100 + i as u64);
        }
        assert!(pool.worker_pids().is_empty());
        assert_reaped(&pids);
        pool.join().unwrap();
        drop(pool);
        assert_reaped(&pids);
    })
}

#[test]
fn terminate_kills_now_and_fails_outstanding_jobs() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let xs: Vec<u64> = vec![2_000; 4];
        let long = pool.map_async(&xs, sleepy).unwrap();
        let also = pool.apply_async(5_000u64, sleepy).unwrap();
        thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        pool.terminate();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "terminate took {:?}",
            t.elapsed()
        );
        assert!(matches!(long.get(), Err(Error::Terminated)));
        assert!(matches!(also.get(), Err(Error::Terminated)));
        assert!(pool.worker_pids().is_empty());
        assert_reaped(&pids);
        assert!(matches!(pool.apply(1u8, |x| x), Err(Error::Closed)));
        pool.join().unwrap();
        pool.terminate();
    })
}

#[test]
fn dropping_the_pool_terminates_and_keeps_results_valid() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let done = pool.map(&[1.5f64, 2.5], |x| x * 2.0).unwrap();
        let pending = pool.apply_async(3_000u64, sleepy).unwrap();
        let t = Instant::now();
        drop(pool);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(matches!(pending.get(), Err(Error::Terminated)));
        assert_eq!(done, vec![3.0, 5.0]);
        assert_reaped(&pids);
    })
}

#[test]
fn a_blocked_caller_is_released_by_terminate() {
    deadline(60, || {
        let pool = Arc::new(Pool::new(1).unwrap());
        let caller = {
            let pool = pool.clone();
            thread::spawn(move || pool.apply(10_000u64, sleepy))
        };
        thread::sleep(Duration::from_millis(100));
        pool.terminate();
        let result = caller.join().unwrap();
        assert!(matches!(result, Err(Error::Terminated)), "{result:?}");
    })
}

#[test]
fn the_result_thread_starts_with_the_first_asynchronous_job() {
    isolated("the_result_thread_starts_body", 60);
}

#[test]
#[ignore = "run in a process of its own by the_result_thread_starts_with_the_first_asynchronous_job"]
fn the_result_thread_starts_body() {
    if !in_isolation() {
        return;
    }
    let named = |name: &str| {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == name)
            })
            .count()
    };
    // A thread names itself once it runs: count the tasks, and wait for
    // the names.
    let tasks = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let alone = tasks();
    let pool = Pool::new(2).unwrap();
    // `Pool::new` starts the supervisor, and a short-lived thread that
    // probes stdout's and stderr's locks (`shmpool-stdio`): that one ends
    // by itself, but on a busy machine it may still be exiting when
    // `Pool::new` returns. Wait for it, so that the counts below see the
    // pool's own threads only; a thread that stayed would fail here.
    assert!(
        wait_until(Duration::from_secs(5), || tasks() == alone + 1),
        "the supervisor alone: {} tasks, {alone} before",
        tasks()
    );
    assert!(wait_until(Duration::from_secs(5), || named(
        "shmpool-supervi"
    ) == 1));
    assert_eq!(pool.map(&[1u32, 2], |x| x * 3).unwrap(), vec![3, 6]);
    assert_eq!(pool.apply(4u32, |x| x + 1).unwrap(), 5);
    assert_eq!(tasks(), alone + 1, "blocking jobs need no result thread");
    let first = pool.apply_async(1u32, |x| x + 1).unwrap();
    assert_eq!(tasks(), alone + 2);
    assert!(wait_until(Duration::from_secs(5), || named(
        "shmpool-results"
    ) == 1));
    let more: Vec<_> = (0..50u32)
        .map(|i| pool.map_async(&[i, i], |x| x * 2).unwrap())
        .collect();
    assert_eq!(tasks(), alone + 2, "one result thread per pool");
    assert_eq!(first.get().unwrap(), 2);
    for (i, r) in more.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), vec![2 * i as u32; 2]);
    }
    drop(pool);
    // A joined thread can linger in /proc/self/task for a moment after its
    // join returns.
    assert!(
        wait_until(Duration::from_secs(5), || tasks() == alone),
        "both threads end with the pool: {} tasks, {alone} before",
        tasks()
    );
}

#[test]
fn a_subreaper_is_left_no_zombie() {
    isolated("a_subreaper_is_left_no_zombie_body", 60);
}

#[test]
#[ignore = "run in a process of its own by a_subreaper_is_left_no_zombie"]
fn a_subreaper_is_left_no_zombie_body() {
    if !in_isolation() {
        return;
    }
    // A worker whose template dies before it is reaped goes to the nearest
    // subreaper, here this process. Whichever way a pool stops, `join`,
    // `terminate` or `drop` returns with every worker and the template
    // reaped: none is left to us, not even as a zombie. (Killing the
    // template along with the workers, to overlap its exit with theirs,
    // made this process reap them: correct here, but under a PID 1 that
    // never reaps, as in a container started with `tail -f /dev/null`,
    // they would stay zombies.)
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    for round in 0..6 {
        let pool = Pool::new(4).unwrap();
        let pids = pool.worker_pids();
        assert_eq!(pool.map(&[1u32, 2, 3], |x| x * 2).unwrap(), vec![2, 4, 6]);
        match round % 3 {
            0 => {
                pool.close();
                pool.join().unwrap();
            }
            1 => pool.terminate(),
            _ => {}
        }
        drop(pool);
        assert_reaped(&pids);
        let left: Vec<_> = common::children()
            .into_iter()
            .map(|pid| (pid, common::proc_stat(pid)))
            .collect();
        assert_eq!(left, vec![], "round {round}: (pid, (state, ppid))");
    }
}

#[test]
fn nothing_is_left_behind() {
    isolated("nothing_is_left_behind_body", 60);
}

#[test]
#[ignore = "run in a process of its own by nothing_is_left_behind"]
fn nothing_is_left_behind_body() {
    if !in_isolation() {
        return;
    }
    let fds = common::open_fds();
    let threads = common::threads;
    let baseline_threads = threads();
    let shm_files = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    for round in 0..3 {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let kept = pool.map(&[1u32, 2, 3], |x| x + 1).unwrap();
        let r = pool.apply_async(1u32, |x| x).unwrap();
        match round {
            0 => drop(pool),
            1 => {
                pool.terminate();
                drop(pool);
            }
            _ => {
                pool.close();
                pool.join().unwrap();
                drop(pool);
            }
        }
        r.wait();
        drop(r);
        assert_eq!(kept, vec![2, 3, 4]);
        assert_reaped(&pids);
        assert_eq!(
            common::shmpool_mappings(),
            1,
            "the region stays mapped while a ShmVec lives"
        );
        drop(kept);
        assert_eq!(
            common::shmpool_mappings(),
            0,
            "round {round}: the region is unmapped"
        );
        assert_eq!(
            common::open_fds(),
            fds,
            "round {round}: no descriptor leaked"
        );
        // A joined thread can linger in /proc/self/task for a moment after
        // its join returns.
        assert!(
            wait_until(Duration::from_secs(5), || threads() == baseline_threads),
            "round {round}: the pool's threads have exited: {} tasks, {baseline_threads} before",
            threads()
        );
    }
    assert_eq!(
        std::fs::read_dir("/dev/shm")
            .map(|d| d.count())
            .unwrap_or(0),
        shm_files
    );
}

#[test]
fn a_big_process_gives_its_template_memory_back() {
    isolated("a_big_process_gives_its_template_memory_back_body", 120);
}

/// `bytes` of private anonymous memory, one byte written per page (not from
/// the global allocator, which may be the shared heap in this suite's heap
/// run: the template must see private memory).
struct Touched(*mut u8, usize);

impl Touched {
    fn new(bytes: usize) -> Touched {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // named.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        for i in (0..bytes).step_by(4096) {
            // SAFETY: in the mapping just made, readable and writable.
            unsafe { p.cast::<u8>().add(i).write_volatile(1) };
        }
        Touched(p.cast(), bytes)
    }

    fn sum(&self) -> u64 {
        (0..self.1)
            .step_by(4096)
            // SAFETY: in the mapping, which lives as long as `self`.
            .map(|i| u64::from(unsafe { self.0.add(i).read_volatile() }))
            .sum()
    }
}

impl Drop for Touched {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// The seed's program on `pool`: a map, checked, then `close` and `join`;
/// its template (the child of this process that is not a worker) is gone
/// after.
fn seed_on(pool: &Pool) {
    let xs: Vec<u64> = (0..1000).collect();
    let ys = pool.map(&xs, |x| x * x).unwrap();
    assert!(ys.iter().enumerate().all(|(i, &y)| y == (i * i) as u64));
    let workers = pool.worker_pids();
    let template = common::children()
        .into_iter()
        .find(|p| !workers.contains(p))
        .expect("the template is a child of this process");
    pool.close();
    pool.join().unwrap();
    assert!(
        !common::children().contains(&template),
        "the template is reaped"
    );
    assert_reaped(&workers);
}

#[test]
#[ignore = "run in a process of its own by a_big_process_gives_its_template_memory_back"]
fn a_big_process_gives_its_template_memory_back_body() {
    if !in_isolation() {
        return;
    }
    const MIB: usize = 1 << 20;
    // A few hundred MiB of private memory in one mapping, and a malloc heap
    // of many small blocks, all touched, as a numeric program's would be:
    // each template gives them back before it reaps its workers.
    let big = Touched::new(320 * MIB);
    let small: Vec<Box<[u64; 8]>> = (0..100_000u64).map(|i| Box::new([i; 8])).collect();
    let intact = || {
        assert_eq!(big.sum(), (320 * MIB / 4096) as u64);
        assert!(small.iter().enumerate().all(|(i, b)| b[7] == i as u64));
    };
    let pool = Pool::new(4).unwrap();
    seed_on(&pool);
    drop(pool);
    // The parent's memory is untouched by its template's release, and a
    // pool built after that one works as well.
    intact();
    let pool = Pool::new(4).unwrap();
    seed_on(&pool);
    drop(pool);
    // Dropped without `join`: the same way out, from `terminate`.
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(&[3u32], |x| x + 1).unwrap(), vec![4]);
    drop(pool);
    // A template forked from a thread runs on a copy of that thread's
    // stack, a large private anonymous mapping which must stay.
    thread::Builder::new()
        .stack_size(16 * MIB)
        .spawn(|| seed_on(&Pool::new(4).unwrap()))
        .unwrap()
        .join()
        .unwrap();
    intact();
    assert!(common::children().is_empty(), "nothing is left");
}

/// The pid of the process the program's fork handler last ran in.
static HANDLED_IN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn note_the_child() {
    // ORDERING: SeqCst: read by a task in this (single-threaded) child or
    // its descendants, which the fork orders after this store.
    HANDLED_IN.store(std::process::id(), SeqCst);
}

/// A task's report: the pid the handler ran in, the worker's parent (the
/// template) and the worker itself. Slow enough that both workers of a
/// pool take part in a map of a few dozen.
fn handler_report(_: u8) -> [u32; 3] {
    thread::sleep(Duration::from_millis(2));
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    [HANDLED_IN.load(SeqCst), parent, std::process::id()]
}

#[test]
fn fork_handlers_run_once_in_the_template_not_in_each_worker() {
    isolated(
        "fork_handlers_run_once_in_the_template_not_in_each_worker_body",
        60,
    );
}

#[test]
#[ignore = "run in a process of its own by fork_handlers_run_once_in_the_template_not_in_each_worker"]
fn fork_handlers_run_once_in_the_template_not_in_each_worker_body() {
    if !in_isolation() {
        return;
    }
    // Another library's child handler, registered with libc (design.md,
    // "Fork handlers").
    // SAFETY: a plain function that stores to a static.
    assert_eq!(
        unsafe { libc::pthread_atfork(None, None, Some(note_the_child)) },
        0
    );
    // SAFETY: a lookup by a valid, NUL-terminated name.
    let quiet = !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) }.is_null();
    let pool = Pool::new(2).unwrap();
    let check = |pool: &Pool| -> Vec<u32> {
        let reports = pool.map(&[0u8; 32], handler_report).unwrap();
        for &[handled_in, template, worker] in reports.iter() {
            // With `_Fork`, the handler ran when the template was forked
            // and not again; with libc's `fork`, in each worker too.
            let expected = if quiet { template } else { worker };
            assert_eq!(handled_in, expected, "worker {worker}, template {template}");
        }
        reports.iter().map(|r| r[2]).collect()
    };
    let first = pool.worker_pids();
    assert_eq!(check(&pool).len(), 32);
    // A replacement is forked the same way.
    // SAFETY: kills a worker of this pool.
    unsafe { libc::kill(first[0] as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || {
        let now = pool.worker_pids();
        now.len() == 2 && !now.contains(&first[0])
    }));
    let replacement = *pool
        .worker_pids()
        .iter()
        .find(|p| !first.contains(p))
        .expect("a replacement");
    assert!(
        (0..20).any(|_| check(&pool).contains(&replacement)),
        "the replacement ran no task"
    );
    pool.close();
    pool.join().unwrap();
}
