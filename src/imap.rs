//! `imap` and `imap_unordered`: maps over a stream, through a bounded window
//! of jobs in the slot ring.
//!
//! The source iterator is read `chunksize` items at a time into a shared
//! block, which is moved into a `map_async` job (no second copy). At most
//! `window` chunks are in flight; the next chunk is read only when the
//! consumer has taken a finished one, so memory (arena and heap) is bounded by
//! `window × chunksize` elements whatever the stream's length. `imap` yields
//! chunks in input order; `imap_unordered` as they finish. A chunk whose job
//! fails is run again one element per job, so only the elements that fail
//! yield `Err`, in their place, and the stream goes on.

use std::collections::VecDeque;
use std::iter::Fuse;
use std::marker::PhantomData;
use std::sync::mpsc;

use bytemuck::Pod;

use crate::error::Error;
use crate::pool::Pool;
use crate::result::AsyncResult;
use crate::shmvec::ShmVec;

/// The default number of elements per job.
const DEFAULT_CHUNKSIZE: usize = 1024;

/// One chunk of the stream, in flight or being yielded.
enum Chunk<T: Pod, U: Pod> {
    /// Submitted as one job; its input is kept to run it again one element
    /// at a time if the job fails.
    Batch {
        job: AsyncResult<ShmVec<U>>,
        input: Vec<T>,
    },
    /// Run one element per job, after the batch failed.
    Singles(VecDeque<Result<AsyncResult<U>, Error>>),
    /// The outputs, being yielded.
    Done { out: ShmVec<U>, next: usize },
    /// A chunk that could not be submitted: yields its error once.
    Failed(Option<Error>),
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields
/// `Ok(f(x))`, or the error of the element `x`, for each item of the input.
///
/// Nothing is submitted until the first call of `next`; set
/// [`chunksize`](Self::chunksize) and [`window`](Self::window) before.
/// Dropping it cancels the jobs in flight.
#[must_use = "an imap iterator does nothing until it is iterated"]
pub struct Imap<'p, I, U, F>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    pool: &'p Pool,
    source: Fuse<I>,
    ordered: bool,
    chunksize: usize,
    window: usize,
    /// Chunks in flight, oldest first, with their sequence numbers.
    flight: VecDeque<(u64, Chunk<I::Item, U>)>,
    /// The chunk being yielded.
    current: Option<Chunk<I::Item, U>>,
    /// Sequence numbers of finished chunks (`imap_unordered`).
    finished: (mpsc::Sender<u64>, mpsc::Receiver<u64>),
    next_seq: u64,
    /// A reusable buffer for reading the source.
    buffer: Vec<I::Item>,
    /// A chunk read from the source that the arena had no room for yet: it
    /// is submitted once a chunk in flight has been taken (back-pressure).
    held: bool,
    /// Set once the stream must end (the pool refused a chunk).
    stopped: bool,
    _f: PhantomData<F>,
}

impl<'p, I, U, F> Imap<'p, I, U, F>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod + Send,
    F: Fn(I::Item) -> U + Copy + Send + Sync + 'static,
{
    fn new(pool: &'p Pool, source: I, ordered: bool) -> Self {
        Imap {
            pool,
            source: source.fuse(),
            ordered,
            chunksize: DEFAULT_CHUNKSIZE,
            window: 2 * pool.workers() + 2,
            flight: VecDeque::new(),
            current: None,
            finished: mpsc::channel(),
            next_seq: 0,
            buffer: Vec::new(),
            held: false,
            stopped: false,
            _f: PhantomData,
        }
    }

    /// Elements per job, like Python's `chunksize` (default 1024). Larger
    /// chunks cost less per element; smaller ones start yielding sooner. A
    /// value of 0 is taken as 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    /// Chunks in flight at once (default: twice the workers, plus two). The
    /// bound on memory: `window × chunksize` elements. 0 is taken as 1.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n.max(1);
        self
    }

    /// Reads one chunk from the source and submits it. Returns false when the
    /// source is exhausted.
    fn submit_one(&mut self) -> bool {
        if !std::mem::take(&mut self.held) {
            self.buffer.clear();
            self.buffer
                .extend(self.source.by_ref().take(self.chunksize));
        }
        if self.buffer.is_empty() {
            return false;
        }
        let seq = self.next_seq;
        let chunk = match self.submit_batch(seq) {
            Ok(job) => Chunk::Batch {
                job,
                input: std::mem::take(&mut self.buffer),
            },
            // The arena is full of chunks in flight: keep this one until the
            // consumer has taken one of them.
            Err(Error::OutOfSharedMemory { .. }) if !self.flight.is_empty() => {
                self.held = true;
                return false;
            }
            Err(e) => {
                self.stopped = true;
                Chunk::Failed(Some(e))
            }
        };
        self.next_seq += 1;
        self.flight.push_back((seq, chunk));
        true
    }

    fn submit_batch(&self, seq: u64) -> Result<AsyncResult<ShmVec<U>>, Error> {
        let shared = self.pool.to_shm(&self.buffer)?;
        let job = self.pool.map_async(shared, conjure_f::<I::Item, U, F>())?;
        if !self.ordered {
            let tx = self.finished.0.clone();
            job.on_complete(move |_| {
                let _ = tx.send(seq);
            });
        }
        Ok(job)
    }

    /// Keeps the window full.
    fn fill(&mut self) {
        while !self.stopped && self.flight.len() < self.window && self.submit_one() {}
    }

    /// The next chunk to yield from, waiting for it if need be.
    fn next_chunk(&mut self) -> Option<Chunk<I::Item, U>> {
        if self.flight.is_empty() {
            return None;
        }
        let at = if self.ordered {
            0
        } else {
            // A chunk that cannot report completion (failed to submit, or
            // already running element by element) is ready now.
            match self
                .flight
                .iter()
                .position(|(_, c)| !matches!(c, Chunk::Batch { .. }))
            {
                Some(i) => i,
                None => loop {
                    let seq = self.finished.1.recv().ok()?;
                    if let Some(i) = self.flight.iter().position(|(s, _)| *s == seq) {
                        break i;
                    }
                },
            }
        };
        let (_, chunk) = self.flight.remove(at)?;
        Some(self.settle(chunk))
    }

    /// Waits for a batch; on failure, runs its elements one per job.
    fn settle(&mut self, chunk: Chunk<I::Item, U>) -> Chunk<I::Item, U> {
        match chunk {
            Chunk::Batch { job, input } => match job.get() {
                Ok(out) => Chunk::Done { out, next: 0 },
                // The pool is gone: nothing more can run. One error, then
                // the stream ends (the chunks in flight are dropped).
                Err(e @ (Error::Closed | Error::Terminated)) => {
                    self.stopped = true;
                    self.flight.clear();
                    Chunk::Failed(Some(e))
                }
                Err(_) => Chunk::Singles(
                    input
                        .iter()
                        .map(|&x| self.pool.apply_async(x, conjure_f::<I::Item, U, F>()))
                        .collect(),
                ),
            },
            other => other,
        }
    }
}

