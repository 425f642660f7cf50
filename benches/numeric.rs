//! The numeric forms against rayon (and a crossbeam-channel pipeline for the
//! streaming map), serial beside them, in one run:
//!
//! - `map_reduce/<n>`: a sum of squares of `n` `f64`, against rayon's
//!   `.map().sum()`;
//! - `map2/<n>`: saxpy over `n` `f32`, against rayon's zipped `par_iter`;
//! - `imap/<n>`: a stream of `n` `u64` through a light task, against rayon's
//!   `par_bridge` and a crossbeam-channel worker pipeline (the closest
//!   streaming analogues).
//!
//! Compare ratios within one run. `cargo bench --bench numeric`.

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
use shmpool::Pool;

fn workers() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

fn map_reduce(c: &mut Criterion) {
    let pool = Pool::new(workers()).unwrap();
    let mut g = c.benchmark_group("map_reduce");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [1_000usize, 100_000, 10_000_000] {
        let data: Vec<f64> = (0..n).map(|i| (i % 977) as f64 * 0.25).collect();
        let shared = pool.to_shm(&data).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("serial", n), &data, |b, d| {
            b.iter(|| black_box(d.iter().map(|x| x * x).sum::<f64>()))
        });
        g.bench_with_input(BenchmarkId::new("rayon", n), &data, |b, d| {
            b.iter(|| black_box(d.par_iter().map(|x| x * x).sum::<f64>()))
        });
        g.bench_with_input(BenchmarkId::new("shmpool", n), &shared, |b, d| {
            b.iter(|| black_box(pool.map_reduce(d, |x| x * x, |a, b| a + b, 0.0).unwrap()))
        });
    }
    g.finish();
}

fn map2(c: &mut Criterion) {
    let pool = Pool::new(workers()).unwrap();
    let mut g = c.benchmark_group("map2");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [1_000usize, 100_000, 10_000_000] {
        let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        let y = vec![1.0f32; n];
        let (sx, sy) = (pool.to_shm(&x).unwrap(), pool.to_shm(&y).unwrap());
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("serial", n), |b| {
            b.iter(|| {
                black_box(
                    x.iter()
                        .zip(&y)
                        .map(|(x, y)| 2.5 * x + y)
                        .collect::<Vec<f32>>(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("rayon", n), |b| {
            b.iter(|| {
                black_box(
                    x.par_iter()
                        .zip(y.par_iter())
                        .map(|(x, y)| 2.5 * x + y)
                        .collect::<Vec<f32>>(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("shmpool", n), |b| {
            b.iter(|| black_box(pool.map2(&sx, &sy, |x, y| 2.5 * x + y).unwrap()))
        });
    }
    g.finish();
}

/// A light task: a few dozen nanoseconds.
fn task(x: u64) -> u64 {
    (0..8).fold(x, |a, _| {
        a.wrapping_mul(6364136223846793005).rotate_left(17)
    })
}

fn imap(c: &mut Criterion) {
    let pool = Pool::new(workers()).unwrap();
    let mut g = c.benchmark_group("imap");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [10_000u64, 1_000_000] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::new("serial", n), |b| {
            b.iter(|| black_box((0..n).map(task).fold(0u64, u64::wrapping_add)))
        });
        g.bench_function(BenchmarkId::new("rayon_par_bridge", n), |b| {
            b.iter(|| {
                black_box(
                    (0..n)
                        .par_bridge()
                        .map(task)
                        .reduce(|| 0, u64::wrapping_add),
                )
            })
        });
        g.bench_function(BenchmarkId::new("crossbeam_pipeline", n), |b| {
            b.iter(|| black_box(crossbeam_pipeline(n)))
        });
        g.bench_function(BenchmarkId::new("shmpool_imap", n), |b| {
            b.iter(|| {
                black_box(
                    pool.imap(0..n, task)
                        .unwrap()
                        .chunksize(4096)
                        .map(Result::unwrap)
                        .fold(0u64, u64::wrapping_add),
                )
            })
        });
        g.bench_function(BenchmarkId::new("shmpool_imap_unordered", n), |b| {
            b.iter(|| {
                black_box(
                    pool.imap_unordered(0..n, task)
                        .unwrap()
                        .chunksize(4096)
                        .map(Result::unwrap)
                        .fold(0u64, u64::wrapping_add),
                )
            })
        });
    }
    g.finish();
}

/// A producer thread, `workers()` worker threads and the caller as the
/// consumer, joined by bounded crossbeam channels carrying chunks of 4096.
fn crossbeam_pipeline(n: u64) -> u64 {
    let (tx_in, rx_in) = crossbeam_channel::bounded::<Vec<u64>>(8);
    let (tx_out, rx_out) = crossbeam_channel::bounded::<Vec<u64>>(8);
    thread::scope(|s| {
        s.spawn(move || {
            let mut it = 0..n;
            loop {
                let chunk: Vec<u64> = it.by_ref().take(4096).collect();
                if chunk.is_empty() || tx_in.send(chunk).is_err() {
                    break;
                }
            }
        });
        for _ in 0..workers() {
            let (rx, tx) = (rx_in.clone(), tx_out.clone());
            s.spawn(move || {
                for chunk in rx {
                    let _ = tx.send(chunk.into_iter().map(task).collect());
                }
            });
        }
        drop(tx_out);
        rx_out.iter().flatten().fold(0u64, u64::wrapping_add)
    })
}

criterion_group!(benches, map_reduce, map2, imap);
criterion_main!(benches);
