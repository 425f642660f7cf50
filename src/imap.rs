//! `imap` and `imap_unordered`: maps over a stream, through a bounded window
//! of jobs in the slot ring.
//!
//! The source iterator is read on the consumer's thread (it need not be
//! `Send`), into a buffer of up to `chunksize` items, which is copied into a
//! shared block and moved into a `map_async` job (no second copy). At most
//! `window` chunks are in flight, plus the one being read, so memory (arena
//! and heap) is bounded whatever the stream's length. `imap` yields chunks in
//! input order; `imap_unordered` as they finish. A chunk whose job fails is
//! run again one element per job, so only the elements that fail yield
//! `Err`, in their place, and the stream goes on.
//!
//! When the source is read is the whole protocol (design.md, "imap and the
//! ring"): never while a finished result waits to be yielded; while chunks
//! are in flight, only items the source guarantees (`size_hint`'s lower
//! bound) unless the caller said otherwise (`read_ahead`: all it may, or
//! none), because a source may wait for the stream's own results (a work
//! queue fed by the consumer); and
//! a partly read chunk is submitted as it is when the workers are idle and
//! the source is slow.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::element::Element;
use crate::error::Error;
use crate::parent::core::{admitted, lock};
use crate::pool::Pool;
use crate::result::AsyncResult;
use crate::shmvec::ShmVec;
use crate::worker::job::CAPTURE_MESSAGE;

/// The default number of elements per job.
const DEFAULT_CHUNKSIZE: usize = 1024;
/// With nothing in flight (the workers idle), a partly read chunk is
/// submitted as it is once reading it has taken this long: the source is
/// slow, and waiting for a full chunk would only delay its first results.
const IDLE_FLUSH: Duration = Duration::from_millis(1);
/// The source is read in timed blocks, and between blocks the iterator
/// looks for a finished chunk. A block read faster than this doubles the
/// next one (up to `MAX_BLOCK` items); a slower one shrinks it to one item,
/// so a slow source is looked at between every two items.
const FAST_BLOCK: Duration = Duration::from_micros(100);
/// The most items read between two looks for a finished chunk.
const MAX_BLOCK: usize = 1024;

/// Why a copy of a stream in another process yields nothing.
const ANOTHER_PROCESS: &str = "imap iterated in a task or a forked process; its chunks complete in the process that started it";

/// One chunk of the stream, in flight or being yielded.
enum Chunk<T, U> {
    /// Submitted as one job; its input is kept to run it again one element
    /// at a time if the job fails.
    Batch {
        job: AsyncResult<ShmVec<U>>,
        input: Vec<T>,
    },
    /// Run one element per job: after the batch failed, or because one
    /// element could not fit in the arena even with nothing in flight.
    Singles(VecDeque<Result<AsyncResult<U>, Error>>),
    /// The outputs, being yielded.
    Done { out: ShmVec<U>, next: usize },
    /// A chunk that could not be submitted: yields its error once, and the
    /// stream ends.
    Failed(Option<Error>),
}

/// The sequence numbers of chunks whose jobs finished, reported by their
/// completion callbacks (on the result thread, or wherever they run).
#[derive(Default)]
struct Finished {
    seqs: Mutex<Vec<u64>>,
    /// Notified on every report.
    cv: Condvar,
    /// Whether `seqs` is non-empty, for a look without the lock.
    any: AtomicBool,
}

