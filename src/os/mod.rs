//! The operating-system boundary: every system call the crate makes, as
//! safe functions where the call can be made safe.
//!
//! Linux only. The rest of the crate calls these and never `libc`, `nix` or
//! `rustix` directly. The calls go through `rustix` (its raw-syscall
//! backend: no `errno`, no allocation, so they are async-signal-safe and
//! may run in a freshly forked child or from the global allocator) except
//! where libc's own bookkeeping must see them. `fork` goes through `nix`
//! to libc's, so that `pthread_atfork` handlers run; the template's forks
//! call libc's `_Fork` (found with `dlsym`), which keeps libc's record of
//! the child's thread id and robust-mutex list right, where a raw `clone`
//! would not, and skips the rest. Signal dispositions (`sigaction`,
//! `sigprocmask`: libc keeps its own view of them) and the resource limits
//! go through `nix`. rustix takes the page size and the vDSO from libc's
//! `getauxval` (its `use-libc-auxv` feature): otherwise it reads
//! `/proc/self/auxv` into an allocated buffer on first use, which the
//! shared heap's allocator must not do. Hand-written, each with its reason
//! at the function:
//! `_exit`, `_Fork`, `pthread_atfork`, `close_range`, `setitimer`, and
//! `sigaction` to read a disposition or reset a real-time signal's.
//!
//! - [`memory`]: memfds, their pages, mappings, the address-space probe.
//! - [`sync`]: futexes, eventfds, `poll`, the monotonic clock.
//! - [`ipc`]: the template's seqpacket socket and `SCM_RIGHTS`.
//! - [`process`]: fork, exit, pidfds, reaping, descriptors, resource limits.
//! - [`signals`]: dispositions and the worker's handlers.
//!
//! This module and the ones below it may use `unsafe` (the crate denies it
//! elsewhere, with a few exceptions named in `lib.rs`): mapping memory and
//! installing signal handlers cannot be made safe in general, and their
//! callers carry the contracts.

#![allow(unsafe_code)]

pub(crate) mod ipc;
pub(crate) mod memory;
pub(crate) mod process;
pub(crate) mod signals;
pub(crate) mod sync;

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

pub(crate) use ipc::*;
pub(crate) use memory::*;
pub(crate) use process::*;
pub(crate) use signals::*;
pub(crate) use sync::*;

/// Error numbers the crate tells apart (the values `io::Error::raw_os_error`
/// reports).
pub(crate) mod errno {
    pub(crate) const EINVAL: i32 = libc::EINVAL;
    pub(crate) const EPERM: i32 = libc::EPERM;
    pub(crate) const ENOSYS: i32 = libc::ENOSYS;
    pub(crate) const ENOMEM: i32 = libc::ENOMEM;
    pub(crate) const ENOSPC: i32 = libc::ENOSPC;
    pub(crate) const EFBIG: i32 = libc::EFBIG;
    pub(crate) const ENOBUFS: i32 = libc::ENOBUFS;
    pub(crate) const EMFILE: i32 = libc::EMFILE;
    pub(crate) const EPIPE: i32 = libc::EPIPE;
    pub(crate) const ECONNRESET: i32 = libc::ECONNRESET;
    pub(crate) const ENOTCONN: i32 = libc::ENOTCONN;
    pub(crate) const EIO: i32 = libc::EIO;
}

/// Signal numbers the crate names.
pub(crate) mod signo {
    pub(crate) const SIGALRM: i32 = libc::SIGALRM;
    #[cfg(test)]
    pub(crate) const SIGSEGV: i32 = libc::SIGSEGV;
}

/// The system call number of `futex` (what `/proc/<pid>/syscall` shows).
pub(crate) const SYS_FUTEX: i64 = libc::SYS_futex;
/// The system call number of `read`.
#[cfg(test)]
pub(crate) const SYS_READ: i64 = libc::SYS_read;

/// This thread's `errno` as libc last left it, read without allocating
/// (async-signal-safe).
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Reads up to `buf.len()` bytes of the file at `path` into `buf`; returns
/// how many. No allocation: the shared heap and a freshly forked worker
/// call it.
pub(crate) fn read_file(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    Some(got)
}

/// Writes all of `msg` to standard error, best effort, without allocating
/// (the shared heap's last words).
pub(crate) fn write_stderr(msg: &[u8]) {
    // SAFETY: descriptor 2 stays open for the life of the process (the
    // standard library never closes it). A program that closes it and
    // reuses the number would get these bytes in that file: the same as
    // `eprintln!` then.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let mut rest = msg;
    while !rest.is_empty() {
        match rustix::io::write(fd, rest) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
}

/// The file `fd` refers to: `(st_dev, st_ino)`.
pub(crate) fn file_id(fd: impl AsFd) -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// The size in bytes of the largest data or unified cache of CPU 0, from
/// sysfs (`glibc`'s `sysconf` reports the host's, not the guest's, under some
/// hypervisors: 320 MiB for a 32 MiB L3 here).
pub(crate) fn largest_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|entry| {
        let path = entry.ok()?.path();
        let kind = std::fs::read_to_string(path.join("type")).ok()?;
        if kind.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(&std::fs::read_to_string(path.join("size")).ok()?)
    })
    .max()
}

/// Parses a sysfs cache size: `32768K`, `1M`, `512`.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::memory::tests::allocated_bytes;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("12Q"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn files_read_and_identify() {
        let mut buf = [0u8; 64];
        let n = read_file(c"/proc/self/statm", &mut buf).unwrap();
        assert!(n > 0 && buf[0].is_ascii_digit());
        assert_eq!(read_file(c"/nonexistent", &mut buf), None);
        let a = memfd(c"test", 4096).unwrap();
        let b = memfd(c"test", 4096).unwrap();
        assert!(file_id(&a).is_some());
        assert_ne!(file_id(&a), file_id(&b));
        write_stderr(b"");
        assert_eq!(
            io::Error::from_raw_os_error(errno::ENOMEM).raw_os_error(),
            Some(libc::ENOMEM)
        );
    }
}
