//! Who owns shared memory: a `ShmVec` is used only in the process that
//! allocated it; a vector of another pool is staged, as an input or as an
//! output (copied back), by every entry point; dropping shared memory never takes a
//! lock a forked child may have inherited locked; `Pool::new` and drops never
//! wait for a lock user code holds; and regions come and go without leaks.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use common::{deadline, in_isolation, isolated, open_fds, shmpool_mappings, wait_until};
use shmpool::{Error, Pool, ShmVec};

/// The message of a task that used a `ShmVec` outside its owner process.
const FOREIGN: &str = "can only be used in the process that allocated it";

/// Locks a static, whoever panicked holding it (a task that is refused
/// panics with the lock held in its worker).
fn locked<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::TaskPanicked { message, .. }) => {
            assert!(message.contains(FOREIGN), "{message}")
        }
        other => panic!("expected a refused ShmVec, got {other:?}"),
    }
}

// A `ShmVec` reached through a static inside a task.

static BEFORE: Mutex<Option<ShmVec<u64>>> = Mutex::new(None);

#[test]
fn a_shmvec_of_an_earlier_pool_in_a_static_is_refused_in_a_task() {
    deadline(60, || {
        let a = Pool::new(1).unwrap();
        *locked(&BEFORE) = Some(a.to_shm(&[1u64, 2, 3]).unwrap());
        // Built after the static was filled: its workers hold a copy of the
        // handle, pointing at memory they do not map.
        let b = Pool::new(2).unwrap();
        assert_refused(b.map(&[0usize, 1, 2], |i| {
            locked(&BEFORE).as_ref().map_or(0, |v| v[i])
        }));
        assert_refused(b.apply(0usize, |i| {
            if let Some(v) = locked(&BEFORE).as_mut() {
                v[i] = 0xdead;
            }
            0u8
        }));
        assert_eq!(*locked(&BEFORE).as_ref().unwrap(), vec![1, 2, 3]);
        // Debug-printing one in a task does not panic.
        let shown = b.apply(0u8, |_| {
            let s = format!("{:?}", locked(&BEFORE).as_ref());
            s.contains("another process") as u8
        });
        assert_eq!(shown.unwrap(), 1);
        common::assert_healthy(&b);
    })
}

static SAME_POOL: Mutex<Option<ShmVec<u64>>> = Mutex::new(None);

#[test]
fn a_shmvec_of_the_same_pool_seen_by_a_reforked_template_is_refused() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        *locked(&SAME_POOL) = Some(pool.to_shm(&[7u64; 4]).unwrap());
        // Killing the template makes the pool fork a new one from this
        // process, now: its workers inherit the static holding this pool's
        // own vector, whose memory they map, live.
        let template = common::proc_stat(pool.worker_pids()[0]).unwrap().1;
        // SAFETY: kill(2) on our own template process.
        unsafe { libc::kill(template as i32, libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(10), || {
            let pids = pool.worker_pids();
            pids.len() == 2
                && pids
                    .iter()
                    .all(|&p| common::proc_stat(p).is_some_and(|(_, pp)| pp != template))
        }));
        assert_refused(pool.map(&[0usize, 1, 2, 3], |i| {
            if let Some(v) = locked(&SAME_POOL).as_mut() {
                v[i] = 57005;
            }
            1u8
        }));
        assert_refused(pool.map(&[0usize, 1], |i| {
            locked(&SAME_POOL).as_ref().map_or(0, |v| v[i])
        }));
        assert_eq!(*locked(&SAME_POOL).as_ref().unwrap(), vec![7; 4]);
    })
}

static ORPHAN: Mutex<Option<ShmVec<u32>>> = Mutex::new(None);

#[test]
fn a_task_that_drops_an_orphaned_shmvec_returns_promptly() {
    deadline(60, || {
        let a = Pool::new(1).unwrap();
        *locked(&ORPHAN) = Some(a.to_shm(&[5u32; 1000]).unwrap());
        drop(a);
        let b = Pool::new(2).unwrap();
        // Each worker drops its own copy once; later calls find it gone.
        let dropped: u32 = (0..20)
            .map(|_| {
                let r = b.apply(0u8, |_| locked(&ORPHAN).take().is_some() as u32);
                r.unwrap()
            })
            .sum();
        assert!((1..=2).contains(&dropped), "{dropped}");
        // The parent's vector is untouched, and still its own to free.
        assert!(locked(&ORPHAN).as_ref().unwrap().iter().all(|&x| x == 5));
        locked(&ORPHAN).take();
        common::assert_healthy(&b);
    })
}

