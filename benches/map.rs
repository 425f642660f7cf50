//! serial, rayon and shmpool side by side, on the same input, in one run.
//!
//! - `square_16m`: `x * x` over 16 Mi `f64` (memory-bound). shmpool reads a
//!   `ShmVec` input in place and writes a fresh `ShmVec`; `shmpool_staged`
//!   maps a plain `Vec`, which is copied into shared memory first.
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

criterion_group!(benches, square_16m, heavy_1m, round_trip_16, scaling);
criterion_main!(benches);
