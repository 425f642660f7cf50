//! `global()`: a lazily built pool for library code that must not own one.

use std::sync::OnceLock;

use crate::error::Error;
use crate::pool::Pool;
use crate::worker::in_task;

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// The process-wide pool, built on first use with default settings (one
/// worker per available core). For library code that wants parallelism
/// without owning a pool; applications that care about settings build their
/// own with [`Pool::builder`].
///
/// It lives until the process exits; its workers and template exit with it.
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
        return Ok(pool);
    }
    if in_task() {
        // Never `get_or_init` here: a worker forked while another thread of
        // the parent was inside it would wait forever for that thread.
        return Err(Error::WouldDeadlock {
            reason: "shmpool::global() inside a task: tasks run in worker processes",
        });
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Built outside the OnceLock, so a slow build never holds its lock; if
    // another thread won the race, this pool is dropped (terminated).
    let pool = Pool::new(workers)?;
    Ok(GLOBAL.get_or_init(|| pool))
}
