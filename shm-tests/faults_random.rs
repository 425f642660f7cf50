//! Randomized fault injection: 200 trials (`SHMPOOL_FAULT_TRIALS` to change)
//! on one pool, each a job with one fault chosen at random: a worker killed
//! from outside at a random moment, `abort()`, a null-pointer write, an
//! infinite loop under the task timeout, a panic, an allocation past the
//! memory limit, a corrupted control block, or a forged completion (a task
//! rewriting its own slot's state, done or claim counter, `common::forge`).
//! Every outcome must be the correct result or the documented typed error,
//! within a deadline, and the pool's next map must be correct with its full
//! count of workers. The tally is printed.
//!
//! A busy machine can hold a worker up in a range of any trial for longer
//! than the 300 ms task timeout; the pool then rightly kills it and the job
//! fails with `TaskTimedOut` on a range that held no fault. Such an outcome
//! is accepted only if the job had run for the whole timeout when it
//! failed; each one is printed with what the range did (when its elements
//! started, from a shared record the tasks keep) and counted in the tally.
//! That a worker killed from outside is a death even when its report comes
//! after the timeout is checked deterministically, in `faults_limits`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Rng, assert_healthy, deadline};
use shmpool::{Error, Pool};

const KINDS: [&str; 8] = [
    "SIGKILL from outside",
    "abort()",
    "null write",
    "infinite loop",
    "panic",
    "allocation past limit",
    "corrupted control block",
    "forged completion",
];

const TIMEOUT: Duration = Duration::from_millis(300);
const MEMORY_LIMIT: usize = 128 << 20;
/// The longest job, in elements.
const MAX_N: u64 = 50_000;

/// The address of `MAX_N` words in an anonymous shared mapping made before
/// the pool (so its template and workers share it): when each element of
/// the current trial's job first started (`CLOCK_MONOTONIC` ns, `u64::MAX`
/// if not yet). Kept apart from the pool's own region, which the
/// scribbling fault overwrites.
static STARTS: AtomicUsize = AtomicUsize::new(0);

fn starts() -> &'static [AtomicU64] {
    // ORDERING: Relaxed: set once before the pool (and so before any worker)
    // exists.
    let base = STARTS.load(Ordering::Relaxed);
    if base == 0 {
        return &[];
    }
    // SAFETY: `base` is the start of a live mapping of `MAX_N` 8-byte
    // aligned words, never unmapped, accessed only atomically.
    unsafe { std::slice::from_raw_parts(base as *const AtomicU64, MAX_N as usize) }
}

/// Maps the shared record of element start times.
fn map_starts() {
    // SAFETY: a fresh anonymous shared mapping; no existing memory is
    // touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MAX_N as usize * 8,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "map the start times");
    // ORDERING: Relaxed: the pool, and with it every worker, is built after.
    STARTS.store(base as usize, Ordering::Relaxed);
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What a trial's task does, and where.
#[derive(Clone, Copy, bytemuck_derive::Zeroable, bytemuck_derive::Pod)]
#[repr(C)]
struct Fault {
    kind: u64,
    at: u64,
    seed: u64,
    /// Microseconds of work per element.
    work_us: u64,
    /// The job's length (a forger finds its slot by it).
    len: u64,
    /// The test process (a forger does nothing there).
    parent: u64,
}

fn task(f: &Fault, x: u64) -> u64 {
    if let Some(start) = starts().get(x as usize) {
        // ORDERING: Relaxed: read by the test after the job has failed.
        start.fetch_min(now_ns(), Ordering::Relaxed);
    }
    if f.work_us > 0 {
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(f.work_us) {
            std::hint::spin_loop();
        }
    }
    if x == f.at {
        match f.kind {
            1 => std::process::abort(),
            // SAFETY: a write through a null pointer is the point.
            2 => unsafe { std::ptr::null_mut::<u64>().write_volatile(x) },
            3 => loop {
                std::hint::spin_loop();
            },
            4 => panic!("fault at {x}"),
            5 => {
                common::mute_stderr();
                let v = vec![1u8; 1 << 30];
                std::hint::black_box(&v);
                std::mem::forget(v);
            }
            6 => scribble(f.seed),
            7 => {
                let kind = f.seed % common::forge::KINDS.len() as u64;
                assert!(
                    common::forge::forge(kind, f.len, f.parent as u32),
                    "the forger did not find its slot"
                );
            }
            _ => {}
        }
    }
    x.wrapping_mul(2).wrapping_add(1)
}

/// Writes pseudo-random words at random 8-byte places of the region's first
/// 64 KiB (control block, worker records, the ring's slots).
fn scribble(seed: u64) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let Some(line) = maps.lines().find(|l| l.contains("memfd:shmpool")) else {
        return;
    };
    let base = usize::from_str_radix(line.split('-').next().unwrap_or("0"), 16).unwrap_or(0);
    if base == 0 {
        return;
    }
    let mut s = seed | 1;
    let words = 1 + seed % 64;
    for _ in 0..words {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let off = (s as usize % (64 << 10)) & !7;
        // SAFETY: unsafe test code that corrupts the control block on
        // purpose: `base + off` lies in the first 64 KiB of the shared
        // mapping (mapped, 8-byte aligned); every process accesses it only
        // through atomics.
        unsafe { (*((base + off) as *const AtomicU64)).store(s, Ordering::Relaxed) };
    }
}

