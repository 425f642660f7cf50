//! One rank's part of the cluster tests (started by `mpirun`, see
//! `mpirun.rs`). Every operation is checked against the single-process pool
//! on the same data, at sizes with fewer elements than ranks and sizes that
//! do not divide; then failures: a task panic on one rank (or two), a worker
//! killed on one rank, a rank's arena too small, bad arguments, elements of
//! another size than the root's, a task that never returns (in pools with a
//! `task_timeout`), an intercommunicator, and a pool built after MPI
//! started. Each must give every rank the same error naming the failed rank,
//! promptly, and leave the cluster usable. `panicking_rank_main` is a job of
//! its own, in which one rank panics in its own code.

use std::ops::Range;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use shmpool::{Error, Pool};
use shmpool_mpi::Cluster;

/// The environment variable naming this rank's marker file: a task creates
/// it when it starts, so that the kill lands while the job runs.
const MARKER: &str = "SHMPOOL_MPI_TEST_MARKER";

/// The longest a rank may take; past it, it exits (and mpirun ends the job).
const RANK_LIMIT: Duration = Duration::from_secs(200);

/// Array lengths: empty, fewer than the ranks, not divisible by 2, 3 or 4,
/// and large enough for several ranges per worker.
const SIZES: [usize; 11] = [0, 1, 2, 3, 5, 7, 10, 1000, 1001, 65_537, 300_007];

pub fn rank_main() {
    let me = std::env::var("OMPI_COMM_WORLD_RANK")
        .or_else(|_| std::env::var("PMI_RANK"))
        .unwrap_or_else(|_| "?".into());
    // Installed before any pool: a failed check ends this rank at once
    // (mpirun then ends the others) rather than unwinding into
    // MPI_Finalize while other ranks wait in a collective. Pools wrap this
    // hook, so a task's panic still travels back as an error.
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("rank {me}: {info}");
        // SAFETY: _exit ends the process at once; nothing is left to run.
        unsafe { libc::_exit(101) };
    }));
    let marker = std::env::temp_dir().join(format!("shmpool-mpi-test-{}", std::process::id()));
    // SAFETY: no other thread exists yet. Set before the pools are built, so
    // that their workers (forked from a snapshot of this process) see it.
    unsafe { std::env::set_var(MARKER, &marker) };

    // Every pool is built before MPI starts.
    let pool = Pool::new(2).expect("pool");
    let strict = Pool::builder()
        .workers(1)
        .max_retries(0)
        .build()
        .expect("pool without retries");
    let retrying = Pool::builder()
        .workers(1)
        .max_retries(3)
        .build()
        .expect("pool with retries");
    let small = Pool::builder()
        .workers(1)
        .arena_size(4 << 20)
        .build()
        .expect("small pool");
    let timed = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_secs(1))
        .build()
        .expect("pool with a task timeout");
    thread::spawn(|| {
        thread::sleep(RANK_LIMIT);
        eprintln!("a rank missed its time limit of {RANK_LIMIT:?}");
        // SAFETY: as above.
        unsafe { libc::_exit(102) };
    });

    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let t = Instant::now();
    pool_order(&world, &pool);
    let cluster = Cluster::new(&world, &pool).expect("a pool built before MPI");
    assert_eq!((cluster.rank(), cluster.size()), (rank, size));
    results_match_the_pool(&cluster, &world, &strict);
    task_panics(&cluster);
    killed_workers(&world, &strict, &retrying, &marker);
    bad_arguments_and_full_arenas(&world, &cluster, &pool, &small);
    element_sizes_must_match(&cluster);
    hung_tasks_time_out(&world, &timed);
    intercommunicators_are_refused(&world, &pool);
    println!(
        "rank {rank} of {size}: all scenarios passed in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

/// One rank of a job in which rank 1 panics in its own code, with no panic
/// hook of the program's, while its cluster is alive, and rank 0 goes on
/// with the cluster. The job must end, not hang (see `mpirun.rs`).
pub fn panicking_rank_main() {
    thread::spawn(|| {
        thread::sleep(RANK_LIMIT);
        // SAFETY: _exit ends the process at once; nothing is left to run.
        unsafe { libc::_exit(102) };
    });
    let pool = Pool::new(1).expect("pool");
    let universe = mpi::initialize().expect("MPI initialises once");
    let cluster = Cluster::new(&universe.world(), &pool).expect("a pool built before MPI");
    if cluster.rank() == 1 {
        panic!("rank 1's own code panics");
    }
    // Never `Ok`: rank 1 is gone. Without a way out, this waits forever.
    let r = cluster.map_local(&[1u32, 2], |x| x + 1);
    println!("rank 0 went on: {r:?}");
}

/// `n` values of varied sign and magnitude, so that a floating-point sum
/// depends on its order.
fn data(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let unit = (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            unit * 10f64.powi((h % 9) as i32)
        })
        .collect()
}

