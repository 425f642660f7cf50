//! The template's last act: giving back the parent's memory before waiting
//! for its workers.
//!
//! A template inherits the parent's private memory, and so its page tables:
//! 2 GiB of touched heap is half a million entries, which an exit takes as
//! long to tear down as the fork took to copy (about 40-50 ms here). A
//! template that exits only after it has reaped its workers does that alone,
//! after they have done theirs. Once it is told to go, it needs none of that
//! memory: it kills its workers, unmaps the large private anonymous
//! mappings it inherited, then waits for them, so that the five teardowns
//! run side by side instead of four and then one (design.md, "Lifecycle").
//!
//! What it unmaps is read from `/proc/self/maps`, with raw system calls into
//! stack buffers (the malloc heap is among what goes). It keeps everything it
//! may still touch: file-backed mappings (code, libraries' data), anything
//! shared (the region, the shared heap and its alias), `[stack]`, the whole
//! stack of the calling thread wherever it lies (`pthread_getattr_np`: a
//! template forked from a thread other than the main one runs on that
//! thread's stack), any anonymous mapping that directly follows a
//! private file mapping (a library's `.bss`), mappings that are not writable
//! (reservations), mappings under 2 MiB, and 1 MiB either side of its stack
//! pointer, its thread's TLS and `errno` (the main thread's TLS is a small
//! mapping that the kernel may merge with a large anonymous neighbour). It
//! blocks every signal first: a handler the program installed could touch
//! anything. Where `/proc` is not mounted nothing is unmapped, and the exit
//! tears everything down as before.

use crate::os;

/// Mappings smaller than this are left for the exit: they cost little to
/// tear down, and the runtime's own small mappings are among them.
const MIN_MAPPING: usize = 2 << 20;

/// Below this much private resident memory, the maps are not worth reading.
const MIN_RESIDENT: u64 = 32 << 20;

/// How much is kept either side of an address the caller may still touch.
const KEEP_AROUND: usize = 1 << 20;

/// At most this many ranges are kept inside the mappings that go: the
/// caller's and four of our own (the stack, the stack pointer, TLS,
/// `errno`).
const MAX_KEPT: usize = 8;

/// Blocks every signal this process can block, then unmaps its large
/// private anonymous mappings, except the calling thread's stack, 1 MiB
/// either side of its stack pointer, TLS and `errno`, and each range in
/// `keep`; returns the bytes unmapped. Unmaps nothing (and returns 0) if the
/// process holds little private memory, if `/proc` cannot be read, or if the
/// calling thread's stack cannot be found.
///
/// # Safety
/// The calling process must be single-threaded, and after this call it may
/// touch only: the calling thread's stack; memory within 1 MiB of its stack
/// pointer at the call, of its thread's TLS (`pthread_self`) and `errno`;
/// the ranges in `keep`; `[stack]`; file-backed and shared mappings;
/// anonymous mappings that are read-only, under 2 MiB or directly after a
/// private file mapping. In particular, it must not allocate or free through the
/// malloc heap, run destructors of heap-owning values, or unwind, and it
/// must never unblock signals: the template calls it just before it reaps
/// its workers and `_exit`s.
pub(crate) unsafe fn release_inherited_memory(keep: &[(usize, usize)]) -> usize {
    if keep.len() > MAX_KEPT - 4 || os::private_resident_bytes().is_none_or(|b| b < MIN_RESIDENT) {
        return 0;
    }
    // SAFETY: sigfillset fills a live set; sigprocmask only changes this
    // (single-threaded) process's mask. SIGKILL and SIGSTOP stay
    // deliverable, and neither runs a handler.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let Some(stack) = own_stack() else {
        return 0;
    };
    let sp = 0u8;
    let sp = std::hint::black_box(&sp) as *const u8 as usize;
    // SAFETY: both return this thread's own addresses and have no
    // preconditions.
    let (tls, errno) = unsafe {
        (
            libc::pthread_self() as usize,
            libc::__errno_location() as usize,
        )
    };
    let mut own = [(0usize, 0usize); MAX_KEPT];
    own[0] = stack;
    for (k, at) in own[1..4].iter_mut().zip([sp, tls, errno]) {
        *k = (
            at.saturating_sub(KEEP_AROUND),
            at.saturating_add(KEEP_AROUND),
        );
    }
    own[4..4 + keep.len()].copy_from_slice(keep);
    let own = &own[..4 + keep.len()];
    let mut released = 0;
    let mut prev: Option<Prev> = None;
    let result = os::for_each_line(c"/proc/self/maps", |line| {
        let Some(m) = parse(line) else {
            // A line we cannot read: the next mapping may be its `.bss`,
            // so it stays (`releasable` keeps a mapping after an unknown).
            prev = None;
            return;
        };
        if releasable(&m, prev) {
            for (a, b) in outside(m.start, m.end, own) {
                // SAFETY: the caller guarantees that nothing in this
                // process touches this part of a mapping `releasable`
                // accepts (large, private, writable, anonymous, no stack,
                // no `.bss`), outside every range it may use; no signal
                // handler can run. Unmapping a mapping the reader has
                // already passed does not disturb it: it resumes from the
                // last address it showed.
                if unsafe { libc::munmap(a as *mut libc::c_void, b - a) } == 0 {
                    released += b - a;
                }
            }
        }
        prev = Some(Prev::of(&m));
    });
    if result.is_err() { 0 } else { released }
}

