//! A soak run: one pool, a random mix of correct jobs and injected faults
//! until a deadline, then a report.
//!
//! Correct jobs: a `map` over a `Vec<f64>` of random length, a `map` over a
//! `ShmVec`, a batch of 200 `apply_async`, and a `map_async` cancelled at a
//! random moment. Each output is checked against the serial computation.
//! Faults, each on one poisoned element passed as a `map_with` context: a
//! panic, an `abort`, a null-pointer write, an endless loop, a 1 GiB
//! allocation, and a `SIGKILL` of a worker from outside during a slowish map.
//! Each must end as documented (a typed error naming the element's range, or
//! a correct result thanks to the retry), and the pool must map correctly
//! right after it.
//!
//! The workers whose allocation fails print `memory allocation of 1073741824
//! bytes failed` on stderr before they abort: that is expected; the report
//! goes to stdout.
//!
//! Any other outcome is printed and counted, and makes the program exit with
//! code 1. Every wait is bounded: asynchronous results are awaited with
//! `get_timeout`, and a watchdog ends the program if a round makes no
//! progress for a minute.
//!
//! Run it with
//! `cargo run --release --example soak -- [minutes] [--workers N] [--seed S]`
//! (default: 1 minute, 2 workers, a seed from the clock; minutes may be
//! fractional, like 0.2).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shmpool::{Error, Pool, Stats};

const TASK_TIMEOUT: Duration = Duration::from_millis(200);
const MEMORY_LIMIT: usize = 256 << 20;
const ARENA: usize = 512 << 20;
/// The longest we wait for any one asynchronous result.
const WAIT: Duration = Duration::from_secs(30);
/// The watchdog ends the program when no round finishes for this long.
const STALL: Duration = Duration::from_secs(60);
/// Unexpected outcomes printed in full; the rest are only counted.
const PRINT_AT_MOST: u64 = 50;

/// xorshift64: small, fast, and reproducible from its printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    MapVec,
    MapShm,
    ApplyBatch,
    Cancel,
    Panic,
    Abort,
    NullWrite,
    Hang,
    Memory,
    Kill,
}

/// Every kind, with its weight in the random choice.
const KINDS: [(Kind, u64); 10] = [
    (Kind::MapVec, 30),
    (Kind::MapShm, 20),
    (Kind::ApplyBatch, 12),
    (Kind::Cancel, 12),
    (Kind::Panic, 5),
    (Kind::Abort, 4),
    (Kind::NullWrite, 4),
    (Kind::Hang, 3),
    (Kind::Memory, 4),
    (Kind::Kill, 6),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::MapVec => "map Vec<f64>",
            Kind::MapShm => "map ShmVec<u64>",
            Kind::ApplyBatch => "200 apply_async",
            Kind::Cancel => "map_async + cancel",
            Kind::Panic => "panic",
            Kind::Abort => "abort (SIGABRT)",
            Kind::NullWrite => "null write (SIGSEGV)",
            Kind::Hang => "endless loop",
            Kind::Memory => "1 GiB allocation",
            Kind::Kill => "SIGKILL from outside",
        }
    }

    fn is_fault(self) -> bool {
        !matches!(
            self,
            Kind::MapVec | Kind::MapShm | Kind::ApplyBatch | Kind::Cancel
        )
    }

    /// Worker deaths one round of this kind causes, at most: an abort, a
    /// segfault or an allocation failure kill the first worker and the one
    /// that retries the range; a timeout or a `SIGKILL` kill one.
    fn deaths(self) -> u64 {
        match self {
            Kind::Abort | Kind::NullWrite | Kind::Memory => 2,
            Kind::Hang | Kind::Kill => 1,
            _ => 0,
        }
    }

    fn pick(rng: &mut Rng) -> Kind {
        let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
        let mut r = rng.range(0, total);
        for (kind, weight) in KINDS {
            if r < weight {
                return kind;
            }
            r -= weight;
        }
        unreachable!("r < total")
    }
}

/// How an expected round ended: the elements it processed, and which of the
/// accepted outcomes it was.
struct Outcome {
    elements: u64,
    how: &'static str,
}

