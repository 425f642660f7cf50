//! Maps that hand every call a whole read-only table: `map_shared` and
//! `map_shared_indexed` (a lookup table, a matrix, model parameters).
//!
//! The table is placed like any input (`place.rs`): read in place when it
//! lies in this pool's arena or in the shared heap, copied in once per call
//! otherwise. Its descriptor offset and length are the descriptor's `more`
//! words, which the harvest compares with what it published, like every
//! descriptor word; the trampolines here validate them as `JobArgs`
//! validates every offset.
//!
//! Uses `unsafe` (denied at the crate root): the table trampolines read a
//! job's raw descriptor and conjure its zero-sized task (`job::conjure`).

#![allow(unsafe_code)]

use std::slice;

use bytemuck::Pod;

use crate::element::Element;
use crate::error::Error;
use crate::pool::{More, Pool};
use crate::shmvec::ShmVec;
use crate::worker::job::{BadDescriptor, CAPTURE_MESSAGE, JobArgs, RunFn, conjure};
use crate::worker::stream::fill;

/// The table of job `a`, validated.
///
/// # Safety
/// As [`RunFn`]: `a.mem` describes live mappings; the table holds `S`s and
/// is read-only for the job's life.
unsafe fn table<S: Pod>(a: &JobArgs) -> Result<&[S], BadDescriptor> {
    let [off, len] = a.more;
    let n = usize::try_from(len).map_err(|_| BadDescriptor)?;
    let table = a.input::<S>(off, len, 0, n)?;
    // SAFETY: checked to lie in the mapping and be aligned; initialised Pod
    // memory, read-only for the job (the caller's contract).
    Ok(unsafe { slice::from_raw_parts(table, n) })
}

/// The trampoline of `map_shared`: `out[i] = f(&table, in[i])`.
///
/// # Safety
/// See [`RunFn`] and [`conjure`].
unsafe fn run_shared<S, T, U, F>(a: &JobArgs, start: usize, end: usize) -> Result<(), BadDescriptor>
where
    S: Pod,
    T: Pod,
    U: Pod,
    F: Fn(&[S], T) -> U + Copy,
{
    // SAFETY: the caller's contract.
    let table = unsafe { table::<S>(a)? };
    // SAFETY: as in `job::run_map`: this runner alone claimed `start..end`
    // of the output; the input is read-only for the job's life.
    let (input, output) = unsafe {
        (
            a.read::<T>(a.in_off, a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        for (o, &x) in part.iter_mut().zip(&input[at..]) {
            *o = f(table, x);
        }
    });
    Ok(())
}

/// The trampoline of `map_shared_indexed`: `out[i] = f(&table, &in, i)`.
///
/// # Safety
/// See [`RunFn`] and [`conjure`].
unsafe fn run_shared_indexed<S, T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    S: Pod,
    T: Pod,
    U: Pod,
    F: Fn(&[S], &[T], usize) -> U + Copy,
{
    // SAFETY: the caller's contract.
    let table = unsafe { table::<S>(a)? };
    let len = usize::try_from(a.len).map_err(|_| BadDescriptor)?;
    // SAFETY: as in `run_shared`; the whole input is read-only for the job.
    let (input, output) = unsafe {
        (
            a.read::<T>(a.in_off, a.len, 0, len)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        for (k, o) in part.iter_mut().enumerate() {
            *o = f(table, input, start + at + k);
        }
    });
    Ok(())
}

impl Pool {
    /// `out[i] = f(&table, input[i])`: every call sees the whole `table`
    /// (a lookup table, model parameters, a matrix), read-only.
    ///
    /// The table is read in place when it lies in this pool's shared memory
    /// (a [`ShmVec`]) or in the shared heap ([`SharedHeap`]); otherwise it
    /// is copied in once per call (counted in
    /// [`Stats::bytes_staged`](crate::Stats::bytes_staged)), never once per
    /// element. The input is placed as for [`map`](Self::map).
    ///
    /// [`SharedHeap`]: crate::SharedHeap
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// // Piecewise-linear interpolation in a table of 5 knots.
    /// let knots = vec![0.0f64, 1.0, 4.0, 9.0, 16.0];
    /// let ys = pool.map_shared(&knots, &[0.5f64, 2.5, 3.75], |t: &[f64], x: f64| {
    ///     let i = (x as usize).min(t.len() - 2);
    ///     t[i] + (x - i as f64) * (t[i + 1] - t[i])
    /// })?;
    /// assert_eq!(ys, vec![0.5, 6.5, 14.25]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_shared<S, T, U, F>(&self, table: &[S], input: &[T], f: F) -> Result<ShmVec<U>, Error>
    where
        S: Element,
        T: Element,
        U: Element,
        F: Fn(&[S], T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        self.run_with_table(table, input, run_shared::<S, T, U, F>)
    }

    /// `out[i] = f(&table, &input, i)` for every `i` of `input`: each call
    /// sees the whole table and the whole input, read-only. The matrix-vector
    /// product `y = A·x` is one call, with `A` (row-major) as the table and
    /// `x` as the input. Placement is as for [`map_shared`](Self::map_shared).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// // y = A·x for a 3x3 A, one row per call.
    /// let a = vec![1.0f64, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0];
    /// let x = vec![1.0f64, 2.0, 3.0];
    /// let y = pool.map_shared_indexed(&a, &x, |a: &[f64], x: &[f64], i| {
    ///     let n = x.len();
    ///     a[i * n..(i + 1) * n].iter().zip(x).map(|(a, x)| a * x).sum::<f64>()
    /// })?;
    /// assert_eq!(y, vec![1.0, 4.0, 6.0]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_shared_indexed<S, T, U, F>(
        &self,
        table: &[S],
        input: &[T],
        f: F,
    ) -> Result<ShmVec<U>, Error>
    where
        S: Element,
        T: Element,
        U: Element,
        F: Fn(&[S], &[T], usize) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        self.run_with_table(table, input, run_shared_indexed::<S, T, U, F>)
    }

    /// Places `table` and `input` and runs `run`, a `map`-shaped job over
    /// `input` whose `more` words say where the table is.
    fn run_with_table<S: Pod, T: Pod, U: Pod>(
        &self,
        table: &[S],
        input: &[T],
        run: RunFn,
    ) -> Result<ShmVec<U>, Error> {
        if input.is_empty() {
            return Ok(ShmVec::new());
        }
        let (table_loc, table_block) = self.place_input(table)?;
        let placed = self.place_input(input)?;
        // Inputs are never inline: the offset stands on its own.
        let more = More {
            words: [table_loc.resolve(0), table.len() as u64],
            holds: [table_block, None],
        };
        self.run_blocking::<U>(input.len(), run, placed, None, None, more)
    }
}
