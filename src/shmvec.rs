//! `ShmVec<T>`: an owned, fixed-length vector of plain-old-data in a pool's
//! shared arena.
//!
//! Uses `unsafe` (denied at the crate root): a `ShmVec` is a slice over raw
//! shared memory.

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::slice;

use bytemuck::Pod;

use crate::os;
use crate::shm::region::Alloc;

/// An owned vector of `T` in a pool's shared memory.
///
/// Workers read a `ShmVec` input in place (no copy) and write `map` outputs
/// straight into a new `ShmVec`. It dereferences to `[T]`, goes back to the
/// arena when dropped, and stays valid after its pool is dropped: the shared
/// mapping lives until the last `ShmVec` in it is gone.
///
/// Its length is fixed; make one with [`Pool::alloc_zeroed`],
/// [`Pool::to_shm`] or any `map`.
///
/// # One process only
/// A `ShmVec` is read and written only in the process that allocated it.
/// Tasks receive shared data through their arguments (a `map`'s input, a
/// `map_with` context), never as a `ShmVec`. A `ShmVec` that a task reaches
/// some other way, through a `static` filled before the pool's workers were
/// forked, or one in a child process forked from the owner, is a copy of
/// the owner's handle, not of its data: the memory behind it is the owner's,
/// live (or, in a worker, not mapped at all). Using it there would alias the
/// owner's `&mut` borrows, so it panics instead (the task then fails with
/// [`Error::TaskPanicked`](crate::Error::TaskPanicked), naming the reason).
/// Dropping such a copy does nothing: the block stays the owner's.
///
/// [`Pool::alloc_zeroed`]: crate::Pool::alloc_zeroed
/// [`Pool::to_shm`]: crate::Pool::to_shm
///
/// # Example
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let mut xs = pool.alloc_zeroed::<f64>(4)?;
/// xs.copy_from_slice(&[1.0, 4.0, 9.0, 16.0]);
/// let roots = pool.map(&xs, f64::sqrt)?; // reads `xs` in place
/// assert_eq!(&roots[..], &[1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(pool.stats().bytes_staged, 0);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct ShmVec<T> {
    ptr: NonNull<T>,
    len: usize,
    /// The arena block, owned only to be freed on drop; `None` for vectors
    /// that own no memory (empty, or zero-sized `T`).
    block: Option<Alloc>,
    /// The fork generation of the process that allocated the block: the
    /// only process where its elements may be read or written.
    owner: u64,
    _owns: PhantomData<T>,
}

// SAFETY: a ShmVec owns its block exclusively (no other ShmVec or job refers
// to it once it is handed out), like a Box<[T]>; `Alloc` is Send + Sync.
unsafe impl<T: Pod + Send> Send for ShmVec<T> {}
// SAFETY: `&ShmVec<T>` only gives `&[T]`.
unsafe impl<T: Pod + Sync> Sync for ShmVec<T> {}

impl<T: Pod> ShmVec<T> {
    /// An empty vector that owns no shared memory.
    ///
    /// ```
    /// let v = shmpool::ShmVec::<u32>::new();
    /// assert!(v.is_empty());
    /// ```
    pub const fn new() -> Self {
        ShmVec {
            ptr: NonNull::dangling(),
            len: 0,
            block: None,
            owner: 0,
            _owns: PhantomData,
        }
    }

    /// Takes ownership of an arena block holding `len` values of `T`.
    ///
    /// # Safety
    /// - `alloc` is at least `len * size_of::<T>()` bytes, aligned for `T`;
    /// - no worker reads or writes it any more, and nothing else refers to it.
    pub(crate) unsafe fn from_alloc(alloc: Alloc, len: usize) -> Self {
        if len == 0 || size_of::<T>() == 0 {
            return ShmVec {
                len,
                ..ShmVec::new()
            };
        }
        let ptr = NonNull::new(alloc.ptr().cast::<T>()).expect("arena blocks are not null");
        ShmVec {
            ptr,
            len,
            owner: alloc.owner(),
            block: Some(alloc),
            _owns: PhantomData,
        }
    }

    /// Gives up the arena block (to a job that will free it).
    pub(crate) fn into_block(self) -> Option<crate::shm::region::Alloc> {
        self.block
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements as a slice.
    ///
    /// # Panics
    /// In any process but the one that allocated the vector: a worker that
    /// reached it through a `static`, or a child forked from its owner (see
    /// [the type's docs](ShmVec#one-process-only)).
    #[inline]
    #[track_caller]
    pub fn as_slice(&self) -> &[T] {
        match self.slice_here() {
            Some(s) => s,
            None => foreign_process(),
        }
    }

    /// The elements as a slice, or `None` in any process but the one that
    /// allocated the vector (where [`as_slice`](Self::as_slice) panics).
    #[inline]
    pub(crate) fn slice_here(&self) -> Option<&[T]> {
        if !self.usable_here() {
            return None;
        }
        // SAFETY: `ptr` is aligned and valid for `len` initialised values
        // (shared memory always holds initialised bytes, and every bit
        // pattern is a valid `T: Pod`); this vector owns them, and this is
        // the process that allocated them (checked above), so no other
        // process can reach them through a `ShmVec`.
        Some(unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// The elements as a mutable slice.
    ///
    /// # Panics
    /// As [`as_slice`](Self::as_slice).
    #[inline]
    #[track_caller]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.check_process();
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Whether this process may read and write the elements: it allocated
    /// them (or the vector owns no shared memory).
    fn usable_here(&self) -> bool {
        self.block.is_none() || self.owner == os::fork_generation_registered()
    }

    #[inline]
    #[track_caller]
    fn check_process(&self) {
        if !self.usable_here() {
            foreign_process();
        }
    }
}

/// The panic of a `ShmVec` used outside the process that allocated it.
#[cold]
#[inline(never)]
#[track_caller]
fn foreign_process() -> ! {
    panic!(
        "a ShmVec can only be used in the process that allocated it; this is a worker process \
         or a forked child (pass shared data to a task through its arguments, not a static)"
    )
}

impl<T: Pod> Default for ShmVec<T> {
    fn default() -> Self {
        ShmVec::new()
    }
}

impl<T: Pod> Deref for ShmVec<T> {
    type Target = [T];
    #[inline]
    #[track_caller]
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> DerefMut for ShmVec<T> {
    #[inline]
    #[track_caller]
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Pod> AsRef<[T]> for ShmVec<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

impl<T: Pod> AsMut<[T]> for ShmVec<T> {
    fn as_mut(&mut self) -> &mut [T] {
        self
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ShmVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.usable_here() {
            return write!(f, "ShmVec(<{} elements of another process>)", self.len);
        }
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl<T: Pod + PartialEq> PartialEq for ShmVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Pod + PartialEq> PartialEq<[T]> for ShmVec<T> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

impl<T: Pod + PartialEq> PartialEq<Vec<T>> for ShmVec<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<'a, T: Pod> IntoIterator for &'a ShmVec<T> {
    type Item = &'a T;
    type IntoIter = slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<'a, T: Pod> IntoIterator for &'a mut ShmVec<T> {
    type Item = &'a mut T;
    type IntoIter = slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_mut_slice().iter_mut()
    }
}