#[test]
fn a_forked_child_cannot_use_its_parents_shmvec() {
    isolated("forked_child_body", 60);
}

#[test]
#[ignore = "run in a process of its own by a_forked_child_cannot_use_its_parents_shmvec"]
fn forked_child_body() {
    if !in_isolation() {
        return;
    }
    let pool = Pool::new(1).unwrap();
    let mut v = pool.to_shm(&[1u64, 2, 3]).unwrap();
    // SAFETY: this isolated test process forks a child that only runs the
    // closure below and leaves with `_exit`.
    match unsafe { libc::fork() } {
        0 => {
            let read = std::panic::catch_unwind(|| v[0]).is_err();
            let write =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v[1] = 9)).is_err();
            // Dropping the child's copy frees nothing of the parent's.
            drop(v);
            // SAFETY: ends the child without running the parent's
            // destructors.
            unsafe { libc::_exit(if read && write { 0 } else { 1 }) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for the child forked above.
            unsafe { libc::waitpid(child, &mut status, 0) };
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            assert_eq!(v, vec![1, 2, 3]);
            v[2] = 4;
            assert_eq!(pool.map(&v, |x| x * 2).unwrap(), vec![2, 4, 8]);
        }
    }
}

// Vectors of another pool, at every entry point.

#[test]
fn every_entry_point_stages_an_input_of_another_pool() {
    deadline(120, || {
        let a = Pool::new(1).unwrap();
        let b = Pool::new(2).unwrap();
        let n = 10_000u64;
        let data: Vec<u64> = (0..n).collect();
        let x = a.to_shm(&data).unwrap();
        // Something else at the same offsets of b's arena, so that reading
        // the wrong region would show.
        let decoy = b.to_shm(&vec![7778u64; n as usize]).unwrap();
        let bytes = n * 8;
        let staged = |before: u64| b.stats().bytes_staged - before;

        let s = b.stats().bytes_staged;
        assert_eq!(b.map(&x, |v| v + 1).unwrap(), (1..=n).collect::<Vec<_>>());
        assert_eq!(staged(s), bytes);
        let s = b.stats().bytes_staged;
        assert_eq!(
            b.map_with(3u64, &x, |k, v| v * k).unwrap(),
            data.iter().map(|v| v * 3).collect::<Vec<_>>()
        );
        assert_eq!(staged(s), bytes);
        let s = b.stats().bytes_staged;
        assert_eq!(
            b.map2(&x, &decoy, |p, q| p + q).unwrap(),
            data.iter().map(|v| v + 7778).collect::<Vec<_>>()
        );
        assert_eq!(staged(s), bytes, "only the foreign input is staged");
        let three = b.map3(&decoy, &x, &x, |p, q, r| p + q + r).unwrap();
        assert_eq!(three, data.iter().map(|v| 7778 + 2 * v).collect::<Vec<_>>());
        let halves = b
            .map_chunks(&x, |i: &[u64], o: &mut [u64]| {
                for (o, i) in o.iter_mut().zip(i) {
                    *o = i / 2;
                }
            })
            .unwrap();
        assert_eq!(halves, data.iter().map(|v| v / 2).collect::<Vec<_>>());
        let next = b
            .map_indexed(&x, |x: &[u64], i| x[(i + 1) % x.len()])
            .unwrap();
        assert_eq!(next[0], 1);
        assert_eq!(next[n as usize - 1], 0);
        let sum: u64 = data.iter().sum();
        assert_eq!(b.map_reduce(&x, |v| v, |p, q| p + q, 0).unwrap(), sum);
        assert_eq!(
            b.map_reduce_chunked(&x, 333, |v| v, |p, q| p + q, 0)
                .unwrap(),
            sum
        );
        let streamed: Vec<u64> = b
            .imap(x.iter().copied(), |v| v + 1)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(streamed, (1..=n).collect::<Vec<_>>());
        // Asynchronous, borrowed and moved in.
        let s = b.stats().bytes_staged;
        assert_eq!(b.map_async(&x, |v| v * 2).unwrap().get().unwrap()[5], 10);
        let moved = b.map_async(x, |v| v * 2).unwrap().get().unwrap();
        assert_eq!(moved, data.iter().map(|v| v * 2).collect::<Vec<_>>());
        assert_eq!(
            staged(s),
            2 * bytes,
            "a moved-in vector of another pool is copied"
        );
        // Its own vector moved in is still read in place.
        let s = b.stats().bytes_staged;
        let own = b.to_shm(&data).unwrap();
        assert_eq!(b.map_async(own, |v| v).unwrap().get().unwrap()[7], 7);
        assert_eq!(staged(s), 0);
    })
}

