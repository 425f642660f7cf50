//! The template: a single-threaded process, forked once when the pool is
//! built, that forks every worker on request and reaps it.
//!
//! Forking a multi-threaded process copies every lock in whatever state
//! another thread left it, and a child that then takes one (stdout's, the
//! environment's, a user's `static Mutex`) blocks forever. A pool's parent is
//! multi-threaded (the supervisor thread at least). So the parent
//! forks exactly once, at `Pool::new`, holding the stdout and stderr locks
//! itself across that fork (the way `pthread_atfork` handlers do), and every
//! worker, first or replacement, is forked later by the template, which has
//! one thread and never runs user code. (Python 3.14's `forkserver` default
//! exists for the same reason.) The template forks with libc's `_Fork`
//! (`os::fork_single_threaded`): the `pthread_atfork` handlers ran when the
//! template itself was forked, and it holds no lock when it forks again.
//!
//! At build the template forks the pool's first workers unasked, back to
//! back, and then reports them all.
//!
//! The protocol, over a `SOCK_SEQPACKET` socket pair, is three-word messages:
//!
//! - supervisor → template: `[SPAWN, index, born]` (the worker's number,
//!   `WorkerCtx::born`), and `[KILL, index, pid]`
//!   for a worker whose pidfd never reached the parent;
//! - template → supervisor: `[SPAWNED, index, pid]` with the worker's pidfd
//!   attached (`SCM_RIGHTS`), `[SPAWN_FAILED, index, errno]`, and
//!   `[DIED, index, pid | raw_status << 32]` once it has reaped a worker.
//!
//! A parent at its descriptor limit receives `SPAWNED` without the pidfd
//! (the kernel drops it and sets `MSG_CTRUNC`). The worker exists all the
//! same; the parent asks the template to `KILL` it and does not ask for that
//! index again until its `DIED` arrives, so two workers never share a
//! record.
//!
//! The template watches the socket: when the parent process dies, its end
//! closes, and the template kills its workers and exits at once. Workers die
//! with the template (`PR_SET_PDEATHSIG`, bound to the template's only
//! thread), so nothing outlives the parent.
//!
//! Uses `unsafe` (denied at the crate root): it forks (`os::fork`,
//! `os::fork_single_threaded`) and closes
//! inherited descriptors in the child (`os::close_fds_except`).

#![allow(unsafe_code)]

