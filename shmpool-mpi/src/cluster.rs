//! `Cluster`: one pool per rank, and the collective operations over them.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ops::Range;

use bytemuck::Pod;
use mpi::Rank;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use shmpool::{Error, Pool, ShmVec};

use crate::transfer::{block, bytes_of, bytes_of_mut, exchange};

/// The rank that gives the data to [`Cluster::scatter`] and
/// [`Cluster::map_from_root`], and gets it back from [`Cluster::gather`].
pub const ROOT: usize = 0;

/// The longest failure message carried from one rank to the others.
const MAX_MESSAGE: usize = 64 << 10;

/// The pools of an MPI job, one per rank, seen from one rank.
///
/// Inside a host, shmpool is the engine (forked workers over shared memory);
/// across hosts, MPI moves the blocks. Every rank builds its [`Pool`]
/// *before* [`mpi::initialize`], then a `Cluster` over it; each operation is
/// collective: every rank of the communicator calls it, in the same order.
///
/// Every operation **agrees on its outcome** before it returns: each rank's
/// local result (success, or its error's message) is combined, so either
/// every rank returns `Ok`, or every rank returns the same
/// [`Error::Remote`] naming the lowest rank that failed and its error (a
/// task's panic, a worker's death, no room in a rank's arena), that rank
/// included. No rank is left waiting for another whose part failed, and the
/// pools stay usable. A *rank* that dies ends the whole job (that is MPI's
/// rule); a task that never returns holds every rank until it does, so give
/// the pools a [`task_timeout`](shmpool::Builder::task_timeout) if that can
/// happen.
///
/// Arrays are split into contiguous blocks in rank order, whose lengths
/// differ by at most one ([`Cluster::block`]). Elements travel as bytes:
/// every host must share one data layout (the same architecture).
///
/// # Example
/// Run with `mpirun -np 4 --bind-to none ./program`:
/// ```no_run
/// use mpi::traits::*;
/// use shmpool::ShmVec;
///
/// let pool = shmpool::Pool::new(shmpool_mpi::workers_per_rank())?; // before MPI starts
/// let universe = mpi::initialize().unwrap();
/// let cluster = shmpool_mpi::Cluster::new(&universe.world(), &pool)?;
/// let xs: Vec<f64> = (0..1_000_000).map(f64::from).collect();
/// let root_data: Option<&[f64]> = (cluster.rank() == 0).then_some(&xs[..]);
/// let local: ShmVec<f64> = cluster.scatter(root_data)?; // this rank's block
/// let ys = cluster.map_local(&local, |x: f64| x * x)?;
/// let all: Option<ShmVec<f64>> = cluster.gather(&ys)?; // Some on rank 0
/// let total: f64 = cluster.map_reduce(&local, |x: f64| x * x, |a, b| a + b, 0.0)?;
/// if let Some(all) = all {
///     // The serial sum adds in another order: equal up to rounding only.
///     let serial: f64 = all.iter().sum();
///     assert!((serial - total).abs() <= 1e-9 * serial.abs());
/// }
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Cluster<'p> {
    pool: &'p Pool,
    /// A duplicate of the caller's communicator, so that no message of
    /// the caller's can match one of ours. Freed on drop unless MPI was
    /// finalized first.
    comm: ManuallyDrop<SimpleCommunicator>,
    rank: usize,
    size: usize,
    /// The length of the last array scattered (for [`Cluster::offset`]).
    scattered: Cell<usize>,
}

