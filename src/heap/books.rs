//! The shared heap's bookkeeping: which pages are in use, free and warm (their
//! pages allocated in the memfd), free and cold (a hole), or in transit
//! (being punched out). Pure: no system calls, page units, over a tag table
//! the caller provides (the heap's private mapping; a `Vec` in the tests).
//! Used only by the owner process, under the heap's lock, and never
//! allocates.
//!
//! Spans tile `0..pages`. A span's first and last tags hold its length and
//! kind, and every tag inside a span is zero, so a tag that claims to start
//! a block really does. Two free spans of the same kind are never adjacent:
//! freeing merges them. Warm and cold never merge. Free spans of each kind
//! are indexed by size (`bins.rs`). Every operation is O(1): at most 16
//! entries of a bin are scanned for a best fit.

#[cfg(test)]
use super::bins::{FL, SCAN, SL};
use super::bins::{FreeSet, NIL, Span, Table, Tag, bin_of, first_fitting_bin};

/// Kinds of span; an interior tag is all zero (kind 0).
const USED: u32 = 1;
const WARM: u32 = 2;
const COLD: u32 = 3;
const TRANSIT: u32 = 4;

/// The pages a block was given (for `grow`, the extension), and what they
/// held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) block: Span,
    /// Parts that were cold: the caller reserves their pages (`fallocate`)
    /// before anyone touches them. Empty spans have zero pages.
    pub(crate) cold: [Span; 2],
    /// The part that was warm: its pages exist and hold old bytes.
    pub(crate) warm: Span,
}

/// A free (or a resize) that names no block: a double free, a wrong layout
/// or a wild pointer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotABlock;

/// The heap's bookkeeping.
pub(crate) struct Books {
    table: Table,
    /// The heap's address divided by the page size: alignment is of
    /// addresses, not of offsets.
    base_page: u64,
    warm: FreeSet,
    cold: FreeSet,
    used: u64,
    warm_pages: u64,
    transit: u64,
}

// SAFETY: `Books` owns its tag table (`init`'s contract) and is used by one
// thread at a time (behind the heap's lock).
unsafe impl Send for Books {}

impl Books {
    /// No heap: every allocation fails.
    pub(crate) const EMPTY: Books = Books {
        table: Table {
            ptr: std::ptr::null_mut(),
            len: 0,
        },
        base_page: 0,
        warm: FreeSet::new(),
        cold: FreeSet::new(),
        used: 0,
        warm_pages: 0,
        transit: 0,
    };

    /// Books for a heap of `pages` pages at page address `base_page`, all
    /// cold.
    ///
    /// # Safety
    /// - `table` is valid for reads and writes of `pages` tags, all zero,
    ///   for as long as these books are used;
    /// - nothing else reads or writes it meanwhile;
    /// - `pages < u32::MAX`.
    pub(crate) unsafe fn new(table: *mut Tag, pages: u32, base_page: u64) -> Books {
        debug_assert!(pages < NIL);
        let mut books = Books {
            table: Table {
                ptr: table,
                len: pages,
            },
            base_page,
            ..Books::EMPTY
        };
        if pages > 0 {
            let all = Span::new(0, pages);
            books.table.mark(all, COLD);
            books.cold.insert(&mut books.table, all);
        }
        books
    }

    /// Pages in live blocks.
    pub(crate) fn used_pages(&self) -> u64 {
        self.used
    }

    /// Free pages that still have their pages in the file.
    pub(crate) fn warm_pages(&self) -> u64 {
        self.warm_pages
    }

    /// Pages taken out by `take_excess` and not yet settled.
    pub(crate) fn transit_pages(&self) -> u64 {
        self.transit
    }

    fn set_of(&mut self, kind: u32) -> (&mut FreeSet, &mut Table) {
        if kind == WARM {
            (&mut self.warm, &mut self.table)
        } else {
            (&mut self.cold, &mut self.table)
        }
    }

    /// Takes the free span `span` of `kind` out of its set and erases its
    /// tags.
    fn take(&mut self, kind: u32, span: Span) {
        let (set, table) = self.set_of(kind);
        set.remove(table, span);
        table.unmark(span);
    }

