//! Waiting and waking: futexes, eventfds, `poll`, and the monotonic clock.
//!
//! All through `rustix`, safely: its futex calls take an `&AtomicU32`, its
//! eventfd reads and writes and its `poll` take borrowed descriptors, and
//! `clock_gettime` reads the vDSO. Workers call [`futex_wait`],
//! [`futex_wake`], [`eventfd_signal`] and [`monotonic_ns`]: they are
//! async-signal-safe (raw system calls, no allocation, no locks).

#![deny(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFlags, eventfd};
use rustix::io::Errno;
use rustix::thread::futex;
use rustix::time::{ClockId, Timespec, clock_gettime};

pub(crate) use rustix::event::PollFd;

/// How a futex wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken by a `FUTEX_WAKE` on the word: counted in what that wake
    /// returned.
    Woken,
    /// The word no longer held the expected value, or a signal interrupted
    /// the wait.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// `d` as a relative timespec.
fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Sleeps while `*word == expected`, for at most `timeout`.
///
/// The futex is shared (no `FUTEX_PRIVATE_FLAG`), so wakes from any process
/// that maps the same page reach it. The kernel returns 0 only to a sleeper
/// that a `FUTEX_WAKE` took off the word's queue ([`Wake::Woken`]), and
/// that wake counts it in what it returns; callers still re-check their
/// condition, since another thread may have taken what the wake announced.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    let ts = timeout.map(timespec);
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => Wake::Woken,
        Err(Errno::TIMEDOUT) => Wake::TimedOut,
        Err(_) => Wake::Changed,
    }
}

/// Wakes up to `n` sleepers on `word`, in any process, and returns how many
/// it woke (0 if the call failed).
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> u32 {
    futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32))
        .map_or(0, |woken| u32::try_from(woken).unwrap_or(u32::MAX))
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Adds one to an eventfd. Async-signal-safe: workers call it.
///
/// A full counter (`EAGAIN`) is ignored: the reader will see a non-zero count
/// anyway, which is all a signal means.
pub(crate) fn eventfd_signal(fd: impl AsFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd to zero and returns what it held (0 if it was empty).
pub(crate) fn eventfd_drain(fd: impl AsFd) -> u64 {
    let mut v = [0u8; 8];
    match rustix::io::read(fd, &mut v) {
        Ok(8) => u64::from_ne_bytes(v),
        _ => 0,
    }
}

/// A descriptor to [`poll`] for input (or hang-up).
pub(crate) fn watch(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::from_borrowed_fd(fd, PollFlags::IN)
}

/// Whether the last [`poll`] saw anything on `fd`: input, hang-up, error.
pub(crate) fn fired(fd: &PollFd<'_>) -> bool {
    !fd.revents().is_empty()
}

/// Whether the last [`poll`] saw input on `fd`.
pub(crate) fn has_input(fd: &PollFd<'_>) -> bool {
    fd.revents().contains(PollFlags::IN)
}

/// Whether the last [`poll`] saw the other end of `fd` hang up, or an error.
pub(crate) fn hung_up(fd: &PollFd<'_>) -> bool {
    fd.revents().intersects(PollFlags::HUP | PollFlags::ERR)
}

/// `poll(2)` with a millisecond timeout (negative: none). Returns the number
/// of ready descriptors; `EINTR` counts as zero.
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout_ms: i32) -> io::Result<usize> {
    let timeout = u64::try_from(timeout_ms)
        .ok()
        .map(|ms| timespec(Duration::from_millis(ms)));
    match rustix::event::poll(fds, timeout.as_ref()) {
        Ok(n) => Ok(n),
        Err(Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
pub(crate) fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_futex_wait_times_out_or_sees_a_change() {
        let word = AtomicU32::new(1);
        let t = Instant::now();
        let d = Duration::from_millis(20);
        assert_eq!(futex_wait(&word, 1, Some(d)), Wake::TimedOut);
        assert!(t.elapsed() >= d);
        assert_eq!(futex_wait(&word, 2, None), Wake::Changed, "not 2: at once");
        assert_eq!(futex_wake(&word, u32::MAX), 0, "nobody sleeps");
    }

    #[test]
    fn a_futex_wake_counts_the_sleepers_it_wakes() {
        let word = std::sync::Arc::new(AtomicU32::new(0));
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || futex_wait(&word, 0, Some(Duration::from_secs(10))))
        };
        // The sleeper may not be queued yet: wake until one is woken.
        let end = Instant::now() + Duration::from_secs(10);
        while futex_wake(&word, u32::MAX) == 0 {
            assert!(Instant::now() < end, "the sleeper never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sleeper.join().unwrap(), Wake::Woken);
    }

    #[test]
    fn an_eventfd_counts_and_polls() {
        let fd = new_eventfd().unwrap();
        assert_eq!(eventfd_drain(&fd), 0);
        let mut fds = [watch(fd.as_fd())];
        assert_eq!(poll(&mut fds, 0).unwrap(), 0);
        assert!(!fired(&fds[0]));
        eventfd_signal(&fd);
        eventfd_signal(&fd);
        let mut fds = [watch(fd.as_fd())];
        assert_eq!(poll(&mut fds, -1).unwrap(), 1);
        assert!(fired(&fds[0]) && has_input(&fds[0]) && !hung_up(&fds[0]));
        assert_eq!(eventfd_drain(&fd), 2);
        assert_eq!(eventfd_drain(&fd), 0);
        let (a, b) = (monotonic_ns(), monotonic_ns());
        assert!(a > 0 && b >= a);
    }
}
