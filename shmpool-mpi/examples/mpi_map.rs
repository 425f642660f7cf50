//! One array across the ranks of an MPI job: scatter it, map each block with
//! the rank's pool, gather the results, reduce in rank order.
//!
//! ```text
//! cargo build --release -p shmpool-mpi --example mpi_map
//! mpirun -np 2 --bind-to none target/release/examples/mpi_map [n]
//! mpirun --hostfile hosts --map-by ppr:1:node --bind-to none target/release/examples/mpi_map 100000000
//! ```

use std::time::Instant;

use shmpool::ShmVec;

fn main() -> Result<(), shmpool::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let xs: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();

    let pool = shmpool::Pool::new(shmpool_mpi::workers_per_rank())?; // before MPI starts
    let universe = mpi::initialize().unwrap();
    let cluster = shmpool_mpi::Cluster::new(&universe.world(), &pool)?;
    let started = Instant::now();

    let root_data: Option<&[f64]> = (cluster.rank() == 0).then_some(&xs[..]);
    let local: ShmVec<f64> = cluster.scatter(root_data)?; // this rank's block
    let offset: usize = cluster.offset(); // global index of local[0]
    let ys: ShmVec<f64> = cluster.map_local(&local, |x: f64| x * x)?;
    let all: Option<ShmVec<f64>> = cluster.gather(&ys)?; // Some on rank 0, in rank order
    let all2: Option<ShmVec<f64>> = cluster.map_from_root(root_data, |x: f64| x * x)?;
    let total: f64 = cluster.map_reduce(&local, |x: f64| x * x, |a, b| a + b, 0.0)?; // same value on every rank

    // Each element with its global index (the same as offset + i here).
    let tagged =
        cluster.map_local_indexed(&local, |xs: &[f64], i, global| [xs[i], global as f64])?;
    assert!(
        tagged
            .iter()
            .enumerate()
            .all(|(i, t)| t[1] == (offset + i) as f64)
    );

    println!(
        "rank {} of {}: {} workers, block {}..{} ({} elements), sum of squares {total}",
        cluster.rank(),
        cluster.size(),
        pool.workers(),
        offset,
        offset + local.len(),
        local.len(),
    );
    if let (Some(all), Some(all2)) = (all, all2) {
        let serial: Vec<f64> = xs.iter().map(|x| x * x).collect();
        assert_eq!(all, serial, "gather(map_local(scatter))");
        assert_eq!(all2, serial, "map_from_root");
        let serial_total: f64 = serial.iter().sum();
        let relative = ((total - serial_total) / serial_total.max(f64::MIN_POSITIVE)).abs();
        assert!(relative < 1e-9, "{total} vs {serial_total}");
        println!(
            "rank 0: {n} squares match the serial map; the whole took {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
