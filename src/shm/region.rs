//! The shared region: one memfd, mapped `MAP_SHARED`, holding the control
//! block, the worker records, the job ring and the data arena.
//!
//! The region is created before any worker is forked, so every worker
//! inherits the mapping at the same address. It is reference-counted: the
//! pool, every `ShmVec` and every outstanding job hold an `Arc<Region>`, so
//! the mapping outlives the pool for as long as data in it is reachable.
//!
//! Uses `unsafe` (denied at the crate root): it owns the raw mapping: every
//! typed view of shared memory (control block, slots, records, arena blocks)
//! starts here.

#![allow(unsafe_code)]

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytemuck::Pod;

use crate::error::Error;
use crate::os;
use crate::parent::limits;
use crate::shm::arena::FreeList;
use crate::shm::layout::{Control, INLINE_CAP, LINE, Layout, MAGIC, Slot, WorkerRecord};
use crate::shm::registry;
use crate::shm::states::NO_SLOT;
use crate::shmvec::ShmVec;
use crate::worker::in_worker;

/// The slots whose pages a new region reserves; a job that finds them all
/// busy reserves more (`Ring::take_free`).
pub(crate) const FIRST_SLOTS: usize = 16;

/// Blocks this large start on a page boundary.
const PAGE_ALIGN_FROM: usize = 64 << 10;
const PAGE: usize = 4096;
/// The size of a huge page on x86-64 and of a 4 KiB-granule arm64 PMD.
const HUGE_PAGE: u64 = 2 << 20;

/// Set once `MADV_POPULATE_WRITE` is refused outright (an old kernel, a
/// filter): later reservations go straight to `fallocate`.
static POPULATE_REFUSED: AtomicBool = AtomicBool::new(false);

/// The arena's allocator state.
struct Heap {
    list: FreeList,
    /// Every byte of the arena below this offset is backed by reserved pages.
    reserved_to: u64,
}

pub(crate) struct Region {
    /// Owns the mapping; unmapped when the region is dropped, under the
    /// registry's mapping lock.
    map: ManuallyDrop<os::SharedMap>,
    /// The start of the mapping, taken once from `map`.
    base: *mut u8,
    layout: Layout,
    /// Closed on drop in every process but a worker (see `Drop`).
    fd: ManuallyDrop<OwnedFd>,
    heap: Mutex<Heap>,
    registry_entry: &'static registry::Entry,
    /// The fork generation (`os::fork_generation`) of the process that
    /// created the region: the only one that allocates, frees or unmaps in
    /// it (design.md, "What safe code can and cannot do with a `ShmVec`").
    owner: u64,
}

// SAFETY: `base` points into the mapping owned by `map`, which lives exactly
// as long as the `Region`. Shared words are atomics; arena blocks are handed
// out one owner at a time through `Alloc`; the heap is behind a mutex.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no unsynchronised access to anything.
unsafe impl Sync for Region {}

/// An arena block. Freed when dropped.
///
/// Its bytes are read and written only through its methods, as plain bytes
/// of `Pod` values, never through references: a job that was handed the
/// block's offset writes it from another process.
pub(crate) struct Alloc {
    region: Arc<Region>,
    off: u64,
    size: u64,
}

