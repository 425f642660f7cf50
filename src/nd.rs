//! ndarray interop (feature `ndarray`): n-dimensional arrays in shared
//! memory, maps over them, and stencils that see the whole array.
//!
//! A [`ShmArray`] is a [`ShmVec`] plus a shape, in standard (row-major)
//! layout; its views are ndarray views over the shared block, so results
//! reach ndarray code with zero copies. An input array that already lies in
//! this pool's shared memory (a `ShmArray`'s view) is read in place.
//!
//! Uses `unsafe` (denied at the crate root): the stencil trampoline reads a
//! job's raw descriptor and conjures its zero-sized task (`job::conjure`).

#![allow(unsafe_code)]

use std::fmt;
use std::mem::size_of_val;
use std::slice;
use std::time::Instant;

use bytemuck::Pod;
use ndarray::{Array, ArrayBase, ArrayView, ArrayViewMut, Data, Dimension, IntoDimension};

use crate::element::Element;
use crate::error::Error;
use crate::parent::ring::InlineData;
use crate::pool::{More, Pool};
use crate::shmvec::ShmVec;
use crate::worker::job::{BadDescriptor, CAPTURE_MESSAGE, JobArgs, RunFn, conjure};

/// The most axes a stencil's array may have.
const MAX_AXES: usize = 8;

/// A stencil's array shape, as the worker receives it: the axis count, then
/// the axis lengths.
type Shape = [u64; MAX_AXES + 1];

/// An n-dimensional array in a pool's shared memory, in standard layout.
///
/// ```
/// use ndarray::array;
/// let pool = shmpool::Pool::new(2)?;
/// let a = pool.array_to_shm(&array![[1.0f64, 2.0], [3.0, 4.0]])?;
/// let doubled = pool.map_array(&a.view(), |x| 2.0 * x)?;
/// assert_eq!(doubled.view(), array![[2.0, 4.0], [6.0, 8.0]]);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct ShmArray<T, D: Dimension> {
    data: ShmVec<T>,
    dim: D,
}

impl<T: Pod, D: Dimension> ShmArray<T, D> {
    /// Gives `data` the shape `shape` (row-major).
    ///
    /// # Errors
    /// `InvalidArgument` if the shape's size is not `data.len()`.
    ///
    /// ```
    /// use shmpool::ShmArray;
    /// let pool = shmpool::Pool::new(2)?;
    /// let data = pool.to_shm(&[1u32, 2, 3, 4, 5, 6])?;
    /// let a = ShmArray::from_shmvec(data, (2, 3))?;
    /// assert_eq!(a.view()[[1, 0]], 4);
    /// let data = pool.to_shm(&[1u32, 2, 3, 4, 5, 6])?;
    /// assert!(ShmArray::from_shmvec(data, (4, 2)).is_err()); // 8 ≠ 6
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn from_shmvec<Sh>(data: ShmVec<T>, shape: Sh) -> Result<Self, Error>
    where
        Sh: IntoDimension<Dim = D>,
    {
        let dim = shape.into_dimension();
        // ndarray's own check (sizes past `isize::MAX` included), so that
        // `view` can never fail.
        if dim.size_checked() != Some(data.len())
            || ArrayView::from_shape(dim.clone(), data.as_slice()).is_err()
        {
            return Err(Error::invalid(format!(
                "a shape of {:?} does not hold {} elements",
                dim.slice(),
                data.len()
            )));
        }
        Ok(ShmArray { data, dim })
    }

    /// A view of the array: no copy.
    pub fn view(&self) -> ArrayView<'_, T, D> {
        ArrayView::from_shape(self.dim.clone(), self.data.as_slice())
            .expect("the shape was checked against the length")
    }

    /// A mutable view of the array: no copy.
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        ArrayViewMut::from_shape(self.dim.clone(), self.data.as_mut_slice())
            .expect("the shape was checked against the length")
    }

    /// The axis lengths.
    pub fn shape(&self) -> &[usize] {
        self.dim.slice()
    }

    /// The elements in row-major order.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The shared vector behind the array.
    pub fn into_shmvec(self) -> ShmVec<T> {
        self.data
    }

    /// An owned copy in ordinary memory.
    pub fn to_array(&self) -> Array<T, D> {
        self.view().to_owned()
    }
}

impl<T: Pod + fmt::Debug, D: Dimension> fmt::Debug for ShmArray<T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.view(), f)
    }
}

