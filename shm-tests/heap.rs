//! The shared heap as a process's global allocator.
//!
//! Every test runs its body in a process of its own with `SHMPOOL_TEST_HEAP`
//! set, so that `common::TestAlloc` installs a `SharedHeap` there: `small`
//! (256 MiB, 16 MiB kept warm) unless the test says otherwise, sometimes
//! under an `RLIMIT_AS`.

mod common;

use std::alloc::{Layout, alloc, dealloc};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Rng, TEST_HEAP, deadline, in_isolation};
use shmpool::{HeapStats, Pool};

/// Runs the ignored test `name` of this binary in a fresh process with
/// `SHMPOOL_TEST_HEAP=heap` and, if given, `RLIMIT_AS` set to `limit`
/// bytes; fails unless it passes within `secs`. Returns its stdout.
fn run_with_heap(name: &str, heap: &str, limit: Option<u64>, secs: u64) -> String {
    run_with_heap_under(name, heap, limit.map(|l| (libc::RLIMIT_AS, l)), secs)
}

/// [`run_with_heap`], with any resource limit: `(resource, bytes)`.
fn run_with_heap_under(
    name: &str,
    heap: &str,
    limit: Option<(libc::__rlimit_resource_t, u64)>,
    secs: u64,
) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(common::ISOLATED, "1")
    .env(TEST_HEAP, heap)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some((resource, limit)) = limit {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("re-run the test binary");
    let end = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the test") {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("{name} failed ({s}):\n{stdout}\n{stderr}"),
        None => panic!("{name} missed its deadline of {secs} s:\n{stdout}\n{stderr}"),
    }
}

/// The heap this process allocates from.
fn heap() -> &'static shmpool::SharedHeap {
    common::heap().expect("SHMPOOL_TEST_HEAP installs the heap")
}

fn stats() -> HeapStats {
    heap().stats()
}

/// The heap's mapping in `/proc/self/maps`: `(start, end)`, and how many
/// lines name it.
fn heap_mapping() -> Option<((usize, usize), usize)> {
    // A block the heap hands out lies in its own mapping, not in the
    // writable alias the first pool maps beside it.
    let probe: Vec<u8> = Vec::with_capacity(1 << 20);
    let at = probe.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ranges: Vec<(usize, usize)> = maps
        .lines()
        .filter(|l| l.contains("memfd:heap.shmpool"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    let own = ranges
        .iter()
        .copied()
        .find(|&(a, b)| (a..b).contains(&at))
        .or_else(|| ranges.first().copied())?;
    Some((own, ranges.len()))
}

/// Whether `p` lies in the heap's mapping (read once: it never moves).
fn in_heap<T>(p: *const T) -> bool {
    static RANGE: OnceLock<(usize, usize)> = OnceLock::new();
    let &(start, end) = RANGE.get_or_init(|| heap_mapping().expect("the heap is mapped").0);
    (start..end).contains(&(p as usize))
}

/// Descriptors of this process open on the heap's memfd.
fn heap_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .contains("memfd:heap.shmpool")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Bytes of the heap's memfd that have pages (`st_blocks`).
fn heap_file_bytes() -> u64 {
    let fds = heap_fds();
    assert_eq!(fds.len(), 1, "one descriptor on the heap's memfd: {fds:?}");
    // SAFETY: fstat writes only the struct it is given.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fds[0], &mut st), 0);
        st
    };
    st.st_blocks as u64 * 512
}

/// A vector of `n` values following a pattern that depends on `seed`.
fn pattern(n: usize, seed: u64) -> Vec<u64> {
    (0..n as u64).map(|i| i.wrapping_mul(seed) ^ seed).collect()
}

fn check_pattern(v: &[u64], seed: u64) {
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, (i as u64).wrapping_mul(seed) ^ seed, "element {i}");
    }
}

/// Forks; the child runs `child` and exits 0 if it returns `true`, 1 if
/// `false`, 101 if it panics. Returns the child's exit code.
fn in_forked_child(child: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the test process is single-threaded apart from the deadline's
    // waiting thread; the child only allocates (glibc's malloc resets its
    // locks at fork; the heap's lock is never taken in a child) and leaves
    // with `_exit`.
    match unsafe { libc::fork() } {
        0 => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child));
            let code = match ok {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => 101,
            };
            // SAFETY: ends the child without the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            let mut status = 0;
            // SAFETY: waits for the child forked above.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }
}

macro_rules! isolated_test {
    ($outer:ident, $body:ident, $heap:expr, $limit:expr, $secs:expr) => {
        #[test]
        fn $outer() {
            run_with_heap(stringify!($body), $heap, $limit, $secs);
        }
    };
}

