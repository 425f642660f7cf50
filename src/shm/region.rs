//! The shared region: one memfd, mapped `MAP_SHARED`, holding the control
//! block, the worker records, the job ring and the data arena.
//!
//! The region is created before any worker is forked, so every worker
//! inherits the mapping at the same address. It is reference-counted: the
//! pool, every `ShmVec` and every outstanding job hold an `Arc<Region>`, so
//! the mapping outlives the pool for as long as data in it is reachable.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use memmap2::MmapMut;

use crate::error::Error;
use crate::os;
use crate::parent::limits;
use crate::shm::arena::FreeList;
use crate::shm::layout::{Control, LINE, Layout, MAGIC, Slot, WorkerRecord};
use crate::shm::registry;
use crate::shm::states::NO_SLOT;
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
    map: ManuallyDrop<MmapMut>,
    /// The start of the mapping, taken once from `map`.
    base: *mut u8,
    layout: Layout,
    /// Closed on drop in every process but a worker (see `Drop`).
    fd: ManuallyDrop<OwnedFd>,
    heap: Mutex<Heap>,
    registry_entry: &'static registry::Entry,
    /// The fork generation (`os::fork_generation`) of the process that
    /// created the region: the only one that allocates, frees or unmaps in
    /// it (design.md, "What safe code can do with a ShmVec").
    owner: u64,
}

// SAFETY: `base` points into the mapping owned by `map`, which lives exactly
// as long as the `Region`. Shared words are atomics; arena blocks are handed
// out one owner at a time through `Alloc`; the heap is behind a mutex.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no unsynchronised access to anything.
unsafe impl Sync for Region {}

/// An arena block. Freed when dropped.
pub(crate) struct Alloc {
    region: Arc<Region>,
    off: u64,
    size: u64,
}

impl Region {
    /// Creates the memfd, reserves the pages of the header, maps it and
    /// initialises the control block and worker records.
    pub(crate) fn create(layout: Layout) -> Result<Arc<Region>, Error> {
        let fd = os::memfd(layout.len as u64)?;
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
        // truncate it under the mapping, which is what map_mut requires.
        let mut map = unsafe { MmapMut::map_mut(&fd)? };
        debug_assert_eq!(map.len(), layout.len);
        // Large blocks may use transparent huge pages where the kernel allows
        // them on shared memory (`shmem_enabled` of `advise` or `always`); on
        // `never`, as on the CI machine, the advice is a no-op. Best effort.
        let _ = map.advise_range(
            memmap2::Advice::HugePage,
            layout.arena_off,
            layout.len - layout.arena_off,
        );
        let base = map.as_mut_ptr();
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
        os::reserve(&self.fd, start as u64, (end - start) as u64)
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
    pub(crate) fn alloc(
        self: &Arc<Self>,
        bytes: usize,
        align: usize,
    ) -> Result<(Alloc, usize), Error> {
        if bytes == 0 {
            let off = self.layout.arena_off as u64;
            return Ok((
                Alloc {
                    region: self.clone(),
                    off,
                    size: 0,
                },
                0,
            ));
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
        Ok((
            Alloc {
                region: self.clone(),
                off,
                size,
            },
            dirty,
        ))
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
                        Some(libc::EINVAL | libc::EPERM | libc::ENOSYS)
                    ) {
                        // ORDERING: Relaxed, as above.
                        POPULATE_REFUSED.store(true, Relaxed);
                    }
                    // Every block handed out ends at or below `from`, the
                    // high-water mark, so nothing from there up is in use
                    // (and it reads as zeros, punched or not). Up to the end
                    // of the huge page the fault may have allocated.
                    let end = to.next_multiple_of(HUGE_PAGE);
                    os::punch(&self.fd, from, end - from);
                }
            }
        }
        os::reserve(&self.fd, from, to - from)
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
        Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG) => Error::OutOfSharedMemory {
            requested,
            available,
        },
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

    /// The fork generation of the process that owns the block's region.
    pub(crate) fn owner(&self) -> u64 {
        self.region.owner
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
        os::tests::allocated_bytes(&r.fd)
    }

    /// `ShmemPmdMapped` of this process's mapping that starts at `start`.
    fn pmd_mapped_kib(start: *mut u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}", start as usize);
        let mut ours = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((from, _)) = first.split_once('-')
                && u64::from_str_radix(from, 16).is_ok()
            {
                ours = from == start;
            } else if ours && let Some(kib) = line.strip_prefix("ShmemPmdMapped:") {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
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
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
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
        let (a, dirty) = r.alloc(1000, 8).unwrap();
        assert_eq!(dirty, 0, "a first block is freshly reserved");
        assert_eq!(a.off() % LINE as u64, 0);
        // SAFETY: the block is ours and 1000 bytes long.
        unsafe { a.ptr().write_bytes(7, 1000) };
        let off = a.off();
        drop(a);
        let (b, dirty) = r.alloc(100, 8).unwrap();
        assert_eq!(b.off(), off, "first fit reuses the freed block");
        assert_eq!(dirty, 128, "reused bytes may hold old data");
        let err = r.alloc(2 << 20, 8).err().unwrap();
        assert!(matches!(err, Error::OutOfSharedMemory { requested, .. } if requested == 2 << 20));
        let (cap, used) = r.arena_usage();
        assert_eq!((cap, used), (1 << 20, 128));
        assert!(r.arena_offset(b.ptr(), 100).is_some());
        assert!(
            r.arena_offset(r.base(), 1).is_none(),
            "the header is not arena"
        );
        let (z, _) = r.alloc(0, 8).unwrap();
        assert_eq!(z.size, 0);
    }
}
