//! The compiler's message for an element type that is not plain old data.
//! Every entry point that takes or returns elements must give shmpool's own
//! message, which says what to use instead, and not bytemuck's bare "the
//! trait bound `String: Pod` is not satisfied" (rustc shows the message of
//! the bound the call names only when no other bound fails first).
//!
//! Each case is a small program checked by `cargo check` in a crate of its
//! own, with the workspace's lock file and offline, in a target directory
//! kept between runs (the first run checks shmpool's dependencies, about
//! 15 s; later runs take about a second per case).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What every case's error must say.
const MESSAGE: &str = "is not plain old data: shmpool cannot send it to a worker process";
/// The advice it must give.
const ADVICE: &str = "(`[f64; 2]` for a pair, not `(f64, f64)`)";

/// Programs that must not compile, with the type the error names.
const CASES: &[(&str, &str, &str)] = &[
    (
        "map_string_input",
        "String",
        "let v = vec![String::new()]; let _ = pool.map(&v, |s| s.len() as u64);",
    ),
    (
        "map_tuple_input",
        "(f64, f64)",
        "let _ = pool.map(&[(1.0f64, 2.0f64)], |(a, b)| a + b);",
    ),
    (
        "map_tuple_output",
        "(f64, f64)",
        "let _ = pool.map(&[1.0f64], |x| (x, x));",
    ),
    (
        "map_async_vec_of_tuples",
        "(u8, u8)",
        "let _ = pool.map_async(vec![(1u8, 2u8)], |(a, b)| a + b);",
    ),
    (
        "map_async_borrowed_strings",
        "String",
        "let v = vec![String::new()]; let _ = pool.map_async(&v, |s| s.len() as u64);",
    ),
    (
        "map_async_tuple_output",
        "(u32, u32)",
        "let _ = pool.map_async(vec![1u32], |x| (x, x));",
    ),
    (
        "imap_tuples",
        "(u8, u8)",
        "let _ = pool.imap(vec![(1u8, 2u8)], |(a, b)| a + b);",
    ),
    (
        "imap_unordered_strings",
        "String",
        "let _ = pool.imap_unordered(vec![String::new()], |s| s.len() as u64);",
    ),
    (
        "apply_async_string_output",
        "String",
        "let _ = pool.apply_async(1u32, |x| format!(\"{x}\"));",
    ),
    (
        "map_into_tuple_input",
        "(u8, u8)",
        "let mut out = [0u8]; let _ = pool.map_into(&[(1u8, 2u8)], &mut out, |(a, b)| a + b);",
    ),
    (
        "map_in_place_strings",
        "String",
        "let mut v = vec![String::new()]; let _ = pool.map_in_place(&mut v, |s| s);",
    ),
    (
        "to_shm_tuples",
        "(u8, u8)",
        "let _ = pool.to_shm(&[(1u8, 2u8)]);",
    ),
];

/// The same calls with plain-old-data types: the fixture itself compiles.
const CONTROL: &str = "
    let v = vec![[1.0f64, 2.0]];
    let _ = pool.map(&v, |[a, b]| a + b);
    let _ = pool.map(&[1.0f64], |x| [x, x]);
    let _ = pool.map_async(vec![[1u8, 2u8]], |[a, b]| a + b);
    let _ = pool.map_async(&v, |[a, b]| a * b);
    let _ = pool.imap(vec![[1u8, 2u8]], |[a, b]| a + b);
    let _ = pool.imap_unordered(vec![1u64], |x| x + 1);
    let _ = pool.apply_async(1u32, |x| [x; 4]);
    let mut out = [0u8];
    let _ = pool.map_into(&[[1u8, 2u8]], &mut out, |[a, b]| a + b);
    let _ = pool.to_shm(&[[1u8, 2u8]]);
";

fn program(body: &str) -> String {
    format!("fn main() {{\n    let pool = shmpool::Pool::new(1).unwrap();\n    {body}\n}}\n")
}

/// Writes the fixture crate (every case a binary of its own) and returns
/// its directory.
fn fixture() -> PathBuf {
    let shmpool = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("diagnostics");
    let bin = dir.join("src/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"diagnostics-fixture\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n[dependencies]\nshmpool = {{ path = {:?} }}\n\n[workspace]\n",
            shmpool.display().to_string()
        ),
    )
    .unwrap();
    // The versions the workspace builds with, so that no resolution needs
    // the network.
    std::fs::copy(shmpool.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/main.rs"), program(CONTROL)).unwrap();
    for (name, _, body) in CASES {
        std::fs::write(bin.join(format!("{name}.rs")), program(body)).unwrap();
    }
    dir
}

/// How long one `cargo check` may take (the first checks shmpool's
/// dependencies, about 15 s on 2 cores).
const CHECK_LIMIT: Duration = Duration::from_secs(300);

/// `cargo check` of one target of the fixture: whether it passed, and what
/// the compiler said. One that runs past `CHECK_LIMIT` (waiting on a lock
/// another cargo holds, say) is killed and fails the test.
fn check(dir: &Path, target: &[&str]) -> (bool, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(dir)
        .args(["check", "--offline", "--quiet", "--color", "never"])
        .args(target)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo runs");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cargo's status") {
            break status;
        }
        if started.elapsed() > CHECK_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo check {target:?} took over {CHECK_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn a_type_that_is_not_plain_old_data_gets_shmpools_message_at_every_entry_point() {
    let dir = fixture();
    let (ok, stderr) = check(&dir, &["--bin", "diagnostics-fixture"]);
    assert!(ok, "the fixture's control program must compile:\n{stderr}");
    let mut wrong = Vec::new();
    for (name, ty, _) in CASES {
        let (ok, stderr) = check(&dir, &["--bin", name]);
        let says = format!("`{ty}` {MESSAGE}");
        if ok || !stderr.contains(&says) || !stderr.contains(ADVICE) {
            wrong.push(format!(
                "{name}: expected an error saying \"{says}\" with the advice; got:\n{stderr}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
