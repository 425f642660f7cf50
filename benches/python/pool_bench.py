#!/usr/bin/env python3
"""Python baselines for benches/compare.rs: multiprocessing.Pool on the seed
example (create a pool of 4, map squares over 0..100, close, join; the
median of 5 warm runs) and on 50,000 apply_async + get, plus map throughput at several sizes for the plot.

Prints one JSON object on stdout. Usage: python3 pool_bench.py [--quick]
(everything) or python3 pool_bench.py --seed (the seed only, its five warm
runs listed: compare.rs runs it between its own seeds).
"""
import json
import multiprocessing
import statistics
import sys
import time


def square(x):
    return x * x


def seed_end_to_end():
    t = time.perf_counter()
    with multiprocessing.Pool(4) as pool:
        out = pool.map(square, range(100))
        pool.close()
        pool.join()
    assert out[99] == 9801
    return time.perf_counter() - t


def apply_async_rate(n, pool):
    t = time.perf_counter()
    pending = [pool.apply_async(square, (i,)) for i in range(n)]
    total = sum(r.get() for r in pending)
    elapsed = time.perf_counter() - t
    assert total == sum(i * i for i in range(n))
    return n / elapsed


def map_rate(n, pool, reps):
    data = list(range(n))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        pool.map(square, data, chunksize=max(1, n // 16))
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main():
    quick = "--quick" in sys.argv
    workers = len(__import__("os").sched_getaffinity(0))
    # One unmeasured run first, as the Rust side warms up too: the first
    # Pool of a fresh interpreter also imports and sets up
    # multiprocessing (about 30 ms against 10-15 ms warm).
    seed_end_to_end()
    seed = [seed_end_to_end() for _ in range(5)]
    if "--seed" in sys.argv:
        print(json.dumps({"seed_runs_s": seed}))
        return
    with multiprocessing.Pool(workers) as pool:
        pool.map(square, range(1000))  # warm up
        rate = apply_async_rate(20_000 if quick else 50_000, pool)
        sizes = [10**k for k in range(2, 7 if quick else 8)]
        throughput = {n: map_rate(n, pool, 3) for n in sizes}
    print(json.dumps({
        "python": sys.version.split()[0],
        "workers": workers,
        "seed_end_to_end_s": statistics.median(seed),
        "apply_async_tasks_per_s": rate,
        "map_elements_per_s": throughput,
    }))


if __name__ == "__main__":
    main()
