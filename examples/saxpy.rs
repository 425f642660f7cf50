//! saxpy (`y = a·x + y`) over 16 Mi `f32` with `map2`, timed against serial
//! code and rayon in the same run.
//!
//! `cargo run --release --example saxpy`

use std::time::Instant;

use rayon::prelude::*;
use shmpool::Pool;

fn main() -> Result<(), shmpool::Error> {
    const N: usize = 16 << 20;
    const A: f32 = 2.5;
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    // Inputs in shared memory: the workers read them in place.
    let mut x = pool.alloc_zeroed::<f32>(N)?;
    let mut y = pool.alloc_zeroed::<f32>(N)?;
    for (i, (xi, yi)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
        *xi = (i % 1000) as f32 * 0.001;
        *yi = 1.0;
    }

    let t = Instant::now();
    let serial: Vec<f32> = x.iter().zip(y.iter()).map(|(x, y)| A * x + y).collect();
    let t_serial = t.elapsed();

    let t = Instant::now();
    let par: Vec<f32> = x
        .par_iter()
        .zip(y.par_iter())
        .map(|(x, y)| A * x + y)
        .collect();
    let t_rayon = t.elapsed();

    // Warm the arena once (its pages are then reused), as a long-running
    // program would be.
    drop(pool.map2(&x, &y, |x, y| A * x + y)?);
    let t = Instant::now();
    let out = pool.map2(&x, &y, |x, y| A * x + y)?;
    let t_pool = t.elapsed();

    assert_eq!(&out[..], &serial[..]);
    assert_eq!(par, serial);
    println!("saxpy over {N} f32, {} workers", pool.workers());
    println!("  serial  {:>8.2} ms", t_serial.as_secs_f64() * 1e3);
    println!("  rayon   {:>8.2} ms", t_rayon.as_secs_f64() * 1e3);
    println!(
        "  shmpool {:>8.2} ms  ({:.2}× rayon's time)",
        t_pool.as_secs_f64() * 1e3,
        t_pool.as_secs_f64() / t_rayon.as_secs_f64()
    );
    println!("  y[12345] = {}", out[12_345]);
    Ok(())
}
