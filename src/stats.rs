//! `Stats`: what a pool has done so far.

use std::time::Duration;

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
/// let mut out = vec![0.0f64; 1000];
/// pool.map_into(&shared, &mut out, |x| x * 2.0)?; // a Vec output: copied back
/// assert_eq!(pool.stats().bytes_staged, 16000);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs accepted: one per call of a map form (`map`, `map_with`, the
    /// numeric and ndarray forms, their async forms) with a non-empty input
    /// (two for a reduction of more than one range: the ranges, then their
    /// partials), per `apply` or `apply_async`, and per chunk of an `imap`
    /// stream.
    pub jobs_submitted: u64,
    /// Jobs that finished successfully.
    pub jobs_completed: u64,
    /// Jobs that finished with an error.
    pub jobs_failed: u64,
    /// Bytes copied between the caller's memory and shared memory on its
    /// behalf: inputs that did not already lie where workers read them (this
    /// pool's arena, or the shared heap), and the outputs of `map_into` and
    /// `map_in_place` that workers could not write in place, copied back
    /// once the job succeeded (`map_in_place` counts both copies).
    /// (`to_shm`, which copies on request, and by-value `apply` arguments and
    /// `map_with` contexts are not counted.)
    pub bytes_staged: u64,
    /// Jobs that failed with `Error::Cancelled` (counted in `jobs_failed`
    /// too).
    pub jobs_cancelled: u64,
    /// Workers replaced after they died (crashed, killed, timed out), or
    /// because they ran ranges of a job whose shared slot was found
    /// corrupt (`Error::Corrupted`).
    pub worker_restarts: u64,
    /// Workers replaced after running `max_tasks_per_worker` ranges.
    pub workers_recycled: u64,
    /// The size of the shared arena in bytes.
    pub arena_capacity: u64,
    /// Arena bytes currently allocated (live `ShmVec`s, jobs in flight).
    pub arena_in_use: u64,
    /// Where the time of the finished jobs went.
    pub profile: Profile,
}

/// Where the time of a pool's jobs went: to see whether a workload is bound
/// by copying, by waking workers, by the work itself, or by handing results
/// back. `dispatch`, `compute` and `completion` are summed over the jobs that
/// finished successfully (`jobs`); `staging` over every staged input.
///
/// Stamps come from `CLOCK_MONOTONIC`, which every process reads alike. The
/// runners' stamps live in shared memory; a job whose stamps are out of
/// order is left out of `jobs` and of the three phases it covers.
///
/// # Example
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let data = vec![1.5f64; 1 << 20];
/// pool.map(&data, |x| x.sqrt())?; // a Vec: staged first
/// let p = pool.stats().profile;
/// assert_eq!(p.jobs, 1);
/// assert!(p.staging > std::time::Duration::ZERO);
/// assert!(p.compute > std::time::Duration::ZERO);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Profile {
    /// Jobs whose dispatch, compute and completion are counted.
    pub jobs: u64,
    /// Copying inputs that were not in the arena into it (every staged
    /// input, `bytes_staged`; async jobs included).
    pub staging: Duration,
    /// From publishing a job to its first range being claimed: waking a
    /// worker (or the caller's own claim, with `caller_runs`).
    pub dispatch: Duration,
    /// From the first claim to the end of the last range: the ranges
    /// running, in parallel, and any wait between them.
    pub compute: Duration,
    /// From the end of the last range to the job's harvest: waking the
    /// caller (or the result thread) and handing the output back.
    pub completion: Duration,
}