impl Finished {
    fn report(&self, seq: u64) {
        let mut seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        seqs.push(seq);
        // ORDERING: Release: pairs with the Acquire in `Imap::collect`; the
        // lock orders the rest.
        self.any.store(true, Release);
        drop(seqs);
        self.cv.notify_all();
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields
/// `Ok(f(x))`, or the error of the element `x`, for each item of the input.
///
/// Nothing is read or submitted until the first call of `next`; set
/// [`chunksize`](Self::chunksize), [`window`](Self::window) and
/// [`read_ahead`](Self::read_ahead) before. The stream was accepted when it
/// was created: it delivers every result even if the pool is
/// [`close`](Pool::close)d meanwhile, and [`Pool::join`] waits until it is
/// exhausted or dropped. Dropping it cancels the jobs in flight.
///
/// **When the source is read.** On the thread that iterates, and never while
/// a finished result waits to be yielded: a result is yielded as soon as it
/// is asked for. To keep the workers busy, up to `window` chunks are read
/// ahead, but only as far as the source guarantees items
/// ([`Iterator::size_hint`]'s lower bound: ranges, slices, vectors and maps
/// over them), because a source may wait for this stream's own results (a
/// work queue fed by the loop that consumes the stream), and reading it
/// then would wait forever. A source that cannot say (a channel, `filter`,
/// `lines`) is read only when nothing is in flight, one chunk at a time,
/// unless [`read_ahead`](Self::read_ahead) says it never waits for the
/// stream; `read_ahead(false)` reads any source that way (one that
/// guarantees items but waits for the stream's results to produce them).
/// When the workers are idle and the source is slow, a partly read chunk is
/// submitted as it is.
///
/// **Failures.** A chunk whose job fails (a panic, a dead worker, a
/// timeout) is run again one element per job, so that only the failing
/// elements yield `Err`, in their place: the elements of that chunk that had
/// already succeeded run a second time (their side effects happen twice).
/// A chunk whose tasks would deadlock (`WouldDeadlock`) is not run again:
/// each of its elements yields that error. [`Builder::task_timeout`] limits
/// one claimed range of a chunk's job, not one element.
///
/// [`Builder::task_timeout`]: crate::Builder::task_timeout
/// If the source panics, the panic reaches the caller of `next`; the items
/// it had already yielded stay in the stream and are submitted if iteration
/// goes on.
#[must_use = "an imap iterator does nothing until it is iterated"]
pub struct Imap<'p, I: Iterator, U, F> {
    pool: &'p Pool,
    source: I,
    ordered: bool,
    chunksize: usize,
    window: usize,
    /// `read_ahead`: `None` reads ahead as far as `size_hint` guarantees.
    read_ahead: Option<bool>,
    /// Chunks in flight, oldest first, with their sequence numbers.
    flight: VecDeque<(u64, Chunk<I::Item, U>)>,
    /// The chunk being yielded.
    current: Option<Chunk<I::Item, U>>,
    /// Reports from the completion callbacks of the chunks in flight.
    finished: Arc<Finished>,
    /// Chunks in flight known to have finished.
    done: HashSet<u64>,
    next_seq: u64,
    /// Items read from the source and not yet submitted. Kept across calls
    /// (and across a panic of the source), so no item read is ever lost.
    buffer: Vec<I::Item>,
    /// How long reading the items in `buffer` took.
    reading: Duration,
    /// Items to read in the next block (see `FAST_BLOCK`).
    block: usize,
    /// The source returned `None`.
    exhausted: bool,
    /// The stream ends: the pool refused a chunk, or is gone.
    stopped: bool,
    /// The stream's registration with the pool (`join` waits for it);
    /// `None` once it is finished.
    stream: Option<u64>,
    /// The thread that last asked for a chunk.
    owner: ThreadId,
    /// The task (zero-sized: it captures nothing).
    f: F,
}

impl<'p, I, U, F> Imap<'p, I, U, F>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod + Send,
    F: Fn(I::Item) -> U + Copy + Send + Sync + 'static,
{
    fn new(pool: &'p Pool, source: I, ordered: bool, f: F) -> Self {
        Imap {
            pool,
            source,
            ordered,
            chunksize: DEFAULT_CHUNKSIZE,
            window: 2 * pool.workers() + 2,
            read_ahead: None,
            flight: VecDeque::new(),
            current: None,
            finished: Arc::default(),
            done: HashSet::new(),
            next_seq: 0,
            buffer: Vec::new(),
            reading: Duration::ZERO,
            block: 1,
            exhausted: false,
            stopped: false,
            stream: Some(pool.inner.open_stream()),
            owner: thread::current().id(),
            f,
        }
    }

    /// Elements per job, like Python's `chunksize` (default 1024). Larger
    /// chunks cost less per element; smaller ones start yielding sooner. A
    /// value of 0 is taken as 1. A source that waits for this stream's own
    /// results needs 1 (as in Python): a chunk is submitted once it is full
    /// (or the source is slow and the workers idle), and such a source never
    /// fills one.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    /// Chunks in flight at once (default: twice the workers, plus two). The
    /// bound on memory: `window × chunksize` elements in shared memory, plus
    /// one chunk being read. 0 is taken as 1.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// // At most 4 chunks of 100 elements in shared memory at once.
    /// let squares = pool.imap(0..10_000u64, |x| x * x)?.chunksize(100).window(4);
    /// let total: u64 = squares.map(Result::unwrap).sum();
    /// assert_eq!(total, (0..10_000u64).map(|x| x * x).sum::<u64>());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn window(mut self, n: usize) -> Self {
        self.window = n.max(1);
        self
    }