/// The blocks of `n` elements over `ranks`, computed independently of the
/// crate: lengths differ by at most one, longer ones first.
fn blocks(n: usize, ranks: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for r in 0..ranks {
        let len = n / ranks + usize::from(r < n % ranks);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Checks that `result` is the error every rank should get: `Remote`
/// naming `rank`, with a message containing `text`.
#[track_caller]
fn expect_remote<T>(result: Result<T, Error>, rank: usize, text: &str) {
    match result {
        Err(Error::Remote {
            rank: r, message, ..
        }) if r == rank && message.contains(text) => {}
        Err(e) => panic!("expected rank {rank} to fail with {text:?}, got {e:?}"),
        Ok(_) => panic!("expected rank {rank} to fail with {text:?}, got Ok"),
    }
}

/// The same value on every rank.
fn same_everywhere(world: &SimpleCommunicator, bits: u64) {
    let mut all = vec![0u64; world.size() as usize];
    world.all_gather_into(&bits, &mut all[..]);
    assert!(all.iter().all(|&b| b == bits), "ranks disagree: {all:?}");
}

fn wave(x: f64) -> f64 {
    x.mul_add(1.5, -0.25).sin()
}

fn add(a: f64, b: f64) -> f64 {
    a + b
}

/// A pool built after `mpi::initialize()` (on the last rank) is refused on
/// every rank; pools built before are accepted.
fn pool_order(world: &SimpleCommunicator, pool: &Pool) {
    let (rank, last) = (world.rank() as usize, world.size() as usize - 1);
    let late = (rank == last).then(|| Pool::new(1).expect("a pool after MPI"));
    let chosen = late.as_ref().unwrap_or(pool);
    expect_remote(
        Cluster::new(world, chosen),
        last,
        "built after MPI was initialised",
    );
    drop(late);
    let cluster = Cluster::new(world, pool).expect("a pool built before MPI");
    let ys = cluster.map_local(&[1u32, 2], |x| x * 3).unwrap();
    assert_eq!(ys, vec![3, 6]);
}

/// Every operation equals the single-process pool on the same data.
fn results_match_the_pool(cluster: &Cluster<'_>, world: &SimpleCommunicator, one_worker: &Pool) {
    let (rank, size) = (cluster.rank(), cluster.size());
    let pool = cluster.pool();
    // The same reductions with one worker per rank instead of two.
    let narrow = Cluster::new(world, one_worker).unwrap();
    for n in SIZES {
        let xs = data(n);
        let all = blocks(n, size);
        let mine = all[rank].clone();
        assert_eq!(cluster.block(n), mine, "n {n}");
        let root_data = (rank == 0).then_some(&xs[..]);

        let local = cluster.scatter(root_data).unwrap();
        assert_eq!(&local[..], &xs[mine.clone()], "scatter, n {n}");
        assert_eq!(cluster.offset(), mine.start, "offset, n {n}");
        // The block is in this rank's pool's shared memory: read in place.
        let staged = pool.stats().bytes_staged;
        pool.map(&local, wave).unwrap();
        assert_eq!(
            pool.stats().bytes_staged,
            staged,
            "scatter's block is shared, n {n}"
        );

        let reference = pool.map(&xs, wave).unwrap();
        let ys = cluster.map_local(&local, wave).unwrap();
        assert_eq!(&ys[..], &reference[mine.clone()], "map_local, n {n}");
        let gathered = cluster.gather(&ys).unwrap();
        let from_root = cluster.map_from_root(root_data, wave).unwrap();
        // Data on other ranks than the root is ignored.
        let everywhere = cluster.map_from_root(Some(&xs[..]), wave).unwrap();
        if rank == 0 {
            assert_eq!(gathered.unwrap(), reference, "gather, n {n}");
            assert_eq!(from_root.unwrap(), reference, "map_from_root, n {n}");
            assert_eq!(everywhere.unwrap(), reference, "map_from_root, n {n}");
        } else {
            assert!(gathered.is_none() && from_root.is_none() && everywhere.is_none());
        }

        let indexed = cluster
            .map_local_indexed(&local, |x: &[f64], i, global| x[i] * 2.0 + global as f64)
            .unwrap();
        let want = pool
            .map_indexed(&xs, |x: &[f64], i| x[i] * 2.0 + i as f64)
            .unwrap();
        assert_eq!(
            &indexed[..],
            &want[mine.clone()],
            "map_local_indexed, n {n}"
        );

        // Integer reductions are exact: equal to the pool's over all data.
        let ints: Vec<u64> = (0..n as u64)
            .map(|i| i * 2_654_435_761 % 1_000_003)
            .collect();
        let local_ints = cluster.scatter((rank == 0).then_some(&ints[..])).unwrap();
        let square = |x: u64| x * x;
        let sum = cluster
            .map_reduce(&local_ints, square, u64::wrapping_add, 0)
            .unwrap();
        let want = pool
            .map_reduce(&ints, square, u64::wrapping_add, 0)
            .unwrap();
        assert_eq!(sum, want, "integer map_reduce, n {n}");
        let max = cluster.map_reduce(&local_ints, |x| x, u64::max, 0).unwrap();
        assert_eq!(max, ints.iter().copied().max().unwrap_or(0), "max, n {n}");

        // Floating point: each block reduced by a pool like this rank's,
        // the partials folded in rank order; bit-identical, every run, on
        // every rank.
        let partials: Vec<f64> = all
            .iter()
            .map(|b| pool.map_reduce(&xs[b.clone()], wave, add, 0.0).unwrap())
            .collect();
        let want = pool
            .map_reduce_chunked(&partials, size, |a| a, add, 0.0)
            .unwrap();
        let got = cluster.map_reduce(&local, wave, add, 0.0).unwrap();
        let again = cluster.map_reduce(&local, wave, add, 0.0).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "map_reduce, n {n}");
        assert_eq!(again.to_bits(), got.to_bits(), "map_reduce rerun, n {n}");
        same_everywhere(world, got.to_bits());

        let partials: Vec<f64> = all
            .iter()
            .map(|b| {
                pool.map_reduce_chunked(&xs[b.clone()], 1000, wave, add, 0.0)
                    .unwrap()
            })
            .collect();
        let want = pool
            .map_reduce_chunked(&partials, size, |a| a, add, 0.0)
            .unwrap();
        let got = cluster
            .map_reduce_chunked(&local, 1000, wave, add, 0.0)
            .unwrap();
        let one = narrow
            .map_reduce_chunked(&local, 1000, wave, add, 0.0)
            .unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "map_reduce_chunked, n {n}");
        assert_eq!(
            one.to_bits(),
            got.to_bits(),
            "independent of the pools' sizes, n {n}"
        );
        same_everywhere(world, got.to_bits());

        // Other element types, and parts of any length.
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let widened = cluster
            .map_from_root((rank == 0).then_some(&bytes[..]), |b: u8| [u16::from(b); 3])
            .unwrap();
        if let Some(w) = widened {
            let want: Vec<[u16; 3]> = bytes.iter().map(|&b| [u16::from(b); 3]).collect();
            assert_eq!(w, want, "u8 -> [u16; 3], n {n}");
        }
        let units = cluster
            .scatter((rank == 0).then_some(&vec![(); n][..]))
            .unwrap();
        assert_eq!(units.len(), mine.len(), "zero-sized elements, n {n}");
        let part: Vec<u32> = (0..rank * 3 + n % 2)
            .map(|k| (rank * 1000 + k) as u32)
            .collect();
        let parts = cluster.gather(&part).unwrap();
        if let Some(parts) = parts {
            let want: Vec<u32> = (0..size)
                .flat_map(|r| (0..r * 3 + n % 2).map(move |k| (r * 1000 + k) as u32))
                .collect();
            assert_eq!(parts, want, "gather of uneven parts, n {n}");
        }
    }
}