/// The calling thread's stack, `lo..hi`, as the C library knows it (for
/// the main thread it reads `/proc/self/maps` and allocates, so it is
/// called before anything goes).
fn own_stack() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialized by pthread_getattr_np before it is read
    // and destroyed once; pthread_attr_getstack writes two live locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr = std::ptr::null_mut();
        let mut size = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let lo = addr as usize;
        (ok && size > 0).then(|| (lo, lo.saturating_add(size)))
    }
}

/// One line of `/proc/self/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    writable: bool,
    private: bool,
    inode: u64,
    path: &'a [u8],
}

/// What `releasable` needs of the line before.
#[derive(Clone, Copy, Debug)]
struct Prev {
    end: usize,
    /// A private file mapping: a segment of the program or a library, whose
    /// `.bss` may follow it.
    segment: bool,
}

impl Prev {
    fn of(m: &Mapping<'_>) -> Prev {
        Prev {
            end: m.end,
            segment: m.inode != 0 && m.private,
        }
    }
}

/// `start-end perms offset dev inode [path]`.
fn parse(line: &[u8]) -> Option<Mapping<'_>> {
    let mut fields = line
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .peekable();
    let range = fields.next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    let perms = fields.next()?;
    if perms.len() != 4 || end <= start {
        return None;
    }
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = decimal(fields.next()?)?;
    // The path is the rest of the line, spaces and all.
    let path = match fields.peek() {
        Some(first) => {
            let at = first.as_ptr() as usize - line.as_ptr() as usize;
            line[at..].trim_ascii_end()
        }
        None => &[],
    };
    Some(Mapping {
        start,
        end,
        writable: perms[1] == b'w',
        private: perms[3] == b'p',
        inode,
        path,
    })
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &b| {
        let d = (b as char).to_digit(16)? as usize;
        acc.checked_mul(16)?.checked_add(d)
    })
}

fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(10)? as u64;
        acc.checked_mul(10)?.checked_add(d)
    })
}

/// Large, private, writable and anonymous (no file; `[heap]` or a named
/// anonymous mapping count), not a stack, and not directly after a private
/// file mapping (a library's `.bss` sits after its data segment) or after a
/// line that could not be read (`prev` is `None`). A shared mapping just
/// below (a region's memfd) is no segment: what follows it may go.
fn releasable(m: &Mapping<'_>, prev: Option<Prev>) -> bool {
    let anonymous =
        m.inode == 0 && (m.path.is_empty() || m.path == b"[heap]" || m.path.starts_with(b"[anon:"));
    let bss = prev.is_none_or(|p| p.segment && p.end == m.start);
    m.writable && m.private && anonymous && m.end - m.start >= MIN_MAPPING && !bss
}

