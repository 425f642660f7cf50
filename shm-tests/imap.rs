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
        // The first chunk is quick; the chunks in flight behind it take
        // seconds (5 ms an element, 1000 elements a chunk, two workers), so
        // the drop finds them unfinished however slowly this thread gets
        // there on a loaded machine. Their running ranges (32 elements)
        // finish within a fraction of a second of the cancel.
        let mut it = pool
            .imap(0..1_000_000u64, |x| {
                let pause = if x < 1000 { 50 } else { 5_000 };
                std::thread::sleep(Duration::from_micros(pause));
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

fn slow_page(x: [u64; 512]) -> [u64; 512] {
    std::thread::sleep(Duration::from_millis(1));
    x
}

#[test]
fn a_chunk_larger_than_the_arena_is_split_until_it_fits() {
    deadline(120, || {
        // 600 items of 4 KiB: the default chunk (all of them) needs 4.8 MiB
        // in and out, the arena has 1 MiB. Element by element, the 600 jobs
        // submitted at once needed 8 KiB each, and most failed with
        // `OutOfSharedMemory`; in halves, 75 items fit.
        let pool = Pool::builder()
            .workers(2)
            .arena_size(1 << 20)
            .build()
            .unwrap();
        for ordered in [true, false] {
            let source = (0..600u64).map(|i| [i; 512]);
            let it = if ordered {
                pool.imap(source, slow_page).unwrap()
            } else {
                pool.imap_unordered(source, slow_page).unwrap()
            };
            let mut got: Vec<u64> = it.map(|r| r.unwrap()[511]).collect();
            if !ordered {
                got.sort_unstable();
            }
            assert_eq!(got, (0..600).collect::<Vec<_>>(), "ordered {ordered}");
        }
        common::assert_healthy(&pool);
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

fn first_fails_rest_slow(x: u64) -> u64 {
    assert!(x != 0, "the first");
    std::thread::sleep(Duration::from_millis(20));
    x
}

/// A chunk that failed is run again element by element; a `terminate`
/// meanwhile ends the stream after one error too, not one per element left.
#[test]
fn a_terminated_pool_ends_a_stream_after_one_error_while_elements_rerun() {
    deadline(60, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let mut it = pool
            .imap(0..100u64, first_fails_rest_slow)
            .unwrap()
            .chunksize(100);
        assert!(matches!(it.next(), Some(Err(Error::TaskPanicked { .. }))));
        assert_eq!(it.next().unwrap().unwrap(), 1);
        pool.terminate();
        let rest: Vec<Result<u64, Error>> = it.collect();
        let errors = rest.iter().filter(|r| r.is_err()).count();
        assert_eq!(errors, 1, "one error, then the end: {rest:?}");
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

fn plus_1000(x: u64) -> u64 {
    x + 1000
}

fn triple(x: u32) -> u32 {
    x * 3
}

fn times_ten(x: u64) -> u64 {
    x * 10
}

#[test]
fn a_work_queue_fed_by_its_own_results_does_not_deadlock() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        for (ordered, window) in [(true, None), (false, None), (true, Some(64))] {
            // A tree walk: each result may send more work; the queue ends when
            // the sender is dropped. The default window throughout.
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            tx.send(1).unwrap();
            tx.send(2).unwrap();
            let mut tx = Some(tx);
            let (mut sent, mut got) = (2, Vec::new());
            let it = if ordered {
                pool.imap(rx.iter(), plus_1000).unwrap()
            } else {
                pool.imap_unordered(rx.iter(), plus_1000).unwrap()
            };
            // Chunks of one item, as Python needs for a work queue (a chunk
            // is submitted once full); the default window, and a wide one.
            let it = it.chunksize(1);
            let it = match window {
                Some(w) => it.window(w),
                None => it,
            };
            for r in it {
                let y = r.unwrap();
                got.push(y);
                let next = y - 1000;
                if let Some(t) = &tx {
                    for child in [2 * next + 1, 2 * next + 2] {
                        if child < 200 {
                            t.send(child).unwrap();
                            sent += 1;
                        }
                    }
                    if sent >= 150 {
                        tx = None;
                    }
                }
                if tx.is_some() && got.len() == sent {
                    // Nothing left to wait for: end the queue.
                    tx = None;
                }
            }
            assert_eq!(got.len(), sent, "ordered {ordered}, window {window:?}");
            got.sort_unstable();
            got.dedup();
            assert_eq!(got.len(), sent, "each once");
        }
    })
}

/// A work queue of known length: its `size_hint` guarantees every item, but
/// each `recv` waits for a result the loop has not taken yet. Read ahead
/// (the default for such a source), it blocks forever; `read_ahead(false)`
/// reads it only while nothing is in flight.
#[test]
fn a_work_queue_of_known_length_runs_with_read_ahead_off() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        for ordered in [true, false] {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            tx.send(1).unwrap();
            let queue = (0..10).map(move |_| rx.recv().unwrap());
            let it = if ordered {
                pool.imap(queue, times_ten).unwrap()
            } else {
                pool.imap_unordered(queue, times_ten).unwrap()
            };
            let mut seen = Vec::new();
            for r in it.chunksize(1).read_ahead(false) {
                let x = r.unwrap();
                seen.push(x);
                if seen.len() < 10 {
                    tx.send(x % 1000 + 1).unwrap();
                }
            }
            assert_eq!(seen.len(), 10, "ordered {ordered}");
            assert_eq!(seen[..3], [10, 110, 1110]);
        }
        common::assert_healthy(&pool);
    })
}

#[test]
fn finished_results_are_yielded_without_waiting_for_more_input() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // A source with 10 items and then nothing, for as long as the sender
        // lives: results of what was read must still come out.
        for ordered in [true, false] {
            let (tx, rx) = std::sync::mpsc::channel::<u32>();
            for i in 0..10 {
                tx.send(i).unwrap();
            }
            let it = if ordered {
                pool.imap(rx.iter(), triple).unwrap()
            } else {
                pool.imap_unordered(rx.iter(), triple).unwrap()
            };
            let mut got: Vec<u32> = it.chunksize(1).take(10).map(Result::unwrap).collect();
            got.sort_unstable();
            assert_eq!(got, (0..10).map(|x| x * 3).collect::<Vec<_>>());
            drop(tx);
        }
    })
}

