//! The free spans' index: a two-level segregated fit (TLSF) over page
//! counts, linked through the tag table.
//!
//! Row 0 holds spans of 1 to 15 pages, one exact length per bin; row `f`
//! above it holds lengths in `[2^(f+3), 2^(f+4))`, split into 16 bins of
//! equal width. Bitmaps of the non-empty rows and bins find the first
//! non-empty bin at or above a size in two bit scans. A bin's spans are a
//! doubly linked list through the `prev` and `next` of each span's first
//! tag, so the index itself is a few kilobytes in a static, and the tags
//! live in the heap's private tag table.

/// No span: the end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// One page's entry in the tag table. Only a span's first and last pages
/// carry a non-zero tag; `prev` and `next` link free spans and are kept in
/// the first tag only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Tag {
    pub(super) len: u32,
    pub(super) kind: u32,
    pub(super) prev: u32,
    pub(super) next: u32,
}

/// Pages `start..start + pages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) pages: u32,
}

impl Span {
    pub(crate) const EMPTY: Span = Span { start: 0, pages: 0 };

    pub(super) const fn new(start: u32, pages: u32) -> Span {
        Span { start, pages }
    }

    pub(crate) const fn end(self) -> u32 {
        self.start + self.pages
    }

    /// `EMPTY` for a span of no pages, so that grants compare plainly.
    pub(super) const fn or_empty(self) -> Span {
        if self.pages == 0 { Span::EMPTY } else { self }
    }
}

pub(super) const SL_BITS: u32 = 4;
pub(super) const SL: usize = 1 << SL_BITS;
/// Rows: lengths below 16 pages in row 0 (one exact length per bin), then
/// one row per power of two; a `u32` length needs 29.
pub(super) const FL: usize = 32;
/// Entries of one bin scanned for a best fit.
pub(super) const SCAN: usize = 16;

/// The bin of a free span of `len` pages (`len > 0`).
pub(super) const fn bin_of(len: u32) -> (usize, usize) {
    if len < SL as u32 {
        (0, len as usize)
    } else {
        let msb = 31 - len.leading_zeros();
        (
            (msb - SL_BITS + 1) as usize,
            ((len >> (msb - SL_BITS)) as usize) & (SL - 1),
        )
    }
}

/// The first bin whose every span holds at least `n` pages (`n > 0`).
pub(super) const fn first_fitting_bin(n: u32) -> Option<(usize, usize)> {
    if n < SL as u32 {
        return Some((0, n as usize));
    }
    let step = 1u32 << (31 - n.leading_zeros() - SL_BITS);
    let (f, s) = bin_of(n);
    if n & (step - 1) == 0 {
        Some((f, s))
    } else if s + 1 < SL {
        Some((f, s + 1))
    } else if f + 1 < FL {
        Some((f + 1, 0))
    } else {
        None
    }
}

/// The tag table: one `Tag` per heap page.
pub(super) struct Table {
    pub(super) ptr: *mut Tag,
    pub(super) len: u32,
}

impl Table {
    pub(super) fn get(&self, i: u32) -> Tag {
        debug_assert!(i < self.len);
        // SAFETY: `Books::new`'s contract: `ptr` is valid for `len` tags
        // and only `Books` uses it. Every index is a page of the heap:
        // callers derive it from a span inside `0..len`, checked on entry
        // (`check_block`) or kept so by the invariants.
        unsafe { *self.ptr.add(i as usize) }
    }

    pub(super) fn set(&mut self, i: u32, t: Tag) {
        debug_assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { *self.ptr.add(i as usize) = t }
    }

    pub(super) fn link(&mut self, i: u32, prev: u32, next: u32) {
        let t = self.get(i);
        self.set(i, Tag { prev, next, ..t });
    }

    /// Writes the boundary tags of `span`.
    pub(super) fn mark(&mut self, span: Span, kind: u32) {
        let t = Tag {
            len: span.pages,
            kind,
            prev: NIL,
            next: NIL,
        };
        self.set(span.start, t);
        self.set(span.end() - 1, t);
    }

    /// Zeroes the boundary tags of `span`: its pages become interior.
    pub(super) fn unmark(&mut self, span: Span) {
        self.set(span.start, Tag::default());
        self.set(span.end() - 1, Tag::default());
    }

    /// The span starting at `i`.
    pub(super) fn span_at(&self, i: u32) -> Span {
        Span::new(i, self.get(i).len)
    }
}

/// The free spans of one kind, by size.
pub(super) struct FreeSet {
    /// Bit `f`: row `f` has a non-empty bin.
    pub(super) rows: u32,
    /// Bit `s` of `bins[f]`: bin `(f, s)` is non-empty.
    pub(super) bins: [u16; FL],
    pub(super) heads: [[u32; SL]; FL],
}

impl FreeSet {
    pub(super) const fn new() -> FreeSet {
        FreeSet {
            rows: 0,
            bins: [0; FL],
            heads: [[NIL; SL]; FL],
        }
    }

    pub(super) fn insert(&mut self, table: &mut Table, span: Span) {
        let (f, s) = bin_of(span.pages);
        let head = self.heads[f][s];
        table.link(span.start, NIL, head);
        if head != NIL {
            let next = table.get(head).next;
            table.link(head, span.start, next);
        }
        self.heads[f][s] = span.start;
        self.bins[f] |= 1 << s;
        self.rows |= 1 << f;
    }

