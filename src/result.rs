//! The asynchronous side: `AsyncResult`, the cell it waits on, and the
//! pool's result thread, which delivers outcomes, runs callbacks and wakes
//! wakers.
//!
//! The result thread harvests finished asynchronous jobs (see `ring.rs`),
//! gives each outcome its type, runs the job's callbacks, and only then
//! marks the cell done, notifies blocked threads and wakes the task that
//! polled it. Between harvests it sleeps on the pool's eventfd, which a
//! worker that finishes an asynchronous job writes while the result thread
//! has announced that it may sleep (the doorbell, `shm::sync::Doorbell`).
//! Nothing here depends on a particular async runtime.

use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::os;
use crate::parent::core::{Core, OPEN, deadline_after, lock};
use crate::parent::ring::{Deliver, RawOut};

type Callback<R> = Box<dyn FnOnce(&Result<R, Error>) + Send>;

enum State<R> {
    Pending {
        callbacks: Vec<Callback<R>>,
        waker: Option<Waker>,
    },
    Done(Result<R, Error>),
    /// Complete, but the outcome is lent to a callback registered after
    /// completion; callbacks registered meanwhile wait in `late`. It lasts
    /// one `on_complete` call, which borrows the `AsyncResult`: meanwhile
    /// other threads can only look (`ready`, `wait`, which find the job
    /// complete), never take the outcome or poll the future. The thread
    /// running the late callbacks is marked (see `CallbackScope`) and does
    /// not wait.
    Lent {
        ok: bool,
        late: Vec<Callback<R>>,
    },
    /// The outcome was handed out; `ok` remembers whether it succeeded.
    Taken {
        ok: bool,
    },
}

/// Where an asynchronous job's outcome lands.
pub(crate) struct Cell<R> {
    state: Mutex<State<R>>,
    done: Condvar,
    /// Threads blocked on `done`, counted under the `state` lock: the
    /// outcome's arrival notifies only if there are any (a notification is
    /// a system call, once per job, that a result nobody waits on for
    /// does not need).
    blocked: AtomicU32,
    /// Gives a raw outcome its type.
    convert: fn(RawOut, usize) -> R,
    len: usize,
    /// The most elements seen done, so `progress` never goes backwards.
    progress: AtomicU64,
    /// Set once a callback is registered: dropping the `AsyncResult` then
    /// no longer cancels the job (the callback gets the real outcome).
    listened: AtomicBool,
}

thread_local! {
    /// The cells whose callbacks this thread is running now, innermost
    /// last. A wait on one of them from this thread would wait for itself.
    static RUNNING_CALLBACKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as running the callbacks of one cell, for as long as
/// it lives (a guard, so a panic that escapes cannot leave the mark behind).
/// Holds whether the mark was set: not while the thread's locals are being
/// destroyed (a result dropped by a thread-local destructor).
struct CallbackScope(bool);

impl CallbackScope {
    fn enter(cell: usize) -> CallbackScope {
        CallbackScope(
            RUNNING_CALLBACKS
                .try_with(|r| r.borrow_mut().push(cell))
                .is_ok(),
        )
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        if self.0 {
            let _ = RUNNING_CALLBACKS.try_with(|r| r.borrow_mut().pop());
        }
    }
}

/// Whether this thread is running completion callbacks (of any result).
pub(crate) fn in_callback() -> bool {
    RUNNING_CALLBACKS
        .try_with(|r| !r.borrow().is_empty())
        .unwrap_or(false)
}

/// Whether this thread is running the callbacks of `cell`.
fn running_callbacks_of(cell: usize) -> bool {
    RUNNING_CALLBACKS
        .try_with(|r| r.borrow().contains(&cell))
        .unwrap_or(false)
}

/// Runs user code (a callback, a waker) so that nothing it does can unwind
/// into the thread that runs it: its panic is caught (the panic hook has
/// reported it), and so is a panic from dropping the panic's payload, whose
/// own payload is then leaked rather than risk a third.
pub(crate) fn run_contained(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
    }
}

impl<R> Cell<R> {
    pub(crate) fn new(convert: fn(RawOut, usize) -> R, len: usize) -> Self {
        Cell {
            state: Mutex::new(State::Pending {
                callbacks: Vec::new(),
                waker: None,
            }),
            done: Condvar::new(),
            blocked: AtomicU32::new(0),
            convert,
            len,
            progress: AtomicU64::new(0),
            listened: AtomicBool::new(false),
        }
    }

