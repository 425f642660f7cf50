//! A sum of squares with `map_reduce`, beside rayon's `.map().sum()` and a
//! serial loop; and the deterministic mode, which gives the same bits on any
//! pool size.
//!
//! `cargo run --release --example sum_of_squares`

use std::time::Instant;

use rayon::prelude::*;
use shmpool::Pool;

fn main() -> Result<(), shmpool::Error> {
    const N: usize = 32 << 20;
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let xs = pool.to_shm(&(0..N).map(|i| (i % 4096) as f64 * 1e-3).collect::<Vec<_>>())?;

    let t = Instant::now();
    let serial: f64 = xs.iter().map(|x| x * x).sum();
    let t_serial = t.elapsed();

    let t = Instant::now();
    let par: f64 = xs.par_iter().map(|x| x * x).sum();
    let t_rayon = t.elapsed();

    // The first job over a new block costs each worker a minor page fault
    // per page it has not touched yet (its own page tables); time it apart.
    let t = Instant::now();
    let first = pool.map_reduce(&xs, |x| x * x, |a, b| a + b, 0.0)?;
    let t_first = t.elapsed();
    let t = Instant::now();
    let ours = pool.map_reduce(&xs, |x| x * x, |a, b| a + b, 0.0)?;
    let t_pool = t.elapsed();
    assert_eq!(first.to_bits(), ours.to_bits());

    println!("sum of squares of {N} f64, {} workers", pool.workers());
    println!(
        "  serial  {:>8.2} ms  {serial:.6}",
        t_serial.as_secs_f64() * 1e3
    );
    println!(
        "  rayon   {:>8.2} ms  {par:.6}",
        t_rayon.as_secs_f64() * 1e3
    );
    println!(
        "  shmpool {:>8.2} ms  {ours:.6}  ({:.2}× rayon's time; {:.2} ms on first touch)",
        t_pool.as_secs_f64() * 1e3,
        t_pool.as_secs_f64() / t_rayon.as_secs_f64(),
        t_first.as_secs_f64() * 1e3
    );
    assert!((ours - serial).abs() <= 1e-9 * serial.abs());

    // Deterministic mode: fixed 64 Ki-element ranges, combined in order.
    let one = Pool::new(1)?;
    let a = pool.map_reduce_chunked(&xs, 1 << 16, |x| x * x, |a, b| a + b, 0.0)?;
    let b = one.map_reduce_chunked(&xs, 1 << 16, |x| x * x, |a, b| a + b, 0.0)?;
    assert_eq!(a.to_bits(), b.to_bits());
    println!(
        "  deterministic: {a:.6} on {} workers and on 1 (same bits)",
        pool.workers()
    );
    Ok(())
}