#[test]
fn outputs_of_another_pool_are_staged_never_written_at_this_pools_offsets() {
    deadline(60, || {
        let a = Pool::new(1).unwrap();
        let b = Pool::new(2).unwrap();
        let input = b.to_shm(&[1u32, 2, 3]).unwrap();
        let mut foreign = a.to_shm(&[9u32; 3]).unwrap();
        // Something of b's at the foreign vector's offset: writing there
        // would show.
        let decoy = b.to_shm(&[5u32; 3]).unwrap();
        let staged = b.stats().bytes_staged;
        b.map_into(&input, &mut foreign, |x| x * 10).unwrap();
        assert_eq!(foreign, vec![10, 20, 30]);
        b.map_in_place(&mut foreign, |x| x + 1).unwrap();
        assert_eq!(foreign, vec![11, 21, 31]);
        assert_eq!(decoy, vec![5, 5, 5]);
        assert_eq!(
            b.stats().bytes_staged - staged,
            12 + 2 * 12,
            "staged and copied back"
        );
        // The same calls on the owner write in place.
        let mut own = b.alloc_zeroed::<u32>(3).unwrap();
        let staged = b.stats().bytes_staged;
        b.map_into(&input, &mut own, |x| x * 10).unwrap();
        assert_eq!(own, vec![10, 20, 30]);
        a.map_in_place(&mut foreign, |x| x - 1).unwrap();
        assert_eq!(foreign, vec![10, 20, 30]);
        assert_eq!(b.stats().bytes_staged, staged);
    })
}

// Zero-sized elements.

#[test]
fn zero_sized_elements_map_in_place_and_into() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let mut units = pool.alloc_zeroed::<()>(1000).unwrap();
        pool.map_in_place(&mut units, |u| u).unwrap();
        assert_eq!(units.len(), 1000);
        let mut out = pool.alloc_zeroed::<()>(3).unwrap();
        pool.map_into(&[1u32, 2, 3], &mut out, |_| ()).unwrap();
        assert_eq!(out.len(), 3);
        let mut nums = pool.alloc_zeroed::<u8>(1000).unwrap();
        pool.map_into(&units, &mut nums, |()| 7u8).unwrap();
        assert!(nums.iter().all(|&x| x == 7), "f ran for every element");
        // A failing task still fails.
        let r = pool.map_in_place(&mut units, |()| panic!("unit"));
        assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
    })
}

// Lock order: nothing waits for a lock user code holds.

#[test]
fn pool_new_and_drop_complete_while_another_thread_holds_stdout_and_stderr() {
    deadline(60, || {
        let (built, wait_built) = mpsc::channel::<()>();
        let (held, wait_held) = mpsc::channel::<()>();
        // Holds both stdio locks until the other thread has built, used and
        // dropped a pool: a Pool::new that waited for them would deadlock.
        let holder = thread::spawn(move || {
            let out = std::io::stdout().lock();
            let err = std::io::stderr().lock();
            held.send(()).unwrap();
            wait_built.recv().unwrap();
            drop((out, err));
        });
        wait_held.recv().unwrap();
        for _ in 0..3 {
            let pool = Pool::new(2).unwrap();
            assert_eq!(pool.map(&[1u8, 2], |x| x + 1).unwrap(), vec![2, 3]);
            drop(pool);
        }
        built.send(()).unwrap();
        holder.join().unwrap();
    })
}

