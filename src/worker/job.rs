//! Type-erased jobs: the monomorphised trampolines that workers call.
//!
//! A job's descriptor names its trampoline by address. Workers are forked
//! from the parent, so every function in the binary has the same address in
//! them; `run_map::<T, U, F>` is instantiated in the parent when `map` is
//! called, and a worker calls it through a `RunFn` pointer. Inside, `F` is a
//! zero-sized closure type: the worker conjures it and calls it in a plain
//! loop that the compiler inlines and vectorises.
//!
//! Uses `unsafe` (denied at the crate root): the job trampolines read raw
//! descriptors, build slices over shared memory and conjure zero-sized tasks.

#![allow(unsafe_code)]

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::slice;

use bytemuck::Pod;

use crate::heap;
use crate::shm::region::Region;
use crate::worker::heap_view;
use crate::worker::stream::fill;

/// The message of the compile-time check on task closures.
///
/// Every public function that takes a task starts with
/// `const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };` for each
/// task type `F`, in its own body, and is `#[inline(never)]`; nothing it
/// calls checks again at compile time. The check fails after
/// monomorphisation, and rustc ends the error with "the above error was
/// encountered while instantiating `fn Pool::map::<..>`", pointing at the
/// line that instantiated the function holding the failed constant. In the
/// public function, that line is the user's call; in a shared helper it
/// would be a line of shmpool, and a function the compiler inlined into the
/// caller gets no such note at all (hence `inline(never)`: one call, next to
/// a job's microseconds). One constant per call also means one error per
/// mistake. (A macro would save the repetition, at the price of two more
/// notes about macro expansion in the user's error.)
pub(crate) const CAPTURE_MESSAGE: &str = "shmpool: this task captures variables, but a task runs in a forked worker process \
     and must be a fn item or a closure that captures nothing. \
     Pass what it needs as arguments instead: a Pod context with `map_with(ctx, &xs, |ctx, x| ..)` \
     (or `map_indexed_with`), or a read-only table with `map_shared(&table, &xs, |table, x| ..)`. \
     The last note below names your call; `{closure@file:line:col}` is the closure";

/// The run-time twin of the compile-time check, for internal paths: the public
/// entry points have already checked the type at compile time, so this
/// always passes and compiles to nothing; it keeps `conjure` sound should an
/// internal caller ever forget.
#[inline(always)]
pub(crate) fn assert_no_captures<F>() {
    assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE);
}

/// A descriptor offset with this bit set is an offset into the shared heap
/// (`SharedHeap`), not into the pool's region (design.md, "The shared heap
/// and the pool").
pub(crate) const HEAP_TAG: u64 = 1 << 63;

/// Where a job's offsets lead in the process that runs its ranges.
pub(crate) struct Memory {
    /// The pool's region: read and written at the same address.
    pub(crate) region: *mut u8,
    pub(crate) region_len: u64,
    /// The shared heap, as the runner reads it (null and 0 without a heap).
    pub(crate) heap: *const u8,
    /// The shared heap, as the runner writes it: in a worker, whose own view
    /// of the heap is read-only, the same pages at another address (the
    /// heap's writable alias); in the owner, the heap itself. Null when the
    /// runner has no way to write it (a job never puts an output there
    /// then).
    pub(crate) heap_out: *mut u8,
    pub(crate) heap_len: u64,
    /// `heap_out` is the alias, whose pages are written only through the
    /// window the worker opens on the job's output (`heap_view::set`).
    pub(crate) windowed: bool,
}

impl Memory {
    /// The memory a runner in this process uses: `region`, and the shared
    /// heap if the program has one (written through the heap's writable
    /// alias in a worker, directly in the owner).
    pub(crate) fn here(region: &Region) -> Memory {
        let heap_len = heap::capacity() as u64;
        let heap_base = heap::base() as *mut u8;
        let (heap_out, windowed) = if heap_len == 0 {
            (std::ptr::null_mut(), false)
        } else if heap::active() {
            (heap_base, false)
        } else {
            match heap::writable_alias() {
                Some(a) => (a as *mut u8, true),
                None => (std::ptr::null_mut(), false),
            }
        };
        Memory {
            region: region.base(),
            region_len: region.layout().len as u64,
            heap: heap_base.cast_const(),
            heap_out,
            heap_len,
            windowed,
        }
    }

