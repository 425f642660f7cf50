//! `map_async` awaited under an executor (here `futures::executor`; the
//! `Future` is runtime-agnostic, so tokio, smol or async-std work as well).
//! Several maps run at once while the caller awaits them together.
//!
//! Run it with `cargo run --release --example async_map`.

use futures::executor::block_on;
use shmpool::Pool;

fn main() -> Result<(), shmpool::Error> {
    let pool = Pool::new(4)?;
    let xs = pool.to_shm(&(0..1_000_000).map(|i| i as f64 * 1e-3).collect::<Vec<_>>())?;
    let n = xs.len();

    let (sines, cosines, sum) = block_on(async {
        // An async job owns its input: a borrowed one is copied in once, a
        // ShmVec moved in is read in place.
        let sines = pool.map_async(&xs, f64::sin)?;
        let cosines = pool.map_async(xs, f64::cos)?;
        let (sines, cosines) = futures::join!(sines, cosines);
        let (sines, cosines) = (sines?, cosines?);
        // sin² + cos² = 1, computed by a third map over a zipped pair.
        let pairs: Vec<[f64; 2]> = sines
            .iter()
            .zip(cosines.iter())
            .map(|(&s, &c)| [s, c])
            .collect();
        let ones = pool
            .map_async(&pairs, |[s, c]: [f64; 2]| s * s + c * c)?
            .await?;
        Ok::<_, shmpool::Error>((sines, cosines, ones.iter().sum::<f64>()))
    })?;

    println!(
        "sin(1.0) = {:.6}, cos(1.0) = {:.6}",
        sines[1000], cosines[1000]
    );
    println!("sum of sin² + cos² over {n} points = {sum:.3}");
    // The borrowed input (8 MB) and the Vec of pairs (16 MB) were copied in;
    // the moved ShmVec was not.
    println!(
        "bytes copied into shared memory: {}",
        pool.stats().bytes_staged
    );
    assert!((sum - n as f64).abs() < 1e-6);
    Ok(())
}
