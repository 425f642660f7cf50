//! `Builder`: configuring a pool, creating its region and starting its
//! threads and workers.

use std::io::Write;
use std::sync::Arc;
use std::thread;

use crate::error::Error;
use crate::inner::Inner;
use crate::layout::{Layout, MAX_RING};
use crate::os;
use crate::pool::Pool;
use crate::region::Region;
use crate::result::result_loop;
use crate::supervisor;
use crate::worker::{in_worker, install_panic_hook};

/// Spin rounds a worker polls for work before it sleeps.
const DEFAULT_SPIN: u32 = 2000;
/// The largest pool.
const MAX_WORKERS: usize = 1024;

/// Configures a [`Pool`]; from [`Pool::builder`].
///
/// ```
/// let pool = shmpool::Pool::builder().workers(2).arena_size(64 << 20).build()?;
/// assert_eq!(pool.workers(), 2);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Builder does nothing until build() is called"]
pub struct Builder {
    workers: Option<usize>,
    arena_size: Option<usize>,
    ring_size: Option<usize>,
    spin: u32,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            workers: None,
            arena_size: None,
            ring_size: None,
            spin: DEFAULT_SPIN,
        }
    }
}

impl Builder {
    /// The number of worker processes (default: the available parallelism).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The size of the shared arena in bytes (default: half the physical
    /// memory). It is address space only until allocated: pages are reserved
    /// when a block is allocated, and kept for reuse when it is freed.
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = Some(bytes);
        self
    }

    /// How many jobs can be in flight at once (default: 256, or 4 per worker
    /// if that is more; at most 1024). Submitting to a full ring waits for a
    /// free slot.
    pub fn ring_size(mut self, slots: usize) -> Self {
        self.ring_size = Some(slots);
        self
    }

    /// How many rounds an idle worker polls for new work before it sleeps
    /// (default: 2000, roughly 50-100 µs). 0 makes workers sleep at once.
    pub fn spin(mut self, rounds: u32) -> Self {
        self.spin = rounds;
        self
    }

    /// Creates the shared region and forks the workers.
    ///
    /// # Errors
    /// `InvalidArgument` for zero workers (or more than 1024), a bad ring size,
    /// or when called inside a pool worker; `Io` when the region, the threads
    /// or the processes cannot be created.
    pub fn build(self) -> Result<Pool, Error> {
        if in_worker() {
            return Err(Error::invalid(
                "a pool cannot be created inside a pool worker",
            ));
        }
        let workers = match self.workers {
            Some(n) => n,
            None => thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if workers > MAX_WORKERS {
            return Err(Error::invalid(format!(
                "{workers} workers requested, at most {MAX_WORKERS} are supported"
            )));
        }
        let ring = self.ring_size.unwrap_or((4 * workers).clamp(256, MAX_RING));
        let arena = self.arena_size.unwrap_or_else(default_arena_size);
        let layout = Layout::new(workers, ring, arena)?;
        let region = Region::create(layout)?;
        install_panic_hook();
        // Workers inherit the stdout buffer; flushing now keeps a task that
        // prints from printing the parent's pending output again.
        let _ = std::io::stdout().flush();
        let inner = Arc::new(Inner::new(region, self.spin)?);
        let supervisor = supervisor::start(inner.clone())?;
        let results = thread::Builder::new()
            .name("shmpool-results".into())
            .spawn({
                let inner = inner.clone();
                move || result_loop(inner)
            });
        match results {
            Ok(results) => Ok(Pool {
                inner,
                threads: vec![supervisor, results],
            }),
            Err(e) => {
                let pool = Pool {
                    inner,
                    threads: vec![supervisor],
                };
                drop(pool);
                Err(Error::Io(e))
            }
        }
    }
}

/// Half the physical memory, at least 64 MiB.
fn default_arena_size() -> usize {
    let half = os::physical_memory() / 2;
    (half.clamp(64 << 20, 1 << 40)) as usize
}
