//! What `benches/bigproc.rs` and `benches/bigproc_heap.rs` share: the seed's
//! program timed by phase, the bare-process floors, and the servers: one
//! process per size (this bench binary, started again with `--serve MIB`,
//! and Python's `benches/python/bigproc.py`), each holding its memory and
//! running one measurement per request, so that every size's runs and
//! Python's interleave round by round in one run.

#![allow(dead_code)]

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use shmpool::Pool;

pub const MIB: usize = 1 << 20;

/// Sizes and rounds from the command line (`-- --sizes 0,512,2048 --rounds
/// 9`); `cargo bench` adds `--bench`, which is ignored.
pub struct Args {
    pub sizes_mib: Vec<usize>,
    pub rounds: usize,
}

impl Args {
    pub fn parse(default_sizes: &[usize], default_rounds: usize) -> Args {
        let args: Vec<String> = std::env::args().collect();
        let value = |key: &str| {
            args.iter()
                .position(|a| a == key)
                .and_then(|i| args.get(i + 1).cloned())
        };
        Args {
            sizes_mib: value("--sizes").map_or_else(
                || default_sizes.to_vec(),
                |s| s.split(',').map(|m| m.trim().parse().unwrap()).collect(),
            ),
            rounds: value("--rounds").map_or(default_rounds, |r| r.parse().unwrap()),
        }
    }
}

/// `bytes` of memory from the global allocator, one byte written per page,
/// so that every page is resident and private to this process (or, under
/// the shared heap, resident in its memfd).
pub fn touched_vec(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(page()) {
        v[i] = 1;
    }
    black_box(&mut v);
    v
}

/// Private anonymous memory in transparent huge pages (`MADV_HUGEPAGE`
/// before the first touch), one byte written per page; `None` where the
/// kernel gives none (`enabled` is `never`, or no huge page was free).
pub struct HugeMapping {
    ptr: *mut u8,
    len: usize,
}

impl HugeMapping {
    pub fn new(bytes: usize) -> Option<HugeMapping> {
        const HUGE: usize = 2 << 20;
        let len = bytes.div_ceil(HUGE) * HUGE + HUGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // named.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let m = HugeMapping {
            ptr: raw.cast(),
            len,
        };
        let start = (raw as usize).next_multiple_of(HUGE);
        let body = len - (start - raw as usize) - HUGE;
        // SAFETY: `start..start + body` lies in the mapping made above.
        if unsafe { libc::madvise(start as *mut libc::c_void, body, libc::MADV_HUGEPAGE) } != 0 {
            return None;
        }
        for i in (0..body).step_by(page()) {
            // SAFETY: in the mapping, which is readable and writable.
            unsafe { (start as *mut u8).add(i).write_volatile(1) };
        }
        (anon_huge_bytes() >= body / 2).then_some(m)
    }
}

impl Drop for HugeMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `AnonHugePages` of this process, in bytes (0 when it cannot be read).
fn anon_huge_bytes() -> usize {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb << 10)
}

pub fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// The seed's program, timed by phase: `Pool::new(4)`; a map of the
/// squares of 0..100; then `close`, `join` and drop (the teardown).
#[derive(Clone, Copy, Default)]
pub struct Phases {
    pub new: Duration,
    pub map: Duration,
    pub end: Duration,
}

impl Phases {
    pub fn total(&self) -> Duration {
        self.new + self.map + self.end
    }
}

pub fn seed() -> Phases {
    let t0 = Instant::now();
    let pool = Pool::new(4).unwrap();
    let t1 = Instant::now();
    let xs: Vec<i64> = (0..100).collect();
    let ys = pool.map(&xs, |x| x * x).unwrap();
    assert_eq!(ys[99], 9801);
    let t2 = Instant::now();
    pool.close();
    pool.join().unwrap();
    drop(ys);
    drop(pool);
    let t3 = Instant::now();
    Phases {
        new: t1 - t0,
        map: t2 - t1,
        end: t3 - t2,
    }
}

/// `n` processes, each forked, exited and reaped before the next is forked.
pub fn forks_in_turn(n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: the child calls only `_exit`, which is async-signal-safe.
        match unsafe { libc::fork() } {
            // SAFETY: as above.
            0 => unsafe { libc::_exit(0) },
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            pid => reap(pid),
        }
    }
    t.elapsed()
}

