//! `Stats`: what a pool has done so far.

/// A snapshot of a pool's counters, from [`Pool::stats`](crate::Pool::stats).
///
/// # Example
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let data = vec![1.0f64; 1000];
/// pool.map(&data, |x| x + 1.0)?;          // a Vec: copied in once
/// let shared = pool.to_shm(&data)?;
/// pool.map(&shared, |x| x + 1.0)?;        // a ShmVec: read in place
/// let s = pool.stats();
/// assert_eq!(s.jobs_completed, 2);
/// assert_eq!(s.bytes_staged, 8000);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs accepted (one per `map`, `map_with`, `apply` and their async forms
    /// with a non-empty input).
    pub jobs_submitted: u64,
    /// Jobs that finished successfully.
    pub jobs_completed: u64,
    /// Jobs that finished with an error.
    pub jobs_failed: u64,
    /// Bytes of input copied into shared memory on the caller's behalf,
    /// because a `map` input did not already lie in this pool's arena.
    /// (`to_shm`, which copies on request, and by-value `apply` arguments and
    /// `map_with` contexts are not counted.)
    pub bytes_staged: u64,
    /// Jobs that failed with `Error::Cancelled` (counted in `jobs_failed`
    /// too).
    pub jobs_cancelled: u64,
    /// Workers replaced after they died (crashed, killed, timed out).
    pub worker_restarts: u64,
    /// Workers replaced after running `max_tasks_per_worker` ranges.
    pub workers_recycled: u64,
    /// The size of the shared arena in bytes.
    pub arena_capacity: u64,
    /// Arena bytes currently allocated (live `ShmVec`s, jobs in flight).
    pub arena_in_use: u64,
}