#[test]
fn a_slow_source_yields_its_first_result_early() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // One item every 20 ms, 8 per chunk, the default window (6 chunks):
        // reading the whole window before yielding took about 970 ms.
        let slow = (0..64u64).inspect(|_| std::thread::sleep(Duration::from_millis(20)));
        let t = Instant::now();
        let mut it = pool.imap(slow, |x| x + 1).unwrap().chunksize(8);
        assert_eq!(it.next().unwrap().unwrap(), 1);
        let first = t.elapsed();
        assert!(
            first < Duration::from_millis(600),
            "first result after {first:?}"
        );
        let rest: Vec<u64> = it.map(Result::unwrap).collect();
        assert_eq!(rest, (2..=64).collect::<Vec<_>>());
        // A source that cannot tell its length, the same.
        let slow = std::iter::from_fn({
            let mut n = 0u64;
            move || {
                std::thread::sleep(Duration::from_millis(20));
                n += 1;
                (n <= 32).then_some(n)
            }
        });
        let t = Instant::now();
        let mut it = pool.imap_unordered(slow, |x| x * 2).unwrap().chunksize(8);
        assert_eq!(it.next().unwrap().unwrap(), 2);
        let first = t.elapsed();
        assert!(
            first < Duration::from_millis(600),
            "first result after {first:?}"
        );
        assert_eq!(it.count(), 31);
    })
}

#[test]
fn a_stream_created_before_close_delivers_every_result() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // Python's `it = p.imap(f, xs); p.close(); for r in it: ...; p.join()`.
        let it = pool.imap(0..10_000u64, |x| x * 2).unwrap().chunksize(100);
        let un = pool.imap_unordered(0..5_000u64, |x| x + 1).unwrap();
        pool.close();
        assert!(matches!(pool.imap(0..1u8, |x| x), Err(Error::Closed)));
        let got: Vec<u64> = it.map(Result::unwrap).collect();
        assert_eq!(got, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
        let mut got: Vec<u64> = un.map(Result::unwrap).collect();
        got.sort_unstable();
        assert_eq!(got, (1..=5_000).collect::<Vec<_>>());
        pool.join().unwrap();
        assert!(pool.worker_pids().is_empty());
    })
}

#[test]
fn join_waits_for_a_stream_iterated_by_another_thread() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let it = pool
                .imap(0..2_000u64, |x| {
                    std::thread::sleep(Duration::from_micros(500));
                    x
                })
                .unwrap()
                .chunksize(50);
            // Created here, iterated there: once the consumer has asked for
            // a chunk, it is the stream's thread, and this one may join.
            let consumer = s.spawn(|| {
                it.map(Result::unwrap)
                    .inspect(|_| _ = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    .count()
            });
            assert!(common::wait_until(Duration::from_secs(10), || seen
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0));
            pool.close();
            pool.join().unwrap();
            // The stream finishes in the `next` that returns `None`, after
            // every item was yielded (and counted).
            assert_eq!(
                seen.load(std::sync::atomic::Ordering::SeqCst),
                2_000,
                "join() returned before the stream was finished"
            );
            assert_eq!(consumer.join().unwrap(), 2_000);
        });
        // Joining from the thread that holds an unfinished stream would wait
        // for itself.
        let pool = Pool::new(1).unwrap();
        let mut it = pool.imap(0..100u32, |x| x).unwrap().chunksize(10);
        assert_eq!(it.next().unwrap().unwrap(), 0);
        pool.close();
        assert!(matches!(pool.join(), Err(Error::WouldDeadlock { .. })));
        assert_eq!(it.by_ref().count(), 99);
        pool.join().unwrap();
        drop(it);
        // A stream dropped unfinished is finished too.
        let pool = Pool::new(1).unwrap();
        let mut it = pool.imap(0..100u32, |x| x).unwrap().chunksize(10);
        assert_eq!(it.next().unwrap().unwrap(), 0);
        pool.close();
        drop(it);
        pool.join().unwrap();
    })
}