// Basics: what goes where.

isolated_test!(
    large_blocks_live_in_the_heap,
    large_blocks_body,
    "small",
    None,
    60
);

#[test]
#[ignore = "run with the heap installed by large_blocks_live_in_the_heap"]
fn large_blocks_body() {
    if !in_isolation() {
        return;
    }
    deadline(60, || {
        let s = stats();
        assert!(s.active, "{s:?}");
        assert_eq!(s.capacity, 256 << 20);
        assert_eq!(s.threshold, 64 << 10);
        let ((start, end), lines) = heap_mapping().unwrap();
        assert_eq!(end - start, 256 << 20);
        assert_eq!(start % (2 << 20), 0, "aligned to a huge page");
        assert_eq!(lines, 1);

        let big = pattern(1 << 20, 3);
        assert!(in_heap(big.as_ptr()), "8 MiB goes to the heap");
        let at = vec![1u8; 64 << 10];
        assert!(
            in_heap(at.as_ptr()),
            "the threshold itself goes to the heap"
        );
        let below = vec![1u8; (64 << 10) - 1];
        assert!(!in_heap(below.as_ptr()), "one byte less does not");
        let small = Box::new([1u8; 100]);
        assert!(!in_heap(small.as_ptr()));
        assert!(stats().in_use >= (8 << 20) + (64 << 10));
        check_pattern(&big, 3);

        // A freed block is reused warm, and `vec![0; n]` still reads zeros.
        let mut dirty = vec![0xffu8; 4 << 20];
        dirty[12345] = 1;
        let addr = dirty.as_ptr() as usize;
        drop(dirty);
        assert!(stats().warm >= 4 << 20);
        let clean = vec![0u8; 4 << 20];
        assert_eq!(clean.as_ptr() as usize, addr, "the warm block comes back");
        assert!(
            clean.iter().all(|&b| b == 0),
            "alloc_zeroed zeroes warm pages"
        );

        // Any power-of-two alignment.
        for align in [4096usize, 64 << 10, 2 << 20, 16 << 20] {
            let layout = Layout::from_size_align(1 << 20, align).unwrap();
            // SAFETY: a non-zero size; freed below with the same layout.
            unsafe {
                let p = alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "aligned to {align}");
                assert!(in_heap(p));
                p.write_bytes(9, 1 << 20);
                dealloc(p, layout);
            }
        }
        assert_eq!(heap().trim() % 4096, 0);
        assert_eq!(stats().warm, 0, "trim gives back every warm page");
    });
}

// Exhaustion.

isolated_test!(
    a_full_heap_falls_back_to_the_system_allocator,
    full_heap_body,
    "small",
    None,
    120
);

#[test]
#[ignore = "run with the heap installed by a_full_heap_falls_back_to_the_system_allocator"]
fn full_heap_body() {
    if !in_isolation() {
        return;
    }
    deadline(120, || {
        let before = stats();
        // 8 × 48 MiB into a 256 MiB heap: five fit, three go to the system
        // allocator.
        let vs: Vec<Vec<u64>> = (0..8).map(|i| pattern(6 << 20, i + 10)).collect();
        let inside = vs.iter().filter(|v| in_heap(v.as_ptr())).count();
        assert_eq!(inside, 5, "{:?}", stats());
        let s = stats();
        assert_eq!(s.fallbacks - before.fallbacks, 3, "{s:?}");
        for (i, v) in vs.iter().enumerate() {
            check_pattern(v, i as u64 + 10);
        }
        // Growing a heap vector when the heap is full moves it out.
        let mut grown = pattern(4 << 20, 77);
        assert!(
            !in_heap(grown.as_ptr()),
            "no room left: 32 MiB from the system"
        );
        drop(vs);
        let mut in_heap_now = pattern(1 << 20, 78);
        assert!(in_heap(in_heap_now.as_ptr()), "room again once freed");
        in_heap_now.extend_from_slice(&grown);
        check_pattern(&in_heap_now[..1 << 20], 78);
        check_pattern(&in_heap_now[1 << 20..], 77);
        grown.truncate(10);
        grown.shrink_to_fit();
        check_pattern(&grown, 77);
        let s = stats();
        assert!(s.in_use <= s.capacity);
    });
}

// A child the user forks.

isolated_test!(
    a_forked_child_allocates_and_frees_apart_from_its_parent,
    forked_child_body,
    "small",
    None,
    60
);

