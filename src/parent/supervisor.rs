//! Supervision: asking the template for workers, handling their deaths
//! (retrying the lost range, or failing its job), enforcing the task timeout,
//! and replacing workers.
//!
//! The supervisor is a thread of the parent that never runs user code. The
//! template process (`template.rs`) forks and reaps the workers and reports
//! each death with its exit status; the supervisor owns every decision. The
//! order of a death's handling is in `design.md` ("Supervision"); its effect
//! on the slot (Unclaim, Requeue and Repend, or Fail, then Clear) is part of
//! the slot protocol, in `src/worker/README.md` ("A worker dies").

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::os;
use crate::parent::core::{
    Core, STOP_GRACEFUL, STOP_KILL, STOP_NONE, TERMINATED, lock, saturating_deadline,
};
use crate::parent::ring::Verdict;
use crate::parent::stuck::{self, Subject, Watch};
use crate::shm::futex;
use crate::shm::layout::{LOC_CAP, MSG_CAP, WorkerRecord};
use crate::shm::region::Region;
use crate::shm::states::*;
use crate::worker::template::{PanicHook, Report, StdioProbe, Template};

/// How long workers get to exit after a graceful shutdown request before
/// they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How often to retry starting a worker that could not be started, at
/// first; each failure in a row doubles the wait, up to `MAX_BACKOFF`.
const RESPAWN_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between attempts to start workers.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A worker that dies this soon after it started, outside any job and its
/// initializer, may be killed by whatever kills every new worker: its
/// replacement waits for the backoff, so that such a loop never spins.
const DIED_AT_START: Duration = Duration::from_millis(100);
/// How long a spawn request may go unanswered before the template is taken
/// for wedged and replaced.
const SPAWN_PATIENCE: Duration = Duration::from_secs(10);
/// How long a worker may be gone without the template reporting its death
/// before the template is taken for wedged (stopped, say) and replaced.
const REPORT_PATIENCE: Duration = Duration::from_secs(10);
/// At most this many spawn requests are unanswered at once.
const MAX_REQUESTS: usize = 32;
/// How long to wait for killed processes to exit before giving up on them.
const KILL_PATIENCE: Duration = Duration::from_secs(5);
/// How often the supervisor puts back the shared words the parent owns (and
/// after every death).
const REPAIR_EVERY: Duration = Duration::from_millis(250);

/// Where the task timeout saw a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sighting {
    /// Running a range: its slot, start and start time.
    Range(u32, u64, u64),
    /// In a slot between two ranges, holding a claim it has not recorded
    /// (after a claim and before its Begin, or after its Exit and before it
    /// is counted), at this (odd) count of steps (`WorkerRecord::steps`).
    Between(u32, u64),
}

/// Worker `w` as the supervisor knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Worker {
    Missing,
    Requested(Instant),
    Live(u32),
    /// Forked, but its pidfd never reached us (our descriptor limit): the
    /// template is asked to kill process `pid` (once `asked`), and index `w`
    /// is not asked for again until its death is reported, so that two
    /// workers never share a record.
    Discarding {
        pid: u32,
        since: Instant,
        asked: bool,
    },
}

struct Supervisor {
    inner: Arc<Core>,
    template: Option<Template>,
    workers: Vec<Worker>,
    /// Worker `w` was killed for standing past the task timeout where it
    /// was last seen.
    timed_out: Vec<Option<Sighting>>,
    /// What worker `w` was last seen doing that the supervisor times from
    /// its own first sighting (a range with a start time from the future,
    /// or an unrecorded claim held between two ranges), and when it was
    /// first seen so.
    sighted: Vec<Option<(Sighting, u64)>>,
    /// The next start of worker `w` replaces a crashed one.
    replacing: Vec<bool>,
    /// The error of the last failed start, while some worker is missing.
    respawn_error: Option<io::Error>,
    /// Set until every first worker runs (`start_all`): a start reported
    /// then does not clear `respawn_error`, so any failed start fails the
    /// build even when the template reports a later worker's success in
    /// the same batch.
    building: bool,
    /// Failed starts in a row (the backoff doubles with each).
    failures: u32,
    /// No worker or template is started before this.
    retry_at: Instant,
    /// When worker `w`'s start was reported.
    spawned_at: Vec<Instant>,
    /// Worker `w` was discarded by us (its pidfd was lost): a range it was
    /// running gets one more try than `max_retries`.
    discarded: Vec<bool>,
    /// When `Ring::repair` last ran.
    repaired: Instant,
    /// The panic hook the next template gives its workers.
    hook: PanicHook,
    /// Worker `w` as last seen by the watch for waits nothing can end.
    watch: Vec<Watch>,
    /// Worker `w` was killed blocked forever in this range (slot, start,
    /// end): its job fails with `WouldDeadlock`.
    stuck: Vec<Option<(u32, u64, u64)>>,
    /// When worker `w`'s process was first seen gone while the template had
    /// not reported its death.
    unreported: Vec<Option<Instant>>,
    /// Workers asked of the template so far: the next one asked for is
    /// number `asked + 1` (`WorkerCtx::born`; the template's first workers,
    /// forked unasked, are number 0). A lost range is kept for workers from
    /// the next number on (`RetryEntry::after`).
    asked: u32,
    /// The last repair left a retry kept for new workers: repair rounds
    /// come every `REPAIR_EVERY` until it is taken or opened
    /// (`Ring::open_retries`), not only once a second.
    keeping: bool,
}