    /// Makes `span` a free span of `kind` (its tags already zero), merged
    /// with free neighbours of the same kind.
    fn put(&mut self, kind: u32, span: Span) {
        let mut span = span;
        if span.start > 0 {
            let t = self.table.get(span.start - 1);
            if t.kind == kind {
                let left = Span::new(span.start - t.len, t.len);
                self.take(kind, left);
                span = Span::new(left.start, left.pages + span.pages);
            }
        }
        if span.end() < self.table.len {
            let t = self.table.get(span.end());
            if t.kind == kind {
                let right = Span::new(span.end(), t.len);
                self.take(kind, right);
                span.pages += right.pages;
            }
        }
        let (set, table) = self.set_of(kind);
        table.mark(span, kind);
        set.insert(table, span);
    }

    /// Makes `span` a free span of `kind` that needs no merging: its
    /// neighbours are not of that kind.
    fn put_unmerged(&mut self, kind: u32, span: Span) {
        if span.pages > 0 {
            let (set, table) = self.set_of(kind);
            table.mark(span, kind);
            set.insert(table, span);
        }
    }

    /// The first page at or after `start` whose address is a multiple of
    /// `align` pages.
    fn aligned(&self, start: u32, align: u32) -> u64 {
        let at = self.base_page + u64::from(start);
        let rem = at % u64::from(align);
        let pad = if rem == 0 { 0 } else { u64::from(align) - rem };
        u64::from(start) + pad
    }

    /// A free span of `kind` holding `n` pages aligned to `align` pages:
    /// the best fit among the first entries of `n`'s own bin, else the
    /// best of the first bin whose every span fits, else (no such bin is
    /// left) the best fit among every span of the bins in between.
    fn find(&self, kind: u32, n: u32, align: u32) -> Option<Span> {
        let set = if kind == WARM { &self.warm } else { &self.cold };
        let fits = |s: Span| self.aligned(s.start, align) + u64::from(n) <= u64::from(s.end());
        if let Some(span) = set.best_in_bin(&self.table, bin_of(n), fits) {
            return Some(span);
        }
        let surely = n.checked_add(align - 1).and_then(first_fitting_bin);
        if let Some(bin) = surely.and_then(|(f, s)| set.non_empty_from(f, s)) {
            return set.best_in_bin(&self.table, bin, fits);
        }
        set.best_of_all(&self.table, bin_of(n), surely, fits)
    }

    /// Cuts `block` out of the free span `from` of `kind`; the rest stays
    /// free.
    fn carve(&mut self, kind: u32, from: Span, block: Span) {
        self.take(kind, from);
        self.put_unmerged(kind, Span::new(from.start, block.start - from.start));
        self.table.mark(block, USED);
        self.put_unmerged(kind, Span::new(block.end(), from.end() - block.end()));
    }

    /// A block of `n` pages (`n > 0`) whose address is a multiple of `align`
    /// pages (a power of two): warm pages first, then the largest warm span
    /// with its cold neighbours, then cold pages. `None` when nothing fits.
    pub(crate) fn alloc(&mut self, n: u32, align: u32) -> Option<Grant> {
        debug_assert!(n > 0 && align.is_power_of_two());
        if n == 0 || n > self.table.len {
            return None;
        }
        if let Some(from) = self.find(WARM, n, align) {
            let block = Span::new(self.aligned(from.start, align) as u32, n);
            self.carve(WARM, from, block);
            self.warm_pages -= u64::from(n);
            self.used += u64::from(n);
            return Some(Grant {
                block,
                cold: [Span::EMPTY; 2],
                warm: block,
            });
        }
        if align == 1 {
            if let Some(grant) = self.alloc_around_warm(n) {
                return Some(grant);
            }
        }
        let from = self.find(COLD, n, align)?;
        let block = Span::new(self.aligned(from.start, align) as u32, n);
        self.carve(COLD, from, block);
        self.used += u64::from(n);
        Some(Grant {
            block,
            cold: [block, Span::EMPTY],
            warm: Span::EMPTY,
        })
    }