fn backtraces_on() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// Whether `outcome` is what fault `f` may produce; a description otherwise.
fn judge(f: &Fault, n: u64, outcome: &Result<Vec<u64>, Error>) -> Result<&'static str, String> {
    let correct = |v: &Vec<u64>| {
        v.len() as u64 == n && v.iter().enumerate().all(|(i, &y)| y == 2 * i as u64 + 1)
    };
    let has = |r: &Option<std::ops::Range<usize>>| {
        r.as_ref().is_some_and(|r| r.contains(&(f.at as usize)))
    };
    let verdict = match (f.kind, outcome) {
        (_, Ok(v)) if correct(v) && matches!(f.kind, 0 | 6 | 7) => "correct result",
        (_, Ok(_)) => return Err("a wrong result".into()),
        (
            0,
            Err(Error::WorkerDied {
                signal: Some(9), ..
            }),
        ) => "WorkerDied (SIGKILL)",
        (
            1,
            Err(Error::WorkerDied {
                signal: Some(6),
                range,
                ..
            }),
        ) if has(range) => "WorkerDied (SIGABRT)",
        (
            2,
            Err(Error::WorkerDied {
                signal: Some(11),
                range,
                ..
            }),
        ) if has(range) => "WorkerDied (SIGSEGV)",
        (3, Err(Error::TaskTimedOut { range, .. })) if has(range) => "TaskTimedOut",
        (4, Err(Error::TaskPanicked { range, .. })) if range.contains(&(f.at as usize)) => {
            "TaskPanicked"
        }
        (5, Err(Error::MemoryLimit { range, .. })) if has(range) => "MemoryLimit",
        (
            5,
            Err(Error::WorkerDied {
                signal: Some(6),
                range,
                ..
            }),
        ) if has(range) && backtraces_on() => "WorkerDied (SIGABRT, backtrace printed)",
        // Symbolising that backtrace can outlast the task timeout on a busy
        // machine.
        (5, Err(Error::TaskTimedOut { range, .. })) if has(range) && backtraces_on() => {
            "TaskTimedOut (printing a backtrace)"
        }
        (6, Err(Error::Corrupted { .. })) => "Corrupted",
        (6, Err(Error::WorkerDied { .. })) => "WorkerDied",
        (6, Err(Error::TaskPanicked { .. })) => "TaskPanicked",
        (6, Err(Error::TaskTimedOut { .. })) => "TaskTimedOut",
        (7, Err(Error::Corrupted { .. })) => "Corrupted",
        (_, Err(e)) => return Err(format!("unexpected error: {e:?}")),
    };
    Ok(verdict)
}

/// When a job ran, and whom this test killed when.
struct Timing {
    /// Just before the job was submitted.
    began: u64,
    /// Just after it returned.
    ended: u64,
    /// The worker killed from outside, and when.
    killed: Option<(u32, u64)>,
}

/// A `TaskTimedOut` that the fault does not explain: acceptable only as a
/// range (or a claim not yet recorded as one) held up by the machine past
/// the timeout. A range starts after its job was submitted, so the job must
/// have run for the whole timeout, and the range must be one of the job's.
/// Returns what the range did.
fn held_up(n: u64, outcome: &Result<Vec<u64>, Error>, t: &Timing) -> Result<String, String> {
    let Err(Error::TaskTimedOut { pid, range, .. }) = outcome else {
        return Err("not a timeout".into());
    };
    let limit = TIMEOUT.as_nanos() as u64;
    let ms = |ns: u64| ns as f64 / 1e6;
    if t.ended - t.began < limit {
        return Err(format!(
            "the job failed {:.1} ms after it began, before any range could time out",
            ms(t.ended - t.began)
        ));
    }
    let Some(range) = range else {
        // Left unscheduled in the few instructions between a claim and its
        // range's start (or between its end and its count).
        return Ok(format!(
            "worker {pid}, holding a claim between ranges, job {:.1} ms",
            ms(t.ended - t.began)
        ));
    };
    if range.start >= range.end || range.end as u64 > n {
        return Err(format!("a range outside the job: {range:?}"));
    }
    // What the range did: when its elements started.
    let mut started: Vec<u64> = starts()[range.clone()]
        .iter()
        // ORDERING: Relaxed: the job has returned.
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|&s| s != u64::MAX)
        .collect();
    started.sort_unstable();
    let pause = started
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(started.last().map(|&l| t.ended.saturating_sub(l)))
        .max()
        .unwrap_or(t.ended - t.began);
    // A worker killed from outside early in the job but not yet gone when
    // its range passed the timeout was held up too: the supervisor takes a
    // worker for dead once its pidfd says so.
    let victim = match t.killed {
        Some((victim, at)) if victim == *pid => {
            format!(
                ", killed from outside {:.1} ms into the job",
                ms(at - t.began)
            )
        }
        _ => String::new(),
    };
    Ok(format!(
        "worker {pid}{victim}, range {range:?}: {} of {} elements started (the first {:.1} ms \
         into the job), longest pause {:.1} ms, job {:.1} ms",
        started.len(),
        range.len(),
        started
            .first()
            .map_or(f64::NAN, |&f| ms(f.saturating_sub(t.began))),
        ms(pause),
        ms(t.ended - t.began)
    ))
}