    /// Wakes the threads blocked on the outcome, if any. Called after the
    /// state changed under the lock and the lock was released: a thread
    /// counted itself in `blocked` under that lock before it waited, so it
    /// is counted here, or it found the new state and did not wait.
    fn notify(&self) {
        // ORDERING: Relaxed: the state lock orders the waiter's count before
        // this load (the waiter released the lock in `wait_timeout` after
        // counting; we took it after that to change the state).
        if self.blocked.load(Relaxed) != 0 {
            self.done.notify_all();
        }
    }

    /// An identity for `RUNNING_CALLBACKS`: the cell's address.
    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

impl<R: Send + 'static> Deliver for Cell<R> {
    fn deliver(&self, outcome: Result<RawOut, Error>) {
        let outcome = outcome.map(|raw| (self.convert)(raw, self.len));
        // Whichever thread delivers (the result thread, a cancelling thread)
        // is marked while it runs this cell's callbacks: a wait on this cell
        // from one of them returns at once instead of waiting for itself.
        let _scope = CallbackScope::enter(self.id());
        // Callbacks run outside the lock (they may call `ready()`), before the
        // outcome becomes visible; ones registered meanwhile run next round.
        loop {
            let callbacks = {
                let mut state = lock(&self.state);
                match &mut *state {
                    State::Pending { callbacks, .. } if !callbacks.is_empty() => {
                        std::mem::take(callbacks)
                    }
                    State::Pending { waker, .. } => {
                        let waker = waker.take();
                        *state = State::Done(outcome);
                        drop(state);
                        self.notify();
                        if let Some(w) = waker {
                            // A waker is foreign code too.
                            run_contained(|| w.wake());
                        }
                        return;
                    }
                    State::Done(_) | State::Lent { .. } | State::Taken { .. } => return,
                }
            };
            for cb in callbacks {
                // A panicking callback must not take the delivering thread
                // down (the result thread serves every job of the pool).
                run_contained(|| cb(&outcome));
            }
        }
    }
}

/// The pending result of [`Pool::apply_async`] or [`Pool::map_async`].
///
/// Wait for it with [`get`](Self::get), [`wait`](Self::wait) or
/// [`wait_timeout`](Self::wait_timeout), poll it with
/// [`ready`](Self::ready), register a callback with
/// [`on_complete`](Self::on_complete), or `.await` it under any executor.
/// It owns everything the job needs, so it is `'static` and `Send`: it can be
/// spawned or stored freely.
///
/// **A registered callback always runs**, exactly once, with the job's real
/// outcome, whether or not the `AsyncResult` is kept: Python's
/// `map_async(f, xs, callback=cb)` is `pool.map_async(&xs, f)?.on_complete(cb)`.
///
/// **Dropping an unfinished `AsyncResult` that has no callback cancels its
/// job** (see [`cancel`](Self::cancel)), as dropping a future does in async
/// Rust: nobody could learn its outcome. To let such a job run on
/// unwatched, call [`detach`](Self::detach). [`cancel`](Self::cancel) cancels
/// a job with callbacks too; they then see `Err(Error::Cancelled)`.
///
/// [`Pool::apply_async`]: crate::Pool::apply_async
/// [`Pool::map_async`]: crate::Pool::map_async
///
/// # Example
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let r = pool.apply_async(6u32, |x| x * 7)?;
/// r.on_complete(|out| assert_eq!(*out.as_ref().unwrap(), 42));
/// assert_eq!(r.get()?, 42);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[must_use = "dropping an unfinished AsyncResult with no callback cancels its job; \
              register on_complete() or call detach() to let it run"]
pub struct AsyncResult<R> {
    cell: Arc<Cell<R>>,
    inner: Arc<Core>,
    /// The job's slot and sequence number, while dropping the result should
    /// cancel it.
    ticket: Option<(usize, u64)>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = !matches!(&*lock(&self.cell.state), State::Pending { .. });
        f.debug_struct("AsyncResult")
            .field("ready", &ready)
            .finish()
    }
}