/// What a rank's local step produced: its value, or its failure as text.
fn message_of(e: &Error) -> String {
    match e {
        // Our own usage errors are made as `Remote` for this rank already.
        Error::Remote { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

impl<'p> Cluster<'p> {
    /// A cluster over `comm` (usually `universe.world()`) with this rank's
    /// `pool`. Collective: every rank of `comm` calls it. The cluster
    /// communicates over a duplicate of `comm`, freed when it is dropped.
    ///
    /// # Errors
    /// [`Error::Remote`] on every rank if any rank's pool refuses: a pool
    /// built *after* MPI was initialised (its workers are copies of an MPI
    /// process: they inherit MPI's shared-memory segments and signal
    /// handlers, and an MPI call in a task hangs), or a closed pool.
    ///
    /// How the order is checked: a pool's workers are forked from a
    /// snapshot of the process taken when the pool was built (its template
    /// process). One worker runs a task that calls `MPI_Initialized` (which
    /// only reads a flag, and may be called at any time): in that snapshot,
    /// MPI was initialised exactly if the pool was built after
    /// `mpi::initialize()`.
    pub fn new<C: Communicator>(comm: &C, pool: &'p Pool) -> Result<Cluster<'p>, Error> {
        let rank = usize::try_from(comm.rank()).expect("MPI ranks are not negative");
        // An intercommunicator joins two groups: its broadcasts and
        // reductions go from one group to the other, so the cluster's
        // collectives would wait for each other (or each group would get the
        // other's verdict). Every rank of both groups sees the same answer
        // here, without communicating.
        if comm.test_inter() {
            return Err(Error::remote(
                rank,
                "Cluster::new needs an intracommunicator (such as universe.world()), \
                 not an intercommunicator: merge it first (MPI_Intercomm_merge)",
            ));
        }
        let size = usize::try_from(comm.size()).expect("MPI sizes are positive");
        // Local, no communication: every rank reaches the duplicate below.
        let checked = built_before_mpi(pool, rank);
        let cluster = Cluster {
            pool,
            comm: ManuallyDrop::new(comm.duplicate()),
            rank,
            size,
            scattered: Cell::new(0),
        };
        cluster.agree(checked)?;
        Ok(cluster)
    }

    /// This rank's number, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's pool.
    pub fn pool(&self) -> &'p Pool {
        self.pool
    }

    /// The global index range of this rank's block when `n` elements are
    /// split over the ranks: contiguous, in rank order, the first `n % size`
    /// blocks one element longer than the others. Blocks of ranks past `n`
    /// are empty.
    ///
    /// ```text
    /// n = 10 over 4 ranks:  0..3 | 3..6 | 6..8 | 8..10
    /// n = 2  over 4 ranks:  0..1 | 1..2 | 2..2 | 2..2
    /// ```
    pub fn block(&self, n: usize) -> Range<usize> {
        block(n, self.size, self.rank)
    }

    /// The global index of the first element of this rank's block in the
    /// last array [`scatter`](Self::scatter)ed (or
    /// [`map_from_root`](Self::map_from_root)ed); 0 before any.
    pub fn offset(&self) -> usize {
        self.block(self.scattered.get()).start
    }

    /// Combines every rank's local outcome into one verdict, the same on
    /// every rank: `local` back if every rank passed `Ok`, else
    /// [`Error::Remote`] naming the lowest rank that passed an `Err`, with
    /// that error's message. Collective. Every operation of the cluster
    /// ends with it; use it after local steps of your own (a pool's
    /// `map_chunks`, say) so that no rank goes on while another failed.
    ///
    /// Costs one `MPI_Allreduce` of one integer when every rank succeeded
    /// (and two broadcasts more when one failed).
    ///
    /// # Errors
    /// [`Error::Remote`], as above.
    pub fn agree<T>(&self, local: Result<T, Error>) -> Result<T, Error> {
        let mine: Rank = match local {
            Ok(_) => self.size as Rank,
            Err(_) => self.rank as Rank,
        };
        let mut lowest: Rank = 0;
        self.comm
            .all_reduce_into(&mine, &mut lowest, SystemOperation::min());
        let failed = usize::try_from(lowest).unwrap_or(0);
        if failed >= self.size {
            return local;
        }
        // The lowest failing rank speaks. An error that is already a
        // verdict (`Remote`, from an earlier `agree`) keeps the rank it
        // names: it failed there, not on the rank that passes it on.
        let (origin, message) = match &local {
            Err(Error::Remote { rank, message, .. }) if failed == self.rank => {
                (*rank, message.clone())
            }
            Err(e) if failed == self.rank => (self.rank, message_of(e)),
            _ => (failed, String::new()),
        };
        let (origin, message) = self.broadcast_text(failed, origin, message);
        Err(Error::remote(origin, message))
    }

    /// The verdict, on every rank, that rank `from` failed with `message`
    /// (significant on `from` only).
    fn failure(&self, from: usize, message: String) -> Error {
        let (origin, message) = self.broadcast_text(from, from, message);
        Error::remote(origin, message)
    }

    /// `origin` and `text` from rank `from` to every rank (at most
    /// [`MAX_MESSAGE`] bytes of text, cut at a character boundary).
    fn broadcast_text(&self, from: usize, origin: usize, mut text: String) -> (usize, String) {
        if text.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let root = self.comm.process_at_rank(from as Rank);
        let mut header = [origin as u64, text.len() as u64];
        root.broadcast_into(&mut header[..]);
        let mut bytes = if from == self.rank {
            text.into_bytes()
        } else {
            vec![0u8; usize::try_from(header[1]).unwrap_or(0).min(MAX_MESSAGE)]
        };
        root.broadcast_into(&mut bytes[..]);
        let origin = usize::try_from(header[0]).unwrap_or(from);
        (origin, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A usage error of this rank's, in the form every rank will see.
    fn usage(&self, message: impl Into<String>) -> Error {
        Error::remote(self.rank, message)
    }

    /// Splits the root's `data` into contiguous blocks, one per rank in rank
    /// order ([`block`](Self::block)), and returns this rank's block in this
    /// rank's pool's shared memory, ready for [`map_local`](Self::map_local)
    /// and the pool's own maps to read in place. Only the root's `data` is
    /// read; other ranks may pass `None` (or anything). Afterwards,
    /// [`offset`](Self::offset) gives the global index of the block's first
    /// element.
    ///
    /// # Errors
    /// [`Error::Remote`] on every rank if the root passed `None`, a rank's
    /// elements are of another size than the root's (a different `T`), or a
    /// rank's arena has no room for its block. Nothing is sent before every
    /// rank has its buffer.
    pub fn scatter<T: Pod>(&self, data: Option<&[T]>) -> Result<ShmVec<T>, Error> {
        // 1. The root says whether it has an array, how long it is, and the
        //    size of its elements: a rank that expects another size would
        //    receive a short block (or more bytes than its buffer holds).
        let width = size_of::<T>() as u64;
        let mut header: [u64; 3] = match data {
            Some(d) if self.rank == ROOT => [1, d.len() as u64, width],
            _ => [0, 0, 0],
        };
        self.root().broadcast_into(&mut header[..]);
        let [has, n, root_width] = header;
        // 2. Every rank makes room for its block (the root copies its own
        //    in), and they agree that all could.
        let local = if has == 0 {
            Err(self.usage("scatter: the root gave no data (None)"))
        } else if root_width != width {
            Err(self.usage(format!(
                "scatter: this rank's elements are {width} bytes, the root's {root_width}"
            )))
        } else {
            match usize::try_from(n) {
                Err(_) => Err(self.usage(format!("scatter: {n} elements do not fit in memory"))),
                Ok(n) => {
                    let mine = block(n, self.size, self.rank);
                    match data {
                        Some(d) if self.rank == ROOT => self.pool.to_shm(&d[mine]),
                        _ => self.pool.alloc_zeroed::<T>(mine.len()),
                    }
                }
            }
        };
        let mut local = self.agree(local)?;
        // 3. The blocks travel.
        let n = n as usize;
        if self.rank == ROOT {
            let d = data.expect("the root has data (agreed above)");
            let to: Vec<(Rank, &[u8])> = (0..self.size)
                .filter(|&r| r != ROOT)
                .map(|r| (r as Rank, bytes_of(&d[block(n, self.size, r)])))
                .collect();
            exchange(&self.comm, &to, &mut []);
        } else {
            exchange(
                &self.comm,
                &[],
                &mut [(ROOT as Rank, bytes_of_mut(&mut local))],
            );
        }
        self.scattered.set(n);
        Ok(local)
    }

    /// Every rank's `part`, concatenated in rank order, on the root (`Some`
    /// there, `None` on the other ranks), in the root's pool's shared memory.
    /// Parts may have any lengths.
    ///
    /// # Errors
    /// [`Error::Remote`] on every rank if a rank's elements are of another
    /// size than the root's (a different `U`; the first such rank is
    /// named), or the root's arena has no room for the whole (nothing is
    /// sent then).
    pub fn gather<U: Pod>(&self, part: &[U]) -> Result<Option<ShmVec<U>>, Error> {
        // 1. The root learns every part's length and element size, and
        //    makes room. A part of elements of another size than the root's
        //    would arrive short (or longer than its place).
        let width = size_of::<U>() as u64;
        let mine = [part.len() as u64, width];
        let mut heads = vec![0u64; if self.rank == ROOT { 2 * self.size } else { 0 }];
        if self.rank == ROOT {
            self.root().gather_into_root(&mine[..], &mut heads[..]);
        } else {
            self.root().gather_into(&mine[..]);
        }
        let lens: Vec<u64> = heads.chunks(2).map(|h| h[0]).collect();
        let other = heads.chunks(2).position(|h| h[1] != width);
        let local = if let Some(r) = other {
            // Blamed on the first rank whose size differs from the root's.
            Err(Error::remote(
                r,
                format!(
                    "gather: rank {r}'s elements are {} bytes, the root's {width}",
                    heads[2 * r + 1]
                ),
            ))
        } else if self.rank == ROOT {
            let total = lens
                .iter()
                .try_fold(0usize, |t, &l| t.checked_add(usize::try_from(l).ok()?));
            match total {
                Some(total) => self.pool.alloc_zeroed::<U>(total).map(Some),
                None => Err(self.usage("gather: the parts' total length overflows")),
            }
        } else {
            Ok(None)
        };
        let mut out = self.agree(local)?;
        // 2. The parts travel.
        match out.as_mut() {
            Some(all) => {
                let mut rest = &mut all[..];
                let mut from = Vec::with_capacity(self.size);
                for (r, &l) in lens.iter().enumerate() {
                    let (this, tail) = rest.split_at_mut(l as usize);
                    rest = tail;
                    if r == ROOT {
                        this.copy_from_slice(part);
                    } else {
                        from.push((r as Rank, bytes_of_mut(this)));
                    }
                }
                exchange(&self.comm, &[], &mut from);
            }
            None => exchange(&self.comm, &[(ROOT as Rank, bytes_of(part))], &mut []),
        }
        Ok(out)
    }

    /// `f` over this rank's block (or any slice), in this rank's pool, with
    /// the outcome agreed across ranks: [`Pool::map`], collectively.
    ///
    /// # Errors
    /// [`Error::Remote`] on every rank if any rank's map failed (a task
    /// panicked, a worker died, no room in an arena).
    pub fn map_local<T, U, F>(&self, local: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Pod,
        U: Pod,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        self.agree(self.pool.map(local, f))
    }

    /// `out[i] = f(local, i, global)` for every `i` of this rank's block:
    /// [`Pool::map_indexed`] with the global index as well, where `global`
    /// is `i` plus the number of elements all lower ranks pass. For a block
    /// from [`scatter`](Self::scatter), that is the element's index in the
    /// scattered array; in general, its index in what
    /// [`gather`](Self::gather) would return. `f` sees this rank's block only.
    ///
    /// # Errors
    /// As [`map_local`](Self::map_local).
    pub fn map_local_indexed<T, U, F>(&self, local: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Pod,
        U: Pod,
        F: Fn(&[T], usize, usize) -> U + Copy + Send + Sync + 'static,
    {
        let len = local.len() as u64;
        let mut before = 0u64;
        self.comm
            .exclusive_scan_into(&len, &mut before, SystemOperation::sum());
        // MPI leaves rank 0's result undefined.
        let first = if self.rank == 0 { 0 } else { before };
        let local = match usize::try_from(first) {
            Ok(first) => self.pool.map_indexed_with(
                first,
                local,
                // Captures only `f`, which is zero-sized: so is this.
                move |first: &usize, xs: &[T], i: usize| f(xs, i, first + i),
            ),
            Err(_) => Err(self.usage("map_local_indexed: global indices overflow")),
        };
        self.agree(local)
    }

    /// [`scatter`](Self::scatter), [`map_local`](Self::map_local),
    /// [`gather`](Self::gather): `f` over the root's `data`, every rank
    /// mapping its block with its pool; the results on the root, in order.
    ///
    /// # Errors
    /// As the three steps.
    pub fn map_from_root<T, U, F>(
        &self,
        data: Option<&[T]>,
        f: F,
    ) -> Result<Option<ShmVec<U>>, Error>
    where
        T: Pod,
        U: Pod,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        let local = self.scatter(data)?;
        let mapped = self.map_local(&local, f)?;
        drop(local);
        self.gather(&mapped)
    }

    /// `map` over this rank's block folded with `reduce` from `identity` by
    /// its pool ([`Pool::map_reduce`]), then the ranks' partials combined
    /// **in rank order**, `reduce(..reduce(reduce(identity, p0), p1).., pn)`,
    /// by one worker of the root's pool, and that value sent to every rank:
    /// every rank returns the same value. `reduce` must be associative,
    /// `identity` its identity.
    ///
    /// The result depends on the data, the ranks and each rank's pool (its
    /// partition into ranges), never on timing: a floating-point sum is the
    /// same on every run of the same job. For a result that does not depend
    /// on the pools' sizes either, use
    /// [`map_reduce_chunked`](Self::map_reduce_chunked).
    ///
    /// # Errors
    /// [`Error::Remote`] on every rank if a rank's reduction, or the root's
    /// combination, failed, or a rank's `A` is of another size than the
    /// root's.
    pub fn map_reduce<T, A, M, R>(
        &self,
        local: &[T],
        map: M,
        reduce: R,
        identity: A,
    ) -> Result<A, Error>
    where
        T: Pod,
        A: Pod,
        M: Fn(T) -> A + Copy + Send + Sync + 'static,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        let partial = self.pool.map_reduce(local, map, reduce, identity);
        self.combine(partial, reduce, identity)
    }

    /// [`map_reduce`](Self::map_reduce) with each rank's block reduced in
    /// ranges of exactly `chunk` elements ([`Pool::map_reduce_chunked`]):
    /// the result depends only on the data, `chunk` and the number of ranks
    /// (how the data is split), not on how many workers each rank has, nor
    /// on timing. Bit-identical on every run.
    ///
    /// # Errors
    /// As [`map_reduce`](Self::map_reduce); a `chunk` of 0 fails on every
    /// rank.
    pub fn map_reduce_chunked<T, A, M, R>(
        &self,
        local: &[T],
        chunk: usize,
        map: M,
        reduce: R,
        identity: A,
    ) -> Result<A, Error>
    where
        T: Pod,
        A: Pod,
        M: Fn(T) -> A + Copy + Send + Sync + 'static,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        let partial = self
            .pool
            .map_reduce_chunked(local, chunk, map, reduce, identity);
        self.combine(partial, reduce, identity)
    }

    /// The second round of a reduction: every rank's partial (or failure)
    /// to the root, which combines them in rank order in its pool and sends
    /// the verdict and the value to every rank.
    fn combine<A, R>(&self, partial: Result<A, Error>, reduce: R, identity: A) -> Result<A, Error>
    where
        A: Pod,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        let root = self.root();
        // The root's size of `A` sizes every rank's record and verdict: a
        // rank whose `A` is of another size fails (rather than sending a
        // record of another length, which MPI would truncate or pad).
        let mine = size_of::<A>() as u64;
        let mut theirs = mine;
        root.broadcast_into(&mut theirs);
        let partial = match partial {
            Ok(_) if theirs != mine => Err(self.usage(format!(
                "map_reduce: this rank's values are {mine} bytes, the root's {theirs}"
            ))),
            partial => partial,
        };
        let width = usize::try_from(theirs).expect("the root's size of a type fits a usize");
        // A record: [failed: u8][the partial's bytes].
        let mut record = vec![0u8; 1 + width];
        match &partial {
            Ok(p) => record[1..].copy_from_slice(bytemuck::bytes_of(p)),
            Err(_) => record[0] = 1,
        }
        // The verdict: the lowest failed rank (`size` for none), then the value.
        let mut verdict = vec![0u8; 8 + width];
        if self.rank == ROOT {
            let mut records = vec![0u8; self.size * record.len()];
            root.gather_into_root(&record[..], &mut records[..]);
            let failed = records
                .chunks(record.len())
                .position(|r| r[0] != 0)
                .unwrap_or(self.size);
            let mut value = Ok(identity);
            if failed == self.size {
                let partials: Vec<A> = records
                    .chunks(record.len())
                    .map(|r| bytemuck::pod_read_unaligned(&r[1..]))
                    .collect();
                value = self.pool.map_reduce_chunked(
                    &partials,
                    partials.len().max(1),
                    |a: A| a,
                    reduce,
                    identity,
                );
            }
            let code = match &value {
                Ok(v) => {
                    verdict[8..].copy_from_slice(bytemuck::bytes_of(v));
                    failed
                }
                // The root's own combination failed.
                Err(_) => ROOT,
            };
            verdict[..8].copy_from_slice(&(code as u64).to_ne_bytes());
            root.broadcast_into(&mut verdict[..]);
            if code < self.size {
                let message = match (code == ROOT, &partial, &value) {
                    (true, Err(e), _) | (true, Ok(_), Err(e)) => message_of(e),
                    _ => String::new(),
                };
                return Err(self.failure(code, message));
            }
            value
        } else {
            root.gather_into(&record[..]);
            root.broadcast_into(&mut verdict[..]);
            let code = u64::from_ne_bytes(verdict[..8].try_into().expect("8 bytes"));
            let code = usize::try_from(code).unwrap_or(usize::MAX).min(self.size);
            if code < self.size {
                let message = match &partial {
                    Err(e) if code == self.rank => message_of(e),
                    _ => String::new(),
                };
                return Err(self.failure(code, message));
            }
            Ok(bytemuck::pod_read_unaligned(&verdict[8..]))
        }
    }

    fn root(&self) -> mpi::topology::Process<'_> {
        self.comm.process_at_rank(ROOT as Rank)
    }
}

/// Whether `pool` was built before MPI was initialised (see
/// [`Cluster::new`]), as this rank's local outcome.
fn built_before_mpi(pool: &Pool, rank: usize) -> Result<(), Error> {
    // `apply_async`, not `apply`: a pool that lets its caller run ranges
    // (`caller_runs`) would run a blocking `apply` in this process.
    let asked = pool
        .apply_async(0u8, |_| u8::from(mpi::environment::is_initialized()))
        .and_then(|r| r.get());
    match asked {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::remote(
            rank,
            "the pool was built after MPI was initialised, or its template \
             was replaced since (it died, and was forked again from this \
             process): build the pool before mpi::initialize() (its workers \
             are copies of an MPI process, and an MPI call in a task would \
             hang)",
        )),
        Err(e) => Err(e),
    }
}

impl Drop for Cluster<'_> {
    /// Frees the cluster's communicator (`MPI_Comm_free`, collective like
    /// every operation: every rank drops its cluster). After `MPI_Finalize`
    /// (the `Universe` dropped first) it can no longer be freed, and is
    /// left to the process's exit.
    ///
    /// Dropped by a panic that unwinds past it, the cluster ends the whole
    /// job (`MPI_Abort`), as a rank that dies would: this rank will call none
    /// of the cluster's collectives again, so the other ranks would wait in
    /// their next one, and this rank in `MPI_Finalize`, forever.
    fn drop(&mut self) {
        if mpi::environment::is_finalized() {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "shmpool-mpi: rank {} of {} panicked with its cluster alive; \
                 MPI_Abort ends the job (the other ranks would wait for it forever)",
                self.rank, self.size
            );
            self.comm.abort(101);
        }
        // SAFETY: `comm` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.comm) };
    }
}

impl std::fmt::Debug for Cluster<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("pool", self.pool)
            .finish()
    }
}
