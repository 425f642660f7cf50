//! The crate's one error type.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Range;
use std::time::Duration;

/// Everything that can go wrong in a pool.
///
/// Variants name what happened and where: which index range, which worker,
/// which signal. The enum and its struct-like variants are
/// `#[non_exhaustive]`, so match them with `..`.
///
/// # Example
/// ```
/// use shmpool::{Error, Pool};
///
/// assert!(matches!(Pool::new(0), Err(Error::InvalidArgument { .. })));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An argument was out of range: zero workers, a length whose byte size
    /// overflows, a call made in the wrong state.
    #[non_exhaustive]
    InvalidArgument {
        /// What was wrong.
        reason: Cow<'static, str>,
    },
    /// The pool was closed (or terminated) and accepts no new work.
    Closed,
    /// The pool was terminated (or dropped) before the job finished.
    Terminated,
    /// A task panicked. The job's other ranges were skipped; the pool stays
    /// usable.
    ///
    /// ```
    /// use shmpool::{Error, Pool};
    ///
    /// let pool = Pool::new(2)?;
    /// let xs: Vec<u32> = (0..8).collect();
    /// let err = pool.map(&xs, |x| if x == 5 { panic!("bad input {x}") } else { x });
    /// match err {
    ///     Err(Error::TaskPanicked { message, range, .. }) => {
    ///         assert_eq!(message, "bad input 5");
    ///         assert!(range.contains(&5));
    ///     }
    ///     other => panic!("expected TaskPanicked, got {other:?}"),
    /// }
    /// assert_eq!(pool.map(&xs, |x| x * 2)?[7], 14); // the pool carries on
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[non_exhaustive]
    TaskPanicked {
        /// The panic message.
        message: String,
        /// The index range the worker was running when the task panicked.
        range: Range<usize>,
        /// Where the panic happened (`file:line:column`), when known.
        location: Option<String>,
    },
    /// A worker process died while running part of the job (a signal, an
    /// `abort`, an `exit`). The pool replaced it and stays usable.
    ///
    /// ```
    /// use shmpool::{Error, Pool};
    ///
    /// let pool = Pool::new(2)?;
    /// let err = pool.apply(0u32, |x| if x == 0 { std::process::abort() } else { x }).unwrap_err();
    /// assert!(matches!(err, Error::WorkerDied { signal: Some(6), .. })); // SIGABRT
    /// assert!(err.to_string().contains("was killed by SIGABRT"), "{err}");
    /// assert_eq!(pool.map(&[1u32, 2, 3], |x| x * 10)?, vec![10, 20, 30]); // fresh workers
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[non_exhaustive]
    WorkerDied {
        /// The process id of the worker that died; 0 when it died before
        /// the pool learned it (it was just starting when the process that
        /// forks the workers died, taking it along).
        pid: u32,
        /// The signal that killed it, if it was killed by a signal.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        exit_code: Option<i32>,
        /// The index range it was running, when the worker had recorded one.
        range: Option<Range<usize>>,
    },
    /// A worker process exceeded its memory limit
    /// ([`Builder::worker_memory_limit`](crate::Builder::worker_memory_limit)):
    /// an allocation failed and the worker aborted. The pool replaced it.
    #[non_exhaustive]
    MemoryLimit {
        /// The process id of the worker that died (0 as in `WorkerDied`).
        pid: u32,
        /// The limit, in bytes beyond what the worker mapped at start.
        limit: usize,
        /// The index range it was running, when the worker had recorded one.
        range: Option<Range<usize>>,
    },
    /// A task ran longer than the pool's
    /// [`task_timeout`](crate::Builder::task_timeout): its worker was killed
    /// (`SIGKILL`) and replaced, and the job failed. The range is not run
    /// again (it would overrun again); the pool stays usable.
    ///
    /// Not to be confused with [`WaitTimedOut`](Error::WaitTimedOut), where
    /// only the caller's wait ended and the job goes on.
    #[non_exhaustive]
    TaskTimedOut {
        /// The process id of the worker that was killed.
        pid: u32,
        /// The pool's task timeout: how long the range was allowed to run.
        after: Duration,
        /// The index range that overran, when the worker had recorded one
        /// (`None` for a worker that stood still between two ranges holding
        /// a claim it had not recorded: one stopped after claiming a range
        /// and before starting it, or after running it and before counting
        /// it).
        range: Option<Range<usize>>,
    },
    /// A caller's own wait ran out
    /// ([`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout)) before
    /// the job completed. Nothing was stopped: the job goes on, and the same
    /// `AsyncResult` can be waited on again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let mut slow = pool.apply_async(200u64, |ms| {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// })?;
    /// let err = slow.get_timeout(Duration::from_millis(1)).unwrap_err();
    /// assert!(matches!(err, shmpool::Error::WaitTimedOut { .. }));
    /// assert_eq!(slow.get()?, 200); // the job went on
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[non_exhaustive]
    WaitTimedOut {
        /// How long the caller waited.
        after: Duration,
    },
    /// A task wrote to the shared heap ([`SharedHeap`](crate::SharedHeap))
    /// outside its job's output, which workers see read-only (through a
    /// `static` that points into it, say, or a stray pointer in C code): a
    /// task's results travel back as its return values, never as writes
    /// into the parent's memory. The worker was replaced; the range
    /// is not run again, and the parent's data is unchanged.
    #[non_exhaustive]
    HeapWrite {
        /// The process id of the worker that tried (0 as in `WorkerDied`).
        pid: u32,
        /// The index range it was running, when the worker had recorded one.
        range: Option<Range<usize>>,
    },
    /// The job was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel),
    /// or its `AsyncResult` was dropped unfinished).
    Cancelled,
    /// The pool's initializer failed in a worker: it panicked, or the worker
    /// died in it (a signal, an `exit`, the memory limit, or a kill for
    /// blocking forever on a lock it inherited locked). The pool runs no
    /// tasks from then on: every job fails with this error.
    #[non_exhaustive]
    InitializerFailed {
        /// The panic message (and location), or how the worker died.
        message: String,
    },
    /// The shared-memory arena has no free block large enough, or the
    /// memory behind it is short: the kernel refused the pages, or they
    /// would not fit under the process's memory cgroup limit. Nothing was
    /// allocated; what was allocated before is untouched.
    #[non_exhaustive]
    OutOfSharedMemory {
        /// Bytes asked for.
        requested: usize,
        /// About the most that could be allocated at the time, in bytes:
        /// the largest free block of the arena, or less where a memory
        /// cgroup leaves less room.
        available: usize,
    },
    /// A worker left the shared control block in an impossible state (a
    /// job's completion counts that do not add up, a rewritten descriptor,
    /// an unknown state value). The job failed, returned only once no worker
    /// was left in it, so no worker writes its output afterwards; the
    /// workers that ran its ranges are replaced, and the pool stays usable.
    #[non_exhaustive]
    Corrupted {
        /// What was inconsistent.
        detail: &'static str,
    },
    /// The call would wait on something that can only happen after the call
    /// returns: using the pool from inside one of its own tasks, blocking on
    /// an unfinished result (or iterating an `imap` stream) from inside a
    /// completion callback or from another process, or `join` on the thread
    /// that has an unfinished `imap` stream of the pool. Also a job's error
    /// when one of its tasks blocked forever on a lock it inherited locked
    /// from the process that built the pool (a `static` pool whose task
    /// uses that pool, say): its worker was killed, and the range is not run
    /// again.
    #[non_exhaustive]
    WouldDeadlock {
        /// Which call, and why it would deadlock.
        reason: &'static str,
    },
    /// Another process of a distributed job failed: the verdict that every
    /// rank of an MPI job gets (from `shmpool-mpi`) when the collective
    /// operation failed on one of them. `message` is that rank's error, as
    /// its `Display` printed it (a task panic, a worker's death, no room in
    /// its arena); when several ranks failed, the lowest is named.
    #[non_exhaustive]
    Remote {
        /// The rank whose local part failed (the lowest, if several did).
        rank: usize,
        /// Its error, as text.
        message: String,
    },
    /// The operating system failed the pool: a system call (its error), a
    /// limit the pool ran into (the message names the limit and what to
    /// change), or the template process dying or stalling while it started
    /// the workers.
    Io(io::Error),
}