impl Region {
    /// Creates the memfd, reserves the pages of the header, maps it and
    /// initialises the control block and worker records.
    pub(crate) fn create(layout: Layout) -> Result<Arc<Region>, Error> {
        let fd = os::memfd(c"shmpool", layout.len as u64)?;
        // Reserve the control block, the records and the first slots only;
        // the ring reserves the rest as it first needs them
        // (`reserve_slots`), and nothing uses the padding up to the 2 MiB
        // aligned arena. Reserving all 256 slots (416 KiB, zeroed by the
        // kernel) cost 140 µs of a 1 ms `Pool::new`.
        let control = layout.slot_end(layout.ring.min(FIRST_SLOTS));
        os::reserve(&fd, 0, control as u64).map_err(|e| oom_or_io(e, control, 0))?;
        // Held until the region is registered: a template forked meanwhile
        // would give its workers this mapping without the registry entry
        // that lets them unmap it (found by a scribbling test hitting
        // another test's pool).
        let guard = registry::lock();
        // SAFETY: the memfd is ours alone: no other process or file handle can
        // truncate it under the mapping.
        let map = unsafe { os::SharedMap::new(&fd, layout.len)? };
        // Large blocks may use transparent huge pages where the kernel allows
        // them on shared memory (`shmem_enabled` of `advise` or `always`); on
        // `never`, as on the CI machine, the advice is a no-op. Best effort.
        map.advise_huge_pages(layout.arena_off, layout.len - layout.arena_off);
        let base = map.base();
        let region = Region {
            map: ManuallyDrop::new(map),
            base,
            layout,
            fd: ManuallyDrop::new(fd),
            heap: Mutex::new(Heap {
                list: FreeList::new(layout.arena_off as u64, layout.len as u64),
                reserved_to: layout.arena_off as u64,
            }),
            registry_entry: registry::register(&guard, base as usize, layout.len),
            owner: os::fork_generation(),
        };
        drop(guard);
        #[cfg(shmpool_loom)]
        region.make_in_place();
        for w in 0..layout.workers {
            // ORDERING: Relaxed: no worker exists yet; fork publishes it.
            region.record(w).slot.store(NO_SLOT, Relaxed);
            // ORDERING: Relaxed: as above. (A zero would be slot 0: a Drain
            // would wait for a worker that has not started yet.)
            region.record(w).in_range.store(NO_SLOT, Relaxed);
        }
        // ORDERING: as above.
        region.control().magic.0.store(MAGIC, Relaxed);
        Ok(Arc::new(region))
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether this is the process that created the region. Everywhere else
    /// (a worker, the template, a child the user forked) its blocks are not
    /// ours to free, and its mapping not ours to unmap.
    pub(crate) fn owned_here(&self) -> bool {
        os::fork_generation_registered() == self.owner
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    /// A pointer to byte `off` of the region. `off <= layout.len` is the
    /// caller's to check before dereferencing.
    pub(crate) fn ptr(&self, off: u64) -> *mut u8 {
        self.base.wrapping_add(off as usize)
    }

    pub(crate) fn control(&self) -> &Control {
        // SAFETY: the control block sits at offset 0, is properly aligned (the
        // mapping is page aligned), lives as long as `self`, and consists of
        // atomics, which any process may access concurrently.
        unsafe { &*(self.base as *const Control) }
    }

    /// Reserves the pages of slots `from..to`, which the ring has not used
    /// yet (`Region::create` reserved the first `FIRST_SLOTS`).
    pub(crate) fn reserve_slots(&self, from: usize, to: usize) -> Result<(), Error> {
        let (start, end) = (self.layout.slot_end(from), self.layout.slot_end(to));
        os::reserve(&*self.fd, start as u64, (end - start) as u64)
            .map_err(|e| oom_or_io(e, end - start, 0))
    }

    /// Slot `s`; panics if `s` is not a slot of this ring.
    pub(crate) fn slot(&self, s: usize) -> &Slot {
        assert!(s < self.layout.ring, "slot index out of range");
        // SAFETY: in bounds by the assert and the layout; aligned because
        // `slots_off` and `size_of::<Slot>()` are multiples of its alignment;
        // the fields are atomics or the raw-pointer-only `Inline`.
        unsafe {
            &*(self.ptr((self.layout.slots_off + s * size_of::<Slot>()) as u64) as *const Slot)
        }
    }

    /// Copies `bytes` to the start of slot `s`'s inline area.
    ///
    /// # Panics
    /// If `s` is not a slot of this ring, or `bytes` is longer than the
    /// area.
    pub(crate) fn write_inline(&self, s: usize, bytes: &[u8]) {
        assert!(s < self.layout.ring, "slot index out of range");
        assert!(bytes.len() <= INLINE_CAP, "more than an inline area");
        let off = self.layout.inline_off(s);
        // SAFETY: the slot's inline area is `INLINE_CAP` bytes inside the
        // mapping (checked above, and by the layout); bytes are copied, no
        // reference into shared memory is made.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(off), bytes.len()) };
    }

    /// Copies bytes `rel..rel + out.len()` of slot `s`'s inline area into
    /// `out`.
    ///
    /// # Panics
    /// If `s` is not a slot of this ring, or the range leaves the area.
    pub(crate) fn read_inline(&self, s: usize, rel: usize, out: &mut [u8]) {
        assert!(s < self.layout.ring, "slot index out of range");
        assert!(
            rel.checked_add(out.len())
                .is_some_and(|end| end <= INLINE_CAP),
            "past an inline area"
        );
        let off = self.layout.inline_off(s) + rel as u64;
        // SAFETY: as in `write_inline`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(off), out.as_mut_ptr(), out.len()) };
    }

    /// Worker `w`'s record; panics if there is no such worker.
    pub(crate) fn record(&self, w: usize) -> &WorkerRecord {
        assert!(w < self.layout.workers, "worker index out of range");
        // SAFETY: as for `slot`.
        unsafe {
            &*(self.ptr((self.layout.records_off + w * size_of::<WorkerRecord>()) as u64)
                as *const WorkerRecord)
        }
    }

    /// The region offset of `bytes` bytes at `p`, if they lie wholly in the
    /// arena.
    pub(crate) fn arena_offset(&self, p: *const u8, bytes: usize) -> Option<u64> {
        let start = self.base as usize + self.layout.arena_off;
        let end = self.base as usize + self.layout.len;
        let p = p as usize;
        (p >= start && p.checked_add(bytes)? <= end).then(|| (p - self.base as usize) as u64)
    }

    fn heap(&self) -> MutexGuard<'_, Heap> {
        // The heap's invariants hold between statements, so a panic elsewhere
        // while it was held leaves it usable.
        self.heap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates `bytes` bytes aligned to `align` (a power of two). Returns
    /// the block and how many of its leading bytes may hold old data (the
    /// rest is freshly reserved, hence zero).
    ///
    /// # Errors
    /// `OutOfSharedMemory` when no free block fits or the kernel cannot
    /// supply the pages.
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize, align: usize) -> Result<Fresh, Error> {
        // A forked copy's free list is a private snapshot: a block it hands
        // out may be the creator's, and `Fresh` promises this process alone.
        if !self.owned_here() {
            return Err(Error::invalid(
                "shared memory was allocated in a forked copy of the process that created it",
            ));
        }
        if bytes == 0 {
            let off = self.layout.arena_off as u64;
            return Ok(Fresh {
                block: Alloc {
                    region: self.clone(),
                    off,
                    size: 0,
                },
                dirty: 0,
            });
        }
        let mut align = align.max(LINE);
        if bytes >= PAGE_ALIGN_FROM {
            align = align.max(PAGE);
        }
        let size = bytes
            .checked_next_multiple_of(LINE)
            .ok_or(Error::OutOfSharedMemory {
                requested: bytes,
                available: 0,
            })? as u64;
        let mut heap = self.heap();
        let Some(off) = heap.list.alloc(size, align as u64) else {
            return Err(Error::OutOfSharedMemory {
                requested: bytes,
                available: heap.list.largest() as usize,
            });
        };
        let end = off + size;
        let reserved = heap.reserved_to;
        if end > reserved {
            if let Err(e) = self.reserve_arena(reserved, end) {
                heap.list.free(off, size);
                let mut available = heap.list.largest();
                if let Some(room) = limits::memory_cgroup().and_then(|c| c.headroom()) {
                    available = available.min(room);
                }
                return Err(oom_or_io(e, bytes, available as usize));
            }
            heap.reserved_to = end;
        }
        let dirty = reserved.saturating_sub(off).min(size) as usize;
        Ok(Fresh {
            block: Alloc {
                region: self.clone(),
                off,
                size,
            },
            dirty,
        })
    }

    /// Allocates the memfd's pages for arena bytes `from..to`.
    ///
    /// With `fallocate`, except where the kernel gives shared memory huge
    /// pages only on advice (`shmem_enabled` at `advise`) and the range
    /// covers a whole 2 MiB block: then by faulting the pages in through the
    /// mapping first, so that the arena's `MADV_HUGEPAGE` applies
    /// (`fallocate` consults no mapping and gives small pages). Not always:
    /// at 4 KiB pages, `alloc_zeroed` of 128 MiB took 70-100 ms populated
    /// against 28-35 ms with `fallocate`.
    ///
    /// First, where a memory cgroup limits the process, the pages must fit
    /// under it (`limits::MemoryCgroup::check`): charging them past the
    /// limit would wake the cgroup's OOM killer, which kills a process
    /// (most likely this one, which holds the memory) instead of failing
    /// the call.
    fn reserve_arena(&self, from: u64, to: u64) -> io::Result<()> {
        if let Some(cgroup) = limits::memory_cgroup() {
            cgroup.check(to - from)?;
        }
        let whole_block = from.next_multiple_of(HUGE_PAGE).saturating_add(HUGE_PAGE) <= to;
        self.reserve_arena_by(from, to, whole_block && os::shmem_huge_on_advice())
    }

    /// `reserve_arena`, populating first if `populate`. Populating is best
    /// effort: after any error the pages it got are given back and
    /// `fallocate` decides, which gives the typed error when memory is short
    /// and works where a filter refuses the advice.
    fn reserve_arena_by(&self, from: u64, to: u64, populate: bool) -> io::Result<()> {
        debug_assert!(self.layout.arena_off as u64 <= from && to <= self.layout.len as u64);
        // ORDERING: Relaxed: a hint; a reservation racing with the one that
        // sets it tries once more.
        if populate && !POPULATE_REFUSED.load(Relaxed) {
            // SAFETY: `from..to` lies in the arena (the free list hands out
            // no other offsets), part of this process's shared, writable
            // mapping of the memfd.
            match unsafe { os::populate(self.ptr(from), (to - from) as usize) } {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(os::errno::EINVAL | os::errno::EPERM | os::errno::ENOSYS)
                    ) {
                        // ORDERING: Relaxed, as above.
                        POPULATE_REFUSED.store(true, Relaxed);
                    }
                    // Every block handed out ends at or below `from`, the
                    // high-water mark, so nothing from there up is in use
                    // (and it reads as zeros, punched or not). Up to the end
                    // of the huge page the fault may have allocated.
                    let end = to.next_multiple_of(HUGE_PAGE);
                    os::punch(&*self.fd, from, end - from);
                }
            }
        }
        os::reserve(&*self.fd, from, to - from)
    }

    fn free(&self, off: u64, size: u64) {
        self.heap().list.free(off, size);
    }

    /// `(capacity, in use)` of the arena in bytes.
    pub(crate) fn arena_usage(&self) -> (u64, u64) {
        let cap = (self.layout.len - self.layout.arena_off) as u64;
        (cap, self.heap().list.in_use())
    }
}