/// `a`'s elements in row-major order: borrowed if contiguous, else copied
/// into a new vector of `pool`'s arena (`counted`: as a staged input).
///
/// The copy goes straight into the arena, never through a `Vec` of this
/// process: a view whose memory is small but whose logical size is not (a
/// broadcast, a zero-stride axis) is bounded by the arena, and fails with
/// `OutOfSharedMemory`, instead of exhausting the caller's memory.
fn row_major<'a, S, T, D>(
    pool: &Pool,
    a: &'a ArrayBase<S, D>,
    counted: bool,
) -> Result<Elements<'a, T>, Error>
where
    S: Data<Elem = T>,
    T: Pod,
    D: Dimension,
{
    if let Some(s) = a.as_slice() {
        return Ok(Elements::Borrowed(s));
    }
    let started = Instant::now();
    let mut copy: ShmVec<T> = pool.alloc::<T>(a.len())?.into_vec(a.len());
    if size_of::<T>() != 0 {
        for (to, &from) in copy.iter_mut().zip(a.iter()) {
            *to = from;
        }
        if counted {
            pool.note_staged(size_of_val(&*copy), started);
        }
    }
    Ok(Elements::Copied(copy))
}

/// An array's elements in row-major order (`row_major`).
enum Elements<'a, T> {
    /// The array's own memory: it is contiguous.
    Borrowed(&'a [T]),
    /// A copy in the arena.
    Copied(ShmVec<T>),
}

impl<T: Pod> std::ops::Deref for Elements<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Elements::Borrowed(s) => s,
            Elements::Copied(v) => v,
        }
    }
}

impl Pool {
    /// A zeroed array of shape `shape` in shared memory.
    ///
    /// # Errors
    /// As [`alloc_zeroed`](Self::alloc_zeroed).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut grid = pool.alloc_array::<f64, _>((3, 4))?;
    /// assert_eq!(grid.shape(), [3, 4]);
    /// grid.view_mut().row_mut(1).fill(1.0);
    /// assert_eq!(grid.view().sum(), 4.0);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn alloc_array<T, Sh>(&self, shape: Sh) -> Result<ShmArray<T, Sh::Dim>, Error>
    where
        T: Element,
        Sh: IntoDimension,
    {
        let dim = shape.into_dimension();
        let len = dim
            .size_checked()
            .ok_or_else(|| Error::invalid("the array's size overflows"))?;
        ShmArray::from_shmvec(self.alloc_zeroed(len)?, dim)
    }

    /// Copies an array (any layout) into shared memory, row-major.
    ///
    /// # Errors
    /// As [`to_shm`](Self::to_shm).
    ///
    /// ```
    /// use ndarray::array;
    /// let pool = shmpool::Pool::new(2)?;
    /// let a = array![[1u32, 2], [3, 4]];
    /// let t = pool.array_to_shm(&a.t())?; // a transposed view, copied row-major
    /// assert_eq!(t.as_slice(), [1, 3, 2, 4]);
    /// assert_eq!(t.view(), a.t());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn array_to_shm<S, T, D>(&self, a: &ArrayBase<S, D>) -> Result<ShmArray<T, D>, Error>
    where
        S: Data<Elem = T>,
        T: Element,
        D: Dimension,
    {
        let data = match row_major(self, a, false)? {
            Elements::Borrowed(s) => self.to_shm(s)?,
            Elements::Copied(v) => v,
        };
        ShmArray::from_shmvec(data, a.raw_dim())
    }

