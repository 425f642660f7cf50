//! Tasks and initializers that block forever on a lock they inherited
//! locked from the process that built the pool: a pool in a `LazyLock` or a
//! `OnceLock` whose task uses that pool, a `Mutex` another thread held at
//! `Pool::new`. Each must fail promptly with a typed error, never hang.

mod common;

use std::sync::{LazyLock, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::deadline;
use shmpool::{Error, Pool};

/// How long detection may take: a few supervisor ticks (250 ms each).
const PROMPT: Duration = Duration::from_secs(5);

static LAZY: LazyLock<Pool> = LazyLock::new(|| Pool::new(2).unwrap());

/// A task that uses the pool it runs in, through the `LazyLock`: in the
/// worker, the lock is still being initialised (the workers were forked
/// inside its initialiser), so `LAZY` blocks forever there.
fn uses_lazy(x: u32) -> u32 {
    LAZY.apply(x, |y| y + 1).unwrap_or(0)
}

#[test]
fn a_task_that_uses_its_own_lazylock_pool_is_would_deadlock() {
    deadline(60, || {
        let t = Instant::now();
        let r = LAZY.apply(1u32, uses_lazy);
        assert!(
            matches!(r, Err(Error::WouldDeadlock { reason, .. }) if reason.contains("LazyLock")),
            "{r:?}"
        );
        assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
        // The job's other form, and the pool carries on.
        let r = LAZY.map_async(&[1u32, 2, 3], uses_lazy).unwrap().get();
        assert!(matches!(r, Err(Error::WouldDeadlock { .. })), "{r:?}");
        // A stream: each element gets the error, without running each on
        // its own (each would block, and be found, again).
        let t = Instant::now();
        let items: Vec<_> = LAZY
            .imap(0..100u32, uses_lazy)
            .unwrap()
            .chunksize(50)
            .collect();
        assert_eq!(items.len(), 100);
        assert!(
            items
                .iter()
                .all(|r| matches!(r, Err(Error::WouldDeadlock { .. })))
        );
        assert!(t.elapsed() < 2 * PROMPT, "took {:?}", t.elapsed());
        common::assert_healthy(&LAZY);
    })
}

static ONCE: OnceLock<Pool> = OnceLock::new();

fn once_pool() -> &'static Pool {
    ONCE.get_or_init(|| Pool::new(2).unwrap())
}

fn uses_once(x: u32) -> u32 {
    once_pool().apply(x, |y| y + 1).unwrap_or(0)
}

#[test]
fn a_task_that_uses_its_own_oncelock_pool_is_would_deadlock() {
    deadline(60, || {
        let t = Instant::now();
        let r = once_pool().apply(1u32, uses_once);
        assert!(matches!(r, Err(Error::WouldDeadlock { .. })), "{r:?}");
        assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
        common::assert_healthy(once_pool());
    })
}

static HELD: Mutex<u64> = Mutex::new(0);

fn takes_held(x: u64) -> u64 {
    *HELD.lock().unwrap() + x
}

fn init_takes_held() {
    drop(HELD.lock());
}

/// Builds a pool while another thread holds `HELD`, and lets go after.
fn build_while_held(builder: shmpool::Builder) -> Pool {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (built_tx, built_rx) = mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let guard = HELD.lock().unwrap();
        locked_tx.send(()).unwrap();
        built_rx.recv().unwrap();
        drop(guard);
    });
    locked_rx.recv().unwrap();
    let pool = builder.build();
    built_tx.send(()).unwrap();
    holder.join().unwrap();
    pool.unwrap()
}

#[test]
fn a_task_taking_a_mutex_held_at_pool_new_is_would_deadlock() {
    // In a process of its own: `HELD` is shared by the tests of this binary.
    common::isolated("mutex_body", 60);
}

#[test]
#[ignore = "run by a_task_taking_a_mutex_held_at_pool_new_is_would_deadlock"]
fn mutex_body() {
    if !common::in_isolation() {
        return;
    }
    deadline(60, || {
        let pool = build_while_held(Pool::builder().workers(2));
        // The parent's lock is free now; the workers' copy never will be.
        assert_eq!(*HELD.lock().unwrap(), 0);
        let t = Instant::now();
        let r = pool.map(&[1u64, 2, 3, 4], takes_held);
        assert!(matches!(r, Err(Error::WouldDeadlock { .. })), "{r:?}");
        assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
        common::assert_healthy(&pool);
        // With retries allowed, it is still not retried (it would block
        // again), and with a task timeout the deadlock is still named.
        let pool = build_while_held(
            Pool::builder()
                .workers(1)
                .max_retries(3)
                .task_timeout(Duration::from_secs(30)),
        );
        let r = pool.apply(1u64, takes_held);
        assert!(matches!(r, Err(Error::WouldDeadlock { .. })), "{r:?}");
        // One worker killed, one replacement (which may lag the error).
        assert!(common::wait_until(Duration::from_secs(5), || pool
            .stats()
            .worker_restarts
            == 1));
        assert_eq!(pool.apply(2u64, |x| x * 2).unwrap(), 4);
        assert_eq!(pool.stats().worker_restarts, 1, "not retried");
        // An initializer that blocks the same way breaks the pool.
        let pool = build_while_held(Pool::builder().workers(2).initializer(init_takes_held));
        let t = Instant::now();
        let r = pool.apply(1u64, |x| x);
        assert!(
            matches!(&r, Err(Error::InitializerFailed { message, .. }) if message.contains("blocked forever")),
            "{r:?}"
        );
        assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
    })
}