#[cfg(shmpool_loom)]
impl Region {
    /// Makes the control block, the records and the slots in place. Built
    /// for the loom models, the region's atomics are loom's: each must be
    /// created (it registers with the model), not found zeroed in a fresh
    /// mapping as std's are. The values are those of zeroed memory.
    fn make_in_place(&self) {
        let l = &self.layout;
        // SAFETY: each pointer is a structure's place in this mapping, which
        // is writable, aligned for it (see `slot` and `record`) and not yet
        // seen by any other thread; what it holds (zeros) needs no drop.
        unsafe {
            self.base.cast::<Control>().write(Control::default());
            for w in 0..l.workers {
                let at = self.ptr((l.records_off + w * size_of::<WorkerRecord>()) as u64);
                at.cast::<WorkerRecord>().write(WorkerRecord::default());
            }
            for s in 0..l.ring {
                let at = self.ptr((l.slots_off + s * size_of::<Slot>()) as u64);
                at.cast::<Slot>().write(Slot::default());
            }
        }
    }
}

fn oom_or_io(e: io::Error, requested: usize, available: usize) -> Error {
    match e.raw_os_error() {
        Some(os::errno::ENOSPC | os::errno::ENOMEM | os::errno::EFBIG) => {
            Error::OutOfSharedMemory {
                requested,
                available,
            }
        }
        _ => Error::Io(e),
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if in_worker() {
            // A copy inherited by a worker or the template, reached by a task
            // (a pool kept in a static). The worker unmapped other pools'
            // regions when it started, and closed their descriptors: their
            // addresses and numbers may belong to something else now. Leave
            // everything alone; the process ends with `_exit`.
            return;
        }
        // Unregistered and unmapped under the lock, so that no template is
        // forked between the two with the mapping but not its entry. (In a
        // child the user forked, the mapping is intact and ours to unmap;
        // the lock is fork-aware, so a parent thread holding it at the fork
        // cannot block us.)
        let guard = registry::lock();
        registry::unregister(&guard, self.registry_entry);
        // SAFETY: dropped once, here; `base` and `fd` are not used after
        // this.
        unsafe {
            ManuallyDrop::drop(&mut self.map);
            ManuallyDrop::drop(&mut self.fd);
        }
    }
}

