//! `global()`: a lazily built pool for library code that must not own one.

use std::sync::{Mutex, OnceLock};

use crate::error::Error;
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
/// lock, never a worker (a task returns first); held across the build, so
/// that two threads of a child build one pool, not two. (A process forked
/// while another of its parent's threads held it, building, would find it
/// held forever, as it would find `GLOBAL`'s own lock in `get_or_init`.)
static FORKED: Mutex<Option<&'static Pool>> = Mutex::new(None);

/// The process-wide pool, built on first use with default settings (one
/// worker per available core). For library code that wants parallelism
/// without owning a pool; applications that care about settings build their
/// own with [`Pool::builder`].
///
/// It lives until the process exits; its workers and template exit with it.
/// A process forked from one that has a global pool gets a global pool of
/// its own at its first call (the parent's workers serve only the parent).
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
        // A task gets its copy (every call: `WouldDeadlock`).
        if in_task() || pool.inner.in_owner_process() {
            return Ok(pool);
        }
        return forked_global();
    }
    if in_task() {
        // Never `get_or_init` here: a worker forked while another thread of
        // the parent was inside it would wait forever for that thread.
        return Err(Error::WouldDeadlock {
            reason: "shmpool::global() inside a task: tasks run in worker processes",
        });
    }
    // Built outside the OnceLock, so a slow build never holds its lock; if
    // another thread won the race, this pool is dropped (terminated).
    let pool = Pool::new(default_workers())?;
    Ok(GLOBAL.get_or_init(|| pool))
}

/// The global pool of a process forked from one that has one (see
/// `FORKED`): built at the first call in this process.
fn forked_global() -> Result<&'static Pool, Error> {
    let mut forked = lock(&FORKED);
    match *forked {
        Some(pool) if pool.inner.in_owner_process() => Ok(pool),
        // None yet, or the one of the process this one was forked from (a
        // copy, never dropped: dropping it would do nothing anyway).
        _ => {
            let pool: &'static Pool = Box::leak(Box::new(Pool::new(default_workers())?));
            *forked = Some(pool);
            Ok(pool)
        }
    }
}

/// One worker per available core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