/// `n` processes forked one after another, all alive at once (each blocks
/// reading a pipe), then released together and reaped: the shape of a pool
/// of `n` processes, with nothing else.
pub fn forks_at_once(n: usize) -> Duration {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let t = Instant::now();
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the child calls only `close`, `read` and `_exit`, which
        // are async-signal-safe.
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::close(fds[1]);
                let mut b = 0u8;
                libc::read(fds[0], (&raw mut b).cast(), 1);
                libc::_exit(0)
            },
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            pid => kids.push(pid),
        }
    }
    // SAFETY: our descriptors; closing the write end releases every child.
    unsafe {
        libc::close(fds[1]);
        libc::close(fds[0]);
    }
    kids.into_iter().for_each(reap);
    t.elapsed()
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid place to write.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// A process holding some memory that runs one measurement per request, so
/// that measurements of processes of different sizes (and Python's) can be
/// interleaved round by round: `benches/python/bigproc.py`, or this bench
/// binary itself started with `--serve MIB` (see `serve`).
pub struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Python's seed in a python3 process holding `mib` MiB; `None` (with a
    /// note) if `python3` is missing or the script fails.
    pub fn python(mib: usize) -> Option<Server> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/bigproc.py");
        Server::start(Command::new("python3").arg(script).arg(mib.to_string()))
    }

    /// This bench binary, holding `mib` MiB as `touched_vec` (or, with
    /// `huge`, as a `HugeMapping`) allocates them.
    pub fn this(mib: usize, huge: bool) -> Option<Server> {
        let exe = std::env::current_exe().ok()?;
        let flag = if huge { "--serve-huge" } else { "--serve" };
        Server::start(Command::new(exe).arg(flag).arg(mib.to_string()))
    }

    fn start(command: &mut Command) -> Option<Server> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("{command:?}: {e}"))
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        if line.trim() != "ready" {
            eprintln!("{command:?} did not start ({:?})", line.trim());
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Server {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs `what` once there and returns the times it reports, in seconds.
    pub fn run(&mut self, what: &str) -> Vec<Duration> {
        writeln!(self.stdin, "{what}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.split_whitespace()
            .map(|t| Duration::from_secs_f64(t.parse().expect("a time in seconds")))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `--serve MIB` (or `--serve-huge MIB`) side: if this process was
/// started so, holds the memory, prints `ready`, answers each request on
/// stdin (`seed`: total, new, map and teardown; `in_turn`, `at_once`:
/// five processes; `four`: four at once) with times in seconds, and exits
/// at end of input. `check` is called with the bytes held once they are.
/// Returns at once if this process is not a server.
pub fn serve_if_asked(check: impl Fn(usize)) {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args
        .iter()
        .position(|a| a == "--serve" || a == "--serve-huge")
    else {
        return;
    };
    let mib: usize = args[i + 1].parse().unwrap();
    let mut held_vec = Vec::new();
    let mut held_huge = None;
    if args[i] == "--serve-huge" {
        match HugeMapping::new(mib * MIB) {
            Some(m) => held_huge = Some(m),
            None => {
                println!("no transparent huge pages");
                std::process::exit(0);
            }
        }
    } else {
        held_vec = touched_vec(mib * MIB);
    }
    check(mib * MIB);
    seed();
    // Stdout is locked only to write: `Pool::new` waits up to 10 ms for a
    // held stdout lock before it forks (design.md §10).
    let say = |text: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").unwrap();
        out.flush().unwrap();
    };
    say("ready");
    for line in std::io::stdin().lines() {
        let times = match line.unwrap().trim() {
            "seed" => {
                let p = seed();
                vec![p.total(), p.new, p.map, p.end]
            }
            "in_turn" => vec![forks_in_turn(5)],
            "at_once" => vec![forks_at_once(5)],
            "four" => vec![forks_at_once(4)],
            other => panic!("unknown request {other:?}"),
        };
        let text: Vec<String> = times.iter().map(|t| t.as_secs_f64().to_string()).collect();
        say(&text.join(" "));
    }
    black_box((&held_vec, &held_huge));
    std::process::exit(0);
}

/// The measurements of a table, each one (a server and a request) run once
/// per round, rotating which goes first, so that drift on a shared machine
/// falls on all of them alike; one unmeasured round first. Returns every
/// run's times, per measurement.
pub fn rounds(
    rounds: usize,
    servers: &mut [Option<Server>],
    plan: &[(usize, &str)],
) -> Vec<Vec<Vec<Duration>>> {
    let mut out = vec![Vec::new(); plan.len()];
    for round in 0..=rounds {
        for j in 0..plan.len() {
            let i = (round + j) % plan.len();
            let (server, what) = plan[i];
            let Some(s) = servers[server].as_mut() else {
                continue;
            };
            let times = s.run(what);
            if round > 0 {
                out[i].push(times);
            }
        }
    }
    out
}

/// Column `k` of each run.
pub fn column(runs: &[Vec<Duration>], k: usize) -> Samples {
    Samples(runs.iter().filter_map(|r| r.get(k).copied()).collect())
}

/// Every run of one measurement.
#[derive(Clone, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    pub fn min(&self) -> Duration {
        self.0.iter().copied().min().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    /// `median (min-max)`, in milliseconds; `-` without runs.
    pub fn show(&self) -> String {
        if self.is_empty() {
            return "-".to_owned();
        }
        format!(
            "{} ({}-{})",
            ms(self.median()),
            ms(self.min()),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> String {
    let s = d.as_secs_f64() * 1e3;
    if s >= 10.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.2}")
    }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
