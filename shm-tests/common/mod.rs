//! Helpers shared by the shared-memory test binaries.
//!
//! - `deadline`: every test body runs under one, so a bug fails the test
//!   instead of hanging the suite.
//! - `isolated`: re-runs this test binary for a single (ignored) test in a
//!   process of its own, for tests that count processes or descriptors, or
//!   that must be killed.
//! - `/proc` readers to tell whether a process is gone, a zombie, or whose
//!   child it is.
//! - `mute_stderr`: for a task that exhausts its worker's memory on purpose,
//!   so that Rust's "memory allocation of N bytes failed" (and a backtrace
//!   under `RUST_BACKTRACE`) stays out of the test output.
//! - `TestAlloc`, every test binary's global allocator: the system allocator,
//!   or shmpool's shared heap when `SHMPOOL_TEST_HEAP` is set (`1`: the
//!   default heap; `small`: a 256 MiB heap keeping 16 MiB warm), so that CI
//!   runs the whole suite once with the heap installed.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicU32};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: TestAlloc = TestAlloc;

/// The environment variable that installs the shared heap in a test binary.
pub const TEST_HEAP: &str = "SHMPOOL_TEST_HEAP";

// SAFETY (both): the tests' tasks read heap memory only through their
// arguments, or data built before `Pool::new` that no task reads while the
// test process changes it (`heap_pool` checks what a task sees of a
// `static`).
static DEFAULT_HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
static SMALL_HEAP: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() }
    .capacity(256 << 20)
    .keep_warm(16 << 20);

/// The test binaries' global allocator: `System`, or the shared heap that
/// `SHMPOOL_TEST_HEAP` names, decided at the first allocation.
pub struct TestAlloc;

/// 0 undecided, 1 the system allocator, 2 the default heap, 3 the small heap.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// The shared heap this binary allocates from, if any.
pub fn heap() -> Option<&'static shmpool::SharedHeap> {
    match choice() {
        2 => Some(&DEFAULT_HEAP),
        3 => Some(&SMALL_HEAP),
        _ => None,
    }
}

fn choice() -> u8 {
    match CHOICE.load(Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name; the value is read
            // at once (no allocation: this runs inside the allocator).
            let value = unsafe { libc::getenv(c"SHMPOOL_TEST_HEAP".as_ptr()) };
            let c = if value.is_null() {
                1
            } else {
                // SAFETY: getenv returned a NUL-terminated string.
                match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
                    b"" | b"0" => 1,
                    b"small" => 3,
                    _ => 2,
                }
            };
            CHOICE.store(c, Relaxed);
            c
        }
        c => c,
    }
}

fn chosen() -> &'static dyn GlobalAlloc {
    match heap() {
        Some(h) => h,
        None => &System,
    }
}

// SAFETY: forwards every call to one allocator, chosen once for the life of
// the process.
unsafe impl GlobalAlloc for TestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { chosen().dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().realloc(ptr, layout, new_size) }
    }
}

/// The id of the test process (0 until a test body ran under `deadline`).
static TEST_PID: AtomicU32 = AtomicU32::new(0);

/// Sends this worker's standard error to `/dev/null`, for a task about to
/// allocate past its worker's memory limit on purpose: Rust prints "memory
/// allocation of N bytes failed" (and, under `RUST_BACKTRACE`, a backtrace)
/// before it aborts, and the test checks the typed error instead
/// (`MemoryLimit`, `WorkerDied`). Also a pool's initializer, for a task that
/// overflows its stack before its first statement. The worker dies, so
/// nothing else it would print is lost; a worker that survives (an
/// allocation within the limit) only ever reports through the pool's
/// errors, which the test sees. Does nothing in the test process itself (a
/// pool whose caller runs ranges), whose output belongs to the test harness.
pub fn mute_stderr() {
    // ORDERING: Relaxed: set by the test process before it built the pool
    // that forked this worker.
    if std::process::id() == TEST_PID.load(Relaxed) {
        return;
    }
    // SAFETY: open a NUL-terminated path; dup2 onto this process's fd 2 and
    // close the spare descriptor: no memory is touched.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, libc::STDERR_FILENO);
            libc::close(null);
        }
    }
}