/// The parts of `start..end` outside every range in `keep` (widened to
/// whole pages; `start` and `end` are page-aligned), in order: at most one
/// more part than there are kept ranges.
fn outside(
    start: usize,
    end: usize,
    keep: &[(usize, usize)],
) -> impl Iterator<Item = (usize, usize)> {
    let page = os::page_size();
    let mut cuts = [(0usize, 0usize); MAX_KEPT];
    let mut n = 0;
    for &(lo, hi) in keep.iter().take(cuts.len()) {
        let lo = lo / page * page;
        let hi = hi.checked_next_multiple_of(page).unwrap_or(usize::MAX);
        if lo < end && hi > start {
            cuts[n] = (lo.max(start), hi.min(end));
            n += 1;
        }
    }
    cuts[..n].sort_unstable();
    let mut at = start;
    let mut i = 0;
    std::iter::from_fn(move || {
        while at < end {
            let (next_cut, after) = if i < n { cuts[i] } else { (end, end) };
            i += 1;
            let part = (at, next_cut.max(at));
            at = at.max(after);
            if part.1 > part.0 {
                return Some(part);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581a2c00000-5581a2c2e000 r--p 00000000 fd:01 1311 /usr/bin/prog
5581a2e2e000-5581a2e40000 rw-p 0022e000 fd:01 1311 /usr/bin/prog
5581a2e40000-5581a3240000 rw-p 00000000 00:00 0
5581a4000000-5581a8000000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0080000000 rw-p 00000000 00:00 0
7f0080000000-7f0080400000 rw-s 00000000 00:01 77                         /memfd:shmpool (deleted)
7f0080400000-7f0081400000 rw-p 00000000 00:00 0
7f0090000000-7f0090400000 rw-p 00000000 00:00 0                          [anon:user buffer]
7f00a0000000-7f00a0001000 rw-p 00000000 00:00 0
7f00b0000000-7f00b0400000 r--p 00000000 00:00 0
7f00c0000000-7f00c0400000 rw-p 00000000 00:01 78                         /memfd:heap.shmpool (deleted)
7ffc00000000-7ffc00400000 rw-p 00000000 00:00 0                          [stack]
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0
";

    fn chosen() -> Vec<(usize, usize)> {
        let mut prev = None;
        let mut out = Vec::new();
        for line in MAPS.lines() {
            let m = parse(line.as_bytes()).unwrap();
            if releasable(&m, prev) {
                out.push((m.start, m.end));
            }
            prev = Some(Prev::of(&m));
        }
        out
    }

    #[test]
    fn lines_parse() {
        let m = parse(b"7f00c0000000-7f00c0400000 rw-p 00000000 00:01 78   /memfd:a b (deleted)")
            .unwrap();
        assert_eq!(m.start, 0x7f00c0000000);
        assert_eq!(m.end, 0x7f00c0400000);
        assert!(m.writable && m.private);
        assert_eq!(m.inode, 78);
        assert_eq!(m.path, b"/memfd:a b (deleted)");
        let m = parse(b"7f0000000000-7f0080000000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!((m.inode, m.path), (0, &b""[..]));
        assert_eq!(parse(b"zz-10 rw-p 0 0 0"), None);
        assert_eq!(parse(b"20-10 rw-p 0 0 0"), None, "end before start");
        assert_eq!(parse(b"10-20 rw-p 0 0"), None, "no inode");
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn only_large_private_anonymous_mappings_go() {
        assert_eq!(
            chosen(),
            vec![
                (0x5581a4000000, 0x5581a8000000), // [heap]
                (0x7f0000000000, 0x7f0080000000), // a large anonymous block
                (0x7f0080400000, 0x7f0081400000), // one right after a region
                (0x7f0090000000, 0x7f0090400000), // a named anonymous one
                (0x7ffd00000000, 0x7ffd00400000), // anonymous, after [stack]
            ],
            "kept: the program's file mappings and the .bss after them, shared \
             mappings, a single page, a read-only block, a private view of a \
             memfd, the stack"
        );
    }

    #[test]
    fn kept_ranges_are_cut_out() {
        const M: usize = 1 << 20;
        // A kept address keeps a megabyte either side, as the call does.
        let parts = |keep: &[usize]| {
            let keep: Vec<_> = keep
                .iter()
                .map(|&k| (k.saturating_sub(M), k.saturating_add(M)))
                .collect();
            outside(100 * M, 200 * M, &keep).collect::<Vec<_>>()
        };
        assert_eq!(parts(&[]), vec![(100 * M, 200 * M)]);
        assert_eq!(
            parts(&[50 * M, 300 * M]),
            vec![(100 * M, 200 * M)],
            "outside"
        );
        assert_eq!(
            parts(&[150 * M + 123]),
            vec![(100 * M, 149 * M), (151 * M + 4096, 200 * M)]
        );
        assert_eq!(
            parts(&[199 * M + 5, 100 * M]),
            vec![(101 * M, 198 * M)],
            "at the ends, in any order"
        );
        assert_eq!(
            parts(&[150 * M, 150 * M + 100, 151 * M]),
            vec![(100 * M, 149 * M), (152 * M, 200 * M)],
            "overlapping windows"
        );
        assert_eq!(
            parts(&[150 * M, 152 * M]),
            vec![(100 * M, 149 * M), (153 * M, 200 * M)]
        );
        assert!(
            parts(&[101 * M, 103 * M, 105 * M, 107 * M, 109 * M])
                .iter()
                .all(|&(a, b)| a < b && b - a >= M)
        );
        assert_eq!(outside(0, 2 * M, &[(0, 2 * M)]).count(), 0, "all kept");
        assert_eq!(
            outside(
                usize::MAX - 4 * M + 1,
                usize::MAX - M + 1,
                &[(usize::MAX - M, usize::MAX)]
            )
            .count(),
            1,
            "no overflow"
        );
        assert_eq!(
            outside(100 * M, 200 * M, &[(120 * M + 5, 130 * M - 5)]).collect::<Vec<_>>(),
            vec![(100 * M, 120 * M), (130 * M, 200 * M)],
            "a range (a thread's stack), widened to whole pages"
        );
    }
}