/// A task that panics on one rank (or on two) fails the operation on every
/// rank, naming the (lowest) rank that failed; the cluster goes on.
fn task_panics(cluster: &Cluster<'_>) {
    let (rank, size) = (cluster.rank(), cluster.size());
    let last = size - 1;
    let n = 1000;
    let ids: Vec<u64> = (0..n as u64).collect();
    let local = cluster.scatter((rank == 0).then_some(&ids[..])).unwrap();
    let owner = |i: usize| blocks(n, size).iter().position(|b| b.contains(&i)).unwrap();

    let r = cluster.map_local_indexed(&local, |x: &[u64], i, global| {
        assert!(global != 999, "boom at {global}");
        x[i]
    });
    // Passed on through `agree` (as a local step of the caller's own would
    // be), the verdict still names the rank that failed.
    let r = cluster.agree(r);
    expect_remote(r, last, "boom at 999");
    let r = cluster.map_local(&local, |x: u64| {
        assert!(x != 0 && x != 999, "boom at {x}");
        x
    });
    // Rank 0 owns element 0; with one rank, either panic may come first.
    expect_remote(r, 0, "boom at");
    let r = cluster.map_from_root((rank == 0).then_some(&ids[..]), |x: u64| {
        assert!(x != 500, "bad element {x}");
        x
    });
    expect_remote(r, owner(500), "bad element 500");
    let r = cluster.map_reduce(
        &local,
        |x: u64| {
            assert!(x != 999, "bad element {x}");
            x
        },
        u64::wrapping_add,
        0,
    );
    expect_remote(r, last, "bad element 999");
    // A reduce that fails only when combining everything: on the root.
    let ones = cluster
        .scatter((rank == 0).then_some(&vec![1u64; n][..]))
        .unwrap();
    let r = cluster.map_reduce(
        &ones,
        |x: u64| x,
        |a, b| {
            assert!(a + b != 1000, "the total");
            a + b
        },
        0,
    );
    expect_remote(r, 0, "the total");

    let sum = cluster
        .map_reduce(&local, |x| x, u64::wrapping_add, 0)
        .unwrap();
    assert_eq!(sum, (0..n as u64).sum::<u64>(), "usable after the failures");
}

