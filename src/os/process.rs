//! Processes: fork and exit, the fork generation, the parent, pidfds,
//! reaping, the descriptors a child keeps, and the resource limits.
//!
//! `fork` goes through `nix`, which calls libc's `fork`, so the handlers
//! registered with `pthread_atfork` run (the fork generation below, the
//! shared heap's child view, libc's own); rustix's raw fork would skip them.
//! `fork_single_threaded` is the template's: libc's `_Fork`, which runs no
//! handler, followed by this crate's own child handlers.
//! The resource limits go through `nix` too: its `getrlimit` reports a
//! failure, where rustix's takes the call to be infallible. Pidfds, waits,
//! kills, the parent-death signal and the CPU mask go through `rustix`.
//!
//! Hand-written, because neither crate offers them: `_exit`, `_Fork`,
//! `pthread_atfork` and `close_range`.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use rustix::io::Errno;
use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitOptions, pidfd_open as rustix_pidfd_open,
    pidfd_send_signal, waitid, waitpid,
};

use super::memory::{mapped_bytes, probe_mapped_bytes};

/// Which side of a [`fork`] this process is on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The process that forked, with the child's pid.
    Parent(u32),
}

/// Forks this process (libc's `fork`, so `pthread_atfork` handlers run).
///
/// # Errors
/// `EAGAIN` or `ENOMEM` when the kernel refuses a process.
///
/// # Safety
/// In the child, until it ends with [`exit_now`], only this thread exists:
/// it must take no lock that another thread of the parent may have held at
/// the fork (that lock stays held forever), and must never return into
/// code that expects the parent's other threads.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller's contract.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw() as u32)),
    }
}

/// Forks this single-threaded process the way the template forks its
/// workers: with libc's `_Fork`, which skips what libc's `fork` does around
/// the system call besides the child's thread id and robust list (taking
/// and resetting its own locks, the handlers registered with
/// `pthread_atfork`), then runs, in the child, this crate's own child
/// handlers (see [`at_fork_in_child`]). Falls back to [`fork`] where
/// [`quiet_fork`] finds no `_Fork` or cannot vouch for this crate's list of
/// handlers.
///
/// libc's steps and the handlers are for a fork that may catch another
/// thread inside a lock, and for per-process state. The template has one
/// thread and holds no lock when it forks, and all of them ran when the
/// template itself was forked: each worker is a copy of that state
/// (design.md, "Fork handlers"). Skipping them skips their writes to the
/// template's pages and the worker's, each a copy-on-write fault after the
/// fork (`docs/performance.md`, "Starting and stopping a pool").
///
/// # Errors
/// As [`fork`].
///
/// # Safety
/// - As [`fork`].
/// - This process has one thread.
/// - This thread holds no lock (`malloc`'s, stdio's and the dynamic
///   loader's among them): the child inherits every lock as it is.
pub(crate) unsafe fn fork_single_threaded() -> io::Result<Forked> {
    let Some(raw_fork) = quiet_fork() else {
        // SAFETY: the caller's contract covers `fork`'s.
        return unsafe { fork() };
    };
    // SAFETY: `_Fork` takes no argument and is async-signal-safe; the
    // caller's contract makes the child consistent without libc's steps.
    match unsafe { raw_fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // `quiet_fork` found every slot below the count filled: this
            // list is the one libc's `fork` would have run.
            // ORDERING: Relaxed: this process has one thread, and the fork
            // copied the list as the parent last wrote it.
            let n = HANDLERS.count.load(Relaxed).min(HANDLERS.slots.len());
            for slot in &HANDLERS.slots[..n] {
                // ORDERING: Relaxed: as above.
                let at = slot.load(Relaxed);
                // SAFETY: only `at_fork_in_child` stores here, and only the
                // address of an `extern "C" fn()`; it is not 0 (checked by
                // `quiet_fork`).
                let handler: extern "C" fn() = unsafe { std::mem::transmute(at) };
                handler();
            }
            Ok(Forked::Child)
        }
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// libc's `_Fork`, if it has one (glibc from 2.34, musl from 1.2.2, linked
/// dynamically: `dlsym` finds nothing in a static binary), and if this
/// crate's list of child handlers matches what libc's `fork` would run:
/// none was left out for want of a slot, and none is half registered (a
/// slot still 0 below the count: registered with libc, or about to be,
/// when this process was forked). `None`: fork with libc's `fork`.
pub(crate) fn quiet_fork() -> Option<unsafe extern "C" fn() -> libc::pid_t> {
    // ORDERING: Acquire: pairs with the Release in `find_libc_symbols`, which
    // ran before `main` (or in the `dlopen` that loaded this crate).
    let at = QUIET_FORK.load(Acquire);
    // ORDERING: Acquire: pairs with the registrations' AcqRel count and
    // Release slots, for a process that looks while another thread
    // registers; in the template, the only caller, nothing else runs.
    let count = HANDLERS.count.load(Acquire);
    let torn = count > HANDLERS.slots.len()
        // ORDERING: Acquire: as above.
        || HANDLERS.slots[..count].iter().any(|s| s.load(Acquire) == 0);
    if at == 0 || torn {
        return None;
    }
    // SAFETY: `_Fork` is `pid_t _Fork(void)` in glibc and musl.
    Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> libc::pid_t>(at) })
}

