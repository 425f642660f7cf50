//! The seed's process skeleton: the processes the seed's program starts,
//! the one job they answer and their teardown, with none of the pool's
//! machinery (no region, no supervisor thread, no ring, no checks). Its time
//! is the floor of the pool's process model; the seed's time over it is what
//! the pool's own code costs.
//!
//! Two shapes:
//! - [`templated`]: as the pool does it. The program forks a template, the
//!   template forks four workers back to back (with libc's `_Fork`, as the
//!   pool's template does) and then reports them over a socket; one worker
//!   answers a job of 100 squares in a shared page; at
//!   the end the program kills the workers and hangs up, the template reaps
//!   them and exits, and the program reaps the template.
//! - [`direct`]: the program forks an idle template and the four workers
//!   itself (with `_Fork` too, as a single-threaded program could), and
//!   reaps all five. The pool does not do this: the program may
//!   be multi-threaded, and the pool forks it once (design.md, "Processes
//!   and threads"); this measures what that rule costs the seed.
//!
//! The children make raw system calls only (no allocation, no lock), so
//! they are safe in a child of a multi-threaded process.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

const WORKERS: usize = 4;

/// The page the skeleton's processes share.
#[repr(C)]
struct Page {
    /// 0 until the job is posted.
    job: AtomicU32,
    /// 0 until the job is answered.
    done: AtomicU32,
    out: [AtomicU64; 100],
}

/// A shared anonymous page, unmapped on drop.
struct Shared(*mut Page);

impl Shared {
    fn new() -> Shared {
        // SAFETY: a fresh shared anonymous mapping; no pointer is passed in.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Shared(p.cast())
    }

