//! The shared heap's system calls and the limits it reads. Nothing here
//! allocates: the allocator calls it, and so does a freshly forked child's
//! `pthread_atfork` handler. Files are read with raw `open`/`read` into
//! stack buffers, and errors are `io::Error::last_os_error()` (no
//! allocation). The memfd calls go through `nix` as in `os.rs`; `mmap` with
//! `MAP_FIXED` and `mprotect`, which `nix` wraps only behind a feature the
//! crate does not otherwise need, are raw `libc` calls.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::unistd::ftruncate;

/// The heap's memfd: `memfd:heap.shmpool` in `/proc/<pid>/maps`. (Not
/// `shmpool...`: tools that count a pool's regions look for that prefix.)
const NAME: &CStr = c"heap.shmpool";

/// Creates the heap's memfd, `len` bytes long and sparse.
pub(crate) fn memfd(len: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC)?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    ftruncate(&fd, len)?;
    Ok(fd)
}

/// The descriptor `fd`, borrowed.
///
/// # Safety
/// `fd` is open for the duration of the borrow.
unsafe fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: the caller's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Allocates the file's pages of `off..off + len`, so that touching them
/// can never raise `SIGBUS`. On failure the kernel gives back what the call
/// allocated.
///
/// # Errors
/// `ENOSPC` or `ENOMEM` when the memory is not available.
///
/// # Safety
/// `fd` is open.
pub(crate) unsafe fn reserve(fd: RawFd, off: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: the caller's contract.
    let fd = unsafe { borrow(fd) };
    loop {
        match fallocate(fd, FallocateFlags::empty(), off, len) {
            Err(Errno::EINTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Gives back the file's pages of `off..off + len` (a hole; the size stays).
/// Best effort: a failure leaves the pages allocated, which costs memory,
/// never correctness.
///
/// # Safety
/// `fd` is open.
pub(crate) unsafe fn punch(fd: RawFd, off: u64, len: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the caller's contract.
    let fd = unsafe { borrow(fd) };
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    while fallocate(fd, flags, off, len) == Err(Errno::EINTR) {}
}

/// Maps all of `fd` (`len` bytes) shared and writable at an address aligned
/// to `align` (a power of two, a multiple of the page size): a `PROT_NONE`
/// reservation `align` bytes larger first, the file mapped over it with
/// `MAP_FIXED`, the slack unmapped.
pub(crate) fn map_shared(fd: &OwnedFd, len: usize, align: usize) -> io::Result<usize> {
    let span = len
        .checked_add(align)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new private anonymous mapping; nothing of ours is at the
    // address the kernel picks.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let start = (raw + align - 1) & !(align - 1);
    // SAFETY: `start..start + len` lies inside the reservation just made,
    // which nothing else uses; MAP_FIXED replaces that part of it.
    let got = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
        )
    };
    if got == libc::MAP_FAILED {
        let err = io::Error::last_os_error();
        // SAFETY: our reservation, unused.
        unsafe { libc::munmap(raw as *mut libc::c_void, span) };
        return Err(err);
    }
    // SAFETY: the slack before and after the file's mapping is part of our
    // reservation, and unused.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        if raw + span > start + len {
            libc::munmap((start + len) as *mut libc::c_void, raw + span - start - len);
        }
    }
    Ok(start)
}

