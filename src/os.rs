//! The operating-system boundary: every system call the crate makes.
//!
//! Linux only. Typed wrappers come from `nix` where it has them; `futex`,
//! `pidfd_open` and `close_range` go through `libc::syscall`. Functions that a
//! forked worker calls (`futex_*`, `eventfd_signal`, `exit_now`) are
//! async-signal-safe: no allocation, no locks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{Signal, kill};
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

/// Gives back the pages of `off..off + len` of the memfd (the part of a
/// failed [`populate`] that did get pages). Best effort.
pub(crate) fn punch(fd: &OwnedFd, off: u64, len: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return;
    };
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    while fallocate(fd, flags, off, len) == Err(Errno::EINTR) {}
}

/// The most bytes one [`populate`] call faults in: the call holds the
/// process's `mmap_lock` for reading while it runs, which a `fork` or an
/// `munmap` in another thread waits for.
const POPULATE_STEP: usize = 32 << 20;

/// Allocates the pages of `addr..addr + len`, a range of this process's
/// shared mapping, by faulting them in writable (`MADV_POPULATE_WRITE`,
/// Linux 5.14). Unlike `fallocate` on the file, the faults go through the
/// mapping, so its `MADV_HUGEPAGE` advice applies: with `shmem_enabled`
/// at `advise`, the kernel gives it huge pages, where `fallocate` (which
/// has no mapping to consult) gives small ones. The pages stay in the file,
/// so touching them later cannot raise `SIGBUS`.
///
/// # Errors
/// The kernel's: `EINVAL` where it lacks `MADV_POPULATE_WRITE`, `EPERM` or
/// `ENOSYS` under a filter, `ENOMEM` or `EFAULT` (the fault would have
/// raised `SIGBUS`) when memory runs out. Pages faulted in before the error
/// stay allocated (`fallocate` would have given them back: see [`punch`]).
///
/// # Safety
/// `addr..addr + len` lies in a shared, writable mapping of this process.
/// Populating writes nothing, but a private mapping would get private
/// copies.
pub(crate) unsafe fn populate(addr: *mut u8, len: usize) -> io::Result<()> {
    let start = addr as usize & !(page_size() - 1);
    let end = (addr as usize).saturating_add(len);
    let mut at = start;
    while at < end {
        let step = (end - at).min(POPULATE_STEP);
        // SAFETY: the caller's contract (rounding down to the page stays in
        // the mapping, which starts on a page); madvise reads and writes no
        // memory of ours, it only faults pages of the range in.
        let r = unsafe { libc::madvise(at as *mut libc::c_void, step, libc::MADV_POPULATE_WRITE) };
        if r == 0 {
            at += step;
            continue;
        }
        match Errno::last() {
            Errno::EINTR => {}
            e => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether the kernel gives shared memory huge pages only where a mapping
/// asks for them (`shmem_enabled` at `advise`): the one setting under which
/// faulting the arena in through its mapping ([`populate`]) gets huge pages
/// that `fallocate` does not. At `always`, `within_size` or `force` both
/// get them, at `never` (the kernel's default) or `deny` neither. Only the
/// top-level setting counts: the per-size `hugepages-*kB/shmem_enabled`
/// apply to anonymous shared mappings, not to a memfd. Read once.
pub(crate) fn shmem_huge_on_advice() -> bool {
    static ADVISE: OnceLock<bool> = OnceLock::new();
    *ADVISE.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .is_ok_and(|s| on_advice(&s))
    })
}

/// Whether a `shmem_enabled` setting, such as
/// `always within_size advise [never] deny force`, selects `advise`.
fn on_advice(setting: &str) -> bool {
    setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        == Some("advise")
}

/// The page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
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

/// The size in bytes of the largest data or unified cache of CPU 0, from
/// sysfs (`glibc`'s `sysconf` reports the host's, not the guest's, under some
/// hypervisors: 320 MiB for a 32 MiB L3 here).
pub(crate) fn largest_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|entry| {
        let path = entry.ok()?.path();
        let kind = std::fs::read_to_string(path.join("type")).ok()?;
        if kind.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(&std::fs::read_to_string(path.join("size")).ok()?)
    })
    .max()
}

/// Parses a sysfs cache size: `32768K`, `1M`, `512`.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The current process id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// Forks this process has been through: 0 in the process that first called
/// `fork_generation`, one more in each child forked (through libc's `fork`)
/// since. A pool compares it with the value it was built with to tell
/// whether it is still in the process that owns it, without a `getpid`
/// system call on every job (it cost 330 ns here, a sixth of an `apply`).
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function as a child-side fork handler;
        // it only bumps an atomic, which is async-signal-safe.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    fork_generation_registered()
}

