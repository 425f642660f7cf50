//! Memory: the memfds behind a pool's region and the shared heap, their
//! pages, and the mappings of them.
//!
//! Through `rustix` (its raw-syscall backend: no `errno`, no allocation).
//! `mmap`, `munmap`, `mprotect` and `madvise` are `unsafe` there as here:
//! each can take memory away from, or change the contents seen by,
//! references elsewhere in the process. Nothing here allocates: the shared
//! heap calls these from the global allocator and from its fork handler.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_void};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use rustix::fs::{
    FallocateFlags, MemfdFlags, SealFlags, fallocate, fcntl_add_seals, ftruncate, memfd_create,
};
use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags, madvise, mmap, mmap_anonymous};

/// Creates an anonymous shared-memory file of `len` bytes, sparse and
/// close-on-exec, sealed against shrinking: no process that reaches it
/// (a task opening `/proc/<pid>/fd/<n>`) can truncate it under the
/// mappings, which would end every process that maps it with `SIGBUS`. It
/// shows as `memfd:<name>` in `/proc/<pid>/maps`.
///
/// # Errors
/// Fails when the kernel refuses the file or its size (`EMFILE`, `EFBIG`),
/// and with `EFBIG`, before asking, when `len` exceeds this process's file
/// size limit (`RLIMIT_FSIZE`).
pub(crate) fn memfd(name: &CStr, len: u64) -> io::Result<OwnedFd> {
    // Past `RLIMIT_FSIZE`, `ftruncate` fails, and the kernel also sends the
    // process `SIGXFSZ`, whose default action ends it: ask for no such size.
    if super::process::file_size_limit().is_some_and(|limit| len > limit) {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&fd, file_offset(len)?)?;
    // Best effort: a kernel without seals keeps the file as it was.
    let _ = fcntl_add_seals(&fd, SealFlags::SHRINK);
    Ok(fd)
}

/// `n` as a file offset or length (the kernel's are signed 64-bit).
fn file_offset(n: u64) -> io::Result<u64> {
    if i64::try_from(n).is_ok() {
        Ok(n)
    } else {
        Err(io::Error::from_raw_os_error(libc::EFBIG))
    }
}