/// The address of libc's `_Fork`, or 0.
static QUIET_FORK: AtomicUsize = AtomicUsize::new(0);

/// Looks `_Fork` and `__libc_single_threaded` up as the program loads, from
/// the `.init_array` (before `main`; for a library loaded with `dlopen`,
/// inside that `dlopen`).
/// Looked up later, in `Pool::new`, `dlsym` would wait for the dynamic
/// loader's lock, which another thread holds while `dlopen` runs a
/// library's constructors: user code (design.md, "Fork handlers").
extern "C" fn find_libc_symbols() {
    // SAFETY: looks up a symbol by a valid, NUL-terminated name; the result
    // is only stored, and called as what libc declares `_Fork` to be.
    let at = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) } as usize;
    if at == 0 {
        // SAFETY: clears the message the failed lookup left for this
        // thread's next `dlerror`, which is the program's business.
        unsafe { libc::dlerror() };
    }
    // ORDERING: Release: see `quiet_fork`.
    QUIET_FORK.store(at, Release);
    // SAFETY: as above; the result is only stored, and read as the `char`
    // glibc declares it to be.
    let at = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_single_threaded".as_ptr()) };
    if at.is_null() {
        // SAFETY: as above.
        unsafe { libc::dlerror() };
    }
    // ORDERING: Release: see `libc_says_single_threaded`.
    SINGLE_THREADED.store(at as usize, Release);
}

// SAFETY: `.init_array` holds functions the dynamic loader (or the static
// startup code) calls once, before `main`, with the C ABI; this one takes
// none of the arguments glibc passes, which the ABI allows, and only calls
// `dlsym` and `dlerror`, which are allowed there.
#[used]
#[unsafe(link_section = ".init_array")]
static FIND_LIBC_SYMBOLS: extern "C" fn() = find_libc_symbols;

/// This crate's child-side fork handlers, in the order they were
/// registered, for [`fork_single_threaded`], which bypasses libc's list.
struct Handlers {
    /// How many were registered (past `slots.len()`: some are not kept).
    count: AtomicUsize,
    /// The handlers' addresses; 0 until registered with libc too.
    slots: [AtomicUsize; 8],
}

static HANDLERS: Handlers = Handlers {
    count: AtomicUsize::new(0),
    slots: [const { AtomicUsize::new(0) }; 8],
};

/// Ends this process at once: no destructors, no atexit handlers, no stdio
/// flush. The only way a forked worker ever ends. Hand-written: `nix` has
/// no `_exit`, and rustix's is in its unstable `runtime` module.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// The current process id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// The pid of this process's parent (0 when it has none: the parent is in
/// another pid namespace).
pub(crate) fn parent_pid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// Whether the calling thread is the only thread of this process: glibc's
/// word for it while the process has never had another
/// ([`libc_says_single_threaded`]), else the kernel's
/// ([`kernel_says_single_threaded`], or where a filter refuses that call,
/// `/proc/self/task`, which has a link per thread, plus two). `false` when
/// none can tell (no procfs either): callers take the careful path.
/// Only the calling thread could start another, so `true` stays true until
/// it does.
pub(crate) fn single_threaded() -> bool {
    libc_says_single_threaded()
        || kernel_says_single_threaded()
            .unwrap_or_else(|| rustix::fs::stat("/proc/self/task").is_ok_and(|st| st.st_nlink == 3))
}

