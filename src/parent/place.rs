//! Where a job's data lives: the one place that decides, for every map form,
//! whether a slice is read (or written) in place or copied first.
//!
//! Workers can reach only memory they share with the parent at a known
//! address: this pool's arena, and the shared heap (`SharedHeap`, when the
//! program installed it: workers map it at the same address, read-only, and
//! write job outputs there through its writable alias). [`Pool::locate`]
//! answers "where does this slice live" for any slice, and every entry point
//! asks it:
//!
//! - a blocking call's input ([`Pool::place_input`]): read in place if it
//!   lies in this pool's arena or in the heap (the call borrows it until the
//!   job is harvested), else staged: copied into a block the job owns;
//! - an asynchronous call's owned input ([`Pool::take_input`],
//!   [`Pool::take_vec`]): a `ShmVec` of this pool, or a `Vec` in the heap,
//!   is read in place and kept by the job until it is harvested; anything
//!   else is staged, then dropped;
//! - memory written in place (`map_into`, `map_in_place`:
//!   [`Pool::place_output`]): this pool's arena or the heap is written in
//!   place; anything else is staged into an arena block and copied back
//!   after the job succeeded.
//!
//! A `ShmVec` of *another* pool is "elsewhere": its bytes are at an offset of
//! a different region, which this pool's workers do not map (they unmap
//! other pools' regions when they start).
//!
//! Uses `unsafe` (denied at the crate root): a shared-heap `Vec` kept alive
//! by a job is freed as raw memory of its layout (`Kept`).

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::mem::{ManuallyDrop, size_of_val};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytemuck::Pod;

use crate::error::Error;
use crate::heap;
use crate::parent::ring::{InlineData, Loc};
use crate::pool::{MAX_ALIGN, Pool};
use crate::shm::region::{Alloc, Fresh};
use crate::shmvec::ShmVec;

/// Where a slice lives, as far as one pool is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In this pool's arena at this region offset: workers read it in place.
    Arena(u64),
    /// In the shared heap at this offset: workers read it in place (and
    /// write it through the heap's writable alias).
    Heap(u64),
    /// It occupies no bytes (empty, or of a zero-sized type): nothing to
    /// read or write, nothing to copy.
    Nowhere,
    /// Anywhere else: a plain `Vec` outside the heap, a stack array, another
    /// pool's arena. Workers cannot see it; it must be copied.
    Elsewhere,
}

/// A job's placed input: where workers find it, and the block the job owns
/// if it was copied (freed when the job is harvested).
pub(crate) type Placed = (Loc, Option<Alloc>);