/// A private, zero-filled, lazily allocated mapping of `len` bytes (the tag
/// table).
pub(crate) fn map_private(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a new private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Unmaps `addr..addr + len`, best effort.
///
/// # Safety
/// Nothing in this process uses the range any more.
pub(crate) unsafe fn unmap(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// The file `fd` refers to: `(st_dev, st_ino)`.
pub(crate) fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes only the struct it is given; an invalid fd fails.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
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
pub(crate) unsafe fn private_view(base: usize, len: usize, fd: RawFd) -> bool {
    // SAFETY: the caller's contract: the range is our mapping of the same
    // file at the same offsets, so every address keeps its bytes.
    let got = unsafe {
        libc::mmap(
            base as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        // SAFETY: as above; mprotect only narrows access.
        unsafe { protect(base, len, libc::PROT_READ) };
        return false;
    }
    // SAFETY: as above.
    unsafe { protect(base, len, libc::PROT_READ | libc::PROT_WRITE) }
}

/// Maps all of `fd` shared over `base..base + len` again, read-only or
/// writable: the owner's kind of view, in place of a private one. Returns
/// whether it worked.
///
/// # Safety
/// `base..base + len` is this process's mapping of all of `fd`; no
/// reference relies on private copies of its pages (they are dropped) or,
/// if `!writable`, on writing it.
pub(crate) unsafe fn shared_view(base: usize, len: usize, fd: RawFd, writable: bool) -> bool {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: the caller's contract: the same file at the same offsets.
    let got = unsafe {
        libc::mmap(
            base as *mut libc::c_void,
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            0,
        )
    };
    got != libc::MAP_FAILED
}

/// Sets the protection of `base..base + len`; returns whether it worked.
///
/// # Safety
/// The range is a mapping of this process that no reference relies on
/// being more accessible than `prot`.
pub(crate) unsafe fn protect(base: usize, len: usize, prot: i32) -> bool {
    // SAFETY: the caller's contract.
    unsafe { libc::mprotect(base as *mut libc::c_void, len, prot) == 0 }
}

/// Writes `msg` to standard error and aborts: the heap's bookkeeping was
/// handed a block it never gave out (a double free, a wrong layout, a wild
/// pointer). Writes with a raw `write`: the allocator cannot allocate.
pub(crate) fn fatal(msg: &str) -> ! {
    let mut rest = msg.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes from a live buffer to fd 2.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = &rest[n as usize..];
    }
    std::process::abort()
}

/// `RLIMIT_AS`'s soft limit, `None` when unlimited.
pub(crate) fn address_space_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Reads up to `buf.len()` bytes of the file at `path` (NUL-terminated
/// bytes) into `buf`; returns how many.
fn read_file(path: &[u8], buf: &mut [u8]) -> Option<usize> {
    let path = CStr::from_bytes_until_nul(path).ok()?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled part of `buf`; the fd is ours.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    Some(got)
}

/// A memory cgroup limit file's value: a number of bytes, or `None` for
/// `max` (v2) or a value so large it means no limit (v1 reports
/// `9223372036854771712`).
pub(crate) fn parse_limit(text: &[u8]) -> Option<u64> {
    let digits = text.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })?;
    (n < 1 << 62).then_some(n)
}

/// From `/proc/self/cgroup`: the v2 path (`0::/path`) and the v1 memory
/// controller's path (`N:...memory...:/path`).
pub(crate) fn cgroup_paths(text: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == b"0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

/// The smallest limit in `file` of the cgroup at `path` under `root` and
/// of each of its ancestors.
fn limit_along(root: &[u8], path: &[u8], file: &[u8]) -> Option<u64> {
    let mut path = path.strip_suffix(b"/").unwrap_or(path);
    let mut best: Option<u64> = None;
    loop {
        let mut full = [0u8; 512];
        let len = root.len() + path.len() + file.len();
        if len < full.len() {
            full[..root.len()].copy_from_slice(root);
            full[root.len()..root.len() + path.len()].copy_from_slice(path);
            full[root.len() + path.len()..len].copy_from_slice(file);
            let mut text = [0u8; 64];
            if let Some(n) = read_file(&full[..=len], &mut text) {
                if let Some(v) = parse_limit(&text[..n]) {
                    best = Some(best.map_or(v, |b| b.min(v)));
                }
            }
        }
        match path.iter().rposition(|&b| b == b'/') {
            Some(at) => path = &path[..at],
            None => return best,
        }
    }
}

/// This process's memory cgroup limit, the smallest along the path to the
/// root (v2 `memory.max`, else v1 `memory.limit_in_bytes`); `None` if there
/// is none or it cannot be read.
pub(crate) fn cgroup_limit() -> Option<u64> {
    let mut buf = [0u8; 4096];
    let n = read_file(b"/proc/self/cgroup\0", &mut buf)?;
    let (v2, v1) = cgroup_paths(&buf[..n]);
    let v2 = v2.and_then(|p| limit_along(b"/sys/fs/cgroup", p, b"/memory.max"));
    let v1 = v1.and_then(|p| limit_along(b"/sys/fs/cgroup/memory", p, b"/memory.limit_in_bytes"));
    match (v2, v1) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_limit(b"max\n"), None);
        assert_eq!(parse_limit(b"536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit(b"9223372036854771712\n"), None, "v1's no limit");
        assert_eq!(parse_limit(b""), None);
        assert_eq!(parse_limit(b"12k"), None);
        let v2 = b"0::/user.slice/session-1.scope\n";
        assert_eq!(
            cgroup_paths(v2),
            (Some(&b"/user.slice/session-1.scope"[..]), None)
        );
        let v1 = b"9:name=systemd:/\n4:memory:/process_api/f800\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            cgroup_paths(v1),
            (Some(&b"/"[..]), Some(&b"/process_api/f800"[..]))
        );
        assert_eq!(cgroup_paths(b"garbage"), (None, None));
    }

    #[test]
    fn this_machines_limits_read_without_trouble() {
        // Whatever the machine has; only that reading them works.
        let _ = cgroup_limit();
        let _ = address_space_limit();
        assert_eq!(
            limit_along(b"/nonexistent", b"/a/b/c", b"/memory.max"),
            None
        );
    }

    #[test]
    fn a_private_view_keeps_the_bytes_and_stops_writes_reaching_the_file() {
        let fd = memfd(1 << 20).unwrap();
        let base = map_shared(&fd, 1 << 20, 2 << 20).unwrap();
        assert_eq!(base % (2 << 20), 0);
        // SAFETY: our fresh mapping and memfd; the test touches only them.
        unsafe {
            reserve(fd.as_raw_fd(), 0, 8192).unwrap();
            *(base as *mut u8) = 7;
            assert!(private_view(base, 1 << 20, fd.as_raw_fd()));
            assert_eq!(*(base as *const u8), 7, "same bytes");
            *(base as *mut u8) = 9;
            // The file still holds 7: map it again to look.
            let again = map_shared(&fd, 1 << 20, 4096).unwrap();
            assert_eq!(*(again as *const u8), 7, "a private write");
            *(again as *mut u8).add(4096) = 5;
            assert_eq!(
                *(base as *const u8).add(4096),
                5,
                "unwritten pages are live"
            );
            // Shared again: the private copy is gone, writes reach the file.
            assert!(shared_view(base, 1 << 20, fd.as_raw_fd(), true));
            assert_eq!(*(base as *const u8), 7);
            *(base as *mut u8) = 11;
            assert_eq!(*(again as *const u8), 11);
            unmap(again, 1 << 20);
            unmap(base, 1 << 20);
        }
    }
}