fn ok(elements: usize, how: &'static str) -> Result<Outcome, String> {
    Ok(Outcome {
        elements: elements as u64,
        how,
    })
}

/// Per kind: rounds, how they ended, time spent.
#[derive(Default)]
struct Tally {
    rounds: u64,
    expected: u64,
    elements: u64,
    time: Duration,
    how: BTreeMap<&'static str, u64>,
}

// ---------------------------------------------------------------- the tasks

fn curve(x: f64) -> f64 {
    (x * 1.5 - 0.25).abs().sqrt() + x.sin()
}

/// splitmix64's finaliser.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// About a microsecond of arithmetic.
fn heavy(x: f64) -> f64 {
    let mut y = x;
    for _ in 0..64 {
        y = (y * 0.999 + 0.5).sin() + x;
    }
    y
}

/// About a tenth of a millisecond.
fn slowish(x: u64) -> u64 {
    thread::sleep(Duration::from_micros(100));
    mix(x)
}

/// `0..n`, so an element's value is its index.
fn indices(n: u64) -> Vec<u64> {
    (0..n).collect()
}

/// The first element where `ys` differs from `f` over `xs`.
fn verify<T: Copy, U: PartialEq + std::fmt::Debug>(
    what: &str,
    xs: &[T],
    ys: &[U],
    f: impl Fn(T) -> U,
) -> Result<(), String> {
    if xs.len() != ys.len() {
        return Err(format!(
            "{what}: {} outputs for {} inputs",
            ys.len(),
            xs.len()
        ));
    }
    match xs.iter().zip(ys).position(|(&x, y)| f(x) != *y) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: element {i} of {} is {:?}, expected {:?}",
            xs.len(),
            ys[i],
            f(xs[i])
        )),
    }
}

fn contains(range: &Option<std::ops::Range<usize>>, at: u64) -> bool {
    range.as_ref().is_some_and(|r| r.contains(&(at as usize)))
}

// --------------------------------------------------------------- the rounds

fn map_vec(pool: &Pool, rng: &mut Rng) -> Result<Outcome, String> {
    let n = rng.range(1, 200_000) as usize;
    let xs: Vec<f64> = (0..n).map(|_| rng.unit() * 2000.0 - 1000.0).collect();
    let ys = pool
        .map(&xs, curve)
        .map_err(|e| format!("map over {n} f64: {e}"))?;
    verify("map Vec<f64>", &xs, &ys, curve)?;
    ok(n, "correct")
}

fn map_shm(pool: &Pool, rng: &mut Rng) -> Result<Outcome, String> {
    let n = rng.range(1, 200_000) as usize;
    let host: Vec<u64> = (0..n).map(|_| rng.next()).collect();
    let xs = pool
        .to_shm(&host)
        .map_err(|e| format!("to_shm({n}): {e}"))?;
    let ys = pool
        .map(&xs, mix)
        .map_err(|e| format!("map over a ShmVec of {n}: {e}"))?;
    verify("map ShmVec<u64>", &host, &ys, mix)?;
    ok(n, "correct")
}

fn apply_batch(pool: &Pool, rng: &mut Rng) -> Result<Outcome, String> {
    let args: Vec<u64> = (0..200).map(|_| rng.next()).collect();
    let pending = args
        .iter()
        .map(|&a| pool.apply_async(a, mix))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("apply_async: {e}"))?;
    let mut outs = Vec::with_capacity(args.len());
    for (i, mut r) in pending.into_iter().enumerate() {
        outs.push(
            r.get_timeout(WAIT)
                .map_err(|e| format!("apply_async #{i} of 200: {e}"))?,
        );
    }
    verify("apply_async", &args, &outs, mix)?;
    ok(args.len(), "correct")
}

