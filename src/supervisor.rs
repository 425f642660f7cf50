//! Supervision: forking workers, noticing their deaths, failing the job a
//! dead worker was in, and replacing it.
//!
//! The supervisor is a thread of the parent that never runs user code. It
//! forks every worker itself, because `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked a child exits: forking from the caller of `Pool::new`
//! would kill the workers as soon as that thread ended. It watches one pidfd
//! per worker with `poll`, so a death is seen at once and a pid is never
//! confused with a recycled one. The order of a death's handling is in
//! `design.md` ("Crash handling").

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{ForkResult, fork};

use crate::error::Error;
use crate::inner::{Inner, STOP_GRACEFUL, STOP_KILL, STOP_NONE, lock};
use crate::os;
use crate::states::{NO_SLOT, PHASE_IDLE, PHASE_RUNNING};
use crate::worker::{WorkerCtx, worker_main};

/// How long workers get to exit after a graceful shutdown request before
/// they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How often to retry forking a worker that could not be replaced.
const RESPAWN_RETRY: Duration = Duration::from_millis(100);

struct Supervisor {
    inner: Arc<Inner>,
    /// Worker `w`'s pid and pidfd, while it lives.
    live: Vec<Option<(u32, OwnedFd)>>,
    /// The error of the last failed respawn, while some worker is missing.
    respawn_error: Option<io::Error>,
}

