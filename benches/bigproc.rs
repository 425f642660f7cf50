//! The seed's program in a big process, with the system allocator: what a
//! pool costs when the program already holds 0, 512 MiB or 2 GiB of touched
//! private memory (a plain `Vec`, one byte written per page), side by side
//! with Python's fork `multiprocessing.Pool(4)` in a process of the same
//! size and with the bare-process floors, all interleaved in one run.
//!
//! - shmpool: `Pool::new(4)`, a map of the squares of 0..100, `close`,
//!   `join`, drop; the median of the rounds, and of each phase (`new`, the
//!   map, and the teardown: `close` + `join` + drop);
//! - Python: `benches/python/bigproc.py`, the same program with
//!   `get_context("fork").Pool(4)`, in a python3 process that first touches
//!   the same amount of memory, timed by Python;
//! - floors: five processes forked by this one, (a) each forked, exited and
//!   reaped in turn; (b) forked one after another, alive together, then
//!   released and reaped together: the pool's shape (the template and four
//!   workers) with nothing else; and (c) the same with four, Python's shape.
//!
//! Forking copies the page tables of private memory and exiting tears them
//! down, so each process costs time in proportion to what the parent has
//! touched; a pool of four workers is five processes (the template makes
//! forking safe in a multi-threaded parent, design.md §1), Python's four.
//! Then one context row: the same 2 GiB in transparent huge pages.
//!
//! Each size is held by a process of its own (this binary, started again
//! with `--serve MIB`; Python's script for Python's side), and one round runs
//! every measurement of every size once, so all of them share the machine's
//! drift alike. They hold about 5 GiB together.
//!
//! `cargo bench --bench bigproc` (under a minute; `-- --sizes 0,512,2048
//! --rounds 9` to choose). Compare ratios within one run.

use std::time::Instant;

#[path = "support/bigproc.rs"]
mod support;

use support::*;

fn main() {
    serve_if_asked(|_| {});
    let args = Args::parse(&[0, 512, 2048], 9);
    let started = Instant::now();
    let mut servers = Vec::new();
    let mut plan = Vec::new();
    for &mib in &args.sizes_mib {
        let ours = servers.len();
        servers.push(Server::this(mib, false));
        servers.push(Server::python(mib));
        plan.extend([
            (ours, "seed"),
            (ours, "in_turn"),
            (ours, "at_once"),
            (ours, "four"),
            (ours + 1, "seed"),
        ]);
    }
    let runs = rounds(args.rounds, &mut servers, &plan);
    drop(servers);
    println!(
        "\n| touched | shmpool seed: total (new / map / teardown) | Python fork Pool(4) | \
         shmpool / Python | floor (a): 5 in turn | shmpool / (a) | floor (b): 5 at once | \
         shmpool / (b) | (c): 4 at once | Python / (c) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (k, &mib) in args.sizes_mib.iter().enumerate() {
        let run = |j: usize, col: usize| column(&runs[5 * k + j], col);
        let (ours, py) = (run(0, 0), run(4, 0));
        let (in_turn, at_once, four) = (run(1, 0), run(2, 0), run(3, 0));
        let of = |a: &Samples, b: &Samples| {
            if a.is_empty() || b.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", ratio(a.median(), b.median()))
            }
        };
        println!(
            "| {mib} MiB | {} ({} / {} / {}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            ours.show(),
            ms(run(0, 1).median()),
            ms(run(0, 2).median()),
            ms(run(0, 3).median()),
            py.show(),
            of(&ours, &py),
            in_turn.show(),
            of(&ours, &in_turn),
            at_once.show(),
            of(&ours, &at_once),
            four.show(),
            of(&py, &four),
        );
    }
    // Context: the largest size in transparent huge pages, where fork copies
    // one entry per 2 MiB instead of 512 (run after the table, so as not to
    // hold both at once).
    if let Some(&mib) = args.sizes_mib.iter().max().filter(|&&m| m > 0) {
        let mut huge = [Server::this(mib, true)];
        if huge[0].is_some() {
            let runs = rounds(
                args.rounds.min(5),
                &mut huge,
                &[(0, "seed"), (0, "at_once")],
            );
            println!(
                "\n{mib} MiB in transparent huge pages (MADV_HUGEPAGE before the first touch): \
                 shmpool seed {} ms, floor (b) {} ms",
                column(&runs[0], 0).show(),
                column(&runs[1], 0).show()
            );
        } else {
            println!("\n(no transparent huge pages here: the huge-page row is skipped)");
        }
    }
    println!(
        "\nms, median (min-max) of {} interleaved rounds; ratios of medians. Targets at \
         2 GiB: shmpool ≤ 1.0× Python; where five processes cost more than Python's four, \
         within 1.1× of the floor (five bare processes of the same size: (a) forked, \
         exited and reaped in turn; (b) alive together, the pool's shape). (total {:.0} s)",
        args.rounds,
        started.elapsed().as_secs_f64()
    );
}