    /// The memory the owner's caller uses when it runs ranges of its own job
    /// (`Builder::caller_runs`): the same addresses as [`here`](Self::here),
    /// with the provenance of every pointer the program has exposed for them.
    ///
    /// The job's output may be a `&mut [U]` the caller's own call holds (a
    /// `ShmVec` or a shared-heap `Vec` given to `map_into` or
    /// `map_in_place`), and that call's parameter is a protected mutable
    /// borrow. A write through the region's own pointer would be a write
    /// through a pointer the borrow was derived *from*, which the borrow
    /// rules forbid while it is protected. `place_output` exposes the
    /// borrow's provenance before the job is posted, and the writes made
    /// here go through pointers of exposed provenance, so they count as
    /// writes through (a pointer derived from) the caller's borrow, as the
    /// workers' writes from their own processes do (design.md, "Where a
    /// slice lives").
    pub(crate) fn for_caller(region: &Region) -> Memory {
        let m = Memory::here(region);
        let exposed_mut = |p: *mut u8| -> *mut u8 {
            if p.is_null() {
                p
            } else {
                std::ptr::with_exposed_provenance_mut(p.expose_provenance())
            }
        };
        Memory {
            region: exposed_mut(m.region),
            heap: exposed_mut(m.heap.cast_mut()).cast_const(),
            heap_out: exposed_mut(m.heap_out),
            ..m
        }
    }
}

/// What a trampoline needs to find its data; built by the worker from the
/// slot descriptor, which may have been scribbled on, so every field is
/// validated before use.
pub(crate) struct JobArgs {
    pub(crate) mem: Memory,
    pub(crate) in_off: u64,
    pub(crate) out_off: u64,
    pub(crate) ctx_off: u64,
    pub(crate) len: u64,
    /// `Desc::more`: `map3`'s second and third inputs, or a table's offset
    /// and length.
    pub(crate) more: [u64; 2],
    /// `Desc::window`: the heap offset and length of the job's output in
    /// the shared heap (zeros if it has none there).
    pub(crate) window: [u64; 2],
    /// The claim size (at least 1): ranges start at multiples of it.
    pub(crate) chunk: u64,
    /// Write outputs with streaming stores (`FLAG_STREAM`).
    pub(crate) stream: bool,
}

/// A descriptor that points outside the region or is misaligned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadDescriptor;

/// The signature of every trampoline: run elements `start..end`.
///
/// # Safety
/// - `args.mem` describes live mappings: `region_len` bytes at `region`,
///   and `heap_len` bytes at `heap` (readable) and at `heap_out` (if not
///   null; writable where `elems` lets a write through: all of it in the
///   owner, the job's open window in a worker);
/// - the function is the trampoline the descriptor was published with, so
///   its type parameters match the data at the offsets;
/// - no one else writes elements `start..end` of the output while it runs.
pub(crate) type RunFn = unsafe fn(&JobArgs, usize, usize) -> Result<(), BadDescriptor>;

impl JobArgs {
    /// A pointer to element `start` of an array of `count` values of `T` at
    /// descriptor offset `off` (the region's, or with `HEAP_TAG` the heap's),
    /// for reading, after checking that the whole array lies in that memory,
    /// is aligned, and that `start <= end <= count`.
    pub(crate) fn input<T>(
        &self,
        off: u64,
        count: u64,
        start: usize,
        end: usize,
    ) -> Result<*const T, BadDescriptor> {
        self.elems::<T>(off, count, start, end, false)
            .map(<*mut T>::cast_const)
    }

    /// As [`input`](Self::input), for writing: a job's output (or an
    /// in-place map's data).
    pub(crate) fn output<T>(
        &self,
        off: u64,
        count: u64,
        start: usize,
        end: usize,
    ) -> Result<*mut T, BadDescriptor> {
        self.elems::<T>(off, count, start, end, true)
    }

    /// Elements `start..end` of the array of `count` `T`s at `off`, to read,
    /// after the checks of [`input`](Self::input).
    ///
    /// # Safety
    /// [`RunFn`]'s contract: the array holds this job's `T`s, and nothing
    /// writes these elements while the slice lives (a job's inputs, context
    /// and table are read-only for its life).
    pub(crate) unsafe fn read<T: Pod>(
        &self,
        off: u64,
        count: u64,
        start: usize,
        end: usize,
    ) -> Result<&[T], BadDescriptor> {
        let first = self.input::<T>(off, count, start, end)?;
        // SAFETY: `input` checked that the `end - start` elements lie in a
        // live mapping and are aligned; shared memory holds initialised
        // bytes and every bit pattern is a valid Pod value; nothing writes
        // them meanwhile (the caller's contract).
        Ok(unsafe { slice::from_raw_parts(first, end - start) })
    }

