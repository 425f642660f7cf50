//! The numeric forms of `map`: zips (`map2`, `map3`), whole-range kernels
//! (`map_chunks`), in-place maps, stencils (`map_indexed`, `map_indexed_with`)
//! and reductions (`map_reduce`). Each is one job (a reduction two) over shared memory, run
//! by the workers like a plain `map`; only the trampoline differs (`job.rs`).

use std::mem::size_of;

use bytemuck::Pod;

use crate::element::Element;
use crate::error::Error;
use crate::parent::place::Place;
use crate::parent::ring::{InlineData, Loc, Waiter};
use crate::pool::{More, Output, Parts, Pool, Schedule, check_align, into_vec};
use crate::shmvec::ShmVec;
use crate::worker::job::CAPTURE_MESSAGE;
use crate::worker::job::{
    RunFn, run_chunks, run_in_place, run_indexed, run_indexed_with, run_map2, run_map3, run_reduce,
};

/// The identity, as a zero-sized fn item: the "map" of the combining job.
fn pass_through<A>(a: A) -> A {
    a
}

/// `run_reduce` for the closure types of `map` and `reduce`, named by value.
fn reduce_fn<T, A, M, R>(_map: M, _reduce: R) -> RunFn
where
    T: Pod,
    A: Pod,
    M: Fn(T) -> A + Copy,
    R: Fn(A, A) -> A + Copy,
{
    run_reduce::<T, A, M, R>
}

fn same_length(lens: &[usize]) -> Result<usize, Error> {
    let n = lens[0];
    if lens.iter().any(|&l| l != n) {
        return Err(Error::invalid(format!(
            "zipped inputs must have the same length, not {lens:?}"
        )));
    }
    Ok(n)
}