/// A task that runs slowly and creates this rank's marker file as it starts.
fn slow_double(x: f64) -> f64 {
    if let Some(path) = std::env::var_os(MARKER) {
        let _ = std::fs::write(path, b"started");
    }
    thread::sleep(Duration::from_millis(100));
    x * 2.0
}

/// Kills every worker of `pool` once a task has started (the marker file
/// exists). Returns how many were killed.
fn kill_when_started(pool: &Pool, marker: &Path) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "no task started within 60 s");
        thread::sleep(Duration::from_millis(2));
    }
    let pids = pool.worker_pids();
    for &pid in &pids {
        // SAFETY: kill(2) on a worker of our own pool; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    pids.len()
}

/// One rank's worker killed (`kill -9`) mid-job: without retries the job
/// fails on every rank naming that rank; with retries it succeeds.
fn killed_workers(world: &SimpleCommunicator, strict: &Pool, retrying: &Pool, marker: &Path) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let victim = size - 1;
    let local = vec![1.5f64; 8];
    for (pool, retries) in [(strict, false), (retrying, true)] {
        let cluster = Cluster::new(world, pool).unwrap();
        let _ = std::fs::remove_file(marker);
        let killed = thread::scope(|s| {
            let killer = (rank == victim).then(|| s.spawn(|| kill_when_started(pool, marker)));
            let r = cluster.map_local(&local, slow_double);
            if retries {
                assert_eq!(r.unwrap(), vec![3.0; 8], "retried after the kill");
            } else {
                expect_remote(r, victim, "SIGKILL");
            }
            killer.map(|k| k.join().unwrap())
        });
        let _ = std::fs::remove_file(marker);
        if let Some(killed) = killed {
            assert_eq!(killed, 1);
            // The replacement may be counted just after the job's verdict.
            let deadline = Instant::now() + Duration::from_secs(30);
            while pool.stats().worker_restarts == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the killed worker was not replaced"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        // The pool replaced its worker; the cluster goes on.
        let ys = cluster.map_local(&[1.0f64, 2.0], |x| x * 2.0).unwrap();
        assert_eq!(ys, vec![2.0, 4.0]);
    }
}