#[test]
#[ignore = "run with the heap installed by a_forked_child_allocates_and_frees_apart_from_its_parent"]
fn forked_child_body() {
    if !in_isolation() {
        return;
    }
    deadline(60, || {
        let mut a = pattern(1 << 20, 5); // 8 MiB
        let b = pattern(4 << 20, 6); // 32 MiB: freeing it would punch pages
        let c = pattern(1 << 17, 7); // 1 MiB
        let d = pattern(1 << 17, 8);
        for v in [&a, &b, &c, &d] {
            assert!(in_heap(v.as_ptr()));
        }
        let before = stats();
        let file_before = heap_file_bytes();
        let b_addr = b.as_ptr() as usize;

        let code = in_forked_child(|| {
            // The child owns bitwise copies of the parent's vectors: the
            // parent's own never drop in the child, which leaves with
            // `_exit`.
            // SAFETY: as above: each copy is the only owner in this process.
            let (mut a, b, c, d) = unsafe {
                (
                    std::ptr::read(&a),
                    std::ptr::read(&b),
                    std::ptr::read(&c),
                    std::ptr::read(&d),
                )
            };
            let mut ok = true;
            // The child is not the heap's owner.
            let s = stats();
            ok &= !s.active && s.in_use == 0;
            ok &= heap().trim() == 0;
            // Its large allocations come from the system allocator.
            let mine = pattern(2 << 20, 9);
            ok &= !in_heap(mine.as_ptr());
            check_pattern(&mine, 9);
            // It reads its inherited heap data.
            check_pattern(&a, 5);
            // Its writes stay private.
            a[0] = 999;
            a[(1 << 20) - 1] = 999;
            // Freeing inherited blocks (32 MiB, past the warm bound) frees
            // and punches nothing.
            drop(b);
            drop(a);
            // Growing an inherited heap vector copies it to the system
            // allocator and leaves the owner's block alone.
            let mut c = c;
            c.extend_from_slice(&pattern(1 << 20, 7)[1 << 17..]);
            ok &= !in_heap(c.as_ptr());
            check_pattern(&c, 7);
            drop(c);
            // So does shrinking one below the threshold.
            let mut d = d;
            d.truncate(10);
            d.shrink_to_fit();
            ok &= !in_heap(d.as_ptr());
            check_pattern(&d, 8);
            ok
        });
        assert_eq!(code, 0, "the child's checks");
        // The parent's data and heap are as they were.
        check_pattern(&a, 5);
        check_pattern(&b, 6);
        check_pattern(&c, 7);
        check_pattern(&d, 8);
        let after = stats();
        assert_eq!((after.in_use, after.warm), (before.in_use, before.warm));
        assert_eq!(heap_file_bytes(), file_before, "no page punched or added");
        drop(b);
        let e = pattern(4 << 20, 10);
        assert_eq!(
            e.as_ptr() as usize,
            b_addr,
            "the parent reuses its freed block"
        );
        a[0] = 1;
        assert_eq!(a[0], 1);
        check_pattern(&e, 10);
    });
}

// Memory is returned.

isolated_test!(
    ten_thousand_cycles_leave_at_most_the_warm_bound,
    cycles_body,
    "small",
    None,
    240
);

#[test]
#[ignore = "run with the heap installed by ten_thousand_cycles_leave_at_most_the_warm_bound"]
fn cycles_body() {
    if !in_isolation() {
        return;
    }
    deadline(240, || {
        let base = stats();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
        let check = |v: &Vec<u8>, tag: u8| {
            let n = v.len();
            for i in [0, n / 3, n / 2, n - 1] {
                assert_eq!(v[i], tag, "byte {i} of {n}");
            }
        };
        let (mut large, mut heap_blocks) = (0, 0);
        for round in 0..10_000u32 {
            if live.len() < 16 && (live.is_empty() || rng.below(2) == 0) {
                // Mixed sizes: small, just under and over the threshold, up
                // to 8 MiB.
                let size = match rng.below(8) {
                    0 => 1 + rng.below(4096) as usize,
                    1 => (64 << 10) - 1 - rng.below(100) as usize,
                    2..=5 => (64 << 10) + rng.below(1 << 20) as usize,
                    _ => (1 << 20) + rng.below(7 << 20) as usize,
                };
                let tag = (round % 251) as u8;
                let v = vec![tag; size];
                if size >= 64 << 10 {
                    large += 1;
                    heap_blocks += usize::from(in_heap(v.as_ptr()));
                }
                check(&v, tag);
                live.push((v, tag));
            } else if rng.below(4) == 0 {
                // Resize one: across the threshold, or within the heap.
                let i = rng.below(live.len() as u64) as usize;
                let (v, tag) = &mut live[i];
                let new = match rng.below(3) {
                    0 => 1 + rng.below(60 << 10) as usize,
                    _ => (64 << 10) + rng.below(4 << 20) as usize,
                };
                v.resize(new, *tag);
                v.shrink_to_fit();
                check(v, *tag);
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let (v, tag) = live.swap_remove(i);
                check(&v, tag);
            }
        }
        assert!(
            heap_blocks * 10 >= large * 9,
            "the heap served the large ones: {heap_blocks} of {large}"
        );
        drop(live);
        let s = stats();
        assert_eq!(s.in_use, base.in_use, "everything freed: {s:?}");
        assert!(s.warm <= 16 << 20, "{s:?}");
        let held = heap_file_bytes();
        assert!(
            held <= (s.in_use + (16 << 20)) as u64,
            "the memfd holds {held} bytes: at most the blocks in use ({}) and the warm bound",
            s.in_use
        );
        println!("{large} large allocations, {heap_blocks} from the heap; {s:?}");
    });
}

