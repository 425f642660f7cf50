//! Moving blocks of plain-old-data between ranks: the partition of an array
//! into blocks, and sends and receives of any `Pod` slice as bytes, in
//! pieces small enough for MPI's `int` counts.

use std::ops::Range;

use bytemuck::Pod;
use mpi::Rank;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The largest message: MPI counts are C `int`s, so a slice is sent in
/// pieces of at most this many bytes (1 GiB).
pub(crate) const PIECE: usize = 1 << 30;

/// The tag of block transfers (`scatter`, `gather`). The cluster's
/// communicator is its own (a duplicate), so no user message can match it.
pub(crate) const TAG_BLOCK: mpi::Tag = 17;

/// The global index range of block `rank` of `n` elements split over
/// `ranks`: contiguous blocks in rank order, whose lengths differ by at most
/// one (the first `n % ranks` blocks are one longer).
///
/// ```text
/// n = 10, ranks = 4:  0..3 | 3..6 | 6..8 | 8..10
/// n = 2,  ranks = 4:  0..1 | 1..2 | 2..2 | 2..2
/// ```
pub(crate) fn block(n: usize, ranks: usize, rank: usize) -> Range<usize> {
    let ranks = ranks.max(1);
    let (base, extra) = (n / ranks, n % ranks);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The bytes of a `Pod` slice (none for a zero-sized type).
pub(crate) fn bytes_of<T: Pod>(s: &[T]) -> &[u8] {
    if size_of::<T>() == 0 {
        return &[];
    }
    bytemuck::cast_slice(s)
}

/// The bytes of a mutable `Pod` slice (none for a zero-sized type).
pub(crate) fn bytes_of_mut<T: Pod>(s: &mut [T]) -> &mut [u8] {
    if size_of::<T>() == 0 {
        return &mut [];
    }
    bytemuck::cast_slice_mut(s)
}

/// Sends `to[i].1` to rank `to[i].0`, and receives `from[j].1` from rank
/// `from[j].0`, all at once (non-blocking), in pieces of at most [`PIECE`]
/// bytes; returns when every transfer is complete. The receiver of a block
/// must pass a buffer of exactly the sender's length: both sides compute it
/// from the same agreed layout.
pub(crate) fn exchange(
    comm: &SimpleCommunicator,
    to: &[(Rank, &[u8])],
    from: &mut [(Rank, &mut [u8])],
) {
    let pieces = |len: usize| len.div_ceil(PIECE);
    let count = to.iter().map(|(_, b)| pieces(b.len())).sum::<usize>()
        + from.iter().map(|(_, b)| pieces(b.len())).sum::<usize>();
    if count == 0 {
        return;
    }
    mpi::request::multiple_scope(count, |scope, requests| {
        for (rank, buf) in from.iter_mut() {
            let process = comm.process_at_rank(*rank);
            for piece in buf.chunks_mut(PIECE) {
                requests.add(process.immediate_receive_into_with_tag(scope, piece, TAG_BLOCK));
            }
        }
        for (rank, buf) in to {
            let process = comm.process_at_rank(*rank);
            for piece in buf.chunks(PIECE) {
                requests.add(process.immediate_send_with_tag(scope, piece, TAG_BLOCK));
            }
        }
        let mut done = Vec::with_capacity(count);
        requests.wait_all(&mut done);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_partition_in_rank_order() {
        assert_eq!(
            (0..4).map(|r| block(10, 4, r)).collect::<Vec<_>>(),
            [0..3, 3..6, 6..8, 8..10]
        );
        assert_eq!(
            (0..4).map(|r| block(2, 4, r)).collect::<Vec<_>>(),
            [0..1, 1..2, 2..2, 2..2]
        );
        for n in [0usize, 1, 2, 3, 5, 7, 64, 1001] {
            for ranks in 1..=9 {
                let mut next = 0;
                for r in 0..ranks {
                    let b = block(n, ranks, r);
                    assert_eq!(b.start, next, "n {n} ranks {ranks} rank {r}");
                    assert!(b.len() == n / ranks || b.len() == n / ranks + 1);
                    next = b.end;
                }
                assert_eq!(next, n);
            }
        }
        let huge = usize::MAX - 3;
        assert_eq!(block(huge, 4, 3).end, huge);
    }

    #[test]
    fn bytes_of_zero_sized_types_are_empty() {
        let units = [(); 5];
        assert!(bytes_of(&units).is_empty());
        assert_eq!(bytes_of(&[1u32, 2]).len(), 8);
        let mut xs = [0u16; 3];
        bytes_of_mut(&mut xs)[0] = 1;
        assert_eq!(xs[0], u16::from_ne_bytes([1, 0]));
    }
}
