//! A program that is single-threaded when it builds its pools, the common
//! case (`Pool::new` then takes the stdio locks at once, without a probe
//! thread): run by `ownership::a_single_threaded_program_builds_pools_with_stdout_free_or_held`.

use std::io::Write;
use std::time::{Duration, Instant};

use shmpool::Pool;

/// This process's threads, as the kernel counts them.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// Waits until this process is single-threaded again: a joined thread may
/// be counted a moment longer.
fn wait_single_threaded() {
    let end = Instant::now() + Duration::from_secs(10);
    while threads() != 1 {
        assert!(Instant::now() < end, "still {} threads", threads());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    assert_eq!(threads(), 1, "the program starts single-threaded");
    // Nothing holds stdout or stderr.
    let pool = Pool::new(2).unwrap();
    let ys = pool
        .map(&[1u32, 2, 3], |x| {
            println!("free: task {x}");
            eprintln!("free: task {x} on stderr");
            x * 2
        })
        .unwrap();
    assert_eq!(ys[..], [2, 4, 6]);
    pool.close();
    pool.join().unwrap();
    wait_single_threaded();

    // The calling thread holds both locks while it builds a pool (taken
    // again, reentrantly), and a task prints: the worker is a copy of the
    // same thread, so the locks are its own.
    let mut out = std::io::stdout().lock();
    let err = std::io::stderr().lock();
    let pool = Pool::new(2).unwrap();
    writeln!(out, "held: mapping").unwrap();
    let ys = pool
        .map(&[1u32, 2, 3], |x| {
            println!("held: task {x}");
            x * 2
        })
        .unwrap();
    assert_eq!(ys[..], [2, 4, 6]);
    drop(pool);
    drop(err);
    writeln!(out, "done").unwrap();
}
