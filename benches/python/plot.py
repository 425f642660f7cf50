#!/usr/bin/env python3
"""Draws throughput against input size for serial, rayon, shmpool and
Python's Pool, from the CSV that `cargo bench --bench compare -- --csv FILE`
writes. Usage: python3 plot.py FILE.csv OUT.png  (needs matplotlib)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, out = sys.argv[1], sys.argv[2]
    rows = list(csv.DictReader(open(src)))
    sizes = [int(r["size"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, style in [
        ("serial", "serial Rust", "k--"),
        ("rayon", "rayon", "b-o"),
        ("shmpool", "shmpool", "r-s"),
        ("python", "Python multiprocessing.Pool", "g-^"),
    ]:
        pts = [(s, float(r[key])) for s, r in zip(sizes, rows) if r.get(key)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input size (elements of f64)")
    ax.set_ylabel("throughput (elements / s)")
    ax.set_title("map x*x: throughput against input size (2 cores, one run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