    /// A block covering the largest warm span and as much of its cold
    /// neighbours as it needs (right first), if they hold `n` pages
    /// together.
    fn alloc_around_warm(&mut self, n: u32) -> Option<Grant> {
        let w = self.warm.largest(&self.table)?;
        if w.pages >= n {
            // A fit the bounded scans of `find` did not reach.
            let block = Span::new(w.start, n);
            self.carve(WARM, w, block);
            self.warm_pages -= u64::from(n);
            self.used += u64::from(n);
            return Some(Grant {
                block,
                cold: [Span::EMPTY; 2],
                warm: block,
            });
        }
        let cold_at = |i: u32, end: bool| {
            let t = self.table.get(i);
            (t.kind == COLD).then(|| Span::new(if end { i + 1 - t.len } else { i }, t.len))
        };
        let left = (w.start > 0).then(|| cold_at(w.start - 1, true)).flatten();
        let right = (w.end() < self.table.len)
            .then(|| cold_at(w.end(), false))
            .flatten();
        let lo = left.map_or(w.start, |l| l.start);
        let hi = right.map_or(w.end(), Span::end);
        if hi - lo < n {
            return None;
        }
        // Covers all of `w` (n > w.pages): start as late as the right
        // neighbour allows.
        let start = w.start.min(hi - n);
        let block = Span::new(start, n);
        for span in [left, Some(w), right].into_iter().flatten() {
            let kind = if span == w { WARM } else { COLD };
            self.take(kind, span);
        }
        self.put_unmerged(COLD, Span::new(lo, start - lo));
        self.table.mark(block, USED);
        self.put_unmerged(COLD, Span::new(block.end(), hi - block.end()));
        self.warm_pages -= u64::from(w.pages);
        self.used += u64::from(n);
        Some(Grant {
            block,
            cold: [
                Span::new(start, w.start - start).or_empty(),
                Span::new(w.end(), block.end() - w.end()).or_empty(),
            ],
            warm: w,
        })
    }

    /// Whether a request of `n` pages that `alloc` could not serve may fit
    /// once every warm page has turned cold: warm and cold spans never
    /// merge, so enough free pages may lie side by side in pieces of both
    /// kinds.
    pub(crate) fn fits_once_cold(&self, n: u32) -> bool {
        let free = u64::from(self.table.len) - self.used - self.transit;
        self.warm_pages > 0 && free >= u64::from(n)
    }

    /// Checks that `start..start + pages` is exactly one span of `kind`.
    fn check_span(&self, start: u32, pages: u32, kind: u32) -> Result<Span, NotABlock> {
        let end = u64::from(start) + u64::from(pages);
        if pages == 0 || end > u64::from(self.table.len) {
            return Err(NotABlock);
        }
        let span = Span::new(start, pages);
        let (first, last) = (self.table.get(start), self.table.get(span.end() - 1));
        if (first.len, first.kind, last.len, last.kind) != (pages, kind, pages, kind) {
            return Err(NotABlock);
        }
        Ok(span)
    }

    /// Frees the block `start..start + pages`: its pages turn warm.
    pub(crate) fn free(&mut self, start: u32, pages: u32) -> Result<(), NotABlock> {
        let span = self.check_span(start, pages, USED)?;
        self.table.unmark(span);
        self.used -= u64::from(pages);
        self.warm_pages += u64::from(pages);
        self.put(WARM, span);
        Ok(())
    }

    /// Frees the block `start..start + pages` whose pages the caller has
    /// punched out (a block whose `fallocate` failed): it turns cold.
    pub(crate) fn free_cold(&mut self, start: u32, pages: u32) -> Result<(), NotABlock> {
        let span = self.check_span(start, pages, USED)?;
        self.table.unmark(span);
        self.used -= u64::from(pages);
        self.put(COLD, span);
        Ok(())
    }

    /// Grows the block `start..start + old` to `new > old` pages in place,
    /// from the free span after it (warm, then the cold span after that).
    /// `Ok(None)` when they are too small; the grant names the extension.
    pub(crate) fn grow(
        &mut self,
        start: u32,
        old: u32,
        new: u32,
    ) -> Result<Option<Grant>, NotABlock> {
        let block = self.check_span(start, old, USED)?;
        debug_assert!(new > old);
        let need = new - old;
        let at = block.end();
        if at >= self.table.len {
            return Ok(None);
        }
        let next = self.table.span_at(at);
        let (warm, cold, rest_kind, rest_end) = match self.table.get(at).kind {
            WARM if next.pages >= need => {
                self.take(WARM, next);
                (Span::new(at, need), Span::EMPTY, WARM, next.end())
            }
            WARM if next.end() < self.table.len && self.table.get(next.end()).kind == COLD => {
                let after = self.table.span_at(next.end());
                if u64::from(next.pages) + u64::from(after.pages) < u64::from(need) {
                    return Ok(None);
                }
                self.take(WARM, next);
                self.take(COLD, after);
                let cold = Span::new(after.start, need - next.pages);
                (next, cold, COLD, after.end())
            }
            COLD if next.pages >= need => {
                self.take(COLD, next);
                (Span::EMPTY, Span::new(at, need), COLD, next.end())
            }
            _ => return Ok(None),
        };
        self.table.unmark(block);
        self.table.mark(Span::new(start, new), USED);
        let grown_end = start + new;
        self.put_unmerged(rest_kind, Span::new(grown_end, rest_end - grown_end));
        self.warm_pages -= u64::from(warm.pages);
        self.used += u64::from(need);
        Ok(Some(Grant {
            block: Span::new(at, need),
            cold: [cold, Span::EMPTY],
            warm,
        }))
    }

