//! The cluster against one pool on the same host, side by side in one run.
//!
//! `cargo bench -p shmpool-mpi` runs this binary, which starts itself under
//! `mpirun` twice (2 ranks, then 4) over shared memory (and the 2-rank part
//! once more over TCP on the loopback), and prints one table. Rows, each the
//! median of several interleaved rounds with its min-max:
//!
//! - a compute-heavy map over 1M `f64` (about 0.3 µs per element):
//!   `map_from_root` on 2 ranks × 1 worker against `Pool::map` of one pool of
//!   2 workers (the same host, the same cores), with its floors: the two
//!   ranks' local maps alone, and the data's round trip alone (scatter +
//!   gather, no map);
//! - `map_local` against the rank's own `Pool::map` on the same block
//!   (compute-heavy and `x * x`, large and small), with its floor: the
//!   pool's map followed by a bare `MPI_Allreduce`;
//! - the agreement step (`Cluster::agree`, one `MPI_Allreduce`), at 2 and 4
//!   ranks, with its floor: a bare `MPI_Allreduce` and `MPI_Barrier`.
//!
//! While one rank measures alone, the others wait in a sleeping barrier
//! (`MPI_Ibarrier` polled every 100 µs), so that no busy-polling rank takes
//! a core from the pool being measured.

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use shmpool::{Pool, ShmVec};
use shmpool_mpi::Cluster;

const N: usize = 1 << 20;
/// Interleaved rounds of each map measurement.
const ROUNDS: usize = 9;
/// Agreements per timed batch, and batches.
const AGREES: usize = 2000;
const BATCHES: usize = 15;

/// About 0.3 µs of arithmetic per element, not vectorisable.
fn heavy(x: f64) -> f64 {
    let mut y = x;
    for _ in 0..16 {
        y = (y * 1.000_001 + 0.5).sin();
    }
    y
}

fn square(x: f64) -> f64 {
    x * x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bench-rank") {
        rank_main(args.get(i + 1).map(String::as_str).unwrap_or("maps"));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing to list
    }
    driver();
}

/// One mpirun: a label, the ranks, the part to measure, the transport.
type Run<'a> = (&'a str, usize, &'a str, &'a [(&'a str, &'a str)]);

