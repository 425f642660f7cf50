//! The atomic types of the shared region: std's, or loom's when the crate
//! is built for its models (`--cfg shmpool_loom`, `src/models/`).
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
//! store, then a `SeqCst` load of another word, on each side; design.md §4
//! "Draining" and §5) are correct in Rust's memory model but would be
//! reported as broken. So under loom each atomic here issues a
//! `fence(SeqCst)` before every `SeqCst` operation: the leading-fence
//! mapping compilers use for `SeqCst` accesses on POWER, under which
//! the store-buffering outcome a Dekker pair excludes stays excluded, and a
//! `SeqCst` store followed by a weaker load is still free to be reordered
//! (the fence comes before the store, not after it). Operations with weaker
//! orderings go to loom unchanged.

#[cfg(not(shmpool_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(shmpool_loom)]
pub(crate) use model::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(shmpool_loom)]
mod model {
    use std::sync::atomic::Ordering;

    /// The leading fence of a `SeqCst` operation (see the module docs).
    #[track_caller]
    fn lead(order: Ordering) {
        if order == Ordering::SeqCst {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    macro_rules! atomic {
        ($name:ident, $t:ty) => {
            /// A loom atomic whose `SeqCst` operations carry a leading
            /// `fence(SeqCst)`.
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
                    lead(order);
                    self.0.load(order)
                }
                #[track_caller]
                pub(crate) fn store(&self, v: $t, order: Ordering) {
                    lead(order);
                    self.0.store(v, order)
                }
                #[track_caller]
                pub(crate) fn swap(&self, v: $t, order: Ordering) -> $t {
                    lead(order);
                    self.0.swap(v, order)
                }
                #[track_caller]
                pub(crate) fn fetch_add(&self, v: $t, order: Ordering) -> $t {
                    lead(order);
                    self.0.fetch_add(v, order)
                }
                #[track_caller]
                pub(crate) fn fetch_sub(&self, v: $t, order: Ordering) -> $t {
                    lead(order);
                    self.0.fetch_sub(v, order)
                }
                #[track_caller]
                pub(crate) fn fetch_or(&self, v: $t, order: Ordering) -> $t {
                    lead(order);
                    self.0.fetch_or(v, order)
                }
                #[track_caller]
                pub(crate) fn fetch_and(&self, v: $t, order: Ordering) -> $t {
                    lead(order);
                    self.0.fetch_and(v, order)
                }
                #[track_caller]
                pub(crate) fn compare_exchange(
                    &self,
                    current: $t,
                    new: $t,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$t, $t> {
                    lead(if failure == Ordering::SeqCst {
                        failure
                    } else {
                        success
                    });
                    self.0.compare_exchange(current, new, success, failure)
                }
                #[track_caller]
                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $t,
                    new: $t,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$t, $t> {
                    lead(if failure == Ordering::SeqCst {
                        failure
                    } else {
                        success
                    });
                    self.0.compare_exchange_weak(current, new, success, failure)
                }
            }
        };
    }

    atomic!(AtomicU8, u8);
    atomic!(AtomicU32, u32);
    atomic!(AtomicU64, u64);
    atomic!(AtomicUsize, usize);
}