// Fragmentation.

isolated_test!(
    a_heap_freed_in_warm_and_cold_pieces_still_serves_a_large_block,
    fragmented_body,
    "small",
    None,
    120
);

#[test]
#[ignore = "run with the heap installed by a_heap_freed_in_warm_and_cold_pieces_still_serves_a_large_block"]
fn fragmented_body() {
    if !in_isolation() {
        return;
    }
    deadline(120, || {
        heap().trim();
        // Fill the heap with 64 KiB blocks (16 pages each).
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(8192);
        loop {
            let v = vec![1u8; 64 << 10];
            if !in_heap(v.as_ptr()) {
                break;
            }
            blocks.push(v);
        }
        assert!(
            blocks.len() > 3000,
            "{} blocks: {:?}",
            blocks.len(),
            stats()
        );
        blocks.sort_unstable_by_key(|v| v.as_ptr() as usize);
        // One block in sixteen first: 256 of them fill the 16 MiB warm
        // bound. Then all the others, in address order: each one beyond the
        // bound is punched, and goes cold between two warm ones.
        let mut rest = Vec::with_capacity(blocks.len());
        for (i, v) in blocks.into_iter().enumerate() {
            if i % 16 != 0 {
                rest.push(v);
            }
        }
        drop(rest);
        let before = stats();
        assert!(before.warm > 0 && before.in_use < 1 << 20, "{before:?}");
        // The heap is empty but for a few pages: 64 MiB fit in it.
        let big = vec![2u8; 64 << 20];
        let after = stats();
        assert!(in_heap(big.as_ptr()), "{before:?} then {after:?}");
        assert_eq!(after.fallbacks, before.fallbacks);
        assert!(big.iter().all(|&b| b == 2));
    });
}

// Pages the kernel would not give back.

isolated_test!(
    zeroed_blocks_read_zero_where_hole_punching_is_refused,
    punch_refused_body,
    "small",
    None,
    60
);

/// Makes every `fallocate` that punches a hole fail with `EOPNOTSUPP`, in
/// every thread of this process (a seccomp filter, as a sandbox may have).
/// Returns `false` where it cannot be installed.
fn refuse_hole_punching() -> bool {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    const PUNCH_HOLE: u32 = 2;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    // `struct seccomp_data`: the call's number at 0, the architecture at
    // 4, the arguments from 16 (`fallocate`'s mode is the second).
    let filter = [
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, ALLOW),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 3, libc::SYS_fallocate as u32),
        op(LD_W_ABS, 0, 0, 24),
        op(JSET_K, 0, 1, PUNCH_HOLE),
        op(RET_K, 0, 0, ERRNO | libc::EOPNOTSUPP as u32),
        op(RET_K, 0, 0, ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `filter`, which outlives the calls; the
    // filter only makes one kind of `fallocate` fail.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::syscall(libc::SYS_seccomp, 1, 1, &raw const prog) == 0
    }
}

#[test]
#[ignore = "run with the heap installed by zeroed_blocks_read_zero_where_hole_punching_is_refused"]
fn punch_refused_body() {
    if !in_isolation() {
        return;
    }
    if !refuse_hole_punching() {
        println!("no seccomp filter here: nothing to check");
        return;
    }
    deadline(60, || {
        heap().trim();
        // 32 MiB of dirty pages, freed and given back: the punch fails, so
        // the file keeps them, dirty.
        let dirty = vec![0xabu8; 32 << 20];
        let at = dirty.as_ptr();
        drop(dirty);
        assert_eq!(heap().trim(), 0, "the kernel took nothing back");
        assert_eq!(stats().warm, 0);
        let clean = vec![0u8; 32 << 20];
        assert_eq!(clean.as_ptr(), at, "the same pages");
        assert!(
            clean.iter().all(|&b| b == 0),
            "vec![0; n] reads {:#x}",
            clean.iter().find(|&&b| b != 0).unwrap()
        );
        // `vec![None; n]` of boxes is zeroed memory too.
        drop(clean);
        let dirty = vec![0x5au8; 32 << 20];
        drop(dirty);
        heap().trim();
        let boxes: Vec<Option<Box<u64>>> = vec![None; 4 << 20];
        assert!(boxes.iter().all(Option::is_none));
    });
}