/// Runs `body` on its own thread and fails the test if it has not finished
/// within `secs` seconds.
pub fn deadline<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    // ORDERING: Relaxed: read only by processes forked after this store.
    TEST_PID.store(std::process::id(), Relaxed);
    let (tx, rx) = mpsc::channel();
    let name = thread::current().name().unwrap_or("test").to_owned();
    thread::Builder::new()
        .name(format!("{name}-body"))
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(body)));
        })
        .expect("spawn test body");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{name}: missed its deadline of {secs} s (hung?)"),
    }
}

/// A task that takes about `ms` milliseconds and returns `ms`.
pub fn sleepy(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// A gate that tasks in worker processes wait at until the test opens it:
/// a file in the temporary directory, named by a token that the task gets
/// as its argument. A job that must still be running when the test looks
/// at it (not `ready`, a short wait that times out) waits at a gate rather
/// than sleeping for a while, which a loaded machine can outlast between
/// two lines of the test. Dropping the gate removes its file (a task still
/// waiting at it goes on waiting: a failed test's pool, dropped, kills it).
pub struct Gate {
    token: u64,
}

/// Gates made so far by this process (part of each token).
static GATES: AtomicU32 = AtomicU32::new(0);

/// How long a task waits at a gate that is never opened.
const GATE_PATIENCE: Duration = Duration::from_secs(60);

impl Gate {
    pub fn new() -> Gate {
        // ORDERING: Relaxed: only uniqueness matters.
        let n = GATES.fetch_add(1, Relaxed);
        Gate {
            token: (u64::from(std::process::id()) << 32) | u64::from(n),
        }
    }

    /// The argument for a task that calls [`gated`].
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Lets every task waiting at this gate (and any later one) go on.
    pub fn open(&self) {
        std::fs::write(gate_path(self.token), b"").expect("create the gate's file");
    }

    /// Whether a task has reached this gate (it may have passed it since).
    pub fn reached(&self) -> bool {
        arrival_path(self.token).exists()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(gate_path(self.token));
        let _ = std::fs::remove_file(arrival_path(self.token));
    }
}

fn gate_path(token: u64) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmpool-test-gate-{token:x}"))
}

fn arrival_path(token: u64) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmpool-test-gate-{token:x}.reached"))
}

/// Says, from a task, that it has reached the gate of `token`
/// ([`Gate::reached`]) without waiting there.
pub fn arrive(token: u64) {
    let _ = std::fs::write(arrival_path(token), b"");
}

/// A task that says it has reached the gate of `token` ([`Gate::reached`]),
/// waits until the gate is open (or a minute has passed), then returns
/// `token`.
pub fn gated(token: u64) -> u64 {
    arrive(token);
    let end = Instant::now() + GATE_PATIENCE;
    while !gate_path(token).exists() && Instant::now() < end {
        thread::sleep(Duration::from_millis(1));
    }
    token
}

/// The file `die_once_then_say_who` leaves for `tag` when it kills its
/// worker.
pub fn died_mark(tag: u64) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmpool-test-{tag:x}-died"))
}

/// Element 0 kills its worker the first time it runs for `tag` (after
/// 30 ms, leaving `died_mark(tag)`); every element, 0 again included,
/// returns the pid of the worker that ran it.
pub fn die_once_then_say_who(tag: &u64, x: u64) -> u64 {
    if x == 0 && std::fs::File::create_new(died_mark(*tag)).is_ok() {
        thread::sleep(Duration::from_millis(30));
        std::process::abort();
    }
    u64::from(std::process::id())
}

/// Runs a job of four elements whose element 0 kills its worker the first
/// time (`die_once_then_say_who`), and checks that it did. Returns the pid
/// of the worker that ran element 0 again, and how long the job took.
pub fn lose_element_0(pool: &shmpool::Pool, tag: u64) -> (u32, Duration) {
    let _ = std::fs::remove_file(died_mark(tag));
    let t = Instant::now();
    let who = pool
        .map_with(tag, &[0u64, 1, 2, 3], die_once_then_say_who)
        .expect("the lost range ran again");
    let took = t.elapsed();
    assert!(died_mark(tag).exists(), "element 0 did not kill its worker");
    let _ = std::fs::remove_file(died_mark(tag));
    (who[0] as u32, took)
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `(state, ppid)` of a process from `/proc/<pid>/stat`, or `None` if there
/// is no such process.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a live (running or sleeping, not zombie) process whose
/// parent is this process.
pub fn is_live_child(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, ppid)) if ppid == std::process::id() && s != 'Z' && s != 'X')
}