/// Starts the supervisor thread, waits until every worker runs, then hands
/// the pool's template and workers to the thread. On error, the workers
/// already started and the template are killed and reaped.
pub(crate) fn start(inner: Arc<Core>, template: Template) -> Result<thread::JoinHandle<()>, Error> {
    let n = inner.workers;
    let now = Instant::now();
    let mut sup = Supervisor {
        inner,
        workers: (0..n)
            .map(|w| {
                if w < template.unasked {
                    Worker::Requested(now)
                } else {
                    Worker::Missing
                }
            })
            .collect(),
        template: Some(template),
        timed_out: vec![None; n],
        sighted: vec![None; n],
        replacing: vec![false; n],
        respawn_error: None,
        building: true,
        failures: 0,
        retry_at: now,
        spawned_at: vec![now; n],
        discarded: vec![false; n],
        repaired: now,
        hook: PanicHook::Own,
        watch: (0..n).map(|_| Watch::default()).collect(),
        stuck: vec![None; n],
        unreported: vec![None; n],
        asked: 0,
        keeping: false,
    };
    // The thread is started first, so that its start overlaps with the
    // template's forks (this thread would only wait for them); it waits
    // for the supervisor, which this thread keeps until the workers run:
    // the pool is ready the moment the last one reports, with no hand-over,
    // and a failure is cleaned up here.
    let (hand_over, taken) = mpsc::sync_channel::<Supervisor>(1);
    let spawned = thread::Builder::new()
        .name("shmpool-supervisor".into())
        .spawn(move || {
            // The sender is dropped without a send if the pool failed to
            // start.
            let Ok(mut sup) = taken.recv() else {
                return;
            };
            // Whatever happens in the loop (even a bug that panics), the
            // workers are killed and reaped and `gone` is set, so that
            // `terminate`, `join` and `Drop`, which wait for it, return.
            if catch_unwind(AssertUnwindSafe(|| sup.run())).is_err() {
                // A bug: the pool ends as if terminated. Marked before
                // `finish` fails the jobs under the ring lock, so that a
                // submission either comes before and is failed with them,
                // or sees the pool terminated (`submit` checks under that
                // lock): none waits for workers that will never come.
                sup.inner.advance_life(TERMINATED);
                // ORDERING: SeqCst: as `terminate`'s store.
                sup.inner.stop.store(STOP_KILL, SeqCst);
            }
            sup.kill_all();
            sup.finish();
        });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            sup.kill_all();
            sup.finish();
            return Err(e.into());
        }
    };
    if let Err(e) = sup.start_all() {
        sup.kill_all();
        sup.finish();
        // Ends the thread.
        drop(hand_over);
        let _ = handle.join();
        return Err(e);
    }
    match hand_over.send(sup) {
        Ok(()) => Ok(handle),
        // The thread is gone (it cannot be, short of a bug): no one would
        // watch the workers.
        Err(mpsc::SendError(mut sup)) => {
            sup.kill_all();
            sup.finish();
            let _ = handle.join();
            Err(Error::Io(io::Error::other(
                "the supervisor thread ended at its start",
            )))
        }
    }
}

impl Supervisor {
    fn stop(&self) -> u8 {
        // ORDERING: SeqCst: pairs with the stores in `Pool::terminate` and
        // `Pool::join`, made before they poke us.
        self.inner.stop.load(SeqCst)
    }

    /// Requests every worker and waits until all of them run (a pool whose
    /// initializer failed is built broken: its jobs fail with that error).
    /// Any failed start fails the build: the caller then kills and reaps
    /// whatever was started, so a pool is built with all its workers or not
    /// at all.
    fn start_all(&mut self) -> Result<(), Error> {
        let deadline = saturating_deadline(SPAWN_PATIENCE);
        let mut reforked = false;
        loop {
            let all_live = self.workers.iter().all(|w| matches!(w, Worker::Live(_)));
            if all_live || self.inner.broken.get().is_some() {
                self.building = false;
                return Ok(());
            }
            if let Some(e) = self.respawn_error.take() {
                return Err(Error::Io(e));
            }
            if self.template.is_none() && self.hook == PanicHook::Inherited && !reforked {
                // The template could not set its panic hook (see
                // `PanicHook`): one more, keeping the parent's.
                reforked = true;
                self.fork_template();
                continue;
            }
            if self.template.is_none() {
                return Err(Error::Io(io::Error::other(
                    "the template process died while starting the workers",
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the template process did not start the workers",
                )));
            }
            for w in 0..self.workers.len() {
                if self.workers[w] == Worker::Missing && Instant::now() >= self.retry_at {
                    self.request(w);
                }
            }
            if self.respawn_error.is_some() {
                continue;
            }
            let Some(template) = &self.template else {
                continue;
            };
            let mut fds = [
                os::watch(template.sock.as_fd()),
                os::watch(template.pidfd.as_fd()),
            ];
            let _ = os::poll(&mut fds, left.as_millis().clamp(1, 100) as i32);
            let died = os::fired(&fds[1]);
            self.read_reports();
            if died {
                self.template_died();
            }
        }
    }

