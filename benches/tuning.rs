//! The measurements behind the tuning choices, in one run:
//!
//! 1. the spin budget (`Builder::spin`): round-trip latency of a 16-element
//!    map, back to back and with the caller busy 200 µs between jobs, and
//!    the CPU time the idle workers burn meanwhile;
//! 2. the range size (`Builder::chunk_size`): ranges per worker for a uniform
//!    compute-bound map, a skewed one, and a memory-bound one;
//! 3. staging a plain `Vec`: one thread against several;
//! 4. streaming stores (`Builder::stream_stores_from`): `map_into` of `x*x`
//!    with outputs from 8 to 128 MiB, streamed and plain;
//! 5. `Builder::caller_runs`: the caller running ranges of its own blocking
//!    jobs, against the isolated default, on small and large jobs;
//! 6. more workers than CPUs: round-trip latency of a 16-element map with
//!    1 to 64 workers (run it under `taskset -c 0` too, for one CPU).
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
        "one-thread memcpy {:.2} ms; to_shm (staged like a map input) {:.2} ms; map from the Vec (staging + map) {:.2} ms",
        one.as_secs_f64() * 1e3,
        staged.as_secs_f64() * 1e3,
        two.as_secs_f64() * 1e3
    );
}

fn streaming() {
    println!("\n## streaming stores: map_into of x*x, output reused (2 workers)\n");
    println!("| output | plain | streamed | streamed / plain |");
    println!("|---|---|---|---|");
    let plain = Pool::builder()
        .workers(2)
        .stream_stores_from(usize::MAX)
        .build()
        .unwrap();
    let streamed = Pool::builder()
        .workers(2)
        .stream_stores_from(0)
        .build()
        .unwrap();
    for mib in [8usize, 16, 32, 64, 128] {
        let n = mib << 17;
        let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
        let time = |pool: &Pool| {
            let input = pool.to_shm(&data).unwrap();
            let mut out = pool.alloc_zeroed::<f64>(n).unwrap();
            median(15, || pool.map_into(&input, &mut out, |x| x * x).unwrap())
        };
        let (p, s) = (time(&plain), time(&streamed));
        println!(
            "| {mib} MiB | {:.0} µs | {:.0} µs | {:.2} |",
            p.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            s.as_secs_f64() / p.as_secs_f64()
        );
    }
}

fn caller_runs() {
    println!("\n## caller_runs: the caller runs ranges of its blocking jobs\n");
    println!(
        "| pool | map of 16 u64, round trip | apply, round trip | 1 Mi × 50 sin | x*x, 16 Mi f64, map_into |"
    );
    println!("|---|---|---|---|---|");
    let xs: Vec<f64> = (0..1 << 20).map(|i| i as f64 * 1e-6).collect();
    let big: Vec<f64> = (0..16 << 20).map(|i| i as f64).collect();
    let small: Vec<u64> = (0..16).collect();
    for (label, workers, helps) in [
        ("2 workers, isolated (default)", 2, false),
        ("2 workers + caller", 2, true),
        ("1 worker + caller", 1, true),
    ] {
        let pool = Pool::builder()
            .workers(workers)
            .caller_runs(helps)
            .build()
            .unwrap();
        let rt = median(2001, || {
            drop(black_box(pool.map(&small, |x| x + 1).unwrap()))
        });
        let ap = median(2001, || {
            black_box(pool.apply(black_box(3u64), |x| x + 1).unwrap());
        });
        let sx = pool.to_shm(&xs).unwrap();
        let compute = median(5, || {
            drop(black_box(pool.map(&sx, |x| heavy(x, 50)).unwrap()))
        });
        let sb = pool.to_shm(&big).unwrap();
        let mut out = pool.alloc_zeroed::<f64>(big.len()).unwrap();
        let mem = median(9, || pool.map_into(&sb, &mut out, |x| x * x).unwrap());
        println!(
            "| {label} | {:.2} µs | {:.2} µs | {:.1} ms | {:.2} ms |",
            rt.as_secs_f64() * 1e6,
            ap.as_secs_f64() * 1e6,
            compute.as_secs_f64() * 1e3,
            mem.as_secs_f64() * 1e3
        );
    }
}

fn oversubscribed() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\n## more workers than CPUs ({cpus} CPUs): a 16-element map, round trip\n");
    println!("| workers | p50 | p90 | p99 | worker CPU per job |");
    println!("|---|---|---|---|---|");
    let xs: Vec<f64> = (0..16).map(f64::from).collect();
    let sizes: Vec<usize> = std::env::var("SHMPOOL_BENCH_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8, 16, 64]);
    for workers in sizes {
        let pool = Pool::builder().workers(workers).build().unwrap();
        let sx = pool.to_shm(&xs).unwrap();
        for _ in 0..500 {
            drop(black_box(pool.map(&sx, |x| x * x).unwrap()));
        }
        let jobs = 5_001;
        let cpu0 = worker_cpu(&pool);
        let mut times = Vec::with_capacity(jobs);
        let start = Instant::now();
        while times.len() < jobs && start.elapsed() < Duration::from_secs(20) {
            let t = Instant::now();
            drop(black_box(pool.map(&sx, |x| x * x).unwrap()));
            times.push(t.elapsed());
        }
        let cpu = worker_cpu(&pool) - cpu0;
        let n = times.len();
        times.sort_unstable();
        let us = |q: f64| times[((n as f64 * q) as usize).min(n - 1)].as_secs_f64() * 1e6;
        println!(
            "| {workers} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            us(0.5),
            us(0.9),
            us(0.99),
            cpu / n as f64 * 1e6
        );
    }
}

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if run("spin") {
        spin_budget();
    }
    if run("chunking") {
        chunking();
    }
    if run("staging") {
        staging();
    }
    if run("streaming") {
        streaming();
    }
    if run("caller") {
        caller_runs();
    }
    if run("oversubscribed") {
        oversubscribed();
    }
}