/// Whether `pid` is a zombie child of this process (exited, never reaped).
pub fn is_zombie_child(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('Z', ppid)) if ppid == std::process::id())
}

/// Whether `pid` no longer runs: gone, or a zombie of anyone.
pub fn is_dead(pid: u32) -> bool {
    matches!(proc_stat(pid), None | Some(('Z' | 'X', _)))
}

/// Process ids of this process's children, live or zombie, from `/proc`.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == me))
        .collect()
}

/// Asserts that none of `pids` is still a child of this process, live or
/// zombie.
pub fn assert_reaped(pids: &[u32]) {
    for &pid in pids {
        assert!(
            !is_live_child(pid) && !is_zombie_child(pid),
            "worker {pid} is still a child of the test process: {:?}",
            proc_stat(pid)
        );
    }
}

/// Set in the environment of a test run by `isolated`.
pub const ISOLATED: &str = "SHMPOOL_ISOLATED_TEST";

/// Runs the `#[ignore]`d test `name` of this binary in a fresh process and
/// fails unless it passes within `secs` seconds. Returns its stdout.
pub fn isolated(name: &str, secs: u64) -> String {
    isolated_with(
        name,
        secs,
        Command::new(std::env::current_exe().expect("test binary path")),
    )
}

/// [`isolated`], with the soft limit of `resource` set to `limit` before the
/// test binary starts, as a batch queue's `ulimit` would be: the process
/// (and a shared heap it installs at its first allocation) starts under it.
pub fn isolated_under_rlimit(
    name: &str,
    secs: u64,
    resource: libc::__rlimit_resource_t,
    limit: u64,
) -> String {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    // SAFETY: the closure runs in the forked child before exec and only
    // calls getrlimit and setrlimit, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(resource, &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let new = libc::rlimit {
                rlim_cur: limit.min(old.rlim_max),
                rlim_max: old.rlim_max,
            };
            if libc::setrlimit(resource, &new) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    isolated_with(name, secs, command)
}

/// [`isolated`], with the shared heap installed in the test process
/// (`SHMPOOL_TEST_HEAP=1`: the default heap).
pub fn isolated_with_heap(name: &str, secs: u64) -> String {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command.env(TEST_HEAP, "1");
    isolated_with(name, secs, command)
}

/// [`isolated`], with the system allocator as the test process's global
/// allocator whatever `SHMPOOL_TEST_HEAP` says (for a test that reserves a
/// shared heap of its own).
pub fn isolated_without_heap(name: &str, secs: u64) -> String {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command.env_remove(TEST_HEAP);
    isolated_with(name, secs, command)
}

fn isolated_with(name: &str, secs: u64, mut command: Command) -> String {
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ISOLATED, "1");
    run_to_end(command, &format!("isolated test {name}"), secs)
}

/// Runs `command` with its stdout and stderr captured, and fails unless it
/// exits successfully within `secs` seconds (`what` names it in the
/// message). Returns its stdout.
pub fn run_to_end(mut command: Command, what: &str, secs: u64) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let end = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let output = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("{what} failed ({s}):\n{stdout}\n{stderr}"),
        None => panic!("{what} missed its deadline of {secs} s:\n{stdout}\n{stderr}"),
    }
}

/// Whether this process is an `isolated` run (the ignored bodies check it so
/// that `cargo test -- --ignored` run by hand does not run them twice).
pub fn in_isolation() -> bool {
    std::env::var_os(ISOLATED).is_some()
}

