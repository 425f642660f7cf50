//! The atomic types of the shared region: std's, or loom's when the crate
//! is built for its models (`--cfg shmpool_loom`, `src/models.rs`).
//!
//! Everything that lives in the region (`layout.rs`, the semaphore in
//! `sync.rs`) takes its atomics from here, so the models run the real
//! protocol code (publish, claim, count, complete, harvest, drain, the
//! semaphore) with loom choosing every interleaving and every value a load
//! may return. Orderings are std's in both builds.
//!
//! ## SeqCst under loom
//! loom treats a `SeqCst` *access* as `AcqRel` (its README: "They are
//! regarded as `AcqRel` ... causing Loom to generate false alarms"), but
//! models `fence(SeqCst)` exactly. The region's Dekker pairs (a `SeqCst`
//! store, then a `SeqCst` load of another word, on each side; design.md
//! "Draining" and "Sleep and wake") are correct in Rust's memory model
//! but would be reported as broken. So under loom each `SeqCst` store or
//! read-modify-write here is followed by a `fence(SeqCst)`: the
//! trailing-fence mapping x86 compilers use (`mov; mfence`, or `xchg`),
//! under which the store-buffering outcome a Dekker pair excludes stays
//! excluded. `SeqCst` loads, and operations with weaker orderings, go to
//! loom unchanged.
//!
//! The fences make the models stronger than Rust's memory model in two
//! ways, so some weakenings go unseen (design.md, "Model checking"):
//! - after a `SeqCst` store, a weaker load is ordered as if it were
//!   `SeqCst` too: weakening the *load* half of a Dekker pair is not caught
//!   (weakening the store half is);
//! - loom joins the views of all `SeqCst` fences in the order they run, so
//!   two threads that both issue a `SeqCst` operation synchronise through
//!   it: an acquire or release edge that such operations cover on both
//!   sides is not checked (weakening the `AcqRel` increment of a job's
//!   `done` count to `Release` passes).

#[cfg(not(shmpool_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(shmpool_loom)]
pub(crate) use model::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(shmpool_loom)]
mod model {
    use std::sync::atomic::Ordering;

    /// The trailing fence of a `SeqCst` store or read-modify-write (see
    /// the module docs).
    #[track_caller]
    fn trail(order: Ordering) {
        if order == Ordering::SeqCst {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    macro_rules! atomic {
        ($name:ident, $t:ty) => {
            /// A loom atomic whose `SeqCst` stores and read-modify-writes
            /// carry a trailing `fence(SeqCst)`.
            #[derive(Debug, Default)]
            pub(crate) struct $name(loom::sync::atomic::$name);

            #[allow(dead_code)]
            impl $name {
                #[track_caller]
                pub(crate) fn new(v: $t) -> Self {
                    Self(loom::sync::atomic::$name::new(v))
                }
                #[track_caller]
                pub(crate) fn load(&self, order: Ordering) -> $t {
                    self.0.load(order)
                }
                #[track_caller]
                pub(crate) fn store(&self, v: $t, order: Ordering) {
                    self.0.store(v, order);
                    trail(order);
                }
                #[track_caller]
                pub(crate) fn swap(&self, v: $t, order: Ordering) -> $t {
                    let r = self.0.swap(v, order);
                    trail(order);
                    r
                }
                #[track_caller]
                pub(crate) fn fetch_add(&self, v: $t, order: Ordering) -> $t {
                    let r = self.0.fetch_add(v, order);
                    trail(order);
                    r
                }
                #[track_caller]
                pub(crate) fn fetch_sub(&self, v: $t, order: Ordering) -> $t {
                    let r = self.0.fetch_sub(v, order);
                    trail(order);
                    r
                }
                #[track_caller]
                pub(crate) fn fetch_or(&self, v: $t, order: Ordering) -> $t {
                    let r = self.0.fetch_or(v, order);
                    trail(order);
                    r
                }
                #[track_caller]
                pub(crate) fn fetch_and(&self, v: $t, order: Ordering) -> $t {
                    let r = self.0.fetch_and(v, order);
                    trail(order);
                    r
                }
                #[track_caller]
                pub(crate) fn compare_exchange(
                    &self,
                    current: $t,
                    new: $t,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$t, $t> {
                    let r = self.0.compare_exchange(current, new, success, failure);
                    trail(if r.is_ok() { success } else { failure });
                    r
                }
                #[track_caller]
                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $t,
                    new: $t,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$t, $t> {
                    let r = self.0.compare_exchange_weak(current, new, success, failure);
                    trail(if r.is_ok() { success } else { failure });
                    r
                }
            }
        };
    }

    atomic!(AtomicU8, u8);
    atomic!(AtomicU32, u32);
    atomic!(AtomicU64, u64);
    atomic!(AtomicUsize, usize);
}