/// The kernel's answer, from `unshare(CLONE_VM)`: a call that unshares
/// nothing (Linux implements no unsharing of the address space; it
/// "pretends it works if there is nothing to unshare") and refuses with
/// `EINVAL` when another thread, or another process through `CLONE_VM`,
/// shares this address space. So it succeeds exactly when the calling
/// thread is the only one running in this memory, and changes nothing
/// either way. `None` when the call is refused otherwise (a seccomp filter,
/// `EPERM`; a kernel without it, `ENOSYS`).
///
/// It replaced a lookup of `/proc/self/task`, which costs a new process
/// 20-35 µs here as its `/proc` entries are made, on the path of every
/// worker's start in a program that has had threads (the template asks
/// before its first fork); this call takes well under a microsecond.
fn kernel_says_single_threaded() -> Option<bool> {
    let vm = rustix::thread::UnshareFlags::from_bits_retain(libc::CLONE_VM as u32);
    // SAFETY: `unshare_unsafe` is unsafe for `CLONE_FILES`, which would give
    // this thread a descriptor table of its own; `CLONE_VM` (with the
    // `CLONE_SIGHAND` and `CLONE_THREAD` it implies) unshares nothing: the
    // kernel checks that nothing shares them and returns.
    match unsafe { rustix::thread::unshare_unsafe(vm) } {
        Ok(()) => Some(true),
        Err(Errno::INVAL) => Some(false),
        Err(_) => None,
    }
}

/// glibc's `__libc_single_threaded`, where libc has it (glibc 2.32 and
/// later): true only while the process has never had a second thread
/// (glibc sets it false when the first `pthread_create` starts one, and
/// never back; a thread started without `pthread_create`, by a raw
/// `clone`, goes uncounted, but glibc does not support those). A fast path
/// for [`single_threaded`]: a program's first `Pool::new` and its template,
/// forked before the pool's first thread, find it true and make no system
/// call. Hand-written: neither `nix` nor `rustix` reads it.
fn libc_says_single_threaded() -> bool {
    // ORDERING: Acquire: pairs with the Release in `find_libc_symbols`.
    let at = SINGLE_THREADED.load(Acquire);
    // SAFETY: `at` is the address of glibc's `char __libc_single_threaded`
    // (looked up by that name), which lives as long as libc. glibc writes
    // it only in `pthread_create`, and only while it is true, that is while
    // the calling thread is the process's only one: no write can race with
    // this read in a thread that exists (the glibc manual lets programs
    // read it without synchronization).
    at != 0 && unsafe { std::ptr::read_volatile(at as *const libc::c_char) } != 0
}

/// The address of glibc's `__libc_single_threaded`, or 0.
static SINGLE_THREADED: AtomicUsize = AtomicUsize::new(0);

/// Forks this process has been through: 0 in the process that first called
/// `fork_generation`, one more in each child forked (through libc's `fork`
/// or [`fork_single_threaded`]) since. A pool compares it with the value it was built with to tell
/// whether it is still in the process that owns it, without a `getpid`
/// system call on every job (it cost 330 ns here, a sixth of an `apply`).
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| at_fork_in_child(forked));
    fork_generation_registered()
}