impl Alloc {
    pub(crate) fn off(&self) -> u64 {
        self.off
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.region.ptr(self.off)
    }

    /// The block's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.size as usize
    }

    /// The `U` at the start of the block, as its bytes are now.
    ///
    /// # Panics
    /// If the block is smaller than a `U`.
    pub(crate) fn read_value<U: Pod>(&self) -> U {
        assert!(size_of::<U>() <= self.len(), "a value past its block");
        // SAFETY: the block's first `size_of::<U>()` bytes lie in the live
        // mapping (checked above; the block lies in it); shared memory
        // always holds initialised bytes, and every bit pattern is a valid
        // `U: Pod`. Read unaligned and by value. No worker writes the block
        // meanwhile: it is read only once its job is harvested (no worker
        // can be in the job, `worker/README.md`, "Draining") or before it
        // was ever published.
        unsafe { self.ptr().cast::<U>().read_unaligned() }
    }

    /// Copies the first `out.len()` values of the block into `out`.
    ///
    /// # Panics
    /// If the block is smaller than `out`.
    pub(crate) fn read_into<U: Pod>(&self, out: &mut [U]) {
        let bytes = size_of_val(out);
        assert!(bytes <= self.len(), "a copy past its block");
        // SAFETY: as in `read_value`; `out` is this process's memory, never
        // the arena block (it is borrowed mutably, the block is not
        // reachable by reference), so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr(), out.as_mut_ptr().cast::<u8>(), bytes);
        }
    }

    /// The fork generation of the process that owns the block's region.
    pub(crate) fn owner(&self) -> u64 {
        self.region.owner
    }
}