/// This process's threads, as listed in `/proc/self/task` (0 without
/// `/proc`). A joined thread may stay listed for a moment.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This process's threads once no stdio probe thread (started by a
/// `Pool::new` in a program with threads, ending just after the build
/// returns) is left listed: a baseline that a probe still on its way out
/// does not inflate.
pub fn settled_threads() -> usize {
    let probing = || {
        std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "shmpool-stdio")
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || !probing()),
        "a stdio probe thread did not end"
    );
    threads()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Shared-memory regions made by shmpool that this process maps (one per
/// memfd, counted by inode: the arena's huge-page advice splits a region's
/// mapping into two lines of `/proc/self/maps`).
pub fn shmpool_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:shmpool"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes.len()
}

/// A tiny deterministic PRNG (xorshift64*), so tests need no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The pool still maps correctly, and every worker has been replaced (a
/// replacement may lag the failed job that caused it).
pub fn assert_healthy(pool: &shmpool::Pool) {
    let xs: Vec<u64> = (0..10_000).collect();
    let ys = pool.map(&xs, |x| x * 3).expect("the next map works");
    assert!(ys.iter().enumerate().all(|(i, &y)| y == 3 * i as u64));
    assert!(
        wait_until(Duration::from_secs(5), || pool.worker_pids().len()
            == pool.workers()),
        "workers: {:?}",
        pool.worker_pids()
    );
}

/// Forgeries of a job's completion words, written by a task into its own
/// slot. White-box: the offsets are those of `Desc` and `Slot` in
/// `src/layout.rs` (a slot is found by its descriptor, not by its index, so
/// the test follows the ring's size and the worker count).
pub mod forge {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

    /// What each forgery writes; the index is the `kind` of `forge`.
    pub const KINDS: [&str; 7] = [
        "state = DONE",
        "done = len",
        "state = DONE and done = len",
        "done = len - chunk (an honest add completes the job)",
        "claim = len",
        "claim = 0 (ranges run again)",
        "every completion word, consistently",
    ];

    /// `Desc::state` (u32) is a slot's first word; `len` and `chunk` (u64)
    /// are at these offsets from its start.
    const LEN: usize = 48;
    const CHUNK: usize = 56;
    /// `Desc::out_off`, and `Desc::more` (two u64: `map3`'s second and
    /// third inputs, or a table's offset and length).
    const OUT_OFF: usize = 32;
    const MORE: usize = 64;
    /// `Slot::claim` (its counter first) after the 128-byte descriptor, and
    /// `Slot::counts` (`done`, then `squares`) after its 256 bytes.
    const CLAIM: usize = 128;
    const DONE: usize = 384;
    const SQUARES: usize = 392;
    /// `Desc::notify` (u32: `NOTIFY_EVENT` is bit 0) and `Desc::abort`
    /// (u32).
    const NOTIFY: usize = 8;
    const ABORT: usize = 12;
    /// `SLOT_RUNNING` and `SLOT_DONE`.
    const SLOT_RUNNING: u32 = 1;
    const SLOT_DONE: u32 = 2;
    /// The slots lie in the region's first 64 KiB for the rings the tests
    /// build (`ring_size(8)`).
    const SCAN: usize = 64 << 10;