/// Bad arguments and an arena too small on one rank fail on every rank
/// before any data moves; the cluster goes on.
fn bad_arguments_and_full_arenas(
    world: &SimpleCommunicator,
    cluster: &Cluster<'_>,
    pool: &Pool,
    small: &Pool,
) {
    let (rank, size) = (cluster.rank(), cluster.size());
    let last = size - 1;
    expect_remote(cluster.scatter::<f64>(None), 0, "the root gave no data");
    let r = cluster.map_reduce_chunked(&[1.0f64], 0, |x| x, add, 0.0);
    expect_remote(r, 0, "chunk size");

    // The last rank's arena (4 MiB) cannot hold its 8 MiB block.
    let on_last = Cluster::new(world, if rank == last { small } else { pool }).unwrap();
    let n = size << 20;
    let big = (rank == 0).then(|| vec![0.5f64; n]);
    expect_remote(
        on_last.scatter(big.as_deref()),
        last,
        "out of shared memory",
    );
    expect_remote(
        on_last.map_from_root(big.as_deref(), |x: f64| x),
        last,
        "out of shared memory",
    );
    let ok = on_last
        .scatter((rank == 0).then_some(&[1u8, 2, 3][..]))
        .unwrap();
    assert_eq!(ok.len(), blocks(3, size)[rank].len());

    // The root's arena cannot hold everything gathered.
    let on_root = Cluster::new(world, if rank == 0 { small } else { pool }).unwrap();
    let part = vec![0.25f64; 1 << 20];
    expect_remote(on_root.gather(&part), 0, "out of shared memory");
    let ok = on_root.gather(&[rank as u32]).unwrap();
    if let Some(ok) = ok {
        assert_eq!(ok, (0..size as u32).collect::<Vec<_>>());
    }
}

/// Ranks that pass elements of different sizes to one operation (the
/// root's `u32`s, the others' `u64`s, or the reverse) fail on every rank,
/// naming the first rank whose size differs from the root's, instead of
/// receiving a short block (zeros as `Ok`) or aborting the job on an MPI
/// truncation; the cluster goes on.
fn element_sizes_must_match(cluster: &Cluster<'_>) {
    let (rank, size) = (cluster.rank(), cluster.size());
    if size == 1 {
        return;
    }
    let n = 10 * size + 3;
    let narrow: Vec<u32> = (0..n as u32).collect();
    let wide: Vec<u64> = (0..n as u64).collect();
    // scatter: wider elements than the root's, then narrower.
    if rank == 0 {
        let r = cluster.scatter(Some(&narrow[..]));
        expect_remote(r, 1, "element");
        let r = cluster.scatter(Some(&wide[..]));
        expect_remote(r, 1, "element");
    } else {
        expect_remote(cluster.scatter::<u64>(None), 1, "element");
        expect_remote(cluster.scatter::<u32>(None), 1, "element");
    }
    // gather: parts of narrower elements than the root's, then wider.
    if rank == 0 {
        expect_remote(cluster.gather(&wide[..3]), 1, "element");
        expect_remote(cluster.gather(&narrow[..3]), 1, "element");
    } else {
        expect_remote(cluster.gather(&narrow[..3]), 1, "element");
        expect_remote(cluster.gather(&wide[..3]), 1, "element");
    }
    // map_reduce: partials of another size than the root's.
    if rank == 0 {
        let r = cluster.map_reduce(&narrow, |x| x, u32::wrapping_add, 0);
        expect_remote(r, 1, "bytes");
        let r = cluster.map_reduce(&wide, |x| x, u64::wrapping_add, 0);
        expect_remote(r, 1, "bytes");
    } else {
        let r = cluster.map_reduce(&wide, |x| x, u64::wrapping_add, 0);
        expect_remote(r, 1, "bytes");
        let r = cluster.map_reduce(&narrow, |x| x, u32::wrapping_add, 0);
        expect_remote(r, 1, "bytes");
    }
    let ok = cluster.gather(&narrow[..rank]).unwrap();
    if let Some(ok) = ok {
        let want: Vec<u32> = (0..size).flat_map(|r| 0..r as u32).collect();
        assert_eq!(ok, want, "gather after the mismatches");
    }
}