impl<R> AsyncResult<R> {
    /// Cancels the job, unless it is already complete: it completes at once
    /// with `Err(Error::Cancelled)` (its callbacks run now, in this thread,
    /// and waiters wake; [`Pool::join`](crate::Pool::join) waits for those
    /// callbacks too). Workers claim none of its remaining ranges. A range
    /// that is already running is left to finish, its output discarded: no
    /// worker is killed (a kill costs a fork and the worker's warm state, and
    /// would cut a task off mid-write; [`Builder::task_timeout`] is the tool
    /// for runaway ranges). The job's shared memory is reused only once no
    /// worker is in it.
    ///
    /// [`Builder::task_timeout`]: crate::Builder::task_timeout
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs = vec![10u64; 10_000];
    /// let slow = pool.map_async(&xs, |ms| { std::thread::sleep(Duration::from_millis(ms)); ms })?;
    /// slow.cancel();
    /// assert!(matches!(slow.get(), Err(shmpool::Error::Cancelled)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn cancel(&self) {
        if let Some((s, seq)) = self.ticket {
            self.inner.cancel(s, seq);
        }
    }
}

impl<R: Send + 'static> AsyncResult<R> {
    pub(crate) fn new(cell: Arc<Cell<R>>, inner: Arc<Core>, ticket: Option<(usize, u64)>) -> Self {
        AsyncResult {
            cell,
            inner,
            ticket,
        }
    }

    /// `(done, total)`, counted in elements: how far the job has got. It
    /// never goes backwards, and it reads `(total, total)` once the job is
    /// complete (successfully or not; elements skipped after a failure count
    /// as done). `total` is the input's length (1 for `apply_async`).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.map_async(&[1u8; 1000], |x| x + 1)?;
    /// let (done, total) = r.progress();
    /// assert!(done <= total && total == 1000);
    /// r.wait();
    /// assert_eq!(r.progress(), (1000, 1000));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn progress(&self) -> (usize, usize) {
        let total = self.cell.len;
        let now = if self.ready() {
            total as u64
        } else {
            match self.ticket {
                Some((s, seq)) => self.inner.done_so_far(s, seq).unwrap_or(total as u64),
                None => total as u64,
            }
        };
        // ORDERING: Relaxed: a monotonic statistic; `fetch_max` keeps it from
        // going backwards whatever order threads observe.
        let best = self.cell.progress.fetch_max(now, Relaxed).max(now);
        (best.min(total as u64) as usize, total)
    }

    /// Lets the job run to completion unwatched: dropping this result no
    /// longer cancels it, and its callbacks (if any) run when it completes.
    /// (A result with a callback is never cancelled by its drop; `detach`
    /// is for results without one.)
    ///
    /// ```
    /// use std::sync::mpsc;
    /// let pool = shmpool::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async(20u32, |x| x + 1)?;
    /// r.on_complete(move |out| tx.send(*out.as_ref().unwrap()).unwrap());
    /// r.detach();
    /// assert_eq!(rx.recv().unwrap(), 21);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn detach(mut self) {
        self.ticket = None;
    }

    /// Blocks until the job is complete and returns its result.
    ///
    /// # Errors
    /// The job's error (`TaskPanicked`, `WorkerDied`, `Terminated`, ...), or
    /// `WouldDeadlock` when waiting would wait for the calling thread itself:
    /// from a callback of this same result (whichever thread runs it: the
    /// result thread, a thread that called [`cancel`](Self::cancel), or one
    /// that registered a callback on a finished result), or from any
    /// callback on the pool's result thread while the job is unfinished
    /// (only that thread could deliver it), or, while it is unfinished,
    /// from another process: a task that reached the result through a
    /// static, or a forked copy of the program.
    ///
    /// # Example
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let squares = pool.map_async(&[1u64, 2, 3], |x| x * x)?;
    /// assert_eq!(&squares.get()?[..], &[1, 4, 9]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get(mut self) -> Result<R, Error> {
        self.block(None, true)
            .map_err(|reason| Error::WouldDeadlock { reason })?;
        self.take()
    }

    /// Blocks until the job is complete, or until `timeout` passes; then
    /// returns the result, or [`Error::WaitTimedOut`] leaving the job running
    /// (call it again, or [`get`](Self::get), to go on waiting). After it has
    /// returned the result once, it returns `InvalidArgument`. A timeout too
    /// large to represent (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    /// As [`get`](Self::get), plus `WaitTimedOut`. A task that ran past the
    /// pool's [`task_timeout`](crate::Builder::task_timeout) is
    /// [`Error::TaskTimedOut`], the job's own failure.
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let mut r = pool.apply_async(2u8, |x| x + 1)?;
    /// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 3);
    /// let again = r.get_timeout(Duration::from_secs(10));
    /// assert!(matches!(again, Err(shmpool::Error::InvalidArgument { .. }))); // taken
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        self.block(Some(timeout), true)
            .map_err(|reason| Error::WouldDeadlock { reason })?;
        if matches!(
            &*lock(&self.cell.state),
            State::Pending { .. } | State::Lent { .. }
        ) {
            return Err(Error::WaitTimedOut { after: timeout });
        }
        self.take()
    }

    /// Blocks until the job is complete. Where waiting would wait for the
    /// calling thread itself (see [`get`](Self::get)), returns at once with
    /// the job still incomplete.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(1i32, |x| -x)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn wait(&self) {
        let _ = self.block(None, false);
    }

    /// Blocks until the job is complete or `timeout` passes; returns whether
    /// it is complete. A timeout does not cancel the job; one too large to
    /// represent (`Duration::MAX`) waits forever. Returns at once where
    /// [`wait`](Self::wait) does.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(1i32, |x| -x)?;
    /// assert!(r.wait_timeout(Duration::from_secs(10)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let _ = self.block(Some(timeout), false);
        self.ready()
    }

    /// Whether the job is complete (its result is available without waiting).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(1i32, |x| -x)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        !matches!(&*lock(&self.cell.state), State::Pending { .. })
    }

    /// `None` while the job runs; then whether it succeeded.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(0u32, |x| 10 / x)?; // panics in the worker
    /// r.wait();
    /// assert_eq!(r.successful(), Some(false));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn successful(&self) -> Option<bool> {
        match &*lock(&self.cell.state) {
            State::Pending { .. } => None,
            State::Done(r) => Some(r.is_ok()),
            State::Lent { ok, .. } | State::Taken { ok } => Some(*ok),
        }
    }

    /// Runs `callback` with the job's outcome exactly once: in the pool's
    /// result thread when the job completes, in the thread that calls
    /// [`cancel`](Self::cancel), or at once, in this thread, if the job is
    /// already complete. Callbacks run before blocked `get`/`wait` calls
    /// return, and `get` still returns the result afterwards. Keep callbacks
    /// short: they hold up the delivery of other results. A panicking
    /// callback is caught and ignored (even one whose panic payload panics
    /// when dropped).
    ///
    /// Registering a callback means someone listens: dropping this result
    /// no longer cancels the job, so the callback sees its real outcome
    /// (Python's `callback=`). [`Pool::join`](crate::Pool::join) waits for
    /// every callback registered before the job completed.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// let pool = shmpool::Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// // The result is dropped at once; the job still runs, the callback too.
    /// pool.map_async(&[1u32, 2, 3], |x| x * 10)?
    ///     .on_complete(move |out| tx.send(out.as_ref().unwrap().to_vec()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), vec![10, 20, 30]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// let pool = shmpool::Pool::new(2)?;
    /// let seen = Arc::new(AtomicU32::new(0));
    /// let r = pool.apply_async(20u32, |x| x + 1)?;
    /// let s = seen.clone();
    /// r.on_complete(move |out| s.store(*out.as_ref().unwrap(), Ordering::SeqCst));
    /// assert_eq!(r.get()?, 21);
    /// assert_eq!(seen.load(Ordering::SeqCst), 21);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn on_complete(&self, callback: impl FnOnce(&Result<R, Error>) + Send + 'static) {
        // ORDERING: SeqCst: read by this result's own drop, on this or a
        // later owner's thread (ownership moved with a happens-before).
        self.cell.listened.store(true, SeqCst);
        let mut state = lock(&self.cell.state);
        let outcome = match &mut *state {
            State::Pending { callbacks, .. } => return callbacks.push(Box::new(callback)),
            State::Lent { late, .. } => return late.push(Box::new(callback)),
            State::Taken { ok } => {
                // Only reachable through a manually polled future that
                // already returned the outcome.
                let reason = if *ok {
                    "the result was already taken"
                } else {
                    "the error was already taken"
                };
                drop(state);
                let _scope = CallbackScope::enter(self.cell.id());
                run_contained(|| callback(&Err(Error::invalid(reason))));
                return;
            }
            State::Done(outcome) => {
                let ok = outcome.is_ok();
                let lent = State::Lent {
                    ok,
                    late: Vec::new(),
                };
                match std::mem::replace(&mut *state, lent) {
                    State::Done(outcome) => outcome,
                    _ => unreachable!("matched Done above"),
                }
            }
        };
        drop(state);
        // Run outside the lock (the callback may use this result), then run
        // any callback registered meanwhile, then give the outcome back.
        // This thread is marked meanwhile: its waits on this result return.
        let _scope = CallbackScope::enter(self.cell.id());
        let mut next: Vec<Callback<R>> = vec![Box::new(callback)];
        loop {
            for cb in next {
                run_contained(|| cb(&outcome));
            }
            let mut state = lock(&self.cell.state);
            match &mut *state {
                State::Lent { late, .. } if !late.is_empty() => next = std::mem::take(late),
                _ => {
                    *state = State::Done(outcome);
                    drop(state);
                    self.cell.notify();
                    return;
                }
            }
        }
    }

    /// Waits for completion (forever, or up to `timeout`), and with `value`
    /// also for an outcome lent to a late callback to be given back (`get`
    /// never finds one lent: see `State::Lent`). Fails
    /// only when waiting would deadlock: this thread is running this
    /// result's callbacks (so the outcome cannot become visible before it
    /// returns), or it is the result thread (the only one that could
    /// deliver an unfinished job).
    fn block(&self, timeout: Option<Duration>, value: bool) -> Result<(), &'static str> {
        // A deadline too far away to represent is no deadline: wait forever.
        let deadline = timeout.and_then(deadline_after);
        let mut state = lock(&self.cell.state);
        loop {
            if let Some(reason) = self.never_delivered(&state) {
                return Err(reason);
            }
            let complete = match &*state {
                State::Pending { .. } => false,
                State::Lent { .. } => !value,
                State::Done(_) | State::Taken { .. } => true,
            };
            if complete {
                break;
            }
            let wait = match deadline {
                None => Duration::from_secs(1),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(Duration::from_secs(1)),
                    _ => break,
                },
            };
            // ORDERING: Relaxed: counted under the state lock, which orders
            // it before the delivering thread's look (`Cell::notify`).
            self.cell.blocked.fetch_add(1, Relaxed);
            state = self
                .cell
                .done
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            // ORDERING: Relaxed: as above.
            self.cell.blocked.fetch_sub(1, Relaxed);
        }
        Ok(())
    }

    /// Why the job, in `state`, can never complete for this thread, if it
    /// cannot: only the pool's result thread, in the process that submitted
    /// the job, delivers an outcome. So a thread of another process (a
    /// task, which sees a snapshot of the result; a forked copy of the
    /// program), the result thread itself, and a callback of this result
    /// would each wait forever.
    fn never_delivered(&self, state: &State<R>) -> Option<&'static str> {
        let unfinished = matches!(state, State::Pending { .. } | State::Lent { .. });
        if unfinished && !self.inner.in_owner() {
            Some(
                "waited for an unfinished asynchronous result in a task or a forked process; \
                 only the process that submitted the job receives its outcome",
            )
        } else if matches!(state, State::Pending { .. }) && self.inner.on_result_thread()
            || unfinished && running_callbacks_of(self.cell.id())
        {
            Some("waited for an unfinished job from inside a completion callback")
        } else {
            None
        }
    }

    fn take(&mut self) -> Result<R, Error> {
        let mut state = lock(&self.cell.state);
        if !matches!(&*state, State::Pending { .. } | State::Lent { .. }) {
            // Complete: nothing left to cancel on drop.
            self.ticket = None;
        }
        match std::mem::replace(&mut *state, State::Taken { ok: false }) {
            State::Done(outcome) => {
                *state = State::Taken {
                    ok: outcome.is_ok(),
                };
                outcome
            }
            State::Taken { ok } => {
                *state = State::Taken { ok };
                Err(Error::invalid("the result was already taken"))
            }
            unfinished @ (State::Pending { .. } | State::Lent { .. }) => {
                *state = unfinished;
                Err(Error::invalid("the job is not complete"))
            }
        }
    }
}

