//! `imap` and `imap_unordered`: results match a serial map (in order, or as
//! a multiset), failing elements yield `Err` in their place and the stream
//! goes on, and memory stays bounded however long the stream.

mod common;

use std::time::{Duration, Instant};

use common::deadline;
use shmpool::{Error, Pool};

const LENS: [u64; 6] = [0, 1, 7, 1000, 4097, 100_003];

#[test]
fn imap_yields_what_a_serial_map_does_in_order() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            for chunk in [1, 7, 1024, 1 << 16] {
                let got: Vec<u64> = pool
                    .imap(0..n, |x| x * x + 1)
                    .unwrap()
                    .chunksize(chunk)
                    .map(Result::unwrap)
                    .collect();
                let want: Vec<u64> = (0..n).map(|x| x * x + 1).collect();
                assert_eq!(got, want, "n = {n}, chunksize = {chunk}");
            }
        }
        // Any iterator of Pod items; a different output type.
        let words = ["a", "bb", "ccc"].iter().map(|w| w.len() as u32);
        let got: Vec<f64> = pool
            .imap(words, |n| f64::from(n) / 2.0)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, vec![0.5, 1.0, 1.5]);
    })
}

#[test]
fn imap_unordered_yields_every_result_once() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let mut got: Vec<u64> = pool
                .imap_unordered(0..n, |x| 3 * x)
                .unwrap()
                .chunksize(97)
                .map(Result::unwrap)
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..n).map(|x| 3 * x).collect::<Vec<_>>(), "n = {n}");
        }
    })
}

#[test]
fn imap_unordered_yields_fast_chunks_before_slow_ones() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // Chunk 0 is slow (300 ms); the rest are instant.
        let first: Vec<u64> = pool
            .imap_unordered(0..40u64, |x| {
                if x == 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                x
            })
            .unwrap()
            .chunksize(10)
            .take(10)
            .map(Result::unwrap)
            .collect();
        assert!(!first.contains(&0), "the slow chunk came last: {first:?}");
    })
}

/// Panics on multiples of 100, kills its worker on 777.
fn fragile(x: u64) -> u64 {
    if x == 777 {
        std::process::abort();
    }
    assert!(x % 100 != 0 || x == 0, "bad {x}");
    x + 1
}

#[test]
fn failing_elements_yield_errors_in_place_and_the_stream_goes_on() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for ordered in [true, false] {
            let it = if ordered {
                pool.imap(0..2_000u64, fragile).unwrap()
            } else {
                pool.imap_unordered(0..2_000u64, fragile).unwrap()
            };
            let results: Vec<(u64, Result<u64, Error>)> = it
                .chunksize(64)
                .enumerate()
                .map(|(i, r)| (i as u64, r))
                .collect();
            assert_eq!(results.len(), 2_000);
            let errs: Vec<u64> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(errs.len(), 20, "19 panics and one dead worker");
            if ordered {
                // In place: exactly the failing elements.
                let want: Vec<u64> = (1..20).map(|k| k * 100).chain([777]).collect();
                let mut e = errs.clone();
                e.sort_unstable();
                let mut w = want.clone();
                w.sort_unstable();
                assert_eq!(e, w);
                for (i, r) in &results {
                    match r {
                        Ok(v) => assert_eq!(*v, i + 1),
                        Err(Error::TaskPanicked { message, .. }) => {
                            assert_eq!(message, &format!("bad {i}"))
                        }
                        Err(Error::WorkerDied { .. }) => assert_eq!(*i, 777),
                        Err(other) => panic!("{i}: {other:?}"),
                    }
                }
            } else {
                let mut oks: Vec<u64> = results.into_iter().filter_map(|(_, r)| r.ok()).collect();
                oks.sort_unstable();
                let want: Vec<u64> = (0..2_000)
                    .filter(|&x| x == 0 || (x % 100 != 0 && x != 777))
                    .map(|x| x + 1)
                    .collect();
                assert_eq!(oks, want);
            }
        }
        assert_eq!(
            pool.map(&[1u8], |x| x).unwrap(),
            vec![1],
            "the pool carries on"
        );
    })
}