/// Registers `handler` to run in every child this process forks, through
/// libc's `fork` or [`fork_single_threaded`], right after the fork, while
/// the child has one thread. Hand-written: neither `nix` nor `rustix` offers
/// `pthread_atfork`. glibc keeps the handler list in its own memory (its
/// `malloc`, never Rust's allocator), so the shared heap may call it from
/// the global allocator; this crate's copy of the list is static.
pub(crate) fn at_fork_in_child(handler: extern "C" fn()) {
    // Claimed first and filled last: a process forked in between finds the
    // slot empty (registered with libc, or not yet) and forks with libc's
    // `fork` (`quiet_fork`).
    // ORDERING: AcqRel: claims a slot; `quiet_fork`'s Acquire reads it.
    let i = HANDLERS.count.fetch_add(1, AcqRel);
    // SAFETY: registers a plain function with no arguments as a child-side
    // fork handler; the callers' handlers make only async-signal-safe calls.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
    if let Some(slot) = HANDLERS.slots.get(i) {
        // ORDERING: Release: publishes the handler to `quiet_fork`.
        slot.store(handler as usize, Release);
    }
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

/// Prepares a freshly forked worker: it dies with the thread that forked it,
/// it survives the terminal's Ctrl-C (the parent decides), and it unblocks
/// every signal the forking thread may have blocked (see
/// `signals::catch_interrupts`).
///
/// Returns `false` if the parent is already gone.
pub(crate) fn worker_process_setup(parent: u32) -> bool {
    // Only changes this process's settings; it cannot fail for SIGKILL.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // The parent may have died between fork and prctl; then the death signal
    // was never armed for it. (A subreaper would be our parent now.)
    if parent_pid() != parent {
        return false;
    }
    super::signals::catch_interrupts();
    super::signals::unblock_all();
    true
}

/// Closes every inherited descriptor above stderr except those in `keep`,
/// so that a worker holds no pipe ends, sockets or other pools' files of its
/// parent. Allocation-free: a freshly forked child calls it. Hand-written:
/// neither `nix` nor `rustix` offers `close_range`.
///
/// # Safety
/// Closing descriptors that `OwnedFd`s (or `File`s, ...) of this process
/// still own breaks their ownership: after the call, nothing in this
/// process may use or drop any of them but those in `keep` (their numbers
/// are closed, or someone else's). A freshly forked child that ends with
/// [`exit_now`] and never returns into its parent's frames meets this.
pub(crate) unsafe fn close_fds_except(keep: &[BorrowedFd<'_>]) {
    let close_range = |lo: c_uint, hi: c_uint| {
        if lo > hi {
            return;
        }
        // SAFETY: close_range takes two numbers and flags, and only closes
        // descriptors of this process (see above for why that is what this
        // child wants).
        let done = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as c_uint) };
        if done == 0 {
            return;
        }
        // A kernel without close_range (before 5.9), or a filter that
        // refuses it: one by one, up to the descriptor limit.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the one struct it is given.
        let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            c_uint::try_from(limit.rlim_cur).unwrap_or(c_uint::MAX)
        } else {
            1 << 20
        };
        for fd in lo..=hi.min(top.saturating_sub(1)) {
            // SAFETY: as above: it closes a descriptor of this process, or
            // fails with EBADF.
            unsafe { libc::close(fd as c_int) };
        }
    };
    let mut lo: c_uint = 3;
    loop {
        // The smallest kept descriptor at or above `lo`.
        let next = keep
            .iter()
            .filter_map(|k| c_uint::try_from(k.as_raw_fd()).ok())
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
                close_range(lo, c_uint::MAX);
                return;
            }
        }
    }
}

/// `pid` as rustix's `Pid`, if it can be one.
fn rustix_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// A file descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix_pid(pid).ok_or_else(|| io::Error::from(Errno::SRCH))?;
    Ok(rustix_pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `SIGKILL` to `pid`. Errors (the process is already gone) are ignored.
pub(crate) fn kill_now(pid: u32) {
    if let Some(pid) = rustix_pid(pid) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// Sends `SIGKILL` to the process behind `pidfd`. Unlike `kill`, it can never
/// reach a stranger that recycled the pid. Errors (already gone) are ignored.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) {
    let _ = pidfd_send_signal(pidfd, Signal::KILL);
}

/// Whether the process behind `pidfd` has exited (it may be a zombie),
/// waiting up to `timeout_ms` milliseconds (-1: no limit) for it.
/// A signal caught meanwhile does not cut the wait short (`poll` says
/// `EINTR`, which `sync::poll` reports as "nothing yet"): the wait goes on
/// until the deadline.
pub(crate) fn pidfd_exited(pidfd: &OwnedFd, timeout_ms: i32) -> bool {
    let deadline = u64::try_from(timeout_ms)
        .ok()
        .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    loop {
        let left = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        let mut fds = [super::sync::watch(pidfd.as_fd())];
        match super::sync::poll(&mut fds, left) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left != 0 => continue,
            _ => return false,
        }
    }
}

