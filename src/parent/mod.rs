//! The parent's side of a pool: the threads and bookkeeping that live in the
//! process that built it.
//!
//! - `core.rs`: the state a pool's handle, its result thread and its
//!   supervisor share, and the two ways of waiting for a job;
//! - `ring.rs`: which slot holds which job, publishing and harvesting (the
//!   parent's half of the slot protocol, `src/worker/README.md`);
//! - `place.rs`: where a job's data lives (arena, shared heap, elsewhere);
//! - `supervisor.rs`: starting workers, handling their deaths, timeouts,
//!   respawns and shutdown;
//! - `stuck.rs`: finding workers blocked forever on a lock they inherited;
//! - `limits.rs`: the limits a pool sizes itself against (memory cgroups,
//!   `RLIMIT_AS`, the CPUs it may run on).
//!
//! Nothing here runs user code, and nothing here trusts shared memory
//! (design.md, section 9).

pub(crate) mod core;
pub(crate) mod limits;
pub(crate) mod place;
pub(crate) mod ring;
pub(crate) mod stuck;
pub(crate) mod supervisor;