    /// Shrinks the block `start..start + old` to `new` pages (`0 < new <
    /// old`); the tail turns warm, or cold if `punched` (the caller gave
    /// its pages back).
    pub(crate) fn shrink(
        &mut self,
        start: u32,
        old: u32,
        new: u32,
        punched: bool,
    ) -> Result<(), NotABlock> {
        let block = self.check_span(start, old, USED)?;
        debug_assert!(0 < new && new < old);
        self.table.unmark(block);
        self.table.mark(Span::new(start, new), USED);
        let tail = Span::new(start + new, old - new);
        self.used -= u64::from(tail.pages);
        if punched {
            self.put(COLD, tail);
        } else {
            self.warm_pages += u64::from(tail.pages);
            self.put(WARM, tail);
        }
        Ok(())
    }

    /// While more than `bound` pages are warm, moves the tail of the largest
    /// warm span (as much as the excess) into transit, at most `out.len()`
    /// pieces. Returns how many it wrote; the caller punches each and calls
    /// `settle`.
    pub(crate) fn take_excess(&mut self, bound: u64, out: &mut [Span]) -> usize {
        let mut n = 0;
        while self.warm_pages > bound && n < out.len() {
            let Some(w) = self.warm.largest(&self.table) else {
                break;
            };
            let cut = (self.warm_pages - bound).min(u64::from(w.pages)) as u32;
            self.take(WARM, w);
            self.put_unmerged(WARM, Span::new(w.start, w.pages - cut));
            let piece = Span::new(w.end() - cut, cut);
            self.table.mark(piece, TRANSIT);
            self.warm_pages -= u64::from(cut);
            self.transit += u64::from(cut);
            out[n] = piece;
            n += 1;
        }
        n
    }

    /// Turns a piece from `take_excess`, now punched, cold.
    pub(crate) fn settle(&mut self, piece: Span) -> Result<(), NotABlock> {
        let span = self.check_span(piece.start, piece.pages, TRANSIT)?;
        self.table.unmark(span);
        self.transit -= u64::from(span.pages);
        self.put(COLD, span);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Books over a table in a `Vec`.
    struct Fixture {
        books: Books,
        _table: Vec<Tag>,
    }

    impl std::ops::Deref for Fixture {
        type Target = Books;
        fn deref(&self) -> &Books {
            &self.books
        }
    }

    impl std::ops::DerefMut for Fixture {
        fn deref_mut(&mut self) -> &mut Books {
            &mut self.books
        }
    }

    fn books(pages: u32, base_page: u64) -> Fixture {
        let mut table = vec![Tag::default(); pages as usize];
        // SAFETY: the table lives in the fixture as long as the books, and
        // only they use it (the Vec's heap buffer does not move).
        let books = unsafe { Books::new(table.as_mut_ptr(), pages, base_page) };
        Fixture {
            books,
            _table: table,
        }
    }

    /// Per-page state, as the tests model it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Page {
        Used,
        Warm,
        Cold,
        Transit,
    }

