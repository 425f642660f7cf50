//! A parent that dies leaves no workers behind.
//!
//! The test re-runs this binary as a child process that creates a pool, puts
//! its workers to work and reports their pids; then it kills that child
//! (SIGKILL, or lets it `exit` without dropping the pool). As a child
//! subreaper, this process inherits the orphaned template, so it can check
//! that it and every worker died promptly, and reap it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{ISOLATED, deadline, in_isolation};
use shmpool::Pool;

/// How the helper process ends: killed by the test, or by calling `exit`.
const HOW: &str = "SHMPOOL_PARENT_DEATH";

fn run_parent(how: &str) {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "parent_holding_a_busy_pool",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ISOLATED, "1")
        .env(HOW, how)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = lines
        .map_while(Result::ok)
        // libtest may print "test name ... " on the same line first.
        .find_map(|l| {
            l.split("PIDS ")
                .nth(1)
                .map(|p| p.split(' ').map(|x| x.parse().unwrap()).collect())
        })
        .expect("the helper reports its workers");
    assert_eq!(pids.len(), 4, "three workers and their template");
    if how == "kill" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let parent_died = Instant::now();
    if how == "kill" {
        assert!(!status.success());
    }
    // Every worker, and the template that forked them, must be gone within
    // a second of their parent. The template reaps the workers; as a
    // subreaper, this process reaps the template.
    for pid in pids {
        loop {
            let mut st = 0;
            // SAFETY: waitpid on a pid this subreaper may have inherited.
            let r = unsafe { libc::waitpid(pid as i32, &mut st, libc::WNOHANG) };
            if r == pid as i32 || common::is_dead(pid) {
                break;
            }
            assert!(
                parent_died.elapsed() < Duration::from_secs(1),
                "process {pid} outlived its parent by a second: {:?}",
                common::proc_stat(pid)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    // Nothing in /dev/shm: the region is an anonymous memfd.
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("shmpool"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_killed_parent_leaves_no_workers() {
    deadline(60, || run_parent("kill"));
}

#[test]
fn a_parent_that_exits_without_dropping_the_pool_leaves_no_workers() {
    deadline(60, || run_parent("exit"));
}

#[test]
#[ignore = "the helper process of the tests above"]
fn parent_holding_a_busy_pool() {
    if !in_isolation() {
        return;
    }
    let pool = Pool::new(3).unwrap();
    let xs = vec![0u64; 64];
    let busy = pool
        .map_async(&xs, |_| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                std::hint::spin_loop();
            }
            0u64
        })
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    let mut pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    // The template process is the workers' parent.
    let template = common::proc_stat(pool.worker_pids()[0]).unwrap().1;
    assert_ne!(template, std::process::id());
    pids.push(template.to_string());
    println!("PIDS {}", pids.join(" "));
    if std::env::var(HOW).as_deref() == Ok("exit") {
        std::mem::forget(busy);
        std::mem::forget(pool);
        std::process::exit(0);
    }
    thread::sleep(Duration::from_secs(60));
    drop(busy);
}
