//! One table of medians and ratios for every performance target, measured in
//! one process and one run, plus Python's `multiprocessing.Pool` (through
//! `benches/python/pool_bench.py`) when `python3` is installed. About a
//! minute on a 2-core machine.
//!
//! Each side is measured as a user calls it: rayon from the program's main
//! thread, Python's pool from a script. The sides of a row run in turn (one
//! run of each, repeated, and the median of each side), so that a change in
//! the machine's load reaches both alike. Beside the targets it measures the
//! machine's floors, as context rows: a parallel and a single-thread memcpy,
//! `process_vm_readv`, rayon's own threads mapping out of place with
//! streaming stores, the staging copy alone and rayon's streaming copy of
//! the same `Vec` (the least a staged map's copy can take), five bare
//! processes forked,
//! exited and reaped in turn, and the seed's processes alone (its template
//! and four workers answering one job, with none of the pool's code:
//! `support/skeleton.rs`). They tell a target the machine cannot meet from
//! one the library misses.
//!
//! `cargo bench --bench compare` (add `-- --csv out.csv` to write the
//! throughput-against-size series that `benches/python/plot.py` draws).
//!
//! Compare ratios within one run, never absolute times across runs.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use shmpool::Pool;

#[path = "support/skeleton.rs"]
mod skeleton;

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The median wall time of `reps` runs of `f`, after `warm` unmeasured ones.
fn median(warm: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    let [t] = medians_in_turn(warm, reps, [&mut f]);
    t
}

/// The median wall times of `fs`, run in turn `reps` times (after `warm`
/// unmeasured rounds): a change in the machine's load during the
/// measurement reaches every side alike, where measuring one side's runs
/// and then the other's would credit it to one of them.
fn medians_in_turn<const N: usize>(
    warm: usize,
    reps: usize,
    mut fs: [&mut dyn FnMut(); N],
) -> [Duration; N] {
    for _ in 0..warm {
        fs.iter_mut().for_each(|f| f());
    }
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for _ in 0..reps {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let started = Instant::now();
            f();
            t.push(started.elapsed());
        }
    }
    times.map(|mut t| {
        t.sort_unstable();
        t[reps / 2]
    })
}

fn heavy(mut x: f64) -> f64 {
    for _ in 0..50 {
        x = x.sin();
    }
    x
}

