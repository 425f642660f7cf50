//! The shared heap's targets, measured in one process and one run, with
//! each pair interleaved (system, heap, system, heap, ...) so that drift on
//! a shared machine hits both sides alike. Prints medians and ratios.
//!
//! - large allocations (1-64 MiB, allocate + fill + free), heap / system;
//! - small allocations (64 × 16, 256 or 4096 bytes, then 64 frees), heap /
//!   system: the heap's routing costs one compare;
//! - 64 MiB filled warm, fresh from the heap, and fresh from the system;
//! - the copy-on-write tax: one byte written per page of 1 GiB, before
//!   `Pool::new(4)` and right after it, with the data in the heap and in
//!   system memory.
//!
//! `cargo bench --bench heap_compare`. Compare ratios within one run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use shmpool::{Pool, SharedHeap};

#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() };

fn fill_cycle<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: a non-zero size; the block is freed with its layout.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(1, layout.size());
        black_box(p);
        a.dealloc(p, layout);
    }
}

fn small_batch<A: GlobalAlloc>(a: &A, layout: Layout) {
    let mut ps = [std::ptr::null_mut::<u8>(); 64];
    // SAFETY: non-zero sizes; each block is freed once with its layout.
    unsafe {
        for p in &mut ps {
            *p = a.alloc(layout);
            p.write(1);
        }
        for p in black_box(ps) {
            a.dealloc(p, layout);
        }
    }
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Interleaved medians of `a` and `b` over `reps` rounds (after one
/// unmeasured round each).
fn pair(reps: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..reps {
        // Alternate which goes first.
        if i % 2 == 0 {
            ta.push(time(&mut a));
            tb.push(time(&mut b));
        } else {
            tb.push(time(&mut b));
            ta.push(time(&mut a));
        }
    }
    (median(ta), median(tb))
}

fn row(name: &str, system: Duration, heap: Duration) {
    println!(
        "{name:<34} system {:>11.3?}  heap {:>11.3?}  heap/system {:.3}",
        system,
        heap,
        heap.as_secs_f64() / system.as_secs_f64()
    );
}

/// Writes one byte per page of `p..p + len`, and returns how long it took.
fn touch_pages(p: *mut u8, len: usize, value: u8) -> Duration {
    time(|| {
        for off in (0..len).step_by(4096) {
            // SAFETY: inside the block the caller owns.
            unsafe { p.add(off).write_volatile(value) };
        }
    })
}

/// The write pass before and right after `Pool::new(4)` over 1 GiB from
/// `a`: `(before, after)`.
fn cow_tax<A: GlobalAlloc>(a: &A) -> (Duration, Duration) {
    let len = 1usize << 30;
    let layout = Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: a non-zero size; freed below with the same layout.
    let p = unsafe { a.alloc(layout) };
    assert!(!p.is_null());
    // Every page touched once, so both passes write resident pages.
    touch_pages(p, len, 1);
    let before = touch_pages(p, len, 2);
    let pool = Pool::new(4).unwrap();
    let after = touch_pages(p, len, 3);
    drop(pool);
    // SAFETY: allocated above with this layout.
    unsafe { a.dealloc(p, layout) };
    (before, after)
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        println!("--- run {run}: {:?}", HEAP.stats());
        for kib in [64usize, 256] {
            // At and just above the threshold: 100 blocks per round.
            let layout = Layout::from_size_align(kib << 10, 64).unwrap();
            let (s, h) = pair(
                31,
                || (0..100).for_each(|_| fill_cycle(&System, layout)),
                || (0..100).for_each(|_| fill_cycle(&HEAP, layout)),
            );
            row(&format!("{kib} KiB alloc+fill+free x100"), s, h);
        }
        for mib in [1usize, 4, 16, 64] {
            let layout = Layout::from_size_align(mib << 20, 64).unwrap();
            let reps = if mib == 64 { 9 } else { 31 };
            let (s, h) = pair(
                reps,
                || fill_cycle(&System, layout),
                || fill_cycle(&HEAP, layout),
            );
            row(&format!("large {mib} MiB alloc+fill+free"), s, h);
        }
        // Small requests: many short interleaved rounds. The first row
        // puts the system allocator against itself: the noise floor of
        // this measurement in this run.
        let small_rounds = |a: &dyn Fn(), b: &dyn Fn()| pair(201, a, b);
        let layout = Layout::from_size_align(256, 8).unwrap();
        let batches = 200;
        let (s, h) = small_rounds(
            &|| (0..batches).for_each(|_| small_batch(black_box(&System), layout)),
            &|| (0..batches).for_each(|_| small_batch(black_box(&System), layout)),
        );
        row("small 256 B, system against itself", s, h);
        for bytes in [16usize, 256, 4096] {
            let layout = Layout::from_size_align(bytes, 8).unwrap();
            let (s, h) = small_rounds(
                &|| (0..batches).for_each(|_| small_batch(black_box(&System), layout)),
                &|| (0..batches).for_each(|_| small_batch(black_box(&HEAP), layout)),
            );
            row(
                &format!("small {bytes} B x 12.8k (64 alloc, 64 free)"),
                s,
                h,
            );
        }
        let layout = Layout::from_size_align(64 << 20, 64).unwrap();
        let (mut warm, mut fresh, mut anon) = (Vec::new(), Vec::new(), Vec::new());
        fill_cycle(&HEAP, layout);
        for _ in 0..7 {
            warm.push(time(|| fill_cycle(&HEAP, layout)));
            HEAP.trim();
            fresh.push(time(|| fill_cycle(&HEAP, layout)));
            anon.push(time(|| fill_cycle(&System, layout)));
        }
        let (warm, fresh, anon) = (median(warm), median(fresh), median(anon));
        println!(
            "64 MiB fill: heap warm {warm:.3?}, heap fresh {fresh:.3?}, system fresh {anon:.3?} \
             (fresh/warm {:.1}, heap fresh/system fresh {:.2})",
            fresh.as_secs_f64() / warm.as_secs_f64(),
            fresh.as_secs_f64() / anon.as_secs_f64()
        );
        let (hb, ha) = cow_tax(&HEAP);
        let (sb, sa) = cow_tax(&System);
        println!(
            "COW tax, 1 GiB, a byte per page: heap {hb:.3?} before Pool::new, {ha:.3?} after \
             ({:.2}x); system {sb:.3?} before, {sa:.3?} after ({:.1}x)",
            ha.as_secs_f64() / hb.as_secs_f64(),
            sa.as_secs_f64() / sb.as_secs_f64()
        );
    }
}
