#!/usr/bin/env python3
"""Python's side of benches/bigproc.rs: the seed's program (a fork
multiprocessing.Pool(4), map of the squares of 0..100, close, join) in a
process that first allocates and touches MIB mebibytes of private memory
(a bytearray, one byte written per page), as a big numeric program would.

Usage: python3 bigproc.py MIB. It prints "ready" once the memory is touched
and one warm-up run is done, then runs the seed once per line read on stdin
and prints its wall time in seconds, so that the Rust runner can interleave
these runs with its own. It ends at end of input.
"""
import multiprocessing
import sys
import time


def square(x):
    return x * x


def seed(ctx):
    t = time.perf_counter()
    pool = ctx.Pool(4)
    out = pool.map(square, range(100))
    pool.close()
    pool.join()
    elapsed = time.perf_counter() - t
    assert out[99] == 9801
    return elapsed


def main():
    size = int(sys.argv[1]) << 20
    page = 4096
    held = bytearray(size)
    if size:
        # One byte per page, written: the pages are private and resident,
        # and fork copies their page-table entries.
        held[::page] = b"\x01" * len(range(0, size, page))
    # The start method Python used by default on Linux before 3.14, named
    # explicitly (3.14 made forkserver the default).
    ctx = multiprocessing.get_context("fork")
    seed(ctx)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(repr(seed(ctx)), flush=True)
    assert len(held) == size


if __name__ == "__main__":
    main()
