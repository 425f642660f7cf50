//! Shared memory: what lives in a pool's region and how both sides reach it.
//!
//! - `layout.rs`: the `#[repr(C)]` structures of the region (control block,
//!   worker records, job slots) and where they sit;
//! - `states.rs`: the documented values of every state word in them;
//! - `region.rs`: the memfd mapping itself, its arena allocator and the
//!   `Alloc` block handle;
//! - `arena.rs`: the arena's free list (pure bookkeeping);
//! - `sync.rs`: the process-shared semaphore that hands out work tokens;
//! - `registry.rs`: the process's live regions, for workers to unmap the
//!   ones that are not theirs, and the fork-aware lock that orders mapping
//!   against forking.
//!
//! Which process writes which word, and when: the slot protocol in
//! `src/worker/README.md`, the sleep protocol (the semaphore, the pending
//! bitmap, ticks and kicks) in `README.md` in this directory; the region's
//! layout and the arena in `design.md` (section 2).

pub(crate) mod arena;
pub(crate) mod atomic;
pub(crate) mod futex;
pub(crate) mod layout;
pub(crate) mod region;
pub(crate) mod registry;
pub(crate) mod states;
pub(crate) mod sync;
