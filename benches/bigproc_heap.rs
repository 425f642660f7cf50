//! The seed's program in a big process with the shared heap installed: the
//! program's 0, 512 MiB or 2 GiB of touched data lies in heap `Vec`s (one
//! memfd mapped `MAP_SHARED`), so forking copies no page tables for it.
//! Side by side, interleaved in one run: shmpool's seed (`Pool::new(4)`, a
//! map of the squares of 0..100, `close`, `join`, drop), Python's fork
//! `multiprocessing.Pool(4)` holding the same amount of private memory
//! (`benches/python/bigproc.py`), and floor (b) of `benches/bigproc.rs`
//! (five bare processes alive together, then reaped).
//!
//! Targets at 2 GiB: the seed ≤ 3 ms, ≤ 1.5× the seed at 0 MiB, and ≥ 20×
//! faster than Python. Each size is held by a process of its own (this
//! binary, started again with `--serve MIB`, each with its own heap), and
//! one round runs every measurement of every size once, so that the sizes
//! share the machine's drift alike.
//!
//! `cargo bench --bench bigproc_heap` (`-- --sizes 0,512,2048 --rounds 15`
//! to choose). Compare ratios within one run.

use std::time::Instant;

use shmpool::SharedHeap;

#[path = "support/bigproc.rs"]
mod support;

use support::*;

#[global_allocator]
// SAFETY: tasks read heap memory only through their arguments.
static HEAP: SharedHeap = unsafe { SharedHeap::new() };

fn main() {
    // A server's data must lie in its heap.
    serve_if_asked(|bytes| {
        let stats = HEAP.stats();
        assert!(
            stats.active && stats.in_use >= bytes,
            "the data should lie in the heap"
        );
    });
    let args = Args::parse(&[0, 512, 2048], 15);
    let started = Instant::now();
    if !HEAP.stats().active {
        println!("(the shared heap cannot be reserved here: nothing to measure)");
        return;
    }
    let mut servers = Vec::new();
    let mut plan = Vec::new();
    for &mib in &args.sizes_mib {
        let ours = servers.len();
        servers.push(Server::this(mib, false));
        servers.push(Server::python(mib));
        plan.extend([(ours, "seed"), (ours, "at_once"), (ours + 1, "seed")]);
    }
    let runs = rounds(args.rounds, &mut servers, &plan);
    drop(servers);
    let zero = args
        .sizes_mib
        .iter()
        .position(|&m| m == 0)
        .map(|k| column(&runs[3 * k], 0).median());
    println!(
        "\n| heap data | shmpool seed: total (new / map / teardown) | vs 0 MiB | Python fork \
         Pool(4), same size in private memory | Python / shmpool | floor (b): 5 at once |"
    );
    println!("|---|---|---|---|---|---|");
    for (k, &mib) in args.sizes_mib.iter().enumerate() {
        let run = |j: usize, col: usize| column(&runs[3 * k + j], col);
        let (ours, py) = (run(0, 0), run(2, 0));
        println!(
            "| {mib} MiB | {} ({} / {} / {}) | {} | {} | {} | {} |",
            ours.show(),
            ms(run(0, 1).median()),
            ms(run(0, 2).median()),
            ms(run(0, 3).median()),
            zero.map_or("-".to_owned(), |z| format!(
                "{:.2}",
                ratio(ours.median(), z)
            )),
            py.show(),
            if py.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}×", ratio(py.median(), ours.median()))
            },
            run(1, 0).show(),
        );
    }
    println!(
        "\nms, median (min-max) of {} interleaved rounds. Targets at 2 GiB: ≤ 3 ms, ≤ 1.5× \
         0 MiB, ≥ 20× faster than Python. (total {:.0} s)",
        args.rounds,
        started.elapsed().as_secs_f64()
    );
}