    /// The base of this worker's region (workers map only their own pool's).
    pub fn region_base() -> Option<usize> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let line = maps.lines().find(|l| l.contains("memfd:shmpool"))?;
        usize::from_str_radix(line.split('-').next()?, 16).ok()
    }

    fn word(addr: usize) -> &'static AtomicU64 {
        // SAFETY: unsafe test code: `addr` is an 8-byte aligned address in
        // the first 64 KiB of the pool's shared mapping, which stays mapped
        // for the life of the worker; every process accesses it atomically.
        unsafe { &*(addr as *const AtomicU64) }
    }

    /// The running job of `len` elements (the only one of that length in
    /// the ring), found from inside one of its tasks: its slot's address.
    fn running_slot(len: u64) -> Option<usize> {
        let base = region_base()?;
        (0..SCAN).step_by(128).map(|off| base + off).find(|&s| {
            // SAFETY: as in `word`; a slot's first word is its u32 state.
            let state = unsafe { &*(s as *const AtomicU32) };
            word(s + LEN).load(SeqCst) == len && state.load(SeqCst) == SLOT_RUNNING
        })
    }

    /// Scribbles the work-token count (`Semaphore::count`, the first word
    /// of `Control::sem`, at 256 in the control block) up to `u32::MAX`,
    /// from inside a task. Returns false if the region was not found.
    pub fn flood_the_tokens() -> bool {
        const TOKENS: usize = 256;
        let Some(base) = region_base() else {
            return false;
        };
        // SAFETY: as in `word`, at the count's offset (4-byte aligned).
        let count = unsafe { &*((base + TOKENS) as *const AtomicU32) };
        count.store(u32::MAX, SeqCst);
        true
    }

    /// Sets the `NOTIFY_EVENT` bit of the running job of `len` elements,
    /// from inside one of its tasks: a worker that enters the job after
    /// this (and only such a one: each reads the bit as it enters) writes
    /// the completion eventfd when it leaves a failed job or completes it,
    /// as it would for an asynchronous job, although this one is not.
    /// Returns false if the slot was not found.
    pub fn ring_on_completion(len: u64) -> bool {
        let Some(slot) = running_slot(len) else {
            return false;
        };
        // SAFETY: as in `word`, at `Desc::notify`'s offset (4-byte aligned).
        let notify = unsafe { &*((slot + NOTIFY) as *const AtomicU32) };
        notify.fetch_or(1, SeqCst);
        true
    }

    /// Points the `more` words of the running job of `len` elements (a
    /// `map_shared` table, or `map3`'s inputs) at the job's own output, from
    /// inside one of its tasks: a runner that believed them would read the
    /// output as a table (or as inputs) while writing it. Does nothing
    /// outside a worker and returns true then; false if the slot was not
    /// found.
    pub fn redirect_more(len: u64, parent: u32) -> bool {
        if std::process::id() == parent {
            return true;
        }
        let Some(slot) = running_slot(len) else {
            return false;
        };
        let out = word(slot + OUT_OFF).load(SeqCst);
        word(slot + MORE).store(out, SeqCst);
        word(slot + MORE + 8).store(len, SeqCst);
        true
    }

    /// `WorkerRecord`: `phase` (u32) at 4, `init` (u32) at 12, `start` and
    /// `end` (u64) at 16 and 24, `in_range` (u32) at 40, `steps` (u64) at
    /// 48; the records follow the
    /// 1408-byte control block, one 128-byte line each (pinned by the
    /// crate's layout test).
    const RECORDS: usize = 1408;
    const PHASE: usize = 4;
    const INIT: usize = 12;
    const START: usize = 16;
    const END: usize = 24;
    const IN_RANGE: usize = 40;
    const STEPS: usize = 48;

    fn u32_at(addr: usize) -> &'static AtomicU32 {
        // SAFETY: as in `word`, for an aligned u32 of the mapping.
        unsafe { &*(addr as *const AtomicU32) }
    }

    /// The record of the worker running range `start..end`, found from
    /// inside one of its tasks: its address.
    fn running_record(start: u64, end: u64) -> Option<usize> {
        let base = region_base()?;
        (0..64).map(|w| base + RECORDS + 128 * w).find(|&r| {
            u32_at(r + PHASE).load(SeqCst) == 1
                && word(r + START).load(SeqCst) == start
                && word(r + END).load(SeqCst) == end
        })
    }

    /// Writes the initializer's mark (`INIT_MARK`) into the record of the
    /// worker running range `start..end` (this one, when the job runs one
    /// range at a time), from inside a task: the word a worker holds while
    /// its initializer runs. Returns whether it found the record.
    pub fn mark_as_initializing(start: u64, end: u64) -> bool {
        const INIT_MARK: u32 = 0x494e_4954;
        let found = running_record(start, end);
        if let Some(r) = found {
            u32_at(r + INIT).store(INIT_MARK, SeqCst);
        }
        found.is_some()
    }

    /// Writes "in no slot" (`NO_SLOT`) into the `slot` word (at 0) of the
    /// record of the worker running range `start..end` (this one), from
    /// inside a task: one scribbled word that must not hide the worker from
    /// the parent's drain while it still runs the range. Returns whether it
    /// found the record.
    pub fn hide_from_drain(start: u64, end: u64) -> bool {
        const NO_SLOT: u32 = u32::MAX;
        let found = running_record(start, end);
        if let Some(r) = found {
            u32_at(r).store(NO_SLOT, SeqCst);
        }
        found.is_some()
    }

    /// A task for a job of one-element ranges: element 0 hides its worker
    /// from the parent's drain ([`hide_from_drain`]), runs on for 500 ms
    /// and returns a marker; element 1, on another worker, panics after
    /// 100 ms; the others pass through. 2: the record was not found.
    pub fn hide_then_write(x: u64) -> u64 {
        match x {
            0 => {
                if !hide_from_drain(0, 1) {
                    return 2;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
                0xdead
            }
            1 => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                panic!("element 1 fails");
            }
            _ => x,
        }
    }

    /// Writes "idle" into the `phase` word of the record of the worker
    /// running range `start..end` (this one), from inside a task: one
    /// scribbled word that must not stop the worker being timed, watched or
    /// settled as running a range. Returns whether it found the record.
    pub fn pose_idle(start: u64, end: u64) -> bool {
        const PHASE_IDLE: u32 = 0;
        let found = running_record(start, end);
        if let Some(r) = found {
            u32_at(r + PHASE).store(PHASE_IDLE, SeqCst);
        }
        found.is_some()
    }

    /// Makes the record of the worker running range `start..end` (this
    /// one, when the job runs one range at a time) look as it does between
    /// two ranges while it holds a claim it has not recorded: in the slot,
    /// in no range, phase idle, an odd count of steps. That is what a worker stopped
    /// after a claim and before running it shows (or after running a range
    /// and before counting it). Returns whether it found the record.
    pub fn pose_between_ranges(start: u64, end: u64) -> bool {
        const PHASE_IDLE: u32 = 0;
        const NO_SLOT: u32 = u32::MAX;
        let found = running_record(start, end);
        if let Some(r) = found {
            word(r + STEPS).fetch_or(1, SeqCst);
            u32_at(r + IN_RANGE).store(NO_SLOT, SeqCst);
            u32_at(r + PHASE).store(PHASE_IDLE, SeqCst);
        }
        found.is_some()
    }

    /// Forgery `kind` over the completion words of the running job of
    /// `len` elements (the only one of that length in the ring), from inside
    /// one of its tasks. Wakes the caller if it sleeps on the slot, as an
    /// honest completion would. Does nothing outside a worker (a caller
    /// running ranges maps every pool of the test binary) and returns true
    /// then; false if the slot was not found (the test then fails on the
    /// result).
    pub fn forge(kind: u64, len: u64, parent: u32) -> bool {
        if std::process::id() == parent {
            return true;
        }
        let Some(slot) = running_slot(len) else {
            return false;
        };
        // SAFETY: as in `word`; `slot` is 128-byte aligned.
        let state = unsafe { &*(slot as *const AtomicU32) };
        let chunk = word(slot + CHUNK).load(SeqCst);
        match kind {
            0 => state.store(SLOT_DONE, SeqCst),
            1 => word(slot + DONE).store(len, SeqCst),
            2 => {
                word(slot + DONE).store(len, SeqCst);
                state.store(SLOT_DONE, SeqCst);
            }
            3 => word(slot + DONE).store(len.saturating_sub(chunk), SeqCst),
            4 => word(slot + CLAIM).store(len, SeqCst),
            5 => word(slot + CLAIM).store(0, SeqCst),
            _ => {
                // What an honest completion leaves, written by a task that
                // knows the protocol.
                word(slot + CLAIM).fetch_max(len, SeqCst);
                word(slot + SQUARES).store(len.wrapping_mul(len), SeqCst);
                word(slot + DONE).store(len, SeqCst);
                state.store(SLOT_DONE, SeqCst);
            }
        }
        // SAFETY: FUTEX_WAKE on a valid, aligned u32 of the shared mapping.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                slot as *const u32,
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        if kind == 6 {
            // Stay in this range until the parent has looked (it empties
            // the slot, or aborts the job), so that it looks while a range
            // runs; at most 5 s.
            // SAFETY: as for `state`, at its documented offset.
            let abort = unsafe { &*((slot + ABORT) as *const AtomicU32) };
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while state.load(SeqCst) == SLOT_DONE
                && abort.load(SeqCst) == 0
                && std::time::Instant::now() < end
            {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        true
    }
}