/// Starts the supervisor thread, which forks the workers. Returns once every
/// worker is running, or with the error that prevented it (after killing the
/// workers it had already made).
pub(crate) fn start(inner: Arc<Inner>) -> Result<thread::JoinHandle<()>, Error> {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("shmpool-supervisor".into())
        .spawn(move || {
            let workers = inner.workers;
            let mut sup = Supervisor {
                inner,
                live: (0..workers).map(|_| None).collect(),
                respawn_error: None,
            };
            let started = (0..workers).try_for_each(|w| sup.spawn(w));
            let ok = started.is_ok();
            let _ = tx.send(started);
            if ok {
                // Whatever happens in the loop (even a bug that panics), the
                // workers are killed and reaped and `gone` is set, so that
                // `terminate`, `join` and `Drop`, which wait for it, return.
                let _ = catch_unwind(AssertUnwindSafe(|| sup.run()));
            }
            sup.kill_all();
            sup.finish();
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(Error::Io(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(Error::Io(io::Error::other(
                "the supervisor thread failed to start",
            )))
        }
    }
}

impl Supervisor {
    fn run(&mut self) {
        loop {
            // ORDERING: SeqCst: pairs with the stores in `Pool::terminate` and
            // `Pool::join`, made before they poke us.
            match self.inner.stop.load(SeqCst) {
                STOP_KILL => return,
                STOP_GRACEFUL => return self.graceful(),
                _ => {}
            }
            let mut fds = vec![pollfd(&self.inner.ctl_fd)];
            let watched: Vec<usize> = (0..self.live.len())
                .filter(|&w| self.live[w].is_some())
                .collect();
            fds.extend(
                watched
                    .iter()
                    .map(|&w| pollfd(&self.live[w].as_ref().expect("filtered").1)),
            );
            let missing = watched.len() < self.live.len();
            let timeout = if missing {
                RESPAWN_RETRY.as_millis() as i32
            } else {
                1000
            };
            if os::poll(&mut fds, timeout).is_err() {
                thread::sleep(RESPAWN_RETRY);
            }
            if fds[0].revents != 0 {
                os::eventfd_drain(&self.inner.ctl_fd);
            }
            // ORDERING: SeqCst: `terminate` stores STOP_KILL before it kills
            // the workers, so deaths it caused are never taken for crashes
            // (their jobs fail with `Terminated`, in `finish`).
            if self.inner.stop.load(SeqCst) == STOP_KILL {
                return;
            }
            for (i, &w) in watched.iter().enumerate() {
                if fds[i + 1].revents != 0 {
                    self.on_death(w);
                }
            }
            self.respawn_missing();
        }
    }

    /// Forks worker `w`.
    fn spawn(&mut self, w: usize) -> io::Result<()> {
        let inner = &self.inner;
        let ctx = WorkerCtx {
            region: &inner.region,
            index: w,
            event_fd: inner.done_fd.as_raw_fd(),
            parent: os::getpid(),
            spin: inner.spin,
        };
        // SAFETY: the child runs only `worker_main`, which never returns,
        // touches no lock that another parent thread could hold at the moment
        // of the fork, and ends with `_exit` (design.md, "Fork safety").
        match unsafe { fork() }.map_err(io::Error::from)? {
            ForkResult::Child => worker_main(ctx),
            ForkResult::Parent { child } => {
                let pid = child.as_raw() as u32;
                let fd = match os::pidfd_open(pid) {
                    Ok(fd) => fd,
                    Err(e) => {
                        os::kill_now(pid);
                        os::reap(pid, true);
                        return Err(e);
                    }
                };
                self.live[w] = Some((pid, fd));
                lock(&inner.procs).pids[w] = Some(pid);
                Ok(())
            }
        }
    }

    /// Replaces worker `w`; counted once the new worker is running and
    /// listed, so `Stats::worker_restarts` never runs ahead of `worker_pids`.
    fn respawn(&mut self, w: usize) {
        match self.spawn(w) {
            Ok(()) => {
                self.respawn_error = None;
                // ORDERING: Relaxed: a statistic; `spawn` published the pid
                // under the procs lock before this.
                self.inner.stats.worker_restarts.fetch_add(1, Relaxed);
            }
            Err(e) => self.respawn_error = Some(e),
        }
    }

    /// Worker `w`'s pidfd is readable: it has exited. Reap it, fail the job
    /// it was in, clear its record, replace it.
    fn on_death(&mut self, w: usize) {
        let Some((pid, _fd)) = self.live[w].take() else {
            return;
        };
        // Forget the pid before reaping it: until it is reaped it cannot be
        // recycled, so `terminate` (which kills what `procs` lists, under its
        // lock) never signals a stranger.
        lock(&self.inner.procs).pids[w] = None;
        let status = os::reap(pid, true).unwrap_or(os::ExitStatus {
            signal: None,
            code: None,
        });
        let region = self.inner.region.clone();
        let region = &*region;
        let rec = region.record(w);
        // ORDERING: Acquire: the process is reaped, so all its stores are
        // visible; Acquire states the intent.
        let slot = rec.slot.load(Acquire);
        let (start, end) = (rec.start.load(Relaxed), rec.end.load(Relaxed));
        let running = rec.phase.load(Relaxed) == PHASE_RUNNING;
        let ring_len = region.layout().ring;
        if (slot as usize) < ring_len {
            let s = slot as usize;
            let mut ring = self.inner.ring();
            ring.fail(region, s, |len| Error::WorkerDied {
                pid,
                signal: status.signal,
                exit_code: status.code,
                range: (running && start < end && end <= len)
                    .then_some(start as usize..end as usize),
            });
            // Cleared under the ring lock and after `fail`: a drain check
            // that no longer sees this worker also sees the failure.
            // ORDERING: SeqCst: read by the drain check.
            rec.slot.store(NO_SLOT, SeqCst);
            drop(ring);
            os::futex_wake(&region.slot(s).desc.state, u32::MAX);
            self.inner.poke_result_thread();
        } else {
            // ORDERING: SeqCst, as above (a scribbled value is also cleared).
            rec.slot.store(NO_SLOT, SeqCst);
        }
        // ORDERING: Relaxed: only this thread and the next worker use it.
        rec.phase.store(PHASE_IDLE, Relaxed);
        // ORDERING: SeqCst: see `run`.
        if self.inner.stop.load(SeqCst) == STOP_NONE {
            self.respawn(w);
        }
        // The dead worker may have taken tokens with it: let the others look.
        region.control().sem.post(self.live.len() as u32);
    }

    /// Retries forking workers that could not be replaced. If none is alive
    /// and forking still fails, unfinished jobs can never run: fail them.
    fn respawn_missing(&mut self) {
        // ORDERING: SeqCst: see `run`.
        if self.inner.stop.load(SeqCst) != STOP_NONE {
            return;
        }
        for w in 0..self.live.len() {
            if self.live[w].is_none() {
                self.respawn(w);
            }
        }
        if self.live.iter().all(Option::is_none) {
            if let Some(e) = &self.respawn_error {
                let mut ring = self.inner.ring();
                let busy: Vec<usize> = ring.busy_slots().collect();
                for s in busy {
                    ring.fail(&self.inner.region, s, |_| {
                        Error::Io(io::Error::new(
                            e.kind(),
                            format!("no worker could be started: {e}"),
                        ))
                    });
                }
                drop(ring);
                self.inner.poke_result_thread();
            }
        }
    }

    /// Asks every worker to exit once it is idle, waits up to `GRACE`, then
    /// kills the rest.
    fn graceful(&mut self) {
        let control = self.inner.region.control();
        // ORDERING: SeqCst: pairs with the workers' SeqCst load after waking;
        // the post below wakes them.
        control.shutdown.0.store(1, SeqCst);
        control.sem.post(2 * self.live.len() as u32);
        let deadline = Instant::now() + GRACE;
        while self.live.iter().any(Option::is_some) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let watched: Vec<usize> = (0..self.live.len())
                .filter(|&w| self.live[w].is_some())
                .collect();
            let mut fds: Vec<libc::pollfd> = watched
                .iter()
                .map(|&w| pollfd(&self.live[w].as_ref().expect("filtered").1))
                .collect();
            fds.push(pollfd(&self.inner.ctl_fd));
            let _ = os::poll(&mut fds, (deadline - now).as_millis().max(1) as i32);
            // ORDERING: SeqCst: see `run`; `terminate` upgrades a graceful stop.
            if self.inner.stop.load(SeqCst) == STOP_KILL {
                return;
            }
            os::eventfd_drain(&self.inner.ctl_fd);
            for (i, &w) in watched.iter().enumerate() {
                if fds[i].revents != 0 {
                    if let Some((pid, _)) = self.live[w].take() {
                        lock(&self.inner.procs).pids[w] = None;
                        os::reap(pid, true);
                    }
                }
            }
        }
    }

    /// Kills and reaps every worker still alive.
    fn kill_all(&mut self) {
        for (pid, _) in self.live.iter().flatten() {
            os::kill_now(*pid);
        }
        for w in 0..self.live.len() {
            if let Some((pid, _)) = self.live[w].take() {
                lock(&self.inner.procs).pids[w] = None;
                os::reap(pid, true);
            }
        }
    }

    /// Every worker is gone: fail what can no longer run, clear the records
    /// (so every slot drains) and tell whoever waits.
    fn finish(&mut self) {
        let region = &self.inner.region;
        {
            let mut ring = self.inner.ring();
            // Jobs are failed before the records are cleared, so that no drain
            // check sees an unfinished job with no worker and no failure.
            let busy: Vec<usize> = ring.busy_slots().collect();
            for s in busy {
                ring.fail(region, s, |_| Error::Terminated);
            }
            for w in 0..self.live.len() {
                // ORDERING: SeqCst: read by the drain check.
                region.record(w).slot.store(NO_SLOT, SeqCst);
            }
        }
        let mut procs = lock(&self.inner.procs);
        procs.pids.iter_mut().for_each(|p| *p = None);
        procs.gone = true;
        drop(procs);
        self.inner.procs_cv.notify_all();
        // Wake every blocked caller and the result thread to re-check.
        for s in 0..region.layout().ring {
            os::futex_wake(&region.slot(s).desc.state, u32::MAX);
        }
        self.inner.poke_result_thread();
    }
}

fn pollfd(fd: &OwnedFd) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}