    fn page(&self) -> &Page {
        // SAFETY: the mapping is live while `self` is, zero-filled (a valid
        // `Page`: atomics of zero), and only ever accessed through atomics.
        unsafe { &*self.0 }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; nothing borrows it past `self`.
        unsafe { libc::munmap(self.0.cast(), std::mem::size_of::<Page>()) };
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not touch it.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// A forked child's life: wait for the job; worker 0 answers it; then
/// sleep until killed.
fn worker(page: &Page, index: usize) -> ! {
    // As the pool's workers do: die with the process that forked us.
    // SAFETY: sets a flag of this process; no pointer is passed.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // ORDERING: Acquire pairs with the Release that posts the job.
    while page.job.load(Acquire) == 0 {
        futex_wait(&page.job, 0);
    }
    if index == 0 {
        for (i, o) in page.out.iter().enumerate() {
            // ORDERING: Relaxed: published by the Release on `done` below.
            o.store((i * i) as u64, Relaxed);
        }
        // ORDERING: Release publishes `out` to the Acquire in `answer`.
        page.done.store(1, Release);
        futex_wake(&page.done);
    }
    loop {
        futex_wait(&page.job, 1);
    }
}

/// Posts the job and waits for its answer.
fn answer(page: &Page) {
    // ORDERING: Release pairs with the workers' Acquire.
    page.job.store(1, Release);
    futex_wake(&page.job);
    // ORDERING: Acquire pairs with the Release that answers.
    while page.done.load(Acquire) == 0 {
        futex_wait(&page.done, 0);
    }
    // ORDERING: Relaxed: published by `done`, read with Acquire above.
    assert_eq!(page.out[99].load(Relaxed), 9801);
}

/// libc's `_Fork` (a fork that runs no `pthread_atfork` handler), if libc
/// has it. Looked up by the program, before any fork.
fn quiet_fork() -> Option<unsafe extern "C" fn() -> libc::pid_t> {
    static FOUND: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: looks up a symbol by a valid, NUL-terminated name.
    let at = *FOUND
        .get_or_init(|| unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Fork".as_ptr()) as usize });
    // SAFETY: `_Fork` is `pid_t _Fork(void)` where libc has it.
    (at != 0)
        .then(|| unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> libc::pid_t>(at) })
}

/// Forks (with `_Fork` if `quiet` and libc has it); the child runs `child`
/// (which ends it) and never returns. `None`: the fork failed.
fn fork(quiet: bool, child: impl FnOnce()) -> Option<libc::pid_t> {
    let raw = quiet.then(quiet_fork).flatten();
    // SAFETY: the child makes raw system calls only, then `_exit`s or is
    // killed (see the module's docs): it takes no lock, so it needs no fork
    // handler either.
    match unsafe { raw.map_or_else(|| libc::fork(), |f| f()) } {
        -1 => None,
        0 => {
            child();
            exit_child(127)
        }
        pid => Some(pid),
    }
}

/// Forks in the program: a failure is a panic.
fn fork_here(quiet: bool, child: impl FnOnce()) -> libc::pid_t {
    fork(quiet, child).unwrap_or_else(|| panic!("fork: {}", std::io::Error::last_os_error()))
}

/// Ends a child without running the program's exit handlers.
fn exit_child(code: libc::c_int) -> ! {
    // SAFETY: `_exit` is async-signal-safe and ends only this child.
    unsafe { libc::_exit(code) }
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid place to write.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn kill(pid: libc::pid_t) {
    // SAFETY: `pid` is a child (ours or our template's) not yet reaped, so
    // the number is still that process's.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A `SOCK_SEQPACKET` pair: the program's end and the template's.
fn socket_pair() -> (libc::c_int, libc::c_int) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid place for two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

fn close(fd: libc::c_int) {
    // SAFETY: `fd` is a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

/// Blocks until the other end hangs up.
fn wait_hang_up(fd: libc::c_int) {
    let mut byte = 0u8;
    // SAFETY: one byte into `byte`, which is valid for it.
    while unsafe { libc::read(fd, (&raw mut byte).cast(), 1) } > 0 {}
}

/// Hangs up our end of the pair: the template's `wait_hang_up` returns.
fn hang_up(fd: libc::c_int) {
    // SAFETY: `fd` is our end of the pair; shutting it down hangs up.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// What both shapes start with: `_Fork` looked up here, in the program
/// rather than in a child, and a template forked with libc's `fork` that
/// runs `life` on its end of a socket pair. Returns the template's pid and
/// the program's end.
fn start_template(life: impl FnOnce(libc::c_int)) -> (libc::pid_t, libc::c_int) {
    let _ = quiet_fork();
    let (ours, theirs) = socket_pair();
    let template = fork_here(false, || {
        close(ours);
        life(theirs)
    });
    close(theirs);
    (template, ours)
}

/// The seed's processes as the pool starts and ends them (see the module's
/// docs).
pub fn templated() {
    let shared = Shared::new();
    let page = shared.page();
    let (template, ours) = start_template(|theirs| {
        let mut pids = [0; WORKERS];
        for i in 0..WORKERS {
            let Some(pid) = fork(true, || worker(page, i)) else {
                // The program's read sees the hang-up.
                pids[..i].iter().for_each(|&p| kill(p));
                exit_child(1)
            };
            pids[i] = pid;
        }
        for pid in &pids {
            // SAFETY: the pid's 4 bytes, read from a valid place.
            unsafe { libc::write(theirs, (&raw const *pid).cast(), 4) };
        }
        wait_hang_up(theirs);
        pids.iter().for_each(|&p| kill(p));
        pids.iter().for_each(|&p| reap(p));
        exit_child(0)
    });
    let mut pids = [0; WORKERS];
    for pid in &mut pids {
        // SAFETY: one 4-byte message into a valid place.
        let n = unsafe { libc::read(ours, (&raw mut *pid).cast(), 4) };
        assert_eq!(n, 4, "the template's report");
    }
    answer(page);
    pids.iter().for_each(|&p| kill(p));
    hang_up(ours);
    reap(template);
    close(ours);
}

/// The same processes, forked and reaped by the program itself.
pub fn direct() {
    let shared = Shared::new();
    let page = shared.page();
    let (template, ours) = start_template(|theirs| {
        wait_hang_up(theirs);
        exit_child(0)
    });
    let pids: [libc::pid_t; WORKERS] = std::array::from_fn(|i| fork_here(true, || worker(page, i)));
    answer(page);
    pids.iter().for_each(|&p| kill(p));
    hang_up(ours);
    pids.iter().chain([&template]).for_each(|&p| reap(p));
    close(ours);
}