#[test]
fn after_terminate_join_does_not_wait_for_a_forgotten_stream() {
    deadline(60, || {
        // Forgotten on another thread, then terminate and join.
        let pool = Pool::new(2).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| std::mem::forget(pool.imap(0..10u64, |x| x * 2).unwrap()));
        });
        pool.terminate();
        pool.join().unwrap();
        // Forgotten after a first item, then close: join waits (the stream
        // could still be iterated) until another thread terminates the pool.
        let pool = Pool::new(2).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut it = pool.imap(0..1000u64, |x| x * 2).unwrap().chunksize(10);
                assert_eq!(it.next().unwrap().unwrap(), 0);
                std::mem::forget(it);
            });
        });
        pool.close();
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                pool.terminate();
            });
            pool.join().unwrap();
        });
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(250), "join waited {took:?}");
        assert!(took < Duration::from_secs(10), "join waited {took:?}");
        assert!(pool.worker_pids().is_empty());
        // Held by the joining thread, never iterated there: the same.
        let pool = Pool::new(1).unwrap();
        let mut it = pool.imap(0..100u32, |x| x).unwrap().chunksize(10);
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(it.next().unwrap().unwrap(), 0));
        });
        pool.terminate();
        pool.join().unwrap();
        // The stream yields the chunks that had finished, then the error of
        // the chunk it could no longer submit, and ends.
        assert!(it.by_ref().any(|r| r.is_err()));
    })
}

#[test]
fn items_read_before_the_source_panicked_are_not_lost() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        for ordered in [true, false] {
            let mut armed = true;
            // Panics once, instead of yielding 2550.
            let source = (0..5_000u64).inspect(move |&x| {
                if x == 2550 && armed {
                    armed = false;
                    panic!("the source failed at {x}");
                }
            });
            let it = if ordered {
                pool.imap(source, times_ten).unwrap()
            } else {
                pool.imap_unordered(source, times_ten).unwrap()
            };
            let mut it = it.chunksize(100);
            let (mut got, mut panics) = (Vec::new(), 0);
            loop {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next())) {
                    Ok(Some(r)) => got.push(r.unwrap()),
                    Ok(None) => break,
                    Err(_) => panics += 1,
                }
            }
            assert_eq!(panics, 1);
            if !ordered {
                got.sort_unstable();
            }
            let want: Vec<u64> = (0..5_000).filter(|&x| x != 2550).map(|x| x * 10).collect();
            let missing: Vec<u64> = want
                .iter()
                .filter(|w| got.binary_search(w).is_err())
                .map(|w| w / 10)
                .collect();
            assert!(
                missing.is_empty(),
                "ordered {ordered}: lost inputs {missing:?}"
            );
            assert_eq!(got, want, "ordered {ordered}");
        }
    })
}

/// A pool whose stream a task of a later pool reaches through a static.
static STREAMING: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
type Stream = Box<dyn Iterator<Item = Result<u64, Error>> + Send>;
static HELD_STREAM: std::sync::Mutex<Option<Stream>> = std::sync::Mutex::new(None);

/// Iterates the held stream (in a worker: its fork-time copy) to its end,
/// at most 1000 items: 1 for `WouldDeadlock`, 2 for a value, 3 for another
/// error, one digit per item.
fn iterate_held(_: u32) -> u64 {
    let mut held = HELD_STREAM.lock().unwrap_or_else(|e| e.into_inner());
    let stream = held.as_mut().expect("a stream is held");
    stream.take(1000).fold(0, |digits, r| {
        let d = match r {
            Err(Error::WouldDeadlock { .. }) => 1,
            Ok(_) => 2,
            Err(_) => 3,
        };
        digits.saturating_mul(10).saturating_add(d)
    })
}

/// A stream in the middle of a finished chunk, iterated by a task that
/// reached it through a static: the chunk's outputs are the owner's, so the
/// task gets `WouldDeadlock` (as for a stream with nothing finished), not a
/// panic of the chunk's `ShmVec`; and only once: the copy then ends.
#[test]
fn a_stream_iterated_in_a_task_mid_chunk_would_deadlock() {
    deadline(60, || {
        let other = STREAMING.get_or_init(|| Pool::new(2).unwrap());
        let mut stream = other.imap(0u64..1_000_000, |x| x + 1).unwrap();
        assert_eq!(stream.next().unwrap().unwrap(), 1);
        *HELD_STREAM.lock().unwrap() = Some(Box::new(stream));
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.map(&[0u32], iterate_held).unwrap()[..], [1]);
        // The owner's stream is untouched.
        let mut held = HELD_STREAM.lock().unwrap().take().unwrap();
        assert_eq!(held.next().unwrap().unwrap(), 2);
        drop(held);
        common::assert_healthy(&pool);
    })
}