impl<R> Drop for AsyncResult<R> {
    /// Cancels the job if it is unfinished, not detached, and nobody
    /// listens (no callback was registered: a callback gets the real
    /// outcome).
    fn drop(&mut self) {
        if let Some((s, seq)) = self.ticket {
            // ORDERING: SeqCst: see `on_complete`.
            if self.inner.in_owner_process() && !self.cell.listened.load(SeqCst) {
                self.inner.cancel(s, seq);
            }
        }
    }
}

impl<R: Send + 'static> Future for AsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        {
            let mut state = lock(&this.cell.state);
            // Where no one would ever wake it, as `get` (another process;
            // the result thread, which delivers it only once the callback
            // that polls it returns; a callback of this result).
            if let Some(reason) = this.never_delivered(&state) {
                return Poll::Ready(Err(Error::WouldDeadlock { reason }));
            }
            match &mut *state {
                State::Pending { waker, .. } => {
                    let replaced = match waker {
                        Some(w) if w.will_wake(cx.waker()) => None,
                        _ => waker.replace(cx.waker().clone()),
                    };
                    drop(state);
                    // An executor's waker is foreign code: the one it
                    // replaces is dropped outside the lock (as delivery
                    // wakes outside it), so that a drop that ends a task,
                    // and whatever that task held, runs under no lock of
                    // ours.
                    drop(replaced);
                    return Poll::Pending;
                }
                State::Lent { .. } => {
                    // Not reached: a poll needs `&mut self`, and the outcome
                    // is lent only while `on_complete` borrows it.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                State::Done(_) | State::Taken { .. } => {}
            }
        }
        Poll::Ready(this.take())
    }
}