    /// Whether to read the source ahead of the results (keep `window`
    /// chunks in flight) whatever it says of its length. By default a
    /// source is read ahead only as far as its `size_hint` guarantees items
    /// (ranges, slices, vectors, maps over them), and one that cannot say
    /// (`filter`, `lines`, a channel) only while nothing is in flight.
    ///
    /// `true`: the source never waits for this stream's results, so reading
    /// may overlap the workers whatever its `size_hint` says. `false`: it
    /// may wait for them, so it is read only while nothing is in flight,
    /// even if its `size_hint` promises items: a work queue of known length,
    /// `(0..n).map(|_| rx.recv().unwrap())`, guarantees `n` items but blocks
    /// in `recv` until the loop that consumes the stream sends more, which
    /// it never does if the stream is reading instead of yielding. A
    /// `true` for a source that waits for the results waits forever; a
    /// `false` for one that does not only reads it less far ahead.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let text = "1\n2\n3\n4\n";
    /// let numbers = std::io::BufRead::lines(text.as_bytes()).map(|l| l.unwrap().parse::<u64>().unwrap());
    /// let squares: Vec<u64> =
    ///     pool.imap(numbers, |x| x * x)?.read_ahead(true).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn read_ahead(mut self, yes: bool) -> Self {
        self.read_ahead = Some(yes);
        self
    }

    /// Moves reports of finished chunks into `done`.
    fn collect(&mut self) {
        // ORDERING: Acquire: pairs with the Release in `Finished::report`.
        if self.finished.any.load(Acquire) {
            let mut seqs = lock(&self.finished.seqs);
            self.done.extend(seqs.drain(..));
            // ORDERING: Relaxed: under the lock, which orders it with the
            // next report.
            self.finished.any.store(false, Relaxed);
        }
    }

    /// Where the next chunk to yield is in `flight`, if it can be yielded
    /// now without waiting: the oldest (`imap`) or any (`imap_unordered`)
    /// that finished, failed to submit, or runs element by element.
    fn ready_at(&mut self) -> Option<usize> {
        self.collect();
        let done = &self.done;
        let ready = |(seq, c): &(u64, Chunk<I::Item, U>)| {
            !matches!(c, Chunk::Batch { .. }) || done.contains(seq)
        };
        if self.ordered {
            self.flight.front().filter(|c| ready(c)).map(|_| 0)
        } else {
            self.flight.iter().position(ready)
        }
    }

    /// Reads the source and submits chunks as far as the rules allow (see
    /// the type's documentation). Returns whether a chunk became ready to
    /// yield: then it is yielded before anything more is read.
    fn feed(&mut self) -> bool {
        loop {
            // Ready first: a chunk that failed to submit stopped the stream,
            // and it is yielded (as the stream's one error) before the end.
            if self.ready_at().is_some() {
                return true;
            }
            if self.stopped {
                return false;
            }
            let idle = self.flight.is_empty();
            let pending = !self.buffer.is_empty();
            let flush = self.buffer.len() >= self.chunksize
                || (self.exhausted && pending)
                || (idle && pending && self.reading >= IDLE_FLUSH);
            if flush {
                if self.flight.len() >= self.window || !self.submit_buffer() {
                    // No room (in the window, or in the arena): the buffer
                    // waits for a chunk in flight to be taken.
                    return false;
                }
                continue;
            }
            if self.exhausted {
                return false;
            }
            let mut n = (self.chunksize - self.buffer.len()).min(self.block);
            if !idle {
                // Chunks are in flight: read only the items the source
                // guarantees (or none, if the caller said reading may wait
                // for their results). Anything more may wait for them.
                match self.read_ahead {
                    Some(true) => {}
                    Some(false) => return false,
                    None => n = n.min(self.source.size_hint().0),
                }
                if n == 0 {
                    return false;
                }
            }
            self.read(n);
        }
    }

    /// Reads up to `n` items into the buffer, timing the read. A panic of the
    /// source leaves the items already read in the buffer.
    fn read(&mut self, n: usize) {
        let started = Instant::now();
        let before = self.buffer.len();
        self.buffer.extend(self.source.by_ref().take(n));
        if self.buffer.len() - before < n {
            self.exhausted = true;
        }
        let took = started.elapsed();
        self.reading += took;
        self.block = if took < FAST_BLOCK {
            (self.block * 2).min(MAX_BLOCK)
        } else {
            1
        };
    }

    /// Submits the buffer as the next chunk. Returns false, keeping the
    /// buffer, if the arena has no room while chunks are in flight
    /// (back-pressure: their memory comes back as they are taken). With
    /// nothing in flight, a chunk the arena cannot hold is halved until it
    /// fits; the rest stays in the buffer for the next chunk.
    fn submit_buffer(&mut self) -> bool {
        let seq = self.next_seq;
        let mut take = self.buffer.len();
        let chunk = loop {
            match self.submit_batch(seq, take) {
                Ok(job) => {
                    break Chunk::Batch {
                        job,
                        input: self.take_buffer(take),
                    };
                }
                Err(Error::OutOfSharedMemory { .. }) if !self.flight.is_empty() => return false,
                Err(Error::OutOfSharedMemory { .. }) if take > 1 => take /= 2,
                // One element that cannot fit even in an empty window: run
                // it on its own, failing (or not) as its own job.
                Err(Error::OutOfSharedMemory { .. }) => {
                    let input = self.take_buffer(1);
                    break Chunk::Singles(self.singles(&input));
                }
                // The pool refuses work (terminated, broken, a forked
                // copy...): this error reports the chunk, and the stream
                // ends after the chunks already in flight.
                Err(e) => {
                    self.stopped = true;
                    self.buffer.clear();
                    break Chunk::Failed(Some(e));
                }
            }
        };
        self.next_seq += 1;
        self.reading = Duration::ZERO;
        self.flight.push_back((seq, chunk));
        true
    }

    /// Submits the first `take` items of the buffer as chunk `seq`.
    fn submit_batch(&self, seq: u64, take: usize) -> Result<AsyncResult<ShmVec<U>>, Error> {
        let shared = self.pool.to_shm(&self.buffer[..take])?;
        let job = admitted(|| self.pool.map_async_unchecked(shared, self.f))?;
        let finished = self.finished.clone();
        job.on_complete(move |_| finished.report(seq));
        Ok(job)
    }

    /// The first `take` items of the buffer, taken out of it.
    fn take_buffer(&mut self, take: usize) -> Vec<I::Item> {
        let rest = self.buffer.split_off(take);
        std::mem::replace(&mut self.buffer, rest)
    }

    /// Runs `input` one element per job.
    fn singles(&self, input: &[I::Item]) -> VecDeque<Result<AsyncResult<U>, Error>> {
        admitted(|| {
            input
                .iter()
                .map(|&x| self.pool.apply_async_unchecked(x, self.f))
                .collect()
        })
    }

    /// Waits until a chunk in flight reports that it finished.
    fn wait_finished(&mut self) -> Result<(), Error> {
        if !self.pool.inner.in_owner() {
            // A snapshot of the stream, in a task or a forked copy: its
            // chunks report to the process that submitted them.
            return Err(Error::WouldDeadlock {
                reason: ANOTHER_PROCESS,
            });
        }
        if self.pool.inner.on_result_thread() {
            // The chunks report on this very thread.
            return Err(Error::WouldDeadlock {
                reason: "imap iterated inside a completion callback: its chunks complete on that thread",
            });
        }
        let mut seqs = lock(&self.finished.seqs);
        // Every chunk in flight reports exactly once (its callback runs
        // whatever the outcome), and one that has not is in flight: the
        // wait ends. The tick is a belt and braces.
        while seqs.is_empty() {
            seqs = self
                .finished
                .cv
                .wait_timeout(seqs, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.done.extend(seqs.drain(..));
        // ORDERING: Relaxed: under the lock, see `collect`.
        self.finished.any.store(false, Relaxed);
        Ok(())
    }

    /// Takes a finished batch's outcome; on failure, runs its elements one
    /// per job.
    fn settle(&mut self, chunk: Chunk<I::Item, U>) -> Chunk<I::Item, U> {
        match chunk {
            Chunk::Batch { job, input } => match job.get() {
                Ok(out) => Chunk::Done { out, next: 0 },
                // The pool can run nothing more: one error, then the end.
                Err(e @ (Error::Closed | Error::Terminated | Error::InitializerFailed { .. })) => {
                    self.stop();
                    Chunk::Failed(Some(e))
                }
                // Its tasks block forever on an inherited lock: run again,
                // each would block (and be found) again. Every element of
                // the chunk gets the error, in its place.
                Err(Error::WouldDeadlock { reason }) => Chunk::Singles(
                    input
                        .iter()
                        .map(|_| Err(Error::WouldDeadlock { reason }))
                        .collect(),
                ),
                Err(_) => Chunk::Singles(self.singles(&input)),
            },
            other => other,
        }
    }

    /// Ends the stream: cancels the chunks in flight.
    fn stop(&mut self) {
        self.stopped = true;
        self.buffer.clear();
        for (_, chunk) in self.flight.drain(..) {
            if let Chunk::Batch { job, .. } = chunk {
                job.cancel();
            }
        }
    }

    /// Notes which thread iterates the stream (for `join`).
    fn note_owner(&mut self) {
        let me = thread::current().id();
        if me != self.owner {
            self.owner = me;
            if let Some(id) = self.stream {
                if self.pool.inner.in_owner() {
                    self.pool.inner.stream_owner(id, me);
                }
            }
        }
    }

    /// The slow path of `next`: the current chunk is used up.
    fn next_chunk_item(&mut self) -> Option<Result<U, Error>> {
        if !self.pool.inner.in_owner_process() {
            // A copy of the stream (a task that reached it through a static,
            // a forked child): its chunks, their outcomes and their outputs
            // are the owner's. One error, then the end.
            if self.stopped {
                return None;
            }
            self.current = None;
            self.stop();
            return Some(Err(Error::WouldDeadlock {
                reason: ANOTHER_PROCESS,
            }));
        }
        self.note_owner();
        loop {
            match &mut self.current {
                Some(Chunk::Done { out, next }) if *next < out.len() => {
                    *next += 1;
                    return Some(Ok(out[*next - 1]));
                }
                Some(Chunk::Singles(jobs)) if !jobs.is_empty() => {
                    let job = jobs.pop_front().expect("not empty");
                    let out = job.and_then(AsyncResult::get);
                    if let Err(
                        Error::Closed | Error::Terminated | Error::InitializerFailed { .. },
                    ) = out
                    {
                        // The pool can run nothing more (as in `settle`):
                        // this error, then the end, not one per element.
                        self.current = None;
                        self.stop();
                    }
                    return Some(out);
                }
                Some(Chunk::Failed(e)) if e.is_some() => return e.take().map(Err),
                _ => {}
            }
            self.current = None;
            // A finished result first: never read input before yielding it.
            if let Some(at) = self.ready_at() {
                let (seq, chunk) = self.flight.remove(at).expect("ready_at is in range");
                self.done.remove(&seq);
                self.current = Some(self.settle(chunk));
                continue;
            }
            if self.feed() {
                continue;
            }
            if self.flight.is_empty() {
                // Nothing in flight and nothing left to read or submit.
                self.end_stream();
                return None;
            }
            if let Err(e) = self.wait_finished() {
                self.stop();
                return Some(Err(e));
            }
        }
    }

    /// The stream is finished: `join` no longer waits for it.
    fn end_stream(&mut self) {
        if let Some(id) = self.stream.take() {
            // Also in a task the caller runs (a stream kept in a static):
            // it is this stream, finished, not a worker's copy.
            if self.pool.inner.in_owner_process() {
                self.pool.inner.close_stream(id);
            }
        }
    }
}

impl<I, U, F> std::fmt::Debug for Imap<'_, I, U, F>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    /// The stream's settings and where it is: chunks in flight, items read
    /// and not yet submitted, whether the source is exhausted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.ordered)
            .field("chunksize", &self.chunksize)
            .field("window", &self.window)
            .field("read_ahead", &self.read_ahead)
            .field("in_flight", &self.flight.len())
            .field("buffered", &self.buffer.len())
            .field("exhausted", &self.exhausted)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
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
        // The common case, kept small: the next output of a finished chunk
        // (not in a copy of the stream in another process: see
        // `next_chunk_item`).
        if let Some(Chunk::Done { out, next }) = &mut self.current {
            if let Some(&y) = out.slice_here().and_then(|s| s.get(*next)) {
                *next += 1;
                return Some(Ok(y));
            }
        }
        self.next_chunk_item()
    }
}

