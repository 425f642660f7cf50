//! The arena's free list: which byte ranges of the region are free.
//!
//! Pure bookkeeping, used only by the parent under the region's lock; workers
//! never allocate. First fit in address order keeps live data packed at the
//! low end of the arena, so the pages reserved with `fallocate` (the
//! high-water mark in `region.rs`) stay few and get reused, already faulted in.

use std::collections::BTreeMap;

/// Free byte ranges of `start..end`, keyed by offset, never adjacent (freeing
/// merges neighbours).
#[derive(Debug)]
pub(crate) struct FreeList {
    free: BTreeMap<u64, u64>,
    in_use: u64,
}

const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

impl FreeList {
    /// A free list where all of `start..end` is free.
    pub(crate) fn new(start: u64, end: u64) -> Self {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        FreeList { free, in_use: 0 }
    }

    /// Takes `size` bytes (`size > 0`) at an offset that is a multiple of
    /// `align` (a power of two). Returns the offset, or `None` if no free
    /// range is large enough.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        debug_assert!(size > 0 && align.is_power_of_two());
        let (block, block_len, at) = self.free.iter().find_map(|(&off, &len)| {
            let at = align_up(off, align);
            (at.checked_add(size)? <= off + len).then_some((off, len, at))
        })?;
        self.free.remove(&block);
        if at > block {
            self.free.insert(block, at - block);
        }
        let tail = at + size;
        if tail < block + block_len {
            self.free.insert(tail, block + block_len - tail);
        }
        self.in_use += size;
        Some(at)
    }

    /// Gives back `off..off + size`, which `alloc` returned.
    pub(crate) fn free(&mut self, mut off: u64, mut size: u64) {
        debug_assert!(size > 0);
        self.in_use -= size.min(self.in_use);
        if let Some((&prev, &prev_len)) = self.free.range(..off).next_back() {
            debug_assert!(prev + prev_len <= off, "double free of arena block {off}");
            if prev + prev_len == off {
                self.free.remove(&prev);
                off = prev;
                size += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(off + size)) {
            size += next_len;
        }
        debug_assert!(
            self.free.range(off..off + size).next().is_none(),
            "arena block {off} overlaps a free range"
        );
        self.free.insert(off, size);
    }

    /// Bytes handed out and not yet freed.
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use
    }

    /// The size of the largest free range.
    pub(crate) fn largest(&self) -> u64 {
        self.free.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_split_and_merge() {
        let mut f = FreeList::new(0, 1024);
        let a = f.alloc(128, 128).unwrap();
        let b = f.alloc(256, 128).unwrap();
        let c = f.alloc(128, 128).unwrap();
        assert_eq!((a, b, c), (0, 128, 384));
        assert_eq!(f.in_use(), 512);
        f.free(b, 256);
        // The hole at 128 is reused first.
        assert_eq!(f.alloc(128, 128), Some(128));
        f.free(128, 128);
        f.free(a, 128);
        f.free(c, 128);
        assert_eq!(f.in_use(), 0);
        assert_eq!(f.largest(), 1024);
        assert_eq!(f.free.len(), 1, "neighbours merge back into one range");
    }

    #[test]
    fn alignment_and_exhaustion() {
        let mut f = FreeList::new(128, 8192);
        let a = f.alloc(128, 4096).unwrap();
        assert_eq!(a, 4096);
        assert_eq!(f.largest(), 4096 - 128);
        assert_eq!(f.alloc(8192, 128), None);
        assert_eq!(f.alloc(4096 - 128, 128), Some(128));
        assert_eq!(f.alloc(4096 - 128, 128), Some(4096 + 128));
        assert_eq!(f.alloc(128, 128), None);
        assert_eq!(f.largest(), 0);
    }

    #[test]
    fn random_traffic_never_overlaps() {
        // A tiny deterministic PRNG keeps the test reproducible.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let end = 1 << 20;
        let mut f = FreeList::new(0, end);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if live.is_empty() || next() % 3 != 0 {
                let size = 128 * (1 + next() % 64);
                let align = 128 << (next() % 4);
                if let Some(off) = f.alloc(size, align) {
                    assert_eq!(off % align, 0);
                    assert!(off + size <= end);
                    for &(o, s) in &live {
                        assert!(off + size <= o || o + s <= off, "overlap");
                    }
                    live.push((off, size));
                }
            } else {
                let i = (next() % live.len() as u64) as usize;
                let (o, s) = live.swap_remove(i);
                f.free(o, s);
            }
            assert_eq!(f.in_use(), live.iter().map(|l| l.1).sum::<u64>());
        }
        for (o, s) in live.drain(..) {
            f.free(o, s);
        }
        assert_eq!(f.largest(), end);
    }
}
