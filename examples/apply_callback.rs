//! `apply_async` with a callback, as in Python's
//! `pool.apply_async(f, (x,), callback=cb)`: the callback runs in the pool's
//! result thread as each task finishes; `get()` still returns the value.
//!
//! Run it with `cargo run --release --example apply_callback`.

use std::sync::{Arc, Mutex};

use shmpool::Pool;

/// A deliberately uneven task: the number of Collatz steps from `n` to 1.
fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), shmpool::Error> {
    let pool = Pool::new(4)?;
    let finished = Arc::new(Mutex::new(Vec::new()));

    let starts = [27u64, 97, 871, 6171, 77_031, 837_799];
    let mut pending = Vec::new();
    for &n in &starts {
        let result = pool.apply_async(n, collatz_steps)?;
        let finished = finished.clone();
        result.on_complete(move |steps| match steps {
            Ok(steps) => finished.lock().unwrap().push((n, *steps)),
            Err(e) => eprintln!("{n}: {e}"),
        });
        pending.push((n, result));
    }

    for (n, result) in pending {
        println!("collatz({n:>7}) takes {:>3} steps", result.get()?);
    }
    pool.close();
    pool.join()?; // every callback has run when join returns
    let finished = finished.lock().unwrap();
    println!(
        "callbacks ran {} times, in completion order: {:?}",
        finished.len(),
        *finished
    );
    assert_eq!(finished.len(), starts.len());

    // A task that fails reaches its callback as an error, and the pool lives on.
    let pool = Pool::new(2)?;
    let failing = pool.apply_async(0u32, |d| 100 / d)?;
    failing.on_complete(|r| println!("callback saw: {}", r.as_ref().unwrap_err()));
    failing.wait();
    println!(
        "and the pool still works: 100 / 4 = {}",
        pool.apply(4u32, |d| 100 / d)?
    );
    Ok(())
}