    /// Elements `start..end` of the array of `count` `T`s at `off`, to
    /// write, after the checks of [`output`](Self::output).
    ///
    /// # Safety
    /// [`RunFn`]'s contract: the array holds this job's `T`s, this runner
    /// alone claimed elements `start..end` of it, and no slice this runner
    /// holds overlaps them.
    #[allow(clippy::mut_from_ref)] // shared memory: exclusivity is the caller's contract
    pub(crate) unsafe fn write<T: Pod>(
        &self,
        off: u64,
        count: u64,
        start: usize,
        end: usize,
    ) -> Result<&mut [T], BadDescriptor> {
        let first = self.output::<T>(off, count, start, end)?;
        // SAFETY: as in `read`, and this runner has the elements to itself
        // (the caller's contract).
        Ok(unsafe { slice::from_raw_parts_mut(first, end - start) })
    }

    /// Where this job's output window lies in this worker's writable alias
    /// of the heap (`heap_view::set`): `None` if the job has no output in
    /// the heap, if this runner writes the heap directly (the owner), or if
    /// the window does not lie in the heap (a scribbled descriptor: the
    /// writes then fail as out of bounds).
    pub(crate) fn window_of(&self) -> Option<(usize, usize)> {
        let [off, bytes] = self.window;
        let m = &self.mem;
        let fits = off.checked_add(bytes).is_some_and(|end| end <= m.heap_len);
        (m.windowed && bytes != 0 && fits).then(|| {
            (
                m.heap_out.wrapping_add(off as usize) as usize,
                bytes as usize,
            )
        })
    }

    fn elems<T>(
        &self,
        off: u64,
        count: u64,
        start: usize,
        end: usize,
        write: bool,
    ) -> Result<*mut T, BadDescriptor> {
        let m = &self.mem;
        let in_heap = off & HEAP_TAG != 0;
        let (base, len, off) = if !in_heap {
            (m.region, m.region_len, off)
        } else if write {
            (m.heap_out, m.heap_len, off & !HEAP_TAG)
        } else {
            (m.heap.cast_mut(), m.heap_len, off & !HEAP_TAG)
        };
        let bytes = count
            .checked_mul(size_of::<T>() as u64)
            .ok_or(BadDescriptor)?;
        let last = off.checked_add(bytes).ok_or(BadDescriptor)?;
        let ok = !base.is_null()
            && last <= len
            && off % align_of::<T>() as u64 == 0
            && start <= end
            && end as u64 <= count;
        if !ok {
            return Err(BadDescriptor);
        }
        if write && in_heap && m.windowed {
            // Through the alias, only the window the worker opened for this
            // job (`window_of`) is writable: anything else would fault.
            let at = base.wrapping_add(off as usize) as usize;
            if !heap_view::covers(at, bytes as usize) {
                return Err(BadDescriptor);
            }
        }
        // In bounds by the checks above, so `add` stays within the mapping.
        Ok(base
            .wrapping_add(off as usize)
            .cast::<T>()
            .wrapping_add(start))
    }
}

/// Makes a value of the zero-sized closure type `F`.
///
/// # Safety
/// A value of `F` must have existed: the parent held one when it submitted
/// the job, so `F` is inhabited; `F: Copy`, so making another is the same as
/// copying that one.
pub(crate) unsafe fn conjure<F: Copy>() -> F {
    // Checked at compile time by every public entry point (`CAPTURE_MESSAGE`);
    // again here, at no cost, so that this function stays sound on its own.
    assert_no_captures::<F>();
    // SAFETY: reading a zero-sized type from a dangling, aligned pointer reads
    // no memory; the caller guarantees `F` is inhabited and copyable.
    unsafe { NonNull::<F>::dangling().as_ptr().read() }
}