/// [`fork_generation`] without the registration check: for hot paths that
/// only run once a region exists (creating one registered the handler).
/// A plain load, not an atomic one, so that a loop indexing a `ShmVec` can
/// check it once rather than on every element (an atomic load each time
/// kept such loops from being vectorised: 1.3-1.6x slower).
#[inline]
pub(crate) fn fork_generation_registered() -> u64 {
    // SAFETY: `FORKS` is written only by `forked`, in a child process right
    // after `fork`, while that process has a single thread; every other
    // thread of any process starts after that write (thread creation
    // orders it), so no read races with it.
    unsafe { *FORKS.0.get() }
}

/// The fork generation of this process (see `fork_generation`).
struct Generation(std::cell::UnsafeCell<u64>);

// SAFETY: written only in a freshly forked child before it has a second
// thread (see `fork_generation_registered`), so shared reads never race.
unsafe impl Sync for Generation {}

static FORKS: Generation = Generation(std::cell::UnsafeCell::new(0));

extern "C" fn forked() {
    // SAFETY: runs in the child right after `fork`, where this is the only
    // thread (see `fork_generation_registered`).
    unsafe { *FORKS.0.get() += 1 };
}

/// Ends this process at once: no destructors, no atexit handlers, no stdio
/// flush. The only way a forked worker ever ends.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Prepares a freshly forked worker: it dies with the thread that forked it,
/// it survives the terminal's Ctrl-C (the parent decides), and it unblocks
/// every signal the forking thread may have blocked.
///
/// Ctrl-C is caught by a handler that does nothing, not ignored: an ignored
/// signal stays ignored across `exec`, so a program a task started would
/// survive Ctrl-C, orphaned once the pool is gone. A caught signal reverts
/// to its default in the new program. `SA_RESTART` restarts most system
/// calls it interrupts in the worker; the few the kernel never restarts
/// (`nanosleep`, `poll`, ...) return `EINTR`, which the standard library's
/// sleeps and waits retry.
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
    // SAFETY: sigaction/sigprocmask only change this single-threaded
    // process's dispositions; the structures are zeroed and their sets
    // initialised by sigemptyset before use; the handler does nothing.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGINT, &act, ptr::null_mut());
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
    }
    true
}

/// Arms a one-shot `SIGALRM` for this process in `after` (`Duration::ZERO`
/// disarms it), with the signal's default action: the process ends, killed
/// by `SIGALRM`. The template uses it as a watchdog around the one call that
/// may block on a lock inherited from the parent (see `install_worker_panic_hook`).
pub(crate) fn alarm_in(after: Duration) {
    let value = libc::timeval {
        tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: after.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    // SAFETY: signal and setitimer only change this process's disposition
    // and its real-time timer; the itimerval is live for the call.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::setitimer(libc::ITIMER_REAL, &timer, ptr::null_mut());
    }
}

/// A signal handler that does nothing: the signal is caught (and so reset
/// to its default by `exec`), not ignored.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// Closes every inherited descriptor above stderr except those in `keep`,
/// so that a worker holds no pipe ends, sockets or other pools' files of its
/// parent. Allocation-free: a freshly forked child calls it.
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let close_range = |lo: u32, hi: u32| {
        if lo <= hi {
            // SAFETY: close_range only closes descriptors of this process.
            unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        }
    };
    let mut lo = 3u32;
    loop {
        // The smallest kept descriptor at or above `lo`.
        let next = keep
            .iter()
            .filter_map(|&k| u32::try_from(k).ok())
            .filter(|&k| k >= lo)
            .min();
        match next {
            Some(k) => {
                if k > lo {
                    close_range(lo, k - 1);
                }
                lo = k + 1;
            }
            None => {
                close_range(lo, u32::MAX);
                return;
            }
        }
    }
}

/// Sends `SIGKILL` to the process behind `pidfd`. Unlike `kill`, it can never
/// reach a stranger that recycled the pid. Errors (already gone) are ignored.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null
    // siginfo and flags; a stale descriptor only yields ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
}

/// Whether the process behind `pidfd` has exited (it may be a zombie).
pub(crate) fn pidfd_exited(pidfd: &OwnedFd, timeout_ms: i32) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    matches!(poll(&mut fds, timeout_ms), Ok(n) if n > 0)
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets: each
/// `send` arrives as one message, and a closed end reads as end of file.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into a live array of two.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created both descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A message between the supervisor and the template: fixed size, plain
/// integers.
pub(crate) type Message = [u64; 3];

