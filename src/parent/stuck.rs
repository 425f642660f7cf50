//! Workers blocked forever: a task (or an initializer) asleep on a lock that
//! it inherited locked, which nothing can ever unlock.
//!
//! A worker is a forked copy of a single-threaded template, itself forked
//! from the thread that built the pool. A lock that another parent thread
//! held at that moment (a `LazyLock` or `OnceLock` whose initialiser was
//! building the pool, a `Mutex` held across `Pool::new`) is locked in every
//! worker, and its holder does not exist there. A task that takes it sleeps
//! forever: the classic case is a pool in a `static LazyLock<Pool>` whose
//! task uses the pool.
//!
//! Such a sleep is recognisable from outside. A *private* futex
//! (`FUTEX_PRIVATE_FLAG`, which std's locks and glibc's use) can only be
//! woken by a thread of the same address space; a worker that has one
//! thread (`Threads: 1`) and sleeps in a private futex wait *without a
//! timeout* can therefore never wake up (short of a signal handler, which
//! tasks do not install to release locks). The supervisor reads
//! `/proc/<pid>/syscall` and `/proc/<pid>/status` of a worker that has been
//! in the same range for a whole tick (then at most once a second while it
//! is found busy); two looks at least `CONFIRM_AFTER`
//! apart that agree (same futex word, asleep, no voluntary context switch in
//! between, so it never woke) make the verdict. The worker is then killed,
//! and its job fails with `Error::WouldDeadlock` (not retried: it would
//! block again); in an initializer, the pool is broken with that message.
//!
//! Where `/proc` cannot be read (not mounted, or ptrace access denied by a
//! security module), nothing is detected and `Builder::task_timeout`
//! remains the way out.

use std::fs;
use std::time::{Duration, Instant};

/// What a worker was doing when it was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    /// Running the range `start..end` of the job in `slot`.
    Range { slot: u32, start: u64, end: u64 },
    /// Running the pool's initializer.
    Init,
}

/// The wait a worker was found in: a single-threaded process asleep in a
/// private futex wait without a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Look {
    /// The futex word's address (in the worker).
    addr: u64,
    /// `voluntary_ctxt_switches`: unchanged between two looks means it
    /// never woke in between.
    switches: u64,
}

/// Two agreeing looks must be at least this far apart.
const CONFIRM_AFTER: Duration = Duration::from_millis(100);
/// After a look that found the worker not blocked, the next look at the
/// same range waits this long: a long range costs one read of /proc a
/// second, not one a tick.
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// How often the supervisor looks while any worker runs a range or an
/// initializer: a worker blocked forever is found within about two ticks.
pub(crate) const WATCH_TICK: Duration = Duration::from_millis(250);

/// The reason of the `WouldDeadlock` a task gets.
pub(crate) const TASK_REASON: &str = "a task blocked forever on a lock it inherited locked from the \
    process that built the pool (a LazyLock or OnceLock that was being initialised, or a Mutex \
    another thread held, at Pool::new: for example a static pool whose task uses that pool); its \
    worker was killed";

/// The message of the `InitializerFailed` a pool gets.
pub(crate) const INIT_REASON: &str = "the initializer blocked forever on a lock it inherited locked \
    from the process that built the pool (a LazyLock or OnceLock that was being initialised, or a \
    Mutex another thread held, at Pool::new); its worker was killed";

/// One worker's watch.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    subject: Option<Subject>,
    /// The last look, if it found the worker blocked forever, and when.
    look: Option<(Look, Instant)>,
    /// No look before this (the last one found the worker busy).
    quiet_until: Option<Instant>,
}

impl Watch {
    /// One supervisor round: worker process `pid` is now doing `subject`.
    /// Returns true once it is known to be blocked forever in it.
    pub(crate) fn step(&mut self, subject: Option<Subject>, pid: u32) -> bool {
        if subject != self.subject || subject.is_none() {
            // Something new (or nothing): look from the next round on, so
            // that short ranges never cost a read of /proc.
            *self = Watch {
                subject,
                ..Watch::default()
            };
            return false;
        }
        if self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let Some(now) = blocked_forever(pid) else {
            self.look = None;
            self.quiet_until = Instant::now().checked_add(LOOK_AGAIN_AFTER);
            return false;
        };
        self.quiet_until = None;
        match self.look {
            Some((earlier, at)) if earlier == now && at.elapsed() >= CONFIRM_AFTER => true,
            Some((earlier, _)) if earlier == now => false,
            _ => {
                self.look = Some((now, Instant::now()));
                false
            }
        }
    }
}