#[test]
fn a_billion_element_stream_runs_in_bounded_memory() {
    deadline(300, || {
        // A 32 MiB arena; each chunk needs 2 × 1 MiB (input and output).
        let pool = Pool::builder()
            .workers(2)
            .arena_size(32 << 20)
            .build()
            .unwrap();
        let n: u64 = 1_000_000_000;
        let chunk = 1 << 20;
        let window = 8;
        let t = Instant::now();
        let mut sum = 0u64;
        let mut peak = 0;
        let mut count = 0u64;
        for (i, r) in pool
            .imap(0..n, |x: u64| (x & 0xff) as u8)
            .unwrap()
            .chunksize(chunk)
            .window(window)
            .enumerate()
        {
            sum += u64::from(r.unwrap());
            count += 1;
            if i % (1 << 22) == 0 {
                peak = peak.max(pool.stats().arena_in_use);
            }
        }
        assert_eq!(count, n);
        // 0..=255 repeating: n / 256 full cycles.
        assert_eq!(sum, (n / 256) * (255 * 256 / 2));
        // Each chunk in flight holds its input (8 B) and output (1 B) per
        // element, plus one being read: bounded by the window, not by n.
        let bound = (window as u64 + 2) * chunk as u64 * 9;
        assert!(peak <= bound, "peak arena {peak} > {bound}");
        println!(
            "1e9 elements in {:.1} s, peak arena {:.1} MiB",
            t.elapsed().as_secs_f64(),
            peak as f64 / (1 << 20) as f64
        );
    })
}

#[test]
fn dropping_a_stream_midway_cancels_its_jobs_and_frees_memory() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let base = pool.stats().arena_in_use;
        let mut it = pool
            .imap(0..1_000_000u64, |x| {
                std::thread::sleep(Duration::from_micros(50));
                x
            })
            .unwrap()
            .chunksize(1000);
        assert_eq!(it.next().unwrap().unwrap(), 0);
        drop(it);
        assert!(common::wait_until(Duration::from_secs(10), || pool
            .stats()
            .arena_in_use
            == base));
        assert!(pool.stats().jobs_cancelled >= 1);
        assert_eq!(pool.map(&[2u8], |x| x * 2).unwrap(), vec![4]);
    })
}

#[test]
fn a_closed_pool_refuses_a_stream() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        pool.close();
        assert!(matches!(pool.imap(0..10u8, |x| x), Err(Error::Closed)));
    })
}

#[test]
fn a_full_arena_slows_a_stream_without_ending_it() {
    deadline(120, || {
        // 4 MiB of arena; a window of 16 chunks of 64 Ki u64 would need 16.
        let pool = Pool::builder()
            .workers(2)
            .arena_size(4 << 20)
            .build()
            .unwrap();
        let n = 1_000_000u64;
        let sum: u64 = pool
            .imap(0..n, |x| x & 1)
            .unwrap()
            .chunksize(1 << 16)
            .window(16)
            .map(Result::unwrap)
            .sum();
        assert_eq!(sum, n / 2);
    })
}

#[test]
fn a_terminated_pool_ends_a_stream_after_one_error() {
    deadline(60, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let p = pool.clone();
        let mut it = pool
            .imap(0..1_000_000u64, |x| {
                std::thread::sleep(Duration::from_micros(20));
                x
            })
            .unwrap()
            .chunksize(1000)
            .window(6);
        assert!(it.next().unwrap().is_ok());
        p.terminate();
        let rest: Vec<Result<u64, Error>> = it.collect();
        let errors = rest.iter().filter(|r| r.is_err()).count();
        assert_eq!(errors, 1, "one error, then the end");
        assert!(matches!(
            rest.last(),
            Some(Err(Error::Terminated | Error::Closed))
        ));
    })
}

#[test]
fn imap_inside_a_completion_callback_would_deadlock() {
    deadline(60, || {
        static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
        let pool = POOL.get_or_init(|| Pool::new(2).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Slow enough that the callback runs on the result thread.
        let r = pool.apply_async(50u64, common::sleepy).unwrap();
        r.on_complete(move |_| {
            let a = matches!(
                POOL.get().unwrap().imap(0..10u8, |x| x).map(|_| ()),
                Err(Error::WouldDeadlock { .. })
            );
            let b = matches!(
                POOL.get()
                    .unwrap()
                    .imap_unordered(0..10u8, |x| x)
                    .map(|_| ()),
                Err(Error::WouldDeadlock { .. })
            );
            tx.send(a && b).unwrap();
        });
        r.detach();
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        assert_eq!(
            pool.apply(3u8, |x| x + 1).unwrap(),
            4,
            "the result thread lives"
        );
    })
}
