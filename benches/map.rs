//! serial, rayon and shmpool side by side, on the same input, in one run.
//!
//! - `seed`: the seed end to end: a pool of 4, squares of 0..100, then the
//!   pool torn down (rayon: a 4-thread `ThreadPool` built and dropped).
//! - `square_16m`: `x * x` over 16 Mi `f64` (memory-bound). shmpool reads a
//!   `ShmVec` input in place and writes a fresh `ShmVec`; `shmpool_staged`
//!   maps a plain `Vec`, which is copied into shared memory first.
//! - `square_16m_reused`: the same into a buffer that is reused: in place,
//!   into a reused `Vec`, `map_into` a reused `ShmVec`, `map_in_place`.
//! - `apply_async_100k`: 100k single tasks submitted one by one, then
//!   collected (rayon: a `scope` with a `spawn` per task).
//! - `heavy_1m`: 50 chained `sin` over 1 Mi `f64` (compute-bound).
//! - `round_trip_16`: a map of 16 elements: dispatch and wake-up latency.
//! - `scaling`: `x * x` at sizes 1e2 to 1e8, for the crossover points.
//!
//! Compare ratios within one run, not absolute times across runs.
//! `cargo bench --bench map`; `cargo bench --bench map -- heavy` for one group.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
use shmpool::Pool;

fn square(x: f64) -> f64 {
    x * x
}