    pub(super) fn remove(&mut self, table: &mut Table, span: Span) {
        let t = table.get(span.start);
        let (f, s) = bin_of(span.pages);
        if t.prev == NIL {
            self.heads[f][s] = t.next;
            if t.next == NIL {
                self.bins[f] &= !(1 << s);
                if self.bins[f] == 0 {
                    self.rows &= !(1 << f);
                }
            }
        } else {
            let p = table.get(t.prev);
            table.link(t.prev, p.prev, t.next);
        }
        if t.next != NIL {
            let n = table.get(t.next);
            table.link(t.next, t.prev, n.next);
        }
    }

    /// The first non-empty bin at or after `(f, s)`, in size order.
    pub(super) fn non_empty_from(&self, f: usize, s: usize) -> Option<(usize, usize)> {
        let in_row = u32::from(self.bins[f]) & (!0u32 << s);
        if in_row != 0 {
            return Some((f, in_row.trailing_zeros() as usize));
        }
        let rows = self.rows & (!0u32).checked_shl(f as u32 + 1).unwrap_or(0);
        if rows == 0 {
            return None;
        }
        let f = rows.trailing_zeros() as usize;
        Some((f, u32::from(self.bins[f]).trailing_zeros() as usize))
    }

    /// Of the first `SCAN` spans of bin `(f, s)` that `fits` accepts, the
    /// one with the fewest pages.
    pub(super) fn best_in_bin(
        &self,
        table: &Table,
        bin: (usize, usize),
        fits: impl Fn(Span) -> bool,
    ) -> Option<Span> {
        self.best_of_first(table, bin, SCAN, fits)
    }

    /// Of the first `limit` spans of bin `(f, s)` that `fits` accepts, the
    /// one with the fewest pages.
    fn best_of_first(
        &self,
        table: &Table,
        (f, s): (usize, usize),
        limit: usize,
        fits: impl Fn(Span) -> bool,
    ) -> Option<Span> {
        let mut best: Option<Span> = None;
        let mut at = self.heads[f][s];
        for _ in 0..limit {
            if at == NIL {
                break;
            }
            let span = table.span_at(at);
            if fits(span) && best.is_none_or(|b| span.pages < b.pages) {
                best = Some(span);
            }
            at = table.get(at).next;
        }
        best
    }

    /// Of all the spans in the bins from `from` up to, not including,
    /// `until` (`None`: every bin above), the one with the fewest pages
    /// that `fits` accepts, from the first bin that has one. A walk of
    /// every span there: for when the bounded scans found nothing and no
    /// bin holds only spans that surely fit, so that a span that does fit
    /// is never missed for lying deep in a list.
    pub(super) fn best_of_all(
        &self,
        table: &Table,
        from: (usize, usize),
        until: Option<(usize, usize)>,
        fits: impl Fn(Span) -> bool,
    ) -> Option<Span> {
        let mut bin = self.non_empty_from(from.0, from.1);
        while let Some((f, s)) = bin {
            if until.is_some_and(|u| (f, s) >= u) {
                break;
            }
            // A list holds fewer spans than the table has pages.
            let found = self.best_of_first(table, (f, s), table.len as usize, &fits);
            if found.is_some() {
                // A later bin's spans are all longer.
                return found;
            }
            bin = if s + 1 < SL {
                self.non_empty_from(f, s + 1)
            } else if f + 1 < FL {
                self.non_empty_from(f + 1, 0)
            } else {
                None
            };
        }
        None
    }

    /// Of the first `SCAN` spans of the largest non-empty bin, the longest.
    pub(super) fn largest(&self, table: &Table) -> Option<Span> {
        if self.rows == 0 {
            return None;
        }
        let f = 31 - self.rows.leading_zeros() as usize;
        let s = 15 - self.bins[f].leading_zeros() as usize;
        let mut best: Option<Span> = None;
        let mut at = self.heads[f][s];
        for _ in 0..SCAN {
            if at == NIL {
                break;
            }
            let span = table.span_at(at);
            if best.is_none_or(|b| span.pages > b.pages) {
                best = Some(span);
            }
            at = table.get(at).next;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortest length bin `(f, s)` holds.
    fn bin_min((f, s): (usize, usize)) -> u64 {
        if f == 0 {
            s as u64
        } else {
            (16 + s as u64) << (f - 1)
        }
    }

    #[test]
    fn bins_cover_every_length_in_order() {
        let mut last = (0, 0);
        for len in (1..200_000u32).chain([u32::MAX / 2, u32::MAX - 1]) {
            let b = bin_of(len);
            assert!(b >= last, "bins grow with the length");
            last = b;
            assert!(bin_min(b) <= u64::from(len), "{len} in bin {b:?}");
            // The first fitting bin holds nothing shorter than `len`, and is
            // `len`'s own bin or the next one.
            let fit = first_fitting_bin(len).unwrap();
            assert!(bin_min(fit) >= u64::from(len), "{len}: {fit:?}");
            let next = if b.0 == 0 && b.1 + 1 < SL {
                (0, b.1 + 1)
            } else if b.1 + 1 < SL {
                (b.0, b.1 + 1)
            } else {
                (b.0 + 1, 0)
            };
            assert!(fit == b || fit == next, "{len}: {fit:?}");
        }
        assert_eq!(bin_of(u32::MAX - 1).0, 28);
    }
}