/// An arena block just allocated, whose offset no job has yet: this
/// process alone can reach its bytes, so it may write them and hand them
/// to a [`ShmVec`]. [`Fresh::into_alloc`] gives the block up to be
/// published.
pub(crate) struct Fresh {
    block: Alloc,
    /// How many leading bytes may hold old data (the rest is freshly
    /// reserved, hence zero).
    dirty: usize,
}

/// Inputs at least this large are copied by several threads at once: one
/// thread cannot saturate the memory bus.
const PARALLEL_COPY_FROM: usize = 8 << 20;

impl Fresh {
    /// The block, to be published to a job (or freed when dropped).
    pub(crate) fn into_alloc(self) -> Alloc {
        self.block
    }

    /// The block's offset in the region.
    pub(crate) fn off(&self) -> u64 {
        self.block.off
    }

    /// Zeroes the bytes that may hold old data: the whole block reads as
    /// zeros.
    pub(crate) fn zero(&mut self) {
        // SAFETY: the first `dirty <= size` bytes of the block lie in the
        // mapping, and nothing else reaches them (the block is fresh).
        unsafe { self.block.ptr().write_bytes(0, self.dirty) };
        self.dirty = 0;
    }

    /// Writes `v` at the start of the block.
    ///
    /// # Panics
    /// If the block is smaller than a `V`.
    pub(crate) fn write_value<V: Pod>(&mut self, v: &V) {
        assert!(size_of::<V>() <= self.block.len(), "a value past its block");
        // SAFETY: in the block (checked above), which nothing else reaches;
        // written unaligned, so any offset will do.
        unsafe { self.block.ptr().cast::<V>().write_unaligned(*v) };
    }

