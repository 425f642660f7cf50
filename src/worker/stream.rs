//! Streaming (non-temporal) stores for large outputs.
//!
//! A map that writes `out[i] = f(in[i])` into memory that is not in cache
//! moves three streams through the memory bus: the input is read, each output
//! line is read first (the store miss fetches it), and then written back. An
//! in-place map moves two. Non-temporal stores skip the read of the output
//! line, so a map into a separate output moves two streams as well.
//!
//! They also push the output out of the cache, which is a loss when the caller
//! reads it right away and it would have fit; so the parent only asks for
//! them when the output is large (`Builder::stream_stores_from`), and the
//! flag travels in the job's descriptor.
//!
//! [`fill`] computes a block of results into a buffer on the stack, then
//! copies the block out with non-temporal stores. The user's loop stays a
//! plain slice loop over the buffer, which the compiler vectorises as before.
//! The block is small (256 bytes: sixteen SSE registers), and the trampolines
//! hand the loop inputs of exactly the block's length, so the compiler
//! unrolls it completely and keeps the buffer in registers: the input's loads
//! and the output's streaming stores stay interleaved. With 2 KiB blocks and
//! inputs of open length, the loop went through the stack in two long phases,
//! and a memory-bound map ran 10-20% slower than rayon's threads streaming
//! the same data on an Intel Xeon guest.
//!
//! Uses `unsafe` (denied at the crate root): streaming stores write raw
//! shared memory with SIMD intrinsics.

#![allow(unsafe_code)]

use std::mem::{align_of, size_of, size_of_val};

use bytemuck::Pod;

/// Bytes per block: computed (in registers, when the loop unrolls), then
/// streamed out.
const BLOCK: usize = 256;

/// Bytes per block for element types whose size does not divide [`BLOCK`]
/// (512 B to 2 KiB elements).
const WIDE_BLOCK: usize = 2048;

/// A block buffer, aligned to a cache line.
#[repr(C, align(64))]
struct Block([u8; WIDE_BLOCK]);

/// The block size for `U`: [`BLOCK`], or [`WIDE_BLOCK`] for wide elements.
const fn block<U>() -> usize {
    if BLOCK % size_of::<U>() == 0 {
        BLOCK
    } else {
        WIDE_BLOCK
    }
}

/// Fills `out` by calling `compute(part, at)` on consecutive parts of it,
/// where `at` is the index of `part[0]` in `out`. `compute` must write every
/// element of `part`, and should read exactly `part.len()` inputs from `at`
/// (slice them to that length): the trip count of a block's loop is then a
/// constant, and the block stays in registers.
///
/// With `stream` set, on x86-64, when `U`'s size divides the block and the
/// output can be aligned to a cache line at an element boundary, the middle
/// of `out` is computed a block at a time into a buffer and stored with
/// non-temporal stores, followed by a store fence, so the stores are globally
/// visible before the caller publishes the range as done. Otherwise it is one
/// call, `compute(out, 0)`.
#[inline(always)]
pub(crate) fn fill<U: Pod>(out: &mut [U], stream: bool, mut compute: impl FnMut(&mut [U], usize)) {
    if !stream || !streamable::<U>() || size_of_val(out) < 4 * block::<U>() {
        compute(out, 0);
        return;
    }
    let Some(head) = head_len(out.as_ptr() as usize, size_of::<U>()) else {
        compute(out, 0);
        return;
    };
    let bytes = block::<U>();
    let per = bytes / size_of::<U>();
    let body = (out.len() - head) / per * per;
    compute(&mut out[..head], 0);
    // Fences on every way out, unwinding included: a panic in `compute`
    // after some streamed blocks must not leave those stores unordered.
    let _fence = Fence;
    let mut buf = Block([0; WIDE_BLOCK]);
    let part: &mut [U] = bytemuck::cast_slice_mut(&mut buf.0[..bytes]);
    let mut at = head;
    while at < head + body {
        compute(part, at);
        let dst = &mut out[at..at + per];
        // SAFETY: `dst` and `part` are both `bytes` long, do not overlap
        // (one is on the stack, the other in `out`), and `dst` starts on a
        // cache line: `head_len` chose `head` so that it does, and every block
        // is a whole number of lines. `part` starts the 64-aligned buffer.
        unsafe { stream_block(dst.as_mut_ptr().cast(), part.as_ptr().cast(), bytes) };
        at += per;
    }
    let tail = head + body;
    compute(&mut out[tail..], tail);
}

/// Copies `len` bytes from `src` to `dst`; with `stream`, on x86-64, the
/// cache-line-aligned middle of `dst` is written with non-temporal stores and
/// fenced. Used to stage large inputs: glibc's `memcpy` picks its streaming
/// threshold from the cache size `cpuid` reports, which a hypervisor can
/// overstate tenfold (320 MiB here), and then copies with ordinary stores,
/// which read every destination line first.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes, and the two
/// do not overlap.
pub(crate) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize, stream: bool) {
    if !stream || !cfg!(target_arch = "x86_64") || len < 4 * WIDE_BLOCK {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        return;
    }
    let head = (dst as usize).wrapping_neg() % 64;
    let body = (len - head) / 64 * 64;
    // SAFETY: `head + body <= len`; all three pieces lie in the caller's
    // ranges, and `dst + head` is 64-byte aligned.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        stream_lines(src.add(head), dst.add(head), body / 64);
        std::ptr::copy_nonoverlapping(
            src.add(head + body),
            dst.add(head + body),
            len - head - body,
        );
    }
    store_fence();
}

