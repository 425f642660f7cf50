//! Maps over plain `Vec`s in the shared heap, side by side with the same
//! maps over `ShmVec`s (and rayon), in one run: the shared heap's targets.
//!
//! - a map over a 16 Mi `f64` heap `Vec` against the same map over a
//!   `ShmVec` (target ≤ 1.05);
//! - `map_into` a heap slice against `map_into` a `ShmVec` (target ≤ 1.05);
//! - `y = A·x` for a 4096×4096 `f64` matrix with `map_shared_indexed`
//!   against rayon's `par_iter` over rows (target ≤ 1.05);
//! - context: a `Vec` outside the heap (staged) against a `ShmVec`.
//!
//! Rounds are interleaved (the sides alternate, the first of each pair
//! rotating) and each figure is a median: the machine is shared and noisy.
//!
//! `cargo bench --bench heap_map`

use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use shmpool::{Pool, SharedHeap};

/// From 16 KiB up (the vector `x` of `A·x` is 32 KiB).
#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() }.threshold(16 << 10);

const ROUNDS: usize = 21;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `a` and `b` in alternation, `ROUNDS` times each; their medians.
fn pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let run = |f: &mut dyn FnMut(), into: &mut Vec<Duration>| {
            let t = Instant::now();
            f();
            into.push(t.elapsed());
        };
        if round % 2 == 0 {
            run(&mut a, &mut ta);
            run(&mut b, &mut tb);
        } else {
            run(&mut b, &mut tb);
            run(&mut a, &mut ta);
        }
    }
    (median(ta), median(tb))
}

fn row_dot(a: &[f64], x: &[f64], i: usize) -> f64 {
    let n = x.len();
    a[i * n..(i + 1) * n]
        .iter()
        .zip(x)
        .map(|(a, x)| a * x)
        .sum()
}

fn row(name: &str, a: Duration, b: Duration, vs: &str, target: Option<f64>) {
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    let verdict = match target {
        Some(t) if ratio <= t => format!("(target <= {t}: met)"),
        Some(t) => format!("(target <= {t}: MISSED)"),
        None => String::new(),
    };
    println!(
        "{name:<44} {:>9.2} ms  vs {vs:<26} {:>9.2} ms  = {ratio:.3} {verdict}",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3
    );
}

fn main() -> Result<(), shmpool::Error> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Pool::new(workers)?;
    let n = 16 << 20;
    let heap_vec: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let shm = pool.to_shm(&heap_vec)?;
    let mut heap_out = vec![0.0f64; n];
    let mut shm_out = pool.alloc_zeroed::<f64>(n)?;
    println!(
        "shared heap: {} MiB in use; {workers} workers; medians of {ROUNDS} interleaved rounds",
        HEAP.stats().in_use >> 20
    );

    let staged = pool.stats().bytes_staged;
    let (t_heap, t_shm) = pair(
        || drop(black_box(pool.map(&heap_vec, |x| x * x).unwrap())),
        || drop(black_box(pool.map(&shm, |x| x * x).unwrap())),
    );
    assert_eq!(
        pool.stats().bytes_staged,
        staged,
        "a heap Vec is read in place"
    );
    row(
        "map x*x, 16 Mi f64 heap Vec",
        t_heap,
        t_shm,
        "the same over a ShmVec",
        Some(1.05),
    );

    let (t_heap, t_shm) = pair(
        || pool.map_into(&heap_vec, &mut heap_out, |x| x * x).unwrap(),
        || pool.map_into(&shm, &mut shm_out, |x| x * x).unwrap(),
    );
    assert_eq!(
        pool.stats().bytes_staged,
        staged,
        "a heap output is written in place"
    );
    assert!(heap_out == *shm_out);
    row(
        "map_into x*x, into a heap slice",
        t_heap,
        t_shm,
        "into a ShmVec",
        Some(1.05),
    );

    // A Vec outside the heap (the system allocator's): staged.
    let outside: Vec<f64> = {
        // Built through the system allocator, so it is not in the heap.
        let layout = std::alloc::Layout::array::<f64>(n).unwrap();
        // SAFETY: a fresh allocation of `n` f64s from the system allocator,
        // filled before use, and owned by the Vec made from it (which frees
        // it through the global allocator: the heap passes a block it does
        // not own to the system allocator).
        unsafe {
            let p = std::alloc::GlobalAlloc::alloc(&std::alloc::System, layout).cast::<f64>();
            assert!(!p.is_null());
            for i in 0..n {
                p.add(i).write(i as f64);
            }
            Vec::from_raw_parts(p, n, n)
        }
    };
    let (t_out, t_shm) = pair(
        || drop(black_box(pool.map(&outside, |x| x * x).unwrap())),
        || drop(black_box(pool.map(&shm, |x| x * x).unwrap())),
    );
    row(
        "map x*x, a Vec outside the heap (staged)",
        t_out,
        t_shm,
        "the same over a ShmVec",
        None,
    );
    drop(outside);

    let m = 4096;
    let a: Vec<f64> = (0..m * m).map(|k| ((k % 97) as f64) * 0.01).collect();
    let x: Vec<f64> = (0..m).map(|i| (i % 13) as f64).collect();
    let staged = pool.stats().bytes_staged;
    let (t_pool, t_rayon) = pair(
        || drop(black_box(pool.map_shared_indexed(&a, &x, row_dot).unwrap())),
        || {
            let y: Vec<f64> = (0..m).into_par_iter().map(|i| row_dot(&a, &x, i)).collect();
            drop(black_box(y));
        },
    );
    assert_eq!(
        pool.stats().bytes_staged,
        staged,
        "A and x are read in place"
    );
    let y = pool.map_shared_indexed(&a, &x, row_dot)?;
    let serial: Vec<f64> = (0..m).map(|i| row_dot(&a, &x, i)).collect();
    assert!(*y == serial);
    row(
        "y = A.x, 4096x4096 f64, map_shared_indexed",
        t_pool,
        t_rayon,
        "rayon par_iter over rows",
        Some(1.05),
    );
    Ok(())
}