fn cancel(pool: &Pool, rng: &mut Rng) -> Result<Outcome, String> {
    let n = rng.range(10_000, 100_000) as usize;
    let xs: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
    let mut r = pool
        .map_async(&xs, heavy)
        .map_err(|e| format!("map_async over {n}: {e}"))?;
    thread::sleep(Duration::from_micros(rng.range(0, 40_000)));
    r.cancel();
    match r.get_timeout(WAIT) {
        Err(Error::Cancelled) => ok(0, "cancelled"),
        Ok(ys) => {
            verify("map_async finished before cancel", &xs, &ys, heavy)?;
            ok(n, "finished first")
        }
        Err(e) => Err(format!("cancelled map_async over {n}: {e}")),
    }
}

/// A map over `0..n` whose task ends badly on element `poison`, the way
/// `kind` says.
fn poisoned(pool: &Pool, kind: Kind, n: u64, poison: u64) -> Result<shmpool::ShmVec<u64>, Error> {
    let xs = indices(n);
    match kind {
        Kind::Panic => pool.map_with(poison, &xs, |p, x| {
            assert!(x != *p, "poisoned element {x}");
            mix(x)
        }),
        Kind::Abort => pool.map_with(poison, &xs, |p, x| {
            if x == *p {
                std::process::abort();
            }
            mix(x)
        }),
        Kind::NullWrite => pool.map_with(poison, &xs, |p, x| {
            if x == *p {
                let null = black_box(std::ptr::null_mut::<u64>());
                // SAFETY: none; the write through a null pointer is the
                // point. It faults at once in the worker process.
                unsafe { null.write_volatile(x) };
            }
            mix(x)
        }),
        Kind::Hang => pool.map_with(poison, &xs, |p, x| {
            if x == *p {
                loop {
                    std::hint::spin_loop();
                }
            }
            mix(x)
        }),
        Kind::Memory => pool.map_with(poison, &xs, |p, x| {
            if x == *p {
                let big = black_box(vec![1u8; 1 << 30]);
                return u64::from(big[(x as usize) % big.len()]);
            }
            mix(x)
        }),
        _ => unreachable!("{kind:?} is not a poisoned map"),
    }
}

fn fault(pool: &Pool, rng: &mut Rng, kind: Kind) -> Result<Outcome, String> {
    // Panics may hit a big map; a dying or hanging range should be small so
    // that the other worker is not slowed by long ranges.
    let n = match kind {
        Kind::Panic => rng.range(1, 100_000),
        _ => rng.range(1, 5_000),
    };
    let poison = rng.range(0, n);
    let at = format!("{} on element {poison} of {n}", kind.name());
    let result = poisoned(pool, kind, n, poison);
    let good = match (kind, &result) {
        (Kind::Panic, Err(Error::TaskPanicked { message, range, .. })) => {
            range.contains(&(poison as usize)) && *message == format!("poisoned element {poison}")
        }
        (Kind::Abort, Err(Error::WorkerDied { signal, range, .. })) => {
            *signal == Some(libc::SIGABRT) && contains(range, poison)
        }
        (Kind::NullWrite, Err(Error::WorkerDied { signal, range, .. })) => {
            *signal == Some(libc::SIGSEGV) && contains(range, poison)
        }
        (Kind::Hang, Err(Error::TaskTimedOut { after, range, .. })) => {
            *after == TASK_TIMEOUT && contains(range, poison)
        }
        (Kind::Memory, Err(Error::MemoryLimit { limit, range, .. })) => {
            *limit == MEMORY_LIMIT && contains(range, poison)
        }
        // With RUST_BACKTRACE set, the backtrace printed before the abort
        // hides the failed allocation (design.md, "Memory limits").
        (
            Kind::Memory,
            Err(Error::WorkerDied {
                signal: Some(libc::SIGABRT),
                range,
                ..
            }),
        ) => backtraces_on() && contains(range, poison),
        _ => false,
    };
    match result {
        Err(e) if good => {
            health_check(pool).map_err(|h| format!("after {at} ({e}): {h}"))?;
            ok(0, "as expected")
        }
        Err(e) => Err(format!("{at}: unexpected error: {e} ({e:?})")),
        Ok(_) => Err(format!("{at}: the map succeeded")),
    }
}