/// Reaps the process behind `pidfd` if it has exited and is (now) our child:
/// a worker orphaned by its template is re-parented to us when we are a
/// subreaper or PID 1. Anything else (`ECHILD`) is ignored.
pub(crate) fn reap_pidfd(pidfd: &OwnedFd) {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    let _ = waitid(WaitId::PidFd(pidfd.as_fd()), options);
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExitStatus {
    pub(crate) signal: Option<i32>,
    pub(crate) code: Option<i32>,
}

/// Decodes a raw `waitpid` status (a status word the template sends on, so
/// rustix's `WaitStatus`, which cannot be made from one, does not fit).
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

/// Blocks until the child behind `pidfd` ends, reaps it and says how it
/// ended (`None` if it is not our child any more: something else in the
/// program reaped it, a `waitpid(-1)` in a `SIGCHLD` handler for one).
/// Unlike [`wait_raw`] it can never wait for, or reap, another child that
/// took over a reaped child's pid.
pub(crate) fn wait_pidfd(pidfd: &OwnedFd) -> Option<ExitStatus> {
    loop {
        match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Ok(Some(status)) => {
                return Some(ExitStatus {
                    signal: status.terminating_signal(),
                    code: status.exit_status(),
                });
            }
            Err(Errno::INTR) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Blocks until child `pid` ends and returns its raw status (`None` if it is
/// not our child any more).
pub(crate) fn wait_raw(pid: u32) -> Option<i32> {
    let pid = rustix_pid(pid)?;
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Some(status.as_raw()),
            Err(Errno::INTR) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Makes this process a batch job for the scheduler (`SCHED_BATCH`, its
/// nice value unchanged) if it runs under the ordinary policy
/// (`SCHED_OTHER`, inherited from the thread that forked it); a real-time
/// or idle policy that thread had is left alone. (The kernel already turned
/// a real-time policy with reset-on-fork into `SCHED_OTHER` in this child,
/// which then becomes `SCHED_BATCH` like any ordinary one.) Children forked
/// after it inherit it. The one thing it changes on Linux: waking the
/// process no longer preempts the task running on the CPU it is woken on;
/// it runs when that task sleeps, at the next tick, or on another CPU if
/// one is idle. A worker woken by a job posted from a busy caller thus
/// leaves that thread its CPU (`docs/performance.md`, "Why `apply_async`
/// swung between 0.7 and 1.4 M tasks/s"). A hint: an error (a seccomp
/// filter) is ignored. Raw system calls, which are async-signal-safe and
/// which musl's wrappers (stubs that fail) are not: neither `nix` nor
/// `rustix` offers them.
pub(crate) fn schedule_as_batch() {
    // SAFETY: sched_getscheduler(pid 0) reads the calling thread's policy
    // (this process's only thread); no pointer is passed.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if policy != libc::c_long::from(libc::SCHED_OTHER) {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes only the calling thread's policy (this process's only
    // thread); `param` is a valid `sched_param` (priority 0, the only one
    // SCHED_BATCH takes) that the call only reads.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_BATCH,
            &raw const param,
        )
    };
}

/// The number of CPUs this process may run on: the CPUs of its affinity
/// mask (`sched_getaffinity`, one system call; `available_parallelism`
/// also reads the cgroup's CPU quota from files, 50-100 µs here). At least
/// 1.
pub(crate) fn cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| (set.count() as usize).max(1))
}

/// This process's `RLIMIT_AS`, in bytes (`u64::MAX`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddressLimit {
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// This process's `RLIMIT_AS`; `None` if it cannot be read. No allocation.
pub(crate) fn address_limit() -> Option<AddressLimit> {
    read_address_limit().ok()
}

fn read_address_limit() -> io::Result<AddressLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_AS)?;
    Ok(AddressLimit { soft, hard })
}

