//! A numeric program on plain `Vec`s, with no `ShmVec` in sight: the shared
//! heap puts large allocations in memory the pool's workers map, so every
//! map reads them where they are and writes results into them in place.
//!
//! Power iteration for the dominant eigenvalue of a symmetric 2048×2048
//! matrix: each step is `y = A·x` (one row per task, the whole matrix and
//! vector shared with every task), then a normalisation. The matrix is built
//! *after* the pool: workers see the heap live.
//!
//! `cargo run --release --example shared_heap`

use std::time::Instant;

use shmpool::{Pool, SharedHeap};

/// Allocations of 16 KiB and up go to the shared heap (64 KiB by default):
/// this program's vectors are 16 KiB.
#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() }.threshold(16 << 10);

const N: usize = 2048;

/// Row `i` of `a` (row-major, `n` columns) dotted with `x`.
fn row_dot(a: &[f64], x: &[f64], i: usize) -> f64 {
    let n = x.len();
    a[i * n..(i + 1) * n]
        .iter()
        .zip(x)
        .map(|(a, x)| a * x)
        .sum()
}

fn main() -> Result<(), shmpool::Error> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Pool::new(workers)?;

    // Built after the pool, as plain Vecs: 32 MiB of matrix in the heap.
    let a: Vec<f64> = (0..N * N)
        .map(|k| {
            let (i, j) = (k / N, k % N);
            1.0 / (1.0 + (i as f64 - j as f64).abs()) + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let mut x = vec![1.0 / (N as f64).sqrt(); N];
    let mut squares = vec![0.0f64; N];

    let t = Instant::now();
    let mut lambda = 0.0;
    for _ in 0..50 {
        // y = A·x: every task sees all of `a` and `x`, read in place.
        let y = pool.map_shared_indexed(&a, &x, row_dot)?;
        lambda = x.iter().zip(y.iter()).map(|(x, y)| x * y).sum();
        // |y|², with the squares written in place into a heap Vec.
        pool.map_into(&y, &mut squares, |v| v * v)?;
        let norm = squares.iter().sum::<f64>().sqrt();
        x.iter_mut().zip(y.iter()).for_each(|(x, y)| *x = y / norm);
    }
    let took = t.elapsed();

    // The same with one thread, as a check.
    let serial: Vec<f64> = (0..N).map(|i| row_dot(&a, &x, i)).collect();
    let parallel = pool.map_shared_indexed(&a, &x, row_dot)?;
    assert!(
        serial
            .iter()
            .zip(&parallel)
            .all(|(s, p)| (s - p).abs() <= 1e-9 * s.abs()),
        "the pool's product matches the serial one"
    );

    let stats = pool.stats();
    println!("power iteration on a {N}x{N} matrix, {workers} workers: lambda = {lambda:.6}");
    println!(
        "  50 steps in {:.1} ms; bytes copied into shared memory: {}",
        took.as_secs_f64() * 1e3,
        stats.bytes_staged
    );
    println!(
        "  the heap holds {} MiB in use; every map read the Vecs in place",
        HEAP.stats().in_use >> 20
    );
    assert_eq!(
        stats.bytes_staged, 0,
        "plain Vecs in the heap are never copied"
    );
    Ok(())
}
