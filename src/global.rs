//! `global()`: a lazily built pool for library code that must not own one.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::Error;
use crate::os;
use crate::parent::core::lock;
use crate::pool::Pool;
use crate::worker::in_task;

/// The global pool of the process that first built one.
static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// The global pool of a process forked (by the user) from one that had
/// one: the pool in `GLOBAL` is then a copy whose workers belong to the
/// parent, and which refuses every call. A forked child builds its own,
/// kept here (leaked: like `GLOBAL`, it lives until the process exits), and
/// so does a child forked from that child. Only forked children take this
/// lock, never a worker (a task returns first), and only to read or write
/// the reference.
static FORKED: Mutex<Option<&'static Pool>> = Mutex::new(None);

/// One more than the fork generation (`os::fork_generation`) of the process
/// in which a thread is building the global pool; 0 if none is.
static BUILDING: AtomicU64 = AtomicU64::new(0);

/// The process-wide pool, built on first use with default settings (one
/// worker per available core, at most 1024). For library code that wants parallelism
/// without owning a pool; applications that care about settings build their
/// own with [`Pool::builder`].
///
/// It lives until the process exits; its workers and template exit with it.
/// It is shared by the whole process: [`close`](Pool::close) or
/// [`terminate`](Pool::terminate) on it ends it for every caller (later
/// calls return `Error::Closed`), so leave that to the process's exit.
/// A process forked from one that has a global pool gets a global pool of
/// its own at its first call (the parent's workers serve only the parent).
/// Threads that ask for it while it is being built wait for that one build
/// (and, if it fails, build in turn).
///
/// # Panics
/// If the pool cannot be built (see [`try_global`]), and when called inside
/// a task of a pool that was built before the global one existed (a task
/// cannot use a pool: the task then fails with `TaskPanicked`). Inside a task
/// of a pool built after it, it returns the task's copy, whose every call
/// returns `Error::WouldDeadlock`. It never blocks.
///
/// ```
/// let squares = shmpool::global().map(&[1u64, 2, 3], |x| x * x)?;
/// assert_eq!(squares, vec![1, 4, 9]);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn global() -> &'static Pool {
    match try_global() {
        Ok(pool) => pool,
        Err(e) => panic!("shmpool::global(): {e}"),
    }
}

/// [`global`], without panicking.
///
/// # Errors
/// `WouldDeadlock` inside a task when the global pool did not exist before
/// the task's pool was built; otherwise what [`Pool::new`] returns.
///
/// ```
/// let pool = shmpool::try_global()?;
/// assert_eq!(pool.apply(20u64, |x| x + 1)?, 21);
/// assert!(std::ptr::eq(pool, shmpool::global())); // built once
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn try_global() -> Result<&'static Pool, Error> {
    if let Some(pool) = GLOBAL.get() {
        // A task gets its copy (every call: `WouldDeadlock`). The owner's
        // check first: two plain loads on the common path.
        if pool.inner.in_owner_process() || in_task() {
            return Ok(pool);
        }
        // A copy from the process this one was forked from.
        return build_once(forked, |pool| {
            let pool: &'static Pool = Box::leak(Box::new(pool));
            *lock(&FORKED) = Some(pool);
            pool
        });
    }
    if in_task() {
        // Never `get_or_init` here: a worker forked while another thread of
        // the parent was inside it would wait forever for that thread.
        return Err(Error::WouldDeadlock {
            reason: "shmpool::global() inside a task: tasks run in worker processes",
        });
    }
    build_once(|| GLOBAL.get(), |pool| GLOBAL.get_or_init(|| pool))
}

/// This process's pool in `FORKED`, if it has built one.
fn forked() -> Option<&'static Pool> {
    (*lock(&FORKED)).filter(|pool| pool.inner.in_owner_process())
}

/// The pool `current` finds, or one built now and kept by `keep`. One
/// thread builds, holding no lock (a slow build never holds one, and a
/// process forked meanwhile finds none held); the others wait for its pool,
/// or build in turn if it failed. Builds racing each other forked a pool's
/// worth of processes per thread, and under a process limit all but one
/// failed.
fn build_once(
    current: impl Fn() -> Option<&'static Pool>,
    keep: impl FnOnce(Pool) -> &'static Pool,
) -> Result<&'static Pool, Error> {
    let mine = os::fork_generation().wrapping_add(1);
    loop {
        if let Some(pool) = current() {
            return Ok(pool);
        }
        // ORDERING: Acquire: pairs with the Release store that ends a
        // build, after which its pool is kept (or the build failed).
        let building = BUILDING.load(Acquire);
        if building == mine {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // Free, or a mark inherited from the process this one was forked
        // from, whose building thread does not exist here.
        // ORDERING: Acquire: as above; one thread of this process wins.
        if BUILDING
            .compare_exchange(building, mine, Acquire, Acquire)
            .is_err()
        {
            continue;
        }
        /// Ends the build, unwinding too: waiters then build in turn.
        struct Built;
        impl Drop for Built {
            fn drop(&mut self) {
                // ORDERING: Release: the pool is kept before a waiter sees
                // the end.
                BUILDING.store(0, Release);
            }
        }
        let _built = Built;
        // Looked at again now that this thread builds: another may have
        // kept its pool between the look above and the claim.
        if let Some(pool) = current() {
            return Ok(pool);
        }
        return Pool::builder().build().map(keep);
    }
}