/// Allocates the file's pages of `off..off + len`, so that touching them
/// later can never raise `SIGBUS`.
///
/// # Errors
/// `ENOSPC` or `ENOMEM` when the memory is not available.
pub(crate) fn reserve(fd: impl AsFd, off: u64, len: u64) -> io::Result<()> {
    let (off, len) = (file_offset(off)?, file_offset(len)?);
    loop {
        match fallocate(&fd, FallocateFlags::empty(), off, len) {
            Err(Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Gives back the file's pages of `off..off + len` (a hole, which reads as
/// zeros; the size stays). Best effort: a failure (a kernel or a sandbox
/// that refuses hole punching) leaves the pages allocated, with their old
/// bytes. Returns whether it worked: a caller that counts on the range
/// reading zeros afterwards must check.
pub(crate) fn punch(fd: impl AsFd, off: u64, len: u64) -> bool {
    let (Ok(off), Ok(len)) = (file_offset(off), file_offset(len)) else {
        return false;
    };
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    loop {
        match fallocate(&fd, flags, off, len) {
            Err(Errno::INTR) => {}
            done => return done.is_ok(),
        }
    }
}

/// The most bytes one [`populate`] call faults in: the call holds the
/// process's `mmap_lock` for reading while it runs, which a `fork` or an
/// `munmap` in another thread waits for.
const POPULATE_STEP: usize = 32 << 20;

/// Allocates the pages of `addr..addr + len`, a range of this process's
/// shared mapping, by faulting them in writable (`MADV_POPULATE_WRITE`,
/// Linux 5.14). Unlike `fallocate` on the file, the faults go through the
/// mapping, so its `MADV_HUGEPAGE` advice applies: with `shmem_enabled`
/// at `advise`, the kernel gives it huge pages, where `fallocate` (which
/// has no mapping to consult) gives small ones. The pages stay in the file,
/// so touching them later cannot raise `SIGBUS`.
///
/// # Errors
/// The kernel's: `EINVAL` where it lacks `MADV_POPULATE_WRITE`, `EPERM` or
/// `ENOSYS` under a filter, `ENOMEM` or `EFAULT` (the fault would have
/// raised `SIGBUS`) when memory runs out. Pages faulted in before the error
/// stay allocated (`fallocate` would have given them back: see [`punch`]).
///
/// # Safety
/// `addr..addr + len` lies in a shared, writable mapping of this process.
/// Populating writes nothing, but a private mapping would get private
/// copies.
pub(crate) unsafe fn populate(addr: *mut u8, len: usize) -> io::Result<()> {
    let start = addr as usize & !(page_size() - 1);
    let end = (addr as usize).saturating_add(len);
    let mut at = start;
    while at < end {
        let step = (end - at).min(POPULATE_STEP);
        // SAFETY: the caller's contract (rounding down to the page stays in
        // the mapping, which starts on a page); the advice changes no byte
        // any reference sees, it only faults pages of the range in.
        match unsafe { madvise(at as *mut c_void, step, Advice::LinuxPopulateWrite) } {
            Ok(()) => at += step,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether the kernel gives shared memory huge pages only where a mapping
/// asks for them (`shmem_enabled` at `advise`): the one setting under which
/// faulting the arena in through its mapping ([`populate`]) gets huge pages
/// that `fallocate` does not. At `always`, `within_size` or `force` both
/// get them, at `never` (the kernel's default) or `deny` neither. Only the
/// top-level setting counts: the per-size `hugepages-*kB/shmem_enabled`
/// apply to anonymous shared mappings, not to a memfd. Read once.
pub(crate) fn shmem_huge_on_advice() -> bool {
    static ADVISE: OnceLock<bool> = OnceLock::new();
    *ADVISE.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .is_ok_and(|s| on_advice(&s))
    })
}

/// Whether a `shmem_enabled` setting, such as
/// `always within_size advise [never] deny force`, selects `advise`.
fn on_advice(setting: &str) -> bool {
    setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        == Some("advise")
}

/// The page size (from the auxiliary vector: no system call).
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Total physical memory in bytes (0 if unknown).
pub(crate) fn physical_memory() -> u64 {
    let info = rustix::system::sysinfo();
    #[allow(
        clippy::useless_conversion,
        reason = "a `c_ulong`: 32 bits on some targets"
    )]
    u64::from(info.totalram).saturating_mul(u64::from(info.mem_unit.max(1)))
}

/// A shared, writable mapping of a whole file, unmapped when dropped.
#[derive(Debug)]
pub(crate) struct SharedMap {
    base: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// Maps the first `len` bytes of `fd`, shared and writable, at an
    /// address of the kernel's choosing.
    ///
    /// # Errors
    /// The kernel's (`ENOMEM` when the address space is full).
    ///
    /// # Safety
    /// Nothing shrinks the file below `len` while the mapping lives (a
    /// touch past its end would raise `SIGBUS`): the file is an unlinked
    /// memfd that no one else holds open writable.
    pub(crate) unsafe fn new(fd: impl AsFd, len: usize) -> io::Result<SharedMap> {
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new mapping at an address the kernel picks overlaps
        // nothing of ours; the caller's contract keeps its pages backed.
        let p = unsafe { mmap(ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::from(Errno::NOMEM))?;
        Ok(SharedMap { base, len })
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Asks for transparent huge pages on `off..off + len` of the mapping
    /// (`MADV_HUGEPAGE`), where the kernel allows them on shared memory.
    /// Best effort: on `never` it is a no-op.
    pub(crate) fn advise_huge_pages(&self, off: usize, len: usize) {
        if off >= self.len {
            return;
        }
        let len = len.min(self.len - off);
        // SAFETY: the range lies in this mapping; the advice changes no
        // byte that any reference sees.
        let _ = unsafe { madvise(self.base().add(off).cast(), len, Advice::LinuxHugepage) };
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, made in `new`; whoever holds the
        // `SharedMap` keeps no reference into it past its drop.
        unsafe { munmap(self.base.as_ptr() as usize, self.len) };
    }
}

/// Unmaps `addr..addr + len`, best effort (an unmapped range is no error).
///
/// # Safety
/// Nothing in this process uses the range any more.
pub(crate) unsafe fn munmap(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    let _ = unsafe { rustix::mm::munmap(addr as *mut c_void, len) };
}

/// A new private anonymous mapping of `len` bytes at an address of the
/// kernel's choosing, never backed by memory or charged to the commit
/// limit until written (`MAP_NORESERVE`).
fn map_anonymous(len: usize, prot: ProtFlags) -> io::Result<*mut c_void> {
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
    // SAFETY: a new private mapping at an address the kernel picks overlaps
    // nothing of ours, so no reference's memory changes.
    Ok(unsafe { mmap_anonymous(ptr::null_mut(), len, prot, flags) }?)
}

/// A private, zero-filled, lazily allocated mapping of `len` bytes (the
/// shared heap's tag table). Never unmapped by itself: see [`munmap`].
pub(crate) fn map_private(len: usize) -> io::Result<*mut u8> {
    map_anonymous(len, ProtFlags::READ | ProtFlags::WRITE).map(<*mut c_void>::cast)
}

/// Maps all of `fd` (`len` bytes) shared and writable at an address aligned
/// to `align` (a power of two, a multiple of the page size): a `PROT_NONE`
/// reservation `align` bytes larger first, the file mapped over it with
/// `MAP_FIXED`, the slack unmapped. The mapping is never unmapped by
/// itself: see [`munmap`].
pub(crate) fn map_shared_aligned(
    fd: BorrowedFd<'_>,
    len: usize,
    align: usize,
) -> io::Result<usize> {
    let span = len
        .checked_add(align)
        .ok_or_else(|| io::Error::from(Errno::NOMEM))?;
    let raw = map_anonymous(span, ProtFlags::empty())? as usize;
    let start = (raw + align - 1) & !(align - 1);
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    // SAFETY: `start..start + len` lies inside the reservation just made,
    // which nothing else uses; MAP_FIXED replaces that part of it.
    let got = unsafe {
        mmap(
            start as *mut c_void,
            len,
            prot,
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            0,
        )
    };
    if let Err(e) = got {
        // SAFETY: our reservation, unused.
        unsafe { munmap(raw, span) };
        return Err(e.into());
    }
    // SAFETY: the slack before and after the file's mapping is part of our
    // reservation, and unused.
    unsafe {
        if start > raw {
            munmap(raw, start - raw);
        }
        if raw + span > start + len {
            munmap(start + len, raw + span - start - len);
        }
    }
    Ok(start)
}

/// Replaces the shared mapping `base..base + len` of `fd` by a private,
/// copy-on-write mapping of the same file at the same address: read-only
/// first (no commit charge), then writable. If the second step is refused
/// (strict overcommit), the view stays read-only; if the first fails, the
/// shared mapping itself is made read-only. Returns whether the view is
/// writable.
///
/// # Safety
/// `base..base + len` is this process's mapping of all of `fd`, and no
/// other thread uses the range meanwhile (in the heap, the caller is a
/// freshly forked child: it has a single thread).
pub(crate) unsafe fn private_view(base: usize, len: usize, fd: BorrowedFd<'_>) -> bool {
    let flags = MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE;
    // SAFETY: the caller's contract: the range is our mapping of the same
    // file at the same offsets, so every address keeps its bytes.
    let got = unsafe { mmap(base as *mut c_void, len, ProtFlags::READ, flags, fd, 0) };
    if got.is_err() {
        // SAFETY: as above; read-only only narrows access.
        unsafe { protect(base, len, false) };
        return false;
    }
    // SAFETY: as above.
    unsafe { protect(base, len, true) }
}

/// Maps all of `fd` shared over `base..base + len` again, read-only or
/// writable: the owner's kind of view, in place of a private one. Returns
/// whether it worked.
///
/// # Safety
/// `base..base + len` is this process's mapping of all of `fd`; no
/// reference relies on private copies of its pages (they are dropped) or,
/// if `!writable`, on writing it.
pub(crate) unsafe fn shared_view(
    base: usize,
    len: usize,
    fd: BorrowedFd<'_>,
    writable: bool,
) -> bool {
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let flags = MapFlags::SHARED | MapFlags::FIXED;
    // SAFETY: the caller's contract: the same file at the same offsets.
    unsafe { mmap(base as *mut c_void, len, prot, flags, fd, 0) }.is_ok()
}

/// Maps all of `fd` (`len` bytes) once more, shared but inaccessible, at an
/// address of the kernel's choosing: a second view of the same pages (the
/// shared heap's writable alias), whose parts a worker makes writable one
/// job output at a time ([`open_window`]). The file is open for writing, so
/// the mapping may become writable. Never unmapped by itself.
///
/// # Safety
/// Nothing shrinks the file below `len` while the mapping lives (as for
/// [`SharedMap::new`]).
pub(crate) unsafe fn map_alias(fd: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let prot = ProtFlags::empty();
    let flags = MapFlags::SHARED | MapFlags::NORESERVE;
    // SAFETY: a new mapping at an address the kernel picks overlaps nothing
    // of ours; the caller's contract keeps its pages backed.
    Ok(unsafe { mmap(ptr::null_mut(), len, prot, flags, fd, 0) }? as usize)
}

/// Sets the protection of `base..base + len` to read-only, or to read and
/// write; returns whether it worked.
///
/// # Safety
/// The range is a mapping of this process that no reference relies on
/// being more accessible than asked.
pub(crate) unsafe fn protect(base: usize, len: usize, writable: bool) -> bool {
    let prot = if writable {
        MprotectFlags::READ | MprotectFlags::WRITE
    } else {
        MprotectFlags::READ
    };
    // SAFETY: the caller's contract.
    unsafe { rustix::mm::mprotect(base as *mut c_void, len, prot) }.is_ok()
}

/// Makes `base..base + len` of a shared mapping writable (`open`) or
/// inaccessible again.
///
/// # Safety
/// The range is page-aligned and lies in a shared mapping of a file opened
/// for writing (the heap's alias); when closing, no reference into the
/// range is used afterwards.
pub(crate) unsafe fn open_window(base: usize, len: usize, open: bool) -> io::Result<()> {
    let prot = if open {
        MprotectFlags::READ | MprotectFlags::WRITE
    } else {
        MprotectFlags::empty()
    };
    // SAFETY: the caller's contract.
    unsafe { rustix::mm::mprotect(base as *mut c_void, len, prot) }.map_err(io::Error::from)
}

/// Whether `bytes` more can still be mapped under this process's
/// `RLIMIT_AS`: maps that much, inaccessible and unreserved, and unmaps it.
/// Async-signal-safe (the worker's `SIGABRT` handler calls it).
pub(crate) fn can_map(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes.max(1)) else {
        return false;
    };
    match map_anonymous(len, ProtFlags::empty()) {
        Ok(p) => {
            // SAFETY: mapped just above; nothing uses it.
            unsafe { munmap(p as usize, len) };
            true
        }
        Err(_) => false,
    }
}

/// The most pieces [`probe_mapped_bytes`] holds at once: at most two per
/// power of two from 64 TiB down to a page.
const PROBE_PIECES: usize = 96;

/// The size of this process's address space, found without `/proc`: under
/// an `RLIMIT_AS` of `L` bytes the kernel lets a process map exactly `L`
/// minus what it maps. So it sets the soft limit to `L` (unless it is lower
/// already), maps inaccessible, unreserved pieces (`PROT_NONE`,
/// `MAP_NORESERVE`: no memory, no commit charge), halving their size each
/// time the limit refuses one, down to a page, unmaps them and puts the
/// limit back. No allocation: a freshly forked worker calls it.
///
/// Only for a single-threaded process: while it runs, the process can map
/// nothing else.
pub(crate) fn probe_mapped_bytes() -> Option<u64> {
    use super::process::{AddressLimit, address_limit, set_address_limit};
    let old = address_limit()?;
    let page = page_size() as u64;
    // 64 TiB: far more than anything a process maps, and within the
    // 128 TiB of a 47-bit address space, so the pieces find room.
    let ceiling = old.soft.min(1 << 46);
    let probe = AddressLimit {
        soft: ceiling,
        hard: old.hard,
    };
    // The soft limit only goes down.
    set_address_limit(probe).ok()?;
    let mut pieces = [(0usize, 0usize); PROBE_PIECES];
    let mut held = 0;
    let mut free = 0u64;
    let mut size = (1u64 << 46).min(ceiling.next_power_of_two());
    while size >= page && held < PROBE_PIECES {
        match map_anonymous(size as usize, ProtFlags::empty()) {
            Ok(p) => {
                pieces[held] = (p as usize, size as usize);
                held += 1;
                free += size;
            }
            Err(_) => size /= 2,
        }
    }
    for &(p, len) in &pieces[..held] {
        // SAFETY: each piece was mapped above and nothing uses it.
        unsafe { munmap(p, len) };
    }
    // Puts the old soft limit back (the hard limit never changed).
    let _ = set_address_limit(old);
    Some(ceiling.saturating_sub(free))
}

/// The size of this process's address space, from `/proc/self/statm`, read
/// without allocating: async-signal-safe (a freshly forked worker calls
/// it). `None` without `/proc`.
pub(crate) fn mapped_bytes() -> Option<u64> {
    let mut buf = [0u8; 128];
    let n = super::read_file(c"/proc/self/statm", &mut buf)?;
    leading_number(&buf[..n])?.checked_mul(page_size() as u64)
}

/// The decimal number `text` starts with; `None` if it starts with none
/// (an empty or unreadable file is no answer, not 0).
fn leading_number(text: &[u8]) -> Option<u64> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    text[..digits].iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn a_memfd_cannot_be_shrunk_but_can_grow_and_be_punched() {
        let fd = super::memfd(c"test", 1 << 20).unwrap();
        let shrink = rustix::fs::ftruncate(&fd, 4096);
        assert_eq!(
            shrink,
            Err(rustix::io::Errno::PERM),
            "sealed against shrinking"
        );
        super::reserve(&fd, 0, 8192).unwrap();
        super::punch(&fd, 0, 4096);
        rustix::fs::ftruncate(&fd, 2 << 20).unwrap();
    }

    #[test]
    fn statm_s_first_field_or_no_answer() {
        assert_eq!(super::leading_number(b"12345 678 9\n"), Some(12345));
        assert_eq!(super::leading_number(b""), None);
        assert_eq!(super::leading_number(b" 12"), None);
        assert_eq!(super::leading_number(b"99999999999999999999999"), None);
    }

    use super::*;

    /// Bytes of a file that have pages.
    pub(crate) fn allocated_bytes(fd: impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_blocks as u64 * 512
    }

    #[test]
    fn a_failed_populate_keeps_its_pages_until_punched() {
        let fd = memfd(c"test", 4 << 20).unwrap();
        let blocks = || allocated_bytes(&fd);
        let len = 8usize << 20;
        // SAFETY: a new shared mapping of our own memfd, twice its size: the
        // second half is past the end of the file, and never touched.
        let map = unsafe { SharedMap::new(&fd, len) }.unwrap();
        // SAFETY: the range is that shared, writable mapping.
        match unsafe { populate(map.base(), len) } {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("this kernel has no MADV_POPULATE_WRITE");
            }
            Err(e) => {
                // Past the end of the file, a touch would raise SIGBUS.
                assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "{e}");
                assert!(blocks() >= 4 << 20, "the first half kept its pages");
                punch(&fd, 0, len as u64);
                assert_eq!(blocks(), 0, "punched back");
            }
            Ok(()) => panic!("populated past the end of the file"),
        }
    }

    #[test]
    fn only_advise_counts_as_huge_pages_on_advice() {
        assert!(on_advice("always within_size [advise] never deny force\n"));
        for other in ["always", "within_size", "never", "deny", "force"] {
            let s =
                "always within_size advise never deny force".replace(other, &format!("[{other}]"));
            assert!(!on_advice(&s), "{s}");
        }
        assert!(!on_advice(""));
        assert!(!on_advice("advise"), "no choice selected");
    }

    #[test]
    fn sizes_past_a_signed_offset_are_too_big() {
        let e = memfd(c"test", u64::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        let fd = memfd(c"test", 4096).unwrap();
        let e = reserve(&fd, 0, 1 << 63).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        reserve(&fd, 0, 4096).unwrap();
        assert_eq!(allocated_bytes(&fd), 4096);
    }

    #[test]
    fn a_shared_map_sees_the_file_and_takes_advice() {
        let fd = memfd(c"test", 1 << 20).unwrap();
        // SAFETY: our own memfd, never shrunk.
        let a = unsafe { SharedMap::new(&fd, 1 << 20) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { SharedMap::new(&fd, 1 << 20) }.unwrap();
        a.advise_huge_pages(0, 1 << 20);
        a.advise_huge_pages(2 << 20, 4096); // outside: ignored
        // SAFETY: both map the same file; the test alone touches them.
        unsafe {
            a.base().add(4096).write_volatile(7);
            assert_eq!(b.base().add(4096).read_volatile(), 7);
        }
        assert!(can_map(1 << 20));
        assert!(mapped_bytes().is_some_and(|m| m >= 2 << 20));
    }

    #[test]
    fn a_private_view_keeps_the_bytes_and_stops_writes_reaching_the_file() {
        let fd = memfd(c"test", 1 << 20).unwrap();
        let base = map_shared_aligned(fd.as_fd(), 1 << 20, 2 << 20).unwrap();
        assert_eq!(base % (2 << 20), 0);
        // SAFETY: our fresh mapping and memfd; the test touches only them.
        unsafe {
            reserve(&fd, 0, 8192).unwrap();
            *(base as *mut u8) = 7;
            assert!(private_view(base, 1 << 20, fd.as_fd()));
            assert_eq!(*(base as *const u8), 7, "same bytes");
            *(base as *mut u8) = 9;
            // The file still holds 7: map it again to look.
            // An alias is inaccessible until a window is opened on it.
            let again = map_alias(fd.as_fd(), 1 << 20).unwrap();
            open_window(again, 1 << 20, true).unwrap();
            assert_eq!(*(again as *const u8), 7, "a private write");
            *(again as *mut u8).add(4096) = 5;
            assert_eq!(
                *(base as *const u8).add(4096),
                5,
                "unwritten pages are live"
            );
            // Shared again: the private copy is gone, writes reach the file.
            assert!(shared_view(base, 1 << 20, fd.as_fd(), true));
            assert_eq!(*(base as *const u8), 7);
            *(base as *mut u8) = 11;
            assert_eq!(*(again as *const u8), 11);
            assert!(protect(base, 1 << 20, false));
            munmap(again, 1 << 20);
            munmap(base, 1 << 20);
        }
    }
}