fn driver() {
    let exe = std::env::current_exe().expect("this binary's path");
    let vader = [("OMPI_MCA_btl", "self,vader")];
    let tcp = [
        ("OMPI_MCA_btl", "self,tcp"),
        ("OMPI_MCA_btl_tcp_if_include", "lo"),
    ];
    println!("host: {} cores available", shmpool_mpi::workers_per_rank());
    let runs: [Run<'_>; 4] = [
        ("2 ranks, shared memory", 2, "maps", &vader),
        ("2 ranks, tcp (loopback)", 2, "transfer", &tcp),
        ("2 ranks, shared memory", 2, "agree", &vader),
        ("4 ranks, shared memory", 4, "agree", &vader),
    ];
    for (label, np, part, env) in runs {
        println!("\n## {label}: {part}");
        let status = std::process::Command::new("mpirun")
            .args(["-np", &np.to_string(), "--bind-to", "none"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .env("OMPI_MCA_pml", "ob1")
            .envs(env.iter().copied())
            .arg(&exe)
            .args(["--bench-rank", part])
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("mpirun failed: {s}"),
            Err(e) => {
                println!("skipped: cannot run mpirun ({e})");
                return;
            }
        }
    }
}

/// Median, min and max.
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn row(name: &str, unit: &str, xs: Vec<f64>) -> f64 {
    let (med, lo, hi) = stats(xs);
    println!("| {name:<58} | {med:>9.3} {unit} | {lo:>9.3} - {hi:<9.3} |");
    med
}

fn ratio(name: &str, num: &[f64], den: &[f64]) {
    let rs: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
    let (med, lo, hi) = stats(rs);
    println!("| {name:<58} | {med:>9.3} x  | {lo:>9.3} - {hi:<9.3} |");
}

/// An `MPI_Barrier` that sleeps while it waits, leaving the cores to the
/// rank that measures.
fn sleepy_barrier(world: &SimpleCommunicator) {
    let mut request = world.immediate_barrier();
    loop {
        match request.test() {
            Ok(_) => return,
            Err(r) => {
                request = r;
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The slowest rank's `value` (on every rank).
fn max_over_ranks(world: &SimpleCommunicator, value: f64) -> f64 {
    let mut out = 0.0f64;
    world.all_reduce_into(&value, &mut out, SystemOperation::max());
    out
}

fn rank_main(part: &str) {
    // Every pool before MPI starts: one worker per rank for the cluster,
    // and the reference pool of two workers (used on rank 0 only).
    let one = Pool::new(1).unwrap();
    let two = Pool::new(2).unwrap();
    // Workers that sleep as soon as they are idle, leaving the cores to
    // the ranks' MPI polling.
    let quiet = Pool::builder().workers(1).spin(0).build().unwrap();
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let cluster = Cluster::new(&world, &one).unwrap();
    let xs: Vec<f64> = (0..N).map(|i| i as f64 / N as f64).collect();
    if cluster.rank() == 0 {
        println!(
            "| {:<58} | {:>12} | {:^21} |\n|{}|{}|{}|",
            "measure",
            "median",
            "min - max",
            "-".repeat(60),
            "-".repeat(14),
            "-".repeat(23)
        );
    }
    match part {
        "maps" => {
            maps(&world, &cluster, &two, &xs);
            let quiet = Cluster::new(&world, &quiet).unwrap();
            let small = quiet
                .scatter((quiet.rank() == 0).then_some(&xs[..20_000]))
                .unwrap();
            map_local_case(
                &world,
                &quiet,
                "x * x, 10k f64 per rank, spin(0) pools",
                &small,
                square,
            );
        }
        "transfer" => transfer(&world, &cluster, &xs),
        _ => agree(&world, &cluster),
    }
}

fn maps(world: &SimpleCommunicator, cluster: &Cluster<'_>, two: &Pool, xs: &[f64]) {
    let root = cluster.rank() == 0;
    let root_data = root.then_some(xs);
    let local: ShmVec<f64> = cluster.scatter(root_data).unwrap();
    let (mut pool2, mut mfr, mut floor_map, mut floor_move) = (vec![], vec![], vec![], vec![]);
    // One unmeasured round of each first (page faults, first messages).
    for round in 0..=ROUNDS {
        // One pool of 2 workers, alone on the host.
        if root {
            let t = Instant::now();
            let ys = two.map(xs, heavy).unwrap();
            let took = ms(t.elapsed());
            std::hint::black_box(&ys);
            if round > 0 {
                pool2.push(took);
            }
        }
        sleepy_barrier(world);
        // The cluster: scatter, map on each rank's one worker, gather.
        world.barrier();
        let t = Instant::now();
        let all = cluster.map_from_root(root_data, heavy).unwrap();
        let took = ms(t.elapsed());
        if root {
            assert_eq!(all.as_ref().map(|a| a.len()), Some(N));
            if round > 0 {
                mfr.push(took);
            }
        }
        // Floor 1: the two ranks' maps alone (the slower one).
        world.barrier();
        let t = Instant::now();
        let ys = cluster.pool().map(&local, heavy).unwrap();
        let took = max_over_ranks(world, ms(t.elapsed()));
        std::hint::black_box(&ys);
        if round > 0 {
            floor_map.push(took);
        }
        // Floor 2: the data's round trip alone.
        world.barrier();
        let t = Instant::now();
        let block = cluster.scatter(root_data).unwrap();
        let back = cluster.gather(&block).unwrap();
        let took = ms(t.elapsed());
        std::hint::black_box(&back);
        if round > 0 {
            floor_move.push(took);
        }
    }
    if root {
        println!(
            "| {:<58} | {:>12} | {:>21} |",
            "compute-heavy map, 1M f64 (ms)", "", ""
        );
        row("one pool, 2 workers: Pool::map", "ms", pool2.clone());
        row("2 ranks x 1 worker: map_from_root", "ms", mfr.clone());
        row(
            "floor: the 2 ranks' local maps alone (slower rank)",
            "ms",
            floor_map.clone(),
        );
        row(
            "floor: scatter + gather alone, no map",
            "ms",
            floor_move.clone(),
        );
        ratio("map_from_root / one pool (target <= 1.10)", &mfr, &pool2);
        let floor: Vec<f64> = floor_map
            .iter()
            .zip(&floor_move)
            .map(|(a, b)| a + b)
            .collect();
        ratio("(floor map + floor move) / one pool", &floor, &pool2);
    }
    // map_local against the same rank's own Pool::map on the same block.
    let small = cluster.scatter(root.then_some(&xs[..20_000])).unwrap();
    map_local_case(
        world,
        cluster,
        "compute-heavy, 512k f64 per rank",
        &local,
        heavy,
    );
    map_local_case(world, cluster, "x * x, 512k f64 per rank", &local, square);
    map_local_case(world, cluster, "x * x, 10k f64 per rank", &small, square);
    per_rank_throughput(world, cluster, two, xs);
}

/// `Cluster::map_local` against the rank's own `Pool::map` on `block`.
fn map_local_case<F>(
    world: &SimpleCommunicator,
    cluster: &Cluster<'_>,
    name: &str,
    block: &[f64],
    f: F,
) where
    F: Fn(f64) -> f64 + Copy + Send + Sync + 'static,
{
    let reps = if block.len() < 100_000 { 200 } else { 1 };
    let (mut plain, mut agreed, mut synced) = (vec![], vec![], vec![]);
    for round in 0..=ROUNDS * 2 {
        world.barrier();
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(cluster.pool().map(block, f).unwrap());
        }
        let p = max_over_ranks(world, ms(t.elapsed()) / reps as f64);
        // The floor of any collective map: the pool's map, then a bare
        // MPI_Allreduce, so that each round waits for the slower rank.
        world.barrier();
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(cluster.pool().map(block, f).unwrap());
            let mut out = 0i32;
            world.all_reduce_into(&1i32, &mut out, SystemOperation::min());
        }
        let y = max_over_ranks(world, ms(t.elapsed()) / reps as f64);
        world.barrier();
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(cluster.map_local(block, f).unwrap());
        }
        let a = max_over_ranks(world, ms(t.elapsed()) / reps as f64);
        if round > 0 {
            plain.push(p);
            agreed.push(a);
            synced.push(y);
        }
    }
    if cluster.rank() == 0 {
        println!(
            "| {:<58} | {:>12} | {:>21} |",
            format!("{name} (ms)"),
            "",
            ""
        );
        row("Pool::map on the block", "ms", plain.clone());
        row("Cluster::map_local on the block", "ms", agreed.clone());
        row(
            "floor: Pool::map + bare MPI_Allreduce",
            "ms",
            synced.clone(),
        );
        ratio("map_local / Pool::map (target <= 1.10)", &agreed, &plain);
        ratio("map_local / floor", &agreed, &synced);
    }
}

/// Elements per second of one rank's pool of 2 workers (the whole host),
/// for the weak-scaling model.
fn per_rank_throughput(world: &SimpleCommunicator, cluster: &Cluster<'_>, two: &Pool, xs: &[f64]) {
    let root = cluster.rank() == 0;
    let shm = two.to_shm(xs).unwrap();
    throughput(world, root, two, &shm, "compute-heavy", heavy);
    throughput(world, root, two, &shm, "x * x", square);
}

fn throughput<F>(world: &SimpleCommunicator, root: bool, two: &Pool, shm: &[f64], name: &str, f: F)
where
    F: Fn(f64) -> f64 + Copy + Send + Sync + 'static,
{
    let mut rates = vec![];
    for round in 0..=ROUNDS {
        if root {
            let t = Instant::now();
            std::hint::black_box(two.map(shm, f).unwrap());
            if round > 0 {
                rates.push(N as f64 / t.elapsed().as_secs_f64() / 1e6);
            }
        }
        sleepy_barrier(world);
    }
    if root {
        row(
            &format!("one rank, pool of 2 workers: {name} (M elements/s)"),
            "  ",
            rates,
        );
    }
}

/// Scatter and gather alone, for the transport's bandwidth.
fn transfer(world: &SimpleCommunicator, cluster: &Cluster<'_>, xs: &[f64]) {
    let root = cluster.rank() == 0;
    let (mut scatter, mut gather) = (vec![], vec![]);
    for round in 0..=ROUNDS {
        world.barrier();
        let t = Instant::now();
        let block = cluster.scatter(root.then_some(xs)).unwrap();
        let s = ms(t.elapsed());
        world.barrier();
        let t = Instant::now();
        std::hint::black_box(cluster.gather(&block).unwrap());
        let g = ms(t.elapsed());
        if round > 0 {
            scatter.push(s);
            gather.push(g);
        }
    }
    if root {
        let moved = (N / 2 * 8) as f64 / 1e6; // MB to the other rank
        row("scatter of 1M f64 (ms)", "ms", scatter.clone());
        row("gather of 1M f64 (ms)", "ms", gather.clone());
        let bw: Vec<f64> = scatter.iter().map(|t| moved / t).collect();
        row("scatter: GB/s to the other rank", "  ", bw);
    }
}

/// The agreement step against bare MPI collectives, interleaved.
fn agree(world: &SimpleCommunicator, cluster: &Cluster<'_>) {
    let (mut agreed, mut allreduce, mut barrier) = (vec![], vec![], vec![]);
    for batch in 0..=BATCHES {
        world.barrier();
        let t = Instant::now();
        for _ in 0..AGREES {
            cluster.agree(Ok(())).unwrap();
        }
        let a = t.elapsed().as_secs_f64() * 1e6 / AGREES as f64;
        world.barrier();
        let t = Instant::now();
        for _ in 0..AGREES {
            let mut out = 0i32;
            world.all_reduce_into(&1i32, &mut out, SystemOperation::min());
        }
        let r = t.elapsed().as_secs_f64() * 1e6 / AGREES as f64;
        world.barrier();
        let t = Instant::now();
        for _ in 0..AGREES {
            world.barrier();
        }
        let b = t.elapsed().as_secs_f64() * 1e6 / AGREES as f64;
        if batch > 0 {
            agreed.push(max_over_ranks(world, a));
            allreduce.push(max_over_ranks(world, r));
            barrier.push(max_over_ranks(world, b));
        }
    }
    if cluster.rank() == 0 {
        let n = cluster.size();
        row(
            &format!("agreement (Cluster::agree), {n} ranks (µs)"),
            "µs",
            agreed,
        );
        row(
            &format!("floor: bare MPI_Allreduce of one int, {n} ranks (µs)"),
            "µs",
            allreduce,
        );
        row(
            &format!("floor: bare MPI_Barrier, {n} ranks (µs)"),
            "µs",
            barrier,
        );
    }
}
