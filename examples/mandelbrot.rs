//! A numeric example: the Mandelbrot set, computed serially, with rayon and
//! with shmpool (every pixel in a worker process), timed side by side.
//!
//! Rows near the set cost far more than rows outside it, so the pool's
//! dynamic range claiming matters. The view travels to the workers as a `Pod`
//! context (`map_with`): tasks capture nothing.
//!
//! Run it with `cargo run --release --example mandelbrot [width height max_iter]`.

use std::time::{Duration, Instant};

// In your own crate: `use bytemuck::{Pod, Zeroable};` with bytemuck's `derive` feature.
use bytemuck_derive::{Pod, Zeroable};
use rayon::prelude::*;
use shmpool::Pool;

#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C)]
struct View {
    width: u32,
    height: u32,
    max_iter: u32,
    _pad: u32,
    x0: f64,
    y0: f64,
    scale: f64,
}

/// Escape-time iterations of pixel `index` (row-major).
fn escape(view: &View, index: u32) -> u32 {
    let (px, py) = (index % view.width, index / view.width);
    let cx = view.x0 + f64::from(px) * view.scale;
    let cy = view.y0 + f64::from(py) * view.scale;
    let (mut x, mut y, mut i) = (0.0f64, 0.0f64, 0);
    while i < view.max_iter && x * x + y * y <= 4.0 {
        let t = x * x - y * y + cx;
        y = 2.0 * x * y + cy;
        x = t;
        i += 1;
    }
    i
}

/// The best of `runs` timings of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("runs > 0"))
}

fn main() -> Result<(), shmpool::Error> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (width, height, max_iter) = match args[..] {
        [w, h, m] => (w, h, m),
        _ => (1200, 800, 500),
    };
    let view = View {
        width,
        height,
        max_iter,
        _pad: 0,
        x0: -2.2,
        y0: -1.2,
        scale: 2.4 / f64::from(height),
    };
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let pixels = pool.to_shm(&(0..width * height).collect::<Vec<u32>>())?;

    let (serial_t, serial) = best(3, || {
        pixels.iter().map(|&i| escape(&view, i)).collect::<Vec<_>>()
    });
    let (rayon_t, parallel) = best(3, || {
        pixels
            .par_iter()
            .map(|&i| escape(&view, i))
            .collect::<Vec<_>>()
    });
    let (pool_t, pooled) = best(3, || pool.map_with(view, &pixels, escape));
    let pooled = pooled?;
    assert!(pooled == serial && parallel == serial, "all three agree");

    // A coarse picture of the result.
    for row in (0..height).step_by((height / 24).max(1) as usize) {
        let line: String = (0..width)
            .step_by((width / 72).max(1) as usize)
            .map(|col| match pooled[(row * width + col) as usize] {
                i if i >= max_iter => '#',
                i if i > 20 => '+',
                i if i > 8 => '.',
                _ => ' ',
            })
            .collect();
        println!("{line}");
    }
    let total: u64 = pooled.iter().map(|&i| u64::from(i)).sum();
    println!(
        "{width}x{height}, {max_iter} iterations max, {total} iterations in all, {} workers",
        pool.workers()
    );
    println!("serial   {:>9.2?}", serial_t);
    println!(
        "rayon    {:>9.2?}  ({:.2}x serial)",
        rayon_t,
        serial_t.as_secs_f64() / rayon_t.as_secs_f64()
    );
    println!(
        "shmpool  {:>9.2?}  ({:.2}x serial, {:.2}x rayon's time)",
        pool_t,
        serial_t.as_secs_f64() / pool_t.as_secs_f64(),
        pool_t.as_secs_f64() / rayon_t.as_secs_f64()
    );
    Ok(())
}