use std::io::{self, StderrLock, StdoutLock, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use crate::os;
use crate::shm::region::Region;
use crate::shm::registry;
use crate::worker::heap_view;
use crate::worker::{
    WorkerConfig, WorkerCtx, install_worker_panic_hook, set_in_worker, worker_main,
};

pub(crate) const SPAWN: u64 = 1;
pub(crate) const SPAWNED: u64 = 2;
pub(crate) const SPAWN_FAILED: u64 = 3;
pub(crate) const DIED: u64 = 4;
pub(crate) const KILL: u64 = 5;
/// The status word of a `DIED` report when `waitpid` could not tell.
const STATUS_UNKNOWN: u32 = u32::MAX;

/// How often the template checks that its parent is alive, in case the
/// socket's hang-up is missed (belt and braces).
const PARENT_CHECK: Duration = Duration::from_millis(250);

/// The parent's handle on its template process. Dropping it kills and reaps
/// the template (and so its workers), unless `dismiss` already did.
#[derive(Debug)]
pub(crate) struct Template {
    /// Signals and the final wait go through it, never through a pid.
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: OwnedFd,
    /// Workers `0..unasked` are forked by the template as it starts, without
    /// a request (the pool's first workers).
    pub(crate) unasked: usize,
    /// Set once the template has been reaped.
    reaped: bool,
}

impl Drop for Template {
    /// Dismisses a template no one dismissed or reaped (a pool whose build
    /// failed half way), briefly: a template killed outright would leave the
    /// workers it had already forked to die orphaned, unreaped by it.
    fn drop(&mut self) {
        if !self.reaped {
            self.shut(DROP_GRACE);
        }
    }
}

/// How long a dropped template gets to reap its workers and exit.
const DROP_GRACE: Duration = Duration::from_millis(200);

/// How long `Pool::new` gives the stdio probe to find stdout's and stderr's
/// locks free. Only a lock held by the calling thread itself, or held for a
/// long time by another, makes it wait this long.
const STDIO_PATIENCE: Duration = Duration::from_millis(10);

/// Finds out whether stdout's and stderr's locks can be taken now, so that
/// `Pool::new` never waits for a lock that user code holds (a thread that
/// holds stdout while it waits for the pool to be built would deadlock it).
///
/// A forked child inherits a lock held by another thread as locked forever,
/// and a task that prints would then block; so when both are free, the
/// forking thread takes them itself and holds them across the fork.
///
/// In a single-threaded process no other thread can hold them, and the
/// calling thread takes them again even if it holds them (they are
/// reentrant; the child, the same thread, may then use them too): they are
/// taken at once. Otherwise a thread of its own tries them, started early in
/// `Builder::build` so that it runs while the region is created (under
/// `RLIMIT_AS`, just after: see `Builder::build`); when it
/// does not answer in time (the calling thread holds a lock itself, or
/// another thread holds one for long), the template is forked without them.
///
/// A probe that did not answer in time goes on waiting for the locks, and
/// ends once it has them. While one waits so (`ABANDONED`), no other is
/// started: the locks are still held, and a program whose thread holds
/// stdout for its whole life (a logger writing under one `StdoutLock`)
/// would otherwise keep one waiting thread per pool it ever built.
pub(crate) enum StdioProbe {
    /// The calling thread is the process's only thread.
    Alone,
    /// The probe thread answers on this channel once it has taken and
    /// released both locks; the state word is `PROBE_*`, shared with it.
    Probing(mpsc::Receiver<()>, Arc<AtomicU8>),
    /// No probe thread could be started, or one is still waiting for a
    /// lock: fork without the locks.
    Unknown,
}

/// `StdioProbe::Probing`'s state word: the probe thread runs.
const PROBE_RUNNING: u8 = 0;
/// The probe thread has taken and released both locks.
const PROBE_DONE: u8 = 1;
/// The build stopped waiting for the probe thread, which still waits for a
/// lock (marked in `ABANDONED` until it ends).
const PROBE_ABANDONED: u8 = 2;

/// One more than the fork generation (`os::fork_generation`) of the process
/// in which a probe thread that a build stopped waiting for still waits for
/// stdout's or stderr's lock; 0 if none does. A process forked meanwhile
/// inherits the mark but not the thread: the generation tells it that the
/// mark is not its own.
static ABANDONED: AtomicU64 = AtomicU64::new(0);

/// The mark `ABANDONED` holds while a probe of this process waits.
fn abandoned_mark() -> u64 {
    os::fork_generation().wrapping_add(1)
}

impl StdioProbe {
    /// Looks at the process, and starts the probe thread if another thread
    /// exists (the common single-threaded program is spared starting a
    /// thread and waiting for it to run) and no earlier probe still waits
    /// for a lock.
    pub(crate) fn start() -> StdioProbe {
        if os::single_threaded() {
            return StdioProbe::Alone;
        }
        // ORDERING: Relaxed: a stale mark starts one more probe, or forks
        // one template without the locks; neither is wrong.
        if ABANDONED.load(Relaxed) == abandoned_mark() {
            return StdioProbe::Unknown;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(PROBE_RUNNING));
        let theirs = state.clone();
        let probe = thread::Builder::new()
            .name("shmpool-stdio".into())
            .stack_size(64 << 10)
            .spawn(move || {
                drop((io::stdout().lock(), io::stderr().lock()));
                // ORDERING: AcqRel: the swap and `take`'s compare-exchange
                // are RMWs of one word, so exactly one of them sees the
                // other's value: only an abandoned probe clears the mark.
                if theirs.swap(PROBE_DONE, AcqRel) == PROBE_ABANDONED {
                    clear_abandoned();
                }
                let _ = tx.send(());
            });
        probe.map_or(StdioProbe::Unknown, |_| StdioProbe::Probing(rx, state))
    }

    /// Both locks, taken by this thread, if they were found free (within
    /// `patience`, when another thread had to look).
    fn take(self, patience: Duration) -> Option<(StdoutLock<'static>, StderrLock<'static>)> {
        match self {
            StdioProbe::Alone => {}
            StdioProbe::Probing(rx, state) => {
                if rx.recv_timeout(patience).is_err() {
                    // Marked before the probe can see itself abandoned, so
                    // that its clearing never comes first.
                    // ORDERING: Relaxed: a mark (see `start`); ordered
                    // before the probe's clearing by the Release below.
                    ABANDONED.store(abandoned_mark(), Relaxed);
                    // ORDERING: AcqRel: see the probe thread's swap.
                    let finished = state
                        .compare_exchange(PROBE_RUNNING, PROBE_ABANDONED, AcqRel, Acquire)
                        .is_err();
                    if finished {
                        clear_abandoned();
                    }
                    return None;
                }
            }
            StdioProbe::Unknown => return None,
        }
        Some((io::stdout().lock(), io::stderr().lock()))
    }
}

/// Clears this process's `ABANDONED` mark: its probe has both locks.
fn clear_abandoned() {
    let mark = abandoned_mark();
    // ORDERING: Relaxed: a mark (see `StdioProbe::start`).
    let _ = ABANDONED.compare_exchange(mark, 0, Relaxed, Relaxed);
}

/// Which panic hook a template gives its workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanicHook {
    /// shmpool's own (`install_worker_panic_hook`): the normal case.
    Own,
    /// The parent's, as inherited: for a template forked after one whose
    /// hook could not be set (a parent thread was running a panic hook at
    /// the fork, so the hook's lock stays held there forever).
    Inherited,
}