/// A slowish map, and a `SIGKILL` for a random worker while it runs.
fn kill(pool: &Pool, rng: &mut Rng) -> Result<Outcome, String> {
    let n = rng.range(500, 2_000);
    let xs = indices(n);
    let mut r = pool
        .map_async(&xs, slowish)
        .map_err(|e| format!("map_async over {n}: {e}"))?;
    thread::sleep(Duration::from_micros(rng.range(1_000, 40_000)));
    let pids = pool.worker_pids();
    if pids.is_empty() {
        return Err("no live worker to kill".into());
    }
    let victim = pids[rng.range(0, pids.len() as u64) as usize];
    let running = !r.ready();
    // SAFETY: kill(2) on a pid the pool just listed as its worker; no memory
    // is involved.
    let sent = unsafe { libc::kill(victim as i32, libc::SIGKILL) } == 0;
    let at = format!("SIGKILL of worker {victim} during a map over {n}");
    match r.get_timeout(WAIT) {
        Ok(ys) => {
            // `slowish` is `mix` after a nap: check against `mix`.
            verify(&at, &xs, &ys, mix)?;
            health_check(pool).map_err(|h| format!("after {at}: {h}"))?;
            let how = match (sent, running) {
                (true, true) => "correct (killed mid-job)",
                (true, false) => "correct (killed after it)",
                (false, _) => "correct (victim gone)",
            };
            ok(n as usize, how)
        }
        Err(Error::WorkerDied {
            pid,
            signal: Some(libc::SIGKILL),
            ..
        }) if pid == victim => {
            health_check(pool).map_err(|h| format!("after {at}: {h}"))?;
            ok(0, "WorkerDied")
        }
        Err(e) => Err(format!("{at}: unexpected error: {e} ({e:?})")),
    }
}

/// A small map right after a fault must be correct.
fn health_check(pool: &Pool) -> Result<(), String> {
    let xs = indices(1_000);
    let ys = pool.map(&xs, mix).map_err(|e| format!("health map: {e}"))?;
    verify("health map", &xs, &ys, mix)
}

fn round(pool: &Pool, rng: &mut Rng, kind: Kind) -> Result<Outcome, String> {
    match kind {
        Kind::MapVec => map_vec(pool, rng),
        Kind::MapShm => map_shm(pool, rng),
        Kind::ApplyBatch => apply_batch(pool, rng),
        Kind::Cancel => cancel(pool, rng),
        Kind::Kill => kill(pool, rng),
        _ => fault(pool, rng, kind),
    }
}

// -------------------------------------------------------- the report's parts

/// The parent's resident set, in KiB, from `/proc/self/status`.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

struct Args {
    minutes: f64,
    workers: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 1.0,
        workers: 2,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--workers" => {
                let v = it.next().ok_or("--workers needs a number")?;
                args.workers = v.parse().map_err(|_| format!("bad worker count {v:?}"))?;
            }
            "--seed" => {
                let v = it.next().ok_or("--seed needs a number")?;
                args.seed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .map_err(|_| format!("bad seed {v:?}"))?;
            }
            m => {
                args.minutes = m
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m >= 0.0)
                    .ok_or(format!(
                        "usage: soak [minutes] [--workers N] [--seed S] (got {m:?})"
                    ))?;
            }
        }
    }
    Ok(args)
}

