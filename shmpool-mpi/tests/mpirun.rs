//! The cluster's tests, run by `cargo test` through `mpirun`.
//!
//! Started by `cargo test`, this binary is the driver: for 1 to 4 ranks,
//! over shared memory (`btl = self,vader`) and over TCP on the loopback
//! (`btl = self,tcp`, the path between hosts), it runs
//! `mpirun -np N --bind-to none <this binary> --rank`, each under a time
//! limit, and checks that every rank reported success. Started with
//! `--rank` (by mpirun), it is one rank: it runs every scenario of
//! `scenarios/` and prints `rank R of N: all scenarios passed`. Started with
//! `--rank-panics`, it is a rank of a job in which rank 1 panics while rank 0
//! goes on: the driver checks that the job ends, and does not hang.
//!
//! Without `mpirun` on the PATH the driver prints why and passes, unless
//! `SHMPOOL_MPI_REQUIRE=1` (CI) makes that a failure.

mod scenarios;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The longest one mpirun may run.
const LIMIT: Duration = Duration::from_secs(240);

/// The longest a job with a panicking rank may take to end.
const PANIC_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    if std::env::args().any(|a| a == "--rank") {
        scenarios::rank_main();
        return;
    }
    if std::env::args().any(|a| a == "--rank-panics") {
        scenarios::panicking_rank_main();
        return;
    }
    std::process::exit(driver());
}

/// Which MPI `mpirun` belongs to.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Flavor {
    OpenMpi,
    Other,
}

fn flavor() -> Option<Flavor> {
    let out = Command::new("mpirun").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase()
        + &String::from_utf8_lossy(&out.stderr).to_lowercase();
    Some(if text.contains("open mpi") || text.contains("open-mpi") {
        Flavor::OpenMpi
    } else {
        Flavor::Other
    })
}

fn driver() -> i32 {
    let required = std::env::var("SHMPOOL_MPI_REQUIRE").is_ok_and(|v| v == "1");
    let Some(flavor) = flavor() else {
        let why = "mpirun is not on the PATH; install Open MPI to run these tests \
                   (apt-get install -y libopenmpi-dev openmpi-bin libclang-dev)";
        if required {
            eprintln!("FAILED: {why} (SHMPOOL_MPI_REQUIRE=1)");
            return 1;
        }
        println!("skipped: {why}");
        return 0;
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let transports: &[(&str, &[(&str, &str)])] = match flavor {
        Flavor::OpenMpi => &[
            ("shared memory", &[("OMPI_MCA_btl", "self,vader")]),
            (
                "tcp",
                &[
                    ("OMPI_MCA_btl", "self,tcp"),
                    ("OMPI_MCA_btl_tcp_if_include", "lo"),
                ],
            ),
        ],
        Flavor::Other => &[("default transport", &[])],
    };
    let mut failed = 0;
    for (name, env) in transports {
        for np in 1..=4 {
            let label = format!("{np} rank(s), {name}");
            let mut cmd = mpirun(flavor, np);
            cmd.arg(&exe).arg("--rank").envs(env.iter().copied());
            if !run_checked(&label, cmd, np, "all scenarios passed") {
                failed += 1;
            }
        }
    }
    // A panic in one rank's own code, with no panic hook, while the other
    // rank goes on with the cluster: the job must end (its cluster aborts
    // it as the panic unwinds), not hang.
    let mut cmd = mpirun(flavor, 2);
    cmd.arg(&exe).arg("--rank-panics");
    if !run_failing(
        "a rank that panics, 2 ranks",
        cmd,
        PANIC_LIMIT,
        "its cluster alive",
    ) {
        failed += 1;
    }
    // The example, as a user runs it, if `cargo test` built it.
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("mpi_map"));
    match example {
        Some(path) if path.exists() => {
            let mut cmd = mpirun(flavor, 2);
            cmd.arg(&path).arg("100003");
            if !run_checked("example mpi_map, 2 ranks", cmd, 1, "match the serial map") {
                failed += 1;
            }
        }
        _ => println!("example mpi_map not built; not run"),
    }
    if failed > 0 {
        eprintln!("{failed} mpirun case(s) failed");
        return 1;
    }
    println!("all mpirun cases passed");
    0
}

/// `mpirun` for `np` ranks on this host, unbound, allowed to oversubscribe
/// the cores and to run as root.
fn mpirun(flavor: Flavor, np: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    match flavor {
        Flavor::OpenMpi => {
            cmd.args(["-np", &np.to_string(), "--bind-to", "none"])
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
                .env("OMPI_MCA_pml", "ob1");
        }
        Flavor::Other => {
            cmd.args(["-n", &np.to_string(), "-bind-to", "none"]);
        }
    }
    cmd
}

/// Runs `cmd` under [`LIMIT`] and checks that it succeeded and printed
/// `expect` on `lines` lines.
fn run_checked(label: &str, mut cmd: Command, lines: usize, expect: &str) -> bool {
    let started = Instant::now();
    let (status, out, err) = match run_limited(&mut cmd, LIMIT) {
        Ok(done) => done,
        Err(why) => {
            eprintln!("FAILED {label}: {why}");
            return false;
        }
    };
    let reported = out.lines().filter(|l| l.contains(expect)).count();
    let ok = status.is_some_and(|s| s.success()) && reported == lines;
    let took = started.elapsed().as_secs_f64();
    if ok {
        println!("ok {label} ({took:.1} s)");
    } else {
        let status = status.map_or("killed after the time limit".to_owned(), |s| s.to_string());
        eprintln!(
            "FAILED {label} ({took:.1} s): {status}, {reported} of {lines} lines with {expect:?}\n\
             --- stdout\n{out}\n--- stderr\n{err}"
        );
    }
    ok
}

/// Runs `cmd` under `limit` and checks that it failed (did not hang) and
/// printed `expect` on stderr.
fn run_failing(label: &str, mut cmd: Command, limit: Duration, expect: &str) -> bool {
    let started = Instant::now();
    let (status, out, err) = match run_limited(&mut cmd, limit) {
        Ok(done) => done,
        Err(why) => {
            eprintln!("FAILED {label}: {why}");
            return false;
        }
    };
    let ok = status.is_some_and(|s| !s.success()) && err.contains(expect);
    let took = started.elapsed().as_secs_f64();
    if ok {
        println!("ok {label}: the job ended ({took:.1} s)");
    } else {
        let status = status.map_or("killed after the time limit".to_owned(), |s| s.to_string());
        eprintln!(
            "FAILED {label} ({took:.1} s): {status}, expected a failed job with {expect:?}\n\
             --- stdout\n{out}\n--- stderr\n{err}"
        );
    }
    ok
}

/// Runs `cmd` in a process group of its own; kills the group if it runs past
/// `limit`. Returns its status (`None`: killed), stdout and stderr.
fn run_limited(
    cmd: &mut Command,
    limit: Duration,
) -> Result<(Option<ExitStatus>, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start mpirun: {e}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                // SAFETY: kill(2) on the process group of a child we started
                // (it is its own group's leader, not yet reaped).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status, out, err))
}