/// A value of the zero-sized task type `F`, which the caller held when it
/// called `imap` (checked there).
fn conjure_f<T, U, F: Fn(T) -> U + Copy>() -> F {
    crate::job::assert_no_captures::<F>();
    // SAFETY: `F` is zero-sized (checked at compile time above) and
    // inhabited: `imap` received a value of it. Reading a zero-sized value
    // from a dangling, aligned pointer reads no memory.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

impl<I, U, F> Iterator for Imap<'_, I, U, F>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod + Send,
    F: Fn(I::Item) -> U + Copy + Send + Sync + 'static,
{
    type Item = Result<U, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match &mut self.current {
                Some(Chunk::Done { out, next }) if *next < out.len() => {
                    *next += 1;
                    return Some(Ok(out[*next - 1]));
                }
                Some(Chunk::Singles(jobs)) if !jobs.is_empty() => {
                    let job = jobs.pop_front().expect("not empty");
                    return Some(job.and_then(AsyncResult::get));
                }
                Some(Chunk::Failed(e)) if e.is_some() => return e.take().map(Err),
                _ => {}
            }
            // The current chunk is used up: refill the window, take the next.
            self.current = None;
            self.fill();
            self.current = Some(self.next_chunk()?);
        }
    }
}

impl Pool {
    /// A stream's chunks complete on the pool's result thread, which runs
    /// completion callbacks: iterating there would wait for itself.
    fn check_not_result_thread(&self) -> Result<(), Error> {
        if self.inner.on_result_thread() {
            return Err(Error::WouldDeadlock {
                reason: "imap inside a completion callback: its chunks complete on that thread",
            });
        }
        Ok(())
    }

    /// `f` over a stream, in input order, like Python's `Pool.imap`: each
    /// item is `Ok(f(x))`, or the error of that element (a panic, a dead
    /// worker, a timeout), and the stream goes on after a failure.
    ///
    /// Items are read and submitted [`chunksize`](Imap::chunksize) at a time
    /// (default 1024), with at most [`window`](Imap::window) chunks in flight:
    /// memory stays bounded however long the stream (back-pressure: the
    /// source is read only as fast as results are consumed).
    ///
    /// # Errors
    /// `Closed`, or `WouldDeadlock` from inside a task or a completion
    /// callback, at once. Later failures arrive as items: an element's own
    /// error in its place; `Closed`/`Terminated` once, ending the stream
    /// (or `Io`, if the pool's result thread cannot be started for its
    /// first asynchronous job). A full arena only slows the stream (chunks
    /// wait for room).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let evens = (0..10_000u64).filter(|x| x % 2 == 0);
    /// let total: u64 = pool.imap(evens, |x| x * 3)?.chunksize(256).map(Result::unwrap).sum();
    /// assert_eq!(total, 3 * (0..10_000u64).filter(|x| x % 2 == 0).sum::<u64>());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap<It, U, F>(&self, iter: It, f: F) -> Result<Imap<'_, It::IntoIter, U, F>, Error>
    where
        It: IntoIterator,
        It::Item: Pod,
        U: Pod + Send,
        F: Fn(It::Item) -> U + Copy + Send + Sync + 'static,
    {
        self.prologue(f)?;
        self.check_not_result_thread()?;
        Ok(Imap::new(self, iter.into_iter(), true))
    }

    /// Like [`imap`](Self::imap), but yields each chunk's results as soon as
    /// that chunk finishes (Python's `imap_unordered`); within a chunk, in
    /// input order.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut got: Vec<u32> = pool
    ///     .imap_unordered(0..1000u32, |x| x + 1)?
    ///     .chunksize(100)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort_unstable();
    /// assert_eq!(got, (1..=1000).collect::<Vec<_>>());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_unordered<It, U, F>(
        &self,
        iter: It,
        f: F,
    ) -> Result<Imap<'_, It::IntoIter, U, F>, Error>
    where
        It: IntoIterator,
        It::Item: Pod,
        U: Pod + Send,
        F: Fn(It::Item) -> U + Copy + Send + Sync + 'static,
    {
        self.prologue(f)?;
        self.check_not_result_thread()?;
        Ok(Imap::new(self, iter.into_iter(), false))
    }
}