#[test]
fn randomized_faults_never_hang_and_leave_the_pool_healthy() {
    let trials: usize = std::env::var("SHMPOOL_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("SHMPOOL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64 ^ std::process::id() as u64);
    println!("seed {seed} (set SHMPOOL_FAULT_SEED to replay), {trials} trials");
    map_starts();
    let pool = Arc::new(
        Pool::builder()
            .workers(2)
            .task_timeout(TIMEOUT)
            .worker_memory_limit(MEMORY_LIMIT)
            .max_retries(1)
            .ring_size(8)
            .build()
            .unwrap(),
    );
    let mut rng = Rng(seed | 1);
    let mut tally: Vec<Vec<(&'static str, u32)>> = vec![Vec::new(); KINDS.len()];
    let started = Instant::now();
    for trial in 0..trials {
        let kind = rng.below(KINDS.len() as u64);
        let n = 1 + rng.below(if kind == 0 { 2_000 } else { MAX_N });
        let fault = Fault {
            kind,
            at: rng.below(n),
            seed: rng.next_u64(),
            // A forgery lands while other ranges still run.
            work_us: match kind {
                0 => 50,
                7 => rng.below(4),
                _ => 0,
            },
            len: n,
            parent: u64::from(std::process::id()),
        };
        let kill_after = Duration::from_micros(rng.below(30_000));
        let victim = rng.below(2) as usize;
        let p = pool.clone();
        let verdict = deadline(30, move || {
            for start in &starts()[..n as usize] {
                // ORDERING: Relaxed: the last trial's job has finished.
                start.store(u64::MAX, Ordering::Relaxed);
            }
            let began = now_ns();
            let killer = (fault.kind == 0).then(|| {
                let p = p.clone();
                thread::spawn(move || {
                    thread::sleep(kill_after);
                    let pid = *p.worker_pids().get(victim)?;
                    let at = now_ns();
                    // SAFETY: kill(2) on a worker of ours.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    Some((pid, at))
                })
            });
            let xs: Vec<u64> = (0..n).collect();
            let outcome = p.map_with(fault, &xs, task).map(|v| v.to_vec());
            let ended = now_ns();
            let killed = killer.and_then(|k| k.join().unwrap());
            let timing = Timing {
                began,
                ended,
                killed,
            };
            let verdict =
                judge(&fault, n, &outcome).or_else(|e| match held_up(n, &outcome, &timing) {
                    Ok(what) => {
                        println!(
                            "trial {trial} ({}): a TaskTimedOut the fault does not explain, \
                             accepted as held up by the machine: {what}",
                            KINDS[fault.kind as usize]
                        );
                        Ok("TaskTimedOut (held up by the machine)")
                    }
                    Err(why) if matches!(outcome, Err(Error::TaskTimedOut { .. })) => {
                        Err(format!("{e} ({why})"))
                    }
                    Err(_) => Err(e),
                });
            assert_healthy(&p);
            verdict
        });
        match verdict {
            Ok(v) => {
                let row = &mut tally[kind as usize];
                match row.iter_mut().find(|(name, _)| *name == v) {
                    Some((_, c)) => *c += 1,
                    None => row.push((v, 1)),
                }
            }
            Err(e) => panic!(
                "trial {trial} ({}, n = {n}, at = {}): {e}",
                KINDS[kind as usize], fault.at
            ),
        }
    }
    println!(
        "{trials} trials in {:.1} s; every outcome as documented, every next map correct",
        started.elapsed().as_secs_f64()
    );
    println!("{:<26} {:>6}  outcomes", "fault", "trials");
    for (k, row) in tally.iter().enumerate() {
        let total: u32 = row.iter().map(|(_, c)| c).sum();
        let outcomes: Vec<String> = row.iter().map(|(v, c)| format!("{v}: {c}")).collect();
        println!("{:<26} {:>6}  {}", KINDS[k], total, outcomes.join(", "));
    }
    let s = pool.stats();
    println!(
        "worker restarts {}, jobs failed {}, arena in use {} bytes",
        s.worker_restarts, s.jobs_failed, s.arena_in_use
    );
}
