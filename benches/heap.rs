//! The shared heap against the system allocator, side by side, in one run.
//!
//! The heap is this binary's global allocator. Both allocators are called
//! through `GlobalAlloc` directly, so each measurement times one allocator's
//! own path: the heap's routing (one compare for a small request) plus
//! whoever serves the request.
//!
//! - `heap_large`: allocate, fill and free 1, 4, 16 and 64 MiB. glibc serves
//!   up to 32 MiB from its arena once its `mmap` threshold has risen, so
//!   both reuse warm memory there; at 64 MiB glibc maps fresh pages each
//!   time, while the heap reuses its warm block.
//! - `heap_small`: 64 allocations of 16, 256 or 4096 bytes, then 64 frees
//!   (a hot loop, all below the threshold: the system allocator serves
//!   them).
//! - `heap_fill_64mib`: a 64 MiB block allocated, filled and freed: warm
//!   (reused), fresh (the heap trimmed first, outside the timing), and
//!   fresh anonymous memory from the system allocator.
//!
//! `cargo bench --bench heap`. `cargo bench --bench heap_compare` prints the
//! same ratios, interleaved in one process, and the copy-on-write tax.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shmpool::SharedHeap;

#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() };

/// Allocates `layout` from `a`, writes every byte, frees it.
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

/// 64 allocations of `layout` from `a`, each touched, then 64 frees.
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

fn large(c: &mut Criterion) {
    let mut g = c.benchmark_group("heap_large");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for mib in [1usize, 4, 16, 64] {
        let layout = Layout::from_size_align(mib << 20, 64).unwrap();
        g.throughput(Throughput::Bytes(layout.size() as u64));
        g.bench_with_input(BenchmarkId::new("system", mib), &layout, |b, &l| {
            b.iter(|| fill_cycle(black_box(&System), l))
        });
        g.bench_with_input(BenchmarkId::new("shared_heap", mib), &layout, |b, &l| {
            b.iter(|| fill_cycle(black_box(&HEAP), l))
        });
    }
    g.finish();
}

fn small(c: &mut Criterion) {
    let mut g = c.benchmark_group("heap_small");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    for bytes in [16usize, 256, 4096] {
        let layout = Layout::from_size_align(bytes, 8).unwrap();
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("system", bytes), &layout, |b, &l| {
            b.iter(|| small_batch(black_box(&System), l))
        });
        g.bench_with_input(BenchmarkId::new("shared_heap", bytes), &layout, |b, &l| {
            b.iter(|| small_batch(black_box(&HEAP), l))
        });
    }
    g.finish();
}

fn fill_64mib(c: &mut Criterion) {
    let layout = Layout::from_size_align(64 << 20, 64).unwrap();
    let mut g = c.benchmark_group("heap_fill_64mib");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Bytes(64 << 20));
    g.bench_function("warm", |b| b.iter(|| fill_cycle(&HEAP, layout)));
    g.bench_function("fresh", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                HEAP.trim();
                let t = Instant::now();
                fill_cycle(&HEAP, layout);
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("system_fresh", |b| b.iter(|| fill_cycle(&System, layout)));
    g.finish();
}

criterion_group!(benches, large, small, fill_64mib);
criterion_main!(benches);