impl<I: Iterator, U, F> Drop for Imap<'_, I, U, F> {
    /// Cancels the chunks in flight (their callbacks see `Cancelled`; the
    /// element-by-element jobs are cancelled by their own drop) and tells
    /// the pool the stream is finished.
    fn drop(&mut self) {
        for (_, chunk) in &self.flight {
            if let Chunk::Batch { job, .. } = chunk {
                job.cancel();
            }
        }
        if let Some(id) = self.stream.take() {
            // Also from a task the caller runs (a stream kept in a static):
            // `join` would otherwise wait for this stream forever.
            if self.pool.inner.in_owner_process() {
                self.pool.inner.close_stream(id);
            }
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
    /// memory stays bounded however long the stream. A finished result is
    /// yielded as soon as it is asked for; the source is read on the
    /// iterating thread, ahead of the results only as far as it guarantees
    /// items (see [`Imap`] for the rule, and [`read_ahead`](Imap::read_ahead)).
    /// So a work queue that feeds the stream from its own results works:
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// tx.send(1u64)?;
    /// let mut tx = Some(tx);
    /// let mut seen = Vec::new();
    /// for r in pool.imap(rx.iter(), |x| x * 2)?.chunksize(1) {
    ///     let x = r?;
    ///     seen.push(x);
    ///     match x {
    ///         x if x < 1000 => tx.as_ref().unwrap().send(x)?,
    ///         _ => drop(tx.take()), // the queue ends
    ///     }
    /// }
    /// assert_eq!(seen, [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// The stream is accepted when it is created: after
    /// [`close`](Self::close) it still delivers every result, and
    /// [`join`](Self::join) waits for it (Python's `it = p.imap(f, xs);
    /// p.close(); for r in it: ...; p.join()`).
    ///
    /// # Errors
    /// `Closed`, or `WouldDeadlock` from inside a task or a completion
    /// callback, at once. Later failures arrive as items: an element's own
    /// error in its place; `Terminated` (or `InitializerFailed`) once, ending
    /// the stream (or `Io`, if the pool's result thread cannot be started for
    /// its first asynchronous job). A full arena only slows the stream
    /// (chunks wait for room); a chunk that could never fit is split until
    /// it does (an element that cannot fit on its own yields
    /// `OutOfSharedMemory` in its place).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let evens = (0..10_000u64).filter(|x| x % 2 == 0);
    /// let total: u64 = pool
    ///     .imap(evens, |x| x * 3)?
    ///     .chunksize(256)
    ///     .read_ahead(true) // `filter` cannot say how many items are left
    ///     .map(Result::unwrap)
    ///     .sum();
    /// assert_eq!(total, 3 * (0..10_000u64).filter(|x| x % 2 == 0).sum::<u64>());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn imap<It, T, U, F>(&self, iter: It, f: F) -> Result<Imap<'_, It::IntoIter, U, F>, Error>
    where
        It: IntoIterator<Item = T>,
        T: Element,
        U: Element + Send,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        self.check_not_result_thread()?;
        Ok(Imap::new(self, iter.into_iter(), true, f))
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
    #[inline(never)]
    pub fn imap_unordered<It, T, U, F>(
        &self,
        iter: It,
        f: F,
    ) -> Result<Imap<'_, It::IntoIter, U, F>, Error>
    where
        It: IntoIterator<Item = T>,
        T: Element,
        U: Element + Send,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        self.check_not_result_thread()?;
        Ok(Imap::new(self, iter.into_iter(), false, f))
    }
}