/// The result thread's tick while asynchronous jobs are unfinished: it
/// kicks them at least this often.
const ASYNC_TICK: Duration = Duration::from_millis(100);

/// Looks between two readings of the clock while the result thread does not
/// sleep (in a stream of completions, a look takes a microsecond or so).
const CLOCK_EVERY: u32 = 64;

/// The result thread: delivers asynchronous outcomes until the pool is shut
/// down and nothing is left to deliver.
pub(crate) fn result_loop(inner: Arc<Core>) {
    let _ = inner.result_thread.set(std::thread::current().id());
    // Set when the last sleep ended with the tick, not a ring: the next
    // look kicks the unfinished jobs (once per tick).
    let mut ticked = false;
    // When the unfinished jobs were last kicked (or first seen unfinished):
    // they are kicked again once a tick has passed since, even if no sleep
    // ends with the tick. Rings that keep ending every sleep early, or
    // completions that keep the thread from sleeping at all, would
    // otherwise put off the kick of a job whose wake-up was lost for as
    // long as they go on. The clock is read at the first look after a
    // sleep and at every `CLOCK_EVERY`th look, not at each.
    let mut kicked: Option<Instant> = None;
    let mut unclocked: u32 = 0;
    let doorbell = &inner.region.control().doorbell;
    // Set once a look found nothing: the next look is the last before
    // sleeping, made after Announce (workers write the eventfd only from
    // then on).
    let mut announced = false;
    loop {
        if announced {
            doorbell.announce();
        }
        let (batch, busy, exit) = {
            let mut ring = inner.ring();
            inner.collect_async(&mut ring);
            let batch = std::mem::take(&mut ring.ready);
            let busy = inner.any_async(&ring);
            let mut kick = std::mem::take(&mut ticked);
            if busy {
                unclocked += 1;
                if unclocked >= CLOCK_EVERY {
                    unclocked = 0;
                    kick |= kicked.get_or_insert_with(Instant::now).elapsed() >= ASYNC_TICK;
                }
            } else {
                kicked = None;
            }
            if kick && busy {
                // Woken by the tick, or a tick since the last kick: make
                // sure no job waits for a wake-up that was lost.
                inner.kick_async(&mut ring);
                kicked = Some(Instant::now());
            }
            let exit = inner.life() != OPEN && inner.workers_gone() && !busy && batch.is_empty();
            (batch, busy, exit)
        };
        if announced && !batch.is_empty() {
            // The look after Announce found work: completions stop ringing
            // before the delivery (which runs callbacks), not after.
            doorbell.awake();
            announced = false;
        }
        let delivered = batch.len();
        for (cell, outcome) in batch {
            cell.deliver(outcome);
        }
        if delivered > 0 {
            inner.delivered(delivered);
        }
        if exit {
            return;
        }
        if delivered > 0 {
            // Delivering may have made the exit condition true, or callbacks
            // may have submitted more: look again before sleeping.
            continue;
        }
        if !announced {
            announced = true;
            continue;
        }
        let timeout = if busy {
            ASYNC_TICK.as_millis() as i32
        } else {
            1000
        };
        let mut fds = [os::watch(inner.done_fd()), os::watch(inner.poke_fd())];
        let woken = matches!(os::poll(&mut fds, timeout), Ok(n) if n > 0);
        doorbell.awake();
        announced = false;
        if woken {
            // Each read only where the poll saw input: a task may have made
            // `done_fd` blocking, and this thread is its only reader.
            let [done, poke] = &fds;
            let (done, poke) = (os::has_input(done), os::has_input(poke));
            if done {
                os::eventfd_drain(inner.done_fd());
            }
            if poke {
                os::eventfd_drain(inner.poke_fd());
            }
            unclocked = CLOCK_EVERY;
        } else {
            ticked = true;
        }
    }
}