    impl Books {
        /// Walks the table, checks every invariant, and returns each page's
        /// state and the list of spans.
        fn check(&self) -> (Vec<Page>, Vec<(Span, u32)>) {
            let len = self.table.len;
            let mut pages = Vec::with_capacity(len as usize);
            let mut spans = Vec::new();
            let mut at = 0;
            let (mut used, mut warm, mut transit) = (0u64, 0u64, 0u64);
            while at < len {
                let t = self.table.get(at);
                assert!(t.len > 0 && at + t.len <= len, "span at {at}: {t:?}");
                let span = Span::new(at, t.len);
                let last = self.table.get(span.end() - 1);
                assert_eq!(
                    (last.len, last.kind),
                    (t.len, t.kind),
                    "end tag of {span:?}"
                );
                for i in at + 1..span.end().saturating_sub(1) {
                    assert_eq!(self.table.get(i), Tag::default(), "interior tag {i}");
                }
                let state = match t.kind {
                    USED => Page::Used,
                    WARM => Page::Warm,
                    COLD => Page::Cold,
                    TRANSIT => Page::Transit,
                    k => panic!("kind {k} at {at}"),
                };
                match state {
                    Page::Used => used += u64::from(t.len),
                    Page::Warm => warm += u64::from(t.len),
                    Page::Transit => transit += u64::from(t.len),
                    Page::Cold => {}
                }
                if let Some(&(_, kind)) = spans.last() {
                    assert!(
                        !(kind == t.kind && (kind == WARM || kind == COLD)),
                        "adjacent free spans of one kind at {at}"
                    );
                }
                pages.extend(std::iter::repeat_n(state, t.len as usize));
                spans.push((span, t.kind));
                at = span.end();
            }
            assert_eq!(used, self.used, "used");
            assert_eq!(warm, self.warm_pages, "warm");
            assert_eq!(transit, self.transit, "transit");
            // Every free span is listed in its set, in the right bin, once.
            for (kind, set) in [(WARM, &self.warm), (COLD, &self.cold)] {
                let mut listed = Vec::new();
                for f in 0..FL {
                    for s in 0..SL {
                        let non_empty = self.warm_or_cold_bit(set, f, s);
                        assert_eq!(non_empty, set.heads[f][s] != NIL, "bitmap of bin {f},{s}");
                        let mut at = set.heads[f][s];
                        let mut prev = NIL;
                        while at != NIL {
                            let t = self.table.get(at);
                            assert_eq!(t.kind, kind);
                            assert_eq!(bin_of(t.len), (f, s), "span at {at} in the wrong bin");
                            assert_eq!(t.prev, prev, "back link of {at}");
                            listed.push(at);
                            prev = at;
                            at = t.next;
                        }
                    }
                }
                listed.sort_unstable();
                let expected: Vec<u32> = spans
                    .iter()
                    .filter(|s| s.1 == kind)
                    .map(|s| s.0.start)
                    .collect();
                assert_eq!(listed, expected, "the set of kind {kind}");
            }
            (pages, spans)
        }

        fn warm_or_cold_bit(&self, set: &FreeSet, f: usize, s: usize) -> bool {
            let bit = set.bins[f] & (1 << s) != 0;
            assert_eq!(set.rows & (1 << f) != 0, set.bins[f] != 0, "row bit {f}");
            bit
        }
    }

    #[test]
    fn split_merge_and_warm_first() {
        let mut b = books(1024, 0);
        let x = b.alloc(16, 1).unwrap();
        let y = b.alloc(32, 1).unwrap();
        assert_eq!(x.cold[0], x.block, "fresh pages are cold");
        assert_eq!((x.block.start, y.block.start), (0, 16));
        assert_eq!(b.used_pages(), 48);
        b.free(0, 16).unwrap();
        assert_eq!(b.warm_pages(), 16);
        b.check();
        // A smaller request reuses the warm pages, not fresh ones.
        let z = b.alloc(10, 1).unwrap();
        assert_eq!(z.block, Span::new(0, 10));
        assert_eq!(z.warm, z.block);
        assert_eq!(z.cold, [Span::EMPTY; 2]);
        b.free(0, 10).unwrap();
        b.free(16, 32).unwrap();
        let (_, spans) = b.check();
        assert_eq!(
            spans,
            vec![(Span::new(0, 48), WARM), (Span::new(48, 976), COLD)]
        );
    }

    #[test]
    fn a_larger_request_grows_around_the_warm_pages() {
        let mut b = books(1024, 0);
        let a = b.alloc(100, 1).unwrap().block;
        let _fence = b.alloc(1, 1).unwrap();
        b.free(a.start, a.pages).unwrap();
        // Warm 0..100, used 100, cold 101..: no cold neighbour to grow into.
        let g = b.alloc(150, 1).unwrap();
        assert_eq!(g.warm, Span::EMPTY);
        assert_eq!(g.block.start, 101);
        b.free(g.block.start, 150).unwrap();
        b.check();
        // Now warm 101..251 has cold after it: a 200-page block takes all of
        // it and 50 fresh pages.
        let g = b.alloc(200, 1).unwrap();
        assert_eq!(g.block, Span::new(101, 200));
        assert_eq!(g.warm, Span::new(101, 150));
        assert_eq!(g.cold, [Span::EMPTY, Span::new(251, 50)]);
        b.check();
    }

