//! # shmpool
//!
//! Python's `multiprocessing.Pool` for Rust (`apply`, `apply_async`, `map`,
//! `map_async`, callbacks, `close`, `join`, `terminate`) without its costs:
//! no pickling and no pipes. Inputs and outputs are plain-old-data
//! ([`bytemuck::Pod`]) in a shared-memory arena; tasks run in forked worker
//! processes that claim index ranges with atomic counters and sleep on a
//! process-shared semaphore.
//!
//! Why processes? Isolation. A segfault in foreign code, an `abort`, a
//! runaway loop or a leak in a task kills one worker, not your program. The
//! dead worker is replaced and the lost range runs again on a new worker
//! ([`Builder::max_retries`]); if it kills that one too, the job fails with
//! a typed [`Error`] naming the signal and the range. Runaway tasks
//! are stopped by [`Builder::task_timeout`], leaks by
//! [`Builder::worker_memory_limit`], and an unwanted job by
//! [`AsyncResult::cancel`]. Only the dead worker is
//! replaced, and the pool carries on.
//!
//! ```
//! use shmpool::Pool;
//!
//! let pool = Pool::new(4)?;
//! let inputs: Vec<i64> = (0..100).collect();
//! let squares = pool.map(&inputs, |x| x * x)?;
//! pool.close();
//! pool.join()?;
//! assert_eq!(squares[..4], [0, 1, 4, 9]);
//!
//! // Zero copies: allocate inputs in shared memory, get outputs there.
//! let pool = Pool::new(2)?;
//! let xs = pool.to_shm(&[1.0f64, 4.0, 9.0])?;
//! let roots = pool.map(&xs, f64::sqrt)?;
//! assert_eq!(roots, vec![1.0, 2.0, 3.0]);
//! assert_eq!(pool.stats().bytes_staged, 0);
//! # Ok::<(), shmpool::Error>(())
//! ```
//!
//! Programs that keep big data in plain `Vec`s can install [`SharedHeap`],
//! an opt-in global allocator that puts large allocations in one
//! shared-memory file: forking stays cheap however much the program holds,
//! and pages the program writes after `Pool::new` are not copied on write.
//!
//! Tasks must be fn items or closures that capture nothing; pass state with
//! [`Pool::map_with`]. Linux only. The design (shared-memory layout, job-slot
//! protocol, sleep and wake-up, supervision, the template process, misuse)
//! is described in [`design`], the crate's `design.md`.

#![deny(unsafe_code, unsafe_op_in_unsafe_fn, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("shmpool uses memfd, eventfd, futexes and pidfds: it supports Linux only");

// The public face: the pool and its builder, the map forms, results,
// vectors in shared memory, errors and statistics.
mod builder;
mod element;
mod error;
mod global;
mod imap;
mod input;
#[cfg(feature = "ndarray")]
mod nd;
mod numeric;
mod pool;
mod result;
mod shmvec;
mod stats;
mod table;

// The shared heap (an opt-in global allocator).
mod heap;
// The operating-system boundary: every system call.
mod os;
// Who runs where: shared memory (both sides), the parent, the workers.
mod parent;
mod shm;
mod worker;

// Loom models of the shared-memory protocols (`--cfg shmpool_loom`).
#[cfg(all(test, shmpool_loom))]
mod models;

pub use builder::Builder;
pub use bytemuck;
pub use element::Element;
pub use error::Error;
pub use global::{global, try_global};
pub use heap::{HeapStats, SharedHeap};
pub use imap::Imap;
pub use input::AsyncInput;
#[cfg(feature = "ndarray")]
pub use nd::ShmArray;
#[cfg(feature = "ndarray")]
pub use ndarray;
pub use pool::Pool;
pub use result::AsyncResult;
pub use shmvec::ShmVec;
pub use stats::{Profile, Stats};

/// The architecture: `design.md` from the crate's sources, rendered here so
/// that it can be read next to the API (on docs.rs and in `cargo doc`).
///
/// What lives where in shared memory, who writes which word in what order,
/// how workers sleep and wake, how the supervisor handles deaths and
/// timeouts, what each misuse returns, and why each dependency is here.
/// This module holds no code; it exists only in the documentation.
#[cfg(doc)]
#[doc = include_str!("../design.md")]
pub mod design {}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The README's shared-heap snippet, a `rust,ignore` block there because it
/// leaves out `n`, `x`, `pool` and `build_matrix`: here with them, compiled
/// and run in a crate of its own (it installs a global allocator). Keep the
/// lines between the markers as the README has them.
/// ```rust,standalone_crate
/// // README: begin
/// #[global_allocator]
/// // SAFETY: tasks read heap memory only through their arguments.
/// static HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
/// // README: end
///
/// fn build_matrix(n: usize) -> Vec<f64> {
///     (0..n * n).map(|k| (k % 7) as f64).collect()
/// }
///
/// fn main() -> Result<(), shmpool::Error> {
///     let n = 300;
///     let pool = shmpool::Pool::new(2)?;
///     let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
///     // README: begin
///     let a: Vec<f64> = build_matrix(n);                   // before or after Pool::new
///     let y = pool.map_shared_indexed(&a, &x, |a: &[f64], x: &[f64], i| {
///         a[i * x.len()..][..x.len()].iter().zip(x).map(|(a, x)| a * x).sum::<f64>()
///     })?;                                                 // y = A·x; `a` is read in place
///     // README: end
///     let serial: Vec<f64> = (0..n)
///         .map(|i| a[i * n..][..n].iter().zip(&x).map(|(a, x)| a * x).sum::<f64>())
///         .collect();
///     assert_eq!(y, serial);
///     if HEAP.stats().active {
///         // `a` (720 KB) is read in place; `x` (2400 bytes, under the
///         // heap's 64 KiB threshold) is in private memory, so it is copied.
///         assert_eq!(pool.stats().bytes_staged, 8 * n as u64);
///     }
///     Ok(())
/// }
/// ```
#[cfg(doctest)]
pub struct ReadmeSharedHeap;

/// Every entry point that takes a task refuses a capturing closure at
/// compile time, naming the caller's line (one `compile_fail` check per
/// entry point: a check that moved into a shared helper would name
/// shmpool's own line instead, and one check per doctest keeps each honest).
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.apply_async(1.0f64, move |x| x * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.map_async(vec![1.0f64], move |x| x * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let mut out = [0.0f64; 1];
/// let _ = pool.map_into(&[1.0f64], &mut out, move |x| x * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let mut v = [1.0f64];
/// let _ = pool.map_in_place(&mut v, move |x| x * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.map2(&[1.0f64], &[2.0f64], move |a, b| a * b * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.map_reduce(&[1.0f64], move |x| x * k, |a, b| a + b, 0.0);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.map_indexed_with(2.0f64, &[1.0f64], move |c, xs: &[f64], i| c * xs[i] * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.imap(0..10u64, move |x| x as f64 * k);
/// ```
///
/// ```compile_fail,E0080
/// let pool = shmpool::Pool::new(1).unwrap();
/// let k = 3.0f64;
/// let _ = pool.map_shared(&[1.0f64], &[2.0f64], move |t: &[f64], x| t[0] * x * k);
/// ```
#[cfg(doctest)]
pub struct CaptureChecks;