// realloc across the threshold.

isolated_test!(
    realloc_crosses_the_threshold_both_ways,
    realloc_body,
    "small",
    None,
    60
);

#[test]
#[ignore = "run with the heap installed by realloc_crosses_the_threshold_both_ways"]
fn realloc_body() {
    if !in_isolation() {
        return;
    }
    deadline(60, || {
        // System -> heap, by pushing.
        let mut v: Vec<u8> = Vec::new();
        let mut moved_in = false;
        for i in 0..(1usize << 20) {
            v.push((i % 251) as u8);
            moved_in |= in_heap(v.as_ptr());
        }
        assert!(moved_in && in_heap(v.as_ptr()));
        assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

        // Heap -> heap, shrinking in place.
        let at = v.as_ptr();
        let in_use = stats().in_use;
        v.truncate(300 << 10);
        v.shrink_to_fit();
        assert_eq!(v.as_ptr(), at, "shrunk in place");
        assert!(stats().in_use < in_use);

        // Heap -> system.
        v.truncate(1000);
        v.shrink_to_fit();
        assert!(!in_heap(v.as_ptr()));
        assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

        // Heap -> heap, growing in place into free pages after the block
        // (after `trim`, everything free is one cold span).
        heap().trim();
        let tail = pattern(112 << 10, 21);
        let mut g = pattern(16 << 10, 21);
        let at = g.as_ptr();
        g.reserve_exact(96 << 10);
        assert_eq!(g.as_ptr(), at, "grown in place");
        g.extend_from_slice(&tail[16 << 10..]);
        check_pattern(&g, 21);
        drop(tail);

        // Heap -> heap, moving: a block right after it is in the way.
        let mut h = pattern(16 << 10, 22);
        let fence = pattern(16 << 10, 23);
        assert_eq!(
            fence.as_ptr() as usize,
            h.as_ptr() as usize + (128 << 10),
            "the next block is carved right after it"
        );
        let at = h.as_ptr();
        h.extend_from_slice(&pattern(64 << 10, 22)[16 << 10..]);
        assert_ne!(h.as_ptr(), at, "moved");
        assert!(in_heap(h.as_ptr()));
        check_pattern(&h, 22);
        check_pattern(&fence, 23);

        // std::alloc::realloc directly, up and down across the threshold.
        let layout = Layout::from_size_align(1000, 64).unwrap();
        // SAFETY: non-zero sizes; each pointer is reallocated or freed with
        // the layout it has.
        unsafe {
            let p = alloc(layout);
            p.write_bytes(5, 1000);
            let q = std::alloc::realloc(p, layout, 1 << 20);
            assert!(in_heap(q) && q as usize % 64 == 0);
            assert!((0..1000).all(|i| *q.add(i) == 5));
            q.add(1000).write_bytes(6, (1 << 20) - 1000);
            let big = Layout::from_size_align(1 << 20, 64).unwrap();
            let r = std::alloc::realloc(q, big, 500);
            assert!(!in_heap(r));
            assert!((0..500).all(|i| *r.add(i) == 5));
            dealloc(r, Layout::from_size_align(500, 64).unwrap());
        }
    });
}

// Descriptors and mappings.

isolated_test!(
    no_descriptor_or_mapping_leaks,
    leaks_body,
    "small",
    None,
    120
);

