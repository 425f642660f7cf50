//! The squares of 0..100 on a pool of 4 processes, as Python's
//! `multiprocessing.Pool` tutorial writes it:
//!
//! ```python
//! inputs = list(range(100))
//! pool = multiprocessing.Pool(processes=4)
//! pool_outputs = pool.map(function_square, inputs)
//! pool.close()
//! pool.join()
//! print ('Pool    :', pool_outputs)
//! ```
//!
//! Run it with `cargo run --release --example square`.

use shmpool::Pool;

fn function_square(data: i64) -> i64 {
    data * data
}

fn main() -> Result<(), shmpool::Error> {
    let inputs: Vec<i64> = (0..100).collect();
    let pool = Pool::new(4)?;
    let pool_outputs = pool.map(&inputs, function_square)?;
    pool.close();
    pool.join()?;
    println!("Pool    : {:?}", pool_outputs.to_vec());
    Ok(())
}