/// Copies `lines` 64-byte lines with non-temporal stores.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `64 × lines` bytes, they
/// do not overlap, and `dst` is 64-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_lines(src: *const u8, dst: *mut u8, lines: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let (src, dst) = (src.cast::<__m128i>(), dst.cast::<__m128i>());
    for i in 0..lines * 4 {
        // SAFETY: SSE2 is part of x86-64; `i < 4 × lines`, so both accesses
        // are in the caller's ranges; the load may be unaligned, the store
        // is 16-byte aligned.
        unsafe { _mm_stream_si128(dst.add(i), _mm_loadu_si128(src.add(i))) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
unsafe fn stream_lines(src: *const u8, dst: *mut u8, lines: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, 64 * lines) };
}

/// Whether values of `U` can be streamed a block at a time.
const fn streamable<U>() -> bool {
    cfg!(target_arch = "x86_64")
        && size_of::<U>() != 0
        && WIDE_BLOCK % size_of::<U>() == 0
        && align_of::<U>() <= 64
}

/// The number of elements of `size` bytes from `addr` to the first cache-line
/// boundary, if one falls on an element boundary within a line.
fn head_len(addr: usize, size: usize) -> Option<usize> {
    let to_line = addr.wrapping_neg() % 64;
    (to_line % size == 0).then_some(to_line / size)
}

/// Copies `bytes` (a multiple of 64) from `src` to `dst` with non-temporal
/// stores.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `bytes` bytes, they do not
/// overlap, and both are 16-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_block(dst: *mut u8, src: *const u8, bytes: usize) {
    use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_stream_si128};
    let (dst, src) = (dst.cast::<__m128i>(), src.cast::<__m128i>());
    for i in 0..bytes / 16 {
        // SAFETY: SSE2 is part of x86-64; `i < bytes / 16`, so both accesses
        // are in the caller's `bytes` and 16-byte aligned.
        unsafe { _mm_stream_si128(dst.add(i), _mm_load_si128(src.add(i))) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
unsafe fn stream_block(dst: *mut u8, src: *const u8, bytes: usize) {
    // SAFETY: the caller's contract; never called (`streamable` is false).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, bytes) };
}

/// Issues a store fence when dropped.
struct Fence;

impl Drop for Fence {
    fn drop(&mut self) {
        store_fence();
    }
}

/// Orders the non-temporal stores before any later store (the release of the
/// range's completion); they are weakly ordered otherwise.
#[inline(always)]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<U: Pod + PartialEq + std::fmt::Debug>(len: usize, skip: usize, f: fn(usize) -> U) {
        let mut v = vec![U::zeroed(); len + skip];
        let out = &mut v[skip..];
        fill(out, true, |part, at| {
            for (j, o) in part.iter_mut().enumerate() {
                *o = f(at + j);
            }
        });
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, f(i), "element {i} of {len} (offset {skip})");
        }
    }

    #[test]
    fn every_element_is_written_once_in_place() {
        for len in [0, 1, 100, 4 * BLOCK, 10_000, 12_345] {
            for skip in 0..9 {
                check::<f64>(len, skip, |i| i as f64 * 0.5);
                check::<u8>(len, skip, |i| i as u8);
                check::<u32>(len, skip, |i| i as u32 * 3);
                check::<[u64; 2]>(len, skip, |i| [i as u64, !(i as u64)]);
            }
        }
    }

    #[test]
    fn wide_elements_are_streamed_in_wide_blocks() {
        assert_eq!(block::<f64>(), BLOCK);
        assert_eq!(block::<[u64; 64]>(), WIDE_BLOCK);
        assert!(streamable::<[u64; 64]>() == cfg!(target_arch = "x86_64"));
        for len in [0, 1, 16, 17, 100] {
            for skip in 0..3 {
                check::<[u64; 64]>(len, skip, |i| [i as u64 ^ 0x5a; 64]);
                check::<[u8; 1024]>(len, skip, |i| [i as u8; 1024]);
            }
        }
    }

    #[test]
    fn sizes_that_do_not_divide_a_block_are_written_plainly() {
        for len in [0, 5, 10_000] {
            check::<[u8; 3]>(len, 1, |i| [i as u8, 1, 2]);
        }
    }

    #[test]
    fn streamed_copies_are_exact_at_every_offset() {
        let src: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for s_off in [0, 1, 13] {
            for d_off in [0, 5, 64] {
                for len in [0, 100, 4 * WIDE_BLOCK, 30_001] {
                    let mut dst = vec![0u8; len + d_off + 1];
                    // SAFETY: both ranges are in bounds and distinct vectors.
                    unsafe { copy(src[s_off..].as_ptr(), dst[d_off..].as_mut_ptr(), len, true) };
                    assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len]);
                    assert!(dst[..d_off].iter().all(|&b| b == 0));
                    assert_eq!(dst[d_off + len], 0, "no write past the end");
                }
            }
        }
    }

    #[test]
    fn heads_fall_on_lines() {
        assert_eq!(head_len(64, 8), Some(0));
        assert_eq!(head_len(72, 8), Some(7));
        assert_eq!(head_len(65, 8), None);
        assert_eq!(head_len(4, 3), Some(20));
    }
}
