//! # shmpool-mpi
//!
//! shmpool's maps across hosts. Inside a host, [`shmpool`] stays the engine
//! (forked worker processes over shared memory); across hosts, MPI (through
//! the [`mpi`] crate, on Open MPI or MPICH) moves the blocks. Each MPI rank
//! owns a [`shmpool::Pool`]; a [`Cluster`] over them scatters an array in
//! contiguous blocks, maps every block with its rank's pool, gathers the
//! results in rank order, and reduces them in an order that does not depend
//! on timing.
//!
//! ```no_run
//! use shmpool::ShmVec;
//!
//! let xs: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
//! let pool = shmpool::Pool::new(shmpool_mpi::workers_per_rank())?;   // before MPI starts
//! let universe = mpi::initialize().unwrap();
//! let cluster = shmpool_mpi::Cluster::new(&universe.world(), &pool)?;
//! let root_data: Option<&[f64]> = (cluster.rank() == 0).then_some(&xs[..]);
//! let local: ShmVec<f64> = cluster.scatter(root_data)?;        // this rank's block
//! let offset: usize = cluster.offset();                         // global index of local[0]
//! let ys: ShmVec<f64> = cluster.map_local(&local, |x: f64| x * x)?;
//! let all: Option<ShmVec<f64>> = cluster.gather(&ys)?;          // Some on rank 0, in rank order
//! let all2: Option<ShmVec<f64>> = cluster.map_from_root(root_data, |x: f64| x * x)?;
//! let total: f64 = cluster.map_reduce(&local, |x: f64| x * x, |a, b| a + b, 0.0)?; // same value on every rank
//! # let _ = (offset, all, all2, total);
//! # Ok::<(), shmpool::Error>(())
//! ```
//!
//! Start it with `mpirun -np 4 --bind-to none ./program` (one host) or
//! `mpirun --hostfile hosts --map-by ppr:1:node --bind-to none ./program`
//! (one rank per host, each with a pool of all its cores); the crate's
//! README explains both, and what to expect from 2 to 64 hosts.
//!
//! **Build the pool before [`mpi::initialize`].** Workers are forked from a
//! snapshot of the process taken when the pool is built; after MPI starts,
//! that snapshot holds MPI's shared-memory segments and signal handlers,
//! and an MPI call in a task hangs. [`Cluster::new`] refuses such a pool.
//!
//! **Every operation is collective and agrees on its outcome**: all ranks
//! call it in the same order, and all return `Ok`, or all return the same
//! [`shmpool::Error::Remote`] naming the rank that failed and its error.
//! See [`Cluster`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

mod cluster;
mod share;
mod transfer;

pub use cluster::{Cluster, ROOT};
pub use share::workers_per_rank;
