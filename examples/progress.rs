//! A long map with an indicatif progress bar driven by
//! `AsyncResult::progress()`.
//!
//! `cargo run --release --example progress`

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use shmpool::Pool;

/// About a microsecond of work per element.
fn work(x: f64) -> f64 {
    (0..40).fold(x, |acc, _| acc.sin() + 0.5)
}

fn main() -> Result<(), shmpool::Error> {
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let n = 4_000_000;
    let xs = pool.to_shm(&(0..n).map(|i| i as f64 * 1e-6).collect::<Vec<_>>())?;
    let job = pool.map_async(xs, work)?;
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} elements  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    while !job.wait_timeout(Duration::from_millis(50)) {
        bar.set_position(job.progress().0 as u64);
    }
    let (done, total) = job.progress();
    bar.set_position(done as u64);
    bar.finish();
    let ys = job.get()?;
    assert_eq!((done, total), (n, n));
    println!("done: {} elements, ys[1000] = {:.6}", ys.len(), ys[1000]);
    Ok(())
}