    fn run(&mut self) {
        loop {
            match self.stop() {
                STOP_KILL => return,
                STOP_GRACEFUL => return self.graceful(),
                _ => {}
            }
            let inner = self.inner.clone();
            let mut fds = vec![os::watch(inner.ctl_fd())];
            if let Some(t) = &self.template {
                fds.push(os::watch(t.sock.as_fd()));
                fds.push(os::watch(t.pidfd.as_fd()));
            }
            let missing = self.template.is_none()
                || self.workers.iter().any(|w| !matches!(w, Worker::Live(_)));
            let mut timeout = if missing {
                RESPAWN_RETRY
            } else {
                Duration::from_secs(1)
            };
            if let Some(t) = self.inner.config.task_timeout {
                timeout =
                    timeout.min((t / 8).clamp(Duration::from_millis(1), Duration::from_millis(50)));
            }
            if self.any_busy() {
                timeout = timeout.min(stuck::WATCH_TICK);
            }
            if self.keeping {
                // Opened at the first round after it was kept for 500 ms:
                // with the idle poll, that round came at 1 s (a replacement
                // in its initializer is not yet busy when the poll starts).
                timeout = timeout.min(REPAIR_EVERY);
            }
            if os::poll(&mut fds, timeout.as_millis().max(1) as i32).is_err() {
                thread::sleep(RESPAWN_RETRY);
            }
            let poked = os::fired(&fds[0]);
            let template_fired = fds.len() == 3 && os::fired(&fds[2]);
            drop(fds);
            if poked {
                os::eventfd_drain(self.inner.ctl_fd());
            }
            // `terminate` stores STOP_KILL before it kills the workers, so
            // deaths it caused are never taken for crashes (their jobs fail
            // with `Terminated`, in `finish`).
            if self.stop() == STOP_KILL {
                return;
            }
            self.read_reports();
            if template_fired {
                self.template_died();
            }
            self.enforce_timeouts();
            self.watch_stuck();
            if self.repaired.elapsed() >= REPAIR_EVERY {
                self.repair();
                self.check_reports();
            }
            self.respawn_missing();
        }
    }

    /// Puts back the shared words the parent owns (see `Ring::repair`).
    fn repair(&mut self) {
        let running = self.stop() == STOP_NONE;
        // No new worker is coming for a kept retry while the pool stops, or
        // while a worker waits for the backoff or a failed start.
        let none_coming = !running || self.workers.contains(&Worker::Missing);
        let opened = {
            let mut ring = self.inner.ring();
            ring.repair(&self.inner.region, running);
            ring.open_retries(&self.inner.region, none_coming)
        };
        self.keeping = opened.keeping;
        self.inner.region.control().sem.post(opened.tokens);
        self.inner.drain_unread_completions();
        self.repaired = Instant::now();
    }

    /// Replaces the template if a worker has been gone for
    /// `REPORT_PATIENCE` without the template reporting its death. Only the
    /// template reaps workers and reports their deaths, so a template that
    /// was stopped (a task can `SIGSTOP` its parent) would otherwise leave
    /// that worker's job waiting forever, `task_timeout` or not, and the
    /// worker never replaced. Replacing it settles every worker's record.
    fn check_reports(&mut self) {
        let mut wedged = false;
        {
            let procs = lock(&self.inner.procs);
            for (w, state) in self.workers.iter().enumerate() {
                let gone = matches!(state, Worker::Live(_))
                    && procs.workers[w]
                        .as_ref()
                        .is_some_and(|(_, pidfd)| os::pidfd_exited(pidfd, 0));
                self.unreported[w] = match (gone, self.unreported[w]) {
                    (false, _) => None,
                    (true, None) => Some(Instant::now()),
                    (true, Some(since)) => {
                        wedged |= since.elapsed() >= REPORT_PATIENCE;
                        Some(since)
                    }
                };
            }
        }
        if wedged {
            self.unreported.fill(None);
            self.template_died();
        }
    }

    /// Handles every report waiting on the template's socket.
    fn read_reports(&mut self) {
        loop {
            let Some(template) = &self.template else {
                return;
            };
            match template.receive() {
                Ok(Some(report)) => self.on_report(report),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Short of kernel memory: the report waits for next round.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(os::errno::ENOMEM | os::errno::ENOBUFS)
                    ) =>
                {
                    return;
                }
                // End of file, or garbage: the template is gone or broken.
                Ok(None) | Err(_) => return self.template_died(),
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Spawned { index, pid, pidfd } => {
                if !matches!(self.workers.get(index), Some(Worker::Requested(_))) {
                    // Not asked for (cannot happen): do not keep it.
                    os::pidfd_kill(&pidfd);
                    return;
                }
                self.workers[index] = Worker::Live(pid);
                self.spawned_at[index] = Instant::now();
                lock(&self.inner.procs).workers[index] = Some((pid, pidfd));
                if !self.building {
                    self.respawn_error = None;
                }
                self.failures = 0;
                if std::mem::take(&mut self.replacing[index]) {
                    // ORDERING: Relaxed: a statistic; the pid was published
                    // under the procs lock before this.
                    self.inner.stats.worker_restarts.fetch_add(1, Relaxed);
                }
            }
            Report::PidfdLost { index, pid } => self.pidfd_lost(index, pid),
            Report::SpawnFailed { index, error } => {
                if let Some(w @ Worker::Requested(_)) = self.workers.get_mut(index) {
                    *w = Worker::Missing;
                }
                self.start_failed(error);
            }
            Report::Died { index, pid, status } => match self.workers.get(index) {
                Some(&Worker::Live(p)) if p == pid => {
                    if self.died_at_start(index, status) {
                        self.delay_starts();
                    }
                    self.on_death(index, pid, status);
                }
                Some(&Worker::Discarding { pid: p, .. }) if p == pid => {
                    self.on_discarded(index, pid, status);
                }
                _ => {}
            },
        }
    }