impl Error {
    /// An [`Error::Remote`]: rank `rank` of a distributed job failed with
    /// `message`. For crates that run pools in several processes and report
    /// one rank's failure to the others (`shmpool-mpi` does).
    ///
    /// ```
    /// let e = shmpool::Error::remote(2, "out of shared memory");
    /// assert!(matches!(e, shmpool::Error::Remote { rank: 2, .. }));
    /// assert_eq!(e.to_string(), "rank 2 failed: out of shared memory");
    /// ```
    pub fn remote(rank: usize, message: impl Into<String>) -> Self {
        Error::Remote {
            rank,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }
}

/// The name of a signal number, as `kill -l` would print it ("SIGSEGV").
pub(crate) fn signal_name(signal: i32) -> Cow<'static, str> {
    match crate::os::signal_name(signal) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("signal {signal}")),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
            Error::Closed => f.write_str("the pool is closed and accepts no new work"),
            Error::Terminated => f.write_str("the pool was terminated before the job finished"),
            Error::TaskPanicked {
                message,
                range,
                location,
            } => {
                write!(
                    f,
                    "task panicked on elements {}..{}: {message}",
                    range.start, range.end
                )?;
                if let Some(location) = location {
                    write!(f, " (at {location})")?;
                }
                Ok(())
            }
            Error::WorkerDied {
                pid,
                signal,
                exit_code,
                range,
            } => {
                write!(f, "{} ", WorkerName(*pid))?;
                match (signal, exit_code) {
                    (Some(s), _) => write!(f, "was killed by {}", signal_name(*s))?,
                    (None, Some(c)) => write!(f, "exited with code {c}")?,
                    (None, None) => f.write_str("died")?,
                }
                match range {
                    Some(r) => write!(f, " while running elements {}..{}", r.start, r.end),
                    None => f.write_str(" while taking part in the job"),
                }
            }
            Error::MemoryLimit { pid, limit, range } => {
                write!(
                    f,
                    "{} exceeded its memory limit of {limit} bytes",
                    WorkerName(*pid)
                )?;
                if let Some(r) = range {
                    write!(f, " while running elements {}..{}", r.start, r.end)?;
                }
                Ok(())
            }
            Error::InitializerFailed { message } => {
                write!(f, "the pool's initializer failed: {message}")
            }
            Error::TaskTimedOut { pid, after, range } => {
                write!(f, "task timed out after {after:?}")?;
                if let Some(r) = range {
                    write!(f, " on elements {}..{}", r.start, r.end)?;
                }
                write!(f, " ({} was killed)", WorkerName(*pid))
            }
            Error::WaitTimedOut { after } => {
                write!(f, "wait timed out after {after:?}; the job goes on")
            }
            Error::HeapWrite { pid, range } => {
                write!(
                    f,
                    "a task in {} wrote to the shared heap, which workers see read-only",
                    WorkerName(*pid)
                )?;
                if let Some(r) = range {
                    write!(f, " (elements {}..{})", r.start, r.end)?;
                }
                Ok(())
            }
            Error::Cancelled => f.write_str("the job was cancelled"),
            Error::OutOfSharedMemory {
                requested,
                available,
            } => write!(
                f,
                "out of shared memory: {requested} bytes requested, about {available} bytes available"
            ),
            Error::Corrupted { detail } => write!(f, "shared control block corrupted: {detail}"),
            Error::WouldDeadlock { reason } => write!(f, "operation would deadlock: {reason}"),
            Error::Remote { rank, message } => write!(f, "rank {rank} failed: {message}"),
            Error::Io(e) => write!(f, "operating system error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// A worker as an error names it: by its process id, which is 0 for one
/// that died before the pool learned it.
struct WorkerName(u32);

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("a worker process that was just starting"),
            pid => write!(f, "worker process {pid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_signal_and_range() {
        let e = Error::WorkerDied {
            pid: 42,
            signal: Some(crate::os::signo::SIGSEGV),
            exit_code: None,
            range: Some(3..9),
        };
        assert_eq!(
            e.to_string(),
            "worker process 42 was killed by SIGSEGV while running elements 3..9"
        );
        let e = Error::WorkerDied {
            pid: 0,
            signal: None,
            exit_code: None,
            range: None,
        };
        assert_eq!(
            e.to_string(),
            "a worker process that was just starting died while taking part in the job"
        );
        let e = Error::TaskPanicked {
            message: "boom".into(),
            range: 0..4,
            location: Some("src/x.rs:1:2".into()),
        };
        assert_eq!(
            e.to_string(),
            "task panicked on elements 0..4: boom (at src/x.rs:1:2)"
        );
    }

    #[test]
    fn the_two_timeouts_say_which_is_which() {
        let e = Error::TaskTimedOut {
            pid: 7,
            after: Duration::from_millis(100),
            range: Some(768..832),
        };
        assert_eq!(
            e.to_string(),
            "task timed out after 100ms on elements 768..832 (worker process 7 was killed)"
        );
        let e = Error::WaitTimedOut {
            after: Duration::from_millis(5),
        };
        assert_eq!(e.to_string(), "wait timed out after 5ms; the job goes on");
    }

    #[test]
    fn a_failed_initializer_is_not_called_a_panic_unless_it_was_one() {
        // The message says what happened: a panic's own message, or how the
        // worker died in the initializer (the supervisor's wording).
        let e = Error::InitializerFailed {
            message: "the worker exited with code 3 in the initializer".into(),
        };
        assert_eq!(
            e.to_string(),
            "the pool's initializer failed: the worker exited with code 3 in the initializer"
        );
        assert!(!e.to_string().contains("panicked"), "{e}");
    }

    #[test]
    fn an_io_error_does_not_claim_a_system_call() {
        // Not every `Io` is a system call's: the template's death is one.
        let e = Error::Io(io::Error::other(
            "the template process died while starting the workers",
        ));
        assert_eq!(
            e.to_string(),
            "operating system error: the template process died while starting the workers"
        );
    }

    #[test]
    fn remote_names_the_rank() {
        use std::error::Error as _;
        let e = Error::remote(3, "task panicked on elements 0..4: boom");
        assert_eq!(
            e.to_string(),
            "rank 3 failed: task panicked on elements 0..4: boom"
        );
        assert!(e.source().is_none());
    }

    #[test]
    fn io_error_is_the_source() {
        use std::error::Error as _;
        let e = Error::from(io::Error::from_raw_os_error(crate::os::errno::ENOMEM));
        assert!(e.source().is_some());
        assert!(Error::Closed.source().is_none());
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(1000), "signal 1000");
    }
}