impl Pool {
    /// `f(a[i], b[i])` for every `i`, in parallel: a zip of two slices
    /// (saxpy, elementwise arithmetic). Inputs in this pool's shared memory
    /// or in the shared heap are read in place; others are copied in once.
    ///
    /// # Errors
    /// `InvalidArgument` if the lengths differ; otherwise as
    /// [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let x = pool.to_shm(&[1.0f32, 2.0, 3.0])?;
    /// let y = vec![10.0f32, 20.0, 30.0];
    /// let saxpy = pool.map2(&x, &y, |x, y| 2.0 * x + y)?;
    /// assert_eq!(saxpy, vec![12.0, 24.0, 36.0]);
    /// assert!(pool.map2(&x, &y[..2], |x, y| x + y).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map2<A, B, U, F>(&self, a: &[A], b: &[B], f: F) -> Result<ShmVec<U>, Error>
    where
        A: Element,
        B: Element,
        U: Element,
        F: Fn(A, B) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        let len = same_length(&[a.len(), b.len()])?;
        if len == 0 {
            return Ok(ShmVec::new());
        }
        let input = self.place_input(a)?;
        let second = self.place_input(b)?;
        self.run_blocking::<U>(
            len,
            run_map2::<A, B, U, F>,
            input,
            Some(second),
            None,
            More::default(),
        )
    }

    /// `f(a[i], b[i], c[i])` for every `i`: a zip of three slices. For more
    /// columns, zip them into a `Pod` struct (or map over indices with
    /// [`map_indexed`](Self::map_indexed)).
    ///
    /// # Errors
    /// As [`map2`](Self::map2).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let fma = pool.map3(&[1.0f64, 2.0], &[3.0, 4.0], &[0.5, 0.5], |a, b, c| a.mul_add(b, c))?;
    /// assert_eq!(fma, vec![3.5, 8.5]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map3<A, B, C, U, F>(&self, a: &[A], b: &[B], c: &[C], f: F) -> Result<ShmVec<U>, Error>
    where
        A: Element,
        B: Element,
        C: Element,
        U: Element,
        F: Fn(A, B, C) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        let len = same_length(&[a.len(), b.len(), c.len()])?;
        if len == 0 {
            return Ok(ShmVec::new());
        }
        let input = self.place_input(a)?;
        let (b_loc, b_block) = self.place_input(b)?;
        let (c_loc, c_block) = self.place_input(c)?;
        // Inputs are never inline: the offsets stand on their own.
        let more = More {
            words: [b_loc.resolve(0), c_loc.resolve(0)],
            holds: [b_block, c_block],
        };
        self.run_blocking::<U>(len, run_map3::<A, B, C, U, F>, input, None, None, more)
    }

    /// Runs `f(&input[r], &mut output[r])` once per claimed range `r`: a
    /// vectorised kernel over whole slices instead of one element at a time.
    /// The ranges partition `0..input.len()` and are scheduled as for
    /// [`map`](Self::map): the pool's [`chunk_size`](crate::Builder::chunk_size)
    /// elements each, by default about 16 ranges per worker
    /// (`input.len() / (16 × workers)` elements), shrinking as the job goes
    /// when the pool is [`guided`](crate::Builder::guided). `out` holds
    /// unspecified values on entry (reused shared memory): write every
    /// element.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    /// let ys = pool.map_chunks(&xs, |inp: &[f32], out: &mut [f32]| {
    ///     for (o, &x) in out.iter_mut().zip(inp) {
    ///         *o = x * 0.5;
    ///     }
    /// })?;
    /// assert_eq!(ys[999], 499.5);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_chunks<T, U, F>(&self, input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Element,
        U: Element,
        F: Fn(&[T], &mut [U]) + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let placed = self.place_input(input)?;
        self.run_blocking::<U>(
            input.len(),
            run_chunks::<T, U, F>,
            placed,
            None,
            None,
            More::default(),
        )
    }

    /// `out[i] = f(input, i)` for every `i`: each call sees the whole input,
    /// for stencils, neighbours and anything indexed. The input is read-only.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs = [1.0f64, 2.0, 4.0, 8.0];
    /// // A 3-point moving average, clamped at the ends.
    /// let avg = pool.map_indexed(&xs, |x: &[f64], i| {
    ///     let (lo, hi) = (i.saturating_sub(1), (i + 1).min(x.len() - 1));
    ///     x[lo..=hi].iter().sum::<f64>() / (hi - lo + 1) as f64
    /// })?;
    /// assert_eq!(avg, vec![1.5, 7.0 / 3.0, 14.0 / 3.0, 6.0]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_indexed<T, U, F>(&self, input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        T: Element,
        U: Element,
        F: Fn(&[T], usize) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let placed = self.place_input(input)?;
        self.run_blocking::<U>(
            input.len(),
            run_indexed::<T, U, F>,
            placed,
            None,
            None,
            More::default(),
        )
    }

    /// [`map_indexed`](Self::map_indexed) with a context value that every
    /// call receives by reference: `out[i] = f(&ctx, input, i)`. The way to
    /// give an indexed task its parameters, such as a stencil's weights or
    /// the global position of a block that is part of a larger array.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// // This block starts at global index 1000 of a larger array.
    /// let block = [0.5f64, 0.25, 0.125];
    /// let ys = pool.map_indexed_with(1000usize, &block, |first, x: &[f64], i| {
    ///     (first + i) as f64 * x[i]
    /// })?;
    /// assert_eq!(ys, vec![500.0, 250.25, 125.25]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_indexed_with<C, T, U, F>(
        &self,
        ctx: C,
        input: &[T],
        f: F,
    ) -> Result<ShmVec<U>, Error>
    where
        C: Element,
        T: Element,
        U: Element,
        F: Fn(&C, &[T], usize) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let mut inline = InlineData::new();
        let ctx = self.place_value(&ctx, &mut inline)?;
        let placed = self.place_input(input)?;
        let run: RunFn = run_indexed_with::<C, T, U, F>;
        let out = self.alloc::<U>(input.len())?.into_alloc();
        let sched = self.schedule_for::<U>(input.len());
        let (slot, seq) = self.submit_parts(Parts {
            len: input.len(),
            sched,
            run,
            input: placed,
            more: More::default(),
            ctx: Some(ctx),
            out: Output::New(out),
            inline,
            waiter: Waiter::Sync,
        })?;
        Ok(into_vec(self.inner.wait_sync(slot, seq)?, input.len()))
    }

    /// `v[i] = f(v[i])` for every element, in place: no output is
    /// allocated. The `&mut` borrow keeps the caller from touching `v` while
    /// the workers write it.
    ///
    /// Workers update `v` in place when it lies in this pool's shared memory
    /// (a [`ShmVec`] of this pool) or in the shared heap
    /// ([`SharedHeap`](crate::SharedHeap)); any other slice is staged:
    /// copied into this pool's arena, mapped there, and copied back once the
    /// job succeeded (both copies counted in
    /// [`Stats::bytes_staged`](crate::Stats::bytes_staged)).
    ///
    /// If the job fails, a `v` updated in place holds a mix of old and new
    /// values (the ranges that ran, and any partly run range); a staged `v`
    /// is left as it was. A range whose worker dies is **not** retried
    /// (unlike other jobs): it may have been half updated, and running it
    /// again would apply `f` twice; the job fails with `WorkerDied`.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut v = pool.to_shm(&[1u32, 2, 3])?;
    /// pool.map_in_place(&mut v, |x| x * 10)?;
    /// assert_eq!(v, vec![10, 20, 30]);
    /// let mut plain = vec![1u32, 2, 3];
    /// pool.map_in_place(&mut plain, |x| x + 1)?; // staged and copied back
    /// assert_eq!(plain, vec![2, 3, 4]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_in_place<T, F>(&self, v: &mut [T], f: F) -> Result<(), Error>
    where
        T: Element,
        F: Fn(T) -> T + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        if v.is_empty() {
            return Ok(());
        }
        let (len, bytes) = (v.len(), size_of_val(v));
        self.write_through(v, true, |at| {
            let sched = self.schedule_for::<T>(len);
            self.submit_parts(Parts {
                len,
                sched,
                run: run_in_place::<T, F>,
                input: (at, None),
                more: More::default(),
                ctx: None,
                out: Output::Input(bytes),
                inline: InlineData::new(),
                waiter: Waiter::Sync,
            })
        })
    }

    /// Folds `map(x)` over `input` with `reduce`, starting from `identity`:
    /// `reduce(..reduce(reduce(identity, map(x0)), map(x1)).., map(xn))`
    /// reassociated across ranges. Each range's partial is folded by the
    /// worker that ran it; the partials are then combined *in index order*,
    /// by a worker too (user code never runs in the caller's process, unless
    /// the pool was built with [`caller_runs`](crate::Builder::caller_runs)).
    /// `reduce` must be associative, and `identity` its identity. Empty input
    /// returns `identity`. A `reduce` that is not associative (`a - b`, a
    /// mean of two) gives an answer that depends on where the ranges fall:
    /// `map` in the pool, then fold the results in order yourself.
    ///
    /// The partition into ranges depends on the input length and the pool
    /// (its worker count, or its `chunk_size`), never on scheduling, so a
    /// floating-point sum is the same on every run of the same pool. For the
    /// same result on *any* pool, use
    /// [`map_reduce_chunked`](Self::map_reduce_chunked).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
    /// let sum_sq = pool.map_reduce(&xs, |x| x * x, |a, b| a + b, 0.0)?;
    /// assert_eq!(sum_sq, 333_833_500.0);
    /// let max = pool.map_reduce(&[3u32, 9, 4], |x| x, u32::max, 0)?;
    /// assert_eq!(max, 9);
    /// // Not associative: each range's partial is subtracted, and then the
    /// // partials are combined with `-` again, which adds some back.
    /// let xs: Vec<i64> = (1..=100).collect();
    /// let serial = xs.iter().fold(0, |a, b| a - b);
    /// let ranged = pool.map_reduce_chunked(&xs, 10, |x| x, |a, b| a - b, 0)?;
    /// assert_eq!(serial, -5050);
    /// assert_ne!(ranged, serial);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_reduce<T, A, M, R>(
        &self,
        input: &[T],
        map: M,
        reduce: R,
        identity: A,
    ) -> Result<A, Error>
    where
        T: Element,
        A: Element,
        M: Fn(T) -> A + Copy + Send + Sync + 'static,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<M>() == 0, "{}", CAPTURE_MESSAGE) };
        const { assert!(size_of::<R>() == 0, "{}", CAPTURE_MESSAGE) };
        let chunk = self.chunk_for::<A>(input.len());
        self.reduce_with(input, chunk, map, reduce, identity)
    }

    /// [`map_reduce`](Self::map_reduce) with ranges of exactly `chunk`
    /// elements (the last may be shorter): the deterministic mode. The
    /// partials, and the order they are combined in, depend only on the
    /// input and `chunk`, so a floating-point reduction gives bit-identical
    /// results on every run, whatever the pool's size or scheduling.
    ///
    /// # Errors
    /// `InvalidArgument` for a `chunk` of 0; otherwise as
    /// [`map`](Self::map).
    ///
    /// ```
    /// let xs: Vec<f64> = (0..100_000).map(|i| (i as f64).sin()).collect();
    /// let two = shmpool::Pool::new(2)?;
    /// let three = shmpool::Pool::new(3)?;
    /// let a = two.map_reduce_chunked(&xs, 4096, |x| x, |a, b| a + b, 0.0)?;
    /// let b = three.map_reduce_chunked(&xs, 4096, |x| x, |a, b| a + b, 0.0)?;
    /// assert_eq!(a.to_bits(), b.to_bits());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_reduce_chunked<T, A, M, R>(
        &self,
        input: &[T],
        chunk: usize,
        map: M,
        reduce: R,
        identity: A,
    ) -> Result<A, Error>
    where
        T: Element,
        A: Element,
        M: Fn(T) -> A + Copy + Send + Sync + 'static,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<M>() == 0, "{}", CAPTURE_MESSAGE) };
        const { assert!(size_of::<R>() == 0, "{}", CAPTURE_MESSAGE) };
        // A closed pool says so first, whatever the arguments, as every
        // other entry point does.
        self.prologue(map)?;
        if chunk == 0 {
            return Err(Error::invalid("the chunk size must be at least 1"));
        }
        self.reduce_with(input, chunk, map, reduce, identity)
    }

    fn reduce_with<T, A, M, R>(
        &self,
        input: &[T],
        chunk: usize,
        map: M,
        reduce: R,
        identity: A,
    ) -> Result<A, Error>
    where
        T: Element,
        A: Element,
        M: Fn(T) -> A + Copy + Send + Sync + 'static,
        R: Fn(A, A) -> A + Copy + Send + Sync + 'static,
    {
        self.prologue(map)?;
        self.prologue(reduce)?;
        check_align::<A>()?;
        if input.is_empty() {
            return Ok(identity);
        }
        // Round one: one partial per range, each folded by its worker.
        let parts = input.len().div_ceil(chunk);
        let placed = self.place_input(input)?;
        let partials: ShmVec<A> = self.run_reduce_job(
            input.len(),
            chunk,
            parts,
            reduce_fn::<T, A, M, R>(map, reduce),
            placed,
            &identity,
        )?;
        if parts == 1 {
            return Ok(partials[0]);
        }
        if size_of::<A>() == 0 {
            // Every value of a zero-sized type is the same value.
            return Ok(identity);
        }
        // Round two: one worker combines the partials in index order.
        let Place::Arena(off) = self.locate(&partials) else {
            return Err(Error::Corrupted {
                detail: "partials outside the arena",
            });
        };
        let total: ShmVec<A> = self.run_reduce_job(
            parts,
            parts,
            1,
            reduce_fn::<A, A, _, R>(pass_through::<A>, reduce),
            (Loc::Arena(off), None),
            &identity,
        )?;
        drop(partials);
        Ok(total[0])
    }

    /// Submits a reduction over `len` elements in ranges of `chunk`, writing
    /// `parts` partials, and waits for them.
    fn run_reduce_job<A: Pod>(
        &self,
        len: usize,
        chunk: usize,
        parts: usize,
        run: RunFn,
        input: (Loc, Option<crate::shm::region::Alloc>),
        identity: &A,
    ) -> Result<ShmVec<A>, Error> {
        let mut inline = InlineData::new();
        let ctx = self.place_value(identity, &mut inline)?;
        let out = self.alloc::<A>(parts)?.into_alloc();
        let (slot, seq) = self.submit_parts(Parts {
            len,
            sched: Schedule::fixed(chunk),
            run,
            input,
            more: More::default(),
            ctx: Some(ctx),
            out: Output::New(out),
            inline,
            waiter: Waiter::Sync,
        })?;
        Ok(into_vec(self.inner.wait_sync(slot, seq)?, parts))
    }

    /// Submits a blocking map-shaped job (`len` outputs of `U`) and waits.
    pub(crate) fn run_blocking<U: Pod>(
        &self,
        len: usize,
        run: RunFn,
        input: (Loc, Option<crate::shm::region::Alloc>),
        second: Option<(Loc, Option<crate::shm::region::Alloc>)>,
        inline: Option<InlineData>,
        more: More,
    ) -> Result<ShmVec<U>, Error> {
        let out = self.alloc::<U>(len)?.into_alloc();
        let sched = self.schedule_for::<U>(len);
        let (slot, seq) = self.submit_parts(Parts {
            len,
            sched,
            run,
            input,
            more,
            ctx: second,
            out: Output::New(out),
            inline: inline.unwrap_or_else(InlineData::new),
            waiter: Waiter::Sync,
        })?;
        Ok(into_vec(self.inner.wait_sync(slot, seq)?, len))
    }
}