    #[test]
    fn a_fit_deep_in_a_crowded_bin_is_found() {
        // More free spans of 100 pages than `find` looks at first, then one
        // of 103 (the same bin, listed last), and nothing larger free.
        let count = SCAN as u32 + 4;
        let mut b = books(count * 101 + 104, 0);
        let spans: Vec<Span> = (0..count)
            .map(|_| {
                let s = b.alloc(100, 1).unwrap().block;
                b.alloc(1, 1).unwrap();
                s
            })
            .collect();
        let last = b.alloc(103, 1).unwrap().block;
        b.alloc(1, 1).unwrap();
        assert!(b.alloc(1, 1).is_none(), "full");
        b.free(last.start, last.pages).unwrap();
        for s in &spans {
            b.free(s.start, s.pages).unwrap();
        }
        assert_eq!(bin_of(100), bin_of(103));
        assert_eq!(b.alloc(103, 1).map(|g| g.block), Some(last));
        assert!(b.alloc(101, 1).is_none(), "only spans of 100 are left");
        // An aligned request: 98 pages aligned to 4 are sure to fit only
        // in a span of 101 or more, and none is left; some spans of 100 (of
        // another bin than 98's) hold them.
        assert_eq!(first_fitting_bin(98 + 3), first_fitting_bin(104));
        let g = b.alloc(98, 4).unwrap().block;
        assert_eq!(g.start % 4, 0);
        assert!(
            spans
                .iter()
                .any(|s| s.start <= g.start && g.end() <= s.end())
        );
        b.check();
    }

    #[test]
    fn alignment_is_of_addresses() {
        // The heap starts at page 3 of the address space.
        let mut b = books(4096, 3);
        let g = b.alloc(5, 512).unwrap();
        assert_eq!((3 + u64::from(g.block.start)) % 512, 0);
        assert_eq!(g.block.start, 509);
        let (_, spans) = b.check();
        assert_eq!(
            spans[0],
            (Span::new(0, 509), COLD),
            "the padding stays free"
        );
        assert!(b.alloc(1, 8192).is_none(), "no address that aligned fits");
    }

    #[test]
    fn in_place_growth_and_shrinking() {
        let mut b = books(1024, 0);
        let a = b.alloc(10, 1).unwrap().block;
        let c = b.alloc(10, 1).unwrap().block;
        b.free(c.start, c.pages).unwrap();
        // Warm 10..20 then cold: grow 10 -> 25 takes 10 warm and 5 cold.
        let g = b.grow(a.start, 10, 25).unwrap().unwrap();
        assert_eq!(g.block, Span::new(10, 15));
        assert_eq!(g.warm, Span::new(10, 10));
        assert_eq!(g.cold[0], Span::new(20, 5));
        b.check();
        b.shrink(0, 25, 12, false).unwrap();
        assert_eq!(b.warm_pages(), 13);
        let (_, spans) = b.check();
        assert_eq!(spans[1], (Span::new(12, 13), WARM));
        // A block up against another cannot grow.
        let d = b.alloc(13, 1).unwrap().block;
        assert_eq!(d.start, 12, "the warm tail is reused");
        assert_eq!(b.grow(0, 12, 13), Ok(None));
        b.shrink(0, 12, 4, true).unwrap();
        let (_, spans) = b.check();
        assert_eq!(
            spans[1],
            (Span::new(4, 8), COLD),
            "a punched tail turns cold"
        );
    }

    #[test]
    fn the_excess_over_the_bound_is_punched_from_the_largest() {
        let mut b = books(4096, 0);
        let blocks: Vec<Span> = [8, 100, 8, 40, 8]
            .iter()
            .map(|&n| b.alloc(n, 1).unwrap().block)
            .collect();
        b.free(blocks[1].start, 100).unwrap();
        b.free(blocks[3].start, 40).unwrap();
        assert_eq!(b.warm_pages(), 140);
        let mut out = [Span::EMPTY; 4];
        let n = b.take_excess(60, &mut out);
        assert_eq!(n, 1);
        assert_eq!(out[0], Span::new(8 + 20, 80), "the tail of the 100");
        assert_eq!((b.warm_pages(), b.transit_pages()), (60, 80));
        b.check();
        // A transit piece is not a block.
        assert_eq!(b.free(28, 80), Err(NotABlock));
        b.settle(out[0]).unwrap();
        assert_eq!(b.settle(out[0]), Err(NotABlock));
        assert_eq!(b.transit_pages(), 0);
        // Everything: several rounds of pieces if need be.
        while b.take_excess(0, &mut out[..1]) == 1 {
            b.settle(out[0]).unwrap();
        }
        assert_eq!(b.warm_pages(), 0);
        b.check();
    }