/// Sends one message on a seqpacket socket, with a descriptor attached if
/// `fd` is given (`SCM_RIGHTS`). With `dont_wait`, a full socket buffer is
/// `WouldBlock` instead of a wait.
pub(crate) fn send_message(
    sock: RawFd,
    msg: &Message,
    fd: Option<RawFd>,
    dont_wait: bool,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: size_of::<Message>(),
    };
    // Room for one cmsghdr carrying one descriptor, suitably aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C struct; zero is a valid empty value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        debug_assert!(space <= size_of_val(&control));
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer is large enough for one header with one
        // descriptor (checked above), so CMSG_FIRSTHDR is non-null and the
        // header and data it points at lie inside `control`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            libc::CMSG_DATA(c).cast::<RawFd>().write_unaligned(fd);
        }
    }
    loop {
        let flags = libc::MSG_NOSIGNAL | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `hdr` points at a live iovec and control buffer.
        let r = unsafe { libc::sendmsg(sock, &hdr, flags) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What came with a received message besides its words.
#[derive(Debug)]
pub(crate) enum Attached {
    /// No descriptor was sent.
    Nothing,
    /// The descriptor sent with it, now ours.
    Fd(OwnedFd),
    /// A descriptor was sent but the kernel could not install it here
    /// (`MSG_CTRUNC`): this process is at its descriptor limit (`EMFILE`), or
    /// the system at its own (`ENFILE`). The words arrived intact.
    Lost,
}

/// Receives one message and the descriptor attached to it, if any. `Ok(None)`
/// means the other end is closed; with `dont_wait`, an empty queue is
/// `WouldBlock`.
pub(crate) fn recv_message(
    sock: RawFd,
    dont_wait: bool,
) -> io::Result<Option<(Message, Attached)>> {
    let mut msg: Message = [0; 3];
    let mut iov = libc::iovec {
        iov_base: msg.as_mut_ptr().cast(),
        iov_len: size_of::<Message>(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C struct; zero is a valid empty value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = size_of_val(&control) as _;
    let n = loop {
        let flags = libc::MSG_CMSG_CLOEXEC | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `hdr` points at a live iovec and control buffer.
        let r = unsafe { libc::recvmsg(sock, &mut hdr, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut attached = Attached::Nothing;
    // SAFETY: the kernel filled `control` and set `msg_controllen`; the CMSG
    // macros walk only within it. Each SCM_RIGHTS descriptor is new and ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = libc::CMSG_DATA(c).cast::<RawFd>().read_unaligned();
                attached = Attached::Fd(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    // The control buffer has room for the one descriptor ever sent, so a
    // truncation means the kernel could not give it a number here (it
    // closed it). A descriptor that did arrive is still ours.
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 && matches!(attached, Attached::Nothing) {
        attached = Attached::Lost;
    }
    if n == 0 {
        return Ok(None);
    }
    if n != size_of::<Message>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a short message from the template process",
        ));
    }
    Ok(Some((msg, attached)))
}

/// Whether this process can open one more descriptor now: `Err(EMFILE)`
/// (or `ENFILE`) if not. Checked before a worker is asked for, whose pidfd
/// the kernel would otherwise have to drop on arrival.
pub(crate) fn descriptor_available(any: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor for an open one, which
    // is closed at once below; it touches nothing else.
    let fd = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is ours alone.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reaps the process behind `pidfd` if it has exited and is (now) our child:
/// a worker orphaned by its template is re-parented to us when we are a
/// subreaper or PID 1. Anything else (`ECHILD`) is ignored.
pub(crate) fn reap_pidfd(pidfd: &OwnedFd) {
    // SAFETY: siginfo_t is a plain C struct; zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD takes a descriptor and writes into a live
    // siginfo_t; WNOHANG never blocks.
    unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
}

/// Decodes a raw `waitpid` status.
pub(crate) fn decode_status(raw: i32) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus {
            signal: Some(libc::WTERMSIG(raw)),
            code: None,
        }
    } else if libc::WIFEXITED(raw) {
        ExitStatus {
            signal: None,
            code: Some(libc::WEXITSTATUS(raw)),
        }
    } else {
        ExitStatus {
            signal: None,
            code: None,
        }
    }
}

/// Blocks until child `pid` ends and returns its raw status (`None` if it is
/// not our child any more).
pub(crate) fn wait_raw(pid: u32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes into a live int.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r == pid as libc::pid_t {
            return Some(status);
        }
        if r == -1 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
}

/// Caps this process's address space at what it maps now plus `extra` bytes
/// (`RLIMIT_AS`), never above the limit it already has. Returns the cap, or
/// `None` if it could not be set.
///
/// What it maps now comes from `/proc/self/statm`, or, where `/proc` is not
/// mounted, from [`probe_mapped_bytes`]. Only for a single-threaded process
/// (a freshly forked worker): the probe lowers the limit for a moment.
pub(crate) fn limit_address_space(extra: usize) -> Option<u64> {
    let now = match mapped_bytes() {
        Some(now) => now,
        None => probe_mapped_bytes()?,
    };
    let old = get_address_limit()?;
    let cap = now.saturating_add(extra as u64).min(old.rlim_cur);
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setrlimit reads a live rlimit.
    (unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } == 0).then_some(cap)
}

fn get_address_limit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live rlimit.
    (unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0).then_some(lim)
}

/// The most pieces [`probe_mapped_bytes`] holds at once: at most two per
/// power of two from 64 TiB down to a page.
const PROBE_PIECES: usize = 96;

/// The size of this process's address space, found without `/proc`: under
/// an `RLIMIT_AS` of `L` bytes the kernel lets a process map exactly `L`
/// minus what it maps. So it sets the soft limit to `L` (unless it is lower
/// already), maps inaccessible, unreserved pieces (`PROT_NONE`,
/// `MAP_NORESERVE`: no memory, no commit charge), halving their size each
/// time the limit refuses one, down to a page, unmaps them and puts the
/// limit back. No allocation: a freshly forked worker calls it.
///
/// Only for a single-threaded process: while it runs, the process can map
/// nothing else.
pub(crate) fn probe_mapped_bytes() -> Option<u64> {
    let old = get_address_limit()?;
    let page = page_size() as u64;
    // 64 TiB: far more than anything a process maps, and within the
    // 128 TiB of a 47-bit address space, so the pieces find room.
    let ceiling = old.rlim_cur.min(1 << 46);
    let probe = libc::rlimit {
        rlim_cur: ceiling,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads a live rlimit; the soft limit only goes down.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &probe) } != 0 {
        return None;
    }
    let mut pieces = [(ptr::null_mut::<libc::c_void>(), 0usize); PROBE_PIECES];
    let mut held = 0;
    let mut free = 0u64;
    let mut size = (1u64 << 46).min(ceiling.next_power_of_two());
    while size >= page && held < PROBE_PIECES {
        // SAFETY: a new private anonymous mapping that nothing can touch
        // (PROT_NONE) at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            size /= 2;
        } else {
            pieces[held] = (p, size as usize);
            held += 1;
            free += size;
        }
    }
    for &(p, len) in &pieces[..held] {
        // SAFETY: each piece was mapped above and nothing uses it.
        unsafe { libc::munmap(p, len) };
    }
    // SAFETY: setrlimit reads a live rlimit; it restores the old soft limit
    // (the hard limit never changed).
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &old) };
    Some(ceiling.saturating_sub(free))
}