/// Forks a child that exits at once, and reaps it: the bare cost of one
/// process, which the seed pays five times (the template and four workers).
fn fork_exit_reap() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so no
    // lock another thread holds can matter to it.
    match unsafe { libc::fork() } {
        // SAFETY: as above.
        0 => unsafe { libc::_exit(0) },
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            let mut status = 0;
            // SAFETY: `pid` is our child and `status` a valid place to write.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

/// `out[i] = input[i]²` (or `input[i]` itself, when not `SQUARE`) with
/// streaming stores, in rayon's threads: the best an out-of-place map (or a
/// copy: the staging a map from a plain `Vec` starts with) can do on this
/// machine without processes, for the same shared-memory buffers the pool
/// writes.
fn streaming<const SQUARE: bool>(input: &[f64], out: &mut [f64]) {
    out.par_chunks_mut(1 << 16)
        .zip(input.par_chunks(1 << 16))
        .for_each(|(o, i)| stream_chunk::<SQUARE>(i, o));
}

#[cfg(target_arch = "x86_64")]
fn stream_chunk<const SQUARE: bool>(input: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::{_mm_loadu_pd, _mm_mul_pd, _mm_sfence, _mm_stream_pd};
    let op = |x: f64| if SQUARE { x * x } else { x };
    if out.as_ptr() as usize % 16 != 0 {
        return out.iter_mut().zip(input).for_each(|(o, x)| *o = op(*x));
    }
    let pairs = out.len().min(input.len()) / 2;
    for k in 0..pairs {
        // SAFETY: SSE2 is part of x86-64; `2k + 1` is in both slices, and
        // `out + 2k` is 16-byte aligned: `out` is (checked above), and two
        // `f64`s are 16 bytes.
        unsafe {
            let x = _mm_loadu_pd(input.as_ptr().add(2 * k));
            let y = if SQUARE { _mm_mul_pd(x, x) } else { x };
            _mm_stream_pd(out.as_mut_ptr().add(2 * k), y);
        }
    }
    for (o, x) in out[2 * pairs..].iter_mut().zip(&input[2 * pairs..]) {
        *o = op(*x);
    }
    // SAFETY: SSE is part of x86-64. Orders the streaming stores before the
    // chunk counts as done.
    unsafe { _mm_sfence() };
}

#[cfg(not(target_arch = "x86_64"))]
fn stream_chunk<const SQUARE: bool>(input: &[f64], out: &mut [f64]) {
    let op = |x: f64| if SQUARE { x * x } else { x };
    out.iter_mut().zip(input).for_each(|(o, x)| *o = op(*x));
}

fn ms(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

struct Row {
    workload: &'static str,
    ours: String,
    theirs: String,
    ratio: f64,
    target: &'static str,
    met: bool,
}

fn row(
    workload: &'static str,
    ours: String,
    theirs: String,
    ratio: f64,
    target: &'static str,
    met: bool,
) -> Row {
    Row {
        workload,
        ours,
        theirs,
        ratio,
        target,
        met,
    }
}

/// The seed, its floor and Python's seed, measured in turn.
struct Seed {
    /// Median wall time of the seed's program.
    ours: Duration,
    /// Median wall time of five bare processes forked, exited and reaped.
    floor: Duration,
    /// Median wall times of the seed's processes alone, as the pool starts
    /// them and as the program would if it forked them itself
    /// (`skeleton.rs`).
    skeleton: Duration,
    direct: Duration,
    /// Mean CPU time (every process, user and system) of one seed and of
    /// one floor.
    ours_cpu: Duration,
    floor_cpu: Duration,
    /// Median of Python's warm seeds, if `python3` runs the script.
    python: Option<Duration>,
    /// Medians of the seed and of the floor in the rounds before Python's
    /// script ran, and in those right after it (if it runs).
    before_python: Option<(Duration, Duration)>,
    after_python: Option<(Duration, Duration)>,
}

/// CPU time (user and system) of this process and of its reaped
/// descendants (the template reaps the workers; we reap the template).
fn cpu_time() -> Duration {
    let usage = |who| {
        // SAFETY: an all-zero `rusage` is valid, and `getrusage` writes only it.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid place to write.
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN)
}

/// The seed against its floors and against Python, each measured in turn
/// with the others, so that all see the same minutes of a shared, noisy
/// machine: six rounds of seven seeds, each followed by one bare floor and
/// one of each process skeleton. The first two rounds run before Python's
/// seed; each of the other four right after one run of it (one warm run and
/// five measured, in a fresh interpreter, as `pool_bench.py --seed` does).
/// Measured one after the other instead, a load change between them moved
/// the ratios by 30-50%.
///
/// The rounds right after Python's script, which this process slept
/// through, find five bare processes in their fast mode (the kernel keeps
/// each child on this process's CPU) and the seed no faster; the rounds
/// before it often find them 1.5-1.8x slower. Each half's medians are
/// reported apart too, as context (`docs/performance.md`, "The seed's floor
/// is not one number").
fn seed_in_turn() -> Seed {
    let seed = || {
        let p = Pool::new(4).unwrap();
        let xs: Vec<i64> = (0..100).collect();
        let ys = p.map(&xs, |x| x * x).unwrap();
        assert_eq!(ys[99], 9801);
        p.close();
        p.join().unwrap();
    };
    // The seed's floor: its five processes, bare, forked and reaped in turn.
    let floor = || (0..5).for_each(|_| fork_exit_reap());
    for _ in 0..3 {
        seed();
        floor();
        skeleton::templated();
        skeleton::direct();
    }
    let timed = |f: &dyn Fn(), wall: &mut Vec<Duration>, cpu: &mut Duration| {
        let (t, c) = (Instant::now(), cpu_time());
        f();
        wall.push(t.elapsed());
        *cpu += cpu_time().saturating_sub(c);
    };
    let (mut ours, mut bare, mut python) = (vec![], vec![], vec![]);
    let (mut skeleton, mut direct) = (vec![], vec![]);
    let (mut ours_cpu, mut floor_cpu) = (Duration::ZERO, Duration::ZERO);
    // The skeletons' CPU time is not reported.
    let mut skeleton_cpu = Duration::ZERO;
    let mut python_runs = true;
    // Seeds and floors of the rounds before Python's script, and after it.
    let (mut before, mut after) = ((vec![], vec![]), (vec![], vec![]));
    for round in 0..6 {
        let after_python = round >= 2 && python_runs;
        if after_python {
            match python_seed() {
                Some(runs) => python.extend(runs),
                None => python_runs = false,
            }
        }
        for _ in 0..7 {
            timed(&seed, &mut ours, &mut ours_cpu);
            timed(&floor, &mut bare, &mut floor_cpu);
            timed(&skeleton::templated, &mut skeleton, &mut skeleton_cpu);
            timed(&skeleton::direct, &mut direct, &mut skeleton_cpu);
            let half = if after_python && python_runs {
                &mut after
            } else {
                &mut before
            };
            half.0.push(ours[ours.len() - 1]);
            half.1.push(bare[bare.len() - 1]);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let pair = |(s, f): (Vec<Duration>, Vec<Duration>)| Some((median(s)?, median(f)?));
    Seed {
        ours_cpu: ours_cpu / ours.len() as u32,
        floor_cpu: floor_cpu / bare.len() as u32,
        ours: median(ours).unwrap_or_default(),
        floor: median(bare).unwrap_or_default(),
        skeleton: median(skeleton).unwrap_or_default(),
        direct: median(direct).unwrap_or_default(),
        python: python_runs.then(|| median(python)).flatten(),
        before_python: pair(before),
        after_python: pair(after),
    }
}

/// Runs `pool_bench.py` with `args` and returns what it printed, if
/// `python3` runs it.
fn pool_bench(args: &[&str]) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pool_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "pool_bench.py {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// Python's seed (`pool_bench.py --seed`): the times of five warm runs.
fn python_seed() -> Option<Vec<Duration>> {
    let text = pool_bench(&["--seed"])?;
    let list = text.split("\"seed_runs_s\":").nth(1)?;
    let list = &list[list.find('[')? + 1..list.find(']')?];
    list.split(',')
        .map(|s| s.trim().parse::<f64>().ok().map(Duration::from_secs_f64))
        .collect()
}

/// The Python baselines, if `python3` runs the script.
struct Python {
    apply_rate: f64,
    map_rates: Vec<(usize, f64)>,
}

fn python() -> Option<Python> {
    let text = pool_bench(&[])?;
    // A tiny reader for the script's flat JSON: no dependency needed.
    let number = |key: &str| -> Option<f64> {
        let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = text[at..].trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    let map_rates = text
        .split("\"map_elements_per_s\":")
        .nth(1)
        .map(|m| {
            m.trim_matches(|c: char| c == '{' || c == '}' || c.is_whitespace())
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once(':')?;
                    Some((
                        k.trim().trim_matches('"').parse().ok()?,
                        v.trim().parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Python {
        apply_rate: number("apply_async_tasks_per_s")?,
        map_rates,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; ignore what we do not know.
    let csv = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1).cloned());
    let started = Instant::now();
    let w = workers();
    let mut rows = Vec::new();

    // The seed, first, while this process is small and has no other pool
    // (the seed is a small program, like Python's script): forking copies
    // the parent's page tables, and another pool's idle workers cost a new
    // one a little more.
    let seed = seed_in_turn();
    let (t_seed, t_seed_floor) = (seed.ours, seed.floor);

    let pool = Pool::new(w).unwrap();
    let k = 50_000;
    let t_apply = median(1, 5, || {
        let pending: Vec<_> = (0..k)
            .map(|i| pool.apply_async(i as u64, |x| x * x).unwrap())
            .collect();
        let sum: u64 = pending.into_iter().map(|r| r.get().unwrap()).sum();
        black_box(sum);
    });
    let apply_rate = k as f64 / t_apply.as_secs_f64();

    // Memory-bound maps over 16 Mi f64 (128 MiB in, 128 MiB out).
    let n = 16 << 20;
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    let shared = pool.to_shm(&data).unwrap();

    // In place: the same `x + 1` on both sides, each on its own buffer as a
    // user holds it (a ShmVec for shmpool, a Vec for rayon).
    // The floor beside them: rayon itself on the same ShmVec map_in_place
    // works on (a memfd mapped shared, where a Vec is private anonymous
    // memory: the kernel faults, caches and may back them differently, and
    // on a virtual machine one 128 MiB buffer can run 40% slower than
    // another for the same loop, so the floor shares the pool's buffer).
    let v = std::cell::RefCell::new(pool.to_shm(&data).unwrap());
    let mut in_place = data.clone();
    // 21 rounds: the two sides are at parity, and over 9 rounds the
    // median of either moved by 5-10% with the host's load.
    let [t_in_place, t_rayon_in_place, t_rayon_in_place_shm] = medians_in_turn(
        2,
        21,
        [
            &mut || pool.map_in_place(&mut v.borrow_mut(), |x| x + 1.0).unwrap(),
            &mut || in_place.par_iter_mut().for_each(|x| *x += 1.0),
            &mut || v.borrow_mut().par_iter_mut().for_each(|x| *x += 1.0),
        ],
    );
    rows.push(row(
        "x+1 in place, 16 Mi f64: map_in_place vs rayon par_iter_mut",
        ms(t_in_place),
        format!("{} rayon", ms(t_rayon_in_place)),
        t_in_place.as_secs_f64() / t_rayon_in_place.as_secs_f64(),
        "≤ 1.05",
        t_in_place.as_secs_f64() <= 1.05 * t_rayon_in_place.as_secs_f64(),
    ));
    rows.push(row(
        "floor: x+1 in place, map_in_place vs rayon par_iter_mut on a ShmVec",
        ms(t_in_place),
        format!("{} rayon on a ShmVec", ms(t_rayon_in_place_shm)),
        t_in_place.as_secs_f64() / t_rayon_in_place_shm.as_secs_f64(),
        "(context)",
        true,
    ));
    drop(v);

    // Out of place into a reused output: rayon as a user writes it, zipping
    // chunks of a preallocated Vec with chunks of the input.
    let mut out = pool.alloc_zeroed::<f64>(n).unwrap();
    let mut copy = vec![0.0f64; n];
    // Beside them, the out-of-place floor (rayon itself with streaming
    // stores between two ShmVecs) and a parallel memcpy of the same bytes
    // (the bandwidth target's comparator).
    let mut out_stream = pool.alloc_zeroed::<f64>(n).unwrap();
    let mut copy_par = vec![0.0f64; n];
    let [t_into, t_rayon_zip, t_rayon_stream, t_par_memcpy] = medians_in_turn(
        2,
        9,
        [
            &mut || pool.map_into(&shared, &mut out, |x| x * x).unwrap(),
            &mut || {
                copy.par_chunks_mut(1 << 16)
                    .zip(data.par_chunks(1 << 16))
                    .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, x)| *o = x * x))
            },
            &mut || streaming::<true>(&shared, &mut out_stream),
            &mut || {
                copy_par
                    .par_chunks_mut(1 << 16)
                    .zip(data.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            },
        ],
    );
    rows.push(row(
        "x*x, 16 Mi f64, map_into a reused output vs rayon into a preallocated Vec",
        ms(t_into),
        format!("{} rayon zip", ms(t_rayon_zip)),
        t_into.as_secs_f64() / t_rayon_zip.as_secs_f64(),
        "≤ 1.10",
        t_into.as_secs_f64() <= 1.10 * t_rayon_zip.as_secs_f64(),
    ));
    assert_eq!(out[n - 3], data[n - 3] * data[n - 3]);
    assert_eq!(out_stream[n - 3], out[n - 3]);
    assert_eq!(copy_par[n - 3], data[n - 3]);
    drop((out_stream, copy_par));

    let py = python();
    match seed.python {
        Some(t_python) => {
            rows.push(row(
                "the seed end to end (Pool(4), map 0..100, close, join) vs Python",
                ms(t_seed),
                format!("{} Python", ms(t_python)),
                t_python.as_secs_f64() / t_seed.as_secs_f64(),
                "≥ 8× faster",
                t_python >= 8 * t_seed,
            ));
        }
        None => println!("(python3 not found: the Python rows are skipped)"),
    }
    rows.push(row(
        "the seed vs its floor: 5 bare fork + exit + reap in turn",
        ms(t_seed),
        format!("{} bare", ms(t_seed_floor)),
        t_seed.as_secs_f64() / t_seed_floor.as_secs_f64(),
        "≤ 1.5",
        t_seed.as_secs_f64() <= 1.5 * t_seed_floor.as_secs_f64(),
    ));
    rows.push(row(
        "floor: the seed's processes alone, as the pool starts them, vs 5 bare processes",
        ms(seed.skeleton),
        format!("{} bare", ms(t_seed_floor)),
        seed.skeleton.as_secs_f64() / t_seed_floor.as_secs_f64(),
        "(context)",
        true,
    ));
    rows.push(row(
        "floor: the seed vs its processes alone (what the pool's own code costs)",
        ms(t_seed),
        format!("{} processes alone", ms(seed.skeleton)),
        t_seed.as_secs_f64() / seed.skeleton.as_secs_f64(),
        "(context)",
        true,
    ));
    let halves = [
        (
            "context: the seed vs its floor, in the rounds before Python's script runs",
            seed.before_python,
        ),
        (
            "context: the seed vs its floor, in the rounds right after Python's script",
            seed.after_python,
        ),
    ];
    for (workload, half) in halves {
        if let Some((ours, bare)) = half {
            rows.push(row(
                workload,
                ms(ours),
                format!("{} bare", ms(bare)),
                ours.as_secs_f64() / bare.as_secs_f64(),
                "(context)",
                true,
            ));
        }
    }
    rows.push(row(
        "context: the seed's processes forked by the program itself, vs 5 bare processes",
        ms(seed.direct),
        format!("{} bare", ms(t_seed_floor)),
        seed.direct.as_secs_f64() / t_seed_floor.as_secs_f64(),
        "(context)",
        true,
    ));
    if let Some(p) = &py {
        rows.push(row(
            "50,000 apply_async + get, tasks/s, vs Python",
            format!("{:.0}/s", apply_rate),
            format!("{:.0}/s Python", p.apply_rate),
            apply_rate / p.apply_rate,
            "≥ 20×",
            apply_rate >= 20.0 * p.apply_rate,
        ));
    }

    // A plain Vec (staged: copied in) against a ShmVec (read in place).
    // The same map into a fresh output, from each, and rayon's collect;
    // beside them, the least the staging copy can take: rayon copying the
    // Vec into a ShmVec with streaming stores; and the least a map into a
    // fresh output can take: rayon's streaming map into a ShmVec whose pages
    // are already mapped, as the arena's are.
    let mut staging_floor_dst = pool.alloc_zeroed::<f64>(n).unwrap();
    let mut fresh_floor_dst = pool.alloc_zeroed::<f64>(n).unwrap();
    let [t_map, t_staged, t_collect, t_stream_copy, t_fresh_floor] = medians_in_turn(
        2,
        9,
        [
            &mut || drop(black_box(pool.map(&shared, |x| x * x).unwrap())),
            &mut || drop(black_box(pool.map(&data, |x| x * x).unwrap())),
            &mut || {
                drop(black_box(
                    data.par_iter().map(|x| x * x).collect::<Vec<f64>>(),
                ))
            },
            &mut || streaming::<false>(&data, &mut staging_floor_dst),
            &mut || streaming::<true>(&shared, &mut fresh_floor_dst),
        ],
    );
    assert_eq!(staging_floor_dst[n - 3], data[n - 3]);
    assert_eq!(fresh_floor_dst[n - 3], data[n - 3] * data[n - 3]);
    drop((staging_floor_dst, fresh_floor_dst));
    rows.push(row(
        "x*x, 16 Mi f64, map from a Vec (staged) vs from a ShmVec",
        ms(t_staged),
        format!("{} ShmVec", ms(t_map)),
        t_staged.as_secs_f64() / t_map.as_secs_f64(),
        "≤ 2.0",
        t_staged.as_secs_f64() <= 2.0 * t_map.as_secs_f64(),
    ));

    // Round trip of a 16-element map, both called from this (main) thread.
    let small: Vec<f64> = (0..16).map(f64::from).collect();
    let small_shared = pool.to_shm(&small).unwrap();
    let t_rt = median(1000, 20_001, || {
        drop(black_box(pool.map(&small_shared, |x| x * x).unwrap()))
    });
    let t_rt_rayon = median(1000, 20_001, || {
        drop(black_box(
            small.par_iter().map(|x| x * x).collect::<Vec<f64>>(),
        ))
    });
    rows.push(row(
        "map of 16 elements, round trip from the main thread",
        ms(t_rt),
        format!("{} rayon", ms(t_rt_rayon)),
        t_rt.as_secs_f64() / t_rt_rayon.as_secs_f64(),
        "≤ 0.5",
        t_rt.as_secs_f64() <= 0.5 * t_rt_rayon.as_secs_f64(),
    ));

    rows.push(row(
        "x*x, 16 Mi f64, map into a fresh output vs rayon collect",
        ms(t_map),
        format!("{} rayon collect", ms(t_collect)),
        t_map.as_secs_f64() / t_collect.as_secs_f64(),
        "≤ 0.2",
        t_map.as_secs_f64() <= 0.2 * t_collect.as_secs_f64(),
    ));
    rows.push(row(
        "floor: the least a fresh map can take (rayon streaming into mapped pages), vs rayon collect",
        ms(t_fresh_floor),
        format!("{} rayon collect", ms(t_collect)),
        t_fresh_floor.as_secs_f64() / t_collect.as_secs_f64(),
        "(context)",
        true,
    ));

    // Compute-heavy: 50 chained sin over 1 Mi f64.
    let hn = 1 << 20;
    let hdata: Vec<f64> = (0..hn).map(|i| i as f64 * 1e-6).collect();
    let hshared = pool.to_shm(&hdata).unwrap();
    let [t_heavy, t_heavy_rayon] = medians_in_turn(
        1,
        5,
        [
            &mut || drop(black_box(pool.map(&hshared, heavy).unwrap())),
            &mut || {
                drop(black_box(
                    hdata.par_iter().map(|&x| heavy(x)).collect::<Vec<f64>>(),
                ))
            },
        ],
    );
    rows.push(row(
        "50 chained sin over 1 Mi f64 vs rayon",
        ms(t_heavy),
        format!("{} rayon", ms(t_heavy_rayon)),
        t_heavy.as_secs_f64() / t_heavy_rayon.as_secs_f64(),
        "≤ 1.0",
        t_heavy <= t_heavy_rayon,
    ));

    // Bandwidth: map_into moves 16 bytes per element (read 8, write 8), as
    // a copy of the same block does.
    // (The parallel memcpy ran in turn with map_into, above.)
    let mut copy_vm = vec![0.0f64; n];
    let [t_memcpy, t_vm_readv] = medians_in_turn(
        2,
        9,
        [&mut || copy.copy_from_slice(black_box(&data)), &mut || {
            vm_readv_own(&data, &mut copy_vm)
        }],
    );
    drop(copy_vm);
    let gbs = |d: Duration| 16.0 * n as f64 / d.as_secs_f64() / 1e9;
    rows.push(row(
        "x*x, 16 Mi f64, map_into bandwidth vs a parallel memcpy",
        format!("{:.1} GB/s", gbs(t_into)),
        format!("{:.1} GB/s rayon memcpy", gbs(t_par_memcpy)),
        gbs(t_into) / gbs(t_par_memcpy),
        "≥ 0.9",
        gbs(t_into) >= 0.9 * gbs(t_par_memcpy),
    ));

    // Floors and context.
    rows.push(row(
        "floor: single-thread memcpy, vs the parallel one",
        format!("{:.1} GB/s", gbs(t_memcpy)),
        format!("{:.1} GB/s rayon memcpy", gbs(t_par_memcpy)),
        gbs(t_memcpy) / gbs(t_par_memcpy),
        "(context)",
        true,
    ));
    rows.push(row(
        "floor: process_vm_readv of the input (one thread), vs memcpy",
        format!("{:.1} GB/s", gbs(t_vm_readv)),
        format!("{:.1} GB/s memcpy", gbs(t_memcpy)),
        gbs(t_vm_readv) / gbs(t_memcpy),
        "(context)",
        true,
    ));
    rows.push(row(
        "floor: rayon out of place with streaming stores, between ShmVecs, vs rayon zip",
        ms(t_rayon_stream),
        format!("{} rayon zip", ms(t_rayon_zip)),
        t_rayon_stream.as_secs_f64() / t_rayon_zip.as_secs_f64(),
        "(context)",
        true,
    ));
    // Profiles after the timed runs, so that no first touch is in them.
    let staged_profile = per_job(&pool, 5, || pool.map(&data, |x| x * x).unwrap());
    let shm_profile = per_job(&pool, 5, || pool.map(&shared, |x| x * x).unwrap());
    let rt_profile = per_job(&pool, 1000, || pool.map(&small_shared, |x| x * x).unwrap());
    rows.push(row(
        "floor: the copy a staged map starts with, alone, vs the ShmVec map",
        ms(staged_profile[0]),
        format!("{} ShmVec map", ms(t_map)),
        staged_profile[0].as_secs_f64() / t_map.as_secs_f64(),
        "(context)",
        true,
    ));
    let staged_floor = staged_profile[0] + t_map;
    rows.push(row(
        "floor: a staged map vs its floor (the copy alone + the ShmVec map)",
        ms(t_staged),
        format!("{} copy + map", ms(staged_floor)),
        t_staged.as_secs_f64() / staged_floor.as_secs_f64(),
        "(context)",
        true,
    ));
    // The machine's floor for any staged map: the fastest copy of the Vec
    // (rayon, streaming stores) followed by the same map.
    let machine_floor = t_stream_copy + t_map;
    rows.push(row(
        "floor: the least a staged map can take (rayon's streaming copy + the ShmVec map), vs the ShmVec map",
        ms(machine_floor),
        format!("{} ShmVec map", ms(t_map)),
        machine_floor.as_secs_f64() / t_map.as_secs_f64(),
        "(context)",
        true,
    ));
    if let Some(t_python) = seed.python {
        rows.push(row(
            "context: Python's seed vs the 5-process floor",
            ms(t_python),
            format!("{} bare", ms(t_seed_floor)),
            t_python.as_secs_f64() / t_seed_floor.as_secs_f64(),
            "(context)",
            true,
        ));
    }
    rows.push(row(
        "context: the seed's CPU time (all its processes) vs the floor's",
        ms(seed.ours_cpu),
        format!("{} bare", ms(seed.floor_cpu)),
        seed.ours_cpu.as_secs_f64() / seed.floor_cpu.as_secs_f64(),
        "(context)",
        true,
    ));

    println!(
        "\n{w} workers; medians; ratio = shmpool / baseline time (throughput rows: shmpool / baseline; \
         'vs Python' rows: Python time / shmpool time)\n"
    );
    println!("| workload | shmpool | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {} | {} |",
            r.workload,
            r.ours,
            r.theirs,
            r.ratio,
            r.target,
            if r.met { "yes" } else { "**no**" }
        );
    }

    // Throughput against size, for the plot.
    if let Some(path) = csv {
        let mut lines = vec!["size,serial,rayon,shmpool,python".to_owned()];
        for exp in 2..=7 {
            let size = 10usize.pow(exp);
            let xs: Vec<f64> = (0..size).map(|i| i as f64).collect();
            let sx = pool.to_shm(&xs).unwrap();
            let reps = if size <= 10_000 { 201 } else { 9 };
            let rate = |d: Duration| size as f64 / d.as_secs_f64();
            // x*x, the workload pool_bench.py maps in Python.
            let serial = rate(median(3, reps, || {
                drop(black_box(xs.iter().map(|&x| x * x).collect::<Vec<f64>>()))
            }));
            let ray = rate(median(3, reps, || {
                drop(black_box(
                    xs.par_iter().map(|&x| x * x).collect::<Vec<f64>>(),
                ))
            }));
            let ours = rate(median(3, reps, || {
                drop(black_box(pool.map(&sx, |x| x * x).unwrap()))
            }));
            let python = py
                .as_ref()
                .and_then(|p| p.map_rates.iter().find(|(s, _)| *s == size))
                .map_or(String::new(), |(_, r)| format!("{r:.0}"));
            lines.push(format!("{size},{serial:.0},{ray:.0},{ours:.0},{python}"));
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        println!("\nwrote {path}");
    }
    println!("\nwhere the time goes (Stats::profile, mean per job):\n");
    println!("| job | staging | dispatch | compute | completion |");
    println!("|---|---|---|---|---|");
    for (label, p) in [
        ("x*x, 16 Mi f64 from a Vec (staged)", staged_profile),
        ("x*x, 16 Mi f64 from a ShmVec", shm_profile),
        ("map of 16 elements", rt_profile),
    ] {
        println!(
            "| {label} | {} | {} | {} | {} |",
            ms(p[0]),
            ms(p[1]),
            ms(p[2]),
            ms(p[3])
        );
    }
    println!(
        "\n(total {:.0} s; load average at the end: {})",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// Copies `src` into `dst` with `process_vm_readv` from this process
/// itself: the kernel's cross-process copy, one thread, the floor of any
/// scheme that would read a parent's private memory from a worker.
fn vm_readv_own(src: &[f64], dst: &mut [f64]) {
    let len = std::mem::size_of_val(src).min(std::mem::size_of_val(dst));
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: both iovecs describe live buffers of `len` bytes in this
    // process; the kernel writes only `dst`'s.
    let copied = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    assert_eq!(
        copied,
        len as isize,
        "process_vm_readv: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `job` `runs` times and returns its mean staging, dispatch, compute
/// and completion time per job, from the pool's profile.
fn per_job<R>(pool: &Pool, runs: usize, mut job: impl FnMut() -> R) -> [Duration; 4] {
    let before = pool.stats().profile;
    for _ in 0..runs {
        drop(black_box(job()));
    }
    let after = pool.stats().profile;
    let jobs = (after.jobs - before.jobs).max(1) as u32;
    [
        (after.staging - before.staging) / jobs,
        (after.dispatch - before.dispatch) / jobs,
        (after.compute - before.compute) / jobs,
        (after.completion - before.completion) / jobs,
    ]
}