/// Spins forever when `x` is 0 (a task that never returns).
fn stuck_at_zero(x: u64) -> u64 {
    while std::hint::black_box(x) == 0 {
        std::hint::spin_loop();
    }
    x
}

/// A task that never returns on one rank, in pools with a `task_timeout`:
/// the operation fails on every rank, naming that rank, instead of holding
/// the others in the next collective; the cluster goes on.
fn hung_tasks_time_out(world: &SimpleCommunicator, timed: &Pool) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let last = size - 1;
    let cluster = Cluster::new(world, timed).unwrap();
    let local: Vec<u64> = if rank == last {
        vec![3, 0, 5]
    } else {
        vec![1, 2]
    };
    let t = Instant::now();
    expect_remote(cluster.map_local(&local, stuck_at_zero), last, "timed out");
    let r = cluster.map_reduce(&local, stuck_at_zero, u64::wrapping_add, 0);
    expect_remote(r, last, "timed out");
    // A reduce that hangs when neither side is 0: only in the root's
    // combination of the ranks' partials (each rank reduces one element).
    let r = cluster.map_reduce(
        &[1u64],
        |x: u64| x,
        |a, b| {
            stuck_at_zero(u64::from(a == 0 || b == 0));
            a + b
        },
        0,
    );
    if size == 1 {
        assert_eq!(r.unwrap(), 1);
    } else {
        expect_remote(r, 0, "timed out");
    }
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let ys = cluster.map_local(&[1u64, 2], |x| x + 1).unwrap();
    assert_eq!(ys, vec![2, 3]);
}

/// `Cluster::new` over an intercommunicator (the even ranks' group joined
/// to the odd ranks') fails on every rank of both groups, naming a rank,
/// rather than leaving one group's broadcasts waiting for the other's.
fn intercommunicators_are_refused(world: &SimpleCommunicator, pool: &Pool) {
    use mpi::raw::{AsRaw, FromRaw};
    use mpi::topology::{Color, InterCommunicator};
    let (rank, size) = (world.rank(), world.size());
    if size < 2 {
        return;
    }
    let half = world
        .split_by_color(Color::with_value(rank % 2))
        .expect("every rank has a color");
    let mut raw = world.as_raw();
    // SAFETY: both communicators are live; every rank calls it, with its
    // group's leader (local rank 0) and the other group's leader in `world`
    // (world rank 1 for the even group, 0 for the odd one); `raw` is written.
    unsafe {
        mpi::ffi::MPI_Intercomm_create(half.as_raw(), 0, world.as_raw(), 1 - rank % 2, 99, &mut raw)
    };
    // SAFETY: `raw` is the live intercommunicator created above, used only
    // through `inter` from here on.
    let inter = unsafe { InterCommunicator::from_raw(raw) };
    let r = Cluster::new(&inter, pool);
    expect_remote(r, half.rank() as usize, "intercommunicator");
}