#[test]
#[ignore = "run with the heap installed by no_descriptor_or_mapping_leaks"]
fn leaks_body() {
    if !in_isolation() {
        return;
    }
    deadline(120, || {
        let warm_up = pattern(1 << 20, 1);
        drop(warm_up);
        let fds = common::open_fds();
        assert_eq!(heap_fds().len(), 1);
        let (range, lines) = heap_mapping().unwrap();
        let mut rng = Rng(7);
        for round in 0..2000 {
            let mut v = vec![round as u8; (64 << 10) + rng.below(2 << 20) as usize];
            v.resize(v.len() * 2, 0);
            if round % 100 == 0 {
                heap().trim();
            }
            if round % 500 == 0 {
                let pool = Pool::new(2).unwrap();
                let xs: Vec<u32> = (0..100_000).collect();
                assert_eq!(pool.map(&xs, |x| x + 1).unwrap()[99_999], 100_000);
            }
        }
        assert_eq!(common::open_fds(), fds, "descriptors");
        assert_eq!(heap_fds().len(), 1);
        // The heap's mapping, and the one writable alias the first pool
        // mapped (for its workers' outputs), however many pools came and
        // went.
        assert_eq!(
            heap_mapping().unwrap(),
            (range, lines + 1),
            "the heap's mapping and its alias"
        );
        // The memfd is close-on-exec: a program run from here does not get
        // it.
        let out = Command::new("ls")
            .args(["-l", "/proc/self/fd/"])
            .output()
            .expect("run ls");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(!listing.contains("heap.shmpool"), "{listing}");
    });
}

// Threads.

isolated_test!(
    threads_share_the_heap_safely,
    threads_body,
    "small",
    None,
    240
);

#[test]
#[ignore = "run with the heap installed by threads_share_the_heap_safely"]
fn threads_body() {
    if !in_isolation() {
        return;
    }
    deadline(240, || {
        let base = stats();
        std::thread::scope(|s| {
            for t in 0..8u64 {
                s.spawn(move || {
                    let mut rng = Rng(0x1000 + t);
                    let mut live: Vec<(Vec<u64>, u64)> = Vec::new();
                    for round in 0..1000u64 {
                        let seed = t << 32 | round;
                        match rng.below(4) {
                            0 | 1 if live.len() < 8 => {
                                let n = 512 + rng.below(96 << 10) as usize;
                                live.push((pattern(n, seed), seed));
                            }
                            2 if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                let (v, s) = &mut live[i];
                                let n = v.len();
                                let more = pattern(n + rng.below(32 << 10) as usize, *s);
                                v.extend_from_slice(&more[n..]);
                                check_pattern(v, *s);
                            }
                            _ if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                let (v, s) = live.swap_remove(i);
                                check_pattern(&v, s);
                            }
                            _ => {}
                        }
                    }
                    for (v, s) in live {
                        check_pattern(&v, s);
                    }
                });
            }
        });
        let s = stats();
        assert_eq!(s.in_use, base.in_use, "{s:?}");
        assert!(s.allocations - base.allocations > 2000, "{s:?}");
        assert!(s.warm <= 16 << 20);
    });
}

isolated_test!(
    threads_and_forks_keep_every_block_whole,
    raw_churn_body,
    "small",
    None,
    240
);

/// Checks that `p` holds `len` bytes of `tag` (sampled, with both ends).
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
unsafe fn holds_tag(p: *const u8, len: usize, tag: u8) -> bool {
    let step = (len / 37).max(1);
    // SAFETY: the caller's contract; every index is below `len`.
    unsafe { (0..len).step_by(step).all(|i| *p.add(i) == tag) && *p.add(len - 1) == tag }
}

