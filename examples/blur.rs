//! A 5×5 box blur of a 2-D image, with `map_stencil` (feature `ndarray`),
//! checked against serial ndarray code and timed against rayon.
//!
//! The image is a plain `ndarray::Array2`: with the shared heap as the
//! global allocator its buffer lives in memory the workers map, so the
//! stencil reads it in place (nothing is copied into the pool).
//!
//! `cargo run --release --features ndarray --example blur`

use std::time::Instant;

use ndarray::{Array2, ArrayView2, Zip, s};
use shmpool::{Pool, SharedHeap};

#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() };

const R: usize = 2;

fn blur(a: &ArrayView2<f32>, (i, j): (usize, usize)) -> f32 {
    let (h, w) = a.dim();
    let win = a.slice(s![
        i.saturating_sub(R)..(i + R + 1).min(h),
        j.saturating_sub(R)..(j + R + 1).min(w)
    ]);
    win.sum() / win.len() as f32
}

fn main() -> Result<(), shmpool::Error> {
    let (h, w) = (1080, 1920);
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    // A plain array, built after the pool: it is in the shared heap, so the
    // workers read it in place.
    let img = Array2::from_shape_fn((h, w), |(i, j)| (((i / 40) + (j / 40)) % 2) as f32 * 255.0);

    let t = Instant::now();
    let serial = Array2::from_shape_fn((h, w), |ij| blur(&img.view(), ij));
    let t_serial = t.elapsed();

    let t = Instant::now();
    let mut par = Array2::<f32>::zeros((h, w));
    let view = img.view();
    Zip::indexed(&mut par).par_for_each(|ij, p| *p = blur(&view, ij));
    let t_rayon = t.elapsed();

    let t = Instant::now();
    let out = pool.map_stencil(&img.view(), blur)?;
    let t_pool = t.elapsed();

    assert_eq!(out.view(), serial);
    assert_eq!(par, serial);
    assert_eq!(pool.stats().bytes_staged, 0, "the image was read in place");
    println!(
        "5x5 box blur of a {h}x{w} image, {} workers",
        pool.workers()
    );
    println!("  serial  {:>8.2} ms", t_serial.as_secs_f64() * 1e3);
    println!("  rayon   {:>8.2} ms", t_rayon.as_secs_f64() * 1e3);
    println!(
        "  shmpool {:>8.2} ms  ({:.2}× rayon's time)",
        t_pool.as_secs_f64() * 1e3,
        t_pool.as_secs_f64() / t_rayon.as_secs_f64()
    );
    println!(
        "  a pixel on an edge: {} -> {}",
        img.view()[[40, 40]],
        out.view()[[40, 40]]
    );
    Ok(())
}