    /// `f` applied to every element of an array of any dimension; the result
    /// has the same shape, in shared memory. A contiguous input in this
    /// pool's shared memory or in the shared heap
    /// ([`SharedHeap`](crate::SharedHeap)) is read in place; any other is
    /// copied in once
    /// (a non-contiguous view, row-major, straight into shared memory: a
    /// broadcast view larger than the arena is `OutOfSharedMemory`).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// ```
    /// use ndarray::Array3;
    /// let pool = shmpool::Pool::new(2)?;
    /// let cube = Array3::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 12 + j * 4 + k) as f32);
    /// let halves = pool.map_array(&cube, |x| x / 2.0)?;
    /// assert_eq!(halves.shape(), [2, 3, 4]);
    /// assert_eq!(halves.view(), cube.mapv(|x| x / 2.0));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_array<S, T, U, D, F>(
        &self,
        a: &ArrayBase<S, D>,
        f: F,
    ) -> Result<ShmArray<U, D>, Error>
    where
        S: Data<Elem = T>,
        T: Element,
        U: Element,
        D: Dimension,
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        let out = self.map_unchecked(&row_major(self, a, true)?, f)?;
        ShmArray::from_shmvec(out, a.raw_dim())
    }

    /// `out[idx] = f(&a, idx)` for every index of `a`: a stencil. Each call
    /// sees the whole array as a view (neighbours, windows, boundaries) and
    /// gets its index as ndarray's pattern (`(i, j)` for a 2-D array).
    ///
    /// # Errors
    /// `InvalidArgument` for more than 8 axes; otherwise as
    /// [`map`](Self::map).
    ///
    /// ```
    /// use ndarray::{array, ArrayView2};
    /// let pool = shmpool::Pool::new(2)?;
    /// let img = array![[0.0f32, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]];
    /// // A 3×3 box blur, clamped at the borders.
    /// let blur = pool.map_stencil(&img, |a: &ArrayView2<f32>, (i, j)| {
    ///     let (h, w) = a.dim();
    ///     let rows = i.saturating_sub(1)..(i + 2).min(h);
    ///     let cols = j.saturating_sub(1)..(j + 2).min(w);
    ///     let win = a.slice(ndarray::s![rows, cols]);
    ///     win.sum() / win.len() as f32
    /// })?;
    /// assert_eq!(blur.view()[[1, 1]], 1.0);
    /// assert_eq!(blur.view()[[0, 0]], 9.0 / 4.0);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    #[inline(never)]
    pub fn map_stencil<S, T, U, D, F>(
        &self,
        a: &ArrayBase<S, D>,
        f: F,
    ) -> Result<ShmArray<U, D>, Error>
    where
        S: Data<Elem = T>,
        T: Element,
        U: Element,
        D: Dimension,
        F: Fn(&ArrayView<'_, T, D>, D::Pattern) -> U + Copy + Send + Sync + 'static,
    {
        const { assert!(size_of::<F>() == 0, "{}", CAPTURE_MESSAGE) };
        self.prologue(f)?;
        let axes = a.ndim();
        if axes > MAX_AXES {
            return Err(Error::invalid(format!(
                "stencils support at most {MAX_AXES} axes, not {axes}"
            )));
        }
        let len = a.len();
        if len == 0 {
            return ShmArray::from_shmvec(ShmVec::new(), a.raw_dim());
        }
        let mut shape: Shape = [0; MAX_AXES + 1];
        shape[0] = axes as u64;
        for (s, &n) in shape[1..].iter_mut().zip(a.shape()) {
            *s = n as u64;
        }
        // Bound for the whole call: the workers read it in place (a copy
        // of a strided `a` lies in the arena), so it must outlive the job,
        // not just the placement.
        let elements = row_major(self, a, true)?;
        let input = self.place_input(&elements)?;
        let mut inline = InlineData::new();
        let ctx = self.place_value(&shape, &mut inline)?;
        let run: RunFn = run_stencil::<T, U, D, F>;
        let out =
            self.run_blocking::<U>(len, run, input, Some(ctx), Some(inline), More::default())?;
        drop(elements);
        ShmArray::from_shmvec(out, a.raw_dim())
    }
}

/// The trampoline of `map_stencil`: rebuilds the array view from the shape
/// in the context, then `out[i] = f(&view, index of i)`.
///
/// # Safety
/// See `job::RunFn`.
unsafe fn run_stencil<T, U, D, F>(
    a: &JobArgs,
    start: usize,
    end: usize,
) -> Result<(), BadDescriptor>
where
    T: Pod,
    U: Pod,
    D: Dimension,
    F: Fn(&ArrayView<'_, T, D>, D::Pattern) -> U + Copy,
{
    let shape = a.input::<Shape>(a.ctx_off, 1, 0, 1)?;
    // SAFETY: checked to lie in the mapping, aligned; any bits are valid.
    let shape = unsafe { shape.read() };
    let axes = usize::try_from(shape[0]).map_err(|_| BadDescriptor)?;
    if axes > MAX_AXES || D::NDIM.is_some_and(|n| n != axes) {
        return Err(BadDescriptor);
    }
    let mut dim = D::zeros(axes);
    for (d, &n) in dim.slice_mut().iter_mut().zip(&shape[1..]) {
        *d = usize::try_from(n).map_err(|_| BadDescriptor)?;
    }
    let len = usize::try_from(a.len).map_err(|_| BadDescriptor)?;
    if dim.size_checked() != Some(len) {
        return Err(BadDescriptor);
    }
    let input = a.input::<T>(a.in_off, a.len, 0, len)?;
    let output = a.output::<U>(a.out_off, a.len, start, end)?;
    // SAFETY: as in `job::run_map`: checked, aligned, initialised Pod memory;
    // the input is read-only for the job; this worker claimed `start..end`.
    let (input, output) = unsafe {
        (
            slice::from_raw_parts(input, len),
            slice::from_raw_parts_mut(output, end - start),
        )
    };
    let view = ArrayView::from_shape(dim.clone(), input).map_err(|_| BadDescriptor)?;
    // SAFETY: the parent held an `F` when it submitted the job.
    let f = unsafe { conjure::<F>() };
    let mut index = D::zeros(axes);
    for (k, o) in output.iter_mut().enumerate() {
        // Row-major position `start + k` as an index.
        let mut rest = start + k;
        for (i, &n) in index.slice_mut().iter_mut().zip(dim.slice()).rev() {
            *i = rest % n;
            rest /= n;
        }
        *o = f(&view, index.clone().into_pattern());
    }
    Ok(())
}