#[test]
#[ignore = "run with the heap installed by threads_and_forks_keep_every_block_whole"]
fn raw_churn_body() {
    if !in_isolation() {
        return;
    }
    deadline(240, || {
        let base = stats();
        let sizes = [
            4096,
            (64 << 10) - 1,
            64 << 10,
            (64 << 10) + 1,
            (1 << 20) + 5,
            3 << 20,
        ];
        let aligns = [8usize, 4096, 64 << 10, 2 << 20];
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let stop = &stop;
                s.spawn(move || {
                    let mut rng = Rng(0x77 + t);
                    let mut live: Vec<(usize, Layout, u8)> = Vec::with_capacity(16);
                    let mut round = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || round < 2000 {
                        round += 1;
                        let tag = (round % 250) as u8 + 1;
                        let op = rng.below(10);
                        // SAFETY: non-zero sizes; every block is used within
                        // its layout, and freed or reallocated once with it.
                        unsafe {
                            if (op < 4 && live.len() < 12) || live.is_empty() {
                                let size = sizes[rng.below(6) as usize];
                                let align = aligns[rng.below(4) as usize];
                                let l = Layout::from_size_align(size, align).unwrap();
                                let p = if op % 2 == 0 {
                                    let p = std::alloc::alloc_zeroed(l);
                                    assert!(!p.is_null());
                                    assert!(holds_tag(p, size, 0), "zeroed {size} {align}");
                                    p
                                } else {
                                    std::alloc::alloc(l)
                                };
                                assert!(!p.is_null());
                                assert_eq!(p as usize % align, 0);
                                p.write_bytes(tag, size);
                                live.push((p as usize, l, tag));
                            } else if op < 7 {
                                let i = rng.below(live.len() as u64) as usize;
                                let (p, l, tag) = live[i];
                                let new = sizes[rng.below(6) as usize];
                                assert!(holds_tag(p as *const u8, l.size(), tag));
                                let q = std::alloc::realloc(p as *mut u8, l, new);
                                assert!(!q.is_null());
                                assert_eq!(q as usize % l.align(), 0);
                                let keep = l.size().min(new);
                                assert!(holds_tag(q, keep, tag), "realloc {} -> {new}", l.size());
                                q.write_bytes(tag, new);
                                live[i] = (
                                    q as usize,
                                    Layout::from_size_align(new, l.align()).unwrap(),
                                    tag,
                                );
                            } else {
                                let i = rng.below(live.len() as u64) as usize;
                                let (p, l, tag) = live.swap_remove(i);
                                assert!(holds_tag(p as *const u8, l.size(), tag));
                                dealloc(p as *mut u8, l);
                            }
                        }
                        if round % 500 == 0 {
                            heap().trim();
                        }
                    }
                    for (p, l, tag) in live {
                        // SAFETY: as above.
                        unsafe {
                            assert!(holds_tag(p as *const u8, l.size(), tag));
                            dealloc(p as *mut u8, l);
                        }
                    }
                });
            }
            // Children forked while the threads churn: they allocate, grow
            // and free their own blocks and inherited ones.
            let keep = pattern(1 << 18, 41);
            assert!(in_heap(keep.as_ptr()));
            for _ in 0..40 {
                let code = in_forked_child(|| {
                    let mut mine = pattern(1 << 18, 42);
                    let ok = !in_heap(mine.as_ptr());
                    mine.extend_from_slice(&keep);
                    // SAFETY: this copy is the only owner in this process.
                    let mut inherited = unsafe { std::ptr::read(&keep) };
                    inherited.extend_from_slice(&pattern(1 << 18, 41));
                    check_pattern(&inherited[..1 << 18], 41);
                    drop(inherited);
                    ok && mine[..1 << 18] == pattern(1 << 18, 42)[..]
                });
                assert_eq!(code, 0);
                // And a program run the usual way (its child forks, or not).
                let status = Command::new("true").stdin(Stdio::null()).status();
                assert!(status.expect("run true").success());
            }
            check_pattern(&keep, 41);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let s = stats();
        assert_eq!(s.in_use, base.in_use, "{s:?}");
        assert!(s.warm <= 16 << 20, "{s:?}");
    });
}

// Address-space limits.

/// Prints the address space this process maps, for calibrating limits.
fn mapped() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

/// Large allocations work, whatever serves them (24 MiB at most, to fit
/// under the limits below).
fn allocations_work() {
    let vs: Vec<Vec<u64>> = (0..4).map(|i| pattern(512 << 10, i)).collect();
    for (i, v) in vs.iter().enumerate() {
        check_pattern(v, i as u64);
    }
    let mut grow = Vec::new();
    for i in 0..(1u64 << 20) {
        grow.push(i);
    }
    assert!(grow.iter().enumerate().all(|(i, &x)| x == i as u64));
}

#[test]
fn an_address_space_limit_too_small_for_the_heap_leaves_it_off() {
    // 256 MiB asked, under a 200 MiB limit: the reservation fails.
    let out = run_with_heap("limit_off_body", "small", Some(200 << 20), 60);
    assert!(out.contains("heap off"), "{out}");
}

#[test]
#[ignore = "run under a limit by an_address_space_limit_too_small_for_the_heap_leaves_it_off"]
fn limit_off_body() {
    if !in_isolation() {
        return;
    }
    let s = stats();
    assert!(!s.active, "{s:?}");
    assert_eq!(s.capacity, 0);
    assert!(heap_mapping().is_none() && heap_fds().is_empty());
    allocations_work();
    println!("heap off; {} MiB mapped", mapped() >> 20);
}

#[test]
fn the_default_capacity_respects_the_address_space_limit() {
    // A 1 GiB limit: the default heap takes a quarter of what is left.
    let out = run_with_heap("limit_default_body", "1", Some(1 << 30), 60);
    assert!(out.contains("heap on"), "{out}");
    // A limit that leaves less than 4 × 32 MiB: the default heap stays off.
    let out = run_with_heap("limit_default_body", "1", Some(120 << 20), 60);
    assert!(out.contains("heap off"), "{out}");
}