/// `Some` if process `pid` has one thread and sleeps in a private futex
/// wait without a timeout: a wait nothing can end.
fn blocked_forever(pid: u32) -> Option<Look> {
    let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let addr = private_untimed_futex_wait(&syscall)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (sleeping, threads, switches) = parse_status(&status)?;
    (sleeping && threads == 1).then_some(Look { addr, switches })
}

// The futex operations, from the kernel's ABI (`linux/futex.h`); not all of
// them are in every version of `libc`.
const FUTEX_WAIT: u64 = 0;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
const FUTEX_LOCK_PI2: u64 = 13;
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;

/// The futex word's address if `/proc/<pid>/syscall` shows a private futex
/// wait without a timeout (`FUTEX_WAIT`, `FUTEX_WAIT_BITSET`,
/// `FUTEX_LOCK_PI`, `FUTEX_LOCK_PI2`, `FUTEX_WAIT_REQUEUE_PI`).
fn private_untimed_futex_wait(syscall: &str) -> Option<u64> {
    // "202 0x55d1c0 0x89 0x5 0x0 0x0 0xffffffff 0x7ffd... 0x7f...": the
    // number, six arguments, the stack and program counters. A process
    // that is running reads "running"; one not in a system call, "-1 ...".
    let mut fields = syscall.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr != crate::os::SYS_FUTEX {
        return None;
    }
    let mut args = [0u64; 4];
    for a in &mut args {
        *a = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    let [addr, op, _value, timeout] = args;
    let private = op & FUTEX_PRIVATE_FLAG != 0;
    let cmd = op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    let waits = matches!(
        cmd,
        FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2 | FUTEX_WAIT_REQUEUE_PI
    );
    (private && waits && timeout == 0).then_some(addr)
}

/// `(asleep, threads, voluntary context switches)` from
/// `/proc/<pid>/status`.
fn parse_status(status: &str) -> Option<(bool, u64, u64)> {
    let (mut state, mut threads, mut switches) = (None, None, None);
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" => state = value.chars().next(),
            "Threads" => threads = value.parse().ok(),
            "voluntary_ctxt_switches" => switches = value.parse().ok(),
            _ => {}
        }
    }
    Some((state? == 'S', threads?, switches?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_untimed_futex_wait_is_recognised() {
        let nr = crate::os::SYS_FUTEX;
        let wait = format!("{nr} 0x55d1c0 0x89 0x5 0x0 0x0 0xffffffff 0x7ffd1234 0x7f001234\n");
        assert_eq!(private_untimed_futex_wait(&wait), Some(0x55d1c0));
        let plain = format!("{nr} 0x1000 0x80 0x2 0x0 0x0 0x0 0x7ffd1234 0x7f001234");
        assert_eq!(private_untimed_futex_wait(&plain), Some(0x1000));
        // With a timeout, shared, a wake, another system call, running.
        let timed = format!("{nr} 0x1000 0x89 0x2 0x7ffd0000 0x0 0x0 0x7ffd1234 0x7f001234");
        let shared = format!("{nr} 0x1000 0x0 0x2 0x0 0x0 0x0 0x7ffd1234 0x7f001234");
        let wake = format!("{nr} 0x1000 0x81 0x1 0x0 0x0 0x0 0x7ffd1234 0x7f001234");
        let read = format!(
            "{} 0x3 0x1000 0x10 0x0 0x0 0x0 0x7ffd1234 0x7f001234",
            crate::os::SYS_READ
        );
        for s in [
            timed,
            shared,
            wake,
            read,
            "running".into(),
            "-1 0x7ffd 0x7f00".into(),
            String::new(),
        ] {
            assert_eq!(private_untimed_futex_wait(&s), None, "{s}");
        }
    }

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tw\nState:\tS (sleeping)\nThreads:\t1\nvoluntary_ctxt_switches:\t7\n\
                      nonvoluntary_ctxt_switches:\t2\n";
        assert_eq!(parse_status(status), Some((true, 1, 7)));
        let running = "State:\tR (running)\nThreads:\t3\nvoluntary_ctxt_switches:\t0\n";
        assert_eq!(parse_status(running), Some((false, 3, 0)));
        assert_eq!(parse_status("State:\tS (sleeping)\n"), None);
    }

    #[test]
    fn a_thread_of_this_process_is_never_blocked_forever() {
        // This test process has several threads, and none of them is in
        // such a wait while it runs this.
        assert_eq!(blocked_forever(std::process::id()), None);
    }
}
