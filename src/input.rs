//! What `map_async` accepts, and why borrowed inputs are copied.
//!
//! An asynchronous job outlives the call that started it. If it read a
//! borrowed input in place, the only thing keeping the caller from changing
//! that input under the workers would be the result's destructor, and
//! `mem::forget` is safe. So an asynchronous job owns its input: a borrowed
//! slice is copied once into a block the job owns, and a [`ShmVec`] moved in
//! is read in place. (The blocking `map` borrows for the whole call and never
//! copies a `ShmVec`.)

use bytemuck::Pod;

use crate::shmvec::ShmVec;

pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {}

    /// How an input reaches the job.
    pub enum Source<'a, T> {
        /// Copied into the arena when the job is submitted.
        Copy(&'a [T]),
        /// Owned by the job, read in place, freed when the job finishes.
        Own(ShmVec<T>),
        /// Owned by the job: read in place if it lies in the shared heap
        /// (kept until the job finishes), else copied in and dropped.
        Vec(Vec<T>),
    }

    impl<T: Pod> std::fmt::Debug for Source<'_, T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let (how, len) = match self {
                Source::Copy(s) => ("Copy", s.len()),
                Source::Own(v) => ("Own", v.len()),
                Source::Vec(v) => ("Vec", v.len()),
            };
            write!(f, "Source::{how}({len} elements)")
        }
    }
}

/// An input for [`Pool::map_async`](crate::Pool::map_async): a borrowed
/// slice, `Vec`, array or `ShmVec`, copied into shared memory once; or a
/// `Vec` or [`ShmVec`] moved in. A moved `ShmVec` of this pool, and a moved
/// `Vec` whose buffer lies in the shared heap
/// ([`SharedHeap`](crate::SharedHeap)), are read in place with no copy and
/// kept until the job finishes; any other moved input is copied in, then
/// dropped.
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let v: Vec<u32> = (0..1000).collect();
/// let a = pool.map_async(&v, |x| x + 1)?;          // copied: `v` stays yours
/// let shm = pool.to_shm(&v)?;
/// let b = pool.map_async(shm, |x| x + 1)?;         // moved in: no copy
/// assert_eq!(a.get()?, b.get()?);
/// assert_eq!(pool.stats().bytes_staged, 4000);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an input `map_async` accepts",
    label = "not a slice, array, `Vec` or `ShmVec` of plain old data",
    note = "`map_async` takes a slice, array, `Vec` or `ShmVec` (borrowed, or moved in) \
            of plain old data: numbers, arrays of them (`[f64; 2]` for a pair, not `(f64, f64)`), \
            or a `#[repr(C)]` struct with `#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]`"
)]
pub trait AsyncInput<'a>: sealed::Sealed {
    /// The element type.
    type Elem;
    #[doc(hidden)]
    fn source(self) -> sealed::Source<'a, Self::Elem>;
}

macro_rules! copied {
    ($($ty:ty),*) => {$(
        impl<'a, T> sealed::Sealed for $ty {}
        impl<'a, T> AsyncInput<'a> for $ty {
            type Elem = T;
            fn source(self) -> sealed::Source<'a, T> {
                sealed::Source::Copy(self)
            }
        }
    )*};
}

copied!(&'a [T], &'a Vec<T>);

// The other impls take any element type, so that a non-`Pod` one fails
// `map_async`'s own `Element` bound, whose message says what to use instead.
// This one needs `Pod` to read the vector as a slice; a `ShmVec` of any
// other type cannot be made, so the bound hides no message.
impl<T: Pod> sealed::Sealed for &ShmVec<T> {}
impl<'a, T: Pod> AsyncInput<'a> for &'a ShmVec<T> {
    type Elem = T;
    fn source(self) -> sealed::Source<'a, T> {
        sealed::Source::Copy(self)
    }
}

impl<T, const N: usize> sealed::Sealed for &[T; N] {}
impl<'a, T, const N: usize> AsyncInput<'a> for &'a [T; N] {
    type Elem = T;
    fn source(self) -> sealed::Source<'a, T> {
        sealed::Source::Copy(self)
    }
}

impl<T> sealed::Sealed for Vec<T> {}
impl<T> AsyncInput<'static> for Vec<T> {
    type Elem = T;
    fn source(self) -> sealed::Source<'static, T> {
        sealed::Source::Vec(self)
    }
}

impl<T> sealed::Sealed for ShmVec<T> {}
impl<T> AsyncInput<'static> for ShmVec<T> {
    type Elem = T;
    fn source(self) -> sealed::Source<'static, T> {
        sealed::Source::Own(self)
    }
}