/// How long a template may take to set its panic hook before its alarm ends
/// it (see `PanicHook::Inherited`).
const HOOK_PATIENCE: Duration = Duration::from_millis(250);

impl PanicHook {
    /// The hook for the next template, after the last one ended with
    /// `status`: one killed by its alarm could not set the hook.
    pub(crate) fn after(self, status: Option<os::ExitStatus>) -> PanicHook {
        match status {
            Some(os::ExitStatus {
                signal: Some(os::signo::SIGALRM),
                ..
            }) => PanicHook::Inherited,
            _ => self,
        }
    }
}

/// What the template reports.
#[derive(Debug)]
pub(crate) enum Report {
    Spawned {
        index: usize,
        pid: u32,
        pidfd: OwnedFd,
    },
    /// Forked, but its pidfd could not be given a descriptor here (this
    /// process is at its limit): the worker runs, unseen.
    PidfdLost {
        index: usize,
        pid: u32,
    },
    SpawnFailed {
        index: usize,
        error: io::Error,
    },
    Died {
        index: usize,
        pid: u32,
        status: os::ExitStatus,
    },
}

impl Template {
    /// Forks the template, which forks workers `0..first` at once, unasked
    /// (each reported as if requested), then serves requests. If `stdio`
    /// found stdout's and stderr's locks free, this thread takes them and
    /// holds them across the fork, so the template (and every worker) starts
    /// with them unlocked; otherwise it forks without them (see
    /// `StdioProbe`).
    pub(crate) fn fork(
        region: &Region,
        event_fd: BorrowedFd<'_>,
        config: WorkerConfig,
        stdio: StdioProbe,
        hook: PanicHook,
        first: usize,
    ) -> io::Result<Template> {
        let (ours, theirs) = os::seqpacket_pair()?;
        let parent = os::getpid();
        // Lock order: stdout, stderr, then the registry (design.md, "Lock
        // order"). Nothing takes the registry lock and then a stdio lock.
        let mut stdio = stdio.take(STDIO_PATIENCE);
        // Workers inherit the stdout buffer; flushing now keeps a task that
        // prints from printing the parent's pending output again.
        if let Some((out, _)) = &mut stdio {
            let _ = out.flush();
        }
        // Workers flush what tasks print only if the lock is free in them.
        let config = WorkerConfig {
            flush_stdout: stdio.is_some(),
            ..config
        };
        // Every region this fork inherits is in the registry, so that the
        // template's workers can unmap the other pools' (`registry::lock`).
        let mapping = registry::lock();
        // SAFETY: the child runs only `serve`, which never returns and ends
        // with `_exit`. It takes no lock another thread could hold except
        // stdout's and stderr's, which this thread holds across the fork if
        // they were free (the child releases them first), and the panic
        // hook's (design.md, "Lock order across fork"). The registry's lock,
        // also held here, is fork-aware: a child finds it free.
        let forked = unsafe { os::fork() };
        match forked? {
            os::Forked::Child => {
                // Held by the parent's thread; the child never takes it.
                std::mem::forget(mapping);
                drop(stdio);
                // Closed with the other inherited descriptors by `serve`.
                std::mem::forget(ours);
                serve(region, event_fd, theirs, parent, config, hook, first)
            }
            os::Forked::Parent(pid) => {
                drop(mapping);
                drop(stdio);
                drop(theirs);
                match os::pidfd_open(pid) {
                    Ok(pidfd) => Ok(Template {
                        pidfd,
                        sock: ours,
                        unasked: first,
                        reaped: false,
                    }),
                    Err(e) => {
                        os::kill_now(pid);
                        os::wait_raw(pid);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Asks for worker `index`, the supervisor's worker number `born`
    /// (`WorkerCtx::born`); the answer arrives as a `Report`. Never blocks:
    /// a full socket is `WouldBlock` (ask again later).
    pub(crate) fn request(&self, index: usize, born: u32) -> io::Result<()> {
        os::send_message(
            &self.sock,
            &[SPAWN, index as u64, u64::from(born)],
            None,
            true,
        )
    }

    /// Asks the template to kill worker `index` (process `pid`), whose
    /// pidfd was lost on its way here; its death is reported as any other.
    /// Never blocks: a full socket is `WouldBlock` (ask again later).
    pub(crate) fn kill_worker(&self, index: usize, pid: u32) -> io::Result<()> {
        let msg = [KILL, index as u64, u64::from(pid)];
        os::send_message(&self.sock, &msg, None, true)
    }

    /// Reads one report without blocking. `Ok(None)`: the template is gone;
    /// `WouldBlock`: no report is waiting. A malformed message is an error.
    pub(crate) fn receive(&self) -> io::Result<Option<Report>> {
        let Some(([op, index, arg], attached)) = os::recv_message(&self.sock, true)? else {
            return Ok(None);
        };
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed template report");
        Ok(Some(match op {
            SPAWNED => {
                let pid = u32::try_from(arg).map_err(|_| bad())?;
                match attached {
                    os::Attached::Fd(pidfd) => Report::Spawned { index, pid, pidfd },
                    os::Attached::Lost => Report::PidfdLost { index, pid },
                    os::Attached::Nothing => return Err(bad()),
                }
            }
            SPAWN_FAILED => Report::SpawnFailed {
                index,
                error: io::Error::from_raw_os_error(arg as i32),
            },
            DIED => Report::Died {
                index,
                pid: arg as u32,
                status: match (arg >> 32) as u32 {
                    STATUS_UNKNOWN => os::ExitStatus {
                        signal: None,
                        code: None,
                    },
                    raw => os::decode_status(raw as i32),
                },
            },
            _ => return Err(bad()),
        }))
    }

    /// Kills the template (its workers die with it), reaps it, and says
    /// how it ended.
    pub(crate) fn kill_and_reap(mut self) -> Option<os::ExitStatus> {
        os::pidfd_kill(&self.pidfd);
        let status = os::wait_pidfd(&self.pidfd);
        self.reaped = true;
        status
    }

    /// Closes the socket (the template then kills its workers and exits),
    /// waits up to `grace` for it, kills it if need be, and reaps it.
    pub(crate) fn dismiss(mut self, grace: Duration) {
        self.shut(grace);
    }

    fn shut(&mut self, grace: Duration) {
        // A closed end reads as end of file in the template.
        os::shutdown(&self.sock);
        if !os::pidfd_exited(&self.pidfd, grace.as_millis().max(1) as i32) {
            os::pidfd_kill(&self.pidfd);
        }
        os::wait_pidfd(&self.pidfd);
        self.reaped = true;
    }
}

/// A worker as the template knows it.
struct Child {
    index: usize,
    pid: u32,
    pidfd: OwnedFd,
}

/// The template's life: fork workers on request, report their deaths, and
/// end (killing them) when the parent goes away.
fn serve(
    region: &Region,
    event_fd: BorrowedFd<'_>,
    sock: OwnedFd,
    parent: u32,
    config: WorkerConfig,
    hook: PanicHook,
    first: usize,
) -> ! {
    set_in_worker();
    let sock = sock.as_fd();
    // The parent's handlers go before anything else runs here (design.md,
    // section 14, "Signals").
    os::template_signals();
    // The workers inherit it (design.md, section 5, "Workers are batch
    // jobs").
    os::schedule_as_batch();
    // SAFETY: this child ends with `_exit` and, of what it inherited, uses
    // only the region's mapping and these two descriptors (the other
    // `OwnedFd`s it inherited are forgotten or never dropped).
    unsafe { os::close_fds_except(&[event_fd, sock]) };
    registry::unmap_others(region.base() as usize);
    // Workers see the shared heap live and read-only (design.md, "The
    // shared heap and the pool").
    heap_view::protect_view();
    if hook == PanicHook::Own {
        // Setting the hook takes the lock a parent thread holds while it
        // runs a panic hook; such a thread does not exist here, so the lock
        // would never be released. The alarm ends the template instead, and
        // the parent forks another that keeps the parent's hook.
        os::alarm_in(HOOK_PATIENCE);
        install_worker_panic_hook();
        os::alarm_in(Duration::ZERO);
    }
    let spawner = Spawner {
        region,
        event_fd,
        me: os::getpid(),
        config,
        // One thread, unless a fork handler started one in the template (it
        // should not: a handler may make only async-signal-safe calls).
        quiet: os::single_threaded(),
    };
    let mut children: Vec<Child> = Vec::new();
    // The pool's first workers, back to back, then their reports: a request
    // for each would cost a round trip with the parent apiece, and a report
    // after each fork a wake-up of the parent while the template still forks
    // (`docs/performance.md`, "Starting and stopping a pool").
    let forked: Vec<_> = (0..first).map(|i| (i, spawner.spawn(i, 0))).collect();
    let mut hung_up_early = false;
    for (index, child) in forked {
        hung_up_early |= report(sock, index, child, &mut children).is_err();
    }
    loop {
        if hung_up_early || os::parent_pid() != parent {
            break;
        }
        let mut fds = vec![os::watch(sock)];
        fds.extend(children.iter().map(|c| os::watch(c.pidfd.as_fd())));
        if os::poll(&mut fds, PARENT_CHECK.as_millis() as i32).is_err() {
            break;
        }
        let (hung_up, input) = (os::hung_up(&fds[0]), os::has_input(&fds[0]));
        let mut died: Vec<bool> = fds[1..].iter().map(os::fired).collect();
        drop(fds);
        // Reap first, so that a death is reported before a replacement.
        let mut i = 0;
        let mut gone = false;
        while i < children.len() {
            if !died[i] {
                i += 1;
                continue;
            }
            died.remove(i);
            let c = children.remove(i);
            let raw = os::wait_raw(c.pid).map_or(STATUS_UNKNOWN, |r| r as u32);
            let arg = u64::from(c.pid) | (u64::from(raw) << 32);
            gone |= os::send_message(sock, &[DIED, c.index as u64, arg], None, false).is_err();
        }
        if gone || hung_up {
            break;
        }
        if !input {
            continue;
        }
        match os::recv_message(sock, false) {
            Ok(Some(([SPAWN, index, born], _))) => {
                let index = index as usize;
                let born = u32::try_from(born).unwrap_or(u32::MAX);
                if report(sock, index, spawner.spawn(index, born), &mut children).is_err() {
                    break;
                }
            }
            Ok(Some(([KILL, index, pid], _))) => {
                // A worker whose pidfd the parent could not receive. Its
                // death is reported (DIED) when the poll sees it.
                if let Some(c) = children
                    .iter()
                    .find(|c| c.index as u64 == index && u64::from(c.pid) == pid)
                {
                    os::pidfd_kill(&c.pidfd);
                }
            }
            // Unknown or malformed requests are ignored: the parent never
            // sends them.
            Ok(Some(_)) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            // Short of kernel memory for the moment: look again shortly
            // rather than take the workers down.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(os::errno::ENOMEM | os::errno::ENOBUFS)
                ) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The parent is gone (or hung up): take the workers along.
    for c in &children {
        os::pidfd_kill(&c.pidfd);
    }
    for c in &children {
        os::wait_raw(c.pid);
    }
    os::exit_now(0)
}

/// Reports the fork of worker `index` (`SPAWNED` or `SPAWN_FAILED`). An
/// error means the socket is gone.
fn report(
    sock: BorrowedFd<'_>,
    index: usize,
    forked: io::Result<Child>,
    children: &mut Vec<Child>,
) -> io::Result<()> {
    match forked {
        Ok(child) => report_spawned(sock, child, children),
        Err(e) => spawn_failed(sock, index, &e),
    }
}

/// Sends `SPAWNED` with the new worker's pidfd attached and keeps the
/// worker. If the message cannot be sent for a reason other than the parent
/// hanging up (a descriptor in flight past the sender's limit,
/// `ETOOMANYREFS`; no kernel memory), the worker is killed and reaped and
/// the parent told `SPAWN_FAILED` instead. An error means the socket is
/// gone.
fn report_spawned(sock: BorrowedFd<'_>, child: Child, children: &mut Vec<Child>) -> io::Result<()> {
    let msg = [SPAWNED, child.index as u64, u64::from(child.pid)];
    match os::send_message(sock, &msg, Some(child.pidfd.as_fd()), false) {
        Ok(()) => {
            children.push(child);
            Ok(())
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(os::errno::EPIPE | os::errno::ECONNRESET | os::errno::ENOTCONN)
            ) =>
        {
            children.push(child);
            Err(e)
        }
        Err(e) => {
            os::pidfd_kill(&child.pidfd);
            os::wait_raw(child.pid);
            spawn_failed(sock, child.index, &e)
        }
    }
}

fn spawn_failed(sock: BorrowedFd<'_>, index: usize, e: &io::Error) -> io::Result<()> {
    let errno = e.raw_os_error().unwrap_or(os::errno::EIO) as u64;
    os::send_message(sock, &[SPAWN_FAILED, index as u64, errno], None, false)
}

/// What the template forks its workers with.
struct Spawner<'a> {
    region: &'a Region,
    event_fd: BorrowedFd<'a>,
    /// The template's pid: the workers' parent.
    me: u32,
    config: WorkerConfig,
    /// Fork with `os::fork_single_threaded` (no fork handlers): the
    /// template knows it has a single thread.
    quiet: bool,
}

impl Spawner<'_> {
    /// Forks worker `index`, the supervisor's worker number `born`.
    fn spawn(&self, index: usize, born: u32) -> io::Result<Child> {
        if index >= self.region.layout().workers {
            return Err(io::Error::from_raw_os_error(os::errno::EINVAL));
        }
        let forked = if self.quiet {
            // SAFETY: the template has one thread (`quiet`) and holds no lock
            // here (it forks from its loop, outside `malloc` and stdio), so
            // the child needs no fork handler; it runs only `worker_main`,
            // which never returns.
            unsafe { os::fork_single_threaded() }
        } else {
            // SAFETY: the child runs only `worker_main`, which never
            // returns. Either the template has one thread after all (it
            // could not tell: no `/proc`), or its other thread (one a fork
            // handler started, which it should not) holds no lock the worker
            // takes but perhaps `malloc`'s and stdio's, which libc's `fork`
            // takes across the fork and resets.
            unsafe { os::fork() }
        };
        match forked? {
            // The worker closes the template's socket with every other
            // descriptor it inherited but its event fd (`worker_main`).
            os::Forked::Child => worker_main(WorkerCtx {
                region: self.region,
                index,
                born,
                event_fd: self.event_fd,
                parent: self.me,
                config: self.config,
            }),
            os::Forked::Parent(pid) => match os::pidfd_open(pid) {
                Ok(pidfd) => Ok(Child { index, pid, pidfd }),
                Err(e) => {
                    os::kill_now(pid);
                    os::wait_raw(pid);
                    Err(e)
                }
            },
        }
    }
}
