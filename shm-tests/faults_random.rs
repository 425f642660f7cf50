//! Randomized fault injection: 200 trials (`SHMPOOL_FAULT_TRIALS` to change)
//! on one pool, each a job with one fault chosen at random: a worker killed
//! from outside at a random moment, `abort()`, a null-pointer write, an
//! infinite loop under the task timeout, a panic, an allocation past the
//! memory limit, a corrupted control block, or a forged completion (a task
//! rewriting its own slot's state, done or claim counter, `common::forge`).
//! Every outcome must be the correct result or the documented typed error,
//! within a deadline, and the pool's next map must be correct with its full
//! count of workers. The tally is printed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        let n = 1 + rng.below(if kind == 0 { 2_000 } else { 50_000 });
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
            let killer = (fault.kind == 0).then(|| {
                let p = p.clone();
                thread::spawn(move || {
                    thread::sleep(kill_after);
                    if let Some(&pid) = p.worker_pids().get(victim) {
                        // SAFETY: kill(2) on a worker of ours.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                })
            });
            let xs: Vec<u64> = (0..n).collect();
            let outcome = p.map_with(fault, &xs, task).map(|v| v.to_vec());
            if let Some(k) = killer {
                k.join().unwrap();
            }
            let verdict = judge(&fault, n, &outcome);
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