    #[test]
    fn free_pages_in_warm_and_cold_pieces_fit_once_all_are_cold() {
        let mut b = books(1024, 0);
        let blocks: Vec<Span> = (0..64).map(|_| b.alloc(16, 1).unwrap().block).collect();
        let mut out = [Span::EMPTY; 1];
        // Every fourth block stays warm; the others are freed and punched.
        for (i, s) in blocks.iter().enumerate() {
            b.free(s.start, s.pages).unwrap();
            if i % 4 != 0 {
                let bound = b.warm_pages() - 16;
                assert_eq!(b.take_excess(bound, &mut out), 1);
                b.settle(out[0]).unwrap();
            }
        }
        b.check();
        assert_eq!((b.used_pages(), b.warm_pages()), (0, 16 * 16));
        assert!(b.alloc(512, 1).is_none(), "no one span holds 512 pages");
        assert!(b.fits_once_cold(512) && !b.fits_once_cold(1025));
        while b.take_excess(0, &mut out) == 1 {
            b.settle(out[0]).unwrap();
        }
        assert!(!b.fits_once_cold(512), "nothing warm is left");
        assert_eq!(b.alloc(1024, 1).unwrap().block, Span::new(0, 1024));
    }

    #[test]
    fn frees_that_name_no_block_change_nothing() {
        let mut b = books(256, 0);
        let a = b.alloc(20, 1).unwrap().block;
        let before = b.check();
        assert_eq!(b.free(a.start, 19), Err(NotABlock), "wrong length");
        assert_eq!(b.free(a.start + 1, 19), Err(NotABlock), "inside a block");
        assert_eq!(b.free(30, 4), Err(NotABlock), "free pages");
        assert_eq!(b.free(250, 10), Err(NotABlock), "past the end");
        assert_eq!(b.free(a.start, 0), Err(NotABlock));
        assert_eq!(b.grow(a.start + 1, 5, 6), Err(NotABlock));
        assert_eq!(b.check(), before);
        b.free(a.start, 20).unwrap();
        assert_eq!(b.free(a.start, 20), Err(NotABlock), "double free");
        assert!(b.alloc(257, 1).is_none());
        assert!(b.alloc(256, 1).is_some());
        assert!(b.alloc(1, 1).is_none(), "full");
    }