#[test]
fn a_thread_printing_under_the_stdout_lock_while_dropping_a_pool_does_not_deadlock() {
    deadline(120, || {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let dropper = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let pool = Pool::new(1).unwrap();
                    let v = pool.to_shm(&[1u8; 100]).unwrap();
                    let mut out = std::io::stdout().lock();
                    drop(pool);
                    drop(v);
                    let _ = out.flush();
                }
            })
        };
        for _ in 0..30 {
            let pool = Pool::new(1).unwrap();
            assert_eq!(pool.apply(2u8, |x| x * 2).unwrap(), 4);
        }
        stop.store(true, SeqCst);
        dropper.join().unwrap();
    })
}

#[test]
fn pool_new_completes_while_the_calling_thread_holds_stdout() {
    deadline(60, || {
        let mut out = std::io::stdout().lock();
        let pool = Pool::new(2).unwrap();
        // Still ours to use (and the test's output stays clean).
        out.flush().unwrap();
        let ys = pool.map(&[1u32, 2, 3], |x| {
            println!("a task prints while its caller holds stdout: {x}");
            x * 2
        });
        assert_eq!(ys.unwrap(), vec![2, 4, 6]);
    })
}

#[test]
fn pools_built_while_stdout_is_held_for_long_leave_at_most_one_thread_waiting() {
    isolated("pools_built_while_stdout_is_held_body", 60);
}

#[test]
#[ignore = "run in a process of its own by pools_built_while_stdout_is_held_for_long_leave_at_most_one_thread_waiting"]
fn pools_built_while_stdout_is_held_body() {
    if !in_isolation() {
        return;
    }
    deadline(50, || {
        // A thread that holds stdout for the program's life (a logger
        // writing under one `StdoutLock`, say). Each `Pool::new` looks at
        // the lock from a thread of its own, which waits until the lock is
        // free: one such thread may wait, not one per pool built.
        let (release, wait_release) = mpsc::channel::<()>();
        let (held, wait_held) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let out = std::io::stdout().lock();
            held.send(()).unwrap();
            wait_release.recv().unwrap();
            drop(out);
        });
        wait_held.recv().unwrap();
        let before = common::threads();
        for _ in 0..6 {
            let pool = Pool::new(1).unwrap();
            assert_eq!(pool.apply(2u8, |x| x * 2).unwrap(), 4);
            drop(pool);
        }
        let left = common::threads();
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(
            left <= before + 1,
            "{} threads still wait for stdout after six pools came and went",
            left - before
        );
        // Once stdout is free, the waiting thread ends too.
        assert!(
            wait_until(Duration::from_secs(5), || common::threads() < before),
            "{} threads, {before} before (the holder included)",
            common::threads()
        );
    })
}

#[test]
fn a_single_threaded_program_builds_pools_with_stdout_free_or_held() {
    let out = common::run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_single_threaded")),
        "the single-threaded program",
        60,
    );
    for x in 1..=3 {
        assert!(out.contains(&format!("free: task {x}\n")), "{out}");
        assert!(out.contains(&format!("held: task {x}\n")), "{out}");
    }
    assert!(out.ends_with("done\n"), "{out}");
}

#[test]
fn pool_new_completes_while_another_thread_runs_a_panic_hook() {
    isolated("panic_hook_held_body", 60);
}

#[test]
#[ignore = "run in a process of its own by pool_new_completes_while_another_thread_runs_a_panic_hook"]
fn panic_hook_held_body() {
    if !in_isolation() {
        return;
    }
    static RELEASE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);
    let (release, wait) = mpsc::channel();
    *RELEASE.lock().unwrap() = Some(wait);
    let (entered, wait_entered) = mpsc::channel::<()>();
    let entered = Mutex::new(entered);
    // A hook that blocks until the pool has been built: it runs under the
    // panic hook's lock, which the first Pool::new must not wait for.
    std::panic::set_hook(Box::new(move |_| {
        let _ = entered.lock().unwrap().send(());
        let release = RELEASE.lock().unwrap().take();
        if let Some(rx) = release {
            let _ = rx.recv();
        }
    }));
    let panicker = thread::spawn(|| panic!("held in the hook"));
    wait_entered.recv().unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let r = pool.apply(0u8, |x| {
        if x == 0 {
            panic!("a task's message")
        }
        x
    });
    assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
    release.send(()).unwrap();
    assert!(panicker.join().is_err());
}