/// The trampoline of `map`: `out[i] = f(in[i])` for `i` in `start..end`.
///
/// # Safety
/// See [`RunFn`]; `F` must satisfy [`conjure`]'s contract.
pub(crate) unsafe fn run_map<T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    U: Pod,
    F: Fn(T) -> U + Copy,
{
    // SAFETY: this worker claimed `start..end`, so no one else writes those
    // output elements, and the parent does not write the input while the
    // job runs (it is borrowed or owned by the job).
    let (input, output) = unsafe {
        (
            a.read::<T>(a.in_off, a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        let to = at + part.len();
        for (o, &x) in part.iter_mut().zip(&input[at..to]) {
            *o = f(x);
        }
    });
    Ok(())
}

/// The trampoline of `map_with`: `out[i] = f(&ctx, in[i])`.
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_map_with<C, T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    C: Pod,
    T: Pod,
    U: Pod,
    F: Fn(&C, T) -> U + Copy,
{
    // SAFETY: as in `run_map`; the context is read-only for the job's life.
    let (ctx, input, output) = unsafe {
        (
            &a.read::<C>(a.ctx_off, 1, 0, 1)?[0],
            a.read::<T>(a.in_off, a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        let to = at + part.len();
        for (o, &x) in part.iter_mut().zip(&input[at..to]) {
            *o = f(ctx, x);
        }
    });
    Ok(())
}

/// The trampoline of `map2`: `out[i] = f(a[i], b[i])`; `b` is at `ctx_off`.
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_map2<A, B, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    A: Pod,
    B: Pod,
    U: Pod,
    F: Fn(A, B) -> U + Copy,
{
    // SAFETY: as in `run_map`; both inputs are read-only for the job's life.
    let (xs, ys, output) = unsafe {
        (
            a.read::<A>(a.in_off, a.len, start, end)?,
            a.read::<B>(a.ctx_off, a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        let to = at + part.len();
        for ((o, &x), &y) in part.iter_mut().zip(&xs[at..to]).zip(&ys[at..to]) {
            *o = f(x, y);
        }
    });
    Ok(())
}

/// The trampoline of `map3`: `out[i] = f(a[i], b[i], c[i])`; the offsets of
/// `b` and `c` are the descriptor's `more` words.
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_map3<A, B, C, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    A: Pod,
    B: Pod,
    C: Pod,
    U: Pod,
    F: Fn(A, B, C) -> U + Copy,
{
    let more = a.more;
    // SAFETY: as in `run_map`; the inputs are read-only for the job's life.
    let (xs, ys, zs, output) = unsafe {
        (
            a.read::<A>(a.in_off, a.len, start, end)?,
            a.read::<B>(more[0], a.len, start, end)?,
            a.read::<C>(more[1], a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        let to = at + part.len();
        let inputs = xs[at..to].iter().zip(&ys[at..to]).zip(&zs[at..to]);
        for (o, ((&x, &y), &z)) in part.iter_mut().zip(inputs) {
            *o = f(x, y, z);
        }
    });
    Ok(())
}

/// The trampoline of `map_chunks`: `f(&in[start..end], &mut out[start..end])`.
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_chunks<T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    U: Pod,
    F: Fn(&[T], &mut [U]) + Copy,
{
    // SAFETY: as in `run_map`.
    let (input, output) = unsafe {
        (
            a.read::<T>(a.in_off, a.len, start, end)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    f(input, output);
    Ok(())
}

/// The trampoline of `map_in_place`: `v[i] = f(v[i])`, the vector being at
/// `in_off` (and `out_off`).
///
/// # Safety
/// See [`run_map`]; the parent holds the vector exclusively for the job.
pub(crate) unsafe fn run_in_place<T, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    F: Fn(T) -> T + Copy,
{
    // SAFETY: this worker alone claimed `start..end`, and the parent holds
    // the vector exclusively.
    let data = unsafe { a.write::<T>(a.in_off, a.len, start, end)? };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    for x in data {
        *x = f(*x);
    }
    Ok(())
}

/// The trampoline of `map_reduce`: folds `map(in[i])` over `start..end` from
/// the identity (at `ctx_off`) with `reduce`, and writes the range's partial
/// to `partials[start / chunk]` (at `out_off`; `ceil(len / chunk)` of them).
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_reduce<T, A, M, R>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    A: Pod,
    M: Fn(T) -> A + Copy,
    R: Fn(A, A) -> A + Copy,
{
    let chunk = a.chunk.max(1);
    let parts = a.len.div_ceil(chunk);
    let index = start as u64 / chunk;
    // Exactly one partition range: a retried range from a scribbled record
    // must not span several partials.
    if start as u64 % chunk != 0 || end as u64 != (start as u64 + chunk).min(a.len) {
        return Err(BadDescriptor);
    }
    // SAFETY: as in `run_map`; the identity is read-only; partial `index`
    // belongs to this range alone.
    let (identity, input, partial) = unsafe {
        (
            a.read::<A>(a.ctx_off, 1, 0, 1)?[0],
            a.read::<T>(a.in_off, a.len, start, end)?,
            a.write::<A>(a.out_off, parts, index as usize, index as usize + 1)?,
        )
    };
    // SAFETY: the parent held an `M` and an `R` when it submitted the job.
    let (map, reduce) = unsafe { (conjure::<M>(), conjure::<R>()) };
    partial[0] = input.iter().fold(identity, |acc, &x| reduce(acc, map(x)));
    Ok(())
}

/// The trampoline of `map_indexed`: `out[i] = f(&in, i)`, where every call
/// sees the whole input (stencils, neighbours).
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_indexed<T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    U: Pod,
    F: Fn(&[T], usize) -> U + Copy,
{
    let len = usize::try_from(a.len).map_err(|_| BadDescriptor)?;
    // SAFETY: as in `run_map`; the whole input is read-only for the job.
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
            *o = f(input, start + at + k);
        }
    });
    Ok(())
}

/// The trampoline of `map_indexed_with`: `out[i] = f(&ctx, &input, i)`.
///
/// # Safety
/// See [`run_map`].
pub(crate) unsafe fn run_indexed_with<C, T, U, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    C: Pod,
    T: Pod,
    U: Pod,
    F: Fn(&C, &[T], usize) -> U + Copy,
{
    let len = usize::try_from(a.len).map_err(|_| BadDescriptor)?;
    // SAFETY: as in `run_indexed`; the context is read-only for the job's
    // life, like the input.
    let (ctx, input, output) = unsafe {
        (
            &a.read::<C>(a.ctx_off, 1, 0, 1)?[0],
            a.read::<T>(a.in_off, a.len, 0, len)?,
            a.write::<U>(a.out_off, a.len, start, end)?,
        )
    };
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    fill(output, a.stream, |part, at| {
        for (k, o) in part.iter_mut().enumerate() {
            *o = f(ctx, input, start + at + k);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &mut [u64], in_off: u64, out_off: u64, len: u64) -> JobArgs {
        JobArgs {
            mem: Memory {
                region: buf.as_mut_ptr().cast(),
                region_len: (buf.len() * 8) as u64,
                heap: std::ptr::null(),
                heap_out: std::ptr::null_mut(),
                heap_len: 0,
                windowed: false,
            },
            in_off,
            out_off,
            ctx_off: 0,
            len,
            more: [0; 2],
            window: [0; 2],
            chunk: 1,
            stream: false,
        }
    }

    /// Runs `run_map` with the closure type of `f`, as a worker would.
    fn run<F: Fn(u64) -> u64 + Copy>(
        _f: F,
        a: &JobArgs,
        start: usize,
        end: usize,
    ) -> Result<(), BadDescriptor> {
        // SAFETY: `a` describes a live buffer of u64s, matching T = U = u64,
        // and we hold a value of `F`.
        unsafe { run_map::<u64, u64, F>(a, start, end) }
    }

    #[test]
    fn runs_exactly_the_claimed_range() {
        let mut buf = [0u64; 16];
        buf[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let a = args(&mut buf, 0, 64, 8);
        run(|x| x * x, &a, 2, 5).unwrap();
        run(|x| x * x, &a, 7, 7).unwrap();
        assert_eq!(&buf[8..], &[0, 0, 9, 16, 25, 0, 0, 0]);
        assert_eq!(run(|x| x, &a, 5, 9), Err(BadDescriptor));
    }

    #[test]
    fn rejects_out_of_bounds_descriptors() {
        let mut buf = [0u64; 16];
        let a = args(&mut buf, 0, 120, 8);
        assert_eq!(
            a.input::<u64>(a.out_off, a.len, 0, 8).err(),
            Some(BadDescriptor)
        );
        assert_eq!(
            a.input::<u64>(3, 1, 0, 1).err(),
            Some(BadDescriptor),
            "misaligned"
        );
        assert_eq!(
            a.input::<u64>(0, 8, 4, 9).err(),
            Some(BadDescriptor),
            "end past len"
        );
        assert_eq!(
            a.input::<u64>(0, u64::MAX, 0, 1).err(),
            Some(BadDescriptor),
            "overflow"
        );
        assert!(a.input::<u64>(64, 8, 0, 8).is_ok());
    }

    #[test]
    fn heap_offsets_resolve_against_the_heap_views() {
        let mut region = [0u64; 4];
        let heap = [0u64; 8];
        let mut alias = [0u64; 8];
        let mut a = args(&mut region, 0, 0, 4);
        a.mem.heap = heap.as_ptr().cast();
        a.mem.heap_out = alias.as_mut_ptr().cast();
        a.mem.heap_len = 64;
        let read = a.input::<u64>(HEAP_TAG | 16, 4, 1, 4).unwrap();
        assert_eq!(read, heap[2..].as_ptr().wrapping_add(1));
        let write = a.output::<u64>(HEAP_TAG | 16, 4, 0, 4).unwrap();
        assert_eq!(write.cast_const(), alias[2..].as_ptr());
        assert!(
            a.input::<u64>(HEAP_TAG | 40, 4, 0, 4).is_err(),
            "past the heap"
        );
        assert!(a.input::<u64>(16, 4, 0, 4).is_err(), "past the region");
        a.mem.heap_out = std::ptr::null_mut();
        assert!(
            a.output::<u64>(HEAP_TAG, 4, 0, 4).is_err(),
            "no writable view of the heap"
        );
        assert!(a.input::<u64>(HEAP_TAG, 4, 0, 4).is_ok());
    }

    fn run3<F: Fn(u64, u64, u64) -> u64 + Copy>(a: &JobArgs, _: F) -> Result<(), BadDescriptor> {
        // SAFETY: `a` describes `buf`; the types match what the test put there.
        unsafe { run_map3::<u64, u64, u64, u64, F>(a, 0, 2) }
    }

    #[test]
    fn map3_reads_its_second_and_third_inputs_at_the_more_words() {
        // a at 16, b at 32, c at 48, out at 64.
        let mut buf = [0u64, 0, 1, 2, 10, 20, 100, 200, 0, 0, 0, 0];
        let mut a = args(&mut buf, 16, 64, 2);
        a.more = [32, 48];
        assert_eq!(run3(&a, |x, y, z| x + y + z), Ok(()));
        assert_eq!(&buf[8..10], &[111, 222]);
        // Past the memory, or misaligned: refused.
        for (i, bad) in [(0, 96u64), (1, 88), (0, 33), (1, u64::MAX)] {
            let mut buf = [0u64, 0, 1, 2, 10, 20, 100, 200, 0, 0, 0, 0];
            let mut a = args(&mut buf, 16, 64, 2);
            a.more = [32, 48];
            a.more[i] = bad;
            assert_eq!(
                run3(&a, |x, y, z| x + y + z),
                Err(BadDescriptor),
                "{i} at {bad}"
            );
        }
    }

    fn run_iw<F: Fn(&u64, &[u64], usize) -> u64 + Copy>(
        a: &JobArgs,
        start: usize,
        end: usize,
        _: F,
    ) -> Result<(), BadDescriptor> {
        // SAFETY: `a` describes `buf`; the types match what the test put there.
        unsafe { run_indexed_with::<u64, u64, u64, F>(a, start, end) }
    }

    #[test]
    fn indexed_with_sees_context_whole_input_and_index() {
        // ctx at 0, input at 8..40 (4 values), output at 40..72.
        let mut buf = [100u64, 1, 2, 3, 4, 0, 0, 0, 0];
        let mut a = args(&mut buf, 8, 40, 4);
        a.ctx_off = 0;
        let f = |c: &u64, x: &[u64], i: usize| c + x[i] * 10 + x.len() as u64 + i as u64;
        assert_eq!(run_iw(&a, 1, 3, f), Ok(()));
        assert_eq!(&buf[5..], &[0, 125, 136, 0]);
        a.ctx_off = 72;
        assert_eq!(run_iw(&a, 0, 1, f), Err(BadDescriptor), "context outside");
    }
}