    #[test]
    fn random_operations_against_a_model() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pages = 4096u32;
        let mut b = books(pages, 5);
        let mut model = vec![Page::Cold; pages as usize];
        let mut live: Vec<Span> = Vec::new();
        let fill = |model: &mut Vec<Page>, s: Span, p: Page| {
            for i in s.start..s.end() {
                model[i as usize] = p;
            }
        };
        for step in 0..20_000 {
            let op = next() % 100;
            if op < 40 || live.is_empty() {
                let n = match next() % 10 {
                    0 => 1 + (next() % 700) as u32,
                    _ => 1 + (next() % 40) as u32,
                };
                let align = [1, 1, 1, 1, 2, 16, 64][(next() % 7) as usize];
                let warm_fit = model_warm_runs(&model).iter().any(|&l| l >= n);
                let few_warm = model_warm_runs(&model).len() <= SCAN;
                if let Some(g) = b.alloc(n, align) {
                    assert_eq!(g.block.pages, n);
                    assert_eq!((5 + u64::from(g.block.start)) % u64::from(align), 0);
                    // The grant's parts tile the block and say what the
                    // pages were.
                    let mut parts = vec![g.warm, g.cold[0], g.cold[1]];
                    parts.retain(|p| p.pages > 0);
                    parts.sort_by_key(|p| p.start);
                    assert_eq!(parts.iter().map(|p| p.pages).sum::<u32>(), n, "{g:?}");
                    for w in g.warm.start..g.warm.end() {
                        assert_eq!(model[w as usize], Page::Warm, "step {step}: {g:?}");
                    }
                    for c in g.cold {
                        for i in c.start..c.end() {
                            assert_eq!(model[i as usize], Page::Cold, "step {step}: {g:?}");
                        }
                    }
                    if warm_fit && few_warm && align == 1 {
                        assert_eq!(g.warm, g.block, "step {step}: warm pages first");
                    }
                    fill(&mut model, g.block, Page::Used);
                    // Now and then the reservation "fails": punched, cold.
                    if next() % 25 == 0 {
                        b.free_cold(g.block.start, n).unwrap();
                        fill(&mut model, g.block, Page::Cold);
                    } else {
                        live.push(g.block);
                    }
                } else {
                    // Nothing refused that one span of either kind holds.
                    for kind in [Page::Warm, Page::Cold] {
                        for (start, len) in model_runs(&model, kind) {
                            let first = (start + 5).next_multiple_of(align) - 5;
                            assert!(
                                first + n > start + len,
                                "step {step}: {n} pages aligned to {align} fit in {start}+{len}"
                            );
                        }
                    }
                }
            } else if op < 70 {
                let i = (next() % live.len() as u64) as usize;
                let s = live.swap_remove(i);
                b.free(s.start, s.pages).unwrap();
                fill(&mut model, s, Page::Warm);
            } else if op < 80 {
                let i = (next() % live.len() as u64) as usize;
                let s = live[i];
                let new = s.pages + 1 + (next() % 30) as u32;
                if let Some(g) = b.grow(s.start, s.pages, new).unwrap() {
                    assert_eq!(g.block, Span::new(s.end(), new - s.pages));
                    for w in g.warm.start..g.warm.end() {
                        assert_eq!(model[w as usize], Page::Warm);
                    }
                    for i in g.cold[0].start..g.cold[0].end() {
                        assert_eq!(model[i as usize], Page::Cold);
                    }
                    fill(&mut model, g.block, Page::Used);
                    live[i] = Span::new(s.start, new);
                } else {
                    // What `grow` may use: the warm span after it and the
                    // cold one after that, or the cold span after it.
                    let after = &model[s.end() as usize..];
                    let run = |from: &[Page], p: Page| from.iter().take_while(|&&q| q == p).count();
                    let usable = match after.first() {
                        Some(Page::Warm) => {
                            let w = run(after, Page::Warm);
                            w + run(&after[w..], Page::Cold)
                        }
                        Some(Page::Cold) => run(after, Page::Cold),
                        _ => 0,
                    };
                    assert!(usable < (new - s.pages) as usize, "step {step}");
                }
            } else if op < 88 {
                let i = (next() % live.len() as u64) as usize;
                let s = live[i];
                if s.pages > 1 {
                    let new = 1 + (next() % u64::from(s.pages - 1)) as u32;
                    let punched = next() % 2 == 0;
                    b.shrink(s.start, s.pages, new, punched).unwrap();
                    let tail = Span::new(s.start + new, s.pages - new);
                    fill(
                        &mut model,
                        tail,
                        if punched { Page::Cold } else { Page::Warm },
                    );
                    live[i] = Span::new(s.start, new);
                }
            } else if op < 95 {
                let bound = next() % 300;
                let mut out = [Span::EMPTY; 3];
                let n = b.take_excess(bound, &mut out);
                for piece in &out[..n] {
                    for i in piece.start..piece.end() {
                        assert_eq!(model[i as usize], Page::Warm);
                    }
                    fill(&mut model, *piece, Page::Transit);
                }
                if n < 3 {
                    assert!(b.warm_pages() <= bound, "step {step}");
                }
                b.check();
                for piece in &out[..n] {
                    b.settle(*piece).unwrap();
                    fill(&mut model, *piece, Page::Cold);
                }
            } else {
                // A bad free changes nothing.
                let i = (next() % live.len() as u64) as usize;
                let s = live[i];
                assert_eq!(b.free(s.start, s.pages + 1), Err(NotABlock));
                if s.pages > 1 {
                    assert_eq!(b.free(s.start + 1, s.pages - 1), Err(NotABlock));
                }
            }
            let (pages_now, _) = b.check();
            assert_eq!(pages_now, model, "step {step}");
            assert_eq!(
                b.used_pages(),
                live.iter().map(|s| u64::from(s.pages)).sum::<u64>()
            );
        }
        for s in live.drain(..) {
            b.free(s.start, s.pages).unwrap();
        }
        let mut out = [Span::EMPTY; 1];
        while b.take_excess(0, &mut out) == 1 {
            b.settle(out[0]).unwrap();
        }
        let (_, spans) = b.check();
        assert_eq!(spans, vec![(Span::new(0, pages), COLD)], "all merged back");
    }

    /// The runs of `kind` in the model: (first page, length).
    fn model_runs(model: &[Page], kind: Page) -> Vec<(u32, u32)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < model.len() {
            let len = model[i..].iter().take_while(|&&p| p == kind).count();
            if len > 0 {
                runs.push((i as u32, len as u32));
            }
            i += len.max(1);
        }
        runs
    }

    /// Lengths of the runs of warm pages (each one span: warm spans never
    /// touch).
    fn model_warm_runs(model: &[Page]) -> Vec<u32> {
        let mut runs = Vec::new();
        let mut n = 0;
        for p in model {
            if *p == Page::Warm {
                n += 1;
            } else if n > 0 {
                runs.push(n);
                n = 0;
            }
        }
        if n > 0 {
            runs.push(n);
        }
        runs
    }
}