    /// Copies `src` to the start of the block, split across up to `threads`
    /// threads when it is large (the calling thread copies the first
    /// piece), with streaming stores when `stream`.
    ///
    /// # Panics
    /// If the block is smaller than `src`.
    pub(crate) fn fill_from(&mut self, src: &[u8], threads: usize, stream: bool) {
        assert!(src.len() <= self.block.len(), "a copy past its block");
        let dst = self.block.ptr();
        let threads = threads.clamp(1, 8);
        if src.len() < PARALLEL_COPY_FROM || threads == 1 {
            // SAFETY: `dst..dst + src.len()` is in the block (checked
            // above), which nothing else reaches and which cannot overlap
            // `src` (this process holds no reference into a fresh block).
            unsafe { crate::worker::stream::copy(src.as_ptr(), dst, src.len(), stream) };
            return;
        }
        let piece = src.len().div_ceil(threads).next_multiple_of(4096);
        // Raw pointers are not Send; the address is.
        let base = dst as usize;
        let copy = move |i: usize, part: &[u8]| {
            // SAFETY: as above; the pieces are disjoint parts of the block,
            // each written by one thread, and the scope ends before the
            // block is used.
            unsafe {
                crate::worker::stream::copy(
                    part.as_ptr(),
                    (base as *mut u8).add(i * piece),
                    part.len(),
                    stream,
                )
            }
        };
        std::thread::scope(|s| {
            let mut parts = src.chunks(piece).enumerate();
            let first = parts.next();
            for (i, part) in parts {
                // A thread that cannot be started: copy that piece here.
                if std::thread::Builder::new()
                    .spawn_scoped(s, move || copy(i, part))
                    .is_err()
                {
                    copy(i, part);
                }
            }
            if let Some((i, part)) = first {
                copy(i, part);
            }
        });
    }

    /// The block as a vector of its first `len` values of `T`.
    ///
    /// # Panics
    /// If the block is too small for them, or not aligned for `T`.
    pub(crate) fn into_vec<T: Pod>(self, len: usize) -> ShmVec<T> {
        let bytes = len.checked_mul(size_of::<T>());
        assert!(
            bytes.is_some_and(|b| b <= self.block.len()),
            "a vector past its block"
        );
        assert!(
            self.block.ptr().cast::<T>().is_aligned(),
            "a vector misaligned in its block"
        );
        // SAFETY: the block is large enough and aligned (checked above);
        // no job has its offset, so no worker reads or writes it, and this
        // `Fresh` was its only handle.
        unsafe { ShmVec::from_alloc(self.block, len) }
    }
}