    /// A start failed: no worker (or template) is started until the
    /// backoff has passed, and if no worker is alive, unfinished jobs fail
    /// with `error` (`respawn_missing`).
    fn start_failed(&mut self, error: io::Error) {
        self.delay_starts();
        self.respawn_error = Some(error);
    }

    /// Puts off the next start: 100 ms after the first failure in a row,
    /// doubling up to `MAX_BACKOFF`, so that a limit that refuses every
    /// start costs a few attempts a second, never a spin.
    fn delay_starts(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let wait = RESPAWN_RETRY
            .saturating_mul(1 << (self.failures - 1).min(8))
            .min(MAX_BACKOFF);
        self.retry_at = saturating_deadline(wait);
    }

    /// Worker `w` (process `pid`) was forked, but its pidfd could not be
    /// received: this process is at its descriptor limit. Without the
    /// pidfd it cannot be signalled safely, so it is not kept: the template
    /// is asked to kill it, and the start counts as failed (with the
    /// descriptor error) and is retried after the backoff. Never a template
    /// death.
    fn pidfd_lost(&mut self, w: usize, pid: u32) {
        if !matches!(self.workers.get(w), Some(Worker::Requested(_))) {
            // Not asked for (cannot happen): have it killed anyway.
            if let Some(template) = &self.template {
                let _ = template.kill_worker(w, pid);
            }
            return;
        }
        self.workers[w] = Worker::Discarding {
            pid,
            since: Instant::now(),
            asked: false,
        };
        self.discard(w);
        let error = match &self.template {
            Some(t) => os::descriptor_available(&t.sock).err(),
            None => None,
        };
        self.start_failed(error.unwrap_or_else(|| io::Error::from_raw_os_error(os::errno::EMFILE)));
    }