fn heavy(mut x: f64) -> f64 {
    for _ in 0..50 {
        x = x.sin();
    }
    x
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn square_16m(c: &mut Criterion) {
    let n = 16 << 20;
    let pool = Pool::new(workers()).unwrap();
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    let shared = pool.to_shm(&data).unwrap();
    let mut g = c.benchmark_group("square_16m");
    g.throughput(Throughput::Bytes((n * 16) as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    g.bench_function("serial", |b| {
        b.iter(|| black_box(data.iter().map(|&x| square(x)).collect::<Vec<f64>>()))
    });
    g.bench_function("rayon", |b| {
        b.iter(|| black_box(data.par_iter().map(|&x| square(x)).collect::<Vec<f64>>()))
    });
    g.bench_function("shmpool", |b| {
        b.iter(|| black_box(pool.map(&shared, square).unwrap()))
    });
    g.bench_function("shmpool_staged", |b| {
        b.iter(|| black_box(pool.map(&data, square).unwrap()))
    });
    g.finish();
}

fn square_16m_reused(c: &mut Criterion) {
    let n = 16 << 20;
    let pool = Pool::new(workers()).unwrap();
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    let shared = pool.to_shm(&data).unwrap();
    let mut out = pool.alloc_zeroed::<f64>(n).unwrap();
    let mut shared_in_place = pool.to_shm(&data).unwrap();
    let mut in_place = data.clone();
    let mut reused = vec![0.0f64; n];
    let mut g = c.benchmark_group("square_16m_reused");
    g.throughput(Throughput::Bytes((n * 16) as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    // Repeated squaring runs to 0 or infinity, neither of which is slow.
    g.bench_function("serial_in_place", |b| {
        b.iter(|| in_place.iter_mut().for_each(|x| *x = square(*x)))
    });
    g.bench_function("rayon_in_place", |b| {
        b.iter(|| {
            in_place
                .par_chunks_mut(1 << 16)
                .for_each(|c| c.iter_mut().for_each(|x| *x = square(*x)))
        })
    });
    g.bench_function("rayon_into_vec", |b| {
        b.iter(|| {
            reused
                .par_chunks_mut(1 << 16)
                .zip(data.par_chunks(1 << 16))
                .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = square(x)))
        })
    });
    g.bench_function("shmpool_map_into", |b| {
        b.iter(|| pool.map_into(&shared, &mut out, square).unwrap())
    });
    g.bench_function("shmpool_map_in_place", |b| {
        b.iter(|| pool.map_in_place(&mut shared_in_place, square).unwrap())
    });
    g.finish();
}

fn heavy_1m(c: &mut Criterion) {
    let n = 1 << 20;
    let pool = Pool::new(workers()).unwrap();
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 1e-6).collect();
    let shared = pool.to_shm(&data).unwrap();
    let mut g = c.benchmark_group("heavy_1m");
    g.throughput(Throughput::Elements(n as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    g.bench_function("serial", |b| {
        b.iter(|| black_box(data.iter().map(|&x| heavy(x)).collect::<Vec<f64>>()))
    });
    g.bench_function("rayon", |b| {
        b.iter(|| black_box(data.par_iter().map(|&x| heavy(x)).collect::<Vec<f64>>()))
    });
    g.bench_function("shmpool", |b| {
        b.iter(|| black_box(pool.map(&shared, heavy).unwrap()))
    });
    g.finish();
}

fn round_trip_16(c: &mut Criterion) {
    let pool = Pool::new(workers()).unwrap();
    let data: Vec<f64> = (0..16).map(f64::from).collect();
    let shared = pool.to_shm(&data).unwrap();
    let mut g = c.benchmark_group("round_trip_16");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("serial", |b| {
        b.iter(|| black_box(data.iter().map(|&x| square(x)).collect::<Vec<f64>>()))
    });
    g.bench_function("rayon", |b| {
        b.iter(|| black_box(data.par_iter().map(|&x| square(x)).collect::<Vec<f64>>()))
    });
    g.bench_function(BenchmarkId::new("shmpool", "shm_input"), |b| {
        b.iter(|| black_box(pool.map(&shared, square).unwrap()))
    });
    g.bench_function(BenchmarkId::new("shmpool", "apply"), |b| {
        b.iter(|| black_box(pool.apply(3.0f64, square).unwrap()))
    });
    g.finish();
}

/// The seed end to end. First of the groups: a fork copies the parent's
/// page tables, so the pools are built while this process is small.
fn seed(c: &mut Criterion) {
    let xs: Vec<i64> = (0..100).collect();
    let mut g = c.benchmark_group("seed");
    g.sample_size(50).measurement_time(Duration::from_secs(4));
    g.bench_function("serial", |b| {
        b.iter(|| black_box(xs.iter().map(|x| x * x).collect::<Vec<i64>>()))
    });
    g.bench_function("shmpool", |b| {
        b.iter(|| {
            let p = Pool::new(4).unwrap();
            let ys = p.map(&xs, |x| x * x).unwrap();
            p.close();
            p.join().unwrap();
            black_box(ys)
        })
    });
    // After shmpool: a dropped rayon pool's threads exit on their own, after
    // the drop returns (shmpool's join waits until its processes are gone).
    // Run after thousands of those, shmpool's seed took 3.2 ms, not 1.8.
    g.bench_function("rayon", |b| {
        b.iter(|| {
            let tp = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .unwrap();
            black_box(tp.install(|| xs.par_iter().map(|x| x * x).collect::<Vec<i64>>()))
        })
    });
    g.finish();
}

fn apply_async_100k(c: &mut Criterion) {
    let k = 100_000u64;
    let pool = Pool::new(workers()).unwrap();
    let mut out = vec![0u64; k as usize];
    let mut g = c.benchmark_group("apply_async_100k");
    g.throughput(Throughput::Elements(k))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    g.bench_function("serial", |b| {
        // black_box per element, or the sum is folded to a formula.
        b.iter(|| black_box((0..k).map(|x| black_box(x) * x).sum::<u64>()))
    });
    g.bench_function("rayon_spawn", |b| {
        b.iter(|| {
            rayon::scope(|s| {
                for (i, o) in out.iter_mut().enumerate() {
                    s.spawn(move |_| *o = (i as u64) * (i as u64));
                }
            });
            black_box(out.iter().sum::<u64>())
        })
    });
    g.bench_function("shmpool", |b| {
        b.iter(|| {
            let pending: Vec<_> = (0..k)
                .map(|i| pool.apply_async(i, |x| x * x).unwrap())
                .collect();
            black_box(pending.into_iter().map(|r| r.get().unwrap()).sum::<u64>())
        })
    });
    g.finish();
}

/// `x * x` at every size from 1e2 to 1e8, so the crossovers show: where
/// rayon overtakes serial code, and where shmpool does.
fn scaling(c: &mut Criterion) {
    let pool = Pool::new(workers()).unwrap();
    let mut g = c.benchmark_group("scaling");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for exp in 2..=8 {
        let n = 10usize.pow(exp);
        let data: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let shared = pool.to_shm(&data).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("serial", n), &data, |b, d| {
            b.iter(|| black_box(d.iter().map(|&x| square(x)).collect::<Vec<f64>>()))
        });
        g.bench_with_input(BenchmarkId::new("rayon", n), &data, |b, d| {
            b.iter(|| black_box(d.par_iter().map(|&x| square(x)).collect::<Vec<f64>>()))
        });
        g.bench_with_input(BenchmarkId::new("shmpool", n), &shared, |b, d| {
            b.iter(|| black_box(pool.map(d, square).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    seed,
    square_16m,
    square_16m_reused,
    heavy_1m,
    round_trip_16,
    apply_async_100k,
    scaling
);
criterion_main!(benches);