// The panic hook in workers.

/// A hook the user sets: it leaves a mark wherever it runs.
fn marking_hook(path: String) -> Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> {
    Box::new(move |_| {
        let _ = std::fs::write(&path, std::process::id().to_string());
    })
}

fn mark_path() -> String {
    format!("/tmp/shmpool-hook-mark-{}", std::process::id())
}

#[test]
fn a_users_later_panic_hook_does_not_run_in_workers() {
    isolated("later_hook_body", 60);
}

#[test]
#[ignore = "run in a process of its own by a_users_later_panic_hook_does_not_run_in_workers"]
fn later_hook_body() {
    if !in_isolation() {
        return;
    }
    let path = mark_path();
    let _ = std::fs::remove_file(&path);
    let first = Pool::new(1).unwrap();
    std::panic::set_hook(marking_hook(path.clone()));
    let second = Pool::new(1).unwrap();
    for pool in [&first, &second] {
        match pool.apply(0u32, |x| {
            if x == 0 {
                panic!("the real message")
            }
            x
        }) {
            Err(Error::TaskPanicked {
                message, location, ..
            }) => {
                assert_eq!(message, "the real message");
                assert!(location.is_some_and(|l| l.contains("ownership.rs")));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        std::fs::metadata(&path).is_err(),
        "the user's hook ran in a worker"
    );
}

static HOOK_PATH: Mutex<String> = Mutex::new(String::new());

fn set_marking_hook() {
    std::panic::set_hook(marking_hook(HOOK_PATH.lock().unwrap().clone()));
}

#[test]
fn a_hook_set_in_the_initializer_runs_in_workers() {
    isolated("initializer_hook_body", 60);
}

#[test]
#[ignore = "run in a process of its own by a_hook_set_in_the_initializer_runs_in_workers"]
fn initializer_hook_body() {
    if !in_isolation() {
        return;
    }
    let path = mark_path();
    let _ = std::fs::remove_file(&path);
    *HOOK_PATH.lock().unwrap() = path.clone();
    let pool = Pool::builder()
        .workers(1)
        .initializer(set_marking_hook)
        .build()
        .unwrap();
    let r = pool.apply(0u32, |x| {
        if x == 0 {
            panic!("asked for")
        }
        x
    });
    match r {
        Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, "asked for"),
        other => panic!("{other:?}"),
    }
    let mark = std::fs::read_to_string(&path).expect("the user's hook ran in the worker");
    assert_ne!(mark, std::process::id().to_string());
    let _ = std::fs::remove_file(&path);
}

// Captures are copied bytes.

static TOKEN_MADE: AtomicBool = AtomicBool::new(false);

/// A zero-sized "capability": safe code gets one only from `new`.
#[derive(Clone, Copy)]
struct Token(());

impl Token {
    fn new() -> Token {
        TOKEN_MADE.store(true, SeqCst);
        Token(())
    }
    fn made(self) -> bool {
        TOKEN_MADE.load(SeqCst)
    }
}

#[test]
fn a_captured_zero_sized_token_proves_nothing_in_a_worker() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        let token = Token::new();
        assert!(token.made());
        // The closure captures only a zero-sized value, so it is accepted;
        // the worker conjures it, but `new` never ran there (the pool was
        // built before): as documented on `Pool::map`.
        let seen = pool.map(&[0u8; 4], move |_| token.made() as u8).unwrap();
        assert_eq!(seen, vec![0; 4]);
    })
}

// Many regions and vectors, created and dropped.

#[test]
fn ten_thousand_shmvecs_and_seventy_pools_leave_nothing_behind() {
    isolated("many_regions_body", 240);
}