/// Ends the program if no round finishes for `STALL`: a hung blocking call
/// then shows up as a failure, not a silent hang.
fn start_watchdog(progress: Arc<AtomicU64>, what: Arc<std::sync::Mutex<String>>) {
    let start = Instant::now();
    thread::spawn(move || {
        loop {
            thread::sleep(Duration::from_secs(1));
            // ORDERING: Relaxed: a timestamp; nothing else is read through it.
            let last = Duration::from_millis(progress.load(Relaxed));
            if start.elapsed().saturating_sub(last) > STALL {
                let what = what.lock().map(|w| w.clone()).unwrap_or_default();
                eprintln!("HANG: no progress for {STALL:?}, in {what}");
                std::process::exit(1);
            }
        }
    });
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match soak(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the soak and prints the report; returns the number of unexpected
/// outcomes.
fn soak(args: &Args) -> Result<u64, Error> {
    let mut rng = Rng::new(args.seed);
    println!(
        "shmpool soak: {} min, {} workers, seed {:#x}",
        args.minutes, args.workers, args.seed
    );
    println!(
        "pool: task_timeout {TASK_TIMEOUT:?}, max_retries 1, worker_memory_limit {}, \
         max_tasks_per_worker 5000, arena {}",
        mib(MEMORY_LIMIT as u64),
        mib(ARENA as u64)
    );
    let pool = Pool::builder()
        .workers(args.workers)
        .task_timeout(TASK_TIMEOUT)
        .max_retries(1)
        .worker_memory_limit(MEMORY_LIMIT)
        .max_tasks_per_worker(5000)
        .arena_size(ARENA)
        .build()?;

    let progress = Arc::new(AtomicU64::new(0));
    let current = Arc::new(std::sync::Mutex::new(String::from("warm-up")));
    start_watchdog(progress.clone(), current.clone());
    let clock = Instant::now();
    let mut unexpected = 0u64;
    let mut report = |at: &str, msg: &str| {
        unexpected += 1;
        if unexpected <= PRINT_AT_MOST {
            println!("UNEXPECTED #{unexpected} in {at}: {msg}");
        }
    };

    // Warm-up: one round of each correct kind, then the baseline.
    for kind in [Kind::MapVec, Kind::MapShm, Kind::ApplyBatch, Kind::Cancel] {
        if let Err(msg) = round(&pool, &mut rng, kind) {
            report(&format!("warm-up ({})", kind.name()), &msg);
        }
    }
    wait_until(Duration::from_secs(2), || pool.stats().arena_in_use == 0);
    let stats0 = pool.stats();
    let rss0 = rss_kib();

    // The soak. The first pass runs every kind once, so that even a short run
    // injects each fault; then kinds are drawn at random.
    let mut tallies: BTreeMap<Kind, Tally> = BTreeMap::new();
    let budget = Duration::from_secs_f64(args.minutes * 60.0);
    let start = Instant::now();
    let mut n = 0u64;
    while n < KINDS.len() as u64 || start.elapsed() < budget {
        n += 1;
        let kind = match KINDS.get(n as usize - 1) {
            Some(&(kind, _)) => kind,
            None => Kind::pick(&mut rng),
        };
        if let Ok(mut w) = current.lock() {
            *w = format!("round {n} ({})", kind.name());
        }
        let t = Instant::now();
        let outcome = round(&pool, &mut rng, kind);
        let tally = tallies.entry(kind).or_default();
        tally.rounds += 1;
        tally.time += t.elapsed();
        match outcome {
            Ok(o) => {
                tally.expected += 1;
                tally.elements += o.elements;
                *tally.how.entry(o.how).or_default() += 1;
            }
            Err(msg) => {
                *tally.how.entry("UNEXPECTED").or_default() += 1;
                report(&format!("round {n} ({})", kind.name()), &msg);
            }
        }
        // ORDERING: Relaxed: a timestamp for the watchdog.
        progress.store(clock.elapsed().as_millis() as u64, Relaxed);
    }
    let elapsed = start.elapsed();
    if let Ok(mut w) = current.lock() {
        *w = "the final checks".into();
    }

    // Let replacements start and cancelled ranges drain before the final
    // snapshot.
    let live_ok = wait_until(Duration::from_secs(5), || {
        pool.worker_pids().len() == pool.workers()
    });
    let arena_ok = wait_until(Duration::from_secs(5), || {
        pool.stats().arena_in_use == stats0.arena_in_use
    });
    let deaths: u64 = tallies.iter().map(|(k, t)| k.deaths() * t.rounds).sum();
    let restarts = |s: &Stats| s.worker_restarts - stats0.worker_restarts;
    wait_until(Duration::from_secs(2), || restarts(&pool.stats()) >= deaths);
    let stats = pool.stats();
    let rss1 = rss_kib();
    let live = pool.worker_pids();
    if !live_ok {
        report(
            "the final checks",
            &format!("live workers at the end: {live:?}"),
        );
    }
    if !arena_ok {
        report(
            "the final checks",
            &format!(
                "arena in use at the end: {} bytes, {} after the warm-up",
                stats.arena_in_use, stats0.arena_in_use
            ),
        );
    }
    if restarts(&stats) > deaths {
        report(
            "the final checks",
            &format!(
                "{} worker restarts, but the faults killed at most {deaths} workers",
                restarts(&stats)
            ),
        );
    }

    // ------------------------------------------------------------- report
    let secs = elapsed.as_secs_f64();
    let jobs = stats.jobs_submitted - stats0.jobs_submitted;
    let elements: u64 = tallies.values().map(|t| t.elements).sum();
    println!();
    println!("== shmpool soak report ==");
    println!(
        "duration        {secs:.1} s ({n} rounds), {} workers, seed {:#x}",
        pool.workers(),
        args.seed
    );
    println!(
        "jobs            {jobs} submitted ({} completed, {} failed): {:.0} jobs/s",
        stats.jobs_completed - stats0.jobs_completed,
        stats.jobs_failed - stats0.jobs_failed,
        jobs as f64 / secs
    );
    println!(
        "elements        {elements} in correct jobs: {:.2} M elements/s",
        elements as f64 / secs / 1e6
    );
    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>9}  outcomes",
        "job kind", "rounds", "expected", "avg ms"
    );
    let row = |kind: Kind, t: &Tally| {
        let how: Vec<String> = t.how.iter().map(|(h, c)| format!("{h} {c}")).collect();
        println!(
            "{:<22} {:>7} {:>9} {:>9.2}  {}",
            kind.name(),
            t.rounds,
            t.expected,
            t.time.as_secs_f64() * 1e3 / t.rounds.max(1) as f64,
            how.join(", ")
        );
    };
    for (kind, t) in tallies.iter().filter(|(k, _)| !k.is_fault()) {
        row(*kind, t);
    }
    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>9}  outcomes",
        "fault", "injected", "survived", "avg ms"
    );
    for (kind, t) in tallies.iter().filter(|(k, _)| k.is_fault()) {
        row(*kind, t);
    }
    println!();
    println!("pool.stats()    (whole run, warm-up included)");
    println!(
        "  worker_restarts {} (the faults killed at most {deaths} workers), workers_recycled {}",
        stats.worker_restarts, stats.workers_recycled
    );
    println!(
        "  jobs_submitted {}, jobs_completed {}, jobs_failed {}, jobs_cancelled {}, \
         bytes_staged {}",
        stats.jobs_submitted,
        stats.jobs_completed,
        stats.jobs_failed,
        stats.jobs_cancelled,
        mib(stats.bytes_staged)
    );
    println!("{:<15} {:>12} {:>12}", "", "start", "end");
    println!(
        "{:<15} {:>12} {:>12}   (of {})",
        "arena in use",
        mib(stats0.arena_in_use),
        mib(stats.arena_in_use),
        mib(stats.arena_capacity)
    );
    println!(
        "{:<15} {:>12} {:>12}",
        "parent VmRSS",
        mib(rss0 * 1024),
        mib(rss1 * 1024)
    );
    println!("live workers    {} {:?}", live.len(), live);

    // A bounded join: the pool must wind down once closed.
    let (tx, rx) = mpsc::channel();
    pool.close();
    thread::spawn(move || {
        let _ = tx.send(pool.join().map(|()| pool.worker_pids().len()));
    });
    match rx.recv_timeout(WAIT) {
        Ok(Ok(0)) => println!("close + join    ok"),
        Ok(Ok(left)) => report(
            "the final checks",
            &format!("{left} workers left after join"),
        ),
        Ok(Err(e)) => report("the final checks", &format!("join: {e}")),
        Err(_) => report(
            "the final checks",
            &format!("join did not return in {WAIT:?}"),
        ),
    }
    println!("unexpected      {unexpected}");
    if unexpected > 0 {
        println!(
            "FAILED: rerun with --seed {:#x} to repeat the choices",
            args.seed
        );
    }
    Ok(unexpected)
}

/// Whether Rust prints backtraces here (`RUST_BACKTRACE` set and not "0").
fn backtraces_on() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}