/// Sets this process's `RLIMIT_AS`. No allocation.
///
/// # Errors
/// `EPERM` when raising the hard limit, or under a filter that forbids the
/// call; `EINVAL` when the soft limit exceeds the hard one.
pub(crate) fn set_address_limit(limit: AddressLimit) -> io::Result<()> {
    Ok(setrlimit(Resource::RLIMIT_AS, limit.soft, limit.hard)?)
}

/// The soft `RLIMIT_AS` of this process, if it is finite.
pub(crate) fn address_space_limit() -> Option<u64> {
    let limit = address_limit()?;
    (limit.soft != libc::RLIM_INFINITY).then_some(limit.soft)
}

/// The soft `RLIMIT_FSIZE` of this process (`ulimit -f`), in bytes, if it
/// is finite and can be read. No allocation.
pub(crate) fn file_size_limit() -> Option<u64> {
    let (soft, _) = getrlimit(Resource::RLIMIT_FSIZE).ok()?;
    (soft != libc::RLIM_INFINITY).then_some(soft)
}

/// Whether a worker will be able to cap its own address space
/// (`Builder::worker_memory_limit`): sets this process's `RLIMIT_AS` to
/// the value it has, which a filter that forbids the call refuses.
pub(crate) fn can_cap_address_space() -> io::Result<()> {
    set_address_limit(read_address_limit()?)
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
    let old = address_limit()?;
    let cap = now.saturating_add(extra as u64).min(old.soft);
    set_address_limit(AddressLimit {
        soft: cap,
        hard: cap,
    })
    .ok()?;
    Some(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_another_thread_is_not_single_threaded() {
        // The test harness runs this on a thread of its own: at least two.
        assert!(!single_threaded());
        // Counted by the kernel: one more, running or parked.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        assert!(!single_threaded());
        drop(tx);
        let _ = other.join();
        // Both of the kernel's answers agree (unless a filter refuses the
        // call, as a container's default seccomp profile does: `None`).
        assert_ne!(kernel_says_single_threaded(), Some(true));
        // What it counts: a link per thread, plus two (`.` and `..`).
        let threads = std::fs::read_dir("/proc/self/task").unwrap().count() as u64;
        let links = rustix::fs::stat("/proc/self/task").unwrap().st_nlink;
        assert!(
            links >= 3 && links.abs_diff(threads + 2) <= 1,
            "{links} links, {threads} threads"
        );
    }

    #[test]
    fn a_caught_signal_does_not_cut_a_wait_for_an_exit_short() {
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, for a signal whose default
        // action is to be ignored, so no other test notices it; installed
        // without SA_RESTART, so a `poll` it interrupts returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            assert_eq!(libc::sigaction(libc::SIGURG, &sa, std::ptr::null_mut()), 0);
        }
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        // SAFETY: `pthread_self` has no preconditions.
        let waiter = unsafe { libc::pthread_self() } as usize;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pester = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // ORDERING: Relaxed: a flag polled until set.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: the waiting thread is alive until `stop` is
                    // set, and SIGURG has the handler above.
                    unsafe { libc::pthread_kill(waiter as libc::pthread_t, libc::SIGURG) };
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let t = std::time::Instant::now();
        let exited = pidfd_exited(&pidfd, 5_000);
        let took = t.elapsed();
        // ORDERING: Relaxed: see above; `join` orders the rest.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pester.join().unwrap();
        let _ = child.wait();
        assert!(exited, "gave up after {took:?}, interrupted by a signal");
        assert!(took >= std::time::Duration::from_millis(250), "{took:?}");
    }

    #[test]
    fn waiting_on_a_pidfd_never_waits_for_the_child_that_took_over_its_pid() {
        for _ in 0..20 {
            // A child that exits at once, reaped behind its pidfd's back (as
            // a `waitpid(-1)` elsewhere in the program would reap it)...
            // SAFETY: the child only `_exit`s.
            let Forked::Parent(gone) = unsafe { fork() }.unwrap() else {
                exit_now(0)
            };
            let pidfd = pidfd_open(gone).unwrap();
            assert!(wait_raw(gone).is_some());
            // ...and a second child given its pid (`ns_last_pid` takes the
            // pid the next fork follows; only root may write it).
            let next = format!("{}", gone - 1);
            if let Err(e) = std::fs::write("/proc/sys/kernel/ns_last_pid", next) {
                assert!(
                    !rustix::process::geteuid().is_root(),
                    "root cannot choose a pid: {e}"
                );
                eprintln!("not run: choosing a child's pid takes root ({e})");
                return;
            }
            // SAFETY: the child only `pause`s until it is killed.
            let Forked::Parent(heir) = unsafe { fork() }.unwrap() else {
                loop {
                    // SAFETY: async-signal-safe, no arguments.
                    unsafe { libc::pause() };
                }
            };
            if heir != gone {
                // Another test's fork took the pid first: again.
                kill_now(heir);
                wait_raw(heir);
                continue;
            }
            // `waitpid(gone)` would wait for the heir, and reap it.
            let started = std::time::Instant::now();
            assert_eq!(wait_pidfd(&pidfd), None);
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
            let heir_pid = rustix_pid(heir).unwrap();
            assert!(
                waitpid(Some(heir_pid), WaitOptions::NOHANG)
                    .unwrap()
                    .is_none(),
                "the heir is still running, and still ours to reap"
            );
            kill_now(heir);
            assert_eq!(wait_raw(heir).map(decode_status).unwrap().signal, Some(9));
            return;
        }
        panic!("20 other forks took the freed pid first");
    }

    #[test]
    fn libcs_single_thread_flag_is_found_and_false_with_threads() {
        // glibc has had the flag since 2.32; the CI machines run newer ones.
        #[cfg(target_env = "gnu")]
        // ORDERING: Acquire: as in `libc_says_single_threaded`.
        assert_ne!(SINGLE_THREADED.load(Acquire), 0);
        // The test harness runs this on a thread of its own.
        assert!(!libc_says_single_threaded());
        // In a child forked from here, a copy of the flag: still false,
        // and the kernel decides, by both of its answers.
        // SAFETY: the child makes an `unshare` and a `stat` system call and
        // `_exit`s.
        let pid = match unsafe { fork() }.unwrap() {
            Forked::Child => {
                let by_proc = rustix::fs::stat("/proc/self/task").is_ok_and(|st| st.st_nlink == 3);
                exit_now(
                    i32::from(libc_says_single_threaded())
                        | i32::from(single_threaded()) << 1
                        | i32::from(kernel_says_single_threaded() != Some(false)) << 2
                        | i32::from(by_proc) << 3,
                )
            }
            Forked::Parent(pid) => pid,
        };
        let status = wait_raw(pid).map(decode_status).unwrap();
        assert_eq!(
            status.code,
            Some(0b1110),
            "flag false; one thread, as the call (unless filtered), `/proc` and `single_threaded` say"
        );
    }

    #[test]
    fn a_filter_that_refuses_unshare_leaves_the_count_to_proc() {
        // A seccomp filter that answers `unshare` with `EPERM`, as a
        // container's default profile does, in a child forked from here
        // (one thread; glibc's flag, copied from this process, says no).
        let word = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let mut filter = [
            // The system call's number (`seccomp_data.nr`).
            word(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            word(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                libc::SYS_unshare as u32,
                0,
                1,
            ),
            word(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                0,
                0,
            ),
            word(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        ];
        // SAFETY: the child installs a filter on itself, makes `prctl`,
        // `unshare` and `stat` system calls (no allocation, no lock) and
        // `_exit`s.
        let pid = match unsafe { fork() }.unwrap() {
            Forked::Child => {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_mut_ptr(),
                };
                // SAFETY: `prog` points to a valid filter that outlives the
                // call; both calls change only this process.
                let filtered = unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                        && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) == 0
                };
                if !filtered {
                    exit_now(99);
                }
                exit_now(
                    i32::from(kernel_says_single_threaded().is_none())
                        | i32::from(single_threaded()) << 1,
                )
            }
            Forked::Parent(pid) => pid,
        };
        let status = wait_raw(pid).map(decode_status).unwrap();
        if status.code == Some(99) {
            eprintln!("no seccomp filter can be installed here: not tested");
            return;
        }
        assert_eq!(
            status.code,
            Some(0b11),
            "the call refused, and `/proc` counts one thread"
        );
    }

    static OURS: AtomicUsize = AtomicUsize::new(0);
    static THEIRS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn ours() {
        // ORDERING: Relaxed: read by this (single-threaded) child only.
        OURS.store(1, Relaxed);
    }

    extern "C" fn theirs() {
        // ORDERING: Relaxed: as above.
        THEIRS.store(1, Relaxed);
    }

    /// Held by the tests that touch the handler list, so that one's
    /// half-registered handler is not the other's fallback.
    static HANDLER_LIST: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_quiet_fork_runs_this_crates_child_handlers_and_no_others() {
        let _list = HANDLER_LIST.lock().unwrap_or_else(|e| e.into_inner());
        let before = fork_generation();
        at_fork_in_child(ours);
        // Another library's handler, registered with libc only.
        // SAFETY: a plain function that stores to a static.
        unsafe { libc::pthread_atfork(None, None, Some(theirs)) };
        // SAFETY: the child runs this crate's child handlers (async-signal-
        // safe system calls), then makes only atomic loads and `_exit` (no
        // lock, no allocation), so the test harness's other threads cannot
        // matter to it.
        let pid = match unsafe { fork_single_threaded() }.unwrap() {
            Forked::Child => {
                // ORDERING: Relaxed: stored by this thread (the handlers).
                let code = OURS.load(Relaxed)
                    | THEIRS.load(Relaxed) << 1
                    | usize::from(fork_generation_registered() == before + 1) << 2;
                exit_now(code as i32)
            }
            Forked::Parent(pid) => pid,
        };
        let status = decode_status(wait_raw(pid).unwrap());
        // Found before `main`, where libc has it (glibc 2.34 on, linked
        // dynamically); elsewhere the fork is libc's and every handler runs.
        // SAFETY: a lookup by a valid, NUL-terminated name.
        let has_it = !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) }.is_null();
        assert_eq!(quiet_fork().is_some(), has_it);
        let expected = if has_it { 0b101 } else { 0b111 };
        assert_eq!(status.code, Some(expected), "{status:?}");
    }

    extern "C" fn nothing() {}

    #[test]
    fn a_handler_half_registered_makes_forks_use_libcs_fork() {
        let _list = HANDLER_LIST.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as above.
        let has_it = !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) }.is_null();
        // A slot claimed but not yet filled: what a process forked in the
        // middle of `at_fork_in_child` sees. (A template another test forks
        // meanwhile uses libc's `fork`, which is always correct.)
        let i = HANDLERS.count.fetch_add(1, AcqRel);
        assert!(quiet_fork().is_none());
        HANDLERS.slots[i].store(nothing as *const () as usize, Release);
        assert_eq!(quiet_fork().is_some(), has_it);
    }

    #[test]
    fn statuses_decode() {
        // A raw status as waitpid reports it: the code in bits 8..16, or
        // the signal in bits 0..7.
        assert_eq!(
            decode_status(3 << 8),
            ExitStatus {
                signal: None,
                code: Some(3)
            }
        );
        assert_eq!(
            decode_status(libc::SIGKILL),
            ExitStatus {
                signal: Some(libc::SIGKILL),
                code: None
            }
        );
    }

    #[test]
    fn limits_read_back() {
        let limit = address_limit().unwrap();
        assert!(limit.soft <= limit.hard);
        assert_eq!(address_space_limit().is_none(), limit.soft == u64::MAX);
        can_cap_address_space().unwrap();
        assert_eq!(address_limit(), Some(limit), "unchanged");
        assert!(cpus() >= 1);
        assert_ne!(parent_pid(), 0);
    }
}