    /// Asks the template to kill discarded worker `w`, unless it was asked
    /// already; a full socket is tried again next round.
    fn discard(&mut self, w: usize) {
        let Worker::Discarding {
            pid,
            since,
            asked: false,
        } = self.workers[w]
        else {
            return;
        };
        let Some(template) = &self.template else {
            return;
        };
        // Any error but a full socket means the socket is broken: the
        // template's death, which takes the worker along, follows.
        if !matches!(template.kill_worker(w, pid), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        {
            self.workers[w] = Worker::Discarding {
                pid,
                since,
                asked: true,
            };
        }
    }

    /// Discarded worker `w` (process `pid`) is dead. It ran as a worker
    /// until it was killed, so a range it had claimed is settled like any
    /// death's (with one more try, since no task failed); it is not counted
    /// as a crash. Its index is asked for again after the backoff.
    fn on_discarded(&mut self, w: usize, pid: u32, status: os::ExitStatus) {
        self.workers[w] = Worker::Missing;
        if self.stop() == STOP_KILL {
            return;
        }
        self.discarded[w] = true;
        self.settle(w, pid, status);
        self.repair();
        self.inner
            .region
            .control()
            .sem
            .post_all(self.workers.len() as u32);
    }

    /// Whether live worker `w` died within `DIED_AT_START` of its start,
    /// outside any job and its initializer, and not recycled: then its
    /// replacement waits for the backoff (a kill from outside, or a worker
    /// that cannot set itself up, must not make restarts spin). Jobs are
    /// not failed for it: the next worker may live.
    fn died_at_start(&self, w: usize, status: os::ExitStatus) -> bool {
        if self.stop() != STOP_NONE || self.spawned_at[w].elapsed() >= DIED_AT_START {
            return false;
        }
        let rec = self.inner.region.record(w);
        // ORDERING: Relaxed: the process is gone; its stores are visible.
        let idle = rec.slot.load(Relaxed) == NO_SLOT && rec.init.load(Relaxed) != INIT_MARK;
        idle && status.code != Some(EXIT_RECYCLED)
    }

    /// Asks the template for worker `w`, unless `MAX_REQUESTS` requests are
    /// already unanswered (the socket's buffers are bounded; a supervisor
    /// blocked on a full socket while the template is blocked sending it
    /// reports would deadlock).
    fn request(&mut self, w: usize) {
        let waiting = self
            .workers
            .iter()
            .filter(|x| matches!(x, Worker::Requested(_)))
            .count();
        if waiting >= MAX_REQUESTS {
            return;
        }
        let Some(template) = &self.template else {
            return;
        };
        // The worker's pidfd will need a descriptor here: with none free,
        // the kernel would drop it on arrival, so do not fork the worker.
        if let Err(e) = os::descriptor_available(&template.sock) {
            return self.start_failed(e);
        }
        let born = self.asked.saturating_add(1);
        match template.request(w, born) {
            Ok(()) => {
                self.asked = born;
                self.workers[w] = Worker::Requested(Instant::now());
            }
            // The socket is full of requests: ask again next round.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.start_failed(e),
        }
    }

    /// Worker `w` (process `pid`) has exited and been reaped. Decide what its
    /// death means for the job it was in (retry the range, or fail the job),
    /// clear its record, and replace it.
    fn on_death(&mut self, w: usize, pid: u32, status: os::ExitStatus) {
        self.workers[w] = Worker::Missing;
        lock(&self.inner.procs).workers[w] = None;
        if self.stop() == STOP_KILL {
            // `terminate` killed it: `finish` fails its job with `Terminated`
            // and then clears the record.
            return;
        }
        let rec = self.inner.region.record(w);
        // ORDERING: Relaxed: the process is gone; its stores are visible.
        // The mark is shared memory, which any task may have written, so
        // it counts only where an honest worker could have left it: not in
        // a range (the mark is cleared before the first and after each),
        // and not with an exit code a worker gives only after its
        // initializer (recycled, retired). A forged mark can then only
        // misname the death of an idle worker that a task also killed.
        let in_init = rec.init.load(Relaxed) == INIT_MARK
            && !in_a_range(&self.inner.region, rec)
            && !matches!(status.code, Some(EXIT_RECYCLED | EXIT_RETIRED));
        let idle = rec.slot.load(Relaxed) == NO_SLOT;
        self.settle(w, pid, status);
        if in_init && self.inner.config.worker.initializer.is_some() {
            // It died before its initializer finished: a panic (exit code
            // 102), or a crash, an exit or a limit inside the initializer.
            return self.initializer_failed(status);
        }
        match status.code {
            // ORDERING: Relaxed: a statistic.
            Some(EXIT_RECYCLED) if !in_init && idle => {
                _ = self.inner.stats.workers_recycled.fetch_add(1, Relaxed)
            }
            _ => self.replacing[w] = true,
        }
        if self.stop() == STOP_NONE && Instant::now() >= self.retry_at {
            self.request(w);
        }
        // A scribbling worker may have left damage behind.
        self.repair();
        // The dead worker may have taken tokens with it, and a retry may wait:
        // let the others look (a post past the wake cap; `shm/README.md`).
        self.inner
            .region
            .control()
            .sem
            .post_all(self.workers.len() as u32);
    }

    /// Applies the death of worker `w` (process `pid`, gone) to the job its
    /// record names, if any, then clears the record for its successor.
    fn settle(&mut self, w: usize, pid: u32, status: os::ExitStatus) {
        let deadline = self.timed_out[w].take();
        let spare = u32::from(std::mem::take(&mut self.discarded[w]));
        let inner = self.inner.clone();
        let region = &*inner.region;
        let rec = region.record(w);
        // ORDERING: Acquire: the process is gone, so all its stores are
        // visible; Acquire states the intent.
        let slot = rec.slot.load(Acquire);
        let (start, end) = (rec.start.load(Relaxed), rec.end.load(Relaxed));
        let running = in_a_range(region, rec);
        let started = rec.started_ns.load(Relaxed);
        let steps = rec.steps.load(Relaxed);
        let mark = rec.oom.swap(0, Relaxed);
        let oom = mark == OOM_MARK;
        let heap_write = mark == HEAP_WRITE_MARK;
        // A dead worker is in no range: cleared before a retry of its range
        // can run and complete the job, whose harvest would otherwise take
        // this stale word for a worker inside a finished job. Its `slot`
        // keeps the slot undrained until its job's fate is recorded.
        // ORDERING: SeqCst: read by Drain and Scan.
        rec.in_range.store(NO_SLOT, SeqCst);
        // Killed for a timeout, and still where it stood too long (it may
        // have moved on between the check and the kill).
        let timed_out = match deadline {
            Some(Sighting::Range(s, st, t)) => running && (s, st, t) == (slot, start, started),
            Some(Sighting::Between(s, n)) => !running && (s, n) == (slot, steps),
            None => false,
        };
        // Killed blocked forever in this very range.
        let stuck = self.stuck[w].take() == Some((slot, start, end)) && running;
        let mut ring = inner.ring();
        // A slot the ring has not reserved yet never held a job (the record
        // was scribbled), and touching its pages would allocate them.
        if (slot as usize) < ring.len() {
            let s = slot as usize;
            ring.release_retries(region, s, w);
            // Entries may have come free since a range was held back.
            ring.requeue_held_back(region, s);
            let config = &inner.config;
            // Kept for a worker started from now on (the replacement asked
            // for below): one that has not run this job's earlier ranges,
            // nor leaked what they leaked. Any worker, if none will come.
            let after = if self.stop() == STOP_NONE {
                self.asked.saturating_add(1)
            } else {
                0
            };
            ring.lost(region, s, after, |len| {
                let range =
                    (running && start < end && end <= len).then_some(start as usize..end as usize);
                if timed_out {
                    return Verdict::Fail(Error::TaskTimedOut {
                        pid,
                        after: config.task_timeout.unwrap_or_default(),
                        range,
                    });
                }
                if heap_write {
                    // Not retried: it would write again.
                    return Verdict::Fail(Error::HeapWrite { pid, range });
                }
                if stuck {
                    // Not retried: it would block again.
                    return Verdict::Fail(Error::WouldDeadlock {
                        reason: stuck::TASK_REASON,
                    });
                }
                let error = match config.memory_limit {
                    Some(limit) if oom => Error::MemoryLimit {
                        pid,
                        limit,
                        range: range.clone(),
                    },
                    _ => Error::WorkerDied {
                        pid,
                        signal: status.signal,
                        exit_code: status.code,
                        range: range.clone(),
                    },
                };
                match range {
                    Some(r) => Verdict::Range(r, config.max_retries.saturating_add(spare), error),
                    None => Verdict::Fail(error),
                }
            });
            // Clear: under the ring lock and after the job's fate is
            // recorded: a Drain that no longer sees this worker also sees
            // the failure or the queued retry.
            // ORDERING: SeqCst: Clear, read by Drain and Scan.
            rec.slot.store(NO_SLOT, SeqCst);
            drop(ring);
            futex::wake(&region.slot(s).desc.state, u32::MAX);
            inner.poke_result_thread();
        } else {
            drop(ring);
            // ORDERING: SeqCst: Clear, as above (a scribbled value is also
            // cleared).
            rec.slot.store(NO_SLOT, SeqCst);
        }
        // ORDERING: Relaxed: only this thread and the next worker use them.
        rec.phase.store(PHASE_IDLE, Relaxed);
        rec.init.store(0, Relaxed);
    }

    /// A worker died in its initializer: the pool cannot run tasks as
    /// configured. Mark it broken, fail every unfinished job, start no more
    /// workers.
    fn initializer_failed(&mut self, status: os::ExitStatus) {
        let err = &self.inner.region.control().init_err;
        // ORDERING: Acquire: pairs with the worker's Record (a Release store
        // of READY).
        let message = if err.state.load(Acquire) == ERR_READY {
            let n = (err.msg_len.load(Relaxed) as usize).min(MSG_CAP);
            let bytes: Vec<u8> = err.msg[..n].iter().map(|b| b.load(Relaxed)).collect();
            let l = (err.loc_len.load(Relaxed) as usize).min(LOC_CAP);
            let loc: Vec<u8> = err.loc[..l].iter().map(|b| b.load(Relaxed)).collect();
            let mut m = String::from_utf8_lossy(&bytes).into_owned();
            if !loc.is_empty() {
                m.push_str(&format!(" (at {})", String::from_utf8_lossy(&loc)));
            }
            m
        } else {
            match (status.signal, status.code) {
                (Some(sig), _) => format!(
                    "the worker was killed by {} in the initializer",
                    crate::error::signal_name(sig)
                ),
                (None, Some(code)) => {
                    format!("the worker exited with code {code} in the initializer")
                }
                (None, None) => "the worker died in the initializer".to_owned(),
            }
        };
        let _ = self.inner.broken.set(message);
        let mut ring = self.inner.ring();
        let busy: Vec<usize> = ring.busy_slots().collect();
        for s in busy {
            ring.fail(&self.inner.region, s, |_| self.inner.broken_error());
        }
        drop(ring);
        self.inner.poke_result_thread();
    }

    /// The template exited (or its socket broke). Its workers die with it:
    /// wait for each, handle it as a death, and fork a new template.
    fn template_died(&mut self) {
        let Some(template) = self.template.take() else {
            return;
        };
        let hook = self.hook.after(template.kill_and_reap());
        let hook_failed = hook != self.hook;
        self.hook = hook;
        // A template that dies before all its workers run (killed again
        // and again, or broken) is replaced after the backoff, not at once;
        // one that could not set its panic hook is replaced at once.
        if !hook_failed && self.workers.iter().any(|w| !matches!(w, Worker::Live(_))) {
            self.delay_starts();
        }
        let unknown = os::ExitStatus {
            signal: None,
            code: None,
        };
        // A requested (or discarded) worker may have been forked and be
        // running, but we hold no pidfd for it: it got its death signal when
        // the template exited; give it a moment to be gone, then settle its
        // record like any other.
        if self
            .workers
            .iter()
            .any(|w| matches!(w, Worker::Requested(_) | Worker::Discarding { .. }))
        {
            thread::sleep(Duration::from_millis(20));
        }
        // All killed first, then waited for together: a worker slow to die
        // (in uninterruptible sleep) costs the patience once, not once each.
        {
            let procs = lock(&self.inner.procs);
            for (w, state) in self.workers.iter().enumerate() {
                if let (Worker::Live(_), Some((_, pidfd))) = (state, &procs.workers[w]) {
                    os::pidfd_kill(pidfd);
                }
            }
        }
        let deadline = saturating_deadline(KILL_PATIENCE);
        for w in 0..self.workers.len() {
            match self.workers[w] {
                Worker::Live(pid) => {
                    if let Some((_, pidfd)) = &lock(&self.inner.procs).workers[w] {
                        let left = deadline.saturating_duration_since(Instant::now());
                        os::pidfd_exited(pidfd, left.as_millis() as i32);
                        // Orphans come to us if we are a subreaper or PID 1.
                        os::reap_pidfd(pidfd);
                    }
                    self.on_death(w, pid, unknown);
                }
                Worker::Requested(_) | Worker::Discarding { .. } => {
                    self.workers[w] = Worker::Missing;
                    self.settle(w, 0, unknown);
                }
                Worker::Missing => {}
            }
        }
    }

    /// Forks a new template (the last one died); a failure is remembered
    /// and retried.
    fn fork_template(&mut self) {
        let inner = &self.inner;
        match Template::fork(
            &inner.region,
            inner.done_fd(),
            inner.config.worker,
            StdioProbe::start(),
            self.hook,
            0,
        ) {
            Ok(t) => self.template = Some(t),
            Err(e) => self.start_failed(e),
        }
    }

    /// Kills workers that have run one range, or held one claim they have
    /// not recorded, for longer than the task timeout; their deaths fail
    /// their jobs with `TaskTimedOut`.
    fn enforce_timeouts(&mut self) {
        let Some(limit) = self.inner.config.task_timeout else {
            return;
        };
        let now = os::monotonic_ns();
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let procs = lock(&self.inner.procs);
        for w in 0..self.workers.len() {
            let Some((_, pidfd)) = &procs.workers[w] else {
                continue;
            };
            if self.timed_out[w].is_some() {
                continue;
            }
            let rec = self.inner.region.record(w);
            // ORDERING: `in_a_range` loads Acquire: pairs with the worker's
            // Begin (a Release store of the phase, after `started_ns` and
            // its range) and Enter; the loads after it are Relaxed, ordered
            // by it. A stale reading of the slot or the steps delays a
            // verdict by a tick at most.
            let at = if in_a_range(&self.inner.region, rec) {
                let (slot, start) = (rec.slot.load(Relaxed), rec.start.load(Relaxed));
                Sighting::Range(slot, start, rec.started_ns.load(Relaxed))
            } else {
                // Between ranges, only a worker that holds a claim it has
                // not recorded (an odd count of steps) can keep a job
                // waiting; one that holds none is left alone, however long
                // it stands still (a busy machine may leave it unscheduled).
                let (slot, steps) = (rec.slot.load(Relaxed), rec.steps.load(Relaxed));
                if slot == NO_SLOT || steps % 2 == 0 {
                    self.sighted[w] = None;
                    continue;
                }
                Sighting::Between(slot, steps)
            };
            // A range started at a time in the past is timed from then. A
            // start time from the future can only be scribbled; left to
            // itself it would never expire, and a range that also runs
            // forever (its context scribbled too) would hang its job. Such a
            // range is timed from when we first saw it, a tick late at most;
            // so is an unrecorded claim, held for a few instructions unless
            // the worker was stopped there.
            let began = match at {
                Sighting::Range(_, _, started) if started <= now => started,
                _ => match self.sighted[w] {
                    Some((seen, first)) if seen == at => first,
                    _ => {
                        self.sighted[w] = Some((at, now));
                        now
                    }
                },
            };
            if now - began > limit_ns {
                // A worker that has already died (killed from outside, say)
                // but whose death the template has not reported yet is not
                // overrunning: its report settles it, and its range may run
                // again. Taking it for a timeout failed its job with
                // `TaskTimedOut` whenever the report came later than the limit.
                if os::pidfd_exited(pidfd, 0) {
                    continue;
                }
                os::pidfd_kill(pidfd);
                self.timed_out[w] = Some(at);
            }
        }
    }

    /// Whether any worker records a range or an initializer in progress:
    /// then the supervisor looks at least every `stuck::WATCH_TICK`.
    fn any_busy(&self) -> bool {
        (0..self.workers.len()).any(|w| self.subject(w).is_some())
    }

    /// What worker `w`'s record says it is doing, for the watch.
    fn subject(&self, w: usize) -> Option<Subject> {
        let rec = self.inner.region.record(w);
        // ORDERING: Relaxed: a heuristic; a verdict needs two agreeing looks
        // at the process itself, and the death is settled from the record
        // after the process is gone.
        if in_a_range(&self.inner.region, rec) {
            return Some(Subject::Range {
                slot: rec.slot.load(Relaxed),
                start: rec.start.load(Relaxed),
                end: rec.end.load(Relaxed),
            });
        }
        // ORDERING: Relaxed, as above.
        let init = rec.init.load(Relaxed) == INIT_MARK;
        (init && self.inner.config.worker.initializer.is_some()).then_some(Subject::Init)
    }

    /// Kills workers blocked forever on a lock they inherited locked
    /// (`stuck.rs`): a task's job then fails with `WouldDeadlock`, an
    /// initializer's pool is broken with that reason.
    fn watch_stuck(&mut self) {
        for w in 0..self.workers.len() {
            let Worker::Live(pid) = self.workers[w] else {
                self.watch[w] = Watch::default();
                continue;
            };
            let subject = self.subject(w);
            if self.stuck[w].is_some() || !self.watch[w].step(subject, pid) {
                continue;
            }
            match subject {
                Some(Subject::Range { slot, start, end }) => {
                    self.stuck[w] = Some((slot, start, end));
                }
                Some(Subject::Init) => {
                    // Set before the death, which then breaks the pool with
                    // this message (`initializer_failed`).
                    let _ = self.inner.broken.set(stuck::INIT_REASON.to_owned());
                }
                None => continue,
            }
            if let Some((_, pidfd)) = &lock(&self.inner.procs).workers[w] {
                os::pidfd_kill(pidfd);
            }
            self.watch[w] = Watch::default();
        }
    }

    /// Starts missing workers (and a template, if there is none), once the
    /// backoff after a failed start has passed. If no worker is alive and
    /// none can be started, unfinished jobs can never run: fail them.
    fn respawn_missing(&mut self) {
        if self.stop() != STOP_NONE || self.inner.broken.get().is_some() {
            return;
        }
        if self.template.is_none() && Instant::now() >= self.retry_at {
            self.fork_template();
        }
        for w in 0..self.workers.len() {
            match self.workers[w] {
                // A failed request moves `retry_at`: the rest wait too.
                Worker::Missing if Instant::now() >= self.retry_at => self.request(w),
                Worker::Requested(at) | Worker::Discarding { since: at, .. }
                    if at.elapsed() > SPAWN_PATIENCE =>
                {
                    // The template does not answer: replace it.
                    return self.template_died();
                }
                Worker::Discarding { asked: false, .. } => self.discard(w),
                _ => {}
            }
        }
        let none_alive = !self.workers.iter().any(|w| matches!(w, Worker::Live(_)));
        if none_alive && (self.template.is_none() || self.respawn_error.is_some()) {
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

    /// Asks every worker to exit once it is idle, and waits (up to `GRACE`)
    /// until they have, or until no job is left in any slot (a cancelled
    /// job's running ranges finish); `kill_all` then ends the idle rest at
    /// once instead of waiting for each exit in turn (`join` took 0.8 ms).
    fn graceful(&mut self) {
        let control = self.inner.region.control();
        // ORDERING: SeqCst: Shutdown, pairs with the workers' SeqCst load
        // after waking; the post below wakes them (`shm/README.md`).
        control.shutdown.0.store(1, SeqCst);
        control.sem.post_all(2 * self.workers.len() as u32);
        let deadline = saturating_deadline(GRACE);
        while self.workers.iter().any(|w| matches!(w, Worker::Live(_)))
            && self.inner.ring().busy_slots().next().is_some()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(template) = &self.template else {
                return;
            };
            if left.is_zero() {
                return;
            }
            let mut fds = [
                os::watch(template.sock.as_fd()),
                os::watch(template.pidfd.as_fd()),
                os::watch(self.inner.ctl_fd()),
            ];
            // A tick: a slot drains without telling us.
            let _ = os::poll(&mut fds, left.as_millis().clamp(1, 10) as i32);
            // `terminate` upgrades a graceful stop.
            if self.stop() == STOP_KILL {
                return;
            }
            os::eventfd_drain(self.inner.ctl_fd());
            let died = os::fired(&fds[1]);
            self.read_reports();
            if died {
                self.template_died();
            }
        }
    }

    /// Kills every worker still alive, dismisses the template (which reaps
    /// them and exits), then checks that each worker has exited and reaps
    /// any orphan that came to us.
    fn kill_all(&mut self) {
        let workers: Vec<(u32, OwnedFd)> = {
            let mut procs = lock(&self.inner.procs);
            procs.workers.iter_mut().filter_map(Option::take).collect()
        };
        for (_, pidfd) in &workers {
            os::pidfd_kill(pidfd);
        }
        // Dismissed at once: the template reaps its workers as they die and
        // exits after the last, so their teardowns overlap with its own
        // (join 0.49-0.63 → 0.44-0.56 ms,
        // in interleaved runs).
        self.workers.iter_mut().for_each(|w| *w = Worker::Missing);
        if let Some(template) = self.template.take() {
            template.dismiss(Duration::from_secs(1));
        }
        let deadline = saturating_deadline(KILL_PATIENCE);
        for (_, pidfd) in &workers {
            let left = deadline.saturating_duration_since(Instant::now());
            os::pidfd_exited(pidfd, left.as_millis() as i32);
        }
        // Reaped by the template by now, unless it died or was killed first
        // (a worker slow to tear down outlasting its grace): such orphans
        // come to us if we are a subreaper or PID 1. Reaping is `WNOHANG`
        // and fails harmlessly for a process that is not our child.
        workers.iter().for_each(|(_, pidfd)| os::reap_pidfd(pidfd));
    }

    /// Every worker is gone: fail what can no longer run, clear the records
    /// (so every slot drains) and tell whoever waits.
    fn finish(&mut self) {
        let region = &self.inner.region;
        let busy: Vec<usize> = {
            let mut ring = self.inner.ring();
            // Jobs are failed before the records are cleared, so that no drain
            // check sees an unfinished job with no worker and no failure.
            let busy: Vec<usize> = ring.busy_slots().collect();
            for &s in &busy {
                ring.fail(region, s, |_| Error::Terminated);
            }
            for w in 0..self.workers.len() {
                // ORDERING: SeqCst: Clear, read by Drain.
                region.record(w).slot.store(NO_SLOT, SeqCst);
                // ORDERING: SeqCst: as above.
                region.record(w).in_range.store(NO_SLOT, SeqCst);
            }
            busy
        };
        let mut procs = lock(&self.inner.procs);
        procs.workers.iter_mut().for_each(|p| *p = None);
        procs.gone = true;
        drop(procs);
        self.inner.procs_cv.notify_all();
        // Wake every blocked caller and the result thread to re-check. A
        // blocked caller sleeps on the slot of its unfinished job, so only
        // busy slots can have one (a wake per slot of a 256-slot ring cost
        // 0.3-0.5 ms of every drop); a missed wake would still be caught
        // by the caller's `WAIT_TICK`.
        for s in busy {
            futex::wake(&region.slot(s).desc.state, u32::MAX);
        }
        self.inner.poke_result_thread();
    }
}

/// Whether worker record `rec` says its worker is inside a range: its
/// `phase` says so, or its `in_range` names a slot of the ring. An honest
/// worker sets `phase` before `in_range` and clears it after, so either
/// word alone tells; reading both means that a task that overwrites one of
/// them (an idle `phase`, say) is still timed, watched and settled as
/// running a range.
fn in_a_range(region: &Region, rec: &WorkerRecord) -> bool {
    // ORDERING: Acquire: pairs with the worker's Begin (a Release store of
    // `phase`) or Enter (SeqCst), which follow its range's words.
    rec.phase.load(Acquire) == PHASE_RUNNING
        // (Garbage there rarely names a slot of the ring: it would have an
        // idle worker timed.)
        || (rec.in_range.load(Acquire) as usize) < region.layout().ring
}
