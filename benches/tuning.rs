//! The measurements behind the tuning choices, in one run:
//!
//! 1. the spin budget (`Builder::spin`): round-trip latency of a 16-element
//!    map, back to back and with the caller busy 200 µs between jobs, and
//!    the CPU time the idle workers burn meanwhile;
//! 2. the range size (`Builder::chunk_size`): ranges per worker for a uniform
//!    compute-bound map, a skewed one, and a memory-bound one;
//! 3. staging a plain `Vec`: one thread against several.
//!
//! `cargo bench --bench tuning`. Compare ratios within one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use shmpool::Pool;

fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    t[reps / 2]
}

/// CPU time (user + system) of the pool's workers so far, in seconds.
fn worker_cpu(pool: &Pool) -> f64 {
    let tick = 100.0; // USER_HZ
    pool.worker_pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick
        })
        .sum()
}

fn busy(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn spin_budget() {
    println!("## spin budget (2 workers)\n");
    println!(
        "| spin rounds | round trip, back to back | round trip, caller busy 200 µs between | worker CPU per job (busy caller) |"
    );
    println!("|---|---|---|---|");
    let xs: Vec<f64> = (0..16).map(f64::from).collect();
    for spin in [0u32, 200, 2_000, 20_000, 200_000] {
        let pool = Pool::builder().workers(2).spin(spin).build().unwrap();
        let sx = pool.to_shm(&xs).unwrap();
        let back = median(5_001, || drop(black_box(pool.map(&sx, |x| x * x).unwrap())));
        let jobs = 2_000;
        let cpu0 = worker_cpu(&pool);
        let mut times = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            busy(Duration::from_micros(200));
            let t = Instant::now();
            drop(black_box(pool.map(&sx, |x| x * x).unwrap()));
            times.push(t.elapsed());
        }
        let cpu = worker_cpu(&pool) - cpu0;
        times.sort_unstable();
        println!(
            "| {spin} | {:.2} µs | {:.2} µs | {:.1} µs |",
            back.as_secs_f64() * 1e6,
            times[jobs / 2].as_secs_f64() * 1e6,
            cpu / jobs as f64 * 1e6
        );
    }
}

fn heavy(x: f64, n: u32) -> f64 {
    (0..n).fold(x, |a, _| a.sin() + 0.5)
}

fn chunking() {
    println!(
        "\n## ranges per worker (2 workers): fixed `chunk_size`, the default (16 per worker), guided claims\n"
    );
    println!(
        "| ranges per worker | uniform (1 Mi × 50 sin) | skewed (10% of elements 100× dearer) | memory-bound (x*x, 16 Mi f64) |"
    );
    println!("|---|---|---|---|");
    let n: usize = 1 << 20;
    let xs: Vec<f64> = (0..n).map(|i| i as f64 * 1e-6).collect();
    let big: Vec<f64> = (0..16 << 20).map(|i| i as f64).collect();
    // 0: the default (no chunk_size); usize::MAX: guided claims.
    for per in [1usize, 2, 4, 8, 32, 128, 0, usize::MAX] {
        let builder = |len: usize| {
            let b = Pool::builder().workers(2);
            match per {
                0 => b,
                usize::MAX => b.guided(true),
                _ => b.chunk_size(len.div_ceil(2 * per)),
            }
        };
        let pool = builder(n).build().unwrap();
        let sx = pool.to_shm(&xs).unwrap();
        let uniform = median(5, || {
            drop(black_box(pool.map(&sx, |x| heavy(x, 50)).unwrap()))
        });
        // The dear elements are bunched at the start, as rows of a fractal.
        let skewed = median(5, || {
            drop(black_box(
                pool.map_indexed(&sx, |x: &[f64], i| {
                    heavy(x[i], if i < x.len() / 10 { 500 } else { 5 })
                })
                .unwrap(),
            ))
        });
        let pool_big = builder(16 << 20).build().unwrap();
        let sb = pool_big.to_shm(&big).unwrap();
        let mut out = pool_big.alloc_zeroed::<f64>(16 << 20).unwrap();
        let mem = median(7, || pool_big.map_into(&sb, &mut out, |x| x * x).unwrap());
        let label = match per {
            0 => "default (16 fixed)".to_owned(),
            usize::MAX => "guided".to_owned(),
            _ => format!("{per} fixed"),
        };
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.2} ms |",
            uniform.as_secs_f64() * 1e3,
            skewed.as_secs_f64() * 1e3,
            mem.as_secs_f64() * 1e3
        );
    }
}

fn staging() {
    println!("\n## staging a 128 MiB Vec\n");
    let data: Vec<f64> = (0..16 << 20).map(|i| i as f64).collect();
    let mut dst = vec![0.0f64; data.len()];
    let one = median(7, || dst.copy_from_slice(black_box(&data)));
    let pool = Pool::new(2).unwrap();
    let staged = median(7, || drop(black_box(pool.to_shm(&data).unwrap())));
    let two = median(7, || drop(black_box(pool.map(&data, |x| x).unwrap())));
    println!(
        "one-thread memcpy {:.2} ms; to_shm (one thread) {:.2} ms; map from the Vec (two-thread staging + map) {:.2} ms",
        one.as_secs_f64() * 1e3,
        staged.as_secs_f64() * 1e3,
        two.as_secs_f64() * 1e3
    );
}

fn main() {
    spin_budget();
    chunking();
    staging();
}
