//! The operating-system boundary: every system call the crate makes.
//!
//! Linux only. Typed wrappers come from `nix` where it has them; `futex`,
//! `pidfd_open` and `close_range` go through `libc::syscall`. Functions that a
//! forked worker calls (`futex_*`, `eventfd_signal`, `exit_now`) are
//! async-signal-safe: no allocation, no locks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, ftruncate};

/// Creates the anonymous shared-memory file that backs a pool's region.
///
/// # Errors
/// Fails when the kernel refuses the file or its size (`EMFILE`, `EFBIG`).
pub(crate) fn memfd(len: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(c"shmpool", MFdFlags::MFD_CLOEXEC)?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    ftruncate(&fd, len)?;
    Ok(fd)
}

/// Allocates the pages of `off..off + len` in the memfd, so that touching
/// them later can never raise `SIGBUS`.
///
/// # Errors
/// `ENOSPC` or `ENOMEM` when the memory is not available.
pub(crate) fn reserve(fd: &OwnedFd, off: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    loop {
        match fallocate(fd, FallocateFlags::empty(), off, len) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Unmaps a range this process inherited but does not use.
///
/// # Safety
/// No live reference may point into `addr..addr + len` in this process.
pub(crate) unsafe fn munmap(addr: usize, len: usize) {
    // SAFETY: the caller guarantees nothing in this process uses the range;
    // munmap of an unmapped range is harmless.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// How a futex wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, or the word no longer held the expected value.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, for at most `timeout`.
///
/// The futex is shared (no `FUTEX_PRIVATE_FLAG`), so wakes from any process
/// that maps the same page reach it. Spurious wake-ups are possible; callers
/// re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; a
    // relative timeout pointer is either null or points at a live timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 && Errno::last() == Errno::ETIMEDOUT {
        Wake::TimedOut
    } else {
        Wake::Changed
    }
}

/// Wakes up to `n` sleepers on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only reads the key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0u32,
        )
    };
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    Ok(fd.into())
}

/// Adds one to an eventfd. Async-signal-safe: workers call it.
///
/// A full counter (`EAGAIN`) is ignored: the reader will see a non-zero count
/// anyway, which is all a signal means.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; a bad fd only yields EBADF.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd to zero and returns what it held (0 if it was empty).
pub(crate) fn eventfd_drain(fd: &OwnedFd) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; the fd is non-blocking.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if r == 8 { v } else { 0 }
}

/// `poll(2)` with a millisecond timeout (-1: none). Returns the number of
/// ready descriptors; `EINTR` counts as zero.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r >= 0 {
        Ok(r as usize)
    } else if Errno::last() == Errno::EINTR {
        Ok(0)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A file descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `SIGKILL` to `pid`. Errors (the process is already gone) are ignored.
pub(crate) fn kill_now(pid: u32) {
    let _ = kill(Pid::from_raw(pid as libc::pid_t), Signal::SIGKILL);
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExitStatus {
    pub(crate) signal: Option<i32>,
    pub(crate) code: Option<i32>,
}

/// Reaps child `pid`. With `block == false`, returns `None` if it is still
/// running. A child that someone else already reaped (`ECHILD`) reports an
/// unknown status.
pub(crate) fn reap(pid: u32, block: bool) -> Option<ExitStatus> {
    let flags = if block {
        None
    } else {
        Some(WaitPidFlag::WNOHANG)
    };
    loop {
        return match waitpid(Pid::from_raw(pid as libc::pid_t), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus {
                signal: None,
                code: Some(code),
            }),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(ExitStatus {
                signal: Some(sig as i32),
                code: None,
            }),
            Ok(WaitStatus::StillAlive) => None,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => Some(ExitStatus {
                signal: None,
                code: None,
            }),
        };
    }
}

/// Total physical memory in bytes (0 if unknown).
pub(crate) fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}

/// The current process id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// Ends this process at once: no destructors, no atexit handlers, no stdio
/// flush. The only way a forked worker ever ends.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Prepares a freshly forked worker: it dies with the thread that forked it,
/// it ignores the terminal's Ctrl-C (the parent decides), and it unblocks
/// every signal the forking thread may have blocked.
///
/// Returns `false` if the parent is already gone.
pub(crate) fn worker_process_setup(parent: u32) -> bool {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's settings.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // The parent may have died between fork and prctl; then the death signal
    // was never armed for it. (A subreaper would be our parent now.)
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        return false;
    }
    // SAFETY: signal/sigprocmask only change this single-threaded process's
    // dispositions; the set is initialised by sigemptyset before use.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
    }
    true
}

/// Closes every inherited descriptor above stderr except `keep`, so that a
/// worker holds no pipe ends, sockets or other pools' files of its parent.
pub(crate) fn close_fds_except(keep: RawFd) {
    let close_range = |lo: u32, hi: u32| {
        if lo <= hi {
            // SAFETY: close_range only closes descriptors of this process.
            unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        }
    };
    let keep = keep.max(0) as u32;
    if keep >= 3 {
        close_range(3, keep - 1);
    }
    close_range(keep.max(2) + 1, u32::MAX);
}