#[test]
#[ignore = "run under limits by the_default_capacity_respects_the_address_space_limit"]
fn limit_default_body() {
    if !in_isolation() {
        return;
    }
    let s = stats();
    if s.active {
        assert!(s.capacity <= 256 << 20, "a quarter of at most 1 GiB: {s:?}");
        assert!(s.capacity >= 32 << 20);
        allocations_work();
        println!(
            "heap on: {} MiB, {} fallbacks",
            s.capacity >> 20,
            stats().fallbacks
        );
    } else {
        allocations_work();
        println!("heap off; {} MiB mapped", mapped() >> 20);
    }
}

#[test]
fn a_file_size_limit_below_the_heap_never_kills_the_process() {
    // Under `ulimit -f`, sizing a file past the limit is refused, and the
    // kernel sends the process `SIGXFSZ`, which ends it. A configured
    // capacity above the limit leaves the heap off...
    let fsize = |bytes| Some((libc::RLIMIT_FSIZE, bytes));
    let out = run_with_heap_under("file_size_limit_body", "small", fsize(64 << 20), 60);
    assert!(out.contains("heap off"), "{out}");
    // ...and the default capacity stays within the limit.
    let out = run_with_heap_under("file_size_limit_body", "1", fsize(128 << 20), 60);
    assert!(out.contains("heap on"), "{out}");
}

#[test]
#[ignore = "run under limits by a_file_size_limit_below_the_heap_never_kills_the_process"]
fn file_size_limit_body() {
    if !in_isolation() {
        return;
    }
    let s = stats();
    allocations_work();
    // A pool's region is one file too: past the limit, it is an error, not
    // the end of the process.
    match Pool::new(1) {
        Ok(pool) => assert_eq!(pool.map(&[1u32, 2], |x| x + 1).unwrap()[..], [2, 3]),
        Err(e) => println!("no pool: {e}"),
    }
    if s.active {
        assert!(s.capacity <= 128 << 20, "{s:?}");
        println!("heap on: {} MiB", s.capacity >> 20);
    } else {
        assert_eq!(s.capacity, 0);
        println!("heap off");
    }
}

// The pool, with the heap installed.

static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
static SCRATCH: Mutex<Vec<u64>> = Mutex::new(Vec::new());

isolated_test!(a_pool_runs_beside_the_heap, pool_body, "small", None, 120);

#[test]
#[ignore = "run with the heap installed by a_pool_runs_beside_the_heap"]
fn pool_body() {
    if !in_isolation() {
        return;
    }
    deadline(120, || {
        let table = TABLE.get_or_init(|| pattern(1 << 20, 31));
        assert!(in_heap(table.as_ptr()));
        *SCRATCH.lock().unwrap() = pattern(1 << 18, 32);
        let pool = Pool::new(2).unwrap();
        // Tasks read heap data the parent built before the pool, live.
        let idx: Vec<u64> = (0..1000).map(|i| i * 1000).collect();
        let got = pool
            .map(&idx, |i| TABLE.get().map_or(u64::MAX, |t| t[i as usize]))
            .unwrap();
        assert_eq!(
            got,
            idx.iter().map(|&i| table[i as usize]).collect::<Vec<_>>()
        );
        // A task that writes heap data through a static fails with a typed
        // error (workers see the heap read-only): the parent's data is
        // unchanged.
        let wrote = pool.map(&[0u64, 1, 2, 3], |i| {
            let mut s = SCRATCH
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s[i as usize] = 7777;
            s[i as usize]
        });
        assert!(
            matches!(wrote, Err(shmpool::Error::HeapWrite { .. })),
            "{wrote:?}"
        );
        check_pattern(&SCRATCH.lock().unwrap(), 32);
        // Maps over heap vectors give the right results.
        let xs = pattern(1 << 20, 33);
        assert!(in_heap(xs.as_ptr()));
        let ys = pool.map(&xs, |x| x.wrapping_mul(3)).unwrap();
        assert!(ys.iter().zip(&xs).all(|(y, x)| *y == x.wrapping_mul(3)));
        pool.close();
        pool.join().unwrap();
    });
}

/// The suite's run with `SHMPOOL_TEST_HEAP=1` really has the heap: this
/// binary allocates from it whenever the variable is set.
#[test]
fn the_environment_chooses_the_allocator() {
    let big = vec![1u8; 1 << 20];
    match std::env::var(TEST_HEAP) {
        Ok(v) if !v.is_empty() && v != "0" => {
            assert!(stats().active, "{:?}", stats());
            assert!(in_heap(big.as_ptr()));
        }
        _ => assert!(common::heap().is_none() && heap_mapping().is_none()),
    }
}