/// Whether `bytes` more can still be mapped under this process's
/// `RLIMIT_AS`: maps that much, inaccessible and unreserved, and unmaps it.
/// Async-signal-safe (the worker's `SIGABRT` handler calls it).
pub(crate) fn can_map(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes.max(1)) else {
        return false;
    };
    // SAFETY: a new private anonymous mapping that nothing can touch, at an
    // address of the kernel's choosing, unmapped at once.
    unsafe {
        let p = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(p, len);
    }
    true
}

/// The size of this process's address space, from `/proc/self/statm`, read
/// with raw system calls: no allocation, async-signal-safe (a freshly forked
/// worker calls it). `None` without `/proc`.
pub(crate) fn mapped_bytes() -> Option<u64> {
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 128];
    // SAFETY: reads at most `buf.len()` bytes into `buf`; the fd is ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    let pages = buf[..n as usize]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .try_fold(0u64, |acc, &b| {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })?;
    pages.checked_mul(page_size() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("12Q"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    /// Bytes of a file that have pages (for tests).
    pub(crate) fn allocated_bytes(fd: &OwnedFd) -> u64 {
        // SAFETY: fstat writes only the struct it is given; the fd is open.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
            st
        };
        st.st_blocks as u64 * 512
    }

    #[test]
    fn a_failed_populate_keeps_its_pages_until_punched() {
        let fd = memfd(4 << 20).unwrap();
        let blocks = || allocated_bytes(&fd);
        let len = 8usize << 20;
        // SAFETY: a new shared mapping of our own memfd, twice its size: the
        // second half is past the end of the file.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the range is that shared, writable mapping.
        match unsafe { populate(addr.cast(), len) } {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("this kernel has no MADV_POPULATE_WRITE");
            }
            Err(e) => {
                // Past the end of the file, a touch would raise SIGBUS.
                assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "{e}");
                assert!(blocks() >= 4 << 20, "the first half kept its pages");
                punch(&fd, 0, len as u64);
                assert_eq!(blocks(), 0, "punched back");
            }
            Ok(()) => panic!("populated past the end of the file"),
        }
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(addr, len) };
    }

    #[test]
    fn only_advise_counts_as_huge_pages_on_advice() {
        assert!(on_advice("always within_size [advise] never deny force\n"));
        for other in ["always", "within_size", "never", "deny", "force"] {
            let s =
                "always within_size advise never deny force".replace(other, &format!("[{other}]"));
            assert!(!on_advice(&s), "{s}");
        }
        assert!(!on_advice(""));
        assert!(!on_advice("advise"), "no choice selected");
    }
}