/// A `Vec` a job reads in place and keeps alive until it is harvested (a
/// shared-heap `Vec` moved into `map_async`), then frees.
pub(crate) struct Kept {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Kept` is only the `Vec`'s memory: its elements are `Pod` (no
// drop glue, nothing owned), and the global allocator frees from any thread.
unsafe impl Send for Kept {}

impl Kept {
    fn new<T: Pod>(v: Vec<T>) -> Kept {
        let mut v = ManuallyDrop::new(v);
        Kept {
            ptr: NonNull::new(v.as_mut_ptr().cast()).expect("a Vec's pointer is not null"),
            layout: Layout::array::<T>(v.capacity()).expect("a Vec's layout is valid"),
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.layout.size() != 0 {
            // SAFETY: the memory of a `Vec` with this layout, from the global
            // allocator, given up by `Kept::new` and freed once, here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

/// What a job keeps alive until it is harvested.
pub(crate) type Keep = Option<Kept>;

impl Pool {
    /// Where `data` lives, for this pool. The one answer every map form
    /// uses.
    pub(crate) fn locate<T: Pod>(&self, data: &[T]) -> Place {
        let bytes = size_of_val(data);
        if bytes == 0 {
            return Place::Nowhere;
        }
        let ptr = data.as_ptr().cast::<u8>();
        if let Some(off) = self.inner.region.arena_offset(ptr, bytes) {
            return Place::Arena(off);
        }
        // Only the heap's owner places data in it (pool calls are refused
        // anywhere else), and only for a pool whose workers map it (it was
        // reserved before the pool was built). A type aligned beyond what
        // shared memory promises is refused by staging (`check_align`), as
        // anywhere else: the heap's writable alias is only page-aligned.
        match heap::contains(ptr, bytes) {
            Some(off)
                if self.inner.heap_mapped && heap::active() && align_of::<T>() <= MAX_ALIGN =>
            {
                Place::Heap(off as u64)
            }
            _ => Place::Elsewhere,
        }
    }

    /// An offset for data that occupies no bytes.
    pub(crate) fn nowhere(&self) -> Loc {
        Loc::Arena(self.inner.region.layout().arena_off as u64)
    }

    /// For a blocking call, which borrows `input` until its job is
    /// harvested: read in place if it lies in this pool's arena, else copied
    /// into a block the job owns.
    pub(crate) fn place_input<T: Pod>(&self, input: &[T]) -> Result<Placed, Error> {
        match self.locate(input) {
            Place::Arena(off) => Ok((Loc::Arena(off), None)),
            Place::Heap(off) => Ok((Loc::Heap(off), None)),
            Place::Nowhere => Ok((self.nowhere(), None)),
            Place::Elsewhere => self.stage(input),
        }
    }

    /// For an asynchronous call that takes `input` by value: a vector of this
    /// pool is read in place and freed with the job; one of another pool is
    /// copied in like a borrowed slice (counted in `Stats::bytes_staged`),
    /// and the original dropped once copied.
    pub(crate) fn take_input<T: Pod>(&self, input: ShmVec<T>) -> Result<Placed, Error> {
        match self.locate(&input) {
            Place::Arena(_) | Place::Nowhere => Ok(match input.into_block() {
                Some(block) => (Loc::Arena(block.off()), Some(block)),
                None => (self.nowhere(), None),
            }),
            // (A `ShmVec`'s block is always some pool's arena, never heap.)
            Place::Heap(_) | Place::Elsewhere => self.stage(&input),
        }
    }

    /// For an asynchronous call that takes a `Vec` by value: one in the
    /// shared heap is read in place and kept alive by the job (freed when the
    /// job is harvested); any other is copied in and dropped.
    pub(crate) fn take_vec<T: Pod>(&self, input: Vec<T>) -> Result<(Placed, Keep), Error> {
        match self.locate(&input) {
            Place::Heap(off) => Ok(((Loc::Heap(off), None), Some(Kept::new(input)))),
            Place::Nowhere => Ok(((self.nowhere(), None), None)),
            Place::Arena(_) | Place::Elsewhere => Ok((self.stage(&input)?, None)),
        }
    }

    /// Where a call writes `out` in place (`map_into`, `map_in_place`):
    /// this pool's arena, or the heap if this pool's workers can write it
    /// (its writable alias existed when the pool was built). `None`: `out`
    /// must be staged into an arena block and copied back (`Staged`).
    ///
    /// Written in place, `out`'s provenance is exposed: the job writes it
    /// through addresses (in the workers, and in this thread with
    /// `caller_runs`: `Memory::for_caller`), never through `out`, while the
    /// caller's call holds `out` as a protected mutable borrow. Exposed, those
    /// writes are writes through a pointer derived from that borrow
    /// (design.md, "Where a slice lives").
    pub(crate) fn place_output<T: Pod>(&self, out: &mut [T]) -> Option<Loc> {
        let at = match self.locate(out) {
            Place::Arena(off) => Loc::Arena(off),
            Place::Heap(off) if self.inner.heap_writable => Loc::Heap(off),
            Place::Nowhere => return Some(self.nowhere()),
            Place::Heap(_) | Place::Elsewhere => return None,
        };
        let _ = out.as_mut_ptr().expose_provenance();
        Some(at)
    }

    /// Copies `input` into a block the job will own.
    pub(crate) fn stage<T: Pod>(&self, input: &[T]) -> Result<Placed, Error> {
        if size_of_val(input) == 0 {
            return Ok((self.nowhere(), None));
        }
        let started = Instant::now();
        let block = self.copy_to_arena(input)?.into_alloc();
        self.note_staged(size_of_val(input), started);
        Ok((Loc::Arena(block.off()), Some(block)))
    }

    /// Counts `bytes` of an input copied into the arena since `started`
    /// (`Stats::bytes_staged`, `Profile::staging`).
    pub(crate) fn note_staged(&self, bytes: usize, started: Instant) {
        let took = started.elapsed().as_nanos() as u64;
        // ORDERING: Relaxed: statistics.
        let c = &self.inner.stats;
        c.bytes_staged.fetch_add(bytes as u64, Relaxed);
        c.staging_ns.fetch_add(took, Relaxed);
    }

    /// A new arena block holding a copy of `data` (streamed when large, as
    /// `Builder::stream_stores_from` says).
    pub(crate) fn copy_to_arena<T: Pod>(&self, data: &[T]) -> Result<Fresh, Error> {
        let mut block = self.alloc::<T>(data.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        block.fill_from(bytes, self.inner.workers, self.streams(bytes.len()));
        Ok(block)
    }

    /// Places a by-value argument: in the slot if it fits, else in the arena.
    pub(crate) fn place_value<V: Pod>(
        &self,
        v: &V,
        inline: &mut InlineData,
    ) -> Result<Placed, Error> {
        if let Some(rel) = inline.put(v) {
            return Ok((Loc::Inline(rel), None));
        }
        let mut block = self.alloc::<V>(1)?;
        block.write_value(v);
        Ok((Loc::Arena(block.off()), Some(block.into_alloc())))
    }
}