impl Drop for Alloc {
    /// Gives the block back to the arena, in the process that owns it. A
    /// copy in any other process (a forked child, a worker reaching a
    /// `ShmVec` through a static) frees nothing: the arena's free list
    /// belongs to the owner, and its lock may have been held by a thread
    /// that does not exist here.
    fn drop(&mut self) {
        if self.size > 0 && self.region.owned_here() {
            self.region.free(self.off, self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the memfd that have pages.
    fn allocated(r: &Region) -> u64 {
        os::tests::allocated_bytes(&*r.fd)
    }

    /// `ShmemPmdMapped` of this process's mapping that starts at `start`.
    fn pmd_mapped_kib(start: *mut u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}", start as usize);
        let mut ours = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            match first.split_once('-') {
                Some((from, _)) if u64::from_str_radix(from, 16).is_ok() => ours = from == start,
                _ => {
                    if let Some(kib) = line.strip_prefix("ShmemPmdMapped:").filter(|_| ours) {
                        return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
                    }
                }
            }
        }
        0
    }

    /// Whether transparent huge pages are allowed for this process (not
    /// turned off by `PR_SET_THP_DISABLE`, inherited from a service manager
    /// or a CI wrapper).
    fn thp_allowed_here() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["THP_enabled:", "1"]))
        })
    }

    #[test]
    fn populating_reserves_the_pages_as_fallocate_does() {
        let layout = Layout::new(1, 4, 16 << 20).unwrap();
        let r = Region::create(layout).unwrap();
        let from = layout.arena_off as u64;
        let before = allocated(&r);
        // SAFETY: the first 4 MiB of the arena: shared, writable, unused.
        match unsafe { os::populate(r.ptr(from), (4 << 20) + 100) } {
            Err(e) if e.raw_os_error() == Some(os::errno::EINVAL) => {
                eprintln!("this kernel has no MADV_POPULATE_WRITE: fallocate only");
            }
            done => {
                done.unwrap();
                let after = allocated(&r);
                assert!(
                    after >= before + (4 << 20) + 100,
                    "the memfd holds the pages ({before} -> {after} bytes)"
                );
                // Where shared memory gets huge pages on advice, the arena
                // got them (`fallocate` would not: at `advise` this fails
                // with it). On `never`, the CI machine's setting, nothing to
                // check.
                if os::shmem_huge_on_advice() && thp_allowed_here() {
                    assert!(pmd_mapped_kib(r.ptr(from)) >= 2048, "huge pages on advice");
                }
            }
        }
        // Both ways through `reserve_arena_by`.
        let at = allocated(&r);
        r.reserve_arena_by(from + (6 << 20), from + (10 << 20), true)
            .unwrap();
        let populated = allocated(&r);
        assert!(populated >= at + (4 << 20), "{at} -> {populated}");
        r.reserve_arena_by(from + (12 << 20), from + (16 << 20), false)
            .unwrap();
        assert!(allocated(&r) >= populated + (4 << 20));
    }

    #[test]
    fn alloc_reserves_reuses_and_reports() {
        let layout = Layout::new(1, 4, 1 << 20).unwrap();
        let r = Region::create(layout).unwrap();
        let mut a = r.alloc(1000, 8).unwrap();
        assert_eq!(a.dirty, 0, "a first block is freshly reserved");
        assert_eq!(a.off() % LINE as u64, 0);
        a.fill_from(&[7; 1000], 1, false);
        let off = a.off();
        drop(a);
        let b = r.alloc(100, 8).unwrap();
        assert_eq!(b.off(), off, "first fit reuses the freed block");
        assert_eq!(b.dirty, 128, "reused bytes may hold old data");
        let err = r.alloc(2 << 20, 8).err().unwrap();
        assert!(matches!(err, Error::OutOfSharedMemory { requested, .. } if requested == 2 << 20));
        let (cap, used) = r.arena_usage();
        assert_eq!((cap, used), (1 << 20, 128));
        assert!(r.arena_offset(b.block.ptr(), 100).is_some());
        assert!(
            r.arena_offset(r.base(), 1).is_none(),
            "the header is not arena"
        );
        let z = r.alloc(0, 8).unwrap();
        assert_eq!(z.block.size, 0);
    }

    #[test]
    fn blocks_are_written_and_read_as_plain_values() {
        let layout = Layout::new(1, 4, 1 << 20).unwrap();
        let r = Region::create(layout).unwrap();
        let mut a = r.alloc(64, 8).unwrap();
        a.fill_from(&[9; 64], 1, false);
        drop(a);
        // The same bytes again: old data until zeroed.
        let mut b = r.alloc(64, 8).unwrap();
        assert_eq!(b.dirty, 128, "the whole line the first block had");
        assert_eq!(b.block.read_value::<[u8; 4]>(), [9; 4], "old data");
        b.zero();
        assert_eq!(b.block.read_value::<u64>(), 0);
        b.write_value(&[1u32, 2]);
        let mut out = [0u32; 3];
        b.block.read_into(&mut out);
        assert_eq!(out, [1, 2, 0]);
        let v = b.into_vec::<u32>(16);
        assert_eq!(v.len(), 16);
        assert_eq!(&v[..3], &[1, 2, 0]);
        // Too small for the value, the copy or the vector: a panic, never a
        // write or read past the block.
        let c = r.alloc(8, 8).unwrap();
        let big = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(big(&|| {
            let _: [u8; 256] = c.block.read_value();
        }));
        assert!(big(&|| c.block.read_into(&mut [0u8; 129])));
        let mut d = r.alloc(8, 8).unwrap();
        assert!(big(&|| {
            let mut e = r.alloc(8, 8).unwrap();
            e.write_value(&[0u8; 256]);
        }));
        assert!(big(&|| {
            let e = r.alloc(8, 8).unwrap();
            drop(e.into_vec::<u64>(100));
        }));
        d.fill_from(&[1; 128], 1, false);
        assert_eq!(
            d.block.read_value::<u8>(),
            1,
            "a LINE-sized block takes 128 bytes"
        );
        assert!(big(&|| {
            let mut e = r.alloc(8, 8).unwrap();
            e.fill_from(&[0; 129], 1, false);
        }));
    }
}