/// Shared-memory regions mapped by process `pid`, counted by inode.
fn mappings_of(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:shmpool"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes.len()
}

#[test]
#[ignore = "run in a process of its own by ten_thousand_shmvecs_and_seventy_pools_leave_nothing_behind"]
fn many_regions_body() {
    if !in_isolation() {
        return;
    }
    let (fds, maps) = (open_fds(), shmpool_mappings());
    let mut rng = common::Rng(0x5eed);
    // More pools alive at once than the registry's first chunk holds.
    let pools: Vec<Pool> = (0..70)
        .map(|_| {
            Pool::builder()
                .workers(1)
                .arena_size(16 << 20)
                .build()
                .unwrap()
        })
        .collect();
    // The newest pool's worker maps its own region only.
    let last = pools.last().unwrap();
    let worker = last.worker_pids()[0];
    assert_eq!(mappings_of(worker), 1, "a worker maps other pools' regions");
    let mut kept: Vec<ShmVec<u8>> = Vec::new();
    for i in 0..10_000 {
        let pool = &pools[rng.below(pools.len() as u64) as usize];
        // Mostly small, some a few pages, some larger than any arena.
        let len = match rng.below(100) {
            0..=79 => rng.below(4096) as usize,
            80..=97 => rng.below(1 << 20) as usize,
            _ => 32 << 20,
        };
        match pool.alloc_zeroed::<u8>(len) {
            Ok(v) if i % 7 == 0 => kept.push(v),
            Ok(v) => drop(v),
            // Larger than the arena, or than what the kept vectors left.
            Err(Error::OutOfSharedMemory { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(pools[3].map(&[1u8, 2], |x| x + 1).unwrap(), vec![2, 3]);
    // Pools dropped first; the vectors they made outlive them.
    drop(pools);
    assert!(!kept.is_empty());
    assert!(kept.iter().all(|v| v.iter().all(|&x| x == 0)));
    drop(kept);
    assert!(
        wait_until(Duration::from_secs(10), || open_fds() == fds
            && shmpool_mappings() == maps),
        "fds {fds} -> {}, mappings {maps} -> {}",
        open_fds(),
        shmpool_mappings()
    );
}

#[test]
fn a_refused_map_async_drops_the_vector_moved_in_and_frees_its_memory() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        let in_use = pool.stats().arena_in_use;
        let v = pool.to_shm(&[1u64; 4096]).unwrap();
        assert!(pool.stats().arena_in_use > in_use);
        pool.close();
        // Documented on `map_async`: the vector goes with the error...
        assert!(matches!(pool.map_async(v, |x| x + 1), Err(Error::Closed)));
        // ... and its memory back to the arena, not leaked.
        assert_eq!(pool.stats().arena_in_use, in_use);
        // A borrowed input stays the caller's.
        let kept = Pool::new(1).unwrap();
        let w = kept.to_shm(&[2u64; 8]).unwrap();
        kept.close();
        assert!(matches!(kept.map_async(&w, |x| x + 1), Err(Error::Closed)));
        assert_eq!(w, vec![2; 8]);
    })
}

#[test]
fn what_a_task_prints_without_a_newline_is_not_lost() {
    let out = isolated("partial_lines_body", 60);
    for x in 1..=3 {
        assert!(out.contains(&format!("<{x}>")), "{out:?}");
    }
    assert!(out.contains("<apply 7>"), "{out:?}");
}

#[test]
#[ignore = "run in a process of its own by what_a_task_prints_without_a_newline_is_not_lost"]
fn partial_lines_body() {
    if !in_isolation() {
        return;
    }
    deadline(50, || {
        let pool = Pool::new(2).unwrap();
        // `print!` keeps a partial line in the worker's stdout buffer; the
        // worker is killed at `join`, idle.
        let ys = pool.map(&[1u32, 2, 3], |x| {
            print!("<{x}>");
            x
        });
        assert_eq!(ys.unwrap(), vec![1, 2, 3]);
        assert_eq!(
            pool.apply(7u32, |x| {
                print!("<apply {x}>");
                x
            })
            .unwrap(),
            7
        );
        pool.close();
        pool.join().unwrap();
    })
}
